/*
 * vmbus.h - the guest runtime's Hyper-V enlightenments and minimal VMBus client (VSC side).
 *
 * Layers, bottom up (wire facts are Linux's: drivers/hv/{hv,connection,channel,channel_mgmt,
 * vmbus_drv}.c, include/linux/hyperv.h; the structs come from csrc/vmbus_proto.h and the ring
 * from csrc/vmbus_ring.h, the same C the host uses):
 *
 *   1. Hyper-V (rt/k_hyperv.c, ring 0): CPUID 0x40000000.. detection, HV_X64_MSR_GUEST_OS_ID,
 *      the hypercall page (a page of the image the parent fills with its port-I/O stub),
 *      hv_hypercall() with the x64 convention, the fast HvSignalEvent, HvPostMessage.
 *   2. SynIC (rt/k_vmbus.c, ring 0): SIMP/SIEFP pages, SCONTROL, VMBUS_MESSAGE_SINT (2) unmasked
 *      on a vector whose handler consumes messages (message_type = 0, full barrier, EOM when
 *      msg_pending) and takes channel event flags (bit relid, test-and-clear with lock btr).
 *      No auto-EOI: the runtime EOIs after the handler (Hyper-V recommends deprecating AutoEOI).
 *   3. VMBus connection (rt/k_vmbus.c, ring 0): INITIATE_CONTACT (5.3..5.0 on connection id 4
 *      with msg_sint 2, then 4.1/4.0 on connection id 1), REQUESTOFFERS, offers until
 *      ALLOFFERS_DELIVERED, GPADLs (GPADL_HEADER + GPADL_BODY like vmbus_establish_gpadl),
 *      OPENCHANNEL / CLOSECHANNEL, GPADL_TEARDOWN, RELID_RELEASED after a rescind.
 *   4. Rings (rt/u_vmbus.c, any ring): an open channel's two ring views (plain view: the guest
 *      sees each data area once) with send / receive helpers that say when the host must be
 *      signalled; from ring 3 the signal is a bare `out %eax, $0xe4` (EAX = connection id), the
 *      way Linux's uio_hv_generic lets DPDK drive VMBus rings.
 *
 * The VMBus client runs on vCPU 0 with IF=0 outside its `sti; hlt` waits (the runtime's default
 * for hv_main). Every wait for the host is `sti; hlt` until the SINT2 interrupt: the host's
 * run timeout is the bound.
 *
 * Ring memory: a channel's ring area is send ring (1 header page + data pages) followed by the
 * receive ring (1 header page + data pages), page-aligned, in the identity-mapped low 4 GiB.
 * Put it in a u_*.c file's .bss (user-accessible) or call vmbus_channel_to_user(), which
 * opens it to ring 3, before handing it to a ring-3 task.
 */
#ifndef HV_VMBUS_H
#define HV_VMBUS_H

#include "hv.h"
#include "vmbus_ring.h"  /* csrc/ (images are built with -I ../csrc) */
#include "vmbus_proto.h" /* csrc/ */

/* ------------------------------------------------------------------------------------------ */
/* Hyper-V detection and hypercalls. Ring 0. */

/* HV_X64_MSR_GUEST_OS_ID the runtime writes: Linux's layout (vendor HV_LINUX_VENDOR_ID 0x8100
 * in bits 63:48, the kernel version code in bits 47:16); version 0.1.0 marks hvkvm's runtime. */
#define HV_GUEST_OS_ID_HVKVM (((uint64_t)HV_LINUX_VENDOR_ID << 48) | ((uint64_t)0x000100 << 16))

struct hv_hyperv_info {
	uint32_t max_leaf;     /* CPUID 0x40000000.EAX */
	uint32_t features_a;   /* CPUID 0x40000003.EAX (partition privileges, low) */
	uint32_t features_b;   /* CPUID 0x40000003.EBX (privileges, high: post messages, ...) */
	uint32_t features_d;   /* CPUID 0x40000003.EDX */
	uint32_t hints;        /* CPUID 0x40000004.EAX (recommendations) */
	uint32_t vp_index;     /* HV_X64_MSR_VP_INDEX of vCPU 0 */
	uint64_t guest_os_id;  /* what hv_hyperv_init() wrote */
	uint64_t tsc_hz;       /* HV_X64_MSR_TSC_FREQUENCY (0 if not offered) */
	bool present;          /* "Microsoft Hv" + "Hv#1" */
	bool hypercall_ready;  /* the hypercall page is enabled */
	bool synic_ready;      /* SIMP, SIEFP, SINT2, SCONTROL set */
};
extern struct hv_hyperv_info hv_hyperv;

