/*
 * u_virtio_blk.c - the virtio-blk driver's request path, callable from either ring
 * (user-accessible): request chains on the shared split virtqueue (rt/u_virtio.c), completion
 * checks, polling and the ring-0 wait hook. See include/virtio_blk.h.
 */
#include "blkdev.h"

static inline bool irq_mode(const struct virtio_blk_dev *d)
{
	return hv_ring() == 0 && d->kwait && !d->poll;
}

void virtio_blk_irq_off(struct virtio_blk_dev *d)
{
	virtq_irq_off(&d->q);
}

void virtio_blk_irq_on(struct virtio_blk_dev *d)
{
	virtq_irq_on(&d->q);
}

uint32_t virtio_blk_status(struct virtio_blk_dev *d)
{
	return virtio_mmio_status(&d->m);
}

int virtio_blk_submit_raw(struct virtio_blk_dev *d, uint32_t type, uint64_t sector, void *buf,
			  uint32_t len, bool device_writes, uint64_t cookie)
{
	struct virtio_blk_slot *s;
	uint16_t head, prev, st;
	uint8_t ndesc = len ? 3 : 2;

	if (d->m.broken)
		return BLK_EBROKEN;
	if (!d->q.size)
		return BLK_EINVAL;
	if (d->q.num_free < ndesc) {
		d->c.full++;
		return BLK_EAGAIN;
	}
	head = virtq_desc_alloc(&d->q);
	s = &d->slots[head];
	s->ndesc = 0;
	s->desc[s->ndesc++] = head;
	d->hdrs[head].type = type;
	d->hdrs[head].reserved = 0;
	d->hdrs[head].sector = sector;
	d->q.desc[head].addr = (uintptr_t)&d->hdrs[head];
	d->q.desc[head].len = sizeof(struct virtio_blk_req_hdr);
	d->q.desc[head].flags = VIRTQ_DESC_F_NEXT;
	prev = head;
	if (len) {
		uint16_t i = virtq_desc_alloc(&d->q);

		d->q.desc[prev].next = i;
		d->q.desc[i].addr = (uintptr_t)buf;
		d->q.desc[i].len = len;
		d->q.desc[i].flags = VIRTQ_DESC_F_NEXT | (device_writes ? VIRTQ_DESC_F_WRITE : 0);
		s->desc[s->ndesc++] = i;
		prev = i;
	}
	st = virtq_desc_alloc(&d->q);
	d->q.desc[prev].next = st;
	d->statuses[head] = 0xff; /* not written by the device yet */
	d->q.desc[st].addr = (uintptr_t)&d->statuses[head];
	d->q.desc[st].len = 1;
	d->q.desc[st].flags = VIRTQ_DESC_F_WRITE;
	d->q.desc[st].next = 0;
	s->desc[s->ndesc++] = st;

	s->cookie = cookie;
	s->lba = sector;
	s->buf = buf;
	s->len = len;
	s->writable = (device_writes ? len : 0) + 1; /* the status byte */
	s->blocks = len / BLK_SECTOR;
	s->op = type == VIRTIO_BLK_T_IN ? BLK_OP_READ : type == VIRTIO_BLK_T_OUT ? BLK_OP_WRITE :
		type == VIRTIO_BLK_T_FLUSH ? BLK_OP_FLUSH : 0;
	s->busy = 1;
	virtq_push(&d->q, head);
	d->c.submitted++;
	if (++d->c.inflight > d->c.max_inflight)
		d->c.max_inflight = d->c.inflight;
	s->t_submit = blk_rdtsc();
	return head;
}

int virtio_blk_submit(struct virtio_blk_dev *d, enum blk_op op, uint64_t lba, uint32_t blocks,
		      void *buf, uint64_t cookie)
{
	switch (op) {
	case BLK_OP_READ:
	case BLK_OP_WRITE:
		if (!blocks || blocks > BLK_MAX_XFER / BLK_SECTOR || lba > d->capacity ||
		    blocks > d->capacity - lba || !buf)
			return BLK_EINVAL;
		return virtio_blk_submit_raw(d, op == BLK_OP_READ ? VIRTIO_BLK_T_IN :
					     VIRTIO_BLK_T_OUT, lba, buf, blocks * BLK_SECTOR,
					     op == BLK_OP_READ, cookie);
	case BLK_OP_FLUSH:
		return virtio_blk_submit_raw(d, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, false, cookie);
	}
	return BLK_EINVAL;
}

