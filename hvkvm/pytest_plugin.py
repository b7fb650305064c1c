"""hvkvm's pytest plugin (registered through the ``pytest11`` entry point).

- Marker ``@pytest.mark.kvm``: the test needs a usable /dev/kvm. Without one it is skipped with
  the doctor's reason; under ``HVKVM_REQUIRE_KVM=1`` it fails instead (CI on a KVM runner).
- Fixtures: ``hvkvm_partition`` (a factory building ChildPartitions from a PartitionConfig, all
  closed at teardown), ``hvkvm_image`` (build or look up a guest image by name or path),
  ``hvkvm_disk`` (a factory for temporary raw disk files).
- Guest tests: ``pytest --hvkvm-image IMAGE`` (repeatable; a built-in image name or an ELF path),
  the ``hvkvm_images`` ini option, or a ``pytest_hvkvm_images(config)`` hook in a conftest
  collect every ``HV_TEST`` of the image as a pytest item. A failure shows the guest's file:line,
  message, registers and a symbolized backtrace; expected failures (``HV_TEST_XFAIL``) are strict
  xfails. JUnit XML comes from pytest (``--junitxml``).
- Fast reset: ``--hvkvm-reset snapshot`` (or ini ``hvkvm_reset = snapshot``) boots each image
  once per vCPU count to the runtime's test dispatch, snapshots it there and starts every test
  from that snapshot (:class:`hvkvm.guesttests.FastReset`); the default boots every test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .guesttests import GuestTest, describe_failure, discover, outcome, run_test


class _Hooks:
    """Hook specifications hvkvm adds to pytest."""

    @pytest.hookspec(firstresult=False)
    def pytest_hvkvm_images(self, config):
        """Return guest images (names or ELF paths) whose HV_TESTs become pytest items."""


def pytest_addhooks(pluginmanager):
    """Register ``pytest_hvkvm_images``."""
    pluginmanager.add_hookspecs(_Hooks)


def pytest_addoption(parser):
    """``--hvkvm-image`` and the ``hvkvm_images`` ini option."""
    group = parser.getgroup("hvkvm", "guest tests on hvkvm child partitions")
    group.addoption("--hvkvm-image", action="append", default=[], metavar="IMAGE",
                    help="collect the HV_TESTs of IMAGE (a built-in image name or an ELF file)")
    parser.addini("hvkvm_images", "guest images whose HV_TESTs are collected", type="linelist",
                  default=[])
    group.addoption("--hvkvm-reset", choices=["boot", "snapshot"], default=None,
                    help="start each guest test from a fresh boot (default) or from a snapshot "
                         "taken once at the runtime's test dispatch (fast reset)")
    parser.addini("hvkvm_reset", "boot or snapshot: how each guest test starts", default="boot")


def _kvm_state():
    from .doctor import kvm_usable
    return kvm_usable()


def pytest_configure(config):
    """Register the marker; add the requested guest images to what pytest collects."""
    config.addinivalue_line("markers", "kvm: needs a usable /dev/kvm (skips without one; fails "
                                       "under HVKVM_REQUIRE_KVM=1)")
    names = list(config.getoption("hvkvm_image") or []) + list(config.getini("hvkvm_images"))
    for extra in config.pluginmanager.hook.pytest_hvkvm_images(config=config):
        names += list(extra or [])
    images = []
    if names:
        from .images import ImageError, resolve_image
        for n in names:
            try:
                images.append(Path(resolve_image(str(n))).resolve())
            except ImageError as e:
                raise pytest.UsageError(f"--hvkvm-image {n}: {e}") from None
    config._hvkvm_images = set(images)
    for img in images:
        if str(img) not in config.args:
            config.args.append(str(img))


def pytest_collect_file(file_path, parent):
    """A requested guest image file becomes a collector of its HV_TESTs."""
    images = getattr(parent.config, "_hvkvm_images", set())
    if Path(file_path).resolve() in images:
        # Node ids name the image, not its cache path: ``selftest::printf_formats``.
        name = Path(file_path).stem.split("-")[0]
        return GuestImage.from_parent(parent, path=Path(file_path), nodeid=name)
    return None


def pytest_collection_modifyitems(config, items):
    """``kvm`` items: skip without KVM, or fail under HVKVM_REQUIRE_KVM=1."""
    if not any("kvm" in item.keywords for item in items):
        return
    ok, why = _kvm_state()
    if ok:
        return
    for item in items:
        if "kvm" in item.keywords:
            if os.environ.get("HVKVM_REQUIRE_KVM") == "1":
                item.add_marker(pytest.mark.usefixtures("_hvkvm_kvm_required"))
            else:
                item.add_marker(pytest.mark.skip(reason=f"no usable KVM: {why}"))


@pytest.fixture
def _hvkvm_kvm_required():
    ok, why = _kvm_state()
    pytest.fail(f"HVKVM_REQUIRE_KVM=1 but KVM is unusable: {why}")


class GuestTestFailure(Exception):
    """A guest test did not pass (carries the test and its RunResult)."""

    def __init__(self, test: GuestTest, result):
        super().__init__(result.reason)
        self.test = test
        self.result = result


class GuestImage(pytest.File):
    """An ELF guest image; its items are its HV_TESTs."""

    def collect(self):
        """One :class:`GuestTestItem` per HV_TEST."""
        for t in discover(self.path):
            item = GuestTestItem.from_parent(self, name=t.name, test=t)
            item.add_marker(pytest.mark.kvm)
            if t.xfail:
                item.add_marker(pytest.mark.xfail(reason="HV_TEST_XFAIL", strict=True,
                                                  raises=GuestTestFailure))
            yield item


class GuestTestItem(pytest.Item):
    """One guest test, run in its own child partition."""

    def __init__(self, *, test: GuestTest, **kw):
        super().__init__(**kw)
        self.test = test

    def runtest(self):
        """Boot the image with test=NAME (or restore its snapshot under ``--hvkvm-reset
        snapshot``); fail with the guest's report unless it passed."""
        result = run_test(self.test, fast_reset=_fast_reset(self.config, self.test.image))
        self.user_properties.append(("hvkvm_status", result.status))
        if outcome(self.test, result) in ("fail", "xfail"):
            raise GuestTestFailure(self.test, result)

    def repr_failure(self, excinfo):
        """The guest's file:line, message, registers and backtrace instead of a Python trace."""
        if isinstance(excinfo.value, GuestTestFailure):
            return describe_failure(excinfo.value.test, excinfo.value.result)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        """Where the test is: the guest source file and line."""
        return self.test.file, self.test.line - 1, f"guest test {self.test.name}"


