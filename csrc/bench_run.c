/*
 * bench_run.c - the C exit floor for `hvkvm bench exits`.
 *
 * bench_run_loop() does KVM_RUN in a loop on an already-built vCPU fd (its kvm_run mapped by the
 * caller) and services, in C, the exits that go to the benchmark's null device: a PIO to
 * [port, port + 4) (reads return zeros, writes vanish) and an MMIO access inside
 * [mmio_base, mmio_base + mmio_len). Any other exit (a ucall, HLT, ...) ends the loop with
 * kvm_run left as KVM filled it, so the caller services that exit itself. EINTR/EAGAIN
 * (a kick: immediate_exit or a signal) ends the loop with exit_reason KVM_EXIT_INTR.
 *
 * It is what hvkvm's Python exit loop (hvkvm/partition/partition.py) does per exit, minus
 * Python: the same kvm_run, the same sync_regs settings (kvm_valid_regs is left as the caller set
 * it), kvm_dirty_regs cleared after every entry as the Python loop does.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <linux/kvm.h>

#include "bench_host.h"

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int bench_run_loop(int vcpu_fd, void *kvm_run, uint32_t port, uint64_t mmio_base,
		   uint64_t mmio_len, uint64_t max_exits, struct bench_run_result *res)
{
	struct kvm_run *run = kvm_run;
	uint64_t t0 = now_ns();

	memset(res, 0, sizeof(*res));
	for (;;) {
		if (max_exits && res->exits >= max_exits) {
			res->exit_reason = BENCH_RUN_LIMIT;
			break;
		}
		if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				res->exit_reason = KVM_EXIT_INTR;
				break;
			}
			res->error = errno;
			break;
		}
		run->kvm_dirty_regs = 0;
		if (run->exit_reason == KVM_EXIT_IO) {
			uint32_t p = run->io.port;

			if (p >= port && p < port + 4) {
				if (run->io.direction == KVM_EXIT_IO_IN)
					memset((uint8_t *)run + run->io.data_offset, 0,
					       (size_t)run->io.size * run->io.count);
				res->exits++;
				res->pio++;
				continue;
			}
		} else if (run->exit_reason == KVM_EXIT_MMIO) {
			uint64_t a = run->mmio.phys_addr;

			if (a >= mmio_base && a - mmio_base < mmio_len) {
				if (!run->mmio.is_write)
					memset(run->mmio.data, 0, sizeof(run->mmio.data));
				res->exits++;
				res->mmio++;
				continue;
			}
		}
		res->exit_reason = run->exit_reason;
		break;
	}
	res->ns = now_ns() - t0;
	return res->error ? -1 : 0;
}
