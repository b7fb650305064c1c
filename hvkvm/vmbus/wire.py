"""VMBus and Hyper-V synthetic-interface wire structures and constants, in Linux's spelling.

Every struct, union, member and constant here is named exactly as Linux names it
(``include/linux/hyperv.h``, ``drivers/hv/hyperv_vmbus.h``, ``drivers/hv/ring_buffer.c``,
``include/asm-generic/hyperv-tlfs.h`` / ``arch/x86/include/asm/hyperv-tlfs.h``, which newer kernels
moved to ``include/hyperv/hvgdk_mini.h``), so the code that speaks to a Linux guest can be read next
to Linux's. Layouts are ctypes structures, ``_pack_ = 1`` exactly where Linux says ``__packed``
(or ``#pragma pack(1)``); member types are fixed-width (Linux's ``unsigned long`` is ``u64`` on
x86-64). ``csrc/vmbus_proto.h`` (with ``csrc/vmbus_ring.h``) holds the same layouts for C.

The spec is Linux's compiled binaries: ``tests/test_linux_conformance.py`` compares every layout
here with the BTF of Debian's cloud kernel (currently 6.1), the C headers, and the GUIDs with the
device aliases of Linux's drivers. Where Linux's spelling changed between versions, the layout
follows what that kernel was compiled with:
``vmbus_channel_initiate_contact`` has ``msg_sint, padding1[3], padding2`` (newer kernels:
``msg_sint, msg_vtl, reserved[6]``; same offsets), ``vmtransfer_page_packet_header`` ends in
``ranges[1]`` (newer: ``ranges[]``; the wire is the same, only ``sizeof`` differs), and
``hv_synic_event_flags`` is ``unsigned long flags[32]``.

Messages without a body of their own (REQUESTOFFERS, ALLOFFERS_DELIVERED, UNLOAD,
UNLOAD_RESPONSE) are a bare ``vmbus_channel_message_header``; Linux has no struct for them.

``WIRE_STRUCTS`` lists every public layout. GUIDs are ``uuid.UUID`` values as Linux prints them
(``%pUl``); ``guid_t`` is the 16-byte wire form (Windows mixed-endian: ``UUID.bytes_le``).
"""

from __future__ import annotations

import ctypes
import enum
import uuid
from ctypes import Structure, Union

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64
s32 = ctypes.c_int32


def BIT(n: int) -> int:
    """Linux's BIT(n)."""
    return 1 << n


# ============================================================================================
# Hyper-V TLFS: pages, CPUID leaves and features, synthetic MSRs, hypercalls, status codes
# ============================================================================================

HV_HYP_PAGE_SHIFT = 12
HV_HYP_PAGE_SIZE = 1 << HV_HYP_PAGE_SHIFT
HV_HYP_PAGE_MASK = ~(HV_HYP_PAGE_SIZE - 1) & 0xFFFFFFFFFFFFFFFF

# CPUID leaves (HYPERV_CPUID_*)
HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS = 0x40000000
HYPERV_CPUID_INTERFACE = 0x40000001
HYPERV_CPUID_VERSION = 0x40000002
HYPERV_CPUID_FEATURES = 0x40000003
HYPERV_CPUID_ENLIGHTMENT_INFO = 0x40000004
HYPERV_CPUID_IMPLEMENT_LIMITS = 0x40000005
HYPERV_CPUID_CPU_MANAGEMENT_FEATURES = 0x40000007
HYPERV_CPUID_NESTED_FEATURES = 0x4000000A
HYPERV_CPUID_ISOLATION_CONFIG = 0x4000000C
HYPERV_HYPERVISOR_PRESENT_BIT = 0x80000000
HYPERV_CPUID_MIN = 0x40000005
HYPERV_CPUID_MAX = 0x4000FFFF
# "Hv#1" in HYPERV_CPUID_INTERFACE.EAX (Linux spells it in arch/x86/kvm/hyperv.h)
HYPERV_CPUID_SIGNATURE_EAX = 0x31237648

# HYPERV_CPUID_FEATURES.EAX (partition privileges, group A)
HV_MSR_VP_RUNTIME_AVAILABLE = BIT(0)
HV_MSR_TIME_REF_COUNT_AVAILABLE = BIT(1)
HV_MSR_SYNIC_AVAILABLE = BIT(2)
HV_MSR_SYNTIMER_AVAILABLE = BIT(3)
HV_MSR_APIC_ACCESS_AVAILABLE = BIT(4)
HV_MSR_HYPERCALL_AVAILABLE = BIT(5)
HV_MSR_VP_INDEX_AVAILABLE = BIT(6)
HV_MSR_RESET_AVAILABLE = BIT(7)
HV_MSR_STAT_PAGES_AVAILABLE = BIT(8)
HV_MSR_REFERENCE_TSC_AVAILABLE = BIT(9)
HV_MSR_GUEST_IDLE_AVAILABLE = BIT(10)
HV_ACCESS_FREQUENCY_MSRS = BIT(11)
HV_ACCESS_REENLIGHTENMENT = BIT(13)
HV_ACCESS_TSC_INVARIANT = BIT(15)

# HYPERV_CPUID_FEATURES.EBX (partition privileges, group B)
HV_CREATE_PARTITIONS = BIT(0)
HV_ACCESS_PARTITION_ID = BIT(1)
HV_ACCESS_MEMORY_POOL = BIT(2)
HV_ADJUST_MESSAGE_BUFFERS = BIT(3)
HV_POST_MESSAGES = BIT(4)
HV_SIGNAL_EVENTS = BIT(5)
HV_CREATE_PORT = BIT(6)
HV_CONNECT_PORT = BIT(7)
HV_ACCESS_STATS = BIT(8)
HV_DEBUGGING = BIT(11)
HV_CPU_MANAGEMENT = BIT(12)
HV_ENABLE_EXTENDED_HYPERCALLS = BIT(20)
HV_ISOLATION = BIT(22)

# HYPERV_CPUID_FEATURES.EDX (group D, x86)
HV_X64_MWAIT_AVAILABLE = BIT(0)
HV_X64_GUEST_DEBUGGING_AVAILABLE = BIT(1)
HV_X64_PERF_MONITOR_AVAILABLE = BIT(2)
HV_X64_CPU_DYNAMIC_PARTITIONING_AVAILABLE = BIT(3)
HV_X64_HYPERCALL_XMM_INPUT_AVAILABLE = BIT(4)
HV_X64_GUEST_IDLE_STATE_AVAILABLE = BIT(5)
HV_FEATURE_FREQUENCY_MSRS_AVAILABLE = BIT(8)
HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE = BIT(10)
HV_FEATURE_DEBUG_MSRS_AVAILABLE = BIT(11)
HV_X64_HYPERCALL_XMM_OUTPUT_AVAILABLE = BIT(15)
HV_STIMER_DIRECT_MODE_AVAILABLE = BIT(19)

# HYPERV_CPUID_ENLIGHTMENT_INFO.EAX (recommendations)
HV_X64_AS_SWITCH_RECOMMENDED = BIT(0)
HV_X64_LOCAL_TLB_FLUSH_RECOMMENDED = BIT(1)
HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED = BIT(2)
HV_X64_APIC_ACCESS_RECOMMENDED = BIT(3)
HV_X64_SYSTEM_RESET_RECOMMENDED = BIT(4)
HV_X64_RELAXED_TIMING_RECOMMENDED = BIT(5)
HV_DEPRECATING_AEOI_RECOMMENDED = BIT(9)
HV_X64_CLUSTER_IPI_RECOMMENDED = BIT(10)
HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED = BIT(11)
HV_X64_ENLIGHTENED_VMCS_RECOMMENDED = BIT(14)

