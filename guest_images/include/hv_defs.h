/*
 * hv_defs.h - constants shared by the guest runtime's C and assembly code.
 *
 * Safe to include from .S files (no C declarations here).
 */
#ifndef HV_DEFS_H
#define HV_DEFS_H

/* vCPUs: the index of a vCPU is its initial LAPIC ID; IDs >= HV_MAX_CPUS are parked. */
#define HV_MAX_CPUS        64

/* Every stack (kernel, user, IST) is an HV_STACK_SIZE block aligned to its size. The lowest
 * bytes of the block hold a struct hv_stackinfo (vCPU index), found by masking RSP: this is how
 * ring-3 code, which cannot read the LAPIC, knows its vCPU index. */
#define HV_STACK_SHIFT     14
#define HV_STACK_SIZE      (1 << HV_STACK_SHIFT)
#define HV_STACK_MAGIC     0x4b415453 /* "STAK" */

/* Memory layout (identity mapped, virtual == physical). */
#define HV_LOAD_ADDR       0x100000   /* images are linked here */
#define HV_4K_MAPPED_END   0x800000   /* first 8 MiB use 4 KiB pages (user/kernel split) */
#define HV_TRAMPOLINE_ADDR 0x8000     /* AP start-up code (SIPI vector 0x08) */
#define HV_LAPIC_BASE      0xfee00000
#define HV_IOAPIC_BASE     0xfec00000
#define HV_NULL_MMIO_ADDR  0xd0000000 /* benchmark null MMIO page (user-accessible, uncached) */

/* GDT layout: the same selectors as Linux x86-64, so kvm_pvm's ring switches see familiar values. */
#define HV_SEL_KERNEL32_CS 0x08
#define HV_SEL_KERNEL_CS   0x10
#define HV_SEL_KERNEL_DS   0x18
#define HV_SEL_USER32_CS   0x23
#define HV_SEL_USER_DS     0x2b
#define HV_SEL_USER_CS     0x33
#define HV_SEL_TSS         0x40
#define HV_GDT_ENTRIES     10         /* null .. user CS, spare, TSS (2 slots) */

/* Ports. */
#define HV_COM1            0x3f8      /* 16550A UART, ports 0x3f8-0x3ff */
#define HV_UCALL_PORT      0xe8       /* 32-bit out of the GPA of a struct hv_ucall */
#define HV_QEMU_EXIT_PORT  0xf4       /* isa-debug-exit (QEMU only) */
#define HV_NULL_PIO_PORT   0x5a0      /* benchmark null port */

/* Values written to HV_QEMU_EXIT_PORT (QEMU exits with status (value << 1) | 1). hv_done(code)
 * writes code & 0xff; these mark the failure outcomes that are not a DONE. */
#define HV_QEMU_EXIT_ASSERT 0x10
#define HV_QEMU_EXIT_FAULT  0x11

/* Ring 3 -> kernel calls: `int3` with RAX = (HV_SYS_MAGIC << 32) | call number, RDI = argument,
 * result in RAX. int3 is the one software entry that reaches ring 0 on both VT-x/AMD-V and
 * kvm_pvm (syscall and int 0x80 do not on kvm_pvm). An int3 without the magic is a #BP fault. */
#define HV_SYS_MAGIC       0x48564b4d /* "MKVH" */
#define HV_SYS_EXIT        1          /* end the ring-3 task, RDI = exit code (no return) */
#define HV_SYS_YIELD       2          /* round trip to the kernel, returns 0 */
#define HV_SYS_HALT        3          /* stop this vCPU for good (after hv_done/assert) */

/* Interrupt vectors the runtime uses. */
#define HV_VEC_SPURIOUS    0xff
#define HV_VEC_FIRST_IRQ   0x20

#endif /* HV_DEFS_H */
