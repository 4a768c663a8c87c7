"""Sets of integers kept as sorted, disjoint, merged half-open intervals [start, end).

Every error list of the medium (poison lines, injection records, bad byte ranges) is one of
these.  Functions return new lists; callers own their lists and never share them mutably."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

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
    """The parts of ``ivs`` inside [start, end)."""
    i = bisect_right(ivs, (start, float("inf"))) - 1
    i = max(i, 0)
    out: Intervals = []
    for s, e in ivs[i:]:
        if s >= end:
            break
        if e > start:
            out.append((max(s, start), min(e, end)))
    return out


def first_overlap(ivs: Intervals, start: int, end: int) -> tuple[int, int] | None:
    """The first interval of ``ivs`` meeting [start, end), or None. O(log n)."""
    i = bisect_left(ivs, (start, start))
    if i > 0 and ivs[i - 1][1] > start:
        return ivs[i - 1]
    if i < len(ivs) and ivs[i][0] < end:
        return ivs[i]
    return None


def union(a: Intervals, b: Intervals) -> Intervals:
    out = list(a)
    for s, e in b:
        out = add(out, s, e)
    return out


def subtract(a: Intervals, b: Intervals) -> Intervals:
    out = list(a)
    for s, e in b:
        out = remove(out, s, e)
    return out


def scale(ivs: Intervals, unit: int) -> Intervals:
    """Intervals in units of ``unit`` grown outward to cover the same set, merged."""
    out: Intervals = []
    for s, e in ivs:
        out = add(out, s // unit, -(-e // unit))
    return out


def total(ivs: Intervals) -> int:
    return sum(e - s for s, e in ivs)
