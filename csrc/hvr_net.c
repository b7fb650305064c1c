/*
 * hvr_net.c - the netvsc data plane (see hvr_net.h).
 */
#include "hvr_net.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define PAGE 4096u
#define BATCH 64

/* Section states */
#define SEC_FREE 0
#define SEC_BUSY 1 /* filled, part of a transaction, waiting for the guest's completion */
#define SEC_HEAD 2 /* the first section of a transaction: the one its trans_id names */

/* The transfer-page packets' trans_id: first section | generation << 32. */
#define TID(sec, gen) ((uint64_t)(sec) | ((uint64_t)(gen) << 32))

/* Ring bytes of a completion carrying nvsp_message_header + status. */
#define RNDIS_COMP_LEN 8u
/* Every answer to a control request fits this (the largest: an ndis_offload query answer). */
#define CONTROL_ANSWER_MAX 256u

/* ---- errors ------------------------------------------------------------------------------- */

static void record(struct hvr_net *n, uint32_t code, uint32_t a, uint32_t b, uint32_t c)
{
	uint32_t head = n->err_head;
	uint32_t tail = __atomic_load_n(&n->err_tail, __ATOMIC_ACQUIRE);
	uint64_t one = 1;

	n->stats.errors++;
	if (head - tail >= HVR_NET_NERR) {
		n->stats.errors_lost++;
		return;
	}
	n->errs[head % HVR_NET_NERR] = (struct hvr_net_error){code, a, b, c};
	__atomic_store_n(&n->err_head, head + 1, __ATOMIC_RELEASE);
	if (n->err_fd >= 0)
		(void)!write(n->err_fd, &one, sizeof(one));
}

/*
 * The guest revoked a buffer: from here on this thread never touches it, so the parent may
 * complete a GPADL teardown of it. The flag is published before the parent is woken (release:
 * whoever reads the flag set also sees every earlier access of ours done), and the parent reads
 * it after the eventfd (hvkvm/vsp/netvsc.py _check_revoked).
 */
static void buffer_revoked(struct hvr_net *n, uint32_t *flag)
{
	uint64_t one = 1;

	__atomic_store_n(flag, 1, __ATOMIC_RELEASE);
	if (n->err_fd >= 0)
		(void)!write(n->err_fd, &one, sizeof(one));
}

int hvr_net_pop_error(struct hvr_net *n, struct hvr_net_error *out)
{
	uint32_t tail = n->err_tail;

	if (tail == __atomic_load_n(&n->err_head, __ATOMIC_ACQUIRE))
		return 0;
	*out = n->errs[tail % HVR_NET_NERR];
	__atomic_store_n(&n->err_tail, tail + 1, __ATOMIC_RELEASE);
	return 1;
}

/* ---- setup -------------------------------------------------------------------------------- */

int hvr_net_init(struct hvr_net *n)
{
	uint32_t i;

	n->sec_free = NULL;
	n->sec_next = NULL;
	n->sec_gen = NULL;
	n->sec_state = NULL;
	n->scratch = NULL;
	n->iov = NULL;
	n->err_head = n->err_tail = 0;
	n->nfree = 0;
	memset(&n->stats, 0, sizeof(n->stats));
	if (!n->regions || !n->nregions || n->mtu < 68 || n->mtu > 65535 ||
	    (n->vnet_hdr != 0 && n->vnet_hdr != 10))
		return HVR_EINVAL;
	/* A section holds the largest frame plus one byte (so a longer frame the TAP truncates is
	 * seen as too long) and the largest control answer. */
	if (!n->recv_buf || !n->recv_section_count ||
	    n->recv_section_size <= HVR_NET_RX_HEADER + n->mtu + 18 ||
	    n->recv_section_size < CONTROL_ANSWER_MAX ||
	    (uint64_t)n->recv_section_size * n->recv_section_count > n->recv_buf_size)
		return HVR_EINVAL;
	if (n->send_buf && (!n->send_section_size || !n->send_section_count ||
			    n->send_section_size > HVR_NET_MAX_MSG ||
			    (uint64_t)n->send_section_size * n->send_section_count > n->send_buf_size))
		return HVR_EINVAL;
	if (n->rx_batch < 1 || n->rx_batch > HVR_NET_MAX_RX_BATCH ||
	    n->control_sections >= n->recv_section_count)
		return HVR_EINVAL;
	n->sec_free = calloc(n->recv_section_count, sizeof(uint32_t));
	n->sec_next = calloc(n->recv_section_count, sizeof(uint32_t));
	n->sec_gen = calloc(n->recv_section_count, sizeof(uint32_t));
	n->sec_state = calloc(n->recv_section_count, 1);
	n->scratch = malloc(HVR_NET_MAX_MSG);
	n->iov = calloc(HVR_NET_MAX_IOV + 2, sizeof(struct iovec));
	if (!n->sec_free || !n->sec_next || !n->sec_gen || !n->sec_state || !n->scratch || !n->iov)
		return -ENOMEM;
	/* Lowest sections first: the stack pops from the end. */
	for (i = 0; i < n->recv_section_count; i++)
		n->sec_free[i] = n->recv_section_count - 1 - i;
	n->nfree = n->recv_section_count;
	return 0;
}

void hvr_net_fini(struct hvr_net *n)
{
	free(n->sec_free);
	free(n->sec_next);
	free(n->sec_gen);
	free(n->sec_state);
	free(n->scratch);
	free(n->iov);
	n->sec_free = n->sec_next = n->sec_gen = NULL;
	n->sec_state = n->scratch = NULL;
	n->iov = NULL;
	n->nfree = 0;
}

/* ---- receive sections --------------------------------------------------------------------- */

static int rx_usable(const struct hvr_net *n)
{
	return n->recv_buf && !n->recv_revoked;
}

/* A free section, or HVR_NET_NO_SECTION; `control` may use the reserved ones. */
static uint32_t sec_alloc(struct hvr_net *n, int control)
{
	uint32_t s;

	if (n->nfree == 0 || (!control && n->nfree <= n->control_sections))
		return HVR_NET_NO_SECTION;
	s = n->sec_free[--n->nfree];
	n->sec_state[s] = SEC_BUSY;
	n->sec_next[s] = HVR_NET_NO_SECTION;
	return s;
}

