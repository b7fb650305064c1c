"""A 16550A UART (COM1 at port 0x3f8, IRQ 4) as a port-I/O bus device.

Complete enough for Linux's 8250 driver: it passes the driver's autoconfig probes as a 16550A
(IER upper bits read 0, IIR bits 7:6 = 11 with FIFOs on, IIR bit 5 stays 0 so it is not taken for
a 16750, loopback MSR test), the THRE re-assert test at startup, and its interrupt handler.

Model and choices (the facts come from the PC16550D data sheet):

* **Transmission is instantaneous.** A THR write transmits at once, so LSR.THRE and LSR.TEMT
  always read 1 and the TX FIFO is always empty. A THR write clears a pending THRE interrupt and
  the completed transmission re-arms it at once, as real hardware does one character time later:
  with IER.ETBEI set, THRE is pending again after every THR write.
* **THRE interrupt**: pending when IER.ETBEI goes 0 -> 1 (THR is empty) and after each
  transmission; cleared by an IIR read that reports it, by a THR write (see above) and by
  clearing IER.ETBEI.
* **Receive timeout**: bytes reach the UART in bursts, not at line rate, so the "4 character
  times without a read" that start the character-timeout indication are taken as already
  elapsed. With FIFOs on, 0 < count < trigger level reports IIR 0x0c at once; count >= trigger
  reports 0x04. Without FIFOs the holding register reports 0x04.
* **Host input is flow controlled**: :meth:`Serial16550.queue_input` keeps bytes in a host
  backlog and moves them into the RX FIFO as the guest makes room, the way a terminal
  behind RTS/CTS would, so typed or pasted input is never lost. Overrun (LSR.OE) comes from
  line-level arrivals: loopback transmission into a full FIFO, or :meth:`Serial16550.inject_rx`.
  A full FIFO keeps its bytes and loses the new one; without FIFOs the new byte overwrites the
  holding register (data sheet behaviour for each mode).
* **Loopback (MCR.LOOP)**: TX goes to RX and not to the output; the serial input is disconnected,
  so host input waits in the backlog; MSR inputs follow MCR (DTR->DSR, RTS->CTS, OUT1->RI,
  OUT2->DCD). The MCR output pins are forced inactive in loopback (data sheet), and on PC
  hardware the OUT2 pin gates the IRQ line, so **no interrupt reaches the guest in loopback**
  even though IIR reports sources normally.
* **Modem inputs** outside loopback are a connected, idle line: DCD, DSR and CTS asserted, RI not
  (:meth:`Serial16550.set_modem_lines` changes them). Any change of the effective inputs sets the
  matching MSR delta bit (TERI only when RI falls); reading MSR clears the deltas.
* **IRQ line** = (a source is pending in IIR) and MCR.OUT2 and not loopback. The ``irq`` callable
  is called with the new level only when it changes, under the device lock (so calls from
  several vCPU threads arrive in order); it must not call back into this device.
* **Wider accesses** (``inw``/``inl`` on a UART port) are split into byte accesses at
  consecutive offsets, lowest first, as an 8-bit ISA device sees them; each has its side effects.
  RBR reads 0 when the receiver is empty.
* **Output**: transmitted bytes go to a binary sink, flushed at each newline, when a line exceeds
  :data:`LINE_MAX` bytes, and on :meth:`Serial16550.flush` / :meth:`Serial16550.close`; sink
  writes happen under the device lock so output from several vCPUs keeps its order. If the sink
  fails (closed pipe), the error is logged once and further output is discarded.
"""

from __future__ import annotations

import collections
import os
import select
import threading
from typing import BinaryIO, Callable

from .._lazy import logger as _lazy_logger

__all__ = [
    "Serial16550",
    "COM1_BASE", "COM1_IRQ", "COM2_BASE", "COM2_IRQ", "UART_PORT_COUNT", "BAUD_BASE",
    "FIFO_SIZE", "LINE_MAX",
]

log = _lazy_logger("hvkvm.vsp.serial")  # logging is imported on first use

