"""SPEC 4.1 on files: f.pwrite(data, off, flags=RWF_RECOVERY_DATA) over poison that the write
covers only in part succeeds with the full count; the page keeps its recovered clean lines, and
bad lines the write does not cover stay reported bad (the write never invents data)."""

import errno

import pytest

import daxkit

P = 4096
PAYLOAD = bytes(range(256)) * 32  # two pages


def _poisoned_file(fs, fsdev):
    with fs.open("/f", "w") as f:
        f.write(PAYLOAD)
    (ext,) = fs.bmap("/f")
    fsdev.inject_error(ext["sector"] + 8 + 2, 1)  # the third sector of page 1: file bytes 5120..5376
    return ext


def test_plain_unaligned_write_over_poison_is_efault(fs, fsdev):
    _poisoned_file(fs, fsdev)
    with fs.open("/f", "r+") as f:
        with pytest.raises(OSError) as ei:
            f.pwrite(b"z" * 100, P + 1000)
        assert ei.value.errno == errno.EFAULT


def test_recovery_write_covering_the_bad_lines_clears_them(fs, fsdev):
    _poisoned_file(fs, fsdev)
    with fs.open("/f", "r+") as f:
        assert f.pwrite(b"z" * 300, P + 1000, flags=daxkit.RWF_RECOVERY_DATA) == 300
        assert f.bad_ranges() == []
        want = bytearray(PAYLOAD)
        want[P + 1000 : P + 1300] = b"z" * 300
        assert f.read() == want  # every clean line of the page was kept
    assert fsdev.poisoned_ranges() == []


def test_recovery_write_leaves_uncovered_bad_lines_bad(fs, fsdev):
    _poisoned_file(fs, fsdev)
    with fs.open("/f", "r+") as f:
        assert f.pwrite(b"z" * 10, P + 8, flags=daxkit.RWF_RECOVERY_DATA) == 10
        assert f.bad_ranges() == [(P + 1024, 256)]  # still bad: the write did not cover them
        with pytest.raises(OSError) as ei:
            f.pread(P, P)
        assert ei.value.errno == errno.EIO
        r = f.pread(2 * P, 0, flags=daxkit.RWF_RECOVERY_DATA)
        want = bytearray(PAYLOAD)
        want[P + 8 : P + 18] = b"z" * 10
        want[P + 1024 : P + 1280] = bytes(256)
        assert r.data == want and r.bad == [(P + 1024, 256)]


def test_recovery_flag_on_clean_data_is_a_plain_write(fs, fsdev):
    with fs.open("/f", "w+") as f:
        f.write(PAYLOAD)
        assert f.pwrite(b"q" * 5, 7, flags=daxkit.RWF_RECOVERY_DATA) == 5
        assert f.pread(12, 0) == PAYLOAD[:7] + b"q" * 5
        with pytest.raises(ValueError):
            f.pwrite(b"x", 0, flags=0x4000)
