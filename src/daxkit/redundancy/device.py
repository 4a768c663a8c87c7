"""The parity layer as a stacked device (SPEC 4.2): md/dm under a DAX filesystem.

Rules
  * Same interface as the device below (``DaxOperations``), in its own offsets: logical byte x
    is lower byte ``data_start * PAGE_SIZE + x``.  Plus ``Redundant``: ``redundancy()``,
    ``parity_group()``, ``repair()``.
  * The fast paths are the lower device's plus one call.  ``direct_access`` hands out the lower
    device's own view, ``mc_read`` is its safe load, ``state_word`` its word: a read with no
    poison costs what it costs below.  Poison is a branch off them: repair, then retry.
  * A read-write open is the lower device's holder from the start (the claim is cross-process,
    so one process at a time updates parity) and stays so until ``close``.  What the lower
    device reports is repaired first; only what could not be repaired goes on: to the mappings
    made through this device (``on_poison``) and to this device's own holder, in logical
    offsets, with the flags it came with.  PRE_REMOVE goes up as it is.
  * Upward news leaves only after the lock is released: a holder may call back in, from any
    thread, and must never find this layer half-way through a parity update.
  * News that arrives while this layer is itself inside the lower device (its own reads consume
    latent poison, which the lower device reports to its holder: us) is queued and handled when
    the outermost call returns.
  * A read-only open (``readonly=True``) writes nothing: it repairs nothing in place, claims
    nothing, and its reads deliver rebuilt bytes (CRC-verified) into the caller's buffer.

Theory of operation
  ``_enter`` / ``_leave`` bracket every call that touches parity: a re-entrant lock, a depth,
  the queue of news that came in meanwhile (drained at depth 1), and the outbox of losses to
  report (delivered after the lock is let go).  The parity work itself lives in parity.py, the
  mappings made through this device in mappings.py, the format and the header in superblock.py.
"""

from __future__ import annotations

import errno
import threading
import weakref
from dataclasses import dataclass, field

from ..device.interface import ACCESS, MF_MEM_PRE_REMOVE, RECOVERY_WRITE, DaxOperations, check_range
from ..errors import Busy, DaxError, DeviceGone, HWPoisonError, InvalidArgument, MediaError, OutOfRange
from ..medium import ranges
from ..units import PAGE_SIZE
from .mappings import MappingsThrough
from .parity import LOST, Parity, page_crcs
from .superblock import is_parity, read_geometry

P = PAGE_SIZE
_ZERO_PAGE = bytes(P)


@dataclass
class RepairReport:
    """What ``repair()`` did, in logical byte ranges (offset, length).  ``repaired``: rebuilt from
    parity after poison (this call, and transparently since the last report); ``corrupt``: bytes
    changed without poison, rebuilt; ``lost``: every range that stays bad (reads fail with EIO);
    ``metadata``: lower-device ranges of parity, checksum, intent or header pages rewritten."""

    repaired: list[tuple[int, int]] = field(default_factory=list)
    corrupt: list[tuple[int, int]] = field(default_factory=list)
    lost: list[tuple[int, int]] = field(default_factory=list)
    metadata: list[tuple[int, int]] = field(default_factory=list)

    def as_dict(self) -> dict:
        def out(ivs):
            return [{"offset": o, "length": n} for o, n in ivs]

        return {
            "repaired": out(self.repaired),
            "corrupt": out(self.corrupt),
            "lost": out(self.lost),
            "metadata": out(self.metadata),
        }


def _pairs(ivs: ranges.Intervals, shift: int = 0) -> list[tuple[int, int]]:
    return [(s - shift, e - s) for s, e in ivs]


