"""The device: the pmem driver's three operations and the error machinery around them (SPEC 2).

Rules
  * One primitive: ``direct_access(pgoff, nr_pages, mode)``.  ``recovery_write`` and
    ``zero_page_range`` complete the kernel's dax_operations; the block path (``pread``,
    ``pwrite``, ``readinto``) and mappings are built on the same data mapping.
  * The fast path is one branch.  Every public access first compares the shared generation word
    with the one this process last loaded (one 8-byte load); then, only when the badblocks table
    is not empty, one O(log n) lookup.  Latent poison costs nothing: its pages are PROT_NONE, so
    the machine-check-safe copy faults on it and the slow path takes over.
  * Kernel order for clearing: the medium is cleared first, the data written next, and only then
    are the sectors forgotten by the badblocks table and the bad range list (pmem_recovery_write),
    so a concurrent reader never sees the range clean while it holds garbage.  The block path
    (pmem_do_write) clears medium and lists together before writing.
  * Upward news (new known errors, device removal) travels only through the holder's
    ``notify_failure`` and the mappings' ``on_poison``; this layer never imports a filesystem.
  * The error lists have no ceiling (a 64 MiB device can hold half a million bad lines), so
    every change is one pure function of the whole state, committed once: an injection with
    notify takes its scrub into the same commit, clear-errors takes two (the kernel's order,
    for all ranges together).  A change the image cannot store is refused with nothing changed.
  * A scrub is "running" while its open holds the image's scrub lock; the pid in the live page
    is only for display, so a killed scrubber or a reused pid never looks like a scrub.

Theory of operation
  This file is the data path and the shared state; ``admin.py`` (mixed in) is ndctl's side:
  injection, scrub, clear-errors and the reports.  ``_apply`` installs a loaded state: it
  rebuilds the lookup lists, sets page protections in every mapping of this process, and reports
  ranges that became known since this process last looked -- whether this process or another
  one made them known.  That single place is why a CLI scrub reaches a mounted filesystem.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from bisect import bisect_right
from contextlib import suppress

from .. import _copymc
from ..errors import (
    Busy,
    DaxError,
    DeviceGone,
    HWPoisonError,
    InvalidArgument,
    MediaError,
    NotSupported,
    OutOfRange,
    ReadOnly,
)
from ..medium import ranges
from ..medium.image import LIVE_GEN, LIVE_SEEN, LIVE_WATCHER
from ..medium.region import Region
from ..medium.state import ErrorState
from ..units import LINE_SIZE, PAGE_SIZE, SECTOR_SIZE, align_down, align_up
from .admin import Administration
from .backends import Backend
from .interface import (  # noqa: F401
    ACCESS,
    MF_ACTION_REQUIRED,
    MF_MEM_PRE_REMOVE,
    RECOVERY_WRITE,
    RecoveredData,
    check_range,
)
from .known import (  # noqa: F401 - ScrubReport is public through daxkit
    BadblocksView,
    ScrubReport,
    clear_medium,
    forget_known,
    make_known,
    scrubbed,
)

PRE_REMOVE = MF_MEM_PRE_REMOVE

_copy_mc_from = _copymc.copy_mc_from
_copy_mc_bytes = _copymc.copy_mc_bytes
_first_overlap = ranges.first_overlap
# What a read-only open refuses with EROFS (set per instance: the fast paths stay as they are).
_WRITERS = (
    "pwrite", "store", "recovery_write", "recovery_write_subpage", "zero_page_range", "clear_errors",
    "inject_error", "uninject_error", "inject_poison",
)
WATCH_INTERVAL = 0.02
WATCHER_WAIT = 2.0  # s a change of the error state waits for another process's cache watcher


class DaxDevice(Administration):
    """A DAX device: the policy of SPEC 2 over a backend (backends/: the emulated image, a pmem
    block device, a device-dax device, a regular file).  Use ``daxkit.create`` / ``daxkit.open``."""

    def __init__(self, backend: Backend):
        self._be = backend
        self.path = backend.path
        self.size = backend.size
        self.clear_err_unit = backend.clear_err_unit
        self.readonly = backend.readonly
        self._npages = self.size // PAGE_SIZE
        _copymc.install()  # stay on top if someone installed a fault handler since import
        try:
            self._region = backend.map_region([(0, 0, self.size)], self.size)
        except BaseException:
            backend.close()
            raise
        self._mm = self._region.mm
        self._view = memoryview(self._mm)
        self._words = backend.words
        self._lock = threading.RLock()
        self._holder = None
        self._dead = False
        self._closed = False
        self._gen = -1
        self._state = ErrorState()
        self._bb_bytes: ranges.Intervals = []  # badblocks as byte intervals
        self._bb_starts: list[int] = []
        self._bb_ends: list[int] = []
        self._known: ranges.Intervals = []  # badblocks sectors + bad range list, in bytes
        self._precise: ranges.Intervals = []  # the same, line-precise where the list knows better
        self._bad: ranges.Intervals = []  # poison + precise: what safe accessors must not deliver
        self._prot_bytes: ranges.Intervals = []  # bytes of PROT_NONE pages
        self._prot_pages: ranges.Intervals = []
        self._mappings: weakref.WeakSet = weakref.WeakSet()
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        # A device dropped without close() still gives back its file descriptor.
        self._finalizer = weakref.finalize(self, backend.close)
        if self.readonly:
            for name in _WRITERS:
                setattr(self, name, self._refuse_change)
        self._sync(report=False)

    @property
    def _img(self) -> Backend:
        """The backend (the emulated image's tests reach its words and locks through it)."""
        return self._be

    def _refuse_change(self, *args, **kwargs):
        raise ReadOnly("opened read-only: nothing on the device can change", path=self.path)

    def _require_emulated(self, verb: str) -> None:
        """Injection needs a medium that software controls (SPEC 7: EOPNOTSUPP on real devices)."""
        if not self._be.emulated:
            raise NotSupported(
                f"{verb}: this is a real {self._be.kind} device; poison can be injected only into an "
                "emulated image (on hardware, `ndctl inject-error` does it, as root, on platforms "
                "with ACPI error injection)",
                path=self.path,
            )

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> DaxDevice:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DaxDevice {self.path!r} size={self.size} clear_err_unit={self.clear_err_unit}>"

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._gen = -1
            self._words = (0,)
        self._stop.set()
        for m in list(self._mappings):
            m._detach()
        if not self._be.emulated:
            with suppress(OSError, ValueError):
                self._region.flush()  # a plain MAP_SHARED file mapping is durable after msync
        try:
            self._view.release()
        except BufferError:
            pass  # a direct_access view is still held; the region goes when it is dropped
        self._region.close()
        self._finalizer()

    def kill(self) -> None:
        """Device removal: the holder hears PRE_REMOVE for the whole device; after that every
        access fails with ENXIO and every mapping faults."""
        with self._lock:
            self._check_alive()
            holder = self._holder
        if holder is not None:
            holder.notify_failure(0, self.size, MF_MEM_PRE_REMOVE)
        with self._lock:
            self._dead = True
            self._gen = -1
            for m in list(self._mappings):
                m._revoke()
            self._region.revoke()

    def _check_alive(self) -> None:
        if self._dead:
            raise DeviceGone("device was removed", path=self.path)
        if self._closed:
            raise DeviceGone("device is closed", path=self.path)

    # -- the shared error state ---------------------------------------------------------------
    def _sync(self, report: bool = True) -> None:
        """Load the shared state if another process (or thread) changed it."""
        with self._lock:
            self._check_alive()
            if self._words[LIVE_GEN] == self._gen:
                return
            gen, state = self._be.load()
            new = self._apply(gen, state)
        if report and new:
            self._report(new)

    def _sync_fresh(self) -> None:
        """What the reports use (known_errors, media_errors, badblocks, info): on a real device
        the kernel's lists are read again first, so a report never lags behind a change the
        watcher has not seen yet.  The fast paths rely on the watcher alone."""
        if not self._be.emulated:
            self._be.refresh()
        self._sync()

    def _commit(self, change, *, report=True, holder_report=None) -> ErrorState:
        with self._lock:
            self._check_alive()
            gen, state = self._be.commit(change)
            new = self._apply(gen, state)
        # Outside the lock: a holder may call back into the device from any thread.
        if report and new:
            self._report(new, holder_report)
        self._await_watcher(gen)
        return state

    # -- a cache watcher in another process (SPEC 6: the very next read) ------------------------
    def watch_errors(self, watching: bool = True) -> None:
        """This process keeps a cache of the device's data (a FUSE mount's page cache) and
        acknowledges, with ``errors_seen``, each error-state generation it has acted on.  A change
        of the error state made in another process then returns only once it is acknowledged (or
        after WATCHER_WAIT), as memory_failure returns only after the holder's notify_failure:
        the next read of a cached page anywhere sees the change."""
        w = self._words
        if len(w) > LIVE_WATCHER:
            if watching:
                w[LIVE_SEEN] = w[LIVE_GEN]
                w[LIVE_WATCHER] = os.getpid()
            elif w[LIVE_WATCHER] == os.getpid():
                w[LIVE_WATCHER] = 0

    def errors_seen(self, gen: int) -> None:
        """The watcher has acted on every error-state change up to generation ``gen``."""
        if len(self._words) > LIVE_SEEN:
            self._words[LIVE_SEEN] = gen

    def _await_watcher(self, gen: int) -> None:
        w = self._words
        pid = w[LIVE_WATCHER] if len(w) > LIVE_WATCHER else 0
        if not pid or pid == os.getpid():
            return
        deadline = time.monotonic() + WATCHER_WAIT
        while w[LIVE_SEEN] < gen and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return  # the watcher died without saying so
            except PermissionError:
                pass  # alive, another user's
            time.sleep(0.0005)

    def _apply(self, gen: int, state: ErrorState) -> ranges.Intervals:
        """Install ``state``; returns the ranges that became known since this process looked."""
        old_precise = self._precise
        self._state = state
        self._bb_bytes = [(s * SECTOR_SIZE, e * SECTOR_SIZE) for s, e in state.badblocks.ranges()]
        self._bb_starts = [s for s, _ in self._bb_bytes]  # int arrays: the fast-path lookup
        self._bb_ends = [e for _, e in self._bb_bytes]
        self._known = ranges.union(self._bb_bytes, state.bad_ranges)
        # What to tell owners: the line-precise bad range list, plus the table's sectors that no
        # bad range explains (software entries written to the table).  Sector by sector: the
        # table merges neighbours, so a software entry can share an entry with a precise one.
        sectors = ranges.scale(state.bad_ranges, SECTOR_SIZE)
        explained = [(s * SECTOR_SIZE, e * SECTOR_SIZE) for s, e in sectors]
        soft = ranges.subtract(self._bb_bytes, explained)
        self._precise = ranges.union(state.bad_ranges, soft)
        self._bad = ranges.union(state.poison, self._precise)
        self._prot_pages = ranges.scale(ranges.union(state.poison, self._known), PAGE_SIZE)
        self._prot_bytes = [(s * PAGE_SIZE, e * PAGE_SIZE) for s, e in self._prot_pages]
        self._region.protect(self._prot_pages)
        for m in list(self._mappings):
            m._reprotect(self._prot_pages)
        self._gen = gen
        return ranges.subtract(self._precise, old_precise)

    def _report(self, new: ranges.Intervals, holder_report=None) -> None:
        for m in list(self._mappings):
            m._poison_known(new)
        holder = self._holder
        if holder is None:
            return
        if holder_report is not None:
            holder_report(holder)
            return
        for s, e in new:
            holder.notify_failure(s, e - s, 0)

    # -- holder -----------------------------------------------------------------------------
    @property
    def holder(self):
        return self._holder

    @holder.setter
    def holder(self, obj) -> None:
        """At most one holder per device, across processes (the kernel's dax holder rule)."""
        with self._lock:
            self._check_alive()
            if obj is not None and self._holder is not None and obj is not self._holder:
                raise Busy(f"device already has a holder ({self._holder!r})", path=self.path)
            if obj is not None and self._holder is None:
                if not self._be.claim_holder():
                    raise Busy("device already has a holder in another process", path=self.path)
            elif obj is None and self._holder is not None:
                self._be.release_holder()
            self._holder = obj
            if obj is not None:
                self._ensure_watcher()  # after the assignment: the watcher exits when nobody listens

    def notify_failure(self, offset: int, length: int, flags: int = 0) -> int:
        """Tell the holder that [offset, offset+length) failed; EOPNOTSUPP without a holder."""
        holder = self._holder
        if holder is None:
            raise NotSupported("no holder to notify", path=self.path)
        return holder.notify_failure(offset, length, flags)

    # -- argument checks --------------------------------------------------------------------
    def _check_range(self, offset: int, length: int) -> None:
        check_range(offset, length, self.size)

    # -- direct access ------------------------------------------------------------------------
    def direct_access(self, pgoff: int, nr_pages: int, mode: int = ACCESS) -> tuple[int, memoryview]:
        if self._words[LIVE_GEN] != self._gen:
            self._sync()
        end = pgoff + nr_pages
        if not self._bb_ends and 0 <= pgoff < end <= self._npages and mode == ACCESS:
            return nr_pages, self._view[pgoff * PAGE_SIZE : end * PAGE_SIZE]  # nothing known bad
        return self._direct_access(pgoff, nr_pages, mode)

    def _direct_access(self, pgoff: int, nr_pages: int, mode: int) -> tuple[int, memoryview]:
        if nr_pages < 0:
            raise InvalidArgument(f"nr_pages must be >= 0, got {nr_pages}")
        if pgoff < 0:
            raise InvalidArgument(f"pgoff must be >= 0, got {pgoff}")
        if mode not in (ACCESS, RECOVERY_WRITE):
            raise InvalidArgument(f"unknown access mode {mode!r}")
        avail = min(nr_pages, self._npages - pgoff)
        if avail <= 0:
            raise OutOfRange(
                f"page {pgoff} (+{nr_pages}) is past the device end ({self.size // PAGE_SIZE} pages)"
            )
        start = pgoff * PAGE_SIZE
        if self._bb_ends:
            hit = _first_overlap(self._bb_bytes, start, start + avail * PAGE_SIZE)
            if hit is not None:
                if mode != RECOVERY_WRITE:
                    raise HWPoisonError(
                        f"known bad sector at offset {max(hit[0], start)} in pages {pgoff}+{avail}"
                    )
                avail = max(1, align_up(max(hit[0], start) - start, PAGE_SIZE) // PAGE_SIZE)
        return avail, self._view[start : start + avail * PAGE_SIZE]

    def recovery_write(self, pgoff: int, offset_in_page: int, data) -> int:
        data = memoryview(data).cast("B")
        if pgoff < 0 or offset_in_page < 0:
            raise InvalidArgument(f"pgoff={pgoff} offset_in_page={offset_in_page} must be >= 0")
        start = pgoff * PAGE_SIZE + offset_in_page
        n = data.nbytes
        self._sync()
        self._check_range(start, n)
        if not (self._bb_ends and self._bb_hit(start, start + n)):
            self._store(data, start)
            return n
        if offset_in_page or n % PAGE_SIZE:
            return 0  # pmem_recovery_write: only whole pages can be recovered
        self._rewrite_pages(start, data)
        return n

    def _rewrite_pages(self, start: int, data: memoryview) -> None:
        """Clear the medium, write, then forget: the kernel's recovery order."""
        end = start + data.nbytes
        self._commit(lambda st: clear_medium(st, [(start, end)]))
        self._store(data, start)
        self._commit(lambda st: forget_known(st, [(start, end)]))

    def recovery_write_subpage(self, offset: int, data) -> list[tuple[int, int]]:
        """Sub-page recovery write (SPEC 4).  The pages touched are cleared and rewritten with
        ``data`` over every clean line recovered from the old contents.  A bad line the write
        does not cover whole stays reported bad -- as software poison: known, with no poison left
        on the medium -- so the write never invents data.  Returns those lines."""
        data = memoryview(data).cast("B")
        n = data.nbytes
        self._check_range(offset, n)
        first, last = align_down(offset, PAGE_SIZE), align_up(offset + n, PAGE_SIZE)
        pages = bytearray(last - first)
        bad = self.read_recover_into(pages, first)  # clean lines; latent poison becomes known
        pages[offset - first : offset - first + n] = data
        kept: ranges.Intervals = []
        for s, length in bad:
            for line in range(align_down(s, LINE_SIZE), s + length, LINE_SIZE):
                if not (offset <= line and line + LINE_SIZE <= offset + n):
                    kept = ranges.add(kept, line, line + LINE_SIZE)
        self._commit(lambda st: clear_medium(st, [(first, last)]))
        self._store(memoryview(pages), first)
        self._commit(lambda st: make_known(forget_known(st, [(first, last)]), kept)[0])
        return [(s, e - s) for s, e in kept]

    def zero_page_range(self, pgoff: int, nr_pages: int) -> None:
        if nr_pages != 1:
            raise MediaError(f"zero_page_range: only one page at a time (asked {nr_pages})")
        if pgoff < 0 or pgoff >= self.size // PAGE_SIZE:
            raise OutOfRange(f"page {pgoff} is past the device end ({self.size // PAGE_SIZE} pages)")
        self._rewrite_pages(pgoff * PAGE_SIZE, memoryview(bytes(PAGE_SIZE)))

    # -- the block path -----------------------------------------------------------------------
    def readinto(self, buffer, offset: int) -> int:
        if self._words[LIVE_GEN] != self._gen:
            self._sync()
        n = buffer.nbytes if type(buffer) is memoryview else len(buffer)
        if offset < 0 or offset + n > self.size:
            self._check_range(offset, n)
        ends = self._bb_ends
        if ends:  # the one branch; O(log n): the last entry starting before our end decides
            i = bisect_right(self._bb_starts, offset + n - 1)
            if i and ends[i - 1] > offset and n:
                raise MediaError(f"read of {n} bytes at offset {offset} meets a known bad sector")
        if _copy_mc_from(buffer, self._mm, offset):
            self._block_read_fault(buffer, offset, n)
        return n

    def pread(self, length: int, offset: int) -> bytes:
        if self._words[LIVE_GEN] != self._gen:
            self._sync()
        if length < 0 or offset < 0 or offset + length > self.size:
            self._check_range(offset, length)
        if not (self._bb_ends and self._bb_hit(offset, offset + length)):
            data = _copy_mc_bytes(self._mm, offset, length)  # one copy into the result
            if data is not None:
                return data
        buf = bytearray(length)
        self.readinto(buf, offset)  # raises EIO, after consumption where it applies
        return bytes(buf)

    def _block_read_fault(self, buffer, offset: int, n: int) -> None:
        done, bad = self._read_lines(memoryview(buffer).cast("B"), offset)
        if bad is not None:
            raise MediaError(f"media error at offset {bad[0]} (read of {n} bytes at offset {offset})")

    def pwrite(self, data, offset: int) -> int:
        if self._words[LIVE_GEN] != self._gen:
            self._sync()
        n = data.nbytes if type(data) is memoryview else len(data)
        if offset < 0 or offset + n > self.size:
            self._check_range(offset, n)
        if self._bb_ends and self._bb_hit(offset, offset + n):
            self._clear_for_write(offset, n)
            self._store(data, offset)  # the platform clears as it writes (pmem_do_write)
            return n
        if self._prot_bytes and _first_overlap(self._prot_bytes, offset, offset + n):
            self._be.medium_write(data, offset)  # stores under latent poison do not clear it
        else:
            self._mm[offset : offset + n] = data
        return n

    def _bb_hit(self, start: int, end: int) -> bool:
        """Does [start, end) meet a known bad sector?  (readinto inlines the same test.)"""
        i = bisect_right(self._bb_starts, end - 1)
        return bool(i) and self._bb_ends[i - 1] > start and end > start

    def _clear_for_write(self, offset: int, n: int) -> None:
        """pmem_clear_poison: the whole write must be clear_err_unit-aligned, else EIO and
        nothing is written (nvdimm_clear_poison refuses unaligned ranges)."""
        unit = self.clear_err_unit
        if offset % unit or n % unit:
            raise MediaError(
                f"write of {n} bytes at offset {offset} meets a known bad sector and is not "
                f"aligned to clear_err_unit {unit}; nothing written"
            )
        end = offset + n
        self._commit(lambda st: forget_known(clear_medium(st, [(offset, end)]), [(offset, end)]))

    def _store(self, data, offset: int) -> None:
        """The data write of a clearing sequence.  Emulated: a plain store of bytes, safe over
        pages that fault (the medium keeps its poison).  Real: the backend's write, which is
        what clears on the platform (the block device's write, a file's write and re-check)."""
        if not self._be.emulated:
            self._be.write_clearing(data, offset)
            return
        n = memoryview(data).nbytes
        if self._prot_bytes and _first_overlap(self._prot_bytes, offset, offset + n):
            self._be.medium_write(data, offset)
        else:
            self._mm[offset : offset + n] = data

    # -- what the layers above use besides direct_access ----------------------------------------
    @property
    def state_generation(self) -> int:
        """Changes whenever the shared error state changes, in any process.  A caller that keeps
        a direct_access view may reuse it while ``state_word[0]`` still equals this value."""
        if self._words[LIVE_GEN] != self._gen:
            self._sync()
        return self._gen

    @property
    def state_word(self) -> memoryview:
        """The shared generation word itself (one 8-byte load to see whether anything changed)."""
        self._check_alive()
        return self._words[LIVE_GEN : LIVE_GEN + 1]

    def store_fn(self):
        """The store a fast path keeps (a stacked device may offer a faster one than ``store``)."""
        return self.store

    def store(self, data, offset: int) -> int:
        """CPU stores into the direct mapping at ``offset`` (a range the caller obtained through
        direct_access).  Stores never clear poison; in the emulator they are safe on pages that
        fault, where hardware would simply store."""
        if self._words[LIVE_GEN] != self._gen:
            self._sync()
        n = data.nbytes if type(data) is memoryview else len(data)
        if offset < 0 or offset + n > self.size:
            self._check_range(offset, n)
        if self._prot_bytes and _first_overlap(self._prot_bytes, offset, offset + n):
            self._be.medium_write(data, offset)
        else:
            self._mm[offset : offset + n] = data
        return n

    def mc_read(self, dst, offset: int) -> int:
        """Machine-check-safe load of len(dst) bytes at ``offset`` (the kernel's
        copy_mc_to_kernel plus memory_failure): returns the bytes delivered before the first
        bad line; touching latent poison makes that line known and tells the holder."""
        if self._words[LIVE_GEN] != self._gen:
            self._sync()
        n = dst.nbytes if type(dst) is memoryview else len(dst)
        if offset < 0 or offset + n > self.size:
            self._check_range(offset, n)
        if not _copy_mc_from(dst, self._mm, offset):
            return n
        return self._read_lines(memoryview(dst).cast("B"), offset)[0]

    def first_bad(self, start: int, end: int) -> int | None:
        """The first byte of [start, end) under a known error (badblocks sector or bad range)."""
        self._sync()
        hit = _first_overlap(self._known, start, end)
        return None if hit is None else max(hit[0], start)

    def known_errors(self, offset: int = 0, length: int | None = None) -> list[tuple[int, int]]:
        """Known bad (offset, length) ranges, line-precise where the bad range list knows."""
        self._sync_fresh()
        end = self.size if length is None else offset + length
        return [(s, e - s) for s, e in ranges.clip(self._precise, offset, end)]

    # -- the line-precise slow path (shared with mappings) -------------------------------------
    def _bad_lines(self) -> ranges.Intervals:
        """Lines a safe accessor must not deliver: poison and precisely known errors (a whole
        sector only when the table has an entry that no bad range explains)."""
        return self._bad

    def _read_lines(self, dst: memoryview, offset: int) -> tuple[int, tuple[int, int] | None]:
        """Copy device bytes [offset, offset+len(dst)) into dst up to the first bad line.
        Returns (bytes delivered, first bad range met or None).  Touching latent poison makes
        that line known (consumption) and tells the holder about its page."""
        n = dst.nbytes
        done = 0
        while done < n:
            left = _copy_mc_from(dst[done:], self._mm, offset + done)
            if not left:
                return n, None
            done = n - left
            pos = offset + done
            page_end = min(align_down(pos, PAGE_SIZE) + PAGE_SIZE, offset + n)
            bad = ranges.first_overlap(self._bad_lines(), align_down(pos, LINE_SIZE), page_end)
            if bad is None and not self._be.emulated:
                # Only known-bad pages are PROT_NONE on a real device: any other fault is the
                # hardware's (SIGBUS, BUS_MCEERR_AR: a poisoned line) -- consumed like latent poison.
                bad = (align_down(pos, LINE_SIZE), align_down(pos, LINE_SIZE) + LINE_SIZE)
            clean_end = page_end if bad is None else max(pos, bad[0])
            if clean_end > pos:
                self._be.medium_read_into(dst[done : done + clean_end - pos], pos)
                done += clean_end - pos
            if bad is not None:
                return done, self._met_bad(pos, bad)
        return n, None

    def _met_bad(self, pos: int, bad: tuple[int, int]) -> tuple[int, int]:
        line = max(bad[0], align_down(pos, LINE_SIZE))
        if _first_overlap(self._precise, line, line + LINE_SIZE) is None:
            self._consume(line)
        run = _first_overlap(self._bad_lines(), line, line + LINE_SIZE)
        return line, (run[1] if run else line + LINE_SIZE) - line

    def _consume(self, line: int) -> None:
        """A machine-check-safe read hit latent poison: the line becomes known, and the holder
        hears about its page with MF_ACTION_REQUIRED (the memory_failure path)."""
        page = align_down(line, PAGE_SIZE)
        with suppress(ReadOnly):  # a read-only open of an image cannot record it; the read still fails
            self._commit(
                lambda st: make_known(st, [(line, line + LINE_SIZE)])[0],
                holder_report=lambda h: h.notify_failure(page, PAGE_SIZE, MF_ACTION_REQUIRED),
            )

    # -- the recovery path (SPEC 4) ------------------------------------------------------------
    def read_recover(self, offset: int, length: int) -> RecoveredData:
        """Recovery read: instead of EIO, every clean byte of [offset, offset+length), zeroes on
        bad lines, and the bad ranges (device offsets, line-precise, clipped to the request).
        Latent poison it touches becomes known, as any machine-check-safe read makes it, and the
        holder hears about each page with MF_ACTION_REQUIRED.  ``data`` is a bytearray."""
        if length < 0:
            raise InvalidArgument(f"negative length {length}")
        buf = bytearray(length)
        return RecoveredData(buf, self.read_recover_into(buf, offset))

    def read_recover_into(self, buffer, offset: int) -> list[tuple[int, int]]:
        """``read_recover`` into a caller's buffer; returns the bad ranges."""
        dst = memoryview(buffer).cast("B")
        length = dst.nbytes
        self._check_range(offset, length)
        self._sync()
        end = offset + length
        bad = ranges.clip(self._bad_lines(), offset, end)
        if not bad and _copy_mc_from(dst, self._mm, offset) == 0:
            return []
        # The slow path: pages that do not fault are copied from the mapping, faulting pages
        # from the cells as stored (the emulator's medium); then the bad lines are zeroed.
        pos = offset
        for s, e in ranges.clip(self._prot_bytes, offset, end) + [(end, end)]:
            if s > pos and _copy_mc_from(dst[pos - offset : s - offset], self._mm, pos):
                self._be.medium_read_into(dst[pos - offset : s - offset], pos)
            if e > s:
                self._be.medium_read_into(dst[s - offset : e - offset], s)
            pos = e
        lines = ranges.scale(ranges.clip(self._state.poison, offset, end), LINE_SIZE)
        latent = ranges.subtract([(s * LINE_SIZE, e * LINE_SIZE) for s, e in lines], self._precise)
        if latent:
            pages = sorted({p for s, e in latent for p in range(s // PAGE_SIZE, (e - 1) // PAGE_SIZE + 1)})

            def tell(holder) -> None:
                for p in pages:
                    holder.notify_failure(p * PAGE_SIZE, PAGE_SIZE, MF_ACTION_REQUIRED)

            with suppress(ReadOnly):
                self._commit(lambda st: make_known(st, latent)[0], holder_report=tell)
        bad = ranges.clip(self._bad_lines(), offset, end)
        for s, e in bad:
            dst[s - offset : e - offset] = bytes(e - s)
        return [(s, e - s) for s, e in bad]

    # -- mappings -----------------------------------------------------------------------------
    def map(self, offset: int = 0, length: int | None = None):
        from .mapping import DaxMapping

        self._sync()
        if length is None:
            length = self.size - offset
        if offset % PAGE_SIZE:
            raise InvalidArgument(f"mapping offset {offset} is not a multiple of {PAGE_SIZE}")
        if length <= 0:
            raise InvalidArgument(f"mapping length must be > 0, got {length}")
        length = align_up(length, PAGE_SIZE)
        self._check_range(offset, length)
        return DaxMapping(self, [(0, offset, length)])

    def map_extents(self, pieces: list[tuple[int, int, int]]):
        """A DaxMapping made of (mapping offset, device offset, length) pieces: a file's mmap."""
        from .mapping import DaxMapping

        self._check_alive()
        return DaxMapping(self, pieces)

    def _map_pieces(self, pieces: list[tuple[int, int, int]]) -> Region:
        """A region of this image's data pieces: (mapping offset, device offset, length)."""
        return self._be.map_region(pieces, sum(n for _, _, n in pieces))

    def _register(self, mapping) -> None:
        with self._lock:
            self._mappings.add(mapping)
            mapping._reprotect(self._prot_pages)
            self._ensure_watcher()

    def _ensure_watcher(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._stop.clear()
            self._watcher = threading.Thread(target=self._watch, name="daxkit-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        """Mappings and the holder learn of poison made known elsewhere without calling in:
        poll the generation word (one load) and apply changes, so raw loads fault, on_poison
        runs and the holder's notify_failure is called."""
        ref = weakref.ref(self)
        del self
        while True:
            dev = ref()
            if dev is None or dev._stop.is_set() or not (dev._mappings or dev._holder is not None):
                return
            stop = dev._stop
            try:
                if dev._words[LIVE_GEN] != dev._gen:
                    dev._sync()
            except (DaxError, ValueError, OSError):
                return
            del dev
            if stop.wait(WATCH_INTERVAL):
                return
