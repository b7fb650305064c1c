"""The netvsc wire layouts against Linux's compiled ``hv_netvsc.ko``, Python and C.

Three descriptions of every layout in ``hvkvm.vsp.netvsc_wire.NETVSC_WIRE_STRUCTS`` (every
``nvsp_message`` member down to the v6 PacketDirect bodies, every RNDIS message in
``rndis_message_container``, ``rndis_packet``, the PPIs and the NDIS offload/RSS objects) are
compared member by member (offset, bit-field width, size) and as a whole (sizeof), with the
machinery of ``tests/conformance.py``:

* Linux: the BTF of Debian's cloud kernel's ``hv_netvsc.ko`` (``tests/linux_btf.py``);
* Python: the ctypes classes of ``hvkvm/vsp/netvsc_wire.py``;
* C: ``csrc/netvsc_proto.h``, measured by a generated program compiled with gcc.

Enumerators (the anonymous NVSP message-type and status enums included) are compared with every
enumerator of hv_netvsc's BTF, and every integer constant of netvsc_wire.py must be defined alike
by the C header. The last tests break a layout on purpose and check that the comparison says so.
``HVKVM_SKIP_BTF=1`` skips the Linux side (Python against C still runs).
"""

from __future__ import annotations

import ctypes
import re

import pytest

from conformance import WireSpec, c_header_report, compare, int_constants, python_layout
from conformance import btf_fixture  # noqa: F401  (provides the fixture ``btf``)
from hvkvm.vsp import netvsc_wire as nw

MODULE = "hv_netvsc"
SPEC = WireSpec("netvsc_proto.h", tuple(nw.NETVSC_WIRE_STRUCTS), (MODULE,))


@pytest.fixture(scope="module")
def c_measured(btf, tmp_path_factory):
    """What csrc/netvsc_proto.h says of every netvsc wire struct."""
    return SPEC.measure_c(btf, tmp_path_factory.mktemp("netvsc_cprobe"))


@pytest.mark.parametrize("cls", nw.NETVSC_WIRE_STRUCTS, ids=lambda c: c.__name__)
def test_layout_matches_linux(cls, btf, c_measured):
    """sizeof and every member: hv_netvsc.ko's BTF == netvsc_wire.py == netvsc_proto.h."""
    SPEC.check_layout(cls, btf, c_measured)


def test_the_protocol_sizes_spelled_out():
    """The sizes the protocol depends on (the BTF test above is the authority)."""
    assert ctypes.sizeof(nw.nvsp_message) == 40 == nw.NVSP_MESSAGE_SIZE
    assert nw.nvsp_message.msg.offset == 4
    assert ctypes.sizeof(nw.nvsp_1_message_send_receive_buffer_complete) == 24
    assert ctypes.sizeof(nw.nvsp_1_message_send_rndis_packet) == 12
    assert ctypes.sizeof(nw.rndis_message) == 52
    assert nw.rndis_message.msg.offset == nw.RNDIS_HEADER_SIZE == 8
    assert ctypes.sizeof(nw.rndis_packet) == 36
    assert nw.RNDIS_MESSAGE_SIZE(nw.rndis_packet) == 44
    assert ctypes.sizeof(nw.rndis_per_packet_info) == 12
    assert ctypes.sizeof(nw.ndis_offload_params) == 28
    assert nw.NDIS_OFFLOAD_SIZE_6_0 == 112


def _linux_named_enums(btf) -> dict[str, dict[str, int]]:
    out = {}
    for e in nw.WIRE_ENUMS:
        try:
            out[e.__name__] = btf.enum_values(MODULE, e.__name__)
        except KeyError:
            out[e.__name__] = None
    return out


@pytest.mark.parametrize("enum_cls", nw.WIRE_ENUMS, ids=lambda e: e.__name__)
def test_enum_matches_linux(enum_cls, btf):
    """Every enumerator of Linux's named enum, same name and value (where 6.1's BTF has the
    enum: an enum no compiled code uses is absent, and then its enumerators must not collide
    with anything Linux has)."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    ours = {n: int(v) for n, v in enum_cls.__members__.items()}
    try:
        linux = btf.enum_values(MODULE, enum_cls.__name__)
    except KeyError:
        everything = btf.enumerators(MODULE)
        clash = {n: (v, everything[n]) for n, v in ours.items()
                 if n in everything and everything[n] != v}
        assert not clash
        return  # enum not in 6.1's BTF (no compiled code uses it): no collision is all we check
    assert ours == linux


def test_constants_match_linux_enumerators(btf):
    """Every constant named like an enumerator of hv_netvsc (the anonymous NVSP_MSG*/NVSP_STAT*
    enums included) has Linux's value; and every NVSP_MSG*/NVSP_STAT* enumerator is ours."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    linux = btf.enumerators(MODULE)
    consts = int_constants(nw)
    bad = [f"{n}: ours {consts[n]}, Linux {v}" for n, v in linux.items()
           if n in consts and consts[n] != v]
    assert not bad, "\n".join(bad)
    missing = [n for n in linux if re.match(r"NVSP_(MSG|STAT|VERSION)", n) and n not in consts]
    assert not missing, f"Linux enumerators missing from netvsc_wire.py: {missing}"


