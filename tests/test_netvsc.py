"""The netvsc VSP: NVSP/RNDIS handshake, OIDs, frames both ways through a real TAP device in a
network namespace the test creates, malformed guest input, flow control, both data planes.

The guest is :mod:`fakenetvsc` (Python, on real guest RAM and rings, no vCPU) on a
:class:`storvsc_guest.PlanePartition` (no KVM), and once on a real KVM partition. Traffic only
ever flows inside namespaces named ``hvkvm-<pid>-<n>`` that the tests create and delete; the TAP
devices are created inside them and get addresses only there.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid

import pytest

from fakeguest import wait_for
from fakenetvsc import SEND_GPA, Responder, eth_frame, open_netvsc
from hvkvm.vsp import netvsc as nv
from hvkvm.vsp.netns import ip as _ip
from hvkvm.vsp import netvsc_wire as nw
from hvkvm.vsp.netvsc import NetError, NetvscVsp, TapDevice
from storvsc_guest import PlanePartition

MAC = bytes.fromhex("00155d0a0b0c")
GUEST_IP = "10.77.0.2"
HOST_IP = "10.77.0.1"
TAP = "hvt0"


@pytest.fixture(params=["c", "python"])
def plane(request):
    return request.param


@pytest.fixture
def part():
    p = PlanePartition(64 << 20)
    yield p
    p.close()


class Nic:
    """A NIC on a fake guest: the VSP, the server and the guest's channel."""

    def __init__(self, part, tap=None, plane="c", handshake=True, bringup=True, **kw):
        kw.setdefault("spin_us", 20)
        recv_pages = kw.pop("recv_pages", 256)
        self.vsp = NetvscVsp(tap, mac=MAC, plane=plane, **kw)
        self.server, (self.g,) = open_netvsc(part, [self.vsp], recv_pages=recv_pages)
        self.relid = self.g.relid
        self.pump_thread = None
        self._stop = False
        if handshake:
            self.g.handshake()
            if bringup:
                self.bringup = self.g.linux_bringup()

    def stats(self):
        return self.vsp.stats()[self.relid]

    def wait_plane(self, plane):
        if plane == "c":
            assert wait_for(lambda: self.vsp.channels[self.relid].plane is not None)

    def start_pumping(self):
        def run():
            while not self._stop:
                self.g.pump()
                time.sleep(0.0002)
        self.pump_thread = threading.Thread(target=run, daemon=True)
        self.pump_thread.start()

    def stop_pumping(self):
        self._stop = True
        if self.pump_thread is not None:
            self.pump_thread.join()
        self._stop = False
        self.pump_thread = None

    def close(self):
        self.stop_pumping()
        self.server.close()
        self.g.ch.close()


@pytest.fixture
def make_nic(part):
    built = []

    def factory(**kw):
        n = Nic(part, **kw)
        built.append(n)
        return n

    yield factory
    for n in built:
        n.close()


# ------------------------------------------------------------------------------------------
# Network namespaces (traffic only there)
# ------------------------------------------------------------------------------------------

# the ``netns`` fixture (a fresh namespace, deleted afterwards) comes from conftest.py


def tap_in(ns: str, name: str = TAP, address: str | None = HOST_IP) -> TapDevice:
    """A TAP created inside ``ns``, up, with ``address``/24 there."""
    tap = TapDevice(name, netns=ns)
    if address:
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", name)
    return tap


def packet_socket(ns: str, ifname: str = TAP) -> socket.socket:
    """An AF_PACKET socket on ``ifname`` inside ``ns`` (sees every frame, sends raw ones)."""
    def make():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind((ifname, 0))
        return s
    s = nv._in_netns(ns, make)
    s.settimeout(2.0)
    return s


def udp_socket(ns: str) -> socket.socket:
    s = nv._in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    s.settimeout(2.0)
    return s


def recv_incoming(s: socket.socket, n: int, timeout: float = 5.0,
                  ethertype: int = 0x88B5) -> list[bytes]:
    """The next ``n`` frames arriving on the interface (not ones it sent) of ``ethertype``."""
    out = []
    end = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        try:
            data, addr = s.recvfrom(65536)
        except socket.timeout:
            break
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        if struct.unpack("!H", data[12:14])[0] == ethertype:
            out.append(data)
    return out


def make_frame(i: int, size: int, dst: bytes = MAC, src: bytes = bytes.fromhex("02aabbccdd01")):
    """A frame of ``size`` bytes (>= 14) with a local experimental ethertype and a pattern."""
    body = bytes((i * 131 + k) & 0xFF for k in range(size - 14))
    return eth_frame(dst, src, 0x88B5, body)


# ------------------------------------------------------------------------------------------
# TAP devices and --net
# ------------------------------------------------------------------------------------------

def test_tap_names_are_checked():
    for bad, why in [("", "empty"), ("a" * 16, "too long"), ("a/b", "characters"),
                     ("..", "characters"), ("tap 0", "characters")]:
        with pytest.raises(NetError, match=why):
            TapDevice(bad)
    nv.check_tap_name("a" * 15)


def test_net_spec_parsing():
    s = nv.parse_net_spec("tap=tap0,mac=00:15:5d:01:02:03,netns=ns1,vnet_hdr")
    assert (s.tap, s.mac, s.netns, s.vnet_hdr) == ("tap0", bytes.fromhex("00155d010203"),
                                                     "ns1", True)
    assert nv.parse_net_spec("tap=t").mac is None
    for bad, why in [("mac=00:15:5d:01:02:03", "names no TAP"), ("tap=t,mac=zz", "bad MAC"),
                     ("tap=t,mac=01:00:5e:00:00:01", "multicast"), ("tap=t,speed=1", "bad --net"),
                     ("tap=" + "x" * 20, "too long")]:
        with pytest.raises(NetError, match=why):
            nv.parse_net_spec(bad)


def test_tap_created_in_the_namespace_only(netns):
    with tap_in(netns, address=None) as tap:
        assert tap.fd >= 0
        assert TAP in _ip("-n", netns, "link", "show").stdout
        assert f"{TAP}:" not in _ip("link", "show").stdout, "the TAP leaked into the root netns"
        assert "UP" in _ip("-n", netns, "link", "show", TAP).stdout
    # created by us, not persistent: gone with the fd
    assert TAP not in _ip("-n", netns, "link", "show").stdout


