"""``hvkvm bench storage``: the same guest workload (``disk_bench``) over every storage path.

**Paths** are the rows of :data:`PATHS`, one :class:`StoragePath` each: a name, how to build the
partition's devices for a disk (``build(disk) -> Built``: VSPs, bus devices, extra counters), the
``disk_bench`` command-line keys that pick the guest driver (``dev=...``), and what it needs.
Adding a path is adding a row. The rows that exist today: VMBus storvsc with the Python data
plane and with the C data plane (``hvkvm/vsp/storvsc.py``), and the peer, QEMU's virtio-blk on
virtio-mmio (:mod:`hvkvm.bench.qemu`), which needs the guest's virtio-blk driver
(``disk_bench dev=virtio``). The legacy ATA-PIO device, the MMIO register device and hvkvm's
virtio-blk have rows without a build function yet: they report "unavailable" until their VSPs
(``hvkvm/vsp/{ata,mmioblk,virtio_blk}.py``) and guest drivers exist and the row is filled in.

**Backings**: a raw file in tmpfs (``/dev/shm``: the page cache, no device below) and a file on
the real filesystem (``$HVKVM_BENCH_DIR``, default ``/var/tmp``) opened O_DIRECT (the device
below; QEMU gets ``cache=none`` on it). Each file is filled with data first (no sparse holes).

**Workloads** (:data:`WORKLOADS`): 4 KiB randread/randwrite at QD1 and QD32, 1 MiB sequential
read/write (QD4); each with the guest's loop in ring 3 (polling) and in ring 0 (interrupts; on
kvm_pvm ring 0 is emulated, so those rows are emulation-bound).

Subsets for focused runs (the JSON's cases say which ran):
``HVKVM_BENCH_PATHS=storvsc-c,qemu-virtio-blk``, ``HVKVM_BENCH_WORKLOADS=randread-4k-qd32,...``
(also under ``--quick``), ``HVKVM_BENCH_RINGS=3``.

**Measures** per run: IOPS, MB/s, mean and p99 latency from the guest's JSON line (TSC-timed);
within the timed loop (SYNC 10 to SYNC 11, read on the vCPU thread) the userspace exits (hvkvm's
counters), KVM's ``exits`` and ``irq_injections`` (binary stats fd), the interrupts hvkvm raised
(C plane signals + SINTs from Python), the guest's kicks, and the process's CPU time
(CLOCK_PROCESS_CPUTIME_ID; ``guest`` from /proc/self/stat subtracted for the host share), each per
I/O. QEMU rows: the guest's numbers and QEMU's CPU time for the whole run (no hvkvm counters
inside QEMU).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .common import cpu_delta, cpu_times, measure, progress, summarize, table

MiB = 1 << 20


# -- the table of paths -------------------------------------------------------------------------

@dataclass
class Built:
    """What a path adds to a partition for one disk."""

    vsps: list = field(default_factory=list)
    devices: list = field(default_factory=list)          # PartitionConfig DeviceSpecs
    #: command-line tokens the device needs ("dev=virtio", "virtio_mmio.device=512@...")
    keys: list = field(default_factory=list)
    #: hvkvm-side counters read at SYNC 10 and 11: ``counters(partition) -> {"interrupts": n,
    #: ...}`` (None: the generic ones only)
    counters: Callable | None = None


@dataclass(frozen=True)
class StoragePath:
    """One storage path: a row of the suite."""

    name: str                       # short id: "storvsc-c"
    title: str                      # for the report
    runner: str = "hvkvm"           # "hvkvm" (a ChildPartition) or "qemu"
    build: Callable | None = None   # (Disk) -> Built; None: not built yet
    keys: dict = field(default_factory=dict)   # disk_bench keys that pick the guest driver
    module: str | None = None       # a module the path needs ("hvkvm.vsp.ata")
    guest_key: str | None = None    # a disk_bench value its guest driver must know ("virtio")
    slow: int = 1                   # --quick divides its I/O counts by this (exit-bound paths)
    max_qd: int | None = None       # the device's deepest queue (a workload's QD is clipped)

    def unavailable(self) -> str | None:
        """Why this path cannot run here (None: it can)."""
        if self.module and importlib.util.find_spec(self.module) is None:
            return (f"{self.module.replace('.', '/')}.py and its disk_bench driver are not in "
                    f"the tree yet")
        if self.guest_key and not disk_bench_knows(self.guest_key):
            return (f"needs the guest {self.guest_key} driver in disk_bench "
                    f"(disk_bench dev={self.guest_key})")
        if self.runner == "qemu":
            from . import qemu
            why = qemu.unavailable()
            if why:
                return why
        elif self.build is None:
            return (f"{self.module} exists; its row in hvkvm/bench/storage.py PATHS needs a build "
                    f"function")
        return None


def disk_bench_knows(value: str) -> bool:
    """Whether the disk_bench guest image declares that it handles ``dev=value``."""
    from .common import image_accepts
    return image_accepts("disk_bench", "dev", value)


def _storvsc_options() -> dict:
    """StorvscVsp keyword overrides for tuning runs: ``HVKVM_BENCH_STORVSC="io=sync,spin_us=0"``
    (io, io_workers, max_inflight, spin_us). The JSON's vsp_stats record what ran."""
    out: dict = {}
    for tok in os.environ.get("HVKVM_BENCH_STORVSC", "").split(","):
        key, _, val = tok.strip().partition("=")
        if key in ("io_workers", "max_inflight", "spin_us"):
            out[key] = int(val)
        elif key == "io":
            out[key] = val
    return out


