/*
 * k_netvsc.c - the netvsc VSC's set-up and tear-down, ring 0 on vCPU 0: find the NIC offer, open
 * the channel, NVSP version negotiation, NDIS config and version, receive and send buffers as
 * GPADLs, RNDIS INITIALIZE and the OIDs, waits on the channel interrupt, ring-3 task runs that
 * sleep when idle, and the close. The order and the values are Linux's
 * (drivers/net/hyperv/netvsc.c netvsc_connect_vsp / netvsc_init_buf / netvsc_device_remove,
 * rndis_filter.c rndis_filter_device_add / rndis_filter_open); the ring I/O is u_netvsc.c.
 */
#include "netvsc.h"

static const guid_t nic_guid = HV_NIC_GUID;

/* The versions Linux 6.x offers, newest first (drivers/net/hyperv/netvsc.c ver_list). */
static const uint32_t nvsp_versions[] = {
	NVSP_PROTOCOL_VERSION_61, NVSP_PROTOCOL_VERSION_6, NVSP_PROTOCOL_VERSION_5,
	NVSP_PROTOCOL_VERSION_4, NVSP_PROTOCOL_VERSION_2, NVSP_PROTOCOL_VERSION_1,
};

void netvsc_kwait(struct netvsc *nv)
{
	struct vmbus_channel *ch = nv->ch;
	uint64_t seen = ch->events;
	int rc;

	/* Linux's hv_end_read(): unmask, then look again (what raced in raised no interrupt). */
	rc = hvr_in_unmask(&nv->rings.in);
	if (rc != 0)
		return; /* data waiting, or a broken ring the caller's poll will report */
	nv->st.kernel_waits++;
	while (ch->events == seen)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
}

/* Poll, sleep, poll ... until *flag is set. */
static int kwait_flag(struct netvsc *nv, volatile uint32_t *flag)
{
	while (!*flag) {
		int rc = netvsc_poll(nv);

		if (rc < 0)
			return rc;
		if (!*flag && rc == 0)
			netvsc_kwait(nv);
	}
	return 0;
}

/* Send an NVSP request and wait for its completion (of type `expect`) in nv->nvsp.msg. */
static int nvsp_request(struct netvsc *nv, const struct nvsp_message *msg, uint32_t len,
			uint32_t expect)
{
	int rc = netvsc_send_nvsp(nv, msg, len, true, expect);

	return rc ? rc : kwait_flag(nv, &nv->nvsp.done);
}

static int rndis_wait(struct netvsc *nv, uint32_t type, uint32_t oid, const void *info,
		      uint32_t len)
{
	int rc = netvsc_rndis_request(nv, type, oid, info, len);

	if (rc < 0)
		return rc;
	return kwait_flag(nv, &nv->ctrl.done);
}

int netvsc_kquery(struct netvsc *nv, uint32_t oid, void *out, uint32_t *len)
{
	int rc = rndis_wait(nv, REMOTE_NDIS_QUERY_MSG, oid, NULL, 0);

	return rc ? rc : netvsc_query_result(nv, out, len);
}

int netvsc_kset(struct netvsc *nv, uint32_t oid, const void *val, uint32_t len)
{
	const uint8_t *m = nv->ctrl.msg;
	uint32_t status;
	int rc = rndis_wait(nv, REMOTE_NDIS_SET_MSG, oid, val, len);

	if (rc)
		return rc;
	if (nv->ctrl.len < RNDIS_MESSAGE_SIZE(struct rndis_set_complete) ||
	    *(const uint32_t *)m != REMOTE_NDIS_SET_CMPLT)
		return NETVSC_EHOST;
	status = ((const struct rndis_message *)m)->msg.set_complete.status;
	if (status != RNDIS_STATUS_SUCCESS) {
		nv->last_status = status;
		return NETVSC_EHOST;
	}
	return 0;
}

int netvsc_kwait_link(struct netvsc *nv)
{
	return kwait_flag(nv, &nv->link_up);
}

/* NVSP_MSG_TYPE_INIT with min = max = ver; then, for NVSP >= 2, NDIS_CONFIG (Linux's
 * negotiate_nvsp_ver). 1 = accepted, 0 = refused, < 0 error. */
