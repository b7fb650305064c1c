#!/usr/bin/env python3
"""Write the seed corpus of the libFuzzer harnesses (csrc/fuzz/corpus/<harness>/seed-*).

Each seed is a valid session in the harness's input format (see the harness sources): packets
the parser accepts, SRBs the storage plane executes, an RNDIS bring-up and frames both ways for
the network plane. The fuzzer mutates from there. Run it after changing an input format:

    python3 csrc/fuzz/make_corpus.py
"""

from __future__ import annotations

import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
u8 = lambda v: struct.pack("<B", v & 0xFF)          # noqa: E731
u16 = lambda v: struct.pack("<H", v & 0xFFFF)       # noqa: E731
u32 = lambda v: struct.pack("<I", v & 0xFFFFFFFF)   # noqa: E731
u64 = lambda v: struct.pack("<Q", v & (1 << 64) - 1)  # noqa: E731

INBAND, XFER, GPA, COMP = 6, 7, 9, 11


def packet(ptype: int, payload: bytes, header: bytes = b"", trans_id: int = 1, flags: int = 0,
           start: int = 0) -> bytes:
    """A packet as it sits in the ring: descriptor, header, payload padded to 8, trailer."""
    body = header + payload
    body += b"\0" * (-len(body) % 8)
    off8 = (16 + len(header)) // 8
    len8 = (16 + len(body)) // 8
    return struct.pack("<HHHHQ", ptype, off8, len8, flags, trans_id) + body + u64(start << 32)


# ---- fuzz_ring --------------------------------------------------------------------------------

def ring_seed(cfg: int, pkts: bytes, write_index: int, read_index: int = 0, ops: bytes = b"",
              poke_at: int | None = None) -> bytes:
    out = u8(cfg) + u32(read_index if poke_at is None else poke_at) + u32(read_index)
    out += u32(0) + u32(0) + u32(1)
    # op 0: poke the packets (at most 255 bytes per op)
    at = read_index if poke_at is None else poke_at
    for i in range(0, len(pkts), 255):
        chunk = pkts[i:i + 255]
        out += u8(0) + u16(at + i) + u8(len(chunk)) + chunk
    # op 1: publish write_index
    out += u8(1) + u8(0) + u32(write_index)
    return out + ops


PEEK_READ = (u8(2) + u16(0) + u16(8)) + (u8(3) + u16(0) + u16(16)) + u8(4) + \
    (u8(7) + u8(0) + u8(0) + u8(0) + u16(24) + u64(7)) + u8(9) + (u8(6) + u8(0x0b))


def ring_seeds() -> dict[str, bytes]:
    inband = packet(INBAND, b"hello, parent!", trans_id=0x1234)
    gpa_hdr = u32(0) + u32(2) + u32(100) + u32(4000) + u64(5) + u64(6) + u32(8192) + u32(0) + \
        u64(7) + u64(8)
    gpa = packet(GPA, b"x" * 24, header=gpa_hdr, flags=1)
    xfer = packet(XFER, b"n" * 40, header=struct.pack("<HBBI", 0xcafe, 0, 0, 2) + u32(60) +
                  u32(0) + u32(60) + u32(1728))
    comp = packet(COMP, u32(1) + u32(0), trans_id=99)
    seeds = {
        "inband": ring_seed(0x04, inband, len(inband), ops=PEEK_READ * 2),
        "gpa_direct": ring_seed(0x05, gpa, len(gpa), ops=PEEK_READ + u8(10) + u16(0) + u16(0)),
        "xfer_comp": ring_seed(0x06, xfer + comp, len(xfer) + len(comp), ops=PEEK_READ * 3),
        "plain_view": ring_seed(0x00, inband + comp, len(inband) + len(comp), ops=PEEK_READ * 2),
    }
    # a packet that wraps around the end of a one-page ring
    start = 4096 - 24
    wrapped = packet(INBAND, b"w" * 40, start=start)
    seeds["wrap"] = ring_seed(0x04, wrapped, (start + len(wrapped)) % 4096, read_index=start,
                              ops=PEEK_READ)
    seeds["wrap_plain"] = ring_seed(0x00, wrapped, (start + len(wrapped)) % 4096,
                                    read_index=start, ops=PEEK_READ)
    return seeds


# ---- fuzz_storage -----------------------------------------------------------------------------

