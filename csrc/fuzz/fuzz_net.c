/*
 * fuzz_net.c - libFuzzer harness for the netvsc data plane (csrc/hvr_net.c): the guest sends
 * NVSP messages (in-band or GPA-direct), writes RNDIS messages into its send-buffer sections and
 * guest RAM, completes (or forges completions of) receive transfers, and frames arrive from the
 * "TAP" (a SOCK_SEQPACKET socketpair, so frames keep their boundaries). hvr_net.c is included so
 * the receive path (rx_tap) and link indications (link_check) run without the thread.
 *
 * Invariants (a violation traps): the parent never breaks the guest's receive ring, every
 * transfer-page range it sends lies inside the receive buffer, the free-section count stays
 * within the section count, no frame longer than mtu + 18 reaches the TAP.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -DHVR_HOSTED -I.. fuzz_net.c
 *        ../vmbus_ring.c ../hv_synic.c ../hvr_plane.c   (tests/test_fuzz.py does it).
 */
#define HVKVM_FUZZ_PLANE
#include "fuzz_common.h"

#include <fcntl.h>
#include <sys/socket.h>

#include "../hvr_net.c"

static const uint32_t nvsp_versions[] = {NVSP_PROTOCOL_VERSION_1, NVSP_PROTOCOL_VERSION_2,
					 NVSP_PROTOCOL_VERSION_4, NVSP_PROTOCOL_VERSION_5,
					 NVSP_PROTOCOL_VERSION_6, NVSP_PROTOCOL_VERSION_61};

