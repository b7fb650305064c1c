/*
 * hostile_dev - a guest that attacks the parent's storvsc and netvsc VSPs and its virtio-blk
 * device with requests that disagree with themselves. Needs `hyperv`, a storvsc VSP (disk
 * attacks), a netvsc VSP (network attacks) or a virtio-blk device (vblk_* attacks: `dev=virtio
 * virtio_mmio.device=...`), and an echo VSP (the bystander: SYNC 0x1ff).
 *
 * Each attack opens its device with the guest's own VSC (handshake and probe as Linux does them),
 * then writes raw requests to the channel's rings and checks each answer against what the
 * protocol says (both data planes, C and Python, answer alike). SYNC stages (values):
 *   0x100 started (attack index)
 *   0x101 attack done: requests whose answer matched, requests, bit mask of the mismatches
 *         (attack-specific values otherwise, listed at each attack)
 *   0x1ff bystander (echoes sent, echoes back)
 * then DONE(0). A mismatch is logged ("case N: ...") and fails the run.
 */
#include "dev.h"

static uint64_t ram_pages(void)
{
	uint64_t end = 0;

	for (uint32_t i = 0; i < hv_boot.memmap_entries; i++)
		if (hv_boot.memmap[i].type == 1 &&
		    hv_boot.memmap[i].addr + hv_boot.memmap[i].size > end)
			end = hv_boot.memmap[i].addr + hv_boot.memmap[i].size;
	return end / HVR_PAGE_SIZE;
}

static int bystander(void)
{
	hostile_bystander_check(hostile_open_echo(0, dev_echo_area, 4));
	return 0;
}

/* Poll `r` for the completion with `trans` (`ms` at most). Transfer-page packets from the parent
 * are completed at once (netvsc's receive sections). Returns the payload length (copied to out,
 * up to `max` bytes) or -1 when nothing came. */
static int wait_completion(struct vmbus_rings *r, uint64_t trans, void *out, uint32_t max,
			   uint32_t ms)
{
	uint64_t deadline = hv_time_us() + (uint64_t)ms * 1000;
	struct hvr_pkt p;
	int got = -1, rc;

	while (got < 0 && hv_time_us() < deadline) {
		rc = vmbus_rings_read(r, &p);
		if (rc == HVR_EMPTY) {
			hv_pause();
			continue;
		}
		if (rc != HVR_OK)
			break;
		if (p.type == VM_PKT_COMP && p.trans_id == trans) {
			uint32_t n = p.payload_len < max ? p.payload_len : max;

			memset(out, 0, max);
			hvr_in_copy(&r->in, &p, p.payload_off, out, n);
			got = (int)p.payload_len;
		} else if (p.type == VM_PKT_DATA_USING_XFER_PAGES) {
			uint32_t c[2] = {NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE, NVSP_STAT_SUCCESS};

			if (hvr_out_write_comp(&r->out, p.trans_id, c, sizeof(c)) == HVR_OK &&
			    vmbus_rings_commit(r) >= 0)
				vmbus_kick(r->connection_id);
		}
		if (vmbus_rings_release(r) == 1)
			vmbus_kick(r->connection_id);
	}
	return got;
}

static int send_raw(struct vmbus_rings *r, uint16_t type, uint64_t trans, const void *hdr,
		    uint32_t hl, const void *payload, uint32_t plen, bool completion)
{
	struct hvr_iov iov[2] = {{hdr, hl}, {payload, plen}};
	int rc = hvr_out_write(&r->out, type,
			       completion ? VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED : 0, trans,
			       hl, iov, 2);

	if (rc == HVR_OK && vmbus_rings_commit(r) >= 0)
		vmbus_kick(r->connection_id);
	return rc;
}

/* ---- storvsc ----------------------------------------------------------------------------------- */

struct srange {
	uint32_t count, offset, npfn;
	uint64_t pfn; /* first PFN; the next ones follow */
};

struct scase {
	const char *what;
	uint32_t op;          /* vstor operation (0: EXECUTE_SRB) */
	uint8_t cdb[16], cdb_len, lun, path;
	uint32_t xfer;        /* data_transfer_length */
	uint32_t plen;        /* vstor_packet bytes sent (0: 64) */
	uint32_t nranges;     /* GPA ranges (0: in-band) */
	struct srange r[33];
	/* expected: vstor status, SRB status (0xff: not checked), ASC (0: not checked) */
	uint32_t vstor;
	uint8_t srb, asc;
};

#define INV STATUS_INVALID_PARAMETER, SRB_STATUS_INVALID_REQUEST, 0
#define CHK(asc) 0, SRB_STATUS_ERROR, asc
#define OK 0, SRB_STATUS_SUCCESS, 0
#define NOLUN 0, SRB_STATUS_INVALID_LUN, 0
#define NOTSUP STATUS_NOT_SUPPORTED, 0xff, 0
#define BADSTATE STATUS_INVALID_DEVICE_STATE, 0xff, 0

static uint8_t *sbuf;  /* 64 KiB of DMA memory */

