"""The integration services' wire layouts against Linux's compiled ``hv_utils.ko``, Python and C.

Three descriptions of every layout in ``hvkvm.vsp.ic_wire.IC_WIRE_STRUCTS`` are compared member
by member (offset, bit-field width, size) and as a whole (sizeof), with the machinery of
``tests/conformance.py``:

* Linux: the BTF of Debian's cloud kernel's ``hv_utils.ko`` (``icmsg_negotiate`` from
  ``hv_vmbus.ko``: only ``vmbus_prep_negotiate_resp`` in channel_mgmt.c uses it);
* Python: the ctypes classes of ``hvkvm/vsp/ic_wire.py``;
* C: ``csrc/ic_proto.h``, measured by a generated program compiled with gcc.

``vmbuspipe_hdr`` has no BTF anywhere (Linux only takes its sizeof), so it is compared Python
against C, and its size is pinned by ``ICMSG_HDR`` (28: where hv_util.c finds the body).

The IC constants are ``#define``s (no BTF): every integer constant of ic_wire.py must be defined
alike by the C header. The version tables a Linux guest negotiates with are checked against the
binary itself: ``fw_versions``, ``hb_versions``, ``sd_versions`` and ``ts_versions`` are static
const arrays in ``hv_utils.ko``'s ``.rodata``, found through its symbol table.

The last tests break a layout on purpose and check that the comparison says so.
``HVKVM_SKIP_BTF=1`` skips the Linux side (Python against C still runs).
"""

from __future__ import annotations

import ctypes
import struct

import pytest

from conformance import WireSpec, c_header_report, compare, cstr, int_constants, python_layout
from conformance import btf_fixture  # noqa: F401  (provides the fixture ``btf``)
from hvkvm.vsp import ic_wire as icw

HEADER = "ic_proto.h"
#: Where Linux's BTF has the IC layouts: hv_utils.ko first, then hv_vmbus.ko.
BTF_MODULES = ("hv_utils", "hv_vmbus")
NOT_IN_BTF = {
    "vmbuspipe_hdr": "Linux only takes sizeof(struct vmbuspipe_hdr); no compiled code names a "
                     "member, so no BTF carries it",
}
SPEC = WireSpec(HEADER, tuple(icw.IC_WIRE_STRUCTS), BTF_MODULES, NOT_IN_BTF)


@pytest.fixture(scope="module")
def c_measured(btf, tmp_path_factory):
    """What csrc/ic_proto.h says of every IC wire struct."""
    return SPEC.measure_c(btf, tmp_path_factory.mktemp("ic_cprobe"))


@pytest.mark.parametrize("cls", icw.IC_WIRE_STRUCTS, ids=lambda c: c.__name__)
def test_layout_matches_linux(cls, btf, c_measured):
    """sizeof and every member: hv_utils.ko's (hv_vmbus.ko's) BTF == ic_wire.py == ic_proto.h."""
    SPEC.check_layout(cls, btf, c_measured)


