/*
 * netvsc.h - the guest runtime's synthetic NIC: a netvsc VSC (NVSP + RNDIS over VMBus, Linux's
 * drivers/net/hyperv wire protocol, structs from csrc/netvsc_proto.h) and a tiny IPv4 stack
 * (Ethernet, ARP, IPv4, ICMP echo, UDP) on top of it.
 *
 * Layers, bottom up:
 *
 *   1. netvsc, set-up (rt/k_netvsc.c, ring 0, vCPU 0): netvsc_open() finds the HV_NIC_GUID offer,
 *      opens the channel and hands its rings to this struct (vmbus_channel_to_user: from then on
 *      the same code drives them from ring 0 or ring 3), negotiates NVSP (6.1, 6, 5, 4, 2, 1,
 *      newest first, one version per INIT like Linux's negotiate_nvsp_ver), sends NDIS_CONFIG
 *      (NVSP >= 2) and the NDIS version, hands over the receive buffer (SEND_RECV_BUF, id 0xcafe)
 *      and the send buffer (SEND_SEND_BUF, id 0) as GPADLs and takes the section layout from the
 *      completions, then RNDIS: INITIALIZE, query OID_802_3_PERMANENT_ADDRESS,
 *      OID_GEN_MAXIMUM_FRAME_SIZE and OID_GEN_MEDIA_CONNECT_STATUS, set
 *      OID_GEN_CURRENT_PACKET_FILTER. Waits are `sti; hlt` on the channel interrupt (the host's
 *      run timeout is the bound, as in the VMBus client).
 *   2. netvsc, data path (rt/u_netvsc.c, any ring): netvsc_poll() drains the receive ring:
 *      completions of our sends free send-buffer sections; transfer-page packets (ranges in the
 *      receive buffer, one RNDIS message each) are validated and queued, then delivered:
 *      RNDIS_PACKET_MSG frames go to the rx callback, control completions and status
 *      indications (link up/down) update the state; each transfer-page packet is then completed
 *      (NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE, its trans_id) so the host can reuse the sections.
 *      netvsc_tx() copies a frame behind an RNDIS_PACKET_MSG header into a free send-buffer
 *      section and writes SEND_RNDIS_PKT (completion requested); netvsc_flush() commits the ring
 *      and kicks the host only when the ring says so. Ring 3 kicks with the bare port-0xe4 `out`.
 *   3. The IP stack (rt/u_net.c, any ring; host-testable: no VMBus in it): struct net_if with a
 *      static address, an ARP cache (learns per RFC 826 from requests for us and from replies;
 *      asks before sending, queueing a few frames per unresolved next hop), IPv4 (header checksum
 *      checked and generated; header options are skipped; fragments are dropped, we never
 *      fragment), ICMP echo reply, UDP (checksum generated; checked when non-zero) with port
 *      bindings. Malformed frames are dropped and counted, never trusted: every length is
 *      checked against the frame's length before use.
 *
 * Memory: the image provides the ring area, the receive and the send buffer (page-aligned, in the
 * identity-mapped low 4 GiB; u_*.c .bss is simplest) and the struct netvsc / struct net_if
 * (user-accessible if a ring-3 task uses them). Nothing large lives in the runtime itself.
 *
 * Threading: one context at a time drives a struct netvsc (the kernel during set-up, then
 * whoever polls). Not reentrant; the rx callback may call netvsc_tx().
 */
#ifndef HV_NETVSC_H
#define HV_NETVSC_H

#include "vmbus.h"
#include "netvsc_proto.h" /* csrc/ */

/* ============================================================================================ */
/* The IP stack (rt/u_net.c). Addresses are host-order uint32_t (10.0.0.2 = 0x0a000002). */

#define NET_ETH_ALEN 6
#define NET_ETH_HLEN 14
#define NET_MTU 1500
#define NET_FRAME_MAX (NET_ETH_HLEN + NET_MTU) /* 1514: no FCS */
#define NET_FRAME_MIN 60                       /* shorter frames are padded with zeros */
#define NET_UDP_MAX (NET_MTU - 20 - 8)          /* 1472 */

#define NET_ETHERTYPE_IPV4 0x0800
#define NET_ETHERTYPE_ARP 0x0806
#define NET_IPPROTO_ICMP 1
#define NET_IPPROTO_UDP 17

