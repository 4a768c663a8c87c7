"""Formatting a lower device for parity, and finding its header again (the parity layer's mkfs
and its superblock read).

Rules
  * ``format_parity`` holds the lower device (as its holder) for as long as it runs: a device
    that has a holder -- a mounted filesystem, an open parity layer -- is refused (EBUSY).
  * The header copies are written last, after the old ones were wiped first: a format cut off by
    a kill leaves a device with no parity header (``is_parity`` False), never a header over
    parity that does not match the data.
  * Parity and checksums describe the data as it is: existing data is kept and protected.  A
    data page whose contents cannot be read at format time has nothing to protect; it is zeroed
    (and its poison cleared), as mkfs would.
  * Reading the header uses the lower device's safe load; one readable, valid copy is enough.
"""

from __future__ import annotations

from ..device.interface import DaxOperations
from ..errors import ImageError, InvalidArgument
from ..units import PAGE_SIZE
from .layout import (
    HEADER_PAGES,
    HEADER_SIZE,
    Geometry,
    choose_geometry,
    has_magic,
    pack_header,
    unpack_header,
)
from .parity import page_crcs, xor_pages

P = PAGE_SIZE


class _FormatClaim:
    """Holder of the lower device while it is being formatted: news is not needed then."""

    def notify_failure(self, offset: int, length: int, flags: int) -> int:
        return 0


def read_geometry(lower: DaxOperations) -> tuple[Geometry, list[int]]:
    """The geometry from the first good header copy, and the lower pages of the copies that
    are damaged (for a read-write open to rewrite).  ImageError when no copy is good."""
    problems, damaged, found = [], [], None
    for pg in range(HEADER_PAGES):
        buf = bytearray(HEADER_SIZE)
        if lower.mc_read(buf, pg * P) < HEADER_SIZE:
            problems.append(f"copy {pg}: unreadable (media error)")
            damaged.append(pg)
            continue
        geo, why = unpack_header(buf)
        if geo is not None and geo.lower_pages != lower.size // P:
            geo, why = None, f"made for {geo.lower_pages} pages, the device has {lower.size // P}"
        if geo is None:
            problems.append(f"copy {pg}: {why}")
            damaged.append(pg)
        elif found is None:
            found = geo
    if found is None:
        if all("no parity header" in p for p in problems):
            raise ImageError("no parity header (the device was not formatted with parity)", path=lower.path)
        raise ImageError("parity header damaged: " + "; ".join(problems), path=lower.path)
    return found, damaged


def is_parity(lower: DaxOperations) -> bool:
    """Does the device carry a parity header (valid or not: a damaged one must be reported,
    never mistaken for a plain device)?"""
    if lower.size < HEADER_PAGES * P:
        return False
    for pg in range(HEADER_PAGES):
        buf = bytearray(len(b"DAXPARIT"))
        if lower.mc_read(buf, pg * P) == len(buf) and has_magic(buf):
            return True
    return False


def format_parity(lower: DaxOperations, group: int | None = None) -> None:
    """Lay the parity layer over ``lower``: parity and CRC32C of the data as it is, an empty
    intent area, then the two header copies.  ``group``: data pages per parity group (chosen
    for about 1% of space when None)."""
    try:
        geo = choose_geometry(lower.size // P, group)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    lower.holder = _FormatClaim()  # EBUSY if anyone holds the device
    try:
        _format(lower, geo)
    finally:
        lower.holder = None


def _put(lower: DaxOperations, page: int, data) -> None:
    lower.direct_access(page, 1, 1)  # RECOVERY_WRITE: clears a bad page as it is rewritten
    lower.recovery_write(page, 0, data)


def _format(lower: DaxOperations, geo: Geometry) -> None:
    zero = bytes(P)
    for pg in range(HEADER_PAGES):  # first: a format cut off leaves no header at all
        _put(lower, pg, zero)
    for pg in range(geo.intent_start, geo.csum_start):
        _put(lower, pg, zero)
    table = bytearray(geo.csum_pages * P)
    for g in range(geo.ngroups):
        a, b = geo.group_pages(g)
        k = b - a
        buf = bytearray(k * P)
        mv = memoryview(buf)
        done = 0
        while done < k * P:
            done += lower.mc_read(mv[done:], (geo.data_start + a) * P + done)
            if done >= k * P:
                break
            i = done // P
            lower.zero_page_range(geo.data_start + a + i, 1)  # unreadable: nothing to keep
            mv[i * P : (i + 1) * P] = zero
            done = (i + 1) * P
        _put(lower, geo.parity_start + g, xor_pages(buf, k))
        table[4 * a : 4 * b] = page_crcs(buf, k).astype("<u4").tobytes()
    for i in range(geo.csum_pages):
        _put(lower, geo.csum_start + i, table[i * P : (i + 1) * P])
    header = pack_header(geo).ljust(P, b"\0")
    for pg in reversed(range(HEADER_PAGES)):
        _put(lower, pg, header)
