"""The storvsc wire protocol (VMBus synthetic SCSI), in Linux's spelling.

Every struct, member, enum and constant is named as Linux's ``drivers/scsi/storvsc_drv.c`` names
it, so the VSP can be read next to the driver that talks to it. ``csrc/storvsc_proto.h`` holds the
same layouts for C (the C data plane and, later, the guest-side VSC); ``tests/
test_storvsc_conformance.py`` compares both with the BTF of Debian's compiled ``hv_storvsc.ko``.

The layout follows Linux 6.x: ``struct vmscsi_request`` carries the Windows 8 fields
(``reserve`` .. ``queue_sort_ey``) inline (older kernels wrapped them in ``struct
vmscsi_win8_extension``; same bytes). A guest that negotiates a protocol older than Windows 8
(VMSTOR_PROTO_VERSION_WIN7 and before) sends and expects packets :data:`VMSCSI_SIZE_DELTA` bytes
shorter: that is Linux's old ``vmscsi_size_delta`` rule, which :func:`packet_size` applies.

A request travels as an in-band packet (no data) or as a GPA-direct packet (Linux's ``struct
vmbus_packet_mpb_array``: the PFNs of the data buffer, then the vstor_packet as payload); the VSP
answers every request with a VM_PKT_COMP packet carrying a vstor_packet with the same trans_id.
"""

from __future__ import annotations

import ctypes
import enum
from ctypes import Structure, Union

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64


def VMSTOR_PROTO_VERSION(major: int, minor: int) -> int:
    """Linux's VMSTOR_PROTO_VERSION(MAJOR_, MINOR_): major in the high byte."""
    return ((major & 0xFF) << 8) | (minor & 0xFF)


VMSTOR_PROTO_VERSION_WIN6 = VMSTOR_PROTO_VERSION(2, 0)
VMSTOR_PROTO_VERSION_WIN7 = VMSTOR_PROTO_VERSION(4, 2)
VMSTOR_PROTO_VERSION_WIN8 = VMSTOR_PROTO_VERSION(5, 1)
VMSTOR_PROTO_VERSION_WIN8_1 = VMSTOR_PROTO_VERSION(6, 0)
VMSTOR_PROTO_VERSION_WIN10 = VMSTOR_PROTO_VERSION(6, 2)


class vstor_packet_operation(enum.IntEnum):
    """Linux's ``enum vstor_packet_operation``."""

    VSTOR_OPERATION_COMPLETE_IO = 1
    VSTOR_OPERATION_REMOVE_DEVICE = 2
    VSTOR_OPERATION_EXECUTE_SRB = 3
    VSTOR_OPERATION_RESET_LUN = 4
    VSTOR_OPERATION_RESET_ADAPTER = 5
    VSTOR_OPERATION_RESET_BUS = 6
    VSTOR_OPERATION_BEGIN_INITIALIZATION = 7
    VSTOR_OPERATION_END_INITIALIZATION = 8
    VSTOR_OPERATION_QUERY_PROTOCOL_VERSION = 9
    VSTOR_OPERATION_QUERY_PROPERTIES = 10
    VSTOR_OPERATION_ENUMERATE_BUS = 11
    VSTOR_OPERATION_FCHBA_DATA = 12
    VSTOR_OPERATION_CREATE_SUB_CHANNELS = 13
    # VSTOR_OPERATION_MAXIMUM = 13 is an alias in Linux's enum (not a member here)


globals().update(vstor_packet_operation.__members__)
VSTOR_OPERATION_MAXIMUM = 13


class storvsc_request_type(enum.IntEnum):
    """Linux's ``enum storvsc_request_type``: the ``data_in`` field of a request."""

    WRITE_TYPE = 0
    READ_TYPE = 1
    UNKNOWN_TYPE = 2


globals().update(storvsc_request_type.__members__)