# Synthetic MSRs
HV_X64_MSR_GUEST_OS_ID = 0x40000000
HV_X64_MSR_HYPERCALL = 0x40000001
HV_X64_MSR_VP_INDEX = 0x40000002
HV_X64_MSR_RESET = 0x40000003
HV_X64_MSR_VP_RUNTIME = 0x40000010
HV_X64_MSR_TIME_REF_COUNT = 0x40000020
HV_X64_MSR_REFERENCE_TSC = 0x40000021
HV_X64_MSR_TSC_FREQUENCY = 0x40000022
HV_X64_MSR_APIC_FREQUENCY = 0x40000023
HV_X64_MSR_EOI = 0x40000070
HV_X64_MSR_ICR = 0x40000071
HV_X64_MSR_TPR = 0x40000072
HV_X64_MSR_VP_ASSIST_PAGE = 0x40000073
HV_X64_MSR_SCONTROL = 0x40000080
HV_X64_MSR_SVERSION = 0x40000081
HV_X64_MSR_SIEFP = 0x40000082
HV_X64_MSR_SIMP = 0x40000083
HV_X64_MSR_EOM = 0x40000084
HV_X64_MSR_SIRBP = 0x40000085
HV_X64_MSR_SINT0 = 0x40000090
HV_X64_MSR_SINT1 = 0x40000091
HV_X64_MSR_SINT2 = 0x40000092
HV_X64_MSR_SINT3 = 0x40000093
HV_X64_MSR_SINT4 = 0x40000094
HV_X64_MSR_SINT5 = 0x40000095
HV_X64_MSR_SINT6 = 0x40000096
HV_X64_MSR_SINT7 = 0x40000097
HV_X64_MSR_SINT8 = 0x40000098
HV_X64_MSR_SINT9 = 0x40000099
HV_X64_MSR_SINT10 = 0x4000009A
HV_X64_MSR_SINT11 = 0x4000009B
HV_X64_MSR_SINT12 = 0x4000009C
HV_X64_MSR_SINT13 = 0x4000009D
HV_X64_MSR_SINT14 = 0x4000009E
HV_X64_MSR_SINT15 = 0x4000009F
HV_X64_MSR_STIMER0_CONFIG = 0x400000B0
HV_X64_MSR_STIMER0_COUNT = 0x400000B1
HV_X64_MSR_STIMER1_CONFIG = 0x400000B2
HV_X64_MSR_STIMER1_COUNT = 0x400000B3
HV_X64_MSR_STIMER2_CONFIG = 0x400000B4
HV_X64_MSR_STIMER2_COUNT = 0x400000B5
HV_X64_MSR_STIMER3_CONFIG = 0x400000B6
HV_X64_MSR_STIMER3_COUNT = 0x400000B7
HV_X64_MSR_GUEST_IDLE = 0x400000F0
HV_X64_MSR_CRASH_P0 = 0x40000100
HV_X64_MSR_CRASH_P1 = 0x40000101
HV_X64_MSR_CRASH_P2 = 0x40000102
HV_X64_MSR_CRASH_P3 = 0x40000103
HV_X64_MSR_CRASH_P4 = 0x40000104
HV_X64_MSR_CRASH_CTL = 0x40000105
HV_X64_MSR_REENLIGHTENMENT_CONTROL = 0x40000106
HV_X64_MSR_TSC_EMULATION_CONTROL = 0x40000107
HV_X64_MSR_TSC_EMULATION_STATUS = 0x40000108
HV_X64_MSR_TSC_INVARIANT_CONTROL = 0x40000118

HV_X64_MSR_HYPERCALL_ENABLE = 0x00000001
HV_X64_MSR_HYPERCALL_PAGE_ADDRESS_SHIFT = 12
HV_X64_MSR_HYPERCALL_PAGE_ADDRESS_MASK = ~((1 << 12) - 1) & 0xFFFFFFFFFFFFFFFF
HV_X64_MSR_TSC_REFERENCE_ENABLE = 0x00000001
HV_X64_MSR_TSC_REFERENCE_ADDRESS_SHIFT = 12
HV_X64_MSR_VP_ASSIST_PAGE_ENABLE = 0x00000001
HV_X64_MSR_VP_ASSIST_PAGE_ADDRESS_SHIFT = 12
HV_LINUX_VENDOR_ID = 0x8100  # guest OS id bits 63:48 of a Linux guest
HV_CRASH_CTL_CRASH_NOTIFY_MSG = BIT(62)
HV_CRASH_CTL_CRASH_NOTIFY = BIT(63)

# Hypercall codes (HV_CALL_CODE)
HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE = 0x0002
HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST = 0x0003
HVCALL_NOTIFY_LONG_SPIN_WAIT = 0x0008
HVCALL_SEND_IPI = 0x000B
HVCALL_ENABLE_VP_VTL = 0x000F
HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX = 0x0013
HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX = 0x0014
HVCALL_SEND_IPI_EX = 0x0015
HVCALL_GET_PARTITION_ID = 0x0046
HVCALL_DEPOSIT_MEMORY = 0x0048
HVCALL_CREATE_VP = 0x004E
HVCALL_GET_VP_REGISTERS = 0x0050
HVCALL_SET_VP_REGISTERS = 0x0051
HVCALL_POST_MESSAGE = 0x005C
HVCALL_SIGNAL_EVENT = 0x005D
HVCALL_POST_DEBUG_DATA = 0x0069
HVCALL_RETRIEVE_DEBUG_DATA = 0x006A
HVCALL_RESET_DEBUG_SESSION = 0x006B
HVCALL_ADD_LOGICAL_PROCESSOR = 0x0076
HVCALL_MAP_DEVICE_INTERRUPT = 0x007C
HVCALL_UNMAP_DEVICE_INTERRUPT = 0x007D
HVCALL_RETARGET_INTERRUPT = 0x007E
HVCALL_START_VP = 0x0099
HVCALL_GET_VP_ID_FROM_APIC_ID = 0x009A
HVCALL_FLUSH_GUEST_PHYSICAL_ADDRESS_SPACE = 0x00AF
HVCALL_FLUSH_GUEST_PHYSICAL_ADDRESS_LIST = 0x00B0
HVCALL_MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY = 0x00DB
HVCALL_MMIO_READ = 0x0106
HVCALL_MMIO_WRITE = 0x0107

# The hypercall input value (RCX): code, fast bit, variable header size, rep count and start
HV_HYPERCALL_RESULT_MASK = 0xFFFF
HV_HYPERCALL_FAST_BIT = BIT(16)
HV_HYPERCALL_VARHEAD_OFFSET = 17
HV_HYPERCALL_VARHEAD_MASK = 0x3FF << 17
HV_HYPERCALL_RSVD0_MASK = 0x1F << 27
HV_HYPERCALL_REP_COMP_OFFSET = 32
HV_HYPERCALL_REP_COMP_1 = 1 << 32
HV_HYPERCALL_REP_COMP_MASK = 0xFFF << 32
HV_HYPERCALL_RSVD1_MASK = 0xF << 44
HV_HYPERCALL_REP_START_OFFSET = 48
HV_HYPERCALL_REP_START_MASK = 0xFFF << 48
HV_HYPERCALL_RSVD2_MASK = 0xF << 60
HV_HYPERCALL_RSVD_MASK = HV_HYPERCALL_RSVD0_MASK | HV_HYPERCALL_RSVD1_MASK | HV_HYPERCALL_RSVD2_MASK

