/*
 * u_net.c - a tiny IPv4 stack: Ethernet, ARP (reply and ask), IPv4, ICMP echo reply, UDP.
 * User-accessible (ring-3 tasks run it natively); no VMBus in here, so tests compile it for the
 * host (tests/test_net_stack.py).
 *
 * Robustness rules: every length comes from `len` (the frame's) or is checked against it before
 * a byte it covers is read; each header field is read once into a local; nothing is answered to
 * a source that is 0, broadcast, multicast or ourselves; every drop is counted.
 */
#include "netvsc.h"

static const uint8_t bcast_mac[NET_ETH_ALEN] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

/* ------------------------------------------------------------------------------------------ */
/* Checksums, addresses */

uint32_t net_csum_add(uint32_t sum, const void *data, uint32_t len)
{
	const uint8_t *p = data;
	uint64_t s = sum;

	while (len >= 8) {
		s += (uint64_t)net_get32(p) + net_get32(p + 4);
		p += 8;
		len -= 8;
	}
	while (len >= 2) {
		s += net_get16(p);
		p += 2;
		len -= 2;
	}
	if (len)
		s += (uint32_t)p[0] << 8;
	while (s >> 32)
		s = (s & 0xffffffffu) + (s >> 32);
	return (uint32_t)s;
}

uint16_t net_csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static uint32_t prefix_mask(unsigned prefix)
{
	return prefix == 0 ? 0 : prefix >= 32 ? 0xffffffffu : ~((1u << (32 - prefix)) - 1);
}

static bool parse_octets(const char **sp, uint32_t *ip)
{
	const char *s = *sp;
	uint32_t v = 0;

	for (int i = 0; i < 4; i++) {
		unsigned n = 0, digits = 0;

		while (*s >= '0' && *s <= '9' && digits < 4) {
			n = n * 10 + (unsigned)(*s++ - '0');
			digits++;
		}
		if (digits == 0 || digits > 3 || n > 255)
			return false;
		v = v << 8 | n;
		if (i < 3 && *s++ != '.')
			return false;
	}
	*sp = s;
	*ip = v;
	return true;
}

bool net_parse_ipv4(const char *s, uint32_t *ip)
{
	uint32_t v;

	if (!s || !parse_octets(&s, &v) || *s)
		return false;
	*ip = v;
	return true;
}

bool net_parse_cidr(const char *s, uint32_t *ip, unsigned *prefix, unsigned default_prefix)
{
	uint32_t v;
	unsigned p = default_prefix, digits = 0;

	if (!s || !parse_octets(&s, &v))
		return false;
	if (*s == '/') {
		s++;
		p = 0;
		while (*s >= '0' && *s <= '9' && digits < 3) {
			p = p * 10 + (unsigned)(*s++ - '0');
			digits++;
		}
		if (digits == 0 || p > 32)
			return false;
	}
	if (*s)
		return false;
	*ip = v;
	*prefix = p;
	return true;
}

