"""The persistent error state of a medium: what the hardware knows (poison, injection records)
and what the OS side knows (bad range list, badblocks table), plus the scrub count.

Rules
  * Immutable value: every change builds a new ErrorState; the image commits it atomically.
  * Units: ``poison`` and ``bad_ranges`` in bytes (poison in whole 64-byte lines),
    ``injected`` in 512-byte blocks, ``badblocks`` as the table's segments in sectors.
  * Encoding is canonical JSON so a checksum over it is meaningful and humans can read a dump.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from . import ranges
from .badblocks import Badblocks


@dataclass(frozen=True)
class ErrorState:
    poison: ranges.Intervals = field(default_factory=list)
    injected: ranges.Intervals = field(default_factory=list)
    bad_ranges: ranges.Intervals = field(default_factory=list)
    badblocks: Badblocks = field(default_factory=Badblocks)
    scrub_count: int = 0

    def with_(self, **changes) -> ErrorState:
        return replace(self, **changes)

    def encode(self) -> bytes:
        doc = {
            "poison": self.poison,
            "injected": self.injected,
            "bad_ranges": self.bad_ranges,
            "badblocks": [[s, e, int(a)] for s, e, a in self.badblocks.segments],
            "scrub_count": self.scrub_count,
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ErrorState:
        doc = json.loads(raw)

        def ivs(key: str) -> ranges.Intervals:
            out = [(int(s), int(e)) for s, e in doc[key]]
            if any(e <= s or s < 0 for s, e in out) or out != sorted(out):
                raise ValueError(f"error state: malformed {key}")
            return out

        segs = [(int(s), int(e), bool(a)) for s, e, a in doc["badblocks"]]
        return cls(
            poison=ivs("poison"),
            injected=ivs("injected"),
            bad_ranges=ivs("bad_ranges"),
            badblocks=Badblocks(segs),
            scrub_count=int(doc["scrub_count"]),
        )
