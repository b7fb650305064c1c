/*
 * u_fill.c - disk_fill's I/O loop (user-accessible: runs as a ring-3 task, or in ring 0).
 */
#include "fill.h"

struct storvsc_dev fill_dev;
struct fill_run fill_user_run;

static struct storvsc_completion comps[64];
static uint16_t free_bufs[STORVSC_MAX_QD];

/* Sector `lba` as disk_fill defines it: LBA, seed (little-endian u64s), then zeros. The rest of
 * every buffer was zeroed once; only the first 16 bytes of each sector change. */
static void stamp(uint8_t *buf, uint64_t lba, uint32_t sectors, uint64_t seed)
{
	for (uint32_t s = 0; s < sectors; s++, lba++) {
		__builtin_memcpy(buf + (size_t)s * STORVSC_SECTOR, &lba, 8);
		__builtin_memcpy(buf + (size_t)s * STORVSC_SECTOR + 8, &seed, 8);
	}
}

int fill_task(void *arg)
{
	struct fill_run *f = arg;
	struct storvsc_dev *d = f->d;
	uint64_t total = d->blocks * (d->block_size / STORVSC_SECTOR); /* 512-byte sectors */
	uint64_t next = 0, t0 = storvsc_rdtsc();
	uint32_t per_io = f->chunk / STORVSC_SECTOR, nfree = f->qd;
	struct storvsc_completion c;
	char text[200];
	int rc;

	for (uint32_t i = 0; i < f->qd; i++) {
		free_bufs[i] = (uint16_t)i;
		memset(f->bufs + (size_t)i * f->stride + f->buf_offset, 0, f->chunk);
	}
	while (next < total || d->inflight) {
		while (next < total && nfree) {
			uint32_t idx = free_bufs[nfree - 1];
			uint8_t *buf = f->bufs + (size_t)idx * f->stride + f->buf_offset;
			uint32_t n = total - next < per_io ? (uint32_t)(total - next) : per_io;
			uint32_t spb = d->block_size / STORVSC_SECTOR;

			stamp(buf, next, n, f->seed);
			rc = storvsc_submit(d, STORVSC_OP_WRITE, next / spb, n / spb, buf, 0, idx);
			if (rc == STORVSC_EAGAIN)
				break;
			HV_ASSERT(rc >= 0, "disk_fill: WRITE at sector %llu: %s",
				  (unsigned long long)next, storvsc_strerror(rc));
			nfree--;
			next += n;
		}
		rc = storvsc_wait(d, comps, HV_ARRAY_SIZE(comps));
		HV_ASSERT(rc > 0, "disk_fill: waiting (%u in flight): %s", d->inflight,
			  storvsc_strerror(rc));
		for (int i = 0; i < rc; i++) {
			if (comps[i].status) {
				storvsc_describe(&comps[i], text, sizeof(text));
				HV_ASSERT(0, "disk_fill: %s", text);
			}
			free_bufs[nfree++] = (uint16_t)comps[i].cookie;
			f->ios++;
			f->bytes += comps[i].len;
			f->sectors += comps[i].len / STORVSC_SECTOR;
		}
	}
	memset(&c, 0, sizeof(c));
	rc = storvsc_flush(d, &c);
	if (rc) {
		if (c.opcode) /* the flush completed, with an error */
			storvsc_describe(&c, text, sizeof(text));
		else
			hv_snprintf(text, sizeof(text), "SYNCHRONIZE CACHE: %s",
				    storvsc_strerror(rc));
		HV_ASSERT(0, "disk_fill: %s", text);
	}
	f->cycles = storvsc_rdtsc() - t0;
	hv_sync(2, f->sectors, f->bytes, f->ios, 1);
	return 0;
}
