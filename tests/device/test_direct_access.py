"""direct_access (SPEC 2.2), recovery_write and zero_page_range (SPEC 2.3)."""

import errno

import pytest

import daxkit
from daxkit import PAGE_SIZE, RECOVERY_WRITE
from daxkit.errors import EHWPOISON

P = PAGE_SIZE
SPP = P // 512  # sectors per page


def test_clean_range_gives_all_pages_zero_copy(dev):
    avail, view = dev.direct_access(3, 5)
    assert avail == 5 and len(view) == 5 * P
    view[0:5] = b"hello"  # writable and zero-copy: the device sees it
    assert dev.pread(5, 3 * P) == b"hello"


def test_trimmed_at_device_end(dev):
    npages = dev.size // P
    avail, view = dev.direct_access(npages - 2, 10)
    assert avail == 2 and len(view) == 2 * P


@pytest.mark.parametrize("pgoff,nr", [(10**9, 1), (2048, 1), (5, 0)])
def test_nothing_available_is_erange(dev, pgoff, nr):
    with pytest.raises(daxkit.OutOfRange) as ei:
        dev.direct_access(pgoff, nr)
    assert ei.value.errno == errno.ERANGE


def test_negative_nr_pages_is_einval(dev):
    with pytest.raises(ValueError) as ei:
        dev.direct_access(0, -1)
    assert ei.value.errno == errno.EINVAL


def test_access_mode_refuses_known_bad_sector(dev):
    dev.badblocks.add(f"{4 * SPP + 3} 1")  # a sector in the middle of page 4
    with pytest.raises(daxkit.HWPoisonError) as ei:
        dev.direct_access(2, 4)
    assert ei.value.errno == EHWPOISON and isinstance(ei.value, OSError)
    assert dev.direct_access(0, 4)[0] == 4  # pages 0..3 are clean
    assert dev.direct_access(5, 4)[0] == 4


@pytest.mark.parametrize(
    "bad_sector,expected",
    [
        (2 * SPP + 3, 3),  # middle of relative page 2 -> k+1 pages
        (2 * SPP, 2),  # very start of relative page 2 -> k pages
        (1, 1),  # bad first page -> 1
        (0, 1),  # first sector -> still 1
        (7 * SPP + 7, 8),  # last sector of the last page asked
    ],
)
def test_recovery_write_avail(dev, bad_sector, expected):
    base = 10
    dev.badblocks.add(f"{base * SPP + bad_sector} 1")
    avail, view = dev.direct_access(base, 8, RECOVERY_WRITE)
    assert avail == expected and len(view) == expected * P


def test_recovery_write_avail_when_entry_starts_before_range(dev):
    dev.badblocks.add(f"{9 * SPP} {2 * SPP}")  # pages 9 and 10
    assert dev.direct_access(10, 4, RECOVERY_WRITE)[0] == 1


def test_recovery_write_mode_without_poison_is_normal(dev):
    assert dev.direct_access(0, 7, RECOVERY_WRITE)[0] == 7


def test_killed_device_is_enxio(dev, holder):
    dev.holder = holder
    dev.kill()
    assert holder.calls == [(0, dev.size, daxkit.PRE_REMOVE)]
    for call in (lambda: dev.direct_access(0, 1), lambda: dev.pread(1, 0), lambda: dev.pwrite(b"x", 0)):
        with pytest.raises(daxkit.DeviceGone) as ei:
            call()
        assert ei.value.errno == errno.ENXIO


# -- recovery_write -----------------------------------------------------------------------------
def test_recovery_write_plain_copy_when_clean(dev):
    assert dev.recovery_write(3, 100, b"abc") == 3
    assert dev.pread(3, 3 * P + 100) == b"abc"


def test_recovery_write_aligned_clears_everything(dev):
    dev.inject_error(5 * SPP + 2, 2)
    assert dev.badblocks.text() == f"{5 * SPP + 2} 2\n"
    data = bytes([7]) * P
    assert dev.recovery_write(5, 0, data) == P
    assert dev.badblocks.text() == "" and dev.bad_ranges() == []
    assert dev.injected_errors() == [] and dev.poisoned_ranges() == []
    assert dev.pread(P, 5 * P) == data
    assert dev.direct_access(5, 1)[0] == 1


@pytest.mark.parametrize("off,length", [(400, 200), (512, P), (1, P - 1), (0, P + 512)])
def test_recovery_write_unaligned_over_poison_returns_zero_and_changes_nothing(dev, off, length):
    dev.pwrite(b"\x11" * 2 * P, 5 * P)
    dev.inject_error(5 * SPP + 1, 1)
    before = (dev.badblocks.text(), dev.poisoned_ranges(), dev.injected_errors())
    assert dev.recovery_write(5, off, b"\x22" * length) == 0
    assert (dev.badblocks.text(), dev.poisoned_ranges(), dev.injected_errors()) == before
    dev.clear_errors()
    assert dev.pread(512, 5 * P + 1024) == b"\x11" * 512  # neighbours untouched


def test_recovery_write_order_medium_then_data_then_lists(dev):
    """Kernel order (pmem_recovery_write): clear the medium, write, and only then forget the
    sectors, so a reader never sees the range clean while it holds old bytes."""
    dev.inject_error(6 * SPP, 1)
    seen = []
    real_store = dev._store

    def spy(data, offset):
        seen.append((dev.badblocks.text(), dev.poisoned_ranges()))
        real_store(data, offset)
        seen.append(("after-store", dev.pread.__name__))

    dev._store = spy
    assert dev.recovery_write(6, 0, b"\x33" * P) == P
    assert seen[0] == (f"{6 * SPP} 1\n", [])  # while writing: medium clean, table still lists it
    assert dev.badblocks.text() == ""


def test_recovery_write_bounds(dev):
    with pytest.raises(ValueError):
        dev.recovery_write(dev.size // P, 0, b"x")
    with pytest.raises(ValueError):
        dev.recovery_write(-1, 0, b"x")


# -- zero_page_range ----------------------------------------------------------------------------
def test_zero_page_range_zeroes_and_clears(dev):
    dev.pwrite(b"\xee" * P, 8 * P)
    dev.inject_error(8 * SPP + 4, 1)
    dev.inject_poison(8 * P + 100, 1)  # latent poison in the same page goes too
    dev.zero_page_range(8, 1)
    assert dev.pread(P, 8 * P) == bytes(P)
    assert dev.badblocks.text() == "" and dev.poisoned_ranges() == [] and dev.injected_errors() == []


@pytest.mark.parametrize("nr", [0, 2, 5])
def test_zero_page_range_more_than_one_page_is_eio(dev, nr):
    dev.pwrite(b"\xee" * P, 0)
    with pytest.raises(daxkit.MediaError) as ei:
        dev.zero_page_range(0, nr)
    assert ei.value.errno == errno.EIO
    assert dev.pread(P, 0) == b"\xee" * P
