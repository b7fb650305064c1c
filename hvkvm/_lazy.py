"""Deferred imports for the ``hvkvm run`` start-up path.

``hvkvm run hello`` is measured against a bare interpreter (issue 6): a module that is only
needed when something goes wrong (``logging`` for a warning) should not be imported on every
start. :func:`logger` returns a stand-in that imports :mod:`logging` on first use.
"""

from __future__ import annotations


class _LazyLogger:
    """Forwards every attribute to ``logging.getLogger(name)``, importing logging on first use."""

    __slots__ = ("_name", "_logger")

    def __init__(self, name: str):
        self._name = name
        self._logger = None

    def __getattr__(self, attr: str):
        logger = self._logger
        if logger is None:
            import logging
            logger = self._logger = logging.getLogger(self._name)
        return getattr(logger, attr)


def logger(name: str) -> "_LazyLogger":
    """A ``logging.Logger`` stand-in for ``name`` (``log.warning(...)`` etc. work as usual)."""
    return _LazyLogger(name)
