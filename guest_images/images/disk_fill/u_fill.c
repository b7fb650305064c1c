/*
 * u_fill.c - disk_fill's I/O loop (user-accessible: runs as a ring-3 task, or in ring 0).
 */
#include "fill.h"

struct blkdev fill_dev;
struct fill_run fill_user_run;

static struct blk_completion comps[64];
static uint16_t free_bufs[BLK_MAX_QD];

/* Sector `lba` as disk_fill defines it: LBA, seed (little-endian u64s), then zeros. The rest of
 * every buffer was zeroed once; only the first 16 bytes of each sector change. */
static void stamp(uint8_t *buf, uint64_t lba, uint32_t sectors, uint64_t seed)
{
	for (uint32_t s = 0; s < sectors; s++, lba++) {
		__builtin_memcpy(buf + (size_t)s * BLK_SECTOR, &lba, 8);
		__builtin_memcpy(buf + (size_t)s * BLK_SECTOR + 8, &seed, 8);
	}
}

int fill_task(void *arg)
{
	struct fill_run *f = arg;
	struct blkdev *d = f->j.d;
	uint64_t total = d->blocks * (d->block_size / BLK_SECTOR); /* 512-byte sectors */
	uint64_t next = 0, t0 = blk_rdtsc();
	uint32_t per_io = f->j.chunk / BLK_SECTOR, nfree = f->j.qd;
	struct blk_completion c;
	char text[200];
	int rc;

	for (uint32_t i = 0; i < f->j.qd; i++) {
		free_bufs[i] = (uint16_t)i;
		memset(blk_job_buf(&f->j, i), 0, f->j.chunk);
	}
	while (next < total || blk_counters(d)->inflight) {
		while (next < total && nfree) {
			uint32_t idx = free_bufs[nfree - 1];
			uint8_t *buf = blk_job_buf(&f->j, idx);
			uint32_t n = total - next < per_io ? (uint32_t)(total - next) : per_io;
			uint32_t spb = d->block_size / BLK_SECTOR;

			stamp(buf, next, n, f->seed);
			rc = blk_submit(d, BLK_OP_WRITE, next / spb, n / spb, buf, idx);
			if (rc == BLK_EAGAIN)
				break;
			HV_ASSERT(rc >= 0, "disk_fill: WRITE at sector %llu: %s",
				  (unsigned long long)next, blk_strerror(d, rc));
			nfree--;
			next += n;
		}
		rc = blk_wait(d, comps, HV_ARRAY_SIZE(comps));
		HV_ASSERT(rc > 0, "disk_fill: waiting (%u in flight): %s", blk_counters(d)->inflight,
			  blk_strerror(d, rc));
		for (int i = 0; i < rc; i++) {
			if (comps[i].status) {
				blk_describe(d, &comps[i], text, sizeof(text));
				HV_ASSERT(0, "disk_fill: %s", text);
			}
			free_bufs[nfree++] = (uint16_t)comps[i].cookie;
			f->ios++;
			f->bytes += comps[i].len;
			f->sectors += comps[i].len / BLK_SECTOR;
		}
	}
	memset(&c, 0, sizeof(c));
	rc = blk_flush(d, &c);
	if (rc) {
		bool completed = d->kind == BLK_STORVSC ?
			c.raw && ((const struct storvsc_completion *)c.raw)->opcode : c.op;

		if (completed) /* the flush completed, with an error */
			blk_describe(d, &c, text, sizeof(text));
		else
			hv_snprintf(text, sizeof(text), "%s: %s", d->kind == BLK_STORVSC ?
				    "SYNCHRONIZE CACHE" : "FLUSH", blk_strerror(d, rc));
		HV_ASSERT(0, "disk_fill: %s", text);
	}
	f->cycles = blk_rdtsc() - t0;
	hv_sync(2, f->sectors, f->bytes, f->ios, 1);
	return 0;
}
