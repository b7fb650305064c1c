"""16550A UART register behaviour, driven through a port-I/O bus as the exit loop will. No KVM."""

from __future__ import annotations

import io
import logging
import os
import threading
import time

import pytest

from hvkvm.partition.bus import PIO_SPACE, Bus
from hvkvm.vsp import serial as S
from hvkvm.vsp.serial import COM1_BASE, FIFO_SIZE, LINE_MAX, UART_PORT_COUNT, Serial16550


class FakeIrq:
    """Records every level the UART drives onto its line."""

    def __init__(self):
        self.calls: list[bool] = []

    def __call__(self, level: bool) -> None:
        self.calls.append(level)

    @property
    def level(self) -> bool:
        return self.calls[-1] if self.calls else False


class RecordingSink(io.RawIOBase):
    """A binary sink that records each write and flush, to see when output is flushed."""

    def __init__(self):
        self.events: list[object] = []

    def writable(self):
        return True

    def write(self, b):
        self.events.append(bytes(b))
        return len(b)

    def flush(self):
        self.events.append("flush")

    @property
    def data(self) -> bytes:
        return b"".join(e for e in self.events if isinstance(e, bytes))


class Uart:
    """A UART on COM1 of a fresh PIO bus, with helpers taking register offsets."""

    def __init__(self, **kw):
        self.irq = FakeIrq()
        self.sink = kw.pop("output", None) or RecordingSink()
        self.dev = Serial16550(self.irq, self.sink, capture=kw.pop("capture", True), **kw)
        self.bus = Bus("pio", size=PIO_SPACE, strict=True)
        self.bus.insert(self.dev, COM1_BASE, UART_PORT_COUNT)

    def rd(self, off: int) -> int:
        data = memoryview(bytearray(1))
        self.bus.read(COM1_BASE + off, data)
        return data[0]

    def wr(self, off: int, value: int) -> None:
        self.bus.write(COM1_BASE + off, bytes([value]))

    def send(self, text: bytes) -> None:
        for c in text:
            self.wr(S.THR, c)

    def drain(self) -> bytes:
        out = bytearray()
        while self.rd(S.LSR) & S.LSR_DR:
            out.append(self.rd(S.RBR))
        return bytes(out)

    def iir(self) -> int:
        return self.rd(S.IIR)


@pytest.fixture
def u():
    uart = Uart()
    yield uart
    uart.dev.close()


# -- reset state, plain registers ------------------------------------------------------------

def test_power_on_register_values(u):
    assert u.rd(S.IER) == 0
    assert u.iir() == S.IIR_NONE
    assert u.rd(S.LCR) == 0
    assert u.rd(S.MCR) == 0
    assert u.rd(S.LSR) == S.LSR_THRE | S.LSR_TEMT
    assert u.rd(S.MSR) == S.MSR_DCD | S.MSR_DSR | S.MSR_CTS
    assert u.rd(S.SCR) == 0
    assert u.irq.calls == []


def test_lcr_round_trips_every_value(u):
    for v in range(256):
        u.wr(S.LCR, v)
        assert u.rd(S.LCR) == v


def test_scratch_register_round_trips_and_has_no_side_effects(u):
    for v in (0x00, 0x55, 0xAA, 0xFF):
        u.wr(S.SCR, v)
        assert u.rd(S.SCR) == v
    assert u.rd(S.LSR) == 0x60 and u.iir() == 0x01 and u.dev.captured() == b""


def test_ier_keeps_only_low_four_bits(u):
    u.wr(S.IER, 0xFF)
    assert u.rd(S.IER) == 0x0F  # Linux's XScale UUE probe must see bit 6 read back 0


def test_mcr_keeps_only_low_five_bits(u):
    u.wr(S.MCR, 0xFF)
    assert u.rd(S.MCR) == 0x1F


# -- DLAB and the divisor latch --------------------------------------------------------------

def test_dlab_maps_divisor_latch_over_rbr_thr_and_ier(u):
    u.wr(S.IER, 0x05)
    u.wr(S.LCR, 0x80 | 0x03)
    u.wr(S.DLL, 0x01)
    u.wr(S.DLM, 0x00)
    assert u.rd(S.DLL) == 0x01 and u.rd(S.DLM) == 0x00
    assert u.dev.divisor == 1 and u.dev.baud == 115200
    u.wr(S.DLL, 0x80)
    u.wr(S.DLM, 0x01)
    assert u.dev.divisor == 0x180 and u.dev.baud == 300
    assert u.dev.captured() == b""  # the DLL write did not transmit
    u.wr(S.LCR, 0x03)
    assert u.rd(S.IER) == 0x05  # IER untouched by the DLM write
    u.wr(S.THR, ord("x"))
    assert u.dev.captured() == b"x"
    assert u.dev.divisor == 0x180


