"""PIO/MMIO bus: registration rules, lookup, dispatch, unmapped accesses, string I/O. No KVM."""

from __future__ import annotations

import logging
import threading

import pytest

from hvkvm.partition.bus import (
    MAX_TRACKED_ADDRESSES,
    MMIO_SPACE,
    PIO_SPACE,
    Bus,
    BusDevice,
    BusError,
    UnmappedAccess,
)


class Recorder:
    """Reads return offset+i per byte; every access is recorded as (kind, offset, bytes)."""

    def __init__(self, name: str = "rec"):
        self.name = name
        self.log: list[tuple[str, int, bytes]] = []

    def read(self, offset: int, data: memoryview) -> None:
        for i in range(len(data)):
            data[i] = (offset + i) & 0xFF
        self.log.append(("r", offset, bytes(data)))

    def write(self, offset: int, data) -> None:
        self.log.append(("w", offset, bytes(data)))


class Counter:
    """A port that returns an incrementing byte per read (to see string-read ordering)."""

    name = "counter"

    def __init__(self):
        self.n = 0

    def read(self, offset, data):
        for i in range(len(data)):
            data[i] = self.n
            self.n += 1

    def write(self, offset, data):
        pass


def buf(n: int) -> memoryview:
    return memoryview(bytearray(n))


# -- registration ---------------------------------------------------------------------------

def test_recorder_satisfies_busdevice_protocol():
    assert isinstance(Recorder(), BusDevice)


def test_zero_length_range_is_rejected():
    bus = Bus("pio", size=PIO_SPACE)
    with pytest.raises(BusError, match="zero-length"):
        bus.insert(Recorder(), 0x10, 0)


def test_range_wrapping_past_top_of_space_is_rejected():
    pio = Bus("pio", size=PIO_SPACE)
    with pytest.raises(BusError, match="does not fit"):
        pio.insert(Recorder(), 0xFFFF, 2)
    pio.insert(Recorder(), 0xFFFF, 1)  # reaching the very last port is fine
    mmio = Bus("mmio")
    assert mmio.size == MMIO_SPACE
    with pytest.raises(BusError):
        mmio.insert(Recorder(), MMIO_SPACE - 0x1000, 0x1001)
    mmio.insert(Recorder(), MMIO_SPACE - 0x1000, 0x1000)


def test_negative_base_is_rejected():
    with pytest.raises(BusError):
        Bus("pio", size=PIO_SPACE).insert(Recorder(), -1, 4)


@pytest.mark.parametrize("base,length", [
    (0x10, 0x10),   # identical
    (0x0F, 0x02),   # covers our first byte from below
    (0x1F, 0x05),   # covers our last byte from above
    (0x12, 0x01),   # inside
    (0x00, 0x40),   # encloses
])
def test_overlapping_ranges_are_rejected_naming_both_ranges_and_devices(base, length):
    bus = Bus("pio", size=PIO_SPACE)
    bus.insert(Recorder("first"), 0x10, 0x10)
    with pytest.raises(BusError) as ei:
        bus.insert(Recorder("second"), base, length)
    msg = str(ei.value)
    assert "first" in msg and "second" in msg
    assert "0x10-0x1f" in msg
    assert f"{base:#x}-{base + length - 1:#x}" in msg
    assert len(bus) == 1


def test_adjacent_ranges_on_both_sides_are_accepted():
    bus = Bus("pio", size=PIO_SPACE)
    mid, low, high = Recorder("mid"), Recorder("low"), Recorder("high")
    bus.insert(mid, 0x10, 0x10)
    bus.insert(low, 0x00, 0x10)
    bus.insert(high, 0x20, 0x10)
    assert [(b, n, d.name) for b, n, d in bus.ranges()] == [
        (0x00, 0x10, "low"), (0x10, 0x10, "mid"), (0x20, 0x10, "high")]


def test_remove_unmaps_and_returns_device_and_unknown_base_raises():
    bus = Bus("pio", size=PIO_SPACE)
    dev = Recorder()
    bus.insert(dev, 0x3F8, 8)
    with pytest.raises(BusError):
        bus.remove(0x3F9)  # not a range start
    assert bus.remove(0x3F8) is dev
    assert bus.get(0x3F8) is None
    with pytest.raises(BusError):
        bus.remove(0x3F8)
    bus.insert(Recorder(), 0x3F8, 8)  # the hole can be reused


# -- lookup and dispatch --------------------------------------------------------------------

