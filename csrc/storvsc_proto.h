/*
 * storvsc_proto.h - the storvsc wire protocol (VMBus synthetic SCSI) in Linux's spelling: the C
 * twin of hvkvm/vsp/storvsc_wire.py.
 *
 * Names are Linux's (drivers/scsi/storvsc_drv.c); member types are fixed-width; __packed exactly
 * where Linux says so. tests/test_storvsc_conformance.py compares every layout here with the BTF
 * of Debian's compiled hv_storvsc.ko and with storvsc_wire.py.
 *
 * Layout as in Linux 6.x: struct vmscsi_request carries the Windows 8 fields (reserve ..
 * queue_sort_ey) inline. A guest that negotiates a protocol older than Windows 8 sends and expects
 * packets VMSCSI_SIZE_DELTA bytes shorter (Linux's old vmscsi_size_delta).
 *
 * Freestanding: only <stdint.h> and <stddef.h>, so guest images can use it too.
 */
#ifndef HVKVM_STORVSC_PROTO_H
#define HVKVM_STORVSC_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define STORVSC_PACKED __attribute__((packed))

#define VMSTOR_PROTO_VERSION(MAJOR_, MINOR_) ((((MAJOR_) & 0xff) << 8) | (((MINOR_) & 0xff)))
#define VMSTOR_PROTO_VERSION_WIN6 VMSTOR_PROTO_VERSION(2, 0)
#define VMSTOR_PROTO_VERSION_WIN7 VMSTOR_PROTO_VERSION(4, 2)
#define VMSTOR_PROTO_VERSION_WIN8 VMSTOR_PROTO_VERSION(5, 1)
#define VMSTOR_PROTO_VERSION_WIN8_1 VMSTOR_PROTO_VERSION(6, 0)
#define VMSTOR_PROTO_VERSION_WIN10 VMSTOR_PROTO_VERSION(6, 2)

enum vstor_packet_operation {
	VSTOR_OPERATION_COMPLETE_IO = 1,
	VSTOR_OPERATION_REMOVE_DEVICE = 2,
	VSTOR_OPERATION_EXECUTE_SRB = 3,
	VSTOR_OPERATION_RESET_LUN = 4,
	VSTOR_OPERATION_RESET_ADAPTER = 5,
	VSTOR_OPERATION_RESET_BUS = 6,
	VSTOR_OPERATION_BEGIN_INITIALIZATION = 7,
	VSTOR_OPERATION_END_INITIALIZATION = 8,
	VSTOR_OPERATION_QUERY_PROTOCOL_VERSION = 9,
	VSTOR_OPERATION_QUERY_PROPERTIES = 10,
	VSTOR_OPERATION_ENUMERATE_BUS = 11,
	VSTOR_OPERATION_FCHBA_DATA = 12,
	VSTOR_OPERATION_CREATE_SUB_CHANNELS = 13,
	VSTOR_OPERATION_MAXIMUM = 13
};

/* vm_srb.data_in */
enum storvsc_request_type {
	WRITE_TYPE = 0,
	READ_TYPE,
	UNKNOWN_TYPE,
};

#define SRB_FLAGS_QUEUE_ACTION_ENABLE 0x00000002
#define SRB_FLAGS_DISABLE_DISCONNECT 0x00000004
#define SRB_FLAGS_DISABLE_SYNCH_TRANSFER 0x00000008
#define SRB_FLAGS_BYPASS_FROZEN_QUEUE 0x00000010
#define SRB_FLAGS_DISABLE_AUTOSENSE 0x00000020
#define SRB_FLAGS_DATA_IN 0x00000040
#define SRB_FLAGS_DATA_OUT 0x00000080
#define SRB_FLAGS_NO_DATA_TRANSFER 0x00000000
#define SRB_FLAGS_UNSPECIFIED_DIRECTION (SRB_FLAGS_DATA_IN | SRB_FLAGS_DATA_OUT)
#define SRB_FLAGS_NO_QUEUE_FREEZE 0x00000100
#define SRB_FLAGS_ADAPTER_CACHE_ENABLE 0x00000200
#define SRB_FLAGS_FREE_SENSE_BUFFER 0x00000400

#define SP_UNTAGGED 0xff
#define SRB_SIMPLE_TAG_REQUEST 0x20

#define STORVSC_MAX_CMD_LEN 0x10
#define STORVSC_SENSE_BUFFER_SIZE 0x14
#define STORVSC_MAX_BUF_LEN_WITH_PADDING 0x14
#define POST_WIN7_STORVSC_SENSE_BUFFER_SIZE 0x14
#define PRE_WIN8_STORVSC_SENSE_BUFFER_SIZE 0x12

#define REQUEST_COMPLETION_FLAG 0x1

