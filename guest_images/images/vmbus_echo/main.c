/*
 * vmbus_echo - the guest's VMBus client against hvkvm's echo VSP.
 *
 * Connects to the VMBus (vmbus_init), finds the offer with the echo class GUID, opens it with two
 * rings of `ring_pages` data pages each, and sends `count` in-band packets of many sizes (1 byte up
 * to `max_len`, default half a ring; enough bytes that both rings wrap, and packets that straddle
 * the end of a ring), checking every echo byte for byte, its length and trans_id:
 *   - kernel phase (ring 0): vmbus_send / vmbus_recv, interrupt-driven (`sti; hlt` until the
 *     channel's event flag), or polling with `kpoll=1`; at most `kwindow` packets (and never more
 *     ring bytes than one ring holds) in flight;
 *   - user phase (ring 3): the rings are handed to a task that polls them with interrupt_mask set,
 *     batches `window` packets per commit and kicks with `out %eax, $0xe4`.
 * Then closes the channel, tears the ring GPADL down and returns 0.
 *
 * Command line: mode=kernel|user|both (both) count=N (200) ring_pages=N (16, 1..128)
 *   max_len=N (ring_pages * 2048) window=N (16) kwindow=N (4) kpoll=0|1 (0) stall_s=N (20)
 *   unload=0|1 (0: send UNLOAD at the end) oneway=N (0: one-way packets of max_len bytes
 *   from ring 0 after the kernel phase, which the host consumes without answering)
 * SYNC 1 connected: version, offers, relid, connection id, ring_pages
 * SYNC 2 kernel phase: packets, bytes, receive-ring wraps, straddling echoes, channel interrupts
 * SYNC 3 user phase:   packets, bytes, receive-ring wraps, straddling echoes, kicks
 * SYNC 4 closed:       GPADL handle, SynIC messages, EOMs, SINT2 interrupts, kernel HvSignalEvents
 * SYNC 5 one-way burst (before SYNC 3): packets, bytes, waits for ring space, channel interrupts
 */
#include "echo.h"

static void kernel_phase(struct vmbus_channel *ch, struct echo_run *run, bool poll)
{
	uint64_t sent = 0, recvd = 0, t0 = echo_rdtsc();
	uint32_t last_in_off = 0, last_out = ch->rings.out.next_in, inflight = 0;
	struct hvr_pkt pkt;
	int rc;

	while (recvd < run->count) {
		while (sent < run->count && sent - recvd < run->window) {
			uint32_t len = echo_size(sent, run->max_len);
			uint32_t total = hvr_packet_total(0, len);

			/* vmbus_send() waits while the send ring is full; with no more bytes in
			 * flight than a ring holds, the host can always place every echo. */
			if (sent > recvd && inflight + total > run->inflight_max)
				break;
			rc = vmbus_send(ch, echo_pattern + echo_offset(sent), len,
					ECHO_TRANS(run->phase, sent), 0);
			HV_ASSERT_EQ(rc, HVR_OK, "ring 0: send of packet %llu (%u bytes)",
				     (unsigned long long)sent, len);
			if (len > run->st.max_len)
				run->st.max_len = len;
			if (ch->rings.out.next_in < last_out)
				run->st.out_wraps++;
			last_out = ch->rings.out.next_in;
			inflight += total;
			sent++;
		}
		rc = vmbus_recv(ch, &pkt, poll);
		HV_ASSERT_EQ(rc, HVR_OK, "ring 0: receive ring broken (%u)", ch->rings.in.r.broken);
		echo_account(run, &pkt, &last_in_off);
		echo_check(run, &ch->rings, &pkt, recvd);
		inflight -= hvr_packet_total(0, echo_size(recvd, run->max_len));
		recvd++;
		HV_ASSERT_EQ(vmbus_recv_done(ch), 0, "ring 0: commit of the receive ring");
	}
	run->st.cycles = echo_rdtsc() - t0;
}

/* One-way burst from ring 0: `n` packets of max_len bytes the host consumes without answering.
 * Once the host falls behind, vmbus_send() finds the ring full, sets pending_send_sz and sleeps
 * until the host's read frees a quarter ring and it signals. */