/* Errors of the functions below (negative). */
enum vmbus_error {
	VMBUS_OK = 0,
	VMBUS_ENODEV = -1,     /* no Hyper-V, or a feature the client needs is missing */
	VMBUS_EHYPERCALL = -2, /* a hypercall failed: see vmbus_last_hv_status */
	VMBUS_EVERSION = -3,   /* the host accepted no version */
	VMBUS_EINVAL = -4,     /* bad argument (alignment, sizes, channel state) */
	VMBUS_EHOST = -5,      /* the host answered with a non-zero status: vmbus_last_host_status */
	VMBUS_ERING = -6,      /* a ring view is broken (see the view's r.broken) */
	VMBUS_ENOSPC = -7,     /* out of message queue / channel slots */
};
extern uint64_t vmbus_last_hv_status;  /* status of the last failed hypercall */
extern uint32_t vmbus_last_host_status; /* creation_status / open status the host refused with */

/* CPUID detection only; fills hv_hyperv.present and the feature words. */
bool hv_hyperv_detect(void);
/* Detect, write the guest OS id, enable the hypercall page (read back to check). 0 or
 * VMBUS_ENODEV. Idempotent. */
int hv_hyperv_init(void);

/* The x64 hypercall convention through the hypercall page: RCX = control, RDX = input GPA,
 * R8 = output GPA; returns RAX (status in bits 15:0). RCX, RDX, R8-R11 are clobbered. */
uint64_t hv_hypercall(uint64_t control, uint64_t input_gpa, uint64_t output_gpa);
/* Fast form, one register of input (RDX); R8 = 0. */
uint64_t hv_hypercall_fast8(uint64_t control, uint64_t input);
/* HvSignalEvent, fast: RCX = 0x1005d, RDX = connection id (flag number 0). Returns the status. */
static inline uint64_t hv_signal_event(uint32_t connection_id)
{
	return hv_hypercall_fast8(HVCALL_SIGNAL_EVENT | HV_HYPERCALL_FAST_BIT, connection_id);
}
/* HvPostMessage: copy {connection_id, 0, message_type, size, payload} into the runtime's
 * page-aligned input page and call 0x5c. Retries (100 x 100 us) while the host says
 * INSUFFICIENT_MEMORY/BUFFERS or NO_RESOURCES, as Linux's vmbus_post_msg. Returns the status
 * (HV_STATUS_INVALID_PARAMETER if size > 240). */
uint64_t hv_post_message(uint32_t connection_id, uint32_t message_type, const void *payload,
			 uint32_t size);

/* ------------------------------------------------------------------------------------------ */
/* SynIC. Ring 0. */

/* Default vector of the VMBus SINT (Linux's HYPERVISOR_CALLBACK_VECTOR). */
#define VMBUS_VECTOR_DEFAULT 0xf3

/* SIMP and SIEFP pages (the runtime's), SINT2 -> `vector` (unmasked, no auto-EOI), SCONTROL
 * enable, and the interrupt handler. hv_hyperv_init() first. 0 or VMBUS_ENODEV. */
int hv_synic_init(uint8_t vector);
/* Mask SINT2, disable SIMP/SIEFP and SCONTROL. */
void hv_synic_cleanup(void);
/* The SynIC pages (for tests and diagnostics). */
struct hv_message_page *hv_synic_simp(void);
union hv_synic_event_flags *hv_synic_event_flags(unsigned sint);

/* ------------------------------------------------------------------------------------------ */
/* VMBus connection and channels. Ring 0, vCPU 0. */

#define VMBUS_MAX_CHANNELS 32
#define VMBUS_MAX_RELID 2047 /* event flags per SINT - 1 */

enum vmbus_channel_state {
	VMBUS_CH_FREE = 0,
	VMBUS_CH_OFFERED = 1,   /* offer received, closed */
	VMBUS_CH_OPEN = 2,      /* rings open, driven by the kernel */
	VMBUS_CH_USER = 3,      /* rings open, handed to a ring-3 task (vmbus_channel_to_user) */
};

/* An open channel's two ring views and how to signal the host: usable from ring 0 and ring 3
 * (the functions taking it live in the user region). */
struct vmbus_rings {
	struct hvr_out out;      /* guest -> host: the send ring (first in the ring area) */
	struct hvr_in in;        /* host -> guest: the receive ring */
	uint32_t connection_id;  /* the offer's connection_id: HvSignalEvent / port 0xe4 value */
	uint32_t relid;
	uint64_t kicks;          /* host signals sent through vmbus_rings_kick() */
	uint64_t kick_errors;    /* ... that returned a non-zero status */
};

