"""The Hyper-V synthetic interface, emulated in the parent partition.

The host kernel has no KVM Hyper-V emulation (``KVM_CAP_HYPERV`` is 0 here, and CI runners may
lack it too), so everything a Hyper-V guest expects from the hypervisor is done in userspace:
CPUID leaves (:mod:`.cpuid`), synthetic MSRs trapped with ``KVM_CAP_X86_USER_SPACE_MSR``, a
port-I/O hypercall page, and the SynIC message and event-flag pages (:mod:`.synic`).
"""
