/*
 * u_echo.c - vmbus_echo's user-accessible part: the payload pattern, the ring area, the size
 * schedule, the echo check, and the ring-3 polling phase (uio_hv_generic style: the task owns the
 * channel's rings, polls them with interrupt_mask set, and kicks the host with `out %eax, $0xe4`).
 */
#include "echo.h"

uint8_t echo_pattern[ECHO_PATTERN_SIZE] __attribute__((aligned(4096)));
uint8_t echo_ring_area[2 * (ECHO_MAX_RING_PAGES + 1) * 4096] __attribute__((aligned(4096)));
struct echo_run echo_user_run;

static uint64_t mix(uint64_t x)
{
	/* splitmix64 */
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

int echo_fill_pattern(void *arg)
{
	uint64_t *w = (uint64_t *)echo_pattern;

	(void)arg;
	for (uint64_t i = 0; i < ECHO_PATTERN_SIZE / 8; i++)
		w[i] = mix(i);
	return 0;
}

static const uint32_t special_sizes[] = {
	1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 63, 64, 65, 100,
	127, 128, 129, 255, 256, 257, 511, 512, 513, 1000, 1023, 1024, 1025, 2047, 2048, 2049,
	4095, 4096, 4097, 8191, 8192, 8193, 16383, 16384, 16385, 32767, 32768, 32769,
	65535, 65536, 65537, 131071, 131072, 131073, 262143, 262144,
};

uint32_t echo_size(uint64_t i, uint32_t max_len)
{
	uint64_t x;

	if (i < HV_ARRAY_SIZE(special_sizes)) {
		uint32_t s = special_sizes[i];

		if (s > max_len) /* past the largest: sizes just below it */
			s = max_len > i % 8 ? max_len - (uint32_t)(i % 8) : max_len;
		return s;
	}
	if (i == HV_ARRAY_SIZE(special_sizes))
		return max_len;
	x = mix(i * 0x51ed2701ULL);
	switch (x & 3) {
	case 0:
		return 1 + (uint32_t)((x >> 8) % (max_len < 64 ? max_len : 64));
	case 1:
		return 1 + (uint32_t)((x >> 8) % (max_len < 1024 ? max_len : 1024));
	case 2:
		return max_len - (uint32_t)((x >> 8) % (max_len < 64 ? max_len : 64));
	default:
		return 1 + (uint32_t)((x >> 8) % max_len);
	}
}

uint32_t echo_offset(uint64_t i)
{
	return (uint32_t)(mix(i) % ECHO_PATTERN_SPREAD);
}

void echo_check(struct echo_run *run, const struct vmbus_rings *rings, const struct hvr_pkt *pkt,
		uint64_t i)
{
	uint32_t len = echo_size(i, run->max_len);
	uint64_t trans = ECHO_TRANS(run->phase, i);
	long d;

	HV_ASSERT_EQ(pkt->type, VM_PKT_DATA_INBAND, "echo %llu: packet type",
		     (unsigned long long)i);
	HV_ASSERT_EQ(pkt->trans_id, trans, "echo %llu: trans_id (len %u)", (unsigned long long)i,
		     len);
	/* VMBus carries lengths in 8-byte units: the echo is our payload with its zero padding. */
	HV_ASSERT_EQ(pkt->payload_len, (len + 7) & ~7u, "echo %llu: payload length for %u bytes",
		     (unsigned long long)i, len);
	d = vmbus_rings_payload_cmp(rings, pkt, echo_pattern + echo_offset(i), len);
	HV_ASSERT(d == -1, "echo %llu (trans_id 0x%llx, %u bytes at ring offset %u): byte %ld "
		  "differs", (unsigned long long)i, (unsigned long long)trans, len, pkt->offset, d);
	if (len & 7) {
		static const uint8_t zeros[8];
		uint8_t pad[8];

		HV_ASSERT_EQ(hvr_in_copy(&rings->in, pkt, pkt->payload_off + len, pad,
					 8 - (len & 7)), HVR_OK);
		HV_ASSERT(memcmp(pad, zeros, 8 - (len & 7)) == 0, "echo %llu: padding not zero",
			  (unsigned long long)i);
	}
	run->st.packets++;
	run->st.bytes += len;
}

void echo_account(struct echo_run *run, const struct hvr_pkt *pkt, uint32_t *last_in_off)
{
	if (pkt->offset + pkt->total > run->data_size)
		run->st.straddles++;
	if (pkt->offset < *last_in_off)
		run->st.in_wraps++;
	*last_in_off = pkt->offset;
}

/* The ring-3 phase: up to `window` packets in flight, written in batches and committed once
 * (kick only when the commit says so), echoes drained and checked in batches. */
int echo_user_task(void *arg)
{
	struct echo_run *run = arg;
	struct vmbus_rings *r = &run->rings;
	uint64_t sent = 0, recvd = 0, t0 = echo_rdtsc(), last_progress = t0;
	uint32_t last_in_off = 0, last_out = r->out.next_in;
	struct hvr_pkt pkt;
	int rc;

	/* Poll: the host need not interrupt us for echoes. */
	hvr_in_set_interrupt_mask(&r->in, 1);
	while (recvd < run->count) {
		bool progress = false;
		unsigned wrote = 0, read = 0;

		while (sent < run->count && sent - recvd < run->window) {
			uint32_t len = echo_size(sent, run->max_len);

			rc = vmbus_rings_write(r, echo_pattern + echo_offset(sent), len,
					       ECHO_TRANS(run->phase, sent), 0);
			if (rc == HVR_FULL) {
				run->st.full++;
				break;
			}
			HV_ASSERT_EQ(rc, HVR_OK, "ring 3: write of packet %llu (%u bytes)",
				     (unsigned long long)sent, len);
			if (len > run->st.max_len)
				run->st.max_len = len;
			if (r->out.next_in < last_out)
				run->st.out_wraps++;
			last_out = r->out.next_in;
			sent++;
			wrote++;
		}
		if (wrote) {
			rc = vmbus_rings_commit(r);
			HV_ASSERT(rc >= 0, "ring 3: send ring broken (%u)", r->out.r.broken);
			if (rc == 1)
				vmbus_rings_kick(r);
			progress = true;
		}
		while ((rc = vmbus_rings_read(r, &pkt)) == HVR_OK) {
			echo_account(run, &pkt, &last_in_off);
			echo_check(run, r, &pkt, recvd);
			recvd++;
			read++;
		}
		HV_ASSERT_EQ(rc, HVR_EMPTY, "ring 3: receive ring broken (%u)", r->in.r.broken);
		if (read) {
			rc = vmbus_rings_release(r);
			HV_ASSERT(rc >= 0, "ring 3: receive ring broken on commit");
			if (rc == 1)
				vmbus_rings_kick(r);
			progress = true;
		}
		if (progress) {
			last_progress = echo_rdtsc();
		} else {
			hv_pause();
			if (run->stall_cycles && echo_rdtsc() - last_progress > run->stall_cycles)
				HV_ASSERT(0, "ring 3: no progress: sent %llu, echoed %llu; send ring "
					  "write %u read %u, receive ring write %u read %u",
					  (unsigned long long)sent, (unsigned long long)recvd,
					  r->out.r.hdr->write_index, r->out.r.hdr->read_index,
					  r->in.r.hdr->write_index, r->in.r.hdr->read_index);
		}
	}
	run->st.cycles = echo_rdtsc() - t0;
	return 0;
}
