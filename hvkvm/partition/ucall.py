"""The guest -> host test protocol (``guest_images/PROTOCOL.md``), modelled on the KVM selftests' ucall.

The guest writes a ``struct hv_ucall`` in its RAM and does a 32-bit ``out`` of its GPA to port 0xe8.
Everything in the struct is guest-controlled: the GPA and the whole span are bounds-checked by
:class:`~hvkvm.memory.GuestMemory`, strings are bounded and decoded with replacement characters,
and an unknown command or a wrong magic is a :class:`UcallError`, never a crash.
"""

from __future__ import annotations

import struct
from .._record import Record, factory

UCALL_PORT = 0xE8
UCALL_MAGIC = 0x4C4C4355
UCALL_SIZE = 904

UCALL_LOG = 1
UCALL_SYNC = 2
UCALL_ASSERT = 3
UCALL_DONE = 4
UCALL_FAULT = 5

CMD_NAMES = {UCALL_LOG: "LOG", UCALL_SYNC: "SYNC", UCALL_ASSERT: "ASSERT", UCALL_DONE: "DONE",
             UCALL_FAULT: "FAULT"}

GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
FRAME_NAMES = ("vector", "error_code", "rip", "cs", "rflags", "rsp", "ss", "cr2")

EXCEPTION_NAMES = {
    0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP breakpoint", 4: "#OF overflow",
    5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available",
    8: "#DF double fault", 10: "#TS invalid TSS", 11: "#NP segment not present",
    12: "#SS stack fault", 13: "#GP general protection", 14: "#PF page fault",
    16: "#MF x87 error", 17: "#AC alignment check", 18: "#MC machine check",
    19: "#XM SIMD error", 20: "#VE virtualization", 21: "#CP control protection",
}

_HEAD = struct.Struct("<IIII6QII128s512s8Q16Q")
assert _HEAD.size == UCALL_SIZE


class UcallError(ValueError):
    """A ucall the guest got wrong (bad GPA, magic or command)."""


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class Ucall(Record):
    """One decoded guest -> host call."""

    cmd: int
    vcpu: int
    ring: int
    args: tuple[int, ...]
    line: int = 0
    file: str = ""
    msg: str = ""
    frame: dict[str, int] = factory(dict)
    gprs: dict[str, int] = factory(dict)

    @property
    def name(self) -> str:
        """The command's name (LOG, SYNC, ...)."""
        return CMD_NAMES.get(self.cmd, str(self.cmd))


def decode(raw: bytes) -> Ucall:
    """Decode the 904 bytes of a ``struct hv_ucall``."""
    if len(raw) != UCALL_SIZE:
        raise UcallError(f"ucall struct is {len(raw)} bytes, expected {UCALL_SIZE}")
    f = _HEAD.unpack(raw)
    magic, cmd, vcpu, ring = f[0:4]
    if magic != UCALL_MAGIC:
        raise UcallError(f"ucall with bad magic {magic:#x}")
    if cmd not in CMD_NAMES:
        raise UcallError(f"ucall with unknown command {cmd}")
    args = tuple(f[4:10])
    line = f[10]
    file, msg = _cstr(f[12]), _cstr(f[13])
    frame = dict(zip(FRAME_NAMES, f[14:22])) if cmd == UCALL_FAULT else {}
    gprs = dict(zip(GPR_NAMES, f[22:38])) if cmd == UCALL_FAULT else {}
    return Ucall(cmd, vcpu, ring & 3, args, line, file, msg, frame, gprs)


def read_ucall(memory, gpa: int) -> Ucall:
    """Read and decode the ucall at ``gpa`` in guest RAM (bounds-checked)."""
    from ..memory import GuestMemoryError
    try:
        raw = memory.read(gpa, UCALL_SIZE)
    except GuestMemoryError as e:
        raise UcallError(f"ucall struct at GPA {gpa:#x}: {e}") from None
    return decode(raw)


def encode(cmd: int, args: tuple[int, ...] = (), *, vcpu: int = 0, ring: int = 0, line: int = 0,
           file: str = "", msg: str = "", frame: dict[str, int] | None = None,
           gprs: dict[str, int] | None = None, magic: int = UCALL_MAGIC) -> bytes:
    """Build a ``struct hv_ucall`` as a guest would (tests, fuzzing, host-built probes)."""
    a = (tuple(args) + (0,) * 6)[:6]
    fr = [(frame or {}).get(n, 0) for n in FRAME_NAMES]
    gp = [(gprs or {}).get(n, 0) for n in GPR_NAMES]
    return _HEAD.pack(magic, cmd, vcpu, ring, *a, line, 0, file.encode()[:127],
                      msg.encode()[:511], *fr, *gp)
