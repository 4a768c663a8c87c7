"""The badblocks table, with the kernel's rules (block/badblocks.c, include/linux/badblocks.h).

Rules
  * Units are 512-byte sectors.  An entry is (sector, count, acknowledged).
  * Entries are sorted and merged: touching or overlapping runs become one entry; a run longer
    than BB_MAX_LEN (512) sectors is split into 512-sector entries from its start.
  * At most MAX_BADBLOCKS (512) entries.  ``set`` (one range: what writing the sysfs file does)
    that would need more fails whole with ENOSPC and changes nothing.  ``set_runs`` (what a scrub
    or an injection with notify does) is the kernel's badblocks_set run after run: each run gets
    as much of itself, from its start, as the table can take, and what is left out is reported
    (overflow) -- a full table is filled in address order, never left empty.  A clear that must
    split an entry on a full table fails with ENOSPC and changes nothing.
  * Acknowledged: setting a range overwrites the flag of the sectors it covers; an entry is
    acknowledged when every sector in it is (the kernel ANDs flags when it merges).
  * Text form (the sysfs file): one "<sector> <count>\\n" line per entry.  Writing "S C" adds an
    acknowledged entry; a count <= 0, junk after the numbers, or not two numbers is EINVAL.

Theory of operation
  The table is held as "segments": sorted, disjoint (start, end, ack) runs that never merge
  across different flags, so the per-sector flag survives merging.  The entries the kernel would
  show are derived from the segments: maximal runs, split at 512, flag = AND of the segments.
  The segments are what the medium persists.  A scrub or a clear-errors brings thousands of
  runs at once: ``set_runs``/``clear_runs`` apply them in one pass over the table instead of
  one table rebuild per run (a batch of clears is judged by its result).
"""

from __future__ import annotations

import errno as _errno
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import NamedTuple

from ..errors import InvalidArgument, NoSpace
from . import ranges

BB_MAX_LEN = 512
MAX_BADBLOCKS = 512

Segment = tuple[int, int, bool]


class BadblocksCheck(NamedTuple):
    """Result of ``check``: like the kernel's return value and out-parameters.
    ``status`` is 0 (none), 1 (bad, all acknowledged) or -1 (bad, some unacknowledged);
    ``first_bad``/``bad_sectors`` describe the first entry met.  True when anything is bad."""

    status: int
    first_bad: int
    bad_sectors: int

    def __bool__(self) -> bool:
        return self.status != 0


class Entry(NamedTuple):
    sector: int
    count: int
    acknowledged: bool


def _normalize(segs: list[Segment]) -> list[Segment]:
    """Merge touching segments that carry the same flag."""
    out: list[Segment] = []
    for s, e, a in segs:
        if out and out[-1][1] == s and out[-1][2] == a:
            out[-1] = (out[-1][0], e, a)
        else:
            out.append((s, e, a))
    return out


def _entries(segs: list[Segment]) -> list[Entry]:
    out: list[Entry] = []
    i, n = 0, len(segs)
    while i < n:
        run_start, run_end = segs[i][0], segs[i][1]
        j = i + 1
        while j < n and segs[j][0] == run_end:
            run_end = segs[j][1]
            j += 1
        run = segs[i:j]
        for s in range(run_start, run_end, BB_MAX_LEN):
            e = min(s + BB_MAX_LEN, run_end)
            ack = all(a for ss, se, a in run if ss < e and se > s)
            out.append(Entry(s, e - s, ack))
        i = j
    return out


def _overwrite(segs: list[Segment], runs: ranges.Intervals, ack: bool | None) -> list[Segment]:
    """Segments with every [start, end) of ``runs`` (sorted, disjoint) removed, then (if ack is
    not None) set to ``ack``.  One pass, however many runs."""
    out = [
        (s, e, flag)
        for flag in (False, True)
        for s, e in ranges.subtract([(s, e) for s, e, a in segs if a == flag], runs)
    ]
    if ack is not None:
        out += [(s, e, ack) for s, e in runs]
    return out


