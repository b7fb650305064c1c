/*
 * vmbus_ring.c - the VMBus ring buffer (see vmbus_ring.h for the API and the rules).
 *
 * Freestanding: no libc. Memory ordering uses the GCC __atomic builtins; every fence says which
 * rule it serves and which fence on the other side it pairs with. The shapes follow Linux's
 * drivers/hv/ring_buffer.c (hv_ringbuffer_write, hv_signal_on_write, hv_pkt_iter_close,
 * hv_begin_read/hv_end_read) and OpenVMM's vmbus_ring (commit cursors, parse_packet checks).
 */
#include "vmbus_ring.h"

#define DESC_SIZE ((uint32_t)sizeof(struct vmpacket_descriptor))
#define MIN_PACKET (DESC_SIZE + VMBUS_PKT_TRAILER)
#define EXT_HDR_SIZE 8u /* GPA-direct {reserved, range_cnt}; transfer pages {id, owns, rsvd, cnt} */

/* 8-byte words of ring memory: may alias the byte array they live in. */
typedef uint64_t __attribute__((may_alias, aligned(8))) hvr_u64a;

/* ---- memory copies without libc ----------------------------------------------------------- */

#if defined(HVR_HOSTED)
/* Host build (cffi extension): libc is there, use its memcpy. */
#define hvr_memcpy(d, s, n) __builtin_memcpy((d), (s), (n))
#elif defined(__x86_64__)
/* Guest build: `rep movsb` (fast with ERMS natively, a single instruction for an emulator);
 * never a call gcc could turn into memcpy. */
static inline void hvr_memcpy(void *d, const void *s, size_t n)
{
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}
#else
static void hvr_memcpy(void *d, const void *s, size_t n)
{
	volatile uint8_t *dp = d;
	const volatile uint8_t *sp = s;

	while (n--)
		*dp++ = *sp++;
}
#endif

/* A compiler barrier after copying out of shared memory: the copy is the one fetch; the
 * compiler may not re-read the ring instead of the copy. */
#define hvr_compiler_barrier() __asm__ volatile("" : : : "memory")

/* ---- index arithmetic ------------------------------------------------------------------------ */

/* Bytes from ring offset `from` forward to ring offset `to` (both < size). */
static inline uint32_t ring_dist(uint32_t size, uint32_t from, uint32_t to)
{
	return to >= from ? to - from : size - from + to;
}

/* off + n, wrapped; off < size, n <= size. */
static inline uint32_t ring_add(uint32_t size, uint32_t off, uint32_t n)
{
	uint32_t v = off + n;

	return v >= size ? v - size : v;
}

static inline bool index_ok(const struct hvr_ring *r, uint32_t v)
{
	return v < r->size && (v & 7) == 0;
}

static inline uint32_t align8(uint32_t v)
{
	return (v + 7u) & ~7u;
}

static int set_broken(struct hvr_ring *r, uint32_t why)
{
	if (!r->broken)
		r->broken = why;
	return HVR_EBROKEN;
}

static bool type_known(uint32_t type)
{
	return type == VM_PKT_DATA_INBAND || type == VM_PKT_DATA_USING_XFER_PAGES ||
	       type == VM_PKT_DATA_USING_GPA_DIRECT || type == VM_PKT_COMP;
}

/* ---- control words (READ_ONCE / WRITE_ONCE: relaxed atomics, no tearing, no caching) ------- */

static inline uint32_t ld32(uint32_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void st32(uint32_t *p, uint32_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELAXED);
}

/* ---- data area access ------------------------------------------------------------------------- */

/* One aligned 8-byte word at ring offset off (off < 2 * size, a multiple of 8). */
static inline uint64_t ring_ld64(const struct hvr_ring *r, uint32_t off)
{
	if (off >= r->size)
		off -= r->size;
	return __atomic_load_n((hvr_u64a *)(r->data + off), __ATOMIC_RELAXED);
}

