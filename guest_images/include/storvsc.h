/*
 * storvsc.h - the guest runtime's storvsc VSC: VMBus synthetic SCSI (class HV_SCSI_GUID), the
 * client of hvkvm's storvsc VSP (hvkvm/vsp/storvsc.py) and, by wire compatibility, of Hyper-V's.
 *
 * Wire facts are Linux's (drivers/scsi/storvsc_drv.c); the structs are csrc/storvsc_proto.h,
 * the same header the host's C data plane uses. Our own code:
 *
 *   1. Channel (rt/k_storvsc.c, ring 0): storvsc_open() finds the n-th HV_SCSI_GUID offer
 *      (connecting to the VMBus first if needed), opens it with two rings of `ring_pages` data
 *      pages taken from storvsc_dma_alloc(), and hands the rings to the device (the channel is
 *      VMBUS_CH_USER from then on: the kernel's ISR only counts its events). Then it runs the
 *      handshake and the probe below in ring 0, interrupt-driven.
 *   2. Handshake (storvsc_handshake, any ring), exactly as Linux's storvsc_channel_init:
 *      BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION for WIN10 6.2, WIN8_1 6.0, WIN8 5.1 (newest
 *      first, the first accepted wins), QUERY_PROPERTIES (max_transfer_bytes, max_channel_cnt),
 *      END_INITIALIZATION. Every one is a 64-byte in-band vstor_packet with trans_id
 *      VMBUS_RQST_INIT and REQUEST_COMPLETION_FLAG; completions are checked for COMPLETE_IO and
 *      status 0 (except the version answers, where a non-zero status means "try the next").
 *   3. Probe (storvsc_probe, any ring): INQUIRY (a direct-access device), READ CAPACITY(16)
 *      (blocks, block size), MODE SENSE(6) (the WP bit).
 *   4. Block I/O (rt/u_storvsc.c, any ring): EXECUTE_SRB with READ(16) / WRITE(16) /
 *      SYNCHRONIZE CACHE(10) (or any CDB). Data moves as a VM_PKT_DATA_USING_GPA_DIRECT packet
 *      (struct vmbus_packet_mpb_array: one range, the buffer's PFNs; identity mapping: GPA = VA)
 *      followed by the vstor_packet; commands without data are in-band. Up to STORVSC_MAX_QD
 *      requests are in flight, each in a slot; trans_id = sequence << 16 | (slot + 1), so a
 *      completion (COMPLETE_IO) is matched to exactly one outstanding request and a stale or
 *      unknown one is counted and dropped. Every completion is checked: packet type and size,
 *      vstor operation and status, SRB status, SCSI status, sense data (fixed or descriptor
 *      format), and the transferred byte count.
 *
 * Rings and waiting. Submissions are written to the send ring and published by storvsc_kick()
 * (one commit per batch; the host is signalled only when the commit says it may sleep).
 * Completions are taken by storvsc_reap() (never blocks) or storvsc_wait() (blocks until at
 * least one): in ring 3 it polls the receive ring with interrupt_mask set, the way Linux's
 * uio_hv_generic hands rings to DPDK, and kicks with `out %eax, $0xe4`; in ring 0 it is
 * interrupt-driven (unmask, re-check, `sti; hlt` until the channel's event, mask again: Linux's
 * hv_begin_read/hv_end_read), or polls when dev->poll is set, and signals with HvSignalEvent
 * through the hypercall page.
 *
 * Memory: the device struct, the ring area and every data buffer must be user-accessible when
 * ring 3 uses them: declare the struct in a u_*.c file (or take it from storvsc_dma_alloc()),
 * take buffers from storvsc_dma_alloc(). Buffers may start at any byte and cross any number of
 * pages (the PFN list covers them), up to dev->max_transfer bytes.
 */
#ifndef HV_STORVSC_H
#define HV_STORVSC_H

#include "vmbus.h"
#include "storvsc_proto.h" /* csrc/ */

/* Linux's request id of the initialization packets (include/linux/hyperv.h: U64_MAX - 2). */
#define STORVSC_RQST_INIT (~0ULL - 2)

