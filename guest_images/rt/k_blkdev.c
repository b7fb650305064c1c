/*
 * k_blkdev.c - the block-device layer's kernel part (ring 0): options, the TSC rate, opening and
 * closing a device of any kind, a workload's disk and buffers from the command line. See
 * include/blkdev.h.
 */
#include "blkdev.h"
#include "rt.h"

#define BLK_SCRATCH 64u

enum blk_kind blk_kind_of(const char *dev)
{
	if (!dev || !*dev || !strcmp(dev, "storvsc") || !strcmp(dev, "vmbus"))
		return BLK_STORVSC;
	if (!strcmp(dev, "virtio"))
		return BLK_VIRTIO;
	if (!strcmp(dev, "ata"))
		return BLK_ATA;
	if (!strcmp(dev, "mmio"))
		return BLK_MMIO;
	return BLK_NONE;
}

void blk_options_from_cmdline(struct blk_options *o)
{
	uint64_t ring = hv_arg_u64("ring", 3), pio = hv_arg_u64("pio", 32);

	memset(o, 0, sizeof(*o));
	o->index = (uint32_t)hv_arg_u64("disk", 0);
	o->ring_pages = (uint32_t)hv_arg_u64("ring_pages", 32);
	o->queue_size = (uint32_t)hv_arg_u64("queue_size", 0);
	o->event_idx = hv_arg_u64("event_idx", 1) != 0;
	o->pio_width = pio == 16 ? 2 : 4;
	o->poll = hv_arg_u64("poll", 0) != 0;
	o->irq = ring == 0 && !o->poll;
	o->stall_s = (uint32_t)hv_arg_u64("stall_s", 20);
}

/* Shared with ring 3 (the layer reads it there), so user-accessible. */
extern uint64_t blk_tsc_cache;

uint64_t blk_tsc_hz(void)
{
	uint64_t t0, t1, c0, c1;

	if (blk_tsc_cache)
		return blk_tsc_cache;
	if (hv_hyperv.tsc_hz) {
		blk_tsc_cache = hv_hyperv.tsc_hz;
		return blk_tsc_cache;
	}
	/* Against the LAPIC-timer clock (1 GHz APIC bus): 20 ms, the bounds of both reads. */
	t0 = hv_time_us();
	c0 = blk_rdtsc();
	hv_udelay(20000);
	c1 = blk_rdtsc();
	t1 = hv_time_us();
	if (t1 > t0)
		blk_tsc_cache = (c1 - c0) * 1000000ULL / (t1 - t0);
	return blk_tsc_cache;
}

/* The counting interrupts of blk_irq_attach: one slot per vector (ata and mmio have one each). */
static struct {
	uint32_t vector;
	volatile uint64_t *events;
	struct blk_counters *c;
} blk_irqs[4];

static void blk_isr(unsigned vector, struct hv_regs *regs)
{
	(void)regs;
	for (unsigned i = 0; i < HV_ARRAY_SIZE(blk_irqs); i++)
		if (blk_irqs[i].events && blk_irqs[i].vector == vector) {
			blk_irqs[i].c->interrupts++;
			(*blk_irqs[i].events)++;
			return;
		}
}

int blk_irq_attach(uint32_t gsi, uint32_t vector, volatile uint64_t *events,
		   struct blk_counters *c)
{
	unsigned i, free = HV_ARRAY_SIZE(blk_irqs);

	for (i = 0; i < HV_ARRAY_SIZE(blk_irqs); i++) {
		if (blk_irqs[i].events && blk_irqs[i].vector == vector)
			break;                  /* reopened: the new device takes the vector */
		if (!blk_irqs[i].events && free == HV_ARRAY_SIZE(blk_irqs))
			free = i;
	}
	if (i == HV_ARRAY_SIZE(blk_irqs))
		i = free;
	if (i == HV_ARRAY_SIZE(blk_irqs))
		return BLK_EINVAL;
	blk_irqs[i].vector = vector;
	blk_irqs[i].c = c;
	blk_irqs[i].events = events;
	hv_irq_register(vector, blk_isr);
	hv_ioapic_route(gsi, (uint8_t)vector, 0, 0);
	return 0;
}

void blk_irq_detach(uint32_t gsi, uint32_t vector)
{
	hv_ioapic_route(gsi, (uint8_t)vector, 0, HV_IOAPIC_MASKED);
	for (unsigned i = 0; i < HV_ARRAY_SIZE(blk_irqs); i++)
		if (blk_irqs[i].events && blk_irqs[i].vector == vector)
			blk_irqs[i].events = NULL;
}

void blk_irq_wait(volatile uint64_t *events, struct blk_counters *c)
{
	uint64_t seen = *events;

	/* sti's one-instruction shadow: an interrupt already pending is taken at the nop */
	__asm__ volatile("sti; nop; cli" ::: "memory");
	if (*events != seen)
		return;
	c->waits++;
	/* sti; hlt: the shadow keeps an interrupt from landing between the two, so one that
	 * arrives wakes the hlt instead of being slept past */
	while (*events == seen)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
}

