/*
 * disk_bench - a block device benchmark: one mode, one block size, one queue depth, over any of
 * the guest's disk drivers (include/blkdev.h).
 *
 * Command line: dev=storvsc|virtio|ata|mmio (storvsc: the VMBus SCSI disk; virtio: virtio-blk on
 *   virtio-mmio, found through virtio_mmio.device= (queue_size=N event_idx=0|1); ata: the ATA PIO
 *   disk at 0x1f0 (pio=16|32); mmio: hvkvm's doorbell MMIO disk at 0xd0200000)
 *   mode=read|write|randread|randwrite (randread) bs=BYTES (4096, a multiple of 512 up to the
 *   device's max transfer) qd=N|max (1; max = the deepest queue the device holds for bs:
 *   storvsc's rings, virtio's queue / 3, ata 1, mmio 64) seconds=S (5) or count=N (I/Os; wins
 *   over seconds) verify=0|1 (0) ring=3|0 (3: the loop is a ring-3 task polling the device; 0:
 *   in the kernel, interrupt-driven, or polling with poll=1) ring_pages=N (storvsc: 32 data
 *   pages per ring) span=BYTES (the whole disk: the region the I/Os go to) seed=N (1: the
 *   random offsets) buf_offset=N (0: each buffer starts this many bytes into a page, so
 *   transfers cross page boundaries) disk=N (0: the n-th device of the kind) stall_s=N (20:
 *   polling gives up after that long without a completion)
 *
 * verify=1: reads check every byte against a pattern of (run seed, LBA) that an untimed prefill
 * wrote; writes carry the pattern and, after the timed loop, every unit written is read back and
 * checked. SYNC 1 after the probe (protocol version, blocks, max transfer bytes, qd max for bs,
 * write protected), SYNC 10 right before the timed loop (mode 1..4, bs, qd, count, seconds),
 * SYNC 11 right after it (I/Os, bytes, microseconds, host kicks, interrupt waits), SYNC 12 after
 * the verification (I/Os verified, bytes verified, prefill I/Os, unexpected and unsolicited
 * completions). Then one JSON line on the serial port (with "dev", "protocol" and, besides
 * storvsc's fields, "kicks_suppressed" and "interrupts") and DONE(0). SYNC 1's protocol value is
 * the storvsc version, the virtio-mmio Version, the ATA data width in bits or the mmioblk
 * VERSION.
 */
#include "bench.h"

/* what hvkvm bench reads from the image: the same devices as devs[] in hv_main */
HV_ARG_VALUES("dev", "storvsc virtio ata mmio");

