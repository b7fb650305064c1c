"""The guest's virtio-net driver (``guest_images/include/virtio_net.h``, ``dev=virtio``) against
QEMU's virtio-net-device, and against a hostile device under hvkvm.

QEMU's: QEMU (microvm + KVM, the benchmark's pinned configuration) runs inside a
network namespace the test creates, on a TAP made there; ping and UDP come from the namespace.
Nothing touches the root namespace.

- ``net_echo dev=virtio`` answers ping and echoes UDP byte for byte with the driver in ring 3
  (polling) and in ring 0; the test pauses between steps so the guest goes idle and must be
  woken by the device's interrupt.
- Malformed frames written raw into the TAP (runts, broken IPv4 and UDP headers, random bytes,
  frames larger than the driver takes and larger than its buffers) are dropped and counted; the
  driver keeps working.

Hostile (hvkvm, a device whose registers are served in Python and whose used rings the test
writes): used ids beyond the queue, lengths below the header or above the buffer, a transmit
completion for a buffer never sent are counted and dropped while a good frame still arrives; a
used index more than a queue ahead stops the guest with an ASSERT, not a wild read.
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
import subprocess
import threading
import time

import pytest

from hvkvm import images
from hvkvm.bench import qemu
from hvkvm.vsp import netvsc as nv
from hvkvm.vsp.netns import ip as _ip
from qemu_marks import qemu_test

TAP = "hvv0"
GUEST_IP, HOST_IP = "10.84.0.2", "10.84.0.1"
GUEST_MAC = bytes.fromhex("02aa00840002")


@pytest.fixture
def netns(netns):
    """conftest's fresh namespace, with a TAP at HOST_IP/24 in it."""
    _ip("-n", netns, "tuntap", "add", "dev", TAP, "mode", "tap")
    _ip("-n", netns, "addr", "add", f"{HOST_IP}/24", "dev", TAP)
    _ip("-n", netns, "link", "set", TAP, "up")
    return netns


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


@qemu_test
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


@qemu_test
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


# -- a hostile virtio-net device under hvkvm: the driver's used-ring checks ---------------------

class HostileNet:
    """A virtio-net device on hvkvm's virtio-mmio slot 7, registers served in Python, whose
    "data plane" is the test writing used-ring entries straight into guest RAM: ids beyond the
    queue, lengths outside the buffer, transmit completions for buffers never sent, a used index
    far ahead. Interrupts through an irqfd on the slot's GSI."""

    QSIZE = 16

    def __init__(self):
        from hvkvm.vsp import virtio_blk as vb
        self.vb = vb
        self.base, self.irq = vb.slot_address(vb.VIRTIO_MMIO_SLOTS - 1)
        self.mac = GUEST_MAC
        self.features = 1 << 32 | 1 << 5            # VERSION_1, MAC (no EVENT_IDX, no STATUS)
        self.lock = threading.Lock()
        self.status = self.sel = self.dsel = self.isr = 0
        self.q = [dict(num=0, ready=0, desc=0, driver=0, device=0) for _ in range(2)]
        self.driver_ok = threading.Event()
        self.p = self.vm = None
        self.irq_fd = -1

    def spec(self):
        from hvkvm.partition.config import DeviceSpec
        return DeviceSpec("mmio", self.base, self.vb.VIRTIO_MMIO_SLOT_SIZE, self)

    def cmdline(self) -> str:
        return self.vb.cmdline_key(self.base, self.irq)

    def attach(self, partition):
        self.p, self.vm = partition, partition.vm
        self.irq_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.vm.irqfd(self.irq_fd, self.irq)

    def detach(self):
        if self.irq_fd >= 0:
            try:
                self.vm.irqfd_deassign(self.irq_fd, self.irq)
            except OSError:
                pass
            os.close(self.irq_fd)
            self.irq_fd = -1

    close = detach

    def read(self, offset: int, data: memoryview):
        n = len(data)
        with self.lock:
            if offset >= 0x100:
                cfg = self.mac.ljust(8, b"\0")
                off = offset - 0x100
                data[:] = cfg[off:off + n].ljust(n, b"\0")
                return
            q = self.q[self.sel] if self.sel < 2 else None
            v = {0x000: 0x74726976, 0x004: 2, 0x008: 1, 0x00c: 0x564b5648,
                 0x010: (self.features >> (32 * self.dsel)) & 0xFFFFFFFF if self.dsel < 2 else 0,
                 0x034: self.QSIZE if q else 0, 0x044: q["ready"] if q else 0,
                 0x060: self.isr, 0x070: self.status}.get(offset, 0)
        data[:] = v.to_bytes(4, "little")[:n].ljust(n, b"\0")

    def write(self, offset: int, data):
        v = int.from_bytes(bytes(data), "little")
        with self.lock:
            q = self.q[self.sel] if self.sel < 2 else None
            if offset == 0x014:
                self.dsel = v
            elif offset == 0x030:
                self.sel = v
            elif offset == 0x064:
                self.isr &= ~v
            elif offset == 0x070:
                self.status = v
                if v == 0:
                    self.q = [dict(num=0, ready=0, desc=0, driver=0, device=0) for _ in range(2)]
                if v & 4:
                    self.driver_ok.set()
            elif q is not None and offset in (0x038, 0x044):
                q["num" if offset == 0x038 else "ready"] = v
            elif q is not None and offset in (0x080, 0x090, 0x0a0):
                q[{0x080: "desc", 0x090: "driver", 0x0a0: "device"}[offset]] = v
            # high address words, features, QueueNotify: nothing to do

    # -- the hostile "device" side ----------------------------------------------------------

    def avail(self, qi: int) -> tuple[int, list[int]]:
        q = self.q[qi]
        raw = self.p.memory.read(q["driver"], 4 + 2 * q["num"])
        idx = struct.unpack_from("<H", raw, 2)[0]
        return idx, list(struct.unpack_from(f"<{q['num']}H", raw, 4))

    def buffer(self, qi: int, i: int) -> tuple[int, int]:
        addr, length = struct.unpack("<QI", self.p.memory.read(self.q[qi]["desc"] + 16 * i, 12))
        return addr, length

    def used(self, qi: int, entries: list[tuple[int, int]], idx_override: int | None = None):
        """Append entries to queue qi's used ring, publish the index, interrupt."""
        q = self.q[qi]
        cur = struct.unpack("<H", self.p.memory.read(q["device"] + 2, 2))[0]
        for k, (i, ln) in enumerate(entries):
            slot = (cur + k) % q["num"]
            self.p.memory.write(q["device"] + 4 + 8 * slot, struct.pack("<II", i, ln))
        new = (cur + len(entries)) & 0xFFFF if idx_override is None else idx_override
        self.p.memory.write(q["device"] + 2, struct.pack("<H", new))
        with self.lock:
            self.isr |= 1
        os.eventfd_write(self.irq_fd, 1)


