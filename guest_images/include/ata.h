/*
 * ata.h - the guest runtime's ATA PIO driver: device 0 on the primary channel (ports
 * 0x1f0-0x1f7, control 0x3f6, IRQ 14), the client of hvkvm's hvkvm/vsp/ata.py (and of any
 * IDE disk). Facts from ATA/ATAPI-7 (PIO data-in / data-out / non-data protocols); our own code.
 *
 *   1. ata_open (rt/k_ata.c, ring 0): opens the ports to ring 3 in every vCPU's TSS I/O bitmap
 *      (0x1f0-0x1f7 and 0x3f6), selects device 0 with LBA, IDENTIFY DEVICE (checksum checked,
 *      model, serial, firmware, LBA48 size or LBA28 size), and, with interrupts, routes GSI 14
 *      (edge) to the driver's vector and clears nIEN; otherwise sets nIEN (no interrupts).
 *   2. Requests (rt/u_ata.c, any ring), one at a time (qd 1): ata_submit records it;
 *      ata_wait runs it: READ SECTORS EXT (0x24) / WRITE SECTORS EXT (0x34) / FLUSH CACHE EXT
 *      (0xEA) (the LBA28 forms on a device without LBA48), then per sector: wait for DRQ
 *      (polling the status register, or in ring 0 sleeping for INTRQ and then reading status,
 *      which clears it) and move 512 bytes through the data port, 2 or 4 bytes per `in`/`out`
 *      (pio=16|32): one port-I/O exit each on a hypervisor that emulates the disk. ERR ends the
 *      request with the error register (ABRT, IDNF, UNC) in the completion.
 */
#ifndef HV_ATA_H
#define HV_ATA_H

#include "blkdev.h"

#define ATA_BASE 0x1f0u
#define ATA_CTRL 0x3f6u
#define ATA_IRQ 14u

#define ATA_REG_DATA 0
#define ATA_REG_ERROR 1
#define ATA_REG_FEATURES 1
#define ATA_REG_COUNT 2
#define ATA_REG_LBA0 3
#define ATA_REG_LBA1 4
#define ATA_REG_LBA2 5
#define ATA_REG_DEVICE 6
#define ATA_REG_STATUS 7
#define ATA_REG_COMMAND 7

#define ATA_SR_BSY 0x80u
#define ATA_SR_DRDY 0x40u
#define ATA_SR_DF 0x20u
#define ATA_SR_DRQ 0x08u
#define ATA_SR_ERR 0x01u
#define ATA_ER_ABRT 0x04u
#define ATA_ER_IDNF 0x10u
#define ATA_ER_UNC 0x40u
#define ATA_CTL_NIEN 0x02u
#define ATA_CTL_SRST 0x04u
#define ATA_CTL_HOB 0x80u

#define ATA_CMD_READ 0x20u
#define ATA_CMD_READ_EXT 0x24u
#define ATA_CMD_WRITE 0x30u
#define ATA_CMD_WRITE_EXT 0x34u
#define ATA_CMD_FLUSH 0xe7u
#define ATA_CMD_FLUSH_EXT 0xeau
#define ATA_CMD_IDENTIFY 0xecu

struct ata_dev;
typedef void (*ata_kfn)(struct ata_dev *d);

struct ata_dev {
	uint16_t base, ctrl;
	uint32_t irq, vector;
	uint8_t pio_width;        /* 2 or 4 */
	uint8_t lba48;
	uint8_t poll;             /* ring 0: poll the status register instead of sleeping */
	uint8_t busy;             /* a request is queued */
	uint64_t sectors;
	uint32_t max_sectors;     /* per command */
	char model[41], serial[21], firmware[9];
	uint16_t identify[256];

	/* the one request */
	uint8_t op;
	uint64_t lba;
	uint32_t blocks;
	void *buf;
	uint64_t cookie;
	uint64_t t_submit;

	struct blk_counters c;
	uint64_t data_accesses;   /* data-port in/out instructions */
	uint64_t status_reads;
	uint64_t stall_cycles;

	ata_kfn kwait;            /* ring 0: sleep until INTRQ */
	volatile uint64_t events;
};

/* Ring 0 (rt/k_ata.c): open the ports to ring 3, IDENTIFY, set up (or mask) the interrupt.
 * pio_width 2 or 4. 0 or BLK_E*. */
int ata_open(struct ata_dev *d, uint32_t pio_width, bool irq);
int ata_close(struct ata_dev *d);

/* Any ring (rt/u_ata.c). */
int ata_submit(struct ata_dev *d, enum blk_op op, uint64_t lba, uint32_t blocks, void *buf,
	       uint64_t cookie);
int ata_reap(struct ata_dev *d, struct blk_completion *c, unsigned max);
int ata_wait(struct ata_dev *d, struct blk_completion *c, unsigned max);
/* A command and its data now (IDENTIFY; open uses it): 0 or BLK_E*, *err = error register. */
int ata_pio(struct ata_dev *d, uint8_t cmd, uint64_t lba, uint32_t count, void *buf, bool out,
	    uint8_t *status, uint8_t *err);

#endif /* HV_ATA_H */
