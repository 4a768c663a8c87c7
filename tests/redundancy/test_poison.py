"""Poison under the parity layer: one bad page per group costs nothing, more is lost exactly."""

import errno
import os
import random

import pytest

import daxkit
from daxkit.device.interface import MF_MEM_PRE_REMOVE

from .conftest import GROUP, P, lower_off, read_all

LINE = 64


def one_page_per_group(dev, seed=0):
    rnd = random.Random(seed)
    n = dev.size // P
    return [g * GROUP + rnd.randrange(min(GROUP, n - g * GROUP)) for g in range(dev.geometry.ngroups)]


LINES = {
    "one line": [(1000, 1)],
    "scattered lines": [(0, 1), (700, 64), (2048, 200), (4095, 1)],
    "whole page": [(0, P)],
}


def poison(dev, page, spans, notify):
    for off, n in spans:
        pos = lower_off(dev, page * P + off)
        if notify:
            first, last = pos // 512, (pos + n - 1) // 512
            dev.lower.inject_error(first, last - first + 1, saturate=True)
        else:
            dev.lower.inject_poison(pos, n)


def assert_intact(dev):
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    assert dev.lower.poisoned_ranges() == [] and dev.lower.known_errors() == []


@pytest.mark.parametrize("notify", [False, True], ids=["latent", "notified"])
@pytest.mark.parametrize("spans", LINES.values(), ids=LINES.keys())
def test_one_bad_page_per_group_costs_nothing(held, spans, notify):
    dev, h = held
    pages = one_page_per_group(dev)
    for page in pages:
        poison(dev, page, spans, notify)
    assert_intact(dev)
    assert h.calls == []  # nothing reached the layer above
    rep = dev.repair()
    assert rep.lost == [] and rep.corrupt == []
    assert {off // P for off, _ in rep.repaired} == set(pages)  # transparent repairs are reported


def test_known_poison_direct_access_repairs_then_hands_out_the_view(held):
    dev, h = held
    page = 3 * GROUP + 5
    dev.lower.inject_error(lower_off(dev, page * P) // 512 + 3, 1, notify=False)
    dev.lower.scrub()  # known now: the lower device reports to us, we repair before anyone hears
    assert dev.lower.known_errors() == []
    dev.lower.badblocks.add(f"{lower_off(dev, page * P) // 512} 8")  # a software entry: same story
    avail, view = dev.direct_access(page - 1, 3)
    assert avail == 3 and bytes(view) == bytes(dev.want[(page - 1) * P : (page + 2) * P])
    assert h.calls == []


def test_read_recover_returns_everything(held):
    dev, h = held
    dev.lower.inject_poison(lower_off(dev, 40 * P + 128), 256)
    buf = bytearray(4 * P)
    assert dev.read_recover_into(buf, 39 * P) == [] and buf == dev.want[39 * P : 43 * P]
    assert h.calls == [] and dev.lower.poisoned_ranges() == []


def test_a_store_into_a_poisoned_page_repairs_it_first(held):
    dev, h = held
    dev.lower.inject_poison(lower_off(dev, 50 * P + 64), 64)
    dev.lower.inject_poison(lower_off(dev, 66 * P), 64)  # the page next to a partial store
    data = os.urandom(100)
    dev.store(data, 50 * P + 1000)  # partial: the old bytes around it must come back
    dev.want[50 * P + 1000 : 50 * P + 1100] = data
    whole = os.urandom(P)
    dev.store(whole, 65 * P)  # same group as page 66: parity must stay right for it
    dev.want[65 * P : 66 * P] = whole
    assert_intact(dev)
    assert h.calls == [] and not dev.repair().lost


def test_latent_poison_in_parity_and_checksum_pages_under_a_store(held):
    dev, h = held
    geo = dev.geometry
    dev.lower.inject_poison(geo.parity_start * P + 512, 64)
    dev.lower.inject_poison(geo.csum_start * P + 4 * 5, 4)
    for off in (2 * P, 5 * P + 7):
        data = os.urandom(P)
        dev.store(data, off)
        dev.want[off : off + P] = data
    rep = dev.repair()
    assert not rep.lost and not rep.corrupt
    assert_intact(dev)
    dev.lower.inject_poison(lower_off(dev, 3 * P), 64)  # parity of group 0 is right again
    assert_intact(dev)
    assert h.calls == []


@pytest.mark.parametrize("region", ["header", "intent", "map", "csum", "parity"])
def test_metadata_poison_is_rewritten_and_nothing_goes_up(held, region):
    dev, h = held
    geo = dev.geometry
    page = {
        "header": 1,
        "intent": geo.intent_start,
        "map": geo.intent_start + 1,
        "csum": geo.csum_start,
        "parity": geo.parity_start + 2,
    }[region]
    dev.lower.inject_error(page * P // 512 + 1, 2)
    assert dev.lower.known_errors() == [] and h.calls == []
    dev.lower.inject_poison(lower_off(dev, 2 * GROUP * P + 7 * P), 64)  # parity of group 2 is needed
    assert_intact(dev)
    rep = dev.repair()
    assert not rep.lost and not rep.corrupt


@pytest.mark.parametrize("notify", [False, True], ids=["latent", "notified"])
def test_bad_pages_of_one_group_with_disjoint_lines_are_rebuilt_line_by_line(held, notify):
    """Beyond one page per group, but no line is bad in two pages at once: each bad line is
    rebuilt from the same line of the others, and each page checked whole against its CRC."""
    dev, h = held
    group = [3 * GROUP + 1, 3 * GROUP + 5, 3 * GROUP + 6]
    spans = [[(0, 64), (2048, 64)], [(512, 512)], [(64, 128), (4032, 64)]]  # no line in two pages
    for page, sp in zip(group, spans):
        poison(dev, page, sp, notify)
    assert_intact(dev)
    assert h.calls == []
    rep = dev.repair()
    assert rep.lost == [] and rep.corrupt == []
    assert {off // P for off, _ in rep.repaired} == set(group)


def test_two_bad_pages_in_a_group_lose_exactly_those(held):
    """The same line bad in two pages of a group: neither can be rebuilt, and each page's
    CRC stands for the whole page, so each loses its bad span -- exactly that, no more."""
    dev, h = held
    a, b = 4 * GROUP + 2, 4 * GROUP + 9
    dev.lower.inject_poison(lower_off(dev, a * P + 256), 64)
    dev.lower.inject_poison(lower_off(dev, b * P + 192), 128)  # covers a's bad line too
    other = 7 * GROUP + 1  # a repairable page elsewhere: unaffected
    dev.lower.inject_poison(lower_off(dev, other * P), 64)
    got, buf = read_all(dev, a * P, P)
    assert got == 256 and buf[:256] == dev.want[a * P : a * P + 256]  # clean lines up to the bad one
    rep = dev.repair()
    want_lost = [(a * P + 256, 64), (b * P + 192, 128)]
    assert rep.lost == want_lost
    told = sorted((o, n) for o, n, _ in h.calls)
    assert all(any(o <= s and s + n <= o + m for o, m in told) for s, n in want_lost)
    assert all(s // P in (a, b) for s, _ in told)  # nothing about the repaired page
    for page in (a, b):
        with pytest.raises(daxkit.HWPoisonError):
            dev.direct_access(page, 1)
    with pytest.raises(OSError) as e:
        dev.lower.pread(P, lower_off(dev, b * P))
    assert e.value.errno == errno.EIO
    # every other byte is intact, the other group's page was repaired
    for page in range(dev.size // P):
        if page not in (a, b):
            assert read_all(dev, page * P, P) == (P, bytes(dev.want[page * P : page * P + P]))
    # rewriting the lost pages (page-aligned, over poison) brings the group back
    for page in (a, b):
        data = os.urandom(P)
        assert dev.recovery_write(page, 0, data) == P
        dev.want[page * P : page * P + P] = data
    assert_intact(dev)
    assert dev.repair().as_dict()["lost"] == []
    dev.lower.inject_poison(lower_off(dev, a * P), P)  # and it protects again
    assert_intact(dev)


def test_a_lost_page_is_told_to_mappings_and_a_repaired_one_is_not(held):
    dev, h = held
    m = dev.map(0, 8 * GROUP * P)
    heard = []
    m.on_poison = lambda off, n: heard.append((off, n))
    dev.lower.inject_error(lower_off(dev, 2 * P) // 512, 1)  # repairable
    assert heard == [] and h.calls == []
    dev.lower.inject_error(lower_off(dev, GROUP * P + P) // 512, 1, notify=False)
    dev.lower.inject_error(lower_off(dev, GROUP * P + 2 * P) // 512, 1, notify=False)
    dev.lower.scrub()  # two bad pages in one group, known at once: both lost
    assert heard == [(GROUP * P + P, 256), (GROUP * P + 2 * P, 256)]
    assert [(o, n) for o, n, _ in h.calls] == heard
    assert m.bad_ranges() == dev.known_errors()
    m.close()


def test_zero_and_sub_page_writes_over_poison(held):
    dev, h = held
    dev.lower.inject_poison(lower_off(dev, 9 * P + 64), 64)
    dev.zero_page_range(9, 1)
    dev.want[9 * P : 10 * P] = bytes(P)
    dev.lower.inject_error(lower_off(dev, 20 * P) // 512, 1, notify=False)
    dev.lower.scrub()
    kept = dev.recovery_write_subpage(20 * P + 10, b"abc")
    dev.want[20 * P + 10 : 20 * P + 13] = b"abc"
    assert kept == []
    assert_intact(dev)
    assert not dev.repair().lost and h.calls == []


def test_sub_page_write_over_a_lost_page_keeps_its_bad_lines(held):
    dev, h = held
    a, b = 5 * GROUP, 5 * GROUP + 1
    for page in (a, b):
        dev.lower.inject_error(lower_off(dev, page * P) // 512, 1, notify=False)
    dev.lower.scrub()
    kept = dev.recovery_write_subpage(a * P + 1000, b"xyz")
    assert kept == [(a * P, 256)]
    got, buf = read_all(dev, a * P + 256, P - 256)
    want = bytearray(dev.want[a * P + 256 : a * P + P])
    want[1000 - 256 : 1003 - 256] = b"xyz"
    assert got == P - 256 and buf == bytes(want)
    dev.zero_page_range(b, 1)  # clears the other: the group has one bad page left
    assert dev.repair().lost == [(a * P, 256)]


def test_device_removal_goes_up_as_it_is(held):
    dev, h = held
    dev.lower.kill()
    assert h.calls == [(0, dev.size, MF_MEM_PRE_REMOVE)]
    with pytest.raises(daxkit.DeviceGone):
        dev.mc_read(bytearray(1), 0)


def test_poison_made_known_by_another_process_is_repaired_here(held, img):
    """A CLI inject-error with notify elsewhere: our lower device's watcher brings the news to
    us as its holder; we repair, and the layer above hears nothing."""
    import time

    from ..conftest import run_py

    dev, h = held
    page = 11 * GROUP + 3
    sector = lower_off(dev, page * P) // 512
    r = run_py(f"import daxkit; daxkit.open({img!r}).inject_error({sector}, 2)")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 5
    while dev.lower.known_errors() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dev.lower.known_errors() == [] and dev.lower.poisoned_ranges() == []
    assert h.calls == []
    assert_intact(dev)
