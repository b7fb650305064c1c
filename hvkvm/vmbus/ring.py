"""Python ends of a VMBus ring, over the C ring (``csrc/vmbus_ring.c`` through cffi).

A ring has one writer and one reader. :class:`OutRing` is the writer's end, :class:`InRing` the
reader's; either can sit on a :class:`~hvkvm.vmbus.ringmap.RingMapping` (the host's double
mapping of guest pages) or on any writable buffer holding the plain layout (a 4096-byte header
page followed by the data area).

The shape is OpenVMM's: write (or read) several packets, then :meth:`OutRing.commit` (or
:meth:`InRing.commit`) once; the commit returns whether the peer must be signalled, following
Linux's rules (see ``csrc/vmbus_ring.h``). A ring whose peer corrupted it is *broken*: every call
then raises :class:`RingBrokenError` and nothing is read or written.

This is the control-plane wrapper; the data planes call the C functions directly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from hvkvm.vmbus._hvring import ffi, lib
from hvkvm.vmbus.ringmap import PAGE_SIZE, RingMapping

#: Packet types (Linux's enum vmbus_packet_type) this ring carries.
VM_PKT_DATA_INBAND = lib.VM_PKT_DATA_INBAND
VM_PKT_DATA_USING_XFER_PAGES = lib.VM_PKT_DATA_USING_XFER_PAGES
VM_PKT_DATA_USING_GPA_DIRECT = lib.VM_PKT_DATA_USING_GPA_DIRECT
VM_PKT_COMP = lib.VM_PKT_COMP
#: The one descriptor flag.
VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED = lib.VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED

#: enum hvr_broken -> short name.
BROKEN_REASONS = {
    lib.HVR_BROKEN_WRITE_INDEX: "write_index",
    lib.HVR_BROKEN_READ_INDEX: "read_index",
    lib.HVR_BROKEN_AVAIL: "available bytes",
    lib.HVR_BROKEN_DESC_LENGTHS: "descriptor lengths",
    lib.HVR_BROKEN_DESC_FLAGS: "descriptor flags",
    lib.HVR_BROKEN_DESC_TYPE: "descriptor type",
    lib.HVR_BROKEN_GPA_RANGES: "GPA ranges",
    lib.HVR_BROKEN_XFER_RANGES: "transfer page ranges",
}


class RingError(Exception):
    """Base class of ring errors."""


class RingBrokenError(RingError):
    """The peer corrupted the ring; the view is broken for good. ``reason`` is the C
    ``enum hvr_broken`` value, ``reason_name`` its name from :data:`BROKEN_REASONS`."""

    def __init__(self, reason: int):
        self.reason = reason
        self.reason_name = BROKEN_REASONS.get(reason, f"reason {reason}")
        super().__init__(f"VMBus ring is broken: bad {self.reason_name}")


def packet_total(payload_len: int, header_len: int = 0) -> int:
    """Ring bytes a packet takes: descriptor + type-specific header + payload padded to 8 +
    trailer (what :meth:`OutRing.request_space` wants)."""
    return lib.hvr_packet_total(header_len, payload_len)


@dataclass(frozen=True)
class GpaRange:
    """One range of a GPA-direct packet: ``byte_count`` bytes from ``byte_offset`` into the first
    of ``pfns``."""

    byte_count: int
    byte_offset: int
    pfns: tuple[int, ...]


@dataclass(frozen=True)
class Packet:
    """One packet read from a ring (copied out of it).

    ``header`` is the type-specific header between the descriptor and ``offset8 * 8``;
    ``payload`` the bytes from there to ``len8 * 8`` (VMBus carries no exact length: padding is
    included). ``offset`` is the ring offset of the descriptor, ``total`` the ring bytes used.
    """

    type: int
    flags: int
    trans_id: int
    offset8: int
    len8: int
    offset: int
    total: int
    header: bytes
    payload: bytes
    range_count: int = 0
    xfer_pageset_id: int = 0
    sender_owns_set: int = 0
    gpa_ranges: tuple[GpaRange, ...] = ()
    xfer_ranges: tuple[tuple[int, int], ...] = ()

    @property
    def completion_requested(self) -> bool:
        """True when the sender asked for a completion packet."""
        return bool(self.flags & VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED)


def _resolve(mem: Any) -> tuple[int, int, int, Any]:
    """(header address, data size, attach flags, keepalive) for a mapping or a buffer."""
    if isinstance(mem, RingMapping):
        if mem.closed:
            raise ValueError("ring mapping is closed")
        flags = lib.HVR_DOUBLE_MAPPED if mem.double_mapped else 0
        return mem.address, mem.data_size, flags, mem
    cbuf = ffi.from_buffer(mem, require_writable=True)
    size = len(cbuf) - PAGE_SIZE
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"a ring buffer is a header page plus whole data pages, got {len(cbuf)} "
                         f"bytes")
    return int(ffi.cast("uintptr_t", cbuf)), size, 0, (mem, cbuf)


class _End:
    _struct = ""

    def __init__(self, mem: Any):
        addr, size, flags, self._keep = _resolve(mem)
        self._mapping = mem if isinstance(mem, RingMapping) else None
        self._st = ffi.new(self._struct)
        self._hdr = ffi.cast("struct hv_ring_buffer *", addr)
        #: bytes in the data area
        self.data_size = size
        #: True when the data area is mapped twice back to back (packets parse in place)
        self.double_mapped = bool(flags & lib.HVR_DOUBLE_MAPPED)
        rc = self._attach(self._st, self._hdr, size, flags)
        if rc == lib.HVR_EINVAL:
            raise ValueError(f"cannot attach a ring of {size} data bytes")
        self._rc(rc)

    def _ok(self) -> None:
        if self._mapping is not None and self._mapping.closed:
            raise ValueError("the ring's mapping is closed")

    def _rc(self, rc: int) -> int:
        if rc == lib.HVR_EBROKEN:
            raise RingBrokenError(self._st.r.broken)
        return rc

    def _break(self, reason: int):
        """Mark the view broken (sticky, as the C code does) and raise RingBrokenError."""
        if not self._st.r.broken:
            self._st.r.broken = reason
        raise RingBrokenError(self._st.r.broken)

    @property
    def broken(self) -> str | None:
        """Why the view is broken (a name from :data:`BROKEN_REASONS`), or None."""
        b = self._st.r.broken
        return BROKEN_REASONS.get(b, str(b)) if b else None

    @property
    def broken_reason(self) -> int:
        """The C ``enum hvr_broken`` value (0 while the view is fine)."""
        return self._st.r.broken

    @property
    def interrupt_mask(self) -> bool:
        """The reader's interrupt_mask as the header holds it now."""
        self._ok()
        return bool(self._hdr.interrupt_mask)

    @property
    def pending_send_sz(self) -> int:
        """The writer's pending_send_sz as the header holds it now."""
        self._ok()
        return self._hdr.pending_send_sz

    @property
    def write_index(self) -> int:
        """write_index as the header holds it now (unvalidated: for inspection only)."""
        self._ok()
        return self._hdr.write_index

    @property
    def read_index(self) -> int:
        """read_index as the header holds it now (unvalidated: for inspection only)."""
        self._ok()
        return self._hdr.read_index