def test_busy_tap_is_one_clear_error(netns):
    with tap_in(netns, address=None):
        with pytest.raises(NetError, match=r"^TAP device 'hvt0' is busy"):
            TapDevice(TAP, netns=netns)


def test_existing_non_tap_device_is_refused(netns):
    with pytest.raises(NetError, match="exists and is not a TAP device"):
        TapDevice("lo", netns=netns)


def test_missing_namespace_is_one_clear_error():
    with pytest.raises(NetError, match="network namespace 'hvkvm-no-such-ns' is not usable"):
        TapDevice(TAP, netns="hvkvm-no-such-ns")


def test_missing_permission_is_one_clear_error():
    """An unprivileged user cannot open /dev/net/tun (mode 0600 root): a forked child drops to
    nobody and tries."""
    if os.geteuid() != 0:
        pytest.skip("needs root to play an unprivileged user")
    r, w_ = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            try:
                TapDevice("hvt-perm")
                msg = "opened"
            except NetError as e:
                msg = f"NetError: {e}"
            os.write(w_, msg.encode())
        finally:
            os._exit(0)
    os.close(w_)
    out = os.read(r, 1000).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert out.startswith("NetError: no permission to open /dev/net/tun"), out


def test_cli_net_errors_are_one_line_exit_2(tmp_path):
    """--net problems are found before the partition is built: one line, exit 2."""
    import contextlib
    import io

    from hvkvm.cli import main
    image = tmp_path / "img.elf"       # any file: the TAP is opened before the image is loaded
    image.write_bytes(b"\x7fELF")
    for spec, why in [("tap=waytoolongname_x", "too long"), ("tap=t,mac=01:02:03:04:05:06",
                                                             "multicast"),
                      ("foo", "bad --net item"), ("tap=t0,netns=hvkvm-no-such-ns", "not usable")]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["run", str(image), "--net", spec])
        assert rc == 2, spec
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and why in lines[0], lines


# ------------------------------------------------------------------------------------------
# The NVSP handshake, step by step
# ------------------------------------------------------------------------------------------

def test_version_negotiation_as_linux_does_it(make_nic):
    nic = make_nic(handshake=False)
    g = nic.g
    r = g.init(0x70000)                        # newer than anything: refused
    assert r.hdr.msg_type == nw.NVSP_MSG_TYPE_INIT_COMPLETE
    assert r.msg.init_msg.init_complete.status == nw.NVSP_STAT_FAIL
    r = g.init(0x12345)                        # not a version at all
    assert r.msg.init_msg.init_complete.status == nw.NVSP_STAT_FAIL
    r = g.init(nw.NVSP_PROTOCOL_VERSION_1, nw.NVSP_PROTOCOL_VERSION_5)   # a range: highest in it
    c = r.msg.init_msg.init_complete
    assert (c.status, c.negotiated_protocol_ver) == (nw.NVSP_STAT_SUCCESS,
                                                     nw.NVSP_PROTOCOL_VERSION_5)
    r = g.init(nw.NVSP_PROTOCOL_VERSION_61)    # Linux 6.x: one version per INIT, newest first
    c = r.msg.init_msg.init_complete
    assert (c.status, c.negotiated_protocol_ver) == (nw.NVSP_STAT_SUCCESS, 0x60001)


@pytest.mark.parametrize("version", nw.NVSP_VERSIONS)
def test_every_linux_version_is_accepted(make_nic, version):
    nic = make_nic(handshake=False)
    assert nic.g.handshake(versions=(version,)) == version
    out = nic.g.linux_bringup()
    st, caps = out["hwcaps"]
    hdr = nw.ndis_object_header.from_buffer_copy(caps[:4])
    assert (hdr.type, hdr.size) == (nw.NDIS_OBJECT_TYPE_OFFLOAD, len(caps))
    want = {nw.NVSP_PROTOCOL_VERSION_1: (1, nw.NDIS_OFFLOAD_SIZE_6_0),
            nw.NVSP_PROTOCOL_VERSION_2: (1, nw.NDIS_OFFLOAD_SIZE_6_0),
            nw.NVSP_PROTOCOL_VERSION_4: (2, nw.NDIS_OFFLOAD_SIZE_6_1)}.get(
        version, (3, nw.NDIS_OFFLOAD_SIZE))
    assert (hdr.revision, hdr.size) == want
    assert out["offload_set"] == nw.RNDIS_STATUS_SUCCESS
    assert nic.stats()["ndis_version"] == (nw.NDIS_VERSION_6_1 if version <= 0x40000
                                           else nw.NDIS_VERSION_6_30)


def test_buffers_and_sections(make_nic):
    nic = make_nic(handshake=False)
    g = nic.g
    from fakenetvsc import RECV_GPA, gpadl
    # a receive buffer before INIT is refused, and so is an unknown GPADL
    h = gpadl(g.guest, g.relid, RECV_GPA, 256)
    r = g.send_recv_buf(h)
    assert r.msg.v1_msg.send_recv_buf_complete.status == nw.NVSP_STAT_FAIL
    g.init(nw.NVSP_PROTOCOL_VERSION_61)
    r = g.send_recv_buf(0xDEAD)
    assert r.msg.v1_msg.send_recv_buf_complete.status == nw.NVSP_STAT_FAIL
    r = g.send_recv_buf(h)
    c = r.msg.v1_msg.send_recv_buf_complete
    assert r.hdr.msg_type == nw.NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE
    assert (c.status, c.num_sections) == (nw.NVSP_STAT_SUCCESS, 1)
    s = c.sections[0]
    # what Linux's netvsc_init_buf checks: one section at offset 0, sub-allocations that fit
    assert s.offset == 0 and s.sub_alloc_size == nw.NETVSC_RECV_SECTION_SIZE
    assert s.num_sub_allocs == 256 * 4096 // s.sub_alloc_size
    assert s.end_offset == s.num_sub_allocs * s.sub_alloc_size <= 256 * 4096
    r = g.send_recv_buf(h)                     # a second receive buffer: refused
    assert r.msg.v1_msg.send_recv_buf_complete.status == nw.NVSP_STAT_FAIL
    hs = gpadl(g.guest, g.relid, SEND_GPA, 64)
    r = g.send_send_buf(hs)
    c = r.msg.v1_msg.send_send_buf_complete
    assert (r.hdr.msg_type, c.status, c.section_size) == (
        nw.NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE, nw.NVSP_STAT_SUCCESS,
        nw.NETVSC_SEND_SECTION_SIZE)
    assert nic.stats()["errors"] == 3          # refused requests are counted and logged


