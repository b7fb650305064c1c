/*
 * u_virtio_blk.c - the virtio-blk driver's request path, callable from either ring
 * (user-accessible): descriptors, the available ring and notification suppression, the used
 * ring and completion checks, polling and the ring-0 wait hook. See include/virtio_blk.h.
 */
#include "blkdev.h"

static inline bool irq_mode(const struct virtio_blk_dev *d)
{
	return hv_ring() == 0 && d->kwait && !d->poll;
}

static uint16_t desc_alloc(struct virtio_blk_dev *d)
{
	uint16_t i = d->free_head;

	d->free_head = d->desc[i].next;
	d->num_free--;
	return i;
}

static void desc_free(struct virtio_blk_dev *d, uint16_t i)
{
	d->desc[i].next = d->free_head;
	d->free_head = i;
	d->num_free++;
}

void virtio_blk_irq_off(struct virtio_blk_dev *d)
{
	if (d->event_idx)
		/* Half the index space away from anything the device can be publishing: the device
		 * is never more than a queue ahead of what was taken, and may still be deciding about
		 * the entry just taken (so last_used - 1 would fire now and then). Rewritten at every
		 * reap, so it never comes into range. */
		__atomic_store_n(d->used_event, (uint16_t)(d->last_used + 0x8000), __ATOMIC_RELAXED);
	else
		__atomic_store_n(&d->avail->flags, VIRTQ_AVAIL_F_NO_INTERRUPT, __ATOMIC_RELAXED);
}

void virtio_blk_irq_on(struct virtio_blk_dev *d)
{
	if (d->event_idx)
		__atomic_store_n(d->used_event, d->last_used, __ATOMIC_RELAXED);
	else
		__atomic_store_n(&d->avail->flags, 0, __ATOMIC_RELAXED);
	/* the device stores used->idx then loads used_event; we store used_event then load idx */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

uint32_t virtio_blk_status(struct virtio_blk_dev *d)
{
	uint32_t st = virtio_mmio_read(d, VIRTIO_MMIO_STATUS);

	if (st & VIRTIO_STATUS_NEEDS_RESET)
		d->broken = 1;
	return st;
}

int virtio_blk_submit_raw(struct virtio_blk_dev *d, uint32_t type, uint64_t sector, void *buf,
			  uint32_t len, bool device_writes, uint64_t cookie)
{
	struct virtio_blk_slot *s;
	uint16_t head, prev, st;
	uint8_t ndesc = len ? 3 : 2;

	if (d->broken)
		return BLK_EBROKEN;
	if (!d->qsize)
		return BLK_EINVAL;
	if (d->num_free < ndesc) {
		d->c.full++;
		return BLK_EAGAIN;
	}
	head = desc_alloc(d);
	s = &d->slots[head];
	s->ndesc = 0;
	s->desc[s->ndesc++] = head;
	d->hdrs[head].type = type;
	d->hdrs[head].reserved = 0;
	d->hdrs[head].sector = sector;
	d->desc[head].addr = (uintptr_t)&d->hdrs[head];
	d->desc[head].len = sizeof(struct virtio_blk_req_hdr);
	d->desc[head].flags = VIRTQ_DESC_F_NEXT;
	prev = head;
	if (len) {
		uint16_t i = desc_alloc(d);

		d->desc[prev].next = i;
		d->desc[i].addr = (uintptr_t)buf;
		d->desc[i].len = len;
		d->desc[i].flags = VIRTQ_DESC_F_NEXT | (device_writes ? VIRTQ_DESC_F_WRITE : 0);
		s->desc[s->ndesc++] = i;
		prev = i;
	}
	st = desc_alloc(d);
	d->desc[prev].next = st;
	d->statuses[head] = 0xff; /* not written by the device yet */
	d->desc[st].addr = (uintptr_t)&d->statuses[head];
	d->desc[st].len = 1;
	d->desc[st].flags = VIRTQ_DESC_F_WRITE;
	d->desc[st].next = 0;
	s->desc[s->ndesc++] = st;

	s->cookie = cookie;
	s->lba = sector;
	s->buf = buf;
	s->len = len;
	s->blocks = len / BLK_SECTOR;
	s->op = type == VIRTIO_BLK_T_IN ? BLK_OP_READ : type == VIRTIO_BLK_T_OUT ? BLK_OP_WRITE :
		type == VIRTIO_BLK_T_FLUSH ? BLK_OP_FLUSH : 0;
	s->busy = 1;
	d->avail->ring[d->avail_idx % d->qsize] = head;
	d->avail_idx++;
	d->uncommitted++;
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
	uint16_t old, new_idx;
	bool need;

	if (!d->uncommitted)
		return 0;
	d->uncommitted = 0;
	old = d->avail_published;
	new_idx = d->avail_idx;
	__atomic_store_n(&d->avail->idx, new_idx, __ATOMIC_RELEASE);
	d->avail_published = new_idx;
	/* we store avail->idx then load avail_event; the device stores avail_event then loads idx */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (d->event_idx)
		need = virtq_need_event(__atomic_load_n(d->avail_event, __ATOMIC_RELAXED), new_idx,
					old);
	else
		need = !(__atomic_load_n(&d->used->flags, __ATOMIC_RELAXED) &
			 VIRTQ_USED_F_NO_NOTIFY);
	if (need) {
		d->c.kicks++;
		virtio_mmio_write(d, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	} else {
		d->c.kicks_suppressed++;
	}
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
	if (st == VIRTIO_BLK_S_OK)
		c->status = s->op == BLK_OP_READ && used_len != s->len + 1 ? BLK_EPROTO : BLK_OK;
	else if (st == VIRTIO_BLK_S_IOERR)
		c->status = BLK_EIO;
	else if (st == VIRTIO_BLK_S_UNSUPP)
		c->status = BLK_EUNSUPP;
	else
		c->status = BLK_EPROTO;
	for (unsigned k = s->ndesc; k-- > 0;)
		desc_free(d, s->desc[k]);
	s->busy = 0;
	d->c.inflight--;
	d->c.completed++;
	if (c->status)
		d->c.errors++;
}

int virtio_blk_reap(struct virtio_blk_dev *d, struct blk_completion *c, unsigned max)
{
	uint16_t used_idx;
	unsigned n = 0;

	virtio_blk_kick(d);
	if (d->broken)
		return BLK_EBROKEN;
	used_idx = __atomic_load_n(&d->used->idx, __ATOMIC_ACQUIRE);
	if ((uint16_t)(used_idx - d->last_used) > d->qsize) {
		d->broken = 1;
		return BLK_EPROTO;
	}
	while (n < max && d->last_used != used_idx) {
		const volatile struct virtq_used_elem *e = &d->used->ring[d->last_used % d->qsize];
		uint32_t id = e->id, len = e->len;

		d->last_used++;
		if (id >= d->qsize || !d->slots[id].busy) {
			d->c.unexpected++;
			continue;
		}
		complete_one(d, (uint16_t)id, len, &c[n++]);
	}
	if (d->event_idx)
		virtio_blk_irq_off(d); /* keep used_event out of the device's range */
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
			if (d->broken)
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
