"""The VMBus ring: C ring (cffi) vs the pure-Python oracle, malformed rings, signalling, the
double mapping, and the freestanding build of csrc/vmbus_ring.c.

Every ring here sits in a RingMapping, whose guard pages are PROT_NONE: a ring access outside the
ring faults (the test process dies) instead of passing silently.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hvkvm.memory import GuestMemory
from hvkvm.vmbus import pyring
from hvkvm.vmbus._hvring import ffi, lib
from hvkvm.vmbus.ring import InRing, OutRing, RingBrokenError, packet_total
from hvkvm.vmbus.ringmap import PAGE_SIZE, RingMapError, RingMapping

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


# -- helpers ------------------------------------------------------------------------------------

def memfd_pages(n: int) -> int:
    fd = os.memfd_create("hvr-test", os.MFD_CLOEXEC)
    os.ftruncate(fd, n * PAGE_SIZE)
    return fd


@pytest.fixture
def ring_factory():
    """ring_factory(n_data_pages, double=True) -> RingMapping over a fresh memfd."""
    made = []

    def make(n: int = 2, double: bool = True, fd: int | None = None) -> RingMapping:
        own = fd is None
        if own:
            fd = memfd_pages(n + 1)
        m = RingMapping.from_memfd(fd, n, double=double)
        made.append((m, fd if own else None))
        return m

    yield make
    for m, fd in made:
        m.close()
        if fd is not None:
            os.close(fd)


def pkt_tuple(p) -> tuple:
    """The fields of a struct hvr_pkt (cdata) or a PyPacket, comparable."""
    return (p.type, p.flags, p.offset8, p.len8, p.trans_id, p.offset, p.total, p.payload_off,
            p.payload_len, p.range_count, p.xfer_pageset_id, p.sender_owns_set)


class CRing:
    """Both ends of one C ring on one mapping, driven through the raw C API."""

    def __init__(self, mapping: RingMapping):
        self.map = mapping
        self.size = mapping.data_size
        flags = lib.HVR_DOUBLE_MAPPED if mapping.double_mapped else 0
        hdr = ffi.cast("struct hv_ring_buffer *", mapping.address)
        self.out = ffi.new("struct hvr_out *")
        self.out_rc = lib.hvr_out_attach(self.out, hdr, self.size, flags)
        self.inn = ffi.new("struct hvr_in *")
        self.in_rc = lib.hvr_in_attach(self.inn, hdr, self.size, flags)

    def image(self) -> bytes:
        return self.map.read(0, PAGE_SIZE + self.size)

    def write(self, type_, flags, trans_id, hdr_len, body: bytes, split: int) -> int:
        split = min(split, len(body))
        a, b = body[:split], body[split:]
        keep = [ffi.from_buffer(a), ffi.from_buffer(b)]
        iov = ffi.new("struct hvr_iov[2]")
        iov[0].base, iov[0].len = keep[0], len(a)
        iov[1].base, iov[1].len = keep[1], len(b)
        rc = lib.hvr_out_write(self.out, type_, flags, trans_id, hdr_len, iov, 2)
        if rc == lib.HVR_FULL:
            event("a write found the ring full")
        return rc

    def read(self, consume: bool):
        p = ffi.new("struct hvr_pkt *")
        rc = (lib.hvr_in_read if consume else lib.hvr_in_peek)(self.inn, p)
        if rc == lib.HVR_EBROKEN:
            event(f"read broke the ring: reason {self.inn.r.broken}")
        if rc != lib.HVR_OK:
            return rc, None, b""
        buf = ffi.new("uint8_t[]", p.len8 * 8 or 1)
        assert lib.hvr_in_copy(self.inn, p, 0, buf, p.len8 * 8) == lib.HVR_OK
        return rc, pkt_tuple(p), bytes(ffi.buffer(buf, p.len8 * 8))


class ORing:
    """Both ends of one oracle ring on a bytearray."""

    def __init__(self, n: int):
        self.size = n * PAGE_SIZE
        self.buf = bytearray(PAGE_SIZE + self.size)
        self.out = pyring.PyOutRing(self.buf)
        self.inn = pyring.PyInRing(self.buf)

    def image(self) -> bytes:
        return bytes(self.buf)

    def write(self, type_, flags, trans_id, hdr_len, body: bytes, split: int) -> int:
        return self.out.write(type_, flags, trans_id, hdr_len, body)

    def read(self, consume: bool):
        rc, p = (self.inn.read if consume else self.inn.peek)()
        if rc != pyring.HVR_OK:
            return rc, None, b""
        rc2, raw = self.inn.copy(p, 0, p.len8 * 8)
        assert rc2 == pyring.HVR_OK
        return rc, pkt_tuple(p), raw


def gpa_header(ranges) -> bytes:
    parts = [struct.pack("<II", 0, len(ranges))]
    for count, off, pfns in ranges:
        parts.append(struct.pack("<II", count, off) + struct.pack(f"<{len(pfns)}Q", *pfns))
    return b"".join(parts)


def xfer_header(pageset, ranges) -> bytes:
    return struct.pack("<HBBI", pageset, 1, 0, len(ranges)) + b"".join(
        struct.pack("<II", c, o) for c, o in ranges)


# -- layout -------------------------------------------------------------------------------------

def test_layout_matches_linux_and_oracle():
    assert ffi.sizeof("struct hv_ring_buffer") == PAGE_SIZE
    assert ffi.offsetof("struct hv_ring_buffer", "write_index") == pyring.WRITE_INDEX_OFFSET == 0
    assert ffi.offsetof("struct hv_ring_buffer", "read_index") == pyring.READ_INDEX_OFFSET == 4
    assert ffi.offsetof("struct hv_ring_buffer", "interrupt_mask") == \
        pyring.INTERRUPT_MASK_OFFSET == 8
    assert ffi.offsetof("struct hv_ring_buffer", "pending_send_sz") == \
        pyring.PENDING_SEND_SZ_OFFSET == 12
    assert lib.HVR_FEATURE_BITS_OFFSET == pyring.FEATURE_BITS_OFFSET == 64
    assert ffi.sizeof("struct vmpacket_descriptor") == 16
    assert [ffi.offsetof("struct vmpacket_descriptor", f)
            for f in ("type", "offset8", "len8", "flags", "trans_id")] == [0, 2, 4, 6, 8]
    assert ffi.sizeof("struct vmtransfer_page_packet_header") == 24
    assert ffi.offsetof("struct vmtransfer_page_packet_header", "range_cnt") == 20
    assert ffi.sizeof("struct gpa_range") == 8
    assert ffi.sizeof("struct vmbus_packet_mpb_array") == 32
    assert ffi.offsetof("struct vmbus_packet_mpb_array", "rangecount") == 20
    assert ffi.offsetof("struct vmbus_packet_mpb_array", "range") == 24
    assert (lib.VM_PKT_DATA_INBAND, lib.VM_PKT_DATA_USING_XFER_PAGES,
            lib.VM_PKT_DATA_USING_GPA_DIRECT, lib.VM_PKT_COMP) == (6, 7, 9, 11)
    assert lib.VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED == 1
    for name in ("HVR_OK", "HVR_EMPTY", "HVR_FULL", "HVR_EINVAL", "HVR_EBROKEN", "HVR_ERANGE",
                 "HVR_BROKEN_WRITE_INDEX", "HVR_BROKEN_READ_INDEX", "HVR_BROKEN_AVAIL",
                 "HVR_BROKEN_DESC_LENGTHS", "HVR_BROKEN_DESC_FLAGS", "HVR_BROKEN_DESC_TYPE",
                 "HVR_BROKEN_GPA_RANGES", "HVR_BROKEN_XFER_RANGES"):
        assert getattr(lib, name) == getattr(pyring, name), name
    for hdr_len, n in [(0, 0), (0, 1), (0, 8), (8, 13), (40, 4096)]:
        assert lib.hvr_packet_total(hdr_len, n) == pyring.packet_total(hdr_len, n)


# -- C ring vs oracle ---------------------------------------------------------------------------

_POKE_VALUES = st.sampled_from([0, 1, 4, 8, 16, 24, 0x18, 0x1000 - 8, 0x1000, 0x2000 - 8, 0x2000,
                                0x2008, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x00020002, 0x00030002,
                                0x00090006, 0x00010006, 0x00020009, 0x00020007, 0x00000003,
                                0x00010004, 0x0002FFFF, 0x00000200])

_write_op = st.tuples(
    # write: (type, flags, trans_id, kind of header, body length, iov split point)
    st.just("write"), st.sampled_from([6, 6, 6, 11, 7, 9, 5]), st.sampled_from([0, 0, 1, 2]),
    st.integers(0, 2**64 - 1), st.integers(0, 3), st.integers(0, 1800), st.integers(0, 64))
_simple_op = st.tuples(st.sampled_from([
    "commit_w", "revert_w", "read", "read", "peek", "commit_r", "revert_r", "drain", "unmask",
    "free", "avail", "clear_pending"]))
_op = st.one_of(
    _write_op,
    _simple_op,
    # write n packets of about `size` bytes, commit once
    st.tuples(st.just("burst"), st.integers(1, 12), st.integers(0, 600)),
    # burst, then read them back one commit per packet (the writer may be waiting for space)
    st.tuples(st.just("cycle"), st.integers(1, 12), st.integers(0, 900)),
    # write until full, commit, ask for space (pending_send_sz), maybe drain one by one
    st.tuples(st.just("fill"), st.integers(0, 1500), st.booleans()),
    st.tuples(st.just("mask"), st.booleans()),
    st.tuples(st.just("request"), st.integers(1, 9000)),
    # a hostile peer stores a u32 somewhere in the header or the data area
    st.tuples(st.just("poke"), st.sampled_from([0, 4, 8, 12, 64, 4096, "desc", "desc+4",
                                                "desc+16", "desc+20"]),
              st.integers(0, 2047), _POKE_VALUES),
)


def _header_for(kind: int, type_: int, trans_id: int) -> bytes:
    """A type-specific header: valid ones mostly, and some that break the reader."""
    if type_ == 9:
        return [gpa_header([(100, 10, [7])]),
                gpa_header([(5000, 100, [1, 2]), (1, 4095, [9])]),
                gpa_header([(0, 0, [1])]),           # an empty range
                struct.pack("<II", 0, 0)][kind]      # no range at all
    if type_ == 7:
        if kind == 3:
            return struct.pack("<HBBI", 1, 0, 0, 5)  # range_cnt beyond the header
        return xfer_header(kind, [(100, 0)] * kind)
    return bytes(8 * kind)


def _body(n: int, seed: int) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(n))


def _apply(ring, op, step: int):
    kind = op[0]
    if kind == "write":
        _, type_, flags, trans_id, hkind, blen, split = op
        hdr = _header_for(hkind, type_, trans_id)
        return ring.write(type_, flags, trans_id, len(hdr), hdr + _body(blen, step), split)
    if kind == "burst":
        rcs = []
        for i in range(op[1]):
            rcs.append(ring.write(6, 0, i, 0, _body(op[2] + i, step + i), i))
        rcs.append(_commit_w(ring))
        return rcs
    if kind == "cycle":
        rcs = _apply(ring, ("burst", op[1], op[2]), step)
        while True:
            r = ring.read(True)
            rcs.append(r)
            rcs.append(_call(ring, "commit_r"))
            if r[0] != 0:
                return rcs
    if kind == "fill":
        _, size, drain = op
        rcs = []
        for i in range(64):
            rcs.append(ring.write(6, 0, i, 0, _body(size, step + i), 3))
            if rcs[-1] != 0:
                break
        rcs.append(_commit_w(ring))
        rcs.append(_call(ring, "request", pyring.packet_total(0, size)))
        if drain:
            while True:
                r = ring.read(True)
                rcs.append(r)
                rcs.append(_call(ring, "commit_r"))
                if r[0] != 0:
                    break
        return rcs
    if kind == "commit_w":
        return _commit_w(ring)
    if kind == "revert_w":
        return _call(ring, "revert_w")
    if kind == "read":
        return ring.read(True)
    if kind == "peek":
        return ring.read(False)
    if kind == "drain":
        got = []
        while True:
            r = ring.read(True)
            got.append(r)
            if r[0] != 0:
                break
        got.append(_call(ring, "commit_r"))
        return got
    return _call(ring, kind, *op[1:])


def _commit_w(ring):
    return _call(ring, "commit_w")


def _call(ring, name, *args):
    c = isinstance(ring, CRing)
    r = _call1(ring, c, name, *args)
    if c and r == 1 and name in ("commit_w", "commit_r"):
        event("writer signalled" if name == "commit_w" else "reader signalled (pending_send_sz)")
    if c and r == lib.HVR_EBROKEN:
        event(f"{name} found the ring broken")
    return r


def _call1(ring, c, name, *args):
    if name == "commit_w":
        return lib.hvr_out_commit(ring.out) if c else ring.out.commit()
    if name == "revert_w":
        return lib.hvr_out_revert(ring.out) if c else ring.out.revert()
    if name == "commit_r":
        return lib.hvr_in_commit(ring.inn) if c else ring.inn.commit()
    if name == "revert_r":
        return lib.hvr_in_revert(ring.inn) if c else ring.inn.revert()
    if name == "unmask":
        return lib.hvr_in_unmask(ring.inn) if c else ring.inn.unmask()
    if name == "free":
        return lib.hvr_out_free(ring.out) if c else ring.out.free()
    if name == "avail":
        return lib.hvr_in_avail(ring.inn) if c else ring.inn.avail()
    if name == "clear_pending":
        return lib.hvr_out_clear_pending(ring.out) if c else ring.out.clear_pending()
    if name == "mask":
        return lib.hvr_in_set_interrupt_mask(ring.inn, args[0]) if c else \
            ring.inn.set_interrupt_mask(args[0])
    if name == "request":
        return lib.hvr_out_request_space(ring.out, args[0]) if c else \
            ring.out.request_space(args[0])
    if name == "poke":
        where, word, value = args
        if isinstance(where, str):  # the descriptor the reader looks at next
            rel = int(where[5:] or 0)
            off = PAGE_SIZE + (ring.inn.next_out + rel) % ring.size
        else:
            off = where if where != 4096 else 4096 + (word * 8) % ring.size
        data = struct.pack("<I", value)
        if c:
            ring.map.write(off, data)
        else:
            ring.buf[off:off + 4] = data
        return None
    raise AssertionError(name)


def _state(ring):
    if isinstance(ring, CRing):
        o, i = ring.out, ring.inn
        return (o.committed_in, o.next_in, o.cached_out, bool(o.pending_set), o.r.broken,
                i.committed_out, i.next_out, i.cached_in, i.r.broken)
    o, i = ring.out, ring.inn
    return (o.committed_in, o.next_in, o.cached_out, bool(o.pending_set), o.broken,
            i.committed_out, i.next_out, i.cached_in, i.broken)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.data_too_large])
@given(n_pages=st.sampled_from([1, 2]), double=st.booleans(),
       ops=st.lists(_op, min_size=3, max_size=40))
def test_c_ring_matches_oracle(n_pages, double, ops):
    fd = memfd_pages(n_pages + 1)
    try:
        with RingMapping.from_memfd(fd, n_pages, double=double) as m:
            c = CRing(m)
            o = ORing(n_pages)
            assert (c.out_rc, c.in_rc) == (o.out.attach_rc, o.inn.attach_rc) == (0, 0)
            assert c.image() == o.image()
            wraps = 0
            for step, op in enumerate(ops):
                before = c.out.next_in
                rc = _apply(c, op, step)
                ro = _apply(o, op, step)
                assert rc == ro, (step, op)
                wraps += c.out.next_in < before
                assert _state(c) == _state(o), (step, op)
                assert c.image() == o.image(), (step, op)
                if double:  # the second copy of the data pages is the first one
                    assert m.read(PAGE_SIZE + c.size, c.size) == m.read(PAGE_SIZE, c.size)
            event(f"writer wrapped {min(wraps, 3)}{'+' if wraps >= 3 else ''} times")
            if c.inn.r.broken or c.out.r.broken:
                event(f"broken: in={c.inn.r.broken} out={c.out.r.broken}")
    finally:
        os.close(fd)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=80), n_pages=st.integers(1, 3))
def test_stream_roundtrip_through_wraparound(sizes, n_pages):
    """Every payload comes out as it went in, across many wraps, read through the double mapping
    and (looking along) through a plain view of the same pages."""
    fd = memfd_pages(n_pages + 1)
    try:
        with RingMapping.from_memfd(fd, n_pages) as m, \
                RingMapping.from_memfd(fd, n_pages, double=False) as plain:
            out, inn = OutRing(m), InRing(m)
            sent = 0
            while sent < len(sizes):
                while sent < len(sizes):  # write as many as fit, commit once
                    n = sizes[sent]
                    if not out.write(_body(n, sent), trans_id=sent):
                        assert packet_total(n) > out.free
                        break
                    sent += 1
                out.commit()
                inn_plain = InRing(plain)  # attaches at the current read_index
                while True:
                    p, pp = inn.read(), inn_plain.read()
                    if p is None:
                        assert pp is None
                        break
                    n = sizes[p.trans_id]
                    assert p.payload[:n] == _body(n, p.trans_id)
                    assert p.payload[n:] == bytes(len(p.payload) - n)
                    assert pp == p
                inn.commit()
            assert inn.available == 0 and out.free == m.data_size - 8
    finally:
        os.close(fd)


# -- malformed rings ----------------------------------------------------------------------------

def _desc(type_=6, offset8=2, len8=3, flags=0, trans_id=0) -> bytes:
    return struct.pack("<HHHHQ", type_, offset8, len8, flags, trans_id)


def _put_packet(m: RingMapping, raw: bytes, at: int = 0, write_index: int | None = None):
    """Store raw packet bytes at data offset ``at`` and publish write_index."""
    m.write(PAGE_SIZE + at, raw)
    if write_index is None:
        write_index = (at + len(raw)) % m.data_size
    m.write(0, struct.pack("<I", write_index))


_MALFORMED = {
    # name: (function(mapping) -> None that corrupts the ring, expected broken reason)
    "write_index beyond the ring": (lambda m: m.write(0, struct.pack("<I", m.data_size + 8)),
                                    lib.HVR_BROKEN_WRITE_INDEX),
    "write_index at the ring size": (lambda m: m.write(0, struct.pack("<I", m.data_size)),
                                     lib.HVR_BROKEN_WRITE_INDEX),
    "write_index unaligned": (lambda m: m.write(0, struct.pack("<I", 36)),
                              lib.HVR_BROKEN_WRITE_INDEX),
    "fewer bytes than a descriptor": (lambda m: _put_packet(m, _desc(), write_index=16),
                                      lib.HVR_BROKEN_AVAIL),
    "offset8 < 2": (lambda m: _put_packet(m, _desc(offset8=1, len8=3) + bytes(16)),
                    lib.HVR_BROKEN_DESC_LENGTHS),
    "offset8 = 0": (lambda m: _put_packet(m, _desc(offset8=0, len8=0) + bytes(16)),
                    lib.HVR_BROKEN_DESC_LENGTHS),
    "len8 < offset8": (lambda m: _put_packet(m, _desc(offset8=3, len8=2) + bytes(16)),
                       lib.HVR_BROKEN_DESC_LENGTHS),
    "len8 past the end of the data": (lambda m: _put_packet(m, _desc(len8=4) + bytes(16)),
                                      lib.HVR_BROKEN_DESC_LENGTHS),
    "len8 past the end of the ring": (lambda m: _put_packet(m, _desc(len8=0xFFFF) + bytes(16)),
                                      lib.HVR_BROKEN_DESC_LENGTHS),
    "unknown type 0": (lambda m: _put_packet(m, _desc(type_=0) + bytes(16)),
                       lib.HVR_BROKEN_DESC_TYPE),
    "unknown type 8 (GPADL)": (lambda m: _put_packet(m, _desc(type_=8) + bytes(16)),
                               lib.HVR_BROKEN_DESC_TYPE),
    "unknown type 0xffff": (lambda m: _put_packet(m, _desc(type_=0xFFFF) + bytes(16)),
                            lib.HVR_BROKEN_DESC_TYPE),
    "unknown flag 2": (lambda m: _put_packet(m, _desc(flags=2) + bytes(16)),
                       lib.HVR_BROKEN_DESC_FLAGS),
    "unknown flag 0x8000": (lambda m: _put_packet(m, _desc(flags=0x8001) + bytes(16)),
                            lib.HVR_BROKEN_DESC_FLAGS),
    "GPA direct without its header": (
        lambda m: _put_packet(m, _desc(type_=9, offset8=2, len8=3) + struct.pack("<II", 0, 1)
                              + bytes(8)), lib.HVR_BROKEN_DESC_LENGTHS),
    "GPA direct with no range": (
        lambda m: _put_packet(m, _desc(type_=9, offset8=3, len8=3) + struct.pack("<II", 0, 0)
                              + bytes(8)), lib.HVR_BROKEN_GPA_RANGES),
    "GPA direct with an empty range": (
        lambda m: _put_packet(m, _desc(type_=9, offset8=5, len8=5)
                              + gpa_header([(0, 0, [1])]) + bytes(8)), lib.HVR_BROKEN_GPA_RANGES),
    "GPA direct with byte_offset past the page": (
        lambda m: _put_packet(m, _desc(type_=9, offset8=5, len8=5)
                              + gpa_header([(1, 4096, [1])]) + bytes(8)),
        lib.HVR_BROKEN_GPA_RANGES),
    "GPA direct with PFNs past its header": (
        lambda m: _put_packet(m, _desc(type_=9, offset8=5, len8=6)
                              + gpa_header([(4097, 0, [1])]) + bytes(16)),
        lib.HVR_BROKEN_GPA_RANGES),
    "GPA direct with more ranges than fit": (
        lambda m: _put_packet(m, _desc(type_=9, offset8=5, len8=5)
                              + struct.pack("<II", 0, 2) + struct.pack("<IIQ", 8, 0, 1)
                              + bytes(8)), lib.HVR_BROKEN_GPA_RANGES),
    "GPA direct with a huge range count": (
        lambda m: _put_packet(m, _desc(type_=9, offset8=5, len8=5)
                              + struct.pack("<II", 0, 0xFFFFFFFF) + struct.pack("<IIQ", 8, 0, 1)
                              + bytes(8)), lib.HVR_BROKEN_GPA_RANGES),
    "transfer pages without their header": (
        lambda m: _put_packet(m, _desc(type_=7, offset8=2, len8=3) + xfer_header(1, [])
                              + bytes(8)), lib.HVR_BROKEN_DESC_LENGTHS),
    "transfer pages with more ranges than fit": (
        lambda m: _put_packet(m, _desc(type_=7, offset8=4, len8=4)
                              + struct.pack("<HBBI", 1, 0, 0, 2) + struct.pack("<II", 1, 0)
                              + bytes(8)), lib.HVR_BROKEN_XFER_RANGES),
}


@pytest.mark.parametrize("double", [True, False], ids=["double", "plain"])
@pytest.mark.parametrize("case", sorted(_MALFORMED))
def test_malformed_ring_breaks_reader(case, double, ring_factory):
    corrupt, reason = _MALFORMED[case]
    m = ring_factory(2, double=double)
    inn = InRing(m)
    corrupt(m)
    before = m.read(0, PAGE_SIZE + m.data_size)
    with pytest.raises(RingBrokenError) as e:
        inn.read()
    assert e.value.reason == reason and inn.broken_reason == reason
    # sticky: every call refuses, nothing is written
    for call in (inn.read, inn.peek, inn.commit, inn.unmask, lambda: inn.available):
        with pytest.raises(RingBrokenError):
            call()
    inn.interrupt_mask = True  # ignored on a broken view
    assert m.read(0, PAGE_SIZE + m.data_size) == before
    # the oracle agrees on the reason
    buf = bytearray(m.read(0, PAGE_SIZE + m.data_size))
    o = pyring.PyInRing(buf)
    if o.attach_rc == 0:
        assert o.read()[0] == pyring.HVR_EBROKEN
    assert o.broken == reason


def test_read_index_corrupt_at_attach(ring_factory):
    m = ring_factory(1)
    m.write(4, struct.pack("<I", 12))
    with pytest.raises(RingBrokenError) as e:
        InRing(m)
    assert e.value.reason == lib.HVR_BROKEN_READ_INDEX
    with pytest.raises(RingBrokenError):
        OutRing(m)
    m.write(4, struct.pack("<I", m.data_size))
    with pytest.raises(RingBrokenError):
        OutRing(m)


def test_reader_moving_read_index_wrongly_breaks_writer(ring_factory):
    m = ring_factory(2)
    out = OutRing(m)
    assert out.write(b"x" * 100) and out.commit() is True
    # the reader claims to have consumed bytes that were never written
    m.write(4, struct.pack("<I", 512))
    with pytest.raises(RingBrokenError) as e:
        _ = out.free
    assert e.value.reason == lib.HVR_BROKEN_READ_INDEX
    with pytest.raises(RingBrokenError):
        out.write(b"y")
    # unaligned read_index, seen while filling the ring
    m2 = ring_factory(1)
    out2 = OutRing(m2)
    while out2.write(b"z" * 500):
        pass
    out2.commit()
    m2.write(4, struct.pack("<I", 44))
    with pytest.raises(RingBrokenError):
        out2.write(b"z" * 500)


def test_write_index_moving_backwards_breaks_reader(ring_factory):
    m = ring_factory(2)
    out, inn = OutRing(m), InRing(m)
    for i in range(3):
        out.write(b"abc", trans_id=i)
    out.commit()
    assert inn.read().trans_id == 0
    m.write(0, struct.pack("<I", 0))  # write_index back before a packet we have not read
    assert inn.read().trans_id == 1   # still cached: the packets up to the old index are whole
    assert inn.read().trans_id == 2
    with pytest.raises(RingBrokenError) as e:
        inn.read()                    # reloading finds the index moved backwards
    assert e.value.reason == lib.HVR_BROKEN_WRITE_INDEX


def test_descriptor_changed_after_read_is_not_refetched(ring_factory):
    """The descriptor is copied once; changing it afterwards changes nothing the reader does."""
    m = ring_factory(2)
    out, inn = OutRing(m), InRing(m)
    out.write(b"first" * 10, trans_id=1)
    out.write(b"second", trans_id=2)
    out.commit()
    p = ffi.new("struct hvr_pkt *")
    assert lib.hvr_in_read(inn._st, p) == lib.HVR_OK
    want = pkt_tuple(p)
    # hostile writer rewrites the descriptor it already handed over: huge len8, bad offset8
    m.write(PAGE_SIZE, _desc(type_=0xFFFF, offset8=0, len8=0xFFFF, flags=0xFFFF, trans_id=9))
    assert pkt_tuple(p) == want
    # copies stay inside the validated packet
    buf = ffi.new("uint8_t[]", 0x10000)
    assert lib.hvr_in_copy(inn._st, p, 0, buf, 0xFFFF * 8) == lib.HVR_ERANGE
    assert lib.hvr_in_copy(inn._st, p, p.payload_off, buf, p.payload_len) == lib.HVR_OK
    assert bytes(ffi.buffer(buf, 50)) == b"first" * 10
    # the next packet is found where the validated length says
    q = inn.read()
    assert q.trans_id == 2 and q.payload[:6] == b"second"
    assert inn.commit() is False and inn.broken is None


def test_gpa_ranges_changed_after_read_are_revalidated(ring_factory):
    m = ring_factory(2)
    out, inn = OutRing(m), InRing(m)
    assert out.write_gpa_direct([(5000, 100, [1, 2]), (10, 0, [3])], b"req", trans_id=7)
    out.commit()
    p = ffi.new("struct hvr_pkt *")
    assert lib.hvr_in_read(inn._st, p) == lib.HVR_OK and p.range_count == 2
    it = ffi.new("struct hvr_gpa_iter *")
    rng = ffi.new("struct hvr_gpa_range *")
    assert lib.hvr_in_gpa_range(inn._st, p, it, rng) == lib.HVR_OK
    assert (rng.byte_count, rng.byte_offset, rng.pfn_count, rng.pfn_off) == (5000, 100, 2, 32)
    pfns = ffi.new("uint64_t[2]")
    assert lib.hvr_in_copy(inn._st, p, rng.pfn_off, pfns, 16) == lib.HVR_OK
    assert list(pfns) == [1, 2]
    # the peer now claims the second range spans a million pages
    m.write(PAGE_SIZE + 48, struct.pack("<II", 0xFFFFFFFF, 0xFFF))
    assert lib.hvr_in_gpa_range(inn._st, p, it, rng) == lib.HVR_ERANGE
    # put it back: iteration continues, then ends
    m.write(PAGE_SIZE + 48, struct.pack("<II", 10, 0))
    assert lib.hvr_in_gpa_range(inn._st, p, it, rng) == lib.HVR_OK and rng.pfn_count == 1
    assert lib.hvr_in_gpa_range(inn._st, p, it, rng) == lib.HVR_EMPTY


def test_wrapper_packets_parse_gpa_and_xfer(ring_factory):
    m = ring_factory(2)
    out, inn = OutRing(m), InRing(m)
    assert out.write_gpa_direct([(5000, 100, [1, 2])], b"scsi", trans_id=3)
    assert out.write_xfer_pages(0xCAFE, [(1500, 0), (60, 4096)], b"rndis", trans_id=4)
    assert out.write_completion(b"done", trans_id=3)
    assert out.write(b"ping", completion_requested=True, trans_id=5)
    out.commit()
    g, x, c, i = inn.read(), inn.read(), inn.read(), inn.read()
    assert g.type == 9 and g.completion_requested and g.gpa_ranges[0].pfns == (1, 2)
    assert g.payload[:4] == b"scsi" and g.offset8 == 6  # 16 + 8 + 8 + 2 * 8 bytes
    assert x.type == 7 and x.xfer_pageset_id == 0xCAFE and x.xfer_ranges == ((1500, 0), (60, 4096))
    assert c.type == 11 and not c.completion_requested and c.trans_id == 3
    assert i.type == 6 and i.completion_requested and i.payload == b"ping\0\0\0\0"
    assert inn.read() is None


def test_bad_writes_are_refused_without_touching_the_ring(ring_factory):
    m = ring_factory(1)
    out = OutRing(m)
    before = m.read(0, PAGE_SIZE + m.data_size)
    with pytest.raises(ValueError):
        out.write_packet(5, b"x")            # unknown type
    with pytest.raises(ValueError):
        out.write_packet(6, b"x", flags=2)   # unknown flag
    with pytest.raises(ValueError):
        out.write_packet(6, b"x", header=b"abc")  # header not a multiple of 8
    with pytest.raises(ValueError):
        out.write_packet(9, b"x")            # GPA direct without its header
    with pytest.raises(ValueError):
        out.write(bytes(m.data_size - 24 - 8 + 1))  # never fits: > size - 8 with trailer
    assert m.read(0, PAGE_SIZE + m.data_size) == before
    assert out.write(bytes(m.data_size - 24 - 8))    # the largest packet that can ever fit
    assert out.free == 0 and not out.write(b"")
    with pytest.raises(ValueError):
        out.request_space(m.data_size)


# -- signalling ---------------------------------------------------------------------------------

def test_writer_signals_only_on_empty_to_nonempty(ring_factory):
    m = ring_factory(2)
    out, inn = OutRing(m), InRing(m)
    assert out.commit() is False                  # nothing written
    out.write(b"a")
    assert out.commit() is True                   # empty -> non-empty
    out.write(b"b")
    assert out.commit() is False                  # was not empty
    assert inn.read() and inn.read() and inn.read() is None
    inn.commit()
    for _ in range(5):
        out.write(b"c")
    assert out.commit() is True                   # one signal for a batch
    inn.read()
    inn.commit()                                  # reader is behind: still not empty
    out.write(b"d")
    assert out.commit() is False


def test_no_signal_while_masked_and_unmask_rechecks(ring_factory):
    m = ring_factory(2)
    out, inn = OutRing(m), InRing(m)
    inn.interrupt_mask = True
    assert m.read(8, 4) == b"\1\0\0\0"
    signals = 0
    for i in range(200):
        if not out.write(bytes(20), trans_id=i):
            while inn.read():
                pass
            inn.commit()
            assert out.write(bytes(20), trans_id=i)
        signals += out.commit()
    assert signals == 0
    assert inn.unmask() is True                   # packets arrived unannounced: read them now
    while inn.read():
        pass
    inn.commit()
    assert inn.unmask() is False                  # empty: safe to sleep
    out.write(b"x")
    assert out.commit() is True


def test_burst_to_a_draining_reader_raises_few_signals(ring_factory):
    """Linux's host loop: mask, drain, commit, unmask and re-check; the writer commits each
    packet. N packets raise about one signal per idle period of the reader, not N."""
    m = ring_factory(4)
    out, inn = OutRing(m), InRing(m)
    n, signals, received = 2000, 0, 0

    def drain():
        nonlocal received
        inn.interrupt_mask = True
        while True:
            while inn.read() is not None:
                received += 1
            inn.commit()
            if not inn.unmask():
                return

    for i in range(n):
        while not out.write(bytes(64 + i % 200), trans_id=i):
            drain()
        if out.commit():
            signals += 1
        if i % 16 == 15:  # the reader gets the CPU now and then
            drain()
    drain()
    assert received == n
    assert 0 < signals <= n // 10, signals


def test_pending_send_sz_signals_once_with_hysteresis(ring_factory):
    m = ring_factory(4)  # 16 KiB
    out, inn = OutRing(m), InRing(m)
    size = m.data_size
    assert m.read(64, 4) == b"\1\0\0\0"           # writer announced feat_pending_send_sz
    payload = bytes(1000)
    total = packet_total(len(payload))
    while out.write(payload):
        pass
    out.commit()
    assert inn.commit() is False
    assert out.request_space(total) is False       # still full: wait for a signal
    pss = max(total, size // 4)
    assert out.pending_send_sz == pss
    signals = []
    while True:
        p = inn.read()
        if p is None:
            break
        signals.append(inn.commit())
        free_now = size - ((out.write_index - out.read_index) % size)
        # the signal comes exactly when free space first exceeds pending_send_sz
        assert signals[-1] == (free_now > pss and free_now - total <= pss)
    assert signals.count(True) == 1
    # a successful write withdraws the request
    assert out.write(payload) and out.pending_send_sz == 0
    out.commit()


def test_request_space_rechecks_and_clears(ring_factory):
    m = ring_factory(1)
    out, inn = OutRing(m), InRing(m)
    while out.write(bytes(500)):
        pass
    out.commit()
    inn.read()
    inn.commit()                      # space freed before the writer asks
    assert out.request_space(packet_total(500)) is True
    assert out.pending_send_sz == 0
    assert out.write(bytes(500))


def test_pending_send_sz_masked_to_multiple_of_8(ring_factory):
    """A peer asking for size - 1 ("tell me when empty") is treated as size - 8."""
    m = ring_factory(1)
    out, inn = OutRing(m), InRing(m)
    for _ in range(5):
        assert out.write(bytes(200))
    out.commit()
    m.write(12, struct.pack("<I", m.data_size - 1))
    results = []
    while inn.read():
        results.append(inn.commit())
    assert results == [False] * 4 + [True]  # only the commit that empties the ring signals


def test_no_pending_signal_without_the_feature_bit(ring_factory):
    m = ring_factory(1)
    out, inn = OutRing(m), InRing(m)
    while out.write(bytes(300)):
        pass
    out.commit()
    out.request_space(packet_total(300))
    m.write(64, struct.pack("<I", 0))       # writer did not announce the feature
    assert all(not inn.commit() for _ in iter(inn.read, None))


# -- the double mapping -------------------------------------------------------------------------

def _advance_to(out: OutRing, inn: InRing, target: int) -> None:
    """Write and read packets until write_index sits at ring offset `target` (multiple of 8)."""
    size = out.data_size
    while (gap := (target - out.write_index) % size) != 0:
        total = min(gap, 1024) if gap >= 24 else 512  # too close: step away first
        assert out.write(bytes(total - 24))
        out.commit()
        while inn.read():
            pass
        inn.commit()


def test_wrapping_packet_is_contiguous_in_place(ring_factory):
    m = ring_factory(2, double=True)
    plain = ring_factory(2, double=False, fd=m.memfd)
    out, inn = OutRing(m), InRing(m)
    _advance_to(out, inn, m.data_size - 40)
    payload = bytes(range(256)) * 2
    assert out.write(payload, trans_id=77)
    out.commit()
    pkt, view = inn.peek_in_place()
    assert pkt.offset + pkt.total > m.data_size       # it really wraps
    assert view is not None and bytes(view) == payload
    # the raw C pointer for the whole packet is contiguous too
    p = ffi.new("struct hvr_pkt *")
    assert lib.hvr_in_peek(inn._st, p) == lib.HVR_OK
    whole = lib.hvr_in_ptr(inn._st, p, 0, p.len8 * 8)
    assert whole != ffi.NULL
    assert bytes(ffi.buffer(whole, p.len8 * 8))[16:] == payload
    # the plain (guest) view cannot point at it, but reads it with two copies
    inn_plain = InRing(plain)
    inn_plain_pkt, plain_view = inn_plain.peek_in_place()
    assert plain_view is None and inn_plain_pkt.payload == payload
    assert inn.read().payload == payload


def test_double_mapping_aliases_every_data_page(ring_factory):
    m = ring_factory(3, double=True)
    assert m.size == PAGE_SIZE * 7 and m.data_address == m.address + PAGE_SIZE
    for page in range(3):
        os.pwrite(m.memfd, bytes([page + 1]) * 16, (1 + page) * PAGE_SIZE + 100)
        first = m.read(PAGE_SIZE * (1 + page) + 100, 16)
        second = m.read(PAGE_SIZE * (4 + page) + 100, 16)
        assert first == second == bytes([page + 1]) * 16
    m.write(PAGE_SIZE * 4 + 8, b"mirror")           # writes through the mirror land in page 0
    assert os.pread(m.memfd, 6, PAGE_SIZE + 8) == b"mirror"


def test_mapping_from_guest_ram_scattered_pfns():
    with GuestMemory(64 * PAGE_SIZE) as mem:
        pfns = [40, 3, 17, 9]  # header, then three data pages, out of order
        for i, pfn in enumerate(pfns):
            mem.write(pfn * PAGE_SIZE, bytes([0xA0 + i]) * 8)
        with RingMapping.from_guest(mem, pfns) as m:
            assert m.n_data_pages == 3 and m.double_mapped
            for i in range(4):
                assert m.read(i * PAGE_SIZE, 8) == bytes([0xA0 + i]) * 8
            for i in range(1, 4):
                assert m.read((3 + i) * PAGE_SIZE, 8) == bytes([0xA0 + i]) * 8
            # a ring written by the host is what the guest sees in its pages
            mem.write(pfns[0] * PAGE_SIZE, bytes(PAGE_SIZE))
            out = OutRing(m)
            out.write(b"to the guest", trans_id=5)
            out.commit()
            assert mem.read(pfns[1] * PAGE_SIZE + 16, 12) == b"to the guest"
            assert mem.read_u32(pfns[0] * PAGE_SIZE) == 40  # write_index: 16 + 16 + 8
        assert m.closed


@pytest.mark.parametrize("pfns", [[64, 1], [1, 64], [1, 2, 10**9], [1, -1], [0, 2**52]])
def test_mapping_rejects_pfns_outside_guest_ram(pfns):
    with GuestMemory(64 * PAGE_SIZE) as mem:
        with pytest.raises(RingMapError, match="outside guest RAM|not a frame"):
            RingMapping.from_guest(mem, pfns)


def test_mapping_rejects_bad_page_lists():
    fd = memfd_pages(4)
    try:
        with pytest.raises(RingMapError):
            RingMapping(fd, [0])                      # no data page
        with pytest.raises(RingMapError):
            RingMapping(fd, [0, 100])                 # not page aligned
        with pytest.raises(RingMapError):
            RingMapping(fd, [0, 4 * PAGE_SIZE])       # past the memfd
        with pytest.raises(RingMapError):
            RingMapping.from_memfd(fd, 0)
    finally:
        os.close(fd)


def test_mapping_close_is_idempotent_and_rings_refuse_after():
    fd = memfd_pages(3)
    try:
        m = RingMapping.from_memfd(fd, 2)
        out, inn = OutRing(m), InRing(m)
        out.write(b"x")
        m.close()
        m.close()
        assert m.closed
        for call in (lambda: out.write(b"y"), out.commit, inn.read, inn.commit):
            with pytest.raises(ValueError, match="closed"):
                call()
        with pytest.raises(ValueError):
            m.read(0, 1)
        with pytest.raises(ValueError):
            OutRing(m)
    finally:
        os.close(fd)


def test_plain_buffer_ring():
    buf = bytearray(PAGE_SIZE * 2)
    pyring.format_ring(buf)
    out, inn = OutRing(buf), InRing(buf)
    assert not out.double_mapped
    out.write(b"in a bytearray", trans_id=1)
    assert out.commit() is True
    assert inn.read().payload.rstrip(b"\0") == b"in a bytearray"
    with pytest.raises(ValueError):
        OutRing(bytearray(PAGE_SIZE + 100))


def test_guard_pages_fault_outside_the_ring():
    """One byte before the header and one byte after the mirror are PROT_NONE."""
    code = textwrap.dedent("""
        import ctypes, os, sys
        from hvkvm.vmbus.ringmap import RingMapping
        fd = os.memfd_create("g"); os.ftruncate(fd, 3 * 4096)
        m = RingMapping.from_memfd(fd, 2)
        ctypes.string_at(m.address, m.size)          # the whole view is readable
        print("ok", flush=True)
        ctypes.string_at(m.address + m.size if sys.argv[1] == "after" else m.address - 1, 1)
        print("not reached", flush=True)
    """)
    for where in ("before", "after"):
        r = subprocess.run([sys.executable, "-c", code, where], capture_output=True, text=True,
                           timeout=60)
        assert r.stdout == "ok\n" and r.returncode == -11, (where, r.returncode, r.stderr[-300:])


def test_peek_does_not_consume_and_revert_unreads(ring_factory):
    m = ring_factory(1)
    out, inn = OutRing(m), InRing(m)
    for i in range(3):
        out.write(b"p%d" % i, trans_id=i)
    out.commit()
    assert inn.peek().trans_id == 0 and inn.peek().trans_id == 0
    assert inn.read().trans_id == 0 and inn.read().trans_id == 1
    inn.revert()
    assert inn.read().trans_id == 0
    inn.commit()
    inn.revert()
    assert inn.read().trans_id == 1
    out.write(b"dropped")
    out.revert()
    assert out.uncommitted == 0
    assert out.commit() is False


# -- builds ------------------------------------------------------------------------------------

_GUEST_FLAGS = ["-std=gnu11", "-ffreestanding", "-nostdlib", "-fno-pie", "-fno-pic",
                "-mno-red-zone", "-mgeneral-regs-only", "-fno-stack-protector",
                "-Wall", "-Wextra", "-Werror"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
@pytest.mark.parametrize("opt", ["-O0", "-O2", "-Os", "-O3"])
def test_ring_compiles_freestanding_without_libc(opt, tmp_path):
    """The guest build: freestanding, warning-free, and no undefined symbol (not even memcpy)."""
    obj = tmp_path / "vmbus_ring.o"
    r = subprocess.run(["gcc", *_GUEST_FLAGS, opt, "-c", str(CSRC / "vmbus_ring.c"),
                        "-o", str(obj)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr
    nm = shutil.which("nm")
    if nm:
        undef = subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True).stdout
        assert undef.strip() == "", undef


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_header_compiles_alone_in_a_guest_unit(tmp_path):
    src = tmp_path / "use.c"
    src.write_text('#include "vmbus_ring.h"\n'
                   'int probe(struct hvr_in *in) { struct hvr_pkt p; '
                   'return hvr_in_read(in, &p) == HVR_OK ? p.len8 : -1; }\n')
    r = subprocess.run(["gcc", *_GUEST_FLAGS, "-O2", f"-I{CSRC}", "-c", str(src), "-o",
                        str(tmp_path / "use.o")], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr


def test_sanitize_switch(monkeypatch):
    import hvkvm.vmbus._ring_build as rb
    monkeypatch.delenv("HVKVM_SANITIZE", raising=False)
    assert not any("sanitize" in a for a in rb._compile_args())
    monkeypatch.setenv("HVKVM_SANITIZE", "1")
    assert "-fsanitize=address,undefined" in rb._compile_args()
    assert "-fsanitize=address,undefined" in rb._link_args()