#define NET_ARP_ENTRIES 16
#define NET_ARP_QUEUE 4      /* frames waiting for ARP resolution (all next hops together) */
#define NET_ARP_TRIES 3      /* requests per unresolved address before its frames are dropped */
#define NET_UDP_BINDINGS 8

/* net_input() verdicts: >= 0 accepted, < 0 dropped (and counted in the matching stat). */
enum net_verdict {
	NET_RX_OK = 0,            /* consumed (ARP handled, ping answered, UDP delivered) */
	NET_DROP_RUNT = -1,       /* shorter than an Ethernet header */
	NET_DROP_NOT_US = -2,     /* destination MAC neither ours nor broadcast, or a multicast source */
	NET_DROP_ETHERTYPE = -3,  /* neither IPv4 nor ARP */
	NET_DROP_ARP = -4,        /* ARP: short, not Ethernet/IPv4, unknown op, or not for us */
	NET_DROP_IP_HDR = -5,     /* IPv4: short, version, IHL, total length */
	NET_DROP_IP_CSUM = -6,    /* IPv4 header checksum */
	NET_DROP_IP_FRAG = -7,    /* a fragment (MF set or offset != 0) */
	NET_DROP_IP_NOT_US = -8,  /* destination not our address (nor broadcast for UDP) */
	NET_DROP_IP_SRC = -9,     /* source is 0, broadcast, multicast or ours: never answered */
	NET_DROP_PROTO = -10,     /* neither ICMP nor UDP */
	NET_DROP_ICMP = -11,      /* ICMP: short, bad checksum, not an echo request, or to broadcast */
	NET_DROP_UDP = -12,       /* UDP: short or a length that disagrees with IP */
	NET_DROP_UDP_CSUM = -13,  /* UDP checksum (non-zero and wrong) */
	NET_DROP_NO_PORT = -14,   /* no binding for the destination port */
	NET_DROP_NO_ADDR = -15,   /* the interface has no address yet */
};

/* net_udp_send() / net_ip_send() results */
#define NET_OK 0
#define NET_QUEUED 1          /* waiting for ARP resolution of the next hop */
#define NET_EINVAL (-1)       /* too long, no address, no route */
#define NET_ENOBUFS (-2)      /* the ARP queue is full: dropped */
#define NET_ELINK (-3)        /* the link refused the frame (no send resources) */

struct net_stats {
	uint64_t rx_frames, rx_bytes;
	uint64_t rx_runt, rx_not_us, rx_ethertype;
	uint64_t arp_rx, arp_bad, arp_replied, arp_learned, arp_requests, arp_timeouts;
	uint64_t ip_rx, ip_bad_hdr, ip_bad_csum, ip_frag, ip_not_us, ip_bad_src, ip_proto;
	uint64_t icmp_rx, icmp_bad, icmp_echo_replied;
	uint64_t udp_rx, udp_bad, udp_bad_csum, udp_no_port, udp_delivered;
	uint64_t tx_frames, tx_bytes, tx_link_errors, tx_queued, tx_queue_drops, no_addr;
};

struct net_if;

/* What a bound UDP port receives (data points into the received frame: copy what you keep). */
struct net_udp_meta {
	uint32_t src_ip, dst_ip;
	uint16_t src_port, dst_port;
	uint8_t src_mac[NET_ETH_ALEN];
};
typedef void (*net_udp_fn)(struct net_if *nif, const struct net_udp_meta *m, const uint8_t *data,
			   uint32_t len, void *ctx);

/* The link below the stack: send one complete Ethernet frame (copied before returning).
 * 0 = sent, < 0 = dropped. */
typedef int (*net_link_tx_fn)(void *ctx, const uint8_t *frame, uint32_t len);

struct net_arp_entry {
	uint32_t ip;
	uint8_t mac[NET_ETH_ALEN];
	uint8_t state;  /* NET_ARP_FREE, NET_ARP_INCOMPLETE, NET_ARP_RESOLVED */
	uint8_t tries;  /* requests sent while incomplete */
	uint64_t used;  /* LRU stamp */
};
#define NET_ARP_FREE 0
#define NET_ARP_INCOMPLETE 1
#define NET_ARP_RESOLVED 2

struct net_pending {
	uint32_t next_hop; /* 0: slot free */
	uint32_t len;
	uint8_t frame[NET_FRAME_MAX]; /* destination MAC filled in when resolved */
};

