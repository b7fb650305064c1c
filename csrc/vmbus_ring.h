/*
 * vmbus_ring.h - the VMBus ring buffer: one freestanding C implementation for the host (built
 * into the cffi extension hvkvm.vmbus._hvring) and for guest images.
 *
 * Wire format and signalling rules are Linux's (include/linux/hyperv.h, drivers/hv/ring_buffer.c);
 * the API shape follows OpenVMM's vmbus_ring (separate incoming and outgoing views, read or write
 * several packets, then commit once; the commit says whether to signal the peer).
 *
 * Freestanding: needs only <stdint.h>, <stddef.h>, <stdbool.h> and GCC builtins; no libc calls
 * are emitted (tests check the object file has no undefined symbols). x86-64 / little endian.
 *
 * ---------------------------------------------------------------------------------------------
 * The ring
 *
 *   page 0           struct hv_ring_buffer: write_index, read_index, interrupt_mask,
 *                    pending_send_sz, feature_bits (the control words), padded to 4096 bytes
 *   pages 1..n       the data area, `size` = n * 4096 bytes, used circularly
 *
 * write_index and read_index are byte offsets into the data area, always < size and multiples of
 * 8. The ring is empty when they are equal; a writer never fills it completely (a packet needs
 * free space strictly larger than itself), so full never looks empty. Each packet is
 *
 *   struct vmpacket_descriptor (16 bytes: type, offset8, len8, flags, trans_id)
 *   type-specific header (GPA ranges, transfer page ranges), up to offset8 * 8
 *   payload, zero-padded to a multiple of 8, up to len8 * 8
 *   trailer: u64 = (u64)(ring offset of this packet) << 32
 *
 * Two views of the data area:
 *   - plain (guest side): the data area appears once; an access that wraps is split in two.
 *   - double mapped (host side, HVR_DOUBLE_MAPPED): the data pages are mapped a second time right
 *     after the first copy, so [data, data + 2 * size) is readable/writable and any packet is
 *     contiguous in place: hvr_in_payload() / hvr_in_ptr() always return a pointer.
 *
 * ---------------------------------------------------------------------------------------------
 * Hostile peers
 *
 * The peer can write anything into the header and the data area at any time. Every index read
 * from the header and every descriptor field is validated before use: indices < size, multiples
 * of 8 and moving only forward within the bytes the peer may own; offset8 >= 2, len8 >= offset8,
 * packet + trailer within the bytes available; only known types and flags; GPA-direct and
 * transfer-page headers checked range by range. A descriptor is copied out once and the copy is
 * validated and used (no double fetch). A violation makes the view "broken" (sticky, the reason is
 * in r.broken, one of enum hvr_broken): every later call returns HVR_EBROKEN and touches nothing.
 * No call ever accesses memory outside [hdr, hdr->buffer + size) (plain) or
 * [hdr, hdr->buffer + 2 * size) (double mapped).
 *
 * Payload bytes stay guest-controlled while you look at them: copy a field once before
 * validating and using it. Pointers from hvr_in_ptr()/hvr_in_payload() are valid until the next
 * hvr_in_commit() (after it the writer may reuse the space).
 *
 * Not thread safe: one thread (or one lock holder) per view. The two views of one ring may be in
 * different threads, processes or partitions: that is the point.
 *
 * ---------------------------------------------------------------------------------------------
 * Signalling (Linux's rules)
 *
 * Writer: hvr_out_commit() publishes write_index and returns 1 ("signal the reader") only when
 * the ring went from empty to non-empty (read_index was at the old write_index) and the reader's
 * interrupt_mask is clear.
 * Reader: hvr_in_commit() publishes read_index and returns 1 ("signal the writer") only when the
 * ring has feat_pending_send_sz set, pending_send_sz (masked to a multiple of 8) is non-zero,
 * the free space before this commit was <= pending_send_sz and after it is > pending_send_sz.
 * A reader that wants interrupts again: hvr_in_unmask() clears interrupt_mask and re-checks the
 * ring (data that raced in before the unmask raises no signal, so it must be read now).
 * A writer that finds the ring full: hvr_out_request_space() sets pending_send_sz (at least a
 * quarter of the ring: hysteresis) and re-checks; the next successful write clears it.
 */
