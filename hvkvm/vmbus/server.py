"""The VMBus server of a partition: channel protocol + rings + signals, and the VSP interface.

:class:`VmbusServer` binds the protocol state machine (:mod:`.channels`) to the partition's
Hyper-V interface: guest channel messages arrive through HvPostMessage on connection ids 1 and 4,
answers go out as SynIC messages; an opened channel gets its two rings mapped from the ring GPADL
(double mapped, :mod:`.ringmap`), an eventfd that KVM signals on the guest's HvSignalEvent (no
userspace exit), and a way to interrupt the guest (event flag ``relid`` + SINT2).

A VSP implements :class:`Vsp`. Python VSPs get ``on_signal`` calls from one notifier thread per
partition; C data planes take the channel's eventfd and ring addresses and never enter Python.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import uuid
from dataclasses import dataclass, field

from . import wire as w
from .channels import STATUS_UNSUCCESSFUL, Channel, ChannelServer, Offer, OpenRequest

log = logging.getLogger("hvkvm.vmbus")

VMBUS_MESSAGE_TYPE = 1   # the SynIC message type VMBus channel messages travel as


class Vsp:
    """A device provider on the VMBus. Subclasses set the class GUID and override the hooks."""

    class_id: uuid.UUID
    instance_id: uuid.UUID | None = None
    user_defined: bytes = b""
    name = "vsp"
    #: True: the notifier thread calls :meth:`on_signal` when the guest kicks. A VSP whose data
    #: plane is C sets False and hands ``channel.eventfd`` to its thread instead.
    python_signals = True

    def offer(self) -> Offer:
        """The channel offer for this VSP."""
        return Offer(self.class_id, self.instance_id or uuid.uuid4(), self.user_defined)

    def open(self, channel: "OpenChannel") -> int:
        """The guest opened the channel; return 0 to accept (do not signal the guest yet)."""
        return 0

    def started(self, channel: "OpenChannel") -> None:
        """OPENCHANNEL_RESULT went out: the channel may now signal the guest."""

    def on_signal(self, channel: "OpenChannel") -> None:
        """The guest signalled the channel (HvSignalEvent); runs on the notifier thread."""

    def close(self, channel: "OpenChannel") -> None:
        """The channel is closing: stop using its rings before this returns."""


class ChannelThread:
    """A VSP's thread for one open channel (storvsc, netvsc): it runs ``_run`` until close.

    Subclasses implement ``_run``, which polls ``_stop_fd`` beside its own descriptors and
    returns once ``_closed`` is set; their ``close()`` calls :meth:`_stop_thread` first, then
    releases what the thread used, and closes ``_stop_fd`` last.
    """

    def __init__(self, name: str):
        self._lock = threading.Lock()
        self._closed = False
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the channel's thread."""
        self._thread.start()

    def _stop_thread(self) -> None:
        """Mark the channel closed, wake the thread and wait for it (unless called from it)."""
        with self._lock:
            self._closed = True
        os.eventfd_write(self._stop_fd, 1)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()


@dataclass
class OpenChannel:
    """An open channel as a VSP sees it: its rings, signals both ways, and counters."""

    relid: int
    connection_id: int
    target_vp: int
    userdata: bytes
    inring: object            # hvkvm.vmbus.ring.InRing over the guest's send ring
    outring: object           # hvkvm.vmbus.ring.OutRing over the guest's receive ring
    eventfd: int              # signalled by KVM when the guest kicks this channel
    server: "VmbusServer"
    mappings: list = field(default_factory=list)
    guest_signals: int = 0
    host_signals: int = 0

    def signal_guest(self) -> None:
        """Interrupt the guest for this channel: event flag ``relid`` in SINT2, then the SINT."""
        self.host_signals += 1
        self.server.hv.signal_event(self.target_vp, w.VMBUS_MESSAGE_SINT, self.relid)


class Notifier:
    """One thread that waits on channel eventfds and calls their Python handlers."""

    def __init__(self):
        self._sel = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel.register(self._wake, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._stop = False
        #: Exceptions raised by channel handlers (VSP bugs), counted.
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, name="hvkvm-vmbus-notifier",
                                        daemon=True)
        self._thread.start()

    def add(self, fd: int, callback) -> None:
        """Call ``callback()`` whenever ``fd`` (an eventfd) is signalled."""
        with self._lock:
            self._sel.register(fd, selectors.EVENT_READ, callback)
        os.eventfd_write(self._wake, 1)

    def remove(self, fd: int) -> None:
        """Stop watching ``fd``; after this returns its handler is not running and will not run."""
        with self._lock:
            try:
                self._sel.unregister(fd)
            except KeyError:
                pass

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=1.0):
                if key.data is None:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                    continue
                try:
                    os.eventfd_read(key.fd)
                except (BlockingIOError, OSError):
                    continue
                # Under the lock, so remove() waits for a running handler: a channel's rings are
                # never unmapped under its VSP.
                with self._lock:
                    if key.fd not in self._sel.get_map():
                        continue
                    try:
                        key.data()
                    except Exception:  # one VSP's bug must not stop every channel's signals
                        # ... nor let a guest that keeps kicking flood the log: the 1st, 2nd,
                        # 4th, ... failure is logged.
                        self.failures += 1
                        if self.failures & (self.failures - 1) == 0:
                            log.exception("vmbus: channel handler failed (%d failures so far)",
                                          self.failures)

    def close(self) -> None:
        """Stop the thread. Safe to call twice."""
        if self._stop:
            return
        self._stop = True
        os.eventfd_write(self._wake, 1)
        self._thread.join(timeout=5)
        self._sel.close()
        os.close(self._wake)


