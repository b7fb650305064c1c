"""Shared fixtures. The ``kvm`` marker policy and the partition/image/disk fixtures come from
hvkvm's own pytest plugin (``hvkvm.pytest_plugin``, installed with the package)."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_partition(hvkvm_partition):
    """The plugin's ``hvkvm_partition`` factory under the name these tests use."""
    return hvkvm_partition
