/* ufault: the faulting code (user-accessible: runs in ring 3, or ring 0 with ring=0). */
#include "ufault.h"

struct ufault_params ufault_params;

int ufault_run(void *arg)
{
	const struct ufault_params *p = arg;
	volatile uint64_t zero = 0;

	switch (p->kind) {
	case UFAULT_WRITE:
		*(volatile uint64_t *)(uintptr_t)p->target = 0xdeadbeef;
		break;
	case UFAULT_NULL:
		*(volatile uint64_t *)(uintptr_t)zero = 0xdeadbeef;
		break;
	case UFAULT_UD:
		__asm__ volatile("ud2");
		break;
	case UFAULT_GP:
		if (hv_ring() == 3)
			__asm__ volatile("cli");
		else
			(void)*(volatile uint64_t *)(uintptr_t)0x8000000000000000ULL;
		break;
	case UFAULT_DE: {
		volatile uint64_t one = 1;
		volatile uint64_t q = one / zero; /* volatile: the division must happen */
		(void)q;
		break;
	}
	}
	return 0;
}
