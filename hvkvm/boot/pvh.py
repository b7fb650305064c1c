"""The PVH boot protocol: ``struct hvm_start_info``, the command line and the memory map.

Layouts follow Xen's ``xen/include/public/arch-x86/hvm/start_info.h``; QEMU and Firecracker boot
PVH kernels the same way, so one image boots under all three.
"""

from __future__ import annotations

import struct

from ..memory import MMIO_HOLE_END, MMIO_HOLE_START, GuestMemory

HVM_START_MAGIC = 0x336EC578
HVM_START_INFO_SIZE = 56
HVM_MEMMAP_ENTRY_SIZE = 24

E820_RAM = 1
E820_RESERVED = 2

#: Host boot-data area in guest RAM (guest_images/PROTOCOL.md: 0x1000-0x7fff is the host's).
START_INFO_GPA = 0x2000
MEMMAP_GPA = 0x2100
MEMMAP_MAX = (0x3000 - MEMMAP_GPA) // HVM_MEMMAP_ENTRY_SIZE
CMDLINE_GPA = 0x3000
CMDLINE_MAX = 0x1000  # including the NUL

#: Legacy hole on a PC: VGA, option ROMs, BIOS. Kept out of the RAM map as real firmware does.
LOW_RAM_END = 0xA0000
HIGH_RAM_START = 0x100000


class CmdlineTooLong(ValueError):
    """The command line does not fit the boot-data area."""


def e820_map(memory: GuestMemory) -> list[tuple[int, int, int]]:
    """(addr, size, type) entries describing guest RAM the way PC firmware would."""
    entries = []
    for r in memory.regions:
        if r.gpa == 0:
            entries.append((0, min(r.size, LOW_RAM_END), E820_RAM))
            if r.size > HIGH_RAM_START:
                entries.append((LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, E820_RESERVED))
                entries.append((HIGH_RAM_START, r.size - HIGH_RAM_START, E820_RAM))
        else:
            entries.append((r.gpa, r.size, E820_RAM))
    entries.append((MMIO_HOLE_START, MMIO_HOLE_END - MMIO_HOLE_START, E820_RESERVED))
    return sorted(entries)


def write_start_info(memory: GuestMemory, cmdline: str) -> int:
    """Write hvm_start_info, the command line and the memory map; return the start info's GPA."""
    raw = cmdline.encode()
    if b"\0" in raw:
        raise ValueError("command line contains a NUL byte")
    if len(raw) + 1 > CMDLINE_MAX:
        raise CmdlineTooLong(f"command line is {len(raw)} bytes; at most {CMDLINE_MAX - 1} fit")
    memory.write(CMDLINE_GPA, raw + b"\0")
    entries = e820_map(memory)[:MEMMAP_MAX]
    table = b"".join(struct.pack("<QQII", a, s, t, 0) for a, s, t in entries)
    memory.write(MEMMAP_GPA, table)
    info = struct.pack("<IIIIQQQQII", HVM_START_MAGIC, 1, 0, 0, 0, CMDLINE_GPA, 0,
                       MEMMAP_GPA, len(entries), 0)
    assert len(info) == HVM_START_INFO_SIZE
    memory.write(START_INFO_GPA, info)
    return START_INFO_GPA
