/*
 * fuzz_storage.c - libFuzzer harness for the storvsc data plane (csrc/hvr_storage.c): the guest
 * sends vstor_packets (in-band, GPA-direct with fuzzed ranges and PFNs, completions, transfer
 * pages) and the parent executes them against a LUN backed by a memfd, reading and writing guest
 * RAM (two heap regions: ASan sees any byte outside them). Also runs raw CDBs on a host buffer
 * through hvr_storage_exec_cdb (the path scsi.py is compared with).
 *
 * A third configuration byte picks the I/O mode: synchronous, the worker pool (1-2 threads) or
 * io_uring, with 1-32 request slots and completions reaped as the plane thread does; a full pool
 * makes the harness wait for a completion (the plane's HVR_PLANE_RETRY sleep).
 *
 * Invariants (a violation traps): the parent never breaks the guest's receive ring, answers every
 * request with exactly one completion, only refuses packets with the documented statuses, and
 * leaves nothing outstanding once the pool is quiesced.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -DHVR_HOSTED -DHVKVM_FUZZ_PLANE -I..
 *        fuzz_storage.c ../vmbus_ring.c ../hvr_storage.c   (tests/test_fuzz.py does it).
 */
#define HVKVM_FUZZ_PLANE
#include "fuzz_common.h"

#include <sched.h>
#include <sys/mman.h>

#define LUN_BLOCKS 256u

static const uint32_t versions[] = {VMSTOR_PROTO_VERSION_WIN10, VMSTOR_PROTO_VERSION_WIN8_1,
				    VMSTOR_PROTO_VERSION_WIN8, VMSTOR_PROTO_VERSION_WIN7,
				    VMSTOR_PROTO_VERSION_WIN6};

static int disk_fd(void)
{
	static int fd = -1;

	if (fd < 0) {
		fd = memfd_create("fz-lun", MFD_CLOEXEC);
		if (fd < 0 || ftruncate(fd, (off_t)LUN_BLOCKS * HVR_STORAGE_BLOCK) < 0)
			abort();
	}
	return fd;
}

/*
 * The plane thread's loop over one pass: reap finished I/O, then drain (which commits both).
 * A full pool (HVR_PLANE_RETRY) waits for a worker; `all` also waits until nothing is
 * outstanding. Returns the drain's negative error when the plane would stop, else 0.
 */
static int drain_pool(struct fz_guest *g, struct hvr_storage *s, int all)
{
	int rc;

	for (;;) {
		rc = s->aio ? hvr_storage_reap(&g->p) : 0;
		if (rc < 0)
			return rc;
		rc = fz_plane_drain(g, hvr_storage_handler);
		if (rc < 0 && rc != HVR_PLANE_RETRY)
			return rc;
		if (rc == 0 && !(all && s->stats.inflight))
			return 0;
		sched_yield(); /* the workers run */
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in fi = {data, size};
	struct fz_guest g;
	struct hvr_storage s;
	struct hvr_storage_lun luns[2];
	uint8_t cfg = fz_u8(&fi), lcfg = fz_u8(&fi), acfg = fz_u8(&fi);
	uint64_t requests = 0;
	int rc, stopped = 0;

	if (fz_guest_init(&g, 2, 1 + ((cfg >> 3) & 1), (cfg >> 4) & 1))
		abort();
	memset(&s, 0, sizeof(s));
	memset(luns, 0, sizeof(luns));
	for (int i = 0; i < 2; i++) {
		luns[i].fd = disk_fd();
		luns[i].flags = (lcfg >> (2 * i)) & 3;
		luns[i].blocks = LUN_BLOCKS - (uint64_t)i * ((lcfg >> 4) & 7);
		luns[i].lun = i ? 1 + (lcfg >> 7) : 0;
		luns[i].serial_len = i ? 32 : 5;
		memcpy(luns[i].vendor, "Msft    ", 8);
		memcpy(luns[i].product, "Virtual Disk    ", 16);
		memcpy(luns[i].revision, "1.0 ", 4);
		memset(luns[i].serial, 'S', 32);
	}
	s.regions = g.regions;
	s.nregions = 2;
	s.luns = luns;
	s.nluns = 1 + ((cfg >> 5) & 1);
	s.max_transfer_bytes = FZ_PAGE * (1u + (cfg & 7));
	s.version = versions[((cfg >> 6) + 4u * ((lcfg >> 3) & 1)) % 5];
	s.io_workers = (acfg & 1) ? 1u + ((acfg >> 1) & 1) : 0;
	s.io_backend = (acfg & 4) ? HVR_IO_URING : HVR_IO_THREADS;
	s.max_inflight = 1u + (acfg >> 3);
	rc = hvr_storage_init(&s);
	if (rc)
		__builtin_trap(); /* the configuration above is always valid */
	g.p.ctx = &s;
	g.p.wake_fd = -1;
	hvr_storage_attach(&g.p, &s);

	for (int steps = 0; fz_left(&fi) && steps < 64 && !stopped; steps++) {
		uint8_t op = fz_u8(&fi) % 4;

		if (op == 3) { /* a CDB on a host buffer */
			uint8_t cdb[32], lun = fz_u8(&fi) & 3, pt = fz_u8(&fi);
			uint32_t clen = fz_u8(&fi) % 33, blen = fz_u16(&fi) % (FZ_PAGE * 9);
			uint8_t *buf = blen ? malloc(blen) : NULL;
			struct hvr_scsi_result res;

			fz_bytes(&fi, cdb, clen);
			if (buf)
				memset(buf, 0xa5, blen);
			rc = hvr_storage_exec_cdb(&s, pt & 1, (pt >> 1) & 1, lun, cdb, clen, buf, blen,
						  &res);
			if ((rc != 0 && rc != -1) || res.transferred > blen ||
			    res.sense_len > sizeof(res.sense))
				__builtin_trap();
			free(buf);
			continue;
		}
		/* a request packet: a vstor_packet (mostly EXECUTE_SRB) of fuzzed length */
		uint8_t pkt[80];
		uint32_t plen = fz_u8(&fi) % (sizeof(pkt) + 1);

		fz_bytes(&fi, pkt, plen);
		if (op != 2 && plen >= 4) {
			uint32_t oper = op == 0 ? VSTOR_OPERATION_EXECUTE_SRB : pkt[0] % 16;

			memcpy(pkt, &oper, 4);
		}
		rc = fz_guest_send(&g, &fi, pkt, plen);
		if (rc == HVR_OK) {
			requests++;
		} else if (rc == HVR_FULL) {
			rc = drain_pool(&g, &s, 0);
			stopped = rc < 0;
		}
		if (fz_u8(&fi) & 1) {
			rc = drain_pool(&g, &s, 0);
			stopped = rc < 0;
		}
	}
	if (!stopped) {
		while (!stopped && hvr_in_avail(&g.p.in) > 0) {
			uint64_t before = s.stats.requests;

			rc = drain_pool(&g, &s, 0);
			stopped = rc < 0;
			if (s.stats.requests == before)
				break;
		}
		if (!stopped)
			stopped = drain_pool(&g, &s, 1) < 0;
	}
	/* each request the parent took got one completion (COMPs get none) */
	if (g.completions > s.stats.requests)
		__builtin_trap();
	(void)requests;
	/* the plane's on_stop: nothing may stay outstanding (no worker touches RAM afterwards) */
	hvr_storage_quiesce(&g.p);
	if (s.stats.inflight)
		__builtin_trap();
	hvr_storage_fini(&s);
	fz_guest_fini(&g);
	return 0;
}
