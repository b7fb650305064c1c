/*
 * echo.h - shared between vmbus_echo's kernel part (main.c) and its ring-3 part (u_echo.c).
 */
#ifndef VMBUS_ECHO_H
#define VMBUS_ECHO_H

#include "vmbus.h"

/* hvkvm's echo device (hvkvm/vsp/echo.py): 9d3c5b4e-6f0a-4c8e-b1d2-6876766b6563 */
#define ECHO_CLASS_GUID \
	GUID_INIT(0x9d3c5b4e, 0x6f0a, 0x4c8e, 0xb1, 0xd2, 0x68, 0x76, 0x76, 0x6b, 0x65, 0x63)

#define ECHO_MAX_RING_PAGES 128u /* data pages per ring (each ring has one more: its header) */
#define ECHO_PATTERN_SPREAD 4096u /* packets start at different offsets into the pattern */
#define ECHO_PATTERN_SIZE (ECHO_MAX_RING_PAGES * 4096u + ECHO_PATTERN_SPREAD)

/* trans_id = ECHO_TRANS(phase, i): phase 1 kernel, 2 user. Bit 63 stays clear (the echo VSP
 * swallows one-way packets that set it). */
#define ECHO_TRANS(phase, i) (((uint64_t)0xec << 48) | ((uint64_t)(phase) << 40) | (i))
/* The echo VSP consumes packets whose trans_id has bit 63 without answering (one-way). */
#define ECHO_ONE_WAY (1ULL << 63)

struct echo_stats {
	uint64_t packets;    /* echoes received and checked */
	uint64_t bytes;      /* payload bytes checked */
	uint64_t out_wraps;  /* send ring write position wrapped to the start */
	uint64_t in_wraps;   /* receive ring read position wrapped */
	uint64_t straddles;  /* echoes whose bytes crossed the end of the data area */
	uint64_t full;       /* writes refused with HVR_FULL (retried) */
	uint64_t max_len;    /* largest payload sent */
	uint64_t cycles;     /* TSC cycles of the phase (0 without a TSC frequency) */
};

/* One phase's parameters, results and (on failure) what went wrong. User-accessible. */
struct echo_run {
	struct vmbus_rings rings; /* user phase: the channel's rings handed to ring 3 */
	uint32_t inflight_max;   /* kernel phase: ring bytes in flight at most (no deadlock) */
	uint32_t reserved;
	uint32_t phase;
	uint32_t window;         /* packets in flight at most */
	uint32_t max_len;        /* payload sizes are 1..max_len */
	uint32_t data_size;      /* bytes in each ring's data area */
	uint64_t count;          /* packets to echo */
	uint64_t tsc_hz;
	uint64_t stall_cycles;   /* no progress for this long = failure (0: never) */
	struct echo_stats st;
};

extern uint8_t echo_pattern[ECHO_PATTERN_SIZE];
extern uint8_t echo_ring_area[2 * (ECHO_MAX_RING_PAGES + 1) * 4096];
extern struct echo_run echo_user_run;

/* Size of packet i (1..max_len): small and odd sizes, powers of two and their neighbours,
 * the largest, and pseudo-random ones. Any ring. */
uint32_t echo_size(uint64_t i, uint32_t max_len);
/* Offset into echo_pattern where packet i's payload starts. Any ring. */
uint32_t echo_offset(uint64_t i);
/* Fill echo_pattern (ring-3 task: fast natively). */
int echo_fill_pattern(void *arg);
/* Check one packet read from `rings` against packet i (asserts on mismatch). Any ring. */
void echo_check(struct echo_run *run, const struct vmbus_rings *rings, const struct hvr_pkt *pkt,
		uint64_t i);
/* Account a received packet's position for wrap/straddle counters. Any ring. */
void echo_account(struct echo_run *run, const struct hvr_pkt *pkt, uint32_t *last_in_off);
/* The ring-3 phase: polls run->rings, kicks through port 0xe4. Returns 0. */
int echo_user_task(void *arg);

static inline uint64_t echo_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

#endif