def test_constants_match_c_header(tmp_path):
    """Every integer constant of netvsc_wire.py is defined by csrc/netvsc_proto.h alike."""
    values = SPEC.check_constants(nw, tmp_path)
    assert "NVSP_MSG1_TYPE_SEND_RNDIS_PKT" in values
    assert "RNDIS_OID_802_3_PERMANENT_ADDRESS" in values


def test_nvsp_versions_are_linux_6s():
    assert nw.NVSP_VERSIONS == (0x60001, 0x60000, 0x50000, 0x40000, 0x30002, 2)


# --------------------------------------------------------------------------------------------
# The checker checks: a deliberate break fails on each side
# --------------------------------------------------------------------------------------------

def test_a_wrong_python_layout_fails(btf, c_measured):
    """nvsp_1_message_send_rndis_packet unpacked with a u16 channel_type is reported against
    Linux (or C)."""
    class nvsp_1_message_send_rndis_packet(ctypes.Structure):
        _fields_ = [("channel_type", ctypes.c_uint16), ("send_buf_section_index", ctypes.c_uint32),
                    ("send_buf_section_size", ctypes.c_uint32)]

    ref = SPEC.reference(btf, nw.nvsp_1_message_send_rndis_packet)
    text = "\n".join(compare("nvsp_1_message_send_rndis_packet",
                             {"Linux": ref, "Python": python_layout(
                                 nvsp_1_message_send_rndis_packet)}, "Linux"))
    assert "nvsp_1_message_send_rndis_packet.channel_type size: Linux 4, Python 2" in text
    assert "nvsp_1_message_send_rndis_packet.send_buf_section_index offset: Linux 4, Python 4" \
        not in text
    assert "nvsp_1_message_send_rndis_packet.send_buf_section_size offset" not in text  # aligned


def test_an_unpacked_nvsp_message_fails(btf):
    """Dropping __packed from the nvsp_message chain (a classic mistake: the v2 u64 members
    then align the union to 8) moves msg to offset 8 and the size to 48."""
    class nvsp_2_free_rxbuf(ctypes.Structure):
        _fields_ = [("recv_buf_id", ctypes.c_uint64)]

    class nvsp_2_message_uber(ctypes.Union):
        _fields_ = [("free_rxbuf", nvsp_2_free_rxbuf)]

    class nvsp_all_messages(ctypes.Union):
        _fields_ = [(n, t) for n, t in nw.nvsp_all_messages._fields_ if n != "v2_msg"] + [
            ("v2_msg", nvsp_2_message_uber)]

    class nvsp_message(ctypes.Structure):
        _fields_ = [("hdr", nw.nvsp_message_header), ("msg", nvsp_all_messages)]

    ref = SPEC.reference(btf, nw.nvsp_message)
    text = "\n".join(compare("nvsp_message", {"Linux": ref, "Python": python_layout(nvsp_message)},
                             "Linux"))
    assert "nvsp_message sizeof: Linux 40, Python 48" in text
    assert "nvsp_message.msg offset: Linux 4, Python 8" in text


def test_a_wrong_c_header_fails(tmp_path):
    """A C header whose rndis_per_packet_info has the internal bit first, and whose
    rndis_packet lacks `reserved`, is reported."""
    text = c_header_report(tmp_path, (
        "#include <stdint.h>\n"
        "struct rndis_per_packet_info { uint32_t size; uint32_t internal:1; uint32_t type:31;\n"
        "  uint32_t ppi_offset; };\n"
        "struct rndis_packet { uint32_t data_offset, data_len, oob_data_offset, oob_data_len,\n"
        "  num_oob_data_elements, per_pkt_info_offset, per_pkt_info_len, vc_handle; };\n"),
        {cls: ("Python", python_layout(cls))
         for cls in (nw.rndis_per_packet_info, nw.rndis_packet)})
    assert "rndis_per_packet_info.type offset: Python bit 32, C bit 33" in text
    assert "rndis_per_packet_info.internal offset: Python bit 63, C bit 32" in text
    assert "rndis_packet sizeof: Python 36, C 32" in text
    assert "rndis_packet.reserved missing: Python 32, C absent" in text
