"""``hvkvm doctor``: can this machine run child partitions, on which kind of KVM, and what follows.

Two kinds of KVM matter: hardware-assisted (kvm_intel / kvm_amd, VT-x / AMD-V, bare metal or
nested) and kvm_pvm (software nested virtualization: ring-3 guest code runs natively, ring-0 code is
emulated instruction by instruction). The backend is named from the loaded module and confirmed by a
short probe that times the same loop at CPL0 and at CPL3 in a real guest.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from .kvm import abi
from .kvm.errors import KvmError

KVM_PATH = "/dev/kvm"

#: Capabilities hvkvm uses, and what for; "required" ones make doctor fail when absent.
CAPABILITIES = [
    ("KVM_CAP_IRQCHIP", True, "in-kernel LAPIC/IOAPIC/PIC"),
    ("KVM_CAP_USER_MEMORY", True, "guest RAM from host memory"),
    ("KVM_CAP_SET_TSS_ADDR", True, "real mode on VT-x"),
    ("KVM_CAP_EXT_CPUID", True, "KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2"),
    ("KVM_CAP_PIT2", True, "in-kernel PIT"),
    ("KVM_CAP_IMMEDIATE_EXIT", True, "stopping vCPU threads"),
    ("KVM_CAP_SYNC_REGS", True, "register access on exits without extra ioctls"),
    ("KVM_CAP_MP_STATE", True, "SMP start-up and halt detection"),
    ("KVM_CAP_IRQ_ROUTING", False, "GSI routing (SINTs as MSIs)"),
    ("KVM_CAP_IRQFD", False, "interrupts from C data planes without exits"),
    ("KVM_CAP_IOEVENTFD", False, "VMBus kicks without userspace exits"),
    ("KVM_CAP_SIGNAL_MSI", False, "SynIC interrupts"),
    ("KVM_CAP_X86_USER_SPACE_MSR", False, "Hyper-V synthetic MSRs in the parent"),
    ("KVM_CAP_X86_MSR_FILTER", False, "trapping synthetic MSRs"),
    ("KVM_CAP_COALESCED_MMIO", False, "exit-free console output"),
    ("KVM_CAP_COALESCED_PIO", False, "exit-free console output"),
    ("KVM_CAP_SET_GUEST_DEBUG", False, "gdb stub: single step, breakpoints"),
    ("KVM_CAP_DIRTY_LOG_RING", False, "fast snapshot restore"),
    ("KVM_CAP_BINARY_STATS_FD", False, "exit and interrupt counters"),
    ("KVM_CAP_X86_DISABLE_EXITS", False, "benchmark variants"),
    ("KVM_CAP_HYPERV", False, "(not needed: hvkvm emulates Hyper-V in the parent)"),
]

PROBE_MMIO = 0xD000_0000
PROBE_CODE = 0x10000
PROBE_USER_STACK = 0x8F000
RING0_ITERS = 50_000
RING3_ITERS = 5_000_000


@dataclass
class Report:
    """What ``hvkvm doctor`` found."""

    ok: bool = False
    device: str = KVM_PATH
    accessible: bool = False
    problem: str = ""
    fix: str = ""
    api_version: int | None = None
    modules: list[str] = field(default_factory=list)
    backend: str = "unknown"
    vendor: str = ""
    cpu_model: str = ""
    nested: bool | None = None
    caps: dict[str, int] = field(default_factory=dict)
    missing_required: list[str] = field(default_factory=list)
    missing_optional: list[str] = field(default_factory=list)
    probe: dict = field(default_factory=dict)
    meaning: str = ""

    def to_json(self) -> dict:
        """A JSON-ready dict."""
        return dict(self.__dict__)


def loaded_kvm_modules() -> list[str]:
    """KVM modules loaded in the host kernel (from /sys/module)."""
    return [m for m in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm") if Path("/sys/module", m).exists()]


def cpu_info() -> tuple[str, str, set[str]]:
    """(vendor, model name, flags) from /proc/cpuinfo."""
    vendor = model = ""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return vendor, model, flags


def access_fix(path: str, err: int) -> tuple[str, str]:
    """A one-line problem and the exact fix for an unusable /dev/kvm."""
    if err == errno.ENOENT:
        return (f"{path} does not exist",
                "load KVM: `modprobe kvm_intel` or `modprobe kvm_amd` (enable VT-x/AMD-V in the "
                "firmware; on a cloud VM or CI runner, pick one with nested virtualization)")
    if err in (errno.EACCES, errno.EPERM):
        return (f"{path} is not readable and writable by this user",
                "add yourself to the kvm group: `sudo usermod -aG kvm $USER` and log in again; or "
                "a udev rule: echo 'KERNEL==\"kvm\", GROUP=\"kvm\", MODE=\"0666\"' | sudo tee "
                "/etc/udev/rules.d/99-kvm.rules && sudo udevadm control --reload && "
                "sudo udevadm trigger --name-match=kvm")
    return (f"{path}: {os.strerror(err)}", "check that KVM works on this host (dmesg | grep kvm)")


def kvm_usable(path: str | None = None) -> tuple[bool, str]:
    """(True, "") when /dev/kvm can be opened read-write, else (False, reason with fix)."""
    from .kvm.system import kvm_device_path
    path = path or kvm_device_path()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        problem, fix = access_fix(path, e.errno)
        return False, f"{problem}; fix: {fix}"
    os.close(fd)
    return True, ""


def _probe_code() -> bytes:
    """64-bit code: time a dec/jnz loop at CPL0, drop to CPL3 with iretq, time it again.

    Marks are 32-bit MMIO writes to PROBE_MMIO (an exit at any CPL, no I/O bitmap needed).
    """
    from .boot.cpu import SEL_USER_CODE64, SEL_USER_DATA
    c = bytearray()
    c += b"\x48\xbb" + struct.pack("<Q", PROBE_MMIO)          # mov rbx, PROBE_MMIO
    c += b"\xc7\x03" + struct.pack("<I", 1)                   # mov dword [rbx], 1
    c += b"\xb9" + struct.pack("<I", RING0_ITERS)             # mov ecx, N0
    c += b"\xff\xc9\x75\xfc"                                  # 1: dec ecx; jnz 1b
    c += b"\xc7\x03" + struct.pack("<I", 2)                   # mov dword [rbx], 2
    c += b"\x6a" + bytes([SEL_USER_DATA])                     # push ss
    c += b"\x68" + struct.pack("<I", PROBE_USER_STACK)        # push rsp
    c += b"\x6a\x02"                                          # push rflags (IF=0)
    c += b"\x6a" + bytes([SEL_USER_CODE64])                   # push cs
    user_at = PROBE_CODE + len(c) + 10 + 1 + 2
    c += b"\x48\xb8" + struct.pack("<Q", user_at)             # mov rax, user
    c += b"\x50"                                              # push rax
    c += b"\x48\xcf"                                          # iretq
    assert PROBE_CODE + len(c) == user_at
    c += b"\xc7\x03" + struct.pack("<I", 3)                   # user: mov dword [rbx], 3
    c += b"\xb9" + struct.pack("<I", RING3_ITERS)             # mov ecx, N3
    c += b"\xff\xc9\x75\xfc"                                  # 1: dec ecx; jnz 1b
    c += b"\xc7\x03" + struct.pack("<I", 4)                   # mov dword [rbx], 4
    c += b"\xeb\xfe"                                          # jmp $
    return bytes(c)


class _ProbeMarks:
    """MMIO device recording when each mark arrives; mark 4 ends the probe."""

    def __init__(self):
        self.times: dict[int, float] = {}
        self.partition = None

    def read(self, offset: int, data: memoryview) -> None:
        """Reads of the mark register return zero."""
        data[:] = b"\0" * len(data)

    def write(self, offset: int, data) -> None:
        """Record the time a mark arrived; mark 4 ends the probe."""
        mark = int.from_bytes(bytes(data), "little")
        self.times[mark] = time.perf_counter()
        if mark == 4 and self.partition is not None:
            self.partition.request_stop("probe complete")


def timing_probe(timeout: float = 20.0) -> dict:
    """Time the same loop at CPL0 and CPL3 in a real guest; ns per iteration and the ratio."""
    from .boot.cpu import write_long_mode_tables
    from .partition.config import DeviceSpec, PartitionConfig
    from .partition.partition import ChildPartition
    marks = _ProbeMarks()
    cfg = PartitionConfig(raw=_probe_code(), raw_gpa=PROBE_CODE, raw_mode="long",
                          memory=4 << 20, timeout=timeout, stall_probe=0,
                          devices=[DeviceSpec("mmio", PROBE_MMIO, 0x1000, marks)])
    with ChildPartition(cfg) as p:
        marks.partition = p
        write_long_mode_tables(p.memory, user=True)
        result = p.run()
    t = marks.times
    if not all(k in t for k in (1, 2, 3, 4)):
        return {"ok": False, "error": result.reason}
    r0 = (t[2] - t[1]) / RING0_ITERS * 1e9
    r3 = (t[4] - t[3]) / RING3_ITERS * 1e9
    return {"ok": True, "ring0_ns_per_iter": round(r0, 3), "ring3_ns_per_iter": round(r3, 3),
            "ratio": round(r0 / r3, 1) if r3 > 0 else None}


def diagnose(path: str | None = None, probe: bool = True) -> Report:
    """Examine the machine and return a :class:`Report`."""
    from .kvm.system import kvm_device_path
    path = path or kvm_device_path()
    rep = Report(device=path)
    rep.modules = loaded_kvm_modules()
    rep.vendor, rep.cpu_model, flags = cpu_info()
    rep.nested = "hypervisor" in flags
    ok, why = kvm_usable(path)
    if not ok:
        try:
            os.stat(path)
            err = errno.EACCES
        except FileNotFoundError:
            err = errno.ENOENT
        rep.problem, rep.fix = access_fix(path, err)
        rep.meaning = "hvkvm cannot run guests here until this is fixed."
        return rep
    rep.accessible = True
    from .kvm.system import Kvm
    try:
        with Kvm(path) as kvm:
            rep.api_version = kvm.get_api_version()
            for name, required, _ in CAPABILITIES:
                num = getattr(abi, name, None)
                val = kvm.check_extension(num) if num is not None else 0
                rep.caps[name] = val
                if not val:
                    (rep.missing_required if required else rep.missing_optional).append(name)
    except KvmError as e:
        rep.problem = str(e)
        rep.fix = "check that KVM works on this host (dmesg | grep kvm)"
        return rep
    if "kvm_pvm" in rep.modules:
        rep.backend = "kvm_pvm"
    elif "kvm_intel" in rep.modules:
        rep.backend = "kvm_intel"
    elif "kvm_amd" in rep.modules:
        rep.backend = "kvm_amd"
    if probe and not rep.missing_required:
        try:
            rep.probe = timing_probe()
        except Exception as e:  # the doctor reports, it does not crash
            rep.probe = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        ratio = rep.probe.get("ratio")
        if ratio is not None:
            emulated = ratio > 50
            rep.probe["ring0_emulated"] = emulated
            if rep.backend == "unknown":
                rep.backend = "kvm_pvm" if emulated else "hardware"
    if rep.backend == "kvm_pvm":
        rep.meaning = ("software nested virtualization: guest ring-3 code runs natively, ring-0 "
                       "code is emulated (~1000x slower) and every exit is expensive; run hot "
                       "guest loops in ring 3 (images do by default) and expect benchmarks to "
                       "favour polling over exits")
    elif rep.backend in ("kvm_intel", "kvm_amd", "hardware"):
        kind = "VT-x" if rep.backend == "kvm_intel" else "AMD-V" if rep.backend == "kvm_amd" else "VT-x/AMD-V"
        where = "nested (this host is itself a VM)" if rep.nested else "bare metal"
        rep.meaning = f"hardware-assisted virtualization ({kind}, {where}): guest code runs natively in every ring"
    rep.ok = not rep.missing_required
    if rep.missing_required:
        rep.problem = "missing required KVM capabilities: " + ", ".join(rep.missing_required)
        rep.fix = "use a newer host kernel (hvkvm needs Linux 5.x-era KVM features)"
    return rep


def format_report(rep: Report) -> str:
    """Human-readable doctor output."""
    lines = [f"/dev/kvm:      {'usable' if rep.accessible else 'NOT usable'} ({rep.device})"]
    if rep.problem:
        lines.append(f"problem:       {rep.problem}")
    if rep.fix:
        lines.append(f"fix:           {rep.fix}")
    lines.append(f"modules:       {', '.join(rep.modules) or 'none'}")
    lines.append(f"cpu:           {rep.vendor} {rep.cpu_model}".rstrip())
    lines.append(f"host:          {'a VM (nested)' if rep.nested else 'bare metal'}")
    if rep.api_version is not None:
        lines.append(f"API version:   {rep.api_version}")
        lines.append(f"backend:       {rep.backend}")
    if rep.probe:
        if rep.probe.get("ok"):
            lines.append(f"probe:         loop at CPL0 {rep.probe['ring0_ns_per_iter']} ns/iter, "
                         f"CPL3 {rep.probe['ring3_ns_per_iter']} ns/iter "
                         f"(ratio {rep.probe['ratio']})")
        else:
            lines.append(f"probe:         failed: {rep.probe.get('error')}")
    if rep.caps:
        descr = {n: d for n, _, d in CAPABILITIES}
        for name in rep.missing_required:
            lines.append(f"missing (required): {name}: {descr[name]}")
        for name in rep.missing_optional:
            lines.append(f"missing (optional): {name}: {descr[name]}")
    if rep.meaning:
        lines.append(f"meaning:       {rep.meaning}")
    lines.append(f"verdict:       {'OK' if rep.ok else 'NOT OK'}")
    return "\n".join(lines)
