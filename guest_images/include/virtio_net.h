/*
 * virtio_net.h - the guest runtime's virtio-net driver on the virtio-mmio transport (virtio 1.x,
 * "modern", Version 2): the client of QEMU's virtio-net-device (and of any virtio-net device
 * hvkvm may grow). Facts from the virtio 1.2 specification (5.1 network device, 2.7 split
 * virtqueues); our own code. The transport and the virtqueue are shared with virtio-blk
 * (include/virtio.h, rt/{k,u}_virtio.c).
 *
 *   1. Set-up (rt/k_virtio_net.c, ring 0): the n-th device with DeviceID 1 (found as virtio-blk
 *      finds its devices), features VERSION_1 (required), MAC and STATUS when offered,
 *      EVENT_IDX when offered and wanted; no control queue, no offloads, no mergeable receive
 *      buffers: the header is the 12-byte struct virtio_net_hdr of VERSION_1 and every frame
 *      fits one 2 KiB buffer. receiveq (queue 0) and transmitq (queue 1), each
 *      min(QueueNumMax, queue_size option, 256) entries; descriptor i of a queue always names
 *      buffer i (one descriptor per buffer), so a used id is also the buffer's index. Every
 *      receive buffer is published once DRIVER_OK is set (as Linux's virtnet_probe does). MAC
 *      and link status from the configuration space, read between two equal ConfigGeneration
 *      values (without MAC: 02:00:00:00:00:01).
 *   2. Data path (rt/u_virtio_net.c, any ring): virtio_net_poll() takes transmit completions (an
 *      id must be a buffer in flight, the length 0: the device writes nothing into a transmit
 *      buffer), then received frames: the id must be a posted buffer, the length at least the
 *      header and at most the buffer; the frame (length - 12) must be 14..1518 bytes; anything
 *      else is counted and dropped, and the buffer is posted again. Frames go to the rx
 *      callback (a pointer into the buffer, valid during the call; the device cannot write it
 *      then: it is not posted). virtio_net_tx() copies a zero header and the frame into a free
 *      transmit buffer (reaping completions when none is free); virtio_net_flush() publishes
 *      both queues, notifying the device only when its suppression state asks for it.
 *   3. Interrupts: polling keeps both queues' interrupts off; a ring-0 sleep (virtio_net_kwait)
 *      turns the receive queue's on, re-checks and sleeps in `sti; hlt` (rt/k_virtio.c).
 *
 * Threading: one context at a time drives a struct virtio_net_dev (the kernel during set-up, then
 * whoever polls). Not reentrant; the rx callback may call virtio_net_tx().
 */
#ifndef HV_VIRTIO_NET_H
#define HV_VIRTIO_NET_H

#include "virtio.h"

/* Feature bits (5.1.3). */
#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_MRG_RXBUF 15
#define VIRTIO_NET_F_STATUS 16

/* Configuration (5.1.4). */
#define VIRTIO_NET_CFG_MAC 0x00
#define VIRTIO_NET_CFG_STATUS 0x06
#define VIRTIO_NET_S_LINK_UP 1u

#define VIRTIO_NET_RXQ 0
#define VIRTIO_NET_TXQ 1
#define VIRTIO_NET_HDR_LEN 12u
#define VIRTIO_NET_BUF 2048u
#define VIRTIO_NET_MAX_QSIZE 256u
#define VIRTIO_NET_FRAME_MIN 14u    /* an Ethernet header */
#define VIRTIO_NET_FRAME_MAX 1518u  /* 1514 + an 802.1Q tag */

/* Errors (negative). */
#define VIRTIO_NET_EINVAL (-31)  /* bad argument (frame length, queue size) or no memory */
#define VIRTIO_NET_ENODEV (-32)  /* no virtio-net device (or no VERSION_1) */
#define VIRTIO_NET_EPROTO (-33)  /* the device broke the protocol at set-up */
#define VIRTIO_NET_EBUSY (-34)   /* no free transmit buffer right now */
#define VIRTIO_NET_EBROKEN (-35) /* DEVICE_NEEDS_RESET, or a used ring moved impossibly */

