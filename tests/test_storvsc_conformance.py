"""The storvsc wire layouts against Linux's compiled ``hv_storvsc.ko``, Python and C.

Three descriptions of every layout in ``hvkvm.vsp.storvsc_wire.STORVSC_WIRE_STRUCTS`` are compared
member by member (offset, bit-field width, size) and as a whole (sizeof), with the same machinery
as ``test_linux_conformance.py``:

* Linux: the BTF of Debian's cloud kernel's ``hv_storvsc.ko`` (``tests/linux_btf.py``);
* Python: the ctypes classes of ``hvkvm/vsp/storvsc_wire.py``;
* C: ``csrc/storvsc_proto.h``, measured by a generated program compiled with gcc.

Enums (``vstor_packet_operation``, ``storvsc_request_type``) are compared with Linux's
enumerators, and every integer constant of storvsc_wire.py must be defined alike in the C header.
``HVKVM_SKIP_BTF=1`` skips the Linux side (Python against C still runs).
"""

from __future__ import annotations

import re

import pytest

from hvkvm.vsp import storvsc_wire as sw
from linux_btf import linux_btf_fixture  # noqa: F401  (provides the fixture ``linux_btf``)
from test_linux_conformance import (CSRC, CProbe, _cstr, add_struct_probes, btf_layout, c_layout,
                                    compare, python_layout)

import linux_btf

MODULE = "hv_storvsc"


@pytest.fixture(scope="module")
def storvsc_btf():
    """Linux's BTF, or None under HVKVM_SKIP_BTF=1 (unavailable BTF fails)."""
    if linux_btf.skip_requested():
        return None
    try:
        return linux_btf.get()
    except linux_btf.BtfUnavailable as e:
        pytest.fail(f"Linux BTF unavailable: {e}\n(HVKVM_SKIP_BTF=1 skips the Linux side "
                    "explicitly)", pytrace=False)


@pytest.fixture(scope="module")
def c_measured(storvsc_btf, tmp_path_factory):
    """(values, errors, paths per struct) as csrc/storvsc_proto.h has them."""
    probe = CProbe(["storvsc_proto.h"], [CSRC])
    all_paths = {}
    for cls in sw.STORVSC_WIRE_STRUCTS:
        paths = {p: m[1] > 0 for p, m in python_layout(cls)[1].items()}
        if storvsc_btf is not None:
            for p, m in btf_layout(storvsc_btf.struct_layout(MODULE, cls.__name__))[1].items():
                paths[p] = paths.get(p, False) or m[1] > 0
        all_paths[cls.__name__] = paths
        add_struct_probes(probe, cls, paths)
    values, errors = probe.run(tmp_path_factory.mktemp("storvsc_cprobe"))
    return values, errors, all_paths


@pytest.mark.parametrize("cls", sw.STORVSC_WIRE_STRUCTS, ids=lambda c: c.__name__)
def test_layout_matches_linux(cls, storvsc_btf, c_measured):
    """sizeof and every member: hv_storvsc.ko's BTF == storvsc_wire.py == storvsc_proto.h."""
    name = cls.__name__
    values, errors, all_paths = c_measured
    sides = {}
    reference = "Python"
    if storvsc_btf is not None:
        sides[f"Linux({MODULE})"] = btf_layout(storvsc_btf.struct_layout(MODULE, name))
        reference = f"Linux({MODULE})"
    sides["Python"] = python_layout(cls)
    c_size, c_members, c_missing = c_layout(values, errors, cls, all_paths[name])
    sides["C"] = (c_size, c_members)
    problems = compare(name, sides, reference)
    problems += [f"{name}.{p}: C header: {why}" for p, why in c_missing.items()]
    if c_size is None:
        problems.insert(0, f"{name}: not defined by csrc/storvsc_proto.h: "
                           f"{errors.get(name + '|', '?')}")
    assert not problems, f"{len(problems)} layout difference(s):\n" + "\n".join(problems)
    if storvsc_btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1: only Python vs C compared")


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
def test_enum_matches_linux(enum_cls, storvsc_btf):
    """Every enumerator of Linux's enum, same name and value (VSTOR_OPERATION_MAXIMUM, an alias,
    is a plain constant here)."""
    if storvsc_btf is None:
        pytest.skip("HVKVM_SKIP_BTF=1")
    linux = storvsc_btf.enum_values(MODULE, enum_cls.__name__)
    ours = {m.name: int(m.value) for m in enum_cls}
    if enum_cls is sw.vstor_packet_operation:
        ours["VSTOR_OPERATION_MAXIMUM"] = sw.VSTOR_OPERATION_MAXIMUM
    assert ours == linux


def _int_constants() -> dict[str, int]:
    return {n: int(v) for n, v in vars(sw).items()
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", n) and isinstance(v, int)
            and not isinstance(v, bool)}


def test_constants_match_c_header(tmp_path):
    """Every integer constant of storvsc_wire.py is defined by csrc/storvsc_proto.h alike."""
    probe = CProbe(["storvsc_proto.h"], [CSRC])
    consts = _int_constants()
    for n in consts:
        probe.add(n, f"U({_cstr(n)}, \"value\", {n});")
    values, errors = probe.run(tmp_path)
    bad = []
    for n, v in consts.items():
        if n not in values:
            bad.append(f"{n}: storvsc_wire.py {v:#x}, C: {errors.get(n, 'missing')}")
        elif values[n]["value"] != v & 0xFFFFFFFFFFFFFFFF:
            bad.append(f"{n}: storvsc_wire.py {v:#x}, C {values[n]['value']:#x}")
    assert not bad, f"{len(bad)} constant(s) differ:\n" + "\n".join(bad)
    assert "VSTOR_OPERATION_EXECUTE_SRB" in values and "SRB_STATUS_INVALID_LUN" in values