struct net_if {
	uint8_t mac[NET_ETH_ALEN];
	uint16_t ip_id;
	uint32_t ip;         /* 0 = no address (everything IP is dropped) */
	uint32_t prefix_len; /* 0..32 */
	uint32_t netmask;
	uint32_t gateway;    /* 0: none (off-subnet destinations are refused) */
	net_link_tx_fn link_tx;
	void *link_ctx;
	bool answer_ping;    /* ICMP echo replies (default true) */
	uint64_t arp_clock;
	struct net_arp_entry arp[NET_ARP_ENTRIES];
	struct net_pending pending[NET_ARP_QUEUE];
	struct {
		uint16_t port; /* 0: free */
		net_udp_fn fn;
		void *ctx;
	} udp[NET_UDP_BINDINGS];
	struct net_stats st;
	uint8_t scratch[NET_FRAME_MAX] __attribute__((aligned(8))); /* frames are built here */
};

/* Reset *nif: our MAC, address ip/prefix_len (ip 0: none yet), the link's send function. */
void net_init(struct net_if *nif, const uint8_t mac[NET_ETH_ALEN], uint32_t ip,
	      unsigned prefix_len, net_link_tx_fn tx, void *tx_ctx);
/* One received Ethernet frame (without FCS). Returns an enum net_verdict; never reads outside
 * [frame, frame + len). */
int net_input(struct net_if *nif, const uint8_t *frame, uint32_t len);
/* Bind/unbind a UDP port (0 < port). 0, or NET_EINVAL (no free slot / port 0). */
int net_udp_bind(struct net_if *nif, uint16_t port, net_udp_fn fn, void *ctx);
void net_udp_unbind(struct net_if *nif, uint16_t port);
/* Send a UDP datagram of len <= NET_UDP_MAX bytes (checksum generated). dst may be
 * 255.255.255.255 (broadcast MAC). NET_OK, NET_QUEUED, or < 0. */
int net_udp_send(struct net_if *nif, uint32_t dst_ip, uint16_t src_port, uint16_t dst_port,
		 const void *data, uint32_t len);
/* Send an IPv4 packet whose payload (len <= NET_MTU - 20) is `payload` (checksums of the payload
 * are the caller's). Same results as net_udp_send(). */
int net_ip_send(struct net_if *nif, uint32_t dst_ip, uint8_t proto, const void *payload,
		uint32_t len);
/* The MAC of `ip` if the cache has it resolved. */
bool net_arp_lookup(struct net_if *nif, uint32_t ip, uint8_t mac[NET_ETH_ALEN]);
/* Send an ARP request for ip (an incomplete cache entry is created). 0 or < 0. */
int net_arp_request(struct net_if *nif, uint32_t ip);
/* Call every few hundred ms: re-asks for unresolved addresses, gives up after NET_ARP_TRIES
 * (their queued frames are dropped and counted). */
void net_tick(struct net_if *nif);
/* The next hop for dst_ip: dst itself on our subnet or for broadcast, else the gateway (0 if
 * none). */
uint32_t net_next_hop(const struct net_if *nif, uint32_t dst_ip);

/* The Internet checksum: one's complement sum of `len` bytes added to `sum` (big-endian 16-bit
 * words, an odd byte padded), not folded/inverted: use net_csum_fold(). */
uint32_t net_csum_add(uint32_t sum, const void *data, uint32_t len);
uint16_t net_csum_fold(uint32_t sum); /* fold to 16 bits and invert */

/* "A.B.C.D" -> ip; "A.B.C.D/N" (N 0..32, "/N" optional: default_prefix) -> ip, prefix. The whole
 * string must parse. */
bool net_parse_ipv4(const char *s, uint32_t *ip);
bool net_parse_cidr(const char *s, uint32_t *ip, unsigned *prefix, unsigned default_prefix);
/* "a.b.c.d" into out (at least 16 bytes). */
void net_format_ipv4(uint32_t ip, char *out);
/* A MAC as one number, first byte highest (how SYNC values carry a MAC to the host). */
static inline uint64_t net_mac_u64(const uint8_t *mac)
{
	uint64_t v = 0;

	for (int i = 0; i < NET_ETH_ALEN; i++)
		v = v << 8 | mac[i];
	return v;
}
/* Command-line helpers (hv_arg): `key=A.B.C.D[/N]`. false if absent or malformed. */
bool net_arg_cidr(const char *key, uint32_t *ip, unsigned *prefix);
bool net_arg_ipv4(const char *key, uint32_t *ip);

