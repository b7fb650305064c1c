"""The netvsc wire protocol (VMBus synthetic NIC: NVSP, RNDIS inside it), in Linux's spelling.

Every struct, member, enum and constant is named as Linux's ``drivers/net/hyperv/hyperv_net.h``
and ``include/linux/rndis.h`` name it, so the VSP can be read next to the driver that talks to it.
``csrc/netvsc_proto.h`` holds the same layouts for C (the C data plane ``csrc/hvr_net.c`` and the
guest-side VSC); ``tests/test_netvsc_conformance.py`` compares both with the BTF of Debian's
compiled ``hv_netvsc.ko``, member by member.

Layouts follow Linux 6.1: ``union nvsp_all_messages`` carries the v6 (PacketDirect) members, so
``struct nvsp_message`` is 40 bytes; ``_pack_ = 1`` exactly where Linux says ``__packed``.

How the pieces fit (what the VSP does with them):

* Every NVSP message is one in-band VMBus packet whose payload starts with ``nvsp_message``.
  RNDIS messages travel as ``NVSP_MSG1_TYPE_SEND_RNDIS_PKT``: guest to host either in a
  send-buffer section (``send_buf_section_index``) or as GPA-direct page ranges; host to guest as
  a ``VM_PKT_DATA_USING_XFER_PAGES`` packet whose ranges point into the receive buffer
  (``xfer_pageset_id`` = ``NETVSC_RECEIVE_BUFFER_ID``), answered by the guest with
  ``NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE`` (a completion packet with the same trans_id).
* An RNDIS message is ``rndis_message``: ``ndis_msg_type``, ``msg_len`` (the whole message), then
  the body. Offsets inside a body (``info_buf_offset``, ``data_offset``, ``per_pkt_info_offset``)
  count from the start of the body, i.e. ``RNDIS_HEADER_SIZE`` bytes into the message.

A few values Linux spells only as literals carry FreeBSD/Windows names here (``NDIS_VERSION_6_1``,
``NDIS_VERSION_6_30``, ``NVSP_DATA_CHANNEL_TYPE``, ``NVSP_CONTROL_CHANNEL_TYPE``,
``NVSP_PACKET_SIZE_V1``, ``RNDIS_HEADER_SIZE``).
"""

from __future__ import annotations

import ctypes
import enum
from ctypes import Structure, Union

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64

# ============================================================================================
# Constants (every one is also defined, alike, by csrc/netvsc_proto.h)
# ============================================================================================

