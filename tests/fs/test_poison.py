"""SPEC 3: the kernel's fsdax rules for reads and writes over poison, and the holder."""

import errno
import time

import pytest

import daxkit
from daxkit import PAGE_SIZE as P

from ..conftest import run_py
from .conftest import two_extent_file, write_file


def sector(ext_entry, page=0):
    return ext_entry["sector"] + page * 8


def test_known_poison_in_first_extent_is_eio_nothing_returned(fs, fsdev):
    write_file(fs, "/f", b"\x11" * 4 * P)
    (ext,) = fs.bmap("/f")
    fsdev.badblocks.add(f"{sector(ext, 3) + 2} 1")  # last page of the only extent
    with fs.open("/f") as f:
        with pytest.raises(daxkit.MediaError) as ei:
            f.pread(4 * P, 0)  # the rest of the request in this extent holds poison
        assert ei.value.errno == errno.EIO
        assert f.pread(P, 0) == b"\x11" * P  # a request that stops before the poison is fine
        assert f.bad_ranges() == [(3 * P + 1024, 512)]


def test_clean_first_extent_then_bad_extent_gives_short_count(fs, fsdev):
    e1, e2 = two_extent_file(fs)
    fsdev.badblocks.add(f"{sector(e2)} 1")
    with fs.open("/two") as f:
        data = f.pread(2 * P, 0)
        assert data == b"A" * P  # short: up to the bad extent
        with pytest.raises(daxkit.MediaError):
            f.pread(P, P)


def test_latent_poison_short_read_then_known(fs, fsdev):
    write_file(fs, "/f", bytes(range(256)) * 16 * 2)
    (ext,) = fs.bmap("/f")
    dev_off = ext["sector"] * 512
    fsdev.inject_poison(dev_off + P + 640, 1)
    with fs.open("/f") as f:
        data = f.pread(2 * P, 0)
        assert len(data) == P + 640 and data == (bytes(range(256)) * 32)[: P + 640]
        assert f.bad_ranges() == [(P + 640, 64)]  # consumption made it known
        with pytest.raises(daxkit.MediaError):
            f.pread(100, P + 600)


def test_holes_read_as_zeroes_without_a_check(fs, fsdev, monkeypatch):
    with fs.open("/sparse", "w") as f:
        f.pwrite(b"end", 10 * P)
    assert [e["offset"] for e in fs.bmap("/sparse")] == [10 * P]
    calls = []
    real = fsdev.direct_access
    with fs.open("/sparse") as f:  # (the open may commit an atime: metadata, not a data lookup)
        monkeypatch.setattr(fsdev, "direct_access", lambda *a, **k: calls.append(a) or real(*a, **k))
        assert f.pread(10 * P, 0) == bytes(10 * P)
        assert calls == []  # a hole is never looked up on the device
        assert f.pread(100, 10 * P) == b"end"  # reads stop at the file size
        assert len(calls) == 1


def test_page_aligned_write_over_poison_clears(fs, fsdev):
    write_file(fs, "/f", b"\x22" * 4 * P)
    (ext,) = fs.bmap("/f")
    fsdev.inject_error(sector(ext, 1) + 1, 2)
    with fs.open("/f", "r+") as f:
        assert f.pwrite(b"\x33" * 2 * P, P) == 2 * P  # full count through RECOVERY_WRITE
        assert f.bad_ranges() == []
        assert f.pread(4 * P, 0) == b"\x22" * P + b"\x33" * 2 * P + b"\x22" * P
    assert fsdev.badblocks.text() == "" and fsdev.poisoned_ranges() == []


def test_unaligned_write_over_poison_writes_the_clean_prefix(fs, fsdev):
    write_file(fs, "/f", b"\x22" * 4 * P)
    (ext,) = fs.bmap("/f")
    fsdev.inject_error(sector(ext, 2) + 3, 1)
    with fs.open("/f", "r+") as f:
        assert f.pwrite(b"\x44" * 3 * P, 100) == 2 * P - 100  # up to the bad page
        with pytest.raises(OSError) as ei:
            f.pwrite(b"\x55" * 10, 2 * P + 5)  # nothing at all: EFAULT
        assert ei.value.errno == errno.EFAULT
    fsdev.clear_errors()
    with fs.open("/f") as f:
        assert f.pread(P, P) == b"\x44" * P
        assert f.pread(3 * P, P)[P:] != b"\x55" * 10