def _storvsc(plane: str, **fixed):
    def build(disk) -> Built:
        from ..vsp.storvsc import StorvscVsp
        vsp = StorvscVsp(disk, plane=plane, **{**_storvsc_options(), **fixed})

        def counters(p) -> dict:
            sig = 0
            for st in list(vsp.stats().values()):
                sig += st.get("plane_signals", 0)
            return {"interrupts": sig + (p.hv.stats.get("sint_interrupts", 0) if p.hv else 0)}
        return Built(vsps=[vsp], counters=counters)
    return build


def _devices_for(module: str, plane: str):
    """A path built by ``module.devices_for(disk, plane)`` -> ({"devices": [...]}, [keys]) (the
    ATA, MMIO-register and virtio-blk VSPs); interrupts from the devices' ``stats()``."""
    def build(disk) -> Built:
        mod = importlib.import_module(module)
        cfg, keys = mod.devices_for(disk, plane=plane)
        devices = list(cfg.get("devices", []))
        counted = [d.device for d in devices if hasattr(d.device, "stats")]

        def counters(p) -> dict:
            n = 0
            for dev in counted:
                n += int(dev.stats().get("interrupts", 0) or 0)
            return {"interrupts": n}
        return Built(vsps=list(cfg.get("vsps", [])), devices=devices, keys=list(keys),
                     counters=counters)
    return build


#: Every storage path, in report order. To add one: a row with its build function and keys.
PATHS: list[StoragePath] = [
    StoragePath("ata", "legacy ATA-PIO register device (Python)", module="hvkvm.vsp.ata",
                build=_devices_for("hvkvm.vsp.ata", "python"), keys={"dev": "ata"},
                guest_key="ata", slow=400, max_qd=1),
    StoragePath("mmioblk", "MMIO register device, descriptor in RAM (Python)",
                module="hvkvm.vsp.mmioblk", build=_devices_for("hvkvm.vsp.mmioblk", "python"),
                keys={"dev": "mmio"}, guest_key="mmio", slow=10),
    StoragePath("virtio-blk", "virtio-blk over virtio-mmio (hvkvm, C data plane)",
                module="hvkvm.vsp.virtio_blk", build=_devices_for("hvkvm.vsp.virtio_blk", "c"),
                keys={"dev": "virtio"}, guest_key="virtio"),
    StoragePath("storvsc-py", "VMBus storvsc, Python data plane", build=_storvsc("python")),
    StoragePath("storvsc-c", "VMBus storvsc, C data plane", build=_storvsc("c")),
    StoragePath("qemu-virtio-blk", "QEMU virtio-blk (virtio-mmio), microvm + KVM",
                runner="qemu", keys={"dev": "virtio"}, guest_key="virtio"),
]


