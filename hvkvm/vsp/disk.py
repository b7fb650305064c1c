"""Disk backends: raw image files behind a storage VSP.

A :class:`Disk` is one open raw image (a sparse regular file of whole 512-byte sectors). It owns
its file descriptor and an open-file-description lock (``F_OFD_SETLK``) on the whole file: a
writable disk takes a write lock, a read-only one a read lock, so two partitions never share a
writable disk (read-only sharing is fine). Options: ``readonly``; ``direct`` (``O_DIRECT``: I/O
bypasses the page cache; a buffer that is not 512-byte aligned goes through an aligned bounce
buffer). Every problem opening it is a :class:`DiskError` with one clear line.

The data path (Python plane) moves bytes between the file and guest RAM with ``preadv`` /
``pwritev`` on memoryviews of guest RAM; the C plane does the same with the same file
descriptor (``csrc/hvr_storage.c``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import stat
import struct

SECTOR_SIZE = 512
#: Alignment O_DIRECT buffers, offsets and lengths are held to (the logical block size).
DIRECT_ALIGN = 512
#: Largest disk accepted (2^63 bytes is what off_t holds; LBAs are 64-bit anyway).
MAX_DISK_SIZE = 1 << 62

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


class DiskError(Exception):
    """A disk cannot be created or opened; ``str()`` is one line naming the file and why."""


def parse_disk_size(text: str | int) -> int:
    """``10G``, ``512M``, ``4096`` ... -> bytes; a positive multiple of 512 or DiskError."""
    from ..partition.config import parse_size
    try:
        size = parse_size(text)
    except ValueError as e:
        raise DiskError(str(e)) from None
    if size <= 0 or size % SECTOR_SIZE:
        raise DiskError(f"disk size {size} is not a positive multiple of {SECTOR_SIZE} bytes")
    if size > MAX_DISK_SIZE:
        raise DiskError(f"disk size {size} is too large")
    return size


def create_disk(path: str | os.PathLike, size: str | int) -> int:
    """Create a new sparse raw image of ``size`` bytes (no blocks allocated); returns the size.

    Refuses an existing file (DiskError), so an image is never truncated by accident.
    """
    nbytes = parse_disk_size(size)
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise DiskError(f"{path}: already exists (not overwriting a disk)") from None
    except OSError as e:
        raise DiskError(f"{path}: cannot create: {e.strerror}") from None
    try:
        os.ftruncate(fd, nbytes)
    except OSError as e:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise DiskError(f"{path}: cannot size to {nbytes} bytes: {e.strerror}") from None
    os.close(fd)
    return nbytes


def _flock(kind: int) -> bytes:
    # struct flock on x86-64: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
    return struct.pack("hh4xqqi4x", kind, os.SEEK_SET, 0, 0, 0)


class Disk:
    """One open raw image. Idempotent :meth:`close`; a context manager.

    ``sectors`` is the size in 512-byte logical blocks. ``serial`` and ``naa`` identify the disk
    to the guest (SCSI VPD pages 0x80, 0x83); by default they are derived from the file's real
    path, so the same file looks the same to the guest across runs.
    """

    def __init__(self, path: str | os.PathLike, readonly: bool = False, direct: bool = False,
                 serial: str | None = None):
        self.path = os.fspath(path)
        self.readonly = bool(readonly)
        self.direct = bool(direct)
        self.fd = -1
        self._bounce: mmap.mmap | None = None
        flags = (os.O_RDONLY if self.readonly else os.O_RDWR) | os.O_CLOEXEC
        if self.direct:
            flags |= os.O_DIRECT
        p = self.path
        try:
            # A FIFO or device would block or misbehave in open(): refuse it before opening.
            st = os.stat(p)
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
                raise DiskError(f"{p}: not a regular file (raw image files only)")
        except OSError:
            pass                                # open() below says what is wrong
        try:
            self.fd = os.open(p, flags | os.O_NONBLOCK)
        except FileNotFoundError:
            raise DiskError(f"{p}: no such file (make one with `hvkvm disk create {p} SIZE`)") \
                from None
        except IsADirectoryError:
            raise DiskError(f"{p}: is a directory, not a disk image") from None
        except PermissionError:
            how = "readable" if self.readonly else "readable and writable (or add ,ro)"
            raise DiskError(f"{p}: permission denied: the disk must be {how}") from None
        except OSError as e:
            if e.errno == errno.EINVAL and self.direct:
                raise DiskError(f"{p}: the filesystem does not support O_DIRECT (drop ,direct)") \
                    from None
            if e.errno == errno.EROFS:
                raise DiskError(f"{p}: on a read-only filesystem (add ,ro)") from None
            raise DiskError(f"{p}: cannot open: {e.strerror}") from None
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                raise DiskError(f"{p}: not a regular file (raw image files only)")
            self.size = st.st_size
            if self.size == 0:
                raise DiskError(f"{p}: is empty (0 bytes)")
            if self.size % SECTOR_SIZE:
                raise DiskError(f"{p}: size {self.size} is not a multiple of {SECTOR_SIZE} bytes")
            try:
                fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK,
                            _flock(fcntl.F_RDLCK if self.readonly else fcntl.F_WRLCK))
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise DiskError(f"{p}: locked by another partition (in use"
                                    f"{'' if self.readonly else ', or open read-only'})") from None
                raise DiskError(f"{p}: cannot lock: {e.strerror}") from None
            # Prove the file is readable now rather than at the guest's first read.
            try:
                self._probe_read()
            except OSError as e:
                raise DiskError(f"{p}: unreadable: {e.strerror}") from None
            real = os.path.realpath(p)
            digest = hashlib.sha256(f"{real}\0{st.st_dev}\0{st.st_ino}".encode()).digest()
            self.serial = serial if serial is not None else digest[:10].hex().upper()
            #: NAA 3 (locally assigned) 8-byte identifier for VPD page 0x83
            self.naa = bytes([0x30 | (digest[10] & 0x0F)]) + digest[11:18]
        except BaseException:
            self.close()
            raise

    def _probe_read(self) -> None:
        buf = self._aligned(SECTOR_SIZE) if self.direct else bytearray(SECTOR_SIZE)
        os.preadv(self.fd, [memoryview(buf)[:SECTOR_SIZE]], 0)

    def _aligned(self, size: int) -> mmap.mmap:
        """A page-aligned scratch buffer of at least ``size`` bytes (for O_DIRECT bounces)."""
        if self._bounce is None or len(self._bounce) < size:
            if self._bounce is not None:
                self._bounce.close()
            self._bounce = mmap.mmap(-1, max(size, mmap.PAGESIZE))
        return self._bounce

    # -- properties -------------------------------------------------------------------------

    @property
    def sectors(self) -> int:
        """Size in 512-byte logical blocks."""
        return self.size // SECTOR_SIZE

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self.fd < 0

    def fileno(self) -> int:
        """The image's file descriptor (the C plane does its I/O on it)."""
        if self.fd < 0:
            raise ValueError("disk is closed")
        return self.fd

    def __repr__(self) -> str:
        opts = "".join(f",{o}" for o, on in (("ro", self.readonly), ("direct", self.direct)) if on)
        return f"Disk({self.path}{opts}, {self.size} bytes)"

    # -- I/O ---------------------------------------------------------------------------------

    @staticmethod
    def _direct_ok(bufs: list[memoryview], offset: int) -> bool:
        if offset % DIRECT_ALIGN:
            return False
        for b in bufs:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(b)) if not b.readonly else None
            if addr is None or addr % DIRECT_ALIGN or b.nbytes % DIRECT_ALIGN:
                return False
        return True

    def readv(self, bufs: list[memoryview], offset: int) -> int:
        """Fill ``bufs`` from the image at byte ``offset``; returns the bytes read (short only
        at end of file). OSError on I/O errors."""
        total = sum(b.nbytes for b in bufs)
        if self.direct and not self._direct_ok(bufs, offset):
            bounce = self._aligned(total)
            n = self._preadv_all([memoryview(bounce)[:total]], offset)
            pos = 0
            for b in bufs:
                take = min(b.nbytes, n - pos)
                if take <= 0:
                    break
                b[:take] = bounce[pos:pos + take]
                pos += take
            return n
        return self._preadv_all(bufs, offset)

    def writev(self, bufs: list[memoryview], offset: int) -> int:
        """Write ``bufs`` to the image at byte ``offset``; returns the bytes written."""
        if self.readonly:
            raise OSError(errno.EBADF, "disk is read-only")
        total = sum(b.nbytes for b in bufs)
        if self.direct and not self._direct_ok(bufs, offset):
            bounce = self._aligned(total)
            pos = 0
            for b in bufs:
                bounce[pos:pos + b.nbytes] = b
                pos += b.nbytes
            return self._pwritev_all([memoryview(bounce)[:total]], offset)
        return self._pwritev_all(bufs, offset)

    def _preadv_all(self, bufs: list[memoryview], offset: int) -> int:
        done = 0
        while bufs:
            n = os.preadv(self.fd, bufs[:1024], offset + done)
            if n == 0:
                break           # end of file
            done += n
            bufs = _advance(bufs, n)
        return done

    def _pwritev_all(self, bufs: list[memoryview], offset: int) -> int:
        done = 0
        while bufs:
            n = os.pwritev(self.fd, bufs[:1024], offset + done)
            if n == 0:
                raise OSError(errno.EIO, "pwritev wrote nothing")
            done += n
            bufs = _advance(bufs, n)
        return done

    def flush(self) -> None:
        """Make every acknowledged write durable (fdatasync)."""
        os.fdatasync(self.fd)

    def punch(self, offset: int, length: int) -> None:
        """Deallocate [offset, offset+length): reads return zeros after it, the size stays.
        Filesystems without hole punching get zeros written instead."""
        if self.readonly:
            raise OSError(errno.EBADF, "disk is read-only")
        if length <= 0:
            return
        rc = _libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
        chunk = 1 << 20
        zeros = self._aligned(chunk) if self.direct else bytearray(chunk)
        if self.direct:
            zeros[:chunk] = bytes(chunk)
        pos = 0
        while pos < length:
            n = min(chunk, length - pos)
            self._pwritev_all([memoryview(zeros)[:n]], offset + pos)
            pos += n

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (dropping its lock). Safe to call twice."""
        if self._bounce is not None:
            self._bounce.close()
            self._bounce = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Disk":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _advance(bufs: list[memoryview], n: int) -> list[memoryview]:
    """``bufs`` without its first ``n`` bytes."""
    out = list(bufs)
    while out and n >= out[0].nbytes:
        n -= out[0].nbytes
        out.pop(0)
    if out and n:
        out[0] = out[0][n:]
    return out


def parse_disk_spec(spec: str) -> tuple[str, bool, bool]:
    """``FILE[,ro][,direct]`` -> (path, readonly, direct); DiskError for unknown options."""
    parts = spec.split(",")
    path, opts = parts[0], parts[1:]
    if not path:
        raise DiskError(f"--disk {spec!r}: no file named")
    readonly = direct = False
    for o in opts:
        if o == "ro":
            readonly = True
        elif o == "direct":
            direct = True
        else:
            raise DiskError(f"--disk {spec!r}: unknown option {o!r} (use ro and/or direct)")
    return path, readonly, direct
