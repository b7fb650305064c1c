/*
 * smp - the BSP starts all APs with INIT-SIPI-SIPI; every vCPU (BSP included) checks in with
 * SYNC stage 1 (args[1] = its index) and bumps a shared counter; the BSP waits, prints the count,
 * sends SYNC stage 2 (args[1] = count, args[2] = mask of indexes) and ends with done(0).
 *
 * How many vCPUs: `cpus=N` on the command line makes the BSP wait for exactly N check-ins (an
 * ASSERT if they do not all come within `timeout_ms`, default 10000). Without it the BSP counts
 * check-ins until none arrived for `settle_ms` (default 1000) or `timeout_ms` passed.
 */
#include "hv.h"

static volatile uint32_t checkins;
static volatile uint64_t checkin_mask;

static void check_in(unsigned cpu)
{
	hv_sync(1, cpu);
	hv_printf("smp: vCPU %u checked in\n", cpu);
	__atomic_or_fetch(&checkin_mask, 1ULL << cpu, __ATOMIC_ACQ_REL);
	__atomic_add_fetch(&checkins, 1, __ATOMIC_ACQ_REL);
}

void hv_ap_main(unsigned cpu)
{
	check_in(cpu);
}

int hv_main(void)
{
	uint64_t want = hv_arg_u64("cpus", 0);
	uint64_t timeout_us = hv_arg_u64("timeout_ms", 10000) * 1000;
	uint64_t settle_us = hv_arg_u64("settle_ms", 1000) * 1000;
	uint64_t start, last;
	uint32_t n, seen;

	HV_ASSERT(want <= HV_MAX_CPUS, "smp: cpus=%llu, the runtime supports %d",
		  (unsigned long long)want, HV_MAX_CPUS);
	check_in(hv_cpu());
	hv_smp_start();

	start = last = hv_time_us();
	n = seen = checkins;
	/* The iteration bound only matters if the LAPIC timer does not tick: each round reads it,
	 * an exit of a microsecond or more. */
	for (uint64_t spins = 0; spins < timeout_us; spins++) {
		uint64_t now = hv_time_us();

		n = __atomic_load_n(&checkins, __ATOMIC_ACQUIRE);
		if (n != seen) {
			seen = n;
			last = now;
		}
		if (want ? n >= want : now - last >= settle_us)
			break;
		if (now - start >= timeout_us)
			break;
		hv_pause();
	}
	if (want)
		HV_ASSERT(n == want, "smp: %u of %llu vCPUs checked in within %llu ms (mask 0x%llx)", n,
			  (unsigned long long)want, (unsigned long long)(timeout_us / 1000),
			  (unsigned long long)checkin_mask);
	hv_printf("smp: %u vCPUs checked in (mask 0x%llx)\n", n, (unsigned long long)checkin_mask);
	hv_sync(2, n, checkin_mask);
	return 0;
}
