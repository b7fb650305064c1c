/*
 * u_dev.c - hostile_dev's ring-3 part: device memory and the SYNCHRONIZE CACHE storm.
 */
#include "dev.h"

struct storvsc_dev dev_disk;
struct netvsc dev_nic;
uint8_t dev_net_ring[2 * (DEV_NET_RING_PAGES + 1) * HVR_PAGE_SIZE]
	__attribute__((aligned(HVR_PAGE_SIZE)));
uint8_t dev_net_recv[DEV_NET_RECV] __attribute__((aligned(HVR_PAGE_SIZE)));
uint8_t dev_net_send[DEV_NET_SEND] __attribute__((aligned(HVR_PAGE_SIZE)));
uint8_t dev_echo_area[2 * 5 * HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));
struct sync_storm dev_storm;

/* As many SYNCHRONIZE CACHE(10) as the rings hold in flight, `count` in all. */
int dev_storm_task(void *arg)
{
	struct sync_storm *s = arg;
	struct storvsc_completion c[32];
	uint64_t sent = 0, t0 = storvsc_rdtsc();
	int n;

	while (s->done < s->count) {
		while (sent < s->count && sent - s->done < s->qd &&
		       storvsc_submit(s->d, STORVSC_OP_FLUSH, 0, 0, NULL, 0, sent) >= 0)
			sent++;
		storvsc_kick(s->d);
		n = storvsc_wait(s->d, c, 32);
		if (n < 0)
			return n;
		for (int i = 0; i < n; i++) {
			s->done++;
			if (c[i].status != STORVSC_OK)
				s->errors++;
		}
	}
	s->cycles = storvsc_rdtsc() - t0;
	return 0;
}
