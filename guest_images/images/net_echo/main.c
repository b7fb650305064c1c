/*
 * net_echo - a NIC (include/netdev.h: hvkvm's netvsc VSP, or QEMU's virtio-net) and the IP
 * stack: answers ping and echoes UDP datagrams on port 7 byte for byte until a UDP datagram
 * "STOP" arrives on port 9.
 *
 * Command line: dev=netvsc|virtio (netvsc) ip=A.B.C.D/N (required; /N defaults to 24)
 *   gw=A.B.C.D (optional)
 *   peer=A.B.C.D (optional: ARP-resolve it first, SYNC 3) ring_pages=N (32, 1..64)
 *   recv_kb=N (1024, 64..1024) send_kb=N (512, at most 1024) nvsp=V (newest NVSP version to
 *   offer, e.g. 0x50000; default 0x60001) idle_ms=N (20: no traffic for this long and the ring-3
 *   loop sleeps in the kernel until the channel interrupt) log_s=N (0: no periodic LOG)
 *   ring=3|0 (3: the loop is a ring-3 task; 0: the same loop in the kernel, emulated on kvm_pvm)
 *   virtio: queue_size=N (0: the device's maximum, at most 256) event_idx=0|1 (1)
 * SYNC 1 link up: MAC (48-bit, first byte highest), IP, then netvsc: NVSP version, NDIS
 *        version, recv sections << 32 | send sections; virtio: virtio-mmio Version, features
 *        (low 32 bits), receive queue size << 32 | transmit queue size
 * SYNC 3 peer resolved (with peer=): peer IP, peer MAC
 * A datagram "STAT" to port 9 is answered from port 9 with the NIC's counters as one JSON object
 * ({"dev", "echoed", "rx_frames", "tx_frames", "kicks", "interrupts", "sleeps", "rx_bad"}).
 * SYNC 2 stopped: UDP datagrams echoed, pings answered, frames received, frames dropped by the
 *        stack, ARP requests answered
 * then the NIC is closed (netvsc: RNDIS HALT, buffers revoked, channel closed, GPADLs torn
 * down; virtio: the device reset): DONE(0).
 */
#include "net_echo.h"

static uint64_t stack_drops(const struct net_stats *s)
{
	return s->rx_runt + s->rx_not_us + s->rx_ethertype + s->arp_bad + s->ip_bad_hdr +
	       s->ip_bad_csum + s->ip_frag + s->ip_not_us + s->ip_bad_src + s->ip_proto +
	       s->icmp_bad + s->udp_bad + s->udp_bad_csum + s->udp_no_port + s->no_addr;
}

/* what hvkvm bench reads from the image: the devices hv_main accepts */
HV_ARG_VALUES("dev", "netvsc virtio");