static bool run_scase(struct storvsc_dev *d, const struct scase *c, unsigned i)
{
	static uint64_t trans = 0x5347000000000000ull;
	struct vstor_packet pkt, resp;
	uint64_t hdr[1 + 33 * 4];
	uint32_t hl = 0;
	int n;

	memset(&pkt, 0, sizeof(pkt));
	pkt.operation = c->op ? c->op : VSTOR_OPERATION_EXECUTE_SRB;
	pkt.flags = REQUEST_COMPLETION_FLAG;
	pkt.vm_srb.length = sizeof(struct vmscsi_request);
	pkt.vm_srb.path_id = c->path;
	pkt.vm_srb.lun = c->lun;
	pkt.vm_srb.cdb_length = c->cdb_len;
	pkt.vm_srb.sense_info_length = STORVSC_SENSE_BUFFER_SIZE;
	pkt.vm_srb.data_in = READ_TYPE;
	pkt.vm_srb.data_transfer_length = c->xfer;
	memcpy(pkt.vm_srb.cdb, c->cdb, sizeof(pkt.vm_srb.cdb));
	if (c->nranges) {
		uint32_t *w = (uint32_t *)hdr;

		w[0] = 0;
		w[1] = c->nranges;
		hl = 8;
		for (uint32_t k = 0; k < c->nranges; k++) {
			memcpy((uint8_t *)hdr + hl, &c->r[k].count, 4);
			memcpy((uint8_t *)hdr + hl + 4, &c->r[k].offset, 4);
			hl += 8;
			for (uint32_t j = 0; j < c->r[k].npfn; j++) {
				uint64_t pfn = c->r[k].pfn + j;

				memcpy((uint8_t *)hdr + hl, &pfn, 8);
				hl += 8;
			}
		}
	}
	trans++;
	if (send_raw(&d->rings, c->nranges ? VM_PKT_DATA_USING_GPA_DIRECT : VM_PKT_DATA_INBAND,
		     trans, hdr, hl, &pkt, c->plen ? (c->plen == 1 ? 0 : c->plen) : sizeof(pkt),
		     true) != HVR_OK) {
		hv_log("case %u (%s): could not be written", i, c->what);
		return false;
	}
	n = wait_completion(&d->rings, trans, &resp, sizeof(resp), 3000);
	if (n < 0) {
		hv_log("case %u (%s): no completion", i, c->what);
		return false;
	}
	if (resp.operation != VSTOR_OPERATION_COMPLETE_IO || resp.status != c->vstor ||
	    (c->srb != 0xff && SRB_STATUS(resp.vm_srb.srb_status) != c->srb) ||
	    (c->asc && resp.vm_srb.sense_data[12] != c->asc)) {
		hv_log("case %u (%s): operation %u status 0x%x srb 0x%x scsi 0x%x asc 0x%x; "
		       "expected status 0x%x srb 0x%x asc 0x%x", i, c->what, resp.operation,
		       resp.status, resp.vm_srb.srb_status, resp.vm_srb.scsi_status,
		       resp.vm_srb.sense_data[12], c->vstor, c->srb, c->asc);
		return false;
	}
	return true;
}

static void cdb10(struct scase *c, uint32_t cnt)
{
	c->cdb[0] = 0x28;
	c->cdb[7] = (uint8_t)(cnt >> 8);
	c->cdb[8] = (uint8_t)cnt;
	c->cdb_len = 10;
}

static void cdb16(struct scase *c, uint64_t lba, uint32_t cnt)
{
	c->cdb[0] = 0x88;
	for (int b = 0; b < 8; b++)
		c->cdb[2 + b] = (uint8_t)(lba >> (56 - 8 * b));
	for (int b = 0; b < 4; b++)
		c->cdb[10 + b] = (uint8_t)(cnt >> (24 - 8 * b));
	c->cdb_len = 16;
}

static struct storvsc_dev *open_disk(void)
{
	struct storvsc_dev *d = &dev_disk;
	int rc = storvsc_open(d, 0, 8);

	HV_ASSERT(rc == 0, "hostile_dev: storvsc_open: %d (%s)", rc, storvsc_strerror(rc));
	if (!sbuf)
		sbuf = storvsc_dma_alloc(65536);
	HV_ASSERT(sbuf != NULL);
	return d;
}

/* Requests whose transfer length, PFN list, CDB, LBA range, LUN, operation or size disagree with
 * each other or with the disk: each answered with the status the protocol names, never executed
 * against memory outside guest RAM. SYNC 0x101 (matched, cases, mismatch mask). */
