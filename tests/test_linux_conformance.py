"""hvkvm's VMBus wire layouts against Linux's own compiled binaries.

The spec is Debian's cloud kernel (``tests/linux_btf.py`` fetches it and reads its BTF). For every
layout in ``hvkvm.vmbus.wire.WIRE_STRUCTS`` three descriptions are compared member by member
(absolute bit offset, bit-field width, byte size) and as a whole (sizeof):

* Linux: the BTF of ``hv_vmbus.ko`` (with vmlinux's BTF as its base; ``hv_netvsc.ko`` and
  ``hv_storvsc.ko`` for the packet structures only those drivers use);
* Python: the ctypes class, ``_fields_`` walked with anonymous members flattened like C;
* C: ``csrc/vmbus_proto.h`` (which includes ``csrc/vmbus_ring.h``), measured by a generated
  program compiled with gcc: ``offsetof``/``sizeof`` per member, and for bit-fields the bits
  that come out set when the member alone is assigned all ones.

A mismatch fails naming ``struct.member``, what differs, and the three values. Constants are
checked the same way: enumerators against every enum of Linux's BTF, every integer constant of
wire.py against the C header, and the class GUIDs against the ``vmbus:`` device aliases of Linux's
drivers. Self-tests prove the comparison catches a wrong layout on each side.

Needs gcc, bpftool and apt access to Debian's archive (the first run downloads ~27 MB, later runs
use ``~/.cache/hvkvm/btf``). Linux BTF that cannot be had fails these tests; ``HVKVM_SKIP_BTF=1``
skips the Linux side explicitly (Python against C still runs).
"""

from __future__ import annotations

import ctypes
import gzip
import lzma
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

import linux_btf
from hvkvm.vmbus import wire
from linux_btf import linux_btf_fixture  # noqa: F401  (provides the fixture ``linux_btf``)

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"
PROTO_H = CSRC / "vmbus_proto.h"
RING_H = CSRC / "vmbus_ring.h"

# Where Linux's BTF has each layout: hv_vmbus.ko first (its lookups fall back to vmlinux), then
# the drivers that use the packet structures hv_vmbus itself does not.
BTF_MODULES = ("hv_vmbus", "hv_netvsc", "hv_storvsc")

# Layouts no Linux binary's BTF carries (no compiled code uses them), with why they are still ours.
NOT_IN_BTF = {
    "hv_message_page": "Linux indexes the SIMP page as struct hv_message[] and never names it",
    "vmpacket_header": "unused by Linux's code; kept as hyperv.h defines it",
}

# Layouts and constants csrc/vmbus_ring.h owns in C (vmbus_proto.h includes it when present).
RING_OWNED_STRUCTS = {
    "hv_ring_buffer", "vmpacket_descriptor", "vmtransfer_page_range",
    "vmtransfer_page_packet_header", "gpa_range", "hv_mpb_array", "vmbus_packet_mpb_array",
    "vmpacket_header",  # vmbus_proto.h defines it only on top of vmbus_ring.h
}
RING_OWNED_CONSTANTS = set(wire.vmbus_packet_type.__members__) | {
    "VMBUS_PKT_TRAILER", "VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED"}

# A trailing one-element array in Linux 6.1 that newer kernels declare as a flexible array member
# (same wire format: Linux sizes these headers with offsetof(..., ranges) + n * sizeof(range)).
# Either spelling is accepted on our side; the other members and offsets must still match.
FLEX_TAIL_EQUIVALENT = {("vmtransfer_page_packet_header", "ranges")}

# Class GUIDs that Linux's drivers bind to, by module (their "vmbus:<bytes>" aliases).
GUIDS_BY_MODULE = {
    "hv_netvsc": ["HV_NIC_GUID"],
    "hv_storvsc": ["HV_SCSI_GUID", "HV_IDE_GUID", "HV_SYNTHFC_GUID"],
    "hv_utils": ["HV_SHUTDOWN_GUID", "HV_TS_GUID", "HV_HEART_BEAT_GUID", "HV_KVP_GUID",
                 "HV_VSS_GUID", "HV_FCOPY_GUID"],
    "hv_balloon": ["HV_DM_GUID"],
    "hid_hyperv": ["HV_MOUSE_GUID"],
    "hyperv_keyboard": ["HV_KBD_GUID"],
    "hyperv_fb": ["HV_SYNTHVID_GUID"],
    "pci_hyperv": ["HV_PCIE_GUID"],
}