#ifndef HVKVM_VMBUS_RING_H
#define HVKVM_VMBUS_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HVR_PAGE_SIZE 4096u

/* ---- Linux's wire structures (include/linux/hyperv.h), same names, same layout ------------- */

/*
 * The ring's control page. Linux declares it __packed; every member is naturally aligned, so the
 * plain declaration has the same layout (checked below) and its members can be used with the
 * __atomic builtins.
 */
struct hv_ring_buffer {
	/* Offset in bytes from the start of ring data below */
	uint32_t write_index;
	/* Offset in bytes from the start of ring data below */
	uint32_t read_index;
	uint32_t interrupt_mask;
	/* bytes the writer waits for; honoured by the reader if feat_pending_send_sz is set */
	uint32_t pending_send_sz;
	uint32_t reserved1[12];
	union {
		struct {
			uint32_t feat_pending_send_sz:1;
		};
		uint32_t value;
	} feature_bits;
	/* Pad it to PAGE_SIZE so that data starts on page boundary */
	uint8_t reserved2[HVR_PAGE_SIZE - 68];
	/* Ring data starts here */
	uint8_t buffer[];
};

/* bit 0 of feature_bits.value */
#define HVR_FEAT_PENDING_SEND_SZ 1u

enum vmbus_packet_type {
	VM_PKT_INVALID = 0x0,
	VM_PKT_SYNCH = 0x1,
	VM_PKT_ADD_XFER_PAGESET = 0x2,
	VM_PKT_RM_XFER_PAGESET = 0x3,
	VM_PKT_ESTABLISH_GPADL = 0x4,
	VM_PKT_TEARDOWN_GPADL = 0x5,
	VM_PKT_DATA_INBAND = 0x6,
	VM_PKT_DATA_USING_XFER_PAGES = 0x7,
	VM_PKT_DATA_USING_GPADL = 0x8,
	VM_PKT_DATA_USING_GPA_DIRECT = 0x9,
	VM_PKT_CANCEL_REQUEST = 0xa,
	VM_PKT_COMP = 0xb,
	VM_PKT_DATA_USING_ADDITIONAL_PKT = 0xc,
	VM_PKT_ADDITIONAL_DATA = 0xd
};

#define VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED 1
#define VMBUS_PKT_TRAILER 8

struct vmpacket_descriptor {
	uint16_t type;
	uint16_t offset8;
	uint16_t len8;
	uint16_t flags;
	uint64_t trans_id;
};

struct vmtransfer_page_range {
	uint32_t byte_count;
	uint32_t byte_offset;
};

struct vmtransfer_page_packet_header {
	struct vmpacket_descriptor d;
	uint16_t xfer_pageset_id;
	uint8_t sender_owns_set;
	uint8_t reserved;
	uint32_t range_cnt;
	struct vmtransfer_page_range ranges[];
};

/* A range in guest physical space: byte_count bytes from byte_offset into the first page. */
struct gpa_range {
	uint32_t byte_count;
	uint32_t byte_offset;
	uint64_t pfn_array[];
};

struct hv_mpb_array {
	/* Length and Offset determines the # of pfns in the array */
	uint32_t len;
	uint32_t offset;
	uint64_t pfn_array[];
};

/* A GPA-direct packet's header (the format of Linux's struct vmdata_gpa_direct). */
struct vmbus_packet_mpb_array {
	uint16_t type;
	uint16_t dataoffset8;
	uint16_t length8;
	uint16_t flags;
	uint64_t transactionid;
	uint32_t reserved;
	uint32_t rangecount;
	struct hv_mpb_array range;
};