def test_messages_without_completion_get_no_answer(make_nic):
    nic = make_nic(handshake=False)
    g = nic.g
    g.init(nw.NVSP_PROTOCOL_VERSION_5)
    m = nw.nvsp_message()
    m.hdr.msg_type = nw.NVSP_MSG1_TYPE_SEND_NDIS_VER
    g.nvsp(m, completion=False)
    time.sleep(0.05)
    g.pump()
    assert not g.completions and not g.other_control
    assert wait_for(lambda: nic.stats()["handshake_packets"] == 2)


# ------------------------------------------------------------------------------------------
# RNDIS: what Linux asks at start, and the rest of the control set
# ------------------------------------------------------------------------------------------

def test_linux_bringup_answers(make_nic, plane):
    nic = make_nic(plane=plane)
    out = nic.bringup
    init = out["init"]
    assert (init.major_ver, init.minor_ver) == (1, 0)
    assert init.dev_flags == nw.RNDIS_DF_CONNECTIONLESS and init.medium == nw.RNDIS_MEDIUM_802_3
    assert init.max_pkt_per_msg == 8 and 1 << init.pkt_alignment_factor == 8
    assert out["mtu"] == 1500
    assert out["mac"] == MAC
    st, caps = out["hwcaps"]
    assert st == nw.RNDIS_STATUS_SUCCESS
    assert bytes(caps[4:]) == bytes(len(caps) - 4), "capabilities: nothing is offloaded"
    assert out["offload_set"] == nw.RNDIS_STATUS_SUCCESS
    assert out["link"] == nw.NDIS_MEDIA_STATE_CONNECTED
    assert out["speed"] == nv.DEFAULT_LINK_SPEED
    assert out["rss"] == (nw.RNDIS_STATUS_NOT_SUPPORTED, b"")
    assert out["filter"] == nw.RNDIS_STATUS_SUCCESS
    nic.wait_plane(plane)
    st = nic.stats()
    assert st["plane"] == plane and st["rndis_initialized"]
    assert st["packet_filter"] == 0xD and st["errors"] == 0


def test_more_oids_keepalive_and_reset(make_nic, plane):
    nic = make_nic(plane=plane)
    g = nic.g
    u32 = lambda b: struct.unpack("<I", b)[0]  # noqa: E731
    st, v = g.query(nw.RNDIS_OID_GEN_SUPPORTED_LIST)
    oids = struct.unpack(f"<{len(v) // 4}I", v)
    assert nw.RNDIS_OID_802_3_PERMANENT_ADDRESS in oids and nw.RNDIS_OID_GEN_LINK_SPEED in oids
    assert g.query(nw.RNDIS_OID_802_3_CURRENT_ADDRESS) == (0, MAC)
    assert u32(g.query(nw.RNDIS_OID_GEN_MAXIMUM_TOTAL_SIZE)[1]) == 1514
    assert u32(g.query(nw.RNDIS_OID_GEN_CURRENT_PACKET_FILTER)[1]) == 0xD
    assert u32(g.query(nw.RNDIS_OID_GEN_MEDIA_IN_USE)[1]) == nw.RNDIS_MEDIUM_802_3
    assert g.query(0x0DEAD001) == (nw.RNDIS_STATUS_NOT_SUPPORTED, b"")
    assert g.query(nw.RNDIS_OID_802_3_PERMANENT_ADDRESS, via="gpa") == (0, MAC)
    # offload parameters that enable anything are refused (we offload nothing)
    p = nw.ndis_offload_params()
    p.header.type, p.header.revision, p.header.size = nw.NDIS_OBJECT_TYPE_DEFAULT, 3, 28
    p.tcp_ip_v4_csum = nw.NDIS_OFFLOAD_PARAMETERS_TX_RX_ENABLED
    assert g.set(nw.OID_TCP_OFFLOAD_PARAMETERS, bytes(p)) == nw.RNDIS_STATUS_NOT_SUPPORTED
    assert g.set(nw.OID_GEN_RECEIVE_SCALE_PARAMETERS, bytes(40)) == nw.RNDIS_STATUS_NOT_SUPPORTED
    assert g.set(nw.RNDIS_OID_802_3_MULTICAST_LIST, bytes(12)) == 0
    assert g.set(nw.RNDIS_OID_802_3_MULTICAST_LIST, bytes(7)) == nw.RNDIS_STATUS_INVALID_LENGTH
    assert g.set(nw.RNDIS_OID_GEN_CURRENT_PACKET_FILTER, b"\x01") == \
        nw.RNDIS_STATUS_INVALID_LENGTH
    t, data = g.request(nw.RNDIS_MSG_KEEPALIVE, bytes(4))
    assert t == nw.RNDIS_MSG_KEEPALIVE_C and struct.unpack_from("<II", data, 8)[1] == 0
    assert nic.stats()["errors"] == 0


def test_link_indications(make_nic, plane):
    nic = make_nic(plane=plane)
    g = nic.g
    nic.wait_plane(plane)
    nic.vsp.set_link(False)
    assert wait_for(lambda: g.pump() >= 0 and g.indications)
    assert g.indications == [nw.RNDIS_STATUS_MEDIA_DISCONNECT]
    assert struct.unpack("<I", g.query(nw.RNDIS_OID_GEN_MEDIA_CONNECT_STATUS)[1])[0] == \
        nw.NDIS_MEDIA_STATE_DISCONNECTED
    nic.vsp.set_link(True)
    assert wait_for(lambda: g.pump() >= 0 and len(g.indications) == 2)
    assert g.indications[1] == nw.RNDIS_STATUS_MEDIA_CONNECT
    assert nic.stats()["indications"] == 2


# ------------------------------------------------------------------------------------------
# Frames both ways through a TAP device in a namespace
# ------------------------------------------------------------------------------------------

