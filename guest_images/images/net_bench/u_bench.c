/*
 * u_bench.c - net_bench's ring-3 loop: ARP for the peer, then UDP datagrams paced by the TSC,
 * written in bursts and published with one commit (and at most one kick) per burst; send
 * completions are reaped by polling the NIC in the same loop.
 */
#include "net_bench.h"

uint8_t nb_ring_area[2 * (NB_RING_PAGES_MAX + 1) * 4096] __attribute__((aligned(4096)));
uint8_t nb_recv_buf[NB_RECV_SIZE] __attribute__((aligned(4096)));
uint8_t nb_send_buf[NB_SEND_MAX] __attribute__((aligned(4096)));
struct netvsc nb_nv;
struct netdev nb_dev;
struct net_if nb_if;
struct nb_run nb_run;
static uint8_t payload[NET_UDP_MAX];

void nb_rx(void *ctx, const uint8_t *frame, uint32_t len)
{
	net_input(ctx, frame, len);
}

#define BURST 32

int nb_task(void *arg)
{
	struct nb_run *r = arg;
	struct netdev *dev = r->dev;
	struct netdev_counters c;
	uint64_t now, next, end, step, ask = 0, give_up;

	netdev_poll_mode(dev);
	for (uint32_t i = 0; i < r->size; i++)
		payload[i] = (uint8_t)(i * 7 + 1);

	/* ARP: ask every 200 ms for up to 5 s. */
	give_up = nb_rdtsc() + r->tsc_hz * 5;
	while (!net_arp_lookup(r->nif, r->peer, r->peer_mac)) {
		now = nb_rdtsc();
		if (now > give_up)
			return 1;
		if (now >= ask) {
			net_arp_request(r->nif, r->peer);
			r->arp_tries++;
			ask = now + r->tsc_hz / 5;
		}
		HV_ASSERT(netdev_poll(dev) >= 0, "net_bench: %s poll (%s)", dev->name,
			  netdev_broken_reason(dev));
		hv_pause();
	}
	r->resolved = 1;

	step = r->rate ? r->tsc_hz / r->rate : 0;
	hv_log("net_bench: timed loop starts"); /* the mark a host without ucalls (QEMU) sees */
	hv_sync(10, r->rate, r->size, r->seconds, r->peer);
	netdev_counters(dev, &c);
	r->kicks0 = c.kicks;
	r->t0 = now = next = nb_rdtsc();
	end = r->t0 + r->tsc_hz * r->seconds;
	while (now < end) {
		unsigned burst = 0;

		while (burst < BURST && (step == 0 || next <= now)) {
			if (r->size >= 8)
				memcpy(payload, &r->sent, 8); /* a sequence number for the receiver */
			int rc = net_udp_send(r->nif, r->peer, r->src_port, r->port, payload, r->size);

			if (rc != NET_OK) {
				r->busy++; /* no free section or ring space: reap, then go on */
				break;
			}
			r->sent++;
			r->bytes += r->size;
			next += step;
			burst++;
		}
		HV_ASSERT(netdev_poll(dev) >= 0, "net_bench: %s poll (%s)", dev->name,
			  netdev_broken_reason(dev)); /* commits the burst */
		now = nb_rdtsc();
		if (step && now > next + r->tsc_hz / 10) {
			/* more than 100 ms behind the schedule: do not burst to catch up */
			r->late++;
			next = now;
		}
		if (!burst)
			hv_pause();
	}
	r->t1 = nb_rdtsc();
	netdev_counters(dev, &c);
	r->kicks1 = c.kicks;
	hv_sync(11, r->sent, r->bytes, nb_cycles_to_us(r->t1 - r->t0, r->tsc_hz), r->busy,
		r->kicks1 - r->kicks0);
	hv_log("net_bench: timed loop ended");
	/* let the last completions come back before the kernel closes the NIC */
	for (uint64_t t = nb_rdtsc() + r->tsc_hz / 10; nb_rdtsc() < t;)
		netdev_poll(dev);
	return 0;
}
