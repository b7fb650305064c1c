"""``hvkvm demo``: every VSC of the guest runtime against its VSP in one real KVM partition,
narrated.

One child partition boots the ``demo`` image (guest_images/images/demo) with these VSPs on its
VMBus:

* the echo device (C data plane): the guest sends packets from a ring-3 task, checks each echo;
* a storvsc SCSI controller (C data plane) on a temporary 8 MiB raw disk file the demo creates
  and removes: the guest writes a pattern, flushes, reads it back and compares every byte;
* the heartbeat and shutdown integration services: the guest answers heartbeats all along and,
  at the end, the host asks it to shut down and the guest acknowledges and exits 0;
* a netvsc NIC, only as root with ``ip`` and ``ping`` installed: on a TAP device inside a network
  namespace the demo creates (traffic never touches the root namespace); the host pings the
  guest from that namespace, does a few UDP echoes, sends "STOP", and always deletes the
  namespace.

Output: a ``[host]`` line per step (what the parent partition does and sees), the guest's own log
lines as ``[guest]``, then a summary (each VSC ok / skipped / failed, exits and interrupts from
the partition's counters). Exit code 0 when every part that ran passed; 1 with one line saying
what failed; 3 without KVM; 130 on Ctrl-C. Everything (partition, TAP, namespace, disk file) is
torn down on every path by one ExitStack.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vsp.netns import NetNamespace

MiB = 1 << 20

#: Addresses inside the demo's own network namespace (nothing else uses them there).
GUEST_IP = "10.213.0.2"
HOST_IP = "10.213.0.1"
PREFIX = 24
TAP_NAME = "hvdemo0"
DISK_BYTES = 8 * MiB
HEARTBEAT_INTERVAL = 0.25
#: Heartbeats the host waits for (in all) before it asks the guest to shut down.
MIN_HEARTBEATS = 3
PINGS = 5
UDP_ECHOES = 3
ECHO_COUNT = 16

EXIT_OK, EXIT_FAILED, EXIT_NO_KVM, EXIT_INTERRUPTED = 0, 1, 3, 130

#: The summary's rows, in order.
PARTS = (("echo", "VMBus echo"), ("storvsc", "storvsc"), ("netvsc", "netvsc"),
         ("heartbeat", "heartbeat IC"), ("shutdown", "shutdown IC"))


def network_skip_reason() -> str | None:
    """Why the network part cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "not running as root (a TAP device in a network namespace needs root)"
    for tool, pkg in (("ip", "iproute2"), ("ping", "iputils-ping")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {pkg})"
    return None