# Hypercall status codes (low 16 bits of the result)
HV_STATUS_SUCCESS = 0x0
HV_STATUS_INVALID_HYPERCALL_CODE = 0x2
HV_STATUS_INVALID_HYPERCALL_INPUT = 0x3
HV_STATUS_INVALID_ALIGNMENT = 0x4
HV_STATUS_INVALID_PARAMETER = 0x5
HV_STATUS_ACCESS_DENIED = 0x6
HV_STATUS_INVALID_PARTITION_STATE = 0x7
HV_STATUS_OPERATION_DENIED = 0x8
HV_STATUS_UNKNOWN_PROPERTY = 0x9
HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE = 0xA
HV_STATUS_INSUFFICIENT_MEMORY = 0xB
HV_STATUS_INVALID_PARTITION_ID = 0xD
HV_STATUS_INVALID_VP_INDEX = 0xE
HV_STATUS_NOT_FOUND = 0x10
HV_STATUS_INVALID_PORT_ID = 0x11
HV_STATUS_INVALID_CONNECTION_ID = 0x12
HV_STATUS_INSUFFICIENT_BUFFERS = 0x13
HV_STATUS_NOT_ACKNOWLEDGED = 0x14
HV_STATUS_INVALID_VP_STATE = 0x15
HV_STATUS_NO_RESOURCES = 0x1D
HV_STATUS_PROCESSOR_FEATURE_NOT_SUPPORTED = 0x20
HV_STATUS_INVALID_LP_INDEX = 0x41
HV_STATUS_INVALID_REGISTER_VALUE = 0x50
HV_STATUS_OPERATION_FAILED = 0x71
HV_STATUS_TIME_OUT = 0x78
HV_STATUS_CALL_PENDING = 0x79
HV_STATUS_VTL_ALREADY_ENABLED = 0x86

HV_PARTITION_ID_SELF = 0xFFFFFFFFFFFFFFFF  # (u64)-1
HV_VP_INDEX_SELF = 0xFFFFFFFE  # (u32)-2
HV_ANY_VP = 0xFFFFFFFF  # (u32)-1

# ============================================================================================
# SynIC: messages, event flags, SINT/SIMP/SIEFP/SCONTROL registers
# ============================================================================================

HV_SYNIC_SINT_COUNT = 16
HV_SYNIC_VERSION_1 = 0x1
HV_SYNIC_FIRST_VALID_VECTOR = 16
HV_SYNIC_CONTROL_ENABLE = 1 << 0
HV_SYNIC_SIMP_ENABLE = 1 << 0
HV_SYNIC_SIEFP_ENABLE = 1 << 0
HV_SYNIC_SINT_MASKED = 1 << 16
HV_SYNIC_SINT_AUTO_EOI = 1 << 17
HV_SYNIC_SINT_VECTOR_MASK = 0xFF
HV_SYNIC_STIMER_COUNT = 4

HV_MESSAGE_SIZE = 256
HV_MESSAGE_PAYLOAD_BYTE_COUNT = 240
HV_MESSAGE_PAYLOAD_QWORD_COUNT = 30

HV_EVENT_FLAGS_COUNT = 256 * 8
HV_EVENT_FLAGS_LONG_COUNT = 256 // 8  # 256 / sizeof(unsigned long)


class hv_message_type(enum.IntEnum):
    """Hypervisor message types (the ``message_type`` of an hv_message_header)."""

    HVMSG_NONE = 0x00000000
    HVMSG_UNMAPPED_GPA = 0x80000000
    HVMSG_GPA_INTERCEPT = 0x80000001
    HVMSG_TIMER_EXPIRED = 0x80000010
    HVMSG_INVALID_VP_REGISTER_VALUE = 0x80000020
    HVMSG_UNRECOVERABLE_EXCEPTION = 0x80000021
    HVMSG_UNSUPPORTED_FEATURE = 0x80000022
    HVMSG_EVENTLOG_BUFFERCOMPLETE = 0x80000040
    HVMSG_X64_IOPORT_INTERCEPT = 0x80010000
    HVMSG_X64_MSR_INTERCEPT = 0x80010001
    HVMSG_X64_CPUID_INTERCEPT = 0x80010002
    HVMSG_X64_EXCEPTION_INTERCEPT = 0x80010003
    HVMSG_X64_APIC_EOI = 0x80010004
    HVMSG_X64_LEGACY_FP_ERROR = 0x80010005


HVMSG_NONE = hv_message_type.HVMSG_NONE
HVMSG_UNMAPPED_GPA = hv_message_type.HVMSG_UNMAPPED_GPA
HVMSG_GPA_INTERCEPT = hv_message_type.HVMSG_GPA_INTERCEPT
HVMSG_TIMER_EXPIRED = hv_message_type.HVMSG_TIMER_EXPIRED
HVMSG_INVALID_VP_REGISTER_VALUE = hv_message_type.HVMSG_INVALID_VP_REGISTER_VALUE
HVMSG_UNRECOVERABLE_EXCEPTION = hv_message_type.HVMSG_UNRECOVERABLE_EXCEPTION
HVMSG_UNSUPPORTED_FEATURE = hv_message_type.HVMSG_UNSUPPORTED_FEATURE
HVMSG_EVENTLOG_BUFFERCOMPLETE = hv_message_type.HVMSG_EVENTLOG_BUFFERCOMPLETE
HVMSG_X64_IOPORT_INTERCEPT = hv_message_type.HVMSG_X64_IOPORT_INTERCEPT
HVMSG_X64_MSR_INTERCEPT = hv_message_type.HVMSG_X64_MSR_INTERCEPT
HVMSG_X64_CPUID_INTERCEPT = hv_message_type.HVMSG_X64_CPUID_INTERCEPT
HVMSG_X64_EXCEPTION_INTERCEPT = hv_message_type.HVMSG_X64_EXCEPTION_INTERCEPT
HVMSG_X64_APIC_EOI = hv_message_type.HVMSG_X64_APIC_EOI
HVMSG_X64_LEGACY_FP_ERROR = hv_message_type.HVMSG_X64_LEGACY_FP_ERROR


class _hv_message_flags_bits(Structure):
    """The anonymous bit-field struct of hv_message_flags."""

    _pack_ = 1
    _fields_ = [("msg_pending", u8, 1), ("reserved", u8, 7)]


class hv_message_flags(Union):
    """SynIC message flags: msg_pending (the guest must write EOM when it frees the slot)."""

    _anonymous_ = ("_s",)
    _fields_ = [("asu8", u8), ("_s", _hv_message_flags_bits)]


class _hv_port_id_u(Structure):
    """hv_port_id.u: the 24-bit id."""

    _pack_ = 1
    _fields_ = [("id", u32, 24), ("reserved", u32, 8)]


class hv_port_id(Union):
    """A port identifier (24-bit id)."""

    _fields_ = [("asu32", u32), ("u", _hv_port_id_u)]


class _hv_message_header_sender(Union):
    """The anonymous sender/port union of hv_message_header."""

    _fields_ = [("sender", u64), ("port", hv_port_id)]


class hv_message_header(Structure):
    """SynIC message header: message_type, payload_size, message_flags, sender/port."""

    _pack_ = 1
    _anonymous_ = ("_u",)
    _fields_ = [
        ("message_type", u32),
        ("payload_size", u8),
        ("message_flags", hv_message_flags),
        ("reserved", u8 * 2),
        ("_u", _hv_message_header_sender),
    ]


