"""A pure-Python VMBus ring: a TEST ORACLE, never used to move data.

ARCHITECTURE decision 4: there is one ring implementation, ``csrc/vmbus_ring.c``. This module
restates its semantics in plain Python, written from the same sources (Linux's
``drivers/hv/ring_buffer.c`` and ``include/linux/hyperv.h``, OpenVMM's ``vmbus_ring``), so the
property tests can drive both with the same operations and compare every byte of the ring, every
return code and every signalling decision.

The API mirrors the C one function by function (``hvr_out_write`` -> :meth:`PyOutRing.write`
...), with the C return codes. Memory is any writable buffer holding the plain layout: a 4096-byte
header page and the data area (no double mapping: wrapping accesses are split, as in a guest).
No memory ordering here: the oracle is single-threaded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

PAGE_SIZE = 4096

# enum hvr_status
HVR_OK = 0
HVR_EMPTY = -1
HVR_FULL = -2
HVR_EINVAL = -3
HVR_EBROKEN = -4
HVR_ERANGE = -5

# enum hvr_broken
HVR_BROKEN_NONE = 0
HVR_BROKEN_WRITE_INDEX = 1
HVR_BROKEN_READ_INDEX = 2
HVR_BROKEN_AVAIL = 3
HVR_BROKEN_DESC_LENGTHS = 4
HVR_BROKEN_DESC_FLAGS = 5
HVR_BROKEN_DESC_TYPE = 6
HVR_BROKEN_GPA_RANGES = 7
HVR_BROKEN_XFER_RANGES = 8

# Linux's enum vmbus_packet_type (the types a ring carries) and flags
VM_PKT_DATA_INBAND = 6
VM_PKT_DATA_USING_XFER_PAGES = 7
VM_PKT_DATA_USING_GPA_DIRECT = 9
VM_PKT_COMP = 11
VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED = 1
VMBUS_PKT_TRAILER = 8
HVR_FEAT_PENDING_SEND_SZ = 1

# struct hv_ring_buffer offsets
WRITE_INDEX_OFFSET = 0
READ_INDEX_OFFSET = 4
INTERRUPT_MASK_OFFSET = 8
PENDING_SEND_SZ_OFFSET = 12
FEATURE_BITS_OFFSET = 64

DESC_SIZE = 16
EXT_HDR_SIZE = 8
MIN_PACKET = DESC_SIZE + VMBUS_PKT_TRAILER
MAX_DATA_SIZE = 1 << 30
_KNOWN_TYPES = (VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_XFER_PAGES, VM_PKT_DATA_USING_GPA_DIRECT,
                VM_PKT_COMP)


def ring_dist(size: int, frm: int, to: int) -> int:
    """Bytes from ring offset ``frm`` forward to ``to``."""
    return to - frm if to >= frm else size - frm + to


def _add(size: int, off: int, n: int) -> int:
    v = off + n
    return v - size if v >= size else v


def _align8(v: int) -> int:
    return (v + 7) & ~7


def packet_total(hdr_len: int, payload_len: int) -> int:
    """hvr_packet_total(): descriptor + header + payload padded to 8 + trailer."""
    return min(DESC_SIZE + hdr_len + _align8(payload_len) + VMBUS_PKT_TRAILER, 0xFFFFFFFF)


def format_ring(buf: Any) -> None:
    """hvr_ring_format(): zero the header page, set feat_pending_send_sz."""
    mem = memoryview(buf).cast("B")
    mem[:PAGE_SIZE] = bytes(PAGE_SIZE)
    struct.pack_into("<I", mem, FEATURE_BITS_OFFSET, HVR_FEAT_PENDING_SEND_SZ)


@dataclass
class PyPacket:
    """The fields of ``struct hvr_pkt``."""

    type: int
    flags: int
    offset8: int
    len8: int
    trans_id: int
    offset: int
    total: int
    payload_off: int
    payload_len: int
    range_count: int = 0
    xfer_pageset_id: int = 0
    sender_owns_set: int = 0


class _PyRing:
    def __init__(self, buf: Any, double_mapped: bool = False):
        self.mem = memoryview(buf).cast("B")
        self.size = len(self.mem) - PAGE_SIZE
        self.broken = HVR_BROKEN_NONE
        self.attach_rc = HVR_OK
        if self.size <= 0 or self.size % PAGE_SIZE or self.size > MAX_DATA_SIZE:
            self.size = 0
            self.attach_rc = HVR_EINVAL

    # control words
    def _ld(self, off: int) -> int:
        return struct.unpack_from("<I", self.mem, off)[0]

    def _st(self, off: int, v: int) -> None:
        struct.pack_into("<I", self.mem, off, v & 0xFFFFFFFF)

    def _index_ok(self, v: int) -> bool:
        return v < self.size and v % 8 == 0

    def _set_broken(self, why: int) -> int:
        if not self.broken:
            self.broken = why
        return HVR_EBROKEN

    # data area (plain view: a wrapping access is split)
    def _data_read(self, off: int, n: int) -> bytes:
        base = PAGE_SIZE
        if off >= self.size:
            off -= self.size
        first = self.size - off
        if n <= first:
            return bytes(self.mem[base + off:base + off + n])
        return bytes(self.mem[base + off:base + self.size]) + bytes(self.mem[base:base + n - first])

    def _data_write(self, off: int, data: bytes) -> None:
        base = PAGE_SIZE
        if off >= self.size:
            off -= self.size
        n = len(data)
        first = self.size - off
        if n <= first:
            self.mem[base + off:base + off + n] = data
        else:
            self.mem[base + off:base + self.size] = data[:first]
            self.mem[base:base + n - first] = data[first:]

    def _ld64(self, off: int) -> int:
        return struct.unpack("<Q", self._data_read(off, 8))[0]

    def _attach_indices(self) -> tuple[int, int] | None:
        w = self._ld(WRITE_INDEX_OFFSET)
        rd = self._ld(READ_INDEX_OFFSET)
        if not self._index_ok(w):
            self.attach_rc = self._set_broken(HVR_BROKEN_WRITE_INDEX)
            return None
        if not self._index_ok(rd):
            self.attach_rc = self._set_broken(HVR_BROKEN_READ_INDEX)
            return None
        return w, rd


class PyOutRing(_PyRing):
    """hvr_out_*: the sending end. ``attach_rc`` is hvr_out_attach()'s result."""

    def __init__(self, buf: Any):
        super().__init__(buf)
        self.committed_in = self.next_in = self.cached_out = 0
        self.pending_set = False
        if self.attach_rc:
            return
        idx = self._attach_indices()
        if idx is None:
            return
        self.committed_in = self.next_in = idx[0]
        self.cached_out = idx[1]
        self._st(PENDING_SEND_SZ_OFFSET, 0)
        self._st(FEATURE_BITS_OFFSET, self._ld(FEATURE_BITS_OFFSET) | HVR_FEAT_PENDING_SEND_SZ)

    def _load_read_index(self) -> int:
        rd = self._ld(READ_INDEX_OFFSET)
        if not self._index_ok(rd) or (ring_dist(self.size, self.cached_out, rd)
                                      > ring_dist(self.size, self.cached_out, self.committed_in)):
            return self._set_broken(HVR_BROKEN_READ_INDEX)
        self.cached_out = rd
        return HVR_OK

    def _raw_free(self) -> int:
        return self.size - ring_dist(self.size, self.cached_out, self.next_in)

    def write(self, type: int, flags: int, trans_id: int, hdr_len: int, body: bytes) -> int:
        """hvr_out_write() with the iovecs already joined into ``body``."""
        if self.broken:
            return HVR_EBROKEN
        if (not self.size or type not in _KNOWN_TYPES
                or flags & ~VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED or hdr_len % 8):
            return HVR_EINVAL
        if type in (VM_PKT_DATA_USING_XFER_PAGES, VM_PKT_DATA_USING_GPA_DIRECT) \
                and hdr_len < EXT_HDR_SIZE:
            return HVR_EINVAL
        if len(body) < hdr_len:
            return HVR_EINVAL
        pktlen = DESC_SIZE + _align8(len(body))
        if pktlen > 0xFFFF * 8:
            return HVR_EINVAL
        total = pktlen + VMBUS_PKT_TRAILER
        if total > self.size - 8:
            return HVR_EINVAL
        if total >= self._raw_free():
            if self._load_read_index():
                return HVR_EBROKEN
            if total >= self._raw_free():
                return HVR_FULL
        start = self.next_in
        desc = struct.pack("<HHHHQ", type, (DESC_SIZE + hdr_len) // 8, pktlen // 8, flags,
                           trans_id & 0xFFFFFFFFFFFFFFFF)
        pad = pktlen - DESC_SIZE - len(body)
        trailer = struct.pack("<Q", start << 32)
        self._data_write(start, desc + bytes(body) + bytes(pad) + trailer)
        self.next_in = _add(self.size, start, total)
        if self.pending_set:
            self._st(PENDING_SEND_SZ_OFFSET, 0)
            self.pending_set = False
        return HVR_OK

    def commit(self) -> int:
        """hvr_out_commit(): 1 = signal the reader, 0 = don't, or HVR_EBROKEN."""
        if self.broken:
            return HVR_EBROKEN
        old_write = self.committed_in
        if self.next_in == old_write:
            return 0
        self._st(WRITE_INDEX_OFFSET, self.next_in)
        self.committed_in = self.next_in
        if self._ld(INTERRUPT_MASK_OFFSET):
            return 0
        if self._load_read_index():
            return HVR_EBROKEN
        return 1 if self.cached_out == old_write else 0

    def revert(self) -> None:
        """hvr_out_revert()."""
        self.next_in = self.committed_in

    def free(self) -> int:
        """hvr_out_free()."""
        if self.broken:
            return HVR_EBROKEN
        if not self.size:
            return HVR_EINVAL
        if self._load_read_index():
            return HVR_EBROKEN
        return self._raw_free() - 8

    def request_space(self, total: int) -> int:
        """hvr_out_request_space()."""
        if self.broken:
            return HVR_EBROKEN
        if not self.size or total == 0 or total > self.size - 8:
            return HVR_EINVAL
        pss = _align8(max(total, self.size // 4))
        pss = min(pss, self.size - 8)
        self._st(PENDING_SEND_SZ_OFFSET, pss)
        self.pending_set = True
        if self._load_read_index():
            return HVR_EBROKEN
        if total < self._raw_free():
            self._st(PENDING_SEND_SZ_OFFSET, 0)
            self.pending_set = False
            return 1
        return 0

    def clear_pending(self) -> None:
        """hvr_out_clear_pending()."""
        if self.size and not self.broken and self.pending_set:
            self._st(PENDING_SEND_SZ_OFFSET, 0)
            self.pending_set = False


class PyInRing(_PyRing):
    """hvr_in_*: the receiving end. ``attach_rc`` is hvr_in_attach()'s result."""

    def __init__(self, buf: Any):
        super().__init__(buf)
        self.committed_out = self.next_out = self.cached_in = 0
        if self.attach_rc:
            return
        idx = self._attach_indices()
        if idx is None:
            return
        self.committed_out = self.next_out = idx[1]
        self.cached_in = idx[0]

    def _load_write_index(self) -> int:
        w = self._ld(WRITE_INDEX_OFFSET)
        if not self._index_ok(w) or (ring_dist(self.size, self.committed_out, w)
                                     < ring_dist(self.size, self.committed_out, self.cached_in)):
            return self._set_broken(HVR_BROKEN_WRITE_INDEX)
        self.cached_in = w
        return HVR_OK

    def _parse_gpa(self, off: int, ext_end: int, count: int) -> int:
        if count == 0:
            return self._set_broken(HVR_BROKEN_GPA_RANGES)
        pos = DESC_SIZE + EXT_HDR_SIZE
        for _ in range(count):
            if pos + 8 > ext_end:
                return self._set_broken(HVR_BROKEN_GPA_RANGES)
            w = self._ld64(_add(self.size, off, pos))
            byte_count, byte_offset = w & 0xFFFFFFFF, w >> 32
            if byte_count == 0 or byte_offset >= PAGE_SIZE:
                return self._set_broken(HVR_BROKEN_GPA_RANGES)
            pages = (byte_offset + byte_count + PAGE_SIZE - 1) // PAGE_SIZE
            if pos + 8 + pages * 8 > ext_end:
                return self._set_broken(HVR_BROKEN_GPA_RANGES)
            pos += 8 + pages * 8
        return HVR_OK

    def _parse(self) -> tuple[int, PyPacket | None]:
        if self.broken:
            return HVR_EBROKEN, None
        if not self.size:
            return HVR_EINVAL, None
        off = self.next_out
        avail = ring_dist(self.size, off, self.cached_in)
        if avail == 0:
            if self._load_write_index():
                return HVR_EBROKEN, None
            avail = ring_dist(self.size, off, self.cached_in)
            if avail == 0:
                return HVR_EMPTY, None
        if avail < MIN_PACKET:
            return self._set_broken(HVR_BROKEN_AVAIL), None
        type_, offset8, len8, flags, trans_id = struct.unpack("<HHHHQ", self._data_read(off, 16))
        if offset8 < DESC_SIZE // 8 or len8 < offset8 or len8 * 8 + VMBUS_PKT_TRAILER > avail:
            return self._set_broken(HVR_BROKEN_DESC_LENGTHS), None
        if flags & ~VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED:
            return self._set_broken(HVR_BROKEN_DESC_FLAGS), None
        if type_ not in _KNOWN_TYPES:
            return self._set_broken(HVR_BROKEN_DESC_TYPE), None
        ext_end = offset8 * 8
        pkt = PyPacket(type_, flags, offset8, len8, trans_id, off, len8 * 8 + VMBUS_PKT_TRAILER,
                       ext_end, (len8 - offset8) * 8)
        if type_ in (VM_PKT_DATA_USING_XFER_PAGES, VM_PKT_DATA_USING_GPA_DIRECT):
            if ext_end < DESC_SIZE + EXT_HDR_SIZE:
                return self._set_broken(HVR_BROKEN_DESC_LENGTHS), None
            w2 = self._ld64(_add(self.size, off, DESC_SIZE))
            cnt = w2 >> 32
            if type_ == VM_PKT_DATA_USING_XFER_PAGES:
                if cnt * 8 > ext_end - DESC_SIZE - EXT_HDR_SIZE:
                    return self._set_broken(HVR_BROKEN_XFER_RANGES), None
                pkt.xfer_pageset_id = w2 & 0xFFFF
                pkt.sender_owns_set = (w2 >> 16) & 0xFF
            elif self._parse_gpa(off, ext_end, cnt):
                return HVR_EBROKEN, None
            pkt.range_count = cnt
        return HVR_OK, pkt

    def peek(self) -> tuple[int, PyPacket | None]:
        """hvr_in_peek(): (status, packet)."""
        return self._parse()

    def read(self) -> tuple[int, PyPacket | None]:
        """hvr_in_read(): (status, packet); consumes the packet."""
        rc, pkt = self._parse()
        if rc == HVR_OK:
            self.next_out = _add(self.size, pkt.offset, pkt.total)
        return rc, pkt

    def copy(self, pkt: PyPacket, off: int, n: int) -> tuple[int, bytes]:
        """hvr_in_copy(): (status, bytes) for packet bytes [off, off + n)."""
        if self.broken:
            return HVR_EBROKEN, b""
        if off + n > pkt.len8 * 8:
            return HVR_ERANGE, b""
        return HVR_OK, self._data_read(_add(self.size, pkt.offset, off), n) if n else b""

    def commit(self) -> int:
        """hvr_in_commit(): 1 = signal the writer, 0 = don't, or HVR_EBROKEN."""
        if self.broken:
            return HVR_EBROKEN
        start_read = self.committed_out
        if self.next_out == start_read:
            return 0
        self._st(READ_INDEX_OFFSET, self.next_out)
        self.committed_out = self.next_out
        if not self._ld(FEATURE_BITS_OFFSET) & HVR_FEAT_PENDING_SEND_SZ:
            return 0
        pending_sz = self._ld(PENDING_SEND_SZ_OFFSET) & ~7
        if not pending_sz:
            return 0
        if self._load_write_index():
            return HVR_EBROKEN
        curr_write_sz = self.size - ring_dist(self.size, self.next_out, self.cached_in)
        bytes_read = ring_dist(self.size, start_read, self.next_out)
        if ((curr_write_sz - bytes_read) & 0xFFFFFFFF) > pending_sz:
            return 0
        if curr_write_sz <= pending_sz:
            return 0
        return 1

    def revert(self) -> None:
        """hvr_in_revert()."""
        self.next_out = self.committed_out

    def avail(self) -> int:
        """hvr_in_avail()."""
        if self.broken:
            return HVR_EBROKEN
        if not self.size:
            return HVR_EINVAL
        if self._load_write_index():
            return HVR_EBROKEN
        return ring_dist(self.size, self.next_out, self.cached_in)

    def set_interrupt_mask(self, mask: int) -> None:
        """hvr_in_set_interrupt_mask()."""
        if self.size and not self.broken:
            self._st(INTERRUPT_MASK_OFFSET, 1 if mask else 0)

    def unmask(self) -> int:
        """hvr_in_unmask(): 1 = packets waiting, 0 = empty, or HVR_EBROKEN."""
        if self.broken:
            return HVR_EBROKEN
        if not self.size:
            return HVR_EINVAL
        self._st(INTERRUPT_MASK_OFFSET, 0)
        if self._load_write_index():
            return HVR_EBROKEN
        return 1 if self.cached_in != self.next_out else 0
