"""Built-in guest images: built from ``guest_images/`` with gcc on demand, cached by content hash.

An image is a directory ``guest_images/images/NAME/`` (all its ``.c`` and ``.S`` files) or a single
file ``guest_images/images/NAME.c``, linked with the runtime in ``guest_images/rt/`` by
``guest_images/link.ld``. Sources whose file name starts with ``u_`` are compiled to ``*.u.o``
objects, which the linker script places in the user-accessible region (ring-3 code and data);
everything else is kernel-only (see ``guest_images/README.md``).

The freestanding C the host shares with the guest (``csrc/vmbus_ring.c``: the one VMBus ring) is
compiled into every image too, with ``-I ../csrc``, as a user-accessible object (``csrc__*.u.o``)
so ring-3 tasks can drive rings with it. ``csrc/`` is the directory next to the guest image tree
when it holds those sources, else the one next to the ``hvkvm`` package (a copied guest tree
still builds).

The cache key is a hash of every source, header and the linker script that goes into the image,
the compiler flags, the gcc and ld versions and this module's build recipe version. Built images
live in ``$HVKVM_CACHE_DIR`` (default ``~/.cache/hvkvm/images/``) as ``NAME-HASH.elf``. A build
happens in a private temporary directory and ends with an atomic rename, so concurrent builders
(pytest-xdist workers, several processes) never see a half-written file.

Computing the key runs gcc and ld three times and reads every source: tens of milliseconds that
``hvkvm run hello`` should not pay when nothing changed. So next to the images a stamp per image
and source tree (``.stamp-NAME-TREE``) records which image the key named and the size and
modification time of every hashed file and of gcc and ld at that moment; while all of them are
unchanged (and no file was added or removed), the stamp's image is used without hashing, the way
Python trusts a ``.pyc`` by its source's size and mtime.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = [
    "GUEST_IMAGES_DIR",
    "ImageError",
    "build_image",
    "cache_dir",
    "csrc_dir",
    "guest_images_dir",
    "image_path",
    "list_images",
    "resolve_image",
]

#: The guest image sources: ``$HVKVM_GUEST_IMAGES`` if set at import, else the ``guest_images/``
#: directory next to the ``hvkvm`` package. The functions here re-read the variable at each call
#: (see :func:`guest_images_dir`).
GUEST_IMAGES_DIR: Path = (Path(os.environ["HVKVM_GUEST_IMAGES"]).resolve()
                          if os.environ.get("HVKVM_GUEST_IMAGES")
                          else Path(__file__).resolve().parent.parent / "guest_images")
_DEFAULT_GUEST_IMAGES_DIR = Path(__file__).resolve().parent.parent / "guest_images"

#: Bump when the way images are built changes in a way the hashed inputs do not show.
_RECIPE_VERSION = "2"

#: Host-shared freestanding C from ``csrc/`` compiled into every image (user-accessible objects).
_CSRC_SOURCES = ("vmbus_ring.c",)
_DEFAULT_CSRC_DIR = Path(__file__).resolve().parent.parent / "csrc"

_SOURCE_SUFFIXES = (".c", ".S")
_HASHED_SUFFIXES = (".c", ".S", ".h", ".ld")

_COMMON_FLAGS = (
    "-O2", "-g",
    "-ffreestanding", "-nostdlib", "-static", "-fno-pie", "-fno-pic", "-mcmodel=small",
    "-mno-red-zone", "-mgeneral-regs-only", "-fno-omit-frame-pointer", "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fcf-protection=none",
    "-fno-tree-loop-distribute-patterns", "-fno-common",
    "-Iinclude", "-Irt", "-I../csrc",
)
_CFLAGS = ("-std=gnu11", "-Wall", "-Wextra", "-Wno-format-zero-length",
           "-Werror=implicit-function-declaration", "-Werror=return-type") + _COMMON_FLAGS
_ASFLAGS = ("-D__ASSEMBLY__",) + _COMMON_FLAGS
_LDFLAGS = ("-nostdlib", "-static", "-no-pie", "-Wl,-T,link.ld", "-Wl,-z,max-page-size=4096",
            "-Wl,-z,noexecstack", "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments")


class ImageError(Exception):
    """An image cannot be found or built. The message is one line (unknown image, gcc missing,
    compile or link failure with the first error line)."""


def guest_images_dir() -> Path:
    """The guest image source tree in use now: ``$HVKVM_GUEST_IMAGES`` if set, else the
    ``guest_images/`` directory next to the package."""
    env = os.environ.get("HVKVM_GUEST_IMAGES")
    return Path(env).resolve() if env else _DEFAULT_GUEST_IMAGES_DIR


def csrc_dir(root: Path | None = None) -> Path:
    """The ``csrc/`` whose sources go into images built from ``root`` (default: the guest tree in
    use): ``root/../csrc`` if it holds them, else the ``csrc/`` next to the package."""
    root = guest_images_dir() if root is None else root
    sibling = root.parent / "csrc"
    if all((sibling / name).is_file() for name in _CSRC_SOURCES):
        return sibling
    return _DEFAULT_CSRC_DIR


def _csrc_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(csrc sources to compile, csrc files to hash): relative to root when csrc is root's
    sibling (the build runs in root), absolute otherwise."""
    d = csrc_dir(root)
    if not all((d / name).is_file() for name in _CSRC_SOURCES):
        raise ImageError(f"the guest images need {', '.join(_CSRC_SOURCES)} from csrc/, "
                         f"not found in {d}")
    base = Path("..") / "csrc" if d == root.parent / "csrc" else d
    sources = [base / name for name in _CSRC_SOURCES]
    headers = sorted(base / p.name for p in d.glob("*.h") if p.is_file())
    return sources, sources + headers


