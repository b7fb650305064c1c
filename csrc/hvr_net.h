/*
 * hvr_net.h - the netvsc data plane: NVSP + RNDIS on a VMBus channel, frames to and from a TAP
 * device, in one host C thread per channel (hosted: read/writev, poll, eventfd).
 *
 * The NVSP handshake (INIT, SEND_NDIS_VER, SEND_NDIS_CONFIG, SEND_RECV_BUF, SEND_SEND_BUF) is
 * served in Python (hvkvm/vsp/netvsc.py), which maps the receive and send buffer GPADLs and hands
 * the channel over at the guest's first NVSP_MSG1_TYPE_SEND_RNDIS_PKT. From then on this thread
 * owns both rings and serves, exactly as the Python plane does in that state:
 *
 *   guest -> host, NVSP_MSG1_TYPE_SEND_RNDIS_PKT (in a send-buffer section, or GPA direct):
 *       RNDIS_MSG_PACKET     the frame is written to the TAP (one or more messages per packet)
 *       INIT/QUERY/SET/KEEPALIVE/RESET  answered with the *_C message through the receive buffer
 *       HALT                 no answer; the data path stops until the next INIT
 *     then a VM_PKT_COMP carrying NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE (when requested):
 *     NVSP_STAT_SUCCESS, NVSP_STAT_INVALID_RNDIS_PKT (malformed RNDIS) or NVSP_STAT_FAIL (a bad
 *     section index/size or GPA range).
 *   guest -> host, VM_PKT_COMP (SEND_RNDIS_PKT_COMPLETE): frees the receive sections of the
 *     transfer-page packet whose trans_id it names.
 *   host -> guest: frames read from the TAP (and RNDIS answers and link indications) are written
 *     into free receive sections (sub-allocations of NETVSC_RECV_SECTION_SIZE-ish bytes) and sent
 *     as VM_PKT_DATA_USING_XFER_PAGES packets (xfer_pageset_id = the receive buffer's id, one
 *     range per RNDIS message, payload an nvsp_message SEND_RNDIS_PKT) with completion requested.
 *
 * Every offset, length and index the guest supplies is checked against the buffer it names; GPA
 * ranges are translated through the guest RAM regions (a page outside them refuses the message).
 * Errors never stop the thread: each one is counted and recorded in a small ring the parent
 * drains and logs (`err_fd` is written when one is recorded).
 */
#ifndef HVR_NET_H
#define HVR_NET_H

#include <stdint.h>

#include "hvr_plane.h"
#include "hvr_storage.h" /* struct hvr_ram_region */
#include "netvsc_proto.h"

/* Frames per transfer-page packet at most. */
#define HVR_NET_MAX_RX_BATCH 32u
/* Largest RNDIS packet (all messages of one SEND_RNDIS_PKT) gathered from GPA-direct ranges. */
#define HVR_NET_MAX_MSG (64u * 1024u + 4096u)
/* GPA ranges / contiguous host pieces of one SEND_RNDIS_PKT at most. */
#define HVR_NET_MAX_RANGES 64u
#define HVR_NET_MAX_IOV 96u
/* RNDIS control messages answered from one SEND_RNDIS_PKT at most. */
#define HVR_NET_MAX_CONTROL 8u
/* Bytes of RNDIS header in front of each received frame: rndis_message header + rndis_packet. */
#define HVR_NET_RX_HEADER 44u
/* Recorded errors waiting for the parent. */
#define HVR_NET_NERR 64u
/* An NVSP send_buf_section_index that names no section. */
#define HVR_NET_NO_SECTION 0xFFFFFFFFu

/* What went wrong (struct hvr_net_error.code); hvkvm/vsp/netvsc.py has the same names. */
enum hvr_net_error_code {
	HVR_NET_ERR_NONE = 0,
	HVR_NET_ERR_SHORT_NVSP = 1,      /* a packet shorter than its NVSP message (a: bytes) */
	HVR_NET_ERR_NVSP_TYPE = 2,       /* an NVSP message not served now (a: msg_type) */
	HVR_NET_ERR_PACKET_TYPE = 3,     /* a VMBus packet type netvsc does not use (a: type) */
	HVR_NET_ERR_SEND_SECTION = 4,    /* a: index, b: size outside the send buffer */
	HVR_NET_ERR_NO_BUFFER = 5,       /* a: 0 send / 1 receive buffer missing or revoked */
	HVR_NET_ERR_GPA = 6,             /* a GPA range outside guest RAM, or too many / too long */
	HVR_NET_ERR_NO_DATA = 7,         /* SEND_RNDIS_PKT with no section and no GPA ranges */
	HVR_NET_ERR_RNDIS_LEN = 8,       /* a: msg_len, b: bytes left: msg_len < 8 or too long */
	HVR_NET_ERR_RNDIS_PACKET = 9,    /* a: data_offset, b: data_len, c: msg_len don't fit */
	HVR_NET_ERR_RNDIS_TYPE = 10,     /* a: ndis_msg_type unknown */
	HVR_NET_ERR_RNDIS_REQUEST = 11,  /* a: ndis_msg_type, b: msg_len too short for it */
	HVR_NET_ERR_RECV_COMPLETION = 12, /* a: trans_id low, b: high: no such transaction */
	HVR_NET_ERR_NO_SECTION = 13,     /* a control answer dropped: no receive section free */
	HVR_NET_ERR_TAP = 14,            /* a: errno of a failed TAP read/write, b: 0 read 1 write */
	HVR_NET_ERR_TOO_MANY = 15,       /* a: control messages in one packet over the limit */
	HVR_NET_ERR_MAX = 16
};

