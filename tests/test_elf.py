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
