"""Linux's own structure layouts, read from the BTF of Debian's compiled cloud kernel.

Debian builds its kernels with ``CONFIG_DEBUG_INFO_BTF`` (and ``_MODULES``), so the binary package
``linux-image-*-cloud-amd64`` carries the exact layout of every structure the kernel and its
modules were compiled with. This module turns that into a test oracle:

1. ``apt-get download`` the image package the ``linux-image-cloud-amd64`` metapackage depends on
   (if that package holds no ``/boot/vmlinuz-*`` and ``hv_vmbus.ko``, the package it depends on,
   e.g. an ``-unsigned`` one) and unpack it with ``dpkg -x`` (nothing is installed);
2. take the compressed vmlinux out of the bzImage (payload located through the boot protocol
   header, compression detected by its magic the way Linux's ``scripts/extract-vmlinux`` does:
   Debian's cloud kernel is LZ4, legacy frame format), decompress it and keep the ELF ``.BTF``
   section as a raw base BTF file; keep the Hyper-V modules (decompressed if ``.ko.xz/.zst/.gz``);
3. dump types with Debian's ``bpftool`` (``bpftool btf dump file vmlinux.btf format raw`` and
   ``bpftool -B vmlinux.btf btf dump file MODULE.ko format raw``) and parse that text.

Everything is cached under ``$HVKVM_CACHE_DIR/btf`` (default ``~/.cache/hvkvm/btf``), one
directory per package version, built in a temporary directory and renamed into place, so
concurrent runs never see half an entry. A warm run costs a few ``apt-cache`` calls and parsing.

API::

    btf = LinuxBtf.load()                      # or the session fixture ``linux_btf``
    lay = btf.struct_layout("hv_vmbus", "vmbus_channel_offer_channel")
    lay.size                                   # 196
    lay.members["offer.u.pipe.pipe_mode"]      # byte offset (nested named members as a.b paths)
    lay.fields["monitor_allocated"]            # Member: bit_offset, bit_size, size, type
    btf.enum_values("hv_vmbus", "vmbus_channel_message_type")   # {"CHANNELMSG_INVALID": 0, ...}
    btf.enumerators("hv_vmbus")                # every enumerator of every enum, anonymous ones too
    btf.module_aliases("hv_netvsc")            # ["vmbus:635161f83edfc546913ff2d2f965ed0e"]
    struct_layout("hv_vmbus", "hv_ring_buffer")   # module-level shortcut on the cached instance

In a test module::

    from linux_btf import linux_btf_fixture  # noqa: F401  (provides the fixture ``linux_btf``)

    def test_vstor_packet(linux_btf):
        assert linux_btf.struct_layout("hv_storvsc", "vstor_packet").size == ...

``module`` is a module name (``hv_vmbus``, ``hv_netvsc``, ``hv_storvsc``, ...) or ``None`` for the
base vmlinux BTF; a name looked up in a module is searched in the module's own types first and then
in vmlinux (which is where e.g. ``hv_message`` and ``guid_t`` live). Anonymous struct/union members
are flattened into their parent at their absolute offsets, exactly as C names them; members of
named struct/union members appear as ``a.b`` (and ``a`` itself); arrays are not descended into.

If the kernel cannot be fetched (no apt, offline, no bpftool) a ``BtfUnavailable`` error says
what is missing; the fixture then fails the test. ``HVKVM_SKIP_BTF=1`` turns that into a skip.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

METAPACKAGE = "linux-image-cloud-amd64"

# Module files kept from the package: the VMBus core and everything that speaks VMBus.
_MODULE_FILE_RE = re.compile(r"^(hv_[a-z_]+|[a-z_-]*hyperv[a-z_-]*|uio_hv_generic)\.ko(\.xz|\.zst|\.gz)?$")

_SKIP_ENV = "HVKVM_SKIP_BTF"


class BtfUnavailable(RuntimeError):
    """Linux's BTF could not be obtained; the message says what is missing and how to fix it."""


def cache_root() -> Path:
    """``$HVKVM_CACHE_DIR/btf`` if the variable is set, else ``~/.cache/hvkvm/btf``."""
    env = os.environ.get("HVKVM_CACHE_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "hvkvm"
    return base / "btf"


def _log(msg: str) -> None:
    print(f"linux_btf: {msg}", file=sys.stderr)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, **kw)
    except FileNotFoundError as e:
        raise BtfUnavailable(f"{cmd[0]} not found ({e}); it is needed to read Linux's BTF") from None