#: Standard PC port base and ISA IRQ (GSI) of COM1 and COM2.
COM1_BASE, COM1_IRQ = 0x3F8, 4
COM2_BASE, COM2_IRQ = 0x2F8, 3
#: Ports a 16550 occupies on the bus (the length to insert it with).
UART_PORT_COUNT = 8
#: Baud rate at divisor 1 with the PC's 1.8432 MHz crystal (the clock divided by 16).
BAUD_BASE = 115200
#: Depth of the 16550A receive FIFO.
FIFO_SIZE = 16
#: Output is flushed to the sink at the latest after this many bytes without a newline.
LINE_MAX = 4096

# Register offsets (DLL/DLM alias RBR/THR and IER when LCR.DLAB = 1).
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7

# IER bits.
IER_ERBFI, IER_ETBEI, IER_ELSI, IER_EDSSI = 0x01, 0x02, 0x04, 0x08
# IIR interrupt identifications (bits 3:0) and the FIFOs-enabled bits (7:6).
IIR_NONE, IIR_MSR, IIR_THRE, IIR_RDA, IIR_RLS, IIR_TIMEOUT = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FIFO = 0xC0
# FCR bits.
FCR_ENABLE, FCR_CLEAR_RX, FCR_CLEAR_TX, FCR_DMA = 0x01, 0x02, 0x04, 0x08
# LCR, MCR bits.
LCR_DLAB = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
# LSR bits.
LSR_DR, LSR_OE, LSR_PE, LSR_FE, LSR_BI, LSR_THRE, LSR_TEMT, LSR_FIFO_ERR = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)
# MSR bits.
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80

_TRIGGER_LEVELS = (1, 4, 8, 14)
_DEFAULT_MODEM_INPUTS = MSR_DCD | MSR_DSR | MSR_CTS
_DEFAULT_DIVISOR = 12  # 9600 baud; firmware and Linux reprogram it anyway
_DEFAULT_BACKLOG_LIMIT = 1 << 20
_DEFAULT_CAPTURE_LIMIT = 16 << 20


