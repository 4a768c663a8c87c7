"""Interval lists and the batched badblocks operations against one-at-a-time models: the fast
whole-list passes (SPEC 3: the error state has no ceiling) must give what the simple loops give."""

import random
import time

import pytest

from daxkit.errors import NoSpace
from daxkit.medium import ranges
from daxkit.medium.badblocks import MAX_BADBLOCKS, Badblocks


def _model_add(ivs):
    out = []
    for s, e in ivs:
        out = ranges.add(out, s, e)
    return out


def _model_subtract(a, b):
    for s, e in b:
        a = ranges.remove(a, s, e)
    return a


def _model_clip(ivs, start, end):
    return [(max(s, start), min(e, end)) for s, e in ivs if s < end and e > start]


def _random_list(rng, n, span=2000, width=20):
    return [(x, x + rng.randint(0, width)) for x in (rng.randint(0, span) for _ in range(n))]


def test_interval_operations_match_the_models():
    rng = random.Random(7)
    for _ in range(1500):
        a = _model_add(_random_list(rng, rng.randint(0, 150)))
        raw = _random_list(rng, rng.randint(0, 40))  # any order, empties, overlaps
        b = _model_add(raw)
        assert ranges.union(a, raw) == _model_add(a + raw)
        assert ranges.union([], raw) == b and ranges.union(raw, []) == b
        assert ranges.subtract(a, raw) == _model_subtract(a, raw)
        assert ranges.subtract(b, a) == _model_subtract(b, a)
        start = rng.randint(-5, 2100)
        end = start + rng.randint(1, 300)
        assert ranges.clip(a, start, end) == _model_clip(a, start, end)
        unit = rng.choice([1, 3, 64, 512])
        assert ranges.scale(sorted(raw), unit) == _model_add(
            [(s // unit, -(-e // unit)) for s, e in sorted(raw)]
        )


def test_half_a_million_ranges_cost_well_under_a_second_each():
    lines = [(o, o + 64) for o in range(0, 64 << 20, 128)]
    other = [(o, o + 64) for o in range(64, 64 << 20, 256)]
    for op in (
        lambda: ranges.union(lines, other),
        lambda: ranges.subtract(lines, other),
        lambda: ranges.subtract(lines, [(0, 64 << 20)]),
        lambda: ranges.scale(lines, 4096),
        lambda: ranges.clip(lines, 1 << 20, 60 << 20),
    ):
        t = time.perf_counter()
        op()
        assert time.perf_counter() - t < 1.0


def _set_what_fits(table, s, e, ack=True):
    """The kernel's badblocks_set on a table that may be full: as much of [s, e) from its start
    as the table takes (the most that fits), and whether anything was left out.  Built only
    from the all-or-nothing ``set``."""
    for end in range(e, s, -1):
        try:
            return table.set(s, end - s, ack), end < e
        except NoSpace:
            pass
    return table, True


def _sequential_set(table, runs, ack=True):
    overflow = False
    for s, e in runs:
        table, left_out = _set_what_fits(table, s, e, ack)
        overflow |= left_out
    return table, overflow


def test_set_runs_is_a_scrub_setting_runs_one_by_one():
    rng = random.Random(11)
    cases = {True: 0, False: 0}
    for _ in range(12):
        sectors = sorted(rng.sample(range(0, 4000, 8), rng.randint(300, 500)))
        table, _ = _sequential_set(Badblocks(), [(s, s + rng.randint(1, 3)) for s in sectors])
        runs = _model_add(_random_list(rng, rng.randint(0, 250), span=6000, width=3))
        got, overflow = table.set_runs(runs)
        want, model_overflow = _sequential_set(table, runs)
        assert got.count <= MAX_BADBLOCKS
        if not model_overflow or overflow:  # one pass when all fits, else the kernel's order
            assert (got, overflow) == (want, model_overflow)
        cases[model_overflow] += 1
    assert all(cases.values())  # both ways were tried


def test_set_runs_on_a_nearly_full_table_sets_what_fits_of_each_run():
    """Long entries near BB_MAX_LEN, a table one or two entries short of full, runs that extend,
    bridge, overlap or miss them: every run gets the most of it, from its start, that fits."""
    rng = random.Random(5)
    partial = 0
    for _ in range(40):
        n = rng.choice([MAX_BADBLOCKS - 2, MAX_BADBLOCKS - 1, MAX_BADBLOCKS])
        segs = []
        for i in range(n):
            start = i * 600 + rng.randint(0, 40)
            segs.append((start, start + rng.randint(450, 512), rng.random() < 0.7))
        table = Badblocks(segs)
        assert table.count == n
        runs = _model_add(_random_list(rng, rng.randint(1, 30), span=n * 600, width=rng.choice([3, 40, 120])))
        got, overflow = table.set_runs(runs)
        want, model_overflow = _sequential_set(table, runs)
        assert got.count <= MAX_BADBLOCKS
        if not model_overflow or overflow:
            assert (got, overflow) == (want, model_overflow)
        partial += model_overflow and want != table
    assert partial  # tables that took part of what was asked were seen


def test_a_run_needing_more_than_512_entries_fills_the_table():
    """The review's 262145-block injection: the table is filled, in address order, not left
    empty; the rest is reported as overflow."""
    table, overflow = Badblocks().set_runs([(0, 512 * MAX_BADBLOCKS + 1)])
    assert overflow and table.count == MAX_BADBLOCKS and table.ranges() == [(0, 512 * MAX_BADBLOCKS)]
    table, overflow = Badblocks().set_runs([(0, 512 * MAX_BADBLOCKS)])
    assert not overflow and table.count == MAX_BADBLOCKS
    # every other sector: the first 512 of them
    table, overflow = Badblocks().set_runs([(s, s + 1) for s in range(0, 4096, 2)])
    assert overflow and table.ranges() == [(s, s + 1) for s in range(0, 1024, 2)]
    # a full table still takes what merges into its entries, from later runs too
    table, overflow = table.set_runs([(1023, 1025), (5000, 5001)])
    assert overflow and table.ranges()[-2:] == [(1020, 1021), (1022, 1025)]
    assert table.count == MAX_BADBLOCKS
    # a run that bridges entries of a full table frees room
    table, overflow = table.set_runs([(1019, 1022)])
    assert not overflow and table.ranges()[-1] == (1018, 1025) and table.count == MAX_BADBLOCKS - 2


def test_clear_runs_is_clearing_runs_one_by_one():
    rng = random.Random(3)
    for _ in range(60):
        table = Badblocks([(s, s + rng.randint(1, 40), rng.random() < 0.5) for s in range(0, 20000, 50)])
        runs = _model_add(_random_list(rng, rng.randint(0, 30), span=20000, width=60))
        want = table
        for s, e in runs:  # 400 entries, each run splits at most one: never full
            want = want.clear(s, e - s)
        assert table.clear_runs(runs) == want


def test_clear_runs_that_would_overfill_the_table_change_nothing():
    full = Badblocks([(s, s + 4, True) for s in range(0, 8 * MAX_BADBLOCKS, 8)])
    with pytest.raises(NoSpace):
        full.clear_runs([(1, 2), (9, 10)])
    assert full.count == MAX_BADBLOCKS
    assert full.clear_runs([(0, 4), (9, 10)]).count == MAX_BADBLOCKS  # one entry gone, one split
