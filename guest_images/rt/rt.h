/*
 * rt.h - internal declarations of the guest runtime (not for images).
 */
#ifndef RT_H
#define RT_H

#include "hv.h"

/* 64-bit TSS followed by the I/O permission bitmap (ports 0..RT_IOPB_PORTS-1, then 0xff). */
#define RT_IOPB_PORTS 0x600
#define RT_IOPB_BYTES (RT_IOPB_PORTS / 8 + 1)

struct rt_tss {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iopb_offset;
	uint8_t iopb[RT_IOPB_BYTES];
} __attribute__((packed));

/* Per-vCPU kernel state (kernel-only memory). */
struct rt_cpu {
	uint64_t gdt[HV_GDT_ENTRIES];
	struct rt_tss tss;
	uint64_t user_ksave;  /* kernel RSP saved by rt_user_enter, used by rt_user_return */
	uint32_t in_fault;    /* nested-fault guard */
	uint32_t online;
} __attribute__((aligned(64)));

extern struct rt_cpu rt_cpus[HV_MAX_CPUS];
extern uint8_t rt_kstacks[HV_MAX_CPUS][HV_STACK_SIZE];
extern uint8_t rt_iststacks[HV_MAX_CPUS][HV_STACK_SIZE];
extern uint8_t rt_ustacks[HV_MAX_CPUS][HV_STACK_SIZE]; /* user-accessible (u_task.c) */

/* entry.S */
extern uint32_t rt_start_info_pa;
extern uint64_t rt_pml4[512];
extern uint64_t rt_pd[4 * 512];  /* 2 MiB entries for 0-4 GiB (PD0's first 4 point to rt_pt) */
extern uint64_t rt_pt[4 * 512];  /* 4 KiB entries for 0-8 MiB */
extern const uint64_t rt_boot_gdt[];
extern const char rt_trampoline_start[], rt_trampoline_end[];

/* isr.S */
extern const char rt_isr_stubs[];  /* 256 stubs, 16 bytes apart */
int rt_user_enter(uint64_t fn, uint64_t arg, uint64_t user_rsp, uint64_t *ksave, uint64_t *rsp0);
HV_NORETURN void rt_user_return(uint64_t ksave, int code);

/* linker script */
extern const char __image_start[], __image_end[], __user_start[], __user_end[];

/* k_cpu.c */
void rt_idt_init(void);
void rt_cpu_init(unsigned cpu);
void rt_paging_init(void);

/* k_lapic.c */
void rt_lapic_init(void);
void rt_clock_init(void);
extern volatile uint32_t rt_online_count;

/* k_trap.c */
void rt_isr_dispatch(struct hv_regs *r);

/* u_printf.c: console lock that lets the same vCPU re-enter (a fault while printing). */
void rt_console_lock(void);
void rt_console_unlock(void);
void rt_console_write(const char *s, size_t n); /* caller holds the lock */
extern bool rt_log_serial;

/* u_task.c */
HV_NORETURN void rt_task_entry(int (*fn)(void *), void *arg);

HV_NORETURN static inline void rt_halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt" ::: "memory");
}

#endif /* RT_H */
