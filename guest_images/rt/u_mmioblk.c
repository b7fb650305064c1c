/*
 * u_mmioblk.c - the doorbell MMIO disk's request path, callable from either ring
 * (user-accessible; the register page is mapped user-accessible by mmioblk_open). See
 * include/mmioblk.h.
 */
#include "blkdev.h"

static inline bool irq_mode(const struct mmioblk_dev *d)
{
	return hv_ring() == 0 && d->kwait && !d->poll;
}

int mmioblk_submit_raw(struct mmioblk_dev *d, uint32_t op, uint64_t lba, uint32_t sectors,
		       void *buf, uint32_t len, uint64_t cookie)
{
	struct mmioblk_desc *desc;
	struct mmioblk_slot *s;
	uint16_t i;

	if (!d->regs)
		return BLK_EINVAL;
	if (!d->free_top) {
		d->c.full++;
		return BLK_EAGAIN;
	}
	i = d->free_stack[--d->free_top];
	s = &d->slots[i];
	desc = &d->descs[i];
	desc->op = op;
	desc->sectors = sectors;
	desc->lba = lba;
	desc->buf = (uintptr_t)buf;
	desc->buf_len = len;
	__atomic_store_n(&desc->status, MMIOBLK_ST_PENDING, __ATOMIC_RELAXED);
	s->cookie = cookie;
	s->lba = lba;
	s->buf = buf;
	s->len = len;
	s->blocks = sectors;
	s->op = op == MMIOBLK_OP_READ ? BLK_OP_READ : op == MMIOBLK_OP_WRITE ? BLK_OP_WRITE :
		op == MMIOBLK_OP_FLUSH ? BLK_OP_FLUSH : 0;
	s->busy = 1;
	d->c.submitted++;
	if (++d->c.inflight > d->c.max_inflight)
		d->c.max_inflight = d->c.inflight;
	s->t_submit = blk_rdtsc();
	/* The doorbell: one MMIO exit, in which the host serves the request. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	*(volatile uint32_t *)(d->regs + MMIOBLK_REG_DOORBELL) = (uint32_t)(uintptr_t)desc;
	d->c.kicks++;
	s->status = __atomic_load_n(&desc->status, __ATOMIC_ACQUIRE);
	if (s->status == MMIOBLK_ST_PENDING)
		s->status = *(volatile uint32_t *)(d->regs + MMIOBLK_REG_LAST_STATUS);
	d->done[d->done_tail++ % MMIOBLK_MAX_QD] = i;
	return i;
}

int mmioblk_submit(struct mmioblk_dev *d, enum blk_op op, uint64_t lba, uint32_t blocks,
		   void *buf, uint64_t cookie)
{
	switch (op) {
	case BLK_OP_READ:
	case BLK_OP_WRITE:
		if (!blocks || blocks > d->max_sectors || lba > d->capacity ||
		    blocks > d->capacity - lba || !buf)
			return BLK_EINVAL;
		return mmioblk_submit_raw(d, op == BLK_OP_READ ? MMIOBLK_OP_READ : MMIOBLK_OP_WRITE,
					  lba, blocks, buf, blocks * BLK_SECTOR, cookie);
	case BLK_OP_FLUSH:
		return mmioblk_submit_raw(d, MMIOBLK_OP_FLUSH, 0, 0, NULL, 0, cookie);
	}
	return BLK_EINVAL;
}

static int32_t blk_status(uint32_t st)
{
	switch (st) {
	case MMIOBLK_ST_OK: return BLK_OK;
	case MMIOBLK_ST_IOERR: return BLK_EIO;
	case MMIOBLK_ST_UNSUPP: return BLK_EUNSUPP;
	case MMIOBLK_ST_BADADDR: return BLK_EADDR;
	case MMIOBLK_ST_RANGE: return BLK_ERANGE;
	case MMIOBLK_ST_RO: return BLK_EROFS;
	case MMIOBLK_ST_BADLEN: return BLK_EINVAL;
	}
	return BLK_EPROTO;
}

int mmioblk_reap(struct mmioblk_dev *d, struct blk_completion *c, unsigned max)
{
	unsigned n = 0;

	while (n < max && d->done_head != d->done_tail) {
		uint16_t i = d->done[d->done_head++ % MMIOBLK_MAX_QD];
		struct mmioblk_slot *s = &d->slots[i];
		struct blk_completion *x = &c[n++];

		x->cookie = s->cookie;
		x->lba = s->lba;
		x->t_submit = s->t_submit;
		x->t_complete = blk_rdtsc();
		x->buf = s->buf;
		x->len = s->len;
		x->blocks = s->blocks;
		x->op = s->op;
		x->dev_status = (uint8_t)s->status;
		x->dev_status2 = 0;
		x->raw = NULL;
		x->status = blk_status(s->status);
		s->busy = 0;
		d->free_stack[d->free_top++] = i;
		d->c.inflight--;
		d->c.completed++;
		if (x->status)
			d->c.errors++;
	}
	return (int)n;
}

int mmioblk_wait(struct mmioblk_dev *d, struct blk_completion *c, unsigned max)
{
	if (!max)
		return BLK_EINVAL;
	if (!d->c.inflight)
		return 0;
	/* Served already; with interrupts, take the one that announces them first. */
	if (irq_mode(d) && d->events == d->events_taken)
		d->kwait(d);
	d->events_taken = d->events;
	return mmioblk_reap(d, c, max);
}
