/*
 * hostile_vmbus - a guest that attacks the parent's VMBus: its rings, GPADLs and channel
 * messages. Needs `hyperv` and three echo VSPs (hvkvm/vsp/echo.py): echo #0 is the victim, #1
 * the bystander (opened, never attacked: SYNC 0x1ff proves it still echoes), #2 the spare
 * (offered, opened only by the attacks that need a closed channel).
 *
 * Command line: attack=NAME (below), count=N (floods; default per attack), pages=N (victim ring
 * data pages, 4), plus per-attack keys. SYNC stages (values):
 *   0x100 started (attack index)
 *   0x101 attack done (attack-specific values, listed at each attack)
 *   0x1fd victim echoes after the attack (echoes back intact; 0 when the parent stopped serving
 *         the channel it found corrupt)
 *   0x1fe victim closed (close status: 0, the parent tore it down as asked)
 *   0x1ff bystander (echoes sent, echoes back)
 * then DONE(0).
 */
#include "vm.h"

static struct vmbus_channel *victim, *bystander;
static uint64_t ram_end;

/* ---- set-up -------------------------------------------------------------------------------- */

static struct vmbus_channel *open_echo(unsigned n, void *area, uint32_t send_pages,
				       uint32_t recv_pages)
{
	struct vmbus_channel *ch = vmbus_find_channel(&HOSTILE_ECHO_GUID, n);
	int rc;

	HV_ASSERT(ch != NULL, "hostile_vmbus: no echo offer #%u (%u offers)", n, vmbus_conn.offers);
	rc = vmbus_channel_open(ch, area, send_pages + 1, recv_pages + 1);
	HV_ASSERT(rc == 0, "hostile_vmbus: opening echo #%u: %d (host status 0x%x)", n, rc,
		  vmbus_last_host_status);
	return ch;
}

static void setup(uint32_t send_pages, uint32_t recv_pages)
{
	int rc = vmbus_init(VMBUS_VECTOR_DEFAULT);

	HV_ASSERT(rc == 0, "hostile_vmbus: VMBus init: %d", rc);
	for (uint32_t i = 0; i < hv_boot.memmap_entries; i++)
		if (hv_boot.memmap[i].type == 1 &&
		    hv_boot.memmap[i].addr + hv_boot.memmap[i].size > ram_end)
			ram_end = hv_boot.memmap[i].addr + hv_boot.memmap[i].size;
	HV_ASSERT(send_pages <= VICTIM_MAX_PAGES && recv_pages <= VICTIM_MAX_PAGES);
	victim = open_echo(0, vm_victim_area, send_pages, recv_pages);
	bystander = open_echo(1, vm_bystander_area, 4, 4);
	HV_ASSERT_EQ(hostile_echo(victim, 2, 64, 5000), 2, "victim echo before the attack");
	HV_ASSERT_EQ(hostile_echo(bystander, 2, 64, 5000), 2, "bystander echo before the attack");
}

static void setup_default(void)
{
	uint32_t pages = (uint32_t)hv_arg_u64("pages", 4);

	setup(pages, pages);
}

/* After the attack: does the victim still echo, close it, check the bystander. */
static int finish(bool expect_victim_works)
{
	uint32_t ok = hostile_echo(victim, 4, 64, expect_victim_works ? 5000 : 300);
	int rc;

	hv_sync(0x1fd, ok);
	if (expect_victim_works)
		HV_ASSERT_EQ(ok, 4, "the victim stopped echoing after a harmless attack");
	rc = vmbus_channel_close(victim);
	hv_sync(0x1fe, (uint64_t)(int64_t)rc);
	HV_ASSERT_EQ(rc, 0, "closing the victim");
	hostile_bystander_check(bystander);
	return 0;
}

/* Run a ring-3 flood (IF=1 there: the runtime's VMBus handler takes what it can), then take
 * whatever the parent still has queued for us. */
static void run_flood(struct flood *f)
{
	HV_ASSERT_EQ(hv_run_user(vm_flood_task, f), 0);
	hostile_drain();
}

/* ---- the guest's send ring, written by hand ----------------------------------------------- */

struct desc {
	uint16_t type, offset8, len8, flags;
	uint64_t trans_id;
};

static void ring_put(struct hvr_out *o, uint32_t off, const void *src, uint32_t n)
{
	const uint8_t *s = src;

	for (uint32_t i = 0; i < n; i++)
		o->r.data[(off + i) % o->r.size] = s[i];
}

/* Write `n` bytes at the send ring's write position and publish `windex` (the end of them when
 * `windex` is ~0), then signal. */
