"""The native store path (daxkit._parity, on ISA-L) against the Python steps it replaces: the same
stores leave byte-identical lower devices, and every case it declines (poison, corruption, an
open mapping) is left to the careful path with nothing stored."""

import os
import random

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
    native = dev._par._native

    def counted(*args):
        r = native(*args)
        seen[r] = seen.get(r, 0) + 1
        return r

    dev._par._native = counted
    return seen


def _pair(tmp_path):
    devs = []
    for name in ("native", "python"):
        lower = daxkit.create(str(tmp_path / f"{name}.img"), 4 * MiB)
        format_parity(lower, group=GROUP)
        devs.append(ParityDevice(lower))
    devs[1]._par._native = None
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
    checked against its CRC first; a flipped one declines the native call, the careful path
    stores by read-modify-write (parity stays that of the page's true bytes), the scrub rebuilds
    the flipped page, and the group protects every page again."""
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
    rep = dev.repair(verify=True)
    assert [s // P for s, _ in rep.corrupt] == [kept] and rep.lost == []
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
