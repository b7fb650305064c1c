/*
 * u_vmbus.c - an open channel's rings from either ring: in-band send, receive, payload compare,
 * and the bare-port kick. User-accessible (a ring-3 task polls rings with these, the way Linux's
 * uio_hv_generic hands rings to DPDK); the kernel helpers in k_vmbus.c use them too.
 */
#include "vmbus.h"

void vmbus_rings_kick(struct vmbus_rings *r)
{
	r->kicks++;
	if (vmbus_kick(r->connection_id) != 0)
		r->kick_errors++;
}

int vmbus_rings_write(struct vmbus_rings *r, const void *buf, uint32_t len, uint64_t trans_id,
		      uint16_t flags)
{
	return hvr_out_write_inband(&r->out, flags, trans_id, buf, len);
}

int vmbus_rings_commit(struct vmbus_rings *r)
{
	return hvr_out_commit(&r->out);
}

int vmbus_rings_read(struct vmbus_rings *r, struct hvr_pkt *pkt)
{
	return hvr_in_read(&r->in, pkt);
}

int vmbus_rings_release(struct vmbus_rings *r)
{
	return hvr_in_commit(&r->in);
}

/* First differing byte of a and b, or -1. `repe cmpsq` does the bulk: one instruction for an
 * emulated ring 0, fast natively. */
static long first_diff(const uint8_t *a, const uint8_t *b, uint32_t len)
{
	size_t q = len / 8;

	if (q) {
		const uint8_t *x = a, *y = b;
		bool ne;

		__asm__ volatile("repe cmpsq" : "+S"(x), "+D"(y), "+c"(q), "=@ccnz"(ne) : : "memory");
		if (ne) {
			x -= 8;
			y -= 8;
			for (unsigned i = 0; i < 8; i++)
				if (x[i] != y[i])
					return (long)(x - a) + i;
		}
	}
	for (uint32_t i = len & ~7u; i < len; i++)
		if (a[i] != b[i])
			return i;
	return -1;
}

long vmbus_rings_payload_cmp(const struct vmbus_rings *r, const struct hvr_pkt *pkt,
			     const void *expect, uint32_t len)
{
	const uint8_t *e = expect;
	const uint8_t *p;
	uint8_t chunk[256];

	if (len > pkt->payload_len)
		return -2;
	if (len == 0)
		return -1;
	p = hvr_in_ptr(&r->in, pkt, pkt->payload_off, len);
	if (p)
		return first_diff(p, e, len);
	/* the payload wraps around the end of the data area (plain view): compare in chunks */
	for (uint32_t off = 0; off < len;) {
		uint32_t n = len - off < sizeof(chunk) ? len - off : (uint32_t)sizeof(chunk);
		long d;

		if (hvr_in_copy(&r->in, pkt, pkt->payload_off + off, chunk, n) != HVR_OK)
			return -2;
		d = first_diff(chunk, e + off, n);
		if (d >= 0)
			return off + d;
		off += n;
	}
	return -1;
}

void vmbus_guid_format(const guid_t *g, char out[37])
{
	static const char hex[] = "0123456789abcdef";
	/* Microsoft's byte order: the first three fields are little endian. */
	static const uint8_t order[16] = { 3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15 };
	unsigned o = 0;

	for (unsigned i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[g->b[order[i]] >> 4];
		out[o++] = hex[g->b[order[i]] & 15];
	}
	out[o] = 0;
}
