/*
 * u_check.c - disk_check's task (user-accessible: runs as a ring-3 task, or in ring 0): every
 * READ of a blk_job_sweep checked against disk_fill's format, the lowest mismatch reported.
 */
#include "check.h"

struct blkdev check_dev;
struct check_run check_user_run;

/* Check `sectors` sectors from `lba` against disk_fill's format; record the first mismatch. */
static void check(void *arg, const uint8_t *buf, uint64_t lba, uint32_t sectors)
{
	struct check_run *k = arg;

	for (uint32_t s = 0; s < sectors; s++) {
		const uint8_t *p = buf + (size_t)s * BLK_SECTOR;
		uint64_t w[2];
		uint32_t bad = 0;

		__builtin_memcpy(w, p, 16);
		/* bad = the differing byte + 1: 1 = the LBA word, 9 = the seed word */
		if (w[0] != lba + s) {
			bad = 1;
		} else if (w[1] != k->seed) {
			bad = 9;
		} else {
			const uint64_t *q = (const uint64_t *)(const void *)(p + 16);

			for (uint32_t i = 0; i < (BLK_SECTOR - 16) / 8; i++)
				if (q[i]) {
					for (uint32_t j = 0; j < 8; j++)
						if (p[16 + 8 * i + j]) {
							bad = 16 + 8 * i + j + 1;
							break;
						}
					break;
				}
		}
		if (bad && lba + s < k->bad_lba) {
			k->bad_lba = lba + s;
			k->bad_word[0] = w[0];
			k->bad_word[1] = w[1];
			k->bad_offset = bad - 1;
		}
		if (bad)
			return;
	}
}

/* After a mismatch nothing new is read; what is in flight (lower LBAs among it) is still
 * checked, so the report names the lowest bad sector. */
static bool found_bad(void *arg)
{
	const struct check_run *k = arg;

	return k->bad_lba != ~0ULL;
}

int check_task(void *arg)
{
	struct check_run *k = arg;
	const struct blk_sweep sweep = { .op = BLK_OP_READ, .who = "disk_check", .complete = check,
					 .stop = found_bad, .arg = k };

	k->bad_lba = ~0ULL;
	blk_job_sweep(&k->j, &sweep);
	if (k->bad_lba != ~0ULL) {
		if (k->bad_offset < 8)
			HV_ASSERT(0, "disk_check: LBA %llu: bytes 0-7 hold 0x%llx (and bytes 8-15 "
				  "0x%llx), expected the LBA (seed 0x%llx)",
				  (unsigned long long)k->bad_lba, (unsigned long long)k->bad_word[0],
				  (unsigned long long)k->bad_word[1], (unsigned long long)k->seed);
		else if (k->bad_offset < 16)
			HV_ASSERT(0, "disk_check: LBA %llu: bytes 8-15 hold 0x%llx, expected the seed "
				  "0x%llx", (unsigned long long)k->bad_lba,
				  (unsigned long long)k->bad_word[1], (unsigned long long)k->seed);
		else
			HV_ASSERT(0, "disk_check: LBA %llu: byte %u is not zero",
				  (unsigned long long)k->bad_lba, k->bad_offset);
	}
	hv_sync(3, k->j.sectors, k->j.bytes, k->j.ios);
	return 0;
}
