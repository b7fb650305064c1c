"""The storvsc wire layouts against Linux's compiled ``hv_storvsc.ko``, Python and C.

Three descriptions of every layout in ``hvkvm.vsp.storvsc_wire.STORVSC_WIRE_STRUCTS`` are compared
member by member (offset, bit-field width, size) and as a whole (sizeof), with the machinery
of ``tests/conformance.py``:

* Linux: the BTF of Debian's cloud kernel's ``hv_storvsc.ko`` (``tests/linux_btf.py``);
* Python: the ctypes classes of ``hvkvm/vsp/storvsc_wire.py``;
* C: ``csrc/storvsc_proto.h``, measured by a generated program compiled with gcc.

Enums (``vstor_packet_operation``, ``storvsc_request_type``) are compared with Linux's
enumerators, and every integer constant of storvsc_wire.py must be defined alike in the C header.
``HVKVM_SKIP_BTF=1`` skips the Linux side (Python against C still runs).
"""

from __future__ import annotations

import pytest

from conformance import WireSpec
from conformance import btf_fixture  # noqa: F401  (provides the fixture ``btf``)
from hvkvm.vsp import storvsc_wire as sw

MODULE = "hv_storvsc"
SPEC = WireSpec("storvsc_proto.h", tuple(sw.STORVSC_WIRE_STRUCTS), (MODULE,))


@pytest.fixture(scope="module")
def c_measured(btf, tmp_path_factory):
    """What csrc/storvsc_proto.h says of every storvsc wire struct."""
    return SPEC.measure_c(btf, tmp_path_factory.mktemp("storvsc_cprobe"))


@pytest.mark.parametrize("cls", sw.STORVSC_WIRE_STRUCTS, ids=lambda c: c.__name__)
def test_layout_matches_linux(cls, btf, c_measured):
    """sizeof and every member: hv_storvsc.ko's BTF == storvsc_wire.py == storvsc_proto.h."""
    SPEC.check_layout(cls, btf, c_measured)


def test_the_four_protocol_structs_are_the_sizes_linux_sends():
    """The sizes the protocol depends on, spelled out (the BTF test above is the authority)."""
    import ctypes
    assert ctypes.sizeof(sw.vstor_packet) == 64
    assert ctypes.sizeof(sw.vmscsi_request) == 52
    assert ctypes.sizeof(sw.vmstorage_channel_properties) == 24
    assert ctypes.sizeof(sw.vmstorage_protocol_version) == 4
    assert sw.vstor_packet.vm_srb.offset == 12
    assert sw.VMSCSI_SIZE_DELTA == 16
    assert sw.packet_size(sw.VMSTOR_PROTO_VERSION_WIN10) == 64
    assert sw.packet_size(sw.VMSTOR_PROTO_VERSION_WIN8) == 64
    assert sw.packet_size(sw.VMSTOR_PROTO_VERSION_WIN7) == 48


@pytest.mark.parametrize("enum_cls", [sw.vstor_packet_operation, sw.storvsc_request_type],
                         ids=lambda e: e.__name__)
def test_enum_matches_linux(enum_cls, btf):
    """Every enumerator of Linux's enum, same name and value (VSTOR_OPERATION_MAXIMUM, an alias,
    is a plain constant here)."""
    if btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    linux = btf.enum_values(MODULE, enum_cls.__name__)
    ours = {m.name: int(m.value) for m in enum_cls}
    if enum_cls is sw.vstor_packet_operation:
        ours["VSTOR_OPERATION_MAXIMUM"] = sw.VSTOR_OPERATION_MAXIMUM
    assert ours == linux


def test_constants_match_c_header(tmp_path):
    """Every integer constant of storvsc_wire.py is defined by csrc/storvsc_proto.h alike."""
    values = SPEC.check_constants(sw, tmp_path)
    assert "VSTOR_OPERATION_EXECUTE_SRB" in values and "SRB_STATUS_INVALID_LUN" in values
