"""Injection, scrub, consumption, clearing, holders (SPEC 2.5)."""

import errno

import pytest

import daxkit
from daxkit import PAGE_SIZE as P

from ..conftest import Holder


def test_inject_with_notify_scrubs(dev):
    dev.inject_error(42, 8)
    assert dev.injected_errors() == [{"block": 42, "count": 8}]
    assert dev.badblocks.text() == "42 8\n"
    assert dev.media_errors() == {"badblock_count": 8, "badblocks": [{"offset": 42, "length": 8}]}
    assert dev.scrub_count == 1


def test_inject_without_notify_leaves_badblocks_empty(dev):
    dev.inject_error(42, 8, notify=False)
    assert dev.injected_errors() == [{"block": 42, "count": 8}]
    assert dev.badblocks.text() == "" and dev.scrub_count == 0
    dev.scrub()
    assert dev.badblocks.text() == "42 8\n" and dev.scrub_count == 1


@pytest.mark.parametrize("unit,span", [(64, 64), (256, 256), (512, 512), (4096, 512)])
def test_injected_poison_span_follows_clear_err_unit(img, unit, span):
    with daxkit.create(img, "1M", clear_err_unit=unit) as d:
        d.inject_error(4, 2, notify=False)
        assert d.poisoned_ranges() == (
            [(4 * 512, 2 * 512)] if span == 512 else [(4 * 512, span), (5 * 512, span)]
        )


def test_saturate_poisons_whole_blocks(dev):
    dev.inject_error(4, 2, notify=False, saturate=True)
    assert dev.poisoned_ranges() == [(2048, 1024)]


def test_records_merge(dev):
    dev.inject_error(10, 2, notify=False)
    dev.inject_error(12, 3, notify=False)
    dev.inject_error(20, 1, notify=False)
    assert dev.injected_errors() == [{"block": 10, "count": 5}, {"block": 20, "count": 1}]


def test_uninject_leaves_badblocks(dev):
    dev.inject_error(42, 8)
    dev.uninject_error(42, 8)
    assert dev.injected_errors() == [] and dev.poisoned_ranges() == []
    assert dev.badblocks.text() == "42 8\n"


def test_uninject_part(dev):
    dev.inject_error(42, 8, notify=False)
    dev.uninject_error(44, 2)
    assert dev.injected_errors() == [{"block": 42, "count": 2}, {"block": 46, "count": 4}]


@pytest.mark.parametrize("block,count", [(-1, 1), (0, 0), (16384, 1), (16380, 5)])
def test_inject_bad_arguments(dev, block, count):
    with pytest.raises(ValueError) as ei:
        dev.inject_error(block, count)
    assert ei.value.errno == errno.EINVAL
    assert dev.injected_errors() == []


def test_inject_poison_is_latent_and_line_granular(dev):
    dev.inject_poison(1000, 10)
    assert dev.poisoned_ranges() == [(960, 64)]
    dev.inject_poison(1020, 100)
    assert dev.poisoned_ranges() == [(960, 1152 - 960)]
    assert dev.badblocks.text() == "" and dev.injected_errors() == []
    with pytest.raises(ValueError):
        dev.inject_poison(dev.size - 10, 64)
    with pytest.raises(ValueError):
        dev.inject_poison(0, 0)


def test_scrub_report_progress_and_holder(dev):
    h = Holder()
    dev.holder = h
    dev.inject_poison(8 * P, 64)
    dev.inject_poison(20 * P + 128, 128)
    calls = []
    rep = dev.scrub(progress=lambda done, total: calls.append((done, total)))
    assert rep.ranges == [(8 * P, 64), (20 * P + 128, 128)]
    assert rep.new_ranges == rep.ranges and rep.bytes_scanned == dev.size and rep.scrub_count == 1
    assert calls and calls[-1] == (dev.size, dev.size) and all(t == dev.size for _, t in calls)
    assert [tuple(e) for e in dev.badblocks] == [(64, 1, True), (20 * 8, 1, True)]
    assert dev.bad_ranges() == [(8 * P, 64), (20 * P + 128, 128)]
    assert h.calls == [(8 * P, 64, 0), (20 * P + 128, 128, 0)]
    # add-only, and the holder hears only about what is new
    dev.inject_poison(30 * P, 64)
    rep = dev.scrub()
    assert rep.new_ranges == [(30 * P, 64)] and rep.scrub_count == 2
    assert h.calls[2:] == [(30 * P, 64, 0)]


