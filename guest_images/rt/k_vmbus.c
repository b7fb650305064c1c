/*
 * k_vmbus.c - SynIC set-up, the VMBus interrupt handler, and the VMBus client's control path:
 * version negotiation, offers, GPADLs, open/close, kernel-side ring I/O. Kernel-only (ring 0),
 * vCPU 0. See include/vmbus.h.
 *
 * Messages: the SINT2 handler copies each message out of the SIMP slot into a small queue
 * (offers and rescinds are recorded at once), frees the slot (message_type = 0, full barrier)
 * and writes EOM when msg_pending was set, so the parent can deliver the next one. Waiters take
 * the message they expect from the queue and `sti; hlt` while it is not there.
 */
#include "vmbus.h"

struct vmbus_connection_info vmbus_conn;
uint32_t vmbus_last_host_status;

static struct hv_message_page simp_page __attribute__((aligned(HVR_PAGE_SIZE)));
static union hv_synic_event_flags siefp_page[HV_SYNIC_SINT_COUNT]
	__attribute__((aligned(HVR_PAGE_SIZE)));
/* Handed over in INITIATE_CONTACT as Linux does (interrupt page for < 5.0, monitor pages);
 * hvkvm uses dedicated interrupts and no monitor, so they stay zero. */
static uint8_t int_page[HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));
static uint8_t monitor_pages[2][HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));

_Static_assert(sizeof(simp_page) == HVR_PAGE_SIZE, "SIMP is one page");
_Static_assert(sizeof(siefp_page) == HVR_PAGE_SIZE, "SIEFP is one page");

static struct vmbus_channel channels[VMBUS_MAX_CHANNELS];
static uint32_t max_relid; /* highest relid offered: bounds the event-flag scan */
static uint32_t next_gpadl = 0xe1e10; /* Linux's first GPADL handle */

#define MSGQ_LEN 16
struct queued_msg {
	uint32_t size; /* payload bytes */
	uint32_t reserved;
	union {
		struct vmbus_channel_message_header hdr;
		uint8_t bytes[HV_MESSAGE_PAYLOAD_BYTE_COUNT];
	} u;
};
static struct queued_msg msgq[MSGQ_LEN];
static unsigned msgq_head, msgq_count;

struct hv_message_page *hv_synic_simp(void) { return &simp_page; }
union hv_synic_event_flags *hv_synic_event_flags(unsigned sint) { return &siefp_page[sint & 15]; }

/* ------------------------------------------------------------------------------------------ */
/* Offers (recorded in interrupt context). */

static void record_offer(const struct queued_msg *m)
{
	const struct vmbus_channel_offer_channel *o = (const void *)m->u.bytes;
	struct vmbus_channel *ch = NULL;

	if (m->size < sizeof(*o) || o->child_relid == 0 || o->child_relid > VMBUS_MAX_RELID) {
		vmbus_conn.dropped++;
		return;
	}
	for (unsigned i = 0; i < VMBUS_MAX_CHANNELS; i++) {
		if (channels[i].state != VMBUS_CH_FREE && channels[i].relid == o->child_relid) {
			if (channels[i].state != VMBUS_CH_OFFERED)
				return; /* a duplicate offer for an open channel: ignore it */
			ch = &channels[i];
			break;
		}
		if (!ch && channels[i].state == VMBUS_CH_FREE)
			ch = &channels[i];
	}
	if (!ch) {
		vmbus_conn.dropped++;
		return;
	}
	memset(ch, 0, sizeof(*ch));
	memcpy(&ch->offer, o, sizeof(*o));
	ch->relid = o->child_relid;
	/* Dedicated interrupts (all hosts since WIN8): signal the offer's connection id; Linux
	 * uses VMBUS_EVENT_CONNECTION_ID otherwise. */
	ch->connection_id = o->is_dedicated_interrupt ? o->connection_id : VMBUS_EVENT_CONNECTION_ID;
	ch->rings.connection_id = ch->connection_id;
	ch->rings.relid = ch->relid;
	ch->state = VMBUS_CH_OFFERED;
	if (ch->relid > max_relid)
		max_relid = ch->relid;
	vmbus_conn.offers++;
}

