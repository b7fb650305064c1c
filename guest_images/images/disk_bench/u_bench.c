/*
 * u_bench.c - disk_bench's I/O loop over any block device (include/blkdev.h). User-accessible so
 * it runs as a ring-3 task (natively on kvm_pvm) polling the device; the same code runs in ring 0
 * with interrupt-driven completions when the command line says ring=0.
 */
#include "bench.h"

struct blkdev bench_dev;
struct bench_run bench_user_run;

#define REAP_MAX 64
static struct blk_completion comps[REAP_MAX];
static uint16_t free_bufs[BLK_MAX_QD];

static const char *const mode_names[] = { "?", "read", "write", "randread", "randwrite" };

static uint64_t next_rand(struct bench_run *b)
{
	/* xorshift64* */
	uint64_t x = b->rand_state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	b->rand_state = x;
	return x * 0x2545f4914f6cdd1dULL;
}

/* The data of sector `lba`: 64 words derived from (pattern seed, lba). */
static void fill_sectors(const struct bench_run *b, uint8_t *buf, uint64_t lba, uint32_t sectors)
{
	for (uint32_t s = 0; s < sectors; s++) {
		uint64_t w = bench_mix(b->pattern_seed ^ ((lba + s) * 0xd1b54a32d192ed03ULL));
		uint64_t *p = (uint64_t *)(void *)(buf + (size_t)s * BLK_SECTOR);

		for (uint32_t i = 0; i < BLK_SECTOR / 8; i++, w += 0x9e3779b97f4a7c15ULL)
			__builtin_memcpy(&p[i], &w, 8); /* buffers may be unaligned (buf_offset) */
	}
}

static void check_sectors(const struct bench_run *b, const uint8_t *buf, uint64_t lba,
			  uint32_t sectors, const char *what)
{
	for (uint32_t s = 0; s < sectors; s++) {
		uint64_t w = bench_mix(b->pattern_seed ^ ((lba + s) * 0xd1b54a32d192ed03ULL));
		const uint8_t *p = buf + (size_t)s * BLK_SECTOR;

		for (uint32_t i = 0; i < BLK_SECTOR / 8; i++, w += 0x9e3779b97f4a7c15ULL) {
			uint64_t got;

			__builtin_memcpy(&got, p + 8 * i, 8);
			HV_ASSERT(got == w, "disk_bench: %s: LBA %llu byte %u: read 0x%016llx, wrote "
				  "0x%016llx", what, (unsigned long long)(lba + s), 8 * i,
				  (unsigned long long)got, (unsigned long long)w);
		}
	}
}

static uint64_t cycles_to_ns(const struct bench_run *b, uint64_t cycles)
{
	uint64_t khz = b->tsc_hz / 1000;

	return khz ? cycles * 1000000ULL / khz : cycles;
}

static unsigned hist_bucket(uint64_t v)
{
	unsigned e;

	if (v < (1u << HIST_SUB_BITS))
		return (unsigned)v;
	e = 63 - (unsigned)__builtin_clzll(v);
	return (e - HIST_SUB_BITS + 1) * (1u << HIST_SUB_BITS) +
	       (unsigned)((v >> (e - HIST_SUB_BITS)) & ((1u << HIST_SUB_BITS) - 1));
}

/* The middle of bucket k, in the histogram's unit. */
static uint64_t hist_value(unsigned k)
{
	unsigned sub = k & ((1u << HIST_SUB_BITS) - 1), e;

	if (k < (1u << HIST_SUB_BITS))
		return k;
	e = k / (1u << HIST_SUB_BITS) + HIST_SUB_BITS - 1;
	return (((uint64_t)(1u << HIST_SUB_BITS) + sub) << (e - HIST_SUB_BITS)) +
	       ((1ULL << (e - HIST_SUB_BITS)) >> 1);
}

static uint64_t percentile(const struct bench_run *b, unsigned pct)
{
	uint64_t want = (b->ios * pct + 99) / 100, seen = 0;

	for (unsigned k = 0; k < HIST_BUCKETS; k++) {
		seen += b->hist[k];
		if (want && seen >= want) {
			uint64_t v = hist_value(k);
			/* never outside what was measured */
			return v < b->lat_min_ns ? b->lat_min_ns : v > b->lat_max_ns ? b->lat_max_ns : v;
		}
	}
	return b->lat_max_ns;
}

static void assert_ok(const struct blkdev *d, const struct blk_completion *c, const char *what)
{
	char text[200];

	if (c->status == BLK_OK)
		return;
	blk_describe(d, c, text, sizeof(text));
	HV_ASSERT(0, "disk_bench: %s: %s", what, text);
}

static bool is_read(const struct bench_run *b)
{
	return b->mode == MODE_READ || b->mode == MODE_RANDREAD;
}

/*
 * Keep `qd` I/Os of one kind in flight over `n` units chosen by `pick` until `n` completed (or,
 * timed, until the deadline passed), calling `done` for each completion.
 */
