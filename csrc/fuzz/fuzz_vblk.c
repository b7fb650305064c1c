/*
 * fuzz_vblk.c - libFuzzer harness for the virtio-blk data plane (csrc/hvr_virtio_blk.c): the
 * guest owns the split virtqueue (descriptor table, available ring, used_event) and every byte
 * of its RAM, and rewrites any of it between the device's passes; the device serves requests
 * against a disk backed by a memfd, in the caller's thread (hvr_vblk_poll).
 *
 * Guest RAM is two heap blocks at made-up GPAs (AddressSanitizer reports any byte outside them);
 * the queue lives in the first. Input: a configuration byte (queue size, EVENT_IDX, read-only /
 * O_DIRECT flags, disk size), then rounds of
 *   u8 k, k x {u16 index, u8 mode, addr (u16 offset or u64), len (u16 or u32), u8 flags,
 *              u16 next}                                  descriptors rewritten
 *   u8 w, w x {u16 offset, u8 n, n bytes}                 RAM bytes written (request headers)
 *   u8 new, new x u16 head, u8 avail flags, u16 used_event  the available ring moved on
 * each followed by one pass of the device.
 *
 * Invariants (a violation traps): a device that is not broken has completed exactly the
 * requests it took (last_avail == used idx); a broken one stays broken and serves nothing more.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -I.. fuzz_vblk.c
 *        (the data plane is included: it is one file with no header; tests/test_fuzz.py does it).
 */
#include "../hvr_virtio_blk.c"

#include <stdio.h>
#include <sys/mman.h>

#include "fuzz_common.h"

#define RAM0_GPA 0x100000ull
#define RAM0_SIZE (64u * 1024u)
#define RAM1_GPA 0x200000ull
#define RAM1_SIZE (16u * 1024u)
#define Q_DESC RAM0_GPA
#define Q_AVAIL (RAM0_GPA + 0x1000)
#define Q_USED (RAM0_GPA + 0x2000)
#define DISK_SECTORS 128u

static int disk_fd(void)
{
	static int fd = -1;

	if (fd < 0) {
		fd = memfd_create("fz-vblk", MFD_CLOEXEC);
		if (fd < 0 || ftruncate(fd, (off_t)DISK_SECTORS * HVR_VBLK_SECTOR) < 0)
			abort();
	}
	return fd;
}

static uint64_t fz_addr(struct fz_in *in, uint8_t mode)
{
	switch (mode & 3) {
	case 0:
		return fz_u64(in);
	case 1:
		return RAM1_GPA + fz_u16(in) % (RAM1_SIZE + 64);
	default:
		return RAM0_GPA + fz_u16(in) % (RAM0_SIZE + 64);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in fi = {data, size};
	uint8_t cfg = fz_u8(&fi);
	uint32_t num = 1u << (cfg & 7);
	uint8_t *ram0 = calloc(1, RAM0_SIZE), *ram1 = calloc(1, RAM1_SIZE);
	struct hvr_vblk *p = hvr_vblk_new();
	volatile struct vq_desc *desc;
	volatile uint16_t *avail;
	uint16_t next_avail = 0;
	uint32_t was_broken = 0;

	if (!ram0 || !ram1 || !p || hvr_vblk_add_region(p, RAM0_GPA, RAM0_SIZE, ram0) ||
	    hvr_vblk_add_region(p, RAM1_GPA, RAM1_SIZE, ram1) ||
	    hvr_vblk_set_disk(p, disk_fd(), DISK_SECTORS - 3u * (cfg >> 6), (cfg >> 4) & 3,
			      (const uint8_t *)"fuzz-vblk-serial-0001") ||
	    hvr_vblk_set_queue(p, num, Q_DESC, Q_AVAIL, Q_USED, (cfg >> 3) & 1))
		__builtin_trap(); /* the configuration above is always valid */
	desc = (volatile struct vq_desc *)ram0;
	avail = (volatile uint16_t *)(ram0 + (Q_AVAIL - RAM0_GPA));

	for (int round = 0; round < 16 && fz_left(&fi); round++) {
		uint8_t k = fz_u8(&fi), w, nnew;
		uint16_t before_used;
		int rc;

		for (uint8_t i = 0; i < k && i < 2 * num; i++) {
			uint16_t idx = fz_u16(&fi) % num;
			uint8_t mode = fz_u8(&fi);

			desc[idx].addr = fz_addr(&fi, mode);
			desc[idx].len = mode & 4 ? fz_u32(&fi) : fz_u16(&fi);
			desc[idx].flags = fz_u8(&fi);
			desc[idx].next = fz_u16(&fi) % (num + 2);
		}
		w = fz_u8(&fi) % 8;
		for (uint8_t i = 0; i < w; i++) {
			uint16_t off = fz_u16(&fi) % RAM0_SIZE;
			uint8_t n = fz_u8(&fi);

			if (n > RAM0_SIZE - off)
				n = (uint8_t)(RAM0_SIZE - off);
			fz_bytes(&fi, ram0 + off, n);
		}
		nnew = fz_u8(&fi);
		for (uint8_t i = 0; i < nnew && i < num + 2; i++)
			avail[2 + (uint16_t)(next_avail + i) % num] = fz_u16(&fi) % (num + 1);
		next_avail = (uint16_t)(next_avail + nnew);
		avail[0] = fz_u8(&fi) & 1;
		avail[2 + num] = fz_u16(&fi);
		__atomic_store_n(&avail[1], next_avail, __ATOMIC_RELEASE);

		before_used = p->used_idx;
		rc = hvr_vblk_poll(p);
		if (was_broken && (rc != -1 || p->used_idx != before_used))
			__builtin_trap(); /* broken is final: nothing served afterwards */
		was_broken = hvr_vblk_broken(p, NULL, NULL, NULL);
		/* (the guest's own copy of the used ring proves nothing: a read request may DMA
		 * disk data over it, as a guest may) */
		if (!was_broken && (rc < 0 || p->last_avail != p->used_idx))
			__builtin_trap();
	}
#ifdef FZ_VERBOSE /* what a seed did: clang -DFZ_VERBOSE ... && ./fuzz_vblk seed-* */
	fprintf(stderr, "vblk: requests %llu reads %llu writes %llu flushes %llu get_ids %llu "
		"io_errors %llu bounced %llu broken %u\n",
		(unsigned long long)p->stats.requests, (unsigned long long)p->stats.reads,
		(unsigned long long)p->stats.writes, (unsigned long long)p->stats.flushes,
		(unsigned long long)p->stats.get_ids, (unsigned long long)p->stats.io_errors,
		(unsigned long long)p->stats.bounced, was_broken);
#endif
	hvr_vblk_free(p);
	free(ram0);
	free(ram1);
	return 0;
}
