"""SPEC 3 "Limits are errors, not traps": sizes past the device are EFBIG, times that are not
finite are EINVAL, and a full metadata area refuses growth but never deletes (issue 6)."""

import errno
import math
import os
import subprocess
import sys

import pytest

import daxkit

MiB = 1 << 20


@pytest.mark.parametrize("size", [3 * 10**21, 1 << 63, 32 * MiB + 1])
def test_truncate_past_the_device_is_efbig(fs, size):
    with fs.open("/f", "w+") as f:
        f.write(b"x" * 100)
        with pytest.raises(OSError) as e:
            f.truncate(size)
        assert e.value.errno == errno.EFBIG
    assert fs.stat("/f").st_size == 100
    assert daxkit.fsck(fs.dev)["clean"]


def test_truncate_up_to_the_device_size_is_allowed(fs):
    with fs.open("/f", "w+") as f:
        f.truncate(fs.dev.size)
        assert f.stat().st_size == fs.dev.size
        assert f.pread(10, fs.dev.size - 10) == bytes(10)


def test_write_and_fallocate_past_the_device_are_efbig(fs):
    with fs.open("/f", "w+") as f:
        with pytest.raises(OSError) as e:
            f.pwrite(b"x", 10**18)
        assert e.value.errno == errno.EFBIG
        with pytest.raises(OSError) as e:
            f.fallocate(0, 10**18, 4096)
        assert e.value.errno == errno.EFBIG
        assert f.stat().st_size == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_utime_refuses_times_that_are_not_finite(fs, bad):
    with fs.open("/f", "w"):
        pass
    before = fs.stat("/f")
    for times in (bad, (bad, 0), (0, bad), (10**30, 0)):
        with pytest.raises(OSError) as e:
            fs.utime("/f", times)
        assert e.value.errno == errno.EINVAL
    after = fs.stat("/f")
    assert (after.st_mtime_ns, after.st_atime_ns) == (before.st_mtime_ns, before.st_atime_ns)