def _hash_label(rel: Path) -> str:
    """The name a hashed file goes by in the key: csrc files are ``csrc/NAME`` wherever they are,
    so a copied guest tree shares cache entries with the original."""
    if rel.is_absolute() or rel.parts[:1] == ("..",):
        return f"csrc/{rel.name}"
    return rel.as_posix()


def cache_dir() -> Path:
    """Where built images are kept: ``$HVKVM_CACHE_DIR`` if set, else ``~/.cache/hvkvm/images``."""
    env = os.environ.get("HVKVM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "hvkvm" / "images"


def list_images() -> list[str]:
    """Names of the images in ``guest_images/images/`` (directories with sources, and ``NAME.c``
    files), sorted."""
    root = guest_images_dir() / "images"
    if not root.is_dir():
        return []
    names = set()
    for p in root.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_dir() and any(f.suffix in _SOURCE_SUFFIXES for f in p.iterdir() if f.is_file()):
            names.add(p.name)
        elif p.is_file() and p.suffix == ".c":
            names.add(p.stem)
    return sorted(names)


def _image_sources(root: Path, name: str) -> tuple[list[Path], list[Path]]:
    """(sources to compile, all files whose content goes into the hash), relative to root."""
    img_dir = root / "images" / name
    img_file = root / "images" / f"{name}.c"
    if img_dir.is_dir():
        img_files = sorted(p for p in img_dir.rglob("*") if p.is_file())
    elif img_file.is_file():
        img_files = [img_file]
    else:
        known = ", ".join(list_images()) or "none"
        raise ImageError(f"unknown image {name!r} (known images: {known})")
    rt_files = sorted(p for d in ("rt", "include") for p in (root / d).rglob("*") if p.is_file())
    everything = rt_files + img_files + [root / "link.ld"]
    sources = [p for p in rt_files + img_files if p.suffix in _SOURCE_SUFFIXES]
    hashed = [p for p in everything if p.suffix in _HASHED_SUFFIXES]
    csrc_sources, csrc_hashed = _csrc_files(root)
    return ([p.relative_to(root) for p in sources] + csrc_sources,
            [p.relative_to(root) for p in hashed] + csrc_hashed)


@functools.lru_cache(maxsize=None)
def _tool_versions(gcc: str) -> str:
    return _tools(gcc)[0]


@functools.lru_cache(maxsize=None)
def _tools(gcc: str) -> tuple[str, str | None]:
    """(gcc's and ld's version lines, ld's resolved path or None)."""
    import shutil
    import subprocess
    out = []
    for cmd in ([gcc, "--version"], [gcc, "-print-prog-name=ld"]):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise ImageError(f"cannot run {cmd[0]}: {e}") from None
        out.append(res.stdout.splitlines()[0] if res.stdout else "")
    ld = out.pop()
    try:
        res = subprocess.run([ld, "--version"], capture_output=True, text=True, check=True)
        out.append(res.stdout.splitlines()[0] if res.stdout else "")
    except (OSError, subprocess.CalledProcessError):
        out.append("ld ?")
    ld_path = ld if os.sep in ld else shutil.which(ld)
    return "\n".join(out), (os.path.realpath(ld_path) if ld_path else None)


def _find_gcc() -> str:
    import shutil
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageError("gcc not found: guest images are built with gcc (Debian: apt-get install gcc)")
    return gcc


def _first_error(stderr: str, tmp: Path | None = None) -> str:
    """The line of gcc/ld output that says what went wrong (not gcc's closing
    ``collect2: error: ld returned 1 exit status``), with the build directory's path cut."""
    if tmp is not None:
        stderr = stderr.replace(f"{tmp}{os.sep}", "")
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("collect2:")]
    for keys in ((": error:", "fatal error", "undefined reference", "multiple definition",
                  "cannot find", "assertion failed", "will not fit"), ("error",)):
        for ln in lines:
            if any(k in ln for k in keys):
                return ln
    return lines[0] if lines else "no output"