static int negotiate(struct netvsc *nv, uint32_t ver, uint32_t mtu)
{
	struct nvsp_message m;
	int rc;

	memset(&m, 0, sizeof(m));
	m.hdr.msg_type = NVSP_MSG_TYPE_INIT;
	m.msg.init_msg.init.min_protocol_ver = ver;
	m.msg.init_msg.init.max_protocol_ver = ver;
	rc = nvsp_request(nv, &m, sizeof(m), NVSP_MSG_TYPE_INIT_COMPLETE);
	if (rc)
		return rc;
	if (nv->nvsp.msg.msg.init_msg.init_complete.status != NVSP_STAT_SUCCESS) {
		nv->last_status = nv->nvsp.msg.msg.init_msg.init_complete.status;
		return 0;
	}
	if (ver == NVSP_PROTOCOL_VERSION_1)
		return 1;
	memset(&m, 0, sizeof(m));
	m.hdr.msg_type = NVSP_MSG2_TYPE_SEND_NDIS_CONFIG;
	m.msg.v2_msg.send_ndis_config.mtu = mtu + NET_ETH_HLEN;
	m.msg.v2_msg.send_ndis_config.capability.ieee8021q = 1;
	/* No sriov, teaming or rsc: this VSC has no VF path and takes one frame per range. */
	rc = netvsc_send_nvsp(nv, &m, sizeof(m), false, 0);
	return rc ? rc : 1;
}

static int give_buffers(struct netvsc *nv, const struct netvsc_config *cfg)
{
	struct nvsp_message m;
	const struct nvsp_1_message_send_receive_buffer_complete *rc_msg;
	const struct nvsp_1_message_send_send_buffer_complete *sc_msg;
	uint32_t sub, cnt, ssize;
	int rc;

	/* Receive buffer (netvsc_init_buf): GPADL, SEND_RECV_BUF id 0xcafe, one section back. */
	rc = vmbus_gpadl_create(nv->ch, cfg->recv_buf, cfg->recv_size, &nv->recv_gpadl);
	if (rc)
		return rc;
	nv->recv_buf = cfg->recv_buf;
	nv->recv_size = cfg->recv_size;
	memset(&m, 0, sizeof(m));
	m.hdr.msg_type = NVSP_MSG1_TYPE_SEND_RECV_BUF;
	m.msg.v1_msg.send_recv_buf.gpadl_handle = nv->recv_gpadl;
	m.msg.v1_msg.send_recv_buf.id = NETVSC_RECEIVE_BUFFER_ID;
	rc = nvsp_request(nv, &m, sizeof(m), NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE);
	if (rc)
		return rc;
	rc_msg = &nv->nvsp.msg.msg.v1_msg.send_recv_buf_complete;
	if (rc_msg->status != NVSP_STAT_SUCCESS) {
		nv->last_status = rc_msg->status;
		return NETVSC_EHOST;
	}
	sub = rc_msg->sections[0].sub_alloc_size;
	cnt = rc_msg->sections[0].num_sub_allocs;
	/* Linux: exactly one section at offset 0 whose sub-allocations fit the buffer. */
	if (rc_msg->num_sections != 1 || rc_msg->sections[0].offset != 0 || sub == 0 || cnt == 0 ||
	    (uint64_t)sub * cnt > cfg->recv_size) {
		nv->last_status = NVSP_STAT_FAIL;
		return NETVSC_EHOST;
	}
	nv->recv_section_size = sub;
	nv->recv_section_count = cnt;

	/* Send buffer: GPADL, SEND_SEND_BUF id 0; the host picks the section size. */
	rc = vmbus_gpadl_create(nv->ch, cfg->send_buf, cfg->send_size, &nv->send_gpadl);
	if (rc)
		return rc;
	memset(&m, 0, sizeof(m));
	m.hdr.msg_type = NVSP_MSG1_TYPE_SEND_SEND_BUF;
	m.msg.v1_msg.send_send_buf.gpadl_handle = nv->send_gpadl;
	m.msg.v1_msg.send_send_buf.id = NETVSC_SEND_BUFFER_ID;
	rc = nvsp_request(nv, &m, sizeof(m), NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE);
	if (rc)
		return rc;
	sc_msg = &nv->nvsp.msg.msg.v1_msg.send_send_buf_complete;
	if (sc_msg->status != NVSP_STAT_SUCCESS) {
		nv->last_status = sc_msg->status;
		return NETVSC_EHOST;
	}
	ssize = sc_msg->section_size;
	if (ssize < 256 || ssize > cfg->send_size) {
		nv->last_status = NVSP_STAT_FAIL;
		return NETVSC_EHOST;
	}
	nv->send_buf = cfg->send_buf;
	nv->send_size = cfg->send_size;
	nv->send_section_size = ssize;
	nv->send_section_count = cfg->send_size / ssize;
	if (nv->send_section_count > NETVSC_MAX_SEND_SECTIONS)
		nv->send_section_count = NETVSC_MAX_SEND_SECTIONS;
	nv->send_free = nv->send_section_count;
	return 0;
}

