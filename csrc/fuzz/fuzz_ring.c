/*
 * fuzz_ring.c - libFuzzer harness for the VMBus ring parser (csrc/vmbus_ring.c) as the parent
 * uses it: the guest owns every byte of the ring (header and data) and may change any of them
 * between two calls (the double-fetch case), and the parent reads packets, their GPA ranges and
 * payloads, commits, writes replies into a second ring whose read_index the guest also owns.
 *
 * Input: a config byte, the guest-written header fields, then a list of operations (see the
 * switch below). Invariants checked on every packet the parser accepts (a violation traps):
 * the packet lies inside the ring, its lengths agree, every GPA range lies inside the packet's
 * header, every pointer handed out lies inside the view.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -DHVR_HOSTED -I.. fuzz_ring.c
 *        ../vmbus_ring.c   (tests/test_fuzz.py does it).
 */
#include "fuzz_common.h"

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

static uint8_t scratch[(4u << 12) + 64];

static void check_ptr(const struct fz_ring *r, const void *p, uint32_t len)
{
	const uint8_t *lo = r->hdr->buffer;
	const uint8_t *hi = lo + (r->double_mapped ? 2u : 1u) * r->size;

	CHECK((const uint8_t *)p >= lo && (const uint8_t *)p + len <= hi);
}

/* Everything the parent does with an accepted packet. */
static void inspect(struct hvr_in *in, const struct fz_ring *r, const struct hvr_pkt *pkt,
		    struct fz_in *fi, int fresh)
{
	uint32_t len = 0;
	const void *p;
	struct hvr_gpa_iter it = {0, 0};
	struct hvr_gpa_range gr;
	int rc, n = 0;

	CHECK(pkt->offset < r->size && (pkt->offset & 7) == 0);
	CHECK(pkt->total == (uint32_t)pkt->len8 * 8 + VMBUS_PKT_TRAILER && pkt->total <= r->size);
	CHECK(pkt->offset8 >= 2 && pkt->offset8 <= pkt->len8);
	CHECK(pkt->payload_off == (uint32_t)pkt->offset8 * 8);
	CHECK(pkt->payload_off + pkt->payload_len == (uint32_t)pkt->len8 * 8);