/* Big-endian field access (frames are byte arrays, no alignment assumed). */
static inline uint16_t net_get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t net_get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void net_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void net_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* ============================================================================================ */
/* The netvsc VSC. */

/* Errors (negative) of the netvsc_* calls; VMBUS_* codes pass through from the VMBus client. */
#define NETVSC_EBROKEN (-20)   /* a ring broke (the host corrupted it): see rings.*.r.broken */
#define NETVSC_EINVAL (-21)    /* bad argument or configuration */
#define NETVSC_ENODEV (-22)    /* no HV_NIC_GUID offer */
#define NETVSC_EVERSION (-23)  /* the host accepted no NVSP version */
#define NETVSC_EHOST (-24)     /* the host refused a step (status in nv->last_status) */
#define NETVSC_EBUSY (-25)     /* no free send section / ring space right now */
#define NETVSC_ETIMEDOUT (-26) /* the host did not make room in time */

/* A ring-3 task returns this to have netvsc_run_user() sleep until the channel's interrupt
 * and start it again (NAPI-like: poll while busy, sleep when idle). */
#define NETVSC_IDLE 0x1d1e

#define NETVSC_MAX_SEND_SECTIONS 1024 /* send-buffer sections used at most */
#define NETVSC_RXQ 128                /* transfer-page packets queued for delivery */
#define NETVSC_RX_RANGES 1024         /* their ranges, all together */
#define NETVSC_CTRL_MAX 256           /* bytes of an RNDIS control completion kept */
#define NETVSC_RNDIS_PKT_HDR (RNDIS_HEADER_SIZE + sizeof(struct rndis_packet)) /* 44 */
#define NETVSC_FRAME_MAX (NET_FRAME_MAX + 4) /* the largest frame taken: 1518 (802.1Q tag) */

/* trans_id tags (bits 63:48) of what we send; the low bits carry the section / message type. */
#define NETVSC_TID_TX (0x5458ull << 48)   /* "TX": a send-buffer section, index in bits 15:0 */
#define NETVSC_TID_NVSP (0x4e56ull << 48) /* "NV": an NVSP request, its msg_type in bits 15:0 */

struct netvsc_config {
	void *ring_area;        /* 2 * (ring_pages + 1) pages: send ring, then receive ring */
	uint32_t ring_pages;    /* data pages per ring */
	uint32_t recv_size;     /* receive buffer bytes (multiple of 4096) */
	void *recv_buf;
	void *send_buf;
	uint32_t send_size;     /* send buffer bytes (multiple of 4096) */
	uint32_t nvsp_max;      /* newest NVSP version offered (0: NVSP_PROTOCOL_VERSION_61) */
	uint32_t mtu;           /* 0: 1500; NDIS_CONFIG carries mtu + 14 as Linux does */
	uint32_t packet_filter; /* 0: NDIS_PACKET_TYPE_DIRECTED | NDIS_PACKET_TYPE_BROADCAST */
	uint32_t instance;      /* which NIC offer (0: the first) */
};

struct netvsc_stats {
	uint64_t polls, ring_packets;  /* netvsc_poll calls; ring packets read */
	uint64_t rx_xfer;              /* transfer-page packets */
	uint64_t rx_ranges;            /* their ranges (RNDIS messages) */
	uint64_t rx_frames, rx_bytes;  /* RNDIS_PACKET_MSG frames delivered */
	uint64_t rx_no_handler;        /* frames arriving with no rx callback set */
	uint64_t rx_bad;               /* malformed: bad ranges, RNDIS lengths/offsets, pageset id */
	uint64_t rx_ctrl;              /* RNDIS control completions taken */
	uint64_t rx_ctrl_stray;        /* ... that matched no outstanding request */
	uint64_t rx_indications;       /* RNDIS_MSG_INDICATE (link status) */
	uint64_t rx_keepalives;        /* host KEEPALIVE requests answered */
	uint64_t rx_unknown;           /* RNDIS message types we do not know */
	uint64_t rx_completions;       /* NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE sent for rx */
	uint64_t rx_completion_full;   /* ... postponed because the send ring was full */
	uint64_t rx_deferred;          /* transfer-page packets left in the ring (queue full) */
	uint64_t tx_frames, tx_bytes;  /* RNDIS_PACKET_MSG sent */
	uint64_t tx_ctrl;              /* RNDIS control messages sent */
	uint64_t tx_completions;       /* send completions taken (sections freed) */
	uint64_t tx_failed;            /* ... with a status other than NVSP_STAT_SUCCESS */
	uint64_t tx_bad_completions;   /* completions for sections not in use / unknown trans_ids */
	uint64_t tx_no_section;        /* netvsc_tx found no free section (after reaping) */
	uint64_t tx_ring_full;         /* writes that found the send ring full (retried) */
	uint64_t inband_ignored;       /* host-initiated NVSP messages we do not act on */
	uint64_t link_changes;
	uint64_t kernel_waits;         /* netvsc_kwait sleeps */
};

