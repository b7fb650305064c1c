"""hvkvm.kvm.abi against the kernel's own headers: layout bugs cannot land.

A C program is generated from the ctypes definitions (walking ``_fields_``, recursing into nested
structs, unions, arrays and anonymous members), compiled against the system's ``<linux/kvm.h>``
(package linux-libc-dev) and run. For every struct in ``abi.KVM_STRUCTS`` it prints ``sizeof`` and
``__alignof__``; for every field at every depth ``offsetof``, ``sizeof``, ``__alignof__`` and, for
scalars, the integer kind (width, signedness, char, pointer); and the value of every public
upper-case integer in ``abi`` (ioctl numbers and constants) under the macro of the same name. Each
difference is reported as ``struct.field what: ctypes X != header Y``; a field or macro that the
header does not have is reported by name too (each check is on its own source line, so a compiler
error maps back to the field).

Needs gcc and <linux/kvm.h>; skips (saying which is missing) without them. No KVM needed, except
for the last test, which runs a 4-byte real-mode guest through abi + _ioctl alone when /dev/kvm is
usable.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import pickle
import platform
import re
import shutil
import subprocess
import warnings

import pytest

from hvkvm.kvm import abi
from hvkvm.kvm._ioctl import ioctl
from hvkvm.kvm.errors import KvmError, KvmUnavailable

# --------------------------------------------------------------------------------------------
# ctypes side
# --------------------------------------------------------------------------------------------

_STRUCT_TYPES = (ctypes.Structure, ctypes.Union)


def _is_aggregate(t) -> bool:
    return isinstance(t, type) and issubclass(t, _STRUCT_TYPES)


def _is_array(t) -> bool:
    return isinstance(t, type) and issubclass(t, ctypes.Array)


def _kind(t) -> str:
    """The integer kind of a scalar ctypes type, spelled like the C side prints it."""
    if t is ctypes.c_char:
        return "char"
    if t in (ctypes.c_void_p, ctypes.c_char_p) or (
            isinstance(t, type) and issubclass(t, ctypes._Pointer)):
        return "ptr"
    code = getattr(t, "_type_", None)
    if not isinstance(code, str) or code not in "bBhHiIlLqQ":
        raise TypeError(f"unsupported scalar ctypes type {t!r}")
    return ("s" if code.islower() else "u") + str(ctypes.sizeof(t) * 8)


def _kinds_match(ctypes_kind: str, c_kind: str) -> bool:
    # The kernel uses plain ``char`` only for raw byte blobs (kvm_run padding, kvm_lapic_state
    # regs, kvm_stats_desc name); any one-byte ctypes type is a faithful view of those.
    if c_kind == "char":
        return ctypes_kind in ("char", "u8", "s8")
    return ctypes_kind == c_kind


class _Check:
    """One value to compare: ``label`` (e.g. ``kvm_run.io.port offset``), a C expression
    printed by the program, the ctypes value, and how to print/compare it."""

    __slots__ = ("label", "c_expr", "expected", "fmt")

    def __init__(self, label: str, c_expr: str, expected, fmt: str):
        self.label, self.c_expr, self.expected, self.fmt = label, c_expr, expected, fmt


def _tag(cls) -> str:
    return ("union " if issubclass(cls, ctypes.Union) else "struct ") + cls.__name__


def _walk(top, cls, cpath: str, base_off: int, checks: list[_Check]) -> None:
    """Add checks for every field of ``cls`` (nested in ``top`` at C path ``cpath``)."""
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for field in cls._fields_:
        if len(field) != 2:
            raise AssertionError(f"{top.__name__}: bitfield {field[0]!r} is not supported")
        name, ftype = field
        desc = getattr(cls, name)
        off = base_off + desc.offset
        if name in anonymous:
            # The kernel has no name for this member: its fields are reached through the parent.
            if not _is_aggregate(ftype):
                raise AssertionError(f"{top.__name__}.{name}: anonymous member must be a struct/union")
            _walk(top, ftype, cpath, off, checks)
            continue
        path = f"{cpath}.{name}" if cpath else name
        _member(top, path, ftype, off, checks)


def _member(top, path: str, ftype, off: int, checks: list[_Check], offset_known: bool = True):
    label = f"{top.__name__}.{path}"
    member = f"((({_tag(top)} *)0)->{path})"
    if offset_known:
        checks.append(_Check(f"{label} offset", f"offsetof({_tag(top)}, {path})", off, "u"))
    flexible = _is_array(ftype) and ftype._length_ == 0
    if not flexible:  # sizeof a flexible array member is not C
        checks.append(_Check(f"{label} size", f"sizeof{member}", ctypes.sizeof(ftype), "u"))
        checks.append(_Check(f"{label} align", f"__alignof__{member}", ctypes.alignment(ftype), "u"))
    if _is_aggregate(ftype):
        _walk(top, ftype, path, off, checks)
    elif _is_array(ftype):
        if not flexible:
            checks.append(_Check(f"{label} length", f"(sizeof{member} / sizeof{member}[0])",
                                 ftype._length_, "u"))
        # Element 0 stands for all elements (offsets of elements follow from size and length).
        _member(top, f"{path}[0]", ftype._type_, off, checks)
    else:
        checks.append(_Check(f"{label} kind", f"KIND({member})", _kind(ftype), "s"))


def _struct_checks() -> list[_Check]:
    checks: list[_Check] = []
    for cls in abi.KVM_STRUCTS:
        checks.append(_Check(f"{cls.__name__} sizeof", f"sizeof({_tag(cls)})", ctypes.sizeof(cls), "u"))
        checks.append(_Check(f"{cls.__name__} align", f"__alignof__({_tag(cls)})",
                             ctypes.alignment(cls), "u"))
        _walk(cls, cls, "", 0, checks)
    return checks


def _abi_constants() -> dict[str, int]:
    """Every public upper-case integer in abi: each must be a macro of the same name and value."""
    out = {}
    for name, value in vars(abi).items():
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and type(value) is int:
            out[name] = value
    return out


# --------------------------------------------------------------------------------------------
# C side
# --------------------------------------------------------------------------------------------

_C_PRELUDE = r"""
#include <stddef.h>
#include <stdio.h>
#include <linux/kvm.h>

