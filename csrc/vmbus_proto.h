/*
 * vmbus_proto.h - VMBus channel messages and the Hyper-V synthetic interface (SynIC, hypercalls,
 * synthetic MSRs, CPUID), in Linux's spelling: the C twin of hvkvm/vmbus/wire.py.
 *
 * Struct, member and constant names are Linux's (include/linux/hyperv.h,
 * drivers/hv/hyperv_vmbus.h, include/asm-generic/hyperv-tlfs.h, arch/x86/include/asm/hyperv-tlfs.h,
 * newer kernels: include/hyperv/hvgdk_mini.h); member types are fixed-width (<stdint.h>);
 * __attribute__((packed)) exactly where Linux says __packed. tests/test_linux_conformance.py
 * compares every layout here with the BTF of Debian's compiled kernel and with wire.py.
 *
 * Freestanding: only <stdint.h>. x86-64, little endian.
 *
 * The ring and packet-level structures (struct hv_ring_buffer, struct vmpacket_descriptor,
 * enum vmbus_packet_type, struct gpa_range, struct vmtransfer_page_packet_header,
 * struct vmbus_packet_mpb_array, ...) belong to csrc/vmbus_ring.h, which this header includes
 * when it is present. Without it, only struct gpa_range (needed by the GPADL header message) is
 * defined here, and struct vmpacket_header (which embeds a vmpacket_descriptor) is left out.
 * vmbus_ring.h must not include this header before it has defined struct vmpacket_descriptor.
 *
 * Linux-version notes (the layout follows Debian's 6.1 kernel, which the test reads):
 * vmbus_channel_initiate_contact has msg_sint, padding1[3], padding2 (newer kernels: msg_sint,
 * msg_vtl, reserved[6]; same offsets); hv_synic_event_flags is unsigned long flags[32].
 * The HV_*_GUID macros expand to GUID_INIT(...) (Linux's add ".guid =" for device id tables).
 */
#ifndef HVKVM_VMBUS_PROTO_H
#define HVKVM_VMBUS_PROTO_H

#include <stdint.h>

#if defined(__has_include)
#if __has_include("vmbus_ring.h")
#include "vmbus_ring.h"
#endif
#endif

#define HV_PACKED __attribute__((packed))

/* ============================================================================================
 * Hyper-V TLFS: pages, CPUID leaves and features, synthetic MSRs, hypercalls, status codes
 * ============================================================================================ */

#define HV_HYP_PAGE_SHIFT 12
#define HV_HYP_PAGE_SIZE (1ull << HV_HYP_PAGE_SHIFT)
#define HV_HYP_PAGE_MASK (~(HV_HYP_PAGE_SIZE - 1))

#define HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS 0x40000000
#define HYPERV_CPUID_INTERFACE 0x40000001
#define HYPERV_CPUID_VERSION 0x40000002
#define HYPERV_CPUID_FEATURES 0x40000003
#define HYPERV_CPUID_ENLIGHTMENT_INFO 0x40000004
#define HYPERV_CPUID_IMPLEMENT_LIMITS 0x40000005
#define HYPERV_CPUID_CPU_MANAGEMENT_FEATURES 0x40000007
#define HYPERV_CPUID_NESTED_FEATURES 0x4000000A
#define HYPERV_CPUID_ISOLATION_CONFIG 0x4000000C
#define HYPERV_HYPERVISOR_PRESENT_BIT 0x80000000
#define HYPERV_CPUID_MIN 0x40000005
#define HYPERV_CPUID_MAX 0x4000ffff
#define HYPERV_CPUID_SIGNATURE_EAX 0x31237648 /* "Hv#1" */

/* HYPERV_CPUID_FEATURES.EAX (group A) */
#define HV_MSR_VP_RUNTIME_AVAILABLE (1u << 0)
#define HV_MSR_TIME_REF_COUNT_AVAILABLE (1u << 1)
#define HV_MSR_SYNIC_AVAILABLE (1u << 2)
#define HV_MSR_SYNTIMER_AVAILABLE (1u << 3)
#define HV_MSR_APIC_ACCESS_AVAILABLE (1u << 4)
#define HV_MSR_HYPERCALL_AVAILABLE (1u << 5)
#define HV_MSR_VP_INDEX_AVAILABLE (1u << 6)
#define HV_MSR_RESET_AVAILABLE (1u << 7)
#define HV_MSR_STAT_PAGES_AVAILABLE (1u << 8)
#define HV_MSR_REFERENCE_TSC_AVAILABLE (1u << 9)
#define HV_MSR_GUEST_IDLE_AVAILABLE (1u << 10)
#define HV_ACCESS_FREQUENCY_MSRS (1u << 11)
#define HV_ACCESS_REENLIGHTENMENT (1u << 13)
#define HV_ACCESS_TSC_INVARIANT (1u << 15)

