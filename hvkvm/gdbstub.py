"""A GDB remote-serial-protocol stub for a child partition (``hvkvm run IMAGE --gdb HOST:PORT``).

One debugger at a time connects over TCP (loopback by default). Every vCPU is a thread (thread id
= vCPU index + 1); the stub is all-stop: when one vCPU stops (breakpoint, watchpoint, single step,
Ctrl-C) every vCPU is held with :meth:`ChildPartition.pause`, and ``continue``/``step`` resume them
all with :meth:`ChildPartition.resume` (a stepping vCPU runs one instruction while the others run
freely, as gdb's default ``scheduler-locking replay`` asks).

What it serves:

- ``qSupported``, ``qXfer:features:read`` (a target description for x86-64 with the x87/SSE,
  segment-base and control registers: ``$cr0 $cr2 $cr3 $cr4 $cr8 $efer $fs_base $gs_base``),
  ``?``, ``g``/``G``/``p``/``P``, thread queries (``qfThreadInfo``, ``qC``, ``Hg``/``Hc``, ``T``,
  ``qThreadExtraInfo``), ``vCont``, ``c``/``s``, ``D`` (detach: breakpoints out, the guest runs on),
  ``k`` (the run ends).
- Memory (``m``, ``M``, ``X``) at guest-virtual addresses, translated through the current
  thread's page tables with KVM_TRANSLATE page by page; writes go to guest RAM (and are marked
  dirty for :mod:`hvkvm.partition.snapshot`). Planted breakpoint bytes read back as the original.
- Breakpoints: ``Z0`` plants ``int3`` with KVM_GUESTDBG_USE_SW_BP where the backend intercepts it;
  every ``#BP`` that is not one of ours (the guest runtime's ring-3 ``int3`` calls, an ``int3`` in
  the guest's own code) is handed back to the guest (KVM_SET_VCPU_EVENTS, as QEMU does). Where the
  backend cannot intercept ``int3`` (kvm_pvm: measured, an ``int3`` in ring 0 ends KVM_RUN with an
  emulation failure and one in ring 3 goes to the guest), ``Z0`` takes a debug register instead.
  ``Z1`` (hardware breakpoint), ``Z2`` (write watchpoint) and ``Z4`` (access watchpoint) use the
  four debug registers through KVM_GUESTDBG_USE_HW_BP; ``Z3`` (read-only watch) does not exist on
  x86. Single step is KVM_GUESTDBG_SINGLESTEP (with KVM_GUESTDBG_BLOCKIRQ where available, so a
  step does not land in an interrupt handler).
- Ctrl-C (0x03) while the guest runs stops it (``T02``). When the guest ends while the debugger
  waits, the stub replies ``W`` with the guest's exit code (``X`` for a crash).

Measured on kvm_pvm: debug-register breakpoints fire in guest ring-0 code (which kvm_pvm emulates)
but not in ring-3 code (which runs natively); data watchpoints do not fire at all; single step
works in both rings. :func:`probe_debug_support` measures what the backend does.
"""

from __future__ import annotations

import ctypes
import logging
import select
import socket
import struct
import threading
from dataclasses import dataclass

from .kvm import abi
from .kvm.errors import KvmError

log = logging.getLogger("hvkvm.gdbstub")

DEFAULT_HOST = "127.0.0.1"
PACKET_SIZE = 0x4000
SIGINT, SIGTRAP = 2, 5
DR6_BS = 1 << 14
RFLAGS_TF = 1 << 8

# -- target description --------------------------------------------------------------------------

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_SEGS = ("cs", "ss", "ds", "es", "fs", "gs")
_FPCTL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
_CRS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")


@dataclass(frozen=True)
class Reg:
    """One register of the target description: name, bit size, gdb type, group."""

    name: str
    bits: int
    type: str
    group: str = ""


def _register_list() -> list[tuple[str, list[Reg]]]:
    core = [Reg(n, 64, "int64") for n in _GPRS[:6]]
    core += [Reg("rbp", 64, "data_ptr"), Reg("rsp", 64, "data_ptr")]
    core += [Reg(n, 64, "int64") for n in _GPRS[8:]]
    core += [Reg("rip", 64, "code_ptr"), Reg("eflags", 32, "i386_eflags")]
    core += [Reg(n, 32, "int32") for n in _SEGS]
    core += [Reg(f"st{i}", 80, "i387_ext", "float") for i in range(8)]
    core += [Reg(n, 32, "int", "float") for n in _FPCTL]
    sse = [Reg(f"xmm{i}", 128, "vec128", "vector") for i in range(16)]
    sse += [Reg("mxcsr", 32, "i386_mxcsr", "vector")]
    segs = [Reg("fs_base", 64, "int"), Reg("gs_base", 64, "int")]
    sys = [Reg(n, 64, "int64", "system") for n in _CRS]
    return [("org.gnu.gdb.i386.core", core), ("org.gnu.gdb.i386.sse", sse),
            ("org.gnu.gdb.i386.segments", segs), ("org.hvkvm.gdb.x86.sys", sys)]


