"""The netvsc VSP: a synthetic NIC on the VMBus, wire-compatible with Linux's hv_netvsc
(``drivers/net/hyperv/``), moving Ethernet frames between the guest and a real TAP device.

One :class:`NetvscVsp` is one NIC (one channel offer of class ``HV_NIC_GUID``) backed by one
:class:`TapDevice`. Per opened channel a Python thread serves:

1. The NVSP handshake (as Linux's ``netvsc_connect_vsp`` drives it): ``NVSP_MSG_TYPE_INIT`` with
   one version at a time (6.1, 6, 5, 4, 2, 1; the highest inside [min, max] wins),
   ``NVSP_MSG1_TYPE_SEND_NDIS_VER`` and ``NVSP_MSG2_TYPE_SEND_NDIS_CONFIG`` (recorded, no answer),
   ``NVSP_MSG1_TYPE_SEND_RECV_BUF`` (the receive buffer GPADL: one section of ``recv_section_size``
   sub-allocations, answered with ``..._RECV_BUF_COMPLETE``) and ``NVSP_MSG1_TYPE_SEND_SEND_BUF``
   (answered with ``section_size`` = 6144). Answers are VM_PKT_COMP packets with the request's
   trans_id, sent only when the guest asked for a completion.
2. At the guest's first ``NVSP_MSG1_TYPE_SEND_RNDIS_PKT`` (with a receive buffer in place) the
   data path takes the channel: ``plane="c"`` hands it to a C thread (``csrc/hvr_net.c``) that
   never enters Python per frame; ``plane="python"`` serves it from this thread (the oracle the C
   plane is tested against). Both answer every packet alike (see ``csrc/hvr_net.h``): RNDIS
   INITIALIZE, QUERY (MAC, MTU, link state and speed, offload capabilities = none, RSS = not
   supported, ...), SET (packet filter, offload parameters = "disabled" only, multicast list),
   KEEPALIVE, RESET, HALT, RNDIS_PACKET_MSG both ways, and link indications.

Frames from the TAP go into free receive sections and reach the guest as transfer-page packets
(``VM_PKT_DATA_USING_XFER_PAGES``, one range per RNDIS message, up to ``rx_batch`` per packet)
that the guest completes (``NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE``) to free the sections. Every
index, offset and length the guest sends is validated: a bad one is answered with an error
status (``NVSP_STAT_FAIL``, ``NVSP_STAT_INVALID_RNDIS_PKT``, an RNDIS error status) and logged
(through the channel server's error log; counted per kind in :meth:`NetvscVsp.stats`); the parent
never touches memory outside guest RAM and never stops serving the channel for it.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import logging
import os
import re
import select
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

from ..memory import PAGE_SIZE
from ..vmbus import wire as w
from ..vmbus.ring import (VM_PKT_COMP, VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_GPA_DIRECT,
                          RingBrokenError, packet_total)
from ..vmbus.plane import CDataPlane, PlaneError
from ..vmbus.ringmap import RingMapping
from ..vmbus.server import ChannelThread, OpenChannel, Vsp
from . import netvsc_wire as nw

log = logging.getLogger("hvkvm.netvsc")

#: Packets handled between ring commits (the C plane uses the same).
BATCH = 64
#: Frames per transfer-page packet by default.
DEFAULT_RX_BATCH = 16
#: Bytes of RNDIS header in front of every received frame (rndis_message header + rndis_packet).
RX_HEADER = 44
#: Largest RNDIS packet gathered from one SEND_RNDIS_PKT (csrc/hvr_net.h's HVR_NET_MAX_MSG).
MAX_MSG = 64 * 1024 + 4096
MAX_RANGES = 64
MAX_CONTROL = 8
#: Largest receive and send buffers a guest may share (Linux's NETVSC_RECEIVE_BUFFER_SIZE and
#: NETVSC_SEND_BUFFER_SIZE, the most its hv_netvsc ever offers): a bigger one is refused, which
#: bounds the section tables the parent keeps per channel.
MAX_RECV_BUFFER = nw.NETVSC_RECEIVE_BUFFER_SIZE
MAX_SEND_BUFFER = nw.NETVSC_SEND_BUFFER_SIZE
NO_SECTION = 0xFFFFFFFF
#: OID_GEN_LINK_SPEED: 10 Gbit/s in 100 bit/s units.
DEFAULT_LINK_SPEED = 100_000_000
#: Hyper-V's OUI; a NIC without a configured MAC gets 00:15:5d:xx:xx:xx.
HYPERV_OUI = b"\x00\x15\x5d"

# Error codes (csrc/hvr_net.h's enum hvr_net_error_code).
ERR_SHORT_NVSP = 1
ERR_NVSP_TYPE = 2
ERR_PACKET_TYPE = 3
ERR_SEND_SECTION = 4
ERR_NO_BUFFER = 5
ERR_GPA = 6
ERR_NO_DATA = 7
ERR_RNDIS_LEN = 8
ERR_RNDIS_PACKET = 9
ERR_RNDIS_TYPE = 10
ERR_RNDIS_REQUEST = 11
ERR_RECV_COMPLETION = 12
ERR_NO_SECTION = 13
ERR_TAP = 14
ERR_TOO_MANY = 15

ERROR_NAMES = {
    ERR_SHORT_NVSP: "short-nvsp", ERR_NVSP_TYPE: "nvsp-type", ERR_PACKET_TYPE: "packet-type",
    ERR_SEND_SECTION: "send-section", ERR_NO_BUFFER: "no-buffer", ERR_GPA: "gpa",
    ERR_NO_DATA: "no-data", ERR_RNDIS_LEN: "rndis-len", ERR_RNDIS_PACKET: "rndis-packet",
    ERR_RNDIS_TYPE: "rndis-type", ERR_RNDIS_REQUEST: "rndis-request",
    ERR_RECV_COMPLETION: "recv-completion", ERR_NO_SECTION: "no-section", ERR_TAP: "tap",
    ERR_TOO_MANY: "too-many-control",
}


def describe_error(code: int, a: int, b: int, c: int) -> str:
    """One line for an error record (the C plane records the same codes and arguments)."""
    if code == ERR_SHORT_NVSP:
        return f"NVSP message of {a} bytes is too short" + (f" for type {b}" if b else "")
    if code == ERR_NVSP_TYPE:
        return f"NVSP message type {a} not served in this state"
    if code == ERR_PACKET_TYPE:
        return f"VMBus packet type {a} is not used by netvsc"
    if code == ERR_SEND_SECTION:
        return f"send_buf_section_index {a} / size {b} is outside the send buffer"
    if code == ERR_NO_BUFFER:
        return f"no {'receive' if a else 'send'} buffer (never sent, or revoked)"
    if code == ERR_GPA:
        return f"GPA-direct ranges refused after {a} ranges / {b} bytes (outside guest RAM, " \
               f"too many or too long)"
    if code == ERR_NO_DATA:
        return "SEND_RNDIS_PKT names neither a send section nor GPA ranges"
    if code == ERR_RNDIS_LEN:
        return f"RNDIS msg_len {a} with {b} bytes left"
    if code == ERR_RNDIS_PACKET:
        return f"RNDIS_PACKET_MSG data_offset {a} data_len {b} do not fit msg_len {c}"
    if code == ERR_RNDIS_TYPE:
        return f"unknown RNDIS message type {a:#x}"
    if code == ERR_RNDIS_REQUEST:
        return f"RNDIS request type {a:#x} malformed (msg_len {b}, info offset {c})"
    if code == ERR_RECV_COMPLETION:
        return f"receive completion for unknown transaction {(b << 32) | a:#x}"
    if code == ERR_NO_SECTION:
        return "no receive section free for a control answer (dropped)"
    if code == ERR_TAP:
        return f"TAP {'write' if b else 'read'} failed: {os.strerror(a)}"
    if code == ERR_TOO_MANY:
        return f"more than {MAX_CONTROL} RNDIS control messages in one packet"
    return f"error {code} ({a}, {b}, {c})"


class NetError(Exception):
    """A network backend problem the user can fix; the message is one line."""


# ============================================================================================
# TAP devices
# ============================================================================================

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_IFF_UP = 0x1
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_CLONE_NEWNET = 0x40000000
IFNAMSIZ = 16
VNET_HDR_LEN = 10
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")

_libc = ctypes.CDLL(None, use_errno=True)


def _in_netns(netns: str | None, fn):
    """Run ``fn()`` in network namespace ``netns`` (a name under /var/run/netns or a path), on a
    short-lived thread (setns changes the calling thread only), and return its result."""
    if netns is None:
        return fn()
    path = netns if "/" in netns else f"/var/run/netns/{netns}"
    out: dict = {}

    def run():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            out["err"] = NetError(f"network namespace {netns!r} is not usable: {e.strerror}")
            return
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                out["err"] = NetError(f"cannot enter network namespace {netns!r}: "
                                      f"{os.strerror(err)}")
                return
            out["val"] = fn()
        except BaseException as e:  # noqa: BLE001 - carried to the caller's thread
            out["err"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=run, name="hvkvm-netns")
    t.start()
    t.join()
    if "err" in out:
        raise out["err"]
    return out["val"]


def check_tap_name(name: str) -> None:
    """NetError unless ``name`` can be a Linux interface name."""
    if not name:
        raise NetError("TAP device name is empty")
    if len(name.encode()) >= IFNAMSIZ:
        raise NetError(f"TAP device name {name!r} is too long (at most {IFNAMSIZ - 1} "
                       f"characters)")
    if name in (".", "..") or not _NAME_RE.match(name):
        raise NetError(f"TAP device name {name!r} has characters an interface name cannot")


class TapDevice:
    """A TAP device opened (or created) through /dev/net/tun: ``fd`` reads and writes whole
    Ethernet frames (no packet-information header; with ``vnet_hdr`` a 10-byte virtio_net_hdr
    precedes each). ``netns`` names a network namespace to open it in (the device lives there).
    A device this call creates disappears when the fd closes (it is not made persistent).
    Idempotent :meth:`close`; a context manager. Problems raise :class:`NetError` (one line).
    """

    def __init__(self, name: str, *, netns: str | None = None, vnet_hdr: bool = False,
                 up: bool = True):
        check_tap_name(name)
        self.name = name
        self.netns = netns
        self.vnet_hdr = VNET_HDR_LEN if vnet_hdr else 0
        self.fd = -1
        self.fd = _in_netns(netns, lambda: self._open(up))

    def _open(self, up: bool) -> int:
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NetError("no /dev/net/tun: load the tun module (modprobe tun)") from None
        except PermissionError:
            raise NetError("no permission to open /dev/net/tun (needs root or "
                           "CAP_NET_ADMIN)") from None
        except OSError as e:
            raise NetError(f"cannot open /dev/net/tun: {e.strerror}") from None
        flags = _IFF_TAP | _IFF_NO_PI | (_IFF_VNET_HDR if self.vnet_hdr else 0)
        ifr = struct.pack("16sH22x", self.name.encode(), flags)
        try:
            fcntl.ioctl(fd, _TUNSETIFF, ifr)
        except OSError as e:
            os.close(fd)
            if e.errno == _errno.EPERM:
                raise NetError(f"no permission to create or attach TAP device {self.name!r} "
                               f"(needs CAP_NET_ADMIN, or a persistent TAP owned by this user)"
                               ) from None
            if e.errno == _errno.EBUSY:
                raise NetError(f"TAP device {self.name!r} is busy (another process has it "
                               f"open)") from None
            if e.errno == _errno.EINVAL:
                raise NetError(f"{self.name!r} exists and is not a TAP device (or the TAP "
                               f"flags do not match it)") from None
            raise NetError(f"cannot attach TAP device {self.name!r}: {e.strerror}") from None
        if up:
            try:
                _set_up(self.name)
            except OSError as e:
                os.close(fd)
                raise NetError(f"cannot bring TAP device {self.name!r} up: {e.strerror}") \
                    from None
        return fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """Close the fd (a device created by this object goes away). Safe to call twice."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "TapDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" in netns {self.netns}" if self.netns else ""
        return f"<TapDevice {self.name}{where} fd={self.fd}>"


