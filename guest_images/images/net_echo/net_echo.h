/*
 * net_echo.h - shared between net_echo's kernel part (main.c) and its ring-3 part (u_echo.c).
 */
#ifndef NET_ECHO_H
#define NET_ECHO_H

#include "netdev.h"

#define NE_MAX_RING_PAGES 64u         /* data pages per ring */
#define NE_RECV_MAX (1u << 20)            /* receive buffer bytes at most */
#define NE_SEND_MAX (1u << 20)        /* send buffer bytes at most */
#define NE_ECHO_PORT 7
#define NE_STOP_PORT 9
#define NE_PEER_RESOLVED 2 /* ne_task's return: report the peer, then run it again */

/* The ring-3 loop's parameters and counters. User-accessible. */
struct ne_run {
	struct netdev *dev;
	struct net_if *nif;
	uint64_t tsc_hz;
	uint64_t idle_cycles;   /* no traffic for this long: return NETVSC_IDLE (sleep) */
	uint64_t tick_cycles;   /* net_tick period */
	uint64_t log_cycles;    /* periodic counter LOG (0: none) */
	uint32_t peer;          /* peer=: ARP-resolved first (0: none) */
	uint32_t reserved;
	volatile uint32_t stop; /* "STOP" arrived on port 9 */
	uint32_t stop_bad;      /* other datagrams on port 9 */
	uint64_t echoed, echo_bytes, echo_failed;
	uint64_t wakeups;       /* task starts (1 + returns from idle) */
	uint8_t peer_mac[NET_ETH_ALEN];
	uint8_t peer_resolved;
};

extern struct netvsc ne_nv;
extern struct netdev ne_dev;
extern struct net_if ne_if;
extern struct ne_run ne_run;
extern uint8_t ne_ring_area[];
extern uint8_t ne_recv_buf[];
extern uint8_t ne_send_buf[];

/* The ring-3 task: poll, answer, tick; returns 0 after STOP, NETDEV_IDLE when idle,
 * NE_PEER_RESOLVED once the peer's MAC is known. */
int ne_task(void *arg);
/* The NIC's rx callback: hand the frame to the stack (ctx = struct net_if). */
void ne_rx(void *ctx, const uint8_t *frame, uint32_t len);
/* Bind ports 7 and 9 (any ring). */
void ne_bind(struct ne_run *r);

static inline uint64_t ne_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

#endif