FEATURES = _register_list()
REGISTERS: list[Reg] = [r for _, regs in FEATURES for r in regs]
REGNUM = {r.name: i for i, r in enumerate(REGISTERS)}

_CORE_TYPES = """
    <flags id="i386_eflags" size="4">
      <field name="" start="22" end="31"/><field name="CF" start="0" end="0"/>
      <field name="" start="1" end="1"/><field name="PF" start="2" end="2"/>
      <field name="AF" start="4" end="4"/><field name="ZF" start="6" end="6"/>
      <field name="SF" start="7" end="7"/><field name="TF" start="8" end="8"/>
      <field name="IF" start="9" end="9"/><field name="DF" start="10" end="10"/>
      <field name="OF" start="11" end="11"/><field name="NT" start="14" end="14"/>
      <field name="RF" start="16" end="16"/><field name="VM" start="17" end="17"/>
      <field name="AC" start="18" end="18"/><field name="VIF" start="19" end="19"/>
      <field name="VIP" start="20" end="20"/><field name="ID" start="21" end="21"/>
    </flags>"""
_SSE_TYPES = """
    <vector id="v8bf16" type="bfloat16" count="8"/>
    <vector id="v8h" type="ieee_half" count="8"/>
    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v8_bfloat16" type="v8bf16"/><field name="v8_half" type="v8h"/>
      <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
      <field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
      <field name="uint128" type="uint128"/>
    </union>
    <flags id="i386_mxcsr" size="4">
      <field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/>
      <field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/>
      <field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
      <field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/>
      <field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/>
      <field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
      <field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
    </flags>"""


def target_xml() -> str:
    """The ``target.xml`` served through ``qXfer:features:read``."""
    out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>",
           "  <architecture>i386:x86-64</architecture>"]
    num = 0
    for feature, regs in FEATURES:
        out.append(f'  <feature name="{feature}">')
        if feature.endswith(".core"):
            out.append(_CORE_TYPES)
        elif feature.endswith(".sse"):
            out.append(_SSE_TYPES)
        for r in regs:
            group = f' group="{r.group}"' if r.group else ""
            out.append(f'    <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" '
                       f'regnum="{num}"{group}/>')
            num += 1
        out.append("  </feature>")
    out.append("</target>")
    return "\n".join(out) + "\n"


# -- packets -------------------------------------------------------------------------------------


def checksum(data: bytes) -> int:
    """The packet checksum: the sum of the payload bytes modulo 256."""
    return sum(data) & 0xFF


def frame(payload: bytes) -> bytes:
    """``$payload#cs`` with ``$``, ``#``, ``}`` and ``*`` escaped."""
    esc = bytearray()
    for b in payload:
        if b in (0x23, 0x24, 0x7D, 0x2A):
            esc += bytes((0x7D, b ^ 0x20))
        else:
            esc.append(b)
    return b"$" + bytes(esc) + b"#" + f"{checksum(bytes(esc)):02x}".encode()


def unescape(data: bytes) -> bytes:
    """Undo the ``}`` escapes of a binary packet body."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            out.append(next(it, 0) ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


class PacketReader:
    """Splits a byte stream into packets (with acks) and Ctrl-C interrupts."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        self.buf += data

    def next(self):
        """``("packet", body)``, ``("interrupt", None)``, ``("bad", None)`` or None (need more)."""
        while self.buf:
            c = self.buf[0]
            if c == 0x03:
                del self.buf[0]
                return "interrupt", None
            if c != 0x24:  # '+', '-' and noise between packets
                del self.buf[0]
                continue
            end = self.buf.find(b"#")
            if end < 0 or len(self.buf) < end + 3:
                return None
            body = bytes(self.buf[1:end])
            cs = bytes(self.buf[end + 1:end + 3])
            del self.buf[:end + 3]
            try:
                ok = int(cs, 16) == checksum(body)
            except ValueError:
                ok = False
            return ("packet", body) if ok else ("bad", None)
        return None


