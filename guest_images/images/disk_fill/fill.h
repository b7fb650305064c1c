/*
 * fill.h - shared between disk_fill's kernel part (main.c) and its I/O loop (u_fill.c).
 */
#ifndef DISK_FILL_H
#define DISK_FILL_H

#include "blkdev.h"

struct fill_run {
	struct blkdev *d;
	uint64_t seed;
	uint32_t chunk;     /* bytes per WRITE */
	uint32_t qd;        /* WRITEs in flight */
	uint32_t stride;
	uint32_t buf_offset; /* each buffer starts this far into a page */
	uint8_t *bufs;
	uint64_t sectors, bytes, ios, cycles;
};

extern struct blkdev fill_dev;
extern struct fill_run fill_user_run;

/* Write every sector, then SYNCHRONIZE CACHE. Ring 3 or ring 0; returns 0 (asserts). */
int fill_task(void *arg);

#endif
