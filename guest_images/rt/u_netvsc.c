/*
 * u_netvsc.c - the netvsc VSC's data path, usable from ring 0 and ring 3: drain the receive ring
 * (completions, transfer-page packets carrying RNDIS messages, host NVSP messages), deliver
 * frames, complete receives, send frames and RNDIS control messages through send-buffer
 * sections. Wire facts from Linux's drivers/net/hyperv/{netvsc.c,rndis_filter.c}; structs from
 * csrc/netvsc_proto.h. The set-up that needs ring 0 (GPADLs, channel open) is in k_netvsc.c.
 *
 * Everything the host wrote is read once into locals (descriptor copies, range copies, RNDIS
 * header fields) and validated before use; a frame is copied out of the receive buffer before
 * the IP stack looks at it.
 */
#include "netvsc.h"

static inline uint64_t nv_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* A bound for spinning on the host: tsc-based when the frequency is known, else a count. */
struct nv_deadline {
	uint64_t end;
	uint64_t spins;
};

static void deadline_start(const struct netvsc *nv, struct nv_deadline *d, uint64_t ms)
{
	d->end = nv->tsc_hz ? nv_rdtsc() + nv->tsc_hz / 1000 * ms : 0;
	d->spins = ms * 20000;
}

static bool deadline_passed(struct nv_deadline *d)
{
	if (d->end)
		return nv_rdtsc() > d->end;
	return d->spins-- == 0;
}

static inline uint32_t ld32(const volatile uint8_t *p)
{
	uint32_t v;
	memcpy(&v, (const void *)p, 4);
	return v;
}

void netvsc_set_rx(struct netvsc *nv, netvsc_rx_fn fn, void *ctx)
{
	nv->rx = fn;
	nv->rx_ctx = ctx;
}

/* ------------------------------------------------------------------------------------------ */
/* Send ring */

int netvsc_flush(struct netvsc *nv)
{
	int rc;

	if (!nv->dirty)
		return 0;
	rc = hvr_out_commit(&nv->rings.out);
	nv->dirty = 0;
	if (rc < 0)
		return NETVSC_EBROKEN;
	if (rc == 1) {
		vmbus_rings_kick(&nv->rings);
		return 1;
	}
	return 0;
}

static int drain(struct netvsc *nv);

/* Write one packet; while the ring is full: publish, reap, retry (bounded: 2 s). */
static int ring_write(struct netvsc *nv, uint16_t type, uint16_t flags, uint64_t tid,
		      const void *msg, uint32_t len)
{
	struct hvr_iov iov = { msg, len };
	struct nv_deadline d;
	bool started = false;
	int rc;

	for (;;) {
		rc = hvr_out_write(&nv->rings.out, type, flags, tid, 0, &iov, 1);
		if (rc == HVR_OK) {
			nv->dirty++;
			return 0;
		}
		if (rc != HVR_FULL)
			return rc == HVR_EBROKEN ? NETVSC_EBROKEN : NETVSC_EINVAL;
		if (!started) {
			nv->st.tx_ring_full++;
			deadline_start(nv, &d, 2000);
			started = true;
		} else if (deadline_passed(&d)) {
			return NETVSC_ETIMEDOUT;
		}
		if (netvsc_flush(nv) < 0 || drain(nv) < 0)
			return NETVSC_EBROKEN;
		hv_pause();
	}
}

