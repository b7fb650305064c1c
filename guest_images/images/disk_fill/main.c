/*
 * disk_fill - write every 512-byte sector of the disk so that its first 8 bytes are the
 * sector's LBA and the next 8 the seed (little-endian), the rest zero; then a flush (storvsc:
 * SYNCHRONIZE CACHE). disk_check reads it back (in another run, over any path).
 *
 * Command line: dev=storvsc|virtio|ata|mmio (storvsc; include/blkdev.h) seed=N (1) bs=BYTES (65536: bytes per WRITE, up to the host's max transfer)
 *   qd=N (8) ring=3|0 (3) ring_pages=N (32) disk=N (0) stall_s=N (20)
 *   buf_offset=N (0: each buffer starts this many bytes into a page; transfers then cross
 *   page boundaries)
 * SYNC 1 after the probe (protocol version, blocks, max transfer bytes, qd max for bs, write
 * protected); SYNC 2 when the flush completed (sectors, bytes, WRITEs, flushes); DONE(0).
 * A failed request is an ASSERT naming the command, LBA and sense (a read-only disk answers
 * the first WRITE with DATA PROTECT).
 */
#include "fill.h"

int hv_main(void)
{
	struct fill_run *f = &fill_user_run;
	struct blkdev *d = &fill_dev;
	uint64_t ring = hv_arg_u64("ring", 3);
	struct blk_options o;
	char dev[16] = "storvsc";
	uint64_t qd, chunk;
	uint32_t qd_max;
	int rc;

	memset(f, 0, sizeof(*f));
	f->seed = hv_arg_u64("seed", 1);
	HV_ASSERT(ring == 0 || ring == 3, "disk_fill: ring must be 0 or 3");
	hv_arg("dev", dev, sizeof(dev));
	HV_ASSERT(blk_kind_of(dev) != BLK_NONE,
		  "disk_fill: dev must be storvsc, virtio, ata or mmio, not '%s'", dev);
	blk_options_from_cmdline(&o);
	rc = blk_open(d, dev, &o);
	if (!strcmp(dev, "storvsc"))
		HV_ASSERT(rc == 0, "disk_fill: storvsc_open: %d (%s)", rc, storvsc_strerror(rc));
	HV_ASSERT(rc == 0, "disk_fill: opening %s disk %u: %d (%s)", dev, o.index, rc,
		  blk_strerror(d, rc));
	f->d = d;
	chunk = hv_arg_u64("bs", 65536);
	if (chunk > d->max_transfer)
		chunk = d->max_transfer;
	HV_ASSERT(chunk >= d->block_size && chunk % d->block_size == 0,
		  "disk_fill: bs must be a multiple of %u", d->block_size);
	f->chunk = (uint32_t)chunk;
	qd_max = blk_qd_max(d, f->chunk);
	qd = hv_arg_u64("qd", 8);
	if (qd > qd_max)
		qd = qd_max;
	HV_ASSERT(qd >= 1, "disk_fill: qd must be >= 1");
	f->qd = (uint32_t)qd;
	f->buf_offset = (uint32_t)hv_arg_u64("buf_offset", 0);
	HV_ASSERT(f->buf_offset < HVR_PAGE_SIZE, "disk_fill: buf_offset must be 0..4095");
	f->stride = (f->buf_offset + f->chunk + HVR_PAGE_SIZE - 1) & ~(HVR_PAGE_SIZE - 1);
	f->bufs = storvsc_dma_alloc((uint64_t)f->stride * f->qd);
	HV_ASSERT(f->bufs, "disk_fill: no RAM for %u buffers of %u bytes", f->qd, f->chunk);
	hv_sync(1, d->version, d->blocks, d->max_transfer, qd_max, d->write_protected);

	if (ring == 3)
		HV_ASSERT_EQ(hv_run_user(fill_task, f), 0);
	else
		fill_task(f);
	hv_log("disk_fill: seed %llu: %llu sectors (%llu bytes) in %llu WRITEs of up to %u bytes, "
	       "qd %u, ring %llu, flushed", (unsigned long long)f->seed,
	       (unsigned long long)f->sectors, (unsigned long long)f->bytes,
	       (unsigned long long)f->ios, f->chunk, f->qd, (unsigned long long)ring);
	rc = blk_close(d);
	HV_ASSERT(rc == 0, "disk_fill: close: %d", rc);
	return 0;
}
