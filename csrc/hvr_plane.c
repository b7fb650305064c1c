/*
 * hvr_plane.c - the channel data-plane thread (see hvr_plane.h).
 */
#include "hvr_plane.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "hv_synic.h"

/* Packets handled between commits: publishing read/write indices once per batch keeps the
 * cache lines the guest polls quiet, as Linux's hv_pkt_iter does. */
#define HVR_PLANE_BATCH 64

uint64_t hvr_plane_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void cpu_relax(void)
{
	__builtin_ia32_pause();
}

void hvr_plane_drain_eventfd(int fd)
{
	uint64_t v;

	while (read(fd, &v, sizeof(v)) == sizeof(v))
		;
}

void hvr_plane_signal_guest(struct hvr_plane *p)
{
	uint64_t one = 1;

	/* The flag first (hvr_event_set_bit is a SEQ_CST RMW): the guest's ISR scans the flags
	 * after the interrupt, so the bit must be visible before the MSI can be. */
	hvr_event_set_bit(p->event_flags, p->relid);
	p->stats.signals++;
	if (p->irq_fd >= 0 && (!p->irq_enabled || __atomic_load_n(p->irq_enabled, __ATOMIC_ACQUIRE)))
		(void)!write(p->irq_fd, &one, sizeof(one));
}

int hvr_plane_init(struct hvr_plane *p, struct hv_ring_buffer *in_hdr, uint32_t in_size,
		   struct hv_ring_buffer *out_hdr, uint32_t out_size, uint32_t flags, int kick_fd,
		   int irq_fd, volatile uint32_t *event_flags, volatile uint32_t *irq_enabled,
		   uint32_t relid, uint32_t spin_us, hvr_plane_handler handler, void *ctx)
{
	int rc;

	memset(p, 0, sizeof(*p));
	p->stop_fd = -1;
	p->wake_fd = -1;
	if (!handler || !event_flags || kick_fd < 0 || relid >= 2048)
		return HVR_EINVAL;
	rc = hvr_in_attach(&p->in, in_hdr, in_size, flags);
	if (rc)
		return rc;
	rc = hvr_out_attach(&p->out, out_hdr, out_size, flags);
	if (rc)
		return rc;
	p->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (p->stop_fd < 0)
		return -errno;
	p->kick_fd = kick_fd;
	p->irq_fd = irq_fd;
	p->event_flags = event_flags;
	p->irq_enabled = irq_enabled;
	p->relid = relid;
	p->spin_us = spin_us;
	p->handler = handler;
	p->ctx = ctx;
	return HVR_OK;
}

int hvr_plane_serve(struct hvr_plane *p)
{
	struct hvr_pkt pkt;
	int n = 0, rc;

	p->blocked = 0;
	while (n < HVR_PLANE_BATCH) {
		rc = hvr_in_peek(&p->in, &pkt);
		if (rc == HVR_EMPTY)
			break;
		if (rc < 0)
			return rc;
		rc = p->handler(p, &pkt);
		if (rc == HVR_FULL) {
			p->stats.full_waits++;
			/* pending_send_sz asks the guest to kick us when it has read enough;
			 * 1 means it already fits. */
			rc = hvr_out_request_space(&p->out, p->need);
			if (rc == 1)
				continue;
			if (rc < 0)
				return rc;
			break;
		}
		if (rc == HVR_PLANE_RETRY) {
			p->stats.retries++;
			p->blocked = 1;
			break;
		}
		if (rc < 0)
			return rc;
		rc = hvr_in_read(&p->in, &pkt);
		if (rc < 0)
			return rc;
		p->stats.packets++;
		p->stats.bytes += (uint64_t)(pkt.len8 - pkt.offset8) * 8u;
		n++;
	}
	return n;
}

int hvr_plane_commit(struct hvr_plane *p)
{
	int sig = hvr_out_commit(&p->out);

	if (sig < 0)
		return sig;
	if (sig)
		hvr_plane_signal_guest(p);
	sig = hvr_in_commit(&p->in);
	if (sig < 0)
		return sig;
	if (sig)
		hvr_plane_signal_guest(p);
	return 0;
}

/* One pass: serve a batch, then publish it. Returns how many, or a negative error (plane stops). */
static int drain(struct hvr_plane *p)
{
	int n = hvr_plane_serve(p), rc;

	if (n < 0)
		return n;
	rc = hvr_plane_commit(p);
	if (rc < 0)
		return rc;
	if (n)
		p->stats.batches++;
	return n;
}

