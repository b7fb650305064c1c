"""Guest tests: discover the HV_TEST descriptors in an image and run each in a fresh partition.

An image declares tests with ``HV_TEST(name, .flags = ..., .vcpus = N, .timeout_s = S)``
(``guest_images/include/hv.h``); each descriptor lands in the ELF section ``hvkvm_tests``. The
host reads that section from the file (no guest runs to list tests), and runs a test by booting
the image with ``test=NAME`` on the command line. Both the pytest plugin
(:mod:`hvkvm.pytest_plugin`) and ``hvkvm test`` use this module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from .boot.elf import BadImage, load_elf

SECTION = "hvkvm_tests"
DESC = struct.Struct("<QQQIIII")   # struct hv_test: name, fn, file, line, flags, vcpus, timeout_s
HV_TEST_XFAIL = 1
HV_TEST_USER = 2
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class GuestTest:
    """One HV_TEST of an image."""

    image: Path
    name: str
    file: str
    line: int
    flags: int
    vcpus: int
    timeout_s: int

    @property
    def xfail(self) -> bool:
        """Expected to fail."""
        return bool(self.flags & HV_TEST_XFAIL)

    @property
    def user(self) -> bool:
        """Runs as a ring-3 task."""
        return bool(self.flags & HV_TEST_USER)


def _cstring(image, addr: int, limit: int = 512) -> str:
    for seg in image.segments:
        if seg.gpa <= addr < seg.gpa + len(seg.data):
            raw = seg.data[addr - seg.gpa:addr - seg.gpa + limit]
            return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    raise BadImage(f"{image.path}: test descriptor points at {addr:#x}, outside the image")


def discover(path: str | Path) -> list[GuestTest]:
    """The image's guest tests, in declaration order (an image without any gives [])."""
    path = Path(path)
    image = load_elf(path)
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(SECTION)
        data = sec.data() if sec is not None else b""
    if len(data) % DESC.size:
        raise BadImage(f"{path}: {SECTION} section of {len(data)} bytes is not whole descriptors")
    tests = []
    for off in range(0, len(data), DESC.size):
        name_p, _fn, file_p, line, flags, vcpus, timeout_s = DESC.unpack_from(data, off)
        tests.append(GuestTest(path, _cstring(image, name_p), _cstring(image, file_p), line,
                               flags, max(1, vcpus), timeout_s))
    # The linker keeps each object's descriptors in its own order: sort into source order.
    return sorted(tests, key=lambda t: (t.file, t.line))


def run_test(test: GuestTest, *, timeout: float | None = None, serial_out=None, memory=None,
             make_partition=None, fast_reset: "FastReset | None" = None):
    """Boot the image with ``test=NAME`` and return the :class:`RunResult`.

    With ``fast_reset`` (a :class:`FastReset` for the test's image), the test runs instead from
    the snapshot taken once at the runtime's test dispatch (falling back to a boot when that
    snapshot cannot be had).
    """
    from .partition.config import DEFAULT_MEMORY, PartitionConfig
    from .partition.partition import ChildPartition
    if fast_reset is not None:
        result = fast_reset.run(test, timeout=timeout)
        if result is not None:
            return result
    cfg = PartitionConfig(image=test.image, cmdline=f"{test.image.stem} test={test.name}",
                          vcpus=test.vcpus, memory=memory or DEFAULT_MEMORY,
                          timeout=timeout or test.timeout_s or DEFAULT_TIMEOUT,
                          serial_out=serial_out)
    if make_partition is not None:
        return make_partition(cfg).run()
    with ChildPartition(cfg) as p:
        return p.run()


def outcome(test: GuestTest, result) -> str:
    """``pass``, ``fail``, ``xfail`` (failed as expected) or ``xpass`` (passed unexpectedly)."""
    if test.xfail:
        return "xpass" if result.passed else "xfail"
    return "pass" if result.passed else "fail"


