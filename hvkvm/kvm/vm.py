"""The VM fd: memory slots, the in-kernel irqchip, irqfd/ioeventfd, MSIs, and vCPU creation."""

from __future__ import annotations

import ctypes

from . import abi
from ._fd import FdOwner
from ._ioctl import ioctl


class Vm(FdOwner):
    """A KVM VM fd; owns it (idempotent :meth:`close`, ``with`` support). Close its vCPUs and
    memory slots first."""

    def __init__(self, fd: int, kvm):
        self.fd = fd
        self.kvm = kvm

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (per-VM answers, e.g. KVM_CAP_NR_MEMSLOTS)."""
        return ioctl(self.fd, "KVM_CHECK_EXTENSION", abi.KVM_CHECK_EXTENSION, cap)

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION: map host memory at a guest-physical range (size 0 deletes)."""
        region = abi.kvm_userspace_memory_region(slot=slot, flags=flags,
                                                 guest_phys_addr=guest_phys_addr,
                                                 memory_size=memory_size,
                                                 userspace_addr=userspace_addr)
        ioctl(self.fd, "KVM_SET_USER_MEMORY_REGION", abi.KVM_SET_USER_MEMORY_REGION,
              ctypes.byref(region))

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR: three pages of guest-physical space VT-x needs for real mode."""
        ioctl(self.fd, "KVM_SET_TSS_ADDR", abi.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: one page for VT-x's EPT identity map."""
        value = ctypes.c_uint64(addr)
        ioctl(self.fd, "KVM_SET_IDENTITY_MAP_ADDR", abi.KVM_SET_IDENTITY_MAP_ADDR,
              ctypes.byref(value))

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and per-vCPU LAPICs."""
        ioctl(self.fd, "KVM_CREATE_IRQCHIP", abi.KVM_CREATE_IRQCHIP, 0)

    def create_pit2(self, flags: int = 0) -> None:
        """KVM_CREATE_PIT2: in-kernel i8254 PIT."""
        cfg = abi.kvm_pit_config(flags=flags)
        ioctl(self.fd, "KVM_CREATE_PIT2", abi.KVM_CREATE_PIT2, ctypes.byref(cfg))

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: drive a GSI of the in-kernel irqchip high (1) or low (0)."""
        lvl = abi.kvm_irq_level(irq=irq, level=level)
        ioctl(self.fd, "KVM_IRQ_LINE", abi.KVM_IRQ_LINE, ctypes.byref(lvl))

    def set_gsi_routing(self, routing: "abi.kvm_irq_routing") -> None:
        """KVM_SET_GSI_ROUTING: replace the whole GSI routing table."""
        ioctl(self.fd, "KVM_SET_GSI_ROUTING", abi.KVM_SET_GSI_ROUTING, ctypes.byref(routing))

    def irqfd(self, fd: int, gsi: int, flags: int = 0, resamplefd: int = 0) -> None:
        """KVM_IRQFD: an eventfd whose write raises ``gsi`` without a userspace exit."""
        req = abi.kvm_irqfd(fd=fd, gsi=gsi, flags=flags, resamplefd=resamplefd)
        ioctl(self.fd, "KVM_IRQFD", abi.KVM_IRQFD, ctypes.byref(req))

    def ioeventfd(self, fd: int, addr: int, length: int, datamatch: int = 0, flags: int = 0) -> None:
        """KVM_IOEVENTFD: a guest write to ``addr`` signals ``fd`` in the kernel (no exit)."""
        req = abi.kvm_ioeventfd(datamatch=datamatch, addr=addr, len=length, fd=fd, flags=flags)
        ioctl(self.fd, "KVM_IOEVENTFD", abi.KVM_IOEVENTFD, ctypes.byref(req))

    def signal_msi(self, address: int, data: int, flags: int = 0, devid: int = 0) -> int:
        """KVM_SIGNAL_MSI: inject an MSI; returns >0 delivered, 0 blocked by the guest."""
        msi = abi.kvm_msi(address_lo=address & 0xFFFFFFFF, address_hi=address >> 32,
                          data=data, flags=flags, devid=devid)
        return ioctl(self.fd, "KVM_SIGNAL_MSI", abi.KVM_SIGNAL_MSI, ctypes.byref(msi))

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM fd."""
        req = abi.kvm_enable_cap(cap=cap, flags=flags)
        for i, a in enumerate(args):
            req.args[i] = a
        ioctl(self.fd, "KVM_ENABLE_CAP", abi.KVM_ENABLE_CAP, ctypes.byref(req))

    def get_dirty_log(self, slot: int, npages: int) -> bytearray:
        """KVM_GET_DIRTY_LOG: the slot's dirty bitmap (one bit a page), cleared as it is read."""
        nbytes = ((npages + 63) // 64) * 8
        bitmap = (ctypes.c_uint8 * nbytes)()
        log = abi.kvm_dirty_log(slot=slot)
        log.dirty_bitmap = ctypes.cast(bitmap, ctypes.c_void_p).value
        ioctl(self.fd, "KVM_GET_DIRTY_LOG", abi.KVM_GET_DIRTY_LOG, ctypes.byref(log))
        return bytearray(bitmap)

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap) -> None:
        """KVM_CLEAR_DIRTY_LOG: re-protect the pages set in ``bitmap`` (bit 0 = ``first_page``).

        Needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled; ``first_page`` is a multiple of 64 and
        ``num_pages`` one too unless the range ends the slot. ``bitmap`` is any writable buffer
        (a bytearray or a ctypes array) of at least ``ceil(num_pages / 8)`` bytes.
        """
        if isinstance(bitmap, ctypes.Array):
            addr = ctypes.addressof(bitmap)
            keep = bitmap
        else:
            keep = (ctypes.c_uint8 * len(bitmap)).from_buffer(bitmap)
            addr = ctypes.addressof(keep)
        req = abi.kvm_clear_dirty_log(slot=slot, num_pages=num_pages, first_page=first_page)
        req.dirty_bitmap = addr
        ioctl(self.fd, "KVM_CLEAR_DIRTY_LOG", abi.KVM_CLEAR_DIRTY_LOG, ctypes.byref(req))
        del keep

    def get_irqchip(self, chip_id: int) -> "abi.kvm_irqchip":
        """KVM_GET_IRQCHIP: the state of the in-kernel PIC master/slave or IOAPIC."""
        chip = abi.kvm_irqchip(chip_id=chip_id)
        ioctl(self.fd, "KVM_GET_IRQCHIP", abi.KVM_GET_IRQCHIP, ctypes.byref(chip))
        return chip

    def set_irqchip(self, chip: "abi.kvm_irqchip") -> None:
        """KVM_SET_IRQCHIP (``chip.chip_id`` says which controller)."""
        ioctl(self.fd, "KVM_SET_IRQCHIP", abi.KVM_SET_IRQCHIP, ctypes.byref(chip))

    def get_pit2(self) -> "abi.kvm_pit_state2":
        """KVM_GET_PIT2: the in-kernel i8254's channels and flags."""
        pit = abi.kvm_pit_state2()
        ioctl(self.fd, "KVM_GET_PIT2", abi.KVM_GET_PIT2, ctypes.byref(pit))
        return pit

    def set_pit2(self, pit: "abi.kvm_pit_state2") -> None:
        """KVM_SET_PIT2."""
        ioctl(self.fd, "KVM_SET_PIT2", abi.KVM_SET_PIT2, ctypes.byref(pit))

    def register_coalesced_mmio(self, addr: int, size: int, pio: bool = False) -> None:
        """KVM_REGISTER_COALESCED_MMIO: writes to the zone are queued in the ring, no exit."""
        zone = abi.kvm_coalesced_mmio_zone(addr=addr, size=size)
        zone.pio = 1 if pio else 0
        ioctl(self.fd, "KVM_REGISTER_COALESCED_MMIO", abi.KVM_REGISTER_COALESCED_MMIO,
              ctypes.byref(zone))

    def get_clock(self) -> "abi.kvm_clock_data":
        """KVM_GET_CLOCK: the VM's kvmclock."""
        data = abi.kvm_clock_data()
        ioctl(self.fd, "KVM_GET_CLOCK", abi.KVM_GET_CLOCK, ctypes.byref(data))
        return data

    def set_clock(self, data: "abi.kvm_clock_data") -> None:
        """KVM_SET_CLOCK."""
        ioctl(self.fd, "KVM_SET_CLOCK", abi.KVM_SET_CLOCK, ctypes.byref(data))

    def get_stats_fd(self) -> int:
        """KVM_GET_STATS_FD: the VM's binary statistics fd (caller owns it)."""
        return ioctl(self.fd, "KVM_GET_STATS_FD", abi.KVM_GET_STATS_FD, 0)

    def create_vcpu(self, vcpu_id: int):
        """KVM_CREATE_VCPU: a vCPU with APIC ID ``vcpu_id``, its kvm_run mapped."""
        from .vcpu import Vcpu
        fd = ioctl(self.fd, "KVM_CREATE_VCPU", abi.KVM_CREATE_VCPU, vcpu_id)
        # Wrap the fd before the fallible mmap so it is closed on failure (kvm-ioctls does this).
        vcpu = Vcpu(fd, vcpu_id)
        try:
            vcpu.map_run(self.kvm.get_vcpu_mmap_size())
        except BaseException:
            vcpu.close()
            raise
        return vcpu

    def set_msr_filter(self, ranges: list[tuple[int, int, int, bytes]],
                       default_deny: bool = False) -> None:
        """KVM_X86_SET_MSR_FILTER: ``ranges`` of (flags, base, nmsrs, bitmap); a 0 bit denies.

        Denied accesses exit to userspace when KVM_CAP_X86_USER_SPACE_MSR has
        KVM_MSR_EXIT_REASON_FILTER enabled.
        """
        filt = abi.kvm_msr_filter(flags=abi.KVM_MSR_FILTER_DEFAULT_DENY if default_deny
                                  else abi.KVM_MSR_FILTER_DEFAULT_ALLOW)
        keep = []
        for i, (flags, base, nmsrs, bitmap) in enumerate(ranges):
            if len(bitmap) * 8 < nmsrs:
                raise ValueError("MSR filter bitmap shorter than its range")
            buf = ctypes.create_string_buffer(bytes(bitmap), len(bitmap))
            keep.append(buf)
            r = filt.ranges[i]
            r.flags, r.base, r.nmsrs = flags, base, nmsrs
            r.bitmap = ctypes.cast(buf, ctypes.c_void_p).value
        ioctl(self.fd, "KVM_X86_SET_MSR_FILTER", abi.KVM_X86_SET_MSR_FILTER, ctypes.byref(filt))

    def irqfd_deassign(self, fd: int, gsi: int) -> None:
        """KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN: unbind ``fd`` from ``gsi``."""
        self.irqfd(fd, gsi, flags=abi.KVM_IRQFD_FLAG_DEASSIGN)
