"""Hostile guests: real KVM partitions running guest images that attack the parent partition
(``guest_images/images/hostile_*``, one attack per run: ``attack=NAME``).

For every attack the test asserts the outcome the parent must guarantee:

- the parent keeps running: the run ends the way the attack implies (the guest's DONE(0) after a
  VMBus attack; a stopped partition with the reason for CPU-level faults), never a host error;
- the offending channel is refused, or broken and no longer served, with an error saying why
  (``p.vmbus.errors``, the VSP's ``broken``, the C plane's error and ring-broken reason);
- a bystander channel opened alongside (and never attacked) keeps echoing (SYNC 0x1ff);
- nothing outside guest RAM is read or written: the Python paths refuse before touching memory
  (GuestMemory bounds-checks every access), the C paths run under ASan + UBSan in
  ``ci/sanitize.sh`` (this same file, against the sanitizer build of ``csrc/``);
- what a guest can make the parent keep or log is bounded.

SYNC stages: see ``guest_images/images/hostile_vmbus/main.c`` (and the other images' main.c).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from hvkvm import images
from hvkvm.partition.config import PartitionConfig
from hvkvm.vmbus.channels import MAX_ERRORS_KEPT
from hvkvm.vmbus.gpadl import MAX_GPADLS
from hvkvm.vsp.echo import EchoVsp

pytestmark = pytest.mark.kvm

SYNC_START, SYNC_DONE, SYNC_VICTIM_ECHO, SYNC_VICTIM_CLOSED, SYNC_BYSTANDER = \
    0x100, 0x101, 0x1FD, 0x1FE, 0x1FF
#: Log records a flood may leave (the first of each kind is logged, the rest only counted).
LOG_BOUND = 300


@pytest.fixture(scope="module")
def vmbus_image():
    return str(images.image_path("hostile_vmbus"))


@dataclass
class Outcome:
    """One hostile run: the result, the partition, its SYNCs and the VSPs."""

    result: object
    p: object
    syncs: dict
    victim: EchoVsp
    bystander: EchoVsp
    spare: EchoVsp
    #: victim C plane state captured at SYNC 0x101 (before the guest closes it)
    plane_state: dict = field(default_factory=dict)
    logs: list = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return list(self.p.vmbus.errors)

    def error_matching(self, text: str) -> bool:
        return any(text in e for e in self.errors)


def run_vmbus(make_partition, image, attack, *, plane="c", extra="", vcpus=1, timeout=120,
              caplog=None, before_run=None) -> Outcome:
    victim = EchoVsp(plane=plane)
    bystander = EchoVsp(plane="python" if plane == "c" else "c")
    spare = EchoVsp(plane="python")
    state: dict = {}

    syncs: dict = {}

    def on_sync(_vcpu, uc):
        syncs[uc.args[0]] = tuple(uc.args[1:])
        if uc.args[0] == SYNC_DONE:
            for relid, plane_ in victim.planes.items():
                state.update(relid=relid, error=plane_.error, broken=plane_._p.broken,
                             stats=plane_.stats)
            state["python_broken"] = victim.broken

    cfg = PartitionConfig(image=image, cmdline=f"hostile attack={attack} {extra}",
                          vsps=[victim, bystander, spare], vcpus=vcpus, timeout=timeout,
                          on_sync=on_sync)
    p = make_partition(cfg)
    if before_run is not None:
        before_run(p)
    r = p.run()
    return Outcome(r, p, syncs, victim, bystander, spare, state,
                   [rec for rec in (caplog.records if caplog else [])
                    if rec.name.startswith("hvkvm")])


def check_survived(o: Outcome, *, victim_works: bool) -> None:
    """The common outcome: the guest finished, the victim was closed as asked, the bystander
    still echoes, every channel is back to a sane state, bounded error lists."""
    r = o.result
    assert r.passed, f"{r.status}: {r.reason}\n{r.detail}\n" + "\n".join(r.logs[-20:])
    assert o.syncs[SYNC_BYSTANDER][:2] == (8, 8)
    assert o.syncs[SYNC_VICTIM_CLOSED][0] == 0
    echoes = o.syncs[SYNC_VICTIM_ECHO][0]
    assert echoes == (4 if victim_works else 0), f"victim echoes after the attack: {echoes}"
    assert o.bystander.broken is None
    cs = o.p.vmbus.channels
    assert len(cs.errors) <= MAX_ERRORS_KEPT
    victim_ch = cs.channels[1]
    assert victim_ch.state == "offered" and victim_ch.transport is None
    assert not victim_ch.building


def check_victim_broken(o: Outcome, plane: str, reason: str) -> None:
    """The victim's data path stopped on a corrupt ring, and says why."""
    if plane == "python":
        assert o.victim.broken is not None and reason in o.victim.broken, o.victim.broken
        assert o.error_matching(f"relid 1: VMBus ring is broken: bad {reason}"), o.errors
    else:
        from hvkvm.vmbus.ring import BROKEN_REASONS
        assert o.plane_state.get("error") == -4, o.plane_state          # HVR_EBROKEN
        assert BROKEN_REASONS.get(o.plane_state["broken"]) == reason, o.plane_state
        # ... and said so when the channel was closed
        assert o.error_matching(f"relid 1: data plane stopped: the guest corrupted the ring "
                                f"(bad {reason})"), o.errors