def _set_up(name: str) -> None:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", name.encode(), 0)
        got = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req)
        flags = struct.unpack_from("H", got, 16)[0]
        if not flags & _IFF_UP:
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(),
                                                                 flags | _IFF_UP))


def parse_mac(text: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` -> 6 bytes (unicast only); NetError otherwise."""
    parts = text.split(":")
    if len(parts) != 6 or not all(re.fullmatch(r"[0-9A-Fa-f]{1,2}", p) for p in parts):
        raise NetError(f"bad MAC address {text!r} (want aa:bb:cc:dd:ee:ff)")
    mac = bytes(int(p, 16) for p in parts)
    if mac[0] & 1:
        raise NetError(f"MAC address {text} is a multicast address")
    if mac == bytes(6):
        raise NetError("MAC address 00:00:00:00:00:00 is not usable")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


@dataclass
class NetSpec:
    """What ``--net tap=NAME[,mac=..][,netns=NS][,vnet_hdr]`` says."""

    tap: str
    mac: bytes | None = None
    netns: str | None = None
    vnet_hdr: bool = False


def parse_net_spec(spec: str) -> NetSpec:
    """Parse a ``--net`` argument; NetError (one line) when it is wrong."""
    out = None
    mac = netns = None
    vnet = False
    for item in spec.split(","):
        key, eq, val = item.partition("=")
        key = key.strip()
        if key == "tap" and eq:
            check_tap_name(val)
            out = val
        elif key == "mac" and eq:
            mac = parse_mac(val)
        elif key == "netns" and eq and val:
            netns = val
        elif key == "vnet_hdr" and not eq:
            vnet = True
        else:
            raise NetError(f"bad --net item {item!r} (want tap=NAME[,mac=aa:bb:cc:dd:ee:ff]"
                           f"[,netns=NS][,vnet_hdr])")
    if out is None:
        raise NetError(f"--net {spec!r} names no TAP device (want tap=NAME)")
    return NetSpec(out, mac, netns, vnet)


# ============================================================================================
# Guest buffers (receive and send buffer GPADLs)
# ============================================================================================

class GuestBuffer:
    """A contiguous host view of a buffer the guest shared as a GPADL (pages of guest RAM mapped
    back to back from the RAM memfd; PROT_NONE guards around). Whole pages only: every range
    must start at offset 0 of its first page and cover whole pages."""

    def __init__(self, memory, gpadl):
        pfns = []
        for r in gpadl.ranges:
            if r.byte_offset != 0 or r.byte_count % PAGE_SIZE:
                raise ValueError("GPADL ranges are not whole pages")
            pfns += r.pfns[:r.byte_count // PAGE_SIZE]
        if len(pfns) < 2:
            raise ValueError("a buffer needs at least two pages")
        self.size = len(pfns) * PAGE_SIZE
        self.handle = gpadl.handle
        self._map = RingMapping.from_guest(memory, pfns, double=False)
        self.address = self._map.address

    def read(self, off: int, n: int) -> bytes:
        if off < 0 or n < 0 or off + n > self.size:
            raise IndexError("outside the buffer")
        return ctypes.string_at(self.address + off, n)

    def write(self, off: int, data: bytes) -> None:
        if off < 0 or off + len(data) > self.size:
            raise IndexError("outside the buffer")
        ctypes.memmove(self.address + off, data, len(data))

    def close(self) -> None:
        self._map.close()


# ============================================================================================
# The data path in Python (the oracle; csrc/hvr_net.c is its twin)
# ============================================================================================

STAT_KEYS = ("rx_frames", "rx_bytes", "rx_packets", "rx_dropped", "rx_wait_section",
             "rx_wait_ring", "tx_frames", "tx_bytes", "tx_dropped", "tx_packets", "control",
             "indications", "completions", "errors", "errors_lost")


class Config:
    """What both data paths need once the handshake is done."""

    def __init__(self, vsp: "NetvscVsp", memory, nvsp_version: int, recv: GuestBuffer,
                 recv_id: int, recv_section_size: int, send: GuestBuffer | None,
                 send_section_size: int):
        self.vsp = vsp
        self.memory = memory
        self.nvsp_version = nvsp_version
        self.recv = recv
        self.recv_id = recv_id
        self.recv_section_size = recv_section_size
        self.recv_section_count = recv.size // recv_section_size
        self.send = send
        self.send_section_size = send_section_size
        self.send_section_count = (send.size // send_section_size) if send else 0
        self.control_sections = min(4, self.recv_section_count // 4)


class PyDataPath:
    """The netvsc data path on the channel's Python thread: answers each packet exactly as
    csrc/hvr_net.c does (same statuses, same counters, same error records)."""

    def __init__(self, cfg: Config, oc: OpenChannel, record):
        self.cfg = cfg
        self.oc = oc
        self.vsp = cfg.vsp
        self.record_cb = record
        self.tap_fd = cfg.vsp.tap.fd if cfg.vsp.tap is not None else -1
        self.vnet = cfg.vsp.tap.vnet_hdr if cfg.vsp.tap is not None else 0
        n = cfg.recv_section_count
        self.free = list(range(n - 1, -1, -1))
        self.next = [NO_SECTION] * n
        self.gen = [0] * n
        self.state = [0] * n          # 0 free, 1 in a transaction, 2 a transaction's head
        self.rndis_initialized = False
        self.packet_filter = 0
        self.link_reported = 1
        self.recv_revoked = False
        self.send_revoked = False
        #: Called as ``on_revoke("recv"|"send")`` once the data path stopped using a buffer.
        self.on_revoke = None
        self.rx_blocked = 0
        self.tap_dead = False
        self.need = 0
        self.stats = dict.fromkeys(STAT_KEYS, 0)

    # -- errors and sections -------------------------------------------------------------

    def record(self, code: int, a: int = 0, b: int = 0, c: int = 0) -> None:
        self.stats["errors"] += 1
        self.record_cb(code, a & 0xFFFFFFFF, b & 0xFFFFFFFF, c & 0xFFFFFFFF)

    def rx_usable(self) -> bool:
        return not self.recv_revoked

    def sec_alloc(self, control: bool) -> int:
        if not self.free or (not control and len(self.free) <= self.cfg.control_sections):
            return NO_SECTION
        s = self.free.pop()
        self.state[s] = 1
        self.next[s] = NO_SECTION
        return s

    def sec_release(self, s: int) -> None:
        if self.state[s] == 0 or len(self.free) >= self.cfg.recv_section_count:
            return
        self.state[s] = 0
        self.gen[s] = (self.gen[s] + 1) & 0xFFFFFFFF
        self.free.append(s)

    def release_chain(self, s: int) -> None:
        guard = 0
        while s < self.cfg.recv_section_count and self.state[s] and \
                guard < self.cfg.recv_section_count:
            nxt = self.next[s]
            self.sec_release(s)
            s = nxt
            guard += 1

    def recv_completion(self, tid: int) -> None:
        s, gen = tid & 0xFFFFFFFF, tid >> 32
        if s >= self.cfg.recv_section_count or self.state[s] != 2 or self.gen[s] != gen:
            self.record(ERR_RECV_COMPLETION, tid & 0xFFFFFFFF, (tid >> 32) & 0xFFFFFFFF)
            return
        self.stats["completions"] += 1
        self.release_chain(s)

    @staticmethod
    def xfer_total(k: int) -> int:
        return packet_total(nw.NVSP_MESSAGE_SIZE, 8 + 8 * k)

    def send_xfer(self, secs: list[int], lens: list[int], channel_type: int) -> bool:
        msg = nw.nvsp_message()
        msg.hdr.msg_type = nw.NVSP_MSG1_TYPE_SEND_RNDIS_PKT
        rp = msg.msg.v1_msg.send_rndis_pkt
        rp.channel_type = channel_type
        rp.send_buf_section_index = NO_SECTION
        for i, s in enumerate(secs):
            self.next[s] = secs[i + 1] if i + 1 < len(secs) else NO_SECTION
        self.state[secs[0]] = 2
        size = self.cfg.recv_section_size
        ok = self.oc.outring.write_xfer_pages(
            self.cfg.recv_id, [(ln, s * size) for s, ln in zip(secs, lens)], bytes(msg),
            trans_id=secs[0] | (self.gen[secs[0]] << 32))
        if not ok:
            self.release_chain(secs[0])
        return ok

    def send_control(self, msg: bytes) -> None:
        if not self.rx_usable():
            self.record(ERR_NO_BUFFER, 1)
            return
        s = self.sec_alloc(True)
        if s == NO_SECTION:
            self.record(ERR_NO_SECTION)
            return
        self.cfg.recv.write(s * self.cfg.recv_section_size, msg)
        if not self.send_xfer([s], [len(msg)], nw.NVSP_CONTROL_CHANNEL_TYPE):
            self.record(ERR_NO_SECTION, 1)

    # -- guest packets -------------------------------------------------------------------

    def handle(self, pkt) -> bool:
        """Serve one packet (not consumed yet). False: no ring room now (``need`` set)."""
        out = self.oc.outring
        if pkt.type == VM_PKT_COMP:
            self.recv_completion(pkt.trans_id)
            return True
        if pkt.type not in (VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_GPA_DIRECT):
            self.record(ERR_PACKET_TYPE, pkt.type)
            return True
        payload = pkt.payload
        if len(payload) < 4:
            self.record(ERR_SHORT_NVSP, len(payload))
            return True
        raw = bytes(payload[:nw.NVSP_MESSAGE_SIZE]).ljust(nw.NVSP_MESSAGE_SIZE, b"\0")
        msg = nw.nvsp_message.from_buffer_copy(raw)
        t = msg.hdr.msg_type
        if t == nw.NVSP_MSG1_TYPE_SEND_RNDIS_PKT:
            if len(payload) < 16:
                self.record(ERR_SHORT_NVSP, len(payload), t)
                return True
            need = packet_total(8) + MAX_CONTROL * self.xfer_total(1)
            if out.free < need:
                self.need = need
                return False
            status = self.serve_rndis(pkt, msg.msg.v1_msg.send_rndis_pkt)
            if pkt.completion_requested:
                out.write_completion(struct.pack("<II", nw.NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE,
                                                 status), trans_id=pkt.trans_id)
            return True
        if t == nw.NVSP_MSG1_TYPE_REVOKE_RECV_BUF:
            if msg.msg.v1_msg.revoke_recv_buf.id == self.cfg.recv_id:
                self.recv_revoked = True
                if self.on_revoke is not None:
                    self.on_revoke("recv")
            else:
                self.record(ERR_NVSP_TYPE, t)
            return True
        if t == nw.NVSP_MSG1_TYPE_REVOKE_SEND_BUF:
            if self.cfg.send is not None:
                self.send_revoked = True
                if self.on_revoke is not None:
                    self.on_revoke("send")
            else:
                self.record(ERR_NVSP_TYPE, t)
            return True
        if t in (nw.NVSP_MSG1_TYPE_SEND_NDIS_VER, nw.NVSP_MSG2_TYPE_SEND_NDIS_CONFIG):
            return True
        self.record(ERR_NVSP_TYPE, t)
        if not pkt.completion_requested:
            return True
        need = packet_total(nw.NVSP_MESSAGE_SIZE)
        if out.free < need:
            self.need = need
            return False
        out.write_completion(refusal(t), trans_id=pkt.trans_id)
        return True

    def gather(self, pkt, rp) -> bytes | int:
        """The RNDIS bytes of a SEND_RNDIS_PKT, or an NVSP status when they cannot be had."""
        parts = []
        total = 0
        idx, size = rp.send_buf_section_index, rp.send_buf_section_size
        if idx != NO_SECTION:
            cfg = self.cfg
            if cfg.send is None or self.send_revoked:
                self.record(ERR_NO_BUFFER, 0, idx, size)
                return nw.NVSP_STAT_FAIL
            if idx >= cfg.send_section_count or size == 0 or size > cfg.send_section_size:
                self.record(ERR_SEND_SECTION, idx, size)
                return nw.NVSP_STAT_FAIL
            parts.append(cfg.send.read(idx * cfg.send_section_size, size))
            total += size
        if pkt.type == VM_PKT_DATA_USING_GPA_DIRECT:
            mem = self.cfg.memory
            nranges = 0
            gathered = 0
            for r in pkt.gpa_ranges:
                nranges += 1
                if nranges > MAX_RANGES or r.byte_count > MAX_MSG - total - gathered:
                    self.record(ERR_GPA, nranges, total + gathered)
                    return nw.NVSP_STAT_FAIL
                left, off = r.byte_count, r.byte_offset
                for pfn in r.pfns:
                    if not left:
                        break
                    take = min(PAGE_SIZE - off, left)
                    gpa = pfn * PAGE_SIZE + off
                    if pfn >= 1 << 52 or not mem.contains(gpa, take):
                        self.record(ERR_GPA, nranges, total + gathered)
                        return nw.NVSP_STAT_FAIL
                    parts.append(mem.read(gpa, take))
                    gathered += take
                    left -= take
                    off = 0
                if left:
                    self.record(ERR_GPA, nranges, total + gathered)
                    return nw.NVSP_STAT_FAIL
            if not nranges:
                self.record(ERR_GPA, 0, total)
                return nw.NVSP_STAT_FAIL
            total += gathered
        if not total:
            self.record(ERR_NO_DATA)
            return nw.NVSP_STAT_FAIL
        return b"".join(parts)

    def serve_rndis(self, pkt, rp) -> int:
        self.stats["tx_packets"] += 1
        data = self.gather(pkt, rp)
        if isinstance(data, int):
            return data
        bad = False
        for pass_ in (0, 1):
            off = 0
            controls = 0
            while off + 8 <= len(data):
                mtype, mlen = struct.unpack_from("<II", data, off)
                left = len(data) - off
                if mlen < 8 or mlen > left:
                    self.record(ERR_RNDIS_LEN, mlen, left)
                    return nw.NVSP_STAT_INVALID_RNDIS_PKT
                if mtype == nw.RNDIS_MSG_PACKET:
                    if pass_ == 1:
                        bad |= self.tx_packet(data, off, mlen)
                elif pass_ == 0:
                    controls += 1
                    if controls > MAX_CONTROL:
                        self.record(ERR_TOO_MANY, controls)
                        return nw.NVSP_STAT_INVALID_RNDIS_PKT
                else:
                    bad |= self.control(data, off, mtype, mlen)
                off += mlen
            if pass_ == 0 and off == 0:
                self.record(ERR_RNDIS_LEN, 0, len(data))
                return nw.NVSP_STAT_INVALID_RNDIS_PKT
        return nw.NVSP_STAT_INVALID_RNDIS_PKT if bad else nw.NVSP_STAT_SUCCESS

    def tx_packet(self, data: bytes, off: int, mlen: int) -> bool:
        body = mlen - 8
        if body < 36:
            self.record(ERR_RNDIS_PACKET, 0, 0, mlen)
            return True
        doff, dlen = struct.unpack_from("<II", data, off + 8)
        mtu = self.vsp.mtu
        if doff < 36 or doff > body or dlen > body - doff or dlen < 14 or dlen > mtu + 18:
            self.record(ERR_RNDIS_PACKET, doff, dlen, mlen)
            return True
        if self.tap_fd < 0 or self.tap_dead or not self.rndis_initialized:
            self.stats["tx_dropped"] += 1
            return False
        frame = data[off + 8 + doff:off + 8 + doff + dlen]
        try:
            os.writev(self.tap_fd, [bytes(self.vnet), frame] if self.vnet else [frame])
        except OSError as e:
            self.stats["tx_dropped"] += 1
            if e.errno in (_errno.EBADFD, _errno.EBADF):
                self.tap_dead = True
            self.record(ERR_TAP, e.errno or 0, 1)
            return False
        self.stats["tx_frames"] += 1
        self.stats["tx_bytes"] += dlen
        return False

    def control(self, data: bytes, off: int, mtype: int, mlen: int) -> bool:
        need = {nw.RNDIS_MSG_INIT: 16, nw.RNDIS_MSG_QUERY: 20, nw.RNDIS_MSG_SET: 20,
                nw.RNDIS_MSG_KEEPALIVE: 4, nw.RNDIS_MSG_HALT: 4, nw.RNDIS_MSG_RESET: 4}.get(mtype)
        if need is None:
            self.record(ERR_RNDIS_TYPE, mtype)
            return True
        body = mlen - 8
        if body < need:
            self.record(ERR_RNDIS_REQUEST, mtype, mlen)
            return True
        self.stats["control"] += 1
        b = data[off + 8:off + mlen]
        req_id = struct.unpack_from("<I", b, 0)[0]
        if mtype == nw.RNDIS_MSG_INIT:
            m = nw.rndis_message()
            m.ndis_msg_type = nw.RNDIS_MSG_INIT_C
            m.msg_len = nw.RNDIS_MESSAGE_SIZE(nw.rndis_initialize_complete)
            c = m.msg.init_complete
            c.req_id, c.status = req_id, nw.RNDIS_STATUS_SUCCESS
            c.major_ver, c.minor_ver = nw.RNDIS_MAJOR_VERSION, nw.RNDIS_MINOR_VERSION
            c.dev_flags, c.medium = nw.RNDIS_DF_CONNECTIONLESS, nw.RNDIS_MEDIUM_802_3
            c.max_pkt_per_msg = nw.RNDIS_MAX_PKT_DEFAULT
            c.max_xfer_size = self.cfg.send_section_size if self.cfg.send else MAX_MSG
            c.pkt_alignment_factor = 3
            self.rndis_initialized = True
            self.packet_filter = 0
            self.send_control(bytes(m)[:m.msg_len])
        elif mtype == nw.RNDIS_MSG_QUERY:
            _, oid, ilen, ioff = struct.unpack_from("<IIII", b, 0)
            inp = None
            if ilen and 20 <= ioff <= body and ilen <= body - ioff:
                inp = b[ioff:ioff + min(ilen, 256)]
            status, info = self.query_oid(oid, inp)
            self.send_control(struct.pack("<IIIIII", nw.RNDIS_MSG_QUERY_C, 24 + len(info), req_id,
                                          status, len(info), 16) + info)
        elif mtype == nw.RNDIS_MSG_SET:
            _, oid, ilen, ioff = struct.unpack_from("<IIII", b, 0)
            if ioff < 20 or ioff > body or ilen > body - ioff or ilen > 256:
                status = nw.RNDIS_STATUS_INVALID_DATA
                self.record(ERR_RNDIS_REQUEST, mtype, mlen, ioff)
            else:
                status = self.set_oid(oid, b[ioff:ioff + ilen])
            self.send_control(struct.pack("<IIII", nw.RNDIS_MSG_SET_C, 16, req_id, status))
        elif mtype == nw.RNDIS_MSG_KEEPALIVE:
            self.send_control(struct.pack("<IIII", nw.RNDIS_MSG_KEEPALIVE_C, 16, req_id,
                                          nw.RNDIS_STATUS_SUCCESS))
        elif mtype == nw.RNDIS_MSG_RESET:
            self.send_control(struct.pack("<IIII", nw.RNDIS_MSG_RESET_C, 16,
                                          nw.RNDIS_STATUS_SUCCESS, 0))
        else:  # HALT
            self.rndis_initialized = False
            self.packet_filter = 0
        return False

    def query_oid(self, oid: int, inp: bytes | None) -> tuple[int, bytes]:
        return query_answer(oid, inp, self.vsp, self.cfg.nvsp_version, self)

    def set_oid(self, oid: int, info: bytes) -> int:
        if oid == nw.RNDIS_OID_GEN_CURRENT_PACKET_FILTER:
            if len(info) < 4:
                return nw.RNDIS_STATUS_INVALID_LENGTH
            self.packet_filter = struct.unpack_from("<I", info)[0]
            return nw.RNDIS_STATUS_SUCCESS
        if oid == nw.RNDIS_OID_802_3_MULTICAST_LIST:
            return nw.RNDIS_STATUS_INVALID_LENGTH if len(info) % 6 else nw.RNDIS_STATUS_SUCCESS
        if oid == nw.RNDIS_OID_GEN_CURRENT_LOOKAHEAD:
            return nw.RNDIS_STATUS_INVALID_LENGTH if len(info) < 4 else nw.RNDIS_STATUS_SUCCESS
        if oid == nw.OID_TCP_OFFLOAD_PARAMETERS:
            return nw.RNDIS_STATUS_SUCCESS if offload_params_ok(info) else \
                nw.RNDIS_STATUS_NOT_SUPPORTED
        return nw.RNDIS_STATUS_NOT_SUPPORTED

    # -- TAP -> guest --------------------------------------------------------------------

    def wanted(self, frame: bytes) -> bool:
        f = self.packet_filter
        if f & nw.NDIS_PACKET_TYPE_PROMISCUOUS:
            return True
        if frame[:6] == b"\xff" * 6:
            return bool(f & nw.NDIS_PACKET_TYPE_BROADCAST)
        if frame[0] & 1:
            return bool(f & (nw.NDIS_PACKET_TYPE_MULTICAST | nw.NDIS_PACKET_TYPE_ALL_MULTICAST))
        return bool(f & nw.NDIS_PACKET_TYPE_DIRECTED) and frame[:6] == self.vsp.mac

    def _read_tap(self, n: int) -> bytes | None:
        try:
            return os.read(self.tap_fd, n)
        except BlockingIOError:
            return None
        except InterruptedError:
            return None
        except OSError as e:
            self.tap_dead = True
            self.record(ERR_TAP, e.errno or 0, 0)
            return None

    def rx_tap(self) -> int:
        self.rx_blocked = 0
        if self.tap_fd < 0 or self.tap_dead:
            return 0
        if not self.rx_usable() or not self.rndis_initialized or not self.packet_filter:
            moved = 0
            while moved < BATCH and self._read_tap(MAX_MSG):
                self.stats["rx_dropped"] += 1
                moved += 1
            return moved
        out = self.oc.outring
        free = out.free
        limit = self.vsp.rx_batch
        while limit and self.xfer_total(limit) > free:
            limit -= 1
        if not limit:
            if not out.request_space(self.xfer_total(1)):
                self.stats["rx_wait_ring"] += 1
                self.rx_blocked = 2
                return 0
            limit = 1
        size = self.cfg.recv_section_size
        room = size - RX_HEADER + self.vnet
        secs, lens = [], []
        moved = 0
        s = NO_SECTION
        while len(secs) < limit and moved < BATCH:
            if s == NO_SECTION:
                s = self.sec_alloc(False)
                if s == NO_SECTION:
                    self.stats["rx_wait_section"] += 1
                    self.rx_blocked = 1
                    break
            raw = self._read_tap(room)
            if raw is None:
                break
            moved += 1
            frame = raw[self.vnet:]
            if len(frame) < 14 or len(frame) > self.vsp.mtu + 18 or not self.wanted(frame):
                self.stats["rx_dropped"] += 1
                continue
            hdr = struct.pack("<II9I", nw.RNDIS_MSG_PACKET, RX_HEADER + len(frame), 36,
                              len(frame), 0, 0, 0, 0, 0, 0, 0)
            self.cfg.recv.write(s * size, hdr + frame)
            secs.append(s)
            lens.append(RX_HEADER + len(frame))
            self.stats["rx_bytes"] += len(frame)
            s = NO_SECTION
        if s != NO_SECTION:
            self.sec_release(s)
        if secs:
            if self.send_xfer(secs, lens, nw.NVSP_DATA_CHANNEL_TYPE):
                self.stats["rx_frames"] += len(secs)
                self.stats["rx_packets"] += 1
            else:
                self.stats["rx_dropped"] += len(secs)
        return moved

    def link_check(self) -> int:
        up = 1 if self.vsp.link_up else 0
        if not self.rndis_initialized or up == self.link_reported or not self.rx_usable():
            return 0
        if self.oc.outring.free < self.xfer_total(1) or not self.free:
            return 0
        self.link_reported = up
        self.stats["indications"] += 1
        self.send_control(struct.pack("<IIIII", nw.RNDIS_MSG_INDICATE, 20,
                                      nw.RNDIS_STATUS_MEDIA_CONNECT if up else
                                      nw.RNDIS_STATUS_MEDIA_DISCONNECT, 0, 0))
        return 1


def offload_params_ok(info: bytes) -> bool:
    """An ndis_offload_params that enables nothing (0 = no change, 1 = disabled)."""
    if len(info) < 4:
        return False
    o = nw.ndis_offload_params.from_buffer_copy(info[:28].ljust(28, b"\0"))
    fields = ("ip_v4_csum", "tcp_ip_v4_csum", "udp_ip_v4_csum", "tcp_ip_v6_csum",
              "udp_ip_v6_csum", "lso_v1", "ip_sec_v1", "lso_v2_ipv4", "lso_v2_ipv6",
              "tcp_connection_ip_v4", "tcp_connection_ip_v6", "ip_sec_v2", "ip_sec_v2_ip_v4",
              "rsc_ip_v4", "rsc_ip_v6", "encapsulated_packet_task_offload")
    return all(getattr(o, f) <= 1 for f in fields)


SUPPORTED_OIDS = (
    nw.RNDIS_OID_GEN_SUPPORTED_LIST, nw.RNDIS_OID_GEN_HARDWARE_STATUS,
    nw.RNDIS_OID_GEN_MEDIA_SUPPORTED, nw.RNDIS_OID_GEN_MEDIA_IN_USE,
    nw.RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE, nw.RNDIS_OID_GEN_LINK_SPEED,
    nw.RNDIS_OID_GEN_MAXIMUM_TOTAL_SIZE, nw.RNDIS_OID_GEN_CURRENT_PACKET_FILTER,
    nw.RNDIS_OID_GEN_MEDIA_CONNECT_STATUS, nw.RNDIS_OID_GEN_MAXIMUM_SEND_PACKETS,
    nw.RNDIS_OID_GEN_XMIT_OK, nw.RNDIS_OID_GEN_RCV_OK, nw.RNDIS_OID_802_3_PERMANENT_ADDRESS,
    nw.RNDIS_OID_802_3_CURRENT_ADDRESS, nw.RNDIS_OID_802_3_MAXIMUM_LIST_SIZE,
    nw.OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES,
)


def query_answer(oid: int, inp: bytes | None, vsp: "NetvscVsp", nvsp_version: int,
                 dp: PyDataPath) -> tuple[int, bytes]:
    """(RNDIS status, info bytes) for a QUERY (csrc/hvr_net.c's query_oid())."""
    u32 = lambda v: struct.pack("<I", v & 0xFFFFFFFF)  # noqa: E731
    if oid == nw.RNDIS_OID_GEN_SUPPORTED_LIST:
        return nw.RNDIS_STATUS_SUCCESS, struct.pack(f"<{len(SUPPORTED_OIDS)}I", *SUPPORTED_OIDS)
    if oid in (nw.RNDIS_OID_GEN_HARDWARE_STATUS, nw.RNDIS_OID_GEN_MEDIA_SUPPORTED,
               nw.RNDIS_OID_GEN_MEDIA_IN_USE):
        return nw.RNDIS_STATUS_SUCCESS, u32(0)
    if oid == nw.RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE:
        return nw.RNDIS_STATUS_SUCCESS, u32(vsp.mtu)
    if oid == nw.RNDIS_OID_GEN_MAXIMUM_TOTAL_SIZE:
        return nw.RNDIS_STATUS_SUCCESS, u32(vsp.mtu + 14)
    if oid == nw.RNDIS_OID_GEN_LINK_SPEED:
        return nw.RNDIS_STATUS_SUCCESS, u32(vsp.link_speed)
    if oid == nw.RNDIS_OID_GEN_CURRENT_PACKET_FILTER:
        return nw.RNDIS_STATUS_SUCCESS, u32(dp.packet_filter)
    if oid == nw.RNDIS_OID_GEN_MEDIA_CONNECT_STATUS:
        dp.link_reported = 1 if vsp.link_up else 0
        return nw.RNDIS_STATUS_SUCCESS, u32(nw.NDIS_MEDIA_STATE_CONNECTED if dp.link_reported
                                            else nw.NDIS_MEDIA_STATE_DISCONNECTED)
    if oid == nw.RNDIS_OID_GEN_MAXIMUM_SEND_PACKETS:
        return nw.RNDIS_STATUS_SUCCESS, u32(nw.RNDIS_MAX_PKT_DEFAULT)
    if oid == nw.RNDIS_OID_GEN_XMIT_OK:
        return nw.RNDIS_STATUS_SUCCESS, u32(dp.stats["tx_frames"])
    if oid == nw.RNDIS_OID_GEN_RCV_OK:
        return nw.RNDIS_STATUS_SUCCESS, u32(dp.stats["rx_frames"])
    if oid == nw.RNDIS_OID_802_3_MAXIMUM_LIST_SIZE:
        return nw.RNDIS_STATUS_SUCCESS, u32(32)
    if oid in (nw.RNDIS_OID_802_3_PERMANENT_ADDRESS, nw.RNDIS_OID_802_3_CURRENT_ADDRESS):
        return nw.RNDIS_STATUS_SUCCESS, bytes(vsp.mac)
    if oid == nw.OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES:
        if nvsp_version >= nw.NVSP_PROTOCOL_VERSION_5:
            size, rev = nw.NDIS_OFFLOAD_SIZE, nw.NDIS_OFFLOAD_PARAMETERS_REVISION_3
        elif nvsp_version >= nw.NVSP_PROTOCOL_VERSION_4:
            size, rev = nw.NDIS_OFFLOAD_SIZE_6_1, nw.NDIS_OFFLOAD_PARAMETERS_REVISION_2
        else:
            size, rev = nw.NDIS_OFFLOAD_SIZE_6_0, nw.NDIS_OFFLOAD_PARAMETERS_REVISION_1
        if inp is not None and len(inp) >= 4:
            t, r, s = struct.unpack_from("<BBH", inp)
            if t == nw.NDIS_OBJECT_TYPE_OFFLOAD and 1 <= r <= 3 and \
                    nw.NDIS_OFFLOAD_SIZE_6_0 <= s <= nw.NDIS_OFFLOAD_SIZE:
                size, rev = s, r
        caps = nw.ndis_offload()
        caps.header.type = nw.NDIS_OBJECT_TYPE_OFFLOAD
        caps.header.revision = rev
        caps.header.size = size
        return nw.RNDIS_STATUS_SUCCESS, bytes(caps)[:size]
    return nw.RNDIS_STATUS_NOT_SUPPORTED, b""


def refusal(msg_type: int) -> bytes:
    """The completion refusing an NVSP request that is not served now (csrc/hvr_net.c)."""
    r = nw.nvsp_message()
    if msg_type == nw.NVSP_MSG_TYPE_INIT:
        r.hdr.msg_type = nw.NVSP_MSG_TYPE_INIT_COMPLETE
        r.msg.init_msg.init_complete.status = nw.NVSP_STAT_FAIL
    elif msg_type == nw.NVSP_MSG1_TYPE_SEND_RECV_BUF:
        r.hdr.msg_type = nw.NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE
        r.msg.v1_msg.send_recv_buf_complete.status = nw.NVSP_STAT_FAIL
    elif msg_type == nw.NVSP_MSG1_TYPE_SEND_SEND_BUF:
        r.hdr.msg_type = nw.NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE
        r.msg.v1_msg.send_send_buf_complete.status = nw.NVSP_STAT_FAIL
    elif msg_type == nw.NVSP_MSG5_TYPE_SUBCHANNEL:
        r.hdr.msg_type = nw.NVSP_MSG5_TYPE_SUBCHANNEL
        r.msg.v5_msg.subchn_comp.status = nw.NVSP_STAT_FAIL
    else:
        r.hdr.msg_type = msg_type
        r.msg.v1_msg.send_rndis_pkt_complete.status = nw.NVSP_STAT_FAIL
    return bytes(r)


# ============================================================================================
# The C data path
# ============================================================================================

class CNet:
    """``struct hvr_net`` (csrc/hvr_net.c) for one channel: configuration from the handshake,
    RAM regions, section tables. Idempotent :meth:`close` (after the plane stopped)."""

    def __init__(self, cfg: Config, err_fd: int):
        from ..vmbus._hvring import ffi, lib
        self._ffi, self._lib = ffi, lib
        self._n = None
        vsp = cfg.vsp
        regions = cfg.memory.regions
        self._regions = ffi.new("struct hvr_ram_region[]", len(regions))
        for i, r in enumerate(regions):
            self._regions[i].gpa = r.gpa
            self._regions[i].size = r.size
            self._regions[i].host = ffi.cast("uint8_t *", r.host_addr)
        n = ffi.new("struct hvr_net *")
        n.regions = self._regions
        n.nregions = len(regions)
        n.tap_fd = vsp.tap.fd if vsp.tap is not None else -1
        n.vnet_hdr = vsp.tap.vnet_hdr if vsp.tap is not None else 0
        n.mtu = vsp.mtu
        ffi.memmove(n.mac, vsp.mac, 6)
        n.recv_buf_id = cfg.recv_id
        n.nvsp_version = cfg.nvsp_version
        n.recv_buf = ffi.cast("uint8_t *", cfg.recv.address)
        n.recv_buf_size = cfg.recv.size
        n.recv_section_size = cfg.recv_section_size
        n.recv_section_count = cfg.recv_section_count
        if cfg.send is not None:
            n.send_buf = ffi.cast("uint8_t *", cfg.send.address)
            n.send_buf_size = cfg.send.size
            n.send_section_size = cfg.send_section_size
            n.send_section_count = cfg.send_section_count
        n.control_sections = cfg.control_sections
        n.rx_batch = vsp.rx_batch
        n.link_speed = vsp.link_speed
        n.err_fd = err_fd
        n.link_up = 1 if vsp.link_up else 0
        n.link_reported = 1
        rc = lib.hvr_net_init(n)
        if rc != 0:
            lib.hvr_net_fini(n)
            raise ValueError(f"hvr_net_init failed ({rc}): bad buffers or configuration")
        self._n = n

    @property
    def stats(self) -> dict[str, int]:
        st = self._n.stats
        return {k: getattr(st, k) for k in STAT_KEYS}

    def set_link(self, up: bool) -> None:
        self._n.link_up = 1 if up else 0

    def state(self) -> dict:
        n = self._n
        return {"rndis_initialized": bool(n.rndis_initialized), "packet_filter": n.packet_filter,
                "free_sections": n.nfree, "tap_dead": bool(n.tap_dead)}

    def revoked(self) -> tuple[bool, bool]:
        """(receive, send) buffer revoked by the guest: the plane no longer touches it (it sets
        the flag on its own thread before it wakes the parent)."""
        n = self._n
        return bool(n.recv_revoked), bool(n.send_revoked)

    def pop_errors(self) -> list[tuple[int, int, int, int]]:
        out = []
        e = self._ffi.new("struct hvr_net_error *")
        while self._lib.hvr_net_pop_error(self._n, e):
            out.append((e.code, e.a, e.b, e.c))
        return out

    def make_plane(self, oc: OpenChannel, spin_us: int):
        from ..vmbus import plane as cplane
        cplane.HANDLERS.setdefault("net", "hvr_net_handler")
        return _NetPlane(oc.server.partition, oc, "net", spin_us,
                         ctx=self._ffi.cast("void *", self._n))

    def close(self) -> None:
        if self._n is not None:
            self._lib.hvr_net_fini(self._n)
            self._n = None


class _NetPlane(CDataPlane):
    """A CDataPlane whose thread is hvr_net_start()'s (the guest's ring and the TAP)."""

    def start(self) -> None:
        from ..vmbus._hvring import lib
        rc = lib.hvr_net_start(self._p)
        if rc != 0:
            raise PlaneError(f"cannot start the netvsc thread: {os.strerror(-rc)}")
        self._started = True


# ============================================================================================
# The channel: handshake, then a data path
# ============================================================================================

class _Channel(ChannelThread):
    """One open channel: the Python thread (handshake; the data path for plane="python"; error
    logging for plane="c") and, after the handshake, the C plane."""

    def __init__(self, vsp: "NetvscVsp", oc: OpenChannel):
        self.vsp = vsp
        self.oc = oc
        self.memory = oc.server.memory
        self.nvsp_version: int | None = None
        self.ndis_version: int | None = None
        self.ndis_mtu: int | None = None
        self.recv: GuestBuffer | None = None
        self.recv_id = 0
        self.recv_section_size = 0
        self.send: GuestBuffer | None = None
        self.send_section_size = 0
        self.data: PyDataPath | None = None
        self.cnet: CNet | None = None
        self.plane = None
        self.plane_error: str | None = None
        self.broken: str | None = None
        self.handshake_stats = {"handshake": 0, "errors": 0}
        self.error_counts: dict[str, int] = {}
        #: "recv"/"send" -> the GPADL of that buffer, held (its teardown deferred) until the
        #: guest revokes the buffer or the channel closes.
        self._holds: dict = {}
        self._log_times: deque = deque(maxlen=20)
        self._err_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._err_lock = threading.Lock()
        super().__init__(f"hvkvm-netvsc-{oc.relid}")

    # -- errors ---------------------------------------------------------------------------

    def record(self, code: int, a: int = 0, b: int = 0, c: int = 0) -> None:
        """Count and log one guest error (rate-limited to 20 lines a second per channel; the
        channel server keeps the text and logs each kind once)."""
        name = ERROR_NAMES.get(code, str(code))
        self.error_counts[name] = self.error_counts.get(name, 0) + 1
        text = f"netvsc relid {self.oc.relid}: {describe_error(code, a, b, c)}"
        self.vsp.errors.append(text)
        self.oc.server.channels._error(f"netvsc-{name}", text)
        now = time.monotonic()
        if len(self._log_times) < self._log_times.maxlen or now - self._log_times[0] > 1.0:
            self._log_times.append(now)
            log.warning("%s", text)

    def _handshake_error(self, code: int, a: int = 0, b: int = 0, c: int = 0) -> None:
        self.handshake_stats["errors"] += 1
        self.record(code, a, b, c)

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except RingBrokenError as e:
            self.broken = str(e)
            self.oc.server.channels._error("ring", f"relid {self.oc.relid}: {e}")
        except Exception:
            log.exception("netvsc: channel %d failed", self.oc.relid)
            self.broken = "internal error"

    def _serve(self) -> None:
        oc = self.oc
        poller = select.poll()
        poller.register(oc.eventfd, select.POLLIN)
        poller.register(self._stop_fd, select.POLLIN)
        tap_registered = False
        while not self._closed:
            state = self._drain()
            if state == "handover" and self.vsp.plane == "c":
                if self._hand_over():
                    return self._watch_errors()
                continue
            dp = self.data
            moved = state == "more"
            if dp is not None:
                moved |= dp.link_check() > 0
                moved |= dp.rx_tap() > 0
                self._commit()
            if moved:
                continue
            if state == "idle" and oc.inring.unmask():
                continue
            want_tap = dp is not None and dp.tap_fd >= 0 and not dp.rx_blocked and \
                not dp.tap_dead
            if want_tap != tap_registered:
                if want_tap:
                    poller.register(dp.tap_fd, select.POLLIN)
                else:
                    poller.unregister(self.vsp.tap.fd)
                tap_registered = want_tap
            events = dict(poller.poll())
            if self._stop_fd in events:
                return
            try:
                os.eventfd_read(oc.eventfd)
                oc.guest_signals += 1
            except BlockingIOError:
                pass

    def _commit(self) -> None:
        oc = self.oc
        if oc.outring.commit():
            oc.signal_guest()
        if oc.inring.commit():
            oc.signal_guest()

    def _drain(self) -> str:
        """Serve guest packets: "idle", "full" (waiting for ring room), "more" (a batch done),
        "handover" (the data phase begins and the C plane should take the channel)."""
        inr, outr = self.oc.inring, self.oc.outring
        state, n = "idle", 0
        while n < BATCH:
            pkt = inr.peek()
            if pkt is None:
                break
            if self.data is not None:
                if not self.data.handle(pkt):
                    if outr.request_space(self.data.need):
                        continue
                    state = "full"
                    break
            else:
                r = self._handshake(pkt)
                if r == "handover":
                    if self.vsp.plane == "c":
                        state = "handover"
                        break
                    continue  # the Python data path serves the same packet now
                if r == "full":
                    state = "full"
                    break
            inr.read()
            n += 1
        else:
            state = "more"
        self._commit()
        return state

    # -- the NVSP handshake ---------------------------------------------------------------

    def _complete(self, pkt, msg: nw.nvsp_message) -> str | None:
        if not pkt.completion_requested:
            return None
        if not self.oc.outring.write_completion(bytes(msg), trans_id=pkt.trans_id):
            if self.oc.outring.request_space(packet_total(nw.NVSP_MESSAGE_SIZE)):
                self.oc.outring.write_completion(bytes(msg), trans_id=pkt.trans_id)
                return None
            return "full"
        return None

    def _handshake(self, pkt) -> str | None:
        """One packet before the data phase. Returns "handover", "full" (not consumed) or
        None (served)."""
        if pkt.completion_requested and \
                self.oc.outring.free < packet_total(nw.NVSP_MESSAGE_SIZE):
            if not self.oc.outring.request_space(packet_total(nw.NVSP_MESSAGE_SIZE)):
                return "full"
        self.handshake_stats["handshake"] += 1
        if pkt.type == VM_PKT_COMP:
            self._handshake_error(ERR_RECV_COMPLETION, pkt.trans_id & 0xFFFFFFFF,
                                  pkt.trans_id >> 32)
            return None
        if pkt.type not in (VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_GPA_DIRECT):
            self._handshake_error(ERR_PACKET_TYPE, pkt.type)
            return None
        payload = pkt.payload
        if len(payload) < 4:
            self._handshake_error(ERR_SHORT_NVSP, len(payload))
            return None
        msg = nw.nvsp_message.from_buffer_copy(
            bytes(payload[:nw.NVSP_MESSAGE_SIZE]).ljust(nw.NVSP_MESSAGE_SIZE, b"\0"))
        t = msg.hdr.msg_type
        body = {nw.NVSP_MSG_TYPE_INIT: 8, nw.NVSP_MSG1_TYPE_SEND_NDIS_VER: 8,
                nw.NVSP_MSG2_TYPE_SEND_NDIS_CONFIG: 16, nw.NVSP_MSG1_TYPE_SEND_RECV_BUF: 6,
                nw.NVSP_MSG1_TYPE_SEND_SEND_BUF: 6, nw.NVSP_MSG1_TYPE_SEND_RNDIS_PKT: 12,
                nw.NVSP_MSG1_TYPE_REVOKE_RECV_BUF: 2,
                nw.NVSP_MSG1_TYPE_REVOKE_SEND_BUF: 2}.get(t)
        if body is not None and len(payload) < 4 + body:
            self._handshake_error(ERR_SHORT_NVSP, len(payload), t)
            return None
        r = nw.nvsp_message()
        if t == nw.NVSP_MSG_TYPE_INIT:
            lo, hi = msg.msg.init_msg.init.min_protocol_ver, msg.msg.init_msg.init.max_protocol_ver
            ok = [v for v in nw.NVSP_VERSIONS if lo <= v <= hi]
            r.hdr.msg_type = nw.NVSP_MSG_TYPE_INIT_COMPLETE
            c = r.msg.init_msg.init_complete
            if ok and self.recv is None:
                self.nvsp_version = ok[0]
                c.negotiated_protocol_ver = ok[0]
                c.max_mdl_chain_len = 34
                c.status = nw.NVSP_STAT_SUCCESS
            else:
                c.negotiated_protocol_ver = nw.NVSP_INVALID_PROTOCOL_VERSION
                c.status = nw.NVSP_STAT_FAIL
            return self._complete(pkt, r)
        if t == nw.NVSP_MSG1_TYPE_SEND_NDIS_VER:
            v = msg.msg.v1_msg.send_ndis_ver
            self.ndis_version = (v.ndis_major_ver << 16) | (v.ndis_minor_ver & 0xFFFF)
            return None
        if t == nw.NVSP_MSG2_TYPE_SEND_NDIS_CONFIG:
            self.ndis_mtu = msg.msg.v2_msg.send_ndis_config.mtu
            return None
        if t == nw.NVSP_MSG1_TYPE_SEND_RECV_BUF:
            r.hdr.msg_type = nw.NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE
            c = r.msg.v1_msg.send_recv_buf_complete
            c.status = nw.NVSP_STAT_FAIL
            req = msg.msg.v1_msg.send_recv_buf
            buf = self._map(req.gpadl_handle, "recv") if self.nvsp_version is not None and \
                self.recv is None else None
            if buf is not None:
                # the largest frame + 1 (a longer one the TAP truncates shows as too long)
                size = max(nw.NETVSC_RECV_SECTION_SIZE, (RX_HEADER + self.vsp.mtu + 19 + 7) & ~7)
                count = buf.size // size
                if count < 2 or self._too_big(buf, "receive", MAX_RECV_BUFFER):
                    self._drop(buf, "recv")
                else:
                    self.recv, self.recv_id, self.recv_section_size = buf, req.id, size
                    c.status = nw.NVSP_STAT_SUCCESS
                    c.num_sections = 1
                    sec = c.sections[0]
                    sec.offset, sec.sub_alloc_size = 0, size
                    sec.num_sub_allocs, sec.end_offset = count, count * size
            if c.status != nw.NVSP_STAT_SUCCESS:
                self._handshake_error(ERR_NO_BUFFER, 1, req.gpadl_handle)
            return self._complete(pkt, r)
        if t == nw.NVSP_MSG1_TYPE_SEND_SEND_BUF:
            r.hdr.msg_type = nw.NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE
            c = r.msg.v1_msg.send_send_buf_complete
            c.status = nw.NVSP_STAT_FAIL
            req = msg.msg.v1_msg.send_send_buf
            buf = self._map(req.gpadl_handle, "send") if self.nvsp_version is not None and \
                self.send is None else None
            if buf is not None and self._too_big(buf, "send", MAX_SEND_BUFFER):
                self._drop(buf, "send")
                buf = None
            if buf is not None:
                size = min(nw.NETVSC_SEND_SECTION_SIZE, buf.size)
                self.send, self.send_section_size = buf, size
                c.status = nw.NVSP_STAT_SUCCESS
                c.section_size = size
            else:
                self._handshake_error(ERR_NO_BUFFER, 0, req.gpadl_handle)
            return self._complete(pkt, r)
        if t == nw.NVSP_MSG1_TYPE_SEND_RNDIS_PKT:
            if self.recv is not None:
                return self._start_data()
            self._handshake_error(ERR_NO_BUFFER, 1)
            if pkt.completion_requested:
                return self._complete_raw(pkt, struct.pack(
                    "<II", nw.NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE, nw.NVSP_STAT_FAIL))
            return None
        if t == nw.NVSP_MSG1_TYPE_REVOKE_RECV_BUF:
            if self.recv is not None and msg.msg.v1_msg.revoke_recv_buf.id == self.recv_id:
                self.recv.close()
                self.recv = None
                self._let_go("recv")
            else:
                self._handshake_error(ERR_NVSP_TYPE, t)
            return None
        if t == nw.NVSP_MSG1_TYPE_REVOKE_SEND_BUF:
            if self.send is not None:
                self.send.close()
                self.send = None
                self._let_go("send")
            else:
                self._handshake_error(ERR_NVSP_TYPE, t)
            return None
        self._handshake_error(ERR_NVSP_TYPE, t)
        if pkt.completion_requested:
            return self._complete_raw(pkt, refusal(t))
        return None

    def _complete_raw(self, pkt, payload: bytes) -> str | None:
        if not self.oc.outring.write_completion(payload, trans_id=pkt.trans_id):
            return "full"
        return None

    # -- buffer GPADLs: the host keeps a reference while it uses one ---------------------

    def _server_locked(self, fn, *, wait: bool = False) -> bool:
        """``fn()`` under the VMBus server's lock. From this channel's thread (``wait`` False)
        the lock's holder may be closing the channel and joining this thread: then give up
        (False); close() lets go of whatever is still held."""
        lock = self.oc.server._lock
        if wait:
            lock.acquire()
        else:
            while not lock.acquire(timeout=0.05):
                if self._closed:
                    return False
        try:
            fn()
        finally:
            lock.release()
        return True

    def _map(self, handle: int, role: str) -> GuestBuffer | None:
        """A host view of the buffer GPADL ``handle`` for ``role`` ("recv"/"send"); the GPADL
        stays held (a GPADL_TEARDOWN of it waits) until :meth:`_let_go` of ``role``."""
        relid = self.oc.relid

        def hold():
            g = self.oc.server.channels.hold_gpadl(relid, handle)
            if g is not None:
                self._holds[role] = g
        if not self._server_locked(hold) or role not in self._holds:
            return None
        try:
            return GuestBuffer(self.memory, self._holds[role])
        except (ValueError, OSError) as e:
            log.warning("netvsc relid %d: GPADL %d not usable as a buffer: %s", relid,
                        handle, e)
            self._let_go(role)
            return None

    def _too_big(self, buf: GuestBuffer, what: str, limit: int) -> bool:
        """A buffer over the limit is refused, with an error saying so."""
        if buf.size <= limit:
            return False
        self.oc.server.channels._error(
            "netvsc-buffer-size", f"netvsc relid {self.oc.relid}: {what} buffer of {buf.size} "
                                  f"bytes refused (at most {limit})")
        return True

    def _drop(self, buf: GuestBuffer, role: str) -> None:
        """Unmap a buffer never put to use and let go of its GPADL."""
        buf.close()
        self._let_go(role)

    def _let_go(self, role: str, *, wait: bool = False) -> None:
        """The host stopped touching the ``role`` ("recv"/"send") buffer for good (the guest
        revoked it, or the channel is closing): a GPADL_TEARDOWN of it may complete. The host
        view stays mapped until close (the C plane holds its address); no thread uses it."""
        def release():
            g = self._holds.pop(role, None)
            if g is not None:
                self.oc.server.channels.release_gpadl(self.oc.relid, g)
        self._server_locked(release, wait=wait)

    def _start_data(self) -> str:
        cfg = Config(self.vsp, self.memory, self.nvsp_version or nw.NVSP_PROTOCOL_VERSION_1,
                     self.recv, self.recv_id, self.recv_section_size, self.send,
                     self.send_section_size)
        self.config = cfg
        if self.vsp.plane == "python":
            self.data = PyDataPath(cfg, self.oc, self.record)
            self.data.on_revoke = self._let_go
        return "handover"

    def _hand_over(self) -> bool:
        """Start the C plane (the handshake's answers are committed). False: it could not be
        built; the Python data path serves instead (plane_error says why)."""
        with self._lock:
            if self._closed:
                return True
            try:
                cnet = CNet(self.config, self._err_fd)
                try:
                    plane = cnet.make_plane(self.oc, self.vsp.spin_us)
                    plane.start()
                except BaseException:
                    cnet.close()
                    raise
            except Exception as e:
                self.plane_error = str(e)
                log.error("netvsc: relid %d: no C data plane (%s); serving from Python",
                          self.oc.relid, e)
                self.data = PyDataPath(self.config, self.oc, self.record)
                self.data.on_revoke = self._let_go
                return False
            self.cnet, self.plane = cnet, plane
            return True

    def _watch_errors(self) -> None:
        """After the hand-over: log what the C plane records, until the channel closes."""
        poller = select.poll()
        poller.register(self._err_fd, select.POLLIN)
        poller.register(self._stop_fd, select.POLLIN)
        while not self._closed:
            events = dict(poller.poll(1000))
            try:
                os.eventfd_read(self._err_fd)
            except BlockingIOError:
                pass
            self._drain_errors()
            self._check_revoked()
            if self._stop_fd in events:
                return

    def _check_revoked(self) -> None:
        """The C plane stopped using a buffer the guest revoked: let go of its GPADL."""
        cnet = self.cnet
        if cnet is None:
            return
        recv, send = cnet.revoked()
        for role, gone in (("recv", recv), ("send", send)):
            if gone and role in self._holds:
                self._let_go(role)

    def _drain_errors(self) -> None:
        cnet = self.cnet
        if cnet is None:
            return
        # The C plane's error queue has one consumer at a time: the watcher thread, or stats()
        # catching up so that what it reports includes every error already queued.
        with self._err_lock:
            for e in cnet.pop_errors():
                self.record(*e)

    # -- control --------------------------------------------------------------------------

    def set_link(self, up: bool) -> None:
        """Report link ``up``/down to the guest (an RNDIS indication once RNDIS is up)."""
        if self.cnet is not None:
            self.cnet.set_link(up)
        try:
            os.eventfd_write(self.oc.eventfd, 1)   # wake whichever thread serves the channel
        except OSError:
            pass

    def stats(self) -> dict:
        """Counters of this channel."""
        out: dict = {"plane": "c" if self.plane is not None else "python",
                     "nvsp_version": self.nvsp_version, "ndis_version": self.ndis_version,
                     "handshake_packets": self.handshake_stats["handshake"]}
        if self.cnet is not None:
            self._drain_errors()
            out.update(self.cnet.stats)
            out.update(self.cnet.state())
            ps = self.plane.stats
            out["kicks"] = ps["kicks"]
            out["signals"] = ps["signals"]
            out.update({f"plane_{k}": v for k, v in ps.items()})
        else:
            dp = self.data
            out.update(dp.stats if dp is not None else dict.fromkeys(STAT_KEYS, 0))
            if dp is not None:
                out.update({"rndis_initialized": dp.rndis_initialized,
                            "packet_filter": dp.packet_filter, "free_sections": len(dp.free),
                            "tap_dead": dp.tap_dead})
            out["kicks"] = self.oc.guest_signals
            out["signals"] = self.oc.host_signals
        out["errors"] = out.get("errors", 0) + self.handshake_stats["errors"]
        out["handshake_errors"] = self.handshake_stats["errors"]
        out["error_kinds"] = dict(self.error_counts)
        if self.recv is not None:
            out["recv_buffer"] = self.recv.size
            out["recv_sections"] = self.recv.size // self.recv_section_size
        if self.send is not None:
            out["send_buffer"] = self.send.size
        return out

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the thread and the C plane; nothing touches the rings or buffers afterwards."""
        self._stop_thread()
        with self._lock:
            if self.plane is not None:
                self.plane.close()
                self._drain_errors()
                self.final_stats = self.stats()
                self.cnet.close()
        self.final_stats = getattr(self, "final_stats", None) or self.stats()
        for b in (self.recv, self.send):
            if b is not None:
                b.close()
        # Nothing touches the buffers now: deferred GPADL teardowns of them may complete.
        for role in list(self._holds):
            self._let_go(role, wait=True)
        os.close(self._stop_fd)
        os.close(self._err_fd)


class NetvscVsp(Vsp):
    """A synthetic NIC: one channel of class ``HV_NIC_GUID`` moving frames to and from ``tap``
    (a :class:`TapDevice`, or None: frames from the guest are dropped, none arrive). The VSP
    does not own the TAP: close it after the partition.

    ``plane``: "c" (default; the C data plane after the handshake) or "python". ``mac``: 6
    bytes (default 00:15:5d + 3 bytes of the instance id). ``mtu``: the largest payload
    (OID_GEN_MAXIMUM_FRAME_SIZE; frames are at most mtu + 18 bytes).
    """

    class_id = w.HV_NIC_GUID
    name = "netvsc"
    python_signals = False      # each channel has its own thread (and then, maybe, a C plane)

    def __init__(self, tap: TapDevice | None, *, mac: bytes | None = None, plane: str = "c",
                 instance_id: uuid.UUID | None = None, mtu: int = 1500, spin_us: int = 50,
                 rx_batch: int = DEFAULT_RX_BATCH, link_speed: int = DEFAULT_LINK_SPEED):
        if plane not in ("c", "python"):
            raise ValueError(f"netvsc plane must be c or python, not {plane!r}")
        if not 68 <= mtu <= 9000:
            raise ValueError("mtu must be 68..9000")
        if not 1 <= rx_batch <= 32:
            raise ValueError("rx_batch must be 1..32")
        self.tap = tap
        self.plane = plane
        self.instance_id = instance_id or uuid.uuid4()
        self.mac = bytes(mac) if mac is not None else HYPERV_OUI + self.instance_id.bytes[-3:]
        if len(self.mac) != 6:
            raise ValueError("mac must be 6 bytes")
        self.mtu = mtu
        self.spin_us = spin_us
        self.rx_batch = rx_batch
        self.link_speed = link_speed
        self.link_up = True
        self.channels: dict[int, _Channel] = {}
        self.closed_stats: list[dict] = []
        self.errors: deque[str] = deque(maxlen=200)

    def open(self, channel: OpenChannel) -> int:
        """Accept the channel; its thread starts once OPENCHANNEL_RESULT went out."""
        self.channels[channel.relid] = _Channel(self, channel)
        return 0

    def started(self, channel: OpenChannel) -> None:
        """Serve the channel (the handshake first)."""
        self.channels[channel.relid].start()

    def close(self, channel: OpenChannel) -> None:
        """Stop serving the channel."""
        ch = self.channels.pop(channel.relid, None)
        if ch is not None:
            ch.close()
            self.closed_stats.append(ch.final_stats)

    def set_link(self, up: bool) -> None:
        """Link state the guest sees (OID_GEN_MEDIA_CONNECT_STATUS, and an RNDIS_MSG_INDICATE
        when it changes while RNDIS is initialized)."""
        self.link_up = bool(up)
        for ch in list(self.channels.values()):
            ch.set_link(self.link_up)

    def stats(self) -> dict[int, dict]:
        """Counters per open channel (relid -> dict): frames and bytes both ways (rx = to the
        guest, tx = from it), drops, control messages, errors by kind, guest kicks and
        interrupts raised (``kicks``, ``signals``)."""
        return {relid: ch.stats() for relid, ch in list(self.channels.items())}

    def totals(self) -> dict[str, int]:
        """Frames, bytes, signals and kicks summed over open and closed channels (the
        benchmark's counters)."""
        keys = ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "rx_dropped", "tx_dropped",
                "kicks", "signals", "errors")
        out = dict.fromkeys(keys, 0)
        for st in list(self.stats().values()) + self.closed_stats:
            for k in keys:
                out[k] += int(st.get(k, 0))
        return out