class _hv_message_u(Union):
    """hv_message.u: the payload."""

    _fields_ = [("payload", u64 * HV_MESSAGE_PAYLOAD_QWORD_COUNT)]


class hv_message(Structure):
    """One 256-byte SynIC message slot."""

    _pack_ = 1
    _fields_ = [("header", hv_message_header), ("u", _hv_message_u)]


class hv_message_page(Structure):
    """The SIMP page: one hv_message per SINT."""

    _pack_ = 1
    _fields_ = [("sint_message", hv_message * HV_SYNIC_SINT_COUNT)]


class hv_synic_event_flags(Union):
    """One SINT's 2048 event flag bits on the SIEFP page."""

    _fields_ = [("flags", u64 * HV_EVENT_FLAGS_LONG_COUNT)]


class _hv_synic_scontrol_bits(Structure):
    """The anonymous bit-field struct of hv_synic_scontrol."""

    _pack_ = 1
    _fields_ = [("enable", u64, 1), ("reserved", u64, 63)]


class hv_synic_scontrol(Union):
    """HV_X64_MSR_SCONTROL contents."""

    _anonymous_ = ("_s",)
    _fields_ = [("as_uint64", u64), ("_s", _hv_synic_scontrol_bits)]


class _hv_synic_sint_bits(Structure):
    """The anonymous bit-field struct of hv_synic_sint."""

    _pack_ = 1
    _fields_ = [("vector", u64, 8), ("reserved1", u64, 8), ("masked", u64, 1),
                ("auto_eoi", u64, 1), ("polling", u64, 1), ("reserved2", u64, 45)]


class hv_synic_sint(Union):
    """HV_X64_MSR_SINTn contents: vector, masked, auto_eoi, polling."""

    _anonymous_ = ("_s",)
    _fields_ = [("as_uint64", u64), ("_s", _hv_synic_sint_bits)]


class _hv_synic_simp_bits(Structure):
    """The anonymous bit-field struct of hv_synic_simp."""

    _pack_ = 1
    _fields_ = [("simp_enabled", u64, 1), ("preserved", u64, 11), ("base_simp_gpa", u64, 52)]


class hv_synic_simp(Union):
    """HV_X64_MSR_SIMP contents: enable bit and message page GPA frame."""

    _anonymous_ = ("_s",)
    _fields_ = [("as_uint64", u64), ("_s", _hv_synic_simp_bits)]


class _hv_synic_siefp_bits(Structure):
    """The anonymous bit-field struct of hv_synic_siefp."""

    _pack_ = 1
    _fields_ = [("siefp_enabled", u64, 1), ("preserved", u64, 11), ("base_siefp_gpa", u64, 52)]


class hv_synic_siefp(Union):
    """HV_X64_MSR_SIEFP contents: enable bit and event flags page GPA frame."""

    _anonymous_ = ("_s",)
    _fields_ = [("as_uint64", u64), ("_s", _hv_synic_siefp_bits)]


class _hv_x64_msr_hypercall_contents_bits(Structure):
    """The anonymous bit-field struct of hv_x64_msr_hypercall_contents."""

    _pack_ = 1
    _fields_ = [("enable", u64, 1), ("reserved", u64, 11), ("guest_physical_address", u64, 52)]


class hv_x64_msr_hypercall_contents(Union):
    """HV_X64_MSR_HYPERCALL contents: enable bit and hypercall page GPA frame."""

    _anonymous_ = ("_s",)
    _fields_ = [("as_uint64", u64), ("_s", _hv_x64_msr_hypercall_contents_bits)]


class _hv_connection_id_u(Structure):
    """hv_connection_id.u: the 24-bit id."""

    _fields_ = [("id", u32, 24), ("reserved", u32, 8)]


class hv_connection_id(Union):
    """A connection identifier (24-bit id) for HvPostMessage / HvSignalEvent."""

    _fields_ = [("asu32", u32), ("u", _hv_connection_id_u)]


class hv_input_post_message(Structure):
    """HvPostMessage input: connectionid, reserved, message_type, payload_size, payload[240]."""

    _fields_ = [
        ("connectionid", hv_connection_id),
        ("reserved", u32),
        ("message_type", u32),
        ("payload_size", u32),
        ("payload", u64 * HV_MESSAGE_PAYLOAD_QWORD_COUNT),
    ]


# Monitor pages (the initiate-contact message names two; monitored channels use them)

class _hv_monitor_trigger_state_bits(Structure):
    """The anonymous bit-field struct of hv_monitor_trigger_state."""

    _fields_ = [("group_enable", u32, 4), ("rsvdz", u32, 28)]


class hv_monitor_trigger_state(Union):
    """Monitor page trigger state: which of the 4 trigger groups are enabled."""

    _anonymous_ = ("_s",)
    _fields_ = [("asu32", u32), ("_s", _hv_monitor_trigger_state_bits)]


class _hv_monitor_trigger_group_words(Structure):
    """The anonymous pending/armed struct of hv_monitor_trigger_group."""

    _fields_ = [("pending", u32), ("armed", u32)]


class hv_monitor_trigger_group(Union):
    """One trigger group: 32 pending and 32 armed bits."""

    _anonymous_ = ("_s",)
    _fields_ = [("as_uint64", u64), ("_s", _hv_monitor_trigger_group_words)]


class hv_monitor_parameter(Structure):
    """Per monitored channel: the connection id and event flag to signal."""

    _fields_ = [("connectionid", hv_connection_id), ("flagnumber", u16), ("rsvdz", u16)]


class hv_monitor_page(Structure):
    """A 4 KiB monitor page."""

    _fields_ = [
        ("trigger_state", hv_monitor_trigger_state),
        ("rsvdz1", u32),
        ("trigger_group", hv_monitor_trigger_group * 4),
        ("rsvdz2", u64 * 3),
        ("next_checktime", (s32 * 32) * 4),
        ("latency", (u16 * 32) * 4),
        ("rsvdz3", u64 * 32),
        ("parameter", (hv_monitor_parameter * 32) * 4),
        ("rsvdz4", u8 * 1984),
    ]


# ============================================================================================
# GUIDs
# ============================================================================================

