"""The Hyper-V integration services (ICs) wire protocol, in Linux's spelling.

Every struct, member and constant is named as Linux's ``include/linux/hyperv.h``,
``include/uapi/linux/hyperv.h`` and ``drivers/hv/hv_util.c`` name it, so the VSPs in
:mod:`hvkvm.vsp.ic` can be read next to the driver that talks to them. ``csrc/ic_proto.h`` holds
the same layouts for C (the guest's VSCs in ``guest_images/rt/k_ic.c``);
``tests/test_ic_conformance.py`` compares both with the BTF of Debian's compiled ``hv_utils.ko``
(and ``hv_vmbus.ko`` for ``icmsg_negotiate``, which only ``vmbus_prep_negotiate_resp`` uses), and
the version tables below with the ``fw_versions``/``hb_versions``/``sd_versions``/``ts_versions``
arrays compiled into ``hv_utils.ko``.

An IC message is one in-band VMBus packet: :class:`vmbuspipe_hdr`, :class:`icmsg_hdr`, then the
body (:class:`icmsg_negotiate` + :class:`ic_version` entries, :class:`heartbeat_msg_data`,
:class:`shutdown_msg_data`). The host sends every request (``ICMSGHDRFLAG_TRANSACTION |
ICMSGHDRFLAG_REQUEST``); the guest answers by sending the same packet back (same length, same
VMBus trans_id) with ``icflags = ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_RESPONSE``. Negotiation
comes first: the host lists its framework versions, then its service versions; Linux's
``vmbus_prep_negotiate_resp`` picks the first of its own (best-first) tables the host lists and
answers ``icframe_vercnt = icmsg_vercnt = 1`` with the choice in ``icversion_data[0]`` and
``[1]``, or 0 and 0 when nothing matches. Versions here are words ``major << 16 | minor``.

Names Linux does not have are marked "(hvkvm)" (the shutdown flag bits, the pipe packet type).
"""

from __future__ import annotations

import ctypes
import struct
from ctypes import Structure

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64

# Message types (icmsg_hdr.icmsgtype)
ICMSGTYPE_NEGOTIATE = 0
ICMSGTYPE_HEARTBEAT = 1
ICMSGTYPE_KVPEXCHANGE = 2
ICMSGTYPE_SHUTDOWN = 3
ICMSGTYPE_TIMESYNC = 4
ICMSGTYPE_VSS = 5
ICMSGTYPE_FCOPY = 7

# icmsg_hdr.icflags
ICMSGHDRFLAG_TRANSACTION = 1
ICMSGHDRFLAG_REQUEST = 2
ICMSGHDRFLAG_RESPONSE = 4

# icmsg_hdr.status (HRESULTs)
HV_S_OK = 0x00000000
HV_E_FAIL = 0x80004005
HV_S_CONT = 0x80070103
HV_ERROR_NOT_SUPPORTED = 0x80070032
HV_ERROR_MACHINE_LOCKED = 0x800704F7
HV_ERROR_DEVICE_NOT_CONNECTED = 0x8007048F
HV_INVALIDARG = 0x80070057
HV_GUID_NOTFOUND = 0x80041002

# Framework versions (include/uapi/linux/hyperv.h)
UTIL_FW_MINOR = 0
UTIL_WS2K8_FW_MAJOR = 1
UTIL_WS2K8_FW_VERSION = UTIL_WS2K8_FW_MAJOR << 16 | UTIL_FW_MINOR
UTIL_FW_MAJOR = 3
UTIL_FW_VERSION = UTIL_FW_MAJOR << 16 | UTIL_FW_MINOR

# Service versions (drivers/hv/hv_util.c)
SD_MAJOR = 3
SD_MINOR = 0
SD_MINOR_1 = 1
SD_MINOR_2 = 2
SD_VERSION_3_1 = SD_MAJOR << 16 | SD_MINOR_1
SD_VERSION_3_2 = SD_MAJOR << 16 | SD_MINOR_2
SD_VERSION = SD_MAJOR << 16 | SD_MINOR
SD_MAJOR_1 = 1
SD_VERSION_1 = SD_MAJOR_1 << 16 | SD_MINOR

