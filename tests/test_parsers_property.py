"""Property tests (hypothesis) of the Python parsers a guest feeds: channel messages
(``ChannelServer.handle_message``), GPADL ranges (``parse_ranges`` / ``GpadlBuilder``), hypercall
inputs and synthetic MSRs (``HyperV.hypercall`` / ``rdmsr`` / ``wrmsr`` over guest memory with
arbitrary contents) and the ucall decoder.

For every input: no exception escapes except the documented error type (GpadlError,
UcallError; the channel server and the hypercall path raise nothing at all), and the state stays
consistent (bounded error lists, GPADL counts within the limits, every kept PFN inside guest RAM,
GPADL users matching the open channels, every message to the guest fits a SynIC slot).
No KVM needed: guest memory is the real memfd-backed :class:`hvkvm.memory.GuestMemory`.
"""

from __future__ import annotations

import ctypes
import os
import struct
import uuid

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hvkvm.hv import synic as hs
from hvkvm.hv.atomics import Atomics
from hvkvm.memory import GuestMemory
from hvkvm.partition import ucall
from hvkvm.vmbus import wire as w
from hvkvm.vmbus.channels import (MAX_ERRORS_KEPT, ChannelServer, Offer)
from hvkvm.vmbus.gpadl import (MAX_GPADL_PAGES, MAX_GPADLS, PAGE_SIZE, GpadlBuilder, GpadlError,
                               parse_ranges)

RAM = 2 << 20
RAM_PAGES = RAM // PAGE_SIZE
SETTINGS = settings(max_examples=int(os.environ.get("HVKVM_PROPERTY_EXAMPLES", "300")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.data_too_large])


def ram_contains(gpa: int, length: int) -> bool:
    return 0 <= gpa and length >= 0 and gpa + length <= RAM


u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, (1 << 64) - 1)
#: PFNs: mostly inside RAM, some at its edge, some anywhere
pfns = st.one_of(st.integers(0, RAM_PAGES - 1), st.integers(RAM_PAGES - 2, RAM_PAGES + 2), u64)


# ---- GPADL ranges ------------------------------------------------------------------------------