NVSP_INVALID_PROTOCOL_VERSION = 0xFFFFFFFF
NVSP_PROTOCOL_VERSION_1 = 2
NVSP_PROTOCOL_VERSION_2 = 0x30002
NVSP_PROTOCOL_VERSION_4 = 0x40000
NVSP_PROTOCOL_VERSION_5 = 0x50000
NVSP_PROTOCOL_VERSION_6 = 0x60000
NVSP_PROTOCOL_VERSION_61 = 0x60001
NDIS_VERSION_6_1 = 0x00060001
NDIS_VERSION_6_30 = 0x0006001e
NVSP_DATA_CHANNEL_TYPE = 0
NVSP_CONTROL_CHANNEL_TYPE = 1
NVSP_PACKET_SIZE_V1 = 0x1c
NETVSC_MTU = 65535
NETVSC_RECEIVE_BUFFER_SIZE = (1024 * 1024 * 31)
NETVSC_RECEIVE_BUFFER_SIZE_LEGACY = (1024 * 1024 * 15)
NETVSC_RECEIVE_BUFFER_DEFAULT = (1024 * 1024 * 16)
NETVSC_SEND_BUFFER_SIZE = (1024 * 1024 * 15)
NETVSC_SEND_BUFFER_DEFAULT = (1024 * 1024)
NETVSC_INVALID_INDEX = -1
NETVSC_SEND_SECTION_SIZE = 6144
NETVSC_RECV_SECTION_SIZE = 1728
NETVSC_RECEIVE_BUFFER_ID = 0xcafe
NETVSC_SEND_BUFFER_ID = 0
NETVSC_PACKET_SIZE = 4096
VRSS_SEND_TAB_SIZE = 16
VRSS_CHANNEL_MAX = 64
VRSS_CHANNEL_DEFAULT = 8
RNDIS_MAX_PKT_DEFAULT = 8
RNDIS_PKT_ALIGN_DEFAULT = 8
NVSP_RSC_MAX = 562
RNDIS_MAJOR_VERSION = 0x00000001
RNDIS_MINOR_VERSION = 0x00000000
RNDIS_MSG_COMPLETION = 0x80000000
RNDIS_MSG_PACKET = 0x00000001
RNDIS_MSG_INIT = 0x00000002
RNDIS_MSG_INIT_C = (RNDIS_MSG_INIT | RNDIS_MSG_COMPLETION)
RNDIS_MSG_HALT = 0x00000003
RNDIS_MSG_QUERY = 0x00000004
RNDIS_MSG_QUERY_C = (RNDIS_MSG_QUERY | RNDIS_MSG_COMPLETION)
RNDIS_MSG_SET = 0x00000005
RNDIS_MSG_SET_C = (RNDIS_MSG_SET | RNDIS_MSG_COMPLETION)
RNDIS_MSG_RESET = 0x00000006
RNDIS_MSG_RESET_C = (RNDIS_MSG_RESET | RNDIS_MSG_COMPLETION)
RNDIS_MSG_INDICATE = 0x00000007
RNDIS_MSG_KEEPALIVE = 0x00000008
RNDIS_MSG_KEEPALIVE_C = (RNDIS_MSG_KEEPALIVE | RNDIS_MSG_COMPLETION)
REMOTE_NDIS_PACKET_MSG = 0x00000001
REMOTE_NDIS_INITIALIZE_MSG = 0x00000002
REMOTE_NDIS_HALT_MSG = 0x00000003
REMOTE_NDIS_QUERY_MSG = 0x00000004
REMOTE_NDIS_SET_MSG = 0x00000005
REMOTE_NDIS_RESET_MSG = 0x00000006
REMOTE_NDIS_INDICATE_STATUS_MSG = 0x00000007
REMOTE_NDIS_KEEPALIVE_MSG = 0x00000008
REMOTE_NDIS_INITIALIZE_CMPLT = 0x80000002
REMOTE_NDIS_QUERY_CMPLT = 0x80000004
REMOTE_NDIS_SET_CMPLT = 0x80000005
REMOTE_NDIS_RESET_CMPLT = 0x80000006
REMOTE_NDIS_KEEPALIVE_CMPLT = 0x80000008
RNDIS_DF_CONNECTIONLESS = 0x00000001
RNDIS_DF_CONNECTION_ORIENTED = 0x00000002
RNDIS_DF_RAW_DATA = 0x00000004
RNDIS_MEDIUM_802_3 = 0x00000000
RNDIS_MEDIA_STATE_CONNECTED = 0x00000000
RNDIS_MEDIA_STATE_DISCONNECTED = 0x00000001
NDIS_MEDIA_STATE_CONNECTED = 0x00000000
NDIS_MEDIA_STATE_DISCONNECTED = 0x00000001
RNDIS_STATUS_SUCCESS = 0x00000000
RNDIS_STATUS_PENDING = 0x00000103
RNDIS_STATUS_FAILURE = 0xc0000001
RNDIS_STATUS_RESOURCES = 0xC000009A
RNDIS_STATUS_NOT_SUPPORTED = 0xc00000bb
RNDIS_STATUS_INVALID_DATA = 0xc0010015
RNDIS_STATUS_INVALID_LENGTH = 0xC0010014
RNDIS_STATUS_BUFFER_TOO_SHORT = 0xC0010016
RNDIS_STATUS_INVALID_OID = 0xC0010017
RNDIS_STATUS_INVALID_PACKET = 0xC001000F
RNDIS_STATUS_BAD_VERSION = 0xC0010004
RNDIS_STATUS_ADAPTER_NOT_READY = 0xC0010011
RNDIS_STATUS_BUFFER_OVERFLOW = 0x80000005
RNDIS_STATUS_MEDIA_CONNECT = 0x4001000b
RNDIS_STATUS_MEDIA_DISCONNECT = 0x4001000c
RNDIS_STATUS_MEDIA_SPECIFIC_INDICATION = 0x40010012
RNDIS_STATUS_LINK_SPEED_CHANGE = 0x40010013
RNDIS_STATUS_NETWORK_CHANGE = 0x40010018
RNDIS_OID_GEN_SUPPORTED_LIST = 0x00010101
RNDIS_OID_GEN_HARDWARE_STATUS = 0x00010102
RNDIS_OID_GEN_MEDIA_SUPPORTED = 0x00010103
RNDIS_OID_GEN_MEDIA_IN_USE = 0x00010104
RNDIS_OID_GEN_MAXIMUM_LOOKAHEAD = 0x00010105
RNDIS_OID_GEN_MAXIMUM_FRAME_SIZE = 0x00010106
RNDIS_OID_GEN_LINK_SPEED = 0x00010107
RNDIS_OID_GEN_TRANSMIT_BUFFER_SPACE = 0x00010108
RNDIS_OID_GEN_RECEIVE_BUFFER_SPACE = 0x00010109
RNDIS_OID_GEN_TRANSMIT_BLOCK_SIZE = 0x0001010A
RNDIS_OID_GEN_RECEIVE_BLOCK_SIZE = 0x0001010B
RNDIS_OID_GEN_VENDOR_ID = 0x0001010C
RNDIS_OID_GEN_VENDOR_DESCRIPTION = 0x0001010D
RNDIS_OID_GEN_CURRENT_PACKET_FILTER = 0x0001010E
RNDIS_OID_GEN_CURRENT_LOOKAHEAD = 0x0001010F
RNDIS_OID_GEN_DRIVER_VERSION = 0x00010110
RNDIS_OID_GEN_MAXIMUM_TOTAL_SIZE = 0x00010111
RNDIS_OID_GEN_PROTOCOL_OPTIONS = 0x00010112
RNDIS_OID_GEN_MAC_OPTIONS = 0x00010113
RNDIS_OID_GEN_MEDIA_CONNECT_STATUS = 0x00010114
RNDIS_OID_GEN_MAXIMUM_SEND_PACKETS = 0x00010115
RNDIS_OID_GEN_VENDOR_DRIVER_VERSION = 0x00010116
RNDIS_OID_GEN_NETWORK_LAYER_ADDRESSES = 0x00010118
RNDIS_OID_GEN_TRANSPORT_HEADER_OFFSET = 0x00010119
RNDIS_OID_GEN_RNDIS_CONFIG_PARAMETER = 0x0001021B
RNDIS_OID_GEN_XMIT_OK = 0x00020101
RNDIS_OID_GEN_RCV_OK = 0x00020102
RNDIS_OID_GEN_XMIT_ERROR = 0x00020103
RNDIS_OID_GEN_RCV_ERROR = 0x00020104
RNDIS_OID_GEN_RCV_NO_BUFFER = 0x00020105
RNDIS_OID_802_3_PERMANENT_ADDRESS = 0x01010101
RNDIS_OID_802_3_CURRENT_ADDRESS = 0x01010102
RNDIS_OID_802_3_MULTICAST_LIST = 0x01010103
RNDIS_OID_802_3_MAXIMUM_LIST_SIZE = 0x01010104
RNDIS_OID_802_3_MAC_OPTIONS = 0x01010105
OID_GEN_RECEIVE_SCALE_CAPABILITIES = 0x00010203
OID_GEN_RECEIVE_SCALE_PARAMETERS = 0x00010204
OID_TCP_OFFLOAD_CURRENT_CONFIG = 0xFC01020B
OID_TCP_OFFLOAD_PARAMETERS = 0xFC01020C
OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES = 0xFC01020D
OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG = 0xFC01020E
OID_TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES = 0xFC01020F
OID_OFFLOAD_ENCAPSULATION = 0x0101010A
NDIS_PACKET_TYPE_DIRECTED = 0x00000001
NDIS_PACKET_TYPE_MULTICAST = 0x00000002
NDIS_PACKET_TYPE_ALL_MULTICAST = 0x00000004
NDIS_PACKET_TYPE_BROADCAST = 0x00000008
NDIS_PACKET_TYPE_SOURCE_ROUTING = 0x00000010
NDIS_PACKET_TYPE_PROMISCUOUS = 0x00000020
NDIS_PACKET_TYPE_SMT = 0x00000040
NDIS_PACKET_TYPE_ALL_LOCAL = 0x00000080
NDIS_PACKET_TYPE_GROUP = 0x00000100
NDIS_PACKET_TYPE_ALL_FUNCTIONAL = 0x00000200
NDIS_PACKET_TYPE_FUNCTIONAL = 0x00000400
NDIS_PACKET_TYPE_MAC_FRAME = 0x00000800
NDIS_OBJECT_TYPE_DEFAULT = 0x80
NDIS_OBJECT_TYPE_RSS_CAPABILITIES = 0x88
NDIS_OBJECT_TYPE_RSS_PARAMETERS = 0x89
NDIS_OBJECT_TYPE_OFFLOAD = 0xa7
NDIS_OFFLOAD_PARAMETERS_REVISION_3 = 3
NDIS_OFFLOAD_PARAMETERS_REVISION_2 = 2
NDIS_OFFLOAD_PARAMETERS_REVISION_1 = 1
NDIS_OFFLOAD_PARAMETERS_NO_CHANGE = 0
NDIS_OFFLOAD_PARAMETERS_LSOV2_DISABLED = 1
NDIS_OFFLOAD_PARAMETERS_LSOV2_ENABLED = 2
NDIS_OFFLOAD_PARAMETERS_LSOV1_ENABLED = 2
NDIS_OFFLOAD_PARAMETERS_RSC_DISABLED = 1
NDIS_OFFLOAD_PARAMETERS_RSC_ENABLED = 2
NDIS_OFFLOAD_PARAMETERS_TX_RX_DISABLED = 1
NDIS_OFFLOAD_PARAMETERS_TX_ENABLED_RX_DISABLED = 2
NDIS_OFFLOAD_PARAMETERS_RX_ENABLED_TX_DISABLED = 3
NDIS_OFFLOAD_PARAMETERS_TX_RX_ENABLED = 4
NDIS_OFFLOAD_ENCAP_NONE = 0x0000
NDIS_OFFLOAD_ENCAP_NULL = 0x0001
NDIS_OFFLOAD_ENCAP_8023 = 0x0002
NDIS_RECEIVE_SCALE_CAPABILITIES_REVISION_2 = 2
VERSION_4_OFFLOAD_SIZE = 22
NDIS_RECEIVE_SCALE_PARAMETERS_REVISION_2 = 2
RNDIS_PKTINFO_SUBALLOC = (1 << 0)
RNDIS_PKTINFO_1ST_FRAG = (1 << 1)
RNDIS_PKTINFO_LAST_FRAG = (1 << 2)
RNDIS_PKTINFO_ID_V1 = 1
RNDIS_CONFIG_PARAM_TYPE_INTEGER = 0
RNDIS_CONFIG_PARAM_TYPE_STRING = 2
RNDIS_HEADER_SIZE = 8



