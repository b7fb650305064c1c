/*
 * entry.S - PVH entry, boot GDT, static identity page tables, long-mode switch, 64-bit entry
 * for the BSP and the APs.
 *
 * The host enters rt_pvh_entry in 32-bit protected mode, paging off, flat segments,
 * EBX = GPA of struct hvm_start_info (PROTOCOL.md). No stack is assumed until long mode.
 */
#include "hv_defs.h"

#define CR0_PE   0x00000001
#define CR0_WP   0x00010000
#define CR0_NW   0x20000000
#define CR0_CD   0x40000000
#define CR0_PG   0x80000000
#define CR4_PAE  0x00000020
#define MSR_EFER 0xc0000080
#define EFER_LME 0x00000100
#define MSR_APIC_BASE 0x1b
#define APIC_BASE_ENABLE 0x800

/* Page-table entry bits. */
#define PTE_P    0x001
#define PTE_RW   0x002
#define PTE_US   0x004
#define PTE_PWT  0x008
#define PTE_PCD  0x010
#define PTE_PS   0x080

/* ---------------------------------------------------------------------------------------- */
/* PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY = 18, name "Xen"); the descriptor is 8 bytes like
 * Linux's (QEMU reads a 64-bit value). The section is 4-aligned: QEMU aligns the name by the
 * note segment's p_align. */
	.section .note.Xen, "a", @note
	.p2align 2
	.long 2f - 1f
	.long 4f - 3f
	.long 18
1:	.asciz "Xen"
2:	.p2align 2
3:	.quad rt_pvh_entry
4:	.p2align 2

/* ---------------------------------------------------------------------------------------- */
.macro ENTER_LONG_MODE target
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $rt_pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	andl $~(CR0_CD | CR0_NW), %eax
	orl $(CR0_PG | CR0_WP | CR0_PE), %eax
	movl %eax, %cr0
	ljmp $HV_SEL_KERNEL_CS, $\target
.endm

.macro LOAD_DATA_SEGMENTS
	movl $HV_SEL_KERNEL_DS, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
.endm

	.section .text.boot, "ax", @progbits
	.code32
	.globl rt_pvh_entry
	.type rt_pvh_entry, @function
rt_pvh_entry:
	cli
	cld
	movl %ebx, rt_start_info_pa
	lgdt rt_boot_gdtr
	ljmp $HV_SEL_KERNEL32_CS, $1f
1:	LOAD_DATA_SEGMENTS
	/* The LAPIC is globally enabled after reset; make sure (its ID picks our stack). */
	movl $MSR_APIC_BASE, %ecx
	rdmsr
	testl $APIC_BASE_ENABLE, %eax
	jnz 2f
	orl $APIC_BASE_ENABLE, %eax
	wrmsr
2:	ENTER_LONG_MODE rt_entry64_bsp

/* APs come here from the real-mode trampoline, in protected mode with the boot GDT loaded. */
	.globl rt_ap_entry32
	.type rt_ap_entry32, @function
rt_ap_entry32:
	LOAD_DATA_SEGMENTS
	ENTER_LONG_MODE rt_entry64_ap

	.code64
rt_entry64_bsp:
	movl $rt_bsp_main, %ebx
	jmp rt_entry64_common
rt_entry64_ap:
	movl $rt_ap_main, %ebx
rt_entry64_common:
	LOAD_DATA_SEGMENTS
	/* vCPU index = LAPIC ID; it picks this vCPU's kernel stack. */
	movl $(HV_LAPIC_BASE + 0x20), %ecx
	movl (%rcx), %edi
	shrl $24, %edi
	cmpl $HV_MAX_CPUS, %edi
	jae rt_park
	movl %edi, %eax
	shll $HV_STACK_SHIFT, %eax
	leaq rt_kstacks(%rax), %rsp
	movl %edi, (%rsp)                 /* struct hv_stackinfo at the bottom of the block */
	movl $HV_STACK_MAGIC, 4(%rsp)
	addq $HV_STACK_SIZE, %rsp
	xorl %ebp, %ebp
	call *%rbx                        /* rt_bsp_main(cpu) / rt_ap_main(cpu): no return */
	.globl rt_park
rt_park:
	cli
	hlt
	jmp rt_park

/* ---------------------------------------------------------------------------------------- */
/* AP start-up trampoline: copied to HV_TRAMPOLINE_ADDR, entered in real mode at CS:IP =
 * 0x0800:0000 by the SIPI. Loads the boot GDT, enters protected mode, jumps to rt_ap_entry32
 * (in the image, above 1 MiB). Position independent apart from that absolute jump. */
	.section .rodata.trampoline, "a", @progbits
	.code16
	.globl rt_trampoline_start, rt_trampoline_end
