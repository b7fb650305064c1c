"""The KVM x86-64 userspace ABI as ctypes: structs, ioctl numbers and constants.

Everything here is spelled as in the kernel's ``<linux/kvm.h>`` and ``<asm/kvm.h>``: a class is
named after its ``struct`` tag (``kvm_run``, ``kvm_regs``, ...), a field after the kernel's field,
and where the kernel nests an *anonymous* union or struct the class lists it in ``_anonymous_``,
so the kernel's C expressions read the same in Python::

    run.io.port   run.mmio.phys_addr   run.msr.index   run.s.regs.rax   run.internal.data[0]

Nested types that the kernel leaves unnamed (``struct { ... } io;`` inside ``kvm_run``) get a
private class name here (``_kvm_run_io``); only the member name is ABI.

Facts come from the installed uapi headers (linux-libc-dev 6.1 on Debian 12). The test
``tests/test_abi_layout.py`` compiles a C program against ``<linux/kvm.h>`` that prints
``sizeof``/``offsetof``/signedness of every struct and field defined here and the value of every
ioctl number and constant, and fails on any difference: every public struct must be listed in
:data:`KVM_STRUCTS`, and every public upper-case integer must be a macro of the same name and value
in the header. Nothing in this module talks to the kernel; see :mod:`hvkvm.kvm._ioctl`.

Flexible-array structs (``kvm_cpuid2``, ``kvm_msrs``, ``kvm_msr_list``, ``kvm_irq_routing``,
``kvm_signal_mask``, ``kvm_xsave``, ...) are defined with a zero-length trailing array so that
``sizeof`` (and therefore the ioctl numbers) match the kernel; build a usable instance with the
``make_*`` helpers (:func:`make_kvm_cpuid2`, :func:`make_kvm_msrs`, :func:`make_kvm_msr_list`,
:func:`make_kvm_irq_routing`, :func:`make_kvm_signal_mask`, :func:`make_kvm_xsave`) or any
count with :func:`flex_type`.
"""

from __future__ import annotations

import ctypes
import functools
from ctypes import c_char, c_int16, c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p
from ctypes import sizeof

# Kernel integer types (``__u8`` ... ``__s64``). Plain names, because ``__u8`` inside a class
# body would be name-mangled by Python.
u8 = c_uint8
u16 = c_uint16
u32 = c_uint32
u64 = c_uint64
s16 = c_int16
s32 = c_int32
s64 = c_int64

# --------------------------------------------------------------------------------------------
# ioctl request encoding (<asm-generic/ioctl.h>, which x86 uses unchanged)
# --------------------------------------------------------------------------------------------

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    """Encode an ioctl request number exactly like the kernel's ``_IOC()`` macro."""
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    if not 0 <= nr < (1 << _IOC_NRBITS) or not 0 <= type_ < (1 << _IOC_TYPEBITS):
        raise ValueError("ioctl nr/type out of range")
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _size(t) -> int:
    return t if isinstance(t, int) else sizeof(t)


def _IO(type_: int, nr: int) -> int:
    """``_IO(type, nr)``: no argument data."""
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, t) -> int:
    """``_IOR(type, nr, T)``: the kernel writes a ``T`` to userspace (``T`` a ctypes type)."""
    return _IOC(_IOC_READ, type_, nr, _size(t))


def _IOW(type_: int, nr: int, t) -> int:
    """``_IOW(type, nr, T)``: the kernel reads a ``T`` from userspace."""
    return _IOC(_IOC_WRITE, type_, nr, _size(t))


def _IOWR(type_: int, nr: int, t) -> int:
    """``_IOWR(type, nr, T)``: both directions."""
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _size(t))


# --------------------------------------------------------------------------------------------
# Basic constants
# --------------------------------------------------------------------------------------------

KVM_API_VERSION = 12
KVMIO = 0xAE

KVM_NR_INTERRUPTS = 256
KVM_APIC_REG_SIZE = 0x400
KVM_IOAPIC_NUM_PINS = 24
KVM_MAX_XCRS = 16
KVM_MSR_FILTER_MAX_RANGES = 16
KVM_MSR_FILTER_MAX_BITMAP_SIZE = 0x600
SYNC_REGS_SIZE_BYTES = 2048

# Page offsets (in pages) of the extra areas of the vCPU mmap.
KVM_PIO_PAGE_OFFSET = 1
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
KVM_DIRTY_LOG_PAGE_OFFSET = 64

# Exception vectors (asm/kvm.h)
DE_VECTOR = 0
DB_VECTOR = 1
BP_VECTOR = 3
OF_VECTOR = 4
BR_VECTOR = 5
UD_VECTOR = 6
NM_VECTOR = 7
DF_VECTOR = 8
TS_VECTOR = 10
NP_VECTOR = 11
SS_VECTOR = 12
GP_VECTOR = 13
PF_VECTOR = 14
MF_VECTOR = 16
AC_VECTOR = 17
MC_VECTOR = 18
XM_VECTOR = 19
VE_VECTOR = 20

# --------------------------------------------------------------------------------------------
# Registers and CPU state (asm/kvm.h)
# --------------------------------------------------------------------------------------------


class kvm_regs(ctypes.Structure):
    """General-purpose registers, rip and rflags (KVM_GET_REGS / KVM_SET_REGS)."""

    _fields_ = [
        ("rax", u64), ("rbx", u64), ("rcx", u64), ("rdx", u64),
        ("rsi", u64), ("rdi", u64), ("rsp", u64), ("rbp", u64),
        ("r8", u64), ("r9", u64), ("r10", u64), ("r11", u64),
        ("r12", u64), ("r13", u64), ("r14", u64), ("r15", u64),
        ("rip", u64), ("rflags", u64),
    ]


class kvm_segment(ctypes.Structure):
    """A segment register: base, limit, selector and unpacked attribute bits."""

    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class kvm_dtable(ctypes.Structure):
    """A descriptor-table register (GDTR/IDTR): base and limit."""

    _fields_ = [
        ("base", u64),
        ("limit", u16),
        ("padding", u16 * 3),
    ]


class kvm_sregs(ctypes.Structure):
    """Segment, control and descriptor-table registers (KVM_GET_SREGS / KVM_SET_SREGS)."""

    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
        ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
        ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


KVM_SREGS2_FLAGS_PDPTRS_VALID = 1


class kvm_sregs2(ctypes.Structure):
    """kvm_sregs with PAE PDPTRs instead of the interrupt bitmap (KVM_GET/SET_SREGS2)."""

    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
        ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
        ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("flags", u64),
        ("pdptrs", u64 * 4),
    ]


class kvm_fpu(ctypes.Structure):
    """x87/SSE state in FXSAVE format (KVM_GET_FPU / KVM_SET_FPU)."""

    _fields_ = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class kvm_lapic_state(ctypes.Structure):
    """The local APIC register page (KVM_GET_LAPIC / KVM_SET_LAPIC).

    The kernel declares ``char regs[0x400]``; it is raw bytes, so it is ``u8`` here
    (``bytes(state.regs)`` and ``state.regs[0x20]`` both work).
    """

    _fields_ = [("regs", u8 * KVM_APIC_REG_SIZE)]


