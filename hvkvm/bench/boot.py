"""``hvkvm bench boot``: how fast a guest starts over, and how fast it starts at all.

- **restore**: a 64 MiB partition is snapshotted, then a ring-0 loop dirties 1%, 10% or 100% of
  its pages (one ``or byte [page], 0`` each: a write that changes nothing but is a write, spread
  evenly so 1% and 10% are many separate pages) and ``ChildPartition.restore`` puts it back. Timed:
  the whole restore (vCPU state, irqchip, PIT, clock, UART, dirty log, copies). Goal: under 1 ms
  at 1%.
- **first instruction**: from ``ChildPartition(config)`` to the first guest instruction retired
  (single-step on, the first debug exit), for raw code and for the ``hello`` image.
- **teardown**: ``ChildPartition.close()`` after ``hello`` ran to DONE.
- **hvkvm run hello**: the whole process, interpreter start and imports included (bytecode
  caching on, after a warm-up run), beside a bare
  ``python3 -c pass`` and ``python3 -c "import hvkvm.cli, ..."`` measured interleaved in the same
  run. Goal: within 1.5x of the bare interpreter; hvkvm's own share (run hello minus the bare
  interpreter) under ~80 ms.
- **QEMU** (the pinned peer, :mod:`hvkvm.bench.qemu`) booting the same ``hello`` image, whole
  process to the guest's debug-exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .common import measure, median, progress, summarize, table

MEMORY = 64 << 20
PAGE = 4096
CODE_GPA = 0x10000
UCALL_READY = 0x20000
UCALL_DONE = 0x21000
FRACTIONS = (0.01, 0.10, 1.00)


def _dirty_code(write: bytes = b"\x80\x0f\x00") -> bytes:
    """64-bit code: SYNC 0; RCX pages from RDI, RSI apart: ``write`` (3 bytes; default
    ``or byte [rdi], 0``, a write that changes nothing); SYNC 1; hlt."""
    assert len(write) == 3
    c = bytearray()
    c += b"\xb8" + UCALL_READY.to_bytes(4, "little")    # mov eax, UCALL_READY
    c += b"\xe7\xe8"                                    # out 0xe8, eax
    loop = len(c)
    c += write                                          # 1: or byte [rdi], 0
    c += b"\x48\x01\xf7"                                # add rdi, rsi
    c += b"\x48\xff\xc9"                                # dec rcx
    rel = loop - (len(c) + 2)
    c += b"\x75" + (rel & 0xFF).to_bytes(1, "little")   # jnz 1b
    c += b"\xb8" + UCALL_DONE.to_bytes(4, "little")     # mov eax, UCALL_DONE
    c += b"\xe7\xe8"                                    # out 0xe8, eax
    c += b"\xf4\xeb\xfd"                                # hlt; jmp hlt
    return bytes(c)


def _partition():
    from ..partition.config import PartitionConfig
    from ..partition.partition import ChildPartition
    from ..partition.ucall import UCALL_SYNC, encode

    def on_sync(index, uc):
        return "stop"

    cfg = PartitionConfig(raw=_dirty_code(), raw_gpa=CODE_GPA, raw_mode="long", memory=MEMORY,
                          on_sync=on_sync, timeout=120)
    p = ChildPartition(cfg)
    p.memory.write(UCALL_READY, encode(UCALL_SYNC, (0,)))
    p.memory.write(UCALL_DONE, encode(UCALL_SYNC, (1,)))
    return p


def restore_case(p, snap, fraction: float, repeats: int) -> dict:
    """Dirty ``fraction`` of the pages ``repeats`` times; median restore time."""
    npages = MEMORY // PAGE
    count = max(1, round(npages * fraction))
    stride = npages // count
    times, copied, dirty_ms = [], [], []
    for _ in range(repeats):
        p.restore(snap)
        v = p.vcpus[0]
        regs = v.get_regs()
        regs.rcx, regs.rsi, regs.rdi = count, stride * PAGE, 0
        v.set_regs(regs)
        t = time.perf_counter()
        r = p.run()
        dirty_ms.append((time.perf_counter() - t) * 1000)
        if r.syncs[-1:] != [(0, (1, 0, 0, 0, 0, 0))]:
            raise RuntimeError(f"dirtying loop did not finish: {r.reason}")
        t0 = time.perf_counter()
        info = p.restore(snap)
        times.append((time.perf_counter() - t0) * 1000)
        copied.append(info["pages_copied"])
    return {"fraction": fraction, "pages_dirtied": count, "pages_copied": int(median(copied)),
            "restore_ms": round(median(times), 3), "restore_ms_min": round(min(times), 3),
            "guest_dirty_ms": round(median(dirty_ms), 1),
            "samples_ms": [round(x, 3) for x in times]}


def first_instruction(image: str | None) -> dict:
    """``ChildPartition()`` to the first guest instruction retired (a single-step exit)."""
    from ..images import image_path
    from ..kvm import abi
    from ..partition.config import PartitionConfig
    from ..partition.partition import ChildPartition
    marks = {}

    def on_debug(vt, run):
        marks["first"] = time.perf_counter()
        vt.vcpu.set_guest_debug(0)
        return "stop"

    if image is None:
        cfg = PartitionConfig(raw=b"\x90\xf4", raw_gpa=CODE_GPA, raw_mode="long", timeout=30)
    else:
        cfg = PartitionConfig(image=image_path(image), cmdline=image, timeout=30)
    t0 = time.perf_counter()
    p = ChildPartition(cfg)
    t1 = time.perf_counter()
    try:
        p.debug_handler = on_debug
        p.vcpus[0].set_guest_debug(abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_SINGLESTEP)
        t2 = time.perf_counter()
        p.run()
    finally:
        p.close()
    if "first" not in marks:
        raise RuntimeError("no single-step exit")
    return {"create_ms": (t1 - t0) * 1000, "run_to_first_ms": (marks["first"] - t2) * 1000,
            "total_ms": (marks["first"] - t0) * 1000}


def whole_process(repeats: int) -> dict:
    """Wall time of ``python -m hvkvm.cli run hello`` and of the bare interpreter + imports.

    The children run as an installed package would: with bytecode caching on (a
    ``PYTHONDONTWRITEBYTECODE`` in the caller's environment is dropped for them: with it, every
    hvkvm module is compiled from source on every start while the interpreter's own standard
    library still loads precompiled) and after one untimed warm-up run that writes the caches
    and builds ``hello`` if needed.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "hvkvm.cli", "run", "hello"], env=env,
                   capture_output=True, timeout=300)
    run, imp, bare = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, capture_output=True, timeout=120)
        bare.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "hvkvm.cli", "run", "hello"], env=env,
                           capture_output=True, timeout=120)
        run.append((time.perf_counter() - t) * 1000)
        if r.returncode != 0:
            raise RuntimeError(f"hvkvm run hello failed: {r.stderr.decode()[-300:]}")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import hvkvm.cli, hvkvm.partition.partition"],
                       env=env, capture_output=True, timeout=120)
        imp.append((time.perf_counter() - t) * 1000)
    return {"run_hello_ms": round(median(run), 1), "python_and_imports_ms": round(median(imp), 1),
            "python_pass_ms": round(median(bare), 1),
            "hvkvm_own_ms": round(median(run) - median(bare), 1),
            "run_over_python": round(median(run) / median(bare), 3),
            "bytecode_cache": True,
            "samples_ms": [round(x, 1) for x in run],
            "samples_python_pass_ms": [round(x, 1) for x in bare],
            "samples_imports_ms": [round(x, 1) for x in imp]}