@st.composite
def gpa_range_bufs(draw):
    """A range list that is mostly well formed, with any field possibly wrong."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        count = draw(st.one_of(st.integers(1, 8 * PAGE_SIZE), u32))
        offset = draw(st.one_of(st.integers(0, PAGE_SIZE - 1), u32))
        n = (offset + count + PAGE_SIZE - 1) // PAGE_SIZE
        if n > 12 or draw(st.booleans()):
            n = draw(st.integers(0, 12))
        parts.append(struct.pack("<II", count, offset) +
                     b"".join(struct.pack("<Q", draw(pfns)) for _ in range(n)))
    buf = b"".join(parts)
    if draw(st.booleans()):
        buf = buf[:draw(st.integers(0, len(buf)))] + draw(st.binary(max_size=24))
    return buf, draw(st.one_of(st.just(len(parts)), u16))


@SETTINGS
@given(gpa_range_bufs())
def test_parse_ranges_raises_only_gpadl_error_and_keeps_only_ram(arg):
    buf, rangecount = arg
    try:
        ranges = parse_ranges(buf, rangecount, ram_contains)
    except GpadlError:
        return
    assert len(ranges) == rangecount > 0
    used = 0
    for r in ranges:
        assert r.byte_count > 0 and 0 <= r.byte_offset < PAGE_SIZE
        assert len(r.pfns) == (r.byte_offset + r.byte_count + PAGE_SIZE - 1) // PAGE_SIZE
        assert all(ram_contains(p * PAGE_SIZE, PAGE_SIZE) for p in r.pfns)
        used += 8 + 8 * len(r.pfns)
    assert used == len(buf)
    assert sum(len(r.pfns) for r in ranges) <= MAX_GPADL_PAGES


@SETTINGS
@given(st.binary(max_size=600), u16, u16, st.lists(st.binary(max_size=300), max_size=6))
def test_gpadl_builder_takes_any_chunks(first, rangecount, range_buflen, chunks):
    b = GpadlBuilder(1, 1, rangecount, range_buflen)
    b.add(first)
    for c in chunks:
        if b.complete:
            break
        b.add(c)
        assert len(b.data) <= range_buflen
    if b.complete:
        try:
            g = b.finish(ram_contains)
        except GpadlError:
            return
        assert g.page_count == len(g.pfns) and g.users == 0


# ---- channel messages --------------------------------------------------------------------------

HANDLED = sorted(ChannelServer._HANDLERS)


@st.composite
def channel_messages(draw):
    """A channel message: a known type with mostly plausible fields, or anything at all."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.integers(0, 8)), draw(st.binary(max_size=260))
    msgtype = draw(st.sampled_from(HANDLED + [0, 1, 4, 6, 10, 12, 15, 17, 18, 22, 23, 99]))
    struct_type = ChannelServer._HANDLERS.get(msgtype, (w.vmbus_channel_message_header, None))[0]
    size = ctypes.sizeof(struct_type)
    raw = bytearray(draw(st.binary(min_size=size, max_size=size)))
    struct.pack_into("<I", raw, 0, msgtype)
    small = st.integers(0, 5)
    handle = st.one_of(st.integers(0, 6), u32)
    if msgtype == w.CHANNELMSG_INITIATE_CONTACT:
        struct.pack_into("<I", raw, 8, draw(st.sampled_from(
            [w.VERSION_WIN10_V5_3, w.VERSION_WIN10_V5, w.VERSION_WIN10_V4_1, w.VERSION_WIN8, 0])))
        raw[12] = draw(st.integers(0, 2))          # target_vcpu (low byte)
        raw[13:16] = b"\0\0\0"
    elif msgtype in (w.CHANNELMSG_GPADL_HEADER, w.CHANNELMSG_GPADL_TEARDOWN,
                     w.CHANNELMSG_OPENCHANNEL, w.CHANNELMSG_CLOSECHANNEL,
                     w.CHANNELMSG_RELID_RELEASED):
        struct.pack_into("<I", raw, 8, draw(st.one_of(small, u32)))       # child_relid
        if msgtype in (w.CHANNELMSG_GPADL_HEADER, w.CHANNELMSG_GPADL_TEARDOWN):
            struct.pack_into("<I", raw, 12, draw(handle))
    elif msgtype == w.CHANNELMSG_GPADL_BODY:
        struct.pack_into("<I", raw, 12, draw(handle))
    if msgtype == w.CHANNELMSG_GPADL_HEADER:
        body, rangecount = draw(gpa_range_bufs())
        struct.pack_into("<HH", raw, 16, draw(st.one_of(st.just(len(body)), u16)),
                         draw(st.one_of(st.just(rangecount), u16)))
        raw += body[:220]
    elif msgtype == w.CHANNELMSG_GPADL_BODY:
        raw += b"".join(struct.pack("<Q", draw(pfns)) for _ in range(draw(st.integers(0, 28))))
    elif msgtype == w.CHANNELMSG_OPENCHANNEL:
        struct.pack_into("<III", raw, 16, draw(handle), draw(st.integers(0, 3)),
                         draw(st.one_of(st.integers(0, 40), u32)))
    if draw(st.integers(0, 7)) == 0:
        raw = raw[:draw(st.integers(0, len(raw)))]
    conn = draw(st.sampled_from([1, 4, 4, 4, 2, 0x2001]))
    return conn, bytes(raw)