def test_divisor_zero_has_no_baud(u):
    u.wr(S.LCR, 0x80)
    u.wr(S.DLL, 0)
    u.wr(S.DLM, 0)
    assert u.dev.baud is None


def test_wide_access_is_split_into_byte_registers_lowest_first(u):
    u.bus.write(COM1_BASE + S.LCR, b"\x83\x0b")  # LCR then MCR
    assert u.rd(S.LCR) == 0x83 and u.rd(S.MCR) == 0x0B
    u.bus.write(COM1_BASE + S.DLL, b"\x34\x12")
    assert u.dev.divisor == 0x1234
    data = memoryview(bytearray(2))
    u.bus.read(COM1_BASE + S.DLL, data)
    assert bytes(data) == b"\x34\x12"


# -- FIFO ------------------------------------------------------------------------------------

def test_iir_fifo_bits_follow_fcr_enable(u):
    assert u.iir() & 0xC0 == 0
    u.wr(S.FCR, S.FCR_ENABLE)
    assert u.iir() & 0xC0 == 0xC0
    u.wr(S.FCR, 0)
    assert u.iir() & 0xC0 == 0


def test_fifo_holds_sixteen_bytes_in_order(u):
    u.wr(S.FCR, S.FCR_ENABLE)
    u.dev.inject_rx(bytes(range(16)))
    assert u.rd(S.LSR) & (S.LSR_DR | S.LSR_OE) == S.LSR_DR
    assert u.drain() == bytes(range(16))
    assert not u.rd(S.LSR) & S.LSR_DR


def test_full_fifo_overrun_sets_oe_keeps_fifo_and_loses_new_byte(u):
    u.wr(S.FCR, S.FCR_ENABLE)
    u.dev.inject_rx(bytes(range(FIFO_SIZE + 2)))
    lsr = u.rd(S.LSR)
    assert lsr & S.LSR_OE and lsr & S.LSR_DR
    assert not u.rd(S.LSR) & S.LSR_OE  # reading LSR cleared OE
    assert u.drain() == bytes(range(FIFO_SIZE))
    assert u.dev.overruns == 2


def test_without_fifo_overrun_overwrites_holding_register(u):
    u.dev.inject_rx(b"ab")
    assert u.rd(S.LSR) & S.LSR_OE
    assert u.drain() == b"b"


def test_loopback_into_full_fifo_overruns(u):
    u.wr(S.FCR, S.FCR_ENABLE)
    u.wr(S.MCR, S.MCR_LOOP)
    u.send(bytes(range(17)))
    assert u.rd(S.LSR) & S.LSR_OE
    assert u.drain() == bytes(range(16))


def test_fcr_clear_rx_empties_fifo_without_touching_other_state(u):
    u.wr(S.FCR, S.FCR_ENABLE)
    u.wr(S.LCR, 0x03)
    u.dev.inject_rx(b"xyz")
    u.wr(S.FCR, S.FCR_ENABLE | S.FCR_CLEAR_RX | S.FCR_CLEAR_TX)
    assert not u.rd(S.LSR) & S.LSR_DR
    assert u.iir() & 0xC0 == 0xC0  # FIFOs still enabled; the clear bits self-clear
    assert u.rd(S.LCR) == 0x03
    u.dev.inject_rx(b"q")
    assert u.drain() == b"q"


def test_toggling_fifo_enable_empties_the_receiver(u):
    u.wr(S.FCR, S.FCR_ENABLE)
    u.dev.inject_rx(b"abc")
    u.wr(S.FCR, 0)
    assert not u.rd(S.LSR) & S.LSR_DR
    u.dev.inject_rx(b"d")
    u.wr(S.FCR, S.FCR_ENABLE)
    assert not u.rd(S.LSR) & S.LSR_DR


