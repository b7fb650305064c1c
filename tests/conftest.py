"""Shared fixtures. The ``kvm`` marker policy and the partition/image/disk fixtures come from
hvkvm's own pytest plugin (``hvkvm.pytest_plugin``, installed with the package)."""

from __future__ import annotations

import itertools
import os

import pytest


@pytest.fixture
def make_partition(hvkvm_partition):
    """The plugin's ``hvkvm_partition`` factory under the name these tests use."""
    return hvkvm_partition


_netns_counter = itertools.count()


@pytest.fixture
def netns():
    """The name of a fresh network namespace (IPv6 off, ``lo`` up), deleted afterwards; the
    test's TAP devices and traffic live there. Skips without iproute2 or the right to create
    namespaces (root / CAP_SYS_ADMIN + CAP_NET_ADMIN)."""
    from hvkvm.vsp.netns import NetNamespace
    try:
        ns = NetNamespace(f"hvkvm-t{os.getpid()}-{next(_netns_counter)}")
    except OSError as e:
        pytest.skip(str(e))
    with ns:
        yield ns.name
