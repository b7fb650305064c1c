/*
 * demo - every VSC of the guest runtime against its VSP in one partition (`hvkvm demo`).
 *
 * In order, each part skipped (with a LOG line) when the host does not offer its device:
 *   1. VMBus: connect, list the offers by class name.
 *   2. Integration services: start heartbeat and shutdown (ic.h); from here on the VMBus
 *      interrupt answers heartbeats whatever else runs.
 *   3. VMBus echo: `echo_count` round trips from a ring-3 task, one packet in flight, sizes
 *      1..8000 bytes; each echo's type, trans_id, length and bytes checked.
 *   4. storvsc: open (handshake, INQUIRY, READ CAPACITY(16), MODE SENSE(6)), then from ring 3 a
 *      pattern over the first `disk_kb` KiB (default: the whole disk) in 64 KiB WRITE(16)s,
 *      SYNCHRONIZE CACHE, SYNC 5, then READ(16) it all back and compare every byte.
 *   5. netvsc (only with `ip=`): the NIC up with that address; a ring-3 task answers ARP, ping
 *      and UDP echo (port 7) until a UDP "STOP" arrives on port 9 (or `net_s` seconds pass:
 *      an ASSERT), then the NIC is closed.
 *   6. Waits in `sti; hlt` (heartbeats answered) for the host's shutdown request, acknowledges it
 *      and returns 0. Without a shutdown IC it returns 0 right away.
 *
 * Command line: ip=A.B.C.D/N (netvsc; no ip=, no network part) echo_count=N (16)
 *   disk_kb=N (0: the whole disk) seed=N (1) net_s=N (60) stall_s=N (20)
 * SYNC 1 connected:      VMBus version, offers, mask of what is offered (bit 0 echo, 1 storvsc,
 *                        2 netvsc, 3 heartbeat, 4 shutdown)
 * SYNC 2 ICs started:    ICs started, heartbeat relid, shutdown relid
 * SYNC 3 echo done:      round trips, bytes, min / mean / max round-trip ns
 * SYNC 4 disk probed:    storvsc protocol version, blocks, block size, max transfer, write
 *                        protected
 * SYNC 5 disk written:   blocks written, WRITEs, flushes (the read-back starts when it returns)
 * SYNC 6 disk verified:  blocks verified, READs, bytes
 * SYNC 7 NIC up:         MAC (48-bit, first byte highest), IP, NVSP version, NDIS version
 * SYNC 8 NIC stopped:    pings answered, UDP datagrams echoed, ARP requests answered, frames
 *                        received, frames the stack dropped
 * SYNC 9 idle:           heartbeats answered so far, heartbeat and shutdown service versions
 * SYNC 10 shutdown:      flags, heartbeats answered, last seq_num sent
 */
#include "demo.h"

#define OFFER_ECHO 1u
#define OFFER_STORVSC 2u
#define OFFER_NETVSC 4u
#define OFFER_HEARTBEAT 8u
#define OFFER_SHUTDOWN 16u

struct class_name {
	guid_t guid;
	const char *name;
	uint32_t bit;
};

/* The classes Linux's hv_vmbus knows (drivers/hv/channel_mgmt.c names them the same way), and
 * hvkvm's echo device. */
static const struct class_name class_names[] = {
	{ DEMO_ECHO_GUID, "hvkvm echo device", OFFER_ECHO },
	{ HV_SCSI_GUID, "synthetic SCSI controller (storvsc)", OFFER_STORVSC },
	{ HV_NIC_GUID, "synthetic network adapter (netvsc)", OFFER_NETVSC },
	{ HV_HEART_BEAT_GUID, "heartbeat integration service", OFFER_HEARTBEAT },
	{ HV_SHUTDOWN_GUID, "shutdown integration service", OFFER_SHUTDOWN },
	{ HV_IDE_GUID, "synthetic IDE controller", 0 },
	{ HV_TS_GUID, "time synchronization service", 0 },
	{ HV_KVP_GUID, "key-value pair service", 0 },
	{ HV_DM_GUID, "dynamic memory", 0 },
	{ HV_MOUSE_GUID, "synthetic mouse", 0 },
	{ HV_KBD_GUID, "synthetic keyboard", 0 },
	{ HV_VSS_GUID, "volume shadow copy service", 0 },
	{ HV_SYNTHVID_GUID, "synthetic video", 0 },
	{ HV_FCOPY_GUID, "file copy service", 0 },
	{ HV_PCIE_GUID, "PCI Express pass-through", 0 },
};

