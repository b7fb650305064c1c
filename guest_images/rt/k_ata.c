/*
 * k_ata.c - the ATA PIO driver's kernel part (ring 0, vCPU 0): the TSS I/O bitmap for ring 3,
 * IDENTIFY DEVICE, the interrupt (IOAPIC GSI 14, edge) and the ring-0 wait. See include/ata.h.
 */
#include "blkdev.h"
#include "rt.h"

#define ATA_VECTOR 0x68u

/* Let ring 3 use the channel's ports on every vCPU (APs started later share the static TSS
 * images, which rt_cpu_init does not overwrite). */
static void open_ports(uint16_t base, uint16_t ctrl)
{
	for (unsigned cpu = 0; cpu < HV_MAX_CPUS; cpu++) {
		uint8_t *iopb = rt_cpus[cpu].tss.iopb;

		for (uint16_t port = base; port < base + 8; port++)
			iopb[port / 8] &= (uint8_t)~(1u << (port % 8));
		iopb[ctrl / 8] &= (uint8_t)~(1u << (ctrl % 8));
	}
}

/* Sleep until INTRQ (the handler counts it); the status read that follows clears it. */
static void kwait(struct ata_dev *d)
{
	blk_irq_wait(&d->events, &d->c);
}

/* An IDENTIFY string: two characters per word, first one in the high byte; trailing spaces cut. */
static void ident_string(const uint16_t *w, unsigned words, char *out)
{
	unsigned n = 0;

	for (unsigned i = 0; i < words; i++) {
		out[n++] = (char)(w[i] >> 8);
		out[n++] = (char)(w[i] & 0xff);
	}
	while (n && (out[n - 1] == ' ' || out[n - 1] == 0))
		n--;
	out[n] = 0;
	for (unsigned i = 0; i < n; i++)
		if (out[i] < 0x20 || out[i] > 0x7e)
			out[i] = '?';
}

int ata_open(struct ata_dev *d, uint32_t pio_width, bool irq)
{
	const uint8_t *raw;
	uint8_t st, err, sum = 0;
	int rc;

	if (!d || (pio_width != 2 && pio_width != 4))
		return BLK_EINVAL;
	memset(d, 0, sizeof(*d));
	d->base = ATA_BASE;
	d->ctrl = ATA_CTRL;
	d->irq = ATA_IRQ;
	d->pio_width = (uint8_t)pio_width;
	open_ports(d->base, d->ctrl);
	hv_outb((uint16_t)d->ctrl, ATA_CTL_NIEN);
	hv_outb((uint16_t)(d->base + ATA_REG_DEVICE), 0xa0);
	st = hv_inb((uint16_t)(d->base + ATA_REG_STATUS));
	if (st == 0xff || st == 0x00)
		return BLK_ENODEV;         /* a floating bus, or no device 0 */
	d->stall_cycles = 1ULL << 36;
	rc = ata_pio(d, ATA_CMD_IDENTIFY, 0, 1, d->identify, false, &st, &err);
	if (rc)
		return rc == BLK_EIO ? BLK_ENODEV : rc;
	raw = (const uint8_t *)d->identify;
	if (raw[510] == 0xa5) {
		for (unsigned i = 0; i < 512; i++)
			sum = (uint8_t)(sum + raw[i]);
		if (sum)
			return BLK_EPROTO;
	}
	if (!(d->identify[49] & (1u << 9)))
		return BLK_ENODEV;        /* no LBA: not for this driver */
	d->lba48 = (d->identify[83] & (1u << 10)) != 0;
	if (d->lba48) {
		for (int i = 3; i >= 0; i--)
			d->sectors = d->sectors << 16 | d->identify[100 + i];
		d->max_sectors = 65536;
	} else {
		d->sectors = d->identify[60] | (uint32_t)d->identify[61] << 16;
		d->max_sectors = 256;
	}
	if (d->max_sectors > BLK_MAX_XFER / BLK_SECTOR)
		d->max_sectors = BLK_MAX_XFER / BLK_SECTOR;
	ident_string(&d->identify[27], 20, d->model);
	ident_string(&d->identify[10], 10, d->serial);
	ident_string(&d->identify[23], 4, d->firmware);
	d->stall_cycles = 0;
	if (irq) {
		d->vector = ATA_VECTOR;
		rc = blk_irq_attach(d->irq, d->vector, &d->events, &d->c);
		if (rc)
			return rc;
		(void)hv_inb((uint16_t)(d->base + ATA_REG_STATUS)); /* no INTRQ left pending */
		hv_outb((uint16_t)d->ctrl, 0);                      /* nIEN = 0 */
		d->kwait = kwait;
	}
	d->c.kicks = d->c.polls = d->c.waits = 0;
	d->status_reads = d->data_accesses = 0;
	return 0;
}

int ata_close(struct ata_dev *d)
{
	if (!d || d->busy)
		return BLK_EINVAL;
	if (d->vector) {
		hv_outb((uint16_t)d->ctrl, ATA_CTL_NIEN);
		blk_irq_detach(d->irq, d->vector);
	}
	d->kwait = NULL;
	d->sectors = 0;
	return 0;
}
