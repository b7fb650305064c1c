/*
 * k_virtio_blk.c - the virtio-blk driver's kernel part (ring 0, vCPU 0): the initialization
 * sequence over the shared virtio-mmio transport (rt/k_virtio.c), the request headers' memory,
 * the interrupt hook and the ring-0 wait. See include/virtio_blk.h.
 */
#include "blkdev.h"
#include "rt.h"

static int blk_rc(int rc)
{
	switch (rc) {
	case 0:
		return 0;
	case VIRTIO_ENODEV:
		return BLK_ENODEV;
	case VIRTIO_EBROKEN:
		return BLK_EBROKEN;
	case VIRTIO_EPROTO:
		return BLK_EPROTO;
	default:
		return BLK_EINVAL;
	}
}

static void on_irq(struct virtio_mmio *m, uint32_t isr)
{
	struct virtio_blk_dev *d = m->owner;

	(void)isr;
	d->c.interrupts++;
}

/* Ring 0: sleep until the device's interrupt (rt/k_virtio.c does the enable / re-check). */
static void kwait(struct virtio_blk_dev *d)
{
	if (virtio_mmio_kwait(&d->m, &d->q))
		d->c.waits++;
}

static uint64_t read_config64(struct virtio_blk_dev *d, uint32_t off)
{
	return virtio_read32(&d->m, VIRTIO_MMIO_CONFIG + off) |
	       (uint64_t)virtio_read32(&d->m, VIRTIO_MMIO_CONFIG + off + 4) << 32;
}

int virtio_blk_open(struct virtio_blk_dev *d, unsigned n, uint32_t queue_size, bool event_idx,
		    bool irq)
{
	struct virtio_mmio *m;
	uint64_t want;
	uint32_t gen;
	uint8_t *page;
	int rc;

	if (!d)
		return BLK_EINVAL;
	memset(d, 0, sizeof(*d));
	m = &d->m;
	rc = virtio_mmio_probe(m, VIRTIO_ID_BLOCK, n, "virtio-blk");
	if (rc)
		return blk_rc(rc);
	d->version = m->version;
	d->vendor_id = m->vendor_id;

	want = 1ULL << VIRTIO_BLK_F_FLUSH | 1ULL << VIRTIO_BLK_F_RO | 1ULL << VIRTIO_BLK_F_BLK_SIZE |
	       1ULL << VIRTIO_BLK_F_SEG_MAX;
	if (event_idx)
		want |= 1ULL << VIRTIO_RING_F_EVENT_IDX;
	rc = virtio_mmio_negotiate(m, want);
	if (rc)
		return blk_rc(rc);
	d->ro = (m->features >> VIRTIO_BLK_F_RO) & 1;

	if (queue_size > VIRTIO_BLK_MAX_QSIZE)
		return virtio_mmio_fail(m, BLK_EINVAL);
	rc = virtio_mmio_queue(m, &d->q, 0, queue_size, VIRTIO_BLK_MAX_QSIZE);
	if (rc)
		return blk_rc(rc);
	d->qsize = d->q.size;
	d->event_idx = d->q.event_idx;
	/* headers (16 * 256), statuses + the GET_ID buffer: a page each */
	page = storvsc_dma_alloc(2 * HVR_PAGE_SIZE);
	if (!page)
		return virtio_mmio_fail(m, BLK_EINVAL);
	memset(page, 0, 2 * HVR_PAGE_SIZE);
	d->hdrs = (struct virtio_blk_req_hdr *)(void *)page;
	d->statuses = page + HVR_PAGE_SIZE;

	/* The interrupt (ring-0 waits) before DRIVER_OK: nothing can be lost. */
	if (irq && virtio_mmio_irq(m, on_irq, d) == 0)
		d->kwait = kwait;
	rc = virtio_mmio_driver_ok(m);
	if (rc)
		return blk_rc(rc);

	/* Configuration, consistent across ConfigGeneration. */
	do {
		gen = virtio_read32(m, VIRTIO_MMIO_CONFIG_GENERATION);
		d->capacity = read_config64(d, VIRTIO_BLK_CFG_CAPACITY);
		d->blk_size = m->features & (1ULL << VIRTIO_BLK_F_BLK_SIZE) ?
			      virtio_read32(m, VIRTIO_MMIO_CONFIG + VIRTIO_BLK_CFG_BLK_SIZE) : 512;
		d->seg_max = m->features & (1ULL << VIRTIO_BLK_F_SEG_MAX) ?
			     virtio_read32(m, VIRTIO_MMIO_CONFIG + VIRTIO_BLK_CFG_SEG_MAX) : 1;
	} while (gen != virtio_read32(m, VIRTIO_MMIO_CONFIG_GENERATION));

	/* The serial (GET_ID), polled. */
	{
		struct blk_completion c;
		uint8_t *idbuf = page + HVR_PAGE_SIZE + 2048;
		uint64_t t0 = blk_rdtsc();

		rc = virtio_blk_submit_raw(d, VIRTIO_BLK_T_GET_ID, 0, idbuf, VIRTIO_BLK_ID_BYTES,
					   true, 0);
		if (rc < 0)
			return rc;
		while ((rc = virtio_blk_reap(d, &c, 1)) == 0 && !m->broken) {
			hv_pause();
			if (blk_rdtsc() - t0 > (1ULL << 36)) /* tens of seconds at any TSC rate */
				return BLK_ETIMEDOUT;
		}
		if (rc < 0)
			return rc;
		if (m->broken)
			return BLK_EBROKEN;
		if (c.status == BLK_OK) {
			memcpy(d->id, idbuf, VIRTIO_BLK_ID_BYTES);
			d->id[VIRTIO_BLK_ID_BYTES] = 0;
		}
		d->c.submitted = d->c.completed = d->c.kicks = d->c.kicks_suppressed = 0;
		d->c.max_inflight = 0;
		d->c.errors = 0;
	}
	return 0;
}

int virtio_blk_close(struct virtio_blk_dev *d)
{
	if (!d || !d->m.regs)
		return BLK_EINVAL;
	if (d->c.inflight)
		return BLK_EINVAL;
	virtio_mmio_reset(&d->m);
	d->q.size = 0;
	d->qsize = 0;
	d->kwait = NULL;
	return 0;
}
