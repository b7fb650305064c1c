/*
 * idle - runs until the host stops it: prints "idle: ready", then sleeps in `sti; hlt` forever
 * (a halted vCPU costs the host nothing). `tick_ms=N` (default 0: none) arms the LAPIC timer
 * periodic and prints "idle: tick K" every N ms, so a console has something to stream.
 * `exit_after=K` (default 0: never) returns done(0) after K ticks.
 */
#include "hv.h"

#define TICK_VECTOR 0x42

static volatile uint64_t ticks;

static void on_tick(unsigned vector, struct hv_regs *regs)
{
	(void)vector;
	(void)regs;
	ticks++;
}

int hv_main(void)
{
	uint64_t tick_ms = hv_arg_u64("tick_ms", 0);
	uint64_t exit_after = hv_arg_u64("exit_after", 0);
	uint64_t seen = 0;

	HV_ASSERT(tick_ms <= 4000, "idle: tick_ms must be 0..4000");
	hv_printf("idle: ready (vCPU %u, tick_ms=%llu)\n", hv_cpu(), (unsigned long long)tick_ms);
	if (tick_ms) {
		hv_irq_register(TICK_VECTOR, on_tick);
		hv_lapic_timer_arm(TICK_VECTOR, (uint32_t)(tick_ms * 1000), true);
	}
	for (;;) {
		__asm__ volatile("sti; hlt; cli" ::: "memory");
		if (ticks != seen) {
			seen = ticks;
			hv_printf("idle: tick %llu\n", (unsigned long long)seen);
			if (exit_after && seen >= exit_after)
				break;
		}
	}
	hv_lapic_timer_stop();
	return 0;
}
