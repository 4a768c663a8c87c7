"""The recovery read (SPEC 4): every clean byte, zeroes where bad, the bad ranges exactly."""

import errno

import pytest

import daxkit
from daxkit import PAGE_SIZE as P

from ..conftest import Holder


def test_clean_range_is_all_data(dev):
    data = bytes(range(256)) * 64
    dev.pwrite(data, 3 * P)
    r = dev.read_recover(3 * P, len(data))
    assert r.data == data and r.bad == []


def test_sixteen_poisoned_lines_and_a_software_entry(dev):
    data = bytes((i * 7) & 0xFF for i in range(1 << 20))
    dev.pwrite(data, 0)
    lines = [i * 65536 + 640 for i in range(16)]
    for off in lines:
        dev.inject_poison(off, 1)
    dev.badblocks.add(f"{(900 << 10) // 512} 1")  # known, no poison behind it
    h = Holder()
    dev.holder = h
    r = dev.read_recover(0, 1 << 20)
    expect_bad = sorted([(off, 64) for off in lines] + [(900 << 10, 512)])
    assert r.bad == expect_bad
    want = bytearray(data)
    for off, n in expect_bad:
        want[off : off + n] = bytes(n)
    assert r.data == bytes(want)  # every clean byte, zeroes exactly where bad
    # the latent lines were touched: now they are known, and the holder heard of each page
    assert sorted(dev.bad_ranges()) == [(off, 64) for off in lines]
    assert sorted(c[0] for c in h.calls) == [off - off % P for off in lines]
    assert all(c[1:] == (P, daxkit.MF_ACTION_REQUIRED) for c in h.calls)
    # a second recovery read reports the same, without new notifications
    assert dev.read_recover(0, 1 << 20).bad == expect_bad and len(h.calls) == 16


def test_bad_ranges_are_clipped_to_the_request(dev):
    dev.inject_poison(P + 64, 128)
    r = dev.read_recover(P + 100, 200)
    assert r.bad == [(P + 100, 92)] and r.data[:92] == bytes(92)


def test_recovery_read_bounds(dev):
    with pytest.raises(ValueError) as ei:
        dev.read_recover(dev.size - 10, 20)
    assert ei.value.errno == errno.EINVAL
    assert dev.read_recover(0, 0).data == b""
