/*
 * k_main.c - the BSP and AP C entries, boot information, ring-3 tasks. Kernel-only.
 */
#include "rt.h"

uint8_t rt_kstacks[HV_MAX_CPUS][HV_STACK_SIZE] __attribute__((aligned(HV_STACK_SIZE)));
uint8_t rt_iststacks[HV_MAX_CPUS][HV_STACK_SIZE] __attribute__((aligned(HV_STACK_SIZE)));

/* struct hvm_start_info / hvm_memmap_table_entry (Xen's arch-x86/hvm/start_info.h). */
#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
	uint32_t magic;
	uint32_t version;
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr;
	uint64_t cmdline_paddr;
	uint64_t rsdp_paddr;
	uint64_t memmap_paddr;
	uint32_t memmap_entries;
	uint32_t reserved;
};

static void read_boot_info(void)
{
	const struct hvm_start_info *si = (const void *)(uintptr_t)rt_start_info_pa;

	if (!si || si->magic != HVM_START_MAGIC)
		return;
	hv_boot.start_info_pa = rt_start_info_pa;
	hv_boot.rsdp_paddr = si->rsdp_paddr;
	if (si->cmdline_paddr && si->cmdline_paddr < (1ULL << 32))
		hv_strlcpy(hv_boot.cmdline, (const char *)(uintptr_t)si->cmdline_paddr,
			   sizeof(hv_boot.cmdline));
	if (si->version >= 1 && si->memmap_paddr && si->memmap_paddr < (1ULL << 32)) {
		const struct hv_memmap_entry *e = (const void *)(uintptr_t)si->memmap_paddr;
		uint32_t n = si->memmap_entries;

		if (n > HV_MEMMAP_MAX)
			n = HV_MEMMAP_MAX;
		for (uint32_t i = 0; i < n; i++) {
			hv_boot.memmap[i] = e[i];
			if (e[i].type == 1)
				hv_boot.ram_bytes += e[i].size;
		}
		hv_boot.memmap_entries = n;
	}
}

static void cpu_common_init(unsigned cpu)
{
	rt_cpu_init(cpu);
	rt_lapic_init();
	rt_clock_init();
	rt_cpus[cpu].online = 1;
	__atomic_add_fetch(&rt_online_count, 1, __ATOMIC_ACQ_REL);
}

extern const struct hv_test __hvkvm_tests_start[], __hvkvm_tests_end[];

/* `test=NAME` on the command line runs that HV_TEST instead of hv_main(). */
static int rt_run_selected_test(void)
{
	char name[96];

	if (!hv_arg("test", name, sizeof(name)))
		return hv_main();
	for (const struct hv_test *t = __hvkvm_tests_start; t < __hvkvm_tests_end; t++) {
		if (strcmp(t->name, name))
			continue;
		if (t->flags & HV_TEST_USER) /* the test lives in a u_*.c file (user pages) */
			return hv_run_user((int (*)(void *))(void *)t->fn, NULL);
		return t->fn();
	}
	HV_ASSERT(0, "no guest test named '%s' in this image", name);
	return 1;
}

/* An image made only of HV_TESTs needs no main: list the tests. */
__attribute__((weak)) int hv_main(void)
{
	unsigned n = 0;

	for (const struct hv_test *t = __hvkvm_tests_start; t < __hvkvm_tests_end; t++, n++)
		hv_printf("test %s (%s:%u)\n", t->name, t->file, t->line);
	hv_printf("%u guest tests; run one with test=NAME\n", n);
	return 0;
}

HV_NORETURN void rt_bsp_main(unsigned cpu)
{
	/* Mask both 8259s: KVM_IRQ_LINE drives a GSI on the PIC and the IOAPIC alike, and the reset
	 * PIC delivers through LINT0 (ExtINT) at vector base 0, where an ISA interrupt would look
	 * like an exception. Devices are routed through the IOAPIC instead. */
	hv_outb(0x21, 0xff);
	hv_outb(0xa1, 0xff);
	rt_idt_init();
	cpu_common_init(cpu);
	rt_paging_init();
	read_boot_info();
	hv_uart_init();
	rt_log_serial = hv_arg_is("log", "serial");
	hv_done(rt_run_selected_test());
}

__attribute__((weak)) void hv_ap_main(unsigned cpu)
{
	(void)cpu;
}

HV_NORETURN void rt_ap_main(unsigned cpu)
{
	cpu_common_init(cpu);
	hv_ap_main(cpu);
	rt_halt_forever();
}

int hv_run_user(int (*fn)(void *), void *arg)
{
	unsigned cpu = hv_cpu();
	struct rt_cpu *c = &rt_cpus[cpu];
	struct hv_stackinfo *si = (struct hv_stackinfo *)rt_ustacks[cpu];
	/* As if called: RSP + 8 16-byte aligned at the entry of rt_task_entry. */
	uint64_t ursp = (uint64_t)(uintptr_t)(rt_ustacks[cpu] + HV_STACK_SIZE) - 8;

	si->cpu = cpu;
	si->magic = HV_STACK_MAGIC;
	/* TSS.RSP0 (the TSS is packed: take the address without a packed-member pointer). */
	uint64_t *rsp0 = (uint64_t *)(void *)((uint8_t *)&c->tss + __builtin_offsetof(struct rt_tss, rsp));

	return rt_user_enter((uint64_t)(uintptr_t)fn, (uint64_t)(uintptr_t)arg, ursp, &c->user_ksave, rsp0);
}
