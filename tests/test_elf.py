"""ELF and PVH loading: good images load, every kind of bad image is refused with one line."""

from __future__ import annotations

import struct

import pytest

from elfgen import PF_R, PF_W, PF_X, make_elf
from hvkvm.boot.elf import BadImage, Symbols, load_elf, place_image
from hvkvm.boot.pvh import CMDLINE_GPA, HVM_START_MAGIC, CmdlineTooLong, write_start_info
from hvkvm.memory import GuestMemory

CODE = b"\x90" * 16 + b"\xf4"
RAM = 4 << 20


@pytest.fixture
def memory():
    with GuestMemory(RAM) as m:
        yield m


def write(tmp_path, data, name="img.elf"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_loads_segments_entry_and_pvh_note(tmp_path, memory):
    img = make_elf([(0x100000, CODE, 0x1000, PF_R | PF_X), (0x200000, b"data", 0x2000, PF_R | PF_W)],
                   0x100000, pvh_entry=0x100004)
    elf = load_elf(write(tmp_path, img), memory.contains)
    assert elf.entry == 0x100000 and elf.pvh_entry == 0x100004
    assert [(s.gpa, s.memsz) for s in elf.segments] == [(0x100000, 0x1000), (0x200000, 0x2000)]
    memory.fill(0x200000, 0x2000, 0xAA)
    place_image(elf, memory)
    assert memory.read(0x100000, len(CODE)) == CODE
    assert memory.read(0x200000, 6) == b"data\0\0"   # .bss tail zeroed


@pytest.mark.parametrize("data,needle", [
    (b"", "not an ELF file"),
    (b"MZ\x90\x00" + bytes(100), "not an ELF file"),
    (b"\x7fELF\x02\x01", "truncated ELF header"),
])
def test_rejects_files_that_are_not_elf(tmp_path, data, needle):
    with pytest.raises(BadImage, match=needle):
        load_elf(write(tmp_path, data))


def test_rejects_missing_file_and_directory(tmp_path):
    with pytest.raises(BadImage, match="no such file"):
        load_elf(tmp_path / "nope.elf")
    with pytest.raises(BadImage, match="is a directory"):
        load_elf(tmp_path)


def test_rejects_elf32(tmp_path):
    img = bytearray(make_elf([(0x100000, CODE, 0x1000, PF_R | PF_X)], 0x100000))
    img[4] = 1
    with pytest.raises(BadImage, match="wrong ELF class"):
        load_elf(write(tmp_path, bytes(img)))


def test_rejects_wrong_machine(tmp_path):
    img = make_elf([(0x100000, CODE, 0x1000, PF_R | PF_X)], 0x100000, machine=183)  # aarch64
    with pytest.raises(BadImage, match="wrong machine"):
        load_elf(write(tmp_path, img))


def test_rejects_truncated_segment(tmp_path):
    img = make_elf([(0x100000, CODE * 100, 0x10000, PF_R | PF_X)], 0x100000)
    with pytest.raises(BadImage, match="truncated"):
        load_elf(write(tmp_path, img[:-200]))


def test_rejects_segment_outside_ram(tmp_path, memory):
    img = make_elf([(RAM - 0x100, CODE, 0x1000, PF_R | PF_X)], RAM - 0x100)
    with pytest.raises(BadImage, match="outside guest RAM"):
        load_elf(write(tmp_path, img), memory.contains)


def test_rejects_overlapping_segments(tmp_path):
    img = make_elf([(0x100000, CODE, 0x2000, PF_R | PF_X), (0x101000, b"x", 0x1000, PF_R)],
                   0x100000)
    with pytest.raises(BadImage, match="overlap"):
        load_elf(write(tmp_path, img))


def test_rejects_entry_outside_loaded_code(tmp_path):
    img = make_elf([(0x100000, CODE, 0x1000, PF_R | PF_X), (0x200000, b"d", 0x1000, PF_R | PF_W)],
                   0x200000)
    with pytest.raises(BadImage, match="entry point 0x200000 is outside loaded code"):
        load_elf(write(tmp_path, img))


def test_rejects_pvh_entry_outside_loaded_code(tmp_path):
    img = make_elf([(0x100000, CODE, 0x1000, PF_R | PF_X)], 0x100000, pvh_entry=0x300000)
    with pytest.raises(BadImage, match="PVH entry"):
        load_elf(write(tmp_path, img))


def test_rejects_image_without_loadable_segments(tmp_path):
    with pytest.raises(BadImage, match="no loadable segment"):
        load_elf(write(tmp_path, make_elf([], 0x100000)))


def test_symbols_turn_addresses_into_name_plus_offset():
    s = Symbols()
    s.add(0x1000, 0x20, "main")
    s.add(0x1020, 0, "asm_label")
    s.finish()
    assert s.symbolize(0x1000) == "main"
    assert s.symbolize(0x1004) == "main+0x4"
    assert s.symbolize(0x1028) == "asm_label+0x8"
    assert s.symbolize(0x9000) == "0x9000"


def test_start_info_carries_cmdline_and_memory_map(memory):
    gpa = write_start_info(memory, "hello ring=3")
    magic, version, flags, nmods, modlist, cmdline, rsdp, memmap, entries, _ = struct.unpack(
        "<IIIIQQQQII", memory.read(gpa, 56))
    assert (magic, version) == (HVM_START_MAGIC, 1)
    assert memory.read_cstr(cmdline, 4096) == "hello ring=3"
    table = [struct.unpack("<QQII", memory.read(memmap + 24 * i, 24))[:3] for i in range(entries)]
    ram = [(a, s) for a, s, t in table if t == 1]
    assert (0, 0xA0000) in ram and (0x100000, RAM - 0x100000) in ram


def test_overlong_cmdline_is_refused(memory):
    with pytest.raises(CmdlineTooLong):
        write_start_info(memory, "x" * 5000)
    assert memory.read(CMDLINE_GPA, 1) == b"\0"


def _hostile(tmp_path, patch):
    """A good image with ``patch(bytearray)`` applied: the loader must refuse it in one line."""
    img = bytearray(make_elf([(0x100000, CODE, 0x1000, PF_R | PF_X)], 0x100000,
                             pvh_entry=0x100004))
    patch(img)
    with pytest.raises(BadImage) as e:
        load_elf(write(tmp_path, bytes(img)))
    assert "\n" not in str(e.value) and str(e.value).startswith(str(tmp_path))
    return str(e.value)


def test_rejects_header_tables_and_notes_that_point_past_the_file(tmp_path):
    # program header table offset (e_phoff at 32) past the end
    assert "program header table" in _hostile(tmp_path, lambda b: struct.pack_into("<Q", b, 32,
                                                                                  1 << 40))
    # 60000 program headers (e_phnum at 56)
    assert "program header table" in _hostile(tmp_path, lambda b: struct.pack_into("<H", b, 56,
                                                                                  60000))
    # program header entries smaller than a program header (e_phentsize at 54)
    assert "entries of 8 bytes" in _hostile(tmp_path, lambda b: struct.pack_into("<H", b, 54, 8))
    # the PVH note's namesz (first word of the note, in the second phdr's p_offset) is huge
    def huge_note(b):
        note_off = struct.unpack_from("<Q", b, 64 + 56 + 8)[0]
        struct.pack_into("<I", b, note_off, 0xFFFF_FFF0)
    assert "note" in _hostile(tmp_path, huge_note)
    # a section header table (e_shoff at 40, e_shnum at 60) past the end
    def sections(b):
        struct.pack_into("<Q", b, 40, len(b) + 64)
        struct.pack_into("<H", b, 60, 3)
    assert "section header table" in _hostile(tmp_path, sections)


@pytest.mark.parametrize("name", ["hello", "exits"])
def test_own_reader_agrees_with_pyelftools_on_built_in_images(name):
    from elftools.elf.constants import P_FLAGS
    from elftools.elf.elffile import ELFFile
    from hvkvm.images import image_path
    path = image_path(name)
    img = load_elf(path)
    with open(path, "rb") as f:
        ref = ELFFile(f)
        segs = sorted((s["p_paddr"], s["p_memsz"], s["p_filesz"], bool(s["p_flags"] & P_FLAGS.PF_X))
                      for s in ref.iter_segments() if s["p_type"] == "PT_LOAD" and s["p_memsz"])
        assert [(s.gpa, s.memsz, len(s.data), s.executable) for s in img.segments] == segs
        assert img.entry == ref.header["e_entry"]
        notes = [n for seg in ref.iter_segments() if seg["p_type"] == "PT_NOTE"
                 for n in seg.iter_notes() if n["n_name"] == "Xen" and n["n_type"] == 18]
        desc = notes[0]["n_desc"]
        raw = desc if isinstance(desc, bytes) else bytes.fromhex(desc)
        assert img.pvh_entry == int.from_bytes(raw[:8], "little")
        syms = sorted((s["st_value"], s["st_size"], s.name)
                      for s in ref.get_section_by_name(".symtab").iter_symbols()
                      if s["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE")
                      and s.name and s["st_shndx"] != "SHN_UNDEF" and s["st_value"])
        assert img.symbols.entries == syms and len(syms) > 10


def test_place_image_on_zeroed_ram_writes_only_file_bytes(tmp_path, memory):
    img = make_elf([(0x200000, b"data", 0x2000, PF_R | PF_X)], 0x200000)
    elf = load_elf(write(tmp_path, img), memory.contains)
    memory.fill(0x200000, 0x2000, 0xAA)
    place_image(elf, memory, zeroed=True)  # the caller vouches for zeros: tail not written
    assert memory.read(0x200000, 6) == b"data\xaa\xaa"
    place_image(elf, memory)
    assert memory.read(0x200000, 6) == b"data\0\0"