# Enums wire.py mirrors completely: (module, Linux enum name) -> the IntEnum.
MIRRORED_ENUMS = {
    ("hv_vmbus", "vmbus_channel_message_type"): wire.vmbus_channel_message_type,
    ("hv_vmbus", "hv_message_type"): wire.hv_message_type,
    ("hv_vmbus", "vmbus_packet_type"): wire.vmbus_packet_type,
    ("hv_vmbus", "hv_gpadl_type"): wire.hv_gpadl_type,
}


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
        for field in c._fields_:
            name, ftype = field[0], field[1]
            desc = getattr(c, name)
            off = base_bytes + desc.offset
            if len(field) == 3:
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


def btf_layout(lay: linux_btf.Layout) -> tuple[int, dict[str, tuple[int, int, int]]]:
    return lay.size, {k: (m.bit_offset, m.bit_size, m.size) for k, m in lay.fields.items()}


def c_type(cls) -> str:
    name = cls.__name__
    if name.endswith("_t"):
        return name  # typedef (guid_t)
    return ("union " if issubclass(cls, ctypes.Union) else "struct ") + name


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


def _cstr(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class CProbe:
    """Compile probes against C headers; a probe whose line does not compile is recorded with
    gcc's message instead of a value."""

    def __init__(self, includes: list[str], include_dirs: list[Path]):
        self.includes = includes
        self.include_dirs = include_dirs
        self.lines: list[tuple[str, str]] = []  # (key, C statement)

    def add(self, key: str, stmt: str):
        self.lines.append((key, stmt))

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
            for m in re.finditer(rf"^{re.escape(str(src))}:(\d+):\d+: error: (.*)$", r.stderr, re.M):
                idx = int(m.group(1)) - first_line
                if 0 <= idx < len(active):
                    bad.setdefault(active[idx], m.group(2))
            if not bad:
                raise AssertionError("C probe does not compile (headers broken?):\n" + r.stderr[-4000:])
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
    probe.add(f"{name}|", f"U({_cstr(name + '|')}, \"sizeof\", sizeof({ct}));")
    for path, bitfield in paths.items():
        key = f"{name}|{path}"
        if bitfield:
            probe.add(key, "{ union { %s s; unsigned char b[sizeof(%s)]; } u_; "
                           "memset(&u_, 0, sizeof u_); u_.s.%s = -1; bits(%s, u_.b, sizeof u_); }"
                      % (ct, ct, path, _cstr(key)))
        else:
            probe.add(key, f"U({_cstr(key)}, \"off\", offsetof({ct}, {path}));")
            probe.add(key + "|size", f"U({_cstr(key)}, \"size\", sizeof((({ct} *)0)->{path}));")


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
            members[path] = (v["off"] * 8, 0, v.get("size", 0 if (key + "|size") in errors else None))
        else:
            missing[path] = errors.get(key, "not measured")
    return size, members, missing


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------

def _fmt(field: str, v) -> str:
    if v is None:
        return "-"
    if field == "offset":
        bit, width = v
        return f"{bit // 8}" if (width == 0 and bit % 8 == 0) else f"bit {bit}"
    return str(v)


def compare(name: str, sides: dict[str, tuple[int | None, dict]], reference: str) -> list[str]:
    """Differences between the sides (label -> (sizeof, members)), each naming struct.member, the
    field that differs and every side's value. Paths are the union of all sides' paths."""
    problems = []
    ref_size, ref_members = sides[reference]
    labels = list(sides)
    paths = list(ref_members) + [p for s in sides.values() for p in s[1] if p not in ref_members]
    paths = list(dict.fromkeys(paths))

    def line(what, vals):
        shown = ", ".join(f"{lab} {vals[lab]}" for lab in labels)
        return f"{name}{what}: {shown}"

    flex_ok = {m for (s, m) in FLEX_TAIL_EQUIVALENT if s == name}
    sizes = {lab: s[0] for lab, s in sides.items()}
    tail_sizes = {ref_size}
    for m in flex_ok:
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
            problems.append(line(f".{path} offset", {k: _fmt("offset", o) for k, o in offs.items()}))
        if len({o[1] for o in offs.values()}) > 1:
            problems.append(line(f".{path} bit-field width",
                                 {k: str(o[1] or "not a bit-field") for k, o in offs.items()}))
        sz = {k: v[2] for k, v in vals.items() if v[2] is not None}
        allowed = {vals[reference][2]}
        if path in flex_ok:
            allowed.add(0)
        if any(v not in allowed for v in sz.values()):
            problems.append(line(f".{path} size", {k: _fmt("size", v[2]) for k, v in vals.items()}))
    return problems


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def btf():
    """Linux's BTF, or None under HVKVM_SKIP_BTF=1; unavailable BTF fails."""
    if linux_btf.skip_requested():
        return None
    try:
        return linux_btf.get()
    except linux_btf.BtfUnavailable as e:
        pytest.fail(f"Linux BTF unavailable: {e}\n(HVKVM_SKIP_BTF=1 skips the Linux side "
                    "explicitly)", pytrace=False)


def _btf_location(btf, name: str) -> str | None:
    for module in BTF_MODULES:
        if btf.has_struct(module, name):
            return module
    return None


@pytest.fixture(scope="session")
def btf_layouts(btf):
    """{struct name: (module, (sizeof, members))} for the wire structs Linux's BTF has."""
    if btf is None:
        return {}
    out = {}
    for cls in wire.WIRE_STRUCTS:
        module = _btf_location(btf, cls.__name__)
        if module is not None:
            out[cls.__name__] = (module, btf_layout(btf.struct_layout(module, cls.__name__)))
    return out


def _need_gcc():
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed to measure csrc/vmbus_proto.h")


@pytest.fixture(scope="session")
def c_measured(btf_layouts, tmp_path_factory):
    """(values, errors, paths per struct) of every wire struct as csrc/vmbus_proto.h has it."""
    _need_gcc()
    probe = CProbe(["vmbus_proto.h"], [CSRC])
    all_paths = {}
    for cls in wire.WIRE_STRUCTS:
        _, py = python_layout(cls)
        paths = {p: m[1] > 0 for p, m in py.items()}
        if cls.__name__ in btf_layouts:
            for p, m in btf_layouts[cls.__name__][1][1].items():
                paths[p] = paths.get(p, False) or m[1] > 0
        all_paths[cls.__name__] = paths
        add_struct_probes(probe, cls, paths)
    values, errors = probe.run(tmp_path_factory.mktemp("cprobe"))
    return values, errors, all_paths


# --------------------------------------------------------------------------------------------
# The layouts
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", wire.WIRE_STRUCTS, ids=lambda c: c.__name__)
def test_layout_matches_linux(cls, btf, btf_layouts, c_measured):
    """sizeof and every member of a wire struct: Linux's BTF == Python ctypes == C header."""
    name = cls.__name__
    values, errors, all_paths = c_measured
    sides = {}
    reference = "Python"
    if name in btf_layouts:
        module, lay = btf_layouts[name]
        sides[f"Linux({module})"] = lay
        reference = f"Linux({module})"
    elif btf is not None and name not in NOT_IN_BTF:
        pytest.fail(f"{name} is in no BTF of {', '.join(BTF_MODULES)} (nor vmlinux): misspelt? "
                    "(or add it to NOT_IN_BTF with the reason)")
    sides["Python"] = python_layout(cls)
    c_size, c_members, c_missing = c_layout(values, errors, cls, all_paths[name])
    ring_absent = name in RING_OWNED_STRUCTS and not RING_H.exists()
    if not ring_absent:
        sides["C"] = (c_size, c_members)
    problems = compare(name, sides, reference)
    for path, why in c_missing.items():
        if not ring_absent and c_size is not None:
            problems.append(f"{name}.{path}: C header: {why}")
    if not ring_absent and c_size is None:
        problems.insert(0, f"{name}: not defined by csrc/vmbus_proto.h"
                           f"{' / csrc/vmbus_ring.h' if name in RING_OWNED_STRUCTS else ''}: "
                           f"{errors.get(name + '|', '?')}")
    assert not problems, f"{len(problems)} layout difference(s):\n" + "\n".join(problems)
    if ring_absent:
        pytest.skip("csrc/vmbus_ring.h not yet present (Linux vs Python matched)")
    if reference == "Python" and btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1: only Python vs C compared")


def test_not_in_btf_list_is_honest(btf):
    """The layouts excused from the Linux comparison really are in none of Linux's BTF."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    found = {n: m for n in NOT_IN_BTF for m in BTF_MODULES if btf.has_struct(m, n)}
    assert not found, f"now in Linux's BTF, remove from NOT_IN_BTF (they get compared): {found}"


# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

def _int_constants() -> dict[str, int]:
    return {n: int(v) for n, v in vars(wire).items()
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", n) and isinstance(v, int) and not isinstance(v, bool)}


@pytest.mark.parametrize("key", list(MIRRORED_ENUMS), ids=lambda k: k[1])
def test_enum_matches_linux(key, btf):
    """Every enumerator of the Linux enum, same name, same value, same order."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    module, name = key
    linux = btf.enum_values(module, name)
    ours = {m.name: int(m.value) for m in MIRRORED_ENUMS[key]}
    assert ours == linux, f"enum {name}: Linux {linux}\n  wire.py {ours}"
    assert list(ours) == list(linux)


def test_constants_match_linux_enumerators(btf):
    """Each wire.py constant named like an enumerator of Linux's BTF (hv_vmbus, vmlinux) has
    its value (the anonymous enum of hyperv_vmbus.h included: VMBUS_MESSAGE_CONNECTION_ID...)."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    linux = btf.enumerators("hv_vmbus", own_only=False)
    own = btf.enumerators("hv_vmbus")
    ours = _int_constants()
    bad = [f"{n}: Linux {linux[n]:#x}, wire.py {v:#x}" for n, v in ours.items()
           if n in linux and linux[n] != v]
    assert not bad, "\n".join(bad)
    for name in ("VMBUS_MESSAGE_CONNECTION_ID", "VMBUS_MESSAGE_CONNECTION_ID_4",
                 "VMBUS_MESSAGE_PORT_ID", "VMBUS_MESSAGE_SINT", "CHANNELMSG_COUNT"):
        assert name in own, f"{name} not among hv_vmbus's enumerators"


def test_constants_match_c_header(tmp_path):
    """Every integer constant of wire.py is defined by csrc/vmbus_proto.h with the same value."""
    _need_gcc()
    probe = CProbe(["vmbus_proto.h"], [CSRC])
    consts = _int_constants()
    for n in consts:
        probe.add(n, f"U({_cstr(n)}, \"value\", {n});")
    values, errors = probe.run(tmp_path)
    bad = []
    for n, v in consts.items():
        if n not in values:
            if n in RING_OWNED_CONSTANTS and not RING_H.exists():
                continue
            where = "vmbus_ring.h" if n in RING_OWNED_CONSTANTS else "vmbus_proto.h"
            bad.append(f"{n}: wire.py {v:#x}, C ({where}): {errors.get(n, 'missing')}")
        elif values[n]["value"] != v & 0xFFFFFFFFFFFFFFFF:
            bad.append(f"{n}: wire.py {v:#x}, C {values[n]['value']:#x}")
    assert not bad, f"{len(bad)} constant(s) differ:\n" + "\n".join(bad)


def test_vmbus_versions():
    """VERSION_* are VMBUS_MAKE_VERSION(major, minor) as hyperv.h's table says."""
    table = {"WS2008": (0, 13), "WIN7": (1, 1), "WIN8": (2, 4), "WIN8_1": (3, 0), "WIN10": (4, 0),
             "WIN10_V4_1": (4, 1), "WIN10_V5": (5, 0), "WIN10_V5_1": (5, 1),
             "WIN10_V5_2": (5, 2), "WIN10_V5_3": (5, 3)}
    for n, (major, minor) in table.items():
        assert getattr(wire, f"VERSION_{n}") == wire.VMBUS_MAKE_VERSION(major, minor), n


# --------------------------------------------------------------------------------------------
# GUIDs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", list(GUIDS_BY_MODULE))
def test_guids_match_linux_driver_aliases(module, btf):
    """The class GUIDs Linux's drivers bind to ("vmbus:" + the 16 wire bytes in hex)."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    aliases = {a for a in btf.module_aliases(module) if a.startswith("vmbus:")}
    ours = {f"vmbus:{wire.guid_bytes(getattr(wire, n)).hex()}": n for n in GUIDS_BY_MODULE[module]}
    missing = {n: a for a, n in ours.items() if a not in aliases}
    assert not missing, f"{module} aliases {sorted(aliases)}; ours not among them: {missing}"


def test_guids_match_c_header(tmp_path):
    """HV_*_GUID in C (GUID_INIT) gives the same 16 bytes as wire.py."""
    _need_gcc()
    probe = CProbe(["vmbus_proto.h"], [CSRC])
    for n in wire.WELL_KNOWN_GUIDS:
        for i in range(16):
            probe.add(n, f"{{ guid_t g = {n}; U({_cstr(n)}, \"b{i}\", g.b[{i}]); }}")
    values, errors = probe.run(tmp_path)
    bad = []
    for n, u in wire.WELL_KNOWN_GUIDS.items():
        if n not in values:
            bad.append(f"{n}: not in C: {errors.get(n)}")
            continue
        c = bytes(values[n][f"b{i}"] for i in range(16))
        if c != u.bytes_le:
            bad.append(f"{n}: wire.py {u.bytes_le.hex()}, C {c.hex()}")
    assert not bad, "\n".join(bad)


def test_guid_t_helpers():
    """guid_t holds the Windows mixed-endian bytes and prints like Linux's %pUl."""
    g = wire.guid_t.from_uuid(wire.HV_NIC_GUID)
    assert bytes(g).hex() == "635161f83edfc546913ff2d2f965ed0e"
    assert str(g) == "f8615163-df3e-46c5-913f-f2d2f965ed0e"
    assert g == wire.guid_t.from_uuid("F8615163-DF3E-46C5-913F-F2D2F965ED0E")
    assert g == wire.HV_NIC_GUID and g != wire.HV_SCSI_GUID
    assert g.to_uuid() == uuid.UUID("f8615163-df3e-46c5-913f-f2d2f965ed0e")
    offer = wire.vmbus_channel_offer()
    offer.if_type = g
    assert bytes(offer)[:16] == bytes(g.b) == wire.guid_bytes(wire.HV_NIC_GUID)
    assert len(set(wire.WELL_KNOWN_GUIDS.values())) == len(wire.WELL_KNOWN_GUIDS)


# --------------------------------------------------------------------------------------------
# The checker checks: a wrong layout on any side fails, naming the member
# --------------------------------------------------------------------------------------------

def test_comparison_catches_a_wrong_python_layout(btf, btf_layouts):
    """A ctypes twin of vmbus_channel_open_result with openid as u16 is reported."""
    class vmbus_channel_open_result(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("header", wire.vmbus_channel_message_header), ("child_relid", ctypes.c_uint32),
                    ("openid", ctypes.c_uint16), ("status", ctypes.c_uint32)]

    good = btf_layouts["vmbus_channel_open_result"][1] if btf is not None else \
        python_layout(wire.vmbus_channel_open_result)
    problems = compare("vmbus_channel_open_result",
                       {"Linux": good, "Python": python_layout(vmbus_channel_open_result)}, "Linux")
    text = "\n".join(problems)
    assert "vmbus_channel_open_result sizeof: Linux 20, Python 18" in text
    assert "vmbus_channel_open_result.openid size: Linux 4, Python 2" in text
    assert "vmbus_channel_open_result.status offset: Linux 16, Python 14" in text


def test_comparison_catches_a_wrong_bitfield(btf, btf_layouts):
    """is_dedicated_interrupt one bit off is reported with bit offsets."""
    class _bits(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("pad", ctypes.c_uint16, 1), ("is_dedicated_interrupt", ctypes.c_uint16, 1),
                    ("reserved1", ctypes.c_uint16, 14)]

    class vmbus_channel_offer_channel(ctypes.Structure):
        _pack_ = 1
        _anonymous_ = ("_b8", "_b16")
        _fields_ = [f if f[0] != "_b16" else ("_b16", _bits)
                    for f in wire.vmbus_channel_offer_channel._fields_]

    good = btf_layouts["vmbus_channel_offer_channel"][1] if btf is not None else \
        python_layout(wire.vmbus_channel_offer_channel)
    text = "\n".join(compare("vmbus_channel_offer_channel",
                             {"Linux": good, "Python": python_layout(vmbus_channel_offer_channel)},
                             "Linux"))
    assert "vmbus_channel_offer_channel.is_dedicated_interrupt offset: Linux bit 1520, " \
           "Python bit 1521" in text
    assert "vmbus_channel_offer_channel.reserved1 bit-field width: Linux 15, Python 14" in text
    assert "vmbus_channel_offer_channel.pad missing: Linux absent, Python bit 1520" in text


def test_comparison_catches_a_wrong_c_header(tmp_path):
    """A C header with an unpacked vmbus_channel_version_response and a misplaced bit-field."""
    _need_gcc()
    (tmp_path / "bad.h").write_text(
        "#include <stdint.h>\n"
        "struct vmbus_channel_message_header { uint32_t msgtype; uint32_t padding; };\n"
        "struct vmbus_channel_version_response { struct vmbus_channel_message_header header;\n"
        "  uint8_t version_supported; uint8_t connection_state; uint64_t msg_conn_id; };\n"
        "union hv_message_flags { uint8_t asu8; struct { uint8_t reserved:7;\n"
        "  uint8_t msg_pending:1; }; };\n")
    probe = CProbe(["bad.h"], [tmp_path])
    specs = {}
    for cls in (wire.vmbus_channel_version_response, wire.hv_message_flags):
        specs[cls] = {p: m[1] > 0 for p, m in python_layout(cls)[1].items()}
        add_struct_probes(probe, cls, specs[cls])
    work = tmp_path / "w"
    work.mkdir()
    values, errors = probe.run(work)
    text = ""
    for cls, paths in specs.items():
        size, members, missing = c_layout(values, errors, cls, paths)
        text += "\n".join(compare(cls.__name__, {"Python": python_layout(cls),
                                                 "C": (size, members)}, "Python")) + "\n"
        text += "\n".join(f"{cls.__name__}.{p}: {w}" for p, w in missing.items()) + "\n"
    assert "vmbus_channel_version_response sizeof: Python 16, C 24" in text
    assert "vmbus_channel_version_response.msg_conn_id offset: Python 12, C 16" in text
    assert "vmbus_channel_version_response.msg_conn_id size: Python 4, C 8" in text
    assert "vmbus_channel_version_response.padding missing: Python 10, C absent" in text
    assert "hv_message_flags.msg_pending offset: Python bit 0, C bit 7" in text


# --------------------------------------------------------------------------------------------
# The BTF reader itself
# --------------------------------------------------------------------------------------------

def test_btf_reader_self_check(btf):
    """Known facts of Linux's layouts, read through linux_btf (module, vmlinux, typedef, enum)."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    assert btf.compression in {"gzip", "xz", "bzip2", "lzma", "lzo", "lz4", "zstd", "none"}
    rb = btf.struct_layout("hv_vmbus", "hv_ring_buffer")
    assert rb.kind == "STRUCT" and rb.size == 4096
    assert list(rb.members)[:5] == ["write_index", "read_index", "interrupt_mask",
                                    "pending_send_sz", "reserved1"]
    assert rb.members["feature_bits"] == 64 and rb.members["reserved2"] == 68
    assert rb.members["buffer"] == 4096 and rb.fields["buffer"].size == 0
    f = rb.fields["feature_bits.feat_pending_send_sz"]  # anonymous struct inside a named union
    assert (f.bit_offset, f.bit_size) == (512, 1)
    d = btf.struct_layout("hv_vmbus", "vmpacket_descriptor")
    assert d.size == 16 and d.members == {"type": 0, "offset8": 2, "len8": 4, "flags": 6,
                                          "trans_id": 8}
    ic = btf.struct_layout("hv_vmbus", "vmbus_channel_initiate_contact")
    assert ic.members["interrupt_page"] == ic.members["msg_sint"] == 16  # anonymous union
    assert ic.members["header.msgtype"] == 0 and ic.fields["header.msgtype"].type.startswith("enum")
    msg = btf.struct_layout(None, "hv_message")  # vmlinux itself
    assert msg.size == 256 and msg.members["u.payload"] == 16
    assert btf.struct_layout("hv_vmbus", "hv_message").size == 256  # module falls back to base
    g = btf.struct_layout(None, "guid_t")  # a typedef of an anonymous struct
    assert g.size == 16 and g.members == {"b": 0}
    assert btf.enum_values("hv_vmbus", "vmbus_channel_message_type")["CHANNELMSG_COUNT"] == 25
    assert "vmbus:d96361baa104294db60572e2ffb1dc7f" in btf.module_aliases("hv_storvsc")
    with pytest.raises(KeyError):
        btf.struct_layout("hv_vmbus", "no_such_struct_anywhere")


def test_btf_reader_reaches_storvsc_and_netvsc(linux_btf):
    """The device protocols of issues #4 and #5 are a struct_layout() call away (through the
    reusable ``linux_btf`` fixture: fails without BTF, skips under HVKVM_SKIP_BTF=1)."""
    for name in ("vstor_packet", "vmscsi_request", "vmstorage_channel_properties",
                 "vmstorage_protocol_version"):
        assert linux_btf.struct_layout("hv_storvsc", name).size > 0, name
    assert linux_btf.struct_layout("hv_netvsc", "nvsp_message").members["hdr"] == 0
    assert linux_btf.struct_layout("hv_netvsc", "rndis_packet").size > 0
    assert linux_btf.has_struct("hv_netvsc", "rndis_message")


def test_extract_vmlinux_finds_each_compression(tmp_path):
    """extract_vmlinux() detects the payload by magic like scripts/extract-vmlinux."""
    elf = b"\x7fELF" + bytes(range(256)) * 64
    junk = b"MZ" + b"\0" * 1000 + b"\x1f\x8b"  # a false gzip magic start before the real one
    cases = {"gzip": gzip.compress(elf), "xz": lzma.compress(elf),
             # the kernel's lzma streams have a 2^n dictionary: magic 5d 00 00 00 (as here)
             "lzma": lzma.compress(elf, format=lzma.FORMAT_ALONE,
                                   filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 24}])}
    if shutil.which("lz4"):
        r = subprocess.run(["lz4", "-l", "-c"], input=elf, capture_output=True, check=True)
        cases["lz4"] = r.stdout + (len(elf)).to_bytes(4, "little")  # + the kernel's size word
    for kind, blob in cases.items():
        out, found = linux_btf.extract_vmlinux(junk + blob)
        assert (found, out) == (kind, elf)
    with pytest.raises(linux_btf.BtfUnavailable):
        linux_btf.extract_vmlinux(b"no kernel in here" * 100)