def test_utime_nanoseconds_now_and_omit(fs):
    with fs.open("/f", "w"):
        pass
    fs.utime("/f", (123_456_789_123_456_789, 987_654_321_987_654_321))
    st = fs.stat("/f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (123_456_789_123_456_789, 987_654_321_987_654_321)
    fs.utime("/f", (daxkit.UTIME_OMIT, 5))
    st = fs.stat("/f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (123_456_789_123_456_789, 5)
    fs.utime("/f", (daxkit.UTIME_NOW, daxkit.UTIME_OMIT))
    st = fs.stat("/f")
    assert st.st_mtime_ns == 5 and st.st_atime_ns > 10**18
    fs.utime("/f", -5 + 0.25)  # a number: the mtime in seconds, before 1970 allowed
    assert fs.stat("/f").st_mtime_ns == -4_750_000_000
    fs.unmount()
    with daxkit.mount(fs.dev, readonly=True) as ro:  # and it survives a remount
        assert ro.stat("/f").st_mtime_ns == -4_750_000_000


def test_names_that_are_not_utf8_are_einval(fs):
    for op in (lambda: fs.mkdir("/\ud800"), lambda: fs.open("/\ud800x", "w")):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.EINVAL
    assert fs.listdir("/") == []


def test_long_names_are_enametoolong_on_lookups_too(fs):
    long = "/" + "n" * 256
    for op in (lambda: fs.stat(long), lambda: fs.open(long), lambda: fs.exists(long) or fs.stat(long),
               lambda: fs.mkdir(long), lambda: fs.unlink(long), lambda: fs.listdir(long + "/x")):  # fmt: skip
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.ENAMETOOLONG


def _fill_with_dirs(fs) -> int:
    n = 0
    with pytest.raises(daxkit.NoSpace):
        while True:
            fs.mkdir(f"/dir-with-a-longish-name-{n:06d}")
            n += 1
            assert n < 200_000
    return n


def test_a_full_metadata_area_can_always_be_emptied(tmp_path):
    """Issue 6 item 4: mkdir until ENOSPC, then every delete still works, twice over."""
    dev = daxkit.create(str(tmp_path / "small.img"), 2 * MiB)
    daxkit.mkfs(dev)
    try:
        for _round in range(2):
            with daxkit.mount(dev) as fs:
                n = _fill_with_dirs(fs)
                assert n > 100
                # still refused: nothing changed.  The names are longer and less compressible
                # than the one refused, so the compressed checkpoint cannot come out smaller by
                # luck (a short name, or other timestamps, can shave a few bytes off it)
                with pytest.raises(daxkit.NoSpace):
                    fs.mkdir("/" + os.urandom(100).hex())
                with pytest.raises(daxkit.NoSpace):  # a new file grows the metadata too
                    fs.open("/" + os.urandom(100).hex(), "w")
            # a fresh mount (replaying the log) sees the same and can delete everything
            with daxkit.mount(dev) as fs:
                names = fs.listdir("/")
                for name in names:
                    if fs.stat("/" + name).st_mode & 0o040000:
                        fs.rmdir("/" + name)
                    else:
                        fs.unlink("/" + name)
                assert fs.listdir("/") == []
            assert daxkit.fsck(dev)["clean"]
    finally:
        dev.close()


def test_a_full_metadata_area_keeps_rename_truncate_chmod(tmp_path):
    dev = daxkit.create(str(tmp_path / "small.img"), 2 * MiB)
    daxkit.mkfs(dev)
    try:
        with daxkit.mount(dev) as fs:
            with fs.open("/file", "w") as f:
                f.write(b"y" * 8192)
            _fill_with_dirs(fs)
            fs.rename("/file", "/fil")  # a shorter name
            fs.chmod("/fil", 0o600)
            with fs.open("/fil", "r+") as f:
                f.truncate(10)
            fs.rename("/fil", "/dir-with-a-longish-name-000000/fil")
            assert fs.stat("/dir-with-a-longish-name-000000/fil").st_size == 10
        assert daxkit.fsck(dev)["clean"]
    finally:
        dev.close()


def test_cli_rm_on_a_full_filesystem(tmp_path):
    image = str(tmp_path / "small.img")
    with daxkit.create(image, 2 * MiB) as dev:
        daxkit.mkfs(dev)
        with daxkit.mount(dev) as fs:
            n = _fill_with_dirs(fs)
    for i in range(0, n, max(1, n // 5)):
        name = f"/dir-with-a-longish-name-{i:06d}"
        cmd = [sys.executable, "-m", "daxkit.cli.main", "rm", image, name]
        r = subprocess.run(cmd, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
    with daxkit.open(image) as dev:
        assert daxkit.fsck(dev)["clean"]


def test_modes_are_mode_t(fs):
    fs.mkdir("/d", 0o40755)  # bits past 07777 are ignored, as the kernel does
    assert fs.stat("/d").st_mode & 0o7777 == 0o755
    for bad in (-1, 2**40, 1.5, "755"):
        with pytest.raises(OSError) as e:
            fs.chmod("/d", bad)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError):
            fs.mkdir("/e", bad)
    assert fs.stat("/d").st_mode & 0o7777 == 0o755 and fs.listdir("/") == ["d"]


def test_mmap_past_the_device_is_efbig_and_read_only_mounts_refuse_mmap(fs):
    with fs.open("/f", "w+") as f:
        f.write(b"x" * 4096)
        for off, n in ((fs.dev.size, 4096), (2**64, 4096), (0, 2**64)):
            with pytest.raises(OSError) as e:
                f.mmap(off, n)
            assert e.value.errno == errno.EFBIG
    assert fs.statfs()["f_bfree"] == fs.statfs()["f_blocks"] - 1
    with daxkit.mount(fs.dev, readonly=True) as ro, ro.open("/f") as f:
        with pytest.raises(OSError) as e:
            f.mmap()
        assert e.value.errno == errno.EROFS


def test_times_as_far_as_the_kernel_keeps_them(fs):
    with fs.open("/f", "w"):
        pass
    far = 253402300799 * 10**9  # 9999-12-31T23:59:59
    fs.utime("/f", (-(10**20), far))
    st = fs.stat("/f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (-(10**20), far)
