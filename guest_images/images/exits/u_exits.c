/* exits: the loop, user-accessible so it runs in ring 3 (or ring 0 with ring=0). */
#include "exits.h"

struct exits_params exits_params;

int exits_loop(void *arg)
{
	const struct exits_params *p = arg;
	uint64_t n = p->count;

	hv_sync(1, p->kind, n);
	switch (p->kind) {
	case EXITS_CPUID:
		for (uint64_t i = 0; i < n; i++)
			hv_cpuid(0, 0, 0, 0, 0, 0);
		break;
	case EXITS_PIO:
		for (uint64_t i = 0; i < n; i++)
			hv_outl(HV_NULL_PIO_PORT, (uint32_t)i);
		break;
	case EXITS_MMIO:
		for (uint64_t i = 0; i < n; i++)
			(void)*(volatile uint32_t *)(uintptr_t)HV_NULL_MMIO_ADDR;
		break;
	default:
		HV_ASSERT(0, "exits: kind %u cannot run here", p->kind);
	}
	hv_sync(2, p->kind, n);
	return 0;
}