static int stor_requests(void)
{
	struct storvsc_dev *d = open_disk();
	uint64_t pb = (uintptr_t)sbuf >> 12, ram = ram_pages(), blocks = d->blocks;
	static struct scase cases[64];
	uint32_t nc = 0, matched = 0;
	uint64_t mask = 0;
	struct scase *c;

#define NEW(name) do { c = &cases[nc++]; memset(c, 0, sizeof(*c)); c->what = (name); } while (0)
#define R10(cnt) cdb10(c, (cnt))
#define R16(lba, cnt) cdb16(c, (lba), (cnt))
#define RANGE(k, cnt_, off_, np_, pfn_) (c->r[k] = (struct srange){(cnt_), (off_), (np_), (pfn_)})
#define EXPECT_(v, s, a) (c->vstor = (v), c->srb = (s), c->asc = (a))
#define EXPECT(...) EXPECT_(__VA_ARGS__)

	NEW("transfer length below the ranges"); R10(8); c->xfer = 4096; c->nranges = 1;
	RANGE(0, 8192, 0, 2, pb); EXPECT(INV);
	NEW("transfer length above the ranges"); R10(8); c->xfer = 8192; c->nranges = 1;
	RANGE(0, 4096, 0, 1, pb); EXPECT(INV);
	NEW("CDB wants more than the buffer"); R10(16); c->xfer = 4096; c->nranges = 1;
	RANGE(0, 4096, 0, 1, pb); EXPECT(INV);
	NEW("READ without a buffer"); R10(8); EXPECT(INV);
	NEW("transfer length without a buffer"); R10(8); c->xfer = 4096; EXPECT(INV);
	NEW("PFN beyond RAM"); R10(8); c->xfer = 4096; c->nranges = 1;
	RANGE(0, 4096, 0, 1, ram + 10); EXPECT(INV);
	NEW("range straddling the end of RAM"); R10(1); c->xfer = 512; c->nranges = 1;
	RANGE(0, 512, 3900, 2, ram - 1); EXPECT(INV);
	NEW("PFN 2^52"); R10(8); c->xfer = 4096; c->nranges = 1;
	RANGE(0, 4096, 0, 1, 1ull << 52); EXPECT(INV);
	NEW("transfer length 4 GiB"); R10(8); c->xfer = 0xffffffffu; c->nranges = 1;
	RANGE(0, 4096, 0, 1, pb); EXPECT(INV);
	NEW("33 ranges"); R10(33); c->xfer = 33 * 512; c->nranges = 33;
	for (uint32_t k = 0; k < 33; k++)
		RANGE(k, 512, 0, 1, pb + k % 16);
	EXPECT(INV);
	NEW("LBA 2^64 - 1"); R16(~0ull, 1); c->xfer = 512; c->nranges = 1;
	RANGE(0, 512, 0, 1, pb); EXPECT(CHK(0x21));
	NEW("LBA + count past the end"); R16(blocks - 1, 2); c->xfer = 1024; c->nranges = 1;
	RANGE(0, 1024, 0, 1, pb); EXPECT(CHK(0x21));
	NEW("LBA 2^63, no blocks"); R16(1ull << 63, 0); c->cdb[0] = 0x8a; EXPECT(CHK(0x21));
	NEW("READ(10) of 65535 blocks"); R10(0xffff); c->xfer = 4096; c->nranges = 1;
	RANGE(0, 4096, 0, 1, pb); EXPECT(CHK(0x24));
	NEW("CDB length 0"); R10(1); c->cdb_len = 0; EXPECT(INV);
	NEW("CDB length 17"); R10(1); c->cdb_len = 17; EXPECT(INV);
	NEW("CDB length 255"); R10(1); c->cdb_len = 255; EXPECT(INV);
	NEW("READ(16) in a 6-byte CDB"); R16(0, 1); c->cdb_len = 6; c->xfer = 512; c->nranges = 1;
	RANGE(0, 512, 0, 1, pb); EXPECT(CHK(0x24));
	NEW("unknown opcode"); c->cdb[0] = 0xff; c->cdb_len = 16; EXPECT(CHK(0x20));
	NEW("LUN 7"); c->cdb_len = 6; c->lun = 7; EXPECT(NOLUN);
	NEW("path 1"); c->cdb_len = 6; c->path = 1; EXPECT(NOLUN);
	NEW("UNMAP list past its buffer"); c->cdb[0] = 0x42; c->cdb[7] = 0xff; c->cdb[8] = 0xff;
	c->cdb_len = 10; c->xfer = 512; c->nranges = 1; RANGE(0, 512, 0, 1, pb + 2); EXPECT(INV);
	NEW("UNMAP of 300 descriptors"); c->cdb[0] = 0x42; c->cdb[7] = 4808 >> 8;
	c->cdb[8] = 4808 & 0xff; c->cdb_len = 10; c->xfer = 4808; c->nranges = 1;
	RANGE(0, 4808, 0, 2, pb + 4); EXPECT(CHK(0x26));
	NEW("UNMAP past the end"); c->cdb[0] = 0x42; c->cdb[8] = 24; c->cdb_len = 10;
	c->xfer = 24; c->nranges = 1; RANGE(0, 24, 0, 1, pb + 6); EXPECT(CHK(0x21));
	NEW("MODE SENSE subpage 0x55"); c->cdb[0] = 0x1a; c->cdb[2] = 0x3f; c->cdb[3] = 0x55;
	c->cdb[4] = 255; c->cdb_len = 6; c->xfer = 255; c->nranges = 1;
	RANGE(0, 255, 0, 1, pb + 7); EXPECT(CHK(0x24));
	NEW("REPORT LUNS: 4 GiB allocation, 16-byte buffer"); c->cdb[0] = 0xa0;
	memset(c->cdb + 6, 0xff, 4); c->cdb_len = 12; c->xfer = 16; c->nranges = 1;
	RANGE(0, 16, 0, 1, pb + 8); EXPECT(OK);
	NEW("VPD 0x83: 64 KiB allocation, 8-byte buffer"); c->cdb[0] = 0x12; c->cdb[1] = 1;
	c->cdb[2] = 0x83; c->cdb[3] = 0xff; c->cdb[4] = 0xff; c->cdb_len = 6; c->xfer = 8;
	c->nranges = 1; RANGE(0, 8, 4090, 2, pb + 9); EXPECT(OK);
	NEW("an honest READ(10)"); R10(8); c->xfer = 4096; c->nranges = 1;
	RANGE(0, 4096, 100, 2, pb + 10); EXPECT(OK);
	static const uint32_t ops[] = {0xffff0000u, 2, 11, 12, 13, 14, 0xffffffffu};
	for (uint32_t k = 0; k < HV_ARRAY_SIZE(ops); k++) {
		NEW("operation not served"); c->op = ops[k]; EXPECT(NOTSUP);
	}
	static const uint32_t hs_ops[] = {7, 8, 9, 10};
	for (uint32_t k = 0; k < HV_ARRAY_SIZE(hs_ops); k++) {
		NEW("handshake operation after the handshake"); c->op = hs_ops[k]; EXPECT(BADSTATE);
	}
	static const uint32_t shorts[] = {1, 4, 12, 47, 63};
	for (uint32_t k = 0; k < HV_ARRAY_SIZE(shorts); k++) {
		NEW("short packet"); R10(1); c->plen = shorts[k]; EXPECT(INV);
	}
	HV_ASSERT(nc <= HV_ARRAY_SIZE(cases));

	/* the UNMAP parameter lists: 300 descriptors; one past the end */
	memset(sbuf + 4 * 4096, 0, 2 * 4096);
	sbuf[4 * 4096 + 2] = 4800 >> 8;
	sbuf[4 * 4096 + 3] = 4800 & 0xff;
	memset(sbuf + 6 * 4096, 0, 24);
	sbuf[6 * 4096 + 3] = 16;
	for (int b = 0; b < 8; b++)
		sbuf[6 * 4096 + 8 + b] = (uint8_t)((blocks + 5) >> (56 - 8 * b));
	sbuf[6 * 4096 + 8 + 11] = 1;

	for (uint32_t i = 0; i < nc; i++) {
		if (run_scase(d, &cases[i], i))
			matched++;
		else
			mask |= 1ull << (i & 63);
	}
	hv_sync(0x101, matched, nc, mask);
	HV_ASSERT_EQ(matched, nc, "storvsc answers (mask 0x%llx)", (unsigned long long)mask);
	/* the disk still works for honest requests */
	HV_ASSERT_EQ(storvsc_read(d, 0, 8, sbuf, NULL), 0, "a READ after the attack");
	return bystander();
}