def _object_name(src: Path) -> str:
    if src.is_absolute() or src.parts[:1] == ("..",):
        return f"csrc__{src.stem}.u.o"  # host-shared C: user-accessible (ring-3 VSCs use it)
    stem = "__".join(src.with_suffix("").parts)
    return stem + (".u.o" if src.name.startswith("u_") else ".o")


def _compile(gcc: str, root: Path, src: Path, obj: Path) -> str | None:
    flags = _CFLAGS if src.suffix == ".c" else _ASFLAGS
    extra = []
    d = csrc_dir(root)
    if d != root.parent / "csrc":
        extra = [f"-I{d}"]  # the tree was copied away from csrc/: use the package's
    import subprocess
    res = subprocess.run([gcc, *flags, *extra, "-c", str(src), "-o", str(obj)], cwd=root,
                         capture_output=True, text=True)
    return None if res.returncode == 0 else _first_error(res.stderr)


def _check_user_calls(root: Path, objs: list[Path]) -> None:
    """Ring-3 code may only reference user-accessible symbols: an undefined symbol of a ``*.u.o``
    object must be defined by some ``*.u.o`` object (a call into kernel-only text would #PF)."""
    import subprocess
    user = [o for o in objs if o.name.endswith(".u.o")]
    if not user:
        return
    try:
        res = subprocess.run(["nm", "-A", *map(str, user)], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return  # nm missing: the check is a convenience
    # `nm -A` lines: "OBJ:ADDR T name" (defined), "OBJ: U name" (undefined).
    defined, undefined = set(), {}
    for ln in res.stdout.splitlines():
        parts = ln.split()
        if len(parts) < 3:
            continue
        kind, sym, obj = parts[-2], parts[-1], parts[0].rsplit(":", 1)[0]
        if kind == "U":
            undefined.setdefault(sym, obj)
        elif kind.isupper():
            defined.add(sym)
    for sym, obj in sorted(undefined.items()):
        if sym not in defined:
            src = Path(obj).name.removesuffix(".u.o").replace("__", "/")
            raise ImageError(f"{src}: ring-3 code (u_*.c) uses {sym!r}, which is kernel-only; "
                             f"move it to a u_*.c file or call it from ring 0")


def _build_key(root: Path, name: str, gcc: str) -> tuple[str, list[Path]]:
    import hashlib
    sources, hashed = _image_sources(root, name)
    h = hashlib.sha256()
    h.update(f"recipe {_RECIPE_VERSION}\n".encode())
    h.update(_tool_versions(gcc).encode() + b"\n")
    for flags in (_CFLAGS, _ASFLAGS, _LDFLAGS):
        h.update(" ".join(flags).encode() + b"\n")
    for rel in hashed:
        data = (root / rel).read_bytes()
        h.update(f"{_hash_label(rel)} {len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()[:20], sources


_STAMP_MAGIC = "hvkvm-image-stamp 1"


def _stamp_path(root: Path, name: str) -> Path:
    import zlib
    return cache_dir() / f".stamp-{name}-{zlib.crc32(str(root).encode()):08x}"


def _fingerprint(root: Path, name: str, gcc: str, ld: str | None) -> list[str] | None:
    """Size and mtime of everything the key hashes, and of gcc and ld; None if one is missing."""
    import zlib
    flags = "\n".join(" ".join(f) for f in (_CFLAGS, _ASFLAGS, _LDFLAGS)).encode()
    lines = [f"recipe {_RECIPE_VERSION} {zlib.crc32(flags):08x}", f"root {root}"]
    try:
        for tool in (gcc, ld):
            if tool is not None:
                st = os.stat(tool)
                lines.append(f"tool {st.st_size} {st.st_mtime_ns} {tool}")
        _, hashed = _image_sources(root, name)
        for rel in hashed:
            st = os.stat(root / rel)
            lines.append(f"file {st.st_size} {st.st_mtime_ns} {_hash_label(rel)} {rel}")
    except OSError:
        return None
    return lines


def _stamped(root: Path, name: str, gcc: str) -> Path | None:
    """The cached image the stamp names, if every input is as the stamp recorded."""
    try:
        text = _stamp_path(root, name).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    lines = text.splitlines()
    if len(lines) < 4 or lines[0] != _STAMP_MAGIC or not lines[1].startswith("image ") \
            or not lines[2].startswith("ld "):
        return None
    image, ld = lines[1][6:], lines[2][3:] or None
    if "/" in image or not image.startswith(f"{name}-") or not image.endswith(".elf"):
        return None
    final = cache_dir() / image
    if lines[3:] != _fingerprint(root, name, os.path.realpath(gcc), ld) or not final.is_file():
        return None
    return final


def _write_stamp(root: Path, name: str, final: Path, fingerprint: list[str] | None,
                 ld: str | None) -> None:
    """Record ``fingerprint`` (taken before the key was computed) for ``final``; best effort."""
    if fingerprint is None:
        return
    path = _stamp_path(root, name)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{id(fingerprint):x}")
    try:
        tmp.write_text("\n".join([_STAMP_MAGIC, f"image {final.name}", f"ld {ld or ''}",
                                  *fingerprint]) + "\n")
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def build_image(name: str, force: bool = False) -> Path:
    """Build image ``name`` (unless an up-to-date copy is cached, or ``force``) and return the path
    of its ELF file. Raises :class:`ImageError` for an unknown image, a missing gcc or a failed
    compile or link."""
    root = guest_images_dir()
    gcc = _find_gcc()
    if not force:
        hit = _stamped(root, name, gcc)
        if hit is not None:
            return hit
    # Taken before the sources are hashed: a change during the build leaves the stamp stale.
    _, ld = _tools(gcc)
    fingerprint = _fingerprint(root, name, os.path.realpath(gcc), ld)
    key, sources = _build_key(root, name, gcc)
    out_dir = cache_dir()
    final = out_dir / f"{name}-{key}.elf"
    if final.is_file() and not force:
        _write_stamp(root, name, final, fingerprint, ld)
        return final
    import concurrent.futures
    import shutil
    import subprocess
    import tempfile
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=out_dir))
    except OSError as e:
        raise ImageError(f"cannot create the image cache {out_dir}: {e.strerror}") from None
    try:
        objs = [tmp / _object_name(src) for src in sources]
        workers = min(len(sources), os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            errors = list(pool.map(lambda so: _compile(gcc, root, *so), zip(sources, objs)))
        for src, err in zip(sources, errors):
            if err is not None:
                raise ImageError(f"cannot build image {name!r}: {err}")
        _check_user_calls(root, objs)
        elf = tmp / f"{name}.elf"
        res = subprocess.run([gcc, *_LDFLAGS, "-o", str(elf), *map(str, objs)], cwd=root,
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise ImageError(f"cannot link image {name!r}: {_first_error(res.stderr, tmp)}")
        os.replace(elf, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_stamp(root, name, final, fingerprint, ld)
    return final


def image_path(name: str) -> Path:
    """The ELF path of image ``name``, built first if needed (see :func:`build_image`)."""
    return build_image(name)


def resolve_image(arg: str) -> Path:
    """Turn a command-line argument into an image file: an existing file path wins, otherwise
    ``arg`` names a built-in image (built if needed). Raises :class:`ImageError` naming the known
    images when it is neither."""
    p = Path(arg)
    if p.is_file():
        return p
    if arg and "/" not in arg and not arg.startswith("."):
        # The common case, a built-in name, without listing every image.
        images = guest_images_dir() / "images"
        d = images / arg
        if (images / f"{arg}.c").is_file() or (d.is_dir() and any(
                f.suffix in _SOURCE_SUFFIXES for f in d.iterdir() if f.is_file())):
            return image_path(arg)
    if arg in list_images():
        return image_path(arg)
    known = ", ".join(list_images()) or "none"
    if os.sep in arg or arg.endswith(".elf"):
        raise ImageError(f"no such image file {arg!r}, and not a known image (known images: {known})")
    raise ImageError(f"unknown image {arg!r} (known images: {known})")