static void *plane_main(void *arg)
{
	struct hvr_plane *p = arg;
	uint64_t idle_since = hvr_plane_now_ns();
	struct pollfd fds[3];
	int n, r, nfds;

	/* Busy: the guest need not kick while we poll. */
	hvr_in_set_interrupt_mask(&p->in, 1);
	while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
		r = p->reap ? p->reap(p) : 0;
		if (r < 0) {
			p->error = r;
			break;
		}
		p->stats.reaped += (uint64_t)r;
		n = drain(p);
		if (n < 0) {
			p->error = n;
			break;
		}
		if (n > 0 || r > 0) {
			idle_since = hvr_plane_now_ns();
			continue;
		}
		if (hvr_plane_now_ns() - idle_since < (uint64_t)p->spin_us * 1000u) {
			cpu_relax();
			continue;
		}
		if (p->blocked && p->wake_fd >= 0) {
			/* Every request slot is busy: only a completion lets the next packet in, so
			 * sleep on those (the ring stays masked: we know it holds work). */
			fds[0].fd = p->wake_fd;
			fds[0].events = POLLIN;
			fds[1].fd = p->stop_fd;
			fds[1].events = POLLIN;
			p->stats.sleeps++;
			if (poll(fds, 2, -1) < 0 && errno != EINTR) {
				p->error = -errno;
				break;
			}
			/* Drained before reap() looks: a completion queued after this read
			 * writes the eventfd again, so none is left unseen. */
			if (fds[0].revents & POLLIN)
				hvr_plane_drain_eventfd(p->wake_fd);
			idle_since = hvr_plane_now_ns();
			continue;
		}
		/* Idle: unmask, then look once more (hvr_in_unmask fences between the two), so a
		 * packet written before the guest saw the mask cleared is not left unsignalled. */
		n = hvr_in_unmask(&p->in);
		if (n < 0) {
			p->error = n;
			break;
		}
		if (n == 0) {
			fds[0].fd = p->kick_fd;
			fds[0].events = POLLIN;
			fds[1].fd = p->stop_fd;
			fds[1].events = POLLIN;
			nfds = 2;
			if (p->wake_fd >= 0) {
				/* completions of asynchronous work wake us as the guest's kicks do */
				fds[2].fd = p->wake_fd;
				fds[2].events = POLLIN;
				nfds = 3;
			}
			p->stats.sleeps++;
			if (poll(fds, (nfds_t)nfds, -1) < 0 && errno != EINTR) {
				p->error = -errno;
				break;
			}
			if (fds[0].revents & POLLIN) {
				hvr_plane_drain_eventfd(p->kick_fd);
				p->stats.kicks++;
			}
			if (nfds == 3 && (fds[2].revents & POLLIN))
				hvr_plane_drain_eventfd(p->wake_fd);
		}
		hvr_in_set_interrupt_mask(&p->in, 1);
		idle_since = hvr_plane_now_ns();
	}
	if (p->error == HVR_EBROKEN)
		p->broken = p->in.r.broken ? p->in.r.broken : p->out.r.broken;
	if (p->on_stop)
		p->on_stop(p);
	/* Leave the ring unmasked so a guest that keeps writing still kicks (nobody listens, but
	 * a later plane on the same ring starts from a sane state). */
	hvr_in_set_interrupt_mask(&p->in, 0);
	return NULL;
}

int hvr_plane_start(struct hvr_plane *p)
{
	int rc = pthread_create(&p->thread, NULL, plane_main, p);

	if (rc)
		return -rc;
	p->running = 1;
	return 0;
}

void hvr_plane_stop(struct hvr_plane *p)
{
	uint64_t one = 1;

	if (p->running) {
		__atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
		(void)!write(p->stop_fd, &one, sizeof(one));
		pthread_join(p->thread, NULL);
		p->running = 0;
	}
	if (p->stop_fd >= 0) {
		close(p->stop_fd);
		p->stop_fd = -1;
	}
}

int hvr_echo_handler(struct hvr_plane *p, const struct hvr_pkt *pkt)
{
	const void *payload;
	uint32_t len;
	int rc;

	if (pkt->type != VM_PKT_DATA_INBAND || (pkt->trans_id & HVR_ECHO_ONE_WAY))
		return HVR_OK; /* completions, and one-way (sink) packets: nothing to echo */
	payload = hvr_in_payload(&p->in, pkt, &len);
	if (!payload)
		return HVR_EBROKEN; /* the double-mapped view is contiguous: only a broken ring */
	rc = hvr_out_write_inband(&p->out, 0, pkt->trans_id, payload, len);
	if (rc == HVR_FULL)
		p->need = hvr_packet_total(0, len);
	return rc;
}
