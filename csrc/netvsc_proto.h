/*
 * netvsc_proto.h - the netvsc wire protocol (VMBus synthetic NIC: NVSP, with RNDIS carried inside
 * it) in Linux's spelling: the C twin of hvkvm/vsp/netvsc_wire.py.
 *
 * Names are Linux's (drivers/net/hyperv/hyperv_net.h, include/linux/rndis.h); member types are
 * fixed-width; __packed exactly where Linux says so. tests/test_netvsc_conformance.py compares
 * every layout here with the BTF of Debian's compiled hv_netvsc.ko and with netvsc_wire.py, and
 * every integer constant with netvsc_wire.py (enumerators also with Linux's).
 *
 * Layout as Linux 6.1 compiles it: union nvsp_all_messages has the v6 (PacketDirect) members, so
 * struct nvsp_message is 40 bytes (a VSC may send the 28-byte v1 form: NVSP_PACKET_SIZE_V1; the
 * VSP accepts any in-band payload of at least 4 + the body of its message type).
 *
 * A few values Linux spells only as literals are named here with the names FreeBSD/Windows use
 * (marked "hvkvm name"): NDIS_VERSION_6_1, NDIS_VERSION_6_30, NVSP_DATA_CHANNEL_TYPE,
 * NVSP_CONTROL_CHANNEL_TYPE, NVSP_PACKET_SIZE_V1, RNDIS_HEADER_SIZE.
 *
 * Freestanding: only <stdint.h> and <stddef.h>, so guest images can use it too.
 *
 * What a VSC does with hvkvm's VSP (hvkvm/vsp/netvsc.py, csrc/hvr_net.c; Linux's hv_netvsc does
 * the same). "Request" = an in-band packet with VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED; its
 * answer is a VM_PKT_COMP with the request's trans_id (echo it exactly). Packets sent without the
 * flag are never answered.
 *  1. NVSP_MSG_TYPE_INIT {min, max} (request) -> INIT_COMPLETE {negotiated (the highest of 0x60001,
 *     0x60000, 0x50000, 0x40000, 0x30002, 2 inside [min, max]), status NVSP_STAT_SUCCESS or _FAIL}.
 *  2. Optional, no answer: NVSP_MSG2_TYPE_SEND_NDIS_CONFIG, NVSP_MSG1_TYPE_SEND_NDIS_VER.
 *  3. The receive buffer: a GPADL of whole pages (every range byte_offset 0, a multiple of 4096
 *     bytes; at least 2 pages, a few hundred KiB in practice), then NVSP_MSG1_TYPE_SEND_RECV_BUF
 *     {gpadl_handle, id = NETVSC_RECEIVE_BUFFER_ID} (request) -> SEND_RECV_BUF_COMPLETE {status,
 *     num_sections 1, sections[0] = {0, sub_alloc_size (1728), num_sub_allocs, end_offset}}.
 *  4. Optional send buffer: a GPADL, NVSP_MSG1_TYPE_SEND_SEND_BUF {gpadl_handle, id 0} (request)
 *     -> SEND_SEND_BUF_COMPLETE {status, section_size (6144)}; section i is at i * section_size.
 *  5. Every RNDIS message goes as NVSP_MSG1_TYPE_SEND_RNDIS_PKT {channel_type,
 *     send_buf_section_index, send_buf_section_size} (request): the RNDIS bytes are the section's
 *     first send_buf_section_size bytes, and/or (index 0xFFFFFFFF) the pages of a
 *     VM_PKT_DATA_USING_GPA_DIRECT packet, in order. Several messages may be packed back to back
 *     (each msg_len long; at most HVR_NET_MAX_CONTROL = 8 control messages per packet). The
 *     answer is 8 bytes {NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE, status}: NVSP_STAT_SUCCESS,
 *     NVSP_STAT_FAIL (bad section / GPA range / no data) or NVSP_STAT_INVALID_RNDIS_PKT; the section
 *     may be reused after it.
 *  6. RNDIS_MSG_INIT, then queries (RNDIS_OID_802_3_PERMANENT_ADDRESS: 6 bytes,
 *     RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE: u32 MTU, RNDIS_OID_GEN_MEDIA_CONNECT_STATUS, ...) and SET
 *     RNDIS_OID_GEN_CURRENT_PACKET_FILTER (u32, e.g. DIRECTED | BROADCAST | ALL_MULTICAST = 0xd):
 *     no frame reaches the guest before RNDIS is initialized and the filter is non-zero.
 *     info_buf_offset counts from the request body (after ndis_msg_type and msg_len): 20.
 *  7. The host sends VM_PKT_DATA_USING_XFER_PAGES packets (completion requested): xfer_pageset_id
 *     = the receive buffer's id, range_cnt ranges {byte_count, byte_offset} in the receive buffer,
 *     each one whole RNDIS message (RNDIS_MSG_PACKET: rndis_packet at +8 with data_offset 36, so
 *     the frame is at +44 and data_len long, no PPIs; the *_C answers; RNDIS_MSG_INDICATE with
 *     RNDIS_STATUS_MEDIA_CONNECT / _DISCONNECT), up to 16 ranges per packet; the payload after the
 *     header is an nvsp_message SEND_RNDIS_PKT. The VSC completes each packet once: a VM_PKT_COMP
 *     with the packet's trans_id and {NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE, NVSP_STAT_SUCCESS};
 *     until then its sections are not reused (no completions: no more frames).
 *  8. Frames the VSC sends are RNDIS_MSG_PACKET with 14 <= data_len <= MTU + 18 and the frame
 *     inside msg_len; PPIs are ignored (no offloads are offered).
 *  9. Keep reading the receive ring even while the send ring is full: the host may be waiting for
 *     room there to post a completion.
 */
#ifndef HVKVM_NETVSC_PROTO_H
#define HVKVM_NETVSC_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define NETVSC_PACKED __attribute__((packed))

/* ===========================================================================================
 * NVSP (network VSP protocol): versions, message types, status
 * =========================================================================================== */

#define NVSP_INVALID_PROTOCOL_VERSION 0xFFFFFFFFu