static int rndis_setup(struct netvsc *nv, const struct netvsc_config *cfg)
{
	const struct rndis_message *m = (const struct rndis_message *)nv->ctrl.msg;
	uint32_t val, len, filter;
	int rc;

	/* rndis_filter_init_device */
	rc = rndis_wait(nv, REMOTE_NDIS_INITIALIZE_MSG, 0, NULL, 0);
	if (rc)
		return rc;
	if (nv->ctrl.len < RNDIS_MESSAGE_SIZE(struct rndis_initialize_complete) ||
	    m->ndis_msg_type != REMOTE_NDIS_INITIALIZE_CMPLT)
		return NETVSC_EHOST;
	if (m->msg.init_complete.status != RNDIS_STATUS_SUCCESS) {
		nv->last_status = m->msg.init_complete.status;
		return NETVSC_EHOST;
	}
	nv->rndis_max_pkts = m->msg.init_complete.max_pkt_per_msg;

	/* rndis_filter_query_device_mac */
	len = NET_ETH_ALEN;
	rc = netvsc_kquery(nv, RNDIS_OID_802_3_PERMANENT_ADDRESS, nv->mac, &len);
	if (rc)
		return rc;
	if (len != NET_ETH_ALEN)
		return NETVSC_EHOST;

	/* the largest frame the host takes (optional: a refusal leaves 0) */
	len = sizeof(val);
	val = 0;
	if (netvsc_kquery(nv, RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE, &val, &len) == 0 && len == 4)
		nv->max_frame = val;

	/* rndis_filter_query_device_link_status */
	len = sizeof(val);
	rc = netvsc_kquery(nv, RNDIS_OID_GEN_MEDIA_CONNECT_STATUS, &val, &len);
	if (rc)
		return rc;
	nv->link_up = len == 4 && val == NDIS_MEDIA_STATE_CONNECTED;

	/* rndis_filter_open: the packet filter */
	filter = cfg->packet_filter ? cfg->packet_filter
				    : NDIS_PACKET_TYPE_DIRECTED | NDIS_PACKET_TYPE_BROADCAST;
	return netvsc_kset(nv, RNDIS_OID_GEN_CURRENT_PACKET_FILTER, &filter, sizeof(filter));
}

int netvsc_open(struct netvsc *nv, const struct netvsc_config *cfg)
{
	struct vmbus_channel *ch;
	uint32_t mtu = cfg->mtu ? cfg->mtu : NET_MTU;
	uint32_t max = cfg->nvsp_max ? cfg->nvsp_max : NVSP_PROTOCOL_VERSION_61;
	struct nvsp_message m;
	int rc = 0;

	if (!cfg->ring_area || !cfg->ring_pages || !cfg->recv_buf || !cfg->send_buf ||
	    ((uintptr_t)cfg->ring_area | (uintptr_t)cfg->recv_buf | (uintptr_t)cfg->send_buf |
	     cfg->recv_size | cfg->send_size) & (HVR_PAGE_SIZE - 1) ||
	    !cfg->recv_size || !cfg->send_size)
		return NETVSC_EINVAL;
	memset(nv, 0, sizeof(*nv));
	if (!vmbus_conn.version) {
		rc = vmbus_init(VMBUS_VECTOR_DEFAULT);
		if (rc)
			return rc;
	}
	ch = vmbus_find_channel(&nic_guid, cfg->instance);
	if (!ch)
		return NETVSC_ENODEV;
	rc = vmbus_channel_open(ch, cfg->ring_area, cfg->ring_pages + 1, cfg->ring_pages + 1);
	if (rc)
		return rc;
	rc = vmbus_channel_to_user(ch, &nv->rings);
	if (rc)
		return rc;
	nv->ch = ch;
	nv->tsc_hz = hv_hyperv.tsc_hz;
	if (!nv->tsc_hz) {
		/* calibrate against the LAPIC-timer clock */
		uint32_t lo, hi;
		uint64_t t0;

		__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
		t0 = ((uint64_t)hi << 32) | lo;
		hv_udelay(10000);
		__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
		nv->tsc_hz = ((((uint64_t)hi << 32) | lo) - t0) * 100;
	}

	/* netvsc_connect_vsp: newest version first, one per INIT. */
	rc = 0;
	for (unsigned i = 0; i < HV_ARRAY_SIZE(nvsp_versions); i++) {
		if (nvsp_versions[i] > max)
			continue;
		rc = negotiate(nv, nvsp_versions[i], mtu);
		if (rc < 0)
			return rc;
		if (rc == 1) {
			nv->nvsp_version = nvsp_versions[i];
			break;
		}
	}
	if (!nv->nvsp_version)
		return NETVSC_EVERSION;

	/* NDIS version: 6.1 up to NVSP 4, 6.30 above (no completion). */
	nv->ndis_version = nv->nvsp_version <= NVSP_PROTOCOL_VERSION_4 ? NDIS_VERSION_6_1
								       : NDIS_VERSION_6_30;
	memset(&m, 0, sizeof(m));
	m.hdr.msg_type = NVSP_MSG1_TYPE_SEND_NDIS_VER;
	m.msg.v1_msg.send_ndis_ver.ndis_major_ver = nv->ndis_version >> 16;
	m.msg.v1_msg.send_ndis_ver.ndis_minor_ver = nv->ndis_version & 0xffff;
	rc = netvsc_send_nvsp(nv, &m, sizeof(m), false, 0);
	if (rc)
		return rc;

	rc = give_buffers(nv, cfg);
	if (rc)
		return rc;
	rc = rndis_setup(nv, cfg);
	if (rc)
		return rc;
	nv->up = 1;
	return 0;
}