static void sec_release(struct hvr_net *n, uint32_t s)
{
	if (n->sec_state[s] == SEC_FREE || n->nfree >= n->recv_section_count)
		return; /* never twice on the free stack */
	n->sec_state[s] = SEC_FREE;
	n->sec_gen[s]++;
	n->sec_free[n->nfree++] = s;
}

/* Free a chain of sections starting at `s` (one transaction). */
static void sec_release_chain(struct hvr_net *n, uint32_t s)
{
	uint32_t next, guard = 0;

	while (s < n->recv_section_count && n->sec_state[s] != SEC_FREE &&
	       guard++ < n->recv_section_count) {
		next = n->sec_next[s];
		sec_release(n, s);
		s = next;
	}
}

static uint8_t *sec_ptr(const struct hvr_net *n, uint32_t s)
{
	return n->recv_buf + (uint64_t)s * n->recv_section_size;
}

/* The guest completed the transfer-page packet `tid`. */
static void recv_completion(struct hvr_net *n, uint64_t tid)
{
	uint32_t s = (uint32_t)tid, gen = (uint32_t)(tid >> 32);

	if (!n->recv_buf || s >= n->recv_section_count || n->sec_state[s] != SEC_HEAD ||
	    n->sec_gen[s] != gen) {
		record(n, HVR_NET_ERR_RECV_COMPLETION, (uint32_t)tid, (uint32_t)(tid >> 32), 0);
		return;
	}
	n->stats.completions++;
	sec_release_chain(n, s);
}

/*
 * Send the RNDIS messages already written into sections secs[0..k) (lens[] bytes each) as one
 * transfer-page packet. The sections are chained into one transaction. Returns HVR_OK,
 * HVR_FULL (the sections are released again) or HVR_EBROKEN.
 */
static int send_xfer(struct hvr_plane *p, struct hvr_net *n, const uint32_t *secs,
		     const uint32_t *lens, uint32_t k, uint32_t channel_type)
{
	struct {
		uint16_t xfer_pageset_id;
		uint8_t sender_owns_set;
		uint8_t reserved;
		uint32_t range_cnt;
		struct vmtransfer_page_range ranges[HVR_NET_MAX_RX_BATCH];
	} hdr;
	struct nvsp_message msg;
	struct hvr_iov iov[2];
	uint32_t i;
	int rc;

	memset(&msg, 0, sizeof(msg));
	msg.hdr.msg_type = NVSP_MSG1_TYPE_SEND_RNDIS_PKT;
	msg.msg.v1_msg.send_rndis_pkt.channel_type = channel_type;
	msg.msg.v1_msg.send_rndis_pkt.send_buf_section_index = HVR_NET_NO_SECTION;
	msg.msg.v1_msg.send_rndis_pkt.send_buf_section_size = 0;
	hdr.xfer_pageset_id = n->recv_buf_id;
	hdr.sender_owns_set = 0;
	hdr.reserved = 0;
	hdr.range_cnt = k;
	for (i = 0; i < k; i++) {
		hdr.ranges[i].byte_count = lens[i];
		hdr.ranges[i].byte_offset = secs[i] * n->recv_section_size;
		n->sec_next[secs[i]] = i + 1 < k ? secs[i + 1] : HVR_NET_NO_SECTION;
	}
	n->sec_state[secs[0]] = SEC_HEAD;
	iov[0].base = &hdr;
	iov[0].len = 8 + 8 * k;
	iov[1].base = &msg;
	iov[1].len = sizeof(msg);
	rc = hvr_out_write(&p->out, VM_PKT_DATA_USING_XFER_PAGES,
			   VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
			   TID(secs[0], n->sec_gen[secs[0]]), 8 + 8 * k, iov, 2);
	if (rc != HVR_OK)
		sec_release_chain(n, secs[0]);
	return rc;
}

static uint32_t xfer_total(uint32_t k)
{
	return hvr_packet_total(8 + 8 * k, sizeof(struct nvsp_message));
}

/* Send one host-built RNDIS message (a control answer or an indication) to the guest. */
static int send_control(struct hvr_plane *p, struct hvr_net *n, const void *msg, uint32_t len)
{
	uint32_t s;
	int rc;

	if (!rx_usable(n)) {
		record(n, HVR_NET_ERR_NO_BUFFER, 1, 0, 0);
		return HVR_OK;
	}
	if (len > n->recv_section_size) { /* cannot happen: init checks the size */
		record(n, HVR_NET_ERR_NO_SECTION, 2, len, 0);
		return HVR_OK;
	}
	s = sec_alloc(n, 1);
	if (s == HVR_NET_NO_SECTION) {
		record(n, HVR_NET_ERR_NO_SECTION, 0, 0, 0);
		return HVR_OK;
	}
	memcpy(sec_ptr(n, s), msg, len);
	rc = send_xfer(p, n, &s, &len, 1, NVSP_CONTROL_CHANNEL_TYPE);
	if (rc == HVR_FULL)
		record(n, HVR_NET_ERR_NO_SECTION, 1, 0, 0); /* checked before; only a racing peer */
	return rc == HVR_FULL ? HVR_OK : rc;
}

/* ---- guest buffers ------------------------------------------------------------------------ */

/* Host address of [gpa, gpa + len) if all of it is guest RAM, else NULL. */
static uint8_t *translate(const struct hvr_net *n, uint64_t gpa, uint32_t len)
{
	uint32_t i;

	for (i = 0; i < n->nregions; i++) {
		const struct hvr_ram_region *r = &n->regions[i];

		if (gpa >= r->gpa && gpa - r->gpa < r->size && len <= r->size - (gpa - r->gpa))
			return r->host + (gpa - r->gpa);
	}
	return NULL;
}

/* The bytes of an RNDIS packet: pieces of host memory. */
struct msgbuf {
	struct iovec *iov;
	uint32_t cnt;
	uint32_t len;
};

static int mb_add(struct msgbuf *mb, uint8_t *base, uint32_t len)
{
	struct iovec *last = mb->cnt ? &mb->iov[mb->cnt - 1] : NULL;

	if (last && (uint8_t *)last->iov_base + last->iov_len == base) {
		last->iov_len += len;
	} else {
		if (mb->cnt >= HVR_NET_MAX_IOV)
			return -1;
		mb->iov[mb->cnt].iov_base = base;
		mb->iov[mb->cnt].iov_len = len;
		mb->cnt++;
	}
	mb->len += len;
	return 0;
}