static void record_rescind(const struct queued_msg *m)
{
	const struct vmbus_channel_rescind_offer *r = (const void *)m->u.bytes;
	struct vmbus_channel *ch;

	if (m->size < sizeof(*r))
		return;
	ch = vmbus_channel_by_relid(r->child_relid);
	if (ch)
		ch->rescinded = 1;
}

struct vmbus_channel *vmbus_channel_by_relid(uint32_t relid)
{
	for (unsigned i = 0; i < VMBUS_MAX_CHANNELS; i++)
		if (channels[i].state != VMBUS_CH_FREE && channels[i].relid == relid)
			return &channels[i];
	return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Messages. */

/* Move messages from the SINT2 slot into the queue while there is room. IF=0 or in the ISR. */
static void take_messages(void)
{
	volatile struct hv_message *slot = &simp_page.sint_message[VMBUS_MESSAGE_SINT];

	while (slot->header.message_type != HVMSG_NONE) {
		struct queued_msg *q;
		uint32_t size, type;

		if (msgq_count == MSGQ_LEN)
			return; /* leave it in the slot: the parent queues behind it with msg_pending */
		__atomic_thread_fence(__ATOMIC_ACQUIRE); /* payload after type (parent writes it last) */
		q = &msgq[(msgq_head + msgq_count) % MSGQ_LEN];
		size = slot->header.payload_size;
		if (size > HV_MESSAGE_PAYLOAD_BYTE_COUNT)
			size = HV_MESSAGE_PAYLOAD_BYTE_COUNT;
		memset(q->u.bytes, 0, sizeof(q->u.bytes));
		memcpy(q->u.bytes, (const void *)slot->u.payload, size);
		q->size = size;
		vmbus_conn.messages++;

		/* Free the slot, full barrier, then EOM if the parent has more (vmbus_signal_eom). */
		slot->header.message_type = HVMSG_NONE;
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (slot->header.message_flags.msg_pending) {
			vmbus_conn.eoms++;
			hv_wrmsr(HV_X64_MSR_EOM, 0);
		}

		type = size >= sizeof(q->u.hdr) ? q->u.hdr.msgtype : CHANNELMSG_INVALID;
		if (type == CHANNELMSG_OFFERCHANNEL)
			record_offer(q);
		else if (type == CHANNELMSG_RESCIND_CHANNELOFFER)
			record_rescind(q);
		else if (type == CHANNELMSG_ALLOFFERS_DELIVERED)
			vmbus_conn.all_offers_delivered = 1;
		else
			msgq_count++; /* keep it for a waiter */
	}
}

/* Sleep until an interrupt (IF=0 on entry and on return). */
static inline void wait_irq(void)
{
	__asm__ volatile("sti; hlt; cli" ::: "memory");
}

/* Let pending interrupts in (the one instruction after sti is still shadowed). */
static inline void take_interrupts(void)
{
	__asm__ volatile("sti; nop; cli" ::: "memory");
}

typedef bool (*msg_match_t)(const struct queued_msg *m, const void *ctx);

/* Take the first queued message of `type` that `match` accepts (NULL: any) into out (up to
 * out_size bytes, zero-filled beyond the message). Waits with `sti; hlt`. Unexpected messages
 * stay queued; when the queue is full of them the oldest is dropped. */
static void wait_message(uint32_t type, msg_match_t match, const void *ctx, void *out,
			 uint32_t out_size)
{
	for (;;) {
		take_messages();
		for (unsigned i = 0; i < msgq_count; i++) {
			struct queued_msg *q = &msgq[(msgq_head + i) % MSGQ_LEN];

			if (q->u.hdr.msgtype != type || q->size < sizeof(q->u.hdr) ||
			    (match && !match(q, ctx)))
				continue;
			memset(out, 0, out_size);
			memcpy(out, q->u.bytes, q->size < out_size ? q->size : out_size);
			/* remove entry i, keeping the order of the others */
			for (unsigned j = i; j + 1 < msgq_count; j++)
				msgq[(msgq_head + j) % MSGQ_LEN] = msgq[(msgq_head + j + 1) % MSGQ_LEN];
			msgq_count--;
			return;
		}
		if (msgq_count == MSGQ_LEN) {
			msgq_head = (msgq_head + 1) % MSGQ_LEN;
			msgq_count--;
			vmbus_conn.dropped++;
			continue;
		}
		wait_irq();
	}
}

static int post(const void *msg, uint32_t size)
{
	uint64_t st = hv_post_message(vmbus_conn.msg_conn_id, 1, msg, size);

	return st == HV_STATUS_SUCCESS ? 0 : VMBUS_EHYPERCALL;
}

static void release_relid(struct vmbus_channel *ch);

/* RELID_RELEASED for every rescinded channel that is closed (Linux: once its device is gone). */
static void release_rescinded(void)
{
	for (unsigned i = 0; i < VMBUS_MAX_CHANNELS; i++)
		if (channels[i].state == VMBUS_CH_OFFERED && channels[i].rescinded)
			release_relid(&channels[i]);
}

/* ------------------------------------------------------------------------------------------ */
/* The SINT2 interrupt. */

static inline bool test_and_clear_bit(volatile uint64_t *word, unsigned bit)
{
	bool was;

	__asm__ volatile("lock btrq %2, %0" : "+m"(*word), "=@ccc"(was) : "r"((uint64_t)bit) : "memory");
	return was;
}

static void take_events(void)
{
	volatile uint64_t *flags = siefp_page[VMBUS_MESSAGE_SINT].flags;
	unsigned words = max_relid / 64 + 1;

	for (unsigned w = 0; w < words; w++) {
		uint64_t v = flags[w];

		while (v) {
			unsigned bit = (unsigned)__builtin_ctzll(v);
			uint32_t relid = w * 64 + bit;
			struct vmbus_channel *ch;

			v &= v - 1;
			if (!test_and_clear_bit(&flags[w], bit) || relid == 0)
				continue;
			vmbus_conn.events++;
			ch = vmbus_channel_by_relid(relid);
			if (!ch || (ch->state != VMBUS_CH_OPEN && ch->state != VMBUS_CH_USER)) {
				vmbus_conn.unknown_events++;
				continue;
			}
			ch->events++;
			if (ch->on_event)
				ch->on_event(ch);
		}
	}
}

static void vmbus_isr(unsigned vector, struct hv_regs *regs)
{
	(void)vector;
	(void)regs;
	vmbus_conn.interrupts++;
	take_events();   /* channel interrupts first, as Linux's vmbus_isr */
	take_messages(); /* then the message slot */
	/* the runtime EOIs the LAPIC after we return (no auto-EOI) */
}

int hv_synic_init(uint8_t vector)
{
	union hv_synic_sint sint;

	if (!hv_hyperv.hypercall_ready || !(hv_hyperv.features_a & HV_MSR_SYNIC_AVAILABLE) ||
	    vector < HV_VEC_FIRST_IRQ || vector == HV_VEC_SPURIOUS)
		return VMBUS_ENODEV;
	vmbus_conn.vector = vector;
	hv_irq_register(vector, vmbus_isr);

	/* Same order as Linux's hv_synic_enable_regs(): SIMP, SIEFP, SINT, SCONTROL. */
	hv_wrmsr(HV_X64_MSR_SIMP, (uintptr_t)&simp_page | HV_SYNIC_SIMP_ENABLE);
	hv_wrmsr(HV_X64_MSR_SIEFP, (uintptr_t)siefp_page | HV_SYNIC_SIEFP_ENABLE);
	sint.as_uint64 = hv_rdmsr(HV_X64_MSR_SINT0 + VMBUS_MESSAGE_SINT);
	sint.vector = vector;
	sint.masked = 0;
	sint.auto_eoi = 0; /* HV_DEPRECATING_AEOI_RECOMMENDED or not: the runtime EOIs */
	hv_wrmsr(HV_X64_MSR_SINT0 + VMBUS_MESSAGE_SINT, sint.as_uint64);
	hv_wrmsr(HV_X64_MSR_SCONTROL, hv_rdmsr(HV_X64_MSR_SCONTROL) | HV_SYNIC_CONTROL_ENABLE);
	hv_hyperv.synic_ready = true;
	return 0;
}

void hv_synic_cleanup(void)
{
	if (!hv_hyperv.synic_ready)
		return;
	hv_wrmsr(HV_X64_MSR_SINT0 + VMBUS_MESSAGE_SINT, HV_SYNIC_SINT_MASKED);
	hv_wrmsr(HV_X64_MSR_SIMP, 0);
	hv_wrmsr(HV_X64_MSR_SIEFP, 0);
	hv_wrmsr(HV_X64_MSR_SCONTROL, 0);
	hv_hyperv.synic_ready = false;
}

/* ------------------------------------------------------------------------------------------ */
/* Connection. */

static const uint32_t versions[] = {
	VERSION_WIN10_V5_3, VERSION_WIN10_V5_2, VERSION_WIN10_V5_1, VERSION_WIN10_V5,
	VERSION_WIN10_V4_1, VERSION_WIN10,
};

int vmbus_connect(void)
{
	struct vmbus_channel_initiate_contact msg;
	struct vmbus_channel_version_response resp;

	if (!hv_hyperv.synic_ready)
		return VMBUS_ENODEV;
	if (vmbus_conn.version)
		return 0;
	for (unsigned i = 0; i < HV_ARRAY_SIZE(versions); i++) {
		uint32_t v = versions[i];
		uint64_t st;

		memset(&msg, 0, sizeof(msg));
		msg.header.msgtype = CHANNELMSG_INITIATE_CONTACT;
		msg.vmbus_version_requested = v;
		msg.target_vcpu = hv_hyperv.vp_index;
		if (v >= VERSION_WIN10_V5) {
			msg.msg_sint = VMBUS_MESSAGE_SINT;
			vmbus_conn.msg_conn_id = VMBUS_MESSAGE_CONNECTION_ID_4;
		} else {
			msg.interrupt_page = (uintptr_t)int_page;
			vmbus_conn.msg_conn_id = VMBUS_MESSAGE_CONNECTION_ID;
		}
		msg.monitor_page1 = (uintptr_t)monitor_pages[0];
		msg.monitor_page2 = (uintptr_t)monitor_pages[1];
		vmbus_conn.versions_tried++;
		st = hv_post_message(vmbus_conn.msg_conn_id, 1, &msg, sizeof(msg));
		if (st == HV_STATUS_INVALID_CONNECTION_ID)
			continue; /* no 5.x message connection on this host */
		if (st != HV_STATUS_SUCCESS)
			return VMBUS_EHYPERCALL;
		wait_message(CHANNELMSG_VERSION_RESPONSE, NULL, NULL, &resp, sizeof(resp));
		if (!resp.version_supported)
			continue;
		if (v >= VERSION_WIN10_V5 && resp.msg_conn_id)
			vmbus_conn.msg_conn_id = resp.msg_conn_id;
		vmbus_conn.version = v;
		return 0;
	}
	vmbus_conn.msg_conn_id = 0;
	return VMBUS_EVERSION;
}

int vmbus_request_offers(void)
{
	struct vmbus_channel_message_header msg = { .msgtype = CHANNELMSG_REQUESTOFFERS };
	int rc;

	if (!vmbus_conn.version)
		return VMBUS_EINVAL;
	vmbus_conn.all_offers_delivered = 0;
	rc = post(&msg, sizeof(msg));
	if (rc)
		return rc;
	/* Offers and ALLOFFERS_DELIVERED are taken by take_messages() itself. */
	while (take_messages(), !vmbus_conn.all_offers_delivered)
		wait_irq();
	return 0;
}

int vmbus_init(uint8_t vector)
{
	int rc = hv_hyperv_init();

	if (!rc)
		rc = hv_synic_init(vector);
	if (!rc)
		rc = vmbus_connect();
	if (!rc)
		rc = vmbus_request_offers();
	return rc;
}

int vmbus_unload(void)
{
	struct vmbus_channel_message_header msg = { .msgtype = CHANNELMSG_UNLOAD }, resp;
	int rc;

	if (!vmbus_conn.version)
		return 0;
	for (unsigned i = 0; i < VMBUS_MAX_CHANNELS; i++)
		if (channels[i].state == VMBUS_CH_OPEN || channels[i].state == VMBUS_CH_USER)
			return VMBUS_EINVAL;
	rc = post(&msg, sizeof(msg));
	if (rc)
		return rc;
	wait_message(CHANNELMSG_UNLOAD_RESPONSE, NULL, NULL, &resp, sizeof(resp));
	/* The host forgot every offer and GPADL: so do we. */
	memset(channels, 0, sizeof(channels));
	max_relid = 0;
	vmbus_conn.version = 0;
	vmbus_conn.offers = 0;
	vmbus_conn.all_offers_delivered = 0;
	return 0;
}

bool vmbus_guid_equal(const guid_t *a, const guid_t *b)
{
	return memcmp(a->b, b->b, sizeof(a->b)) == 0;
}

struct vmbus_channel *vmbus_find_channel(const guid_t *class_id, unsigned n)
{
	take_messages();
	release_rescinded();
	for (unsigned i = 0; i < VMBUS_MAX_CHANNELS; i++) {
		struct vmbus_channel *ch = &channels[i];

		if (ch->state != VMBUS_CH_FREE && !ch->rescinded &&
		    vmbus_guid_equal(&ch->offer.offer.if_type, class_id) && n-- == 0)
			return ch;
	}
	return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* GPADLs. */

/* PFNs per message, as Linux's create_gpadl_header() computes them. */
#define GPADL_HEADER_PFNS \
	((MAX_SIZE_CHANNEL_MESSAGE - sizeof(struct vmbus_channel_gpadl_header) - \
	  sizeof(struct gpa_range)) / sizeof(uint64_t))
#define GPADL_BODY_PFNS \
	((MAX_SIZE_CHANNEL_MESSAGE - sizeof(struct vmbus_channel_gpadl_body)) / sizeof(uint64_t))

_Static_assert(GPADL_HEADER_PFNS == 26, "Linux puts 26 PFNs in a GPADL_HEADER");
_Static_assert(GPADL_BODY_PFNS == 28, "Linux puts 28 PFNs in a GPADL_BODY");

static bool match_gpadl_created(const struct queued_msg *m, const void *ctx)
{
	const struct vmbus_channel_gpadl_created *c = (const void *)m->u.bytes;
	const struct vmbus_channel_gpadl_header *h = ctx;

	return m->size >= sizeof(*c) && c->child_relid == h->child_relid && c->gpadl == h->gpadl;
}

static bool match_gpadl_torndown(const struct queued_msg *m, const void *ctx)
{
	const struct vmbus_channel_gpadl_torndown *t = (const void *)m->u.bytes;

	return m->size >= sizeof(*t) && t->gpadl == *(const uint32_t *)ctx;
}

int vmbus_gpadl_create(struct vmbus_channel *ch, void *buf, uint32_t size, uint32_t *handle)
{
	union {
		struct vmbus_channel_gpadl_header h;
		struct vmbus_channel_gpadl_body b;
		uint8_t bytes[MAX_SIZE_CHANNEL_MESSAGE];
	} m;
	struct vmbus_channel_gpadl_created created;
	uint64_t pfn0 = (uintptr_t)buf >> 12;
	uint32_t pages = size / HVR_PAGE_SIZE, n, done;
	uint32_t gpadl;
	int rc;

	if (!ch || !vmbus_conn.version || ((uintptr_t)buf & (HVR_PAGE_SIZE - 1)) || size == 0 ||
	    size % HVR_PAGE_SIZE || (uintptr_t)buf + size > (1ULL << 32) ||
	    sizeof(struct gpa_range) + pages * sizeof(uint64_t) > 0xffff /* u16 range_buflen */)
		return VMBUS_EINVAL;
	gpadl = next_gpadl++;

	memset(&m, 0, sizeof(m));
	m.h.header.msgtype = CHANNELMSG_GPADL_HEADER;
	m.h.child_relid = ch->relid;
	m.h.gpadl = gpadl;
	m.h.range_buflen = (uint16_t)(sizeof(struct gpa_range) + pages * sizeof(uint64_t));
	m.h.rangecount = 1;
	m.h.range[0].byte_offset = 0;
	m.h.range[0].byte_count = size;
	n = pages < GPADL_HEADER_PFNS ? pages : GPADL_HEADER_PFNS;
	for (uint32_t i = 0; i < n; i++)
		m.h.range[0].pfn_array[i] = pfn0 + i;
	rc = post(&m, sizeof(m.h) + sizeof(struct gpa_range) + n * sizeof(uint64_t));
	if (rc)
		return rc;
	for (done = n; done < pages; done += n) {
		n = pages - done < GPADL_BODY_PFNS ? pages - done : GPADL_BODY_PFNS;
		memset(&m, 0, sizeof(m));
		m.b.header.msgtype = CHANNELMSG_GPADL_BODY;
		m.b.gpadl = gpadl;
		for (uint32_t i = 0; i < n; i++)
			m.b.pfn[i] = pfn0 + done + i;
		rc = post(&m, sizeof(m.b) + n * sizeof(uint64_t));
		if (rc)
			return rc;
	}
	m.h.child_relid = ch->relid; /* match key for the answer */
	m.h.gpadl = gpadl;
	wait_message(CHANNELMSG_GPADL_CREATED, match_gpadl_created, &m.h, &created,
		     sizeof(created));
	if (created.creation_status != 0) {
		vmbus_last_host_status = created.creation_status;
		return VMBUS_EHOST;
	}
	*handle = gpadl;
	return 0;
}

int vmbus_gpadl_teardown(struct vmbus_channel *ch, uint32_t handle)
{
	struct vmbus_channel_gpadl_teardown msg;
	struct vmbus_channel_gpadl_torndown resp;
	int rc;

	if (!ch || !vmbus_conn.version)
		return VMBUS_EINVAL;
	memset(&msg, 0, sizeof(msg));
	msg.header.msgtype = CHANNELMSG_GPADL_TEARDOWN;
	msg.child_relid = ch->relid;
	msg.gpadl = handle;
	rc = post(&msg, sizeof(msg));
	if (rc)
		return rc;
	wait_message(CHANNELMSG_GPADL_TORNDOWN, match_gpadl_torndown, &handle, &resp, sizeof(resp));
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Open / close. */

static bool match_open_result(const struct queued_msg *m, const void *ctx)
{
	const struct vmbus_channel_open_result *r = (const void *)m->u.bytes;
	const struct vmbus_channel *ch = ctx;

	return m->size >= sizeof(*r) && r->child_relid == ch->relid && r->openid == ch->relid;
}

static void release_relid(struct vmbus_channel *ch)
{
	struct vmbus_channel_relid_released msg;

	if (!ch->rescinded || ch->released)
		return;
	memset(&msg, 0, sizeof(msg));
	msg.header.msgtype = CHANNELMSG_RELID_RELEASED;
	msg.child_relid = ch->relid;
	if (post(&msg, sizeof(msg)) == 0) {
		ch->released = 1;
		ch->state = VMBUS_CH_FREE;
	}
}

int vmbus_channel_open(struct vmbus_channel *ch, void *ring_area, uint32_t send_pages,
		       uint32_t recv_pages)
{
	struct vmbus_channel_open_channel msg;
	struct vmbus_channel_open_result res;
	uint8_t *ring = ring_area;
	uint32_t gpadl;
	int rc;

	if (!ch || ch->state != VMBUS_CH_OFFERED || ch->rescinded || send_pages < 2 ||
	    recv_pages < 2 || ((uintptr_t)ring & (HVR_PAGE_SIZE - 1)) ||
	    (uint64_t)(send_pages + recv_pages) * HVR_PAGE_SIZE > (1u << 30))
		return VMBUS_EINVAL;

	/* Both rings empty, interrupts wanted, feat_pending_send_sz (Linux's hv_ringbuffer_init). */
	hvr_ring_format((struct hv_ring_buffer *)ring);
	hvr_ring_format((struct hv_ring_buffer *)(ring + (size_t)send_pages * HVR_PAGE_SIZE));
	memset(&ch->rings, 0, sizeof(ch->rings));
	ch->rings.connection_id = ch->connection_id;
	ch->rings.relid = ch->relid;
	if (hvr_out_attach(&ch->rings.out, (struct hv_ring_buffer *)ring,
			   (send_pages - 1) * HVR_PAGE_SIZE, 0) != HVR_OK ||
	    hvr_in_attach(&ch->rings.in,
			  (struct hv_ring_buffer *)(ring + (size_t)send_pages * HVR_PAGE_SIZE),
			  (recv_pages - 1) * HVR_PAGE_SIZE, 0) != HVR_OK)
		return VMBUS_ERING;

	rc = vmbus_gpadl_create(ch, ring, (send_pages + recv_pages) * HVR_PAGE_SIZE, &gpadl);
	if (rc)
		return rc;

	memset(&msg, 0, sizeof(msg));
	msg.header.msgtype = CHANNELMSG_OPENCHANNEL;
	msg.child_relid = ch->relid;
	msg.openid = ch->relid;
	msg.ringbuffer_gpadlhandle = gpadl;
	msg.target_vp = hv_hyperv.vp_index;
	msg.downstream_ringbuffer_pageoffset = send_pages;
	rc = post(&msg, sizeof(msg));
	if (rc) {
		vmbus_gpadl_teardown(ch, gpadl);
		return rc;
	}
	wait_message(CHANNELMSG_OPENCHANNEL_RESULT, match_open_result, ch, &res, sizeof(res));
	if (res.status != 0) {
		vmbus_last_host_status = res.status;
		vmbus_gpadl_teardown(ch, gpadl);
		return VMBUS_EHOST;
	}
	ch->gpadl = gpadl;
	ch->ring_area = ring;
	ch->send_pages = send_pages;
	ch->recv_pages = recv_pages;
	ch->events = 0;
	ch->state = VMBUS_CH_OPEN;
	return 0;
}

int vmbus_channel_close(struct vmbus_channel *ch)
{
	struct vmbus_channel_close_channel msg;
	int rc;

	if (!ch || ch->state != VMBUS_CH_OPEN)
		return VMBUS_EINVAL;
	memset(&msg, 0, sizeof(msg));
	msg.header.msgtype = CHANNELMSG_CLOSECHANNEL;
	msg.child_relid = ch->relid;
	rc = post(&msg, sizeof(msg));
	if (rc)
		return rc;
	ch->state = VMBUS_CH_OFFERED;
	rc = vmbus_gpadl_teardown(ch, ch->gpadl);
	ch->gpadl = 0;
	ch->ring_area = NULL;
	release_rescinded(); /* this channel, if it was rescinded, and any other closed one */
	return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Kernel-side ring I/O. */

static void signal_host(struct vmbus_channel *ch)
{
	ch->host_signals++;
	if (hv_signal_event(ch->connection_id) & HV_HYPERCALL_RESULT_MASK)
		ch->rings.kick_errors++;
}

int vmbus_send(struct vmbus_channel *ch, const void *buf, uint32_t len, uint64_t trans_id,
	       uint16_t flags)
{
	struct vmbus_rings *r = &ch->rings;
	int rc;

	if (ch->state != VMBUS_CH_OPEN)
		return VMBUS_EINVAL;
	for (;;) {
		rc = vmbus_rings_write(r, buf, len, trans_id, flags);
		if (rc != HVR_FULL)
			break;
		/* Ask the host to signal once a quarter ring is free, then sleep on the channel. */
		uint64_t seen = ch->events;
		rc = hvr_out_request_space(&r->out, hvr_packet_total(0, len));
		if (rc < 0)
			return rc;
		if (rc == 0) {
			ch->send_waits++;
			while (ch->events == seen)
				wait_irq();
		}
	}
	if (rc != HVR_OK)
		return rc;
	rc = vmbus_rings_commit(r);
	if (rc < 0)
		return rc;
	if (rc == 1)
		signal_host(ch);
	return HVR_OK;
}

int vmbus_recv(struct vmbus_channel *ch, struct hvr_pkt *pkt, bool poll)
{
	struct vmbus_rings *r = &ch->rings;
	int rc;

	if (ch->state != VMBUS_CH_OPEN)
		return VMBUS_EINVAL;
	if (poll)
		hvr_in_set_interrupt_mask(&r->in, 1);
	else
		take_interrupts(); /* as a kernel running with IF=1 would have */
	for (;;) {
		rc = vmbus_rings_read(r, pkt);
		if (rc != HVR_EMPTY)
			return rc;
		if (poll) {
			hv_pause();
			continue;
		}
		/* Linux's hv_end_read(): unmask, then look again (a packet that raced in before the
		 * unmask raised no interrupt). IF=0 here, so an event taken after this shows up as a
		 * changed ch->events once `sti; hlt` lets the handler run. */
		uint64_t seen = ch->events;
		rc = hvr_in_unmask(&r->in);
		if (rc < 0)
			return rc;
		if (rc == 1)
			continue;
		while (ch->events == seen)
			wait_irq();
	}
}

int vmbus_recv_done(struct vmbus_channel *ch)
{
	int rc = vmbus_rings_release(&ch->rings);

	if (rc == 1)
		signal_host(ch);
	return rc < 0 ? rc : 0;
}

int vmbus_channel_to_user(struct vmbus_channel *ch, struct vmbus_rings *u)
{
	if (!ch || ch->state != VMBUS_CH_OPEN || !u)
		return VMBUS_EINVAL;
	if (!hv_user_map((uintptr_t)ch->ring_area,
			 (uint64_t)(ch->send_pages + ch->recv_pages) * HVR_PAGE_SIZE))
		return VMBUS_EINVAL;
	*u = ch->rings;
	ch->state = VMBUS_CH_USER;
	return 0;
}

int vmbus_channel_from_user(struct vmbus_channel *ch, const struct vmbus_rings *u)
{
	if (!ch || ch->state != VMBUS_CH_USER || !u)
		return VMBUS_EINVAL;
	ch->rings = *u;
	/* The task's views must still describe this channel's rings. */
	if (ch->rings.out.r.hdr != (struct hv_ring_buffer *)ch->ring_area ||
	    ch->rings.in.r.hdr != (struct hv_ring_buffer *)(ch->ring_area +
							    (size_t)ch->send_pages * HVR_PAGE_SIZE) ||
	    ch->rings.connection_id != ch->connection_id) {
		ch->state = VMBUS_CH_OPEN;
		return VMBUS_EINVAL;
	}
	ch->state = VMBUS_CH_OPEN;
	return 0;
}