@pytest.mark.parametrize("fcr,level", [(0x01, 1), (0x41, 4), (0x81, 8), (0xC1, 14)])
def test_rx_trigger_level_separates_timeout_from_data_available(u, fcr, level):
    u.wr(S.FCR, fcr)
    u.wr(S.IER, S.IER_ERBFI)
    u.wr(S.MCR, S.MCR_OUT2)
    if level > 1:
        u.dev.inject_rx(bytes(level - 1))
        assert u.iir() == 0xC0 | S.IIR_TIMEOUT
        assert u.irq.level
    u.dev.inject_rx(b"\x01")
    assert u.iir() == 0xC0 | S.IIR_RDA
    u.drain()
    assert u.iir() == 0xC0 | S.IIR_NONE
    assert not u.irq.level


def test_timeout_indication_persists_until_fifo_is_empty(u):
    u.wr(S.FCR, 0x41)  # trigger at 4
    u.wr(S.IER, S.IER_ERBFI)
    u.dev.inject_rx(b"ab")
    assert u.iir() == 0xCC
    u.rd(S.RBR)
    assert u.iir() == 0xCC
    u.rd(S.RBR)
    assert u.iir() == 0xC1


def test_rbr_reads_zero_when_empty(u):
    assert u.rd(S.RBR) == 0


# -- host input: flow control, loopback, threads ---------------------------------------------

def test_queue_input_never_overruns_and_refills_fifo_as_guest_reads(u):
    u.wr(S.FCR, S.FCR_ENABLE)
    data = bytes(range(40))
    u.dev.queue_input(data)
    assert u.drain() == data
    assert u.dev.overruns == 0
    assert not u.rd(S.LSR) & S.LSR_OE


def test_queue_input_without_fifo_delivers_one_byte_at_a_time(u):
    u.dev.queue_input(b"hello")
    assert u.drain() == b"hello"
    assert u.dev.overruns == 0


def test_queue_input_raises_rx_interrupt(u):
    u.wr(S.IER, S.IER_ERBFI)
    u.wr(S.MCR, S.MCR_OUT2)
    u.dev.queue_input(b"k")
    assert u.irq.calls == [True]
    assert u.iir() == S.IIR_RDA
    assert u.rd(S.RBR) == ord("k")
    assert u.irq.calls == [True, False]


def test_queue_input_beyond_backlog_limit_is_dropped_and_counted(caplog):
    uart = Uart(backlog_limit=8)
    with caplog.at_level(logging.WARNING, logger="hvkvm.vsp.serial"):
        # 1 byte enters the 16450 holding register, 8 wait, the 10th is dropped
        uart.dev.queue_input(b"0123456789")
        uart.dev.queue_input(b"abcdefghij")
    assert uart.drain() == b"012345678"
    assert uart.dev.input_dropped == 1 + 10
    assert len(caplog.records) == 1


def test_host_input_waits_while_loopback_is_on(u):
    u.wr(S.MCR, S.MCR_LOOP)
    u.dev.queue_input(b"typed")
    assert not u.rd(S.LSR) & S.LSR_DR
    u.wr(S.MCR, 0)
    assert u.drain() == b"typed"


def test_concurrent_queue_input_and_guest_reads_lose_nothing(u):
    u.wr(S.FCR, S.FCR_ENABLE)
    chunks = [bytes([i]) * 7 for i in range(200)]

    def producer():
        for c in chunks:
            u.dev.queue_input(c)

    t = threading.Thread(target=producer)
    t.start()
    got = bytearray()
    deadline = time.monotonic() + 10
    while len(got) < 1400 and time.monotonic() < deadline:
        got += u.drain()
    t.join()
    assert bytes(got) == b"".join(chunks)


def test_stdin_reader_feeds_receiver_and_close_is_idempotent(u):
    r, w = os.pipe()
    try:
        u.dev.start_stdin_reader(r)
        with pytest.raises(RuntimeError):
            u.dev.start_stdin_reader(r)
        os.write(w, b"ls\r")
        deadline = time.monotonic() + 5
        got = b""
        while len(got) < 3 and time.monotonic() < deadline:
            got += u.drain()
            time.sleep(0.005)
        assert got == b"ls\r"
        reader = u.dev._reader
        u.dev.close()
        u.dev.close()
        assert not reader.is_alive()
        with pytest.raises(RuntimeError):
            u.dev.start_stdin_reader(r)
    finally:
        os.close(r)
        os.close(w)


def test_stdin_reader_stops_at_eof(u):
    r, w = os.pipe()
    try:
        u.dev.start_stdin_reader(r)
        os.write(w, b"z")
        os.close(w)
        w = None
        u.dev._reader.join(5)
        assert not u.dev._reader.is_alive()
        assert u.drain() == b"z"
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


