/*
 * k_netdev.c - the NIC glue's kernel part (ring 0, vCPU 0): open the NIC that dev= names and
 * wait for its link, the interrupt sleep, the polling loops that sleep when idle, the close.
 * See include/netdev.h.
 */
#include "netdev.h"
#include "blkdev.h" /* blk_tsc_hz: the TSC rate without Hyper-V (LAPIC timer) */
#include "rt.h"

static void copy_name(struct netdev *d, const char *s)
{
	size_t i = 0;

	for (; s[i] && i < sizeof(d->name) - 1; i++)
		d->name[i] = s[i];
	d->name[i] = 0;
}

static int open_virtio(struct netdev *d)
{
	struct virtio_net_dev *vn = storvsc_dma_alloc(sizeof(*vn));
	uint64_t qs = hv_arg_u64("queue_size", 0);
	uint64_t t0;
	int rc;

	if (!vn)
		return VIRTIO_NET_EINVAL;
	d->vn = vn;
	if (qs > VIRTIO_NET_MAX_QSIZE)
		return VIRTIO_NET_EINVAL;
	rc = virtio_net_open(vn, 0, (uint32_t)qs, hv_arg_u64("event_idx", 1) != 0, true);
	if (rc)
		return rc;
	d->tsc_hz = blk_tsc_hz();
	memcpy(d->mac, vn->mac, NET_ETH_ALEN);
	d->info[0] = vn->m.version;
	d->info[1] = (uint32_t)vn->m.features;
	d->info[2] = (uint64_t)vn->rx.size << 32 | vn->tx.size;
	/* The link: STATUS says when it is up (QEMU's is up unless `set_link ... off`). */
	t0 = blk_rdtsc();
	while (vn->has_status && !(vn->link_status & VIRTIO_NET_S_LINK_UP)) {
		uint32_t gen;

		if (blk_rdtsc() - t0 > d->tsc_hz * 30)
			return VIRTIO_NET_EPROTO;
		hv_udelay(1000);
		do {
			gen = virtio_read32(&vn->m, VIRTIO_MMIO_CONFIG_GENERATION);
			vn->link_status = *(volatile uint16_t *)(vn->m.regs + VIRTIO_MMIO_CONFIG +
								 VIRTIO_NET_CFG_STATUS);
		} while (gen != virtio_read32(&vn->m, VIRTIO_MMIO_CONFIG_GENERATION));
	}
	return 0;
}

int netdev_open(struct netdev *d, const char *dev, struct netvsc *nv,
		const struct netvsc_config *cfg)
{
	int rc;

	memset(d, 0, sizeof(*d));
	if (!dev)
		dev = "netvsc";
	copy_name(d, dev);
	if (!strcmp(dev, "virtio")) {
		d->kind = NETDEV_VIRTIO;
		return open_virtio(d);
	}
	if (strcmp(dev, "netvsc"))
		return NETDEV_EKIND;
	d->kind = NETDEV_NETVSC;
	d->nv = nv;
	rc = netvsc_open(nv, cfg);
	if (rc)
		return rc;
	if (!nv->link_up) {
		hv_log("netdev: link down, waiting for the host to connect it");
		rc = netvsc_kwait_link(nv);
		if (rc)
			return rc;
	}
	d->tsc_hz = nv->tsc_hz;
	memcpy(d->mac, nv->mac, NET_ETH_ALEN);
	d->info[0] = nv->nvsp_version;
	d->info[1] = nv->ndis_version;
	d->info[2] = (uint64_t)nv->recv_section_count << 32 | nv->send_section_count;
	return 0;
}

void netdev_kwait(struct netdev *d)
{
	if (d->kind == NETDEV_VIRTIO)
		virtio_net_kwait(d->vn);
	else
		netvsc_kwait(d->nv);
}

int netdev_run_user(struct netdev *d, int (*fn)(void *), void *arg)
{
	for (;;) {
		int rc = hv_run_user(fn, arg);

		if (rc != NETDEV_IDLE)
			return rc;
		netdev_kwait(d);
	}
}

int netdev_run_kernel(struct netdev *d, int (*fn)(void *), void *arg)
{
	for (;;) {
		int rc = fn(arg);

		if (rc != NETDEV_IDLE)
			return rc;
		netdev_kwait(d);
	}
}

int netdev_close(struct netdev *d)
{
	if (d->kind == NETDEV_VIRTIO) {
		/* let what was queued go out before the reset drops it (bounded) */
		for (unsigned i = 0; i < 1000 && d->vn->tx_inflight && !d->vn->m.broken; i++) {
			if (virtio_net_poll(d->vn) <= 0 && d->vn->tx_inflight)
				hv_udelay(1000);
		}
		return virtio_net_close(d->vn);
	}
	if (d->kind == NETDEV_NETVSC)
		return netvsc_close(d->nv);
	return NETDEV_EKIND;
}

const char *netdev_strerror(const struct netdev *d, int rc)
{
	(void)d;
	switch (rc) {
	case NETDEV_EKIND:
		return "dev must be netvsc or virtio";
	case VIRTIO_NET_ENODEV:
		return "no virtio-net device (virtio-mmio Version 2, VERSION_1)";
	case VIRTIO_NET_EINVAL:
		return "bad queue size or no memory";
	case VIRTIO_NET_EPROTO:
		return "the device broke the set-up protocol (or its link stayed down)";
	case VIRTIO_NET_EBROKEN:
		return "the device needs a reset";
	case NETVSC_ENODEV:
		return "no netvsc offer";
	case NETVSC_EVERSION:
		return "the host accepted no NVSP version";
	case NETVSC_EHOST:
		return "the host refused a step";
	default:
		return "error";
	}
}
