/*
 * fill.h - shared between disk_fill's kernel part (main.c) and its I/O loop (u_fill.c).
 */
#ifndef DISK_FILL_H
#define DISK_FILL_H

#include "blkdev.h"

struct fill_run {
	struct blk_job j;   /* the disk, WRITEs of j.chunk bytes, j.qd in flight */
	uint64_t seed;
};

extern struct blkdev fill_dev;
extern struct fill_run fill_user_run;

/* Write every sector, then SYNCHRONIZE CACHE. Ring 3 or ring 0; returns 0 (asserts). */
int fill_task(void *arg);

#endif
