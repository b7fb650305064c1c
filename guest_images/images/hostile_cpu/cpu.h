/*
 * cpu.h - hostile_cpu: shared between its kernel part (main.c) and its ring-3 part (u_cpu.c).
 */
#ifndef HOSTILE_CPU_H
#define HOSTILE_CPU_H

#include "hostile.h"

struct cpu_flood {
	uint32_t kind;       /* 1: hypercall codes, 2: LOG + SYNC flood */
	uint32_t count;
	uint64_t ok;         /* hypercalls: answered INVALID_HYPERCALL_CODE (as they must be) */
	uint64_t other;      /* ... anything else */
	uint64_t last;
};

extern struct cpu_flood cpu_flood;
extern uint8_t cpu_echo_area[2 * 5 * HVR_PAGE_SIZE];

int cpu_flood_task(void *arg);

#endif
