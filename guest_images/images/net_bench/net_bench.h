/*
 * net_bench.h - shared between net_bench's kernel part (main.c) and its ring-3 loop (u_bench.c).
 */
#ifndef NET_BENCH_H
#define NET_BENCH_H

#include "netdev.h"

#define NB_RING_PAGES_MAX 64u
#define NB_RECV_SIZE (512u << 10)
#define NB_SEND_MAX (1u << 20)

struct nb_run {
	struct netdev *dev;
	struct net_if *nif;
	uint64_t tsc_hz;
	uint32_t peer;
	uint16_t port, src_port;
	uint32_t size;          /* UDP payload bytes */
	uint32_t reserved;
	uint64_t rate;          /* datagrams per second (0: as fast as the path takes them) */
	uint64_t seconds;
	/* results */
	uint64_t sent, bytes, busy, late, arp_tries;
	uint64_t t0, t1;        /* TSC at the first send and at the end */
	uint64_t kicks0, kicks1; /* the NIC's notifications to the host before and after */
	uint8_t peer_mac[NET_ETH_ALEN];
	uint8_t resolved;
};

extern struct netvsc nb_nv;
extern struct netdev nb_dev;
extern struct net_if nb_if;
extern struct nb_run nb_run;
extern uint8_t nb_ring_area[];
extern uint8_t nb_recv_buf[];
extern uint8_t nb_send_buf[];

void nb_rx(void *ctx, const uint8_t *frame, uint32_t len);
/* The ring-3 task: resolve the peer (ARP), SYNC 10, the timed send loop, SYNC 11. 0, or 1 if
 * the peer never answered ARP. */
int nb_task(void *arg);

static inline uint64_t nb_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* TSC cycles to microseconds without overflowing for long runs. */
static inline uint64_t nb_cycles_to_us(uint64_t cycles, uint64_t hz)
{
	return cycles / hz * 1000000 + cycles % hz * 1000000 / hz;
}

#endif
