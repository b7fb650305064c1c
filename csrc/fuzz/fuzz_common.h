/*
 * fuzz_common.h - shared pieces of the libFuzzer harnesses in csrc/fuzz/ (host only, clang).
 *
 * A ring under test is laid out exactly as the parent sees a guest's ring:
 *   - double mapped (HVR_DOUBLE_MAPPED, what hvkvm/vmbus/ringmap.py builds): a memfd holding the
 *     header page and the data pages, mapped header | data | data again, with PROT_NONE guard
 *     pages on both sides, so an access just outside the view faults (SEGV: a crash to libFuzzer);
 *   - plain: one exactly-sized heap block (header page + data), so AddressSanitizer reports any
 *     byte read or written past it.
 * Guest RAM for the data planes is heap memory (ASan redzones around it) at made-up GPAs.
 */
#ifndef HVKVM_FUZZ_COMMON_H
#define HVKVM_FUZZ_COMMON_H

#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vmbus_ring.h"

#define FZ_PAGE 4096u

struct fz_ring {
	struct hv_ring_buffer *hdr;
	uint32_t size;      /* data bytes */
	int double_mapped;
	void *map;          /* mmap reservation (double mapped) */
	size_t map_len;
	int memfd;
};

/* A little input cursor: reads never run past the input; missing bytes read as 0. */
struct fz_in {
	const uint8_t *p;
	size_t n;
};

static inline int fz_left(const struct fz_in *in)
{
	return in->n > 0;
}

static inline uint8_t fz_u8(struct fz_in *in)
{
	uint8_t v = 0;

	if (in->n) {
		v = *in->p++;
		in->n--;
	}
	return v;
}

static inline uint16_t fz_u16(struct fz_in *in)
{
	uint16_t lo = fz_u8(in);

	return (uint16_t)(lo | (uint16_t)fz_u8(in) << 8);
}

static inline uint32_t fz_u32(struct fz_in *in)
{
	uint32_t lo = fz_u16(in);

	return lo | (uint32_t)fz_u16(in) << 16;
}

static inline uint64_t fz_u64(struct fz_in *in)
{
	uint64_t lo = fz_u32(in);

	return lo | (uint64_t)fz_u32(in) << 32;
}

/* Up to n bytes into dst (the rest zero); returns how many came from the input. */
static inline size_t fz_bytes(struct fz_in *in, void *dst, size_t n)
{
	size_t take = n < in->n ? n : in->n;

	memcpy(dst, in->p, take);
	memset((uint8_t *)dst + take, 0, n - take);
	in->p += take;
	in->n -= take;
	return take;
}

static inline int fz_ring_alloc(struct fz_ring *r, uint32_t pages, int double_mapped)
{
	memset(r, 0, sizeof(*r));
	r->memfd = -1;
	r->size = pages * FZ_PAGE;
	r->double_mapped = double_mapped;
	if (!double_mapped) {
		r->hdr = aligned_alloc(FZ_PAGE, FZ_PAGE + (size_t)r->size);
		if (!r->hdr)
			return -1;
		memset(r->hdr, 0, FZ_PAGE + (size_t)r->size);
		return 0;
	}
	r->memfd = memfd_create("fz-ring", MFD_CLOEXEC);
	if (r->memfd < 0 || ftruncate(r->memfd, FZ_PAGE + (off_t)r->size) < 0)
		return -1;
	/* guard | header | data | data | guard */
	r->map_len = (size_t)(2 + 1 + 2 * pages) * FZ_PAGE;
	r->map = mmap(NULL, r->map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r->map == MAP_FAILED)
		return -1;
	uint8_t *base = (uint8_t *)r->map + FZ_PAGE;
	if (mmap(base, FZ_PAGE + (size_t)r->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
		 r->memfd, 0) == MAP_FAILED ||
	    mmap(base + FZ_PAGE + r->size, r->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
		 r->memfd, FZ_PAGE) == MAP_FAILED)
		return -1;
	r->hdr = (struct hv_ring_buffer *)base;
	return 0;
}

static inline void fz_ring_free(struct fz_ring *r)
{
	if (r->double_mapped) {
		if (r->map && r->map != MAP_FAILED)
			munmap(r->map, r->map_len);
		if (r->memfd >= 0)
			close(r->memfd);
	} else {
		free(r->hdr);
	}
	memset(r, 0, sizeof(*r));
}