int hv_main(void)
{
	struct bench_run *b = &bench_user_run;
	struct blkdev *d = &bench_dev;
	static const char *const devs[] = { "storvsc", "virtio", "ata", "mmio" };
	char mode[16] = "randread", dev[16] = "storvsc";
	struct blk_options o;
	uint64_t span, qd;
	uint32_t qd_max;
	bool dev_ok = false;
	int rc;

	memset(b, 0, sizeof(*b));
	hv_arg("mode", mode, sizeof(mode));
	if (!strcmp(mode, "read"))
		b->mode = MODE_READ;
	else if (!strcmp(mode, "write"))
		b->mode = MODE_WRITE;
	else if (!strcmp(mode, "randread"))
		b->mode = MODE_RANDREAD;
	else if (!strcmp(mode, "randwrite"))
		b->mode = MODE_RANDWRITE;
	HV_ASSERT(b->mode, "disk_bench: mode must be read, write, randread or randwrite, not '%s'",
		  mode);
	b->bs = (uint32_t)hv_arg_u64("bs", 4096);
	b->count = hv_arg_u64("count", 0);
	b->seconds = b->count ? 0 : hv_arg_u64("seconds", 5);
	b->verify = hv_arg_u64("verify", 0) != 0;
	b->ring = (uint32_t)hv_arg_u64("ring", 3);
	b->buf_offset = (uint32_t)hv_arg_u64("buf_offset", 0);
	b->rand_state = bench_mix(hv_arg_u64("seed", 1));
	HV_ASSERT(b->ring == 0 || b->ring == 3, "disk_bench: ring must be 0 or 3");
	HV_ASSERT(b->buf_offset < HVR_PAGE_SIZE, "disk_bench: buf_offset must be 0..4095");
	HV_ASSERT(b->count || b->seconds, "disk_bench: count or seconds must be > 0");
	hv_arg("dev", dev, sizeof(dev));
	for (unsigned i = 0; i < HV_ARRAY_SIZE(devs); i++)
		dev_ok |= !strcmp(dev, devs[i]);
	HV_ASSERT(dev_ok, "disk_bench: dev must be storvsc, virtio, ata or mmio, not '%s'", dev);
	blk_open_or_assert(d, dev, "disk_bench", &o);
	b->d = d;
	b->tsc_hz = d->tsc_hz;
	HV_ASSERT(b->tsc_hz, "disk_bench: no TSC frequency");
	HV_ASSERT(b->bs && b->bs % d->block_size == 0 && b->bs <= d->max_transfer,
		  "disk_bench: bs %u must be a multiple of %u up to %u (max transfer)", b->bs,
		  d->block_size, d->max_transfer);
	b->blocks_per_io = b->bs / d->block_size;
	qd_max = blk_qd_max(d, b->bs);
	qd = hv_arg_is("qd", "max") ? qd_max : hv_arg_u64("qd", 1);
	if (d->kind == BLK_STORVSC)
		HV_ASSERT(qd >= 1 && qd <= qd_max, "disk_bench: qd %llu: the rings hold 1..%u "
			  "requests of %u bytes (ring_pages %u)", (unsigned long long)qd, qd_max,
			  b->bs, o.ring_pages);
	HV_ASSERT(qd >= 1 && qd <= qd_max, "disk_bench: qd %llu: the %s device holds 1..%u "
		  "requests of %u bytes", (unsigned long long)qd, d->name, qd_max, b->bs);
	b->qd = (uint32_t)qd;
	span = hv_arg_u64("span", d->blocks * d->block_size);
	if (span > d->blocks * d->block_size)
		span = d->blocks * d->block_size;
	b->units = span / b->bs;
	HV_ASSERT(b->units >= 1, "disk_bench: the span (%llu bytes) holds no %u-byte I/O",
		  (unsigned long long)span, b->bs);
	b->pattern_seed = bench_mix(hv_arg_u64("seed", 1) ^ blk_rdtsc());

	b->stride = (b->buf_offset + b->bs + HVR_PAGE_SIZE - 1) & ~(HVR_PAGE_SIZE - 1);
	b->bufs = storvsc_dma_alloc((uint64_t)b->stride * b->qd);
	HV_ASSERT(b->bufs, "disk_bench: %u buffers of %u bytes do not fit the partition's RAM "
		  "(%llu bytes free)", b->qd, b->stride, (unsigned long long)storvsc_dma_free_bytes());
	if (b->verify && (b->mode == MODE_WRITE || b->mode == MODE_RANDWRITE)) {
		b->written = storvsc_dma_alloc((b->units + 7) / 8);
		HV_ASSERT(b->written, "disk_bench: no RAM for the written-units bitmap");
		memset(b->written, 0, (b->units + 7) / 8);
	}

	hv_log("disk_bench: %s %s %s, %llu blocks of %u bytes, protocol %s, max transfer %u, "
	       "%s; %s bs=%u qd=%u (max %u) %s ring %u%s; dev %s", d->vendor, d->product,
	       d->revision, (unsigned long long)d->blocks, d->block_size, d->proto,
	       d->max_transfer, d->write_protected ? "write-protected" : "writable", mode, b->bs,
	       b->qd, qd_max, b->verify ? "verify" : "no verify", b->ring,
	       b->ring == 0 ? (d->poll ? " (polling)" : " (interrupts)") : " (polling)", d->name);
	hv_sync(1, d->version, d->blocks, d->max_transfer, qd_max, d->write_protected);

	if (b->ring == 3)
		HV_ASSERT_EQ(hv_run_user(bench_task, b), 0);
	else
		bench_task(b);

	hv_log("disk_bench: %llu I/Os, %llu bytes; %llu kicks, %llu interrupt waits, %llu ring "
	       "full; %llu completions unexpected, %llu unsolicited", (unsigned long long)b->ios,
	       (unsigned long long)b->bytes, (unsigned long long)b->kicks,
	       (unsigned long long)b->waits, (unsigned long long)b->full,
	       (unsigned long long)blk_counters(d)->unexpected,
	       (unsigned long long)blk_counters(d)->unsolicited);
	rc = blk_close(d);
	HV_ASSERT(rc == 0, "disk_bench: close: %d", rc);
	return 0;
}
