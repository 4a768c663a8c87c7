"""Silent corruption (bytes changed behind the layer's back, no poison): the scrub finds it."""

import os

import pytest

import daxkit

from .conftest import GROUP, P, lower_off, read_all


def flip(dev, off, n=1):
    pos = lower_off(dev, off)
    old = dev.lower.pread(n, pos)
    dev.lower.store(bytes(b ^ 0x5A for b in old), pos)


def test_a_flipped_page_is_rebuilt(held):
    dev, h = held
    pages = [min(g * GROUP + g % GROUP, dev.size // P - 1) for g in range(dev.geometry.ngroups)]
    for page in pages:
        flip(dev, page * P + 100, 7)
    rep = dev.repair(verify=True)
    assert {p for o, n in rep.corrupt for p in range(o // P, (o + n) // P)} == set(pages)
    assert rep.lost == [] and rep.repaired == []
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    assert dev.repair().as_dict()["corrupt"] == [] and h.calls == []


def test_two_corrupt_pages_in_a_group_are_lost_and_read_as_eio(held):
    dev, h = held
    a, b = 2 * GROUP + 3, 2 * GROUP + 4
    flip(dev, a * P)
    flip(dev, b * P + 4000)
    rep = dev.repair()
    assert rep.lost == [(a * P, 2 * P)] and rep.corrupt == []
    assert sorted((o, n) for o, n, _ in h.calls) == [(a * P, P), (b * P, P)]
    for page in (a, b):
        assert read_all(dev, page * P, P)[0] == 0
        with pytest.raises(daxkit.HWPoisonError):
            dev.direct_access(page, 1)
    rest = [p for p in range(2 * GROUP, 3 * GROUP) if p not in (a, b)]
    assert all(read_all(dev, p * P, P) == (P, bytes(dev.want[p * P : p * P + P])) for p in rest)
    dev.lower.inject_poison(lower_off(dev, rest[0] * P), 64)  # the rest of the group is protected still
    assert read_all(dev, rest[0] * P, P) == (P, bytes(dev.want[rest[0] * P : rest[0] * P + P]))


def test_a_wrong_checksum_entry_is_metadata_not_data(held):
    dev, h = held
    csum = dev.geometry.csum_start * P
    old = dev.lower.pread(64, csum)
    dev.lower.store(bytes(b ^ 1 for b in old), csum)  # 16 entries of group 0, one line
    rep = dev.repair()
    assert rep.corrupt == [] and rep.lost == [] and rep.metadata == [(csum, 64)]
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))


def test_a_wrong_parity_page_is_rewritten(held):
    dev, h = held
    par = (dev.geometry.parity_start + 3) * P
    dev.lower.store(b"\x00" * 100, par + 50)
    rep = dev.repair()
    assert rep.corrupt == [] and rep.lost == [] and rep.metadata == [(par, P)]
    page = 3 * GROUP + 2
    dev.lower.inject_poison(lower_off(dev, page * P), P)
    assert read_all(dev, page * P, P) == (P, bytes(dev.want[page * P : page * P + P]))


def test_a_partial_store_onto_a_corrupt_page_repairs_it_first(held):
    dev, h = held
    page = 6 * GROUP + 1
    flip(dev, page * P + 10, 4)
    data = os.urandom(50)
    dev.store(data, page * P + 2000)
    dev.want[page * P + 2000 : page * P + 2050] = data
    assert read_all(dev, page * P, P) == (P, bytes(dev.want[page * P : page * P + P]))
    rep = dev.repair()
    assert rep.lost == [] and rep.corrupt == [(page * P, P)]


def test_corruption_beside_poison_on_another_line_is_rebuilt(held):
    """A flip in line 0 of one page, poison in line 10 of another: line 10 is whole in every
    other page, so the poisoned page is rebuilt line by line, then the flipped one whole."""
    dev, h = held
    a, b = 8 * GROUP, 8 * GROUP + 5
    flip(dev, a * P + 9)
    dev.lower.inject_poison(lower_off(dev, b * P + 128), 64)
    dev.lower.inject_poison(lower_off(dev, b * P + 640), 64)
    rep = dev.repair()
    assert rep.lost == [] and [s // P for s, _ in rep.corrupt] == [a]
    assert {s // P for s, _ in rep.repaired} == {b}
    whole = 8 * GROUP * P, GROUP * P
    assert read_all(dev, *whole) == (GROUP * P, bytes(dev.want[whole[0] : whole[0] + whole[1]]))
    assert h.calls == []


def test_corruption_beside_poison_never_yields_wrong_bytes(held):
    """The flip and the poison on the same line of two pages: neither can be rebuilt."""
    dev, h = held
    a, b = 8 * GROUP, 8 * GROUP + 5
    flip(dev, a * P + 649)
    dev.lower.inject_poison(lower_off(dev, b * P + 640), 64)
    rep = dev.repair()
    assert {s // P for s, _ in rep.lost} == {a, b}
    for page in range(8 * GROUP, 9 * GROUP):
        got, buf = read_all(dev, page * P, P)
        if page in (a, b):
            assert got < P and buf[:got] == dev.want[page * P : page * P + got]
        else:
            assert (got, buf) == (P, bytes(dev.want[page * P : page * P + P]))
