/*
 * hostile_cpu - a guest that attacks the parent at the CPU level: synthetic MSRs, hypercalls,
 * the MMIO and port spaces, the ucall port, triple faults and a vCPU that never exits. Needs
 * `hyperv` and one echo VSP (the bystander: after a survivable attack the guest connects to the
 * VMBus and checks that it still echoes, SYNC 0x1ff).
 *
 * Command line: attack=NAME (below), plus per-attack keys. SYNC stages (values):
 *   0x100 started (attack index)
 *   0x101 attack done (attack-specific values, listed at each attack)
 *   0x1ff bystander (echoes sent, echoes back)
 * then DONE(0). The ucall, triple-fault and halt/loop attacks do not come back: the host test
 * checks how the partition stopped.
 */
#include "cpu.h"

static uint8_t scratch_page[HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));
static uint8_t post_input[2 * HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));

static uint64_t ram_end(void)
{
	uint64_t end = 0;

	for (uint32_t i = 0; i < hv_boot.memmap_entries; i++)
		if (hv_boot.memmap[i].type == 1 &&
		    hv_boot.memmap[i].addr + hv_boot.memmap[i].size > end)
			end = hv_boot.memmap[i].addr + hv_boot.memmap[i].size;
	return end;
}

static int bystander(void)
{
	struct vmbus_channel *ch = hostile_open_echo(0, cpu_echo_area, 4);

	hostile_bystander_check(ch);
	HV_ASSERT_EQ(vmbus_channel_close(ch), 0);
	return 0;
}

/* ---- synthetic MSRs ------------------------------------------------------------------------ */

/* Every MSR of the synthetic range read, then written with garbage (pages inside RAM only as a
 * scratch page: the parent writes there), #GPs counted; then the VMBus set up from scratch still
 * works; then the hypercall MSR locked and a later write ignored. SYNC 0x101 (MSRs read without
 * #GP, writes without #GP, #GPs, hypercall MSR after the lock attempt, its value read back). */
static int msr_garbage(void)
{
	uint64_t outside = ram_end() + 0x10000, page = (uintptr_t)scratch_page;
	const uint64_t values[] = {
		0, 1, ~0ull, 0x5555555555555555ull, 0xaaaaaaaaaaaaaaa8ull, 1ull << 63,
		outside | 1, page | 1, page | 0xf01, (1ull << 52) | 1, 0x0f, 0x10000 | 0x0f,
	};
	uint32_t rd_ok = 0, wr_ok = 0;
	uint64_t v, before = hostile_gp_count, hc;

	for (uint32_t msr = 0x40000000; msr <= 0x400000ff; msr++) {
		rd_ok += hostile_rdmsr(msr, &v);
		for (uint32_t i = 0; i < HV_ARRAY_SIZE(values); i++) {
			uint64_t val = values[i];

			if (msr == HV_X64_MSR_HYPERCALL)
				val &= ~2ull; /* the lock bit comes last, on purpose */
			wr_ok += hostile_wrmsr(msr, val);
		}
	}
	hv_sync(0x102, rd_ok, wr_ok, hostile_gp_count - before);
	/* the parent still serves a guest that sets everything up properly */
	bystander();
	/* locked: a later write is ignored, not an error */
	HV_ASSERT(hostile_wrmsr(HV_X64_MSR_HYPERCALL, page | 3), "locking the hypercall page");
	HV_ASSERT(hostile_wrmsr(HV_X64_MSR_HYPERCALL, 0), "a write to the locked MSR");
	HV_ASSERT(hostile_rdmsr(HV_X64_MSR_HYPERCALL, &hc));
	hv_sync(0x101, rd_ok, wr_ok, hostile_gp_count - before, hc & 3, hc & ~0xfffull);
	return 0;
}

/* ---- hypercalls ------------------------------------------------------------------------------- */

/* Every unknown hypercall code from ring 3 (fast, variable-header, rep bits). SYNC 0x101 (calls
 * answered INVALID_HYPERCALL_CODE, other answers). */
static int hypercall_codes(void)
{
	struct cpu_flood *f = &cpu_flood;

	memset(f, 0, sizeof(*f));
	f->kind = 1;
	HV_ASSERT_EQ(hv_run_user(cpu_flood_task, f), 0);
	hv_sync(0x101, f->ok, f->other);
	HV_ASSERT_EQ(f->other, 0, "last status 0x%llx", (unsigned long long)f->last);
	return bystander();
}

/* HvPostMessage and HvSignalEvent inputs at bad GPAs, and malformed inputs, through the
 * hypercall page: each answered with the status the TLFS names. SYNC 0x101 (matched, cases). */
