"""GSI routing: the in-kernel irqchip's default routes plus MSI routes for irqfds.

KVM_SET_GSI_ROUTING replaces the whole table, so the table always carries KVM's defaults (GSIs
0-15 to the PIC pins and 0-23 to the IOAPIC pins, as ``kvm_setup_default_irq_routing`` sets
them) and then every MSI route handed out here. C data planes raise a guest interrupt by writing
an irqfd bound to an MSI route: no exit, no Python.
"""

from __future__ import annotations

import threading

from ..kvm import abi

IOAPIC_PINS = 24
PIC_PINS = 16
FIRST_MSI_GSI = 24
MAX_GSI = 1024


class MsiRouter:
    """Hands out MSI routes (GSIs from 24) and keeps KVM's routing table in step."""

    def __init__(self, vm):
        self.vm = vm
        self._routes: dict[int, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def _entries(self):
        entries = []
        for gsi in range(PIC_PINS):
            chip = abi.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else abi.KVM_IRQCHIP_PIC_SLAVE
            entries.append((gsi, abi.KVM_IRQ_ROUTING_IRQCHIP, (chip, gsi % 8)))
        for gsi in range(IOAPIC_PINS):
            entries.append((gsi, abi.KVM_IRQ_ROUTING_IRQCHIP, (abi.KVM_IRQCHIP_IOAPIC, gsi)))
        for gsi, (address, data) in sorted(self._routes.items()):
            entries.append((gsi, abi.KVM_IRQ_ROUTING_MSI, (address, data)))
        return entries

    def _commit(self) -> None:
        entries = self._entries()
        table = abi.make_kvm_irq_routing(len(entries))
        for i, (gsi, kind, args) in enumerate(entries):
            e = table.entries[i]
            e.gsi, e.type = gsi, kind
            if kind == abi.KVM_IRQ_ROUTING_IRQCHIP:
                e.u.irqchip.irqchip, e.u.irqchip.pin = args
            else:
                address, data = args
                e.u.msi.address_lo = address & 0xFFFFFFFF
                e.u.msi.address_hi = address >> 32
                e.u.msi.data = data
        self.vm.set_gsi_routing(table)

    def add(self, address: int, data: int) -> int:
        """A new GSI routed to the MSI (address, data)."""
        with self._lock:
            gsi = next((g for g in range(FIRST_MSI_GSI, MAX_GSI) if g not in self._routes), None)
            if gsi is None:
                raise RuntimeError("out of MSI routes")
            self._routes[gsi] = (address, data)
            try:
                self._commit()
            except BaseException:
                del self._routes[gsi]
                raise
            return gsi

    def update(self, gsi: int, address: int, data: int) -> None:
        """Point ``gsi`` at another MSI (the guest reprogrammed the SINT's vector)."""
        with self._lock:
            if self._routes.get(gsi) != (address, data):
                self._routes[gsi] = (address, data)
                self._commit()

    def remove(self, gsi: int) -> None:
        """Free ``gsi`` (unbind its irqfd first)."""
        with self._lock:
            if self._routes.pop(gsi, None) is not None:
                self._commit()
