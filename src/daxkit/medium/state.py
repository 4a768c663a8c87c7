"""The persistent error state of a medium: what the hardware knows (poison, injection records)
and what the OS side knows (bad range list, badblocks table), plus the scrub count.

Rules
  * Immutable value: every change builds a new ErrorState; the image commits it atomically.
  * Units: ``poison`` and ``bad_ranges`` in bytes (poison in whole 64-byte lines),
    ``injected`` in 512-byte blocks, ``badblocks`` as the table's segments in sectors.
  * The encoding is canonical (one state, one byte string) so a checksum over it is meaningful,
    and compact, because a state has no ceiling: a 64 MiB device with every other line poisoned
    holds half a million ranges.  Decoding validates everything; a state that is not sorted and
    well formed is refused, never installed.

Theory of operation
  Each interval list is flattened to [s0, e0, s1, e1, ...] and stored as the differences
  between neighbours, in the narrowest unsigned array type that holds them (one byte each for
  the every-other-line worst case).  Unsigned differences make "sorted" hold by construction;
  "not empty" is one min() over the lengths.  Both directions run in C (array, accumulate).
  States written before this encoding are JSON, recognised by their first byte.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from dataclasses import dataclass, field, replace
from itertools import accumulate, chain
from operator import sub

from . import ranges
from .badblocks import Badblocks

_MAGIC = b"DXE2"
_HEAD = struct.Struct("<4sQ")  # magic, scrub_count
_LIST = struct.Struct("<cQ")  # array type code, number of values
_CODES = {b"B": 1, b"H": 2, b"I": 4, b"Q": 8}  # array type code -> bytes per value
_SWAP = sys.byteorder != "little"  # arrays are native; the image is little-endian


def _pack(flat: list[int]) -> bytes:
    deltas = [flat[0], *map(sub, flat[1:], flat)] if flat else []
    top = max(deltas, default=0)
    code = next(c for c, size in _CODES.items() if top < 1 << (8 * size) or c == b"Q")
    packed = array(code.decode(), deltas)
    if _SWAP:
        packed.byteswap()
    return _LIST.pack(code, len(deltas)) + packed.tobytes()


def _unpack(raw: bytes, at: int) -> tuple[list[int], int]:
    code, n = _LIST.unpack_from(raw, at)
    if code not in _CODES:
        raise ValueError("error state: unknown array type")
    at += _LIST.size
    end = at + n * _CODES[code]
    if n % 2 or end > len(raw):
        raise ValueError("error state: list cut short")
    deltas = array(code.decode())
    deltas.frombytes(raw[at:end])
    if _SWAP:
        deltas.byteswap()
    if n and min(deltas[1::2]) == 0:
        raise ValueError("error state: empty interval")
    return list(accumulate(deltas)), end


def _pairs(flat: list[int]) -> ranges.Intervals:
    return list(zip(flat[0::2], flat[1::2]))


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
        segs = self.badblocks.segments
        parts = [_HEAD.pack(_MAGIC, self.scrub_count)]
        for ivs in (self.poison, self.injected, self.bad_ranges, [(s, e) for s, e, _ in segs]):
            parts.append(_pack(list(chain.from_iterable(ivs))))
        parts.append(bytes(a for _, _, a in segs))
        return b"".join(parts)

    @classmethod
    def decode(cls, raw: bytes) -> ErrorState:
        if raw[:1] == b"{":
            return cls._decode_json(raw)
        try:
            magic, scrub_count = _HEAD.unpack_from(raw)
            if magic != _MAGIC:
                raise ValueError("error state: unknown encoding")
            at = _HEAD.size
            lists = []
            for _ in range(4):
                flat, at = _unpack(raw, at)
                lists.append(_pairs(flat))
        except struct.error:
            raise ValueError("error state: cut short") from None
        acks = raw[at:]
        if len(acks) != len(lists[3]) or acks.strip(b"\0\1"):
            raise ValueError("error state: malformed badblocks flags")
        segs = [(s, e, bool(a)) for (s, e), a in zip(lists[3], acks)]
        return cls(lists[0], lists[1], lists[2], Badblocks(segs), scrub_count)

    @classmethod
    def _decode_json(cls, raw: bytes) -> ErrorState:
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
