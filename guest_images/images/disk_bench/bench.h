/*
 * bench.h - shared between disk_bench's kernel part (main.c) and its I/O loop (u_bench.c). The
 * loop drives any block device of include/blkdev.h (dev=storvsc|virtio|ata|mmio).
 */
#ifndef DISK_BENCH_H
#define DISK_BENCH_H

#include "blkdev.h"

enum bench_mode { MODE_READ = 1, MODE_WRITE = 2, MODE_RANDREAD = 3, MODE_RANDWRITE = 4 };

/* Latency histogram: log-linear over nanoseconds, 16 sub-buckets per power of two (<= 6.25 %
 * relative error). */
#define HIST_SUB_BITS 4
#define HIST_BUCKETS 1024

struct bench_run {
	struct blkdev *d;
	uint32_t mode;          /* enum bench_mode */
	uint32_t bs;            /* bytes per I/O (a multiple of the block size) */
	uint32_t qd;            /* requests in flight */
	uint32_t verify;        /* check read data / read back written data */
	uint32_t buf_offset;    /* byte offset of each buffer into its first page */
	uint32_t ring;          /* where the loop runs: 3 or 0 */
	uint32_t stride;        /* bytes between buffers */
	uint32_t blocks_per_io;
	uint64_t count;         /* I/Os to complete (0: run for `seconds`) */
	uint64_t seconds;
	uint64_t units;         /* I/O-sized units in the span: I/O i goes to unit * blocks_per_io */
	uint64_t rand_state;    /* xorshift64* for the random modes */
	uint64_t pattern_seed;  /* data pattern (fresh per run: old contents never verify) */
	uint8_t *bufs;          /* qd buffers */
	uint8_t *written;       /* write modes with verify: bitmap of units written */
	uint64_t tsc_hz;

	/* results of the timed loop */
	uint64_t ios, bytes, cycles, lat_sum_ns, lat_min_ns, lat_max_ns;
	uint64_t kicks, waits, polls, full, interrupts, kicks_suppressed;
	uint64_t prefill_ios, verified_ios, verified_bytes;
	uint64_t hist[HIST_BUCKETS];
};

/* splitmix64: seeds and patterns. */
static inline uint64_t bench_mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

extern struct blkdev bench_dev;
extern struct bench_run bench_user_run;

/* Prefill (read modes with verify), SYNC 10, the timed loop, SYNC 11, read-back (write modes
 * with verify) and SYNC 12, the JSON line. Ring 3 or ring 0; returns 0 (asserts on failure). */
int bench_task(void *arg);

#endif