class kvm_msr_entry(ctypes.Structure):
    """One MSR index/value pair."""

    _fields_ = [
        ("index", u32),
        ("reserved", u32),
        ("data", u64),
    ]


class kvm_msrs(ctypes.Structure):
    """Header of an MSR list (KVM_GET_MSRS / KVM_SET_MSRS); build with :func:`make_kvm_msrs`."""

    _fields_ = [
        ("nmsrs", u32),
        ("pad", u32),
        ("entries", kvm_msr_entry * 0),
    ]
    _flex_ = "entries"


class kvm_msr_list(ctypes.Structure):
    """MSR index list (KVM_GET_MSR_INDEX_LIST); build with :func:`make_kvm_msr_list`."""

    _fields_ = [
        ("nmsrs", u32),
        ("indices", u32 * 0),
    ]
    _flex_ = "indices"


KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
KVM_MSR_FILTER_DEFAULT_ALLOW = 0 << 0
KVM_MSR_FILTER_DEFAULT_DENY = 1 << 0


class kvm_msr_filter_range(ctypes.Structure):
    """One range of an MSR filter: ``nmsrs`` bits from MSR ``base``; ``bitmap`` is a pointer."""

    _fields_ = [
        ("flags", u32),
        ("nmsrs", u32),
        ("base", u32),
        ("bitmap", c_void_p),
    ]


class kvm_msr_filter(ctypes.Structure):
    """MSR filter (KVM_X86_SET_MSR_FILTER): default action and up to 16 ranges."""

    _fields_ = [
        ("flags", u32),
        ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES),
    ]


class kvm_cpuid_entry2(ctypes.Structure):
    """One CPUID leaf/subleaf with its register values."""

    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0  # sic: the kernel's spelling
KVM_CPUID_FLAG_STATEFUL_FUNC = 1 << 1
KVM_CPUID_FLAG_STATE_READ_NEXT = 1 << 2


class kvm_cpuid2(ctypes.Structure):
    """Header of a CPUID table (KVM_SET_CPUID2, KVM_GET_SUPPORTED_CPUID); see :func:`make_kvm_cpuid2`."""

    _fields_ = [
        ("nent", u32),
        ("padding", u32),
        ("entries", kvm_cpuid_entry2 * 0),
    ]
    _flex_ = "entries"


class kvm_pit_channel_state(ctypes.Structure):
    """State of one i8254 PIT channel."""

    _fields_ = [
        ("count", u32),
        ("latched_count", u16),
        ("count_latched", u8),
        ("status_latched", u8),
        ("status", u8),
        ("read_state", u8),
        ("write_state", u8),
        ("write_latch", u8),
        ("rw_mode", u8),
        ("mode", u8),
        ("bcd", u8),
        ("gate", u8),
        ("count_load_time", s64),
    ]


class kvm_pic_state(ctypes.Structure):
    """One in-kernel i8259 PIC (in kvm_irqchip.chip.pic, KVM_GET/SET_IRQCHIP)."""

    _fields_ = [
        ("last_irr", u8), ("irr", u8), ("imr", u8), ("isr", u8), ("priority_add", u8),
        ("irq_base", u8), ("read_reg_select", u8), ("poll", u8), ("special_mask", u8),
        ("init_state", u8), ("auto_eoi", u8), ("rotate_on_auto_eoi", u8),
        ("special_fully_nested_mode", u8), ("init4", u8), ("elcr", u8), ("elcr_mask", u8),
    ]


class _kvm_ioapic_redirtbl(ctypes.Union):
    """One IOAPIC redirection entry; the kernel's bitfield view (``fields``) is left out: use
    ``bits`` (vector 0-7, delivery mode 8-10, ..., mask 16, destination 56-63)."""

    _fields_ = [("bits", u64)]


class kvm_ioapic_state(ctypes.Structure):
    """The in-kernel IOAPIC (in kvm_irqchip.chip.ioapic, KVM_GET/SET_IRQCHIP)."""

    _fields_ = [
        ("base_address", u64),
        ("ioregsel", u32),
        ("id", u32),
        ("irr", u32),
        ("pad", u32),
        ("redirtbl", _kvm_ioapic_redirtbl * KVM_IOAPIC_NUM_PINS),
    ]


class _kvm_irqchip_chip(ctypes.Union):
    """kvm_irqchip.chip: 512 bytes holding a PIC or the IOAPIC."""

    _fields_ = [("dummy", ctypes.c_char * 512), ("pic", kvm_pic_state),
                ("ioapic", kvm_ioapic_state)]


class kvm_irqchip(ctypes.Structure):
    """State of one in-kernel interrupt controller (KVM_GET/SET_IRQCHIP); ``chip_id`` is
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE or KVM_IRQCHIP_IOAPIC."""

    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", _kvm_irqchip_chip)]


KVM_PIT_FLAGS_HPET_LEGACY = 0x00000001
KVM_PIT_FLAGS_SPEAKER_DATA_ON = 0x00000002


class kvm_pit_state2(ctypes.Structure):
    """In-kernel PIT state (KVM_GET_PIT2 / KVM_SET_PIT2)."""

    _fields_ = [
        ("channels", kvm_pit_channel_state * 3),
        ("flags", u32),
        ("reserved", u32 * 9),
    ]


class kvm_debug_exit_arch(ctypes.Structure):
    """x86 details of a KVM_EXIT_DEBUG: exception vector, pc, dr6, dr7."""

    _fields_ = [
        ("exception", u32),
        ("pad", u32),
        ("pc", u64),
        ("dr6", u64),
        ("dr7", u64),
    ]


KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000
KVM_GUESTDBG_BLOCKIRQ = 0x00100000


class kvm_guest_debug_arch(ctypes.Structure):
    """x86 debug registers for KVM_SET_GUEST_DEBUG (dr0-dr3, dr6, dr7 in debugreg[0..7])."""

    _fields_ = [("debugreg", u64 * 8)]


class kvm_guest_debug(ctypes.Structure):
    """Guest debugging control (KVM_SET_GUEST_DEBUG): KVM_GUESTDBG_* flags and registers."""

    _fields_ = [
        ("control", u32),
        ("pad", u32),
        ("arch", kvm_guest_debug_arch),
    ]


# Valid-field flags for KVM_SET_VCPU_EVENTS
KVM_VCPUEVENT_VALID_NMI_PENDING = 0x00000001
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x00000002
KVM_VCPUEVENT_VALID_SHADOW = 0x00000004
KVM_VCPUEVENT_VALID_SMM = 0x00000008
KVM_VCPUEVENT_VALID_PAYLOAD = 0x00000010
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x00000020

KVM_X86_SHADOW_INT_MOV_SS = 0x01
KVM_X86_SHADOW_INT_STI = 0x02


class _kvm_vcpu_events_exception(ctypes.Structure):
    """kvm_vcpu_events.exception."""

    _fields_ = [
        ("injected", u8),
        ("nr", u8),
        ("has_error_code", u8),
        ("pending", u8),
        ("error_code", u32),
    ]


