/*
 * u_virtio_net.c - the virtio-net driver's data path, callable from either ring
 * (user-accessible): transmit completions, received frames with their checks, transmit, publish.
 * See include/virtio_net.h.
 */
#include "virtio_net.h"

void virtio_net_set_rx(struct virtio_net_dev *d, virtio_net_rx_fn fn, void *ctx)
{
	d->rx_fn = fn;
	d->rx_ctx = ctx;
}

void virtio_net_irq_off(struct virtio_net_dev *d)
{
	virtq_irq_off(&d->rx);
	virtq_irq_off(&d->tx);
}

static bool broken(struct virtio_net_dev *d)
{
	if (d->rx.broken || d->tx.broken)
		d->m.broken = 1;
	return d->m.broken;
}

/* Transmit completions: free the buffers the device is done with. */
static int reap_tx(struct virtio_net_dev *d)
{
	uint32_t id, len;
	int rc, n = 0;

	while ((rc = virtq_pop_used(&d->tx, &id, &len)) == 1) {
		n++;
		if (!d->tx_busy[id]) {
			d->st.tx_bad_id++;
			continue;
		}
		if (len != 0)
			d->st.tx_bad_len++; /* counted; the buffer is ours again either way */
		d->tx_busy[id] = 0;
		d->tx_inflight--;
		virtq_desc_free(&d->tx, (uint16_t)id);
		d->st.tx_completions++;
	}
	if (rc < 0)
		return VIRTIO_NET_EBROKEN;
	return n;
}

/* Received frames: checked, delivered, the buffer posted again. */
static int reap_rx(struct virtio_net_dev *d)
{
	uint32_t id, len;
	int rc, n = 0;

	while ((rc = virtq_pop_used(&d->rx, &id, &len)) == 1) {
		const uint8_t *buf;
		uint32_t flen;

		n++;
		if (!d->rx_posted[id]) {
			d->st.rx_bad_id++; /* not ours to take (the device named it twice) */
			continue;
		}
		d->rx_posted[id] = 0;
		buf = d->rx_bufs + id * VIRTIO_NET_BUF;
		if (len < VIRTIO_NET_HDR_LEN || len > VIRTIO_NET_BUF) {
			d->st.rx_bad_len++;
		} else if ((flen = len - VIRTIO_NET_HDR_LEN) < VIRTIO_NET_FRAME_MIN) {
			d->st.rx_runt++;
		} else if (flen > VIRTIO_NET_FRAME_MAX) {
			d->st.rx_oversize++;
		} else {
			d->st.rx_frames++;
			d->st.rx_bytes += flen;
			if (d->rx_fn)
				d->rx_fn(d->rx_ctx, buf + VIRTIO_NET_HDR_LEN, flen);
			else
				d->st.rx_no_handler++;
		}
		/* rewritten whole: a device that scribbled on the table cannot aim our next post */
		d->rx.desc[id].addr = (uintptr_t)buf;
		d->rx.desc[id].len = VIRTIO_NET_BUF;
		d->rx.desc[id].flags = VIRTQ_DESC_F_WRITE;
		d->rx.desc[id].next = 0;
		d->rx_posted[id] = 1;
		virtq_push(&d->rx, (uint16_t)id);
	}
	if (rc < 0)
		return VIRTIO_NET_EBROKEN;
	return n;
}

int virtio_net_flush(struct virtio_net_dev *d)
{
	if (broken(d))
		return VIRTIO_NET_EBROKEN;
	return virtq_publish(&d->rx, &d->m) + virtq_publish(&d->tx, &d->m);
}

int virtio_net_poll(struct virtio_net_dev *d)
{
	int t, r, k;

	d->st.polls++;
	if (broken(d) || d->delivering)
		return broken(d) ? VIRTIO_NET_EBROKEN : 0;
	t = reap_tx(d);
	d->delivering = 1;
	r = reap_rx(d);
	d->delivering = 0;
	k = virtio_net_flush(d);
	if (t < 0 || r < 0 || k < 0)
		return VIRTIO_NET_EBROKEN;
	return t + r;
}

int virtio_net_tx(struct virtio_net_dev *d, const uint8_t *frame, uint32_t len)
{
	struct virtq_desc *desc;
	uint8_t *buf;
	uint16_t i;

	if (broken(d))
		return VIRTIO_NET_EBROKEN;
	if (!d->tx.size || len < VIRTIO_NET_FRAME_MIN || len > VIRTIO_NET_FRAME_MAX)
		return VIRTIO_NET_EINVAL;
	if (!d->tx.num_free && reap_tx(d) < 0)
		return VIRTIO_NET_EBROKEN;
	if (!d->tx.num_free) {
		d->st.tx_full++;
		virtq_publish(&d->tx, &d->m); /* what waits must reach the device to drain */
		return VIRTIO_NET_EBUSY;
	}
	i = virtq_desc_alloc(&d->tx);
	buf = d->tx_bufs + (uint32_t)i * VIRTIO_NET_BUF;
	memset(buf, 0, VIRTIO_NET_HDR_LEN); /* no offloads: flags, gso_type NONE */
	memcpy(buf + VIRTIO_NET_HDR_LEN, frame, len);
	desc = &d->tx.desc[i];
	desc->addr = (uintptr_t)buf;
	desc->len = VIRTIO_NET_HDR_LEN + len;
	desc->flags = 0;
	desc->next = 0;
	d->tx_busy[i] = 1;
	d->tx_inflight++;
	virtq_push(&d->tx, i);
	d->st.tx_frames++;
	d->st.tx_bytes += len;
	return 0;
}
