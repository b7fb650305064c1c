/*
 * u_cpu.c - hostile_cpu's ring-3 part: hypercall codes through the port and a LOG/SYNC flood, at
 * native speed.
 */
#include "cpu.h"

struct cpu_flood cpu_flood;
uint8_t cpu_echo_area[2 * 5 * HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));

static void hypercall_codes(struct cpu_flood *f)
{
	/* every code 0..0x1ff but the two hvkvm serves, with the fast, variable-header and rep
	 * bits in turn, and a few beyond */
	static const uint64_t bits[] = {0, HV_HYPERCALL_FAST_BIT, 0x1ull << 17, 0x5ull << 32,
					0xfffull << 48 | HV_HYPERCALL_FAST_BIT};
	static const uint64_t high[] = {0x200, 0x1000, 0x7fff, 0x8000, 0xfffe, 0xffff};

	for (uint64_t code = 0; code < 0x200 + HV_ARRAY_SIZE(high); code++) {
		uint64_t c = code < 0x200 ? code : high[code - 0x200];

		if (c == HVCALL_POST_MESSAGE || c == HVCALL_SIGNAL_EVENT)
			continue;
		for (unsigned b = 0; b < HV_ARRAY_SIZE(bits); b++) {
			uint64_t st = hostile_hypercall_port(c | bits[b],
							     (uintptr_t)hostile_user_page, 0) & 0xffff;

			if (st == HV_STATUS_INVALID_HYPERCALL_CODE)
				f->ok++;
			else
				f->other++;
			f->last = st;
		}
	}
}

static void log_flood(struct cpu_flood *f)
{
	for (uint32_t i = 0; i < f->count; i++) {
		hv_log("hostile_cpu: flood line %u of %u, padded to be long: "
		       "................................................................", i,
		       f->count);
		hv_sync(0x102, i);
		f->ok++;
	}
}

int cpu_flood_task(void *arg)
{
	struct cpu_flood *f = arg;

	if (f->kind == 1)
		hypercall_codes(f);
	else if (f->kind == 2)
		log_flood(f);
	else
		return -1;
	return 0;
}
