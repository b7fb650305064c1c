/*
 * u_demo.c - the demo image's ring-3 tasks (user-accessible): VMBus echo round trips, the storvsc
 * pattern write and read-back, and the netvsc loop answering ARP, ping and UDP echo. Ring 3 runs
 * natively on kvm_pvm (ring 0 is emulated), so the data work lives here.
 */
#include "demo.h"

struct demo_echo demo_echo;
struct demo_disk demo_disk;
struct demo_net demo_net;
struct storvsc_dev demo_storvsc;
struct netvsc demo_nv;
struct net_if demo_if;

static uint64_t mix(uint64_t x)
{
	/* splitmix64: every byte of a payload or a sector depends on where it is */
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* ------------------------------------------------------------------------------------------ */
/* VMBus echo */

static const uint32_t echo_sizes[] = { 1, 8, 63, 64, 500, 1500, 4096, DEMO_ECHO_MAX_LEN };

/* trans_id of round trip i: a tag in the high bits (bit 63 clear: the VSP answers it). */
#define DEMO_ECHO_TRANS(i) ((0xdeULL << 48) | (i))

static void echo_fill(uint8_t *p, uint32_t len, uint64_t i)
{
	for (uint32_t j = 0; j < len; j += 8) {
		uint64_t w = mix(i << 20 | j);
		uint32_t n = len - j < 8 ? len - j : 8;

		memcpy(p + j, &w, n);
	}
}

int demo_echo_task(void *arg)
{
	struct demo_echo *e = arg;
	struct vmbus_rings *r = &e->rings;

	/* Polling: the host need not interrupt us for echoes. */
	hvr_in_set_interrupt_mask(&r->in, 1);
	e->min_cycles = ~0ULL;
	for (uint32_t i = 0; i < e->count; i++) {
		uint32_t len = echo_sizes[i % HV_ARRAY_SIZE(echo_sizes)];
		uint64_t trans = DEMO_ECHO_TRANS(i), t0, t;
		struct hvr_pkt pkt;
		long d;
		int rc;

		echo_fill(e->tx, len, i);
		t0 = demo_rdtsc();
		rc = vmbus_rings_write(r, e->tx, len, trans, 0);
		HV_ASSERT_EQ(rc, HVR_OK, "demo: echo %u: writing %u bytes", i, len);
		rc = vmbus_rings_commit(r);
		HV_ASSERT(rc >= 0, "demo: echo %u: send ring broken (%u)", i, r->out.r.broken);
		if (rc == 1)
			vmbus_rings_kick(r);
		while ((rc = vmbus_rings_read(r, &pkt)) == HVR_EMPTY) {
			hv_pause();
			HV_ASSERT(!e->stall_cycles || demo_rdtsc() - t0 < e->stall_cycles,
				  "demo: echo %u: no answer from the echo VSP", i);
		}
		t = demo_rdtsc() - t0;
		HV_ASSERT_EQ(rc, HVR_OK, "demo: echo %u: receive ring broken (%u)", i,
			     r->in.r.broken);
		HV_ASSERT_EQ(pkt.type, VM_PKT_DATA_INBAND, "demo: echo %u: packet type", i);
		HV_ASSERT_EQ(pkt.trans_id, trans, "demo: echo %u: trans_id", i);
		/* VMBus lengths are in 8-byte units: the echo is our payload and its padding. */
		HV_ASSERT_EQ(pkt.payload_len, (len + 7) & ~7u, "demo: echo %u: length for %u bytes",
			     i, len);
		d = vmbus_rings_payload_cmp(r, &pkt, e->tx, len);
		HV_ASSERT(d == -1, "demo: echo %u (%u bytes): byte %ld differs from what was sent",
			  i, len, d);
		rc = vmbus_rings_release(r);
		HV_ASSERT(rc >= 0, "demo: echo %u: receive ring broken on release", i);
		if (rc == 1)
			vmbus_rings_kick(r);
		e->done++;
		e->bytes += len;
		e->sum_cycles += t;
		if (t < e->min_cycles)
			e->min_cycles = t;
		if (t > e->max_cycles)
			e->max_cycles = t;
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* storvsc: the 8-byte word at disk byte offset `off` is mix(seed << 40 ^ off). */

static uint64_t disk_word(uint64_t seed, uint64_t off)
{
	return mix(seed << 40 ^ off);
}

static void disk_fill(uint64_t *w, uint64_t off, uint32_t bytes, uint64_t seed)
{
	for (uint32_t k = 0; k < bytes / 8; k++)
		w[k] = disk_word(seed, off + 8ULL * k);
}

/* One synchronous request of the pattern pass (a chunk read or written, or the flush); a
 * failure leaves its status and completion in k->error and k->failed for the host's report. */
static int disk_request(struct demo_disk *k, enum storvsc_op op, uint64_t lba, uint32_t n)
{
	int rc;

	memset(&k->failed, 0, sizeof(k->failed));
	if (op == STORVSC_OP_WRITE)
		rc = storvsc_write(k->dev, lba, n, k->buf, &k->failed);
	else if (op == STORVSC_OP_READ)
		rc = storvsc_read(k->dev, lba, n, k->buf, &k->failed);
	else
		rc = storvsc_flush(k->dev, &k->failed);
	if (rc)
		k->error = rc;
	return rc;
}

int demo_disk_write_task(void *arg)
{
	struct demo_disk *k = arg;
	struct storvsc_dev *d = k->dev;
	uint32_t per = DEMO_DISK_CHUNK / d->block_size;
	uint64_t t0 = demo_rdtsc();

	for (uint64_t lba = 0; lba < k->blocks; lba += per) {
		uint32_t n = k->blocks - lba < per ? (uint32_t)(k->blocks - lba) : per;

		disk_fill((uint64_t *)(void *)k->buf, lba * d->block_size, n * d->block_size,
			  k->seed);
		if (disk_request(k, STORVSC_OP_WRITE, lba, n))
			return -1;
		k->writes++;
	}
	if (disk_request(k, STORVSC_OP_FLUSH, 0, 0))
		return -1;
	k->flushes++;
	k->write_cycles = demo_rdtsc() - t0;
	return 0;
}

int demo_disk_check_task(void *arg)
{
	struct demo_disk *k = arg;
	struct storvsc_dev *d = k->dev;
	uint32_t per = DEMO_DISK_CHUNK / d->block_size;
	uint64_t t0 = demo_rdtsc();

	for (uint64_t lba = 0; lba < k->blocks; lba += per) {
		uint32_t n = k->blocks - lba < per ? (uint32_t)(k->blocks - lba) : per;
		const uint64_t *w = (const uint64_t *)(const void *)k->buf;
		uint64_t base = lba * d->block_size;

		if (disk_request(k, STORVSC_OP_READ, lba, n))
			return -1;
		k->reads++;
		for (uint32_t i = 0; i < n * d->block_size / 8; i++) {
			uint64_t want = disk_word(k->seed, base + 8ULL * i);

			if (w[i] != want) {
				uint64_t off = base + 8ULL * i +
					       (uint64_t)__builtin_ctzll(w[i] ^ want) / 8;

				k->bad_lba = off / d->block_size;
				k->bad_byte = (uint32_t)(off % d->block_size);
				k->bad_got = w[i];
				k->bad_want = want;
				return DEMO_MISMATCH;
			}
		}
	}
	k->read_cycles = demo_rdtsc() - t0;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* netvsc */

void demo_net_rx(void *ctx, const uint8_t *frame, uint32_t len)
{
	net_input(ctx, frame, len);
}

/* Port 7: the datagram back to its sender, byte for byte. */
static void on_echo(struct net_if *nif, const struct net_udp_meta *m, const uint8_t *data,
		    uint32_t len, void *ctx)
{
	struct demo_net *n = ctx;

	if (net_udp_send(nif, m->src_ip, DEMO_NET_ECHO_PORT, m->src_port, data, len) >= 0) {
		n->echoed++;
		n->echo_bytes += len;
	} else {
		n->echo_failed++;
	}
}

/* Port 9: "STOP" ends the network part. */
static void on_stop(struct net_if *nif, const struct net_udp_meta *m, const uint8_t *data,
		    uint32_t len, void *ctx)
{
	struct demo_net *n = ctx;

	(void)nif;
	(void)m;
	if (len == 4 && !memcmp(data, "STOP", 4))
		n->stop = 1;
}

void demo_net_bind(struct demo_net *n)
{
	HV_ASSERT_EQ(net_udp_bind(n->nif, DEMO_NET_ECHO_PORT, on_echo, n), 0);
	HV_ASSERT_EQ(net_udp_bind(n->nif, DEMO_NET_STOP_PORT, on_stop, n), 0);
}

/* Poll while there is traffic; after idle_cycles without any, return NETVSC_IDLE so that
 * netvsc_run_user() sleeps on the channel interrupt (NAPI-like). */
int demo_net_task(void *arg)
{
	struct demo_net *n = arg;
	uint64_t now = demo_rdtsc(), busy = now, next_tick = now + n->tick_cycles;

	n->wakeups++;
	hvr_in_set_interrupt_mask(&n->nv->rings.in, 1);
	while (!n->stop) {
		int got = netvsc_poll(n->nv);

		HV_ASSERT(got >= 0, "demo: netvsc_poll: %d (rings broken: %u/%u)", got,
			  n->nv->rings.out.r.broken, n->nv->rings.in.r.broken);
		now = demo_rdtsc();
		if (got > 0)
			busy = now;
		if (now >= next_tick) {
			net_tick(n->nif);
			netvsc_flush(n->nv);
			next_tick = now + n->tick_cycles;
		}
		if (now >= n->deadline)
			return DEMO_NET_DEADLINE;
		if (now - busy > n->idle_cycles)
			return NETVSC_IDLE;
		if (got == 0)
			hv_pause();
	}
	netvsc_flush(n->nv);
	return 0;
}
