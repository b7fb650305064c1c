"""Hyper-V integration services (ICs), host side: the heartbeat and shutdown VSPs.

Wire format and roles are those of Linux's ``drivers/hv/hv_util.c`` (the guest) talking to
Hyper-V (the host): the HOST sends every request and the guest answers each one by sending the
same packet back (same length, same VMBus trans_id) with ``icflags = ICMSGHDRFLAG_TRANSACTION |
ICMSGHDRFLAG_RESPONSE`` and, where it applies, a status or an updated body. The layouts are in
:mod:`hvkvm.vsp.ic_wire` (checked against ``hv_utils.ko``).

On every open of its channel an IC VSP:

1. sends ``ICMSGTYPE_NEGOTIATE`` listing the framework versions it speaks (1.0 and 3.0) and its
   service versions; the guest answers with one of each (Linux's ``vmbus_prep_negotiate_resp``
   picks its best) or with none (the channel then stays unusable: :attr:`IcVsp.state` is
   ``"failed"``);
2. then sends its service's requests, one at a time, stamped with the negotiated versions.

Each open channel has one worker thread that sends (negotiation, the heartbeat timer, queued
shutdown requests); the partition's VMBus notifier thread reads the guest's answers
(:meth:`IcVsp.on_signal`). These are small, rare control messages: the data plane is Python.
A guest that answers with garbage is counted (:attr:`IcVsp.errors`), never trusted: a response
must carry the outstanding transaction's VMBus trans_id, message type and the response flags.

Hooks for the VM Service (``hvkvm/service``):

* graceful stop: a partition offers it when one of its VSPs has ``request_shutdown(reason)``
  (:class:`ShutdownVsp`); the guest acknowledges and stops (hvkvm's runtime reports done(0)).
* liveness: a VSP with a ``last_heartbeat`` attribute (:class:`HeartbeatVsp`) tells when the
  guest last answered a heartbeat (``time.time()`` seconds, ``None`` before the first).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque

from ..vmbus import wire as w
from ..vmbus.ring import VM_PKT_DATA_INBAND, RingBrokenError
from ..vmbus.server import OpenChannel, Vsp
from . import ic_wire as icw

log = logging.getLogger("hvkvm.vsp.ic")

#: The framework versions an hvkvm host offers, in the order it lists them (Hyper-V's and
#: OpenVMM's: 1.0, 3.0). A Linux guest picks 3.0.
HOST_FRAMEWORK_VERSIONS = (icw.UTIL_WS2K8_FW_VERSION, icw.UTIL_FW_VERSION)
#: Heartbeat service versions offered (a Linux guest picks 3.0).
HOST_HEARTBEAT_VERSIONS = (icw.HB_VERSION_1, icw.HB_VERSION)
#: Shutdown service versions offered (OpenVMM's list; a Linux guest picks 3.2).
HOST_SHUTDOWN_VERSIONS = (icw.SD_VERSION_1, icw.SD_VERSION, icw.SD_VERSION_3_1,
                          icw.SD_VERSION_3_2)
#: The shutdown IC's instance GUID on Hyper-V (as OpenVMM offers it).
HV_SHUTDOWN_INSTANCE_ID = uuid.UUID("b6650ff7-33bc-4840-8048-e0676786f393")

_REQUEST = icw.ICMSGHDRFLAG_TRANSACTION | icw.ICMSGHDRFLAG_REQUEST
_RESPONSE = icw.ICMSGHDRFLAG_TRANSACTION | icw.ICMSGHDRFLAG_RESPONSE
MAX_ERRORS_KEPT = 64


class IcError(Exception):
    """A guest answer that breaks the IC protocol (recorded, never raised to callers)."""


class _Channel:
    """One open IC channel: negotiation state, the outstanding transaction, the worker."""

    def __init__(self, oc: OpenChannel):
        self.oc = oc
        self.state = "negotiating"
        self.framework = 0
        self.service = 0
        self.next_trans = 1
        self.outstanding: tuple[int, int, float, object] | None = None  # trans, type, t, ctx
        self.stop = False
        self.wake = False
        self.thread: threading.Thread | None = None


class IcVsp(Vsp):
    """Common part of hvkvm's IC VSPs: the ICMSG negotiation from the host side and one
    host-initiated transaction at a time. Subclasses set :attr:`class_id`, :attr:`icmsgtype`,
    :attr:`service_versions` and override :meth:`_tick` / :meth:`_response`.

    Attributes every IC VSP has:

    * ``state``: ``"closed"`` (no guest has the channel open), ``"negotiating"``, ``"ready"``,
      ``"failed"`` (the guest shares no version, or its answer was malformed);
    * ``negotiated``: ``(framework, service)`` version words (``major << 16 | minor``) once
      ready, else ``None``; ``opens``: how often a guest opened the channel;
    * ``errors``: the last protocol errors (bounded); ``error_count``.
    """

    icmsgtype: int = -1
    service_versions: tuple[int, ...] = ()
    framework_versions: tuple[int, ...] = HOST_FRAMEWORK_VERSIONS
    #: Seconds a request may stay unanswered before it is given up (counted in ``timeouts``).
    response_timeout = 10.0

    def __init__(self, instance_id: uuid.UUID | None = None, *,
                 framework_versions: tuple[int, ...] | None = None,
                 service_versions: tuple[int, ...] | None = None):
        self.instance_id = instance_id or self.instance_id or uuid.uuid4()
        if framework_versions is not None:
            self.framework_versions = tuple(framework_versions)
        if service_versions is not None:
            self.service_versions = tuple(service_versions)
        self._lock = threading.Condition()
        self._ch: _Channel | None = None
        self.negotiated: tuple[int, int] | None = None
        self.opens = 0
        self.errors: deque[str] = deque(maxlen=MAX_ERRORS_KEPT)
        self.error_count = 0
        self.sent = 0
        self.answered = 0
        self.timeouts = 0
        self.ring_full = 0
        self.failed_reason: str | None = None
        self._state_closed = "closed"

    # -- state -----------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``closed``, ``negotiating``, ``ready`` or ``failed`` (see the class docstring)."""
        with self._lock:
            return self._ch.state if self._ch is not None else self._state_closed

    @property
    def ready(self) -> bool:
        """True while a guest has the channel open and negotiated."""
        return self.state == "ready"

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the channel is negotiated (True) or ``timeout`` seconds pass (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._ch is not None and self._ch.state == "ready",
                                       timeout)

    def _error(self, text: str) -> None:
        """Record a guest protocol error (bounded; logged at debug level only: the guest must
        not be able to flood the log)."""
        self.error_count += 1
        self.errors.append(text)
        log.debug("%s: %s", self.name, text)

    # -- Vsp hooks -------------------------------------------------------------------------------

    def open(self, channel: OpenChannel) -> int:
        """Accept the open; nothing may be sent before OPENCHANNEL_RESULT (see :meth:`started`)."""
        with self._lock:
            if self._ch is not None:  # one channel per VSP; the server never opens it twice
                return 1
            self._ch = _Channel(channel)
            self.negotiated = None
            self.failed_reason = None
            self.opens += 1
        return 0

    def started(self, channel: OpenChannel) -> None:
        """OPENCHANNEL_RESULT went out: start the channel's worker, which negotiates first.
        (This runs on the vCPU thread inside the guest's hypercall: it only starts a thread.)"""
        with self._lock:
            ch = self._ch
            if ch is None or ch.oc is not channel or ch.thread is not None:
                return
            ch.thread = threading.Thread(target=self._worker, args=(ch,), daemon=True,
                                         name=f"hvkvm-ic-{self.name}-{channel.relid}")
            ch.thread.start()

    def close(self, channel: OpenChannel) -> None:
        """Stop the worker and forget the channel before its rings go away."""
        with self._lock:
            ch = self._ch
            if ch is None or ch.oc is not channel:
                return
            ch.stop = True
            self._lock.notify_all()
        if ch.thread is not None and ch.thread is not threading.current_thread():
            ch.thread.join(timeout=5)
        with self._lock:
            self._closed(ch)
            self._ch = None
            self.negotiated = None
            self._lock.notify_all()

    def on_signal(self, channel: OpenChannel) -> None:
        """The guest signalled: take every answer out of the ring (notifier thread)."""
        with self._lock:
            ch = self._ch
            if ch is None or ch.oc is not channel:
                return
            inr = channel.inring
            try:
                while True:
                    pkt = inr.read()
                    if pkt is None:
                        break
                    try:
                        self._packet(ch, pkt)
                    except IcError as e:
                        self._error(str(e))
                if inr.commit():
                    channel.signal_guest()
            except RingBrokenError as e:
                ch.state = "failed"
                self.failed_reason = f"ring: {e}"
                self._error(f"relid {channel.relid}: {e}")
            self._lock.notify_all()

    # -- the worker (sends) ------------------------------------------------------------------

    def _worker(self, ch: _Channel) -> None:
        try:
            with self._lock:
                body = icw.negotiate_body(self.framework_versions, self.service_versions)
                self._send(ch, icw.ICMSGTYPE_NEGOTIATE, body, None, negotiate=True)
                while not ch.stop:
                    now = time.monotonic()
                    # A negotiation waits as long as it takes (a slow guest still answers);
                    # service requests are given up after response_timeout.
                    if ch.outstanding is not None and \
                            ch.outstanding[1] != icw.ICMSGTYPE_NEGOTIATE and \
                            now - ch.outstanding[2] > self.response_timeout:
                        self.timeouts += 1
                        self._error(f"no answer to transaction {ch.outstanding[0]} (message "
                                    f"type {ch.outstanding[1]}) in {self.response_timeout} s")
                        self._abandoned(ch, ch.outstanding)
                        ch.outstanding = None
                    delay = None
                    if ch.state == "ready":
                        delay = self._tick(ch, now)
                    if ch.outstanding is not None and \
                            ch.outstanding[1] != icw.ICMSGTYPE_NEGOTIATE:
                        left = self.response_timeout - (now - ch.outstanding[2])
                        delay = left if delay is None else min(delay, left)
                    if ch.stop:
                        break
                    ch.wake = False
                    self._lock.wait_for(lambda: ch.stop or ch.wake,
                                        None if delay is None else max(delay, 0.0))
        except Exception:  # a VSP bug must not take the partition down
            log.exception("%s: IC worker failed", self.name)
            with self._lock:
                ch.state = "failed"
                self.failed_reason = "internal error (see the log)"
                self._lock.notify_all()

    def _kick_worker(self) -> None:
        """Wake the worker (lock held)."""
        if self._ch is not None:
            self._ch.wake = True
            self._lock.notify_all()

    def _send(self, ch: _Channel, icmsgtype: int, body: bytes, ctx, *,
              negotiate: bool = False) -> bool:
        """Send one request (lock held; no other outstanding). False if the ring is full."""
        trans = ch.next_trans
        msg = icw.build_message(icmsgtype, body, icflags=_REQUEST,
                                framework=0 if negotiate else ch.framework,
                                service=0 if negotiate else ch.service,
                                transaction_id=trans)
        try:
            if not ch.oc.outring.write(msg, trans_id=trans):
                self.ring_full += 1
                return False
            if ch.oc.outring.commit():
                ch.oc.signal_guest()
        except RingBrokenError as e:
            ch.state = "failed"
            self.failed_reason = f"ring: {e}"
            self._error(f"relid {ch.oc.relid}: {e}")
            return False
        ch.next_trans = (trans + 1) & 0xFFFFFFFFFFFFFFFF or 1
        ch.outstanding = (trans, icmsgtype, time.monotonic(), ctx)
        self.sent += 1
        return True

    # -- answers (on_signal, lock held) --------------------------------------------------------

    def _packet(self, ch: _Channel, pkt) -> None:
        if pkt.type != VM_PKT_DATA_INBAND:
            raise IcError(f"packet of type {pkt.type} on an IC channel (want in-band)")
        try:
            _pipe, hdr, body = icw.parse_header(pkt.payload)
        except ValueError as e:
            raise IcError(str(e)) from None
        if hdr.icflags & icw.ICMSGHDRFLAG_REQUEST or not hdr.icflags & icw.ICMSGHDRFLAG_RESPONSE:
            raise IcError(f"the guest sent a message that is not a response (icflags "
                          f"{hdr.icflags:#x}, type {hdr.icmsgtype}): hosts send the requests")
        out = ch.outstanding
        if out is None or pkt.trans_id != out[0]:
            raise IcError(f"response with trans_id {pkt.trans_id} matches no outstanding request")
        trans, icmsgtype, _t, ctx = out
        if hdr.icmsgtype != icmsgtype:
            raise IcError(f"response of message type {hdr.icmsgtype} to a request of type "
                          f"{icmsgtype}")
        if hdr.ictransaction_id != trans & 0xFF:
            raise IcError(f"response with ictransaction_id {hdr.ictransaction_id}, "
                          f"sent {trans & 0xFF}")
        ch.outstanding = None
        self.answered += 1
        ch.wake = True
        if icmsgtype == icw.ICMSGTYPE_NEGOTIATE:
            self._negotiated(ch, hdr, body)
        else:
            self._response(ch, hdr, body, ctx)

    def _negotiated(self, ch: _Channel, hdr, body: bytes) -> None:
        try:
            fw, srv = icw.parse_negotiate(body)
        except ValueError as e:
            self._fail(ch, f"negotiation answer: {e}")
            return
        if not fw and not srv:
            self._fail(ch, "the guest supports none of the offered versions (framework "
                           f"{[icw.version_str(v) for v in self.framework_versions]}, service "
                           f"{[icw.version_str(v) for v in self.service_versions]})")
            return
        if len(fw) != 1 or len(srv) != 1 or fw[0] not in self.framework_versions or \
                srv[0] not in self.service_versions:
            self._fail(ch, f"the guest chose versions the host did not offer: framework "
                           f"{[icw.version_str(v) for v in fw]}, service "
                           f"{[icw.version_str(v) for v in srv]}")
            return
        ch.framework, ch.service = fw[0], srv[0]
        ch.state = "ready"
        self.negotiated = (fw[0], srv[0])
        log.debug("%s: negotiated framework %s, service %s", self.name,
                  icw.version_str(fw[0]), icw.version_str(srv[0]))
        self._ready(ch)

    def _fail(self, ch: _Channel, why: str) -> None:
        ch.state = "failed"
        self.failed_reason = why
        self._error(why)

    # -- subclass hooks (lock held) -------------------------------------------------------------

    def _tick(self, ch: _Channel, now: float) -> float | None:
        """Worker, channel ready: send what is due; return seconds until the next call (None:
        only when woken)."""
        return None

    def _ready(self, ch: _Channel) -> None:
        """Negotiation just completed."""

    def _response(self, ch: _Channel, hdr, body: bytes, ctx) -> None:
        """The guest answered the outstanding service request."""

    def _abandoned(self, ch: _Channel, outstanding) -> None:
        """The outstanding request timed out."""

    def _closed(self, ch: _Channel) -> None:
        """The channel closed (lock held)."""

    @property
    def stats(self) -> dict:
        """Counters and state, JSON-friendly."""
        with self._lock:
            neg = self.negotiated
            return {
                "state": self.state,
                "framework_version": icw.version_str(neg[0]) if neg else None,
                "service_version": icw.version_str(neg[1]) if neg else None,
                "opens": self.opens,
                "sent": self.sent,
                "answered": self.answered,
                "timeouts": self.timeouts,
                "ring_full": self.ring_full,
                "errors": self.error_count,
                "failed_reason": self.failed_reason,
            }


