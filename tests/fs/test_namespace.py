"""Directories, names, open modes, stat (SPEC 3)."""

import errno
import stat

import pytest

import daxkit

from .conftest import write_file


def err(call):
    with pytest.raises(OSError) as ei:
        call()
    return ei.value.errno


def test_mkdir_listdir_rmdir(fs):
    fs.mkdir("/a")
    fs.mkdir("/a/b")
    write_file(fs, "/a/f", b"x")
    assert fs.listdir("/") == ["a"] and fs.listdir("/a") == ["b", "f"]
    assert stat.S_ISDIR(fs.stat("/a").st_mode) and fs.stat("/a").st_nlink == 3
    assert err(lambda: fs.rmdir("/a")) == errno.ENOTEMPTY
    assert err(lambda: fs.mkdir("/a")) == errno.EEXIST
    assert err(lambda: fs.mkdir("/nope/x")) == errno.ENOENT
    assert err(lambda: fs.mkdir("/a/f/x")) == errno.ENOTDIR
    assert err(lambda: fs.rmdir("/a/f")) == errno.ENOTDIR
    assert err(lambda: fs.unlink("/a/b")) == errno.EISDIR
    fs.rmdir("/a/b")
    fs.unlink("/a/f")
    fs.rmdir("/a")
    assert fs.listdir("/") == [] and not fs.exists("/a")


def test_names(fs):
    write_file(fs, "/" + "n" * 255, b"ok")
    assert fs.exists("/" + "n" * 255)
    assert err(lambda: fs.mkdir("/" + "n" * 256)) == errno.ENAMETOOLONG
    assert err(lambda: fs.open("/" + "é" * 128, "w")) == errno.ENAMETOOLONG  # 256 bytes in UTF-8
    write_file(fs, "/ünïcødé", b"1")
    assert "ünïcødé" in fs.listdir("/")


def test_open_modes(fs):
    assert err(lambda: fs.open("/missing", "r")) == errno.ENOENT
    write_file(fs, "/f", b"hello world")
    assert err(lambda: fs.open("/f", "x")) == errno.EEXIST
    with fs.open("/f", "a") as f:
        f.write(b"!")
    assert fs.open("/f").read() == b"hello world!"
    with fs.open("/f", "w") as f:
        assert f.stat().st_size == 0
        f.write(b"new")
    assert fs.open("/f").read() == b"new"
    with fs.open("/f", "r") as f:
        assert err(lambda: f.write(b"x")) == errno.EBADF
    with fs.open("/f", "w") as f:
        assert err(lambda: f.read()) == errno.EBADF
    fs.mkdir("/d")
    assert err(lambda: fs.open("/d", "r")) == errno.EISDIR
    with pytest.raises(ValueError):
        fs.open("/f", "rw+z")


def test_rename(fs):
    fs.mkdir("/a")
    fs.mkdir("/b")
    write_file(fs, "/a/f", b"one")
    write_file(fs, "/b/g", b"two")
    fs.rename("/a/f", "/b/g")  # replaces
    assert fs.listdir("/a") == [] and fs.open("/b/g").read() == b"one"
    fs.rename("/b", "/a/b")  # a directory moves
    assert fs.listdir("/a") == ["b"] and fs.stat("/a").st_nlink == 3 and fs.stat("/").st_nlink == 3
    with pytest.raises(ValueError):
        fs.rename("/a", "/a/b/c")  # not under itself
    assert err(lambda: fs.rename("/nope", "/x")) == errno.ENOENT
    write_file(fs, "/file", b"")
    assert err(lambda: fs.rename("/file", "/a")) == errno.EISDIR
    assert err(lambda: fs.rename("/a", "/file")) == errno.ENOTDIR
    write_file(fs, "/a/b/deep", b"")
    assert err(lambda: fs.rename("/a/b/deep", "/a")) == errno.ENOTEMPTY  # onto an ancestor, as Linux
    assert daxkit.fsck(fs.dev)["clean"]


def test_seek_tell_read_write(fs):
    with fs.open("/f", "w+") as f:
        f.write(b"0123456789")
        assert f.tell() == 10
        f.seek(2)
        assert f.read(3) == b"234"
        f.seek(-2, 2)
        assert f.read() == b"89"
        with pytest.raises(ValueError):
            f.seek(-100, 1)


def test_everything_survives_remount(fsdev):
    with daxkit.mount(fsdev) as fs:
        fs.mkdir("/d")
        write_file(fs, "/d/f", b"persist" * 1000)
        fs.rename("/d/f", "/d/g")
    with daxkit.mount(fsdev) as fs:
        assert fs.listdir("/d") == ["g"] and fs.open("/d/g").read() == b"persist" * 1000
    assert daxkit.fsck(fsdev)["clean"]