# SRB flag bits (srb_flags)
SRB_FLAGS_QUEUE_ACTION_ENABLE = 0x00000002
SRB_FLAGS_DISABLE_DISCONNECT = 0x00000004
SRB_FLAGS_DISABLE_SYNCH_TRANSFER = 0x00000008
SRB_FLAGS_BYPASS_FROZEN_QUEUE = 0x00000010
SRB_FLAGS_DISABLE_AUTOSENSE = 0x00000020
SRB_FLAGS_DATA_IN = 0x00000040
SRB_FLAGS_DATA_OUT = 0x00000080
SRB_FLAGS_NO_DATA_TRANSFER = 0x00000000
SRB_FLAGS_UNSPECIFIED_DIRECTION = SRB_FLAGS_DATA_IN | SRB_FLAGS_DATA_OUT
SRB_FLAGS_NO_QUEUE_FREEZE = 0x00000100
SRB_FLAGS_ADAPTER_CACHE_ENABLE = 0x00000200
SRB_FLAGS_FREE_SENSE_BUFFER = 0x00000400

SP_UNTAGGED = 0xFF
SRB_SIMPLE_TAG_REQUEST = 0x20

STORVSC_MAX_CMD_LEN = 0x10
#: Sense buffer size since Windows 8 (older protocols: PRE_WIN8_STORVSC_SENSE_BUFFER_SIZE)
STORVSC_SENSE_BUFFER_SIZE = 0x14
STORVSC_MAX_BUF_LEN_WITH_PADDING = 0x14
POST_WIN7_STORVSC_SENSE_BUFFER_SIZE = 0x14
PRE_WIN8_STORVSC_SENSE_BUFFER_SIZE = 0x12

# vstor_packet.flags
REQUEST_COMPLETION_FLAG = 0x1

# vmstorage_channel_properties.flags
STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL = 0x1
# Channel property flags (older kernels: same field)
STORAGE_CHANNEL_REMOVABLE_FLAG = 0x1
STORAGE_CHANNEL_EMULATED_IDE_FLAG = 0x2

# srb_status: the two high bits are flags, the low six an integer code
SRB_STATUS_AUTOSENSE_VALID = 0x80
SRB_STATUS_QUEUE_FROZEN = 0x40
SRB_STATUS_SUCCESS = 0x01
SRB_STATUS_ABORTED = 0x02
SRB_STATUS_ERROR = 0x04
SRB_STATUS_INVALID_REQUEST = 0x06
SRB_STATUS_DATA_OVERRUN = 0x12
SRB_STATUS_INVALID_LUN = 0x20
SRB_STATUS_INTERNAL_ERROR = 0x30


def SRB_STATUS(status: int) -> int:
    """The integer code of an srb_status (flags masked off)."""
    return status & ~(SRB_STATUS_AUTOSENSE_VALID | SRB_STATUS_QUEUE_FROZEN)


# Limits Linux's SCSI host template takes from the protocol
STORVSC_MAX_LUNS_PER_TARGET = 255
STORVSC_MAX_TARGETS = 2
STORVSC_MAX_CHANNELS = 8

# vstor_packet.status values hvkvm answers with (NTSTATUS, as Hyper-V does; Linux only tests
# for non-zero).
STATUS_SUCCESS = 0x00000000
STATUS_UNSUCCESSFUL = 0xC0000001
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_REVISION_MISMATCH = 0xC0000059
STATUS_NOT_SUPPORTED = 0xC00000BB
STATUS_INVALID_DEVICE_STATE = 0xC0000184


class vmscsi_request(Structure):
    """A SCSI request block (SRB). ``cdb`` on the way in and ``sense_data`` on the way back share
    the same 20 bytes (an anonymous union in Linux)."""

    class _u(Union):
        _fields_ = [
            ("cdb", u8 * STORVSC_MAX_CMD_LEN),
            ("sense_data", u8 * STORVSC_SENSE_BUFFER_SIZE),
            ("reserved_array", u8 * STORVSC_MAX_BUF_LEN_WITH_PADDING),
        ]

    _pack_ = 1
    _anonymous_ = ("_u",)
    _fields_ = [
        ("length", u16),
        ("srb_status", u8),
        ("scsi_status", u8),
        ("port_number", u8),
        ("path_id", u8),
        ("target_id", u8),
        ("lun", u8),
        ("cdb_length", u8),
        ("sense_info_length", u8),
        ("data_in", u8),
        ("reserved", u8),
        ("data_transfer_length", u32),
        ("_u", _u),
        # The following was added in win8.
        ("reserve", u16),
        ("queue_tag", u8),
        ("queue_action", u8),
        ("srb_flags", u32),
        ("time_out_value", u32),
        ("queue_sort_ey", u32),
    ]


