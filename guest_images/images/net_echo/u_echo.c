/*
 * u_echo.c - net_echo's ring-3 part: the buffers, the UDP handlers and the polling loop.
 */
#include "net_echo.h"

uint8_t ne_ring_area[2 * (NE_MAX_RING_PAGES + 1) * 4096] __attribute__((aligned(4096)));
uint8_t ne_recv_buf[NE_RECV_MAX] __attribute__((aligned(4096)));
uint8_t ne_send_buf[NE_SEND_MAX] __attribute__((aligned(4096)));
struct netvsc ne_nv;
struct netdev ne_dev;
struct net_if ne_if;
struct ne_run ne_run;

void ne_rx(void *ctx, const uint8_t *frame, uint32_t len)
{
	net_input(ctx, frame, len);
}

/* Port 7: the datagram back to its sender, byte for byte, from port 7. */
static void on_echo(struct net_if *nif, const struct net_udp_meta *m, const uint8_t *data,
		    uint32_t len, void *ctx)
{
	struct ne_run *r = ctx;

	if (net_udp_send(nif, m->src_ip, NE_ECHO_PORT, m->src_port, data, len) >= 0) {
		r->echoed++;
		r->echo_bytes += len;
	} else {
		r->echo_failed++;
	}
}

/* Port 9: "STOP" ends the run; "STAT" is answered (to its sender, from port 9) with the NIC's
 * counters as one JSON object, so a client can take them around a timed window. */
static void on_stop(struct net_if *nif, const struct net_udp_meta *m, const uint8_t *data,
		    uint32_t len, void *ctx)
{
	struct ne_run *r = ctx;

	if (len == 4 && !memcmp(data, "STOP", 4)) {
		r->stop = 1;
	} else if (len == 4 && !memcmp(data, "STAT", 4)) {
		struct netdev_counters c;
		char out[320];
		int n;

		netdev_counters(r->dev, &c);
		n = hv_snprintf(out, sizeof(out),
				"{\"dev\": \"%s\", \"echoed\": %llu, \"rx_frames\": %llu, "
				"\"tx_frames\": %llu, \"kicks\": %llu, \"interrupts\": %llu, "
				"\"sleeps\": %llu, \"rx_bad\": %llu}", r->dev->name,
				(unsigned long long)r->echoed, (unsigned long long)c.rx_frames,
				(unsigned long long)c.tx_frames, (unsigned long long)c.kicks,
				(unsigned long long)c.interrupts, (unsigned long long)c.kernel_waits,
				(unsigned long long)c.rx_bad);
		if (n > 0 && (uint32_t)n < sizeof(out))
			net_udp_send(nif, m->src_ip, NE_STOP_PORT, m->src_port, out, (uint32_t)n);
	} else {
		r->stop_bad++;
	}
}

void ne_bind(struct ne_run *r)
{
	HV_ASSERT_EQ(net_udp_bind(r->nif, NE_ECHO_PORT, on_echo, r), 0);
	HV_ASSERT_EQ(net_udp_bind(r->nif, NE_STOP_PORT, on_stop, r), 0);
}

static bool arp_pending(const struct net_if *nif)
{
	for (unsigned i = 0; i < NET_ARP_QUEUE; i++)
		if (nif->pending[i].next_hop)
			return true;
	return false;
}

static void log_counters(const struct ne_run *r)
{
	const struct net_stats *s = &r->nif->st;
	struct netdev_counters v;

	netdev_counters(r->dev, &v);
	hv_log("net_echo: rx %llu frames (%llu bad), tx %llu, udp echoed %llu, pings %llu, "
	       "arp replied %llu asked %llu, dropped: runt %llu not-us %llu type %llu arp %llu "
	       "ip-hdr %llu ip-csum %llu frag %llu icmp %llu udp %llu udp-csum %llu no-port %llu",
	       (unsigned long long)v.rx_frames, (unsigned long long)v.rx_bad,
	       (unsigned long long)v.tx_frames, (unsigned long long)r->echoed,
	       (unsigned long long)s->icmp_echo_replied, (unsigned long long)s->arp_replied,
	       (unsigned long long)s->arp_requests, (unsigned long long)s->rx_runt,
	       (unsigned long long)s->rx_not_us, (unsigned long long)s->rx_ethertype,
	       (unsigned long long)s->arp_bad, (unsigned long long)s->ip_bad_hdr,
	       (unsigned long long)s->ip_bad_csum, (unsigned long long)s->ip_frag,
	       (unsigned long long)s->icmp_bad, (unsigned long long)s->udp_bad,
	       (unsigned long long)s->udp_bad_csum, (unsigned long long)s->udp_no_port);
}

int ne_task(void *arg)
{
	struct ne_run *r = arg;
	struct netdev *dev = r->dev;
	uint64_t now = ne_rdtsc(), busy = now, next_tick = now + r->tick_cycles;
	uint64_t next_log = now + r->log_cycles, next_ask = now;

	r->wakeups++;
	netdev_poll_mode(dev); /* polling: the host need not interrupt */
	while (!r->stop) {
		int n = netdev_poll(dev);

		HV_ASSERT(n >= 0, "net_echo: %s poll: %d (%s)", dev->name, n,
			  netdev_broken_reason(dev));
		now = ne_rdtsc();
		if (n > 0)
			busy = now;
		if (r->peer && !r->peer_resolved) {
			if (net_arp_lookup(r->nif, r->peer, r->peer_mac)) {
				r->peer_resolved = 1;
				netdev_flush(dev);
				return NE_PEER_RESOLVED;
			} else if (now >= next_ask) {
				net_arp_request(r->nif, r->peer);
				netdev_flush(dev);
				next_ask = now + r->tsc_hz / 5;
				busy = now;
			}
		}
		if (now >= next_tick) {
			net_tick(r->nif);
			netdev_flush(dev);
			next_tick = now + r->tick_cycles;
		}
		if (r->log_cycles && now >= next_log) {
			log_counters(r);
			next_log = now + r->log_cycles;
		}
		if (now - busy > r->idle_cycles && !arp_pending(r->nif) &&
		    (!r->peer || r->peer_resolved))
			return NETDEV_IDLE;
		if (n == 0)
			hv_pause();
	}
	netdev_flush(dev);
	log_counters(r);
	return 0;
}
