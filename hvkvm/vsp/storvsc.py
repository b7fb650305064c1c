"""The storvsc VSP: a synthetic SCSI controller on the VMBus, wire-compatible with Linux's
hv_storvsc (``drivers/scsi/storvsc_drv.c``), serving raw image files.

One :class:`StorvscVsp` is one controller (one channel offer of class ``HV_SCSI_GUID``); its
disks are LUNs 0, 1, ... of path 0, target 0. Per opened channel:

1. The protocol handshake runs in Python on a thread of the channel: BEGIN_INITIALIZATION,
   QUERY_PROTOCOL_VERSION (WIN10 6.2, WIN8_1 6.0, WIN8 5.1 as Linux 6.x asks, and the older WIN7
   4.2 / WIN6 2.0 with their shorter packets), QUERY_PROPERTIES (no sub-channels,
   ``max_transfer_bytes``), END_INITIALIZATION. Every request is answered by a VM_PKT_COMP packet
   with the request's trans_id carrying a vstor_packet (operation COMPLETE_IO) of the size the
   guest expects (64 bytes; 48 under pre-Windows-8 protocols, Linux's old vmscsi_size_delta).
2. Once END_INITIALIZATION is answered, the data path starts: ``plane="c"`` hands the channel to
   a C data-plane thread (``csrc/hvr_plane.c`` with the handler ``csrc/hvr_storage.c``) that
   executes SRBs with preadv/pwritev straight between the image and guest RAM and never enters
   Python; ``plane="python"`` keeps serving from the Python thread (:mod:`.scsi`), the oracle
   the C plane is tested against. The C plane's ``io``: ``"uring"`` (default) keeps up to
   ``max_inflight`` reads, writes and flushes in flight through an io_uring the plane thread
   submits to and reaps; ``"threads"`` does the same on ``io_workers`` threads (and is what
   "uring" falls back to where io_uring is unavailable); in both, page-cache hits are still
   served inline on the ring thread and completions are posted as they finish, matched by
   trans_id. ``"sync"`` runs them one at a time on the ring thread. The channel's stats say which
   runs (``io_mode``). Measured choice: BENCHMARKS.md (uring: no thread hand-off per I/O, which
   on a small, busy host is what the pool loses to).

EXECUTE_SRB: an in-band packet for commands without data, a GPA-direct packet (Linux's
``vmbus_packet_mpb_array``) for commands with data. The PFNs are checked against guest RAM and the
ranges' byte counts must add up to the SRB's ``data_transfer_length`` (at most
``max_transfer_bytes``); a request that disagrees is answered with status
STATUS_INVALID_PARAMETER and srb_status SRB_STATUS_INVALID_REQUEST, never with a host access
outside guest RAM.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import uuid

from ..memory import PAGE_SIZE, GuestMemoryError
from ..vmbus import wire as w
from ..vmbus.ring import (VM_PKT_COMP, VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_GPA_DIRECT,
                          RingBrokenError, packet_total)
from ..vmbus.server import ChannelThread, OpenChannel, Vsp
from . import scsi
from . import storvsc_wire as sw

log = logging.getLogger("hvkvm.storvsc")

#: Default largest transfer of one request (reported in QUERY_PROPERTIES and VPD 0xB0).
DEFAULT_MAX_TRANSFER = 1 << 20
#: GPA ranges accepted in one request (Linux sends one).
MAX_GPA_RANGES = 32
#: Packets handled between ring commits.
BATCH = 32
#: The C plane's outstanding requests per channel, and worker threads for io="threads".
DEFAULT_IO_WORKERS = 16
DEFAULT_MAX_INFLIGHT = 64
IO_MODES = ("uring", "threads", "sync")


def max_pfns(max_transfer_bytes: int) -> int:
    """PFNs one request may name: its bytes in whole pages, plus a partial page per range end."""
    return max_transfer_bytes // PAGE_SIZE + 2 * MAX_GPA_RANGES


class Protocol:
    """The storvsc protocol state of one channel and the answers to its requests.

    :meth:`handle` takes a packet read from the guest's ring and returns the completion payload
    (bytes) or None (nothing to answer). Shared by both planes: the C plane takes over after
    :attr:`ready` turns true and answers exactly as this class does in that state.
    """

    def __init__(self, target: scsi.ScsiTarget, memory, max_transfer_bytes: int):
        self.target = target
        self.memory = memory
        self.max_transfer_bytes = max_transfer_bytes
        self.version: int | None = None
        self.begun = False
        self.ready = False
        self.counts = {"requests": 0, "srbs": 0, "errors": 0, "invalid": 0, "full_waits": 0}

    def reply_size(self, request_len: int) -> int:
        """Bytes of vstor_packet a completion carries now."""
        if self.version is not None:
            return sw.packet_size(self.version)
        return sw.VSTOR_PACKET_SIZE if request_len >= sw.VSTOR_PACKET_SIZE else \
            sw.VSTOR_PACKET_SIZE - sw.VMSCSI_SIZE_DELTA

    @property
    def max_reply(self) -> int:
        """Ring bytes the largest completion takes (checked before a request is executed)."""
        return packet_total(sw.VSTOR_PACKET_SIZE)

    def handle(self, pkt) -> bytes | None:
        """Answer one packet (a :class:`hvkvm.vmbus.ring.Packet`)."""
        if pkt.type == VM_PKT_COMP:
            return None                       # nothing the guest completes is ours to track
        self.counts["requests"] += 1
        raw = bytes(pkt.payload[:sw.VSTOR_PACKET_SIZE])
        size = self.reply_size(len(pkt.payload))
        req = sw.vstor_packet.from_buffer_copy(raw.ljust(sw.VSTOR_PACKET_SIZE, b"\0"))
        resp = sw.vstor_packet.from_buffer_copy(bytes(req))
        resp.operation = sw.VSTOR_OPERATION_COMPLETE_IO
        resp.flags = 0
        resp.status = sw.STATUS_SUCCESS
        minimum = size if self.version is not None else \
            sw.VSTOR_PACKET_SIZE - sw.VMSCSI_SIZE_DELTA
        if len(pkt.payload) < minimum or pkt.type not in (VM_PKT_DATA_INBAND,
                                                          VM_PKT_DATA_USING_GPA_DIRECT):
            self._invalid(resp)
        else:
            self._dispatch(req, resp, pkt)
        if resp.status != sw.STATUS_SUCCESS:
            self.counts["errors"] += 1
        return bytes(resp)[:size]

    def _invalid(self, resp) -> None:
        self.counts["invalid"] += 1
        resp.status = sw.STATUS_INVALID_PARAMETER
        self._srb_result(resp, scsi.ScsiResult.invalid_request())

    def _dispatch(self, req, resp, pkt) -> None:
        op = req.operation
        if op == sw.VSTOR_OPERATION_EXECUTE_SRB:
            if not self.ready:
                resp.status = sw.STATUS_INVALID_DEVICE_STATE
                self._srb_result(resp, scsi.ScsiResult.invalid_request())
                return
            self._execute_srb(req, resp, pkt)
            return
        if op in (sw.VSTOR_OPERATION_RESET_LUN, sw.VSTOR_OPERATION_RESET_BUS,
                  sw.VSTOR_OPERATION_RESET_ADAPTER):
            return                            # requests run in order: nothing is outstanding
        if op in (sw.VSTOR_OPERATION_BEGIN_INITIALIZATION,
                  sw.VSTOR_OPERATION_QUERY_PROTOCOL_VERSION,
                  sw.VSTOR_OPERATION_QUERY_PROPERTIES, sw.VSTOR_OPERATION_END_INITIALIZATION):
            if self.ready:
                resp.status = sw.STATUS_INVALID_DEVICE_STATE
                return
            if op == sw.VSTOR_OPERATION_BEGIN_INITIALIZATION:
                self.begun = True
            elif not self.begun:
                # Linux's storvsc_channel_init always begins with BEGIN_INITIALIZATION.
                resp.status = sw.STATUS_INVALID_DEVICE_STATE
            elif op == sw.VSTOR_OPERATION_QUERY_PROTOCOL_VERSION:
                if req.version.major_minor in sw.SUPPORTED_VERSIONS:
                    self.version = req.version.major_minor
                else:
                    resp.status = sw.STATUS_REVISION_MISMATCH
            elif op == sw.VSTOR_OPERATION_QUERY_PROPERTIES:
                ctypes.memset(ctypes.addressof(resp) + sw.vstor_packet.buffer.offset, 0, 0x34)
                props = resp.storage_channel_properties
                props.max_channel_cnt = 0
                props.flags = 0               # no sub-channels
                props.max_transfer_bytes = self.max_transfer_bytes
            else:
                if self.version is None:
                    resp.status = sw.STATUS_INVALID_DEVICE_STATE
                else:
                    self.ready = True
            return
        resp.status = sw.STATUS_NOT_SUPPORTED

    @staticmethod
    def _srb_result(resp, result: scsi.ScsiResult, sense_limit: int = 0) -> None:
        srb = resp.vm_srb
        srb.srb_status = result.srb_status
        srb.scsi_status = result.scsi_status
        srb.data_transfer_length = result.transferred
        if result.sense:
            n = min(len(result.sense), sense_limit)
            ctypes.memset(ctypes.addressof(srb) + sw.vmscsi_request.sense_data.offset, 0,
                          sw.STORVSC_SENSE_BUFFER_SIZE)
            ctypes.memmove(ctypes.addressof(srb) + sw.vmscsi_request.sense_data.offset,
                           result.sense, n)
            srb.sense_info_length = n
            if n == 0:
                srb.srb_status &= ~sw.SRB_STATUS_AUTOSENSE_VALID
        else:
            srb.sense_info_length = 0

    def _execute_srb(self, req, resp, pkt) -> None:
        self.counts["srbs"] += 1
        srb = req.vm_srb
        sense_limit = min(srb.sense_info_length, sw.sense_buffer_size(self.version))
        try:
            if not 0 < srb.cdb_length <= sw.STORVSC_MAX_CMD_LEN:
                raise scsi.InvalidRequest(f"cdb_length {srb.cdb_length}")
            buf = self.guest_buffer(pkt, srb.data_transfer_length)
            result = self.target.execute(srb.path_id, srb.target_id, srb.lun,
                                         bytes(srb.cdb[:srb.cdb_length]), buf)
        except scsi.InvalidRequest:
            self._invalid(resp)
            return
        self._srb_result(resp, result, sense_limit)

    def guest_buffer(self, pkt, length: int) -> scsi.DataBuffer:
        """The request's data buffer as views of guest RAM, every PFN checked; InvalidRequest
        when the ranges disagree with ``length`` or leave guest RAM."""
        if pkt.type != VM_PKT_DATA_USING_GPA_DIRECT:
            if length:
                raise scsi.InvalidRequest("data_transfer_length without a buffer")
            return scsi.DataBuffer()
        ranges = pkt.gpa_ranges
        if length > self.max_transfer_bytes or len(ranges) > MAX_GPA_RANGES:
            raise scsi.InvalidRequest("transfer too large")
        if sum(r.byte_count for r in ranges) != length:
            raise scsi.InvalidRequest("GPA ranges disagree with data_transfer_length")
        if sum(len(r.pfns) for r in ranges) > max_pfns(self.max_transfer_bytes):
            raise scsi.InvalidRequest("too many PFNs")
        runs: list[list[int]] = []           # [gpa, length] of contiguous guest-physical bytes
        for r in ranges:
            left, off = r.byte_count, r.byte_offset
            for pfn in r.pfns:
                if left == 0:
                    break
                n = min(PAGE_SIZE - off, left)
                if pfn >= 1 << 52:
                    raise scsi.InvalidRequest("PFN beyond the physical address space")
                gpa = pfn * PAGE_SIZE + off
                if not self.memory.contains(gpa, n):
                    raise scsi.InvalidRequest(f"PFN {pfn:#x} is outside guest RAM")
                if runs and runs[-1][0] + runs[-1][1] == gpa and \
                        self.memory.contains(runs[-1][0], runs[-1][1] + n):
                    runs[-1][1] += n
                else:
                    runs.append([gpa, n])
                left -= n
                off = 0
        try:
            return scsi.DataBuffer([self.memory.view(g, n) for g, n in runs])
        except GuestMemoryError as e:
            raise scsi.InvalidRequest(str(e)) from None


class _Channel(ChannelThread):
    """One open channel: the Python thread (handshake, and the data path for plane="python")
    and, after the handshake, the C plane."""

    def __init__(self, vsp: "StorvscVsp", oc: OpenChannel):
        self.vsp = vsp
        self.oc = oc
        self.protocol = Protocol(vsp.target, oc.server.memory, vsp.max_transfer_bytes)
        self.plane = None              # CDataPlane once handed over
        self.storage = None            # its CStorage
        self.plane_error: str | None = None
        self.broken: str | None = None
        super().__init__(f"hvkvm-storvsc-{oc.relid}")

    # -- the Python thread ----------------------------------------------------------------

    def _run(self) -> None:
        oc = self.oc
        poller = select.poll()
        poller.register(oc.eventfd, select.POLLIN)
        poller.register(self._stop_fd, select.POLLIN)
        try:
            while not self._closed:
                state = self._drain()
                if state == "ready" and self.vsp.plane == "c":
                    if self._hand_over():
                        return
                    continue
                if state == "idle" and oc.inring.unmask():
                    continue
                if state == "more":
                    continue
                events = dict(poller.poll())
                if self._stop_fd in events:
                    return
                try:
                    os.eventfd_read(oc.eventfd)
                except BlockingIOError:
                    pass
                oc.guest_signals += 1
        except RingBrokenError as e:
            self.broken = str(e)
            oc.server.channels._error("ring", f"relid {oc.relid}: {e}")
        except Exception:
            log.exception("storvsc: channel %d failed", oc.relid)
            self.broken = "internal error"

    def _drain(self) -> str:
        """Serve packets: "idle" (ring empty), "full" (waiting for room for a completion),
        "more" (a batch done, more may wait), "ready" (the handshake just ended; plane c)."""
        oc, proto = self.oc, self.protocol
        inr, outr = oc.inring, oc.outring
        state, n = "idle", 0
        was_ready = proto.ready
        while True:
            if inr.available == 0:
                break
            need = proto.max_reply
            if outr.free < need and not outr.request_space(need):
                proto.counts["full_waits"] += 1
                state = "full"
                break
            pkt = inr.read()
            if pkt is None:
                break
            reply = proto.handle(pkt)
            if reply is not None and not outr.write_completion(reply, trans_id=pkt.trans_id):
                raise RuntimeError("completion did not fit after the space check")
            n += 1
            if proto.ready and not was_ready and self.vsp.plane == "c":
                state = "ready"
                break
            if n >= BATCH:
                state = "more"
                break
        if outr.commit():
            oc.signal_guest()
        if inr.commit():
            oc.signal_guest()
        return state

    def _hand_over(self) -> bool:
        """Start the C plane on the channel (after END_INITIALIZATION went out). False: it
        could not be built, the Python thread keeps serving (plane_error says why)."""
        with self._lock:
            if self._closed:
                return True
            try:
                storage = CStorage(self.vsp, self.oc.server.memory, self.protocol.version)
                plane = None
                try:
                    plane = storage.make_plane(self.oc, self.vsp.spin_us)
                    plane.start()
                except BaseException:
                    if plane is not None:
                        plane.close()
                    storage.close()
                    raise
            except Exception as e:
                self.plane_error = str(e)
                log.error("storvsc: relid %d: no C data plane (%s); serving from Python",
                          self.oc.relid, e)
                return False
            self.storage, self.plane = storage, plane
            return True

    # -- teardown -------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters of this channel (the C plane's when it serves it)."""
        out = dict(self.protocol.counts)
        out["plane"] = "c" if self.plane is not None else "python"
        if self.broken:
            out["broken"] = self.broken
        if self.plane_error:
            out["plane_error"] = self.plane_error
        if self.plane is not None:
            out.update({f"plane_{k}": v for k, v in self.plane.stats.items()})
            if self.plane.error:
                out["broken"] = f"C plane stopped ({self.plane.error})"
            out["io_mode"] = self.storage.io_mode
            for k, v in self.storage.stats.items():
                out[k] = out.get(k, 0) + v      # handshake (Python) + data path (C)
        return out

    def close(self) -> None:
        """Stop the thread and the C plane; their rings are not touched after this returns."""
        self._stop_thread()
        with self._lock:
            if self.plane is not None:
                # Stopping the plane cancels queued I/O and waits for running I/O: the
                # counters are final after it (inflight 0, cancelled).
                self.plane.close()
                self.final_stats = self.stats()
                self.storage.close()
        os.close(self._stop_fd)


