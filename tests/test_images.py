"""Guest images: every image builds with gcc into a standard PVH-bootable ELF64, the user/kernel
split is where the runtime expects it, and the build cache hits, rebuilds and fails as it should.

No KVM needed: these tests only build and inspect files.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hvkvm import images
from hvkvm.images import ImageError

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")

REQUIRED_IMAGES = ["asserts", "exits", "fault", "hello", "serial_irq", "smp", "timer", "ufault"]

PT_LOAD, PT_NOTE = 1, 4
PF_X = 1
EM_X86_64 = 62
XEN_ELFNOTE_PHYS32_ENTRY = 18


def read_elf(path: Path) -> dict:
    """Minimal ELF64 reader (independent of hvkvm.boot): header fields, program headers, notes."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    ident = {"class": data[4], "data": data[5]}
    (e_type, e_machine, _ver, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
     e_phnum) = struct.unpack_from("<HHIQQQIHHH", data, 16)
    phdrs = []
    for i in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = \
            struct.unpack_from("<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        phdrs.append(dict(type=p_type, flags=p_flags, offset=p_offset, vaddr=p_vaddr,
                          paddr=p_paddr, filesz=p_filesz, memsz=p_memsz, align=p_align))
    notes = []
    for ph in phdrs:
        if ph["type"] != PT_NOTE:
            continue
        off, end = ph["offset"], ph["offset"] + ph["filesz"]
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, off)
            name = data[off + 12:off + 12 + namesz].rstrip(b"\0")
            doff = off + 12 + ((namesz + 3) & ~3)
            notes.append(dict(name=name, type=ntype, desc=data[doff:doff + descsz],
                              segment_align=ph["align"]))
            off = doff + ((descsz + 3) & ~3)
    return dict(ident=ident, type=e_type, machine=e_machine, entry=e_entry, phdrs=phdrs,
                notes=notes)


def symbols(path: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    syms = {}
    for ln in out.splitlines():
        parts = ln.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return syms


@pytest.fixture
def private_tree(tmp_path, monkeypatch):
    """A copy of guest_images/ and an empty cache, selected through the environment."""
    tree = tmp_path / "guest_images"
    shutil.copytree(images.GUEST_IMAGES_DIR, tree)
    cache = tmp_path / "cache"
    monkeypatch.setenv("HVKVM_GUEST_IMAGES", str(tree))
    monkeypatch.setenv("HVKVM_CACHE_DIR", str(cache))
    return tree, cache


def test_guest_images_dir_is_next_to_the_package():
    assert images.GUEST_IMAGES_DIR.is_dir()
    assert (images.GUEST_IMAGES_DIR / "PROTOCOL.md").is_file()
    if not os.environ.get("HVKVM_GUEST_IMAGES"):
        assert images.GUEST_IMAGES_DIR.parent == Path(images.__file__).resolve().parent.parent
        assert images.guest_images_dir() == images.GUEST_IMAGES_DIR


def test_sources_compile_without_warnings():
    """Builds only fail on errors (users' newer compilers may warn more); here, keep them clean."""
    root = images.GUEST_IMAGES_DIR
    seen = set()
    for name in images.list_images():
        sources, _ = images._image_sources(root, name)
        for src in sources:
            if src in seen:
                continue
            seen.add(src)
            flags = images._CFLAGS if src.suffix == ".c" else images._ASFLAGS
            res = subprocess.run(["gcc", *flags, "-c", str(src), "-o", os.devnull], cwd=root,
                                 capture_output=True, text=True)
            assert res.returncode == 0 and not res.stderr.strip(), f"{src}:\n{res.stderr}"
    assert len(seen) > 15


def test_list_images_has_the_required_ones():
    names = images.list_images()
    assert names == sorted(names)
    for name in REQUIRED_IMAGES:
        assert name in names


@pytest.mark.parametrize("name", REQUIRED_IMAGES)
def test_image_builds_as_pvh_elf64(name):
    path = images.build_image(name)
    assert path.is_file() and path.suffix == ".elf"
    elf = read_elf(path)
    assert elf["ident"] == {"class": 2, "data": 1}, "ELF64 little endian"
    assert elf["machine"] == EM_X86_64
    assert elf["type"] == 2, "ET_EXEC (not PIE)"

    loads = [p for p in elf["phdrs"] if p["type"] == PT_LOAD]
    assert loads
    assert min(p["paddr"] for p in loads) == 0x100000, "linked at 1 MiB"
    for p in loads:
        assert p["paddr"] == p["vaddr"], "identity mapped"
        assert p["filesz"] <= p["memsz"]
    assert max(p["paddr"] + p["memsz"] for p in loads) <= 0x800000

    pvh = [n for n in elf["notes"] if n["name"] == b"Xen" and n["type"] == XEN_ELFNOTE_PHYS32_ENTRY]
    assert len(pvh) == 1, "exactly one PVH entry note"
    assert len(pvh[0]["desc"]) == 8
    assert pvh[0]["segment_align"] == 4, "QEMU pads the note name by the PT_NOTE alignment"
    entry = struct.unpack("<Q", pvh[0]["desc"])[0]
    assert any(p["flags"] & PF_X and p["paddr"] <= entry < p["paddr"] + p["filesz"] for p in loads), \
        f"PVH entry {entry:#x} is not inside an executable loaded segment"


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) is not installed")
def test_user_region_holds_ring3_code_and_stacks_only():
    syms = symbols(images.build_image("hello"))
    ustart, uend = syms["__user_start"], syms["__user_end"]
    assert ustart % 4096 == 0 and uend % 4096 == 0 and ustart < uend

    def user(sym):
        return ustart <= syms[sym] < uend

    # ring-3 code and what it needs
    for sym in ("hello_user", "rt_task_entry", "hv_printf", "hv_log", "memset", "rt_ustacks",
                "hv_boot", "hv_done"):
        assert user(sym), f"{sym} must be user-accessible"
    # kernel-only
    for sym in ("hv_main", "rt_isr_dispatch", "rt_isr_stubs", "rt_kstacks", "rt_iststacks",
                "rt_cpus", "rt_pml4", "rt_pt", "rt_pvh_entry", "hv_run_user"):
        assert not user(sym), f"{sym} must be kernel-only"