class VmbusServer:
    """The partition's VMBus: offers VSPs' channels and runs their control plane."""

    def __init__(self, partition):
        self.partition = partition
        self.hv = partition.hv
        self.memory = partition.memory
        self._lock = threading.RLock()
        self.notifier = Notifier()
        self.channels = ChannelServer(self._send, self.memory.contains, len(partition.vcpus),
                                      open_rings=self._open, close_rings=self._close,
                                      started=self._started)
        self.hv.register_post_handler(w.VMBUS_MESSAGE_CONNECTION_ID,
                                      lambda vp, t, data: self._post(1, t, data))
        self.hv.register_post_handler(w.VMBUS_MESSAGE_CONNECTION_ID_4,
                                      lambda vp, t, data: self._post(4, t, data))
        self._closed = False
        self._dropped = 0

    def add_vsp(self, vsp: Vsp) -> Channel:
        """Offer ``vsp``'s channel to the guest."""
        with self._lock:
            return self.channels.add_offer(vsp.offer(), vsp)

    def rescind(self, relid: int) -> None:
        """Withdraw a channel from the guest."""
        with self._lock:
            self.channels.rescind(relid)

    @property
    def errors(self):
        """Guest protocol errors seen so far (bounded)."""
        return self.channels.errors

    # -- plumbing ---------------------------------------------------------------------------

    def _post(self, connection_id: int, message_type: int, payload: bytes) -> int:
        if message_type != VMBUS_MESSAGE_TYPE:
            self.channels._error("msgtype", f"HvPostMessage of message type {message_type} on "
                                            f"the VMBus connection")
            return 0
        with self._lock:
            self.channels.handle_message(connection_id, payload)
        return 0

    def _send(self, payload: bytes) -> None:
        cs = self.channels
        if not self.hv.post_message(cs.target_vp, cs.msg_sint, VMBUS_MESSAGE_TYPE, payload):
            # A guest that stops reading its messages must not flood the log: the 1st, 2nd,
            # 4th, 8th, ... drop is logged (hv.stats["messages_dropped"] counts them all).
            self._dropped += 1
            if self._dropped & (self._dropped - 1) == 0:
                log.error("vmbus: SynIC queue full; dropped %d channel message(s) to the guest "
                          "so far", self._dropped)

    def _open(self, ch: Channel, req: OpenRequest):
        from .ring import InRing, OutRing
        from .ringmap import RingMapping
        pfns = req.gpadl.pfns
        split = req.downstream_pageoffset
        maps = []
        efd = -1
        try:
            # The guest's send ring (first part of the GPADL) is what the host reads.
            maps.append(RingMapping.from_guest(self.memory, pfns[:split]))
            maps.append(RingMapping.from_guest(self.memory, pfns[split:]))
            inring, outring = InRing(maps[0]), OutRing(maps[1])
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            oc = OpenChannel(ch.relid, ch.connection_id, req.target_vp, req.userdata, inring,
                             outring, efd, self, maps)
            status = ch.vsp.open(oc) if ch.vsp is not None else 0
            if status != 0:
                raise _Refused(status)
            self.partition.register_signal(ch.connection_id, efd)
            if ch.vsp is not None and ch.vsp.python_signals:
                self.notifier.add(efd, lambda: self._signalled(ch, oc))
            return 0, oc
        except _Refused as r:
            self._release(maps, efd)
            return r.status, None
        except Exception as e:
            self._release(maps, efd)
            self.channels._error("open-map", f"relid {ch.relid}: cannot open rings: {e}")
            return STATUS_UNSUCCESSFUL, None

    @staticmethod
    def _release(maps, efd) -> None:
        for m in maps:
            m.close()
        if efd >= 0:
            os.close(efd)

    def _signalled(self, ch: Channel, oc: OpenChannel) -> None:
        oc.guest_signals += 1
        ch.vsp.on_signal(oc)

    def _started(self, ch: Channel) -> None:
        oc = ch.transport
        if oc is not None and ch.vsp is not None:
            ch.vsp.started(oc)

    def _close(self, ch: Channel) -> None:
        oc: OpenChannel = ch.transport
        if oc is None:
            return
        self.notifier.remove(oc.eventfd)
        try:
            self.partition.unregister_signal(ch.connection_id, oc.eventfd)
        except Exception:
            log.exception("vmbus: unregistering relid %d's signal", ch.relid)
        try:
            if ch.vsp is not None:
                ch.vsp.close(oc)
        finally:
            self._release(oc.mappings, oc.eventfd)

    def close(self) -> None:
        """Stop every channel and the notifier. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self.channels.close_all()
        self.notifier.close()


class _Refused(Exception):
    def __init__(self, status: int):
        super().__init__(status)
        self.status = status