static volatile uint32_t shutdown_seen;

/* Runs in the VMBus interrupt after the acknowledgement went out: hv_main finishes the run. */
static void on_shutdown(const struct ic_shutdown_info *info)
{
	(void)info;
	shutdown_seen = 1;
}

static uint32_t list_offers(void)
{
	uint32_t mask = 0, seen = 0;
	char guid[37];

	/* hvkvm numbers relids from 1; stop once every offer was found. */
	for (uint32_t relid = 1; relid <= 256 && seen < vmbus_conn.offers; relid++) {
		struct vmbus_channel *ch = vmbus_channel_by_relid(relid);
		const char *name = "unknown class";

		if (!ch)
			continue;
		seen++;
		for (unsigned i = 0; i < HV_ARRAY_SIZE(class_names); i++)
			if (vmbus_guid_equal(&ch->offer.offer.if_type, &class_names[i].guid)) {
				name = class_names[i].name;
				mask |= class_names[i].bit;
			}
		vmbus_guid_format(&ch->offer.offer.if_type, guid);
		hv_log("demo: offer relid %u: %s (class %s)", relid, name, guid);
	}
	return mask;
}

static uint64_t ns(uint64_t cycles, uint64_t tsc_hz)
{
	return tsc_hz ? cycles * 1000000000ull / tsc_hz : 0;
}

static void run_echo(uint64_t count, uint64_t stall_cycles)
{
	struct demo_echo *e = &demo_echo;
	struct vmbus_channel *ch = vmbus_find_channel(&DEMO_ECHO_GUID, 0);
	uint8_t *area = storvsc_dma_alloc(2 * (DEMO_ECHO_RING_PAGES + 1) * HVR_PAGE_SIZE);
	uint64_t hz = hv_hyperv.tsc_hz;
	int rc;

	HV_ASSERT(ch && area, "demo: echo: no offer or no RAM for the rings");
	rc = vmbus_channel_open(ch, area, DEMO_ECHO_RING_PAGES + 1, DEMO_ECHO_RING_PAGES + 1);
	HV_ASSERT(rc == 0, "demo: echo: open failed: %d (host status 0x%x)", rc,
		  vmbus_last_host_status);
	memset(e, 0, sizeof(*e));
	e->tx = storvsc_dma_alloc(DEMO_ECHO_MAX_LEN);
	HV_ASSERT(e->tx, "demo: echo: no RAM for the payload");
	e->count = (uint32_t)count;
	e->tsc_hz = hz;
	e->stall_cycles = stall_cycles;
	hv_log("demo: echo: channel relid %u open (rings of %u KiB); %u round trips from ring 3",
	       ch->relid, DEMO_ECHO_RING_PAGES * 4, e->count);
	HV_ASSERT_EQ(vmbus_channel_to_user(ch, &e->rings), 0);
	HV_ASSERT_EQ(hv_run_user(demo_echo_task, e), 0);
	HV_ASSERT_EQ(vmbus_channel_from_user(ch, &e->rings), 0);
	HV_ASSERT_EQ(e->rings.kick_errors, 0, "demo: echo: kicks the parent refused");
	rc = vmbus_channel_close(ch);
	HV_ASSERT(rc == 0, "demo: echo: close failed: %d", rc);
	hv_log("demo: echo: %llu round trips ok, %llu bytes echoed and checked byte for byte; "
	       "round trip min %llu ns, mean %llu ns, max %llu ns; channel closed",
	       (unsigned long long)e->done, (unsigned long long)e->bytes,
	       (unsigned long long)ns(e->min_cycles, hz),
	       (unsigned long long)ns(e->done ? e->sum_cycles / e->done : 0, hz),
	       (unsigned long long)ns(e->max_cycles, hz));
	hv_sync(3, e->done, e->bytes, ns(e->min_cycles, hz),
		ns(e->done ? e->sum_cycles / e->done : 0, hz), ns(e->max_cycles, hz));
}