_Static_assert(sizeof(struct hv_ring_buffer) == HVR_PAGE_SIZE, "hv_ring_buffer is one page");
_Static_assert(offsetof(struct hv_ring_buffer, write_index) == 0, "layout");
_Static_assert(offsetof(struct hv_ring_buffer, read_index) == 4, "layout");
_Static_assert(offsetof(struct hv_ring_buffer, interrupt_mask) == 8, "layout");
_Static_assert(offsetof(struct hv_ring_buffer, pending_send_sz) == 12, "layout");
_Static_assert(offsetof(struct hv_ring_buffer, feature_bits) == 64, "layout");
_Static_assert(offsetof(struct hv_ring_buffer, buffer) == HVR_PAGE_SIZE, "layout");
_Static_assert(sizeof(struct vmpacket_descriptor) == 16, "layout");
_Static_assert(offsetof(struct vmpacket_descriptor, trans_id) == 8, "layout");
_Static_assert(sizeof(struct vmtransfer_page_range) == 8, "layout");
_Static_assert(sizeof(struct vmtransfer_page_packet_header) == 24, "layout");
_Static_assert(offsetof(struct vmtransfer_page_packet_header, range_cnt) == 20, "layout");
_Static_assert(sizeof(struct gpa_range) == 8, "layout");
_Static_assert(sizeof(struct vmbus_packet_mpb_array) == 32, "layout");
_Static_assert(offsetof(struct vmbus_packet_mpb_array, rangecount) == 20, "layout");

/* Byte offsets of the control words, for code that reads the page as bytes. */
#define HVR_WRITE_INDEX_OFFSET 0
#define HVR_READ_INDEX_OFFSET 4
#define HVR_INTERRUPT_MASK_OFFSET 8
#define HVR_PENDING_SEND_SZ_OFFSET 12
#define HVR_FEATURE_BITS_OFFSET 64

/* ---- hvkvm's API ----------------------------------------------------------------------------- */

/* Return values (negative) of the calls below. */
enum hvr_status {
	HVR_OK = 0,
	HVR_EMPTY = -1,   /* nothing to read */
	HVR_FULL = -2,    /* not enough free space now; see hvr_out_request_space() */
	HVR_EINVAL = -3,  /* caller error: bad argument, packet can never fit; ring unchanged */
	HVR_EBROKEN = -4, /* the view is broken (the peer corrupted the ring); see r.broken */
	HVR_ERANGE = -5   /* hvr_in_copy()/hvr_in_ptr(): outside the packet */
};

/* Why a view is broken (r.broken); 0 while it is fine. Sticky. */
enum hvr_broken {
	HVR_BROKEN_NONE = 0,
	HVR_BROKEN_WRITE_INDEX = 1,   /* write_index >= size, unaligned, or moved backwards */
	HVR_BROKEN_READ_INDEX = 2,    /* read_index >= size, unaligned, or moved past our writes */
	HVR_BROKEN_AVAIL = 3,         /* fewer bytes available than a descriptor and trailer */
	HVR_BROKEN_DESC_LENGTHS = 4,  /* offset8 < 2 (or < the type's header), len8 < offset8,
				       * or packet + trailer beyond the bytes available */
	HVR_BROKEN_DESC_FLAGS = 5,    /* flags other than COMPLETION_REQUESTED */
	HVR_BROKEN_DESC_TYPE = 6,     /* type other than INBAND, XFER_PAGES, GPA_DIRECT, COMP */
	HVR_BROKEN_GPA_RANGES = 7,    /* GPA direct: no range, an empty range, byte_offset > 4095,
				       * or PFNs beyond the header */
	HVR_BROKEN_XFER_RANGES = 8    /* transfer pages: range_cnt beyond the header */
};

/* hvr_*_attach() flags */
#define HVR_DOUBLE_MAPPED 1u /* buffer[size .. 2*size) mirrors buffer[0 .. size) */

