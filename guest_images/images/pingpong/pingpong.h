/* pingpong: what the kernel part hands to the loop (which may run in ring 3). */
#ifndef PINGPONG_H
#define PINGPONG_H
#include "hv.h"

struct pp_params {
	uint64_t count;
};

extern struct pp_params pp_params;       /* user-accessible (u_pingpong.c) */
extern volatile uint64_t pp_counter[8];  /* [0]: the shared counter, alone on its cache line */
int pp_loop(void *params);

#endif
