/*
 * k_ic.c - the heartbeat and shutdown integration-service VSCs (see include/ic.h). Kernel-only
 * (ring 0), vCPU 0: the channels are serviced from the VMBus interrupt, like Linux's
 * drivers/hv/hv_util.c callbacks (whose wire behaviour this follows; the code is our own).
 */
#include "ic.h"

static const int fw_versions[FW_VER_COUNT] = IC_LINUX_FW_VERSIONS;
static const int hb_versions[HB_VER_COUNT] = IC_LINUX_HB_VERSIONS;
static const int sd_versions[SD_VER_COUNT] = IC_LINUX_SD_VERSIONS;

struct ic_service ic_heartbeat = {
	.name = "heartbeat",
	.icmsgtype = ICMSGTYPE_HEARTBEAT,
	.srv_count = HB_VER_COUNT,
	.srv_versions = hb_versions,
};
struct ic_service ic_shutdown = {
	.name = "shutdown",
	.icmsgtype = ICMSGTYPE_SHUTDOWN,
	.srv_count = SD_VER_COUNT,
	.srv_versions = sd_versions,
};

void (*ic_shutdown_hook)(const struct ic_shutdown_info *info);
struct ic_shutdown_info ic_last_shutdown;

/* Rings: send ring (header + data pages), then receive ring, per service. */
#define IC_RING_PAGES (1 + IC_RING_DATA_PAGES)
static uint8_t hb_rings[2 * IC_RING_PAGES * HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));
static uint8_t sd_rings[2 * IC_RING_PAGES * HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));
/* One message at a time is copied here, answered in place and sent back (Linux's recv_buffer).
 * Both services are serviced on vCPU 0 with IF=0, never nested. */
static uint8_t msg_buf[IC_MSG_MAX] __attribute__((aligned(8)));

_Static_assert(ICMSG_HDR == 28, "the IC body starts at byte 28");

/* ------------------------------------------------------------------------------------------ */
/* Negotiation: Linux's vmbus_prep_negotiate_resp(), as it behaves. */

bool ic_prep_negotiate_resp(struct icmsg_hdr *hdr, uint8_t *buf, uint32_t buflen,
			    const int *fw_version, int fw_vercnt, const int *srv_version,
			    int srv_vercnt, uint32_t *fw, uint32_t *srv)
{
	struct icmsg_negotiate *negop;
	struct ic_version *vers;
	uint32_t frame_major, frame_minor, msg_major, msg_minor;
	uint32_t nf, nm;
	bool found = false;

	/* Room for icframe_vercnt and icmsg_vercnt, or nothing is answered (Linux returns). */
	if (buflen < ICMSG_HDR + offsetof(struct icmsg_negotiate, reserved))
		return false;
	hdr->icmsgsize = 0x10;
	negop = (struct icmsg_negotiate *)&buf[ICMSG_HDR];
	vers = (struct ic_version *)&buf[ICMSG_HDR + sizeof(struct icmsg_negotiate)];
	nf = negop->icframe_vercnt;
	nm = negop->icmsg_vercnt;
	frame_major = nf;
	frame_minor = 0;
	msg_major = nm;
	msg_minor = 0;

	if (nf > IC_VERSION_NEGOTIATION_MAX_VER_COUNT || nm > IC_VERSION_NEGOTIATION_MAX_VER_COUNT ||
	    ICMSG_NEGOTIATE_PKT_SIZE(nf, nm) > buflen)
		goto answer;

	/* The first framework version of ours (best first) that the host lists. */
	for (int i = 0; i < fw_vercnt && !found; i++) {
		uint32_t major = (uint32_t)fw_version[i] >> 16, minor = fw_version[i] & 0xffff;

		for (uint32_t j = 0; j < nf; j++)
			if (vers[j].major == major && vers[j].minor == minor) {
				frame_major = major;
				frame_minor = minor;
				found = true;
				break;
			}
	}
	if (!found)
		goto answer;
	found = false;
	/* Then the first service version of ours among the host's service versions. */
	for (int i = 0; i < srv_vercnt && !found; i++) {
		uint32_t major = (uint32_t)srv_version[i] >> 16, minor = srv_version[i] & 0xffff;

		for (uint32_t j = nf; j < nf + nm; j++)
			if (vers[j].major == major && vers[j].minor == minor) {
				msg_major = major;
				msg_minor = minor;
				found = true;
				break;
			}
	}
answer:
	negop->icframe_vercnt = found ? 1 : 0;
	negop->icmsg_vercnt = found ? 1 : 0;
	if (fw)
		*fw = frame_major << 16 | frame_minor;
	if (srv)
		*srv = msg_major << 16 | msg_minor;
	/* Linux writes both entries unconditionally (into its 4-page buffer); only inside ours. */
	if (buflen >= ICMSG_HDR + sizeof(struct icmsg_negotiate) + 2 * sizeof(struct ic_version)) {
		vers[0].major = (uint16_t)frame_major;
		vers[0].minor = (uint16_t)frame_minor;
		vers[1].major = (uint16_t)msg_major;
		vers[1].minor = (uint16_t)msg_minor;
	}
	return found;
}