class ParityDevice(MappingsThrough):
    """A parity-protected device stacked on ``lower``.  Use ``stack(lower)`` or this class."""

    def __init__(self, lower: DaxOperations, *, readonly: bool = False):
        geo, damaged = read_geometry(lower)
        self.lower = lower
        self.path = lower.path
        self.clear_err_unit = lower.clear_err_unit
        self.size = geo.ndata * P
        self.geometry = geo
        self.readonly = readonly
        self._npages = geo.ndata
        self._base_pg = geo.data_start
        self._base = geo.data_start * P
        self.lower_offset = self._base  # logical byte x is lower byte lower_offset + x
        self._lock = threading.RLock()
        self._par = Parity(lower, geo, readonly=readonly, lock=self._lock)
        if self._par._page_store is not None:
            self._par._page_store.set_fallback(self._store_rest)  # store_fn's way back (close lets go)
        self._held = 0
        self._pending: list = []  # news that came while we were busy; (None, key): an orphan mapping
        self._outbox: list = []  # (lower intervals, flags) to tell upward
        self._told: dict[int, ranges.Intervals] = {}  # lost page -> lower ranges already told
        self._holder = None
        self._maps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # mapping -> key
        self._finalizers: dict[int, weakref.finalize] = {}  # key -> finalizer
        self._keys = 0
        self._dead = False
        self._closed = False
        if readonly:
            return
        lower.holder = self  # EBUSY when another open holds it
        try:
            self._enter()
            try:
                for pg in damaged:
                    self._par.repair_meta_page(pg)
                if self._par.recover_at_open():
                    for g in range(geo.ngroups):
                        self._par.verify(g)
                self._repair_known()
                self._par.settle()
            finally:
                self._leave()
        except BaseException:
            lower.holder = None
            raise

    def __repr__(self) -> str:
        return f"<ParityDevice {self.path!r} size={self.size} group={self.geometry.group}>"

    def __enter__(self) -> ParityDevice:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the lock, the queue, the outbox -----------------------------------------------------------
    def _enter(self) -> None:
        self._lock.acquire()
        self._held += 1

    def _leave(self) -> None:
        try:
            if self._held == 1 and (self._pending or self._par.newly_lost):
                self._drain()
        finally:
            self._held -= 1
            out = None
            if not self._held and self._outbox:
                out, self._outbox = self._outbox, []
            self._lock.release()
        if out:
            self._deliver(out)

    def _drain(self) -> None:
        while self._pending:
            item = self._pending.pop(0)
            if item[0] is None:
                self._finalizers.pop(item[1], None)
                self._par.unpin(item[1])
            else:
                self._failure(*item)
        par = self._par
        while par.newly_lost:
            page = par.newly_lost.pop()
            pos = (self._base_pg + page) * P
            self._tell(page, [(s, s + n) for s, n in self.lower.known_errors(pos, P)], 0)
        for page in [p for p in self._told if p not in par.lost]:
            del self._told[page]

    def _tell(self, page: int, ivs: ranges.Intervals, flags: int) -> None:
        told = self._told.get(page, [])
        new = ranges.subtract(ranges.union([], ivs), told)
        if new:
            self._told[page] = ranges.union(told, new)
            self._outbox.append((new, flags))

    def _deliver(self, out: list) -> None:
        for ivs, flags in out:
            for m in list(self._maps):
                m._tell_poison(ivs)
            holder = self._holder
            if holder is not None:
                for s, e in ivs:
                    holder.notify_failure(s - self._base, e - s, flags)

    def _writable(self) -> None:
        if self.readonly:
            raise DaxError("the parity device was opened read-only", errno=errno.EROFS, path=self.path)

    # -- the lower device's holder -----------------------------------------------------------------
    def notify_failure(self, offset: int, length: int, flags: int) -> int:
        """Called by the lower device (we are its holder), in lower offsets."""
        if flags & MF_MEM_PRE_REMOVE:
            self._dead = True
            holder = self._holder
            return holder.notify_failure(0, self.size, flags) if holder is not None else 0
        self._enter()
        try:
            if self._held > 1:
                self._pending.append((offset, length, flags))
            else:
                self._failure(offset, length, flags)
        finally:
            self._leave()
        return 0

    def _failure(self, pos: int, length: int, flags: int) -> None:
        """Repair what [pos, pos+length) of the lower device lost; queue what cannot be."""
        if self._dead or self._closed:
            return
        par, end = self._par, pos + length
        first, last = pos // P, (end - 1) // P + 1
        for pg in range(first, min(last, self._base_pg)):
            try:
                par.repair_meta_page(pg)
            except DeviceGone:
                return
            except DaxError:
                pass  # left as it is: the next read of it, or repair(), tries again
        for pg in range(max(first, self._base_pg), last):
            page = pg - self._base_pg
            try:
                status = par.repair_page(page)
            except DeviceGone:
                return
            except DaxError:  # (a full badblocks table, say): what could not be repaired goes up
                status = LOST
            if status == LOST:
                self._tell(page, [(max(pos, pg * P), min(end, pg * P + P))], flags)

    def _repair_known(self) -> None:
        for s, n in self.lower.known_errors(0, self.lower.size):
            self._failure(s, n, 0)

    @property
    def holder(self):
        return self._holder

    @holder.setter
    def holder(self, obj) -> None:
        """At most one holder (the filesystem).  The lower device's holder is this device."""
        with self._lock:
            if self._closed or self._dead:
                raise DeviceGone("device is closed", path=self.path)
            if obj is not None and self._holder is not None and obj is not self._holder:
                raise Busy(f"device already has a holder ({self._holder!r})", path=self.path)
            self._holder = obj

    # -- argument checks ---------------------------------------------------------------------------
    def _check_range(self, offset: int, length: int) -> None:
        check_range(offset, length, self.size)

    # -- direct access ------------------------------------------------------------------------------
    def direct_access(self, pgoff: int, nr_pages: int, mode: int = ACCESS) -> tuple[int, memoryview]:
        if 0 <= pgoff < self._npages and nr_pages > 0:
            try:
                return self.lower.direct_access(pgoff + self._base_pg, nr_pages, mode)
            except HWPoisonError:
                return self._direct_access_repair(pgoff, nr_pages, mode)
        if nr_pages < 0:
            raise InvalidArgument(f"nr_pages must be >= 0, got {nr_pages}")
        if pgoff < 0:
            raise InvalidArgument(f"pgoff must be >= 0, got {pgoff}")
        if mode not in (ACCESS, RECOVERY_WRITE):
            raise InvalidArgument(f"unknown access mode {mode!r}")
        raise OutOfRange(f"page {pgoff} (+{nr_pages}) is past the device end ({self._npages} pages)")

    def _direct_access_repair(self, pgoff: int, nr_pages: int, mode: int) -> tuple[int, memoryview]:
        """Known poison in the range: repair every bad page in it, then try again."""
        avail = min(nr_pages, self._npages - pgoff)
        start, end = (self._base_pg + pgoff) * P, (self._base_pg + pgoff + avail) * P
        if not self.readonly:
            self._repair_span(start, end)
        try:
            return self.lower.direct_access(pgoff + self._base_pg, nr_pages, mode)
        except HWPoisonError:
            hit = self.lower.first_bad(start, end)
            where = start if hit is None else hit
            raise HWPoisonError(
                f"known bad sector at offset {where - self._base} in pages {pgoff}+{avail} "
                "that parity could not rebuild"
            ) from None

    def _repair_span(self, start: int, end: int) -> None:
        """Repair every page of lower [start, end) under a known error."""
        lo = self.lower
        self._enter()
        try:
            pos = start
            while pos < end:
                hit = lo.first_bad(pos, end)
                if hit is None:
                    break
                self._par.repair_page(hit // P - self._base_pg)
                pos = hit - hit % P + P
        finally:
            self._leave()

    # -- loads and stores -----------------------------------------------------------------------------
    def mc_read(self, dst, offset: int) -> int:
        n = dst.nbytes if type(dst) is memoryview else len(dst)
        if offset < 0 or offset + n > self.size:
            self._check_range(offset, n)
        got = self.lower.mc_read(dst, offset + self._base)
        if got == n:
            return n
        return self._mc_read_repair(memoryview(dst).cast("B"), offset, got)

    def _mc_read_repair(self, dst: memoryview, offset: int, got: int) -> int:
        """The safe load stopped at poison: repair the page (or, read-only, rebuild it into
        ``dst``) and go on; stop for good at a page that cannot be rebuilt."""
        n, lo, par = dst.nbytes, self.lower, self._par
        tried = set()
        self._enter()
        try:
            while got < n:
                page = (offset + got) // P
                if page in tried:
                    break
                tried.add(page)
                if self.readonly:
                    content = par.rebuilt_verified(page)
                    if content is None:
                        break
                    s = offset + got - page * P
                    e = min(P, offset + n - page * P)
                    dst[got : got + e - s] = content[s:e]
                    got += e - s
                elif par.repair_page(page) == LOST:
                    break
                if got < n:
                    got += lo.mc_read(dst[got:], offset + got + self._base)
        finally:
            self._leave()
        return got

    def store_fn(self):
        """The store a filesystem's fast path keeps: the native page store itself, which hands
        anything but one page, and any page it declines, to ``_store_rest`` (no Python frame
        on the common path); ``store`` where there is no native path."""
        ps = self._par._page_store
        if ps is None or self._par._native_page is not ps:
            return self.store
        return ps.store

    def _store_rest(self, data, offset: int, rc: int | None) -> int:
        """What the native store left: anything but one page (``rc`` None: the whole store), or
        a page it declined with ``rc``."""
        if rc is None:
            return self.store(data, offset)
        self._enter()
        try:
            self._par.update(data, offset, rc)
        finally:
            self._leave()
        return P

    def store(self, data, offset: int) -> int:
        n = data.nbytes if type(data) is memoryview else len(data)
        one = self._par._native_page  # the fast path: one page, lock and all, in one native call
        if n == P and one is not None and not offset % P and 0 <= offset < self.size:
            rc = one(data, offset)
            if rc == 0:
                return n
            done = 0
        else:
            if offset < 0 or offset + n > self.size:
                self._check_range(offset, n)
            if self.readonly:
                self._writable()
            if not n:
                return n
            with self._lock:  # the common case: whole pages, stored by the native path alone
                done, rc = self._par.store_fast(data, offset, n)
        if done < n:
            self._enter()
            try:
                self._par.update(memoryview(data)[done:] if done else data, offset + done, rc)
            finally:
                self._leave()
        return n

    def read_recover_into(self, buffer, offset: int) -> list[tuple[int, int]]:
        """Repair what can be repaired, then the lower device's recovery read for the rest."""
        dst = memoryview(buffer).cast("B")
        n = dst.nbytes
        self._check_range(offset, n)
        lo, base = self.lower, self._base
        bad = lo.read_recover_into(dst, offset + base)
        if not bad:
            return []
        pages = sorted({p for s, k in bad for p in range((s - base) // P, (s - base + k - 1) // P + 1)})
        out: ranges.Intervals = []
        self._enter()
        try:
            for page in pages:
                s, e = max(offset, page * P), min(offset + n, page * P + P)
                if self.readonly:
                    content = self._par.rebuilt_verified(page)
                    if content is not None:
                        dst[s - offset : e - offset] = content[s - page * P : e - page * P]
                        continue
                else:
                    self._par.repair_page(page)
                for bs, bn in lo.read_recover_into(dst[s - offset : e - offset], s + base):
                    out = ranges.add(out, bs - base, bs - base + bn)
        finally:
            self._leave()
        return [(s, e - s) for s, e in out]

    # -- the recovery path ----------------------------------------------------------------------------
    def recovery_write(self, pgoff: int, offset_in_page: int, data) -> int:
        data = memoryview(data).cast("B")
        if pgoff < 0 or offset_in_page < 0:
            raise InvalidArgument(f"pgoff={pgoff} offset_in_page={offset_in_page} must be >= 0")
        start = pgoff * P + offset_in_page
        n = data.nbytes
        self._check_range(start, n)
        self._writable()
        self._enter()
        try:
            if not self._clear_for_write(start, n):
                if offset_in_page or n % P:
                    return 0  # pmem_recovery_write: only whole pages can be recovered
                def write(s: int, e: int) -> None:
                    self.lower.recovery_write(s // P + self._base_pg, 0, data[s - start : e - start])

                self._write_lost(start, n, write)
            elif n:
                self._par.update(data, start)
        finally:
            self._leave()
        return n

    def zero_page_range(self, pgoff: int, nr_pages: int) -> None:
        if nr_pages != 1:
            raise MediaError(f"zero_page_range: only one page at a time (asked {nr_pages})")
        if pgoff < 0 or pgoff >= self._npages:
            raise OutOfRange(f"page {pgoff} is past the device end ({self._npages} pages)")
        self._writable()
        self._enter()
        try:
            if self._clear_for_write(pgoff * P, P):
                self._par.update(_ZERO_PAGE, pgoff * P)
            else:
                lo_pg = pgoff + self._base_pg
                self._write_lost(pgoff * P, P, lambda s, e: self.lower.zero_page_range(lo_pg, 1))
        finally:
            self._leave()

    def recovery_write_subpage(self, offset: int, data) -> list[tuple[int, int]]:
        """SPEC 4.1 over parity: the pages touched are repaired first, so the write is a plain
        store; only a page that cannot be rebuilt takes the lower device's sub-page recovery
        write (its uncovered bad lines stay bad)."""
        data = memoryview(data).cast("B")
        n = data.nbytes
        self._check_range(offset, n)
        self._writable()
        kept: list[tuple[int, int]] = []
        first, last = offset // P * P, -(-(offset + n) // P) * P
        self._enter()
        try:
            if self._clear_for_write(first, last - first):  # the pages touched, as the lower's
                if n:
                    self._par.update(data, offset)
            else:

                def write(s: int, e: int) -> None:
                    piece = data[s - offset : e - offset]
                    kept.extend(self.lower.recovery_write_subpage(s + self._base, piece))

                self._write_lost(offset, n, write)
        finally:
            self._leave()
        return [(s - self._base, k) for s, k in kept]

    def _clear_for_write(self, start: int, n: int) -> bool:
        """Repair the known-bad pages of logical [start, start+n); True when none is left."""
        lo_start = start + self._base
        if self.lower.first_bad(lo_start, lo_start + n) is None:
            return True
        self._repair_span(lo_start, lo_start + n)
        return self.lower.first_bad(lo_start, lo_start + n) is None

    def _write_lost(self, start: int, n: int, write) -> None:
        """A write over pages that parity could not rebuild: the lower device's recovery write,
        group by group, each then recomputed from what it holds (lock held).  ``write(s, e)``
        writes logical [s, e) through the lower device."""
        par, end = self._par, start + n
        first, last = start // P, (end - 1) // P + 1
        for g in range(first // par.G, (last - 1) // par.G + 1):
            a, b = max(first, g * par.G), min(last, (g + 1) * par.G)
            par.begin(g, a, b)
            write(max(start, a * P), min(end, b * P))
            par.recompute(g, written=set(range(a, b)), repair=False)
        for page in range(first, last):
            if not self.lower.known_errors((self._base_pg + page) * P, P):
                par.lost.discard(page)

    # -- known errors, state ------------------------------------------------------------------------------
    def known_errors(self, offset: int = 0, length: int | None = None) -> list[tuple[int, int]]:
        end = self.size if length is None else min(self.size, offset + length)
        offset = max(0, offset)  # never the metadata below logical 0
        if end <= offset:
            return []
        return [(s - self._base, n) for s, n in self.lower.known_errors(offset + self._base, end - offset)]

    def first_bad(self, start: int, end: int) -> int | None:
        start, end = max(0, start), min(self.size, end)
        if end <= start:
            return None
        hit = self.lower.first_bad(start + self._base, end + self._base)
        return None if hit is None else hit - self._base

    @property
    def state_word(self) -> memoryview:
        return self.lower.state_word

    @property
    def state_generation(self) -> int:
        return self.lower.state_generation

    def watch_errors(self, watching: bool = True) -> None:
        self.lower.watch_errors(watching)

    def errors_seen(self, gen: int) -> None:
        self.lower.errors_seen(gen)

    # -- redundancy (the Redundant protocol) ----------------------------------------------------------------
    def redundancy(self) -> dict:
        geo = self.geometry
        return {"mode": "parity", "group": geo.group, "space_overhead": geo.overhead}

    def parity_group(self, offset: int) -> dict:
        """The group holding the page at logical ``offset``: its data pages (logical offsets)
        and its parity page (a lower device offset)."""
        if not 0 <= offset < self.size:
            raise InvalidArgument(f"offset {offset} is outside the device (size {self.size})")
        g = offset // P // self._par.G
        a, b = self.geometry.group_pages(g)
        return {"data": [p * P for p in range(a, b)], "parity": [self._par.parity_pos(g)]}

    def repair(self, verify: bool = True) -> RepairReport:
        """Repair everything repairable: known errors anywhere on the lower device, pending
        mappings' groups made current, and (``verify``) every data page's CRC and every parity
        page checked (the scrub of silent corruption)."""
        self._writable()
        par = self._par
        self._enter()
        try:
            for g in sorted(par.pins):
                par.recompute(g)  # mappings' raw stores: persisted, not taken for corruption
            self._repair_known()
            if verify:
                for g in range(self.geometry.ngroups):
                    par.verify(g)
                self._verify_metadata()
            par.settle()
        finally:
            self._leave()
        self._enter()  # the drain above may have lost more; take the log after it
        try:
            repaired, corrupt, meta = par.take_log()
            lost = ranges.union([], [(s, s + n) for s, n in self.known_errors()])
        finally:
            self._leave()
        return RepairReport(_pairs(repaired), _pairs(corrupt), _pairs(lost), _pairs(meta))

    def checksum_mismatches(self) -> list[int]:
        """Logical offsets of data pages whose bytes fail their CRC32C, found without changing
        anything (what fsck reports; ``repair`` rebuilds them).  Pages with bad lines are left
        to the known-error reports; a group under an open mapping is not judged."""
        par, geo, out = self._par, self.geometry, []
        for g in range(geo.ngroups):
            if g in par.pins:
                continue
            a, b = geo.group_pages(g)
            buf = bytearray((b - a) * P)
            bad = self.lower.read_recover_into(buf, par.data_pos(a))
            table = bytearray(4 * (b - a))
            if bad or self.lower.mc_read(table, par.crc_pos(a)) < len(table):
                continue  # poison here is reported as media errors; fsck does not repair
            crcs = page_crcs(buf, b - a).tobytes()
            bad_pages = [i for i in range(b - a) if crcs[4 * i : 4 * i + 4] != table[4 * i : 4 * i + 4]]
            out += [(a + i) * P for i in bad_pages]
        return out

    def _verify_metadata(self) -> None:
        """Read the header, intent and byte map pages (the CRC and parity pages were read by
        verify): latent poison there becomes known and they are rewritten."""
        geo = self.geometry
        buf = memoryview(bytearray(P))
        for pg in range(geo.csum_start):
            if self._par.contents(buf, pg * P):
                self._par.repair_meta_page(pg)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def close(self, close_lower: bool = True) -> None:
        """Close every mapping made through this device (each persists first), leave nothing
        in flight, let go of the lower device and (``close_lower``) close it."""
        if self._closed:
            return
        if not (self.readonly or self._dead):
            try:
                for m in list(self._maps):
                    m.close()
                self._enter()
                try:
                    self._par.settle()
                finally:
                    self._leave()
                if self.lower.holder is self:
                    self.lower.holder = None
            except DeviceGone:
                pass
        self._closed = True
        self._par.drop_window()  # a view of the lower device keeps its mapping (and claim) alive
        if self._par._page_store is not None:
            self._par._page_store.set_fallback(None)  # the device and its store let go of each other
        for fin in self._finalizers.values():
            fin.detach()
        if close_lower:
            self.lower.close()


def stack(lower: DaxOperations, *, readonly: bool = False) -> DaxOperations:
    """The device to put a filesystem on: a ParityDevice over ``lower`` when ``lower`` carries a
    parity header, else ``lower`` itself."""
    return ParityDevice(lower, readonly=readonly) if is_parity(lower) else lower
