"""A fake netvsc VSC in Python: drives the netvsc VSP over a fake guest's channel the way Linux's
hv_netvsc does (NVSP version negotiation, NDIS version and config, receive and send buffer
GPADLs, RNDIS INITIALIZE / QUERY / SET, frames as RNDIS_PACKET_MSG in send sections or GPA-direct
ranges, receive completions for transfer-page packets), on real guest RAM and real rings.

Also a tiny responder (:class:`Responder`: ARP, ICMP echo, UDP echo on port 7) so that real
tools in a network namespace can talk to the fake guest through the TAP device.
"""

from __future__ import annotations

import struct
import time

from fakeguest import FakeGuest, serve_and_open, wait_for
from hvkvm.vmbus import wire as w
from hvkvm.vmbus.ring import VM_PKT_COMP, VM_PKT_DATA_USING_XFER_PAGES
from hvkvm.vsp import netvsc_wire as nw

PAGE = 4096
RECV_GPA = 0x800000     # receive buffer
SEND_GPA = 0xC00000     # send buffer
STAGE_GPA = 0x1000000   # GPA-direct staging area (frames and requests)
NO_SECTION = 0xFFFFFFFF


def gpadl(guest: FakeGuest, relid: int, gpa: int, pages: int, handle: int | None = None) -> int:
    """Share ``pages`` pages at ``gpa`` as one GPADL range; returns its handle."""
    if handle is None:
        handle = guest.next_gpadl
        guest.next_gpadl += 1
    guest.post_gpadl(relid, handle, gpa, pages)
    msgs = guest.receive_all()
    created = [w.vmbus_channel_gpadl_created.from_buffer_copy(m) for m in msgs
               if struct.unpack_from("<I", m)[0] == w.CHANNELMSG_GPADL_CREATED]
    assert created and created[-1].creation_status == 0, "GPADL not created"
    return handle


