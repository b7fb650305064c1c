"""``ChildPartition``: one KVM VM with its RAM, vCPUs, buses and devices, and its exit loop.

The partition owns everything it builds (built under a :class:`contextlib.ExitStack`, torn down in
reverse: vCPUs, memory slots, RAM, VM, ``/dev/kvm``). :meth:`ChildPartition.run` starts one thread
per vCPU (KVM_RUN releases the GIL), services exits in Python and returns a
:class:`~hvkvm.partition.result.RunResult`.

Stopping a vCPU thread: set ``kvm_run.immediate_exit`` and send it :data:`KICK_SIGNAL`; KVM_RUN
then returns EINTR wherever the thread is (about to enter, or blocked in the guest's HLT).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import struct
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from .._lazy import logger as _lazy_logger
from ..boot import cpu as bootcpu
from ..boot.elf import ElfImage, Symbols, load_elf, place_image
from ..boot.pvh import write_start_info
from ..kvm import abi
from ..kvm._ioctl import run_ioctl as _run_ioctl
from ..kvm.errors import KvmError
from ..kvm.system import Kvm
from ..memory import GuestMemory, GuestMemoryError
from .bus import Bus, BusError
from .config import PartitionConfig
from .result import RunResult
from .ucall import (UCALL_ASSERT, UCALL_DONE, UCALL_FAULT, UCALL_LOG, UCALL_PORT, UCALL_SYNC,
                    EXCEPTION_NAMES, UcallError, read_ucall)

log = _lazy_logger("hvkvm.partition")  # logging is imported on first use

#: Signal used to kick a vCPU thread out of KVM_RUN (a no-op handler is installed for it).
KICK_SIGNAL = signal.SIGRTMIN + 3

#: VT-x needs three pages for its real-mode TSS and one for the EPT identity map; both sit in the
#: 32-bit MMIO hole, below the LAPIC, where no RAM or device lives.
TSS_ADDR = 0xFFFB_D000
IDENTITY_MAP_ADDR = 0xFFFB_C000

COM1_BASE = 0x3F8
COM1_IRQ = 4

DIRECT_BOOT_STACK = 0x80000

RFLAGS_IF = 1 << 9
CR0_PE = 1

#: LOG lines and SYNCs a run keeps for its result: a guest can send them forever, the parent's
#: memory must not grow with it (on_log / on_sync still see every one).
MAX_KEPT_LOGS = 10000
MAX_KEPT_SYNCS = 10000


EINTR, EAGAIN = 4, 11

#: kvm_run.io: direction, size, port, count, data_offset.
_IO_EXIT = struct.Struct("<BBHIQ")
#: kvm_run.mmio: phys_addr, (data[8] skipped), len, is_write.
_MMIO_EXIT = struct.Struct("<Q8xIB")


def exit_short_name(reason: int) -> str:
    """The counter name of an exit reason: ``io`` for KVM_EXIT_IO, ``exit-N`` for an unknown one."""
    name = abi.EXIT_REASON_NAMES.get(reason)
    return name[len("KVM_EXIT_"):].lower() if name else f"exit-{reason}"


class _RunLayout:
    """Byte offsets into the kvm_run page of the fields the exit loop reads on every exit."""

    def __init__(self, run):
        base = ctypes.addressof(run)
        sregs = run.s.regs.sregs
        self.exit_reason = type(run).exit_reason.offset
        self.dirty = type(run).kvm_dirty_regs.offset
        self.cr0 = ctypes.addressof(sregs) - base + type(sregs).cr0.offset
        self.cs_selector = ctypes.addressof(sregs.cs) - base + type(sregs.cs).selector.offset
        self.io = ctypes.addressof(run.io) - base
        self.mmio = ctypes.addressof(run.mmio) - base
        self.mmio_data = self.mmio + type(run.mmio).data.offset
        assert self.exit_reason % 4 == 0 and self.dirty % 8 == 0 and self.cr0 % 8 == 0 \
            and self.cs_selector % 2 == 0


_layout: _RunLayout | None = None


def _run_layout(run) -> _RunLayout:
    global _layout
    if _layout is None:
        _layout = _RunLayout(run)
    return _layout


class _BusCache:
    """One vCPU thread's memo of a bus's lookups: address -> (read, write, base, end).

    Valid for one published table of the bus (``Bus._table`` is replaced whole on every insert
    or remove, so an identity check notices any change). Only hits are kept, and at most
    :data:`_BUS_CACHE_MAX` of them (a guest scanning the MMIO space must not grow it); a miss or
    a straddling access returns None and goes through the bus, which counts and logs it.
    """

    __slots__ = ("bus", "table", "hits")

    def __init__(self, bus: Bus):
        self.bus = bus
        self.table = None
        self.hits: dict[int, tuple] = {}

    def get(self, addr: int, n: int):
        """The cached ``(read, write, base, end)`` of the device answering ``n`` bytes at
        ``addr``, or None (unmapped or straddling: the caller goes through the bus)."""
        table = self.bus._table
        if table is not self.table:
            self.table = table
            self.hits = {}
        e = self.hits.get(addr)
        if e is None:
            ent = self.bus._lookup(addr, n)
            if ent is None:
                return None
            if len(self.hits) >= _BUS_CACHE_MAX:
                self.hits.clear()
            dev = ent.device
            e = self.hits[addr] = (dev.read, dev.write, ent.base, ent.end)
        if addr + n - 1 > e[3]:
            return None
        return e


_BUS_CACHE_MAX = 1024


def _noop_handler(signum, frame) -> None:
    """The kick signal's handler: its only job is to make KVM_RUN return EINTR."""


def install_kick_handler() -> bool:
    """Install the no-op handler for :data:`KICK_SIGNAL` (main thread only); True if installed."""
    current = signal.getsignal(KICK_SIGNAL)
    if current not in (signal.SIG_DFL, None) and current is not signal.SIG_IGN:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(KICK_SIGNAL, _noop_handler)
    signal.siginterrupt(KICK_SIGNAL, True)
    return True