def vstor_srb(cdb: bytes, length: int, data_in: int = 1, lun: int = 0, op: int = 3) -> bytes:
    srb = struct.pack("<HBBBBBBBBBBI", 0x34, 0, 0, 0, 0, 0, lun, len(cdb), 0x14, data_in, 0,
                      length)
    srb += cdb.ljust(16, b"\0") + b"\0" * 16
    return struct.pack("<III", op, 1, 0) + srb


def storage_send_inband(pkt: bytes, op: int = 0, trans: int = 1, drain: int = 1) -> bytes:
    return u8(op) + u8(len(pkt)) + pkt + u8(0) + u8(1) + u64(trans) + u8(drain)


def storage_send_gpa(pkt: bytes, ranges: list[tuple[int, int, list[int]]], trans: int = 2,
                     drain: int = 1) -> bytes:
    out = u8(0) + u8(len(pkt)) + pkt + u8(1) + u8(1) + u8(len(ranges))
    for bc, bo, sels in ranges:
        out += u32(bc) + u16(bo) + u8(len(sels)) + u8(0) + b"".join(u8(s) for s in sels)
    return out + u64(trans) + u8(drain)


def storage_cdb(cdb: bytes, blen: int, lun: int = 0) -> bytes:
    return u8(3) + u8(lun) + u8(0) + u8(len(cdb)) + u16(blen) + cdb