/* Largest data area supported (2^30 bytes); offsets + lengths then never overflow u32. */
#define HVR_MAX_DATA_SIZE (1u << 30)

/* State common to both views. Read the fields, do not write them. */
struct hvr_ring {
	struct hv_ring_buffer *hdr; /* the shared control page */
	uint8_t *data;              /* hdr->buffer */
	uint32_t size;              /* bytes in the data area: a multiple of 4096 */
	uint32_t double_mapped;     /* 1 if HVR_DOUBLE_MAPPED */
	uint32_t broken;            /* enum hvr_broken, sticky */
	uint32_t reserved;
};

/* The sending end of a ring. */
struct hvr_out {
	struct hvr_ring r;
	uint32_t committed_in; /* write_index as we last published it */
	uint32_t next_in;      /* where the next packet goes (after uncommitted packets) */
	uint32_t cached_out;   /* read_index as we last read (and validated) it */
	uint32_t pending_set;  /* we set pending_send_sz and have not cleared it yet */
};

/* The receiving end of a ring. */
struct hvr_in {
	struct hvr_ring r;
	uint32_t committed_out; /* read_index as we last published it */
	uint32_t next_out;      /* the next packet to read (after read, uncommitted packets) */
	uint32_t cached_in;     /* write_index as we last read (and validated) it */
	uint32_t reserved;
};

/* One parsed packet: the validated copy of its descriptor and where it is. */
struct hvr_pkt {
	uint16_t type;            /* enum vmbus_packet_type: INBAND, XFER_PAGES, GPA_DIRECT, COMP */
	uint16_t flags;           /* 0 or VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED */
	uint16_t offset8;
	uint16_t len8;
	uint64_t trans_id;
	uint32_t offset;          /* ring offset of the descriptor (< size) */
	uint32_t total;           /* ring bytes the packet uses: len8 * 8 + trailer */
	uint32_t payload_off;     /* offset8 * 8, from the descriptor */
	uint32_t payload_len;     /* (len8 - offset8) * 8 (padding included) */
	uint32_t range_count;     /* GPA direct: ranges; transfer pages: range_cnt; else 0 */
	uint16_t xfer_pageset_id; /* transfer pages only */
	uint8_t sender_owns_set;  /* transfer pages only */
	uint8_t reserved;
};

/* One piece of an outgoing packet's body (type-specific header and payload). */
struct hvr_iov {
	const void *base;
	uint32_t len;
};

/* Iterator over the GPA ranges of a GPA-direct packet: {0, 0} to start. */
struct hvr_gpa_iter {
	uint32_t pos;  /* packet offset of the next range header */
	uint32_t left; /* ranges still to come */
};

/* One GPA range of a GPA-direct packet, as hvr_in_gpa_range() returns it. */
struct hvr_gpa_range {
	uint32_t byte_count;
	uint32_t byte_offset; /* < 4096 */
	uint32_t pfn_count;   /* ceil((byte_offset + byte_count) / 4096) */
	uint32_t pfn_off;     /* packet offset of pfn_array (copy it with hvr_in_copy()) */
};

/*
 * Zero the control page of a new ring (indices 0, interrupts unmasked, no pending send size) and
 * set feat_pending_send_sz. The side that allocates the ring (the guest) does this once, before
 * offering it to the peer.
 */
void hvr_ring_format(struct hv_ring_buffer *hdr);

/* Bytes a packet takes in the ring: descriptor + hdr_len + payload padded to 8 + trailer. */
uint32_t hvr_packet_total(uint32_t hdr_len, uint32_t payload_len);

/* ---- sending ---------------------------------------------------------------------------------- */

/*
 * Attach the sending end to a ring whose control page is `hdr` and whose data area is
 * hdr->buffer, `size` bytes (a multiple of 4096, at most HVR_MAX_DATA_SIZE); flags: 0 or
 * HVR_DOUBLE_MAPPED. Reads and validates both indices (a bad one leaves the view broken and
 * returns HVR_EBROKEN), clears pending_send_sz and sets feat_pending_send_sz: the writer
 * announces that it sets pending_send_sz when it waits for space (OpenVMM does the same).
 * Returns HVR_OK, HVR_EINVAL (bad size or flags; the view is unusable) or HVR_EBROKEN.
 */