/* Copy len bytes at off out of the pieces; -1 if not inside. */
static int mb_copy(const struct msgbuf *mb, uint32_t off, void *dst, uint32_t len)
{
	uint8_t *d = dst;
	uint32_t i;

	if (off > mb->len || len > mb->len - off)
		return -1;
	for (i = 0; i < mb->cnt && len; i++) {
		uint32_t l = (uint32_t)mb->iov[i].iov_len;

		if (off >= l) {
			off -= l;
			continue;
		}
		uint32_t take = l - off < len ? l - off : len;

		memcpy(d, (uint8_t *)mb->iov[i].iov_base + off, take);
		d += take;
		len -= take;
		off = 0;
	}
	return 0;
}

/* iovecs for [off, off + len) of the pieces into out (at most max); count or -1. */
static int mb_slice(const struct msgbuf *mb, uint32_t off, uint32_t len, struct iovec *out,
		    uint32_t max)
{
	uint32_t i, k = 0;

	if (off > mb->len || len > mb->len - off)
		return -1;
	for (i = 0; i < mb->cnt && len; i++) {
		uint32_t l = (uint32_t)mb->iov[i].iov_len;

		if (off >= l) {
			off -= l;
			continue;
		}
		uint32_t take = l - off < len ? l - off : len;

		if (k >= max)
			return -1;
		out[k].iov_base = (uint8_t *)mb->iov[i].iov_base + off;
		out[k].iov_len = take;
		k++;
		len -= take;
		off = 0;
	}
	return (int)k;
}

/* The GPA ranges of a GPA-direct packet as host pieces. 0, or -1 (recorded). */
static int gather_gpa(struct hvr_plane *p, struct hvr_net *n, const struct hvr_pkt *pkt,
		      struct msgbuf *mb)
{
	struct hvr_gpa_iter it = {0, 0};
	struct hvr_gpa_range r;
	uint32_t ranges = 0;
	int rc;

	while ((rc = hvr_in_gpa_range(&p->in, pkt, &it, &r)) == HVR_OK) {
		uint32_t left = r.byte_count, off = r.byte_offset, j;

		if (++ranges > HVR_NET_MAX_RANGES || r.byte_count > HVR_NET_MAX_MSG - mb->len)
			goto bad;
		for (j = 0; j < r.pfn_count && left; j++) {
			uint64_t pfn;
			uint32_t take = PAGE - off < left ? PAGE - off : left;
			uint8_t *h;

			if (hvr_in_copy(&p->in, pkt, r.pfn_off + 8 * j, &pfn, 8) != HVR_OK)
				goto bad;
			if (pfn >= (1ull << 52))
				goto bad;
			h = translate(n, pfn * PAGE + off, take);
			if (!h || mb_add(mb, h, take) != 0)
				goto bad;
			left -= take;
			off = 0;
		}
		if (left)
			goto bad;
	}
	if (rc == HVR_EMPTY && ranges)
		return 0;
	if (rc == HVR_EBROKEN)
		return HVR_EBROKEN;
bad:
	record(n, HVR_NET_ERR_GPA, ranges, mb->len, 0);
	return -1;
}

/* ---- RNDIS control ------------------------------------------------------------------------ */

static void put_u32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

/* The answer to one query: fills info (at most CONTROL_ANSWER_MAX - 24 bytes); returns the
 * status; *len its length. `req`/`req_len` is the request's info buffer (may be NULL). */
static uint32_t query_oid(struct hvr_net *n, uint32_t oid, const uint8_t *req, uint32_t req_len,
			  uint8_t *info, uint32_t *len)
{
	static const uint32_t supported[] = {
		RNDIS_OID_GEN_SUPPORTED_LIST, RNDIS_OID_GEN_HARDWARE_STATUS,
		RNDIS_OID_GEN_MEDIA_SUPPORTED, RNDIS_OID_GEN_MEDIA_IN_USE,
		RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE, RNDIS_OID_GEN_LINK_SPEED,
		RNDIS_OID_GEN_MAXIMUM_TOTAL_SIZE, RNDIS_OID_GEN_CURRENT_PACKET_FILTER,
		RNDIS_OID_GEN_MEDIA_CONNECT_STATUS, RNDIS_OID_GEN_MAXIMUM_SEND_PACKETS,
		RNDIS_OID_GEN_XMIT_OK, RNDIS_OID_GEN_RCV_OK, RNDIS_OID_802_3_PERMANENT_ADDRESS,
		RNDIS_OID_802_3_CURRENT_ADDRESS, RNDIS_OID_802_3_MAXIMUM_LIST_SIZE,
		OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES,
	};
	uint32_t v;

	*len = 4;
	switch (oid) {
	case RNDIS_OID_GEN_SUPPORTED_LIST:
		memcpy(info, supported, sizeof(supported));
		*len = sizeof(supported);
		return RNDIS_STATUS_SUCCESS;
	case RNDIS_OID_GEN_HARDWARE_STATUS:
	case RNDIS_OID_GEN_MEDIA_SUPPORTED:
	case RNDIS_OID_GEN_MEDIA_IN_USE:
		v = 0; /* NdisHardwareStatusReady; RNDIS_MEDIUM_802_3 */
		break;
	case RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE:
		v = n->mtu;
		break;
	case RNDIS_OID_GEN_MAXIMUM_TOTAL_SIZE:
		v = n->mtu + 14;
		break;
	case RNDIS_OID_GEN_LINK_SPEED:
		v = n->link_speed;
		break;
	case RNDIS_OID_GEN_CURRENT_PACKET_FILTER:
		v = n->packet_filter;
		break;
	case RNDIS_OID_GEN_MEDIA_CONNECT_STATUS:
		n->link_reported = n->link_up ? 1 : 0;
		v = n->link_reported ? NDIS_MEDIA_STATE_CONNECTED : NDIS_MEDIA_STATE_DISCONNECTED;
		break;
	case RNDIS_OID_GEN_MAXIMUM_SEND_PACKETS:
		v = RNDIS_MAX_PKT_DEFAULT;
		break;
	case RNDIS_OID_GEN_XMIT_OK:
		v = (uint32_t)n->stats.tx_frames;
		break;
	case RNDIS_OID_GEN_RCV_OK:
		v = (uint32_t)n->stats.rx_frames;
		break;
	case RNDIS_OID_802_3_MAXIMUM_LIST_SIZE:
		v = 32;
		break;
	case RNDIS_OID_802_3_PERMANENT_ADDRESS:
	case RNDIS_OID_802_3_CURRENT_ADDRESS:
		memcpy(info, n->mac, 6);
		*len = 6;
		return RNDIS_STATUS_SUCCESS;
	case OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES: {
		/* Nothing offloaded: an ndis_offload of zeros, at the revision/size the guest
		 * asked for (Linux sends its header in the request) or the one its NVSP implies. */
		struct ndis_offload caps;
		uint32_t size = n->nvsp_version >= NVSP_PROTOCOL_VERSION_5 ? NDIS_OFFLOAD_SIZE :
				n->nvsp_version >= NVSP_PROTOCOL_VERSION_4 ? NDIS_OFFLOAD_SIZE_6_1 :
				NDIS_OFFLOAD_SIZE_6_0;
		uint8_t rev = n->nvsp_version >= NVSP_PROTOCOL_VERSION_5 ?
			      NDIS_OFFLOAD_PARAMETERS_REVISION_3 :
			      n->nvsp_version >= NVSP_PROTOCOL_VERSION_4 ?
			      NDIS_OFFLOAD_PARAMETERS_REVISION_2 : NDIS_OFFLOAD_PARAMETERS_REVISION_1;

		if (req && req_len >= sizeof(struct ndis_object_header)) {
			struct ndis_object_header h;

			memcpy(&h, req, sizeof(h));
			if (h.type == NDIS_OBJECT_TYPE_OFFLOAD && h.revision >= 1 &&
			    h.revision <= NDIS_OFFLOAD_PARAMETERS_REVISION_3 &&
			    h.size >= NDIS_OFFLOAD_SIZE_6_0 && h.size <= NDIS_OFFLOAD_SIZE) {
				rev = h.revision;
				size = h.size;
			}
		}
		memset(&caps, 0, sizeof(caps));
		caps.header.type = NDIS_OBJECT_TYPE_OFFLOAD;
		caps.header.revision = rev;
		caps.header.size = (uint16_t)size;
		memcpy(info, &caps, size);
		*len = size;
		return RNDIS_STATUS_SUCCESS;
	}
	default:
		*len = 0;
		return RNDIS_STATUS_NOT_SUPPORTED;
	}
	put_u32(info, v);
	return RNDIS_STATUS_SUCCESS;
}

