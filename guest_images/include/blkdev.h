/*
 * blkdev.h - one block-device interface over the guest runtime's disk drivers, so the same
 * workload (disk_bench, disk_fill, disk_check) runs over every I/O path hvkvm has:
 *
 *   dev=storvsc  VMBus synthetic SCSI (include/storvsc.h): rings in guest RAM, no exit per I/O
 *   dev=virtio   virtio-blk over virtio-mmio (include/virtio_blk.h): a split virtqueue with
 *                EVENT_IDX, a kick (ioeventfd) only when the host sleeps; also under QEMU
 *   dev=ata      an ATA PIO disk on the primary channel (include/ata.h): one port-I/O exit per
 *                2 or 4 bytes of data
 *   dev=mmio     hvkvm's doorbell MMIO disk (include/mmioblk.h): a descriptor in RAM and one
 *                MMIO exit per request
 *
 * blk_open() (ring 0) opens the n-th device of a kind; everything else runs in either ring:
 * blk_submit() queues a READ/WRITE/FLUSH (not yet visible to the device), blk_kick() publishes
 * what was queued, blk_reap() takes completions without blocking and blk_wait() blocks for at
 * least one: in ring 3 (or with poll) by polling, in ring 0 by sleeping for the device's
 * interrupt. Completions come back in `struct blk_completion` with the caller's cookie and the
 * TSC at submit and completion. The blkdev and each driver's state live in user-accessible
 * memory (declare the blkdev in a u_*.c file; drivers take theirs from storvsc_dma_alloc()).
 *
 * Addresses are the identity-mapped GPAs (a buffer is one physically contiguous range). LBAs and
 * lengths are in the device's blocks (`block_size`, 512 on all four paths).
 */
#ifndef HV_BLKDEV_H
#define HV_BLKDEV_H

#include "hv.h"

enum blk_kind {
	BLK_NONE = 0,
	BLK_STORVSC = 1,
	BLK_VIRTIO = 2,
	BLK_ATA = 3,
	BLK_MMIO = 4,
};

enum blk_op {
	BLK_OP_READ = 1,
	BLK_OP_WRITE = 2,
	BLK_OP_FLUSH = 3,
};

/* Errors (negative). The codes storvsc shares keep storvsc's numbers (STORVSC_E*). */
enum blk_error {
	BLK_OK = 0,
	BLK_EAGAIN = -100,     /* queue full (no descriptors / slots): reap, then retry */
	BLK_EINVAL = -101,     /* bad argument: range outside the disk, too large, not open */
	BLK_EPROTO = -107,     /* the device answered something malformed */
	BLK_ETIMEDOUT = -109,  /* polling: nothing completed for stall_cycles */
	BLK_ENODEV = -110,     /* no such device */
	BLK_EIO = -120,        /* the device reported an I/O error for this request */
	BLK_EUNSUPP = -121,    /* the device does not support the request */
	BLK_EBROKEN = -122,    /* the device needs a reset (virtio NEEDS_RESET) */
	BLK_ERANGE = -123,     /* the device refused the range */
	BLK_EROFS = -124,      /* write to a read-only device */
	BLK_EADDR = -125,      /* the device could not reach the buffer or descriptor */
};

#define BLK_SECTOR 512u
#define BLK_MAX_XFER (8u << 20)   /* largest request any path takes */
#define BLK_MAX_QD 256u

/* Open-time choices (blk_options_from_cmdline() fills them from the command line). */
struct blk_options {
	uint32_t index;        /* disk=N: the n-th device of the kind (0) */
	uint32_t ring_pages;   /* storvsc: data pages per ring (32) */
	uint32_t queue_size;   /* virtio: queue entries (0: QueueNumMax, at most 256) */
	uint8_t event_idx;     /* virtio: negotiate VIRTIO_RING_F_EVENT_IDX when offered (1) */
	uint8_t pio_width;     /* ata: data-port access size, 2 or 4 bytes (4) */
	uint8_t irq;           /* route the device's interrupt for ring-0 waits (1) or not (0) */
	uint8_t poll;          /* ring 0 polls even with the interrupt routed (poll=1) */
	uint32_t stall_s;      /* polling gives up after this long without progress (20) */
};

/* One completed request. */
struct blk_completion {
	uint64_t cookie;        /* the caller's, from blk_submit */
	uint64_t lba;
	uint64_t t_submit;      /* TSC when queued */
	uint64_t t_complete;    /* TSC when its completion was taken */
	void *buf;
	uint32_t len;           /* bytes asked for */
	uint32_t blocks;
	int32_t status;         /* BLK_OK or a negative BLK_E* / STORVSC_E* */
	uint8_t op;             /* enum blk_op */
	uint8_t dev_status;     /* the device's own status: virtio status byte, mmioblk status,
				 * ATA error register */
	uint8_t dev_status2;    /* ATA status register */
	uint8_t reserved;
	void *raw;              /* storvsc: the VSC's completion (storvsc_describe) */
};

