/*
 * hvr_plane.h - a channel's data plane as a host C thread (hosted: pthreads, poll, eventfd).
 *
 * Steady-state I/O never enters Python: the thread drains the guest's send ring, hands each
 * packet to a handler (echo, storage, network), and posts replies on the guest's receive ring.
 * Under load it polls with the ring's interrupt_mask set, so the guest never kicks; when idle for
 * `spin_us` it unmasks, re-checks, and sleeps on the kick eventfd that KVM signals on the guest's
 * HvSignalEvent (an ioeventfd: no userspace exit). It interrupts the guest by setting the
 * channel's event flag and writing the irqfd of the SINT's MSI route - the NAPI shape.
 */
#ifndef HVR_PLANE_H
#define HVR_PLANE_H

#include <pthread.h>
#include <stdint.h>

#include "vmbus_ring.h"

struct hvr_plane;

/*
 * Handle one packet (validated, not yet consumed; its bytes stay in place until the plane
 * consumes it). Return HVR_OK when done with it (the plane consumes it), HVR_FULL when the reply
 * does not fit the guest's receive ring now (set p->need to the ring bytes wanted; the packet is
 * retried after the guest frees space), or HVR_EBROKEN / another negative value to stop the
 * plane with that error (a malformed request the channel cannot survive).
 */
typedef int (*hvr_plane_handler)(struct hvr_plane *p, const struct hvr_pkt *pkt);

/*
 * A handler's "not now": it cannot take the packet until some of its own asynchronous work
 * completes (all its request slots are busy). The packet stays in the ring; the plane sleeps on
 * `wake_fd` (not on the guest's kicks) until reap() reports progress, then retries.
 */
#define HVR_PLANE_RETRY (-100)

/*
 * Optional hooks of a handler that completes work asynchronously (storage I/O on worker
 * threads). All run on the plane thread, so the receive ring keeps one writer:
 *   reap(p)     write what finished to the receive ring; returns how many (>= 0) or a negative
 *               error that stops the plane. Called before every drain pass, whose commit
 *               publishes (and signals) what reap() wrote.
 *   on_stop(p)  the thread is about to exit: wait for or cancel everything outstanding, so no
 *               work touches guest RAM once hvr_plane_stop() has returned.
 *   wake_fd     readable when reap() has something to do; polled while the plane sleeps.
 */
typedef int (*hvr_plane_reap)(struct hvr_plane *p);
typedef void (*hvr_plane_on_stop)(struct hvr_plane *p);

struct hvr_plane_stats {
	uint64_t packets;     /* packets handled */
	uint64_t bytes;       /* payload bytes handled */
	uint64_t kicks;       /* wake-ups from the guest's kick eventfd */
	uint64_t sleeps;      /* times the thread blocked */
	uint64_t signals;     /* interrupts raised to the guest */
	uint64_t full_waits;  /* times a reply waited for ring space */
	uint64_t batches;     /* drain passes that handled at least one packet */
	uint64_t retries;     /* drain passes stopped by HVR_PLANE_RETRY (no free request slot) */
	uint64_t reaped;      /* asynchronous completions posted by reap() */
};

struct hvr_plane {
	struct hvr_in in;            /* the guest's send ring */
	struct hvr_out out;          /* the guest's receive ring */
	int kick_fd;                 /* eventfd signalled by KVM on the guest's HvSignalEvent */
	int irq_fd;                  /* irqfd eventfd of the SINT's MSI route; -1: none */
	int stop_fd;                 /* eventfd owned by the plane: stop request */
	volatile uint32_t *event_flags; /* the SINT's slot in the guest's SIEFP page */
	volatile uint32_t *irq_enabled; /* the parent clears it while the SINT is masked */
	uint32_t relid;              /* event flag to set */
	uint32_t spin_us;            /* idle polling before sleeping */
	uint32_t need;               /* handler: ring bytes wanted on HVR_FULL */
	hvr_plane_handler handler;
	void *ctx;                   /* handler state */
	hvr_plane_reap reap;         /* optional (set before hvr_plane_start()); see above */
	hvr_plane_on_stop on_stop;   /* optional */
	int wake_fd;                 /* with reap: readable when it has work; -1: none */
	int blocked;                 /* the last drain stopped on HVR_PLANE_RETRY */
	struct hvr_plane_stats stats;
	volatile int stop;
	int error;                   /* why the plane stopped on its own (negative), or 0 */
	uint32_t broken;             /* enum hvr_broken of the ring that broke, or 0 */
	int running;
	pthread_t thread;
};

/*
 * Attach both rings and set the descriptors. `in_hdr`/`out_hdr` are the host (double-mapped when
 * `flags` has HVR_DOUBLE_MAPPED) views of the guest's send and receive rings. Returns HVR_OK,
 * HVR_EINVAL or HVR_EBROKEN (a ring is corrupt already), or -errno when the stop eventfd cannot
 * be made.
 */
int hvr_plane_init(struct hvr_plane *p, struct hv_ring_buffer *in_hdr, uint32_t in_size,
		   struct hv_ring_buffer *out_hdr, uint32_t out_size, uint32_t flags, int kick_fd,
		   int irq_fd, volatile uint32_t *event_flags, volatile uint32_t *irq_enabled,
		   uint32_t relid, uint32_t spin_us, hvr_plane_handler handler, void *ctx);

/* Start the thread. 0 or -errno. */
int hvr_plane_start(struct hvr_plane *p);

/* Ask the thread to stop and join it; closes the stop eventfd. Idempotent. */
void hvr_plane_stop(struct hvr_plane *p);

/* Raise the channel's interrupt in the guest (event flag, then the irqfd). */
void hvr_plane_signal_guest(struct hvr_plane *p);

/*
 * The plane's steps, for a channel thread of its own (hvr_net.c's also serves a TAP):
 *   hvr_plane_serve   hand up to a batch of the guest's packets to p->handler, consuming each
 *                     it takes; stops early on a full receive ring (pending_send_sz set) or
 *                     HVR_PLANE_RETRY (p->blocked). Indices are not published. Returns how many,
 *                     or a negative error that stops the plane.
 *   hvr_plane_commit  publish both rings' indices and interrupt the guest where the ring
 *                     protocol asks for it. 0 or a negative error.
 */
int hvr_plane_serve(struct hvr_plane *p);
int hvr_plane_commit(struct hvr_plane *p);

/* CLOCK_MONOTONIC in ns (idle spinning). */
uint64_t hvr_plane_now_ns(void);

/* Read a nonblocking eventfd until it is empty. */
void hvr_plane_drain_eventfd(int fd);

/* trans_id bit the echo device treats as "one way": consumed, not answered (throughput runs). */
#define HVR_ECHO_ONE_WAY (1ull << 63)

/* The echo handler: answer every in-band packet with the same payload and trans_id, except
 * one-way packets (HVR_ECHO_ONE_WAY in trans_id), which are only consumed. */
int hvr_echo_handler(struct hvr_plane *p, const struct hvr_pkt *pkt);

#endif
