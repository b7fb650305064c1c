"""cffi builder for ``hvkvm.vmbus._hvring``: csrc/vmbus_ring.c as an out-of-line API-mode extension.

Built by ``pip install -e .`` through ``setup.py``'s ``cffi_modules``. The same C file is compiled,
freestanding, into guest images; here it is built hosted (``HVR_HOSTED``: libc's memcpy).

``HVKVM_SANITIZE=1`` adds ``-fsanitize=address,undefined`` (the interpreter then needs libasan
preloaded); off by default.

Run directly (``python hvkvm/vmbus/_ring_build.py``) to build the extension in place.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent.parent
_CSRC = _ROOT / "csrc"

CDEF = r"""
/* Linux's wire structures: '...' lets the compiler fill in the layout; cffi checks each named
 * member's offset against the real header. */
struct hv_ring_buffer {
    uint32_t write_index;
    uint32_t read_index;
    uint32_t interrupt_mask;
    uint32_t pending_send_sz;
    uint32_t reserved1[12];
    ...;
};
struct vmpacket_descriptor {
    uint16_t type;
    uint16_t offset8;
    uint16_t len8;
    uint16_t flags;
    uint64_t trans_id;
};
struct vmtransfer_page_range {
    uint32_t byte_count;
    uint32_t byte_offset;
};
struct vmtransfer_page_packet_header {
    struct vmpacket_descriptor d;
    uint16_t xfer_pageset_id;
    uint8_t sender_owns_set;
    uint8_t reserved;
    uint32_t range_cnt;
    ...;
};
struct gpa_range {
    uint32_t byte_count;
    uint32_t byte_offset;
    ...;
};
struct hv_mpb_array {
    uint32_t len;
    uint32_t offset;
    ...;
};
struct vmbus_packet_mpb_array {
    uint16_t type;
    uint16_t dataoffset8;
    uint16_t length8;
    uint16_t flags;
    uint64_t transactionid;
    uint32_t reserved;
    uint32_t rangecount;
    struct hv_mpb_array range;
    ...;
};

enum vmbus_packet_type {
    VM_PKT_INVALID = 0, VM_PKT_SYNCH = 1, VM_PKT_ADD_XFER_PAGESET = 2, VM_PKT_RM_XFER_PAGESET = 3,
    VM_PKT_ESTABLISH_GPADL = 4, VM_PKT_TEARDOWN_GPADL = 5, VM_PKT_DATA_INBAND = 6,
    VM_PKT_DATA_USING_XFER_PAGES = 7, VM_PKT_DATA_USING_GPADL = 8,
    VM_PKT_DATA_USING_GPA_DIRECT = 9, VM_PKT_CANCEL_REQUEST = 10, VM_PKT_COMP = 11,
    VM_PKT_DATA_USING_ADDITIONAL_PKT = 12, VM_PKT_ADDITIONAL_DATA = 13
};

#define HVR_PAGE_SIZE ...
#define HVR_FEAT_PENDING_SEND_SZ ...
#define VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED ...
#define VMBUS_PKT_TRAILER ...
#define HVR_WRITE_INDEX_OFFSET ...
#define HVR_READ_INDEX_OFFSET ...
#define HVR_INTERRUPT_MASK_OFFSET ...
#define HVR_PENDING_SEND_SZ_OFFSET ...
#define HVR_FEATURE_BITS_OFFSET ...
#define HVR_DOUBLE_MAPPED ...
#define HVR_MAX_DATA_SIZE ...

enum hvr_status {
    HVR_OK = 0, HVR_EMPTY = -1, HVR_FULL = -2, HVR_EINVAL = -3, HVR_EBROKEN = -4, HVR_ERANGE = -5
};
enum hvr_broken {
    HVR_BROKEN_NONE = 0, HVR_BROKEN_WRITE_INDEX = 1, HVR_BROKEN_READ_INDEX = 2,
    HVR_BROKEN_AVAIL = 3, HVR_BROKEN_DESC_LENGTHS = 4, HVR_BROKEN_DESC_FLAGS = 5,
    HVR_BROKEN_DESC_TYPE = 6, HVR_BROKEN_GPA_RANGES = 7, HVR_BROKEN_XFER_RANGES = 8
};

