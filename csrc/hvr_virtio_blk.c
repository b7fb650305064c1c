/*
 * hvr_virtio_blk.c - the virtio-blk data plane: a host thread that serves one split virtqueue
 * (virtio 1.x, VIRTIO_RING_F_EVENT_IDX optional) straight between guest RAM and a raw image.
 *
 * The control plane (hvkvm/vsp/virtio_blk.py: the virtio-mmio registers, feature negotiation,
 * queue set-up, reset) builds a `struct hvr_vblk`, hands it the guest RAM regions, the disk and
 * the queue's three guest-physical addresses, and starts the thread at DRIVER_OK. From then on no
 * request enters Python:
 *
 *   - the thread drains the available ring, walks each descriptor chain (copying every
 *     descriptor once, then validating it: index < queue size, no loops, no INDIRECT (not
 *     offered), no zero length, device-readable before device-writable, and [addr, addr + len)
 *     inside one guest RAM region), does preadv/pwritev between the file and guest RAM (an
 *     aligned bounce buffer when the disk is O_DIRECT and a segment is not 512-byte aligned),
 *     writes the status byte and puts the chain on the used ring;
 *   - interrupts: after publishing a used entry the thread decides with the driver's used_event
 *     (EVENT_IDX: vring_need_event) or VRING_AVAIL_F_NO_INTERRUPT, sets bit 0 of the interrupt
 *     status and writes the irqfd (an IOAPIC GSI: an edge, no exit);
 *   - notifications: while it finds work, and for `spin_us` after the last request, it polls the
 *     available ring with notifications off (EVENT_IDX: avail_event left behind, so the driver's
 *     vring_need_event says no; otherwise VRING_USED_F_NO_NOTIFY); before sleeping it publishes
 *     avail_event = last_avail_idx (or clears NO_NOTIFY), re-checks the ring after a full fence
 *     and sleeps in poll() on the ioeventfd of QueueNotify.
 *
 * A malformed chain or ring (anything that is not one request's own data error) breaks the
 * device the way QEMU's virtio_error does: the thread stops touching the rings, records why
 * (hvr_vblk_broken), sets bit 1 of the interrupt status (configuration change) and raises the
 * interrupt; the control plane then shows DEVICE_NEEDS_RESET in Status. A request whose chain is
 * well formed but asks for something the disk cannot do (a range past the end, a length that is
 * not whole sectors, a write to a read-only disk, an I/O error) completes with
 * VIRTIO_BLK_S_IOERR; an unknown type with VIRTIO_BLK_S_UNSUPP. No guest address is ever used
 * before it was checked against the RAM regions, so a hostile driver cannot make the host touch
 * memory outside guest RAM.
 *
 * Built on demand as a shared library (hvkvm/vsp/virtio_blk.py, ctypes); x86-64 little endian
 * (virtio 1.x rings are little endian), gcc atomics for the ring indexes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define HVR_VBLK_MAX_REGIONS 8
#define HVR_VBLK_MAX_QSIZE 32768u
#define HVR_VBLK_SECTOR 512u
#define HVR_VBLK_ID_BYTES 20
#define HVR_VBLK_DIRECT_ALIGN 512u

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY 1

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define HVR_VBLK_RO 1u
#define HVR_VBLK_DIRECT 2u

#define HVR_VBLK_ISR_USED 1u
#define HVR_VBLK_ISR_CONFIG 2u

/* Why the device broke (hvr_vblk_broken); a, b name the values involved. */
enum hvr_vblk_broken {
	HVR_VBLK_OK = 0,
	HVR_VBLK_BROKEN_AVAIL_IDX = 1,   /* avail idx moved by more than the queue size: a, b = idx, last */
	HVR_VBLK_BROKEN_HEAD = 2,        /* an avail ring entry >= queue size: a = head */
	HVR_VBLK_BROKEN_NEXT = 3,        /* a descriptor's next >= queue size: a = next */
	HVR_VBLK_BROKEN_LOOP = 4,        /* a chain longer than the queue (a loop) */
	HVR_VBLK_BROKEN_RANGE = 5,       /* [addr, addr+len) not inside guest RAM: a = addr, b = len */
	HVR_VBLK_BROKEN_INDIRECT = 6,    /* VIRTQ_DESC_F_INDIRECT (not offered) */
	HVR_VBLK_BROKEN_ZERO_LEN = 7,    /* a zero-length descriptor */
	HVR_VBLK_BROKEN_ORDER = 8,       /* device-readable after device-writable */
	HVR_VBLK_BROKEN_HEADER = 9,      /* fewer than 16 device-readable bytes: a = bytes */
	HVR_VBLK_BROKEN_STATUS = 10,     /* no device-writable byte for the status */
};