def test_the_linux_modules_have_the_ic_structs_where_expected(btf):
    """hv_utils.ko carries the message bodies; icmsg_negotiate is hv_vmbus.ko's; the excused
    layouts really are in no BTF."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    for name in ("icmsg_hdr", "ic_version", "heartbeat_msg_data", "shutdown_msg_data"):
        assert btf.has_struct("hv_utils", name), name
    assert btf.has_struct("hv_vmbus", "icmsg_negotiate")
    found = SPEC.stale_not_in_btf(btf)
    assert not found, f"now in Linux's BTF, remove from NOT_IN_BTF (they get compared): {found}"


def test_the_sizes_the_protocol_depends_on():
    """Spelled out (the BTF test above is the authority)."""
    assert ctypes.sizeof(icw.vmbuspipe_hdr) == 8
    assert ctypes.sizeof(icw.icmsg_hdr) == 20
    assert icw.ICMSG_HDR == 28
    assert ctypes.sizeof(icw.icmsg_negotiate) == 8
    assert icw.ICMSG_NEGOTIATE_PKT_SIZE(2, 2) == 28 + 8 + 16
    assert ctypes.sizeof(icw.heartbeat_msg_data) == 40
    assert ctypes.sizeof(icw.shutdown_msg_data) == 2060
    assert icw.icmsg_hdr.icflags.offset == 17 and icw.icmsg_hdr.status.offset == 12


# --------------------------------------------------------------------------------------------
# Constants and version tables
# --------------------------------------------------------------------------------------------

TABLES = {  # Python name -> (C initializer macro, hv_utils.ko symbol)
    "LINUX_FW_VERSIONS": ("IC_LINUX_FW_VERSIONS", "fw_versions"),
    "LINUX_HB_VERSIONS": ("IC_LINUX_HB_VERSIONS", "hb_versions"),
    "LINUX_SD_VERSIONS": ("IC_LINUX_SD_VERSIONS", "sd_versions"),
    "LINUX_TS_VERSIONS": ("IC_LINUX_TS_VERSIONS", "ts_versions"),
}


def test_constants_match_c_header(tmp_path):
    """Every integer constant of ic_wire.py is defined by csrc/ic_proto.h alike, and so are the
    version tables (C initializer macros)."""
    consts = int_constants(icw)
    probe = SPEC.constants_probe(consts)
    for py, (macro, _) in TABLES.items():
        probe.add(py, "{ static const int t_[] = %s; for (unsigned i_ = 0; i_ < sizeof t_ / "
                      "sizeof t_[0]; i_++) { char k_[16]; snprintf(k_, sizeof k_, \"%%u\", i_); "
                      "U(%s, k_, t_[i_]); } U(%s, \"n\", sizeof t_ / sizeof t_[0]); }"
                  % (macro, cstr(py), cstr(py)))
    values, errors = probe.run(tmp_path)
    bad = SPEC.constant_differences(consts, values, errors, "ic_wire.py")
    for py, (macro, _) in TABLES.items():
        ours = getattr(icw, py)
        got = values.get(py)
        if got is None:
            bad.append(f"{macro}: {errors.get(py, 'missing')}")
            continue
        c = tuple(got[str(i)] for i in range(got["n"]))
        if c != ours:
            bad.append(f"{py} {[hex(x) for x in ours]} != C {macro} {[hex(x) for x in c]}")
    assert not bad, f"{len(bad)} constant(s) differ:\n" + "\n".join(bad)
    assert "ICMSGTYPE_SHUTDOWN" in values and "ICMSG_HDR" in values


def _ko_symbols(data: bytes) -> dict[str, list[tuple[str, int, int]]]:
    """{symbol: [(section name, value, size)]} from a relocatable ELF64's .symtab."""
    from elftools.elf.elffile import ELFFile
    import io
    elf = ELFFile(io.BytesIO(data))
    out: dict[str, list] = {}
    symtab = elf.get_section_by_name(".symtab")
    assert symtab is not None, "hv_utils.ko has no symbol table"
    for s in symtab.iter_symbols():
        if isinstance(s["st_shndx"], int) and s["st_size"]:
            sec = elf.get_section(s["st_shndx"])
            out.setdefault(s.name, []).append((sec.name, s["st_value"], s["st_size"]))
    return out


def ko_int_arrays(path) -> dict[str, list[tuple[int, ...]]]:
    """{symbol: [int32 array, ...]} for every *_versions array in the module's .rodata."""
    from elftools.elf.elffile import ELFFile
    import io
    data = path.read_bytes()
    rodata = ELFFile(io.BytesIO(data)).get_section_by_name(".rodata").data()
    out: dict[str, list[tuple[int, ...]]] = {}
    for name, places in _ko_symbols(data).items():
        if not name.endswith("_versions") or name.startswith("_"):
            continue
        for sec, value, size in places:
            if sec == ".rodata" and size % 4 == 0:
                out.setdefault(name, []).append(
                    struct.unpack_from(f"<{size // 4}i", rodata, value))
    return out


