/* pingpong: the loop, user-accessible so it runs in ring 3 (or ring 0 with ring=0). */
#include "pingpong.h"

struct pp_params pp_params;
/* the counter alone on its cache line (8 x 8 bytes, 64-byte aligned) */
volatile uint64_t pp_counter[8] __attribute__((aligned(64)));

static inline uint64_t pp_rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

int pp_loop(void *arg)
{
	const struct pp_params *p = arg;
	uint64_t n = p->count, t0, t1, i;

	hv_sync(10, n);
	t0 = pp_rdtsc();
	for (i = 0; i < n; i++) {
		uint64_t want = 2 * i + 2;

		__atomic_store_n(&pp_counter[0], 2 * i + 1, __ATOMIC_RELEASE);
		while (__atomic_load_n(&pp_counter[0], __ATOMIC_ACQUIRE) != want)
			__asm__ volatile("pause" ::: "memory");
	}
	t1 = pp_rdtsc();
	hv_sync(11, n, t1 - t0);
	return 0;
}