/* Is an ndis_offload_params request only asking for what we have (nothing offloaded)? */
static int offload_params_ok(const uint8_t *info, uint32_t len)
{
	struct ndis_offload_params o;

	if (len < sizeof(struct ndis_object_header))
		return 0;
	memset(&o, 0, sizeof(o));
	memcpy(&o, info, len < sizeof(o) ? len : sizeof(o));
	/* 0 = no change; 1 = disabled (TX_RX_DISABLED, LSOV2_DISABLED, RSC_DISABLED) */
	return o.ip_v4_csum <= 1 && o.tcp_ip_v4_csum <= 1 && o.udp_ip_v4_csum <= 1 &&
	       o.tcp_ip_v6_csum <= 1 && o.udp_ip_v6_csum <= 1 && o.lso_v1 <= 1 &&
	       o.ip_sec_v1 <= 1 && o.lso_v2_ipv4 <= 1 && o.lso_v2_ipv6 <= 1 &&
	       o.tcp_connection_ip_v4 <= 1 && o.tcp_connection_ip_v6 <= 1 &&
	       o.ip_sec_v2 <= 1 && o.ip_sec_v2_ip_v4 <= 1 && o.rsc_ip_v4 <= 1 &&
	       o.rsc_ip_v6 <= 1 && o.encapsulated_packet_task_offload <= 1;
}

static uint32_t set_oid(struct hvr_net *n, uint32_t oid, const uint8_t *info, uint32_t len)
{
	uint32_t v;

	switch (oid) {
	case RNDIS_OID_GEN_CURRENT_PACKET_FILTER:
		if (len < 4)
			return RNDIS_STATUS_INVALID_LENGTH;
		memcpy(&v, info, 4);
		n->packet_filter = v;
		return RNDIS_STATUS_SUCCESS;
	case RNDIS_OID_802_3_MULTICAST_LIST:
		return len % 6 ? RNDIS_STATUS_INVALID_LENGTH : RNDIS_STATUS_SUCCESS;
	case RNDIS_OID_GEN_CURRENT_LOOKAHEAD:
		return len < 4 ? RNDIS_STATUS_INVALID_LENGTH : RNDIS_STATUS_SUCCESS;
	case OID_TCP_OFFLOAD_PARAMETERS:
		return offload_params_ok(info, len) ? RNDIS_STATUS_SUCCESS :
						      RNDIS_STATUS_NOT_SUPPORTED;
	default:
		return RNDIS_STATUS_NOT_SUPPORTED;
	}
}

/*
 * Serve one RNDIS control message (msg_len bytes at off of mb, type already read). Writes the
 * answer (if any) to the guest. HVR_OK (also for malformed requests: recorded), HVR_EBROKEN.
 */