class CStorage:
    """The C data plane's state (``struct hvr_storage``, csrc/hvr_storage.c) for one channel:
    guest RAM regions, the LUNs (file descriptors, sizes, identity) and work buffers.

    :meth:`make_plane` builds the channel's :class:`~hvkvm.vmbus.plane.CDataPlane` with the
    storage handler; :meth:`exec_cdb` runs one SCSI command on a host buffer (tests compare it
    with :mod:`.scsi`). Idempotent :meth:`close` (after the plane stopped).
    """

    def __init__(self, vsp: "StorvscVsp", memory, version: int):
        from ..vmbus._hvring import ffi, lib
        self._ffi, self._lib = ffi, lib
        self._s = None
        regions = memory.regions
        self._regions = ffi.new("struct hvr_ram_region[]", len(regions))
        for i, r in enumerate(regions):
            self._regions[i].gpa = r.gpa
            self._regions[i].size = r.size
            self._regions[i].host = ffi.cast("uint8_t *", r.host_addr)
        units = [vsp.target.units[k] for k in sorted(vsp.target.units)]
        self._luns = ffi.new("struct hvr_storage_lun[]", len(units))
        for i, u in enumerate(units):
            c = self._luns[i]
            c.fd = u.disk.fileno()
            c.flags = (lib.HVR_LUN_READONLY if u.readonly else 0) | \
                (lib.HVR_LUN_DIRECT if u.disk.direct else 0)
            c.blocks = u.blocks
            c.lun = u.lun
            c.serial_len = len(u.serial)
            ffi.memmove(c.vendor, u.vendor, 8)
            ffi.memmove(c.product, u.product, 16)
            ffi.memmove(c.revision, u.revision, 4)
            ffi.memmove(c.serial, u.serial, len(u.serial))
            ffi.memmove(c.naa, u.naa, 8)
        s = ffi.new("struct hvr_storage *")
        s.regions = self._regions
        s.nregions = len(regions)
        s.luns = self._luns
        s.nluns = len(units)
        s.max_transfer_bytes = vsp.max_transfer_bytes
        s.version = version
        s.io_workers = vsp.io_workers if vsp.io != "sync" else 0
        s.io_backend = lib.HVR_IO_URING if vsp.io == "uring" else lib.HVR_IO_THREADS
        s.max_inflight = vsp.max_inflight
        rc = lib.hvr_storage_init(s)
        if rc != 0:
            lib.hvr_storage_fini(s)
            raise ValueError(f"hvr_storage_init failed ({rc}): bad regions, LUNs or version")
        self._s = s

    def make_plane(self, oc: OpenChannel, spin_us: int):
        """The channel's C plane with the storage handler (not started)."""
        from ..vmbus import plane as cplane
        cplane.HANDLERS.setdefault("storage", "hvr_storage_handler")
        plane = cplane.CDataPlane(oc.server.partition, oc, "storage", spin_us,
                                  ctx=self._ffi.cast("void *", self._s))
        # The pool's hooks, and its slots bounded by what this receive ring can hold.
        self._lib.hvr_storage_attach(plane._p, self._s)
        return plane

    @property
    def io_mode(self) -> str:
        """The I/O mode running: "uring", "threads" (asked for, or io_uring unavailable) or
        "sync" (asked for, or no threads either)."""
        return {self._lib.HVR_IO_URING: "uring",
                self._lib.HVR_IO_THREADS: "threads"}.get(self._s.io_mode, "sync")

    @property
    def stats(self) -> dict[str, int]:
        """The handler's counters (requests, srbs, reads, writes, flushes, async, ...)."""
        st = self._s.stats
        return {k: getattr(st, k)
                for k, _ in self._ffi.typeof("struct hvr_storage_stats").fields}

    def exec_cdb(self, path_id: int, target_id: int, lun: int, cdb: bytes,
                 buf: bytearray) -> scsi.ScsiResult:
        """Run one command through the C emulation on a host buffer; InvalidRequest like
        :meth:`hvkvm.vsp.scsi.ScsiTarget.execute`."""
        ffi = self._ffi
        res = ffi.new("struct hvr_scsi_result *")
        cbuf = ffi.from_buffer(buf) if len(buf) else ffi.NULL
        rc = self._lib.hvr_storage_exec_cdb(self._s, path_id, target_id, lun, cdb, len(cdb),
                                            cbuf, len(buf), res)
        if rc != 0:
            raise scsi.InvalidRequest("the C emulation refused the request")
        return scsi.ScsiResult(res.srb_status, res.scsi_status, res.transferred,
                               bytes(ffi.buffer(res.sense, res.sense_len)))

    def close(self) -> None:
        """Free the work buffers. Safe to call twice."""
        if self._s is not None:
            self._lib.hvr_storage_fini(self._s)
            self._s = None


