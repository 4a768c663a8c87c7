"""Sets of integers kept as sorted, disjoint, merged half-open intervals [start, end).

Every error list of the medium (poison lines, injection records, bad byte ranges) is one of
these.  Functions return new lists; callers own their lists and never share them mutably.
The whole-list operations (union, subtract, scale) are single merging passes: an error list
has no ceiling, and half a million ranges must cost a fraction of a second, not minutes."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from itertools import chain, islice
from math import inf
from operator import lt

Intervals = list[tuple[int, int]]


def add(ivs: Intervals, start: int, end: int) -> Intervals:
    """The union of ``ivs`` and [start, end); touching intervals merge."""
    if end <= start:
        return list(ivs)
    out: Intervals = []
    i, n = 0, len(ivs)
    while i < n and ivs[i][1] < start:
        out.append(ivs[i])
        i += 1
    while i < n and ivs[i][0] <= end:
        start = min(start, ivs[i][0])
        end = max(end, ivs[i][1])
        i += 1
    out.append((start, end))
    out.extend(ivs[i:])
    return out


def remove(ivs: Intervals, start: int, end: int) -> Intervals:
    """``ivs`` without [start, end)."""
    if end <= start:
        return list(ivs)
    out: Intervals = []
    for s, e in ivs:
        if e <= start or s >= end:
            out.append((s, e))
            continue
        if s < start:
            out.append((s, start))
        if e > end:
            out.append((end, e))
    return out


def clip(ivs: Intervals, start: int, end: int) -> Intervals:
    """The parts of ``ivs`` inside [start, end).  O(log n) plus the size of the answer."""
    if end <= start:
        return []
    i = max(bisect_right(ivs, (start, inf)) - 1, 0)
    out = ivs[i : bisect_left(ivs, (end,), i)]  # (end,) sorts before every (end, e)
    if out and out[0][1] <= start:
        del out[0]
    if out:
        out[0] = (max(out[0][0], start), out[0][1])
        out[-1] = (out[-1][0], min(out[-1][1], end))
    return out


def first_overlap(ivs: Intervals, start: int, end: int) -> tuple[int, int] | None:
    """The first interval of ``ivs`` meeting [start, end), or None. O(log n)."""
    i = bisect_left(ivs, (start, start))
    if i > 0 and ivs[i - 1][1] > start:
        return ivs[i - 1]
    if i < len(ivs) and ivs[i][0] < end:
        return ivs[i]
    return None


def _coalesce(ivs) -> Intervals:
    """Intervals sorted by start, merged where they overlap or touch; empty ones dropped."""
    out: Intervals = []
    for s, e in ivs:
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _normal(ivs: Intervals) -> bool:
    """Already what _coalesce returns (sorted, none empty, none touching)?  Runs in C."""
    flat = list(chain.from_iterable(ivs))
    return all(map(lt, flat, islice(flat, 1, None)))


def union(a: Intervals, b: Intervals) -> Intervals:
    if a == b or (not b and _normal(a)):
        return list(a)
    if not a and _normal(b):
        return list(b)
    return _coalesce(sorted(a + b))  # two sorted runs: one linear merge inside sort()


def subtract(a: Intervals, b: Intervals) -> Intervals:
    """``a`` (sorted) without every interval of ``b`` (any order)."""
    if not a or not b:
        return list(a)
    if a == b:
        return []
    if not _normal(b):
        b = _coalesce(sorted(b))
    if len(b) * 16 < len(a):  # a few holes in a long list: keep the gaps between them, in slices
        out: Intervals = []
        prev = -inf
        for s, e in b + [(inf, inf)]:
            if s > prev:
                out += clip(a, prev, s)
            prev = max(prev, e)
        return out
    out = []
    j, m = 0, len(b)
    for s, e in a:
        while j < m and b[j][1] <= s:
            j += 1
        k = j
        while k < m and b[k][0] < e and s < e:
            if b[k][0] > s:
                out.append((s, b[k][0]))
            s = max(s, b[k][1])
            k += 1
        if s < e:
            out.append((s, e))
    return out


def scale(ivs: Intervals, unit: int) -> Intervals:
    """Intervals in units of ``unit`` grown outward to cover the same set, merged."""
    return _coalesce((s // unit, -(-e // unit)) for s, e in ivs)


def total(ivs: Intervals) -> int:
    return sum(e - s for s, e in ivs)
