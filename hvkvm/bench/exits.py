"""``hvkvm bench exits``: what one exit costs, by kind and by guest ring, and the C floor beside it.

The ``exits`` guest image runs a loop of N cpuid / port I/O / MMIO / hlt (self-IPI) in ring 0 or
ring 3 between two SYNC ucalls; the host times the loop between them (``time.perf_counter`` in the
SYNC callbacks, so every case is timed the same way). Cases:

- ``cpuid`` and ``hlt`` are handled inside KVM (on kvm_pvm, ring-3 cpuid runs natively: no exit).
- ``ioeventfd``: the same ``outl`` loop as ``pio``, to a port registered as an ioeventfd
  (``KVM_IOEVENTFD_FLAG_PIO``, no datamatch): KVM completes the write and signals the eventfd
  without a userspace exit.
- ``pio`` and ``mmio`` to the null device, serviced by hvkvm's Python exit loop
  (``runner=python``) and, in the same run, by a small C runner (``runner=c``,
  csrc/bench_run.c): at SYNC 1 the vCPU thread hands its vCPU fd and ``kvm_run`` to a C function
  that does KVM_RUN in a loop and services the null device's exits in C until the next other exit
  (SYNC 2), which the Python loop then services as usual. Same guest, same kvm_run, same
  ``sync_regs`` settings: the difference is the Python exit path. Goal: Python within 1.3x of C.
  A third runner, ``python-lean``, is the smallest Python loop that does the same (ctypes ioctl,
  kvm_run read in place): what Python itself costs, apart from hvkvm's general exit loop.

Exits per iteration come from hvkvm's counters (userspace exits) and KVM's binary stats fd
(``exits``: every exit, in-kernel ones too).
"""

from __future__ import annotations

import os
import time

from .common import measure, progress, summarize, table

NULL_PORT = 0x5A0
NULL_MMIO = 0xD000_0000
#: (kind, ring, runner): kind is the guest loop, except "ioeventfd" (the pio loop on an
#: ioeventfd port).
CASES = [
    ("cpuid", 0, "python"), ("cpuid", 3, "python"),
    ("ioeventfd", 0, "python"), ("ioeventfd", 3, "python"),
    ("pio", 0, "python"), ("pio", 0, "python-lean"), ("pio", 0, "c"),
    ("pio", 3, "python"), ("pio", 3, "python-lean"), ("pio", 3, "c"),
    ("mmio", 0, "python"), ("mmio", 0, "python-lean"), ("mmio", 0, "c"),
    ("mmio", 3, "python"), ("mmio", 3, "python-lean"), ("mmio", 3, "c"),
    ("hlt", 0, "python"),
]
GOAL_RATIO = 1.3


class _Null:
    """The benchmark's null device: reads return zeros, writes vanish."""

    def read(self, offset, data):
        """Zeros."""
        data[:] = bytes(len(data))

    def write(self, offset, data):
        """Dropped."""


def _c_runner(marks: dict, stats, count: int):
    """on_sync's SYNC 1 part for runner=c: run the loop in C, then service the exit that ended
    it (SYNC 2) through the vCPU thread's own handler."""
    from ..kvm import abi
    from ..partition.partition import current_vcpu_thread
    from .native import load
    ffi, lib = load()
    vt = current_vcpu_thread()
    run = vt.vcpu.run_struct
    res = ffi.new("struct bench_run_result *")
    kvm_run = ffi.cast("void *", vt.vcpu.run_address())
    serviced = 0
    while True:
        lib.bench_run_loop(vt.vcpu.fd, kvm_run, NULL_PORT, NULL_MMIO, 0x1000, 0, res)
        serviced += res.exits
        if res.error:
            raise OSError(res.error, f"KVM_RUN in the C runner: {os.strerror(res.error)}")
        if res.exit_reason == abi.KVM_EXIT_INTR:
            run.immediate_exit = 0
            if vt.stop_requested:
                return
            continue
        break
    marks["c_exits"] = serviced
    # The exit that ended the C loop is pending in kvm_run: service it as the Python loop would
    # (it is SYNC 2, whose callback takes the end mark).
    vt._handle(res.exit_reason, run)


