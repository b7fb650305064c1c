/*
 * ic_proto.h - the Hyper-V integration services (ICs) wire protocol in Linux's spelling: the C
 * twin of hvkvm/vsp/ic_wire.py.
 *
 * Names are Linux's (include/linux/hyperv.h, include/uapi/linux/hyperv.h, drivers/hv/hv_util.c);
 * member types are fixed-width; __packed exactly where Linux says so. tests/test_ic_conformance.py
 * compares every layout here with the BTF of Debian's compiled hv_utils.ko / hv_vmbus.ko and with
 * ic_wire.py, and the version tables with the ones compiled into hv_utils.ko.
 *
 * An IC message is one in-band VMBus packet:
 *
 *   struct vmbuspipe_hdr   (8 bytes: flags, msgsize)
 *   struct icmsg_hdr       (20 bytes: framework and message versions, icmsgtype, icmsgsize,
 *                           status, ictransaction_id, icflags)
 *   body                   (icmsg_negotiate + ic_version[], heartbeat_msg_data,
 *                           shutdown_msg_data, ...)
 *
 * On Hyper-V the HOST sends every request (ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_REQUEST) and
 * the guest answers in place, echoing the whole packet (same length, same VMBus trans_id) with
 * icflags = ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_RESPONSE. The first request on a channel is
 * ICMSGTYPE_NEGOTIATE listing icframe_vercnt framework versions, then icmsg_vercnt service
 * versions; the guest answers 1 + 1 (the versions it chose: Linux's vmbus_prep_negotiate_resp)
 * or 0 + 0 (nothing in common).
 *
 * Names Linux does not have are marked "(hvkvm)": the shutdown flag bits (Linux tests the
 * literals 0..5), the pipe packet type hosts put in vmbuspipe_hdr.flags, the reason code.
 *
 * Freestanding: only <stdint.h> and <stddef.h>, so guest images can use it too.
 */
#ifndef HVKVM_IC_PROTO_H
#define HVKVM_IC_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define IC_PACKED __attribute__((packed))

/* Message types (icmsg_hdr.icmsgtype) */
#define ICMSGTYPE_NEGOTIATE 0
#define ICMSGTYPE_HEARTBEAT 1
#define ICMSGTYPE_KVPEXCHANGE 2
#define ICMSGTYPE_SHUTDOWN 3
#define ICMSGTYPE_TIMESYNC 4
#define ICMSGTYPE_VSS 5
#define ICMSGTYPE_FCOPY 7

/* icmsg_hdr.icflags */
#define ICMSGHDRFLAG_TRANSACTION 1
#define ICMSGHDRFLAG_REQUEST 2
#define ICMSGHDRFLAG_RESPONSE 4

/* icmsg_hdr.status (HRESULTs, include/uapi/linux/hyperv.h) */
#define HV_S_OK 0x00000000u
#define HV_E_FAIL 0x80004005u
#define HV_S_CONT 0x80070103u
#define HV_ERROR_NOT_SUPPORTED 0x80070032u
#define HV_ERROR_MACHINE_LOCKED 0x800704F7u
#define HV_ERROR_DEVICE_NOT_CONNECTED 0x8007048Fu
#define HV_INVALIDARG 0x80070057u
#define HV_GUID_NOTFOUND 0x80041002u

/* Framework versions (include/uapi/linux/hyperv.h): major << 16 | minor */
#define UTIL_FW_MINOR 0
#define UTIL_WS2K8_FW_MAJOR 1
#define UTIL_WS2K8_FW_VERSION (UTIL_WS2K8_FW_MAJOR << 16 | UTIL_FW_MINOR)
#define UTIL_FW_MAJOR 3
#define UTIL_FW_VERSION (UTIL_FW_MAJOR << 16 | UTIL_FW_MINOR)

/* Service versions (drivers/hv/hv_util.c) */
#define SD_MAJOR 3
#define SD_MINOR 0
#define SD_MINOR_1 1
#define SD_MINOR_2 2
#define SD_VERSION_3_1 (SD_MAJOR << 16 | SD_MINOR_1)
#define SD_VERSION_3_2 (SD_MAJOR << 16 | SD_MINOR_2)
#define SD_VERSION (SD_MAJOR << 16 | SD_MINOR)
#define SD_MAJOR_1 1
#define SD_VERSION_1 (SD_MAJOR_1 << 16 | SD_MINOR)

#define TS_MAJOR 4
#define TS_MINOR 0
#define TS_VERSION (TS_MAJOR << 16 | TS_MINOR)
#define TS_MAJOR_1 1
#define TS_VERSION_1 (TS_MAJOR_1 << 16 | TS_MINOR)
#define TS_MAJOR_3 3
#define TS_VERSION_3 (TS_MAJOR_3 << 16 | TS_MINOR)

#define HB_MAJOR 3
#define HB_MINOR 0
#define HB_VERSION (HB_MAJOR << 16 | HB_MINOR)
#define HB_MAJOR_1 1
#define HB_VERSION_1 (HB_MAJOR_1 << 16 | HB_MINOR)

