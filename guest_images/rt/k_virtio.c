/*
 * k_virtio.c - the virtio-mmio transport, ring 0 on vCPU 0: finding devices, the
 * initialization steps, queue set-up, the interrupt (IOAPIC route, handler) and the ring-0
 * wait, shared by the virtio-blk and virtio-net drivers. See include/virtio.h.
 */
#include "virtio.h"
#include "rt.h"

#define IOAPIC2_BASE 0xfec10000u
#define PAGE 4096u
#define IOAPIC2_GSI_BASE 24u

/* storvsc_dma_alloc (rt/k_storvsc.c): page-aligned, user-accessible, identity-mapped RAM. */
void *storvsc_dma_alloc(uint64_t size);

static struct virtio_mmio *vector_dev[VIRTIO_MAX_DEVICES];

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
	struct virtio_mmio *m;
	uint32_t isr;

	(void)regs;
	if (vector < VIRTIO_VECTOR_BASE || vector >= VIRTIO_VECTOR_BASE + VIRTIO_MAX_DEVICES)
		return;
	m = vector_dev[vector - VIRTIO_VECTOR_BASE];
	if (!m)
		return;
	isr = virtio_read32(m, VIRTIO_MMIO_INTERRUPT_STATUS);
	if (isr)
		virtio_write32(m, VIRTIO_MMIO_INTERRUPT_ACK, isr);
	if (isr & VIRTIO_INT_USED)
		m->isr_used++;
	if (isr & VIRTIO_INT_CONFIG) {
		m->isr_config++;
		virtio_mmio_status(m);
	}
	if (m->on_irq)
		m->on_irq(m, isr);
	m->events++;
}

bool virtio_mmio_kwait(struct virtio_mmio *m, struct virtq *q)
{
	uint64_t seen = m->events;
	bool slept = false;

	__asm__ volatile("sti; nop; cli" ::: "memory"); /* what a kernel with IF=1 took already */
	if (m->events != seen)
		return false;
	virtq_irq_on(q);
	if (!virtq_has_used(q) && !m->broken && !q->broken) {
		slept = true;
		while (m->events == seen && !m->broken)
			__asm__ volatile("sti; hlt; cli" ::: "memory");
	}
	virtq_irq_off(q);
	return slept;
}

/* ------------------------------------------------------------------------------------------ */
/* Initialization. */

static void set_status(struct virtio_mmio *m, uint32_t bits)
{
	m->status |= bits;
	virtio_write32(m, VIRTIO_MMIO_STATUS, m->status);
}

int virtio_mmio_fail(struct virtio_mmio *m, int rc)
{
	if (m->regs)
		set_status(m, VIRTIO_STATUS_FAILED);
	return rc;
}

int virtio_mmio_probe(struct virtio_mmio *m, uint32_t device_id, unsigned n, const char *name)
{
	uint64_t bases[VIRTIO_MMIO_MAX_SLOTS];
	uint32_t sizes[VIRTIO_MMIO_MAX_SLOTS], irqs[VIRTIO_MMIO_MAX_SLOTS];
	unsigned count, seen = 0;

	memset(m, 0, sizeof(*m));
	count = virtio_mmio_find(bases, sizes, irqs, VIRTIO_MMIO_MAX_SLOTS);
	for (unsigned i = 0; i < count; i++) {
		volatile uint8_t *r = (volatile uint8_t *)(uintptr_t)bases[i];
		uint32_t version;

		if (*(volatile uint32_t *)(r + VIRTIO_MMIO_MAGIC_VALUE) != VIRTIO_MMIO_MAGIC ||
		    *(volatile uint32_t *)(r + VIRTIO_MMIO_DEVICE_ID) != device_id)
			continue;
		version = *(volatile uint32_t *)(r + VIRTIO_MMIO_VERSION);
		if (version != 2) {
			hv_log("%s: device at 0x%llx is virtio-mmio version %u (legacy): "
			       "skipped (QEMU: -global virtio-mmio.force-legacy=false)", name,
			       (unsigned long long)bases[i], version);
			continue;
		}
		if (seen++ != n)
			continue;
		m->base = bases[i];
		m->size = sizes[i];
		m->irq = irqs[i];
		m->regs = r;
		m->device_id = virtio_read32(m, VIRTIO_MMIO_DEVICE_ID);
		m->vendor_id = virtio_read32(m, VIRTIO_MMIO_VENDOR_ID);
		m->version = virtio_read32(m, VIRTIO_MMIO_VERSION);
		if (!hv_user_map(m->base, m->size)) {
			m->regs = NULL;
			return VIRTIO_EINVAL;
		}
		return 0;
	}
	return VIRTIO_ENODEV;
}