# -- interrupts: IIR priority and THRE --------------------------------------------------------

def test_iir_reports_sources_in_priority_order(u):
    u.wr(S.FCR, S.FCR_ENABLE)
    u.wr(S.IER, 0x0F)
    u.wr(S.MCR, S.MCR_OUT2)
    u.dev.set_modem_lines(cts=False)  # modem status delta
    u.dev.inject_rx(bytes(FIFO_SIZE + 1))  # data available + overrun
    assert u.iir() == 0xC0 | S.IIR_RLS
    u.rd(S.LSR)  # clears OE -> RLS gone
    assert u.iir() == 0xC0 | S.IIR_RDA
    u.drain()
    assert u.iir() == 0xC0 | S.IIR_THRE  # this read acknowledges THRE
    assert u.iir() == 0xC0 | S.IIR_MSR
    assert u.irq.level
    u.rd(S.MSR)
    assert u.iir() == 0xC0 | S.IIR_NONE
    assert not u.irq.level


def test_receiver_line_status_interrupt_needs_elsi_and_clears_on_lsr_read(u):
    u.wr(S.MCR, S.MCR_OUT2)
    u.dev.inject_rx(b"ab")  # overrun in 16450 mode
    assert u.iir() == S.IIR_NONE  # ELSI off
    u.wr(S.IER, S.IER_ELSI)
    assert u.iir() == S.IIR_RLS and u.irq.level
    assert u.rd(S.LSR) & S.LSR_OE
    assert u.iir() == S.IIR_NONE and not u.irq.level


def test_enabling_etbei_with_empty_thr_raises_thre_and_iir_read_clears_it(u):
    u.wr(S.MCR, S.MCR_OUT2)
    u.wr(S.IER, S.IER_ETBEI)
    assert u.irq.calls == [True]
    assert u.iir() == S.IIR_THRE
    assert u.irq.calls == [True, False]
    assert u.iir() == S.IIR_NONE


def test_thr_write_rearms_thre_after_iir_acknowledged_it(u):
    u.wr(S.MCR, S.MCR_OUT2)
    u.wr(S.IER, S.IER_ETBEI)
    u.iir()
    assert not u.irq.level
    u.wr(S.THR, ord("A"))  # transmitted at once: THR empty again -> THRE pending
    assert u.irq.calls == [True, False, True]
    assert u.iir() == S.IIR_THRE
    assert u.dev.captured() == b"A"


def test_thre_survives_iir_read_that_reports_a_higher_priority_source(u):
    u.wr(S.IER, S.IER_ETBEI | S.IER_ERBFI)
    u.dev.inject_rx(b"x")
    assert u.iir() == S.IIR_RDA
    u.rd(S.RBR)
    assert u.iir() == S.IIR_THRE
    assert u.iir() == S.IIR_NONE


def test_linux_thre_retest_sequence_reasserts_thre_after_ier_toggle(u):
    # serial8250_do_startup: IER=THRI, read IIR, IER=0, IER=THRI, read IIR must show THRE again
    u.wr(S.IER, S.IER_ETBEI)
    assert u.iir() == S.IIR_THRE
    u.wr(S.IER, 0)
    u.wr(S.IER, S.IER_ETBEI)
    assert u.iir() == S.IIR_THRE


def test_clearing_etbei_drops_pending_thre(u):
    u.wr(S.MCR, S.MCR_OUT2)
    u.wr(S.IER, S.IER_ETBEI)
    u.wr(S.IER, 0)
    assert u.irq.calls == [True, False]
    assert u.iir() == S.IIR_NONE


def test_irq_callable_sees_only_level_changes(u):
    u.wr(S.MCR, S.MCR_OUT2)
    u.wr(S.IER, S.IER_ETBEI)
    u.send(b"many bytes, one level\n")
    u.wr(S.IER, S.IER_ETBEI | S.IER_ERBFI)
    assert u.irq.calls == [True]


# -- OUT2 gating -----------------------------------------------------------------------------

def test_out2_gates_the_interrupt_line(u):
    u.wr(S.IER, S.IER_ETBEI)
    assert u.irq.calls == []  # pending in IIR, but OUT2 is off
    u.wr(S.MCR, S.MCR_OUT2 | S.MCR_DTR | S.MCR_RTS)
    assert u.irq.calls == [True]
    u.wr(S.MCR, S.MCR_DTR | S.MCR_RTS)
    assert u.irq.calls == [True, False]
    assert u.iir() == S.IIR_THRE  # the source itself was untouched by the gate


