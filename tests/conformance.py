"""Three-way wire-layout conformance: Linux's BTF, Python ctypes and a C header, compared.

The machinery shared by ``test_linux_conformance.py`` (VMBus), ``test_storvsc_conformance.py``,
``test_netvsc_conformance.py`` and ``test_ic_conformance.py``. Every side is reduced to one
shape, ``(sizeof, {path: (bit_offset, bit_size, byte_size)})``:

* Linux: ``linux_btf.Layout`` through ``btf_layout()``;
* Python: the ctypes class, ``_fields_`` walked with anonymous members flattened like C
  (``python_layout()``);
* C: a generated program compiled with gcc against the header (``CProbe``): ``offsetof`` and
  ``sizeof`` per member, and for bit-fields the bits that come out set when the member alone is
  assigned all ones; a probe line that does not compile is recorded with gcc's message.

``compare()`` names ``struct.member``, what differs, and every side's value. ``WireSpec`` ties
one protocol together (its header, its structs, the Linux modules whose BTF has them) so that a
test file keeps only its lists and the checks that are really its own
(``test_storvsc_conformance.py`` is the smallest user: a WireSpec, a ``c_measured`` fixture
calling ``measure_c()``, and ``test_layout_matches_linux`` calling ``check_layout()``).

The fixture ``btf`` (``from conformance import btf_fixture  # noqa: F401``) is Linux's BTF, or
None under ``HVKVM_SKIP_BTF=1`` (then Python is compared with C only); BTF that cannot be had
fails.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

import linux_btf

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"

# --------------------------------------------------------------------------------------------
# One shape for all three sides: path -> (bit_offset, bit_size, size)
# --------------------------------------------------------------------------------------------


def _is_aggregate(t) -> bool:
    return isinstance(t, type) and issubclass(t, (ctypes.Structure, ctypes.Union))


def python_layout(cls) -> tuple[int, dict[str, tuple[int, int, int]]]:
    """(sizeof, members) of a ctypes class, flattened like linux_btf flattens BTF."""
    out: dict[str, tuple[int, int, int]] = {}

    def walk(c, prefix: str, base_bytes: int):
        anonymous = set(getattr(c, "_anonymous_", ()))
        for fld in c._fields_:
            name, ftype = fld[0], fld[1]
            desc = getattr(c, name)
            off = base_bytes + desc.offset
            if len(fld) == 3:
                if hasattr(desc, "bit_size"):  # Python >= 3.14
                    width, bitpos = desc.bit_size, desc.bit_offset
                else:  # desc.size = (width << 16) | bit position in its storage unit
                    width, bitpos = desc.size >> 16, desc.size & 0xFFFF
                out[prefix + name] = (off * 8 + bitpos, width, ctypes.sizeof(ftype))
                continue
            if name in anonymous:
                walk(ftype, prefix, off)
                continue
            out[prefix + name] = (off * 8, 0, ctypes.sizeof(ftype))
            if _is_aggregate(ftype):
                walk(ftype, prefix + name + ".", off)

    walk(cls, "", 0)
    return ctypes.sizeof(cls), out


def python_paths(cls) -> dict[str, bool]:
    """Every member path of a ctypes class -> whether it is a bit-field."""
    return {p: m[1] > 0 for p, m in python_layout(cls)[1].items()}


def btf_layout(lay: linux_btf.Layout) -> tuple[int, dict[str, tuple[int, int, int]]]:
    """(sizeof, members) of a Linux BTF layout, in the shape python_layout() gives."""
    return lay.size, {k: (m.bit_offset, m.bit_size, m.size) for k, m in lay.fields.items()}


def c_type(cls) -> str:
    """The C spelling of a ctypes class's type (a name ending in _t is a typedef)."""
    name = cls.__name__
    if name.endswith("_t"):
        return name  # typedef (guid_t)
    return ("union " if issubclass(cls, ctypes.Union) else "struct ") + name