def test_second_build_is_a_cache_hit(monkeypatch):
    first = images.build_image("hello")
    stat = first.stat()

    def no_compile(*a, **k):
        raise AssertionError("compiled although the cache is up to date")

    monkeypatch.setattr(images, "_compile", no_compile)
    second = images.build_image("hello")
    assert second == first
    assert second.stat().st_ino == stat.st_ino and second.stat().st_mtime_ns == stat.st_mtime_ns
    assert images.image_path("hello") == first


def test_fresh_stamp_serves_the_cached_image_without_hashing_or_running_gcc(private_tree,
                                                                            monkeypatch):
    tree, _ = private_tree
    first = images.build_image("fault")
    keys = []
    real_key = images._build_key

    def counting_key(*a):
        keys.append(a)
        return real_key(*a)

    def no_tools(gcc):
        raise AssertionError("ran gcc/ld for their versions although nothing changed")

    monkeypatch.setattr(images, "_build_key", counting_key)
    monkeypatch.setattr(images, "_tools", no_tools)
    assert images.build_image("fault") == first and keys == []
    # same content, new mtime: the stamp is stale, the key is computed again (and still hits)
    monkeypatch.undo()
    monkeypatch.setenv("HVKVM_GUEST_IMAGES", str(tree))
    monkeypatch.setenv("HVKVM_CACHE_DIR", str(first.parent))
    monkeypatch.setattr(images, "_build_key", counting_key)
    st = (tree / "include" / "hv.h").stat()
    os.utime(tree / "include" / "hv.h", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert images.build_image("fault") == first and len(keys) == 1
    # a new file in the image's directory is an input too
    (tree / "images" / "fault" / "extra.h").write_text("/* new */\n")
    second = images.build_image("fault")
    assert len(keys) == 2 and second != first


def test_cache_dir_from_environment(private_tree):
    _, cache = private_tree
    path = images.build_image("fault")
    assert path.parent == cache
    assert path.name.startswith("fault-")
    assert not [p for p in cache.iterdir() if p.name.startswith(".build-")], "temp dirs cleaned up"


def test_rebuild_when_sources_change(private_tree):
    tree, _ = private_tree
    p1 = images.build_image("hello")

    # a runtime source
    with open(tree / "rt" / "u_printf.c", "a") as f:
        f.write("\n/* changed */\n")
    p2 = images.build_image("hello")
    assert p2 != p1 and p2.is_file()

    # a header
    with open(tree / "include" / "hv.h", "a") as f:
        f.write("\n/* changed */\n")
    p3 = images.build_image("hello")
    assert p3 not in (p1, p2) and p3.is_file()

    # the image's own source
    with open(tree / "images" / "hello" / "u_hello.c", "a") as f:
        f.write("\n/* changed */\n")
    p4 = images.build_image("hello")
    assert p4 not in (p1, p2, p3)

    # the linker script
    with open(tree / "link.ld", "a") as f:
        f.write("\n/* changed */\n")
    p5 = images.build_image("hello")
    assert p5 not in (p1, p2, p3, p4)

    # another image's source does not touch this one
    with open(tree / "images" / "smp" / "main.c", "a") as f:
        f.write("\n/* changed */\n")
    assert images.build_image("hello") == p5


def test_force_rebuilds(private_tree):
    p1 = images.build_image("fault")
    ino = p1.stat().st_ino
    p2 = images.build_image("fault", force=True)
    assert p2 == p1
    assert p2.stat().st_ino != ino, "a forced build replaces the file"


def test_concurrent_builds_are_safe(private_tree):
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        paths = list(pool.map(lambda _: images.build_image("exits", force=True), range(3)))
    assert len(set(paths)) == 1
    assert read_elf(paths[0])["machine"] == EM_X86_64


def test_single_file_image(private_tree):
    tree, _ = private_tree
    (tree / "images" / "tiny.c").write_text(
        '#include "hv.h"\nint hv_main(void) { hv_printf("tiny\\n"); return 0; }\n')
    assert "tiny" in images.list_images()
    assert read_elf(images.build_image("tiny"))["machine"] == EM_X86_64


def test_unknown_image():
    with pytest.raises(ImageError) as ei:
        images.build_image("no-such-image")
    msg = str(ei.value)
    assert "unknown image" in msg and "no-such-image" in msg and "hello" in msg
    assert "\n" not in msg


def test_resolve_image(tmp_path):
    assert images.resolve_image("hello") == images.image_path("hello")
    f = tmp_path / "my.elf"
    f.write_bytes(b"\x7fELF")
    assert images.resolve_image(str(f)) == f
    # an existing file wins over an image of the same name
    (tmp_path / "hello").write_bytes(b"x")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert images.resolve_image("hello") == Path("hello")
    finally:
        os.chdir(cwd)
    with pytest.raises(ImageError, match="known images: .*hello"):
        images.resolve_image("nonesuch")
    with pytest.raises(ImageError, match="no such image file"):
        images.resolve_image(str(tmp_path / "missing.elf"))


def test_compile_error_is_one_line(private_tree):
    tree, _ = private_tree
    src = tree / "images" / "hello" / "main.c"
    src.write_text(src.read_text() + "\nint broken(void) { return undeclared_thing; }\n")
    with pytest.raises(ImageError) as ei:
        images.build_image("hello")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "hello" in msg and "images/hello/main.c" in msg and "error" in msg
    assert "undeclared_thing" in msg


def test_link_error_is_one_line(private_tree):
    tree, _ = private_tree
    src = tree / "images" / "hello" / "main.c"
    src.write_text(src.read_text() + "\nvoid no_such_function(void);\n"
                   "void calls_it(void) { no_such_function(); }\n")
    with pytest.raises(ImageError) as ei:
        images.build_image("hello")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "cannot link image 'hello'" in msg and "no_such_function" in msg


def test_ring3_code_calling_kernel_only_code_is_refused(private_tree):
    tree, _ = private_tree
    src = tree / "images" / "hello" / "u_hello.c"
    src.write_text(src.read_text() + "\nvoid bad(void) { hv_smp_start(); }\n")
    with pytest.raises(ImageError, match="hv_smp_start.*kernel-only"):
        images.build_image("hello")


def test_gcc_missing(private_tree, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ImageError, match="gcc not found"):
        images.build_image("hello")


# ---------------------------------------------------------------------------------------------
# The runtime's printf and command-line parser, compiled for the host and checked against libc.

HARNESS = r"""
#include <stdio.h>
#include <string.h>
#include <limits.h>
#include "hv.h"

static int failures;

#define CHECK(fmt, ...) do {                                                         \
	char ours[256], libc[256];                                                   \
	int n1 = hv_snprintf(ours, sizeof ours, fmt, __VA_ARGS__);                   \
	int n2 = snprintf(libc, sizeof libc, fmt, __VA_ARGS__);                      \
	if (n1 != n2 || strcmp(ours, libc)) {                                        \
		printf("MISMATCH %s: ours [%s] %d, libc [%s] %d\n", fmt, ours, n1, libc, n2); \
		failures++;                                                          \
	}                                                                            \
} while (0)

#define EXPECT(cond) do { if (!(cond)) { printf("FAILED %s (line %d)\n", #cond, __LINE__); failures++; } } while (0)

static void set_cmdline(const char *s) { hv_strlcpy(hv_boot.cmdline, s, sizeof hv_boot.cmdline); }

int main(void)
{
	char buf[64];

	CHECK("%d %d %d %d", 0, -1, INT_MIN, INT_MAX);
	CHECK("[%5d] [%-5d] [%05d] [%+d] [% d] [%+05d]", 42, 42, -42, 7, 7, -3);
	CHECK("%i %u %u", -5, 0u, UINT_MAX);
	CHECK("%x %X %08x %#x %#X %#o %o", 0xdeadbeefu, 0xabcu, 0x1fu, 255u, 255u, 8u, 0u);
	CHECK("%lx %lu %ld", ULONG_MAX, ULONG_MAX, LONG_MIN);
	CHECK("%llx %llu %lld %016llx", ULLONG_MAX, ULLONG_MAX, LLONG_MIN, 0x1234ULL);
	CHECK("%hhd %hhu %hd %hu", 300, 300, 70000, 70000);
	CHECK("%zu %zx %td %jd", (size_t)12345, (size_t)0xfff, (ptrdiff_t)-9, (intmax_t)-1);
	CHECK("%.5d [%8.3d] [%-8.3d] [%.0d] [%.0x]", 42, 42, -42, 0, 0u);
	CHECK("[%*d] [%-*d] [%.*d]", 6, 12, 6, 12, 4, 3);
	CHECK("%s [%10s] [%-10s] [%.2s] [%*s]", "abc", "right", "left", "truncate", 4, "x");
	CHECK("%c [%3c] [%-3c] %%", 'x', 'y', 'z');
	CHECK("%p %p", (void *)0x1234, (void *)0xffffffffffffULL);
	CHECK("%s", "");
	CHECK("%s%s%d", "a", "b", 1);

	/* truncation: NUL-terminated, returns the full length */
	EXPECT(hv_snprintf(buf, 5, "%s", "abcdefgh") == 8 && !strcmp(buf, "abcd"));
	EXPECT(hv_snprintf(buf, 1, "%d", 12345) == 5 && buf[0] == 0);
	EXPECT(hv_snprintf(0, 0, "%d", 123) == 3);

	set_cmdline("hello ring=0  count=0x10 size=4k kind=pio flag ring=3 empty= bad=12x");
	EXPECT(hv_arg_u64("ring", 9) == 3);            /* the last one wins */
	EXPECT(hv_arg_u64("count", 0) == 16);
	EXPECT(hv_arg_u64("size", 0) == 4096);
	EXPECT(hv_arg_u64("missing", 77) == 77);
	EXPECT(hv_arg_u64("bad", 5) == 5);
	EXPECT(hv_arg_u64("kind", 6) == 6);
	EXPECT(hv_arg_is("kind", "pio") && !hv_arg_is("kind", "pi") && !hv_arg_is("kind", "pio2"));
	EXPECT(hv_arg_present("flag") && hv_arg_present("hello") && hv_arg_present("empty"));
	EXPECT(!hv_arg_present("fla") && !hv_arg_present("ring=0"));
	EXPECT(hv_arg("flag", buf, sizeof buf) && buf[0] == 0);
	EXPECT(hv_arg("empty", buf, sizeof buf) && buf[0] == 0);
	EXPECT(hv_arg("kind", buf, 3) && !strcmp(buf, "pi"));
	EXPECT(!hv_arg("nothing", buf, sizeof buf));
	set_cmdline("");
	EXPECT(!hv_arg_present("ring") && hv_arg_u64("ring", 3) == 3);

	printf("%d failures\n", failures);
	return failures != 0;
}
"""


def test_runtime_printf_and_cmdline_match_libc(tmp_path):
    root = images.GUEST_IMAGES_DIR
    (tmp_path / "harness.c").write_text(HARNESS)
    exe = tmp_path / "harness"
    rt_flags = ["-O2", "-ffreestanding", "-fno-builtin", "-fno-tree-loop-distribute-patterns",
                "-I", str(root / "include"), "-I", str(root / "rt")]
    objs = []
    for src in ("rt/u_printf.c", "rt/u_string.c", "rt/u_cmdline.c"):
        obj = tmp_path / (Path(src).stem + ".o")
        subprocess.run(["gcc", *rt_flags, "-c", str(root / src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    subprocess.run(["gcc", "-O1", "-Wno-format", "-I", str(root / "include"), "-o", str(exe),
                    str(tmp_path / "harness.c"), *objs], check=True)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 failures" in res.stdout