static int hypercall_bad_inputs(void)
{
	uint64_t end = ram_end(), in = (uintptr_t)post_input;
	uint32_t *h = (uint32_t *)post_input;
	struct { uint64_t control, gpa, expect; } cases[] = {
		{HVCALL_POST_MESSAGE, in + 4088, HV_STATUS_INVALID_ALIGNMENT},       /* straddles */
		{HVCALL_POST_MESSAGE, in + 4, HV_STATUS_INVALID_ALIGNMENT},
		{HVCALL_POST_MESSAGE, in + 1, HV_STATUS_INVALID_ALIGNMENT},
		{HVCALL_POST_MESSAGE, end, HV_STATUS_INVALID_PARAMETER},             /* outside RAM */
		{HVCALL_POST_MESSAGE, end - 8, HV_STATUS_INVALID_ALIGNMENT},
		{HVCALL_POST_MESSAGE, 1ull << 32, HV_STATUS_INVALID_PARAMETER},
		{HVCALL_POST_MESSAGE, 1ull << 52, HV_STATUS_INVALID_PARAMETER},
		{HVCALL_POST_MESSAGE, 1ull << 63, HV_STATUS_INVALID_PARAMETER},
		{HVCALL_POST_MESSAGE, ~0ull & ~7ull, HV_STATUS_INVALID_ALIGNMENT},
		{HVCALL_POST_MESSAGE | HV_HYPERCALL_FAST_BIT, in, HV_STATUS_INVALID_HYPERCALL_INPUT},
		{HVCALL_POST_MESSAGE | 1ull << 17, in, HV_STATUS_INVALID_HYPERCALL_INPUT},
		{HVCALL_POST_MESSAGE | 3ull << 32, in, HV_STATUS_INVALID_HYPERCALL_INPUT},
		{HVCALL_SIGNAL_EVENT, in + 4092, HV_STATUS_INVALID_ALIGNMENT},
		{HVCALL_SIGNAL_EVENT, in + 4, HV_STATUS_INVALID_ALIGNMENT},
		{HVCALL_SIGNAL_EVENT, end, HV_STATUS_INVALID_PARAMETER},
		{HVCALL_SIGNAL_EVENT, 1ull << 52, HV_STATUS_INVALID_PARAMETER},
		{HVCALL_SIGNAL_EVENT, in + 4088, HV_STATUS_INVALID_CONNECTION_ID},   /* id 0x7777 */
		{HVCALL_SIGNAL_EVENT | HV_HYPERCALL_FAST_BIT, 0x7777, HV_STATUS_INVALID_CONNECTION_ID},
	};
	/* well-placed inputs that are wrong inside */
	struct { uint32_t conn, type, size, expect; } inputs[] = {
		{VMBUS_MESSAGE_CONNECTION_ID_4, 1, 241, HV_STATUS_INVALID_PARAMETER},
		{VMBUS_MESSAGE_CONNECTION_ID_4, 1, 0xffffffffu, HV_STATUS_INVALID_PARAMETER},
		{VMBUS_MESSAGE_CONNECTION_ID_4, 0, 8, HV_STATUS_INVALID_PARAMETER},
		{VMBUS_MESSAGE_CONNECTION_ID_4, 0x80000001u, 8, HV_STATUS_INVALID_PARAMETER},
		{0x7777, 1, 8, HV_STATUS_INVALID_CONNECTION_ID},
		{0, 1, 8, HV_STATUS_INVALID_CONNECTION_ID},
	};
	uint32_t matched = 0, total = 0;
	uint64_t st;

	HV_ASSERT_EQ(hv_hyperv_init(), 0);
	memset(post_input, 0, sizeof(post_input));
	*(uint32_t *)(post_input + 4088) = 0x7777;
	for (uint32_t i = 0; i < HV_ARRAY_SIZE(cases); i++, total++) {
		st = hv_hypercall(cases[i].control, cases[i].gpa, 0) & 0xffff;
		if (st == cases[i].expect)
			matched++;
		else
			hv_log("hostile_cpu: case %u: status 0x%llx, expected 0x%llx", i,
			       (unsigned long long)st, (unsigned long long)cases[i].expect);
	}
	for (uint32_t i = 0; i < HV_ARRAY_SIZE(inputs); i++, total++) {
		h[0] = inputs[i].conn;
		h[1] = 0;
		h[2] = inputs[i].type;
		h[3] = inputs[i].size;
		st = hv_hypercall(HVCALL_POST_MESSAGE, in, 0) & 0xffff;
		if (st == inputs[i].expect)
			matched++;
		else
			hv_log("hostile_cpu: input %u: status 0x%llx, expected 0x%x", i,
			       (unsigned long long)st, inputs[i].expect);
	}
	hv_sync(0x101, matched, total);
	HV_ASSERT_EQ(matched, total);
	return bystander();
}

/* ---- MMIO and ports ---------------------------------------------------------------------------- */

