/*
 * net_echo - the netvsc VSC and the IP stack against hvkvm's netvsc VSP: answers ping and echoes
 * UDP datagrams on port 7 byte for byte until a UDP datagram "STOP" arrives on port 9.
 *
 * Command line: ip=A.B.C.D/N (required; /N defaults to 24) gw=A.B.C.D (optional)
 *   peer=A.B.C.D (optional: ARP-resolve it first, SYNC 3) ring_pages=N (32, 1..64)
 *   recv_kb=N (1024, 64..1024) send_kb=N (512, at most 1024) nvsp=V (newest NVSP version to
 *   offer, e.g. 0x50000; default 0x60001) idle_ms=N (20: no traffic for this long and the ring-3
 *   loop sleeps in the kernel until the channel interrupt) log_s=N (0: no periodic LOG)
 *   ring=3|0 (3: the loop is a ring-3 task; 0: the same loop in the kernel, emulated on kvm_pvm)
 * SYNC 1 link up: MAC (48-bit, first byte highest), IP, NVSP version, NDIS version,
 *        recv sections << 32 | send sections
 * SYNC 3 peer resolved (with peer=): peer IP, peer MAC
 * SYNC 2 stopped: UDP datagrams echoed, pings answered, frames received, frames dropped by the
 *        stack, ARP requests answered
 * then the NIC is closed (RNDIS HALT, buffers revoked, channel closed, GPADLs torn down): DONE(0).
 */
#include "net_echo.h"

static uint64_t stack_drops(const struct net_stats *s)
{
	return s->rx_runt + s->rx_not_us + s->rx_ethertype + s->arp_bad + s->ip_bad_hdr +
	       s->ip_bad_csum + s->ip_frag + s->ip_not_us + s->ip_bad_src + s->ip_proto +
	       s->icmp_bad + s->udp_bad + s->udp_bad_csum + s->udp_no_port + s->no_addr;
}

