"""``hvkvm demo`` (hvkvm/demo.py, guest image guest_images/images/demo): every VSC of the guest
runtime against its VSP in one real partition.

The command as a user runs it (a subprocess): exit 0, a success row per VSC in the summary, the
guest's own log lines, and nothing left behind (temporary disk, network namespace). As root with
``ip`` and ``ping`` the network part runs inside a namespace the demo creates; otherwise the
summary says why it was skipped. In-process: the host overwrites a few bytes of the disk file
between the guest's SYNCHRONIZE CACHE and its read-back, and the guest's verification must catch
exactly that sector and byte, the demo failing with one line and still cleaning up.
"""

from __future__ import annotations

import glob
import io
import os
import re
import subprocess
import sys

import pytest

from hvkvm import demo as hvdemo

kvm = pytest.mark.kvm
HVKVM = [sys.executable, "-m", "hvkvm.cli"]


def summary_rows(out: str) -> dict[str, tuple[str, str]]:
    """The summary's rows: name -> (status, detail)."""
    rows = {}
    text = out.split("\nsummary\n", 1)[1]
    for _key, name in hvdemo.PARTS + (("partition", "partition"),):
        m = re.search(rf"^  {re.escape(name)} +(\S+) *(.*)$", text, re.M)
        assert m, f"no summary row for {name}:\n{out}"
        rows[name] = (m.group(1), m.group(2))
    return rows


def namespaces() -> set[str]:
    if not os.path.exists("/var/run/netns"):
        return set()
    return set(os.listdir("/var/run/netns"))


@kvm
def test_hvkvm_demo_shows_every_vsc_working_against_its_vsp_and_exits_0():
    tmp_before = set(glob.glob("/tmp/hvkvm-demo-*"))
    p = subprocess.Popen(HVKVM + ["demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, f"exit {p.returncode}\n{out}\n{err}"
    assert out.rstrip().endswith("hvkvm demo: ok"), out
    rows = summary_rows(out)
    assert rows["VMBus echo"][0] == "ok" and rows["VMBus echo"][1].startswith(
        f"{hvdemo.ECHO_COUNT} round trips"), rows
    assert rows["storvsc"] == ("ok", "8192 KiB written, flushed, read back and verified"), rows
    assert rows["heartbeat IC"][0] == "ok" and "none wrong" in rows["heartbeat IC"][1]
    assert int(rows["heartbeat IC"][1].split()[0]) >= hvdemo.MIN_HEARTBEATS
    assert rows["shutdown IC"] == ("ok", "requested, acknowledged, guest exited 0"), rows
    assert rows["partition"][0] == "pass" and "KVM exits" in rows["partition"][1]
    # the guest's own account, through its log
    for line in ("[guest] demo: offer relid", "round trips ok",
                 "every byte as written", 'shutdown requested: "hvkvm demo: every VSC checked"'):
        assert line in out, f"missing {line!r}:\n{out}"
    reason = hvdemo.network_skip_reason()
    if reason is None:
        assert rows["netvsc"] == ("ok", rows["netvsc"][1]) and rows["netvsc"][1].startswith(
            f"{hvdemo.PINGS}/{hvdemo.PINGS} pings"), rows
        assert f"{hvdemo.UDP_ECHOES}/{hvdemo.UDP_ECHOES} UDP echoes" in rows["netvsc"][1]
        assert re.search(rf"ping from the namespace: {hvdemo.PINGS}/{hvdemo.PINGS} replies, "
                         rf"RTT( [\d.]+){{{hvdemo.PINGS}}} ms", out), out
        assert "demo: netvsc: NIC closed" in out
    else:
        assert rows["netvsc"] == ("skipped", reason), rows
        assert f"network: skipped: {reason}" in out
    # nothing left behind: the disk's directory and the demo's namespace are gone
    assert set(glob.glob("/tmp/hvkvm-demo-*")) <= tmp_before
    assert f"hvkvm-demo-{p.pid}" not in namespaces()
    assert err.strip() == "", err


@kvm
def test_a_disk_corrupted_by_the_host_before_the_read_back_fails_the_demo_in_one_line(capfd):
    """Between SYNC 5 (the pattern written and flushed) and the read-back, the host overwrites
    8 bytes of the file at LBA 77, byte 296: the guest names that sector and byte, the storvsc
    row fails, the run ends with exit 1 and one line on stderr, the temporary disk is gone."""
    lba, byte = 77, 296

    class Corrupting(hvdemo.Demo):
        def _stage5(self, *args):
            super()._stage5(*args)
            with open(self.disk_path, "r+b") as f:
                f.seek(lba * 512 + byte)
                f.write(b"\xa5" * 8)

    out = io.StringIO()
    d = Corrupting(out, net=False, timeout=60)
    code = d.run()
    text = out.getvalue()
    err = capfd.readouterr().err
    assert code == hvdemo.EXIT_FAILED, text
    rows = summary_rows(text)
    assert rows["storvsc"] == ("failed", "did not finish"), rows
    assert rows["VMBus echo"][0] == "ok" and rows["netvsc"][0] == "skipped"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hvkvm demo: failed: "), err
    assert f"read-back differs at LBA {lba} byte {byte}" in lines[0], err
    assert "where 0x" in lines[0] and "0xa5a5a5a5a5a5a5a5" in lines[0], err
    assert not os.path.exists(d.disk_path)
    assert 6 not in d.syncs and 5 in d.syncs
