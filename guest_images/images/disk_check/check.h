/*
 * check.h - shared between disk_check's kernel part (main.c) and its I/O loop (u_check.c).
 */
#ifndef DISK_CHECK_H
#define DISK_CHECK_H

#include "blkdev.h"

struct check_run {
	struct blkdev *d;
	uint64_t seed;
	uint32_t chunk;     /* bytes per READ */
	uint32_t qd;        /* READs in flight */
	uint32_t stride;
	uint32_t buf_offset; /* each buffer starts this far into a page */
	uint8_t *bufs;
	uint64_t sectors, bytes, ios, cycles;
	/* the lowest mismatching sector found, ~0 if none */
	uint64_t bad_lba, bad_word[2];
	uint32_t bad_offset;   /* byte of the sector that differs */
	uint32_t reserved2;
};

extern struct blkdev check_dev;
extern struct check_run check_user_run;

/* Read the whole disk and check every sector; ASSERT on the first (lowest) mismatch. */
int check_task(void *arg);

#endif
