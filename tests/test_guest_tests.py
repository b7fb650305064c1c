"""Guest tests as pytest items: discovery from the ELF, the plugin, and ``hvkvm test``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hvkvm.guesttests import discover, select, tap_report
from hvkvm.images import image_path


def test_discovery_reads_names_flags_vcpus_and_timeouts_from_the_elf():
    tests = {t.name: t for t in discover(image_path("selftest"))}
    assert {"arithmetic_in_ring0", "runs_in_ring3", "two_vcpus_come_up",
            "failing_assert_is_expected", "ring3_fault_is_reported"} <= tests.keys()
    assert tests["runs_in_ring3"].user and not tests["runs_in_ring3"].xfail
    assert tests["failing_assert_is_expected"].xfail
    assert (tests["two_vcpus_come_up"].vcpus, tests["two_vcpus_come_up"].timeout_s) == (2, 60)
    assert tests["arithmetic_in_ring0"].file.endswith("selftest/main.c")
    assert tests["arithmetic_in_ring0"].line > 0


def test_an_image_without_tests_has_none():
    assert discover(image_path("hello")) == []


def test_k_expressions_select_like_pytest():
    tests = discover(image_path("selftest"))
    names = lambda e: {t.name for t in select(tests, e)}   # noqa: E731
    assert names("ring3 and not fault") == {"runs_in_ring3"}
    assert names("printf or cmdline") == {"printf_formats", "cmdline_reaches_the_test"}
    with pytest.raises(ValueError):
        select(tests, "(")


def run_pytest(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.kvm
def test_plugin_collects_and_runs_every_guest_test(tmp_path):
    r = run_pytest(tmp_path, "--hvkvm-image", "selftest", "-rxX",
                   "--junitxml", str(tmp_path / "j.xml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 passed, 3 xfailed" in r.stdout
    assert "selftest::failing_assert_is_expected" in r.stdout
    assert 'name="printf_formats"' in (tmp_path / "j.xml").read_text()


@pytest.mark.kvm
def test_a_failing_guest_test_shows_file_line_registers_and_backtrace(tmp_path):
    r = run_pytest(tmp_path, "--hvkvm-image", "selftest", "--runxfail", "-k",
                   "failing_assert or ring3_fault")
    assert r.returncode == 1
    out = r.stdout
    assert "images/selftest/main.c:44" in out                      # the assert's file:line
    assert "an expected failure" in out                            # its message
    assert "RAX=" in out and "RIP=" in out                         # registers
    assert "<failing_assert_is_expected+0x" in out                 # symbolized backtrace
    assert "#PF page fault in ring 3" in out


def test_conftest_hook_adds_images(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "def pytest_hvkvm_images(config):\n    return ['selftest']\n")
    r = run_pytest(tmp_path, "--collect-only")
    assert "selftest::runs_in_ring3" in r.stdout, r.stdout + r.stderr


def test_unknown_image_is_a_usage_error(tmp_path):
    r = run_pytest(tmp_path, "--hvkvm-image", "no_such_image")
    assert r.returncode == 4 and "no_such_image" in r.stderr


@pytest.mark.kvm
def test_hvkvm_test_prints_tap13():
    r = subprocess.run([sys.executable, "-m", "hvkvm.cli", "test", "selftest", "--tap"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "TAP version 13" and lines[1] == "1..8"
    assert "ok 5 - failing_assert_is_expected # TODO expected failure" in lines


def test_tap_report_marks_failures_with_yaml_detail():
    from hvkvm.partition.result import RunResult
    t = discover(image_path("selftest"))[0]
    text = tap_report([(t, RunResult("assert", "boom", backtrace=["0x1 <f>"]))])
    assert "not ok 1 - arithmetic_in_ring0" in text and "message: 'boom'" in text
