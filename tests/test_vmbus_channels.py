"""The VMBus channel protocol state machine, driven message by message without KVM."""

from __future__ import annotations

import ctypes
import struct
import uuid

import pytest

from hvkvm.vmbus import wire as w
from hvkvm.vmbus.channels import CHANNEL_CONNECTION_BASE, STATUS_UNSUCCESSFUL, ChannelServer, Offer

RAM = 64 << 20
CLASS = uuid.UUID("9d3c5b4e-6f0a-4c8e-b1d2-6876766b6563")


def ram_contains(gpa, length):
    return 0 <= gpa and gpa + length <= RAM


class Guest:
    """A fake guest: builds channel messages the way Linux's hv_vmbus does."""

    def __init__(self, nvps=2, open_status=0):
        self.sent = []
        self.opened, self.closed, self.started = [], [], []

        def open_rings(ch, req):
            self.opened.append((ch.relid, req))
            return open_status, object()

        self.cs = ChannelServer(self.sent.append, ram_contains, nvps, open_rings=open_rings,
                                close_rings=lambda ch: self.closed.append(ch.relid),
                                started=lambda ch: self.started.append(ch.relid))

    def post(self, msg, conn=None, raw=None):
        self.cs.handle_message(conn if conn is not None else self.cs.msg_conn_id,
                               raw if raw is not None else bytes(msg))

    def replies(self):
        out = [(struct.unpack_from("<I", m)[0], m) for m in self.sent]
        self.sent.clear()
        return out

    def connect(self, version=w.VERSION_WIN10_V5_3, conn=4):
        m = w.vmbus_channel_initiate_contact()
        m.header.msgtype = w.CHANNELMSG_INITIATE_CONTACT
        m.vmbus_version_requested = version
        m.msg_sint = 2
        self.post(m, conn=conn)
        (t, raw), = self.replies()
        assert t == w.CHANNELMSG_VERSION_RESPONSE
        return w.vmbus_channel_version_response.from_buffer_copy(raw)

    def request_offers(self):
        self.post(w.vmbus_channel_message_header(msgtype=w.CHANNELMSG_REQUESTOFFERS))
        return self.replies()

    def gpadl(self, relid, handle, pfns, per_header=27, per_body=28):
        """GPADL_HEADER with the first PFNs, then GPADL_BODY messages, as Linux splits them."""
        hdr = w.vmbus_channel_gpadl_header()
        hdr.header.msgtype = w.CHANNELMSG_GPADL_HEADER
        hdr.child_relid, hdr.gpadl = relid, handle
        hdr.range_buflen = 8 + 8 * len(pfns)
        hdr.rangecount = 1
        first = pfns[:per_header]
        self.post(None, raw=bytes(hdr) + struct.pack("<II", len(pfns) * 4096, 0) +
                  struct.pack(f"<{len(first)}Q", *first))
        rest = pfns[per_header:]
        while rest:
            chunk, rest = rest[:per_body], rest[per_body:]
            body = w.vmbus_channel_gpadl_body()
            body.header.msgtype = w.CHANNELMSG_GPADL_BODY
            body.gpadl = handle
            self.post(None, raw=bytes(body) + struct.pack(f"<{len(chunk)}Q", *chunk))
        return self.replies()

    def open(self, relid, handle, offset, openid=7, target_vp=0):
        m = w.vmbus_channel_open_channel()
        m.header.msgtype = w.CHANNELMSG_OPENCHANNEL
        m.child_relid, m.openid, m.ringbuffer_gpadlhandle = relid, openid, handle
        m.target_vp, m.downstream_ringbuffer_pageoffset = target_vp, offset
        self.post(m)
        (t, raw), = self.replies()
        assert t == w.CHANNELMSG_OPENCHANNEL_RESULT
        return w.vmbus_channel_open_result.from_buffer_copy(raw)

    def close(self, relid):
        m = w.vmbus_channel_close_channel()
        m.header.msgtype = w.CHANNELMSG_CLOSECHANNEL
        m.child_relid = relid
        self.post(m)

    def teardown(self, relid, handle):
        m = w.vmbus_channel_gpadl_teardown()
        m.header.msgtype = w.CHANNELMSG_GPADL_TEARDOWN
        m.child_relid, m.gpadl = relid, handle
        self.post(m)
        return self.replies()


def created_status(replies):
    (t, raw), = replies
    assert t == w.CHANNELMSG_GPADL_CREATED
    return w.vmbus_channel_gpadl_created.from_buffer_copy(raw).creation_status