class OutRing(_End):
    """The sending end of a ring: write packets, then :meth:`commit` to publish them.

    Attaching announces ``feat_pending_send_sz`` and clears pending_send_sz. Raises
    :class:`RingBrokenError` when the header's indices are invalid.
    """

    _struct = "struct hvr_out *"
    _attach = staticmethod(lib.hvr_out_attach)

    def write_packet(self, type: int, payload: bytes = b"", *, header: bytes = b"",
                     flags: int = 0, trans_id: int = 0) -> bool:
        """Append one packet of ``type`` (after uncommitted ones): descriptor, ``header`` (the
        type-specific header, a multiple of 8 bytes), ``payload``, padding, trailer.

        Returns True when written, False when the ring is full now (see :meth:`request_space`).
        Raises ValueError for a bad type, flags, header or a packet the ring can never hold, and
        :class:`RingBrokenError`.
        """
        self._ok()
        header = bytes(header)
        payload = bytes(payload)
        iov = ffi.new("struct hvr_iov[2]")
        hbuf = ffi.from_buffer(header)
        pbuf = ffi.from_buffer(payload)
        iov[0].base = hbuf
        iov[0].len = len(header)
        iov[1].base = pbuf
        iov[1].len = len(payload)
        rc = self._rc(lib.hvr_out_write(self._st, type, flags, trans_id, len(header), iov, 2))
        if rc == lib.HVR_FULL:
            return False
        if rc == lib.HVR_EINVAL:
            raise ValueError(f"cannot write a packet of type {type}, flags {flags:#x}, "
                             f"{len(header)} header and {len(payload)} payload bytes into a "
                             f"ring of {self.data_size} bytes")
        return True

    def write(self, payload: bytes, *, trans_id: int = 0,
              completion_requested: bool = False) -> bool:
        """Append an in-band packet (VM_PKT_DATA_INBAND). True if written, False if full."""
        flags = VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED if completion_requested else 0
        return self.write_packet(VM_PKT_DATA_INBAND, payload, flags=flags, trans_id=trans_id)

    def write_completion(self, payload: bytes, *, trans_id: int) -> bool:
        """Append a completion (VM_PKT_COMP) for the request ``trans_id``."""
        return self.write_packet(VM_PKT_COMP, payload, trans_id=trans_id)

    def write_gpa_direct(self, ranges: list[GpaRange] | list[tuple[int, int, list[int]]],
                         payload: bytes, *, trans_id: int = 0,
                         completion_requested: bool = True) -> bool:
        """Append a GPA-direct packet (Linux's ``struct vmbus_packet_mpb_array`` layout): each
        range is a :class:`GpaRange` or ``(byte_count, byte_offset, pfns)``."""
        parts = [struct.pack("<II", 0, len(ranges))]
        for r in ranges:
            if not isinstance(r, GpaRange):
                r = GpaRange(r[0], r[1], tuple(r[2]))
            parts.append(struct.pack("<II", r.byte_count, r.byte_offset))
            parts.append(struct.pack(f"<{len(r.pfns)}Q", *r.pfns))
        flags = VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED if completion_requested else 0
        return self.write_packet(VM_PKT_DATA_USING_GPA_DIRECT, payload, header=b"".join(parts),
                                 flags=flags, trans_id=trans_id)

    def write_xfer_pages(self, pageset_id: int, ranges: list[tuple[int, int]], payload: bytes,
                         *, trans_id: int = 0, sender_owns_set: int = 0,
                         completion_requested: bool = True) -> bool:
        """Append a transfer-page packet (``struct vmtransfer_page_packet_header``); ranges are
        ``(byte_count, byte_offset)`` in the transfer page set."""
        header = struct.pack("<HBBI", pageset_id, sender_owns_set, 0, len(ranges))
        header += b"".join(struct.pack("<II", c, o) for c, o in ranges)
        flags = VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED if completion_requested else 0
        return self.write_packet(VM_PKT_DATA_USING_XFER_PAGES, payload, header=header,
                                 flags=flags, trans_id=trans_id)

    def commit(self) -> bool:
        """Publish the packets written since the last commit. True when the reader must be
        signalled (empty -> non-empty and its interrupt_mask clear)."""
        self._ok()
        return self._rc(lib.hvr_out_commit(self._st)) == 1

    def revert(self) -> None:
        """Drop the packets written since the last commit."""
        lib.hvr_out_revert(self._st)

    @property
    def free(self) -> int:
        """Largest packet (:func:`packet_total` bytes) that fits now."""
        self._ok()
        return self._rc(lib.hvr_out_free(self._st))

    def request_space(self, total: int) -> bool:
        """After a write of ``total`` ring bytes found the ring full: set pending_send_sz (at least
        a quarter ring) and re-check. True means it fits now (write again), False means wait for
        the reader's signal."""
        self._ok()
        rc = self._rc(lib.hvr_out_request_space(self._st, total))
        if rc == lib.HVR_EINVAL:
            raise ValueError(f"a packet of {total} bytes never fits a {self.data_size}-byte ring")
        return rc == 1

    def clear_pending(self) -> None:
        """Withdraw a pending_send_sz request this end made (a successful write also does)."""
        self._ok()
        lib.hvr_out_clear_pending(self._st)

    @property
    def uncommitted(self) -> int:
        """Bytes written and not yet committed."""
        st = self._st
        return (st.next_in - st.committed_in) % self.data_size


