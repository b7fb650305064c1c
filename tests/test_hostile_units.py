"""Hostile-peer cases of the parent's Python ring wrapper that need exact timing a real guest
cannot promise (no KVM): the guest rewriting a GPA-direct packet's ranges between the C parser's
validation and the wrapper's copy (double fetch)."""

from __future__ import annotations

import pytest

from hvkvm.vmbus import ring as R

PAGE = 4096


class _RewriteBeforeCopy:
    """The C library, except that hvr_in_copy first lets the 'guest' rewrite the ring."""

    def __init__(self, real, rewrite):
        self._real, self._rewrite = real, rewrite

    def __getattr__(self, name):
        return getattr(self._real, name)

    def hvr_in_copy(self, *args):
        self._rewrite()
        return self._real.hvr_in_copy(*args)


@pytest.mark.parametrize("where,value", [
    (PAGE + 16 + 8 + 3, 0xFF),    # byte_count: 100 -> ~4 GiB (needs more PFNs than given)
    (PAGE + 16 + 8 + 5, 0x10),    # byte_offset: 0 -> 4096 (not inside the first page)
    (PAGE + 16 + 8, 0),           # byte_count 100 -> 0 (an empty range)
])
def test_gpa_ranges_rewritten_after_validation_break_the_ring(monkeypatch, where, value):
    buf = bytearray(2 * PAGE)
    out, inr = R.OutRing(buf), R.InRing(buf)
    assert out.write_gpa_direct([(100, 0, [5])], b"payload!", trans_id=7)
    out.commit()
    if where == PAGE + 16 + 8:
        buf[where:where + 4] = bytes(4)
    monkeypatch.setattr(R, "lib", _RewriteBeforeCopy(R.lib, lambda: buf.__setitem__(
        where, value)))
    with pytest.raises(R.RingBrokenError) as e:
        inr.read()
    assert e.value.reason_name == "GPA ranges"
    monkeypatch.undo()
    # sticky, like every other corruption the C parser finds
    assert inr.broken == "GPA ranges"
    with pytest.raises(R.RingBrokenError):
        inr.peek()


def test_rewritten_range_count_is_not_used(monkeypatch):
    """The count the C parser validated is the one used; a later value in the copy is not."""
    buf = bytearray(2 * PAGE)
    out, inr = R.OutRing(buf), R.InRing(buf)
    assert out.write_gpa_direct([(100, 0, [5])], b"payload!")
    out.commit()
    monkeypatch.setattr(R, "lib", _RewriteBeforeCopy(R.lib, lambda: buf.__setitem__(
        PAGE + 16 + 4, 0x7F)))
    pkt = inr.read()
    assert pkt.range_count == 1 and len(pkt.gpa_ranges) == 1


def test_untouched_gpa_ranges_still_read_fine():
    buf = bytearray(2 * PAGE)
    out, inr = R.OutRing(buf), R.InRing(buf)
    assert out.write_gpa_direct([(100, 0, [5]), (8192, 4, [6, 7, 8])], b"x" * 16)
    out.commit()
    pkt = inr.read()
    assert [(g.byte_count, g.byte_offset, g.pfns) for g in pkt.gpa_ranges] == \
        [(100, 0, (5,)), (8192, 4, (6, 7, 8))]


# ---- GPADL limits (ChannelServer, no KVM) -------------------------------------------------------

def _gpadl_server():
    import uuid

    from hvkvm.vmbus import wire as w
    from hvkvm.vmbus.channels import ChannelServer, Offer
    sent = []
    cs = ChannelServer(sent.append, lambda gpa, n: 0 <= gpa and gpa + n <= 64 << 20, 1)
    cs.add_offer(Offer(uuid.uuid4(), uuid.uuid4()))
    m = w.vmbus_channel_initiate_contact()
    m.header.msgtype = w.CHANNELMSG_INITIATE_CONTACT
    m.vmbus_version_requested = w.VERSION_WIN10_V5_3
    m.msg_sint = 2
    cs.handle_message(4, bytes(m))
    sent.clear()
    return cs, sent