#define STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL 0x1
#define STORAGE_CHANNEL_REMOVABLE_FLAG 0x1
#define STORAGE_CHANNEL_EMULATED_IDE_FLAG 0x2

#define SRB_STATUS_AUTOSENSE_VALID 0x80
#define SRB_STATUS_QUEUE_FROZEN 0x40
#define SRB_STATUS_SUCCESS 0x01
#define SRB_STATUS_ABORTED 0x02
#define SRB_STATUS_ERROR 0x04
#define SRB_STATUS_INVALID_REQUEST 0x06
#define SRB_STATUS_DATA_OVERRUN 0x12
#define SRB_STATUS_INVALID_LUN 0x20
#define SRB_STATUS_INTERNAL_ERROR 0x30
#define SRB_STATUS(status) ((status) & ~(SRB_STATUS_AUTOSENSE_VALID | SRB_STATUS_QUEUE_FROZEN))

#define STORVSC_MAX_LUNS_PER_TARGET 255
#define STORVSC_MAX_TARGETS 2
#define STORVSC_MAX_CHANNELS 8

/* vstor_packet.status values hvkvm answers with (NTSTATUS; Linux only tests for non-zero) */
#define STATUS_SUCCESS 0x00000000u
#define STATUS_UNSUCCESSFUL 0xC0000001u
#define STATUS_INVALID_PARAMETER 0xC000000Du
#define STATUS_REVISION_MISMATCH 0xC0000059u
#define STATUS_NOT_SUPPORTED 0xC00000BBu
#define STATUS_INVALID_DEVICE_STATE 0xC0000184u

struct vmscsi_request {
	uint16_t length;
	uint8_t srb_status;
	uint8_t scsi_status;

	uint8_t port_number;
	uint8_t path_id;
	uint8_t target_id;
	uint8_t lun;

	uint8_t cdb_length;
	uint8_t sense_info_length;
	uint8_t data_in;
	uint8_t reserved;

	uint32_t data_transfer_length;

	union {
		uint8_t cdb[STORVSC_MAX_CMD_LEN];
		uint8_t sense_data[STORVSC_SENSE_BUFFER_SIZE];
		uint8_t reserved_array[STORVSC_MAX_BUF_LEN_WITH_PADDING];
	};
	/* The following was added in win8. */
	uint16_t reserve;
	uint8_t queue_tag;
	uint8_t queue_action;
	uint32_t srb_flags;
	uint32_t time_out_value;
	uint32_t queue_sort_ey;
} STORVSC_PACKED;

struct vmstorage_channel_properties {
	uint32_t reserved;
	uint16_t max_channel_cnt;
	uint16_t reserved1;

	uint32_t flags;
	uint32_t max_transfer_bytes;

	uint64_t reserved2;
} STORVSC_PACKED;

struct vmstorage_protocol_version {
	/* Major (MSW) and minor (LSW) version numbers. */
	uint16_t major_minor;
	/* Only used on the Windows side; 0. */
	uint16_t revision;
} STORVSC_PACKED;

struct hv_fc_wwn_packet {
	uint8_t primary_active;
	uint8_t reserved1[3];
	uint8_t primary_port_wwn[8];
	uint8_t primary_node_wwn[8];
	uint8_t secondary_port_wwn[8];
	uint8_t secondary_node_wwn[8];
};

struct vstor_packet {
	/* Requested operation type (enum vstor_packet_operation) */
	uint32_t operation;
	/* Flags - REQUEST_COMPLETION_FLAG */
	uint32_t flags;
	/* Status of the request returned from the server side. */
	uint32_t status;
	/* Data payload area */
	union {
		struct vmscsi_request vm_srb;
		struct vmstorage_channel_properties storage_channel_properties;
		struct vmstorage_protocol_version version;
		struct hv_fc_wwn_packet wwn_packet;
		uint16_t sub_channel_count;
		/* This will be the maximum of the union members */
		uint8_t buffer[0x34];
	};
} STORVSC_PACKED;

/* Bytes a pre-Windows-8 protocol leaves off the end of vmscsi_request / vstor_packet. */
#define VMSCSI_SIZE_DELTA (sizeof(struct vmscsi_request) - offsetof(struct vmscsi_request, reserve))
#define VSTOR_PACKET_SIZE (sizeof(struct vstor_packet))

_Static_assert(sizeof(struct vmscsi_request) == 52, "vmscsi_request layout");
_Static_assert(sizeof(struct vstor_packet) == 64, "vstor_packet layout");
_Static_assert(sizeof(struct vmstorage_channel_properties) == 24, "properties layout");
_Static_assert(offsetof(struct vstor_packet, vm_srb) == 12, "vstor_packet layout");
_Static_assert(VMSCSI_SIZE_DELTA == 16, "win8 extension size");

#endif /* HVKVM_STORVSC_PROTO_H */
