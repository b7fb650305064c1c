/*
 * dev.h - hostile_dev: shared between its kernel part (main.c) and its ring-3 part (u_dev.c).
 */
#ifndef HOSTILE_DEV_H
#define HOSTILE_DEV_H

#include "hostile.h"
#include "netvsc.h"
#include "storvsc.h"
#include "virtio_blk.h"

#define DEV_NET_RING_PAGES 16u
#define HVR_NET_NO_SECTION_GUEST 0xffffffffu /* send_buf_section_index: not in a section */
#define DEV_NET_RECV (256u * 1024u)
#define DEV_NET_SEND (64u * 1024u)

extern struct storvsc_dev dev_disk;
extern struct netvsc dev_nic;
extern uint8_t dev_net_ring[2 * (DEV_NET_RING_PAGES + 1) * HVR_PAGE_SIZE];
extern uint8_t dev_net_recv[DEV_NET_RECV];
extern uint8_t dev_net_send[DEV_NET_SEND];
extern uint8_t dev_echo_area[2 * 5 * HVR_PAGE_SIZE];

/* The SYNCHRONIZE CACHE storm from ring 3. */
struct sync_storm {
	struct storvsc_dev *d;
	uint32_t count, qd;
	uint64_t done, errors, cycles;
};
extern struct sync_storm dev_storm;
int dev_storm_task(void *arg);

#endif