def _big_gpadl(cs, handle, npfn, pfn=5):
    """GPADL_HEADER + GPADL_BODYs naming page `pfn` npfn times (Linux's split: 26, then 28)."""
    import struct

    from hvkvm.vmbus import wire as w
    hdr = w.vmbus_channel_gpadl_header()
    hdr.header.msgtype = w.CHANNELMSG_GPADL_HEADER
    hdr.child_relid, hdr.gpadl = 1, handle
    hdr.range_buflen, hdr.rangecount = 8 + 8 * npfn, 1
    first = min(npfn, 26)
    cs.handle_message(4, bytes(hdr) + struct.pack("<II", npfn * PAGE, 0) +
                      struct.pack(f"<{first}Q", *[pfn] * first))
    left = npfn - first
    while left > 0:
        n = min(left, 28)
        body = w.vmbus_channel_gpadl_body()
        body.header.msgtype = w.CHANNELMSG_GPADL_BODY
        body.gpadl = handle
        cs.handle_message(4, bytes(body) + struct.pack(f"<{n}Q", *[pfn] * n))
        left -= n


def _created(sent):
    """(handle, creation_status) of every GPADL_CREATED sent."""
    import struct

    from hvkvm.vmbus import wire as w
    return [struct.unpack_from("<II", m, 12) for m in sent
            if struct.unpack_from("<I", m)[0] == w.CHANNELMSG_GPADL_CREATED]


def test_gpadl_pages_are_limited_per_partition():
    """The same page named 8190 times per GPADL: without a limit on the pages all GPADLs name
    together, 4096 such GPADLs would make the parent hold ~1.2 GB of PFN lists."""
    from hvkvm.vmbus.gpadl import MAX_GPADL_PAGES_TOTAL
    cs, sent = _gpadl_server()
    assert cs.max_gpadl_pages == MAX_GPADL_PAGES_TOTAL
    cs.max_gpadl_pages = 30000
    for h in range(1, 7):
        _big_gpadl(cs, h, 8190)
    created = _created(sent)
    assert [status == 0 for _h, status in created] == [True] * 3 + [False] * 3
    held = sum(g.page_count for ch in cs.channels.values() for g in ch.gpadls.values())
    assert held == 3 * 8190 <= cs.max_gpadl_pages
    assert "gpadl-pages" in cs._logged and cs.error_count > 3 * 292
    # tearing one down makes room again
    import struct

    from hvkvm.vmbus import wire as w
    cs.handle_message(4, struct.pack("<IIII", w.CHANNELMSG_GPADL_TEARDOWN, 0, 1, 1))
    sent.clear()
    _big_gpadl(cs, 100, 8190)
    assert _created(sent) == [(100, 0)]


def test_gpadls_still_arriving_count_against_the_limit():
    cs, sent = _gpadl_server()
    cs.max_gpadl_pages = 20000
    import struct

    from hvkvm.vmbus import wire as w
    for h in range(1, 4):   # headers announcing 8190 PFNs each, bodies never sent
        hdr = w.vmbus_channel_gpadl_header()
        hdr.header.msgtype = w.CHANNELMSG_GPADL_HEADER
        hdr.child_relid, hdr.gpadl = 1, h
        hdr.range_buflen, hdr.rangecount = 8 + 8 * 8190, 1
        cs.handle_message(4, bytes(hdr) + struct.pack("<IIQ", 8190 * PAGE, 0, 5))
    assert len(cs.channels[1].building) == 2
    assert _created(sent)[-1][0] == 3 and _created(sent)[-1][1] != 0


