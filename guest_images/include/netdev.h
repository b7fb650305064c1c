/*
 * netdev.h - one link-layer interface over the guest runtime's NICs, so the same network
 * workload (net_echo, net_bench) and the IP stack (include/netvsc.h, rt/u_net.c) run over every
 * network path:
 *
 *   dev=netvsc  the VMBus synthetic NIC (include/netvsc.h): needs `hyperv` and a netvsc VSP
 *   dev=virtio  virtio-net over virtio-mmio (include/virtio_net.h): QEMU's virtio-net-device
 *
 * netdev_open() (ring 0) opens the first NIC of a kind and waits for its link; everything else
 * runs in either ring: netdev_poll() takes what the device finished (received frames go to the
 * rx callback) and publishes what was queued, netdev_link_tx() queues one frame (it is the IP
 * stack's net_link_tx_fn), netdev_flush() publishes. netdev_run_user() / netdev_run_kernel()
 * run a polling loop that returns NETDEV_IDLE when it wants to sleep until the device's
 * interrupt. The struct netdev lives in user-accessible memory (a u_*.c file); the netvsc state
 * and buffers are the image's (netvsc needs its ring area, receive and send buffers), the
 * virtio-net state comes from storvsc_dma_alloc().
 */
#ifndef HV_NETDEV_H
#define HV_NETDEV_H

#include "netvsc.h"
#include "virtio_net.h"

enum netdev_kind {
	NETDEV_NONE = 0,
	NETDEV_NETVSC = 1,
	NETDEV_VIRTIO = 2,
};

#define NETDEV_IDLE NETVSC_IDLE /* a loop's "sleep until the interrupt, then run me again" */
#define NETDEV_EKIND (-40)      /* dev= names no NIC kind */

struct netdev {
	uint32_t kind;            /* enum netdev_kind */
	char name[12];            /* "netvsc", "virtio" */
	uint8_t mac[NET_ETH_ALEN];
	uint16_t reserved;
	uint64_t tsc_hz;
	/* what SYNC 1 reports: netvsc: NVSP version, NDIS version, receive sections << 32 | send
	 * sections; virtio: virtio-mmio Version, negotiated features (low 32 bits),
	 * receive queue size << 32 | transmit queue size */
	uint64_t info[3];
	struct netvsc *nv;
	struct virtio_net_dev *vn;
};

/* Counters every kind has, for the workloads' reports. */
struct netdev_counters {
	uint64_t rx_frames;       /* frames handed to the rx callback */
	uint64_t rx_bad;          /* malformed deliveries the driver dropped */
	uint64_t tx_frames;
	uint64_t tx_completions;
	uint64_t tx_no_buffer;    /* netvsc: no free send section; virtio: no free transmit buffer */
	uint64_t tx_ring_full;    /* netvsc: the send ring was full; virtio: 0 */
	uint64_t kicks;           /* notifications to the host (netvsc signals, QueueNotify) */
	uint64_t kernel_waits;
	uint64_t interrupts;      /* virtio: the handler ran; netvsc: the channel's events */
};

/* --- ring 0 (rt/k_netdev.c) ------------------------------------------------------------------ */

/* Open the first NIC of kind `dev` ("netvsc" or "virtio"; NULL: "netvsc"): netvsc with *nv and
 * *cfg (the image's memory); virtio with the command line's queue_size=N (0: the device's
 * maximum, at most 256) and event_idx=0|1 (1). Waits for the link. 0 or a negative error of the
 * kind's driver (NETDEV_EKIND for an unknown kind). */
int netdev_open(struct netdev *d, const char *dev, struct netvsc *nv,
		const struct netvsc_config *cfg);
/* Sleep until the device's interrupt (re-checking first). */
void netdev_kwait(struct netdev *d);
/* Run fn(arg) as a ring-3 task (user) or in ring 0 (kernel); each NETDEV_IDLE it returns sleeps
 * (netdev_kwait) and runs it again. Returns fn's other return value. */
int netdev_run_user(struct netdev *d, int (*fn)(void *), void *arg);
int netdev_run_kernel(struct netdev *d, int (*fn)(void *), void *arg);
/* netvsc: HALT, buffers revoked, channel closed; virtio: the device reset. 0 or < 0. */
int netdev_close(struct netdev *d);
/* Human-readable text of an error from netdev_open / _close. */
const char *netdev_strerror(const struct netdev *d, int rc);

/* --- any ring (rt/u_netdev.c) ---------------------------------------------------------------- */

void netdev_set_rx(struct netdev *d, void (*fn)(void *ctx, const uint8_t *frame, uint32_t len),
		   void *ctx);
/* Work done (> 0), nothing to do (0) or a broken device (< 0). */
int netdev_poll(struct netdev *d);
/* net_link_tx_fn: ctx is the struct netdev. */
int netdev_link_tx(void *d, const uint8_t *frame, uint32_t len);
int netdev_flush(struct netdev *d);
/* Polling from now on: the device need not interrupt. */
void netdev_poll_mode(struct netdev *d);
void netdev_counters(const struct netdev *d, struct netdev_counters *c);
/* Why the device is broken, for an ASSERT message ("" if it is not). */
const char *netdev_broken_reason(const struct netdev *d);

#endif /* HV_NETDEV_H */