# -- backend probe -------------------------------------------------------------------------------

_probe_cache: dict[str, bool] = {}


def probe_debug_support() -> dict[str, bool]:
    """What KVM's guest debugging does for ring-0 code here, measured with a 3-instruction guest.

    ``sw_bp``: an ``int3`` with KVM_GUESTDBG_USE_SW_BP is a debug exit (False on kvm_pvm, where it
    is an emulation failure). ``hw_bp``: a debug-register breakpoint is. ``watch``: a debug-register
    write watchpoint is.
    """
    if _probe_cache:
        return dict(_probe_cache)
    from .partition.config import PartitionConfig
    from .partition.partition import ChildPartition
    code_gpa, data_gpa = 0x10000, 0x20000
    # mov byte [data], 1 ; int3 ; hlt
    code = b"\xc6\x04\x25" + struct.pack("<I", data_gpa) + b"\x01" + b"\xcc" + b"\xf4"
    out = {}
    for kind in ("hw_bp", "watch", "sw_bp"):
        seen = {}

        def on_debug(vt, run, seen=seen):
            seen["exception"] = run.debug.arch.exception
            seen["pc"] = run.debug.arch.pc
            vt.vcpu.set_guest_debug(0)
            return "stop"

        cfg = PartitionConfig(raw=code, raw_gpa=code_gpa, raw_mode="long", memory=4 << 20,
                              timeout=10)
        try:
            with ChildPartition(cfg) as p:
                p.debug_handler = on_debug
                v = p.vcpus[0]
                if kind == "sw_bp":
                    v.set_guest_debug(abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_SW_BP)
                elif kind == "hw_bp":
                    v.set_guest_debug(abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_HW_BP,
                                      [code_gpa + 8, 0, 0, 0, 0, 0, 0, _dr7_bits(0, 0, 1)])
                else:
                    v.set_guest_debug(abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_HW_BP,
                                      [data_gpa, 0, 0, 0, 0, 0, 0, _dr7_bits(0, 1, 1)])
                p.run()
        except (KvmError, OSError):
            pass
        if kind == "sw_bp":
            out[kind] = seen.get("exception") == 3
        elif kind == "hw_bp":
            out[kind] = seen.get("exception") == 1 and seen.get("pc") == code_gpa + 8
        else:
            out[kind] = seen.get("exception") == 1
    _probe_cache.update(out)
    return dict(out)


_DR7_LEN = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}


def _dr7_bits(slot: int, rw: int, length: int) -> int:
    """DR7 bits enabling debug register ``slot``: G bit, R/W (0 exec, 1 write, 3 access), LEN."""
    return (0x0600 | (2 << (slot * 2)) | (rw << (16 + slot * 4)) |
            (_DR7_LEN[length] << (18 + slot * 4)))


# -- the stub ------------------------------------------------------------------------------------


@dataclass
class _Slot:
    kind: str      # "sw" (a Z0 in a debug register), "hw" (Z1), "write" (Z2), "access" (Z4)
    addr: int
    length: int