#define STORVSC_MAX_QD 256u                 /* request slots */
#define STORVSC_MAX_XFER (8u << 20)         /* largest buffer one request may carry */
#define STORVSC_MAX_PFNS (STORVSC_MAX_XFER / HVR_PAGE_SIZE + 1)
#define STORVSC_SECTOR 512u

/* SCSI (SPC/SBC) opcodes, status and sense keys the VSC uses. */
#define SCSI_TEST_UNIT_READY 0x00
#define SCSI_INQUIRY 0x12
#define SCSI_MODE_SENSE_6 0x1a
#define SCSI_SYNCHRONIZE_CACHE_10 0x35
#define SCSI_READ_16 0x88
#define SCSI_WRITE_16 0x8a
#define SCSI_SERVICE_ACTION_IN_16 0x9e
#define SCSI_SAI_READ_CAPACITY_16 0x10
#define SCSI_STATUS_GOOD 0x00
#define SCSI_STATUS_CHECK_CONDITION 0x02
#define SCSI_SENSE_NO_SENSE 0x0
#define SCSI_SENSE_NOT_READY 0x2
#define SCSI_SENSE_MEDIUM_ERROR 0x3
#define SCSI_SENSE_HARDWARE_ERROR 0x4
#define SCSI_SENSE_ILLEGAL_REQUEST 0x5
#define SCSI_SENSE_UNIT_ATTENTION 0x6
#define SCSI_SENSE_DATA_PROTECT 0x7

/* Request kinds. */
enum storvsc_op {
	STORVSC_OP_READ = 1,  /* READ(16) */
	STORVSC_OP_WRITE = 2, /* WRITE(16) */
	STORVSC_OP_FLUSH = 3, /* SYNCHRONIZE CACHE(10), whole disk */
	STORVSC_OP_CDB = 4,   /* any CDB (storvsc_submit_cdb) */
};

/* storvsc_submit() flags. */
#define STORVSC_FUA 1u /* READ/WRITE(16) with FUA */

/* Data direction of a CDB (vmscsi_request.data_in). */
enum storvsc_dir {
	STORVSC_DIR_NONE = UNKNOWN_TYPE,
	STORVSC_DIR_IN = READ_TYPE,   /* device -> buffer */
	STORVSC_DIR_OUT = WRITE_TYPE, /* buffer -> device */
};

/* Errors (negative; distinct from HVR_* and VMBUS_*). */
enum storvsc_error {
	STORVSC_OK = 0,
	STORVSC_EAGAIN = -100,   /* no free slot, or the send ring is full: reap, then retry */
	STORVSC_EINVAL = -101,   /* bad argument or device state */
	STORVSC_ECHECK = -102,   /* CHECK CONDITION: sense key/ASC/ASCQ in the completion */
	STORVSC_ESRB = -103,     /* srb_status not SUCCESS (and no CHECK CONDITION) */
	STORVSC_ESCSI = -104,    /* another non-GOOD SCSI status */
	STORVSC_EVSTOR = -105,   /* vstor_packet: operation not COMPLETE_IO, or status != 0 */
	STORVSC_ESHORT = -106,   /* READ/WRITE moved fewer bytes than asked */
	STORVSC_EPROTO = -107,   /* malformed completion, handshake refused, no version agreed */
	STORVSC_ERING = -108,    /* a ring view is broken (the host corrupted it) */
	STORVSC_ETIMEDOUT = -109, /* polling: nothing completed for dev->stall_cycles */
	STORVSC_ENODEV = -110,   /* no storvsc offer, or not a disk */
};

/* One completed request as the caller gets it. */
struct storvsc_completion {
	uint64_t cookie;        /* the caller's, from the submit */
	uint64_t lba;
	uint64_t t_submit;      /* TSC when written to the ring */
	uint64_t t_complete;    /* TSC when its completion was read */
	void *buf;
	uint32_t len;           /* bytes asked for */
	uint32_t blocks;
	int32_t status;         /* STORVSC_OK or a negative STORVSC_E* */
	uint32_t vstor_status;  /* vstor_packet.status (NTSTATUS) */
	uint32_t transferred;   /* vm_srb.data_transfer_length */
	uint8_t op;             /* enum storvsc_op */
	uint8_t opcode;         /* CDB byte 0 */
	uint8_t srb_status, scsi_status;
	uint8_t sense_key, asc, ascq; /* valid when status == STORVSC_ECHECK */
	uint8_t vstor_operation;
};