struct hvr_vblk_stats {
	uint64_t requests, reads, writes, flushes, get_ids, unsupported, io_errors;
	uint64_t bytes_read, bytes_written;
	uint64_t notifies;              /* guest kicks (ioeventfd counts) */
	uint64_t sleeps;                /* times the thread slept for a kick */
	uint64_t interrupts;            /* irqfd writes for used buffers */
	uint64_t interrupts_suppressed; /* used buffers published without one */
	uint64_t batches;               /* ring scans that found requests */
	uint64_t bounced;               /* O_DIRECT requests through the bounce buffer */
	uint64_t config_interrupts;     /* configuration-change interrupts (broken) */
	uint64_t last_irq;              /* the last used-buffer interrupt: used idx | event << 16
					 * (EVENT_IDX) | avail flags << 32 */
};

struct vq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vq_used_elem {
	uint32_t id;
	uint32_t len;
};

struct hvr_vblk_region {
	uint64_t gpa;
	uint64_t size;
	uint8_t *host;
};

struct hvr_vblk {
	struct hvr_vblk_region regions[HVR_VBLK_MAX_REGIONS];
	uint32_t nregions;

	int disk_fd;
	uint32_t flags;                 /* HVR_VBLK_RO | HVR_VBLK_DIRECT */
	uint64_t capacity;              /* 512-byte sectors */
	uint8_t id[HVR_VBLK_ID_BYTES];

	/* the queue */
	uint32_t num;                   /* 0: not set */
	uint32_t event_idx;
	volatile struct vq_desc *desc;
	volatile uint16_t *avail;       /* flags, idx, ring[num], used_event */
	volatile uint16_t *used_hdr;    /* flags, idx */
	volatile struct vq_used_elem *used_ring;
	volatile uint16_t *avail_event; /* after used_ring[num] */
	uint16_t last_avail;
	uint16_t used_idx;

	/* the thread */
	int kick_fd, irq_fd, stop_fd;
	uint32_t spin_us;
	int running;
	pthread_t thread;

	/* shared with the control plane */
	uint32_t isr;                   /* HVR_VBLK_ISR_* (atomics) */
	uint32_t broken;                /* enum hvr_vblk_broken (atomics) */
	uint64_t broken_a, broken_b;
	uint32_t broken_head;

	struct hvr_vblk_stats stats;

	struct iovec *iov;              /* num entries */
	uint8_t *bounce;
	size_t bounce_size;
};

/* ------------------------------------------------------------------------------------------ */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Host address of [gpa, gpa + len) when it lies inside one RAM region, else NULL. len > 0. */
static uint8_t *translate(const struct hvr_vblk *p, uint64_t gpa, uint64_t len)
{
	for (uint32_t i = 0; i < p->nregions; i++) {
		const struct hvr_vblk_region *r = &p->regions[i];

		if (gpa >= r->gpa && len <= r->size && gpa - r->gpa <= r->size - len)
			return r->host + (gpa - r->gpa);
	}
	return NULL;
}

static void raise_irq(struct hvr_vblk *p, uint32_t bit)
{
	uint64_t one = 1;

	__atomic_fetch_or(&p->isr, bit, __ATOMIC_SEQ_CST);
	if (p->irq_fd >= 0 && write(p->irq_fd, &one, sizeof(one)) < 0) {
		/* an eventfd only refuses at 2^64-2 pending counts: nothing to do */
	}
}

