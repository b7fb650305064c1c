"""A fake storvsc VSC in Python: drives the storvsc VSP over a fake guest's channel the way
Linux's hv_storvsc does (handshake, SRBs as in-band or GPA-direct packets, completions by
trans_id), on real guest RAM. Tests, the kill -9 durability child and benchmarks share it.

Also: :class:`PlanePartition`, a :class:`fakeguest.FakePartition` with the bits a C data plane
needs (MSI routes, irqfds) stubbed, so both planes run without KVM.
"""

from __future__ import annotations

import ctypes
import struct

from fakeguest import FakeGuest, FakePartition, serve_and_open, wait_for
from hvkvm.vmbus import wire as w
from hvkvm.vmbus.ring import VM_PKT_COMP
from hvkvm.vsp import scsi
from hvkvm.vsp import storvsc_wire as sw

PAGE = 4096
#: Where the fake guest keeps data buffers (above the rings the fake guest allocates).
DATA_GPA = 0x400000


class _Routes:
    def __init__(self):
        self.routes = {}

    def add(self, address, data):
        gsi = 24 + len(self.routes)
        self.routes[gsi] = (address, data)
        return gsi

    def update(self, gsi, address, data):
        self.routes[gsi] = (address, data)

    def remove(self, gsi):
        self.routes.pop(gsi, None)


class _Vm:
    def irqfd(self, fd, gsi, *a):
        pass

    def irqfd_deassign(self, fd, gsi):
        pass


class PlanePartition(FakePartition):
    """FakePartition + stub MSI routing and irqfds: enough for a C data plane (its interrupts
    then go nowhere; the fake guest polls its ring)."""

    def __init__(self, memory: int = 32 << 20):
        super().__init__(memory)
        self.msi_routes = _Routes()
        self.vm = _Vm()


def cdb_bytes(*parts) -> bytes:
    return bytes(parts)


def read10(lba, blocks, flags=0):
    return struct.pack(">BBIBHB", 0x28, flags, lba, 0, blocks, 0)


def write10(lba, blocks, flags=0):
    return struct.pack(">BBIBHB", 0x2A, flags, lba, 0, blocks, 0)


def read16(lba, blocks, flags=0):
    return struct.pack(">BBQIBB", 0x88, flags, lba, blocks, 0, 0)


def write16(lba, blocks, flags=0):
    return struct.pack(">BBQIBB", 0x8A, flags, lba, blocks, 0, 0)


def read6(lba, blocks):
    return struct.pack(">BBHBB", 0x08, (lba >> 16) & 0x1F, lba & 0xFFFF, blocks & 0xFF, 0)


def write6(lba, blocks):
    return struct.pack(">BBHBB", 0x0A, (lba >> 16) & 0x1F, lba & 0xFFFF, blocks & 0xFF, 0)


def sync10(lba=0, blocks=0):
    return struct.pack(">BBIBHB", 0x35, 0, lba, 0, blocks, 0)


def sync16(lba=0, blocks=0):
    return struct.pack(">BBQIBB", 0x91, 0, lba, blocks, 0, 0)


def inquiry(evpd=0, page=0, alloc=255):
    return struct.pack(">BBBHB", 0x12, evpd, page, alloc, 0)


def read_capacity10():
    return bytes([0x25] + [0] * 9)


def read_capacity16(alloc=32):
    return struct.pack(">BBQIBB", 0x9E, 0x10, 0, alloc, 0, 0)


def mode_sense6(page=0x3F, pc=0, dbd=0, subpage=0, alloc=255):
    return bytes([0x1A, 0x08 if dbd else 0, (pc << 6) | page, subpage, alloc, 0])


def mode_sense10(page=0x3F, pc=0, dbd=0, llbaa=0, subpage=0, alloc=512):
    return struct.pack(">BBBBBBBHB", 0x5A, (0x08 if dbd else 0) | (0x10 if llbaa else 0),
                       (pc << 6) | page, subpage, 0, 0, 0, alloc, 0)


def report_luns(select=0, alloc=4096):
    return struct.pack(">BBBBBBIBB", 0xA0, 0, select, 0, 0, 0, alloc, 0, 0)