TS_MAJOR = 4
TS_MINOR = 0
TS_VERSION = TS_MAJOR << 16 | TS_MINOR
TS_MAJOR_1 = 1
TS_VERSION_1 = TS_MAJOR_1 << 16 | TS_MINOR
TS_MAJOR_3 = 3
TS_VERSION_3 = TS_MAJOR_3 << 16 | TS_MINOR

HB_MAJOR = 3
HB_MINOR = 0
HB_VERSION = HB_MAJOR << 16 | HB_MINOR
HB_MAJOR_1 = 1
HB_VERSION_1 = HB_MAJOR_1 << 16 | HB_MINOR

FW_VER_COUNT = 2
SD_VER_COUNT = 4
TS_VER_COUNT = 3
HB_VER_COUNT = 2

#: hv_util.c's tables, best first: what a Linux guest accepts (fw_versions[], sd_versions[],
#: ts_versions[], hb_versions[]).
LINUX_FW_VERSIONS = (UTIL_FW_VERSION, UTIL_WS2K8_FW_VERSION)
LINUX_SD_VERSIONS = (SD_VERSION_3_2, SD_VERSION_3_1, SD_VERSION, SD_VERSION_1)
LINUX_TS_VERSIONS = (TS_VERSION, TS_VERSION_3, TS_VERSION_1)
LINUX_HB_VERSIONS = (HB_VERSION, HB_VERSION_1)

MAX_SRV_VER = 0x7ffffff

#: vmbuspipe_hdr.flags as hosts send it (hvkvm; OpenVMM's PIPE_PACKET_TYPE_DATA). Linux ignores
#: the pipe header and echoes it back.
VMBUSPIPE_PACKET_TYPE_DATA = 1

#: shutdown_msg_data.flags bits (hvkvm names: Linux tests the literals 0/1 shut down, 2/3
#: restart, 4/5 hibernate; bit 0 asks for "by force").
ICSHUTDOWN_FLAG_FORCE = 0x1
ICSHUTDOWN_FLAG_RESTART = 0x2
ICSHUTDOWN_FLAG_HIBERNATE = 0x4
#: shutdown_msg_data.reason_code of a planned stop (Windows SDK; what OpenVMM sends).
SHTDN_REASON_FLAG_PLANNED = 0x80000000
ICSHUTDOWN_DISPLAY_MESSAGE_SIZE = 2048

IC_VERSION_NEGOTIATION_MAX_VER_COUNT = 100

# Time Sync IC flags
ICTIMESYNCFLAG_PROBE = 0
ICTIMESYNCFLAG_SYNC = 1
ICTIMESYNCFLAG_SAMPLE = 2


class vmbuspipe_hdr(Structure):
    """The pipe header in front of every IC message (flags, size of what follows)."""

    _pack_ = 1
    _fields_ = [
        ("flags", u32),
        ("msgsize", u32),
    ]


class ic_version(Structure):
    _pack_ = 1
    _fields_ = [
        ("major", u16),
        ("minor", u16),
    ]


class icmsg_hdr(Structure):
    """The IC message header: versions in use, type, body size, status, transaction, flags."""

    _pack_ = 1
    _fields_ = [
        ("icverframe", ic_version),
        ("icmsgtype", u16),
        ("icvermsg", ic_version),
        ("icmsgsize", u16),
        ("status", u32),
        ("ictransaction_id", u8),
        ("icflags", u8),
        ("reserved", u8 * 2),
    ]


class icmsg_negotiate(Structure):
    """ICMSGTYPE_NEGOTIATE body: counts, then ``icframe_vercnt + icmsg_vercnt`` ic_version
    entries (a flexible array in Linux 6.x: framework versions first)."""

    _pack_ = 1
    _fields_ = [
        ("icframe_vercnt", u16),
        ("icmsg_vercnt", u16),
        ("reserved", u32),
        ("icversion_data", ic_version * 0),
    ]


class shutdown_msg_data(Structure):
    """ICMSGTYPE_SHUTDOWN body. Linux needs all 2060 bytes in the packet."""

    _pack_ = 1
    _fields_ = [
        ("reason_code", u32),
        ("timeout_seconds", u32),
        ("flags", u32),
        ("display_message", u8 * ICSHUTDOWN_DISPLAY_MESSAGE_SIZE),
    ]