static int control(struct hvr_plane *p, struct hvr_net *n, const struct msgbuf *mb, uint32_t off,
		   uint32_t type, uint32_t msg_len, uint32_t *bad)
{
	uint8_t req[RNDIS_HEADER_SIZE + sizeof(union rndis_message_container)];
	uint8_t ans[CONTROL_ANSWER_MAX];
	struct rndis_message *m = (struct rndis_message *)ans;
	uint32_t body = msg_len - RNDIS_HEADER_SIZE, need, have;

	switch (type) {
	case RNDIS_MSG_INIT:
		need = sizeof(struct rndis_initialize_request);
		break;
	case RNDIS_MSG_QUERY:
		need = sizeof(struct rndis_query_request);
		break;
	case RNDIS_MSG_SET:
		need = sizeof(struct rndis_set_request);
		break;
	case RNDIS_MSG_KEEPALIVE:
		need = sizeof(struct rndis_keepalive_request);
		break;
	case RNDIS_MSG_HALT:
		need = sizeof(struct rndis_halt_request);
		break;
	case RNDIS_MSG_RESET:
		need = sizeof(struct rndis_reset_request);
		break;
	default:
		record(n, HVR_NET_ERR_RNDIS_TYPE, type, 0, 0);
		*bad = 1;
		return HVR_OK;
	}
	if (body < need) {
		record(n, HVR_NET_ERR_RNDIS_REQUEST, type, msg_len, 0);
		*bad = 1;
		return HVR_OK;
	}
	have = msg_len < sizeof(req) ? msg_len : sizeof(req);
	memset(req, 0, sizeof(req));
	if (mb_copy(mb, off, req, have) != 0)
		return HVR_OK; /* validated by the caller */
	n->stats.control++;
	memset(ans, 0, sizeof(ans));
	const union rndis_message_container *r =
		(const union rndis_message_container *)(req + RNDIS_HEADER_SIZE);

	switch (type) {
	case RNDIS_MSG_INIT:
		m->ndis_msg_type = RNDIS_MSG_INIT_C;
		m->msg_len = RNDIS_MESSAGE_SIZE(struct rndis_initialize_complete);
		m->msg.init_complete.req_id = r->init_req.req_id;
		m->msg.init_complete.status = RNDIS_STATUS_SUCCESS;
		m->msg.init_complete.major_ver = RNDIS_MAJOR_VERSION;
		m->msg.init_complete.minor_ver = RNDIS_MINOR_VERSION;
		m->msg.init_complete.dev_flags = RNDIS_DF_CONNECTIONLESS;
		m->msg.init_complete.medium = RNDIS_MEDIUM_802_3;
		m->msg.init_complete.max_pkt_per_msg = RNDIS_MAX_PKT_DEFAULT;
		m->msg.init_complete.max_xfer_size = n->send_buf ? n->send_section_size :
						     HVR_NET_MAX_MSG;
		m->msg.init_complete.pkt_alignment_factor = 3; /* RNDIS_PKT_ALIGN_DEFAULT = 1 << 3 */
		n->rndis_initialized = 1;
		n->packet_filter = 0;
		break;
	case RNDIS_MSG_QUERY: {
		uint32_t ioff = r->query_req.info_buf_offset, ilen = r->query_req.info_buflen;
		uint8_t in[CONTROL_ANSWER_MAX];
		const uint8_t *inp = NULL;
		uint32_t len = 0, status;

		/* An input buffer (offsets from the body) is optional; take it only if it fits. */
		if (ilen && ioff >= sizeof(struct rndis_query_request) && ioff <= body &&
		    ilen <= body - ioff) {
			uint32_t take = ilen < sizeof(in) ? ilen : sizeof(in);

			if (mb_copy(mb, off + RNDIS_HEADER_SIZE + ioff, in, take) == 0) {
				inp = in;
				ilen = take;
			}
		}
		status = query_oid(n, r->query_req.oid, inp, inp ? ilen : 0,
				   ans + RNDIS_HEADER_SIZE + sizeof(struct rndis_query_complete), &len);
		m->ndis_msg_type = RNDIS_MSG_QUERY_C;
		m->msg_len = RNDIS_MESSAGE_SIZE(struct rndis_query_complete) + len;
		m->msg.query_complete.req_id = r->query_req.req_id;
		m->msg.query_complete.status = status;
		m->msg.query_complete.info_buflen = len;
		m->msg.query_complete.info_buf_offset = sizeof(struct rndis_query_complete);
		break;
	}
	case RNDIS_MSG_SET: {
		uint32_t ioff = r->set_req.info_buf_offset, ilen = r->set_req.info_buflen;
		uint32_t status;
		uint8_t *info = n->scratch + HVR_NET_MAX_MSG - CONTROL_ANSWER_MAX;

		if (ioff < sizeof(struct rndis_set_request) || ioff > body || ilen > body - ioff ||
		    ilen > CONTROL_ANSWER_MAX) {
			status = RNDIS_STATUS_INVALID_DATA;
			record(n, HVR_NET_ERR_RNDIS_REQUEST, type, msg_len, ioff);
		} else if (mb_copy(mb, off + RNDIS_HEADER_SIZE + ioff, info, ilen) != 0) {
			status = RNDIS_STATUS_INVALID_DATA;
		} else {
			status = set_oid(n, r->set_req.oid, info, ilen);
		}
		m->ndis_msg_type = RNDIS_MSG_SET_C;
		m->msg_len = RNDIS_MESSAGE_SIZE(struct rndis_set_complete);
		m->msg.set_complete.req_id = r->set_req.req_id;
		m->msg.set_complete.status = status;
		break;
	}
	case RNDIS_MSG_KEEPALIVE:
		m->ndis_msg_type = RNDIS_MSG_KEEPALIVE_C;
		m->msg_len = RNDIS_MESSAGE_SIZE(struct rndis_keepalive_complete);
		m->msg.keep_alive_complete.req_id = r->keep_alive_req.req_id;
		m->msg.keep_alive_complete.status = RNDIS_STATUS_SUCCESS;
		break;
	case RNDIS_MSG_RESET:
		m->ndis_msg_type = RNDIS_MSG_RESET_C;
		m->msg_len = RNDIS_MESSAGE_SIZE(struct rndis_reset_complete);
		m->msg.reset_complete.status = RNDIS_STATUS_SUCCESS;
		m->msg.reset_complete.addressing_reset = 0;
		break;
	case RNDIS_MSG_HALT:
		n->rndis_initialized = 0;
		n->packet_filter = 0;
		return HVR_OK; /* no answer */
	}
	return send_control(p, n, ans, m->msg_len);
}

/* ---- guest -> TAP ------------------------------------------------------------------------- */

static int tx_frame(struct hvr_net *n, const struct msgbuf *mb, uint32_t off, uint32_t len)
{
	static const uint8_t zero_vnet[12];
	struct iovec v[HVR_NET_MAX_IOV + 1];
	int k = 0, c;
	ssize_t w;

	if (n->tap_fd < 0 || n->tap_dead || !n->rndis_initialized) {
		n->stats.tx_dropped++;
		return 0;
	}
	if (n->vnet_hdr) {
		v[0].iov_base = (void *)zero_vnet;
		v[0].iov_len = n->vnet_hdr;
		k = 1;
	}
	c = mb_slice(mb, off, len, v + k, HVR_NET_MAX_IOV);
	if (c < 0) {
		n->stats.tx_dropped++;
		return 0;
	}
	w = writev(n->tap_fd, v, k + c);
	if (w < 0) {
		n->stats.tx_dropped++;
		if (errno == EBADFD || errno == EBADF) /* the device is gone: say so once */
			n->tap_dead = 1;
		record(n, HVR_NET_ERR_TAP, (uint32_t)errno, 1, 0);
		return 0;
	}
	n->stats.tx_frames++;
	n->stats.tx_bytes += len;
	return 0;
}

