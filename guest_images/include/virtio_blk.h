/*
 * virtio_blk.h - the guest runtime's virtio-blk driver on the virtio-mmio transport (virtio 1.x,
 * "modern", Version 2), the client of hvkvm's hvkvm/vsp/virtio_blk.py and of QEMU's
 * virtio-blk-device. Facts from the virtio 1.2 specification (4.2 virtio over MMIO, 2.7 split
 * virtqueues, 5.2 block device); our own code. The transport and the virtqueue are shared with
 * the virtio-net driver (include/virtio.h, rt/{k,u}_virtio.c).
 *
 *   1. Finding the device (rt/k_virtio.c, ring 0): every `virtio_mmio.device=SIZE@BASE:IRQ`
 *      on the command line (Linux's syntax; QEMU's microvm appends them with acpi=off, hvkvm's
 *      devices_for() returns them), in order; without any, microvm's slots 0xfeb00000 + 512 * n,
 *      highest first, as QEMU lays them out: 24 slots on GSIs 24 + n when a second IOAPIC
 *      answers at 0xfec10000 (ACPI with ioapic2), else 8 slots on GSIs 16 + n with ACPI (an
 *      RSDP in the start info) or 5 + n without. A slot counts if it reads MagicValue "virt",
 *      Version 2 and DeviceID 2 (a Version 1 "legacy" device is logged and skipped: QEMU 7.2
 *      needs -global virtio-mmio.force-legacy=false). IRQs 0-23 are pins of the IOAPIC at
 *      0xfec00000, 24 and up of the second one.
 *   2. Initialization (4.2.3.1): reset, ACKNOWLEDGE, DRIVER, features (VERSION_1 required;
 *      EVENT_IDX, FLUSH, BLK_SIZE, SEG_MAX, RO taken when offered), FEATURES_OK (checked),
 *      queue 0 (size: the option, else min(QueueNumMax, 256); descriptor table, driver and
 *      device areas each page-aligned from storvsc_dma_alloc), QueueReady, DRIVER_OK; the
 *      configuration space (capacity, blk_size, seg_max) read between two equal
 *      ConfigGeneration values; VIRTIO_BLK_T_GET_ID for the serial.
 *   3. Requests (rt/u_virtio_blk.c, any ring): three descriptors (header 16 bytes device-
 *      readable, the data, a status byte device-writable), two for FLUSH; the head index is the
 *      request's slot. Publishing (virtio_blk_kick): one release store of avail->idx for a batch,
 *      a full fence, then a QueueNotify write (a 32-bit store of queue index 0) only when
 *      vring_need_event(avail_event, new, old) says so (EVENT_IDX) or the device has not set
 *      VRING_USED_F_NO_NOTIFY. Completions: used ring entries with a known, busy head; the
 *      status byte (OK, IOERR, UNSUPP) and the used length (1 up to the device-writable bytes
 *      posted, else BLK_EPROTO; exactly data + 1 for a successful read) are checked.
 *   4. Interrupts: polling (ring 3, or ring 0 with poll) keeps them off: used_event half the
 *      index space past the last completion taken, rewritten at every reap (EVENT_IDX; "just
 *      behind" would race with the device deciding about the entry just taken), or
 *      VRING_AVAIL_F_NO_INTERRUPT. A ring-0 wait
 *      publishes used_event = the next completion (or clears NO_INTERRUPT), re-checks the used
 *      ring and sleeps in `sti; hlt`; the handler reads InterruptStatus, writes InterruptACK,
 *      and on a configuration change reads Status for DEVICE_NEEDS_RESET (the device is then
 *      broken: every call returns BLK_EBROKEN).
 *
 * Ring 3 needs the register page: virtio_blk_open maps the device's 2 MiB page user-accessible
 * (hv_user_map), so QueueNotify works from a ring-3 task; the IOAPIC page stays kernel-only.
 */
#ifndef HV_VIRTIO_BLK_H
#define HV_VIRTIO_BLK_H

#include "blkdev.h"
#include "virtio.h"

/* Feature bits. */
#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9