def int_constants(module) -> dict[str, int]:
    """Every integer constant (UPPER_CASE name, not a bool) a wire module defines."""
    return {n: int(v) for n, v in vars(module).items()
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", n) and isinstance(v, int)
            and not isinstance(v, bool)}


# --------------------------------------------------------------------------------------------
# C side: a generated program, compiled until every line that can compile does
# --------------------------------------------------------------------------------------------

_C_PRELUDE = r"""
#include <stddef.h>
#include <stdio.h>
#include <string.h>
%(includes)s

static void bits(const char *label, const unsigned char *b, size_t n)
{
	int first = -1, count = 0;
	for (size_t i = 0; i < n * 8; i++)
		if (b[i / 8] >> (i %% 8) & 1) {
			if (first < 0)
				first = (int)i;
			count++;
		}
	printf("%%s\tbitoff\t%%d\n%%s\tbitsize\t%%d\n", label, first, label, count);
}
#define U(label, kind, e) printf("%%s\t%%s\t%%llu\n", label, kind, (unsigned long long)(e))

int main(void)
{
"""


def cstr(s: str) -> str:
    """s as a C string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def need_gcc(what: str) -> None:
    """Fail (not skip) without gcc: the C side is part of what these tests prove."""
    if not shutil.which("gcc"):
        pytest.fail(f"gcc is needed to measure {what}")


class CProbe:
    """Compile probes against C headers; a probe whose line does not compile is recorded with
    gcc's message instead of a value."""

    def __init__(self, includes: list[str], include_dirs: list[Path]):
        self.includes = includes
        self.include_dirs = include_dirs
        self.lines: list[tuple[str, str]] = []  # (key, C statement)

    def add(self, key: str, stmt: str):
        """One C statement whose U()/bits() output is filed under key."""
        self.lines.append((key, stmt))

    def add_value(self, key: str, expr: str) -> None:
        """A probe for the integer value of a C expression (a constant), filed as "value"."""
        self.add(key, f"U({cstr(key)}, \"value\", {expr});")

    def run(self, workdir: Path) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
        """({key: {kind: value}}, {key: first gcc error}) ."""
        active = list(range(len(self.lines)))
        errors: dict[str, str] = {}
        src, exe = workdir / "probe.c", workdir / "probe"
        incs = "\n".join(f'#include "{h}"' for h in self.includes)
        prelude = (_C_PRELUDE % {"includes": incs}).lstrip("\n")
        first_line = prelude.count("\n") + 1
        for _ in range(6):
            body = "\n".join(f"\t{self.lines[i][1]}" for i in active)
            src.write_text(prelude + body + "\n\treturn 0;\n}\n")
            cmd = ["gcc", "-std=gnu11", "-w", "-fmax-errors=0", "-o", str(exe), str(src)]
            cmd[1:1] = [f"-I{d}" for d in self.include_dirs]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode == 0:
                break
            bad = {}
            where = rf"^{re.escape(str(src))}:(\d+):\d+: error: (.*)$"
            for m in re.finditer(where, r.stderr, re.M):
                idx = int(m.group(1)) - first_line
                if 0 <= idx < len(active):
                    bad.setdefault(active[idx], m.group(2))
            if not bad:
                raise AssertionError("C probe does not compile (headers broken?):\n"
                                     + r.stderr[-4000:])
            for i, msg in bad.items():
                errors.setdefault(self.lines[i][0], msg)
            active = [i for i in active if i not in bad]
        else:
            raise AssertionError("C probe: compile errors did not converge:\n" + r.stderr[-4000:])
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
        values: dict[str, dict[str, int]] = {}
        for line in out.splitlines():
            key, kind, val = line.split("\t")
            values.setdefault(key, {})[kind] = int(val)
        return values, errors


