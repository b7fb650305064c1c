/*
 * hvr_storage.h - the storvsc data plane: a hvr_plane handler that executes SCSI requests
 * between raw image files and guest RAM (hosted: preadv/pwritev, fdatasync, fallocate).
 *
 * The protocol handshake (BEGIN_INITIALIZATION .. END_INITIALIZATION) is served in Python
 * (hvkvm/vsp/storvsc.py); this handler takes the channel over after it, with the negotiated
 * protocol version, and answers every packet exactly as the Python plane does in that state:
 *
 *   EXECUTE_SRB             the SCSI command set of hvkvm/vsp/scsi.py, byte for byte
 *   RESET_LUN/_BUS/_ADAPTER success (requests run in order: nothing is outstanding)
 *   handshake operations    STATUS_INVALID_DEVICE_STATE (the handshake is over)
 *   anything else           STATUS_NOT_SUPPORTED
 *   a malformed request     STATUS_INVALID_PARAMETER, srb_status SRB_STATUS_INVALID_REQUEST
 *
 * Every request gets a VM_PKT_COMP completion with its trans_id, carrying a vstor_packet of the
 * negotiated size. Room for the completion is checked before the request is executed, so a full
 * ring never makes a request run twice: with requests outstanding, room for all their
 * completions plus this one (they are reserved, so a finished request can always be posted).
 *
 * I/O modes (io_mode, chosen by io_workers and io_backend): HVR_IO_SYNC runs every command on the
 * ring thread, one at a time. HVR_IO_THREADS (a pool of io_workers threads, attached to the plane
 * with hvr_storage_attach()) keeps up to max_inflight READ/WRITE/SYNCHRONIZE CACHE commands in
 * flight; HVR_IO_URING does the same through an io_uring the ring thread submits to and reaps
 * (no thread hand-off; falls back to HVR_IO_THREADS where io_uring is unavailable):
 * the ring thread parses and checks a request (every PFN translated before submission), hands
 * its iovecs to a worker, and posts the completion when the worker is done - in completion order,
 * not request order (storvsc matches completions by trans_id). Reads and writes that the page
 * cache can serve without blocking (preadv2/pwritev2 with RWF_NOWAIT) still run inline on the ring
 * thread; O_DIRECT and cache misses go to the pool. Concurrently outstanding commands have no
 * order among themselves (as in SCSI); a SYNCHRONIZE CACHE covers every write completed (and so
 * acknowledged) before it was received. Stopping the plane cancels queued requests and waits for
 * running ones (hvr_plane on_stop): no worker touches guest RAM after hvr_plane_stop() returns.
 *
 * Guest memory: the caller passes the RAM regions (guest-physical base, size, host address).
 * Every PFN of a GPA-direct request is translated through them and checked (a page outside RAM,
 * byte counts that do not add up to the SRB's data_transfer_length, more than max_transfer_bytes,
 * more than HVR_STORAGE_MAX_GPA_RANGES ranges: the request is refused). No host access outside
 * the regions ever happens on the guest's behalf.
 */
#ifndef HVR_STORAGE_H
#define HVR_STORAGE_H

#include <stdint.h>

#include "hvr_plane.h"
#include "storvsc_proto.h"

#define HVR_STORAGE_BLOCK 512u
#define HVR_STORAGE_MAX_GPA_RANGES 32u
/* Largest max_transfer_bytes accepted (64 MiB). */
#define HVR_STORAGE_MAX_TRANSFER (64u << 20)
/* Request slots (outstanding asynchronous commands) per channel, and worker threads, at most. */
#define HVR_STORAGE_MAX_INFLIGHT 256u
#define HVR_STORAGE_MAX_WORKERS 64u
#define HVR_STORAGE_DEFAULT_INFLIGHT 64u

/* hvr_storage.io_mode (io_backend asks for one; the mode that runs is io_mode) */
#define HVR_IO_SYNC 0u
#define HVR_IO_THREADS 1u
#define HVR_IO_URING 2u     /* io_uring (raw syscalls); unavailable or refused: THREADS */

/* Logical units per channel (LUN numbers 0..254). */
#define HVR_STORAGE_MAX_LUNS 255u

/* hvr_storage_lun.flags */
#define HVR_LUN_READONLY 0x1u
#define HVR_LUN_DIRECT 0x2u    /* fd is O_DIRECT: unaligned buffers go through a bounce */

/* UNMAP limits (VPD 0xB0), the same as hvkvm/vsp/scsi.py's. */
#define HVR_MAX_UNMAP_LBA_COUNT 0x400000u
#define HVR_MAX_UNMAP_DESCRIPTORS 256u

/* One piece of guest RAM. gpa and size are multiples of 4096. */
struct hvr_ram_region {
	uint64_t gpa;
	uint64_t size;
	uint8_t *host;
};

/* One disk as a logical unit; identity strings are space padded (serial: serial_len bytes). */
struct hvr_storage_lun {
	int fd;
	uint32_t flags;
	uint64_t blocks;       /* 512-byte logical blocks */
	uint32_t lun;          /* LUN number (path 0, target 0) */
	uint32_t serial_len;   /* <= 32 */
	uint8_t vendor[8];
	uint8_t product[16];
	uint8_t revision[4];
	uint8_t serial[32];
	uint8_t naa[8];        /* NAA designator for VPD 0x83 */
};