def test_gpadl_count_limit_is_answered(monkeypatch):
    """A GPADL past the count limit is refused with a GPADL_CREATED failure (not left
    unanswered: a Linux guest would wait for it forever)."""
    from hvkvm.vmbus import channels
    monkeypatch.setattr(channels, "MAX_GPADLS", 50)
    MAX_GPADLS = 50
    cs, sent = _gpadl_server()
    for h in range(1, MAX_GPADLS + 3):
        _big_gpadl(cs, h, 1)
    statuses = [status for _h, status in _created(sent)]
    assert statuses.count(0) == MAX_GPADLS and len(statuses) == MAX_GPADLS + 2


def test_security_md_names_every_attack_and_hostile_test():
    """SECURITY.md's table stays the list of what is tested: every attack in the hostile
    images' tables and every test of the hostile suite is named there."""
    import ast
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    doc = (root / "SECURITY.md").read_text()
    attacks = []
    for image in ("hostile_vmbus", "hostile_cpu", "hostile_dev"):
        src = (root / "guest_images" / "images" / image / "main.c").read_text()
        table = src[src.index("hostile_attacks[] = {"):]
        table = table[:table.index("{NULL, NULL}")]
        attacks += re.findall(r'\{"([a-z0-9_]+)",', table)
    assert len(attacks) >= 45
    tests = []
    for name in ("test_hostile.py", "test_hostile_units.py"):
        tree = ast.parse((root / "tests" / name).read_text())
        tests += [f.name for f in tree.body if isinstance(f, ast.FunctionDef)
                  and f.name.startswith("test_") and f.name != "test_security_md_names_every_"
                  "attack_and_hostile_test"]
    missing = [a for a in attacks if f"`{a}`" not in doc]
    missing += [t for t in tests if f"`{t}`" not in doc]
    assert not missing, f"SECURITY.md does not name: {missing}"


@pytest.mark.parametrize("which", ["receive", "send"])
def test_netvsc_buffers_over_linux_maximum_are_refused(which):
    """A receive buffer over 31 MiB or a send buffer over 15 MiB (more than Linux's hv_netvsc
    ever offers) is refused with NVSP_STAT_FAIL and an error saying why; the GPADL is not held
    (its teardown completes at once); a buffer of the maximum size is taken."""
    from fakenetvsc import RECV_GPA, gpadl, open_netvsc
    from storvsc_guest import PlanePartition

    from hvkvm.vmbus import wire as w
    from hvkvm.vsp import netvsc as nv
    from hvkvm.vsp import netvsc_wire as nw
    part = PlanePartition(64 << 20)
    vsp = nv.NetvscVsp(None, plane="python")
    server, (g,) = open_netvsc(part, [vsp])
    try:
        g.init(nw.NVSP_PROTOCOL_VERSION_61)
        limit = nv.MAX_RECV_BUFFER if which == "receive" else nv.MAX_SEND_BUFFER
        send = g.send_recv_buf if which == "receive" else g.send_send_buf
        status = (lambda r: r.msg.v1_msg.send_recv_buf_complete.status) if which == "receive" \
            else (lambda r: r.msg.v1_msg.send_send_buf_complete.status)
        big = gpadl(g.guest, g.relid, RECV_GPA, limit // PAGE + 1)
        assert status(send(big)) == nw.NVSP_STAT_FAIL
        assert any(f"{which} buffer of {limit + PAGE} bytes refused (at most {limit})" in e
                   for e in server.errors), list(server.errors)
        cs = server.channels
        assert cs.channels[g.relid].gpadls[big].users == 0      # not held
        td = w.vmbus_channel_gpadl_teardown()
        td.header.msgtype = w.CHANNELMSG_GPADL_TEARDOWN
        td.child_relid, td.gpadl = g.relid, big
        g.guest.post(bytes(td))
        assert any(int.from_bytes(m[:4], "little") == w.CHANNELMSG_GPADL_TORNDOWN
                   for m in g.guest.receive_all())
        ok = gpadl(g.guest, g.relid, RECV_GPA, limit // PAGE)
        assert status(send(ok)) == nw.NVSP_STAT_SUCCESS
        assert cs.channels[g.relid].gpadls[ok].users == 1       # held while in use
    finally:
        server.close()
        g.ch.close()
        part.close()
