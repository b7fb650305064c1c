/*
 * net_bench - UDP transmit benchmark over the netvsc VSC: sends `size`-byte datagrams to
 * peer:port at `rate` per second for `seconds` seconds from a ring-3 loop, then prints the
 * achieved rate as one JSON line.
 *
 * Command line: ip=A.B.C.D/N (required) peer=A.B.C.D (required) port=N (9) src_port=N (9999)
 *   size=N (64, 1..1472) rate=PPS (0: as fast as possible) seconds=S (5) ring_pages=N (64,
 *   1..64) send_kb=N (1024, at most 1024) nvsp=V (newest NVSP version offered)
 * SYNC 1 link up: MAC, IP, NVSP version, NDIS version, recv sections << 32 | send sections
 * SYNC 10 right before the timed loop: rate, size, seconds, peer IP
 * SYNC 11 right after it: datagrams, payload bytes, elapsed us, sends refused for lack of
 *         sections or ring space, kicks
 * Console (COM1) and LOG: {"bench": "net_tx", "size": .., "rate": .., "seconds": ..,
 *   "packets": .., "bytes": .., "elapsed_us": .., "pps": .., "mbps": .., "frame_mbps": ..,
 *   "busy": .., "late": .., "kicks": .., "tx_completions": ..}
 * ("mbps" counts UDP payload bits, "frame_mbps" whole Ethernet frames without FCS); DONE(0).
 */
#include "net_bench.h"

static void fmt_milli(char *out, size_t n, uint64_t milli)
{
	hv_snprintf(out, n, "%llu.%03llu", (unsigned long long)(milli / 1000),
		    (unsigned long long)(milli % 1000));
}

int hv_main(void)
{
	struct netvsc_config cfg;
	struct nb_run *r = &nb_run;
	uint32_t ip, peer;
	unsigned prefix;
	uint64_t ring_pages = hv_arg_u64("ring_pages", 64), send_kb = hv_arg_u64("send_kb", 1024);
	uint64_t us, pps, frame, mbps_milli, fmbps_milli;
	char mbps[32], fmbps[32], line[512];
	int rc;

	HV_ASSERT(net_arg_cidr("ip", &ip, &prefix), "net_bench: ip=A.B.C.D/N is required");
	HV_ASSERT(net_arg_ipv4("peer", &peer), "net_bench: peer=A.B.C.D is required");
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
	rc = netvsc_open(&nb_nv, &cfg);
	HV_ASSERT(rc == 0, "net_bench: netvsc_open failed: %d (host status 0x%x)", rc,
		  nb_nv.last_status);
	if (!nb_nv.link_up)
		HV_ASSERT_EQ(netvsc_kwait_link(&nb_nv), 0, "net_bench: waiting for the link");
	net_init(&nb_if, nb_nv.mac, ip, prefix, netvsc_link_tx, &nb_nv);
	net_arg_ipv4("gw", &nb_if.gateway);
	netvsc_set_rx(&nb_nv, nb_rx, &nb_if);
	hv_sync(1, nb_mac64(nb_nv.mac), ip, nb_nv.nvsp_version, nb_nv.ndis_version,
		(uint64_t)nb_nv.recv_section_count << 32 | nb_nv.send_section_count);

	r->nv = &nb_nv;
	r->nif = &nb_if;
	r->tsc_hz = nb_nv.tsc_hz;
	r->peer = peer;
	rc = hv_run_user(nb_task, r);
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
	hv_snprintf(line, sizeof(line),
		    "{\"bench\": \"net_tx\", \"size\": %u, \"rate\": %llu, \"seconds\": %llu, "
		    "\"packets\": %llu, \"bytes\": %llu, \"elapsed_us\": %llu, \"pps\": %llu, "
		    "\"mbps\": %s, \"frame_mbps\": %s, \"busy\": %llu, \"late\": %llu, "
		    "\"kicks\": %llu, \"tx_completions\": %llu, \"no_section\": %llu, "
		    "\"ring_full\": %llu}",
		    r->size, (unsigned long long)r->rate, (unsigned long long)r->seconds,
		    (unsigned long long)r->sent, (unsigned long long)r->bytes,
		    (unsigned long long)us, (unsigned long long)pps, mbps, fmbps,
		    (unsigned long long)r->busy, (unsigned long long)r->late,
		    (unsigned long long)(nb_nv.rings.kicks - r->kicks0),
		    (unsigned long long)nb_nv.st.tx_completions,
		    (unsigned long long)nb_nv.st.tx_no_section,
		    (unsigned long long)nb_nv.st.tx_ring_full);
	hv_printf("%s\n", line);
	hv_log("%s", line);
	rc = netvsc_close(&nb_nv);
	HV_ASSERT(rc == 0, "net_bench: close failed: %d", rc);
	return 0;
}
