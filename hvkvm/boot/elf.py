"""ELF image loading with pyelftools: PT_LOAD segments, entry points, the PVH note, symbols.

An image is checked whole before a byte of it reaches guest RAM. Each rejection is a
:class:`BadImage` with a one-line message naming the file and the reason.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

#: Xen's ELF note type carrying the 32-bit PVH entry point (xen/include/public/elfnote.h).
XEN_ELFNOTE_PHYS32_ENTRY = 18

EM_X86_64 = 62


class BadImage(ValueError):
    """An image file that cannot be booted; the message is one line naming file and reason."""


@dataclass
class Segment:
    """A PT_LOAD segment: where it goes in guest RAM and what fills it."""

    gpa: int
    data: bytes
    memsz: int
    executable: bool

    @property
    def end(self) -> int:
        """One past the last GPA the segment occupies."""
        return self.gpa + self.memsz


@dataclass
class Symbols:
    """Function and object symbols of an image, for turning addresses into ``name+0xoff``."""

    addrs: list[int] = field(default_factory=list)
    entries: list[tuple[int, int, str]] = field(default_factory=list)  # (addr, size, name)

    def add(self, addr: int, size: int, name: str) -> None:
        """Record a symbol (call :meth:`finish` after the last one)."""
        self.entries.append((addr, size, name))

    def finish(self) -> None:
        """Sort the table for lookups."""
        self.entries.sort()
        self.addrs = [e[0] for e in self.entries]

    def lookup(self, addr: int) -> tuple[str, int] | None:
        """(symbol name, offset) of the symbol covering ``addr``, or None."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        # Sized symbols (C functions) win; nested or adjacent labels are searched a few back.
        for j in range(i, max(i - 8, -1), -1):
            start, size, name = self.entries[j]
            if size and start <= addr < start + size:
                return name, addr - start
        # An assembly label has no size: take the nearest one below, within a page.
        if i >= 0 and self.entries[i][1] == 0 and addr - self.entries[i][0] < 0x1000:
            return self.entries[i][2], addr - self.entries[i][0]
        return None

    def symbolize(self, addr: int) -> str:
        """``name+0xoff`` for ``addr``, or the bare hex address when no symbol covers it."""
        hit = self.lookup(addr)
        if hit is None:
            return f"{addr:#x}"
        name, off = hit
        return f"{name}+{off:#x}" if off else name

    def address_of(self, name: str) -> int | None:
        """Address of the symbol called ``name``."""
        for addr, _, n in self.entries:
            if n == name:
                return addr
        return None


@dataclass
class ElfImage:
    """A checked, loadable ELF64 x86-64 image."""

    path: Path
    entry: int
    pvh_entry: int | None
    segments: list[Segment]
    symbols: Symbols

    @property
    def low(self) -> int:
        """Lowest GPA the image occupies."""
        return min(s.gpa for s in self.segments)

    @property
    def high(self) -> int:
        """One past the highest GPA the image occupies."""
        return max(s.end for s in self.segments)


def _find_pvh_entry(elf: ELFFile) -> int | None:
    for section_or_segment in list(elf.iter_segments()) + list(elf.iter_sections()):
        kind = section_or_segment.header.get("p_type") or section_or_segment.header.get("sh_type")
        if kind not in ("PT_NOTE", "SHT_NOTE"):
            continue
        for note in section_or_segment.iter_notes():
            if note["n_name"] == "Xen" and note["n_type"] == XEN_ELFNOTE_PHYS32_ENTRY:
                desc = note["n_desc"]
                raw = desc if isinstance(desc, bytes) else bytes.fromhex(desc) if isinstance(desc, str) else bytes(desc)
                if len(raw) >= 8:
                    return struct.unpack_from("<Q", raw)[0]
                if len(raw) >= 4:
                    return struct.unpack_from("<I", raw)[0]
    return None


