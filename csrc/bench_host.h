/*
 * bench_host.h - host-side C for `hvkvm bench` (csrc/bench_run.c, csrc/bench_mem.c), built into
 * the small cffi module hvkvm.bench._hvbench (hvkvm/bench/_bench_build.py).
 */
#ifndef BENCH_HOST_H
#define BENCH_HOST_H

#include <pthread.h>
#include <stdint.h>

/* bench_run_loop: exit_reason when max_exits ended the loop (not a KVM exit reason). */
#define BENCH_RUN_LIMIT 0xffff

struct bench_run_result {
	uint64_t exits;       /* exits serviced in C (null PIO + null MMIO) */
	uint64_t pio;
	uint64_t mmio;
	uint64_t ns;          /* CLOCK_MONOTONIC, first KVM_RUN to the exit that ended the loop */
	uint32_t exit_reason; /* the exit that ended the loop (kvm_run keeps it for the caller) */
	int32_t error;        /* errno of a failed KVM_RUN, else 0 */
};

/* KVM_RUN on vcpu_fd (kvm_run mapped at kvm_run) until an exit that is not the null device's
 * PIO [port, port + 4) or MMIO [mmio_base, mmio_base + mmio_len), or max_exits (0: no limit).
 * Returns 0, or -1 with res->error = errno. */
int bench_run_loop(int vcpu_fd, void *kvm_run, uint32_t port, uint64_t mmio_base,
		   uint64_t mmio_len, uint64_t max_exits, struct bench_run_result *res);

/* memcpy between two fresh, pre-faulted buffers of `bytes`, `iterations` times; ns[i] gets each
 * copy's time. Returns 0, or -1 when the buffers cannot be allocated. */
int bench_memcpy(uint64_t bytes, uint32_t iterations, uint64_t *ns);

/* The host side of the zero-exit ping-pong (guest_images/images/pingpong): a thread that spins
 * on *counter and answers every odd value v with v + 1 until the counter reaches target or stop
 * is set. */
struct bench_pingpong {
	volatile uint64_t *counter; /* host address of the guest's counter */
	uint64_t target;            /* 2 x round trips */
	volatile uint32_t stop;
	uint32_t started;
	uint64_t answered;          /* round trips answered */
	uint64_t idle_spins;        /* polls that found nothing to answer */
	uint64_t first_ns;          /* CLOCK_MONOTONIC of the first and the last answer */
	uint64_t last_ns;
	pthread_t thread;
};

int bench_pingpong_start(struct bench_pingpong *pp);
void bench_pingpong_stop(struct bench_pingpong *pp);

#endif
