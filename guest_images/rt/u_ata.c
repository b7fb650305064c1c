/*
 * u_ata.c - the ATA PIO driver's request path, callable from either ring (user-accessible; ring
 * 3 reaches the ports through the TSS I/O bitmap ata_open opened). One request at a time; the
 * transfer happens in ata_wait/ata_reap. See include/ata.h.
 */
#include "blkdev.h"

static inline bool irq_mode(const struct ata_dev *d)
{
	return hv_ring() == 0 && d->kwait && !d->poll;
}

static inline uint8_t status_reg(struct ata_dev *d)
{
	d->status_reads++;
	return hv_inb((uint16_t)(d->base + ATA_REG_STATUS));
}

/* Until BSY is clear and then DRQ (want_drq) or just ready; `intr`: an INTRQ announces it (ring
 * 0 sleeps for it first). BLK_EIO on ERR/DF (*st holds the status). */
static int wait_status(struct ata_dev *d, bool want_drq, bool intr, uint8_t *st)
{
	uint64_t t0 = blk_rdtsc();

	if (intr && irq_mode(d))
		d->kwait(d);
	for (;;) {
		uint8_t s = status_reg(d);

		*st = s;
		if (!(s & ATA_SR_BSY)) {
			if (s & (ATA_SR_ERR | ATA_SR_DF))
				return BLK_EIO;
			if (!want_drq || (s & ATA_SR_DRQ))
				return 0;
		}
		d->c.polls++;
		hv_pause();
		if (d->stall_cycles && blk_rdtsc() - t0 > d->stall_cycles)
			return BLK_ETIMEDOUT;
	}
}

static void pio_in(struct ata_dev *d, uint8_t *buf)
{
	uint16_t port = (uint16_t)(d->base + ATA_REG_DATA);

	if (d->pio_width == 4) {
		for (unsigned i = 0; i < BLK_SECTOR / 4; i++) {
			uint32_t v = hv_inl(port);

			__builtin_memcpy(buf + 4 * i, &v, 4);
		}
		d->data_accesses += BLK_SECTOR / 4;
	} else {
		for (unsigned i = 0; i < BLK_SECTOR / 2; i++) {
			uint16_t v = hv_inw(port);

			__builtin_memcpy(buf + 2 * i, &v, 2);
		}
		d->data_accesses += BLK_SECTOR / 2;
	}
}

static void pio_out(struct ata_dev *d, const uint8_t *buf)
{
	uint16_t port = (uint16_t)(d->base + ATA_REG_DATA);

	if (d->pio_width == 4) {
		for (unsigned i = 0; i < BLK_SECTOR / 4; i++) {
			uint32_t v;

			__builtin_memcpy(&v, buf + 4 * i, 4);
			hv_outl(port, v);
		}
		d->data_accesses += BLK_SECTOR / 4;
	} else {
		for (unsigned i = 0; i < BLK_SECTOR / 2; i++) {
			uint16_t v;

			__builtin_memcpy(&v, buf + 2 * i, 2);
			hv_outw(port, v);
		}
		d->data_accesses += BLK_SECTOR / 2;
	}
}

static bool is_ext(uint8_t cmd)
{
	return cmd == ATA_CMD_READ_EXT || cmd == ATA_CMD_WRITE_EXT || cmd == ATA_CMD_FLUSH_EXT;
}

/* Sectors a data command moves: IDENTIFY one, else the count (0: 256, or 65536 for EXT). */
static uint32_t sectors_of(uint8_t cmd, uint32_t count)
{
	if (cmd == ATA_CMD_IDENTIFY)
		return 1;
	return count ? count : (is_ext(cmd) ? 65536 : 256);
}

