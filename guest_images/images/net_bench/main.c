/*
 * net_bench - UDP transmit benchmark over a NIC (include/netdev.h: the netvsc VSC, or virtio-net):
 * sends `size`-byte datagrams to peer:port at `rate` per second for `seconds` seconds from a
 * ring-3 loop (or the same loop in ring 0), then prints the achieved rate as one JSON line.
 *
 * Command line: dev=netvsc|virtio (netvsc) ring=3|0 (3) ip=A.B.C.D/N (required) peer=A.B.C.D
 *   (required) port=N (9) src_port=N (9999)
 *   size=N (64, 1..1472) rate=PPS (0: as fast as possible) seconds=S (5) ring_pages=N (64,
 *   1..64) send_kb=N (1024, at most 1024) nvsp=V (newest NVSP version offered); virtio:
 *   queue_size=N event_idx=0|1
 * SYNC 1 link up: as net_echo's (MAC, IP and three values of the NIC)
 * LOG "net_bench: timed loop starts" and SYNC 10 right before the timed loop: rate, size,
 *         seconds, peer IP
 * SYNC 11 and LOG "net_bench: timed loop ended" right after it: datagrams, payload bytes,
 *         elapsed us, sends refused for lack of sections or ring space, kicks
 * Console (COM1) and LOG: {"bench": "net_tx", "dev": .., "ring": .., "size": .., "rate": ..,
 *   "seconds": .., "packets": .., "bytes": .., "elapsed_us": .., "pps": .., "mbps": ..,
 *   "frame_mbps": .., "busy": .., "late": .., "kicks": .., "tx_completions": ..}
 * ("mbps" counts UDP payload bits, "frame_mbps" whole Ethernet frames without FCS); DONE(0).
 */
#include "net_bench.h"

static void fmt_milli(char *out, size_t n, uint64_t milli)
{
	hv_snprintf(out, n, "%llu.%03llu", (unsigned long long)(milli / 1000),
		    (unsigned long long)(milli % 1000));
}

/* what hvkvm bench reads from the image: the devices hv_main accepts */
HV_ARG_VALUES("dev", "netvsc virtio");

