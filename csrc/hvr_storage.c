/*
 * hvr_storage.c - the storvsc data plane (see hvr_storage.h). The SCSI emulation mirrors
 * hvkvm/vsp/scsi.py command by command; tests hold the two to the same bytes.
 */
#define _GNU_SOURCE
#include "hvr_storage.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <linux/io_uring.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

#define PAGE 4096u
#define SCRATCH_SIZE (8u + 16u * HVR_MAX_UNMAP_DESCRIPTORS + 64u)
#define DIRECT_ALIGN 512u
#define PHYSICAL_BLOCK_EXP 3u
/*
 * Page-cache transfers up to this size are copied inline on the ring thread (RWF_NOWAIT); larger
 * ones go to the pool (io_uring: IOSQE_ASYNC, an io-wq worker), so several large copies run on
 * several CPUs instead of one after another on the ring thread.
 */
#define INLINE_MAX (64u << 10)

/* SCSI status, sense keys, operation codes */
#define GOOD 0x00
#define CHECK_CONDITION 0x02
#define MEDIUM_ERROR 0x3
#define ILLEGAL_REQUEST 0x5
#define DATA_PROTECT 0x7

#define TEST_UNIT_READY 0x00
#define READ_6 0x08
#define WRITE_6 0x0a
#define INQUIRY 0x12
#define MODE_SENSE_6 0x1a
#define READ_CAPACITY_10 0x25
#define READ_10 0x28
#define WRITE_10 0x2a
#define SYNCHRONIZE_CACHE_10 0x35
#define UNMAP 0x42
#define MODE_SENSE_10 0x5a
#define READ_16 0x88
#define WRITE_16 0x8a
#define SYNCHRONIZE_CACHE_16 0x91
#define SERVICE_ACTION_IN_16 0x9e
#define SAI_READ_CAPACITY_16 0x10
#define REPORT_LUNS 0xa0

/* A CHECK CONDITION: key, ASC, ASCQ packed as 0xKKAAQQ; 0 = none. */
#define SENSE(k, a, q) (((uint32_t)(k) << 16) | ((uint32_t)(a) << 8) | (uint32_t)(q))
#define INVALID_OPCODE SENSE(ILLEGAL_REQUEST, 0x20, 0x00)
#define INVALID_FIELD_IN_CDB SENSE(ILLEGAL_REQUEST, 0x24, 0x00)
#define LBA_OUT_OF_RANGE SENSE(ILLEGAL_REQUEST, 0x21, 0x00)
#define INVALID_FIELD_IN_PARAMETER_LIST SENSE(ILLEGAL_REQUEST, 0x26, 0x00)
#define PARAMETER_LIST_LENGTH_ERROR SENSE(ILLEGAL_REQUEST, 0x1a, 0x00)
#define SAVING_PARAMETERS_NOT_SUPPORTED SENSE(ILLEGAL_REQUEST, 0x39, 0x00)
#define LOGICAL_UNIT_NOT_SUPPORTED SENSE(ILLEGAL_REQUEST, 0x25, 0x00)
#define WRITE_PROTECTED SENSE(DATA_PROTECT, 0x27, 0x00)
#define UNRECOVERED_READ_ERROR SENSE(MEDIUM_ERROR, 0x11, 0x00)
#define WRITE_ERROR SENSE(MEDIUM_ERROR, 0x0c, 0x00)
#define SPACE_ALLOCATION_FAILED SENSE(DATA_PROTECT, 0x27, 0x07)

/* The request disagrees with itself: SRB_STATUS_INVALID_REQUEST. */
#define INVALID_REQUEST 0xffffffffu
/* The command went to the worker pool: its completion comes from hvr_storage_reap(). */
#define DEFERRED 0xfffffffeu

/*
 * An io_uring driven by the ring thread alone: SQEs queued by the handler are submitted by the
 * next reap (one io_uring_enter per drain pass), CQEs reaped there. The kernel signals `efd`
 * (registered) on every completion; it is the plane's wake_fd.
 */
struct hvr_uring {
	int fd;
	uint32_t sq_entries, cq_entries;
	void *sq_map, *cq_map;
	size_t sq_map_len, cq_map_len;
	struct io_uring_sqe *sqes;
	size_t sqes_len;
	uint32_t *sq_head, *sq_tail, *sq_mask, *sq_array;
	uint32_t *cq_head, *cq_tail, *cq_mask;
	struct io_uring_cqe *cqes;
	uint32_t tail;            /* our SQ tail (published at submit) */
	uint32_t in_kernel;       /* submitted or queued, CQE not reaped yet */
};

/* What a request slot asks a worker to do. */
enum io_kind { IO_READ = 1, IO_WRITE = 2, IO_SYNC = 3 };

/*
 * One outstanding command. The ring thread fills it (iovecs over checked guest RAM, the
 * completion packet so far) and owns it again once a worker has put it on the done list.
 */
struct io_slot {
	struct io_slot *next;
	uint64_t trans_id;
	const struct hvr_storage_lun *u;
	struct iovec *iov;        /* iov_cap entries of the pool's array */
	uint32_t cnt;
	uint32_t len;
	uint64_t off;
	uint32_t kind;            /* enum io_kind */
	uint32_t fua;             /* WRITE with FUA: fdatasync before completing */
	uint32_t sense_limit;
	int32_t sync_err;         /* worker: fdatasync's -errno for FUA, else 0 */
	int64_t result;           /* worker: bytes moved or -errno */
	struct vstor_packet resp;
};

/*
 * The pool. mu guards sq, done, busy and stop; the ring thread alone uses free, cur and the
 * slot it fills. A worker queues a finished slot on `done` and writes wake_fd when the list was
 * empty (the plane drains wake_fd before it reaps, so no completion goes unseen).
 */
struct hvr_aio {
	pthread_mutex_t mu;
	pthread_cond_t work;      /* workers: sq non-empty or stop */
	pthread_cond_t idle;      /* quiesce: busy reached 0 */
	struct io_slot *sq_head, *sq_tail;
	struct io_slot *done;
	uint32_t ndone;           /* slots on done; read without mu as a hint (atomic) */
	uint32_t busy;            /* slots a worker is running */
	int stop;
	int wake_fd;
	uint32_t nthreads;
	pthread_t threads[HVR_STORAGE_MAX_WORKERS];
	struct io_slot *slots;
	struct iovec *iovs;
	uint32_t nslots;
	uint32_t limit;           /* usable slots: all their completions fit the receive ring */
	uint32_t outstanding;     /* slots not free (ring thread) */
	struct io_slot *free;     /* ring thread */
	struct io_slot *cur;      /* the slot the command being parsed may defer into */
	struct hvr_uring *uring;  /* HVR_IO_URING: the ring (no threads then) */
	uint8_t nowait_bad[2][HVR_STORAGE_MAX_LUNS]; /* [write][lun index]: RWF_NOWAIT refused */
};

/* A command's data buffer: iovecs over guest RAM (or one host buffer in tests). */
struct dbuf {
	struct iovec *iov;
	uint32_t cnt;
	uint32_t len;
};

/* ---- helpers ------------------------------------------------------------------------------ */

static uint32_t be16(const uint8_t *p)
{
	return (uint32_t)p[0] << 8 | p[1];
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p)
{
	return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static void put16(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, v >> 16);
	put16(p + 2, v);
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)(v >> 32));
	put32(p + 4, (uint32_t)v);
}

static uint32_t min32(uint32_t a, uint32_t b)
{
	return a < b ? a : b;
}

static uint32_t cdb_size(uint8_t op)
{
	switch (op >> 5) {
	case 0:
		return 6;
	case 1:
	case 2:
		return 10;
	case 4:
		return 16;
	case 5:
		return 12;
	default:
		return 6;
	}
}

uint32_t hvr_storage_packet_size(uint32_t version)
{
	return (uint32_t)(VSTOR_PACKET_SIZE -
			  (version < VMSTOR_PROTO_VERSION_WIN8 ? VMSCSI_SIZE_DELTA : 0));
}

/* Copy `n` bytes of `src` to the start of the buffer; returns bytes copied. */
static uint32_t dbuf_fill(const struct dbuf *b, const void *src, uint32_t n)
{
	uint32_t done = 0, i, take;

	n = min32(n, b->len);
	for (i = 0; i < b->cnt && done < n; i++) {
		take = min32((uint32_t)b->iov[i].iov_len, n - done);
		memcpy(b->iov[i].iov_base, (const uint8_t *)src + done, take);
		done += take;
	}
	return done;
}