/* The guest looks at what the parent sent: transfer-page ranges must lie in the receive buffer. */
static void check_host_packets(struct fz_guest *g, struct hvr_net *n, uint64_t *tids,
			       uint32_t *ntids)
{
	struct hvr_pkt pkt;
	uint8_t hdr[8 + 8 * HVR_NET_MAX_RX_BATCH];

	while (hvr_in_read(&g->gin, &pkt) == HVR_OK) {
		g->completions++;
		if (pkt.type != VM_PKT_DATA_USING_XFER_PAGES)
			continue;
		uint32_t hl = pkt.payload_off - 16;

		if (pkt.range_count > HVR_NET_MAX_RX_BATCH || hl < 8 + 8 * pkt.range_count ||
		    hvr_in_copy(&g->gin, &pkt, 16, hdr, 8 + 8 * pkt.range_count) != HVR_OK)
			__builtin_trap();
		for (uint32_t i = 0; i < pkt.range_count; i++) {
			uint32_t bc, bo;

			memcpy(&bc, hdr + 8 + 8 * i, 4);
			memcpy(&bo, hdr + 12 + 8 * i, 4);
			if ((uint64_t)bo + bc > n->recv_buf_size || bc > n->recv_section_size)
				__builtin_trap();
		}
		if (*ntids < 64)
			tids[(*ntids)++] = pkt.trans_id;
	}
	(void)hvr_in_commit(&g->gin);
	if (g->gin.r.broken || n->nfree > n->recv_section_count)
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in fi = {data, size};
	struct fz_guest g;
	struct hvr_net n;
	int sv[2], rc, stopped = 0;
	uint8_t cfg = fz_u8(&fi), cfg2 = fz_u8(&fi);
	uint64_t tids[64];
	uint32_t ntids = 0;
	static uint8_t frame[70000];

	if (fz_guest_init(&g, 2, 1 + (cfg & 1), (cfg >> 1) & 1))
		abort();
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv))
		abort();
	memset(&n, 0, sizeof(n));
	n.regions = g.regions;
	n.nregions = 2;
	n.tap_fd = (cfg & 4) ? -1 : sv[0];
	n.vnet_hdr = (cfg & 8) ? 10 : 0;
	n.mtu = (cfg & 16) ? 68 + fz_u16(&fi) % 2000 : 1500;
	memcpy(n.mac, "\x00\x15\x5d\x01\x02\x03", 6);
	n.recv_buf_id = 0xcafe;
	n.nvsp_version = nvsp_versions[(cfg >> 5) % 6];
	n.recv_section_size = (HVR_NET_RX_HEADER + n.mtu + 19 + 7) & ~7u;
	if (n.recv_section_size < NETVSC_RECV_SECTION_SIZE)
		n.recv_section_size = NETVSC_RECV_SECTION_SIZE;
	n.recv_section_count = 2 + (cfg2 & 7);
	n.recv_buf_size = n.recv_section_size * n.recv_section_count + (cfg2 & 8) * 100;
	n.recv_buf = malloc(n.recv_buf_size);
	if (cfg2 & 16) {
		n.send_section_size = 512u << ((cfg2 >> 5) & 3);
		n.send_section_count = 1 + ((cfg2 >> 7) & 1) * 3;
		n.send_buf_size = n.send_section_size * n.send_section_count;
		n.send_buf = malloc(n.send_buf_size);
		memset(n.send_buf, 0, n.send_buf_size);
	}
	n.control_sections = n.recv_section_count / 4;
	n.rx_batch = 1 + (cfg2 & 31) % HVR_NET_MAX_RX_BATCH;
	n.link_speed = 100000;
	n.err_fd = -1;
	n.link_up = 1;
	if (!n.recv_buf || hvr_net_init(&n))
		__builtin_trap(); /* the configuration above is always valid */
	g.p.ctx = &n;

	for (int steps = 0; fz_left(&fi) && steps < 64 && !stopped; steps++) {
		uint8_t op = fz_u8(&fi) % 8;

		switch (op) {
		case 0: { /* an NVSP message from the guest */
			uint8_t m[48];
			uint32_t plen = fz_u8(&fi) % (sizeof(m) + 1), type;

			fz_bytes(&fi, m, plen);
			if (plen >= 4 && !(m[0] & 0x80)) {
				type = NVSP_MSG1_TYPE_SEND_RNDIS_PKT;
				memcpy(m, &type, 4);
				if (plen >= 12 && (m[1] & 1)) {
					uint32_t idx = m[4] % 3 == 2 ? HVR_NET_NO_SECTION : m[4] % 3;

					memcpy(m + 8, &idx, 4);
				}
			}
			rc = fz_guest_send(&g, &fi, m, plen);
			if (rc == HVR_FULL) {
				rc = fz_plane_drain(&g, hvr_net_handler);
				stopped = rc < 0;
			}
			break;
		}
		case 1: /* RNDIS bytes into a send section */
			if (n.send_buf) {
				uint32_t off = fz_u16(&fi) % n.send_buf_size, len = fz_u8(&fi);

				if (len > n.send_buf_size - off)
					len = n.send_buf_size - off;
				fz_bytes(&fi, n.send_buf + off, len);
			}
			break;
		case 2: { /* RNDIS bytes into guest RAM (for GPA-direct packets) */
			struct hvr_ram_region *r = &g.regions[fz_u8(&fi) & 1];
			uint32_t off = fz_u16(&fi) % r->size, len = fz_u16(&fi) % 2048;

			if (len > r->size - off)
				len = (uint32_t)(r->size - off);
			fz_bytes(&fi, r->host + off, len);
			break;
		}
		case 3: { /* a frame from the network */
			uint32_t len = fz_u16(&fi) % sizeof(frame);

			memset(frame, 0xee, len);
			fz_bytes(&fi, frame, len < 64 ? len : 64);
			if (n.tap_fd >= 0)
				(void)!write(sv[1], frame, len);
			rc = rx_tap(&g.p, &n);
			if (rc < 0) {
				stopped = 1;
				break;
			}
			rc = hvr_plane_commit(&g.p);
			stopped = rc < 0;
			check_host_packets(&g, &n, tids, &ntids);
			break;
		}
		case 4:
			n.link_up = fz_u8(&fi) & 1;
			rc = link_check(&g.p, &n);
			stopped = rc < 0 || hvr_plane_commit(&g.p) < 0;
			check_host_packets(&g, &n, tids, &ntids);
			break;
		case 5: { /* the guest completes a receive transfer (or forges one) */
			uint8_t sel = fz_u8(&fi);
			uint64_t tid = (sel & 1) && ntids ? tids[(sel >> 1) % ntids] : fz_u64(&fi);
			uint32_t c[2] = {NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE, 1};
			struct hvr_iov iov = {c, sizeof(c)};

			if (hvr_out_write(&g.gout, VM_PKT_COMP, 0, tid, 0, &iov, 1) == HVR_OK)
				(void)hvr_out_commit(&g.gout);
			break;
		}
		case 6:
			rc = fz_plane_drain(&g, hvr_net_handler);
			stopped = rc < 0;
			break;
		default: {
			struct hvr_net_error e;

			while (hvr_net_pop_error(&n, &e))
				if (e.code == HVR_NET_ERR_NONE || e.code >= HVR_NET_ERR_MAX)
					__builtin_trap();
			break;
		}
		}
		if (!stopped)
			check_host_packets(&g, &n, tids, &ntids);
		/* frames the parent wrote to the TAP: never longer than the MTU allows */
		for (;;) {
			ssize_t r = read(sv[1], frame, sizeof(frame));

			if (r < 0)
				break;
			if ((size_t)r > n.vnet_hdr + n.mtu + 18 || (size_t)r < n.vnet_hdr + 14)
				__builtin_trap();
		}
	}
	if (!stopped)
		(void)fz_plane_drain(&g, hvr_net_handler);
	hvr_net_fini(&n);
	free(n.recv_buf);
	free(n.send_buf);
	close(sv[0]);
	close(sv[1]);
	fz_guest_fini(&g);
	return 0;
}