# ============================================================================================
# Enums (Linux's enumerators; the anonymous NVSP enums are plain constants below)
# ============================================================================================

NVSP_MSG_TYPE_NONE = 0
NVSP_MSG_TYPE_INIT = 1
NVSP_MSG_TYPE_INIT_COMPLETE = 2
NVSP_VERSION_MSG_START = 100
NVSP_MSG1_TYPE_SEND_NDIS_VER = 100
NVSP_MSG1_TYPE_SEND_RECV_BUF = 101
NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE = 102
NVSP_MSG1_TYPE_REVOKE_RECV_BUF = 103
NVSP_MSG1_TYPE_SEND_SEND_BUF = 104
NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE = 105
NVSP_MSG1_TYPE_REVOKE_SEND_BUF = 106
NVSP_MSG1_TYPE_SEND_RNDIS_PKT = 107
NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE = 108
NVSP_MSG2_TYPE_SEND_CHIMNEY_DELEGATED_BUF = 109
NVSP_MSG2_TYPE_SEND_CHIMNEY_DELEGATED_BUF_COMP = 110
NVSP_MSG2_TYPE_REVOKE_CHIMNEY_DELEGATED_BUF = 111
NVSP_MSG2_TYPE_RESUME_CHIMNEY_RX_INDICATION = 112
NVSP_MSG2_TYPE_TERMINATE_CHIMNEY = 113
NVSP_MSG2_TYPE_TERMINATE_CHIMNEY_COMP = 114
NVSP_MSG2_TYPE_INDICATE_CHIMNEY_EVENT = 115
NVSP_MSG2_TYPE_SEND_CHIMNEY_PKT = 116
NVSP_MSG2_TYPE_SEND_CHIMNEY_PKT_COMP = 117
NVSP_MSG2_TYPE_POST_CHIMNEY_RECV_REQ = 118
NVSP_MSG2_TYPE_POST_CHIMNEY_RECV_REQ_COMP = 119
NVSP_MSG2_TYPE_ALLOC_RXBUF = 120
NVSP_MSG2_TYPE_ALLOC_RXBUF_COMP = 121
NVSP_MSG2_TYPE_FREE_RXBUF = 122
NVSP_MSG2_TYPE_SEND_VMQ_RNDIS_PKT = 123
NVSP_MSG2_TYPE_SEND_VMQ_RNDIS_PKT_COMP = 124
NVSP_MSG2_TYPE_SEND_NDIS_CONFIG = 125
NVSP_MSG2_TYPE_ALLOC_CHIMNEY_HANDLE = 126
NVSP_MSG2_TYPE_ALLOC_CHIMNEY_HANDLE_COMP = 127
NVSP_MSG2_MAX = 127
NVSP_MSG4_TYPE_SEND_VF_ASSOCIATION = 128
NVSP_MSG4_TYPE_SWITCH_DATA_PATH = 129
NVSP_MSG4_TYPE_UPLINK_CONNECT_STATE_DEPRECATED = 130
NVSP_MSG4_MAX = 130
NVSP_MSG5_TYPE_OID_QUERY_EX = 131
NVSP_MSG5_TYPE_OID_QUERY_EX_COMP = 132
NVSP_MSG5_TYPE_SUBCHANNEL = 133
NVSP_MSG5_TYPE_SEND_INDIRECTION_TABLE = 134
NVSP_MSG5_MAX = 134
NVSP_MSG6_TYPE_PD_API = 135
NVSP_MSG6_TYPE_PD_POST_BATCH = 136
NVSP_MSG6_MAX = 136

