/*
 * k_mmioblk.c - the doorbell MMIO disk's kernel part (ring 0, vCPU 0): probe, descriptor memory,
 * the interrupt (IOAPIC GSI 16, edge) and the ring-0 wait. See include/mmioblk.h.
 */
#include "blkdev.h"
#include "rt.h"

#define MMIOBLK_VECTOR 0x69u

static uint32_t rd(const struct mmioblk_dev *d, uint32_t reg)
{
	return *(volatile uint32_t *)(d->regs + reg);
}

static void wr(const struct mmioblk_dev *d, uint32_t reg, uint32_t v)
{
	*(volatile uint32_t *)(d->regs + reg) = v;
}

static void kwait(struct mmioblk_dev *d)
{
	blk_irq_wait(&d->events, &d->c);
}

int mmioblk_open(struct mmioblk_dev *d, bool irq)
{
	struct blk_completion c;
	uint8_t *idbuf;
	int rc;

	if (!d)
		return BLK_EINVAL;
	memset(d, 0, sizeof(*d));
	d->regs = (volatile uint8_t *)(uintptr_t)MMIOBLK_BASE;
	if (rd(d, MMIOBLK_REG_MAGIC) != MMIOBLK_MAGIC) {
		d->regs = NULL;
		return BLK_ENODEV;
	}
	d->version = rd(d, MMIOBLK_REG_VERSION);
	if (d->version != 1) {
		d->regs = NULL;
		return BLK_EPROTO;
	}
	if (!hv_user_map(MMIOBLK_BASE, MMIOBLK_SIZE))
		return BLK_EINVAL;
	d->capacity = rd(d, MMIOBLK_REG_CAP_LO) | (uint64_t)rd(d, MMIOBLK_REG_CAP_HI) << 32;
	d->max_sectors = rd(d, MMIOBLK_REG_MAX_SECTORS);
	if (d->max_sectors > BLK_MAX_XFER / BLK_SECTOR)
		d->max_sectors = BLK_MAX_XFER / BLK_SECTOR;
	d->ro = rd(d, MMIOBLK_REG_FLAGS) & 1;
	d->irq = MMIOBLK_IRQ;
	d->descs = storvsc_dma_alloc(HVR_PAGE_SIZE * 2);
	if (!d->descs)
		return BLK_EINVAL;
	idbuf = (uint8_t *)d->descs + HVR_PAGE_SIZE;
	for (unsigned i = 0; i < MMIOBLK_MAX_QD; i++)
		d->free_stack[d->free_top++] = (uint16_t)(MMIOBLK_MAX_QD - 1 - i);
	wr(d, MMIOBLK_REG_IRQ_ENABLE, 0);
	rc = mmioblk_submit_raw(d, MMIOBLK_OP_GET_ID, 0, 0, idbuf, 20, 0);
	if (rc < 0)
		return rc;
	rc = mmioblk_reap(d, &c, 1);
	if (rc == 1 && c.status == BLK_OK) {
		memcpy(d->id, idbuf, 20);
		d->id[20] = 0;
	}
	if (irq) {
		d->vector = MMIOBLK_VECTOR;
		rc = blk_irq_attach(d->irq, d->vector, &d->events, &d->c);
		if (rc)
			return rc;
		wr(d, MMIOBLK_REG_IRQ_ENABLE, 1);
		d->kwait = kwait;
	}
	memset(&d->c, 0, sizeof(d->c));
	return 0;
}

int mmioblk_close(struct mmioblk_dev *d)
{
	if (!d || !d->regs || d->c.inflight)
		return BLK_EINVAL;
	wr(d, MMIOBLK_REG_IRQ_ENABLE, 0);
	if (d->vector)
		blk_irq_detach(d->irq, d->vector);
	d->kwait = NULL;
	d->regs = NULL;
	return 0;
}