static inline uint32_t fz_ring_flags(const struct fz_ring *r)
{
	return r->double_mapped ? HVR_DOUBLE_MAPPED : 0;
}

/* The peer (guest) writes `n` bytes at data offset `off` (wrapping, as the single copy it has). */
static inline void fz_ring_poke(struct fz_ring *r, uint32_t off, const void *src, uint32_t n)
{
	const uint8_t *s = src;

	for (uint32_t i = 0; i < n; i++)
		r->hdr->buffer[(off + i) % r->size] = s[i];
}

#endif

/* ---- a data plane without its thread: the parent's side of one channel ---------------------- */
#ifdef HVKVM_FUZZ_PLANE
#include "hvr_plane.h"
#include "hvr_storage.h" /* struct hvr_ram_region */

#define FZ_RAM0_GPA 0x0ull
#define FZ_RAM0_PAGES 16u
#define FZ_RAM1_GPA 0x100000ull
#define FZ_RAM1_PAGES 8u

/* Guest RAM: two heap regions (ASan redzones around each) at two guest-physical bases. */
struct fz_guest {
	struct hvr_ram_region regions[2];
	struct fz_ring send;        /* the guest's send ring: the parent reads it */
	struct fz_ring recv;        /* the guest's receive ring: the parent writes it */
	struct hvr_out gout;        /* the guest's writer on `send` */
	struct hvr_in gin;          /* the guest's reader on `recv` */
	struct hvr_plane p;         /* the parent's views, no thread */
	uint64_t completions;       /* packets the parent wrote to the guest */
	uint32_t event_flags[64];   /* the guest's SIEFP slot for the SINT (2048 flags) */
};

static inline int fz_guest_init(struct fz_guest *g, uint32_t send_pages, uint32_t recv_pages,
				int double_mapped)
{
	memset(g, 0, sizeof(*g));
	g->regions[0].gpa = FZ_RAM0_GPA;
	g->regions[0].size = FZ_RAM0_PAGES * FZ_PAGE;
	g->regions[0].host = aligned_alloc(FZ_PAGE, FZ_RAM0_PAGES * FZ_PAGE);
	g->regions[1].gpa = FZ_RAM1_GPA;
	g->regions[1].size = FZ_RAM1_PAGES * FZ_PAGE;
	g->regions[1].host = aligned_alloc(FZ_PAGE, FZ_RAM1_PAGES * FZ_PAGE);
	if (!g->regions[0].host || !g->regions[1].host)
		return -1;
	for (uint32_t i = 0; i < FZ_RAM0_PAGES * FZ_PAGE; i++)
		g->regions[0].host[i] = (uint8_t)(i * 7);
	memset(g->regions[1].host, 0x5a, FZ_RAM1_PAGES * FZ_PAGE);
	if (fz_ring_alloc(&g->send, send_pages, double_mapped) ||
	    fz_ring_alloc(&g->recv, recv_pages, double_mapped))
		return -1;
	hvr_ring_format(g->send.hdr);
	hvr_ring_format(g->recv.hdr);
	/* The guest's views are plain, the parent's as configured (the same memory). */
	if (hvr_out_attach(&g->gout, g->send.hdr, g->send.size, 0) ||
	    hvr_in_attach(&g->gin, g->recv.hdr, g->recv.size, 0) ||
	    hvr_in_attach(&g->p.in, g->send.hdr, g->send.size, fz_ring_flags(&g->send)) ||
	    hvr_out_attach(&g->p.out, g->recv.hdr, g->recv.size, fz_ring_flags(&g->recv)))
		return -1;
	g->p.kick_fd = -1;
	g->p.irq_fd = -1;
	g->p.stop_fd = -1;
	g->p.event_flags = g->event_flags;
	g->p.relid = 1;
	return 0;
}

static inline void fz_guest_fini(struct fz_guest *g)
{
	free(g->regions[0].host);
	free(g->regions[1].host);
	fz_ring_free(&g->send);
	fz_ring_free(&g->recv);
}

/* The guest reads (and checks the framing of) everything the parent wrote to it. */
static inline void fz_guest_reap(struct fz_guest *g)
{
	struct hvr_pkt pkt;

	while (hvr_in_read(&g->gin, &pkt) == HVR_OK)
		g->completions++;
	(void)hvr_in_commit(&g->gin);
	/* the parent must never corrupt the guest's ring */
	if (g->gin.r.broken)
		__builtin_trap();
}