#define NVSP_PROTOCOL_VERSION_1 2
#define NVSP_PROTOCOL_VERSION_2 0x30002
#define NVSP_PROTOCOL_VERSION_4 0x40000
#define NVSP_PROTOCOL_VERSION_5 0x50000
#define NVSP_PROTOCOL_VERSION_6 0x60000
#define NVSP_PROTOCOL_VERSION_61 0x60001

/* NDIS version the VSC reports in NVSP_MSG1_TYPE_SEND_NDIS_VER (hvkvm names; Linux sends
 * 6.1 for NVSP <= 4 and 6.30 above) */
#define NDIS_VERSION_6_1 0x00060001
#define NDIS_VERSION_6_30 0x0006001e

enum {
	NVSP_MSG_TYPE_NONE = 0,

	NVSP_MSG_TYPE_INIT = 1,
	NVSP_MSG_TYPE_INIT_COMPLETE = 2,

	NVSP_VERSION_MSG_START = 100,

	NVSP_MSG1_TYPE_SEND_NDIS_VER = NVSP_VERSION_MSG_START,
	NVSP_MSG1_TYPE_SEND_RECV_BUF,
	NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE,
	NVSP_MSG1_TYPE_REVOKE_RECV_BUF,
	NVSP_MSG1_TYPE_SEND_SEND_BUF,
	NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE,
	NVSP_MSG1_TYPE_REVOKE_SEND_BUF,
	NVSP_MSG1_TYPE_SEND_RNDIS_PKT,
	NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE,

	NVSP_MSG2_TYPE_SEND_CHIMNEY_DELEGATED_BUF,
	NVSP_MSG2_TYPE_SEND_CHIMNEY_DELEGATED_BUF_COMP,
	NVSP_MSG2_TYPE_REVOKE_CHIMNEY_DELEGATED_BUF,
	NVSP_MSG2_TYPE_RESUME_CHIMNEY_RX_INDICATION,
	NVSP_MSG2_TYPE_TERMINATE_CHIMNEY,
	NVSP_MSG2_TYPE_TERMINATE_CHIMNEY_COMP,
	NVSP_MSG2_TYPE_INDICATE_CHIMNEY_EVENT,
	NVSP_MSG2_TYPE_SEND_CHIMNEY_PKT,
	NVSP_MSG2_TYPE_SEND_CHIMNEY_PKT_COMP,
	NVSP_MSG2_TYPE_POST_CHIMNEY_RECV_REQ,
	NVSP_MSG2_TYPE_POST_CHIMNEY_RECV_REQ_COMP,
	NVSP_MSG2_TYPE_ALLOC_RXBUF,
	NVSP_MSG2_TYPE_ALLOC_RXBUF_COMP,
	NVSP_MSG2_TYPE_FREE_RXBUF,
	NVSP_MSG2_TYPE_SEND_VMQ_RNDIS_PKT,
	NVSP_MSG2_TYPE_SEND_VMQ_RNDIS_PKT_COMP,
	NVSP_MSG2_TYPE_SEND_NDIS_CONFIG,
	NVSP_MSG2_TYPE_ALLOC_CHIMNEY_HANDLE,
	NVSP_MSG2_TYPE_ALLOC_CHIMNEY_HANDLE_COMP,
	NVSP_MSG2_MAX = NVSP_MSG2_TYPE_ALLOC_CHIMNEY_HANDLE_COMP,

	NVSP_MSG4_TYPE_SEND_VF_ASSOCIATION,
	NVSP_MSG4_TYPE_SWITCH_DATA_PATH,
	NVSP_MSG4_TYPE_UPLINK_CONNECT_STATE_DEPRECATED,
	NVSP_MSG4_MAX = NVSP_MSG4_TYPE_UPLINK_CONNECT_STATE_DEPRECATED,

	NVSP_MSG5_TYPE_OID_QUERY_EX,
	NVSP_MSG5_TYPE_OID_QUERY_EX_COMP,
	NVSP_MSG5_TYPE_SUBCHANNEL,
	NVSP_MSG5_TYPE_SEND_INDIRECTION_TABLE,
	NVSP_MSG5_MAX = NVSP_MSG5_TYPE_SEND_INDIRECTION_TABLE,

	NVSP_MSG6_TYPE_PD_API,
	NVSP_MSG6_TYPE_PD_POST_BATCH,
	NVSP_MSG6_MAX = NVSP_MSG6_TYPE_PD_POST_BATCH
};

enum {
	NVSP_STAT_NONE = 0,
	NVSP_STAT_SUCCESS,
	NVSP_STAT_FAIL,
	NVSP_STAT_PROTOCOL_TOO_NEW,
	NVSP_STAT_PROTOCOL_TOO_OLD,
	NVSP_STAT_INVALID_RNDIS_PKT,
	NVSP_STAT_BUSY,
	NVSP_STAT_PROTOCOL_UNSUPPORTED,
	NVSP_STAT_MAX,
};

/* nvsp_1_message_send_rndis_packet.channel_type (hvkvm names; Linux writes 0 for data, 1 for
 * control messages) */
#define NVSP_DATA_CHANNEL_TYPE 0
#define NVSP_CONTROL_CHANNEL_TYPE 1

/* The size of an NVSP v1 message (header + the largest v1 body); hvkvm name */
#define NVSP_PACKET_SIZE_V1 0x1c

enum nvsp_vm_datapath {
	NVSP_DATAPATH_SYNTHETIC = 0,
	NVSP_DATAPATH_VF,
	NVSP_DATAPATH_MAX
};

enum nvsp_subchannel_operation {
	NVSP_SUBCHANNEL_NONE = 0,
	NVSP_SUBCHANNEL_ALLOCATE,
	NVSP_SUBCHANNEL_MAX
};

enum nvsp_6_pd_api_op {
	PD_API_OP_CONFIG = 1,
	PD_API_OP_SW_DATAPATH,
	PD_API_OP_OPEN_PROVIDER,
	PD_API_OP_CLOSE_PROVIDER,
	PD_API_OP_CREATE_QUEUE,
	PD_API_OP_FLUSH_QUEUE,
	PD_API_OP_FREE_QUEUE,
	PD_API_OP_ALLOC_COM_BUF,
	PD_API_OP_FREE_COM_BUF,
	PD_API_OP_MAX
};