/* A request slot (internal). */
struct storvsc_slot {
	uint64_t trans_id;
	uint64_t cookie;
	uint64_t lba;
	uint64_t t_submit;
	void *buf;
	uint32_t len;
	uint32_t blocks;
	uint8_t op, opcode, busy, reserved;
	uint32_t reserved2;
};

struct storvsc_dev;
typedef void (*storvsc_kfn)(struct storvsc_dev *d);

struct storvsc_dev {
	struct vmbus_rings rings;   /* the channel's rings (handed over by storvsc_open) */

	/* negotiated (handshake) */
	uint16_t version;           /* VMSTOR_PROTO_VERSION_*; 0 before the handshake */
	uint16_t versions_tried;    /* QUERY_PROTOCOL_VERSION packets sent */
	uint32_t pkt_size;          /* vstor_packet bytes on the wire (64 from WIN8 on) */
	uint32_t max_transfer;      /* min(QUERY_PROPERTIES max_transfer_bytes, STORVSC_MAX_XFER) */
	uint32_t host_max_transfer; /* as the host reported it */
	uint32_t props_flags;       /* vmstorage_channel_properties.flags */
	uint16_t max_channel_cnt;
	uint8_t ready;              /* END_INITIALIZATION completed */
	uint8_t poll;               /* ring 0: poll instead of sleeping for interrupts */

	/* addressing (Linux: port = the host number, path = channel, target = id) */
	uint8_t port, path_id, target_id, lun;

	/* the disk (probe) */
	uint64_t blocks;            /* READ CAPACITY(16): last LBA + 1 */
	uint32_t block_size;
	uint8_t phys_block_exp;     /* logical blocks per physical block, log2 */
	uint8_t lbpme;              /* logical block provisioning (UNMAP) enabled */
	uint8_t write_protected;    /* MODE SENSE device-specific parameter, WP bit */
	uint8_t peripheral;         /* INQUIRY byte 0 */
	char vendor[9], product[17], revision[5];
	uint8_t reserved[3];

	/* time */
	uint64_t tsc_hz;            /* HV_X64_MSR_TSC_FREQUENCY (0: unknown) */
	uint64_t stall_cycles;      /* polling: give up after this long without progress (0: never) */

	/* requests */
	uint32_t inflight;          /* submitted, not completed */
	uint32_t uncommitted;       /* written to the ring, not yet published */
	uint32_t free_top;
	uint32_t max_inflight;      /* the most seen in flight */
	uint64_t seq;
	uint16_t free_stack[STORVSC_MAX_QD];
	struct storvsc_slot slots[STORVSC_MAX_QD];

	/* counters */
	uint64_t submitted, completed, errors;
	uint64_t kicks;             /* host signals (ring 0: HvSignalEvent; ring 3: port 0xe4) */
	uint64_t full;              /* submits refused because the send ring was full */
	uint64_t polls;             /* empty polls (ring 3 / poll mode) */
	uint64_t waits;             /* ring 0: sleeps until the channel interrupt */
	uint64_t unsolicited;       /* host packets that answer nothing (trans_id 0, not COMP) */
	uint64_t unexpected;        /* completions matching no outstanding request: dropped */

	/* ring 0 hooks (set by storvsc_open; ring-3 code never calls them) */
	storvsc_kfn kwait;          /* sleep until the channel's interrupt */
	storvsc_kfn kkick;          /* HvSignalEvent */
	void *channel;              /* struct vmbus_channel * (kernel memory) */
	uint64_t events_seen;

	/* scratch: the GPA-direct header of one request, and a small data buffer for the probe */
	uint64_t hdr[2 + STORVSC_MAX_PFNS];
	uint8_t scratch[512] __attribute__((aligned(64)));
};

/* ------------------------------------------------------------------------------------------ */
/* Ring 0 (rt/k_storvsc.c). */

/* `size` bytes of page-aligned, user-accessible guest RAM above the image (a bump allocator over
 * the E820 RAM from 8 MiB up; never freed; not cleared). NULL when RAM runs out. */
void *storvsc_dma_alloc(uint64_t size);
/* RAM bytes storvsc_dma_alloc() can still hand out. */
uint64_t storvsc_dma_free_bytes(void);

