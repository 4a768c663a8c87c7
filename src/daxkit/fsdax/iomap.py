"""The fsdax read/write iteration (the kernel's dax_iomap_iter in fs/dax.c).

Rules
  * A request is a list of segments ``(device offset or None for a hole, length)`` in file
    order.  Every mapped segment is reached through ``direct_access`` first: that is where known
    poison is refused, exactly as the kernel's iteration does.
  * Read: a hole reads as zeroes, with no poison check.  Known poison anywhere in the rest of the
    request inside a segment -> EIO if nothing was read yet, else a short count.  Latent poison:
    the machine-check-safe load delivers the clean bytes before the bad line (short count) and
    the poison becomes known.
  * Write: a clean segment is stored in place.  Over known poison, a page-aligned segment is
    recovered page by page with ``RECOVERY_WRITE`` + ``recovery_write`` (clear, write, forget).
    An unaligned one writes its clean prefix, up to the page holding the first bad sector, and
    stops; nothing written at all -> EFAULT (the kernel's ``xfer == 0``).
  * This layer allocates nothing and knows no filesystem: callers pass device segments.
  * It is the filesystem's only way to the device's data: the in-place fast path takes its
    view from ``dax_window`` and its store function from ``dax_store_fn``, the recovery path
    goes through ``iomap_read_recover`` and ``iomap_zero_pages``.  The device is any
    ``DaxOperations``.

The fast path is one direct_access and one copy per segment; the poison handling is a branch
off it into functions of its own.
"""

from __future__ import annotations

import errno

from ..device.interface import RECOVERY_WRITE, DaxOperations, Redundant
from ..errors import DaxError, HWPoisonError, MediaError
from ..units import PAGE_SIZE, align_down

Segment = tuple[int | None, int]


def _pages(dev_off: int, n: int) -> tuple[int, int]:
    first = dev_off // PAGE_SIZE
    return first, (dev_off + n + PAGE_SIZE - 1) // PAGE_SIZE - first


def iomap_read(dev: DaxOperations, dst: memoryview, segments: list[Segment]) -> int:
    """Fill ``dst`` from the segments; returns bytes read (short at poison)."""
    done = 0
    for dev_off, n in segments:
        if n <= 0:
            continue
        if dev_off is None:
            dst[done : done + n] = bytes(n)
            done += n
            continue
        pgoff, npages = _pages(dev_off, n)
        try:
            dev.direct_access(pgoff, npages)
        except HWPoisonError:
            # A device with redundancy that could not repair in place (a read-only open) may
            # still rebuild the bytes into our buffer; anything else is EIO, as in the kernel.
            if not (isinstance(dev, Redundant) and dev.mc_read(dst[done : done + n], dev_off) == n):
                bad = dev.known_errors(dev_off, n)
                return _short_read(done, bad[0][0] if bad else dev_off)
            done += n
            continue
        got = dev.mc_read(dst[done : done + n], dev_off)
        done += got
        if got < n:
            return _short_read(done, dev_off + got)
    return done


def _short_read(done: int, where: int) -> int:
    if done:
        return done
    raise MediaError(f"media error at device offset {where}: nothing could be read")


def iomap_write(dev: DaxOperations, src: memoryview, segments: list[Segment], *, recovery=False) -> int:
    """Store ``src`` into the (mapped) segments; returns bytes written (short at poison).
    ``recovery`` (RWF_RECOVERY_DATA, SPEC 4.1): a write over poison that is not page-aligned
    is a sub-page recovery write, and the count is full."""
    done = 0
    for dev_off, n in segments:
        if n <= 0:
            continue
        assert dev_off is not None, "iomap_write needs every segment mapped"
        pgoff, npages = _pages(dev_off, n)
        try:
            dev.direct_access(pgoff, npages)
        except HWPoisonError:
            wrote = _write_over_poison(dev, src[done : done + n], dev_off, recovery)
            done += wrote
            if wrote < n:
                return _short_write(done, dev_off + wrote)
            continue
        dev.store(src[done : done + n], dev_off)
        done += n
    return done


def _write_over_poison(dev: DaxOperations, data: memoryview, dev_off: int, recovery: bool = False) -> int:
    n = data.nbytes
    if recovery and (dev_off % PAGE_SIZE or n % PAGE_SIZE):
        dev.recovery_write_subpage(dev_off, data)
        return n
    if dev_off % PAGE_SIZE == 0 and n % PAGE_SIZE == 0:
        done = 0
        while done < n:
            pgoff = (dev_off + done) // PAGE_SIZE
            avail, _ = dev.direct_access(pgoff, (n - done) // PAGE_SIZE, RECOVERY_WRITE)
            wrote = dev.recovery_write(pgoff, 0, data[done : done + avail * PAGE_SIZE])
            if wrote == 0:
                break
            done += wrote
        return done
    first = dev.first_bad(dev_off, dev_off + n)
    bad_at = dev_off + n if first is None else first
    clean = max(0, align_down(bad_at, PAGE_SIZE) - dev_off)
    if clean:
        dev.store(data[:clean], dev_off)
    return clean


def _short_write(done: int, where: int) -> int:
    if done:
        return done
    raise MediaError(
        f"write meets poison at device offset {where} and is not page-aligned: nothing written",
        errno=errno.EFAULT,
    )


def iomap_read_recover(dev: DaxOperations, dst: memoryview, segments: list[Segment]) -> list[tuple[int, int]]:
    """The recovery read over segments: every clean byte, zeroes on bad lines and in holes;
    returns the bad ranges as (offset in ``dst``, length), merged where they touch."""
    bad: list[tuple[int, int]] = []
    done = 0
    for dev_off, n in segments:
        if dev_off is None:
            dst[done : done + n] = bytes(n)
        else:
            for s, k in dev.read_recover_into(dst[done : done + n], dev_off):
                start = done + s - dev_off
                if bad and bad[-1][0] + bad[-1][1] == start:
                    bad[-1] = (bad[-1][0], bad[-1][1] + k)
                else:
                    bad.append((start, k))
        done += n
    return bad


def iomap_zero_pages(dev: DaxOperations, pgoff: int, nr_pages: int, *, quiet: bool = False) -> None:
    """Zero whole pages, clearing their poison (dax_zero_page_range, one page at a time as the
    pmem driver takes it).  ``quiet``: a page that cannot be zeroed is left as it is."""
    for pg in range(pgoff, pgoff + nr_pages):
        try:
            dev.zero_page_range(pg, 1)
        except DaxError:
            if not quiet:
                raise


def dax_window(dev: DaxOperations, pgoff: int, nr_pages: int) -> memoryview | None:
    """A view of whole pages for an in-place fast path, or None when known poison is there
    (the caller then takes the general path, which applies the poison rules).  Valid while
    ``dev.state_word`` holds the value ``dev.state_generation`` had when it was taken."""
    try:
        avail, view = dev.direct_access(pgoff, nr_pages)
    except DaxError:
        return None
    return view if avail == nr_pages else None


def dax_store_fn(dev: DaxOperations):
    """The store function a fast path keeps: stores into a window must go through the device
    (an emulated page with latent poison faults; a stacked device keeps its parity current)."""
    return dev.store_fn()
