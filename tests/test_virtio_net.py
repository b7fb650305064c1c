"""The guest's virtio-net driver (``guest_images/include/virtio_net.h``, ``dev=virtio``) against
QEMU's virtio-net-device: QEMU (microvm + KVM, the benchmark's pinned configuration) runs inside a
network namespace the test creates, on a TAP made there; ping and UDP come from the namespace.
Nothing touches the root namespace.

- ``net_echo dev=virtio`` answers ping and echoes UDP byte for byte with the driver in ring 3
  (polling) and in ring 0; the test pauses between steps so the guest goes idle and must be
  woken by the device's interrupt.
- Malformed frames written raw into the TAP (runts, broken IPv4 and UDP headers, random bytes,
  frames larger than the driver takes and larger than its buffers) are dropped and counted; the
  driver keeps working.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from hvkvm import images
from hvkvm.bench import qemu
from hvkvm.vsp import netvsc as nv

QEMU = shutil.which("qemu-system-x86_64")
TAP = "hvv0"
GUEST_IP, HOST_IP = "10.84.0.2", "10.84.0.1"
GUEST_MAC = bytes.fromhex("02aa00840002")

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                                            "(Debian: apt-get install qemu-system-x86)"),
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                       reason="/dev/kvm is not usable (QEMU's peer runs with KVM)"),
]

_counter = itertools.count()


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def netns():
    """A fresh namespace (IPv6 off: no chatter) with a TAP at HOST_IP/24; deleted afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    name = f"hvkvm-vn{os.getpid()}-{next(_counter)}"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
    try:
        def quiet():
            for key in ("all", "default"):
                with open(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "w") as f:
                    f.write("1")
        try:
            nv._in_netns(name, quiet)
        except OSError:
            pass
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "tuntap", "add", "dev", TAP, "mode", "tap")
        _ip("-n", name, "addr", "add", f"{HOST_IP}/24", "dev", TAP)
        _ip("-n", name, "link", "set", TAP, "up")
        yield name
    finally:
        _ip("netns", "del", name, check=False)


class Guest:
    """net_echo dev=virtio under QEMU in the namespace; the console collected line by line."""

    def __init__(self, ns: str, ring: int):
        cmd = qemu.command(str(images.image_path("net_echo")),
                           f"net_echo dev=virtio ip={GUEST_IP}/24 ring={ring} idle_ms=5 "
                           f"log=serial", qemu.net_args(TAP, GUEST_MAC))
        self.ns, self.lines, self.up = ns, [], threading.Event()
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        assert self.up.wait(60), self.console()
        assert any(ln.startswith("net_echo: link up") for ln in self.lines), self.console()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("net_echo: link up"):
                self.up.set()
        self.up.set()

    def console(self) -> str:
        return "\n".join(self.lines[-40:])

    def udp(self) -> socket.socket:
        s = nv._in_netns(self.ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        s.settimeout(5.0)
        return s

    def stop(self) -> int:
        s = self.udp()
        try:
            s.sendto(b"STOP", (GUEST_IP, 9))
        finally:
            s.close()
        try:
            rc = self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._t.join(10)
        return rc

    def counter(self, prefix: str, name: str) -> int:
        """A counter "NAME N" from the last console line starting with prefix."""
        lines = [ln for ln in self.lines if ln.startswith(prefix)]
        assert lines, self.console()
        m = re.search(rf"{name} (\d+)", lines[-1])
        assert m, lines[-1]
        return int(m.group(1))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def echo(s: socket.socket, data: bytes) -> bytes:
    s.sendto(data, (GUEST_IP, 7))
    got, addr = s.recvfrom(4096)
    assert addr == (GUEST_IP, 7)
    return got


def ping(ns: str, count: int) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2", "-W",
                        "5", "-s", "200", "-p", "a5c3", GUEST_IP], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.parametrize("ring", [3, 0], ids=["ring3", "ring0"])