NVSP_STAT_NONE = 0
NVSP_STAT_SUCCESS = 1
NVSP_STAT_FAIL = 2
NVSP_STAT_PROTOCOL_TOO_NEW = 3
NVSP_STAT_PROTOCOL_TOO_OLD = 4
NVSP_STAT_INVALID_RNDIS_PKT = 5
NVSP_STAT_BUSY = 6
NVSP_STAT_PROTOCOL_UNSUPPORTED = 7
NVSP_STAT_MAX = 8


class nvsp_vm_datapath(enum.IntEnum):
    NVSP_DATAPATH_SYNTHETIC = 0
    NVSP_DATAPATH_VF = 1
    NVSP_DATAPATH_MAX = 2


class nvsp_subchannel_operation(enum.IntEnum):
    NVSP_SUBCHANNEL_NONE = 0
    NVSP_SUBCHANNEL_ALLOCATE = 1
    NVSP_SUBCHANNEL_MAX = 2


class nvsp_6_pd_api_op(enum.IntEnum):
    PD_API_OP_CONFIG = 1
    PD_API_OP_SW_DATAPATH = 2
    PD_API_OP_OPEN_PROVIDER = 3
    PD_API_OP_CLOSE_PROVIDER = 4
    PD_API_OP_CREATE_QUEUE = 5
    PD_API_OP_FLUSH_QUEUE = 6
    PD_API_OP_FREE_QUEUE = 7
    PD_API_OP_ALLOC_COM_BUF = 8
    PD_API_OP_FREE_COM_BUF = 9
    PD_API_OP_MAX = 10


class ndis_per_pkt_info_type(enum.IntEnum):
    """rndis_per_packet_info.type (NBL_HASH_VALUE = PACKET_CANCEL_ID is an alias in Linux)."""

    TCPIP_CHKSUM_PKTINFO = 0
    IPSEC_PKTINFO = 1
    TCP_LARGESEND_PKTINFO = 2
    CLASSIFICATION_HANDLE_PKTINFO = 3
    NDIS_RESERVED = 4
    SG_LIST_PKTINFO = 5
    IEEE_8021Q_INFO = 6
    ORIGINAL_PKTINFO = 7
    PACKET_CANCEL_ID = 8
    NBL_HASH_VALUE = 8
    ORIGINAL_NET_BUFLIST = 9
    CACHED_NET_BUFLIST = 10
    SHORT_PKT_PADINFO = 11
    MAX_PER_PKT_INFO = 12


class rndis_per_pkt_info_interal_type(enum.IntEnum):
    """rndis_per_packet_info.type when .internal is set (Linux's spelling, typo included)."""

    RNDIS_PKTINFO_ID = 1
    RNDIS_PKTINFO_MAX = 2


WIRE_ENUMS = [nvsp_vm_datapath, nvsp_subchannel_operation, nvsp_6_pd_api_op,
              ndis_per_pkt_info_type, rndis_per_pkt_info_interal_type]
for _e in WIRE_ENUMS:
    globals().update({n: int(v) for n, v in _e.__members__.items()})
NBL_HASH_VALUE = 8


# ============================================================================================
# NVSP messages
# ============================================================================================

class nvsp_message_header(Structure):
    _fields_ = [("msg_type", u32)]


class nvsp_message_init(Structure):
    """VSC -> VSP: the range of NVSP versions it speaks (Linux sends min == max, one per try)."""

    _pack_ = 1
    _fields_ = [("min_protocol_ver", u32), ("max_protocol_ver", u32)]


class nvsp_message_init_complete(Structure):
    _pack_ = 1
    _fields_ = [("negotiated_protocol_ver", u32), ("max_mdl_chain_len", u32), ("status", u32)]


class nvsp_message_init_uber(Union):
    _pack_ = 1
    _fields_ = [("init", nvsp_message_init), ("init_complete", nvsp_message_init_complete)]


class nvsp_1_message_send_ndis_version(Structure):
    _pack_ = 1
    _fields_ = [("ndis_major_ver", u32), ("ndis_minor_ver", u32)]


class nvsp_1_message_send_receive_buffer(Structure):
    _pack_ = 1
    _fields_ = [("gpadl_handle", u32), ("id", u16)]


class nvsp_1_receive_buffer_section(Structure):
    _pack_ = 1
    _fields_ = [("offset", u32), ("sub_alloc_size", u32), ("num_sub_allocs", u32),
                ("end_offset", u32)]


class nvsp_1_message_send_receive_buffer_complete(Structure):
    _pack_ = 1
    _fields_ = [("status", u32), ("num_sections", u32),
                ("sections", nvsp_1_receive_buffer_section * 1)]


class nvsp_1_message_revoke_receive_buffer(Structure):
    _fields_ = [("id", u16)]


class nvsp_1_message_send_send_buffer(Structure):
    _pack_ = 1
    _fields_ = [("gpadl_handle", u32), ("id", u16)]