def add_struct_probes(probe: CProbe, cls, paths: dict[str, bool]) -> None:
    """Probes for sizeof(cls) and each path (path -> is a bit-field on some side)."""
    ct, name = c_type(cls), cls.__name__
    probe.add(f"{name}|", f"U({cstr(name + '|')}, \"sizeof\", sizeof({ct}));")
    for path, bitfield in paths.items():
        key = f"{name}|{path}"
        if bitfield:
            probe.add(key, "{ union { %s s; unsigned char b[sizeof(%s)]; } u_; "
                           "memset(&u_, 0, sizeof u_); u_.s.%s = -1; bits(%s, u_.b, sizeof u_); }"
                      % (ct, ct, path, cstr(key)))
        else:
            probe.add(key, f"U({cstr(key)}, \"off\", offsetof({ct}, {path}));")
            probe.add(key + "|size", f"U({cstr(key)}, \"size\", sizeof((({ct} *)0)->{path}));")


def c_layout(values, errors, cls, paths: dict[str, bool]):
    """(sizeof or None, members, missing-reasons) of cls as the C probe measured it."""
    name = cls.__name__
    size = values.get(f"{name}|", {}).get("sizeof")
    members, missing = {}, {}
    for path, bitfield in paths.items():
        key = f"{name}|{path}"
        v = values.get(key, {})
        if bitfield and "bitoff" in v:
            members[path] = (v["bitoff"], v["bitsize"], None)
        elif "off" in v:
            # sizeof of a flexible array member does not compile: size 0
            flex = (key + "|size") in errors
            members[path] = (v["off"] * 8, 0, v.get("size", 0 if flex else None))
        else:
            missing[path] = errors.get(key, "not measured")
    return size, members, missing


def c_header_report(workdir: Path, text: str, references: dict, paths: dict | None = None) -> str:
    """What compare() says of a C header with this text (a self-test's deliberately wrong one),
    one line a difference: for each class, its reference side against the header's C, then each
    member C could not measure.

    references: cls -> (label, (sizeof, members)); paths: cls -> the paths to measure (default:
    the Python class's)."""
    need_gcc("a C header")
    (workdir / "bad.h").write_text(text)
    probe = CProbe(["bad.h"], [workdir])
    paths = paths or {cls: python_paths(cls) for cls in references}
    for cls in references:
        add_struct_probes(probe, cls, paths[cls])
    work = workdir / "w"
    work.mkdir()
    values, errors = probe.run(work)
    report = ""
    for cls, (label, shape) in references.items():
        size, members, missing = c_layout(values, errors, cls, paths[cls])
        report += "\n".join(compare(cls.__name__, {label: shape, "C": (size, members)},
                                    label)) + "\n"
        report += "\n".join(f"{cls.__name__}.{p}: {w}" for p, w in missing.items()) + "\n"
    return report


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------

def _fmt(what: str, v) -> str:
    if v is None:
        return "-"
    if what == "offset":
        bit, width = v
        return f"{bit // 8}" if (width == 0 and bit % 8 == 0) else f"bit {bit}"
    return str(v)