/* SYNCHRONIZE CACHE as fast as the rings take them, from ring 3. SYNC 0x101 (completed,
 * errors, microseconds). */
static int stor_sync_storm(void)
{
	struct storvsc_dev *d = open_disk();
	struct sync_storm *s = &dev_storm;
	uint64_t us;

	memset(s, 0, sizeof(*s));
	s->d = d;
	s->count = (uint32_t)hv_arg_u64("count", 2000);
	s->qd = storvsc_qd_max(d, 512);
	if (s->qd > 32)
		s->qd = 32;
	HV_ASSERT_EQ(hv_run_user(dev_storm_task, s), 0);
	us = d->tsc_hz ? s->cycles * 1000000 / d->tsc_hz : 0;
	hv_sync(0x101, s->done, s->errors, us);
	HV_ASSERT_EQ(s->errors, 0);
	return bystander();
}

/* A GPA range whose byte count needs more PFNs than it lists: the ring itself is malformed, the
 * parent stops serving the channel. SYNC 0x101 (1 if a completion still came). */
static int stor_pfn_count_mismatch(void)
{
	struct storvsc_dev *d = open_disk();
	struct scase c;
	bool answered;

	memset(&c, 0, sizeof(c));
	c.what = "8192 bytes in one PFN";
	c.cdb[0] = 0x28;
	c.cdb[8] = 16;
	c.cdb_len = 10;
	c.xfer = 8192;
	c.nranges = 1;
	c.r[0] = (struct srange){8192, 0, 1, (uintptr_t)sbuf >> 12};
	c.vstor = STATUS_INVALID_PARAMETER;
	c.srb = 0xff;
	answered = run_scase(d, &c, 0);
	hv_sync(0x101, answered);
	return bystander();
}

/* ---- netvsc ------------------------------------------------------------------------------------ */

static struct netvsc *open_nic(void)
{
	struct netvsc *nv = &dev_nic;
	struct netvsc_config cfg;
	int rc;

	memset(&cfg, 0, sizeof(cfg));
	cfg.ring_area = dev_net_ring;
	cfg.ring_pages = DEV_NET_RING_PAGES;
	cfg.recv_buf = dev_net_recv;
	cfg.recv_size = DEV_NET_RECV;
	cfg.send_buf = dev_net_send;
	cfg.send_size = DEV_NET_SEND;
	rc = netvsc_open(nv, &cfg);
	HV_ASSERT(rc == 0, "hostile_dev: netvsc_open: %d (host status 0x%x)", rc, nv->last_status);
	return nv;
}

/* One SEND_RNDIS_PKT (section idx/size, or GPA ranges in `gpa`); returns the completion status,
 * or -1 when none came. */
static int rndis_send(struct netvsc *nv, uint32_t chan, uint32_t idx, uint32_t size,
		      const void *gpa, uint32_t gl, uint32_t ms)
{
	static uint64_t trans = 0x4e45000000000000ull;
	struct nvsp_message m;
	uint32_t c[2];

	memset(&m, 0, sizeof(m));
	m.hdr.msg_type = NVSP_MSG1_TYPE_SEND_RNDIS_PKT;
	m.msg.v1_msg.send_rndis_pkt.channel_type = chan;
	m.msg.v1_msg.send_rndis_pkt.send_buf_section_index = idx;
	m.msg.v1_msg.send_rndis_pkt.send_buf_section_size = size;
	trans++;
	if (send_raw(&nv->rings, gpa ? VM_PKT_DATA_USING_GPA_DIRECT : VM_PKT_DATA_INBAND, trans,
		     gpa, gl, &m, sizeof(m), true) != HVR_OK)
		return -2;
	if (wait_completion(&nv->rings, trans, c, sizeof(c), ms) < 0)
		return -1;
	return c[0] == NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE ? (int)c[1] : -3;
}

static uint8_t *section(struct netvsc *nv, uint32_t i)
{
	return nv->send_buf + (size_t)i * nv->send_section_size;
}

static uint32_t put_rndis(uint8_t *p, uint32_t type, uint32_t len, const void *body, uint32_t bl)
{
	memcpy(p, &type, 4);
	memcpy(p + 4, &len, 4);
	if (body)
		memcpy(p + 8, body, bl);
	return 8 + bl;
}

/* One honest RNDIS KEEPALIVE (its answer comes through the receive buffer). */
static int keepalive(struct netvsc *nv, uint32_t sec)
{
	uint32_t id = 0x4b41;

	put_rndis(section(nv, sec), RNDIS_MSG_KEEPALIVE, 12, &id, 4);
	return rndis_send(nv, NVSP_CONTROL_CHANNEL_TYPE, sec, 12, NULL, 0, 3000);
}

struct ncase {
	const char *what;
	int got, expect;
};

static int check_ncases(struct ncase *c, uint32_t n)
{
	uint32_t matched = 0;
	uint64_t mask = 0;

	for (uint32_t i = 0; i < n; i++) {
		if (c[i].got == c[i].expect) {
			matched++;
		} else {
			mask |= 1ull << i;
			hv_log("case %u (%s): completion %d, expected %d", i, c[i].what, c[i].got,
			       c[i].expect);
		}
	}
	hv_sync(0x101, matched, n, mask);
	HV_ASSERT_EQ(matched, n, "netvsc answers (mask 0x%llx)", (unsigned long long)mask);
	return 0;
}

/* RNDIS through bad sections, bad lengths and offsets, oversized frames, bad GPA ranges,
 * unknown NVSP messages, forged receive completions. SYNC 0x101 as for stor_requests. */
