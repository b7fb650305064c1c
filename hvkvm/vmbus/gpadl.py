"""GPADLs: guest physical address descriptor lists, assembled from GPADL_HEADER + GPADL_BODY.

A GPADL names guest pages the guest shares with the host (channel rings, receive buffers). The
PFN list arrives split over several channel messages; :class:`GpadlBuilder` collects it, and
:func:`parse_ranges` validates the whole thing before anyone uses a PFN: every range's offset and
count must be sane, the byte total must match ``range_buflen``, and every page must be guest RAM.

A GPADL used by an open channel cannot be torn down; teardown completes only after the last user
lets go (OpenVMM's ``vmbus_channel/src/gpadl.rs`` has the same rule).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PAGE_SIZE = 4096

#: Upper bound on one GPADL's page count (1 GiB): a guest cannot make us hold an absurd list.
MAX_GPADL_PAGES = 1 << 18
#: Upper bound on concurrent GPADLs per channel server.
MAX_GPADLS = 4096
#: Upper bound on the pages all of a channel server's GPADLs (complete or still arriving) may
#: name together (4 GiB of guest memory): a guest may name the same page in every GPADL, and
#: without this 4096 GPADLs of 8190 PFNs each would make the parent hold ~1.2 GB of PFN lists.
MAX_GPADL_PAGES_TOTAL = 1 << 20


class GpadlError(ValueError):
    """A GPADL the guest described wrongly; the message says how."""


@dataclass
class GpaRange:
    """One range: ``byte_count`` bytes starting ``byte_offset`` into the first of ``pfns``."""

    byte_count: int
    byte_offset: int
    pfns: list[int]


@dataclass
class Gpadl:
    """A complete, validated GPADL."""

    handle: int
    child_relid: int
    ranges: list[GpaRange]
    users: int = 0
    teardown_requested: bool = False

    @property
    def pfns(self) -> list[int]:
        """All pages in order."""
        return [p for r in self.ranges for p in r.pfns]

    @property
    def page_count(self) -> int:
        """Number of pages described."""
        return sum(len(r.pfns) for r in self.ranges)


def parse_ranges(buf: bytes, rangecount: int, ram_contains) -> list[GpaRange]:
    """Decode ``rangecount`` gpa_range records filling ``buf`` exactly; check every PFN."""
    if rangecount == 0:
        raise GpadlError("GPADL with no ranges")
    ranges = []
    off = 0
    total_pages = 0
    for i in range(rangecount):
        if off + 8 > len(buf):
            raise GpadlError(f"range {i} header runs past range_buflen")
        byte_count, byte_offset = struct.unpack_from("<II", buf, off)
        off += 8
        if byte_count == 0:
            raise GpadlError(f"range {i} is empty")
        if byte_offset >= PAGE_SIZE:
            raise GpadlError(f"range {i} byte_offset {byte_offset} is not inside its first page")
        npages = (byte_offset + byte_count + PAGE_SIZE - 1) // PAGE_SIZE
        total_pages += npages
        if total_pages > MAX_GPADL_PAGES:
            raise GpadlError(f"GPADL of more than {MAX_GPADL_PAGES} pages")
        if off + 8 * npages > len(buf):
            raise GpadlError(f"range {i} needs {npages} PFNs; range_buflen holds fewer")
        pfns = list(struct.unpack_from(f"<{npages}Q", buf, off))
        off += 8 * npages
        for pfn in pfns:
            if pfn >= (1 << 52) or not ram_contains(pfn * PAGE_SIZE, PAGE_SIZE):
                raise GpadlError(f"range {i} PFN {pfn:#x} is outside guest RAM")
        ranges.append(GpaRange(byte_count, byte_offset, pfns))
    if off != len(buf):
        raise GpadlError(f"range_buflen {len(buf)} does not match the ranges ({off} bytes)")
    return ranges


@dataclass
class GpadlBuilder:
    """A GPADL whose PFN list is still arriving in GPADL_BODY messages."""

    handle: int
    child_relid: int
    rangecount: int
    range_buflen: int
    data: bytearray = field(default_factory=bytearray)
    next_msgnumber: int = 1

    @property
    def complete(self) -> bool:
        """True once range_buflen bytes have arrived."""
        return len(self.data) >= self.range_buflen

    def add(self, chunk: bytes) -> None:
        """Append PFN bytes from a message, never beyond range_buflen."""
        need = self.range_buflen - len(self.data)
        if len(chunk) > need:
            # Linux fills the last message exactly; any surplus is padding we ignore, but it
            # must be whole PFNs.
            chunk = chunk[:need]
        self.data += chunk

    def finish(self, ram_contains) -> Gpadl:
        """Validate and return the complete GPADL."""
        ranges = parse_ranges(bytes(self.data[:self.range_buflen]), self.rangecount, ram_contains)
        return Gpadl(self.handle, self.child_relid, ranges)