static inline void ring_st64(const struct hvr_ring *r, uint32_t off, uint64_t v)
{
	if (off >= r->size)
		off -= r->size;
	__atomic_store_n((hvr_u64a *)(r->data + off), v, __ATOMIC_RELAXED);
}

/* Copy len bytes out of the ring from offset off (off < size, len <= size). */
static void ring_copy_out(const struct hvr_ring *r, uint32_t off, void *dst, uint32_t len)
{
	uint32_t first = r->size - off;

	if (r->double_mapped || len <= first) {
		/* the double mapping makes [off, off + len) contiguous: one copy */
		hvr_memcpy(dst, r->data + off, len);
	} else {
		hvr_memcpy(dst, r->data + off, first);
		hvr_memcpy((uint8_t *)dst + first, r->data, len - first);
	}
	hvr_compiler_barrier();
}

/* Copy len bytes into the ring at offset off (off < size, len <= size). */
static void ring_copy_in(const struct hvr_ring *r, uint32_t off, const void *src, uint32_t len)
{
	uint32_t first = r->size - off;

	if (r->double_mapped || len <= first) {
		hvr_memcpy(r->data + off, src, len);
	} else {
		hvr_memcpy(r->data + off, src, first);
		hvr_memcpy(r->data, (const uint8_t *)src + first, len - first);
	}
}

/* ---- attach ----------------------------------------------------------------------------------- */

static int ring_attach(struct hvr_ring *r, struct hv_ring_buffer *hdr, uint32_t size,
		       uint32_t flags)
{
	r->hdr = 0;
	r->data = 0;
	r->size = 0;
	r->double_mapped = 0;
	r->broken = HVR_BROKEN_NONE;
	r->reserved = 0;
	if (!hdr || size == 0 || size % HVR_PAGE_SIZE || size > HVR_MAX_DATA_SIZE ||
	    (flags & ~HVR_DOUBLE_MAPPED))
		return HVR_EINVAL;
	r->hdr = hdr;
	r->data = hdr->buffer;
	r->size = size;
	r->double_mapped = (flags & HVR_DOUBLE_MAPPED) ? 1 : 0;
	return HVR_OK;
}

void hvr_ring_format(struct hv_ring_buffer *hdr)
{
	hvr_u64a *w = (hvr_u64a *)hdr;
	uint32_t i;

	/* atomic stores: never turned into a memset call */
	for (i = 0; i < HVR_PAGE_SIZE / 8; i++)
		__atomic_store_n(&w[i], 0, __ATOMIC_RELAXED);
	st32(&hdr->feature_bits.value, HVR_FEAT_PENDING_SEND_SZ);
	/* Release: the formatted page is complete before anything we store later that tells the
	 * peer about the ring (the GPADL / open message) can be seen. */
	__atomic_thread_fence(__ATOMIC_RELEASE);
}

uint32_t hvr_packet_total(uint32_t hdr_len, uint32_t payload_len)
{
	uint64_t t = (uint64_t)DESC_SIZE + hdr_len + (((uint64_t)payload_len + 7) & ~7ull) +
		     VMBUS_PKT_TRAILER;

	return t > 0xffffffffull ? 0xffffffffu : (uint32_t)t;
}

uint32_t hvr_broken_reason(const struct hvr_ring *r)
{
	return r->broken;
}

/* ---- sending ---------------------------------------------------------------------------------- */

/*
 * Load the reader's read_index and check it: < size, a multiple of 8, and only moved forward
 * from what we saw last, never past what we published (it cannot free bytes we did not write).
 */
static int out_load_read_index(struct hvr_out *out)
{
	struct hvr_ring *r = &out->r;
	/* Acquire: our stores into the space this index frees must not happen before we see it;
	 * pairs with the release store of read_index in hvr_in_commit() (the reader finished
	 * reading that space first). */
	uint32_t rd = __atomic_load_n(&r->hdr->read_index, __ATOMIC_ACQUIRE);

	if (!index_ok(r, rd) ||
	    ring_dist(r->size, out->cached_out, rd) >
		    ring_dist(r->size, out->cached_out, out->committed_in))
		return set_broken(r, HVR_BROKEN_READ_INDEX);
	out->cached_out = rd;
	return HVR_OK;
}