/* Counters every driver keeps the same way. */
struct blk_counters {
	uint64_t submitted, completed, errors;
	uint64_t kicks;            /* notifications sent to the device (virtio: QueueNotify writes,
				    * storvsc: signals; ata/mmio: exits that start a request) */
	uint64_t kicks_suppressed; /* virtio: publications the device asked not to hear about */
	uint64_t full;             /* submits refused: queue full */
	uint64_t polls;            /* empty polls */
	uint64_t waits;            /* ring 0: sleeps until the device's interrupt */
	uint64_t interrupts;       /* the device's interrupts taken */
	uint64_t unexpected;       /* completions matching no request */
	uint64_t unsolicited;      /* storvsc: packets answering nothing */
	uint32_t inflight;         /* queued or submitted, not completed */
	uint32_t max_inflight;
};

struct storvsc_dev;
struct virtio_blk_dev;
struct ata_dev;
struct mmioblk_dev;

struct blkdev {
	uint32_t kind;             /* enum blk_kind */
	char name[12];             /* "storvsc", "virtio", "ata", "mmio" */
	char proto[16];            /* protocol in reports: "6.2", "virtio-mmio 2", "ata-pio32" .. */
	uint32_t version;          /* numeric protocol (SYNC 1): storvsc version, virtio-mmio
				    * version, ATA data width in bits, mmioblk version */
	uint64_t blocks;
	uint32_t block_size;
	uint32_t max_transfer;     /* bytes per request */
	uint32_t qd_max;           /* requests the device takes at once (before size limits) */
	uint8_t write_protected;
	uint8_t poll;              /* ring 0: poll instead of sleeping */
	uint8_t reserved[2];
	char vendor[9], product[41], revision[9], serial[21];
	uint8_t reserved2[3];
	uint64_t tsc_hz;
	uint64_t stall_cycles;     /* polling gives up after this long without progress (0: never) */
	struct blk_counters c;     /* storvsc: refreshed by blk_counters() */
	union {
		struct storvsc_dev *storvsc;
		struct virtio_blk_dev *virtio;
		struct ata_dev *ata;
		struct mmioblk_dev *mmio;
		void *any;
	} u;
	void *scratch;             /* storvsc: completions of the adapter (user memory) */
};

/* ------------------------------------------------------------------------------------------ */
/* Ring 0 (rt/k_blkdev.c). */

/* Command-line keys: disk=N ring_pages=N queue_size=N event_idx=0|1 pio=16|32 poll=0|1
 * stall_s=N; irq = (ring=0 and not poll=1), ring defaulting to 3. */
void blk_options_from_cmdline(struct blk_options *o);
/* Open the o->index-th device of kind `dev` ("storvsc", "virtio", "ata", "mmio"); identify it
 * and fill b (blocks, block_size, max_transfer, qd_max, identity, tsc_hz). 0 or negative. */
int blk_open(struct blkdev *b, const char *dev, const struct blk_options *o);
/* Close it (nothing may be in flight). */
int blk_close(struct blkdev *b);
/* TSC ticks per second: Hyper-V's HV_X64_MSR_TSC_FREQUENCY when present, else measured
 * against the LAPIC timer (1 GHz APIC bus, as KVM and QEMU have) over 20 ms. */
uint64_t blk_tsc_hz(void);
/* The kind named by `dev`, or BLK_NONE. */
enum blk_kind blk_kind_of(const char *dev);
/* Open device `dev` with blk_options_from_cmdline()'s options; a failure is an ASSERT that
 * starts with `who` (storvsc: "who: storvsc_open: rc (why; VMBus a.b, protocol c.d)"). The
 * options used are copied to *o unless o is NULL. */
void blk_open_or_assert(struct blkdev *b, const char *dev, const char *who,
			struct blk_options *o);
/* The same for the device the command line names: dev=storvsc|virtio|ata|mmio (storvsc); a bad
 * dev= is an ASSERT too. */
void blk_open_from_cmdline(struct blkdev *b, const char *who, struct blk_options *o);

/* A device's edge-triggered IOAPIC interrupt, on vCPU 0, whose handler only counts: it bumps
 * *events and c->interrupts, and the driver's ring-0 wait sleeps until *events moves (ata, mmio).
 * Attach registers the handler, then routes gsi to vector; 0, or BLK_EINVAL when every slot is
 * taken. Detach masks the route and forgets the device. */
int blk_irq_attach(uint32_t gsi, uint32_t vector, volatile uint64_t *events,
		   struct blk_counters *c);
void blk_irq_detach(uint32_t gsi, uint32_t vector);
/* Sleep (IF=1, hlt) until *events moves; an interrupt already pending is taken without a sleep,
 * otherwise c->waits counts the sleep. Called with IF=0. */