/* Copy the first `n` bytes of the buffer out (copied once: the guest may change them). */
static void dbuf_read(const struct dbuf *b, void *dst, uint32_t n)
{
	uint32_t done = 0, i, take;

	for (i = 0; i < b->cnt && done < n; i++) {
		take = min32((uint32_t)b->iov[i].iov_len, n - done);
		memcpy((uint8_t *)dst + done, b->iov[i].iov_base, take);
		done += take;
	}
}

static void set_check(struct hvr_scsi_result *r, uint32_t sense)
{
	memset(r, 0, sizeof(*r));
	r->srb_status = SRB_STATUS_ERROR | SRB_STATUS_AUTOSENSE_VALID;
	r->scsi_status = CHECK_CONDITION;
	r->sense_len = 18;
	r->sense[0] = 0x70;
	r->sense[2] = (uint8_t)(sense >> 16);
	r->sense[7] = 10;
	r->sense[12] = (uint8_t)(sense >> 8);
	r->sense[13] = (uint8_t)sense;
}

static void set_good(struct hvr_scsi_result *r, uint32_t transferred)
{
	memset(r, 0, sizeof(*r));
	r->srb_status = SRB_STATUS_SUCCESS;
	r->scsi_status = GOOD;
	r->transferred = transferred;
}

/* Data-in: min(n, alloc) bytes of data to the buffer. */
static uint32_t data_in(struct hvr_scsi_result *r, const struct dbuf *b, const void *data,
			uint32_t n, uint32_t alloc)
{
	set_good(r, dbuf_fill(b, data, min32(n, alloc)));
	return 0;
}

/* ---- I/O ---------------------------------------------------------------------------------- */

/* The first `len` bytes of the buffer as a (possibly shortened) copy of its iovecs in `out`. */
static uint32_t iov_prefix(const struct dbuf *b, uint32_t len, struct iovec *out)
{
	uint32_t i, n = 0;

	for (i = 0; i < b->cnt && len; i++) {
		out[n] = b->iov[i];
		if (out[n].iov_len > len)
			out[n].iov_len = len;
		len -= (uint32_t)out[n].iov_len;
		n++;
	}
	return n;
}

static void iov_advance(struct iovec **iov, uint32_t *cnt, size_t n)
{
	while (*cnt && n >= (*iov)->iov_len) {
		n -= (*iov)->iov_len;
		(*iov)++;
		(*cnt)--;
	}
	if (*cnt && n) {
		(*iov)->iov_base = (uint8_t *)(*iov)->iov_base + n;
		(*iov)->iov_len -= n;
	}
}

/*
 * preadv2/pwritev2 until done; returns bytes moved (short only at end of file) or -errno.
 * rwf RWF_NOWAIT: -EAGAIN as soon as a piece would block (the bytes moved so far are lost).
 */
static int64_t rw_flags(int fd, int write, struct iovec *iov, uint32_t cnt, uint64_t off,
			int rwf)
{
	int64_t done = 0;
	ssize_t n;

	while (cnt) {
		int c = (int)(cnt < IOV_MAX ? cnt : IOV_MAX);

		n = write ? pwritev2(fd, iov, c, (off_t)(off + (uint64_t)done), rwf)
			  : preadv2(fd, iov, c, (off_t)(off + (uint64_t)done), rwf);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0) {
			if (write)
				return -EIO;
			break;
		}
		done += n;
		iov_advance(&iov, &cnt, (size_t)n);
	}
	return done;
}

static int64_t rw_all(int fd, int write, struct iovec *iov, uint32_t cnt, uint64_t off)
{
	return rw_flags(fd, write, iov, cnt, off, 0);
}

static int direct_ok(const struct iovec *iov, uint32_t cnt, uint64_t off)
{
	uint32_t i;

	if (off % DIRECT_ALIGN)
		return 0;
	for (i = 0; i < cnt; i++)
		if (((uintptr_t)iov[i].iov_base | iov[i].iov_len) % DIRECT_ALIGN)
			return 0;
	return 1;
}

/* Move `len` bytes between the buffer and the image at byte `off`. Returns bytes or -errno. */
static int64_t disk_io(struct hvr_storage *s, const struct hvr_storage_lun *u, int write,
		       const struct dbuf *b, uint32_t len, uint64_t off)
{
	struct iovec *iov = (struct iovec *)s->iov + s->iov_cap; /* the second half: scratch */
	struct iovec one;
	uint32_t cnt = iov_prefix(b, len, iov);
	int64_t n;

	if (!(u->flags & HVR_LUN_DIRECT) || direct_ok(iov, cnt, off))
		return rw_all(u->fd, write, iov, cnt, off);
	if (!s->bounce || len > s->max_transfer_bytes)
		return -EINVAL;
	s->stats.bounced++;
	one.iov_base = s->bounce;
	one.iov_len = len;
	if (write) {
		dbuf_read(b, s->bounce, len);
		return rw_all(u->fd, 1, &one, 1, off);
	}
	n = rw_all(u->fd, 0, &one, 1, off);
	if (n > 0)
		dbuf_fill(b, s->bounce, (uint32_t)n);
	return n;
}

/* ---- SCSI commands (hvkvm/vsp/scsi.py) ----------------------------------------------------- */

static uint32_t standard_inquiry(const struct hvr_storage_lun *u, uint8_t *d)
{
	static const uint8_t head[8] = {0x00, 0x00, 0x06, 0x12, 31, 0x00, 0x00, 0x02};

	memcpy(d, head, 8);
	memcpy(d + 8, u->vendor, 8);
	memcpy(d + 16, u->product, 16);
	memcpy(d + 32, u->revision, 4);
	return 36;
}

/* VPD page `page` into d (header included); 0 if not served. */
static uint32_t vpd_page(const struct hvr_storage *s, const struct hvr_storage_lun *u,
			 uint8_t page, uint8_t *d)
{
	static const uint8_t pages[] = {0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2};
	uint8_t *body = d + 4;
	uint32_t n, t10;
	int ro = !!(u->flags & HVR_LUN_READONLY);

	switch (page) {
	case 0x00:
		n = sizeof(pages);
		memcpy(body, pages, n);
		break;
	case 0x80:
		n = u->serial_len;
		memcpy(body, u->serial, n);
		break;
	case 0x83:
		t10 = 8 + u->serial_len;
		body[0] = 0x02;
		body[1] = 0x01;
		body[2] = 0x00;
		body[3] = (uint8_t)t10;
		memcpy(body + 4, u->vendor, 8);
		memcpy(body + 12, u->serial, u->serial_len);
		n = 4 + t10;
		body[n] = 0x01;
		body[n + 1] = 0x03;
		body[n + 2] = 0x00;
		body[n + 3] = 8;
		memcpy(body + n + 4, u->naa, 8);
		n += 12;
		break;
	case 0xb0:
		n = 0x3c;
		memset(body, 0, n);
		put16(body + 2, 1u << PHYSICAL_BLOCK_EXP);
		put32(body + 4, s->max_transfer_bytes / HVR_STORAGE_BLOCK);
		if (!ro) {
			put32(body + 16, HVR_MAX_UNMAP_LBA_COUNT);
			put32(body + 20, HVR_MAX_UNMAP_DESCRIPTORS);
		}
		put32(body + 24, 8);
		put32(body + 28, 0x80000000u);
		break;
	case 0xb1:
		n = 0x3c;
		memset(body, 0, n);
		put16(body, 0x0001);
		break;
	case 0xb2:
		n = 4;
		body[0] = 0x00;
		body[1] = (uint8_t)((ro ? 0x00 : 0x80) | 0x04);
		body[2] = 0x02;
		body[3] = 0x00;
		break;
	default:
		return 0;
	}
	d[0] = 0x00;
	d[1] = page;
	put16(d + 2, n);
	return 4 + n;
}

static uint32_t cmd_inquiry(struct hvr_storage *s, const struct hvr_storage_lun *u,
			    const uint8_t *cdb, const struct dbuf *b, struct hvr_scsi_result *r)
{
	uint8_t *d = s->scratch;
	uint32_t n;

	if (cdb[1] & 0xfe)
		return INVALID_FIELD_IN_CDB;
	if (!(cdb[1] & 0x01)) {
		if (cdb[2])
			return INVALID_FIELD_IN_CDB;
		n = standard_inquiry(u, d);
	} else {
		n = vpd_page(s, u, cdb[2], d);
		if (!n)
			return INVALID_FIELD_IN_CDB;
	}
	return data_in(r, b, d, n, be16(cdb + 3));
}