def test_ping_and_udp_echo_from_the_namespace(netns, make_nic, plane):
    """Real tools in the namespace talk to the fake guest: ARP, ping, UDP echo byte-exact."""
    if shutil.which("ping") is None:
        pytest.skip("ping (iputils-ping) is not installed")
    tap = tap_in(netns)
    try:
        nic = make_nic(tap=tap, plane=plane)
        nic.g.responder = Responder(MAC, GUEST_IP)
        nic.start_pumping()
        r = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "5", "-i", "0.05", "-W",
                            "2", GUEST_IP], capture_output=True, text=True)
        assert " 0% packet loss" in r.stdout, r.stdout + r.stderr
        s = udp_socket(netns)
        try:
            sizes = list(range(1, 1473, 3)) + [1472]
            for size in sizes:
                data = bytes((size * 13 + i) & 0xFF for i in range(size))
                s.sendto(data, (GUEST_IP, 7))
                got, addr = s.recvfrom(4096)
                assert got == data and addr == (GUEST_IP, 7), size
        finally:
            s.close()
        seen = nic.g.responder.seen
        assert seen["arp"] >= 1 and seen["icmp"] == 5 and seen["udp"] == len(sizes)
        st = nic.stats()
        assert st["tx_frames"] >= 5 + len(sizes) and st["rx_frames"] >= 5 + len(sizes)
        assert st["errors"] == 0 and st["plane"] == plane
        assert st["kicks"] > 0 and st["signals"] > 0
        nic.stop_pumping()
        assert wait_for(lambda: nic.g.pump() >= 0 and
                        nic.stats()["free_sections"] == nic.g.recv_sections[1])
    finally:
        tap.close()


@pytest.mark.parametrize("via", ["section", "gpa"])
def test_raw_frames_both_ways(netns, make_nic, plane, via):
    """Every frame size, exactly, in both directions (guest frames by send section or GPA
    direct; host frames in batched transfer-page packets)."""
    tap = tap_in(netns, address=None)
    s = packet_socket(netns)
    try:
        nic = make_nic(tap=tap, plane=plane)
        nic.wait_plane(plane)
        g = nic.g
        sizes = [14, 15, 60, 64, 100, 511, 512, 513, 1000, 1514, 1518]
        for i, size in enumerate(sizes):
            f = make_frame(i, size, dst=bytes.fromhex("02aabbccdd01"), src=MAC)
            assert g.send_frame(f, via=via) == nw.NVSP_STAT_SUCCESS
            (got,) = recv_incoming(s, 1)
            assert got == f, size
        # the namespace side sends at most MTU + 14 (AF_PACKET refuses VLAN-sized frames)
        host = [make_frame(100 + i, size) for i, size in enumerate(sizes * 4) if size <= 1514]
        for f in host:
            s.send(f)
        got = g.wait_frames(len(host))
        assert got == host
        st = nic.stats()
        assert st["tx_frames"] == len(sizes) and st["tx_bytes"] == sum(sizes)
        assert st["rx_frames"] == len(host) and st["rx_bytes"] == sum(map(len, host))
        assert st["rx_packets"] <= len(host) and st["errors"] == 0
    finally:
        s.close()
        tap.close()


def test_tap_with_vnet_header(netns, make_nic, plane):
    """IFF_VNET_HDR: the 10-byte virtio_net_hdr is stripped towards the guest and a zero one is
    added towards the TAP (no offloads are negotiated)."""
    tap = TapDevice(TAP, netns=netns, vnet_hdr=True)
    s = packet_socket(netns)
    try:
        nic = make_nic(tap=tap, plane=plane)
        g = nic.g
        f = make_frame(1, 333)
        s.send(f)
        assert g.wait_frames(1) == [f]
        out = make_frame(2, 1514, dst=bytes.fromhex("02aabbccdd01"), src=MAC)
        assert g.send_frame(out) == nw.NVSP_STAT_SUCCESS
        assert recv_incoming(s, 1) == [out]
    finally:
        s.close()
        tap.close()


def test_deleted_tap_device_is_reported_once_and_survived(netns, make_nic, plane):
    """The TAP's device is deleted under a running NIC (its fd then polls POLLERR forever):
    one logged error, the TAP is left alone, the guest's channel keeps being served."""
    tap = tap_in(netns, address=None)
    try:
        nic = make_nic(tap=tap, plane=plane)
        nic.wait_plane(plane)
        _ip("-n", netns, "link", "del", TAP)
        assert nic.g.send_frame(make_frame(1, 60, dst=bytes(6), src=MAC)) == \
            nw.NVSP_STAT_SUCCESS
        assert wait_for(lambda: nic.stats()["tap_dead"])
        time.sleep(0.2)
        st = nic.stats()
        assert st["error_kinds"] == {"tap": 1}, st["error_kinds"]
        if plane == "c":
            sleeps = st["plane_sleeps"]
            time.sleep(0.2)
            assert nic.stats()["plane_sleeps"] - sleeps < 50, "the plane spins on a dead TAP"
        for i in range(5):
            assert nic.g.send_frame(make_frame(i, 60, dst=bytes(6), src=MAC)) == \
                nw.NVSP_STAT_SUCCESS
        assert nic.g.query(nw.RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE)[0] == 0
        assert nic.stats()["error_kinds"] == {"tap": 1}
    finally:
        tap.close()


def test_packet_filter_and_halt(netns, make_nic, plane):
    tap = tap_in(netns, address=None)
    s = packet_socket(netns)
    try:
        nic = make_nic(tap=tap, plane=plane)
        g = nic.g
        other = bytes.fromhex("02000000beef")
        bcast = b"\xff" * 6
        mcast = bytes.fromhex("01005e000001")
        frames = [make_frame(1, 60, dst=MAC), make_frame(2, 60, dst=other),
                  make_frame(3, 60, dst=bcast), make_frame(4, 60, dst=mcast)]
        for f in frames:
            s.send(f)
        # filter DIRECTED | BROADCAST | ALL_MULTICAST (Linux's): not the other host's frame
        assert g.wait_frames(3) == [frames[0], frames[2], frames[3]]
        assert g.set(nw.RNDIS_OID_GEN_CURRENT_PACKET_FILTER,
                     struct.pack("<I", nw.NDIS_PACKET_TYPE_PROMISCUOUS)) == 0
        for f in frames:
            s.send(f)
        assert g.wait_frames(4) == frames
        assert g.set(nw.RNDIS_OID_GEN_CURRENT_PACKET_FILTER, struct.pack("<I", 0)) == 0
        s.send(frames[0])
        assert wait_for(lambda: nic.stats()["rx_dropped"] >= 2)
        # HALT: no answer; the data path stops both ways until the next INITIALIZE
        assert g.send_rndis(struct.pack("<III", nw.RNDIS_MSG_HALT, 12, 99)) == nw.NVSP_STAT_SUCCESS
        assert wait_for(lambda: not nic.stats()["rndis_initialized"])
        assert g.send_frame(make_frame(5, 60, dst=other, src=MAC)) == nw.NVSP_STAT_SUCCESS
        assert wait_for(lambda: nic.stats()["tx_dropped"] == 1)
        g.rndis_init()
        g.set(nw.RNDIS_OID_GEN_CURRENT_PACKET_FILTER, struct.pack("<I", 1))
        s.send(frames[0])
        assert g.wait_frames(1) == [frames[0]]
        assert not g.frames
    finally:
        s.close()
        tap.close()


