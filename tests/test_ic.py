"""The heartbeat and shutdown integration services (hvkvm/vsp/ic.py) against guests.

With the Python fake guest (no vCPU): the bytes the host sends are checked field by field against
what Linux's hv_util.c reads, and the guest side answers exactly as hv_util.c does
(``ic_wire.prep_negotiate_resp`` models ``vmbus_prep_negotiate_resp``; heartbeats come back with
seq_num + 1, shutdowns with HV_S_OK for flags 0..3). With a real guest (``ic_demo``, the runtime's
VSCs in guest_images/rt/k_ic.c): negotiation, heartbeats that advance, and a shutdown requested
from another thread that ends the run with a pass.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time

import pytest

from fakeguest import FakeGuest, FakePartition, wait_for
from hvkvm.vmbus import wire as w
from hvkvm.vmbus.ring import VM_PKT_DATA_INBAND
from hvkvm.vmbus.server import VmbusServer
from hvkvm.vsp import ic_wire as icw
from hvkvm.vsp.ic import (HOST_FRAMEWORK_VERSIONS, HOST_HEARTBEAT_VERSIONS,
                          HOST_SHUTDOWN_VERSIONS, HV_SHUTDOWN_INSTANCE_ID, HeartbeatVsp,
                          ShutdownVsp)

RESPONSE = icw.ICMSGHDRFLAG_TRANSACTION | icw.ICMSGHDRFLAG_RESPONSE
REQUEST = icw.ICMSGHDRFLAG_TRANSACTION | icw.ICMSGHDRFLAG_REQUEST


# --------------------------------------------------------------------------------------------
# A Linux-like IC guest over the fake guest's rings
# --------------------------------------------------------------------------------------------

class LinuxUtil:
    """What hv_util.c does with a channel: answer every request in place (same packet back,
    same length and trans_id, icflags TRANSACTION | RESPONSE)."""

    def __init__(self, ch, srv_versions, fw_versions=icw.LINUX_FW_VERSIONS):
        self.ch = ch
        self.fw_versions = fw_versions
        self.srv_versions = srv_versions
        self.requests = []   # (packet, icmsg_hdr, body) as received
        self.negotiated = None

    def recv(self, timeout=5.0):
        pkt = self.ch.recv(timeout)
        assert pkt is not None, "the host sent nothing"
        _pipe, hdr, body = icw.parse_header(pkt.payload)
        self.requests.append((pkt, hdr, body))
        return pkt, hdr, body

    def answer(self, pkt, hdr, body, *, status=None, seq_delta=1, payload=None):
        buf = bytearray(pkt.payload)
        if hdr.icmsgtype == icw.ICMSGTYPE_NEGOTIATE:
            resp, found, fw, srv = icw.prep_negotiate_resp(bytes(buf), self.fw_versions,
                                                           self.srv_versions)
            self.negotiated = (fw, srv) if found else None
            buf = bytearray(resp)
        elif hdr.icmsgtype == icw.ICMSGTYPE_HEARTBEAT:
            seq = struct.unpack_from("<Q", buf, icw.ICMSG_HDR)[0]
            struct.pack_into("<Q", buf, icw.ICMSG_HDR, (seq + seq_delta) & (2**64 - 1))
        elif hdr.icmsgtype == icw.ICMSGTYPE_SHUTDOWN:
            flags = struct.unpack_from("<I", buf, icw.ICMSG_HDR + 8)[0]
            st = icw.HV_S_OK if flags in (0, 1, 2, 3) else icw.HV_E_FAIL
            struct.pack_into("<I", buf, 8 + icw.icmsg_hdr.status.offset, st)
        if status is not None:
            struct.pack_into("<I", buf, 8 + icw.icmsg_hdr.status.offset, status)
        buf[8 + icw.icmsg_hdr.icflags.offset] = RESPONSE
        assert self.ch.send(bytes(buf) if payload is None else payload, trans_id=pkt.trans_id)

    def serve_one(self, timeout=5.0, **kw):
        pkt, hdr, body = self.recv(timeout)
        self.answer(pkt, hdr, body, **kw)
        return pkt, hdr, body


@pytest.fixture
def bus():
    """(partition, server, guest, vsps) with a heartbeat (50 ms) and a shutdown VSP offered."""
    part = FakePartition()
    server = VmbusServer(part)
    hb = HeartbeatVsp(interval=0.05)
    sd = ShutdownVsp()
    server.add_vsp(hb)
    server.add_vsp(sd)
    guest = FakeGuest(part)
    offers = {o.offer.if_type.to_uuid(): o for o in guest.connect()}
    opened = []

    def open_(vsp, srv_versions, **kw):
        ch = guest.open(offers[vsp.class_id])
        opened.append(ch)
        return LinuxUtil(ch, srv_versions, **kw)

    yield part, server, guest, offers, hb, sd, open_
    server.close()
    for ch in opened:
        ch.close()
    part.close()


def close_channel(guest, relid):
    m = w.vmbus_channel_close_channel()
    m.header.msgtype = w.CHANNELMSG_CLOSECHANNEL
    m.child_relid = relid
    assert guest.post(bytes(m)) == 0


def check_negotiate_request(pkt, hdr, body, service_versions):
    """The host's ICMSGTYPE_NEGOTIATE, field by field (what vmbus_prep_negotiate_resp reads)."""
    assert pkt.type == VM_PKT_DATA_INBAND and pkt.trans_id != 0
    assert not pkt.completion_requested
    n_versions = len(HOST_FRAMEWORK_VERSIONS) + len(service_versions)
    pipe = icw.vmbuspipe_hdr.from_buffer_copy(pkt.payload)
    assert (pipe.flags, pipe.msgsize) == (icw.VMBUSPIPE_PACKET_TYPE_DATA, 20 + 8 + 4 * n_versions)
    # VMBus pads packets to 8 bytes; Linux's recvlen (and the length it answers with) is the
    # padded one.
    size = icw.ICMSG_NEGOTIATE_PKT_SIZE(len(HOST_FRAMEWORK_VERSIONS), len(service_versions))
    assert len(pkt.payload) == (size + 7) // 8 * 8 and not any(pkt.payload[size:])
    assert (hdr.icverframe.major, hdr.icverframe.minor) == (0, 0)
    assert (hdr.icvermsg.major, hdr.icvermsg.minor) == (0, 0)
    assert hdr.icmsgtype == icw.ICMSGTYPE_NEGOTIATE
    assert hdr.icmsgsize == 8 + 4 * n_versions
    assert hdr.status == 0 and hdr.icflags == REQUEST and bytes(hdr.reserved) == b"\0\0"
    assert hdr.ictransaction_id == pkt.trans_id & 0xFF
    assert icw.parse_negotiate(body) == (list(HOST_FRAMEWORK_VERSIONS), list(service_versions))


