"""What every benchmark report carries: the machine, progress on the terminal, sample summaries,
comparable measures, the JSON writer and plain tables.

Every suite module has ``run(quick, repeat) -> section`` (a dict with every sample),
``format_report(section) -> str`` and ``measures(section) -> list`` of :func:`measure` dicts (what
``hvkvm bench compare`` and ``plot`` work on).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

#: Version of the JSON layout (``hvkvm bench compare`` refuses other versions).
SCHEMA = 2

_REPO = Path(__file__).resolve().parent.parent.parent


def _first_line(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    out = (r.stdout or r.stderr).strip().splitlines()
    return out[0].strip() if out else None


def git_revision() -> str | None:
    """``git describe --always --dirty`` of the hvkvm tree (None outside a checkout)."""
    if not (_REPO / ".git").exists() or shutil.which("git") is None:
        return None
    rev = _first_line(["git", "-C", str(_REPO), "rev-parse", "HEAD"])
    dirty = _first_line(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"])
    return f"{rev}{'-dirty' if dirty else ''}" if rev else None


def qemu_version() -> str | None:
    """``qemu-system-x86_64 --version``'s first line (None when QEMU is absent)."""
    q = shutil.which("qemu-system-x86_64")
    return _first_line([q, "--version"]) if q else None


def describe_machine(probe: bool = True) -> dict:
    """The machine, the KVM backend and the toolchain a run measured."""
    from .. import __version__
    from ..doctor import diagnose
    rep = diagnose(probe=probe)
    model = rep.cpu_model
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem_gib = round(kb / 1048576, 1)
    except (OSError, AttributeError):
        pass
    return {
        "hvkvm": __version__,
        "git_revision": git_revision(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gcc": _first_line(["gcc", "--version"]),
        "qemu": qemu_version(),
        "cpus": os.cpu_count(),
        "cpu": f"{rep.vendor} {model}".strip(),
        "memory_gib": mem_gib,
        "host_is_vm": rep.nested,
        "nested": rep.nested,
        "backend": rep.backend,
        "kvm_modules": list(rep.modules),
        "kvm_api_version": rep.api_version,
        "kvm_caps": dict(rep.caps),
        "ring0_emulated": rep.backend == "kvm_pvm",
        "probe": rep.probe,
        "load_average": list(os.getloadavg()),
    }


def machine_line(m: dict) -> str:
    """One line naming the machine (the report's first)."""
    return (f"machine: {m['cpu']}, {m['cpus']} CPUs, backend {m['backend']}"
            f"{' (ring 0 emulated)' if m.get('ring0_emulated') else ''}, kernel {m['kernel']}, "
            f"Python {m['python']}, hvkvm {m.get('git_revision') or m['hvkvm']}")


# -- statistics ---------------------------------------------------------------------------------

def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    return statistics.median(values)


def summarize(samples: list[float]) -> dict:
    """median, mean, min, max, n and ``spread`` = (max - min) / median (0 for one sample)."""
    if not samples:
        return {"median": None, "mean": None, "min": None, "max": None, "n": 0, "spread": 0.0}
    med = statistics.median(samples)
    spread = (max(samples) - min(samples)) / med if len(samples) > 1 and med else 0.0
    return {"median": med, "mean": statistics.fmean(samples), "min": min(samples),
            "max": max(samples), "n": len(samples), "spread": round(spread, 4)}


def measure(mid: str, value, unit: str, better: str, samples=None, *, group: str = "",
            label: str = "") -> dict:
    """One comparable number: ``mid`` a stable id ("storage/storvsc-c/tmpfs/r3/randread-4k-qd1/
    iops"), ``better`` "higher" or "lower", ``samples`` every repetition's value; ``group`` and
    ``label`` place it in a chart (one chart per suite and unit, bars grouped by ``group``)."""
    return {"id": mid, "value": value, "unit": unit, "better": better,
            "samples": list(samples) if samples is not None else ([value] if value is not None
                                                                    else []),
            "group": group, "label": label or mid}


# -- output -------------------------------------------------------------------------------------

def write_json(path: str | None, doc: dict) -> None:
    """Write ``doc`` to ``path`` (if given) as indented JSON."""
    if path:
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: columns are (key, heading, format)."""
    heads = [h for _, h, _ in columns]
    cells = [[_cell(r.get(k), f) for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(heads)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(v, f: str) -> str:
    if v is None or v == "":
        return "-"
    try:
        return format(v, f)
    except (ValueError, TypeError):
        return str(v)


class Progress:
    """Progress lines on stderr while a suite runs: rich's spinner when rich is installed and
    stderr is a terminal (``pip install hvkvm[bench]``), else one plain line per step."""

    def __init__(self):
        self.count = 0
        self._console = None
        self.enabled = True
        if sys.stderr.isatty() and not os.environ.get("HVKVM_BENCH_PLAIN"):
            try:
                from rich.console import Console
                self._console = Console(stderr=True)
            except ImportError:
                self._console = None

    @contextlib.contextmanager
    def step(self, label: str):
        """Announce ``label``; on leaving, say how long it took (or that it failed)."""
        self.count += 1
        n = self.count
        t0 = time.perf_counter()
        if not self.enabled:
            yield
            return
        if self._console is not None:
            with self._console.status(f"[bold][{n}][/bold] {label} ..."):
                try:
                    yield
                except BaseException:
                    self._console.print(f"[red][{n}] {label}: failed after "
                                        f"{time.perf_counter() - t0:.1f} s[/red]")
                    raise
            self._console.print(f"[dim][{n}][/dim] {label} [green]{time.perf_counter() - t0:.1f}"
                                f" s[/green]")
            return
        print(f"[{n}] {label} ...", file=sys.stderr, flush=True)
        try:
            yield
        except BaseException:
            print(f"[{n}] {label}: failed after {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)
            raise
        print(f"[{n}] done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """A line between steps."""
        if not self.enabled:
            return
        if self._console is not None:
            self._console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)


#: The process's progress reporter (the CLI and the suites share it).
progress = Progress()


# -- process CPU time ---------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(path: str) -> list[str]:
    # fields after "(comm)": state=0 ... utime=11 stime=12 ... guest_time=40
    return Path(path).read_text().rsplit(")", 1)[1].split()


def cpu_times(pid: int | str = "self", vcpu_tids=()) -> dict:
    """CPU seconds of a process: ``total`` (CLOCK_PROCESS_CPUTIME_ID for self: ns resolution),
    ``user``, ``system`` and ``guest`` (time in guest mode, part of user; clock ticks) from
    /proc/PID/stat, and for self ``threads``: {tid: (name, on-CPU seconds from schedstat (ns
    resolution), guest seconds (ticks))}; ``vcpu_tids`` (native thread ids) are the vCPU threads
    (named "vcpu" in ``threads``)."""
    out = {}
    try:
        f = _stat_fields(f"/proc/{pid}/stat")
        out["user"] = int(f[11]) / _TICK
        out["system"] = int(f[12]) / _TICK
        out["guest"] = int(f[40]) / _TICK if len(f) > 40 else 0.0
    except (OSError, IndexError, ValueError):
        out.update(user=0.0, system=0.0, guest=0.0)
    if pid != "self":
        out["total"] = out["user"] + out["system"]
        return out
    out["total"] = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)
    threads = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        tids = []
    for tid in tids:
        base = f"/proc/self/task/{tid}"
        try:
            name = "vcpu" if int(tid) in vcpu_tids else Path(base + "/comm").read_text().strip()
            ns = int(Path(base + "/schedstat").read_text().split()[0])
            f = _stat_fields(base + "/stat")
            guest = int(f[40]) / _TICK if len(f) > 40 else 0.0
        except (OSError, IndexError, ValueError):
            continue
        threads[int(tid)] = (name, ns / 1e9, guest)
    out["threads"] = threads
    return out


def cpu_delta(a: dict, b: dict) -> dict:
    """b - a: ``total``, ``user``, ``system``, ``guest``; and from the threads, ``vcpu`` (on-CPU
    seconds of vCPU threads, guest time included), ``vcpu_guest``, ``other`` (every other thread:
    data planes, VSP threads, the main thread) and ``host`` = other + the vCPU threads' time
    outside guest mode (the parent's CPU time; guest time comes in clock ticks, so ``host`` is
    accurate to about 10 ms per window)."""
    out = {k: b[k] - a[k] for k in ("total", "user", "system", "guest") if k in a and k in b}
    ta, tb = a.get("threads"), b.get("threads")
    if ta is None or tb is None:
        out["host"] = max(0.0, out.get("total", 0.0) - out.get("guest", 0.0))
        return out
    vcpu = vguest = other = 0.0
    for tid, (name, secs, guest) in tb.items():
        s0, g0 = (ta[tid][1], ta[tid][2]) if tid in ta else (0.0, 0.0)
        if name == "vcpu":
            vcpu += secs - s0
            vguest += guest - g0
        else:
            other += secs - s0
    out.update(vcpu=vcpu, vcpu_guest=vguest, other=other,
               host=other + max(0.0, vcpu - vguest))
    return out


def elf_arg_values(path: str | Path) -> dict[str, list[str]]:
    """The command-line values a guest image declares it accepts (``HV_ARG_VALUES`` in
    guest_images/include/hv.h: "key=v1 v2" strings in its ELF section ``.hvkvm.args``), as
    ``{key: [values]}``; {} when the section is absent. OSError/ValueError for a file that is not
    a readable 64-bit little-endian ELF."""
    data = Path(path).read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:   # (name offset, file offset, size)
        name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", data,
                                                                   shoff + i * shentsize)
        return name, off, size

    def contents(i: int) -> bytes:
        _, off, size = header(i)
        if off + size > len(data):     # a hostile or truncated file; .bss-like ones are not read
            raise ValueError(f"{path}: section {i} runs past the end of the file")
        return data[off:off + size]

    if not shoff or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        raise ValueError(f"{path}: no usable section header table")
    names = contents(shstrndx)
    out: dict[str, list[str]] = {}
    for i in range(shnum):
        name = header(i)[0]
        if names[name:names.find(b"\0", name)] != b".hvkvm.args":
            continue
        for entry in contents(i).split(b"\0"):
            key, eq, values = entry.decode(errors="replace").partition("=")
            if eq:
                out.setdefault(key, []).extend(values.split())
    return out


def image_accepts(image: str, key: str, value: str) -> bool:
    """Whether built-in guest image ``image`` declares that it accepts ``key=value`` (see
    :func:`elf_arg_values`); builds the image first if needed. False if it cannot be built."""
    from ..images import ImageError, image_path
    try:
        return value in elf_arg_values(image_path(image)).get(key, [])
    except (ImageError, OSError, ValueError):
        return False
