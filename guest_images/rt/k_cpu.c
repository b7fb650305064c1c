/*
 * k_cpu.c - descriptor tables (per-vCPU GDT and TSS, the shared IDT) and paging set-up.
 * Kernel-only.
 */
#include "rt.h"

/* The I/O permission bitmap ring 3 gets (PROTOCOL.md): a clear bit allows the port. A 32-bit
 * access checks all four bytes it touches, so each 32-bit port opens four. */
#define IOPB_DENY_ALL [0 ... RT_IOPB_BYTES - 1] = 0xff
#define IOPB_INIT                                                                   \
	{                                                                           \
		IOPB_DENY_ALL,                                                      \
		[0x3f8 / 8] = 0x00,               /* 0x3f8-0x3ff: COM1 */           \
		[0xe0 / 8] = 0x0f,                /* 0xe4-0xe7: HvSignalEvent kick */ \
		[0xe8 / 8] = 0x00,                /* 0xe8-0xeb ucall, 0xec-0xef hypercall */ \
		[0xf4 / 8] = 0xef,                /* 0xf4: QEMU exit */             \
		[0x5a0 / 8] = 0xf0,               /* 0x5a0-0x5a3: null port */      \
	}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
struct rt_cpu rt_cpus[HV_MAX_CPUS] = {
	[0 ... HV_MAX_CPUS - 1] = {
		.tss = {
			.iopb_offset = __builtin_offsetof(struct rt_tss, iopb),
			.iopb = IOPB_INIT,
		},
	},
};
#pragma GCC diagnostic pop

_Static_assert(__builtin_offsetof(struct rt_tss, iopb) == 104, "TSS layout");

static uint64_t rt_idt[256 * 2] __attribute__((aligned(16)));

struct __attribute__((packed)) rt_dtr {
	uint16_t limit;
	uint64_t base;
};

static void set_gate(unsigned vec, uint64_t off, unsigned dpl, unsigned ist)
{
	rt_idt[vec * 2] = (off & 0xffff) | ((uint64_t)HV_SEL_KERNEL_CS << 16) | ((uint64_t)ist << 32) |
			  ((uint64_t)(0x8e | (dpl << 5)) << 40) | (((off >> 16) & 0xffff) << 48);
	rt_idt[vec * 2 + 1] = off >> 32;
}

void rt_idt_init(void)
{
	uint64_t base = (uint64_t)(uintptr_t)rt_isr_stubs;

	for (unsigned v = 0; v < 256; v++)
		set_gate(v, base + 16 * v, 0, 0);
	/* int3 is the ring-3 -> kernel call: reachable from CPL 3. */
	set_gate(3, base + 16 * 3, 3, 0);
	/* #DF and NMI run on the IST stack, so a broken kernel stack still gets reported. */
	set_gate(2, base + 16 * 2, 0, 1);
	set_gate(8, base + 16 * 8, 0, 1);
}

void rt_cpu_init(unsigned cpu)
{
	struct rt_cpu *c = &rt_cpus[cpu];
	uint64_t tss = (uint64_t)(uintptr_t)&c->tss;
	uint64_t limit = sizeof(c->tss) - 1;
	struct hv_stackinfo *ist = (struct hv_stackinfo *)rt_iststacks[cpu];
	struct rt_dtr d;

	for (unsigned i = 0; i < 8; i++)
		c->gdt[i] = rt_boot_gdt[i];
	c->gdt[HV_SEL_TSS / 8] = (limit & 0xffff) | ((tss & 0xffffff) << 16) | (0x89ULL << 40) |
				 (((limit >> 16) & 0xf) << 48) | (((tss >> 24) & 0xff) << 56);
	c->gdt[HV_SEL_TSS / 8 + 1] = tss >> 32;

	ist->cpu = cpu;
	ist->magic = HV_STACK_MAGIC;
	c->tss.ist[0] = (uint64_t)(uintptr_t)(rt_iststacks[cpu] + HV_STACK_SIZE);
	c->tss.rsp[0] = (uint64_t)(uintptr_t)(rt_kstacks[cpu] + HV_STACK_SIZE);

	d.limit = sizeof(c->gdt) - 1;
	d.base = (uint64_t)(uintptr_t)c->gdt;
	__asm__ volatile("lgdt %0" ::"m"(d) : "memory");
	__asm__ volatile("ltr %w0" ::"r"(HV_SEL_TSS) : "memory");
	d.limit = sizeof(rt_idt) - 1;
	d.base = (uint64_t)(uintptr_t)rt_idt;
	__asm__ volatile("lidt %0" ::"m"(d) : "memory");
}

#define PTE_US 0x4ULL

/* Open the image's user region (u_*.c objects and .user.* sections) to ring 3. */
void rt_paging_init(void)
{
	hv_user_map((uintptr_t)__user_start, (uintptr_t)__user_end - (uintptr_t)__user_start);
}

bool hv_user_map(uint64_t addr, uint64_t size)
{
	uint64_t end = addr + size;

	if (end > (1ULL << 32) || end < addr)
		return false;
	for (uint64_t a = addr & ~0xfffULL; a < end;) {
		if (a < HV_4K_MAPPED_END) {
			rt_pt[a >> 12] |= PTE_US;
			a += 0x1000;
		} else {
			rt_pd[a >> 21] |= PTE_US;
			a = (a & ~0x1fffffULL) + 0x200000;
		}
	}
	hv_write_cr3(hv_read_cr3());
	return true;
}