def _stop_frame() -> bytes:
    udp = struct.pack("!HHHH", 4321, 9, 12, 0) + b"STOP"
    return _eth(GUEST_MAC, bytes.fromhex("02aabbcc8501"), 0x0800,
                _ipv4("10.85.0.1", "10.85.0.2", 17, udp))


def _hostile_run(make_partition, inject):
    from hvkvm.partition.config import PartitionConfig
    dev = HostileNet()
    p = make_partition(PartitionConfig(
        image=images.image_path("net_echo"), devices=[dev.spec()], timeout=60,
        cmdline=f"net_echo dev=virtio ip=10.85.0.2/24 ring=3 {dev.cmdline()}"))
    err = []

    def device():
        try:
            assert dev.driver_ok.wait(30)
            end = time.monotonic() + 30
            while dev.avail(0)[0] != HostileNet.QSIZE:     # every receive buffer posted
                assert time.monotonic() < end
                time.sleep(0.01)
            inject(dev)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            err.append(e)
    t = threading.Thread(target=device, daemon=True)
    t.start()
    r = p.run()
    t.join(30)
    assert not err, err
    return r


@pytest.mark.kvm
def test_hostile_used_entries_are_counted_and_dropped_and_the_driver_goes_on(make_partition):
    def inject(dev):
        _, ring = dev.avail(0)
        a, b, c = ring[:3]
        addr, length = dev.buffer(0, c)
        assert length == 2048
        frame = _stop_frame()
        dev.p.memory.write(addr, bytes(12) + frame)
        dev.used(1, [(5, 0)])                                   # a send that never was
        dev.used(0, [(HostileNet.QSIZE + 3, 64),                # no such descriptor
                     (a, 5),                                    # shorter than the header
                     (b, 4096),                                 # longer than the buffer
                     (c, 12 + len(frame))])                     # the one good frame: STOP
    r = _hostile_run(make_partition, inject)
    assert r.passed, f"{r.reason}\n" + "\n".join(r.logs)
    line = next(ln for ln in r.logs if ln.startswith("net_echo: virtio-net"))
    counts = {k: int(v) for k, v in re.findall(r"([a-z-]+) (\d+)", line)}
    assert counts["bad-used"] == 1 and counts["bad-len"] == 2 and counts["bad-tx"] == 1, line
    assert line.startswith("net_echo: virtio-net rx 1 frames"), line


@pytest.mark.kvm
def test_a_used_index_beyond_the_queue_stops_the_guest_with_an_assert(make_partition):
    def inject(dev):
        dev.used(0, [], idx_override=HostileNet.QSIZE + 1)
    r = _hostile_run(make_partition, inject)
    assert not r.passed
    assert "used ring index moved more than a queue ahead" in r.reason, r.reason