int ata_pio(struct ata_dev *d, uint8_t cmd, uint64_t lba, uint32_t count, void *buf, bool out,
	    uint8_t *status, uint8_t *err)
{
	uint16_t b = d->base;
	uint8_t *p = buf;
	bool data = buf != NULL;
	int rc = 0;

	*status = *err = 0;
	if (is_ext(cmd)) {
		hv_outb((uint16_t)(b + ATA_REG_COUNT), (uint8_t)(count >> 8));
		hv_outb((uint16_t)(b + ATA_REG_LBA0), (uint8_t)(lba >> 24));
		hv_outb((uint16_t)(b + ATA_REG_LBA1), (uint8_t)(lba >> 32));
		hv_outb((uint16_t)(b + ATA_REG_LBA2), (uint8_t)(lba >> 40));
		hv_outb((uint16_t)(b + ATA_REG_COUNT), (uint8_t)count);
		hv_outb((uint16_t)(b + ATA_REG_LBA0), (uint8_t)lba);
		hv_outb((uint16_t)(b + ATA_REG_LBA1), (uint8_t)(lba >> 8));
		hv_outb((uint16_t)(b + ATA_REG_LBA2), (uint8_t)(lba >> 16));
		hv_outb((uint16_t)(b + ATA_REG_DEVICE), 0x40);
	} else {
		hv_outb((uint16_t)(b + ATA_REG_DEVICE), (uint8_t)(0xe0 | ((lba >> 24) & 0x0f)));
		hv_outb((uint16_t)(b + ATA_REG_COUNT), (uint8_t)count);
		hv_outb((uint16_t)(b + ATA_REG_LBA0), (uint8_t)lba);
		hv_outb((uint16_t)(b + ATA_REG_LBA1), (uint8_t)(lba >> 8));
		hv_outb((uint16_t)(b + ATA_REG_LBA2), (uint8_t)(lba >> 16));
	}
	hv_outb((uint16_t)(b + ATA_REG_COMMAND), cmd);
	d->c.kicks++;
	if (!data) {
		rc = wait_status(d, false, true, status);                   /* non-data */
	} else if (!out) {
		uint32_t n = sectors_of(cmd, count);

		for (uint32_t s = 0; s < n && !rc; s++, p += BLK_SECTOR) {  /* PIO data-in */
			rc = wait_status(d, true, true, status);
			if (!rc)
				pio_in(d, p);
		}
		if (!rc) {
			*status = hv_inb((uint16_t)d->ctrl);                 /* alternate status */
			if (*status & (ATA_SR_ERR | ATA_SR_DF))
				rc = BLK_EIO;
		}
	} else {
		uint32_t n = sectors_of(cmd, count);

		rc = wait_status(d, true, false, status);                   /* PIO data-out */
		for (uint32_t s = 0; s < n && !rc; s++, p += BLK_SECTOR) {
			pio_out(d, p);
			rc = wait_status(d, s + 1 < n, true, status);
		}
	}
	if (rc == BLK_EIO)
		*err = hv_inb((uint16_t)(b + ATA_REG_ERROR));
	return rc;
}

int ata_submit(struct ata_dev *d, enum blk_op op, uint64_t lba, uint32_t blocks, void *buf,
	       uint64_t cookie)
{
	if (!d->sectors)
		return BLK_EINVAL;
	if (d->busy) {
		d->c.full++;
		return BLK_EAGAIN;
	}
	if (op == BLK_OP_READ || op == BLK_OP_WRITE) {
		if (!blocks || blocks > d->max_sectors || lba > d->sectors ||
		    blocks > d->sectors - lba || !buf)
			return BLK_EINVAL;
	} else if (op != BLK_OP_FLUSH) {
		return BLK_EINVAL;
	} else {
		lba = 0;
		blocks = 0;
		buf = NULL;
	}
	d->op = (uint8_t)op;
	d->lba = lba;
	d->blocks = blocks;
	d->buf = buf;
	d->cookie = cookie;
	d->busy = 1;
	d->c.submitted++;
	d->c.inflight = 1;
	d->c.max_inflight = 1;
	d->t_submit = blk_rdtsc();
	return 0;
}

/* Run the queued request (the whole PIO protocol) and complete it. */
static int run(struct ata_dev *d, struct blk_completion *c)
{
	uint8_t cmd, st, err;
	int rc;

	if (d->op == BLK_OP_READ)
		cmd = d->lba48 ? ATA_CMD_READ_EXT : ATA_CMD_READ;
	else if (d->op == BLK_OP_WRITE)
		cmd = d->lba48 ? ATA_CMD_WRITE_EXT : ATA_CMD_WRITE;
	else
		cmd = d->lba48 ? ATA_CMD_FLUSH_EXT : ATA_CMD_FLUSH;
	rc = ata_pio(d, cmd, d->lba, d->op == BLK_OP_FLUSH ? 0 : d->blocks, d->buf,
		     d->op == BLK_OP_WRITE, &st, &err);
	if (rc == BLK_ETIMEDOUT)
		return rc;
	c->cookie = d->cookie;
	c->lba = d->lba;
	c->t_submit = d->t_submit;
	c->t_complete = blk_rdtsc();
	c->buf = d->buf;
	c->len = d->blocks * BLK_SECTOR;
	c->blocks = d->blocks;
	c->op = d->op;
	c->dev_status = err;
	c->dev_status2 = st;
	c->raw = NULL;
	c->status = rc == 0 ? BLK_OK : (err & ATA_ER_IDNF) ? BLK_ERANGE : BLK_EIO;
	d->busy = 0;
	d->c.inflight = 0;
	d->c.completed++;
	if (c->status)
		d->c.errors++;
	return 1;
}

int ata_reap(struct ata_dev *d, struct blk_completion *c, unsigned max)
{
	if (!max)
		return BLK_EINVAL;
	return d->busy ? run(d, c) : 0;
}

int ata_wait(struct ata_dev *d, struct blk_completion *c, unsigned max)
{
	return ata_reap(d, c, max);
}
