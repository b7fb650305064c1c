"""Write small ELF64 files by hand, good and deliberately broken, for loader tests."""

from __future__ import annotations

import struct

PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4


def make_elf(segments, entry, *, ei_class=2, ei_data=1, machine=62, pvh_entry=None) -> bytes:
    """ELF64 with one PT_LOAD per (paddr, data, memsz, flags) and an optional PVH note."""
    phdrs = []
    blobs = []
    nph = len(segments) + (1 if pvh_entry is not None else 0)
    offset = 64 + 56 * nph
    for paddr, data, memsz, flags in segments:
        offset = (offset + 15) & ~15
        phdrs.append(struct.pack("<IIQQQQQQ", PT_LOAD, flags, offset, paddr, paddr, len(data),
                                 memsz, 16))
        blobs.append((offset, data))
        offset += len(data)
    if pvh_entry is not None:
        offset = (offset + 3) & ~3
        note = struct.pack("<III", 4, 8, 18) + b"Xen\0" + struct.pack("<Q", pvh_entry)
        phdrs.append(struct.pack("<IIQQQQQQ", PT_NOTE, PF_R, offset, 0, 0, len(note), len(note), 4))
        blobs.append((offset, note))
        offset += len(note)
    ident = b"\x7fELF" + bytes([ei_class, ei_data, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, 64, 0, 0, 64, 56, nph,
                                 64, 0, 0)
    out = bytearray(header + b"".join(phdrs))
    for off, data in blobs:
        out += bytes(off - len(out))
        out += data
    return bytes(out)
