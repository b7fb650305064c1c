"""The gdb stub: the remote serial protocol by hand and with Debian's gdb in batch mode."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from hvkvm.gdbstub import (REGISTERS, GdbStub, PacketReader, frame, probe_debug_support,
                           target_xml, unescape)
from hvkvm.images import image_path
from hvkvm.partition.config import PartitionConfig
from hvkvm.partition.partition import install_kick_handler


# -- protocol pieces (no KVM) ----------------------------------------------------------------------


def test_packets_are_framed_with_checksum_and_escapes():
    assert frame(b"OK") == b"$OK#9a"
    assert frame(b"a#b$c}d*") == b"$a}\x03b}\x04c}]d}\n#" + b"%02x" % (
        sum(b"a}\x03b}\x04c}]d}\n") & 0xFF)
    assert unescape(b"a}\x03b}]") == b"a#b}"


def test_reader_splits_packets_skips_acks_sees_ctrl_c_and_rejects_bad_checksums():
    r = PacketReader()
    r.feed(b"+$g#67+\x03$m0,4#00$qC#b4")
    assert r.next() == ("packet", b"g")
    assert r.next() == ("interrupt", None)
    assert r.next() == ("bad", None)
    assert r.next() == ("packet", b"qC")
    assert r.next() is None
    r.feed(b"$qSupp")
    assert r.next() is None                 # incomplete: wait for more
    r.feed(b"orted#37")
    assert r.next() == ("packet", b"qSupported")


def test_target_description_has_core_sse_segment_bases_and_control_registers_in_order():
    root = ET.fromstring(target_xml().split("\n", 2)[2])
    assert root.find("architecture").text == "i386:x86-64"
    features = [f.get("name") for f in root.findall("feature")]
    assert features == ["org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse",
                        "org.gnu.gdb.i386.segments", "org.hvkvm.gdb.x86.sys"]
    regs = [(r.get("name"), int(r.get("regnum"))) for f in root.findall("feature")
            for r in f.findall("reg")]
    assert [n for n, _ in regs] == [r.name for r in REGISTERS]
    assert [n for _, n in regs] == list(range(len(regs)))
    names = [n for n, _ in regs]
    # gdb's amd64 core layout: 16 GPRs, rip, eflags, 6 selectors, x87 (40 in all).
    assert names[:18] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                          "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags"]
    assert names[39] == "fop" and names[40] == "xmm0"
    assert {"fs_base", "gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"} <= set(names)


# -- a tiny RSP client -----------------------------------------------------------------------------


class Rsp:
    """Talks the remote protocol the way gdb does (acks on, one packet at a time)."""

    def __init__(self, address, timeout: float = 60.0):
        self.sock = socket.create_connection(address, timeout=timeout)
        self.reader = PacketReader()

    def reply(self) -> str:
        while True:
            item = self.reader.next()
            if item is not None and item[0] == "packet":
                self.sock.sendall(b"+")
                return item[1].decode("latin-1")
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("stub closed the connection")
            self.reader.feed(data)

    def cmd(self, body: str) -> str:
        self.sock.sendall(frame(body.encode("latin-1")))
        return self.reply()

    def send_only(self, body: str) -> None:
        self.sock.sendall(frame(body.encode("latin-1")))

    def reg(self, name: str) -> int:
        num = [r.name for r in REGISTERS].index(name)
        return int.from_bytes(bytes.fromhex(self.cmd(f"p{num:x}")), "little")

    def close(self):
        self.sock.close()


class Session:
    """A partition, its stub on an ephemeral loopback port, and its run in a thread."""

    def __init__(self, make_partition, cfg, wait=True, **stub_kw):
        install_kick_handler()
        self.p = make_partition(cfg)
        self.stub = GdbStub(self.p, "127.0.0.1", 0, wait=wait, **stub_kw)
        self.stub.start()
        self.result = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.rsp = Rsp(self.stub.address)

    def _run(self):
        self.result = self.p.run()

    def finish(self, timeout=60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the guest did not finish"
        self.rsp.close()
        self.stub.close()
        return self.result


def hello_cfg(**kw):
    return PartitionConfig(image=image_path("hello"), cmdline="hello", timeout=120, **kw)


# -- against a real partition ----------------------------------------------------------------------


@pytest.mark.kvm
def test_registers_memory_and_threads_of_a_two_vcpu_guest(make_partition):
    s = Session(make_partition, PartitionConfig(image=image_path("smp"), cmdline="smp cpus=2",
                                                vcpus=2, timeout=120))
    r = s.rsp
    assert "qXfer:features:read+" in r.cmd("qSupported:multiprocess+;swbreak+;hwbreak+")
    xml = ""
    while True:
        chunk = r.cmd(f"qXfer:features:read:target.xml:{len(xml):x},200")
        xml += chunk[1:]
        if chunk[0] == "l":
            break
    assert xml == target_xml()
    assert r.cmd("?").startswith("T05thread:1;")
    assert r.cmd("qfThreadInfo") == "m1,2" and r.cmd("qsThreadInfo") == "l"
    assert r.cmd("qC") == "QC1"
    assert bytes.fromhex(r.cmd("qThreadExtraInfo,2")).startswith(b"vCPU1")
    g = r.cmd("g")
    assert len(g) == 2 * sum(reg.bits // 8 for reg in REGISTERS)
    entry = s.p.image.pvh_entry
    assert r.reg("rip") == entry                       # held before the first instruction
    assert r.cmd("P0=efbeadde00000000") == "OK"          # rax
    assert r.reg("rax") == 0xDEADBEEF
    # Memory through the (not yet paged) address space: the image's own bytes.
    seg = s.p.image.segments[0]
    assert bytes.fromhex(r.cmd(f"m{seg.gpa:x},10")) == bytes(seg.data[:16])
    assert r.cmd("M9000,4:01020304") == "OK"
    assert s.p.memory.read(0x9000, 4) == b"\x01\x02\x03\x04"
    assert r.cmd("X9004,3:#}\x03") == "OK"        # binary write: framing escapes '#' and '}'
    assert s.p.memory.read(0x9004, 3) == b"#}\x03"
    assert r.cmd("m7fff0000000,4").startswith("E")       # outside RAM: an error, no crash
    assert r.cmd("Hg2") == "OK"
    assert r.reg("rip") != entry                         # vCPU1 waits for SIPI elsewhere
    assert r.cmd("Hg1") == "OK"
    assert r.cmd("P0=0000000000000000") == "OK"
    assert r.cmd("D") == "OK"
    res = s.finish()
    assert res.passed, res.reason
    assert [a[1] for _, a in res.syncs if a[0] == 2] == [2]   # both vCPUs checked in


@pytest.mark.kvm
def test_hardware_breakpoint_then_single_step_then_detach_lets_the_guest_finish(make_partition):
    s = Session(make_partition, hello_cfg())
    r = s.rsp
    hv_main = max(a for a, _, n in s.p.symbols.entries if n == "hv_main")  # the image's own
    assert r.cmd(f"Z1,{hv_main:x},1") == "OK"
    stop = r.cmd("vCont;c")
    assert stop.startswith("T05thread:1;") and "hwbreak" in stop
    assert r.reg("rip") == hv_main
    assert r.cmd(f"z1,{hv_main:x},1") == "OK"
    stop = r.cmd("vCont;s:1;c")
    assert stop.startswith("T05thread:1;")
    rip = r.reg("rip")
    assert hv_main < rip < hv_main + 16                  # one instruction further
    assert r.cmd("D") == "OK"
    res = s.finish()
    assert res.passed, res.reason
    assert b"Hello from ring 3" in res.serial


@pytest.mark.kvm
def test_z0_takes_a_debug_register_when_int3_cannot_be_intercepted(make_partition):
    s = Session(make_partition, hello_cfg(), sw_breakpoints=False)
    r = s.rsp
    hv_main = max(a for a, _, n in s.p.symbols.entries if n == "hv_main")
    before = s.p.memory.read(hv_main, 1)
    assert r.cmd(f"Z0,{hv_main:x},1") == "OK"
    assert s.p.memory.read(hv_main, 1) == before        # no int3 planted
    stop = r.cmd("c")
    assert "swbreak" in stop and r.reg("rip") == hv_main
    assert r.cmd(f"z0,{hv_main:x},1") == "OK"
    r.send_only("c")
    assert r.reply() == "W00"                            # ran to done(0)
    assert s.finish().passed


@pytest.mark.kvm
def test_ctrl_c_stops_a_running_guest_and_kill_ends_the_run(make_partition):
    cfg = PartitionConfig(image=image_path("exits"), timeout=120,
                          cmdline="exits kind=cpuid count=4000000000 ring=3")
    s = Session(make_partition, cfg)
    r = s.rsp
    r.send_only("c")
    time.sleep(0.5)
    r.sock.sendall(b"\x03")
    stop = r.reply()
    assert stop.startswith("T02thread:1;")
    rip = r.reg("rip")
    assert s.p.symbolize(rip).startswith("exits_loop")  # stopped in the ring-3 loop
    r.send_only("k")
    res = s.finish()
    assert res.status == "stopped" and "killed from gdb" in res.reason


@pytest.mark.kvm
def test_a_debugger_that_disconnects_without_detaching_leaves_the_guest_running(make_partition):
    s = Session(make_partition, hello_cfg())
    hv_main = max(a for a, _, n in s.p.symbols.entries if n == "hv_main")
    assert s.rsp.cmd(f"Z1,{hv_main:x},1") == "OK"
    s.rsp.close()                                        # gone, breakpoint still planted
    res = s.finish()
    assert res.passed, res.reason


@pytest.mark.kvm
def test_int3_breakpoints_stop_and_the_runtimes_own_int3_calls_are_reinjected(make_partition):
    if not probe_debug_support()["sw_bp"]:
        pytest.skip("this KVM does not intercept int3 (as on kvm_pvm: an emulation failure in "
                    "ring 0, delivered to the guest in ring 3); Z0 takes a debug register there")
    s = Session(make_partition, hello_cfg())
    r = s.rsp
    hv_main = max(a for a, _, n in s.p.symbols.entries if n == "hv_main")
    assert r.cmd(f"Z0,{hv_main:x},1") == "OK"
    assert s.p.memory.read(hv_main, 1) == b"\xcc"
    assert bytes.fromhex(r.cmd(f"m{hv_main:x},1")) != b"\xcc"   # reads show the original
    assert "swbreak" in r.cmd("c") and r.reg("rip") == hv_main
    assert r.cmd(f"z0,{hv_main:x},1") == "OK"
    unused = s.p.symbols.address_of("hv_smp_start")             # hello never starts APs
    assert r.cmd(f"Z0,{unused:x},1") == "OK"                    # stays planted, never hit
    r.send_only("c")
    # hello's ring-3 task ends with an int3 call: the stub hands it back to the guest.
    assert r.reply() == "W00"
    assert s.finish().passed


@pytest.mark.kvm
def test_write_watchpoint_reports_the_address(make_partition):
    if not probe_debug_support()["watch"]:
        pytest.skip("this KVM reports no data breakpoints (as kvm_pvm, measured)")
    s = Session(make_partition, hello_cfg())
    r = s.rsp
    boot = s.p.symbols.address_of("hv_boot")
    assert r.cmd(f"Z2,{boot:x},4") == "OK"
    stop = r.cmd("c")
    assert f"watch:{boot:x};" in stop
    assert r.cmd("D") == "OK"
    assert s.finish().passed


# -- Debian's gdb, batch mode ----------------------------------------------------------------------


@pytest.mark.kvm
@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_gdb_breaks_at_a_symbol_reads_a_variable_steps_and_detaches(tmp_path):
    image = image_path("hello")
    proc = subprocess.Popen([sys.executable, "-m", "hvkvm.cli", "run", "hello", "--gdb",
                             "127.0.0.1:0", "--gdb-wait", "--timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"gdb stub on 127\.0\.0\.1:(\d+)", line)
        assert m, line
        gdb = subprocess.run(
            ["gdb", "-nx", "-batch", "-ex", f"target remote 127.0.0.1:{m.group(1)}",
             "-ex", "info threads", "-ex", "break hv_main", "-ex", "continue",
             "-ex", "p hv_boot.cmdline", "-ex", "p/x $cr0", "-ex", "stepi",
             "-ex", "p/x $pc", "-ex", "detach", str(image)],
            capture_output=True, text=True, timeout=120)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    g = gdb.stdout
    assert gdb.returncode == 0, g + gdb.stderr
    assert "Thread 1 (vCPU0 ring 0" in g
    assert re.search(r"Breakpoint 1(\.\d+)?, hv_main \(\) at images/hello/main\.c", g), g
    assert '"hello"' in g                                        # the variable
    assert re.search(r"\$\d+ = 0x[0-9a-f]*1\b", g)                # CR0.PE set
    from hvkvm.boot.elf import load_elf
    hv_main = max(a for a, _, n in load_elf(image).symbols.entries if n == "hv_main")
    pc = int(re.findall(r"\$\d+ = (0x[0-9a-f]+)\n", g)[-1], 16)
    assert hv_main < pc < hv_main + 16                            # stepi: one instruction on
    assert "[Inferior 1 (Remote target) detached]" in g
    assert proc.returncode == 0, err
    assert "Hello from ring 3" in out                             # the guest finished
