"""Synthetic MSRs, the hypercall page and the SynIC, emulated in the parent.

:class:`HyperV` holds the partition-wide state (guest OS id, hypercall page) and one
:class:`SynicVp` per virtual processor. The exit loop hands it synthetic MSR exits
(:meth:`HyperV.rdmsr` / :meth:`HyperV.wrmsr`) and the hypercall ports' exits
(:meth:`HyperV.hypercall`, :meth:`HyperV.unknown_signal`). VSPs and the VMBus server use
:meth:`HyperV.post_message` and :meth:`HyperV.signal_event` to reach the guest, and
:meth:`HyperV.register_post_handler` / :meth:`HyperV.register_event` to hear from it.

Everything read from the guest (MSR values, hypercall inputs) is checked before use: a GPA
outside RAM, a misaligned or page-straddling input, an oversized payload or an unknown code gets a
Hyper-V status or a #GP, never a host access outside the guest.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import deque
from typing import Callable

from ..memory import PAGE_SIZE, GuestMemory
from ..vmbus.wire import (  # noqa: F401 - re-exported for callers and tests
    HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_HYPERCALL, HV_X64_MSR_VP_INDEX,
    HV_X64_MSR_TSC_FREQUENCY, HV_X64_MSR_APIC_FREQUENCY, HV_X64_MSR_SCONTROL,
    HV_X64_MSR_SVERSION, HV_X64_MSR_SIEFP, HV_X64_MSR_SIMP,
    HV_X64_MSR_EOM, HV_X64_MSR_SINT0, HV_X64_MSR_SINT15,
    HV_SYNIC_SINT_COUNT, HV_SYNIC_SINT_MASKED, HV_SYNIC_SINT_AUTO_EOI,
    HV_SYNIC_SINT_VECTOR_MASK, HV_SYNIC_VERSION_1, HV_SYNIC_CONTROL_ENABLE,
    HV_SYNIC_SIMP_ENABLE, HV_SYNIC_SIEFP_ENABLE, HVCALL_POST_MESSAGE,
    HVCALL_SIGNAL_EVENT, HV_HYPERCALL_FAST_BIT, HV_HYPERCALL_VARHEAD_MASK,
    HV_HYPERCALL_REP_COMP_MASK, HV_HYPERCALL_REP_START_MASK, HV_STATUS_SUCCESS,
    HV_STATUS_INVALID_HYPERCALL_CODE, HV_STATUS_INVALID_HYPERCALL_INPUT, HV_STATUS_INVALID_ALIGNMENT,
    HV_STATUS_INVALID_PARAMETER, HV_STATUS_INVALID_CONNECTION_ID, HV_STATUS_INSUFFICIENT_BUFFERS,
    HV_MESSAGE_SIZE, HV_MESSAGE_PAYLOAD_BYTE_COUNT, HVMSG_NONE)

log = logging.getLogger("hvkvm.hv")

# The TLFS constants come from the wire definitions (Linux's spelling); these are hvkvm's own.
HV_SYNIC_SINT_POLLING = 1 << 18
HV_HYPERCALL_ENABLE = 1
HV_HYPERCALL_LOCKED = 1 << 1
MSG_PENDING = 1                 # hv_message_flags.msg_pending
HV_EVENT_FLAGS_BYTES = 256      # one SINT's slot in the SIEFP page: 2048 flags
POST_MESSAGE_INPUT_SIZE = 16 + HV_MESSAGE_PAYLOAD_BYTE_COUNT   # hv_input_post_message

#: Ports of the hypercall stub (guest_images/PROTOCOL.md).
SIGNAL_EVENT_PORT = 0xE4
HYPERCALL_PORT = 0xEC

MSI_ADDRESS_BASE = 0xFEE0_0000

_STUB_SOURCE = """
    cmp    $0x1005d, %ecx
    jne    1f
    mov    %edx, %eax
    xor    %ecx, %ecx
    out    %eax, $0xe4
    mov    %ecx, %eax
    ret
