"""The guest's netvsc VSC and IP stack (guest_images/rt/{k,u}_netvsc.c, u_net.c) in real
partitions against hvkvm's netvsc VSP on a real TAP device: the ``net_echo`` image answers ping
and echoes UDP on port 7 until "STOP" arrives on port 9.

Traffic only ever flows inside a network namespace each test creates (``hvkvm-g<pid>-<n>``);
the TAP is created inside it and gets its address there. The clients run in that namespace
through ``ip netns exec NS ...`` (ping, and python3 scripts with plain sockets or an AF_PACKET
socket for hand-made frames), while this process runs the partition in its main thread.

SYNC values net_echo reports (PROTOCOL.md, "Command line"):
  1 link up: MAC (48-bit), IP, NVSP version, NDIS version, recv sections << 32 | send sections
  3 peer resolved (peer=): peer IP, peer MAC
  2 stopped: UDP echoed, pings answered, frames received, frames dropped by the stack,
    ARP requests answered
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import threading

import pytest

from hvkvm import images
from hvkvm.partition.config import PartitionConfig
from hvkvm.vsp import netvsc as nv
from hvkvm.vsp.netns import ip as _ip
from hvkvm.vsp.netvsc import NetvscVsp, TapDevice

kvm = pytest.mark.kvm

GUEST_IP = "10.81.0.2"
HOST_IP = "10.81.0.1"
TAP = "hvg0"
GUEST_MAC = bytes.fromhex("00155d81a0b2")
NVSP_6_1, NDIS_6_30 = 0x60001, 0x6001E

@pytest.fixture(scope="module")
def image():
    return str(images.image_path("net_echo"))


def in_ns(ns: str, *cmd: str, timeout: float = 120, input: str | None = None):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=timeout, input=input)


def ns_python(ns: str, script: str, *args: str, timeout: float = 240) -> dict:
    """Run a python3 script inside the namespace; its last stdout line is JSON."""
    r = in_ns(ns, sys.executable, "-c", script, *args, timeout=timeout)
    assert r.returncode == 0, f"client failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


STOP_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"STOP", (sys.argv[1], 9))
print("{}")
"""

UDP_CLIENT = r"""
import json, random, socket, sys, time
dst, count, tries = sys.argv[1], int(sys.argv[2]), 3
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
rng = random.Random(1234)
ok = bad = lost = retries = 0
sizes = set()
t0 = time.monotonic()
for i in range(count):
    size = 1 + i % 1472
    data = rng.randbytes(size)
    for attempt in range(tries):
        s.sendto(data, (dst, 7))
        try:
            while True:
                got, addr = s.recvfrom(4096)
                if addr == (dst, 7):
                    break
        except socket.timeout:
            retries += 1
            continue
        break
    else:
        lost += 1
        continue
    if got == data:
        ok += 1
        sizes.add(size)
    else:
        bad += 1
dt = time.monotonic() - t0
print(json.dumps({"ok": ok, "bad": bad, "lost": lost, "retries": retries, "sizes": len(sizes),
                  "min": min(sizes), "max": max(sizes), "seconds": dt}))
"""