# --------------------------------------------------------------------------------------------
# Fetching the package (apt)
# --------------------------------------------------------------------------------------------

def _apt_depends(pkg: str) -> list[str]:
    """The packages ``pkg`` depends on (first alternative of each), per apt-cache."""
    r = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
              "--no-breaks", "--no-replaces", "--no-enhances", pkg], text=True)
    if r.returncode != 0:
        return []
    out = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s*\|?Depends:\s*<?([^\s>]+)>?", line)
        if m:
            out.append(m.group(1))
    return out


def _apt_candidate(pkg: str) -> str | None:
    r = _run(["apt-cache", "policy", pkg], text=True)
    m = re.search(r"^\s*Candidate:\s*(\S+)", r.stdout, re.M)
    if not m or m.group(1) == "(none)":
        return None
    return m.group(1)


def _apt_lists_key() -> str:
    """Changes whenever apt's package lists do (what apt-cache answers depends only on them)."""
    lists = Path("/var/lib/apt/lists")
    try:
        stamps = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                        for p in lists.iterdir() if "Packages" in p.name)
    except OSError:
        return ""
    return repr(stamps)


def _resolve_image_packages() -> list[tuple[str, str]]:
    """(package, version) candidates, best first; remembered while apt's lists do not change
    (apt-cache takes about a second per call)."""
    memo = cache_root() / "resolved.json"
    key = _apt_lists_key()
    try:
        saved = json.loads(memo.read_text())
        if key and saved.get("key") == key and saved.get("candidates"):
            return [tuple(c) for c in saved["candidates"]]
    except (OSError, ValueError):
        pass
    out = _resolve_with_apt()
    if out and key == _apt_lists_key():
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".resolved.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "candidates": out}))
        os.replace(tmp, memo)
    return out


def _resolve_with_apt() -> list[tuple[str, str]]:
    """(package, version) candidates, best first: the metapackage's linux-image dependency,
    then what that one depends on (a signed wrapper's ``-unsigned`` payload package)."""
    deps = [d for d in _apt_depends(METAPACKAGE) if d.startswith("linux-image-")]
    if not deps and os.geteuid() == 0 and shutil.which("apt-get"):
        _log(f"apt does not know {METAPACKAGE}; running apt-get update")
        _run(["apt-get", "update", "-q"])
        deps = [d for d in _apt_depends(METAPACKAGE) if d.startswith("linux-image-")]
    out: list[tuple[str, str]] = []
    for pkg in deps:
        ver = _apt_candidate(pkg)
        if ver:
            out.append((pkg, ver))
        # A signed wrapper may hold only the signed image; Debian's payload package is then
        # "<name>-unsigned" (or whatever linux-image package the wrapper depends on).
        subs = [d for d in _apt_depends(pkg) if d.startswith("linux-image-") and d != pkg]
        for sub in subs + [f"{pkg}-unsigned"]:
            sver = _apt_candidate(sub)
            if sver and (sub, sver) not in out:
                out.append((sub, sver))
    return out


def _entry_name(pkg: str, ver: str) -> str:
    return f"{pkg}_{ver}".replace(":", "%3a").replace("/", "_")


def _entry_complete(d: Path) -> bool:
    return (d / "info.json").is_file() and (d / "vmlinux.btf").is_file()


def _download_and_unpack(pkg: str, ver: str, work: Path) -> Path:
    """apt-get download + dpkg -x into ``work/root``; returns the root."""
    cmd = ["apt-get", "download", "-q", f"{pkg}={ver}"]
    if os.geteuid() == 0:
        cmd[1:1] = ["-o", "APT::Sandbox::User=root"]  # the temp dir is not _apt's to write
    r = _run(cmd, cwd=work, text=True)
    debs = list(work.glob("*.deb"))
    if r.returncode != 0 or not debs:
        raise BtfUnavailable(f"`{' '.join(cmd)}` failed (offline? no apt sources?):\n"
                             f"{(r.stderr or r.stdout).strip()}")
    root = work / "root"
    r = _run(["dpkg", "-x", str(debs[0]), str(root)], text=True)
    if r.returncode != 0:
        raise BtfUnavailable(f"dpkg -x {debs[0].name} failed: {r.stderr.strip()}")
    debs[0].unlink()
    return root


