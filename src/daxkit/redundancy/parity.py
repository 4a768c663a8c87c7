"""Parity and checksums over a lower device: update, rebuild, recompute, verify (what md's raid5
personality is to md, without the stripe cache).

Rules
  * Every method here runs with the stacked device's lock held (device.py takes it) and never
    calls the layer above: it returns what happened, and the stacked device reports it.
  * The lower device is reached only through its interface.  Loads are its machine-check-safe
    loads (``mc_read``, ``read_recover_into``), stores its ``store`` / ``recovery_write``: never a
    raw access, so latent poison anywhere is met as a short read, never as a signal.
  * A rebuilt page is written back only when its CRC32C matches the table.  Otherwise the page is
    lost: it stays known bad on the lower device (a page lost to silent corruption is made known
    bad, as md records unreadable sectors in its badblocks), so reads of it fail with EIO and
    never return wrong bytes.
  * Parity is the XOR of what the lower device's recovery read returns for each data page: the
    data while a page is clean, zeroes on the bad lines of a lost page.  A group with a lost page
    therefore keeps protecting its other pages once it has been recomputed.
  * No RAID-5 write hole.  Updates run one at a time (the lock), so one 8-byte "update in
    flight" word names the group and the pages whose data or CRCs the update may leave torn; it
    is stored before the update's first write (one aligned 8-byte store: a kill cannot tear it)
    and cleared when the update has stored everything.
    At open that group is recomputed, its named pages from their data, its other pages checked
    against their CRCs -- so a crash never blesses corruption elsewhere, as a recompute of every
    recently written group (md's lazily cleared bitmap) would.  A group covered by an open
    mapping has its byte set in the dirty-group map until the mapping closes: at open it is
    recomputed whole (raw stores are covered at ``persist``).
  * A repair stores an intent record (the page, its CRC) before its recovery write and clears it
    after; the next open replays a record it finds.

Theory of operation
  ``update`` is the store path: read the old page, the parity page and the old CRC
  (machine-check-safe), name the update in flight, parity ^= old ^ new, store data, parity and
  the new CRC.
  Where daxkit._parity is built (ISA-L's CRC32C), a store of whole pages is those same steps in
  one native call per group on a direct_access view of the lower device, taken while nothing is
  known bad there and kept while its state word holds still; every load in it is
  machine-check-safe, and it stores nothing unless every load succeeded and every old CRC
  matched.  A one-page store is one native call from the device's ``store`` on (``PageStore``:
  the lock taken there, nothing in flight and the group not dirty read from the medium), and
  ``store_fast`` takes whole pages group by group under the lock alone.  Anything they decline
  takes the Python steps, which find out why.
  Anything unusual on the way -- poison in a page it reads, a CRC that does not match the old
  data -- sends it to ``_update_slow``, which repairs or verifies the group first and retries, or,
  when the group has a page that cannot be rebuilt, writes through and recomputes.
  ``repair_page`` rebuilds one bad page: parity XOR the other pages, CRC check, intent record,
  RECOVERY_WRITE + recovery_write.  ``recompute`` makes a group's parity and CRCs current from
  its data (open after a crash, persist, degraded writes).  ``verify`` is the scrub of one group:
  every CRC and the parity checked, mismatches told apart (a corrupt page, a wrong CRC entry, a
  stale parity page) and fixed, or the pages lost.
"""

from __future__ import annotations

import struct

import crc32c
import numpy as np

from ..device.interface import RECOVERY_WRITE
from ..errors import DaxError
from ..medium import ranges
from ..units import PAGE_SIZE
from .layout import INTENT_SIZE, Geometry, pack_header, pack_intent, unpack_intent

try:  # the store path in one native call (ISA-L's CRC32C); without it, the same steps in Python
    from .._parity import PageStore as _PageStore
    from .._parity import update as _native_update
except ImportError:  # pragma: no cover - built wherever libisal-dev is installed
    _native_update = _PageStore = None

NATIVE_MISMATCH, NATIVE_DECLINED, NATIVE_SKIPPED = -2, -4, -5  # the native call's refusals (see _parity.c)
P = PAGE_SIZE
WORDS = P // 8
LE32 = np.dtype("<u4")  # the CRC table, as stored
CLEAN, REPAIRED, LOST = 0, 1, 2
SLOT = INTENT_SIZE  # the update-in-flight word: in the intent page, after the repair record
_crc = crc32c.crc32c
_U32 = struct.Struct("<I")
_u32 = _U32.unpack
_U64 = struct.Struct("<Q")
_ONE, _ZERO = b"\x01", b"\x00"