static void oneway_phase(struct vmbus_channel *ch, uint64_t n, uint32_t len)
{
	for (uint64_t i = 0; i < n; i++) {
		int rc = vmbus_send(ch, echo_pattern + echo_offset(i), len,
				    ECHO_ONE_WAY | ECHO_TRANS(3, i), 0);

		HV_ASSERT_EQ(rc, HVR_OK, "ring 0: one-way packet %llu (%u bytes)",
			     (unsigned long long)i, len);
	}
}

static void report(const char *what, const struct echo_run *run)
{
	uint64_t us = run->tsc_hz ? run->st.cycles * 1000000 / run->tsc_hz : 0;

	hv_log("vmbus_echo: %s: %llu echoes, %llu bytes, sizes 1..%llu, send ring wrapped %llu, "
	       "receive ring wrapped %llu, %llu straddled its end, %llu full, %llu us "
	       "(%llu round trips/s)", what, (unsigned long long)run->st.packets,
	       (unsigned long long)run->st.bytes, (unsigned long long)run->st.max_len,
	       (unsigned long long)run->st.out_wraps, (unsigned long long)run->st.in_wraps,
	       (unsigned long long)run->st.straddles, (unsigned long long)run->st.full,
	       (unsigned long long)us,
	       (unsigned long long)(us ? run->st.packets * 1000000 / us : 0));
}

