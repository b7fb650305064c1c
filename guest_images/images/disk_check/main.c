/*
 * disk_check - read the whole disk back and check the format disk_fill wrote: every
 * 512-byte sector starts with its LBA and the seed (little-endian u64s), the rest zero.
 *
 * Command line: dev=storvsc|virtio|ata|mmio (storvsc; include/blkdev.h) seed=N (1)
 *   bs=BYTES (65536: bytes per READ, up to the host's max transfer) qd=N (8) ring=3|0 (3)
 *   ring_pages=N (32) disk=N (0) stall_s=N (20) buf_offset=N (0: each buffer starts this many
 *   bytes into a page; transfers then cross page boundaries); blk_job_from_cmdline() reads
 *   all but seed.
 * SYNC 1 after the probe (protocol version, blocks, max transfer bytes, qd max for bs, write
 * protected); SYNC 3 after the last READ (sectors, bytes, READs); DONE(0). The first (lowest)
 * mismatching sector is an ASSERT "disk_check: LBA n: ..." naming what differs.
 */
#include "check.h"

int hv_main(void)
{
	struct check_run *k = &check_user_run;
	int rc;

	memset(k, 0, sizeof(*k));
	k->seed = hv_arg_u64("seed", 1);
	blk_job_from_cmdline(&k->j, &check_dev, "disk_check", 65536, 8);
	blk_job_run(&k->j, check_task, k);
	hv_log("disk_check: seed %llu: %llu sectors (%llu bytes) good, %llu READs of up to %u "
	       "bytes, qd %u, ring %u", (unsigned long long)k->seed,
	       (unsigned long long)k->j.sectors, (unsigned long long)k->j.bytes,
	       (unsigned long long)k->j.ios, k->j.chunk, k->j.qd, k->j.ring);
	rc = blk_close(&check_dev);
	HV_ASSERT(rc == 0, "disk_check: close: %d", rc);
	return 0;
}