class nvsp_1_message_send_send_buffer_complete(Structure):
    _pack_ = 1
    _fields_ = [("status", u32), ("section_size", u32)]


class nvsp_1_message_revoke_send_buffer(Structure):
    _fields_ = [("id", u16)]


class nvsp_1_message_send_rndis_packet(Structure):
    """channel_type: 0 data, 1 control; send_buf_section_index 0xFFFFFFFF: not in the send
    buffer (the RNDIS message is in the packet's GPA ranges)."""

    _pack_ = 1
    _fields_ = [("channel_type", u32), ("send_buf_section_index", u32),
                ("send_buf_section_size", u32)]


class nvsp_1_message_send_rndis_packet_complete(Structure):
    _fields_ = [("status", u32)]


class nvsp_1_message_uber(Union):
    _pack_ = 1
    _fields_ = [
        ("send_ndis_ver", nvsp_1_message_send_ndis_version),
        ("send_recv_buf", nvsp_1_message_send_receive_buffer),
        ("send_recv_buf_complete", nvsp_1_message_send_receive_buffer_complete),
        ("revoke_recv_buf", nvsp_1_message_revoke_receive_buffer),
        ("send_send_buf", nvsp_1_message_send_send_buffer),
        ("send_send_buf_complete", nvsp_1_message_send_send_buffer_complete),
        ("revoke_send_buf", nvsp_1_message_revoke_send_buffer),
        ("send_rndis_pkt", nvsp_1_message_send_rndis_packet),
        ("send_rndis_pkt_complete", nvsp_1_message_send_rndis_packet_complete),
    ]


class nvsp_2_vsc_capability(Structure):
    class _u(Union):
        class _s(Structure):
            _fields_ = [("vmq", u64, 1), ("chimney", u64, 1), ("sriov", u64, 1),
                        ("ieee8021q", u64, 1), ("correlation_id", u64, 1), ("teaming", u64, 1),
                        ("vsubnetid", u64, 1), ("rsc", u64, 1)]

        _anonymous_ = ("_s",)
        _fields_ = [("data", u64), ("_s", _s)]

    _pack_ = 1
    _anonymous_ = ("_u",)
    _fields_ = [("_u", _u)]


class nvsp_2_send_ndis_config(Structure):
    _pack_ = 1
    _fields_ = [("mtu", u32), ("reserved", u32), ("capability", nvsp_2_vsc_capability)]


class nvsp_2_alloc_rxbuf(Structure):
    _pack_ = 1
    _fields_ = [("alloc_id", u32), ("len", u32)]


class nvsp_2_alloc_rxbuf_comp(Structure):
    _pack_ = 1
    _fields_ = [("status", u32), ("alloc_id", u32), ("gpadl_handle", u32), ("recv_buf_id", u64)]


class nvsp_2_free_rxbuf(Structure):
    _pack_ = 1
    _fields_ = [("recv_buf_id", u64)]


class nvsp_2_message_uber(Union):
    _pack_ = 1
    _fields_ = [("send_ndis_config", nvsp_2_send_ndis_config), ("alloc_rxbuf", nvsp_2_alloc_rxbuf),
                ("alloc_rxbuf_comp", nvsp_2_alloc_rxbuf_comp), ("free_rxbuf", nvsp_2_free_rxbuf)]


class nvsp_4_send_vf_association(Structure):
    _pack_ = 1
    _fields_ = [("allocated", u32), ("serial", u32)]


class nvsp_4_sw_datapath(Structure):
    _pack_ = 1
    _fields_ = [("active_datapath", u32)]


class nvsp_4_message_uber(Union):
    _pack_ = 1
    _fields_ = [("vf_assoc", nvsp_4_send_vf_association), ("active_dp", nvsp_4_sw_datapath)]


class nvsp_5_subchannel_request(Structure):
    _pack_ = 1
    _fields_ = [("op", u32), ("num_subchannels", u32)]


class nvsp_5_subchannel_complete(Structure):
    _pack_ = 1
    _fields_ = [("status", u32), ("num_subchannels", u32)]


class nvsp_5_send_indirect_table(Structure):
    _pack_ = 1
    _fields_ = [("count", u32), ("offset", u32)]


class nvsp_5_message_uber(Union):
    _pack_ = 1
    _fields_ = [("subchn_req", nvsp_5_subchannel_request),
                ("subchn_comp", nvsp_5_subchannel_complete),
                ("send_table", nvsp_5_send_indirect_table)]


class grp_affinity(Structure):
    _pack_ = 1
    _fields_ = [("mask", u64), ("grp", u16), ("reserved", u16 * 3)]


def _packed(name: str, fields) -> type:
    """An anonymous ``struct __packed { ... }`` member type of Linux's PD API unions."""
    return type(name, (Structure,), {"_pack_": 1, "_fields_": fields})


class nvsp_6_pd_api_req(Structure):
    class _u(Union):
        _pack_ = 1
        _fields_ = [
            ("config", _packed("_config", [("mmio_pa", u64), ("mmio_len", u32),
                                           ("num_subchn", u16)])),
            ("sw_dpath", _packed("_sw_dpath", [("host_dpath_is_pd", u8),
                                               ("guest_pd_enabled", u8)])),
            ("open_prov", _packed("_open_prov", [("prov_id", u32), ("flag", u32)])),
            ("cls_prov", _packed("_cls_prov", [("prov_id", u32)])),
            ("cr_q", _packed("_cr_q", [("prov_id", u32), ("q_id", u16), ("q_size", u16),
                                       ("is_recv_q", u8), ("is_rss_q", u8),
                                       ("recv_data_len", u32), ("affy", grp_affinity)])),
            ("del_q", _packed("_del_q", [("prov_id", u32), ("q_id", u16)])),
            ("flush_q", _packed("_flush_q", [("prov_id", u32), ("q_id", u16)])),
            ("alloc_com_buf", _packed("_alloc_com_buf", [("len", u32), ("pf_node", u32),
                                                         ("region_id", u16)])),
            ("free_com_buf", _packed("_free_com_buf", [("len", u32), ("pa", u64),
                                                       ("pf_node", u32), ("region_id", u16),
                                                       ("cache_type", u8)])),
        ]

    _pack_ = 1
    _anonymous_ = ("_u",)
    _fields_ = [("op", u32), ("_u", _u)]


