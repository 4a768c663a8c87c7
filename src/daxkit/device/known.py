"""What a device knows about its errors, as values: the clearing policy as pure functions of an
ErrorState (SPEC 1, 2.3-2.5), the badblocks view (``dev.badblocks``) and the scrub report.

Rules
  * The functions here change no state: device.py commits what they return, once, through its
    backend, so a change is whole or nothing whatever the backend.
  * Clearing follows the kernel's order, which device.py sequences: clear the medium
    (``clear_medium``), write, then forget (``forget_known``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import InvalidArgument
from ..medium import ranges
from ..medium.badblocks import Badblocks, BadblocksCheck, Entry, parse_entry
from ..medium.state import ErrorState
from ..units import SECTOR_SIZE

if TYPE_CHECKING:
    from .device import DaxDevice


@dataclass
class ScrubReport:
    ranges: list[tuple[int, int]] = field(default_factory=list)  # every poisoned (offset, length)
    new_ranges: list[tuple[int, int]] = field(default_factory=list)  # known only since this scrub
    bytes_scanned: int = 0
    scrub_count: int = 0
    overflow: bool = False  # the badblocks table could not take every range

    def as_dict(self) -> dict:
        return {
            "ranges": [{"offset": o, "length": n} for o, n in self.ranges],
            "new_ranges": [{"offset": o, "length": n} for o, n in self.new_ranges],
            "bytes_scanned": self.bytes_scanned,
            "scrub_count": self.scrub_count,
            "overflow": self.overflow,
        }


# -- state transformers: pure functions of an ErrorState, the policy of clearing -----------------
def sectors_inside(ivs: ranges.Intervals) -> ranges.Intervals:
    """The whole sectors inside each byte interval."""
    inner = [(-(-s // SECTOR_SIZE), e // SECTOR_SIZE) for s, e in ivs]
    return [(s, e) for s, e in inner if e > s]


def clear_medium(st: ErrorState, ivs: ranges.Intervals) -> ErrorState:
    """The platform's clear-error command over byte intervals: poison and the injection records
    it covers go."""
    return st.with_(
        poison=ranges.subtract(st.poison, ivs), injected=ranges.subtract(st.injected, sectors_inside(ivs))
    )


def forget_known(st: ErrorState, ivs: ranges.Intervals) -> ErrorState:
    """Drop byte intervals from the bad range list and whole sectors inside them from badblocks."""
    return st.with_(
        bad_ranges=ranges.subtract(st.bad_ranges, ivs),
        badblocks=st.badblocks.clear_runs(sectors_inside(ivs)),
    )


def make_known(st: ErrorState, ivs: ranges.Intervals) -> tuple[ErrorState, bool]:
    """Add byte ranges to the bad range list and their covering sectors (acknowledged) to the
    table.  Returns the state and whether the table overflowed: a full table takes what it can,
    in address order (the kernel's badblocks_set), the kernel logs and goes on, and the bad
    range list, which has no ceiling, still knows every range."""
    bb, overflow = st.badblocks.set_runs(ranges.scale(ivs, SECTOR_SIZE), True)
    return st.with_(bad_ranges=ranges.union(st.bad_ranges, ivs), badblocks=bb), overflow


def scrubbed(st: ErrorState, found: ranges.Intervals = ()) -> tuple[ErrorState, bool]:
    """What an address range scrub leaves: every poisoned line (and ``found``, what the scan
    saw) known, one more scrub counted.  Also returns whether the table overflowed."""
    st2, overflow = make_known(st, ranges.union(list(found), st.poison))
    return st2.with_(scrub_count=st.scrub_count + 1), overflow


class BadblocksView:
    """``dev.badblocks``: the live table of a device (iterable of (sector, count, acknowledged))."""

    def __init__(self, dev: DaxDevice):
        self._dev = dev

    def _table(self) -> Badblocks:
        self._dev._sync_fresh()
        return self._dev._state.badblocks

    def __iter__(self):
        return iter(list(self._table()))

    def __len__(self) -> int:
        return len(self._table())

    def __bool__(self) -> bool:
        return bool(self._table())

    def __repr__(self) -> str:
        return repr(self._table())

    def entries(self) -> list[Entry]:
        return list(self._table())

    def text(self, unacknowledged_only: bool = False) -> str:
        return self._table().text(unacknowledged_only)

    def check(self, sector: int, count: int) -> BadblocksCheck:
        return self._table().check(sector, count)

    def add(self, text: str) -> None:
        """What writing "<sector> <count>" to the sysfs file does: an acknowledged entry."""
        sector, count = parse_entry(text)
        if sector + count > self._dev.size // SECTOR_SIZE:
            raise InvalidArgument(
                f"badblocks: {sector}+{count} is past the device end "
                f"({self._dev.size // SECTOR_SIZE} sectors)"
            )
        if not self._dev._be.emulated:  # a real device: the kernel's own file is written
            if self._dev.readonly:
                self._dev._refuse_change()
            self._dev._be.add_listed(sector, count)
            self._dev._sync()
            return
        self._dev._commit(lambda st: st.with_(badblocks=st.badblocks.set(sector, count, True)))
