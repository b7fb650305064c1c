"""The echo VSP: every in-band packet the guest sends comes back with the same payload and
trans_id. A Python data plane: the reference the C paths and the benchmarks compare against."""

from __future__ import annotations

import os
import threading
import uuid

from ..vmbus.ring import VM_PKT_DATA_INBAND, packet_total
from ..vmbus.server import OpenChannel, Vsp

#: hvkvm's echo device class (not a Hyper-V device; guest_images/images/vmbus_echo finds it).
HVKVM_ECHO_GUID = uuid.UUID("9d3c5b4e-6f0a-4c8e-b1d2-6876766b6563")
#: A packet whose trans_id has this bit is consumed without an answer (one-way throughput).
ECHO_ONE_WAY = 1 << 63


class EchoVsp(Vsp):
    """Echoes in-band packets; counts packets, bytes and ring errors.

    ``plane="python"`` serves the channel from the notifier thread (one Python call per guest
    kick); ``plane="c"`` hands it to a C data-plane thread (``csrc/hvr_plane.c``) that polls
    under load and never enters Python. ``partition`` is needed for the C plane (irqfd routes).
    """

    class_id = HVKVM_ECHO_GUID
    name = "echo"

    def __init__(self, instance_id: uuid.UUID | None = None, plane: str = "python",
                 spin_us: int = 50):
        if plane not in ("python", "c"):
            raise ValueError(f"echo plane must be python or c, not {plane!r}")
        self.instance_id = instance_id or uuid.uuid4()
        self.plane = plane
        self.python_signals = plane == "python"
        self.spin_us = spin_us
        self.packets = 0
        self.bytes = 0
        self.dropped = 0
        self.broken: str | None = None
        self.planes: dict[int, object] = {}
        self.closed_stats: list[dict] = []
        self._lock = threading.Lock()

    def open(self, channel: OpenChannel) -> int:
        """Build the C plane (not started: no signal may precede OPENCHANNEL_RESULT)."""
        if self.plane == "c":
            from ..vmbus.plane import CDataPlane
            self.planes[channel.relid] = CDataPlane(channel.server.partition, channel, "echo",
                                                    self.spin_us)
        return 0

    def started(self, channel: OpenChannel) -> None:
        """Start the C plane, or serve what the guest queued before the open completed."""
        if self.plane == "c":
            self.planes[channel.relid].start()
        else:
            # Let the notifier thread serve it: started() runs on the vCPU thread inside the
            # guest's OPENCHANNEL hypercall, which must not wait for a data path.
            os.eventfd_write(channel.eventfd, 1)

    def close(self, channel: OpenChannel) -> None:
        """Stop the channel's C plane (its counters are kept in :attr:`closed_stats`)."""
        plane = self.planes.pop(channel.relid, None)
        if plane is not None:
            self.closed_stats.append(plane.stats)
            self.packets += plane.stats["packets"]
            self.bytes += plane.stats["bytes"]
            plane.close()

    def on_signal(self, channel: OpenChannel) -> None:
        """Drain the guest's ring, echoing each in-band packet; stop while our ring is full."""
        from ..vmbus.ring import RingBrokenError
        inr, outr = channel.inring, channel.outring
        with self._lock:
            try:
                while True:
                    moved = False
                    while True:
                        pkt = inr.peek()
                        if pkt is None:
                            break
                        if pkt.type == VM_PKT_DATA_INBAND and pkt.trans_id & ECHO_ONE_WAY:
                            self.packets += 1
                            self.bytes += len(pkt.payload)
                        elif pkt.type == VM_PKT_DATA_INBAND:
                            if packet_total(len(pkt.payload)) > outr.data_size - 8:
                                # The guest's receive ring can never hold this echo (the C
                                # plane stops on it too): stop serving the channel.
                                raise _NeverFits(len(pkt.payload), outr.data_size)
                            if not outr.write(pkt.payload, trans_id=pkt.trans_id):
                                # Our ring is full: ask the guest to signal when it has read
                                # enough (pending_send_sz), and leave this packet for then.
                                if outr.request_space(packet_total(len(pkt.payload))):
                                    continue
                                break
                            self.packets += 1
                            self.bytes += len(pkt.payload)
                        else:
                            self.dropped += 1
                        inr.read()
                        moved = True
                    if outr.commit():
                        channel.signal_guest()
                    if inr.commit():
                        channel.signal_guest()
                    if not moved or inr.available == 0:
                        break
            except (RingBrokenError, _NeverFits) as e:
                # A corrupt ring closes nothing else: this channel stops being served.
                self.broken = str(e)
                channel.server.channels._error("ring", f"relid {channel.relid}: {e}")


class _NeverFits(Exception):
    def __init__(self, payload: int, ring: int):
        super().__init__(f"an echo of {payload} bytes never fits the guest's {ring}-byte "
                         f"receive ring")
