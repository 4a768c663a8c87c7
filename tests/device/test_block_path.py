"""The block path (SPEC 2.4): pread / readinto / pwrite with the pmem driver's rules."""

import errno

import pytest

import daxkit
from daxkit import PAGE_SIZE as P

from ..conftest import Holder


def test_roundtrip_and_readinto(dev):
    data = bytes(range(256)) * 40
    assert dev.pwrite(data, 12345) == len(data)
    assert dev.pread(len(data), 12345) == data
    buf = bytearray(len(data))
    assert dev.readinto(buf, 12345) == len(data) and buf == data
    mv = memoryview(bytearray(100))
    assert dev.readinto(mv, 12345) == 100 and mv.tobytes() == data[:100]


def test_known_bad_sector_read_is_eio_nothing_returned(dev):
    dev.pwrite(b"\x55" * 4096, 0)
    dev.badblocks.add("3 1")
    buf = bytearray(4096)
    with pytest.raises(daxkit.MediaError) as ei:
        dev.readinto(buf, 0)
    assert ei.value.errno == errno.EIO and isinstance(ei.value, OSError)
    assert buf == bytes(4096)  # the check comes before any copy
    assert dev.pread(512, 1024) == b"\x55" * 512  # a clean neighbour still reads


def test_latent_poison_is_consumed_then_known(dev):
    h = Holder()
    dev.holder = h
    dev.pwrite(b"\x66" * 2 * P, 4 * P)
    dev.inject_poison(5 * P + 200, 1)
    assert dev.badblocks.text() == ""
    with pytest.raises(daxkit.MediaError) as ei:
        dev.pread(2 * P, 4 * P)
    assert ei.value.errno == errno.EIO
    # the line (5*P+192..+64) is now known, with its covering sector, acknowledged
    assert dev.bad_ranges() == [(5 * P + 192, 64)]
    assert [tuple(e) for e in dev.badblocks] == [((5 * P + 192) // 512, 1, True)]
    assert h.calls == [(5 * P, P, daxkit.MF_ACTION_REQUIRED)]
    with pytest.raises(daxkit.MediaError):
        dev.pread(1, 5 * P + 200)
    assert dev.pread(P, 4 * P) == b"\x66" * P  # the page before is clean


def test_aligned_write_clears_known_poison(dev):
    dev.inject_error(42, 8)
    assert dev.pwrite(bytes(8 * 512), 42 * 512) == 8 * 512
    assert dev.badblocks.text() == "" and dev.injected_errors() == [] and dev.poisoned_ranges() == []
    assert dev.pread(8 * 512, 42 * 512) == bytes(8 * 512)


def test_clear_err_unit_aligned_write_smaller_than_a_sector(img):
    with daxkit.create(img, "1M", clear_err_unit=256) as d:
        d.inject_error(10, 1)  # poison over the first 256 bytes of the block
        # 256 bytes at the block start: aligned, so the medium is cleared; a sector is not
        # fully covered, so the table keeps it (pmem_clear_bb clears whole sectors)
        assert d.pwrite(b"\x01" * 256, 10 * 512) == 256
        assert d.poisoned_ranges() == [] and d.badblocks.text() == "10 1\n"
        assert d.pwrite(b"\x02" * 512, 10 * 512) == 512
        assert d.badblocks.text() == ""


@pytest.mark.parametrize("off,n", [(42 * 512 + 10, 100), (42 * 512 - 100, 200), (42 * 512 + 256, 100)])
def test_unaligned_write_over_known_poison_is_eio_and_writes_nothing(img, off, n):
    with daxkit.create(img, "1M", clear_err_unit=256) as d:
        d.pwrite(b"\x77" * 2048, 41 * 512)
        d.inject_error(42, 1, saturate=True)
        before = (d.badblocks.text(), d.poisoned_ranges())
        with pytest.raises(daxkit.MediaError) as ei:
            d.pwrite(b"\x99" * n, off)
        assert ei.value.errno == errno.EIO
        assert (d.badblocks.text(), d.poisoned_ranges()) == before
        d.clear_errors()
        assert d.pread(512, 41 * 512) == b"\x77" * 512  # the sector before: untouched
        assert d.pread(512, 43 * 512) == b"\x77" * 512  # the sector after: untouched


def test_write_over_latent_poison_keeps_the_poison(dev):
    dev.inject_poison(P + 64, 64)
    assert dev.pwrite(b"new!", P + 64) == 4  # stores never clear poison
    assert dev.poisoned_ranges() == [(P + 64, 64)]
    with pytest.raises(daxkit.MediaError):
        dev.pread(64, P + 64)
    dev.scrub()
    dev.pwrite(bytes(P), P)  # an aligned block write clears it
    assert dev.poisoned_ranges() == [] and dev.pread(4, P + 64) == bytes(4)


@pytest.mark.parametrize(
    "call",
    [
        lambda d: d.pread(10, -1),
        lambda d: d.pread(-5, 0),
        lambda d: d.pread(10, d.size - 5),
        lambda d: d.pwrite(b"abc", d.size - 1),
        lambda d: d.pwrite(b"abc", -3),
        lambda d: d.readinto(bytearray(8), d.size),
    ],
)
def test_out_of_range_is_valueerror_with_numbers(dev, call):
    with pytest.raises(ValueError) as ei:
        call(dev)
    assert ei.value.errno == errno.EINVAL
    assert any(ch.isdigit() for ch in str(ei.value))


def test_zero_length_io(dev):
    assert dev.pread(0, 0) == b"" and dev.pwrite(b"", dev.size) == 0