def test_scrub_is_add_only(dev):
    dev.badblocks.add("100 1")
    dev.scrub()
    assert dev.badblocks.text() == "100 1\n"


def test_clear_errors_clears_every_known_error_and_loses_its_data(dev):
    dev.pwrite(b"\xaa" * 4 * P, 0)
    dev.inject_error(2, 2)
    dev.badblocks.add("20 1")
    dev.inject_poison(3 * P, 64)  # latent: not known, so not cleared
    cleared = dev.clear_errors()
    assert cleared == [(1024, 1024), (20 * 512, 512)]
    assert dev.badblocks.text() == "" and dev.bad_ranges() == [] and dev.injected_errors() == []
    assert dev.poisoned_ranges() == [(3 * P, 64)]
    assert dev.pread(1024, 1024) == bytes(1024)  # data lost: zeroes
    assert dev.pread(512, 512) == b"\xaa" * 512


def test_badblocks_add_and_junk(dev):
    dev.badblocks.add("42 8")
    assert dev.badblocks.text() == "42 8\n"
    assert [tuple(e) for e in dev.badblocks] == [(42, 8, True)]
    assert dev.badblocks.check(45, 1).status == 1 and not dev.badblocks.check(50, 10)
    for junk in ["42", "42 0", "42 8 9", "a b", "42 -1", "1 99999999"]:
        with pytest.raises(ValueError) as ei:
            dev.badblocks.add(junk)
        assert ei.value.errno == errno.EINVAL
    assert dev.badblocks.text() == "42 8\n"


def test_badblocks_table_full_is_enospc(dev):
    for i in range(512):
        dev.badblocks.add(f"{i * 4} 1")
    with pytest.raises(daxkit.NoSpace) as ei:
        dev.badblocks.add("5000 1")
    assert ei.value.errno == errno.ENOSPC and len(dev.badblocks) == 512


def test_one_holder_only(dev):
    a, b = Holder(), Holder()
    dev.holder = a
    dev.holder = a
    with pytest.raises(daxkit.Busy) as ei:
        dev.holder = b
    assert ei.value.errno == errno.EBUSY
    dev.holder = None
    dev.holder = b
    assert dev.holder is b


def test_notify_failure_without_holder_is_eopnotsupp(dev):
    with pytest.raises(daxkit.NotSupported) as ei:
        dev.notify_failure(0, P, 0)
    assert ei.value.errno == errno.EOPNOTSUPP
    dev.inject_error(1, 1)  # recorded all the same
    assert dev.badblocks.text() == "1 1\n"
    h = Holder()
    dev.holder = h
    assert dev.notify_failure(0, P, daxkit.MF_ACTION_REQUIRED) == 0
    assert h.calls == [(0, P, daxkit.MF_ACTION_REQUIRED)]


def test_kernel_flag_values():
    assert (daxkit.ACCESS, daxkit.RECOVERY_WRITE) == (0, 1)
    assert daxkit.MF_ACTION_REQUIRED == 2 and daxkit.MF_MEM_PRE_REMOVE == daxkit.PRE_REMOVE == 128


def test_error_classes_carry_kernel_errnos():
    assert issubclass(daxkit.DaxError, OSError)
    assert daxkit.HWPoisonError("x").errno == 133
    assert daxkit.PoisonError("x", offset=0, length=64, done=0).errno == errno.EIO
    assert daxkit.DeviceGone("x").errno == errno.ENXIO