1:  out    %eax, $0xec
    ret
"""
#: The hypercall page stub, assembled from _STUB_SOURCE (kept as bytes: no assembler at run time).
HYPERCALL_STUB = bytes.fromhex(
    "81f95d0001007509"   # cmp $0x1005d,%ecx ; jne 1f
    "89d0"               # mov %edx,%eax
    "31c9"               # xor %ecx,%ecx
    "e7e4"               # out %eax,$0xe4
    "89c8"               # mov %ecx,%eax
    "c3"                 # ret
    "e7ec"               # 1: out %eax,$0xec
    "c3"                 # ret
)

PostHandler = Callable[[int, int, bytes], int]
"""``handler(vp_index, message_type, payload) -> HV status`` for HvPostMessage on a connection."""


class SynicVp:
    """The SynIC of one virtual processor."""

    def __init__(self, index: int):
        self.index = index
        self.scontrol = 0
        self.simp = 0
        self.siefp = 0
        self.sints = [HV_SYNIC_SINT_MASKED] * HV_SYNIC_SINT_COUNT
        #: Messages waiting for a free slot, per SINT: (message_type, payload).
        self.pending: list[deque] = [deque() for _ in range(HV_SYNIC_SINT_COUNT)]

    @property
    def enabled(self) -> bool:
        """SCONTROL enable bit."""
        return bool(self.scontrol & HV_SYNIC_CONTROL_ENABLE)

    def simp_gpa(self) -> int | None:
        """GPA of the message page when enabled."""
        return self.simp & ~0xFFF if self.simp & HV_SYNIC_SIMP_ENABLE else None

    def siefp_gpa(self) -> int | None:
        """GPA of the event-flags page when enabled."""
        return self.siefp & ~0xFFF if self.siefp & HV_SYNIC_SIEFP_ENABLE else None


class HyperV:
    """The partition's Hyper-V synthetic interface.

    ``signal_msi(address, data)`` injects an interrupt (KVM_SIGNAL_MSI); ``ioeventfd(fd, port,
    datamatch)`` registers a kernel-side port match (KVM_IOEVENTFD); ``atomics`` provides
    ``event_set_bit(addr, bit)`` and ``message_mark_pending(addr) -> int`` on host addresses of
    guest RAM (C: Python has no atomic read-modify-write on shared memory).
    """

    MAX_PENDING_PER_SINT = 64
    #: HvPostMessage calls a partition may make per second, on average (all connection ids
    #: together), and how many it may make at once (a token bucket). Over it the call is
    #: refused with HV_STATUS_INSUFFICIENT_BUFFERS, as Hyper-V does when its message buffers run
    #: out: a Linux guest (vmbus_post_msg) and hvkvm's runtime retry. It bounds the parent CPU a
    #: flood of channel messages takes; instance attributes, so a host (or a test) may change them.
    MESSAGES_PER_SECOND = 20000
    MESSAGE_BURST = 20000

    def __init__(self, memory: GuestMemory, nvps: int, *, signal_msi: Callable[[int, int], object],
                 atomics, tsc_hz: int, apic_hz: int = 1_000_000_000):
        self.memory = memory
        self.vps = [SynicVp(i) for i in range(nvps)]
        self.signal_msi = signal_msi
        self.atomics = atomics
        self.tsc_hz = tsc_hz
        self.apic_hz = apic_hz
        self.guest_os_id = 0
        self.hypercall_msr = 0
        self.lock = threading.RLock()
        self.post_handlers: dict[int, PostHandler] = {}
        #: Called as ``listener(vp, sint)`` after the guest rewrote a SINT or its SIEFP page
        #: (irqfd routes and C data planes follow the guest's vector and pages).
        self.sint_listeners: list[Callable[[int, int], None]] = []
        self._events: dict[int, int] = {}
        self.stats = {"post_message": 0, "signal_event_exit": 0, "sint_interrupts": 0,
                      "messages_queued": 0, "messages_dropped": 0, "bad_hypercalls": 0,
                      "msr_gp": 0, "messages_throttled": 0}
        self.messages_per_second = self.MESSAGES_PER_SECOND
        self.message_burst = self.MESSAGE_BURST
        self._tokens = float(self.MESSAGE_BURST)
        self._tokens_at = time.monotonic()
        self._warned: set[str] = set()

    # -- guest-triggered warnings, rate-limited ------------------------------------------------

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned and len(self._warned) < 256:
            self._warned.add(key)
            log.warning("%s", text)

    # -- MSRs --------------------------------------------------------------------------------

    @staticmethod
    def handles_msr(index: int) -> bool:
        """True for the synthetic MSR range the parent traps."""
        return 0x40000000 <= index <= 0x400000FF

    def rdmsr(self, vp: int, index: int) -> int | None:
        """Value of a synthetic MSR, or None for a #GP."""
        s = self.vps[vp]
        with self.lock:
            if index == HV_X64_MSR_GUEST_OS_ID:
                return self.guest_os_id
            if index == HV_X64_MSR_HYPERCALL:
                return self.hypercall_msr
            if index == HV_X64_MSR_VP_INDEX:
                return vp
            if index == HV_X64_MSR_TSC_FREQUENCY:
                return self.tsc_hz
            if index == HV_X64_MSR_APIC_FREQUENCY:
                return self.apic_hz
            if index == HV_X64_MSR_SCONTROL:
                return s.scontrol
            if index == HV_X64_MSR_SVERSION:
                return HV_SYNIC_VERSION_1
            if index == HV_X64_MSR_SIEFP:
                return s.siefp
            if index == HV_X64_MSR_SIMP:
                return s.simp
            if index == HV_X64_MSR_EOM:
                return 0
            if HV_X64_MSR_SINT0 <= index <= HV_X64_MSR_SINT15:
                return s.sints[index - HV_X64_MSR_SINT0]
        self.stats["msr_gp"] += 1
        self._warn_once(f"rd{index:x}", f"guest read unknown synthetic MSR {index:#x}: #GP")
        return None

    def wrmsr(self, vp: int, index: int, value: int) -> bool:
        """Write a synthetic MSR; False means #GP."""
        s = self.vps[vp]
        with self.lock:
            if index == HV_X64_MSR_GUEST_OS_ID:
                self.guest_os_id = value
                if value == 0:  # TLFS: clearing the OS id disables the hypercall page
                    self.hypercall_msr &= ~HV_HYPERCALL_ENABLE
                return True
            if index == HV_X64_MSR_HYPERCALL:
                return self._write_hypercall_msr(value)
            if index == HV_X64_MSR_SCONTROL:
                s.scontrol = value & HV_SYNIC_CONTROL_ENABLE
                for listener in self.sint_listeners:
                    listener(vp, -1)
                return True
            if index == HV_X64_MSR_SIEFP:
                ok = self._set_page(s, "siefp", value)
                for listener in self.sint_listeners:
                    listener(vp, -1)
                return ok
            if index == HV_X64_MSR_SIMP:
                ok = self._set_page(s, "simp", value)
                if ok:
                    for sint in range(HV_SYNIC_SINT_COUNT):
                        self._drain_pending(s, sint)
                return ok
            if index == HV_X64_MSR_EOM:
                for sint in range(HV_SYNIC_SINT_COUNT):
                    self._drain_pending(s, sint)
                return True
            if HV_X64_MSR_SINT0 <= index <= HV_X64_MSR_SINT15:
                vector = value & HV_SYNIC_SINT_VECTOR_MASK
                if not value & HV_SYNIC_SINT_MASKED and vector < 16:
                    self.stats["msr_gp"] += 1
                    return False  # TLFS: vectors 0-15 are reserved
                sint = index - HV_X64_MSR_SINT0
                s.sints[sint] = value & (
                    HV_SYNIC_SINT_VECTOR_MASK | HV_SYNIC_SINT_MASKED | HV_SYNIC_SINT_AUTO_EOI |
                    HV_SYNIC_SINT_POLLING)
                self._drain_pending(s, sint)
                for listener in self.sint_listeners:
                    listener(vp, sint)
                return True
        self.stats["msr_gp"] += 1
        self._warn_once(f"wr{index:x}", f"guest wrote unknown or read-only synthetic MSR "
                                        f"{index:#x}: #GP")
        return False

    def _set_page(self, s: SynicVp, name: str, value: int) -> bool:
        gpa = value & ~0xFFF
        if value & 1 and not self.memory.contains(gpa, PAGE_SIZE):
            self.stats["msr_gp"] += 1
            self._warn_once(f"{name}-ram", f"guest put its SynIC {name.upper()} page at GPA "
                                           f"{gpa:#x}, outside RAM: #GP")
            return False
        setattr(s, name, value & ~0xFFE)
        return True

    def _write_hypercall_msr(self, value: int) -> bool:
        if self.hypercall_msr & HV_HYPERCALL_LOCKED:
            return True  # TLFS: writes to a locked hypercall MSR are ignored
        gpa = value & ~0xFFF
        if value & HV_HYPERCALL_ENABLE:
            if not self.guest_os_id:
                value &= ~HV_HYPERCALL_ENABLE  # TLFS: no hypercall page before the OS id
            elif not self.memory.contains(gpa, PAGE_SIZE):
                self.stats["msr_gp"] += 1
                self._warn_once("hc-ram", f"hypercall page GPA {gpa:#x} is outside RAM: #GP")
                return False
            else:
                page = HYPERCALL_STUB + b"\xcc" * (PAGE_SIZE - len(HYPERCALL_STUB))
                self.memory.write(gpa, page)
        self.hypercall_msr = value & ~0xFFC
        return True

    # -- hypercalls ------------------------------------------------------------------------------

    def hypercall(self, vp: int, control: int, input_gpa: int, output_gpa: int) -> int:
        """Service a slow hypercall; returns the HV status for RAX."""
        code = control & 0xFFFF
        if code == HVCALL_POST_MESSAGE:
            if control & (HV_HYPERCALL_FAST_BIT | HV_HYPERCALL_REP_COMP_MASK |
                          HV_HYPERCALL_VARHEAD_MASK):
                return self._bad("post-fast", HV_STATUS_INVALID_HYPERCALL_INPUT,
                                 f"HvPostMessage with unsupported control bits {control:#x}")
            return self._post_message_hypercall(vp, input_gpa)
        if code == HVCALL_SIGNAL_EVENT:
            # The stub handles the fast form; a slow (memory-input) HvSignalEvent lands here.
            if control & HV_HYPERCALL_FAST_BIT:
                return self.unknown_signal(input_gpa & 0xFFFFFFFF)
            if input_gpa % 8 or input_gpa % PAGE_SIZE > PAGE_SIZE - 8:
                return self._bad("sig-align", HV_STATUS_INVALID_ALIGNMENT,
                                 f"HvSignalEvent input at {input_gpa:#x} misaligned")
            if not self.memory.contains(input_gpa, 8):
                return self._bad("sig-ram", HV_STATUS_INVALID_PARAMETER,
                                 f"HvSignalEvent input at {input_gpa:#x} outside RAM")
            conn = self.memory.read_u32(input_gpa)
            return self.signal_by_python(conn)
        return self._bad(f"code{code:x}", HV_STATUS_INVALID_HYPERCALL_CODE,
                         f"unknown hypercall code {code:#x}")

    def _bad(self, key: str, status: int, text: str) -> int:
        self.stats["bad_hypercalls"] += 1
        self._warn_once(key, f"guest hypercall refused ({status:#x}): {text}")
        return status

    def _post_message_hypercall(self, vp: int, gpa: int) -> int:
        if gpa % 8:
            return self._bad("pm-align", HV_STATUS_INVALID_ALIGNMENT,
                             f"HvPostMessage input at {gpa:#x} is not 8-byte aligned")
        if gpa % PAGE_SIZE > PAGE_SIZE - POST_MESSAGE_INPUT_SIZE:
            return self._bad("pm-straddle", HV_STATUS_INVALID_ALIGNMENT,
                             f"HvPostMessage input at {gpa:#x} straddles a page")
        if not self.memory.contains(gpa, POST_MESSAGE_INPUT_SIZE):
            return self._bad("pm-ram", HV_STATUS_INVALID_PARAMETER,
                             f"HvPostMessage input at {gpa:#x} is outside RAM")
        raw = self.memory.read(gpa, POST_MESSAGE_INPUT_SIZE)  # one copy, then validate
        conn, _reserved, mtype, size = struct.unpack_from("<IIII", raw)
        if size > HV_MESSAGE_PAYLOAD_BYTE_COUNT:
            return self._bad("pm-size", HV_STATUS_INVALID_PARAMETER,
                             f"HvPostMessage payload of {size} bytes (max 240)")
        if mtype == 0 or mtype & 0x8000_0000:
            return self._bad("pm-type", HV_STATUS_INVALID_PARAMETER,
                             f"HvPostMessage with message type {mtype:#x}")
        handler = self.post_handlers.get(conn)
        if handler is None:
            return self._bad(f"pm-conn{conn}", HV_STATUS_INVALID_CONNECTION_ID,
                             f"HvPostMessage to unknown connection id {conn}")
        if not self._take_message_token():
            self.stats["messages_throttled"] += 1
            self._warn_once("pm-rate", f"guest posts more than {self.messages_per_second} "
                                       f"messages a second (burst {self.message_burst}): "
                                       f"refused with HV_STATUS_INSUFFICIENT_BUFFERS")
            return HV_STATUS_INSUFFICIENT_BUFFERS
        self.stats["post_message"] += 1
        return handler(vp, mtype, raw[16:16 + size])

    def _take_message_token(self) -> bool:
        """One HvPostMessage from the partition's bucket (refilled at messages_per_second)."""
        with self.lock:
            now = time.monotonic()
            self._tokens = min(float(self.message_burst), self._tokens + (
                now - self._tokens_at) * self.messages_per_second)
            self._tokens_at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def unknown_signal(self, connection_id: int) -> int:
        """The fast HvSignalEvent port exited to userspace: no ioeventfd took this id."""
        return self.signal_by_python(connection_id)

    def signal_by_python(self, connection_id: int) -> int:
        """Deliver a guest signal that reached Python (slow form, or no ioeventfd matched)."""
        self.stats["signal_event_exit"] += 1
        with self.lock:
            ev = self._events.get(connection_id)
        if ev is None:
            return self._bad(f"sig-conn{connection_id}", HV_STATUS_INVALID_CONNECTION_ID,
                             f"HvSignalEvent on unknown connection id {connection_id}")
        os.eventfd_write(ev, 1)
        return HV_STATUS_SUCCESS

    # -- registration ------------------------------------------------------------------------------

    def register_post_handler(self, connection_id: int, handler: PostHandler) -> None:
        """Route HvPostMessage on ``connection_id`` to ``handler``."""
        with self.lock:
            if connection_id in self.post_handlers:
                raise ValueError(f"connection id {connection_id} already has a message handler")
            self.post_handlers[connection_id] = handler

    def register_event(self, connection_id: int, eventfd: int) -> None:
        """Remember the eventfd that HvSignalEvent on ``connection_id`` signals.

        The partition registers the same eventfd as a KVM ioeventfd on the signal port, so the
        fast path never leaves the kernel; this mapping serves the slow paths.
        """
        with self.lock:
            self._events[connection_id] = eventfd

    def unregister_event(self, connection_id: int) -> None:
        """Forget a connection id's eventfd."""
        with self.lock:
            self._events.pop(connection_id, None)

    # -- delivery to the guest ----------------------------------------------------------------------

    def _raise_sint(self, s: SynicVp, sint: int) -> None:
        value = s.sints[sint]
        if value & HV_SYNIC_SINT_MASKED or not s.enabled:
            return
        self.stats["sint_interrupts"] += 1
        self.signal_msi(MSI_ADDRESS_BASE | (s.index << 12), value & HV_SYNIC_SINT_VECTOR_MASK)

    def sint_msi(self, vp: int, sint: int) -> tuple[int, int] | None:
        """(address, data) of the MSI for a SINT, or None while it cannot interrupt (masked, or
        the SynIC disabled) - for irqfd routes."""
        s = self.vps[vp]
        value = s.sints[sint]
        if value & HV_SYNIC_SINT_MASKED or not s.enabled:
            return None
        return MSI_ADDRESS_BASE | (s.index << 12), value & HV_SYNIC_SINT_VECTOR_MASK

    def post_message(self, vp: int, sint: int, message_type: int, payload: bytes) -> bool:
        """Deliver a SynIC message to ``vp``'s ``sint`` slot, or queue it while the slot is busy.

        Returns False only when the queue is full and the message was dropped.
        """
        if len(payload) > HV_MESSAGE_PAYLOAD_BYTE_COUNT:
            raise ValueError(f"SynIC message payload of {len(payload)} bytes (max 240)")
        s = self.vps[vp]
        with self.lock:
            q = s.pending[sint]
            if q:
                if len(q) >= self.MAX_PENDING_PER_SINT:
                    self.stats["messages_dropped"] += 1
                    return False
                q.append((message_type, payload))
                self.stats["messages_queued"] += 1
                self._drain_pending(s, sint)
                return True
            if not self._try_deliver(s, sint, message_type, payload):
                q.append((message_type, payload))
                self.stats["messages_queued"] += 1
            return True

    def _try_deliver(self, s: SynicVp, sint: int, message_type: int, payload: bytes) -> bool:
        base = s.simp_gpa()
        if base is None or not s.enabled:
            return False
        slot = base + sint * HV_MESSAGE_SIZE
        if self.memory.read_u32(slot) != HVMSG_NONE:
            # Busy: ask for an EOM. The guest may have freed the slot between our load and the
            # flag store, so the helper re-reads message_type after a full fence.
            if self.atomics.message_mark_pending(self.memory.host_address(slot, 8)) != HVMSG_NONE:
                return False
        body = struct.pack("<BBHQ", len(payload), 0, 0, 0) + payload
        self.memory.write(slot + 4, body)
        # message_type last: the guest treats a non-zero type as "the slot is filled" (x86 stores
        # are not reordered with each other, so the payload is visible first).
        self.memory.write_u32(slot, message_type)
        self._raise_sint(s, sint)
        return True

    def _drain_pending(self, s: SynicVp, sint: int) -> None:
        q = s.pending[sint]
        while q:
            message_type, payload = q[0]
            if not self._try_deliver(s, sint, message_type, payload):
                return
            q.popleft()

    def signal_event(self, vp: int, sint: int, flag: int) -> None:
        """Set event flag ``flag`` (a relid) in ``vp``'s SIEFP page for ``sint`` and raise it."""
        if not 0 <= flag < HV_EVENT_FLAGS_BYTES * 8:
            raise ValueError(f"event flag {flag} out of range")
        s = self.vps[vp]
        with self.lock:
            base = s.siefp_gpa()
            if base is None:
                return
            addr = self.memory.host_address(base + sint * HV_EVENT_FLAGS_BYTES, HV_EVENT_FLAGS_BYTES)
            self.atomics.event_set_bit(addr, flag)
            self._raise_sint(s, sint)