int hvr_out_attach(struct hvr_out *out, struct hv_ring_buffer *hdr, uint32_t size, uint32_t flags)
{
	int rc = ring_attach(&out->r, hdr, size, flags);
	uint32_t w, rd;

	out->committed_in = out->next_in = out->cached_out = 0;
	out->pending_set = 0;
	if (rc)
		return rc;
	w = ld32(&hdr->write_index);
	rd = ld32(&hdr->read_index);
	if (!index_ok(&out->r, w))
		return set_broken(&out->r, HVR_BROKEN_WRITE_INDEX);
	if (!index_ok(&out->r, rd))
		return set_broken(&out->r, HVR_BROKEN_READ_INDEX);
	out->committed_in = out->next_in = w;
	out->cached_out = rd;
	/* No interrupt requested yet; announce that this writer uses pending_send_sz. */
	st32(&hdr->pending_send_sz, 0);
	__atomic_fetch_or(&hdr->feature_bits.value, HVR_FEAT_PENDING_SEND_SZ, __ATOMIC_RELAXED);
	return HVR_OK;
}

int hvr_out_write(struct hvr_out *out, uint16_t type, uint16_t flags, uint64_t trans_id,
		  uint32_t hdr_len, const struct hvr_iov *iov, uint32_t iovcnt)
{
	struct hvr_ring *r = &out->r;
	static const uint8_t zeros[8];
	uint64_t body = 0, pktlen, total;
	uint32_t raw_free, start, pos, pad, i;

	if (r->broken)
		return HVR_EBROKEN;
	if (!r->size || !type_known(type) ||
	    (flags & ~(uint32_t)VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED) || (hdr_len & 7) ||
	    (iovcnt && !iov))
		return HVR_EINVAL;
	if ((type == VM_PKT_DATA_USING_XFER_PAGES || type == VM_PKT_DATA_USING_GPA_DIRECT) &&
	    hdr_len < EXT_HDR_SIZE)
		return HVR_EINVAL;
	for (i = 0; i < iovcnt; i++) {
		if (iov[i].len && !iov[i].base)
			return HVR_EINVAL;
		body += iov[i].len;
	}
	if (body < hdr_len)
		return HVR_EINVAL;
	pktlen = DESC_SIZE + ((body + 7) & ~7ull);
	if (pktlen > 0xffffull * 8)
		return HVR_EINVAL; /* len8 is 16 bits */
	total = pktlen + VMBUS_PKT_TRAILER;
	if (total > r->size - 8)
		return HVR_EINVAL; /* can never fit: a packet needs free space > itself */

	/* Linux: if there is only room for the packet, assume it is full; otherwise the next time
	 * around we think the ring is empty since read_index == write_index. */
	raw_free = r->size - ring_dist(r->size, out->cached_out, out->next_in);
	if (total >= raw_free) {
		if (out_load_read_index(out))
			return HVR_EBROKEN;
		raw_free = r->size - ring_dist(r->size, out->cached_out, out->next_in);
		if (total >= raw_free)
			return HVR_FULL;
	}

	start = out->next_in;
	ring_st64(r, start,
		  (uint64_t)type | (uint64_t)((DESC_SIZE + hdr_len) / 8) << 16 |
			  (uint64_t)(pktlen / 8) << 32 | (uint64_t)flags << 48);
	ring_st64(r, start + 8, trans_id);
	pos = ring_add(r->size, start, DESC_SIZE);
	for (i = 0; i < iovcnt; i++) {
		if (!iov[i].len)
			continue;
		ring_copy_in(r, pos, iov[i].base, iov[i].len);
		pos = ring_add(r->size, pos, iov[i].len);
	}
	pad = (uint32_t)(pktlen - DESC_SIZE - body);
	if (pad) {
		ring_copy_in(r, pos, zeros, pad);
		pos = ring_add(r->size, pos, pad);
	}
	/* Trailer: Linux's prev_indices, the packet's own start offset in the high half. */
	ring_st64(r, pos, (uint64_t)start << 32);
	out->next_in = ring_add(r->size, pos, VMBUS_PKT_TRAILER);

	if (out->pending_set) {
		/* There is room again: withdraw the request (OpenVMM clears it when there is room). */
		st32(&r->hdr->pending_send_sz, 0);
		out->pending_set = 0;
	}
	return HVR_OK;
}

