/*
 * u_virtio.c - the split virtqueue, driver side, callable from either ring (user-accessible):
 * the descriptor free list, publishing with notification suppression, taking used entries with
 * their checks, interrupts on/off. Shared by the virtio-blk and virtio-net drivers; see
 * include/virtio.h.
 */
#include "virtio.h"

uint16_t virtq_desc_alloc(struct virtq *q)
{
	uint16_t i = q->free_head;

	q->free_head = q->desc[i].next;
	q->num_free--;
	return i;
}

void virtq_desc_free(struct virtq *q, uint16_t i)
{
	q->desc[i].next = q->free_head;
	q->free_head = i;
	q->num_free++;
}

void virtq_push(struct virtq *q, uint16_t head)
{
	q->avail->ring[q->avail_idx % q->size] = head;
	q->avail_idx++;
	q->uncommitted++;
}

int virtq_publish(struct virtq *q, const struct virtio_mmio *m)
{
	uint16_t old, new_idx;
	bool need;

	if (!q->uncommitted)
		return 0;
	q->uncommitted = 0;
	old = q->avail_published;
	new_idx = q->avail_idx;
	/* release: the ring entries and descriptors are visible before the index that covers them */
	__atomic_store_n(&q->avail->idx, new_idx, __ATOMIC_RELEASE);
	q->avail_published = new_idx;
	/* we store avail->idx then load avail_event; the device stores avail_event then loads idx */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (q->event_idx)
		need = virtq_need_event(__atomic_load_n(q->avail_event, __ATOMIC_RELAXED), new_idx,
					old);
	else
		need = !(__atomic_load_n(&q->used->flags, __ATOMIC_RELAXED) &
			 VIRTQ_USED_F_NO_NOTIFY);
	if (!need) {
		q->kicks_suppressed++;
		return 0;
	}
	q->kicks++;
	virtio_write32(m, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
	return 1;
}

bool virtq_has_used(const struct virtq *q)
{
	/* acquire: pairs with the device's release of used->idx after writing the entry */
	return __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE) != q->last_used;
}

int virtq_pop_used(struct virtq *q, uint32_t *id, uint32_t *len)
{
	uint16_t used_idx;

	if (q->broken)
		return VIRTIO_EPROTO;
	/* acquire: the entry (and the buffer it names) is read only after the index covering it */
	used_idx = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
	if ((uint16_t)(used_idx - q->last_used) > q->size) {
		q->broken = 1;
		return VIRTIO_EPROTO;
	}
	while (q->last_used != used_idx) {
		const volatile struct virtq_used_elem *e = &q->used->ring[q->last_used % q->size];
		uint32_t i = e->id, l = e->len;

		q->last_used++;
		if (q->event_idx)
			virtq_irq_off(q); /* keep used_event out of the device's range */
		if (i >= q->size) {
			q->bad_used++;
			continue;
		}
		*id = i;
		*len = l;
		return 1;
	}
	return 0;
}

void virtq_irq_off(struct virtq *q)
{
	if (q->event_idx)
		/* Half the index space away from anything the device can be publishing: the device
		 * is never more than a queue ahead of what was taken, and may still be deciding about
		 * the entry just taken (so last_used - 1 would fire now and then). Rewritten at every
		 * pop, so it never comes into range. */
		__atomic_store_n(q->used_event, (uint16_t)(q->last_used + 0x8000), __ATOMIC_RELAXED);
	else
		__atomic_store_n(&q->avail->flags, VIRTQ_AVAIL_F_NO_INTERRUPT, __ATOMIC_RELAXED);
}

void virtq_irq_on(struct virtq *q)
{
	if (q->event_idx)
		__atomic_store_n(q->used_event, q->last_used, __ATOMIC_RELAXED);
	else
		__atomic_store_n(&q->avail->flags, 0, __ATOMIC_RELAXED);
	/* the device stores used->idx then loads used_event; we store used_event then load idx */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

uint32_t virtio_mmio_status(struct virtio_mmio *m)
{
	uint32_t st = virtio_read32(m, VIRTIO_MMIO_STATUS);

	if (st & VIRTIO_STATUS_NEEDS_RESET)
		m->broken = 1;
	return st;
}