static void inject(const void *bytes, uint32_t n, uint32_t windex)
{
	struct hvr_out *o = &victim->rings.out;
	uint32_t pos = o->next_in, end = (pos + n) % o->r.size;

	ring_put(o, pos, bytes, n);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	o->r.hdr->write_index = windex == ~0u ? end : windex;
	o->next_in = o->committed_in = end;
	hv_signal_event(victim->connection_id);
}

/* A packet: descriptor, `body` (header + payload, padded to 8), trailer. */
static uint32_t build(uint8_t *out, struct desc d, const void *body, uint32_t blen, uint32_t start)
{
	uint64_t trailer = (uint64_t)start << 32;
	uint32_t padded = (blen + 7) & ~7u;

	memcpy(out, &d, 16);
	memset(out + 16, 0, padded);
	memcpy(out + 16, body, blen);
	memcpy(out + 16 + padded, &trailer, 8);
	return 16 + padded + 8;
}

static uint8_t pkt[4096];

/* Ring attacks that must leave the victim broken: SYNC 0x101 (kind). */
static int ring_break(int kind)
{
	struct hvr_out *o;
	uint8_t body[64];
	uint32_t n, pos;

	setup_default();
	o = &victim->rings.out;
	pos = o->next_in;
	memset(body, 0x42, sizeof(body));
	switch (kind) {
	case 0: /* write_index past the end of the ring */
		n = build(pkt, (struct desc){VM_PKT_DATA_INBAND, 2, 3, 0, 1}, body, 8, pos);
		inject(pkt, n, o->r.size + 8);
		break;
	case 1: /* write_index not a multiple of 8 */
		n = build(pkt, (struct desc){VM_PKT_DATA_INBAND, 2, 3, 0, 1}, body, 8, pos);
		inject(pkt, n, (pos + n + 4) % o->r.size);
		break;
	case 2: /* len8 past what was written */
		n = build(pkt, (struct desc){VM_PKT_DATA_INBAND, 2, 0x1ff, 0, 1}, body, 8, pos);
		inject(pkt, n, ~0u);
		break;
	case 3: /* offset8 below the descriptor */
		n = build(pkt, (struct desc){VM_PKT_DATA_INBAND, 1, 3, 0, 1}, body, 8, pos);
		inject(pkt, n, ~0u);
		break;
	case 4: /* offset8 past len8 */
		n = build(pkt, (struct desc){VM_PKT_DATA_INBAND, 4, 3, 0, 1}, body, 8, pos);
		inject(pkt, n, ~0u);
		break;
	case 5: /* unknown packet type */
		n = build(pkt, (struct desc){0x1234, 2, 3, 0, 1}, body, 8, pos);
		inject(pkt, n, ~0u);
		break;
	case 6: /* unknown flags */
		n = build(pkt, (struct desc){VM_PKT_DATA_INBAND, 2, 3, 0x8000, 1}, body, 8, pos);
		inject(pkt, n, ~0u);
		break;
	case 7: { /* GPA-direct: a range of 8192 bytes with one PFN (it needs two) */
		uint32_t h[6] = {0, 1, 8192, 0, 0x100, 0};

		memcpy(body, h, sizeof(h));
		n = build(pkt, (struct desc){VM_PKT_DATA_USING_GPA_DIRECT, 5, 6, 0, 1}, body, 32, pos);
		inject(pkt, n, ~0u);
		break;
	}
	case 8: { /* transfer pages: 100 ranges in an 8-byte header */
		uint32_t h[2] = {0xcafe, 100};

		memcpy(body, h, sizeof(h));
		n = build(pkt, (struct desc){VM_PKT_DATA_USING_XFER_PAGES, 3, 4, 0, 1}, body, 16, pos);
		inject(pkt, n, ~0u);
		break;
	}
	case 9: { /* the parent's reply ring: a read_index past its end */
		struct hvr_in *in = &victim->rings.in;

		in->r.hdr->read_index = in->r.size * 2 + 16;
		in->r.hdr->interrupt_mask = 0;
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		HV_ASSERT_EQ(vmbus_rings_write(&victim->rings, body, 16, 0x99, 0), HVR_OK);
		vmbus_rings_commit(&victim->rings);
		hv_signal_event(victim->connection_id);
		hv_udelay(200000);
		break;
	}
	default:
		HV_ASSERT(0, "ring_break kind %d", kind);
	}
	hv_udelay(100000);
	hv_sync(0x101, kind);
	return finish(false);
}

