/*
 * k_trap.c - exception, interrupt and ring-3 call dispatch; the FAULT report. Kernel-only.
 */
#include "rt.h"

static const char *const exc_names[32] = {
	"#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow",
	"#BR bound range exceeded", "#UD invalid opcode", "#NM device not available",
	"#DF double fault", "coprocessor segment overrun", "#TS invalid TSS",
	"#NP segment not present", "#SS stack-segment fault", "#GP general protection",
	"#PF page fault", "reserved (15)", "#MF x87 floating-point", "#AC alignment check",
	"#MC machine check", "#XM SIMD floating-point", "#VE virtualization",
	"#CP control protection", "reserved (22)", "reserved (23)", "reserved (24)",
	"reserved (25)", "reserved (26)", "reserved (27)", "#HV hypervisor injection",
	"#VC VMM communication", "#SX security", "reserved (31)",
};

static hv_irq_handler_t irq_handlers[256];
static uint8_t irq_warned[256];

void hv_irq_register(unsigned vector, hv_irq_handler_t fn)
{
	if (vector >= HV_VEC_FIRST_IRQ && vector < 256)
		irq_handlers[vector] = fn;
}

HV_NORETURN static void report_fault(struct hv_regs *r)
{
	unsigned cpu = hv_cpu();
	struct rt_cpu *c = &rt_cpus[cpu];
	const char *name = exc_names[r->vector & 31];
	unsigned ring = r->cs & 3;
	struct hv_ucall u;

	if (c->in_fault++) {
		/* Faulted while reporting a fault: just stop. */
		hv_outb(HV_QEMU_EXIT_PORT, HV_QEMU_EXIT_FAULT);
		rt_halt_forever();
	}

	hv_ucall_init(&u, HV_UCALL_FAULT);
	u.ring = ring;
	hv_strlcpy(u.msg, name, sizeof(u.msg));
	u.vector = r->vector;
	u.error_code = r->error_code;
	u.rip = r->rip;
	u.cs = r->cs;
	u.rflags = r->rflags;
	u.rsp = r->rsp;
	u.ss = r->ss;
	u.cr2 = hv_read_cr2();
	u.gprs[0] = r->rax;
	u.gprs[1] = r->rbx;
	u.gprs[2] = r->rcx;
	u.gprs[3] = r->rdx;
	u.gprs[4] = r->rsi;
	u.gprs[5] = r->rdi;
	u.gprs[6] = r->rbp;
	u.gprs[7] = r->rsp;
	u.gprs[8] = r->r8;
	u.gprs[9] = r->r9;
	u.gprs[10] = r->r10;
	u.gprs[11] = r->r11;
	u.gprs[12] = r->r12;
	u.gprs[13] = r->r13;
	u.gprs[14] = r->r14;
	u.gprs[15] = r->r15;
	hv_ucall_send(&u);

	/* For hosts that ignore ucalls (QEMU): the same on the console, then the exit port. */
	hv_printf("FAULT: %s (vector %llu) in ring %u on vCPU %u, error code 0x%llx\n"
		  "  rip=%016llx cs=%04llx rflags=%016llx rsp=%016llx ss=%04llx cr2=%016llx\n"
		  "  rax=%016llx rbx=%016llx rcx=%016llx rdx=%016llx\n"
		  "  rsi=%016llx rdi=%016llx rbp=%016llx r8 =%016llx\n"
		  "  r9 =%016llx r10=%016llx r11=%016llx r12=%016llx\n"
		  "  r13=%016llx r14=%016llx r15=%016llx\n",
		  name, (unsigned long long)r->vector, ring, cpu, (unsigned long long)r->error_code,
		  (unsigned long long)r->rip, (unsigned long long)r->cs, (unsigned long long)r->rflags,
		  (unsigned long long)r->rsp, (unsigned long long)r->ss, (unsigned long long)u.cr2,
		  (unsigned long long)r->rax, (unsigned long long)r->rbx, (unsigned long long)r->rcx,
		  (unsigned long long)r->rdx, (unsigned long long)r->rsi, (unsigned long long)r->rdi,
		  (unsigned long long)r->rbp, (unsigned long long)r->r8, (unsigned long long)r->r9,
		  (unsigned long long)r->r10, (unsigned long long)r->r11, (unsigned long long)r->r12,
		  (unsigned long long)r->r13, (unsigned long long)r->r14, (unsigned long long)r->r15);
	hv_outb(HV_QEMU_EXIT_PORT, HV_QEMU_EXIT_FAULT);
	rt_halt_forever();
}

static void ring3_call(struct hv_regs *r)
{
	switch ((uint32_t)r->rax) {
	case HV_SYS_EXIT:
		rt_user_return(rt_cpus[hv_cpu()].user_ksave, (int)r->rdi);
	case HV_SYS_YIELD:
		r->rax = 0;
		return;
	case HV_SYS_HALT:
		rt_halt_forever();
	default:
		r->rax = (uint64_t)-1;
		return;
	}
}

void rt_isr_dispatch(struct hv_regs *r)
{
	unsigned v = (unsigned)r->vector;

	if (v == 3 && (r->cs & 3) == 3 && (r->rax >> 32) == HV_SYS_MAGIC) {
		ring3_call(r);
		return;
	}
	if (v < HV_VEC_FIRST_IRQ)
		report_fault(r);
	if (v == HV_VEC_SPURIOUS)
		return; /* no EOI for the spurious vector */
	if (irq_handlers[v]) {
		irq_handlers[v](v, r);
	} else if (!irq_warned[v]) {
		irq_warned[v] = 1;
		hv_printf("hv: unhandled interrupt vector 0x%x on vCPU %u\n", v, hv_cpu());
	}
	hv_lapic_eoi();
}