def load_elf(path: str | Path, ram_contains=None) -> ElfImage:
    """Parse and check ``path``.

    ``ram_contains(gpa, length) -> bool`` says whether a range is guest RAM; every segment must be
    entirely inside it. Raises :class:`BadImage` for: a missing or unreadable file, not ELF, wrong
    class or machine, no loadable segment, a segment whose file bytes lie past the end of the file
    (truncated), a segment outside RAM, overlapping segments, and an entry point (or PVH entry)
    outside executable loaded code.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadImage(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadImage(f"{path}: is a directory") from None
    except OSError as e:
        raise BadImage(f"{path}: cannot read: {e.strerror}") from None
    if raw[:4] != b"\x7fELF":
        raise BadImage(f"{path}: not an ELF file")
    if len(raw) < 64:
        raise BadImage(f"{path}: truncated ELF header")
    if raw[4] != 2:
        raise BadImage(f"{path}: wrong ELF class (ELF32); hvkvm boots ELF64 x86-64 images")
    if raw[5] != 1:
        raise BadImage(f"{path}: big-endian ELF; hvkvm boots little-endian x86-64 images")
    machine = struct.unpack_from("<H", raw, 18)[0]
    if machine != EM_X86_64:
        raise BadImage(f"{path}: wrong machine (e_machine={machine}); hvkvm boots x86-64 images")
    import io
    try:
        elf = ELFFile(io.BytesIO(raw))
        segments = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            off, filesz, memsz = seg["p_offset"], seg["p_filesz"], seg["p_memsz"]
            if off + filesz > len(raw):
                raise BadImage(f"{path}: truncated: segment at {seg['p_paddr']:#x} needs file "
                               f"bytes up to {off + filesz:#x}, file has {len(raw):#x}")
            if filesz > memsz:
                raise BadImage(f"{path}: segment at {seg['p_paddr']:#x} has filesz > memsz")
            segments.append(Segment(seg["p_paddr"], raw[off:off + filesz], memsz,
                                    bool(seg["p_flags"] & P_FLAGS.PF_X)))
        pvh_entry = _find_pvh_entry(elf)
        symbols = Symbols()
        symtab = elf.get_section_by_name(".symtab")
        if symtab is not None:
            for sym in symtab.iter_symbols():
                if sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") and \
                        sym.name and sym["st_shndx"] != "SHN_UNDEF" and sym["st_value"]:
                    symbols.add(sym["st_value"], sym["st_size"], sym.name)
        symbols.finish()
        entry = elf.header["e_entry"]
    except ELFError as e:
        raise BadImage(f"{path}: malformed ELF: {e}") from None
    except (struct.error, ValueError, IndexError) as e:
        if isinstance(e, BadImage):
            raise
        raise BadImage(f"{path}: malformed or truncated ELF: {e}") from None

    if not segments:
        raise BadImage(f"{path}: no loadable segment")
    ordered = sorted(segments, key=lambda s: s.gpa)
    for a, b in zip(ordered, ordered[1:]):
        if a.end > b.gpa:
            raise BadImage(f"{path}: segments overlap: [{a.gpa:#x}, {a.end:#x}) and "
                           f"[{b.gpa:#x}, {b.end:#x})")
    if ram_contains is not None:
        for s in ordered:
            if not ram_contains(s.gpa, s.memsz):
                raise BadImage(f"{path}: segment [{s.gpa:#x}, {s.end:#x}) is outside guest RAM "
                               f"(give the partition more --memory?)")

    def in_code(addr: int) -> bool:
        return any(s.executable and s.gpa <= addr < s.gpa + len(s.data) for s in ordered)

    if pvh_entry is not None and not in_code(pvh_entry):
        raise BadImage(f"{path}: PVH entry {pvh_entry:#x} is outside loaded code")
    if pvh_entry is None and not in_code(entry):
        raise BadImage(f"{path}: entry point {entry:#x} is outside loaded code")
    return ElfImage(path, entry, pvh_entry, ordered, symbols)


def place_image(image: ElfImage, memory) -> None:
    """Copy the image's segments into guest RAM (zero-filling each segment's .bss tail)."""
    for s in image.segments:
        memory.write(s.gpa, s.data)
        if s.memsz > len(s.data):
            memory.fill(s.gpa + len(s.data), s.memsz - len(s.data))
