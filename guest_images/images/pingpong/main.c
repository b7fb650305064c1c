/*
 * pingpong - the zero-exit floor: a counter ping-ponged through shared memory between this guest
 * (a ring-3 task by default) and a host C thread (csrc/bench_mem.c), no exit and no interrupt
 * per round trip.
 *
 * Command line: count=N (1000000 round trips) ring=3|0 (3).
 * SYNC 1 (values: GPA of the 64-bit counter, N) before the loop: the host starts its thread on the
 * counter then. SYNC 10 (values: N) right before the timed loop, SYNC 11 (values: round trips,
 * TSC cycles of the loop) right after it; DONE(0). Round trip i: the guest stores 2i+1 and spins
 * until the host has stored 2i+2.
 */
#include "hv.h"
#include "pingpong.h"

int hv_main(void)
{
	uint64_t ring = hv_arg_u64("ring", 3);
	int rc;

	pp_params.count = hv_arg_u64("count", 1000000);
	HV_ASSERT(ring == 0 || ring == 3, "pingpong: ring must be 0 or 3");
	HV_ASSERT(pp_params.count > 0, "pingpong: count must be > 0");
	pp_counter[0] = 0;
	hv_sync(1, (uint64_t)(uintptr_t)&pp_counter[0], pp_params.count);
	rc = ring == 3 ? hv_run_user(pp_loop, &pp_params) : pp_loop(&pp_params);
	HV_ASSERT_EQ(rc, 0);
	return 0;
}
