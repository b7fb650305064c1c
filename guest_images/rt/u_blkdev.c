/*
 * u_blkdev.c - the block-device layer's request path, callable from either ring
 * (user-accessible): dispatch to the driver of the device's kind, storvsc completions converted,
 * errors described; a whole-disk sweep for the workloads. See include/blkdev.h.
 */
#include "blkdev.h"

#define BLK_SCRATCH 64u

uint64_t blk_tsc_cache;

static void from_storvsc(const struct storvsc_completion *s, struct blk_completion *c)
{
	c->cookie = s->cookie;
	c->lba = s->lba;
	c->t_submit = s->t_submit;
	c->t_complete = s->t_complete;
	c->buf = s->buf;
	c->len = s->len;
	c->blocks = s->blocks;
	c->status = s->status;
	c->op = s->op;
	c->dev_status = s->scsi_status;
	c->dev_status2 = s->srb_status;
	c->raw = (void *)s;
}

int blk_submit(struct blkdev *b, enum blk_op op, uint64_t lba, uint32_t blocks, void *buf,
	       uint64_t cookie)
{
	switch (b->kind) {
	case BLK_STORVSC:
		return storvsc_submit(b->u.storvsc, (enum storvsc_op)op, lba, blocks, buf, 0, cookie);
	case BLK_VIRTIO:
		return virtio_blk_submit(b->u.virtio, op, lba, blocks, buf, cookie);
	case BLK_ATA:
		return ata_submit(b->u.ata, op, lba, blocks, buf, cookie);
	case BLK_MMIO:
		return mmioblk_submit(b->u.mmio, op, lba, blocks, buf, cookie);
	}
	return BLK_EINVAL;
}

int blk_kick(struct blkdev *b)
{
	switch (b->kind) {
	case BLK_STORVSC:
		return storvsc_kick(b->u.storvsc);
	case BLK_VIRTIO:
		return virtio_blk_kick(b->u.virtio);
	case BLK_ATA:
	case BLK_MMIO:
		return 0;
	}
	return BLK_EINVAL;
}

static int reap_or_wait(struct blkdev *b, struct blk_completion *c, unsigned max, bool wait)
{
	int n;

	switch (b->kind) {
	case BLK_STORVSC: {
		struct storvsc_completion *s = b->scratch;

		if (max > BLK_SCRATCH)
			max = BLK_SCRATCH;
		n = wait ? storvsc_wait(b->u.storvsc, s, max) : storvsc_reap(b->u.storvsc, s, max);
		for (int i = 0; i < n; i++)
			from_storvsc(&s[i], &c[i]);
		return n;
	}
	case BLK_VIRTIO:
		return wait ? virtio_blk_wait(b->u.virtio, c, max) : virtio_blk_reap(b->u.virtio, c, max);
	case BLK_ATA:
		return wait ? ata_wait(b->u.ata, c, max) : ata_reap(b->u.ata, c, max);
	case BLK_MMIO:
		return wait ? mmioblk_wait(b->u.mmio, c, max) : mmioblk_reap(b->u.mmio, c, max);
	}
	return BLK_EINVAL;
}

int blk_reap(struct blkdev *b, struct blk_completion *c, unsigned max)
{
	return reap_or_wait(b, c, max, false);
}

int blk_wait(struct blkdev *b, struct blk_completion *c, unsigned max)
{
	return reap_or_wait(b, c, max, true);
}

int blk_flush(struct blkdev *b, struct blk_completion *c)
{
	struct blk_completion local;
	int rc;

	if (!c)
		c = &local;
	memset(c, 0, sizeof(*c));
	if (b->kind == BLK_STORVSC) {
		struct storvsc_completion *s = b->scratch;

		memset(s, 0, sizeof(*s));
		rc = storvsc_flush(b->u.storvsc, s);
		from_storvsc(s, c);
		return rc;
	}
	if (blk_counters(b)->inflight)
		return BLK_EINVAL;
	rc = blk_submit(b, BLK_OP_FLUSH, 0, 0, NULL, 0);
	if (rc < 0)
		return rc;
	rc = blk_wait(b, c, 1);
	if (rc < 0)
		return rc;
	if (rc != 1)
		return BLK_EPROTO;
	return c->status;
}

uint32_t blk_qd_max(const struct blkdev *b, uint32_t bytes)
{
	uint32_t qd = b->qd_max;

	if (b->kind == BLK_STORVSC)
		qd = storvsc_qd_max(b->u.storvsc, bytes);
	return qd > BLK_MAX_QD ? BLK_MAX_QD : qd;
}

const struct blk_counters *blk_counters(struct blkdev *b)
{
	switch (b->kind) {
	case BLK_STORVSC: {
		const struct storvsc_dev *d = b->u.storvsc;

		b->c.submitted = d->submitted;
		b->c.completed = d->completed;
		b->c.errors = d->errors;
		b->c.kicks = d->kicks;
		b->c.full = d->full;
		b->c.polls = d->polls;
		b->c.waits = d->waits;
		b->c.interrupts = d->events_seen;
		b->c.unexpected = d->unexpected;
		b->c.unsolicited = d->unsolicited;
		b->c.inflight = d->inflight;
		b->c.max_inflight = d->max_inflight;
		return &b->c;
	}
	case BLK_VIRTIO:
		return &b->u.virtio->c;
	case BLK_ATA:
		return &b->u.ata->c;
	case BLK_MMIO:
		return &b->u.mmio->c;
	}
	return &b->c;
}