static uint32_t cmd_read_capacity_10(const struct hvr_storage_lun *u, const struct dbuf *b,
				     struct hvr_scsi_result *r)
{
	uint8_t d[8];
	uint64_t last = u->blocks - 1;

	put32(d, last > 0xffffffffu ? 0xffffffffu : (uint32_t)last);
	put32(d + 4, HVR_STORAGE_BLOCK);
	return data_in(r, b, d, 8, 8);
}

static uint32_t cmd_service_action_in(const struct hvr_storage_lun *u, const uint8_t *cdb,
				      const struct dbuf *b, struct hvr_scsi_result *r)
{
	uint8_t d[32];

	if ((cdb[1] & 0x1f) != SAI_READ_CAPACITY_16)
		return INVALID_FIELD_IN_CDB;
	memset(d, 0, sizeof(d));
	put64(d, u->blocks - 1);
	put32(d + 8, HVR_STORAGE_BLOCK);
	d[13] = PHYSICAL_BLOCK_EXP;
	if (!(u->flags & HVR_LUN_READONLY))
		d[14] = 0x80 | 0x40;
	return data_in(r, b, d, 32, be32(cdb + 10));
}

/* The mode pages asked for, appended at d; returns their length or sets *sense. */
static uint32_t mode_pages(uint8_t pc, uint8_t page, uint8_t subpage, uint8_t *d,
			   uint32_t *sense)
{
	uint8_t caching[20], control[12];
	uint32_t n = 0;
	int changeable = pc == 1;

	*sense = 0;
	if (pc == 3) {
		*sense = SAVING_PARAMETERS_NOT_SUPPORTED;
		return 0;
	}
	if (subpage != 0x00 && subpage != 0xff) {
		*sense = INVALID_FIELD_IN_CDB;
		return 0;
	}
	memset(caching, 0, sizeof(caching));
	caching[0] = 0x08;
	caching[1] = 0x12;
	memset(control, 0, sizeof(control));
	control[0] = 0x0a;
	control[1] = 0x0a;
	if (!changeable) {
		caching[2] = 0x04;
		control[3] = 0x10;
		control[8] = 0xff;
		control[9] = 0xff;
	}
	if (page == 0x08 || page == 0x3f) {
		memcpy(d + n, caching, sizeof(caching));
		n += sizeof(caching);
	}
	if (page == 0x0a || page == 0x3f) {
		memcpy(d + n, control, sizeof(control));
		n += sizeof(control);
	}
	if (!n)
		*sense = INVALID_FIELD_IN_CDB;
	return n;
}

static uint8_t device_specific(const struct hvr_storage_lun *u)
{
	return (uint8_t)(((u->flags & HVR_LUN_READONLY) ? 0x80 : 0x00) | 0x10);
}

static void short_block_descriptor(const struct hvr_storage_lun *u, uint8_t *d)
{
	put32(d, u->blocks > 0xffffffffu ? 0xffffffffu : (uint32_t)u->blocks);
	d[4] = 0;
	d[5] = 0;
	put16(d + 6, HVR_STORAGE_BLOCK);
}

static uint32_t cmd_mode_sense(struct hvr_storage *s, const struct hvr_storage_lun *u,
			       const uint8_t *cdb, int ten, const struct dbuf *b,
			       struct hvr_scsi_result *r)
{
	uint8_t *d = s->scratch;
	uint32_t hdr = ten ? 8 : 4, bd = 0, np, sense, alloc;
	int dbd = cdb[1] & 0x08, llbaa = ten && (cdb[1] & 0x10);

	memset(d, 0, 64);
	np = mode_pages(cdb[2] >> 6, cdb[2] & 0x3f, cdb[3], d + hdr + 16, &sense);
	if (sense)
		return sense;
	if (!dbd) {
		if (llbaa) {
			put64(d + hdr, u->blocks);
			put32(d + hdr + 8, 0);
			put32(d + hdr + 12, HVR_STORAGE_BLOCK);
			bd = 16;
		} else {
			short_block_descriptor(u, d + hdr);
			bd = 8;
		}
	}
	memmove(d + hdr + bd, d + hdr + 16, np);
	if (ten) {
		put16(d, 6 + bd + np);
		d[2] = 0;
		d[3] = device_specific(u);
		d[4] = (bd && llbaa) ? 1 : 0;
		d[5] = 0;
		put16(d + 6, bd);
		alloc = be16(cdb + 7);
	} else {
		d[0] = (uint8_t)(3 + bd + np);
		d[1] = 0;
		d[2] = device_specific(u);
		d[3] = (uint8_t)bd;
		alloc = cdb[4];
	}
	return data_in(r, b, d, hdr + bd + np, alloc);
}

static uint32_t check_range(const struct hvr_storage_lun *u, uint64_t lba, uint64_t count)
{
	if (lba > u->blocks || count > u->blocks - lba)
		return LBA_OUT_OF_RANGE;
	return 0;
}

/* The sense a finished READ/WRITE gets (0: good); counts it. */
static uint32_t rw_done(struct hvr_storage *s, int write, uint32_t nbytes, int64_t n, int fua,
			int sync_err)
{
	if (write) {
		if (n < 0)
			return n == -ENOSPC ? SPACE_ALLOCATION_FAILED : WRITE_ERROR;
		if (fua) {
			s->stats.flushes++;
			if (sync_err)
				return sync_err == -ENOSPC ? SPACE_ALLOCATION_FAILED : WRITE_ERROR;
		}
		s->stats.writes++;
		s->stats.bytes_written += nbytes;
	} else {
		if (n != (int64_t)nbytes)
			return UNRECOVERED_READ_ERROR;
		s->stats.reads++;
		s->stats.bytes_read += nbytes;
	}
	return 0;
}

/*
 * With a pool, try the page cache without blocking (RWF_NOWAIT) on the ring thread: the bytes
 * moved, or -EAGAIN to hand the command to a worker. A file that refuses RWF_NOWAIT for this
 * direction is remembered and then served inline as in HVR_IO_SYNC.
 */
static int64_t rw_inline(struct hvr_storage *s, const struct hvr_storage_lun *u, int write,
			 const struct dbuf *b, uint32_t len, uint64_t off)
{
	struct hvr_aio *a = s->aio;
	struct iovec *iov = (struct iovec *)s->iov + s->iov_cap;
	uint8_t *bad = &a->nowait_bad[write][u - s->luns];
	uint32_t cnt;
	int64_t n;

	if (*bad)
		return disk_io(s, u, write, b, len, off);
	cnt = iov_prefix(b, len, iov);
	n = rw_flags(u->fd, write, iov, cnt, off, RWF_NOWAIT);
	if (n == -EOPNOTSUPP || n == -EINVAL) {
		*bad = 1;
		return disk_io(s, u, write, b, len, off);
	}
	if (n >= 0 && n < (int64_t)len && write)
		return -EAGAIN; /* a part moved, the rest would block: the worker redoes it all */
	return n;
}

/* Fill the slot for a worker (the buffer's first `len` bytes) and say so. */
static uint32_t defer(struct hvr_storage *s, const struct hvr_storage_lun *u, uint32_t kind,
		      const struct dbuf *b, uint32_t len, uint64_t off, int fua)
{
	struct io_slot *q = ((struct hvr_aio *)s->aio)->cur;

	q->u = u;
	q->kind = kind;
	q->len = len;
	q->off = off;
	q->fua = (uint32_t)fua;
	q->cnt = b ? iov_prefix(b, len, q->iov) : 0;
	q->result = 0;
	q->sync_err = 0;
	return DEFERRED;
}

/* Whether the command being parsed may go to the pool. */
static int can_defer(const struct hvr_storage *s)
{
	return s->aio && ((struct hvr_aio *)s->aio)->cur;
}

static uint32_t cmd_rw(struct hvr_storage *s, const struct hvr_storage_lun *u, int write,
		       uint64_t lba, uint32_t count, uint8_t flags, const struct dbuf *b,
		       struct hvr_scsi_result *r)
{
	uint64_t nbytes = (uint64_t)count * HVR_STORAGE_BLOCK, off = lba * HVR_STORAGE_BLOCK;
	uint32_t sense;
	int64_t n;
	int fua = !!(flags & 0x08), sync_err = 0;

