"""libFuzzer harnesses for every C parser that sees guest bytes (``csrc/fuzz/``): the VMBus ring
(packet descriptors, GPA ranges, indices), the storvsc plane (vstor_packet, SRB, CDB parsing),
the netvsc plane (NVSP, RNDIS, send sections, GPA-direct messages, frames from the TAP) and the
virtio-blk plane (descriptor chains, the available ring, request headers).

Each harness is built with clang (``-fsanitize=fuzzer,address,undefined``), replays its seed
corpus plus every regression input in ``csrc/fuzz/corpus/<harness>/`` once, then fuzzes for a
bounded time (``HVKVM_FUZZ_SECONDS``, default 15 s each) from a copy of the corpus. A crash, a
sanitizer report or a broken invariant fails the test and names the input: add it to the
corpus as ``crash-<what>`` (it is replayed from then on) and fix the C.

Needs clang and its compiler-rt (Debian 12: ``apt-get install clang libclang-rt-14-dev``, which
``.ci/run`` installs): skipped with that reason otherwise, but a failure under
``HVKVM_REQUIRE_TOOLS=1`` or ``HVKVM_REQUIRE_KVM=1`` (CI), where a skip would hide that the fuzzers
never ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
FUZZ = CSRC / "fuzz"
SECONDS = int(os.environ.get("HVKVM_FUZZ_SECONDS", "15"))
PACKAGES = "clang libclang-rt-14-dev"

#: harness -> the csrc sources it links
HARNESSES = {
    "fuzz_ring": ["vmbus_ring.c"],
    "fuzz_storage": ["vmbus_ring.c", "hvr_storage.c"],
    "fuzz_net": ["vmbus_ring.c", "hv_synic.c", "hvr_plane.c"],
    "fuzz_vblk": [],            # includes hvr_virtio_blk.c (one file, no header)
}
FLAGS = ["-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
         "-fno-omit-frame-pointer", "-DHVR_HOSTED", f"-I{CSRC}", "-Wall", "-Wno-unused-function"]


def _missing(why: str):
    """Skip, or fail where CI installed the tools and a skip would pass unnoticed."""
    if "1" in (os.environ.get("HVKVM_REQUIRE_TOOLS"), os.environ.get("HVKVM_REQUIRE_KVM")):
        pytest.fail(f"{why} (HVKVM_REQUIRE_TOOLS/HVKVM_REQUIRE_KVM=1: .ci/run installs it)")
    pytest.skip(why)


def _clang() -> str | None:
    return shutil.which("clang") or next(
        (p for p in (shutil.which(f"clang-{v}") for v in range(20, 13, -1)) if p), None)


@pytest.fixture(scope="module")
def clang(tmp_path_factory):
    cc = _clang()
    if cc is None:
        _missing(f"clang not installed (Debian: apt-get install {PACKAGES})")
    probe = tmp_path_factory.mktemp("probe")
    src = probe / "p.c"
    src.write_text("#include <stdint.h>\n#include <stddef.h>\n"
                   "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)"
                   "{ (void)d; (void)n; return 0; }\n")
    res = subprocess.run([cc, "-fsanitize=fuzzer,address,undefined", str(src), "-o",
                          str(probe / "p")], capture_output=True, text=True)
    if res.returncode != 0:
        _missing(f"clang cannot link libFuzzer/ASan (Debian: apt-get install {PACKAGES}): "
                    f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ''}")
    return cc


@pytest.fixture(scope="module")
def build(clang, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz-bin")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            exe = out / name
            cmd = [clang, *FLAGS, str(FUZZ / f"{name}.c"),
                   *(str(CSRC / s) for s in HARNESSES[name]), "-o", str(exe)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
            assert "warning" not in res.stderr, res.stderr
            built[name] = exe
        return built[name]

    return get


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:allocator_may_return_null=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    env.pop("LD_PRELOAD", None)   # the sanitizer CI job preloads gcc's libasan for Python
    return env


def _report(res: subprocess.CompletedProcess, workdir: Path) -> str:
    crashes = sorted(p for p in workdir.iterdir() if p.name.startswith(("crash-", "leak-",
                                                                       "timeout-", "oom-")))
    lines = [f"exit {res.returncode}"]
    for c in crashes:
        lines.append(f"{c.name}: {c.read_bytes()[:512].hex()}")
    tail = res.stderr.strip().splitlines()[-60:]
    return "\n".join(lines + tail)


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_corpus_replays_clean(build, name, tmp_path):
    """Every seed and every past crash input, once: no crash, no sanitizer report."""
    exe = build(name)
    corpus = FUZZ / "corpus" / name
    files = sorted(p for p in corpus.iterdir() if p.is_file())
    assert files, f"{corpus} has no inputs"
    res = subprocess.run([str(exe), "-runs=0", f"-artifact_prefix={tmp_path}/",
                          *map(str, files)], capture_output=True, text=True, env=_env(),
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, _report(res, tmp_path)
    assert f"Executed {files[-1]}" in res.stderr or "Running:" in res.stderr


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_fuzz_for_a_bounded_time(build, name, tmp_path):
    """libFuzzer from the seed corpus for HVKVM_FUZZ_SECONDS: no crash, leak or report."""
    if SECONDS <= 0:
        pytest.skip("HVKVM_FUZZ_SECONDS=0")
    exe = build(name)
    work = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / name, work)
    res = subprocess.run([str(exe), str(work), f"-max_total_time={SECONDS}", "-timeout=10",
                          "-rss_limit_mb=2048", "-max_len=4096", "-print_final_stats=1",
                          f"-artifact_prefix={tmp_path}/"],
                         capture_output=True, text=True, env=_env(), cwd=tmp_path,
                         timeout=SECONDS + 120)
    assert res.returncode == 0, _report(res, tmp_path)
    runs = [ln for ln in res.stderr.splitlines() if ln.startswith("stat::number_of_executed_units")]
    assert runs and int(runs[0].split(":")[-1]) > 100, res.stderr[-2000:]


def test_seed_corpus_matches_its_generator(tmp_path):
    """csrc/fuzz/corpus/*/seed-* are what make_corpus.py writes (regenerate after a format
    change)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_corpus", FUZZ / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_corpus"] = mod
    spec.loader.exec_module(mod)
    for name, seeds in (("fuzz_ring", mod.ring_seeds()), ("fuzz_storage", mod.storage_seeds()),
                        ("fuzz_net", mod.net_seeds()), ("fuzz_vblk", mod.vblk_seeds())):
        for key, data in seeds.items():
            path = FUZZ / "corpus" / name / f"seed-{key}"
            assert path.is_file() and path.read_bytes() == data, \
                f"{path} is stale: run python3 csrc/fuzz/make_corpus.py"