/* ===========================================================================================
 * NVSP messages
 * =========================================================================================== */

struct nvsp_message_header {
	uint32_t msg_type;
};

struct nvsp_message_init {
	uint32_t min_protocol_ver;
	uint32_t max_protocol_ver;
} NETVSC_PACKED;

struct nvsp_message_init_complete {
	uint32_t negotiated_protocol_ver;
	uint32_t max_mdl_chain_len;
	uint32_t status;
} NETVSC_PACKED;

union nvsp_message_init_uber {
	struct nvsp_message_init init;
	struct nvsp_message_init_complete init_complete;
} NETVSC_PACKED;

struct nvsp_1_message_send_ndis_version {
	uint32_t ndis_major_ver;
	uint32_t ndis_minor_ver;
} NETVSC_PACKED;

struct nvsp_1_message_send_receive_buffer {
	uint32_t gpadl_handle;
	uint16_t id;
} NETVSC_PACKED;

struct nvsp_1_receive_buffer_section {
	uint32_t offset;
	uint32_t sub_alloc_size;
	uint32_t num_sub_allocs;
	uint32_t end_offset;
} NETVSC_PACKED;

struct nvsp_1_message_send_receive_buffer_complete {
	uint32_t status;
	uint32_t num_sections;
	struct nvsp_1_receive_buffer_section sections[1];
} NETVSC_PACKED;

struct nvsp_1_message_revoke_receive_buffer {
	uint16_t id;
};

struct nvsp_1_message_send_send_buffer {
	uint32_t gpadl_handle;
	uint16_t id;
} NETVSC_PACKED;

struct nvsp_1_message_send_send_buffer_complete {
	uint32_t status;
	uint32_t section_size;
} NETVSC_PACKED;

struct nvsp_1_message_revoke_send_buffer {
	uint16_t id;
};

struct nvsp_1_message_send_rndis_packet {
	uint32_t channel_type;
	uint32_t send_buf_section_index; /* 0xFFFFFFFF: not in the send buffer */
	uint32_t send_buf_section_size;
} NETVSC_PACKED;

struct nvsp_1_message_send_rndis_packet_complete {
	uint32_t status;
};

union nvsp_1_message_uber {
	struct nvsp_1_message_send_ndis_version send_ndis_ver;
	struct nvsp_1_message_send_receive_buffer send_recv_buf;
	struct nvsp_1_message_send_receive_buffer_complete send_recv_buf_complete;
	struct nvsp_1_message_revoke_receive_buffer revoke_recv_buf;
	struct nvsp_1_message_send_send_buffer send_send_buf;
	struct nvsp_1_message_send_send_buffer_complete send_send_buf_complete;
	struct nvsp_1_message_revoke_send_buffer revoke_send_buf;
	struct nvsp_1_message_send_rndis_packet send_rndis_pkt;
	struct nvsp_1_message_send_rndis_packet_complete send_rndis_pkt_complete;
} NETVSC_PACKED;

struct nvsp_2_vsc_capability {
	union {
		uint64_t data;
		struct {
			uint64_t vmq : 1;
			uint64_t chimney : 1;
			uint64_t sriov : 1;
			uint64_t ieee8021q : 1;
			uint64_t correlation_id : 1;
			uint64_t teaming : 1;
			uint64_t vsubnetid : 1;
			uint64_t rsc : 1;
		};
	};
} NETVSC_PACKED;

struct nvsp_2_send_ndis_config {
	uint32_t mtu;
	uint32_t reserved;
	struct nvsp_2_vsc_capability capability;
} NETVSC_PACKED;

struct nvsp_2_alloc_rxbuf {
	uint32_t alloc_id;
	uint32_t len;
} NETVSC_PACKED;

struct nvsp_2_alloc_rxbuf_comp {
	uint32_t status;
	uint32_t alloc_id;
	uint32_t gpadl_handle;
	uint64_t recv_buf_id;
} NETVSC_PACKED;

struct nvsp_2_free_rxbuf {
	uint64_t recv_buf_id;
} NETVSC_PACKED;

union nvsp_2_message_uber {
	struct nvsp_2_send_ndis_config send_ndis_config;
	struct nvsp_2_alloc_rxbuf alloc_rxbuf;
	struct nvsp_2_alloc_rxbuf_comp alloc_rxbuf_comp;
	struct nvsp_2_free_rxbuf free_rxbuf;
} NETVSC_PACKED;

struct nvsp_4_send_vf_association {
	uint32_t allocated;
	uint32_t serial;
} NETVSC_PACKED;

struct nvsp_4_sw_datapath {
	uint32_t active_datapath;
} NETVSC_PACKED;

union nvsp_4_message_uber {
	struct nvsp_4_send_vf_association vf_assoc;
	struct nvsp_4_sw_datapath active_dp;
} NETVSC_PACKED;

struct nvsp_5_subchannel_request {
	uint32_t op;
	uint32_t num_subchannels;
} NETVSC_PACKED;

struct nvsp_5_subchannel_complete {
	uint32_t status;
	uint32_t num_subchannels;
} NETVSC_PACKED;

struct nvsp_5_send_indirect_table {
	uint32_t count;
	uint32_t offset; /* from the beginning of struct nvsp_message */
} NETVSC_PACKED;

union nvsp_5_message_uber {
	struct nvsp_5_subchannel_request subchn_req;
	struct nvsp_5_subchannel_complete subchn_comp;
	struct nvsp_5_send_indirect_table send_table;
} NETVSC_PACKED;

struct grp_affinity {
	uint64_t mask;
	uint16_t grp;
	uint16_t reserved[3];
} NETVSC_PACKED;