	if (flags & 0xe0)
		return INVALID_FIELD_IN_CDB;
	if (nbytes > s->max_transfer_bytes)
		return INVALID_FIELD_IN_CDB;
	if (nbytes > b->len)
		return INVALID_REQUEST;
	sense = check_range(u, lba, count);
	if (sense)
		return sense;
	if (write && (u->flags & HVR_LUN_READONLY))
		return WRITE_PROTECTED;
	if (!count) {
		set_good(r, 0);
		return 0;
	}
	if (!can_defer(s)) {
		n = disk_io(s, u, write, b, (uint32_t)nbytes, off);
	} else if (u->flags & HVR_LUN_DIRECT) {
		struct iovec *iov = (struct iovec *)s->iov + s->iov_cap;

		/* aligned: to a worker; unaligned: through the bounce buffer, here */
		if (direct_ok(iov, iov_prefix(b, (uint32_t)nbytes, iov), off))
			return defer(s, u, write ? IO_WRITE : IO_READ, b, (uint32_t)nbytes, off,
				     fua);
		n = disk_io(s, u, write, b, (uint32_t)nbytes, off);
	} else if (nbytes > INLINE_MAX) {
		return defer(s, u, write ? IO_WRITE : IO_READ, b, (uint32_t)nbytes, off, fua);
	} else {
		n = rw_inline(s, u, write, b, (uint32_t)nbytes, off);
		if (n == -EAGAIN)
			return defer(s, u, write ? IO_WRITE : IO_READ, b, (uint32_t)nbytes, off,
				     fua);
		s->stats.inline_io++;
	}
	if (write && n >= 0 && fua && fdatasync(u->fd) < 0)
		sync_err = -errno;
	sense = rw_done(s, write, (uint32_t)nbytes, n, write && fua, sync_err);
	if (sense)
		return sense;
	set_good(r, (uint32_t)nbytes);
	return 0;
}

static uint32_t cmd_sync(struct hvr_storage *s, const struct hvr_storage_lun *u, uint64_t lba,
			 uint32_t count, struct hvr_scsi_result *r)
{
	uint32_t sense = check_range(u, lba, count);

	if (sense)
		return sense;
	if (!(u->flags & HVR_LUN_READONLY) && can_defer(s))
		return defer(s, u, IO_SYNC, NULL, 0, 0, 0);
	if (!(u->flags & HVR_LUN_READONLY)) {
		s->stats.flushes++;
		if (fdatasync(u->fd) < 0)
			return WRITE_ERROR;
	}
	set_good(r, 0);
	return 0;
}

static int punch(const struct hvr_storage *s, const struct hvr_storage_lun *u, uint64_t off,
		 uint64_t len)
{
	struct iovec one;
	uint64_t pos = 0;
	int64_t n;

	if (!len)
		return 0;
	if (fallocate(u->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      (off_t)len) == 0)
		return 0;
	if (errno != EOPNOTSUPP && errno != ENOSYS)
		return -errno;
	/* No hole punching here: write zeros (an aligned zeroed buffer: also fine for O_DIRECT). */
	if (!s->bounce)
		return -EOPNOTSUPP;
	memset(s->bounce, 0, s->max_transfer_bytes);
	while (pos < len) {
		one.iov_base = s->bounce;
		one.iov_len = (size_t)(len - pos < s->max_transfer_bytes ? len - pos
							       : s->max_transfer_bytes);
		n = rw_all(u->fd, 1, &one, 1, off + pos);
		if (n < 0)
			return (int)n;
		pos += (uint64_t)n;
	}
	return 0;
}

static uint32_t cmd_unmap(struct hvr_storage *s, const struct hvr_storage_lun *u,
			  const uint8_t *cdb, const struct dbuf *b, struct hvr_scsi_result *r)
{
	uint8_t *d = s->scratch;
	uint32_t plen = be16(cdb + 7), ndesc, i, sense;

	if (cdb[1] & 0x01)
		return INVALID_FIELD_IN_CDB;
	if (plen > b->len)
		return INVALID_REQUEST;
	if (u->flags & HVR_LUN_READONLY)
		return WRITE_PROTECTED;
	if (!plen) {
		set_good(r, 0);
		return 0;
	}
	if (plen < 8)
		return PARAMETER_LIST_LENGTH_ERROR;
	dbuf_read(b, d, min32(plen, SCRATCH_SIZE));
	ndesc = min32(be16(d + 2), plen - 8) / 16;
	if (ndesc > HVR_MAX_UNMAP_DESCRIPTORS)
		return INVALID_FIELD_IN_PARAMETER_LIST;
	for (i = 0; i < ndesc; i++) {
		uint32_t count = be32(d + 8 + 16 * i + 8);

		if (count > HVR_MAX_UNMAP_LBA_COUNT)
			return INVALID_FIELD_IN_PARAMETER_LIST;
		sense = check_range(u, be64(d + 8 + 16 * i), count);
		if (sense)
			return sense;
	}
	for (i = 0; i < ndesc; i++) {
		uint64_t lba = be64(d + 8 + 16 * i);
		uint32_t count = be32(d + 8 + 16 * i + 8);

		if (punch(s, u, lba * HVR_STORAGE_BLOCK, (uint64_t)count * HVR_STORAGE_BLOCK))
			return WRITE_ERROR;
		if (count)
			s->stats.unmaps++;
	}
	set_good(r, 0);
	return 0;
}

static uint32_t cmd_report_luns(struct hvr_storage *s, const uint8_t *cdb, uint32_t cdb_len,
				const struct dbuf *b, struct hvr_scsi_result *r)
{
	uint8_t d[8 + 8 * HVR_STORAGE_MAX_LUNS];
	uint32_t alloc, n = 0, i, lun;

	if (cdb_len < 12)
		return INVALID_FIELD_IN_CDB;
	alloc = be32(cdb + 6);
	if (cdb[2] > 0x02 || alloc < 4)
		return INVALID_FIELD_IN_CDB;
	memset(d, 0, sizeof(d));
	if (cdb[2] != 0x01) {
		/* ascending LUN order, as scsi.py sorts them */
		for (lun = 0; lun < 256; lun++)
			for (i = 0; i < s->nluns; i++)
				if (s->luns[i].lun == lun) {
					d[8 + 8 * n + 1] = (uint8_t)lun;
					n++;
				}
	}
	put32(d, 8 * n);
	return data_in(r, b, d, 8 + 8 * n, alloc);
}

/* Run a command on an existing LU; returns 0 (r set), a sense, or INVALID_REQUEST. */
static uint32_t lu_execute(struct hvr_storage *s, const struct hvr_storage_lun *u,
			   const uint8_t *cdb, uint32_t cdb_len, const struct dbuf *b,
			   struct hvr_scsi_result *r)
{
	uint8_t op = cdb[0];

	switch (op) {
	case TEST_UNIT_READY: case READ_6: case WRITE_6: case INQUIRY: case MODE_SENSE_6:
	case READ_CAPACITY_10: case READ_10: case WRITE_10: case SYNCHRONIZE_CACHE_10: case UNMAP:
	case MODE_SENSE_10: case READ_16: case WRITE_16: case SYNCHRONIZE_CACHE_16:
	case SERVICE_ACTION_IN_16: case REPORT_LUNS:
		break;
	default:
		return INVALID_OPCODE;
	}
	if (cdb_len < cdb_size(op))
		return INVALID_FIELD_IN_CDB;
	switch (op) {
	case TEST_UNIT_READY:
		set_good(r, 0);
		return 0;
	case READ_6:
	case WRITE_6:
		return cmd_rw(s, u, op == WRITE_6, (((uint32_t)cdb[1] << 16) | be16(cdb + 2)) & 0x1fffff,
			      cdb[4] ? cdb[4] : 256, 0, b, r);
	case READ_10:
	case WRITE_10:
		return cmd_rw(s, u, op == WRITE_10, be32(cdb + 2), be16(cdb + 7), cdb[1], b, r);
	case READ_16:
	case WRITE_16:
		return cmd_rw(s, u, op == WRITE_16, be64(cdb + 2), be32(cdb + 10), cdb[1], b, r);
	case INQUIRY:
		return cmd_inquiry(s, u, cdb, b, r);
	case MODE_SENSE_6:
		return cmd_mode_sense(s, u, cdb, 0, b, r);
	case MODE_SENSE_10:
		return cmd_mode_sense(s, u, cdb, 1, b, r);
	case READ_CAPACITY_10:
		return cmd_read_capacity_10(u, b, r);
	case SERVICE_ACTION_IN_16:
		return cmd_service_action_in(u, cdb, b, r);
	case SYNCHRONIZE_CACHE_10:
		return cmd_sync(s, u, be32(cdb + 2), be16(cdb + 7), r);
	case SYNCHRONIZE_CACHE_16:
		return cmd_sync(s, u, be64(cdb + 2), be32(cdb + 10), r);
	case UNMAP:
		return cmd_unmap(s, u, cdb, b, r);
	default:
		return cmd_report_luns(s, cdb, cdb_len, b, r);
	}
}