static int ring_windex_oob(void) { return ring_break(0); }
static int ring_windex_unaligned(void) { return ring_break(1); }
static int ring_len8_past_end(void) { return ring_break(2); }
static int ring_offset8_small(void) { return ring_break(3); }
static int ring_offset8_past_len8(void) { return ring_break(4); }
static int ring_bad_type(void) { return ring_break(5); }
static int ring_bad_flags(void) { return ring_break(6); }
static int ring_gpa_ranges_bad(void) { return ring_break(7); }
static int ring_xfer_ranges_bad(void) { return ring_break(8); }
static int ring_rindex_oob(void) { return ring_break(9); }

/* An empty packet (offset8 == len8): valid, echoed as an empty packet. SYNC 0x101 (1 if the
 * empty echo came back). */
static int ring_zero_payload(void)
{
	struct hvr_pkt p;
	uint64_t deadline;
	int got = 0;

	setup_default();
	hvr_in_set_interrupt_mask(&victim->rings.in, 1);
	inject(pkt, build(pkt, (struct desc){VM_PKT_DATA_INBAND, 2, 2, 0, 0x2e50}, NULL, 0,
			  victim->rings.out.next_in), ~0u);
	deadline = hv_time_us() + 5000000;
	while (!got && hv_time_us() < deadline) {
		if (vmbus_rings_read(&victim->rings, &p) == HVR_OK) {
			got = p.trans_id == 0x2e50 && p.payload_len == 0;
			vmbus_rings_release(&victim->rings);
		}
	}
	hv_sync(0x101, got);
	HV_ASSERT(got, "no empty echo");
	return finish(true);
}

/* Packets that wrap around the end of a one-page ring, descriptors split by the wrap; then the
 * largest packet a 4-page ring holds. SYNC 0x101 (wrapping echoes, largest echoes). */
static int ring_wrap_and_max(void)
{
	uint32_t a, b, c;

	setup(1, 4);
	a = hostile_echo(victim, 9, 1004, 5000);   /* 1032 ring bytes each: every offset moves */
	b = hostile_echo(victim, 5, 2000, 5000);
	vmbus_channel_close(victim);
	victim = open_echo(0, vm_victim_area, 4, 4);
	c = hostile_echo(victim, 2, 4 * HVR_PAGE_SIZE - 32, 5000);
	hv_sync(0x101, a + b, c);
	HV_ASSERT(a == 9 && b == 5 && c == 2, "wrap %u+%u, max %u", a, b, c);
	return finish(true);
}

/* A reply that can never fit: a 16-page send ring, a 1-page receive ring, an 8 KiB packet.
 * SYNC 0x101 (0). */
static int ring_oversized_reply(void)
{
	setup(16, 1);
	HV_ASSERT_EQ(vmbus_rings_write(&victim->rings, pkt, 8192, 0x0b16, 0), HVR_OK);
	vmbus_rings_commit(&victim->rings);
	hv_signal_event(victim->connection_id);
	hv_udelay(100000);
	/* and again and again: the parent must neither choke on it nor log each time */
	for (uint64_t i = hv_arg_u64("kicks", 300); i; i--) {
		hv_signal_event(victim->connection_id);
		hv_udelay(300);
	}
	hv_udelay(100000);
	hv_sync(0x101, 0);
	return finish(false);
}

/* Garbage in every control word the parent reads from us: pending_send_sz, feature bits,
 * interrupt_mask. The echoes must still flow. SYNC 0x101 (echoes). */
static int ring_pending_garbage(void)
{
	uint32_t ok;

	setup_default();
	victim->rings.out.r.hdr->pending_send_sz = 0xffffffffu;
	victim->rings.out.r.hdr->feature_bits.value = 0xfffffffeu;
	victim->rings.out.r.hdr->interrupt_mask = 0x12345678u;
	victim->rings.in.r.hdr->pending_send_sz = 0xfffffff9u;
	victim->rings.in.r.hdr->feature_bits.value = 0xffffffffu;
	victim->rings.in.r.hdr->reserved1[0] = 0xdeadbeefu;
	ok = hostile_echo(victim, 20, 300, 5000);
	hv_sync(0x101, ok);
	HV_ASSERT_EQ(ok, 20);
	return finish(true);
}

/* vCPU 1 rewrites each packet's descriptor while the parent parses it; vCPU 0 keeps writing
 * honest packets and reading echoes. Whatever the parent sees, it must either echo or stop the
 * channel, never crash or touch memory outside the ring. SYNC 0x101 (packets sent, echoes,
 * flips). */