class _kvm_vcpu_events_interrupt(ctypes.Structure):
    """kvm_vcpu_events.interrupt."""

    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _kvm_vcpu_events_nmi(ctypes.Structure):
    """kvm_vcpu_events.nmi."""

    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _kvm_vcpu_events_smi(ctypes.Structure):
    """kvm_vcpu_events.smi."""

    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class _kvm_vcpu_events_triple_fault(ctypes.Structure):
    """kvm_vcpu_events.triple_fault."""

    _fields_ = [("pending", u8)]


class kvm_vcpu_events(ctypes.Structure):
    """Pending/injected exceptions, interrupts, NMI, SMI (KVM_GET/SET_VCPU_EVENTS)."""

    _fields_ = [
        ("exception", _kvm_vcpu_events_exception),
        ("interrupt", _kvm_vcpu_events_interrupt),
        ("nmi", _kvm_vcpu_events_nmi),
        ("sipi_vector", u32),
        ("flags", u32),
        ("smi", _kvm_vcpu_events_smi),
        ("triple_fault", _kvm_vcpu_events_triple_fault),
        ("reserved", u8 * 26),
        ("exception_has_payload", u8),
        ("exception_payload", u64),
    ]


class kvm_debugregs(ctypes.Structure):
    """Guest debug registers (KVM_GET/SET_DEBUGREGS)."""

    _fields_ = [
        ("db", u64 * 4),
        ("dr6", u64),
        ("dr7", u64),
        ("flags", u64),
        ("reserved", u64 * 9),
    ]


class kvm_xsave(ctypes.Structure):
    """XSAVE area, 4096 bytes (KVM_GET/SET_XSAVE); larger ones (KVM_GET_XSAVE2) via :func:`make_kvm_xsave`."""

    _fields_ = [
        ("region", u32 * 1024),
        ("extra", u32 * 0),
    ]
    _flex_ = "extra"


class kvm_xcr(ctypes.Structure):
    """One extended control register (XCR0...) and its value."""

    _fields_ = [
        ("xcr", u32),
        ("reserved", u32),
        ("value", u64),
    ]


class kvm_xcrs(ctypes.Structure):
    """Extended control registers (KVM_GET/SET_XCRS)."""

    _fields_ = [
        ("nr_xcrs", u32),
        ("flags", u32),
        ("xcrs", kvm_xcr * KVM_MAX_XCRS),
        ("padding", u64 * 16),
    ]


KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2
KVM_SYNC_X86_VALID_FIELDS = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS


class kvm_sync_regs(ctypes.Structure):
    """Registers shared through kvm_run.s.regs when KVM_CAP_SYNC_REGS is in use."""

    _fields_ = [
        ("regs", kvm_regs),
        ("sregs", kvm_sregs),
        ("events", kvm_vcpu_events),
    ]


# --------------------------------------------------------------------------------------------
# Memory, interrupts, eventfds (linux/kvm.h)
# --------------------------------------------------------------------------------------------


class kvm_userspace_memory_region(ctypes.Structure):
    """A guest memory slot backed by host virtual memory (KVM_SET_USER_MEMORY_REGION)."""

    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


class _kvm_irq_level_u(ctypes.Union):
    """kvm_irq_level's anonymous union: irq in, status out (KVM_IRQ_LINE_STATUS)."""

    _fields_ = [("irq", u32), ("status", s32)]


class kvm_irq_level(ctypes.Structure):
    """Raise or lower an interrupt line (KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS)."""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("_u", _kvm_irq_level_u),
        ("level", u32),
    ]


KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
KVM_NR_IRQCHIPS = 3


class kvm_pit_config(ctypes.Structure):
    """Options for KVM_CREATE_PIT2 (flags: KVM_PIT_SPEAKER_DUMMY)."""

    _fields_ = [
        ("flags", u32),
        ("pad", u32 * 15),
    ]


KVM_PIT_SPEAKER_DUMMY = 1


class _kvm_coalesced_mmio_zone_u(ctypes.Union):
    """kvm_coalesced_mmio_zone's anonymous union: pad / pio."""

    _fields_ = [("pad", u32), ("pio", u32)]


class kvm_coalesced_mmio_zone(ctypes.Structure):
    """A coalesced MMIO (pio=0) or PIO (pio=1) zone (KVM_(UN)REGISTER_COALESCED_MMIO)."""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("addr", u64),
        ("size", u32),
        ("_u", _kvm_coalesced_mmio_zone_u),
    ]


class _kvm_coalesced_mmio_u(ctypes.Union):
    """kvm_coalesced_mmio's anonymous union: pad / pio."""

    _fields_ = [("pad", u32), ("pio", u32)]


class kvm_coalesced_mmio(ctypes.Structure):
    """One recorded write in the coalesced MMIO ring."""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("phys_addr", u64),
        ("len", u32),
        ("_u", _kvm_coalesced_mmio_u),
        ("data", u8 * 8),
    ]


class kvm_coalesced_mmio_ring(ctypes.Structure):
    """The coalesced MMIO ring at page KVM_COALESCED_MMIO_PAGE_OFFSET of the vCPU mmap.

    Map it with ``flex_type(kvm_coalesced_mmio_ring, coalesced_mmio_max()).from_buffer(...)``.
    """

    _fields_ = [
        ("first", u32),
        ("last", u32),
        ("coalesced_mmio", kvm_coalesced_mmio * 0),
    ]
    _flex_ = "coalesced_mmio"


def coalesced_mmio_max(page_size: int = 4096) -> int:
    """The kernel's ``KVM_COALESCED_MMIO_MAX`` (entries in the one-page ring) for a page size."""
    return (page_size - sizeof(kvm_coalesced_mmio_ring)) // sizeof(kvm_coalesced_mmio)


class kvm_translation(ctypes.Structure):
    """Guest linear to physical address translation (KVM_TRANSLATE)."""

    _fields_ = [
        ("linear_address", u64),
        ("physical_address", u64),
        ("valid", u8),
        ("writeable", u8),
        ("usermode", u8),
        ("pad", u8 * 5),
    ]


class kvm_interrupt(ctypes.Structure):
    """An interrupt vector to inject when there is no in-kernel irqchip (KVM_INTERRUPT)."""

    _fields_ = [("irq", u32)]


class _kvm_dirty_log_u(ctypes.Union):
    """kvm_dirty_log's anonymous union: the bitmap pointer, padded to 64 bits."""

    _fields_ = [("dirty_bitmap", c_void_p), ("padding2", u64)]


class kvm_dirty_log(ctypes.Structure):
    """Request for a memslot's dirty bitmap (KVM_GET_DIRTY_LOG)."""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("slot", u32),
        ("padding1", u32),
        ("_u", _kvm_dirty_log_u),
    ]


class _kvm_clear_dirty_log_u(ctypes.Union):
    """kvm_clear_dirty_log's anonymous union: the bitmap pointer, padded to 64 bits."""

    _fields_ = [("dirty_bitmap", c_void_p), ("padding2", u64)]


class kvm_clear_dirty_log(ctypes.Structure):
    """Re-protect part of a memslot's dirty bitmap (KVM_CLEAR_DIRTY_LOG)."""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("slot", u32),
        ("num_pages", u32),
        ("first_page", u64),
        ("_u", _kvm_clear_dirty_log_u),
    ]


