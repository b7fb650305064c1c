/*
 * k_virtio_blk.c - the virtio-blk driver's kernel part (ring 0, vCPU 0): finding virtio-mmio
 * devices, the initialization sequence, the queue's memory, the interrupt (IOAPIC route,
 * handler) and the ring-0 wait. See include/virtio_blk.h.
 */
#include "blkdev.h"
#include "rt.h"

#define VIRTIO_VECTOR_BASE 0x60u
#define IOAPIC2_BASE 0xfec10000u
#define IOAPIC2_GSI_BASE 24u
#define VIRTIO_MMIO_MAX_SLOTS 24u

static struct virtio_blk_dev *vector_dev[VIRTIO_MAX_DEVICES];

static uint32_t ioapic2_read(uint32_t reg)
{
	*(volatile uint32_t *)(uintptr_t)(IOAPIC2_BASE + 0x00) = reg;
	return *(volatile uint32_t *)(uintptr_t)(IOAPIC2_BASE + 0x10);
}

/* microvm's second IOAPIC (ioapic2=on): a version register that reads like an IOAPIC's. */
static bool ioapic2_present(void)
{
	uint32_t v = ioapic2_read(HV_IOAPIC_VERSION);

	return ((v & 0xff) == 0x11 || (v & 0xff) == 0x20) && ((v >> 16) & 0xff) == 23;
}

/* ------------------------------------------------------------------------------------------ */
/* Finding devices. */

/* "SIZE@BASE:IRQ[:ID]" -> fields; false if it does not parse. */
static bool parse_device(const char *v, uint64_t *base, uint32_t *size, uint32_t *irq)
{
	char part[32];
	const char *p = v;
	uint64_t n[3];

	for (int k = 0; k < 3; k++) {
		size_t len = 0;
		char stop = k == 0 ? '@' : ':';

		while (*p && *p != stop && *p != ':' && len < sizeof(part) - 1)
			part[len++] = *p++;
		part[len] = 0;
		if (!len || !hv_parse_u64(part, &n[k]))
			return false;
		if (k < 2) {
			if (*p != stop)
				return false;
			p++;
		}
	}
	*size = (uint32_t)n[0];
	*base = n[1];
	*irq = (uint32_t)n[2];
	return true;
}

unsigned virtio_mmio_find(uint64_t *bases, uint32_t *sizes, uint32_t *irqs, unsigned max)
{
	static const char key[] = "virtio_mmio.device=";
	const char *s = hv_cmdline();
	unsigned found = 0;

	while (s && *s && found < max) {
		char word[96];
		size_t len = 0;

		while (*s == ' ')
			s++;
		while (*s && *s != ' ') {
			if (len < sizeof(word) - 1)
				word[len++] = *s;
			s++;
		}
		word[len] = 0;
		if (!strncmp(word, key, sizeof(key) - 1) &&
		    parse_device(word + sizeof(key) - 1, &bases[found], &sizes[found], &irqs[found]) &&
		    bases[found] < (1ULL << 32) && sizes[found] >= VIRTIO_MMIO_SLOT_SIZE)
			found++;
	}
	if (found)
		return found;
	/* No command line entries (QEMU's microvm with ACPI): its slots, highest first (QEMU fills
	 * them that way): 24 on GSIs 24-47 with a second IOAPIC, else 8 on GSIs 16-23 when there is
	 * ACPI (an RSDP), else 8 on GSIs 5-12. */
	{
		unsigned slots = VIRTIO_MMIO_SLOTS, irq_base = VIRTIO_MMIO_IRQ_BASE;

		if (ioapic2_present()) {
			slots = 24;
			irq_base = IOAPIC2_GSI_BASE;
		} else if (hv_boot.rsdp_paddr) {
			irq_base = 16;
		}
		for (unsigned n = slots; n-- > 0 && found < max;) {
			bases[found] = VIRTIO_MMIO_BASE + (uint64_t)n * VIRTIO_MMIO_SLOT_SIZE;
			sizes[found] = VIRTIO_MMIO_SLOT_SIZE;
			irqs[found] = irq_base + n;
			found++;
		}
	}
	return found;
}

/* ------------------------------------------------------------------------------------------ */
/* Interrupts. */

