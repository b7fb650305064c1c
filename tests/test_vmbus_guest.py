"""The guest's VMBus client (guest_images/rt/k_vmbus.c, u_vmbus.c) against hvkvm's VMBus server
and echo VSP, in real partitions: the ``vmbus_echo`` image connects, opens the echo channel and
checks every echo byte for byte, from ring 0 (interrupts or polling) and from a ring-3 task that
polls the rings and kicks through port 0xe4.

SYNC values the image reports (PROTOCOL.md, "Command line"):
  1 connected: version, offers, relid, connection id, ring_pages
  2 kernel phase: packets, bytes, receive-ring wraps, straddling echoes, channel interrupts
  3 user phase: packets, bytes, receive-ring wraps, straddling echoes, kicks
  4 closed: GPADL handle, SynIC messages, EOMs, SINT2 interrupts, kernel HvSignalEvents
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from hvkvm import images
from hvkvm.partition.config import PartitionConfig
from hvkvm.vmbus import wire as w
from hvkvm.vsp.echo import EchoVsp

kvm = pytest.mark.kvm

VERSION_5_3 = (5 << 16) | 3
VERSION_4_1 = (4 << 16) | 1
LINUX_FIRST_GPADL = 0xE1E10
HEADER_PFNS, BODY_PFNS = 26, 28   # PFNs Linux puts in GPADL_HEADER / GPADL_BODY


@pytest.fixture(scope="module")
def image():
    return str(images.image_path("vmbus_echo"))


def run_echo(make_partition, image, cmdline, vsps=None, *, hyperv=True, before_run=None,
             timeout=120):
    """Run vmbus_echo; returns (result, partition, {stage: values}, [(conn, msgtype)])."""
    cfg = PartitionConfig(image=image, cmdline=f"vmbus_echo {cmdline}", hyperv=hyperv,
                          vsps=list(vsps or []), timeout=timeout)
    p = make_partition(cfg)
    seen = []
    if p.vmbus is not None:
        handle = p.vmbus.channels.handle_message

        def record(conn, payload):
            if len(payload) >= 4:
                seen.append((conn, int.from_bytes(payload[:4], "little")))
            return handle(conn, payload)

        p.vmbus.channels.handle_message = record
    if before_run is not None:
        before_run(p)
    r = p.run()
    syncs = {}
    for _vcpu, args in r.syncs:
        syncs[args[0]] = tuple(args[1:])
    return r, p, syncs, seen


def check_connected(p, syncs, version=VERSION_5_3, ring_pages=16):
    version_got, offers, relid, conn, pages = syncs[1]
    ch = p.vmbus.channels.channels[relid]
    assert version_got == version
    assert offers == 1
    assert conn == ch.connection_id
    assert pages == ring_pages
    return ch


def check_closed(p, ch, syncs):
    gpadl, messages, eoms, _interrupts, _signals = syncs[4]
    assert gpadl == LINUX_FIRST_GPADL
    # OFFERCHANNEL and ALLOFFERS_DELIVERED arrive back to back: the second waits for an EOM.
    assert eoms >= 1 and p.hv.stats["messages_queued"] >= 1
    assert messages >= 6
    assert ch.state == "offered" and not ch.gpadls and not ch.building
    assert list(p.vmbus.errors) == []


@kvm
@pytest.mark.parametrize("plane", ["python", "c"])
def test_echo_from_ring0_with_interrupts_then_from_a_ring3_polling_task(make_partition, image,
                                                                         plane):
    count = 120
    vsp = EchoVsp(plane=plane)
    r, p, syncs, seen = run_echo(make_partition, image, f"mode=both count={count}", [vsp])
    assert r.passed, f"{r.reason}\n{r.logs}"
    ch = check_connected(p, syncs)
    kernel, user = syncs[2], syncs[3]
    assert kernel[0] == count and user[0] == count
    assert kernel[1] == user[1] > 0                      # the same sizes in both phases
    assert kernel[2] > 0 and user[2] > 0                 # both rings wrapped ...
    assert kernel[3] > 0 and user[3] > 0                 # ... with echoes straddling the end
    assert user[4] > 0                                   # ring 3 kicked through port 0xe4
    assert vsp.packets == 2 * count and vsp.dropped == 0 and vsp.broken is None
    check_closed(p, ch, syncs)
    # The protocol, in Linux's order: 5.3 on connection id 4, offers, a ring GPADL of
    # 2 x (1 + 16) pages (26 PFNs in the header, 8 in a body), open, close, teardown.
    assert seen == [(4, w.CHANNELMSG_INITIATE_CONTACT), (4, w.CHANNELMSG_REQUESTOFFERS),
                    (4, w.CHANNELMSG_GPADL_HEADER), (4, w.CHANNELMSG_GPADL_BODY),
                    (4, w.CHANNELMSG_OPENCHANNEL), (4, w.CHANNELMSG_CLOSECHANNEL),
                    (4, w.CHANNELMSG_GPADL_TEARDOWN)]
    assert any("ring 3, polling: 120 echoes" in line for line in r.logs), r.logs


class SlowEcho(EchoVsp):
    """An echo that answers a few milliseconds late: the guest is asleep in `hlt` by then."""

    def on_signal(self, channel):
        time.sleep(0.003)
        super().on_signal(channel)


@kvm
def test_ring0_sleeps_until_the_channel_interrupt_wakes_it(make_partition, image):
    count = 25
    r, p, syncs, _ = run_echo(make_partition, image, f"mode=kernel count={count} kwindow=1",
                              [SlowEcho()])
    assert r.passed, f"{r.reason}\n{r.logs}"
    ch = check_connected(p, syncs)
    packets, _bytes, _wraps, _straddles, interrupts = syncs[2]
    assert packets == count
    # Each echo found the ring empty and interrupt_mask clear: the host set event flag relid
    # and raised SINT2, which woke the guest.
    assert interrupts >= count
    assert 3 not in syncs
    check_closed(p, ch, syncs)


class StallingEcho(EchoVsp):
    """An echo that stalls once, at the first one-way packet, long enough for the guest to fill
    the ring behind it."""

    stalled = False

    def on_signal(self, channel):
        pkt = channel.inring.peek()
        if not self.stalled and pkt is not None and pkt.trans_id >> 63:
            self.stalled = True
            time.sleep(0.3)
        super().on_signal(channel)


@kvm
def test_ring0_sender_waits_for_space_on_a_full_ring(make_partition, image):
    n, size = 16, 6000
    vsp = StallingEcho()
    r, p, syncs, _ = run_echo(make_partition, image,
                              f"mode=kernel count=1 oneway={n} ring_pages=4 max_len={size}", [vsp])
    assert r.passed, f"{r.reason}\n{r.logs}"
    packets, nbytes, waits, interrupts = syncs[5][:4]
    assert (packets, nbytes) == (n, n * size)
    # The ring (16 KiB) holds two of them: the sender set pending_send_sz and slept until the
    # host's read freed the space and signalled, at least once.
    assert waits >= 1 and interrupts >= waits
    assert vsp.packets == n + 1   # the one-way packets and the kernel phase's single echo
    check_closed(p, p.vmbus.channels.channels[syncs[1][2]], syncs)


@kvm
def test_ring0_polling_takes_no_channel_interrupts(make_partition, image):
    count = 30
    vsp = EchoVsp()
    r, p, syncs, _ = run_echo(make_partition, image, f"mode=kernel kpoll=1 count={count}", [vsp])
    assert r.passed, f"{r.reason}\n{r.logs}"
    ch = check_connected(p, syncs)
    assert syncs[2][0] == count
    assert syncs[2][4] == 0
    assert vsp.packets == count
    check_closed(p, ch, syncs)


@kvm
def test_ring3_with_large_rings_and_a_many_message_gpadl(make_partition, image):
    count, pages = 300, 128
    vsp = EchoVsp(plane="c")
    r, p, syncs, seen = run_echo(make_partition, image,
                                 f"mode=user count={count} ring_pages={pages} window=32", [vsp])
    assert r.passed, f"{r.reason}\n{r.logs}"
    ch = check_connected(p, syncs, ring_pages=pages)
    assert syncs[3][0] == count
    assert 2 not in syncs
    total_pages = 2 * (pages + 1)
    bodies = -(-(total_pages - HEADER_PFNS) // BODY_PFNS)
    assert [t for _, t in seen].count(w.CHANNELMSG_GPADL_BODY) == bodies == 9
    check_closed(p, ch, syncs)


@kvm
def test_tiny_rings_wrap_constantly(make_partition, image):
    count = 1500
    r, p, syncs, _ = run_echo(make_partition, image, f"mode=user count={count} ring_pages=1",
                              [EchoVsp(plane="c")])
    assert r.passed, f"{r.reason}\n{r.logs}"
    check_connected(p, syncs, ring_pages=1)
    packets, _bytes, wraps, straddles, _kicks = syncs[3]
    assert packets == count
    assert wraps > 100 and straddles > 100


@kvm
@pytest.mark.parametrize("host", ["rejects-5.x", "no-connection-4"])
def test_version_negotiation_falls_back_to_4_1_on_connection_id_1(make_partition, image,
                                                                   monkeypatch, host):
    if host == "rejects-5.x":
        monkeypatch.setattr("hvkvm.vmbus.channels.VERSIONS_CONN4", ())

    def drop_conn4(p):
        if host == "no-connection-4":
            p.hv.post_handlers.pop(w.VMBUS_MESSAGE_CONNECTION_ID_4)

    r, p, syncs, seen = run_echo(make_partition, image, "mode=user count=50", [EchoVsp()],
                                 before_run=drop_conn4)
    assert r.passed, f"{r.reason}\n{r.logs}"
    ch = check_connected(p, syncs, version=VERSION_4_1)
    assert syncs[3][0] == 50
    contacts = [c for c, t in seen if t == w.CHANNELMSG_INITIATE_CONTACT]
    if host == "rejects-5.x":
        assert contacts == [4, 4, 4, 4, 1]    # 5.3, 5.2, 5.1, 5.0 refused, then 4.1
    else:
        assert contacts == [1]                # HvPostMessage on id 4 fails: no answer to wait for
        assert p.hv.stats["bad_hypercalls"] == 4
    assert all(c == 1 for c, t in seen if t != w.CHANNELMSG_INITIATE_CONTACT)
    check_closed(p, ch, syncs)


@kvm
def test_a_rescinded_offer_is_released_after_the_close(make_partition, image):
    keep, gone = EchoVsp(), EchoVsp()

    def on_sync(vcpu, uc):
        if uc.args[0] == 1:   # connected, echo channel found: withdraw the other one
            p.vmbus.rescind(2)

    cfg = PartitionConfig(image=image, cmdline="vmbus_echo mode=user count=20", hyperv=True,
                          vsps=[keep, gone], timeout=60, on_sync=on_sync)
    p = make_partition(cfg)
    seen = []
    handle = p.vmbus.channels.handle_message
    p.vmbus.channels.handle_message = lambda c, m: seen.append(int.from_bytes(m[:4], "little")) \
        or handle(c, m)
    r = p.run()
    assert r.passed, f"{r.reason}\n{r.logs}"
    assert r.syncs[0][1][2:4] == (2, 1)   # 2 offers, the echo on relid 1
    assert seen[-1] == w.CHANNELMSG_RELID_RELEASED
    assert 2 not in p.vmbus.channels.channels and 1 in p.vmbus.channels.channels
    assert keep.packets == 20 and gone.packets == 0
    assert list(p.vmbus.errors) == []


@kvm
def test_unload_after_close(make_partition, image):
    r, p, syncs, seen = run_echo(make_partition, image, "mode=user count=20 unload=1",
                                 [EchoVsp()])
    assert r.passed, f"{r.reason}\n{r.logs}"
    assert seen[-1] == (4, w.CHANNELMSG_UNLOAD)
    assert p.vmbus.channels.version is None
    assert any("unloaded" in line for line in r.logs)


@kvm
@pytest.mark.parametrize("host,why", [
    ("no-hyper-v", "VMBus init failed: -1 "),    # no Hyper-V CPUID leaves: VMBUS_ENODEV
    ("no-vmbus", "VMBus init failed: -3 "),      # INITIATE_CONTACT refused on ids 4 and 1:
                                                 # HV_STATUS_INVALID_CONNECTION_ID -> EVERSION
    ("no-offer", "no offer with the echo class GUID among 0"),
])
def test_without_hyper_v_a_vmbus_or_the_offer_the_guest_says_why(make_partition, image, host,
                                                                 why):
    def no_vmbus(p):
        if host == "no-vmbus":
            p.hv.post_handlers.clear()

    r, p, syncs, _ = run_echo(make_partition, image, "mode=user count=1",
                              hyperv=host != "no-hyper-v", before_run=no_vmbus)
    assert r.status == "assert"
    assert why in r.reason, r.reason


@kvm
def test_bad_command_line_is_an_assert(make_partition, image):
    r, _, _, _ = run_echo(make_partition, image, "mode=sideways", [EchoVsp()])
    assert r.status == "assert"
    assert "mode must be kernel, user or both" in r.reason + r.detail


# -- the build: csrc/vmbus_ring.c in every image (no KVM needed) ------------------------------


gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("nm") is None,
                         reason="gcc and nm are needed")


@gcc
def test_the_c_ring_is_linked_into_images_as_user_accessible_code():
    path = images.build_image("hello")
    syms = {}
    for ln in subprocess.run(["nm", str(path)], capture_output=True, text=True,
                             check=True).stdout.splitlines():
        parts = ln.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    lo, hi = syms["__user_start"], syms["__user_end"]
    for sym in ("hvr_out_write", "hvr_in_read", "hvr_in_commit", "vmbus_rings_write"):
        assert lo <= syms[sym] < hi, sym          # ring-3 tasks drive rings with them
    for sym in ("hv_hypercall", "vmbus_channel_open", "hv_synic_init"):
        assert not lo <= syms[sym] < hi, sym      # the control path stays kernel-only


@gcc
def test_csrc_is_in_the_build_hash_and_a_copied_guest_tree_still_builds(tmp_path, monkeypatch):
    src_root = images.guest_images_dir()
    tree = tmp_path / "guest_images"
    shutil.copytree(src_root, tree)
    shutil.copytree(images.csrc_dir(src_root), tmp_path / "csrc")
    monkeypatch.setenv("HVKVM_GUEST_IMAGES", str(tree))
    monkeypatch.setenv("HVKVM_CACHE_DIR", str(tmp_path / "cache"))
    gcc_path = images._find_gcc()
    assert images.csrc_dir() == tmp_path / "csrc"
    key1, sources = images._build_key(tree, "hello", gcc_path)
    assert any(p.name == "vmbus_ring.c" for p in sources)
    with open(tmp_path / "csrc" / "vmbus_ring.h", "a") as f:
        f.write("\n/* changed */\n")
    key2, _ = images._build_key(tree, "hello", gcc_path)
    assert key2 != key1
    # Without a csrc/ next to it, the tree builds with the package's csrc/.
    shutil.rmtree(tmp_path / "csrc")
    assert images.csrc_dir() == images._DEFAULT_CSRC_DIR
    assert images.build_image("vmbus_echo").is_file()
