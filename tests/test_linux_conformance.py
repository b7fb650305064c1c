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
drivers. Self-tests prove the comparison catches a wrong layout on each side. The machinery
(flattening, the C probe, the comparison) is ``tests/conformance.py``, shared with the storvsc,
netvsc and IC conformance tests.

Needs gcc, bpftool and apt access to Debian's archive (the first run downloads ~27 MB, later runs
use ``~/.cache/hvkvm/btf``). Linux BTF that cannot be had fails these tests; ``HVKVM_SKIP_BTF=1``
skips the Linux side explicitly (Python against C still runs).
"""

from __future__ import annotations

import ctypes
import gzip
import lzma
import shutil
import subprocess
import uuid

import pytest

import linux_btf
from conformance import (CSRC, CProbe, WireSpec, c_header_report, compare, cstr, int_constants,
                         need_gcc, python_layout)
from conformance import btf_fixture  # noqa: F401  (provides the fixture ``btf``)
from hvkvm.vmbus import wire
from linux_btf import linux_btf_fixture  # noqa: F401  (provides the fixture ``linux_btf``)

# Where Linux's BTF has each layout: hv_vmbus.ko first (its lookups fall back to vmlinux), then
# the drivers that use the packet structures hv_vmbus itself does not.
BTF_MODULES = ("hv_vmbus", "hv_netvsc", "hv_storvsc")

# Layouts no Linux binary's BTF carries (no compiled code uses them), with why they are still ours.
NOT_IN_BTF = {
    "hv_message_page": "Linux indexes the SIMP page as struct hv_message[] and never names it",
    "vmpacket_header": "unused by Linux's code; kept as hyperv.h defines it",
}

# Layouts and constants csrc/vmbus_ring.h owns in C (vmbus_proto.h includes it).
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


def _header_of(name: str) -> str:
    if name in RING_OWNED_STRUCTS or name in RING_OWNED_CONSTANTS:
        return "vmbus_ring.h"
    return "vmbus_proto.h"


SPEC = WireSpec("vmbus_proto.h", tuple(wire.WIRE_STRUCTS), BTF_MODULES, NOT_IN_BTF,
                frozenset(FLEX_TAIL_EQUIVALENT), _header_of)


@pytest.fixture(scope="session")
def c_measured(btf, tmp_path_factory):
    """What csrc/vmbus_proto.h (with vmbus_ring.h) says of every wire struct."""
    return SPEC.measure_c(btf, tmp_path_factory.mktemp("cprobe"))


# --------------------------------------------------------------------------------------------
# The layouts
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", wire.WIRE_STRUCTS, ids=lambda c: c.__name__)
def test_layout_matches_linux(cls, btf, c_measured):
    """sizeof and every member of a wire struct: Linux's BTF == Python ctypes == C header."""
    SPEC.check_layout(cls, btf, c_measured)


def test_not_in_btf_list_is_honest(btf):
    """The layouts excused from the Linux comparison really are in none of Linux's BTF."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    found = SPEC.stale_not_in_btf(btf)
    assert not found, f"now in Linux's BTF, remove from NOT_IN_BTF (they get compared): {found}"


# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

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
    ours = int_constants(wire)
    bad = [f"{n}: Linux {linux[n]:#x}, wire.py {v:#x}" for n, v in ours.items()
           if n in linux and linux[n] != v]
    assert not bad, "\n".join(bad)
    for name in ("VMBUS_MESSAGE_CONNECTION_ID", "VMBUS_MESSAGE_CONNECTION_ID_4",
                 "VMBUS_MESSAGE_PORT_ID", "VMBUS_MESSAGE_SINT", "CHANNELMSG_COUNT"):
        assert name in own, f"{name} not among hv_vmbus's enumerators"


def test_constants_match_c_header(tmp_path):
    """Every integer constant of wire.py is defined by csrc/vmbus_proto.h with the same value."""
    SPEC.check_constants(wire, tmp_path)


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
    need_gcc("csrc/vmbus_proto.h")
    probe = CProbe(["vmbus_proto.h"], [CSRC])
    for n in wire.WELL_KNOWN_GUIDS:
        for i in range(16):
            probe.add(n, f"{{ guid_t g = {n}; U({cstr(n)}, \"b{i}\", g.b[{i}]); }}")
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

def test_comparison_catches_a_wrong_python_layout(btf):
    """A ctypes twin of vmbus_channel_open_result with openid as u16 is reported."""
    class vmbus_channel_open_result(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("header", wire.vmbus_channel_message_header), ("child_relid", ctypes.c_uint32),
                    ("openid", ctypes.c_uint16), ("status", ctypes.c_uint32)]

    good = SPEC.reference(btf, wire.vmbus_channel_open_result)
    problems = compare("vmbus_channel_open_result",
                       {"Linux": good, "Python": python_layout(vmbus_channel_open_result)}, "Linux")
    text = "\n".join(problems)
    assert "vmbus_channel_open_result sizeof: Linux 20, Python 18" in text
    assert "vmbus_channel_open_result.openid size: Linux 4, Python 2" in text
    assert "vmbus_channel_open_result.status offset: Linux 16, Python 14" in text


def test_comparison_catches_a_wrong_bitfield(btf):
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

    good = SPEC.reference(btf, wire.vmbus_channel_offer_channel)
    text = "\n".join(compare("vmbus_channel_offer_channel",
                             {"Linux": good, "Python": python_layout(vmbus_channel_offer_channel)},
                             "Linux"))
    assert "vmbus_channel_offer_channel.is_dedicated_interrupt offset: Linux bit 1520, " \
           "Python bit 1521" in text
    assert "vmbus_channel_offer_channel.reserved1 bit-field width: Linux 15, Python 14" in text
    assert "vmbus_channel_offer_channel.pad missing: Linux absent, Python bit 1520" in text


def test_comparison_catches_a_wrong_c_header(tmp_path):
    """A C header with an unpacked vmbus_channel_version_response and a misplaced bit-field."""
    text = c_header_report(tmp_path, (
        "#include <stdint.h>\n"
        "struct vmbus_channel_message_header { uint32_t msgtype; uint32_t padding; };\n"
        "struct vmbus_channel_version_response { struct vmbus_channel_message_header header;\n"
        "  uint8_t version_supported; uint8_t connection_state; uint64_t msg_conn_id; };\n"
        "union hv_message_flags { uint8_t asu8; struct { uint8_t reserved:7;\n"
        "  uint8_t msg_pending:1; }; };\n"),
        {cls: ("Python", python_layout(cls))
         for cls in (wire.vmbus_channel_version_response, wire.hv_message_flags)})
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
