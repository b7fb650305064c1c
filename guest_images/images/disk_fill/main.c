/*
 * disk_fill - write every 512-byte sector of the disk so that its first 8 bytes are the
 * sector's LBA and the next 8 the seed (little-endian), the rest zero; then a flush (storvsc:
 * SYNCHRONIZE CACHE). disk_check reads it back (in another run, over any path).
 *
 * Command line: dev=storvsc|virtio|ata|mmio (storvsc; include/blkdev.h) seed=N (1)
 *   bs=BYTES (65536: bytes per WRITE, up to the host's max transfer) qd=N (8) ring=3|0 (3)
 *   ring_pages=N (32) disk=N (0) stall_s=N (20) buf_offset=N (0: each buffer starts this many
 *   bytes into a page; transfers then cross page boundaries); blk_job_from_cmdline() reads
 *   all but seed.
 * SYNC 1 after the probe (protocol version, blocks, max transfer bytes, qd max for bs, write
 * protected); SYNC 2 when the flush completed (sectors, bytes, WRITEs, flushes); DONE(0).
 * A failed request is an ASSERT naming the command, LBA and sense (a read-only disk answers
 * the first WRITE with DATA PROTECT).
 */
#include "fill.h"

int hv_main(void)
{
	struct fill_run *f = &fill_user_run;
	int rc;

	memset(f, 0, sizeof(*f));
	f->seed = hv_arg_u64("seed", 1);
	blk_job_from_cmdline(&f->j, &fill_dev, "disk_fill", 65536, 8);
	blk_job_run(&f->j, fill_task, f);
	hv_log("disk_fill: seed %llu: %llu sectors (%llu bytes) in %llu WRITEs of up to %u bytes, "
	       "qd %u, ring %u, flushed", (unsigned long long)f->seed,
	       (unsigned long long)f->j.sectors, (unsigned long long)f->j.bytes,
	       (unsigned long long)f->j.ios, f->j.chunk, f->j.qd, f->j.ring);
	rc = blk_close(&fill_dev);
	HV_ASSERT(rc == 0, "disk_fill: close: %d", rc);
	return 0;
}