class guid_t(Structure):
    """A GUID on the wire: 16 bytes, first three fields little-endian (``UUID.bytes_le``)."""

    _fields_ = [("b", u8 * 16)]

    @classmethod
    def from_uuid(cls, value: "uuid.UUID | str") -> "guid_t":
        """From a UUID or a string as Linux prints it (%pUl), e.g. HV_NIC_GUID."""
        u = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
        return cls.from_buffer_copy(u.bytes_le)

    def to_uuid(self) -> uuid.UUID:
        """The GUID as a uuid.UUID."""
        return uuid.UUID(bytes_le=bytes(self.b))

    def __str__(self) -> str:
        return str(self.to_uuid())

    def __repr__(self) -> str:
        return f"guid_t('{self}')"

    def __eq__(self, other) -> bool:
        if isinstance(other, guid_t):
            return bytes(self.b) == bytes(other.b)
        if isinstance(other, (uuid.UUID, str)):
            return self.to_uuid() == (other if isinstance(other, uuid.UUID) else uuid.UUID(other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(bytes(self.b))


def GUID_INIT(a: int, b: int, c: int, *d: int) -> uuid.UUID:
    """Linux's GUID_INIT(a, b, c, d0..d7), as a uuid.UUID (use guid_t.from_uuid for the bytes)."""
    if len(d) != 8:
        raise ValueError("GUID_INIT takes 3 + 8 values")
    return uuid.UUID(fields=(a, b, c, d[0], d[1], int.from_bytes(bytes(d[2:]), "big")))


def guid_bytes(value: "uuid.UUID | str") -> bytes:
    """The 16 wire bytes of a GUID (``UUID.bytes_le``)."""
    u = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    return u.bytes_le


# Class GUIDs of the devices Linux's VMBus drivers bind to (include/linux/hyperv.h)
HV_NIC_GUID = GUID_INIT(0xf8615163, 0xdf3e, 0x46c5, 0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65, 0xed, 0x0e)
HV_IDE_GUID = GUID_INIT(0x32412632, 0x86cb, 0x44a2, 0x9b, 0x5c, 0x50, 0xd1, 0x41, 0x73, 0x54, 0xf5)
HV_SCSI_GUID = GUID_INIT(0xba6163d9, 0x04a1, 0x4d29, 0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f)
HV_SHUTDOWN_GUID = GUID_INIT(0x0e0b6031, 0x5213, 0x4934, 0x81, 0x8b, 0x38, 0xd9, 0x0c, 0xed, 0x39, 0xdb)
HV_TS_GUID = GUID_INIT(0x9527e630, 0xd0ae, 0x497b, 0xad, 0xce, 0xe8, 0x0a, 0xb0, 0x17, 0x5c, 0xaf)
HV_HEART_BEAT_GUID = GUID_INIT(0x57164f39, 0x9115, 0x4e78, 0xab, 0x55, 0x38, 0x2f, 0x3b, 0xd5, 0x42, 0x2d)
HV_KVP_GUID = GUID_INIT(0xa9a0f4e7, 0x5a45, 0x4d96, 0xb8, 0x27, 0x8a, 0x84, 0x1e, 0x8c, 0x03, 0xe6)
HV_DM_GUID = GUID_INIT(0x525074dc, 0x8985, 0x46e2, 0x80, 0x57, 0xa3, 0x07, 0xdc, 0x18, 0xa5, 0x02)
HV_MOUSE_GUID = GUID_INIT(0xcfa8b69e, 0x5b4a, 0x4cc0, 0xb9, 0x8b, 0x8b, 0xa1, 0xa1, 0xf3, 0xf9, 0x5a)
HV_KBD_GUID = GUID_INIT(0xf912ad6d, 0x2b17, 0x48ea, 0xbd, 0x65, 0xf9, 0x27, 0xa6, 0x1c, 0x76, 0x84)
HV_VSS_GUID = GUID_INIT(0x35fa2e29, 0xea23, 0x4236, 0x96, 0xae, 0x3a, 0x6e, 0xba, 0xcb, 0xa4, 0x40)
HV_SYNTHVID_GUID = GUID_INIT(0xda0a7802, 0xe377, 0x4aac, 0x8e, 0x77, 0x05, 0x58, 0xeb, 0x10, 0x73, 0xf8)
HV_SYNTHFC_GUID = GUID_INIT(0x2f9bcc4a, 0x0069, 0x4af3, 0xb7, 0x6b, 0x6f, 0xd0, 0xbe, 0x52, 0x8c, 0xda)
HV_FCOPY_GUID = GUID_INIT(0x34d14be3, 0xdee4, 0x41c8, 0x9a, 0xe7, 0x6b, 0x17, 0x49, 0x77, 0xc1, 0x92)
HV_ND_GUID = GUID_INIT(0x8c2eaf3d, 0x32a7, 0x4b09, 0xab, 0x99, 0xbd, 0x1f, 0x1c, 0x86, 0xb5, 0x01)
HV_PCIE_GUID = GUID_INIT(0x44c4f61d, 0x4444, 0x4400, 0x9d, 0x52, 0x80, 0x2e, 0x27, 0xed, 0xe1, 0x9f)
HV_AVMA1_GUID = GUID_INIT(0xf8e65716, 0x3cb3, 0x4a06, 0x9a, 0x60, 0x18, 0x89, 0xc5, 0xcc, 0xca, 0xb5)
HV_AVMA2_GUID = GUID_INIT(0x3375baf4, 0x9e15, 0x4b30, 0xb7, 0x65, 0x67, 0xac, 0xb1, 0x0d, 0x60, 0x7b)
HV_RDV_GUID = GUID_INIT(0x276aacf4, 0xac15, 0x426c, 0x98, 0xdd, 0x75, 0x21, 0xad, 0x3f, 0x01, 0xfe)
HV_IMC_GUID = GUID_INIT(0xc376c1c3, 0xd276, 0x48d2, 0x90, 0xa9, 0xc0, 0x47, 0x48, 0x07, 0x2c, 0x60)

WELL_KNOWN_GUIDS = {name: value for name, value in globals().items()
                    if name.startswith("HV_") and name.endswith("_GUID")}

# ============================================================================================
# VMBus connection: versions, connection ids, channel message types
# ============================================================================================


def VMBUS_MAKE_VERSION(major: int, minor: int) -> int:
    """A VMBus protocol version: major in the high 16 bits, minor in the low 16."""
    return (major << 16) | minor


VERSION_WS2008 = (0 << 16) | 13
VERSION_WIN7 = (1 << 16) | 1
VERSION_WIN8 = (2 << 16) | 4
VERSION_WIN8_1 = (3 << 16) | 0
VERSION_WIN10 = (4 << 16) | 0
VERSION_WIN10_V4_1 = (4 << 16) | 1
VERSION_WIN10_V5 = (5 << 16) | 0
VERSION_WIN10_V5_1 = (5 << 16) | 1
VERSION_WIN10_V5_2 = (5 << 16) | 2
VERSION_WIN10_V5_3 = (5 << 16) | 3

# The anonymous enum of drivers/hv/hyperv_vmbus.h
VMBUS_MESSAGE_CONNECTION_ID = 1
VMBUS_MESSAGE_CONNECTION_ID_4 = 4
VMBUS_MESSAGE_PORT_ID = 1
VMBUS_EVENT_CONNECTION_ID = 2
VMBUS_EVENT_PORT_ID = 2
VMBUS_MONITOR_CONNECTION_ID = 3
VMBUS_MONITOR_PORT_ID = 3
VMBUS_MESSAGE_SINT = 2

MAX_SIZE_CHANNEL_MESSAGE = HV_MESSAGE_PAYLOAD_BYTE_COUNT
MAX_USER_DEFINED_BYTES = 120
MAX_PIPE_USER_DEFINED_BYTES = 116
VMBUS_PIPE_TYPE_BYTE = 0x00000000
VMBUS_PIPE_TYPE_MESSAGE = 0x00000004

# Offer chn_flags ("server flags")
VMBUS_CHANNEL_ENUMERATE_DEVICE_INTERFACE = 1
VMBUS_CHANNEL_SERVER_SUPPORTS_TRANSFER_PAGES = 2
VMBUS_CHANNEL_SERVER_SUPPORTS_GPADLS = 4
VMBUS_CHANNEL_NAMED_PIPE_MODE = 0x10
VMBUS_CHANNEL_LOOPBACK_OFFER = 0x100
VMBUS_CHANNEL_PARENT_OFFER = 0x200
VMBUS_CHANNEL_REQUEST_MONITORED_NOTIFICATION = 0x400
VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER = 0x2000

GPADL_TYPE_RING_BUFFER = 1
GPADL_TYPE_SERVER_SAVE_AREA = 2
GPADL_TYPE_TRANSACTION = 8


class hv_gpadl_type(enum.IntEnum):
    """How Linux lays a GPADL out (ring buffers map only the first page of a large-page header)."""

    HV_GPADL_BUFFER = 0
    HV_GPADL_RING = 1


HV_GPADL_BUFFER = hv_gpadl_type.HV_GPADL_BUFFER
HV_GPADL_RING = hv_gpadl_type.HV_GPADL_RING


class vmbus_channel_message_type(enum.IntEnum):
    """Channel message types (the ``msgtype`` of a vmbus_channel_message_header)."""

    CHANNELMSG_INVALID = 0
    CHANNELMSG_OFFERCHANNEL = 1
    CHANNELMSG_RESCIND_CHANNELOFFER = 2
    CHANNELMSG_REQUESTOFFERS = 3
    CHANNELMSG_ALLOFFERS_DELIVERED = 4
    CHANNELMSG_OPENCHANNEL = 5
    CHANNELMSG_OPENCHANNEL_RESULT = 6
    CHANNELMSG_CLOSECHANNEL = 7
    CHANNELMSG_GPADL_HEADER = 8
    CHANNELMSG_GPADL_BODY = 9
    CHANNELMSG_GPADL_CREATED = 10
    CHANNELMSG_GPADL_TEARDOWN = 11
    CHANNELMSG_GPADL_TORNDOWN = 12
    CHANNELMSG_RELID_RELEASED = 13
    CHANNELMSG_INITIATE_CONTACT = 14
    CHANNELMSG_VERSION_RESPONSE = 15
    CHANNELMSG_UNLOAD = 16
    CHANNELMSG_UNLOAD_RESPONSE = 17
    CHANNELMSG_18 = 18
    CHANNELMSG_19 = 19
    CHANNELMSG_20 = 20
    CHANNELMSG_TL_CONNECT_REQUEST = 21
    CHANNELMSG_MODIFYCHANNEL = 22
    CHANNELMSG_TL_CONNECT_RESULT = 23
    CHANNELMSG_MODIFYCHANNEL_RESPONSE = 24
    CHANNELMSG_COUNT = 25


CHANNELMSG_INVALID = vmbus_channel_message_type.CHANNELMSG_INVALID
CHANNELMSG_OFFERCHANNEL = vmbus_channel_message_type.CHANNELMSG_OFFERCHANNEL
CHANNELMSG_RESCIND_CHANNELOFFER = vmbus_channel_message_type.CHANNELMSG_RESCIND_CHANNELOFFER
CHANNELMSG_REQUESTOFFERS = vmbus_channel_message_type.CHANNELMSG_REQUESTOFFERS
CHANNELMSG_ALLOFFERS_DELIVERED = vmbus_channel_message_type.CHANNELMSG_ALLOFFERS_DELIVERED
CHANNELMSG_OPENCHANNEL = vmbus_channel_message_type.CHANNELMSG_OPENCHANNEL
CHANNELMSG_OPENCHANNEL_RESULT = vmbus_channel_message_type.CHANNELMSG_OPENCHANNEL_RESULT
CHANNELMSG_CLOSECHANNEL = vmbus_channel_message_type.CHANNELMSG_CLOSECHANNEL
CHANNELMSG_GPADL_HEADER = vmbus_channel_message_type.CHANNELMSG_GPADL_HEADER
CHANNELMSG_GPADL_BODY = vmbus_channel_message_type.CHANNELMSG_GPADL_BODY
CHANNELMSG_GPADL_CREATED = vmbus_channel_message_type.CHANNELMSG_GPADL_CREATED
CHANNELMSG_GPADL_TEARDOWN = vmbus_channel_message_type.CHANNELMSG_GPADL_TEARDOWN
CHANNELMSG_GPADL_TORNDOWN = vmbus_channel_message_type.CHANNELMSG_GPADL_TORNDOWN
CHANNELMSG_RELID_RELEASED = vmbus_channel_message_type.CHANNELMSG_RELID_RELEASED
CHANNELMSG_INITIATE_CONTACT = vmbus_channel_message_type.CHANNELMSG_INITIATE_CONTACT
CHANNELMSG_VERSION_RESPONSE = vmbus_channel_message_type.CHANNELMSG_VERSION_RESPONSE
CHANNELMSG_UNLOAD = vmbus_channel_message_type.CHANNELMSG_UNLOAD
CHANNELMSG_UNLOAD_RESPONSE = vmbus_channel_message_type.CHANNELMSG_UNLOAD_RESPONSE
CHANNELMSG_18 = vmbus_channel_message_type.CHANNELMSG_18
CHANNELMSG_19 = vmbus_channel_message_type.CHANNELMSG_19
CHANNELMSG_20 = vmbus_channel_message_type.CHANNELMSG_20
CHANNELMSG_TL_CONNECT_REQUEST = vmbus_channel_message_type.CHANNELMSG_TL_CONNECT_REQUEST
CHANNELMSG_MODIFYCHANNEL = vmbus_channel_message_type.CHANNELMSG_MODIFYCHANNEL
CHANNELMSG_TL_CONNECT_RESULT = vmbus_channel_message_type.CHANNELMSG_TL_CONNECT_RESULT
CHANNELMSG_MODIFYCHANNEL_RESPONSE = vmbus_channel_message_type.CHANNELMSG_MODIFYCHANNEL_RESPONSE
CHANNELMSG_COUNT = vmbus_channel_message_type.CHANNELMSG_COUNT

# ============================================================================================
# VMBus channel messages (payload of an HvPostMessage / a SynIC message on VMBUS_MESSAGE_SINT)
# ============================================================================================


class vmbus_channel_message_header(Structure):
    """Every channel message starts with this: msgtype (vmbus_channel_message_type), padding."""

    _pack_ = 1
    _fields_ = [("msgtype", u32), ("padding", u32)]


class vmbus_channel_version_supported(Structure):
    """VERSION_SUPPORTED (obsolete): header, version_supported."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("version_supported", u8)]


class _vmbus_channel_offer_std(Structure):
    """vmbus_channel_offer.u.std: user data of a non-pipe offer."""

    _fields_ = [("user_def", u8 * MAX_USER_DEFINED_BYTES)]


class _vmbus_channel_offer_pipe(Structure):
    """vmbus_channel_offer.u.pipe: pipe mode and user data of a pipe offer."""

    _fields_ = [("pipe_mode", u32), ("user_def", u8 * MAX_PIPE_USER_DEFINED_BYTES)]


class _vmbus_channel_offer_u(Union):
    """vmbus_channel_offer.u."""

    _fields_ = [("std", _vmbus_channel_offer_std), ("pipe", _vmbus_channel_offer_pipe)]


class vmbus_channel_offer(Structure):
    """The body of an offer: class (if_type) and instance GUIDs, flags, user data."""

    _pack_ = 1
    _fields_ = [
        ("if_type", guid_t),
        ("if_instance", guid_t),
        ("reserved1", u64),
        ("reserved2", u64),
        ("chn_flags", u16),
        ("mmio_megabytes", u16),
        ("u", _vmbus_channel_offer_u),
        ("sub_channel_index", u16),
        ("reserved3", u16),
    ]


class _vmbus_channel_offer_channel_u8_bits(Structure):
    """monitor_allocated/reserved: the u8 bit-fields of vmbus_channel_offer_channel."""

    _pack_ = 1
    _fields_ = [("monitor_allocated", u8, 1), ("reserved", u8, 7)]


class _vmbus_channel_offer_channel_u16_bits(Structure):
    """is_dedicated_interrupt/reserved1: the u16 bit-fields of vmbus_channel_offer_channel."""

    _pack_ = 1
    _fields_ = [("is_dedicated_interrupt", u16, 1), ("reserved1", u16, 15)]


class vmbus_channel_offer_channel(Structure):
    """OFFERCHANNEL: the offer, relid, monitor id, dedicated-interrupt bit, connection id."""

    # Linux: u8 monitor_allocated:1; u8 reserved:7; u16 is_dedicated_interrupt:1; u16 reserved1:15
    # in a packed struct. ctypes (before 3.14) lets a u16 bit-field share the u8 bit-fields'
    # storage byte and so misplaces what follows; anonymous holders give GCC's layout.
    _pack_ = 1
    _anonymous_ = ("_b8", "_b16")
    _fields_ = [
        ("header", vmbus_channel_message_header),
        ("offer", vmbus_channel_offer),
        ("child_relid", u32),
        ("monitorid", u8),
        ("_b8", _vmbus_channel_offer_channel_u8_bits),
        ("_b16", _vmbus_channel_offer_channel_u16_bits),
        ("connection_id", u32),
    ]


class vmbus_channel_rescind_offer(Structure):
    """RESCIND_CHANNELOFFER: child_relid."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("child_relid", u32)]


class vmbus_channel_open_channel(Structure):
    """OPENCHANNEL: relid, openid, ring GPADL, target VP, downstream ring page offset, user data."""

    _pack_ = 1
    _fields_ = [
        ("header", vmbus_channel_message_header),
        ("child_relid", u32),
        ("openid", u32),
        ("ringbuffer_gpadlhandle", u32),
        ("target_vp", u32),
        ("downstream_ringbuffer_pageoffset", u32),
        ("userdata", u8 * MAX_USER_DEFINED_BYTES),
    ]


class vmbus_channel_open_result(Structure):
    """OPENCHANNEL_RESULT: child_relid, openid, status (0 = success)."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("child_relid", u32),
                ("openid", u32), ("status", u32)]


class vmbus_channel_modifychannel_response(Structure):
    """MODIFYCHANNEL_RESPONSE: child_relid, status."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("child_relid", u32), ("status", u32)]


class vmbus_channel_close_channel(Structure):
    """CLOSECHANNEL: child_relid."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("child_relid", u32)]


class gpa_range(Structure):
    """A guest-physical range: byte_count bytes from byte_offset in the first of pfn_array[]."""

    _fields_ = [("byte_count", u32), ("byte_offset", u32), ("pfn_array", u64 * 0)]


class vmbus_channel_gpadl_header(Structure):
    """GPADL_HEADER: relid, gpadl handle, range_buflen, rangecount, then gpa_range[] (+ PFNs)."""

    _pack_ = 1
    _fields_ = [
        ("header", vmbus_channel_message_header),
        ("child_relid", u32),
        ("gpadl", u32),
        ("range_buflen", u16),
        ("rangecount", u16),
        ("range", gpa_range * 0),
    ]


class vmbus_channel_gpadl_body(Structure):
    """GPADL_BODY: msgnumber, gpadl, then more PFNs."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("msgnumber", u32), ("gpadl", u32),
                ("pfn", u64 * 0)]


class vmbus_channel_gpadl_created(Structure):
    """GPADL_CREATED: child_relid, gpadl, creation_status (0 = success)."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("child_relid", u32), ("gpadl", u32),
                ("creation_status", u32)]


class vmbus_channel_gpadl_teardown(Structure):
    """GPADL_TEARDOWN: child_relid, gpadl."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("child_relid", u32), ("gpadl", u32)]


class vmbus_channel_gpadl_torndown(Structure):
    """GPADL_TORNDOWN: gpadl."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("gpadl", u32)]


class vmbus_channel_relid_released(Structure):
    """RELID_RELEASED: child_relid."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("child_relid", u32)]


class _vmbus_channel_initiate_contact_sint(Structure):
    """The anonymous msg_sint struct of vmbus_channel_initiate_contact (protocol >= 5.0)."""

    _fields_ = [("msg_sint", u8), ("padding1", u8 * 3), ("padding2", u32)]


class _vmbus_channel_initiate_contact_u(Union):
    """The anonymous interrupt_page/msg_sint union of vmbus_channel_initiate_contact."""

    _anonymous_ = ("_s",)
    _fields_ = [("interrupt_page", u64), ("_s", _vmbus_channel_initiate_contact_sint)]


class vmbus_channel_initiate_contact(Structure):
    """INITIATE_CONTACT: requested version, target vCPU, interrupt page or msg_sint (>= 5.0),
    monitor pages."""

    _pack_ = 1
    _anonymous_ = ("_u",)
    _fields_ = [
        ("header", vmbus_channel_message_header),
        ("vmbus_version_requested", u32),
        ("target_vcpu", u32),
        ("_u", _vmbus_channel_initiate_contact_u),
        ("monitor_page1", u64),
        ("monitor_page2", u64),
    ]


class vmbus_channel_tl_connect_request(Structure):
    """TL_CONNECT_REQUEST (hv_sock): guest endpoint and host service GUIDs."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("guest_endpoint_id", guid_t),
                ("host_service_id", guid_t)]


class vmbus_channel_modifychannel(Structure):
    """MODIFYCHANNEL: child_relid, target_vp."""

    _pack_ = 1
    _fields_ = [("header", vmbus_channel_message_header), ("child_relid", u32), ("target_vp", u32)]


class vmbus_channel_version_response(Structure):
    """VERSION_RESPONSE: version_supported, connection_state, msg_conn_id (>= 5.0)."""

    _pack_ = 1
    _fields_ = [
        ("header", vmbus_channel_message_header),
        ("version_supported", u8),
        ("connection_state", u8),
        ("padding", u16),
        ("msg_conn_id", u32),
    ]


# ============================================================================================
# Ring buffer and packets (drivers/hv/ring_buffer.c, include/linux/hyperv.h)
# ============================================================================================

VMBUS_PKT_TRAILER = 8
VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED = 1
MAX_PAGE_BUFFER_COUNT = 32
MAX_MULTIPAGE_BUFFER_COUNT = 32


class vmbus_packet_type(enum.IntEnum):
    """The ``type`` of a vmpacket_descriptor."""

    VM_PKT_INVALID = 0x0
    VM_PKT_SYNCH = 0x1
    VM_PKT_ADD_XFER_PAGESET = 0x2
    VM_PKT_RM_XFER_PAGESET = 0x3
    VM_PKT_ESTABLISH_GPADL = 0x4
    VM_PKT_TEARDOWN_GPADL = 0x5
    VM_PKT_DATA_INBAND = 0x6
    VM_PKT_DATA_USING_XFER_PAGES = 0x7
    VM_PKT_DATA_USING_GPADL = 0x8
    VM_PKT_DATA_USING_GPA_DIRECT = 0x9
    VM_PKT_CANCEL_REQUEST = 0xA
    VM_PKT_COMP = 0xB
    VM_PKT_DATA_USING_ADDITIONAL_PKT = 0xC
    VM_PKT_ADDITIONAL_DATA = 0xD


VM_PKT_INVALID = vmbus_packet_type.VM_PKT_INVALID
VM_PKT_SYNCH = vmbus_packet_type.VM_PKT_SYNCH
VM_PKT_ADD_XFER_PAGESET = vmbus_packet_type.VM_PKT_ADD_XFER_PAGESET
VM_PKT_RM_XFER_PAGESET = vmbus_packet_type.VM_PKT_RM_XFER_PAGESET
VM_PKT_ESTABLISH_GPADL = vmbus_packet_type.VM_PKT_ESTABLISH_GPADL
VM_PKT_TEARDOWN_GPADL = vmbus_packet_type.VM_PKT_TEARDOWN_GPADL
VM_PKT_DATA_INBAND = vmbus_packet_type.VM_PKT_DATA_INBAND
VM_PKT_DATA_USING_XFER_PAGES = vmbus_packet_type.VM_PKT_DATA_USING_XFER_PAGES
VM_PKT_DATA_USING_GPADL = vmbus_packet_type.VM_PKT_DATA_USING_GPADL
VM_PKT_DATA_USING_GPA_DIRECT = vmbus_packet_type.VM_PKT_DATA_USING_GPA_DIRECT
VM_PKT_CANCEL_REQUEST = vmbus_packet_type.VM_PKT_CANCEL_REQUEST
VM_PKT_COMP = vmbus_packet_type.VM_PKT_COMP
VM_PKT_DATA_USING_ADDITIONAL_PKT = vmbus_packet_type.VM_PKT_DATA_USING_ADDITIONAL_PKT
VM_PKT_ADDITIONAL_DATA = vmbus_packet_type.VM_PKT_ADDITIONAL_DATA


class _hv_ring_buffer_feature_bits_s(Structure):
    """The anonymous bit-field struct of hv_ring_buffer.feature_bits."""

    _fields_ = [("feat_pending_send_sz", u32, 1)]


class _hv_ring_buffer_feature_bits(Union):
    """hv_ring_buffer.feature_bits: feat_pending_send_sz / value."""

    _anonymous_ = ("_s",)
    _fields_ = [("_s", _hv_ring_buffer_feature_bits_s), ("value", u32)]


class hv_ring_buffer(Structure):
    """A ring's 4 KiB control page (the data area follows at ``buffer``, not described here)."""

    _pack_ = 1
    _fields_ = [
        ("write_index", u32),
        ("read_index", u32),
        ("interrupt_mask", u32),
        ("pending_send_sz", u32),
        ("reserved1", u32 * 12),
        ("feature_bits", _hv_ring_buffer_feature_bits),
        ("reserved2", u8 * (HV_HYP_PAGE_SIZE - 68)),
        ("buffer", u8 * 0),
    ]


class vmpacket_descriptor(Structure):
    """Every packet starts with this: type, offset8, len8 (8-byte units), flags, trans_id."""

    _pack_ = 1
    _fields_ = [("type", u16), ("offset8", u16), ("len8", u16), ("flags", u16), ("trans_id", u64)]


class vmpacket_header(Structure):
    """prev_pkt_start_offset followed by a descriptor."""

    _pack_ = 1
    _fields_ = [("prev_pkt_start_offset", u32), ("descriptor", vmpacket_descriptor)]


class vmtransfer_page_range(Structure):
    """One range of a transfer-page packet: byte_count bytes at byte_offset in the page set."""

    _pack_ = 1
    _fields_ = [("byte_count", u32), ("byte_offset", u32)]


class vmtransfer_page_packet_header(Structure):
    """Header of a VM_PKT_DATA_USING_XFER_PAGES packet (netvsc receive); range_cnt ranges follow."""

    _pack_ = 1
    _fields_ = [
        ("d", vmpacket_descriptor),
        ("xfer_pageset_id", u16),
        ("sender_owns_set", u8),
        ("reserved", u8),
        ("range_cnt", u32),
        ("ranges", vmtransfer_page_range * 1),
    ]


class hv_page_buffer(Structure):
    """One page of a page-buffer packet: len bytes at offset in page pfn."""

    _pack_ = 1
    _fields_ = [("len", u32), ("offset", u32), ("pfn", u64)]


class hv_multipage_buffer(Structure):
    """A multi-page buffer: len bytes from offset, up to 32 PFNs."""

    _pack_ = 1
    _fields_ = [("len", u32), ("offset", u32), ("pfn_array", u64 * MAX_MULTIPAGE_BUFFER_COUNT)]


class hv_mpb_array(Structure):
    """A multi-page buffer with a variable PFN array (len bytes from offset)."""

    _pack_ = 1
    _fields_ = [("len", u32), ("offset", u32), ("pfn_array", u64 * 0)]


class vmbus_channel_packet_page_buffer(Structure):
    """A GPA-direct packet with up to 32 single-page ranges."""

    _pack_ = 1
    _fields_ = [
        ("type", u16),
        ("dataoffset8", u16),
        ("length8", u16),
        ("flags", u16),
        ("transactionid", u64),
        ("reserved", u32),
        ("rangecount", u32),
        ("range", hv_page_buffer * MAX_PAGE_BUFFER_COUNT),
    ]


class vmbus_channel_packet_multipage_buffer(Structure):
    """A GPA-direct packet with one multi-page range."""

    _pack_ = 1
    _fields_ = [
        ("type", u16),
        ("dataoffset8", u16),
        ("length8", u16),
        ("flags", u16),
        ("transactionid", u64),
        ("reserved", u32),
        ("rangecount", u32),
        ("range", hv_multipage_buffer),
    ]


class vmbus_packet_mpb_array(Structure):
    """A GPA-direct packet header with one variable multi-page range (storvsc data transfers)."""

    _pack_ = 1
    _fields_ = [
        ("type", u16),
        ("dataoffset8", u16),
        ("length8", u16),
        ("flags", u16),
        ("transactionid", u64),
        ("reserved", u32),
        ("rangecount", u32),
        ("range", hv_mpb_array),
    ]


# ============================================================================================
# Registry
# ============================================================================================

#: Every public wire layout, in dependency order.
WIRE_STRUCTS = (
    # SynIC and hypercalls
    hv_message_flags, hv_port_id, hv_message_header, hv_message, hv_message_page,
    hv_synic_event_flags, hv_synic_scontrol, hv_synic_sint, hv_synic_simp, hv_synic_siefp,
    hv_x64_msr_hypercall_contents, hv_connection_id, hv_input_post_message,
    hv_monitor_trigger_state, hv_monitor_trigger_group, hv_monitor_parameter, hv_monitor_page,
    guid_t,
    # channel messages
    vmbus_channel_message_header, vmbus_channel_version_supported, vmbus_channel_offer,
    vmbus_channel_offer_channel, vmbus_channel_rescind_offer, vmbus_channel_open_channel,
    vmbus_channel_open_result, vmbus_channel_modifychannel_response, vmbus_channel_close_channel,
    vmbus_channel_gpadl_header, vmbus_channel_gpadl_body, vmbus_channel_gpadl_created,
    vmbus_channel_gpadl_teardown, vmbus_channel_gpadl_torndown, vmbus_channel_relid_released,
    vmbus_channel_initiate_contact, vmbus_channel_tl_connect_request, vmbus_channel_modifychannel,
    vmbus_channel_version_response,
    # ring and packets
    hv_ring_buffer, vmpacket_descriptor, vmpacket_header, vmtransfer_page_range,
    vmtransfer_page_packet_header, gpa_range, hv_page_buffer, hv_multipage_buffer, hv_mpb_array,
    vmbus_channel_packet_page_buffer, vmbus_channel_packet_multipage_buffer,
    vmbus_packet_mpb_array,
)
