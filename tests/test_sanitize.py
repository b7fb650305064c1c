"""The hostile-guest suite against an AddressSanitizer + UndefinedBehaviorSanitizer build of
``csrc/`` (``ci/sanitize.sh``): every attack that reaches C must leave zero sanitizer reports.

``ci/sanitize.sh`` copies the working tree (``SANITIZE_SOURCE=worktree``: the tree under test,
including uncommitted changes) to a temporary directory, builds the cffi extension there with
``HVKVM_SANITIZE=1`` (kept on for the tests, so the virtio-blk plane is instrumented too), preloads gcc's libasan + libubsan into Python and runs
``tests/test_hostile.py``, ``tests/test_hostile_units.py`` and ``tests/test_parsers_property.py``
from the copy. Any test failure or sanitizer report fails this test with the tail of the output.

Takes about two minutes (the hostile suite runs a second time, instrumented). Needs /dev/kvm (the
``kvm`` marker: fails instead of skipping under ``HVKVM_REQUIRE_KVM=1``) and gcc's libasan and
libubsan (package ``gcc``, which ``.ci/run`` installs: missing, this test fails under
``HVKVM_REQUIRE_KVM=1`` or ``HVKVM_REQUIRE_TOOLS=1`` and is skipped otherwise).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ci" / "sanitize.sh"

pytestmark = pytest.mark.kvm


def _required() -> bool:
    """CI installs the prerequisites: a missing one is a failure there, not a skip."""
    return "1" in (os.environ.get("HVKVM_REQUIRE_KVM"), os.environ.get("HVKVM_REQUIRE_TOOLS"))


def _missing(why: str):
    if _required():
        pytest.fail(f"{why} (HVKVM_REQUIRE_KVM/HVKVM_REQUIRE_TOOLS=1: .ci/run installs it)")
    pytest.skip(why)


def _sanitizer_runtimes() -> str | None:
    """None when gcc and its libasan + libubsan are there, else what is missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return "gcc not installed (Debian: apt-get install gcc)"
    for lib in ("libasan.so", "libubsan.so"):
        path = subprocess.run([gcc, f"-print-file-name={lib}"], capture_output=True,
                              text=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            return f"gcc has no {lib} (Debian: apt-get install gcc; it brings libasan/libubsan)"
    return None


def _nested_env() -> dict[str, str]:
    """The environment of the inner pytest: the outer run's options stay out of it."""
    env = dict(os.environ)
    # -x, -k, --junitxml=..., --lf of the outer run would narrow the inner suite or overwrite the
    # outer run's files; the inner run takes only the arguments ci/sanitize.sh gives it.
    for var in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER",
                "PYTEST_PLUGINS", "LD_PRELOAD", "SANITIZE_KEEP"):
        env.pop(var, None)
    env["SANITIZE_SOURCE"] = "worktree"
    env["PYTHON"] = sys.executable
    return env


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def test_hostile_suite_leaves_no_sanitizer_report():
    """ci/sanitize.sh on the working tree: the whole hostile suite passes, zero ASan/UBSan
    reports."""
    if os.environ.get("HVKVM_SANITIZED") == "1":
        # We are the inner run of ci/sanitize.sh itself (someone passed it tests/): no recursion.
        pytest.skip("already inside ci/sanitize.sh")
    missing = _sanitizer_runtimes()
    if missing:
        _missing(missing)
    res = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=_nested_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=1800)
    out = res.stdout
    summary = re.search(r"sanitize: build \d+ s, tests \d+ s, pytest exit (\d+), "
                        r"(\d+) sanitizer reports", out)
    assert res.returncode == 0, f"ci/sanitize.sh exit {res.returncode}:\n{_tail(out)}"
    assert summary, f"ci/sanitize.sh printed no summary:\n{_tail(out)}"
    assert summary.group(1) == "0" and summary.group(2) == "0", _tail(out)
    # The inner run really ran the suite (not an empty collection).
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 45, _tail(out)
    assert not re.search(r"\b\d+ (failed|error)", out), _tail(out)
    print(_tail(out, 3))