class vmstorage_channel_properties(Structure):
    """The answer to QUERY_PROPERTIES (and the open message's user data)."""

    _pack_ = 1
    _fields_ = [
        ("reserved", u32),
        ("max_channel_cnt", u16),
        ("reserved1", u16),
        ("flags", u32),
        ("max_transfer_bytes", u32),
        ("reserved2", u64),
    ]


class vmstorage_protocol_version(Structure):
    """QUERY_PROTOCOL_VERSION: major in the high byte of ``major_minor``; revision unused (0)."""

    _pack_ = 1
    _fields_ = [
        ("major_minor", u16),
        ("revision", u16),
    ]


class hv_fc_wwn_packet(Structure):
    """FCHBA_DATA (synthetic Fibre Channel only; hvkvm does not offer it)."""

    _fields_ = [
        ("primary_active", u8),
        ("reserved1", u8 * 3),
        ("primary_port_wwn", u8 * 8),
        ("primary_node_wwn", u8 * 8),
        ("secondary_port_wwn", u8 * 8),
        ("secondary_node_wwn", u8 * 8),
    ]


class vstor_packet(Structure):
    """Every storvsc message: operation, flags, status and a 52-byte union."""

    class _u(Union):
        _fields_ = [
            ("vm_srb", vmscsi_request),
            ("storage_channel_properties", vmstorage_channel_properties),
            ("version", vmstorage_protocol_version),
            ("wwn_packet", hv_fc_wwn_packet),
            ("sub_channel_count", u16),
            ("buffer", u8 * 0x34),
        ]

    _pack_ = 1
    _anonymous_ = ("_u",)
    _fields_ = [
        ("operation", u32),   # enum vstor_packet_operation
        ("flags", u32),
        ("status", u32),
        ("_u", _u),
    ]


#: What a pre-Windows-8 protocol leaves off the end of vmscsi_request (and so of vstor_packet):
#: the Windows 8 fields reserve .. queue_sort_ey (Linux's old sizeof(vmscsi_win8_extension)).
VMSCSI_SIZE_DELTA = ctypes.sizeof(vmscsi_request) - vmscsi_request.reserve.offset
VSTOR_PACKET_SIZE = ctypes.sizeof(vstor_packet)

#: Every public wire layout (the conformance test walks these).
STORVSC_WIRE_STRUCTS = [vmscsi_request, vmstorage_channel_properties, vmstorage_protocol_version,
                        hv_fc_wwn_packet, vstor_packet]

#: Protocol versions the VSP accepts, newest first: Linux 6.x asks for WIN10, WIN8_1, WIN8 in that
#: order; older kernels also tried WIN7 and WIN6 (with the shorter packets).
SUPPORTED_VERSIONS = (VMSTOR_PROTO_VERSION_WIN10, VMSTOR_PROTO_VERSION_WIN8_1,
                      VMSTOR_PROTO_VERSION_WIN8, VMSTOR_PROTO_VERSION_WIN7,
                      VMSTOR_PROTO_VERSION_WIN6)


def packet_size(version: int) -> int:
    """Bytes of a vstor_packet on the wire under protocol ``version`` (Linux's old
    ``sizeof(struct vstor_packet) - vmscsi_size_delta``)."""
    return VSTOR_PACKET_SIZE - (VMSCSI_SIZE_DELTA if version < VMSTOR_PROTO_VERSION_WIN8 else 0)


def sense_buffer_size(version: int) -> int:
    """The sense bytes a guest of protocol ``version`` takes."""
    return (PRE_WIN8_STORVSC_SENSE_BUFFER_SIZE if version < VMSTOR_PROTO_VERSION_WIN8
            else STORVSC_SENSE_BUFFER_SIZE)