struct nvsp_6_pd_api_req {
	uint32_t op;
	union {
		struct NETVSC_PACKED {
			uint64_t mmio_pa;
			uint32_t mmio_len;
			uint16_t num_subchn;
		} config;
		struct NETVSC_PACKED {
			uint8_t host_dpath_is_pd;
			uint8_t guest_pd_enabled;
		} sw_dpath;
		struct NETVSC_PACKED {
			uint32_t prov_id;
			uint32_t flag;
		} open_prov;
		struct NETVSC_PACKED {
			uint32_t prov_id;
		} cls_prov;
		struct NETVSC_PACKED {
			uint32_t prov_id;
			uint16_t q_id;
			uint16_t q_size;
			uint8_t is_recv_q;
			uint8_t is_rss_q;
			uint32_t recv_data_len;
			struct grp_affinity affy;
		} cr_q;
		struct NETVSC_PACKED {
			uint32_t prov_id;
			uint16_t q_id;
		} del_q;
		struct NETVSC_PACKED {
			uint32_t prov_id;
			uint16_t q_id;
		} flush_q;
		struct NETVSC_PACKED {
			uint32_t len;
			uint32_t pf_node;
			uint16_t region_id;
		} alloc_com_buf;
		struct NETVSC_PACKED {
			uint32_t len;
			uint64_t pa;
			uint32_t pf_node;
			uint16_t region_id;
			uint8_t cache_type;
		} free_com_buf;
	} NETVSC_PACKED;
} NETVSC_PACKED;

struct nvsp_6_pd_api_comp {
	uint32_t op;
	uint32_t status;
	union {
		struct NETVSC_PACKED {
			uint16_t num_pd_q;
			uint8_t num_rss_q;
			uint8_t is_supported;
			uint8_t is_enabled;
		} config;
		struct NETVSC_PACKED {
			uint32_t prov_id;
		} open_prov;
		struct NETVSC_PACKED {
			uint32_t prov_id;
			uint16_t q_id;
			uint16_t q_size;
			uint32_t recv_data_len;
			struct grp_affinity affy;
		} cr_q;
		struct NETVSC_PACKED {
			uint64_t pa;
			uint32_t len;
			uint32_t pf_node;
			uint16_t region_id;
			uint8_t cache_type;
		} alloc_com_buf;
	} NETVSC_PACKED;
} NETVSC_PACKED;

union nvsp_6_message_uber {
	struct nvsp_6_pd_api_req pd_req;
	struct nvsp_6_pd_api_comp pd_comp;
} NETVSC_PACKED;

union nvsp_all_messages {
	union nvsp_message_init_uber init_msg;
	union nvsp_1_message_uber v1_msg;
	union nvsp_2_message_uber v2_msg;
	union nvsp_4_message_uber v4_msg;
	union nvsp_5_message_uber v5_msg;
	union nvsp_6_message_uber v6_msg;
} NETVSC_PACKED;

struct nvsp_message {
	struct nvsp_message_header hdr;
	union nvsp_all_messages msg;
} NETVSC_PACKED;

#define NVSP_MESSAGE_SIZE 40 /* sizeof(struct nvsp_message) */

/* ===========================================================================================
 * netvsc buffer conventions (hyperv_net.h)
 * =========================================================================================== */

#define NETVSC_MTU 65535
#define NETVSC_RECEIVE_BUFFER_SIZE (1024 * 1024 * 31)
#define NETVSC_RECEIVE_BUFFER_SIZE_LEGACY (1024 * 1024 * 15)
#define NETVSC_RECEIVE_BUFFER_DEFAULT (1024 * 1024 * 16)
#define NETVSC_SEND_BUFFER_SIZE (1024 * 1024 * 15)
#define NETVSC_SEND_BUFFER_DEFAULT (1024 * 1024)
#define NETVSC_INVALID_INDEX -1
#define NETVSC_SEND_SECTION_SIZE 6144
#define NETVSC_RECV_SECTION_SIZE 1728
#define NETVSC_RECEIVE_BUFFER_ID 0xcafe
#define NETVSC_SEND_BUFFER_ID 0
#define NETVSC_PACKET_SIZE 4096
#define VRSS_SEND_TAB_SIZE 16
#define VRSS_CHANNEL_MAX 64
#define VRSS_CHANNEL_DEFAULT 8
#define RNDIS_MAX_PKT_DEFAULT 8
#define RNDIS_PKT_ALIGN_DEFAULT 8
#define NVSP_RSC_MAX 562

/* ===========================================================================================
 * RNDIS (include/linux/rndis.h): message types, status codes, OIDs
 * =========================================================================================== */

#define RNDIS_MAJOR_VERSION 0x00000001
#define RNDIS_MINOR_VERSION 0x00000000

#define RNDIS_MSG_COMPLETION 0x80000000u
#define RNDIS_MSG_PACKET 0x00000001
#define RNDIS_MSG_INIT 0x00000002
#define RNDIS_MSG_INIT_C (RNDIS_MSG_INIT | RNDIS_MSG_COMPLETION)
#define RNDIS_MSG_HALT 0x00000003
#define RNDIS_MSG_QUERY 0x00000004
#define RNDIS_MSG_QUERY_C (RNDIS_MSG_QUERY | RNDIS_MSG_COMPLETION)
#define RNDIS_MSG_SET 0x00000005
#define RNDIS_MSG_SET_C (RNDIS_MSG_SET | RNDIS_MSG_COMPLETION)
#define RNDIS_MSG_RESET 0x00000006
#define RNDIS_MSG_RESET_C (RNDIS_MSG_RESET | RNDIS_MSG_COMPLETION)
#define RNDIS_MSG_INDICATE 0x00000007
#define RNDIS_MSG_KEEPALIVE 0x00000008
#define RNDIS_MSG_KEEPALIVE_C (RNDIS_MSG_KEEPALIVE | RNDIS_MSG_COMPLETION)

#define REMOTE_NDIS_PACKET_MSG 0x00000001u
#define REMOTE_NDIS_INITIALIZE_MSG 0x00000002u
#define REMOTE_NDIS_HALT_MSG 0x00000003u
#define REMOTE_NDIS_QUERY_MSG 0x00000004u
#define REMOTE_NDIS_SET_MSG 0x00000005u
#define REMOTE_NDIS_RESET_MSG 0x00000006u
#define REMOTE_NDIS_INDICATE_STATUS_MSG 0x00000007u
#define REMOTE_NDIS_KEEPALIVE_MSG 0x00000008u
#define REMOTE_NDIS_INITIALIZE_CMPLT 0x80000002u
#define REMOTE_NDIS_QUERY_CMPLT 0x80000004u
#define REMOTE_NDIS_SET_CMPLT 0x80000005u
#define REMOTE_NDIS_RESET_CMPLT 0x80000006u
#define REMOTE_NDIS_KEEPALIVE_CMPLT 0x80000008u