def test_checkpoint_when_the_log_fills(fsdev):
    with daxkit.mount(fsdev) as fs:
        epoch = fs.sb.epoch
        for i in range(400):
            write_file(fs, f"/file-with-a-long-name-{i:04d}", bytes([i % 256]) * 10)
        fs.mkdir("/spin")
        for i in range(2000):  # enough records to fill the log
            fs.mkdir(f"/spin/{i}")
            fs.rmdir(f"/spin/{i}")
        assert fs.sb.epoch > epoch  # the log filled and a checkpoint was written
        for i in range(0, 400, 2):
            fs.unlink(f"/file-with-a-long-name-{i:04d}")
    with daxkit.mount(fsdev) as fs:
        names = fs.listdir("/")
        assert len(names) == 201 and fs.open("/file-with-a-long-name-0399").read() == bytes([399 % 256]) * 10
    assert daxkit.fsck(fsdev)["clean"]


def test_mkfs_rules(fsdev, tmp_path):
    with pytest.raises(OSError) as ei:
        daxkit.mkfs(fsdev)
    assert ei.value.errno == errno.EEXIST
    fs = daxkit.mount(fsdev)
    with pytest.raises(daxkit.Busy):
        daxkit.mkfs(fsdev, force=True)  # mounted
    fs.unmount()
    daxkit.mkfs(fsdev, force=True)
    assert daxkit.mount(fsdev, readonly=True).listdir("/") == []
    small = daxkit.create(str(tmp_path / "small.img"), 64 * 4096)
    with pytest.raises(ValueError):
        daxkit.mkfs(small)


def test_mount_of_unformatted_device(tmp_path):
    dev = daxkit.create(str(tmp_path / "raw.img"), "4M")
    with pytest.raises(daxkit.CorruptFilesystem) as ei:
        daxkit.mount(dev)
    assert "no valid daxfs superblock" in str(ei.value)


def test_allocation_wraps_around_and_never_hands_out_a_block_twice(fs):
    g = fs.geometry
    total = g.nblocks - g.data_start
    got = fs._alloc(10, g.nblocks - 4)  # from near the end, wrapping to the start
    assert got == [(g.nblocks - 4, 4), (g.data_start, 6)]
    rest = fs._alloc(total - 10, g.data_start + 100)
    blocks = [b for s, c in got + rest for b in range(s, s + c)]
    assert len(blocks) == len(set(blocks)) == total
    with pytest.raises(daxkit.NoSpace):
        fs._alloc(1, 0)
    fs._unalloc(got + rest)
    assert fs.statfs()["f_bfree"] == total


def test_bytes_past_eof_never_come_back_when_the_file_grows(fs):
    """Found by the filesystem model: a store past EOF through a mapping (or a write killed
    before its size was saved) reappeared as data when the file was extended."""
    for grow in ("truncate", "write", "fallocate"):
        with fs.open(f"/{grow}", "w+") as f:
            f.pwrite(b"x" * 536, 0)
            m = f.mmap()
            m.buf[536:600] = b"\xa2" * 64
            m.persist()
            m.close()
            if grow == "truncate":
                f.truncate(8192)
            elif grow == "write":
                f.pwrite(b"y", 8000)
            else:
                f.fallocate(0, 0, 8192)
            assert f.pread(64, 536) == bytes(64), grow


@pytest.mark.parametrize("redundancy", ["none", "parity"])
def test_a_write_over_a_punched_hole_keeps_every_byte(tmp_path, redundancy):
    """Found by review: the new blocks for the holes merged with the old extents around them,
    and the in-place part of the write skipped the old blocks of a merged run (acknowledged
    bytes lost, zeroes read back, fsck clean)."""
    punch = daxkit.FALLOC_FL_PUNCH_HOLE | daxkit.FALLOC_FL_KEEP_SIZE
    dev = daxkit.create(str(tmp_path / "p.img"), "8M")
    daxkit.mkfs(dev, redundancy=redundancy)
    with daxkit.mount(dev) as fs, fs.open("/f", "w+") as f:
        want = bytearray(181278)
        for data, off in ((b"T" * 4096, 177182), (b"A" * 40000, 24323)):
            f.pwrite(data, off)
            want[off : off + len(data)] = data
        f.fallocate(punch, 29311, 22174)
        want[29311 : 29311 + 22174] = bytes(22174)
        assert f.pwrite(b"B" * 40000, 35158) == 40000
        want[35158:75158] = b"B" * 40000
        assert f.pread(len(want), 0) == want
    with daxkit.mount(dev, readonly=True) as ro, ro.open("/f") as f:
        assert f.read() == want
    dev.close()