PLANES = ["c", "python"]

# ---- rings ------------------------------------------------------------------------------------

BREAKING = [
    ("ring_windex_oob", "write_index"),
    ("ring_windex_unaligned", "write_index"),
    ("ring_rindex_oob", "read_index"),
    ("ring_len8_past_end", "descriptor lengths"),
    ("ring_offset8_small", "descriptor lengths"),
    ("ring_offset8_past_len8", "descriptor lengths"),
    ("ring_bad_type", "descriptor type"),
    ("ring_bad_flags", "descriptor flags"),
    ("ring_gpa_ranges_bad", "GPA ranges"),
    ("ring_xfer_ranges_bad", "transfer page ranges"),
]


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("attack,reason", BREAKING, ids=[a for a, _ in BREAKING])
def test_corrupt_ring_breaks_only_its_channel(make_partition, vmbus_image, attack, reason,
                                              plane):
    o = run_vmbus(make_partition, vmbus_image, attack, plane=plane)
    check_survived(o, victim_works=False)
    check_victim_broken(o, plane, reason)


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("attack", ["ring_zero_payload", "ring_wrap_and_max",
                                    "ring_pending_garbage"])
def test_odd_but_valid_rings_keep_working(make_partition, vmbus_image, attack, plane):
    o = run_vmbus(make_partition, vmbus_image, attack, plane=plane)
    check_survived(o, victim_works=True)
    assert o.victim.broken is None and o.plane_state.get("error", 0) == 0
    assert not o.error_matching("ring is broken")


@pytest.mark.parametrize("plane", PLANES)
def test_reply_that_never_fits_stops_the_channel_with_a_reason(make_partition, vmbus_image,
                                                               plane, caplog):
    caplog.set_level(logging.INFO, logger="hvkvm")
    o = run_vmbus(make_partition, vmbus_image, "ring_oversized_reply", plane=plane,
                  caplog=caplog)
    check_survived(o, victim_works=False)
    if plane == "c":
        assert o.plane_state["error"] == -3                              # HVR_EINVAL
        assert o.error_matching("relid 1: data plane stopped: a request whose answer can never "
                                "fit"), o.errors
    else:
        assert o.victim.broken and "never fits" in o.victim.broken, o.victim.broken
        assert o.error_matching("relid 1:"), o.errors
    assert len(o.logs) < LOG_BOUND


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("flip", [0, 1], ids=["every-field", "gpa-ranges-only"])
def test_descriptor_rewritten_while_the_parent_reads_it(make_partition, vmbus_image, plane,
                                                         flip, caplog):
    """Double fetch: vCPU 1 (ring 3) rewrites each descriptor (or only the GPA range headers of
    GPA-direct packets) while the parent parses it. The parent echoes what it validated or stops
    the channel; it never uses a value it did not check (ASan in the sanitizer job)."""
    caplog.set_level(logging.INFO, logger="hvkvm")
    o = run_vmbus(make_partition, vmbus_image, "ring_double_fetch", plane=plane, vcpus=2,
                  caplog=caplog, extra=f"flip={flip}")
    check_survived(o, victim_works=o.syncs[SYNC_VICTIM_ECHO][0] == 4)
    sent, echoes, flips = o.syncs[SYNC_DONE][:3]
    assert sent > 0 and flips > 0
    assert echoes <= sent
    assert o.p.vmbus.notifier.failures == 0        # nothing escaped a VSP
    assert len(o.logs) < LOG_BOUND


# ---- GPADLs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("plane", PLANES)
def test_gpadl_pfns_outside_ram_are_refused(make_partition, vmbus_image, plane):
    o = run_vmbus(make_partition, vmbus_image, "gpadl_pfn_beyond_ram", plane=plane)
    check_survived(o, victim_works=True)
    assert o.syncs[SYNC_DONE][:2] == (8, 0)
    assert sum("outside guest RAM" in e for e in o.errors) == 8


def test_gpadl_malformed_ranges_are_refused(make_partition, vmbus_image):
    o = run_vmbus(make_partition, vmbus_image, "gpadl_bad_ranges")
    check_survived(o, victim_works=True)
    refused, created, torndown = o.syncs[SYNC_DONE][:3]
    assert (refused, created, torndown) == (6, 0, 1)
    for text in ("byte_offset 4096 is not inside", "range 0 is empty", "does not match",
                 "range 1 header runs past", "reuses handle", "GPADL_HEADER for unknown relid",
                 "GPADL_BODY for unknown handle", "range_buflen"):
        assert o.error_matching(text), (text, o.errors)
    # nothing half-built is left behind
    assert all(not ch.building for ch in o.p.vmbus.channels.channels.values())