#define RNDIS_DF_CONNECTIONLESS 0x00000001u
#define RNDIS_DF_CONNECTION_ORIENTED 0x00000002u
#define RNDIS_DF_RAW_DATA 0x00000004u

#define RNDIS_MEDIUM_802_3 0x00000000
#define RNDIS_MEDIA_STATE_CONNECTED 0x00000000
#define RNDIS_MEDIA_STATE_DISCONNECTED 0x00000001
#define NDIS_MEDIA_STATE_CONNECTED 0x00000000
#define NDIS_MEDIA_STATE_DISCONNECTED 0x00000001

/* status codes */
#define RNDIS_STATUS_SUCCESS 0x00000000u
#define RNDIS_STATUS_PENDING 0x00000103u
#define RNDIS_STATUS_FAILURE 0xc0000001u
#define RNDIS_STATUS_RESOURCES 0xC000009Au
#define RNDIS_STATUS_NOT_SUPPORTED 0xc00000bbu
#define RNDIS_STATUS_INVALID_DATA 0xc0010015u
#define RNDIS_STATUS_INVALID_LENGTH 0xC0010014u
#define RNDIS_STATUS_BUFFER_TOO_SHORT 0xC0010016u
#define RNDIS_STATUS_INVALID_OID 0xC0010017u
#define RNDIS_STATUS_INVALID_PACKET 0xC001000Fu
#define RNDIS_STATUS_BAD_VERSION 0xC0010004u
#define RNDIS_STATUS_ADAPTER_NOT_READY 0xC0010011u
#define RNDIS_STATUS_BUFFER_OVERFLOW 0x80000005u
#define RNDIS_STATUS_MEDIA_CONNECT 0x4001000bu
#define RNDIS_STATUS_MEDIA_DISCONNECT 0x4001000cu
#define RNDIS_STATUS_MEDIA_SPECIFIC_INDICATION 0x40010012u
#define RNDIS_STATUS_LINK_SPEED_CHANGE 0x40010013u
#define RNDIS_STATUS_NETWORK_CHANGE 0x40010018u

/* OIDs (the ones Linux's netvsc asks for, and the standard general/802.3 set) */
#define RNDIS_OID_GEN_SUPPORTED_LIST 0x00010101
#define RNDIS_OID_GEN_HARDWARE_STATUS 0x00010102
#define RNDIS_OID_GEN_MEDIA_SUPPORTED 0x00010103
#define RNDIS_OID_GEN_MEDIA_IN_USE 0x00010104
#define RNDIS_OID_GEN_MAXIMUM_LOOKAHEAD 0x00010105
#define RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE 0x00010106
#define RNDIS_OID_GEN_LINK_SPEED 0x00010107
#define RNDIS_OID_GEN_TRANSMIT_BUFFER_SPACE 0x00010108
#define RNDIS_OID_GEN_RECEIVE_BUFFER_SPACE 0x00010109
#define RNDIS_OID_GEN_TRANSMIT_BLOCK_SIZE 0x0001010A
#define RNDIS_OID_GEN_RECEIVE_BLOCK_SIZE 0x0001010B
#define RNDIS_OID_GEN_VENDOR_ID 0x0001010C
#define RNDIS_OID_GEN_VENDOR_DESCRIPTION 0x0001010D
#define RNDIS_OID_GEN_CURRENT_PACKET_FILTER 0x0001010E
#define RNDIS_OID_GEN_CURRENT_LOOKAHEAD 0x0001010F
#define RNDIS_OID_GEN_DRIVER_VERSION 0x00010110
#define RNDIS_OID_GEN_MAXIMUM_TOTAL_SIZE 0x00010111
#define RNDIS_OID_GEN_PROTOCOL_OPTIONS 0x00010112
#define RNDIS_OID_GEN_MAC_OPTIONS 0x00010113
#define RNDIS_OID_GEN_MEDIA_CONNECT_STATUS 0x00010114
#define RNDIS_OID_GEN_MAXIMUM_SEND_PACKETS 0x00010115
#define RNDIS_OID_GEN_VENDOR_DRIVER_VERSION 0x00010116
#define RNDIS_OID_GEN_NETWORK_LAYER_ADDRESSES 0x00010118
#define RNDIS_OID_GEN_TRANSPORT_HEADER_OFFSET 0x00010119
#define RNDIS_OID_GEN_RNDIS_CONFIG_PARAMETER 0x0001021B
#define RNDIS_OID_GEN_XMIT_OK 0x00020101
#define RNDIS_OID_GEN_RCV_OK 0x00020102
#define RNDIS_OID_GEN_XMIT_ERROR 0x00020103
#define RNDIS_OID_GEN_RCV_ERROR 0x00020104
#define RNDIS_OID_GEN_RCV_NO_BUFFER 0x00020105
#define RNDIS_OID_802_3_PERMANENT_ADDRESS 0x01010101
#define RNDIS_OID_802_3_CURRENT_ADDRESS 0x01010102
#define RNDIS_OID_802_3_MULTICAST_LIST 0x01010103
#define RNDIS_OID_802_3_MAXIMUM_LIST_SIZE 0x01010104
#define RNDIS_OID_802_3_MAC_OPTIONS 0x01010105

#define OID_GEN_RECEIVE_SCALE_CAPABILITIES 0x00010203
#define OID_GEN_RECEIVE_SCALE_PARAMETERS 0x00010204
#define OID_TCP_OFFLOAD_CURRENT_CONFIG 0xFC01020B
#define OID_TCP_OFFLOAD_PARAMETERS 0xFC01020C
#define OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES 0xFC01020D
#define OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG 0xFC01020E
#define OID_TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES 0xFC01020F
#define OID_OFFLOAD_ENCAPSULATION 0x0101010A