@dataclass(frozen=True)
class Workload:
    name: str
    mode: str
    bs: int
    qd: int


WORKLOADS = [
    Workload("randread-4k-qd1", "randread", 4096, 1),
    Workload("randread-4k-qd32", "randread", 4096, 32),
    Workload("randwrite-4k-qd1", "randwrite", 4096, 1),
    Workload("randwrite-4k-qd32", "randwrite", 4096, 32),
    Workload("read-1m-qd4", "read", MiB, 4),
    Workload("write-1m-qd4", "write", MiB, 4),
]
#: --quick: these workloads in tmpfs from ring 3; ring 0 and the real filesystem only the first
#: (ring-0 set-up of 1 MiB buffers is emulated instruction by instruction on kvm_pvm).
QUICK_WORKLOADS = ("randread-4k-qd32", "randwrite-4k-qd1", "read-1m-qd4")


@dataclass(frozen=True)
class Backing:
    name: str
    title: str
    directory: str
    direct: bool


def backings() -> list[Backing]:
    """tmpfs (page cache) and the real filesystem (O_DIRECT)."""
    fs_dir = os.environ.get("HVKVM_BENCH_DIR", "/var/tmp")
    return [Backing("tmpfs", "tmpfs /dev/shm (page cache)", "/dev/shm", False),
            Backing("fs", f"{_fs_type(fs_dir)} {fs_dir} (O_DIRECT)", fs_dir, True)]


def _fs_type(path: str) -> str:
    best, kind = "", "?"
    try:
        real = os.path.realpath(path)
        for ln in Path("/proc/mounts").read_text().splitlines():
            parts = ln.split()
            mnt = parts[1]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def make_file(path: str, size: int) -> None:
    """A raw image of ``size`` bytes, every block written (no holes), flushed."""
    chunk = bytes((i * 131 + 7) & 255 for i in range(MiB))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for off in range(0, size, MiB):
            os.pwrite(fd, chunk[:min(MiB, size - off)], off)
        os.fsync(fd)
        try:
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError):
            pass
    finally:
        os.close(fd)


# -- one run ------------------------------------------------------------------------------------

def _guest_json(serial: bytes | str) -> dict | None:
    text = serial.decode(errors="replace") if isinstance(serial, bytes) else serial
    for ln in text.splitlines():
        ln = ln.strip()
        if ln.startswith('{"image":"disk_bench"'):
            return json.loads(ln)
    return None


def _qd(path: StoragePath, w: Workload) -> int:
    return min(w.qd, path.max_qd) if path.max_qd else w.qd


def _cmdline(path: StoragePath, w: Workload, ring: int, length: dict,
             tokens: list[str] = ()) -> str:
    named = {t.split("=", 1)[0] for t in tokens}
    keys = {**{k: v for k, v in path.keys.items() if k not in named}, "mode": w.mode,
            "bs": w.bs, "qd": _qd(path, w), "ring": ring, **length}
    return " ".join(["disk_bench", *tokens, *(f"{k}={v}" for k, v in keys.items())])