def test_gpadl_teardown_of_an_open_ring_waits_for_the_close(make_partition, vmbus_image):
    o = run_vmbus(make_partition, vmbus_image, "gpadl_teardown_open")
    check_survived(o, victim_works=True)
    assert o.syncs[SYNC_DONE][:2] == (0, 4)
    assert o.error_matching("while its channel is open and the host uses it; deferred")
    assert not o.p.vmbus.channels.channels[1].gpadls


def test_thousands_of_gpadls_hit_the_limit(make_partition, vmbus_image, caplog):
    caplog.set_level(logging.INFO, logger="hvkvm")
    n = 5000
    o = run_vmbus(make_partition, vmbus_image, "gpadl_thousands", extra=f"count={n}",
                  caplog=caplog)
    check_survived(o, victim_works=True)
    ok, refused, _last = o.syncs[SYNC_DONE][:3]
    assert ok == 2 * n and refused == 0            # every post was taken (status 0) ...
    # ... the excess refused (logged once; the error list keeps only the latest errors)
    assert any(f"more than {MAX_GPADLS} GPADLs" in r.getMessage() for r in o.logs)
    cs = o.p.vmbus.channels
    assert len(cs._all_gpadls()) == 1              # only the bystander's ring is left
    assert o.p.hv.stats["messages_dropped"] > 0    # the guest stopped reading its messages
    assert len(o.logs) < LOG_BOUND


def test_gpadls_naming_too_many_pages_are_refused(make_partition, vmbus_image, caplog):
    """GPADLs of 8190 PFNs (the most a GPADL_HEADER's range_buflen can announce), all naming
    the same page: the partition's GPADLs may name MAX_GPADL_PAGES_TOTAL pages together (lowered
    here to 30000), the rest is refused with GPADL_CREATED failures."""
    caplog.set_level(logging.INFO, logger="hvkvm")

    def lower(p):
        p.vmbus.channels.max_gpadl_pages = 30000

    o = run_vmbus(make_partition, vmbus_image, "gpadl_thousands", extra="count=6 pfns=8190",
                  before_run=lower, caplog=caplog)
    check_survived(o, victim_works=True)
    ok, refused, _last = o.syncs[SYNC_DONE][:3]
    assert ok == 6 * (1 + 292 + 1) and refused == 0
    assert any("exceed 30000" in r.getMessage() for r in o.logs)
    cs = o.p.vmbus.channels
    assert sum(ch.gpadls.pages + ch.building.pages for ch in cs.channels.values()) <= 30000
    assert len(o.logs) < LOG_BOUND


# ---- channel messages -------------------------------------------------------------------------

def test_unknown_message_types_are_refused(make_partition, vmbus_image):
    o = run_vmbus(make_partition, vmbus_image, "msg_unknown_types")
    check_survived(o, victim_works=True)
    posts, bad_status = o.syncs[SYNC_DONE][:2]
    assert posts == 62 and bad_status == 0
    assert o.error_matching("unknown or host-only channel message")


def test_short_messages_are_refused(make_partition, vmbus_image):
    o = run_vmbus(make_partition, vmbus_image, "msg_short")
    check_survived(o, victim_works=True)
    assert o.syncs[SYNC_DONE][0] > 100
    assert o.error_matching("(no header)") and o.error_matching("needs 148")


def test_bad_post_message_inputs_get_hyper_v_statuses(make_partition, vmbus_image):
    o = run_vmbus(make_partition, vmbus_image, "msg_bad_posts")
    check_survived(o, victim_works=True)
    mask, n = o.syncs[SYNC_DONE][:2]
    assert mask == (1 << n) - 1 and n == 13
    assert o.p.hv.stats["bad_hypercalls"] >= 11
    assert o.error_matching("HvPostMessage of message type 2")
    assert o.error_matching("on connection id")


def test_messages_for_wrong_relids_and_states_are_refused(make_partition, vmbus_image):
    o = run_vmbus(make_partition, vmbus_image, "msg_state_abuse")
    check_survived(o, victim_works=True)
    fails, version_supported, spare_echoes = o.syncs[SYNC_DONE][:3]
    assert (fails, version_supported, spare_echoes) == (9, 0, 4)
    for text in ("OPENCHANNEL for unknown relid", "CLOSECHANNEL for unknown relid",
                 "OPENCHANNEL for relid 1 in state open", "CLOSECHANNEL for relid 3 in state",
                 "RELID_RELEASED for relid 1 that was not rescinded", "INITIATE_CONTACT while",
                 "OPENCHANNEL names unknown GPADL", "ring page offset", "OPENCHANNEL target_vp"):
        assert o.error_matching(text), (text, o.errors)
    assert o.p.vmbus.channels.version is not None      # still connected


@pytest.mark.parametrize("attack,count", [("msg_post_flood", 20000),
                                          ("msg_bad_inputs_flood", 5000)])
