/*
 * exits - a loop of exits for benchmarks: `kind=cpuid|pio|mmio|hlt count=N ring=0|3`
 * (defaults: kind=cpuid count=1000 ring=3). SYNC stage 1 before the loop and SYNC stage 2 after it
 * are sent from the ring that runs the loop; then done(0).
 *   cpuid: `cpuid` leaf 0.  pio: `outl` to port 0x5a0.  mmio: 32-bit read of GPA 0xd0000000.
 *   hlt:   ring 0 only: self-IPI, then `sti; hlt`; the handler counts, the runtime EOIs.
 */
#include "hv.h"
#include "exits.h"

#define HLT_VECTOR 0x40

static volatile uint64_t hlt_irqs;

static void hlt_irq(unsigned vector, struct hv_regs *regs)
{
	(void)vector;
	(void)regs;
	hlt_irqs++;
}

static void hlt_loop(uint64_t count)
{
	hv_sync(1, EXITS_HLT, count);
	for (uint64_t i = 0; i < count; i++) {
		hv_lapic_self_ipi(HLT_VECTOR);
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	}
	hv_sync(2, EXITS_HLT, count);
}

int hv_main(void)
{
	char kind[16] = "cpuid";
	uint64_t ring = hv_arg_u64("ring", 3);
	int rc;

	hv_arg("kind", kind, sizeof(kind));
	exits_params.count = hv_arg_u64("count", 1000);
	exits_params.kind = !strcmp(kind, "cpuid") ? EXITS_CPUID
			  : !strcmp(kind, "pio")   ? EXITS_PIO
			  : !strcmp(kind, "mmio")  ? EXITS_MMIO
			  : !strcmp(kind, "hlt")   ? EXITS_HLT
						   : 0;
	HV_ASSERT(exits_params.kind != 0, "exits: unknown kind '%s' (cpuid|pio|mmio|hlt)", kind);
	HV_ASSERT(ring == 0 || ring == 3, "exits: ring must be 0 or 3, not %llu",
		  (unsigned long long)ring);
	HV_ASSERT(!(exits_params.kind == EXITS_HLT && ring == 3),
		  "exits: kind=hlt needs ring=0 (hlt is privileged: it would #GP in ring 3)");
	hv_printf("exits: kind=%s count=%llu ring=%llu\n", kind,
		  (unsigned long long)exits_params.count, (unsigned long long)ring);

	if (exits_params.kind == EXITS_HLT) {
		hv_irq_register(HLT_VECTOR, hlt_irq);
		hlt_loop(exits_params.count);
		HV_ASSERT_EQ(hlt_irqs, exits_params.count, "one interrupt per hlt");
		return 0;
	}
	rc = ring == 3 ? hv_run_user(exits_loop, &exits_params) : exits_loop(&exits_params);
	HV_ASSERT_EQ(rc, 0);
	return 0;
}
