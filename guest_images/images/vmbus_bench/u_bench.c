/*
 * u_bench.c - vmbus_bench's timed loop. User-accessible so it runs in ring 3 (natively on
 * kvm_pvm), polling the channel's rings with interrupt_mask set and kicking with port 0xe4 only
 * when a commit says the host may be asleep.
 */
#include "bench.h"

uint8_t bench_payload[BENCH_MAX_SIZE] __attribute__((aligned(4096)));
uint8_t bench_ring_area[2 * (BENCH_MAX_RING_PAGES + 1) * 4096] __attribute__((aligned(4096)));
struct bench_run bench_user_run;

int bench_loop(void *arg)
{
	struct bench_run *b = arg;
	struct vmbus_rings *r = &b->rings;
	uint64_t trans_bit = b->oneway ? BENCH_ONE_WAY : 0;
	struct hvr_pkt pkt;
	int rc;

	hvr_in_set_interrupt_mask(&r->in, 1);
	hv_sync(10, b->count, b->size, b->window, b->oneway);
	while ((b->oneway ? b->sent : b->received) < b->count) {
		unsigned wrote = 0, read = 0;

		while (b->sent < b->count && (b->oneway || b->sent - b->received < b->window)) {
			rc = vmbus_rings_write(r, bench_payload, b->size, trans_bit | b->sent, 0);
			if (rc == HVR_FULL) {
				b->full++;
				break;
			}
			HV_ASSERT_EQ(rc, HVR_OK, "vmbus_bench: write of packet %llu",
				     (unsigned long long)b->sent);
			b->sent++;
			wrote++;
		}
		if (wrote) {
			rc = vmbus_rings_commit(r);
			HV_ASSERT(rc >= 0, "vmbus_bench: send ring broken (%u)", r->out.r.broken);
			if (rc == 1)
				vmbus_rings_kick(r);
		}
		while ((rc = vmbus_rings_read(r, &pkt)) == HVR_OK) {
			HV_ASSERT_EQ(pkt.trans_id, b->received, "vmbus_bench: echo out of order");
			b->received++;
			read++;
		}
		HV_ASSERT_EQ(rc, HVR_EMPTY, "vmbus_bench: receive ring broken (%u)",
			     r->in.r.broken);
		if (read) {
			rc = vmbus_rings_release(r);
			HV_ASSERT(rc >= 0, "vmbus_bench: receive ring broken on commit");
			if (rc == 1)
				vmbus_rings_kick(r);
		}
		if (!wrote && !read) {
			b->polls++;
			hv_pause();
		}
	}
	hv_sync(11, b->sent, b->sent * b->size, r->kicks, b->full);
	return 0;
}
