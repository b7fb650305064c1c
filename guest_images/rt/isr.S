/*
 * isr.S - the 256 interrupt/exception entry stubs, the common save/restore path, and the
 * ring-3 task enter/return pair.
 */
#include "hv_defs.h"

	.text
	.code64

/* Stub N sits at rt_isr_stubs + 16 * N: pushes a 0 error code when the CPU does not, pushes N,
 * jumps to the common path. */
	.p2align 4
	.globl rt_isr_stubs
rt_isr_stubs:
	.set vec, 0
	.rept 256
	.org rt_isr_stubs + vec * 16
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq $0
	.endif
	pushq $vec
	jmp rt_isr_common
	.set vec, vec + 1
	.endr
	.org rt_isr_stubs + 256 * 16

/* Builds struct hv_regs (see hv.h) and calls rt_isr_dispatch(regs). The CPU aligned RSP to 16
 * before pushing its 5-word frame; 2 + 15 more words keep the call 16-byte aligned. */
	.type rt_isr_common, @function
rt_isr_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	cld
	movq %rsp, %rdi
	call rt_isr_dispatch
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq

/*
 * int rt_user_enter(uint64_t fn, uint64_t arg, uint64_t user_rsp, uint64_t *ksave,
 *                   uint64_t *rsp0)
 * Saves the callee-saved registers, records the kernel RSP in *ksave and in the TSS (*rsp0),
 * and irets to rt_task_entry(fn, arg) in ring 3 (IF=1, IOPL=0). Returns, through
 * rt_user_return, the task's exit code.
 */
	.globl rt_user_enter
	.type rt_user_enter, @function
rt_user_enter:
	pushq %rbp
	movq %rsp, %rbp
	pushq %rbx
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, (%rcx)
	movq %rsp, (%r8)
	pushq $HV_SEL_USER_DS       /* SS */
	pushq %rdx                  /* RSP */
	pushq $0x202                /* RFLAGS: IF */
	pushq $HV_SEL_USER_CS       /* CS */
	pushq $rt_task_entry        /* RIP */
	xorl %eax, %eax
	xorl %ebx, %ebx
	xorl %ecx, %ecx
	xorl %edx, %edx
	xorl %ebp, %ebp
	xorl %r8d, %r8d
	xorl %r9d, %r9d
	xorl %r10d, %r10d
	xorl %r11d, %r11d
	xorl %r12d, %r12d
	xorl %r13d, %r13d
	xorl %r14d, %r14d
	xorl %r15d, %r15d
	iretq

/* void rt_user_return(uint64_t ksave, int code): back to rt_user_enter's caller. */
	.globl rt_user_return
	.type rt_user_return, @function
rt_user_return:
	movq %rdi, %rsp
	movl %esi, %eax
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbx
	popq %rbp
	ret

	.section .note.GNU-stack, "", @progbits