_current = threading.local()


def current_vcpu_thread() -> "VcpuThread | None":
    """The :class:`VcpuThread` servicing the exit the calling code runs in (None elsewhere).

    Devices and callbacks use it to read or set the exiting vCPU's registers.
    """
    return getattr(_current, "thread", None)


class _Stop(Exception):
    """Raised inside a vCPU thread to end its loop with an outcome already recorded."""


class VcpuThread:
    """One vCPU's exit loop, run in its own thread."""

    def __init__(self, partition: "ChildPartition", vcpu):
        self.partition = partition
        self.vcpu = vcpu
        self.index = vcpu.index
        self.exits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.thread: threading.Thread | None = None
        #: time.monotonic_ns() when KVM_RUN last returned (the stall probe reads it).
        self.last_exit_ns = time.monotonic_ns()
        #: exit reason -> its ``[ring 0, ring 3]`` list in :attr:`exits` (the hot path's index).
        self._counters: dict[int, list[int]] = {}
        self.stop_requested = False
        self.probe_requested = False
        #: "running", "halted" (HLT with IF=0), "wait-sipi", "done"
        self.state = "running"
        self.where: dict = {}
        #: True while the thread is held at a safe point by :meth:`ChildPartition.pause`.
        self.held = False
        #: Host service time per exit (KVM_RUN return to the next entry), log2 buckets in ns:
        #: slot k counts times in [2**(k-1), 2**k) ns (see :mod:`hvkvm.partition.metrics`).
        self.service_hist = [0] * 64

    # -- kicking --------------------------------------------------------------------------------

    def kick(self) -> None:
        """Make KVM_RUN return now (or as soon as it is entered)."""
        run = self.vcpu.run_struct
        if run is not None:
            run.immediate_exit = 1
        t = self.thread
        # Without our handler the signal's default action would kill the whole process.
        handler = signal.getsignal(KICK_SIGNAL)
        if (t is not None and t.ident is not None and t.is_alive()
                and handler not in (signal.SIG_DFL, signal.SIG_IGN, None)):
            try:
                signal.pthread_kill(t.ident, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass

    # -- state -----------------------------------------------------------------------------------

    def _ring(self, run) -> int:
        sregs = run.s.regs.sregs
        if not sregs.cr0 & CR0_PE:
            return 0
        return sregs.cs.selector & 3

    def snapshot_where(self) -> dict:
        """RIP, symbol, ring and state of this vCPU, from the synced registers."""
        run = self.vcpu.run_struct
        if run is None:
            return {"state": self.state}
        rip = run.s.regs.regs.rip
        return {"rip": rip, "symbol": self.partition.symbolize(rip), "ring": self._ring(run),
                "state": self.state}

    def get_reg(self, name: str) -> int:
        """A general register (``rax``, ``rip``, ...) as synced out on the last exit."""
        return getattr(self.vcpu.run_struct.s.regs.regs, name)

    def set_regs(self, **values: int) -> None:
        """Set general registers for the next entry through the sync-regs area.

        Cheaper than KVM_SET_REGS: the values travel with the next KVM_RUN (measured here
        ~12 us per exit this way against ~29 us with KVM_GET_REGS + KVM_SET_REGS).
        """
        run = self.vcpu.run_struct
        regs = run.s.regs.regs
        for name, value in values.items():
            setattr(regs, name, value & 0xFFFF_FFFF_FFFF_FFFF)
        run.kvm_dirty_regs |= abi.KVM_SYNC_X86_REGS

    def registers(self) -> dict[str, int]:
        """General, flag, segment-selector and control registers from the synced state."""
        run = self.vcpu.run_struct
        regs, sregs = run.s.regs.regs, run.s.regs.sregs
        out = {name: getattr(regs, name) for name, _ in regs._fields_}
        for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
            out[seg] = getattr(sregs, seg).selector
        for cr in ("cr0", "cr2", "cr3", "cr4", "efer"):
            out[cr] = getattr(sregs, cr)
        return out

    # -- the loop --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the vCPU thread."""
        self.thread = threading.Thread(target=self._main, name=f"hvkvm-vcpu{self.index}",
                                       daemon=True)
        self.thread.start()

    def _main(self) -> None:
        p = self.partition
        run = self.vcpu.run_struct
        run.kvm_valid_regs = abi.KVM_SYNC_X86_REGS | abi.KVM_SYNC_X86_SREGS
        try:
            _current.thread = self
            self._loop(p, run)
        except _Stop:
            pass
        except (UcallError, GuestMemoryError, BusError) as e:
            p._finish(RunResult("guest-error", f"vCPU{self.index}: {e}"), self)
        except KvmError as e:
            p._finish(RunResult("host-error", f"vCPU{self.index}: {e}"), self)
        except Exception as e:  # a host bug must end the run with its traceback, not hang it
            import traceback
            p._finish(RunResult("host-error", f"vCPU{self.index}: {type(e).__name__}: {e}",
                                detail=traceback.format_exc()), self)
        finally:
            if self.vcpu.run_struct is not None:
                self.where = self.snapshot_where()
            if self.state == "running":
                self.state = "stopped"

    def _counter(self, reason: int) -> list[int]:
        """The ``[ring 0, ring 3]`` counter of an exit reason (created on its first exit)."""
        c = self._counters.get(reason)
        if c is None:
            c = self._counters[reason] = self.exits[exit_short_name(reason)]
        return c

    def _loop(self, p: "ChildPartition", run) -> None:
        """KVM_RUN until stopped. Every name the hot path touches is a local, ``kvm_run``'s fields
        are read from flat views of its page (no nested ctypes objects per exit), PIO and MMIO to
        a device go through a per-address cache of the bus's last table, and everything rarer
        goes through :meth:`_service`."""
        vcpu = self.vcpu
        fd = vcpu.fd
        mm = vcpu._mm
        size_limit = vcpu.mmap_size
        lay = _run_layout(run)
        m64 = memoryview(mm).cast("Q")
        m32 = memoryview(mm).cast("I")
        m16 = memoryview(mm).cast("H")
        mv = memoryview(mm)
        reason_i, dirty_i, cr0_i, cs_i = lay.exit_reason // 4, lay.dirty // 8, lay.cr0 // 8, \
            lay.cs_selector // 2
        io_off, mmio_off, mmio_data = lay.io, lay.mmio, lay.mmio_data
        io_unpack = _IO_EXIT.unpack_from
        mmio_unpack = _MMIO_EXIT.unpack_from
        # Reads fill a view of kvm_run in place; these views are made once, not per exit.
        mmio_views = [mv[mmio_data:mmio_data + n] for n in range(9)]
        io_views: dict[int, memoryview] = {}
        counters = self._counters
        count_for = self._counter
        hist = self.service_hist
        clock = time.monotonic_ns
        get_errno = ctypes.get_errno
        KVM_RUN = abi.KVM_RUN
        assert 0 < KVM_RUN < 1 << 31
        EXIT_IO, EXIT_MMIO, EXIT_INTR = abi.KVM_EXIT_IO, abi.KVM_EXIT_MMIO, abi.KVM_EXIT_INTR
        IO_OUT = abi.KVM_EXIT_IO_OUT
        pio_bus, mmio_bus = p.pio_bus, p.mmio_bus
        pio_cache = _BusCache(pio_bus)
        mmio_cache = _BusCache(mmio_bus)
        pio_get, mmio_get = pio_cache.get, mmio_cache.get
        hv = p.hv
        if hv is not None:
            from ..hv.synic import HYPERCALL_PORT, SIGNAL_EVENT_PORT
            hv_ports = (HYPERCALL_PORT, SIGNAL_EVENT_PORT)
        else:
            hv_ports = ()
        ucall = self._ucall
        armed = False
        last = self.last_exit_ns
        while not self.stop_requested:
            if p._pause_requested:
                self._hold()
                if self.stop_requested:
                    break
                last = self.last_exit_ns
            # Host service time: from KVM_RUN's return (``last``) to this entry.
            t = clock()
            if armed:
                hist[(t - last).bit_length()] += 1
            armed = True
            if _run_ioctl(fd, KVM_RUN, 0) == -1:
                err = get_errno()
                if err != EINTR and err != EAGAIN:
                    raise KvmError("KVM_RUN", err)
                reason = EXIT_INTR
            else:
                reason = m32[reason_i]
            last = clock()
            self.last_exit_ns = last
            # KVM consumed any registers marked dirty on entry; handlers mark them anew.
            m64[dirty_i] = 0
            c = counters.get(reason)
            if c is None:
                c = count_for(reason)
            # The ring from the synced CR0.PE and CS.RPL: two reads of the page.
            c[1 if m64[cr0_i] & 1 and m16[cs_i] & 3 == 3 else 0] += 1
            if reason == EXIT_IO:
                self.state = "running"
                direction, size, port, count, off = io_unpack(mm, io_off)
                n = size * count
                if off + n > size_limit or (size != 1 and size != 2 and size != 4):
                    raise KvmError("KVM_RUN", 5)  # EIO: the kernel handed us an impossible exit
                if count != 1 or port in hv_ports:
                    self._io(run)
                elif direction == IO_OUT:
                    if port == UCALL_PORT and size == 4:
                        ucall(int.from_bytes(mm[off:off + 4], "little"), run)
                    else:
                        e = pio_get(port, n)
                        if e is None:
                            pio_bus.write(port, mm[off:off + n])
                        else:
                            e[1](port - e[2], mm[off:off + n])
                else:
                    key = off << 3 | n
                    view = io_views.get(key)
                    if view is None:
                        view = io_views[key] = mv[off:off + n]
                    e = pio_get(port, n)
                    if e is None:
                        pio_bus.read(port, view)
                    else:
                        e[0](port - e[2], view)
            elif reason == EXIT_MMIO:
                self.state = "running"
                addr, length, is_write = mmio_unpack(mm, mmio_off)
                if length > 8:
                    length = 8
                e = mmio_get(addr, length) if length else None
                if is_write:
                    data = mm[mmio_data:mmio_data + length]
                    if e is None:
                        mmio_bus.write(addr, data)
                    else:
                        e[1](addr - e[2], data)
                elif e is None:
                    mmio_bus.read(addr, mmio_views[length])
                else:
                    e[0](addr - e[2], mmio_views[length])
            elif reason == EXIT_INTR:
                run.immediate_exit = 0
                if self.stop_requested:
                    break
                if self.probe_requested:
                    self._probe(run)
                continue
            else:
                self.state = "running"
                self._service(reason, run)

    def _hold(self) -> None:
        """Wait outside KVM_RUN, between exits (a safe point), until resumed or stopped."""
        p = self.partition
        with p._pause_cv:
            self.held = True
            p._pause_cv.notify_all()
            while p._pause_requested and not self.stop_requested:
                p._pause_cv.wait(0.1)
            self.held = False
        # The stall probe (and the service-time histogram) must not count the time spent paused.
        self.last_exit_ns = time.monotonic_ns()

    def _count(self, reason: int, run) -> None:
        self._counter(reason)[1 if self._ring(run) == 3 else 0] += 1

    def _probe(self, run) -> None:
        self.probe_requested = False
        mp = self.vcpu.get_mp_state()
        if mp == abi.KVM_MP_STATE_HALTED and not run.s.regs.regs.rflags & RFLAGS_IF:
            self.state = "halted"
        elif mp in (abi.KVM_MP_STATE_UNINITIALIZED, abi.KVM_MP_STATE_INIT_RECEIVED):
            self.state = "wait-sipi"
        else:
            self.state = "running"
        self.partition._probe_done.set()

    def _handle(self, reason: int, run) -> None:
        """Count and service one exit that is pending in ``kvm_run`` (the general path; the
        loop inlines the hot cases). For code that ran KVM_RUN itself (the benchmarks' runners)."""
        self.state = "running"
        self._count(reason, run)
        if reason == abi.KVM_EXIT_INTR:
            run.immediate_exit = 0
            return
        self._service(reason, run)

    def _service(self, reason: int, run) -> None:
        p = self.partition
        if reason == abi.KVM_EXIT_IO:
            self._io(run)
        elif reason == abi.KVM_EXIT_MMIO:
            m = run.mmio
            length = min(m.len, 8)
            buf = (ctypes.c_uint8 * 8).from_address(ctypes.addressof(m) +
                                                    type(m).data.offset)
            view = memoryview(buf).cast("B")[:length]
            if m.is_write:
                p.mmio_bus.write(m.phys_addr, bytes(view))
            else:
                p.mmio_bus.read(m.phys_addr, view)
        elif reason == abi.KVM_EXIT_HLT:
            if not run.s.regs.regs.rflags & RFLAGS_IF:
                self.state = "halted"
                p._check_all_stopped()
        elif reason == abi.KVM_EXIT_SHUTDOWN:
            self._crash("triple fault (KVM_EXIT_SHUTDOWN)", run)
        elif reason == abi.KVM_EXIT_FAIL_ENTRY:
            fe = run.fail_entry
            self._crash(f"VM entry failed: hardware reason {fe.hardware_entry_failure_reason:#x}"
                        f" on cpu {fe.cpu}", run)
        elif reason == abi.KVM_EXIT_INTERNAL_ERROR:
            ie = run.internal
            sub = {getattr(abi, n): n for n in dir(abi) if n.startswith("KVM_INTERNAL_ERROR_")}
            data = " ".join(f"{ie.data[i]:#x}" for i in range(min(ie.ndata, 16)))
            self._crash(f"KVM internal error: {sub.get(ie.suberror, ie.suberror)}"
                        f"{' data ' + data if data else ''}", run)
        elif reason == abi.KVM_EXIT_SYSTEM_EVENT:
            ev = run.system_event
            kinds = {getattr(abi, n): n for n in dir(abi) if n.startswith("KVM_SYSTEM_EVENT_")}
            kind = kinds.get(ev.type, str(ev.type))
            if ev.type == getattr(abi, "KVM_SYSTEM_EVENT_SHUTDOWN", 1):
                p._finish(RunResult("stopped", f"guest powered off ({kind})"), self)
                raise _Stop
            self._crash(f"system event {kind}", run)
        elif reason in (abi.KVM_EXIT_X86_RDMSR, abi.KVM_EXIT_X86_WRMSR):
            self._msr(reason, run)
        elif reason == abi.KVM_EXIT_DEBUG:
            handler = p.debug_handler
            if handler is None:
                self._crash("debug exit with no debugger attached", run)
            elif handler(self, run) == "stop":
                p._finish(RunResult("pass", "stopped by the host at a debug exit"), self)
                raise _Stop
        elif reason in (abi.KVM_EXIT_IRQ_WINDOW_OPEN, abi.KVM_EXIT_UNKNOWN):
            pass
        else:
            self._crash(f"unhandled exit {abi.exit_reason_name(reason)}", run)

    def _msr(self, reason: int, run) -> None:
        hv = self.partition.hv
        m = run.msr
        if hv is None or not hv.handles_msr(m.index):
            m.error = 1  # #GP, as KVM would have raised for an MSR it does not know
            return
        if reason == abi.KVM_EXIT_X86_RDMSR:
            value = hv.rdmsr(self.index, m.index)
            if value is None:
                m.error = 1
            else:
                m.data, m.error = value, 0
        else:
            m.error = 0 if hv.wrmsr(self.index, m.index, m.data) else 1

    def _crash(self, why: str, run) -> None:
        regs = self.registers()
        rip = regs["rip"]
        sym = self.partition.symbolize(rip)
        ring = self._ring(run)
        res = RunResult("crash", f"guest crashed on vCPU{self.index}: {why} at RIP {rip:#x} "
                                 f"<{sym}> (ring {ring})",
                        detail=format_registers(regs), registers=regs, symbol=sym)
        self.partition._finish(res, self)
        raise _Stop

    def _io(self, run) -> None:
        p = self.partition
        io = run.io
        size, count, port = io.size, io.count, io.port
        n = size * count
        off = io.data_offset
        if off + n > self.vcpu.mmap_size or size not in (1, 2, 4):
            raise KvmError("KVM_RUN", 5)  # EIO: the kernel handed us an impossible io exit
        view = memoryview(self.vcpu._mm)[off:off + n]
        try:
            is_write = io.direction == abi.KVM_EXIT_IO_OUT
            hv = p.hv
            if hv is not None:
                from ..hv.synic import HYPERCALL_PORT, SIGNAL_EVENT_PORT
            if port == UCALL_PORT and is_write and size == 4 and count == 1:
                self._ucall(struct.unpack("<I", view)[0], run)
            elif hv is not None and port == HYPERCALL_PORT and is_write and count == 1:
                regs = run.s.regs.regs
                self.set_regs(rax=hv.hypercall(self.index, regs.rcx, regs.rdx, regs.r8))
            elif hv is not None and port == SIGNAL_EVENT_PORT and is_write and count == 1:
                # No ioeventfd matched this connection id (or it has none yet).
                conn = int.from_bytes(view[:4].tobytes().ljust(4, b"\0"), "little")
                self.set_regs(rcx=hv.unknown_signal(conn))
            elif count == 1:
                if is_write:
                    p.pio_bus.write(port, view)
                else:
                    p.pio_bus.read(port, view)
            else:
                p.pio_bus.pio_string(port, size, count, view, is_write)
        finally:
            view.release()

    def _ucall(self, gpa: int, run) -> None:
        p = self.partition
        uc = read_ucall(p.memory, gpa)
        ring = self._ring(run)
        where = f"vCPU{self.index}, ring {ring}"
        if uc.cmd == UCALL_LOG:
            p._log(self.index, uc.msg)
        elif uc.cmd == UCALL_SYNC:
            p._sync(self.index, uc)
        elif uc.cmd == UCALL_DONE:
            code = uc.args[0] & 0xFFFF_FFFF
            code = code - (1 << 32) if code & 0x8000_0000 else code
            status = "pass" if code == 0 else "fail"
            p._finish(RunResult(status, f"guest done({code}) ({where})", guest_code=code), self)
            self.state = "done"
            raise _Stop
        elif uc.cmd == UCALL_ASSERT:
            vals = f" (values {uc.args[0]:#x}, {uc.args[1]:#x})" if any(uc.args[:2]) else ""
            reason = f"guest assert failed at {uc.file}:{uc.line}: {uc.msg} ({where}){vals}"
            regs = self.registers()
            bt = backtrace(p.memory, p.symbols, regs["rip"], regs["rbp"])
            p._finish(RunResult("assert", reason, assert_file=uc.file, assert_line=uc.line,
                                registers=regs, backtrace=bt,
                                detail="backtrace:\n  " + "\n  ".join(bt)), self)
            raise _Stop
        elif uc.cmd == UCALL_FAULT:
            fr = uc.frame
            vec = fr["vector"]
            fault_ring = fr["cs"] & 3
            exc = EXCEPTION_NAMES.get(vec, f"vector {vec}")
            rip = fr["rip"]
            sym = p.symbolize(rip)
            regs = dict(uc.gprs)
            regs.update({k: v for k, v in fr.items() if k not in ("vector",)})
            regs["rsp"] = fr["rsp"]
            extra = f", CR2 {fr['cr2']:#x}" if vec == 14 else ""
            reason = (f"guest fault on vCPU{self.index}: {exc} in ring {fault_ring} at RIP "
                      f"{rip:#x} <{sym}>, error code {fr['error_code']:#x}{extra}")
            bt = backtrace(p.memory, p.symbols, rip, uc.gprs.get("rbp", 0))
            p._finish(RunResult("fault", reason, registers=regs, symbol=sym, backtrace=bt,
                                detail=format_registers(regs) + "\nbacktrace:\n  " +
                                "\n  ".join(bt)), self)
            raise _Stop


def backtrace(memory: GuestMemory, symbols: Symbols, rip: int, rbp: int,
              max_frames: int = 32) -> list[str]:
    """Symbolized frames from RIP up the frame-pointer chain (images keep frame pointers).

    Every frame pointer is guest data: a frame outside RAM, unaligned, or not above the previous
    one ends the walk.
    """
    frames = [f"{rip:#x} <{symbols.symbolize(rip)}>"]
    for _ in range(max_frames):
        if rbp == 0 or rbp % 8 or not memory.contains(rbp, 16):
            break
        next_rbp, ret = memory.read_u64(rbp), memory.read_u64(rbp + 8)
        if ret == 0:
            break
        # A return address can sit just past its function (a call to a noreturn function is the
        # last instruction): look up the call instruction, ret - 1.
        hit = symbols.lookup(ret - 1)
        where = f"{hit[0]}+{hit[1] + 1:#x}" if hit else f"{ret:#x}"
        frames.append(f"{ret:#x} <{where}>")
        if next_rbp <= rbp:
            break
        rbp = next_rbp
    return frames


def format_registers(regs: dict[str, int]) -> str:
    """A register dump, four to a line."""
    order = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15", "rip", "rflags", "cs", "ss", "ds", "es", "fs", "gs",
             "cr0", "cr2", "cr3", "cr4", "efer", "error_code"]
    items = [(k, regs[k]) for k in order if k in regs]
    lines = []
    for i in range(0, len(items), 4):
        lines.append("  ".join(f"{k.upper():>6}={v:016x}" for k, v in items[i:i + 4]))
    return "\n".join(lines)