struct hvr_storage_stats {
	uint64_t requests;      /* packets answered */
	uint64_t srbs;          /* EXECUTE_SRB requests */
	uint64_t reads;         /* READ commands that moved data */
	uint64_t writes;        /* WRITE commands that moved data */
	uint64_t flushes;       /* fdatasync calls (SYNCHRONIZE CACHE, FUA) */
	uint64_t unmaps;        /* ranges punched */
	uint64_t errors;        /* completions with a non-zero vstor status */
	uint64_t invalid;       /* malformed requests refused */
	uint64_t check_conditions;
	uint64_t bytes_read;
	uint64_t bytes_written;
	uint64_t bounced;       /* O_DIRECT transfers that went through the bounce buffer */
	uint64_t async;         /* commands handed to the worker pool */
	uint64_t inline_io;     /* reads/writes served inline from the page cache (RWF_NOWAIT) */
	uint64_t cancelled;     /* queued commands dropped when the plane stopped */
	uint64_t inflight;      /* commands outstanding now (submitted, completion not posted) */
	uint64_t inflight_max;  /* the most ever outstanding at once */
};

/* The outcome of one SCSI command. */
struct hvr_scsi_result {
	uint8_t srb_status;
	uint8_t scsi_status;
	uint8_t sense_len;      /* bytes of sense[] (18 for fixed format), 0 without */
	uint8_t reserved;
	uint32_t transferred;   /* bytes moved to or from the buffer */
	uint8_t sense[STORVSC_SENSE_BUFFER_SIZE];
};

struct hvr_storage {
	/* set by the caller before hvr_storage_init(), constant afterwards */
	const struct hvr_ram_region *regions;
	uint32_t nregions;
	const struct hvr_storage_lun *luns;
	uint32_t nluns;
	uint32_t max_transfer_bytes;   /* a multiple of 4096, <= HVR_STORAGE_MAX_TRANSFER */
	uint32_t version;              /* the negotiated VMSTOR_PROTO_VERSION_* */
	uint32_t io_workers;           /* 0: HVR_IO_SYNC; else pool threads (<= MAX_WORKERS) */
	uint32_t io_backend;           /* with io_workers: HVR_IO_THREADS or HVR_IO_URING */
	uint32_t max_inflight;         /* request slots; 0: HVR_STORAGE_DEFAULT_INFLIGHT */
	uint32_t io_mode;              /* set by hvr_storage_init(): the mode actually running */
	/* owned: hvr_storage_init() allocates, hvr_storage_fini() frees */
	void *iov;                     /* struct iovec[iov_cap] */
	uint32_t iov_cap;
	uint32_t pfn_cap;
	uint64_t *pfns;
	uint8_t *bounce;               /* aligned, max_transfer_bytes; only with an O_DIRECT LUN */
	uint8_t *scratch;              /* generated data and parameter lists */
	void *aio;                     /* the pool and its request slots (HVR_IO_THREADS) */
	struct hvr_storage_stats stats;
};

/*
 * Check the configuration, allocate the work buffers and start the worker pool (io_workers > 0).
 * Returns 0, HVR_EINVAL (bad regions, LUNs, sizes, version or io settings) or -ENOMEM. A pool
 * whose threads cannot be created falls back to HVR_IO_SYNC (io_mode says which runs). Call
 * hvr_storage_fini() in every case.
 */
int hvr_storage_init(struct hvr_storage *s);

/* Cancel queued commands, wait for running ones, stop the pool, free. Idempotent. */
void hvr_storage_fini(struct hvr_storage *s);

/*
 * Hook the storage into its plane before hvr_plane_start() (p->ctx is s): reap, on_stop and
 * wake_fd for the pool, and the number of slots usable with this receive ring (all their
 * completions must fit it at once). Without a pool (HVR_IO_SYNC) it changes nothing.
 */
void hvr_storage_attach(struct hvr_plane *p, struct hvr_storage *s);

/* hvr_plane reap hook: write the completions of finished commands to the receive ring (the
 * caller commits them: hvr_plane's drain pass does). Count or negative error. */
int hvr_storage_reap(struct hvr_plane *p);

/* hvr_plane on_stop hook: cancel queued commands and wait for running ones (their completions
 * are not posted: the channel is going away). */
void hvr_storage_quiesce(struct hvr_plane *p);

/* The hvr_plane handler; p->ctx is the struct hvr_storage. */
int hvr_storage_handler(struct hvr_plane *p, const struct hvr_pkt *pkt);

/* Bytes of a vstor_packet on the wire under protocol `version` (64, or 48 before Windows 8). */
uint32_t hvr_storage_packet_size(uint32_t version);

/*
 * Run one SCSI command on a host buffer (tests compare this with hvkvm/vsp/scsi.py). Returns 0,
 * or -1 when the request disagrees with itself (the CDB's data does not fit buf_len): the VSP
 * then answers SRB_STATUS_INVALID_REQUEST.
 */
int hvr_storage_exec_cdb(struct hvr_storage *s, uint8_t path_id, uint8_t target_id, uint8_t lun,
			 const uint8_t *cdb, uint32_t cdb_len, uint8_t *buf, uint32_t buf_len,
			 struct hvr_scsi_result *res);

#endif
