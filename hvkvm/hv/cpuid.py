"""Hyper-V CPUID leaves 0x40000000-0x4000000A, replacing KVM's own signature leaves.

What the leaves advertise is exactly what :mod:`hvkvm.hv` implements: hypercalls, the VP index,
the SynIC (messages and event flags), HvPostMessage and HvSignalEvent, and the frequency MSRs.
"""

from __future__ import annotations

import ctypes
import struct

from ..kvm import abi
from ..vmbus.wire import (HV_ACCESS_FREQUENCY_MSRS, HV_DEPRECATING_AEOI_RECOMMENDED,
                          HV_FEATURE_FREQUENCY_MSRS_AVAILABLE, HV_MSR_HYPERCALL_AVAILABLE,
                          HV_MSR_SYNIC_AVAILABLE, HV_MSR_VP_INDEX_AVAILABLE, HV_POST_MESSAGES,
                          HV_SIGNAL_EVENTS, HYPERV_CPUID_ENLIGHTMENT_INFO, HYPERV_CPUID_FEATURES,
                          HYPERV_CPUID_IMPLEMENT_LIMITS, HYPERV_CPUID_INTERFACE,
                          HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS, HYPERV_CPUID_VERSION)

HV_CPUID_MAX = 0x4000000A          # the last leaf hvkvm fills (zeros past IMPLEMENT_LIMITS)
HV_SPINLOCK_NEVER_NOTIFY = 0xFFFFFFFF


def _sig(text: bytes) -> tuple[int, int, int]:
    return struct.unpack("<III", text)


def hyperv_leaves(max_vps: int) -> dict[int, tuple[int, int, int, int]]:
    """function -> (eax, ebx, ecx, edx) for the Hyper-V leaves."""
    ebx, ecx, edx = _sig(b"Microsoft Hv")
    leaves = {
        HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS: (HV_CPUID_MAX, ebx, ecx, edx),
        HYPERV_CPUID_INTERFACE: (struct.unpack("<I", b"Hv#1")[0], 0, 0, 0),
        # Build 19041, version 10.0 (what Windows 10 2004 reports; Linux only logs it).
        HYPERV_CPUID_VERSION: (19041, (10 << 16) | 0, 0, 0),
        HYPERV_CPUID_FEATURES: (HV_MSR_SYNIC_AVAILABLE | HV_MSR_HYPERCALL_AVAILABLE |
                                HV_MSR_VP_INDEX_AVAILABLE | HV_ACCESS_FREQUENCY_MSRS,
                                HV_POST_MESSAGES | HV_SIGNAL_EVENTS, 0,
                                HV_FEATURE_FREQUENCY_MSRS_AVAILABLE),
        HYPERV_CPUID_ENLIGHTMENT_INFO: (HV_DEPRECATING_AEOI_RECOMMENDED,
                                        HV_SPINLOCK_NEVER_NOTIFY, 0, 0),
        HYPERV_CPUID_IMPLEMENT_LIMITS: (max_vps, max_vps, 0, 0),
    }
    for fn in range(HYPERV_CPUID_IMPLEMENT_LIMITS + 1, HV_CPUID_MAX + 1):
        leaves[fn] = (0, 0, 0, 0)
    return leaves


def apply_hyperv_leaves(cpuid, max_vps: int):
    """A new kvm_cpuid2: ``cpuid`` without KVM's 0x4000xxxx leaves, plus the Hyper-V ones.

    KVM's own signature ("KVMKVMKVM") would otherwise sit at 0x40000000 where the guest looks for
    Hyper-V; a guest must see exactly one hypervisor.
    """
    keep = [cpuid.entries[i] for i in range(cpuid.nent)
            if not 0x40000000 <= cpuid.entries[i].function <= 0x400000FF]
    leaves = hyperv_leaves(max_vps)
    out = abi.make_kvm_cpuid2(len(keep) + len(leaves))
    for i, e in enumerate(keep):
        ctypes.memmove(ctypes.addressof(out.entries[i]), ctypes.addressof(e), ctypes.sizeof(e))
    for j, (fn, (a, b, c, d)) in enumerate(sorted(leaves.items())):
        e = out.entries[len(keep) + j]
        e.function, e.index, e.flags = fn, 0, 0
        e.eax, e.ebx, e.ecx, e.edx = a, b, c, d
    out.nent = len(keep) + len(leaves)
    return out
