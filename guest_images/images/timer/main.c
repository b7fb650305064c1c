/*
 * timer - LAPIC timer interrupts: `ticks=N period_us=P` (defaults 5, 1000). Arms the timer
 * periodic and takes N interrupts with `sti; hlt`, then arms it one-shot and checks that it fires
 * exactly once. SYNC 1 (values: interrupts taken, hlt wake-ups), a summary line, done(0).
 */
#include "hv.h"

#define TIMER_VECTOR 0x41

static volatile uint64_t ticks;

static void on_timer(unsigned vector, struct hv_regs *regs)
{
	(void)vector;
	(void)regs;
	ticks++;
}

int hv_main(void)
{
	uint64_t want = hv_arg_u64("ticks", 5);
	uint64_t period = hv_arg_u64("period_us", 1000);
	uint64_t wakeups = 0;

	HV_ASSERT(period > 0 && period <= 1000000, "timer: period_us must be 1..1000000");
	hv_irq_register(TIMER_VECTOR, on_timer);

	/* periodic */
	hv_lapic_timer_arm(TIMER_VECTOR, (uint32_t)period, true);
	while (ticks < want) {
		__asm__ volatile("sti; hlt; cli" ::: "memory");
		wakeups++;
		HV_ASSERT(wakeups < want * 1000, "timer: %llu wake-ups but only %llu ticks",
			  (unsigned long long)wakeups, (unsigned long long)ticks);
	}
	hv_lapic_timer_stop();

	/* one-shot: exactly one more interrupt. hv_udelay() waits with IF=0 (the clock is off
	 * while the timer is armed, so it ends by its iteration bound); a second firing would be
	 * taken in the sti window after it. */
	want = ticks + 1;
	hv_lapic_timer_arm(TIMER_VECTOR, (uint32_t)period, false);
	while (ticks < want)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	hv_udelay(3 * period);
	__asm__ volatile("sti; nop; cli" ::: "memory");
	HV_ASSERT_EQ(ticks, want, "the one-shot timer fired more than once");
	hv_lapic_timer_stop();

	hv_sync(1, ticks, wakeups);
	hv_printf("timer: %llu interrupts (periodic every %llu us, then one-shot)\n",
		  (unsigned long long)ticks, (unsigned long long)period);
	return 0;
}
