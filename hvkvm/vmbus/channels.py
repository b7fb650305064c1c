"""The VMBus channel protocol, host side, as a state machine with no I/O.

:class:`ChannelServer` takes the channel messages a guest posts (``handle_message``) and answers
through a ``send`` callback; opening and closing a channel's rings is delegated to a transport
(``open_rings`` / ``close_rings``), so the whole protocol is testable in pytest without KVM, the
way OpenVMM tests ``vmbus_server/src/channels.rs``.

Message layouts are Linux's (``hvkvm.vmbus.wire``); every guest message is length-checked for its
type before a field is read, and every guest mistake is recorded in :attr:`ChannelServer.errors`
(bounded) and logged at most once per kind, so a hostile guest cannot flood the log.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from . import wire as w
from .gpadl import MAX_GPADL_PAGES_TOTAL, MAX_GPADLS, Gpadl, GpadlBuilder, GpadlError

log = logging.getLogger("hvkvm.vmbus")

#: Versions accepted on each message connection id. 5.x must arrive on connection id 4 (the
#: guest switches before it asks); older ones on id 1. WS2008/WIN7 need the shared interrupt page
#: signalling that hvkvm does not implement (it offers dedicated interrupts).
VERSIONS_CONN1 = (w.VERSION_WIN10_V4_1, w.VERSION_WIN10, w.VERSION_WIN8_1, w.VERSION_WIN8)
VERSIONS_CONN4 = (w.VERSION_WIN10_V5_3, w.VERSION_WIN10_V5_2, w.VERSION_WIN10_V5_1,
                  w.VERSION_WIN10_V5)

#: The first connection id given to a channel (relid + this); ids below are the bus's own.
CHANNEL_CONNECTION_BASE = 0x2000
MAX_CHANNELS = 256
STATUS_UNSUCCESSFUL = 0xC0000001
MAX_ERRORS_KEPT = 256
HEADER = ctypes.sizeof(w.vmbus_channel_message_header)


def _name(msgtype: int) -> str:
    try:
        return w.vmbus_channel_message_type(msgtype).name
    except ValueError:
        return f"type {msgtype}"


@dataclass
class Offer:
    """What a VSP offers: class and instance GUIDs and the offer's user-defined bytes."""

    class_id: uuid.UUID
    instance_id: uuid.UUID
    user_defined: bytes = b""
    chn_flags: int = 0
    mmio_megabytes: int = 0
    sub_channel_index: int = 0

    def __post_init__(self):
        if len(self.user_defined) > w.MAX_USER_DEFINED_BYTES:
            raise ValueError(f"offer user data is {len(self.user_defined)} bytes (max 120)")


@dataclass
class OpenRequest:
    """The guest's OPENCHANNEL, validated."""

    openid: int
    gpadl: Gpadl
    target_vp: int
    downstream_pageoffset: int
    userdata: bytes


class _GpadlTable(dict):
    """handle -> Gpadl (or GpadlBuilder), keeping the number of pages they name up to date
    (a builder counts the most PFNs its range_buflen can carry), so the partition's total is a
    sum over channels, not over every GPADL."""

    pages = 0

    @staticmethod
    def _weight(g) -> int:
        return g.page_count if isinstance(g, Gpadl) else g.range_buflen // 8

    def __setitem__(self, key, value) -> None:
        old = dict.get(self, key)
        if old is not None:
            self.pages -= self._weight(old)
        dict.__setitem__(self, key, value)
        self.pages += self._weight(value)

    def __delitem__(self, key) -> None:
        self.pages -= self._weight(self[key])
        dict.__delitem__(self, key)

    def pop(self, key, *default):
        if key in self:
            self.pages -= self._weight(self[key])
        return dict.pop(self, key, *default)

    def clear(self) -> None:
        self.pages = 0
        dict.clear(self)


@dataclass
class Channel:
    """One offered channel and its state: offered, open, or rescinded."""

    relid: int
    connection_id: int
    offer: Offer
    vsp: object = None
    state: str = "offered"
    open_request: OpenRequest | None = None
    transport: object = None     # whatever open_rings returned (rings, notifier, ...)
    gpadls: dict[int, Gpadl] = field(default_factory=_GpadlTable)
    building: dict[int, GpadlBuilder] = field(default_factory=_GpadlTable)


