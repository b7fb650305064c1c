"""The VMBus server end to end without KVM: a Python fake guest on real guest RAM and real rings.

The fake guest posts channel messages through the hypercall path, reads SynIC message slots the
parent writes, and talks to the echo VSP over rings in guest RAM with the same C ring code; only
the CPU is missing (KVM's ioeventfd is replaced by writing the channel's eventfd directly).
"""

from __future__ import annotations

import os
import struct
import threading
import time
import uuid

import pytest

from hvkvm.hv import synic as hs
from hvkvm.hv.atomics import Atomics
from hvkvm.memory import GuestMemory
from hvkvm.vmbus import wire as w
from hvkvm.vmbus.ring import InRing, OutRing
from hvkvm.vmbus.ringmap import RingMapping
from hvkvm.vmbus.server import VmbusServer
from hvkvm.vsp.echo import HVKVM_ECHO_GUID, EchoVsp

SIMP = 0x10000
SIEFP = 0x11000
INPUT = 0x12000
RING_GPA = 0x100000
RING_PAGES = 8   # 4 send (1 header + 3 data) + 4 receive


class FakePartition:
    """What VmbusServer needs from a partition, minus KVM."""

    def __init__(self):
        self.memory = GuestMemory(16 << 20)
        self.msis = []
        self.hv = hs.HyperV(self.memory, 1, signal_msi=lambda a, d: self.msis.append((a, d)),
                            atomics=Atomics(), tsc_hz=1)
        self.vcpus = [None]
        self.signals = {}

    def register_signal(self, conn, efd):
        self.signals[conn] = efd
        self.hv.register_event(conn, efd)

    def unregister_signal(self, conn, efd):
        self.signals.pop(conn, None)
        self.hv.unregister_event(conn)


class FakeGuest:
    def __init__(self, part):
        self.p = part
        hv = part.hv
        hv.wrmsr(0, hs.HV_X64_MSR_SCONTROL, 1)
        hv.wrmsr(0, hs.HV_X64_MSR_SIMP, SIMP | 1)
        hv.wrmsr(0, hs.HV_X64_MSR_SIEFP, SIEFP | 1)
        hv.wrmsr(0, hs.HV_X64_MSR_SINT0 + 2, 0x50)

    def post(self, payload: bytes, conn=4):
        m = self.p.memory
        m.write(INPUT, struct.pack("<IIII", conn, 0, 1, len(payload)) + payload)
        return self.p.hv.hypercall(0, hs.HVCALL_POST_MESSAGE, INPUT, 0)

    def receive(self):
        """Take the message in SINT2's slot (as the guest ISR would) and EOM if pending."""
        m = self.p.memory
        slot = SIMP + 2 * 256
        if m.read_u32(slot) == 0:
            return None
        size = m.read(slot + 4, 1)[0]
        flags = m.read(slot + 5, 1)[0]
        data = m.read(slot + 16, size)
        m.write_u32(slot, 0)
        if flags & 1:
            self.p.hv.wrmsr(0, hs.HV_X64_MSR_EOM, 0)
        return data

    def receive_all(self):
        out = []
        while (d := self.receive()) is not None:
            out.append(d)
        return out


@pytest.fixture
def setup():
    part = FakePartition()
    server = VmbusServer(part)
    echo = EchoVsp()
    server.add_vsp(echo)
    guest = FakeGuest(part)
    yield part, server, echo, guest
    server.close()
    part.memory.close()


def connect_and_open(guest):
    m = w.vmbus_channel_initiate_contact()
    m.header.msgtype = w.CHANNELMSG_INITIATE_CONTACT
    m.vmbus_version_requested = w.VERSION_WIN10_V5_2
    m.msg_sint = 2
    assert guest.post(bytes(m)) == 0
    (resp,) = guest.receive_all()
    assert w.vmbus_channel_version_response.from_buffer_copy(resp).version_supported == 1
    guest.post(bytes(w.vmbus_channel_message_header(msgtype=w.CHANNELMSG_REQUESTOFFERS)))
    offer_raw, done = guest.receive_all()
    offer = w.vmbus_channel_offer_channel.from_buffer_copy(offer_raw)
    assert offer.offer.if_type.to_uuid() == HVKVM_ECHO_GUID
    pfns = [RING_GPA // 4096 + i for i in range(RING_PAGES)]
    hdr = w.vmbus_channel_gpadl_header()
    hdr.header.msgtype = w.CHANNELMSG_GPADL_HEADER
    hdr.child_relid, hdr.gpadl, hdr.range_buflen, hdr.rangecount = offer.child_relid, 1, \
        8 + 8 * RING_PAGES, 1
    guest.post(bytes(hdr) + struct.pack("<II", RING_PAGES * 4096, 0) +
               struct.pack(f"<{RING_PAGES}Q", *pfns))
    (created,) = guest.receive_all()
    assert w.vmbus_channel_gpadl_created.from_buffer_copy(created).creation_status == 0
    op = w.vmbus_channel_open_channel()
    op.header.msgtype = w.CHANNELMSG_OPENCHANNEL
    op.child_relid, op.openid, op.ringbuffer_gpadlhandle = offer.child_relid, 1, 1
    op.downstream_ringbuffer_pageoffset = RING_PAGES // 2
    guest.post(bytes(op))
    (result,) = guest.receive_all()
    assert w.vmbus_channel_open_result.from_buffer_copy(result).status == 0
    return offer


def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.001)
    return False