/* Block device configuration (5.2.4), the fields read here. */
#define VIRTIO_BLK_CFG_CAPACITY 0x00
#define VIRTIO_BLK_CFG_SIZE_MAX 0x08
#define VIRTIO_BLK_CFG_SEG_MAX 0x0c
#define VIRTIO_BLK_CFG_BLK_SIZE 0x14

/* Requests (5.2.6). */
#define VIRTIO_BLK_T_IN 0u
#define VIRTIO_BLK_T_OUT 1u
#define VIRTIO_BLK_T_FLUSH 4u
#define VIRTIO_BLK_T_GET_ID 8u
#define VIRTIO_BLK_S_OK 0u
#define VIRTIO_BLK_S_IOERR 1u
#define VIRTIO_BLK_S_UNSUPP 2u
#define VIRTIO_BLK_ID_BYTES 20u

struct virtio_blk_req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

_Static_assert(sizeof(struct virtio_blk_req_hdr) == 16, "virtio_blk_req_hdr");

#define VIRTIO_BLK_MAX_QSIZE 256u

/* One request in flight, indexed by its head descriptor. */
struct virtio_blk_slot {
	uint64_t cookie;
	uint64_t lba;
	uint64_t t_submit;
	void *buf;
	uint32_t len;
	uint32_t blocks;
	uint32_t writable;          /* device-writable bytes posted (data for reads, the status) */
	uint8_t op, busy, ndesc, reserved;
	uint16_t desc[3];
};

struct virtio_blk_dev;
typedef void (*virtio_blk_kfn)(struct virtio_blk_dev *d);

struct virtio_blk_dev {
	struct virtio_mmio m;       /* the transport (include/virtio.h) */
	struct virtq q;             /* queue 0 */
	/* copies of m / q for the blkdev layer */
	uint32_t version, vendor_id;
	uint16_t qsize;
	uint8_t event_idx;
	uint64_t capacity;          /* 512-byte sectors */
	uint32_t blk_size, seg_max;
	uint8_t ro, poll;

	struct virtio_blk_req_hdr *hdrs; /* one per head */
	volatile uint8_t *statuses;      /* one per head */
	struct virtio_blk_slot slots[VIRTIO_BLK_MAX_QSIZE];

	struct blk_counters c;
	uint64_t tsc_hz;
	uint64_t stall_cycles;

	/* ring 0 (set by virtio_blk_open) */
	virtio_blk_kfn kwait;       /* sleep until the device's interrupt */
	char id[VIRTIO_BLK_ID_BYTES + 1];
};

/* Ring 0 (rt/k_virtio_blk.c). */
/* Find the n-th virtio-blk device (above) and initialize it; irq: route its interrupt (ring-0
 * waits) or leave it masked (polling only). 0 or BLK_E*. d must be user-accessible memory when
 * ring 3 uses it. */
int virtio_blk_open(struct virtio_blk_dev *d, unsigned n, uint32_t queue_size, bool event_idx,
		    bool irq);
/* Reset the device (nothing may be in flight) and mask its interrupt. */
int virtio_blk_close(struct virtio_blk_dev *d);

/* Any ring (rt/u_virtio_blk.c). */
int virtio_blk_submit(struct virtio_blk_dev *d, enum blk_op op, uint64_t lba, uint32_t blocks,
		      void *buf, uint64_t cookie);
int virtio_blk_submit_raw(struct virtio_blk_dev *d, uint32_t type, uint64_t sector, void *buf,
			  uint32_t len, bool device_writes, uint64_t cookie);
int virtio_blk_kick(struct virtio_blk_dev *d);
int virtio_blk_reap(struct virtio_blk_dev *d, struct blk_completion *c, unsigned max);
int virtio_blk_wait(struct virtio_blk_dev *d, struct blk_completion *c, unsigned max);
/* The device's Status (an MMIO read: an exit); sets d->broken on DEVICE_NEEDS_RESET. */
uint32_t virtio_blk_status(struct virtio_blk_dev *d);
/* Interrupts on/off for the next completion (ring 0 waits; polling keeps them off). */
void virtio_blk_irq_on(struct virtio_blk_dev *d);
void virtio_blk_irq_off(struct virtio_blk_dev *d);

#endif /* HV_VIRTIO_BLK_H */