const char *blk_strerror(const struct blkdev *b, int err)
{
	if (b && b->kind == BLK_STORVSC && err <= STORVSC_EAGAIN && err >= STORVSC_ENODEV)
		return storvsc_strerror(err);
	switch (err) {
	case BLK_OK: return "ok";
	case BLK_EAGAIN: return "queue full";
	case BLK_EINVAL: return "invalid request";
	case BLK_EPROTO: return "protocol error";
	case BLK_ETIMEDOUT: return "timed out";
	case BLK_ENODEV: return "no such device";
	case BLK_EIO: return "I/O error";
	case BLK_EUNSUPP: return "unsupported request";
	case BLK_EBROKEN: return "device needs reset";
	case BLK_ERANGE: return "range past the end of the disk";
	case BLK_EROFS: return "read-only device";
	case BLK_EADDR: return "buffer or descriptor not reachable";
	}
	if (b && b->kind == BLK_STORVSC)
		return storvsc_strerror(err);
	return "error";
}

static const char *op_name(uint8_t op)
{
	return op == BLK_OP_READ ? "READ" : op == BLK_OP_WRITE ? "WRITE" :
	       op == BLK_OP_FLUSH ? "FLUSH" : "request";
}

int blk_describe(const struct blkdev *b, const struct blk_completion *c, char *buf, size_t size)
{
	if (b->kind == BLK_STORVSC && c->raw)
		return storvsc_describe(c->raw, buf, size);
	switch (b->kind) {
	case BLK_VIRTIO:
		return hv_snprintf(buf, size, "%s LBA %llu x %u: %s (virtio status %u)",
				   op_name(c->op), (unsigned long long)c->lba, c->blocks,
				   blk_strerror(b, c->status), c->dev_status);
	case BLK_ATA:
		return hv_snprintf(buf, size, "%s LBA %llu x %u: %s (ATA status 0x%02x, error 0x%02x%s%s%s)",
				   op_name(c->op), (unsigned long long)c->lba, c->blocks,
				   blk_strerror(b, c->status), c->dev_status2, c->dev_status,
				   c->dev_status & ATA_ER_ABRT ? " ABRT" : "",
				   c->dev_status & ATA_ER_IDNF ? " IDNF" : "",
				   c->dev_status & ATA_ER_UNC ? " UNC" : "");
	case BLK_MMIO:
		return hv_snprintf(buf, size, "%s LBA %llu x %u: %s (mmioblk status %u)",
				   op_name(c->op), (unsigned long long)c->lba, c->blocks,
				   blk_strerror(b, c->status), c->dev_status);
	}
	return hv_snprintf(buf, size, "%s LBA %llu x %u: %s", op_name(c->op),
			   (unsigned long long)c->lba, c->blocks, blk_strerror(b, c->status));
}

/* blk_job_sweep's queue: the free buffers (a stack of indices) and a batch of completions. */
static struct blk_completion sweep_comps[64];
static uint16_t sweep_free[BLK_MAX_QD];

static bool sweep_stopped(const struct blk_sweep *s)
{
	return s->stop && s->stop(s->arg);
}

void blk_job_sweep(struct blk_job *j, const struct blk_sweep *s)
{
	struct blkdev *d = j->d;
	uint64_t total = d->blocks * (d->block_size / BLK_SECTOR); /* 512-byte sectors */
	uint32_t spb = d->block_size / BLK_SECTOR, per_io = j->chunk / BLK_SECTOR, nfree = j->qd;
	uint64_t next = 0;
	char text[200];
	int rc;

	for (uint32_t i = 0; i < j->qd; i++)
		sweep_free[i] = (uint16_t)i;
	while ((next < total && !sweep_stopped(s)) || blk_counters(d)->inflight) {
		while (next < total && !sweep_stopped(s) && nfree) {
			uint32_t idx = sweep_free[nfree - 1];
			uint8_t *buf = blk_job_buf(j, idx);
			uint32_t n = total - next < per_io ? (uint32_t)(total - next) : per_io;

			if (s->prepare)
				s->prepare(s->arg, buf, next, n);
			rc = blk_submit(d, s->op, next / spb, n / spb, buf, idx);
			if (rc == BLK_EAGAIN)
				break;
			HV_ASSERT(rc >= 0, "%s: %s at sector %llu: %s", s->who, op_name(s->op),
				  (unsigned long long)next, blk_strerror(d, rc));
			nfree--;
			next += n;
		}
		rc = blk_wait(d, sweep_comps, HV_ARRAY_SIZE(sweep_comps));
		HV_ASSERT(rc > 0, "%s: waiting (%u in flight): %s", s->who,
			  blk_counters(d)->inflight, blk_strerror(d, rc));
		for (int i = 0; i < rc; i++) {
			const struct blk_completion *c = &sweep_comps[i];

			if (c->status) {
				blk_describe(d, c, text, sizeof(text));
				HV_ASSERT(0, "%s: %s", s->who, text);
			}
			if (s->complete)
				s->complete(s->arg, c->buf, c->lba * spb, c->len / BLK_SECTOR);
			sweep_free[nfree++] = (uint16_t)c->cookie;
			j->ios++;
			j->bytes += c->len;
			j->sectors += c->len / BLK_SECTOR;
		}
	}
}
