"""Initial CPU state: 64-bit long mode, 32-bit protected mode (PVH) and 16-bit real mode.

The functions fill ``kvm_sregs``/``kvm_regs`` structures read from a vCPU and, for long mode, write
the identity page tables, GDT and TSS into the host's boot-data area of guest RAM
(``guest_images/PROTOCOL.md``: 0x1000-0x7fff). The hidden segment state is set to what a real CPU
would hold after loading the matching descriptors, so VT-x entry checks pass as well as kvm_pvm's.
"""

from __future__ import annotations

import struct

from ..kvm import abi
from ..memory import GuestMemory

GDT_GPA = 0x1000
TSS_GPA = 0x1800
PML4_GPA = 0x4000
PDPT_GPA = 0x5000
PD_GPA = 0x6000   # four 2 MiB-page directories (0x6000-0x9fff): the low 4 GiB, MMIO hole included
PD_COUNT = 4
TSS_LIMIT = 0x67

SEL_CODE64 = 0x08
SEL_DATA = 0x10
SEL_CODE32 = 0x18
SEL_TSS = 0x20
SEL_USER_DATA = 0x30 | 3
SEL_USER_CODE64 = 0x38 | 3

CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

RFLAGS_RESERVED = 1 << 1

# Segment descriptor types (S=1 code/data, S=0 system).
TYPE_DATA_RW_ACCESSED = 0x3
TYPE_CODE_RX_ACCESSED = 0xB
TYPE_TSS_BUSY = 0xB


def _descriptor(base: int, limit: int, access: int, flags: int) -> int:
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40) |
            (((limit >> 16) & 0xF) << 48) | (flags << 52) | (((base >> 24) & 0xFF) << 56))


def gdt_bytes() -> bytes:
    """The boot GDT: null, 64-bit code, flat data, 32-bit code, a 16-byte 64-bit TSS, then
    ring-3 data (0x30) and ring-3 64-bit code (0x38)."""
    entries = [
        0,
        _descriptor(0, 0xFFFFF, 0x9B, 0xA),   # 0x08 code64: P, S, code RX accessed; G, L
        _descriptor(0, 0xFFFFF, 0x93, 0xC),   # 0x10 data: P, S, RW accessed; G, D/B
        _descriptor(0, 0xFFFFF, 0x9B, 0xC),   # 0x18 code32: G, D/B
        _descriptor(TSS_GPA, TSS_LIMIT, 0x8B, 0x0),  # 0x20 TSS (busy), low half
        TSS_GPA >> 32,                                 #      high half of the base
        _descriptor(0, 0xFFFFF, 0xF3, 0xC),   # 0x30 user data: P, DPL3, S, RW accessed
        _descriptor(0, 0xFFFFF, 0xFB, 0xA),   # 0x38 user code64: P, DPL3, S, RX accessed; L
    ]
    return b"".join(struct.pack("<Q", e) for e in entries)


def segment(selector: int, base: int, limit: int, type_: int, *, s: int = 1, dpl: int = 0,
            db: int = 0, l: int = 0, g: int = 0, present: int = 1) -> "abi.kvm_segment":
    """A ``kvm_segment`` with its hidden state filled in."""
    seg = abi.kvm_segment()
    seg.base, seg.limit, seg.selector, seg.type = base, limit, selector, type_
    seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.avl = present, dpl, db, s, l, g, 0
    seg.unusable = 0 if present else 1
    return seg


def _flat(sregs, code, data, tr) -> None:
    sregs.cs = code
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(sregs, name, data)
    sregs.tr = tr
    ldt = segment(0, 0, 0xFFFF, 0x2, s=0)
    sregs.ldt = ldt