# Hand-made frames from the namespace (AF_PACKET on the TAP): every malformation the stack must
# survive, each sent paced (so the host never drops it for lack of receive sections), then a
# flood; afterwards the caller checks that the guest still answers.
MALFORMED_CLIENT = r"""
import json, os, random, socket, struct, sys, time
ifname, guest_mac, host_ip, guest_ip, flood = (sys.argv[1], bytes.fromhex(sys.argv[2]),
                                               sys.argv[3], sys.argv[4], int(sys.argv[5]))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
src = open(f"/sys/class/net/{ifname}/address").read().strip()
src = bytes.fromhex(src.replace(":", ""))
hip, gip = socket.inet_aton(host_ip), socket.inet_aton(guest_ip)

def csum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff

def eth(p, t=0x0800, dst=guest_mac):
    return dst + src + struct.pack("!H", t) + p

def ip(p, proto=17, total=None, ihl=5, ver=4, frag=0, check=None, saddr=hip, opts=b""):
    total = 20 + len(opts) + len(p) if total is None else total
    h = struct.pack("!BBHHHBBH4s4s", ver << 4 | ihl, 0, total & 0xffff, 1, frag, 64, proto, 0,
                    saddr, gip) + opts
    c = csum(h) if check is None else check
    return h[:10] + struct.pack("!H", c) + h[12:] + p

def udp(d, sport=4000, dport=7, ulen=None, check="auto"):
    ulen = 8 + len(d) if ulen is None else ulen
    seg = struct.pack("!HHHH", sport, dport, ulen & 0xffff, 0) + d
    if check == "auto":
        c = csum(hip + gip + struct.pack("!BBH", 0, 17, 8 + len(d)) + seg) or 0xffff
    else:
        c = check
    return seg[:6] + struct.pack("!H", c) + seg[8:]

def icmp(d, typ=8, check=None):
    m = struct.pack("!BBHHH", typ, 0, 0, 77, 1) + d
    c = csum(m) if check is None else check
    return m[:2] + struct.pack("!H", c) + m[4:]

u = udp(b"malformed")
frames = {
    "runt-14": eth(b""),
    "runt-20": eth(b"\x45\x00\x00"),
    "ip-truncated": eth(ip(u))[:14 + 19],
    "ip-version-6": eth(ip(u, ver=6)),
    "ip-ihl-3": eth(ip(u, ihl=3)),
    "ip-total-short": eth(ip(u, total=12)),
    "ip-total-long": eth(ip(u, total=1400)),
    "ip-bad-csum": eth(ip(u, check=0xbeef)),
    "ip-fragment-mf": eth(ip(u, frag=0x2000)),
    "ip-fragment-off": eth(ip(u, frag=0x0040)),
    "ip-src-zero": eth(ip(udp(b"x"), saddr=b"\0\0\0\0")),
    "ip-proto-tcp": eth(ip(b"\0" * 20, proto=6)),
    "udp-short": eth(ip(u[:6])),
    "udp-len-long": eth(ip(udp(b"abc", ulen=900, check=0))),
    "udp-len-small": eth(ip(udp(b"abc", ulen=4, check=0))),
    "udp-bad-csum": eth(ip(udp(b"bad checksum", check=0x1234))),
    "udp-no-port": eth(ip(udp(b"nobody", dport=5555))),
    "icmp-short": eth(ip(icmp(b"")[:6], proto=1)),
    "icmp-bad-csum": eth(ip(icmp(b"ping", check=0x4321), proto=1)),
    "icmp-not-echo": eth(ip(icmp(b"x", typ=13), proto=1)),
    "arp-short": eth(b"\0\x01\x08\x00\x06\x04\0\x01" + src, t=0x0806),
    "arp-bad-htype": eth(struct.pack("!HHBBH", 9, 0x0800, 6, 4, 1) + b"\0" * 20, t=0x0806),
    "arp-other-target": eth(struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src + hip + b"\0" * 6
                            + socket.inet_aton("10.81.0.99"), t=0x0806, dst=b"\xff" * 6),
    "ethertype-ipv6": eth(b"\x60" + b"\0" * 50, t=0x86dd),
    "ethertype-vlan": eth(b"\0" * 46, t=0x8100),
    "max-size-garbage": eth(os.urandom(1500), t=0x0800),
}
for f in frames.values():
    s.send(f)
    time.sleep(0.002)
# the flood: random garbage, random truncations of valid frames, broadcast ARP storms
rng = random.Random(99)
valid = [eth(ip(udp(b"flood" * 20, dport=9999))), eth(ip(icmp(b"f" * 56, check=1), proto=1))]
t0 = time.monotonic()
sent = 0
for i in range(flood):
    k = i % 4
    if k == 0:
        f = eth(rng.randbytes(rng.randrange(0, 1500)), t=rng.choice([0x0800, 0x0806, 0x1234]))
    elif k == 1:
        v = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 6)):
            v[rng.randrange(14, len(v))] = rng.randrange(256)
        f = bytes(v[:rng.randrange(14, len(v) + 1)])
    elif k == 2:
        sip = bytes([10, 81, rng.randrange(1, 255), rng.randrange(1, 255)])
        mac = bytes([2]) + rng.randbytes(5)
        f = eth(struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + sip + b"\0" * 6 + gip,
                t=0x0806, dst=b"\xff" * 6)
    else:
        f = eth(ip(udp(rng.randbytes(rng.randrange(0, 1400)), dport=7, check=rng.randrange(1, 65536))))
    try:
        s.send(f)
        sent += 1
    except OSError:
        pass
print(json.dumps({"malformed": len(frames), "names": sorted(frames), "flood": sent,
                  "flood_seconds": time.monotonic() - t0}))
"""