static int ring_double_fetch(void)
{
	struct flipper *fl = &vm_flipper;
	struct vmbus_rings *r;
	uint64_t sent = 0, echoes = 0, quiet_since;
	uint32_t count = (uint32_t)hv_arg_u64("count", 3000);
	struct hvr_pkt p;

	setup_default();
	r = &victim->rings;
	fl->data = r->out.r.data;
	fl->size = r->out.r.size;
	fl->target = r->out.next_in;
	fl->mode = (uint32_t)hv_arg_u64("flip", 0);
	hv_smp_start();
	HV_ASSERT(hv_smp_wait(2, 5000000) >= 2, "ring_double_fetch needs 2 vCPUs");
	fl->go = 1;
	hvr_in_set_interrupt_mask(&r->in, 1);
	quiet_since = hv_time_us();
	while (sent < count && hv_time_us() - quiet_since < 500000) {
		uint64_t gpa_hdr[3] = {1ull << 32, 100, (uintptr_t)pkt >> 12}; /* 1 range, 100 bytes */
		struct hvr_iov iov[2] = {{gpa_hdr, sizeof(gpa_hdr)}, {pkt, 8 + (uint32_t)(sent % 200)}};

		fl->target = r->out.next_in;
		fl->gpa = sent & 1;
		if ((sent & 1 ? hvr_out_write(&r->out, VM_PKT_DATA_USING_GPA_DIRECT, 0,
					      0xdf000000 + sent, sizeof(gpa_hdr), iov, 2)
			      : vmbus_rings_write(r, pkt, 8 + (uint32_t)(sent % 200),
						  0xdf000000 + sent, 0)) == HVR_OK) {
			vmbus_rings_commit(r);
			vmbus_kick(r->connection_id);
			sent++;
		}
		while (vmbus_rings_read(r, &p) == HVR_OK) {
			echoes++;
			quiet_since = hv_time_us();
		}
		vmbus_rings_release(r);
		if (r->in.r.broken || r->out.r.broken)
			break;
	}
	fl->stop = 1;
	hv_udelay(20000);
	hv_sync(0x101, sent, echoes, fl->flips);
	return finish(false);
}

void hv_ap_main(unsigned cpu)
{
	(void)cpu;
	hv_run_user(vm_flipper_task, &vm_flipper);
}

/* ---- GPADLs ----------------------------------------------------------------------------------- */

static uint8_t msgbuf[256] __attribute__((aligned(8)));

/* A GPADL_HEADER with one range (or `rangecount`), PFNs given, range_buflen as given (0: right). */
static uint64_t gpadl_header(uint32_t relid, uint32_t handle, uint32_t byte_count,
			     uint32_t byte_offset, const uint64_t *pfns, uint32_t npfn,
			     uint16_t rangecount, uint16_t buflen)
{
	uint32_t *w = (uint32_t *)msgbuf;

	memset(msgbuf, 0, sizeof(msgbuf));
	w[0] = CHANNELMSG_GPADL_HEADER;
	w[2] = relid;
	w[3] = handle;
	w[4] = (uint32_t)(buflen ? buflen : 8 + 8 * npfn) | (uint32_t)rangecount << 16;
	w[5] = byte_count;
	w[6] = byte_offset;
	memcpy(msgbuf + 28, pfns, 8 * npfn);
	return hostile_post_msg(msgbuf, 28 + 8 * npfn);
}

static uint64_t gpadl_teardown_raw(uint32_t relid, uint32_t handle)
{
	uint32_t m[4] = {CHANNELMSG_GPADL_TEARDOWN, 0, relid, handle};

	return hostile_post_msg(m, sizeof(m));
}

/* PFNs outside guest RAM: each GPADL is refused (GPADL_CREATED with a failure status).
 * SYNC 0x101 (GPADLs refused, GPADLs created). */
static int gpadl_pfn_beyond_ram(void)
{
	uint64_t ram_pages;
	uint32_t refused;

	setup_default();
	ram_pages = ram_end / HVR_PAGE_SIZE;
	uint64_t c[][2] = {
		{ram_pages, ram_pages + 1}, {ram_pages - 1, ram_pages}, {1ull << 40, 1},
		{(1ull << 52) - 1, 2}, {1ull << 52, 3}, {1ull << 63, 4}, {~0ull, 5},
		{0x100, (uint64_t)-1 >> 12},
	};
	refused = hostile_msgs.gpadl_failed;
	for (uint32_t i = 0; i < HV_ARRAY_SIZE(c); i++)
		gpadl_header(victim->relid, 0x51000 + i, 8192, 0, c[i], 2, 1, 0);
	refused = hostile_msgs.gpadl_failed - refused;
	hv_sync(0x101, refused, hostile_msgs.gpadl_ok);
	HV_ASSERT_EQ(refused, HV_ARRAY_SIZE(c));
	HV_ASSERT_EQ(hostile_msgs.gpadl_ok, 0);
	return finish(true);
}

