/*
 * virtio.h - what the guest runtime's virtio drivers (include/virtio_blk.h, include/virtio_net.h)
 * share: the virtio-mmio transport (virtio 1.x "modern", Version 2) and the split virtqueue.
 * Facts from the virtio 1.2 specification (4.2 virtio over MMIO, 2.7 split virtqueues, 3.1
 * device initialization); our own code.
 *
 *   Transport (rt/k_virtio.c, ring 0, vCPU 0): virtio_mmio_find() lists the candidate slots
 *   (`virtio_mmio.device=SIZE@BASE:IRQ` words on the command line, in order, else QEMU microvm's
 *   slots, highest first; see include/virtio_blk.h for the layouts). virtio_mmio_probe() takes the
 *   n-th slot that reads MagicValue "virt", Version 2 and the wanted DeviceID (Version 1 "legacy"
 *   devices are logged and skipped) and opens its 2 MiB page to ring 3 (QueueNotify from a
 *   ring-3 task). virtio_mmio_negotiate() is 3.1.1 steps 1-6 (reset, ACKNOWLEDGE, DRIVER, the
 *   feature words, FEATURES_OK read back); VERSION_1 is required. virtio_mmio_queue() sets one
 *   queue up (QueueSel, QueueReady must read 0, QueueNumMax, size, the three areas each in its own
 *   page from storvsc_dma_alloc, QueueReady). virtio_mmio_irq() routes the device's GSI (IOAPIC
 *   0xfec00000 for 0-23, microvm's second IOAPIC at 0xfec10000 for 24 and up) to a vector of
 *   0x60-0x67; the handler reads InterruptStatus, writes InterruptACK, counts, and on a
 *   configuration change reads Status: DEVICE_NEEDS_RESET marks the device broken.
 *
 *   Split virtqueue (rt/u_virtio.c, any ring): a free list of descriptors, a private available
 *   index published with one release store per batch (virtq_publish), then a full fence and a
 *   QueueNotify write only when vring_need_event(avail_event, new, old) says so (EVENT_IDX) or the
 *   device has not set VRING_USED_F_NO_NOTIFY. Used entries (virtq_pop_used): the device's
 *   used->idx may run at most `size` entries ahead of what was taken, else the queue is broken;
 *   an entry's id must name a descriptor below `size` (else counted in bad_used and skipped); the
 *   caller checks that the id is one it has in flight and that the length fits what it posted.
 *   Interrupts: off (polling) is used_event half the index space past the last entry taken,
 *   rewritten at every pop, or VRING_AVAIL_F_NO_INTERRUPT without EVENT_IDX; on is used_event =
 *   the next entry (or the flag cleared), then a full fence before the caller re-checks.
 */
#ifndef HV_VIRTIO_H
#define HV_VIRTIO_H

#include "hv.h"

#define VIRTIO_MMIO_MAGIC 0x74726976u /* "virt" */
#define VIRTIO_MMIO_BASE 0xfeb00000u
#define VIRTIO_MMIO_SLOT_SIZE 0x200u
#define VIRTIO_MMIO_SLOTS 8u
#define VIRTIO_MMIO_IRQ_BASE 5u
#define VIRTIO_MMIO_MAX_SLOTS 24u
#define VIRTIO_MAX_DEVICES 8u
#define VIRTIO_VECTOR_BASE 0x60u

/* Registers (4.2.2). */
#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_STATUS_ACKNOWLEDGE 1u
#define VIRTIO_STATUS_DRIVER 2u
#define VIRTIO_STATUS_DRIVER_OK 4u
#define VIRTIO_STATUS_FEATURES_OK 8u
#define VIRTIO_STATUS_NEEDS_RESET 64u
#define VIRTIO_STATUS_FAILED 128u

#define VIRTIO_INT_USED 1u
#define VIRTIO_INT_CONFIG 2u

#define VIRTIO_ID_NET 1u
#define VIRTIO_ID_BLOCK 2u

#define VIRTIO_RING_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32

/* Split virtqueue (2.7). */
#define VIRTQ_DESC_F_NEXT 1u
#define VIRTQ_DESC_F_WRITE 2u
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1u
#define VIRTQ_USED_F_NO_NOTIFY 1u
#define VIRTQ_MAX_SIZE 256u /* each area then fits one page */

/* Errors of the shared code (the drivers map them to their own). */
#define VIRTIO_ENODEV (-1)  /* no such device, or it lacks VERSION_1 / queues */
#define VIRTIO_EINVAL (-2)  /* bad argument (queue size), or no memory */
#define VIRTIO_EPROTO (-3)  /* the device broke the protocol (FEATURES_OK refused, used ring) */
#define VIRTIO_EBROKEN (-4) /* the device set DEVICE_NEEDS_RESET */

struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct virtq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[]; /* then uint16_t used_event */
};

struct virtq_used_elem {
	uint32_t id;
	uint32_t len;
};

struct virtq_used {
	uint16_t flags;
	uint16_t idx;
	struct virtq_used_elem ring[]; /* then uint16_t avail_event */
};

_Static_assert(sizeof(struct virtq_desc) == 16, "virtq_desc");

/* vring_need_event() of the specification. */
static inline int virtq_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old)
{
	return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old);
}