def test_loopback_forces_out2_inactive_so_no_interrupt_reaches_the_line(u):
    u.wr(S.IER, S.IER_ERBFI)
    u.wr(S.MCR, S.MCR_LOOP | S.MCR_OUT2)
    u.wr(S.THR, 0x41)
    assert u.iir() == S.IIR_RDA
    assert u.irq.calls == []
    u.wr(S.MCR, S.MCR_OUT2)  # leave loopback: the pending RDA now reaches the line
    assert u.irq.calls == [True]


# -- loopback and modem status ---------------------------------------------------------------

def test_loopback_routes_tx_to_rx_and_not_to_output(u):
    u.wr(S.MCR, S.MCR_LOOP)
    u.send(b"ping")
    assert u.drain() == b"g"  # 16450 mode: each overrun overwrote the holding register
    u.wr(S.FCR, S.FCR_ENABLE)
    u.send(b"ping\n")
    assert u.drain() == b"ping\n"
    u.dev.flush()
    assert u.dev.captured() == b"" and u.sink.data == b""


@pytest.mark.parametrize("mcr_bit,msr_bit", [
    (S.MCR_DTR, S.MSR_DSR), (S.MCR_RTS, S.MSR_CTS),
    (S.MCR_OUT1, S.MSR_RI), (S.MCR_OUT2, S.MSR_DCD)])
def test_loopback_connects_each_mcr_output_to_its_msr_input(u, mcr_bit, msr_bit):
    u.wr(S.MCR, S.MCR_LOOP | mcr_bit)
    assert u.rd(S.MSR) & 0xF0 == msr_bit


def test_linux_loopback_probe_sees_dcd_and_cts(u):
    u.wr(S.MCR, S.MCR_LOOP | 0x0A)  # OUT2 | RTS
    assert u.rd(S.MSR) & 0xF0 == S.MSR_DCD | S.MSR_CTS


def test_msr_delta_bits_are_set_on_change_and_cleared_by_read(u):
    assert u.rd(S.MSR) & 0x0F == 0
    u.dev.set_modem_lines(cts=False, dsr=False, dcd=False)
    msr = u.rd(S.MSR)
    assert msr & 0x0F == S.MSR_DCTS | S.MSR_DDSR | S.MSR_DDCD
    assert msr & 0xF0 == 0
    assert u.rd(S.MSR) & 0x0F == 0
    u.dev.set_modem_lines(cts=True)
    assert u.rd(S.MSR) == S.MSR_CTS | S.MSR_DCTS


def test_teri_is_set_only_on_trailing_edge_of_ring(u):
    u.dev.set_modem_lines(ri=True)
    assert u.rd(S.MSR) & 0x0F == 0  # rising RI: no delta
    u.dev.set_modem_lines(ri=False)
    assert u.rd(S.MSR) & 0x0F == S.MSR_TERI


def test_loopback_mcr_changes_produce_msr_deltas(u):
    u.wr(S.MCR, S.MCR_LOOP | S.MCR_OUT1 | S.MCR_DTR | S.MCR_RTS | S.MCR_OUT2)
    u.rd(S.MSR)
    u.wr(S.MCR, S.MCR_LOOP)
    assert u.rd(S.MSR) == S.MSR_DCTS | S.MSR_DDSR | S.MSR_TERI | S.MSR_DDCD


def test_modem_status_interrupt_raised_by_delta_and_cleared_by_msr_read(u):
    u.wr(S.MCR, S.MCR_OUT2)
    u.wr(S.IER, S.IER_EDSSI)
    u.dev.set_modem_lines(dcd=False)
    assert u.irq.calls == [True]
    assert u.iir() == S.IIR_MSR
    assert u.rd(S.MSR) & S.MSR_DDCD
    assert u.irq.calls == [True, False]


# -- output ----------------------------------------------------------------------------------

def test_output_is_flushed_to_sink_at_newline(u):
    u.send(b"abc")
    assert u.sink.events == []
    u.send(b"\nde")
    assert u.sink.events == [b"abc\n", "flush"]
    u.dev.flush()
    assert u.sink.events == [b"abc\n", "flush", b"de", "flush"]


def test_long_line_without_newline_is_flushed_at_line_max(u):
    u.send(b"x" * LINE_MAX)
    assert u.sink.data == b"x" * LINE_MAX


def test_close_flushes_partial_line(u):
    u.send(b"bye")
    u.dev.close()
    assert u.sink.data == b"bye"


