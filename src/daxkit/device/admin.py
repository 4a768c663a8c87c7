"""What ndctl does to a namespace, beside the data path: inject-error (with its scrub),
uninject, latent poison for tests, the address range scrub, clear-errors, and the reports
(badblocks, media errors, bad ranges, info).  Mixed into DaxDevice, whose shared error state
(``_sync``, ``_commit``, ``_state``, ``_known``, ``_precise``) and backend (``_be``) it uses;
every change is one pure function of the whole state (known.py), committed once."""

from __future__ import annotations

import os

from ..errors import InvalidArgument
from ..medium import ranges
from ..medium.image import LIVE_SCRUB_DONE, LIVE_SCRUB_PID, LIVE_SCRUB_TOTAL
from ..medium.state import ErrorState
from ..units import LINE_SIZE, PAGE_SIZE, SECTOR_SIZE, align_down, align_up
from .known import BadblocksView, ScrubReport, clear_medium, forget_known, scrubbed

_SCRUB_STEP = 16 << 20


class Administration:
    # -- injection, scrub, clearing -----------------------------------------------------------
    def _check_blocks(self, block: int, count: int) -> None:
        nsect = self.size // SECTOR_SIZE
        if block < 0 or count < 1 or block + count > nsect:
            raise InvalidArgument(
                f"blocks {block}+{count} are outside the device ({nsect} blocks of {SECTOR_SIZE})"
            )

    def inject_error(
        self, block: int, count: int = 1, *, notify: bool = True, saturate: bool = False
    ) -> None:
        self._require_emulated("inject-error")
        self._check_blocks(block, count)
        span = SECTOR_SIZE if saturate else min(SECTOR_SIZE, self.clear_err_unit)

        if span == SECTOR_SIZE:
            lines = [(block * SECTOR_SIZE, (block + count) * SECTOR_SIZE)]
        else:
            lines = [(b * SECTOR_SIZE, b * SECTOR_SIZE + span) for b in range(block, block + count)]

        def injected(st: ErrorState) -> ErrorState:
            return st.with_(
                poison=ranges.union(st.poison, lines), injected=ranges.add(st.injected, block, block + count)
            )

        # With notify the scrub is part of the same commit: a state too large to store is
        # refused before anything changes, never after the injection alone went in.
        self._commit((lambda st: scrubbed(injected(st))[0]) if notify else injected)

    def uninject_error(self, block: int, count: int = 1) -> None:
        self._require_emulated("uninject-error")
        self._check_blocks(block, count)
        s, e = block * SECTOR_SIZE, (block + count) * SECTOR_SIZE
        self._commit(
            lambda st: st.with_(
                poison=ranges.remove(st.poison, s, e),
                injected=ranges.remove(st.injected, block, block + count),
            )
        )

    def injected_errors(self) -> list[dict]:
        self._sync()
        return [{"block": s, "count": e - s} for s, e in self._state.injected]

    def inject_poison(self, offset: int, length: int) -> None:
        """Latent poison on the 64-byte lines covering [offset, offset+length)."""
        self._require_emulated("inject-poison")
        if length <= 0:
            raise InvalidArgument(f"length must be > 0, got {length}")
        self._check_range(offset, length)
        s, e = align_down(offset, LINE_SIZE), align_up(offset + length, LINE_SIZE)
        self._commit(lambda st: st.with_(poison=ranges.add(st.poison, s, e)))

    @property
    def scrub_count(self) -> int:
        self._sync()
        return self._state.scrub_count

    def scrub(self, progress=None) -> ScrubReport:
        """Address range scrub: every poisoned line becomes known (acknowledged sectors in the
        table, byte ranges in the list); the holder hears about what was not known before."""
        if self.readonly and self._be.emulated:  # the image records what a scrub finds
            self._refuse_change()
        self._be.rescan()  # a real device: the sysfs lists are read again
        self._sync()
        with self._be.scrubbing():
            return self._scrub(progress)

    def _scrub(self, progress) -> ScrubReport:
        words = self._be.words
        words[LIVE_SCRUB_TOTAL] = self.size
        words[LIVE_SCRUB_DONE] = 0
        words[LIVE_SCRUB_PID] = os.getpid()
        found: ranges.Intervals = []
        try:
            poison = self._state.poison
            for start in range(0, self.size, _SCRUB_STEP):
                end = min(start + _SCRUB_STEP, self.size)
                found.extend(ranges.clip(poison, start, end))
                words[LIVE_SCRUB_DONE] = end
                if progress is not None:
                    progress(end, self.size)
            found = ranges.union([], found)
            known_before = self._precise
            report = ScrubReport(bytes_scanned=self.size)

            def change(st: ErrorState) -> ErrorState:
                st2, report.overflow = scrubbed(st, found)
                return st2

            st = self._commit(change)
        finally:
            words[LIVE_SCRUB_PID] = 0
        report.ranges = [(s, e - s) for s, e in st.poison]
        report.new_ranges = [(s, e - s) for s, e in ranges.subtract(st.poison, known_before)]
        report.scrub_count = st.scrub_count
        return report

    def scrub_progress(self) -> tuple[int, int, int]:
        """(pid of a scrub running now or 0, bytes done, bytes total): what wait-scrub watches.
        The pid word alone could outlive its scrubber (killed) or name a reused pid; the
        scrubbers' lock on the image says whether anyone is scrubbing at all."""
        self._check_alive()
        w = self._be.words
        pid = w[LIVE_SCRUB_PID]
        if pid and not self._be.scrub_running():
            pid = 0
        return pid, w[LIVE_SCRUB_DONE], w[LIVE_SCRUB_TOTAL]

    def clear_errors(self) -> list[tuple[int, int]]:
        """Like ``ndctl clear-errors``: every known error is cleared on the medium and zeroed;
        its data is lost.  Returns the cleared ranges.  The kernel's order holds for all of them
        together: clear, write, then forget -- two commits however many ranges there are.

        "Known" is both lists: the badblocks table and the bad range list, which has no ceiling
        and so also holds what a full table could not take.  What is cleared is every sector a
        known error touches (the covering sectors, as the table has them when it has room),
        grown to whole clear_err_unit units -- so the result is the same whether or not the
        table overflowed: nothing known is left, and the injection records of those sectors go
        with their poison (SPEC 1).  Latent poison, known to nobody, stays."""
        self._sync()
        unit = max(self.clear_err_unit, SECTOR_SIZE)
        cleared = [(s * unit, min(e * unit, self.size)) for s, e in ranges.scale(self._known, unit)]
        if cleared:
            self._commit(lambda st: clear_medium(st, cleared))
            for s, e in cleared:
                self._store(bytes(e - s), s)
            self._commit(lambda st: forget_known(st, cleared))
        return [(s, e - s) for s, e in cleared]

    # -- reports ------------------------------------------------------------------------------
    @property
    def badblocks(self) -> BadblocksView:
        return BadblocksView(self)

    def media_errors(self) -> dict:
        self._sync_fresh()
        bb = self._state.badblocks
        return {
            "badblock_count": bb.sectors,
            "badblocks": [{"offset": e.sector, "length": e.count} for e in bb],
        }

    def bad_ranges(self) -> list[tuple[int, int]]:
        """The bad range list: known bad byte ranges (offset, length)."""
        self._sync_fresh()
        return [(s, e - s) for s, e in self._state.bad_ranges]

    def poisoned_ranges(self) -> list[tuple[int, int]]:
        """Hardware truth, for tests and tools: every poisoned (offset, length), known or not."""
        self._sync()
        return [(s, e - s) for s, e in self._state.poison]

    def info(self) -> dict:
        self._sync_fresh()
        st = self._state
        return {
            "path": self.path,
            **self._be.describe(),
            "readonly": self.readonly,
            "size": self.size,
            "clear_err_unit": self.clear_err_unit,
            "page_size": PAGE_SIZE,
            "sector_size": SECTOR_SIZE,
            "badblock_count": st.badblocks.sectors,
            "badblock_entries": st.badblocks.count,
            "bad_ranges": len(st.bad_ranges),
            "poisoned_bytes": ranges.total(st.poison),
            "injected_blocks": ranges.total(st.injected),
            "scrub_count": st.scrub_count,
        }