def test_punch_hole_frees_a_bad_block_and_clears_it(fs, fsdev):
    write_file(fs, "/f", b"\x66" * 4 * P)
    (ext,) = fs.bmap("/f")
    fsdev.inject_error(sector(ext, 1), 8)
    with fs.open("/f", "r+") as f:
        f.fallocate(daxkit.FALLOC_FL_PUNCH_HOLE | daxkit.FALLOC_FL_KEEP_SIZE, P, P)
        assert f.stat().st_size == 4 * P and f.bad_ranges() == []
        assert f.pread(4 * P, 0) == b"\x66" * P + bytes(P) + b"\x66" * 2 * P
    assert fsdev.badblocks.text() == "" and fsdev.poisoned_ranges() == []  # zeroed and cleared
    assert len(fs.bmap("/f")) == 2
    write_file(fs, "/g", b"\x77" * P)  # the freed block can be reused
    assert fs.open("/g").read() == b"\x77" * P
    assert daxkit.fsck(fsdev)["clean"]


def test_zero_range_clears_whole_pages(fs, fsdev):
    write_file(fs, "/f", b"\x66" * 4 * P)
    (ext,) = fs.bmap("/f")
    fsdev.inject_error(sector(ext, 2), 1)
    with fs.open("/f", "r+") as f:
        f.fallocate(daxkit.FALLOC_FL_ZERO_RANGE, P + 100, 2 * P)
        assert f.bad_ranges() == []
        assert f.pread(4 * P, 0) == b"\x66" * (P + 100) + bytes(2 * P) + b"\x66" * (P - 100)


def test_fallocate_modes(fs):
    with fs.open("/f", "w+") as f:
        f.fallocate(0, 0, 3 * P)
        assert f.stat().st_size == 3 * P and f.pread(3 * P, 0) == bytes(3 * P)
        f.fallocate(daxkit.FALLOC_FL_KEEP_SIZE, 3 * P, P)
        assert f.stat().st_size == 3 * P and f.stat().st_blocks == 4 * 8
        with pytest.raises(OSError) as ei:
            f.fallocate(daxkit.FALLOC_FL_PUNCH_HOLE, 0, P)  # punch needs KEEP_SIZE, like Linux
        assert ei.value.errno == errno.EOPNOTSUPP
        with pytest.raises(ValueError):
            f.fallocate(0, -1, P)


def test_truncate(fs):
    with fs.open("/f", "w+") as f:
        f.write(b"\x01" * (3 * P + 10))
        f.truncate(P + 5)
        assert f.stat().st_size == P + 5 and len(fs.bmap("/f")) == 1 and fs.bmap("/f")[0]["length"] == 2 * P
        f.truncate(3 * P)  # growing reads zeroes past the old end, including the old last block's tail
        assert f.pread(3 * P, 0) == b"\x01" * (P + 5) + bytes(2 * P - 5)


def test_file_data_failure_reaches_mappings_scan_and_listeners(fs, fsdev):
    write_file(fs, "/f", b"\x01" * 4 * P)
    heard = []
    fs.add_failure_listener(lambda ino, path, off, n: heard.append((path, off, n)))
    f = fs.open("/f", "r+")
    m = f.mmap()
    got = []
    m.on_poison = lambda off, n: got.append((off, n))
    (ext,) = fs.bmap("/f")
    fsdev.inject_error(sector(ext, 2), 1)  # scrub: known, notify_failure
    assert got == [(2 * P, 256)] and heard == [("/f", 2 * P, 256)]
    with pytest.raises(daxkit.PoisonError):
        m.read(2 * P, P)
    assert m.bad_ranges() == [(2 * P, 256)] and f.bad_ranges() == [(2 * P, 256)]
    (hit,) = fs.scan()
    assert hit["owner"] == "file" and hit["path"] == "/f" and hit["file_offset"] == 2 * P
    m.close()
    f.close()