int hv_main(void)
{
	struct netvsc_config cfg;
	struct nb_run *r = &nb_run;
	uint32_t ip, peer;
	unsigned prefix;
	uint64_t ring_pages = hv_arg_u64("ring_pages", 64), send_kb = hv_arg_u64("send_kb", 1024);
	uint64_t us, pps, frame, mbps_milli, fmbps_milli;
	char mbps[32], fmbps[32], line[640], dev[16] = "netvsc";
	struct netdev *nd = &nb_dev;
	struct netdev_counters c;
	uint64_t ring = hv_arg_u64("ring", 3);
	int rc;

	HV_ASSERT(net_arg_cidr("ip", &ip, &prefix), "net_bench: ip=A.B.C.D/N is required");
	HV_ASSERT(net_arg_ipv4("peer", &peer), "net_bench: peer=A.B.C.D is required");
	hv_arg("dev", dev, sizeof(dev));
	HV_ASSERT(!strcmp(dev, "netvsc") || !strcmp(dev, "virtio"),
		  "net_bench: dev must be netvsc or virtio, not '%s'", dev);
	HV_ASSERT(ring == 0 || ring == 3, "net_bench: ring must be 0 or 3");
	memset(r, 0, sizeof(*r));
	r->port = (uint16_t)hv_arg_u64("port", 9);
	r->src_port = (uint16_t)hv_arg_u64("src_port", 9999);
	r->size = (uint32_t)hv_arg_u64("size", 64);
	r->rate = hv_arg_u64("rate", 0);
	r->seconds = hv_arg_u64("seconds", 5);
	HV_ASSERT(r->size >= 1 && r->size <= NET_UDP_MAX, "net_bench: size must be 1..%u",
		  NET_UDP_MAX);
	HV_ASSERT(r->seconds >= 1 && r->seconds <= 3600, "net_bench: seconds must be 1..3600");
	HV_ASSERT(ring_pages >= 1 && ring_pages <= NB_RING_PAGES_MAX,
		  "net_bench: ring_pages must be 1..%u", NB_RING_PAGES_MAX);
	HV_ASSERT(send_kb >= 16 && send_kb <= NB_SEND_MAX / 1024 && send_kb % 4 == 0,
		  "net_bench: send_kb must be 16..%u, a multiple of 4", NB_SEND_MAX / 1024);

	memset(&cfg, 0, sizeof(cfg));
	cfg.ring_area = nb_ring_area;
	cfg.ring_pages = (uint32_t)ring_pages;
	cfg.recv_buf = nb_recv_buf;
	cfg.recv_size = NB_RECV_SIZE;
	cfg.send_buf = nb_send_buf;
	cfg.send_size = (uint32_t)send_kb * 1024;
	cfg.nvsp_max = (uint32_t)hv_arg_u64("nvsp", 0);
	rc = netdev_open(nd, dev, &nb_nv, &cfg);
	HV_ASSERT(rc == 0, "net_bench: opening %s: %d (%s; host status 0x%x)", dev, rc,
		  netdev_strerror(nd, rc), nb_nv.last_status);
	net_init(&nb_if, nd->mac, ip, prefix, netdev_link_tx, nd);
	net_arg_ipv4("gw", &nb_if.gateway);
	netdev_set_rx(nd, nb_rx, &nb_if);
	hv_sync(1, net_mac_u64(nd->mac), ip, nd->info[0], nd->info[1], nd->info[2]);

	r->dev = nd;
	r->nif = &nb_if;
	r->tsc_hz = nd->tsc_hz;
	r->peer = peer;
	rc = ring == 3 ? hv_run_user(nb_task, r) : nb_task(r);
	HV_ASSERT(rc == 0, "net_bench: the peer did not answer ARP (%llu requests)",
		  (unsigned long long)r->arp_tries);

	us = nb_cycles_to_us(r->t1 - r->t0, r->tsc_hz);
	if (!us)
		us = 1;
	frame = r->size + 42 < NET_FRAME_MIN ? NET_FRAME_MIN : r->size + 42;
	pps = r->sent * 1000000 / us;
	mbps_milli = r->bytes * 8 * 1000 / us;          /* bits per us = Mbit/s, x1000 */
	fmbps_milli = r->sent * frame * 8 * 1000 / us;
	fmt_milli(mbps, sizeof(mbps), mbps_milli);
	fmt_milli(fmbps, sizeof(fmbps), fmbps_milli);
	netdev_counters(nd, &c);
	hv_snprintf(line, sizeof(line),
		    "{\"bench\": \"net_tx\", \"dev\": \"%s\", \"ring\": %llu, \"size\": %u, "
		    "\"rate\": %llu, \"seconds\": %llu, "
		    "\"packets\": %llu, \"bytes\": %llu, \"elapsed_us\": %llu, \"pps\": %llu, "
		    "\"mbps\": %s, \"frame_mbps\": %s, \"busy\": %llu, \"late\": %llu, "
		    "\"kicks\": %llu, \"tx_completions\": %llu, \"no_section\": %llu, "
		    "\"ring_full\": %llu}",
		    nd->name, (unsigned long long)ring, r->size, (unsigned long long)r->rate,
		    (unsigned long long)r->seconds,
		    (unsigned long long)r->sent, (unsigned long long)r->bytes,
		    (unsigned long long)us, (unsigned long long)pps, mbps, fmbps,
		    (unsigned long long)r->busy, (unsigned long long)r->late,
		    (unsigned long long)(r->kicks1 - r->kicks0),
		    (unsigned long long)c.tx_completions, (unsigned long long)c.tx_no_buffer,
		    (unsigned long long)c.tx_ring_full);
	hv_printf("%s\n", line);
	hv_log("%s", line);
	rc = netdev_close(nd);
	HV_ASSERT(rc == 0, "net_bench: close failed: %d", rc);
	return 0;
}
