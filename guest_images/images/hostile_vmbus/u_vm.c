/*
 * u_vm.c - hostile_vmbus's ring-3 part: floods of hypercalls and signals at native speed, and
 * the double-fetch flipper (runs on vCPU 1 while the parent parses the ring on its own thread).
 */
#include "vm.h"

uint8_t vm_victim_area[2 * (VICTIM_MAX_PAGES + 1) * HVR_PAGE_SIZE]
	__attribute__((aligned(HVR_PAGE_SIZE)));
uint8_t vm_bystander_area[2 * 5 * HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));
uint8_t vm_spare_area[2 * 5 * HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));
struct flood vm_flood;
struct flipper vm_flipper;

/* One HvPostMessage from ring 3: input at hostile_user_page. */
static uint64_t post(struct flood *f, uint32_t conn, uint32_t type, const void *msg, uint32_t size)
{
	uint32_t *h = (uint32_t *)hostile_user_page;
	uint64_t st;

	h[0] = conn;
	h[1] = 0;
	h[2] = type;
	h[3] = size;
	memcpy(hostile_user_page + 16, msg, size > 240 ? 240 : size);
	st = hostile_hypercall_port(HVCALL_POST_MESSAGE, (uintptr_t)hostile_user_page, 0) & 0xffff;
	if (st)
		f->refused++;
	else
		f->ok++;
	f->last_status = st;
	return st;
}

static void flood_garbage(struct flood *f)
{
	uint8_t msg[240];

	for (uint32_t i = 0; i < f->count; i++) {
		uint64_t r = hostile_rand(&f->seed);
		uint32_t size = (uint32_t)(r % 241), type;

		for (uint32_t j = 0; j < sizeof(msg); j += 8) {
			uint64_t v = hostile_rand(&f->seed);

			memcpy(msg + j, &v, 8);
		}
		/* unknown or host-only message types (nothing that changes the bus's state) */
		type = 17 + (uint32_t)((r >> 8) % 40);
		if (((r >> 16) & 7) == 0)
			type = (uint32_t)(r >> 32) | 0x100;
		memcpy(msg, &type, 4);
		post(f, (r >> 20) & 1 ? f->conn : 1, 1, msg, size);
	}
}

static void flood_gpadls(struct flood *f)
{
	uint8_t msg[240];
	uint32_t *w = (uint32_t *)msg;

	for (uint32_t g = 0; g < f->count; g++) {
		uint32_t handle = f->base_handle + g, sent, n;
		uint64_t *pfn;

		memset(msg, 0, sizeof(msg));
		w[0] = CHANNELMSG_GPADL_HEADER;
		w[2] = f->relid;
		w[3] = handle;
		w[4] = (uint32_t)(8 + 8 * f->pfns) | 1u << 16; /* range_buflen (u16), rangecount 1 */
		w[5] = f->pfns * HVR_PAGE_SIZE;                 /* byte_count */
		w[6] = 0;                                       /* byte_offset */
		pfn = (uint64_t *)(msg + 28);
		n = f->pfns < 26 ? f->pfns : 26;
		for (uint32_t i = 0; i < n; i++)
			pfn[i] = f->pfn;
		post(f, f->conn, 1, msg, 28 + 8 * n);
		for (sent = n; sent < f->pfns; sent += n) {
			n = f->pfns - sent < 28 ? f->pfns - sent : 28;
			memset(msg, 0, sizeof(msg));
			w[0] = CHANNELMSG_GPADL_BODY;
			w[2] = 0;
			w[3] = handle;
			pfn = (uint64_t *)(msg + 16);
			for (uint32_t i = 0; i < n; i++)
				pfn[i] = f->pfn;
			post(f, f->conn, 1, msg, 16 + 8 * n);
		}
	}
	for (uint32_t g = 0; g < f->count; g++) {
		memset(msg, 0, 16);
		w[0] = CHANNELMSG_GPADL_TEARDOWN;
		w[2] = f->relid;
		w[3] = f->base_handle + g;
		post(f, f->conn, 1, msg, 16);
	}
}

static void flood_signals(struct flood *f)
{
	for (uint32_t i = 0; i < f->count; i++) {
		uint32_t id = (uint32_t)hostile_rand(&f->seed);
		uint32_t st;

		if ((id & 0xffff0000u) == 0x20000000u || id - 0x2000u < 0x100u)
			id ^= 0x80000000u; /* not a real channel's connection id */
		st = vmbus_kick(id);
		if (st)
			f->refused++;
		else
			f->ok++;
		f->last_status = st;
		/* and the real channel, ten times as often: an in-kernel eventfd, no exit */
		for (int k = 0; k < 10 && f->kick_conn; k++)
			vmbus_kick(f->kick_conn);
	}
}

