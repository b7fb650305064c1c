"""The storvsc VSP end to end with a fake storvsc guest on real guest RAM and rings.

Every test that takes the ``rig`` fixture runs twice: with the Python data plane and with the C
data plane (``csrc/hvr_storage.c``, which takes the channel over after the handshake). The fake
guest speaks Linux's hv_storvsc protocol (``storvsc_guest.py``); where KVM would deliver the
guest's kicks through an ioeventfd, it writes the channel's eventfd itself. The C plane's
interrupts go to stub irqfds (``PlanePartition``); a KVM test at the end runs both planes in a
real partition.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fakeguest import wait_for
from storvsc_guest import (PAGE, PlanePartition, StorGuest, inquiry, mode_sense6, mode_sense10,
                           open_storvsc, plane_of, read6, read10, read16, read_capacity10,
                           read_capacity16, report_luns, sync10, sync16, tur, unmap,
                           unmap_params, wait_plane, write6, write10, write16)
from hvkvm.memory import GuestMemory
from hvkvm.vsp import scsi
from hvkvm.vsp import storvsc_wire as sw
from hvkvm.vsp.disk import Disk, create_disk
from hvkvm.vsp.storvsc import CStorage, StorvscVsp

DISK = 1 << 20                 # 2048 sectors
LAST = DISK // 512 - 1
MAX_XFER = 1 << 20

ILLEGAL_OPCODE = (0x5, 0x20, 0x00)
INVALID_FIELD = (0x5, 0x24, 0x00)
OUT_OF_RANGE = (0x5, 0x21, 0x00)
WRITE_PROTECT = (0x7, 0x27, 0x00)


def pattern(seed: int, n: int) -> bytes:
    """n bytes, different for every seed and offset (8-byte words: seed, index)."""
    words = (n + 7) // 8
    return b"".join(struct.pack("<II", seed, i) for i in range(words))[:n]


@dataclass
class Rig:
    part: object
    server: object
    vsps: list
    guests: list
    disks: list
    paths: list
    plane: str
    extra: list = field(default_factory=list)

    @property
    def g(self) -> StorGuest:
        return self.guests[0]

    @property
    def vsp(self) -> StorvscVsp:
        return self.vsps[0]

    def file_bytes(self, i: int, offset: int, n: int) -> bytes:
        with open(self.paths[i], "rb") as f:
            f.seek(offset)
            return f.read(n)


@pytest.fixture(params=["python", "c"])
def plane(request):
    return request.param


@pytest.fixture
def rig(tmp_path, plane):
    """rig(...) -> Rig: disks, a StorvscVsp per controller, a fake guest past the handshake."""
    made = []

    def make(sizes=(DISK,), readonly=False, direct=False, controllers=1, ring_pages=8,
             handshake=True, memory=32 << 20, luns_per_controller=1, io="uring"):
        paths, disks = [], []
        for i, size in enumerate(sizes):
            p = tmp_path / f"disk{len(made)}_{i}.img"
            create_disk(p, size)
            paths.append(p)
            disks.append(Disk(p, readonly=readonly, direct=direct))
        vsps = []
        for c in range(controllers):
            mine = disks[c * luns_per_controller:(c + 1) * luns_per_controller]
            vsps.append(StorvscVsp(mine, plane=plane, max_transfer_bytes=MAX_XFER, spin_us=20,
                                   io=io))
        part = PlanePartition(memory)
        server, guests = open_storvsc(part, vsps, ring_pages)
        r = Rig(part, server, vsps, guests, disks, paths, plane)
        made.append(r)
        if handshake:
            for v, g in zip(vsps, guests):
                g.handshake()
                if plane == "c":
                    assert wait_plane(v, g), plane_of(v, g).plane_error
        return r

    yield make
    for r in reversed(made):
        r.server.close()
        for g in r.guests:
            g.ch.close()
        for d in r.disks + r.extra:
            d.close()
        r.part.close()


# ------------------------------------------------------------------------------------------
# The protocol
# ------------------------------------------------------------------------------------------

def test_handshake_as_linux_does_it(rig):
    r = rig(handshake=False)
    g = r.g
    props = g.handshake()
    assert g.version == sw.VMSTOR_PROTO_VERSION_WIN10
    p = props.packet.storage_channel_properties
    assert (p.max_channel_cnt, p.flags, p.max_transfer_bytes) == (0, 0, MAX_XFER)
    assert len(props.raw) == 64 and props.packet.operation == sw.VSTOR_OPERATION_COMPLETE_IO
    ch = plane_of(r.vsp, g)
    if r.plane == "c":
        assert wait_plane(r.vsp, g)
        assert ch.stats()["plane"] == "c"
    else:
        assert ch.plane is None
    # the data path works and the completions still echo trans_id, 64 bytes
    c, _ = g.srb(tur())
    assert (c.status, c.srb.srb_status, len(c.raw)) == (0, sw.SRB_STATUS_SUCCESS, 64)


def test_version_fallback_and_pre_win8_short_packets(rig):
    r = rig(handshake=False)
    g = r.g
    assert g.op(sw.VSTOR_OPERATION_BEGIN_INITIALIZATION, size=48).status == 0
    bad = g.op(sw.VSTOR_OPERATION_QUERY_PROTOCOL_VERSION, size=48, version=0x0700)
    assert bad.status == sw.STATUS_REVISION_MISMATCH and len(bad.raw) == 48
    ok = g.op(sw.VSTOR_OPERATION_QUERY_PROTOCOL_VERSION, size=48,
              version=sw.VMSTOR_PROTO_VERSION_WIN7)
    assert ok.status == 0 and len(ok.raw) == 48
    g.version, g.size = sw.VMSTOR_PROTO_VERSION_WIN7, 48
    props = g.op(sw.VSTOR_OPERATION_QUERY_PROPERTIES)
    assert len(props.raw) == 48
    assert props.packet.storage_channel_properties.max_transfer_bytes == MAX_XFER
    assert g.op(sw.VSTOR_OPERATION_END_INITIALIZATION).status == 0
    if r.plane == "c":
        assert wait_plane(r.vsp, g)
    data = pattern(7, 4096)
    g.ok(write10(3, 8), data=data)
    c, got = g.srb(read10(3, 8), 4096)
    assert len(c.raw) == 48 and got == data
    # the sense buffer of pre-win8 guests is 18 bytes
    c, _ = g.srb(read10(LAST + 1, 1), 512, sense_len=0x12)
    assert c.srb.sense_info_length == 18 and c.sense_key == OUT_OF_RANGE
    # a 64-byte request is fine too (longer than needed); a 40-byte one is not
    assert len(g.call(g.srb_packet(tur()) + bytes(16)).raw) == 48
    short = g.call(g.srb_packet(tur())[:40])
    assert short.status == sw.STATUS_INVALID_PARAMETER
    assert short.srb.srb_status == sw.SRB_STATUS_INVALID_REQUEST


def test_operations_out_of_order_and_unknown(rig):
    r = rig(handshake=False)
    g = r.g
    early = g.call(g.srb_packet(tur()))
    assert early.status == sw.STATUS_INVALID_DEVICE_STATE
    assert early.srb.srb_status == sw.SRB_STATUS_INVALID_REQUEST
    assert g.op(sw.VSTOR_OPERATION_END_INITIALIZATION).status == sw.STATUS_INVALID_DEVICE_STATE
    # Nothing of the handshake counts before BEGIN_INITIALIZATION (Linux always sends it first).
    assert g.op(sw.VSTOR_OPERATION_QUERY_PROPERTIES).status == sw.STATUS_INVALID_DEVICE_STATE
    g.handshake()
    if r.plane == "c":
        assert wait_plane(r.vsp, g)
    for op in (sw.VSTOR_OPERATION_BEGIN_INITIALIZATION, sw.VSTOR_OPERATION_QUERY_PROPERTIES,
               sw.VSTOR_OPERATION_QUERY_PROTOCOL_VERSION,
               sw.VSTOR_OPERATION_END_INITIALIZATION):
        assert g.op(op).status == sw.STATUS_INVALID_DEVICE_STATE, op
    for op in (sw.VSTOR_OPERATION_RESET_BUS, sw.VSTOR_OPERATION_RESET_LUN,
               sw.VSTOR_OPERATION_RESET_ADAPTER):
        assert g.op(op).status == 0
    for op in (sw.VSTOR_OPERATION_CREATE_SUB_CHANNELS, sw.VSTOR_OPERATION_FCHBA_DATA, 99):
        c = g.op(op)
        assert c.status == sw.STATUS_NOT_SUPPORTED and c.packet.operation == 1
    tiny = g.call(bytes(16))
    assert tiny.status == sw.STATUS_INVALID_PARAMETER and len(tiny.raw) == 64
    assert g.ok(read_capacity10(), 8)      # still serving


# ------------------------------------------------------------------------------------------
# SCSI commands
# ------------------------------------------------------------------------------------------

def test_inquiry_standard_and_vpd_pages(rig):
    r = rig()
    g, disk = r.g, r.disks[0]
    std = g.ok(inquiry(alloc=255), 255)
    assert len(std) == 36 and std[0] == 0x00 and std[2] == 0x06 and std[3] & 0x0F == 2
    assert std[4] == 31 and std[7] & 0x02                     # CmdQue
    assert std[8:16] == b"HVKVM   " and std[16:32] == b"Virtual Disk    "
    assert g.ok(inquiry(alloc=5), 255) == std[:5]
    assert g.ok(inquiry(alloc=255), 20) == std[:20]            # buffer shorter than alloc
    p0 = g.ok(inquiry(1, 0x00), 255)
    assert p0[:4] == b"\x00\x00\x00\x06" and list(p0[4:]) == [0, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    p80 = g.ok(inquiry(1, 0x80), 255)
    assert p80[1] == 0x80 and p80[4:].decode() == disk.serial
    p83 = g.ok(inquiry(1, 0x83), 255)
    assert p83[1] == 0x83 and struct.unpack(">H", p83[2:4])[0] == len(p83) - 4
    assert disk.naa in p83 and b"HVKVM   " + disk.serial.encode() in p83
    b0 = g.ok(inquiry(1, 0xB0), 255)
    assert len(b0) == 64 and struct.unpack(">I", b0[8:12])[0] == MAX_XFER // 512
    assert struct.unpack(">II", b0[20:28]) == (scsi.MAX_UNMAP_LBA_COUNT,
                                               scsi.MAX_UNMAP_DESCRIPTORS)
    b1 = g.ok(inquiry(1, 0xB1), 255)
    assert struct.unpack(">H", b1[4:6])[0] == 1                # non-rotating
    b2 = g.ok(inquiry(1, 0xB2), 255)
    assert b2[5] & 0x80 and b2[5] & 0x04                       # LBPU, LBPRZ


def test_capacity_and_mode_sense(rig):
    r = rig()
    g = r.g
    assert g.ok(read_capacity10(), 8) == struct.pack(">II", LAST, 512)
    rc16 = g.ok(read_capacity16(), 32)
    assert struct.unpack(">QI", rc16[:12]) == (LAST, 512) and rc16[14] & 0xC0 == 0xC0
    assert g.ok(read_capacity16(alloc=12), 32) == rc16[:12]
    ms6 = g.ok(mode_sense6(), 255)
    assert ms6[0] == len(ms6) - 1 and ms6[3] == 8 and ms6[2] == 0x10          # DPOFUA, not WP
    assert struct.unpack(">I", ms6[4:8])[0] == DISK // 512
    pages = ms6[12:]
    assert pages[0] == 0x08 and pages[2] & 0x04 and pages[20] == 0x0A        # WCE; control
    assert g.ok(mode_sense6(page=0x08, dbd=1), 255)[4:] == pages[:20]
    assert g.ok(mode_sense6(page=0x0A, dbd=1), 255)[4:] == pages[20:]
    assert g.ok(mode_sense6(page=0x3F, subpage=0xFF, dbd=1), 255)[4:] == pages
    changeable = g.ok(mode_sense6(pc=1, dbd=1), 255)[4:]
    assert changeable[:2] == b"\x08\x12" and not any(changeable[2:20])
    ms10 = g.ok(mode_sense10(), 512)
    assert struct.unpack(">H", ms10[:2])[0] == len(ms10) - 2 and ms10[7] == 8
    assert ms10[16:] == pages
    long = g.ok(mode_sense10(llbaa=1), 512)
    assert long[4] == 1 and long[7] == 16 and struct.unpack(">Q", long[8:16])[0] == DISK // 512
    assert g.ok(mode_sense10(alloc=6), 512) == ms10[:6]
    assert g.check(mode_sense6(pc=3), 255) == (0x5, 0x39, 0x00)
    assert g.check(mode_sense6(page=0x01), 255) == INVALID_FIELD
    assert g.check(mode_sense10(page=0x08, subpage=0x05), 255) == INVALID_FIELD


def test_read_write_6_10_16_land_in_the_image(rig):
    r = rig()
    g = r.g
    cases = [(write6, read6, 0, 1), (write6, read6, 9, 0), (write10, read10, 300, 7),
             (write16, read16, 1000, 64), (write10, read16, LAST - 3, 4)]
    for seed, (wr, rd, lba, n) in enumerate(cases):
        blocks = n or 256                                    # READ/WRITE(6): 0 means 256
        data = pattern(seed + 1, blocks * 512)
        g.ok(wr(lba, n), data=data)
        assert r.file_bytes(0, lba * 512, len(data)) == data
        assert g.ok(rd(lba, n), len(data)) == data
    g.ok(read10(5, 0))                                       # zero blocks: nothing moves
    g.ok(write16(5, 0))


def test_report_luns_and_missing_luns(rig):
    r = rig(sizes=(DISK, DISK // 2), luns_per_controller=2)
    g = r.g
    rl = g.ok(report_luns(), 64)
    assert rl == struct.pack(">II", 16, 0) + bytes([0, 0] + [0] * 6) + bytes([0, 1] + [0] * 6)
    assert g.ok(report_luns(select=1), 64) == bytes(8)
    assert g.check(report_luns(select=3), 64) == INVALID_FIELD
    assert g.check(report_luns(alloc=2), 64) == INVALID_FIELD
    assert g.ok(read_capacity10(), 8, lun=1) == struct.pack(">II", DISK // 1024 - 1, 512)
    g.ok(write10(0, 1), data=pattern(5, 512), lun=1)
    assert r.file_bytes(1, 0, 512) == pattern(5, 512) and r.file_bytes(0, 0, 512) == bytes(512)
    # LUN 7 and target 1 do not exist: INQUIRY says so (qualifier 3), the rest is INVALID_LUN
    for addr in ({"lun": 7}, {"target": 1}, {"path": 1}):
        assert g.ok(inquiry(), 36, **addr)[0] == 0x7F
        c, _ = g.srb(tur(), **addr)
        assert (c.status, c.srb.srb_status, c.srb.scsi_status) == (0, sw.SRB_STATUS_INVALID_LUN, 0)
    assert g.check(inquiry(1, 0x80), 255, lun=7) == (0x5, 0x25, 0x00)
    c, _ = g.srb(report_luns(), 64, target=1)
    assert c.srb.srb_status == sw.SRB_STATUS_INVALID_LUN
    assert g.ok(report_luns(), 64, lun=9) == rl             # any LUN of the target answers


def test_unsupported_commands_and_bad_fields_are_check_conditions(rig):
    r = rig()
    g = r.g
    for op in (0x1B, 0x03, 0x55, 0xFF, 0x41, 0x93):          # START STOP, REQUEST SENSE, ...
        assert g.check(bytes([op]) + bytes(15)) == ILLEGAL_OPCODE, hex(op)
    assert g.check(inquiry(0, 0x80), 255) == INVALID_FIELD   # page without EVPD
    assert g.check(inquiry(1, 0x99), 255) == INVALID_FIELD
    assert g.check(inquiry(2, 0), 255) == INVALID_FIELD      # CmdDt
    assert g.check(read10(0, 1, flags=0x20), 512) == INVALID_FIELD   # RDPROTECT
    assert g.check(write16(0, 1, flags=0x40), data=bytes(512)) == INVALID_FIELD
    sai = bytearray(read_capacity16())
    sai[1] = 0x11
    assert g.check(bytes(sai), 32) == INVALID_FIELD
    assert g.check(read10(0, MAX_XFER // 512 + 1), MAX_XFER) == INVALID_FIELD  # > max transfer
    assert g.check(read10(0, 1)[:6], 512) == INVALID_FIELD   # CDB shorter than READ(10)'s
    assert g.check(unmap(24, anchor=1), data=unmap_params([(0, 1)])) == INVALID_FIELD


def test_boundary_lbas(rig):
    r = rig()
    g = r.g
    last = pattern(99, 512)
    g.ok(write10(LAST, 1), data=last)
    assert g.ok(read16(LAST, 1), 512) == last and r.file_bytes(0, LAST * 512, 512) == last
    assert g.check(read10(LAST + 1, 1), 512) == OUT_OF_RANGE
    assert g.check(read10(LAST, 2), 1024) == OUT_OF_RANGE
    assert g.check(write10(LAST + 1, 1), data=bytes(512)) == OUT_OF_RANGE
    assert g.check(write6(LAST, 2), data=bytes(1024)) == OUT_OF_RANGE
    g.ok(read10(LAST + 1, 0))                                # LBA == capacity, no blocks: fine
    assert g.check(read10(LAST + 2, 0)) == OUT_OF_RANGE
    assert g.check(read16((1 << 64) - 1, 1), 512) == OUT_OF_RANGE   # no wrap-around
    assert g.check(read16((1 << 64) - 1, 0xFFFFFFFF), MAX_XFER) == INVALID_FIELD
    assert g.check(sync16(LAST, 2)) == OUT_OF_RANGE
    g.ok(sync16(LAST, 1))
    assert g.check(unmap(24), data=unmap_params([(LAST, 2)])) == OUT_OF_RANGE
    assert r.file_bytes(0, LAST * 512, 512) == last          # the refused UNMAP did nothing


def test_unmap_punches_holes_that_read_back_as_zeros(rig):
    r = rig()
    g = r.g
    data = pattern(3, 256 * 1024)
    g.ok(write10(0, 512), data=data)
    g.ok(sync10())
    before = os.stat(r.paths[0]).st_blocks
    assert before >= 512
    params = unmap_params([(0, 256), (384, 64)])
    g.ok(unmap(len(params)), data=params)
    assert os.stat(r.paths[0]).st_blocks < before
    got = g.ok(read10(0, 512), 256 * 1024)
    assert got[:128 * 1024] == bytes(128 * 1024)
    assert got[128 * 1024:192 * 1024] == data[128 * 1024:192 * 1024]
    assert got[192 * 1024:224 * 1024] == bytes(32 * 1024)
    assert got[224 * 1024:] == data[224 * 1024:]
    g.ok(unmap(0))                                            # empty parameter list
    assert g.check(unmap(4), data=bytes(4)) == (0x5, 0x1A, 0x00)
    many = unmap_params([(i, 1) for i in range(scsi.MAX_UNMAP_DESCRIPTORS + 1)])
    assert g.check(unmap(len(many)), data=many) == (0x5, 0x26, 0x00)
    big = unmap_params([(0, scsi.MAX_UNMAP_LBA_COUNT + 1)])
    assert g.check(unmap(len(big)), data=big) == (0x5, 0x26, 0x00)


def test_synchronize_cache_and_fua_flush(rig):
    r = rig()
    g = r.g
    flushes = []
    if r.plane == "python":
        disk = r.disks[0]
        real = disk.flush
        disk.flush = lambda: (flushes.append(1), real())[1]

    def count():
        if r.plane == "python":
            return len(flushes)
        return plane_of(r.vsp, g).storage.stats["flushes"]

    g.ok(write10(0, 8), data=pattern(1, 4096))
    assert count() == 0
    g.ok(sync10())
    g.ok(sync16(0, 8))
    assert count() == 2
    g.ok(write10(8, 8, flags=0x08), data=pattern(2, 4096))   # FUA
    g.ok(write16(16, 8, flags=0x08), data=pattern(3, 4096))
    assert count() == 4
    g.ok(read10(8, 8, flags=0x08), 4096)                      # FUA on a read: nothing to flush
    assert count() == 4


# ------------------------------------------------------------------------------------------
# Buffers, rings, queue depth
# ------------------------------------------------------------------------------------------

def test_buffers_crossing_pages_and_split_ranges(rig):
    r = rig()
    g = r.g
    base = g.data_gpa
    for i, (offset, nbytes) in enumerate([(0x200, 512), (0xE00, 1024), (0x200, 3 * PAGE),
                                          (0xFFF & ~0x1FF, 8192 + 512), (0, 64 * 1024)]):
        data = pattern(10 + i, nbytes)
        gpa = base + offset
        g.ok(write10(64 * i, nbytes // 512), data=data, gpa=gpa)
        assert r.file_bytes(0, 64 * i * 512, nbytes) == data
        g.mem.fill(gpa - 16, nbytes + 32, 0x5A)
        assert g.ok(read10(64 * i, nbytes // 512), nbytes, gpa=gpa) == data
        assert g.mem.read(gpa - 16, 16) == b"\x5a" * 16               # nothing outside
        assert g.mem.read(gpa + nbytes, 16) == b"\x5a" * 16
    # two ranges, pages out of order: the buffer is their concatenation
    data = pattern(77, 3 * PAGE)
    p1, p2, p3 = base // PAGE + 40, base // PAGE + 20, base // PAGE + 30
    ranges = [(PAGE + 512, 3584, [p1, p2]), (2 * PAGE - 512, 0, [p3, p3 + 1])]
    g.mem.write(p1 * PAGE + 3584, data[:512])
    g.mem.write(p2 * PAGE, data[512:PAGE + 512])
    g.mem.write(p3 * PAGE, data[PAGE + 512:])
    c = g.call(g.srb_packet(write10(500, 24), 3 * PAGE, sw.WRITE_TYPE), ranges=ranges)
    assert (c.status, c.srb.srb_status) == (0, sw.SRB_STATUS_SUCCESS)
    assert r.file_bytes(0, 500 * 512, 3 * PAGE) == data
    for p in (p1, p2, p3):
        g.mem.fill(p * PAGE, 2 * PAGE if p == p3 else PAGE, 0)
    c = g.call(g.srb_packet(read10(500, 24), 3 * PAGE), ranges=ranges)
    assert c.srb.data_transfer_length == 3 * PAGE
    assert g.mem.read(p1 * PAGE + 3584, 512) + g.mem.read(p2 * PAGE, PAGE) + \
        g.mem.read(p3 * PAGE, 2 * PAGE - 512) == data


def test_many_requests_wrap_both_rings(rig):
    r = rig(ring_pages=4)                      # 4 KiB of ring data each way
    g = r.g
    for i in range(300):                       # ~130 bytes each way per request: many wraps
        lba = (i * 7) % 2000
        data = pattern(i, 512 * (1 + i % 3))
        g.ok(write10(lba, len(data) // 512), data=data, gpa=g.data_gpa + (i % 5) * 0x300)
        assert g.ok(read10(lba, len(data) // 512), len(data)) == data


@pytest.mark.parametrize("direct", [False, True], ids=["page_cache", "o_direct"])
@pytest.mark.parametrize("depth", [1, 8, 64, "max"])
def test_queue_depth(rig, depth, direct):
    """Many requests in flight: the guest posts before reading completions; with "max" it posts
    until its send ring is full and does not read, so the VSP fills the guest's receive ring and
    waits for room (pending_send_sz) - each request still gets exactly one completion. On
    O_DIRECT the C plane's requests are outstanding in io_uring meanwhile: the room for their
    completions is reserved, so the full ring makes new requests wait, never a finished one."""
    r = rig(ring_pages=8, direct=direct)
    g = r.g
    total = 256 if depth == "max" else depth
    limit = 10**9 if depth == "max" else depth
    slot = 4096
    want = {}
    pending = set()
    posted = 0
    while posted < total or pending:
        while posted < total and len(pending) < limit:
            lba = posted * 8
            data = pattern(posted, slot)
            gpa = g.data_gpa + posted * slot
            g.mem.write(gpa, data)
            tid = g.post(g.srb_packet(write10(lba, 8), slot, sw.WRITE_TYPE),
                         ranges=g.ranges_for(gpa, slot))
            if tid is None:
                break
            want[tid] = (lba, data)
            pending.add(tid)
            posted += 1
        if depth == "max" and posted < total:
            # nothing read yet: the VSP must stop at a full receive ring, not lose anything
            assert wait_for(lambda: g.ch.out.free < 2 * 300 or g.ch.inn.available > 2048, 5)
        c = g.recv()
        assert c.trans_id in pending, f"unexpected or duplicate completion {c.trans_id}"
        pending.discard(c.trans_id)
        assert (c.status, c.srb.srb_status, c.srb.data_transfer_length) == \
            (0, sw.SRB_STATUS_SUCCESS, slot)
    for tid, (lba, data) in want.items():
        assert r.file_bytes(0, lba * 512, slot) == data
    assert len(want) == total
    if depth == "max" and r.plane == "c":
        # The C plane outruns this Python reader, so it always meets a full receive ring. The
        # Python plane may or may not, depending on the machine's load: for it the test proves
        # only that every request got exactly one completion and landed (above).
        st = r.vsp.stats()[g.ch.offer.child_relid]
        assert st["plane_full_waits"] > 0, st


# ------------------------------------------------------------------------------------------
# Many requests outstanding in the C plane's worker pool (io="threads")
# ------------------------------------------------------------------------------------------

#: Each test below runs on the Python plane once (it has no I/O backends; ``io`` is ignored
#: there) and on the C plane once per backend: a parametrization over (plane, io) rather than
#: the cross product, so no combination exists only to be skipped.
plane_and_io = pytest.mark.parametrize(
    "plane, io", [("python", "threads"), ("c", "threads"), ("c", "uring")],
    ids=["python", "c-threads", "c-uring"])


def _post_batch(g: StorGuest, reqs) -> list[int]:
    """Write every (cdb, gpa, length, data_in) request, then publish them with one commit and
    one kick: the plane sees them all at once."""
    out, tids = g.ch.out, []
    for cdb, gpa, length, kind in reqs:
        tid = g.next_id
        g.next_id += 1
        assert out.write_gpa_direct(g.ranges_for(gpa, length), g.srb_packet(cdb, length, kind),
                                    trans_id=tid)
        tids.append(tid)
    if out.commit():
        g.ch.kick()
    return tids


def _sizes_at_qd32() -> list[int]:
    # big and small interleaved: the small ones behind a big one tend to finish first; the
    # 128 KiB ones are past the C plane's inline limit even from the page cache
    return [(128 << 10) if i % 8 == 0 else (64 << 10) if i % 4 == 0 else (4 << 10) * (1 + i % 3)
            for i in range(32)]


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
@plane_and_io
def test_qd32_completions_in_any_order_carry_byte_exact_data(rig, direct, io):
    """32 writes of different sizes posted at once, then 32 reads of them at once, on an O_DIRECT
    and a page-cache disk: every completion matches one outstanding trans_id exactly once (the C
    pool completes them in whatever order the workers finish; the order is not asserted) and
    every byte read back equals what was written, in guest RAM and in the file. With the C plane
    on O_DIRECT all 32 were in the pool together (inflight_max); from the page cache they are
    served inline (inline_io) or, on a miss, by the pool (async)."""
    r = rig(direct=direct, sizes=(4 << 20,), io=io)
    g = r.g
    sizes = _sizes_at_qd32()
    lbas, lba = [], 0
    for n in sizes:
        lbas.append(lba)
        lba += n // 512 + 8          # gaps: no two requests touch the same sectors
    wbase, rbase = g.data_gpa, g.data_gpa + (4 << 20)
    woff = [sum(sizes[:i]) for i in range(32)]
    datas = [pattern(1000 + i, n) for i, n in enumerate(sizes)]
    for i in range(32):
        g.mem.write(wbase + woff[i], datas[i])
        g.mem.write(rbase + woff[i], b"\xee" * sizes[i])
    for phase, base, op, kind in (("write", wbase, write16, sw.WRITE_TYPE),
                                  ("read", rbase, read16, sw.READ_TYPE)):
        tids = _post_batch(g, [(op(lbas[i], sizes[i] // 512), base + woff[i], sizes[i], kind)
                               for i in range(32)])
        pending = dict(zip(tids, range(32)))
        order = []
        while pending:
            c = g.recv()
            assert c.trans_id in pending, f"{phase}: unexpected or repeated trans_id {c.trans_id}"
            i = pending.pop(c.trans_id)
            order.append(i)
            assert (c.status, c.srb.srb_status, c.srb.scsi_status,
                    c.srb.data_transfer_length) == (0, sw.SRB_STATUS_SUCCESS, 0, sizes[i]), phase
        assert sorted(order) == list(range(32))
    for i in range(32):
        assert g.mem.read(rbase + woff[i], sizes[i]) == datas[i], f"request {i} read back"
        assert r.file_bytes(0, lbas[i] * 512, sizes[i]) == datas[i], f"request {i} in the file"
    if r.plane == "c":
        st = r.vsp.stats()[g.ch.offer.child_relid]
        assert st["io_mode"] == io
        assert st["inflight"] == 0, st
        if direct:
            assert st["async"] == 64, st          # every O_DIRECT read and write: the pool
            assert st["inflight_max"] == 32, st
        else:
            # page-cache hits inline, the 128 KiB ones and any miss through the pool
            assert st["async"] + st["inline_io"] == 64 and st["async"] >= 8, st


@plane_and_io
def test_overlapping_writes_in_flight_leave_one_of_them_whole(rig, io):
    """Eight 64 KiB writes to the same sectors outstanding at once (no order among them, as in
    SCSI): afterwards the range holds exactly one writer's data, sector by sector (4 KiB pages
    of one write never mixed with torn bytes), and a read returns the file's bytes."""
    r = rig(direct=True, io=io)
    g = r.g
    n = 64 << 10
    datas = [bytes([0x10 + i]) * n for i in range(8)]
    for i in range(8):
        g.mem.write(g.data_gpa + i * n, datas[i])
    tids = _post_batch(g, [(write16(0, n // 512), g.data_gpa + i * n, n, sw.WRITE_TYPE)
                           for i in range(8)])
    got = {g.recv().trans_id for _ in range(8)}
    assert got == set(tids)
    on_disk = r.file_bytes(0, 0, n)
    for off in range(0, n, 512):
        sector = on_disk[off:off + 512]
        assert sector in {d[:512] for d in datas}, f"sector at {off} is torn"
    assert g.ok(read16(0, n // 512), n) == on_disk


@plane_and_io
def test_flush_behind_writes_in_flight_covers_every_acknowledged_write(rig, io):
    """Writes and a SYNCHRONIZE CACHE posted together, then writes acknowledged before a second
    flush: every write acknowledged before that flush completed is in the file when the flush's
    completion arrives, and every flush is answered GOOD."""
    r = rig(direct=True, io=io)
    g = r.g
    n = 8 << 10
    reqs = []
    for i in range(16):
        g.mem.write(g.data_gpa + i * n, pattern(50 + i, n))
        reqs.append((write16(i * 32, n // 512), g.data_gpa + i * n, n, sw.WRITE_TYPE))
    tids = _post_batch(g, reqs)
    sync_tid = g.post(g.srb_packet(sync10()))
    want = set(tids) | {sync_tid}
    while want:
        c = g.recv()
        assert c.trans_id in want and (c.status, c.srb.scsi_status) == (0, 0)
        want.discard(c.trans_id)
    g.ok(sync10())
    for i in range(16):
        assert r.file_bytes(0, i * 32 * 512, n) == pattern(50 + i, n)
    if r.plane == "c":
        st = r.vsp.stats()[g.ch.offer.child_relid]
        assert st["flushes"] >= 2 and st["async"] >= 18, st


@plane_and_io
def test_closing_with_io_in_flight_leaves_guest_ram_alone(rig, io):
    """32 reads of 256 KiB outstanding on an O_DIRECT disk when the channel closes: close()
    returns only after the pool cancelled the queued ones and finished the running ones, so guest
    RAM written after close stays as written (no worker lands data late) and nothing is left
    outstanding."""
    r = rig(direct=True, sizes=(16 << 20,), ring_pages=32, io=io)
    g = r.g
    n = 256 << 10
    create = pattern(7, 16 << 20)
    with open(r.paths[0], "r+b") as f:
        f.write(create)
    _post_batch(g, [(read16(i * (n // 512), n // 512), g.data_gpa + i * n, n, sw.READ_TYPE)
                    for i in range(32)])
    relid = g.ch.offer.child_relid
    if r.plane == "c":
        # the plane took all 32 into its pool (the 256 KiB O_DIRECT reads then take a while)
        assert wait_for(lambda: r.vsp.stats()[relid]["async"] == 32, 10), r.vsp.stats()
    r.server.close()                         # closes the channel with the reads in flight
    if r.plane == "c":
        st = r.vsp.closed_stats[-1]
        assert st["inflight"] == 0, st
        assert st["async"] == 32 and st["cancelled"] <= 32, st
    assert relid not in r.vsp.channels
    g.mem.write(g.data_gpa, b"\x5a" * (32 * n))
    import time
    time.sleep(0.2)                          # a straggling worker would overwrite it now
    assert g.mem.read(g.data_gpa, 32 * n) == b"\x5a" * (32 * n)


def test_sync_io_mode_serves_one_at_a_time(rig):
    """io="sync": no pool; the C plane runs every command on its thread (never more than one
    outstanding) with the same results."""
    r = rig(direct=True, io="sync")
    g = r.g
    n = 4096
    for i in range(8):
        g.mem.write(g.data_gpa + i * n, pattern(90 + i, n))
    tids = _post_batch(g, [(write16(i * 8, 8), g.data_gpa + i * n, n, sw.WRITE_TYPE)
                           for i in range(8)])
    assert [g.recv().trans_id for _ in range(8)] == tids     # one at a time: in order
    for i in range(8):
        assert r.file_bytes(0, i * n, n) == pattern(90 + i, n)
    if r.plane == "c":
        st = r.vsp.stats()[g.ch.offer.child_relid]
        assert (st["io_mode"], st["async"], st["inflight_max"]) == ("sync", 0, 0), st


# ------------------------------------------------------------------------------------------
# Disks
# ------------------------------------------------------------------------------------------

def test_read_only_disk(rig, tmp_path):
    r = rig(readonly=True)
    g = r.g
    for cdb in (write6(0, 1), write10(0, 1), write16(0, 1)):
        assert g.check(cdb, data=bytes(512)) == WRITE_PROTECT
    params = unmap_params([(0, 8)])
    assert g.check(unmap(len(params)), data=params) == WRITE_PROTECT
    assert g.ok(read10(0, 8), 4096) == bytes(4096)
    g.ok(sync10())
    assert g.ok(mode_sense6(), 255)[2] & 0x80                  # WP
    assert g.ok(read_capacity16(), 32)[14] == 0                 # no LBPME: no UNMAP
    assert g.ok(inquiry(1, 0xB2), 255)[5] & 0x80 == 0
    assert r.file_bytes(0, 0, 4096) == bytes(4096)
    # read-only sharing is allowed, a writer is not
    other = Disk(r.paths[0], readonly=True)
    r.extra.append(other)
    with pytest.raises(Exception, match="locked by another partition"):
        Disk(r.paths[0])


def test_direct_disk_with_aligned_and_unaligned_guest_buffers(rig):
    """O_DIRECT: page-aligned guest buffers go straight to the file, a buffer at an odd offset
    in guest RAM goes through the bounce buffer; the bytes are the same either way."""
    r = rig(direct=True)
    g = r.g
    for i, offset in enumerate([0, 0x200, 0x10, 0x7]):
        data = pattern(40 + i, 8192)
        gpa = g.data_gpa + 0x10000 * i + offset
        g.ok(write10(16 * i, 16), data=data, gpa=gpa)
        assert r.file_bytes(0, 16 * i * 512, 8192) == data
        assert g.ok(read10(16 * i, 16), 8192, gpa=gpa + 0x8000) == data
    if r.plane == "c":
        assert plane_of(r.vsp, g).storage.stats["bounced"] == 4     # offsets 0x10, 0x7
    else:
        assert r.disks[0]._bounce is not None
    params = unmap_params([(0, 16)])
    g.ok(unmap(len(params)), data=params, gpa=g.data_gpa + 3)
    assert g.ok(read10(0, 16), 8192) == bytes(8192)


def test_two_controllers_two_disks(rig):
    r = rig(sizes=(DISK, 2 * DISK), controllers=2)
    g0, g1 = r.guests
    assert g0.ok(read_capacity10(), 8) == struct.pack(">II", LAST, 512)
    assert g1.ok(read_capacity10(), 8) == struct.pack(">II", 2 * DISK // 512 - 1, 512)
    for i in range(20):
        g0.ok(write10(i, 1), data=pattern(i, 512))
        g1.ok(write10(i, 1), data=pattern(1000 + i, 512))
    for i in range(20):
        assert r.file_bytes(0, i * 512, 512) == pattern(i, 512)
        assert r.file_bytes(1, i * 512, 512) == pattern(1000 + i, 512)
    if r.plane == "c":
        assert plane_of(r.vsps[0], g0).plane is not plane_of(r.vsps[1], g1).plane


def test_a_disk_written_by_one_run_is_read_by_another(tmp_path):
    path = tmp_path / "persist.img"
    create_disk(path, DISK)
    for run, plane in enumerate(["c", "python", "c"]):
        d = Disk(path)
        part = PlanePartition()
        vsp = StorvscVsp(d, plane=plane)
        server, (g,) = open_storvsc(part, [vsp])
        try:
            g.handshake()
            if run:
                assert g.ok(read10(100, 16), 8192) == pattern(run - 1, 8192)
            g.ok(write10(100, 16), data=pattern(run, 8192))
            g.ok(sync10())
        finally:
            server.close()
            g.ch.close()
            d.close()
            part.close()


# ------------------------------------------------------------------------------------------
# Hostile requests: refused, nothing touched
# ------------------------------------------------------------------------------------------

def _refused(c):
    assert c.status == sw.STATUS_INVALID_PARAMETER, hex(c.status)
    assert (c.srb.srb_status, c.srb.scsi_status, c.srb.data_transfer_length) == \
        (sw.SRB_STATUS_INVALID_REQUEST, 0, 0)


def test_buffers_outside_ram_or_disagreeing_with_the_request_are_refused(rig):
    r = rig()
    g = r.g
    ram_pages = g.mem.size // PAGE
    base = g.data_gpa
    good = base // PAGE
    g.mem.fill(base, 2 * PAGE, 0x33)
    write = g.srb_packet(write10(0, 2), 1024, sw.WRITE_TYPE)
    read = g.srb_packet(read10(0, 8), 4096)
    for pfns in ([ram_pages], [ram_pages + 5], [1 << 40], [(1 << 52) - 1], [1 << 60],
                 [good, ram_pages]):
        n = len(pfns)
        _refused(g.call(write, ranges=[(1024 if n == 1 else PAGE + 512, 0 if n == 1 else 3584,
                                        pfns)]))
        _refused(g.call(read, ranges=[(4096, 0, pfns[:1] * 1)]) if n == 1 else
                 g.call(g.srb_packet(read10(0, 8), PAGE + 512), ranges=[(PAGE + 512, 3584,
                                                                          pfns)]))
    assert g.mem.read(base, 2 * PAGE) == b"\x33" * 2 * PAGE    # a good first page untouched
    assert r.file_bytes(0, 0, 1024) == bytes(1024)              # nothing written
    rng = g.ranges_for(base, 4096)
    _refused(g.call(g.srb_packet(read10(0, 8), 8192), ranges=rng))        # ranges < length
    _refused(g.call(g.srb_packet(read10(0, 8), 2048), ranges=rng))        # ranges > length
    _refused(g.call(g.srb_packet(read10(0, 1), 512)))                     # length, no buffer
    _refused(g.call(g.srb_packet(read10(0, 8), 512), ranges=g.ranges_for(base, 512)))  # CDB > buf
    big = MAX_XFER + PAGE
    _refused(g.call(g.srb_packet(read10(0, 8), big), ranges=g.ranges_for(base, big)))
    _refused(g.call(g.srb_packet(unmap(24), 16, sw.WRITE_TYPE), ranges=g.ranges_for(base, 16)))
    many = [(512, 0, [good + i]) for i in range(33)]
    _refused(g.call(g.srb_packet(read10(0, 33), 33 * 512), ranges=many))
    for cdb_len in (0, 17):
        pkt = bytearray(g.srb_packet(tur()))
        pkt[12 + 8] = cdb_len
        _refused(g.call(bytes(pkt)))
    # a transfer-page packet is not a storvsc request
    assert g.ch.out.write_xfer_pages(1, [(512, 0)], g.srb_packet(tur()), trans_id=4242)
    if g.ch.out.commit():
        g.ch.kick()
    c = g.recv()
    assert c.trans_id == 4242
    _refused(c)
    # and the channel still works
    g.ok(write10(0, 1), data=pattern(1, 512))
    assert g.ok(read10(0, 1), 512) == pattern(1, 512)


def test_a_corrupt_ring_stops_its_channel_only(rig):
    r = rig(controllers=2, sizes=(DISK, DISK))
    g0, g1 = r.guests
    g0.ok(write10(0, 1), data=pattern(1, 512))
    # the guest's send ring: write_index unaligned (a hostile or broken guest)
    hdr = g0.ch.maps[0].address
    import ctypes
    ctypes.c_uint32.from_address(hdr).value = 13
    g0.ch.kick()
    ch0 = plane_of(r.vsps[0], g0)
    if r.plane == "c":
        assert wait_for(lambda: ch0.plane.error != 0)
    else:
        assert wait_for(lambda: ch0.broken is not None)
        assert any("relid" in e for e in r.server.errors)
    for i in range(10):
        g1.ok(write10(i, 1), data=pattern(i, 512))
        assert g1.ok(read10(i, 1), 512) == pattern(i, 512)


def _fuzz_requests(seed: int, ram: int, base: int):
    """A fixed random mix of SRBs: real commands with random fields, random bytes, buffers in
    and out of RAM, lengths that agree and disagree, other LUNs and targets."""
    import random
    rnd = random.Random(seed)
    ops = [0x00, 0x08, 0x0A, 0x12, 0x1A, 0x25, 0x28, 0x2A, 0x35, 0x42, 0x5A, 0x88, 0x8A, 0x91,
           0x9E, 0xA0, 0x03, 0x1B, 0xFF]
    out = []
    for i in range(250):
        cdb = bytearray(rnd.randbytes(16))
        cdb[0] = rnd.choice(ops)
        if rnd.random() < 0.7:              # plausible LBAs and counts
            if cdb[0] in (0x28, 0x2A):
                cdb[2:6] = rnd.randrange(0, 2100).to_bytes(4, "big")
                cdb[7:9] = rnd.randrange(0, 20).to_bytes(2, "big")
                cdb[1] &= 0x1F
            elif cdb[0] in (0x88, 0x8A):
                cdb[2:10] = rnd.randrange(0, 2100).to_bytes(8, "big")
                cdb[10:14] = rnd.randrange(0, 20).to_bytes(4, "big")
                cdb[1] &= 0x1F
        cdb_len = rnd.choice([6, 10, 12, 16, rnd.randrange(0, 18)])
        length = rnd.choice([0, 512, 4096, 10240, rnd.randrange(0, 70000)])
        kind = rnd.random()
        if length == 0 or kind < 0.1:
            ranges = None
        elif kind < 0.75:                    # a good buffer at a random offset
            gpa = base + rnd.randrange(0, 0x100000)
            ranges = StorGuest.ranges_for(gpa, length)
        else:                                 # a page outside RAM, or lengths that disagree
            gpa = base + rnd.randrange(0, 0x1000)
            (count, off, pfns), = StorGuest.ranges_for(gpa, length)
            if rnd.random() < 0.5:
                pfns[rnd.randrange(len(pfns))] = rnd.choice([ram // PAGE, ram // PAGE + 77,
                                                             1 << 45, (1 << 64) - 1])
            else:
                count = max(1, count + rnd.choice([-513, -1, 1, 4096]))
                pfns = pfns + [pfns[-1] + 1]
            ranges = [(count, off, pfns)]
        addr = rnd.choice([{}, {}, {}, {"lun": 1}, {"target": 1}])
        out.append((bytes(cdb), cdb_len, length, ranges, addr, rnd.randbytes(64)))
    return out


def test_random_requests_get_one_answer_each_and_both_planes_agree(tmp_path):
    """250 random SRBs against both planes, each on its own fresh disk and the same guest RAM
    contents: every request gets exactly one completion, the completions are the same bytes on
    both planes, and so are the disks afterwards."""
    answers, images = {}, {}
    for plane in ("python", "c"):
        path = tmp_path / f"fuzz_{plane}.img"
        create_disk(path, DISK)
        d = Disk(path)
        part = PlanePartition()
        vsp = StorvscVsp(d, plane=plane, max_transfer_bytes=MAX_XFER)
        server, (g,) = open_storvsc(part, [vsp], ring_pages=16)
        try:
            g.handshake()
            if plane == "c":
                assert wait_plane(vsp, g)
            base = g.data_gpa
            got = []
            for cdb, cdb_len, length, ranges, addr, fill in _fuzz_requests(1, part.memory.size,
                                                                           base):
                g.mem.write(base, fill * (0x110000 // 64))
                pkt = bytearray(g.srb_packet(cdb[:16], length, **addr))
                pkt[12 + 8] = cdb_len
                c = g.call(bytes(pkt), ranges=ranges)
                got.append((c.raw, g.mem.read(base, 0x110000) if length else b""))
            g.ok(write10(0, 1), data=pattern(5, 512))             # still serving
            answers[plane] = got
            st = vsp.stats()[g.ch.offer.child_relid]
            assert "broken" not in st, st
        finally:
            server.close()
            g.ch.close()
            d.close()
            part.close()
        images[plane] = path.read_bytes()
    kinds = {}
    for i, (a, b) in enumerate(zip(answers["python"], answers["c"])):
        assert a[0] == b[0], f"request {i}: completion differs"
        assert a[1] == b[1], f"request {i}: guest buffer differs"
        srb = sw.vstor_packet.from_buffer_copy(a[0][:64]).vm_srb
        kinds[srb.srb_status] = kinds.get(srb.srb_status, 0) + 1
    assert images["python"] == images["c"]
    # the mix reaches every outcome: success, CHECK CONDITION, refused, missing LUN
    assert all(kinds.get(k, 0) >= 10 for k in (sw.SRB_STATUS_SUCCESS, 0x84,
                                              sw.SRB_STATUS_INVALID_REQUEST,
                                              sw.SRB_STATUS_INVALID_LUN)), kinds


# ------------------------------------------------------------------------------------------
# C emulation == Python emulation
# ------------------------------------------------------------------------------------------

def _commands():
    cdbs = [tur(), inquiry(), inquiry(alloc=7), inquiry(0, 1), inquiry(2, 0), read_capacity10(),
            read_capacity16(), read_capacity16(alloc=9), report_luns(), report_luns(1),
            report_luns(4), report_luns(alloc=3), mode_sense6(), mode_sense6(dbd=1),
            mode_sense6(page=8), mode_sense6(page=0xA, pc=1), mode_sense6(pc=2),
            mode_sense6(pc=3), mode_sense6(page=5), mode_sense6(subpage=1),
            mode_sense6(alloc=3), mode_sense10(), mode_sense10(llbaa=1), mode_sense10(dbd=1),
            mode_sense10(alloc=9), sync10(), sync16(0, 5), sync16(4095, 2), bytes([0x1B] * 6),
            bytes([0xC0] + [0] * 15), bytes([0x28] * 6), read10(0, 8, 0x20), read10(0, 0),
            read16(4096, 0), read16(4097, 0), read6(0, 0), read10(0, 4096),
            bytes([0x9E, 0x11] + [0] * 14), bytes([0x12, 0, 0, 0, 255]), unmap(0),
            unmap(4), unmap(24, anchor=1)]
    cdbs += [inquiry(1, p) for p in (0, 0x80, 0x83, 0xB0, 0xB1, 0xB2, 0x81, 0xFF)]
    return cdbs


@pytest.mark.parametrize("readonly", [False, True])
def test_c_emulation_answers_byte_for_byte_like_python(tmp_path, readonly):
    """hvr_storage_exec_cdb (C) and ScsiTarget.execute (Python) on the same disks: same status,
    sense, transferred bytes and buffer, for every command shape, LUN and buffer length."""
    paths = [tmp_path / "a.img", tmp_path / "b.img"]
    for p in paths:
        create_disk(p, 2 << 20)
    disks = [Disk(p, readonly=True) for p in paths] if readonly else \
        [Disk(paths[0]), Disk(paths[1], readonly=True)]
    mem = GuestMemory(2 << 20)
    vsp = StorvscVsp(disks, plane="c", max_transfer_bytes=MAX_XFER)
    cs = CStorage(vsp, mem, sw.VMSTOR_PROTO_VERSION_WIN10)
    try:
        n = 0
        for lun in (0, 1, 3):
            for cdb in _commands():
                for buflen in (0, 5, 36, 255, 4096):
                    pybuf, cbuf = bytearray(b"\xAA" * buflen), bytearray(b"\xAA" * buflen)
                    try:
                        want = vsp.target.execute(0, 0, lun, cdb, scsi.DataBuffer.of(pybuf))
                    except scsi.InvalidRequest:
                        want = "invalid"
                    try:
                        got = cs.exec_cdb(0, 0, lun, cdb, cbuf)
                    except scsi.InvalidRequest:
                        got = "invalid"
                    assert got == want, f"lun {lun} cdb {cdb.hex()} buf {buflen}"
                    assert cbuf == pybuf, f"lun {lun} cdb {cdb.hex()} buf {buflen}"
                    n += 1
        for tgt in ((1, 0), (0, 1)):
            buf_p, buf_c = bytearray(64), bytearray(64)
            assert cs.exec_cdb(*tgt, 0, inquiry(), buf_c) == \
                vsp.target.execute(*tgt, 0, inquiry(), scsi.DataBuffer.of(buf_p))
            assert buf_c == buf_p
        assert n > 500
    finally:
        cs.close()
        for d in disks:
            d.close()
        mem.close()


# ------------------------------------------------------------------------------------------
# Durability: an acknowledged flush survives kill -9 of the host process
# ------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from storvsc_guest import PlanePartition, open_storvsc, write10, sync10
    from hvkvm.vsp.disk import Disk
    from hvkvm.vsp.storvsc import StorvscVsp
    path, plane, seed, fua = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "fua"
    d = Disk(path, direct=sys.argv[4] == "sync_o_direct")
    part = PlanePartition()
    vsp = StorvscVsp(d, plane=plane)
    server, (g,) = open_storvsc(part, [vsp])
    g.handshake()
    for i in range(64):
        lba = (seed * 64 + i) % 2048
        data = (seed.to_bytes(8, "little") + lba.to_bytes(8, "little")) * 32
        g.ok(write10(lba, 1, flags=0x08 if fua and i == 63 else 0), data=data)
    if not fua:
        g.ok(sync10())
    print("acked", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("mode", ["sync", "fua", "sync_o_direct"])
def test_acknowledged_writes_survive_kill_9(tmp_path, plane, mode):
    """A child process serves a fake guest that writes 64 sectors, flushes (SYNCHRONIZE CACHE,
    or FUA on the last write) and gets the acknowledgement; the parent SIGKILLs it at once and
    reads the image: every acknowledged sector is there. Several rounds on one image. With
    sync_o_direct the disk is O_DIRECT, so the C plane's writes and the flush run in its worker
    pool (acknowledged only once the worker's pwritev / fdatasync returned).

    (kill -9 loses what the process held, not the page cache: this proves nothing is held back
    in the VSP. Power-loss durability rests on the fdatasync the flush does.)"""
    rounds = int(os.environ.get("HVKVM_KILL9_ROUNDS", "3"))
    path = tmp_path / "durable.img"
    create_disk(path, DISK)
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(Path(__file__).parent)))
    for seed in range(1, rounds + 1):
        child = subprocess.Popen([sys.executable, str(script), str(path), plane, str(seed), mode],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()
            assert line.strip() == "acked", child.stderr.read()
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
            child.stderr.close()
        with open(path, "rb") as f:
            for i in range(64):
                lba = (seed * 64 + i) % 2048
                f.seek(lba * 512)
                want = (seed.to_bytes(8, "little") + lba.to_bytes(8, "little")) * 32
                assert f.read(512) == want, f"round {seed}: LBA {lba} lost"


# ------------------------------------------------------------------------------------------
# In a real partition
# ------------------------------------------------------------------------------------------

@pytest.mark.kvm
def test_both_planes_in_a_real_partition(make_partition, tmp_path, plane):
    """A KVM partition (irqfd MSI routes, ioeventfds) whose vCPU never runs; the fake guest
    drives storvsc, and the C plane's interrupts set the channel's event flag in the SIEFP."""
    from fakeguest import SIEFP, FakeGuest
    from hvkvm.partition.config import PartitionConfig
    path = tmp_path / "kvm.img"
    create_disk(path, DISK)
    disk = Disk(path)
    try:
        vsp = StorvscVsp(disk, plane=plane, spin_us=20)
        part = make_partition(PartitionConfig(raw=b"\xeb\xfe", raw_mode="long", hyperv=True,
                                              vsps=[vsp]))
        guest = FakeGuest(part)
        (offer,) = guest.connect()
        g = StorGuest(part, guest, guest.open(offer))
        try:
            g.handshake()
            if plane == "c":
                assert wait_plane(vsp, g)
            for i in range(32):
                g.ok(write10(i * 8, 8), data=pattern(i, 4096))
            for i in range(32):
                assert g.ok(read10(i * 8, 8), 4096) == pattern(i, 4096)
            g.ok(sync10())
            flags = int.from_bytes(part.memory.read(SIEFP + 2 * 256, 4), "little")
            assert flags & (1 << offer.child_relid)
            st = vsp.stats()[offer.child_relid]
            assert st["plane"] == plane
            if plane == "c":
                assert st["writes"] == 32 and st["reads"] == 32 and st["flushes"] == 1
        finally:
            g.ch.close()
            part.close()
    finally:
        disk.close()


def test_without_a_siefp_the_c_plane_falls_back_to_python(tmp_path):
    """A guest that never set up the SIEFP page cannot get channel interrupts from a C plane:
    the channel stays on the Python plane (and says why) instead of failing."""
    from hvkvm.hv import synic as hs
    path = tmp_path / "fallback.img"
    create_disk(path, DISK)
    d = Disk(path)
    part = PlanePartition()
    vsp = StorvscVsp(d, plane="c")
    server, (g,) = open_storvsc(part, [vsp])
    try:
        part.hv.wrmsr(0, hs.HV_X64_MSR_SIEFP, 0)
        g.handshake()
        ch = plane_of(vsp, g)
        assert wait_for(lambda: ch.plane_error is not None)
        assert ch.plane is None and "SIEFP" in ch.plane_error
        g.ok(write10(0, 1), data=pattern(1, 512))
        assert g.ok(read10(0, 1), 512) == pattern(1, 512)
        assert vsp.stats()[g.ch.offer.child_relid]["plane"] == "python"
    finally:
        server.close()
        g.ch.close()
        d.close()
        part.close()