struct netvsc_rx_entry {
	uint64_t trans_id;
	uint32_t first;   /* index of its first range in rx_ranges (mod NETVSC_RX_RANGES) */
	uint32_t count;   /* ranges */
	uint32_t status;  /* NVSP_STAT_SUCCESS or NVSP_STAT_FAIL (completion status) */
	uint32_t delivered;
};

typedef void (*netvsc_rx_fn)(void *ctx, const uint8_t *frame, uint32_t len);

struct netvsc {
	struct vmbus_rings rings;       /* the channel's rings: driven from ring 0 or ring 3 */
	struct vmbus_channel *ch;       /* kernel-only (ring 3 never dereferences it) */
	uint32_t up;                    /* set-up finished */
	uint32_t nvsp_version;          /* negotiated NVSP_PROTOCOL_VERSION_* */
	uint32_t ndis_version;          /* NDIS_VERSION_6_1 or _6_30 as sent */
	uint32_t last_status;           /* the host's status of the last refused step */
	uint8_t *recv_buf;
	uint32_t recv_size, recv_gpadl;
	uint32_t recv_section_size, recv_section_count;
	uint8_t *send_buf;
	uint32_t send_size, send_gpadl;
	uint32_t send_section_size, send_section_count;
	uint32_t send_free, send_hint;
	uint64_t send_map[NETVSC_MAX_SEND_SECTIONS / 64]; /* bit set: section in flight */
	uint8_t mac[NET_ETH_ALEN];      /* OID_802_3_PERMANENT_ADDRESS */
	uint16_t reserved0;
	uint32_t link_up;               /* OID_GEN_MEDIA_CONNECT_STATUS / indications */
	uint32_t max_frame;             /* OID_GEN_MAXIMUM_FRAME_SIZE (0 if not answered) */
	uint32_t rndis_max_pkts;        /* from INITIALIZE_CMPLT */
	uint32_t rndis_req_id;          /* last request id used */
	uint32_t dirty;                 /* packets written to the send ring, not committed */
	uint64_t tsc_hz;                /* for time-outs in any ring (0: counted spins) */
	struct {                        /* the one outstanding NVSP request */
		uint64_t trans_id;
		uint32_t expect;        /* msg_type of the completion awaited */
		uint32_t done;
		struct nvsp_message msg; /* the completion, zero-filled past its length */
		uint32_t reserved;
	} nvsp;
	struct {                        /* the one outstanding RNDIS control request */
		uint32_t req_id;
		uint32_t done;
		uint32_t len;           /* bytes kept in msg (the whole message if it fit) */
		uint32_t reserved;
		uint8_t msg[NETVSC_CTRL_MAX] __attribute__((aligned(8)));
	} ctrl;
	struct netvsc_rx_entry rxq[NETVSC_RXQ];
	uint32_t rxq_head, rxq_count;
	uint32_t ranges_head, ranges_used;
	uint32_t delivering;            /* netvsc_poll's delivery is running (no recursion) */
	uint32_t reserved1;
	struct vmtransfer_page_range rx_ranges[NETVSC_RX_RANGES];
	netvsc_rx_fn rx;
	void *rx_ctx;
	struct netvsc_stats st;
	uint8_t frame[NETVSC_FRAME_MAX] __attribute__((aligned(8))); /* the frame rx is handed */
};

/* --- ring 0, vCPU 0 (rt/k_netvsc.c) -------------------------------------------------------- */

/* Connect VMBus if needed (vmbus_init with VMBUS_VECTOR_DEFAULT), find the NIC, open it and do
 * the whole NVSP + RNDIS set-up (see the top of this file). *nv must be user-accessible if a
 * ring-3 task will use it; the buffers in cfg likewise (the ring area is opened to ring 3 by
 * vmbus_channel_to_user). 0 or a negative NETVSC_* / VMBUS_* code. */