static void copy_str(char *dst, size_t size, const char *src)
{
	hv_strlcpy(dst, src ? src : "", size);
}

static int open_storvsc(struct blkdev *b, const struct blk_options *o)
{
	struct storvsc_dev *d = storvsc_dma_alloc(sizeof(*d));
	int rc;

	b->scratch = storvsc_dma_alloc(BLK_SCRATCH * sizeof(struct storvsc_completion));
	if (!d || !b->scratch)
		return BLK_EINVAL;
	b->u.storvsc = d;
	rc = storvsc_open(d, o->index, o->ring_pages);
	if (rc)
		return rc;
	d->poll = o->poll;
	b->tsc_hz = d->tsc_hz ? d->tsc_hz : blk_tsc_hz();
	d->stall_cycles = b->tsc_hz * o->stall_s;
	b->version = d->version;
	hv_snprintf(b->proto, sizeof(b->proto), "%u.%u", d->version >> 8, d->version & 0xff);
	b->blocks = d->blocks;
	b->block_size = d->block_size;
	b->max_transfer = d->max_transfer;
	b->qd_max = STORVSC_MAX_QD;
	b->write_protected = d->write_protected;
	copy_str(b->vendor, sizeof(b->vendor), d->vendor);
	copy_str(b->product, sizeof(b->product), d->product);
	copy_str(b->revision, sizeof(b->revision), d->revision);
	return 0;
}

static int open_virtio(struct blkdev *b, const struct blk_options *o)
{
	struct virtio_blk_dev *d = storvsc_dma_alloc(sizeof(*d));
	int rc;

	if (!d)
		return BLK_EINVAL;
	b->u.virtio = d;
	rc = virtio_blk_open(d, o->index, o->queue_size, o->event_idx, o->irq);
	if (rc)
		return rc;
	d->poll = o->poll;
	d->tsc_hz = b->tsc_hz;
	d->stall_cycles = b->tsc_hz * o->stall_s;
	b->version = d->version;
	hv_snprintf(b->proto, sizeof(b->proto), "virtio-mmio %u", d->version);
	b->blocks = d->capacity;
	b->block_size = BLK_SECTOR;
	b->max_transfer = BLK_MAX_XFER;
	b->qd_max = d->qsize / 3;
	b->write_protected = d->ro;
	copy_str(b->vendor, sizeof(b->vendor), d->vendor_id == 0x554d4551 ? "QEMU" :
		 d->vendor_id == 0x564b5648 ? "hvkvm" : "virtio");
	copy_str(b->product, sizeof(b->product), "virtio-blk");
	hv_snprintf(b->revision, sizeof(b->revision), "q%u%s", d->qsize, d->event_idx ? "e" : "");
	copy_str(b->serial, sizeof(b->serial), d->id);
	return 0;
}

static int open_ata(struct blkdev *b, const struct blk_options *o)
{
	struct ata_dev *d = storvsc_dma_alloc(sizeof(*d));
	int rc;

	if (!d)
		return BLK_EINVAL;
	b->u.ata = d;
	rc = ata_open(d, o->pio_width, o->irq);
	if (rc)
		return rc;
	d->poll = o->poll;
	d->stall_cycles = b->tsc_hz * o->stall_s;
	b->version = d->pio_width * 8u;
	hv_snprintf(b->proto, sizeof(b->proto), "ata-pio%u", d->pio_width * 8u);
	b->blocks = d->sectors;
	b->block_size = BLK_SECTOR;
	b->max_transfer = d->max_sectors * BLK_SECTOR;
	b->qd_max = 1;
	copy_str(b->vendor, sizeof(b->vendor), "ATA");
	copy_str(b->product, sizeof(b->product), d->model);
	copy_str(b->revision, sizeof(b->revision), d->firmware);
	copy_str(b->serial, sizeof(b->serial), d->serial);
	return 0;
}

static int open_mmio(struct blkdev *b, const struct blk_options *o)
{
	struct mmioblk_dev *d = storvsc_dma_alloc(sizeof(*d));
	int rc;

	if (!d)
		return BLK_EINVAL;
	b->u.mmio = d;
	rc = mmioblk_open(d, o->irq);
	if (rc)
		return rc;
	d->poll = o->poll;
	b->version = d->version;
	hv_snprintf(b->proto, sizeof(b->proto), "mmioblk %u", d->version);
	b->blocks = d->capacity;
	b->block_size = BLK_SECTOR;
	b->max_transfer = d->max_sectors * BLK_SECTOR;
	b->qd_max = MMIOBLK_MAX_QD;
	b->write_protected = d->ro;
	copy_str(b->vendor, sizeof(b->vendor), "hvkvm");
	copy_str(b->product, sizeof(b->product), "mmioblk");
	copy_str(b->revision, sizeof(b->revision), "1");
	copy_str(b->serial, sizeof(b->serial), d->id);
	return 0;
}

