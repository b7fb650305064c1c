"""``PartitionConfig``: the settings a VM Worker holds for one child partition."""

from __future__ import annotations

import re
from .._record import Record, factory
from pathlib import Path
from typing import Any, BinaryIO, Callable

MiB = 1 << 20
GiB = 1 << 30

DEFAULT_MEMORY = 64 * MiB
MIN_MEMORY = 2 * MiB
MAX_MEMORY = 64 * GiB
MAX_VCPUS = 64

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """Parse ``64M``, ``1G``, ``512MiB`` or a byte count into bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"bad size {text!r}: use a number with an optional K, M or G suffix")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


class DeviceSpec(Record):
    """A device a caller adds to a partition: bus ("pio"/"mmio"), base, length and the device."""

    bus: str
    base: int
    length: int
    device: Any


class PartitionConfig(Record):
    """Everything needed to build a child partition.

    Either ``image`` (an ELF file; PVH entry if it has the note, else its 64-bit entry in long
    mode) or ``raw`` (bytes loaded at ``raw_gpa`` and entered in ``raw_mode``: "real",
    "protected" or "long").
    """

    image: str | Path | None = None
    memory: int = DEFAULT_MEMORY
    vcpus: int = 1
    cmdline: str = ""
    raw: bytes | None = None
    raw_gpa: int = 0x10000
    raw_mode: str = "real"
    #: Serial (COM1) output sink; None discards. Output is always captured for the result too.
    serial_out: BinaryIO | None = None
    #: Feed stdin to COM1 (interactive runs).
    serial_stdin: bool = False
    #: Unmapped port/MMIO access raises instead of reading all ones / dropping writes.
    strict_io: bool = False
    #: Wall-clock limit for :meth:`ChildPartition.run`, seconds (None: none).
    timeout: float | None = None
    devices: list[DeviceSpec] = factory(list)
    #: Called for every SYNC ucall as ``on_sync(vcpu_index, ucall)``; may return "stop".
    on_sync: Callable | None = None
    #: Called for every LOG ucall as ``on_log(vcpu_index, text)``; default prints to serial_out.
    on_log: Callable | None = None
    #: Seconds a vCPU may go without an exit before it is probed for "halted, interrupts off".
    stall_probe: float = 0.5
    #: Present the Hyper-V synthetic interface (CPUID leaves, synthetic MSRs, hypercall page,
    #: SynIC) emulated in the parent, as VMBus guests need.
    hyperv: bool = False
    #: VMBus device providers (hvkvm.vmbus.server.Vsp) to offer; implies ``hyperv``.
    vsps: list = factory(list)

    def validate(self) -> None:
        """Raise ValueError with a one-line message for settings that cannot work."""
        if self.image is None and self.raw is None:
            raise ValueError("a partition needs an image or raw code")
        if not isinstance(self.vcpus, int) or not 1 <= self.vcpus <= MAX_VCPUS:
            raise ValueError(f"vcpus must be between 1 and {MAX_VCPUS}, not {self.vcpus}")
        if not MIN_MEMORY <= self.memory <= MAX_MEMORY:
            raise ValueError(f"memory must be between {MIN_MEMORY >> 20} MiB and "
                             f"{MAX_MEMORY >> 30} GiB, not {self.memory} bytes")
        if self.memory % (2 * MiB):
            raise ValueError(f"memory must be a multiple of 2 MiB, not {self.memory} bytes")
        if self.raw_mode not in ("real", "protected", "long"):
            raise ValueError(f"raw_mode must be real, protected or long, not {self.raw_mode!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be positive, not {self.timeout}")