/* packet filter bits (RNDIS_OID_GEN_CURRENT_PACKET_FILTER) */
#define NDIS_PACKET_TYPE_DIRECTED 0x00000001
#define NDIS_PACKET_TYPE_MULTICAST 0x00000002
#define NDIS_PACKET_TYPE_ALL_MULTICAST 0x00000004
#define NDIS_PACKET_TYPE_BROADCAST 0x00000008
#define NDIS_PACKET_TYPE_SOURCE_ROUTING 0x00000010
#define NDIS_PACKET_TYPE_PROMISCUOUS 0x00000020
#define NDIS_PACKET_TYPE_SMT 0x00000040
#define NDIS_PACKET_TYPE_ALL_LOCAL 0x00000080
#define NDIS_PACKET_TYPE_GROUP 0x00000100
#define NDIS_PACKET_TYPE_ALL_FUNCTIONAL 0x00000200
#define NDIS_PACKET_TYPE_FUNCTIONAL 0x00000400
#define NDIS_PACKET_TYPE_MAC_FRAME 0x00000800

/* NDIS objects (offload, RSS) */
#define NDIS_OBJECT_TYPE_DEFAULT 0x80
#define NDIS_OBJECT_TYPE_RSS_CAPABILITIES 0x88
#define NDIS_OBJECT_TYPE_RSS_PARAMETERS 0x89
#define NDIS_OBJECT_TYPE_OFFLOAD 0xa7
#define NDIS_OFFLOAD_PARAMETERS_REVISION_3 3
#define NDIS_OFFLOAD_PARAMETERS_REVISION_2 2
#define NDIS_OFFLOAD_PARAMETERS_REVISION_1 1
#define NDIS_OFFLOAD_PARAMETERS_NO_CHANGE 0
#define NDIS_OFFLOAD_PARAMETERS_LSOV2_DISABLED 1
#define NDIS_OFFLOAD_PARAMETERS_LSOV2_ENABLED 2
#define NDIS_OFFLOAD_PARAMETERS_LSOV1_ENABLED 2
#define NDIS_OFFLOAD_PARAMETERS_RSC_DISABLED 1
#define NDIS_OFFLOAD_PARAMETERS_RSC_ENABLED 2
#define NDIS_OFFLOAD_PARAMETERS_TX_RX_DISABLED 1
#define NDIS_OFFLOAD_PARAMETERS_TX_ENABLED_RX_DISABLED 2
#define NDIS_OFFLOAD_PARAMETERS_RX_ENABLED_TX_DISABLED 3
#define NDIS_OFFLOAD_PARAMETERS_TX_RX_ENABLED 4
#define NDIS_OFFLOAD_ENCAP_NONE 0x0000
#define NDIS_OFFLOAD_ENCAP_NULL 0x0001
#define NDIS_OFFLOAD_ENCAP_8023 0x0002
#define NDIS_RECEIVE_SCALE_CAPABILITIES_REVISION_2 2
/* bytes of ndis_offload_params a VSC of NVSP <= 4 sends */
#define VERSION_4_OFFLOAD_SIZE 22
#define NDIS_RECEIVE_SCALE_PARAMETERS_REVISION_2 2

/* rndis_per_packet_info.type (enum ndis_per_pkt_info_type) */
enum ndis_per_pkt_info_type {
	TCPIP_CHKSUM_PKTINFO,
	IPSEC_PKTINFO,
	TCP_LARGESEND_PKTINFO,
	CLASSIFICATION_HANDLE_PKTINFO,
	NDIS_RESERVED,
	SG_LIST_PKTINFO,
	IEEE_8021Q_INFO,
	ORIGINAL_PKTINFO,
	PACKET_CANCEL_ID,
	NBL_HASH_VALUE = PACKET_CANCEL_ID,
	ORIGINAL_NET_BUFLIST,
	CACHED_NET_BUFLIST,
	SHORT_PKT_PADINFO,
	MAX_PER_PKT_INFO
};

/* rndis_per_packet_info.type when .internal is set */
enum rndis_per_pkt_info_interal_type {
	RNDIS_PKTINFO_ID = 1,
	RNDIS_PKTINFO_MAX
};

#define RNDIS_PKTINFO_SUBALLOC (1u << 0)
#define RNDIS_PKTINFO_1ST_FRAG (1u << 1)
#define RNDIS_PKTINFO_LAST_FRAG (1u << 2)
#define RNDIS_PKTINFO_ID_V1 1

#define RNDIS_CONFIG_PARAM_TYPE_INTEGER 0
#define RNDIS_CONFIG_PARAM_TYPE_STRING 2

/* ===========================================================================================
 * RNDIS messages
 * =========================================================================================== */

struct rndis_initialize_request {
	uint32_t req_id;
	uint32_t major_ver;
	uint32_t minor_ver;
	uint32_t max_xfer_size;
};

struct rndis_initialize_complete {
	uint32_t req_id;
	uint32_t status;
	uint32_t major_ver;
	uint32_t minor_ver;
	uint32_t dev_flags;
	uint32_t medium;
	uint32_t max_pkt_per_msg;
	uint32_t max_xfer_size;
	uint32_t pkt_alignment_factor; /* log2 of the alignment */
	uint32_t af_list_offset;
	uint32_t af_list_size;
};

struct rndis_halt_request {
	uint32_t req_id;
};

/* info_buf_offset of queries, sets and their completions counts from the start of the
 * request/completion body (after ndis_msg_type and msg_len), as Linux computes it */
struct rndis_query_request {
	uint32_t req_id;
	uint32_t oid;
	uint32_t info_buflen;
	uint32_t info_buf_offset;
	uint32_t dev_vc_handle;
};

struct rndis_query_complete {
	uint32_t req_id;
	uint32_t status;
	uint32_t info_buflen;
	uint32_t info_buf_offset;
};

struct rndis_set_request {
	uint32_t req_id;
	uint32_t oid;
	uint32_t info_buflen;
	uint32_t info_buf_offset;
	uint32_t dev_vc_handle;
	uint8_t info_buf[0];
};