/* ------------------------------------------------------------------------------------------ */
/* One message. */

static void signal_host(struct vmbus_channel *ch)
{
	ch->host_signals++;
	hv_signal_event(ch->connection_id);
}

static void send_answer(struct ic_service *svc, uint32_t len, uint64_t trans_id)
{
	struct vmbus_channel *ch = svc->ch;
	int rc = vmbus_rings_write(&ch->rings, msg_buf, len, trans_id, 0);

	if (rc != HVR_OK) {
		/* The host sends one request at a time: a full send ring means it stopped reading. */
		svc->send_errors++;
		return;
	}
	if (vmbus_rings_commit(&ch->rings) == 1)
		signal_host(ch);
}

static void accepted_shutdown(const struct shutdown_msg_data *m)
{
	struct ic_shutdown_info *info = &ic_last_shutdown;
	uint32_t i;

	info->flags = m->flags;
	info->reason_code = m->reason_code;
	info->timeout_seconds = m->timeout_seconds;
	for (i = 0; i < sizeof(info->message) - 1 && m->display_message[i]; i++)
		info->message[i] = (char)m->display_message[i];
	info->message[i] = '\0';
}

/* Answer one message in msg_buf[0 .. len). Returns true when an accepted shutdown must run
 * (after the answer went out). */
static bool handle(struct ic_service *svc, uint32_t len, uint64_t trans_id)
{
	struct icmsg_hdr *hdr = (struct icmsg_hdr *)&msg_buf[sizeof(struct vmbuspipe_hdr)];
	bool run_shutdown = false;

	if (len < ICMSG_HDR) { /* Linux: "Packet length too small" */
		svc->dropped++;
		return false;
	}
	if (hdr->icmsgtype == ICMSGTYPE_NEGOTIATE) {
		uint32_t fw = 0, srv = 0;

		if (len < ICMSG_HDR + offsetof(struct icmsg_negotiate, reserved)) {
			svc->dropped++;
			return false;
		}
		if (ic_prep_negotiate_resp(hdr, msg_buf, len, fw_versions, FW_VER_COUNT,
					   svc->srv_versions, svc->srv_count, &fw, &srv)) {
			svc->fw_version = fw;
			svc->srv_version = srv;
			svc->negotiations++;
		} else {
			svc->no_match++;
		}
	} else if (hdr->icmsgtype == svc->icmsgtype &&
		   svc->icmsgtype == ICMSGTYPE_HEARTBEAT) {
		struct heartbeat_msg_data *hb = (void *)&msg_buf[ICMSG_HDR];

		/* Only seq_num must be there: the host may not fill the reserved words. */
		if (len < ICMSG_HDR + sizeof(uint64_t)) {
			svc->dropped++;
			return false;
		}
		hb->seq_num += 1;
		svc->last_seq = hb->seq_num;
		svc->requests++;
	} else if (hdr->icmsgtype == svc->icmsgtype && svc->icmsgtype == ICMSGTYPE_SHUTDOWN) {
		struct shutdown_msg_data *m = (void *)&msg_buf[ICMSG_HDR];

		if (len < ICMSG_HDR + sizeof(struct shutdown_msg_data)) {
			svc->dropped++;
			return false;
		}
		switch (m->flags) {
		case 0: /* shut down */
		case 1: /* ... by force */
		case 2: /* restart */
		case 3: /* ... by force */
			hdr->status = HV_S_OK;
			accepted_shutdown(m);
			run_shutdown = true;
			break;
		default: /* 4/5 hibernate: not supported here, as Linux without hibernation */
			hdr->status = HV_E_FAIL;
			svc->refused++;
			break;
		}
		svc->requests++;
	} else {
		/* Linux: "Invalid msg type" */
		hdr->status = HV_E_FAIL;
		svc->refused++;
	}
	hdr->icflags = ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_RESPONSE;
	send_answer(svc, len, trans_id);
	return run_shutdown;
}