/* Connect to the VMBus if not yet (vmbus_init with VMBUS_VECTOR_DEFAULT), find the n-th storvsc
 * offer, open it with rings of `ring_pages` data pages each (1..256), hand the rings to `d`,
 * then storvsc_handshake() and storvsc_probe() from ring 0 with interrupts. 0 or a negative
 * STORVSC_E* / VMBUS_* code (d->... says how far it got). */
int storvsc_open(struct storvsc_dev *d, unsigned n, uint32_t ring_pages);
/* Take the rings back and close the channel (every request must have completed). */
int storvsc_close(struct storvsc_dev *d);

/* ------------------------------------------------------------------------------------------ */
/* Any ring (rt/u_storvsc.c). */

/* The handshake and the probe (storvsc_open runs them; exposed for tests). */
int storvsc_handshake(struct storvsc_dev *d);
int storvsc_probe(struct storvsc_dev *d);

/* The deepest queue the two rings hold at once for requests of up to `bytes` at any alignment:
 * min(STORVSC_MAX_QD, send ring / request packet, receive ring / completion packet). */
uint32_t storvsc_qd_max(const struct storvsc_dev *d, uint32_t bytes);

/* Queue a READ(16) / WRITE(16) of `blocks` blocks at `lba` (buf: blocks * block_size bytes) or a
 * SYNCHRONIZE CACHE(10) of the whole disk (lba, blocks, buf ignored). flags: STORVSC_FUA. The
 * request is written to the ring but not published: call storvsc_kick() after a batch (or
 * storvsc_wait(), which kicks). Returns the slot (>= 0), STORVSC_EAGAIN (no slot or ring full:
 * reap first), STORVSC_EINVAL (range outside the disk, too large, not ready), STORVSC_ERING. */
int storvsc_submit(struct storvsc_dev *d, enum storvsc_op op, uint64_t lba, uint32_t blocks,
		   void *buf, uint32_t flags, uint64_t cookie);
/* Queue any CDB (1..16 bytes) with `len` bytes of data in direction `dir`. */
int storvsc_submit_cdb(struct storvsc_dev *d, const uint8_t *cdb, uint32_t cdb_len,
		       enum storvsc_dir dir, void *buf, uint32_t len, uint64_t cookie);
/* Publish what was queued; signal the host if the ring says it may be asleep. 0 or ERING. */
int storvsc_kick(struct storvsc_dev *d);
/* Take up to `max` completions without blocking (kicks first). Returns how many, or ERING. */
int storvsc_reap(struct storvsc_dev *d, struct storvsc_completion *c, unsigned max);
/* Like storvsc_reap, but blocks until at least one completion (0 only when nothing is in
 * flight). Ring 3 (or d->poll): polls, STORVSC_ETIMEDOUT after d->stall_cycles without one;
 * ring 0: sleeps until the channel's interrupt. */
int storvsc_wait(struct storvsc_dev *d, struct storvsc_completion *c, unsigned max);

/* Synchronous helpers: one request on an idle queue (STORVSC_EINVAL if others are in flight);
 * the completion's status is returned, the completion itself in *c when c is not NULL. */
int storvsc_exec_cdb(struct storvsc_dev *d, const uint8_t *cdb, uint32_t cdb_len,
		     enum storvsc_dir dir, void *buf, uint32_t len, struct storvsc_completion *c);
int storvsc_read(struct storvsc_dev *d, uint64_t lba, uint32_t blocks, void *buf,
		 struct storvsc_completion *c);
int storvsc_write(struct storvsc_dev *d, uint64_t lba, uint32_t blocks, const void *buf,
		  struct storvsc_completion *c);
int storvsc_flush(struct storvsc_dev *d, struct storvsc_completion *c);

/* Text: an error code, a sense key, and one line describing a completion (e.g. "WRITE(16) LBA 8
 * x 8: CHECK CONDITION, sense key 0x7 DATA PROTECT, ASC 0x27 ASCQ 0x00"). */
const char *storvsc_strerror(int err);
const char *storvsc_sense_key_name(uint8_t key);
int storvsc_describe(const struct storvsc_completion *c, char *buf, size_t size);

static inline uint64_t storvsc_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

#endif /* HV_STORVSC_H */