static int net_requests(void)
{
	struct netvsc *nv = open_nic();
	uint32_t ssz = nv->send_section_size, scount = nv->send_section_count, n = 0;
	uint64_t ram = ram_pages();
	uint8_t *big = storvsc_dma_alloc(4 * HVR_PAGE_SIZE);
	static struct ncase c[32];
	uint8_t body[64];
	uint64_t gh[2 + 66 * 2];

	HV_ASSERT(big != NULL && scount >= 4);
#define NC(name, call, exp) (c[n].what = (name), c[n].got = (call), c[n].expect = (exp), n++)
	NC("honest KEEPALIVE", keepalive(nv, 0), NVSP_STAT_SUCCESS);
	NC("section index past the buffer", rndis_send(nv, 1, scount + 5, 100, NULL, 0, 3000),
	   NVSP_STAT_FAIL);
	NC("section size past the section", rndis_send(nv, 1, 0, ssz + 1, NULL, 0, 3000),
	   NVSP_STAT_FAIL);
	NC("section size 0", rndis_send(nv, 1, 0, 0, NULL, 0, 3000), NVSP_STAT_FAIL);
	put_rndis(section(nv, 1), RNDIS_MSG_KEEPALIVE, 4, NULL, 0);
	NC("RNDIS msg_len 4", rndis_send(nv, 1, 1, 16, NULL, 0, 3000), NVSP_STAT_INVALID_RNDIS_PKT);
	put_rndis(section(nv, 1), RNDIS_MSG_KEEPALIVE, 4096, NULL, 0);
	NC("RNDIS msg_len past the data", rndis_send(nv, 1, 1, 64, NULL, 0, 3000),
	   NVSP_STAT_INVALID_RNDIS_PKT);
	memset(body, 0, sizeof(body));
	*(uint32_t *)body = 0xfff0;          /* data_offset */
	*(uint32_t *)(body + 4) = 60;        /* data_len */
	put_rndis(section(nv, 2), RNDIS_MSG_PACKET, 8 + 36 + 60, body, 36);
	NC("RNDIS_PACKET data_offset past the message", rndis_send(nv, 0, 2, 104, NULL, 0, 3000),
	   NVSP_STAT_INVALID_RNDIS_PKT);
	*(uint32_t *)body = 36;
	*(uint32_t *)(body + 4) = 10;
	put_rndis(section(nv, 2), RNDIS_MSG_PACKET, 8 + 36 + 60, body, 36);
	NC("RNDIS_PACKET frame of 10 bytes", rndis_send(nv, 0, 2, 104, NULL, 0, 3000),
	   NVSP_STAT_INVALID_RNDIS_PKT);
	put_rndis(section(nv, 3), 0x77, 16, NULL, 0);
	NC("unknown RNDIS message type", rndis_send(nv, 1, 3, 16, NULL, 0, 3000),
	   NVSP_STAT_INVALID_RNDIS_PKT);
	for (uint32_t k = 0; k < 9; k++) {
		uint32_t id = k;

		put_rndis(section(nv, 3) + 12 * k, RNDIS_MSG_KEEPALIVE, 12, &id, 4);
	}
	NC("nine control messages in one packet", rndis_send(nv, 1, 3, 108, NULL, 0, 3000),
	   NVSP_STAT_INVALID_RNDIS_PKT);
	/* a 9000-byte frame in guest RAM, sent GPA-direct (mtu 1500) */
	memset(big, 0x61, 4 * HVR_PAGE_SIZE);
	*(uint32_t *)body = 36;
	*(uint32_t *)(body + 4) = 9000;
	put_rndis(big, RNDIS_MSG_PACKET, 8 + 36 + 9000, body, 36);
	gh[0] = 1ull << 32;
	gh[1] = 8 + 36 + 9000;
	for (uint32_t k = 0; k < 3; k++)
		gh[2 + k] = ((uintptr_t)big >> 12) + k;
	NC("a 9000-byte frame", rndis_send(nv, 0, HVR_NET_NO_SECTION_GUEST, 0, gh, 40, 3000),
	   NVSP_STAT_INVALID_RNDIS_PKT);
	gh[1] = 100;
	gh[2] = ram + 3;
	NC("GPA range beyond RAM", rndis_send(nv, 1, HVR_NET_NO_SECTION_GUEST, 0, gh, 24, 3000),
	   NVSP_STAT_FAIL);
	gh[0] = 65ull << 32;
	for (uint32_t k = 0; k < 65; k++) {
		gh[1 + 2 * k] = 8;
		gh[2 + 2 * k] = (uintptr_t)big >> 12;
	}
	NC("65 GPA ranges", rndis_send(nv, 1, HVR_NET_NO_SECTION_GUEST, 0, gh, 8 + 65 * 16, 3000),
	   NVSP_STAT_FAIL);
	NC("no section and no ranges", rndis_send(nv, 1, HVR_NET_NO_SECTION_GUEST, 0, NULL, 0, 3000),
	   NVSP_STAT_FAIL);
	/* NVSP messages that are not served now, and one too short to be one */
	{
		static const uint32_t types[] = {0, 99, 0xffffffffu};
		static uint64_t trans = 0x4e56000000000000ull;
		uint32_t m[10], r[2];

		for (uint32_t k = 0; k < HV_ARRAY_SIZE(types); k++) {
			memset(m, 0, sizeof(m));
			m[0] = types[k];
			send_raw(&nv->rings, VM_PKT_DATA_INBAND, ++trans, NULL, 0, m, sizeof(m), true);
			NC("NVSP message not served",
			   wait_completion(&nv->rings, trans, r, sizeof(r), 3000) >= 0 &&
				   r[0] == types[k] ? (int)r[1] : -1, NVSP_STAT_FAIL);
		}
		/* (VMBus lengths are multiples of 8: the shortest payload is none at all) */
		send_raw(&nv->rings, VM_PKT_DATA_INBAND, ++trans, NULL, 0, m, 0, true);
		NC("NVSP message of 0 bytes", wait_completion(&nv->rings, trans, r, sizeof(r), 300),
		   -1);
	}
	/* receive completions for transfers the parent never sent */
	{
		uint64_t seed = 7;
		uint32_t cm[2] = {NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE, NVSP_STAT_SUCCESS};

		for (uint32_t k = 0; k < 50; k++)
			send_raw(&nv->rings, VM_PKT_COMP, hostile_rand(&seed), NULL, 0, cm,
				 sizeof(cm), false);
	}
	NC("honest KEEPALIVE after it all", keepalive(nv, 0), NVSP_STAT_SUCCESS);
	return check_ncases(c, n) ? 1 : bystander();
}