/* The target: route to the LU, answer for missing ones. Returns 0, 1 (deferred to the pool: r
 * is not set) or -1 (invalid request). */
static int scsi_execute(struct hvr_storage *s, uint8_t path_id, uint8_t target_id, uint8_t lun,
			const uint8_t *cdb, uint32_t cdb_len, const struct dbuf *b,
			struct hvr_scsi_result *r)
{
	const struct hvr_storage_lun *u = NULL;
	uint32_t i, sense;
	int here = path_id == 0 && target_id == 0;

	memset(r, 0, sizeof(*r));
	if (!cdb_len)
		return -1;
	if (here)
		for (i = 0; i < s->nluns; i++)
			if (s->luns[i].lun == lun)
				u = &s->luns[i];
	if (cdb[0] == REPORT_LUNS && here)
		sense = cmd_report_luns(s, cdb, cdb_len, b, r);
	else if (u)
		sense = lu_execute(s, u, cdb, cdb_len, b, r);
	else if (cdb[0] == INQUIRY && cdb_len >= 6) {
		if (cdb[1] & 0x01) {
			sense = LOGICAL_UNIT_NOT_SUPPORTED;
		} else {
			uint8_t d[36];

			memset(d, 0, sizeof(d));
			d[0] = 0x7f;
			d[2] = 0x06;
			d[3] = 0x12;
			d[4] = 31;
			sense = data_in(r, b, d, 36, be16(cdb + 3));
		}
	} else {
		r->srb_status = SRB_STATUS_INVALID_LUN;
		return 0;
	}
	if (sense == INVALID_REQUEST)
		return -1;
	if (sense == DEFERRED)
		return 1;
	if (sense) {
		set_check(r, sense);
		s->stats.check_conditions++;
	}
	return 0;
}

int hvr_storage_exec_cdb(struct hvr_storage *s, uint8_t path_id, uint8_t target_id, uint8_t lun,
			 const uint8_t *cdb, uint32_t cdb_len, uint8_t *buf, uint32_t buf_len,
			 struct hvr_scsi_result *res)
{
	struct iovec one = {buf, buf_len};
	struct dbuf b = {&one, buf_len ? 1u : 0u, buf_len};

	return scsi_execute(s, path_id, target_id, lun, cdb, cdb_len, &b, res);
}

/* ---- the packet handler ------------------------------------------------------------------- */

/* Host address of [pfn * 4096 + off, + len) if it lies inside one RAM region, else NULL. */
static uint8_t *translate(const struct hvr_storage *s, uint64_t pfn, uint32_t off, uint32_t len)
{
	uint64_t gpa, rel;
	uint32_t i;

	if (pfn >= (1ull << 52) || off >= PAGE || len > PAGE - off)
		return NULL;
	gpa = pfn << 12;
	for (i = 0; i < s->nregions; i++) {
		const struct hvr_ram_region *r = &s->regions[i];

		if (gpa < r->gpa)
			continue;
		rel = gpa - r->gpa;
		if (rel >= r->size || r->size - rel < (uint64_t)off + len)
			continue;
		return r->host + rel + off;
	}
	return NULL;
}

/*
 * The GPA-direct request's buffer as iovecs over guest RAM (s->iov[0..n)); -1 if any page is
 * outside RAM or the ranges disagree with `length`.
 */
static int guest_buffer(struct hvr_storage *s, struct hvr_plane *p, const struct hvr_pkt *pkt,
			uint32_t length, struct dbuf *b)
{
	struct iovec *iov = s->iov;
	struct hvr_gpa_iter it = {0, 0};
	struct hvr_gpa_range r;
	uint64_t total = 0;
	uint32_t n = 0, pfns = 0, i, left, off, chunk;
	uint8_t *h;
	int rc;

	if (length > s->max_transfer_bytes || pkt->range_count > HVR_STORAGE_MAX_GPA_RANGES)
		return -1;
	while ((rc = hvr_in_gpa_range(&p->in, pkt, &it, &r)) == HVR_OK) {
		total += r.byte_count;
		if (total > length || r.pfn_count > s->pfn_cap - pfns)
			return -1;
		pfns += r.pfn_count;
		if (hvr_in_copy(&p->in, pkt, r.pfn_off, s->pfns, r.pfn_count * 8u) != HVR_OK)
			return -1;
		left = r.byte_count;
		off = r.byte_offset;
		for (i = 0; i < r.pfn_count && left; i++) {
			chunk = min32(PAGE - off, left);
			h = translate(s, s->pfns[i], off, chunk);
			if (!h)
				return -1;
			if (n && (uint8_t *)iov[n - 1].iov_base + iov[n - 1].iov_len == h) {
				iov[n - 1].iov_len += chunk;
			} else {
				if (n == s->iov_cap)
					return -1;
				iov[n].iov_base = h;
				iov[n].iov_len = chunk;
				n++;
			}
			left -= chunk;
			off = 0;
		}
	}
	if (rc != HVR_EMPTY || total != length)
		return -1;
	b->iov = iov;
	b->cnt = n;
	b->len = length;
	return 0;
}

static void srb_result(struct vstor_packet *resp, const struct hvr_scsi_result *r,
		       uint32_t sense_limit)
{
	struct vmscsi_request *srb = &resp->vm_srb;
	uint32_t n;

	srb->srb_status = r->srb_status;
	srb->scsi_status = r->scsi_status;
	srb->data_transfer_length = r->transferred;
	if (r->sense_len) {
		n = min32(r->sense_len, sense_limit);
		memset(srb->sense_data, 0, sizeof(srb->sense_data));
		memcpy(srb->sense_data, r->sense, n);
		srb->sense_info_length = (uint8_t)n;
		if (!n)
			srb->srb_status &= (uint8_t)~SRB_STATUS_AUTOSENSE_VALID;
	} else {
		srb->sense_info_length = 0;
	}
}

static void invalid(struct hvr_storage *s, struct vstor_packet *resp)
{
	struct hvr_scsi_result r;

	memset(&r, 0, sizeof(r));
	r.srb_status = SRB_STATUS_INVALID_REQUEST;
	s->stats.invalid++;
	resp->status = STATUS_INVALID_PARAMETER;
	srb_result(resp, &r, 0);
}

/* Returns 1 when the command went to the pool (resp is then the slot's to finish). */
static int execute_srb(struct hvr_storage *s, struct hvr_plane *p, const struct hvr_pkt *pkt,
		       const struct vstor_packet *req, struct vstor_packet *resp,
		       uint32_t *sense_limit)
{
	const struct vmscsi_request *srb = &req->vm_srb;
	struct dbuf b = {NULL, 0, 0};
	struct hvr_scsi_result r;
	int rc;

	*sense_limit = min32(srb->sense_info_length, s->version < VMSTOR_PROTO_VERSION_WIN8
			     ? PRE_WIN8_STORVSC_SENSE_BUFFER_SIZE : STORVSC_SENSE_BUFFER_SIZE);
	s->stats.srbs++;
	if (!srb->cdb_length || srb->cdb_length > STORVSC_MAX_CMD_LEN) {
		invalid(s, resp);
		return 0;
	}
	if (pkt->type == VM_PKT_DATA_USING_GPA_DIRECT) {
		if (guest_buffer(s, p, pkt, srb->data_transfer_length, &b)) {
			invalid(s, resp);
			return 0;
		}
	} else if (srb->data_transfer_length) {
		invalid(s, resp);
		return 0;
	}
	rc = scsi_execute(s, srb->path_id, srb->target_id, srb->lun, srb->cdb, srb->cdb_length, &b,
			  &r);
	if (rc < 0) {
		invalid(s, resp);
		return 0;
	}
	if (rc > 0)
		return 1;
	srb_result(resp, &r, *sense_limit);
	return 0;
}