def test_fake_guest_opens_the_echo_channel_and_gets_echoes_of_every_size(setup):
    part, server, echo, guest = setup
    offer = connect_and_open(guest)
    efd = part.signals[offer.connection_id]
    # The guest's views of its rings: plain (not double mapped), like a real guest.
    send = RingMapping.from_guest(part.memory, [RING_GPA // 4096 + i for i in range(4)],
                                  double=False)
    recv = RingMapping.from_guest(part.memory, [RING_GPA // 4096 + 4 + i for i in range(4)],
                                  double=False)
    out, inn = OutRing(send), InRing(recv)
    try:
        sizes = [1, 7, 8, 9, 64, 200, 1000, 3000, 5000] * 4   # wraps the 12 KiB rings
        for n, size in enumerate(sizes):
            payload = bytes((n + i) & 0xFF for i in range(size))
            assert out.write(payload, trans_id=n)
            if out.commit():
                os.eventfd_write(efd, 1)   # what KVM's ioeventfd does on the guest's kick
            assert wait_for(lambda: inn.available > 0), f"no echo for packet {n}"
            pkt = inn.read()
            inn.commit()
            assert pkt.trans_id == n
            assert pkt.payload[:size] == payload
        assert echo.packets == len(sizes)
        # Interrupts went to the guest through event flag relid in SINT2's SIEFP slot.
        flags = part.memory.read(SIEFP + 2 * 256, 4)
        assert int.from_bytes(flags, "little") & (1 << offer.child_relid)
        assert part.msis and part.msis[-1] == (0xFEE00000, 0x50)
    finally:
        send.close()
        recv.close()


def test_a_burst_to_a_draining_reader_raises_far_fewer_signals_than_packets(setup):
    part, server, echo, guest = setup
    offer = connect_and_open(guest)
    efd = part.signals[offer.connection_id]
    send = RingMapping.from_guest(part.memory, [RING_GPA // 4096 + i for i in range(4)],
                                  double=False)
    recv = RingMapping.from_guest(part.memory, [RING_GPA // 4096 + 4 + i for i in range(4)],
                                  double=False)
    out, inn = OutRing(send), InRing(recv)
    got = []
    stop = threading.Event()

    def reader():
        # A real reader: it signals the writer when its commit frees the space the writer
        # asked for (pending_send_sz), or the echo VSP waits forever on a full ring.
        while not stop.is_set():
            p = inn.read()
            if p is None:
                if inn.commit():
                    os.eventfd_write(efd, 1)
                time.sleep(0)
                continue
            got.append(p.trans_id)
        inn.commit()

    t = threading.Thread(target=reader)
    t.start()
    kicks = 0
    try:
        n = 0
        while n < 400:
            if out.write(b"x" * 24, trans_id=n):
                n += 1
                if out.commit():
                    kicks += 1
                    os.eventfd_write(efd, 1)
            else:
                if out.commit():
                    kicks += 1
                    os.eventfd_write(efd, 1)
                time.sleep(0.0005)
        assert wait_for(lambda: len(got) == 400, 10)
    finally:
        stop.set()
        t.join()
        send.close()
        recv.close()
    assert got == list(range(400))
    host_signals = part.hv.stats["sint_interrupts"]
    assert kicks < 400 / 2, kicks
    assert host_signals < 400 / 2, host_signals


@pytest.mark.kvm
@pytest.mark.parametrize("plane", ["python", "c"])
def test_echo_planes_serve_a_fake_guest_in_a_real_partition(make_partition, plane):
    """A real partition (KVM VM, irqfd routes, ioeventfds) whose vCPU never runs: the fake guest
    drives the bus from Python, and the C plane's interrupts land on the guest's event flag."""
    from hvkvm.partition.config import PartitionConfig
    echo = EchoVsp(plane=plane, spin_us=20)
    part = make_partition(PartitionConfig(raw=b"\xeb\xfe", raw_mode="long", hyperv=True,
                                          vsps=[echo]))
    guest = FakeGuest(part)
    offer = connect_and_open(guest)
    ch = part.vmbus.channels.channels[offer.child_relid]
    efd = ch.transport.eventfd
    send = RingMapping.from_guest(part.memory, [RING_GPA // 4096 + i for i in range(4)],
                                  double=False)
    recv = RingMapping.from_guest(part.memory, [RING_GPA // 4096 + 4 + i for i in range(4)],
                                  double=False)
    out, inn = OutRing(send), InRing(recv)
    try:
        for n, size in enumerate([1, 100, 2000, 5000, 8, 3000, 7000, 16] * 5):
            payload = bytes((n * 7 + i) & 0xFF for i in range(size))
            assert out.write(payload, trans_id=1000 + n)
            if out.commit():
                os.eventfd_write(efd, 1)
            assert wait_for(lambda: inn.available > 0), f"no echo for packet {n}"
            pkt = inn.read()
            if inn.commit():
                os.eventfd_write(efd, 1)
            assert (pkt.trans_id, pkt.payload[:size]) == (1000 + n, payload)
        flags = int.from_bytes(part.memory.read(SIEFP + 2 * 256, 4), "little")
        assert flags & (1 << offer.child_relid)
    finally:
        send.close()
        recv.close()
    if plane == "c":
        stats = echo.planes[offer.child_relid].stats
        assert stats["packets"] == 40 and stats["signals"] > 0


def test_close_channel_stops_the_vsp_and_unregisters_the_signal(setup):
    part, server, echo, guest = setup
    offer = connect_and_open(guest)
    m = w.vmbus_channel_close_channel()
    m.header.msgtype = w.CHANNELMSG_CLOSECHANNEL
    m.child_relid = offer.child_relid
    guest.post(bytes(m))
    assert offer.connection_id not in part.signals
    ch = server.channels.channels[offer.child_relid]
    assert ch.state == "offered" and ch.transport is None


def test_post_message_with_wrong_message_type_is_an_error_not_a_crash(setup):
    part, server, echo, guest = setup
    m = part.memory
    m.write(INPUT, struct.pack("<IIII", 4, 0, 7, 8) + bytes(8))
    assert part.hv.hypercall(0, hs.HVCALL_POST_MESSAGE, INPUT, 0) == 0
    assert "message type 7" in server.errors[-1]


def open_channel(guest, offer, gpadl, ring_gpa):
    pfns = [ring_gpa // 4096 + i for i in range(RING_PAGES)]
    hdr = w.vmbus_channel_gpadl_header()
    hdr.header.msgtype = w.CHANNELMSG_GPADL_HEADER
    hdr.child_relid, hdr.gpadl, hdr.range_buflen, hdr.rangecount = offer.child_relid, gpadl, \
        8 + 8 * RING_PAGES, 1
    guest.post(bytes(hdr) + struct.pack("<II", RING_PAGES * 4096, 0) +
               struct.pack(f"<{RING_PAGES}Q", *pfns))
    (created,) = guest.receive_all()
    assert w.vmbus_channel_gpadl_created.from_buffer_copy(created).creation_status == 0
    op = w.vmbus_channel_open_channel()
    op.header.msgtype = w.CHANNELMSG_OPENCHANNEL
    op.child_relid, op.openid, op.ringbuffer_gpadlhandle = offer.child_relid, gpadl, gpadl
    op.downstream_ringbuffer_pageoffset = RING_PAGES // 2
    guest.post(bytes(op))
    (result,) = guest.receive_all()
    assert w.vmbus_channel_open_result.from_buffer_copy(result).status == 0
    send = RingMapping.from_guest(guest.p.memory, pfns[:4], double=False)
    recv = RingMapping.from_guest(guest.p.memory, pfns[4:], double=False)
    return send, recv


def test_several_channels_at_once_and_a_broken_one_does_not_stop_the_others(setup):
    part, server, echo, guest = setup
    echo2 = EchoVsp()
    server.add_vsp(echo2)
    m = w.vmbus_channel_initiate_contact()
    m.header.msgtype = w.CHANNELMSG_INITIATE_CONTACT
    m.vmbus_version_requested = w.VERSION_WIN10_V5_3
    guest.post(bytes(m))
    guest.receive_all()
    guest.post(bytes(w.vmbus_channel_message_header(msgtype=w.CHANNELMSG_REQUESTOFFERS)))
    offers = [w.vmbus_channel_offer_channel.from_buffer_copy(r) for r in guest.receive_all()[:2]]
    maps = []
    try:
        rings = []
        for i, offer in enumerate(offers):
            send, recv = open_channel(guest, offer, 10 + i, RING_GPA + i * 0x10000)
            maps += [send, recv]
            efd = part.signals[offer.connection_id]
            rings.append((OutRing(send), InRing(recv), efd))
        for n in range(20):
            for i, (out, inn, efd) in enumerate(rings):
                assert out.write(bytes([i, n]) * 50, trans_id=n)
                if out.commit():
                    os.eventfd_write(efd, 1)
            for i, (out, inn, efd) in enumerate(rings):
                assert wait_for(lambda: inn.available > 0)
                pkt = inn.read()
                inn.commit()
                assert pkt.payload[:100] == bytes([i, n]) * 50
        # Corrupt channel 1's send ring (write_index beyond the ring) and kick it.
        send0 = maps[0]
        send0.write(0, struct.pack("<I", 0xFFFF0))
        os.eventfd_write(rings[0][2], 1)
        assert wait_for(lambda: echo.broken is not None)
        # Channel 2 still echoes.
        out, inn, efd = rings[1]
        assert out.write(b"still here", trans_id=99)
        if out.commit():
            os.eventfd_write(efd, 1)
        assert wait_for(lambda: inn.available > 0)
        assert inn.read().payload[:10] == b"still here"
        assert any("relid" in e for e in server.errors)
    finally:
        for mp in maps:
            mp.close()