class InRing(_End):
    """The receiving end of a ring: read packets, then :meth:`commit` to free their space.

    Attaching writes nothing. Raises :class:`RingBrokenError` when the header's indices are
    invalid.
    """

    _struct = "struct hvr_in *"
    _attach = staticmethod(lib.hvr_in_attach)

    def _packet(self, p: Any) -> Packet:
        whole = ffi.new("uint8_t[]", max(1, p.len8 * 8))
        self._rc(lib.hvr_in_copy(self._st, p, 0, whole, p.len8 * 8))
        raw = bytes(ffi.buffer(whole, p.len8 * 8))
        header = raw[16:p.payload_off]
        gpa: list[GpaRange] = []
        xfer: tuple[tuple[int, int], ...] = ()
        if p.type == VM_PKT_DATA_USING_GPA_DIRECT:
            # The C parser validated the ranges; this copy is a second fetch of the peer's
            # memory, so it is checked again rather than trusted. A peer that rewrote them in
            # between corrupted the ring: broken for good, like any other corruption.
            pos = 8
            for _ in range(p.range_count):
                if pos + 8 > len(header):
                    self._break(lib.HVR_BROKEN_GPA_RANGES)
                count, off = struct.unpack_from("<II", header, pos)
                npfn = (off + count + PAGE_SIZE - 1) // PAGE_SIZE
                if count == 0 or off >= PAGE_SIZE or pos + 8 + 8 * npfn > len(header):
                    self._break(lib.HVR_BROKEN_GPA_RANGES)
                pfns = struct.unpack_from(f"<{npfn}Q", header, pos + 8)
                gpa.append(GpaRange(count, off, tuple(pfns)))
                pos += 8 + 8 * npfn
        elif p.type == VM_PKT_DATA_USING_XFER_PAGES:
            xfer = tuple(struct.unpack_from("<II", header, 8 + 8 * i)
                         for i in range(p.range_count))
        return Packet(type=p.type, flags=p.flags, trans_id=p.trans_id, offset8=p.offset8,
                      len8=p.len8, offset=p.offset, total=p.total, header=header,
                      payload=raw[p.payload_off:], range_count=p.range_count,
                      xfer_pageset_id=p.xfer_pageset_id, sender_owns_set=p.sender_owns_set,
                      gpa_ranges=tuple(gpa), xfer_ranges=xfer)

    def read(self) -> Packet | None:
        """Consume the next packet and return a copy of it, or None when the ring is empty. Its
        space is freed at :meth:`commit`."""
        self._ok()
        p = ffi.new("struct hvr_pkt *")
        if self._rc(lib.hvr_in_read(self._st, p)) == lib.HVR_EMPTY:
            return None
        return self._packet(p)

    def peek(self) -> Packet | None:
        """The next packet (a copy) without consuming it, or None when the ring is empty."""
        self._ok()
        p = ffi.new("struct hvr_pkt *")
        if self._rc(lib.hvr_in_peek(self._st, p)) == lib.HVR_EMPTY:
            return None
        return self._packet(p)

    def peek_in_place(self) -> tuple[Packet, memoryview] | None:
        """The next packet, not consumed, and a zero-copy view of its payload in the ring (always
        available on a double-mapped ring; on a plain view, None is returned for the view when
        the payload wraps). The view is the peer's memory and is valid until the next commit."""
        self._ok()
        p = ffi.new("struct hvr_pkt *")
        if self._rc(lib.hvr_in_peek(self._st, p)) == lib.HVR_EMPTY:
            return None
        n = ffi.new("uint32_t *")
        ptr = lib.hvr_in_payload(self._st, p, n)
        view = memoryview(ffi.buffer(ptr, n[0])) if ptr != ffi.NULL else None
        return self._packet(p), view

    def commit(self) -> bool:
        """Free the space of the packets read since the last commit. True when the writer must
        be signalled (Linux's pending_send_sz rule)."""
        self._ok()
        return self._rc(lib.hvr_in_commit(self._st)) == 1

    def revert(self) -> None:
        """Un-read the packets read since the last commit."""
        lib.hvr_in_revert(self._st)

    @property
    def available(self) -> int:
        """Bytes written and not yet read."""
        self._ok()
        return self._rc(lib.hvr_in_avail(self._st))

    @_End.interrupt_mask.setter
    def interrupt_mask(self, value: bool) -> None:
        """Mask (True, while draining) or unmask the writer's signals. Prefer :meth:`unmask`."""
        self._ok()
        lib.hvr_in_set_interrupt_mask(self._st, 1 if value else 0)

    def unmask(self) -> bool:
        """Clear interrupt_mask and re-check: True if packets are waiting (read them now: they
        may have raised no signal), False if the ring is empty (sleep until signalled)."""
        self._ok()
        return self._rc(lib.hvr_in_unmask(self._st)) == 1