int hvr_out_write_inband(struct hvr_out *out, uint16_t flags, uint64_t trans_id,
			 const void *payload, uint32_t len)
{
	struct hvr_iov iov = {payload, len};

	return hvr_out_write(out, VM_PKT_DATA_INBAND, flags, trans_id, 0, &iov, 1);
}

int hvr_out_write_comp(struct hvr_out *out, uint64_t trans_id, const void *payload, uint32_t len)
{
	struct hvr_iov iov = {payload, len};

	return hvr_out_write(out, VM_PKT_COMP, 0, trans_id, 0, &iov, 1);
}

int hvr_out_commit(struct hvr_out *out)
{
	struct hvr_ring *r = &out->r;
	uint32_t old_write = out->committed_in;

	if (r->broken)
		return HVR_EBROKEN;
	if (out->next_in == old_write)
		return 0;

	/* Full fence: the packets (descriptor, body, trailer) must be visible before the
	 * write_index that publishes them; pairs with the acquire load of write_index in
	 * in_load_write_index(). Linux: virt_mb() before hv_set_next_write_location(). */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	st32(&r->hdr->write_index, out->next_in);
	out->committed_in = out->next_in;

	/* Full fence: store write_index, then load interrupt_mask (store->load order needs a full
	 * barrier). Pairs with the full fence in hvr_in_unmask() between clearing interrupt_mask and
	 * re-reading write_index: one of the two sides sees the other, so no wakeup is lost.
	 * Linux: virt_mb() at the top of hv_signal_on_write(). */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (ld32(&r->hdr->interrupt_mask))
		return 0;

	/* Acquire: read_index is loaded after interrupt_mask. Linux: virt_rmb() "check
	 * interrupt_mask before read_index" in hv_signal_on_write(). */
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	if (out_load_read_index(out))
		return HVR_EBROKEN;
	/* Signal only on the empty -> non-empty transition: the reader had consumed everything up
	 * to where this batch starts. */
	return out->cached_out == old_write ? 1 : 0;
}

void hvr_out_revert(struct hvr_out *out)
{
	out->next_in = out->committed_in;
}

int hvr_out_free(struct hvr_out *out)
{
	struct hvr_ring *r = &out->r;
	uint32_t raw_free;

	if (r->broken)
		return HVR_EBROKEN;
	if (!r->size)
		return HVR_EINVAL;
	if (out_load_read_index(out))
		return HVR_EBROKEN;
	raw_free = r->size - ring_dist(r->size, out->cached_out, out->next_in);
	/* a packet of `total` bytes fits when total < raw_free; totals are multiples of 8 */
	return (int)(raw_free - 8);
}

