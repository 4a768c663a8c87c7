"""DaxMapping: the direct-map use case (SPEC 2.7).

Rules
  * ``buf`` is the raw mapping: a plain writable memoryview, no checks, no overhead.  Pages that
    hold poison (known or latent) are PROT_NONE in it, so a raw load dies as a load of hardware
    poison would.
  * The safe accessors never die.  They deliver every clean line before the first bad one and
    raise ``PoisonError`` (offset, length, done) there; the first touch of latent poison makes it
    known (consumption).  Stores never clear poison; ``recover`` does.
  * Offsets given to and returned by a mapping are mapping offsets, except ``PoisonError.offset``,
    which is a device offset (SPEC 2.7).

Theory of operation
  A mapping is a list of pieces (mapping offset, device offset, length) laid out in one region.
  A device mapping has one piece; a file mapping (daxfs) has one per extent.  The device keeps
  every mapping's protections in step with its own and calls ``_poison_known`` with device
  ranges that became known; the mapping translates them into its own offsets for ``on_poison``.

  A mapping made through a stacked device (redundancy/) is a mapping of the device below with
  ``_via`` set to the stacked device and ``_base`` to where the stacked device's offset 0 lies
  below.  Then the stacked device speaks for it: it repairs first and calls ``_tell_poison``
  only with what it could not repair; the safe accessors ask it to repair before they give up;
  ``persist`` (and ``close``) bring its parity up to the raw stores.  Offsets the mapping shows
  (``offset``, ``PoisonError.offset``) are the stacked device's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import suppress

from .. import _copymc
from ..errors import DeviceGone, InvalidArgument, PoisonError
from ..medium import ranges
from ..units import PAGE_SIZE

_copy_mc_from = _copymc.copy_mc_from


class DaxMapping:
    def __init__(self, dev, pieces: list[tuple[int, int, int]]):
        self._dev = dev
        self._pieces = pieces
        self.length = sum(n for _, _, n in pieces)
        self.offset = pieces[0][1]  # device offset of the first byte
        self._region = dev._map_pieces(pieces)
        self._mm = self._region.mm
        self.buf = memoryview(self._mm)
        self.on_poison: Callable[[int, int], object] | None = None
        self._closed = False
        self._gone = False
        self._revoked: ranges.Intervals = []  # mapping pages whose blocks the owner freed
        self._dev_pages: ranges.Intervals = []
        self._via = None  # the stacked device this mapping was made through, if any
        self._base = 0  # device offset of the stacked device's offset 0
        dev._register(self)

    def __enter__(self) -> DaxMapping:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<DaxMapping device_offset={self.offset} length={self.length}{state}>"

    # -- offsets ----------------------------------------------------------------------------
    def _split(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(mapping offset, device offset, length) pieces of [offset, offset+length)."""
        end = offset + length
        for moff, doff, n in self._pieces:
            s, e = max(offset, moff), min(end, moff + n)
            if s < e:
                yield s, doff + (s - moff), e - s

    def _to_mapping(self, dev_ivs: ranges.Intervals) -> ranges.Intervals:
        out: ranges.Intervals = []
        for moff, doff, n in self._pieces:
            for s, e in ranges.clip(dev_ivs, doff, doff + n):
                out = ranges.add(out, moff + s - doff, moff + e - doff)
        return out

    def _check(self, offset: int, length: int) -> None:
        if self._closed:
            raise DeviceGone("mapping is closed")
        if self._gone:
            raise DeviceGone("device was removed")
        if length < 0 or offset < 0 or offset + length > self.length:
            raise InvalidArgument(
                f"offset={offset} length={length} is outside the mapping (length {self.length})"
            )
        first, last = offset // PAGE_SIZE, (offset + length + PAGE_SIZE - 1) // PAGE_SIZE
        if ranges.first_overlap(self._revoked, first, last):
            raise DeviceGone(f"mapping range {offset}+{length} was truncated or punched by its owner")

    # -- safe accessors ---------------------------------------------------------------------
    def readinto(self, buf, offset: int) -> int:
        dev = self._dev
        if dev._words[0] != dev._gen:
            dev._sync()
        n = buf.nbytes if type(buf) is memoryview else len(buf)
        if self._closed or self._gone or offset < 0 or offset + n > self.length or self._revoked:
            self._check(offset, n)
        if not _copy_mc_from(buf, self._mm, offset):
            return n
        dst = memoryview(buf).cast("B")
        done = 0
        read_lines = dev._read_lines if self._via is None else self._via._mapping_read_lines
        for moff, doff, k in self._split(offset, n):
            got, bad = read_lines(dst[moff - offset : moff - offset + k], doff)
            done += got
            if bad is not None:
                raise PoisonError(
                    f"poison at device offset {bad[0]} (+{bad[1]}) after {done} bytes",
                    offset=bad[0],
                    length=bad[1],
                    done=done,
                )
        return n

    def read(self, offset: int, length: int) -> bytes:
        dev = self._dev
        if dev._words[0] != dev._gen:
            dev._sync()
        self._check(offset, length)
        data = _copymc.copy_mc_bytes(self._mm, offset, length)  # one copy into the result
        if data is not None:
            return data
        buf = bytearray(length)
        self.readinto(buf, offset)  # raises PoisonError with what could be delivered
        return bytes(buf)

    def write(self, offset: int, data) -> int:
        dev = self._dev
        if dev.readonly:
            dev._refuse_change()
        dev._sync()
        src = memoryview(data).cast("B")
        n = src.nbytes
        self._check(offset, n)
        done = 0
        for moff, doff, k in self._split(offset, n):
            bad = ranges.first_overlap(dev._prot_bytes, doff, doff + k)
            while bad is not None and self._via is not None and self._via._mapping_repair(max(bad[0], doff)):
                bad = ranges.first_overlap(dev._prot_bytes, doff, doff + k)
            if bad is None:
                self._mm[moff : moff + k] = src[moff - offset : moff - offset + k]
                done += k
                continue
            clean = max(bad[0], doff) - doff
            self._mm[moff : moff + clean] = src[moff - offset : moff - offset + clean]
            done += clean
            page = max(bad[0], doff)
            line = ranges.first_overlap(dev._bad_lines(), page, page + PAGE_SIZE) or (page, page + PAGE_SIZE)
            first = max(line[0], page)
            raise PoisonError(
                f"store into a poisoned page at device offset {page - self._base}: "
                "stores never clear poison (use recover)",
                offset=first - self._base,
                length=line[1] - first,
                done=done,
            )
        return n

    def recover(self, offset: int, data) -> int:
        """Rewrite in place and clear poison.  Whole pages are cleared, rewritten and mapped back
        in.  A write that covers part of a page (SPEC 4) rewrites the page with the new bytes over
        its recovered clean lines; bad lines it does not cover whole stay reported bad."""
        if self._dev.readonly:
            self._dev._refuse_change()
        src = memoryview(data).cast("B")
        n = src.nbytes
        self._check(offset, n)
        for moff, doff, k in self._split(offset, n):
            piece = src[moff - offset : moff - offset + k]
            if doff % PAGE_SIZE == 0 and k % PAGE_SIZE == 0:
                self._dev._rewrite_pages(doff, piece)
            else:
                self._dev.recovery_write_subpage(doff, piece)
            if self._via is not None:
                self._via._mapping_recovered(doff, k)  # the old bytes are gone: parity from the new
        return n

    def persist(self, offset: int = 0, length: int | None = None) -> None:
        """The pmem_persist moment (SPEC 4.2): redundancy catches up with the raw stores made
        through ``buf`` in [offset, offset+length).  Nothing to do on a plain device."""
        if length is None:
            length = self.length - offset
        self._check(offset, length)
        if self._via is not None:
            self._via._mapping_persist([(doff, k) for _, doff, k in self._split(offset, length)])
        elif not self._dev._be.emulated:
            self._region.flush()  # a real file mapped without MAP_SYNC is durable after msync

    def bad_ranges(self) -> list[tuple[int, int]]:
        self._dev._sync()
        return [(s, e - s) for s, e in self._to_mapping(self._dev._precise)]

    # -- kept in step by the device ---------------------------------------------------------
    def _reprotect(self, dev_pages: ranges.Intervals) -> None:
        if self._closed or self._gone:
            return
        self._dev_pages = dev_pages
        pages: ranges.Intervals = []
        for moff, doff, n in self._pieces:
            base = moff // PAGE_SIZE - doff // PAGE_SIZE
            pages += [
                (s + base, e + base)
                for s, e in ranges.clip(dev_pages, doff // PAGE_SIZE, (doff + n) // PAGE_SIZE)
            ]
        self._region.protect(ranges.union(self._revoked, pages))

    def _poison_known(self, dev_ivs: ranges.Intervals) -> None:
        if self._via is None:  # a stacked device repairs first and tells us what is left
            self._tell_poison(dev_ivs)

    def _tell_poison(self, dev_ivs: ranges.Intervals) -> None:
        cb = self.on_poison
        if cb is None or self._closed:
            return
        for s, e in self._to_mapping(dev_ivs):
            cb(s, e - s)

    def _revoke_device_blocks(self, runs: list[tuple[int, int]]) -> None:
        """The owner freed these device blocks (truncate, punch, unlink): their pages fault from
        now on, as pages past EOF do after a truncate, and the safe accessors refuse them."""
        for db, cnt in runs:
            db += self._base // PAGE_SIZE
            for moff, doff, n in self._pieces:
                s, e = max(doff, db * PAGE_SIZE), min(doff + n, (db + cnt) * PAGE_SIZE)
                if s < e:
                    self._revoked = ranges.add(
                        self._revoked, (moff + s - doff) // PAGE_SIZE, (moff + e - doff) // PAGE_SIZE
                    )
        self._reprotect(self._dev_pages)

    def _revoke(self) -> None:
        self._gone = True
        self._region.revoke()

    def _detach(self) -> None:
        """The device closed under us: safe accessors fail from now on; raw views stay valid."""
        self._gone = True

    def close(self) -> None:
        if self._closed:
            return
        if self._via is not None and not self._gone:
            self._via._mapping_closed(self)  # persists first
        if not self._gone and not self._dev._be.emulated:
            with suppress(OSError, ValueError):
                self._region.flush()
        self._closed = True
        self._dev._mappings.discard(self)
        try:
            self.buf.release()
        except BufferError:
            pass  # someone exported from buf itself; the region goes when they let go
        self._region.close()