static int set_broken(struct hvr_vblk *p, uint32_t why, uint64_t a, uint64_t b, uint32_t head)
{
	uint32_t none = HVR_VBLK_OK;

	p->broken_a = a;
	p->broken_b = b;
	p->broken_head = head;
	if (__atomic_compare_exchange_n(&p->broken, &none, why, 0, __ATOMIC_SEQ_CST,
					__ATOMIC_SEQ_CST)) {
		p->stats.config_interrupts++;
		raise_irq(p, HVR_VBLK_ISR_CONFIG);
	}
	return -1;
}

static inline uint16_t load16(volatile uint16_t *a)
{
	return __atomic_load_n(a, __ATOMIC_ACQUIRE);
}

/* vring_need_event() of the virtio spec. */
static inline int need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
	return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

/* ------------------------------------------------------------------------------------------ */
/* I/O between the file and a list of guest segments. */

static int direct_ok(const struct hvr_vblk *p, const struct iovec *iov, int n, uint64_t off)
{
	if (!(p->flags & HVR_VBLK_DIRECT))
		return 1;
	if (off % HVR_VBLK_DIRECT_ALIGN)
		return 0;
	for (int i = 0; i < n; i++)
		if ((uintptr_t)iov[i].iov_base % HVR_VBLK_DIRECT_ALIGN ||
		    iov[i].iov_len % HVR_VBLK_DIRECT_ALIGN)
			return 0;
	return 1;
}