class GdbStub:
    """The stub for one partition; :meth:`start` listens, :meth:`close` ends the session.

    Build it before :meth:`ChildPartition.run`; with ``wait=True`` the vCPUs are held before
    their first instruction until the debugger continues.
    """

    def __init__(self, partition, host: str = DEFAULT_HOST, port: int = 1234,
                 wait: bool = False, sw_breakpoints: bool | None = None):
        self.p = partition
        self.wait = wait
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._pending: tuple[str, int] | None = None   # (stop reply, vCPU) of the current stop
        self._last_stop = f"S{SIGTRAP:02x}"
        self._stepping: int | None = None
        self._sw: dict[int, tuple[int, bytes]] = {}     # vaddr -> (gpa, original byte)
        self._slots: list[_Slot | None] = [None] * 4
        self.g_thread = 0
        self.c_thread = -1
        self._conn: socket.socket | None = None
        self._closed = False
        self._detached = threading.Event()
        if sw_breakpoints is None:
            sw_breakpoints = probe_debug_support().get("sw_bp", False)
        self.sw_breakpoints = sw_breakpoints
        caps = partition.kvm.check_extension(abi.KVM_CAP_SET_GUEST_DEBUG2)
        self._blockirq = bool(caps & abi.KVM_GUESTDBG_BLOCKIRQ)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = socket.socket(family, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._server.bind((host, port))
        except OSError:
            self._server.close()
            raise
        self._server.listen(1)
        self.address = self._server.getsockname()[:2]
        self._thread: threading.Thread | None = None
        partition.debug_handler = self._on_debug_exit
        if wait:
            partition.pause(timeout=0)
            self._pending = (f"T{SIGTRAP:02x}thread:1;", 0)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve debugger connections in a background thread."""
        self._thread = threading.Thread(target=self._serve, name="hvkvm-gdbstub", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving; a connected debugger is told the run ended (``W``) if it waits."""
        if self._closed:
            return
        t = self._thread
        if t is not None and self._conn is not None and self._run_ended() \
                and t is not threading.current_thread():
            t.join(timeout=2)  # let the session send its W/X before the socket goes
        self._closed = True
        for s in (self._server, self._conn):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.p.debug_handler == self._on_debug_exit:
            self.p.debug_handler = None

    def __enter__(self) -> "GdbStub":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- vCPU side --------------------------------------------------------------------------------

    def _threads(self):
        return getattr(self.p, "_threads", None) or []

    def _on_debug_exit(self, vt, run):
        """KVM_EXIT_DEBUG in a vCPU thread: stop everything if it is ours, else reinject."""
        arch = run.debug.arch
        reply = None
        if arch.exception == 3:
            if arch.pc in self._sw:
                reply = "swbreak:;"
            else:
                self._reinject(vt.vcpu, 3)
                return None
        elif arch.exception == 1:
            dr6 = arch.dr6
            for i, slot in enumerate(self._slots):
                if slot is not None and dr6 & (1 << i):
                    if slot.kind in ("sw", "hw"):
                        reply = "swbreak:;" if slot.kind == "sw" else "hwbreak:;"
                    else:
                        what = "watch" if slot.kind == "write" else "awatch"
                        reply = f"{what}:{slot.addr:x};"
                    break
            if reply is None and (dr6 & DR6_BS) and self._stepping == vt.index:
                reply = ""
            if reply is None:
                if dr6 & DR6_BS:
                    return None  # a late step exit of a vCPU no longer stepping
                self._reinject(vt.vcpu, 1)
                return None
        else:
            return None
        with self._cv:
            if self._pending is None:
                self._pending = (f"T{SIGTRAP:02x}thread:{vt.index + 1:x};{reply}", vt.index)
                self.p.pause(timeout=0)
            self._cv.notify_all()
        return None

    @staticmethod
    def _reinject(vcpu, vector: int) -> None:
        """Hand a #BP/#DB that is not the debugger's back to the guest."""
        ev = vcpu.get_vcpu_events()
        ev.exception.injected = 1
        ev.exception.nr = vector
        ev.exception.has_error_code = 0
        ev.exception.error_code = 0
        vcpu.set_vcpu_events(ev)

    def _apply_debug(self) -> None:
        """KVM_SET_GUEST_DEBUG on every vCPU from the planted breakpoints and the step request."""
        control = 0
        dregs = [0] * 8
        dr7 = 0
        for i, slot in enumerate(self._slots):
            if slot is not None:
                dregs[i] = slot.addr
                rw = {"sw": 0, "hw": 0, "write": 1, "access": 3}[slot.kind]
                dr7 |= _dr7_bits(i, rw, slot.length if rw else 1)
        if dr7:
            control |= abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_HW_BP
            dregs[7] = dr7
        if self._sw:
            control |= abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_SW_BP
        for v in self.p.vcpus:
            c = control
            if self._stepping == v.index:
                c |= abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_SINGLESTEP
                if self._blockirq:
                    c |= abi.KVM_GUESTDBG_BLOCKIRQ
            v.set_guest_debug(c, dregs if c & abi.KVM_GUESTDBG_USE_HW_BP else None)

    def _resume(self, step: int | None) -> None:
        with self._cv:
            self._stepping = step
            self._apply_debug()
            self._pending = None
        self.p.resume()

    def _run_ended(self) -> bool:
        return self.p._done.is_set()

    def _exit_reply(self) -> str:
        res = self.p._result
        if res is not None and res.guest_code is not None:
            return f"W{res.guest_code & 0xFF:02x}"
        if res is not None and res.status in ("pass", "stopped"):
            return "W00"
        return f"X{11:02x}"  # the guest crashed, faulted or asserted: SIGSEGV

    # -- registers --------------------------------------------------------------------------------

    def _vcpu(self, tid: int):
        """vCPU for a thread id (0/-1: the stopped one, else the first)."""
        idx = tid - 1 if tid > 0 else (self._pending[1] if self._pending else 0)
        if not 0 <= idx < len(self.p.vcpus):
            idx = 0
        return self.p.vcpus[idx]

    @staticmethod
    def _regs(vcpu):
        run = vcpu.run_struct
        if run.kvm_dirty_regs & abi.KVM_SYNC_X86_REGS:
            return run.s.regs.regs
        return vcpu.get_regs()

    @staticmethod
    def _sregs(vcpu):
        run = vcpu.run_struct
        if run.kvm_dirty_regs & abi.KVM_SYNC_X86_SREGS:
            return run.s.regs.sregs
        return vcpu.get_sregs()

    def read_registers(self, vcpu) -> list[bytes]:
        """Every register of the target description, little-endian bytes, in regnum order."""
        regs, sregs, fpu = self._regs(vcpu), self._sregs(vcpu), vcpu.get_fpu()
        vals: list[bytes] = []
        q = lambda v: struct.pack("<Q", v & (2**64 - 1))   # noqa: E731
        d = lambda v: struct.pack("<I", v & 0xFFFFFFFF)    # noqa: E731
        for n in _GPRS:
            vals.append(q(getattr(regs, n)))
        vals.append(q(regs.rip))
        vals.append(d(regs.rflags))
        for n in _SEGS:
            vals.append(d(getattr(sregs, n).selector))
        for i in range(8):
            vals.append(bytes(fpu.fpr[i])[:10])
        ftag = 0
        for i in range(8):
            ftag |= (0 if fpu.ftwx >> i & 1 else 3) << (2 * i)
        vals += [d(fpu.fcw), d(fpu.fsw), d(ftag), d(fpu.last_ip >> 32 & 0xFFFF),
                 d(fpu.last_ip), d(fpu.last_dp >> 32 & 0xFFFF), d(fpu.last_dp),
                 d(fpu.last_opcode)]
        for i in range(16):
            vals.append(bytes(fpu.xmm[i]))
        vals.append(d(fpu.mxcsr))
        vals += [q(sregs.fs.base), q(sregs.gs.base)]
        vals += [q(getattr(sregs, n)) for n in _CRS]
        return vals

    def write_register(self, vcpu, num: int, raw: bytes) -> bool:
        """Write one register; False for one this stub does not write."""
        if not 0 <= num < len(REGISTERS):
            return False
        reg = REGISTERS[num]
        if len(raw) != reg.bits // 8:
            return False
        run = vcpu.run_struct
        value = int.from_bytes(raw, "little")
        name = reg.name
        if name in _GPRS or name in ("rip", "eflags"):
            regs = abi.kvm_regs.from_buffer_copy(bytes(self._regs(vcpu)))
            if name == "eflags":
                regs.rflags = (regs.rflags & ~0xFFFFFFFF) | value
            else:
                setattr(regs, name, value)
            run.s.regs.regs = regs
            run.kvm_dirty_regs |= abi.KVM_SYNC_X86_REGS
            return True
        if name in _CRS or name in ("fs_base", "gs_base") or name in _SEGS:
            sregs = abi.kvm_sregs.from_buffer_copy(bytes(self._sregs(vcpu)))
            if name in _CRS:
                setattr(sregs, name, value)
            elif name in _SEGS:
                getattr(sregs, name).selector = value & 0xFFFF
            else:
                getattr(sregs, name[:2]).base = value
            run.s.regs.sregs = sregs
            run.kvm_dirty_regs |= abi.KVM_SYNC_X86_SREGS
            return True
        fpu = vcpu.get_fpu()
        if name.startswith("st"):
            i = int(name[2:])
            ctypes.memmove(ctypes.addressof(fpu.fpr[i]), raw, 10)
        elif name.startswith("xmm"):
            ctypes.memmove(ctypes.addressof(fpu.xmm[int(name[3:])]), raw, 16)
        elif name == "mxcsr":
            fpu.mxcsr = value
        elif name == "fctrl":
            fpu.fcw = value
        elif name == "fstat":
            fpu.fsw = value
        elif name == "fop":
            fpu.last_opcode = value
        else:
            return False
        vcpu.set_fpu(fpu)
        return True

    # -- memory -----------------------------------------------------------------------------------

    def _translate(self, vcpu, vaddr: int) -> int | None:
        try:
            tr = vcpu.translate(vaddr)
        except KvmError:
            return None
        return tr.physical_address if tr.valid else None

    def _spans(self, vcpu, addr: int, length: int):
        """(gpa, length) pieces of a virtual range, page by page; None if any is unmapped."""
        out = []
        while length > 0:
            n = min(length, 0x1000 - (addr & 0xFFF))
            gpa = self._translate(vcpu, addr)
            if gpa is None or not self.p.memory.contains(gpa, n):
                return None
            out.append((gpa, n))
            addr += n
            length -= n
        return out

    def read_memory(self, vcpu, addr: int, length: int) -> bytes | None:
        """Guest-virtual memory as the guest sees it, planted ``int3`` bytes shown as original."""
        spans = self._spans(vcpu, addr, length)
        if spans is None:
            return None
        data = bytearray(b"".join(self.p.memory.read(g, n) for g, n in spans))
        for va, (_, orig) in self._sw.items():
            if addr <= va < addr + length:
                data[va - addr] = orig[0]
        return bytes(data)

    def write_memory(self, vcpu, addr: int, data: bytes) -> bool:
        """Write guest-virtual memory (a planted breakpoint keeps its ``int3``, new original)."""
        from .partition.snapshot import mark_dirty
        spans = self._spans(vcpu, addr, len(data))
        if spans is None:
            return False
        data = bytearray(data)
        for va, (gpa, _) in list(self._sw.items()):
            if addr <= va < addr + len(data):
                self._sw[va] = (gpa, bytes((data[va - addr],)))
                data[va - addr] = 0xCC
        off = 0
        for gpa, n in spans:
            self.p.memory.write(gpa, bytes(data[off:off + n]))
            mark_dirty(self.p, gpa, n)
            off += n
        return True

    # -- breakpoints ------------------------------------------------------------------------------

    def insert_breakpoint(self, kind: int, addr: int, length: int) -> str:
        """``Z`` packets: "OK", "" (not supported) or an error."""
        vcpu = self._vcpu(self.g_thread)
        if kind == 0 and self.sw_breakpoints:
            if addr in self._sw:
                return "OK"
            gpa = self._translate(vcpu, addr)
            if gpa is None or not self.p.memory.contains(gpa, 1):
                return "E0e"
            from .partition.snapshot import mark_dirty
            self._sw[addr] = (gpa, self.p.memory.read(gpa, 1))
            self.p.memory.write(gpa, b"\xcc")
            mark_dirty(self.p, gpa, 1)
            return "OK"
        slot_kind = {0: "sw", 1: "hw", 2: "write", 4: "access"}.get(kind)
        if slot_kind is None:
            return ""
        if slot_kind in ("write", "access"):
            if length not in _DR7_LEN or addr % length:
                return "E16"
        else:
            length = 1
        for s in self._slots:
            if s is not None and (s.kind, s.addr, s.length) == (slot_kind, addr, length):
                return "OK"
        for i, s in enumerate(self._slots):
            if s is None:
                self._slots[i] = _Slot(slot_kind, addr, length)
                return "OK"
        return "E1c"  # ENOSPC: four debug registers

    def remove_breakpoint(self, kind: int, addr: int, length: int) -> str:
        """``z`` packets."""
        if kind == 0 and addr in self._sw:
            gpa, orig = self._sw.pop(addr)
            from .partition.snapshot import mark_dirty
            self.p.memory.write(gpa, orig)
            mark_dirty(self.p, gpa, 1)
            return "OK"
        slot_kind = {0: "sw", 1: "hw", 2: "write", 4: "access"}.get(kind)
        if slot_kind is None:
            return ""
        for i, s in enumerate(self._slots):
            if s is not None and s.kind == slot_kind and s.addr == addr:
                self._slots[i] = None
                return "OK"
        return "OK"

    def remove_all_breakpoints(self) -> None:
        """Take every breakpoint out (detach, disconnect)."""
        for addr in list(self._sw):
            self.remove_breakpoint(0, addr, 1)
        self._slots = [None] * 4

    # -- the session ------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._closed and not self._run_ended():
            try:
                conn, peer = self._server.accept()
            except OSError:
                return
            log.info("gdb connected from %s", peer)
            self._conn = conn
            try:
                self._session(conn)
            except (OSError, ConnectionError) as e:
                log.info("gdb connection ended: %s", e)
            except Exception:  # a stub bug must not leave the guest held forever
                log.exception("gdb stub failed")
            finally:
                self._conn = None
                try:
                    conn.close()
                except OSError:
                    pass
                if not self._closed and not self._run_ended() and not self._detached.is_set():
                    # Gone without detaching: take the breakpoints out (with every vCPU held)
                    # and let the guest run on, as after a detach.
                    self._stop_now(timeout=2)
                    with self._cv:
                        self.remove_all_breakpoints()
                        self._stepping = None
                        try:
                            self._apply_debug()
                        except KvmError:
                            pass
                        self._pending = None
                    self.p.resume()
                self._detached.clear()

    def _send(self, conn, payload: str | bytes) -> None:
        if isinstance(payload, str):
            payload = payload.encode("latin-1")
        conn.sendall(frame(payload))

    def _stop_now(self, timeout: float = 5.0) -> None:
        """Hold every vCPU (attach, Ctrl-C) and record a SIGINT stop unless one is pending."""
        with self._cv:
            if self._pending is None:
                idx = 0
                self._pending = (f"T{SIGINT:02x}thread:{idx + 1:x};", idx)
        self.p.pause(timeout=timeout)

    def _wait_stopped(self, conn, reader: PacketReader) -> str | None:
        """Wait until a stop is pending and every vCPU is held; serve Ctrl-C meanwhile.

        Returns the stop reply, an exit reply when the run ended, or None if gdb went away.
        """
        while True:
            if self._run_ended():
                return self._exit_reply()
            with self._cv:
                if self._pending is not None and (self.p.paused or not self._threads()):
                    self._stepping = None
                    return self._pending[0]
                self._cv.wait(0.02)
            r, _, _ = select.select([conn], [], [], 0)
            if r:
                data = conn.recv(4096)
                if not data:
                    return None
                reader.feed(data)
                while (item := reader.next()) is not None:
                    if item[0] == "interrupt":
                        self._stop_now(timeout=0)

    def _session(self, conn) -> None:
        reader = PacketReader()
        if not self.wait or self._pending is None:
            self._stop_now()
        else:
            # --gdb-wait: the vCPUs hold before their first entry; nothing to stop.
            pass
        while not self._closed:
            item = reader.next()
            if item is None:
                data = conn.recv(PACKET_SIZE)
                if not data:
                    return
                reader.feed(data)
                continue
            kind, body = item
            if kind == "bad":
                conn.sendall(b"-")
                continue
            if kind == "interrupt":
                continue  # already stopped
            conn.sendall(b"+")
            reply = self._handle(conn, reader, body)
            if reply is None:
                return
            if reply is _NO_REPLY:
                continue
            self._send(conn, reply)
            if reply[:1] in ("W", "X") or (isinstance(reply, bytes) and reply[:1] in b"WX"):
                return

    # -- packet handlers --------------------------------------------------------------------------

    def _handle(self, conn, reader, body: bytes):
        """The reply to one packet (str/bytes), _NO_REPLY, or None to end the session."""
        if body[:1] == b"X":
            head, _, data = body.partition(b":")
            text = head.decode("latin-1")
            return self._write_binary(text, unescape(data))
        text = body.decode("latin-1")
        cmd = text[:1]
        if text.startswith("qSupported"):
            return (f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;swbreak+;hwbreak+;"
                    f"vContSupported+")
        if text.startswith("qXfer:features:read:"):
            return self._xfer(text)
        if text == "?":
            with self._cv:
                return self._pending[0] if self._pending else self._last_stop
        if text == "qAttached":
            return "1"
        if text == "qC":
            return f"QC{self._current_thread():x}"
        if text == "qfThreadInfo":
            return "m" + ",".join(f"{v.index + 1:x}" for v in self.p.vcpus)
        if text == "qsThreadInfo":
            return "l"
        if text.startswith("qThreadExtraInfo,"):
            return self._thread_info(int(text.split(",")[1], 16)).encode().hex()
        if text in ("vCont?",):
            return "vCont;c;C;s;S"
        if text.startswith("vCont;"):
            return self._vcont(conn, reader, text[6:])
        if text == "vMustReplyEmpty" or text.startswith("qTStatus") or text == "qOffsets":
            return ""
        if text.startswith("qSymbol"):
            return "OK"
        if cmd == "H":
            tid = int(text[2:], 16) if text[2:] not in ("", "-1") else -1
            if text[1] == "g":
                self.g_thread = tid
            else:
                self.c_thread = tid
            return "OK"
        if cmd == "T":
            tid = int(text[1:], 16)
            return "OK" if 1 <= tid <= len(self.p.vcpus) else "E01"
        if cmd == "g":
            return b"".join(self.read_registers(self._vcpu(self.g_thread))).hex()
        if cmd == "G":
            return self._write_all_registers(bytes.fromhex(text[1:]))
        if cmd == "p":
            num = int(text[1:], 16)
            if not 0 <= num < len(REGISTERS):
                return "E45"
            return self.read_registers(self._vcpu(self.g_thread))[num].hex()
        if cmd == "P":
            num, _, val = text[1:].partition("=")
            ok = self.write_register(self._vcpu(self.g_thread), int(num, 16), bytes.fromhex(val))
            return "OK" if ok else "E45"
        if cmd == "m":
            addr, length = (int(x, 16) for x in text[1:].split(","))
            data = self.read_memory(self._vcpu(self.g_thread), addr, min(length, PACKET_SIZE // 2))
            return data.hex() if data is not None else "E0e"
        if cmd == "M":
            where, _, hexdata = text[1:].partition(":")
            addr = int(where.split(",")[0], 16)
            ok = self.write_memory(self._vcpu(self.g_thread), addr, bytes.fromhex(hexdata))
            return "OK" if ok else "E0e"
        if cmd in ("Z", "z"):
            kind, addr, length = text[1:].split(",")[:3]
            args = (int(kind), int(addr, 16), int(length.split(";")[0], 16))
            with self._cv:
                return (self.insert_breakpoint if cmd == "Z" else self.remove_breakpoint)(*args)
        if cmd in ("c", "s", "C", "S"):
            arg = text[1:]
            if cmd in ("C", "S"):
                arg = arg.partition(";")[2]
            if arg:
                self._set_pc(self._vcpu(self.c_thread if self.c_thread > 0 else self.g_thread),
                             int(arg, 16))
            step = None
            if cmd in ("s", "S"):
                step = self._vcpu(self.c_thread if self.c_thread > 0 else self.g_thread).index
            return self._continue(conn, reader, step)
        if cmd == "D":
            with self._cv:
                self.remove_all_breakpoints()
                self._stepping = None
                self._apply_debug()
                self._pending = None
            self._send(conn, "OK")
            self._detached.set()
            self.p.resume()
            return None
        if cmd == "k" or text.startswith("vKill"):
            with self._cv:
                self.remove_all_breakpoints()
                self._stepping = None
                self._apply_debug()
                self._pending = None
            self.p.request_stop("killed from gdb", status="stopped")
            self.p.resume()
            if text.startswith("vKill"):
                self._send(conn, "OK")
            return None
        return ""

    def _current_thread(self) -> int:
        with self._cv:
            return (self._pending[1] + 1) if self._pending else 1

    def _thread_info(self, tid: int) -> str:
        for t in self._threads():
            if t.index + 1 == tid:
                w = t.snapshot_where() if t.vcpu.run_struct is not None else {}
                return f"vCPU{t.index} ring {w.get('ring', '?')} {w.get('state', t.state)}"
        return f"vCPU{tid - 1}"

    def _xfer(self, text: str) -> str:
        rest = text[len("qXfer:features:read:"):]
        annex, _, span = rest.partition(":")
        if annex != "target.xml":
            return "E00"
        off, length = (int(x, 16) for x in span.split(","))
        doc = target_xml()
        chunk = doc[off:off + length]
        return ("l" if off + length >= len(doc) else "m") + chunk

    def _write_binary(self, head: str, data: bytes) -> str:
        addr, length = (int(x, 16) for x in head[1:].split(","))
        if length == 0:
            return "OK"
        ok = self.write_memory(self._vcpu(self.g_thread), addr, data[:length])
        return "OK" if ok else "E0e"

    def _write_all_registers(self, raw: bytes) -> str:
        vcpu = self._vcpu(self.g_thread)
        off = 0
        current = self.read_registers(vcpu)
        for num, reg in enumerate(REGISTERS):
            n = reg.bits // 8
            piece = raw[off:off + n]
            off += n
            if len(piece) == n and piece != current[num]:
                self.write_register(vcpu, num, piece)
        return "OK"

    def _set_pc(self, vcpu, pc: int) -> None:
        self.write_register(vcpu, REGNUM["rip"], struct.pack("<Q", pc))

    def _vcont(self, conn, reader, actions: str):
        step = None
        for action in actions.split(";"):
            act, _, tid = action.partition(":")
            if act[:1] in ("s", "S"):
                t = int(tid, 16) if tid and tid != "-1" else (self._current_thread())
                step = self._vcpu(t).index
        return self._continue(conn, reader, step)

    def _continue(self, conn, reader, step: int | None):
        if self._run_ended():
            return self._exit_reply()
        self._resume(step)
        reply = self._wait_stopped(conn, reader)
        if reply is None:
            return None
        if reply[:1] == "T":
            self._last_stop = reply
            self.g_thread = -1
        return reply


_NO_REPLY = object()