class kvm_signal_mask(ctypes.Structure):
    """Signal mask applied while in KVM_RUN (KVM_SET_SIGNAL_MASK); see :func:`make_kvm_signal_mask`."""

    _fields_ = [
        ("len", u32),
        ("sigset", u8 * 0),
    ]
    _flex_ = "sigset"


KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4
KVM_MP_STATE_STOPPED = 5
KVM_MP_STATE_CHECK_STOP = 6
KVM_MP_STATE_OPERATING = 7
KVM_MP_STATE_LOAD = 8
KVM_MP_STATE_AP_RESET_HOLD = 9
KVM_MP_STATE_SUSPENDED = 10


class kvm_mp_state(ctypes.Structure):
    """A vCPU's multiprocessing state, KVM_MP_STATE_* (KVM_GET/SET_MP_STATE)."""

    _fields_ = [("mp_state", u32)]


KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY = 1 << 3


class kvm_ioeventfd(ctypes.Structure):
    """Signal an eventfd on a guest PIO/MMIO write, with no exit to userspace (KVM_IOEVENTFD)."""

    _fields_ = [
        ("datamatch", u64),
        ("addr", u64),
        ("len", u32),
        ("fd", s32),
        ("flags", u32),
        ("pad", u8 * 36),
    ]


KVM_X86_DISABLE_EXITS_MWAIT = 1 << 0
KVM_X86_DISABLE_EXITS_HLT = 1 << 1
KVM_X86_DISABLE_EXITS_PAUSE = 1 << 2
KVM_X86_DISABLE_EXITS_CSTATE = 1 << 3
KVM_X86_DISABLE_VALID_EXITS = (
    KVM_X86_DISABLE_EXITS_MWAIT
    | KVM_X86_DISABLE_EXITS_HLT
    | KVM_X86_DISABLE_EXITS_PAUSE
    | KVM_X86_DISABLE_EXITS_CSTATE
)


class kvm_enable_cap(ctypes.Structure):
    """Enable a capability on a VM or vCPU with up to four arguments (KVM_ENABLE_CAP)."""

    _fields_ = [
        ("cap", u32),
        ("flags", u32),
        ("args", u64 * 4),
        ("pad", u8 * 64),
    ]


class kvm_irq_routing_irqchip(ctypes.Structure):
    """GSI route to a pin of the in-kernel PIC/IOAPIC."""

    _fields_ = [("irqchip", u32), ("pin", u32)]


class _kvm_irq_routing_msi_u(ctypes.Union):
    """kvm_irq_routing_msi's anonymous union: pad / devid."""

    _fields_ = [("pad", u32), ("devid", u32)]


class kvm_irq_routing_msi(ctypes.Structure):
    """GSI route to an MSI (address, data)."""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("address_lo", u32),
        ("address_hi", u32),
        ("data", u32),
        ("_u", _kvm_irq_routing_msi_u),
    ]


class kvm_irq_routing_s390_adapter(ctypes.Structure):
    """GSI route to an s390 adapter interrupt (not used on x86; it sets the union's alignment)."""

    _fields_ = [
        ("ind_addr", u64),
        ("summary_addr", u64),
        ("ind_offset", u64),
        ("summary_offset", u32),
        ("adapter_id", u32),
    ]


class kvm_irq_routing_hv_sint(ctypes.Structure):
    """GSI route to a Hyper-V SynIC SINT (needs KVM's own Hyper-V emulation)."""

    _fields_ = [("vcpu", u32), ("sint", u32)]


class kvm_irq_routing_xen_evtchn(ctypes.Structure):
    """GSI route to a Xen event channel (needs KVM's Xen emulation)."""

    _fields_ = [("port", u32), ("vcpu", u32), ("priority", u32)]


KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQ_ROUTING_S390_ADAPTER = 3
KVM_IRQ_ROUTING_HV_SINT = 4
KVM_IRQ_ROUTING_XEN_EVTCHN = 5


class _kvm_irq_routing_entry_u(ctypes.Union):
    """kvm_irq_routing_entry.u (8-byte aligned because of the s390 adapter member)."""

    _fields_ = [
        ("irqchip", kvm_irq_routing_irqchip),
        ("msi", kvm_irq_routing_msi),
        ("adapter", kvm_irq_routing_s390_adapter),
        ("hv_sint", kvm_irq_routing_hv_sint),
        ("xen_evtchn", kvm_irq_routing_xen_evtchn),
        ("pad", u32 * 8),
    ]


class kvm_irq_routing_entry(ctypes.Structure):
    """One GSI routing entry, KVM_IRQ_ROUTING_* in type."""

    _fields_ = [
        ("gsi", u32),
        ("type", u32),
        ("flags", u32),
        ("pad", u32),
        ("u", _kvm_irq_routing_entry_u),
    ]


class kvm_irq_routing(ctypes.Structure):
    """Header of a GSI routing table (KVM_SET_GSI_ROUTING); see :func:`make_kvm_irq_routing`."""

    _fields_ = [
        ("nr", u32),
        ("flags", u32),
        ("entries", kvm_irq_routing_entry * 0),
    ]
    _flex_ = "entries"


KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1


class kvm_irqfd(ctypes.Structure):
    """Bind an eventfd to a GSI so a write injects the interrupt (KVM_IRQFD)."""

    _fields_ = [
        ("fd", u32),
        ("gsi", u32),
        ("flags", u32),
        ("resamplefd", u32),
        ("pad", u8 * 16),
    ]


KVM_CLOCK_TSC_STABLE = 2
KVM_CLOCK_REALTIME = 1 << 2
KVM_CLOCK_HOST_TSC = 1 << 3


class kvm_clock_data(ctypes.Structure):
    """The VM's kvmclock value, optionally with realtime and host TSC (KVM_GET/SET_CLOCK)."""

    _fields_ = [
        ("clock", u64),
        ("flags", u32),
        ("pad0", u32),
        ("realtime", u64),
        ("host_tsc", u64),
        ("pad", u32 * 4),
    ]


KVM_MSI_VALID_DEVID = 1 << 0


class kvm_msi(ctypes.Structure):
    """An MSI to inject directly (KVM_SIGNAL_MSI)."""

    _fields_ = [
        ("address_lo", u32),
        ("address_hi", u32),
        ("data", u32),
        ("flags", u32),
        ("devid", u32),
        ("pad", u8 * 12),
    ]


class kvm_device_attr(ctypes.Structure):
    """A device/vCPU/system attribute (KVM_{GET,SET,HAS}_DEVICE_ATTR), e.g. the vCPU TSC offset."""

    _fields_ = [
        ("flags", u32),
        ("group", u32),
        ("attr", u64),
        ("addr", u64),
    ]


KVM_VCPU_TSC_CTRL = 0
KVM_VCPU_TSC_OFFSET = 0


class kvm_dirty_gfn(ctypes.Structure):
    """One entry of a vCPU's dirty ring (KVM_CAP_DIRTY_LOG_RING)."""

    _fields_ = [
        ("flags", u32),
        ("slot", u32),
        ("offset", u64),
    ]