def test_get_finds_device_at_first_and_last_address_and_nothing_just_outside():
    bus = Bus("pio", size=PIO_SPACE)
    a, b = Recorder("a"), Recorder("b")
    bus.insert(a, 0x3F8, 8)
    bus.insert(b, 0x400, 4)
    assert bus.get(0x3F8) == (a, 0x3F8, 8)
    assert bus.get(0x3FF) == (a, 0x3F8, 8)
    assert bus.get(0x400) == (b, 0x400, 4)
    assert bus.get(0x403) == (b, 0x400, 4)
    assert bus.get(0x3F7) is None
    assert bus.get(0x404) is None
    assert bus.get(0) is None
    assert Bus("empty").get(0x1234) is None


def test_lookup_among_many_ranges_picks_the_right_one():
    bus = Bus("mmio")
    devs = [Recorder(f"d{i}") for i in range(200)]
    for i, d in enumerate(reversed(devs)):  # insert out of order
        bus.insert(d, (199 - i) * 0x1000, 0x800)
    for i in (0, 1, 99, 199):
        assert bus.get(i * 0x1000 + 0x7FF)[0] is devs[i]
        assert bus.get(i * 0x1000 + 0x800) is None


def test_read_and_write_pass_offset_from_base_and_the_data():
    bus = Bus("mmio")
    dev = Recorder()
    bus.insert(dev, 0xD000_0000, 0x1000)
    data = buf(4)
    assert bus.read(0xD000_0010, data) is True
    assert bytes(data) == bytes([0x10, 0x11, 0x12, 0x13])
    assert bus.write(0xD000_0FF8, b"\x01\x02\x03\x04\x05\x06\x07\x08") is True
    assert dev.log == [("r", 0x10, bytes([0x10, 0x11, 0x12, 0x13])),
                       ("w", 0xFF8, b"\x01\x02\x03\x04\x05\x06\x07\x08")]


def test_access_ending_exactly_at_range_end_is_dispatched():
    bus = Bus("pio", size=PIO_SPACE)
    dev = Recorder()
    bus.insert(dev, 0x3F8, 8)
    assert bus.read(0x3FC, buf(4)) is True
    assert bus.unmapped_reads == 0


def test_access_straddling_range_end_is_treated_as_unmapped(caplog):
    bus = Bus("pio", size=PIO_SPACE)
    dev = Recorder("uart")
    bus.insert(dev, 0x3F8, 8)
    bus.insert(Recorder("next"), 0x400, 8)
    data = buf(4)
    with caplog.at_level(logging.INFO, logger="hvkvm.bus"):
        assert bus.read(0x3FE, data) is False
        assert bus.write(0x3FF, b"\x00\x00") is False
    assert bytes(data) == b"\xff" * 4
    assert dev.log == []
    assert bus.unmapped_reads == 1 and bus.unmapped_writes == 1
    assert bus.unmapped == {0x3FE: 1, 0x3FF: 1}
    assert len(caplog.records) == 2
    assert all("straddles" in r.getMessage() for r in caplog.records)
    assert "straddles" in caplog.records[0].getMessage()
    assert "uart" in caplog.records[0].getMessage()


def test_access_past_top_of_space_is_unmapped_not_wrapped():
    bus = Bus("pio", size=PIO_SPACE)
    bus.insert(Recorder(), 0xFFFF, 1)
    assert bus.read(0xFFFF, buf(2)) is False


# -- unmapped accesses ----------------------------------------------------------------------

def test_unmapped_read_fills_all_ones_and_write_is_dropped_and_both_are_counted():
    bus = Bus("pio", size=PIO_SPACE)
    bus.insert(Recorder(), 0x3F8, 8)
    data = memoryview(bytearray(b"\x12\x34\x56\x78"))
    assert bus.read(0x2F8, data) is False
    assert bytes(data) == b"\xff\xff\xff\xff"
    assert bus.write(0x2F8, b"\x00") is False
    assert bus.write(0x80, b"\x00") is False
    assert bus.unmapped_reads == 1
    assert bus.unmapped_writes == 2
    assert bus.unmapped == {0x2F8: 2, 0x80: 1}


def test_unmapped_access_is_logged_once_per_address(caplog):
    bus = Bus("pio", size=PIO_SPACE)
    with caplog.at_level(logging.DEBUG, logger="hvkvm.bus"):
        for _ in range(1000):
            bus.write(0x80, b"\x00")
            bus.read(0x80, buf(1))
        bus.read(0x61, buf(1))
    msgs = [r.getMessage() for r in caplog.records if r.name == "hvkvm.bus"]
    assert len(msgs) == 2
    assert "0x80" in msgs[0] and "pio" in msgs[0]
    assert "0x61" in msgs[1]
    assert bus.unmapped == {0x80: 2000, 0x61: 1}