class nvsp_6_pd_api_comp(Structure):
    class _u(Union):
        _pack_ = 1
        _fields_ = [
            ("config", _packed("_config", [("num_pd_q", u16), ("num_rss_q", u8),
                                           ("is_supported", u8), ("is_enabled", u8)])),
            ("open_prov", _packed("_open_prov", [("prov_id", u32)])),
            ("cr_q", _packed("_cr_q", [("prov_id", u32), ("q_id", u16), ("q_size", u16),
                                       ("recv_data_len", u32), ("affy", grp_affinity)])),
            ("alloc_com_buf", _packed("_alloc_com_buf", [("pa", u64), ("len", u32),
                                                         ("pf_node", u32), ("region_id", u16),
                                                         ("cache_type", u8)])),
        ]

    _pack_ = 1
    _anonymous_ = ("_u",)
    _fields_ = [("op", u32), ("status", u32), ("_u", _u)]


class nvsp_6_message_uber(Union):
    _pack_ = 1
    _fields_ = [("pd_req", nvsp_6_pd_api_req), ("pd_comp", nvsp_6_pd_api_comp)]


class nvsp_all_messages(Union):
    _pack_ = 1
    _fields_ = [("init_msg", nvsp_message_init_uber), ("v1_msg", nvsp_1_message_uber),
                ("v2_msg", nvsp_2_message_uber), ("v4_msg", nvsp_4_message_uber),
                ("v5_msg", nvsp_5_message_uber), ("v6_msg", nvsp_6_message_uber)]


class nvsp_message(Structure):
    """Every NVSP message: a 4-byte type, then the body of that type."""

    _pack_ = 1
    _fields_ = [("hdr", nvsp_message_header), ("msg", nvsp_all_messages)]


# ============================================================================================
# RNDIS messages
# ============================================================================================

def _plain(name: str, names: str, doc: str = "") -> type:
    """A struct of u32 members (most RNDIS bodies)."""
    return type(name, (Structure,), {"_fields_": [(n, u32) for n in names.split()],
                                     "__doc__": doc or f"Linux's struct {name}."})


rndis_initialize_request = _plain("rndis_initialize_request",
                                  "req_id major_ver minor_ver max_xfer_size")
rndis_initialize_complete = _plain(
    "rndis_initialize_complete",
    "req_id status major_ver minor_ver dev_flags medium max_pkt_per_msg max_xfer_size "
    "pkt_alignment_factor af_list_offset af_list_size",
    "Answer to INITIALIZE; pkt_alignment_factor is log2 of the alignment.")
rndis_halt_request = _plain("rndis_halt_request", "req_id")
rndis_query_request = _plain("rndis_query_request",
                             "req_id oid info_buflen info_buf_offset dev_vc_handle")
rndis_query_complete = _plain("rndis_query_complete", "req_id status info_buflen info_buf_offset")


class rndis_set_request(Structure):
    _fields_ = [("req_id", u32), ("oid", u32), ("info_buflen", u32), ("info_buf_offset", u32),
                ("dev_vc_handle", u32), ("info_buf", u8 * 0)]


rndis_set_complete = _plain("rndis_set_complete", "req_id status")
rndis_reset_request = _plain("rndis_reset_request", "reserved")
rndis_reset_complete = _plain("rndis_reset_complete", "status addressing_reset")
rndis_indicate_status = _plain("rndis_indicate_status", "status status_buflen status_buf_offset")
rndis_keepalive_request = _plain("rndis_keepalive_request", "req_id")
rndis_keepalive_complete = _plain("rndis_keepalive_complete", "req_id status")
rndis_packet = _plain(
    "rndis_packet",
    "data_offset data_len oob_data_offset oob_data_len num_oob_data_elements "
    "per_pkt_info_offset per_pkt_info_len vc_handle reserved",
    "A data message; offsets count from the start of this struct.")
rndis_oobd = _plain("rndis_oobd", "size type class_info_offset")


class rndis_per_packet_info(Structure):
    """A PPI: ``size`` bytes in all, the payload at ``ppi_offset`` from this struct's start."""

    _fields_ = [("size", u32), ("type", u32, 31), ("internal", u32, 1), ("ppi_offset", u32)]


class rndis_pktinfo_id(Structure):
    _fields_ = [("ver", u8), ("flag", u8), ("pkt_id", u16)]


rcondis_mp_create_vc = _plain("rcondis_mp_create_vc", "req_id ndis_vc_handle")
rcondis_mp_create_vc_complete = _plain("rcondis_mp_create_vc_complete",
                                       "req_id dev_vc_handle status")
rcondis_mp_delete_vc = _plain("rcondis_mp_delete_vc", "req_id dev_vc_handle")
rcondis_mp_delete_vc_complete = _plain("rcondis_mp_delete_vc_complete", "req_id status")
rcondis_indicate_status = _plain("rcondis_indicate_status",
                                 "ndis_vc_handle status status_buflen status_buf_offset")
rcondis_mp_activate_vc_request = _plain(
    "rcondis_mp_activate_vc_request",
    "req_id flags dev_vc_handle media_params_offset media_params_length call_mgr_params_offset "
    "call_mgr_params_length")
rcondis_mp_activate_vc_complete = _plain("rcondis_mp_activate_vc_complete", "req_id status")
rcondis_mp_deactivate_vc_request = _plain("rcondis_mp_deactivate_vc_request",
                                          "req_id flags dev_vc_handle")
rcondis_mp_deactivate_vc_complete = _plain("rcondis_mp_deactivate_vc_complete", "req_id status")