def test_poison_made_known_by_another_process_reaches_the_filesystem(fs, fsdev):
    write_file(fs, "/f", b"\x01" * 4 * P)
    heard = []
    fs.add_failure_listener(lambda ino, path, off, n: heard.append((path, off)))
    (ext,) = fs.bmap("/f")
    r = run_py("import sys, daxkit; daxkit.open(sys.argv[1]).inject_error(int(sys.argv[2]), 1)", fsdev.path,
               str(sector(ext, 1)))  # fmt: skip
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 5
    while not heard and time.time() < deadline:
        time.sleep(0.01)
    assert heard == [("/f", P)]


def _metadata_errors(dev, fs):
    return dev.known_errors(0, fs.geometry.data_start * P)


@pytest.mark.parametrize("block", [0, 1, 2, 3, "ckpt0", "ckpt1"])
def test_metadata_poison_while_mounted_is_rewritten_from_memory(fs, fsdev, block):
    """SPEC 4.2: metadata is redundant -- a read-write mount holds all of it in memory, so
    poison in any metadata page it hears of is rewritten, never fatal."""
    write_file(fs, "/f", b"x" * 5000)
    fs.mkdir("/d")
    g = fs.geometry
    page = {"ckpt0": g.ckpt_start(0), "ckpt1": g.ckpt_start(1)}.get(block, block)
    fsdev.inject_error(page * 8, 1)  # notified: the holder hears of it
    assert fs.listdir("/") == ["d", "f"]
    assert _metadata_errors(fsdev, fs) == []
    write_file(fs, "/g", b"after")
    fs.unmount()
    with daxkit.mount(fsdev) as again:
        assert again.listdir("/") == ["d", "f", "g"]
        with again.open("/f") as f:
            assert f.read() == b"x" * 5000
    assert daxkit.fsck(fsdev)["clean"]


def test_poison_in_the_unused_log_tail_is_no_damage(fsdev):
    """Issue 6 item 9: one poisoned line past the last record used to make the filesystem
    unmountable even read-only, with an error naming the log start."""
    with daxkit.mount(fsdev) as fs:
        write_file(fs, "/f", b"data")
        g, tail = fs.geometry, fs._tail
    line = (g.log_start * P + tail + 3 * P) // 512 * 512  # well past the last record, in the unused tail
    fsdev.inject_poison(line, 64)
    with daxkit.mount(fsdev, readonly=True) as ro:
        with ro.open("/f") as f:
            assert f.read() == b"data"
    report = daxkit.fsck(fsdev)
    assert not report["clean"] and any(str(line) in p for p in report["problems"]), report
    with daxkit.mount(fsdev) as fs:  # read-write: rewritten, cleared
        assert fs.listdir("/") == ["f"]
        assert _metadata_errors(fsdev, fs) == []
        write_file(fs, "/g", b"more")
    assert fsdev.poisoned_ranges() == []
    assert daxkit.fsck(fsdev)["clean"]


def test_poison_inside_committed_records_names_the_bad_offset(fsdev):
    with daxkit.mount(fsdev) as fs:
        for i in range(5):
            write_file(fs, f"/f{i}", b"data")
        g = fs.geometry
    bad = g.log_copy_start(0) * P + 128
    fsdev.inject_poison(bad, 64)  # one copy (SPEC 4.2): read from the other, reported
    with daxkit.mount(fsdev, readonly=True) as ro:
        assert ro.listdir("/") == [f"f{i}" for i in range(5)]
    report = daxkit.fsck(fsdev)
    assert not report["clean"] and any(f"offset {bad}" in p for p in report["problems"])
    fsdev.inject_poison(g.log_copy_start(1) * P + 128, 64)  # and the same record in the other copy
    with pytest.raises(daxkit.CorruptFilesystem) as ei:
        daxkit.mount(fsdev, readonly=True)
    assert f"poison at device offset {bad}" in str(ei.value)
    report = daxkit.fsck(fsdev)
    assert not report["clean"] and any(f"offset {bad}" in p for p in report["problems"])