class heartbeat_msg_data(Structure):
    """ICMSGTYPE_HEARTBEAT body: the guest answers ``seq_num + 1`` (Linux reads only seq_num)."""

    _pack_ = 1
    _fields_ = [
        ("seq_num", u64),
        ("reserved", u32 * 8),
    ]


class ictimesync_data(Structure):
    _pack_ = 1
    _fields_ = [
        ("parenttime", u64),
        ("childtime", u64),
        ("roundtriptime", u64),
        ("flags", u8),
    ]


class ictimesync_ref_data(Structure):
    _pack_ = 1
    _fields_ = [
        ("parenttime", u64),
        ("vmreferencetime", u64),
        ("flags", u8),
        ("leapflags", ctypes.c_char),
        ("stratum", ctypes.c_char),
        ("reserved", u8 * 3),
    ]


#: Every layout, for the conformance test.
IC_WIRE_STRUCTS = [vmbuspipe_hdr, ic_version, icmsg_hdr, icmsg_negotiate, shutdown_msg_data,
                   heartbeat_msg_data, ictimesync_data, ictimesync_ref_data]

#: sizeof(struct vmbuspipe_hdr) + sizeof(struct icmsg_hdr): where an IC body starts.
ICMSG_HDR = ctypes.sizeof(vmbuspipe_hdr) + ctypes.sizeof(icmsg_hdr)


def ICMSG_NEGOTIATE_PKT_SIZE(icframe_vercnt: int, icmsg_vercnt: int) -> int:
    """Linux's ICMSG_NEGOTIATE_PKT_SIZE: bytes a negotiate packet with these counts needs."""
    return (ICMSG_HDR + ctypes.sizeof(icmsg_negotiate)
            + (icframe_vercnt + icmsg_vercnt) * ctypes.sizeof(ic_version))


def version_word(major: int, minor: int) -> int:
    """``major << 16 | minor``, the form of the version tables."""
    return (major & 0xFFFF) << 16 | (minor & 0xFFFF)


def version_str(word: int) -> str:
    """``"3.0"`` for 0x30000."""
    return f"{word >> 16}.{word & 0xFFFF}"


# --------------------------------------------------------------------------------------------
# Building and parsing messages
# --------------------------------------------------------------------------------------------

def build_message(icmsgtype: int, body: bytes, *, icflags: int = ICMSGHDRFLAG_TRANSACTION
                  | ICMSGHDRFLAG_REQUEST, framework: int = 0, service: int = 0,
                  transaction_id: int = 0, status: int = 0, icmsgsize: int | None = None,
                  pipe_flags: int = VMBUSPIPE_PACKET_TYPE_DATA) -> bytes:
    """vmbuspipe_hdr + icmsg_hdr + body, as a host sends a request (pipe msgsize = header +
    body, icmsgsize = len(body) unless given)."""
    hdr = icmsg_hdr()
    hdr.icverframe.major, hdr.icverframe.minor = framework >> 16, framework & 0xFFFF
    hdr.icmsgtype = icmsgtype
    hdr.icvermsg.major, hdr.icvermsg.minor = service >> 16, service & 0xFFFF
    hdr.icmsgsize = len(body) if icmsgsize is None else icmsgsize
    hdr.status = status
    hdr.ictransaction_id = transaction_id & 0xFF
    hdr.icflags = icflags
    pipe = vmbuspipe_hdr(pipe_flags, ctypes.sizeof(icmsg_hdr) + len(body))
    return bytes(pipe) + bytes(hdr) + body


def negotiate_body(framework_versions, service_versions) -> bytes:
    """icmsg_negotiate with the framework versions, then the service versions."""
    words = list(framework_versions) + list(service_versions)
    return (struct.pack("<HHI", len(framework_versions), len(service_versions), 0)
            + b"".join(struct.pack("<HH", w >> 16, w & 0xFFFF) for w in words))