def test_version_tables_match_hv_utils_ko(btf):
    """The tables a Linux guest negotiates with, read out of hv_utils.ko's .rodata:
    hb_versions, sd_versions, ts_versions, and hv_util.c's fw_versions (every file of hv_utils
    has a static fw_versions; the two-entry ones are hv_util.c's and hv_kvp.c's)."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1 (the kernel package is not fetched)")
    arrays = ko_int_arrays(btf.module_path("hv_utils"))
    assert arrays.get("hb_versions") == [icw.LINUX_HB_VERSIONS], \
        f"hb_versions in hv_utils.ko: {arrays.get('hb_versions')}"
    assert arrays.get("sd_versions") == [icw.LINUX_SD_VERSIONS], \
        f"sd_versions in hv_utils.ko: {arrays.get('sd_versions')}"
    assert arrays.get("ts_versions") == [icw.LINUX_TS_VERSIONS], \
        f"ts_versions in hv_utils.ko: {arrays.get('ts_versions')}"
    two = [t for t in arrays.get("fw_versions", []) if len(t) == icw.FW_VER_COUNT]
    assert two and all(t == icw.LINUX_FW_VERSIONS for t in two), \
        f"fw_versions in hv_utils.ko: {arrays.get('fw_versions')}"
    assert len(icw.LINUX_SD_VERSIONS) == icw.SD_VER_COUNT
    assert len(icw.LINUX_HB_VERSIONS) == icw.HB_VER_COUNT


# --------------------------------------------------------------------------------------------
# Negotiation as Linux does it (the Python model the fake guest uses)
# --------------------------------------------------------------------------------------------

def test_prep_negotiate_resp_picks_linux_best_and_answers_in_place():
    req = icw.build_message(icw.ICMSGTYPE_NEGOTIATE, icw.negotiate_body(
        [icw.UTIL_WS2K8_FW_VERSION, icw.UTIL_FW_VERSION],
        [icw.SD_VERSION_1, icw.SD_VERSION, icw.SD_VERSION_3_1, icw.SD_VERSION_3_2]))
    resp, found, fw, srv = icw.prep_negotiate_resp(req, icw.LINUX_FW_VERSIONS,
                                                   icw.LINUX_SD_VERSIONS)
    assert found and fw == icw.UTIL_FW_VERSION and srv == icw.SD_VERSION_3_2
    assert len(resp) == len(req)
    _, hdr, body = icw.parse_header(resp)
    assert hdr.icmsgsize == 0x10
    assert hdr.icflags == icw.ICMSGHDRFLAG_TRANSACTION | icw.ICMSGHDRFLAG_RESPONSE
    assert icw.parse_negotiate(body[:16]) == ([icw.UTIL_FW_VERSION], [icw.SD_VERSION_3_2])
    # Nothing in common: 0 + 0.
    req = icw.build_message(icw.ICMSGTYPE_NEGOTIATE, icw.negotiate_body([0x20000], [0x90000]))
    resp, found, _, _ = icw.prep_negotiate_resp(req, icw.LINUX_FW_VERSIONS,
                                                icw.LINUX_HB_VERSIONS)
    assert not found and struct.unpack_from("<HH", resp, icw.ICMSG_HDR) == (0, 0)


# --------------------------------------------------------------------------------------------
# The checker checks: a deliberate break fails on each side
# --------------------------------------------------------------------------------------------

def test_a_wrong_python_icmsg_hdr_fails(btf):
    """icmsg_hdr with ictransaction_id and icflags swapped is reported against Linux."""
    class icmsg_hdr(ctypes.Structure):
        _pack_ = 1
        _fields_ = [(n, t) for n, t in icw.icmsg_hdr._fields_ if n not in
                    ("ictransaction_id", "icflags", "reserved")] + [
            ("icflags", ctypes.c_uint8), ("ictransaction_id", ctypes.c_uint8),
            ("reserved", ctypes.c_uint8 * 2)]

    text = "\n".join(compare("icmsg_hdr", {"Linux": SPEC.reference(btf, icw.icmsg_hdr),
                                           "Python": python_layout(icmsg_hdr)}, "Linux"))
    assert "icmsg_hdr.ictransaction_id offset: Linux 16, Python 17" in text
    assert "icmsg_hdr.icflags offset: Linux 17, Python 16" in text
    assert "icmsg_hdr.status" not in text


def test_a_wrong_python_heartbeat_fails(btf):
    """heartbeat_msg_data with a 32-bit seq_num: size and every later offset are reported."""
    class heartbeat_msg_data(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("seq_num", ctypes.c_uint32), ("reserved", ctypes.c_uint32 * 8)]

    text = "\n".join(compare("heartbeat_msg_data", {
        "Linux": SPEC.reference(btf, icw.heartbeat_msg_data),
        "Python": python_layout(heartbeat_msg_data)}, "Linux"))
    assert "heartbeat_msg_data sizeof: Linux 40, Python 36" in text
    assert "heartbeat_msg_data.seq_num size: Linux 8, Python 4" in text
    assert "heartbeat_msg_data.reserved offset: Linux 8, Python 4" in text


def test_a_wrong_c_header_fails(btf, tmp_path):
    """A C header with the pre-6.x one-element icversion_data[1] (sizeof 12: every
    ICMSG_NEGOTIATE_PKT_SIZE 4 bytes too big) and a shutdown message with a 16-bit reason_code
    is reported."""
    classes = (icw.icmsg_negotiate, icw.shutdown_msg_data)
    text = c_header_report(tmp_path, (
        "#include <stdint.h>\n"
        "struct ic_version { uint16_t major, minor; } __attribute__((packed));\n"
        "struct icmsg_negotiate { uint16_t icframe_vercnt, icmsg_vercnt; uint32_t reserved;\n"
        "  struct ic_version icversion_data[1]; } __attribute__((packed));\n"
        "struct shutdown_msg_data { uint16_t reason_code; uint32_t timeout_seconds, flags;\n"
        "  uint8_t display_message[2048]; } __attribute__((packed));\n"),
        {cls: ("Linux", SPEC.reference(btf, cls)) for cls in classes},
        {cls: SPEC.paths(cls, btf) for cls in classes})
    assert "icmsg_negotiate sizeof: Linux 8, C 12" in text
    assert "icmsg_negotiate.icversion_data size: Linux 0, C 4" in text
    assert "shutdown_msg_data.reason_code size: Linux 4, C 2" in text
    assert "shutdown_msg_data.timeout_seconds offset: Linux 4, C 2" in text
    assert "shutdown_msg_data.display_message offset: Linux 12, C 10" in text
    assert "shutdown_msg_data sizeof: Linux 2060, C 2058" in text


def test_a_wrong_version_table_fails(btf, monkeypatch):
    """A heartbeat table that forgot the 1.0 fallback is caught against hv_utils.ko."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    monkeypatch.setattr(icw, "LINUX_HB_VERSIONS", (icw.HB_VERSION,))
    with pytest.raises(AssertionError, match="hb_versions"):
        test_version_tables_match_hv_utils_ko(btf)