class _Harness:
    def __init__(self, open_status: int = 0):
        self.sent: list[bytes] = []
        self.open_rings_calls = 0
        self.open_status = open_status
        self.cs = ChannelServer(self._send, ram_contains, 2, open_rings=self._open,
                                close_rings=lambda ch: None)
        self.cs.max_gpadl_pages = 100   # small: the limit is reached in a few messages
        self.relids = [self.cs.add_offer(Offer(uuid.uuid4(), uuid.uuid4(), b"x" * i)).relid
                       for i in range(3)]

    def _send(self, payload: bytes) -> None:
        assert 8 <= len(payload) <= w.HV_MESSAGE_PAYLOAD_BYTE_COUNT
        self.sent.append(payload)

    def _open(self, ch, req):
        self.open_rings_calls += 1
        assert 2 <= req.downstream_pageoffset <= req.gpadl.page_count - 2
        return (self.open_status, object()) if self.open_rings_calls % 5 else (1, None)

    def check(self) -> None:
        cs = self.cs
        assert len(cs.errors) <= MAX_ERRORS_KEPT
        assert len(cs._logged) <= 256
        everything = cs._all_gpadls()
        assert len(everything) <= MAX_GPADLS
        held = 0
        for ch in cs.channels.values():
            assert ch.gpadls.pages == sum(g.page_count for g in ch.gpadls.values())
            assert ch.building.pages == sum(b.range_buflen // 8 for b in ch.building.values())
            held += ch.gpadls.pages + ch.building.pages
        assert held <= cs.max_gpadl_pages
        for ch in cs.channels.values():
            assert ch.state in ("offered", "open", "rescinded")
            assert not (set(ch.gpadls) & set(ch.building))
            for g in ch.gpadls.values():
                assert all(ram_contains(p * PAGE_SIZE, PAGE_SIZE) for p in g.pfns)
                users = sum(1 for c in cs.channels.values()
                            if c.state == "open" and c.open_request.gpadl is g)
                assert g.users == users
            for b in ch.building.values():
                assert len(b.data) < b.range_buflen
            if ch.state == "open":
                assert ch.open_request is not None and ch.open_request.gpadl.users >= 1
            else:
                assert ch.open_request is None and ch.transport is None


@SETTINGS
@given(st.lists(channel_messages(), min_size=1, max_size=40), st.booleans())
def test_channel_server_survives_any_message_sequence(msgs, connect_first):
    h = _Harness()
    if connect_first:
        m = w.vmbus_channel_initiate_contact()
        m.header.msgtype = w.CHANNELMSG_INITIATE_CONTACT
        m.vmbus_version_requested = w.VERSION_WIN10_V5_3
        m.msg_sint = 2
        h.cs.handle_message(4, bytes(m))
        h.cs.handle_message(4, bytes(w.vmbus_channel_message_header(
            msgtype=w.CHANNELMSG_REQUESTOFFERS)))
    for conn, raw in msgs:
        h.cs.handle_message(conn, raw)       # never raises
        h.check()
    h.cs.close_all()
    h.check()


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([1, 4, 7]), st.binary(max_size=300)), max_size=60))
def test_channel_server_survives_raw_bytes(msgs):
    h = _Harness()
    for conn, raw in msgs:
        h.cs.handle_message(conn, raw)
        h.check()


def test_channel_server_error_list_stays_bounded_under_a_flood():
    h = _Harness()
    for i in range(5 * MAX_ERRORS_KEPT):
        h.cs.handle_message(4, struct.pack("<II", 1000 + i, 0))
    assert h.cs.error_count == 5 * MAX_ERRORS_KEPT
    assert len(h.cs.errors) == MAX_ERRORS_KEPT and len(h.cs._logged) <= 256


# ---- hypercalls and synthetic MSRs -------------------------------------------------------------

STATUSES = {hs.HV_STATUS_SUCCESS, hs.HV_STATUS_INVALID_HYPERCALL_CODE,
            hs.HV_STATUS_INVALID_HYPERCALL_INPUT, hs.HV_STATUS_INVALID_ALIGNMENT,
            hs.HV_STATUS_INVALID_PARAMETER, hs.HV_STATUS_INVALID_CONNECTION_ID,
            hs.HV_STATUS_INSUFFICIENT_BUFFERS}


@pytest.fixture(scope="module")
def guest_memory():
    with GuestMemory(RAM) as mem:
        yield mem


def _hyperv(mem):
    msis = []
    hv = hs.HyperV(mem, 2, signal_msi=lambda a, d: msis.append((a, d)), atomics=Atomics(),
                   tsc_hz=1_000_000_000)
    posted = []

    def handler(vp, mtype, payload):
        assert len(payload) <= w.HV_MESSAGE_PAYLOAD_BYTE_COUNT and mtype and not mtype >> 31
        posted.append(payload)
        return hs.HV_STATUS_SUCCESS

    hv.register_post_handler(1, handler)
    hv.register_post_handler(4, handler)
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    hv.register_event(0x2001, efd)
    return hv, posted, msis, efd