int netvsc_send_nvsp(struct netvsc *nv, const struct nvsp_message *msg, uint32_t len,
		     bool completion, uint32_t expect)
{
	uint64_t tid = NETVSC_TID_NVSP | (msg->hdr.msg_type & 0xffff);
	int rc;

	if (len < sizeof(msg->hdr) || len > sizeof(*msg))
		return NETVSC_EINVAL;
	if (completion) {
		nv->nvsp.trans_id = tid;
		nv->nvsp.expect = expect;
		nv->nvsp.done = 0;
	}
	rc = ring_write(nv, VM_PKT_DATA_INBAND,
			completion ? VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED : 0, tid, msg, len);
	if (rc)
		return rc;
	return netvsc_flush(nv) < 0 ? NETVSC_EBROKEN : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Send-buffer sections */

static int section_alloc(struct netvsc *nv)
{
	uint32_t n = nv->send_section_count, words = (n + 63) / 64;

	if (!nv->send_free)
		return -1;
	for (uint32_t k = 0; k < words; k++) {
		uint32_t w = (nv->send_hint + k) % words;
		uint64_t used = nv->send_map[w];

		if (w == words - 1 && n % 64)
			used |= ~0ull << (n % 64); /* past the last section */
		if (~used) {
			unsigned bit = (unsigned)__builtin_ctzll(~used);

			nv->send_map[w] |= 1ull << bit;
			nv->send_free--;
			nv->send_hint = w;
			return (int)(w * 64 + bit);
		}
	}
	return -1;
}

static void section_free(struct netvsc *nv, uint32_t idx)
{
	nv->send_map[idx / 64] &= ~(1ull << (idx % 64));
	nv->send_free++;
}

static bool section_in_use(const struct netvsc *nv, uint32_t idx)
{
	return idx < nv->send_section_count && (nv->send_map[idx / 64] >> (idx % 64)) & 1;
}

/* A free section, reaping completions once if there is none. -1 if still none. */
static int section_get(struct netvsc *nv)
{
	int idx = section_alloc(nv);

	if (idx < 0 && nv->send_section_count) {
		netvsc_flush(nv);
		drain(nv);
		idx = section_alloc(nv);
	}
	return idx;
}

/* SEND_RNDIS_PKT for `size` bytes in section idx (completion requested). */
static int send_section(struct netvsc *nv, uint32_t idx, uint32_t size, uint32_t channel_type)
{
	struct nvsp_message msg;
	int rc;

	memset(&msg, 0, sizeof(msg));
	msg.hdr.msg_type = NVSP_MSG1_TYPE_SEND_RNDIS_PKT;
	msg.msg.v1_msg.send_rndis_pkt.channel_type = channel_type;
	msg.msg.v1_msg.send_rndis_pkt.send_buf_section_index = idx;
	msg.msg.v1_msg.send_rndis_pkt.send_buf_section_size = size;
	rc = ring_write(nv, VM_PKT_DATA_INBAND, VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
			NETVSC_TID_TX | idx, &msg, sizeof(msg));
	if (rc)
		section_free(nv, idx);
	return rc;
}

int netvsc_tx(struct netvsc *nv, const uint8_t *frame, uint32_t len)
{
	struct rndis_message *m;
	uint8_t *sec;
	int idx, rc;

	if (len < NET_ETH_HLEN || len > NETVSC_FRAME_MAX ||
	    len + NETVSC_RNDIS_PKT_HDR > nv->send_section_size)
		return NETVSC_EINVAL;
	idx = section_get(nv);
	if (idx < 0) {
		nv->st.tx_no_section++;
		return NETVSC_EBUSY;
	}
	sec = nv->send_buf + (size_t)idx * nv->send_section_size;
	m = (struct rndis_message *)sec;
	m->ndis_msg_type = REMOTE_NDIS_PACKET_MSG;
	m->msg_len = (uint32_t)NETVSC_RNDIS_PKT_HDR + len;
	memset(&m->msg.pkt, 0, sizeof(m->msg.pkt));
	m->msg.pkt.data_offset = sizeof(struct rndis_packet); /* from the start of rndis_packet */
	m->msg.pkt.data_len = len;
	memcpy(sec + NETVSC_RNDIS_PKT_HDR, frame, len);
	rc = send_section(nv, (uint32_t)idx, m->msg_len, NVSP_DATA_CHANNEL_TYPE);
	if (rc)
		return rc;
	nv->st.tx_frames++;
	nv->st.tx_bytes += len;
	return 0;
}

int netvsc_link_tx(void *ctx, const uint8_t *frame, uint32_t len)
{
	return netvsc_tx(ctx, frame, len);
}

int netvsc_rndis_request(struct netvsc *nv, uint32_t type, uint32_t oid, const void *info,
			 uint32_t len)
{
	struct rndis_message *m;
	uint32_t body, req_id;
	uint8_t *sec;
	int idx, rc;

	if (len > NETVSC_CTRL_MAX)
		return NETVSC_EINVAL;
	switch (type) {
	case REMOTE_NDIS_INITIALIZE_MSG: body = sizeof(struct rndis_initialize_request); break;
	case REMOTE_NDIS_QUERY_MSG: body = sizeof(struct rndis_query_request) + len; break;
	case REMOTE_NDIS_SET_MSG: body = sizeof(struct rndis_set_request) + len; break;
	case REMOTE_NDIS_HALT_MSG: body = sizeof(struct rndis_halt_request); break;
	case REMOTE_NDIS_KEEPALIVE_MSG: body = sizeof(struct rndis_keepalive_request); break;
	default: return NETVSC_EINVAL;
	}
	if (RNDIS_HEADER_SIZE + body > nv->send_section_size)
		return NETVSC_EINVAL;
	idx = section_get(nv);
	if (idx < 0) {
		nv->st.tx_no_section++;
		return NETVSC_EBUSY;
	}
	req_id = ++nv->rndis_req_id;
	if (req_id == 0)
		req_id = nv->rndis_req_id = 1;
	sec = nv->send_buf + (size_t)idx * nv->send_section_size;
	memset(sec, 0, RNDIS_HEADER_SIZE + body);
	m = (struct rndis_message *)sec;
	m->ndis_msg_type = type;
	m->msg_len = RNDIS_HEADER_SIZE + body;
	switch (type) {
	case REMOTE_NDIS_INITIALIZE_MSG:
		m->msg.init_req.req_id = req_id;
		m->msg.init_req.major_ver = RNDIS_MAJOR_VERSION;
		m->msg.init_req.minor_ver = RNDIS_MINOR_VERSION;
		m->msg.init_req.max_xfer_size = 0x4000; /* as Linux */
		break;
	case REMOTE_NDIS_QUERY_MSG:
		m->msg.query_req.req_id = req_id;
		m->msg.query_req.oid = oid;
		m->msg.query_req.info_buflen = len;
		m->msg.query_req.info_buf_offset = sizeof(struct rndis_query_request);
		if (len)
			memcpy(sec + RNDIS_HEADER_SIZE + sizeof(struct rndis_query_request), info, len);
		break;
	case REMOTE_NDIS_SET_MSG:
		m->msg.set_req.req_id = req_id;
		m->msg.set_req.oid = oid;
		m->msg.set_req.info_buflen = len;
		m->msg.set_req.info_buf_offset = sizeof(struct rndis_set_request);
		if (len)
			memcpy(sec + RNDIS_HEADER_SIZE + sizeof(struct rndis_set_request), info, len);
		break;
	case REMOTE_NDIS_HALT_MSG:
		m->msg.halt_req.req_id = req_id;
		break;
	case REMOTE_NDIS_KEEPALIVE_MSG:
		m->msg.keep_alive_req.req_id = req_id;
		break;
	}
	if (type != REMOTE_NDIS_HALT_MSG) {
		nv->ctrl.req_id = req_id;
		nv->ctrl.done = 0;
		nv->ctrl.len = 0;
	}
	rc = send_section(nv, (uint32_t)idx, m->msg_len, NVSP_CONTROL_CHANNEL_TYPE);
	if (rc)
		return rc;
	nv->st.tx_ctrl++;
	rc = netvsc_flush(nv);
	return rc < 0 ? rc : (int)req_id;
}

/* A KEEPALIVE_CMPLT for a host keep-alive (req_id echoed). Best effort. */
static void keepalive_reply(struct netvsc *nv, uint32_t req_id)
{
	struct rndis_message *m;
	int idx = section_alloc(nv); /* no reaping: we are inside the delivery */

	if (idx < 0)
		return;
	m = (struct rndis_message *)(nv->send_buf + (size_t)idx * nv->send_section_size);
	m->ndis_msg_type = REMOTE_NDIS_KEEPALIVE_CMPLT;
	m->msg_len = RNDIS_MESSAGE_SIZE(struct rndis_keepalive_complete);
	m->msg.keep_alive_complete.req_id = req_id;
	m->msg.keep_alive_complete.status = RNDIS_STATUS_SUCCESS;
	if (send_section(nv, (uint32_t)idx, m->msg_len, NVSP_CONTROL_CHANNEL_TYPE) == 0)
		nv->st.tx_ctrl++;
}

int netvsc_query_result(struct netvsc *nv, void *out, uint32_t *len)
{
	const uint8_t *m = nv->ctrl.msg;
	uint32_t mlen = nv->ctrl.len, status, ilen, ioff, n;

	if (!nv->ctrl.done || mlen < RNDIS_MESSAGE_SIZE(struct rndis_query_complete) ||
	    ld32(m) != REMOTE_NDIS_QUERY_CMPLT)
		return NETVSC_EHOST;
	status = ld32(m + 12);
	ilen = ld32(m + 16);
	ioff = ld32(m + 20); /* from the start of rndis_query_complete (byte 8) */
	if (status != RNDIS_STATUS_SUCCESS) {
		nv->last_status = status;
		*len = 0;
		return NETVSC_EHOST;
	}
	if (ioff > mlen - RNDIS_HEADER_SIZE || ilen > mlen - RNDIS_HEADER_SIZE - ioff) {
		nv->last_status = RNDIS_STATUS_INVALID_DATA;
		return NETVSC_EHOST; /* the info buffer is not inside the message (or was cut) */
	}
	n = ilen < *len ? ilen : *len;
	memcpy(out, m + RNDIS_HEADER_SIZE + ioff, n);
	*len = ilen;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Receive ring */

static void on_completion(struct netvsc *nv, const struct hvr_pkt *pkt)
{
	struct nvsp_message msg;
	uint32_t n = pkt->payload_len < sizeof(msg) ? pkt->payload_len : sizeof(msg);
	uint64_t tid = pkt->trans_id;

	memset(&msg, 0, sizeof(msg));
	if (hvr_in_copy(&nv->rings.in, pkt, pkt->payload_off, &msg, n) != HVR_OK || n < 4) {
		nv->st.tx_bad_completions++;
		return;
	}
	if (msg.hdr.msg_type == NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE &&
	    (tid & ~0xffffull) == NETVSC_TID_TX) {
		uint32_t idx = (uint32_t)(tid & 0xffff);

		if (!section_in_use(nv, idx)) {
			nv->st.tx_bad_completions++;
			return;
		}
		section_free(nv, idx);
		nv->st.tx_completions++;
		if (msg.msg.v1_msg.send_rndis_pkt_complete.status != NVSP_STAT_SUCCESS)
			nv->st.tx_failed++;
		return;
	}
	if (!nv->nvsp.done && tid == nv->nvsp.trans_id && msg.hdr.msg_type == nv->nvsp.expect) {
		nv->nvsp.msg = msg;
		nv->nvsp.done = 1;
		return;
	}
	nv->st.tx_bad_completions++;
}

/* Queue a transfer-page packet: copy its ranges once, check them against the receive buffer.
 * Returns false if it must stay in the ring for now (no room in the queue). */
static bool can_queue(const struct netvsc *nv, const struct hvr_pkt *pkt)
{
	uint32_t want = pkt->range_count <= NETVSC_RX_RANGES ? pkt->range_count : 0;

	return nv->rxq_count < NETVSC_RXQ && nv->ranges_used + want <= NETVSC_RX_RANGES;
}

static void on_xfer(struct netvsc *nv, const struct hvr_pkt *pkt)
{
	struct netvsc_rx_entry *e = &nv->rxq[(nv->rxq_head + nv->rxq_count) % NETVSC_RXQ];
	struct nvsp_message msg;
	uint32_t n = pkt->payload_len < sizeof(msg) ? pkt->payload_len : sizeof(msg);
	uint32_t count = pkt->range_count;

	nv->st.rx_xfer++;
	e->trans_id = pkt->trans_id;
	e->first = (nv->ranges_head + nv->ranges_used) % NETVSC_RX_RANGES;
	e->count = 0;
	e->status = NVSP_STAT_SUCCESS;
	e->delivered = 0;
	memset(&msg, 0, sizeof(msg));
	if (pkt->xfer_pageset_id != NETVSC_RECEIVE_BUFFER_ID || !nv->recv_buf || n < 4 ||
	    hvr_in_copy(&nv->rings.in, pkt, pkt->payload_off, &msg, n) != HVR_OK ||
	    msg.hdr.msg_type != NVSP_MSG1_TYPE_SEND_RNDIS_PKT || count > NETVSC_RX_RANGES) {
		nv->st.rx_bad++;
		e->status = NVSP_STAT_FAIL; /* completed anyway, so the host gets its sections back */
		count = 0;
	}
	for (uint32_t i = 0; i < count; i++) {
		struct vmtransfer_page_range r;
		uint32_t slot = (e->first + i) % NETVSC_RX_RANGES;

		if (hvr_in_copy(&nv->rings.in, pkt, (uint32_t)sizeof(struct vmtransfer_page_packet_header) +
				i * (uint32_t)sizeof(r), &r, sizeof(r)) != HVR_OK ||
		    r.byte_offset > nv->recv_size || r.byte_count > nv->recv_size - r.byte_offset) {
			nv->st.rx_bad++;
			e->status = NVSP_STAT_FAIL;
			r.byte_count = 0; /* skipped at delivery */
			r.byte_offset = 0;
		}
		nv->rx_ranges[slot] = r;
	}
	e->count = count;
	nv->ranges_used += count;
	nv->rxq_count++;
}

/* Read what the ring holds: completions and host messages now, transfer-page packets into the
 * queue (as long as it has room); commit. Returns packets read or NETVSC_EBROKEN. */
static int drain(struct netvsc *nv)
{
	struct hvr_pkt pkt;
	int n = 0, rc;

	for (;;) {
		rc = hvr_in_peek(&nv->rings.in, &pkt);
		if (rc == HVR_EMPTY)
			break;
		if (rc < 0)
			return NETVSC_EBROKEN;
		if (pkt.type == VM_PKT_DATA_USING_XFER_PAGES && !can_queue(nv, &pkt)) {
			nv->st.rx_deferred++;
			break;
		}
		if (hvr_in_read(&nv->rings.in, &pkt) != HVR_OK)
			return NETVSC_EBROKEN;
		n++;
		nv->st.ring_packets++;
		switch (pkt.type) {
		case VM_PKT_COMP:
			on_completion(nv, &pkt);
			break;
		case VM_PKT_DATA_USING_XFER_PAGES:
			on_xfer(nv, &pkt);
			break;
		default: /* in-band NVSP from the host (indirection table, VF association, ...) */
			nv->st.inband_ignored++;
			break;
		}
	}
	if (n) {
		rc = hvr_in_commit(&nv->rings.in);
		if (rc < 0)
			return NETVSC_EBROKEN;
		if (rc == 1)
			vmbus_rings_kick(&nv->rings);
	}
	return n;
}

/* One RNDIS message at [off, off + len) of the receive buffer. */
static void rndis_message(struct netvsc *nv, uint32_t off, uint32_t len)
{
	const volatile uint8_t *m = nv->recv_buf + off;
	uint32_t type, mlen;

	nv->st.rx_ranges++;
	if (len < RNDIS_HEADER_SIZE)
		goto bad;
	type = ld32(m);
	mlen = ld32(m + 4);
	if (mlen < RNDIS_HEADER_SIZE || mlen > len)
		goto bad;
	switch (type) {
	case REMOTE_NDIS_PACKET_MSG: {
		uint32_t doff, dlen;

		if (mlen < NETVSC_RNDIS_PKT_HDR)
			goto bad;
		doff = ld32(m + 8);  /* from the start of rndis_packet */
		dlen = ld32(m + 12);
		if (doff > mlen - RNDIS_HEADER_SIZE || dlen > mlen - RNDIS_HEADER_SIZE - doff ||
		    dlen > NETVSC_FRAME_MAX)
			goto bad;
		if (!nv->rx) {
			nv->st.rx_no_handler++;
			return;
		}
		memcpy(nv->frame, (const void *)(m + RNDIS_HEADER_SIZE + doff), dlen);
		nv->st.rx_frames++;
		nv->st.rx_bytes += dlen;
		nv->rx(nv->rx_ctx, nv->frame, dlen);
		return;
	}
	case REMOTE_NDIS_INITIALIZE_CMPLT:
	case REMOTE_NDIS_QUERY_CMPLT:
	case REMOTE_NDIS_SET_CMPLT:
	case REMOTE_NDIS_RESET_CMPLT:
	case REMOTE_NDIS_KEEPALIVE_CMPLT: {
		uint32_t n = mlen < NETVSC_CTRL_MAX ? mlen : NETVSC_CTRL_MAX;

		if (mlen < RNDIS_HEADER_SIZE + 8)
			goto bad;
		nv->st.rx_ctrl++;
		if (nv->ctrl.done || ld32(m + 8) != nv->ctrl.req_id ||
		    type == REMOTE_NDIS_RESET_CMPLT) {
			nv->st.rx_ctrl_stray++;
			return;
		}
		memcpy(nv->ctrl.msg, (const void *)m, n);
		/* the copy is what we trust from now on: re-check its type and request id */
		if (ld32(nv->ctrl.msg) != type || ld32(nv->ctrl.msg + 8) != nv->ctrl.req_id) {
			nv->st.rx_ctrl_stray++;
			return;
		}
		nv->ctrl.len = n;
		nv->ctrl.done = 1;
		return;
	}
	case REMOTE_NDIS_INDICATE_STATUS_MSG: {
		uint32_t status;

		if (mlen < RNDIS_MESSAGE_SIZE(struct rndis_indicate_status))
			goto bad;
		nv->st.rx_indications++;
		status = ld32(m + 8);
		if (status == RNDIS_STATUS_MEDIA_CONNECT || status == RNDIS_STATUS_MEDIA_DISCONNECT) {
			uint32_t up = status == RNDIS_STATUS_MEDIA_CONNECT;

			if (up != nv->link_up)
				nv->st.link_changes++;
			nv->link_up = up;
		}
		return;
	}
	case REMOTE_NDIS_KEEPALIVE_MSG:
		if (mlen < RNDIS_MESSAGE_SIZE(struct rndis_keepalive_request))
			goto bad;
		nv->st.rx_keepalives++;
		keepalive_reply(nv, ld32(m + 8));
		return;
	default:
		nv->st.rx_unknown++;
		return;
	}
bad:
	nv->st.rx_bad++;
}

/* NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE for a transfer-page packet. */
static int rx_complete(struct netvsc *nv, uint64_t trans_id, uint32_t status)
{
	struct nvsp_message msg;
	struct hvr_iov iov = { &msg, sizeof(msg) };
	int rc;

	memset(&msg, 0, sizeof(msg));
	msg.hdr.msg_type = NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE;
	msg.msg.v1_msg.send_rndis_pkt_complete.status = status;
	rc = hvr_out_write(&nv->rings.out, VM_PKT_COMP, 0, trans_id, 0, &iov, 1);
	if (rc == HVR_OK) {
		nv->dirty++;
		nv->st.rx_completions++;
		return 0;
	}
	if (rc == HVR_FULL) {
		nv->st.rx_completion_full++;
		return NETVSC_EBUSY;
	}
	return NETVSC_EBROKEN;
}

/* Deliver queued transfer-page packets in order and complete them. */
static int deliver(struct netvsc *nv)
{
	int n = 0, rc = 0;

	if (nv->delivering)
		return 0;
	nv->delivering = 1;
	while (nv->rxq_count) {
		struct netvsc_rx_entry *e = &nv->rxq[nv->rxq_head];

		if (!e->delivered) {
			e->delivered = 1;
			for (uint32_t i = 0; i < e->count; i++) {
				struct vmtransfer_page_range r =
					nv->rx_ranges[(e->first + i) % NETVSC_RX_RANGES];

				if (r.byte_count)
					rndis_message(nv, r.byte_offset, r.byte_count);
			}
			n++;
		}
		rc = rx_complete(nv, e->trans_id, e->status);
		if (rc == NETVSC_EBUSY) {
			/* publish what we have so the host drains the ring; retried next poll */
			rc = netvsc_flush(nv) < 0 ? NETVSC_EBROKEN : 0;
			break;
		}
		if (rc < 0)
			break;
		nv->ranges_head = (nv->ranges_head + e->count) % NETVSC_RX_RANGES;
		nv->ranges_used -= e->count;
		nv->rxq_head = (nv->rxq_head + 1) % NETVSC_RXQ;
		nv->rxq_count--;
	}
	nv->delivering = 0;
	return rc < 0 ? rc : n;
}

int netvsc_poll(struct netvsc *nv)
{
	int total = 0, n;

	nv->st.polls++;
	do {
		n = drain(nv);
		if (n < 0)
			return n;
		total += n;
		n = deliver(nv);
		if (n < 0)
			return n;
		total += n;
	} while (n && nv->rxq_count == 0 && hvr_in_avail(&nv->rings.in) > 0);
	if (netvsc_flush(nv) < 0)
		return NETVSC_EBROKEN;
	return total;
}
