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