def describe_failure(test: GuestTest, result) -> str:
    """The report of a failed test: where, why, registers and backtrace."""
    lines = [f"guest test {test.name} ({test.file}:{test.line}) failed: {result.status}",
             result.reason]
    if result.assert_file:
        lines.append(f"at {result.assert_file}:{result.assert_line}")
    if result.detail:
        lines.append(result.detail)
    if result.registers and "RAX=" not in result.detail:
        from .partition.partition import format_registers
        lines.append(format_registers(result.registers))
    tail = result.serial.decode("utf-8", "replace").strip().splitlines()[-20:]
    if tail:
        lines.append("serial (last lines):")
        lines += ["  " + t for t in tail]
    return "\n".join(lines)


def select(tests: list[GuestTest], expr: str | None) -> list[GuestTest]:
    """Tests whose names match a pytest-style ``-k`` expression (substrings with and/or/not)."""
    if not expr:
        return tests
    import re
    tokens = re.findall(r"\(|\)|[^\s()]+", expr)
    out = []
    for t in tests:
        code = []
        for tok in tokens:
            if tok in ("and", "or", "not", "(", ")"):
                code.append(tok)
            else:
                code.append("True" if tok in t.name else "False")
        try:
            keep = eval(" ".join(code), {"__builtins__": {}}, {})  # only booleans and operators
        except SyntaxError:
            raise ValueError(f"bad -k expression: {expr!r}") from None
        if keep:
            out.append(t)
    return out


def tap_report(results: list[tuple[GuestTest, object]]) -> str:
    """TAP version 13 for ``hvkvm test --tap``."""
    lines = ["TAP version 13", f"1..{len(results)}"]
    for i, (t, r) in enumerate(results, 1):
        o = outcome(t, r)
        ok = "ok" if o in ("pass", "xfail") else "not ok"
        directive = " # TODO expected failure" if t.xfail else ""
        lines.append(f"{ok} {i} - {t.name}{directive}")
        if o in ("fail", "xpass"):
            lines.append("  ---")
            lines.append(f"  message: {r.reason!r}")
            lines.append(f"  at: {t.file}:{t.line}")
            for frame in r.backtrace:
                lines.append(f"  # {frame}")
            lines.append("  ...")
    return "\n".join(lines)


# -- fast reset: one boot per vCPU count, a snapshot at the test dispatch, a restore per test ----

#: DR7 for one execution breakpoint in DR0: G0 plus the always-one bit 10 and GE (as QEMU).
_DR7_EXEC_BP0 = 0x0600 | 0x2


class _DispatchBreak:
    """Debug handler: stop vCPU0 where the runtime asks for ``test=`` (``hv_arg("test", ...)``).

    A hardware breakpoint (works on VT-x, AMD-V and kvm_pvm alike for ring-0 code) sits on
    ``hv_arg``; a call with another key is single-stepped past and the breakpoint re-armed.
    """

    def __init__(self, partition, addr: int):
        self.p = partition
        self.addr = addr
        self.stepping = False
        self.reached = False

    def arm(self, vcpu) -> None:
        from .kvm import abi
        vcpu.set_guest_debug(abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_HW_BP,
                             [self.addr, 0, 0, 0, 0, 0, 0, _DR7_EXEC_BP0])

    def __call__(self, vt, run):
        from .kvm import abi
        vcpu = vt.vcpu
        if self.stepping:
            self.stepping = False
            self.arm(vcpu)
            return None
        arch = run.debug.arch
        if vt.index == 0 and arch.exception == 1 and arch.pc == self.addr:
            key = self.p.memory.read_cstr(run.s.regs.regs.rdi, 16)
            if key == "test":
                vcpu.set_guest_debug(0)
                self.reached = True
                return "stop"
            vcpu.set_guest_debug(abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_SINGLESTEP)
            self.stepping = True
            return None
        vcpu.set_guest_debug(0)  # not ours: let the guest go on undisturbed
        return None


