"""The vCPU fd: KVM_RUN and the shared ``kvm_run`` page, registers, CPUID, MSRs, LAPIC, debug."""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap

from . import abi
from ._fd import FdOwner, close_mmap
from ._ioctl import ioctl
from .errors import KvmError


class Vcpu(FdOwner):
    """A vCPU fd and its ``kvm_run`` mapping; owns both (idempotent :meth:`close`)."""

    def __init__(self, fd: int, index: int):
        self.fd = fd
        self.index = index
        self._mm: mmap.mmap | None = None
        self.run_struct: abi.kvm_run | None = None

    def map_run(self, size: int) -> None:
        """Map the vCPU's ``kvm_run`` area (``size`` from KVM_GET_VCPU_MMAP_SIZE)."""
        self._mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_struct = abi.kvm_run.from_buffer(self._mm)
        self.mmap_size = size

    def _release(self) -> None:
        """Unmap kvm_run before the fd closes."""
        self.run_struct = None
        close_mmap(self._mm)
        self._mm = None

    def run_address(self) -> int:
        """Host address of the kvm_run page (for C code that reads exits)."""
        return ctypes.addressof(self.run_struct)

    def run(self) -> int:
        """KVM_RUN until the next exit; returns ``kvm_run.exit_reason``.

        A signal or ``immediate_exit`` makes KVM return EINTR: that is reported as
        ``KVM_EXIT_INTR`` rather than raised, because it is how a vCPU thread is asked to stop.
        """
        try:
            ioctl(self.fd, "KVM_RUN", abi.KVM_RUN, 0)
        except KvmError as e:
            if e.errno in (_errno.EINTR, _errno.EAGAIN):
                return abi.KVM_EXIT_INTR
            raise
        return self.run_struct.exit_reason

    def _get(self, name: str, req: int, struct_type):
        obj = struct_type()
        ioctl(self.fd, name, req, ctypes.byref(obj))
        return obj

    def _set(self, name: str, req: int, obj) -> None:
        ioctl(self.fd, name, req, ctypes.byref(obj))

    def get_regs(self) -> "abi.kvm_regs":
        """KVM_GET_REGS."""
        return self._get("KVM_GET_REGS", abi.KVM_GET_REGS, abi.kvm_regs)

    def set_regs(self, regs: "abi.kvm_regs") -> None:
        """KVM_SET_REGS."""
        self._set("KVM_SET_REGS", abi.KVM_SET_REGS, regs)

    def get_sregs(self) -> "abi.kvm_sregs":
        """KVM_GET_SREGS."""
        return self._get("KVM_GET_SREGS", abi.KVM_GET_SREGS, abi.kvm_sregs)

    def set_sregs(self, sregs: "abi.kvm_sregs") -> None:
        """KVM_SET_SREGS."""
        self._set("KVM_SET_SREGS", abi.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> "abi.kvm_fpu":
        """KVM_GET_FPU."""
        return self._get("KVM_GET_FPU", abi.KVM_GET_FPU, abi.kvm_fpu)

    def set_fpu(self, fpu: "abi.kvm_fpu") -> None:
        """KVM_SET_FPU."""
        self._set("KVM_SET_FPU", abi.KVM_SET_FPU, fpu)

    def set_cpuid2(self, cpuid: "abi.kvm_cpuid2") -> None:
        """KVM_SET_CPUID2: the CPUID leaves this vCPU reports."""
        self._set("KVM_SET_CPUID2", abi.KVM_SET_CPUID2, cpuid)

    def get_cpuid2(self, max_entries: int = 256) -> "abi.kvm_cpuid2":
        """KVM_GET_CPUID2."""
        cpuid = abi.make_kvm_cpuid2(max_entries)
        ioctl(self.fd, "KVM_GET_CPUID2", abi.KVM_GET_CPUID2, ctypes.byref(cpuid))
        return cpuid

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS for ``indices``; returns index -> value for those KVM could read."""
        msrs = abi.make_kvm_msrs(len(indices))
        for i, idx in enumerate(indices):
            msrs.entries[i].index = idx
        n = ioctl(self.fd, "KVM_GET_MSRS", abi.KVM_GET_MSRS, ctypes.byref(msrs))
        return {msrs.entries[i].index: msrs.entries[i].data for i in range(n)}

    def set_msrs(self, values) -> int:
        """KVM_SET_MSRS; returns how many were set (KVM stops at the first it refuses).

        ``values`` is a dict index -> value, or a ``struct kvm_msrs`` already filled in
        (:func:`abi.make_kvm_msrs`) for callers that set the same list again and again.
        """
        if isinstance(values, dict):
            msrs = abi.make_kvm_msrs(len(values))
            for i, (idx, val) in enumerate(values.items()):
                msrs.entries[i].index = idx
                msrs.entries[i].data = val
        else:
            msrs = values
        return ioctl(self.fd, "KVM_SET_MSRS", abi.KVM_SET_MSRS, ctypes.byref(msrs))

    def get_xsave(self) -> "abi.kvm_xsave":
        """KVM_GET_XSAVE: the first 4096 bytes of the XSAVE area (legacy, header, AVX)."""
        return self._get("KVM_GET_XSAVE", abi.KVM_GET_XSAVE, abi.kvm_xsave)

    def get_xsave2(self, size: int) -> "abi.kvm_xsave":
        """KVM_GET_XSAVE2: the whole XSAVE area, ``size`` bytes (KVM_CAP_XSAVE2 on the VM fd)."""
        xs = abi.make_kvm_xsave(size)
        ioctl(self.fd, "KVM_GET_XSAVE2", abi.KVM_GET_XSAVE2, ctypes.byref(xs))
        return xs

    def set_xsave(self, xsave) -> None:
        """KVM_SET_XSAVE (takes a 4096-byte or a larger KVM_GET_XSAVE2 buffer)."""
        self._set("KVM_SET_XSAVE", abi.KVM_SET_XSAVE, xsave)

    def get_xcrs(self) -> "abi.kvm_xcrs":
        """KVM_GET_XCRS: the extended control registers (XCR0)."""
        return self._get("KVM_GET_XCRS", abi.KVM_GET_XCRS, abi.kvm_xcrs)

    def set_xcrs(self, xcrs: "abi.kvm_xcrs") -> None:
        """KVM_SET_XCRS."""
        self._set("KVM_SET_XCRS", abi.KVM_SET_XCRS, xcrs)

    def get_debugregs(self) -> "abi.kvm_debugregs":
        """KVM_GET_DEBUGREGS: the guest's DR0-DR3, DR6, DR7."""
        return self._get("KVM_GET_DEBUGREGS", abi.KVM_GET_DEBUGREGS, abi.kvm_debugregs)

    def set_debugregs(self, debugregs: "abi.kvm_debugregs") -> None:
        """KVM_SET_DEBUGREGS."""
        self._set("KVM_SET_DEBUGREGS", abi.KVM_SET_DEBUGREGS, debugregs)

    def get_lapic(self) -> "abi.kvm_lapic_state":
        """KVM_GET_LAPIC: the in-kernel LAPIC's register page."""
        return self._get("KVM_GET_LAPIC", abi.KVM_GET_LAPIC, abi.kvm_lapic_state)

    def set_lapic(self, lapic: "abi.kvm_lapic_state") -> None:
        """KVM_SET_LAPIC."""
        self._set("KVM_SET_LAPIC", abi.KVM_SET_LAPIC, lapic)

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: runnable, halted, waiting for SIPI, ..."""
        return self._get("KVM_GET_MP_STATE", abi.KVM_GET_MP_STATE, abi.kvm_mp_state).mp_state

    def set_mp_state(self, state: int) -> None:
        """KVM_SET_MP_STATE."""
        self._set("KVM_SET_MP_STATE", abi.KVM_SET_MP_STATE, abi.kvm_mp_state(mp_state=state))

    def get_vcpu_events(self) -> "abi.kvm_vcpu_events":
        """KVM_GET_VCPU_EVENTS: pending exceptions, interrupts, NMIs."""
        return self._get("KVM_GET_VCPU_EVENTS", abi.KVM_GET_VCPU_EVENTS, abi.kvm_vcpu_events)

    def set_vcpu_events(self, events: "abi.kvm_vcpu_events") -> None:
        """KVM_SET_VCPU_EVENTS."""
        self._set("KVM_SET_VCPU_EVENTS", abi.KVM_SET_VCPU_EVENTS, events)

    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None:
        """KVM_SET_GUEST_DEBUG: single step, software and hardware breakpoints."""
        dbg = abi.kvm_guest_debug(control=control)
        for i, v in enumerate(debugreg or []):
            dbg.arch.debugreg[i] = v
        self._set("KVM_SET_GUEST_DEBUG", abi.KVM_SET_GUEST_DEBUG, dbg)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the vCPU fd."""
        req = abi.kvm_enable_cap(cap=cap, flags=flags)
        for i, a in enumerate(args):
            req.args[i] = a
        self._set("KVM_ENABLE_CAP", abi.KVM_ENABLE_CAP, req)

    def translate(self, linear_address: int) -> "abi.kvm_translation":
        """KVM_TRANSLATE: walk the guest's page tables for a linear address."""
        tr = abi.kvm_translation(linear_address=linear_address)
        self._set("KVM_TRANSLATE", abi.KVM_TRANSLATE, tr)
        return tr

    def get_stats_fd(self) -> int:
        """KVM_GET_STATS_FD: the vCPU's binary statistics fd (caller owns it)."""
        return ioctl(self.fd, "KVM_GET_STATS_FD", abi.KVM_GET_STATS_FD, 0)

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ: the guest TSC frequency in kHz."""
        return ioctl(self.fd, "KVM_GET_TSC_KHZ", abi.KVM_GET_TSC_KHZ, 0)