	p = hvr_in_payload(in, pkt, &len);
	if (r->double_mapped && fresh)
		CHECK(p != NULL);
	if (p) {
		CHECK(len == pkt->payload_len);
		check_ptr(r, p, len);
		/* touch every byte the pointer promises */
		volatile uint8_t sum = 0;
		for (uint32_t i = 0; i < len; i++)
			sum ^= ((const uint8_t *)p)[i];
		(void)sum;
	}
	if (pkt->len8 * 8u <= sizeof(scratch)) {
		rc = hvr_in_copy(in, pkt, 0, scratch, pkt->len8 * 8u);
		CHECK(rc == HVR_OK || (!fresh && rc == HVR_EBROKEN));
	}
	/* a fuzzed sub-range: in the packet or refused */
	{
		uint32_t off = fz_u16(fi), l = fz_u16(fi);

		rc = hvr_in_copy(in, pkt, off, scratch, l > sizeof(scratch) ? sizeof(scratch) : l);
		CHECK(rc == HVR_OK || rc == HVR_ERANGE || rc == HVR_EBROKEN);
		p = hvr_in_ptr(in, pkt, off, l);
		if (p)
			check_ptr(r, p, l);
	}
	if (pkt->type == VM_PKT_DATA_USING_GPA_DIRECT) {
		while ((rc = hvr_in_gpa_range(in, pkt, &it, &gr)) == HVR_OK) {
			CHECK(gr.byte_count && gr.byte_offset < 4096);
			CHECK(gr.pfn_off + 8u * gr.pfn_count <= pkt->payload_off);
			if (8u * gr.pfn_count <= sizeof(scratch))
				CHECK(hvr_in_copy(in, pkt, gr.pfn_off, scratch, 8u * gr.pfn_count) ==
				      HVR_OK);  /* the view cannot break between the two calls */
			n++;
		}
		/* the guest may have changed the ranges since the parse: refused, never trusted */
		CHECK(rc == HVR_EMPTY || rc == HVR_ERANGE || rc == HVR_EBROKEN);
		CHECK(n <= (int)pkt->range_count);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in fi = {data, size};
	struct fz_ring ra, rb;
	struct hvr_in in;
	struct hvr_out out;
	struct hvr_pkt pkt, last;
	int have_last = 0, rc;
	uint8_t cfg = fz_u8(&fi);
	uint32_t pages = 1 + (cfg & 3);
	int dm = (cfg >> 2) & 1;
	static uint8_t payload[(4u << 12)];

	if (fz_ring_alloc(&ra, pages, dm) || fz_ring_alloc(&rb, 1 + ((cfg >> 3) & 1), dm))
		abort();
	ra.hdr->write_index = fz_u32(&fi);
	ra.hdr->read_index = fz_u32(&fi);
	ra.hdr->interrupt_mask = fz_u32(&fi);
	ra.hdr->pending_send_sz = fz_u32(&fi);
	ra.hdr->feature_bits.value = fz_u32(&fi);
	rb.hdr->read_index = (cfg & 0x80) ? fz_u32(&fi) : 0;
	rb.hdr->write_index = rb.hdr->read_index;

	rc = hvr_in_attach(&in, ra.hdr, ra.size, fz_ring_flags(&ra));
	CHECK(rc == HVR_OK || rc == HVR_EBROKEN);
	rc = hvr_out_attach(&out, rb.hdr, rb.size, fz_ring_flags(&rb));
	CHECK(rc == HVR_OK || rc == HVR_EBROKEN);

	for (int steps = 0; fz_left(&fi) && steps < 256; steps++) {
		uint8_t op = fz_u8(&fi) % 12;

		switch (op) {
		case 0: { /* the guest writes data bytes */
			uint32_t off = fz_u16(&fi) % ra.size, n = fz_u8(&fi);
			uint8_t buf[256];

			fz_bytes(&fi, buf, n);
			fz_ring_poke(&ra, off, buf, n);
			break;
		}
		case 1: { /* the guest writes a header word of either ring */
			uint8_t which = fz_u8(&fi);
			uint32_t v = fz_u32(&fi);
			struct hv_ring_buffer *h = (which & 8) ? rb.hdr : ra.hdr;

			switch (which & 7) {
			case 0: h->write_index = v; break;
			case 1: h->read_index = v; break;
			case 2: h->interrupt_mask = v; break;
			case 3: h->pending_send_sz = v; break;
			default: h->feature_bits.value = v; break;
			}
			break;
		}
		case 2: /* peek and look at the packet */
		case 3: /* read (consume) and look */
			rc = op == 2 ? hvr_in_peek(&in, &pkt) : hvr_in_read(&in, &pkt);
			CHECK(rc == HVR_OK || rc == HVR_EMPTY || rc == HVR_EBROKEN);
			if (rc == HVR_OK) {
				inspect(&in, &ra, &pkt, &fi, 1);
				last = pkt;
				have_last = 1;
			}
			break;
		case 4:
			rc = hvr_in_commit(&in);
			CHECK(rc == 0 || rc == 1 || rc == HVR_EBROKEN);
			break;
		case 5:
			hvr_in_revert(&in);
			break;
		case 6: {
			uint8_t k = fz_u8(&fi);

			if (k & 1) {
				rc = hvr_in_avail(&in);
				CHECK(rc == HVR_EBROKEN || (rc >= 0 && (uint32_t)rc < ra.size));
			}
			if (k & 2)
				hvr_in_set_interrupt_mask(&in, k & 4);
			if (k & 8)
				(void)hvr_in_unmask(&in);
			break;
		}
		case 7: { /* the parent answers into the guest's receive ring */
			uint8_t t = fz_u8(&fi);
			uint16_t flags = fz_u8(&fi) & 3;
			uint32_t hl = (fz_u8(&fi) & 7) * 8u, pl = fz_u16(&fi) % sizeof(payload);
			static const uint16_t types[] = {VM_PKT_DATA_INBAND, VM_PKT_COMP,
							 VM_PKT_DATA_USING_XFER_PAGES,
							 VM_PKT_DATA_USING_GPA_DIRECT, 0, 0xffff};
			struct hvr_iov iov = {payload, hl + pl};

			memset(payload, t, hl + pl < sizeof(payload) ? hl + pl : sizeof(payload));
			if (hl + pl > sizeof(payload))
				break;
			rc = hvr_out_write(&out, types[t % 6], flags, fz_u64(&fi), hl, &iov, 1);
			CHECK(rc == HVR_OK || rc == HVR_FULL || rc == HVR_EINVAL || rc == HVR_EBROKEN);
			rc = hvr_out_commit(&out);
			CHECK(rc == 0 || rc == 1 || rc == HVR_EBROKEN);
			break;
		}
		case 8: {
			uint32_t want = fz_u32(&fi);

			rc = hvr_out_request_space(&out, want);
			CHECK(rc == 0 || rc == 1 || rc == HVR_EINVAL || rc == HVR_EBROKEN);
			rc = hvr_out_free(&out);
			CHECK(rc == HVR_EBROKEN || (rc >= 0 && (uint32_t)rc < rb.size));
			hvr_out_clear_pending(&out);
			break;
		}
		case 9: /* the guest "consumes" the parent's replies: read_index = write_index */
			rb.hdr->read_index = rb.hdr->write_index;
			break;
		case 10: /* the last packet record again, after the guest may have changed the ring */
			if (have_last)
				inspect(&in, &ra, &last, &fi, 0);
			break;
		case 11: { /* a packet record with fields the parent got wrong: refused, never used */
			struct hvr_pkt f = have_last ? last : pkt;
			struct hvr_gpa_iter it = {fz_u32(&fi), fz_u32(&fi)};
			struct hvr_gpa_range gr;
			uint32_t n;
			const void *p;

			f.offset = fz_u32(&fi);
			f.offset8 = fz_u16(&fi);
			f.len8 = fz_u16(&fi);
			f.payload_off = fz_u32(&fi);
			f.payload_len = fz_u32(&fi);
			f.range_count = fz_u32(&fi);
			f.type = VM_PKT_DATA_USING_GPA_DIRECT;
			p = hvr_in_payload(&in, &f, &n);
			if (p)
				check_ptr(&ra, p, n);
			for (int k = 0; k < 64 && hvr_in_gpa_range(&in, &f, &it, &gr) == HVR_OK; k++)
				;
			break;
		}
		}
	}
	fz_ring_free(&ra);
	fz_ring_free(&rb);
	return 0;
}