/* Malformed range lists: refused (GPADL_CREATED failure) or, when the parent cannot even tell
 * which GPADL it was, ignored. SYNC 0x101 (refused, created). */
static int gpadl_bad_ranges(void)
{
	uint64_t p[4] = {0x100, 0x101, 0x102, 0x103};
	uint32_t before = hostile_msgs.gpadl_failed;
	uint32_t m[8];

	setup_default();
	gpadl_header(victim->relid, 0x52001, 8192, 4096, p, 3, 1, 0);   /* offset not in the page */
	gpadl_header(victim->relid, 0x52002, 0, 0, p, 1, 1, 0);         /* empty range */
	gpadl_header(victim->relid, 0x52003, 4096, 0, p, 2, 1, 0);      /* a PFN too many */
	gpadl_header(victim->relid, 0x52004, 8192, 0, p, 2, 0xffff, 0); /* 65535 ranges */
	gpadl_header(victim->relid, 0x52005, 8192, 0, p, 2, 2, 0);      /* 2 ranges, 1 there */
	gpadl_header(victim->relid, 0x52006, 8192, 0, p, 2, 1, 8);      /* buflen: no PFNs */
	gpadl_header(victim->relid, 0x52007, ~0u, 0xfff, p, 4, 1, 0);   /* 4 GiB in 4 PFNs */
	/* refused without an answer: no ranges, a buflen too short for one range, handle 0,
	 * a handle in use, an unknown channel */
	gpadl_header(victim->relid, 0x52008, 4096, 0, p, 1, 0, 0);
	gpadl_header(victim->relid, 0x52009, 4096, 0, p, 1, 1, 4);
	gpadl_header(victim->relid, 0, 4096, 0, p, 1, 1, 0);
	gpadl_header(victim->relid, victim->gpadl, 4096, 0, p, 1, 1, 0);
	gpadl_header(0xdead, 0x5200a, 4096, 0, p, 1, 1, 0);
	/* a GPADL that never completes (65535 bytes of ranges announced), then torn down */
	gpadl_header(victim->relid, 0x5200b, 8192 * 1024, 0, p, 4, 1, 0xfff8);
	gpadl_teardown_raw(victim->relid, 0x5200b);
	/* bodies for nobody */
	for (uint32_t h = 0; h < 3; h++) {
		memset(m, 0, sizeof(m));
		m[0] = CHANNELMSG_GPADL_BODY;
		m[3] = h == 0 ? 0 : h == 1 ? 0x77777 : 0xffffffffu;
		hostile_post_msg(m, sizeof(m));
	}
	hv_sync(0x101, hostile_msgs.gpadl_failed - before, hostile_msgs.gpadl_ok,
		hostile_msgs.torndown);
	HV_ASSERT_EQ(hostile_msgs.gpadl_failed - before, 6);
	HV_ASSERT_EQ(hostile_msgs.gpadl_ok, 0);
	HV_ASSERT_EQ(hostile_msgs.torndown, 1);
	return finish(true);
}

/* GPADL_TEARDOWN of the ring GPADL of the open victim: the parent defers it until the channel
 * closes; the channel keeps working meanwhile. SYNC 0x101 (TORNDOWN seen before close, echoes
 * while "torn down"). */
static int gpadl_teardown_open(void)
{
	uint32_t before, ok;

	setup_default();
	before = hostile_msgs.torndown;
	gpadl_teardown_raw(victim->relid, victim->gpadl);
	ok = hostile_echo(victim, 4, 500, 5000);
	hv_sync(0x101, hostile_msgs.torndown - before, ok);
	HV_ASSERT_EQ(hostile_msgs.torndown, before, "torn down while the channel was open");
	HV_ASSERT_EQ(ok, 4);
	return finish(true);
}

/* Thousands of GPADLs (one page each) from ring 3, then their teardowns. The parent keeps at most
 * its limit and refuses the rest. SYNC 0x101 (posts accepted, refused, last status). */
static int gpadl_thousands(void)
{
	struct flood *f = &vm_flood;

	setup_default();
	memset(f, 0, sizeof(*f));
	f->kind = FLOOD_GPADLS;
	f->count = (uint32_t)hv_arg_u64("count", 5000);
	f->pfns = (uint32_t)hv_arg_u64("pfns", 1);
	f->pfn = (uintptr_t)hostile_user_page / HVR_PAGE_SIZE;
	f->conn = vmbus_conn.msg_conn_id;
	f->relid = victim->relid;
	f->base_handle = 0x60000000;
	run_flood(f);
	hv_sync(0x101, f->ok, f->refused, f->last_status);
	return finish(true);
}