ARP_WATCH = r"""
import json, socket, struct, sys, time
ifname, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL:
s.bind((ifname, 0))                                     # outgoing frames too
s.settimeout(0.2)
print("ready", flush=True)
seen = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        continue
    if len(data) < 42 or data[12:14] != b"\x08\x06":
        continue
    op = struct.unpack("!H", data[20:22])[0]
    seen.append({"dir": "out" if addr[2] == socket.PACKET_OUTGOING else "in", "op": op,
                 "sha": data[22:28].hex(), "spa": socket.inet_ntoa(data[28:32]),
                 "tpa": socket.inet_ntoa(data[38:42])})
print(json.dumps(seen))
"""


class NetEcho:
    """One net_echo partition on a TAP in ``ns``; ``traffic(ctx)`` runs on a thread from SYNC 1
    (the link is up) and STOP is always sent afterwards, so the guest ends."""

    def __init__(self, make_partition, image, ns, plane="c", cmdline="", timeout=240,
                 mac=GUEST_MAC, before_link=None):
        self.ns = ns
        self.tap = TapDevice(TAP, netns=ns)
        _ip("-n", ns, "addr", "add", f"{HOST_IP}/24", "dev", TAP)
        if before_link is not None:
            before_link(self)
        self.vsp = NetvscVsp(self.tap, plane=plane, mac=mac)
        self.syncs: dict[int, tuple] = {}
        self.error: BaseException | None = None
        self.out: dict = {}
        self._traffic = None
        self._thread = threading.Thread(target=self._run_traffic, name="net-echo-traffic")
        cfg = PartitionConfig(image=image, cmdline=f"net_echo ip={GUEST_IP}/24 {cmdline}",
                              hyperv=True, vsps=[self.vsp], timeout=timeout,
                              on_sync=self._on_sync)
        self.p = make_partition(cfg)

    def _on_sync(self, _vcpu, uc):
        self.syncs[uc.args[0]] = tuple(uc.args[1:])
        if uc.args[0] == 1:
            self._thread.start()

    def _run_traffic(self):
        try:
            if self._traffic is not None:
                self._traffic(self)
        except BaseException as e:  # noqa: BLE001 - reported by run()
            self.error = e
        finally:
            try:
                ns_python(self.ns, STOP_CLIENT, GUEST_IP, timeout=30)
            except BaseException as e:  # noqa: BLE001
                self.error = self.error or e

    def run(self, traffic):
        self._traffic = traffic
        try:
            r = self.p.run()
        finally:
            if self._thread.is_alive():
                self._thread.join(120)
            self.tap.close()
        if self.error is not None:
            raise self.error
        assert r.passed, f"{r.reason}\n{r.detail}\n" + "\n".join(r.logs)
        self.result = r
        return r

    def log_counter(self, name: str) -> int:
        """A counter from net_echo's last counters LOG line ("NAME N")."""
        lines = [ln for ln in self.result.logs if ln.startswith("net_echo: rx ")]
        m = re.search(rf"{name} (\d+)", lines[-1])
        return int(m.group(1))


def check_link_sync(e: NetEcho):
    mac, ip, nvsp, ndis, sections = e.syncs[1]
    assert mac == int.from_bytes(GUEST_MAC, "big")
    assert ip == int(ipaddress.IPv4Address(GUEST_IP))
    assert (nvsp, ndis) == (NVSP_6_1, NDIS_6_30)       # the newest Linux offers, as Linux sends
    assert sections >> 32 > 100 and sections & 0xFFFFFFFF > 10


@kvm
@pytest.mark.parametrize("plane", ["c", "python"])
def test_ping_gets_20_replies_and_the_namespace_learns_the_guest_mac(make_partition, image,
                                                                     netns, plane):
    e = NetEcho(make_partition, image, netns, plane)

    def traffic(e):
        r = in_ns(e.ns, "ping", "-c", "20", "-i", "0.05", "-W", "2", GUEST_IP, timeout=60)
        e.out["ping"] = r.stdout
        e.out["neigh"] = _ip("-n", e.ns, "neigh", "show", GUEST_IP).stdout
        r = in_ns(e.ns, "ping", "-c", "3", "-i", "0.3", "-s", "1472", "-W", "2", GUEST_IP,
                  timeout=30)
        e.out["ping_big"] = r.stdout

    e.run(traffic)
    check_link_sync(e)
    assert "20 packets transmitted, 20 received" in e.out["ping"], e.out["ping"]
    assert "3 packets transmitted, 3 received" in e.out["ping_big"], e.out["ping_big"]
    # ARP from the namespace: it resolved the guest to the MAC the VSP gave it
    assert nv.format_mac(GUEST_MAC) in e.out["neigh"], e.out["neigh"]
    echoed, pings, rx_frames, drops, arp_replied = e.syncs[2]
    assert pings == 23 and echoed == 0 and arp_replied >= 1 and drops == 0
    assert rx_frames >= 23 + 1                           # pings + ARP request (at least)
    assert e.vsp.totals()["errors"] == 0
    # the 0.3 s gaps put the ring-3 loop to sleep in the kernel; the channel interrupt woke it
    wakeups = [int(m.group(1)) for ln in e.result.logs
               if (m := re.search(r"(\d+) wake-ups from idle", ln))]
    assert wakeups and wakeups[-1] >= 1