#define KIND(e) _Generic((e), \
    char: "char", signed char: "s8", unsigned char: "u8", \
    short: "s16", unsigned short: "u16", int: "s32", unsigned int: "u32", \
    long: "s64", unsigned long: "u64", long long: "s64", unsigned long long: "u64", \
    default: (__builtin_classify_type(e) == 5 ? "ptr" : "other"))
#define U(label, e) printf("%s\t%llu\n", label, (unsigned long long)(e))
#define S(label, e) printf("%s\t%s\n", label, (e))
#define MISSING(label) printf("%s\tMISSING\n", label)

int main(void)
{
"""


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _generate(checks: list[_Check], constants: dict[str, int]) -> tuple[str, dict[int, str]]:
    """C source, and source line -> label (to name the field behind a compiler error)."""
    lines = _C_PRELUDE.strip("\n").split("\n")
    where: dict[int, str] = {}

    def add(text: str, label: str | None = None):
        lines.append(text)
        if label is not None:
            where[len(lines)] = label

    for chk in checks:
        macro = "U" if chk.fmt == "u" else "S"
        add(f"    {macro}({_c_string(chk.label)}, {chk.c_expr});", chk.label)
    for name in constants:
        label = f"{name} value"
        add(f"#ifdef {name}")
        add(f"    U({_c_string(label)}, {name});", label)
        add("#else")
        add(f"    MISSING({_c_string(label)});")
        add("#endif")
    add("    return 0;")
    add("}")
    return "\n".join(lines) + "\n", where


def _tool_skip_reason() -> str | None:
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"hvkvm.kvm.abi describes x86-64; this machine is {platform.machine()}"
    if shutil.which("gcc") is None:
        return "gcc not found: cannot compile the <linux/kvm.h> layout probe"
    probe = subprocess.run(["gcc", "-E", "-x", "c", "-"], input="#include <linux/kvm.h>\n",
                           capture_output=True, text=True)
    if probe.returncode != 0:
        first = (probe.stderr.strip().splitlines() or ["gcc -E failed"])[0]
        return f"<linux/kvm.h> not usable (install linux-libc-dev): {first}"
    return None


class _HeaderFacts:
    """The compiled probe's output and the header's macros."""

    def __init__(self, values: dict[str, str], compile_errors: dict[str, str], macros: dict[str, str]):
        self.values = values
        self.compile_errors = compile_errors
        self.macros = macros


@pytest.fixture(scope="module")
def header(tmp_path_factory) -> _HeaderFacts:
    reason = _tool_skip_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("abi_layout")
    checks = _struct_checks()
    constants = _abi_constants()
    source, where = _generate(checks, constants)
    src = tmp / "kvm_layout.c"
    exe = tmp / "kvm_layout"
    src.write_text(source)

    macros_out = subprocess.run(["gcc", "-dM", "-E", "-x", "c", "-"],
                                input="#include <linux/kvm.h>\n", capture_output=True, text=True,
                                check=True).stdout
    macros = {}
    for line in macros_out.splitlines():
        m = re.match(r"#define (\w+) (.*)", line)
        if m:
            macros[m.group(1)] = m.group(2).strip()

    cc = subprocess.run(["gcc", "-std=gnu11", "-O0", "-w", "-fmax-errors=0", "-o", str(exe), str(src)],
                        capture_output=True, text=True)
    if cc.returncode != 0:
        errors: dict[str, str] = {}
        for line in cc.stderr.splitlines():
            m = re.match(rf"{re.escape(str(src))}:(\d+):\d+: error: (.*)", line)
            if m:
                label = where.get(int(m.group(1)), f"line {m.group(1)}")
                errors.setdefault(label, m.group(2))
        if not errors:
            pytest.fail(f"the layout probe did not compile:\n{cc.stderr[-4000:]}")
        return _HeaderFacts({}, errors, macros)
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    values = {}
    for line in run.stdout.splitlines():
        label, _, value = line.partition("\t")
        values[label] = value
    return _HeaderFacts(values, {}, macros)


def _no_compile_errors(header: _HeaderFacts) -> None:
    if header.compile_errors:
        lines = [f"{label}: not in the header ({msg})"
                 for label, msg in sorted(header.compile_errors.items())]
        pytest.fail("abi names what <linux/kvm.h> does not have:\n  " + "\n  ".join(lines))


# --------------------------------------------------------------------------------------------
# The layout and constant checks
# --------------------------------------------------------------------------------------------


def test_struct_layouts_match_header(header):
    """sizeof/alignment of every struct; offset/size/alignment/kind of every field, at any depth."""
    _no_compile_errors(header)
    checks = _struct_checks()
    assert len(checks) > 500  # the walk really reaches into the structs
    bad = []
    for chk in checks:
        got = header.values.get(chk.label)
        if got is None:
            bad.append(f"{chk.label}: not printed by the probe")
            continue
        if chk.fmt == "u":
            if int(got) != chk.expected:
                bad.append(f"{chk.label}: ctypes {chk.expected} != header {got}")
        elif not _kinds_match(chk.expected, got):
            bad.append(f"{chk.label}: ctypes {chk.expected} != header {got}")
    assert not bad, "ctypes layout differs from <linux/kvm.h>:\n  " + "\n  ".join(bad)


def test_ioctl_numbers_and_constants_match_header(header):
    """Every public upper-case integer in abi equals the header macro of that name."""
    _no_compile_errors(header)
    bad = []
    for name, value in _abi_constants().items():
        got = header.values.get(f"{name} value")
        if got is None:
            bad.append(f"{name}: not printed by the probe")
        elif got == "MISSING":
            bad.append(f"{name}: no such macro in <linux/kvm.h>")
        elif int(got) != value & ((1 << 64) - 1):
            bad.append(f"{name}: abi {value:#x} != header {int(got):#x}")
    assert not bad, "abi constants differ from <linux/kvm.h>:\n  " + "\n  ".join(bad)


def _numeric_macros(header: _HeaderFacts, prefix: str) -> dict[str, int]:
    out = {}
    for name, body in header.macros.items():
        if name.startswith(prefix):
            m = re.fullmatch(r"\(?\s*(0x[0-9a-fA-F]+|\d+)\s*\)?", body)
            if m:
                out[name] = int(m.group(1), 0)
    return out


_NOT_EXIT_REASONS = {"KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT", "KVM_EXIT_HYPERV_SYNIC",
                     "KVM_EXIT_HYPERV_HCALL", "KVM_EXIT_HYPERV_SYNDBG", "KVM_EXIT_XEN_HCALL"}
_FOREIGN_CAP = re.compile(r"KVM_CAP_(S390|PPC|ARM|MIPS|SPAPR|RISCV|LOONGARCH)_")
_FOREIGN_CAPS_WITHOUT_PREFIX = {"KVM_CAP_IRQ_MPIC", "KVM_CAP_IRQ_XICS"}  # PowerPC interrupt controllers


def _complete(found: dict[str, int], ours: dict[int, str], what: str) -> None:
    known_max = max(ours)
    missing = {n: v for n, v in found.items() if ours.get(v) != n}
    old = sorted(f"{n} = {v}" for n, v in missing.items() if v <= known_max)
    new = sorted(f"{n} = {v}" for n, v in missing.items() if v > known_max)
    if new:  # a newer header than abi was written against: worth adding, not a layout bug
        warnings.warn(f"<linux/kvm.h> has {what} newer than abi knows: {', '.join(new)}")
    assert not old, f"abi lacks {what} from <linux/kvm.h>: {', '.join(old)}"


def test_exit_reason_names_complete(header):
    """EXIT_REASON_NAMES names every KVM_EXIT_* reason of the header."""
    exits = {n: v for n, v in _numeric_macros(header, "KVM_EXIT_").items()
             if n not in _NOT_EXIT_REASONS}
    assert len(exits) >= 38
    _complete(exits, abi.EXIT_REASON_NAMES, "exit reasons")
    assert abi.exit_reason_name(abi.KVM_EXIT_IO) == "KVM_EXIT_IO"
    assert abi.exit_reason_name(250) == "KVM_EXIT_250"


def test_cap_names_complete(header):
    """CAP_NAMES names every KVM_CAP_* of the header except other architectures' ones."""
    caps = {n: v for n, v in _numeric_macros(header, "KVM_CAP_").items()
            if not _FOREIGN_CAP.match(n) and n not in _FOREIGN_CAPS_WITHOUT_PREFIX}
    _complete(caps, abi.CAP_NAMES, "capabilities")


# --------------------------------------------------------------------------------------------
# Checks that need no compiler
# --------------------------------------------------------------------------------------------


def test_every_public_struct_is_registered():
    """A struct that is not in KVM_STRUCTS would escape the layout check."""
    public = {name for name, obj in vars(abi).items()
              if _is_aggregate(obj) and not name.startswith("_")}
    registered = {cls.__name__ for cls in abi.KVM_STRUCTS}
    assert public == registered, (public - registered, registered - public)
    for cls in abi.KVM_STRUCTS:
        assert cls.__name__.startswith("kvm_"), cls
        assert getattr(abi, cls.__name__) is cls
        assert cls.__doc__, f"{cls.__name__} has no docstring"


# The ioctls the bindings are required to provide (all exist in the 6.1 header).
REQUIRED_IOCTLS = """
KVM_GET_API_VERSION KVM_CREATE_VM KVM_GET_MSR_INDEX_LIST KVM_GET_MSR_FEATURE_INDEX_LIST
KVM_CHECK_EXTENSION KVM_GET_VCPU_MMAP_SIZE KVM_GET_SUPPORTED_CPUID KVM_SET_USER_MEMORY_REGION
KVM_SET_TSS_ADDR KVM_SET_IDENTITY_MAP_ADDR KVM_CREATE_IRQCHIP KVM_CREATE_PIT2 KVM_IRQ_LINE
KVM_IRQ_LINE_STATUS KVM_SET_GSI_ROUTING KVM_IRQFD KVM_IOEVENTFD KVM_SIGNAL_MSI KVM_ENABLE_CAP
KVM_GET_DIRTY_LOG KVM_CLEAR_DIRTY_LOG KVM_CREATE_VCPU KVM_RUN KVM_GET_REGS KVM_SET_REGS
KVM_GET_SREGS KVM_SET_SREGS KVM_GET_FPU KVM_SET_FPU KVM_SET_CPUID2 KVM_GET_CPUID2 KVM_GET_MSRS
KVM_SET_MSRS KVM_GET_LAPIC KVM_SET_LAPIC KVM_SET_GUEST_DEBUG KVM_GET_MP_STATE KVM_SET_MP_STATE
KVM_GET_VCPU_EVENTS KVM_SET_VCPU_EVENTS KVM_GET_DEBUGREGS KVM_SET_DEBUGREGS KVM_GET_XSAVE
KVM_SET_XSAVE KVM_GET_XCRS KVM_SET_XCRS KVM_GET_CLOCK KVM_SET_CLOCK KVM_X86_SET_MSR_FILTER
KVM_TRANSLATE KVM_INTERRUPT KVM_NMI KVM_REGISTER_COALESCED_MMIO KVM_UNREGISTER_COALESCED_MMIO
KVM_GET_STATS_FD KVM_SET_SIGNAL_MASK
""".split()


def test_required_ioctls_present_and_unique():
    missing = [n for n in REQUIRED_IOCTLS if n not in abi.IOCTLS]
    assert not missing, missing
    assert len(set(abi.IOCTLS.values())) == len(abi.IOCTLS)
    assert all(abi.IOCTL_NAMES[v] == n for n, v in abi.IOCTLS.items())
    # Spot checks against numbers everyone knows.
    assert abi.KVM_RUN == 0xAE80
    assert abi.KVM_GET_REGS == 0x8090AE81
    assert abi.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert abi.KVM_CREATE_VCPU == 0xAE41


def test_ioc_encoding_rejects_oversized_argument():
    with pytest.raises(ValueError):
        abi._IOW(abi.KVMIO, 1, 1 << 14)


def test_anonymous_members_read_like_c():
    run = abi.kvm_run()
    assert abi.kvm_run.io.offset == abi.kvm_run.mmio.offset == abi.kvm_run.msr.offset == 32
    run.io.port = 0x3F8
    assert run.io.port == 0x3F8
    assert ctypes.string_at(ctypes.addressof(run) + 32 + 2, 2) == b"\xf8\x03"
    run.mmio.phys_addr = 0xD0000000
    run.msr.index = 0x40000000
    run.s.regs.regs.rax = 7
    assert run.s.regs.regs.rax == 7
    run.system_event.data[1] = 9  # union members overlay, as in C
    assert run.internal.data[1] == 9 and run.emulation_failure.insn_size == 9
    run.emulation_failure.insn_size = 3
    assert run.system_event.data[1] == 3 and run.internal.suberror == 0xD0000000  # mmio.phys_addr
    level = abi.kvm_irq_level(irq=4, level=1)
    assert (level.irq, level.status, level.level) == (4, 4, 1)
    level.status = -1
    assert level.irq == 0xFFFFFFFF
    zone = abi.kvm_coalesced_mmio_zone(addr=0x3F8, size=8, pio=1)
    assert zone.pad == 1
    log = abi.kvm_dirty_log(slot=1, dirty_bitmap=0x1000)
    assert log.padding2 == 0x1000
    msi = abi.kvm_irq_routing_msi(address_lo=0xFEE00000, data=0x31, devid=5)
    assert msi.pad == 5


@pytest.mark.parametrize("base, count_field, make", [
    (abi.kvm_cpuid2, "nent", abi.make_kvm_cpuid2),
    (abi.kvm_msrs, "nmsrs", abi.make_kvm_msrs),
    (abi.kvm_msr_list, "nmsrs", abi.make_kvm_msr_list),
    (abi.kvm_irq_routing, "nr", abi.make_kvm_irq_routing),
])
def test_flex_helpers(base, count_field, make):
    elem_size = ctypes.sizeof(base._fields_[-1][1]._type_)
    for n in (0, 1, 5):
        obj = make(n)
        assert getattr(obj, count_field) == n
        assert ctypes.sizeof(obj) == ctypes.sizeof(base) + n * elem_size
        for name, _t in base._fields_:
            assert getattr(type(obj), name).offset == getattr(base, name).offset
        assert len(getattr(obj, base._flex_)) == n
    assert abi.flex_type(base, 3) is abi.flex_type(base, 3)


def test_flex_type_for_every_flexible_struct():
    for cls in abi.KVM_STRUCTS:
        if getattr(cls, "_flex_", None):
            variant = abi.flex_type(cls, 2)
            for name, _t in cls._fields_[:-1]:
                assert getattr(variant, name).offset == getattr(cls, name).offset
    with pytest.raises(TypeError):
        abi.flex_type(abi.kvm_regs, 1)


def test_signal_mask_and_xsave_helpers():
    mask = abi.make_kvm_signal_mask(b"\x01\x02\x03\x04\x05\x06\x07\x08")
    assert mask.len == 8 and bytes(mask.sigset) == b"\x01\x02\x03\x04\x05\x06\x07\x08"
    xs = abi.make_kvm_xsave(4096 + 64)
    assert ctypes.sizeof(xs) == 4096 + 64 and len(xs.extra) == 16
    assert ctypes.sizeof(abi.make_kvm_xsave()) == 4096
    with pytest.raises(ValueError):
        abi.make_kvm_xsave(100)


def test_coalesced_mmio_max():
    assert abi.coalesced_mmio_max(4096) == (4096 - 8) // 24


# --------------------------------------------------------------------------------------------
# errors and the ioctl choke point (no KVM needed)
# --------------------------------------------------------------------------------------------


def test_kvm_error_reads_like_the_spec():
    e = KvmError("KVM_CREATE_VCPU", errno.EINVAL)
    assert str(e) == "KVM_CREATE_VCPU: Invalid argument (errno 22)"
    assert isinstance(e, OSError)
    assert (e.ioctl, e.errno, e.strerror) == ("KVM_CREATE_VCPU", 22, "Invalid argument")
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is KvmError and str(again) == str(e) and again.ioctl == e.ioctl
    assert "EINVAL" in repr(e)
    assert str(KvmError("KVM_RUN", errno.EINTR, "kicked")) == "KVM_RUN: Interrupted system call (errno 4): kicked"


def test_kvm_unavailable():
    e = KvmUnavailable("open /dev/kvm", errno.EACCES)
    assert isinstance(e, KvmError) and e.errno == errno.EACCES
    assert str(e).startswith("open /dev/kvm: Permission denied (errno 13): ")
    assert "kvm" in str(e)
    u = KvmUnavailable.from_open_error("/dev/kvm", FileNotFoundError(errno.ENOENT, "x"))
    assert type(u) is KvmUnavailable and u.ioctl == "open /dev/kvm"
    other = KvmUnavailable.from_open_error("/dev/kvm", OSError(errno.EMFILE, "x"))
    assert type(other) is KvmError
    assert type(pickle.loads(pickle.dumps(u))) is KvmUnavailable


def test_ioctl_raises_kvm_error_naming_the_ioctl():
    with pytest.raises(KvmError) as info:
        ioctl(-1, "KVM_GET_API_VERSION", abi.KVM_GET_API_VERSION)
    assert info.value.errno == errno.EBADF and info.value.ioctl == "KVM_GET_API_VERSION"
    # A ctypes object, byref and pointer are all accepted; EBADF still comes back named.
    regs = abi.kvm_regs()
    for arg in (regs, ctypes.byref(regs), ctypes.pointer(regs), None, -1):
        with pytest.raises(KvmError) as info:
            ioctl(-1, "KVM_GET_REGS", abi.KVM_GET_REGS, arg)
        assert info.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        ioctl(-1, "KVM_GET_REGS", abi.KVM_GET_REGS, "not an argument")


# --------------------------------------------------------------------------------------------
# The same ABI against the running kernel (only where /dev/kvm is usable)
# --------------------------------------------------------------------------------------------


def _open_kvm() -> int:
    # tests/conftest.py applies the ``kvm`` marker policy (skip, or fail under
    # HVKVM_REQUIRE_KVM=1) before we get here; this only turns a late failure into a clear one.
    try:
        return os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise KvmUnavailable.from_open_error("/dev/kvm", exc) from None


@pytest.mark.kvm
def test_real_mode_out_and_hlt_through_abi_only():
    """A 5-byte real-mode guest (mov al,0x42; out 0x10,al; hlt) run with abi + _ioctl alone:
    checks kvm_run.io, the PIO data page, sync regs and the regs/sregs structs on a real kernel."""
    kvm = _open_kvm()
    fds, maps = [kvm], []
    try:
        assert ioctl(kvm, "KVM_GET_API_VERSION", abi.KVM_GET_API_VERSION) == abi.KVM_API_VERSION
        mmap_size = ioctl(kvm, "KVM_GET_VCPU_MMAP_SIZE", abi.KVM_GET_VCPU_MMAP_SIZE)
        assert mmap_size >= ctypes.sizeof(abi.kvm_run)
        sync = ioctl(kvm, "KVM_CHECK_EXTENSION", abi.KVM_CHECK_EXTENSION, abi.KVM_CAP_SYNC_REGS)

        vm = ioctl(kvm, "KVM_CREATE_VM", abi.KVM_CREATE_VM, 0)
        fds.append(vm)
        ram = mmap.mmap(-1, 0x10000)
        maps.append(ram)
        ram[0x1000:0x1005] = bytes([0xB0, 0x42, 0xE6, 0x10, 0xF4])
        host = ctypes.addressof(ctypes.c_char.from_buffer(ram))
        region = abi.kvm_userspace_memory_region(slot=0, guest_phys_addr=0, memory_size=0x10000,
                                                 userspace_addr=host)
        ioctl(vm, "KVM_SET_USER_MEMORY_REGION", abi.KVM_SET_USER_MEMORY_REGION, region)

        vcpu = ioctl(vm, "KVM_CREATE_VCPU", abi.KVM_CREATE_VCPU, 0)
        fds.append(vcpu)
        run_map = mmap.mmap(vcpu, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        maps.append(run_map)
        run = abi.kvm_run.from_buffer(run_map)

        sregs = abi.kvm_sregs()
        ioctl(vcpu, "KVM_GET_SREGS", abi.KVM_GET_SREGS, sregs)
        sregs.cs.base, sregs.cs.selector = 0, 0
        ioctl(vcpu, "KVM_SET_SREGS", abi.KVM_SET_SREGS, sregs)
        regs = abi.kvm_regs(rip=0x1000, rflags=0x2, rsp=0x8000)
        ioctl(vcpu, "KVM_SET_REGS", abi.KVM_SET_REGS, regs)
        if sync & abi.KVM_SYNC_X86_REGS:
            run.kvm_valid_regs = abi.KVM_SYNC_X86_REGS

        ioctl(vcpu, "KVM_RUN", abi.KVM_RUN)
        assert run.exit_reason == abi.KVM_EXIT_IO, abi.exit_reason_name(run.exit_reason)
        assert (run.io.direction, run.io.size, run.io.port, run.io.count) == (abi.KVM_EXIT_IO_OUT, 1, 0x10, 1)
        assert run_map[run.io.data_offset] == 0x42
        got = abi.kvm_regs()
        ioctl(vcpu, "KVM_GET_REGS", abi.KVM_GET_REGS, got)
        assert got.rax & 0xFF == 0x42
        if sync & abi.KVM_SYNC_X86_REGS:
            assert run.s.regs.regs.rax == got.rax and run.s.regs.regs.rip == got.rip

        ioctl(vcpu, "KVM_RUN", abi.KVM_RUN)
        assert run.exit_reason == abi.KVM_EXIT_HLT, abi.exit_reason_name(run.exit_reason)
        del run
    finally:
        for m in reversed(maps):
            try:
                m.close()
            except BufferError:  # a from_buffer view still alive after a failed assert
                pass
        for fd in reversed(fds):
            os.close(fd)