struct rndis_set_complete {
	uint32_t req_id;
	uint32_t status;
};

struct rndis_reset_request {
	uint32_t reserved;
};

struct rndis_reset_complete {
	uint32_t status;
	uint32_t addressing_reset;
};

struct rndis_indicate_status {
	uint32_t status;
	uint32_t status_buflen;
	uint32_t status_buf_offset;
};

struct rndis_keepalive_request {
	uint32_t req_id;
};

struct rndis_keepalive_complete {
	uint32_t req_id;
	uint32_t status;
};

/* Data message: offsets count from the start of struct rndis_packet (8 bytes into the
 * rndis_message) */
struct rndis_packet {
	uint32_t data_offset;
	uint32_t data_len;
	uint32_t oob_data_offset;
	uint32_t oob_data_len;
	uint32_t num_oob_data_elements;
	uint32_t per_pkt_info_offset;
	uint32_t per_pkt_info_len;
	uint32_t vc_handle;
	uint32_t reserved;
};

struct rndis_oobd {
	uint32_t size;
	uint32_t type;
	uint32_t class_info_offset;
};

/* ppi_offset counts from the start of this struct */
struct rndis_per_packet_info {
	uint32_t size;
	uint32_t type : 31;
	uint32_t internal : 1;
	uint32_t ppi_offset;
};

struct rndis_pktinfo_id {
	uint8_t ver;
	uint8_t flag;
	uint16_t pkt_id;
};

struct rcondis_mp_create_vc {
	uint32_t req_id;
	uint32_t ndis_vc_handle;
};

struct rcondis_mp_create_vc_complete {
	uint32_t req_id;
	uint32_t dev_vc_handle;
	uint32_t status;
};

struct rcondis_mp_delete_vc {
	uint32_t req_id;
	uint32_t dev_vc_handle;
};

struct rcondis_mp_delete_vc_complete {
	uint32_t req_id;
	uint32_t status;
};

struct rcondis_indicate_status {
	uint32_t ndis_vc_handle;
	uint32_t status;
	uint32_t status_buflen;
	uint32_t status_buf_offset;
};

struct rcondis_mp_activate_vc_request {
	uint32_t req_id;
	uint32_t flags;
	uint32_t dev_vc_handle;
	uint32_t media_params_offset;
	uint32_t media_params_length;
	uint32_t call_mgr_params_offset;
	uint32_t call_mgr_params_length;
};

struct rcondis_mp_activate_vc_complete {
	uint32_t req_id;
	uint32_t status;
};

struct rcondis_mp_deactivate_vc_request {
	uint32_t req_id;
	uint32_t flags;
	uint32_t dev_vc_handle;
};

struct rcondis_mp_deactivate_vc_complete {
	uint32_t req_id;
	uint32_t status;
};

union rndis_message_container {
	struct rndis_packet pkt;
	struct rndis_initialize_request init_req;
	struct rndis_halt_request halt_req;
	struct rndis_query_request query_req;
	struct rndis_set_request set_req;
	struct rndis_reset_request reset_req;
	struct rndis_keepalive_request keep_alive_req;
	struct rndis_indicate_status indicate_status;
	struct rndis_initialize_complete init_complete;
	struct rndis_query_complete query_complete;
	struct rndis_set_complete set_complete;
	struct rndis_reset_complete reset_complete;
	struct rndis_keepalive_complete keep_alive_complete;
	struct rcondis_mp_create_vc co_miniport_create_vc;
	struct rcondis_mp_delete_vc co_miniport_delete_vc;
	struct rcondis_indicate_status co_indicate_status;
	struct rcondis_mp_activate_vc_request co_miniport_activate_vc;
	struct rcondis_mp_deactivate_vc_request co_miniport_deactivate_vc;
	struct rcondis_mp_create_vc_complete co_miniport_create_vc_complete;
	struct rcondis_mp_delete_vc_complete co_miniport_delete_vc_complete;
	struct rcondis_mp_activate_vc_complete co_miniport_activate_vc_complete;
	struct rcondis_mp_deactivate_vc_complete co_miniport_deactivate_vc_complete;
};

struct rndis_message {
	uint32_t ndis_msg_type;
	uint32_t msg_len; /* the whole message, from ndis_msg_type */
	union rndis_message_container msg;
};

/* sizeof(ndis_msg_type) + sizeof(msg_len); hvkvm name for Linux's RNDIS_HEADER_SIZE macro */
#define RNDIS_HEADER_SIZE 8
#define RNDIS_MESSAGE_SIZE(msg) (sizeof(msg) + RNDIS_HEADER_SIZE)

/* ===========================================================================================
 * Per-packet info payloads and NDIS objects
 * =========================================================================================== */

struct ndis_pkt_8021q_info {
	union {
		struct {
			uint32_t pri : 3;
			uint32_t cfi : 1;
			uint32_t vlanid : 12;
			uint32_t reserved : 16;
		};
		uint32_t value;
	};
};

struct ndis_tcp_ip_checksum_info {
	union {
		struct {
			uint32_t is_ipv4 : 1;
			uint32_t is_ipv6 : 1;
			uint32_t tcp_checksum : 1;
			uint32_t udp_checksum : 1;
			uint32_t ip_header_checksum : 1;
			uint32_t reserved : 11;
			uint32_t tcp_header_offset : 10;
		} transmit;
		struct {
			uint32_t tcp_checksum_failed : 1;
			uint32_t udp_checksum_failed : 1;
			uint32_t ip_checksum_failed : 1;
			uint32_t tcp_checksum_succeeded : 1;
			uint32_t udp_checksum_succeeded : 1;
			uint32_t ip_checksum_succeeded : 1;
			uint32_t loopback : 1;
			uint32_t tcp_checksum_value_invalid : 1;
			uint32_t ip_checksum_value_invalid : 1;
		} receive;
		uint32_t value;
	};
};