void ic_poll(struct ic_service *svc)
{
	struct vmbus_channel *ch = svc->ch;
	struct hvr_pkt pkt;

	if (!ch || ch->state != VMBUS_CH_OPEN)
		return;
	for (;;) {
		int rc = vmbus_rings_read(&ch->rings, &pkt);
		uint32_t len = pkt.payload_len;
		uint64_t trans_id = pkt.trans_id;
		bool ok;

		if (rc == HVR_EMPTY) {
			/* interrupt_mask stays clear (the host signals on empty -> non-empty); look
			 * once more after the fence, as Linux's hv_end_read(). */
			if (hvr_in_unmask(&ch->rings.in) == 1)
				continue;
			return;
		}
		if (rc != HVR_OK) {
			svc->dropped++;
			return; /* broken ring: the view refuses everything from now on */
		}
		ok = pkt.type == VM_PKT_DATA_INBAND && len <= IC_MSG_MAX &&
		     hvr_in_copy(&ch->rings.in, &pkt, pkt.payload_off, msg_buf, len) == HVR_OK;
		/* The copy is ours: free the ring space before answering. */
		if (vmbus_rings_release(&ch->rings) == 1)
			signal_host(ch);
		if (!ok) {
			svc->dropped++;
			continue;
		}
		if (handle(svc, len, trans_id)) {
			hv_log("ic: shutdown requested (flags %u, reason 0x%x): \"%s\"",
			       ic_last_shutdown.flags, ic_last_shutdown.reason_code,
			       ic_last_shutdown.message);
			if (ic_shutdown_hook)
				ic_shutdown_hook(&ic_last_shutdown);
			else
				hv_done(0);
		}
	}
}

static void on_event(struct vmbus_channel *ch)
{
	struct ic_service *svc = ch == ic_heartbeat.ch ? &ic_heartbeat :
				 ch == ic_shutdown.ch ? &ic_shutdown : NULL;

	if (svc) {
		svc->events++;
		ic_poll(svc);
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Start and stop. */

int ic_start(struct ic_service *svc)
{
	struct vmbus_channel *ch;
	uint8_t *rings;
	int rc;

	if (svc == &ic_heartbeat) {
		ch = vmbus_find_channel(&HV_HEART_BEAT_GUID, 0);
		rings = hb_rings;
	} else if (svc == &ic_shutdown) {
		ch = vmbus_find_channel(&HV_SHUTDOWN_GUID, 0);
		rings = sd_rings;
	} else {
		return VMBUS_EINVAL;
	}
	if (!ch)
		return VMBUS_ENODEV;
	if (svc->ch)
		return VMBUS_EINVAL;
	ch->on_event = on_event;
	rc = vmbus_channel_open(ch, rings, IC_RING_PAGES, IC_RING_PAGES);
	if (rc)
		return rc;
	svc->ch = ch;
	/* The host negotiates as soon as OPENCHANNEL_RESULT is out; its interrupt may have come
	 * while the open was still waiting (before the channel counted as open). */
	ic_poll(svc);
	return 0;
}

int ic_start_all(void)
{
	int started = 0, rc;

	rc = ic_start(&ic_heartbeat);
	if (rc == 0)
		started++;
	else if (rc != VMBUS_ENODEV)
		return rc;
	rc = ic_start(&ic_shutdown);
	if (rc == 0)
		started++;
	else if (rc != VMBUS_ENODEV)
		return rc;
	return started;
}

int ic_stop(struct ic_service *svc)
{
	struct vmbus_channel *ch = svc->ch;
	int rc;

	if (!ch)
		return VMBUS_EINVAL;
	rc = vmbus_channel_close(ch);
	ch->on_event = NULL;
	svc->ch = NULL;
	return rc;
}
