/*
 * bench_mem.c - the ceilings of `hvkvm bench`: memcpy bandwidth of the box (the limit of every
 * copying I/O path) and the host half of the zero-exit ping-pong (the limit of message rates
 * through shared memory: no exit, no interrupt).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "bench_host.h"

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int bench_memcpy(uint64_t bytes, uint32_t iterations, uint64_t *ns)
{
	uint8_t *a, *b;

	a = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED)
		return -1;
	b = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (b == MAP_FAILED) {
		munmap(a, bytes);
		return -1;
	}
	/* fault every page in (and give the source distinct bytes) before timing */
	for (uint64_t i = 0; i < bytes; i += 4096) {
		a[i] = (uint8_t)(i >> 12);
		b[i] = 0;
	}
	for (uint32_t i = 0; i < iterations; i++) {
		uint64_t t0 = now_ns();

		memcpy(b, a, bytes);
		__asm__ volatile("" : : "r"(b) : "memory");
		ns[i] = now_ns() - t0;
	}
	munmap(a, bytes);
	munmap(b, bytes);
	return 0;
}

static void *pingpong_main(void *arg)
{
	struct bench_pingpong *pp = arg;
	volatile uint64_t *c = pp->counter;

	for (;;) {
		uint64_t v = __atomic_load_n(c, __ATOMIC_ACQUIRE);

		if (v >= pp->target || pp->stop)
			break;
		if (v & 1) {
			__atomic_store_n(c, v + 1, __ATOMIC_RELEASE);
			if (!pp->answered)
				pp->first_ns = now_ns();
			pp->answered++;
			if (v + 1 >= pp->target)
				pp->last_ns = now_ns();
		} else {
			pp->idle_spins++;
			__builtin_ia32_pause();
		}
	}
	if (!pp->last_ns)
		pp->last_ns = now_ns();
	return NULL;
}

int bench_pingpong_start(struct bench_pingpong *pp)
{
	int rc;

	pp->stop = 0;
	pp->answered = pp->idle_spins = pp->first_ns = pp->last_ns = 0;
	rc = pthread_create(&pp->thread, NULL, pingpong_main, pp);
	if (rc) {
		errno = rc;
		return -1;
	}
	pp->started = 1;
	return 0;
}

void bench_pingpong_stop(struct bench_pingpong *pp)
{
	if (!pp->started)
		return;
	pp->stop = 1;
	pthread_join(pp->thread, NULL);
	pp->started = 0;
}