int blk_open(struct blkdev *b, const char *dev, const struct blk_options *o)
{
	struct blk_options defaults;
	enum blk_kind kind = blk_kind_of(dev);
	int rc;

	if (!b)
		return BLK_EINVAL;
	memset(b, 0, sizeof(*b));
	if (!o) {
		blk_options_from_cmdline(&defaults);
		o = &defaults;
	}
	b->kind = kind;
	b->poll = o->poll;
	switch (kind) {
	case BLK_STORVSC:
		copy_str(b->name, sizeof(b->name), "storvsc");
		rc = open_storvsc(b, o);
		break;
	case BLK_VIRTIO:
		copy_str(b->name, sizeof(b->name), "virtio");
		b->tsc_hz = blk_tsc_hz();
		rc = open_virtio(b, o);
		break;
	case BLK_ATA:
		copy_str(b->name, sizeof(b->name), "ata");
		b->tsc_hz = blk_tsc_hz();
		rc = open_ata(b, o);
		break;
	case BLK_MMIO:
		copy_str(b->name, sizeof(b->name), "mmio");
		b->tsc_hz = blk_tsc_hz();
		rc = open_mmio(b, o);
		break;
	default:
		return BLK_ENODEV;
	}
	if (rc)
		return rc;
	b->stall_cycles = b->tsc_hz * o->stall_s;
	return 0;
}

int blk_close(struct blkdev *b)
{
	switch (b ? b->kind : BLK_NONE) {
	case BLK_STORVSC:
		return storvsc_close(b->u.storvsc);
	case BLK_VIRTIO:
		return virtio_blk_close(b->u.virtio);
	case BLK_ATA:
		return ata_close(b->u.ata);
	case BLK_MMIO:
		return mmioblk_close(b->u.mmio);
	default:
		return BLK_EINVAL;
	}
}

void blk_open_from_cmdline(struct blkdev *b, const char *who, struct blk_options *o)
{
	char dev[16] = "storvsc";

	hv_arg("dev", dev, sizeof(dev));
	HV_ASSERT(blk_kind_of(dev) != BLK_NONE,
		  "%s: dev must be storvsc, virtio, ata or mmio, not '%s'", who, dev);
	blk_open_or_assert(b, dev, who, o);
}

void blk_open_or_assert(struct blkdev *b, const char *dev, const char *who,
			struct blk_options *o)
{
	struct blk_options opts;
	int rc;

	blk_options_from_cmdline(&opts);
	if (o)
		*o = opts;
	rc = blk_open(b, dev, &opts);
	if (rc && b->kind == BLK_STORVSC) {
		/* the device state is not there when its allocation was what failed */
		uint32_t proto = b->u.storvsc ? b->u.storvsc->version : 0;

		HV_ASSERT(0, "%s: storvsc_open: %d (%s; VMBus %u.%u, protocol %u.%u)", who, rc,
			  storvsc_strerror(rc), vmbus_conn.version >> 16,
			  vmbus_conn.version & 0xffff, proto >> 8, proto & 0xff);
	}
	HV_ASSERT(rc == 0, "%s: opening %s disk %u: %d (%s)", who, dev, opts.index, rc,
		  blk_strerror(b, rc));
}

void blk_job_from_cmdline(struct blk_job *j, struct blkdev *d, const char *who,
			  uint32_t default_bs, uint32_t default_qd)
{
	uint64_t chunk, qd;

	memset(j, 0, sizeof(*j));
	j->ring = (uint32_t)hv_arg_u64("ring", 3);
	HV_ASSERT(j->ring == 0 || j->ring == 3, "%s: ring must be 0 or 3", who);
	blk_open_from_cmdline(d, who, NULL);
	j->d = d;
	chunk = hv_arg_u64("bs", default_bs);
	if (chunk > d->max_transfer)
		chunk = d->max_transfer;
	HV_ASSERT(chunk >= d->block_size && chunk % d->block_size == 0,
		  "%s: bs must be a multiple of %u", who, d->block_size);
	j->chunk = (uint32_t)chunk;
	j->qd_max = blk_qd_max(d, j->chunk);
	qd = hv_arg_u64("qd", default_qd);
	if (qd > j->qd_max)
		qd = j->qd_max;
	HV_ASSERT(qd >= 1, "%s: qd must be >= 1", who);
	j->qd = (uint32_t)qd;
	j->buf_offset = (uint32_t)hv_arg_u64("buf_offset", 0);
	HV_ASSERT(j->buf_offset < HVR_PAGE_SIZE, "%s: buf_offset must be 0..4095", who);
	j->stride = (j->buf_offset + j->chunk + HVR_PAGE_SIZE - 1) & ~(HVR_PAGE_SIZE - 1);
	j->bufs = storvsc_dma_alloc((uint64_t)j->stride * j->qd);
	HV_ASSERT(j->bufs, "%s: no RAM for %u buffers of %u bytes", who, j->qd, j->chunk);
}

void blk_job_run(const struct blk_job *j, int (*task)(void *arg), void *arg)
{
	const struct blkdev *d = j->d;

	hv_sync(1, d->version, d->blocks, d->max_transfer, j->qd_max, d->write_protected);
	if (j->ring == 3)
		HV_ASSERT_EQ(hv_run_user(task, arg), 0);
	else
		task(arg);
}