class Demo:
    """One run of the demo; :meth:`run` returns the exit code. ``out`` gets the narration."""

    def __init__(self, out=None, *, net: bool = True, timeout: float = 120.0):
        self.out = out if out is not None else sys.stdout
        self.want_net = net
        self.timeout = timeout
        self._lock = threading.Lock()
        self.status = {key: "skipped" for key, _ in PARTS}
        self.detail = {key: "" for key, _ in PARTS}
        self.syncs: dict[int, tuple] = {}
        self.ns: NetNamespace | None = None
        self.threads: list[threading.Thread] = []
        self.stopped = threading.Event()     # the guest closed its NIC (SYNC 8)
        self.ended = threading.Event()       # the run is over: host threads give up waiting
        self.net: dict | None = None         # what the namespace's ping and UDP echo saw
        self.failure: str | None = None      # a host-side failure while the guest ran
        self.t0 = time.monotonic()
        self.disk_path: str | None = None    # the temporary disk file while the demo runs

    # -- output ----------------------------------------------------------------------------------

    def say(self, who: str, text: str) -> None:
        """One narrated line: ``[host ]`` or ``[guest]`` and the time since the start."""
        with self._lock:
            self.out.write(f"{time.monotonic() - self.t0:6.2f}s [{who:5}] {text}\n")
            self.out.flush()

    def host(self, text: str) -> None:
        """A line about what the parent partition does."""
        self.say("host", text)

    def _fail(self, text: str) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = text

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Build everything, run the guest, print the summary; the exit code."""
        from .images import ImageError, image_path
        from .kvm.errors import KvmUnavailable
        from .partition.config import PartitionConfig
        from .partition.partition import ChildPartition
        from .vsp.disk import Disk, DiskError, create_disk
        from .vsp.echo import EchoVsp
        from .vsp.ic import HeartbeatVsp, ShutdownVsp
        from .vsp.netvsc import NetError
        from .vsp.storvsc import StorvscVsp

        self.out.write("hvkvm demo: one child partition (a KVM VM), one VMBus, and each of the "
                       "guest runtime's VSCs (drivers)\nagainst hvkvm's VSP (device provider) "
                       "for it. [host] lines are the parent partition, [guest] lines\nthe "
                       "guest's own log (sent to the host through the ucall port).\n")
        with contextlib.ExitStack() as st:
            try:
                image = image_path("demo")
            except ImageError as e:
                return self._finish_early(f"cannot build the demo guest image: {e}")
            self.host(f"guest image: {image} (a tiny kernel built from guest_images/images/demo)")

            tmp = tempfile.mkdtemp(prefix="hvkvm-demo-")
            st.callback(shutil.rmtree, tmp, True)
            path = self.disk_path = os.path.join(tmp, "disk.img")
            try:
                create_disk(path, DISK_BYTES)
                disk = st.enter_context(Disk(path))
            except DiskError as e:
                return self._finish_early(f"cannot create the demo disk: {e}")
            self.host(f"disk: created {path}, a sparse {DISK_BYTES // MiB} MiB raw file (removed "
                      f"at the end)")
            self.echo = EchoVsp(plane="c")
            self.storvsc = StorvscVsp(disk, plane="c")
            self.hb = HeartbeatVsp(interval=HEARTBEAT_INTERVAL)
            self.sd = ShutdownVsp()
            vsps = [self.echo, self.storvsc, self.hb, self.sd]
            self.host("VSPs on the VMBus: echo (C data-plane thread), storvsc on the disk file "
                      f"(handshake in Python, then a C thread does the I/O), heartbeat IC (one "
                      f"every {HEARTBEAT_INTERVAL:g} s) and shutdown IC")
            cmdline = f"demo echo_count={ECHO_COUNT}"
            self.netvsc = None
            reason = network_skip_reason() if self.want_net else "--no-net given"
            if reason is None:
                try:
                    self.netvsc = self._setup_network(st)
                    vsps.append(self.netvsc)
                    cmdline += f" ip={GUEST_IP}/{PREFIX}"
                except (OSError, NetError, subprocess.SubprocessError) as e:
                    reason = f"cannot set up the namespace and TAP: {e}"
            if reason is not None:
                self.host(f"network: skipped: {reason}")
                self.detail["netvsc"] = reason

            cfg = PartitionConfig(image=image, memory=64 * MiB, cmdline=cmdline, vsps=vsps,
                                  timeout=self.timeout, on_sync=self._on_sync,
                                  on_log=self._on_log)
            try:
                part = ChildPartition(cfg)
            except KvmUnavailable as e:
                print(f"hvkvm demo: KVM unavailable: {e} (run `hvkvm doctor`)", file=sys.stderr)
                return EXIT_NO_KVM
            except (OSError, ValueError) as e:
                return self._finish_early(f"cannot build the partition: {e}")
            st.enter_context(part)
            self.part = part
            kstats = self._kvm_stats(part)
            if kstats is not None:
                st.callback(kstats.close)
            self.host(f"partition: 64 MiB of RAM, 1 vCPU; booting with command line "
                      f"\"{cmdline}\"")
            try:
                result = part.run()
            finally:
                self.ended.set()
            kvm = kstats.read() if kstats is not None else {}
            for t in self.threads:
                t.join(5)
            return self._summary(result, kvm)

    def _finish_early(self, text: str) -> int:
        print(f"hvkvm demo: failed: {text}", file=sys.stderr)
        return EXIT_FAILED

    def _setup_network(self, st: contextlib.ExitStack):
        from .vsp.netns import NetNamespace
        from .vsp.netvsc import NetvscVsp, TapDevice
        self.ns = st.enter_context(NetNamespace(f"hvkvm-demo-{os.getpid()}"))
        tap = st.enter_context(TapDevice(TAP_NAME, netns=self.ns.name))
        subprocess.run(["ip", "-n", self.ns.name, "addr", "add", f"{HOST_IP}/{PREFIX}", "dev",
                        TAP_NAME], capture_output=True, check=True)
        self.host(f"network: created namespace {self.ns.name} with TAP {TAP_NAME} "
                  f"({HOST_IP}/{PREFIX}) inside it; netvsc VSP (C data plane) on that TAP; the "
                  f"guest gets {GUEST_IP}/{PREFIX}")
        return NetvscVsp(tap, plane="c")

    @staticmethod
    def _kvm_stats(part):
        from .bench.kvmstats import KvmStats
        return KvmStats.for_vcpu(part.vcpus[0])

    # -- callbacks from the vCPU thread ------------------------------------------------------------

    def _on_log(self, _vcpu: int, text: str) -> None:
        self.say("guest", text)

    def _on_sync(self, _vcpu: int, uc) -> None:
        stage, args = uc.args[0], tuple(uc.args[1:])
        self.syncs[stage] = args
        handler = getattr(self, f"_stage{stage}", None)
        if handler is not None:
            handler(*args)

    def _stage1(self, version, offers, mask, *_):
        self.host(f"the guest negotiated VMBus {version >> 16}.{version & 0xffff} and took "
                  f"{offers} offer(s); each device is a channel: two rings in guest RAM")

    def _stage2(self, started, hb_relid, sd_relid, *_):
        self.host(f"{started} IC channel(s) open (heartbeat relid {hb_relid}, shutdown relid "
                  f"{sd_relid}); the heartbeat VSP now sends a heartbeat every "
                  f"{HEARTBEAT_INTERVAL:g} s")

    def _stage3(self, done, nbytes, min_ns, mean_ns, max_ns, *_):
        plane = self.echo.closed_stats[-1] if self.echo.closed_stats else {}
        self.status["echo"] = "ok" if done == ECHO_COUNT else "failed"
        self.detail["echo"] = (f"{done} round trips, {nbytes} bytes checked, RTT min "
                               f"{min_ns / 1000:.0f} us, max {max_ns / 1000:.0f} us")
        self.host(f"echo: the C data plane echoed {plane.get('packets', '?')} packets "
                  f"({plane.get('bytes', '?')} bytes) with no Python on the data path; "
                  f"kicked {plane.get('kicks', '?')} time(s) (ioeventfd), it raised "
                  f"{plane.get('signals', '?')} interrupt(s): the guest polls with the ring's "
                  f"interrupt_mask set")

    def _stage4(self, version, blocks, block_size, max_transfer, wp, *_):
        self.block_size = block_size
        self.host(f"storvsc: vstor handshake done (protocol {version >> 8}.{version & 0xff}); "
                  f"the C thread now serves SCSI requests with preadv/pwritev on the file "
                  f"(max transfer {max_transfer // 1024} KiB)")

    def _stage5(self, blocks, writes, flushes, *_):
        self.host(f"storvsc: SYNCHRONIZE CACHE answered after fdatasync: "
                  f"{blocks * self.block_size // 1024} KiB of the guest's pattern are in the "
                  f"file; the guest now reads it back")

    def _stage6(self, blocks, reads, nbytes, *_):
        self.status["storvsc"] = "ok"
        self.detail["storvsc"] = (f"{nbytes // 1024} KiB written, flushed, read back and "
                                  f"verified")

    def _stage7(self, mac, ip, nvsp, ndis, *_):
        mac_text = ":".join(f"{b:02x}" for b in mac.to_bytes(6, "big"))
        self.host(f"netvsc: NVSP {nvsp >> 16}.{nvsp & 0xffff} and RNDIS set up; guest MAC "
                  f"{mac_text}; pinging {GUEST_IP} from namespace {self.ns.name}")
        t = threading.Thread(target=self._net_traffic, name="demo-net", daemon=True)
        self.threads.append(t)
        t.start()

    def _stage8(self, pings, echoed, arp, rx, drops, *_):
        self.stopped.set()
        net = self.net
        if net is None:
            return
        ok = net["replies"] == PINGS and net["udp_ok"] == UDP_ECHOES and \
            pings >= net["replies"] and echoed >= net["udp_ok"]
        self.status["netvsc"] = "ok" if ok else "failed"

    def _stage9(self, beats, hb_version, sd_version, *_):
        if self.sd.state == "closed":
            return
        self.host(f"the guest is idle; waiting for {MIN_HEARTBEATS} heartbeats in all, then "
                  f"asking it to shut down through the shutdown IC")
        t = threading.Thread(target=self._shutdown, name="demo-shutdown", daemon=True)
        self.threads.append(t)
        t.start()

    def _stage10(self, flags, beats, last_seq, *_):
        self.host(f"shutdown: the guest answered the request (HV_S_OK) after {beats} "
                  f"heartbeats and exits with code 0")

    # -- host threads ------------------------------------------------------------------------------

    def _net_traffic(self) -> None:
        """Ping and UDP-echo the guest from inside the namespace, then send STOP."""
        ns = self.ns
        net = {"replies": 0, "rtts": [], "udp_ok": 0}
        try:
            stdout = self._ping()
            rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", stdout)]
            net["replies"], net["rtts"] = len(rtts), rtts
            if rtts:
                self.host(f"ping from the namespace: {len(rtts)}/{PINGS} replies, RTT "
                          f"{' '.join(f'{x:g}' for x in rtts)} ms (min {min(rtts):g}, avg "
                          f"{sum(rtts) / len(rtts):.3f}, max {max(rtts):g})")
            else:
                self.host(f"ping from the namespace: no replies ({stdout.strip()[-200:]})")
            with ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.5)
                for i in range(UDP_ECHOES):
                    net["udp_ok"] += self._udp_echo(s, os.urandom(32 << i))
            self.host(f"UDP echo from the namespace: {net['udp_ok']}/{UDP_ECHOES} datagrams "
                      f"came back byte for byte; sending STOP to port 9")
        except (OSError, subprocess.SubprocessError) as e:
            self._fail(f"network traffic from the namespace failed: {e}")
        finally:
            self.net = net
            rtts = net["rtts"]
            self.detail["netvsc"] = (f"{net['replies']}/{PINGS} pings" +
                                     (f" (RTT avg {sum(rtts) / len(rtts):.3f} ms)" if rtts
                                      else "") +
                                     f", {net['udp_ok']}/{UDP_ECHOES} UDP echoes")
            self._send_stop()

    def _ping(self) -> str:
        """``ping`` the guest from inside the namespace; its output (killed if the run ends)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns.name, "ping", "-c", str(PINGS),
                              "-i", "0.2", "-W", "2", GUEST_IP], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        try:
            while True:
                try:
                    return p.communicate(timeout=0.2)[0]
                except subprocess.TimeoutExpired:
                    if self.ended.is_set():
                        p.kill()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()

    def _udp_echo(self, s: socket.socket, data: bytes) -> int:
        """1 if ``data`` comes back from the guest's port 7 byte for byte (UDP: 6 tries of
        half a second; none once the run is over)."""
        for _ in range(6):
            if self.ended.is_set():
                break
            s.sendto(data, (GUEST_IP, 7))
            try:
                while True:
                    got, addr = s.recvfrom(4096)
                    if addr == (GUEST_IP, 7):
                        return int(got == data)
            except socket.timeout:
                pass
        return 0

    def _send_stop(self) -> None:
        try:
            with self.ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(5):   # UDP: repeat until the guest says it stopped
                    s.sendto(b"STOP", (GUEST_IP, 9))
                    if self.stopped.wait(1.0) or self.ended.is_set():
                        return
        except OSError as e:
            self._fail(f"cannot send STOP to the guest: {e}")

    def _shutdown(self) -> None:
        """Wait for a few heartbeats, then request a shutdown and wait for the answer."""
        deadline = time.monotonic() + 30
        while not self.hb.wait_beats(MIN_HEARTBEATS, 0.2):
            if self.ended.is_set():
                return
            if time.monotonic() > deadline:
                self._fail(f"the guest answered only {self.hb.beats} heartbeat(s) in 30 s")
                self.part.request_stop("no heartbeats", status="fail")
                return
        self.host(f"heartbeat: the guest answered {self.hb.beats} heartbeats (sequence "
                  f"{self.hb.sequence}); requesting a shutdown")
        self.sd.request_shutdown("hvkvm demo: every VSC checked")
        deadline = time.monotonic() + 30
        while (status := self.sd.wait_acknowledged(0.2)) is None:
            if self.ended.is_set() or time.monotonic() > deadline:
                break
        if status != 0 and not self.ended.is_set():
            self._fail(f"the shutdown request was not acknowledged (status {status})")

    def _plane_signals(self) -> int:
        """Interrupts the VSPs' C threads raised through their irqfds (closed channels)."""
        n = sum(st.get("signals", 0) for st in self.echo.closed_stats)
        n += sum(st.get("plane_signals", 0) for st in self.storvsc.closed_stats)
        if self.netvsc is not None:
            n += self.netvsc.totals()["signals"]
        return n

    # -- the summary -------------------------------------------------------------------------------

    def _summary(self, result, kvm: dict) -> int:
        from .vsp.ic_wire import HV_S_OK
        if self.hb.beats and self.hb.bad == 0 and self.hb.error_count == 0:
            self.status["heartbeat"] = "ok"
        elif self.hb.state != "closed" or self.hb.beats:
            self.status["heartbeat"] = "failed"
        self.detail["heartbeat"] = f"{self.hb.beats} heartbeats answered, none wrong" \
            if self.hb.bad == 0 else f"{self.hb.bad} wrong answers"
        # The guest stops right after its answer: give the VSP's thread a moment to read it.
        acked = self.sd.wait_acknowledged(5) if self.sd.requests and result.passed else \
            self.sd.last_status
        if acked == HV_S_OK and result.passed and 10 in self.syncs:
            self.status["shutdown"] = "ok"
            self.detail["shutdown"] = "requested, acknowledged, guest exited 0"
        elif self.sd.requests:
            self.status["shutdown"] = "failed"
        interrupted = result.status == "host-error" and "interrupted" in result.reason
        if not result.passed:
            for key, _ in PARTS:
                if self.status[key] == "skipped" and not (key == "netvsc" and
                                                          self.netvsc is None):
                    self.status[key] = "stopped" if interrupted else "failed"
                    self.detail[key] = "interrupted" if interrupted else "did not finish"
        w = self.out.write
        w("\nsummary\n")
        for key, name in PARTS:
            w(f"  {name:13} {self.status[key]:8} {self.detail[key]}\n")
        totals = result.exit_totals()
        user = sum(r["ring0"] + r["ring3"] for r in totals.values())
        by = ", ".join(f"{k} {v['ring0'] + v['ring3']}" for k, v in sorted(totals.items()))
        w(f"  {'partition':13} {result.status:8} {result.wall_ms / 1000:.2f} s; {user} exits "
          f"to the host's Python ({by})")
        if kvm:
            w(f"; {kvm.get('exits', '?')} KVM exits in all; "
              f"{kvm.get('irq_injections', '?')} interrupts injected into the guest (the host "
              f"raised {self.part.hv.stats['sint_interrupts']} SynIC interrupts from Python "
              f"and {self._plane_signals()} from the C data planes; edge MSIs to a vector "
              f"already pending merge)")
        w("\n")
        self.out.flush()
        if interrupted:
            print("hvkvm demo: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        bad = [name for key, name in PARTS if self.status[key] == "failed"]
        if not result.passed:
            print(f"hvkvm demo: failed: the guest did not finish: {result.reason}",
                  file=sys.stderr)
            return EXIT_FAILED
        if self.failure or bad:
            print(f"hvkvm demo: failed: {self.failure or ', '.join(bad) + ' failed'}",
                  file=sys.stderr)
            return EXIT_FAILED
        w("hvkvm demo: ok\n")
        return EXIT_OK


def cmd_demo(args) -> int:
    """``hvkvm demo [--no-net] [--timeout S]``: run the demo; the exit code."""
    return Demo(net=not getattr(args, "no_net", False),
                timeout=getattr(args, "timeout", None) or 120.0).run()