struct pass {
	enum blk_op op;
	bool timed;
	bool random;
	uint64_t n;            /* I/Os to complete (0 with timed: until the deadline) */
	uint64_t deadline;     /* TSC (timed) */
	uint64_t next_unit;    /* sequential passes */
	uint64_t issued, completed;
	const char *what;
};

static uint64_t pick_unit(struct bench_run *b, struct pass *p)
{
	if (p->random)
		return next_rand(b) % b->units;
	return p->next_unit++ % b->units;
}

static void run_pass(struct bench_run *b, struct pass *p, bool read_back)
{
	struct blkdev *d = b->d;
	uint32_t nfree = b->qd;
	uint32_t sectors = b->blocks_per_io * (d->block_size / BLK_SECTOR);
	int rc;

	for (uint32_t i = 0; i < b->qd; i++)
		free_bufs[i] = (uint16_t)i;
	for (;;) {
		bool stop = (p->n && p->issued >= p->n) ||
			    (p->timed && blk_rdtsc() >= p->deadline);

		while (!stop && nfree) {
			uint32_t idx = free_bufs[nfree - 1];
			uint8_t *buf = b->bufs + (size_t)idx * b->stride + b->buf_offset;
			uint64_t unit;

			if (read_back) {
				/* the next written unit */
				while (p->next_unit < b->units &&
				       !(b->written[p->next_unit / 8] & (1u << (p->next_unit % 8))))
					p->next_unit++;
				if (p->next_unit >= b->units) {
					stop = true;
					break;
				}
				unit = p->next_unit++;
			} else {
				unit = pick_unit(b, p);
			}
			if (p->op == BLK_OP_WRITE && b->verify)
				fill_sectors(b, buf, unit * b->blocks_per_io *
					     (d->block_size / BLK_SECTOR), sectors);
			rc = blk_submit(d, p->op, unit * b->blocks_per_io, b->blocks_per_io, buf,
					(uint64_t)idx | unit << 16);
			if (rc == BLK_EAGAIN) {
				if (!p->random)
					p->next_unit--; /* this unit again, after some completions */
				break;
			}
			HV_ASSERT(rc >= 0, "disk_bench: %s: submit of unit %llu: %s", p->what,
				  (unsigned long long)unit, blk_strerror(d, rc));
			nfree--;
			p->issued++;
			stop = p->n && p->issued >= p->n;
		}
		if (stop && !blk_counters(d)->inflight)
			break;
		rc = blk_wait(d, comps, REAP_MAX);
		HV_ASSERT(rc >= 0, "disk_bench: %s: waiting for completions (%u in flight): %s",
			  p->what, blk_counters(d)->inflight, blk_strerror(d, rc));
		HV_ASSERT(rc > 0 || stop, "disk_bench: %s: nothing in flight and the send ring full",
			  p->what);
		for (int i = 0; i < rc; i++) {
			const struct blk_completion *c = &comps[i];
			uint32_t idx = (uint32_t)(c->cookie & 0xffff);
			uint64_t unit = c->cookie >> 16;

			assert_ok(d, c, p->what);
			if (p->timed) {
				uint64_t ns = cycles_to_ns(b, c->t_complete - c->t_submit);

				b->ios++;
				b->bytes += c->len;
				b->lat_sum_ns += ns;
				if (ns < b->lat_min_ns)
					b->lat_min_ns = ns;
				if (ns > b->lat_max_ns)
					b->lat_max_ns = ns;
				b->hist[hist_bucket(ns)]++;
			}
			if (c->op == BLK_OP_READ && b->verify)
				check_sectors(b, c->buf, c->lba * (d->block_size / BLK_SECTOR),
					      sectors, p->what);
			if (c->op == BLK_OP_WRITE && b->written)
				b->written[unit / 8] |= (uint8_t)(1u << (unit % 8));
			free_bufs[nfree++] = (uint16_t)idx;
			p->completed++;
		}
	}
}

static void print_fixed3(char *out, size_t n, uint64_t milli)
{
	hv_snprintf(out, n, "%llu.%03llu", (unsigned long long)(milli / 1000),
		    (unsigned long long)(milli % 1000));
}

static void print_fixed6(char *out, size_t n, uint64_t micro)
{
	hv_snprintf(out, n, "%llu.%06llu", (unsigned long long)(micro / 1000000),
		    (unsigned long long)(micro % 1000000));
}