# --------------------------------------------------------------------------------------------
# Fake guest
# --------------------------------------------------------------------------------------------

def test_both_ics_are_offered_with_linux_class_guids(bus):
    part, server, guest, offers, hb, sd, open_ = bus
    assert set(offers) == {w.HV_HEART_BEAT_GUID, w.HV_SHUTDOWN_GUID}
    assert offers[w.HV_SHUTDOWN_GUID].offer.if_instance.to_uuid() == HV_SHUTDOWN_INSTANCE_ID
    assert hb.state == sd.state == "closed"
    assert hb.last_heartbeat is None and hb.negotiated is None


def test_heartbeat_negotiates_like_linux_and_beats_advance(bus):
    part, server, guest, offers, hb, sd, open_ = bus
    util = open_(hb, icw.LINUX_HB_VERSIONS)
    pkt, hdr, body = util.serve_one()
    check_negotiate_request(pkt, hdr, body, HOST_HEARTBEAT_VERSIONS)
    assert util.negotiated == (icw.UTIL_FW_VERSION, icw.HB_VERSION)
    assert hb.wait_ready(5)
    assert hb.negotiated == (icw.UTIL_FW_VERSION, icw.HB_VERSION)
    assert hb.stats["framework_version"] == "3.0" and hb.stats["service_version"] == "3.0"

    t0 = time.time()
    seqs = []
    for i in range(5):
        pkt, hdr, body = util.serve_one()
        # A heartbeat request as hv_util.c reads it: header with the negotiated versions,
        # ICMSGTYPE_HEARTBEAT, a whole heartbeat_msg_data (Linux needs at least seq_num).
        assert hdr.icmsgtype == icw.ICMSGTYPE_HEARTBEAT and hdr.icflags == REQUEST
        assert (hdr.icverframe.major, hdr.icverframe.minor) == (3, 0)
        assert (hdr.icvermsg.major, hdr.icvermsg.minor) == (3, 0)
        assert hdr.icmsgsize == ctypes.sizeof(icw.heartbeat_msg_data) == 40
        assert len(pkt.payload) == 72 and pkt.payload[icw.ICMSG_HDR + 40:] == bytes(4)
        assert hdr.ictransaction_id == pkt.trans_id & 0xFF
        seqs.append(icw.heartbeat_msg_data.from_buffer_copy(body).seq_num)
        assert wait_for(lambda: hb.beats == i + 1)
    assert seqs == [0, 1, 2, 3, 4]          # each request carries the guest's last answer
    assert hb.sequence == 5
    assert t0 <= hb.last_heartbeat <= time.time()
    assert hb.alive()
    s = hb.stats
    assert (s["beats"], s["bad"], s["sequence"], s["state"]) == (5, 0, 5, "ready")
    assert s["last_heartbeat"] == hb.last_heartbeat and s["errors"] == 0
    assert len(util.requests) == 6