def test_hypercall_floods_are_counted_not_kept(make_partition, vmbus_image, attack, count,
                                               caplog):
    caplog.set_level(logging.INFO, logger="hvkvm")
    o = run_vmbus(make_partition, vmbus_image, attack, extra=f"count={count}", caplog=caplog)
    check_survived(o, victim_works=True)
    ok, refused, _last = o.syncs[SYNC_DONE][:3]
    assert ok + refused == count
    cs = o.p.vmbus.channels
    if attack == "msg_post_flood":
        assert ok == count and cs.error_count >= count
    else:
        assert refused > count // 2 and o.p.hv.stats["bad_hypercalls"] >= refused
    assert len(cs.errors) == MAX_ERRORS_KEPT or cs.error_count < MAX_ERRORS_KEPT
    assert len(o.p.hv._warned) <= 256
    assert len(o.logs) < LOG_BOUND


def test_message_rate_over_the_limit_is_refused_with_insufficient_buffers(make_partition,
                                                                          vmbus_image, caplog):
    """Past the partition's HvPostMessage budget (lowered here to 500 a second, burst 500) a
    flood is refused with HV_STATUS_INSUFFICIENT_BUFFERS (counted, logged once); the parent
    serves the rest, and the guest's later channel messages (retried, as Linux retries) and
    the bystander still work."""
    caplog.set_level(logging.INFO, logger="hvkvm")
    n = 20000

    def lower(p):
        p.hv.messages_per_second = p.hv.message_burst = 500
        p.hv._tokens = 500.0

    o = run_vmbus(make_partition, vmbus_image, "msg_post_flood", extra=f"count={n}",
                  before_run=lower, caplog=caplog)
    check_survived(o, victim_works=True)
    ok, refused, _last = o.syncs[SYNC_DONE][:3]
    hv = o.p.hv
    assert ok + refused == n and ok >= 400 and refused > 0
    assert hv.stats["messages_throttled"] >= refused
    assert o.p.vmbus.channels.error_count >= ok        # what got through was still judged
    rate_logs = [r for r in o.logs if "messages a second" in r.getMessage()]
    assert len(rate_logs) == 1, rate_logs
    assert len(o.logs) < LOG_BOUND


def test_signals_on_unknown_connection_ids(make_partition, vmbus_image, caplog):
    caplog.set_level(logging.INFO, logger="hvkvm")
    n = 20000
    o = run_vmbus(make_partition, vmbus_image, "signal_unknown_flood", extra=f"count={n}",
                  caplog=caplog)
    check_survived(o, victim_works=True)
    ok, refused, last = o.syncs[SYNC_DONE][:3]
    assert (ok, refused, last) == (0, n, 0x12)        # HV_STATUS_INVALID_CONNECTION_ID
    assert o.p.hv.stats["signal_event_exit"] >= n
    assert len(o.p.hv._warned) <= 256
    assert len(o.logs) < LOG_BOUND


def test_interrupt_storm(make_partition, vmbus_image, caplog):
    """REQUESTOFFERS from ring 3 (each answered with every offer: SynIC messages and SINTs as
    fast as the parent can), SINT2 rewritten and EOM written thousands of times."""
    caplog.set_level(logging.INFO, logger="hvkvm")
    o = run_vmbus(make_partition, vmbus_image, "irq_storm", plane="c", caplog=caplog)
    check_survived(o, victim_works=True)
    assert o.syncs[SYNC_DONE][0] == 2000
    hv = o.p.hv
    assert all(len(q) <= hv.MAX_PENDING_PER_SINT for vp in hv.vps for q in vp.pending)
    assert hv.stats["sint_interrupts"] > 2000
    assert len(o.logs) < LOG_BOUND


# ---- the CPU level ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cpu_image():
    return str(images.image_path("hostile_cpu"))


def run_cpu(make_partition, image, attack, *, extra="", timeout=120, caplog=None):
    echo = EchoVsp(plane="c")
    syncs: dict = {}
    cfg = PartitionConfig(image=image, cmdline=f"hostile attack={attack} {extra}", vsps=[echo],
                          timeout=timeout,
                          on_sync=lambda _vcpu, uc: syncs.__setitem__(uc.args[0],
                                                                      tuple(uc.args[1:])))
    p = make_partition(cfg)
    r = p.run()
    logs = [rec for rec in (caplog.records if caplog else []) if rec.name.startswith("hvkvm")]
    return r, p, syncs, logs


def check_cpu_survived(r, syncs, echo_ok=True) -> None:
    assert r.passed, f"{r.status}: {r.reason}\n{r.detail}\n" + "\n".join(r.logs[-20:])
    assert syncs[SYNC_BYSTANDER][:2] == (8, 8)