def test_capture_keeps_everything_transmitted(u):
    u.send(b"line one\nline two")
    assert u.dev.captured() == b"line one\nline two"
    assert u.dev.tx_bytes == 17


def test_capture_limit_counts_dropped_bytes():
    uart = Uart(capture_limit=4)
    uart.send(b"abcdef\n")
    assert uart.dev.captured() == b"abcd"
    assert uart.dev.capture_dropped == 3
    assert uart.sink.data == b"abcdef\n"


def test_captured_without_capture_raises():
    uart = Uart(capture=False)
    uart.send(b"hi\n")
    assert uart.sink.data == b"hi\n"
    with pytest.raises(RuntimeError):
        uart.dev.captured()


def test_real_binary_file_sink_gets_flushed_lines(tmp_path):
    path = tmp_path / "console.log"
    with open(path, "wb") as f:
        uart = Uart(output=f)
        uart.send(b"boot ok\n")
        assert path.read_bytes() == b"boot ok\n"  # flushed, not sitting in Python's buffer


def test_failing_sink_is_logged_once_and_the_guest_keeps_running(caplog):
    class Broken(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise BrokenPipeError(32, "Broken pipe")

    uart = Uart(output=Broken())
    uart.wr(S.MCR, S.MCR_OUT2)
    uart.wr(S.IER, S.IER_ETBEI)
    with caplog.at_level(logging.WARNING, logger="hvkvm.vsp.serial"):
        uart.send(b"one\ntwo\nthree\n")
    assert len(caplog.records) == 1
    assert uart.dev.captured() == b"one\ntwo\nthree\n"
    assert uart.iir() == S.IIR_THRE


# -- reset and whole-driver probes -----------------------------------------------------------

def test_reset_restores_power_on_state_and_lowers_irq(u):
    u.wr(S.MCR, S.MCR_OUT2 | S.MCR_DTR)
    u.wr(S.IER, 0x0F)
    u.wr(S.FCR, 0xC1)
    u.wr(S.LCR, 0x1B)
    u.wr(S.SCR, 0x5A)
    u.dev.inject_rx(b"junk")
    assert u.irq.level
    u.dev.reset()
    assert not u.irq.level
    assert [u.rd(o) for o in range(1, 8)] == [0, 0x01, 0, 0, 0x60, 0xB0, 0]


def test_linux_8250_autoconfig_sees_a_16550a(u):
    """The probe sequence of drivers/tty/serial/8250 autoconfig(), reduced to its checks."""
    # IER test: writable low nibble, 0 after writing 0
    u.wr(S.IER, 0)
    assert u.rd(S.IER) & 0x0F == 0
    u.wr(S.IER, 0x0F)
    assert u.rd(S.IER) & 0x0F == 0x0F
    u.wr(S.IER, 0)
    # loopback test
    u.wr(S.MCR, S.MCR_LOOP | 0x0A)
    assert u.rd(S.MSR) & 0xF0 == 0x90
    u.wr(S.MCR, 0)
    # EFR write in config mode B lands on FCR; then FIFO enable identifies the 16550 family
    u.wr(S.LCR, 0xBF)
    u.wr(S.FCR, 0)
    u.wr(S.LCR, 0)
    u.wr(S.FCR, S.FCR_ENABLE)
    assert u.iir() >> 6 == 3
    # no EFR: reading "EFR" under DLAB must not read 0 (that would be an ST16C650/XR16C850)
    for lcr in (0x80, 0xBF):
        u.wr(S.LCR, lcr)
        assert u.iir() != 0
    # not a 16750: IIR bit 5 never follows FCR bit 5
    u.wr(S.LCR, 0x80)
    u.wr(S.FCR, S.FCR_ENABLE | 0x20)
    status1 = u.iir() >> 5
    u.wr(S.LCR, 0)
    u.wr(S.FCR, S.FCR_ENABLE | 0x20)
    status2 = u.iir() >> 5
    assert not (status1 == 6 and status2 == 7)
    # divisor-latch ID probe (Exar) reads back what was written, here 0
    u.wr(S.LCR, 0x80)
    u.wr(S.DLL, 0)
    u.wr(S.DLM, 0)
    assert u.rd(S.DLL) | (u.rd(S.DLM) << 8) == 0
    u.wr(S.LCR, 0)
    u.wr(S.SCR, 0xA5)
    assert u.rd(S.SCR) == 0xA5