/* HYPERV_CPUID_FEATURES.EBX (group B) */
#define HV_CREATE_PARTITIONS (1u << 0)
#define HV_ACCESS_PARTITION_ID (1u << 1)
#define HV_ACCESS_MEMORY_POOL (1u << 2)
#define HV_ADJUST_MESSAGE_BUFFERS (1u << 3)
#define HV_POST_MESSAGES (1u << 4)
#define HV_SIGNAL_EVENTS (1u << 5)
#define HV_CREATE_PORT (1u << 6)
#define HV_CONNECT_PORT (1u << 7)
#define HV_ACCESS_STATS (1u << 8)
#define HV_DEBUGGING (1u << 11)
#define HV_CPU_MANAGEMENT (1u << 12)
#define HV_ENABLE_EXTENDED_HYPERCALLS (1u << 20)
#define HV_ISOLATION (1u << 22)

/* HYPERV_CPUID_FEATURES.EDX (group D) */
#define HV_X64_MWAIT_AVAILABLE (1u << 0)
#define HV_X64_GUEST_DEBUGGING_AVAILABLE (1u << 1)
#define HV_X64_PERF_MONITOR_AVAILABLE (1u << 2)
#define HV_X64_CPU_DYNAMIC_PARTITIONING_AVAILABLE (1u << 3)
#define HV_X64_HYPERCALL_XMM_INPUT_AVAILABLE (1u << 4)
#define HV_X64_GUEST_IDLE_STATE_AVAILABLE (1u << 5)
#define HV_FEATURE_FREQUENCY_MSRS_AVAILABLE (1u << 8)
#define HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE (1u << 10)
#define HV_FEATURE_DEBUG_MSRS_AVAILABLE (1u << 11)
#define HV_X64_HYPERCALL_XMM_OUTPUT_AVAILABLE (1u << 15)
#define HV_STIMER_DIRECT_MODE_AVAILABLE (1u << 19)

/* HYPERV_CPUID_ENLIGHTMENT_INFO.EAX (recommendations) */
#define HV_X64_AS_SWITCH_RECOMMENDED (1u << 0)
#define HV_X64_LOCAL_TLB_FLUSH_RECOMMENDED (1u << 1)
#define HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED (1u << 2)
#define HV_X64_APIC_ACCESS_RECOMMENDED (1u << 3)
#define HV_X64_SYSTEM_RESET_RECOMMENDED (1u << 4)
#define HV_X64_RELAXED_TIMING_RECOMMENDED (1u << 5)
#define HV_DEPRECATING_AEOI_RECOMMENDED (1u << 9)
#define HV_X64_CLUSTER_IPI_RECOMMENDED (1u << 10)
#define HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED (1u << 11)
#define HV_X64_ENLIGHTENED_VMCS_RECOMMENDED (1u << 14)

/* Synthetic MSRs */
#define HV_X64_MSR_GUEST_OS_ID 0x40000000
#define HV_X64_MSR_HYPERCALL 0x40000001
#define HV_X64_MSR_VP_INDEX 0x40000002
#define HV_X64_MSR_RESET 0x40000003
#define HV_X64_MSR_VP_RUNTIME 0x40000010
#define HV_X64_MSR_TIME_REF_COUNT 0x40000020
#define HV_X64_MSR_REFERENCE_TSC 0x40000021
#define HV_X64_MSR_TSC_FREQUENCY 0x40000022
#define HV_X64_MSR_APIC_FREQUENCY 0x40000023
#define HV_X64_MSR_EOI 0x40000070
#define HV_X64_MSR_ICR 0x40000071
#define HV_X64_MSR_TPR 0x40000072
#define HV_X64_MSR_VP_ASSIST_PAGE 0x40000073
#define HV_X64_MSR_SCONTROL 0x40000080
#define HV_X64_MSR_SVERSION 0x40000081
#define HV_X64_MSR_SIEFP 0x40000082
#define HV_X64_MSR_SIMP 0x40000083
#define HV_X64_MSR_EOM 0x40000084
#define HV_X64_MSR_SIRBP 0x40000085
#define HV_X64_MSR_SINT0 0x40000090
#define HV_X64_MSR_SINT1 0x40000091
#define HV_X64_MSR_SINT2 0x40000092
#define HV_X64_MSR_SINT3 0x40000093
#define HV_X64_MSR_SINT4 0x40000094
#define HV_X64_MSR_SINT5 0x40000095
#define HV_X64_MSR_SINT6 0x40000096
#define HV_X64_MSR_SINT7 0x40000097
#define HV_X64_MSR_SINT8 0x40000098
#define HV_X64_MSR_SINT9 0x40000099
#define HV_X64_MSR_SINT10 0x4000009A
#define HV_X64_MSR_SINT11 0x4000009B
#define HV_X64_MSR_SINT12 0x4000009C
#define HV_X64_MSR_SINT13 0x4000009D
#define HV_X64_MSR_SINT14 0x4000009E
#define HV_X64_MSR_SINT15 0x4000009F
#define HV_X64_MSR_STIMER0_CONFIG 0x400000B0
#define HV_X64_MSR_STIMER0_COUNT 0x400000B1
#define HV_X64_MSR_STIMER1_CONFIG 0x400000B2
#define HV_X64_MSR_STIMER1_COUNT 0x400000B3
#define HV_X64_MSR_STIMER2_CONFIG 0x400000B4
#define HV_X64_MSR_STIMER2_COUNT 0x400000B5
#define HV_X64_MSR_STIMER3_CONFIG 0x400000B6
#define HV_X64_MSR_STIMER3_COUNT 0x400000B7
#define HV_X64_MSR_GUEST_IDLE 0x400000F0
#define HV_X64_MSR_CRASH_P0 0x40000100
#define HV_X64_MSR_CRASH_P1 0x40000101
#define HV_X64_MSR_CRASH_P2 0x40000102
#define HV_X64_MSR_CRASH_P3 0x40000103
#define HV_X64_MSR_CRASH_P4 0x40000104
#define HV_X64_MSR_CRASH_CTL 0x40000105
#define HV_X64_MSR_REENLIGHTENMENT_CONTROL 0x40000106
#define HV_X64_MSR_TSC_EMULATION_CONTROL 0x40000107
#define HV_X64_MSR_TSC_EMULATION_STATUS 0x40000108
#define HV_X64_MSR_TSC_INVARIANT_CONTROL 0x40000118

