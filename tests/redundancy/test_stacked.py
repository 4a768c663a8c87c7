"""The stacked device offers the device interface: round trips, argument rules, stacking."""

import errno
import os

import pytest

import daxkit
from daxkit.device.interface import DaxOperations, Redundant
from daxkit.redundancy import ParityDevice, format_parity, is_parity, stack

from .conftest import GROUP, MiB, P, lower_off, read_all


def test_it_is_a_device_and_redundant(pdev):
    assert isinstance(pdev, DaxOperations) and isinstance(pdev, Redundant)
    r = pdev.redundancy()
    assert r["mode"] == "parity" and r["group"] == GROUP
    assert 0 < r["space_overhead"] < 0.1  # small groups on purpose here
    assert pdev.size == pdev.geometry.ndata * P
    assert pdev.path == pdev.lower.path and pdev.clear_err_unit == pdev.lower.clear_err_unit


def test_round_trips(pdev):
    want = pdev.want
    for off, n in [(0, P), (5 * P, 3 * P), (7, 1), (P - 3, 10), (GROUP * P - 100, 2 * GROUP * P + 300)]:
        data = os.urandom(n)
        assert pdev.store(data, off) == n
        want[off : off + n] = data
        assert read_all(pdev, off, n) == (n, data)
        avail, view = pdev.direct_access(off // P, 1)
        assert avail == 1 and bytes(view[off % P : off % P + 1]) == data[:1]
    assert read_all(pdev, 0, pdev.size) == (pdev.size, bytes(want))
    assert pdev.repair().as_dict() == {"repaired": [], "corrupt": [], "lost": [], "metadata": []}


def test_parity_and_checksums_match_the_data(pdev):
    pdev.store(os.urandom(3 * P + 17), 11 * P + 5)
    rep = pdev.repair(verify=True)
    assert not rep.corrupt and not rep.lost and not rep.metadata


def test_direct_access_is_the_lower_view(pdev):
    avail, view = pdev.direct_access(3, 4)
    lavail, lview = pdev.lower.direct_access(pdev.geometry.data_start + 3, 4)
    assert avail == lavail == 4 and bytes(view) == bytes(lview) == bytes(pdev.want[3 * P : 7 * P])
    assert pdev.direct_access(pdev.size // P - 2, 5)[0] == 2  # trimmed at the end
    with pytest.raises(daxkit.OutOfRange):
        pdev.direct_access(pdev.size // P, 1)
    with pytest.raises(ValueError):
        pdev.direct_access(-1, 1)
    with pytest.raises(ValueError):
        pdev.direct_access(0, -1)
    assert pdev.state_word[0] == pdev.state_generation == pdev.lower.state_generation


@pytest.mark.parametrize("off,n", [(-1, 1), (0, 8 * MiB), (8 * MiB - 4 * P, P)])
def test_out_of_range(pdev, off, n):
    with pytest.raises(ValueError):
        pdev.store(b"x" * n, off)
    with pytest.raises(ValueError):
        pdev.mc_read(bytearray(n), off)
    with pytest.raises(ValueError):
        pdev.read_recover_into(bytearray(n), off)


def test_queries_never_show_the_metadata(pdev):
    pdev.lower.badblocks.add("0 8")  # the header page: below logical 0
    assert pdev.known_errors(-P, 2 * P) == [] and pdev.first_bad(-P, P) is None


def test_parity_group(pdev):
    grp = pdev.parity_group(20 * P + 5)
    assert grp["data"] == [p * P for p in range(16, 32)]
    assert grp["parity"] == [(pdev.geometry.parity_start + 1) * P]
    with pytest.raises(ValueError):
        pdev.parity_group(pdev.size)


def test_stack_and_is_parity(img, tmp_path):
    plain = daxkit.create(str(tmp_path / "plain.img"), 8 * MiB)
    assert not is_parity(plain) and stack(plain) is plain
    with pytest.raises(daxkit.DaxError, match="no parity header"):
        ParityDevice(plain)
    plain.close()
    lower = daxkit.create(img, 8 * MiB)
    format_parity(lower)
    assert is_parity(lower)
    dev = stack(lower)
    assert isinstance(dev, ParityDevice) and dev.redundancy()["space_overhead"] <= 0.01
    dev.close()


def test_one_read_write_open_at_a_time(pdev, img):
    other = daxkit.open(img)
    with pytest.raises(daxkit.Busy):
        ParityDevice(other)
    ro = ParityDevice(other, readonly=True)  # a reader is welcome
    assert read_all(ro, 0, 2 * P) == (2 * P, bytes(pdev.want[: 2 * P]))
    with pytest.raises(OSError) as e:
        ro.store(b"x", 0)
    assert e.value.errno == errno.EROFS
    ro.close()


def test_format_refuses_a_held_device(pdev):
    with pytest.raises(daxkit.Busy):
        format_parity(pdev.lower)


def test_a_damaged_header_copy_is_rewritten(img):
    from daxkit.redundancy.layout import unpack_header

    lower = daxkit.create(img, 8 * MiB)
    format_parity(lower, group=GROUP)
    lower.store(b"junk", 8)  # copy 0's geometry, behind the layer's back
    ParityDevice(lower).close()
    lower = daxkit.open(img)
    assert unpack_header(lower.pread(P, 0))[1] == ""
    lower.inject_error(1 * P // 512, 1)  # copy 1 poisoned (no holder yet: nobody repairs it)
    dev = ParityDevice(lower)
    assert dev.lower.known_errors() == [] and unpack_header(lower.pread(P, P))[1] == ""
    dev.close()
    lower = daxkit.open(img)
    for pg in (0, 1):
        lower.store(b"junk", pg * P + 8)
    with pytest.raises(daxkit.DaxError, match="damaged"):
        ParityDevice(lower)
    assert is_parity(lower)  # a damaged header is not a plain device
    lower.close()


def test_format_keeps_the_data_and_zeroes_what_is_unreadable(img):
    lower = daxkit.create(img, 8 * MiB)
    data = os.urandom(lower.size)
    lower.pwrite(data, 0)
    lower.inject_error((8 * MiB - 3 * P) // 512, 1)
    format_parity(lower, group=GROUP)
    dev = ParityDevice(lower)
    got, buf = read_all(dev, 0, dev.size)
    start = lower_off(dev, 0)
    want = bytearray(data[start:])
    want[dev.size - 3 * P : dev.size - 2 * P] = bytes(P)
    assert got == dev.size and buf == bytes(want)
    assert not dev.repair().as_dict()["corrupt"]
    dev.close()
