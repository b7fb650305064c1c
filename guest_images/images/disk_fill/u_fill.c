/*
 * u_fill.c - disk_fill's task (user-accessible: runs as a ring-3 task, or in ring 0): the sector
 * format stamped into every WRITE of a blk_job_sweep, then the flush.
 */
#include "fill.h"

struct blkdev fill_dev;
struct fill_run fill_user_run;

/* Sector `lba` as disk_fill defines it: LBA, seed (little-endian u64s), then zeros. The rest of
 * every buffer was zeroed once; only the first 16 bytes of each sector change. */
static void stamp(void *arg, uint8_t *buf, uint64_t lba, uint32_t sectors)
{
	const struct fill_run *f = arg;

	for (uint32_t s = 0; s < sectors; s++, lba++) {
		__builtin_memcpy(buf + (size_t)s * BLK_SECTOR, &lba, 8);
		__builtin_memcpy(buf + (size_t)s * BLK_SECTOR + 8, &f->seed, 8);
	}
}

int fill_task(void *arg)
{
	struct fill_run *f = arg;
	struct blkdev *d = f->j.d;
	const struct blk_sweep sweep = { .op = BLK_OP_WRITE, .who = "disk_fill", .prepare = stamp,
					 .arg = f };
	struct blk_completion c;
	char text[200];
	int rc;

	for (uint32_t i = 0; i < f->j.qd; i++)
		memset(blk_job_buf(&f->j, i), 0, f->j.chunk);
	blk_job_sweep(&f->j, &sweep);
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
	hv_sync(2, f->j.sectors, f->j.bytes, f->j.ios, 1);
	return 0;
}
