/*
 * check.h - shared between disk_check's kernel part (main.c) and its I/O loop (u_check.c).
 */
#ifndef DISK_CHECK_H
#define DISK_CHECK_H

#include "blkdev.h"

struct check_run {
	struct blk_job j;   /* the disk, READs of j.chunk bytes, j.qd in flight */
	uint64_t seed;
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