class ChannelServer:
    """Host side of the VMBus channel protocol for one partition.

    ``send(payload: bytes)`` posts a channel message to the guest (the transport decides the VP
    and SINT from :attr:`target_vp` and :attr:`msg_sint`). ``open_rings(channel, request) ->
    (status, transport)`` maps a channel's rings and starts its VSP's data path without letting
    it signal yet; ``started(channel)`` runs right after OPENCHANNEL_RESULT went out (a Linux
    guest ignores a channel interrupt that arrives before the result); ``close_rings(channel)``
    stops and unmaps.
    """

    def __init__(self, send: Callable[[bytes], None], ram_contains: Callable[[int, int], bool],
                 nvps: int, *, open_rings=None, close_rings=None, started=None):
        self.send = send
        self.ram_contains = ram_contains
        self.nvps = nvps
        self.open_rings = open_rings or (lambda ch, req: (0, None))
        self.close_rings = close_rings or (lambda ch: None)
        self.started = started or (lambda ch: None)
        self.version: int | None = None
        self.msg_conn_id = w.VMBUS_MESSAGE_CONNECTION_ID
        self.target_vp = 0
        self.msg_sint = w.VMBUS_MESSAGE_SINT
        self.offers_requested = False
        self.channels: dict[int, Channel] = {}
        self.errors: deque[str] = deque(maxlen=MAX_ERRORS_KEPT)
        self.error_count = 0
        self._logged: set[str] = set()
        self._next_relid = 1
        #: Pages all GPADLs may name together (MAX_GPADL_PAGES_TOTAL; tests lower it).
        self.max_gpadl_pages = MAX_GPADL_PAGES_TOTAL

    # -- offers (host side) ----------------------------------------------------------------

    def add_offer(self, offer: Offer, vsp=None) -> Channel:
        """Register a channel; it is offered now if the guest already asked for offers."""
        if len(self.channels) >= MAX_CHANNELS:
            raise ValueError("too many channels")
        relid = self._next_relid
        self._next_relid += 1
        ch = Channel(relid, CHANNEL_CONNECTION_BASE + relid, offer, vsp)
        self.channels[relid] = ch
        if self.offers_requested:
            self._send_offer(ch)
        return ch

    def rescind(self, relid: int) -> None:
        """Withdraw a channel: RESCIND_CHANNELOFFER now; the relid is freed at RELID_RELEASED."""
        ch = self.channels[relid]
        if ch.state == "open":
            self._close(ch)
        ch.state = "rescinded"
        if self.version is not None:
            msg = w.vmbus_channel_rescind_offer()
            msg.header.msgtype = w.CHANNELMSG_RESCIND_CHANNELOFFER
            msg.child_relid = relid
            self.send(bytes(msg))
        else:
            del self.channels[relid]

    def _send_offer(self, ch: Channel) -> None:
        m = w.vmbus_channel_offer_channel()
        m.header.msgtype = w.CHANNELMSG_OFFERCHANNEL
        m.offer.if_type = w.guid_t.from_uuid(ch.offer.class_id)
        m.offer.if_instance = w.guid_t.from_uuid(ch.offer.instance_id)
        m.offer.chn_flags = ch.offer.chn_flags
        m.offer.mmio_megabytes = ch.offer.mmio_megabytes
        m.offer.sub_channel_index = ch.offer.sub_channel_index
        ud = ch.offer.user_defined
        ctypes.memmove(ctypes.addressof(m.offer.u), ud, len(ud))
        m.child_relid = ch.relid
        m.monitorid = 0xFF
        m.monitor_allocated = 0
        m.is_dedicated_interrupt = 1
        m.connection_id = ch.connection_id
        self.send(bytes(m))

    # -- errors ------------------------------------------------------------------------------------

    def _error(self, kind: str, text: str) -> None:
        self.error_count += 1
        self.errors.append(text)
        if kind not in self._logged and len(self._logged) < 256:
            self._logged.add(kind)
            log.error("vmbus: guest error: %s", text)

    # -- guest messages --------------------------------------------------------------------------

    def handle_message(self, connection_id: int, payload: bytes) -> None:
        """Process one channel message the guest posted on ``connection_id``."""
        if len(payload) < HEADER:
            self._error("short", f"channel message of {len(payload)} bytes (no header)")
            return
        msgtype = struct.unpack_from("<I", payload)[0]
        handler = self._HANDLERS.get(msgtype)
        if handler is None:
            self._error(f"type{msgtype}", f"unknown or host-only channel message {_name(msgtype)}")
            return
        struct_type, fn = handler
        need = ctypes.sizeof(struct_type)
        if len(payload) < need:
            self._error(f"short{msgtype}", f"{_name(msgtype)} of {len(payload)} bytes, "
                                           f"needs {need}")
            return
        if msgtype != w.CHANNELMSG_INITIATE_CONTACT and self.version is None:
            self._error("noconn", f"{_name(msgtype)} before INITIATE_CONTACT")
            return
        if msgtype != w.CHANNELMSG_INITIATE_CONTACT and connection_id != self.msg_conn_id:
            self._error("connid", f"{_name(msgtype)} on connection id {connection_id}, "
                                  f"expected {self.msg_conn_id}")
            return
        msg = struct_type.from_buffer_copy(payload[:need])
        fn(self, connection_id, msg, payload)

    def _on_initiate_contact(self, conn, msg, raw) -> None:
        version = msg.vmbus_version_requested
        accepted = VERSIONS_CONN4 if conn == w.VMBUS_MESSAGE_CONNECTION_ID_4 else \
            VERSIONS_CONN1 if conn == w.VMBUS_MESSAGE_CONNECTION_ID else ()
        resp = w.vmbus_channel_version_response()
        resp.header.msgtype = w.CHANNELMSG_VERSION_RESPONSE
        if msg.target_vcpu >= self.nvps:
            self._error("vcpu", f"INITIATE_CONTACT names target vCPU {msg.target_vcpu}")
            version = 0
        if self.version is not None:
            self._error("twice", "INITIATE_CONTACT while already connected")
            version = 0
        if version in accepted:
            self.version = version
            self.msg_conn_id = conn
            self.target_vp = msg.target_vcpu
            if version >= w.VERSION_WIN10_V5:
                sint = msg.msg_sint
                self.msg_sint = sint if 0 < sint < 16 else w.VMBUS_MESSAGE_SINT
            resp.version_supported = 1
            resp.msg_conn_id = conn
        else:
            resp.version_supported = 0
        self.send(bytes(resp))

    def _on_request_offers(self, conn, msg, raw) -> None:
        self.offers_requested = True
        for ch in list(self.channels.values()):
            if ch.state != "rescinded":
                self._send_offer(ch)
        done = w.vmbus_channel_message_header(msgtype=w.CHANNELMSG_ALLOFFERS_DELIVERED)
        self.send(bytes(done))

    def _channel(self, relid: int, what: str) -> Channel | None:
        ch = self.channels.get(relid)
        if ch is None:
            self._error(f"relid-{what}", f"{what} for unknown relid {relid}")
        return ch

    def _all_gpadls(self) -> dict[int, Gpadl | GpadlBuilder]:
        out: dict[int, Gpadl | GpadlBuilder] = {}
        for ch in self.channels.values():
            out.update(ch.gpadls)
            out.update(ch.building)
        return out

    def _on_gpadl_header(self, conn, msg, raw) -> None:
        ch = self._channel(msg.child_relid, "GPADL_HEADER")
        if ch is None or ch.state == "rescinded":
            return
        handle = msg.gpadl
        if handle == 0 or handle in self._all_gpadls():
            self._error("gpadl-dup", f"GPADL_HEADER reuses handle {handle}")
            return
        everything = self._all_gpadls()
        if len(everything) >= MAX_GPADLS:
            self._error("gpadl-many", f"more than {MAX_GPADLS} GPADLs")
            self._refuse_gpadl(ch, handle)
            return
        fixed = ctypes.sizeof(w.vmbus_channel_gpadl_header)
        if msg.range_buflen < 8 + 8 or msg.rangecount == 0:
            self._error("gpadl-len", f"GPADL {handle}: range_buflen {msg.range_buflen}, "
                                     f"rangecount {msg.rangecount}")
            return
        # At most range_buflen / 8 PFNs can arrive: count them against the partition's limit now.
        held = sum(c.gpadls.pages + c.building.pages for c in self.channels.values())
        if held + msg.range_buflen // 8 > self.max_gpadl_pages:
            self._error("gpadl-pages", f"GPADL {handle}: its pages and the {held} the partition's "
                                       f"GPADLs hold exceed {self.max_gpadl_pages}")
            self._refuse_gpadl(ch, handle)
            return
        b = GpadlBuilder(handle, ch.relid, msg.rangecount, msg.range_buflen)
        b.add(raw[fixed:])
        if b.complete:
            self._finish_gpadl(ch, b)
        else:
            ch.building[handle] = b

    def _refuse_gpadl(self, ch: Channel, handle: int) -> None:
        created = w.vmbus_channel_gpadl_created()
        created.header.msgtype = w.CHANNELMSG_GPADL_CREATED
        created.child_relid = ch.relid
        created.gpadl = handle
        created.creation_status = STATUS_UNSUCCESSFUL
        self.send(bytes(created))

    def _on_gpadl_body(self, conn, msg, raw) -> None:
        for ch in self.channels.values():
            b = ch.building.get(msg.gpadl)
            if b is not None:
                break
        else:
            self._error("gpadl-body", f"GPADL_BODY for unknown handle {msg.gpadl}")
            return
        b.add(raw[ctypes.sizeof(w.vmbus_channel_gpadl_body):])
        if b.complete:
            del ch.building[msg.gpadl]
            self._finish_gpadl(ch, b)

    def _finish_gpadl(self, ch: Channel, b: GpadlBuilder) -> None:
        created = w.vmbus_channel_gpadl_created()
        created.header.msgtype = w.CHANNELMSG_GPADL_CREATED
        created.child_relid = ch.relid
        created.gpadl = b.handle
        try:
            ch.gpadls[b.handle] = b.finish(self.ram_contains)
            created.creation_status = 0
        except GpadlError as e:
            self._error("gpadl-bad", f"GPADL {b.handle}: {e}")
            created.creation_status = STATUS_UNSUCCESSFUL
        self.send(bytes(created))

    def _on_gpadl_teardown(self, conn, msg, raw) -> None:
        ch = self._channel(msg.child_relid, "GPADL_TEARDOWN")
        if ch is None:
            return
        g = ch.gpadls.get(msg.gpadl)
        if g is None:
            if ch.building.pop(msg.gpadl, None) is None:
                self._error("gpadl-td", f"GPADL_TEARDOWN of unknown handle {msg.gpadl}")
                return
            self._send_torndown(msg.gpadl)
            return
        if g.users:
            # In use (the open channel's rings, or a VSP's buffer such as netvsc's receive
            # buffer): GPADL_TORNDOWN tells the guest the host no longer touches the pages, so
            # it waits until the last user lets go (release_gpadl: channel close, NVSP revoke).
            if not g.teardown_requested:
                self._error("gpadl-busy", f"GPADL_TEARDOWN of handle {g.handle} while its channel "
                                          f"is open and the host uses it; deferred until the "
                                          f"host lets go")
            g.teardown_requested = True
            return
        del ch.gpadls[g.handle]
        self._send_torndown(g.handle)

    def hold_gpadl(self, relid: int, handle: int) -> Gpadl | None:
        """A VSP starts using GPADL ``handle`` of channel ``relid`` beyond the channel's rings
        (netvsc's receive and send buffers): until :meth:`release_gpadl`, a GPADL_TEARDOWN of it
        is deferred. None when there is no such complete GPADL, or its teardown is pending."""
        ch = self.channels.get(relid)
        g = ch.gpadls.get(handle) if ch is not None else None
        if g is None or g.teardown_requested:
            return None
        g.users += 1
        return g

    def release_gpadl(self, relid: int, g: Gpadl) -> None:
        """The host no longer touches ``g``'s pages: a deferred teardown completes now
        (GPADL_TORNDOWN). Call once per :meth:`hold_gpadl` (and per open)."""
        if g.users <= 0:
            return
        g.users -= 1
        if g.users == 0 and g.teardown_requested:
            ch = self.channels.get(relid)
            if ch is not None and ch.gpadls.get(g.handle) is g:
                del ch.gpadls[g.handle]
                self._send_torndown(g.handle)

    def _send_torndown(self, handle: int) -> None:
        m = w.vmbus_channel_gpadl_torndown()
        m.header.msgtype = w.CHANNELMSG_GPADL_TORNDOWN
        m.gpadl = handle
        self.send(bytes(m))

    def _on_open_channel(self, conn, msg, raw) -> None:
        ch = self._channel(msg.child_relid, "OPENCHANNEL")
        if ch is None:
            return
        result = w.vmbus_channel_open_result()
        result.header.msgtype = w.CHANNELMSG_OPENCHANNEL_RESULT
        result.child_relid = ch.relid
        result.openid = msg.openid
        status = STATUS_UNSUCCESSFUL
        req = None
        g = ch.gpadls.get(msg.ringbuffer_gpadlhandle)
        if ch.state != "offered":
            self._error("open-state", f"OPENCHANNEL for relid {ch.relid} in state {ch.state}")
        elif g is None:
            self._error("open-gpadl", f"OPENCHANNEL names unknown GPADL "
                                      f"{msg.ringbuffer_gpadlhandle}")
        elif g.teardown_requested:
            self._error("open-gpadl", f"OPENCHANNEL on GPADL {g.handle} being torn down")
        elif msg.target_vp >= self.nvps:
            self._error("open-vp", f"OPENCHANNEL target_vp {msg.target_vp}")
        elif not 2 <= msg.downstream_ringbuffer_pageoffset <= g.page_count - 2:
            self._error("open-offset", f"OPENCHANNEL ring page offset "
                                       f"{msg.downstream_ringbuffer_pageoffset} of a "
                                       f"{g.page_count}-page GPADL")
        elif len(g.ranges) != 1 or g.ranges[0].byte_offset != 0:
            self._error("open-shape", "ring GPADL must be one page-aligned range")
        else:
            req = OpenRequest(msg.openid, g, msg.target_vp,
                              msg.downstream_ringbuffer_pageoffset, bytes(msg.userdata))
            try:
                status, transport = self.open_rings(ch, req)
            except Exception as e:  # a VSP failing to open is the VSP's problem, not the bus's
                log.exception("vmbus: opening relid %d failed", ch.relid)
                status, transport = STATUS_UNSUCCESSFUL, None
                self._error("open-vsp", f"relid {ch.relid}: open failed: {e}")
            if status == 0:
                ch.state = "open"
                ch.open_request = req
                ch.transport = transport
                g.users += 1
        result.status = status
        self.send(bytes(result))
        if ch.state == "open" and req is not None and status == 0:
            self.started(ch)

    def _close(self, ch: Channel) -> None:
        try:
            self.close_rings(ch)
        finally:
            req = ch.open_request
            ch.state = "offered"
            ch.open_request = None
            ch.transport = None
            if req is not None:
                self.release_gpadl(ch.relid, req.gpadl)

    def _on_close_channel(self, conn, msg, raw) -> None:
        ch = self._channel(msg.child_relid, "CLOSECHANNEL")
        if ch is None:
            return
        if ch.state != "open":
            self._error("close-state", f"CLOSECHANNEL for relid {ch.relid} in state {ch.state}")
            return
        self._close(ch)

    def _on_relid_released(self, conn, msg, raw) -> None:
        ch = self._channel(msg.child_relid, "RELID_RELEASED")
        if ch is None:
            return
        if ch.state != "rescinded":
            self._error("release-state", f"RELID_RELEASED for relid {ch.relid} that was not "
                                         f"rescinded")
            return
        del self.channels[ch.relid]

    def _on_unload(self, conn, msg, raw) -> None:
        for ch in list(self.channels.values()):
            if ch.state == "open":
                self._close(ch)
            ch.gpadls.clear()
            ch.building.clear()
            if ch.state == "rescinded":
                del self.channels[ch.relid]
        self.version = None
        self.offers_requested = False
        self.msg_conn_id = w.VMBUS_MESSAGE_CONNECTION_ID
        resp = w.vmbus_channel_message_header(msgtype=w.CHANNELMSG_UNLOAD_RESPONSE)
        self.send(bytes(resp))

    def close_all(self) -> None:
        """Host shutdown: stop every open channel's data path."""
        for ch in list(self.channels.values()):
            if ch.state == "open":
                self._close(ch)

    _HANDLERS = {
        w.CHANNELMSG_INITIATE_CONTACT: (w.vmbus_channel_initiate_contact, _on_initiate_contact),
        w.CHANNELMSG_REQUESTOFFERS: (w.vmbus_channel_message_header, _on_request_offers),
        w.CHANNELMSG_GPADL_HEADER: (w.vmbus_channel_gpadl_header, _on_gpadl_header),
        w.CHANNELMSG_GPADL_BODY: (w.vmbus_channel_gpadl_body, _on_gpadl_body),
        w.CHANNELMSG_GPADL_TEARDOWN: (w.vmbus_channel_gpadl_teardown, _on_gpadl_teardown),
        w.CHANNELMSG_OPENCHANNEL: (w.vmbus_channel_open_channel, _on_open_channel),
        w.CHANNELMSG_CLOSECHANNEL: (w.vmbus_channel_close_channel, _on_close_channel),
        w.CHANNELMSG_RELID_RELEASED: (w.vmbus_channel_relid_released, _on_relid_released),
        w.CHANNELMSG_UNLOAD: (w.vmbus_channel_message_header, _on_unload),
    }
