/*
 * k_storvsc.c - the storvsc VSC's kernel part (ring 0, vCPU 0): DMA-able memory, opening the
 * channel, and the interrupt-driven wait and HvSignalEvent the I/O engine (u_storvsc.c) uses when
 * it runs in ring 0. See include/storvsc.h.
 */
#include "storvsc.h"
#include "rt.h"

/* ------------------------------------------------------------------------------------------ */
/* Memory for rings and data buffers: bump allocation over RAM from 8 MiB (the end of the 4 KiB
 * mapped part, above any image) up, user-accessible. */

static uint64_t dma_next;

/* The end of the type-1 E820 entry that contains `addr`, or 0. */
static uint64_t ram_end_at(uint64_t addr)
{
	for (uint32_t i = 0; i < hv_boot.memmap_entries && i < HV_MEMMAP_MAX; i++) {
		const struct hv_memmap_entry *e = &hv_boot.memmap[i];

		if (e->type == 1 && addr >= e->addr && addr < e->addr + e->size)
			return e->addr + e->size;
	}
	return 0;
}

static void dma_init(void)
{
	uint64_t start = (uintptr_t)__image_end;

	if (dma_next)
		return;
	if (start < HV_4K_MAPPED_END)
		start = HV_4K_MAPPED_END;
	dma_next = (start + HVR_PAGE_SIZE - 1) & ~(uint64_t)(HVR_PAGE_SIZE - 1);
}

uint64_t storvsc_dma_free_bytes(void)
{
	uint64_t end;

	dma_init();
	end = ram_end_at(dma_next);
	if (end > (1ULL << 32))
		end = 1ULL << 32; /* the identity map's reach */
	return end > dma_next ? end - dma_next : 0;
}

void *storvsc_dma_alloc(uint64_t size)
{
	uint64_t a;

	size = (size + HVR_PAGE_SIZE - 1) & ~(uint64_t)(HVR_PAGE_SIZE - 1);
	if (!size || size > storvsc_dma_free_bytes())
		return NULL;
	a = dma_next;
	if (!hv_user_map(a, size))
		return NULL;
	dma_next += size;
	return (void *)(uintptr_t)a;
}

/* ------------------------------------------------------------------------------------------ */
/* Ring 0 hooks of the engine. */

/* Linux's hv_end_read / hv_begin_read around a sleep: unmask, re-check (a completion that raced
 * in before the unmask raised no interrupt), `sti; hlt` until the channel's event, mask again. */
static void kwait(struct storvsc_dev *d)
{
	struct vmbus_channel *ch = d->channel;
	uint64_t seen = ch->events;
	int rc;

	__asm__ volatile("sti; nop; cli" ::: "memory"); /* what a kernel with IF=1 took already */
	if (ch->events != seen)
		return;
	rc = hvr_in_unmask(&d->rings.in);
	if (rc == 0) {
		d->waits++;
		while (ch->events == seen)
			__asm__ volatile("sti; hlt; cli" ::: "memory");
	}
	hvr_in_set_interrupt_mask(&d->rings.in, 1);
}

static void kkick(struct storvsc_dev *d)
{
	struct vmbus_channel *ch = d->channel;

	ch->host_signals++;
	if (hv_signal_event(ch->connection_id) & HV_HYPERCALL_RESULT_MASK)
		d->rings.kick_errors++;
}

/* ------------------------------------------------------------------------------------------ */

int storvsc_open(struct storvsc_dev *d, unsigned n, uint32_t ring_pages)
{
	struct vmbus_channel *ch;
	uint8_t *area;
	int rc;

	if (!d || ring_pages < 1 || ring_pages > 256)
		return STORVSC_EINVAL;
	memset(d, 0, sizeof(*d));
	if (!vmbus_conn.version) {
		rc = vmbus_init(VMBUS_VECTOR_DEFAULT);
		if (rc)
			return rc;
	}
	ch = vmbus_find_channel(&HV_SCSI_GUID, n);
	if (!ch)
		return STORVSC_ENODEV;
	area = storvsc_dma_alloc(2 * ((uint64_t)ring_pages + 1) * HVR_PAGE_SIZE);
	if (!area)
		return STORVSC_EINVAL;
	rc = vmbus_channel_open(ch, area, ring_pages + 1, ring_pages + 1);
	if (rc)
		return rc;
	rc = vmbus_channel_to_user(ch, &d->rings);
	if (rc) {
		vmbus_channel_close(ch);
		return rc;
	}
	d->channel = ch;
	d->kwait = kwait;
	d->kkick = kkick;
	d->tsc_hz = hv_hyperv.tsc_hz;
	/* Drain with the ring masked; kwait unmasks only around a sleep. */
	hvr_in_set_interrupt_mask(&d->rings.in, 1);
	rc = storvsc_handshake(d);
	if (!rc)
		rc = storvsc_probe(d);
	return rc;
}

int storvsc_close(struct storvsc_dev *d)
{
	struct vmbus_channel *ch = d ? d->channel : NULL;
	int rc;

	if (!ch || d->inflight)
		return STORVSC_EINVAL;
	hvr_in_set_interrupt_mask(&d->rings.in, 0);
	rc = vmbus_channel_from_user(ch, &d->rings);
	if (rc)
		return rc;
	rc = vmbus_channel_close(ch);
	d->channel = NULL;
	d->ready = 0;
	return rc;
}