/* ---- channel messages --------------------------------------------------------------------------- */

/* Every unknown or host-only message type, full-size garbage. SYNC 0x101 (posts, non-zero
 * hypercall statuses). */
static int msg_unknown_types(void)
{
	uint32_t posts = 0, bad = 0;
	static const uint32_t types[] = {0, 1, 2, 4, 6, 10, 12, 15, 17, 18, 19, 20, 21, 22, 23, 24,
					 25, 26, 27, 28, 29, 30, 31, 32, 40, 64, 255, 0x10000,
					 0x7fffffff, 0x80000000u, 0xffffffffu};

	setup_default();
	memset(msgbuf, 0x5a, sizeof(msgbuf));
	for (uint32_t i = 0; i < HV_ARRAY_SIZE(types); i++) {
		memcpy(msgbuf, &types[i], 4);
		for (uint32_t size = 8; size <= 240; size += 232) {
			posts++;
			bad += hostile_post_msg(msgbuf, size) != 0;
		}
	}
	hv_sync(0x101, posts, bad);
	return finish(true);
}

/* Each message type the parent handles, cut short at every length below its size (and one with
 * no header at all). SYNC 0x101 (posts). */
static int msg_short(void)
{
	static const uint32_t sizes[][2] = {
		{CHANNELMSG_INITIATE_CONTACT, 40}, {CHANNELMSG_GPADL_HEADER, 20},
		{CHANNELMSG_GPADL_BODY, 16}, {CHANNELMSG_GPADL_TEARDOWN, 16},
		{CHANNELMSG_OPENCHANNEL, 148}, {CHANNELMSG_CLOSECHANNEL, 12},
		{CHANNELMSG_RELID_RELEASED, 12},
	};
	uint32_t posts = 0;

	setup_default();
	for (uint32_t i = 0; i < HV_ARRAY_SIZE(sizes); i++) {
		memset(msgbuf, 0, sizeof(msgbuf));
		memcpy(msgbuf, &sizes[i][0], 4);
		memcpy(msgbuf + 8, &victim->relid, 4);
		for (uint32_t len = 0; len < sizes[i][1]; len += (len < 24 ? 1 : 16)) {
			hostile_post_msg(msgbuf, len);
			posts++;
		}
	}
	hv_sync(0x101, posts);
	return finish(true);
}

/* HvPostMessage with payload_size past 240 (the parent refuses it: INVALID_PARAMETER) and with
 * bad message types and connection ids. SYNC 0x101 (statuses as a bit mask of the cases that
 * were refused as expected). */
static int msg_bad_posts(void)
{
	uint32_t req[2] = {CHANNELMSG_REQUESTOFFERS, 0}, m = 0, bit = 0;
	static const uint32_t conns[] = {0, 2, 3, 5, 0x2001, 0xffffffffu};

	setup_default();
#define EXPECT(call, status) do { if ((call) == (status)) m |= 1u << bit; bit++; } while (0)
	EXPECT(hostile_post(vmbus_conn.msg_conn_id, 1, req, 241), HV_STATUS_INVALID_PARAMETER);
	EXPECT(hostile_post(vmbus_conn.msg_conn_id, 1, req, 4080), HV_STATUS_INVALID_PARAMETER);
	EXPECT(hostile_post(vmbus_conn.msg_conn_id, 1, req, 0xffffffffu),
	       HV_STATUS_INVALID_PARAMETER);
	EXPECT(hostile_post(vmbus_conn.msg_conn_id, 0, req, 8), HV_STATUS_INVALID_PARAMETER);
	EXPECT(hostile_post(vmbus_conn.msg_conn_id, 0x80000000u, req, 8),
	       HV_STATUS_INVALID_PARAMETER);
	EXPECT(hostile_post(vmbus_conn.msg_conn_id, 2, req, 8), HV_STATUS_SUCCESS); /* not VMBus */
	for (uint32_t i = 0; i < HV_ARRAY_SIZE(conns); i++)
		EXPECT(hostile_post(conns[i], 1, req, 8), HV_STATUS_INVALID_CONNECTION_ID);
	/* a channel message on the other VMBus connection than the one negotiated */
	EXPECT(hostile_post(vmbus_conn.msg_conn_id == 4 ? 1 : 4, 1, req, 8), HV_STATUS_SUCCESS);
#undef EXPECT
	hv_sync(0x101, m, bit);
	HV_ASSERT_EQ(m, (1u << bit) - 1, "statuses");
	return finish(true);
}