int netvsc_run_user(struct netvsc *nv, int (*fn)(void *), void *arg)
{
	for (;;) {
		int rc = hv_run_user(fn, arg);

		if (rc != NETVSC_IDLE)
			return rc;
		netvsc_kwait(nv);
	}
}

int netvsc_run_kernel(struct netvsc *nv, int (*fn)(void *), void *arg)
{
	for (;;) {
		int rc = fn(arg);

		if (rc != NETVSC_IDLE)
			return rc;
		netvsc_kwait(nv);
	}
}

static int revoke(struct netvsc *nv, uint32_t type, uint16_t id)
{
	struct nvsp_message m;

	memset(&m, 0, sizeof(m));
	m.hdr.msg_type = type;
	if (type == NVSP_MSG1_TYPE_REVOKE_RECV_BUF)
		m.msg.v1_msg.revoke_recv_buf.id = id;
	else
		m.msg.v1_msg.revoke_send_buf.id = id;
	return netvsc_send_nvsp(nv, &m, sizeof(m), false, 0);
}

int netvsc_close(struct netvsc *nv)
{
	struct vmbus_channel *ch = nv->ch;
	int rc, first = 0;

	if (!ch)
		return NETVSC_EINVAL;
	if (nv->up) {
		/* rndis_filter_halt_device: HALT, then let our sends complete (bounded). */
		netvsc_rndis_request(nv, REMOTE_NDIS_HALT_MSG, 0, NULL, 0);
		for (unsigned i = 0; i < 1000 && nv->send_free < nv->send_section_count; i++) {
			if (netvsc_poll(nv) <= 0 && nv->send_free < nv->send_section_count)
				hv_udelay(1000);
		}
		nv->up = 0;
	}
	/* netvsc_device_remove: revoke both buffers, close, then (VMBus >= 4.0) the GPADLs. */
	if (nv->recv_gpadl)
		revoke(nv, NVSP_MSG1_TYPE_REVOKE_RECV_BUF, NETVSC_RECEIVE_BUFFER_ID);
	if (nv->send_gpadl)
		revoke(nv, NVSP_MSG1_TYPE_REVOKE_SEND_BUF, NETVSC_SEND_BUFFER_ID);
	netvsc_flush(nv);
	rc = vmbus_channel_from_user(ch, &nv->rings);
	if (rc)
		return rc;
	rc = vmbus_channel_close(ch);
	if (rc)
		first = rc;
	if (nv->recv_gpadl) {
		rc = vmbus_gpadl_teardown(ch, nv->recv_gpadl);
		if (rc && !first)
			first = rc;
		nv->recv_gpadl = 0;
	}
	if (nv->send_gpadl) {
		rc = vmbus_gpadl_teardown(ch, nv->send_gpadl);
		if (rc && !first)
			first = rc;
		nv->send_gpadl = 0;
	}
	nv->ch = NULL;
	return first;
}