def test_garbage_in_every_synthetic_msr(make_partition, cpu_image, caplog):
    caplog.set_level(logging.INFO, logger="hvkvm")
    r, p, syncs, logs = run_cpu(make_partition, cpu_image, "msr_garbage", caplog=caplog)
    check_cpu_survived(r, syncs)
    rd_ok, wr_ok, gps, locked, _page = syncs[SYNC_DONE]
    # 256 MSRs, 12 values each: the ones hvkvm implements take what they can, the rest #GP
    assert rd_ok == 26 and 0 < wr_ok < 256 * 12 and gps == 256 + 256 * 12 - rd_ok - wr_ok
    assert p.hv.stats["msr_gp"] >= gps
    assert locked == 3                     # enabled and locked; the write of 0 was ignored
    assert len(p.hv._warned) <= 256 and len(logs) < LOG_BOUND


def test_unknown_hypercall_codes(make_partition, cpu_image):
    r, p, syncs, _ = run_cpu(make_partition, cpu_image, "hypercall_codes")
    check_cpu_survived(r, syncs)
    assert syncs[SYNC_DONE][:2] == ((0x200 - 2 + 6) * 5, 0)
    assert p.hv.stats["bad_hypercalls"] >= (0x200 - 2 + 6) * 5


def test_hypercall_inputs_outside_ram_or_straddling_a_page(make_partition, cpu_image):
    r, p, syncs, _ = run_cpu(make_partition, cpu_image, "hypercall_bad_inputs")
    check_cpu_survived(r, syncs)
    matched, total = syncs[SYNC_DONE][:2]
    assert matched == total == 24


def test_mmio_to_every_unmapped_page(make_partition, cpu_image, caplog):
    from hvkvm.partition.bus import MAX_TRACKED_ADDRESSES
    caplog.set_level(logging.INFO, logger="hvkvm")
    r, p, syncs, logs = run_cpu(make_partition, cpu_image, "mmio_scan", caplog=caplog)
    check_cpu_survived(r, syncs)
    accesses, unexpected = syncs[SYNC_DONE][:2]
    assert unexpected == 0 and accesses > 30000
    bus = p.mmio_bus
    assert bus.unmapped_reads > 15000 and bus.unmapped_writes > 15000
    assert len(bus.unmapped) <= MAX_TRACKED_ADDRESSES
    assert len(logs) <= MAX_TRACKED_ADDRESSES + 10


def test_every_port(make_partition, cpu_image, caplog):
    from hvkvm.partition.bus import MAX_TRACKED_ADDRESSES
    caplog.set_level(logging.WARNING, logger="hvkvm")
    r, p, syncs, logs = run_cpu(make_partition, cpu_image, "pio_scan", caplog=caplog)
    check_cpu_survived(r, syncs)
    reads, writes, _bytes = syncs[SYNC_DONE][:3]
    assert reads == 0x10000 and writes > 30000
    assert len(p.pio_bus.unmapped) <= MAX_TRACKED_ADDRESSES
    assert len(logs) < LOG_BOUND


def test_log_and_sync_flood_is_bounded(make_partition, cpu_image):
    from hvkvm.partition.partition import MAX_KEPT_LOGS, MAX_KEPT_SYNCS
    n = 30000
    r, p, syncs, _ = run_cpu(make_partition, cpu_image, "log_flood", extra=f"count={n}")
    check_cpu_survived(r, syncs)
    assert syncs[SYNC_DONE][0] == n
    assert len(r.logs) <= MAX_KEPT_LOGS + 1 and len(r.syncs) <= MAX_KEPT_SYNCS
    assert "more LOG lines" in r.logs[-1]


@pytest.mark.parametrize("attack,why", [
    ("ucall_outside_ram", "outside"), ("ucall_straddle", "outside"),
    ("ucall_bad_magic", "bad magic"), ("ucall_bad_cmd", "unknown command")])
def test_bad_ucall_stops_the_partition(make_partition, cpu_image, attack, why):
    r, p, syncs, _ = run_cpu(make_partition, cpu_image, attack, timeout=30)
    assert r.status == "guest-error" and "ucall" in r.reason and why in r.reason, r.reason
    assert r.wall_ms < 20000


def test_triple_fault_stops_the_partition(make_partition, cpu_image):
    r, p, syncs, _ = run_cpu(make_partition, cpu_image, "triple_fault", timeout=30)
    assert r.status == "crash" and "triple fault" in r.reason, r.reason
    assert r.wall_ms < 20000


def test_halt_with_interrupts_off_stops_the_partition(make_partition, cpu_image):
    r, p, syncs, _ = run_cpu(make_partition, cpu_image, "halt_irq_off", timeout=30)
    assert r.status == "stopped" and "interrupts off" in r.reason, r.reason
    assert r.wall_ms < 20000


def test_loop_with_interrupts_off_ends_at_the_timeout_and_others_keep_running(
        make_partition, cpu_image, vmbus_image):
    """A vCPU that never exits (interrupts off, a jump to itself) is stopped by the run's
    timeout; meanwhile another partition, in the same parent, runs a whole VMBus attack."""
    import threading
    out = {}

    def spin():
        out["spin"] = run_cpu(make_partition, cpu_image, "loop_irq_off", timeout=6)[0]

    t = threading.Thread(target=spin)
    t.start()
    try:
        o = run_vmbus(make_partition, vmbus_image, "ring_bad_type")
    finally:
        t.join(60)
    check_survived(o, victim_works=False)
    r = out["spin"]
    assert r.status == "timeout", r.reason
    assert 5000 < r.wall_ms < 15000