# --------------------------------------------------------------------------------------------
# vmlinux out of the bzImage
# --------------------------------------------------------------------------------------------

# (name, magic) as in Linux's scripts/extract-vmlinux, in its order.
_COMPRESSIONS = [
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00\x00"),
    ("lzo", b"\x89LZO"),
    ("lz4", b"\x02\x21\x4c\x18"),  # LZ4 legacy frame (what the kernel build uses)
    ("zstd", b"\x28\xb5\x2f\xfd"),
]


def _is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def _lz4_legacy_python(data: bytes) -> bytes:
    import lz4.block  # python3-lz4 / pip lz4
    out, pos = [], 4
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        if n == 0x184C2102 or n == 0 or pos + 4 + n > len(data):
            break  # next frame, or the 4-byte size the kernel build appends
        out.append(lz4.block.decompress(data[pos + 4:pos + 4 + n], uncompressed_size=8 << 20))
        pos += 4 + n
    return b"".join(out)


def _decompress(kind: str, data: bytes) -> bytes:
    """Decompress ``data`` (may carry trailing bytes); output may be partial on a spurious magic."""
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    if kind == "xz":
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)
    if kind == "bzip2":
        return bz2.BZ2Decompressor().decompress(data)
    if kind == "lzma":
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data)
    tool = {"lzo": ["lzop", "-dc"], "lz4": ["lz4", "-dc"], "zstd": ["zstd", "-dc"]}[kind]
    if shutil.which(tool[0]):
        # Like extract-vmlinux: ignore the exit status (trailing bytes make the tools complain)
        # and judge the output instead.
        r = subprocess.run(tool, input=data, capture_output=True)
        return r.stdout
    if kind == "lz4":
        try:
            return _lz4_legacy_python(data)
        except ImportError:
            pass
    if kind == "zstd":
        try:
            import zstandard
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except ImportError:
            pass
    pkg = {"lzo": "lzop", "lz4": "lz4", "zstd": "zstd"}[kind]
    raise BtfUnavailable(f"the kernel image is {kind}-compressed and `{tool[0]}` is missing "
                         f"(apt-get install {pkg})")


def extract_vmlinux(bzimage: bytes) -> tuple[bytes, str]:
    """(vmlinux ELF bytes, compression name) from a bzImage."""
    if _is_elf(bzimage):
        return bzimage, "none"
    tried = []
    # Boot protocol >= 2.08: the payload's exact place is in the setup header.
    if len(bzimage) > 0x250 and bzimage[0x202:0x206] == b"HdrS":
        setup_sects = bzimage[0x1f1] or 4
        payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
        start = (setup_sects + 1) * 512 + payload_offset
        payload = bzimage[start:start + payload_length]
        for kind, magic in _COMPRESSIONS:
            if payload.startswith(magic):
                out = _decompress(kind, payload)
                if _is_elf(out):
                    return out, kind
                tried.append(f"{kind} at {start:#x} (from the setup header)")
    # Otherwise scan for every magic, as scripts/extract-vmlinux does.
    for kind, magic in _COMPRESSIONS:
        pos = bzimage.find(magic)
        while pos >= 0:
            try:
                out = _decompress(kind, bzimage[pos:])
            except BtfUnavailable:
                raise
            except Exception:
                out = b""
            if _is_elf(out):
                return out, kind
            tried.append(f"{kind} at {pos:#x}")
            pos = bzimage.find(magic, pos + 1)
    raise BtfUnavailable("no vmlinux found in the kernel image (tried: "
                         + (", ".join(tried[:12]) or "no known compression magic") + ")")