int hvr_out_request_space(struct hvr_out *out, uint32_t total)
{
	struct hvr_ring *r = &out->r;
	uint32_t pss, raw_free;

	if (r->broken)
		return HVR_EBROKEN;
	if (!r->size || total == 0 || total > r->size - 8)
		return HVR_EINVAL;
	/* Hysteresis: wait for at least a quarter of the ring, so the reader signals once per
	 * quarter ring drained, not once per packet. */
	pss = total > r->size / 4 ? total : r->size / 4;
	pss = align8(pss);
	if (pss > r->size - 8)
		pss = r->size - 8;
	st32(&r->hdr->pending_send_sz, pss);
	out->pending_set = 1;

	/* Full fence: store pending_send_sz, then load read_index (store->load). Pairs with the
	 * full fence in hvr_in_commit() between publishing read_index and loading pending_send_sz:
	 * either the reader sees our request or we see the space it freed. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (out_load_read_index(out))
		return HVR_EBROKEN;
	raw_free = r->size - ring_dist(r->size, out->cached_out, out->next_in);
	if (total < raw_free) {
		st32(&r->hdr->pending_send_sz, 0);
		out->pending_set = 0;
		return 1;
	}
	return 0;
}

void hvr_out_clear_pending(struct hvr_out *out)
{
	if (out->r.size && !out->r.broken && out->pending_set) {
		st32(&out->r.hdr->pending_send_sz, 0);
		out->pending_set = 0;
	}
}

/* ---- receiving -------------------------------------------------------------------------------- */

/*
 * Load the writer's write_index and check it: < size, a multiple of 8, and only moved forward
 * from what we saw last (it never passes our committed read_index: the ring is never full).
 */
static int in_load_write_index(struct hvr_in *in)
{
	struct hvr_ring *r = &in->r;
	/* Acquire: the packet bytes are read after the index that published them; pairs with the
	 * full fence before the write_index store in hvr_out_commit(). Linux: virt_load_acquire()
	 * of write_index in hv_pkt_iter_avail(). */
	uint32_t w = __atomic_load_n(&r->hdr->write_index, __ATOMIC_ACQUIRE);

	if (!index_ok(r, w) ||
	    ring_dist(r->size, in->committed_out, w) <
		    ring_dist(r->size, in->committed_out, in->cached_in))
		return set_broken(r, HVR_BROKEN_WRITE_INDEX);
	in->cached_in = w;
	return HVR_OK;
}

int hvr_in_attach(struct hvr_in *in, struct hv_ring_buffer *hdr, uint32_t size, uint32_t flags)
{
	int rc = ring_attach(&in->r, hdr, size, flags);
	uint32_t w, rd;

	in->committed_out = in->next_out = in->cached_in = 0;
	in->reserved = 0;
	if (rc)
		return rc;
	w = ld32(&hdr->write_index);
	rd = ld32(&hdr->read_index);
	if (!index_ok(&in->r, w))
		return set_broken(&in->r, HVR_BROKEN_WRITE_INDEX);
	if (!index_ok(&in->r, rd))
		return set_broken(&in->r, HVR_BROKEN_READ_INDEX);
	in->committed_out = in->next_out = rd;
	in->cached_in = w;
	/* Acquire: packets published before we attached are read after this point (pairs with
	 * the writer's fence before its write_index store). */
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	return HVR_OK;
}

/* Validate the GPA ranges of a GPA-direct packet at ring offset off (header end at ext_end). */
static int parse_gpa_ranges(struct hvr_ring *r, uint32_t off, uint32_t ext_end, uint32_t count)
{
	uint32_t pos = DESC_SIZE + EXT_HDR_SIZE, i;

	if (count == 0)
		return set_broken(r, HVR_BROKEN_GPA_RANGES);
	for (i = 0; i < count; i++) {
		uint64_t w, pages;
		uint32_t byte_count, byte_offset;

		if (pos + 8 > ext_end)
			return set_broken(r, HVR_BROKEN_GPA_RANGES);
		w = ring_ld64(r, ring_add(r->size, off, pos));
		byte_count = (uint32_t)w;
		byte_offset = (uint32_t)(w >> 32);
		if (byte_count == 0 || byte_offset >= HVR_PAGE_SIZE)
			return set_broken(r, HVR_BROKEN_GPA_RANGES);
		pages = ((uint64_t)byte_offset + byte_count + HVR_PAGE_SIZE - 1) / HVR_PAGE_SIZE;
		if ((uint64_t)pos + 8 + pages * 8 > ext_end)
			return set_broken(r, HVR_BROKEN_GPA_RANGES);
		pos += 8 + (uint32_t)pages * 8;
	}
	return HVR_OK;
}

/* Parse the packet at next_out into *pkt (validated copy). HVR_OK / HVR_EMPTY / HVR_EBROKEN. */
static int in_parse(struct hvr_in *in, struct hvr_pkt *pkt)
{
	struct hvr_ring *r = &in->r;
	uint32_t avail, off, ext_end;
	uint64_t w0, w1, w2;
	uint16_t type, offset8, len8, flags;

	if (r->broken)
		return HVR_EBROKEN;
	if (!r->size || !pkt)
		return HVR_EINVAL;
	off = in->next_out;
	avail = ring_dist(r->size, off, in->cached_in);
	if (avail == 0) {
		if (in_load_write_index(in))
			return HVR_EBROKEN;
		avail = ring_dist(r->size, off, in->cached_in);
		if (avail == 0)
			return HVR_EMPTY;
	}
	if (avail < MIN_PACKET)
		return set_broken(r, HVR_BROKEN_AVAIL);

	/* Copy the descriptor out once; everything below uses the copy. */
	w0 = ring_ld64(r, off);
	w1 = ring_ld64(r, off + 8);
	type = (uint16_t)w0;
	offset8 = (uint16_t)(w0 >> 16);
	len8 = (uint16_t)(w0 >> 32);
	flags = (uint16_t)(w0 >> 48);

	if (offset8 < DESC_SIZE / 8 || len8 < offset8 ||
	    (uint32_t)len8 * 8 + VMBUS_PKT_TRAILER > avail)
		return set_broken(r, HVR_BROKEN_DESC_LENGTHS);
	if (flags & ~(uint32_t)VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED)
		return set_broken(r, HVR_BROKEN_DESC_FLAGS);
	if (!type_known(type))
		return set_broken(r, HVR_BROKEN_DESC_TYPE);

	pkt->range_count = 0;
	pkt->xfer_pageset_id = 0;
	pkt->sender_owns_set = 0;
	pkt->reserved = 0;
	ext_end = (uint32_t)offset8 * 8;
	if (type == VM_PKT_DATA_USING_XFER_PAGES || type == VM_PKT_DATA_USING_GPA_DIRECT) {
		if (ext_end < DESC_SIZE + EXT_HDR_SIZE)
			return set_broken(r, HVR_BROKEN_DESC_LENGTHS);
		w2 = ring_ld64(r, ring_add(r->size, off, DESC_SIZE));
		if (type == VM_PKT_DATA_USING_XFER_PAGES) {
			uint32_t cnt = (uint32_t)(w2 >> 32);

			if ((uint64_t)cnt * sizeof(struct vmtransfer_page_range) >
			    ext_end - DESC_SIZE - EXT_HDR_SIZE)
				return set_broken(r, HVR_BROKEN_XFER_RANGES);
			pkt->xfer_pageset_id = (uint16_t)w2;
			pkt->sender_owns_set = (uint8_t)(w2 >> 16);
			pkt->range_count = cnt;
		} else {
			uint32_t cnt = (uint32_t)(w2 >> 32);

			if (parse_gpa_ranges(r, off, ext_end, cnt))
				return HVR_EBROKEN;
			pkt->range_count = cnt;
		}
	}
	pkt->type = type;
	pkt->flags = flags;
	pkt->offset8 = offset8;
	pkt->len8 = len8;
	pkt->trans_id = w1;
	pkt->offset = off;
	pkt->total = (uint32_t)len8 * 8 + VMBUS_PKT_TRAILER;
	pkt->payload_off = ext_end;
	pkt->payload_len = ((uint32_t)len8 - offset8) * 8;
	return HVR_OK;
}

int hvr_in_peek(struct hvr_in *in, struct hvr_pkt *pkt)
{
	return in_parse(in, pkt);
}

int hvr_in_read(struct hvr_in *in, struct hvr_pkt *pkt)
{
	int rc = in_parse(in, pkt);

	if (rc == HVR_OK)
		in->next_out = ring_add(in->r.size, pkt->offset, pkt->total);
	return rc;
}

/* A packet record the caller hands back must describe bytes inside the ring. */
static bool pkt_ok(const struct hvr_ring *r, const struct hvr_pkt *pkt)
{
	return pkt && index_ok(r, pkt->offset) &&
	       (uint32_t)pkt->len8 * 8 + VMBUS_PKT_TRAILER <= r->size;
}

/* Ring offset of packet offset `off` for `len` bytes, or -1 if not inside the packet. */
static int64_t pkt_range(const struct hvr_ring *r, const struct hvr_pkt *pkt, uint32_t off,
			 uint32_t len)
{
	if (!pkt_ok(r, pkt) || (uint64_t)off + len > (uint64_t)pkt->len8 * 8)
		return -1;
	if (len == 0 && off == (uint32_t)pkt->len8 * 8)
		off = 0; /* empty range at the end: any in-ring address will do */
	return ring_add(r->size, pkt->offset, off);
}

int hvr_in_copy(const struct hvr_in *in, const struct hvr_pkt *pkt, uint32_t off, void *dst,
		uint32_t len)
{
	const struct hvr_ring *r = &in->r;
	int64_t roff;

	if (r->broken)
		return HVR_EBROKEN;
	if (!r->size)
		return HVR_EINVAL;
	roff = pkt_range(r, pkt, off, len);
	if (roff < 0 || (len && !dst))
		return HVR_ERANGE;
	if (len)
		ring_copy_out(r, (uint32_t)roff, dst, len);
	return HVR_OK;
}

const void *hvr_in_ptr(const struct hvr_in *in, const struct hvr_pkt *pkt, uint32_t off,
		       uint32_t len)
{
	const struct hvr_ring *r = &in->r;
	int64_t roff;

	if (r->broken || !r->size)
		return 0;
	roff = pkt_range(r, pkt, off, len);
	if (roff < 0)
		return 0;
	if (!r->double_mapped && (uint64_t)roff + len > r->size)
		return 0; /* wraps: only the double mapping makes it contiguous */
	return r->data + roff;
}

const void *hvr_in_payload(const struct hvr_in *in, const struct hvr_pkt *pkt, uint32_t *len)
{
	const void *p;

	if (!pkt)
		return 0;
	p = hvr_in_ptr(in, pkt, pkt->payload_off, pkt->payload_len);
	if (len)
		*len = p ? pkt->payload_len : 0;
	return p;
}

int hvr_in_gpa_range(const struct hvr_in *in, const struct hvr_pkt *pkt, struct hvr_gpa_iter *it,
		     struct hvr_gpa_range *range)
{
	const struct hvr_ring *r = &in->r;
	uint32_t ext_end, byte_count, byte_offset;
	uint64_t w, pages;

	if (r->broken)
		return HVR_EBROKEN;
	if (!r->size)
		return HVR_EINVAL;
	if (!it || !range || !pkt_ok(r, pkt) || pkt->type != VM_PKT_DATA_USING_GPA_DIRECT)
		return HVR_ERANGE;
	if (it->pos == 0) {
		it->pos = DESC_SIZE + EXT_HDR_SIZE;
		it->left = pkt->range_count;
	}
	if (it->left == 0)
		return HVR_EMPTY;
	ext_end = (uint32_t)pkt->offset8 * 8;
	if (ext_end > (uint32_t)pkt->len8 * 8 || (it->pos & 7) ||
	    (uint64_t)it->pos + 8 > ext_end)
		return HVR_ERANGE;
	/* Copy the range header once and validate the copy again: the ring is the peer's. */
	w = ring_ld64(r, ring_add(r->size, pkt->offset, it->pos));
	byte_count = (uint32_t)w;
	byte_offset = (uint32_t)(w >> 32);
	if (byte_count == 0 || byte_offset >= HVR_PAGE_SIZE)
		return HVR_ERANGE;
	pages = ((uint64_t)byte_offset + byte_count + HVR_PAGE_SIZE - 1) / HVR_PAGE_SIZE;
	if ((uint64_t)it->pos + 8 + pages * 8 > ext_end)
		return HVR_ERANGE;
	range->byte_count = byte_count;
	range->byte_offset = byte_offset;
	range->pfn_count = (uint32_t)pages;
	range->pfn_off = it->pos + 8;
	it->pos += 8 + (uint32_t)pages * 8;
	it->left--;
	return HVR_OK;
}

int hvr_in_commit(struct hvr_in *in)
{
	struct hvr_ring *r = &in->r;
	uint32_t start_read = in->committed_out, pending_sz, curr_write_sz, bytes_read;

	if (r->broken)
		return HVR_EBROKEN;
	if (in->next_out == start_read)
		return 0;

	/* Release: every read of the consumed packets completes before read_index hands their
	 * space back (the writer may overwrite it at once); pairs with the acquire load of
	 * read_index in out_load_read_index(). Linux: virt_rmb() in hv_pkt_iter_close(). */
	__atomic_store_n(&r->hdr->read_index, in->next_out, __ATOMIC_RELEASE);
	in->committed_out = in->next_out;

	/* A writer that did not announce pending_send_sz polls: no signal. */
	if (!(ld32(&r->hdr->feature_bits.value) & HVR_FEAT_PENDING_SEND_SZ))
		return 0;

	/* Full fence: store read_index, then load pending_send_sz (store->load). Pairs with the
	 * full fence in hvr_out_request_space() between setting pending_send_sz and re-reading
	 * read_index: otherwise a writer could set it after we sampled it and sleep before it sees
	 * our read_index, and nobody wakes it. Linux: virt_mb() in hv_pkt_iter_close(). */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	/* Some writers ask for size - 1 (meaning "empty"); the most a writer can use is size - 8,
	 * so mask to a multiple of 8 (OpenVMM does the same). */
	pending_sz = ld32(&r->hdr->pending_send_sz) & ~7u;
	if (!pending_sz)
		return 0;

	/* Acquire: write_index is loaded after pending_send_sz. Linux: virt_rmb() "ensure the read
	 * of write_index in hv_get_bytes_to_write() happens after the read of pending_send_sz". */
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	if (in_load_write_index(in))
		return HVR_EBROKEN;
	curr_write_sz = r->size - ring_dist(r->size, in->next_out, in->cached_in);
	bytes_read = ring_dist(r->size, start_read, in->next_out);

	/* Signal only on the transition from "not enough free space" to "enough" (u32 arithmetic
	 * as in Linux: if the writer wrote meanwhile the difference wraps and no signal is sent). */
	if (curr_write_sz - bytes_read > pending_sz)
		return 0; /* there was enough before: the writer was not blocked */
	if (curr_write_sz <= pending_sz)
		return 0; /* still not enough: no false hope */
	return 1;
}

void hvr_in_revert(struct hvr_in *in)
{
	in->next_out = in->committed_out;
}

int hvr_in_avail(struct hvr_in *in)
{
	struct hvr_ring *r = &in->r;

	if (r->broken)
		return HVR_EBROKEN;
	if (!r->size)
		return HVR_EINVAL;
	if (in_load_write_index(in))
		return HVR_EBROKEN;
	return (int)ring_dist(r->size, in->next_out, in->cached_in);
}

void hvr_in_set_interrupt_mask(struct hvr_in *in, uint32_t mask)
{
	if (!in->r.size || in->r.broken)
		return;
	st32(&in->r.hdr->interrupt_mask, mask ? 1 : 0);
	/* Full fence: the mask change is visible before this reader's next loads of write_index.
	 * Linux: virt_mb() after the store in hv_begin_read()/hv_end_read(). */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

int hvr_in_unmask(struct hvr_in *in)
{
	struct hvr_ring *r = &in->r;

	if (r->broken)
		return HVR_EBROKEN;
	if (!r->size)
		return HVR_EINVAL;
	st32(&r->hdr->interrupt_mask, 0);
	/* Full fence: clear interrupt_mask, then re-read write_index (store->load). Pairs with the
	 * full fence in hvr_out_commit() between publishing write_index and loading interrupt_mask:
	 * a packet published before the writer saw the unmask is found here.
	 * Linux: virt_mb() in hv_end_read(). */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (in_load_write_index(in))
		return HVR_EBROKEN;
	return in->cached_in != in->next_out ? 1 : 0;
}
