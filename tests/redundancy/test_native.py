"""The native store path (daxkit._parity, on ISA-L) against the Python steps it replaces: the same
stores leave byte-identical lower devices, and every case it declines (poison, corruption, an
open mapping) is left to the careful path with nothing stored."""

import os
import random
import threading

import pytest

import daxkit
from daxkit.redundancy import ParityDevice, format_parity

from .conftest import GROUP, MiB, P, lower_off, read_all

HAVE_ISAL = any(os.path.exists(f"{d}/isa-l/crc.h") for d in ("/usr/include", "/usr/local/include"))


def test_the_native_path_is_built_where_isal_is_installed():
    if not HAVE_ISAL:
        pytest.skip("libisal-dev is not installed (make sysdeps installs it): the Python path is used")
    import daxkit._parity  # noqa: F401

    from daxkit.redundancy import parity

    assert parity._native_update is not None


def _count(dev) -> dict:
    """Wrap the device's native call: how often it stored (0) and declined (-1 fault, -2 CRC)."""
    seen: dict = {}

    def counting(fn):
        def counted(*args):
            r = fn(*args)
            seen[r] = seen.get(r, 0) + 1
            return r

        return counted

    dev._par._native = counting(dev._par._native)
    dev._par._native_page = counting(dev._par._native_page)
    return seen


def _pair(tmp_path):
    devs = []
    for name in ("native", "python"):
        lower = daxkit.create(str(tmp_path / f"{name}.img"), 4 * MiB)
        format_parity(lower, group=GROUP)
        devs.append(ParityDevice(lower))
    devs[1]._par._native = devs[1]._par._native_page = None
    return devs


def _lower_bytes(dev):
    buf = bytearray(dev.lower.size)
    assert dev.lower.mc_read(buf, 0) == len(buf)
    return bytes(buf)