struct ndis_tcp_lso_info {
	union {
		struct {
			uint32_t unused : 30;
			uint32_t type : 1;
			uint32_t reserved2 : 1;
		} transmit;
		struct {
			uint32_t mss : 20;
			uint32_t tcp_header_offset : 10;
			uint32_t type : 1;
			uint32_t reserved2 : 1;
		} lso_v1_transmit;
		struct {
			uint32_t tcp_payload : 30;
			uint32_t type : 1;
			uint32_t reserved2 : 1;
		} lso_v1_transmit_complete;
		struct {
			uint32_t mss : 20;
			uint32_t tcp_header_offset : 10;
			uint32_t type : 1;
			uint32_t ip_version : 1;
		} lso_v2_transmit;
		struct {
			uint32_t reserved : 30;
			uint32_t type : 1;
			uint32_t reserved2 : 1;
		} lso_v2_transmit_complete;
		uint32_t value;
	};
};

struct ndis_obj_header {
	uint8_t type;
	uint8_t rev;
	uint16_t size;
} NETVSC_PACKED;

struct ndis_recv_scale_cap {
	struct ndis_obj_header hdr;
	uint32_t cap_flag;
	uint32_t num_int_msg;
	uint32_t num_recv_que;
	uint16_t num_indirect_tabent;
} NETVSC_PACKED;

struct ndis_recv_scale_param {
	struct ndis_obj_header hdr;
	uint16_t flag;
	uint16_t base_cpu_number;
	uint32_t hashinfo;
	uint16_t indirect_tabsize;
	uint32_t indirect_taboffset;
	uint16_t hashkey_size;
	uint32_t hashkey_offset;
	uint32_t processor_masks_offset;
	uint32_t num_processor_masks;
	uint32_t processor_masks_entry_size;
};

struct ndis_object_header {
	uint8_t type;
	uint8_t revision;
	uint16_t size;
};

struct ndis_csum_offload {
	uint32_t ip4_txenc;
	uint32_t ip4_txcsum;
	uint32_t ip4_rxenc;
	uint32_t ip4_rxcsum;
	uint32_t ip6_txenc;
	uint32_t ip6_txcsum;
	uint32_t ip6_rxenc;
	uint32_t ip6_rxcsum;
};

struct ndis_lsov1_offload {
	uint32_t encap;
	uint32_t maxsize;
	uint32_t minsegs;
	uint32_t opts;
};

struct ndis_ipsecv1_offload {
	uint32_t encap;
	uint32_t ah_esp;
	uint32_t xport_tun;
	uint32_t ip4_opts;
	uint32_t flags;
	uint32_t ip4_ah;
	uint32_t ip4_esp;
};

struct ndis_lsov2_offload {
	uint32_t ip4_encap;
	uint32_t ip4_maxsz;
	uint32_t ip4_minsg;
	uint32_t ip6_encap;
	uint32_t ip6_maxsz;
	uint32_t ip6_minsg;
	uint32_t ip6_opts;
};

struct ndis_ipsecv2_offload {
	uint32_t encap;
	uint8_t ip6;
	uint8_t ip4opt;
	uint8_t ip6ext;
	uint8_t ah;
	uint8_t esp;
	uint8_t ah_esp;
	uint8_t xport;
	uint8_t tun;
	uint8_t xport_tun;
	uint8_t lso;
	uint8_t extseq;
	uint32_t udp_esp;
	uint32_t auth;
	uint32_t crypto;
	uint32_t sa_caps;
};

struct ndis_rsc_offload {
	uint8_t ip4;
	uint8_t ip6;
};

struct ndis_encap_offload {
	uint32_t flags;
	uint32_t maxhdr;
};

/* OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES answer: all zero past the header = nothing offloaded */
struct ndis_offload {
	struct ndis_object_header header;
	struct ndis_csum_offload csum;
	struct ndis_lsov1_offload lsov1;
	struct ndis_ipsecv1_offload ipsecv1;
	struct ndis_lsov2_offload lsov2;
	uint32_t flags;
	struct ndis_ipsecv2_offload ipsecv2; /* NDIS >= 6.1 */
	struct ndis_rsc_offload rsc;         /* NDIS >= 6.30 */
	struct ndis_encap_offload encap_gre;
};

#define NDIS_OFFLOAD_SIZE sizeof(struct ndis_offload)
#define NDIS_OFFLOAD_SIZE_6_0 offsetof(struct ndis_offload, ipsecv2)
#define NDIS_OFFLOAD_SIZE_6_1 offsetof(struct ndis_offload, rsc)

/* OID_TCP_OFFLOAD_PARAMETERS (set) */
struct ndis_offload_params {
	struct ndis_object_header header;
	uint8_t ip_v4_csum;
	uint8_t tcp_ip_v4_csum;
	uint8_t udp_ip_v4_csum;
	uint8_t tcp_ip_v6_csum;
	uint8_t udp_ip_v6_csum;
	uint8_t lso_v1;
	uint8_t ip_sec_v1;
	uint8_t lso_v2_ipv4;
	uint8_t lso_v2_ipv6;
	uint8_t tcp_connection_ip_v4;
	uint8_t tcp_connection_ip_v6;
	uint32_t flags;
	uint8_t ip_sec_v2;
	uint8_t ip_sec_v2_ip_v4;
	struct {
		uint8_t rsc_ip_v4;
		uint8_t rsc_ip_v6;
	};
	struct {
		uint8_t encapsulated_packet_task_offload;
		uint8_t encapsulation_types;
	};
};

struct rndis_config_parameter_info {
	uint32_t parameter_name_offset;
	uint32_t parameter_name_length;
	uint32_t parameter_type;
	uint32_t parameter_value_offset;
	uint32_t parameter_value_length;
};

#ifndef __cplusplus
_Static_assert(sizeof(struct nvsp_message) == 40, "nvsp_message layout");
_Static_assert(offsetof(struct nvsp_message, msg) == 4, "nvsp_message layout");
_Static_assert(sizeof(struct rndis_message) == 52, "rndis_message layout");
_Static_assert(sizeof(struct rndis_packet) == 36, "rndis_packet layout");
_Static_assert(sizeof(struct rndis_per_packet_info) == 12, "rndis_per_packet_info layout");
_Static_assert(sizeof(struct ndis_offload_params) == 28, "ndis_offload_params layout");
#endif

#endif /* HVKVM_NETVSC_PROTO_H */