class Serial16550:
    """A 16550A UART on the port-I/O bus (insert it with length :data:`UART_PORT_COUNT`).

    ``irq`` is ``set_level(level: bool) -> None``, called only when the interrupt line changes
    (the partition wires it to ``KVM_IRQ_LINE`` for the UART's GSI); None leaves it unconnected.
    ``output`` is a binary file object receiving transmitted bytes (None discards them).
    ``capture=True`` also keeps everything transmitted in memory for :meth:`captured`, up to
    ``capture_limit`` bytes (later bytes are counted in :attr:`capture_dropped`).
    ``backlog_limit`` bounds host input waiting for FIFO room. All methods are thread-safe.
    """

    def __init__(
        self,
        irq: Callable[[bool], None] | None = None,
        output: BinaryIO | None = None,
        *,
        capture: bool = False,
        name: str = "com1",
        capture_limit: int = _DEFAULT_CAPTURE_LIMIT,
        backlog_limit: int = _DEFAULT_BACKLOG_LIMIT,
    ):
        self.name = name
        self._irq = irq
        self._sink = output
        self._capture: bytearray | None = bytearray() if capture else None
        self._capture_limit = capture_limit
        self._backlog_limit = max(1, backlog_limit)
        self._lock = threading.Lock()
        # The stdin reader waits on this for backlog room; same lock, so state stays consistent.
        self._cond = threading.Condition(self._lock)
        self._rx: collections.deque[int] = collections.deque()
        self._backlog = bytearray()
        self._linebuf = bytearray()
        self._modem_in = _DEFAULT_MODEM_INPUTS
        self._irq_level = False
        self._closed = False
        self._reader: threading.Thread | None = None
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._sink_failed = False
        self._input_drop_logged = False
        #: Bytes the guest transmitted (loopback included).
        self.tx_bytes = 0
        #: Bytes that entered the receiver (host input and loopback).
        self.rx_bytes = 0
        #: Received bytes lost to overrun.
        self.overruns = 0
        #: Host input bytes dropped because the backlog was full.
        self.input_dropped = 0
        #: Transmitted bytes not captured because the capture reached its limit.
        self.capture_dropped = 0
        self._reset_registers()

    # -- power-on state ---------------------------------------------------------------------

    def _reset_registers(self) -> None:
        self._ier = 0
        self._lcr = 0
        self._mcr = 0
        self._scr = 0
        self._divisor = _DEFAULT_DIVISOR
        self._fifo_enabled = False
        self._fcr_sticky = 0
        self._trigger = 1
        self._rx.clear()
        self._oe = False
        self._thr_pending = False
        self._msr_delta = 0
        self._msr_in = self._inputs()

    def reset(self) -> None:
        """Return the registers to their power-on state (a guest reset); host backlog is kept."""
        with self._lock:
            self._reset_registers()
            self._pump_backlog()
            self._update_irq()

    # -- BusDevice ----------------------------------------------------------------------------

    def read(self, offset: int, data: memoryview) -> None:
        """Bus read: each byte of ``data`` is a register read at ``offset + i``."""
        with self._lock:
            for i in range(len(data)):
                data[i] = self._read_reg(offset + i)
            self._update_irq()

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Bus write: each byte of ``data`` is a register write at ``offset + i``."""
        with self._lock:
            for i, value in enumerate(bytes(data)):
                self._write_reg(offset + i, value)
            self._update_irq()

    # -- registers (lock held) ----------------------------------------------------------------

    def _read_reg(self, off: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if off == RBR:
            if dlab:
                return self._divisor & 0xFF
            value = self._rx.popleft() if self._rx else 0
            self._pump_backlog()
            return value
        if off == IER:
            return (self._divisor >> 8) if dlab else self._ier
        if off == IIR:
            iid = self._iid()
            if iid == IIR_THRE:
                # Reading IIR acknowledges THRE only when THRE is the source it reports.
                self._thr_pending = False
            return iid | (IIR_FIFO if self._fifo_enabled else 0)
        if off == LCR:
            return self._lcr
        if off == MCR:
            return self._mcr
        if off == LSR:
            value = self._lsr()
            self._oe = False
            return value
        if off == MSR:
            value = self._msr_in | self._msr_delta
            self._msr_delta = 0
            return value
        if off == SCR:
            return self._scr
        return 0xFF

    def _write_reg(self, off: int, value: int) -> None:
        dlab = self._lcr & LCR_DLAB
        if off == THR:
            if dlab:
                self._divisor = (self._divisor & 0xFF00) | value
            else:
                self._transmit(value)
        elif off == IER:
            if dlab:
                self._divisor = (self._divisor & 0x00FF) | (value << 8)
            else:
                old = self._ier
                self._ier = value & 0x0F
                rose = self._ier & ~old & IER_ETBEI
                if rose:
                    # A real 16550 raises THRE as soon as the interrupt is enabled with THR
                    # empty; Linux's startup test (UART_BUG_THRE/TXEN) checks for it.
                    self._thr_pending = True
                elif not self._ier & IER_ETBEI:
                    self._thr_pending = False
        elif off == FCR:
            self._write_fcr(value)
        elif off == LCR:
            self._lcr = value
        elif off == MCR:
            was_loop = self._mcr & MCR_LOOP
            self._mcr = value & 0x1F
            self._modem_inputs_changed()
            if was_loop and not self._mcr & MCR_LOOP:
                self._pump_backlog()
        elif off == SCR:
            self._scr = value
        # LSR and MSR writes are factory-test features; they are ignored.

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if enable != self._fifo_enabled:
            # Changing the FIFO mode empties both FIFOs (data sheet).
            self._rx.clear()
            self._fifo_enabled = enable
        if enable:
            # The other FCR bits are only written while FCR0 is 1 (data sheet).
            if value & FCR_CLEAR_RX:
                self._rx.clear()
            self._trigger = _TRIGGER_LEVELS[value >> 6]
            self._fcr_sticky = value & (0xC0 | FCR_DMA | FCR_ENABLE)
        else:
            self._fcr_sticky = 0
        self._pump_backlog()

    def _transmit(self, value: int) -> None:
        self._thr_pending = False
        self.tx_bytes += 1
        if self._mcr & MCR_LOOP:
            self._receive_wire(value)
        else:
            self._emit(value)
        # THR is empty again at once (see the module docstring).
        self._thr_pending = True

    def _capacity(self) -> int:
        return FIFO_SIZE if self._fifo_enabled else 1

    def _receive_wire(self, value: int) -> None:
        self.rx_bytes += 1
        if len(self._rx) < self._capacity():
            self._rx.append(value)
            return
        self._oe = True
        self.overruns += 1
        if not self._fifo_enabled:
            # Without FIFOs the new character overwrites the unread one.
            self._rx[-1] = value

    def _pump_backlog(self) -> None:
        if not self._backlog or self._mcr & MCR_LOOP:
            return
        n = min(self._capacity() - len(self._rx), len(self._backlog))
        if n <= 0:
            return
        self._rx.extend(self._backlog[:n])
        del self._backlog[:n]
        self.rx_bytes += n
        self._cond.notify_all()

    def _lsr(self) -> int:
        value = LSR_THRE | LSR_TEMT
        if self._rx:
            value |= LSR_DR
        if self._oe:
            value |= LSR_OE
        return value

    def _inputs(self) -> int:
        mcr = self._mcr
        if mcr & MCR_LOOP:
            return (((mcr & MCR_DTR) << 5) | ((mcr & MCR_RTS) << 3)
                    | ((mcr & MCR_OUT1) << 4) | ((mcr & MCR_OUT2) << 4))
        return self._modem_in

    def _modem_inputs_changed(self) -> None:
        new = self._inputs()
        old = self._msr_in
        changed = new ^ old
        self._msr_delta |= (changed >> 4) & (MSR_DCTS | MSR_DDSR | MSR_DDCD)
        if old & MSR_RI and not new & MSR_RI:
            self._msr_delta |= MSR_TERI
        self._msr_in = new

    def _iid(self) -> int:
        ier = self._ier
        if ier & IER_ELSI and self._oe:
            return IIR_RLS
        if ier & IER_ERBFI and self._rx:
            if self._fifo_enabled and len(self._rx) < self._trigger:
                return IIR_TIMEOUT
            return IIR_RDA
        if ier & IER_ETBEI and self._thr_pending:
            return IIR_THRE
        if ier & IER_EDSSI and self._msr_delta:
            return IIR_MSR
        return IIR_NONE

    def _update_irq(self) -> None:
        level = (self._iid() != IIR_NONE
                 and (self._mcr & (MCR_OUT2 | MCR_LOOP)) == MCR_OUT2)
        if level != self._irq_level:
            self._irq_level = level
            if self._irq is not None:
                self._irq(level)

    # -- output ------------------------------------------------------------------------------

    def _emit(self, value: int) -> None:
        cap = self._capture
        if cap is not None:
            if len(cap) < self._capture_limit:
                cap.append(value)
            else:
                self.capture_dropped += 1
        self._linebuf.append(value)
        if value == 0x0A or len(self._linebuf) >= LINE_MAX:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._linebuf:
            return
        chunk = bytes(self._linebuf)
        self._linebuf.clear()
        sink = self._sink
        if sink is None or self._sink_failed:
            return
        try:
            view = memoryview(chunk)
            while view:
                n = sink.write(view)
                if n is None:  # a non-blocking raw sink that would block: drop the rest
                    break
                view = view[n:]
            sink.flush()
        except (OSError, ValueError) as e:
            # A closed terminal or pipe must not take the vCPU thread down with it.
            self._sink_failed = True
            log.warning("%s: output sink failed (%s); further output is discarded", self.name, e)

    def flush(self) -> None:
        """Write any buffered partial line to the output sink and flush the sink."""
        with self._lock:
            self._flush_locked()

    def captured(self) -> bytes:
        """Everything the guest transmitted so far (loopback excluded); needs ``capture=True``."""
        with self._lock:
            if self._capture is None:
                raise RuntimeError(f"{self.name}: created without capture=True")
            return bytes(self._capture)

    # -- input -------------------------------------------------------------------------------

    def queue_input(self, data: bytes) -> None:
        """Feed host input to the receiver, raising the RX interrupt as the FIFO fills.

        Bytes beyond the FIFO's room wait in the host backlog and follow as the guest reads
        (never an overrun). While loopback is on, input waits. Once ``backlog_limit`` bytes are
        waiting, newer bytes are dropped, counted in :attr:`input_dropped` and logged once.
        """
        with self._lock:
            # The FIFO takes its share first; the limit bounds only what is left waiting.
            self._backlog += data
            self._pump_backlog()
            excess = len(self._backlog) - self._backlog_limit
            if excess > 0:
                del self._backlog[self._backlog_limit:]
                self.input_dropped += excess
                if not self._input_drop_logged:
                    self._input_drop_logged = True
                    log.warning("%s: input backlog full; dropped %d bytes (logged once)",
                                self.name, excess)
            self._update_irq()

    def inject_rx(self, data: bytes) -> None:
        """Deliver bytes as if they arrived on the line at full speed, without flow control.

        Bytes that find the receiver full are lost with LSR.OE set (an overrun), as on a real
        line; in loopback the line input is disconnected and the bytes are lost silently.
        For tests and hostile-input checks; interactive input uses :meth:`queue_input`.
        """
        with self._lock:
            if not self._mcr & MCR_LOOP:
                for value in data:
                    self._receive_wire(value)
            self._update_irq()

    def set_modem_lines(self, *, cts: bool | None = None, dsr: bool | None = None,
                        ri: bool | None = None, dcd: bool | None = None) -> None:
        """Change the modem status inputs seen outside loopback (None leaves a line as it is)."""
        with self._lock:
            for bit, state in ((MSR_CTS, cts), (MSR_DSR, dsr), (MSR_RI, ri), (MSR_DCD, dcd)):
                if state is not None:
                    self._modem_in = (self._modem_in | bit) if state else (self._modem_in & ~bit)
            self._modem_inputs_changed()
            self._update_irq()

    # -- introspection -----------------------------------------------------------------------

    @property
    def irq_level(self) -> bool:
        """The interrupt line's current level."""
        return self._irq_level

    @property
    def divisor(self) -> int:
        """The 16-bit baud divisor the guest programmed (DLM:DLL)."""
        return self._divisor

    @property
    def baud(self) -> int | None:
        """The baud rate the divisor selects, or None for divisor 0."""
        d = self._divisor
        return BAUD_BASE // d if d else None

    # -- stdin thread and lifetime -----------------------------------------------------------

    def start_stdin_reader(self, fd: int) -> None:
        """Start a daemon thread feeding bytes read from ``fd`` to :meth:`queue_input`.

        Only called when the caller wants an interactive console; putting a terminal in raw
        mode is the caller's business. The thread stops at EOF, on a read error or on
        :meth:`close`, and stops reading while the backlog is full so input waits in the
        kernel. ``fd`` stays owned (and open) by the caller.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: closed")
            if self._reader is not None:
                raise RuntimeError(f"{self.name}: stdin reader already started")
            self._wake_r, self._wake_w = os.pipe()
            self._reader = threading.Thread(
                target=self._stdin_loop, args=(fd, self._wake_r),
                name=f"hvkvm-{self.name}-stdin", daemon=True)
            self._reader.start()

    def _stdin_loop(self, fd: int, wake_r: int) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._backlog) >= self._backlog_limit:
                    self._cond.wait()
                if self._closed:
                    return
                room = self._backlog_limit - len(self._backlog)
            try:
                ready, _, _ = select.select([fd, wake_r], [], [])
                if wake_r in ready:
                    return
                chunk = os.read(fd, min(4096, room))
            except BlockingIOError:
                continue
            except (OSError, ValueError) as e:
                log.warning("%s: stdin reader stopped: %s", self.name, e)
                return
            if not chunk:
                log.debug("%s: stdin reached EOF", self.name)
                return
            self.queue_input(chunk)

    def close(self) -> None:
        """Stop the stdin thread (if any) and flush output. Idempotent; the sink stays open.

        The device keeps answering the guest after close (output still reaches the sink);
        only the host-side input thread is gone.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            reader, wake_r, wake_w = self._reader, self._wake_r, self._wake_w
            self._wake_r = self._wake_w = None
        if wake_w is not None:
            os.write(wake_w, b"x")
        if reader is not None and reader is not threading.current_thread():
            reader.join()
        for fd in (wake_r, wake_w):
            if fd is not None:
                os.close(fd)
        self.flush()

    def __enter__(self) -> "Serial16550":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