/* One SEND_RNDIS_PKT: its RNDIS messages. Returns the NVSP completion status, or HVR_EBROKEN
 * as a negative value. */
static int serve_rndis(struct hvr_plane *p, struct hvr_net *n, const struct hvr_pkt *pkt,
		       const struct nvsp_1_message_send_rndis_packet *rp)
{
	struct msgbuf mb = {n->iov, 0, 0};
	uint32_t off, pass, controls = 0, bad = 0;
	int rc;

	n->stats.tx_packets++;
	/* The RNDIS bytes: the send-buffer section's, then the GPA ranges' (Linux's partial copy
	 * puts the last message's header in the section and its data in page buffers). */
	if (rp->send_buf_section_index != HVR_NET_NO_SECTION) {
		uint32_t idx = rp->send_buf_section_index, size = rp->send_buf_section_size;

		if (!n->send_buf || n->send_revoked) {
			record(n, HVR_NET_ERR_NO_BUFFER, 0, idx, size);
			return NVSP_STAT_FAIL;
		}
		if (idx >= n->send_section_count || size == 0 || size > n->send_section_size) {
			record(n, HVR_NET_ERR_SEND_SECTION, idx, size, 0);
			return NVSP_STAT_FAIL;
		}
		mb_add(&mb, n->send_buf + (uint64_t)idx * n->send_section_size, size);
	}
	if (pkt->type == VM_PKT_DATA_USING_GPA_DIRECT) {
		rc = gather_gpa(p, n, pkt, &mb);
		if (rc == HVR_EBROKEN)
			return HVR_EBROKEN;
		if (rc)
			return NVSP_STAT_FAIL;
	}
	if (!mb.len) {
		record(n, HVR_NET_ERR_NO_DATA, 0, 0, 0);
		return NVSP_STAT_FAIL;
	}

	/* Pass 0 checks the message chain and counts control messages (their answers need ring
	 * space, checked by the caller's reservation); pass 1 acts. Both re-read the header: it
	 * is the guest's memory. */
	for (pass = 0; pass < 2; pass++) {
		for (off = 0; off + RNDIS_HEADER_SIZE <= mb.len;) {
			uint32_t hdr[2];
			uint32_t left = mb.len - off;

			mb_copy(&mb, off, hdr, sizeof(hdr));
			if (hdr[1] < RNDIS_HEADER_SIZE || hdr[1] > left) {
				record(n, HVR_NET_ERR_RNDIS_LEN, hdr[1], left, 0);
				return NVSP_STAT_INVALID_RNDIS_PKT;
			}
			if (hdr[0] == RNDIS_MSG_PACKET) {
				struct rndis_packet rpkt;
				uint32_t body = hdr[1] - RNDIS_HEADER_SIZE;

				if (pass == 0)
					goto next;
				if (body < sizeof(rpkt)) {
					record(n, HVR_NET_ERR_RNDIS_PACKET, 0, 0, hdr[1]);
					bad = 1;
					goto next;
				}
				mb_copy(&mb, off + RNDIS_HEADER_SIZE, &rpkt, sizeof(rpkt));
				if (rpkt.data_offset < sizeof(rpkt) || rpkt.data_offset > body ||
				    rpkt.data_len > body - rpkt.data_offset || rpkt.data_len < 14 ||
				    rpkt.data_len > n->mtu + 18) {
					record(n, HVR_NET_ERR_RNDIS_PACKET, rpkt.data_offset,
					       rpkt.data_len, hdr[1]);
					bad = 1;
					goto next;
				}
				tx_frame(n, &mb, off + RNDIS_HEADER_SIZE + rpkt.data_offset,
					 rpkt.data_len);
			} else if (pass == 0) {
				if (++controls > HVR_NET_MAX_CONTROL) {
					record(n, HVR_NET_ERR_TOO_MANY, controls, 0, 0);
					return NVSP_STAT_INVALID_RNDIS_PKT;
				}
			} else {
				rc = control(p, n, &mb, off, hdr[0], hdr[1], &bad);
				if (rc < 0)
					return rc;
			}
next:
			off += hdr[1];
		}
		if (pass == 0 && off == 0) {
			record(n, HVR_NET_ERR_RNDIS_LEN, 0, mb.len, 0);
			return NVSP_STAT_INVALID_RNDIS_PKT;
		}
	}
	return bad ? NVSP_STAT_INVALID_RNDIS_PKT : NVSP_STAT_SUCCESS;
}

/* A completion for the guest's request trans_id carrying {type, status}. */
static int complete(struct hvr_plane *p, uint64_t trans_id, uint32_t type, uint32_t status)
{
	uint32_t c[2] = {type, status};

	return hvr_out_write_comp(&p->out, trans_id, c, sizeof(c));
}

