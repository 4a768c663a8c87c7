"""More known errors than the badblocks table holds (SPEC 2.5: at most 512 entries, a set on a
full table fails): a scrub or an injection fills the table up to capacity with the covering
sectors in address order and reports the overflow -- never leaves it empty -- and the bad range
list (no ceiling) still knows everything.  clear_errors clears every known error, the ones only
the bad range list knows included, and with them the injection records (SPEC 1)."""

import errno
import json

import pytest

import daxkit
from daxkit.medium.badblocks import BB_MAX_LEN, MAX_BADBLOCKS

from ..conftest import daxkit_cli

FULL = BB_MAX_LEN * MAX_BADBLOCKS  # sectors in a table of 512 entries of 512


def _entries(dev):
    return [(e.sector, e.count) for e in dev.badblocks]


def test_injection_needing_513_entries_fills_the_table(img):
    """The review's repro: -n 262145 left the table empty; -n 262144 filled it."""
    with daxkit.create(img, "256M") as d:
        d.inject_error(0, FULL + 1)
        media = d.media_errors()
        assert media["badblock_count"] == FULL
        assert _entries(d) == [(s, BB_MAX_LEN) for s in range(0, FULL, BB_MAX_LEN)]
        assert len(d.bad_ranges()) == FULL + 1  # the list knows the one left out
        report = d.scrub()
        assert report.overflow and d.media_errors()["badblock_count"] == FULL
        # the one the table could not take is still known, and the block path refuses it
        assert d.first_bad(FULL * 512, FULL * 512 + 512) == FULL * 512
        with pytest.raises(OSError) as ei:
            d.pread(512, FULL * 512)
        assert ei.value.errno == errno.EIO


def test_injection_of_exactly_512_full_entries_is_no_overflow(img):
    with daxkit.create(img, "256M") as d:
        d.inject_error(0, FULL, notify=False)
        report = d.scrub()
        assert not report.overflow and len(d.badblocks) == MAX_BADBLOCKS


def test_scrub_overflow_keeps_the_first_sectors_in_address_order(img):
    with daxkit.create(img, "4M") as d:
        for b in range(0, 4096, 2):
            d.inject_error(b, notify=False)
        report = d.scrub()
        assert report.overflow and len(report.ranges) == 2048
        assert _entries(d) == [(s, 1) for s in range(0, 1024, 2)]
        assert d.scrub().overflow  # still more than fits: still said
        assert _entries(d) == [(s, 1) for s in range(0, 1024, 2)]


def test_clear_errors_after_an_overflow_leaves_nothing_known_nor_injected(img):
    """The review's API repro: records of the blocks only the bad range list knew were left."""
    with daxkit.create(img, "4M") as d:
        d.pwrite(b"\xaa" * (4096 * 512), 0)
        for b in range(0, 4096, 2):
            d.inject_error(b, notify=False)
        assert d.scrub().overflow
        d.inject_poison(3001 * 512 + 300, 1)  # latent: not known, so not cleared
        cleared = d.clear_errors()
        assert len(cleared) == 2048
        assert d.injected_errors() == []
        assert d.poisoned_ranges() == [(3001 * 512 + 256, 64)]
        assert d.badblocks.text() == "" and d.bad_ranges() == []
        assert d.media_errors()["badblock_count"] == 0
        # as without an overflow: every sector with a known error is lost whole, the rest kept
        for b in (0, 2, 1022, 1024, 2000, 4094):
            assert d.pread(512, b * 512) == bytes(512), b
            assert d.pread(512, (b + 1) * 512) == b"\xaa" * 512, b


def test_clear_errors_without_overflow_is_unchanged(img):
    with daxkit.create(img, "4M") as d:
        for b in range(0, 200, 2):
            d.inject_error(b, notify=False)
        assert not d.scrub().overflow
        d.clear_errors()
        assert d.injected_errors() == [] and d.poisoned_ranges() == [] and d.badblocks.text() == ""


def test_cli_injection_past_the_table(img):
    daxkit.create(img, "256M").close()
    r = daxkit_cli("inject-error", img, "-B", "0", "-n", str(FULL + 1))
    assert r.returncode == 0, r.stderr.decode()
    media = json.loads(daxkit_cli("list", img, "-M").stdout)
    assert media["badblock_count"] == FULL and len(media["badblocks"]) == MAX_BADBLOCKS
    r = daxkit_cli("start-scrub", img)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["overflow"] is True
    r = daxkit_cli("clear-errors", img)
    assert r.returncode == 0, r.stderr.decode()
    r = daxkit_cli("inject-error", img, "--status")
    assert r.returncode == 0 and r.stdout.strip() == b"", r.stdout
    assert json.loads(daxkit_cli("list", img, "-M").stdout)["badblock_count"] == 0
