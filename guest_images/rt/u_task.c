/*
 * u_task.c - the ring-3 side of tasks: the entry that calls the task function, the user stacks,
 * and the calls back into the kernel. User-accessible.
 */
#include "rt.h"

uint8_t rt_ustacks[HV_MAX_CPUS][HV_STACK_SIZE] __attribute__((aligned(HV_STACK_SIZE)));

/* Entered by iretq from rt_user_enter (RDI = fn, RSI = arg). */
HV_NORETURN void rt_task_entry(int (*fn)(void *), void *arg)
{
	hv_exit(fn(arg));
}

HV_NORETURN void hv_exit(int code)
{
	for (;;)
		hv_syscall(HV_SYS_EXIT, (uint64_t)(int64_t)code);
}

void hv_yield(void)
{
	hv_syscall(HV_SYS_YIELD, 0);
}