rt_trampoline_start:
	cli
	cld
	movw %cs, %ax
	movw %ax, %ds
	lgdtl (rt_tramp_gdtr - rt_trampoline_start)
	movl %cr0, %eax
	andl $~(CR0_CD | CR0_NW), %eax
	orl $CR0_PE, %eax
	movl %eax, %cr0
	ljmpl $HV_SEL_KERNEL32_CS, $rt_ap_entry32
	.p2align 3
rt_tramp_gdtr:
	.word rt_boot_gdt_end - rt_boot_gdt - 1
	.long rt_boot_gdt
rt_trampoline_end:
	.code64

/* ---------------------------------------------------------------------------------------- */
	.section .data.boot, "aw", @progbits
	.p2align 3
	.globl rt_boot_gdt
rt_boot_gdt:
	.quad 0                     /* 0x00 null */
	.quad 0x00cf9b000000ffff    /* 0x08 kernel 32-bit code */
	.quad 0x00af9b000000ffff    /* 0x10 kernel 64-bit code */
	.quad 0x00cf93000000ffff    /* 0x18 kernel data */
	.quad 0x00cffb000000ffff    /* 0x20 user 32-bit code (0x23) */
	.quad 0x00cff3000000ffff    /* 0x28 user data (0x2b) */
	.quad 0x00affb000000ffff    /* 0x30 user 64-bit code (0x33) */
	.quad 0                     /* 0x38 spare; 0x40: TSS in the per-vCPU GDTs */
rt_boot_gdt_end:
	.p2align 3
	.word 0
rt_boot_gdtr:
	.word rt_boot_gdt_end - rt_boot_gdt - 1
	.long rt_boot_gdt

	.globl rt_start_info_pa
	.p2align 2
rt_start_info_pa:
	.long 0

/* ---------------------------------------------------------------------------------------- */
/* Identity map of the low 4 GiB, built at assembly time: 4 KiB pages for the first 8 MiB
 * (page 0 not present, to catch NULL; rt_paging_init() sets U on the user region), 2 MiB pages
 * above. All supervisor-only except the null-MMIO page; LAPIC and IOAPIC uncached. The upper
 * levels carry U so that the leaf entries decide. */
#define PD_INDEX(a) ((a) >> 21)

	.section .data.pagetables, "aw", @progbits
	.p2align 12
	.globl rt_pml4, rt_pd, rt_pt
rt_pml4:
	.quad rt_pdpt + (PTE_P | PTE_RW | PTE_US)
	.fill 511, 8, 0
rt_pdpt:
	.quad rt_pd + 0x0000 + (PTE_P | PTE_RW | PTE_US)
	.quad rt_pd + 0x1000 + (PTE_P | PTE_RW | PTE_US)
	.quad rt_pd + 0x2000 + (PTE_P | PTE_RW | PTE_US)
	.quad rt_pd + 0x3000 + (PTE_P | PTE_RW | PTE_US)
	.fill 508, 8, 0
rt_pd:
	.quad rt_pt + 0x0000 + (PTE_P | PTE_RW | PTE_US)
	.quad rt_pt + 0x1000 + (PTE_P | PTE_RW | PTE_US)
	.quad rt_pt + 0x2000 + (PTE_P | PTE_RW | PTE_US)
	.quad rt_pt + 0x3000 + (PTE_P | PTE_RW | PTE_US)
	.set i, 4
	.rept 2048 - 4
	.if i == PD_INDEX(HV_NULL_MMIO_ADDR)
	.quad (i << 21) | (PTE_P | PTE_RW | PTE_US | PTE_PWT | PTE_PCD | PTE_PS)
	.elseif (i == PD_INDEX(HV_LAPIC_BASE)) || (i == PD_INDEX(HV_IOAPIC_BASE))
	.quad (i << 21) | (PTE_P | PTE_RW | PTE_PWT | PTE_PCD | PTE_PS)
	.else
	.quad (i << 21) | (PTE_P | PTE_RW | PTE_PS)
	.endif
	.set i, i + 1
	.endr
rt_pt:
	.quad 0
	.set i, 1
	.rept (HV_4K_MAPPED_END >> 12) - 1
	.quad (i << 12) | (PTE_P | PTE_RW)
	.set i, i + 1
	.endr

	.section .note.GNU-stack, "", @progbits