def parse_header(msg: bytes) -> tuple[vmbuspipe_hdr, icmsg_hdr, bytes]:
    """(pipe header, icmsg header, body) of a message; ValueError if shorter than ICMSG_HDR."""
    if len(msg) < ICMSG_HDR:
        raise ValueError(f"IC message of {len(msg)} bytes is shorter than its headers "
                         f"({ICMSG_HDR})")
    pipe = vmbuspipe_hdr.from_buffer_copy(msg, 0)
    hdr = icmsg_hdr.from_buffer_copy(msg, ctypes.sizeof(vmbuspipe_hdr))
    return pipe, hdr, bytes(msg[ICMSG_HDR:])


def parse_negotiate(body: bytes) -> tuple[list[int], list[int]]:
    """(framework versions, service versions) listed in an icmsg_negotiate body; ValueError if
    the counts exceed IC_VERSION_NEGOTIATION_MAX_VER_COUNT or the body."""
    if len(body) < ctypes.sizeof(icmsg_negotiate):
        raise ValueError(f"negotiate body of {len(body)} bytes")
    nf, nm, _ = struct.unpack_from("<HHI", body)
    if nf > IC_VERSION_NEGOTIATION_MAX_VER_COUNT or nm > IC_VERSION_NEGOTIATION_MAX_VER_COUNT:
        raise ValueError(f"negotiate counts {nf} + {nm} exceed "
                         f"{IC_VERSION_NEGOTIATION_MAX_VER_COUNT}")
    need = ctypes.sizeof(icmsg_negotiate) + 4 * (nf + nm)
    if len(body) < need:
        raise ValueError(f"negotiate body of {len(body)} bytes lists {nf} + {nm} versions "
                         f"({need} bytes)")
    words = [version_word(*struct.unpack_from("<HH", body, 8 + 4 * i)) for i in range(nf + nm)]
    return words[:nf], words[nf:]


def prep_negotiate_resp(msg: bytes, fw_versions, srv_versions) -> tuple[bytes, bool, int, int]:
    """What Linux's ``vmbus_prep_negotiate_resp`` makes of a negotiate request ``msg`` (the
    whole packet): (response packet, found, framework, service). The response is the request
    with icmsgsize 0x10, counts 1/1 (0/0 without a match), the choice in icversion_data[0..1]
    and icflags TRANSACTION | RESPONSE, as ``hv_util.c`` sends it. Used by tests and the fake
    guest: the host side never answers negotiations."""
    buf = bytearray(msg)
    if len(buf) < ICMSG_HDR + 4:  # Linux: offsetof(struct icmsg_negotiate, reserved)
        raise ValueError("negotiate packet too short")
    struct.pack_into("<H", buf, 8 + icmsg_hdr.icmsgsize.offset, 0x10)
    nf, nm = struct.unpack_from("<HH", buf, ICMSG_HDR)
    fw_major, fw_minor, srv_major, srv_minor = nf, 0, nm, 0
    found = False
    if nf <= IC_VERSION_NEGOTIATION_MAX_VER_COUNT and nm <= IC_VERSION_NEGOTIATION_MAX_VER_COUNT \
            and ICMSG_NEGOTIATE_PKT_SIZE(nf, nm) <= len(buf):
        listed = [struct.unpack_from("<HH", buf, ICMSG_HDR + 8 + 4 * i) for i in range(nf + nm)]
        for want in fw_versions:
            if (want >> 16, want & 0xFFFF) in listed[:nf]:
                fw_major, fw_minor = want >> 16, want & 0xFFFF
                found = True
                break
        if found:
            found = False
            for want in srv_versions:
                if (want >> 16, want & 0xFFFF) in listed[nf:]:
                    srv_major, srv_minor = want >> 16, want & 0xFFFF
                    found = True
                    break
    struct.pack_into("<HH", buf, ICMSG_HDR, 1 if found else 0, 1 if found else 0)
    if len(buf) >= ICMSG_HDR + 16:
        struct.pack_into("<HHHH", buf, ICMSG_HDR + 8, fw_major, fw_minor, srv_major, srv_minor)
    buf[8 + icmsg_hdr.icflags.offset] = ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_RESPONSE
    return bytes(buf), found, version_word(fw_major, fw_minor), version_word(srv_major, srv_minor)