#define HV_X64_MSR_HYPERCALL_ENABLE 0x00000001
#define HV_X64_MSR_HYPERCALL_PAGE_ADDRESS_SHIFT 12
#define HV_X64_MSR_HYPERCALL_PAGE_ADDRESS_MASK \
	(~((1ull << HV_X64_MSR_HYPERCALL_PAGE_ADDRESS_SHIFT) - 1))
#define HV_X64_MSR_TSC_REFERENCE_ENABLE 0x00000001
#define HV_X64_MSR_TSC_REFERENCE_ADDRESS_SHIFT 12
#define HV_X64_MSR_VP_ASSIST_PAGE_ENABLE 0x00000001
#define HV_X64_MSR_VP_ASSIST_PAGE_ADDRESS_SHIFT 12
#define HV_LINUX_VENDOR_ID 0x8100
#define HV_CRASH_CTL_CRASH_NOTIFY_MSG (1ull << 62)
#define HV_CRASH_CTL_CRASH_NOTIFY (1ull << 63)

/* Hypercall codes */
#define HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE 0x0002
#define HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST 0x0003
#define HVCALL_NOTIFY_LONG_SPIN_WAIT 0x0008
#define HVCALL_SEND_IPI 0x000b
#define HVCALL_ENABLE_VP_VTL 0x000f
#define HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX 0x0013
#define HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX 0x0014
#define HVCALL_SEND_IPI_EX 0x0015
#define HVCALL_GET_PARTITION_ID 0x0046
#define HVCALL_DEPOSIT_MEMORY 0x0048
#define HVCALL_CREATE_VP 0x004e
#define HVCALL_GET_VP_REGISTERS 0x0050
#define HVCALL_SET_VP_REGISTERS 0x0051
#define HVCALL_POST_MESSAGE 0x005c
#define HVCALL_SIGNAL_EVENT 0x005d
#define HVCALL_POST_DEBUG_DATA 0x0069
#define HVCALL_RETRIEVE_DEBUG_DATA 0x006a
#define HVCALL_RESET_DEBUG_SESSION 0x006b
#define HVCALL_ADD_LOGICAL_PROCESSOR 0x0076
#define HVCALL_MAP_DEVICE_INTERRUPT 0x007c
#define HVCALL_UNMAP_DEVICE_INTERRUPT 0x007d
#define HVCALL_RETARGET_INTERRUPT 0x007e
#define HVCALL_START_VP 0x0099
#define HVCALL_GET_VP_ID_FROM_APIC_ID 0x009a
#define HVCALL_FLUSH_GUEST_PHYSICAL_ADDRESS_SPACE 0x00af
#define HVCALL_FLUSH_GUEST_PHYSICAL_ADDRESS_LIST 0x00b0
#define HVCALL_MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY 0x00db
#define HVCALL_MMIO_READ 0x0106
#define HVCALL_MMIO_WRITE 0x0107

/* The hypercall input value */
#define HV_HYPERCALL_RESULT_MASK 0xffffull
#define HV_HYPERCALL_FAST_BIT (1ull << 16)
#define HV_HYPERCALL_VARHEAD_OFFSET 17
#define HV_HYPERCALL_VARHEAD_MASK (0x3ffull << 17)
#define HV_HYPERCALL_RSVD0_MASK (0x1full << 27)
#define HV_HYPERCALL_REP_COMP_OFFSET 32
#define HV_HYPERCALL_REP_COMP_1 (1ull << 32)
#define HV_HYPERCALL_REP_COMP_MASK (0xfffull << 32)
#define HV_HYPERCALL_RSVD1_MASK (0xfull << 44)
#define HV_HYPERCALL_REP_START_OFFSET 48
#define HV_HYPERCALL_REP_START_MASK (0xfffull << 48)
#define HV_HYPERCALL_RSVD2_MASK (0xfull << 60)
#define HV_HYPERCALL_RSVD_MASK \
	(HV_HYPERCALL_RSVD0_MASK | HV_HYPERCALL_RSVD1_MASK | HV_HYPERCALL_RSVD2_MASK)

