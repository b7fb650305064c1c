/*
 * hostile.h - shared by the hostile guest images (hostile_cpu, hostile_vmbus, hostile_dev): a
 * guest that attacks the parent partition. Each image runs one attack, `attack=NAME` on the
 * command line, and reports what it saw with SYNC stages the host test checks:
 *
 *   SYNC 0x100  attack started:   values: attack index
 *   SYNC 0x1xx  attack-specific stages (each attack's comment lists them)
 *   SYNC 0x1ff  bystander check:  values: echoes sent, echoes back intact (the channel nobody
 *               attacked still works)
 *
 * then DONE(0). Attacks that end the partition (CPU-level: triple fault, a loop with interrupts
 * off, a bad ucall) do not come back: the host test checks how the run ended.
 *
 * The files hostile.h, hostile_lib.c and u_hostile_lib.c live in images/hostile_vmbus/; the other
 * hostile images link to them (symbolic links), so every image hashes and builds the same code.
 */
#ifndef HOSTILE_H
#define HOSTILE_H

#include "vmbus.h"

#define SYNC_START 0x100
#define SYNC_BYSTANDER 0x1ff

/* hvkvm's echo device (hvkvm/vsp/echo.py). */
#define HOSTILE_ECHO_GUID \
	GUID_INIT(0x9d3c5b4e, 0x6f0a, 0x4c8e, 0xb1, 0xd2, 0x68, 0x76, 0x76, 0x6b, 0x65, 0x63)

struct hostile_attack {
	const char *name;
	int (*fn)(void);
};

/* Each image defines its table (the last entry {NULL, NULL}). */
extern const struct hostile_attack hostile_attacks[];

/* ---- ring 0: #GP caught and counted (rdmsr/wrmsr of anything) -------------------------------- */

/* rdmsr / wrmsr that survive a #GP: returns false (and counts it) when the CPU raised one. */
bool hostile_rdmsr(uint32_t msr, uint64_t *value);
bool hostile_wrmsr(uint32_t msr, uint64_t value);
extern volatile uint64_t hostile_gp_count;

/* ---- ring 0: raw SynIC messages, bypassing the runtime's queue -------------------------------- */

/* What the raw reader saw, per message type, and the last interesting answers. */
struct hostile_msgs {
	uint32_t count[32];            /* by msgtype (>= 31 counted in [31]) */
	uint32_t total;
	uint32_t last_gpadl_status;    /* GPADL_CREATED.creation_status */
	uint32_t last_gpadl_handle;
	uint32_t gpadl_ok, gpadl_failed;
	uint32_t last_open_status;     /* OPENCHANNEL_RESULT.status */
	uint32_t last_open_relid;
	uint32_t last_version_supported;
	uint32_t torndown;
};
extern struct hostile_msgs hostile_msgs;

/* Take every message waiting in the VMBus SINT's slot (the parent delivers the next one on each
 * EOM, synchronously), recording them in hostile_msgs. IF must be 0. Returns how many. */
uint32_t hostile_drain(void);
/* HvPostMessage of `size` bytes (may exceed 240: the parent must refuse it) on `conn` with
 * `type`, through the hypercall page; then hostile_drain(). Returns the hypercall status. */
uint64_t hostile_post(uint32_t conn, uint32_t type, const void *msg, uint32_t size);
/* The same on the VMBus message connection with type 1 (a channel message). */
uint64_t hostile_post_msg(const void *msg, uint32_t size);

/* ---- ring 0: echo channels ----------------------------------------------------------------- */

/* vmbus_init, then the n-th echo offer opened with rings of `pages` data pages each in `area`
 * (2 * (pages + 1) pages, user-accessible). Asserts on failure. */
struct vmbus_channel *hostile_open_echo(unsigned n, void *area, uint32_t pages);
/* `count` echoes of `len` bytes through `ch`, polling with a deadline of `timeout_ms` per echo
 * (works whatever the parent did to the channel). Returns how many came back intact. */
uint32_t hostile_echo(struct vmbus_channel *ch, uint32_t count, uint32_t len, uint32_t timeout_ms);
/* hostile_echo on the bystander, then SYNC_BYSTANDER (count, intact); asserts all came back. */
void hostile_bystander_check(struct vmbus_channel *ch);

/* ---- any ring ----------------------------------------------------------------------------------- */

/* A hypercall straight through the port the hypercall page uses (works from ring 3: the TSS
 * I/O bitmap opens 0xec): RCX = control, RDX = input GPA, R8 = output GPA; returns RAX. */
static inline uint64_t hostile_hypercall_port(uint64_t control, uint64_t input, uint64_t output)
{
	uint64_t rax = 0;
	register uint64_t r8 __asm__("r8") = output;

	__asm__ volatile("out %%eax, $0xec"
			 : "+a"(rax), "+c"(control), "+d"(input), "+r"(r8)
			 :
			 : "memory");
	return rax;
}

/* A page for hypercall inputs from ring 3 (user-accessible, page-aligned). */
extern uint8_t hostile_user_page[2 * HVR_PAGE_SIZE];

/* Garbage: a splitmix64 stream. */
uint64_t hostile_rand(uint64_t *state);

static inline uint64_t hostile_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

#endif