@kvm
@pytest.mark.parametrize("plane, count", [("c", 10000), ("python", 3000)])
def test_udp_datagrams_of_every_size_come_back_byte_exact(make_partition, image, netns, plane,
                                                           count):
    e = NetEcho(make_partition, image, netns, plane)

    def traffic(e):
        e.out["udp"] = ns_python(e.ns, UDP_CLIENT, GUEST_IP, str(count))

    e.run(traffic)
    check_link_sync(e)
    u = e.out["udp"]
    assert u["ok"] == count and u["bad"] == 0 and u["lost"] == 0, u
    assert (u["min"], u["max"]) == (1, 1472) and u["sizes"] == min(count, 1472)
    echoed, _pings, _rx, drops, _arp = e.syncs[2]
    assert echoed == count + u["retries"] and drops == 0
    totals = e.vsp.totals()
    assert totals["errors"] == 0 and totals["tx_dropped"] == 0
    print(f"\n{plane} plane: {count} UDP echoes in {u['seconds']:.2f} s "
          f"({count / u['seconds']:.0f}/s, serial client), retries {u['retries']}, "
          f"guest kicks {totals['kicks']}, interrupts {totals['signals']}")


@kvm
def test_the_guest_asks_arp_before_it_answers(make_partition, image, netns):
    """The namespace knows the guest's MAC statically (it never asks), so the guest has no
    entry for the sender: it must ask who-has before its echo can go out."""
    def static_neigh(e):
        _ip("-n", e.ns, "neigh", "replace", GUEST_IP, "lladdr", nv.format_mac(GUEST_MAC),
            "nud", "permanent", "dev", TAP)

    e = NetEcho(make_partition, image, netns, before_link=static_neigh)

    def traffic(e):
        watch = subprocess.Popen(["ip", "netns", "exec", e.ns, sys.executable, "-c", ARP_WATCH,
                                  TAP, "6"], stdout=subprocess.PIPE, text=True)
        try:
            assert watch.stdout.readline().strip() == "ready"
            e.out["udp"] = ns_python(e.ns, UDP_CLIENT, GUEST_IP, "50")
            out, _ = watch.communicate(timeout=30)
        finally:
            if watch.poll() is None:
                watch.kill()
        e.out["arp"] = json.loads(out.strip().splitlines()[-1])

    e.run(traffic)
    assert e.out["udp"]["ok"] == 50 and e.out["udp"]["bad"] == 0
    guest = nv.format_mac(GUEST_MAC).replace(":", "")
    asks = [a for a in e.out["arp"] if a["dir"] == "in" and a["op"] == 1]
    assert any(a["sha"] == guest and a["spa"] == GUEST_IP and a["tpa"] == HOST_IP
               for a in asks), e.out["arp"]
    # the namespace answered; it never asked (its entry is permanent)
    assert any(a["dir"] == "out" and a["op"] == 2 and a["tpa"] == GUEST_IP for a in e.out["arp"])
    assert not any(a["dir"] == "out" and a["op"] == 1 for a in e.out["arp"])
    assert e.log_counter("asked") >= 1


@kvm
def test_the_guest_resolves_its_peer_first(make_partition, image, netns):
    e = NetEcho(make_partition, image, netns, cmdline=f"peer={HOST_IP}")

    def traffic(e):
        e.out["link"] = _ip("-n", e.ns, "link", "show", TAP).stdout
        e.out["udp"] = ns_python(e.ns, UDP_CLIENT, GUEST_IP, "20")

    e.run(traffic)
    tap_mac = e.out["link"].split("link/ether ")[1].split()[0]
    peer_ip, peer_mac = e.syncs[3][:2]
    assert peer_ip == int(ipaddress.IPv4Address(HOST_IP))
    assert peer_mac == int(tap_mac.replace(":", ""), 16)
    assert e.out["udp"]["ok"] == 20