/* Hypercall status codes */
#define HV_STATUS_SUCCESS 0x0
#define HV_STATUS_INVALID_HYPERCALL_CODE 0x2
#define HV_STATUS_INVALID_HYPERCALL_INPUT 0x3
#define HV_STATUS_INVALID_ALIGNMENT 0x4
#define HV_STATUS_INVALID_PARAMETER 0x5
#define HV_STATUS_ACCESS_DENIED 0x6
#define HV_STATUS_INVALID_PARTITION_STATE 0x7
#define HV_STATUS_OPERATION_DENIED 0x8
#define HV_STATUS_UNKNOWN_PROPERTY 0x9
#define HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE 0xA
#define HV_STATUS_INSUFFICIENT_MEMORY 0xB
#define HV_STATUS_INVALID_PARTITION_ID 0xD
#define HV_STATUS_INVALID_VP_INDEX 0xE
#define HV_STATUS_NOT_FOUND 0x10
#define HV_STATUS_INVALID_PORT_ID 0x11
#define HV_STATUS_INVALID_CONNECTION_ID 0x12
#define HV_STATUS_INSUFFICIENT_BUFFERS 0x13
#define HV_STATUS_NOT_ACKNOWLEDGED 0x14
#define HV_STATUS_INVALID_VP_STATE 0x15
#define HV_STATUS_NO_RESOURCES 0x1D
#define HV_STATUS_PROCESSOR_FEATURE_NOT_SUPPORTED 0x20
#define HV_STATUS_INVALID_LP_INDEX 0x41
#define HV_STATUS_INVALID_REGISTER_VALUE 0x50
#define HV_STATUS_OPERATION_FAILED 0x71
#define HV_STATUS_TIME_OUT 0x78
#define HV_STATUS_CALL_PENDING 0x79
#define HV_STATUS_VTL_ALREADY_ENABLED 0x86

#define HV_PARTITION_ID_SELF ((uint64_t)-1)
#define HV_VP_INDEX_SELF ((uint32_t)-2)
#define HV_ANY_VP ((uint32_t)-1)

/* ============================================================================================
 * SynIC
 * ============================================================================================ */

#define HV_SYNIC_SINT_COUNT 16
#define HV_SYNIC_VERSION_1 0x1
#define HV_SYNIC_FIRST_VALID_VECTOR 16
#define HV_SYNIC_CONTROL_ENABLE (1ull << 0)
#define HV_SYNIC_SIMP_ENABLE (1ull << 0)
#define HV_SYNIC_SIEFP_ENABLE (1ull << 0)
#define HV_SYNIC_SINT_MASKED (1ull << 16)
#define HV_SYNIC_SINT_AUTO_EOI (1ull << 17)
#define HV_SYNIC_SINT_VECTOR_MASK 0xFF
#define HV_SYNIC_STIMER_COUNT 4

#define HV_MESSAGE_SIZE 256
#define HV_MESSAGE_PAYLOAD_BYTE_COUNT 240
#define HV_MESSAGE_PAYLOAD_QWORD_COUNT 30

#define HV_EVENT_FLAGS_COUNT (256 * 8)
#define HV_EVENT_FLAGS_LONG_COUNT (256 / 8)

enum hv_message_type {
	HVMSG_NONE = 0x00000000,
	HVMSG_UNMAPPED_GPA = 0x80000000,
	HVMSG_GPA_INTERCEPT = 0x80000001,
	HVMSG_TIMER_EXPIRED = 0x80000010,
	HVMSG_INVALID_VP_REGISTER_VALUE = 0x80000020,
	HVMSG_UNRECOVERABLE_EXCEPTION = 0x80000021,
	HVMSG_UNSUPPORTED_FEATURE = 0x80000022,
	HVMSG_EVENTLOG_BUFFERCOMPLETE = 0x80000040,
	HVMSG_X64_IOPORT_INTERCEPT = 0x80010000,
	HVMSG_X64_MSR_INTERCEPT = 0x80010001,
	HVMSG_X64_CPUID_INTERCEPT = 0x80010002,
	HVMSG_X64_EXCEPTION_INTERCEPT = 0x80010003,
	HVMSG_X64_APIC_EOI = 0x80010004,
	HVMSG_X64_LEGACY_FP_ERROR = 0x80010005
};

union hv_message_flags {
	uint8_t asu8;
	struct {
		uint8_t msg_pending:1;
		uint8_t reserved:7;
	} HV_PACKED;
};

union hv_port_id {
	uint32_t asu32;
	struct {
		uint32_t id:24;
		uint32_t reserved:8;
	} HV_PACKED u;
};