class ChildPartition:
    """A child partition: owns the VM, its RAM, vCPUs, buses and devices.

    Build it with a :class:`PartitionConfig`, then :meth:`run` it once; :meth:`close` (or ``with``)
    releases everything in reverse order of creation.
    """

    def __init__(self, config: PartitionConfig):
        config.validate()
        self.config = config
        self.image: ElfImage | None = None
        self.symbols = Symbols()
        self.vcpus = []
        self.serial = None
        self._stack = contextlib.ExitStack()
        self._done = threading.Event()
        self._probe_done = threading.Event()
        self._result: RunResult | None = None
        self._result_lock = threading.Lock()
        self._logs: list[str] = []
        self._syncs: list[tuple[int, tuple[int, ...]]] = []
        self._logs_dropped = 0
        self._syncs_dropped = 0
        self._closed = False
        self._pause_requested = False
        self._pause_cv = threading.Condition()
        #: Called as ``debug_handler(vcpu_thread, kvm_run)`` for KVM_EXIT_DEBUG (the gdb stub,
        #: breakpoints set by the host); may return "stop" to end the run there. None: a debug
        #: exit is a crash.
        self.debug_handler = None
        #: Dirty-log tracking state of :mod:`hvkvm.partition.snapshot` (None until a snapshot).
        self._snap_tracker = None
        try:
            self._build()
        except BaseException:
            self._stack.close()
            raise

    # -- construction -----------------------------------------------------------------------------

    def _build(self) -> None:
        cfg = self.config
        st = self._stack
        self.kvm = st.enter_context(Kvm())
        self.vm = st.enter_context(self.kvm.create_vm())
        self.memory = st.enter_context(GuestMemory(cfg.memory))
        for r in self.memory.regions:
            self.vm.set_user_memory_region(r.slot, r.gpa, r.size, r.host_addr)
        # Slots go before the RAM they point at is unmapped.
        st.callback(self._delete_slots)
        self.vm.set_tss_addr(TSS_ADDR)
        self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        self.vm.create_pit2(abi.KVM_PIT_SPEAKER_DUMMY)
        from .irq import MsiRouter
        self.msi_routes = MsiRouter(self.vm)

        # The image goes in first, while RAM is known to be all zeros (no .bss fill needed).
        self._load()

        self.pio_bus = Bus("pio", size=0x10000, strict=cfg.strict_io)
        self.mmio_bus = Bus("mmio", strict=cfg.strict_io)
        self._add_devices()

        supported = self.kvm.get_supported_cpuid()
        if cfg.vsps:
            cfg.hyperv = True
        if cfg.hyperv:
            from ..hv.cpuid import apply_hyperv_leaves
            supported = apply_hyperv_leaves(supported, cfg.vcpus)
        for i in range(cfg.vcpus):
            vcpu = st.enter_context(self.vm.create_vcpu(i))
            vcpu.set_cpuid2(vcpu_cpuid(supported, i))
            self.vcpus.append(vcpu)
        self.hv = self._setup_hyperv() if cfg.hyperv else None
        self.vmbus = None
        if self.hv is not None:
            from ..vmbus.server import VmbusServer
            # Closed before RAM goes (ExitStack unwinds in reverse): rings live in guest RAM.
            self.vmbus = st.enter_context(contextlib.closing(VmbusServer(self)))
            for vsp in cfg.vsps:
                self.vmbus.add_vsp(vsp)
        self._boot(self.vcpus[0])

    def _setup_hyperv(self):
        """Trap the synthetic MSR range to userspace and build the parent's Hyper-V state."""
        from ..hv.synic import HyperV
        from ..hv.atomics import Atomics
        vm = self.vm
        # The filter makes KVM exit for 0x40000000-0x400000ff even on hosts whose KVM has its own
        # Hyper-V emulation compiled in; UNKNOWN covers hosts without a filter match.
        vm.enable_cap(abi.KVM_CAP_X86_USER_SPACE_MSR,
                      abi.KVM_MSR_EXIT_REASON_FILTER | abi.KVM_MSR_EXIT_REASON_UNKNOWN)
        vm.set_msr_filter([(abi.KVM_MSR_FILTER_READ | abi.KVM_MSR_FILTER_WRITE,
                            0x40000000, 256, bytes(32))])
        try:
            tsc_hz = self.vcpus[0].get_tsc_khz() * 1000
        except KvmError:
            tsc_hz = 0
        return HyperV(self.memory, len(self.vcpus), signal_msi=vm.signal_msi,
                      atomics=Atomics(), tsc_hz=tsc_hz)

    def _delete_slots(self) -> None:
        for r in self.memory.regions:
            try:
                self.vm.set_user_memory_region(r.slot, r.gpa, 0, 0)
            except KvmError:
                pass

    def _add_devices(self) -> None:
        """All device registration happens here, so the buses' layout is in one place."""
        from ..vsp.serial import Serial16550
        cfg = self.config
        vm = self.vm

        def com1_irq(level: bool) -> None:
            vm.irq_line(COM1_IRQ, 1 if level else 0)

        self.serial = self._stack.enter_context(
            Serial16550(irq=com1_irq, output=cfg.serial_out, capture=True))
        self.pio_bus.insert(self.serial, COM1_BASE, 8)
        if cfg.serial_stdin:
            self.serial.start_stdin_reader(sys.stdin.fileno())
        attached: set[int] = set()
        for d in cfg.devices:
            bus = {"pio": self.pio_bus, "mmio": self.mmio_bus}.get(d.bus)
            if bus is None:
                raise ValueError(f"unknown bus {d.bus!r} (pio or mmio)")
            bus.insert(d.device, d.base, d.length)
            # A device that needs the partition (guest RAM, the VM for ioeventfds, irqfds and
            # IRQ lines) gets attach(partition) once, however many ranges it has; its detach()
            # runs at close, after the vCPUs stopped and before RAM and the VM go.
            attach = getattr(d.device, "attach", None)
            if attach is not None and id(d.device) not in attached:
                attached.add(id(d.device))
                attach(self)
                detach = getattr(d.device, "detach", None)
                if detach is not None:
                    self._stack.callback(detach)

    def _load(self) -> None:
        cfg = self.config
        if cfg.image is not None:
            self.image = load_elf(Path(cfg.image), self.memory.contains)
            self.symbols = self.image.symbols
            place_image(self.image, self.memory, zeroed=True)  # RAM is fresh from its memfd
        else:
            if not self.memory.contains(cfg.raw_gpa, len(cfg.raw)):
                raise ValueError(f"raw code at {cfg.raw_gpa:#x}+{len(cfg.raw):#x} is outside RAM")
            self.memory.write(cfg.raw_gpa, cfg.raw)

    def _boot(self, bsp) -> None:
        cfg = self.config
        sregs, regs = bsp.get_sregs(), bsp.get_regs()
        if self.image is not None:
            info = write_start_info(self.memory, cfg.cmdline)
            if self.image.pvh_entry is not None:
                bootcpu.setup_protected_mode(sregs, regs, self.image.pvh_entry, info, self.memory)
            else:
                bootcpu.setup_long_mode(sregs, regs, self.memory, self.image.entry,
                                        DIRECT_BOOT_STACK, info)
        elif cfg.raw_mode == "real":
            if cfg.raw_gpa >= 0x100000 or cfg.raw_gpa % 16:
                raise ValueError("real-mode code must sit below 1 MiB on a 16-byte boundary")
            bootcpu.setup_real_mode(sregs, regs, cfg.raw_gpa >> 4, 0)
        elif cfg.raw_mode == "protected":
            bootcpu.setup_protected_mode(sregs, regs, cfg.raw_gpa, 0, self.memory)
        else:
            bootcpu.setup_long_mode(sregs, regs, self.memory, cfg.raw_gpa, DIRECT_BOOT_STACK, 0)
        bsp.set_sregs(sregs)
        bsp.set_regs(regs)

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> "ChildPartition":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop vCPU threads and release everything. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        threads = getattr(self, "_threads", [])
        for t in threads:
            t.stop_requested = True
            t.kick()
        for t in threads:
            if t.thread is not None:
                t.thread.join(timeout=5)
        self._stack.close()

    def register_signal(self, connection_id: int, eventfd: int) -> None:
        """HvSignalEvent on ``connection_id`` signals ``eventfd`` inside KVM (no userspace exit).

        The hypercall stub's fast path writes the connection id to the signal port; a KVM
        ioeventfd with that datamatch completes the write in the kernel.
        """
        if self.hv is None:
            raise RuntimeError("partition has no Hyper-V interface (PartitionConfig.hyperv)")
        from ..hv.synic import SIGNAL_EVENT_PORT
        self.vm.ioeventfd(eventfd, SIGNAL_EVENT_PORT, 4, datamatch=connection_id,
                          flags=abi.KVM_IOEVENTFD_FLAG_PIO | abi.KVM_IOEVENTFD_FLAG_DATAMATCH)
        self.hv.register_event(connection_id, eventfd)

    def unregister_signal(self, connection_id: int, eventfd: int) -> None:
        """Undo :meth:`register_signal`."""
        from ..hv.synic import SIGNAL_EVENT_PORT
        self.hv.unregister_event(connection_id)
        self.vm.ioeventfd(eventfd, SIGNAL_EVENT_PORT, 4, datamatch=connection_id,
                          flags=abi.KVM_IOEVENTFD_FLAG_PIO | abi.KVM_IOEVENTFD_FLAG_DATAMATCH |
                          abi.KVM_IOEVENTFD_FLAG_DEASSIGN)

    def request_stop(self, reason: str, status: str = "pass") -> None:
        """End the run from the host side (a device or callback decided the guest is done)."""
        self._finish(RunResult(status, reason))

    def pause(self, timeout: float = 5.0) -> bool:
        """Hold every vCPU at a safe point: outside KVM_RUN, between two exits.

        Each vCPU thread is kicked (``immediate_exit`` + :data:`KICK_SIGNAL`), finishes the exit
        it is servicing and waits before entering the guest again. Returns True once every live
        vCPU thread is held (threads that already ended count as held), False if that did not
        happen within ``timeout`` seconds (the pause stays requested; :meth:`resume` undoes it).
        May be called before :meth:`run` starts the threads: they then hold before their first
        entry. Devices' own threads (VSP data planes) are not paused.
        """
        with self._pause_cv:
            self._pause_requested = True
        deadline = time.monotonic() + timeout
        kicked: set[int] = set()
        with self._pause_cv:
            while True:
                threads = getattr(self, "_threads", None)
                if threads:
                    for t in threads:
                        if t.index not in kicked and t.thread is not None:
                            t.kick()
                            kicked.add(t.index)
                    if self._all_held(threads):
                        return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._pause_cv.wait(min(remaining, 0.05))

    def resume(self) -> None:
        """Let vCPUs held by :meth:`pause` enter the guest again."""
        with self._pause_cv:
            self._pause_requested = False
            self._pause_cv.notify_all()

    @property
    def paused(self) -> bool:
        """True while a pause is requested and every live vCPU thread is held."""
        threads = getattr(self, "_threads", None)
        return bool(self._pause_requested and threads and self._all_held(threads))

    @staticmethod
    def _all_held(threads) -> bool:
        return all(t.held or (t.thread is not None and not t.thread.is_alive())
                   for t in threads) and all(t.thread is not None for t in threads)

    # -- snapshots and metrics (hvkvm.partition.snapshot, hvkvm.partition.metrics) -------------

    def snapshot(self):
        """A :class:`~hvkvm.partition.snapshot.Snapshot` of every vCPU, the irqchip, PIT, clock,
        the serial UART and RAM; later restores copy back only the pages written since.

        Call it when the partition is not running, while it is paused, or from a callback in a
        vCPU thread (``on_sync``): the other vCPUs are then paused for the time it takes. After a
        finished run, :meth:`run` may be called again: it continues from the snapshot's state.
        """
        from .snapshot import take_snapshot
        snap = take_snapshot(self)
        self._rearm()
        return snap

    def restore(self, snapshot) -> dict:
        """Put the partition back to ``snapshot`` (taken here or loaded from a file for the same
        image, memory size and vCPU count). After a finished run, :meth:`run` may be called again.
        Returns ``{"pages_copied", "full", "ms"}``.
        """
        from .snapshot import restore_snapshot
        info = restore_snapshot(self, snapshot)
        self._rearm()
        return info

    def _rearm(self) -> None:
        """Let :meth:`run` start again once the previous run has ended (after a restore)."""
        threads = getattr(self, "_threads", None)
        if threads and any(t.thread is not None and t.thread.is_alive() for t in threads):
            return  # restored while paused in a run: that run goes on
        self._threads = []
        self._result = None
        self._done.clear()
        self._logs = []
        self._syncs = []
        self._logs_dropped = 0
        self._syncs_dropped = 0

    def exit_metrics(self) -> dict:
        """Exit counters and host service-time histograms of the current run, per vCPU, as a
        plain dict (what :attr:`RunResult.exit_metrics` holds at the end; safe while running)."""
        from .metrics import collect
        return collect(getattr(self, "_threads", None) or [])

    def symbolize(self, addr: int) -> str:
        """``name+0xoff`` for a guest address, from the image's symbol table."""
        return self.symbols.symbolize(addr)

    # -- callbacks from vCPU threads -------------------------------------------------------------

    def _finish(self, result: RunResult, who: VcpuThread | None = None) -> None:
        with self._result_lock:
            if self._result is None:
                self._result = result
        self._done.set()

    def _log(self, index: int, text: str) -> None:
        line = text[:512]
        if len(self._logs) < MAX_KEPT_LOGS:
            self._logs.append(line)
        else:
            self._logs_dropped += 1
        if self.config.on_log is not None:
            self.config.on_log(index, line)
        elif self.config.serial_out is not None:
            out = self.config.serial_out
            out.write(f"[guest log vCPU{index}] {line}\n".encode())
            out.flush()

    def _sync(self, index: int, uc) -> None:
        if len(self._syncs) < MAX_KEPT_SYNCS:
            self._syncs.append((index, uc.args))
        else:
            self._syncs_dropped += 1
        if self.config.on_sync is not None and self.config.on_sync(index, uc) == "stop":
            self._finish(RunResult("pass", f"stopped by the host at SYNC {uc.args[0]}"))
            raise _Stop

    def _check_all_stopped(self) -> None:
        threads = self._threads
        if threads and all(t.state in ("halted", "wait-sipi", "done", "stopped") for t in threads) \
                and any(t.state == "halted" for t in threads):
            bsp = threads[0]
            where = bsp.snapshot_where()
            self._finish(RunResult(
                "stopped", f"guest stopped: every vCPU halted with interrupts off before done() "
                           f"(vCPU0 at RIP {where.get('rip', 0):#x} <{where.get('symbol', '?')}>)"))

    # -- running ---------------------------------------------------------------------------------

    def run(self, timeout: float | None = None) -> RunResult:
        """Run the partition until the guest finishes, fails, stops or times out.

        ``timeout`` overrides the config's. The result carries the outcome, exit counts per vCPU
        and ring, where each vCPU was, and the serial output.
        """
        if self._closed:
            raise RuntimeError("partition is closed")
        if getattr(self, "_threads", None):
            raise RuntimeError("a partition runs once; build a new one")
        timeout = timeout if timeout is not None else self.config.timeout
        kick_ok = install_kick_handler()
        if not kick_ok:
            log.warning("kick signal handler not installed (run() outside the main thread "
                        "before any partition ran in it): stalled vCPUs cannot be probed")
        self._threads = [VcpuThread(self, v) for v in self.vcpus]
        t0 = time.monotonic()
        deadline = t0 + timeout if timeout else None
        for t in self._threads:
            t.start()
        # A probe works by kicking; without the handler, immediate_exit alone cannot reach a vCPU
        # blocked in the guest, so only the watchdog's deadline ends such a run.
        probe = self.config.stall_probe if kick_ok else 0
        try:
            while not self._done.is_set():
                wait = 0.05 if probe else 0.5
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - time.monotonic()))
                if self._done.wait(wait):
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self._finish(RunResult("timeout", f"guest ran past the {timeout:g} s timeout"))
                    break
                if probe and not self._pause_requested:
                    self._probe_stalled(now, probe)
                if all(t.thread is not None and not t.thread.is_alive() for t in self._threads):
                    self._finish(RunResult("host-error", "every vCPU thread ended without an outcome"))
        except KeyboardInterrupt:
            self._finish(RunResult("host-error", "interrupted"))
        wall_ms = (time.monotonic() - t0) * 1000
        for t in self._threads:
            t.stop_requested = True
            t.kick()
        for t in self._threads:
            t.thread.join(timeout=5)
            if t.thread.is_alive():
                log.error("vCPU%d thread did not stop", t.index)
        result = self._result
        result.wall_ms = wall_ms
        result.exits = {t.index: {k: {"ring0": v[0], "ring3": v[1]} for k, v in t.exits.items()}
                        for t in self._threads}
        result.vcpu_state = {t.index: t.where or {"state": t.state} for t in self._threads}
        result.exit_metrics = self.exit_metrics()
        if result.status == "timeout":
            lines = [f"vCPU{i}: {w.get('state')} at RIP {w.get('rip', 0):#x} <{w.get('symbol', '?')}>"
                     f" ring {w.get('ring', '?')}" for i, w in result.vcpu_state.items()]
            bsp = result.vcpu_state.get(0, {})
            result.reason += (f"; vCPU0 was at RIP {bsp.get('rip', 0):#x} "
                              f"<{bsp.get('symbol', '?')}> in ring {bsp.get('ring', '?')}")
            result.detail = "\n".join(lines)
        result.serial = self.serial.captured() if self.serial is not None else b""
        result.logs = list(self._logs)
        if self._logs_dropped or self._syncs_dropped:
            result.logs.append(f"[hvkvm: {self._logs_dropped} more LOG lines and "
                               f"{self._syncs_dropped} more SYNCs were not kept]")
        result.syncs = list(self._syncs)
        if self.serial is not None:
            self.serial.flush()
        return result

    def _probe_stalled(self, now: float, probe: float) -> None:
        stalled = [t for t in self._threads
                   if t.thread.is_alive() and now - t.last_exit_ns / 1e9 > probe and not t.probe_requested]
        for t in stalled:
            t.probe_requested = True
            t.kick()
        if stalled:
            self._probe_done.wait(0.05)
            self._probe_done.clear()
            self._check_all_stopped()


def vcpu_cpuid(supported, index: int):
    """KVM's supported CPUID with this vCPU's APIC ID in leaves 0x1, 0xB and 0x1F."""
    n = supported.nent
    cpuid = abi.make_kvm_cpuid2(n)
    for i in range(n):
        e = supported.entries[i]
        ctypes.memmove(ctypes.addressof(cpuid.entries[i]), ctypes.addressof(e), ctypes.sizeof(e))
        ent = cpuid.entries[i]
        if ent.function == 1:
            ent.ebx = (ent.ebx & 0x00FFFFFF) | ((index & 0xFF) << 24)
        elif ent.function in (0xB, 0x1F):
            ent.edx = index
    cpuid.nent = n
    return cpuid