@pytest.fixture
def guest():
    g = Guest()
    g.cs.add_offer(Offer(CLASS, uuid.UUID(int=1), b"user"))
    return g


def test_version_5_is_negotiated_on_connection_id_4(guest):
    r = guest.connect()
    assert r.version_supported == 1 and r.msg_conn_id == 4
    assert guest.cs.version == w.VERSION_WIN10_V5_3


@pytest.mark.parametrize("version", [w.VERSION_WIN10, w.VERSION_WIN10_V4_1, w.VERSION_WIN8])
def test_pre_5_versions_are_negotiated_on_connection_id_1(version):
    g = Guest()
    r = g.connect(version, conn=1)
    assert r.version_supported == 1 and g.cs.version == version


def test_version_5_on_connection_id_1_and_unknown_versions_are_refused():
    g = Guest()
    assert g.connect(w.VERSION_WIN10_V5, conn=1).version_supported == 0
    assert g.connect(0x00090009, conn=4).version_supported == 0
    assert g.cs.version is None


def test_offers_carry_guids_relid_connection_id_and_dedicated_interrupt(guest):
    guest.connect()
    (t1, raw), (t2, _) = guest.request_offers()
    assert (t1, t2) == (w.CHANNELMSG_OFFERCHANNEL, w.CHANNELMSG_ALLOFFERS_DELIVERED)
    offer = w.vmbus_channel_offer_channel.from_buffer_copy(raw)
    assert offer.offer.if_type.to_uuid() == CLASS
    assert offer.offer.if_instance.to_uuid() == uuid.UUID(int=1)
    assert offer.child_relid == 1 and offer.connection_id == CHANNEL_CONNECTION_BASE + 1
    assert offer.is_dedicated_interrupt == 1 and offer.monitor_allocated == 0
    assert bytes(offer.offer.u)[:4] == b"user"


def test_a_channel_added_later_is_offered_at_once(guest):
    guest.connect()
    guest.request_offers()
    ch = guest.cs.add_offer(Offer(CLASS, uuid.UUID(int=2)))
    (t, raw), = guest.replies()
    assert t == w.CHANNELMSG_OFFERCHANNEL and ch.relid == 2


def test_multi_message_gpadl_then_open_close_reopen(guest):
    guest.connect()
    guest.request_offers()
    pfns = list(range(0x100, 0x100 + 100))     # 100 pages: header + 3 bodies
    assert created_status(guest.gpadl(1, 0x10, pfns)) == 0
    g = guest.cs.channels[1].gpadls[0x10]
    assert g.pfns == pfns
    res = guest.open(1, 0x10, 50)
    assert res.status == 0 and res.openid == 7
    assert guest.started == [1]
    relid, req = guest.opened[0]
    assert req.downstream_pageoffset == 50 and req.gpadl.handle == 0x10
    assert guest.open(1, 0x10, 50).status == STATUS_UNSUCCESSFUL     # already open
    guest.close(1)
    assert guest.closed == [1]
    assert guest.open(1, 0x10, 50).status == 0                        # reopen
    guest.close(1)
    (t, raw), = guest.teardown(1, 0x10)
    assert t == w.CHANNELMSG_GPADL_TORNDOWN
    assert w.vmbus_channel_gpadl_torndown.from_buffer_copy(raw).gpadl == 0x10


def test_gpadl_in_use_by_an_open_channel_is_torn_down_only_after_close(guest):
    guest.connect()
    guest.request_offers()
    guest.gpadl(1, 5, list(range(0x200, 0x208)))
    assert guest.open(1, 5, 4).status == 0
    assert guest.teardown(1, 5) == []                      # deferred
    assert any("while its channel is open" in e for e in guest.cs.errors)
    guest.close(1)
    (t, raw), = guest.replies()
    assert t == w.CHANNELMSG_GPADL_TORNDOWN