struct vmbus_channel {
	struct vmbus_channel_offer_channel offer; /* the OFFERCHANNEL message as received */
	uint32_t relid;
	uint32_t connection_id;
	uint32_t state;          /* enum vmbus_channel_state */
	uint32_t rescinded;      /* RESCIND_CHANNELOFFER arrived */
	uint32_t released;       /* RELID_RELEASED sent */
	uint32_t gpadl;          /* ring GPADL handle while open, else 0 */
	uint8_t *ring_area;      /* send ring pages, then receive ring pages */
	uint32_t send_pages;     /* pages of the send ring, header page included */
	uint32_t recv_pages;     /* pages of the receive ring, header page included */
	struct vmbus_rings rings;
	volatile uint64_t events; /* channel interrupts taken (event flag relid seen set) */
	uint64_t host_signals;   /* HvSignalEvent hypercalls made by the kernel helpers */
	uint64_t send_waits;     /* vmbus_send() found the send ring full and slept */
	/* Called from the interrupt handler (ring 0, IF=0) after `events` was bumped. Optional. */
	void (*on_event)(struct vmbus_channel *ch);
};

struct vmbus_connection_info {
	uint32_t version;        /* negotiated VERSION_*; 0 while not connected */
	uint32_t msg_conn_id;    /* connection id channel messages go to */
	uint32_t vector;         /* SINT2 vector */
	uint32_t offers;         /* OFFERCHANNEL messages taken */
	uint32_t all_offers_delivered;
	uint64_t messages;       /* SynIC messages consumed */
	uint64_t eoms;           /* EOM writes (msg_pending was set) */
	uint64_t interrupts;     /* SINT2 interrupts */
	uint64_t events;         /* channel event flags taken */
	uint64_t unknown_events; /* event flags for relids with no open channel */
	uint64_t dropped;        /* messages dropped (unexpected and the queue was full) */
	uint32_t versions_tried;
};
extern struct vmbus_connection_info vmbus_conn;

/* hv_hyperv_init + hv_synic_init(vector) + vmbus_connect + vmbus_request_offers. */
int vmbus_init(uint8_t vector);
/* Negotiate a version (5.3, 5.2, 5.1, 5.0 on connection id 4; 4.1, 4.0 on connection id 1). */
int vmbus_connect(void);
/* REQUESTOFFERS; take offers until ALLOFFERS_DELIVERED. */
int vmbus_request_offers(void);
/* UNLOAD -> UNLOAD_RESPONSE (VMBUS_EINVAL while a channel is open); forgets every offer. */
int vmbus_unload(void);

/* The n-th offered channel with this class GUID (n = 0 for the first), or NULL. Rescinded
 * channels are skipped (and their relids released when they are closed). */
struct vmbus_channel *vmbus_find_channel(const guid_t *class_id, unsigned n);
struct vmbus_channel *vmbus_channel_by_relid(uint32_t relid);
/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (37 bytes with the NUL). Any ring. */
void vmbus_guid_format(const guid_t *g, char out[37]);
bool vmbus_guid_equal(const guid_t *a, const guid_t *b);

/* GPADL over [buf, buf + size): page-aligned, size a multiple of 4096. One range; the first
 * PFNs go in GPADL_HEADER, the rest in GPADL_BODY messages. Waits for GPADL_CREATED;
 * VMBUS_EHOST (vmbus_last_host_status) when creation_status != 0. */
int vmbus_gpadl_create(struct vmbus_channel *ch, void *buf, uint32_t size, uint32_t *handle);
/* GPADL_TEARDOWN, wait for GPADL_TORNDOWN. */
int vmbus_gpadl_teardown(struct vmbus_channel *ch, uint32_t handle);

/* Open: format both ring headers, GPADL over the ring area (send_pages + recv_pages pages, each
 * >= 2: one header page and at least one data page), OPENCHANNEL (openid = relid, target_vp 0,
 * downstream_ringbuffer_pageoffset = send_pages), wait for OPENCHANNEL_RESULT. On a refused open
 * the GPADL is torn down again. */
int vmbus_channel_open(struct vmbus_channel *ch, void *ring_area, uint32_t send_pages,
		       uint32_t recv_pages);
/* CLOSECHANNEL (no answer), then tear the ring GPADL down; then RELID_RELEASED for every
 * rescinded channel that is closed (this one included). */
