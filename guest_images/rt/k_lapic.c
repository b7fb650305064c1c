/*
 * k_lapic.c - LAPIC set-up, IPIs, the LAPIC-timer clock, SMP start-up. Kernel-only.
 */
#include "rt.h"

volatile uint32_t rt_online_count;

void rt_lapic_init(void)
{
	hv_lapic_write(HV_LAPIC_TPR, 0);
	hv_lapic_write(HV_LAPIC_SVR, 0x100 | HV_VEC_SPURIOUS); /* software-enable */
}

void hv_lapic_ipi(unsigned dest, uint32_t icr_lo)
{
	hv_lapic_write(HV_LAPIC_ICR_HI, (uint32_t)dest << 24);
	hv_lapic_write(HV_LAPIC_ICR_LO, icr_lo);
	for (unsigned i = 0; i < 1000 && (hv_lapic_read(HV_LAPIC_ICR_LO) & (1u << 12)); i++)
		hv_pause();
}

/* The LAPIC timer as a free-running down-counter: divide by 16 (62.5 MHz at KVM's and QEMU's
 * 1 GHz APIC bus), one-shot, masked, from 0xffffffff. */
void rt_clock_init(void)
{
	hv_lapic_write(HV_LAPIC_TIMER_DIV, 0x3);
	hv_lapic_write(HV_LAPIC_LVT_TIMER, 1u << 16);
	hv_lapic_write(HV_LAPIC_TIMER_INIT, 0xffffffffu);
}

void hv_lapic_timer_arm(uint8_t vector, uint32_t us, bool periodic)
{
	uint64_t ticks = (uint64_t)us * 1000 / 16;

	hv_lapic_write(HV_LAPIC_TIMER_INIT, 0);
	hv_lapic_write(HV_LAPIC_TIMER_DIV, 0x3);
	hv_lapic_write(HV_LAPIC_LVT_TIMER, vector | (periodic ? 1u << 17 : 0));
	hv_lapic_write(HV_LAPIC_TIMER_INIT, ticks > 0xffffffffu ? 0xffffffffu : ticks ? (uint32_t)ticks : 1);
}

void hv_lapic_timer_stop(void)
{
	hv_lapic_write(HV_LAPIC_TIMER_INIT, 0);
	rt_clock_init();
}

uint64_t hv_time_us(void)
{
	uint64_t ticks = 0xffffffffu - hv_lapic_read(HV_LAPIC_TIMER_CUR);
	return ticks * 16 / 1000;
}

void hv_udelay(uint64_t us)
{
	uint64_t start = hv_time_us();

	/* Bounded by iterations too, in case the timer does not tick: each round reads the timer
	 * (an exit, a microsecond or more). */
	for (uint64_t i = 0; i < us + 1000 && hv_time_us() - start < us; i++)
		hv_pause();
}

unsigned hv_cpus_online(void)
{
	return __atomic_load_n(&rt_online_count, __ATOMIC_ACQUIRE);
}

void hv_smp_start(void)
{
	size_t len = (size_t)(rt_trampoline_end - rt_trampoline_start);

	memcpy((void *)(uintptr_t)HV_TRAMPOLINE_ADDR, rt_trampoline_start, len);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	/* INIT, then SIPI twice (the second is ignored by vCPUs that already started). */
	hv_lapic_ipi(0, HV_ICR_OTHERS | HV_ICR_ASSERT | HV_ICR_INIT);
	hv_udelay(10000);
	hv_lapic_ipi(0, HV_ICR_OTHERS | HV_ICR_ASSERT | HV_ICR_STARTUP | (HV_TRAMPOLINE_ADDR >> 12));
	hv_udelay(200);
	hv_lapic_ipi(0, HV_ICR_OTHERS | HV_ICR_ASSERT | HV_ICR_STARTUP | (HV_TRAMPOLINE_ADDR >> 12));
}

unsigned hv_smp_wait(unsigned n, uint64_t timeout_us)
{
	uint64_t start = hv_time_us();
	unsigned online;

	for (uint64_t i = 0; (online = hv_cpus_online()) < n && i < timeout_us + 1000 &&
			     hv_time_us() - start < timeout_us; i++)
		hv_pause();
	return online;
}
