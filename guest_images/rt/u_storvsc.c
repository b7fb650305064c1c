/*
 * u_storvsc.c - the storvsc VSC's protocol and block I/O engine, callable from either ring
 * (user-accessible): handshake, probe, request slots, GPA-direct SRB packets, completion
 * matching and checking. See include/storvsc.h; the wire is Linux's drivers/scsi/storvsc_drv.c.
 */
#include "storvsc.h"

/* Linux asks for these, newest first (storvsc_drv.c: protocol_version[]). */
static const uint16_t storvsc_versions[] = {
	VMSTOR_PROTO_VERSION_WIN10,
	VMSTOR_PROTO_VERSION_WIN8_1,
	VMSTOR_PROTO_VERSION_WIN8,
};

/* Bytes of vstor_packet on the wire under `version` (Linux's old vmscsi_size_delta rule). */
static uint32_t packet_size(uint16_t version)
{
	return (uint32_t)(VSTOR_PACKET_SIZE -
			  (version < VMSTOR_PROTO_VERSION_WIN8 ? VMSCSI_SIZE_DELTA : 0));
}

static inline bool in_kernel_irq_mode(const struct storvsc_dev *d)
{
	return hv_ring() == 0 && d->kwait && !d->poll;
}

static void kick_host(struct storvsc_dev *d)
{
	d->kicks++;
	if (hv_ring() == 0 && d->kkick)
		d->kkick(d);
	else
		vmbus_rings_kick(&d->rings);
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p)
{
	return (uint64_t)be32(p) << 32 | be32(p + 4);
}

/* ------------------------------------------------------------------------------------------ */
/* Waiting for the host. */

/* Nothing to read: sleep for the channel interrupt (ring 0) or spin once (ring 3 / poll). */
static int idle(struct storvsc_dev *d, uint64_t *last_progress)
{
	if (in_kernel_irq_mode(d)) {
		d->kwait(d);
		return 0;
	}
	d->polls++;
	hv_pause();
	if (d->stall_cycles && (d->polls & 1023) == 0 &&
	    storvsc_rdtsc() - *last_progress > d->stall_cycles)
		return STORVSC_ETIMEDOUT;
	return 0;
}

static void slots_init(struct storvsc_dev *d);

/* ------------------------------------------------------------------------------------------ */
/* The handshake (Linux's storvsc_channel_init / storvsc_execute_vstor_op). */

/* Send one initialization packet and wait for its completion (trans_id VMBUS_RQST_INIT) into
 * *resp. Anything else that arrives meanwhile is counted and dropped. */
static int init_op(struct storvsc_dev *d, struct vstor_packet *pkt, struct vstor_packet *resp)
{
	uint64_t last = storvsc_rdtsc();
	struct hvr_pkt p;
	int rc;

	pkt->flags = REQUEST_COMPLETION_FLAG;
	rc = hvr_out_write_inband(&d->rings.out, VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
				  STORVSC_RQST_INIT, pkt, sizeof(*pkt));
	if (rc != HVR_OK)
		return rc == HVR_EBROKEN ? STORVSC_ERING : STORVSC_EPROTO;
	rc = hvr_out_commit(&d->rings.out);
	if (rc < 0)
		return STORVSC_ERING;
	if (rc == 1)
		kick_host(d);
	for (;;) {
		rc = hvr_in_read(&d->rings.in, &p);
		if (rc == HVR_OK) {
			int result = 1; /* 1: not ours, keep waiting */
			int rel;

			if (p.type == VM_PKT_COMP && p.trans_id == STORVSC_RQST_INIT) {
				uint32_t n = p.payload_len < sizeof(*resp) ? p.payload_len
									  : (uint32_t)sizeof(*resp);
				memset(resp, 0, sizeof(*resp));
				/* Linux's minimum for a request's answer: sizeof(vstor_packet) */
				result = p.payload_len < VSTOR_PACKET_SIZE ||
					 hvr_in_copy(&d->rings.in, &p, p.payload_off, resp, n) != HVR_OK
					 ? STORVSC_EPROTO : STORVSC_OK;
			} else if (p.trans_id == 0 || p.type != VM_PKT_COMP) {
				d->unsolicited++;
			} else {
				d->unexpected++;
			}
			rel = hvr_in_commit(&d->rings.in);
			if (rel < 0)
				return STORVSC_ERING;
			if (rel == 1)
				kick_host(d);
			if (result <= 0)
				return result;
			last = storvsc_rdtsc();
			continue;
		}
		if (rc != HVR_EMPTY)
			return STORVSC_ERING;
		rc = idle(d, &last);
		if (rc)
			return rc;
	}
}

