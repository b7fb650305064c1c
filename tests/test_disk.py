"""Disk images: ``hvkvm disk create``, the Disk backend's checks and locks, ``--disk`` errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hvkvm.vsp.disk import Disk, DiskError, create_disk, parse_disk_spec

HVKVM = [sys.executable, "-m", "hvkvm.cli"]


def hvkvm(*args, timeout=120):
    return subprocess.run(HVKVM + list(args), capture_output=True, text=True, timeout=timeout)


def one_line_error(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("hvkvm: error: ")
    return lines[0]


def test_disk_create_makes_a_sparse_image(tmp_path):
    path = tmp_path / "new.img"
    r = hvkvm("disk", "create", str(path), "64M")
    assert r.returncode == 0, r.stderr
    assert "67108864 bytes" in r.stdout
    st = os.stat(path)
    assert st.st_size == 64 << 20 and st.st_blocks == 0
    assert "already exists" in one_line_error(hvkvm("disk", "create", str(path), "1M"))
    assert os.stat(path).st_size == 64 << 20                # not truncated
    for bad in ("1000", "0", "-5", "lots", "12Q"):
        one_line_error(hvkvm("disk", "create", str(tmp_path / f"b{bad}.img"), bad))
    assert "cannot create" in one_line_error(hvkvm("disk", "create",
                                                   str(tmp_path / "no" / "dir.img"), "1M"))
    assert "ACTION" in one_line_error(hvkvm("disk"))


def test_disk_checks_each_say_one_thing(tmp_path):
    with pytest.raises(DiskError, match="no such file"):
        Disk(tmp_path / "missing.img")
    with pytest.raises(DiskError, match="is a directory"):
        Disk(tmp_path)
    (tmp_path / "odd.img").write_bytes(b"x" * 1000)
    with pytest.raises(DiskError, match="not a multiple of 512"):
        Disk(tmp_path / "odd.img")
    (tmp_path / "empty.img").write_bytes(b"")
    with pytest.raises(DiskError, match="empty"):
        Disk(tmp_path / "empty.img")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DiskError, match="not a regular file"):
        Disk(tmp_path / "fifo", readonly=True)
    with pytest.raises(DiskError, match="unknown option"):
        parse_disk_spec("a.img,rw")
    assert parse_disk_spec("a.img,direct,ro") == ("a.img", True, True)


def test_locks_keep_writers_exclusive(tmp_path):
    path = tmp_path / "shared.img"
    create_disk(path, 1 << 20)
    with Disk(path) as d:
        assert d.sectors == 2048 and not d.readonly
        with pytest.raises(DiskError, match="locked by another partition"):
            Disk(path)
        with pytest.raises(DiskError, match="locked by another partition"):
            Disk(path, readonly=True)
        # another process (another partition's worker) is refused too
        r = subprocess.run([sys.executable, "-c", f"from hvkvm.vsp.disk import Disk; "
                                                  f"Disk({str(path)!r})"],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "locked by another partition" in r.stderr
    with Disk(path, readonly=True) as a, Disk(path, readonly=True) as b:
        assert a.readonly and b.readonly
        with pytest.raises(DiskError, match="locked"):
            Disk(path)
    Disk(path).close()                                         # all released


def test_unreadable_disk_is_one_line(tmp_path):
    """A disk the worker may not read (as an unprivileged file-system user: root reads
    anything, so the child drops to fsuid 65534 first)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch the file-system user")
    path = tmp_path / "secret.img"
    create_disk(path, 1 << 20)
    os.chmod(path, 0o000)
    code = ("import ctypes, sys\n"
            "from hvkvm.vsp.disk import Disk, DiskError\n"
            "ctypes.CDLL(None).setfsuid(65534)\n"
            f"try:\n    Disk({str(path)!r}, readonly=True)\n"
            "except DiskError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().endswith("permission denied: the disk must be readable"), \
        r.stdout + r.stderr


def test_direct_io_reads_and_writes_with_and_without_bounce(tmp_path):
    import mmap
    path = tmp_path / "direct.img"
    create_disk(path, 1 << 20)
    with Disk(path, direct=True) as d:
        aligned = mmap.mmap(-1, 8192)
        aligned[:8192] = bytes(range(256)) * 32
        assert d.writev([memoryview(aligned)], 4096) == 8192
        odd = bytearray(4096 + 3)
        view = memoryview(odd)[3:]                         # misaligned: bounced
        assert d.readv([view], 4096) == 4096
        assert bytes(view) == aligned[:4096]
        d.flush()
        d.punch(4096, 4096)
        back = mmap.mmap(-1, 4096)
        d.readv([memoryview(back)], 4096)
        assert back[:4096] == bytes(4096)


def test_run_with_bad_disks_is_one_line_exit_2(tmp_path):
    good = tmp_path / "good.img"
    create_disk(good, 1 << 20)
    (tmp_path / "odd.img").write_bytes(b"x" * 513)
    assert "no such file" in one_line_error(hvkvm("run", "hello", "--disk",
                                                  str(tmp_path / "none.img")))
    assert "not a multiple of 512" in one_line_error(
        hvkvm("run", "hello", "--disk", str(tmp_path / "odd.img")))
    assert "unknown option" in one_line_error(hvkvm("run", "hello", "--disk", f"{good},fast"))
    assert "locked by another partition" in one_line_error(
        hvkvm("run", "hello", "--disk", str(good), "--disk", str(good)))
    with Disk(good):
        assert "locked by another partition" in one_line_error(
            hvkvm("run", "hello", "--disk", f"{good},ro"))
    one_line_error(hvkvm("run", "hello", "--dataplane", "rust"))


@pytest.mark.kvm
@pytest.mark.parametrize("plane", ["c", "python"])
def test_run_offers_disks_and_releases_them(tmp_path, plane):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    create_disk(a, 1 << 20)
    create_disk(b, 1 << 20)
    r = hvkvm("run", "hello", "--disk", str(a), "--disk", f"{b},ro", "--dataplane", plane,
              "--timeout", "60")
    assert r.returncode == 0, r.stderr
    Disk(a).close()                     # the run's locks are gone