def run_hvkvm(path: StoragePath, file: str, direct: bool, w: Workload, ring: int,
              length: dict) -> dict:
    """One disk_bench run in a ChildPartition; the guest's JSON and the window's counters."""
    from ..images import image_path
    from ..partition.config import PartitionConfig
    from ..partition.partition import ChildPartition, current_vcpu_thread
    from ..vsp.disk import Disk
    from .kvmstats import KvmStats, delta
    marks: dict = {}
    holder: dict = {}

    def snap():
        vt = current_vcpu_thread()
        user = sum(r0 + r3 for name, (r0, r3) in vt.exits.items() if name != "intr")
        st = holder.get("stats")
        extra = built.counters(holder["p"]) if built.counters else {}
        return {"t": time.perf_counter(), "cpu": cpu_times(vcpu_tids=(vt.thread.native_id,)),
                "user": user,
                "kvm": st.read() if st else None, **extra}

    def on_sync(vp, uc):
        if uc.args[0] in (10, 11):
            marks[uc.args[0]] = snap()

    disk = Disk(file, direct=direct)
    try:
        built = path.build(disk)
        cfg = PartitionConfig(image=image_path("disk_bench"),
                              cmdline=_cmdline(path, w, ring, length, built.keys),
                              vsps=built.vsps,
                              devices=built.devices, timeout=600, memory=128 * MiB,
                              on_sync=on_sync)
        with ChildPartition(cfg) as p:
            holder["p"] = p
            holder["stats"] = KvmStats.for_vcpu(p.vcpus[0])
            try:
                result = p.run()
            finally:
                if holder["stats"]:
                    holder["stats"].close()
    finally:
        disk.close()
    g = _guest_json(result.serial)
    if not result.passed or g is None or not {10, 11} <= marks.keys():
        raise RuntimeError(f"{path.name} {w.name} ring {ring}: {result.status}: {result.reason}"
                           f"{'' if g else ' (no JSON line)'}")
    a, b = marks[10], marks[11]
    ios = max(1, g["ios"])
    cpu = cpu_delta(a["cpu"], b["cpu"])
    kvm = delta(a["kvm"], b["kvm"])
    out = {"guest": g, "window_s": b["t"] - a["t"],
           # SYNC 11 itself is one userspace exit inside the window
           "user_exits_per_io": max(0, b["user"] - a["user"] - 1) / ios,
           "kvm_exits_per_io": kvm["exits"] / ios if "exits" in kvm else None,
           "irq_injections_per_io": (kvm["irq_injections"] / ios if "irq_injections" in kvm
                                     else None),
           "interrupts_per_io": ((b["interrupts"] - a["interrupts"]) / ios
                                 if "interrupts" in a else None),
           "kicks_per_io": g.get("kicks", 0) / ios,
           "process_cpu_us_per_io": cpu["total"] / ios * 1e6,
           "host_cpu_us_per_io": cpu["host"] / ios * 1e6,
           "guest_cpu_us_per_io": cpu["guest"] / ios * 1e6}
    # The VSPs' own counters for their closed channels (storvsc: the plane, io_mode, async,
    # inline_io, inflight_max, ...): what the C plane actually did in this run.
    closed = [st for v in built.vsps for st in getattr(v, "closed_stats", [])]
    if closed:
        out["vsp_stats"] = closed
    return out


def run_qemu(path: StoragePath, file: str, direct: bool, w: Workload, ring: int,
             length: dict) -> dict:
    """One disk_bench run under QEMU on the same file."""
    from ..images import image_path
    from . import qemu
    r = qemu.run(str(image_path("disk_bench")), _cmdline(path, w, ring, length),
                 qemu.blk_args(file, direct), timeout=600)
    g = _guest_json(r["console"])
    if r["status"] != "pass" or g is None:
        raise RuntimeError(f"QEMU {w.name} ring {ring}: {r['status']} (exit {r['returncode']}):"
                           f" {(r['stderr'] or r['console'])[-300:]}")
    ios = max(1, g["ios"])
    return {"guest": g, "window_s": r["wall_s"], "user_exits_per_io": None,
            "kvm_exits_per_io": None, "irq_injections_per_io": None, "interrupts_per_io": None,
            "kicks_per_io": None,
            "process_cpu_us_per_io": r["cpu_s"] / ios * 1e6 if r["cpu_s"] is not None else None,
            "host_cpu_us_per_io": None, "guest_cpu_us_per_io": None,
            "qemu_wall_s": r["wall_s"], "qemu_cpu_s": r["cpu_s"]}


#: Fields of a case row that carry one value per repetition (medians in the row, all in samples).
SAMPLED = ("iops", "mb_per_s", "mean_us", "p99_us", "user_exits_per_io", "kvm_exits_per_io",
           "irq_injections_per_io", "interrupts_per_io", "kicks_per_io", "process_cpu_us_per_io",
           "host_cpu_us_per_io")