def test_native_and_python_stores_leave_identical_devices(tmp_path):
    if not HAVE_ISAL:
        pytest.skip("no native path to compare")
    devs = _pair(tmp_path)
    seen = _count(devs[0])
    try:
        rnd = random.Random(7)
        want = bytearray(devs[0].size)
        npages = devs[0].size // P
        for i in range(400):
            kind = i % 4
            if kind == 0:  # one page
                off, n = rnd.randrange(npages) * P, P
            elif kind == 1:  # whole pages across groups
                off = rnd.randrange(npages - 3 * GROUP) * P
                n = rnd.randrange(1, 3 * GROUP) * P
            elif kind == 2:  # exactly one whole group
                off, n = rnd.randrange(npages // GROUP) * GROUP * P, GROUP * P
            else:  # not page-aligned: the Python path in both
                off, n = rnd.randrange(devs[0].size - 3 * P), rnd.randrange(1, 3 * P)
            data = rnd.randbytes(n)
            for dev in devs:
                assert dev.store(data, off) == n
            want[off : off + n] = data
        a, b = (_lower_bytes(d) for d in devs)
        assert a == b
        assert seen.get(0, 0) > 300 and set(seen) == {0}  # the native path did the stores
        for dev in devs:
            assert read_all(dev, 0, dev.size) == (dev.size, bytes(want))
            rep = dev.repair(verify=True)
            assert rep.repaired == [] and rep.corrupt == [] and rep.lost == []
    finally:
        for dev in devs:
            dev.close()


@pytest.mark.parametrize("where", ["old page", "parity page", "checksum page", "data page of a whole group"])
def test_latent_poison_under_a_native_store_is_left_to_the_careful_path(held, where):
    dev, h = held
    if dev._par._native is None:
        pytest.skip("no native path")
    seen = _count(dev)
    page = 2 * GROUP + 3
    g = page // GROUP
    geo = dev.geometry
    at = {
        "old page": lower_off(dev, page * P + 640),
        "parity page": (geo.parity_start + g) * P + 128,
        "checksum page": geo.csum_start * P + 4 * page,
        "data page of a whole group": lower_off(dev, (g * GROUP + 9) * P),
    }[where]
    dev.lower.inject_poison(at, 64)
    if where == "data page of a whole group":
        data = os.urandom(GROUP * P)
        assert dev.store(data, g * GROUP * P) == GROUP * P
        dev.want[g * GROUP * P : (g + 1) * GROUP * P] = data
    else:
        data = os.urandom(P)
        assert dev.store(data, page * P) == P
        dev.want[page * P : page * P + P] = data
    assert seen == {-1: 1}  # declined once: the careful path repaired, then stored
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    assert dev.lower.poisoned_ranges() == [] and dev.lower.known_errors() == []
    assert h.calls == []
    rep = dev.repair(verify=True)
    assert rep.lost == [] and rep.corrupt == []


def test_a_flipped_old_page_is_not_taken_into_parity(held):
    """The native path checks the old page's CRC before parity ^= old: a flip declines it, and
    the careful path rebuilds the page, then stores; a later poison elsewhere in the group is
    still rebuilt right."""
    dev, h = held
    if dev._par._native is None:
        pytest.skip("no native path")
    seen = _count(dev)
    page = 5 * GROUP + 2
    pos = lower_off(dev, page * P + 100)
    dev.lower.store(bytes([dev.want[page * P + 100] ^ 0xFF]), pos)
    data = os.urandom(P)
    assert dev.store(data, page * P) == P
    assert seen == {-2: 1}
    dev.want[page * P : page * P + P] = data
    dev.lower.inject_poison(lower_off(dev, (page + 1) * P), P)
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    assert h.calls == []


def test_a_store_from_the_device_itself_is_copied_as_memmove(held):
    """src inside the lower device's own memory (a view of the parity device): the native call
    declines, and the careful path copies it, overlapping or not."""
    dev, h = held
    if dev._par._native is None:
        pytest.skip("no native path")
    seen = _count(dev)
    _, view = dev.direct_access(0, 4)
    expect = bytes(view[: 2 * P])
    assert dev.store(view[: 2 * P], P) == 2 * P  # overlapping: pages 0-1 onto pages 1-2
    del view
    dev.want[P : 3 * P] = expect
    assert seen == {-4: 1}
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    rep = dev.repair(verify=True)
    assert rep.lost == [] and rep.corrupt == []


def test_a_flip_in_a_page_kept_by_a_reconstruct_write_is_not_taken_into_parity(held):
    """12 of a group's 16 pages stored: parity comes from the 4 pages kept (fewer reads), each
    checked against its CRC first; a flipped one declines the native call, the group is scrubbed
    (the flipped page rebuilt) before the careful path stores, and it protects every page."""
    dev, h = held
    if dev._par._native is None:
        pytest.skip("no native path")
    seen = _count(dev)
    g = 6
    first = g * GROUP
    kept = first + 14
    dev.lower.store(bytes([dev.want[kept * P + 7] ^ 0x10]), lower_off(dev, kept * P + 7))
    data = os.urandom(12 * P)
    assert dev.store(data, first * P) == 12 * P
    dev.want[first * P : (first + 12) * P] = data
    assert seen == {-2: 1}
    on_medium = bytearray(P)
    assert dev.lower.mc_read(on_medium, lower_off(dev, kept * P)) == P
    assert on_medium == dev.want[kept * P : kept * P + P]  # rebuilt by the store, before any repair
    rep = dev.repair(verify=True)
    assert [s // P for s, _ in rep.corrupt] == [kept] and rep.lost == []  # and reported
    span = first * P, GROUP * P
    for victim in (first + 3, kept):  # one at a time: each is rebuilt from the others
        dev.lower.inject_poison(lower_off(dev, victim * P), P)
        assert read_all(dev, *span) == (GROUP * P, bytes(dev.want[span[0] : span[0] + span[1]]))
    assert h.calls == []
    seen.clear()
    data = os.urandom(12 * P)  # and the native path takes the next store of the group
    assert dev.store(data, (first + 4) * P) == 12 * P
    dev.want[(first + 4) * P : (first + 16) * P] = data
    assert seen == {0: 1}
    rep = dev.repair(verify=True)
    assert rep.lost == [] and rep.corrupt == []
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))


# -- the one-page store in one call (PageStore) and the group paths that read nothing or little --