static void ioapic2_write(uint32_t reg, uint32_t v)
{
	*(volatile uint32_t *)(uintptr_t)(IOAPIC2_BASE + 0x00) = reg;
	*(volatile uint32_t *)(uintptr_t)(IOAPIC2_BASE + 0x10) = v;
}

static void route(uint32_t gsi, uint8_t vector, uint32_t flags)
{
	if (gsi < IOAPIC2_GSI_BASE) {
		hv_ioapic_route(gsi, vector, 0, flags);
		return;
	}
	gsi -= IOAPIC2_GSI_BASE;
	ioapic2_write(HV_IOAPIC_REDTBL(gsi), HV_IOAPIC_MASKED);
	ioapic2_write(HV_IOAPIC_REDTBL(gsi) + 1, 0);
	ioapic2_write(HV_IOAPIC_REDTBL(gsi), vector | flags);
}

static void virtio_isr(unsigned vector, struct hv_regs *regs)
{
	struct virtio_blk_dev *d;
	uint32_t isr;

	(void)regs;
	if (vector < VIRTIO_VECTOR_BASE || vector >= VIRTIO_VECTOR_BASE + VIRTIO_MAX_DEVICES)
		return;
	d = vector_dev[vector - VIRTIO_VECTOR_BASE];
	if (!d)
		return;
	isr = virtio_mmio_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
	if (isr)
		virtio_mmio_write(d, VIRTIO_MMIO_INTERRUPT_ACK, isr);
	if (isr & VIRTIO_INT_USED)
		d->isr_used++;
	if (isr & VIRTIO_INT_CONFIG) {
		d->isr_config++;
		virtio_blk_status(d);
	}
	d->c.interrupts++;
	d->events++;
}

/* Ring 0: publish "interrupt me for the next completion", re-check, `sti; hlt` until the
 * handler ran, then interrupts off again (Linux's virtqueue_enable_cb / disable_cb). */
static void kwait(struct virtio_blk_dev *d)
{
	uint64_t seen = d->events;

	__asm__ volatile("sti; nop; cli" ::: "memory"); /* what a kernel with IF=1 took already */
	if (d->events != seen)
		return;
	virtio_blk_irq_on(d);
	if (__atomic_load_n(&d->used->idx, __ATOMIC_ACQUIRE) == d->last_used && !d->broken) {
		d->c.waits++;
		while (d->events == seen && !d->broken)
			__asm__ volatile("sti; hlt; cli" ::: "memory");
	}
	virtio_blk_irq_off(d);
}

/* ------------------------------------------------------------------------------------------ */

static void set_status(struct virtio_blk_dev *d, uint32_t bits)
{
	d->status |= bits;
	virtio_mmio_write(d, VIRTIO_MMIO_STATUS, d->status);
}

static int fail(struct virtio_blk_dev *d, int rc)
{
	set_status(d, VIRTIO_STATUS_FAILED);
	d->qsize = 0;
	return rc;
}

static uint64_t read_config64(struct virtio_blk_dev *d, uint32_t off)
{
	return virtio_mmio_read(d, VIRTIO_MMIO_CONFIG + off) |
	       (uint64_t)virtio_mmio_read(d, VIRTIO_MMIO_CONFIG + off + 4) << 32;
}