def elf_section(elf: bytes, name: str) -> bytes:
    """The contents of section ``name`` of a 64-bit little-endian ELF file."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise BtfUnavailable("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3a)

    def sh(i):
        return struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize)

    stroff = sh(shstrndx)[4]
    for i in range(shnum):
        s = sh(i)
        end = elf.index(b"\0", stroff + s[0])
        if elf[stroff + s[0]:end].decode() == name:
            return elf[s[4]:s[4] + s[5]]
    raise BtfUnavailable(f"ELF file has no {name} section")


def _decompress_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return _decompress("zstd", data)
    return data


def _build_entry(pkg: str, ver: str, final: Path) -> bool:
    """Fetch and prepare one cache entry. False if the package lacks vmlinuz or hv_vmbus."""
    t0 = time.monotonic()
    root_dir = final.parent
    root_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root_dir))
    try:
        tree = _download_and_unpack(pkg, ver, work)
        t_fetch = time.monotonic() - t0
        vmlinuz = sorted(tree.glob("boot/vmlinuz-*"))
        mods = [p for p in tree.glob("lib/modules/*/kernel/**/*") if _MODULE_FILE_RE.match(p.name)]
        if not vmlinuz or not any(p.name.startswith("hv_vmbus.ko") for p in mods):
            _log(f"{pkg} {ver} has no vmlinuz or no hv_vmbus.ko; trying the next candidate")
            return False
        entry = work / "entry"
        (entry / "modules").mkdir(parents=True)
        vmlinux, compression = extract_vmlinux(vmlinuz[0].read_bytes())
        (entry / "vmlinux.btf").write_bytes(elf_section(vmlinux, ".BTF"))
        del vmlinux
        module_files = {}
        for p in mods:
            name = re.sub(r"\.ko(\.\w+)?$", "", p.name).replace("-", "_")
            (entry / "modules" / f"{name}.ko").write_bytes(_decompress_module(p))
            module_files[name] = str(p.relative_to(tree))
        info = {
            "package": pkg,
            "version": ver,
            "vmlinuz": str(vmlinuz[0].relative_to(tree)),
            "compression": compression,
            "modules": module_files,
            "fetch_seconds": round(t_fetch, 2),
            "build_seconds": round(time.monotonic() - t0, 2),
        }
        (entry / "info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        if final.exists() and not _entry_complete(final):
            shutil.rmtree(final, ignore_errors=True)  # left over from an interrupted build
        try:
            os.rename(entry, final)
        except OSError:
            if not _entry_complete(final):  # someone else won the race with a good entry: fine
                raise
        _log(f"cached {pkg} {ver} ({compression} vmlinux) in {final} "
             f"[{info['build_seconds']} s]")
        return True
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_cache() -> Path:
    """The cache entry (a directory with vmlinux.btf, modules/, info.json), fetched if needed."""
    root = cache_root()
    candidates = _resolve_image_packages()
    errors = []
    for pkg, ver in candidates:
        final = root / _entry_name(pkg, ver)
        if _entry_complete(final):
            return final
        try:
            if _build_entry(pkg, ver, final):
                return final
        except BtfUnavailable as e:
            errors.append(str(e))
            break  # a download failure will not get better with the next candidate
    # Offline, or apt knows no kernel: an earlier complete entry still is Linux's own BTF.
    cached = sorted((d for d in root.glob("linux-image-*") if _entry_complete(d)),
                    key=lambda d: d.stat().st_mtime)
    if cached:
        if candidates:
            _log(f"using cached {cached[-1].name}: {'; '.join(errors) or 'no usable candidate'}")
        return cached[-1]
    if not candidates and not errors:
        errors.append(f"apt-cache cannot resolve {METAPACKAGE} (no Debian apt sources, or "
                      "`apt-get update` not run)")
    raise BtfUnavailable("cannot fetch Debian's cloud kernel for its BTF: " + "; ".join(errors))


# --------------------------------------------------------------------------------------------
# bpftool raw dumps and their parsing
# --------------------------------------------------------------------------------------------

_HDR_RE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_ATTR_RE = re.compile(r"(\w+)=(\S+)")
_MEMBER_RE = re.compile(r"^\t'([^']*)' (.*)$")

_MODIFIERS = {"TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"}


def _int(text: str) -> int:
    """An integer as bpftool prints it (ENUM64 values carry a C suffix: ``1ULL``, ``-1LL``)."""
    return int(text.rstrip("ULul"), 0)


@dataclass(frozen=True)
class BtfType:
    """One BTF type from the raw dump: id, kind, name, attributes and member/enumerator lines."""

    id: int
    kind: str
    name: str
    attrs: dict
    members: tuple  # tuple of (name, attrs dict)

    def attr(self, key: str) -> int:
        return int(self.attrs[key])


def _parse_block(text: str) -> BtfType:
    lines = text.rstrip("\n").split("\n")
    m = _HDR_RE.match(lines[0])
    if not m:
        raise ValueError(f"unexpected bpftool line: {lines[0]!r}")
    attrs = dict(_ATTR_RE.findall(m.group(4)))
    members = []
    for line in lines[1:]:
        mm = _MEMBER_RE.match(line)
        if mm:
            members.append((mm.group(1), dict(_ATTR_RE.findall(mm.group(2)))))
        else:  # DATASEC entries have no name
            members.append(("", dict(_ATTR_RE.findall(line))))
    name = m.group(3)
    return BtfType(int(m.group(1)), m.group(2), "" if name == "(anon)" else name, attrs,
                   tuple(members))


class _RawDump:
    """A bpftool raw dump, indexed lazily (the vmlinux one has ~130k types)."""

    def __init__(self, text: str):
        self.text = text
        self.starts: dict[int, int] = {}
        self.kinds: dict[int, str] = {}
        self.names: dict[str, list[int]] = {}
        for m in re.finditer(r"^\[(\d+)\] (\w+) '([^']*)'", text, re.M):
            tid = int(m.group(1))
            self.starts[tid] = m.start()
            self.kinds[tid] = m.group(2)
            if m.group(3) != "(anon)" and m.group(2) in ("STRUCT", "UNION", "TYPEDEF", "ENUM",
                                                         "ENUM64", "FWD"):
                self.names.setdefault(m.group(3), []).append(tid)
        self.min_id = min(self.starts) if self.starts else 0
        self.max_id = max(self.starts) if self.starts else -1

    @functools.lru_cache(maxsize=None)
    def get(self, tid: int) -> BtfType:
        start = self.starts[tid]
        end = self.text.find("\n[", start)
        return _parse_block(self.text[start:] if end < 0 else self.text[start:end + 1])

    def all_ids(self):
        return sorted(self.starts)


@dataclass(frozen=True)
class Member:
    """A member of a layout: absolute bit offset, bit-field width (0 if none), byte size, type."""

    name: str
    bit_offset: int
    bit_size: int
    size: int
    type: str

    @property
    def offset(self) -> int:
        return self.bit_offset // 8


@dataclass(frozen=True)
class Layout:
    """Size and members of a struct/union as Linux compiled it.

    ``members``: ordered path -> byte offset; ``fields``: path -> Member (bit-level detail)."""

    module: str | None
    kind: str
    name: str
    size: int
    fields: dict

    @property
    def members(self) -> dict:
        return {k: v.offset for k, v in self.fields.items()}

    def __repr__(self):
        where = self.module or "vmlinux"
        return f"<Layout {self.kind.lower()} {self.name} size={self.size} ({where}): {self.members}>"


class _TypeSpace:
    """Type ids of one module resolved against the base (or the base alone)."""

    def __init__(self, base: _RawDump, split: _RawDump | None):
        self.base, self.split = base, split

    def get(self, tid: int) -> BtfType:
        if tid == 0:
            return BtfType(0, "VOID", "void", {}, ())
        if self.split is not None and tid in self.split.starts:
            return self.split.get(tid)
        return self.base.get(tid)

    def find(self, name: str, kinds=("STRUCT", "UNION", "TYPEDEF")) -> BtfType | None:
        for dump in ([self.split] if self.split is not None else []) + [self.base]:
            for tid in dump.names.get(name, ()):
                t = dump.get(tid)
                if t.kind in kinds:
                    return t
        return None

    def strip(self, tid: int) -> BtfType:
        t = self.get(tid)
        while t.kind in _MODIFIERS:
            t = self.get(t.attr("type_id"))
        return t

    def size_of(self, tid: int) -> int:
        t = self.strip(tid)
        if t.kind in ("INT", "STRUCT", "UNION", "ENUM", "ENUM64", "FLOAT", "DATASEC"):
            return t.attr("size")
        if t.kind == "PTR":
            return 8
        if t.kind == "ARRAY":
            return t.attr("nr_elems") * self.size_of(t.attr("type_id"))
        return 0

    def type_name(self, tid: int) -> str:
        t = self.get(tid)
        if t.kind in ("TYPEDEF", "INT", "FLOAT", "VOID"):
            return t.name
        if t.kind in ("CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            return f"{t.kind.lower()} {self.type_name(t.attr('type_id'))}"
        if t.kind in ("STRUCT", "UNION", "ENUM", "ENUM64", "FWD"):
            kw = {"ENUM64": "enum"}.get(t.kind, t.kind.lower())
            return f"{kw} {t.name or '(anon)'}"
        if t.kind == "PTR":
            return f"{self.type_name(t.attr('type_id'))} *"
        if t.kind == "ARRAY":
            return f"{self.type_name(t.attr('type_id'))}[{t.attr('nr_elems')}]"
        return t.kind.lower()

    def layout(self, module: str | None, name: str) -> Layout:
        t = self.find(name)
        if t is None:
            raise KeyError(f"no struct/union/typedef {name!r} in the BTF of {module or 'vmlinux'}")
        agg = self.strip(t.id)
        if agg.kind not in ("STRUCT", "UNION"):
            raise KeyError(f"{name!r} in {module or 'vmlinux'} is a {agg.kind}, not a struct/union")
        fields: dict[str, Member] = {}
        self._flatten(agg, "", 0, fields)
        return Layout(module, agg.kind, name, agg.attr("size"), fields)

    def _flatten(self, agg: BtfType, prefix: str, base_bits: int, out: dict) -> None:
        for mname, a in agg.members:
            bits = base_bits + int(a["bits_offset"])
            mtid = int(a["type_id"])
            mt = self.strip(mtid)
            bit_size = int(a.get("bitfield_size", 0))
            if not bit_size and mt.kind == "INT" and mt.attr("nr_bits") != mt.attr("size") * 8:
                bit_size = mt.attr("nr_bits")  # old-style (kind_flag=0) bit-field encoding
                bits += mt.attr("bits_offset")
            if mname in ("", "(anon)"):
                if mt.kind in ("STRUCT", "UNION"):
                    self._flatten(mt, prefix, bits, out)
                continue
            path = prefix + mname
            out[path] = Member(path, bits, bit_size, self.size_of(mtid), self.type_name(mtid))
            if mt.kind in ("STRUCT", "UNION"):
                self._flatten(mt, path + ".", bits, out)

    def enums(self, own_only: bool):
        dumps = [self.split] if (own_only and self.split is not None) else \
            ([self.split] if self.split is not None else []) + [self.base]
        for dump in dumps:
            for tid in dump.all_ids():
                if dump.kinds[tid] in ("ENUM", "ENUM64"):
                    yield dump.get(tid)


class LinuxBtf:
    """Linux's BTF from one cached Debian kernel package: layouts, enums, module aliases."""

    def __init__(self, entry: Path):
        self.entry = entry
        self.info = json.loads((entry / "info.json").read_text())
        self.package = self.info["package"]
        self.version = self.info["version"]
        self.compression = self.info["compression"]
        self._bpftool = shutil.which("bpftool")
        if not self._bpftool:
            raise BtfUnavailable("bpftool not found (Debian package `bpftool`)")
        self._base: _RawDump | None = None
        self._splits: dict[str, _RawDump] = {}

    @classmethod
    def load(cls) -> "LinuxBtf":
        """Fetch (or reuse) the cached kernel and return the reader."""
        if not shutil.which("bpftool"):
            raise BtfUnavailable("bpftool not found (Debian package `bpftool`)")
        return cls(ensure_cache())

    # -- dumps ----------------------------------------------------------------------------

    def _dump(self, out_name: str, args: list[str]) -> str:
        path = self.entry / out_name
        if path.is_file():
            return path.read_text()
        r = _run([self._bpftool] + args, text=True)
        if r.returncode != 0:
            raise BtfUnavailable(f"bpftool {' '.join(args)} failed: {r.stderr.strip()}")
        tmp = path.with_name(f".{out_name}.{os.getpid()}")
        tmp.write_text(r.stdout)
        os.replace(tmp, path)
        return r.stdout

    def _base_dump(self) -> _RawDump:
        if self._base is None:
            self._base = _RawDump(self._dump(
                "vmlinux.raw", ["btf", "dump", "file", str(self.entry / "vmlinux.btf"),
                                "format", "raw"]))
        return self._base

    def modules(self) -> list[str]:
        """Names of the cached modules (hv_vmbus, hv_netvsc, hv_storvsc, hv_utils, ...)."""
        return sorted(p.stem for p in (self.entry / "modules").glob("*.ko"))

    def module_path(self, module: str) -> Path:
        p = self.entry / "modules" / f"{module.replace('-', '_')}.ko"
        if not p.is_file():
            raise KeyError(f"module {module!r} is not in {self.package} "
                           f"(have: {', '.join(self.modules())})")
        return p

    def _space(self, module: str | None) -> _TypeSpace:
        base = self._base_dump()
        if module is None:
            return _TypeSpace(base, None)
        key = module.replace("-", "_")
        if key not in self._splits:
            ko = self.module_path(key)
            self._splits[key] = _RawDump(self._dump(
                f"{key}.raw", ["-B", str(self.entry / "vmlinux.btf"), "btf", "dump", "file",
                               str(ko), "format", "raw"]))
        return _TypeSpace(base, self._splits[key])

    # -- queries --------------------------------------------------------------------------

    @functools.lru_cache(maxsize=None)
    def struct_layout(self, module: str | None, name: str) -> Layout:
        """Layout of struct/union (or typedef of one) ``name`` as ``module`` (None: vmlinux) sees it."""
        return self._space(module).layout(module, name)

    def has_struct(self, module: str | None, name: str) -> bool:
        return self._space(module).find(name) is not None

    def enum_values(self, module: str | None, name: str) -> dict[str, int]:
        """Enumerators of the named enum, in order."""
        sp = self._space(module)
        t = sp.find(name, kinds=("ENUM", "ENUM64", "TYPEDEF"))
        if t is None:
            raise KeyError(f"no enum {name!r} in the BTF of {module or 'vmlinux'}")
        t = sp.strip(t.id)
        return {n: _int(a["val"]) for n, a in t.members}

    @functools.lru_cache(maxsize=None)
    def enumerators(self, module: str | None, own_only: bool = True) -> dict[str, int]:
        """Every enumerator of every enum (named or anonymous): of the module's own types only
        (default), or with vmlinux's too."""
        out: dict[str, int] = {}
        for t in self._space(module).enums(own_only):
            for n, a in t.members:
                out.setdefault(n, _int(a["val"]))
        return out

    def module_aliases(self, module: str) -> list[str]:
        """The module's ``alias=`` strings from .modinfo (``vmbus:<guid bytes in hex>`` ...)."""
        modinfo = elf_section(self.module_path(module).read_bytes(), ".modinfo")
        return [s[6:].decode() for s in modinfo.split(b"\0") if s.startswith(b"alias=")]