def run_case(path: StoragePath, backing: Backing, file: str, w: Workload, ring: int,
             length: dict, repeat: int) -> dict:
    """``repeat`` runs of one (path, backing, workload, ring); medians and every sample."""
    runner = run_qemu if path.runner == "qemu" else run_hvkvm
    runs = [runner(path, file, backing.direct, w, ring, length) for _ in range(repeat)]
    row = {"path": path.name, "backing": backing.name, "ring": ring, "workload": w.name,
           "mode": w.mode, "bs": w.bs, "qd": _qd(path, w), "qd_clipped": _qd(path, w) != w.qd,
           "status": "ok", "runs": len(runs),
           "ios": [r["guest"]["ios"] for r in runs], "samples": {}}
    for key in SAMPLED:
        vals = [r["guest"].get(key) if key in ("iops", "mb_per_s", "mean_us", "p99_us")
                else r.get(key) for r in runs]
        if any(v is None for v in vals):
            row[key] = None
            continue
        s = summarize([float(v) for v in vals])
        row[key] = round(s["median"], 4)
        row["samples"][key] = [round(float(v), 4) for v in vals]
        if key == "iops":
            row["spread"] = s["spread"] if s["n"] > 1 else None
    row["guest"] = [r["guest"] for r in runs]
    if path.runner == "qemu":
        row["qemu_wall_s"] = [round(r["qemu_wall_s"], 3) for r in runs]
    if any("vsp_stats" in r for r in runs):
        row["vsp_stats"] = [r.get("vsp_stats") for r in runs]
    return row