# ---- storvsc and netvsc -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dev_image():
    return str(images.image_path("hostile_dev"))


def run_dev(make_partition, image, attack, *, disk=None, plane="c", extra="", timeout=120,
            caplog=None):
    from hvkvm.vsp.netvsc import NetvscVsp
    from hvkvm.vsp.storvsc import StorvscVsp
    vsps = [EchoVsp(plane="c")]
    stor = net = None
    if disk is not None:
        stor = StorvscVsp(disk, plane=plane)
        vsps.append(stor)
    else:
        net = NetvscVsp(None, plane=plane)
        vsps.append(net)
    syncs: dict = {}
    cfg = PartitionConfig(image=image, cmdline=f"hostile attack={attack} {extra}", vsps=vsps,
                          timeout=timeout,
                          on_sync=lambda _vcpu, uc: syncs.__setitem__(uc.args[0],
                                                                      tuple(uc.args[1:])))
    p = make_partition(cfg)
    r = p.run()
    logs = [rec for rec in (caplog.records if caplog else []) if rec.name.startswith("hvkvm")]
    return r, p, syncs, stor, net, logs


@pytest.fixture
def disk(hvkvm_disk):
    from hvkvm.vsp.disk import Disk
    d = Disk(hvkvm_disk("4M"))
    yield d
    d.close()


@pytest.mark.parametrize("plane", PLANES)
def test_storvsc_requests_that_disagree_with_themselves(make_partition, dev_image, disk, plane,
                                                        caplog):
    """Transfer lengths that disagree with the PFN list or the CDB, PFNs outside RAM or
    straddling its end, LBAs past the disk (and wrapping 2^64), CDB lengths 0/17/255 and too short
    for the opcode, missing LUNs, bad UNMAP lists, operations not served, short packets."""
    caplog.set_level(logging.INFO, logger="hvkvm")
    r, p, syncs, stor, _net, logs = run_dev(make_partition, dev_image, "stor_requests",
                                            disk=disk, plane=plane, caplog=caplog)
    assert r.passed, f"{r.status}: {r.reason}\n" + "\n".join(r.logs[-30:])
    matched, n, mask = syncs[SYNC_DONE][:3]
    assert matched == n == 44 and mask == 0
    assert syncs[SYNC_BYSTANDER][:2] == (8, 8)
    assert len(logs) < LOG_BOUND


@pytest.mark.parametrize("plane", PLANES)
def test_synchronize_cache_storm(make_partition, dev_image, disk, plane):
    n = 2000
    r, p, syncs, stor, _net, _ = run_dev(make_partition, dev_image, "stor_sync_storm",
                                         disk=disk, plane=plane, extra=f"count={n}")
    assert r.passed, f"{r.status}: {r.reason}\n" + "\n".join(r.logs[-30:])
    done, errors, _us = syncs[SYNC_DONE][:3]
    assert (done, errors) == (n, 0)
    assert syncs[SYNC_BYSTANDER][:2] == (8, 8)
    stats = next(iter(stor.stats().values()))
    assert stats["flushes" if plane == "c" else "srbs"] >= n


@pytest.mark.parametrize("plane", PLANES)
def test_storvsc_range_without_enough_pfns_breaks_the_channel(make_partition, dev_image, disk,
                                                               plane):
    r, p, syncs, stor, _net, _ = run_dev(make_partition, dev_image, "stor_pfn_count_mismatch",
                                         disk=disk, plane=plane)
    assert r.passed, f"{r.status}: {r.reason}\n" + "\n".join(r.logs[-30:])
    assert syncs[SYNC_DONE][0] == 0                      # no completion: the ring is broken
    assert syncs[SYNC_BYSTANDER][:2] == (8, 8)
    ch = next(iter(stor.channels.values()))
    if plane == "python":
        assert ch.broken and "GPA ranges" in ch.broken
        assert any("GPA ranges" in e for e in p.vmbus.errors)
    else:
        assert ch.plane.error == -4 and ch.plane._p.broken == 7   # EBROKEN, GPA ranges
        assert ch.plane.stop_reason == "the guest corrupted the ring (bad GPA ranges)"


@pytest.mark.parametrize("plane", PLANES)
def test_netvsc_rndis_with_bad_sections_lengths_frames_and_ranges(make_partition, dev_image,
                                                                   plane, caplog):
    caplog.set_level(logging.INFO, logger="hvkvm")
    r, p, syncs, _stor, net, logs = run_dev(make_partition, dev_image, "net_requests",
                                            plane=plane, caplog=caplog)
    assert r.passed, f"{r.status}: {r.reason}\n" + "\n".join(r.logs[-30:])
    matched, n, mask = syncs[SYNC_DONE][:3]
    assert matched == n and mask == 0
    assert syncs[SYNC_BYSTANDER][:2] == (8, 8)
    totals = net.totals()
    assert totals["errors"] >= 50 + n - 3     # forged completions and refused messages, each
    assert len(logs) < LOG_BOUND


