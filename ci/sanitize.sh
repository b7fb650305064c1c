#!/usr/bin/env bash
# ci/sanitize.sh - run the hostile-guest suite against an ASan + UBSan build of csrc/.
#
# The sanitizer build never replaces the developer's own: the sources are copied to a temporary
# directory (the committed HEAD by default; SANITIZE_SOURCE=worktree copies the working tree as
# it is), the cffi extension is built there with HVKVM_SANITIZE=1 (in place, no pip install), and
# pytest runs from there with that copy first on PYTHONPATH and gcc's libasan + libubsan
# preloaded into Python. Any AddressSanitizer or UndefinedBehaviorSanitizer report fails the run
# (ASan aborts the process; every report is also written to a log that must stay empty).
#
# Usage: ci/sanitize.sh [PYTEST ARGS...]   (default: the hostile suite; e.g. -k ring_ to narrow)
# Env:   SANITIZE_SOURCE=head|worktree (head), SANITIZE_KEEP=1 keeps the temporary directory,
#        PYTHON=the interpreter (python3; tests/test_sanitize.py passes its own).
# Needs: gcc (libasan, libubsan), python3 with the test requirements, /dev/kvm.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

libasan="$(gcc -print-file-name=libasan.so)"
libubsan="$(gcc -print-file-name=libubsan.so)"
for lib in "$libasan" "$libubsan"; do
    if [ ! -e "$lib" ]; then
        echo "sanitize: $lib not found (Debian: apt-get install gcc; libasan8 and libubsan1 come with it)" >&2
        exit 2
    fi
done

work="$(mktemp -d "${TMPDIR:-/tmp}/hvkvm-sanitize.XXXXXX")"
if [ "${SANITIZE_KEEP:-0}" != 1 ]; then
    trap 'rm -rf "$work"' EXIT
fi
src="$work/src"
mkdir -p "$src" "$work/reports"

t0=$(date +%s)
case "${SANITIZE_SOURCE:-head}" in
head)
    git archive HEAD | tar -x -C "$src"
    echo "sanitize: sources of $(git rev-parse --short HEAD) in $src"
    ;;
worktree)
    # Tracked and new files as they are now, minus what .gitignore names (build output, a
    # virtualenv, caches); outside a git checkout, everything but the usual build output.
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z --cached --others --exclude-standard |
            (while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) |
            tar -c --null -T - | tar -x -C "$src"
    else
        tar -c --exclude=.git --exclude=build --exclude='*.so' --exclude='__pycache__' \
            --exclude='*.egg-info' --exclude=.venv --exclude=.pytest_cache . | tar -x -C "$src"
    fi
    echo "sanitize: working tree copied to $src"
    ;;
*)
    echo "sanitize: SANITIZE_SOURCE must be head or worktree" >&2
    exit 2
    ;;
esac

# The extension, in place in the copy: hvkvm/vmbus/_hvring*.so built with -fsanitize=address,undefined.
(cd "$src" && HVKVM_SANITIZE=1 "$PYTHON" setup.py -q build_ext --inplace >"$work/build.log" 2>&1) || {
    cat "$work/build.log" >&2
    echo "sanitize: building the sanitizer extension failed" >&2
    exit 1
}
export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
cd "$src"   # from here on, nothing of the developer's tree is imported
ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$libasan:$libubsan" "$PYTHON" - <<'EOF'
import hvkvm.vmbus._hvring as m, os, sys
src = os.environ["PYTHONPATH"].split(":")[0]
if not m.__file__.startswith(src):
    sys.exit(f"sanitize: Python imports {m.__file__}, not the copy in {src}")
print(f"sanitize: extension {m.__file__}")
EOF
if ! nm -D "$src"/hvkvm/vmbus/_hvring*.so | grep __asan_init >/dev/null; then
    echo "sanitize: the extension is not instrumented (no __asan_init)" >&2
    exit 1
fi

# The virtio-blk C plane (ctypes, built into the cache on first use) instrumented the same way:
# HVKVM_SANITIZE=1 stays set for the tests so hvkvm.vsp.virtio_blk picks the sanitized build.
export HVKVM_SANITIZE=1
vblk_so=$("$PYTHON" -c 'from hvkvm.vsp import virtio_blk; print(virtio_blk.plane_path())') || {
    echo "sanitize: building the sanitized virtio-blk C plane failed" >&2
    exit 1
}
if ! nm -D "$vblk_so" | grep __asan_init >/dev/null; then
    echo "sanitize: the virtio-blk C plane $vblk_so is not instrumented (no __asan_init)" >&2
    exit 1
fi
echo "sanitize: virtio-blk plane $vblk_so"

# Guest images first, without the sanitizer runtime in gcc.
"$PYTHON" - <<'EOF'
from hvkvm import images
for name in ("hostile_vmbus", "hostile_cpu", "hostile_dev", "vmbus_echo"):
    images.build_image(name)
EOF
t_build=$(date +%s)

if [ $# -eq 0 ]; then
    set -- tests/test_hostile.py tests/test_hostile_units.py tests/test_parsers_property.py
fi
[ -e /dev/kvm ] && export HVKVM_REQUIRE_KVM=1
# tests/test_sanitize.py sees this and does not start ci/sanitize.sh again from inside it.
export HVKVM_SANITIZED=1

# detect_leaks=0: CPython's own allocations are not ours to judge. abort_on_error: a report ends
# the process (pytest then fails). handle_segv=1: a fault in C is reported with its stack.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:handle_segv=1:allow_user_segv_handler=1:log_path=$work/reports/asan:log_exe_name=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$work/reports/ubsan"
rc=0
LD_PRELOAD="$libasan:$libubsan" "$PYTHON" -m pytest -p no:cacheprovider -q "$@" || rc=$?
t_end=$(date +%s)

reports=$(find "$work/reports" -type f | wc -l)
if [ "$reports" -gt 0 ]; then
    echo "sanitize: $reports sanitizer report(s):" >&2
    for f in "$work"/reports/*; do
        echo "==== $f" >&2
        head -60 "$f" >&2
    done
    [ $rc -eq 0 ] && rc=1
fi
echo "sanitize: build $((t_build - t0)) s, tests $((t_end - t_build)) s, pytest exit $rc, $reports sanitizer reports"
exit $rc
