/*
 * u_check.c - disk_check's I/O loop (user-accessible: runs as a ring-3 task, or in ring 0).
 */
#include "check.h"

struct blkdev check_dev;
struct check_run check_user_run;

static struct blk_completion comps[64];
static uint16_t free_bufs[BLK_MAX_QD];

/* Check `sectors` sectors from `lba` against disk_fill's format; record the first mismatch. */
static void check(struct check_run *k, const uint8_t *buf, uint64_t lba, uint32_t sectors)
{
	for (uint32_t s = 0; s < sectors; s++) {
		const uint8_t *p = buf + (size_t)s * BLK_SECTOR;
		uint64_t w[2];
		uint32_t bad = 0;

		__builtin_memcpy(w, p, 16);
		/* bad = the differing byte + 1: 1 = the LBA word, 9 = the seed word */
		if (w[0] != lba + s) {
			bad = 1;
		} else if (w[1] != k->seed) {
			bad = 9;
		} else {
			const uint64_t *q = (const uint64_t *)(const void *)(p + 16);

			for (uint32_t i = 0; i < (BLK_SECTOR - 16) / 8; i++)
				if (q[i]) {
					for (uint32_t j = 0; j < 8; j++)
						if (p[16 + 8 * i + j]) {
							bad = 16 + 8 * i + j + 1;
							break;
						}
					break;
				}
		}
		if (bad && lba + s < k->bad_lba) {
			k->bad_lba = lba + s;
			k->bad_word[0] = w[0];
			k->bad_word[1] = w[1];
			k->bad_offset = bad - 1;
		}
		if (bad)
			return;
	}
}

int check_task(void *arg)
{
	struct check_run *k = arg;
	struct blkdev *d = k->j.d;
	uint64_t total = d->blocks * (d->block_size / BLK_SECTOR);
	uint64_t next = 0, t0 = blk_rdtsc();
	uint32_t per_io = k->j.chunk / BLK_SECTOR, nfree = k->j.qd, spb;
	char text[200];
	int rc;

	spb = d->block_size / BLK_SECTOR;
	k->bad_lba = ~0ULL;
	for (uint32_t i = 0; i < k->j.qd; i++)
		free_bufs[i] = (uint16_t)i;
	/* After a mismatch nothing new is read; what is in flight (lower LBAs among it) is still
	 * checked, so the report names the lowest bad sector. */
	while ((next < total && k->bad_lba == ~0ULL) || blk_counters(d)->inflight) {
		while (next < total && k->bad_lba == ~0ULL && nfree) {
			uint32_t idx = free_bufs[nfree - 1];
			uint32_t n = total - next < per_io ? (uint32_t)(total - next) : per_io;
			uint8_t *buf = blk_job_buf(&k->j, idx);

			rc = blk_submit(d, BLK_OP_READ, next / spb, n / spb, buf, idx);
			if (rc == BLK_EAGAIN)
				break;
			HV_ASSERT(rc >= 0, "disk_check: READ at sector %llu: %s",
				  (unsigned long long)next, blk_strerror(d, rc));
			nfree--;
			next += n;
		}
		rc = blk_wait(d, comps, HV_ARRAY_SIZE(comps));
		HV_ASSERT(rc > 0, "disk_check: waiting (%u in flight): %s", blk_counters(d)->inflight,
			  blk_strerror(d, rc));
		for (int i = 0; i < rc; i++) {
			const struct blk_completion *c = &comps[i];

			if (c->status) {
				blk_describe(d, c, text, sizeof(text));
				HV_ASSERT(0, "disk_check: %s", text);
			}
			check(k, c->buf, c->lba * spb, c->len / BLK_SECTOR);
			free_bufs[nfree++] = (uint16_t)c->cookie;
			k->ios++;
			k->bytes += c->len;
			k->sectors += c->len / BLK_SECTOR;
		}
	}
	k->cycles = blk_rdtsc() - t0;
	if (k->bad_lba != ~0ULL) {
		if (k->bad_offset < 8)
			HV_ASSERT(0, "disk_check: LBA %llu: bytes 0-7 hold 0x%llx (and bytes 8-15 "
				  "0x%llx), expected the LBA (seed 0x%llx)",
				  (unsigned long long)k->bad_lba, (unsigned long long)k->bad_word[0],
				  (unsigned long long)k->bad_word[1], (unsigned long long)k->seed);
		else if (k->bad_offset < 16)
			HV_ASSERT(0, "disk_check: LBA %llu: bytes 8-15 hold 0x%llx, expected the seed "
				  "0x%llx", (unsigned long long)k->bad_lba,
				  (unsigned long long)k->bad_word[1], (unsigned long long)k->seed);
		else
			HV_ASSERT(0, "disk_check: LBA %llu: byte %u is not zero",
				  (unsigned long long)k->bad_lba, k->bad_offset);
	}
	hv_sync(3, k->sectors, k->bytes, k->ios);
	return 0;
}
