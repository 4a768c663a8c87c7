"""pread(flags=RWF_RECOVERY_DATA) (SPEC 4) on daxfs files."""

import errno

import pytest

import daxkit
from daxkit import PAGE_SIZE as P

from .conftest import two_extent_file, write_file


def test_recovery_read_of_a_file_with_known_and_latent_poison(fs, fsdev):
    e1, e2 = two_extent_file(fs)
    fsdev.inject_error(e1["sector"] + 2, 1)  # known: 256 bytes at file offset 1024
    fsdev.inject_poison(e2["sector"] * 512 + 128, 1)  # latent: the line at file offset P + 128
    with fs.open("/two") as f:
        with pytest.raises(daxkit.MediaError):
            f.pread(2 * P, 0)  # the ordinary read: EIO
        r = f.pread(2 * P, 0, flags=daxkit.RWF_RECOVERY_DATA)
        assert r.bad == [(1024, 256), (P + 128, 64)]
        want = bytearray(b"A" * P + b"C" * P)
        want[1024:1280] = bytes(256)
        want[P + 128 : P + 192] = bytes(64)
        assert r.data == bytes(want)
        assert f.bad_ranges() == [(1024, 256), (P + 128, 64)]  # the latent line is known now


def test_recovery_read_holes_and_end_of_file(fs):
    with fs.open("/sparse", "w+") as f:
        f.pwrite(b"tail", 3 * P)
        r = f.pread(10 * P, 0, flags=daxkit.RWF_RECOVERY_DATA)
        assert r.data == bytes(3 * P) + b"tail" and r.bad == []


def test_unknown_flags_are_einval(fs):
    write_file(fs, "/f", b"x")
    with fs.open("/f") as f:
        with pytest.raises(ValueError) as ei:
            f.pread(1, 0, flags=0x40)
        assert ei.value.errno == errno.EINVAL