def _lean_runner(marks: dict, stats, count: int):
    """on_sync's SYNC 1 part for runner=python-lean: the smallest Python exit loop that services
    the null device (libc ioctl through ctypes, kvm_run fields read in place), then the exit that
    ended it through the vCPU thread's own handler. It separates what Python itself costs per
    exit from what hvkvm's general exit loop adds (dispatch, counters, buses, histograms)."""
    import ctypes
    from ..kvm import abi
    from ..partition.partition import current_vcpu_thread
    vt = current_vcpu_thread()
    run = vt.vcpu.run_struct
    libc = ctypes.CDLL(None, use_errno=True)
    ioctl = libc.ioctl
    ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
    fd, req = vt.vcpu.fd, abi.KVM_RUN
    io, mmio = run.io, run.mmio
    EXIT_IO, EXIT_MMIO = abi.KVM_EXIT_IO, abi.KVM_EXIT_MMIO
    zero = bytes(8)
    serviced = 0
    while True:
        if ioctl(fd, req, None) < 0:
            if ctypes.get_errno() in (4, 11):           # EINTR, EAGAIN: a kick
                run.immediate_exit = 0
                if vt.stop_requested:
                    return
                continue
            raise OSError(ctypes.get_errno(), "KVM_RUN in the lean Python runner")
        run.kvm_dirty_regs = 0
        reason = run.exit_reason
        if reason == EXIT_IO:
            if NULL_PORT <= io.port < NULL_PORT + 4:
                serviced += 1
                continue
        elif reason == EXIT_MMIO:
            if NULL_MMIO <= mmio.phys_addr < NULL_MMIO + 0x1000:
                if not mmio.is_write:
                    ctypes.memmove(ctypes.addressof(mmio) + type(mmio).data.offset, zero, 8)
                serviced += 1
                continue
        break
    marks["c_exits"] = serviced
    vt._handle(reason, run)


def run_case(kind: str, ring: int, runner: str, count: int, repeat: int) -> dict:
    """Run one loop ``repeat`` times: ns per iteration and exits per iteration, every sample."""
    from ..images import image_path
    from ..kvm import abi
    from ..partition.config import DeviceSpec, PartitionConfig
    from ..partition.partition import ChildPartition, current_vcpu_thread
    from .kvmstats import KvmStats, delta
    per_iter, user_exits, kvm_exits, irqs = [], [], [], []
    guest_kind = "pio" if kind == "ioeventfd" else kind
    for _ in range(repeat):
        marks: dict = {}
        holder: dict = {}

        def user_count() -> int:
            vt = current_vcpu_thread()
            return sum(r0 + r3 for name, (r0, r3) in vt.exits.items() if name != "intr")

        def on_sync(vp, uc, marks=marks, holder=holder):
            stage = uc.args[0]
            st = holder.get("stats")
            if stage == 1:
                marks["u1"] = user_count()
                marks["k1"] = st.read() if st else None
                marks[1] = time.perf_counter()
                if runner == "c":
                    _c_runner(marks, st, count)
                elif runner == "python-lean":
                    _lean_runner(marks, st, count)
            elif stage == 2:
                marks[2] = time.perf_counter()
                marks["k2"] = st.read() if st else None
                marks["u2"] = user_count()

        devices = [DeviceSpec("mmio", NULL_MMIO, 0x1000, _Null())]
        if kind != "ioeventfd":
            devices.append(DeviceSpec("pio", NULL_PORT, 4, _Null()))
        cfg = PartitionConfig(image=image_path("exits"),
                              cmdline=f"exits kind={guest_kind} count={count} ring={ring}",
                              timeout=600, on_sync=on_sync, devices=devices, stall_probe=0)
        efd = -1
        with ChildPartition(cfg) as p:
            holder["stats"] = KvmStats.for_vcpu(p.vcpus[0])
            try:
                if kind == "ioeventfd":
                    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                    p.vm.ioeventfd(efd, NULL_PORT, 4, flags=abi.KVM_IOEVENTFD_FLAG_PIO)
                result = p.run()
            finally:
                if holder["stats"]:
                    holder["stats"].close()
                if efd >= 0:
                    try:
                        p.vm.ioeventfd(efd, NULL_PORT, 4, flags=abi.KVM_IOEVENTFD_FLAG_PIO |
                                       abi.KVM_IOEVENTFD_FLAG_DEASSIGN)
                    except OSError:
                        pass
                    os.close(efd)
        if not result.passed or not {1, 2} <= marks.keys():
            raise RuntimeError(f"exits {kind} ring {ring} runner {runner}: {result.status}: "
                               f"{result.reason}")
        per_iter.append((marks[2] - marks[1]) / count * 1e9)
        # the SYNC 2 ucall is the one userspace exit inside the window that is not the loop's
        user_exits.append(max(0, marks["u2"] - marks["u1"] - 1 + marks.get("c_exits", 0)) / count)
        d = delta(marks["k1"], marks["k2"])
        kvm_exits.append(d["exits"] / count if "exits" in d else None)
        irqs.append(d["irq_injections"] / count if "irq_injections" in d else None)
    s = summarize(per_iter)
    return {"kind": kind, "ring": ring, "runner": runner, "count": count,
            "ns_per_iter": round(s["median"], 1), "ns_min": round(s["min"], 1),
            "spread": s["spread"] if s["n"] > 1 else None,
            "userspace_exits_per_iter": round(summarize(user_exits)["median"], 3),
            "kvm_exits_per_iter": (round(summarize([x for x in kvm_exits if x is not None])
                                         ["median"], 3) if None not in kvm_exits else None),
            "irq_injections_per_iter": (round(summarize(irqs)["median"], 3)
                                        if None not in irqs else None),
            "samples_ns": [round(x, 1) for x in per_iter]}