static bool in_kernel_mmio(uint64_t a)
{
	return (a >= 0xfec00000 && a < 0xfec01000) ||  /* IOAPIC (in-kernel irqchip) */
	       (a >= 0xfee00000 && a < 0xfef00000) ||  /* LAPIC */
	       (a >= 0xfffbc000 && a < 0xfffc0000);    /* KVM's identity map and TSS pages */
}

static uint32_t mmio_probe(uint64_t a, uint32_t *unexpected)
{
	volatile uint32_t *p = (volatile uint32_t *)(uintptr_t)a;
	uint32_t v = *p;

	if (v != 0xffffffffu)
		(*unexpected)++;
	*p = 0xdeadbeef;
	return 2;
}

/* Reads and writes across the whole 32-bit MMIO hole above RAM (every `step` bytes, every page
 * of a few regions), accesses that straddle pages, string moves to and from MMIO. Unmapped:
 * reads are all ones, writes vanish. SYNC 0x101 (accesses, reads that were not all ones). */
static int mmio_scan(void)
{
	uint64_t step = hv_arg_u64("step", 0x40000), start = (ram_end() + 0xfff) & ~0xfffull;
	uint32_t n = 0, unexpected = 0;
	static uint8_t buf[512];
	static const uint64_t dense[][2] = {
		{0, 1 << 20}, {0xd0000000, 0xd0200000}, {0xfed00000, 0xfed10000},
		{0xfff00000, 0xfffbc000},
	};

	for (uint64_t a = start; a < (1ull << 32); a += step)
		if (!in_kernel_mmio(a))
			n += mmio_probe(a, &unexpected);
	for (uint32_t d = 0; d < HV_ARRAY_SIZE(dense); d++) {
		uint64_t lo = dense[d][0] ? dense[d][0] : start, hi = dense[d][0] ? dense[d][1] :
								       start + dense[d][1];

		for (uint64_t a = lo; a < hi; a += HVR_PAGE_SIZE)
			if (!in_kernel_mmio(a))
				n += mmio_probe(a + ((a >> 12) % 64) * 4, &unexpected);
	}
	/* sizes 1, 2, 8 and an 8-byte access across a page boundary */
	{
		volatile uint8_t *b = (volatile uint8_t *)(uintptr_t)(start + 0x3000);
		uint64_t q;

		b[1] = 0x11;
		(void)b[3];
		*(volatile uint16_t *)(b + 5) = 0x2222;
		q = *(volatile uint64_t *)(b + 0xffc);
		*(volatile uint64_t *)(b + 0xffc) = ~q;
		n += 5;
	}
	/* string moves: MMIO -> RAM and RAM -> MMIO */
	{
		void *src = (void *)(uintptr_t)(start + 0x5000), *dst = buf;
		uint64_t cnt = sizeof(buf);

		__asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(cnt) : : "memory");
		for (uint32_t i = 0; i < sizeof(buf); i++)
			unexpected += buf[i] != 0xff;
		dst = (void *)(uintptr_t)(start + 0x6000);
		src = buf;
		cnt = sizeof(buf);
		__asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(cnt) : : "memory");
		n += 2 * sizeof(buf);
	}
	hv_sync(0x101, n, unexpected);
	HV_ASSERT_EQ(unexpected, 0, "unmapped MMIO read something other than all ones");
	return bystander();
}

static bool in_kernel_port(uint32_t p)
{
	return p == 0x20 || p == 0x21 || p == 0xa0 || p == 0xa1 || (p >= 0x40 && p <= 0x43) ||
	       p == 0x61 || p == 0x4d0 || p == 0x4d1 || (p >= 0x3f8 && p <= 0x3ff) ||
	       (p >= 0xe4 && p <= 0xef) || p == 0xf4;
}

/* A read of every port, a write to every `wstep`-th port outside the ones that matter (PIC, PIT,
 * COM1, the hypercall/ucall ports), odd-sized and string I/O to the parent's own ports, string
 * I/O to unmapped ports. SYNC 0x101 (reads, writes, string I/O bytes). */