struct hv_message_header {
	uint32_t message_type;
	uint8_t payload_size;
	union hv_message_flags message_flags;
	uint8_t reserved[2];
	union {
		uint64_t sender;
		union hv_port_id port;
	};
} HV_PACKED;

struct hv_message {
	struct hv_message_header header;
	union {
		uint64_t payload[HV_MESSAGE_PAYLOAD_QWORD_COUNT];
	} u;
} HV_PACKED;

struct hv_message_page {
	struct hv_message sint_message[HV_SYNIC_SINT_COUNT];
} HV_PACKED;

union hv_synic_event_flags {
	uint64_t flags[HV_EVENT_FLAGS_LONG_COUNT];
};

union hv_synic_scontrol {
	uint64_t as_uint64;
	struct {
		uint64_t enable:1;
		uint64_t reserved:63;
	} HV_PACKED;
};

union hv_synic_sint {
	uint64_t as_uint64;
	struct {
		uint64_t vector:8;
		uint64_t reserved1:8;
		uint64_t masked:1;
		uint64_t auto_eoi:1;
		uint64_t polling:1;
		uint64_t reserved2:45;
	} HV_PACKED;
};

union hv_synic_simp {
	uint64_t as_uint64;
	struct {
		uint64_t simp_enabled:1;
		uint64_t preserved:11;
		uint64_t base_simp_gpa:52;
	} HV_PACKED;
};

union hv_synic_siefp {
	uint64_t as_uint64;
	struct {
		uint64_t siefp_enabled:1;
		uint64_t preserved:11;
		uint64_t base_siefp_gpa:52;
	} HV_PACKED;
};

union hv_x64_msr_hypercall_contents {
	uint64_t as_uint64;
	struct {
		uint64_t enable:1;
		uint64_t reserved:11;
		uint64_t guest_physical_address:52;
	} HV_PACKED;
};

union hv_connection_id {
	uint32_t asu32;
	struct {
		uint32_t id:24;
		uint32_t reserved:8;
	} u;
};

/* HvPostMessage input */
struct hv_input_post_message {
	union hv_connection_id connectionid;
	uint32_t reserved;
	uint32_t message_type;
	uint32_t payload_size;
	uint64_t payload[HV_MESSAGE_PAYLOAD_QWORD_COUNT];
};

/* Monitor pages */
union hv_monitor_trigger_state {
	uint32_t asu32;
	struct {
		uint32_t group_enable:4;
		uint32_t rsvdz:28;
	};
};

union hv_monitor_trigger_group {
	uint64_t as_uint64;
	struct {
		uint32_t pending;
		uint32_t armed;
	};
};

struct hv_monitor_parameter {
	union hv_connection_id connectionid;
	uint16_t flagnumber;
	uint16_t rsvdz;
};

struct hv_monitor_page {
	union hv_monitor_trigger_state trigger_state;
	uint32_t rsvdz1;
	union hv_monitor_trigger_group trigger_group[4];
	uint64_t rsvdz2[3];
	int32_t next_checktime[4][32];
	uint16_t latency[4][32];
	uint64_t rsvdz3[32];
	struct hv_monitor_parameter parameter[4][32];
	uint8_t rsvdz4[1984];
};

/* ============================================================================================
 * GUIDs
 * ============================================================================================ */

typedef struct {
	uint8_t b[16];
} guid_t;

#ifndef GUID_INIT
#define GUID_INIT(a, b, c, d0, d1, d2, d3, d4, d5, d6, d7)                                       \
	((guid_t){{(a) & 0xff, ((a) >> 8) & 0xff, ((a) >> 16) & 0xff, ((a) >> 24) & 0xff,       \
		   (b) & 0xff, ((b) >> 8) & 0xff, (c) & 0xff, ((c) >> 8) & 0xff,                  \
		   (d0), (d1), (d2), (d3), (d4), (d5), (d6), (d7)}})
#endif