struct hvr_net_error {
	uint32_t code;
	uint32_t a;
	uint32_t b;
	uint32_t c;
};

struct hvr_net_stats {
	uint64_t rx_frames;       /* frames from the TAP delivered to the guest */
	uint64_t rx_bytes;
	uint64_t rx_packets;      /* transfer-page packets carrying them */
	uint64_t rx_dropped;      /* frames read and dropped (filter, not initialized, oversize) */
	uint64_t rx_wait_section; /* times the TAP waited for the guest to free a section */
	uint64_t rx_wait_ring;    /* times the TAP waited for ring space */
	uint64_t tx_frames;       /* frames from the guest written to the TAP */
	uint64_t tx_bytes;
	uint64_t tx_dropped;      /* frames not written (not initialized, TAP error, no TAP) */
	uint64_t tx_packets;      /* SEND_RNDIS_PKT messages served */
	uint64_t control;         /* RNDIS control messages served */
	uint64_t indications;     /* RNDIS_MSG_INDICATE sent */
	uint64_t completions;     /* receive completions from the guest (transactions freed) */
	uint64_t errors;          /* protocol errors (each also recorded) */
	uint64_t errors_lost;     /* recorded errors the parent had not drained (ring full) */
};

struct hvr_net {
	/* configuration: set before hvr_net_init(), constant afterwards */
	const struct hvr_ram_region *regions;
	uint32_t nregions;
	int tap_fd;                  /* -1: no backend (frames from the guest are dropped) */
	uint32_t vnet_hdr;           /* bytes of virtio_net_hdr the TAP adds (0 or 10) */
	uint32_t mtu;                /* frames are at most mtu + 18 bytes (VLAN tagged) */
	uint8_t mac[6];
	uint16_t recv_buf_id;        /* xfer_pageset_id of the receive buffer */
	uint32_t nvsp_version;
	uint8_t *recv_buf;           /* host view of the receive buffer (NULL: none) */
	uint32_t recv_buf_size;
	uint32_t recv_section_size;
	uint32_t recv_section_count;
	uint8_t *send_buf;           /* host view of the send buffer (NULL: none) */
	uint32_t send_buf_size;
	uint32_t send_section_size;
	uint32_t send_section_count;
	uint32_t control_sections;   /* receive sections the TAP leaves for control answers */
	uint32_t rx_batch;           /* frames per transfer-page packet, 1..HVR_NET_MAX_RX_BATCH */
	uint32_t link_speed;         /* RNDIS_OID_GEN_LINK_SPEED answer, in 100 bps */
	int err_fd;                  /* eventfd written when an error is recorded; -1: none */
	/* set by the parent at any time */
	volatile uint32_t link_up;   /* the link state to report (an RNDIS_MSG_INDICATE on change) */
	/* RNDIS state (the parent reads it) */
	uint32_t rndis_initialized;
	uint32_t packet_filter;
	uint32_t link_reported;      /* what the guest was last told */
	uint32_t recv_revoked;       /* the guest revoked the buffer: never touched again; */
	uint32_t send_revoked;       /* set (release) before err_fd is written */
	uint32_t rx_blocked;         /* internal: 1 waiting for sections, 2 for ring space */
	uint32_t tap_dead;           /* the TAP failed (e.g. its device was deleted): not used */
	/* owned: hvr_net_init() allocates, hvr_net_fini() frees */
	uint32_t *sec_free;
	uint32_t nfree;
	uint32_t *sec_next;
	uint32_t *sec_gen;
	uint8_t *sec_state;
	uint8_t *scratch;
	void *iov;
	struct hvr_net_error errs[HVR_NET_NERR];
	uint32_t err_head;           /* written by the plane thread */
	uint32_t err_tail;           /* written by the parent (hvr_net_pop_error) */
	struct hvr_net_stats stats;
};

/*
 * Check the configuration and allocate the section tables. Returns 0, HVR_EINVAL (bad sizes,
 * buffers or regions) or -ENOMEM. Call hvr_net_fini() in every case.
 */
int hvr_net_init(struct hvr_net *n);

/* Free what hvr_net_init() allocated. Idempotent. */
void hvr_net_fini(struct hvr_net *n);

/* The hvr_plane handler for one packet from the guest (p->ctx is the struct hvr_net). */
int hvr_net_handler(struct hvr_plane *p, const struct hvr_pkt *pkt);

/*
 * Start the channel's thread on a plane made by hvr_plane_init() with hvr_net_handler: it drains
 * the guest's ring like hvr_plane's thread and also moves frames from the TAP to the guest.
 * Stop it with hvr_plane_stop(). 0 or -errno.
 */
int hvr_net_start(struct hvr_plane *p);

/* Take the oldest recorded error: 1 and *out filled, 0 when none. Any thread. */
int hvr_net_pop_error(struct hvr_net *n, struct hvr_net_error *out);

#endif
