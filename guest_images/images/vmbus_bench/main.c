/*
 * vmbus_bench - the VMBus echo benchmark's guest: one size, one mode, a timed loop.
 *
 * Command line: size=N (64, 1..65536) count=N (10000) window=N (1: latency; more: throughput)
 *   oneway=0|1 (0: round trips; 1: a one-way stream the echo VSP consumes) ring_pages=N (64)
 *   ring=3|0 (3: the loop runs as a ring-3 task polling the rings, the hot path on every
 *   backend; 0: the same loop in the kernel)
 * SYNC 10 right before the loop (count, size, window, oneway), SYNC 11 right after it
 * (packets, bytes, kicks, ring-full retries): the host times the loop between the two.
 */
#include "bench.h"

int hv_main(void)
{
	struct bench_run *b = &bench_user_run;
	uint64_t ring_pages = hv_arg_u64("ring_pages", 64);
	uint64_t ring = hv_arg_u64("ring", 3);
	struct vmbus_channel *ch;
	int rc;

	b->count = hv_arg_u64("count", 10000);
	b->size = (uint32_t)hv_arg_u64("size", 64);
	b->window = (uint32_t)hv_arg_u64("window", 1);
	b->oneway = hv_arg_u64("oneway", 0) != 0;
	HV_ASSERT(ring_pages >= 1 && ring_pages <= BENCH_MAX_RING_PAGES,
		  "vmbus_bench: ring_pages must be 1..%u", BENCH_MAX_RING_PAGES);
	HV_ASSERT(b->size >= 1 && b->size <= BENCH_MAX_SIZE &&
		  hvr_packet_total(0, b->size) <= ring_pages * 4096 / 2,
		  "vmbus_bench: size %u does not fit %llu-page rings", b->size,
		  (unsigned long long)ring_pages);
	HV_ASSERT(b->window >= 1, "vmbus_bench: window must be >= 1");
	HV_ASSERT(ring == 0 || ring == 3, "vmbus_bench: ring must be 0 or 3");

	rc = vmbus_init(VMBUS_VECTOR_DEFAULT);
	HV_ASSERT(rc == 0, "vmbus_bench: VMBus init failed: %d", rc);
	ch = vmbus_find_channel(&BENCH_ECHO_GUID, 0);
	HV_ASSERT(ch != NULL, "vmbus_bench: no echo device offered (run with --echo)");
	rc = vmbus_channel_open(ch, bench_ring_area, (uint32_t)ring_pages + 1,
				(uint32_t)ring_pages + 1);
	HV_ASSERT(rc == 0, "vmbus_bench: open failed: %d", rc);
	HV_ASSERT_EQ(vmbus_channel_to_user(ch, &b->rings), 0);
	if (ring == 3)
		HV_ASSERT_EQ(hv_run_user(bench_loop, b), 0);
	else
		bench_loop(b);
	HV_ASSERT_EQ(vmbus_channel_from_user(ch, &b->rings), 0);
	hv_log("vmbus_bench: %llu packets of %u bytes (%s, window %u) in ring %llu, %llu kicks, "
	       "%llu full", (unsigned long long)b->sent, b->size,
	       b->oneway ? "one-way" : "round trips", b->window, (unsigned long long)ring,
	       (unsigned long long)b->rings.kicks, (unsigned long long)b->full);
	HV_ASSERT_EQ(vmbus_channel_close(ch), 0, "vmbus_bench: close");
	return 0;
}
