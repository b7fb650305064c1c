"""hvkvm._record.Record: the dataclass stand-in the start-up path uses behaves like one."""

from __future__ import annotations

import pytest

from hvkvm._record import Record, factory


class Point(Record):
    """A record with a required field, a default and a per-instance factory default."""

    x: int
    y: int = 0
    tags: list = factory(list)


def test_fields_by_position_or_keyword_with_defaults_and_fresh_factories():
    a, b = Point(1), Point(x=1, y=0)
    assert a == b and a.y == 0 and a.tags == [] and a.tags is not b.tags
    assert Point(1, 2, ["t"]).tags == ["t"] and Point(1, 2) != Point(1, 3)
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=[])"
    assert Point(1) != (1, 0, [])


def test_missing_duplicate_and_unknown_arguments_are_type_errors():
    with pytest.raises(TypeError, match="missing argument 'x'"):
        Point()
    with pytest.raises(TypeError, match="twice"):
        Point(1, x=2)
    with pytest.raises(TypeError, match="unexpected arguments 'z'"):
        Point(1, z=3)
    with pytest.raises(TypeError, match="takes 3 arguments"):
        Point(1, 2, [], 4)


def test_a_required_field_after_a_default_is_refused_at_class_creation():
    with pytest.raises(TypeError, match="without a default follows"):
        class Bad(Record):
            a: int = 0
            b: int