static void flood_offers(struct flood *f)
{
	uint32_t msg[2] = {CHANNELMSG_REQUESTOFFERS, 0};

	for (uint32_t i = 0; i < f->count; i++)
		post(f, f->conn, 1, msg, sizeof(msg));
}

static void flood_bad_inputs(struct flood *f)
{
	static const uint64_t gpas[] = {
		HVR_PAGE_SIZE - 8, HVR_PAGE_SIZE - 200, 1, 4, 0xfffffff0ull, 1ull << 32, 1ull << 40,
		(1ull << 52) - 8, 1ull << 63, ~0ull, ~0ull - 255,
	};
	uint32_t *h = (uint32_t *)hostile_user_page;

	for (uint32_t i = 0; i < f->count; i++) {
		uint64_t r = hostile_rand(&f->seed), gpa, st;
		uint32_t k = (uint32_t)(r % (HV_ARRAY_SIZE(gpas) + 3));

		if (k < HV_ARRAY_SIZE(gpas))
			gpa = gpas[k] < 0x100000 ? (uintptr_t)hostile_user_page + gpas[k] : gpas[k];
		else
			gpa = (uintptr_t)hostile_user_page;
		h[0] = (r >> 8) & 1 ? f->conn : (uint32_t)(r >> 16);
		h[1] = (uint32_t)(r >> 40);
		h[2] = (r >> 9) & 1 ? 1 : (uint32_t)(r >> 24);
		h[3] = (r >> 10) & 1 ? (uint32_t)(r >> 32) : 241 + (uint32_t)(r >> 48) % 4096;
		st = hostile_hypercall_port(HVCALL_POST_MESSAGE | ((r >> 11) & 1 ? 0 : (r & 0xffff0000)),
					    gpa, r) & 0xffff;
		if (st)
			f->refused++;
		else
			f->ok++;
		f->last_status = st;
	}
}

int vm_flood_task(void *arg)
{
	struct flood *f = arg;

	switch (f->kind) {
	case FLOOD_GARBAGE:
		flood_garbage(f);
		break;
	case FLOOD_GPADLS:
		flood_gpadls(f);
		break;
	case FLOOD_SIGNALS:
		flood_signals(f);
		break;
	case FLOOD_OFFERS:
		flood_offers(f);
		break;
	case FLOOD_BAD_INPUTS:
		flood_bad_inputs(f);
		break;
	default:
		return -1;
	}
	return 0;
}

/* vCPU 1, ring 3: rewrite the descriptor at `target` as fast as the CPU allows, alternating a
 * hostile value and the honest one in every field the parser checks. */
int vm_flipper_task(void *arg)
{
	struct flipper *fl = arg;
	uint64_t state = 0x5eed;

	while (!fl->go)
		hv_pause();
	while (!fl->stop) {
		uint32_t off = fl->target, size = fl->size;
		volatile uint8_t *d = fl->data;
		uint64_t r = hostile_rand(&state);
		uint32_t field = (uint32_t)(r % (fl->gpa ? 9 : 6)), i;

		if (fl->mode == 1) {
			if (!fl->gpa)
				continue;
			field = 6 + (uint32_t)(r % 3);
		} else if (fl->mode == 2) {
			field = (uint32_t)(r % 6);
		}
		uint8_t save[32];

		for (i = 0; i < 32; i++)
			save[i] = d[(off + i) % size];
		switch (field) {
		case 0: d[(off + 4) % size] = 0xff; d[(off + 5) % size] = 0xff; break;   /* len8 */
		case 1: d[(off + 2) % size] = 1; d[(off + 3) % size] = 0; break;         /* offset8 */
		case 2: d[off % size] = 0x34; d[(off + 1) % size] = 0x12; break;         /* type */
		case 3: d[(off + 7) % size] = 0x80; break;                               /* flags */
		case 4: d[(off + 2) % size] = 0xff; break;                               /* offset8 > len8 */
		case 5: d[(off + 4) % size] ^= 0x40; break;                              /* len8 grows */
		case 6: d[(off + 21) % size] = 0x7f; break;                              /* range count */
		case 7: d[(off + 27) % size] = 0xff; break;                              /* byte_count */
		default: d[(off + 29) % size] = 0x10; break;                             /* byte_offset */
		}
		for (i = 0; i < (fl->mode == 1 ? 4u : 64u); i++)
			hv_pause();
		for (i = 0; i < 32; i++)
			d[(off + i) % size] = save[i];
		fl->flips++;
	}
	return 0;
}