def _length(path: StoragePath, w: Workload, ring: int, quick: bool) -> dict:
    """How long a timed loop runs: seconds in a full run, an I/O count in a quick one."""
    if not quick:
        return {"seconds": 2}
    if ring == 0:
        n = 16 if w.bs >= MiB else 48
    elif path.name.endswith("-py"):
        n = 24 if w.bs >= MiB else 400
    else:
        n = 64 if w.bs >= MiB else 4000
    return {"count": max(1, n // path.slow)}


def _io_variants() -> list[StoragePath]:
    """Extra storvsc-c rows, one per C-plane I/O mode in ``HVKVM_BENCH_STORVSC_IO`` (for
    example ``uring,threads,sync``): the modes side by side in one run."""
    return [StoragePath(f"storvsc-c-{io}", f"VMBus storvsc, C data plane, io={io}",
                        build=_storvsc("c", io=io))
            for io in sorted(_only("HVKVM_BENCH_STORVSC_IO"))]


def _only(var: str) -> set[str]:
    """A comma-separated subset from the environment (empty: everything)."""
    return {t.strip() for t in os.environ.get(var, "").split(",") if t.strip()}


def run(quick: bool = False, repeat: int | None = None) -> dict:
    """Every available path x backing x ring x workload."""
    repeat = repeat or 1
    size = (64 if quick else 256) * MiB
    workloads = [w for w in WORKLOADS if not quick or w.name in QUICK_WORKLOADS]
    only_w = _only("HVKVM_BENCH_WORKLOADS")
    if only_w:
        workloads = [w for w in WORKLOADS if w.name in only_w]
    only_p = _only("HVKVM_BENCH_PATHS")
    all_paths = PATHS + _io_variants()
    only_r = {int(r) for r in _only("HVKVM_BENCH_RINGS")}
    from . import qemu
    paths = []
    for p in PATHS + _io_variants():
        why = p.unavailable()
        paths.append({"name": p.name, "title": p.title, "runner": p.runner, "keys": p.keys,
                      "available": why is None,
                      "reason": None if why is None else f"unavailable: {why}"})
    rows = []
    files = []
    bks = backings()
    try:
        for b in bks:
            f = os.path.join(b.directory, f"hvkvm-bench-{os.getpid()}-{b.name}.img")
            with progress.step(f"storage: filling a {size >> 20} MiB file in {b.title}"):
                make_file(f, size)
            files.append(f)
            for p in all_paths:
                if p.unavailable() or (only_p and p.name not in only_p):
                    continue
                for ring in (3, 0):
                    if only_r and ring not in only_r:
                        continue
                    for w in workloads:
                        if quick and (ring == 0 or b.name != "tmpfs") and \
                                w.name != QUICK_WORKLOADS[0]:
                            continue        # --quick: the real filesystem and ring 0 once each
                        if quick and b.name != "tmpfs" and ring == 0:
                            continue
                        if quick and p.slow > 100 and w.bs >= MiB:
                            continue        # minutes per 1 MiB I/O through 4-byte exits
                        length = _length(p, w, ring, quick)
                        label = (f"storage: {p.name} {b.name} ring {ring} {w.name} "
                                 f"({', '.join(f'{k}={v}' for k, v in length.items())})")
                        with progress.step(label):
                            try:
                                rows.append(run_case(p, b, f, w, ring, length, repeat))
                            except Exception as e:  # noqa: BLE001 - the row says what failed
                                rows.append({"path": p.name, "backing": b.name, "ring": ring,
                                             "workload": w.name, "mode": w.mode, "bs": w.bs,
                                             "qd": w.qd, "status": "failed",
                                             "reason": str(e)[:500]})
    finally:
        for f in files:
            try:
                os.unlink(f)
            except OSError:
                pass
    return {"disk_bytes": size, "repeat": repeat,
            "backings": [{"name": b.name, "title": b.title, "direct": b.direct} for b in bks],
            "paths": paths, "workloads": [w.__dict__ for w in workloads],
            "length": "count per run (quick)" if quick else "2 s per run",
            "qemu": qemu.describe(), "cases": rows}


# -- report -------------------------------------------------------------------------------------

COLUMNS = [("path", "path", "s"), ("backing", "backing", "s"), ("ring", "ring", "d"),
           ("workload", "workload", "s"), ("qd", "qd", "d"), ("iops", "IOPS", ",.0f"),
           ("mb_per_s", "MB/s", ".1f"),
           ("mean_us", "mean us", ".1f"), ("p99_us", "p99 us", ".1f"),
           ("user_exits_per_io", "exits/IO", ".3f"), ("kvm_exits_per_io", "KVM exits/IO", ".2f"),
           ("interrupts_per_io", "irqs/IO", ".3f"),
           ("irq_injections_per_io", "KVM inj/IO", ".3f"),
           ("host_cpu_us_per_io", "host CPU us/IO", ".1f"), ("spread", "spread", ".0%")]


def format_report(section: dict) -> str:
    """Paths (with the unavailable ones and why), the QEMU configuration, the table."""
    lines = ["storage paths:"]
    for p in section["paths"]:
        lines.append(f"  {p['name']:16} {p['title']}" + ("" if p["available"]
                                                         else f"  -- {p['reason']}"))
    clipped = sorted({r["path"] for r in section["cases"] if r.get("qd_clipped")})
    if clipped:
        lines.append(f"queue depth clipped to the device's limit for: {', '.join(clipped)} "
                     f"(the workload keeps its name; the row's qd is what ran)")
    lines.append("backings: " + "; ".join(f"{b['name']} = {b['title']}"
                                          for b in section["backings"]))
    q = section["qemu"]
    lines.append(f"QEMU peer: {q['version'] or 'not installed'}; {q['machine']}; "
                 f"{q['virtio_blk']}")
    ok = [r for r in section["cases"] if r["status"] == "ok"]
    lines += ["", table(ok, COLUMNS)]
    for r in section["cases"]:
        if r["status"] != "ok":
            lines.append(f"{r['path']} {r['backing']} ring {r['ring']} {r['workload']}: "
                         f"{r['status']}: {r['reason']}")
    return "\n".join(lines)


def measures(section: dict) -> list[dict]:
    """IOPS, MB/s (higher is better), mean and p99 latency (lower) of every case."""
    out = []
    for r in section["cases"]:
        if r["status"] != "ok":
            continue
        base = f"storage/{r['path']}/{r['backing']}/r{r['ring']}/{r['workload']}"
        grp = f"{r['workload']} {r['backing']} r{r['ring']}"
        s = r.get("samples", {})
        out.append(measure(base + "/iops", r["iops"], "IOPS", "higher", s.get("iops"),
                           group=grp, label=r["path"]))
        out.append(measure(base + "/mb_per_s", r["mb_per_s"], "MB/s", "higher",
                           s.get("mb_per_s"), group=grp, label=r["path"]))
        out.append(measure(base + "/mean_us", r["mean_us"], "us (mean)", "lower",
                           s.get("mean_us"), group=grp, label=r["path"]))
        out.append(measure(base + "/p99_us", r["p99_us"], "us (p99)", "lower", s.get("p99_us"),
                           group=grp, label=r["path"]))
    return out