def test_receive_sections_and_ring_space_flow_control(netns, make_nic, plane):
    """The guest holds every section (no completions): the TAP waits, a control answer still
    gets a reserved section; completions let the rest through, nothing lost or reordered."""
    tap = tap_in(netns, address=None)
    s = packet_socket(netns)
    try:
        nic = make_nic(tap=tap, plane=plane, recv_pages=8)    # 18 sections, 4 for control
        g = nic.g
        sections = g.recv_sections[1]
        assert sections == 8 * 4096 // nw.NETVSC_RECV_SECTION_SIZE
        g.auto_complete = False
        frames = [make_frame(i, 200) for i in range(40)]
        for f in frames:
            s.send(f)
        usable = sections - 4
        assert wait_for(lambda: g.pump() >= 0 and len(g.frames) == usable)
        time.sleep(0.1)
        g.pump()
        assert len(g.frames) == usable, "the TAP used a reserved section"
        assert nic.stats()["rx_wait_section"] > 0
        # a control answer still gets through (reserved sections) while the guest holds frames
        req_id = g.next_req
        g.next_req += 1
        msg = struct.pack("<IIIIIII", nw.RNDIS_MSG_QUERY, 28, req_id,
                          nw.RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE, 0, 0, 0)
        assert g.send_rndis(msg) == nw.NVSP_STAT_SUCCESS
        assert wait_for(lambda: g.pump() >= 0 and req_id in g.responses)
        g.auto_complete = True
        got = g.wait_frames(len(frames))
        assert got == frames
        assert wait_for(lambda: g.pump() >= 0 and nic.stats()["free_sections"] == sections)
    finally:
        s.close()
        tap.close()


