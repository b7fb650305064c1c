/*
 * vm.h - hostile_vmbus: shared between its kernel part (main.c) and its ring-3 part (u_vm.c).
 */
#ifndef HOSTILE_VM_H
#define HOSTILE_VM_H

#include "hostile.h"

#define VICTIM_MAX_PAGES 32u

/* Ring-3 floods: what to send and what came back. */
struct flood {
	uint32_t kind;          /* FLOOD_* */
	uint32_t count;
	uint32_t conn;          /* VMBus message connection id */
	uint32_t relid;
	uint32_t base_handle;   /* GPADLs: first handle */
	uint32_t pfns;          /* GPADLs: PFNs per GPADL */
	uint64_t pfn;           /* GPADLs: the page every PFN names */
	uint32_t kick_conn;     /* signals: a real channel's connection id */
	uint32_t reserved;
	uint64_t seed;
	/* results */
	uint64_t ok;            /* status 0 */
	uint64_t refused;       /* any other status */
	uint64_t last_status;
};

enum {
	FLOOD_GARBAGE = 1,      /* channel messages of unknown types and random sizes */
	FLOOD_GPADLS = 2,       /* `count` GPADLs of `pfns` PFNs (header + bodies), then teardowns */
	FLOOD_SIGNALS = 3,      /* HvSignalEvent on unknown connection ids (port 0xe4) + kicks */
	FLOOD_OFFERS = 4,       /* REQUESTOFFERS: the parent answers each with every offer */
	FLOOD_BAD_INPUTS = 5,   /* HvPostMessage inputs at bad GPAs, sizes and types */
};

/* The double-fetch flipper on vCPU 1 (ring 3). */
struct flipper {
	volatile uint32_t go, stop;
	volatile uint64_t flips;
	uint8_t *data;          /* the victim's send-ring data area */
	uint32_t size;
	volatile uint32_t target; /* ring offset of the descriptor being fought over */
	volatile uint32_t gpa;    /* it is a GPA-direct packet: its range header too */
	uint32_t mode;            /* 0: every field, 1: only GPA range headers, 2: descriptors */
};

extern uint8_t vm_victim_area[2 * (VICTIM_MAX_PAGES + 1) * HVR_PAGE_SIZE];
extern uint8_t vm_bystander_area[2 * 5 * HVR_PAGE_SIZE];
extern uint8_t vm_spare_area[2 * 5 * HVR_PAGE_SIZE];
extern struct flood vm_flood;
extern struct flipper vm_flipper;

int vm_flood_task(void *arg);
int vm_flipper_task(void *arg);

#endif