@pytest.mark.parametrize("plane", PLANES)
def test_netvsc_buffer_teardown_waits_until_the_parent_lets_go(make_partition, dev_image, plane):
    """GPADL_TEARDOWN of the live receive and send buffers: no GPADL_TORNDOWN until the guest
    revokes the buffer (a revoke of another id changes nothing); after it the guest reuses the
    pages and the parent never writes or reads them again, while the channel (and the
    bystander) keep working."""
    r, p, syncs, _stor, net, _ = run_dev(make_partition, dev_image, "net_recv_buffer_pulled",
                                         plane=plane)
    assert r.passed, f"{r.status}: {r.reason}\n" + "\n".join(r.logs[-30:])
    matched, n, mask = syncs[SYNC_DONE][:3]
    assert matched == n == 17 and mask == 0
    assert syncs[SYNC_BYSTANDER][:2] == (8, 8)
    errors = list(p.vmbus.errors)
    assert sum("deferred until the host lets go" in e for e in errors) == 2, errors
    # Both buffers let go: no GPADL of the NIC is still held or waiting for its teardown.
    relid = next(iter(net.channels))
    gpadls = p.vmbus.channels.channels[relid].gpadls
    assert not [g for g in gpadls.values() if g.teardown_requested], gpadls
    stats = net.stats()[relid]
    assert stats["plane"] == plane
    assert stats["error_kinds"].get("no-buffer", 0) >= 3   # answers and the section refused


@pytest.mark.parametrize("plane", PLANES)
def test_netvsc_buffer_torn_down_but_never_revoked_is_let_go_at_close(make_partition, dev_image,
                                                                       plane):
    """The guest tears the live receive buffer down and never revokes it: the GPADL stays held
    (no GPADL_TORNDOWN) while the channel is open; closing the channel lets go of it and the
    deferred GPADL_TORNDOWN goes out then."""
    from hvkvm.vmbus import wire as w
    r, p, syncs, _stor, net, _ = run_dev(make_partition, dev_image, "net_recv_buffer_pulled",
                                         plane=plane, extra="revoke=0")
    assert r.passed, f"{r.status}: {r.reason}\n" + "\n".join(r.logs[-30:])
    matched, n, mask = syncs[SYNC_DONE][:3]
    assert matched == n == 8 and mask == 0
    assert syncs[SYNC_BYSTANDER][:2] == (8, 8)
    cs = p.vmbus.channels
    relid = next(iter(net.channels))
    held = [g for g in cs.channels[relid].gpadls.values() if g.teardown_requested]
    assert len(held) == 1 and held[0].users == 1, held
    sent: list = []
    orig = cs.send
    cs.send = lambda payload: (sent.append(payload), orig(payload))
    with p.vmbus._lock:
        cs.close_all()
    torndown = [m for m in sent
                if int.from_bytes(m[:4], "little") == w.CHANNELMSG_GPADL_TORNDOWN]
    assert len(torndown) == 1
    assert held[0].handle not in cs.channels[relid].gpadls and held[0].users == 0


# ---- virtio-blk ---------------------------------------------------------------------------------

def test_virtio_blk_plane_sanitized_build_is_instrumented_and_cached_apart(monkeypatch):
    """HVKVM_SANITIZE=1 builds the ctypes C plane with ASan + UBSan into its own cache file, so
    ``ci/sanitize.sh`` covers csrc/hvr_virtio_blk.c and a plain run never loads that build."""
    import subprocess
    from hvkvm.vsp import virtio_blk
    monkeypatch.delenv("HVKVM_SANITIZE", raising=False)
    plain = virtio_blk.plane_path()
    monkeypatch.setenv("HVKVM_SANITIZE", "1")
    sanitized = virtio_blk.plane_path()
    assert plain != sanitized
    syms = subprocess.run(["nm", "-D", str(sanitized)], capture_output=True, text=True).stdout
    assert "__asan_init" in syms and "__ubsan_handle" in syms
    plain_syms = subprocess.run(["nm", "-D", str(plain)], capture_output=True, text=True).stdout
    assert "__asan_init" not in plain_syms


def run_vblk(make_partition, image, attack, disk):
    """hostile_dev against a virtio-blk disk (C plane) plus the echo bystander; the device's
    broken reason is captured at each per-case SYNC 0x102 (before the guest resets it)."""
    from hvkvm.vsp import virtio_blk as vb
    cfgkw, keys = vb.devices_for(disk, "c")
    dev = cfgkw["devices"][0].device
    syncs: dict = {}
    cases: dict = {}

    def on_sync(_vcpu, uc):
        syncs[uc.args[0]] = tuple(uc.args[1:])
        if uc.args[0] == 0x102:
            cases[uc.args[1]] = (tuple(uc.args[2:]), dev.broken())

    cfg = PartitionConfig(image=image, cmdline=f"hostile attack={attack} {' '.join(keys)}",
                          vsps=[EchoVsp(plane="c")], timeout=120, on_sync=on_sync, **cfgkw)
    p = make_partition(cfg)
    r = p.run()
    p.close()
    return r, syncs, cases, dev.last_stats


