/*
 * u_netdev.c - the NIC glue's data path, callable from either ring (user-accessible): poll,
 * transmit, publish and counters dispatched to the netvsc or the virtio-net driver. See
 * include/netdev.h.
 */
#include "netdev.h"

void netdev_set_rx(struct netdev *d, void (*fn)(void *ctx, const uint8_t *frame, uint32_t len),
		   void *ctx)
{
	if (d->kind == NETDEV_VIRTIO)
		virtio_net_set_rx(d->vn, fn, ctx);
	else
		netvsc_set_rx(d->nv, fn, ctx);
}

int netdev_poll(struct netdev *d)
{
	return d->kind == NETDEV_VIRTIO ? virtio_net_poll(d->vn) : netvsc_poll(d->nv);
}

int netdev_link_tx(void *ctx, const uint8_t *frame, uint32_t len)
{
	struct netdev *d = ctx;

	return d->kind == NETDEV_VIRTIO ? virtio_net_tx(d->vn, frame, len) :
	       netvsc_tx(d->nv, frame, len);
}

int netdev_flush(struct netdev *d)
{
	return d->kind == NETDEV_VIRTIO ? virtio_net_flush(d->vn) : netvsc_flush(d->nv);
}

void netdev_poll_mode(struct netdev *d)
{
	if (d->kind == NETDEV_VIRTIO)
		virtio_net_irq_off(d->vn);
	else
		hvr_in_set_interrupt_mask(&d->nv->rings.in, 1);
}

void netdev_counters(const struct netdev *d, struct netdev_counters *c)
{
	memset(c, 0, sizeof(*c));
	if (d->kind == NETDEV_VIRTIO) {
		const struct virtio_net_dev *v = d->vn;

		c->rx_frames = v->st.rx_frames;
		c->rx_bad = v->st.rx_bad_id + v->st.rx_bad_len + v->st.rx_runt + v->st.rx_oversize +
			    v->rx.bad_used;
		c->tx_frames = v->st.tx_frames;
		c->tx_completions = v->st.tx_completions;
		c->tx_no_buffer = v->st.tx_full;
		c->kicks = v->rx.kicks + v->tx.kicks;
		c->kernel_waits = v->st.kernel_waits;
		c->interrupts = v->st.interrupts;
	} else if (d->kind == NETDEV_NETVSC) {
		const struct netvsc *nv = d->nv;

		c->rx_frames = nv->st.rx_frames;
		c->rx_bad = nv->st.rx_bad;
		c->tx_frames = nv->st.tx_frames;
		c->tx_completions = nv->st.tx_completions;
		c->tx_no_buffer = nv->st.tx_no_section;
		c->tx_ring_full = nv->st.tx_ring_full;
		c->kicks = nv->rings.kicks;
		c->kernel_waits = nv->st.kernel_waits;
	}
}

const char *netdev_broken_reason(const struct netdev *d)
{
	if (d->kind == NETDEV_VIRTIO) {
		if (d->vn->rx.broken || d->vn->tx.broken)
			return "a used ring index moved more than a queue ahead";
		if (d->vn->m.broken)
			return "the device set DEVICE_NEEDS_RESET";
		return "";
	}
	if (d->kind == NETDEV_NETVSC && (d->nv->rings.out.r.broken || d->nv->rings.in.r.broken))
		return "a VMBus ring broke";
	return "";
}