class rndis_message_container(Union):
    _fields_ = [
        ("pkt", rndis_packet),
        ("init_req", rndis_initialize_request),
        ("halt_req", rndis_halt_request),
        ("query_req", rndis_query_request),
        ("set_req", rndis_set_request),
        ("reset_req", rndis_reset_request),
        ("keep_alive_req", rndis_keepalive_request),
        ("indicate_status", rndis_indicate_status),
        ("init_complete", rndis_initialize_complete),
        ("query_complete", rndis_query_complete),
        ("set_complete", rndis_set_complete),
        ("reset_complete", rndis_reset_complete),
        ("keep_alive_complete", rndis_keepalive_complete),
        ("co_miniport_create_vc", rcondis_mp_create_vc),
        ("co_miniport_delete_vc", rcondis_mp_delete_vc),
        ("co_indicate_status", rcondis_indicate_status),
        ("co_miniport_activate_vc", rcondis_mp_activate_vc_request),
        ("co_miniport_deactivate_vc", rcondis_mp_deactivate_vc_request),
        ("co_miniport_create_vc_complete", rcondis_mp_create_vc_complete),
        ("co_miniport_delete_vc_complete", rcondis_mp_delete_vc_complete),
        ("co_miniport_activate_vc_complete", rcondis_mp_activate_vc_complete),
        ("co_miniport_deactivate_vc_complete", rcondis_mp_deactivate_vc_complete),
    ]


class rndis_message(Structure):
    """An RNDIS message: type, total length (from ndis_msg_type on), body."""

    _fields_ = [("ndis_msg_type", u32), ("msg_len", u32), ("msg", rndis_message_container)]


def RNDIS_MESSAGE_SIZE(body: type) -> int:
    """Linux's RNDIS_MESSAGE_SIZE(msg): header + one body type."""
    return ctypes.sizeof(body) + RNDIS_HEADER_SIZE


# ============================================================================================
# Per-packet info payloads and NDIS objects
# ============================================================================================

class ndis_pkt_8021q_info(Structure):
    class _u(Union):
        class _s(Structure):
            _fields_ = [("pri", u32, 3), ("cfi", u32, 1), ("vlanid", u32, 12),
                        ("reserved", u32, 16)]

        _anonymous_ = ("_s",)
        _fields_ = [("_s", _s), ("value", u32)]

    _anonymous_ = ("_u",)
    _fields_ = [("_u", _u)]


def _bits(name: str, spec: str) -> type:
    fields = []
    for item in spec.split():
        n, w = item.split(":")
        fields.append((n, u32, int(w)))
    return type(name, (Structure,), {"_fields_": fields})


class ndis_tcp_ip_checksum_info(Structure):
    class _u(Union):
        _fields_ = [
            ("transmit", _bits("_transmit",
                               "is_ipv4:1 is_ipv6:1 tcp_checksum:1 udp_checksum:1 "
                               "ip_header_checksum:1 reserved:11 tcp_header_offset:10")),
            ("receive", _bits("_receive", "tcp_checksum_failed:1 udp_checksum_failed:1 "
                                          "ip_checksum_failed:1 tcp_checksum_succeeded:1 "
                                          "udp_checksum_succeeded:1 ip_checksum_succeeded:1 "
                                          "loopback:1 tcp_checksum_value_invalid:1 "
                                          "ip_checksum_value_invalid:1")),
            ("value", u32),
        ]

    _anonymous_ = ("_u",)
    _fields_ = [("_u", _u)]


class ndis_tcp_lso_info(Structure):
    class _u(Union):
        _fields_ = [
            ("transmit", _bits("_transmit", "unused:30 type:1 reserved2:1")),
            ("lso_v1_transmit", _bits("_lso_v1_transmit",
                                      "mss:20 tcp_header_offset:10 type:1 reserved2:1")),
            ("lso_v1_transmit_complete", _bits("_lso_v1_transmit_complete",
                                               "tcp_payload:30 type:1 reserved2:1")),
            ("lso_v2_transmit", _bits("_lso_v2_transmit",
                                      "mss:20 tcp_header_offset:10 type:1 ip_version:1")),
            ("lso_v2_transmit_complete", _bits("_lso_v2_transmit_complete",
                                               "reserved:30 type:1 reserved2:1")),
            ("value", u32),
        ]

    _anonymous_ = ("_u",)
    _fields_ = [("_u", _u)]


class ndis_obj_header(Structure):
    _pack_ = 1
    _fields_ = [("type", u8), ("rev", u8), ("size", u16)]


class ndis_recv_scale_cap(Structure):
    _pack_ = 1
    _fields_ = [("hdr", ndis_obj_header), ("cap_flag", u32), ("num_int_msg", u32),
                ("num_recv_que", u32), ("num_indirect_tabent", u16)]


class ndis_recv_scale_param(Structure):
    _fields_ = [("hdr", ndis_obj_header), ("flag", u16), ("base_cpu_number", u16),
                ("hashinfo", u32), ("indirect_tabsize", u16), ("indirect_taboffset", u32),
                ("hashkey_size", u16), ("hashkey_offset", u32), ("processor_masks_offset", u32),
                ("num_processor_masks", u32), ("processor_masks_entry_size", u32)]


class ndis_object_header(Structure):
    _fields_ = [("type", u8), ("revision", u8), ("size", u16)]


ndis_csum_offload = _plain("ndis_csum_offload", "ip4_txenc ip4_txcsum ip4_rxenc ip4_rxcsum "
                                                "ip6_txenc ip6_txcsum ip6_rxenc ip6_rxcsum")
ndis_lsov1_offload = _plain("ndis_lsov1_offload", "encap maxsize minsegs opts")
ndis_ipsecv1_offload = _plain("ndis_ipsecv1_offload",
                              "encap ah_esp xport_tun ip4_opts flags ip4_ah ip4_esp")
ndis_lsov2_offload = _plain("ndis_lsov2_offload",
                            "ip4_encap ip4_maxsz ip4_minsg ip6_encap ip6_maxsz ip6_minsg ip6_opts")