def test_heartbeats_keep_the_interval_and_never_overlap(bus):
    part, server, guest, offers, hb, sd, open_ = bus
    util = open_(hb, icw.LINUX_HB_VERSIONS)
    util.serve_one()
    times = []
    for _ in range(4):
        util.serve_one()
        times.append(time.monotonic())
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.04, gaps
    # Unanswered: one request stays outstanding, later ticks count as missed.
    pkt, hdr, body = util.recv()
    assert wait_for(lambda: hb.missed >= 2, 2)
    assert util.ch.inn.available == 0            # no second request while one is outstanding
    util.answer(pkt, hdr, body)
    assert wait_for(lambda: hb.beats == 5)


def test_a_wrong_heartbeat_answer_is_counted_not_believed(bus):
    part, server, guest, offers, hb, sd, open_ = bus
    util = open_(hb, icw.LINUX_HB_VERSIONS)
    util.serve_one()
    util.serve_one(seq_delta=2)                     # seq + 2: wrong
    assert wait_for(lambda: hb.bad == 1)
    assert hb.beats == 0 and hb.last_heartbeat is None and hb.sequence == 0
    assert any("heartbeat answer 2 to sequence 0" in e for e in hb.errors)


def test_garbage_from_the_guest_is_recorded_and_the_channel_goes_on(bus):
    part, server, guest, offers, hb, sd, open_ = bus
    util = open_(hb, icw.LINUX_HB_VERSIONS)
    util.serve_one()
    pkt, hdr, body = util.recv()
    ch = util.ch
    ch.send(b"\x01\x02", trans_id=pkt.trans_id)                 # shorter than the headers
    req = bytearray(pkt.payload)
    ch.send(bytes(req), trans_id=pkt.trans_id)                  # a request, not a response
    req[8 + icw.icmsg_hdr.icflags.offset] = RESPONSE
    ch.send(bytes(req), trans_id=pkt.trans_id + 77)             # unknown transaction
    bad_type = bytearray(req)
    struct.pack_into("<H", bad_type, 8 + icw.icmsg_hdr.icmsgtype.offset, icw.ICMSGTYPE_SHUTDOWN)
    ch.send(bytes(bad_type), trans_id=pkt.trans_id)             # wrong message type
    assert wait_for(lambda: hb.error_count == 4)
    assert hb.beats == 0
    errs = "\n".join(hb.errors)
    assert "shorter than its headers" in errs and "not a response" in errs
    assert "matches no outstanding request" in errs and "message type 3" in errs
    util.answer(pkt, hdr, body)                                 # the real answer still counts
    assert wait_for(lambda: hb.beats == 1)
    assert hb.state == "ready"