/*
 * The parent's drain loop (hvr_plane.c's drain() without signals): every packet through
 * `handler`; a full receive ring makes the guest reap once and the packet is retried. Returns
 * the handler's negative error when the plane would stop, else 0.
 */
static inline int fz_plane_drain(struct fz_guest *g, hvr_plane_handler handler)
{
	struct hvr_pkt pkt;
	int rc, retried = 0;

	for (int n = 0; n < 64; n++) {
		rc = hvr_in_peek(&g->p.in, &pkt);
		if (rc == HVR_EMPTY)
			break;
		if (rc < 0)
			return rc;
		rc = handler(&g->p, &pkt);
		if (rc == HVR_FULL) {
			if (hvr_out_commit(&g->p.out) < 0)
				return HVR_EBROKEN;
			fz_guest_reap(g);
			if (retried++)
				break; /* a reply that never fits: the plane would wait forever */
			n--;
			continue;
		}
		retried = 0;
		if (rc < 0)
			return rc;
		if (hvr_in_read(&g->p.in, &pkt) != HVR_OK)
			__builtin_trap(); /* peeked a moment ago */
	}
	if (hvr_out_commit(&g->p.out) < 0 || hvr_in_commit(&g->p.in) < 0)
		return HVR_EBROKEN;
	fz_guest_reap(g);
	return 0;
}

/*
 * One guest packet from the input: kind, type-specific header, payload. GPA-direct ranges name
 * PFNs in guest RAM, at its edges, or anywhere (a u64 from the input).
 */
static inline int fz_guest_send(struct fz_guest *g, struct fz_in *fi, const void *payload,
				uint32_t plen)
{
	uint8_t kind = fz_u8(fi), flags = fz_u8(fi) & 1;
	uint8_t hdr[8 + 4 * (8 + 8 * 18)];
	uint32_t hl = 0;
	uint16_t type;
	struct hvr_iov iov[2];
	int rc;

	switch (kind & 3) {
	case 0:
		type = VM_PKT_DATA_INBAND;
		break;
	case 1: {
		uint32_t nr = fz_u8(fi) % 5;

		type = VM_PKT_DATA_USING_GPA_DIRECT;
		memset(hdr, 0, 8);
		memcpy(hdr + 4, &nr, 4);
		hl = 8;
		for (uint32_t i = 0; i < nr; i++) {
			uint32_t bc = fz_u32(fi), bo = fz_u16(fi) & 0x1fff, np = fz_u8(fi) % 19;

			if (fz_u8(fi) & 1) { /* self-consistent: the PFN count the range needs */
				bc %= 16u * FZ_PAGE;
				if (!bc)
					bc = 1;
				bo &= 0xfff;
				np = (bo + bc + FZ_PAGE - 1) / FZ_PAGE;
				if (np > 18)
					np = 18;
			}
			memcpy(hdr + hl, &bc, 4);
			memcpy(hdr + hl + 4, &bo, 4);
			hl += 8;
			for (uint32_t j = 0; j < np; j++) {
				uint8_t sel = fz_u8(fi);
				uint64_t pfn;

				switch (sel >> 6) {
				case 0: pfn = FZ_RAM0_GPA / FZ_PAGE + (sel & 31); break;   /* RAM 0 and past it */
				case 1: pfn = FZ_RAM1_GPA / FZ_PAGE + (sel & 15) - 2; break; /* around RAM 1 */
				case 2: pfn = (uint64_t)-1 - (sel & 3); break;
				default: pfn = fz_u64(fi); break;
				}
				memcpy(hdr + hl, &pfn, 8);
				hl += 8;
			}
		}
		break;
	}
	case 2:
		type = VM_PKT_COMP;
		break;
	default:
		type = VM_PKT_DATA_USING_XFER_PAGES;
		fz_bytes(fi, hdr, 16);
		hl = 16;
		break;
	}
	iov[0].base = hdr;
	iov[0].len = hl;
	iov[1].base = payload;
	iov[1].len = plen;
	rc = hvr_out_write(&g->gout, type, flags, fz_u64(fi), hl, iov, 2);
	if (rc == HVR_OK)
		(void)hvr_out_commit(&g->gout);
	return rc;
}
#endif /* HVKVM_FUZZ_PLANE */