/* The tables hv_util.c negotiates with, best first (initializers: fw_versions[],
 * sd_versions[], ts_versions[], hb_versions[] in hv_utils.ko). */
#define FW_VER_COUNT 2
#define SD_VER_COUNT 4
#define TS_VER_COUNT 3
#define HB_VER_COUNT 2
#define IC_LINUX_FW_VERSIONS { UTIL_FW_VERSION, UTIL_WS2K8_FW_VERSION }
#define IC_LINUX_SD_VERSIONS { SD_VERSION_3_2, SD_VERSION_3_1, SD_VERSION, SD_VERSION_1 }
#define IC_LINUX_TS_VERSIONS { TS_VERSION, TS_VERSION_3, TS_VERSION_1 }
#define IC_LINUX_HB_VERSIONS { HB_VERSION, HB_VERSION_1 }

#define MAX_SRV_VER 0x7ffffff

/* vmbuspipe_hdr.flags as hosts send it (hvkvm; OpenVMM's PIPE_PACKET_TYPE_DATA). Linux never
 * looks at the pipe header; it echoes it back. */
#define VMBUSPIPE_PACKET_TYPE_DATA 1

/* shutdown_msg_data.flags bits (hvkvm names; Linux's shutdown_onchannelcallback tests 0/1 shut
 * down, 2/3 restart, 4/5 hibernate: bit 0 means "by force"). */
#define ICSHUTDOWN_FLAG_FORCE 0x1
#define ICSHUTDOWN_FLAG_RESTART 0x2
#define ICSHUTDOWN_FLAG_HIBERNATE 0x4
/* shutdown_msg_data.reason_code a host sends for a planned stop (Windows SDK). */
#define SHTDN_REASON_FLAG_PLANNED 0x80000000u
#define ICSHUTDOWN_DISPLAY_MESSAGE_SIZE 2048

struct vmbuspipe_hdr {
	uint32_t flags;
	uint32_t msgsize;
} IC_PACKED;

struct ic_version {
	uint16_t major;
	uint16_t minor;
} IC_PACKED;

struct icmsg_hdr {
	struct ic_version icverframe;
	uint16_t icmsgtype;
	struct ic_version icvermsg;
	uint16_t icmsgsize;
	uint32_t status;
	uint8_t ictransaction_id;
	uint8_t icflags;
	uint8_t reserved[2];
} IC_PACKED;

#define IC_VERSION_NEGOTIATION_MAX_VER_COUNT 100
#define ICMSG_HDR (sizeof(struct vmbuspipe_hdr) + sizeof(struct icmsg_hdr))
#define ICMSG_NEGOTIATE_PKT_SIZE(icframe_vercnt, icmsg_vercnt)                                   \
	(ICMSG_HDR + sizeof(struct icmsg_negotiate) +                                             \
	 (((icframe_vercnt) + (icmsg_vercnt)) * sizeof(struct ic_version)))

struct icmsg_negotiate {
	uint16_t icframe_vercnt;
	uint16_t icmsg_vercnt;
	uint32_t reserved;
	struct ic_version icversion_data[]; /* framework versions, then service versions */
} IC_PACKED;

struct shutdown_msg_data {
	uint32_t reason_code;
	uint32_t timeout_seconds;
	uint32_t flags;
	uint8_t display_message[ICSHUTDOWN_DISPLAY_MESSAGE_SIZE];
} IC_PACKED;

struct heartbeat_msg_data {
	uint64_t seq_num;
	uint32_t reserved[8];
} IC_PACKED;

/* Time Sync IC (not served by hvkvm yet; layouts for completeness) */
#define ICTIMESYNCFLAG_PROBE 0
#define ICTIMESYNCFLAG_SYNC 1
#define ICTIMESYNCFLAG_SAMPLE 2

struct ictimesync_data {
	uint64_t parenttime;
	uint64_t childtime;
	uint64_t roundtriptime;
	uint8_t flags;
} IC_PACKED;

struct ictimesync_ref_data {
	uint64_t parenttime;
	uint64_t vmreferencetime;
	uint8_t flags;
	char leapflags;
	char stratum;
	uint8_t reserved[3];
} IC_PACKED;

/* Version words: major << 16 | minor (the form of the tables above). */
#define IC_VERSION_WORD(major, minor) ((uint32_t)(major) << 16 | (uint32_t)(minor))

_Static_assert(sizeof(struct vmbuspipe_hdr) == 8, "vmbuspipe_hdr is 8 bytes");
_Static_assert(sizeof(struct icmsg_hdr) == 20, "icmsg_hdr is 20 bytes");
_Static_assert(sizeof(struct icmsg_negotiate) == 8, "icmsg_negotiate is 8 bytes");
_Static_assert(sizeof(struct shutdown_msg_data) == 2060, "shutdown_msg_data is 2060 bytes");
_Static_assert(sizeof(struct heartbeat_msg_data) == 40, "heartbeat_msg_data is 40 bytes");

#endif /* HVKVM_IC_PROTO_H */