def compare(name: str, sides: dict[str, tuple[int | None, dict]], reference: str,
            flex_tail: frozenset[str] = frozenset()) -> list[str]:
    """Differences between the sides (label -> (sizeof, members)), each naming struct.member, the
    field that differs and every side's value. Paths are the union of all sides' paths.

    flex_tail: members of this struct that are a one-element array on the reference side and may
    be a flexible array member on another (same wire format: sized by offsetof + n * sizeof)."""
    problems = []
    ref_size, ref_members = sides[reference]
    labels = list(sides)
    paths = list(ref_members) + [p for s in sides.values() for p in s[1] if p not in ref_members]
    paths = list(dict.fromkeys(paths))

    def line(what, vals):
        shown = ", ".join(f"{lab} {vals[lab]}" for lab in labels)
        return f"{name}{what}: {shown}"

    sizes = {lab: s[0] for lab, s in sides.items()}
    tail_sizes = {ref_size}
    for m in flex_tail:
        if m in ref_members:
            tail_sizes.add(ref_size - ref_members[m][2])
    if any(v is not None and v not in tail_sizes for v in sizes.values()) or \
            (sizes[reference] is not None and any(v is None for v in sizes.values())):
        problems.append(line(" sizeof", {k: _fmt("size", v) for k, v in sizes.items()}))

    for path in paths:
        vals = {lab: s[1].get(path) for lab, s in sides.items()}
        if any(v is None for v in vals.values()):
            problems.append(line(f".{path} missing", {
                k: ("absent" if v is None else _fmt("offset", v[:2])) for k, v in vals.items()}))
            continue
        offs = {k: (v[0], v[1]) for k, v in vals.items()}
        if len({o[0] for o in offs.values()}) > 1:
            problems.append(line(f".{path} offset",
                                 {k: _fmt("offset", o) for k, o in offs.items()}))
        if len({o[1] for o in offs.values()}) > 1:
            problems.append(line(f".{path} bit-field width",
                                 {k: str(o[1] or "not a bit-field") for k, o in offs.items()}))
        sz = {k: v[2] for k, v in vals.items() if v[2] is not None}
        allowed = {vals[reference][2]}
        if path in flex_tail:
            allowed.add(0)
        if any(v not in allowed for v in sz.values()):
            problems.append(line(f".{path} size", {k: _fmt("size", v[2]) for k, v in vals.items()}))
    return problems


# --------------------------------------------------------------------------------------------
# Linux's BTF as a fixture, and one protocol's three-way check
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session", name="btf")
def btf_fixture():
    """Linux's BTF, or None under HVKVM_SKIP_BTF=1; unavailable BTF fails."""
    if linux_btf.skip_requested():
        return None
    try:
        return linux_btf.get()
    except linux_btf.BtfUnavailable as e:
        pytest.fail(f"Linux BTF unavailable: {e}\n(HVKVM_SKIP_BTF=1 skips the Linux side "
                    "explicitly)", pytrace=False)


@dataclass(frozen=True)
class CMeasured:
    """What the C probe measured for a WireSpec's structs, and the paths it was asked for."""

    values: dict
    errors: dict
    paths: dict  # struct name -> {path: is a bit-field on some side}