static void submit(struct hvr_aio *a, struct io_slot *q);

int hvr_storage_handler(struct hvr_plane *p, const struct hvr_pkt *pkt)
{
	struct hvr_storage *s = p->ctx;
	struct hvr_aio *a = s->aio;
	struct vstor_packet req, resp;
	uint32_t size = hvr_storage_packet_size(s->version), need, len, reserve = 0, sense_limit;
	int rc, deferred = 0;

	if (pkt->type == VM_PKT_COMP)
		return HVR_OK;
	if (a && !a->limit)
		a = NULL; /* not attached to a ring that holds its completions: synchronous */
	if (a) {
		/* Every outstanding command's completion is reserved in the ring. */
		reserve = a->outstanding;
		if (reserve >= a->limit)
			return HVR_PLANE_RETRY;
	}
	/* Room for the completion first: a request never runs twice. */
	need = hvr_packet_total(0, size) * (reserve + 1);
	rc = hvr_out_free(&p->out);
	if (rc < 0)
		return rc;
	if ((uint32_t)rc < need) {
		p->need = need;
		return HVR_FULL;
	}
	/* One copy of the request; everything below uses the copy (no double fetch). */
	memset(&req, 0, sizeof(req));
	len = min32(pkt->payload_len, (uint32_t)sizeof(req));
	rc = hvr_in_copy(&p->in, pkt, pkt->payload_off, &req, len);
	if (rc != HVR_OK)
		return HVR_EBROKEN;
	resp = req;
	resp.operation = VSTOR_OPERATION_COMPLETE_IO;
	resp.flags = 0;
	resp.status = STATUS_SUCCESS;
	s->stats.requests++;
	if (pkt->payload_len < size ||
	    (pkt->type != VM_PKT_DATA_INBAND && pkt->type != VM_PKT_DATA_USING_GPA_DIRECT)) {
		invalid(s, &resp);
	} else {
		switch (req.operation) {
		case VSTOR_OPERATION_EXECUTE_SRB:
			if (a)
				a->cur = a->free;
			deferred = execute_srb(s, p, pkt, &req, &resp, &sense_limit);
			if (a)
				a->cur = NULL;
			break;
		case VSTOR_OPERATION_RESET_LUN:
		case VSTOR_OPERATION_RESET_BUS:
		case VSTOR_OPERATION_RESET_ADAPTER:
			break;
		case VSTOR_OPERATION_BEGIN_INITIALIZATION:
		case VSTOR_OPERATION_QUERY_PROTOCOL_VERSION:
		case VSTOR_OPERATION_QUERY_PROPERTIES:
		case VSTOR_OPERATION_END_INITIALIZATION:
			resp.status = STATUS_INVALID_DEVICE_STATE;
			break;
		default:
			resp.status = STATUS_NOT_SUPPORTED;
			break;
		}
	}
	if (deferred) {
		struct io_slot *q = a->free;

		a->free = q->next;
		q->trans_id = pkt->trans_id;
		q->sense_limit = sense_limit;
		q->resp = resp;
		submit(a, q);
		s->stats.async++;
		s->stats.inflight = ++a->outstanding;
		if (a->outstanding > s->stats.inflight_max)
			s->stats.inflight_max = a->outstanding;
		return HVR_OK;
	}
	if (resp.status != STATUS_SUCCESS)
		s->stats.errors++;
	return hvr_out_write_comp(&p->out, pkt->trans_id, &resp, size);
}

/* ---- the worker pool ---------------------------------------------------------------------- */

/* ---- io_uring (raw syscalls) ---------------------------------------------------------------- */

static int uring_enter(int fd, uint32_t to_submit, uint32_t min_complete, uint32_t flags)
{
	return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

/* Queue the slot's operation as an SQE (published at the next uring_submit). */
static void uring_queue(struct hvr_uring *u, struct io_slot *q)
{
	uint32_t idx = u->tail & *u->sq_mask;
	struct io_uring_sqe *sqe = &u->sqes[idx];

	memset(sqe, 0, sizeof(*sqe));
	sqe->fd = q->u->fd;
	sqe->user_data = (uint64_t)(uintptr_t)q;
	/* Page-cache I/O would be copied inside io_uring_enter on the ring thread: make it an
	 * io-wq worker's (O_DIRECT is asynchronous in the block layer already). */
	if (!(q->u->flags & HVR_LUN_DIRECT))
		sqe->flags |= IOSQE_ASYNC;
	if (q->kind == IO_SYNC) {
		sqe->opcode = IORING_OP_FSYNC;
		sqe->fsync_flags = IORING_FSYNC_DATASYNC;
	} else {
		sqe->opcode = q->kind == IO_WRITE ? IORING_OP_WRITEV : IORING_OP_READV;
		sqe->addr = (uint64_t)(uintptr_t)q->iov;
		sqe->len = q->cnt;
		sqe->off = q->off;
		/* FUA: this write is durable when it completes (pwritev2's RWF_DSYNC) */
		sqe->rw_flags = (q->kind == IO_WRITE && q->fua) ? RWF_DSYNC : 0;
	}
	u->sq_array[idx] = idx;
	u->tail++;
	u->in_kernel++;
}

/* Publish and submit the queued SQEs. 0, or -errno when the kernel refuses the ring. */
static int uring_submit(struct hvr_uring *u)
{
	uint32_t head, n;
	int rc;

	/* Release: the kernel reads the SQEs and sq_array entries after it sees the new tail
	 * (liburing's io_uring_smp_store_release on sq.ktail). */
	__atomic_store_n(u->sq_tail, u->tail, __ATOMIC_RELEASE);
	/* Acquire: entries the kernel consumed (sq.khead) are free for us to reuse. */
	head = __atomic_load_n(u->sq_head, __ATOMIC_ACQUIRE);
	n = u->tail - head;
	while (n) {
		rc = uring_enter(u->fd, n, 0, 0);
		if (rc < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EBUSY)
				return 0; /* the next reap retries what is left */
			return -errno;
		}
		if ((uint32_t)rc >= n)
			break;
		n -= (uint32_t)rc;
	}
	return 0;
}

/* The rest of a short transfer, synchronously (O_DIRECT files only come up short at EOF). */
static void finish_short(struct io_slot *q)
{
	struct iovec *iov = q->iov;
	uint32_t cnt = q->cnt;
	int64_t more;

	iov_advance(&iov, &cnt, (size_t)q->result);
	more = rw_all(q->u->fd, q->kind == IO_WRITE, iov, cnt, q->off + (uint64_t)q->result);
	q->result = more < 0 ? more : q->result + more;
	if (q->kind == IO_WRITE && q->fua && q->result >= 0 && fdatasync(q->u->fd) < 0)
		q->sync_err = -errno;
}

/* Take every completed CQE: the slots (result set) as a list. */
static struct io_slot *uring_collect(struct hvr_uring *u)
{
	struct io_slot *list = NULL, *q;
	uint32_t head = *u->cq_head, tail;

	/* Acquire: the CQEs up to cq.ktail (and the data the kernel moved for them) are
	 * visible once we see the tail. */
	tail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);
	while (head != tail) {
		struct io_uring_cqe *cqe = &u->cqes[head & *u->cq_mask];

		q = (struct io_slot *)(uintptr_t)cqe->user_data;
		q->result = cqe->res;
		if (q->kind != IO_SYNC && q->result >= 0 && q->result < (int64_t)q->len)
			finish_short(q);
		q->next = list;
		list = q;
		u->in_kernel--;
		head++;
	}
	/* Release: we are done reading those CQEs; the kernel may reuse their entries. */
	__atomic_store_n(u->cq_head, head, __ATOMIC_RELEASE);
	return list;
}

static void uring_fini(struct hvr_uring *u)
{
	if (!u)
		return;
	if (u->sqes && u->sqes != MAP_FAILED)
		munmap(u->sqes, u->sqes_len);
	if (u->cq_map && u->cq_map != MAP_FAILED && u->cq_map != u->sq_map)
		munmap(u->cq_map, u->cq_map_len);
	if (u->sq_map && u->sq_map != MAP_FAILED)
		munmap(u->sq_map, u->sq_map_len);
	if (u->fd >= 0)
		close(u->fd);
	free(u);
}

/* An io_uring of at least `entries` SQEs whose completions signal efd; NULL if unavailable. */
static struct hvr_uring *uring_init(uint32_t entries, int efd)
{
	struct io_uring_params prm;
	struct hvr_uring *u = calloc(1, sizeof(*u));
	uint8_t *sq, *cq;