class HeartbeatVsp(IcVsp):
    """The heartbeat IC (``HV_HEART_BEAT_GUID``): every ``interval`` seconds the host sends
    ``ICMSGTYPE_HEARTBEAT`` with a sequence number; the guest answers ``seq_num + 1``.

    The first heartbeat goes out right after negotiation, then one per ``interval`` (default
    1 s; Hyper-V uses a few seconds). A request still unanswered when the next is due is counted
    in ``missed`` (no second one is sent while one is outstanding).

    Attributes (read them from any thread):

    * ``last_heartbeat``: ``time.time()`` of the guest's last correct answer, ``None`` before
      the first. **The VM Service shows this as the partition's last heartbeat.**
    * ``sequence``: the last sequence number the guest returned (the next request carries it;
      it grows by one per answered heartbeat, from ``start_sequence``).
    * ``stats``: a dict with the above, ``beats`` (answers), ``missed``, ``bad`` (answers with
      a wrong sequence number), the negotiated versions and the common IC counters.
    """

    class_id = w.HV_HEART_BEAT_GUID
    name = "heartbeat"
    icmsgtype = icw.ICMSGTYPE_HEARTBEAT
    service_versions = HOST_HEARTBEAT_VERSIONS

    def __init__(self, interval: float = 1.0, instance_id: uuid.UUID | None = None, *,
                 start_sequence: int = 0, **kw):
        if not interval > 0:
            raise ValueError(f"heartbeat interval must be > 0 seconds, not {interval!r}")
        super().__init__(instance_id, **kw)
        self.interval = float(interval)
        self.last_heartbeat: float | None = None
        self.sequence = start_sequence & 0xFFFFFFFFFFFFFFFF
        self.beats = 0
        self.missed = 0
        self.bad = 0
        self._next_due = 0.0

    def _ready(self, ch: _Channel) -> None:
        self._next_due = 0.0  # the first heartbeat right away

    def _tick(self, ch: _Channel, now: float) -> float | None:
        if now >= self._next_due:
            if ch.outstanding is not None:
                self.missed += 1
            else:
                body = icw.heartbeat_msg_data()
                body.seq_num = self.sequence
                self._send(ch, icw.ICMSGTYPE_HEARTBEAT, bytes(body), self.sequence)
            self._next_due = now + self.interval
        return self._next_due - now

    def _response(self, ch: _Channel, hdr, body: bytes, ctx) -> None:
        if len(body) < 8:
            self.bad += 1
            raise IcError(f"heartbeat answer with a {len(body)}-byte body")
        seq = int.from_bytes(body[:8], "little")
        if seq != (ctx + 1) & 0xFFFFFFFFFFFFFFFF:
            self.bad += 1
            raise IcError(f"heartbeat answer {seq} to sequence {ctx} (want {ctx + 1})")
        self.sequence = seq
        self.beats += 1
        self.last_heartbeat = time.time()
        self._lock.notify_all()

    def wait_beats(self, n: int, timeout: float | None = None) -> bool:
        """Wait until ``n`` heartbeats in all were answered (True) or ``timeout`` passes."""
        with self._lock:
            return self._lock.wait_for(lambda: self.beats >= n, timeout)

    def alive(self, max_age: float | None = None) -> bool:
        """True if the guest answered a heartbeat within ``max_age`` seconds (default: three
        intervals)."""
        last = self.last_heartbeat
        age = 3 * self.interval if max_age is None else max_age
        return last is not None and time.time() - last <= age

    @property
    def stats(self) -> dict:
        s = super().stats
        s.update(interval=self.interval, last_heartbeat=self.last_heartbeat,
                 sequence=self.sequence, beats=self.beats, missed=self.missed, bad=self.bad)
        return s