def _count(kind: str, ring: int, quick: bool) -> int:
    base = 2000 if quick else 20000
    # loops with no userspace exit are cheap: more iterations for the same time
    if kind == "ioeventfd" and ring == 3:
        return base * 5
    if kind == "cpuid" and ring == 3:
        return base * 100
    return base


def run(quick: bool = False, repeat: int | None = None) -> dict:
    """All cases; returns the report section."""
    repeat = repeat or (1 if quick else 3)
    rows = []
    for kind, ring, runner in CASES:
        n = _count(kind, ring, quick)
        with progress.step(f"exits: {kind} ring {ring} ({runner} runner), {n} x {repeat}"):
            rows.append(run_case(kind, ring, runner, n, repeat))
    ratios = []
    by = {(r["kind"], r["ring"], r["runner"]): r for r in rows}
    for kind in ("pio", "mmio"):
        for ring in (0, 3):
            py, c = by.get((kind, ring, "python")), by.get((kind, ring, "c"))
            lean = by.get((kind, ring, "python-lean"))
            if py and c and c["ns_per_iter"]:
                ratios.append({"kind": kind, "ring": ring, "python_ns": py["ns_per_iter"],
                               "c_ns": c["ns_per_iter"],
                               "lean_ns": lean["ns_per_iter"] if lean else None,
                               "lean_over_c": (round(lean["ns_per_iter"] / c["ns_per_iter"], 3)
                                               if lean else None),
                               "python_over_c": round(py["ns_per_iter"] / c["ns_per_iter"], 3),
                               "python_overhead_ns": round(py["ns_per_iter"] - c["ns_per_iter"],
                                                           1)})
    worst = max((r["python_over_c"] for r in ratios), default=None)
    return {"cases": rows, "python_vs_c": ratios, "goal_ratio": GOAL_RATIO,
            "worst_python_over_c": worst,
            "goal_python_within_1.3x_of_c": worst is not None and worst <= GOAL_RATIO}


def format_report(section: dict) -> str:
    """The exits table and the Python-vs-C lines."""
    lines = [table(section["cases"], [
        ("kind", "exit", "s"), ("ring", "ring", "d"), ("runner", "runner", "s"),
        ("count", "loop", "d"), ("ns_per_iter", "ns/iter", ".1f"), ("spread", "spread", ".0%"),
        ("userspace_exits_per_iter", "user exits/iter", ".3f"),
        ("kvm_exits_per_iter", "KVM exits/iter", ".3f")]), ""]
    for r in section.get("python_vs_c", []):
        lines.append(f"{r['kind']} ring {r['ring']}: Python {r['python_ns'] / 1000:.2f} us, "
                     f"C {r['c_ns'] / 1000:.2f} us per exit: {r['python_over_c']:.2f}x "
                     f"(+{r['python_overhead_ns'] / 1000:.2f} us in Python)"
                     + (f"; the lean Python loop {r['lean_ns'] / 1000:.2f} us: "
                        f"{r['lean_over_c']:.2f}x" if r.get("lean_ns") else ""))
    return "\n".join(lines)


def measures(section: dict) -> list[dict]:
    """ns per iteration of every case (lower is better)."""
    out = []
    for r in section["cases"]:
        runner = r.get("runner", "python")
        out.append(measure(f"exits/{r['kind']}/r{r['ring']}/{runner}/ns_per_iter",
                           r["ns_per_iter"], "ns", "lower", r.get("samples_ns"),
                           group=f"{r['kind']} r{r['ring']}", label=runner))
    return out
