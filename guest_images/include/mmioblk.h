/*
 * mmioblk.h - the guest runtime's driver for hvkvm's doorbell MMIO disk (hvkvm/vsp/mmioblk.py):
 * a 32-byte request descriptor in guest RAM, its address written to a doorbell register, one
 * MMIO exit per request, during which the host serves it completely.
 *
 *   - mmioblk_open (rt/k_mmioblk.c, ring 0): the register page at MMIOBLK_BASE (0xd0200000,
 *     mapped user-accessible for ring 3), MAGIC "HVBK", VERSION 1, capacity, max sectors,
 *     read-only flag; GET_ID for the serial; with interrupts: GSI 16 (edge) to the driver's
 *     vector and IRQ_ENABLE = 1 (the host pulses the line after each request).
 *   - requests (rt/u_mmioblk.c, any ring): mmioblk_submit fills a descriptor (status preset to
 *     0xffffffff) and writes its GPA to DOORBELL: when that store retires the status is there
 *     (a status still 0xffffffff means the host could not use the descriptor: LAST_STATUS says
 *     why). Completions are handed out in submission order; in ring 0 with interrupts a wait
 *     first sleeps for the interrupt that follows the doorbell (coalesced interrupts cover every
 *     request before them).
 */
#ifndef HV_MMIOBLK_H
#define HV_MMIOBLK_H

#include "blkdev.h"

#define MMIOBLK_BASE 0xd0200000u
#define MMIOBLK_SIZE 0x1000u
#define MMIOBLK_IRQ 16u
#define MMIOBLK_MAGIC 0x4b425648u /* "HVBK" */

#define MMIOBLK_REG_MAGIC 0x00
#define MMIOBLK_REG_VERSION 0x04
#define MMIOBLK_REG_CAP_LO 0x08
#define MMIOBLK_REG_CAP_HI 0x0c
#define MMIOBLK_REG_MAX_SECTORS 0x10
#define MMIOBLK_REG_FLAGS 0x14
#define MMIOBLK_REG_IRQ_ENABLE 0x18
#define MMIOBLK_REG_IRQ_COUNT 0x1c
#define MMIOBLK_REG_DOORBELL 0x20
#define MMIOBLK_REG_LAST_STATUS 0x28
#define MMIOBLK_REG_COMPLETED 0x2c
#define MMIOBLK_REG_ERRORS 0x30

#define MMIOBLK_OP_READ 1u
#define MMIOBLK_OP_WRITE 2u
#define MMIOBLK_OP_FLUSH 3u
#define MMIOBLK_OP_GET_ID 4u

#define MMIOBLK_ST_OK 0u
#define MMIOBLK_ST_IOERR 1u
#define MMIOBLK_ST_UNSUPP 2u
#define MMIOBLK_ST_BADADDR 3u
#define MMIOBLK_ST_RANGE 4u
#define MMIOBLK_ST_RO 5u
#define MMIOBLK_ST_BADLEN 6u
#define MMIOBLK_ST_PENDING 0xffffffffu

struct mmioblk_desc {
	uint32_t op;
	uint32_t sectors;
	uint64_t lba;
	uint64_t buf;
	uint32_t buf_len;
	uint32_t status;
};
_Static_assert(sizeof(struct mmioblk_desc) == 32, "mmioblk_desc");

#define MMIOBLK_MAX_QD 64u

struct mmioblk_slot {
	uint64_t cookie, lba, t_submit;
	void *buf;
	uint32_t len, blocks;
	uint32_t status;          /* the device's, or LAST_STATUS when it could not write it */
	uint8_t op, busy, reserved[2];
};

struct mmioblk_dev;
typedef void (*mmioblk_kfn)(struct mmioblk_dev *d);

struct mmioblk_dev {
	volatile uint8_t *regs;
	uint32_t version, max_sectors, irq, vector;
	uint64_t capacity;
	uint8_t ro, poll, reserved[2];
	struct mmioblk_desc *descs;   /* MMIOBLK_MAX_QD, user-accessible RAM */
	struct mmioblk_slot slots[MMIOBLK_MAX_QD];
	uint16_t free_stack[MMIOBLK_MAX_QD];
	uint16_t done[MMIOBLK_MAX_QD];  /* FIFO of completed slots */
	uint32_t free_top, done_head, done_tail;
	char id[21];
	struct blk_counters c;
	mmioblk_kfn kwait;
	volatile uint64_t events;
	uint64_t events_taken;
};

/* Ring 0 (rt/k_mmioblk.c). */
int mmioblk_open(struct mmioblk_dev *d, bool irq);
int mmioblk_close(struct mmioblk_dev *d);

/* Any ring (rt/u_mmioblk.c). */
int mmioblk_submit(struct mmioblk_dev *d, enum blk_op op, uint64_t lba, uint32_t blocks,
		   void *buf, uint64_t cookie);
int mmioblk_submit_raw(struct mmioblk_dev *d, uint32_t op, uint64_t lba, uint32_t sectors,
		       void *buf, uint32_t len, uint64_t cookie);
int mmioblk_reap(struct mmioblk_dev *d, struct blk_completion *c, unsigned max);
int mmioblk_wait(struct mmioblk_dev *d, struct blk_completion *c, unsigned max);

#endif /* HV_MMIOBLK_H */