class NetGuest:
    """The guest side of one netvsc channel."""

    def __init__(self, part, guest: FakeGuest, ch, recv_pages: int = 256, send_pages: int = 64):
        self.part = part
        self.mem = part.memory
        self.guest = guest
        self.ch = ch
        self.relid = ch.offer.child_relid
        self.recv_pages = recv_pages
        self.send_pages = send_pages
        self.next_id = 1
        self.next_req = 1
        self.completions: dict[int, bytes] = {}
        self.responses: dict[int, tuple[int, bytes]] = {}   # req_id -> (type, whole message)
        self.other_control: list[tuple[int, bytes]] = []
        self.indications: list[int] = []
        self.frames: list[bytes] = []
        self.xfer_packets = 0
        self.auto_complete = True
        self.pending_xfers: list[int] = []
        self.xfer_offsets: dict[int, list[int]] = {}  # trans_id -> range offsets (last 1000)
        self.nvsp_version = None
        self.recv_sections = None
        self.send_section_size = 0
        self.send_free: list[int] = []
        self.max_pkt = 1
        self.responder = None
        self.inflight: dict[int, int] = {}      # trans_id -> send section, until completed
        self.tx_status: dict[int, int] = {}     # NVSP status of completed fire-and-forget sends
        self.replies: list[bytes] = []
        self._replying = False

    # -- packets ---------------------------------------------------------------------------

    def _tid(self) -> int:
        t = self.next_id
        self.next_id += 1
        return t

    def post(self, payload: bytes, *, completion=True, ranges=None, trans_id=None,
             wait_room: float = 5.0) -> int:
        """One packet to the host (in-band, or GPA-direct with ``ranges``); returns trans_id."""
        tid = self._tid() if trans_id is None else trans_id
        out = self.ch.out
        end = time.monotonic() + wait_room
        while True:
            if ranges is not None:
                ok = out.write_gpa_direct(ranges, payload, trans_id=tid,
                                          completion_requested=completion)
            else:
                ok = out.write(payload, trans_id=tid, completion_requested=completion)
            if ok:
                break
            self.pump()
            assert time.monotonic() < end, "guest send ring stays full"
            time.sleep(0.0005)
        if out.commit():
            self.ch.kick()
        return tid

    def pump(self) -> int:
        """Read every packet waiting from the host; returns how many."""
        inn = self.ch.inn
        n = 0
        while True:
            pkt = inn.read()
            if pkt is None:
                break
            n += 1
            if pkt.type == VM_PKT_COMP:
                sec = self.inflight.pop(pkt.trans_id, None)
                if sec is not None:
                    self.send_free.append(sec)
                    self.tx_status[pkt.trans_id] = struct.unpack_from("<I", pkt.payload, 4)[0]
                else:
                    self.completions[pkt.trans_id] = bytes(pkt.payload)
            elif pkt.type == VM_PKT_DATA_USING_XFER_PAGES:
                self._xfer(pkt)
            else:
                self.other_control.append((pkt.type, bytes(pkt.payload)))
        if n and inn.commit():
            self.ch.kick()
        if self.pending_xfers and self.auto_complete:
            self.complete_pending()
        if self.replies and not self._replying:
            self._replying = True
            try:
                while self.replies:
                    self.send_frame(self.replies.pop(0), wait=False)
            finally:
                self._replying = False
        return n

    def complete_pending(self) -> None:
        out = self.ch.out
        done = 0
        while self.pending_xfers:
            tid = self.pending_xfers[0]
            ok = out.write_completion(struct.pack("<II", nw.NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE,
                                                  nw.NVSP_STAT_SUCCESS), trans_id=tid)
            if not ok:
                break
            self.pending_xfers.pop(0)
            done += 1
        if done and out.commit():
            self.ch.kick()

    def _xfer(self, pkt) -> None:
        self.xfer_packets += 1
        assert pkt.xfer_pageset_id == nw.NETVSC_RECEIVE_BUFFER_ID
        msg = nw.nvsp_message.from_buffer_copy(bytes(pkt.payload[:40]).ljust(40, b"\0"))
        assert msg.hdr.msg_type == nw.NVSP_MSG1_TYPE_SEND_RNDIS_PKT
        for count, off in pkt.xfer_ranges:
            assert off + count <= self.recv_pages * PAGE
            data = self.mem.read(RECV_GPA + off, count)
            mtype, mlen = struct.unpack_from("<II", data)
            assert mlen == count, (mlen, count)
            if mtype == nw.RNDIS_MSG_PACKET:
                doff, dlen = struct.unpack_from("<II", data, 8)
                frame = data[8 + doff:8 + doff + dlen]
                self.frames.append(frame)
                if self.responder is not None:
                    self.replies += self.responder(frame)
            elif mtype == nw.RNDIS_MSG_INDICATE:
                self.indications.append(struct.unpack_from("<I", data, 8)[0])
            elif mtype in (nw.RNDIS_MSG_INIT_C, nw.RNDIS_MSG_QUERY_C, nw.RNDIS_MSG_SET_C,
                           nw.RNDIS_MSG_KEEPALIVE_C):
                req_id = struct.unpack_from("<I", data, 8)[0]
                self.responses[req_id] = (mtype, data)
            else:
                self.other_control.append((mtype, data))
        self.pending_xfers.append(pkt.trans_id)
        self.xfer_offsets[pkt.trans_id] = [off for _, off in pkt.xfer_ranges]
        if len(self.xfer_offsets) > 1000:
            del self.xfer_offsets[next(iter(self.xfer_offsets))]

    def wait_completion(self, tid: int, timeout: float = 5.0) -> bytes:
        assert wait_for(lambda: self.pump() >= 0 and tid in self.completions, timeout), \
            f"no completion for trans_id {tid}"
        return self.completions.pop(tid)

    def nvsp(self, msg: nw.nvsp_message, size: int = 40, completion: bool = True):
        """One NVSP request; the completion's nvsp_message (or None when none was asked)."""
        tid = self.post(bytes(msg)[:size], completion=completion)
        if not completion:
            return None
        raw = self.wait_completion(tid)
        return nw.nvsp_message.from_buffer_copy(raw[:40].ljust(40, b"\0"))

    # -- the NVSP handshake ----------------------------------------------------------------

    def init(self, version: int, max_version: int | None = None):
        m = nw.nvsp_message()
        m.hdr.msg_type = nw.NVSP_MSG_TYPE_INIT
        m.msg.init_msg.init.min_protocol_ver = version
        m.msg.init_msg.init.max_protocol_ver = version if max_version is None else max_version
        return self.nvsp(m)

    def send_recv_buf(self, handle: int, buf_id: int = nw.NETVSC_RECEIVE_BUFFER_ID):
        m = nw.nvsp_message()
        m.hdr.msg_type = nw.NVSP_MSG1_TYPE_SEND_RECV_BUF
        m.msg.v1_msg.send_recv_buf.gpadl_handle = handle
        m.msg.v1_msg.send_recv_buf.id = buf_id
        return self.nvsp(m)

    def send_send_buf(self, handle: int):
        m = nw.nvsp_message()
        m.hdr.msg_type = nw.NVSP_MSG1_TYPE_SEND_SEND_BUF
        m.msg.v1_msg.send_send_buf.gpadl_handle = handle
        m.msg.v1_msg.send_send_buf.id = nw.NETVSC_SEND_BUFFER_ID
        return self.nvsp(m)

    def handshake(self, versions=nw.NVSP_VERSIONS, send_buffer: bool = True):
        """Linux's netvsc_connect_vsp; returns the negotiated NVSP version."""
        for v in versions:
            r = self.init(v)
            assert r.hdr.msg_type == nw.NVSP_MSG_TYPE_INIT_COMPLETE
            if r.msg.init_msg.init_complete.status == nw.NVSP_STAT_SUCCESS:
                assert r.msg.init_msg.init_complete.negotiated_protocol_ver == v
                self.nvsp_version = v
                break
        assert self.nvsp_version is not None
        if self.nvsp_version >= nw.NVSP_PROTOCOL_VERSION_2:
            m = nw.nvsp_message()
            m.hdr.msg_type = nw.NVSP_MSG2_TYPE_SEND_NDIS_CONFIG
            m.msg.v2_msg.send_ndis_config.mtu = 1514
            m.msg.v2_msg.send_ndis_config.capability.ieee8021q = 1
            self.nvsp(m, completion=False)
        m = nw.nvsp_message()
        m.hdr.msg_type = nw.NVSP_MSG1_TYPE_SEND_NDIS_VER
        ndis = nw.NDIS_VERSION_6_1 if self.nvsp_version <= nw.NVSP_PROTOCOL_VERSION_4 else \
            nw.NDIS_VERSION_6_30
        m.msg.v1_msg.send_ndis_ver.ndis_major_ver = ndis >> 16
        m.msg.v1_msg.send_ndis_ver.ndis_minor_ver = ndis & 0xFFFF
        self.nvsp(m, completion=False)
        self.mem.fill(RECV_GPA, self.recv_pages * PAGE)
        h = gpadl(self.guest, self.relid, RECV_GPA, self.recv_pages)
        r = self.send_recv_buf(h)
        c = r.msg.v1_msg.send_recv_buf_complete
        assert r.hdr.msg_type == nw.NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE
        assert c.status == nw.NVSP_STAT_SUCCESS
        assert c.num_sections == 1 and c.sections[0].offset == 0
        self.recv_sections = (c.sections[0].sub_alloc_size, c.sections[0].num_sub_allocs)
        if send_buffer:
            h = gpadl(self.guest, self.relid, SEND_GPA, self.send_pages)
            r = self.send_send_buf(h)
            c = r.msg.v1_msg.send_send_buf_complete
            assert r.hdr.msg_type == nw.NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE
            assert c.status == nw.NVSP_STAT_SUCCESS
            self.send_section_size = c.section_size
            self.send_free = list(range(self.send_pages * PAGE // c.section_size))
        return self.nvsp_version

    # -- RNDIS ----------------------------------------------------------------------------

    def send_rndis(self, msg: bytes, *, via: str = "section", channel_type: int = 1,
                   completion: bool = True, section: int | None = None,
                   section_size: int | None = None, wait: bool = True) -> int | None:
        """One SEND_RNDIS_PKT carrying ``msg``; returns the NVSP completion status (waits), or
        the trans_id when ``wait`` is False."""
        m = nw.nvsp_message()
        m.hdr.msg_type = nw.NVSP_MSG1_TYPE_SEND_RNDIS_PKT
        rp = m.msg.v1_msg.send_rndis_pkt
        rp.channel_type = channel_type
        ranges = None
        used = None
        if via == "section":
            if section is None:
                assert wait_for(lambda: bool(self.send_free) or self.pump() < 0), \
                    "no send section free"
                section = used = self.send_free.pop()
            if (section + 1) * self.send_section_size <= self.send_pages * PAGE:
                self.mem.write(SEND_GPA + section * self.send_section_size, msg)
            rp.send_buf_section_index = section
            rp.send_buf_section_size = len(msg) if section_size is None else section_size
        else:
            rp.send_buf_section_index = NO_SECTION
            stage = STAGE_GPA + (self.next_id % 64) * 0x20000 + (self.next_id % 7) * 512
            self.mem.write(stage, msg)
            ranges = self.page_ranges(stage, len(msg))
        tid = self.post(bytes(m), completion=completion, ranges=ranges)
        if not wait or not completion:
            if used is not None:
                if completion:
                    self.inflight[tid] = used
                else:
                    self.send_free.append(used)
            return tid
        raw = self.wait_completion(tid)
        if used is not None:
            self.send_free.append(used)
        mt, status = struct.unpack_from("<II", raw)
        assert mt == nw.NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE
        return status

    @staticmethod
    def page_ranges(gpa: int, length: int):
        """One page buffer per page, as Linux's vmbus_sendpacket_pagebuffer sends them."""
        out = []
        while length:
            take = min(PAGE - gpa % PAGE, length)
            out.append((take, gpa % PAGE, [gpa // PAGE]))
            gpa += take
            length -= take
        return out

    def request(self, mtype: int, body: bytes, via: str = "section", timeout: float = 5.0):
        """An RNDIS request (body starting with req_id 0 is given a fresh req_id); returns
        (response type, whole response message)."""
        req_id = self.next_req
        self.next_req += 1
        body = struct.pack("<I", req_id) + body[4:]
        msg = struct.pack("<II", mtype, 8 + len(body)) + body
        status = self.send_rndis(msg, via=via)
        assert status == nw.NVSP_STAT_SUCCESS, f"NVSP status {status}"
        assert wait_for(lambda: self.pump() >= 0 and req_id in self.responses, timeout), \
            f"no RNDIS answer to request {req_id} (type {mtype})"
        return self.responses.pop(req_id)

    def rndis_init(self):
        t, data = self.request(nw.RNDIS_MSG_INIT, struct.pack("<IIII", 0, 1, 0, 0x4000))
        assert t == nw.RNDIS_MSG_INIT_C
        c = nw.rndis_initialize_complete.from_buffer_copy(data[8:8 + 44])
        assert c.status == nw.RNDIS_STATUS_SUCCESS
        self.max_pkt = c.max_pkt_per_msg
        return c

    def query(self, oid: int, inp: bytes = b"", via: str = "section") -> tuple[int, bytes]:
        body = struct.pack("<IIIII", 0, oid, len(inp), 20 if inp else 0, 0) + inp
        t, data = self.request(nw.RNDIS_MSG_QUERY, body, via=via)
        assert t == nw.RNDIS_MSG_QUERY_C
        _, status, ilen, ioff = struct.unpack_from("<IIII", data, 8)
        assert ioff >= 16 and 8 + ioff + ilen <= len(data)
        return status, data[8 + ioff:8 + ioff + ilen]

    def set(self, oid: int, info: bytes, via: str = "section") -> int:
        body = struct.pack("<IIIII", 0, oid, len(info), 20, 0) + info
        t, data = self.request(nw.RNDIS_MSG_SET, body, via=via)
        assert t == nw.RNDIS_MSG_SET_C
        return struct.unpack_from("<I", data, 12)[0]

    def linux_bringup(self) -> dict:
        """What Linux's rndis_filter_device_add + rndis_filter_open ask, in its order."""
        out = {"init": self.rndis_init()}
        st, v = self.query(nw.RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE)
        out["mtu"] = struct.unpack("<I", v)[0] if st == 0 and len(v) == 4 else None
        st, v = self.query(nw.RNDIS_OID_802_3_PERMANENT_ADDRESS)
        out["mac"] = v if st == 0 else None
        size = nw.NDIS_OFFLOAD_SIZE if self.nvsp_version >= nw.NVSP_PROTOCOL_VERSION_5 else \
            nw.NDIS_OFFLOAD_SIZE_6_1 if self.nvsp_version >= nw.NVSP_PROTOCOL_VERSION_4 else \
            nw.NDIS_OFFLOAD_SIZE_6_0
        rev = 3 if self.nvsp_version >= nw.NVSP_PROTOCOL_VERSION_5 else \
            2 if self.nvsp_version >= nw.NVSP_PROTOCOL_VERSION_4 else 1
        hdr = struct.pack("<BBH", nw.NDIS_OBJECT_TYPE_OFFLOAD, rev, size).ljust(size, b"\0")
        st, v = self.query(nw.OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES, hdr)
        out["hwcaps"] = (st, v)
        params = nw.ndis_offload_params()
        params.header.type = nw.NDIS_OBJECT_TYPE_DEFAULT
        params.header.revision = nw.NDIS_OFFLOAD_PARAMETERS_REVISION_3
        extlen = 28 if self.nvsp_version >= nw.NVSP_PROTOCOL_VERSION_5 else \
            nw.VERSION_4_OFFLOAD_SIZE
        params.header.size = extlen
        params.ip_v4_csum = nw.NDIS_OFFLOAD_PARAMETERS_TX_RX_DISABLED
        params.rsc_ip_v4 = params.rsc_ip_v6 = nw.NDIS_OFFLOAD_PARAMETERS_RSC_DISABLED
        out["offload_set"] = self.set(nw.OID_TCP_OFFLOAD_PARAMETERS, bytes(params)[:extlen])
        st, v = self.query(nw.RNDIS_OID_GEN_MEDIA_CONNECT_STATUS)
        out["link"] = struct.unpack("<I", v)[0]
        st, v = self.query(nw.RNDIS_OID_GEN_LINK_SPEED)
        out["speed"] = struct.unpack("<I", v)[0] if st == 0 else None
        out["rss"] = self.query(nw.OID_GEN_RECEIVE_SCALE_CAPABILITIES)
        out["filter"] = self.set(nw.RNDIS_OID_GEN_CURRENT_PACKET_FILTER, struct.pack(
            "<I", nw.NDIS_PACKET_TYPE_BROADCAST | nw.NDIS_PACKET_TYPE_ALL_MULTICAST |
            nw.NDIS_PACKET_TYPE_DIRECTED))
        return out

    # -- frames ---------------------------------------------------------------------------

    @staticmethod
    def rndis_packet(frame: bytes, ppi: bytes = b"") -> bytes:
        """RNDIS_PACKET_MSG around ``frame`` (optional PPI bytes between header and data)."""
        data_off = 36 + len(ppi)
        hdr = struct.pack("<II9I", nw.RNDIS_MSG_PACKET, 44 + len(ppi) + len(frame), data_off,
                          len(frame), 0, 0, 0, 36 if ppi else 0, len(ppi), 0, 0)
        return hdr + ppi + frame

    def send_frame(self, frame: bytes, via: str = "section", wait: bool = True):
        """One frame to the host; returns the NVSP status (wait) or trans_id."""
        return self.send_rndis(self.rndis_packet(frame), via=via, channel_type=0, wait=wait)

    def wait_frames(self, n: int, timeout: float = 5.0) -> list[bytes]:
        assert wait_for(lambda: self.pump() >= 0 and len(self.frames) >= n, timeout), \
            f"{len(self.frames)} of {n} frames arrived"
        out, self.frames = self.frames[:n], self.frames[n:]
        return out


def open_netvsc(part, vsps, ring_pages: int = 24, recv_pages: int = 256, send_pages: int = 64):
    """A VMBus server on ``part`` offering ``vsps``, a fake guest connected, each netvsc channel
    opened: (server, [NetGuest ...]) in offer order."""
    server, guest, channels = serve_and_open(part, vsps, w.HV_NIC_GUID, ring_pages)
    return server, [NetGuest(part, guest, ch, recv_pages, send_pages) for ch in channels]


# ============================================================================================
# A tiny IP responder for end-to-end tests
# ============================================================================================

def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``: 0 over a header that carries a right one."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class Responder:
    """Answers ARP for ``ip``, ICMP echo requests to it, and UDP datagrams to port 7 (echo)."""

    def __init__(self, mac: bytes, ip: str):
        self.mac = mac
        self.ip = bytes(int(x) for x in ip.split("."))
        self.seen = {"arp": 0, "icmp": 0, "udp": 0, "other": 0}

    def __call__(self, frame: bytes) -> list[bytes]:
        if len(frame) < 14:
            return []
        dst, src, etype = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
        if etype == 0x0806 and len(frame) >= 42:
            op = struct.unpack("!H", frame[20:22])[0]
            tpa = frame[38:42]
            if op == 1 and tpa == self.ip:
                self.seen["arp"] += 1
                arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + self.mac + self.ip + \
                    frame[22:28] + frame[28:32]
                return [src + self.mac + b"\x08\x06" + arp]
            return []
        if etype != 0x0800 or len(frame) < 34 or dst != self.mac:
            self.seen["other"] += 1
            return []
        ip = frame[14:]
        ihl = (ip[0] & 0xF) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        proto = ip[9]
        s_ip, d_ip = ip[12:16], ip[16:20]
        if d_ip != self.ip or total > len(ip):
            return []
        payload = ip[ihl:total]

        def ip_reply(proto_, body):
            hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64,
                                        proto_, 0, d_ip, s_ip))
            hdr[10:12] = struct.pack("!H", csum(bytes(hdr)))
            return src + self.mac + b"\x08\x00" + bytes(hdr) + body

        if proto == 1 and payload and payload[0] == 8:
            self.seen["icmp"] += 1
            body = bytearray(payload)
            body[0] = 0
            body[2:4] = b"\0\0"
            body[2:4] = struct.pack("!H", csum(bytes(body)))
            return [ip_reply(1, bytes(body))]
        if proto == 17 and len(payload) >= 8:
            sport, dport, ulen = struct.unpack("!HHH", payload[:6])
            if dport != 7 or ulen > len(payload):
                return []
            self.seen["udp"] += 1
            data = payload[8:ulen]
            udp = struct.pack("!HHHH", 7, sport, 8 + len(data), 0) + data
            pseudo = d_ip + s_ip + struct.pack("!BBH", 0, 17, len(udp))
            c = csum(pseudo + udp) or 0xFFFF
            udp = udp[:6] + struct.pack("!H", c) + udp[8:]
            return [ip_reply(17, udp)]
        return []


def eth_frame(dst: bytes, src: bytes, etype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", etype) + payload

