"""A fake VMBus guest in Python for host-side tests: real guest RAM, real rings, no vCPU.

It posts channel messages through the parent's hypercall path, reads the SynIC message slots the
parent writes, and drives channels with the same C ring code a guest uses (plain view). Only the
CPU is missing: where KVM's ioeventfd would signal the channel's eventfd on a guest kick, the fake
guest writes the eventfd itself. Works with :class:`FakePartition` (no KVM at all) and with a real
:class:`~hvkvm.partition.partition.ChildPartition` whose vCPU never runs.
"""

from __future__ import annotations

import os
import struct
import time

from hvkvm.hv import synic as hs
from hvkvm.hv.atomics import Atomics
from hvkvm.memory import GuestMemory
from hvkvm.vmbus import wire as w
from hvkvm.vmbus.ring import InRing, OutRing
from hvkvm.vmbus.ringmap import RingMapping

SIMP = 0x10000
SIEFP = 0x11000
INPUT = 0x12000
RING_GPA = 0x100000
RING_PAGES = 8   # 4 send (1 header + 3 data) + 4 receive


def wait_for(pred, timeout=5.0):
    """Poll ``pred`` until true or ``timeout`` seconds pass; returns the last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.001)
    return bool(pred())


class FakePartition:
    """What the VMBus server needs from a partition, minus KVM."""

    def __init__(self, memory: int = 16 << 20):
        self.memory = GuestMemory(memory)
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

    def close(self):
        self.memory.close()


class GuestChannel:
    """An open channel seen from the fake guest: its two ring ends and the kick."""

    def __init__(self, offer, out: OutRing, inn: InRing, eventfd: int, maps):
        self.offer = offer
        self.out = out
        self.inn = inn
        self.eventfd = eventfd
        self.maps = maps

    def kick(self) -> None:
        """What the guest's HvSignalEvent does through KVM's ioeventfd."""
        os.eventfd_write(self.eventfd, 1)

    def send(self, payload: bytes, trans_id: int = 0, completion_requested: bool = False,
             **kw) -> bool:
        """Write one in-band packet and kick if the commit says so."""
        if not self.out.write(payload, trans_id=trans_id,
                              completion_requested=completion_requested):
            return False
        if self.out.commit():
            self.kick()
        return True

    def recv(self, timeout: float = 5.0):
        """The next packet from the host (waits), or None on timeout."""
        if not wait_for(lambda: self.inn.available > 0, timeout):
            return None
        pkt = self.inn.read()
        if self.inn.commit():
            self.kick()
        return pkt

    def close(self) -> None:
        """Unmap the guest-side views."""
        for m in self.maps:
            m.close()


class FakeGuest:
    """Connects to the parent's VMBus the way Linux's hv_vmbus does, from Python."""

    def __init__(self, part):
        self.p = part
        hv = part.hv
        hv.wrmsr(0, hs.HV_X64_MSR_SCONTROL, 1)
        hv.wrmsr(0, hs.HV_X64_MSR_SIMP, SIMP | 1)
        hv.wrmsr(0, hs.HV_X64_MSR_SIEFP, SIEFP | 1)
        hv.wrmsr(0, hs.HV_X64_MSR_SINT0 + 2, 0x50)
        self.next_gpadl = 1
        self.next_ring_gpa = RING_GPA

    def post(self, payload: bytes, conn=4):
        """HvPostMessage of a channel message; returns the HV status."""
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
        """Every message waiting, in order."""
        out = []
        while (d := self.receive()) is not None:
            out.append(d)
        return out

    def connect(self, version=w.VERSION_WIN10_V5_3):
        """INITIATE_CONTACT + REQUESTOFFERS; returns the offers."""
        m = w.vmbus_channel_initiate_contact()
        m.header.msgtype = w.CHANNELMSG_INITIATE_CONTACT
        m.vmbus_version_requested = version
        m.msg_sint = 2
        assert self.post(bytes(m), conn=4 if version >= w.VERSION_WIN10_V5 else 1) == 0
        (resp,) = self.receive_all()
        assert w.vmbus_channel_version_response.from_buffer_copy(resp).version_supported == 1
        self.post(bytes(w.vmbus_channel_message_header(msgtype=w.CHANNELMSG_REQUESTOFFERS)))
        msgs = self.receive_all()
        assert struct.unpack_from("<I", msgs[-1])[0] == w.CHANNELMSG_ALLOFFERS_DELIVERED
        return [w.vmbus_channel_offer_channel.from_buffer_copy(r) for r in msgs[:-1]]

    def post_gpadl(self, relid: int, handle: int, gpa: int, pages: int) -> None:
        """GPADL_HEADER (and GPADL_BODY messages as needed) sharing ``pages`` pages at ``gpa``
        as GPADL ``handle``, one range; the caller reads the answer."""
        pfns = [gpa // 4096 + i for i in range(pages)]
        hdr = w.vmbus_channel_gpadl_header()
        hdr.header.msgtype = w.CHANNELMSG_GPADL_HEADER
        hdr.child_relid, hdr.gpadl = relid, handle
        hdr.range_buflen, hdr.rangecount = 8 + 8 * pages, 1
        first, rest = pfns[:26], pfns[26:]   # 20-byte header + 8-byte range + 26 PFNs = 236
        self.post(bytes(hdr) + struct.pack("<II", pages * 4096, 0) +
                  struct.pack(f"<{len(first)}Q", *first))
        while rest:
            chunk, rest = rest[:28], rest[28:]
            body = w.vmbus_channel_gpadl_body()
            body.header.msgtype = w.CHANNELMSG_GPADL_BODY
            body.gpadl = handle
            self.post(bytes(body) + struct.pack(f"<{len(chunk)}Q", *chunk))

    def open(self, offer, ring_pages: int = RING_PAGES, userdata: bytes = b"") -> GuestChannel:
        """GPADL for the rings, OPENCHANNEL; returns the guest's ends of the channel."""
        gpadl = self.next_gpadl
        self.next_gpadl += 1
        ring_gpa = self.next_ring_gpa
        self.next_ring_gpa += ring_pages * 4096
        pfns = [ring_gpa // 4096 + i for i in range(ring_pages)]
        self.p.memory.fill(ring_gpa, ring_pages * 4096)
        self.post_gpadl(offer.child_relid, gpadl, ring_gpa, ring_pages)
        (created,) = self.receive_all()
        assert w.vmbus_channel_gpadl_created.from_buffer_copy(created).creation_status == 0
        op = w.vmbus_channel_open_channel()
        op.header.msgtype = w.CHANNELMSG_OPENCHANNEL
        op.child_relid, op.openid, op.ringbuffer_gpadlhandle = offer.child_relid, gpadl, gpadl
        op.downstream_ringbuffer_pageoffset = ring_pages // 2
        for i, b in enumerate(userdata[:120]):
            op.userdata[i] = b
        self.post(bytes(op))
        (result,) = self.receive_all()
        status = w.vmbus_channel_open_result.from_buffer_copy(result).status
        assert status == 0, f"OPENCHANNEL failed: {status:#x}"
        half = ring_pages // 2
        send = RingMapping.from_guest(self.p.memory, pfns[:half], double=False)
        recv = RingMapping.from_guest(self.p.memory, pfns[half:], double=False)
        # The guest formats its rings before offering them (hvr_ring_format): done by fill above.
        efd = self._eventfd(offer)
        return GuestChannel(offer, OutRing(send), InRing(recv), efd, [send, recv])

    def _eventfd(self, offer):
        signals = getattr(self.p, "signals", None)
        if signals is not None and offer.connection_id in signals:
            return signals[offer.connection_id]
        ch = self.p.vmbus.channels.channels[offer.child_relid]
        return ch.transport.eventfd


def serve_and_open(part, vsps, if_type, ring_pages: int = RING_PAGES):
    """A VMBus server on ``part`` offering ``vsps``, a fake guest connected and every offered
    channel (each must be of class ``if_type``, a UUID) opened: (server, guest, [GuestChannel
    ...]) in offer order."""
    from hvkvm.vmbus.server import VmbusServer
    server = VmbusServer(part)
    for v in vsps:
        server.add_vsp(v)
    guest = FakeGuest(part)
    offers = guest.connect()
    assert len(offers) == len(vsps)
    channels = []
    for offer in offers:
        assert offer.offer.if_type.to_uuid() == if_type
        channels.append(guest.open(offer, ring_pages=ring_pages))
    return server, guest, channels