/* storvsc_execute_vstor_op(status_check = true): COMPLETE_IO with status 0. */
static int init_op_checked(struct storvsc_dev *d, uint32_t operation, struct vstor_packet *resp)
{
	struct vstor_packet pkt;
	int rc;

	memset(&pkt, 0, sizeof(pkt));
	pkt.operation = operation;
	rc = init_op(d, &pkt, resp);
	if (rc)
		return rc;
	if (resp->operation != VSTOR_OPERATION_COMPLETE_IO || resp->status != 0)
		return STORVSC_EVSTOR;
	return 0;
}

int storvsc_handshake(struct storvsc_dev *d)
{
	struct vstor_packet pkt, resp;
	uint32_t max;
	int rc;

	d->ready = 0;
	d->version = 0;
	d->versions_tried = 0;
	rc = init_op_checked(d, VSTOR_OPERATION_BEGIN_INITIALIZATION, &resp);
	if (rc)
		return rc;
	for (unsigned i = 0; i < HV_ARRAY_SIZE(storvsc_versions); i++) {
		memset(&pkt, 0, sizeof(pkt));
		pkt.operation = VSTOR_OPERATION_QUERY_PROTOCOL_VERSION;
		pkt.version.major_minor = storvsc_versions[i];
		pkt.version.revision = 0;
		d->versions_tried++;
		rc = init_op(d, &pkt, &resp);
		if (rc)
			return rc;
		if (resp.operation != VSTOR_OPERATION_COMPLETE_IO)
			return STORVSC_EVSTOR;
		if (resp.status == 0) {
			d->version = storvsc_versions[i];
			break;
		}
	}
	if (!d->version)
		return STORVSC_EPROTO; /* Linux: "Obsolete Hyper-V version" */
	d->pkt_size = packet_size(d->version);

	rc = init_op_checked(d, VSTOR_OPERATION_QUERY_PROPERTIES, &resp);
	if (rc)
		return rc;
	d->max_channel_cnt = resp.storage_channel_properties.max_channel_cnt;
	d->props_flags = resp.storage_channel_properties.flags;
	d->host_max_transfer = resp.storage_channel_properties.max_transfer_bytes;
	max = d->host_max_transfer < STORVSC_MAX_XFER ? d->host_max_transfer : STORVSC_MAX_XFER;
	d->max_transfer = max & ~(STORVSC_SECTOR - 1);
	if (!d->max_transfer)
		return STORVSC_EPROTO;

	rc = init_op_checked(d, VSTOR_OPERATION_END_INITIALIZATION, &resp);
	if (rc)
		return rc;
	/* Sub-channels (STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL): not asked for; one channel. */
	slots_init(d);
	d->ready = 1;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Requests. */

uint32_t storvsc_qd_max(const struct storvsc_dev *d, uint32_t bytes)
{
	uint32_t pfns = bytes ? (bytes + HVR_PAGE_SIZE - 1) / HVR_PAGE_SIZE + 1 : 0;
	uint32_t hdr = bytes ? 16 + 8 * pfns : 0;
	uint32_t req = hvr_packet_total(hdr, d->pkt_size ? d->pkt_size : VSTOR_PACKET_SIZE);
	uint32_t comp = hvr_packet_total(0, d->pkt_size ? d->pkt_size : VSTOR_PACKET_SIZE);
	uint32_t a = (d->rings.out.r.size - 8) / req, b = (d->rings.in.r.size - 8) / comp;
	uint32_t n = a < b ? a : b;

	return n < STORVSC_MAX_QD ? n : STORVSC_MAX_QD;
}

static void slots_init(struct storvsc_dev *d)
{
	d->free_top = STORVSC_MAX_QD;
	for (uint32_t i = 0; i < STORVSC_MAX_QD; i++) {
		d->free_stack[i] = (uint16_t)(STORVSC_MAX_QD - 1 - i); /* slot 0 on top */
		d->slots[i].busy = 0;
	}
	d->inflight = 0;
	d->uncommitted = 0;
}

/* Write one EXECUTE_SRB to the send ring (not published). */
static int submit_srb(struct storvsc_dev *d, uint8_t op, const uint8_t *cdb, uint32_t cdb_len,
		      enum storvsc_dir dir, void *buf, uint32_t len, uint64_t lba,
		      uint32_t blocks, uint64_t cookie)
{
	struct vstor_packet pkt;
	struct vmscsi_request *srb = &pkt.vm_srb;
	struct storvsc_slot *s;
	uint32_t slot;
	uint64_t tid;
	int rc;

	if (!d->ready || !cdb_len || cdb_len > STORVSC_MAX_CMD_LEN || len > d->max_transfer ||
	    (len && !buf) || (!len && dir != STORVSC_DIR_NONE) || (len && dir == STORVSC_DIR_NONE))
		return STORVSC_EINVAL;
	if (!d->free_top)
		return STORVSC_EAGAIN;
	slot = d->free_stack[d->free_top - 1];
	tid = ((d->seq + 1) << 16) | (slot + 1);

	/* storvsc_queuecommand + storvsc_do_io */
	memset(&pkt, 0, sizeof(pkt));
	pkt.operation = VSTOR_OPERATION_EXECUTE_SRB;
	pkt.flags = REQUEST_COMPLETION_FLAG;
	srb->length = (uint16_t)(sizeof(struct vmscsi_request) -
				 (d->version < VMSTOR_PROTO_VERSION_WIN8 ? VMSCSI_SIZE_DELTA : 0));
	srb->port_number = d->port;
	srb->path_id = d->path_id;
	srb->target_id = d->target_id;
	srb->lun = d->lun;
	srb->cdb_length = (uint8_t)cdb_len;
	memcpy(srb->cdb, cdb, cdb_len);
	srb->sense_info_length = d->version < VMSTOR_PROTO_VERSION_WIN8
		? PRE_WIN8_STORVSC_SENSE_BUFFER_SIZE : STORVSC_SENSE_BUFFER_SIZE;
	srb->data_in = (uint8_t)dir;
	srb->data_transfer_length = len;
	srb->time_out_value = 60;
	srb->srb_flags = SRB_FLAGS_DISABLE_SYNCH_TRANSFER | SRB_FLAGS_QUEUE_ACTION_ENABLE |
			 SRB_FLAGS_NO_QUEUE_FREEZE;
	srb->queue_tag = SP_UNTAGGED;
	srb->queue_action = SRB_SIMPLE_TAG_REQUEST;
	srb->srb_flags |= dir == STORVSC_DIR_IN ? SRB_FLAGS_DATA_IN
			: dir == STORVSC_DIR_OUT ? SRB_FLAGS_DATA_OUT : SRB_FLAGS_NO_DATA_TRANSFER;

	if (len) {
		/* vmbus_sendpacket_mpb_desc: struct vmbus_packet_mpb_array after the descriptor:
		 * reserved, rangecount = 1, range {len, offset, pfn_array[]}, then the payload. */
		uintptr_t a = (uintptr_t)buf;
		uint32_t off = (uint32_t)(a & (HVR_PAGE_SIZE - 1));
		uint32_t pfns = (off + len + HVR_PAGE_SIZE - 1) / HVR_PAGE_SIZE;
		struct hv_mpb_array *range = (struct hv_mpb_array *)&d->hdr[1];
		struct hvr_iov iov[2];

		d->hdr[0] = (uint64_t)1 << 32; /* reserved = 0, rangecount = 1 */
		range->len = len;
		range->offset = off;
		for (uint32_t i = 0; i < pfns; i++)
			range->pfn_array[i] = (a >> 12) + i;
		iov[0].base = d->hdr;
		iov[0].len = 16 + 8 * pfns;
		iov[1].base = &pkt;
		iov[1].len = d->pkt_size;
		rc = hvr_out_write(&d->rings.out, VM_PKT_DATA_USING_GPA_DIRECT,
				   VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED, tid, iov[0].len, iov,
				   2);
	} else {
		rc = hvr_out_write_inband(&d->rings.out, VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
					  tid, &pkt, d->pkt_size);
	}
	if (rc == HVR_FULL) {
		d->full++;
		return STORVSC_EAGAIN;
	}
	if (rc != HVR_OK)
		return rc == HVR_EBROKEN ? STORVSC_ERING : STORVSC_EINVAL;

	d->free_top--;
	d->seq++;
	s = &d->slots[slot];
	s->trans_id = tid;
	s->cookie = cookie;
	s->lba = lba;
	s->blocks = blocks;
	s->buf = buf;
	s->len = len;
	s->op = op;
	s->opcode = cdb[0];
	s->busy = 1;
	s->t_submit = storvsc_rdtsc();
	d->inflight++;
	d->uncommitted++;
	d->submitted++;
	if (d->inflight > d->max_inflight)
		d->max_inflight = d->inflight;
	return (int)slot;
}

int storvsc_submit(struct storvsc_dev *d, enum storvsc_op op, uint64_t lba, uint32_t blocks,
		   void *buf, uint32_t flags, uint64_t cookie)
{
	uint8_t cdb[16];

	memset(cdb, 0, sizeof(cdb));
	if (!d->ready)
		return STORVSC_EINVAL;
	if (op == STORVSC_OP_FLUSH) {
		cdb[0] = SCSI_SYNCHRONIZE_CACHE_10; /* LBA 0, 0 blocks: everything */
		return submit_srb(d, (uint8_t)op, cdb, 10, STORVSC_DIR_NONE, NULL, 0, 0, 0, cookie);
	}
	if ((op != STORVSC_OP_READ && op != STORVSC_OP_WRITE) || !blocks || !d->block_size ||
	    lba >= d->blocks || blocks > d->blocks - lba ||
	    (uint64_t)blocks * d->block_size > d->max_transfer)
		return STORVSC_EINVAL;
	cdb[0] = op == STORVSC_OP_READ ? SCSI_READ_16 : SCSI_WRITE_16;
	cdb[1] = (flags & STORVSC_FUA) ? 0x08 : 0;
	put_be64(cdb + 2, lba);
	put_be32(cdb + 10, blocks);
	return submit_srb(d, (uint8_t)op, cdb, 16,
			  op == STORVSC_OP_READ ? STORVSC_DIR_IN : STORVSC_DIR_OUT, buf,
			  blocks * d->block_size, lba, blocks, cookie);
}

int storvsc_submit_cdb(struct storvsc_dev *d, const uint8_t *cdb, uint32_t cdb_len,
		       enum storvsc_dir dir, void *buf, uint32_t len, uint64_t cookie)
{
	if (!cdb)
		return STORVSC_EINVAL;
	return submit_srb(d, STORVSC_OP_CDB, cdb, cdb_len, dir, buf, len, 0, 0, cookie);
}

int storvsc_kick(struct storvsc_dev *d)
{
	int rc;

	if (!d->uncommitted)
		return 0;
	d->uncommitted = 0;
	rc = hvr_out_commit(&d->rings.out);
	if (rc < 0)
		return STORVSC_ERING;
	if (rc == 1)
		kick_host(d);
	return 0;
}

/* Decode sense data (fixed 0x70/0x71 or descriptor 0x72/0x73 format). */
static bool parse_sense(const uint8_t *s, uint32_t n, struct storvsc_completion *c)
{
	uint8_t code = s[0] & 0x7f;

	if ((code == 0x70 || code == 0x71) && n >= 14) {
		c->sense_key = s[2] & 0x0f;
		c->asc = s[12];
		c->ascq = s[13];
		return true;
	}
	if ((code == 0x72 || code == 0x73) && n >= 4) {
		c->sense_key = s[1] & 0x0f;
		c->asc = s[2];
		c->ascq = s[3];
		return true;
	}
	return false;
}

/* One packet from the receive ring: a completion of ours fills *c and returns true. */
static bool complete_one(struct storvsc_dev *d, const struct hvr_pkt *p,
			 struct storvsc_completion *c)
{
	struct vstor_packet resp;
	const struct vmscsi_request *srb = &resp.vm_srb;
	struct storvsc_slot *s;
	uint32_t slot, n;

	if (p->type != VM_PKT_COMP || p->trans_id == 0) {
		d->unsolicited++; /* ENUMERATE_BUS, REMOVE_DEVICE, ...: nothing to rescan here */
		return false;
	}
	slot = (uint32_t)(p->trans_id & 0xffff) - 1;
	if (slot >= STORVSC_MAX_QD || !d->slots[slot].busy ||
	    d->slots[slot].trans_id != p->trans_id) {
		d->unexpected++;
		return false;
	}
	s = &d->slots[slot];
	memset(c, 0, sizeof(*c));
	c->cookie = s->cookie;
	c->lba = s->lba;
	c->blocks = s->blocks;
	c->buf = s->buf;
	c->len = s->len;
	c->op = s->op;
	c->opcode = s->opcode;
	c->t_submit = s->t_submit;
	c->t_complete = storvsc_rdtsc();
	s->busy = 0;
	d->free_stack[d->free_top++] = (uint16_t)slot;
	d->inflight--;
	d->completed++;

	/* One copy of the answer (the host may still write the ring): everything below uses it. */
	memset(&resp, 0, sizeof(resp));
	n = p->payload_len < sizeof(resp) ? p->payload_len : (uint32_t)sizeof(resp);
	if (p->payload_len < d->pkt_size ||
	    hvr_in_copy(&d->rings.in, p, p->payload_off, &resp, n) != HVR_OK) {
		c->status = STORVSC_EPROTO;
		goto out;
	}
	c->vstor_operation = (uint8_t)resp.operation;
	c->vstor_status = resp.status;
	c->srb_status = srb->srb_status;
	c->scsi_status = srb->scsi_status;
	c->transferred = srb->data_transfer_length;
	if (resp.operation != VSTOR_OPERATION_COMPLETE_IO || resp.status != 0) {
		c->status = STORVSC_EVSTOR;
	} else if (srb->scsi_status == SCSI_STATUS_CHECK_CONDITION) {
		uint32_t sl = srb->sense_info_length < STORVSC_SENSE_BUFFER_SIZE
			? srb->sense_info_length : STORVSC_SENSE_BUFFER_SIZE;
		c->status = STORVSC_ECHECK;
		if (!(srb->srb_status & SRB_STATUS_AUTOSENSE_VALID) ||
		    !parse_sense(srb->sense_data, sl, c))
			c->status = STORVSC_ESCSI; /* CHECK CONDITION without usable sense */
	} else if (SRB_STATUS(srb->srb_status) != SRB_STATUS_SUCCESS) {
		c->status = STORVSC_ESRB;
	} else if (srb->scsi_status != SCSI_STATUS_GOOD) {
		c->status = STORVSC_ESCSI;
	} else if (c->transferred > c->len) {
		c->status = STORVSC_EPROTO;
	} else if ((c->op == STORVSC_OP_READ || c->op == STORVSC_OP_WRITE) &&
		   c->transferred != c->len) {
		c->status = STORVSC_ESHORT;
	}
out:
	if (c->status)
		d->errors++;
	return true;
}

int storvsc_reap(struct storvsc_dev *d, struct storvsc_completion *c, unsigned max)
{
	struct hvr_pkt p;
	unsigned n = 0;
	int rc = HVR_EMPTY, rel, k;

	k = storvsc_kick(d);
	if (k)
		return k;
	while (n < max && (rc = hvr_in_read(&d->rings.in, &p)) == HVR_OK)
		if (complete_one(d, &p, &c[n]))
			n++;
	if (rc != HVR_OK && rc != HVR_EMPTY)
		return STORVSC_ERING;
	rel = hvr_in_commit(&d->rings.in);
	if (rel < 0)
		return STORVSC_ERING;
	if (rel == 1)
		kick_host(d);
	return (int)n;
}

int storvsc_wait(struct storvsc_dev *d, struct storvsc_completion *c, unsigned max)
{
	uint64_t last = storvsc_rdtsc();
	int n;

	if (!max)
		return STORVSC_EINVAL;
	for (;;) {
		if (!d->inflight)
			return 0;
		n = storvsc_reap(d, c, max);
		if (n)
			return n;
		n = idle(d, &last);
		if (n)
			return n;
	}
}

/* The rest of a synchronous command once `rc` = its submit's result: wait for its completion
 * (the only one in flight, which the callers check first) and return its status. */
static int exec_wait(struct storvsc_dev *d, int rc, struct storvsc_completion *c)
{
	struct storvsc_completion local;

	if (rc < 0)
		return rc;
	if (!c)
		c = &local;
	rc = storvsc_wait(d, c, 1);
	if (rc < 0)
		return rc;
	return rc == 1 ? c->status : STORVSC_EPROTO;
}

int storvsc_exec_cdb(struct storvsc_dev *d, const uint8_t *cdb, uint32_t cdb_len,
		     enum storvsc_dir dir, void *buf, uint32_t len, struct storvsc_completion *c)
{
	if (d->inflight)
		return STORVSC_EINVAL;
	return exec_wait(d, storvsc_submit_cdb(d, cdb, cdb_len, dir, buf, len, 0), c);
}

static int exec_op(struct storvsc_dev *d, enum storvsc_op op, uint64_t lba, uint32_t blocks,
		   void *buf, struct storvsc_completion *c)
{
	if (d->inflight)
		return STORVSC_EINVAL;
	return exec_wait(d, storvsc_submit(d, op, lba, blocks, buf, 0, 0), c);
}

int storvsc_read(struct storvsc_dev *d, uint64_t lba, uint32_t blocks, void *buf,
		 struct storvsc_completion *c)
{
	return exec_op(d, STORVSC_OP_READ, lba, blocks, buf, c);
}

int storvsc_write(struct storvsc_dev *d, uint64_t lba, uint32_t blocks, const void *buf,
		  struct storvsc_completion *c)
{
	return exec_op(d, STORVSC_OP_WRITE, lba, blocks, (void *)buf, c);
}

int storvsc_flush(struct storvsc_dev *d, struct storvsc_completion *c)
{
	return exec_op(d, STORVSC_OP_FLUSH, 0, 0, NULL, c);
}

/* ------------------------------------------------------------------------------------------ */
/* Probe: what the disk is (sd's first commands, minus the ones we need not know). */

int storvsc_probe(struct storvsc_dev *d)
{
	uint8_t cdb[16], *b = d->scratch;
	struct storvsc_completion c;
	int rc;

	/* INQUIRY, standard data */
	memset(cdb, 0, sizeof(cdb));
	cdb[0] = SCSI_INQUIRY;
	cdb[4] = 96;
	memset(b, 0, 96);
	rc = storvsc_exec_cdb(d, cdb, 6, STORVSC_DIR_IN, b, 96, &c);
	if (rc)
		return rc;
	if (c.transferred < 36)
		return STORVSC_EPROTO;
	d->peripheral = b[0];
	if (b[0] != 0x00) /* qualifier 0 (connected), type 0 (direct-access block device) */
		return STORVSC_ENODEV;
	memcpy(d->vendor, b + 8, 8);
	memcpy(d->product, b + 16, 16);
	memcpy(d->revision, b + 32, 4);
	d->vendor[8] = d->product[16] = d->revision[4] = 0;

	/* READ CAPACITY(16) */
	memset(cdb, 0, sizeof(cdb));
	cdb[0] = SCSI_SERVICE_ACTION_IN_16;
	cdb[1] = SCSI_SAI_READ_CAPACITY_16;
	put_be32(cdb + 10, 32);
	memset(b, 0, 32);
	rc = storvsc_exec_cdb(d, cdb, 16, STORVSC_DIR_IN, b, 32, &c);
	if (rc)
		return rc;
	if (c.transferred < 12)
		return STORVSC_EPROTO;
	d->blocks = be64(b) + 1;
	d->block_size = be32(b + 8);
	d->phys_block_exp = b[13] & 0x0f;
	d->lbpme = (b[14] & 0x80) != 0;
	if (!d->block_size || d->block_size % STORVSC_SECTOR || d->block_size > HVR_PAGE_SIZE ||
	    d->max_transfer < d->block_size)
		return STORVSC_EPROTO;
	d->max_transfer -= d->max_transfer % d->block_size;

	/* MODE SENSE(6), all pages, no block descriptors: the WP bit. */
	memset(cdb, 0, sizeof(cdb));
	cdb[0] = SCSI_MODE_SENSE_6;
	cdb[1] = 0x08;
	cdb[2] = 0x3f;
	cdb[4] = 192;
	memset(b, 0, 192);
	rc = storvsc_exec_cdb(d, cdb, 6, STORVSC_DIR_IN, b, 192, &c);
	if (rc == 0 && c.transferred >= 4)
		d->write_protected = (b[2] & 0x80) != 0;
	else if (rc != STORVSC_ECHECK)
		return rc ? rc : STORVSC_EPROTO;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Text. */

const char *storvsc_strerror(int err)
{
	switch (err) {
	case STORVSC_OK: return "ok";
	case STORVSC_EAGAIN: return "queue or ring full";
	case STORVSC_EINVAL: return "invalid argument or state";
	case STORVSC_ECHECK: return "CHECK CONDITION";
	case STORVSC_ESRB: return "SRB status not SUCCESS";
	case STORVSC_ESCSI: return "bad SCSI status";
	case STORVSC_EVSTOR: return "vstor operation failed";
	case STORVSC_ESHORT: return "short transfer";
	case STORVSC_EPROTO: return "protocol error";
	case STORVSC_ERING: return "ring broken";
	case STORVSC_ETIMEDOUT: return "no completion (stalled)";
	case STORVSC_ENODEV: return "no storvsc disk";
	default: return "VMBus error";
	}
}

const char *storvsc_sense_key_name(uint8_t key)
{
	static const char *const names[16] = {
		"NO SENSE", "RECOVERED ERROR", "NOT READY", "MEDIUM ERROR", "HARDWARE ERROR",
		"ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT", "BLANK CHECK",
		"VENDOR SPECIFIC", "COPY ABORTED", "ABORTED COMMAND", "RESERVED",
		"VOLUME OVERFLOW", "MISCOMPARE", "COMPLETED",
	};
	return names[key & 15];
}

static const char *opcode_name(uint8_t op)
{
	switch (op) {
	case SCSI_READ_16: return "READ(16)";
	case SCSI_WRITE_16: return "WRITE(16)";
	case SCSI_SYNCHRONIZE_CACHE_10: return "SYNCHRONIZE CACHE(10)";
	case SCSI_INQUIRY: return "INQUIRY";
	case SCSI_MODE_SENSE_6: return "MODE SENSE(6)";
	case SCSI_SERVICE_ACTION_IN_16: return "READ CAPACITY(16)";
	case SCSI_TEST_UNIT_READY: return "TEST UNIT READY";
	default: return "CDB";
	}
}

/* Append to buf (size bytes) at *n, which may already exceed size (hv_snprintf's return). */
static void append(char *buf, size_t size, int *n, const char *fmt, ...)
{
	size_t at = (size_t)*n < size ? (size_t)*n : size;
	va_list ap;

	va_start(ap, fmt);
	*n += hv_vsnprintf(buf + at, size - at, fmt, ap);
	va_end(ap);
}

int storvsc_describe(const struct storvsc_completion *c, char *buf, size_t size)
{
	int n = 0;

	append(buf, size, &n, "%s (0x%02x)", opcode_name(c->opcode), c->opcode);
	if (c->op == STORVSC_OP_READ || c->op == STORVSC_OP_WRITE)
		append(buf, size, &n, " LBA %llu x %u", (unsigned long long)c->lba, c->blocks);
	switch (c->status) {
	case STORVSC_OK:
		append(buf, size, &n, ": GOOD, %u bytes", c->transferred);
		break;
	case STORVSC_ECHECK:
		append(buf, size, &n, ": CHECK CONDITION, sense key 0x%x %s, ASC 0x%02x ASCQ 0x%02x",
		       c->sense_key, storvsc_sense_key_name(c->sense_key), c->asc, c->ascq);
		break;
	case STORVSC_ESHORT:
		append(buf, size, &n, ": short transfer, %u of %u bytes", c->transferred, c->len);
		break;
	default:
		append(buf, size, &n, ": %s (vstor op %u status 0x%x, srb 0x%02x, scsi 0x%02x, "
		       "%u bytes)", storvsc_strerror(c->status), c->vstor_operation,
		       c->vstor_status, c->srb_status, c->scsi_status, c->transferred);
		break;
	}
	return n;
}