class ndis_ipsecv2_offload(Structure):
    _fields_ = ([("encap", u32)]
                + [(n, u8) for n in "ip6 ip4opt ip6ext ah esp ah_esp xport tun xport_tun lso "
                                    "extseq".split()]
                + [(n, u32) for n in "udp_esp auth crypto sa_caps".split()])


class ndis_rsc_offload(Structure):
    _fields_ = [("ip4", u8), ("ip6", u8)]


ndis_encap_offload = _plain("ndis_encap_offload", "flags maxhdr")


class ndis_offload(Structure):
    """OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES: all zero past the header = nothing offloaded."""

    _fields_ = [("header", ndis_object_header), ("csum", ndis_csum_offload),
                ("lsov1", ndis_lsov1_offload), ("ipsecv1", ndis_ipsecv1_offload),
                ("lsov2", ndis_lsov2_offload), ("flags", u32), ("ipsecv2", ndis_ipsecv2_offload),
                ("rsc", ndis_rsc_offload), ("encap_gre", ndis_encap_offload)]


NDIS_OFFLOAD_SIZE = ctypes.sizeof(ndis_offload)
NDIS_OFFLOAD_SIZE_6_0 = ndis_offload.ipsecv2.offset
NDIS_OFFLOAD_SIZE_6_1 = ndis_offload.rsc.offset


class ndis_offload_params(Structure):
    """OID_TCP_OFFLOAD_PARAMETERS (set by the VSC)."""

    class _rsc(Structure):
        _fields_ = [("rsc_ip_v4", u8), ("rsc_ip_v6", u8)]

    class _encap(Structure):
        _fields_ = [("encapsulated_packet_task_offload", u8), ("encapsulation_types", u8)]

    _anonymous_ = ("_rsc", "_encap")
    _fields_ = ([("header", ndis_object_header)]
                + [(n, u8) for n in "ip_v4_csum tcp_ip_v4_csum udp_ip_v4_csum tcp_ip_v6_csum "
                                    "udp_ip_v6_csum lso_v1 ip_sec_v1 lso_v2_ipv4 lso_v2_ipv6 "
                                    "tcp_connection_ip_v4 tcp_connection_ip_v6".split()]
                + [("flags", u32), ("ip_sec_v2", u8), ("ip_sec_v2_ip_v4", u8),
                   ("_rsc", _rsc), ("_encap", _encap)])


rndis_config_parameter_info = _plain(
    "rndis_config_parameter_info",
    "parameter_name_offset parameter_name_length parameter_type parameter_value_offset "
    "parameter_value_length")


#: Every public wire layout (the conformance test walks these; Linux's BTF has each of them).
NETVSC_WIRE_STRUCTS = [
    nvsp_message_header, nvsp_message_init, nvsp_message_init_complete, nvsp_message_init_uber,
    nvsp_1_message_send_ndis_version, nvsp_1_message_send_receive_buffer,
    nvsp_1_receive_buffer_section, nvsp_1_message_send_receive_buffer_complete,
    nvsp_1_message_revoke_receive_buffer, nvsp_1_message_send_send_buffer,
    nvsp_1_message_send_send_buffer_complete, nvsp_1_message_revoke_send_buffer,
    nvsp_1_message_send_rndis_packet, nvsp_1_message_send_rndis_packet_complete,
    nvsp_1_message_uber, nvsp_2_vsc_capability, nvsp_2_send_ndis_config, nvsp_2_alloc_rxbuf,
    nvsp_2_alloc_rxbuf_comp, nvsp_2_free_rxbuf, nvsp_2_message_uber, nvsp_4_send_vf_association,
    nvsp_4_sw_datapath, nvsp_4_message_uber, nvsp_5_subchannel_request,
    nvsp_5_subchannel_complete, nvsp_5_send_indirect_table, nvsp_5_message_uber, grp_affinity,
    nvsp_6_pd_api_req, nvsp_6_pd_api_comp, nvsp_6_message_uber, nvsp_all_messages, nvsp_message,
    rndis_initialize_request, rndis_initialize_complete, rndis_halt_request, rndis_query_request,
    rndis_query_complete, rndis_set_request, rndis_set_complete, rndis_reset_request,
    rndis_reset_complete, rndis_indicate_status, rndis_keepalive_request,
    rndis_keepalive_complete, rndis_packet, rndis_per_packet_info, rndis_pktinfo_id,
    rcondis_mp_create_vc, rcondis_mp_create_vc_complete, rcondis_mp_delete_vc,
    rcondis_mp_delete_vc_complete, rcondis_indicate_status, rcondis_mp_activate_vc_request,
    rcondis_mp_activate_vc_complete, rcondis_mp_deactivate_vc_request,
    rcondis_mp_deactivate_vc_complete, rndis_message_container, rndis_message,
    ndis_pkt_8021q_info, ndis_tcp_ip_checksum_info, ndis_tcp_lso_info, ndis_obj_header,
    ndis_recv_scale_cap, ndis_recv_scale_param, ndis_object_header, ndis_csum_offload,
    ndis_lsov1_offload, ndis_ipsecv1_offload, ndis_lsov2_offload, ndis_ipsecv2_offload,
    ndis_rsc_offload, ndis_encap_offload, ndis_offload, ndis_offload_params,
    rndis_config_parameter_info,
]

#: Layouts in this module that Linux 6.1's hv_netvsc BTF lacks (none today; rndis_oobd is unused
#: by Linux's code, so its BTF has no type for it).
NOT_IN_BTF = {"rndis_oobd": "declared by hyperv_net.h, used by no compiled code"}

#: NVSP versions Linux 6.x offers, in the order it tries them (newest first).
NVSP_VERSIONS = (NVSP_PROTOCOL_VERSION_61, NVSP_PROTOCOL_VERSION_6, NVSP_PROTOCOL_VERSION_5,
                 NVSP_PROTOCOL_VERSION_4, NVSP_PROTOCOL_VERSION_2, NVSP_PROTOCOL_VERSION_1)

NVSP_MESSAGE_SIZE = ctypes.sizeof(nvsp_message)