def test_shutdown_request_as_linux_reads_it_and_its_acknowledgement(bus):
    part, server, guest, offers, hb, sd, open_ = bus
    assert sd.request_shutdown("maintenance window") is False   # nobody listens yet: kept
    assert sd.pending is not None
    util = open_(sd, icw.LINUX_SD_VERSIONS)
    pkt, hdr, body = util.serve_one()
    check_negotiate_request(pkt, hdr, body, HOST_SHUTDOWN_VERSIONS)
    assert util.negotiated == (icw.UTIL_FW_VERSION, icw.SD_VERSION_3_2)
    pkt, hdr, body = util.serve_one()                           # the kept request goes out
    assert hdr.icmsgtype == icw.ICMSGTYPE_SHUTDOWN and hdr.icflags == REQUEST
    assert (hdr.icverframe.major, hdr.icverframe.minor) == (3, 0)
    assert (hdr.icvermsg.major, hdr.icvermsg.minor) == (3, 2)
    # Linux drops a shutdown packet shorter than ICMSG_HDR + sizeof(shutdown_msg_data).
    assert len(pkt.payload) == icw.ICMSG_HDR + 2060 and hdr.icmsgsize == 2060
    msg = icw.shutdown_msg_data.from_buffer_copy(body)
    assert msg.flags == 0 and msg.reason_code == icw.SHTDN_REASON_FLAG_PLANNED
    assert bytes(msg.display_message).rstrip(b"\0") == b"maintenance window"
    assert sd.wait_acknowledged(5) == icw.HV_S_OK
    assert sd.acknowledged_at is not None and sd.requests == 1 and sd.pending is None
    # reboot and force: the flags Linux switches on (2 restart, | 1 force).
    assert sd.request_shutdown("again", reboot=True, force=True) is True
    pkt, hdr, body = util.serve_one()
    assert icw.shutdown_msg_data.from_buffer_copy(body).flags == 3
    assert sd.wait_acknowledged(5) == icw.HV_S_OK
    assert sd.stats["requests"] == 2 and sd.stats["last_status"] == 0


def test_a_refused_shutdown_is_reported(bus):
    part, server, guest, offers, hb, sd, open_ = bus
    util = open_(sd, icw.LINUX_SD_VERSIONS)
    util.serve_one()
    assert sd.wait_ready(5)
    sd.request_shutdown("no", force=False)
    util.serve_one(status=icw.HV_E_FAIL)
    assert sd.wait_acknowledged(5) == icw.HV_E_FAIL
    assert sd.acknowledged_at is None
    assert any("refused" in e for e in sd.errors)


def test_an_old_guest_gets_the_ws2008_versions(bus):
    """A guest that knows only framework 1.0 and service 1.0 (Linux on a WS2008 host)."""
    part, server, guest, offers, hb, sd, open_ = bus
    util = open_(sd, (icw.SD_VERSION_1,), fw_versions=(icw.UTIL_WS2K8_FW_VERSION,))
    util.serve_one()
    assert sd.wait_ready(5)
    assert sd.negotiated == (icw.UTIL_WS2K8_FW_VERSION, icw.SD_VERSION_1)
    sd.request_shutdown()
    pkt, hdr, body = util.serve_one()
    assert (hdr.icverframe.major, hdr.icvermsg.major) == (1, 1)


def test_no_common_version_fails_the_channel_and_sends_nothing_else(bus):
    part, server, guest, offers, hb, sd, open_ = bus
    util = open_(hb, (0x00090000,))
    util.serve_one()
    assert wait_for(lambda: hb.state == "failed")
    assert "none of the offered versions" in hb.failed_reason
    time.sleep(0.2)
    assert util.ch.inn.available == 0 and hb.beats == 0


def test_close_stops_the_worker_and_a_reopen_negotiates_again(bus):
    part, server, guest, offers, hb, sd, open_ = bus
    util = open_(hb, icw.LINUX_HB_VERSIONS)
    util.serve_one()
    util.serve_one()
    assert wait_for(lambda: hb.beats == 1)
    workers = [t for t in threading.enumerate() if t.name.startswith("hvkvm-ic-heartbeat")]
    assert len(workers) == 1
    close_channel(guest, offers[w.HV_HEART_BEAT_GUID].child_relid)
    assert hb.state == "closed" and hb.negotiated is None
    workers[0].join(2)
    assert not workers[0].is_alive()
    guest.receive_all()
    util2 = open_(hb, icw.LINUX_HB_VERSIONS)
    pkt, hdr, body = util2.serve_one()
    assert hdr.icmsgtype == icw.ICMSGTYPE_NEGOTIATE
    util2.serve_one()
    assert wait_for(lambda: hb.beats == 2) and hb.opens == 2
    assert hb.sequence == 2                       # the sequence goes on across opens


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        HeartbeatVsp(interval=0)