def teardown(repeats: int) -> dict:
    """``close()`` of a partition whose ``hello`` guest ran to DONE."""
    from ..images import image_path
    from ..partition.config import PartitionConfig
    from ..partition.partition import ChildPartition
    times = []
    for _ in range(repeats):
        p = ChildPartition(PartitionConfig(image=image_path("hello"), cmdline="hello",
                                           timeout=60))
        try:
            r = p.run()
            if not r.passed:
                raise RuntimeError(f"hello: {r.reason}")
        finally:
            t = time.perf_counter()
            p.close()
            times.append((time.perf_counter() - t) * 1000)
    return {"teardown_ms": round(median(times), 2), "samples_ms": [round(x, 2) for x in times]}


def qemu_boot(repeats: int) -> dict:
    """QEMU (the pinned peer) booting ``hello`` to the guest's debug-exit, whole process."""
    from ..images import image_path
    from . import qemu
    why = qemu.unavailable()
    if why:
        return {"status": "unavailable", "reason": why}
    walls, cpus = [], []
    for _ in range(repeats):
        r = qemu.run(str(image_path("hello")), "hello", timeout=120)
        if r["status"] != "pass":
            return {"status": "failed", "reason": f"exit {r['returncode']}: "
                                                  f"{(r['stderr'] or r['console'])[-300:]}"}
        walls.append(r["wall_s"] * 1000)
        cpus.append(r["cpu_s"] * 1000)
    return {"status": "ok", "wall_ms": round(median(walls), 1), "cpu_ms": round(median(cpus), 1),
            "samples_ms": [round(x, 1) for x in walls], "command": " ".join(qemu.BASE)}