def _entries_for(length: int) -> int:
    """Entries a maximal run of ``length`` sectors takes."""
    return -(-length // BB_MAX_LEN)


def _most_that_fits(starts: list[int], ends: list[int], count: int, s: int, e: int) -> tuple[int, int, int]:
    """How much of the run [s, e) a table can take from its start: the largest p in [s, e] such
    that the table's maximal runs (``starts``/``ends``: sorted, disjoint, never touching; they
    take ``count`` entries) with [s, p) added need at most MAX_BADBLOCKS entries.  Returns
    (p, i, j): [s, p) merges with runs i..j-1.

    While [s, p) merges with the same runs the entry count only grows with p, so each stretch
    of p between two runs' starts is solved in closed form; reaching one more run can lower the
    count (two runs bridged), so every stretch is looked at and the last feasible p wins."""
    i = bisect_left(ends, s)  # the first run that [s, p) can touch
    top = bisect_right(starts, e)  # runs i..top-1 start at or before e: [s, e) reaches them
    best = (s, i, i)
    freed = 0  # entries of runs i..j-1, which the merged run replaces
    for j in range(i, top + 1):
        if j > i:
            freed += _entries_for(ends[j - 1] - starts[j - 1])
        lo = s + 1 if j == i else max(s + 1, starts[j - 1])
        hi = e if j == top else min(e, starts[j] - 1)
        room = MAX_BADBLOCKS - (count - freed)  # entries the merged run may take
        if lo > hi or room <= 0:
            continue
        left = s if j == i else min(s, starts[i])
        limit = left + room * BB_MAX_LEN  # where the merged run may end at most
        if j > i and ends[j - 1] > limit:
            continue
        if min(hi, limit) >= lo:
            best = (min(hi, limit), i, j)
    return best


def parse_entry(text: str) -> tuple[int, int]:
    """Read "<sector> <count>" as the sysfs badblocks file does; EINVAL on anything else."""
    parts = text.split()
    if len(parts) != 2:
        raise InvalidArgument(f"badblocks: expected '<sector> <count>', got {text!r}")
    try:
        sector, count = int(parts[0], 10), int(parts[1], 10)
    except ValueError:
        raise InvalidArgument(f"badblocks: not two decimal numbers: {text!r}") from None
    if sector < 0 or count <= 0:
        raise InvalidArgument(f"badblocks: sector must be >= 0 and count > 0, got {text!r}")
    return sector, count


class Badblocks:
    """The table.  Iterating yields ``Entry(sector, count, acknowledged)``."""

    def __init__(self, segments: list[Segment] | None = None):
        self._segs: list[Segment] = _normalize(sorted(segments or []))
        self._ents = _entries(self._segs)

    # -- reading ---------------------------------------------------------------------------
    @property
    def segments(self) -> list[Segment]:
        return list(self._segs)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._ents)

    def __len__(self) -> int:
        return len(self._ents)

    def __bool__(self) -> bool:
        return bool(self._ents)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Badblocks):
            return self._segs == other._segs
        return NotImplemented

    def __repr__(self) -> str:
        return f"Badblocks({[tuple(e) for e in self._ents]})"

    @property
    def count(self) -> int:
        """Number of entries (the kernel's bb->count)."""
        return len(self._ents)

    @property
    def sectors(self) -> int:
        """Number of bad sectors (ndctl's badblock_count)."""
        return sum(e - s for s, e, _ in self._segs)

    def text(self, unacknowledged_only: bool = False) -> str:
        return "".join(
            f"{e.sector} {e.count}\n" for e in self._ents if not (unacknowledged_only and e.acknowledged)
        )

    def check(self, sector: int, count: int) -> BadblocksCheck:
        end = sector + count
        for e in self._ents:
            if e.sector >= end:
                break
            if e.sector + e.count > sector:
                unacked = any(
                    not x.acknowledged for x in self._ents if x.sector < end and x.sector + x.count > sector
                )
                return BadblocksCheck(-1 if unacked else 1, e.sector, e.count)
        return BadblocksCheck(0, 0, 0)

    def ranges(self) -> list[tuple[int, int]]:
        """Bad sectors as merged [start, end) sector intervals."""
        out: list[tuple[int, int]] = []
        for s, e, _ in self._segs:
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
        return out

    # -- changing (each returns a new table; the receiver is unchanged) ----------------------
    def set(self, sector: int, count: int, acknowledged: bool = True) -> Badblocks:
        if sector < 0 or count <= 0:
            raise InvalidArgument(f"badblocks: bad range sector={sector} count={count}")
        new = Badblocks(_overwrite(self._segs, [(sector, sector + count)], bool(acknowledged)))
        if new.count > MAX_BADBLOCKS:
            raise NoSpace(
                f"badblocks table full: adding {sector}+{count} needs {new.count} entries "
                f"(max {MAX_BADBLOCKS})",
                errno=_errno.ENOSPC,
            )
        return new

    def set_runs(self, runs: ranges.Intervals, acknowledged: bool = True) -> tuple[Badblocks, bool]:
        """``set`` of every [start, end) sector run (sorted, disjoint), as a scrub does, with the
        kernel's rule for a table that fills: each run, in address order, gets as much of itself
        from its start as the table can take (badblocks_set sets what fits and fails for the
        rest).  Returns the table and whether anything was left out.  One pass when all fits;
        otherwise the runs are fitted one by one against the table's maximal runs, in
        O(log n) for a run that meets none of them."""
        if not runs:
            return self, False
        ack = bool(acknowledged)
        merged = self.ranges()
        if sum(_entries_for(e - s) for s, e in ranges.union(merged, runs)) <= MAX_BADBLOCKS:
            return Badblocks(_overwrite(self._segs, runs, ack)), False
        starts, ends = [s for s, _ in merged], [e for _, e in merged]
        count, taken, overflow = self.count, [], False
        for s, e in runs:
            if e <= s:
                continue
            p, i, j = _most_that_fits(starts, ends, count, s, e)
            overflow |= p < e
            if p == s:
                continue
            taken.append((s, p))
            left, right = (min(s, starts[i]), max(p, ends[j - 1])) if j > i else (s, p)
            count += _entries_for(right - left) - sum(
                _entries_for(b - a) for a, b in zip(starts[i:j], ends[i:j])
            )
            starts[i:j], ends[i:j] = [left], [right]
        return Badblocks(_overwrite(self._segs, taken, ack)), overflow

    def clear(self, sector: int, count: int) -> Badblocks:
        if sector < 0 or count < 0:
            raise InvalidArgument(f"badblocks: bad range sector={sector} count={count}")
        return self.clear_runs([(sector, sector + count)])

    def clear_runs(self, runs: ranges.Intervals) -> Badblocks:
        """``clear`` of every [start, end) sector run (sorted, disjoint) at once; ENOSPC, and no
        change, when that must split entries past the table's size."""
        runs = [(s, e) for s, e in runs if e > s]
        if not runs:
            return self
        new = Badblocks(_overwrite(self._segs, runs, None))
        if new.count > MAX_BADBLOCKS:
            first, last = runs[0][0], runs[-1][1]
            raise NoSpace(
                f"badblocks table full: clearing sectors {first}..{last} would split an entry "
                f"(max {MAX_BADBLOCKS})"
            )
        return new

    def add_text(self, text: str) -> Badblocks:
        sector, count = parse_entry(text)
        return self.set(sector, count, True)
