"""Guest RAM: layout around the MMIO hole, bounds checks, and idempotent close."""

from __future__ import annotations

import pytest

from hvkvm.memory import MMIO_HOLE_END, MMIO_HOLE_START, GuestMemory, GuestMemoryError, ram_layout


def test_ram_below_the_hole_is_one_region():
    assert ram_layout(64 << 20) == [(0, 64 << 20)]


def test_ram_past_the_hole_moves_above_4g():
    size = MMIO_HOLE_START + (1 << 30)
    assert ram_layout(size) == [(0, MMIO_HOLE_START), (MMIO_HOLE_END, 1 << 30)]


def test_ram_size_must_be_whole_pages():
    with pytest.raises(ValueError):
        ram_layout(4097)


def test_read_write_round_trip_and_integers():
    with GuestMemory(2 << 20) as m:
        m.write(0x1000, b"hello")
        assert m.read(0x1000, 5) == b"hello"
        m.write_u64(0x2000, 0x1122334455667788)
        assert m.read_u32(0x2000) == 0x55667788
        assert m.read_u64(0x2000) == 0x1122334455667788
        v = m.view(0x3000, 4)
        v[:] = b"abcd"
        assert m.read(0x3000, 4) == b"abcd"
        v.release()


@pytest.mark.parametrize("gpa,length", [
    ((2 << 20) - 4, 8),        # straddles the end of RAM
    (2 << 20, 1),              # just past the end
    (-1, 1),                   # negative
    (0xFFFF_FFFF_FFFF_F000, 0x2000),  # wraps
    (MMIO_HOLE_START, 4),      # in the hole
])
def test_accesses_outside_ram_raise_and_never_touch_the_host(gpa, length):
    with GuestMemory(2 << 20) as m:
        with pytest.raises(GuestMemoryError):
            m.read(gpa, length)
        with pytest.raises(GuestMemoryError):
            m.write(gpa, bytes(max(length, 0)))
        assert not m.contains(gpa, length)


def test_an_access_spanning_two_regions_is_refused():
    size = MMIO_HOLE_START + (2 << 20)
    with GuestMemory(size) as m:  # sparse memfd: nothing is touched but what we write
        m.write(MMIO_HOLE_END, b"x")
        assert m.read(MMIO_HOLE_END, 1) == b"x"
        with pytest.raises(GuestMemoryError):
            m.read(MMIO_HOLE_START - 1, 2)


def test_guest_strings_are_bounded_and_cut_without_nul():
    with GuestMemory(2 << 20) as m:
        m.write(0x100, b"abc\0def")
        assert m.read_cstr(0x100, 64) == "abc"
        m.write((2 << 20) - 3, b"xyz")
        assert m.read_cstr((2 << 20) - 3, 4096) == "xyz"


def test_close_is_idempotent_and_later_access_fails():
    m = GuestMemory(2 << 20)
    m.close()
    m.close()
    assert m.closed
    with pytest.raises(GuestMemoryError):
        m.read(0, 1)