KVM_DIRTY_GFN_F_DIRTY = 1 << 0
KVM_DIRTY_GFN_F_RESET = 1 << 1
KVM_DIRTY_GFN_F_MASK = 0x3
KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1


class kvm_stats_header(ctypes.Structure):
    """Header at the start of a binary stats fd (KVM_GET_STATS_FD)."""

    _fields_ = [
        ("flags", u32),
        ("name_size", u32),
        ("num_desc", u32),
        ("id_offset", u32),
        ("desc_offset", u32),
        ("data_offset", u32),
    ]


class kvm_stats_desc(ctypes.Structure):
    """One statistic's descriptor in a stats fd; ``name`` (header.name_size bytes) follows."""

    _fields_ = [
        ("flags", u32),
        ("exponent", s16),
        ("size", u16),
        ("offset", u32),
        ("bucket_size", u32),
        ("name", c_char * 0),
    ]
    _flex_ = "name"


KVM_STATS_TYPE_SHIFT = 0
KVM_STATS_TYPE_MASK = 0xF << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_CUMULATIVE = 0x0 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_INSTANT = 0x1 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_PEAK = 0x2 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_LINEAR_HIST = 0x3 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_LOG_HIST = 0x4 << KVM_STATS_TYPE_SHIFT
KVM_STATS_UNIT_SHIFT = 4
KVM_STATS_UNIT_MASK = 0xF << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_NONE = 0x0 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_BYTES = 0x1 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_SECONDS = 0x2 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_CYCLES = 0x3 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_BOOLEAN = 0x4 << KVM_STATS_UNIT_SHIFT
KVM_STATS_BASE_SHIFT = 8
KVM_STATS_BASE_MASK = 0xF << KVM_STATS_BASE_SHIFT
KVM_STATS_BASE_POW10 = 0x0 << KVM_STATS_BASE_SHIFT
KVM_STATS_BASE_POW2 = 0x1 << KVM_STATS_BASE_SHIFT

KVM_X2APIC_API_USE_32BIT_IDS = 1 << 0
KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK = 1 << 1

KVM_BUS_LOCK_DETECTION_OFF = 1 << 0
KVM_BUS_LOCK_DETECTION_EXIT = 1 << 1

KVM_X86_NOTIFY_VMEXIT_ENABLED = 1 << 0
KVM_X86_NOTIFY_VMEXIT_USER = 1 << 1

KVM_X86_QUIRK_LINT0_REENABLED = 1 << 0
KVM_X86_QUIRK_CD_NW_CLEARED = 1 << 1
KVM_X86_QUIRK_LAPIC_MMIO_HOLE = 1 << 2
KVM_X86_QUIRK_OUT_7E_INC_RIP = 1 << 3
KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT = 1 << 4
KVM_X86_QUIRK_FIX_HYPERCALL_INSN = 1 << 5
KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS = 1 << 6

# --------------------------------------------------------------------------------------------
# kvm_run: the shared page of a vCPU (mmap of the vCPU fd, offset 0)
# --------------------------------------------------------------------------------------------

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_S390_SIEIC = 13
KVM_EXIT_S390_RESET = 14
KVM_EXIT_DCR = 15
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_OSI = 18
KVM_EXIT_PAPR_HCALL = 19
KVM_EXIT_S390_UCONTROL = 20
KVM_EXIT_WATCHDOG = 21
KVM_EXIT_S390_TSCH = 22
KVM_EXIT_EPR = 23
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_S390_STSI = 25
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_HYPERV = 27
KVM_EXIT_ARM_NISV = 28
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_DIRTY_RING_FULL = 31
KVM_EXIT_AP_RESET_HOLD = 32
KVM_EXIT_X86_BUS_LOCK = 33
KVM_EXIT_XEN = 34
KVM_EXIT_RISCV_SBI = 35
KVM_EXIT_RISCV_CSR = 36
KVM_EXIT_NOTIFY = 37

#: exit_reason value -> "KVM_EXIT_..." name (every reason in the installed header).
EXIT_REASON_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("KVM_EXIT_") and isinstance(value, int)
}


def exit_reason_name(reason: int) -> str:
    """``KVM_EXIT_IO`` for 2; ``KVM_EXIT_<n>`` for a reason newer than the header."""
    return EXIT_REASON_NAMES.get(reason, f"KVM_EXIT_{reason}")


# kvm_run.io.direction
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# kvm_run.internal.suberror
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0

#: internal.suberror value -> "KVM_INTERNAL_ERROR_..." name.
INTERNAL_ERROR_NAMES: dict[int, str] = {
    KVM_INTERNAL_ERROR_EMULATION: "KVM_INTERNAL_ERROR_EMULATION",
    KVM_INTERNAL_ERROR_SIMUL_EX: "KVM_INTERNAL_ERROR_SIMUL_EX",
    KVM_INTERNAL_ERROR_DELIVERY_EV: "KVM_INTERNAL_ERROR_DELIVERY_EV",
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON",
}

# kvm_run.system_event.type
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_SEV_TERM = 6

# kvm_run.msr.reason
KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2

# kvm_run.hyperv.type
KVM_EXIT_HYPERV_SYNIC = 1
KVM_EXIT_HYPERV_HCALL = 2
KVM_EXIT_HYPERV_SYNDBG = 3

# kvm_run.notify.flags
KVM_NOTIFY_CONTEXT_INVALID = 1 << 0

# kvm_run.flags
KVM_RUN_X86_SMM = 1 << 0
KVM_RUN_X86_BUS_LOCK = 1 << 1


class _kvm_run_hw(ctypes.Structure):
    """kvm_run.hw (KVM_EXIT_UNKNOWN)."""

    _fields_ = [("hardware_exit_reason", u64)]


class _kvm_run_fail_entry(ctypes.Structure):
    """kvm_run.fail_entry (KVM_EXIT_FAIL_ENTRY)."""

    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _kvm_run_ex(ctypes.Structure):
    """kvm_run.ex (KVM_EXIT_EXCEPTION)."""

    _fields_ = [("exception", u32), ("error_code", u32)]


class _kvm_run_io(ctypes.Structure):
    """kvm_run.io (KVM_EXIT_IO): the data is at ``data_offset`` bytes from the start of kvm_run."""

    _fields_ = [
        ("direction", u8),
        ("size", u8),
        ("port", u16),
        ("count", u32),
        ("data_offset", u64),
    ]


class _kvm_run_debug(ctypes.Structure):
    """kvm_run.debug (KVM_EXIT_DEBUG)."""

    _fields_ = [("arch", kvm_debug_exit_arch)]


class _kvm_run_mmio(ctypes.Structure):
    """kvm_run.mmio (KVM_EXIT_MMIO)."""

    _fields_ = [
        ("phys_addr", u64),
        ("data", u8 * 8),
        ("len", u32),
        ("is_write", u8),
    ]


class _kvm_run_hypercall(ctypes.Structure):
    """kvm_run.hypercall (KVM_EXIT_HYPERCALL).

    The 6.1 header ends this struct with ``__u32 longmode; __u32 pad;``; later kernels make it
    ``union { __u32 longmode; __u64 flags; }``. ``pad``/``flags`` are left out so that this
    definition is true for both (the struct stays 72 bytes, 8-byte aligned).
    """

    _fields_ = [
        ("nr", u64),
        ("args", u64 * 6),
        ("ret", u64),
        ("longmode", u32),
    ]


