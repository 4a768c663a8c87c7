"""Where the parity layer keeps things on its lower device (pure: numbers and bytes, no I/O).

Rules
  * Nothing here touches a device.  Geometry, the header and the repair intent record are
    pure functions, so the format can be read (and tested) without one.
  * The data pages come last and are contiguous: logical page L is lower page
    ``data_start + L``, so a direct_access window of any logical extent is one lower view and the
    stacked device's end is the lower device's end (trimming needs no translation).
  * A group is ``G`` consecutive data pages, the last one possibly shorter.  Consecutive rather
    than striped (Pangolin strides its rows across zones): a striped group would make a
    mapping's ``persist`` of N pages and a sequential write of N pages touch N groups of G pages
    each; consecutive groups make them touch N/G + 2, and a write that covers a whole group
    computes its parity from the new data alone.  The price -- two bad pages next to each other
    are one group's double fault -- is named in the guarantee ("one page per group").
  * Every multi-byte field is little-endian; the header and the intent record carry a CRC32C.

Theory of operation
  Lower device, in pages::

      0, 1                header, two copies: magic DAXPARIT, version, geometry, CRC32C
      intent_start        the repair intent record (its first 64 bytes: one cache line)
      intent_start+1 ...  the dirty-group byte map: byte g != 0 while group g may be stale
      csum_start ...      CRC32C of every data page, 4 bytes each
      parity_start ...    one page per group: the XOR of the group's data pages
      data_start ... end  the N data pages

  ``choose_geometry`` picks the smallest group size whose overhead (everything but the data
  pages, header included) is at most 1% of the lower device, else at most 2%; a caller's
  ``group`` overrides the choice.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c

from ..units import PAGE_SIZE

MAGIC = b"DAXPARIT"
VERSION = 1
HEADER_PAGES = 2  # two copies: either one is enough to open
CRC_SIZE = 4  # CRC32C per data page
CRCS_PER_PAGE = PAGE_SIZE // CRC_SIZE
AIM, LIMIT = 0.01, 0.02  # overhead: aim (Pangolin's 1%) and the ceiling (SPEC 4.2)
MIN_GROUP, MAX_GROUP = 2, 4096

_HEADER = struct.Struct("<8sIIQQQQQQQQQ")
_INTENT = struct.Struct("<8sQQII")
INTENT_MAGIC = b"DAXPINTR"
INTENT_SIZE = 64


@dataclass(frozen=True)
class Geometry:
    group: int  # data pages per group (G)
    lower_pages: int
    ndata: int  # N
    ngroups: int
    intent_start: int  # the intent record page; the byte map follows it
    map_pages: int
    csum_start: int
    csum_pages: int
    parity_start: int
    data_start: int

    @property
    def overhead(self) -> float:
        """Fraction of the lower device that is not data: header, intent, checksums, parity."""
        return (self.lower_pages - self.ndata) / self.lower_pages

    def group_pages(self, g: int) -> tuple[int, int]:
        """Logical data pages [a, b) of group g."""
        a = g * self.group
        return a, min(self.ndata, a + self.group)

    def region(self, lower_page: int) -> str:
        """Which region a lower page belongs to."""
        if lower_page >= self.data_start:
            return "data"
        if lower_page >= self.parity_start:
            return "parity"
        if lower_page >= self.csum_start:
            return "csum"
        if lower_page > self.intent_start:
            return "map"
        if lower_page == self.intent_start:
            return "intent"
        return "header"


def _pages(n: int, per: int) -> int:
    return -(-n // per)


def _metadata_pages(ndata: int, group: int) -> tuple[int, int, int]:
    ngroups = _pages(ndata, group)
    return ngroups, _pages(ngroups, PAGE_SIZE), _pages(ndata, CRCS_PER_PAGE)


def geometry(lower_pages: int, group: int) -> Geometry | None:
    """The layout with the most data pages that fits ``lower_pages`` with groups of ``group``
    pages, or None when not even one data page fits."""
    if group < 1:
        raise ValueError(f"parity group must be at least 1 page, got {group}")

    def total(nd: int) -> int:
        ng, mp, cp = _metadata_pages(nd, group)
        return HEADER_PAGES + 1 + mp + cp + ng + nd

    lo, hi = 0, lower_pages
    while lo < hi:  # the largest nd with total(nd) <= lower_pages (total is monotonic)
        mid = (lo + hi + 1) // 2
        if total(mid) <= lower_pages:
            lo = mid
        else:
            hi = mid - 1
    if lo < 1:
        return None
    ng, mp, cp = _metadata_pages(lo, group)
    intent = HEADER_PAGES
    csum = intent + 1 + mp
    parity = csum + cp
    # data_start = lower_pages - lo: the data pages end the device (any slack sits before them)
    return Geometry(group, lower_pages, lo, ng, intent, mp, csum, cp, parity, lower_pages - lo)


def choose_geometry(lower_pages: int, group: int | None = None) -> Geometry:
    """The geometry for a lower device of ``lower_pages`` pages (see the module rules).
    ValueError when the device is too small for parity within the 2% ceiling."""
    if group is not None:
        geo = geometry(lower_pages, group)
        if geo is None:
            raise ValueError(f"a device of {lower_pages} pages has no room for data with parity")
        return geo
    for bound in (AIM, LIMIT):
        for g in range(MIN_GROUP, MAX_GROUP + 1):
            geo = geometry(lower_pages, g)
            if geo is not None and geo.overhead <= bound:
                return geo
    raise ValueError(
        f"a device of {lower_pages} pages is too small for parity within {LIMIT:.0%} of its space "
        "(give parity_group to accept more)"
    )


# -- the header -------------------------------------------------------------------------------------
def pack_header(geo: Geometry) -> bytes:
    body = _HEADER.pack(
        MAGIC,
        VERSION,
        geo.group,
        geo.lower_pages,
        geo.ndata,
        geo.ngroups,
        geo.intent_start,
        geo.map_pages,
        geo.csum_start,
        geo.csum_pages,
        geo.parity_start,
        geo.data_start,
    )
    return body + struct.pack("<I", crc32c.crc32c(body))


HEADER_SIZE = _HEADER.size + 4


def has_magic(buf) -> bool:
    return bytes(buf[: len(MAGIC)]) == MAGIC


def unpack_header(buf) -> tuple[Geometry | None, str]:
    """(geometry, "") from a header copy, or (None, what is wrong with it)."""
    raw = bytes(buf[:HEADER_SIZE])
    if not has_magic(raw):
        return None, "no parity header"
    body, (crc,) = raw[: _HEADER.size], struct.unpack("<I", raw[_HEADER.size :])
    if crc32c.crc32c(body) != crc:
        return None, "parity header checksum mismatch"
    magic, version, *fields = _HEADER.unpack(body)
    if version != VERSION:
        return None, f"parity header version {version} (this daxkit reads {VERSION})"
    geo = Geometry(*fields)
    want = geometry(geo.lower_pages, geo.group) if geo.group >= 1 else None
    if want != geo:
        return None, "parity header geometry is inconsistent"
    return geo, ""


# -- the repair intent record ---------------------------------------------------------------------
def pack_intent(seq: int, page: int, crc: int) -> bytes:
    """A pending repair of logical data page ``page`` whose rebuilt contents have CRC ``crc``."""
    body = _INTENT.pack(INTENT_MAGIC, seq, page, crc, 1)
    rec = body + struct.pack("<I", crc32c.crc32c(body))
    return rec + bytes(INTENT_SIZE - len(rec))


def unpack_intent(buf) -> tuple[int, int] | None:
    """(page, crc) of a pending repair, or None.  A torn record fails its CRC and counts as
    none: it was being written, so the recovery write it announces had not begun, or being
    cleared, so it had ended."""
    raw = bytes(buf[: _INTENT.size + 4])
    if raw[:8] != INTENT_MAGIC:
        return None
    body, (crc,) = raw[: _INTENT.size], struct.unpack("<I", raw[_INTENT.size :])
    if crc32c.crc32c(body) != crc:
        return None
    _, _seq, page, page_crc, state = _INTENT.unpack(body)
    return (page, page_crc) if state == 1 else None