	if (!u)
		return NULL;
	memset(&prm, 0, sizeof(prm));
	u->fd = (int)syscall(__NR_io_uring_setup, entries, &prm);
	if (u->fd < 0)
		goto fail; /* ENOSYS, or refused (kernel.io_uring_disabled, seccomp): no io_uring */
	u->sq_entries = prm.sq_entries;
	u->cq_entries = prm.cq_entries;
	u->sq_map_len = prm.sq_off.array + prm.sq_entries * sizeof(uint32_t);
	u->cq_map_len = prm.cq_off.cqes + prm.cq_entries * sizeof(struct io_uring_cqe);
	if (prm.features & IORING_FEAT_SINGLE_MMAP) {
		if (u->cq_map_len > u->sq_map_len)
			u->sq_map_len = u->cq_map_len;
		u->cq_map_len = u->sq_map_len;
	}
	u->sq_map = mmap(NULL, u->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
			 u->fd, IORING_OFF_SQ_RING);
	if (u->sq_map == MAP_FAILED)
		goto fail;
	if (prm.features & IORING_FEAT_SINGLE_MMAP)
		u->cq_map = u->sq_map;
	else
		u->cq_map = mmap(NULL, u->cq_map_len, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_CQ_RING);
	if (u->cq_map == MAP_FAILED)
		goto fail;
	u->sqes_len = prm.sq_entries * sizeof(struct io_uring_sqe);
	u->sqes = mmap(NULL, u->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
		       IORING_OFF_SQES);
	if (u->sqes == MAP_FAILED)
		goto fail;
	sq = u->sq_map;
	cq = u->cq_map;
	u->sq_head = (uint32_t *)(sq + prm.sq_off.head);
	u->sq_tail = (uint32_t *)(sq + prm.sq_off.tail);
	u->sq_mask = (uint32_t *)(sq + prm.sq_off.ring_mask);
	u->sq_array = (uint32_t *)(sq + prm.sq_off.array);
	u->cq_head = (uint32_t *)(cq + prm.cq_off.head);
	u->cq_tail = (uint32_t *)(cq + prm.cq_off.tail);
	u->cq_mask = (uint32_t *)(cq + prm.cq_off.ring_mask);
	u->cqes = (struct io_uring_cqe *)(cq + prm.cq_off.cqes);
	u->tail = *u->sq_tail;
	if (syscall(__NR_io_uring_register, u->fd, IORING_REGISTER_EVENTFD, &efd, 1) < 0)
		goto fail;
	return u;
fail:
	uring_fini(u);
	return NULL;
}

/* ---- submission and completion, either backend -------------------------------------------- */

static void submit(struct hvr_aio *a, struct io_slot *q)
{
	if (a->uring) {
		uring_queue(a->uring, q);
		return;
	}
	q->next = NULL;
	/* The slot's fields (iovecs, offsets) are published to the worker by the unlock's release;
	 * the worker's lock acquires them. */
	pthread_mutex_lock(&a->mu);
	if (a->sq_tail)
		a->sq_tail->next = q;
	else
		a->sq_head = q;
	a->sq_tail = q;
	pthread_cond_signal(&a->work);
	pthread_mutex_unlock(&a->mu);
}

static void run_slot(struct io_slot *q)
{
	int fd = q->u->fd;

	if (q->kind == IO_SYNC) {
		q->result = fdatasync(fd) < 0 ? -errno : 0;
		return;
	}
	q->result = rw_all(fd, q->kind == IO_WRITE, q->iov, q->cnt, q->off);
	if (q->kind == IO_WRITE && q->fua && q->result >= 0 && fdatasync(fd) < 0)
		q->sync_err = -errno;
}