class StorvscVsp(Vsp):
    """A synthetic SCSI controller serving ``disks`` (a :class:`~hvkvm.vsp.disk.Disk` or a list:
    LUN i is disks[i]). The VSP does not own the disks: close them after the partition.

    ``plane``: "c" (default; the C data plane after the handshake) or "python". ``io`` (C plane):
    "uring" (default: up to ``max_inflight`` requests in flight through io_uring; "threads"
    where it is unavailable), "threads" (the same on ``io_workers`` threads) or "sync" (one at a
    time on the plane thread).
    """

    class_id = w.HV_SCSI_GUID
    name = "storvsc"
    python_signals = False      # each channel has its own thread (and then, maybe, a C plane)

    def __init__(self, disks, plane: str = "c", instance_id: uuid.UUID | None = None,
                 max_transfer_bytes: int = DEFAULT_MAX_TRANSFER, spin_us: int = 50,
                 io: str = "uring", io_workers: int = DEFAULT_IO_WORKERS,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT):
        if plane not in ("c", "python"):
            raise ValueError(f"storvsc plane must be c or python, not {plane!r}")
        if io not in IO_MODES:
            raise ValueError(f"storvsc io must be uring, threads or sync, not {io!r}")
        if not 1 <= io_workers <= 64 or not 1 <= max_inflight <= 256:
            raise ValueError("storvsc io_workers must be 1..64 and max_inflight 1..256")
        disks = list(disks) if isinstance(disks, (list, tuple)) else [disks]
        if not 1 <= len(disks) <= sw.STORVSC_MAX_LUNS_PER_TARGET:
            raise ValueError(f"a storvsc controller takes 1 to "
                             f"{sw.STORVSC_MAX_LUNS_PER_TARGET} disks")
        if max_transfer_bytes < PAGE_SIZE or max_transfer_bytes % PAGE_SIZE or \
                max_transfer_bytes > 1 << 26:
            raise ValueError("max_transfer_bytes must be a multiple of 4096 up to 64 MiB")
        self.disks = disks
        self.plane = plane
        self.instance_id = instance_id or uuid.uuid4()
        self.max_transfer_bytes = max_transfer_bytes
        self.spin_us = spin_us
        self.io = io
        self.io_workers = io_workers
        self.max_inflight = max_inflight
        self.target = scsi.ScsiTarget([scsi.LogicalUnit(d, i, max_transfer_bytes)
                                       for i, d in enumerate(disks)])
        self.channels: dict[int, _Channel] = {}
        self.closed_stats: list[dict] = []

    def open(self, channel: OpenChannel) -> int:
        """Accept the channel; its thread starts once OPENCHANNEL_RESULT went out."""
        self.channels[channel.relid] = _Channel(self, channel)
        return 0

    def started(self, channel: OpenChannel) -> None:
        """Serve the channel (the handshake first)."""
        self.channels[channel.relid].start()

    def close(self, channel: OpenChannel) -> None:
        """Stop serving the channel."""
        ch = self.channels.pop(channel.relid, None)
        if ch is not None:
            ch.close()
            self.closed_stats.append(getattr(ch, "final_stats", None) or ch.stats())

    def stats(self) -> dict[int, dict]:
        """Counters per open channel (relid -> dict)."""
        return {relid: ch.stats() for relid, ch in list(self.channels.items())}
