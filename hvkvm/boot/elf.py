"""ELF image loading: PT_LOAD segments, entry points, the PVH note, symbols.

A small reader of its own (the ELF64 header, program headers, PT_NOTE segments, the symbol
table): everything ``hvkvm run`` needs, without pyelftools' import time (~60 ms here).
pyelftools stays the reference: the tests compare this reader with it on the built-in images.

An image is checked whole before a byte of it reaches guest RAM. Each rejection is a
:class:`BadImage` with a one-line message naming the file and the reason; every offset, size and
count read from the file is checked against the file's length before use.
"""

from __future__ import annotations

import bisect
import struct
from .._record import Record, factory
from pathlib import Path

#: Xen's ELF note type carrying the 32-bit PVH entry point (xen/include/public/elfnote.h).
XEN_ELFNOTE_PHYS32_ENTRY = 18

EM_X86_64 = 62


class BadImage(ValueError):
    """An image file that cannot be booted; the message is one line naming file and reason."""


class Segment(Record):
    """A PT_LOAD segment: where it goes in guest RAM and what fills it."""

    gpa: int
    data: bytes
    memsz: int
    executable: bool

    @property
    def end(self) -> int:
        """One past the last GPA the segment occupies."""
        return self.gpa + self.memsz


class Symbols(Record):
    """Function and object symbols of an image, for turning addresses into ``name+0xoff``."""

    addrs: list[int] = factory(list)
    entries: list[tuple[int, int, str]] = factory(list)  # (addr, size, name)

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


class ElfImage(Record):
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


_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_NHDR = struct.Struct("<III")
PT_LOAD, PT_NOTE = 1, 4
PF_X = 1
SHT_SYMTAB, SHT_STRTAB = 2, 3
#: Symbol types kept for symbolization: NOTYPE (assembly labels), OBJECT, FUNC.
_SYM_TYPES = (0, 1, 2)


class _Malformed(Exception):
    """A structure of the file is out of bounds; load_elf turns it into a BadImage."""


def _table(raw: bytes, off: int, num: int, entsize: int, st: struct.Struct, what: str):
    """``num`` entries of ``st`` at ``off``, ``entsize`` apart, each checked to lie in the file."""
    if num and entsize < st.size:
        raise _Malformed(f"{what} entries of {entsize} bytes (need {st.size})")
    if off + num * entsize > len(raw):
        raise _Malformed(f"{what} at {off:#x} ({num} x {entsize} bytes) runs past the end of "
                         f"the file ({len(raw):#x})")
    return [st.unpack_from(raw, off + i * entsize) for i in range(num)]


def _notes(raw: bytes, off: int, size: int):
    """(name, type, desc) of every note in ``raw[off:off + size]`` (4-byte aligned fields)."""
    end = off + size
    if end > len(raw):
        raise _Malformed(f"note area at {off:#x} runs past the end of the file")
    pos = off
    while pos + _NHDR.size <= end:
        namesz, descsz, ntype = _NHDR.unpack_from(raw, pos)
        pos += _NHDR.size
        name_end = pos + namesz
        desc = pos + (namesz + 3 & ~3)
        desc_end = desc + descsz
        if desc_end > end:
            raise _Malformed(f"note at {pos - _NHDR.size:#x} runs past its area")
        yield raw[pos:name_end].rstrip(b"\0"), ntype, raw[desc:desc_end]
        pos = desc + (descsz + 3 & ~3)


def _find_pvh_entry(raw: bytes, phdrs) -> int | None:
    for p in phdrs:
        if p[0] != PT_NOTE:
            continue
        for name, ntype, desc in _notes(raw, p[2], p[5]):
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                if len(desc) >= 8:
                    return struct.unpack_from("<Q", desc)[0]
                if len(desc) >= 4:
                    return struct.unpack_from("<I", desc)[0]
    return None


def _symbols(raw: bytes, shoff: int, shnum: int, shentsize: int) -> Symbols:
    symbols = Symbols()
    if shoff == 0 or shnum == 0:
        return symbols
    shdrs = _table(raw, shoff, shnum, shentsize, _SHDR, "section header table")
    for sh in shdrs:
        if sh[1] != SHT_SYMTAB:
            continue
        off, size, link, entsize = sh[4], sh[5], sh[6], sh[9]
        if link >= len(shdrs) or shdrs[link][1] != SHT_STRTAB:
            raise _Malformed("symbol table without a string table")
        stroff, strsize = shdrs[link][4], shdrs[link][5]
        if stroff + strsize > len(raw):
            raise _Malformed(f"string table at {stroff:#x} runs past the end of the file")
        strtab = raw[stroff:stroff + strsize]
        if entsize == 0:
            raise _Malformed("symbol table with zero-sized entries")
        for st_name, info, _other, shndx, value, sym_size in _table(
                raw, off, size // entsize, entsize, _SYM, "symbol table"):
            if info & 0xF not in _SYM_TYPES or shndx == 0 or not value or not st_name:
                continue
            if st_name >= strsize:
                raise _Malformed(f"symbol name offset {st_name:#x} outside the string table")
            end = strtab.find(b"\0", st_name)
            name = strtab[st_name:end if end >= 0 else strsize].decode("utf-8", "replace")
            if name:
                symbols.add(value, sym_size, name)
        break
    symbols.finish()
    return symbols


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
    try:
        (_ident, _type, _machine, _version, entry, phoff, shoff, _flags, _ehsize, phentsize,
         phnum, shentsize, shnum, _shstrndx) = _EHDR.unpack_from(raw, 0)
        phdrs = _table(raw, phoff, phnum, phentsize, _PHDR, "program header table")
        segments = []
        for p_type, p_flags, off, _vaddr, paddr, filesz, memsz, _align in phdrs:
            if p_type != PT_LOAD or memsz == 0:
                continue
            if off + filesz > len(raw):
                raise BadImage(f"{path}: truncated: segment at {paddr:#x} needs file "
                               f"bytes up to {off + filesz:#x}, file has {len(raw):#x}")
            if filesz > memsz:
                raise BadImage(f"{path}: segment at {paddr:#x} has filesz > memsz")
            segments.append(Segment(paddr, raw[off:off + filesz], memsz, bool(p_flags & PF_X)))
        pvh_entry = _find_pvh_entry(raw, phdrs)
        symbols = _symbols(raw, shoff, shnum, shentsize)
    except _Malformed as e:
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


def place_image(image: ElfImage, memory, zeroed: bool = False) -> None:
    """Copy the image's segments into guest RAM, zero-filling each segment's .bss tail unless
    ``zeroed`` says that RAM is still all zeros (fresh from its memfd: writing zeros there would
    only fault in pages the guest may never touch, ~14 ms for ``hello`` here)."""
    for s in image.segments:
        memory.write(s.gpa, s.data)
        if s.memsz > len(s.data) and not zeroed:
            memory.fill(s.gpa + len(s.data), s.memsz - len(s.data))