# --------------------------------------------------------------------------------------------
# The guest's C negotiation (rt/k_ic.c) against the Python model of Linux's
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def k_ic(tmp_path_factory):
    """guest_images/rt/k_ic.c built for the host (its ring and hypercall calls stay unresolved:
    only ic_prep_negotiate_resp, which is pure, is called)."""
    import os
    import shutil
    import subprocess
    from pathlib import Path
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed")
    root = Path(__file__).resolve().parent.parent
    so = tmp_path_factory.mktemp("k_ic") / "k_ic.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-std=gnu11", "-w",
                    f"-I{root / 'guest_images/include'}", f"-I{root / 'guest_images/rt'}",
                    f"-I{root / 'csrc'}", str(root / "guest_images/rt/k_ic.c"), "-o", str(so)],
                   check=True, capture_output=True)
    lib = ctypes.CDLL(str(so), mode=os.RTLD_LAZY)
    f = lib.ic_prep_negotiate_resp
    f.restype = ctypes.c_bool
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_int),
                  ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
                  ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32)]
    return f


def c_negotiate(f, msg: bytes, fw_versions, srv_versions):
    buf = ctypes.create_string_buffer(bytes(msg), max(len(msg), 1))
    fwt = (ctypes.c_int * len(fw_versions))(*fw_versions)
    svt = (ctypes.c_int * len(srv_versions))(*srv_versions)
    fw, srv = ctypes.c_uint32(0xdead), ctypes.c_uint32(0xdead)
    found = f(ctypes.addressof(buf) + 8, buf, len(msg), fwt, len(fw_versions), svt,
              len(srv_versions), ctypes.byref(fw), ctypes.byref(srv))
    return buf.raw[:len(msg)], found, fw.value, srv.value


VERSION_POOL = [0x00000, 0x10000, 0x30000, 0x30001, 0x30002, 0x40000, 0x20000, 0xFFFFFFFF]


def test_guest_negotiation_in_c_matches_the_linux_model(k_ic):
    """The guest's C answer equals ic_wire.prep_negotiate_resp (vmbus_prep_negotiate_resp) byte
    for byte, with Linux's tables, over random host offers: counts beyond 100, truncated
    packets, versions the guest does not know."""
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=400, deadline=None)
    @given(nf=st.integers(0, 6), nm=st.integers(0, 6),
           versions=st.lists(st.sampled_from(VERSION_POOL), min_size=12, max_size=12),
           big=st.sampled_from([None, 101, 0xFFFF]), cut=st.integers(0, 40),
           table=st.sampled_from([icw.LINUX_HB_VERSIONS, icw.LINUX_SD_VERSIONS, (0x90000,)]))
    def check(nf, nm, versions, big, cut, table):
        words = versions[:nf + nm]
        msg = icw.build_message(icw.ICMSGTYPE_NEGOTIATE,
                                icw.negotiate_body(words[:nf], words[nf:]))
        if big is not None:
            msg = msg[:icw.ICMSG_HDR] + struct.pack("<H", big) + msg[icw.ICMSG_HDR + 2:]
        msg = msg[:max(icw.ICMSG_HDR + 4, len(msg) - cut)]
        c_buf, c_found, c_fw, c_srv = c_negotiate(k_ic, msg, icw.LINUX_FW_VERSIONS, table)
        py_buf, py_found, py_fw, py_srv = icw.prep_negotiate_resp(msg, icw.LINUX_FW_VERSIONS,
                                                                  table)
        # The Python model also sets icflags (hv_util.c does that after the call).
        py_buf = bytearray(py_buf)
        py_buf[8 + icw.icmsg_hdr.icflags.offset] = msg[8 + icw.icmsg_hdr.icflags.offset]
        assert (c_found, c_fw, c_srv) == (py_found, py_fw, py_srv)
        assert c_buf == bytes(py_buf)

    check()


def test_guest_negotiation_ignores_a_message_without_counts(k_ic):
    """Shorter than the two counts: Linux answers nothing and touches nothing."""
    msg = icw.build_message(icw.ICMSGTYPE_NEGOTIATE, b"\x01\x00")
    buf, found, fw, srv = c_negotiate(k_ic, msg, icw.LINUX_FW_VERSIONS, icw.LINUX_HB_VERSIONS)
    assert not found and buf == msg and (fw, srv) == (0xdead, 0xdead)


# --------------------------------------------------------------------------------------------
# Real guest: guest_images/images/ic_demo with the runtime's VSCs (guest_images/rt/k_ic.c)
# --------------------------------------------------------------------------------------------

kvm = pytest.mark.kvm