int hv_main(void)
{
	struct netvsc_config cfg;
	struct ne_run *r = &ne_run;
	uint32_t ip, peer = 0;
	unsigned prefix;
	uint64_t ring_pages = hv_arg_u64("ring_pages", 32);
	uint64_t recv_kb = hv_arg_u64("recv_kb", 1024), send_kb = hv_arg_u64("send_kb", 512);
	uint64_t ring = hv_arg_u64("ring", 3);
	char ipbuf[16], peerbuf[16];
	int rc;

	HV_ASSERT(net_arg_cidr("ip", &ip, &prefix), "net_echo: ip=A.B.C.D/N is required");
	HV_ASSERT(!hv_arg_present("peer") || net_arg_ipv4("peer", &peer),
		  "net_echo: peer must be A.B.C.D");
	HV_ASSERT(ring_pages >= 1 && ring_pages <= NE_MAX_RING_PAGES,
		  "net_echo: ring_pages must be 1..%u", NE_MAX_RING_PAGES);
	HV_ASSERT(ring == 0 || ring == 3, "net_echo: ring must be 0 or 3");
	HV_ASSERT(recv_kb >= 64 && recv_kb <= NE_RECV_MAX / 1024 && recv_kb % 4 == 0,
		  "net_echo: recv_kb must be 64..%u, a multiple of 4", NE_RECV_MAX / 1024);
	HV_ASSERT(send_kb >= 16 && send_kb <= NE_SEND_MAX / 1024 && send_kb % 4 == 0,
		  "net_echo: send_kb must be 16..%u, a multiple of 4", NE_SEND_MAX / 1024);

	memset(&cfg, 0, sizeof(cfg));
	cfg.ring_area = ne_ring_area;
	cfg.ring_pages = (uint32_t)ring_pages;
	cfg.recv_buf = ne_recv_buf;
	cfg.recv_size = (uint32_t)recv_kb * 1024;
	cfg.send_buf = ne_send_buf;
	cfg.send_size = (uint32_t)send_kb * 1024;
	cfg.nvsp_max = (uint32_t)hv_arg_u64("nvsp", 0);
	rc = netvsc_open(&ne_nv, &cfg);
	HV_ASSERT(rc == 0, "net_echo: netvsc_open failed: %d (host status 0x%x, NVSP 0x%x, "
		  "VMBus %u.%u)", rc, ne_nv.last_status, ne_nv.nvsp_version,
		  vmbus_conn.version >> 16, vmbus_conn.version & 0xffff);
	if (!ne_nv.link_up) {
		hv_log("net_echo: link down, waiting for the host to connect it");
		HV_ASSERT_EQ(netvsc_kwait_link(&ne_nv), 0, "net_echo: waiting for the link");
	}

	net_init(&ne_if, ne_nv.mac, ip, prefix, netvsc_link_tx, &ne_nv);
	net_arg_ipv4("gw", &ne_if.gateway);
	netvsc_set_rx(&ne_nv, ne_rx, &ne_if);
	memset(r, 0, sizeof(*r));
	r->nv = &ne_nv;
	r->nif = &ne_if;
	r->tsc_hz = ne_nv.tsc_hz;
	r->idle_cycles = ne_nv.tsc_hz / 1000 * hv_arg_u64("idle_ms", 20);
	r->tick_cycles = ne_nv.tsc_hz / 4;
	r->log_cycles = ne_nv.tsc_hz * hv_arg_u64("log_s", 0);
	r->peer = peer;
	ne_bind(r);

	net_format_ipv4(ip, ipbuf);
	hv_log("net_echo: link up: MAC %02x:%02x:%02x:%02x:%02x:%02x, %s/%u, NVSP 0x%x, NDIS "
	       "%u.%u, receive buffer %u x %u bytes, send buffer %u x %u bytes, max frame %u",
	       ne_nv.mac[0], ne_nv.mac[1], ne_nv.mac[2], ne_nv.mac[3], ne_nv.mac[4], ne_nv.mac[5],
	       ipbuf, prefix, ne_nv.nvsp_version, ne_nv.ndis_version >> 16,
	       ne_nv.ndis_version & 0xffff, ne_nv.recv_section_count, ne_nv.recv_section_size,
	       ne_nv.send_section_count, ne_nv.send_section_size, ne_nv.max_frame);
	hv_sync(1, ne_mac64(ne_nv.mac), ip, ne_nv.nvsp_version, ne_nv.ndis_version,
		(uint64_t)ne_nv.recv_section_count << 32 | ne_nv.send_section_count);

	for (;;) {
		rc = ring == 3 ? netvsc_run_user(&ne_nv, ne_task, r)
			       : netvsc_run_kernel(&ne_nv, ne_task, r);
		if (rc != NE_PEER_RESOLVED)
			break;
		/* ARP asked and answered: the peer's MAC */
		net_format_ipv4(peer, peerbuf);
		hv_log("net_echo: peer %s is at %02x:%02x:%02x:%02x:%02x:%02x", peerbuf,
		       r->peer_mac[0], r->peer_mac[1], r->peer_mac[2], r->peer_mac[3],
		       r->peer_mac[4], r->peer_mac[5]);
		hv_sync(3, peer, ne_mac64(r->peer_mac));
	}
	HV_ASSERT_EQ(rc, 0, "net_echo: ring-3 loop");

	hv_log("net_echo: STOP after %llu UDP echoes (%llu bytes, %llu failed), %llu pings, %llu "
	       "wake-ups from idle (ring %llu)", (unsigned long long)r->echoed,
	       (unsigned long long)r->echo_bytes, (unsigned long long)r->echo_failed,
	       (unsigned long long)ne_if.st.icmp_echo_replied,
	       (unsigned long long)(r->wakeups ? r->wakeups - 1 : 0), (unsigned long long)ring);
	hv_sync(2, r->echoed, ne_if.st.icmp_echo_replied, ne_nv.st.rx_frames,
		stack_drops(&ne_if.st), ne_if.st.arp_replied);
	rc = netvsc_close(&ne_nv);
	HV_ASSERT(rc == 0, "net_echo: close failed: %d", rc);
	return 0;
}