#define HV_NIC_GUID GUID_INIT(0xf8615163, 0xdf3e, 0x46c5, 0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65, 0xed, 0x0e)
#define HV_IDE_GUID GUID_INIT(0x32412632, 0x86cb, 0x44a2, 0x9b, 0x5c, 0x50, 0xd1, 0x41, 0x73, 0x54, 0xf5)
#define HV_SCSI_GUID GUID_INIT(0xba6163d9, 0x04a1, 0x4d29, 0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f)
#define HV_SHUTDOWN_GUID GUID_INIT(0x0e0b6031, 0x5213, 0x4934, 0x81, 0x8b, 0x38, 0xd9, 0x0c, 0xed, 0x39, 0xdb)
#define HV_TS_GUID GUID_INIT(0x9527e630, 0xd0ae, 0x497b, 0xad, 0xce, 0xe8, 0x0a, 0xb0, 0x17, 0x5c, 0xaf)
#define HV_HEART_BEAT_GUID GUID_INIT(0x57164f39, 0x9115, 0x4e78, 0xab, 0x55, 0x38, 0x2f, 0x3b, 0xd5, 0x42, 0x2d)
#define HV_KVP_GUID GUID_INIT(0xa9a0f4e7, 0x5a45, 0x4d96, 0xb8, 0x27, 0x8a, 0x84, 0x1e, 0x8c, 0x03, 0xe6)
#define HV_DM_GUID GUID_INIT(0x525074dc, 0x8985, 0x46e2, 0x80, 0x57, 0xa3, 0x07, 0xdc, 0x18, 0xa5, 0x02)
#define HV_MOUSE_GUID GUID_INIT(0xcfa8b69e, 0x5b4a, 0x4cc0, 0xb9, 0x8b, 0x8b, 0xa1, 0xa1, 0xf3, 0xf9, 0x5a)
#define HV_KBD_GUID GUID_INIT(0xf912ad6d, 0x2b17, 0x48ea, 0xbd, 0x65, 0xf9, 0x27, 0xa6, 0x1c, 0x76, 0x84)
#define HV_VSS_GUID GUID_INIT(0x35fa2e29, 0xea23, 0x4236, 0x96, 0xae, 0x3a, 0x6e, 0xba, 0xcb, 0xa4, 0x40)
#define HV_SYNTHVID_GUID GUID_INIT(0xda0a7802, 0xe377, 0x4aac, 0x8e, 0x77, 0x05, 0x58, 0xeb, 0x10, 0x73, 0xf8)
#define HV_SYNTHFC_GUID GUID_INIT(0x2f9bcc4a, 0x0069, 0x4af3, 0xb7, 0x6b, 0x6f, 0xd0, 0xbe, 0x52, 0x8c, 0xda)
#define HV_FCOPY_GUID GUID_INIT(0x34d14be3, 0xdee4, 0x41c8, 0x9a, 0xe7, 0x6b, 0x17, 0x49, 0x77, 0xc1, 0x92)
#define HV_ND_GUID GUID_INIT(0x8c2eaf3d, 0x32a7, 0x4b09, 0xab, 0x99, 0xbd, 0x1f, 0x1c, 0x86, 0xb5, 0x01)
#define HV_PCIE_GUID GUID_INIT(0x44c4f61d, 0x4444, 0x4400, 0x9d, 0x52, 0x80, 0x2e, 0x27, 0xed, 0xe1, 0x9f)
#define HV_AVMA1_GUID GUID_INIT(0xf8e65716, 0x3cb3, 0x4a06, 0x9a, 0x60, 0x18, 0x89, 0xc5, 0xcc, 0xca, 0xb5)
#define HV_AVMA2_GUID GUID_INIT(0x3375baf4, 0x9e15, 0x4b30, 0xb7, 0x65, 0x67, 0xac, 0xb1, 0x0d, 0x60, 0x7b)
#define HV_RDV_GUID GUID_INIT(0x276aacf4, 0xac15, 0x426c, 0x98, 0xdd, 0x75, 0x21, 0xad, 0x3f, 0x01, 0xfe)
#define HV_IMC_GUID GUID_INIT(0xc376c1c3, 0xd276, 0x48d2, 0x90, 0xa9, 0xc0, 0x47, 0x48, 0x07, 0x2c, 0x60)

/* ============================================================================================
 * VMBus connection
 * ============================================================================================ */

#define VMBUS_MAKE_VERSION(major, minor) (((major) << 16) | (minor))
#define VERSION_WS2008 ((0 << 16) | (13))
#define VERSION_WIN7 ((1 << 16) | (1))
#define VERSION_WIN8 ((2 << 16) | (4))
#define VERSION_WIN8_1 ((3 << 16) | (0))
#define VERSION_WIN10 ((4 << 16) | (0))
#define VERSION_WIN10_V4_1 ((4 << 16) | (1))
#define VERSION_WIN10_V5 ((5 << 16) | (0))
#define VERSION_WIN10_V5_1 ((5 << 16) | (1))
#define VERSION_WIN10_V5_2 ((5 << 16) | (2))
#define VERSION_WIN10_V5_3 ((5 << 16) | (3))

enum {
	VMBUS_MESSAGE_CONNECTION_ID = 1,
	VMBUS_MESSAGE_CONNECTION_ID_4 = 4,
	VMBUS_MESSAGE_PORT_ID = 1,
	VMBUS_EVENT_CONNECTION_ID = 2,
	VMBUS_EVENT_PORT_ID = 2,
	VMBUS_MONITOR_CONNECTION_ID = 3,
	VMBUS_MONITOR_PORT_ID = 3,
	VMBUS_MESSAGE_SINT = 2,
};

#define MAX_SIZE_CHANNEL_MESSAGE HV_MESSAGE_PAYLOAD_BYTE_COUNT
#define MAX_USER_DEFINED_BYTES 120
#define MAX_PIPE_USER_DEFINED_BYTES 116
#define VMBUS_PIPE_TYPE_BYTE 0x00000000
#define VMBUS_PIPE_TYPE_MESSAGE 0x00000004