void net_format_ipv4(uint32_t ip, char *out)
{
	hv_snprintf(out, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

bool net_arg_cidr(const char *key, uint32_t *ip, unsigned *prefix)
{
	char buf[32];

	return hv_arg(key, buf, sizeof(buf)) && net_parse_cidr(buf, ip, prefix, 24);
}

bool net_arg_ipv4(const char *key, uint32_t *ip)
{
	char buf[32];

	return hv_arg(key, buf, sizeof(buf)) && net_parse_ipv4(buf, ip);
}

/* ------------------------------------------------------------------------------------------ */
/* Interface */

void net_init(struct net_if *nif, const uint8_t mac[NET_ETH_ALEN], uint32_t ip,
	      unsigned prefix_len, net_link_tx_fn tx, void *tx_ctx)
{
	memset(nif, 0, sizeof(*nif));
	memcpy(nif->mac, mac, NET_ETH_ALEN);
	nif->ip = ip;
	nif->prefix_len = prefix_len > 32 ? 32 : prefix_len;
	nif->netmask = prefix_mask(nif->prefix_len);
	nif->link_tx = tx;
	nif->link_ctx = tx_ctx;
	nif->answer_ping = true;
	nif->ip_id = 1;
}

static bool is_bcast_ip(const struct net_if *nif, uint32_t ip)
{
	return ip == 0xffffffffu ||
	       (nif->prefix_len < 31 && (ip & nif->netmask) == (nif->ip & nif->netmask) &&
		(ip | nif->netmask) == 0xffffffffu);
}

/* A source we may answer: not 0.x, not broadcast, not multicast/class E, not ourselves. */
static bool good_src_ip(const struct net_if *nif, uint32_t ip)
{
	return (ip >> 24) != 0 && (ip >> 28) < 0xe && !is_bcast_ip(nif, ip) && ip != nif->ip;
}

uint32_t net_next_hop(const struct net_if *nif, uint32_t dst_ip)
{
	if (is_bcast_ip(nif, dst_ip) || (dst_ip & nif->netmask) == (nif->ip & nif->netmask))
		return dst_ip;
	return nif->gateway;
}

static int link_send(struct net_if *nif, uint8_t *frame, uint32_t len)
{
	int rc;

	if (len < NET_FRAME_MIN) {
		memset(frame + len, 0, NET_FRAME_MIN - len);
		len = NET_FRAME_MIN;
	}
	rc = nif->link_tx(nif->link_ctx, frame, len);
	if (rc < 0) {
		nif->st.tx_link_errors++;
		return NET_ELINK;
	}
	nif->st.tx_frames++;
	nif->st.tx_bytes += len;
	return NET_OK;
}

static void eth_header(const struct net_if *nif, uint8_t *f, const uint8_t *dst, uint16_t type)
{
	memcpy(f, dst, NET_ETH_ALEN);
	memcpy(f + 6, nif->mac, NET_ETH_ALEN);
	net_put16(f + 12, type);
}

/* ------------------------------------------------------------------------------------------ */
/* ARP */

static void arp_drop_pending(struct net_if *nif, uint32_t next_hop);

static struct net_arp_entry *arp_find(struct net_if *nif, uint32_t ip)
{
	for (unsigned i = 0; i < NET_ARP_ENTRIES; i++)
		if (nif->arp[i].state != NET_ARP_FREE && nif->arp[i].ip == ip)
			return &nif->arp[i];
	return NULL;
}

/* A slot for ip: its entry, a free one, or the least recently used (never a pending one if a
 * resolved one can go). */
static struct net_arp_entry *arp_slot(struct net_if *nif, uint32_t ip)
{
	struct net_arp_entry *e = arp_find(nif, ip), *victim = NULL;

	if (e)
		return e;
	for (unsigned i = 0; i < NET_ARP_ENTRIES; i++) {
		e = &nif->arp[i];
		if (e->state == NET_ARP_FREE) {
			victim = e;
			break;
		}
		if (!victim || e->used < victim->used)
			victim = e;
	}
	if (victim->state == NET_ARP_INCOMPLETE)
		arp_drop_pending(nif, victim->ip);
	memset(victim, 0, sizeof(*victim));
	victim->ip = ip;
	return victim;
}

bool net_arp_lookup(struct net_if *nif, uint32_t ip, uint8_t mac[NET_ETH_ALEN])
{
	struct net_arp_entry *e = arp_find(nif, ip);

	if (!e || e->state != NET_ARP_RESOLVED)
		return false;
	e->used = ++nif->arp_clock;
	if (mac)
		memcpy(mac, e->mac, NET_ETH_ALEN);
	return true;
}

static int arp_send(struct net_if *nif, uint16_t op, const uint8_t *dst_mac, const uint8_t *tha,
		    uint32_t tpa)
{
	uint8_t *f = nif->scratch, *a = f + NET_ETH_HLEN;

	eth_header(nif, f, dst_mac, NET_ETHERTYPE_ARP);
	net_put16(a, 1);                  /* htype: Ethernet */
	net_put16(a + 2, NET_ETHERTYPE_IPV4);
	a[4] = NET_ETH_ALEN;
	a[5] = 4;
	net_put16(a + 6, op);
	memcpy(a + 8, nif->mac, NET_ETH_ALEN);
	net_put32(a + 14, nif->ip);
	memcpy(a + 18, tha, NET_ETH_ALEN);
	net_put32(a + 24, tpa);
	return link_send(nif, f, NET_ETH_HLEN + 28);
}

int net_arp_request(struct net_if *nif, uint32_t ip)
{
	static const uint8_t zero[NET_ETH_ALEN];
	struct net_arp_entry *e;

	if (!nif->ip || !ip)
		return NET_EINVAL;
	e = arp_slot(nif, ip);
	if (e->state != NET_ARP_RESOLVED) {
		e->state = NET_ARP_INCOMPLETE;
		e->tries++;
	}
	e->used = ++nif->arp_clock;
	nif->st.arp_requests++;
	return arp_send(nif, 1, bcast_mac, zero, ip);
}

/* Send the frames queued for next_hop now that its MAC is known. */
static void arp_flush_pending(struct net_if *nif, uint32_t next_hop, const uint8_t *mac)
{
	for (unsigned i = 0; i < NET_ARP_QUEUE; i++) {
		struct net_pending *p = &nif->pending[i];

		if (p->next_hop != next_hop)
			continue;
		memcpy(p->frame, mac, NET_ETH_ALEN);
		link_send(nif, p->frame, p->len);
		p->next_hop = 0;
	}
}

static void arp_drop_pending(struct net_if *nif, uint32_t next_hop)
{
	for (unsigned i = 0; i < NET_ARP_QUEUE; i++)
		if (nif->pending[i].next_hop == next_hop) {
			nif->pending[i].next_hop = 0;
			nif->st.tx_queue_drops++;
		}
}

void net_tick(struct net_if *nif)
{
	for (unsigned i = 0; i < NET_ARP_ENTRIES; i++) {
		struct net_arp_entry *e = &nif->arp[i];

		if (e->state != NET_ARP_INCOMPLETE)
			continue;
		if (e->tries >= NET_ARP_TRIES) {
			nif->st.arp_timeouts++;
			arp_drop_pending(nif, e->ip);
			e->state = NET_ARP_FREE;
			continue;
		}
		net_arp_request(nif, e->ip);
	}
}

static int arp_input(struct net_if *nif, const uint8_t *f, uint32_t len)
{
	const uint8_t *a = f + NET_ETH_HLEN;
	uint8_t sha[NET_ETH_ALEN];
	uint32_t spa, tpa;
	uint16_t op;
	struct net_arp_entry *e;
	bool for_us;

	nif->st.arp_rx++;
	if (len < NET_ETH_HLEN + 28 || net_get16(a) != 1 || net_get16(a + 2) != NET_ETHERTYPE_IPV4 ||
	    a[4] != NET_ETH_ALEN || a[5] != 4)
		goto bad;
	op = net_get16(a + 6);
	memcpy(sha, a + 8, NET_ETH_ALEN);
	spa = net_get32(a + 14);
	tpa = net_get32(a + 24);
	if ((op != 1 && op != 2) || (sha[0] & 1))
		goto bad; /* unknown op, or a multicast/broadcast sender hardware address */
	if (!nif->ip) {
		nif->st.no_addr++;
		return NET_DROP_NO_ADDR;
	}
	for_us = tpa == nif->ip;
	/* RFC 826: update an entry we have; add the sender if the packet is for us. */
	e = spa ? arp_find(nif, spa) : NULL;
	if (spa && good_src_ip(nif, spa) && (e || for_us)) {
		if (!e)
			e = arp_slot(nif, spa);
		memcpy(e->mac, sha, NET_ETH_ALEN);
		e->state = NET_ARP_RESOLVED;
		e->tries = 0;
		e->used = ++nif->arp_clock;
		nif->st.arp_learned++;
		arp_flush_pending(nif, spa, sha);
	}
	if (!for_us) {
		if (op == 2 && e)
			return NET_RX_OK; /* a reply (gratuitous or to someone else) that updated us */
		goto bad;
	}
	if (op == 1) {
		nif->st.arp_replied++;
		arp_send(nif, 2, sha, sha, spa); /* spa 0 (a probe) is answered too */
	}
	return NET_RX_OK;
bad:
	nif->st.arp_bad++;
	return NET_DROP_ARP;
}

/* ------------------------------------------------------------------------------------------ */
/* IPv4 output */

/* Build the IPv4 header for a payload of len bytes already at f + 34; send or queue. */
static int ip_output(struct net_if *nif, uint8_t *f, uint32_t dst_ip, uint8_t proto, uint32_t len)
{
	uint8_t *ip = f + NET_ETH_HLEN, mac[NET_ETH_ALEN];
	uint32_t hop, total = NET_ETH_HLEN + 20 + len;

	if (!nif->ip) {
		nif->st.no_addr++;
		return NET_EINVAL;
	}
	if (len > NET_MTU - 20)
		return NET_EINVAL;
	hop = net_next_hop(nif, dst_ip);
	if (!hop)
		return NET_EINVAL;
	ip[0] = 0x45;
	ip[1] = 0;
	net_put16(ip + 2, (uint16_t)(20 + len));
	net_put16(ip + 4, nif->ip_id++);
	net_put16(ip + 6, 0x4000); /* DF: we never fragment */
	ip[8] = 64;
	ip[9] = proto;
	net_put16(ip + 10, 0);
	net_put32(ip + 12, nif->ip);
	net_put32(ip + 16, dst_ip);
	net_put16(ip + 10, net_csum_fold(net_csum_add(0, ip, 20)));

	if (is_bcast_ip(nif, hop)) {
		eth_header(nif, f, bcast_mac, NET_ETHERTYPE_IPV4);
		return link_send(nif, f, total);
	}
	if (net_arp_lookup(nif, hop, mac)) {
		eth_header(nif, f, mac, NET_ETHERTYPE_IPV4);
		return link_send(nif, f, total);
	}
	/* Unresolved: queue the frame (destination MAC later) and ask. */
	for (unsigned i = 0; i < NET_ARP_QUEUE; i++) {
		struct net_pending *p = &nif->pending[i];
		struct net_arp_entry *e;

		if (p->next_hop)
			continue;
		eth_header(nif, f, bcast_mac, NET_ETHERTYPE_IPV4);
		memcpy(p->frame, f, total);
		p->len = total;
		p->next_hop = hop;
		nif->st.tx_queued++;
		e = arp_find(nif, hop);
		if (!e || e->state != NET_ARP_INCOMPLETE || e->tries == 0)
			net_arp_request(nif, hop);
		return NET_QUEUED;
	}
	nif->st.tx_queue_drops++;
	if (!arp_find(nif, hop))
		net_arp_request(nif, hop);
	return NET_ENOBUFS;
}

int net_ip_send(struct net_if *nif, uint32_t dst_ip, uint8_t proto, const void *payload,
		uint32_t len)
{
	if (len > NET_MTU - 20)
		return NET_EINVAL;
	memcpy(nif->scratch + NET_ETH_HLEN + 20, payload, len);
	return ip_output(nif, nif->scratch, dst_ip, proto, len);
}

int net_udp_send(struct net_if *nif, uint32_t dst_ip, uint16_t src_port, uint16_t dst_port,
		 const void *data, uint32_t len)
{
	uint8_t *u = nif->scratch + NET_ETH_HLEN + 20, pseudo[12];
	uint32_t sum;
	uint16_t c;

	if (len > NET_UDP_MAX || !nif->ip)
		return NET_EINVAL;
	net_put16(u, src_port);
	net_put16(u + 2, dst_port);
	net_put16(u + 4, (uint16_t)(8 + len));
	net_put16(u + 6, 0);
	memcpy(u + 8, data, len);
	net_put32(pseudo, nif->ip);
	net_put32(pseudo + 4, dst_ip);
	pseudo[8] = 0;
	pseudo[9] = NET_IPPROTO_UDP;
	net_put16(pseudo + 10, (uint16_t)(8 + len));
	sum = net_csum_add(net_csum_add(0, pseudo, 12), u, 8 + len);
	c = net_csum_fold(sum);
	net_put16(u + 6, c ? c : 0xffff); /* 0 means "no checksum": send all ones instead */
	return ip_output(nif, nif->scratch, dst_ip, NET_IPPROTO_UDP, 8 + len);
}

int net_udp_bind(struct net_if *nif, uint16_t port, net_udp_fn fn, void *ctx)
{
	int free_slot = -1;

	if (!port || !fn)
		return NET_EINVAL;
	for (int i = 0; i < NET_UDP_BINDINGS; i++) {
		if (nif->udp[i].port == port) {
			free_slot = i;
			break;
		}
		if (!nif->udp[i].port && free_slot < 0)
			free_slot = i;
	}
	if (free_slot < 0)
		return NET_EINVAL;
	nif->udp[free_slot].port = port;
	nif->udp[free_slot].fn = fn;
	nif->udp[free_slot].ctx = ctx;
	return 0;
}

void net_udp_unbind(struct net_if *nif, uint16_t port)
{
	for (int i = 0; i < NET_UDP_BINDINGS; i++)
		if (nif->udp[i].port == port)
			nif->udp[i].port = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* IPv4 input */

static int icmp_input(struct net_if *nif, uint32_t src, uint32_t dst, const uint8_t *icmp,
		      uint32_t len)
{
	uint8_t *out = nif->scratch + NET_ETH_HLEN + 20;

	nif->st.icmp_rx++;
	if (len < 8 || net_csum_fold(net_csum_add(0, icmp, len)) != 0 || dst != nif->ip)
		goto bad;
	if (icmp[0] != 8 || icmp[1] != 0)
		goto bad; /* only echo requests are ours to answer */
	if (!nif->answer_ping)
		return NET_RX_OK;
	/* The echo reply: same identifier, sequence and data; type 0; new checksum. */
	memcpy(out, icmp, len);
	out[0] = 0;
	out[1] = 0;
	net_put16(out + 2, 0);
	net_put16(out + 2, net_csum_fold(net_csum_add(0, out, len)));
	if (ip_output(nif, nif->scratch, src, NET_IPPROTO_ICMP, len) >= 0)
		nif->st.icmp_echo_replied++;
	return NET_RX_OK;
bad:
	nif->st.icmp_bad++;
	return NET_DROP_ICMP;
}

static int udp_input(struct net_if *nif, const uint8_t *f, uint32_t src, uint32_t dst,
		     const uint8_t *u, uint32_t len)
{
	struct net_udp_meta m;
	uint16_t ulen, csum;

	nif->st.udp_rx++;
	if (len < 8)
		goto bad;
	ulen = net_get16(u + 4);
	csum = net_get16(u + 6);
	if (ulen < 8 || ulen > len)
		goto bad;
	if (csum) {
		uint8_t pseudo[12];
		uint32_t sum;

		net_put32(pseudo, src);
		net_put32(pseudo + 4, dst);
		pseudo[8] = 0;
		pseudo[9] = NET_IPPROTO_UDP;
		net_put16(pseudo + 10, ulen);
		sum = net_csum_add(net_csum_add(0, pseudo, 12), u, ulen);
		if (net_csum_fold(sum) != 0) {
			nif->st.udp_bad_csum++;
			return NET_DROP_UDP_CSUM;
		}
	}
	m.src_ip = src;
	m.dst_ip = dst;
	m.src_port = net_get16(u);
	m.dst_port = net_get16(u + 2);
	memcpy(m.src_mac, f + 6, NET_ETH_ALEN);
	for (int i = 0; i < NET_UDP_BINDINGS; i++) {
		if (nif->udp[i].port && nif->udp[i].port == m.dst_port) {
			nif->st.udp_delivered++;
			nif->udp[i].fn(nif, &m, u + 8, ulen - 8u, nif->udp[i].ctx);
			return NET_RX_OK;
		}
	}
	nif->st.udp_no_port++;
	return NET_DROP_NO_PORT;
bad:
	nif->st.udp_bad++;
	return NET_DROP_UDP;
}

static int ip_input(struct net_if *nif, const uint8_t *f, uint32_t len)
{
	const uint8_t *ip = f + NET_ETH_HLEN;
	uint32_t avail = len - NET_ETH_HLEN, ihl, total, src, dst;
	uint16_t frag;
	uint8_t proto;

	nif->st.ip_rx++;
	if (avail < 20 || (ip[0] >> 4) != 4)
		goto bad_hdr;
	ihl = (ip[0] & 15u) * 4;
	total = net_get16(ip + 2);
	if (ihl < 20 || total < ihl || total > avail)
		goto bad_hdr; /* bytes beyond `total` are Ethernet padding and ignored */
	if (net_csum_fold(net_csum_add(0, ip, ihl)) != 0) {
		nif->st.ip_bad_csum++;
		return NET_DROP_IP_CSUM;
	}
	frag = net_get16(ip + 6);
	if (frag & 0x3fff) { /* MF or a fragment offset */
		nif->st.ip_frag++;
		return NET_DROP_IP_FRAG;
	}
	if (!nif->ip) {
		nif->st.no_addr++;
		return NET_DROP_NO_ADDR;
	}
	proto = ip[9];
	src = net_get32(ip + 12);
	dst = net_get32(ip + 16);
	if (dst != nif->ip && !(proto == NET_IPPROTO_UDP && is_bcast_ip(nif, dst))) {
		nif->st.ip_not_us++;
		return NET_DROP_IP_NOT_US;
	}
	if (!good_src_ip(nif, src)) {
		nif->st.ip_bad_src++;
		return NET_DROP_IP_SRC;
	}
	if (proto == NET_IPPROTO_ICMP)
		return icmp_input(nif, src, dst, ip + ihl, total - ihl);
	if (proto == NET_IPPROTO_UDP)
		return udp_input(nif, f, src, dst, ip + ihl, total - ihl);
	nif->st.ip_proto++;
	return NET_DROP_PROTO;
bad_hdr:
	nif->st.ip_bad_hdr++;
	return NET_DROP_IP_HDR;
}

int net_input(struct net_if *nif, const uint8_t *f, uint32_t len)
{
	uint16_t type;

	nif->st.rx_frames++;
	nif->st.rx_bytes += len;
	if (!f || len < NET_ETH_HLEN) {
		nif->st.rx_runt++;
		return NET_DROP_RUNT;
	}
	if ((memcmp(f, nif->mac, NET_ETH_ALEN) && memcmp(f, bcast_mac, NET_ETH_ALEN)) || (f[6] & 1)) {
		nif->st.rx_not_us++;
		return NET_DROP_NOT_US;
	}
	type = net_get16(f + 12);
	if (type == NET_ETHERTYPE_ARP)
		return arp_input(nif, f, len);
	if (type == NET_ETHERTYPE_IPV4)
		return ip_input(nif, f, len);
	nif->st.rx_ethertype++;
	return NET_DROP_ETHERTYPE;
}