int hvr_net_handler(struct hvr_plane *p, const struct hvr_pkt *pkt)
{
	struct hvr_net *n = p->ctx;
	struct nvsp_message msg;
	uint32_t len = pkt->payload_len, need;
	int status;

	if (pkt->type == VM_PKT_COMP) {
		recv_completion(n, pkt->trans_id);
		return HVR_OK;
	}
	if (pkt->type != VM_PKT_DATA_INBAND && pkt->type != VM_PKT_DATA_USING_GPA_DIRECT) {
		record(n, HVR_NET_ERR_PACKET_TYPE, pkt->type, 0, 0);
		return HVR_OK;
	}
	memset(&msg, 0, sizeof(msg));
	if (len < sizeof(msg.hdr)) {
		record(n, HVR_NET_ERR_SHORT_NVSP, len, 0, 0);
		return HVR_OK;
	}
	if (hvr_in_copy(&p->in, pkt, pkt->payload_off, &msg,
			len < sizeof(msg) ? len : sizeof(msg)) != HVR_OK)
		return HVR_EBROKEN;

	switch (msg.hdr.msg_type) {
	case NVSP_MSG1_TYPE_SEND_RNDIS_PKT:
		if (len < sizeof(msg.hdr) + sizeof(struct nvsp_1_message_send_rndis_packet)) {
			record(n, HVR_NET_ERR_SHORT_NVSP, len, msg.hdr.msg_type, 0);
			return HVR_OK;
		}
		/* Room for the completion and every control answer, before anything is done. */
		need = hvr_packet_total(0, RNDIS_COMP_LEN) + HVR_NET_MAX_CONTROL * xfer_total(1);
		if ((uint32_t)hvr_out_free(&p->out) < need) {
			p->need = need;
			return HVR_FULL;
		}
		status = serve_rndis(p, n, pkt, &msg.msg.v1_msg.send_rndis_pkt);
		if (status < 0)
			return status;
		if (pkt->flags & VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED)
			return complete(p, pkt->trans_id, NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE,
					(uint32_t)status);
		return HVR_OK;
	case NVSP_MSG1_TYPE_REVOKE_RECV_BUF:
		if (n->recv_buf && msg.msg.v1_msg.revoke_recv_buf.id == n->recv_buf_id)
			buffer_revoked(n, &n->recv_revoked);
		else
			record(n, HVR_NET_ERR_NVSP_TYPE, msg.hdr.msg_type, 0, 0);
		return HVR_OK;
	case NVSP_MSG1_TYPE_REVOKE_SEND_BUF:
		if (n->send_buf)
			buffer_revoked(n, &n->send_revoked);
		else
			record(n, HVR_NET_ERR_NVSP_TYPE, msg.hdr.msg_type, 0, 0);
		return HVR_OK;
	case NVSP_MSG1_TYPE_SEND_NDIS_VER:
	case NVSP_MSG2_TYPE_SEND_NDIS_CONFIG:
		return HVR_OK; /* informational; nothing changes once data flows */
	default:
		/* INIT, SEND_RECV_BUF, SEND_SEND_BUF (the handshake is over), and everything else:
		 * refused with a completion when one was asked for. */
		record(n, HVR_NET_ERR_NVSP_TYPE, msg.hdr.msg_type, 0, 0);
		if (!(pkt->flags & VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED))
			return HVR_OK;
		need = hvr_packet_total(0, sizeof(struct nvsp_message));
		if ((uint32_t)hvr_out_free(&p->out) < need) {
			p->need = need;
			return HVR_FULL;
		}
		{
			struct nvsp_message r;

			memset(&r, 0, sizeof(r));
			switch (msg.hdr.msg_type) {
			case NVSP_MSG_TYPE_INIT:
				r.hdr.msg_type = NVSP_MSG_TYPE_INIT_COMPLETE;
				r.msg.init_msg.init_complete.status = NVSP_STAT_FAIL;
				break;
			case NVSP_MSG1_TYPE_SEND_RECV_BUF:
				r.hdr.msg_type = NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE;
				r.msg.v1_msg.send_recv_buf_complete.status = NVSP_STAT_FAIL;
				break;
			case NVSP_MSG1_TYPE_SEND_SEND_BUF:
				r.hdr.msg_type = NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE;
				r.msg.v1_msg.send_send_buf_complete.status = NVSP_STAT_FAIL;
				break;
			case NVSP_MSG5_TYPE_SUBCHANNEL:
				r.hdr.msg_type = NVSP_MSG5_TYPE_SUBCHANNEL;
				r.msg.v5_msg.subchn_comp.status = NVSP_STAT_FAIL;
				break;
			default:
				r.hdr.msg_type = msg.hdr.msg_type;
				r.msg.v1_msg.send_rndis_pkt_complete.status = NVSP_STAT_FAIL;
				break;
			}
			return hvr_out_write_comp(&p->out, pkt->trans_id, &r, sizeof(r));
		}
	}
}

/* ---- TAP -> guest ------------------------------------------------------------------------- */

static int wanted(const struct hvr_net *n, const uint8_t *frame)
{
	uint32_t f = n->packet_filter;
	static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

	if (f & NDIS_PACKET_TYPE_PROMISCUOUS)
		return 1;
	if (!memcmp(frame, bcast, 6))
		return (f & NDIS_PACKET_TYPE_BROADCAST) != 0;
	if (frame[0] & 1)
		return (f & (NDIS_PACKET_TYPE_MULTICAST | NDIS_PACKET_TYPE_ALL_MULTICAST)) != 0;
	return (f & NDIS_PACKET_TYPE_DIRECTED) && !memcmp(frame, n->mac, 6);
}

/* A failed TAP read: transient (0), or the TAP is unusable from now on (recorded once). */
static void tap_read_failed(struct hvr_net *n, int err)
{
	if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
		return;
	n->tap_dead = 1;
	record(n, HVR_NET_ERR_TAP, (uint32_t)err, 0, 0);
}

/* Drop what the TAP holds (the guest cannot take frames now). */
static int rx_discard(struct hvr_net *n)
{
	int moved = 0;
	ssize_t r;

	while (moved < BATCH && (r = read(n->tap_fd, n->scratch, HVR_NET_MAX_MSG)) > 0) {
		n->stats.rx_dropped++;
		moved++;
	}
	if (moved < BATCH && r < 0)
		tap_read_failed(n, errno);
	return moved;
}

/* Move frames from the TAP into receive sections, one transfer-page packet per batch. Returns
 * the frames delivered or dropped, or a negative error. Sets n->rx_blocked when it must wait. */