struct hvr_ring {
    struct hv_ring_buffer *hdr;
    uint8_t *data;
    uint32_t size;
    uint32_t double_mapped;
    uint32_t broken;
    uint32_t reserved;
};
struct hvr_out {
    struct hvr_ring r;
    uint32_t committed_in;
    uint32_t next_in;
    uint32_t cached_out;
    uint32_t pending_set;
};
struct hvr_in {
    struct hvr_ring r;
    uint32_t committed_out;
    uint32_t next_out;
    uint32_t cached_in;
    uint32_t reserved;
};
struct hvr_pkt {
    uint16_t type;
    uint16_t flags;
    uint16_t offset8;
    uint16_t len8;
    uint64_t trans_id;
    uint32_t offset;
    uint32_t total;
    uint32_t payload_off;
    uint32_t payload_len;
    uint32_t range_count;
    uint16_t xfer_pageset_id;
    uint8_t sender_owns_set;
    uint8_t reserved;
};
struct hvr_iov {
    const void *base;
    uint32_t len;
};
struct hvr_gpa_iter {
    uint32_t pos;
    uint32_t left;
};
struct hvr_gpa_range {
    uint32_t byte_count;
    uint32_t byte_offset;
    uint32_t pfn_count;
    uint32_t pfn_off;
};

void hvr_ring_format(struct hv_ring_buffer *hdr);
uint32_t hvr_packet_total(uint32_t hdr_len, uint32_t payload_len);
uint32_t hvr_broken_reason(const struct hvr_ring *r);

int hvr_out_attach(struct hvr_out *out, struct hv_ring_buffer *hdr, uint32_t size, uint32_t flags);
int hvr_out_write(struct hvr_out *out, uint16_t type, uint16_t flags, uint64_t trans_id,
                  uint32_t hdr_len, const struct hvr_iov *iov, uint32_t iovcnt);
int hvr_out_write_inband(struct hvr_out *out, uint16_t flags, uint64_t trans_id,
                         const void *payload, uint32_t len);
int hvr_out_write_comp(struct hvr_out *out, uint64_t trans_id, const void *payload, uint32_t len);
int hvr_out_commit(struct hvr_out *out);
void hvr_out_revert(struct hvr_out *out);
int hvr_out_free(struct hvr_out *out);
int hvr_out_request_space(struct hvr_out *out, uint32_t total);
void hvr_out_clear_pending(struct hvr_out *out);

int hvr_in_attach(struct hvr_in *in, struct hv_ring_buffer *hdr, uint32_t size, uint32_t flags);
int hvr_in_peek(struct hvr_in *in, struct hvr_pkt *pkt);
int hvr_in_read(struct hvr_in *in, struct hvr_pkt *pkt);
int hvr_in_copy(const struct hvr_in *in, const struct hvr_pkt *pkt, uint32_t off, void *dst,
                uint32_t len);
const void *hvr_in_ptr(const struct hvr_in *in, const struct hvr_pkt *pkt, uint32_t off,
                       uint32_t len);
const void *hvr_in_payload(const struct hvr_in *in, const struct hvr_pkt *pkt, uint32_t *len);
int hvr_in_gpa_range(const struct hvr_in *in, const struct hvr_pkt *pkt, struct hvr_gpa_iter *it,
                     struct hvr_gpa_range *range);
int hvr_in_commit(struct hvr_in *in);
void hvr_in_revert(struct hvr_in *in);
int hvr_in_avail(struct hvr_in *in);
void hvr_in_set_interrupt_mask(struct hvr_in *in, uint32_t mask);
int hvr_in_unmask(struct hvr_in *in);
"""


def _rel(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (setuptools prefers
    relative source paths), else absolute."""
    try:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def _compile_args() -> list[str]:
    args = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-fno-strict-aliasing"]
    if os.environ.get("HVKVM_SANITIZE") == "1":
        args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    return args


def _link_args() -> list[str]:
    return ["-fsanitize=address,undefined"] if os.environ.get("HVKVM_SANITIZE") == "1" else []


#: SynIC updates the parent makes atomically on guest RAM (csrc/hv_synic.c).
CDEF_SYNIC = r"""
void hvr_event_set_bit(volatile uint32_t *flags, uint32_t bit);
uint32_t hvr_message_mark_pending(volatile void *slot);
"""