class FastReset:
    """Run an image's guest tests from one snapshot per vCPU count instead of a boot each.

    The first test needing N vCPUs boots the image (command line ``IMAGE``, no ``test=``) to
    the runtime's test dispatch, the call ``hv_arg("test", ...)`` in ``rt_bsp_main``, where a
    hardware breakpoint stops it; that state is snapshotted. Each test then restores the
    snapshot (only the pages the previous test wrote are copied back), writes
    ``IMAGE test=NAME`` into the runtime's copy of the command line (``hv_boot.cmdline``) and
    runs. The guest sees exactly what a boot with ``test=NAME`` would have shown it.

    :meth:`run` returns None when the image cannot be driven this way (no ``hv_arg`` or
    ``hv_boot`` symbol, the dispatch never reached, a name too long for the command line): the
    caller then boots as usual. :attr:`unavailable` says why.
    """

    def __init__(self, image, *, memory: int | None = None, serial_out=None,
                 boot_timeout: float = 60.0):
        self.image = Path(image)
        self.memory = memory
        self.serial_out = serial_out
        self.boot_timeout = boot_timeout
        self._slots: dict[int, tuple] = {}
        self.unavailable: str = ""
        #: restore timings (ms) and pages copied, one entry per test run from a snapshot
        self.restores: list[dict] = []

    def __enter__(self) -> "FastReset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close every partition this runner built."""
        for slot in self._slots.values():
            if slot is not None:
                slot[0].close()
        self._slots.clear()

    def _boot(self, vcpus: int):
        from .partition.config import DEFAULT_MEMORY, PartitionConfig
        from .partition.partition import ChildPartition
        cmdline = self.image.stem
        cfg = PartitionConfig(image=self.image, cmdline=cmdline, vcpus=vcpus,
                              memory=self.memory or DEFAULT_MEMORY, timeout=self.boot_timeout,
                              serial_out=self.serial_out)
        p = ChildPartition(cfg)
        try:
            hv_arg = p.symbols.address_of("hv_arg")
            boot = [e for e in p.symbols.entries if e[2] == "hv_boot"]
            if hv_arg is None or not boot:
                self.unavailable = "the image has no hv_arg/hv_boot symbols (not the hvkvm runtime)"
                p.close()
                return None
            stop = _DispatchBreak(p, hv_arg)
            p.debug_handler = stop
            stop.arm(p.vcpus[0])
            result = p.run()
            p.debug_handler = None
            if not stop.reached:
                self.unavailable = f"the boot never reached the test dispatch: {result.reason}"
                p.close()
                return None
            addr, size, _ = boot[0]
            raw = p.memory.read(addr, size)
            needle = cmdline.encode() + b"\0"
            off = raw.rfind(needle)
            if off < 0:
                self.unavailable = "the command line was not found in hv_boot"
                p.close()
                return None
            snap = p.snapshot()
            return p, snap, addr + off, size - off
        except BaseException:
            p.close()
            raise

    def run(self, test: GuestTest, timeout: float | None = None):
        """The test's :class:`RunResult`, or None when it must be booted instead."""
        from .partition.snapshot import SnapshotError, mark_dirty
        from .kvm.errors import KvmError
        if test.vcpus not in self._slots:
            self._slots[test.vcpus] = self._boot(test.vcpus)
        slot = self._slots[test.vcpus]
        if slot is None:
            return None
        p, snap, cmd_gpa, cmd_max = slot
        cmdline = f"{self.image.stem} test={test.name}".encode() + b"\0"
        if len(cmdline) > cmd_max:
            return None
        try:
            info = p.restore(snap)
        except (SnapshotError, KvmError) as e:
            # A partition that cannot be restored is rebuilt from scratch for the next test.
            p.close()
            del self._slots[test.vcpus]
            self.unavailable = f"restore failed: {e}"
            return None
        p.memory.write(cmd_gpa, cmdline)
        mark_dirty(p, cmd_gpa, len(cmdline))
        info["test"] = test.name
        self.restores.append(info)
        return p.run(timeout=timeout or test.timeout_s or DEFAULT_TIMEOUT)