/* Channel messages naming relids that do not exist, channels in the wrong state, a second
 * INITIATE_CONTACT, opens with bad parameters (on the spare channel), then a proper open of the
 * spare. SYNC 0x101 (open results that failed, version_supported of the second contact, spare
 * echoes). */
static int msg_state_abuse(void)
{
	struct vmbus_channel *spare;
	uint32_t *w = (uint32_t *)msgbuf, fails = 0, gpadl, ok;
	static const uint32_t relids[] = {0, 9999, 0xffffffffu};
	int rc;

	setup_default();
	spare = vmbus_find_channel(&HOSTILE_ECHO_GUID, 2);
	HV_ASSERT(spare != NULL, "msg_state_abuse needs a third echo offer");
	for (uint32_t i = 0; i < HV_ARRAY_SIZE(relids); i++) {
		uint32_t t[] = {CHANNELMSG_OPENCHANNEL, CHANNELMSG_CLOSECHANNEL,
				CHANNELMSG_RELID_RELEASED, CHANNELMSG_GPADL_TEARDOWN};

		for (uint32_t k = 0; k < HV_ARRAY_SIZE(t); k++) {
			memset(msgbuf, 0, sizeof(msgbuf));
			w[0] = t[k];
			w[2] = relids[i];
			w[3] = victim->gpadl;
			hostile_post_msg(msgbuf, t[k] == CHANNELMSG_OPENCHANNEL ? 148 : 16);
		}
	}
	/* open the open victim again; close the closed spare; release relids never rescinded */
	memset(msgbuf, 0, sizeof(msgbuf));
	w[0] = CHANNELMSG_OPENCHANNEL;
	w[2] = victim->relid;
	w[3] = 77;
	w[4] = victim->gpadl;
	w[6] = 5;
	hostile_post_msg(msgbuf, 148);
	fails += hostile_msgs.last_open_status != 0;
	w[0] = CHANNELMSG_CLOSECHANNEL;
	w[2] = spare->relid;
	hostile_post_msg(msgbuf, 12);
	w[0] = CHANNELMSG_RELID_RELEASED;
	w[2] = victim->relid;
	hostile_post_msg(msgbuf, 12);
	/* a second INITIATE_CONTACT */
	memset(msgbuf, 0, sizeof(msgbuf));
	w[0] = CHANNELMSG_INITIATE_CONTACT;
	w[2] = vmbus_conn.version;
	msgbuf[16] = VMBUS_MESSAGE_SINT;   /* msg_sint */
	hostile_post_msg(msgbuf, 40);
	/* opens of the spare with bad parameters, on a real GPADL of 2 x 5 pages */
	rc = vmbus_gpadl_create(spare, vm_spare_area, sizeof(vm_spare_area), &gpadl);
	HV_ASSERT_EQ(rc, 0, "spare GPADL");
	{
		uint32_t bad[][3] = {	/* gpadl, target_vp, downstream page offset */
			{0x424242, 0, 5}, {gpadl, 0, 0}, {gpadl, 0, 1}, {gpadl, 0, 9}, {gpadl, 0, 10},
			{gpadl, 0, 0xffffffffu}, {gpadl, 64, 5}, {gpadl, 0xffffffffu, 5},
		};

		for (uint32_t i = 0; i < HV_ARRAY_SIZE(bad); i++) {
			memset(msgbuf, 0, sizeof(msgbuf));
			w[0] = CHANNELMSG_OPENCHANNEL;
			w[2] = spare->relid;
			w[3] = spare->relid;
			w[4] = bad[i][0];
			w[5] = bad[i][1];
			w[6] = bad[i][2];
			hostile_post_msg(msgbuf, 148);
			fails += hostile_msgs.last_open_status != 0;
		}
	}
	HV_ASSERT_EQ(vmbus_gpadl_teardown(spare, gpadl), 0);
	/* and now properly: the spare opens and echoes */
	rc = vmbus_channel_open(spare, vm_spare_area, 5, 5);
	HV_ASSERT_EQ(rc, 0, "spare open after the bad ones");
	ok = hostile_echo(spare, 4, 100, 5000);
	HV_ASSERT_EQ(vmbus_channel_close(spare), 0);
	hv_sync(0x101, fails, hostile_msgs.last_version_supported, ok);
	HV_ASSERT_EQ(fails, 9, "OPENCHANNEL_RESULT failures");
	HV_ASSERT_EQ(ok, 4);
	return finish(true);
}