#: The C data plane: a host thread per channel (csrc/hvr_plane.c).
CDEF_PLANE = r"""
struct hvr_plane_stats {
    uint64_t packets; uint64_t bytes; uint64_t kicks; uint64_t sleeps; uint64_t signals;
    uint64_t full_waits; uint64_t batches; uint64_t retries; uint64_t reaped;
};
struct hvr_plane {
    struct hvr_plane_stats stats;
    int error;
    uint32_t broken;
    ...;
};
typedef int (*hvr_plane_handler)(struct hvr_plane *p, const struct hvr_pkt *pkt);
int hvr_plane_init(struct hvr_plane *p, struct hv_ring_buffer *in_hdr, uint32_t in_size,
                   struct hv_ring_buffer *out_hdr, uint32_t out_size, uint32_t flags, int kick_fd,
                   int irq_fd, volatile uint32_t *event_flags, volatile uint32_t *irq_enabled,
                   uint32_t relid, uint32_t spin_us, hvr_plane_handler handler, void *ctx);
int hvr_plane_start(struct hvr_plane *p);
void hvr_plane_stop(struct hvr_plane *p);
void hvr_plane_signal_guest(struct hvr_plane *p);
int hvr_echo_handler(struct hvr_plane *p, const struct hvr_pkt *pkt);
"""

#: The storvsc data plane: a hvr_plane handler doing SCSI on raw images (csrc/hvr_storage.c).
CDEF_STORAGE = r"""
#define HVR_STORAGE_BLOCK ...
#define HVR_STORAGE_MAX_GPA_RANGES ...
#define HVR_STORAGE_MAX_TRANSFER ...
#define HVR_STORAGE_MAX_LUNS ...
#define HVR_LUN_READONLY ...
#define HVR_LUN_DIRECT ...
#define HVR_MAX_UNMAP_LBA_COUNT ...
#define HVR_MAX_UNMAP_DESCRIPTORS ...
#define HVR_STORAGE_MAX_INFLIGHT ...
#define HVR_STORAGE_MAX_WORKERS ...
#define HVR_STORAGE_DEFAULT_INFLIGHT ...
#define HVR_IO_SYNC ...
#define HVR_IO_THREADS ...
#define HVR_IO_URING ...
struct hvr_ram_region {
    uint64_t gpa;
    uint64_t size;
    uint8_t *host;
};
struct hvr_storage_lun {
    int fd;
    uint32_t flags;
    uint64_t blocks;
    uint32_t lun;
    uint32_t serial_len;
    uint8_t vendor[8];
    uint8_t product[16];
    uint8_t revision[4];
    uint8_t serial[32];
    uint8_t naa[8];
};
struct hvr_storage_stats {
    uint64_t requests; uint64_t srbs; uint64_t reads; uint64_t writes; uint64_t flushes;
    uint64_t unmaps; uint64_t errors; uint64_t invalid; uint64_t check_conditions;
    uint64_t bytes_read; uint64_t bytes_written; uint64_t bounced; uint64_t async;
    uint64_t inline_io; uint64_t cancelled; uint64_t inflight; uint64_t inflight_max;
};
struct hvr_scsi_result {
    uint8_t srb_status;
    uint8_t scsi_status;
    uint8_t sense_len;
    uint8_t reserved;
    uint32_t transferred;
    uint8_t sense[20];
};
struct hvr_storage {
    const struct hvr_ram_region *regions;
    uint32_t nregions;
    const struct hvr_storage_lun *luns;
    uint32_t nluns;
    uint32_t max_transfer_bytes;
    uint32_t version;
    uint32_t io_workers;
    uint32_t io_backend;
    uint32_t max_inflight;
    uint32_t io_mode;
    struct hvr_storage_stats stats;
    ...;
};
int hvr_storage_init(struct hvr_storage *s);
void hvr_storage_fini(struct hvr_storage *s);
int hvr_storage_handler(struct hvr_plane *p, const struct hvr_pkt *pkt);
void hvr_storage_attach(struct hvr_plane *p, struct hvr_storage *s);
uint32_t hvr_storage_packet_size(uint32_t version);
int hvr_storage_exec_cdb(struct hvr_storage *s, uint8_t path_id, uint8_t target_id, uint8_t lun,
                         const uint8_t *cdb, uint32_t cdb_len, uint8_t *buf, uint32_t buf_len,
                         struct hvr_scsi_result *res);
"""