int virtio_blk_kick(struct virtio_blk_dev *d)
{
	uint64_t kicks = d->q.kicks, suppressed = d->q.kicks_suppressed;

	virtq_publish(&d->q, &d->m);
	d->c.kicks += d->q.kicks - kicks;
	d->c.kicks_suppressed += d->q.kicks_suppressed - suppressed;
	return 0;
}

static void complete_one(struct virtio_blk_dev *d, uint16_t id, uint32_t used_len,
			 struct blk_completion *c)
{
	struct virtio_blk_slot *s = &d->slots[id];
	uint8_t st = d->statuses[id];

	c->cookie = s->cookie;
	c->lba = s->lba;
	c->t_submit = s->t_submit;
	c->t_complete = blk_rdtsc();
	c->buf = s->buf;
	c->len = s->len;
	c->blocks = s->blocks;
	c->op = s->op;
	c->dev_status = st;
	c->dev_status2 = 0;
	c->raw = NULL;
	if (used_len == 0 || used_len > s->writable)
		c->status = BLK_EPROTO; /* claims bytes it could not have written (or not the status) */
	else if (st == VIRTIO_BLK_S_OK)
		c->status = s->op == BLK_OP_READ && used_len != s->len + 1 ? BLK_EPROTO : BLK_OK;
	else if (st == VIRTIO_BLK_S_IOERR)
		c->status = BLK_EIO;
	else if (st == VIRTIO_BLK_S_UNSUPP)
		c->status = BLK_EUNSUPP;
	else
		c->status = BLK_EPROTO;
	for (unsigned k = s->ndesc; k-- > 0;)
		virtq_desc_free(&d->q, s->desc[k]);
	s->busy = 0;
	d->c.inflight--;
	d->c.completed++;
	if (c->status)
		d->c.errors++;
}

int virtio_blk_reap(struct virtio_blk_dev *d, struct blk_completion *c, unsigned max)
{
	uint64_t bad = d->q.bad_used;
	unsigned n = 0;
	uint32_t id, len;
	int rc = 0;

	virtio_blk_kick(d);
	if (d->m.broken)
		return BLK_EBROKEN;
	while (n < max && (rc = virtq_pop_used(&d->q, &id, &len)) == 1) {
		if (!d->slots[id].busy) {
			d->c.unexpected++;
			continue;
		}
		complete_one(d, (uint16_t)id, len, &c[n++]);
	}
	d->c.unexpected += d->q.bad_used - bad;
	if (rc < 0) {
		d->m.broken = 1; /* the used ring is garbage: what was taken stands, nothing more */
		return n ? (int)n : BLK_EPROTO;
	}
	return (int)n;
}

int virtio_blk_wait(struct virtio_blk_dev *d, struct blk_completion *c, unsigned max)
{
	uint64_t last = blk_rdtsc();
	int n;

	if (!max)
		return BLK_EINVAL;
	for (;;) {
		if (!d->c.inflight)
			return 0;
		n = virtio_blk_reap(d, c, max);
		if (n)
			return n;
		if (irq_mode(d)) {
			d->kwait(d);
			if (d->m.broken)
				return BLK_EBROKEN;
			continue;
		}
		d->c.polls++;
		hv_pause();
		/* A broken device completes nothing: look at Status (an exit) now and then. */
		if ((d->c.polls & 0xfffff) == 0 && (virtio_blk_status(d) & VIRTIO_STATUS_NEEDS_RESET))
			return BLK_EBROKEN;
		if (d->stall_cycles && (d->c.polls & 1023) == 0 &&
		    blk_rdtsc() - last > d->stall_cycles) {
			if (virtio_blk_status(d) & VIRTIO_STATUS_NEEDS_RESET)
				return BLK_EBROKEN;
			return BLK_ETIMEDOUT;
		}
	}
}