/* One split virtqueue, driver side. User-accessible when ring 3 drives it. */
struct virtq {
	uint16_t size;              /* entries (a power of two); 0: not set up */
	uint16_t index;             /* the queue's number (what QueueNotify carries) */
	uint16_t free_head, num_free;
	uint16_t last_used;         /* next used ring entry to take */
	uint16_t avail_idx;         /* next avail ring slot (private copy) */
	uint16_t avail_published;   /* avail->idx last published */
	uint16_t uncommitted;       /* pushed, not yet published */
	uint8_t event_idx;          /* VIRTIO_RING_F_EVENT_IDX negotiated */
	uint8_t broken;             /* the device moved used->idx impossibly far */
	uint8_t reserved[6];
	struct virtq_desc *desc;
	struct virtq_avail *avail;
	struct virtq_used *used;
	volatile uint16_t *used_event;  /* in the driver area */
	volatile uint16_t *avail_event; /* in the device area */
	uint64_t kicks, kicks_suppressed;
	uint64_t bad_used;          /* used entries naming no descriptor (id >= size) */
};

struct virtio_mmio;
/* A driver's hook in the interrupt handler (ring 0): isr = the InterruptStatus bits taken. */
typedef void (*virtio_irq_fn)(struct virtio_mmio *m, uint32_t isr);

/* One virtio-mmio device, transport side. */
struct virtio_mmio {
	volatile uint8_t *regs;     /* the register window (identity-mapped GPA) */
	uint64_t base;
	uint32_t size;
	uint32_t irq;               /* GSI */
	uint32_t vector;            /* 0: not routed */
	uint32_t version, device_id, vendor_id;
	uint32_t status;            /* what was written to Status */
	uint8_t broken;             /* DEVICE_NEEDS_RESET seen */
	uint8_t reserved[3];
	uint64_t host_features;     /* offered */
	uint64_t features;          /* negotiated */
	volatile uint64_t events;   /* interrupts taken (the handler counts) */
	uint64_t isr_used, isr_config;
	virtio_irq_fn on_irq;       /* kernel-only: called from the handler */
	void *owner;                /* the driver's device struct */
};

static inline uint32_t virtio_read32(const struct virtio_mmio *m, uint32_t reg)
{
	return *(volatile uint32_t *)(m->regs + reg);
}

static inline void virtio_write32(const struct virtio_mmio *m, uint32_t reg, uint32_t v)
{
	*(volatile uint32_t *)(m->regs + reg) = v;
}

/* --- ring 0 (rt/k_virtio.c) ------------------------------------------------------------------ */

/* How many virtio-mmio slots the command line (or the microvm slot probe) lists; their
 * bases/sizes/IRQs. */
unsigned virtio_mmio_find(uint64_t *bases, uint32_t *sizes, uint32_t *irqs, unsigned max);
/* Zero *m, take the n-th Version 2 device of device_id (name: for the log), open its page to ring
 * 3. 0, VIRTIO_ENODEV or VIRTIO_EINVAL. */
int virtio_mmio_probe(struct virtio_mmio *m, uint32_t device_id, unsigned n, const char *name);
/* Reset, ACKNOWLEDGE, DRIVER, features = offered & want (VERSION_1 required), FEATURES_OK read
 * back. 0, VIRTIO_ENODEV (no VERSION_1) or VIRTIO_EPROTO; FAILED is set on an error. */
int virtio_mmio_negotiate(struct virtio_mmio *m, uint64_t want);
/* Set queue `index` up with `size` entries (0: min(QueueNumMax, max_size)); the areas come from
 * storvsc_dma_alloc. Interrupts for it start off (virtq_irq_off). 0 or VIRTIO_E*. */
int virtio_mmio_queue(struct virtio_mmio *m, struct virtq *q, uint16_t index, uint32_t size,
		      uint32_t max_size);
/* Route the device's interrupt to a free driver vector (before DRIVER_OK: nothing is lost). */
int virtio_mmio_irq(struct virtio_mmio *m, virtio_irq_fn fn, void *owner);
/* DRIVER_OK; VIRTIO_EBROKEN if the device already wants a reset. */
int virtio_mmio_driver_ok(struct virtio_mmio *m);
/* Set FAILED (4.2.3.1: the driver gives up); returns rc. */
int virtio_mmio_fail(struct virtio_mmio *m, int rc);
/* Mask and free the vector, reset the device (it lets go of every queue). */
void virtio_mmio_reset(struct virtio_mmio *m);
/* Ring 0: interrupts on for q, re-check its used ring, `sti; hlt` until the handler ran (or the
 * device broke), interrupts off (Linux's virtqueue_enable_cb / disable_cb). true if it slept. */
bool virtio_mmio_kwait(struct virtio_mmio *m, struct virtq *q);

/* --- any ring (rt/u_virtio.c) ---------------------------------------------------------------- */

/* A free descriptor's index (the caller knows one is free: num_free > 0). */
uint16_t virtq_desc_alloc(struct virtq *q);
void virtq_desc_free(struct virtq *q, uint16_t i);
/* Put a chain's head in the available ring (not yet visible to the device). */
void virtq_push(struct virtq *q, uint16_t head);
/* Publish what was pushed; notify the device through QueueNotify if it asked. 1 if notified. */
int virtq_publish(struct virtq *q, const struct virtio_mmio *m);
/* Take the next used entry: 1 (*id < size, *len as the device wrote it), 0 (none), or
 * VIRTIO_EPROTO (used->idx moved more than a queue ahead: q->broken). */
int virtq_pop_used(struct virtq *q, uint32_t *id, uint32_t *len);
/* Whether the device has used entries not yet taken (an acquire load of used->idx). */
bool virtq_has_used(const struct virtq *q);
void virtq_irq_on(struct virtq *q);
void virtq_irq_off(struct virtq *q);
/* The device's Status (an MMIO read: an exit); sets m->broken on DEVICE_NEEDS_RESET. */
uint32_t virtio_mmio_status(struct virtio_mmio *m);

#endif /* HV_VIRTIO_H */
