/*
 * k_virtio_net.c - the virtio-net driver's kernel part (ring 0, vCPU 0): set-up over the shared
 * virtio-mmio transport (rt/k_virtio.c), the buffers, the receive queue filled before DRIVER_OK,
 * the interrupt hook, the ring-0 sleep and the reset. See include/virtio_net.h.
 */
#include "virtio_net.h"
#include "rt.h"

void *storvsc_dma_alloc(uint64_t size);

static int net_rc(int rc)
{
	switch (rc) {
	case 0:
		return 0;
	case VIRTIO_ENODEV:
		return VIRTIO_NET_ENODEV;
	case VIRTIO_EBROKEN:
		return VIRTIO_NET_EBROKEN;
	case VIRTIO_EPROTO:
		return VIRTIO_NET_EPROTO;
	default:
		return VIRTIO_NET_EINVAL;
	}
}

static void on_irq(struct virtio_mmio *m, uint32_t isr)
{
	struct virtio_net_dev *d = m->owner;

	(void)isr;
	d->st.interrupts++;
}

void virtio_net_kwait(struct virtio_net_dev *d)
{
	if (!d->m.vector)
		return; /* no interrupt routed: the caller polls */
	if (virtio_mmio_kwait(&d->m, &d->rx))
		d->st.kernel_waits++;
}

static void read_config(struct virtio_net_dev *d)
{
	struct virtio_mmio *m = &d->m;
	uint32_t gen;

	do {
		gen = virtio_read32(m, VIRTIO_MMIO_CONFIG_GENERATION);
		if (m->features & (1ULL << VIRTIO_NET_F_MAC)) {
			/* byte accesses: the configuration space is little-endian bytes */
			for (unsigned i = 0; i < 6; i++)
				d->mac[i] = *(volatile uint8_t *)(m->regs + VIRTIO_MMIO_CONFIG +
								  VIRTIO_NET_CFG_MAC + i);
		}
		if (d->has_status)
			d->link_status = *(volatile uint16_t *)(m->regs + VIRTIO_MMIO_CONFIG +
								VIRTIO_NET_CFG_STATUS);
	} while (gen != virtio_read32(m, VIRTIO_MMIO_CONFIG_GENERATION));
}

int virtio_net_open(struct virtio_net_dev *d, unsigned n, uint32_t queue_size, bool event_idx,
		    bool irq)
{
	static const uint8_t default_mac[6] = { 0x02, 0, 0, 0, 0, 0x01 };
	struct virtio_mmio *m;
	uint64_t want;
	int rc;

	if (!d || queue_size > VIRTIO_NET_MAX_QSIZE)
		return VIRTIO_NET_EINVAL;
	memset(d, 0, sizeof(*d));
	m = &d->m;
	rc = virtio_mmio_probe(m, VIRTIO_ID_NET, n, "virtio-net");
	if (rc)
		return net_rc(rc);
	want = 1ULL << VIRTIO_NET_F_MAC | 1ULL << VIRTIO_NET_F_STATUS;
	if (event_idx)
		want |= 1ULL << VIRTIO_RING_F_EVENT_IDX;
	rc = virtio_mmio_negotiate(m, want);
	if (rc)
		return net_rc(rc);
	d->has_status = (m->features >> VIRTIO_NET_F_STATUS) & 1;
	memcpy(d->mac, default_mac, sizeof(d->mac));

	rc = virtio_mmio_queue(m, &d->rx, VIRTIO_NET_RXQ, queue_size, VIRTIO_NET_MAX_QSIZE);
	if (rc)
		return net_rc(rc);
	rc = virtio_mmio_queue(m, &d->tx, VIRTIO_NET_TXQ, queue_size, VIRTIO_NET_MAX_QSIZE);
	if (rc)
		return net_rc(rc);
	d->rx_bufs = storvsc_dma_alloc((uint64_t)d->rx.size * VIRTIO_NET_BUF);
	d->tx_bufs = storvsc_dma_alloc((uint64_t)d->tx.size * VIRTIO_NET_BUF);
	if (!d->rx_bufs || !d->tx_bufs)
		return virtio_mmio_fail(m, VIRTIO_NET_EINVAL);

	/* Descriptor i names buffer i for good; every receive buffer is posted now. */
	for (uint16_t i = 0; i < d->rx.size; i++) {
		d->rx.desc[i].addr = (uintptr_t)(d->rx_bufs + (uint32_t)i * VIRTIO_NET_BUF);
		d->rx.desc[i].len = VIRTIO_NET_BUF;
		d->rx.desc[i].flags = VIRTQ_DESC_F_WRITE;
		d->rx.desc[i].next = 0;
		d->rx_posted[i] = 1;
		virtq_push(&d->rx, i);
	}
	d->rx.num_free = 0; /* the receive queue does not use the free list */
	for (uint16_t i = 0; i < d->tx.size; i++)
		d->tx.desc[i].addr = (uintptr_t)(d->tx_bufs + (uint32_t)i * VIRTIO_NET_BUF);

	/* The interrupt before DRIVER_OK: nothing can be lost. */
	if (irq) {
		rc = virtio_mmio_irq(m, on_irq, d);
		if (rc)
			return virtio_mmio_fail(m, VIRTIO_NET_EINVAL);
	}
	rc = virtio_mmio_driver_ok(m);
	if (rc)
		return net_rc(rc);
	read_config(d);
	/* 5.1.6.3: the receive buffers go to the device once it is live */
	virtq_publish(&d->rx, m);
	return 0;
}

int virtio_net_close(struct virtio_net_dev *d)
{
	if (!d || !d->m.regs)
		return VIRTIO_NET_EINVAL;
	virtio_mmio_reset(&d->m);
	d->rx.size = d->tx.size = 0;
	return 0;
}