int bench_task(void *arg)
{
	struct bench_run *b = arg;
	struct blkdev *d = b->d;
	const struct blk_counters *k = blk_counters(d);
	uint64_t kicks0, waits0, polls0, full0, intr0, supp0, t0, ns;
	char secs[32], mbs[32], mean[32], p50[32], p99[32], maxs[32];
	struct pass p;
	struct blk_completion c;
	int rc;

	if (is_read(b) && b->verify) {
		/* Known contents first (not timed): every unit of the span, in order. */
		memset(&p, 0, sizeof(p));
		p.op = BLK_OP_WRITE;
		p.n = b->units;
		p.what = "prefill";
		run_pass(b, &p, false);
		rc = blk_flush(d, &c);
		HV_ASSERT(rc == 0, "disk_bench: prefill flush: %s", blk_strerror(d, rc));
		b->prefill_ios = p.completed;
	} else if (!is_read(b) && !b->verify) {
		/* Non-zero data in every buffer once (its contents do not matter). */
		for (uint32_t i = 0; i < b->qd; i++)
			fill_sectors(b, b->bufs + (size_t)i * b->stride + b->buf_offset, i,
				     b->bs / BLK_SECTOR);
	}

	memset(&p, 0, sizeof(p));
	p.op = is_read(b) ? BLK_OP_READ : BLK_OP_WRITE;
	p.random = b->mode == MODE_RANDREAD || b->mode == MODE_RANDWRITE;
	p.timed = true;
	p.n = b->count;
	p.what = mode_names[b->mode];
	b->lat_min_ns = ~0ULL;
	k = blk_counters(d);
	kicks0 = k->kicks;
	waits0 = k->waits;
	polls0 = k->polls;
	full0 = k->full;
	intr0 = k->interrupts;
	supp0 = k->kicks_suppressed;
	hv_sync(10, b->mode, b->bs, b->qd, b->count, b->seconds);
	t0 = blk_rdtsc();
	p.deadline = b->count ? ~0ULL : t0 + b->seconds * b->tsc_hz;
	run_pass(b, &p, false);
	b->cycles = blk_rdtsc() - t0;
	k = blk_counters(d);
	b->kicks = k->kicks - kicks0;
	b->waits = k->waits - waits0;
	b->polls = k->polls - polls0;
	b->full = k->full - full0;
	b->interrupts = k->interrupts - intr0;
	b->kicks_suppressed = k->kicks_suppressed - supp0;
	ns = cycles_to_ns(b, b->cycles);
	hv_sync(11, b->ios, b->bytes, ns / 1000, b->kicks, b->waits);

	if (!is_read(b) && b->verify) {
		/* Read back every unit the loop wrote. */
		rc = blk_flush(d, &c);
		HV_ASSERT(rc == 0, "disk_bench: flush: %s", blk_strerror(d, rc));
		memset(&p, 0, sizeof(p));
		p.op = BLK_OP_READ;
		p.what = "read-back";
		run_pass(b, &p, true);
		b->verified_ios = p.completed;
		b->verified_bytes = p.completed * b->bs;
	} else if (b->verify) {
		b->verified_ios = b->ios;
		b->verified_bytes = b->bytes;
	}
	k = blk_counters(d);
	hv_sync(12, b->verified_ios, b->verified_bytes, b->prefill_ios, k->unexpected,
		k->unsolicited);

	if (!ns)
		ns = 1;
	print_fixed6(secs, sizeof(secs), ns / 1000);
	print_fixed3(mbs, sizeof(mbs), b->bytes * 1000000ULL / ns);   /* 10^6 bytes/s, x1000 */
	print_fixed3(mean, sizeof(mean), b->ios ? b->lat_sum_ns / b->ios : 0);
	print_fixed3(p50, sizeof(p50), b->ios ? percentile(b, 50) : 0);
	print_fixed3(p99, sizeof(p99), b->ios ? percentile(b, 99) : 0);
	print_fixed3(maxs, sizeof(maxs), b->ios ? b->lat_max_ns : 0);
	hv_printf("{\"image\":\"disk_bench\",\"mode\":\"%s\",\"bs\":%u,\"qd\":%u,\"ring\":%u,"
		  "\"verify\":%u,\"ios\":%llu,\"bytes\":%llu,\"seconds\":%s,\"iops\":%llu,"
		  "\"mb_per_s\":%s,\"mean_us\":%s,\"p50_us\":%s,\"p99_us\":%s,\"max_us\":%s,"
		  "\"kicks\":%llu,\"waits\":%llu,\"all_waits\":%llu,\"ring_full\":%llu,\"max_inflight\":%u,"
		  "\"verified_ios\":%llu,\"protocol\":\"%s\",\"blocks\":%llu,\"buf_offset\":%u,"
		  "\"dev\":\"%s\",\"kicks_suppressed\":%llu,\"interrupts\":%llu}\n",
		  mode_names[b->mode], b->bs, b->qd, b->ring, b->verify,
		  (unsigned long long)b->ios, (unsigned long long)b->bytes, secs,
		  (unsigned long long)(b->ios * 1000000000ULL / ns), mbs, mean, p50, p99, maxs,
		  (unsigned long long)b->kicks, (unsigned long long)b->waits,
		  (unsigned long long)k->waits, (unsigned long long)b->full, k->max_inflight,
		  (unsigned long long)b->verified_ios, d->proto,
		  (unsigned long long)d->blocks, b->buf_offset, d->name,
		  (unsigned long long)b->kicks_suppressed,
		  (unsigned long long)b->interrupts);
	return 0;
}