def run(quick: bool = False, repeat: int | None = None) -> dict:
    """All measurements; the report section."""
    repeats = repeat or (3 if quick else 15)
    rows = []
    snapshot_ms = second_snapshot_ms = None
    restore_error = None
    with progress.step(f"boot: snapshot restore of a {MEMORY >> 20} MiB guest, {repeats} x"):
        try:
            p = _partition()
            try:
                r = p.run()
                if r.syncs[-1:] != [(0, (0, 0, 0, 0, 0, 0))]:
                    raise RuntimeError(f"restore bench guest did not reach SYNC 0: {r.reason}")
                t = time.perf_counter()
                snap = p.snapshot()
                snapshot_ms = round((time.perf_counter() - t) * 1000, 1)
                for f in FRACTIONS:
                    rows.append(restore_case(p, snap, f,
                                             repeats if f < 1 else max(2, repeats // 3)))
                t = time.perf_counter()
                snap2 = p.snapshot()
                second_snapshot_ms = round((time.perf_counter() - t) * 1000, 1)
                del snap2
            finally:
                p.close()
        except Exception as e:  # noqa: BLE001 - the other parts of the suite still run
            restore_error = f"{type(e).__name__}: {e}"
            rows = []
            progress.note(f"boot: snapshot restore failed: {restore_error}")
    first = []
    for image in (None, "hello"):
        with progress.step(f"boot: creation to first instruction, {image or 'raw code'}"):
            samples = [first_instruction(image) for _ in range(3 if quick else 7)]
        first.append({"guest": image or "raw code (2 bytes)",
                      "create_ms": round(median([s["create_ms"] for s in samples]), 2),
                      "run_to_first_ms": round(median([s["run_to_first_ms"] for s in samples]), 2),
                      "total_ms": round(median([s["total_ms"] for s in samples]), 2)})
    n = repeat or (2 if quick else 7)
    with progress.step(f"boot: `hvkvm run hello` and bare python3, {n} x"):
        proc = whole_process(n)
    with progress.step("boot: teardown"):
        down = teardown(2 if quick else 5)
    with progress.step("boot: QEMU booting hello"):
        qb = qemu_boot(2 if quick else 5)
    one = next((r for r in rows if r["fraction"] == 0.01), None)
    return {"memory_mib": MEMORY >> 20, "restore": rows, "restore_error": restore_error,
            "snapshot_ms": snapshot_ms, "later_snapshot_ms": second_snapshot_ms,
            "first_instruction": first, "process": proc, "teardown": down, "qemu": qb,
            "goal_restore_1pct_under_1ms": one["restore_ms"] < 1.0 if one else None,
            "goal_run_hello_within_1.5x_python": proc["run_over_python"] <= 1.5,
            "goal_hvkvm_own_under_80ms": proc["hvkvm_own_ms"] < 80}


def format_report(section: dict) -> str:
    """The three tables and the goal line."""
    lines = [f"restore of a {section['memory_mib']} MiB guest (dirty log; median):"
             + (f" FAILED: {section['restore_error']}" if section.get("restore_error") else ""),
             table(section["restore"], [("fraction", "dirtied", ".0%"),
                                        ("pages_dirtied", "pages", "d"),
                                        ("pages_copied", "copied", "d"),
                                        ("restore_ms", "restore ms", ".3f"),
                                        ("restore_ms_min", "min ms", ".3f"),
                                        ("guest_dirty_ms", "guest loop ms", ".1f")]),
             f"first snapshot (enables the dirty log, copies RAM): {section['snapshot_ms']} ms; "
             f"a later one: {section['later_snapshot_ms']} ms",
             "",
             "partition creation to the first guest instruction (median):",
             table(section["first_instruction"], [("guest", "guest", "s"),
                                                  ("create_ms", "ChildPartition() ms", ".2f"),
                                                  ("run_to_first_ms", "run() to 1st insn ms", ".2f"),
                                                  ("total_ms", "total ms", ".2f")]),
             "",
             f"`hvkvm run hello`, whole process: {section['process']['run_hello_ms']} ms "
             f"(python start + imports alone: {section['process']['python_and_imports_ms']} ms; "
             f"bare `python3 -c pass`: {section['process'].get('python_pass_ms')} ms; "
             f"{section['process'].get('run_over_python')}x, hvkvm's own "
             f"{section['process'].get('hvkvm_own_ms')} ms)",
             f"teardown (close() after hello): {section.get('teardown', {}).get('teardown_ms')} ms",
             _qemu_line(section.get("qemu")),
             f"restore at 1% under 1 ms: {section['goal_restore_1pct_under_1ms']}"]
    return "\n".join(lines)


def _qemu_line(q: dict | None) -> str:
    if not q:
        return "QEMU booting hello: not measured"
    if q["status"] != "ok":
        return f"QEMU booting hello: {q['status']}: {q['reason']}"
    return (f"QEMU booting hello, whole process to the debug-exit: {q['wall_ms']} ms "
            f"(QEMU CPU {q['cpu_ms']} ms)")


def measures(section: dict) -> list[dict]:
    """Times (lower is better)."""
    out = []
    for r in section["restore"]:
        out.append(measure(f"boot/restore/{r['fraction']:.0%}/ms", r["restore_ms"], "ms",
                           "lower", r.get("samples_ms"), group="restore",
                           label=f"{r['fraction']:.0%} dirty"))
    for r in section["first_instruction"]:
        out.append(measure(f"boot/first_instruction/{r['guest']}/ms", r["total_ms"], "ms",
                           "lower", group="first instruction", label=r["guest"]))
    pr = section["process"]
    out.append(measure("boot/run_hello/ms", pr["run_hello_ms"], "ms", "lower",
                       pr.get("samples_ms"), group="whole process", label="hvkvm run hello"))
    if "python_pass_ms" in pr:
        out.append(measure("boot/python_pass/ms", pr["python_pass_ms"], "ms", "lower",
                           pr.get("samples_python_pass_ms"), group="whole process",
                           label="python3 -c pass"))
    q = section.get("qemu") or {}
    if q.get("status") == "ok":
        out.append(measure("boot/qemu_hello/ms", q["wall_ms"], "ms", "lower", q["samples_ms"],
                           group="whole process", label="QEMU hello"))
    td = section.get("teardown")
    if td:
        out.append(measure("boot/teardown/ms", td["teardown_ms"], "ms", "lower",
                           td["samples_ms"], group="teardown", label="close()"))
    return out