#define VMBUS_CHANNEL_ENUMERATE_DEVICE_INTERFACE 1
#define VMBUS_CHANNEL_SERVER_SUPPORTS_TRANSFER_PAGES 2
#define VMBUS_CHANNEL_SERVER_SUPPORTS_GPADLS 4
#define VMBUS_CHANNEL_NAMED_PIPE_MODE 0x10
#define VMBUS_CHANNEL_LOOPBACK_OFFER 0x100
#define VMBUS_CHANNEL_PARENT_OFFER 0x200
#define VMBUS_CHANNEL_REQUEST_MONITORED_NOTIFICATION 0x400
#define VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER 0x2000

#define GPADL_TYPE_RING_BUFFER 1
#define GPADL_TYPE_SERVER_SAVE_AREA 2
#define GPADL_TYPE_TRANSACTION 8

enum hv_gpadl_type {
	HV_GPADL_BUFFER,
	HV_GPADL_RING
};

enum vmbus_channel_message_type {
	CHANNELMSG_INVALID = 0,
	CHANNELMSG_OFFERCHANNEL = 1,
	CHANNELMSG_RESCIND_CHANNELOFFER = 2,
	CHANNELMSG_REQUESTOFFERS = 3,
	CHANNELMSG_ALLOFFERS_DELIVERED = 4,
	CHANNELMSG_OPENCHANNEL = 5,
	CHANNELMSG_OPENCHANNEL_RESULT = 6,
	CHANNELMSG_CLOSECHANNEL = 7,
	CHANNELMSG_GPADL_HEADER = 8,
	CHANNELMSG_GPADL_BODY = 9,
	CHANNELMSG_GPADL_CREATED = 10,
	CHANNELMSG_GPADL_TEARDOWN = 11,
	CHANNELMSG_GPADL_TORNDOWN = 12,
	CHANNELMSG_RELID_RELEASED = 13,
	CHANNELMSG_INITIATE_CONTACT = 14,
	CHANNELMSG_VERSION_RESPONSE = 15,
	CHANNELMSG_UNLOAD = 16,
	CHANNELMSG_UNLOAD_RESPONSE = 17,
	CHANNELMSG_18 = 18,
	CHANNELMSG_19 = 19,
	CHANNELMSG_20 = 20,
	CHANNELMSG_TL_CONNECT_REQUEST = 21,
	CHANNELMSG_MODIFYCHANNEL = 22,
	CHANNELMSG_TL_CONNECT_RESULT = 23,
	CHANNELMSG_MODIFYCHANNEL_RESPONSE = 24,
	CHANNELMSG_COUNT
};

/* ============================================================================================
 * Channel messages
 * ============================================================================================ */

struct vmbus_channel_message_header {
	enum vmbus_channel_message_type msgtype;
	uint32_t padding;
} HV_PACKED;

struct vmbus_channel_version_supported {
	struct vmbus_channel_message_header header;
	uint8_t version_supported;
} HV_PACKED;

struct vmbus_channel_offer {
	guid_t if_type;
	guid_t if_instance;
	uint64_t reserved1;
	uint64_t reserved2;
	uint16_t chn_flags;
	uint16_t mmio_megabytes;
	union {
		struct {
			unsigned char user_def[MAX_USER_DEFINED_BYTES];
		} std;
		struct {
			uint32_t pipe_mode;
			unsigned char user_def[MAX_PIPE_USER_DEFINED_BYTES];
		} pipe;
	} u;
	uint16_t sub_channel_index;
	uint16_t reserved3;
} HV_PACKED;

struct vmbus_channel_offer_channel {
	struct vmbus_channel_message_header header;
	struct vmbus_channel_offer offer;
	uint32_t child_relid;
	uint8_t monitorid;
	uint8_t monitor_allocated:1;
	uint8_t reserved:7;
	uint16_t is_dedicated_interrupt:1;
	uint16_t reserved1:15;
	uint32_t connection_id;
} HV_PACKED;

struct vmbus_channel_rescind_offer {
	struct vmbus_channel_message_header header;
	uint32_t child_relid;
} HV_PACKED;

struct vmbus_channel_open_channel {
	struct vmbus_channel_message_header header;
	uint32_t child_relid;
	uint32_t openid;
	uint32_t ringbuffer_gpadlhandle;
	uint32_t target_vp;
	uint32_t downstream_ringbuffer_pageoffset;
	unsigned char userdata[MAX_USER_DEFINED_BYTES];
} HV_PACKED;

struct vmbus_channel_open_result {
	struct vmbus_channel_message_header header;
	uint32_t child_relid;
	uint32_t openid;
	uint32_t status;
} HV_PACKED;

struct vmbus_channel_modifychannel_response {
	struct vmbus_channel_message_header header;
	uint32_t child_relid;
	uint32_t status;
} HV_PACKED;

struct vmbus_channel_close_channel {
	struct vmbus_channel_message_header header;
	uint32_t child_relid;
} HV_PACKED;

#ifndef HVKVM_VMBUS_RING_H
/* vmbus_ring.h is absent: the one packet-level structure a channel message needs. */
struct gpa_range {
	uint32_t byte_count;
	uint32_t byte_offset;
	uint64_t pfn_array[];
};
#endif