/* The 12-byte header of VERSION_1 (5.1.6). */
struct virtio_net_hdr {
	uint8_t flags;
	uint8_t gso_type;
	uint16_t hdr_len;
	uint16_t gso_size;
	uint16_t csum_start;
	uint16_t csum_offset;
	uint16_t num_buffers;
};

_Static_assert(sizeof(struct virtio_net_hdr) == VIRTIO_NET_HDR_LEN, "virtio_net_hdr");

struct virtio_net_stats {
	uint64_t polls;
	uint64_t rx_frames, rx_bytes;  /* frames delivered (or dropped for want of a callback) */
	uint64_t rx_no_handler;
	uint64_t rx_bad_id;            /* used ids naming no posted buffer (or >= the queue size) */
	uint64_t rx_bad_len;           /* used lengths below the header or above the buffer */
	uint64_t rx_runt, rx_oversize; /* frames below 14 / above 1518 bytes */
	uint64_t tx_frames, tx_bytes;
	uint64_t tx_full;              /* virtio_net_tx found no free buffer (after reaping) */
	uint64_t tx_completions;
	uint64_t tx_bad_id;            /* used ids naming no buffer in flight */
	uint64_t tx_bad_len;           /* transmit completions with a length other than 0 */
	uint64_t kernel_waits;         /* virtio_net_kwait sleeps */
	uint64_t interrupts;           /* the handler ran for this device */
};

typedef void (*virtio_net_rx_fn)(void *ctx, const uint8_t *frame, uint32_t len);

struct virtio_net_dev {
	struct virtio_mmio m;
	struct virtq rx, tx;
	uint8_t mac[6];
	uint16_t link_status;          /* the configuration's status (VIRTIO_NET_S_LINK_UP) */
	uint8_t has_status;            /* STATUS negotiated (else the link counts as up) */
	uint8_t delivering;            /* virtio_net_poll's delivery runs (no recursion) */
	uint16_t tx_inflight;
	uint8_t *rx_bufs, *tx_bufs;    /* size * VIRTIO_NET_BUF each */
	uint8_t rx_posted[VIRTIO_NET_MAX_QSIZE];
	uint8_t tx_busy[VIRTIO_NET_MAX_QSIZE];
	virtio_net_rx_fn rx_fn;
	void *rx_ctx;
	struct virtio_net_stats st;
};

/* --- ring 0 (rt/k_virtio_net.c) -------------------------------------------------------------- */

/* Find the n-th virtio-net device and set it up (above); queue_size 0: min(QueueNumMax, 256);
 * irq: route its interrupt (ring-0 sleeps). *d must be user-accessible if ring 3 drives it.
 * 0 or VIRTIO_NET_E*. */
int virtio_net_open(struct virtio_net_dev *d, unsigned n, uint32_t queue_size, bool event_idx,
		    bool irq);
/* Sleep until the device interrupts for a received frame (re-checks first). */
void virtio_net_kwait(struct virtio_net_dev *d);
/* Reset the device (it lets go of every buffer) and mask its interrupt. */
int virtio_net_close(struct virtio_net_dev *d);

/* --- any ring (rt/u_virtio_net.c) ------------------------------------------------------------ */

void virtio_net_set_rx(struct virtio_net_dev *d, virtio_net_rx_fn fn, void *ctx);
/* Transmit completions, received frames (delivered, buffers posted again), then publish both
 * queues. Returns the used entries handled (0: nothing to do) or VIRTIO_NET_EBROKEN. */
int virtio_net_poll(struct virtio_net_dev *d);
/* Queue one frame (14..1518 bytes) for transmission; published by virtio_net_flush() or the next
 * virtio_net_poll(). 0, VIRTIO_NET_EINVAL, VIRTIO_NET_EBUSY or VIRTIO_NET_EBROKEN. */
int virtio_net_tx(struct virtio_net_dev *d, const uint8_t *frame, uint32_t len);
/* Publish both queues (notify where asked). The notifications sent (0..2) or VIRTIO_NET_EBROKEN. */
int virtio_net_flush(struct virtio_net_dev *d);
/* Polling: no interrupts from either queue. */
void virtio_net_irq_off(struct virtio_net_dev *d);

#endif /* HV_VIRTIO_NET_H */
