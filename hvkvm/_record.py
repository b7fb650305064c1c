"""A small stand-in for ``@dataclass`` on the ``hvkvm run`` start-up path.

``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``): a large share of
a bare interpreter's start-up time, paid by every ``hvkvm run`` for a handful of plain records
(issue 6 measures the whole process against ``python3 -c pass``). :class:`Record` gives those
classes what they used from dataclasses: an ``__init__`` taking the annotated fields in order
(positionally or by keyword), class-level defaults, per-instance defaults from :func:`factory`,
``__repr__`` and ``__eq__``.
"""

from __future__ import annotations


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


def factory(make) -> "_Factory":
    """A default built anew for every instance (``field(default_factory=make)``)."""
    return _Factory(make)


_MISSING = object()


class Record:
    """Base of a plain record: its fields are the annotated class attributes, in order (a
    subclass's fields follow its bases'); a field without a class-level value is required."""

    _fields: tuple[str, ...] = ()
    _defaults: dict = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        fields = list(cls._fields)
        defaults = dict(cls._defaults)
        for name in cls.__dict__.get("__annotations__", {}):
            if name.startswith("_") and name in ("_fields", "_defaults"):
                continue
            if name not in fields:
                fields.append(name)
            value = cls.__dict__.get(name, _MISSING)
            if value is not _MISSING:
                defaults[name] = value
                if isinstance(value, _Factory):
                    delattr(cls, name)
        seen_default = False
        for name in fields:
            if name in defaults:
                seen_default = True
            elif seen_default:
                raise TypeError(f"{cls.__name__}: field {name!r} without a default follows one "
                                f"with a default")
        cls._fields = tuple(fields)
        cls._defaults = defaults

    def __init__(self, *args, **kwargs):
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments, "
                            f"{len(args)} given")
        for name, value in zip(fields, args):
            if name in kwargs:
                raise TypeError(f"{type(self).__name__}() got {name!r} twice")
            kwargs[name] = value
        defaults = self._defaults
        for name in fields:
            if name in kwargs:
                value = kwargs.pop(name)
            elif name in defaults:
                value = defaults[name]
                if isinstance(value, _Factory):
                    value = value.make()
            else:
                raise TypeError(f"{type(self).__name__}() missing argument {name!r}")
            object.__setattr__(self, name, value)
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got unexpected arguments "
                            f"{', '.join(map(repr, kwargs))}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    __hash__ = None  # mutable, like a dataclass with eq=True