/* ---- floods ------------------------------------------------------------------------------------- */

static int flood(uint32_t kind, uint32_t dflt)
{
	struct flood *f = &vm_flood;

	setup_default();
	memset(f, 0, sizeof(*f));
	f->kind = kind;
	f->count = (uint32_t)hv_arg_u64("count", dflt);
	f->conn = vmbus_conn.msg_conn_id;
	f->relid = victim->relid;
	f->kick_conn = victim->connection_id;
	f->seed = hv_arg_u64("seed", 1);
	run_flood(f);
	hv_sync(0x101, f->ok, f->refused, f->last_status);
	return finish(true);
}

/* 20000 HvPostMessages of garbage channel messages from ring 3. */
static int msg_post_flood(void) { return flood(FLOOD_GARBAGE, 20000); }
/* HvPostMessage inputs at GPAs outside RAM, straddling pages, misaligned, oversized, ... */
static int msg_bad_inputs_flood(void) { return flood(FLOOD_BAD_INPUTS, 5000); }
/* HvSignalEvent (port 0xe4) on 20000 unknown connection ids, and 200000 kicks of the victim. */
static int signal_unknown_flood(void) { return flood(FLOOD_SIGNALS, 20000); }

/* An interrupt storm: REQUESTOFFERS from ring 3 (the parent answers each with every offer:
 * SynIC messages and SINT interrupts as fast as it can), SINT2 rewritten thousands of times
 * (masked, unmasked, other vectors: the C planes' MSI routes follow every write) and EOM
 * thousands of times. SYNC 0x101 (REQUESTOFFERS accepted, SINT writes, EOMs). */
static int irq_storm(void)
{
	struct flood *f = &vm_flood;
	uint32_t writes = (uint32_t)hv_arg_u64("sint_writes", 2000), i;
	uint64_t sint;

	setup_default();
	memset(f, 0, sizeof(*f));
	f->kind = FLOOD_OFFERS;
	f->count = (uint32_t)hv_arg_u64("count", 2000);
	f->conn = vmbus_conn.msg_conn_id;
	run_flood(f);
	sint = hv_rdmsr(HV_X64_MSR_SINT0 + VMBUS_MESSAGE_SINT);
	for (i = 0; i < writes; i++) {
		uint64_t v = (i & 1) ? (sint | HV_SYNIC_SINT_MASKED) : ((sint & ~0xffull) | (0x50 | (i & 6)));

		hostile_wrmsr(HV_X64_MSR_SINT0 + VMBUS_MESSAGE_SINT, v);
		hostile_wrmsr(HV_X64_MSR_EOM, 0);
	}
	hv_wrmsr(HV_X64_MSR_SINT0 + VMBUS_MESSAGE_SINT, sint);
	hostile_drain();
	hv_sync(0x101, f->ok, writes, writes);
	return finish(true);
}

const struct hostile_attack hostile_attacks[] = {
	{"ring_windex_oob", ring_windex_oob},
	{"ring_windex_unaligned", ring_windex_unaligned},
	{"ring_rindex_oob", ring_rindex_oob},
	{"ring_len8_past_end", ring_len8_past_end},
	{"ring_offset8_small", ring_offset8_small},
	{"ring_offset8_past_len8", ring_offset8_past_len8},
	{"ring_bad_type", ring_bad_type},
	{"ring_bad_flags", ring_bad_flags},
	{"ring_gpa_ranges_bad", ring_gpa_ranges_bad},
	{"ring_xfer_ranges_bad", ring_xfer_ranges_bad},
	{"ring_zero_payload", ring_zero_payload},
	{"ring_wrap_and_max", ring_wrap_and_max},
	{"ring_oversized_reply", ring_oversized_reply},
	{"ring_pending_garbage", ring_pending_garbage},
	{"ring_double_fetch", ring_double_fetch},
	{"gpadl_pfn_beyond_ram", gpadl_pfn_beyond_ram},
	{"gpadl_bad_ranges", gpadl_bad_ranges},
	{"gpadl_teardown_open", gpadl_teardown_open},
	{"gpadl_thousands", gpadl_thousands},
	{"msg_unknown_types", msg_unknown_types},
	{"msg_short", msg_short},
	{"msg_bad_posts", msg_bad_posts},
	{"msg_state_abuse", msg_state_abuse},
	{"msg_post_flood", msg_post_flood},
	{"msg_bad_inputs_flood", msg_bad_inputs_flood},
	{"signal_unknown_flood", signal_unknown_flood},
	{"irq_storm", irq_storm},
	{NULL, NULL},
};