int vmbus_channel_close(struct vmbus_channel *ch);

/* Kernel-side I/O (ring 0). `signal` decisions follow the ring: HvSignalEvent through the
 * hypercall page only when the commit says so. */
/* Send one in-band packet; if the ring is full, ask for space (pending_send_sz) and wait for
 * the host's interrupt. HVR_OK or a negative HVR_* / VMBUS_* code. */
int vmbus_send(struct vmbus_channel *ch, const void *buf, uint32_t len, uint64_t trans_id,
	       uint16_t flags);
/* Wait for the next packet. Interrupt-driven when `poll` is false: first a `sti; nop; cli`
 * window takes the interrupts that are pending (the caller runs with IF=0; a kernel running with
 * IF=1 would have taken them already), then, while the ring is empty, interrupt_mask is cleared,
 * the ring re-checked and `sti; hlt` waits for the channel's event. Polling when `poll` is true:
 * interrupt_mask set, spinning on the ring. The packet stays in the ring until
 * vmbus_recv_done(). HVR_OK or HVR_EBROKEN.
 * On kvm_pvm the `sti; nop; cli` window admits nothing (measured: 0 of 100 pending self-IPIs,
 * also with 5 nops; all 100 when the window contains an exit): emulated ring 0 gets interrupts
 * only at a VM entry, i.e. after an exit or in `hlt`. Correctness never depends on it: the ring
 * is re-checked after every unmask and wake-up, and events only count wake-ups. */
int vmbus_recv(struct vmbus_channel *ch, struct hvr_pkt *pkt, bool poll);
/* Consume what vmbus_recv() returned (commit) and signal the host if it waits for space. */
int vmbus_recv_done(struct vmbus_channel *ch);

/* Hand the open channel's rings to ring 3: opens the ring area to ring 3 (hv_user_map), copies
 * the views into *u (user-accessible memory) and marks the channel VMBUS_CH_USER (the kernel
 * then leaves the rings alone; its interrupt handler only counts events). */
int vmbus_channel_to_user(struct vmbus_channel *ch, struct vmbus_rings *u);
/* Take the rings back after the ring-3 task ended (the views' cursors continue from *u). */
int vmbus_channel_from_user(struct vmbus_channel *ch, const struct vmbus_rings *u);

/* ------------------------------------------------------------------------------------------ */
/* Ring helpers: any ring (rt/u_vmbus.c). They never signal by themselves: the return values
 * say when the host must be signalled, and vmbus_rings_kick() does it with the bare port write
 * (ring 0 code may use hv_signal_event() instead). */

/* `out %eax, $0xe4` with EAX = connection id: HvSignalEvent without the hypercall page (the
 * TSS I/O bitmap opens the port to ring 3). Returns the status the parent leaves in ECX
 * (0, or HV_STATUS_INVALID_CONNECTION_ID for an unknown id). */
static inline uint32_t vmbus_kick(uint32_t connection_id)
{
	uint32_t status = 0;
	__asm__ volatile("out %%eax, $0xe4" : "+c"(status) : "a"(connection_id) : "memory");
	return status;
}
/* vmbus_kick(r->connection_id), counted in r->kicks / r->kick_errors. */
void vmbus_rings_kick(struct vmbus_rings *r);

/* Append an in-band packet (not visible until vmbus_rings_commit()). HVR_OK, HVR_FULL, ... */
int vmbus_rings_write(struct vmbus_rings *r, const void *buf, uint32_t len, uint64_t trans_id,
		      uint16_t flags);
/* Publish what was written: 1 = the host must be signalled, 0 = not, < 0 HVR_EBROKEN. */
int vmbus_rings_commit(struct vmbus_rings *r);
/* Next packet, in place (hvr_in_read()): HVR_OK, HVR_EMPTY, HVR_EBROKEN. */
int vmbus_rings_read(struct vmbus_rings *r, struct hvr_pkt *pkt);
/* Consume read packets: 1 = signal the host (it waits for space), 0, < 0 HVR_EBROKEN. */
int vmbus_rings_release(struct vmbus_rings *r);
/* Payload bytes [off, off + len) of a read packet compared with `expect` without copying twice:
 * in place when contiguous, else through hvr_in_copy in chunks. Returns the index of the first
 * differing byte, -1 if equal, -2 if the range is not in the packet. */
long vmbus_rings_payload_cmp(const struct vmbus_rings *r, const struct hvr_pkt *pkt,
			     const void *expect, uint32_t len);

#endif /* HV_VMBUS_H */