def unmap(param_len, anchor=0):
    return struct.pack(">BBIBHB", 0x42, anchor, 0, 0, param_len, 0)


def unmap_params(ranges):
    body = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    return struct.pack(">HH4x", 6 + len(body), len(body)) + body


def tur():
    return bytes(6)


class Completion:
    """A completion as the guest sees it."""

    def __init__(self, pkt):
        self.trans_id = pkt.trans_id
        self.type = pkt.type
        self.raw = bytes(pkt.payload)
        self.packet = sw.vstor_packet.from_buffer_copy(self.raw[:64].ljust(64, b"\0"))

    @property
    def status(self):
        return self.packet.status

    @property
    def srb(self):
        return self.packet.vm_srb

    @property
    def sense(self) -> bytes:
        return bytes(self.srb.sense_data[:self.srb.sense_info_length])

    @property
    def sense_key(self):
        s = self.sense
        return (s[2] & 0x0F, s[12], s[13]) if len(s) >= 14 else None


class StorGuest:
    """The guest side of one storvsc channel."""

    def __init__(self, part, guest: FakeGuest, ch, data_gpa: int = DATA_GPA):
        self.part = part
        self.mem = part.memory
        self.guest = guest
        self.ch = ch
        self.data_gpa = data_gpa
        self.next_id = 1
        self.size = 64
        self.version = None

    # -- packets --------------------------------------------------------------------------

    def post(self, payload: bytes, trans_id: int | None = None, ranges=None) -> int | None:
        """Write one request (GPA-direct when ``ranges``); returns its trans_id, None if full."""
        if trans_id is None:
            trans_id = self.next_id
            self.next_id += 1
        out = self.ch.out
        if ranges:
            ok = out.write_gpa_direct(ranges, payload, trans_id=trans_id)
        else:
            ok = out.write(payload, trans_id=trans_id, completion_requested=True)
        if not ok:
            return None
        if out.commit():
            self.ch.kick()
        return trans_id

    def recv(self, timeout: float = 10.0) -> Completion:
        pkt = self.ch.recv(timeout)
        assert pkt is not None, "no completion from the VSP"
        assert pkt.type == VM_PKT_COMP, f"packet type {pkt.type}, not a completion"
        return Completion(pkt)

    def call(self, payload: bytes, ranges=None) -> Completion:
        tid = self.post(payload, ranges=ranges)
        assert tid is not None, "ring full"
        c = self.recv()
        assert c.trans_id == tid
        return c

    def op(self, operation: int, size: int | None = None, **fields) -> Completion:
        p = sw.vstor_packet()
        p.operation = operation
        p.flags = sw.REQUEST_COMPLETION_FLAG
        for k, v in fields.items():
            if k == "version":
                p.version.major_minor = v
            else:
                setattr(p, k, v)
        return self.call(bytes(p)[:size or self.size])

    def handshake(self, versions=(sw.VMSTOR_PROTO_VERSION_WIN10, sw.VMSTOR_PROTO_VERSION_WIN8_1,
                                  sw.VMSTOR_PROTO_VERSION_WIN8)):
        """Linux's storvsc_channel_init; returns the QUERY_PROPERTIES completion."""
        c = self.op(sw.VSTOR_OPERATION_BEGIN_INITIALIZATION)
        assert (c.packet.operation, c.status) == (sw.VSTOR_OPERATION_COMPLETE_IO, 0)
        for v in versions:
            c = self.op(sw.VSTOR_OPERATION_QUERY_PROTOCOL_VERSION, version=v)
            assert c.packet.operation == sw.VSTOR_OPERATION_COMPLETE_IO
            if c.status == 0:
                self.version = v
                break
        assert self.version is not None, "no protocol version accepted"
        self.size = sw.packet_size(self.version)
        props = self.op(sw.VSTOR_OPERATION_QUERY_PROPERTIES)
        assert props.status == 0
        c = self.op(sw.VSTOR_OPERATION_END_INITIALIZATION)
        assert c.status == 0
        return props

    # -- SRBs -----------------------------------------------------------------------------

    def srb_packet(self, cdb: bytes, length: int = 0, data_in: int = sw.READ_TYPE, lun: int = 0,
                   target: int = 0, path: int = 0, sense_len: int = 20) -> bytes:
        p = sw.vstor_packet()
        p.operation = sw.VSTOR_OPERATION_EXECUTE_SRB
        p.flags = sw.REQUEST_COMPLETION_FLAG
        s = p.vm_srb
        s.length = ctypes.sizeof(sw.vmscsi_request)
        s.path_id, s.target_id, s.lun = path, target, lun
        s.cdb_length = len(cdb)
        s.sense_info_length = sense_len
        s.data_in = data_in
        s.data_transfer_length = length
        ctypes.memmove(ctypes.addressof(s) + sw.vmscsi_request.cdb.offset, bytes(cdb), len(cdb))
        s.time_out_value = 60
        return bytes(p)[:self.size]

    @staticmethod
    def ranges_for(gpa: int, length: int):
        """One GPA range covering [gpa, gpa+length)."""
        first, last = gpa // PAGE, (gpa + length - 1) // PAGE
        return [(length, gpa % PAGE, list(range(first, last + 1)))]

    def srb(self, cdb: bytes, length: int = 0, data: bytes | None = None, gpa: int | None = None,
            ranges=None, dtl: int | None = None, **kw) -> tuple[Completion, bytes]:
        """One SRB; ``data`` is written to the buffer first (a data-out command). Returns the
        completion and the buffer's bytes afterwards."""
        gpa = self.data_gpa if gpa is None else gpa
        if data is not None:
            length = len(data)
            self.mem.write(gpa, data)
        elif length:
            self.mem.fill(gpa, length, 0xEE)
        if length and ranges is None:
            ranges = self.ranges_for(gpa, length)
        direction = sw.WRITE_TYPE if data is not None else \
            (sw.READ_TYPE if length else sw.UNKNOWN_TYPE)
        pkt = self.srb_packet(cdb, length if dtl is None else dtl, direction, **kw)
        c = self.call(pkt, ranges=ranges)
        return c, (self.mem.read(gpa, length) if length else b"")

    def ok(self, cdb: bytes, length: int = 0, **kw) -> bytes:
        """An SRB that must succeed; returns the data it transferred."""
        c, data = self.srb(cdb, length, **kw)
        assert c.status == 0, f"vstor status {c.status:#x}"
        assert (c.srb.srb_status, c.srb.scsi_status) == (sw.SRB_STATUS_SUCCESS, 0), \
            f"srb {c.srb.srb_status:#x} scsi {c.srb.scsi_status:#x} sense {c.sense.hex()}"
        return data[:c.srb.data_transfer_length]

    def check(self, cdb: bytes, length: int = 0, **kw) -> tuple[int, int, int]:
        """An SRB that must end in CHECK CONDITION; returns (key, asc, ascq)."""
        c, _ = self.srb(cdb, length, **kw)
        assert c.status == 0
        assert c.srb.scsi_status == scsi.CHECK_CONDITION, \
            f"srb {c.srb.srb_status:#x} scsi {c.srb.scsi_status:#x}"
        assert c.srb.srb_status == sw.SRB_STATUS_ERROR | sw.SRB_STATUS_AUTOSENSE_VALID
        assert c.srb.data_transfer_length == 0
        assert c.sense[0] == 0x70 and c.srb.sense_info_length == 18
        return c.sense_key


def open_storvsc(part, vsps, ring_pages: int = 8):
    """A VMBus server on ``part`` offering ``vsps``, a fake guest connected, every storvsc
    channel opened: (server, [StorGuest ...]) in offer order."""
    server, guest, channels = serve_and_open(part, vsps, w.HV_SCSI_GUID, ring_pages)
    return server, [StorGuest(part, guest, ch, DATA_GPA + i * (4 << 20))
                    for i, ch in enumerate(channels)]


def plane_of(vsp, sg: StorGuest):
    """The VSP's channel state for a guest channel."""
    return vsp.channels[sg.ch.offer.child_relid]


def wait_plane(vsp, sg: StorGuest, timeout=5.0) -> bool:
    """After the handshake: wait until the C plane serves the channel."""
    return wait_for(lambda: plane_of(vsp, sg).plane is not None, timeout)
