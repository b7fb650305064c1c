"""The system fd: ``/dev/kvm``. Capabilities, supported CPUID, and VM creation."""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from . import abi
from ._ioctl import ioctl
from ._fd import FdOwner
from .errors import KvmUnavailable

DEFAULT_PATH = "/dev/kvm"


def kvm_device_path() -> str:
    """The KVM device to open: ``$HVKVM_KVM_DEVICE`` or ``/dev/kvm``."""
    return os.environ.get("HVKVM_KVM_DEVICE", DEFAULT_PATH)


class Kvm(FdOwner):
    """An open ``/dev/kvm``; owns the fd (idempotent :meth:`close`, ``with`` support)."""

    def __init__(self, path: str | None = None):
        path = path or kvm_device_path()
        self.path = path
        self.fd = -1
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmUnavailable.from_open_error(path, e) from None
        try:
            version = self.get_api_version()
            if version != abi.KVM_API_VERSION:
                raise KvmUnavailable("KVM_GET_API_VERSION", _errno.EPROTO)
        except BaseException:
            self.close()
            raise

    def get_api_version(self) -> int:
        """KVM_GET_API_VERSION: 12 on every kernel since 2.6.22."""
        return ioctl(self.fd, "KVM_GET_API_VERSION", abi.KVM_GET_API_VERSION, 0)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the system fd: 0 when ``cap`` is absent, else its value."""
        return ioctl(self.fd, "KVM_CHECK_EXTENSION", abi.KVM_CHECK_EXTENSION, cap)

    def get_vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes to mmap from a vCPU fd (kvm_run and what follows)."""
        return ioctl(self.fd, "KVM_GET_VCPU_MMAP_SIZE", abi.KVM_GET_VCPU_MMAP_SIZE, 0)

    def get_supported_cpuid(self, max_entries: int = 256) -> "abi.kvm_cpuid2":
        """KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can give a guest."""
        cpuid = abi.make_kvm_cpuid2(max_entries)
        ioctl(self.fd, "KVM_GET_SUPPORTED_CPUID", abi.KVM_GET_SUPPORTED_CPUID, ctypes.byref(cpuid))
        return cpuid

    def get_msr_index_list(self, max_entries: int = 1024) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: MSRs that KVM saves and restores for a vCPU."""
        lst = abi.make_kvm_msr_list(max_entries)
        ioctl(self.fd, "KVM_GET_MSR_INDEX_LIST", abi.KVM_GET_MSR_INDEX_LIST, ctypes.byref(lst))
        return [lst.indices[i] for i in range(lst.nmsrs)]

    def create_vm(self, machine_type: int = 0):
        """KVM_CREATE_VM: a new, empty VM (a child partition's hypervisor half)."""
        from .vm import Vm
        fd = ioctl(self.fd, "KVM_CREATE_VM", abi.KVM_CREATE_VM, machine_type)
        return Vm(fd, self)