def test_gpadl_pfn_outside_ram_is_refused(guest):
    guest.connect()
    guest.request_offers()
    assert created_status(guest.gpadl(1, 9, [1, 2, RAM // 4096])) == STATUS_UNSUCCESSFUL
    assert 9 not in guest.cs.channels[1].gpadls
    assert any("outside guest RAM" in e for e in guest.cs.errors)


@pytest.mark.parametrize("mutate,needle", [
    (lambda h, rng: (h, struct.pack("<II", 0, 0)), "empty"),
    (lambda h, rng: (h, struct.pack("<II", 4096, 5000)), "byte_offset"),
    (lambda h, rng: (h, struct.pack("<II", 3 * 4096, 0)), "needs 3 PFNs"),
])
def test_malformed_gpadl_ranges_are_refused(guest, mutate, needle):
    guest.connect()
    guest.request_offers()
    hdr = w.vmbus_channel_gpadl_header()
    hdr.header.msgtype = w.CHANNELMSG_GPADL_HEADER
    hdr.child_relid, hdr.gpadl, hdr.rangecount = 1, 3, 1
    hdr.range_buflen = 8 + 8
    hdr, rng = mutate(hdr, None)
    guest.post(None, raw=bytes(hdr) + rng + struct.pack("<Q", 5))
    assert created_status(guest.replies()) == STATUS_UNSUCCESSFUL
    assert any(needle in e for e in guest.cs.errors), list(guest.cs.errors)


def test_open_with_bad_parameters_fails_cleanly(guest):
    guest.connect()
    guest.request_offers()
    guest.gpadl(1, 5, list(range(0x200, 0x208)))
    assert guest.open(1, 99, 4).status == STATUS_UNSUCCESSFUL        # unknown GPADL
    assert guest.open(1, 5, 1).status == STATUS_UNSUCCESSFUL         # offset too small
    assert guest.open(1, 5, 7).status == STATUS_UNSUCCESSFUL         # receive ring too small
    assert guest.open(1, 5, 4, target_vp=9).status == STATUS_UNSUCCESSFUL
    assert guest.opened == []


def test_vsp_refusing_open_gives_its_status():
    g = Guest(open_status=0xC000000D)
    g.cs.add_offer(Offer(CLASS, uuid.UUID(int=1)))
    g.connect()
    g.request_offers()
    g.gpadl(1, 5, list(range(0x200, 0x208)))
    assert g.open(1, 5, 4).status == 0xC000000D
    assert g.started == []


def test_rescind_then_relid_released_frees_the_channel(guest):
    guest.connect()
    guest.request_offers()
    guest.gpadl(1, 5, list(range(0x200, 0x208)))
    guest.open(1, 5, 4)
    guest.cs.rescind(1)
    assert guest.closed == [1]
    (t, raw), = guest.replies()
    assert t == w.CHANNELMSG_RESCIND_CHANNELOFFER
    m = w.vmbus_channel_relid_released()
    m.header.msgtype = w.CHANNELMSG_RELID_RELEASED
    m.child_relid = 1
    guest.post(m)
    assert 1 not in guest.cs.channels


def test_unload_closes_everything_and_answers(guest):
    guest.connect()
    guest.request_offers()
    guest.gpadl(1, 5, list(range(0x200, 0x208)))
    guest.open(1, 5, 4)
    guest.post(w.vmbus_channel_message_header(msgtype=w.CHANNELMSG_UNLOAD))
    (t, _), = guest.replies()
    assert t == w.CHANNELMSG_UNLOAD_RESPONSE
    assert guest.closed == [1] and guest.cs.version is None
    assert guest.cs.channels[1].gpadls == {}


@pytest.mark.parametrize("raw,needle", [
    (b"\x01\x02", "no header"),
    (struct.pack("<II", 99, 0), "unknown"),
    (struct.pack("<II", w.CHANNELMSG_OFFERCHANNEL, 0), "host-only"),
    (struct.pack("<II", w.CHANNELMSG_OPENCHANNEL, 0) + b"\0" * 8, "needs"),
])
def test_malformed_messages_are_logged_and_the_server_keeps_serving(guest, raw, needle):
    guest.connect()
    guest.post(None, raw=raw)
    assert any(needle in e for e in guest.cs.errors), list(guest.cs.errors)
    assert len(guest.request_offers()) == 2    # still serving


def test_messages_for_unknown_relids_and_before_contact_are_errors():
    g = Guest()
    g.post(w.vmbus_channel_message_header(msgtype=w.CHANNELMSG_REQUESTOFFERS), conn=1)
    assert g.sent == [] and "before INITIATE_CONTACT" in g.cs.errors[-1]
    g.connect()
    g.close(42)
    assert "unknown relid 42" in g.cs.errors[-1]


def test_errors_are_bounded_under_a_flood():
    g = Guest()
    g.connect()
    for _ in range(10000):
        g.post(None, raw=struct.pack("<II", 99, 0))
    assert g.cs.error_count == 10000 and len(g.cs.errors) <= 256