static int pio_scan(void)
{
	uint32_t wstep = (uint32_t)hv_arg_u64("wstep", 4), reads = 0, writes = 0, bytes = 0;
	static uint8_t buf[4096];

	for (uint32_t p = 0; p < 0x10000; p++, reads++)
		(void)hv_inb((uint16_t)p);
	for (uint32_t p = 0; p < 0x10000; p += wstep)
		if (!in_kernel_port(p)) {
			hv_outb((uint16_t)p, 0xa5);
			hv_outw((uint16_t)p, 0xa5a5);
			writes += 2;
		}
	/* the parent's ports at odd sizes: not a ucall, not a hypercall it understands */
	hv_outb(0xe8, 0x12);
	hv_outw(0xe8, 0x1234);
	(void)hv_inl(0xe8);
	(void)hv_inl(0xec);
	(void)hv_inl(0xe4);
	__asm__ volatile("outw %%ax, $0xe4" : : "a"(0x7777), "c"(0) : "memory");
	/* string I/O: from/to unmapped ports, to COM1, and to the ucall/hypercall ports */
	{
		void *p = buf;
		uint64_t cnt = sizeof(buf);

		__asm__ volatile("rep insb" : "+D"(p), "+c"(cnt) : "d"(0x2f8) : "memory");
		for (uint32_t i = 0; i < sizeof(buf); i++)
			HV_ASSERT_EQ(buf[i], 0xff, "rep insb from an unmapped port");
		p = buf;
		cnt = sizeof(buf) / 4;
		__asm__ volatile("rep outsl" : "+S"(p), "+c"(cnt) : "d"(0x2f8) : "memory");
		memset(buf, 'x', sizeof(buf));
		p = buf;
		cnt = 256;
		__asm__ volatile("rep outsb" : "+S"(p), "+c"(cnt) : "d"(0x3f8) : "memory");
		p = buf;
		cnt = 16;
		__asm__ volatile("rep outsl" : "+S"(p), "+c"(cnt) : "d"(0xec) : "memory");
		p = buf;
		cnt = 16;
		__asm__ volatile("rep insl" : "+D"(p), "+c"(cnt) : "d"(0xe4) : "memory");
		bytes = 2 * sizeof(buf) + 256 + 2 * 64;
	}
	hv_printf("\n");
	hv_sync(0x101, reads, writes, bytes);
	return bystander();
}

/* ---- the guest -> host protocol --------------------------------------------------------------- */

static struct hv_ucall bad_ucall;

static inline void ucall_raw(uint64_t gpa)
{
	__asm__ volatile("out %%eax, $0xe8" : : "a"((uint32_t)gpa) : "memory");
}

/* Each of these ends the partition: the parent refuses the ucall (a guest error), nothing more. */
static int ucall_outside_ram(void) { ucall_raw(0xfff00000u); return 1; }
static int ucall_straddle(void) { ucall_raw(ram_end() - 100); return 1; }

static int ucall_bad_magic(void)
{
	memset(&bad_ucall, 0, sizeof(bad_ucall));
	bad_ucall.magic = 0x12345678;
	bad_ucall.cmd = HV_UCALL_DONE;
	ucall_raw((uintptr_t)&bad_ucall);
	return 1;
}

static int ucall_bad_cmd(void)
{
	memset(&bad_ucall, 0xff, sizeof(bad_ucall));
	bad_ucall.magic = HV_UCALL_MAGIC;
	bad_ucall.cmd = 99;
	ucall_raw((uintptr_t)&bad_ucall);
	return 1;
}

/* LOG and SYNC as fast as ring 3 can send them: the parent keeps a bounded number. SYNC 0x101
 * (lines sent). */
static int log_flood(void)
{
	struct cpu_flood *f = &cpu_flood;

	memset(f, 0, sizeof(*f));
	f->kind = 2;
	f->count = (uint32_t)hv_arg_u64("count", 30000);
	HV_ASSERT_EQ(hv_run_user(cpu_flood_task, f), 0);
	hv_sync(0x101, f->ok);
	return bystander();
}

/* ---- the vCPU itself ---------------------------------------------------------------------------- */

/* A zero-limit IDT, then an exception: #UD -> #GP -> #DF -> triple fault (KVM_EXIT_SHUTDOWN). */
static int triple_fault(void)
{
	struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idtr = {0, 0};

	__asm__ volatile("lidt %0; ud2" : : "m"(idtr) : "memory");
	return 1;
}

/* Interrupts off and a loop that never exits to the parent: only the run's timeout ends it. */
static int loop_irq_off(void)
{
	__asm__ volatile("cli; 1: jmp 1b" ::: "memory");
	return 1;
}

/* Interrupts off and HLT: the vCPU can never wake; the parent sees it and stops the partition. */
static int halt_irq_off(void)
{
	__asm__ volatile("cli; 1: hlt; jmp 1b" ::: "memory");
	return 1;
}

const struct hostile_attack hostile_attacks[] = {
	{"msr_garbage", msr_garbage},
	{"hypercall_codes", hypercall_codes},
	{"hypercall_bad_inputs", hypercall_bad_inputs},
	{"mmio_scan", mmio_scan},
	{"pio_scan", pio_scan},
	{"log_flood", log_flood},
	{"ucall_outside_ram", ucall_outside_ram},
	{"ucall_straddle", ucall_straddle},
	{"ucall_bad_magic", ucall_bad_magic},
	{"ucall_bad_cmd", ucall_bad_cmd},
	{"triple_fault", triple_fault},
	{"loop_irq_off", loop_irq_off},
	{"halt_irq_off", halt_irq_off},
	{NULL, NULL},
};