#: The netvsc data plane: NVSP/RNDIS on a channel, frames to and from a TAP (csrc/hvr_net.c).
CDEF_NET = r"""
#define HVR_NET_MAX_RX_BATCH ...
#define HVR_NET_MAX_MSG ...
#define HVR_NET_MAX_CONTROL ...
#define HVR_NET_RX_HEADER ...
#define HVR_NET_NERR ...
enum hvr_net_error_code {
    HVR_NET_ERR_NONE, HVR_NET_ERR_SHORT_NVSP, HVR_NET_ERR_NVSP_TYPE, HVR_NET_ERR_PACKET_TYPE,
    HVR_NET_ERR_SEND_SECTION, HVR_NET_ERR_NO_BUFFER, HVR_NET_ERR_GPA, HVR_NET_ERR_NO_DATA,
    HVR_NET_ERR_RNDIS_LEN, HVR_NET_ERR_RNDIS_PACKET, HVR_NET_ERR_RNDIS_TYPE,
    HVR_NET_ERR_RNDIS_REQUEST, HVR_NET_ERR_RECV_COMPLETION, HVR_NET_ERR_NO_SECTION,
    HVR_NET_ERR_TAP, HVR_NET_ERR_TOO_MANY, HVR_NET_ERR_MAX
};
struct hvr_net_error {
    uint32_t code;
    uint32_t a;
    uint32_t b;
    uint32_t c;
};
struct hvr_net_stats {
    uint64_t rx_frames; uint64_t rx_bytes; uint64_t rx_packets; uint64_t rx_dropped;
    uint64_t rx_wait_section; uint64_t rx_wait_ring; uint64_t tx_frames; uint64_t tx_bytes;
    uint64_t tx_dropped; uint64_t tx_packets; uint64_t control; uint64_t indications;
    uint64_t completions; uint64_t errors; uint64_t errors_lost;
};
struct hvr_net {
    const struct hvr_ram_region *regions;
    uint32_t nregions;
    int tap_fd;
    uint32_t vnet_hdr;
    uint32_t mtu;
    uint8_t mac[6];
    uint16_t recv_buf_id;
    uint32_t nvsp_version;
    uint8_t *recv_buf;
    uint32_t recv_buf_size;
    uint32_t recv_section_size;
    uint32_t recv_section_count;
    uint8_t *send_buf;
    uint32_t send_buf_size;
    uint32_t send_section_size;
    uint32_t send_section_count;
    uint32_t control_sections;
    uint32_t rx_batch;
    uint32_t link_speed;
    int err_fd;
    volatile uint32_t link_up;
    uint32_t rndis_initialized;
    uint32_t packet_filter;
    uint32_t link_reported;
    uint32_t recv_revoked;
    uint32_t send_revoked;
    uint32_t tap_dead;
    uint32_t nfree;
    struct hvr_net_stats stats;
    ...;
};
int hvr_net_init(struct hvr_net *n);
void hvr_net_fini(struct hvr_net *n);
int hvr_net_handler(struct hvr_plane *p, const struct hvr_pkt *pkt);
int hvr_net_start(struct hvr_plane *p);
int hvr_net_pop_error(struct hvr_net *n, struct hvr_net_error *out);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.cdef(CDEF_SYNIC)
ffibuilder.cdef(CDEF_PLANE)
ffibuilder.cdef(CDEF_STORAGE)
ffibuilder.cdef(CDEF_NET)
ffibuilder.set_source(
    "hvkvm.vmbus._hvring",
    '#include "vmbus_ring.h"\n#include "hv_synic.h"\n#include "hvr_plane.h"\n'
    '#include "hvr_storage.h"\n#include "hvr_net.h"\n',
    sources=[_rel(_CSRC / "vmbus_ring.c"), _rel(_CSRC / "hv_synic.c"),
             _rel(_CSRC / "hvr_plane.c"), _rel(_CSRC / "hvr_storage.c"),
             _rel(_CSRC / "hvr_net.c")],
    include_dirs=[_rel(_CSRC)],
    define_macros=[("HVR_HOSTED", "1")],
    extra_compile_args=_compile_args(),
    extra_link_args=_link_args(),
    depends=[_rel(_CSRC / "vmbus_ring.h"), _rel(_CSRC / "hv_synic.h"),
             _rel(_CSRC / "hvr_plane.h"), _rel(_CSRC / "hvr_storage.h"),
             _rel(_CSRC / "storvsc_proto.h"), _rel(_CSRC / "hvr_net.h"),
             _rel(_CSRC / "netvsc_proto.h")],
)

if __name__ == "__main__":
    # Rebuild in place for development exactly as ``pip install -e .`` does (same file name, so
    # no second, shadowing copy appears; objects go to build/).
    import subprocess
    import sys

    raise SystemExit(subprocess.call([sys.executable, "setup.py", "build_ext", "--inplace"],
                                     cwd=_ROOT))