int virtio_mmio_negotiate(struct virtio_mmio *m, uint64_t want)
{
	uint64_t host;

	/* 3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK. */
	m->status = 0;
	virtio_write32(m, VIRTIO_MMIO_STATUS, 0);
	set_status(m, VIRTIO_STATUS_ACKNOWLEDGE);
	set_status(m, VIRTIO_STATUS_DRIVER);
	virtio_write32(m, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	host = virtio_read32(m, VIRTIO_MMIO_DEVICE_FEATURES);
	virtio_write32(m, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	host |= (uint64_t)virtio_read32(m, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	m->host_features = host;
	if (!(host & (1ULL << VIRTIO_F_VERSION_1)))
		return virtio_mmio_fail(m, VIRTIO_ENODEV);
	m->features = host & (want | 1ULL << VIRTIO_F_VERSION_1);
	virtio_write32(m, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	virtio_write32(m, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)m->features);
	virtio_write32(m, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	virtio_write32(m, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(m->features >> 32));
	set_status(m, VIRTIO_STATUS_FEATURES_OK);
	if (!(virtio_read32(m, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK))
		return virtio_mmio_fail(m, VIRTIO_EPROTO);
	return 0;
}

int virtio_mmio_queue(struct virtio_mmio *m, struct virtq *q, uint16_t index, uint32_t size,
		      uint32_t max_size)
{
	uint32_t qmax;
	uint8_t *page;

	memset(q, 0, sizeof(*q));
	if (max_size > VIRTQ_MAX_SIZE)
		max_size = VIRTQ_MAX_SIZE;
	virtio_write32(m, VIRTIO_MMIO_QUEUE_SEL, index);
	if (virtio_read32(m, VIRTIO_MMIO_QUEUE_READY))
		return virtio_mmio_fail(m, VIRTIO_EPROTO);
	qmax = virtio_read32(m, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (!qmax)
		return virtio_mmio_fail(m, VIRTIO_ENODEV);
	if (!size)
		size = qmax < max_size ? qmax : max_size;
	if (size > max_size || size > qmax || size < 2 || (size & (size - 1)))
		return virtio_mmio_fail(m, VIRTIO_EINVAL);
	/* desc (16 * 256), driver area (6 + 2 * 256), device area (6 + 8 * 256): a page each. */
	page = storvsc_dma_alloc(3 * PAGE);
	if (!page)
		return virtio_mmio_fail(m, VIRTIO_EINVAL);
	memset(page, 0, 3 * PAGE);
	q->size = (uint16_t)size;
	q->index = index;
	q->event_idx = (m->features >> VIRTIO_RING_F_EVENT_IDX) & 1;
	q->desc = (struct virtq_desc *)(void *)page;
	q->avail = (struct virtq_avail *)(void *)(page + PAGE);
	q->used = (struct virtq_used *)(void *)(page + 2 * PAGE);
	q->used_event = &q->avail->ring[q->size];
	q->avail_event = (volatile uint16_t *)(void *)&q->used->ring[q->size];
	for (uint16_t i = 0; i < q->size; i++)
		q->desc[i].next = (uint16_t)(i + 1);
	q->free_head = 0;
	q->num_free = q->size;
	virtq_irq_off(q);
	virtio_write32(m, VIRTIO_MMIO_QUEUE_NUM, q->size);
	virtio_write32(m, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)(uintptr_t)q->desc);
	virtio_write32(m, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
	virtio_write32(m, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)(uintptr_t)q->avail);
	virtio_write32(m, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, 0);
	virtio_write32(m, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)(uintptr_t)q->used);
	virtio_write32(m, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, 0);
	virtio_write32(m, VIRTIO_MMIO_QUEUE_READY, 1);
	return 0;
}

int virtio_mmio_irq(struct virtio_mmio *m, virtio_irq_fn fn, void *owner)
{
	unsigned v;

	for (v = 0; v < VIRTIO_MAX_DEVICES && vector_dev[v] && vector_dev[v] != m; v++)
		;
	if (v == VIRTIO_MAX_DEVICES)
		return VIRTIO_EINVAL;
	m->on_irq = fn;
	m->owner = owner;
	vector_dev[v] = m;
	m->vector = VIRTIO_VECTOR_BASE + v;
	hv_irq_register(m->vector, virtio_isr);
	route(m->irq, (uint8_t)m->vector, 0);
	return 0;
}

int virtio_mmio_driver_ok(struct virtio_mmio *m)
{
	set_status(m, VIRTIO_STATUS_DRIVER_OK);
	if (virtio_read32(m, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET) {
		m->broken = 1;
		return VIRTIO_EBROKEN;
	}
	return 0;
}

void virtio_mmio_reset(struct virtio_mmio *m)
{
	if (!m->regs)
		return;
	if (m->vector) {
		route(m->irq, (uint8_t)m->vector, HV_IOAPIC_MASKED);
		vector_dev[m->vector - VIRTIO_VECTOR_BASE] = NULL;
		m->vector = 0;
	}
	virtio_write32(m, VIRTIO_MMIO_STATUS, 0); /* reset: the device lets go of the queues */
	m->status = 0;
}