static void *worker_main(void *arg)
{
	struct hvr_aio *a = arg;
	struct io_slot *q;
	uint64_t one = 1;
	int was_empty;

	pthread_mutex_lock(&a->mu);
	for (;;) {
		while (!a->stop && !a->sq_head)
			pthread_cond_wait(&a->work, &a->mu);
		if (!a->sq_head)
			break; /* stop, and nothing queued (quiesce cancels before stopping) */
		q = a->sq_head;
		a->sq_head = q->next;
		if (!a->sq_head)
			a->sq_tail = NULL;
		a->busy++;
		pthread_mutex_unlock(&a->mu);
		run_slot(q);
		pthread_mutex_lock(&a->mu);
		a->busy--;
		was_empty = !a->done;
		q->next = a->done;
		a->done = q;
		/* The hint the ring thread polls without mu: the slot (result, and the guest RAM the
		 * kernel filled) is published by this unlock; the reaper takes mu before reading it. */
		__atomic_add_fetch(&a->ndone, 1, __ATOMIC_RELEASE);
		if (!a->busy && !a->sq_head)
			pthread_cond_broadcast(&a->idle);
		pthread_mutex_unlock(&a->mu);
		if (was_empty)
			(void)!write(a->wake_fd, &one, sizeof(one));
		pthread_mutex_lock(&a->mu);
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

/* Free a finished slot (ring thread). */
static void release(struct hvr_storage *s, struct hvr_aio *a, struct io_slot *q)
{
	q->next = a->free;
	a->free = q;
	a->outstanding--;
	s->stats.inflight = a->outstanding;
}

/* Build a finished slot's completion in q->resp (ring thread: the stats are its). */
static void finish(struct hvr_storage *s, struct io_slot *q)
{
	struct hvr_scsi_result r;
	uint32_t sense;

	if (q->kind == IO_SYNC) {
		s->stats.flushes++;
		sense = q->result < 0 ? WRITE_ERROR : 0;
	} else {
		sense = rw_done(s, q->kind == IO_WRITE, q->len, q->result, q->fua, q->sync_err);
	}
	if (sense) {
		set_check(&r, sense);
		s->stats.check_conditions++;
	} else {
		set_good(&r, q->kind == IO_SYNC ? 0 : q->len);
	}
	srb_result(&q->resp, &r, q->sense_limit);
}

int hvr_storage_reap(struct hvr_plane *p)
{
	struct hvr_storage *s = p->ctx;
	struct hvr_aio *a = s->aio;
	struct io_slot *list, *q;
	uint32_t size = hvr_storage_packet_size(s->version);
	int n = 0, rc = HVR_OK;

	if (!a)
		return 0;
	if (a->uring) {
		/* what the last drain pass queued goes to the kernel now: one syscall per pass */
		rc = uring_submit(a->uring);
		if (rc < 0)
			return rc;
		list = uring_collect(a->uring);
	} else {
		/* Acquire pairs with the worker's release: a non-zero hint means a slot is (or is
		 * about to be, under mu) on the done list. */
		if (!__atomic_load_n(&a->ndone, __ATOMIC_ACQUIRE))
			return 0;
		pthread_mutex_lock(&a->mu);
		list = a->done;
		a->done = NULL;
		__atomic_store_n(&a->ndone, 0, __ATOMIC_RELAXED); /* workers add under mu */
		pthread_mutex_unlock(&a->mu);
	}
	while (list) {
		q = list;
		list = q->next;
		if (rc == HVR_OK) {
			finish(s, q);
			/* Cannot be full: the handler reserved this completion's room, and the
			 * guest's read_index only moves forward (a view that saw otherwise is
			 * broken and says so here). */
			rc = hvr_out_write_comp(&p->out, q->trans_id, &q->resp, size);
			if (rc == HVR_OK)
				n++;
		}
		release(s, a, q);
	}
	if (rc != HVR_OK)
		return rc == HVR_FULL ? HVR_EBROKEN : rc;
	/* Not committed here: the plane's drain pass, which always follows, commits and signals
	 * (hvr_out_commit's release store of write_index orders these completions - and, through
	 * the mutex above, the data the workers moved into guest RAM - before the guest sees
	 * them). */
	return n;
}

/* Drop queued slots, wait until no worker runs one. Returns the slots dropped. */
static uint32_t pool_drain(struct hvr_storage *s, struct hvr_aio *a)
{
	struct io_slot *q, *list;
	uint32_t n = 0;

	if (a->uring) {
		/* Nothing to cancel cheaply: submit what is queued and wait for every CQE. */
		struct hvr_uring *u = a->uring;

		if (uring_submit(u) < 0) /* SQEs the kernel never took never complete */
			u->in_kernel -= u->tail - __atomic_load_n(u->sq_head, __ATOMIC_ACQUIRE);
		while (u->in_kernel) {
			if (uring_enter(u->fd, 0, 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR &&
			    errno != EAGAIN && errno != EBUSY)
				break; /* the ring is gone: nothing of ours can run any more */
			list = uring_collect(u);
			while (list) {
				q = list;
				list = q->next;
				release(s, a, q);
			}
		}
		return 0;
	}
	pthread_mutex_lock(&a->mu);
	list = a->sq_head;
	a->sq_head = a->sq_tail = NULL;
	while (a->busy)
		pthread_cond_wait(&a->idle, &a->mu);
	pthread_mutex_unlock(&a->mu);
	while (list) {
		q = list;
		list = q->next;
		release(s, a, q);
		n++;
	}
	s->stats.cancelled += n;
	return n;
}

void hvr_storage_quiesce(struct hvr_plane *p)
{
	struct hvr_storage *s = p->ctx;
	struct hvr_aio *a = s->aio;
	struct io_slot *q;

	if (!a)
		return;
	pool_drain(s, a);
	/* Finished but not posted: the channel is going away, nobody reads them. */
	pthread_mutex_lock(&a->mu);
	while ((q = a->done)) {
		a->done = q->next;
		release(s, a, q);
	}
	__atomic_store_n(&a->ndone, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&a->mu);
}

void hvr_storage_attach(struct hvr_plane *p, struct hvr_storage *s)
{
	struct hvr_aio *a = s->aio;
	uint32_t comp = hvr_packet_total(0, hvr_storage_packet_size(s->version)), fit;

	if (!a)
		return;
	/* All outstanding completions plus the next must fit below pending_send_sz's cap. */
	fit = p->out.r.size > 8 ? (p->out.r.size - 8) / comp : 0;
	a->limit = fit > 1 ? min32(a->nslots, fit - 1) : 0;
	if (!a->limit)
		return; /* a ring this small: requests run synchronously (a->cur stays NULL) */
	p->reap = hvr_storage_reap;
	p->on_stop = hvr_storage_quiesce;
	p->wake_fd = a->wake_fd;
}

static void pool_fini(struct hvr_storage *s)
{
	struct hvr_aio *a = s->aio;
	uint32_t i;

	if (!a)
		return;
	if (a->nthreads) {
		pool_drain(s, a);
		pthread_mutex_lock(&a->mu);
		a->stop = 1;
		pthread_cond_broadcast(&a->work);
		pthread_mutex_unlock(&a->mu);
		for (i = 0; i < a->nthreads; i++)
			pthread_join(a->threads[i], NULL);
	}
	if (a->uring) {
		pool_drain(s, a);
		uring_fini(a->uring);
		a->uring = NULL;
	}
	pthread_cond_destroy(&a->idle);
	pthread_cond_destroy(&a->work);
	pthread_mutex_destroy(&a->mu);
	if (a->wake_fd >= 0)
		close(a->wake_fd);
	free(a->slots);
	free(a->iovs);
	free(a);
	s->aio = NULL;
}

/* Start the pool; -ENOMEM, or 0 (with s->aio NULL when threads are unavailable: synchronous). */
static int pool_init(struct hvr_storage *s)
{
	struct hvr_aio *a = calloc(1, sizeof(*a));
	uint32_t i;

	if (!a)
		return -ENOMEM;
	s->aio = a;
	a->wake_fd = -1;
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->work, NULL);
	pthread_cond_init(&a->idle, NULL);
	a->nslots = s->max_inflight ? s->max_inflight : HVR_STORAGE_DEFAULT_INFLIGHT;
	a->limit = 0; /* hvr_storage_attach() sets it: until then, synchronous */
	a->slots = calloc(a->nslots, sizeof(*a->slots));
	a->iovs = calloc((size_t)a->nslots * s->iov_cap, sizeof(struct iovec));
	if (!a->slots || !a->iovs)
		return -ENOMEM;
	for (i = 0; i < a->nslots; i++) {
		a->slots[i].iov = a->iovs + (size_t)i * s->iov_cap;
		a->slots[i].next = a->free;
		a->free = &a->slots[i];
	}
	a->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (a->wake_fd < 0)
		goto sync;
	if (s->io_backend == HVR_IO_URING) {
		uint32_t entries = 1;

		while (entries < a->nslots)
			entries <<= 1;
		a->uring = uring_init(entries, a->wake_fd);
		if (a->uring)
			return 0;
	}
	for (i = 0; i < s->io_workers; i++) {
		if (pthread_create(&a->threads[i], NULL, worker_main, a))
			break;
		a->nthreads++;
	}
	if (a->nthreads)
		return 0;
sync:
	pool_fini(s);
	return 0;
}

/* ---- set-up ------------------------------------------------------------------------------- */

int hvr_storage_init(struct hvr_storage *s)
{
	uint32_t i, j;

	s->iov = NULL;
	s->pfns = NULL;
	s->bounce = NULL;
	s->scratch = NULL;
	s->aio = NULL;
	s->io_mode = HVR_IO_SYNC;
	memset(&s->stats, 0, sizeof(s->stats));
	if (!s->regions || !s->nregions || !s->luns || !s->nluns ||
	    s->io_workers > HVR_STORAGE_MAX_WORKERS || s->max_inflight > HVR_STORAGE_MAX_INFLIGHT ||
	    (s->io_backend != HVR_IO_THREADS && s->io_backend != HVR_IO_URING &&
	     s->io_backend != HVR_IO_SYNC) ||
	    s->nluns > HVR_STORAGE_MAX_LUNS || s->max_transfer_bytes < PAGE ||
	    s->max_transfer_bytes % PAGE || s->max_transfer_bytes > HVR_STORAGE_MAX_TRANSFER)
		return HVR_EINVAL;
	switch (s->version) {
	case VMSTOR_PROTO_VERSION_WIN6: case VMSTOR_PROTO_VERSION_WIN7:
	case VMSTOR_PROTO_VERSION_WIN8: case VMSTOR_PROTO_VERSION_WIN8_1:
	case VMSTOR_PROTO_VERSION_WIN10:
		break;
	default:
		return HVR_EINVAL;
	}
	for (i = 0; i < s->nregions; i++) {
		const struct hvr_ram_region *r = &s->regions[i];

		if ((r->gpa | r->size) % PAGE || !r->size || !r->host ||
		    ((uintptr_t)r->host % PAGE) || r->gpa + r->size < r->gpa)
			return HVR_EINVAL;
	}
	for (i = 0; i < s->nluns; i++) {
		const struct hvr_storage_lun *u = &s->luns[i];

		if (u->fd < 0 || !u->blocks || u->lun > 254 || u->serial_len > 32 ||
		    u->blocks > (UINT64_MAX / HVR_STORAGE_BLOCK))
			return HVR_EINVAL;
		for (j = 0; j < i; j++)
			if (s->luns[j].lun == u->lun)
				return HVR_EINVAL;
	}
	s->pfn_cap = s->max_transfer_bytes / PAGE + 2 * HVR_STORAGE_MAX_GPA_RANGES;
	s->iov_cap = s->pfn_cap;
	/* two halves: the request's buffer, and a scratch copy for a prefix of it */
	s->iov = calloc(2 * (size_t)s->iov_cap, sizeof(struct iovec));
	s->pfns = calloc(s->pfn_cap, sizeof(uint64_t));
	s->scratch = calloc(1, SCRATCH_SIZE);
	if (!s->iov || !s->pfns || !s->scratch)
		return -ENOMEM;
	/* The bounce buffer serves O_DIRECT's unaligned transfers and zero-filling UNMAP where
	 * holes cannot be punched: always there (max_transfer_bytes, page aligned). */
	if (posix_memalign((void **)&s->bounce, PAGE, s->max_transfer_bytes)) {
		s->bounce = NULL;
		return -ENOMEM;
	}
	if (s->io_workers) {
		int rc = pool_init(s);

		if (rc)
			return rc;
		if (s->aio)
			s->io_mode = ((struct hvr_aio *)s->aio)->uring ? HVR_IO_URING : HVR_IO_THREADS;
	}
	return HVR_OK;
}

void hvr_storage_fini(struct hvr_storage *s)
{
	pool_fini(s);
	free(s->iov);
	free(s->pfns);
	free(s->bounce);
	free(s->scratch);
	s->iov = NULL;
	s->pfns = NULL;
	s->bounce = NULL;
	s->scratch = NULL;
}