static int rx_tap(struct hvr_plane *p, struct hvr_net *n)
{
	uint32_t secs[HVR_NET_MAX_RX_BATCH], lens[HVR_NET_MAX_RX_BATCH];
	uint32_t k = 0, room = n->recv_section_size - HVR_NET_RX_HEADER + n->vnet_hdr;
	uint32_t limit, s = HVR_NET_NO_SECTION;
	int moved = 0, rc, freeb;

	n->rx_blocked = 0;
	if (n->tap_fd < 0 || n->tap_dead)
		return 0;
	if (!rx_usable(n) || !n->rndis_initialized || !n->packet_filter)
		return rx_discard(n);
	freeb = hvr_out_free(&p->out);
	if (freeb < 0)
		return freeb;
	for (limit = n->rx_batch; limit && xfer_total(limit) > (uint32_t)freeb; limit--)
		;
	if (!limit) {
		rc = hvr_out_request_space(&p->out, xfer_total(1));
		if (rc < 0)
			return rc;
		if (rc == 0) {
			n->stats.rx_wait_ring++;
			n->rx_blocked = 2;
			return 0;
		}
		limit = 1;
	}
	while (k < limit && moved < BATCH) {
		uint8_t *sp;
		ssize_t r;

		if (s == HVR_NET_NO_SECTION) {
			s = sec_alloc(n, 0);
			if (s == HVR_NET_NO_SECTION) {
				n->stats.rx_wait_section++;
				n->rx_blocked = 1;
				break;
			}
		}
		sp = sec_ptr(n, s);
		r = read(n->tap_fd, sp + HVR_NET_RX_HEADER - n->vnet_hdr, room);
		if (r < 0) {
			tap_read_failed(n, errno);
			break;
		}
		moved++;
		if ((uint32_t)r < n->vnet_hdr + 14 || (uint32_t)r - n->vnet_hdr > n->mtu + 18 ||
		    !wanted(n, sp + HVR_NET_RX_HEADER)) {
			n->stats.rx_dropped++;
			continue; /* the section is reused for the next frame */
		}
		{
			struct rndis_message m;
			uint32_t flen = (uint32_t)r - n->vnet_hdr;

			memset(&m, 0, HVR_NET_RX_HEADER);
			m.ndis_msg_type = RNDIS_MSG_PACKET;
			m.msg_len = HVR_NET_RX_HEADER + flen;
			m.msg.pkt.data_offset = sizeof(struct rndis_packet);
			m.msg.pkt.data_len = flen;
			memcpy(sp, &m, HVR_NET_RX_HEADER);
			secs[k] = s;
			lens[k] = HVR_NET_RX_HEADER + flen;
			n->stats.rx_bytes += flen;
			k++;
			s = HVR_NET_NO_SECTION;
		}
	}
	if (s != HVR_NET_NO_SECTION)
		sec_release(n, s);
	if (k) {
		rc = send_xfer(p, n, secs, lens, k, NVSP_DATA_CHANNEL_TYPE);
		if (rc == HVR_OK) {
			n->stats.rx_frames += k;
			n->stats.rx_packets++;
		} else if (rc == HVR_FULL) { /* space was checked: a racing peer; frames lost */
			n->stats.rx_dropped += k;
		} else {
			return rc;
		}
	}
	return moved;
}

/* Tell the guest about a link change (once RNDIS is up). */
static int link_check(struct hvr_plane *p, struct hvr_net *n)
{
	struct rndis_message m;
	uint32_t up = __atomic_load_n(&n->link_up, __ATOMIC_ACQUIRE) ? 1 : 0;

	if (!n->rndis_initialized || up == n->link_reported || !rx_usable(n))
		return 0;
	if ((uint32_t)hvr_out_free(&p->out) < xfer_total(1) || n->nfree == 0)
		return 0; /* retried on the next pass */
	memset(&m, 0, sizeof(m));
	m.ndis_msg_type = RNDIS_MSG_INDICATE;
	m.msg_len = RNDIS_MESSAGE_SIZE(struct rndis_indicate_status);
	m.msg.indicate_status.status = up ? RNDIS_STATUS_MEDIA_CONNECT :
					    RNDIS_STATUS_MEDIA_DISCONNECT;
	n->link_reported = up;
	n->stats.indications++;
	return send_control(p, n, &m, m.msg_len) < 0 ? HVR_EBROKEN : 1;
}

/* ---- the thread --------------------------------------------------------------------------- */

static void *net_main(void *arg)
{
	struct hvr_plane *p = arg;
	struct hvr_net *n = p->ctx;
	uint64_t idle_since = hvr_plane_now_ns();
	struct pollfd fds[3];
	int g, t, l, rc, nfds;

	hvr_in_set_interrupt_mask(&p->in, 1);
	while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
		g = hvr_plane_serve(p);
		if (g < 0) {
			p->error = g;
			break;
		}
		l = link_check(p, n);
		if (l < 0) {
			p->error = l;
			break;
		}
		t = rx_tap(p, n);
		if (t < 0) {
			p->error = t;
			break;
		}
		rc = hvr_plane_commit(p);
		if (rc < 0) {
			p->error = rc;
			break;
		}
		if (g > 0 || t > 0 || l > 0) {
			p->stats.batches++;
			idle_since = hvr_plane_now_ns();
			continue;
		}
		if (hvr_plane_now_ns() - idle_since < (uint64_t)p->spin_us * 1000u) {
			__builtin_ia32_pause();
			continue;
		}
		rc = hvr_in_unmask(&p->in);
		if (rc < 0) {
			p->error = rc;
			break;
		}
		if (rc == 0) {
			fds[0].fd = p->kick_fd;
			fds[0].events = POLLIN;
			fds[1].fd = p->stop_fd;
			fds[1].events = POLLIN;
			nfds = 2;
			/* The TAP only when its frames can move now; else the guest's kick (a
			 * completion freeing sections, or ring space) wakes us. */
			if (n->tap_fd >= 0 && !n->tap_dead && !n->rx_blocked) {
				fds[2].fd = n->tap_fd;
				fds[2].events = POLLIN;
				nfds = 3;
			}
			p->stats.sleeps++;
			if (poll(fds, nfds, -1) < 0 && errno != EINTR) {
				p->error = -errno;
				break;
			}
			if (fds[0].revents & POLLIN) {
				hvr_plane_drain_eventfd(p->kick_fd);
				p->stats.kicks++;
			}
		}
		hvr_in_set_interrupt_mask(&p->in, 1);
		idle_since = hvr_plane_now_ns();
	}
	if (p->error == HVR_EBROKEN)
		p->broken = p->in.r.broken ? p->in.r.broken : p->out.r.broken;
	hvr_in_set_interrupt_mask(&p->in, 0);
	return NULL;
}

int hvr_net_start(struct hvr_plane *p)
{
	int rc;

	if (!p->ctx)
		return -EINVAL;
	rc = pthread_create(&p->thread, NULL, net_main, p);
	if (rc)
		return -rc;
	p->running = 1;
	return 0;
}