class ShutdownVsp(IcVsp):
    """The shutdown IC (``HV_SHUTDOWN_GUID``): :meth:`request_shutdown` asks the guest to shut
    down (or restart) with an ``ICMSGTYPE_SHUTDOWN`` request; the guest acknowledges
    (``status`` ``HV_S_OK``) and stops. hvkvm's runtime then reports done(0), so the
    partition's run ends with a pass; Linux powers off.

    **The VM Service's graceful stop:** a partition offers it when one of its VSPs has
    ``request_shutdown(reason)``; call it, wait for the partition to stop, stop it hard after a
    timeout. ``request_shutdown`` never blocks and may be called from any thread.

    Attributes: ``requests`` (shutdown requests sent), ``last_status`` (the guest's status for
    the last one: ``HV_S_OK`` = 0 accepted, ``HV_E_FAIL`` refused, ``None`` unanswered),
    ``acknowledged_at`` (``time.time()`` of the last acceptance), ``pending`` (a request waiting
    for the guest to open and negotiate the channel).
    """

    class_id = w.HV_SHUTDOWN_GUID
    instance_id = HV_SHUTDOWN_INSTANCE_ID
    name = "shutdown"
    icmsgtype = icw.ICMSGTYPE_SHUTDOWN
    service_versions = HOST_SHUTDOWN_VERSIONS

    def __init__(self, instance_id: uuid.UUID | None = None, **kw):
        super().__init__(instance_id, **kw)
        self.pending: dict | None = None
        self.requests = 0
        self.last_request: dict | None = None
        self.last_status: int | None = None
        self.acknowledged_at: float | None = None

    def request_shutdown(self, reason: str = "", reboot: bool = False, *, force: bool = False,
                         timeout_seconds: int = 0) -> bool:
        """Ask the guest to shut down (``reboot=True``: restart) for ``reason`` (a short text,
        sent UTF-8 in ``display_message``, cut to 2047 bytes).

        ``flags`` are what Linux expects: 0 shut down, 2 restart, plus 1 with ``force``.
        Returns True when the request is on its way to a guest that negotiated the channel,
        False when it waits (no guest has the channel open and negotiated yet, or an earlier
        request is still unanswered); a waiting request goes out as soon as it can, and a newer
        one replaces it. Never blocks.
        """
        flags = (icw.ICSHUTDOWN_FLAG_RESTART if reboot else 0) | \
            (icw.ICSHUTDOWN_FLAG_FORCE if force else 0)
        text = reason.encode("utf-8", "replace")[:icw.ICSHUTDOWN_DISPLAY_MESSAGE_SIZE - 1]
        req = {"reason": reason, "flags": flags, "timeout_seconds": int(timeout_seconds),
               "message": text, "time": time.time()}
        with self._lock:
            self.pending = req
            ch = self._ch
            ready = ch is not None and ch.state == "ready" and ch.outstanding is None
            self._kick_worker()
            return ready

    def wait_acknowledged(self, timeout: float | None = None) -> int | None:
        """Wait for the guest's answer to the last request: its status (``HV_S_OK`` = 0 when it
        accepted), or None when ``timeout`` passed first."""
        with self._lock:
            self._lock.wait_for(lambda: self.last_status is not None and self.pending is None,
                                timeout)
            return self.last_status if self.pending is None else None

    def _tick(self, ch: _Channel, now: float) -> float | None:
        if self.pending is not None and ch.outstanding is None:
            req, self.pending = self.pending, None
            body = icw.shutdown_msg_data()
            body.reason_code = icw.SHTDN_REASON_FLAG_PLANNED
            body.timeout_seconds = req["timeout_seconds"]
            body.flags = req["flags"]
            body.display_message[:len(req["message"])] = req["message"]
            if self._send(ch, icw.ICMSGTYPE_SHUTDOWN, bytes(body), req):
                self.requests += 1
                self.last_request = req
                self.last_status = None
            else:
                self.pending = req
                return 0.1  # the ring was full: try again shortly
        return None

    def _response(self, ch: _Channel, hdr, body: bytes, ctx) -> None:
        self.last_status = hdr.status
        if hdr.status == icw.HV_S_OK:
            self.acknowledged_at = time.time()
        else:
            self._error(f"the guest refused shutdown request {ctx.get('flags')} with status "
                        f"{hdr.status:#x}")
        self._lock.notify_all()

    @property
    def stats(self) -> dict:
        s = super().stats
        s.update(requests=self.requests, last_status=self.last_status,
                 acknowledged_at=self.acknowledged_at, pending=self.pending is not None)
        return s