COMPLETED, NEEDS_RESET = 1, 2
VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR = 0, 1
#: hostile_dev's vblk_requests cases, in order: (name, outcome, status byte or broken reason).
VBLK_CASES = [
    ("head_oob", NEEDS_RESET, "entry 500 is not below the queue size 16"),
    ("next_oob", NEEDS_RESET, "next 999"),
    ("loop", NEEDS_RESET, "a loop"),
    ("past_ram", NEEDS_RESET, "is not inside guest RAM"),
    ("wraps_2_64", NEEDS_RESET, "is not inside guest RAM"),
    ("mmio", NEEDS_RESET, "is not inside guest RAM"),
    ("huge_len", NEEDS_RESET, "is not inside guest RAM"),
    ("indirect", NEEDS_RESET, "INDIRECT"),
    ("zero_len_status", NEEDS_RESET, "length 0"),
    ("status_readable", NEEDS_RESET, "no device-writable"),
    ("readable_after_writable", NEEDS_RESET, "device-readable after"),
    ("read_into_readable", COMPLETED, VIRTIO_BLK_S_OK),
    ("write_from_writable", COMPLETED, VIRTIO_BLK_S_OK),
    ("sector_at_end", COMPLETED, VIRTIO_BLK_S_IOERR),
    ("sector_straddles_end", COMPLETED, VIRTIO_BLK_S_IOERR),
    ("sector_wraps_2_64", COMPLETED, VIRTIO_BLK_S_IOERR),
    ("avail_idx_jump", NEEDS_RESET, "moved by more than the queue size"),
]


def test_virtio_blk_bad_chains_need_reset_and_bad_sectors_get_ioerr(make_partition, dev_image,
                                                                     hvkvm_disk):
    """A guest's descriptor chains that name no descriptor, loop, point outside RAM (past its
    end, wrapping 2^64, on the device's own MMIO page, 4 GiB long), ask for INDIRECT (not
    offered), have a zero-length or read-only status or readable after writable, and an avail
    index jumping 1000 ahead: each puts the device in DEVICE_NEEDS_RESET with its reason, nothing
    completed; a reset brings it back (a good read after each). Buffers in the wrong direction
    are neither read nor written (status OK, used length 1: the status byte); sectors at, across
    or wrapping past the disk's end get IOERR. The disk and the VMBus bystander are untouched."""
    from hvkvm.vsp.disk import Disk
    path = hvkvm_disk("4M")
    with open(path, "r+b") as f:
        f.seek(7 * 512)
        f.write(b"\x3c" * 512)
    disk = Disk(path)
    try:
        r, syncs, cases, stats = run_vblk(make_partition, dev_image, "vblk_requests", disk)
    finally:
        disk.close()
    assert r.passed, f"{r.status}: {r.reason}\n" + "\n".join(r.logs[-30:])
    assert syncs[SYNC_DONE][:2] == (len(VBLK_CASES),) * 2      # a good read after every case
    assert syncs[SYNC_BYSTANDER][:2] == (8, 8)
    for i, (name, outcome, want) in enumerate(VBLK_CASES):
        (got, status, used_len, *_), broken = cases[i]
        assert got == outcome, (name, got, broken)
        if outcome == NEEDS_RESET:
            assert broken is not None and want in broken, (name, broken)
        else:
            assert broken is None and (status, used_len) == (want, 1), (name, status, used_len)
    assert stats["io_errors"] == 3
    with open(path, "rb") as f:                 # the wrong-direction write wrote nothing
        f.seek(7 * 512)
        assert f.read(512) == b"\x3c" * 512


def test_virtio_blk_queue_outside_ram_or_on_mmio_is_refused_before_driver_ok(make_partition,
                                                                              dev_image,
                                                                              hvkvm_disk):
    """Descriptor table past the end of RAM, driver area on the device's MMIO page, device area
    at 2^50, set by the guest before DRIVER_OK: QueueReady reads back 0, DRIVER_OK ends in
    DEVICE_NEEDS_RESET (the data plane never starts); after a reset the device serves reads."""
    r, syncs, cases, stats = run_vblk(make_partition, dev_image, "vblk_queue_outside_ram",
                                      hvkvm_disk("4M"))
    assert r.passed, f"{r.status}: {r.reason}\n" + "\n".join(r.logs[-30:])
    assert syncs[SYNC_DONE][:2] == (3, 3)
    assert syncs[SYNC_BYSTANDER][:2] == (8, 8)
    for c in range(3):
        (ready, status, *_), broken = cases[c]
        assert ready == 0 and status & 64, (c, ready, status)        # DEVICE_NEEDS_RESET
        assert broken is not None and "not inside guest RAM" in broken, (c, broken)