def test_distinct_unmapped_addresses_tracked_are_bounded(caplog):
    bus = Bus("mmio")
    with caplog.at_level(logging.INFO, logger="hvkvm.bus"):
        for i in range(MAX_TRACKED_ADDRESSES + 50):
            bus.read(i * 8, buf(8))
    assert len(bus.unmapped) == MAX_TRACKED_ADDRESSES
    assert bus.unmapped_reads == MAX_TRACKED_ADDRESSES + 50
    # one line per tracked address plus a single "further ones are only counted" warning
    assert len(caplog.records) == MAX_TRACKED_ADDRESSES + 1
    assert "only counted" in caplog.records[-1].getMessage()


def test_strict_bus_raises_unmapped_access_with_details():
    bus = Bus("mmio", strict=True)
    bus.insert(Recorder(), 0x1000, 0x10)
    data = memoryview(bytearray(b"\x01\x02"))
    with pytest.raises(UnmappedAccess) as ei:
        bus.read(0x2000, data)
    e = ei.value
    assert (e.bus_name, e.addr, e.size, e.is_write) == ("mmio", 0x2000, 2, False)
    assert bytes(data) == b"\x01\x02"
    with pytest.raises(UnmappedAccess) as ei:
        bus.write(0x100E, b"\x00" * 4)  # straddles the end too
    assert ei.value.is_write and ei.value.addr == 0x100E
    assert bus.unmapped_reads == 0 and bus.unmapped_writes == 0
    assert isinstance(ei.value, BusError)


def test_zero_length_access_is_a_caller_bug():
    bus = Bus("pio", size=PIO_SPACE)
    with pytest.raises(ValueError):
        bus.read(0x80, buf(0))
    with pytest.raises(ValueError):
        bus.write(0x80, b"")


# -- string I/O -----------------------------------------------------------------------------

def test_string_write_delivers_count_accesses_of_size_at_same_port_in_order():
    bus = Bus("pio", size=PIO_SPACE)
    dev = Recorder()
    bus.insert(dev, 0x3F8, 8)
    data = memoryview(bytearray(b"hello!"))
    assert bus.pio_string(0x3F8, 1, 6, data, is_write=True) is True
    assert dev.log == [("w", 0, bytes([c])) for c in b"hello!"]
    dev.log.clear()
    assert bus.pio_string(0x3FA, 2, 3, data, is_write=True) is True
    assert dev.log == [("w", 2, b"he"), ("w", 2, b"ll"), ("w", 2, b"o!")]


def test_string_read_fills_consecutive_slices():
    bus = Bus("pio", size=PIO_SPACE)
    bus.insert(Counter(), 0x60, 1)
    bus.insert(Counter(), 0x70, 4)
    data = buf(5)
    assert bus.pio_string(0x60, 1, 5, data, is_write=False) is True
    assert bytes(data) == bytes([0, 1, 2, 3, 4])
    data = buf(8)
    assert bus.pio_string(0x70, 4, 2, data, is_write=False) is True
    assert bytes(data) == bytes(range(8))


def test_string_io_ignores_buffer_beyond_size_times_count():
    bus = Bus("pio", size=PIO_SPACE)
    bus.insert(Counter(), 0x60, 1)
    data = memoryview(bytearray(b"\xaa" * 6))
    bus.pio_string(0x60, 1, 4, data, is_write=False)
    assert bytes(data) == bytes([0, 1, 2, 3, 0xAA, 0xAA])


def test_unmapped_string_io_fills_all_ones_and_counts_every_repetition(caplog):
    bus = Bus("pio", size=PIO_SPACE)
    data = buf(8)
    with caplog.at_level(logging.INFO, logger="hvkvm.bus"):
        assert bus.pio_string(0x2F8, 2, 4, data, is_write=False) is False
        assert bus.pio_string(0x2F8, 1, 3, data, is_write=True) is False
    assert bytes(data) == b"\xff" * 8
    assert bus.unmapped_reads == 4 and bus.unmapped_writes == 3
    assert bus.unmapped == {0x2F8: 7}
    assert len(caplog.records) == 1


def test_string_io_rejects_short_buffer_and_strict_bus_raises():
    bus = Bus("pio", size=PIO_SPACE, strict=True)
    bus.insert(Recorder(), 0x60, 1)
    with pytest.raises(ValueError):
        bus.pio_string(0x60, 1, 4, buf(3), is_write=False)
    with pytest.raises(UnmappedAccess):
        bus.pio_string(0x61, 1, 4, buf(4), is_write=True)
    assert bus.pio_string(0x60, 1, 0, buf(0), is_write=True) is True


# -- concurrency ----------------------------------------------------------------------------

def test_concurrent_unmapped_accesses_are_all_counted():
    bus = Bus("pio", size=PIO_SPACE)
    bus.insert(Recorder(), 0x3F8, 8)

    def hammer():
        data = buf(1)
        for _ in range(5000):
            bus.read(0x80, data)
            bus.read(0x3F8, data)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bus.unmapped_reads == 20000
    assert bus.unmapped == {0x80: 20000}