class _kvm_run_tpr_access(ctypes.Structure):
    """kvm_run.tpr_access (KVM_EXIT_TPR_ACCESS)."""

    _fields_ = [("rip", u64), ("is_write", u32), ("pad", u32)]


class _kvm_run_internal(ctypes.Structure):
    """kvm_run.internal (KVM_EXIT_INTERNAL_ERROR): suberror, then ndata valid words of data."""

    _fields_ = [
        ("suberror", u32),
        ("ndata", u32),
        ("data", u64 * 16),
    ]


class _kvm_run_emulation_failure_insn(ctypes.Structure):
    """The instruction bytes inside kvm_run.emulation_failure."""

    _fields_ = [("insn_size", u8), ("insn_bytes", u8 * 15)]


class _kvm_run_emulation_failure_u(ctypes.Union):
    """kvm_run.emulation_failure's anonymous union."""

    _anonymous_ = ("_insn",)
    _fields_ = [("_insn", _kvm_run_emulation_failure_insn)]


class _kvm_run_emulation_failure(ctypes.Structure):
    """kvm_run.emulation_failure: overlay of internal for KVM_INTERNAL_ERROR_EMULATION."""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("suberror", u32),
        ("ndata", u32),
        ("flags", u64),
        ("_u", _kvm_run_emulation_failure_u),
    ]


class _kvm_run_system_event_u(ctypes.Union):
    """kvm_run.system_event's anonymous union: flags / data[16]."""

    _fields_ = [("flags", u64), ("data", u64 * 16)]


class _kvm_run_system_event(ctypes.Structure):
    """kvm_run.system_event (KVM_EXIT_SYSTEM_EVENT)."""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("type", u32),
        ("ndata", u32),
        ("_u", _kvm_run_system_event_u),
    ]


class _kvm_run_eoi(ctypes.Structure):
    """kvm_run.eoi (KVM_EXIT_IOAPIC_EOI)."""

    _fields_ = [("vector", u8)]


class _kvm_hyperv_exit_synic(ctypes.Structure):
    """kvm_hyperv_exit.u.synic."""

    _fields_ = [
        ("msr", u32),
        ("pad2", u32),
        ("control", u64),
        ("evt_page", u64),
        ("msg_page", u64),
    ]


class _kvm_hyperv_exit_hcall(ctypes.Structure):
    """kvm_hyperv_exit.u.hcall."""

    _fields_ = [("input", u64), ("result", u64), ("params", u64 * 2)]


class _kvm_hyperv_exit_syndbg(ctypes.Structure):
    """kvm_hyperv_exit.u.syndbg."""

    _fields_ = [
        ("msr", u32),
        ("pad2", u32),
        ("control", u64),
        ("status", u64),
        ("send_page", u64),
        ("recv_page", u64),
        ("pending_page", u64),
    ]


class _kvm_hyperv_exit_u(ctypes.Union):
    """kvm_hyperv_exit.u."""

    _fields_ = [
        ("synic", _kvm_hyperv_exit_synic),
        ("hcall", _kvm_hyperv_exit_hcall),
        ("syndbg", _kvm_hyperv_exit_syndbg),
    ]


class kvm_hyperv_exit(ctypes.Structure):
    """kvm_run.hyperv (KVM_EXIT_HYPERV): only produced by KVM's own Hyper-V emulation."""

    _fields_ = [
        ("type", u32),
        ("pad1", u32),
        ("u", _kvm_hyperv_exit_u),
    ]


class _kvm_run_msr(ctypes.Structure):
    """kvm_run.msr (KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR); set ``error`` to inject #GP."""

    _fields_ = [
        ("error", u8),
        ("pad", u8 * 7),
        ("reason", u32),
        ("index", u32),
        ("data", u64),
    ]


class _kvm_run_notify(ctypes.Structure):
    """kvm_run.notify (KVM_EXIT_NOTIFY)."""

    _fields_ = [("flags", u32)]


class _kvm_run_exit(ctypes.Union):
    """kvm_run's anonymous exit-information union (non-x86 members omitted; padding fixes the size)."""

    _fields_ = [
        ("hw", _kvm_run_hw),
        ("fail_entry", _kvm_run_fail_entry),
        ("ex", _kvm_run_ex),
        ("io", _kvm_run_io),
        ("debug", _kvm_run_debug),
        ("mmio", _kvm_run_mmio),
        ("hypercall", _kvm_run_hypercall),
        ("tpr_access", _kvm_run_tpr_access),
        ("internal", _kvm_run_internal),
        ("emulation_failure", _kvm_run_emulation_failure),
        ("system_event", _kvm_run_system_event),
        ("eoi", _kvm_run_eoi),
        ("hyperv", kvm_hyperv_exit),
        ("msr", _kvm_run_msr),
        ("notify", _kvm_run_notify),
        ("padding", c_char * 256),
    ]


class _kvm_run_s(ctypes.Union):
    """kvm_run.s: the sync-regs area, padded to SYNC_REGS_SIZE_BYTES."""

    _fields_ = [
        ("regs", kvm_sync_regs),
        ("padding", c_char * SYNC_REGS_SIZE_BYTES),
    ]


class kvm_run(ctypes.Structure):
    """The vCPU's shared run page: inputs to and exit information from KVM_RUN.

    Map it with ``kvm_run.from_buffer(mmap_of_vcpu_fd)``; the mapping is
    KVM_GET_VCPU_MMAP_SIZE bytes, larger than ``sizeof(kvm_run)`` (PIO data and the coalesced
    MMIO ring follow in later pages).
    """

    _anonymous_ = ("_exit",)
    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("_exit", _kvm_run_exit),
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
        ("s", _kvm_run_s),
    ]


# --------------------------------------------------------------------------------------------
# Capabilities (KVM_CHECK_EXTENSION / KVM_ENABLE_CAP). Every KVM_CAP_* in the installed header
# except those only meaningful on other architectures (S390/PPC/ARM/MIPS/SPAPR/RISCV names).
# --------------------------------------------------------------------------------------------

KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_MMU_SHADOW_CACHE_CONTROL = 2
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_VAPIC = 6
KVM_CAP_EXT_CPUID = 7
KVM_CAP_CLOCKSOURCE = 8
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT = 11
KVM_CAP_NOP_IO_DELAY = 12
KVM_CAP_PV_MMU = 13
KVM_CAP_MP_STATE = 14
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_SYNC_MMU = 16
KVM_CAP_IOMMU = 18
KVM_CAP_DESTROY_MEMORY_REGION_WORKS = 21
KVM_CAP_USER_NMI = 22
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_REINJECT_CONTROL = 24
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQ_INJECT_STATUS = 26
KVM_CAP_ASSIGN_DEV_IRQ = 29
KVM_CAP_JOIN_MEMORY_REGIONS_WORKS = 30
KVM_CAP_MCE = 31
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_SET_BOOT_CPU_ID = 34
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_XEN_HVM = 38
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_HYPERV = 44
KVM_CAP_HYPERV_VAPIC = 45
KVM_CAP_HYPERV_SPIN = 46
KVM_CAP_PCI_SEGMENT = 47
KVM_CAP_INTR_SHADOW = 49
KVM_CAP_DEBUGREGS = 50
KVM_CAP_X86_ROBUST_SINGLESTEP = 51
KVM_CAP_ENABLE_CAP = 54
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_ASYNC_PF = 59
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SW_TLB = 69
KVM_CAP_ONE_REG = 70
KVM_CAP_TSC_DEADLINE_TIMER = 72
KVM_CAP_SYNC_REGS = 74
KVM_CAP_PCI_2_3 = 75
KVM_CAP_KVMCLOCK_CTRL = 76
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_DEVICE_CTRL = 89
KVM_CAP_EXT_EMUL_CPUID = 95
KVM_CAP_HYPERV_TIME = 96
KVM_CAP_IOAPIC_POLARITY_IGNORED = 97
KVM_CAP_ENABLE_CAP_VM = 98
KVM_CAP_IOEVENTFD_NO_LENGTH = 100
KVM_CAP_VM_ATTRIBUTES = 101
KVM_CAP_CHECK_EXTENSION_VM = 105
KVM_CAP_DISABLE_QUIRKS = 116
KVM_CAP_X86_SMM = 117
KVM_CAP_MULTI_ADDRESS_SPACE = 118
KVM_CAP_GUEST_DEBUG_HW_BPS = 119
KVM_CAP_GUEST_DEBUG_HW_WPS = 120
KVM_CAP_SPLIT_IRQCHIP = 121
KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
KVM_CAP_HYPERV_SYNIC = 123
KVM_CAP_VCPU_ATTRIBUTES = 127
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_X2APIC_API = 129
KVM_CAP_MSI_DEVID = 131
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_X86_DISABLE_EXITS = 143
KVM_CAP_HYPERV_SYNIC2 = 148
KVM_CAP_HYPERV_VP_INDEX = 149
KVM_CAP_GET_MSR_FEATURES = 153
KVM_CAP_HYPERV_EVENTFD = 154
KVM_CAP_HYPERV_TLBFLUSH = 155
KVM_CAP_NESTED_STATE = 157
KVM_CAP_MSR_PLATFORM_INFO = 159
KVM_CAP_HYPERV_SEND_IPI = 161
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_HYPERV_ENLIGHTENED_VMCS = 163
KVM_CAP_EXCEPTION_PAYLOAD = 164
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT = 166
KVM_CAP_HYPERV_CPUID = 167
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_PMU_EVENT_FILTER = 173
KVM_CAP_HYPERV_DIRECT_TLBFLUSH = 175
KVM_CAP_HALT_POLL = 182
KVM_CAP_ASYNC_PF_INT = 183
KVM_CAP_LAST_CPU = 184
KVM_CAP_SMALLER_MAXPHYADDR = 185
KVM_CAP_STEAL_TIME = 187
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189
KVM_CAP_ENFORCE_PV_FEATURE_CPUID = 190
KVM_CAP_SYS_HYPERV_CPUID = 191
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_X86_BUS_LOCK_EXIT = 193
KVM_CAP_SET_GUEST_DEBUG2 = 195
KVM_CAP_SGX_ATTRIBUTE = 196
KVM_CAP_VM_COPY_ENC_CONTEXT_FROM = 197
KVM_CAP_PTP_KVM = 198
KVM_CAP_HYPERV_ENFORCE_CPUID = 199
KVM_CAP_SREGS2 = 200
KVM_CAP_EXIT_HYPERCALL = 201
KVM_CAP_BINARY_STATS_FD = 203
KVM_CAP_EXIT_ON_EMULATION_FAILURE = 204
KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM = 206
KVM_CAP_VM_GPA_BITS = 207
KVM_CAP_XSAVE2 = 208
KVM_CAP_SYS_ATTRIBUTES = 209
KVM_CAP_PMU_CAPABILITY = 212
KVM_CAP_DISABLE_QUIRKS2 = 213
KVM_CAP_VM_TSC_CONTROL = 214
KVM_CAP_SYSTEM_EVENT_DATA = 215
KVM_CAP_X86_TRIPLE_FAULT_EVENT = 218
KVM_CAP_X86_NOTIFY_VMEXIT = 219
KVM_CAP_VM_DISABLE_NX_HUGE_PAGES = 220
KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223

#: capability number -> "KVM_CAP_..." name.
CAP_NAMES: dict[int, str] = {
    value: name for name, value in list(globals().items()) if name.startswith("KVM_CAP_")
}


def cap_name(cap: int) -> str:
    """``KVM_CAP_SYNC_REGS`` for 74; ``KVM_CAP_<n>`` for a number this module does not name."""
    return CAP_NAMES.get(cap, f"KVM_CAP_{cap}")


# --------------------------------------------------------------------------------------------
# ioctl numbers
# --------------------------------------------------------------------------------------------

_names_before_ioctls = set(globals())

# /dev/kvm (system) ioctls
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msr_list)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
KVM_GET_EMULATED_CPUID = _IOWR(KVMIO, 0x09, kvm_cpuid2)
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0A, kvm_msr_list)

# VM ioctls
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, kvm_dirty_log)
KVM_SET_NR_MMU_PAGES = _IO(KVMIO, 0x44)
KVM_GET_NR_MMU_PAGES = _IO(KVMIO, 0x45)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, u64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, kvm_irqchip)
KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, kvm_irq_level)
KVM_REGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x67, kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x68, kvm_coalesced_mmio_zone)
KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6A, kvm_irq_routing)
KVM_IRQFD = _IOW(KVMIO, 0x76, kvm_irqfd)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, kvm_pit_config)
KVM_SET_BOOT_CPU_ID = _IO(KVMIO, 0x78)
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, kvm_ioeventfd)
KVM_SET_CLOCK = _IOW(KVMIO, 0x7B, kvm_clock_data)
KVM_GET_CLOCK = _IOR(KVMIO, 0x7C, kvm_clock_data)
KVM_GET_PIT2 = _IOR(KVMIO, 0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _IOW(KVMIO, 0xA0, kvm_pit_state2)
KVM_SET_TSC_KHZ = _IO(KVMIO, 0xA2)
KVM_GET_TSC_KHZ = _IO(KVMIO, 0xA3)
KVM_SIGNAL_MSI = _IOW(KVMIO, 0xA5, kvm_msi)
KVM_CLEAR_DIRTY_LOG = _IOWR(KVMIO, 0xC0, kvm_clear_dirty_log)
KVM_X86_SET_MSR_FILTER = _IOW(KVMIO, 0xC6, kvm_msr_filter)
KVM_RESET_DIRTY_RINGS = _IO(KVMIO, 0xC7)
KVM_GET_STATS_FD = _IO(KVMIO, 0xCE)
KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xE1, kvm_device_attr)
KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xE2, kvm_device_attr)
KVM_HAS_DEVICE_ATTR = _IOW(KVMIO, 0xE3, kvm_device_attr)

# VM and vCPU
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, kvm_enable_cap)