/* preadv/pwritev until done. 0, or -1 (an error, or end of file). */
static int rw_all(int fd, struct iovec *iov, int n, uint64_t off, int is_write)
{
	while (n > 0) {
		ssize_t got = is_write ? pwritev(fd, iov, n > 1024 ? 1024 : n, (off_t)off)
				       : preadv(fd, iov, n > 1024 ? 1024 : n, (off_t)off);

		if (got < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (got == 0)
			return -1;
		off += (uint64_t)got;
		while (n > 0 && (size_t)got >= iov->iov_len) {
			got -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0 && got) {
			iov->iov_base = (uint8_t *)iov->iov_base + got;
			iov->iov_len -= (size_t)got;
		}
	}
	return 0;
}

static int bounce_io(struct hvr_vblk *p, struct iovec *iov, int n, uint64_t off, uint64_t total,
		     int is_write)
{
	struct iovec one;
	uint64_t pos = 0;

	if (p->bounce_size < total) {
		void *b = NULL;

		if (posix_memalign(&b, 4096, total))
			return -1;
		free(p->bounce);
		p->bounce = b;
		p->bounce_size = total;
	}
	p->stats.bounced++;
	if (is_write)
		for (int i = 0; i < n; pos += iov[i].iov_len, i++)
			memcpy(p->bounce + pos, iov[i].iov_base, iov[i].iov_len);
	one.iov_base = p->bounce;
	one.iov_len = total;
	if (rw_all(p->disk_fd, &one, 1, off, is_write))
		return -1;
	if (!is_write)
		for (int i = 0; i < n; pos += iov[i].iov_len, i++)
			memcpy(iov[i].iov_base, p->bounce + pos, iov[i].iov_len);
	return 0;
}

static int disk_io(struct hvr_vblk *p, struct iovec *iov, int n, uint64_t off, uint64_t total,
		   int is_write)
{
	if (!direct_ok(p, iov, n, off))
		return bounce_io(p, iov, n, off, total, is_write);
	return rw_all(p->disk_fd, iov, n, off, is_write);
}

/* ------------------------------------------------------------------------------------------ */
/* One request. */

/* Serve the chain at `head`; *written = bytes put in device-writable buffers. -1: broken. */
static int handle_chain(struct hvr_vblk *p, uint16_t head, uint32_t *written)
{
	struct iovec *iov = p->iov;
	int nr = 0, nw = 0, first_w = -1;
	uint64_t rbytes = 0, wbytes = 0;
	uint32_t i = head, count = 0;
	uint8_t hdr[16], *status;
	uint32_t type;
	uint64_t sector;
	uint8_t st = VIRTIO_BLK_S_OK;

	if (head >= p->num)
		return set_broken(p, HVR_VBLK_BROKEN_HEAD, head, p->num, head);
	for (;;) {
		struct vq_desc d;
		uint8_t *host;

		if (++count > p->num)
			return set_broken(p, HVR_VBLK_BROKEN_LOOP, count, p->num, head);
		/* copy once, then validate the copy */
		d.addr = p->desc[i].addr;
		d.len = p->desc[i].len;
		d.flags = p->desc[i].flags;
		d.next = p->desc[i].next;
		if (d.flags & VIRTQ_DESC_F_INDIRECT)
			return set_broken(p, HVR_VBLK_BROKEN_INDIRECT, i, d.flags, head);
		if (!d.len)
			return set_broken(p, HVR_VBLK_BROKEN_ZERO_LEN, i, d.addr, head);
		host = translate(p, d.addr, d.len);
		if (!host)
			return set_broken(p, HVR_VBLK_BROKEN_RANGE, d.addr, d.len, head);
		if (d.flags & VIRTQ_DESC_F_WRITE) {
			if (first_w < 0)
				first_w = nr + nw;
			nw++;
			wbytes += d.len;
		} else {
			if (nw)
				return set_broken(p, HVR_VBLK_BROKEN_ORDER, i, d.flags, head);
			nr++;
			rbytes += d.len;
		}
		iov[count - 1].iov_base = host;
		iov[count - 1].iov_len = d.len;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			break;
		if (d.next >= p->num)
			return set_broken(p, HVR_VBLK_BROKEN_NEXT, d.next, p->num, head);
		i = d.next;
	}
	if (rbytes < sizeof(hdr))
		return set_broken(p, HVR_VBLK_BROKEN_HEADER, rbytes, 0, head);
	if (!nw)
		return set_broken(p, HVR_VBLK_BROKEN_STATUS, 0, 0, head);

	/* The header: the first 16 device-readable bytes, wherever the driver split them. */
	{
		uint32_t got = 0;
		int k = 0;

		while (got < sizeof(hdr)) {
			uint32_t take = (uint32_t)iov[k].iov_len;

			if (take > sizeof(hdr) - got)
				take = sizeof(hdr) - got;
			memcpy(hdr + got, iov[k].iov_base, take);
			got += take;
			if (take == iov[k].iov_len) {
				k++;
			} else {
				/* the rest of this segment is data */
				iov[k].iov_base = (uint8_t *)iov[k].iov_base + take;
				iov[k].iov_len -= take;
			}
		}
		/* drop the consumed segments from the readable list */
		if (k) {
			memmove(iov, iov + k, sizeof(*iov) * (size_t)(nr + nw - k));
			nr -= k;
			first_w -= k;
		}
		rbytes -= sizeof(hdr);
	}
	memcpy(&type, hdr, 4);
	memcpy(&sector, hdr + 8, 8);

	/* The status: the last device-writable byte. */
	{
		struct iovec *last = &iov[first_w + nw - 1];

		status = (uint8_t *)last->iov_base + last->iov_len - 1;
		last->iov_len--;
		if (!last->iov_len)
			nw--;
		wbytes--;
	}

	*written = 0;
	p->stats.requests++;
	switch (type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT: {
		int is_write = type == VIRTIO_BLK_T_OUT;
		uint64_t bytes = is_write ? rbytes : wbytes;
		struct iovec *seg = is_write ? iov : iov + first_w;
		int nseg = is_write ? nr : nw;
		uint64_t nsect = bytes / HVR_VBLK_SECTOR;

		if (is_write)
			p->stats.writes++;
		else
			p->stats.reads++;
		if (bytes % HVR_VBLK_SECTOR || sector > p->capacity || nsect > p->capacity - sector ||
		    (is_write && (p->flags & HVR_VBLK_RO))) {
			st = VIRTIO_BLK_S_IOERR;
		} else if (bytes && disk_io(p, seg, nseg, sector * HVR_VBLK_SECTOR, bytes, is_write)) {
			st = VIRTIO_BLK_S_IOERR;
		} else if (is_write) {
			p->stats.bytes_written += bytes;
		} else {
			p->stats.bytes_read += bytes;
			*written = (uint32_t)bytes;
		}
		break;
	}
	case VIRTIO_BLK_T_FLUSH:
		p->stats.flushes++;
		if (fdatasync(p->disk_fd))
			st = VIRTIO_BLK_S_IOERR;
		break;
	case VIRTIO_BLK_T_GET_ID: {
		uint32_t left = HVR_VBLK_ID_BYTES;
		const uint8_t *src = p->id;

		p->stats.get_ids++;
		for (int k = first_w; k < first_w + nw && left; k++) {
			uint32_t take = iov[k].iov_len < left ? (uint32_t)iov[k].iov_len : left;

			memcpy(iov[k].iov_base, src, take);
			src += take;
			left -= take;
			*written += take;
		}
		break;
	}
	default:
		p->stats.unsupported++;
		st = VIRTIO_BLK_S_UNSUPP;
		break;
	}
	if (st == VIRTIO_BLK_S_IOERR)
		p->stats.io_errors++;
	*status = st;
	*written += 1;
	return 0;
}

static void publish_used(struct hvr_vblk *p, uint16_t head, uint32_t written)
{
	uint16_t old = p->used_idx;
	volatile struct vq_used_elem *e = &p->used_ring[old % p->num];
	int need;
	uint16_t ev = 0, flags = 0;

	e->id = head;
	e->len = written;
	p->used_idx = (uint16_t)(old + 1);
	__atomic_store_n(&p->used_hdr[1], p->used_idx, __ATOMIC_RELEASE);
	/* the driver stores used_event then loads used->idx; we store idx then load used_event */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (p->event_idx) {
		ev = load16(&p->avail[2 + p->num]);
		need = need_event(ev, p->used_idx, old);
	} else {
		flags = load16(&p->avail[0]);
		need = !(flags & VIRTQ_AVAIL_F_NO_INTERRUPT);
	}
	if (need) {
		p->stats.interrupts++;
		p->stats.last_irq = p->used_idx | (uint64_t)ev << 16 | (uint64_t)flags << 32;
		raise_irq(p, HVR_VBLK_ISR_USED);
	} else {
		p->stats.interrupts_suppressed++;
	}
}

/* Serve everything available. Returns requests served, or -1 once broken. */
static int process(struct hvr_vblk *p)
{
	uint16_t avail_idx, pending;
	int done = 0;

	if (__atomic_load_n(&p->broken, __ATOMIC_ACQUIRE))
		return -1;
	avail_idx = load16(&p->avail[1]);
	pending = (uint16_t)(avail_idx - p->last_avail);
	if (!pending)
		return 0;
	if (pending > p->num)
		return set_broken(p, HVR_VBLK_BROKEN_AVAIL_IDX, avail_idx, p->last_avail, 0);
	while (p->last_avail != avail_idx) {
		uint16_t head = p->avail[2 + p->last_avail % p->num];
		uint32_t written = 0;

		if (handle_chain(p, head, &written))
			return -1;
		p->last_avail++;
		publish_used(p, head, written);
		done++;
	}
	p->stats.batches++;
	return done;
}

/* Notifications off while the thread polls; on (with a re-check) before it sleeps. */
static void notify_off(struct hvr_vblk *p)
{
	if (!p->event_idx)
		__atomic_store_n(&p->used_hdr[0], VIRTQ_USED_F_NO_NOTIFY, __ATOMIC_RELEASE);
	/* EVENT_IDX: avail_event stays where it was; once the driver is past it, no kicks */
}

static void notify_on(struct hvr_vblk *p)
{
	if (p->event_idx)
		__atomic_store_n(p->avail_event, p->last_avail, __ATOMIC_RELEASE);
	else
		__atomic_store_n(&p->used_hdr[0], 0, __ATOMIC_RELEASE);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static void drain_kicks(struct hvr_vblk *p)
{
	uint64_t v;

	if (read(p->kick_fd, &v, sizeof(v)) == sizeof(v))
		p->stats.notifies += v;
}

static void *thread_main(void *arg)
{
	struct hvr_vblk *p = arg;
	uint64_t idle_since = now_ns(), spin_ns = (uint64_t)p->spin_us * 1000;

	notify_off(p);
	for (;;) {
		struct pollfd fds[2];
		int n;

		if (!__atomic_load_n(&p->running, __ATOMIC_ACQUIRE))
			break;
		n = process(p);
		if (n > 0) {
			idle_since = now_ns();
			continue;
		}
		if (n == 0 && now_ns() - idle_since < spin_ns) {
			__builtin_ia32_pause();
			continue;
		}
		if (n == 0) {
			notify_on(p);
			if (load16(&p->avail[1]) != p->last_avail) {
				notify_off(p);
				continue;
			}
			p->stats.sleeps++;
		}
		/* asleep: a kick, or the stop (a broken device only waits for the stop) */
		fds[0].fd = p->stop_fd;
		fds[0].events = POLLIN;
		fds[1].fd = p->kick_fd;
		fds[1].events = POLLIN;
		if (poll(fds, n < 0 ? 1 : 2, -1) < 0 && errno != EINTR)
			break;
		if (fds[0].revents)
			break;
		if (n == 0 && fds[1].revents) {
			drain_kicks(p);
			notify_off(p);
			idle_since = now_ns();
		}
	}
	drain_kicks(p);
	return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* The API the control plane uses (ctypes). */

uint32_t hvr_vblk_stats_size(void)
{
	return sizeof(struct hvr_vblk_stats);
}

struct hvr_vblk *hvr_vblk_new(void)
{
	struct hvr_vblk *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->disk_fd = p->kick_fd = p->irq_fd = p->stop_fd = -1;
	return p;
}

int hvr_vblk_add_region(struct hvr_vblk *p, uint64_t gpa, uint64_t size, void *host)
{
	if (p->nregions >= HVR_VBLK_MAX_REGIONS || !size || !host || gpa + size < gpa)
		return -EINVAL;
	p->regions[p->nregions].gpa = gpa;
	p->regions[p->nregions].size = size;
	p->regions[p->nregions].host = host;
	p->nregions++;
	return 0;
}

int hvr_vblk_set_disk(struct hvr_vblk *p, int fd, uint64_t sectors, uint32_t flags,
		      const uint8_t *id)
{
	if (fd < 0 || p->running)
		return -EINVAL;
	p->disk_fd = fd;
	p->capacity = sectors;
	p->flags = flags;
	memset(p->id, 0, sizeof(p->id));
	if (id)
		memcpy(p->id, id, HVR_VBLK_ID_BYTES);
	return 0;
}

/* Queue of `num` entries at the three GPAs. 0, -EINVAL (size, alignment), -ERANGE (not RAM). */
int hvr_vblk_set_queue(struct hvr_vblk *p, uint32_t num, uint64_t desc, uint64_t avail,
		       uint64_t used, uint32_t event_idx)
{
	uint8_t *d, *a, *u;
	struct iovec *iov;

	if (p->running)
		return -EBUSY;
	if (!num || num > HVR_VBLK_MAX_QSIZE || (num & (num - 1)))
		return -EINVAL;
	if (desc % 16 || avail % 2 || used % 4)
		return -EINVAL;
	d = translate(p, desc, 16ull * num);
	a = translate(p, avail, 6ull + 2ull * num);
	u = translate(p, used, 6ull + 8ull * num);
	if (!d || !a || !u)
		return -ERANGE;
	iov = realloc(p->iov, sizeof(*iov) * num);
	if (!iov)
		return -ENOMEM;
	p->iov = iov;
	p->num = num;
	p->event_idx = event_idx != 0;
	p->desc = (volatile struct vq_desc *)d;
	p->avail = (volatile uint16_t *)a;
	p->used_hdr = (volatile uint16_t *)u;
	p->used_ring = (volatile struct vq_used_elem *)(u + 4);
	p->avail_event = (volatile uint16_t *)(u + 4 + 8ull * num);
	p->last_avail = 0;
	p->used_idx = 0;
	return 0;
}

/* Start the thread: kick_fd (non-blocking eventfd of the QueueNotify ioeventfd), irq_fd (irqfd,
 * or -1: interrupt status only). */
int hvr_vblk_start(struct hvr_vblk *p, int kick_fd, int irq_fd, uint32_t spin_us)
{
	int rc;

	if (p->running)
		return -EBUSY;
	if (!p->num || p->disk_fd < 0 || kick_fd < 0)
		return -EINVAL;
	p->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (p->stop_fd < 0)
		return -errno;
	p->kick_fd = kick_fd;
	p->irq_fd = irq_fd;
	p->spin_us = spin_us;
	__atomic_store_n(&p->running, 1, __ATOMIC_RELEASE);
	rc = pthread_create(&p->thread, NULL, thread_main, p);
	if (rc) {
		p->running = 0;
		close(p->stop_fd);
		p->stop_fd = -1;
		return -rc;
	}
	return 0;
}

void hvr_vblk_stop(struct hvr_vblk *p)
{
	uint64_t one = 1;

	if (!p->running)
		return;
	__atomic_store_n(&p->running, 0, __ATOMIC_RELEASE);
	if (write(p->stop_fd, &one, sizeof(one)) < 0) {
		/* cannot fail for a fresh eventfd */
	}
	pthread_join(p->thread, NULL);
	close(p->stop_fd);
	p->stop_fd = -1;
}

/* Device reset: stop, forget the queue, the interrupt status and a broken state. */
void hvr_vblk_reset(struct hvr_vblk *p)
{
	hvr_vblk_stop(p);
	p->num = 0;
	p->desc = NULL;
	p->avail = p->used_hdr = p->avail_event = NULL;
	p->used_ring = NULL;
	p->last_avail = p->used_idx = 0;
	__atomic_store_n(&p->isr, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&p->broken, 0, __ATOMIC_SEQ_CST);
	p->broken_a = p->broken_b = 0;
	p->broken_head = 0;
}

/* Serve what is available once, in the caller's thread (tests; only while not running). */
int hvr_vblk_poll(struct hvr_vblk *p)
{
	if (p->running || !p->num)
		return -EBUSY;
	return process(p);
}

uint32_t hvr_vblk_isr(struct hvr_vblk *p)
{
	return __atomic_load_n(&p->isr, __ATOMIC_SEQ_CST);
}

void hvr_vblk_isr_ack(struct hvr_vblk *p, uint32_t bits)
{
	__atomic_fetch_and(&p->isr, ~bits, __ATOMIC_SEQ_CST);
}

/* Raise bit `bit` of the interrupt status and the interrupt (the control plane's config change). */
void hvr_vblk_raise(struct hvr_vblk *p, uint32_t bit, int irq_fd)
{
	uint64_t one = 1;

	__atomic_fetch_or(&p->isr, bit, __ATOMIC_SEQ_CST);
	if (irq_fd >= 0 && write(irq_fd, &one, sizeof(one)) < 0) {
		/* see raise_irq */
	}
}

uint32_t hvr_vblk_broken(struct hvr_vblk *p, uint64_t *a, uint64_t *b, uint32_t *head)
{
	uint32_t why = __atomic_load_n(&p->broken, __ATOMIC_ACQUIRE);

	if (a)
		*a = p->broken_a;
	if (b)
		*b = p->broken_b;
	if (head)
		*head = p->broken_head;
	return why;
}

void hvr_vblk_get_stats(struct hvr_vblk *p, struct hvr_vblk_stats *out)
{
	memcpy(out, &p->stats, sizeof(*out));
}

uint32_t hvr_vblk_indexes(struct hvr_vblk *p)
{
	return (uint32_t)p->last_avail | (uint32_t)p->used_idx << 16;
}

void hvr_vblk_free(struct hvr_vblk *p)
{
	if (!p)
		return;
	hvr_vblk_stop(p);
	free(p->iov);
	free(p->bounce);
	free(p);
}
