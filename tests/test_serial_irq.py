"""COM1 interrupts reach a real guest through KVM's in-kernel irqchip.

The ``serial_irq`` image routes IOAPIC GSI 4 to its own vector (the 8259s masked, so nothing else
can deliver it), enables the UART's receive-data interrupt and sends SYNC 1; the host then queues
input on the emulated 16550A, whose IRQ callback drives ``KVM_IRQ_LINE`` for GSI 4. The guest only
sleeps (``sti; hlt``) until its interrupt handler has read a whole line, so a pass means the line
arrived by interrupts. It then checks a THRE interrupt and reports its counts in SYNC 2
(values: interrupts taken, receive identifications, THRE identifications, bytes received).
"""

from __future__ import annotations

import threading
import time

import pytest

from hvkvm import images
from hvkvm.partition.config import PartitionConfig

pytestmark = pytest.mark.kvm

UART_VECTOR = 0x44


def run_serial_irq(make_partition, cmdline, feed):
    """Run serial_irq; ``feed(partition)`` is called at SYNC 1. Returns (result, SYNC 2 values)."""
    box = {}

    def on_sync(index, uc):
        if uc.args[0] == 1:
            feed(box["p"])

    cfg = PartitionConfig(image=images.image_path("serial_irq"), cmdline=cmdline, timeout=60,
                          on_sync=on_sync)
    box["p"] = p = make_partition(cfg)
    result = p.run()
    stage2 = [args for _, args in result.syncs if args[0] == 2]
    return result, (dict(zip(("irqs", "rx", "thre", "bytes"), stage2[0][1:5])) if stage2 else None)


@pytest.mark.parametrize("trigger", ["edge", "level"])
def test_com1_input_reaches_the_guest_by_ioapic_interrupt(make_partition, trigger):
    r, counts = run_serial_irq(make_partition, f"serial_irq expect=ping trigger={trigger}",
                               lambda p: p.serial.queue_input(b"ping\n"))
    assert r.passed, f"{r.reason}\n{r.serial.decode(errors='replace')}"
    assert b"got: ping\n" in r.serial
    assert r.syncs[0][1][:3] == (1, UART_VECTOR, 1 if trigger == "level" else 0)
    assert counts is not None, r.syncs
    assert counts["irqs"] > 0 and counts["rx"] > 0
    assert counts["bytes"] == len(b"ping\n")


def test_thre_interrupt_arrives_when_etbei_is_enabled(make_partition):
    r, counts = run_serial_irq(make_partition, "serial_irq expect=ping",
                               lambda p: p.serial.queue_input(b"ping\n"))
    assert r.passed, r.reason
    assert counts["thre"] == 1
    assert counts["irqs"] >= 2  # at least one for the receive, one for THRE
    assert b"1 THRE" in r.serial


def test_input_in_pieces_raises_an_interrupt_per_piece(make_partition):
    """With an edge-triggered entry each burst must be a new edge: the guest's handler empties the
    UART (line low) before the next one, so later bursts are delivered, not lost."""
    feeder = []

    def feed(p):
        def pieces():
            for piece in (b"pi", b"n", b"g", b"\n"):
                time.sleep(0.05)
                p.serial.queue_input(piece)
        t = threading.Thread(target=pieces, daemon=True)
        feeder.append(t)
        t.start()

    r, counts = run_serial_irq(make_partition, "serial_irq expect=ping trigger=edge", feed)
    for t in feeder:
        t.join(timeout=5)
    assert r.passed, r.reason
    assert b"got: ping\n" in r.serial
    assert counts["bytes"] == 5
    # Normally one receive interrupt per piece; at least two proves re-delivery after the first.
    assert counts["rx"] >= 2, counts


def test_line_other_than_expected_is_a_guest_assert(make_partition):
    r, _ = run_serial_irq(make_partition, "serial_irq expect=pong",
                          lambda p: p.serial.queue_input(b"ping\n"))
    assert r.status == "assert", r.reason
    assert "got 'ping', expected 'pong'" in r.reason
    assert b"got: " not in r.serial