int hvr_out_attach(struct hvr_out *out, struct hv_ring_buffer *hdr, uint32_t size, uint32_t flags);

/*
 * Append one packet after the uncommitted ones: descriptor {type, offset8 = (16 + hdr_len) / 8,
 * len8, flags, trans_id}, then the concatenation of iov[0..iovcnt) (its first hdr_len bytes are
 * the type-specific header), zero padding to 8, trailer. Not visible to the reader until
 * hvr_out_commit(). A successful write clears a pending_send_sz this end had set.
 * type: VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_XFER_PAGES, VM_PKT_DATA_USING_GPA_DIRECT or
 * VM_PKT_COMP; flags: 0 or VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED; hdr_len a multiple of
 * 8 (at least 8 for transfer pages and GPA direct). Returns HVR_OK; HVR_FULL when it does not fit
 * now; HVR_EINVAL for bad arguments or a packet larger than the ring can ever hold
 * (hvr_packet_total() > size - 8, or len8 > 0xffff); HVR_EBROKEN.
 */
int hvr_out_write(struct hvr_out *out, uint16_t type, uint16_t flags, uint64_t trans_id,
		  uint32_t hdr_len, const struct hvr_iov *iov, uint32_t iovcnt);

/* hvr_out_write() of an in-band packet (flags 0 or COMPLETION_REQUESTED) with one payload. */
int hvr_out_write_inband(struct hvr_out *out, uint16_t flags, uint64_t trans_id,
			 const void *payload, uint32_t len);

/* hvr_out_write() of a completion (VM_PKT_COMP, flags 0) with one payload. */
int hvr_out_write_comp(struct hvr_out *out, uint64_t trans_id, const void *payload, uint32_t len);

/*
 * Publish the packets written since the last commit (write_index = next_in). Returns 1 if the
 * reader must be signalled (the ring was empty before and interrupt_mask is clear), 0 if not
 * (also when nothing was written), HVR_EBROKEN if the view is broken (nothing published) or the
 * read_index found while deciding is invalid (published, the view is now broken).
 */
int hvr_out_commit(struct hvr_out *out);

/* Forget the packets written since the last commit. */
void hvr_out_revert(struct hvr_out *out);

/*
 * The largest packet (hvr_packet_total() bytes) that fits now, 0 if none; re-reads read_index.
 * HVR_EBROKEN if broken.
 */
int hvr_out_free(struct hvr_out *out);

/*
 * The writer could not write a packet of `total` ring bytes (hvr_packet_total()). Ask the reader
 * to signal when space frees: pending_send_sz = max(total, size / 4) rounded up to 8, at most
 * size - 8 (a quarter ring of hysteresis, so the reader does not signal per packet). Then re-check
 * (a full fence orders the store before reading read_index): if the packet fits now,
 * pending_send_sz is cleared again and 1 is returned (write now); else 0 (wait for the signal,
 * then write). HVR_EINVAL if total can never fit; HVR_EBROKEN.
 */
int hvr_out_request_space(struct hvr_out *out, uint32_t total);

/* Clear pending_send_sz (only if this end set it). */
void hvr_out_clear_pending(struct hvr_out *out);

/* ---- receiving -------------------------------------------------------------------------------- */

/*
 * Attach the receiving end (see hvr_out_attach() for hdr, size, flags). Reads and validates both
 * indices; writes nothing to the ring (interrupt_mask is left as it is).
 * Returns HVR_OK, HVR_EINVAL or HVR_EBROKEN.
 */
int hvr_in_attach(struct hvr_in *in, struct hv_ring_buffer *hdr, uint32_t size, uint32_t flags);