@kvm
@pytest.mark.parametrize("plane", ["c", "python"])
def test_malformed_frames_and_a_flood_leave_the_guest_answering(make_partition, image, netns,
                                                                plane):
    e = NetEcho(make_partition, image, netns, plane)

    def traffic(e):
        r = in_ns(e.ns, "ping", "-c", "2", "-i", "0.1", "-W", "2", GUEST_IP, timeout=30)
        assert "2 received" in r.stdout, r.stdout
        e.out["bad"] = ns_python(e.ns, MALFORMED_CLIENT, TAP, GUEST_MAC.hex(), HOST_IP,
                                 GUEST_IP, "20000")
        r = in_ns(e.ns, "ping", "-c", "10", "-i", "0.05", "-W", "2", GUEST_IP, timeout=30)
        e.out["ping"] = r.stdout
        e.out["udp"] = ns_python(e.ns, UDP_CLIENT, GUEST_IP, "300")

    e.run(traffic)
    assert "10 packets transmitted, 10 received" in e.out["ping"], e.out["ping"]
    assert e.out["udp"]["ok"] == 300 and e.out["udp"]["bad"] == 0
    _echoed, pings, rx_frames, drops, _arp = e.syncs[2]
    bad = e.out["bad"]
    # every paced malformed frame reached the guest's stack and was dropped there (the ARP for
    # another target and the flood's storms also count); nothing of it was answered
    assert drops >= bad["malformed"], (drops, bad)
    assert rx_frames >= 12 + bad["malformed"]
    assert pings == 12
    for name in ("ip-hdr", "ip-csum", "frag", "udp", "udp-csum", "icmp", "arp", "type",
                 "no-port"):
        assert e.log_counter(name) >= 1, name
    assert e.vsp.totals()["errors"] == 0
    print(f"\n{plane} plane: {bad['malformed']} malformed + {bad['flood']} flood frames in "
          f"{bad['flood_seconds']:.2f} s; guest received {rx_frames} frames, dropped {drops}")


@kvm
def test_the_same_loop_from_ring_0(make_partition, image, netns):
    """ring=0: the VSC and the stack driven by the kernel (every instruction emulated on
    kvm_pvm), sleeping on the channel interrupt when idle."""
    e = NetEcho(make_partition, image, netns, cmdline="ring=0")

    def traffic(e):
        r = in_ns(e.ns, "ping", "-c", "5", "-i", "0.2", "-W", "3", GUEST_IP, timeout=60)
        e.out["ping"] = r.stdout
        e.out["udp"] = ns_python(e.ns, UDP_CLIENT, GUEST_IP, "300")

    e.run(traffic)
    assert "5 packets transmitted, 5 received" in e.out["ping"], e.out["ping"]
    assert e.out["udp"]["ok"] == 300 and e.out["udp"]["bad"] == 0
    assert any("(ring 0)" in ln for ln in e.result.logs)
    print(f"\nring 0: 300 UDP echoes in {e.out['udp']['seconds']:.2f} s")


@kvm
def test_link_down_at_boot_then_up_by_indication(make_partition, image, netns):
    """The VSP starts with the link down: the guest's OID_GEN_MEDIA_CONNECT_STATUS query says
    disconnected and it sleeps until the RNDIS_STATUS_MEDIA_CONNECT indication."""
    e = NetEcho(make_partition, image, netns)
    e.vsp.link_up = False
    timer = threading.Timer(1.0, e.vsp.set_link, args=(True,))
    timer.start()
    try:
        def traffic(e):
            r = in_ns(e.ns, "ping", "-c", "3", "-i", "0.1", "-W", "2", GUEST_IP, timeout=30)
            e.out["ping"] = r.stdout

        e.run(traffic)
    finally:
        timer.cancel()
    assert any("link down, waiting" in ln for ln in e.result.logs), e.result.logs
    assert "3 received" in e.out["ping"]
    assert e.vsp.closed_stats[0]["indications"] >= 1


UDP_SINK = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(60)
print("ready", flush=True)
n = b = bad = 0
seqs = set()
expect = bytes((i * 7 + 1) & 255 for i in range(1472))
try:
    while True:
        d = s.recv(4096)
        s.settimeout(2)
        n += 1
        b += len(d)
        seqs.add(int.from_bytes(d[:8], "little"))
        if d[8:] != expect[8:len(d)]:
            bad += 1
except socket.timeout:
    pass
print(json.dumps({"n": n, "bytes": b, "bad": bad, "distinct": len(seqs),
                  "max_seq": max(seqs) if seqs else -1}))