@dataclass(frozen=True)
class WireSpec:
    """One protocol's wire layouts: its C header (in csrc/), its ctypes structs, and the Linux
    modules whose BTF has them (searched in order; a module's lookups fall back to vmlinux).

    not_in_btf: struct name -> why no Linux BTF carries it (compared Python against C only);
    flex_tail: (struct, member) pairs compare() may accept as a flexible array member;
    header_of: the header named in a "not defined" message for a struct or constant (default:
    ``header``)."""

    header: str
    structs: tuple
    modules: tuple[str, ...]
    not_in_btf: dict = field(default_factory=dict)
    flex_tail: frozenset = frozenset()
    header_of: Callable[[str], str] | None = None

    def where(self, name: str) -> str:
        """The C header that should define name."""
        return self.header_of(name) if self.header_of else self.header

    def module_of(self, btf, name: str) -> str | None:
        """The first of self.modules whose BTF has the struct (None: in none of them)."""
        for module in self.modules:
            if btf.has_struct(module, name):
                return module
        return None

    def linux_side(self, btf, name: str):
        """(label, layout) of the struct in Linux's BTF, or None (no BTF, or not in it)."""
        module = self.module_of(btf, name) if btf is not None else None
        if module is None:
            return None
        return f"Linux({module})", btf_layout(btf.struct_layout(module, name))

    def reference(self, btf, cls):
        """Linux's layout of cls, or (without BTF) Python's: what a self-test compares against."""
        linux = self.linux_side(btf, cls.__name__)
        return linux[1] if linux is not None else python_layout(cls)

    def paths(self, cls, btf) -> dict[str, bool]:
        """Every member path of cls on either side (path -> is a bit-field somewhere)."""
        paths = python_paths(cls)
        linux = self.linux_side(btf, cls.__name__)
        if linux is not None:
            for p, m in linux[1][1].items():
                paths[p] = paths.get(p, False) or m[1] > 0
        return paths

    def measure_c(self, btf, workdir: Path) -> CMeasured:
        """Compile one probe of every struct's sizeof and members against the header."""
        need_gcc(f"csrc/{self.header}")
        probe = CProbe([self.header], [CSRC])
        all_paths = {}
        for cls in self.structs:
            all_paths[cls.__name__] = self.paths(cls, btf)
            add_struct_probes(probe, cls, all_paths[cls.__name__])
        values, errors = probe.run(workdir)
        return CMeasured(values, errors, all_paths)

    def layout_problems(self, cls, btf, measured: CMeasured) -> list[str]:
        """Every difference between Linux's BTF (when there is one), Python and C for cls; a
        struct that should be in Linux's BTF and is not fails the test (misspelt?)."""
        name = cls.__name__
        sides = {}
        reference = "Python"
        linux = self.linux_side(btf, name)
        if linux is not None:
            reference = linux[0]
            sides[reference] = linux[1]
        elif btf is not None and name not in self.not_in_btf:
            pytest.fail(f"{name} is in no BTF of {', '.join(self.modules)} (nor vmlinux): "
                        "misspelt? (or add it to NOT_IN_BTF with the reason)")
        sides["Python"] = python_layout(cls)
        c_size, c_members, c_missing = c_layout(measured.values, measured.errors, cls,
                                                measured.paths[name])
        sides["C"] = (c_size, c_members)
        flex = frozenset(m for s, m in self.flex_tail if s == name)
        problems = compare(name, sides, reference, flex)
        if c_size is None:
            problems.insert(0, f"{name}: not defined by csrc/{self.where(name)}: "
                               f"{measured.errors.get(name + '|', '?')}")
        else:
            problems += [f"{name}.{p}: C header: {why}" for p, why in c_missing.items()]
        return problems

    def check_layout(self, cls, btf, measured: CMeasured) -> None:
        """The body of a test_layout_matches_linux: no difference, and a skip (after Python
        and C were compared) where HVKVM_SKIP_BTF=1 left Linux out."""
        problems = self.layout_problems(cls, btf, measured)
        assert not problems, f"{len(problems)} layout difference(s):\n" + "\n".join(problems)
        if btf is None:
            pytest.skip("HVKVM_SKIP_BTF=1: only Python vs C compared")

    def stale_not_in_btf(self, btf) -> dict[str, str]:
        """The structs excused as in no BTF that a Linux module's BTF has after all."""
        return {n: m for n in self.not_in_btf for m in self.modules + (None,)
                if btf.has_struct(m, n)}

    def constants_probe(self, consts: dict[str, int]) -> CProbe:
        """A probe of the header with every constant's value (add more probes, then run)."""
        need_gcc(f"csrc/{self.header}")
        probe = CProbe([self.header], [CSRC])
        for n in consts:
            probe.add_value(n, n)
        return probe

    def constant_differences(self, consts: dict[str, int], values, errors,
                             source: str) -> list[str]:
        """Each constant the header lacks or defines otherwise (C's value is taken as u64)."""
        bad = []
        for n, v in consts.items():
            if n not in values:
                bad.append(f"{n}: {source} {v:#x}, C ({self.where(n)}): "
                           f"{errors.get(n, 'missing')}")
            elif values[n]["value"] != v & 0xFFFFFFFFFFFFFFFF:
                bad.append(f"{n}: {source} {v:#x}, C {values[n]['value']:#x}")
        return bad

    def check_constants(self, module, workdir: Path) -> dict:
        """Every integer constant of the Python wire module is defined alike by the header;
        returns the values measured (for a test's own spot checks)."""
        consts = int_constants(module)
        values, errors = self.constants_probe(consts).run(workdir)
        bad = self.constant_differences(consts, values, errors,
                                        Path(module.__file__).name)
        assert not bad, f"{len(bad)} constant(s) differ:\n" + "\n".join(bad)
        return values
