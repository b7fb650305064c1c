/*
 * fault - triple-faults on purpose: loads a zero-limit IDT and executes ud2. The #UD cannot be
 * delivered (#GP), nor can that (#DF), so the CPU shuts down: KVM reports KVM_EXIT_SHUTDOWN,
 * QEMU with -no-reboot exits.
 */
#include "hv.h"

int hv_main(void)
{
	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} idtr = { 0, 0 };

	hv_printf("fault: loading a zero-limit IDT, then ud2: expect a triple fault (shutdown)\n");
	hv_log("fault: triple-faulting on purpose");
	__asm__ volatile("lidt %0\n\tud2" ::"m"(idtr) : "memory");
	hv_printf("fault: still running after ud2 with no IDT\n");
	return 1;
}
