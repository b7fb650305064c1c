"""The VMBus server end to end without a vCPU: a Python fake guest on real guest RAM and rings."""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest

from fakeguest import SIEFP, FakeGuest, FakePartition, wait_for
from hvkvm.hv import synic as hs
from hvkvm.vmbus import wire as w
from hvkvm.vmbus.server import VmbusServer
from hvkvm.vsp.echo import HVKVM_ECHO_GUID, EchoVsp


@pytest.fixture
def setup():
    part = FakePartition()
    server = VmbusServer(part)
    echo = EchoVsp()
    server.add_vsp(echo)
    guest = FakeGuest(part)
    yield part, server, echo, guest
    server.close()
    part.close()


def echo_sizes(ch, sizes, base=0):
    """Send each size, check the echo byte for byte and its trans_id."""
    for n, size in enumerate(sizes):
        payload = bytes((n * 7 + base + i) & 0xFF for i in range(size))
        assert ch.send(payload, trans_id=base + n)
        pkt = ch.recv()
        assert pkt is not None, f"no echo for packet {n} ({size} bytes)"
        assert (pkt.trans_id, pkt.payload[:size]) == (base + n, payload)


def test_fake_guest_opens_the_echo_channel_and_gets_echoes_of_every_size(setup):
    part, server, echo, guest = setup
    (offer,) = guest.connect()
    assert offer.offer.if_type.to_uuid() == HVKVM_ECHO_GUID
    ch = guest.open(offer)
    try:
        echo_sizes(ch, [1, 7, 8, 9, 64, 200, 1000, 3000, 5000] * 4)   # wraps the 12 KiB rings
        assert echo.packets == 36
        # Interrupts went to the guest through event flag relid in SINT2's SIEFP slot.
        flags = part.memory.read(SIEFP + 2 * 256, 4)
        assert int.from_bytes(flags, "little") & (1 << offer.child_relid)
        assert part.msis and part.msis[-1] == (0xFEE00000, 0x50)
    finally:
        ch.close()


def test_one_way_packets_are_consumed_without_an_answer(setup):
    part, server, echo, guest = setup
    (offer,) = guest.connect()
    ch = guest.open(offer)
    try:
        for n in range(10):
            assert ch.send(b"sink" * 10, trans_id=(1 << 63) | n)
        assert wait_for(lambda: echo.packets == 10)
        assert ch.inn.available == 0
    finally:
        ch.close()


def test_a_burst_to_a_draining_reader_raises_far_fewer_signals_than_packets(setup):
    part, server, echo, guest = setup
    (offer,) = guest.connect()
    ch = guest.open(offer)
    got = []
    stop = threading.Event()

    def reader():
        # A real reader: it signals the writer when its commit frees the space the writer
        # asked for (pending_send_sz), or the echo VSP waits forever on a full ring.
        while not stop.is_set():
            p = ch.inn.read()
            if p is None:
                if ch.inn.commit():
                    ch.kick()
                time.sleep(0)
                continue
            got.append(p.trans_id)
        ch.inn.commit()

    t = threading.Thread(target=reader)
    t.start()
    kicks = 0
    try:
        n = 0
        while n < 400:
            if ch.out.write(b"x" * 24, trans_id=n):
                n += 1
            else:
                time.sleep(0.0005)
            if ch.out.commit():
                kicks += 1
                ch.kick()
        assert wait_for(lambda: len(got) == 400, 10)
    finally:
        stop.set()
        t.join()
        ch.close()
    assert got == list(range(400))
    assert kicks < 400 / 2, kicks
    assert part.hv.stats["sint_interrupts"] < 400 / 2


def test_close_channel_stops_the_vsp_and_unregisters_the_signal(setup):
    part, server, echo, guest = setup
    (offer,) = guest.connect()
    ch = guest.open(offer)
    ch.close()
    m = w.vmbus_channel_close_channel()
    m.header.msgtype = w.CHANNELMSG_CLOSECHANNEL
    m.child_relid = offer.child_relid
    guest.post(bytes(m))
    assert offer.connection_id not in part.signals
    state = server.channels.channels[offer.child_relid]
    assert state.state == "offered" and state.transport is None


def test_post_message_with_wrong_message_type_is_an_error_not_a_crash(setup):
    part, server, echo, guest = setup
    part.memory.write(0x12000, struct.pack("<IIII", 4, 0, 7, 8) + bytes(8))
    assert part.hv.hypercall(0, hs.HVCALL_POST_MESSAGE, 0x12000, 0) == 0
    assert "message type 7" in server.errors[-1]


def test_several_channels_at_once_and_a_broken_one_does_not_stop_the_others(setup):
    part, server, echo, guest = setup
    server.add_vsp(EchoVsp())
    offers = guest.connect()
    chans = [guest.open(o) for o in offers]
    try:
        for n in range(20):
            for i, ch in enumerate(chans):
                assert ch.send(bytes([i, n]) * 50, trans_id=n)
            for i, ch in enumerate(chans):
                assert ch.recv().payload[:100] == bytes([i, n]) * 50
        # Corrupt channel 1's send ring (write_index beyond the ring) and kick it.
        chans[0].maps[0].write(0, struct.pack("<I", 0xFFFF0))
        chans[0].kick()
        assert wait_for(lambda: echo.broken is not None)
        echo_sizes(chans[1], [10, 100], base=99)   # channel 2 still echoes
        assert any("relid" in e for e in server.errors)
    finally:
        for ch in chans:
            ch.close()


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
    (offer,) = guest.connect()
    ch = guest.open(offer)
    try:
        echo_sizes(ch, [1, 100, 2000, 5000, 8, 3000, 7000, 16] * 5)
        flags = int.from_bytes(part.memory.read(SIEFP + 2 * 256, 4), "little")
        assert flags & (1 << offer.child_relid)
    finally:
        ch.close()
    if plane == "c":
        stats = echo.planes[offer.child_relid].stats
        assert stats["packets"] == 40 and stats["signals"] > 0


def test_ring_gpadl_spanning_several_body_messages_opens_and_echoes(setup):
    part, server, echo, guest = setup
    (offer,) = guest.connect()
    ch = guest.open(offer, ring_pages=130)     # 1 GPADL_HEADER + 4 GPADL_BODY messages
    try:
        echo_sizes(ch, [100_000, 3, 64_000])
    finally:
        ch.close()