def test_pre_remove_unmaps_and_shuts_down(fs, fsdev):
    write_file(fs, "/f", b"\x01" * P)
    f = fs.open("/f")
    m = f.mmap()
    fsdev.kill()
    with pytest.raises(daxkit.FilesystemShutdown):
        f.pread(1, 0)
    with pytest.raises(daxkit.DeviceGone):
        m.read(0, 1)


def test_second_read_write_mount_is_ebusy(fs, fsdev):
    with pytest.raises(daxkit.Busy) as ei:
        daxkit.mount(daxkit.open(fsdev.path))
    assert ei.value.errno == errno.EBUSY
    r = run_py("import sys, daxkit; daxkit.mount(daxkit.open(sys.argv[1]))", fsdev.path)
    assert r.returncode != 0 and "EBUSY" not in r.stderr and "already mounted" in r.stderr


def test_read_only_opens_see_completed_operations(fs, fsdev):
    write_file(fs, "/a", b"first")
    code = "import sys, daxkit; print(daxkit.mount(daxkit.open(sys.argv[1]), readonly=True).listdir('/'))"
    assert run_py(code, fsdev.path).stdout.strip() == "['a']"
    fs.rename("/a", "/b")
    assert run_py(code, fsdev.path).stdout.strip() == "['b']"
    ro = daxkit.mount(daxkit.open(fsdev.path), readonly=True)
    with pytest.raises(OSError) as ei:
        ro.mkdir("/x")
    assert ei.value.errno == errno.EROFS


def test_mmap_allocates_holes_and_truncate_revokes(fs):
    with fs.open("/f", "w+") as f:
        f.truncate(4 * P)
        assert fs.bmap("/f") == []
        m = f.mmap()
        assert sum(e["length"] for e in fs.bmap("/f")) == 4 * P
        m.buf[P : P + 5] = b"hello"
        assert f.pread(5, P) == b"hello"
        f.truncate(P)
        with pytest.raises(daxkit.DeviceGone):
            m.read(2 * P, 10)
        assert m.read(0, 10) == bytes(10)
        m.close()


def test_fast_path_view_is_dropped_when_poison_becomes_known_elsewhere(fs, fsdev):
    """The per-file direct_access view: reused only while the shared error state is unchanged,
    so poison another process makes known is refused on the very next read, without waiting."""
    write_file(fs, "/f", b"\x01" * 8 * P)
    (ext,) = fs.bmap("/f")
    with fs.open("/f", "r+") as f:
        assert f.pread(P, 2 * P) == b"\x01" * P  # builds the view of the extent
        r = run_py("import sys, daxkit; daxkit.open(sys.argv[1]).badblocks.add(sys.argv[2])", fsdev.path,
                   f"{sector(ext, 2)} 1")  # fmt: skip
        assert r.returncode == 0, r.stderr
        with pytest.raises(daxkit.MediaError):
            f.pread(P, 2 * P)  # no sleep: the state word changed, direct_access refuses
        assert f.pread(P, 0) == b"\x01" * P  # the rest of the extent still reads
        assert f.pwrite(b"\x02" * P, 2 * P) == P  # aligned: recovered through RECOVERY_WRITE
        assert f.bad_ranges() == [] and f.pread(P, 2 * P) == b"\x02" * P


def test_fast_path_view_follows_metadata_changes(fs):
    with fs.open("/f", "w+") as f:
        f.write(b"\x01" * 4 * P)
        assert f.pread(P, P) == b"\x01" * P
        f.truncate(P)
        assert f.pread(P, P) == b""  # the old view is not used past the new end
        f.truncate(4 * P)
        assert f.pread(P, P) == bytes(P)