gpas = st.one_of(st.integers(0, RAM + PAGE_SIZE), st.integers(RAM - 300, RAM + 8),
                 st.integers(1, RAM // PAGE_SIZE).map(lambda p: p * PAGE_SIZE - 8), u64)
controls = st.one_of(st.sampled_from([hs.HVCALL_POST_MESSAGE, hs.HVCALL_SIGNAL_EVENT,
                                      hs.HVCALL_SIGNAL_EVENT | hs.HV_HYPERCALL_FAST_BIT]),
                     st.integers(0, 0x1FF), u64)


@SETTINGS
@given(controls, gpas, u64, st.binary(min_size=256, max_size=256), st.integers(0, 1))
def test_hypercall_never_raises_and_answers_a_known_status(guest_memory, control, gpa, out_gpa,
                                                           page, vp):
    hv, posted, _msis, efd = _hyperv(guest_memory)
    try:
        base = min(gpa, RAM - 256) & ~7 if gpa < RAM else RAM - 256
        guest_memory.write(base, page)
        if (control & 0xFFFF) == hs.HVCALL_POST_MESSAGE and page[0] & 1:
            # a plausible input now and then: connection 4, VMBus type, a small size
            guest_memory.write(base, struct.pack("<IIII", 4, 0, 1, page[1] % 250))
        status = hv.hypercall(vp, control, gpa, out_gpa)
        assert status in STATUSES
        assert all(len(p) <= w.HV_MESSAGE_PAYLOAD_BYTE_COUNT for p in posted)
        if status == hs.HV_STATUS_SUCCESS:
            assert posted or (control & 0xFFFF) == hs.HVCALL_SIGNAL_EVENT
    finally:
        os.close(efd)


msr_indexes = st.one_of(st.integers(0x40000000, 0x400000FF),
                        st.sampled_from([hs.HV_X64_MSR_SIMP, hs.HV_X64_MSR_SIEFP,
                                         hs.HV_X64_MSR_HYPERCALL, hs.HV_X64_MSR_SCONTROL,
                                         hs.HV_X64_MSR_SINT0 + 2, hs.HV_X64_MSR_EOM,
                                         hs.HV_X64_MSR_GUEST_OS_ID]))
msr_values = st.one_of(u64, gpas.map(lambda g: g | 1), st.integers(0, 0xFF),
                       st.integers(0, 0xFF).map(lambda v: v | 1 << 16))


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 1), msr_indexes, msr_values, st.booleans()),
                max_size=30),
       st.lists(st.tuples(st.integers(0, 15), st.binary(max_size=240), st.integers(0, 2047)),
                max_size=10))
def test_synthetic_msrs_and_host_delivery_stay_inside_ram(guest_memory, writes, deliveries):
    """Garbage in every synthetic MSR, then the host posts messages and sets event flags: only
    ints/None/bools come back, and every page the host then writes is guest RAM (GuestMemory
    raises on anything else, which would fail the test)."""
    hv, _posted, msis, efd = _hyperv(guest_memory)
    try:
        for vp, index, value, read in writes:
            if read:
                v = hv.rdmsr(vp, index)
                assert v is None or 0 <= v < 1 << 64
            else:
                assert hv.wrmsr(vp, index, value) in (True, False)
            s = hv.vps[vp]
            for gpa in (s.simp_gpa(), s.siefp_gpa()):
                assert gpa is None or guest_memory.contains(gpa, PAGE_SIZE)
        for sint, payload, flag in deliveries:
            for vp in (0, 1):
                hv.post_message(vp, sint, 1, payload)
                hv.signal_event(vp, sint, flag)
        for vp in (0, 1):
            assert all(len(q) <= hv.MAX_PENDING_PER_SINT for q in hv.vps[vp].pending)
        for addr, data in msis:
            assert 16 <= data <= 0xFF and addr & 0xFFF0_0000 == hs.MSI_ADDRESS_BASE
    finally:
        os.close(efd)


# ---- ucalls ------------------------------------------------------------------------------------

@SETTINGS
@given(st.one_of(st.binary(min_size=ucall.UCALL_SIZE, max_size=ucall.UCALL_SIZE),
                 st.binary(max_size=2 * ucall.UCALL_SIZE)),
       st.integers(1, 5), st.booleans())
def test_ucall_decoder_raises_only_ucall_error(raw, cmd, fix_head):
    if fix_head and len(raw) == ucall.UCALL_SIZE:
        raw = struct.pack("<II", ucall.UCALL_MAGIC, cmd) + raw[8:]
    try:
        uc = ucall.decode(raw)
    except ucall.UcallError:
        return
    assert uc.cmd in ucall.CMD_NAMES and 0 <= uc.ring <= 3
    assert len(uc.args) == 6 and len(uc.msg) <= 512 and len(uc.file) <= 128


@SETTINGS
@given(gpas, st.binary(max_size=ucall.UCALL_SIZE))
def test_read_ucall_at_any_gpa(guest_memory, gpa, content):
    if guest_memory.contains(gpa, len(content)):
        guest_memory.write(gpa, content)
    try:
        ucall.read_ucall(guest_memory, gpa)
    except ucall.UcallError:
        pass