static void disk_failed(const char *what, struct demo_disk *k)
{
	char text[200];

	if (k->failed.opcode)
		storvsc_describe(&k->failed, text, sizeof(text));
	else
		hv_snprintf(text, sizeof(text), "%s", storvsc_strerror(k->error));
	HV_ASSERT(k->error == 0, "demo: storvsc: %s failed: %s", what, text);
}

static void run_storvsc(uint64_t disk_kb, uint64_t seed, uint64_t stall_cycles)
{
	struct storvsc_dev *d = &demo_storvsc;
	struct demo_disk *k = &demo_disk;
	uint64_t hz, bytes;
	int rc;

	rc = storvsc_open(d, 0, 16);
	HV_ASSERT(rc == 0, "demo: storvsc: open failed: %d (%s)", rc, storvsc_strerror(rc));
	hz = d->tsc_hz;
	if (!d->stall_cycles)
		d->stall_cycles = stall_cycles;
	hv_log("demo: storvsc: protocol %u.%u; INQUIRY: \"%s\" \"%s\" rev \"%s\"; READ CAPACITY(16): "
	       "%llu blocks of %u bytes (%llu KiB); MODE SENSE: %s",
	       d->version >> 8, d->version & 0xff, d->vendor, d->product, d->revision,
	       (unsigned long long)d->blocks, d->block_size,
	       (unsigned long long)(d->blocks * d->block_size / 1024),
	       d->write_protected ? "write-protected" : "writable");
	hv_sync(4, d->version, d->blocks, d->block_size, d->max_transfer, d->write_protected);
	HV_ASSERT(!d->write_protected, "demo: storvsc: the disk is write-protected");

	memset(k, 0, sizeof(*k));
	k->dev = d;
	k->seed = seed;
	k->blocks = disk_kb ? disk_kb * 1024 / d->block_size : d->blocks;
	HV_ASSERT(k->blocks >= 1 && k->blocks <= d->blocks,
		  "demo: storvsc: disk_kb=%llu does not fit a %llu-block disk",
		  (unsigned long long)disk_kb, (unsigned long long)d->blocks);
	k->buf = storvsc_dma_alloc(DEMO_DISK_CHUNK);
	HV_ASSERT(k->buf, "demo: storvsc: no RAM for the buffer");
	bytes = k->blocks * d->block_size;

	if (hv_run_user(demo_disk_write_task, k) != 0)
		disk_failed("WRITE", k);
	hv_log("demo: storvsc: wrote a pattern over %llu KiB in %llu WRITE(16)s from ring 3, then "
	       "SYNCHRONIZE CACHE (%llu us)", (unsigned long long)(bytes / 1024),
	       (unsigned long long)k->writes, (unsigned long long)(ns(k->write_cycles, hz) / 1000));
	hv_sync(5, k->blocks, k->writes, k->flushes);

	rc = hv_run_user(demo_disk_check_task, k);
	HV_ASSERT(rc != DEMO_MISMATCH, "demo: storvsc: read-back differs at LBA %llu byte %u: the "
		  "disk holds 0x%016llx where 0x%016llx was written",
		  (unsigned long long)k->bad_lba, k->bad_byte, (unsigned long long)k->bad_got,
		  (unsigned long long)k->bad_want);
	if (rc != 0)
		disk_failed("READ", k);
	hv_log("demo: storvsc: read %llu KiB back in %llu READ(16)s: every byte as written "
	       "(%llu us)", (unsigned long long)(bytes / 1024), (unsigned long long)k->reads,
	       (unsigned long long)(ns(k->read_cycles, hz) / 1000));
	hv_sync(6, k->blocks, k->reads, bytes);
	rc = storvsc_close(d);
	HV_ASSERT(rc == 0, "demo: storvsc: close failed: %d", rc);
}

