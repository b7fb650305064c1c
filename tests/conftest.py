"""Shared fixtures: the ``kvm`` marker's skip/fail policy and partitions owned by the test."""

from __future__ import annotations

import os

import pytest

from hvkvm.doctor import kvm_usable

REQUIRE_KVM = os.environ.get("HVKVM_REQUIRE_KVM") == "1"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``kvm`` skip without a usable /dev/kvm, or fail when HVKVM_REQUIRE_KVM=1."""
    ok, why = kvm_usable()
    if ok:
        return
    for item in items:
        if "kvm" in item.keywords:
            if REQUIRE_KVM:
                item.add_marker(pytest.mark.usefixtures("_kvm_required_but_missing"))
            else:
                item.add_marker(pytest.mark.skip(reason=f"no usable KVM: {why}"))


@pytest.fixture
def _kvm_required_but_missing():
    ok, why = kvm_usable()
    pytest.fail(f"HVKVM_REQUIRE_KVM=1 but KVM is unusable: {why}")


@pytest.fixture
def make_partition():
    """A factory building ChildPartitions from a PartitionConfig; all are closed at teardown."""
    from hvkvm.partition.partition import ChildPartition
    built = []

    def factory(config):
        p = ChildPartition(config)
        built.append(p)
        return p

    yield factory
    for p in reversed(built):
        p.close()
