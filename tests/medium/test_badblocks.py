"""The badblocks table: the kernel's rules, and a property test against a plain model."""

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daxkit.errors import InvalidArgument, NoSpace
from daxkit.medium.badblocks import BB_MAX_LEN, MAX_BADBLOCKS, Badblocks, parse_entry


def entries(bb):
    return [tuple(e) for e in bb]


def test_empty_table():
    bb = Badblocks()
    assert entries(bb) == [] and bb.text() == "" and not bb and bb.check(0, 100).status == 0


def test_sorted_regardless_of_insertion_order():
    bb = Badblocks().set(100, 4).set(10, 2).set(50, 1)
    assert bb.text() == "10 2\n50 1\n100 4\n"


def test_touching_and_overlapping_ranges_merge():
    bb = Badblocks().set(10, 5).set(15, 5)
    assert entries(bb) == [(10, 10, True)]
    bb = bb.set(12, 20)
    assert entries(bb) == [(10, 22, True)]
    bb = Badblocks().set(10, 2).set(20, 2).set(11, 10)
    assert entries(bb) == [(10, 12, True)]


def test_long_runs_split_into_512_sector_entries():
    bb = Badblocks().set(0, 1000)
    assert bb.text() == "0 512\n512 488\n"
    assert all(e.count <= BB_MAX_LEN for e in bb)
    assert Badblocks().set(7, 512 * 3).text() == "7 512\n519 512\n1031 512\n"


def test_at_most_512_entries_and_a_set_on_a_full_table_fails_whole():
    bb = Badblocks()
    for i in range(MAX_BADBLOCKS):
        bb = bb.set(i * 4, 1)
    assert bb.count == MAX_BADBLOCKS
    with pytest.raises(NoSpace) as ei:
        bb.set(10_000, 1)
    assert ei.value.errno == errno.ENOSPC
    # merging into an existing entry still works on a full table
    assert bb.set(1, 1).count == MAX_BADBLOCKS
    assert bb.set(0, 3).check(2, 1).status == 1


def test_clear_that_must_split_on_a_full_table_is_enospc_and_changes_nothing():
    bb = Badblocks()
    for i in range(MAX_BADBLOCKS):
        bb = bb.set(i * 10, 5)
    with pytest.raises(NoSpace) as ei:
        bb.clear(1, 1)
    assert ei.value.errno == errno.ENOSPC
    assert bb.count == MAX_BADBLOCKS and bb.check(1, 1).status == 1
    # a clear that trims the end of an entry needs no new entry
    assert bb.clear(4, 1).count == MAX_BADBLOCKS


def test_clear_splits_and_trims():
    bb = Badblocks().set(10, 10)
    assert entries(bb.clear(12, 2)) == [(10, 2, True), (14, 6, True)]
    assert entries(bb.clear(0, 12)) == [(12, 8, True)]
    assert entries(bb.clear(0, 100)) == []


def test_acknowledged_flag():
    bb = Badblocks().set(10, 4, acknowledged=False)
    assert entries(bb) == [(10, 4, False)]
    assert bb.check(10, 1).status == -1
    assert bb.text(unacknowledged_only=True) == "10 4\n"
    # overwriting the whole range takes the new flag; a partial overlap merges with AND
    assert entries(bb.set(10, 4, True)) == [(10, 4, True)]
    assert entries(bb.set(12, 4, True)) == [(10, 6, False)]
    assert bb.set(12, 4, True).check(14, 2).status == -1  # the entry met is not fully acked


def test_check_reports_first_entry_met():
    bb = Badblocks().set(10, 4).set(20, 2)
    assert tuple(bb.check(0, 100)) == (1, 10, 4)
    assert tuple(bb.check(12, 10)) == (1, 10, 4)
    assert tuple(bb.check(15, 5)) == (0, 0, 0)
    assert not bb.check(14, 6) and bb.check(14, 7)


@pytest.mark.parametrize(
    "text", ["", "42", "42 8 1", "x 8", "42 y", "42 0", "42 -3", "-1 8", "42 8x", "4 2 junk"]
)
def test_junk_text_is_einval(text):
    with pytest.raises(InvalidArgument) as ei:
        parse_entry(text)
    assert ei.value.errno == errno.EINVAL
    assert isinstance(ei.value, ValueError)


def test_text_round_trip():
    bb = Badblocks().add_text("42 8").add_text("  100 1\n")
    assert bb.text() == "42 8\n100 1\n" and all(e.acknowledged for e in bb)


def test_invalid_set_arguments():
    with pytest.raises(InvalidArgument):
        Badblocks().set(-1, 1)
    with pytest.raises(InvalidArgument):
        Badblocks().set(1, 0)


# -- property test against a reference model: a dict sector -> acknowledged ---------------------
ops = st.lists(
    st.tuples(st.sampled_from(["set", "clear"]), st.integers(0, 3000), st.integers(1, 700), st.booleans()),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_table_matches_model(operations):
    bb, model = Badblocks(), {}
    for op, s, n, ack in operations:
        if op == "set":
            bb = bb.set(s, n, ack)
            model.update({x: ack for x in range(s, s + n)})
        else:
            bb = bb.clear(s, n)
            for x in range(s, s + n):
                model.pop(x, None)
    ents = list(bb)
    # same set of sectors
    covered = {x for e in ents for x in range(e.sector, e.sector + e.count)}
    assert covered == set(model)
    assert bb.sectors == len(model)
    # sorted, disjoint, bounded entries; a run is split only where an entry reached 512
    for a, b in zip(ents, ents[1:]):
        assert a.sector + a.count <= b.sector
        if a.sector + a.count == b.sector:
            assert a.count == BB_MAX_LEN
    assert all(1 <= e.count <= BB_MAX_LEN for e in ents)
    # an entry is acknowledged exactly when all its sectors are
    for e in ents:
        assert e.acknowledged == all(model[x] for x in range(e.sector, e.sector + e.count))
    # check() agrees with the model on a few probes
    for s in (0, 100, 1000, 2500):
        hit = [x for x in range(s, s + 64) if x in model]
        assert bool(bb.check(s, 64)) == bool(hit)
    # text form: one line per entry
    assert bb.text() == "".join(f"{e.sector} {e.count}\n" for e in ents)