/* GPADL_TEARDOWN of a live buffer, raw (no wait): returns how many GPADL_TORNDOWNs came back
 * at once (the parent answers in the hypercall when it answers at all). */
static int teardown_now(struct vmbus_channel *ch, uint32_t gpadl)
{
	struct vmbus_channel_gpadl_teardown td;
	uint32_t before = hostile_msgs.torndown;

	memset(&td, 0, sizeof(td));
	td.header.msgtype = CHANNELMSG_GPADL_TEARDOWN;
	td.child_relid = ch->relid;
	td.gpadl = gpadl;
	if (hostile_post_msg(&td, sizeof(td)) != HV_STATUS_SUCCESS)
		return -1;
	return (int)(hostile_msgs.torndown - before);
}

static void nvsp_oneway(struct netvsc *nv, uint32_t type, uint16_t id)
{
	static uint64_t trans = 0x4e52000000000000ull;
	struct nvsp_message m;

	memset(&m, 0, sizeof(m));
	m.hdr.msg_type = type;
	m.msg.v1_msg.revoke_recv_buf.id = id;   /* the same place in revoke_send_buf */
	send_raw(&nv->rings, VM_PKT_DATA_INBAND, ++trans, NULL, 0, &m, sizeof(m), false);
}

/* Bytes of `p` that are not `v`. */
static int not_canary(const uint8_t *p, uint32_t n, uint8_t v)
{
	int bad = 0;

	for (uint32_t i = 0; i < n; i++)
		bad += p[i] != v;
	return bad;
}

/* The receive and send buffers pulled from under the parent while the NIC runs. A
 * GPADL_TEARDOWN of a buffer the parent uses must wait (no GPADL_TORNDOWN) until the parent lets
 * go: an NVSP revoke of that buffer (or the channel's close). A revoke naming another id, and a
 * second SEND_RECV_BUF, change nothing. Once GPADL_TORNDOWN came, the guest reuses the pages
 * (a canary): the parent's answers must never land there, nor be read from there, and the
 * channel keeps serving (KEEPALIVEs, GPA-direct). With revoke=0 the guest stops before the
 * real revoke: the receive buffer stays held until the parent closes the channel. SYNC 0x101
 * as for stor_requests. */
static int net_recv_buffer_pulled(void)
{
	struct netvsc *nv = open_nic();
	struct vmbus_channel *ch = nv->ch;
	static struct ncase c[20];
	uint32_t n = 0, gpadl = 0, r[12];
	static uint64_t trans = 0x4e53000000000000ull;
	uint8_t *page = storvsc_dma_alloc(HVR_PAGE_SIZE);
	uint64_t gh[3];
	struct nvsp_message m;
	uint32_t id = 0x4b41;

	HV_ASSERT(page != NULL && nv->send_section_count >= 4);
	NC("KEEPALIVE before", keepalive(nv, 0), NVSP_STAT_SUCCESS);
	NC("teardown of the live receive buffer: no TORNDOWN yet",
	   teardown_now(ch, nv->recv_gpadl), 0);
	if (c[n - 1].got != 0)          /* already torn down: waiting for it would never end */
		return check_ncases(c, n);
	NC("KEEPALIVE after the teardown request", keepalive(nv, 1), NVSP_STAT_SUCCESS);
	nvsp_oneway(nv, NVSP_MSG1_TYPE_REVOKE_RECV_BUF, 0xbeef);
	NC("KEEPALIVE after a revoke of another id", keepalive(nv, 2), NVSP_STAT_SUCCESS);
	NC("still no TORNDOWN", (int)hostile_drain() + (int)hostile_msgs.torndown, 0);
	/* a smaller buffer (the first 16 KiB of the old one) */
	NC("GPADL of a smaller buffer", vmbus_gpadl_create(ch, dev_net_recv, 16384, &gpadl), 0);
	memset(&m, 0, sizeof(m));
	m.hdr.msg_type = NVSP_MSG1_TYPE_SEND_RECV_BUF;
	m.msg.v1_msg.send_recv_buf.gpadl_handle = gpadl;
	m.msg.v1_msg.send_recv_buf.id = 0xcaff;
	send_raw(&nv->rings, VM_PKT_DATA_INBAND, ++trans, NULL, 0, &m, sizeof(m), true);
	NC("SEND_RECV_BUF after the handshake",
	   wait_completion(&nv->rings, trans, r, sizeof(r), 3000) >= 0 &&
		   r[0] == NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE ? (int)r[1] : -1, NVSP_STAT_FAIL);
	NC("teardown of the unused smaller buffer", vmbus_gpadl_teardown(ch, gpadl), 0);
	if (!hv_arg_u64("revoke", 1))   /* the parent's close must let go (the host test) */
		return check_ncases(c, n) ? 1 : bystander();
	/* the real revoke: the parent lets go, GPADL_TORNDOWN comes */
	nvsp_oneway(nv, NVSP_MSG1_TYPE_REVOKE_RECV_BUF, NETVSC_RECEIVE_BUFFER_ID);
	NC("TORNDOWN after the revoke", vmbus_gpadl_teardown(ch, nv->recv_gpadl), 0);
	memset(dev_net_recv, 0xa5, DEV_NET_RECV);
	NC("KEEPALIVE with the receive buffer reused", keepalive(nv, 3), NVSP_STAT_SUCCESS);
	NC("the reused receive buffer untouched", not_canary(dev_net_recv, DEV_NET_RECV, 0xa5), 0);
	/* the send buffer: the same story */
	NC("teardown of the live send buffer: no TORNDOWN yet", teardown_now(ch, nv->send_gpadl),
	   0);
	if (c[n - 1].got != 0)
		return check_ncases(c, n);
	NC("KEEPALIVE from a send section after it", keepalive(nv, 1), NVSP_STAT_SUCCESS);
	nvsp_oneway(nv, NVSP_MSG1_TYPE_REVOKE_SEND_BUF, 0);
	NC("TORNDOWN after the send revoke", vmbus_gpadl_teardown(ch, nv->send_gpadl), 0);
	memset(dev_net_send, 0x5a, DEV_NET_SEND);
	put_rndis(section(nv, 0), RNDIS_MSG_KEEPALIVE, 12, &id, 4);
	NC("a send section of the reused buffer is not read",
	   rndis_send(nv, 1, 0, 12, NULL, 0, 3000), NVSP_STAT_FAIL);
	put_rndis(page, RNDIS_MSG_KEEPALIVE, 12, &id, 4);
	gh[0] = 1ull << 32;
	gh[1] = 12;
	gh[2] = (uintptr_t)page >> 12;
	NC("GPA-direct KEEPALIVE still served",
	   rndis_send(nv, 1, HVR_NET_NO_SECTION_GUEST, 0, gh, 24, 3000), NVSP_STAT_SUCCESS);
	NC("the reused receive buffer still untouched",
	   not_canary(dev_net_recv, DEV_NET_RECV, 0xa5), 0);
	return check_ncases(c, n) ? 1 : bystander();
}