def test_a_one_page_store_is_one_native_call_lock_and_all(held, monkeypatch):
    """A page store with nothing unusual on the way never reaches the Python steps: the native
    call takes the device lock, checks the medium's in-flight word and dirty byte, stores."""
    dev, h = held
    if dev._par._native is None:
        pytest.skip("no native path")
    dev.store(bytes(dev.want[:P]), 0)  # the first store takes the view

    def no_python(*args, **kw):
        raise AssertionError("the Python store path ran")

    monkeypatch.setattr(dev._par, "update", no_python)
    rnd = random.Random(3)
    for _ in range(50):
        page = rnd.randrange(dev.size // P)
        data = rnd.randbytes(P)
        assert dev.store(data, page * P) == P
        dev.want[page * P : page * P + P] = data
    monkeypatch.undo()
    assert not dev._lock._is_owned()
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    rep = dev.repair(verify=True)
    assert rep.repaired == [] and rep.corrupt == [] and rep.lost == []
    for g in (1, 9):  # parity current: one poisoned page per group is rebuilt
        dev.lower.inject_poison(lower_off(dev, (g * GROUP + 4) * P), P)
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    assert h.calls == []


def test_the_one_page_call_skips_what_the_medium_says_is_busy(held):
    """-5, nothing stored: an update in flight (the word on the medium), a group marked dirty
    (an open mapping), the lock held by another thread.  The store then takes the careful path."""
    dev, h = held
    if dev._par._native is None:
        pytest.skip("no native path")
    one = dev._par._native_page
    page = 3 * GROUP + 5
    dev.store(dev.want[page * P : page * P + P], page * P)  # a current view
    before = _lower_bytes(dev)
    data = os.urandom(P)
    slot, map0 = dev._par._slot, dev._par._map0
    dev.lower.store((7).to_bytes(8, "little"), slot)
    assert one(data, page * P) == -5
    dev.lower.store(bytes(8), slot)
    dev.lower.store(b"\x01", map0 + page // GROUP)
    assert one(data, page * P) == -5
    assert one(data, (page + GROUP) * P) == 0  # another group is not dirty
    dev.want[(page + GROUP) * P : (page + GROUP + 1) * P] = data
    dev.lower.store(b"\x00", map0 + page // GROUP)
    held_elsewhere, go = threading.Event(), threading.Event()

    def hold():
        with dev._lock:
            held_elsewhere.set()
            go.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held_elsewhere.wait(10)
    try:
        assert one(data, page * P) == -5  # never waits
    finally:
        go.set()
        t.join()
    after = bytearray(_lower_bytes(dev))
    q = lower_off(dev, (page + GROUP) * P)
    after[q : q + P] = before[q : q + P]  # the one store that was allowed ...
    g2 = (page + GROUP) // GROUP
    pp = (dev.geometry.parity_start + g2) * P
    after[pp : pp + P] = before[pp : pp + P]  # ... its parity ...
    c = dev.geometry.csum_start * P + 4 * (page + GROUP)
    after[c : c + 4] = before[c : c + 4]  # ... and its CRC
    assert bytes(after) == before
    assert dev.store(data, page * P) == P  # the careful path, or the native one: either way stored
    dev.want[page * P : page * P + P] = data
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    rep = dev.repair(verify=True)
    assert rep.repaired == [] and rep.corrupt == [] and rep.lost == []


def test_the_one_page_call_takes_a_new_view_after_a_repair(held):
    """Known poison changes the lower device's state: the one-page call leaves the store to the
    careful path (which repairs), then takes a fresh view and stores natively again."""
    dev, h = held
    if dev._par._native is None:
        pytest.skip("no native path")
    seen = _count(dev)
    page = 4 * GROUP + 1
    dev.lower.inject_poison(lower_off(dev, (page + 2) * P + 64), 64)
    dev.lower.scrub()  # known now: repaired by the holder (us) as the news comes
    assert dev.lower.known_errors() == []
    data = os.urandom(P)
    assert dev.store(data, page * P) == P
    dev.want[page * P : page * P + P] = data
    assert seen == {0: 1}
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    assert h.calls == []


@pytest.mark.parametrize("where", ["kept page", "written page"])
def test_latent_poison_in_a_partial_reconstruct_write_is_left_to_the_careful_path(held, where):
    """12 of 16 pages: parity from the 4 kept pages; the 12 written ones are probed and then
    streamed.  Poison in either kind declines the call with nothing stored; the careful path
    repairs and stores, and the group protects every page afterwards."""
    dev, h = held
    if dev._par._native is None:
        pytest.skip("no native path")
    seen = _count(dev)
    g = 7
    first = g * GROUP
    victim = first + (14 if where == "kept page" else 6)
    dev.lower.inject_poison(lower_off(dev, victim * P + 192), 64)
    data = os.urandom(12 * P)
    assert dev.store(data, first * P) == 12 * P
    dev.want[first * P : (first + 12) * P] = data
    assert seen == {-1: 1}
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    assert dev.lower.poisoned_ranges() == [] and dev.lower.known_errors() == []
    span = first * P, GROUP * P
    for v in (first + 2, first + 15):
        dev.lower.inject_poison(lower_off(dev, v * P), P)
        assert read_all(dev, *span) == (GROUP * P, bytes(dev.want[span[0] : span[0] + span[1]]))
    assert h.calls == []
    rep = dev.repair(verify=True)
    assert rep.lost == [] and rep.corrupt == []


def test_a_whole_group_write_over_a_flipped_page_stores_parity_of_the_new_data(held):
    """A store covering a whole group reads none of it (parity from the new pages alone, each
    streamed in one pass with its CRC): a flipped byte in the old data is simply replaced, and
    a multi-group store is one native call per group."""
    dev, h = held
    if dev._par._native is None:
        pytest.skip("no native path")
    seen = _count(dev)
    g = 3
    flip = g * GROUP + 9
    dev.lower.store(bytes([dev.want[flip * P + 5] ^ 0x01]), lower_off(dev, flip * P + 5))
    data = os.urandom(3 * GROUP * P + 5 * P)  # groups 3, 4, 5 whole and 5 pages of group 6
    assert dev.store(data, g * GROUP * P) == len(data)
    dev.want[g * GROUP * P : g * GROUP * P + len(data)] = data
    assert seen == {0: 4}
    rep = dev.repair(verify=True)
    assert rep.repaired == [] and rep.corrupt == [] and rep.lost == []
    for v in (g * GROUP, (g + 1) * GROUP + 15, (g + 2) * GROUP + 3, (g + 3) * GROUP + 10):  # one per group
        dev.lower.inject_poison(lower_off(dev, v * P + 64), 128)
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    assert h.calls == []


@pytest.mark.parametrize(
    "where, code",
    [("old page", -1), ("parity page", -1), ("checksum page", -1), ("intent page", -5),
     ("flipped old page", -2)],  # fmt: skip
)
def test_the_one_page_call_stores_nothing_when_it_declines(held, where, code):
    """Poison under anything the one-page call would load or store, or an old page that fails
    its CRC: the call says why and the medium is as it was (the careful path decides)."""
    dev, h = held
    if dev._par._native is None:
        pytest.skip("no native path")
    one = dev._par._native_page
    page = 5 * GROUP + 7
    dev.store(bytes(dev.want[page * P : page * P + P]), page * P)  # a current view
    geo = dev.geometry
    at = {
        "old page": lower_off(dev, page * P + 1024),
        "parity page": (geo.parity_start + page // GROUP) * P + 2048,
        "checksum page": geo.csum_start * P + 4 * page,
        "intent page": geo.intent_start * P,
        "flipped old page": lower_off(dev, page * P + 77),
    }[where]
    if where == "flipped old page":
        dev.lower.store(bytes([dev.want[page * P + 77] ^ 0x40]), at)
    before = _lower_bytes(dev)
    if where != "flipped old page":
        dev.lower.inject_poison(at, 64)
    assert one(os.urandom(P), page * P) == code
    bad = at // P * P
    after = bytearray(dev.lower.size)
    assert dev.lower.mc_read(memoryview(after)[:bad], 0) == bad
    assert dev.lower.mc_read(memoryview(after)[bad + P :], bad + P) == len(after) - bad - P
    assert after[:bad] == before[:bad] and after[bad + P :] == before[bad + P :]
    data = os.urandom(P)
    assert dev.store(data, page * P) == P  # and the careful path repairs and stores
    dev.want[page * P : page * P + P] = data
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    rep = dev.repair(verify=True)
    assert rep.lost == []
    assert h.calls == []


def test_the_fast_path_store_is_the_native_store_and_hands_the_rest_back(held):
    """store_fn() -- what a filesystem's fast path keeps -- is the native page store itself, with
    no Python frame before it; what it does not store (not one page, a page it declines, bad
    arguments) goes through the device's own store path, with the same results and errors."""
    dev, h = held
    if dev._par._page_store is None:
        pytest.skip("no native path")
    store = dev.store_fn()
    assert store.__self__ is dev._par._page_store  # the native object's own method
    page = 3 * GROUP + 1
    data = os.urandom(P)
    assert store(data, page * P) == P  # one page: stored natively
    dev.want[page * P : page * P + P] = data
    odd = os.urandom(3 * P + 100)
    assert store(odd, 7 * P + 5) == len(odd)  # not one page: the device's store
    dev.want[7 * P + 5 : 7 * P + 5 + len(odd)] = odd
    flip = 5 * GROUP + 3  # a flipped old page: declined (CRC), rebuilt, then stored
    dev.lower.store(bytes([dev.want[flip * P + 9] ^ 0x40]), lower_off(dev, flip * P + 9))
    data = os.urandom(P)
    assert store(memoryview(data), flip * P) == P
    dev.want[flip * P : flip * P + P] = data
    with pytest.raises(daxkit.DaxError):
        store(data, dev.size)  # past the end: the device's own range error
    with pytest.raises((TypeError, ValueError)):
        store(data, "0")
    assert read_all(dev, 0, dev.size) == (dev.size, bytes(dev.want))
    # the flip the store found and rebuilt is reported once, by the next repair, and only it
    assert dev.repair(verify=True).corrupt == [(flip * P, P)]
    rep = dev.repair(verify=True)
    assert rep.corrupt == [] and rep.lost == []
    assert h.calls == []
