/* exits: what the kernel part hands to the loop (which may run in ring 3). */
#ifndef EXITS_H
#define EXITS_H
#include "hv.h"

enum { EXITS_CPUID = 1, EXITS_PIO, EXITS_MMIO, EXITS_HLT };

struct exits_params {
	uint32_t kind;
	uint64_t count;
};

extern struct exits_params exits_params; /* user-accessible (u_exits.c) */
int exits_loop(void *params);

#endif