/* ---- virtio-blk ------------------------------------------------------------------------------ */

#define VB_QSIZE 16u
#define VB_SYNC_CASE 0x102 /* (case, outcome, status byte, used length) */

enum vb_outcome { VB_COMPLETED = 1, VB_NEEDS_RESET = 2, VB_NOTHING = 3 };

static struct virtio_blk_dev vdisk;
static uint8_t *vbuf; /* 8 KiB of DMA memory */

static void vb_open(void)
{
	int rc = virtio_blk_open(&vdisk, 0, VB_QSIZE, false, false);

	HV_ASSERT(rc == 0, "hostile_dev: virtio_blk_open: %d", rc);
	if (!vbuf)
		vbuf = storvsc_dma_alloc(8192);
	HV_ASSERT(vbuf != NULL);
}

/* The device completed the request (its used index moved) or set DEVICE_NEEDS_RESET. */
static enum vb_outcome vb_outcome(struct virtio_blk_dev *d, uint16_t used_before)
{
	uint64_t deadline = hv_time_us() + 3000000;

	while (hv_time_us() < deadline) {
		if (*(volatile uint16_t *)&d->q.used->idx != used_before)
			return VB_COMPLETED;
		if (virtio_blk_status(d) & VIRTIO_STATUS_NEEDS_RESET)
			return VB_NEEDS_RESET;
	}
	return VB_NOTHING;
}

/* A good read of sector `lba` (the device works): 0, or what went wrong. */
static int vb_good_read(uint64_t lba)
{
	struct blk_completion c;
	int rc = virtio_blk_submit(&vdisk, BLK_OP_READ, lba, 1, vbuf, 0);

	if (rc < 0)
		return rc;
	virtio_blk_kick(&vdisk);
	rc = virtio_blk_wait(&vdisk, &c, 1);
	if (rc != 1)
		return rc < 0 ? rc : -100;
	return c.status;
}

/* How one case breaks the request just submitted (descriptors `s`; not yet published). */
enum vb_attack {
	VB_HEAD_OOB, VB_NEXT_OOB, VB_LOOP, VB_PAST_RAM, VB_WRAPS, VB_MMIO, VB_HUGE_LEN, VB_INDIRECT,
	VB_ZERO_LEN, VB_STATUS_READABLE, VB_READABLE_AFTER_WRITABLE, VB_READ_INTO_READABLE,
	VB_WRITE_FROM_WRITABLE, VB_SECTOR_AT_END, VB_SECTOR_STRADDLES_END, VB_SECTOR_WRAPS,
	VB_AVAIL_IDX_JUMP, VB_CASES
};

static int not_canary(const uint8_t *p, uint32_t n, uint8_t v);

static int vb_case(enum vb_attack a, uint64_t ram_end)
{
	struct virtio_blk_dev *d = &vdisk;
	struct virtq_desc *q = d->q.desc;
	uint64_t sector = 7;
	uint32_t type = VIRTIO_BLK_T_IN;
	bool dev_writes = true;
	uint16_t used_before = d->q.used->idx;
	enum vb_outcome o;
	int head;
	uint16_t data, st;
	uint8_t status;

	if (a == VB_SECTOR_AT_END)
		sector = d->capacity;
	else if (a == VB_SECTOR_STRADDLES_END)
		sector = d->capacity - 1;
	else if (a == VB_SECTOR_WRAPS)
		sector = ~0ull - 1;
	else if (a == VB_WRITE_FROM_WRITABLE)
		type = VIRTIO_BLK_T_OUT;
	if (a == VB_READ_INTO_READABLE)
		dev_writes = false;
	memset(vbuf, 0xa5, 8192);
	head = virtio_blk_submit_raw(d, type, sector, vbuf,
				     a == VB_SECTOR_STRADDLES_END ? 1024 : 512,
				     a == VB_WRITE_FROM_WRITABLE ? true : dev_writes, 0);
	HV_ASSERT(head >= 0, "hostile_dev: virtio_blk_submit_raw: %d", head);
	data = q[head].next;
	st = q[data].next;
	switch (a) {
	case VB_HEAD_OOB: /* the avail entry names no descriptor */
		d->q.avail->ring[(uint16_t)(d->q.avail_idx - 1) % d->q.size] = 500;
		break;
	case VB_NEXT_OOB:
		q[data].next = 999;
		break;
	case VB_LOOP: /* the status descriptor chains to itself: longer than the queue */
		q[st].flags |= VIRTQ_DESC_F_NEXT;
		q[st].next = st;
		break;
	case VB_PAST_RAM:
		q[data].addr = ram_end - 256;
		break;
	case VB_WRAPS:
		q[data].addr = ~0ull - 255;
		break;
	case VB_MMIO: /* the device's own register window */
		q[data].addr = d->m.base;
		break;
	case VB_HUGE_LEN:
		q[data].len = 0xffffffffu;
		break;
	case VB_INDIRECT: /* a table past RAM; VIRTIO_F_INDIRECT_DESC is not offered */
		q[data].flags |= 4u;
		q[data].addr = ram_end + 4096;
		break;
	case VB_ZERO_LEN:
		q[st].len = 0;
		break;
	case VB_STATUS_READABLE:
		q[data].flags &= (uint16_t)~VIRTQ_DESC_F_WRITE;
		q[st].flags &= (uint16_t)~VIRTQ_DESC_F_WRITE;
		break;
	case VB_READABLE_AFTER_WRITABLE:
		q[st].flags &= (uint16_t)~VIRTQ_DESC_F_WRITE;
		break;
	default:
		break;
	}
	if (a == VB_AVAIL_IDX_JUMP)
		d->q.avail_idx += 1000;
	virtio_blk_kick(d);
	o = vb_outcome(d, used_before);
	status = d->statuses[head];
	hv_sync(VB_SYNC_CASE, a, o, status,
		o == VB_COMPLETED ? d->q.used->ring[used_before % d->q.size].len : 0);
	if (o == VB_COMPLETED) {
		struct blk_completion c;

		HV_ASSERT(virtio_blk_reap(d, &c, 1) == 1);
		/* the device-readable buffer stays as the guest left it */
		if ((a == VB_READ_INTO_READABLE || a == VB_WRITE_FROM_WRITABLE) &&
		    not_canary(vbuf, 512, 0xa5))
			return -1;
	} else {
		virtio_blk_close(d);
		vb_open();
	}
	return vb_good_read(3);
}