def xor_pages(buf, k: int) -> np.ndarray:
    """XOR of the k pages in ``buf`` (a page of uint64 words)."""
    a = np.frombuffer(buf, dtype=np.uint64, count=k * WORDS)
    return np.bitwise_xor.reduce(a.reshape(k, WORDS), axis=0)


def page_crcs(buf, k: int) -> np.ndarray:
    mv = memoryview(buf)
    return np.fromiter((_crc(mv[i : i + P]) for i in range(0, k * P, P)), LE32, k)


class Parity:
    def __init__(self, lower, geo: Geometry, *, readonly: bool = False, lock=None):
        self.lo = lower
        self.geo = geo
        self.readonly = readonly
        self.G = geo.group
        self.N = geo.ndata
        self.base = geo.data_start * P  # lower offset of logical byte 0
        self._parity0 = geo.parity_start * P
        self._csum0 = geo.csum_start * P
        self._map0 = (geo.intent_start + 1) * P
        self._intent0 = geo.intent_start * P
        self.dirty = bytearray(geo.ngroups)  # the byte map as this process last stored it
        self._slot = self._intent0 + SLOT
        self._inflight = 0  # the update-in-flight word as last stored (0: none)
        self.pins: dict[int, int] = {}  # group -> open mappings covering pages of it
        self.maps: dict[int, list[tuple[int, int]]] = {}  # open mapping -> its pages [a, b)
        self.lost: set[int] = set()  # logical pages that could not be rebuilt
        self.repaired: list[tuple[int, int]] = []  # logical ranges, since the last report
        self.corrupt: list[tuple[int, int]] = []
        self.metadata: list[tuple[int, int]] = []  # lower ranges of metadata pages rewritten
        self.newly_lost: list[int] = []  # pages lost since the device last looked
        self._seq = 0
        self._old = np.zeros(WORDS, np.uint64)
        self._old_mv = memoryview(self._old).cast("B")
        self._par = np.zeros(WORDS, np.uint64)
        self._par_mv = memoryview(self._par).cast("B")
        self._crcbuf = bytearray(4)
        # The native store path works on a direct_access view of the whole lower device, taken
        # while nothing is known bad there and kept while the lower device's state word holds.
        self._native = _native_update if not readonly else None
        self._layout = (self.base, self._parity0, self._csum0, self._slot, self.G, self.N)
        # One page in one native call, the device's lock (``lock``) taken there too; it holds the
        # view ``window`` takes (set_view) and asks ``window`` for one when it has none.
        self._page_store = None
        if _PageStore is not None and not readonly and lock is not None:
            self._page_store = _PageStore(lock, (*self._layout, self._map0), self.window)
        self._native_page = self._page_store
        self._state: memoryview | None = None  # lower.state_word, taken with the view
        self._view_gen: int | None = None
        self._view: memoryview | None = None

    # -- positions on the lower device (bytes) ----------------------------------------------------
    def data_pos(self, page: int) -> int:
        return self.base + page * P

    def parity_pos(self, g: int) -> int:
        return self._parity0 + g * P

    def crc_pos(self, page: int) -> int:
        return self._csum0 + 4 * page

    def mapped(self, a: int, b: int) -> set[int]:
        """Pages of [a, b) that an open mapping covers: raw stores may be ahead of their CRC."""
        out: set[int] = set()
        for ivs in self.maps.values():
            for s, e in ivs:
                out.update(range(max(a, s), min(b, e)))
        return out

    # -- the update in flight and the dirty-group byte map ------------------------------------------
    def begin(self, g: int, a: int, b: int) -> None:
        """Name the update about to write group g, its pages [a, b) possibly torn by it."""
        base = g * self.G
        word = ((g << 26) | ((a - base) << 13) | (b - base)) + 1
        if word != self._inflight:
            self.lo.store(_U64.pack(word), self._slot)
            self._inflight = word

    def settle(self) -> None:
        """No update is in flight (the lock is held and free of work): say so."""
        if self._inflight:
            self.lo.store(bytes(8), self._slot)
            self._inflight = 0

    def _in_flight(self) -> tuple[int, int, int] | None:
        buf = bytearray(8)
        if self.lo.mc_read(buf, self._slot) < 8:
            return None
        word = _U64.unpack(buf)[0]
        if not word:
            return None
        word -= 1
        g, a, b = word >> 26, (word >> 13) & 0x1FFF, word & 0x1FFF
        if g >= self.geo.ngroups:
            return None
        return g, g * self.G + a, min(self.N, g * self.G + b)

    def _set_dirty(self, g: int, value: int) -> None:
        self.lo.store(_ONE if value else _ZERO, self._map0 + g)
        self.dirty[g] = value

    def pin(self, key: int, pages: list[tuple[int, int]]) -> None:
        """An open mapping covers ``pages``: their groups stay dirty until it is let go."""
        self.maps[key] = pages
        for g in self.groups_of(pages):
            self.pins[g] = self.pins.get(g, 0) + 1
            if not self.dirty[g]:
                self._set_dirty(g, 1)

    def groups_of(self, pages: list[tuple[int, int]]) -> list[int]:
        return sorted({g for a, b in pages for g in range(a // self.G, (b - 1) // self.G + 1)})

    def unpin(self, key: int) -> None:
        """The mapping is gone: persist its groups (they are current from here on) and let go."""
        pages = self.maps.get(key)
        if pages is None:
            return
        groups = self.groups_of(pages)
        for g in groups:
            self.recompute(g)
        del self.maps[key]
        for g in groups:
            left = self.pins.get(g, 0) - 1
            if left > 0:
                self.pins[g] = left
                continue
            self.pins.pop(g, None)
            self._set_dirty(g, 0)

    # -- loads -------------------------------------------------------------------------------------
    def contents(self, mv: memoryview, pos: int) -> list[int]:
        """Fill ``mv`` (whole pages) from the lower device at ``pos`` with what its recovery read
        gives (zeroes on bad lines); returns the indexes of the pages that had bad lines.  Latent
        poison met becomes known (the lower device tells us as its holder; we are busy, so that
        news waits for the device to drain it)."""
        lo, n, done, bad = self.lo, mv.nbytes, 0, []
        while done < n:
            done += lo.mc_read(mv[done:], pos + done)
            if done >= n:
                break
            ps = done - done % P
            if lo.read_recover_into(mv[ps : ps + P], pos + ps):
                bad.append(ps // P)
            done = ps + P
        return bad

    def crc_table(self, a: int, b: int) -> np.ndarray | None:
        """The CRC entries of pages [a, b), or None when the checksum pages cannot be read
        even after rebuilding them from the data."""
        buf = bytearray(4 * (b - a))
        if self.lo.mc_read(buf, self.crc_pos(a)) < len(buf):
            for cp in range(self.crc_pos(a) // P, (self.crc_pos(b) - 1) // P + 1):
                self.repair_csum_page(cp)
            if self.lo.mc_read(buf, self.crc_pos(a)) < len(buf):
                return None
        return np.frombuffer(buf, LE32).copy()

    def put_page(self, lower_page: int, data) -> None:
        """Rewrite a whole metadata page, clearing its known poison (the recovery write)."""
        self.lo.direct_access(lower_page, 1, RECOVERY_WRITE)
        self.lo.recovery_write(lower_page, 0, data)

    # -- the store path ------------------------------------------------------------------------------
    def window(self) -> memoryview | None:
        """A view of the whole lower device for the native store path, or None while anything
        is known bad on it (then every store takes the careful path, as it must near poison)."""
        if self._state is None:
            self._state = self.lo.state_word
        gen = self._state[0]
        if gen != self._view_gen:
            self._view_gen, self._view = gen, None
            n = self.lo.size // P
            try:
                avail, view = self.lo.direct_access(0, n)
                if avail == n:
                    self._view = view
            except DaxError:
                pass
            if self._page_store is not None:
                if self._view is None:
                    self._page_store.set_view(None, None, 0)
                else:
                    self._page_store.set_view(self._view, self._state, gen)
        return self._view

    def drop_window(self) -> None:
        """Let go of the lower device's memory (its views keep its mapping, and its claim)."""
        self._state, self._view_gen, self._view = None, None, None
        if self._page_store is not None:
            self._page_store.set_view(None, None, 0)

    def _update_native(self, src, page: int, k: int) -> int:
        """Pages [page, page + k) of one group stored in one native call: 0 when done.  Else
        (nothing stored) the caller takes the careful path: no view, an update in flight, a
        group under an open mapping (NATIVE_DECLINED), a load that faulted, or a page read into
        parity that does not match its CRC (NATIVE_MISMATCH)."""
        g = page // self.G
        if self._inflight or g in self.pins or (view := self.window()) is None:
            return NATIVE_DECLINED
        a = g * self.G
        gk = min(self.G, self.N - a)
        word = ((g << 26) | ((page - a) << 13) | (page + k - a)) + 1
        gpos, ppos, cpos = self.base + a * P, self._parity0 + g * P, self._csum0 + 4 * a
        return self._native(view, gpos, gk, page - a, ppos, cpos, self._slot, word, src)

    def store_fast(self, src, off: int, n: int) -> tuple[int, int | None]:
        """The common store, whole pages with nothing unusual on the way, one native call per
        group (lock held; touches nothing but the native calls, so it needs no depth, no queue
        and no outbox).  Returns (bytes stored, what the native call said of the group at
        ``off`` + that many bytes): (n, 0) when all is stored; rc None when it was not asked
        (not built, not whole pages, an update in flight, an open mapping over the group, or no
        current view: ``window`` runs only inside ``update``, whose caller takes the news)."""
        native = self._native
        if native is None or off % P or n % P or self._inflight:
            return 0, None
        state = self._state
        if state is None or state[0] != self._view_gen or (view := self._view) is None:
            return 0, None
        pins, G = self.pins, self.G
        if n == P:
            if pins and off // P // G in pins:
                return 0, None
            rc = self._native_page(view, off, src, self._layout)
            return (0, rc) if rc else (P, 0)
        page, end, done = off // P, (off + n) // P, 0
        mv = src if type(src) is memoryview and src.format == "B" else memoryview(src).cast("B")
        while page < end:
            g = page // G
            if pins and g in pins:
                return done, None
            a = g * G
            b = min(end, a + G)
            k = b - page
            word = ((g << 26) | ((page - a) << 13) | (b - a)) + 1
            rc = native(view, self.base + a * P, min(G, self.N - a), page - a, self._parity0 + g * P,
                        self._csum0 + 4 * a, self._slot, word, mv[done : done + k * P])  # fmt: skip
            if rc:
                return done, rc
            done += k * P
            page = b
        return n, 0

    def update(self, src, off: int, rc: int | None = None) -> None:
        """Store ``src`` at logical ``off`` keeping parity and CRCs current (lock held).  ``rc``:
        what the native call already said of the first group (``store_fast``), None: not asked."""
        n = src.nbytes if type(src) is memoryview else len(src)
        if n == P and not off % P:
            # the native store path: nothing in flight, no mapping over the group, a current view
            if rc == NATIVE_SKIPPED:
                rc = None
            if rc is None and (
                self._native_page is not None and not self._inflight
                and (not self.pins or off // P // self.G not in self.pins)
                and self.window() is not None
            ):  # fmt: skip
                rc = self._native_page(src, off)
                if not rc:
                    return  # stored, and the in-flight word cleared again
            if rc == NATIVE_MISMATCH:
                self.verify(off // P // self.G)  # silent corruption in the group: scrub it first
            self._update_page(src, off // P)
        else:
            self._update_range(memoryview(src).cast("B"), off, n, rc)
        # Done: no longer in flight.  A word left standing would make a crash later take this
        # finished page for a torn one, and bless silent corruption of it as its data.
        self.settle()

    def _update_page(self, src, page: int) -> None:
        """One whole page in Python (the native path declined or is not built): 3 safe loads,
        2 XORs, 3 stores, 2 CRCs.  The old
        page's CRC is checked although none of its bytes survive the store: parity ^= old
        must not take silent corruption of the old page into parity."""
        g = page // self.G
        lo = self.lo
        pos = self.base + page * P
        ppos = self._parity0 + g * P
        cpos = self._csum0 + 4 * page
        if (
            lo.mc_read(self._old_mv, pos) == P
            and lo.mc_read(self._par_mv, ppos) == P
            and (
                lo.mc_read(self._crcbuf, cpos) == 4 and _crc(self._old_mv) == _u32(self._crcbuf)[0]
                or (g in self.pins and page in self.mapped(page, page + 1))  # raw stores: no check
            )
        ):
            base = g * self.G
            word = ((g << 26) | ((page - base) << 13) | (page + 1 - base)) + 1
            if word != self._inflight:  # begin(g, page, page + 1), inline
                lo.store(_U64.pack(word), self._slot)
                self._inflight = word
            par = self._par
            np.bitwise_xor(par, self._old, out=par)
            np.bitwise_xor(par, np.frombuffer(src, np.uint64), out=par)
            lo.store(src, pos)
            lo.store(self._par_mv, ppos)
            lo.store(_U32.pack(_crc(src)), cpos)
            return
        self._update_slow(g, page, page + 1, memoryview(src).cast("B"), page * P)

    def _update_range(self, src: memoryview, off: int, n: int, rc: int | None = None) -> None:
        end = off + n
        first, last = off // P, (end - 1) // P + 1
        for g in range(first // self.G, (last - 1) // self.G + 1):
            a, b = max(first, g * self.G), min(last, (g + 1) * self.G)
            s, e = max(off, a * P), min(end, b * P)
            self._update_group(g, a, b, src[s - off : e - off], s, rc=rc)
            rc = None

    def _update_group(
        self, g: int, a: int, b: int, src: memoryview, off: int, *, retry: bool = True, rc: int | None = None
    ) -> None:
        lo, k = self.lo, b - a
        full = off == a * P and src.nbytes == k * P
        whole = (a, b) == self.geo.group_pages(g)
        if full and retry and self._native is not None:
            if rc is None:
                rc = self._update_native(src, a, k)
            if not rc:
                return
            if rc == NATIVE_MISMATCH:
                self.verify(g)  # silent corruption in the group: scrub it first
        if full and whole:
            # The whole group is new: its parity comes from the new data alone.
            self.begin(g, a, b)
            lo.store(src, self.data_pos(a))
            self.put_page(self.geo.parity_start + g, xor_pages(src, k))
            lo.store(page_crcs(src, k).tobytes(), self.crc_pos(a))
            return
        old = bytearray(k * P)
        par = bytearray(P)
        ok = lo.mc_read(old, self.data_pos(a)) == k * P and lo.mc_read(par, self.parity_pos(g)) == P
        if ok:  # parity ^= old: the old pages must be what their CRCs say (raw stores aside)
            table = self.crc_table(a, b)
            check = np.ones(k, bool)
            if g in self.pins:
                for page in self.mapped(a, b):
                    check[page - a] = False
            ok = table is not None and bool(np.all((page_crcs(old, k) == table) | ~check))
        if not ok:
            if retry:
                return self._update_slow(g, a, b, src, off)
            return self._update_degraded(g, a, b, src, off)
        if full:
            new = src
        else:
            new = bytearray(old)
            new[off - a * P : off - a * P + src.nbytes] = src
        o = np.frombuffer(old, np.uint64).reshape(k, WORDS)
        np.bitwise_xor(o, np.frombuffer(new, np.uint64).reshape(k, WORDS), out=o)
        pa = np.frombuffer(par, np.uint64)
        np.bitwise_xor(pa, np.bitwise_xor.reduce(o, axis=0), out=pa)
        self.begin(g, a, b)
        lo.store(src, self.base + off)
        lo.store(par, self.parity_pos(g))
        lo.store(page_crcs(new, k).tobytes(), self.crc_pos(a))

    def _update_slow(self, g: int, a: int, b: int, src: memoryview, off: int) -> None:
        """Something in the group is not as the fast path needs it: repair the touched pages,
        verify the group, then retry once; a group that stays degraded is written through."""
        for page in range(a, b):
            if self.repair_page(page) == LOST:
                return self._update_degraded(g, a, b, src, off)
        self.verify(g)  # a CRC mismatch on an old page, or a parity page that needs rebuilding
        self._update_group(g, a, b, src, off, retry=False)

    def _update_degraded(self, g: int, a: int, b: int, src: memoryview, off: int) -> None:
        """A page of the group cannot be rebuilt: store through the lower device (whole pages
        over known poison by its recovery write, which clears them), then recompute the group
        from what is there."""
        lo = self.lo
        self.begin(g, a, b)
        lo.store(src, self.base + off)
        end = off + src.nbytes
        for page in range(a, b):
            s, e = page * P, page * P + P
            pos = self.data_pos(page)
            if off <= s and e <= end and lo.first_bad(pos, pos + P) is not None:
                self.put_page(self.geo.data_start + page, src[s - off : e - off])
        self.recompute(g, written=set(range(a, b)), repair=False)

    # -- rebuilding a page from its group ------------------------------------------------------------
    def rebuild(self, page: int) -> bytearray:
        """Parity XOR the other pages of the group (each as the recovery read gives it)."""
        g = page // self.G
        a, b = self.geo.group_pages(g)
        k = b - a
        buf = bytearray(k * P)
        mv = memoryview(buf)
        i = page - a
        if i:
            self.contents(mv[: i * P], self.data_pos(a))
        if i + 1 < k:
            self.contents(mv[(i + 1) * P :], self.data_pos(page + 1))
        self.contents(mv[i * P : (i + 1) * P], self.parity_pos(g))
        return bytearray(xor_pages(buf, k).tobytes())

    def rebuilt_verified(self, page: int) -> bytearray | None:
        """The page rebuilt from its group if it matches its CRC, else None (no write: the
        read-only open's repair)."""
        cur = bytearray(P)
        bad = self.lo.read_recover_into(cur, self.data_pos(page))
        want = self.crc_entry(page)
        return None if want is None else self.verified(page, cur, bad, want)

    def verified(self, page: int, cur: bytearray, bad: list[tuple[int, int]], want: int) -> bytearray | None:
        """The page's bytes with its bad lines rebuilt, if the result matches ``want`` (its CRC).

        Line by line first: ``cur`` (the recovery read: the clean lines, zeroes on the bad ones)
        with only the bad lines taken from the rebuild.  A line is rebuilt right when no other
        page of the group is bad on the same line, so two or more bad pages of one group are
        saved when their bad lines do not overlap -- each checked whole against its CRC.
        Then the whole rebuilt page (which also undoes silent corruption in the clean lines,
        when every other page is whole).  None: neither matches, nothing is handed out."""
        rebuilt = self.rebuild(page)
        pos = self.data_pos(page)
        merged = bytearray(cur)
        for s, n in bad:
            merged[s - pos : s - pos + n] = rebuilt[s - pos : s - pos + n]
        if _crc(merged) == want:
            return merged
        return rebuilt if _crc(rebuilt) == want else None

    def crc_entry(self, page: int) -> int | None:
        t = self.crc_table(page, page + 1)
        return None if t is None else int(t[0])

    def repair_page(self, page: int) -> int:
        """Make logical page ``page`` good again if it has bad lines: CLEAN (nothing bad),
        REPAIRED (rebuilt, verified, written back, its poison cleared) or LOST."""
        pos = self.data_pos(page)
        cur = bytearray(P)
        bad = self.lo.read_recover_into(cur, pos)  # also makes latent poison in it known
        if not bad:
            self.lost.discard(page)
            return CLEAN
        if page in self.lost or self.readonly:
            return LOST
        want = self.crc_entry(page)
        if want is None:
            return self.lose(page)
        if page // self.G in self.pins and page in self.mapped(page, page + 1):
            # Raw stores through a mapping may be ahead of parity in the clean lines: keep them,
            # take only the bad lines from the rebuilt page (last persisted, CRC-verified whole).
            rebuilt = self.rebuild(page)
            if _crc(rebuilt) != want:
                return self.lose(page)
            content = cur
            for s, n in bad:
                content[s - pos : s - pos + n] = rebuilt[s - pos : s - pos + n]
        elif (content := self.verified(page, cur, bad, want)) is None:
            return self.lose(page)
        self.rewrite(page, content, want)
        self.repaired.extend((s - self.base, n) for s, n in bad)
        return REPAIRED

    def rewrite(self, page: int, content, crc: int) -> None:
        """Write a rebuilt page back under an intent record: RECOVERY_WRITE + recovery_write,
        page-aligned, which clears its poison."""
        self._seq += 1
        self.lo.store(pack_intent(self._seq, page, crc), self._intent0)
        self.put_page(self.geo.data_start + page, content)
        self.lo.store(bytes(INTENT_SIZE), self._intent0)
        self.lost.discard(page)

    def lose(self, page: int) -> int:
        """The page cannot be rebuilt: it stays known bad on the lower device (made so when it
        had no poison: a page lost to silent corruption must read as EIO, not as wrong bytes)."""
        pos = self.data_pos(page)
        if not self.lo.known_errors(pos, P):
            self.lo.badblocks.add(f"{pos // 512} {P // 512}")
        if page not in self.lost:
            self.lost.add(page)
            self.newly_lost.append(page)
        return LOST

    # -- making a group current --------------------------------------------------------------------------
    def recompute(self, g: int, *, written=(), repair: bool = True, trusted: bool = True) -> None:
        """Parity and CRCs of group g from its data.  ``repair``: bad pages are first rebuilt
        with the current parity.  A page whose bytes may legitimately be ahead of its CRC --
        in ``written``, under an open mapping, anywhere after a crash (``trusted`` False) --
        gets a new CRC; any other page whose CRC does not match holds corrupt bytes that the
        group cannot rebuild now: it is lost rather than blessed with a new CRC."""
        a, b = self.geo.group_pages(g)
        if g in self.pins:
            written = set(written) | self.mapped(a, b)
        k = b - a
        buf = bytearray(k * P)
        mv = memoryview(buf)
        bad = {a + i for i in self.contents(mv, self.data_pos(a))}
        if repair:
            for page in sorted(bad - set(written)):
                if self.repair_page(page) == REPAIRED:
                    i = page - a
                    if not self.contents(mv[i * P : (i + 1) * P], self.data_pos(page)):
                        bad.discard(page)
        new = page_crcs(buf, k)
        table = self.crc_table(a, b)
        if table is None:
            table = new.copy()
        elif trusted:
            for i in np.flatnonzero(new != table):
                page = a + int(i)
                if page not in bad and page not in written:
                    self.lose(page)
                    bad.add(page)
                    mv[int(i) * P : int(i) * P + P] = bytes(P)  # how a lost page reads from now on
        for page in bad:
            new[page - a] = table[page - a]  # a lost page keeps the CRC of what it held
        changed = [a + int(i) for i in np.flatnonzero(new != table)]
        self.begin(g, min(changed, default=a), max(changed, default=a - 1) + 1)
        self.put_page(self.geo.parity_start + g, xor_pages(buf, k))
        self.lo.store(new.tobytes(), self.crc_pos(a))

    def verify(self, g: int) -> None:
        """Scrub group g: repair poisoned pages, then check every CRC and the parity and fix
        what does not match -- a corrupt page (rebuilt, ``corrupt``), CRC entries or a parity
        page that are wrong while the data agrees with parity (rewritten) -- or lose pages."""
        if g in self.pins:
            return self.recompute(g)  # raw stores are not corruption: persist (mapped pages)
        a, b = self.geo.group_pages(g)
        k = b - a
        buf = bytearray(k * P)
        mv = memoryview(buf)
        bad = {a + i for i in self.contents(mv, self.data_pos(a))}
        for page in sorted(bad):
            if self.repair_page(page) == REPAIRED:
                i = page - a
                if not self.contents(mv[i * P : (i + 1) * P], page * P + self.base):
                    bad.discard(page)
        table = self.crc_table(a, b)
        if table is None:
            return self.recompute(g, repair=False, trusted=False)
        now = page_crcs(buf, k)
        mism = [a + int(i) for i in np.flatnonzero(now != table) if a + int(i) not in bad]
        par = bytearray(P)
        if self.contents(memoryview(par), self.parity_pos(g)):
            for page in mism:  # no parity to rebuild them from
                self.lose(page)
            return self.recompute(g, repair=False)
        x = xor_pages(buf, k)
        agree = x.tobytes() == bytes(par)
        if not mism:
            if not agree:  # stale or corrupt parity (or a group with a lost page): rewrite it
                self.begin(g, a, a)
                self.put_page(self.geo.parity_start + g, x)
                self.metadata.append((self.parity_pos(g), P))
            return
        if agree:  # the data agrees with parity: the CRC entries are what is wrong
            self.begin(g, mism[0], mism[-1] + 1)
            self.lo.store(now.tobytes(), self.crc_pos(a))
            self.metadata.append((self.crc_pos(a), 4 * k))
            return
        if len(mism) == 1:
            page = mism[0]
            i = page - a
            rebuilt = np.frombuffer(par, np.uint64) ^ x ^ np.frombuffer(mv[i * P : i * P + P], np.uint64)
            if _crc(rebuilt) == int(table[i]):
                self.rewrite(page, rebuilt.tobytes(), int(table[i]))
                self.corrupt.append((page * P, P))
                return
        for page in mism:
            self.lose(page)
        self.recompute(g, repair=False)

    # -- metadata pages ----------------------------------------------------------------------------------
    def repair_csum_page(self, cp: int) -> None:
        """Rebuild the entries on bad lines of checksum page ``cp`` from the data pages they
        describe; a data page that cannot be read at the same time cannot be verified: lost."""
        pos = cp * P
        page = bytearray(P)
        bad = self.lo.read_recover_into(page, pos)
        if not bad or self.readonly:
            return
        entries = np.frombuffer(page, LE32)
        first = (pos - self._csum0) // 4
        data = bytearray(P)
        for s, n in bad:
            for i in range((s - pos) // 4, (s + n - pos) // 4):
                dp = first + i
                if dp >= self.N:
                    entries[i] = 0
                    continue
                if self.lo.read_recover_into(data, self.data_pos(dp)):
                    self.lose(dp)
                entries[i] = _crc(data)
        self.put_page(cp, page)
        self.metadata.append((pos, P))

    def repair_meta_page(self, lower_page: int) -> None:
        """A metadata page has known poison: rewrite it from what it describes."""
        geo = self.geo
        kind = geo.region(lower_page)
        if self.readonly or kind == "data":
            return
        if kind == "csum":
            return self.repair_csum_page(lower_page)
        if kind == "parity":
            self.recompute(lower_page - geo.parity_start, repair=False)
        elif kind == "header":
            hdr = pack_header(geo)
            self.put_page(lower_page, hdr + bytes(P - len(hdr)))
        elif kind == "intent":
            self.put_page(lower_page, bytes(P))  # nothing is in flight while news is handled
            self._inflight = 0
        else:
            i = (lower_page - geo.intent_start - 1) * P
            self.put_page(lower_page, bytes(self.dirty[i : i + P]).ljust(P, b"\0"))
        self.metadata.append((lower_page * P, P))

    # -- open -----------------------------------------------------------------------------------------
    def recover_at_open(self) -> bool:
        """Replay a pending repair, make the group of the update in flight and the groups of
        mappings that were open current, clear the intent area.  Returns True when the intent
        page could not be read (the caller then verifies every group)."""
        lo, geo = self.lo, self.geo
        rec = bytearray(2 * INTENT_SIZE)
        unknown = lo.mc_read(rec, self._intent0) < len(rec)
        flight = None if unknown else self._in_flight()
        if unknown:
            self.repair_meta_page(geo.intent_start)
        elif (pending := unpack_intent(rec)) is not None:
            self.replay(*pending)
        if flight is not None:
            self.finish_update(*flight)
        bmap = bytearray(geo.ngroups)
        for s, n in lo.read_recover_into(bmap, self._map0):
            bmap[s - self._map0 : s - self._map0 + n] = b"\x01" * n  # unreadable: assume dirty
        for g in np.flatnonzero(np.frombuffer(bmap, np.uint8)):
            self.recompute(int(g), trusted=False)
        for mp in range(geo.map_pages):
            self.put_page(geo.intent_start + 1 + mp, bytes(P))
        self._inflight = -1
        self.settle()
        return unknown

    def finish_update(self, g: int, a: int, b: int) -> None:
        """The update named in flight at a crash.  Every write stores data, then parity, then
        CRCs: if the CRCs of the named pages all match their data, parity was stored before them
        (or nothing was stored) and the group is whole -- verified like any other, so corruption
        elsewhere in it is rebuilt; otherwise the named pages were torn: the group is recomputed
        from them (the write hole closed) and its other pages checked against their CRCs."""
        buf = bytearray((b - a) * P)
        for i in self.contents(memoryview(buf), self.data_pos(a)):
            self.repair_page(a + i)  # poison met since: parity is whole if the update was
        bad = self.contents(memoryview(buf), self.data_pos(a))
        table = self.crc_table(a, b) if b > a else np.zeros(0, LE32)
        if not bad and table is not None and np.array_equal(page_crcs(buf, b - a), table):
            self.verify(g)
        else:
            self.recompute(g, written=set(range(a, b)))

    def replay(self, page: int, crc: int) -> None:
        """Finish a repair a crash cut off: rebuild the page again and write it back (its CRC
        verified); if the page already holds its verified bytes, only the record goes."""
        if 0 <= page < self.N:
            want = self.crc_entry(page)
            rebuilt = self.rebuild(page)
            if want is not None and _crc(rebuilt) == want:
                self.rewrite(page, rebuilt, want)
            else:
                cur = bytearray(P)
                if self.lo.read_recover_into(cur, self.data_pos(page)) or _crc(cur) != want:
                    self.lose(page)
        self.lo.store(bytes(INTENT_SIZE), self._intent0)

    # -- reports -----------------------------------------------------------------------------------------
    def take_log(self) -> tuple[list, list, list]:
        out = (
            ranges.union([], [(s, s + n) for s, n in self.repaired]),
            ranges.union([], [(s, s + n) for s, n in self.corrupt]),
            ranges.union([], [(s, s + n) for s, n in self.metadata]),
        )
        self.repaired, self.corrupt, self.metadata = [], [], []
        return out