def test_forged_receive_completions_free_nothing(netns, make_nic, plane):
    """Completions naming a section inside a batch, a stale generation, or a transaction twice
    are refused; the real completion frees the whole batch once."""
    tap = tap_in(netns, address=None)
    s = packet_socket(netns)
    try:
        nic = make_nic(tap=tap, plane=plane, recv_pages=8)    # 18 sections, 14 for frames
        g = nic.g
        total = g.recv_sections[1]
        g.auto_complete = False
        fill = [make_frame(50 + i, 60) for i in range(14)]
        for f in fill:              # hold every frame section: the next frames wait in the TAP
            s.send(f)
        assert wait_for(lambda: g.pump() >= 0 and len(g.frames) == 14)
        frames = [make_frame(i, 100) for i in range(12)]
        for f in frames:
            s.send(f)
        time.sleep(0.05)
        g.complete_pending()        # all at once: the 12 waiting frames go out as one batch
        g.frames.clear()
        assert wait_for(lambda: g.pump() >= 0 and len(g.frames) == 12)
        assert g.frames == frames
        multi = [t for t in g.pending_xfers if len(g.xfer_offsets[t]) > 1]
        assert multi, "the frames did not batch"
        size = g.recv_sections[0]
        held = total - nic.stats()["free_sections"]
        assert held == 12

        def complete(tid):
            g.ch.out.write_completion(struct.pack("<II", 108, 1), trans_id=tid)
            if g.ch.out.commit():
                g.ch.kick()

        bad = 0
        for t in multi:    # a member of a batch, with the generation a fresh section has
            complete(g.xfer_offsets[t][1] // size)
            bad += 1
        head = g.pending_xfers[0]
        complete(head ^ (1 << 32))                     # the right section, a wrong generation
        bad += 1
        assert wait_for(lambda: nic.stats()["error_kinds"].get("recv-completion") == bad)
        assert total - nic.stats()["free_sections"] == 12
        g.complete_pending()
        assert wait_for(lambda: nic.stats()["free_sections"] == total)
        complete(head)                                  # twice
        assert wait_for(lambda: nic.stats()["error_kinds"].get("recv-completion") == bad + 1)
        assert nic.stats()["free_sections"] == total
        g.auto_complete = True
        s.send(frames[0])
        assert g.wait_frames(1) == [frames[0]]
    finally:
        s.close()
        tap.close()


def test_ring_full_waits_for_the_guest(netns, make_nic, plane):
    """One frame per packet and a guest that stops reading: the ring fills, the TAP waits for
    pending_send_sz, and every frame arrives once the guest reads again."""
    tap = tap_in(netns, address=None)
    s = packet_socket(netns)
    try:
        nic = make_nic(tap=tap, plane=plane, rx_batch=1, recv_pages=1024)
        g = nic.g
        frames = [make_frame(i, 60) for i in range(700)]
        for f in frames:
            s.send(f)
        assert wait_for(lambda: nic.stats()["rx_wait_ring"] > 0, 10)
        got = g.wait_frames(len(frames), timeout=20)
        assert got == frames
    finally:
        s.close()
        tap.close()


# ------------------------------------------------------------------------------------------
# A hostile guest: every malformed input answered, logged, survived
# ------------------------------------------------------------------------------------------

def _nvsp_rndis(index=nv.NO_SECTION, size=0, channel_type=1) -> bytes:
    m = nw.nvsp_message()
    m.hdr.msg_type = nw.NVSP_MSG1_TYPE_SEND_RNDIS_PKT
    m.msg.v1_msg.send_rndis_pkt.channel_type = channel_type
    m.msg.v1_msg.send_rndis_pkt.send_buf_section_index = index
    m.msg.v1_msg.send_rndis_pkt.send_buf_section_size = size
    return bytes(m)


def _hostile_script(nic) -> list:
    """Malformed input, one case at a time: (case, NVSP status or answer, error kinds added).
    A valid query after each proves the channel still serves."""
    g = nic.g
    results = []
    pkt = g.rndis_packet
    frame = make_frame(0, 60, dst=bytes(6), src=MAC)

    def kinds():
        return dict(nic.stats()["error_kinds"])

    def status_of(tid):
        raw = g.wait_completion(tid)
        return struct.unpack_from("<II", raw)

    def case(name, fn):
        before = kinds()
        out = fn()
        after = {}
        # the valid query below is served after this case's packet: its errors are in by then
        ok = g.query(nw.RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE)
        assert ok == (0, struct.pack("<I", 1500)), f"{name}: the channel stopped serving"
        if nic.vsp.plane == "c":   # the C plane's records reach the log via the parent thread
            wait_for(lambda: nic.vsp.channels[nic.relid].cnet.stats["errors"] ==
                     sum(nic.stats()["error_kinds"].values()) - nic.stats().get(
                         "handshake_errors", 0), 2)
        for k, v in kinds().items():
            if v != before.get(k, 0):
                after[k] = v - before.get(k, 0)
        results.append((name, out, after))

    sec = g.send_section_size
    nsec = g.send_pages * 4096 // sec
    case("section index past the buffer", lambda: g.send_rndis(pkt(frame), section=nsec))
    case("section index huge", lambda: g.send_rndis(pkt(frame), section=0xFFFFFFFE))
    case("section size zero", lambda: g.send_rndis(pkt(frame), section=0, section_size=0))
    case("section size past the section", lambda: g.send_rndis(pkt(frame), section=0,
                                                                  section_size=sec + 1))
    case("in-band without a section", lambda: status_of(g.post(_nvsp_rndis())))
    case("GPA outside guest RAM", lambda: status_of(g.post(
        _nvsp_rndis(), ranges=[(64, 0, [(1 << 40) // 4096])])))
    case("RNDIS msg_len < 8", lambda: g.send_rndis(struct.pack("<II", 1, 4) + bytes(56)))
    case("RNDIS msg_len past the bytes", lambda: g.send_rndis(struct.pack("<II", 1, 400) +
                                                              bytes(56), section_size=64))
    case("RNDIS nothing but padding", lambda: g.send_rndis(bytes(4), section_size=4))
    bad = bytearray(pkt(frame))
    struct.pack_into("<I", bad, 8, 4000)
    case("data_offset past the message", lambda: g.send_rndis(bytes(bad)))
    bad = bytearray(pkt(frame))
    struct.pack_into("<I", bad, 12, 4000)
    case("data_len past the message", lambda: g.send_rndis(bytes(bad)))
    bad = bytearray(pkt(frame))
    struct.pack_into("<I", bad, 8, 8)
    case("data_offset inside the header", lambda: g.send_rndis(bytes(bad)))
    case("runt frame", lambda: g.send_rndis(pkt(frame[:13])))
    case("oversize frame", lambda: g.send_rndis(pkt(frame + bytes(1500))))
    case("RNDIS packet shorter than rndis_packet", lambda: g.send_rndis(
        struct.pack("<II", 1, 20) + bytes(12)))
    case("unknown RNDIS type", lambda: g.send_rndis(struct.pack("<III", 0x77, 12, 1)))
    case("QUERY too short", lambda: g.send_rndis(struct.pack("<IIII", 4, 16, 1, 0)))
    case("SET info offset past the message", lambda: g.request(
        nw.RNDIS_MSG_SET, struct.pack("<IIIII", 0, nw.RNDIS_OID_GEN_CURRENT_PACKET_FILTER, 4,
                                      400, 0))[1][12:16])
    case("QUERY input offset past the message (ignored)", lambda: g.request(
        nw.RNDIS_MSG_QUERY, struct.pack("<IIIII", 0, nw.RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE, 8,
                                        9999, 0))[1][8:])
    ctl = struct.pack("<III", nw.RNDIS_MSG_KEEPALIVE, 12, 7)
    case("nine control messages in one packet", lambda: g.send_rndis(ctl * 9))
    case("receive completion for nothing", lambda: (g.ch.out.write_completion(
        struct.pack("<II", 108, 1), trans_id=0x1234_0000_0042), g.ch.out.commit(),
        g.ch.kick(), None)[3])
    case("empty NVSP packet", lambda: (g.post(b"", completion=False), None)[1])
    case("SEND_RNDIS_PKT of 8 bytes", lambda: (g.post(_nvsp_rndis()[:8], completion=False),
                                               None)[1])
    case("unknown NVSP type", lambda: bytes(g.wait_completion(g.post(
        struct.pack("<I", 999) + bytes(36)))[:8]))
    case("INIT after the data started", lambda: bytes(g.wait_completion(g.post(
        struct.pack("<III", 1, 2, 2) + bytes(28)))[:16]))
    case("SEND_SEND_BUF after the data started", lambda: bytes(g.wait_completion(g.post(
        struct.pack("<IIH", 104, 1, 0) + bytes(30)))[:12]))
    case("a transfer-page packet from the guest", lambda: (g.ch.out.write_xfer_pages(
        0xCAFE, [(10, 0)], bytes(40), trans_id=5), g.ch.out.commit(), g.ch.kick(), None)[3])
    # the guest's send buffer still works after all that, and frames still flow
    case("a good frame", lambda: g.send_frame(frame))
    return results


EXPECTED = {
    "section index past the buffer": (nw.NVSP_STAT_FAIL, {"send-section": 1}),
    "section index huge": (nw.NVSP_STAT_FAIL, {"send-section": 1}),
    "section size zero": (nw.NVSP_STAT_FAIL, {"send-section": 1}),
    "section size past the section": (nw.NVSP_STAT_FAIL, {"send-section": 1}),
    "in-band without a section": ((108, nw.NVSP_STAT_FAIL), {"no-data": 1}),
    "GPA outside guest RAM": ((108, nw.NVSP_STAT_FAIL), {"gpa": 1}),
    "RNDIS msg_len < 8": (nw.NVSP_STAT_INVALID_RNDIS_PKT, {"rndis-len": 1}),
    "RNDIS msg_len past the bytes": (nw.NVSP_STAT_INVALID_RNDIS_PKT, {"rndis-len": 1}),
    "RNDIS nothing but padding": (nw.NVSP_STAT_INVALID_RNDIS_PKT, {"rndis-len": 1}),
    "data_offset past the message": (nw.NVSP_STAT_INVALID_RNDIS_PKT, {"rndis-packet": 1}),
    "data_len past the message": (nw.NVSP_STAT_INVALID_RNDIS_PKT, {"rndis-packet": 1}),
    "data_offset inside the header": (nw.NVSP_STAT_INVALID_RNDIS_PKT, {"rndis-packet": 1}),
    "runt frame": (nw.NVSP_STAT_INVALID_RNDIS_PKT, {"rndis-packet": 1}),
    "oversize frame": (nw.NVSP_STAT_INVALID_RNDIS_PKT, {"rndis-packet": 1}),
    "RNDIS packet shorter than rndis_packet": (nw.NVSP_STAT_INVALID_RNDIS_PKT,
                                               {"rndis-packet": 1}),
    "unknown RNDIS type": (nw.NVSP_STAT_INVALID_RNDIS_PKT, {"rndis-type": 1}),
    "QUERY too short": (nw.NVSP_STAT_INVALID_RNDIS_PKT, {"rndis-request": 1}),
    "SET info offset past the message": (struct.pack("<I", nw.RNDIS_STATUS_INVALID_DATA),
                                         {"rndis-request": 1}),
    "nine control messages in one packet": (nw.NVSP_STAT_INVALID_RNDIS_PKT,
                                            {"too-many-control": 1}),
    "receive completion for nothing": (None, {"recv-completion": 1}),
    "empty NVSP packet": (None, {"short-nvsp": 1}),
    "SEND_RNDIS_PKT of 8 bytes": (None, {"short-nvsp": 1}),
    "unknown NVSP type": (struct.pack("<II", 999, nw.NVSP_STAT_FAIL), {"nvsp-type": 1}),
    "INIT after the data started": (struct.pack("<IIII", nw.NVSP_MSG_TYPE_INIT_COMPLETE, 0, 0,
                                                nw.NVSP_STAT_FAIL), {"nvsp-type": 1}),
    "SEND_SEND_BUF after the data started": (struct.pack(
        "<III", nw.NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE, nw.NVSP_STAT_FAIL, 0),
        {"nvsp-type": 1}),
    "a transfer-page packet from the guest": (None, {"packet-type": 1}),
    "a good frame": (nw.NVSP_STAT_SUCCESS, {}),
}


def test_malformed_guest_input_is_answered_logged_and_survived(make_nic, plane, caplog):
    nic = make_nic(plane=plane)
    nic.wait_plane(plane)
    results = _hostile_script(nic)
    for name, out, kinds in results:
        if name not in EXPECTED:
            continue
        want_out, want_kinds = EXPECTED[name]
        assert kinds == want_kinds, f"{name}: error kinds {kinds}"
        if name.startswith("QUERY input offset"):
            continue
        assert out == want_out, f"{name}: got {out!r}"
    st = nic.stats()
    assert st["plane"] == plane, "the C plane stopped serving"
    if plane == "c":
        assert nic.vsp.channels[nic.relid].plane.error == 0
    # logged: the channel server's error log and Python's logging
    assert any("send_buf_section_index" in e for e in nic.server.errors)
    assert any("netvsc relid" in r.getMessage() for r in caplog.records)
    assert len(nic.vsp.errors) == sum(sum(k.values()) for _, _, k in results)


def test_both_planes_answer_alike(part):
    """The Python plane is the oracle: the same hostile script gives the same answers, errors
    and counters on both."""
    runs = {}
    for plane in ("python", "c"):
        p = PlanePartition(64 << 20)
        nic = Nic(p, plane=plane, instance_id=uuid.UUID(int=7))
        try:
            nic.wait_plane(plane)
            res = _hostile_script(nic)
            assert wait_for(lambda: nic.g.pump() >= 0 and
                            nic.stats()["free_sections"] == nic.g.recv_sections[1])
            st = nic.stats()
            keep = ("tx_packets", "control", "completions", "errors", "tx_frames", "tx_dropped",
                    "rx_frames", "indications")
            runs[plane] = (res, {k: st[k] for k in keep}, st["error_kinds"])
        finally:
            nic.close()
            p.close()
    assert runs["python"] == runs["c"]


def test_a_flood_of_bad_messages_is_rate_limited_in_the_log(make_nic, plane, caplog):
    nic = make_nic(plane=plane)
    nic.wait_plane(plane)
    g = nic.g
    for _ in range(300):
        g.post(struct.pack("<I", 999) + bytes(36), completion=False)
    assert wait_for(lambda: nic.stats()["error_kinds"].get("nvsp-type", 0) +
                    nic.stats().get("errors_lost", 0) >= 300 or
                    nic.stats()["errors"] >= 300, 10)
    lines = [r for r in caplog.records if "not served in this state" in r.getMessage()]
    assert len(lines) <= 40, f"{len(lines)} log lines for one flood"
    assert g.query(nw.RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE)[0] == 0


def test_revoked_receive_buffer_stops_the_data_path(netns, make_nic, plane):
    tap = tap_in(netns, address=None)
    s = packet_socket(netns)
    try:
        nic = make_nic(tap=tap, plane=plane)
        g = nic.g
        m = nw.nvsp_message()
        m.hdr.msg_type = nw.NVSP_MSG1_TYPE_REVOKE_RECV_BUF
        m.msg.v1_msg.revoke_recv_buf.id = nw.NETVSC_RECEIVE_BUFFER_ID
        g.nvsp(m, completion=False)
        s.send(make_frame(1, 60))
        assert wait_for(lambda: nic.stats()["rx_dropped"] >= 1)
        # a control request now has nowhere to be answered: refused quietly, logged
        keepalive = struct.pack("<III", nw.RNDIS_MSG_KEEPALIVE, 12, 5)
        assert g.send_rndis(keepalive) == nw.NVSP_STAT_SUCCESS
        assert wait_for(lambda: nic.stats()["error_kinds"].get("no-buffer") == 1)
        assert g.xfer_packets == nic.stats()["control"] - 1   # every answer before the revoke
    finally:
        s.close()
        tap.close()


def test_corrupt_ring_stops_only_this_channel(make_nic, plane):
    nic = make_nic(plane=plane)
    nic.wait_plane(plane)
    g = nic.g
    g.ch.maps[0].write(0, struct.pack("<I", 0xFFFFFFF0))   # write_index past the ring
    g.ch.kick()
    ch = nic.vsp.channels[nic.relid]
    if plane == "c":
        assert wait_for(lambda: ch.plane.error != 0)
    else:
        assert wait_for(lambda: ch.broken is not None)
    assert nic.stats()["plane"] == plane   # the VSP still answers for its counters


def test_close_and_reopen_keeps_the_tap(netns, part, plane):
    tap = tap_in(netns, address=None)
    s = packet_socket(netns)
    try:
        nic = Nic(part, tap=tap, plane=plane)
        try:
            from hvkvm.vmbus import wire as w
            m = w.vmbus_channel_close_channel()
            m.header.msgtype = w.CHANNELMSG_CLOSECHANNEL
            m.child_relid = nic.relid
            nic.g.guest.post(bytes(m))
            assert wait_for(lambda: nic.relid not in nic.vsp.channels)
            assert nic.vsp.closed_stats[-1]["tx_packets"] > 0
            assert tap.fd >= 0
        finally:
            nic.close()
    finally:
        s.close()
        tap.close()


# ------------------------------------------------------------------------------------------
# Counters and a real partition
# ------------------------------------------------------------------------------------------

def test_counters_for_the_benchmark(make_nic, plane):
    nic = make_nic(plane=plane)
    nic.wait_plane(plane)
    for i in range(10):
        assert nic.g.send_frame(make_frame(i, 100, dst=bytes(6), src=MAC)) == nw.NVSP_STAT_SUCCESS
    tot = nic.vsp.totals()
    assert set(tot) >= {"rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "kicks", "signals"}
    # no TAP: frames are dropped, counted
    assert tot["tx_frames"] == 0 and nic.stats()["tx_dropped"] == 10
    assert tot["kicks"] > 0 and tot["signals"] > 0


@pytest.mark.kvm
def test_both_planes_in_a_real_partition(make_partition, netns, plane):
    """A KVM partition (irqfd routes, ioeventfds) whose vCPU never runs: the fake guest brings
    the NIC up and frames cross the TAP; the plane's interrupts set the SIEFP event flag."""
    from fakeguest import SIEFP, FakeGuest
    from fakenetvsc import NetGuest
    from hvkvm.partition.config import PartitionConfig
    tap = tap_in(netns, address=None)
    s = packet_socket(netns)
    try:
        vsp = NetvscVsp(tap, mac=MAC, plane=plane, spin_us=20)
        p = make_partition(PartitionConfig(raw=b"\xeb\xfe", raw_mode="long", hyperv=True,
                                           memory=64 << 20, vsps=[vsp]))
        guest = FakeGuest(p)
        (offer,) = guest.connect()
        g = NetGuest(p, guest, guest.open(offer, ring_pages=24))
        try:
            g.handshake()
            g.linux_bringup()
            frames = [make_frame(i, 100 + i) for i in range(20)]
            for f in frames:
                s.send(f)
            assert g.wait_frames(20) == frames
            out = make_frame(99, 300, dst=bytes.fromhex("02aabbccdd01"), src=MAC)
            assert g.send_frame(out) == nw.NVSP_STAT_SUCCESS
            assert recv_incoming(s, 1) == [out]
            flags = int.from_bytes(p.memory.read(SIEFP + 2 * 256, 4), "little")
            assert flags & (1 << offer.child_relid)
            assert vsp.stats()[offer.child_relid]["plane"] == plane
        finally:
            g.ch.close()
            p.close()
    finally:
        s.close()
        tap.close()


def _fuzz(nic, seed: int, count: int) -> list:
    """Random mutations of valid RNDIS and NVSP messages; every answer the guest gets."""
    import random
    rnd = random.Random(seed)
    g = nic.g
    frame = make_frame(1, 80, dst=bytes(6), src=MAC)
    seeds = [g.rndis_packet(frame),
             struct.pack("<IIIIIII", nw.RNDIS_MSG_QUERY, 28, 5, nw.RNDIS_OID_GEN_LINK_SPEED, 0,
                         0, 0),
             struct.pack("<IIIIIII", nw.RNDIS_MSG_SET, 32, 6,
                         nw.RNDIS_OID_GEN_CURRENT_PACKET_FILTER, 4, 20, 0) + struct.pack("<I", 9),
             struct.pack("<III", nw.RNDIS_MSG_KEEPALIVE, 12, 7),
             struct.pack("<IIIIII", nw.RNDIS_MSG_INIT, 24, 8, 1, 0, 0x4000)]
    answers = []
    for i in range(count):
        msg = bytearray(rnd.choice(seeds))
        if rnd.random() < 0.3:
            msg += rnd.choice(seeds)        # two messages in one packet
        for _ in range(rnd.randint(1, 4)):
            pos = rnd.randrange(len(msg))
            kind = rnd.random()
            if kind < 0.5:
                msg[pos] = rnd.randrange(256)
            elif kind < 0.8 and len(msg) >= 4:
                struct.pack_into("<I", msg, min(pos, len(msg) - 4),
                                 rnd.choice([0, 1, 7, 8, 0xFFFFFFFF, 0x7FFFFFFF, len(msg),
                                             len(msg) + 1, 36, 44]))
            else:
                del msg[pos:]
                if not msg:
                    msg = bytearray(b"\0" * 8)
        via = rnd.choice(["section", "gpa"])
        status = g.send_rndis(bytes(msg), via=via)
        answers.append(("status", i, status))
        if rnd.random() < 0.1:   # and raw NVSP garbage now and then
            raw = bytes(rnd.randrange(256) for _ in range(rnd.choice([4, 8, 16, 40])))
            g.post(raw, completion=False)
    assert g.query(nw.RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE) == (0, struct.pack("<I", 1500))
    assert wait_for(lambda: g.pump() >= 0 and
                    nic.stats()["free_sections"] == g.recv_sections[1])
    answers += sorted((t, d[0], d[1].hex()) for t, d in g.responses.items())
    answers.append(sorted(nic.stats()["error_kinds"].items()))
    return answers


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_rndis_both_planes_survive_and_agree(seed):
    runs = {}
    for plane in ("python", "c"):
        p = PlanePartition(64 << 20)
        nic = Nic(p, plane=plane, instance_id=uuid.UUID(int=7))
        try:
            nic.wait_plane(plane)
            runs[plane] = _fuzz(nic, seed, 150)
            assert nic.stats()["plane"] == plane
            if plane == "c":
                assert nic.vsp.channels[nic.relid].plane.error == 0
        finally:
            nic.close()
            p.close()
    assert runs["python"] == runs["c"]
