/*
 * k_ioapic.c - IOAPIC redirection entries (MMIO at 0xfec00000). Kernel-only.
 */
#include "rt.h"

#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN    0x10

/* IOREGSEL + IOWIN is a two-step access: callers keep to one vCPU with IF=0 (see hv.h). */
uint32_t hv_ioapic_read(uint32_t reg)
{
	*(volatile uint32_t *)(uintptr_t)(HV_IOAPIC_BASE + IOAPIC_REGSEL) = reg;
	return *(volatile uint32_t *)(uintptr_t)(HV_IOAPIC_BASE + IOAPIC_WIN);
}

void hv_ioapic_write(uint32_t reg, uint32_t v)
{
	*(volatile uint32_t *)(uintptr_t)(HV_IOAPIC_BASE + IOAPIC_REGSEL) = reg;
	*(volatile uint32_t *)(uintptr_t)(HV_IOAPIC_BASE + IOAPIC_WIN) = v;
}

void hv_ioapic_route(unsigned gsi, uint8_t vector, unsigned dest, uint32_t flags)
{
	/* Masked while the halves disagree; the low word (vector, mode, mask) goes last. */
	hv_ioapic_write(HV_IOAPIC_REDTBL(gsi), HV_IOAPIC_MASKED);
	hv_ioapic_write(HV_IOAPIC_REDTBL(gsi) + 1, (uint32_t)dest << 24);
	hv_ioapic_write(HV_IOAPIC_REDTBL(gsi), vector | (flags & (HV_IOAPIC_LEVEL | HV_IOAPIC_LOW |
								   HV_IOAPIC_MASKED)));
}
