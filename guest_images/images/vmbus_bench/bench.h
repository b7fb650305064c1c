/*
 * bench.h - shared between vmbus_bench's kernel part (main.c) and its ring-3 loop (u_bench.c).
 */
#ifndef VMBUS_BENCH_H
#define VMBUS_BENCH_H

#include "vmbus.h"

/* hvkvm's echo device (hvkvm/vsp/echo.py): 9d3c5b4e-6f0a-4c8e-b1d2-6876766b6563 */
#define BENCH_ECHO_GUID \
	GUID_INIT(0x9d3c5b4e, 0x6f0a, 0x4c8e, 0xb1, 0xd2, 0x68, 0x76, 0x76, 0x6b, 0x65, 0x63)
#define BENCH_ONE_WAY (1ULL << 63)   /* the echo VSP consumes these without answering */
#define BENCH_MAX_RING_PAGES 128u
#define BENCH_MAX_SIZE (64u * 1024u)

struct bench_run {
	struct vmbus_rings rings;
	uint64_t count;      /* packets to send */
	uint32_t size;       /* payload bytes each */
	uint32_t window;     /* packets in flight (round trips); 1 = latency */
	uint32_t oneway;     /* 1: one-way stream, no echoes */
	uint32_t reserved;
	uint64_t sent, received, full, polls;
};

extern uint8_t bench_payload[BENCH_MAX_SIZE];
extern uint8_t bench_ring_area[2 * (BENCH_MAX_RING_PAGES + 1) * 4096];
extern struct bench_run bench_user_run;

/* The timed loop (ring 3 or ring 0): SYNC 10 before, SYNC 11 after (packets, bytes, kicks). */
int bench_loop(void *arg);

#endif