struct vmbus_channel_gpadl_header {
	struct vmbus_channel_message_header header;
	uint32_t child_relid;
	uint32_t gpadl;
	uint16_t range_buflen;
	uint16_t rangecount;
	struct gpa_range range[];
} HV_PACKED;

struct vmbus_channel_gpadl_body {
	struct vmbus_channel_message_header header;
	uint32_t msgnumber;
	uint32_t gpadl;
	uint64_t pfn[];
} HV_PACKED;

struct vmbus_channel_gpadl_created {
	struct vmbus_channel_message_header header;
	uint32_t child_relid;
	uint32_t gpadl;
	uint32_t creation_status;
} HV_PACKED;

struct vmbus_channel_gpadl_teardown {
	struct vmbus_channel_message_header header;
	uint32_t child_relid;
	uint32_t gpadl;
} HV_PACKED;

struct vmbus_channel_gpadl_torndown {
	struct vmbus_channel_message_header header;
	uint32_t gpadl;
} HV_PACKED;

struct vmbus_channel_relid_released {
	struct vmbus_channel_message_header header;
	uint32_t child_relid;
} HV_PACKED;

struct vmbus_channel_initiate_contact {
	struct vmbus_channel_message_header header;
	uint32_t vmbus_version_requested;
	uint32_t target_vcpu; /* The VCPU the host should respond to */
	union {
		uint64_t interrupt_page;
		struct {
			uint8_t msg_sint;
			uint8_t padding1[3];
			uint32_t padding2;
		};
	};
	uint64_t monitor_page1;
	uint64_t monitor_page2;
} HV_PACKED;

struct vmbus_channel_tl_connect_request {
	struct vmbus_channel_message_header header;
	guid_t guest_endpoint_id;
	guid_t host_service_id;
} HV_PACKED;

struct vmbus_channel_modifychannel {
	struct vmbus_channel_message_header header;
	uint32_t child_relid;
	uint32_t target_vp;
} HV_PACKED;

struct vmbus_channel_version_response {
	struct vmbus_channel_message_header header;
	uint8_t version_supported;
	uint8_t connection_state;
	uint16_t padding;
	uint32_t msg_conn_id;
} HV_PACKED;

/* ============================================================================================
 * Packet-level structures not in vmbus_ring.h
 * ============================================================================================ */

#define MAX_PAGE_BUFFER_COUNT 32
#define MAX_MULTIPAGE_BUFFER_COUNT 32

#ifdef HVKVM_VMBUS_RING_H
struct vmpacket_header {
	uint32_t prev_pkt_start_offset;
	struct vmpacket_descriptor descriptor;
} HV_PACKED;
#endif

struct hv_page_buffer {
	uint32_t len;
	uint32_t offset;
	uint64_t pfn;
} HV_PACKED;

struct hv_multipage_buffer {
	uint32_t len;
	uint32_t offset;
	uint64_t pfn_array[MAX_MULTIPAGE_BUFFER_COUNT];
} HV_PACKED;

struct vmbus_channel_packet_page_buffer {
	uint16_t type;
	uint16_t dataoffset8;
	uint16_t length8;
	uint16_t flags;
	uint64_t transactionid;
	uint32_t reserved;
	uint32_t rangecount;
	struct hv_page_buffer range[MAX_PAGE_BUFFER_COUNT];
} HV_PACKED;

struct vmbus_channel_packet_multipage_buffer {
	uint16_t type;
	uint16_t dataoffset8;
	uint16_t length8;
	uint16_t flags;
	uint64_t transactionid;
	uint32_t reserved;
	uint32_t rangecount; /* Always 1 in this case */
	struct hv_multipage_buffer range;
} HV_PACKED;

/* Sizes Linux's binaries have (tests/test_linux_conformance.py checks every member). */
_Static_assert(sizeof(struct hv_message) == HV_MESSAGE_SIZE, "hv_message");
_Static_assert(sizeof(struct hv_message_page) == 4096, "hv_message_page");
_Static_assert(sizeof(union hv_synic_event_flags) == 256, "hv_synic_event_flags");
_Static_assert(sizeof(struct hv_input_post_message) == 256, "hv_input_post_message");
_Static_assert(sizeof(struct hv_monitor_page) == 4096, "hv_monitor_page");
_Static_assert(sizeof(struct vmbus_channel_offer_channel) == 196, "vmbus_channel_offer_channel");
_Static_assert(sizeof(struct vmbus_channel_open_channel) == 148, "vmbus_channel_open_channel");
_Static_assert(sizeof(struct vmbus_channel_gpadl_header) == 20, "vmbus_channel_gpadl_header");
_Static_assert(sizeof(struct vmbus_channel_initiate_contact) == 40, "vmbus_channel_initiate_contact");
_Static_assert(sizeof(struct vmbus_channel_version_response) == 16, "vmbus_channel_version_response");

#undef HV_PACKED

#endif /* HVKVM_VMBUS_PROTO_H */