/* Descriptor chains, avail indices and sectors a real driver never writes, one at a time on a
 * 16-entry queue: each is either served with the status the spec names (IOERR past the disk's
 * end) or puts the device in DEVICE_NEEDS_RESET (then the guest resets it); a good read
 * follows every case. SYNC 0x102 per case (case, outcome: 1 completed 2 needs-reset 3 nothing,
 * status byte, used length); SYNC 0x101 (cases whose good read after it worked, cases). */
static int vblk_requests(void)
{
	uint64_t ram_end = ram_pages() * HVR_PAGE_SIZE;
	unsigned ok = 0;

	vb_open();
	for (unsigned a = 0; a < VB_CASES; a++) {
		int rc = vb_case((enum vb_attack)a, ram_end);

		if (rc == 0)
			ok++;
		else
			hv_log("virtio case %u: the good read after it: %d", a, rc);
	}
	hv_sync(0x101, ok, VB_CASES);
	return ok == VB_CASES ? bystander() : 1;
}

/* The queue's areas outside RAM or on MMIO, set before DRIVER_OK: QueueReady reads back 0 and
 * DRIVER_OK ends in DEVICE_NEEDS_RESET; a reset and a normal open then work.
 * SYNC 0x102 per case (case, QueueReady read back, Status); SYNC 0x101 (good reads, cases). */
static int vblk_queue_outside_ram(void)
{
	uint64_t ram_end = ram_pages() * HVR_PAGE_SIZE;
	unsigned ok = 0;

	vb_open();
	for (unsigned c = 0; c < 3; c++) {
		struct virtio_mmio *m = &vdisk.m;
		uint64_t good = (uintptr_t)vdisk.q.desc;
		uint64_t addr[3] = {good, (uintptr_t)vdisk.q.avail, (uintptr_t)vdisk.q.used};
		uint32_t ready, status;

		addr[c] = c == 0 ? ram_end - 64 : c == 1 ? m->base : 1ull << 50;
		virtio_write32(m, VIRTIO_MMIO_STATUS, 0);
		virtio_write32(m, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
		virtio_write32(m, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
		virtio_write32(m, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
		virtio_write32(m, VIRTIO_MMIO_DRIVER_FEATURES, 1); /* VERSION_1 */
		virtio_write32(m, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
		virtio_write32(m, VIRTIO_MMIO_DRIVER_FEATURES, 0);
		virtio_write32(m, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE |
			       VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
		virtio_write32(m, VIRTIO_MMIO_QUEUE_SEL, 0);
		virtio_write32(m, VIRTIO_MMIO_QUEUE_NUM, VB_QSIZE);
		for (unsigned k = 0; k < 3; k++) {
			virtio_write32(m, VIRTIO_MMIO_QUEUE_DESC_LOW + 0x10 * k, (uint32_t)addr[k]);
			virtio_write32(m, VIRTIO_MMIO_QUEUE_DESC_HIGH + 0x10 * k,
				       (uint32_t)(addr[k] >> 32));
		}
		virtio_write32(m, VIRTIO_MMIO_QUEUE_READY, 1);
		ready = virtio_read32(m, VIRTIO_MMIO_QUEUE_READY);
		virtio_write32(m, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE |
			       VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
			       VIRTIO_STATUS_DRIVER_OK);
		status = virtio_read32(m, VIRTIO_MMIO_STATUS);
		hv_sync(VB_SYNC_CASE, c, ready, status);
		virtio_blk_close(&vdisk);
		vb_open();
		if (vb_good_read(3) == 0)
			ok++;
	}
	hv_sync(0x101, ok, 3);
	return ok == 3 ? bystander() : 1;
}

const struct hostile_attack hostile_attacks[] = {
	{"stor_requests", stor_requests},
	{"stor_sync_storm", stor_sync_storm},
	{"stor_pfn_count_mismatch", stor_pfn_count_mismatch},
	{"net_requests", net_requests},
	{"net_recv_buffer_pulled", net_recv_buffer_pulled},
	{"vblk_requests", vblk_requests},
	{"vblk_queue_outside_ram", vblk_queue_outside_ram},
	{NULL, NULL},
};