def storage_seeds() -> dict[str, bytes]:
    read10 = bytes([0x28, 0, 0, 0, 0, 16, 0, 0, 8, 0])
    write10 = bytes([0x2a, 0, 0, 0, 0, 32, 0, 0, 8, 0])
    read16 = bytes([0x88, 0] + [0] * 7 + [4] + [0, 0, 0, 16, 0, 0])
    inquiry = bytes([0x12, 0, 0, 0, 36, 0])
    vpd = bytes([0x12, 1, 0x83, 0, 255, 0])
    sync = bytes([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    unmap_cdb = bytes([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0])
    mode = bytes([0x5a, 0, 0x3f, 0, 0, 0, 0, 1, 0, 0])
    cap16 = bytes([0x9e, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0])
    luns = bytes([0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    cfg, lcfg = 0x21, 0x00   # two LUNs, max transfer 8 KiB, WIN10, plain rings
    # third byte: synchronous; or 2 workers (0x1b) or io_uring (0x1f), 4 slots
    sync_io, pool, uring = 0x00, 0x1b, 0x1f
    seeds = {
        "read10_gpa": u8(cfg) + u8(lcfg) + u8(sync_io) + storage_send_gpa(
            vstor_srb(read10, 4096), [(4096, 0, [1])]),
        "write_straddle": u8(cfg) + u8(lcfg) + u8(sync_io) + storage_send_gpa(
            vstor_srb(write10, 4096, data_in=0), [(4096, 100, [2, 3])]),
        "two_ranges": u8(cfg | 0x10) + u8(lcfg) + u8(sync_io) + storage_send_gpa(
            vstor_srb(read16, 2048), [(1024, 0, [0x42]), (1024, 512, [0x43])]),
        "inquiry_sync": u8(cfg) + u8(lcfg) + u8(sync_io) + storage_send_gpa(
            vstor_srb(inquiry, 36), [(36, 8, [4])]) +
        storage_send_inband(vstor_srb(sync, 0, data_in=2), trans=5),
        "cdbs": u8(cfg) + u8(lcfg | 0x01) + u8(sync_io) + b"".join(
            storage_cdb(c, 512) for c in (inquiry, vpd, mode, cap16, luns, unmap_cdb, read10)),
        "handshake_ops": u8(cfg) + u8(lcfg) + u8(sync_io) + b"".join(
            storage_send_inband(struct.pack("<III", op, 1, 0) + b"\0" * 52, op=2, trans=op)
            for op in (7, 9, 10, 8, 4, 5, 6, 13)),
        "old_protocol": u8(0xe0 | 0x01) + u8(0x08) + u8(sync_io) + storage_send_gpa(
            vstor_srb(read10, 4096)[:48], [(4096, 0, [1])]),
        # the worker pool: reads and writes on an O_DIRECT LUN 0 and a page-cache LUN 1, a flush
        "pool_rw_flush": u8(cfg) + u8(lcfg | 0x02) + u8(pool) + b"".join(
            storage_send_gpa(vstor_srb(c, 4096, data_in=d), [(4096, 0, [1 + i])], trans=10 + i,
                             drain=int(i == 4))
            for i, (c, d) in enumerate([(read10, 1), (write10, 0), (read16, 1), (write10, 0),
                                        (read10, 1)])) +
        storage_send_inband(vstor_srb(sync, 0, data_in=2), trans=20),
        "uring_rw_flush": u8(cfg) + u8(lcfg | 0x02) + u8(uring) + b"".join(
            storage_send_gpa(vstor_srb(c, 4096, data_in=d), [(4096, 0, [1 + i])], trans=10 + i,
                             drain=int(i == 4))
            for i, (c, d) in enumerate([(read10, 1), (write10, 0), (read16, 1), (write10, 0),
                                        (read10, 1)])) +
        storage_send_inband(vstor_srb(sync, 0, data_in=2), trans=20),
    }
    return seeds


# ---- fuzz_net ---------------------------------------------------------------------------------

RNDIS_PACKET, RNDIS_INIT, RNDIS_HALT, RNDIS_QUERY, RNDIS_SET, RNDIS_RESET = 1, 2, 3, 4, 5, 6
RNDIS_KEEPALIVE = 8
OID_FILTER, OID_MAC, OID_OFFLOAD = 0x0001010E, 0x01010101, 0xFC01020A


def rndis(mtype: int, body: bytes) -> bytes:
    return u32(mtype) + u32(8 + len(body)) + body


def rndis_packet(frame: bytes) -> bytes:
    return rndis(RNDIS_PACKET, u32(36) + u32(len(frame)) + b"\0" * 28 + frame)


def net_section(off: int, data: bytes) -> bytes:
    assert len(data) <= 255
    return u8(1) + u16(off) + u8(len(data)) + data


def net_nvsp(idx: int, size: int, channel: int, trans: int, kind: int = 0,
             ranges: bytes = b"") -> bytes:
    m = u32(107) + u32(channel) + u32(idx) + u32(size)   # NVSP_MSG1_TYPE_SEND_RNDIS_PKT
    return u8(0) + u8(len(m)) + m + u8(kind) + u8(1) + ranges + u64(trans)


def net_seeds() -> dict[str, bytes]:
    init = rndis(RNDIS_INIT, u32(1) + u32(1) + u32(0) + u32(0x4000))
    query_mac = rndis(RNDIS_QUERY, u32(2) + u32(OID_MAC) + u32(0) + u32(20) + u32(0))
    set_filter = rndis(RNDIS_SET, u32(3) + u32(OID_FILTER) + u32(4) + u32(20) + u32(0) +
                       u32(0x9))
    query_off = rndis(RNDIS_QUERY, u32(4) + u32(OID_OFFLOAD) + u32(8) + u32(20) + u32(0) +
                      struct.pack("<BBH", 0xA7, 3, 0xE0) + u32(0))
    frame = b"\xff" * 6 + b"\x00\x15\x5d\x01\x02\x03" + b"\x08\x06" + b"a" * 28
    pkt = rndis_packet(frame)
    tap_frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + b"b" * 50
    cfg, cfg2 = 0xa0, 0x10 | 0x60 | 0x80 | 0x3     # NVSP 6.1, send buffer 4 x 4096, 5 sections
    s = u8(cfg) + u8(cfg2)
    s += net_section(0, init) + net_nvsp(0, len(init), 1, 1) + u8(6)
    s += net_section(4096, query_mac + set_filter) + \
        net_nvsp(1, len(query_mac + set_filter), 1, 2) + u8(6)
    s += net_section(8192, pkt) + net_nvsp(2, len(pkt), 0, 3) + u8(6)
    s += u8(3) + u16(len(tap_frame)) + tap_frame + u8(5) + u8(1) + u8(6)
    s += u8(4) + u8(0) + u8(4) + u8(1) + u8(7)
    seeds = {"bringup": s}
    # the same bring-up with the RNDIS bytes in guest RAM, sent GPA-direct
    g = u8(cfg) + u8(cfg2 & ~0x10)
    ram = u8(2) + u8(0) + u16(0x1000) + u16(len(init) + len(query_off)) + init + query_off
    rng = u8(1) + u32(len(init) + len(query_off)) + u16(0) + u8(1) + u8(0) + u8(1)
    g += ram + net_nvsp(0xFFFFFFFF, 0, 1, 7, kind=1, ranges=rng) + u8(6) + u8(7)
    seeds["gpa_direct"] = g
    # halt, keepalive, reset and a revoke
    h = u8(cfg) + u8(cfg2)
    ctl = rndis(RNDIS_KEEPALIVE, u32(9)) + rndis(RNDIS_RESET, u32(0)) + rndis(RNDIS_HALT, u32(5))
    h += net_section(0, init) + net_nvsp(0, len(init), 1, 1) + u8(6)
    h += net_section(4096, ctl) + net_nvsp(1, len(ctl), 1, 2) + u8(6)
    h += u8(0) + u8(8) + u32(109) + u32(0xcafe) + u8(0) + u8(0) + u64(4) + u8(6)
    seeds["control"] = h
    return seeds


# ---- fuzz_vblk --------------------------------------------------------------------------------

VIRTQ_NEXT, VIRTQ_WRITE = 1, 2


def vblk_desc(idx: int, off: int, length: int, flags: int, nxt: int, ram1: bool = False) -> bytes:
    """One descriptor rewrite: an address inside RAM0 (mode 2) or RAM1 (mode 1), a u16 length."""
    return u16(idx) + u8(1 if ram1 else 2) + u16(off) + u16(length) + u8(flags) + u16(nxt)


def vblk_round(descs: list[bytes], writes: list[tuple[int, bytes]], heads: list[int],
               avail_flags: int = 0, used_event: int = 0) -> bytes:
    out = u8(len(descs)) + b"".join(descs) + u8(len(writes))
    for off, data in writes:
        out += u16(off) + u8(len(data)) + data
    return out + u8(len(heads)) + b"".join(u16(h) for h in heads) + u8(avail_flags) + \
        u16(used_event)


def vblk_header(rtype: int, sector: int) -> bytes:
    return u32(rtype) + u32(0) + u64(sector)


def vblk_seeds() -> dict[str, bytes]:
    """Queue of 8 with EVENT_IDX (cfg 0x0b): a read; a write, a flush and GET_ID; the same
    through RAM1 on an O_DIRECT disk (cfg 0x2b: unaligned segments take the bounce buffer)."""
    read = vblk_round([vblk_desc(0, 0x3000, 16, VIRTQ_NEXT, 1),
                       vblk_desc(1, 0x4000, 512, VIRTQ_NEXT | VIRTQ_WRITE, 2),
                       vblk_desc(2, 0x5000, 1, VIRTQ_WRITE, 0)],
                      [(0x3000, vblk_header(0, 5))], [0])
    write = vblk_round([vblk_desc(1, 0x4000, 1024, VIRTQ_NEXT, 2)],
                       [(0x3000, vblk_header(1, 7)), (0x4000, b"w" * 200)], [0], used_event=1)
    flush = vblk_round([vblk_desc(0, 0x3000, 16, VIRTQ_NEXT, 2)],
                       [(0x3000, vblk_header(4, 0))], [0], avail_flags=1)
    get_id = vblk_round([vblk_desc(0, 0x3000, 16, VIRTQ_NEXT, 1),
                         vblk_desc(1, 0x4000, 20, VIRTQ_NEXT | VIRTQ_WRITE, 2)],
                        [(0x3000, vblk_header(8, 0))], [0, 0])
    ram1 = vblk_round([vblk_desc(0, 0x100, 16, VIRTQ_NEXT, 1, ram1=True),
                       vblk_desc(1, 0x1001, 1024, VIRTQ_NEXT | VIRTQ_WRITE, 2, ram1=True),
                       vblk_desc(2, 0x2000, 1, VIRTQ_WRITE, 0, ram1=True)], [], [0])
    return {"read": u8(0x0b) + read,
            "write_flush_get_id": u8(0x0b) + read + write + flush + get_id,
            "ram1_direct": u8(0x2b) + ram1}


def main() -> None:
    for name, seeds in (("fuzz_ring", ring_seeds()), ("fuzz_storage", storage_seeds()),
                        ("fuzz_net", net_seeds()), ("fuzz_vblk", vblk_seeds())):
        d = HERE / "corpus" / name
        d.mkdir(parents=True, exist_ok=True)
        for key, data in seeds.items():
            (d / f"seed-{key}").write_bytes(data)
        print(f"{d.relative_to(HERE.parent.parent)}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