"""


@kvm
@pytest.mark.parametrize("size", [64, 1472])
def test_net_bench_sends_at_the_rate_asked(make_partition, netns, size):
    rate, seconds = 5000, 2
    tap = TapDevice(TAP, netns=netns)
    _ip("-n", netns, "addr", "add", f"{HOST_IP}/24", "dev", TAP)
    sink = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", UDP_SINK,
                             HOST_IP, "9000"], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        vsp = NetvscVsp(tap, mac=GUEST_MAC)
        cfg = PartitionConfig(image=str(images.image_path("net_bench")),
                              cmdline=f"net_bench ip={GUEST_IP}/24 peer={HOST_IP} port=9000 "
                                      f"size={size} rate={rate} seconds={seconds}",
                              hyperv=True, vsps=[vsp], timeout=120)
        r = make_partition(cfg).run()
        assert r.passed, f"{r.reason}\n" + "\n".join(r.logs)
        got = json.loads(sink.communicate(timeout=60)[0].strip().splitlines()[-1])
    finally:
        if sink.poll() is None:
            sink.kill()
        tap.close()
    [line] = [ln for ln in r.logs if ln.startswith('{"bench": "net_tx"')]
    res = json.loads(line)
    assert json.loads(r.serial.decode().strip().splitlines()[-1]) == res   # the same on COM1
    syncs = {a[0]: a[1:] for _v, a in r.syncs}
    assert syncs[10][:3] == (rate, size, seconds)
    assert syncs[11][0] == res["packets"] and syncs[11][1] == res["bytes"]
    # Paced by the guest's own clock, so the bounds follow from its schedule, not from how
    # much CPU the host gave it: never ahead of rate x seconds (it never bursts to catch up),
    # and when it never fell 100 ms behind ("late" == 0) at most 100 ms of sends short.
    assert res["packets"] <= rate * seconds + 1, res
    if res["late"] == 0:
        assert res["packets"] >= rate * seconds - rate // 10 - 1, res
    assert res["bytes"] == res["packets"] * size and res["pps"] > 0 and res["mbps"] > 0
    # every datagram reached the namespace's socket intact, none twice
    assert got["n"] == got["distinct"] == res["packets"] and got["bad"] == 0, got
    assert got["max_seq"] == res["packets"] - 1
    print(f"\nnet_bench size {size}: {res}")


@kvm
@pytest.mark.parametrize("nvsp, ndis", [(0x50000, NDIS_6_30), (0x40000, 0x60001),
                                        (0x30002, 0x60001), (2, 0x60001)])
def test_older_nvsp_versions(make_partition, image, netns, nvsp, ndis):
    """nvsp=V caps what the guest offers: it walks down Linux's list to V, sends NDIS 6.1 for
    NVSP <= 4 (and no NDIS_CONFIG for NVSP 1), and the data path is the same."""
    e = NetEcho(make_partition, image, netns, cmdline=f"nvsp={nvsp:#x}")

    def traffic(e):
        e.out["udp"] = ns_python(e.ns, UDP_CLIENT, GUEST_IP, "30")

    e.run(traffic)
    assert e.syncs[1][2:4] == (nvsp, ndis)
    st = e.vsp.closed_stats[0]
    assert (st["nvsp_version"], st["ndis_version"]) == (nvsp, ndis)
    assert e.out["udp"]["ok"] == 30


@kvm
def test_tiny_buffers_and_rings_still_echo_everything(make_partition, image, netns):
    """2 send sections, 37 receive sections and 1-page rings: the guest reaps completions for
    sections and ring space as it goes (no frame lost, nothing malformed)."""
    e = NetEcho(make_partition, image, netns, cmdline="recv_kb=64 send_kb=16 ring_pages=1")

    def traffic(e):
        e.out["udp"] = ns_python(e.ns, UDP_CLIENT, GUEST_IP, "1500")
        r = in_ns(e.ns, "ping", "-f", "-c", "500", "-W", "2", GUEST_IP, timeout=60)
        e.out["flood"] = r.stdout

    e.run(traffic)
    sections = e.syncs[1][4]
    assert (sections >> 32, sections & 0xFFFFFFFF) == (37, 2)
    u = e.out["udp"]
    assert u["ok"] == 1500 and u["bad"] == 0 and u["lost"] == 0, u
    assert "500 packets transmitted, 500 received" in e.out["flood"], e.out["flood"]
    assert e.vsp.totals()["errors"] == 0
