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
             make_partition=None):
    """Boot the image with ``test=NAME`` and return the :class:`RunResult`."""
    from .partition.config import DEFAULT_MEMORY, PartitionConfig
    from .partition.partition import ChildPartition
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