# vCPU ioctls
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_TRANSLATE = _IOWR(KVMIO, 0x85, kvm_translation)
KVM_INTERRUPT = _IOW(KVMIO, 0x86, kvm_interrupt)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs)
KVM_SET_SIGNAL_MASK = _IOW(KVMIO, 0x8B, kvm_signal_mask)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, kvm_fpu)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, kvm_lapic_state)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, kvm_cpuid2)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)
KVM_NMI = _IO(KVMIO, 0x9A)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9B, kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, kvm_debugregs)
KVM_GET_XSAVE = _IOR(KVMIO, 0xA4, kvm_xsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xA5, kvm_xsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, kvm_xcrs)
KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xAD)
KVM_SMI = _IO(KVMIO, 0xB7)
KVM_GET_SREGS2 = _IOR(KVMIO, 0xCC, kvm_sregs2)
KVM_SET_SREGS2 = _IOW(KVMIO, 0xCD, kvm_sregs2)
KVM_GET_XSAVE2 = _IOR(KVMIO, 0xCF, kvm_xsave)

#: ioctl name -> request number, for every ioctl defined above (in definition order).
IOCTLS: dict[str, int] = {
    name: value for name, value in list(globals().items()) if name not in _names_before_ioctls
    and name != "_names_before_ioctls"
}
del _names_before_ioctls

#: request number -> ioctl name (KVM_IRQ_LINE_STATUS and KVM_REGISTER_COALESCED_MMIO differ only
#: in direction bits, so every number here is unique).
IOCTL_NAMES: dict[int, str] = {value: name for name, value in IOCTLS.items()}

# --------------------------------------------------------------------------------------------
# Registry and flexible-array helpers
# --------------------------------------------------------------------------------------------

#: Every kernel-named struct defined here (the layout test checks each one against the header).
KVM_STRUCTS: tuple[type, ...] = (
    kvm_regs, kvm_segment, kvm_dtable, kvm_sregs, kvm_sregs2, kvm_fpu, kvm_lapic_state,
    kvm_msr_entry, kvm_msrs, kvm_msr_list, kvm_msr_filter_range, kvm_msr_filter,
    kvm_cpuid_entry2, kvm_cpuid2, kvm_pic_state, kvm_ioapic_state, kvm_irqchip,
    kvm_pit_channel_state, kvm_pit_state2, kvm_debug_exit_arch,
    kvm_guest_debug_arch, kvm_guest_debug, kvm_vcpu_events, kvm_debugregs, kvm_xsave, kvm_xcr,
    kvm_xcrs, kvm_sync_regs, kvm_userspace_memory_region, kvm_irq_level, kvm_pit_config,
    kvm_coalesced_mmio_zone, kvm_coalesced_mmio, kvm_coalesced_mmio_ring, kvm_translation,
    kvm_interrupt, kvm_dirty_log, kvm_clear_dirty_log, kvm_signal_mask, kvm_mp_state,
    kvm_ioeventfd, kvm_enable_cap, kvm_irq_routing_irqchip, kvm_irq_routing_msi,
    kvm_irq_routing_s390_adapter, kvm_irq_routing_hv_sint, kvm_irq_routing_xen_evtchn,
    kvm_irq_routing_entry, kvm_irq_routing, kvm_irqfd, kvm_clock_data,
    kvm_msi, kvm_device_attr, kvm_dirty_gfn, kvm_stats_header, kvm_stats_desc, kvm_hyperv_exit,
    kvm_run,
)


@functools.lru_cache(maxsize=None)
def flex_type(base: type, count: int) -> type:
    """A Structure laid out like ``base`` whose trailing flexible array has ``count`` elements.

    ``base`` must declare ``_flex_`` (the name of its zero-length trailing array). The result is
    cached per (base, count), is named ``base[count]``, and its fixed fields sit at the same
    offsets as in ``base`` (checked here), so it can be passed to the ioctl whose number was
    computed from ``sizeof(base)``.
    """
    flex = getattr(base, "_flex_", None)
    if flex is None:
        raise TypeError(f"{base.__name__} has no flexible array member")
    if count < 0:
        raise ValueError("count must be >= 0")
    fields = list(base._fields_)
    name, array_type = fields[-1]
    assert name == flex and array_type._length_ == 0, (base, flex)
    fields[-1] = (name, array_type._type_ * count)
    cls = type(
        f"{base.__name__}[{count}]",
        (ctypes.Structure,),
        {
            "_fields_": fields,
            "__doc__": f"struct {base.__name__} with {count} {flex}.",
            "_flex_base_": base,
        },
    )
    if getattr(cls, flex).offset != getattr(base, flex).offset:  # pragma: no cover - guard
        raise AssertionError(f"{cls.__name__}: flexible array moved")
    return cls


def make_kvm_cpuid2(n: int) -> ctypes.Structure:
    """A zeroed ``struct kvm_cpuid2`` with room for ``n`` entries and ``nent = n``.

    For KVM_GET_SUPPORTED_CPUID pass the capacity (the kernel lowers ``nent`` to the number it
    filled, or fails with E2BIG); for KVM_SET_CPUID2 set ``nent`` to the entries you filled.
    """
    obj = flex_type(kvm_cpuid2, n)()
    obj.nent = n
    return obj


def make_kvm_msrs(n: int) -> ctypes.Structure:
    """A zeroed ``struct kvm_msrs`` with ``n`` entries and ``nmsrs = n`` (KVM_GET/SET_MSRS)."""
    obj = flex_type(kvm_msrs, n)()
    obj.nmsrs = n
    return obj


def make_kvm_msr_list(n: int) -> ctypes.Structure:
    """A zeroed ``struct kvm_msr_list`` with room for ``n`` indices and ``nmsrs = n``."""
    obj = flex_type(kvm_msr_list, n)()
    obj.nmsrs = n
    return obj


def make_kvm_irq_routing(n: int) -> ctypes.Structure:
    """A zeroed ``struct kvm_irq_routing`` with ``n`` entries and ``nr = n`` (KVM_SET_GSI_ROUTING)."""
    obj = flex_type(kvm_irq_routing, n)()
    obj.nr = n
    return obj


def make_kvm_signal_mask(sigset: bytes = bytes(8)) -> ctypes.Structure:
    """A ``struct kvm_signal_mask`` carrying ``sigset`` (the kernel's sigset is 8 bytes on x86-64)."""
    obj = flex_type(kvm_signal_mask, len(sigset))()
    obj.len = len(sigset)
    ctypes.memmove(obj.sigset, sigset, len(sigset))
    return obj


def make_kvm_xsave(size: int = 4096) -> ctypes.Structure:
    """A zeroed XSAVE buffer of ``size`` bytes (KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM fd).

    Pass it to KVM_GET_XSAVE2 / KVM_SET_XSAVE; ``region`` is the first 4096 bytes.
    """
    if size < sizeof(kvm_xsave) or size % 4:
        raise ValueError(f"xsave size must be a multiple of 4 and >= {sizeof(kvm_xsave)}")
    return flex_type(kvm_xsave, (size - sizeof(kvm_xsave)) // 4)()


__all__ = [
    name for name in list(globals()) if not name.startswith(("_", "c_"))
    and name not in {"annotations", "ctypes", "functools", "sizeof"}
]
