/*
 * disk_check - read the whole disk back and check the format disk_fill wrote: every
 * 512-byte sector starts with its LBA and the seed (little-endian u64s), the rest zero.
 *
 * Command line: dev=storvsc|virtio|ata|mmio (storvsc; include/blkdev.h) seed=N (1) bs=BYTES (65536: bytes per READ) qd=N (8) ring=3|0 (3)
 *   ring_pages=N (32) disk=N (0) stall_s=N (20)
 *   buf_offset=N (0: each buffer starts this many bytes into a page; transfers then cross
 *   page boundaries)
 * SYNC 1 after the probe (protocol version, blocks, max transfer bytes, qd max for bs, write
 * protected); SYNC 3 after the last READ (sectors, bytes, READs); DONE(0). The first (lowest)
 * mismatching sector is an ASSERT "disk_check: LBA n: ..." naming what differs.
 */
#include "check.h"

int hv_main(void)
{
	struct check_run *k = &check_user_run;
	struct blkdev *d = &check_dev;
	uint64_t ring = hv_arg_u64("ring", 3);
	struct blk_options o;
	char dev[16] = "storvsc";
	uint64_t qd, chunk;
	uint32_t qd_max;
	int rc;

	memset(k, 0, sizeof(*k));
	k->seed = hv_arg_u64("seed", 1);
	HV_ASSERT(ring == 0 || ring == 3, "disk_check: ring must be 0 or 3");
	hv_arg("dev", dev, sizeof(dev));
	HV_ASSERT(blk_kind_of(dev) != BLK_NONE,
		  "disk_check: dev must be storvsc, virtio, ata or mmio, not '%s'", dev);
	blk_options_from_cmdline(&o);
	rc = blk_open(d, dev, &o);
	if (!strcmp(dev, "storvsc"))
		HV_ASSERT(rc == 0, "disk_check: storvsc_open: %d (%s)", rc, storvsc_strerror(rc));
	HV_ASSERT(rc == 0, "disk_check: opening %s disk %u: %d (%s)", dev, o.index, rc,
		  blk_strerror(d, rc));
	k->d = d;
	chunk = hv_arg_u64("bs", 65536);
	if (chunk > d->max_transfer)
		chunk = d->max_transfer;
	HV_ASSERT(chunk >= d->block_size && chunk % d->block_size == 0,
		  "disk_check: bs must be a multiple of %u", d->block_size);
	k->chunk = (uint32_t)chunk;
	qd_max = blk_qd_max(d, k->chunk);
	qd = hv_arg_u64("qd", 8);
	if (qd > qd_max)
		qd = qd_max;
	HV_ASSERT(qd >= 1, "disk_check: qd must be >= 1");
	k->qd = (uint32_t)qd;
	k->buf_offset = (uint32_t)hv_arg_u64("buf_offset", 0);
	HV_ASSERT(k->buf_offset < HVR_PAGE_SIZE, "disk_check: buf_offset must be 0..4095");
	k->stride = (k->buf_offset + k->chunk + HVR_PAGE_SIZE - 1) & ~(HVR_PAGE_SIZE - 1);
	k->bufs = storvsc_dma_alloc((uint64_t)k->stride * k->qd);
	HV_ASSERT(k->bufs, "disk_check: no RAM for %u buffers of %u bytes", k->qd, k->chunk);
	hv_sync(1, d->version, d->blocks, d->max_transfer, qd_max, d->write_protected);

	if (ring == 3)
		HV_ASSERT_EQ(hv_run_user(check_task, k), 0);
	else
		check_task(k);
	hv_log("disk_check: seed %llu: %llu sectors (%llu bytes) good, %llu READs of up to %u "
	       "bytes, qd %u, ring %llu", (unsigned long long)k->seed,
	       (unsigned long long)k->sectors, (unsigned long long)k->bytes,
	       (unsigned long long)k->ios, k->chunk, k->qd, (unsigned long long)ring);
	rc = blk_close(d);
	HV_ASSERT(rc == 0, "disk_check: close: %d", rc);
	return 0;
}