static uint64_t stack_drops(const struct net_stats *s)
{
	return s->rx_runt + s->rx_not_us + s->rx_ethertype + s->arp_bad + s->ip_bad_hdr +
	       s->ip_bad_csum + s->ip_frag + s->ip_not_us + s->ip_bad_src + s->ip_proto +
	       s->icmp_bad + s->udp_bad + s->udp_bad_csum + s->udp_no_port + s->no_addr;
}

static void run_netvsc(uint32_t ip, unsigned prefix, uint64_t net_s)
{
	struct netvsc_config cfg;
	struct demo_net *n = &demo_net;
	struct netvsc *nv = &demo_nv;
	char ipbuf[16];
	int rc;

	memset(&cfg, 0, sizeof(cfg));
	cfg.ring_pages = DEMO_NET_RING_PAGES;
	cfg.ring_area = storvsc_dma_alloc(2 * (DEMO_NET_RING_PAGES + 1) * HVR_PAGE_SIZE);
	cfg.recv_size = DEMO_NET_RECV_BYTES;
	cfg.recv_buf = storvsc_dma_alloc(DEMO_NET_RECV_BYTES);
	cfg.send_size = DEMO_NET_SEND_BYTES;
	cfg.send_buf = storvsc_dma_alloc(DEMO_NET_SEND_BYTES);
	HV_ASSERT(cfg.ring_area && cfg.recv_buf && cfg.send_buf, "demo: netvsc: no RAM for buffers");
	rc = netvsc_open(nv, &cfg);
	HV_ASSERT(rc == 0, "demo: netvsc: open failed: %d (host status 0x%x, NVSP 0x%x)", rc,
		  nv->last_status, nv->nvsp_version);
	if (!nv->link_up) {
		hv_log("demo: netvsc: link down, waiting for the host to connect it");
		HV_ASSERT_EQ(netvsc_kwait_link(nv), 0, "demo: netvsc: waiting for the link");
	}
	net_init(&demo_if, nv->mac, ip, prefix, netvsc_link_tx, nv);
	netvsc_set_rx(nv, demo_net_rx, &demo_if);
	memset(n, 0, sizeof(*n));
	n->nv = nv;
	n->nif = &demo_if;
	n->tsc_hz = nv->tsc_hz;
	n->idle_cycles = nv->tsc_hz / 50;   /* 20 ms without traffic: sleep */
	n->tick_cycles = nv->tsc_hz / 4;
	n->deadline = demo_rdtsc() + nv->tsc_hz * net_s;
	demo_net_bind(n);
	net_format_ipv4(ip, ipbuf);
	hv_log("demo: netvsc: NIC up: MAC %02x:%02x:%02x:%02x:%02x:%02x, %s/%u, NVSP 0x%x, NDIS "
	       "%u.%u; answering ARP, ping and UDP echo (port 7) from ring 3 until STOP (port 9)",
	       nv->mac[0], nv->mac[1], nv->mac[2], nv->mac[3], nv->mac[4], nv->mac[5], ipbuf,
	       prefix, nv->nvsp_version, nv->ndis_version >> 16, nv->ndis_version & 0xffff);
	hv_sync(7, net_mac_u64(nv->mac), ip, nv->nvsp_version, nv->ndis_version);

	rc = netvsc_run_user(nv, demo_net_task, n);
	HV_ASSERT(rc != DEMO_NET_DEADLINE, "demo: netvsc: no STOP from the host within %llu s",
		  (unsigned long long)net_s);
	HV_ASSERT_EQ(rc, 0, "demo: netvsc: ring-3 loop");
	hv_log("demo: netvsc: STOP: %llu pings answered, %llu UDP datagrams echoed (%llu bytes), "
	       "%llu ARP requests answered, %llu frames received, %llu dropped by the stack, "
	       "%u wake-ups from idle", (unsigned long long)demo_if.st.icmp_echo_replied,
	       (unsigned long long)n->echoed, (unsigned long long)n->echo_bytes,
	       (unsigned long long)demo_if.st.arp_replied, (unsigned long long)nv->st.rx_frames,
	       (unsigned long long)stack_drops(&demo_if.st), n->wakeups ? n->wakeups - 1 : 0);
	hv_sync(8, demo_if.st.icmp_echo_replied, n->echoed, demo_if.st.arp_replied,
		nv->st.rx_frames, stack_drops(&demo_if.st));
	rc = netvsc_close(nv);
	HV_ASSERT(rc == 0, "demo: netvsc: close failed: %d", rc);
	hv_log("demo: netvsc: NIC closed (RNDIS HALT, buffers revoked, channel closed)");
}