def write_long_mode_tables(memory: GuestMemory, user: bool = False) -> None:
    """Identity page tables (2 MiB pages, low 4 GiB), the GDT and an empty TSS.

    ``user`` makes every page user-accessible (host-built probes that drop to ring 3).
    """
    u = 0x4 if user else 0
    memory.fill(PML4_GPA, 0x1000)
    memory.fill(PDPT_GPA, 0x1000)
    memory.write_u64(PML4_GPA, PDPT_GPA | 0x3 | u)          # present, writable
    for i in range(PD_COUNT):
        pd = PD_GPA + i * 0x1000
        memory.write_u64(PDPT_GPA + i * 8, pd | 0x3 | u)
        memory.write(pd, b"".join(struct.pack("<Q", ((i * 512 + j) << 21) | 0x83 | u |
                                              (0x18 if i == 3 else 0))  # PCD|PWT in the hole
                                  for j in range(512)))  # present, writable, 2 MiB page
    memory.write(GDT_GPA, gdt_bytes())
    memory.fill(TSS_GPA, TSS_LIMIT + 1)


def setup_long_mode(sregs, regs, memory: GuestMemory, entry: int, stack: int, arg: int) -> None:
    """64-bit long mode at ``entry`` with paging on (identity), ``RDI = RBX = arg``."""
    write_long_mode_tables(memory)
    code = segment(SEL_CODE64, 0, 0xFFFFFFFF, TYPE_CODE_RX_ACCESSED, l=1, g=1)
    data = segment(SEL_DATA, 0, 0xFFFFFFFF, TYPE_DATA_RW_ACCESSED, db=1, g=1)
    tr = segment(SEL_TSS, TSS_GPA, TSS_LIMIT, TYPE_TSS_BUSY, s=0)
    _flat(sregs, code, data, tr)
    sregs.gdt.base, sregs.gdt.limit = GDT_GPA, len(gdt_bytes()) - 1
    sregs.idt.base, sregs.idt.limit = 0, 0
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
    sregs.cr3 = PML4_GPA
    sregs.cr4 = CR4_PAE
    sregs.efer = EFER_LME | EFER_LMA | EFER_SCE
    _zero_regs(regs)
    regs.rip, regs.rsp, regs.rdi, regs.rbx = entry, stack, arg, arg


def setup_protected_mode(sregs, regs, entry: int, ebx: int, memory: GuestMemory | None = None) -> None:
    """32-bit flat protected mode, paging off: the PVH entry state (``EBX`` = start info)."""
    if memory is not None:
        memory.write(GDT_GPA, gdt_bytes())
        memory.fill(TSS_GPA, TSS_LIMIT + 1)
    code = segment(SEL_CODE32, 0, 0xFFFFFFFF, TYPE_CODE_RX_ACCESSED, db=1, g=1)
    data = segment(SEL_DATA, 0, 0xFFFFFFFF, TYPE_DATA_RW_ACCESSED, db=1, g=1)
    tr = segment(SEL_TSS, TSS_GPA, TSS_LIMIT, TYPE_TSS_BUSY, s=0)
    _flat(sregs, code, data, tr)
    sregs.gdt.base, sregs.gdt.limit = GDT_GPA, len(gdt_bytes()) - 1
    sregs.idt.base, sregs.idt.limit = 0, 0
    sregs.cr0 = CR0_PE | CR0_ET
    sregs.cr3 = 0
    sregs.cr4 = 0
    sregs.efer = 0
    _zero_regs(regs)
    regs.rip, regs.rbx = entry, ebx


def setup_real_mode(sregs, regs, cs: int, ip: int, sp: int = 0x7000) -> None:
    """16-bit real mode at ``cs:ip`` (for raw binaries)."""
    code = segment(cs, cs << 4, 0xFFFF, TYPE_CODE_RX_ACCESSED)
    data = segment(0, 0, 0xFFFF, TYPE_DATA_RW_ACCESSED)
    tr = segment(0, 0, 0xFFFF, TYPE_TSS_BUSY, s=0)
    _flat(sregs, code, data, tr)
    sregs.gdt.base, sregs.gdt.limit = 0, 0xFFFF
    sregs.idt.base, sregs.idt.limit = 0, 0x3FF
    sregs.cr0 = CR0_ET
    sregs.cr3 = sregs.cr4 = sregs.efer = 0
    _zero_regs(regs)
    regs.rip, regs.rsp = ip, sp


def _zero_regs(regs) -> None:
    for name, _ in regs._fields_:
        setattr(regs, name, 0)
    regs.rflags = RFLAGS_RESERVED