int hv_main(void)
{
	char mode[16] = "both", guid[37];
	uint64_t count = hv_arg_u64("count", 200);
	uint64_t ring_pages = hv_arg_u64("ring_pages", 16);
	uint64_t window = hv_arg_u64("window", 16);
	uint64_t kwindow = hv_arg_u64("kwindow", 4);
	bool kpoll = hv_arg_u64("kpoll", 0) != 0;
	uint64_t stall_s = hv_arg_u64("stall_s", 20);
	uint64_t oneway = hv_arg_u64("oneway", 0);
	bool do_kernel, do_user;
	uint32_t data_size, max_len, gpadl;
	struct vmbus_channel *ch;
	static struct echo_run krun;
	int rc;

	hv_arg("mode", mode, sizeof(mode));
	do_kernel = !strcmp(mode, "kernel") || !strcmp(mode, "both");
	do_user = !strcmp(mode, "user") || !strcmp(mode, "both");
	HV_ASSERT(do_kernel || do_user, "vmbus_echo: mode must be kernel, user or both, not '%s'",
		  mode);
	HV_ASSERT(ring_pages >= 1 && ring_pages <= ECHO_MAX_RING_PAGES,
		  "vmbus_echo: ring_pages must be 1..%u", ECHO_MAX_RING_PAGES);
	HV_ASSERT(window >= 1 && kwindow >= 1, "vmbus_echo: window and kwindow must be >= 1");
	data_size = (uint32_t)ring_pages * HVR_PAGE_SIZE;
	/* The largest payload one packet can carry: descriptor + payload + trailer <= size - 8. */
	max_len = (uint32_t)hv_arg_u64("max_len", data_size / 2);
	HV_ASSERT(max_len >= 1 && max_len <= data_size - 32,
		  "vmbus_echo: max_len must be 1..%u for %llu-page rings", data_size - 32,
		  (unsigned long long)ring_pages);

	/* The payload pattern, from ring 3 (native speed; ring 0 is emulated on kvm_pvm). */
	HV_ASSERT_EQ(hv_run_user(echo_fill_pattern, NULL), 0);

	rc = vmbus_init(VMBUS_VECTOR_DEFAULT);
	HV_ASSERT(rc == 0, "vmbus_echo: VMBus init failed: %d (hypercall status 0x%llx, hyperv %d, "
		  "version %u)", rc, (unsigned long long)vmbus_last_hv_status, hv_hyperv.present,
		  vmbus_conn.version);
	hv_log("vmbus_echo: VMBus %u.%u on connection id %u (vector 0x%x, %u INITIATE_CONTACT), "
	       "%u offer(s)", vmbus_conn.version >> 16, vmbus_conn.version & 0xffff,
	       vmbus_conn.msg_conn_id, vmbus_conn.vector, vmbus_conn.versions_tried,
	       vmbus_conn.offers);

	ch = vmbus_find_channel(&ECHO_CLASS_GUID, 0);
	HV_ASSERT(ch != NULL, "vmbus_echo: no offer with the echo class GUID among %u",
		  vmbus_conn.offers);
	vmbus_guid_format(&ch->offer.offer.if_instance, guid);
	hv_log("vmbus_echo: echo channel relid %u, connection id %u, instance %s", ch->relid,
	       ch->connection_id, guid);
	hv_sync(1, vmbus_conn.version, vmbus_conn.offers, ch->relid, ch->connection_id, ring_pages);

	rc = vmbus_channel_open(ch, echo_ring_area, (uint32_t)ring_pages + 1,
				(uint32_t)ring_pages + 1);
	HV_ASSERT(rc == 0, "vmbus_echo: open failed: %d (host status 0x%x, hypercall 0x%llx)", rc,
		  vmbus_last_host_status, (unsigned long long)vmbus_last_hv_status);
	gpadl = ch->gpadl;

	if (do_kernel) {
		krun.phase = 1;
		krun.window = (uint32_t)kwindow;
		krun.max_len = max_len;
		krun.data_size = data_size;
		krun.inflight_max = data_size - 8;
		krun.count = count;
		krun.tsc_hz = hv_hyperv.tsc_hz;
		kernel_phase(ch, &krun, kpoll);
		report(kpoll ? "ring 0, polling" : "ring 0, interrupts", &krun);
		hv_sync(2, krun.st.packets, krun.st.bytes, krun.st.in_wraps, krun.st.straddles,
			ch->events);
	}
	if (oneway) {
		uint64_t events = ch->events, waits = ch->send_waits;

		oneway_phase(ch, oneway, max_len);
		hv_log("vmbus_echo: ring 0, one-way: %llu packets of %u bytes, %llu waits for space",
		       (unsigned long long)oneway, max_len,
		       (unsigned long long)(ch->send_waits - waits));
		hv_sync(5, oneway, oneway * max_len, ch->send_waits - waits, ch->events - events);
	}
	if (do_user) {
		struct echo_run *u = &echo_user_run;

		memset(u, 0, sizeof(*u));
		u->phase = 2;
		u->window = (uint32_t)window;
		u->max_len = max_len;
		u->data_size = data_size;
		u->count = count;
		u->tsc_hz = hv_hyperv.tsc_hz;
		u->stall_cycles = hv_hyperv.tsc_hz * stall_s;
		HV_ASSERT_EQ(vmbus_channel_to_user(ch, &u->rings), 0);
		HV_ASSERT_EQ(hv_run_user(echo_user_task, u), 0);
		HV_ASSERT_EQ(vmbus_channel_from_user(ch, &u->rings), 0);
		report("ring 3, polling", u);
		hv_sync(3, u->st.packets, u->st.bytes, u->st.in_wraps, u->st.straddles,
			u->rings.kicks);
		HV_ASSERT_EQ(u->rings.kick_errors, 0, "ring 3: kicks the parent refused");
	}

	rc = vmbus_channel_close(ch);
	HV_ASSERT(rc == 0, "vmbus_echo: close failed: %d", rc);
	hv_log("vmbus_echo: closed relid %u, GPADL 0x%x torn down; %llu messages, %llu EOMs, "
	       "%llu interrupts, %llu kernel signals", ch->relid, gpadl,
	       (unsigned long long)vmbus_conn.messages, (unsigned long long)vmbus_conn.eoms,
	       (unsigned long long)vmbus_conn.interrupts, (unsigned long long)ch->host_signals);
	hv_sync(4, gpadl, vmbus_conn.messages, vmbus_conn.eoms, vmbus_conn.interrupts,
		ch->host_signals);
	if (hv_arg_u64("unload", 0)) {
		HV_ASSERT_EQ(vmbus_unload(), 0, "vmbus_echo: UNLOAD");
		hv_log("vmbus_echo: unloaded");
	}
	return 0;
}