/*
 * Parse and validate the next packet without consuming it. Returns HVR_OK and fills *pkt,
 * HVR_EMPTY, or HVR_EBROKEN (the packet was malformed: the view is now broken).
 */
int hvr_in_peek(struct hvr_in *in, struct hvr_pkt *pkt);

/*
 * hvr_in_peek(), then consume the packet: the private cursor moves past it. Its bytes stay valid
 * (and in place) until hvr_in_commit(); read them with hvr_in_copy(), hvr_in_ptr() or
 * hvr_in_payload().
 */
int hvr_in_read(struct hvr_in *in, struct hvr_pkt *pkt);

/*
 * Copy `len` bytes at packet offset `off` (from the descriptor; the whole packet is
 * [0, len8 * 8)) to dst, splitting a wrapped range in the plain view. HVR_OK, HVR_ERANGE if the
 * range is not inside the packet, HVR_EBROKEN.
 */
int hvr_in_copy(const struct hvr_in *in, const struct hvr_pkt *pkt, uint32_t off, void *dst,
		uint32_t len);

/*
 * In-place pointer to `len` bytes at packet offset `off`: always contiguous in the double-mapped
 * view; NULL in the plain view when the range wraps. NULL also if the range is not inside the
 * packet or the view is broken. Valid until hvr_in_commit(); the bytes are the peer's (copy once).
 */
const void *hvr_in_ptr(const struct hvr_in *in, const struct hvr_pkt *pkt, uint32_t off,
		       uint32_t len);

/* Peek in place: hvr_in_ptr(in, pkt, pkt->payload_off, pkt->payload_len); *len = payload_len. */
const void *hvr_in_payload(const struct hvr_in *in, const struct hvr_pkt *pkt, uint32_t *len);

/*
 * Iterate the GPA ranges of a GPA-direct packet: start with *it = {0, 0}; each call copies one
 * range header once, validates it again (it is the peer's memory) and advances *it. Returns
 * HVR_OK, HVR_EMPTY after the last range, HVR_ERANGE (not a GPA-direct packet, or a range that
 * is no longer valid), HVR_EBROKEN. Copy a range's PFNs with hvr_in_copy(in, pkt, pfn_off, ...).
 */
int hvr_in_gpa_range(const struct hvr_in *in, const struct hvr_pkt *pkt, struct hvr_gpa_iter *it,
		     struct hvr_gpa_range *range);

/*
 * Publish the consumed packets (read_index = next_out). Returns 1 if the writer must be signalled
 * (Linux's hv_pkt_iter_close(): feat_pending_send_sz set, pending_send_sz & ~7 non-zero, free
 * space was <= it before this commit and is > it now), 0 if not (also when nothing was
 * consumed), HVR_EBROKEN.
 */
int hvr_in_commit(struct hvr_in *in);

/* Un-consume the packets read since the last commit. */
void hvr_in_revert(struct hvr_in *in);

/* Bytes written and not yet consumed (re-reads write_index); HVR_EBROKEN. */
int hvr_in_avail(struct hvr_in *in);

/*
 * Set interrupt_mask: 1 while draining (the writer does not signal), 0 when idle. Unmasking
 * alone can miss a packet; use hvr_in_unmask().
 */
void hvr_in_set_interrupt_mask(struct hvr_in *in, uint32_t mask);

/*
 * Clear interrupt_mask, then re-check the ring (a full fence between the two, pairing with the
 * writer's fence between publishing write_index and reading interrupt_mask). Returns 1 if
 * packets are waiting (keep reading: their writer may not have signalled), 0 if the ring is empty
 * (sleep until signalled), HVR_EBROKEN.
 */
int hvr_in_unmask(struct hvr_in *in);

/* The reason a view is broken (enum hvr_broken), 0 if it is fine. */
uint32_t hvr_broken_reason(const struct hvr_ring *r);

#endif /* HVKVM_VMBUS_RING_H */
