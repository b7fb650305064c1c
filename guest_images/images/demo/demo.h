/*
 * demo.h - shared between the demo image's kernel part (main.c) and its ring-3 tasks
 * (u_demo.c): one structure per VSC, user-accessible, holding what a task needs and what it found.
 */
#ifndef DEMO_H
#define DEMO_H

#include "ic.h"
#include "netvsc.h"
#include "storvsc.h"

/* hvkvm's echo device (hvkvm/vsp/echo.py). */
#define DEMO_ECHO_GUID \
	GUID_INIT(0x9d3c5b4e, 0x6f0a, 0x4c8e, 0xb1, 0xd2, 0x68, 0x76, 0x76, 0x6b, 0x65, 0x63)

#define DEMO_ECHO_RING_PAGES 4u      /* data pages per echo ring */
#define DEMO_ECHO_MAX_LEN 8000u      /* largest echo payload (fits a 16 KiB ring twice) */
#define DEMO_DISK_CHUNK (64u * 1024) /* bytes per READ(16) / WRITE(16) */
#define DEMO_NET_RING_PAGES 16u
#define DEMO_NET_RECV_BYTES (256u * 1024)
#define DEMO_NET_SEND_BYTES (128u * 1024)
#define DEMO_NET_ECHO_PORT 7
#define DEMO_NET_STOP_PORT 9

/* Task results besides 0 (asserts cover broken rings and protocol errors). */
#define DEMO_MISMATCH 1   /* disk read-back differs: details in struct demo_disk */
#define DEMO_NET_DEADLINE 2 /* no STOP from the host in time */

/* The VMBus echo round trips (ring 3): one packet in flight, each echo checked. */
struct demo_echo {
	struct vmbus_rings rings;
	uint8_t *tx;            /* DEMO_ECHO_MAX_LEN bytes: the payload being sent */
	uint32_t count;         /* round trips */
	uint32_t reserved;
	uint64_t tsc_hz;
	uint64_t stall_cycles;  /* no echo for this long: ASSERT */
	uint64_t done, bytes;
	uint64_t min_cycles, max_cycles, sum_cycles;
};

/* The storvsc pattern write, flush and read-back (ring 3, synchronous requests). */
struct demo_disk {
	struct storvsc_dev *dev;
	uint8_t *buf;           /* DEMO_DISK_CHUNK bytes */
	uint64_t blocks;        /* blocks written and read back, from LBA 0 */
	uint64_t seed;
	uint64_t writes, reads, flushes;
	uint64_t write_cycles, read_cycles;
	int32_t error;          /* a failed request: its status (STORVSC_E*) */
	uint32_t reserved;
	struct storvsc_completion failed; /* ... and its completion */
	/* the first mismatch of the read-back */
	uint64_t bad_lba;
	uint32_t bad_byte;
	uint32_t reserved2;
	uint64_t bad_got, bad_want; /* the 8-byte words at bad_byte & ~7 */
};

/* The netvsc loop (ring 3): ARP, ping and UDP echo until "STOP" on port 9 or the deadline. */
struct demo_net {
	struct netvsc *nv;
	struct net_if *nif;
	uint64_t tsc_hz;
	uint64_t idle_cycles;   /* no traffic this long: sleep in the kernel (NETVSC_IDLE) */
	uint64_t tick_cycles;   /* net_tick period */
	uint64_t deadline;      /* TSC: give up waiting for STOP */
	volatile uint32_t stop;
	uint32_t wakeups;
	uint64_t echoed, echo_bytes, echo_failed;
};

extern struct demo_echo demo_echo;
extern struct demo_disk demo_disk;
extern struct demo_net demo_net;
extern struct storvsc_dev demo_storvsc;
extern struct netvsc demo_nv;
extern struct net_if demo_if;

int demo_echo_task(void *arg);     /* the echo round trips; 0 (asserts on a bad echo) */
int demo_disk_write_task(void *arg); /* pattern over `blocks`, then SYNCHRONIZE CACHE; 0 or -1 */
int demo_disk_check_task(void *arg); /* read back and compare; 0, DEMO_MISMATCH or -1 */
int demo_net_task(void *arg);      /* 0 after STOP, NETVSC_IDLE, DEMO_NET_DEADLINE */
void demo_net_bind(struct demo_net *n);
void demo_net_rx(void *ctx, const uint8_t *frame, uint32_t len);

static inline uint64_t demo_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

#endif