def test_qemu_virtio_net_answers_ping_and_udp_echo_byte_exact(netns, ring):
    g = Guest(netns, ring)
    try:
        out = ping(netns, 3)
        assert "3 received" in out
        # the namespace learnt the MAC QEMU gave the device, which the driver read from config
        neigh = _ip("-n", netns, "neigh", "show", GUEST_IP).stdout
        assert GUEST_MAC.hex(":") in neigh, neigh
        s = g.udp()
        rnd = random.Random(6)
        sizes = [1, 7, 64, 500, 1471, 1472] + [rnd.randrange(1, 1473) for _ in range(6)]
        try:
            for i, size in enumerate(sizes):
                data = bytes(rnd.randrange(256) for _ in range(size))
                assert echo(s, data) == data, size
                if i % 4 == 3:
                    time.sleep(0.05)   # idle_ms=5: the guest sleeps, the interrupt wakes it
        finally:
            s.close()
        assert g.stop() == qemu.EXIT_DONE_0, g.console()
    finally:
        g.close()
    assert g.counter("net_echo: STOP", "after") == len(sizes)
    # woken from `sti; hlt` by virtio-net interrupts at least once per pause
    assert g.counter("net_echo: virtio-net", "sleeps") >= 3, g.console()
    assert g.counter("net_echo: virtio-net", "interrupts") >= 3, g.console()
    for bad in ("bad-id", "bad-len", "bad-used", "bad-tx"):
        assert g.counter("net_echo: virtio-net", bad) == 0, bad


def _eth(dst: bytes, src: bytes, etype: int, body: bytes) -> bytes:
    return dst + src + struct.pack("!H", etype) + body


def _ipv4(src: str, dst: str, proto: int, payload: bytes, total: int | None = None,
          csum: int | None = None) -> bytes:
    total = 20 + len(payload) if total is None else total
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    if csum is None:
        s = sum(struct.unpack("!10H", h))
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        csum = ~s & 0xFFFF
    return h[:10] + struct.pack("!H", csum) + h[12:] + payload


def test_malformed_and_oversized_frames_from_the_tap_leave_the_driver_working(netns):
    # frames larger than the standard 1514 can only be written with a larger MTU on the TAP
    _ip("-n", netns, "link", "set", TAP, "mtu", "4000")
    g = Guest(netns, 3)
    try:
        s = g.udp()
        try:
            assert echo(s, b"before") == b"before"      # the namespace knows the guest's MAC
        finally:
            s.close()

        def raw():
            p = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            p.bind((TAP, 0))
            return p
        p = nv._in_netns(netns, raw)
        me = bytes.fromhex("02aabbcc8401")
        udp_ok = struct.pack("!HHHH", 4000, 7, 8 + 4, 0) + b"abcd"
        frames = [
            _eth(GUEST_MAC, me, 0x0800, b""),                               # runt IPv4
            _eth(GUEST_MAC, me, 0x0800, _ipv4(HOST_IP, GUEST_IP, 17, udp_ok, total=900)),
            _eth(GUEST_MAC, me, 0x0800, _ipv4(HOST_IP, GUEST_IP, 17, udp_ok, csum=0x1234)),
            _eth(GUEST_MAC, me, 0x0800, _ipv4(HOST_IP, GUEST_IP, 17,        # bad UDP checksum
                                              udp_ok[:6] + b"\x12\x34" + udp_ok[8:])),
            _eth(GUEST_MAC, me, 0x0800, _ipv4(HOST_IP, GUEST_IP, 17,        # UDP length > IP
                                              struct.pack("!HHHH", 4000, 7, 400, 0) + b"x")),
            _eth(GUEST_MAC, me, 0x0806, b"\x00\x01"),                       # short ARP
            _eth(GUEST_MAC, me, 0x0800, bytes(1900)),                       # > 1518: driver
            _eth(GUEST_MAC, me, 0x0800, bytes(3000)),                       # > its buffers
        ]
        rnd = random.Random(7)
        for _ in range(40):
            frames.append(GUEST_MAC + bytes(rnd.randrange(256)
                                            for _ in range(rnd.randrange(0, 1600))))
        try:
            for f in frames:
                p.send(f)
        finally:
            p.close()
        time.sleep(0.2)
        out = ping(netns, 2)
        assert "2 received" in out
        s = g.udp()
        try:
            for size in (64, 1472):
                data = bytes((i * 13 + size) & 255 for i in range(size))
                assert echo(s, data) == data
        finally:
            s.close()
        assert g.stop() == qemu.EXIT_DONE_0, g.console()
    finally:
        g.close()
    assert g.counter("net_echo: virtio-net", "oversize") >= 1, g.console()
    for name in ("ip-hdr", "ip-csum", "udp-csum", "udp", "arp"):
        assert g.counter("net_echo: rx ", name) >= 1, (name, g.console())
    for bad in ("bad-id", "bad-len", "bad-used", "bad-tx"):
        assert g.counter("net_echo: virtio-net", bad) == 0, bad