int hv_main(void)
{
	uint64_t stall_s = hv_arg_u64("stall_s", 20), stall_cycles;
	uint32_t offered, ip = 0;
	unsigned prefix = 0;
	int rc, started;

	rc = vmbus_init(VMBUS_VECTOR_DEFAULT);
	HV_ASSERT(rc == 0, "demo: VMBus init failed: %d (hypercall status 0x%llx)", rc,
		  (unsigned long long)vmbus_last_hv_status);
	hv_log("demo: connected to VMBus %u.%u; the host offers %u device(s)",
	       vmbus_conn.version >> 16, vmbus_conn.version & 0xffff, vmbus_conn.offers);
	offered = list_offers();
	hv_sync(1, vmbus_conn.version, vmbus_conn.offers, offered);
	stall_cycles = hv_hyperv.tsc_hz * stall_s;

	ic_shutdown_hook = on_shutdown;
	started = ic_start_all();
	HV_ASSERT(started >= 0, "demo: starting the ICs failed: %d (host status 0x%x)", started,
		  vmbus_last_host_status);
	hv_log("demo: %d integration service(s) started; heartbeats are answered from the VMBus "
	       "interrupt from now on", started);
	hv_sync(2, (uint64_t)started, ic_heartbeat.ch ? ic_heartbeat.ch->relid : 0,
		ic_shutdown.ch ? ic_shutdown.ch->relid : 0);

	if (offered & OFFER_ECHO)
		run_echo(hv_arg_u64("echo_count", 16), stall_cycles);
	else
		hv_log("demo: echo: not offered, skipped");

	if (offered & OFFER_STORVSC)
		run_storvsc(hv_arg_u64("disk_kb", 0), hv_arg_u64("seed", 1), stall_cycles);
	else
		hv_log("demo: storvsc: not offered, skipped");

	if (!(offered & OFFER_NETVSC))
		hv_log("demo: netvsc: not offered, skipped");
	else if (!net_arg_cidr("ip", &ip, &prefix))
		hv_log("demo: netvsc: offered, but no ip=A.B.C.D/N on the command line: skipped");
	else
		run_netvsc(ip, prefix, hv_arg_u64("net_s", 60));

	hv_log("demo: idle; %llu heartbeat(s) answered so far (heartbeat %u.%u, shutdown %u.%u); "
	       "waiting for the host's shutdown request", (unsigned long long)ic_heartbeat.requests,
	       ic_heartbeat.srv_version >> 16, ic_heartbeat.srv_version & 0xffff,
	       ic_shutdown.srv_version >> 16, ic_shutdown.srv_version & 0xffff);
	hv_sync(9, ic_heartbeat.requests, ic_heartbeat.srv_version, ic_shutdown.srv_version);
	if (!ic_shutdown.ch) {
		hv_log("demo: no shutdown service offered: done");
		return 0;
	}
	while (!shutdown_seen)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	hv_log("demo: shutdown requested: \"%s\"; acknowledged after %llu heartbeat(s); exiting 0",
	       ic_last_shutdown.message, (unsigned long long)ic_heartbeat.requests);
	hv_sync(10, ic_last_shutdown.flags, ic_heartbeat.requests, ic_heartbeat.last_seq);
	return 0;
}
