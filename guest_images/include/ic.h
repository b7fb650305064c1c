/*
 * ic.h - the guest runtime's integration-service VSCs: heartbeat and shutdown, answering the
 * host the way Linux's drivers/hv/hv_util.c does (wire structs from csrc/ic_proto.h).
 *
 * The host sends every request; the guest answers each one in place: the same packet goes back
 * (same length, same VMBus trans_id) with icflags = ICMSGHDRFLAG_TRANSACTION |
 * ICMSGHDRFLAG_RESPONSE. The first request on a channel is ICMSGTYPE_NEGOTIATE; the answer picks
 * the best framework and service versions of Linux's tables that the host lists
 * (vmbus_prep_negotiate_resp; 0 + 0 versions when none matches). Then:
 *   - heartbeat: seq_num += 1;
 *   - shutdown: flags 0/1 (shut down) and 2/3 (restart) are accepted with HV_S_OK, then the
 *     image's hook runs (default: hv_done(0)); 4/5 (hibernate) and anything else get HV_E_FAIL.
 * Packets too short for what Linux reads are dropped unanswered, as Linux drops them.
 *
 * The channels are serviced from the VMBus interrupt (ring 0, IF=0, vCPU 0: the channel's
 * on_event), so an image only has to let interrupts in: `sti; hlt` when idle. Every wait of the
 * VMBus client (vmbus_send, vmbus_recv, opening other channels) does that too.
 *
 * Typical use:
 *     vmbus_init(VMBUS_VECTOR_DEFAULT);
 *     ic_start_all();                  // heartbeat + shutdown, whichever the host offers
 *     for (;;) __asm__ volatile("sti; hlt; cli");   // until the host asks for a shutdown
 */
#ifndef HV_IC_H
#define HV_IC_H

#include "vmbus.h"
#include "ic_proto.h" /* csrc/ */

/* Data pages per ring: Linux's HV_UTIL_RING_SEND_SIZE / RECV_SIZE (3 pages + the header). */
#define IC_RING_DATA_PAGES 3
/* Largest message the VSC takes (Linux: HV_HYP_PAGE_SIZE). */
#define IC_MSG_MAX 4096

/* What the host asked for, handed to the shutdown hook. */
struct ic_shutdown_info {
	uint32_t flags;           /* 0 shut down, 2 restart; | ICSHUTDOWN_FLAG_FORCE */
	uint32_t reason_code;
	uint32_t timeout_seconds;
	uint32_t reserved;
	char message[ICSHUTDOWN_DISPLAY_MESSAGE_SIZE]; /* display_message, NUL-terminated */
};

/* One IC's VSC state (read-only for images). */
struct ic_service {
	const char *name;          /* "heartbeat", "shutdown" */
	struct vmbus_channel *ch;  /* open channel, or NULL */
	uint16_t icmsgtype;        /* the service's message type */
	uint16_t srv_count;
	const int *srv_versions;   /* Linux's table, best first */
	uint32_t fw_version;       /* negotiated (major << 16 | minor), 0 until negotiated */
	uint32_t srv_version;
	uint64_t negotiations;     /* negotiate requests answered with a match */
	uint64_t no_match;         /* ... answered 0 + 0 */
	uint64_t requests;         /* service requests answered */
	uint64_t last_seq;         /* heartbeat: the seq_num last sent back */
	uint64_t dropped;          /* packets dropped unanswered (too short / too long / not in-band) */
	uint64_t refused;          /* answered HV_E_FAIL */
	uint64_t send_errors;      /* answers the send ring had no room for */
	uint64_t events;           /* channel interrupts serviced */
};
extern struct ic_service ic_heartbeat;
extern struct ic_service ic_shutdown;

/* Called after a shutdown request was accepted and its answer sent (ring 0, interrupt context,
 * IF=0). NULL (the default): log it and hv_done(0). An image may set its own; if it returns,
 * the guest goes on. */
extern void (*ic_shutdown_hook)(const struct ic_shutdown_info *info);
/* The last accepted shutdown request (valid once ic_shutdown.requests > 0). */
extern struct ic_shutdown_info ic_last_shutdown;

/* Open the service's channel (the first offer with its class GUID), install the interrupt
 * handler and answer whatever the host sent already. vmbus_init() first. 0, VMBUS_ENODEV when
 * the host does not offer it, or a vmbus_channel_open() error. Ring 0, IF=0. */
int ic_start(struct ic_service *svc);
/* ic_start() for heartbeat and shutdown; returns how many were started (offered), or the first
 * error other than VMBUS_ENODEV. */
int ic_start_all(void);
/* Answer everything waiting on the service's channel (what the interrupt handler does). Ring 0,
 * IF=0. */
void ic_poll(struct ic_service *svc);
/* Close the channel (CLOSECHANNEL, GPADL teardown). Ring 0. */
int ic_stop(struct ic_service *svc);

/* Linux's vmbus_prep_negotiate_resp() on a received message buf[0 .. buflen): sets icmsgsize
 * 0x10, the counts to 1 + 1 with the choice in icversion_data[0..1] (or 0 + 0) and stores the
 * choice in *fw / *srv. Returns whether both matched. Any ring. */
bool ic_prep_negotiate_resp(struct icmsg_hdr *hdr, uint8_t *buf, uint32_t buflen,
			    const int *fw_version, int fw_vercnt, const int *srv_version,
			    int srv_vercnt, uint32_t *fw, uint32_t *srv);

#endif /* HV_IC_H */