@functools.lru_cache(maxsize=1)
def get() -> LinuxBtf:
    """The process-wide LinuxBtf (fetched once, cached on disk)."""
    return LinuxBtf.load()


def struct_layout(module: str | None, name: str) -> Layout:
    """Layout of ``name`` from ``module``'s BTF (None: vmlinux), via the cached reader."""
    return get().struct_layout(module, name)


def skip_requested() -> bool:
    return os.environ.get(_SKIP_ENV) == "1"


try:  # the pytest fixture (this module is also usable without pytest)
    import pytest

    @pytest.fixture(scope="session", name="linux_btf")
    def linux_btf_fixture() -> LinuxBtf:
        """Session-wide LinuxBtf. Unavailable BTF fails the test, or skips it under HVKVM_SKIP_BTF=1."""
        if skip_requested():
            pytest.skip(f"{_SKIP_ENV}=1: Linux BTF conformance checks skipped on request")
        try:
            return get()
        except BtfUnavailable as e:
            pytest.fail(f"Linux BTF unavailable: {e}\n(set {_SKIP_ENV}=1 to skip these checks "
                        "explicitly)", pytrace=False)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":  # python tests/linux_btf.py [MODULE] NAME...: print layouts
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--module", default="hv_vmbus", help="module (or 'vmlinux')")
    ap.add_argument("names", nargs="*")
    ns = ap.parse_args()
    t0 = time.monotonic()
    btf = get()
    print(f"{btf.package} {btf.version} ({btf.compression}) in {btf.entry} "
          f"[{time.monotonic() - t0:.2f} s]")
    mod = None if ns.module == "vmlinux" else ns.module
    for n in ns.names:
        lay = btf.struct_layout(mod, n)
        print(f"{lay.kind.lower()} {n}: size {lay.size}")
        for f in lay.fields.values():
            bf = f" :{f.bit_size} (bit {f.bit_offset})" if f.bit_size else ""
            print(f"  {f.offset:5d} {f.name:40s} {f.type} [{f.size}]{bf}")