def _fast_reset(config, image):
    """The session's FastReset for ``image`` under ``--hvkvm-reset snapshot``, else None."""
    mode = config.getoption("hvkvm_reset") or config.getini("hvkvm_reset") or "boot"
    if mode != "snapshot":
        return None
    runners = getattr(config, "_hvkvm_fast_resets", None)
    if runners is None:
        runners = config._hvkvm_fast_resets = {}

        def close_all():
            for r in runners.values():
                r.close()

        config.add_cleanup(close_all)
    if image not in runners:
        from .guesttests import FastReset
        runners[image] = FastReset(image)
    return runners[image]


@pytest.fixture
def hvkvm_partition():
    """A factory: ``hvkvm_partition(PartitionConfig(...))`` -> ChildPartition, closed at teardown."""
    from .partition.partition import ChildPartition
    built = []

    def factory(config):
        p = ChildPartition(config)
        built.append(p)
        return p

    yield factory
    for p in reversed(built):
        p.close()


@pytest.fixture
def hvkvm_image():
    """``hvkvm_image(name_or_path)`` -> Path of a built (cached) guest image."""
    from .images import resolve_image
    return lambda name: Path(resolve_image(str(name)))


@pytest.fixture
def hvkvm_disk(tmp_path):
    """``hvkvm_disk(size="16M", name="disk.img")`` -> Path of a new sparse raw disk file."""
    from .vsp.disk import create_disk
    counter = iter(range(1_000_000))

    def factory(size="16M", name=None):
        path = tmp_path / (name or f"disk{next(counter)}.img")
        create_disk(path, size)
        return path

    return factory