int virtio_blk_open(struct virtio_blk_dev *d, unsigned n, uint32_t queue_size, bool event_idx,
		    bool irq)
{
	uint64_t bases[VIRTIO_MMIO_MAX_SLOTS], want, host;
	uint32_t sizes[VIRTIO_MMIO_MAX_SLOTS], irqs[VIRTIO_MMIO_MAX_SLOTS], gen;
	unsigned count, seen = 0, slot = VIRTIO_MMIO_MAX_SLOTS;
	uint8_t *page;

	if (!d)
		return BLK_EINVAL;
	memset(d, 0, sizeof(*d));
	count = virtio_mmio_find(bases, sizes, irqs, VIRTIO_MMIO_MAX_SLOTS);
	for (unsigned i = 0; i < count; i++) {
		volatile uint8_t *r = (volatile uint8_t *)(uintptr_t)bases[i];

		if (*(volatile uint32_t *)(r + VIRTIO_MMIO_MAGIC_VALUE) != VIRTIO_MMIO_MAGIC ||
		    *(volatile uint32_t *)(r + VIRTIO_MMIO_DEVICE_ID) != VIRTIO_ID_BLOCK)
			continue;
		d->version = *(volatile uint32_t *)(r + VIRTIO_MMIO_VERSION);
		if (d->version != 2) {
			hv_log("virtio-blk: device at 0x%llx is virtio-mmio version %u (legacy): "
			       "skipped (QEMU: -global virtio-mmio.force-legacy=false)",
			       (unsigned long long)bases[i], d->version);
			continue;
		}
		if (seen++ == n) {
			slot = i;
			break;
		}
	}
	if (slot == VIRTIO_MMIO_MAX_SLOTS)
		return BLK_ENODEV;
	d->base = bases[slot];
	d->size = sizes[slot];
	d->irq = irqs[slot];
	d->regs = (volatile uint8_t *)(uintptr_t)d->base;
	d->device_id = virtio_mmio_read(d, VIRTIO_MMIO_DEVICE_ID);
	d->vendor_id = virtio_mmio_read(d, VIRTIO_MMIO_VENDOR_ID);
	d->version = virtio_mmio_read(d, VIRTIO_MMIO_VERSION);
	if (!hv_user_map(d->base, d->size))
		return BLK_EINVAL;

	/* 4.2.3.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK. */
	d->status = 0;
	virtio_mmio_write(d, VIRTIO_MMIO_STATUS, 0);
	set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
	set_status(d, VIRTIO_STATUS_DRIVER);
	virtio_mmio_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	host = virtio_mmio_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
	virtio_mmio_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	host |= (uint64_t)virtio_mmio_read(d, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	d->host_features = host;
	if (!(host & (1ULL << VIRTIO_F_VERSION_1)))
		return fail(d, BLK_ENODEV);
	want = 1ULL << VIRTIO_F_VERSION_1 | 1ULL << VIRTIO_BLK_F_FLUSH | 1ULL << VIRTIO_BLK_F_RO |
	       1ULL << VIRTIO_BLK_F_BLK_SIZE | 1ULL << VIRTIO_BLK_F_SEG_MAX;
	if (event_idx)
		want |= 1ULL << VIRTIO_RING_F_EVENT_IDX;
	d->features = host & want;
	virtio_mmio_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	virtio_mmio_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)d->features);
	virtio_mmio_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	virtio_mmio_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(d->features >> 32));
	set_status(d, VIRTIO_STATUS_FEATURES_OK);
	if (!(virtio_mmio_read(d, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK))
		return fail(d, BLK_EPROTO);
	d->event_idx = (d->features >> VIRTIO_RING_F_EVENT_IDX) & 1;
	d->ro = (d->features >> VIRTIO_BLK_F_RO) & 1;

	/* Queue 0. */
	virtio_mmio_write(d, VIRTIO_MMIO_QUEUE_SEL, 0);
	if (virtio_mmio_read(d, VIRTIO_MMIO_QUEUE_READY))
		return fail(d, BLK_EPROTO);
	d->qmax = (uint16_t)virtio_mmio_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (!d->qmax)
		return fail(d, BLK_ENODEV);
	d->qsize = queue_size ? (uint16_t)queue_size :
		   (d->qmax < VIRTIO_BLK_MAX_QSIZE ? d->qmax : VIRTIO_BLK_MAX_QSIZE);
	if (queue_size > VIRTIO_BLK_MAX_QSIZE || d->qsize > d->qmax || d->qsize < 2 ||
	    (d->qsize & (d->qsize - 1)))
		return fail(d, BLK_EINVAL);
	/* desc (16 * 256), driver area (6 + 2 * 256), device area (6 + 8 * 256), headers
	 * (16 * 256), statuses + the GET_ID buffer: a page each. */
	page = storvsc_dma_alloc(5 * HVR_PAGE_SIZE);
	if (!page)
		return fail(d, BLK_EINVAL);
	memset(page, 0, 5 * HVR_PAGE_SIZE);
	d->desc = (struct virtq_desc *)(void *)page;
	d->avail = (struct virtq_avail *)(void *)(page + HVR_PAGE_SIZE);
	d->used = (struct virtq_used *)(void *)(page + 2 * HVR_PAGE_SIZE);
	d->hdrs = (struct virtio_blk_req_hdr *)(void *)(page + 3 * HVR_PAGE_SIZE);
	d->statuses = page + 4 * HVR_PAGE_SIZE;
	d->used_event = &d->avail->ring[d->qsize];
	d->avail_event = (volatile uint16_t *)(void *)&d->used->ring[d->qsize];
	for (uint16_t i = 0; i < d->qsize; i++)
		d->desc[i].next = (uint16_t)(i + 1);
	d->free_head = 0;
	d->num_free = d->qsize;
	virtio_blk_irq_off(d);
	virtio_mmio_write(d, VIRTIO_MMIO_QUEUE_NUM, d->qsize);
	virtio_mmio_write(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)(uintptr_t)d->desc);
	virtio_mmio_write(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
	virtio_mmio_write(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)(uintptr_t)d->avail);
	virtio_mmio_write(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, 0);
	virtio_mmio_write(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)(uintptr_t)d->used);
	virtio_mmio_write(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, 0);
	virtio_mmio_write(d, VIRTIO_MMIO_QUEUE_READY, 1);

	/* The interrupt (ring-0 waits) before DRIVER_OK: nothing can be lost. */
	if (irq) {
		unsigned v;

		for (v = 0; v < VIRTIO_MAX_DEVICES && vector_dev[v] && vector_dev[v] != d; v++)
			;
		if (v < VIRTIO_MAX_DEVICES) {
			vector_dev[v] = d;
			d->vector = VIRTIO_VECTOR_BASE + v;
			hv_irq_register(d->vector, virtio_isr);
			route(d->irq, (uint8_t)d->vector, 0);
			d->kwait = kwait;
		}
	}
	set_status(d, VIRTIO_STATUS_DRIVER_OK);
	if (virtio_mmio_read(d, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET) {
		d->broken = 1;
		return BLK_EBROKEN;
	}

	/* Configuration, consistent across ConfigGeneration. */
	do {
		gen = virtio_mmio_read(d, VIRTIO_MMIO_CONFIG_GENERATION);
		d->capacity = read_config64(d, VIRTIO_BLK_CFG_CAPACITY);
		d->blk_size = d->features & (1ULL << VIRTIO_BLK_F_BLK_SIZE) ?
			      virtio_mmio_read(d, VIRTIO_MMIO_CONFIG + VIRTIO_BLK_CFG_BLK_SIZE) : 512;
		d->seg_max = d->features & (1ULL << VIRTIO_BLK_F_SEG_MAX) ?
			     virtio_mmio_read(d, VIRTIO_MMIO_CONFIG + VIRTIO_BLK_CFG_SEG_MAX) : 1;
	} while (gen != virtio_mmio_read(d, VIRTIO_MMIO_CONFIG_GENERATION));

	/* The serial (GET_ID), polled. */
	{
		struct blk_completion c;
		uint8_t *idbuf = page + 4 * HVR_PAGE_SIZE + 2048;
		uint64_t t0 = blk_rdtsc();
		int rc;

		rc = virtio_blk_submit_raw(d, VIRTIO_BLK_T_GET_ID, 0, idbuf, VIRTIO_BLK_ID_BYTES,
					   true, 0);
		if (rc < 0)
			return rc;
		while ((rc = virtio_blk_reap(d, &c, 1)) == 0 && !d->broken) {
			hv_pause();
			if (blk_rdtsc() - t0 > (1ULL << 36)) /* tens of seconds at any TSC rate */
				return BLK_ETIMEDOUT;
		}
		if (rc < 0)
			return rc;
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
	if (!d || !d->regs)
		return BLK_EINVAL;
	if (d->c.inflight)
		return BLK_EINVAL;
	if (d->vector) {
		route(d->irq, (uint8_t)d->vector, HV_IOAPIC_MASKED);
		vector_dev[d->vector - VIRTIO_VECTOR_BASE] = NULL;
	}
	virtio_mmio_write(d, VIRTIO_MMIO_STATUS, 0); /* reset: the device lets go of the queue */
	d->qsize = 0;
	d->kwait = NULL;
	return 0;
}