int hv_main(void)
{
	struct netvsc_config cfg;
	struct ne_run *r = &ne_run;
	uint32_t ip, peer = 0;
	unsigned prefix;
	uint64_t ring_pages = hv_arg_u64("ring_pages", 32);
	uint64_t recv_kb = hv_arg_u64("recv_kb", 1024), send_kb = hv_arg_u64("send_kb", 512);
	uint64_t ring = hv_arg_u64("ring", 3);
	char ipbuf[16], peerbuf[16], dev[16] = "netvsc";
	struct netdev *nd = &ne_dev;
	int rc;

	HV_ASSERT(net_arg_cidr("ip", &ip, &prefix), "net_echo: ip=A.B.C.D/N is required");
	hv_arg("dev", dev, sizeof(dev));
	HV_ASSERT(!strcmp(dev, "netvsc") || !strcmp(dev, "virtio"),
		  "net_echo: dev must be netvsc or virtio, not '%s'", dev);
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
	rc = netdev_open(nd, dev, &ne_nv, &cfg);
	if (nd->kind == NETDEV_NETVSC)
		HV_ASSERT(rc == 0, "net_echo: netvsc_open failed: %d (host status 0x%x, NVSP 0x%x, "
			  "VMBus %u.%u)", rc, ne_nv.last_status, ne_nv.nvsp_version,
			  vmbus_conn.version >> 16, vmbus_conn.version & 0xffff);
	HV_ASSERT(rc == 0, "net_echo: opening %s: %d (%s)", dev, rc, netdev_strerror(nd, rc));

	net_init(&ne_if, nd->mac, ip, prefix, netdev_link_tx, nd);
	net_arg_ipv4("gw", &ne_if.gateway);
	netdev_set_rx(nd, ne_rx, &ne_if);
	memset(r, 0, sizeof(*r));
	r->dev = nd;
	r->nif = &ne_if;
	r->tsc_hz = nd->tsc_hz;
	r->idle_cycles = nd->tsc_hz / 1000 * hv_arg_u64("idle_ms", 20);
	r->tick_cycles = nd->tsc_hz / 4;
	r->log_cycles = nd->tsc_hz * hv_arg_u64("log_s", 0);
	r->peer = peer;
	ne_bind(r);

	net_format_ipv4(ip, ipbuf);
	if (nd->kind == NETDEV_NETVSC)
		hv_log("net_echo: link up: MAC %02x:%02x:%02x:%02x:%02x:%02x, %s/%u, NVSP 0x%x, NDIS "
		       "%u.%u, receive buffer %u x %u bytes, send buffer %u x %u bytes, max frame %u",
		       nd->mac[0], nd->mac[1], nd->mac[2], nd->mac[3], nd->mac[4], nd->mac[5],
		       ipbuf, prefix, ne_nv.nvsp_version, ne_nv.ndis_version >> 16,
		       ne_nv.ndis_version & 0xffff, ne_nv.recv_section_count,
		       ne_nv.recv_section_size, ne_nv.send_section_count, ne_nv.send_section_size,
		       ne_nv.max_frame);
	else
		hv_log("net_echo: link up: MAC %02x:%02x:%02x:%02x:%02x:%02x, %s/%u, virtio-net "
		       "(virtio-mmio %llu at 0x%llx, GSI %u, vendor 0x%x), features 0x%llx, queues "
		       "%llu/%llu%s", nd->mac[0], nd->mac[1], nd->mac[2], nd->mac[3], nd->mac[4],
		       nd->mac[5], ipbuf, prefix, (unsigned long long)nd->info[0],
		       (unsigned long long)nd->vn->m.base, nd->vn->m.irq, nd->vn->m.vendor_id,
		       (unsigned long long)nd->vn->m.features,
		       (unsigned long long)(nd->info[2] >> 32),
		       (unsigned long long)(nd->info[2] & 0xffffffffu),
		       nd->vn->rx.event_idx ? ", EVENT_IDX" : "");
	hv_sync(1, net_mac_u64(nd->mac), ip, nd->info[0], nd->info[1], nd->info[2]);

	for (;;) {
		rc = ring == 3 ? netdev_run_user(nd, ne_task, r) : netdev_run_kernel(nd, ne_task, r);
		if (rc != NE_PEER_RESOLVED)
			break;
		/* ARP asked and answered: the peer's MAC */
		net_format_ipv4(peer, peerbuf);
		hv_log("net_echo: peer %s is at %02x:%02x:%02x:%02x:%02x:%02x", peerbuf,
		       r->peer_mac[0], r->peer_mac[1], r->peer_mac[2], r->peer_mac[3],
		       r->peer_mac[4], r->peer_mac[5]);
		hv_sync(3, peer, net_mac_u64(r->peer_mac));
	}
	HV_ASSERT_EQ(rc, 0, "net_echo: ring-3 loop");

	hv_log("net_echo: STOP after %llu UDP echoes (%llu bytes, %llu failed), %llu pings, %llu "
	       "wake-ups from idle (ring %llu)", (unsigned long long)r->echoed,
	       (unsigned long long)r->echo_bytes, (unsigned long long)r->echo_failed,
	       (unsigned long long)ne_if.st.icmp_echo_replied,
	       (unsigned long long)(r->wakeups ? r->wakeups - 1 : 0), (unsigned long long)ring);
	if (nd->kind == NETDEV_VIRTIO) {
		const struct virtio_net_dev *v = nd->vn;

		hv_log("net_echo: virtio-net rx %llu frames, dropped: bad-id %llu bad-len %llu "
		       "runt %llu oversize %llu bad-used %llu; tx %llu, completions %llu, bad-tx %llu; "
		       "kicks %llu (suppressed %llu), interrupts %llu, sleeps %llu",
		       (unsigned long long)v->st.rx_frames, (unsigned long long)v->st.rx_bad_id,
		       (unsigned long long)v->st.rx_bad_len, (unsigned long long)v->st.rx_runt,
		       (unsigned long long)v->st.rx_oversize,
		       (unsigned long long)(v->rx.bad_used + v->tx.bad_used),
		       (unsigned long long)v->st.tx_frames, (unsigned long long)v->st.tx_completions,
		       (unsigned long long)(v->st.tx_bad_id + v->st.tx_bad_len),
		       (unsigned long long)(v->rx.kicks + v->tx.kicks),
		       (unsigned long long)(v->rx.kicks_suppressed + v->tx.kicks_suppressed),
		       (unsigned long long)v->st.interrupts, (unsigned long long)v->st.kernel_waits);
	}
	{
		struct netdev_counters c;

		netdev_counters(nd, &c);
		hv_sync(2, r->echoed, ne_if.st.icmp_echo_replied, c.rx_frames,
			stack_drops(&ne_if.st), ne_if.st.arp_replied);
	}
	rc = netdev_close(nd);
	HV_ASSERT(rc == 0, "net_echo: close failed: %d", rc);
	return 0;
}
