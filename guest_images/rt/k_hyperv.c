/*
 * k_hyperv.c - Hyper-V detection, the guest OS id, the hypercall page and hypercalls.
 * Kernel-only (ring 0). See include/vmbus.h and PROTOCOL.md ("Hyper-V synthetic interface").
 */
#include "vmbus.h"

struct hv_hyperv_info hv_hyperv;
uint64_t vmbus_last_hv_status;

/* The parent writes its stub into this page when HV_X64_MSR_HYPERCALL names it (no NX in the
 * runtime's page tables, so .bss is executable). */
static uint8_t hypercall_page[HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));
/* HvPostMessage input: 8-byte aligned and never straddling a page (the parent checks both). */
static struct hv_input_post_message post_input __attribute__((aligned(HVR_PAGE_SIZE)));
static hv_spinlock_t post_lock;

bool hv_hyperv_detect(void)
{
	uint32_t a, b, c, d;

	hv_cpuid(HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS, 0, &a, &b, &c, &d);
	/* "Microsoft Hv" in EBX, ECX, EDX */
	if (b != 0x7263694d || c != 0x666f736f || d != 0x76482074)
		return hv_hyperv.present = false;
	hv_hyperv.max_leaf = a;
	if (a < HYPERV_CPUID_IMPLEMENT_LIMITS)
		return hv_hyperv.present = false;
	hv_cpuid(HYPERV_CPUID_INTERFACE, 0, &a, NULL, NULL, NULL);
	if (a != HYPERV_CPUID_SIGNATURE_EAX)
		return hv_hyperv.present = false;
	hv_cpuid(HYPERV_CPUID_FEATURES, 0, &hv_hyperv.features_a, &hv_hyperv.features_b, NULL,
		 &hv_hyperv.features_d);
	hv_cpuid(HYPERV_CPUID_ENLIGHTMENT_INFO, 0, &hv_hyperv.hints, NULL, NULL, NULL);
	return hv_hyperv.present = true;
}

int hv_hyperv_init(void)
{
	uint64_t v;

	if (hv_hyperv.hypercall_ready)
		return 0;
	if (!hv_hyperv_detect())
		return VMBUS_ENODEV;
	if (!(hv_hyperv.features_a & HV_MSR_HYPERCALL_AVAILABLE))
		return VMBUS_ENODEV;
	hv_hyperv.guest_os_id = HV_GUEST_OS_ID_HVKVM;
	hv_wrmsr(HV_X64_MSR_GUEST_OS_ID, hv_hyperv.guest_os_id);
	if (hv_hyperv.features_a & HV_MSR_VP_INDEX_AVAILABLE)
		hv_hyperv.vp_index = (uint32_t)hv_rdmsr(HV_X64_MSR_VP_INDEX);
	if (hv_hyperv.features_a & HV_ACCESS_FREQUENCY_MSRS)
		hv_hyperv.tsc_hz = hv_rdmsr(HV_X64_MSR_TSC_FREQUENCY);

	/* Like Linux's hyperv_init(): keep the reserved bits, set the page and enable, read back. */
	v = hv_rdmsr(HV_X64_MSR_HYPERCALL);
	v = (v & ~HV_X64_MSR_HYPERCALL_PAGE_ADDRESS_MASK) | (uintptr_t)hypercall_page |
	    HV_X64_MSR_HYPERCALL_ENABLE;
	hv_wrmsr(HV_X64_MSR_HYPERCALL, v);
	v = hv_rdmsr(HV_X64_MSR_HYPERCALL);
	if (!(v & HV_X64_MSR_HYPERCALL_ENABLE) ||
	    (v & HV_X64_MSR_HYPERCALL_PAGE_ADDRESS_MASK) != (uintptr_t)hypercall_page)
		return VMBUS_ENODEV;
	hv_hyperv.hypercall_ready = true;
	return 0;
}

uint64_t hv_hypercall(uint64_t control, uint64_t input_gpa, uint64_t output_gpa)
{
	uint64_t status;
	register uint64_t r8 __asm__("r8") = output_gpa;

	if (!hv_hyperv.hypercall_ready)
		return HV_STATUS_INVALID_HYPERCALL_CODE;
	__asm__ volatile("call *%[page]"
			 : "=a"(status), "+c"(control), "+d"(input_gpa), "+r"(r8)
			 : [page] "r"(hypercall_page)
			 : "r9", "r10", "r11", "cc", "memory");
	return status;
}

uint64_t hv_hypercall_fast8(uint64_t control, uint64_t input)
{
	return hv_hypercall(control | HV_HYPERCALL_FAST_BIT, input, 0);
}

uint64_t hv_post_message(uint32_t connection_id, uint32_t message_type, const void *payload,
			 uint32_t size)
{
	uint64_t status = HV_STATUS_INVALID_PARAMETER;

	if (size > HV_MESSAGE_PAYLOAD_BYTE_COUNT)
		return status;
	for (int tries = 0; tries < 100; tries++) {
		hv_spin_lock(&post_lock);
		post_input.connectionid.asu32 = connection_id;
		post_input.reserved = 0;
		post_input.message_type = message_type;
		post_input.payload_size = size;
		memcpy(post_input.payload, payload, size);
		status = hv_hypercall(HVCALL_POST_MESSAGE, (uintptr_t)&post_input, 0) &
			 HV_HYPERCALL_RESULT_MASK;
		hv_spin_unlock(&post_lock);
		if (status != HV_STATUS_INSUFFICIENT_MEMORY &&
		    status != HV_STATUS_INSUFFICIENT_BUFFERS && status != HV_STATUS_NO_RESOURCES)
			break;
		hv_udelay(100);
	}
	if (status != HV_STATUS_SUCCESS)
		vmbus_last_hv_status = status;
	return status;
}