int netvsc_open(struct netvsc *nv, const struct netvsc_config *cfg);
/* Sleep until the host signals the channel: unmask its receive ring, re-check, `sti; hlt`. */
void netvsc_kwait(struct netvsc *nv);
/* Wait (polling, then sleeping) until the link is up. */
int netvsc_kwait_link(struct netvsc *nv);
/* RNDIS QUERY / SET from the kernel: send, poll and sleep until the completion. 0 on
 * RNDIS_STATUS_SUCCESS; NETVSC_EHOST with the RNDIS status in nv->last_status; another negative
 * error. A query copies up to *len bytes of the answer into out and sets *len to its length. */
int netvsc_kquery(struct netvsc *nv, uint32_t oid, void *out, uint32_t *len);
int netvsc_kset(struct netvsc *nv, uint32_t oid, const void *val, uint32_t len);
/* Run fn(arg) as a ring-3 task; each time it returns NETVSC_IDLE, sleep on the channel
 * (netvsc_kwait) and run it again. Returns fn's other return value. */
int netvsc_run_user(struct netvsc *nv, int (*fn)(void *), void *arg);
/* The same loop with fn called in ring 0 (fn and its data may be anywhere; every instruction is
 * emulated on kvm_pvm, so this is for correctness, not speed). */
int netvsc_run_kernel(struct netvsc *nv, int (*fn)(void *), void *arg);
/* RNDIS HALT, wait for our sends to complete, revoke both buffers, close the channel, tear the
 * buffer GPADLs down (Linux's order for VMBus >= 4.0). */
int netvsc_close(struct netvsc *nv);

/* --- any ring (rt/u_netvsc.c) ---------------------------------------------------------------- */

/* Frames received go to fn(ctx, frame, len) (a copy: valid during the call only). */
void netvsc_set_rx(struct netvsc *nv, netvsc_rx_fn fn, void *ctx);
/* Drain the receive ring: completions, transfer-page packets (validated, queued, delivered,
 * completed), host messages; then commit what was written and kick the host if the ring says
 * so. Returns the ring packets + frames handled (0: nothing to do) or NETVSC_EBROKEN. */
int netvsc_poll(struct netvsc *nv);
/* Send one Ethernet frame (14..NETVSC_FRAME_MAX bytes) through a send-buffer section. Written to
 * the ring, not yet published: netvsc_flush() (or the next netvsc_poll) does that. When no
 * section is free it reaps completions first. 0, NETVSC_EINVAL, NETVSC_EBUSY, NETVSC_EBROKEN. */
int netvsc_tx(struct netvsc *nv, const uint8_t *frame, uint32_t len);
/* net_link_tx_fn adapter: ctx is the struct netvsc. */
int netvsc_link_tx(void *nv, const uint8_t *frame, uint32_t len);
/* Publish what was written; kick the host if it may be asleep. 0/1 (kicked) or NETVSC_EBROKEN. */
int netvsc_flush(struct netvsc *nv);
/* Send an NVSP message in-band (len <= sizeof(struct nvsp_message)); with `completion`, it is
 * the outstanding request whose completion of type `expect` netvsc_poll() stores in nv->nvsp. */
int netvsc_send_nvsp(struct netvsc *nv, const struct nvsp_message *msg, uint32_t len,
		     bool completion, uint32_t expect);
/* Send an RNDIS control message (INITIALIZE, QUERY, SET, HALT, KEEPALIVE): type, oid (QUERY/SET),
 * info buffer. Returns the request id (> 0; it is the outstanding request in nv->ctrl, except for
 * HALT which has no completion) or < 0. */
int netvsc_rndis_request(struct netvsc *nv, uint32_t type, uint32_t oid, const void *info,
			 uint32_t len);
/* After nv->ctrl.done for a QUERY: 0 and the answer's info buffer (validated against the
 * message) copied to out (up to *len bytes), *len = its length; NETVSC_EHOST if the host refused
 * (RNDIS status in nv->last_status) or the answer is malformed. */
int netvsc_query_result(struct netvsc *nv, void *out, uint32_t *len);
/* Sections free now. */
static inline uint32_t netvsc_tx_free(const struct netvsc *nv) { return nv->send_free; }

#endif /* HV_NETVSC_H */