def ic_demo(make_partition, vsps, cmdline="", timeout=60):
    from hvkvm import images
    from hvkvm.partition.config import PartitionConfig
    cfg = PartitionConfig(image=images.image_path("ic_demo"), cmdline=f"ic_demo {cmdline}",
                          vsps=vsps, timeout=timeout)
    return make_partition(cfg)


def syncs_of(result):
    return {args[0]: tuple(args[1:]) for _vcpu, args in result.syncs}


@kvm
def test_real_guest_heartbeats_advance_then_a_shutdown_from_another_thread_ends_the_run(
        make_partition):
    hb = HeartbeatVsp(interval=0.2)
    sd = ShutdownVsp()
    p = ic_demo(make_partition, [hb, sd])
    seen = []
    outcome = {}

    def operator():
        # What the VM Service does: watch last_heartbeat, then stop the guest gracefully.
        for n in range(1, 5):
            if not hb.wait_beats(n, 30):
                outcome["error"] = f"heartbeat {n} never came: {hb.stats}"
                break
            seen.append((hb.last_heartbeat, hb.sequence))
        outcome["ready"] = sd.wait_ready(30)
        outcome["sent"] = sd.request_shutdown("hvkvm test: maintenance")

    t = threading.Thread(target=operator, daemon=True)
    t.start()
    r = p.run()
    t.join(5)
    assert r.passed, f"{r.reason}\n" + "\n".join(r.logs)
    assert "error" not in outcome, outcome["error"]
    assert outcome == {"ready": True, "sent": True}
    # Heartbeats advanced: a later time and the next sequence number each time.
    times = [s[0] for s in seen]
    assert times == sorted(times) and len(set(times)) == 4
    assert [s[1] for s in seen] == [1, 2, 3, 4]
    assert hb.stats["bad"] == 0 and hb.error_count == 0
    # The guest negotiated Linux's versions and saw the request as sent.
    syncs = syncs_of(r)
    started, hb_relid, sd_relid, version = syncs[1][:4]
    assert started == 2 and hb_relid and sd_relid and version >> 16 == 5
    assert syncs[2][:4] == (icw.UTIL_FW_VERSION, icw.HB_VERSION, icw.UTIL_FW_VERSION,
                            icw.SD_VERSION_3_2)
    assert hb.negotiated == (icw.UTIL_FW_VERSION, icw.HB_VERSION)
    assert sd.negotiated == (icw.UTIL_FW_VERSION, icw.SD_VERSION_3_2)
    flags, reason_code, timeout_s, beats, last_seq = syncs[3][:5]
    assert (flags, reason_code, timeout_s) == (0, icw.SHTDN_REASON_FLAG_PLANNED, 0)
    assert beats >= 4 and last_seq == beats          # the guest answered seq + 1 from 0
    assert any('shutdown requested: "hvkvm test: maintenance"' in ln for ln in r.logs), r.logs
    # The acknowledgement reached the host before the guest stopped.
    assert sd.wait_acknowledged(5) == icw.HV_S_OK
    assert list(p.vmbus.errors) == []


@kvm
def test_real_guest_takes_a_restart_requested_before_it_booted_with_the_default_hook(
        make_partition):
    hb = HeartbeatVsp(interval=0.5)
    sd = ShutdownVsp()
    # Before the guest even opened the channel: kept, sent once it negotiates.
    assert sd.request_shutdown("early", reboot=True) is False
    p = ic_demo(make_partition, [hb, sd], "hook=default")
    r = p.run()
    assert r.passed, f"{r.reason}\n" + "\n".join(r.logs)
    assert r.exit_code == 0
    assert any('ic: shutdown requested (flags 2, reason 0x80000000): "early"' in ln
               for ln in r.logs), r.logs
    assert 3 not in syncs_of(r)                        # the runtime's hook, not the image's
    assert sd.wait_acknowledged(5) == icw.HV_S_OK and sd.requests == 1


@kvm
def test_real_guest_with_only_a_heartbeat_offered(make_partition):
    hb = HeartbeatVsp(interval=0.1)
    p = ic_demo(make_partition, [hb], "exit_beats=5")
    r = p.run()
    assert r.passed, f"{r.reason}\n" + "\n".join(r.logs)
    syncs = syncs_of(r)
    assert syncs[1][0] == 1 and syncs[1][2] == 0       # shutdown not offered: not started
    assert syncs[2][:4] == (icw.UTIL_FW_VERSION, icw.HB_VERSION, 0, 0)
    assert hb.wait_beats(5, 5) and hb.sequence >= 5