void blk_irq_wait(volatile uint64_t *events, struct blk_counters *c);

/* A workload that keeps `qd` requests of `chunk` bytes in flight, each in its own buffer. */
struct blk_job {
	struct blkdev *d;
	uint32_t ring;         /* where the I/O loop runs: 3 (a ring-3 task) or 0 */
	uint32_t chunk;        /* bytes per request */
	uint32_t qd;           /* requests in flight */
	uint32_t qd_max;       /* blk_qd_max(d, chunk) */
	uint32_t stride;       /* bytes between buffers (whole pages) */
	uint32_t buf_offset;   /* each buffer starts this far into a page */
	uint8_t *bufs;         /* qd buffers from storvsc_dma_alloc() */
	uint64_t ios, bytes, sectors;  /* what blk_job_sweep completed */
};

/* blk_open_from_cmdline(d, who, NULL), then the job from the command line: ring=3|0 (3)
 * bs=BYTES (default_bs, at most the device's max transfer, a multiple of its block size) qd=N
 * (default_qd, at most blk_qd_max) buf_offset=N (0..4095); the buffers allocated. A bad value is
 * an ASSERT that starts with `who`. */
void blk_job_from_cmdline(struct blk_job *j, struct blkdev *d, const char *who,
			  uint32_t default_bs, uint32_t default_qd);
/* SYNC 1 (protocol version, blocks, max transfer bytes, qd max, write protected), then
 * task(arg) where j->ring says: a ring-3 task (which must return 0) or a call in ring 0. */
void blk_job_run(const struct blk_job *j, int (*task)(void *arg), void *arg);

/* ------------------------------------------------------------------------------------------ */
/* Any ring (rt/u_blkdev.c). */

/* Queue a READ/WRITE of `blocks` blocks at `lba` (buf: blocks * block_size bytes) or a FLUSH
 * (lba, blocks, buf ignored). Returns >= 0, BLK_EAGAIN (full: reap first) or another error. */
int blk_submit(struct blkdev *b, enum blk_op op, uint64_t lba, uint32_t blocks, void *buf,
	       uint64_t cookie);
/* Publish what was queued (notify the device if it asks for it). 0 or negative. */
int blk_kick(struct blkdev *b);
/* Up to `max` completions without blocking (kicks first). Count or negative. */
int blk_reap(struct blkdev *b, struct blk_completion *c, unsigned max);
/* Like blk_reap but blocks for at least one (0 only when nothing is in flight). */
int blk_wait(struct blkdev *b, struct blk_completion *c, unsigned max);
/* One FLUSH on an idle queue, waited for; its status (completion in *c if not NULL). */
int blk_flush(struct blkdev *b, struct blk_completion *c);
/* Deepest queue of requests of up to `bytes` bytes the device holds at once. */
uint32_t blk_qd_max(const struct blkdev *b, uint32_t bytes);
/* The counters, current. */
const struct blk_counters *blk_counters(struct blkdev *b);
/* Text for an error code, and one line describing a completion ("READ LBA 8 x 8: I/O error
 * (virtio status 1)"; storvsc: storvsc_describe()). */
const char *blk_strerror(const struct blkdev *b, int err);
int blk_describe(const struct blkdev *b, const struct blk_completion *c, char *buf, size_t size);

/* One pass over the whole disk (blk_job_sweep): what it does, and the caller's hooks. */
struct blk_sweep {
	enum blk_op op;        /* BLK_OP_READ or BLK_OP_WRITE */
	const char *who;       /* starts every ASSERT */
	/* before a request is submitted: its buffer, first 512-byte sector and sector count */
	void (*prepare)(void *arg, uint8_t *buf, uint64_t sector, uint32_t sectors);
	/* after a request completed without error: the same three */
	void (*complete)(void *arg, const uint8_t *buf, uint64_t sector, uint32_t sectors);
	/* true: submit nothing more (what is in flight still completes) */
	bool (*stop)(void *arg);
	void *arg;             /* passed to the hooks; a NULL hook is not called */
};

/* Any ring: every sector of the disk, first to last, in requests of j->chunk bytes with up to
 * j->qd in flight, each in its own buffer; counts into j->ios, bytes, sectors. A request that
 * fails (submitting, waiting or in its completion) is an ASSERT that starts with s->who. */
void blk_job_sweep(struct blk_job *j, const struct blk_sweep *s);

/* Buffer i of a job. */
static inline uint8_t *blk_job_buf(const struct blk_job *j, uint32_t i)
{
	return j->bufs + (size_t)i * j->stride + j->buf_offset;
}

static inline uint64_t blk_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

#include "storvsc.h"
#include "virtio_blk.h"
#include "ata.h"
#include "mmioblk.h"

#endif /* HV_BLKDEV_H */
