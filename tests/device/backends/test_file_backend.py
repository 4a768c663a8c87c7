"""The regular-file backend on real ext4 and xfs (SPEC 7): a loop device carries the file
system, a fake sysfs tree names the loop device pmem0 and lists bad sectors under a file (its
physical sectors from filefrag), and daxkit must report exactly those file ranges, refuse them
on the block path, clear them with a page-aligned write, and carry daxfs (with parity) inside
the file."""

import errno
import json
import os
import time

import pytest

import daxkit
from daxkit.device.backends.fiemap import file_extents
from daxkit.units import PAGE_SIZE

from .realdev import fake_sysfs, loop_device, mounted, need_loop, physical_sector, set_badblocks

P = PAGE_SIZE


@pytest.fixture(scope="module", params=["ext4", "xfs"])
def fs_mount(request, tmp_path_factory):
    need_loop(f"mkfs.{request.param}")
    base = tmp_path_factory.mktemp(f"loop-{request.param}")
    with (
        loop_device(str(base / "backing"), 320 << 20) as dev,
        mounted(request.param, dev, str(base / "mnt")) as mnt,
    ):
        yield request.param, dev, mnt


@pytest.fixture
def setup(fs_mount, tmp_path, request):
    """A 64 KiB file of known bytes on the mounted file system and a sysfs tree naming its device."""
    fstype, dev, mnt = fs_mount
    path = os.path.join(mnt, f"f-{request.node.name}".replace("[", "-").replace("]", ""))
    data = bytes((i * 7 + i // 4096) & 0xFF for i in range(16 * P))
    with open(path, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    bb = fake_sysfs(str(tmp_path / "sys"), os.stat(dev).st_rdev)
    yield path, data, bb, str(tmp_path / "sys")
    os.unlink(path)
    quarantine = os.path.join(mnt, ".daxkit-quarantine")
    if os.path.exists(quarantine):
        os.unlink(quarantine)


def wait_for(cond, what):
    deadline = time.monotonic() + 5
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_reports_exactly_the_file_ranges(setup):
    path, data, bb, root = setup
    s3 = physical_sector(path, 3 * P + 1024)  # one sector inside page 3
    s9 = physical_sector(path, 9 * P)  # the whole of page 9
    set_badblocks(bb, [(s3, 1), (s9, 8), (1, 1)])  # sector 1 lies under no file data
    with daxkit.open(path, sysfs_root=root) as dev:
        assert dev.size == 16 * P and dev.info()["backend"] == "file"
        assert dev.known_errors() == [(3 * P + 1024, 512), (9 * P, P)]
        assert dev.bad_ranges() == dev.known_errors() and dev.info()["badblock_count"] == 9
        assert dev.media_errors() == {
            "badblock_count": 9,
            "badblocks": [
                {"offset": (3 * P + 1024) // 512, "length": 1},
                {"offset": 9 * P // 512, "length": 8},
            ],
        }
        assert dev.pread(P, 2 * P) == data[2 * P : 3 * P]  # clean pages read as the file holds them
        for n, off in ((P, 3 * P), (96, 9 * P + 4000)):
            with pytest.raises(daxkit.MediaError) as ei:
                dev.pread(n, off)
            assert ei.value.errno == errno.EIO
        with pytest.raises(daxkit.HWPoisonError):
            dev.direct_access(3, 1)
        got = dev.read_recover(3 * P, P)  # every clean byte, zeroes on the listed sector
        assert got.bad == [(3 * P + 1024, 512)]
        assert bytes(got.data) == data[3 * P : 3 * P + 1024] + bytes(512) + data[3 * P + 1536 : 4 * P]
        with pytest.raises(daxkit.NotSupported, match="real file"):
            dev.inject_error(0)
        with dev.map(0, 16 * P) as m:
            assert m.bad_ranges() == [(3 * P + 1024, 512), (9 * P, P)]
            assert m.read(0, P) == data[:P]
            with pytest.raises(daxkit.PoisonError):
                m.read(9 * P, 16)


def test_clear_with_a_page_aligned_write(setup):
    path, data, bb, root = setup
    bad = physical_sector(path, 5 * P)
    set_badblocks(bb, [(bad, 8)])
    new = b"\xa5" * P
    with daxkit.open(path, sysfs_root=root) as dev:
        assert dev.known_errors() == [(5 * P, P)]
        assert dev.recovery_write(5, 100, b"x") == 0  # unaligned over poison changes nothing
        with pytest.raises(daxkit.MediaError):
            dev.pwrite(b"y" * 100, 5 * P)  # the block path refuses an unaligned clear
        assert dev.recovery_write(5, 0, new) == P
        assert dev.known_errors() == [] and dev.pread(P, 5 * P) == new
        # still listed by the "kernel" (the fake tree did not change): the file moved off it
        assert physical_sector(path, 5 * P) != bad
    with open(path, "rb") as f:
        got = f.read()
    assert got == data[: 5 * P] + new + data[6 * P :]  # every other byte as it was
    # xfs clones the bad block into the quarantine file, ext4 swaps it there: it stays owned
    fd = os.open(os.path.join(os.path.dirname(path), ".daxkit-quarantine"), os.O_RDONLY)
    try:
        held = [(p // 512, n // 512) for _, p, n in file_extents(fd)]
    finally:
        os.close(fd)
    assert any(p <= bad < p + n for p, n in held)


def test_pwrite_over_a_bad_page_clears(setup):
    path, data, bb, root = setup
    bad = physical_sector(path, 7 * P + 512)
    set_badblocks(bb, [(bad, 1)])
    with daxkit.open(path, sysfs_root=root) as dev:
        assert dev.pwrite(b"\x11" * P, 7 * P) == P
        assert dev.known_errors() == [] and dev.pread(P, 7 * P) == b"\x11" * P


def test_new_errors_reach_a_holder_and_a_mapping(setup, holder):
    path, data, bb, root = setup
    with daxkit.open(path, sysfs_root=root) as dev:
        dev.holder = holder
        m = dev.map(0, 16 * P)
        told = []
        m.on_poison = lambda off, n: told.append((off, n))
        set_badblocks(bb, [(physical_sector(path, 12 * P), 2)])
        wait_for(lambda: told, "the watcher did not report the new badblocks")
        assert told == [(12 * P, 1024)] and holder.calls == [(12 * P, 1024, 0)]
        m.close()


def test_readonly_open(setup):
    path, data, bb, root = setup
    set_badblocks(bb, [(physical_sector(path, 0), 1)])
    os.chmod(path, 0o444)
    fd = os.open(path, os.O_RDONLY)
    try:
        with daxkit.open(path, readonly=True, sysfs_root=root) as dev:
            assert dev.readonly and dev.known_errors() == [(0, 512)]
            assert dev.pread(P, P) == data[P : 2 * P]
            with pytest.raises(daxkit.ReadOnly) as ei:
                dev.pwrite(b"z", P)
            assert ei.value.errno == errno.EROFS
    finally:
        os.close(fd)
        os.chmod(path, 0o644)


def test_daxfs_with_parity_inside_the_file(fs_mount, tmp_path):
    fstype, dev, mnt = fs_mount
    path = os.path.join(mnt, "daxfs.img")
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    bb = fake_sysfs(str(tmp_path / "sys"), os.stat(dev).st_rdev)
    payload = os.urandom(5 * P + 123)
    try:
        with daxkit.open(path, sysfs_root=str(tmp_path / "sys")) as d:
            daxkit.mkfs(d, redundancy="parity")
            with daxkit.mount(d) as fs:
                with fs.open("/f", "w") as f:
                    f.write(payload)
                (ext,) = fs.bmap("/f")[:1]
                at = ext["sector"] * 512 + 2 * P  # the third page of /f, as a file offset of the image
                bad = physical_sector(path, at)
                set_badblocks(bb, [(bad, 1)])
                # the holder hears of it with no call in, rebuilds the page from parity and
                # rewrites it: the file moves off the listed sector
                wait_for(
                    lambda: physical_sector(path, at) != bad and not d.known_errors(),
                    "the bad page was not repaired",
                )
                assert fs.scan() == []
                with fs.open("/f", "r") as f:
                    assert f.read() == payload  # full count, right bytes
        with daxkit.open(path, sysfs_root=str(tmp_path / "sys")) as d:
            assert daxkit.fsck(d)["clean"] is True
            with daxkit.mount(d, readonly=True) as fs, fs.open("/f", "r") as f:
                assert f.read() == payload
    finally:
        os.unlink(path)
        q = os.path.join(mnt, ".daxkit-quarantine")
        if os.path.exists(q):
            os.unlink(q)


def test_cli_on_a_real_file(setup):
    from tests.conftest import daxkit_cli

    path, data, bb, root = setup
    set_badblocks(bb, [(physical_sector(path, 3 * P), 8)])
    r = daxkit_cli("list", path, "-M", "--sysfs-root", root)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["badblocks"] == [{"offset": 3 * P // 512, "length": 8}]
    r = daxkit_cli("info", path, "--sysfs-root", root)
    assert json.loads(r.stdout)["backend"] == "file"
    r = daxkit_cli("read", path, "--offset", str(3 * P), "--length", str(P), "--sysfs-root", root)
    assert r.returncode == 1 and b"bad sector" in r.stderr and r.stdout == b""
    r = daxkit_cli("inject-error", path, "-B", "0", "--sysfs-root", root)
    assert r.returncode == 1 and b"real file" in r.stderr and b"Traceback" not in r.stderr
    r = daxkit_cli("badblocks", path, "--sysfs-root", root)
    assert r.stdout.decode() == f"{3 * P // 512} 8\n"


def test_a_real_sigbus_becomes_poison_error(setup, holder):
    """A genuine SIGBUS on the mapping (the file cut short under it: BUS_ADRERR, the nearest a
    machine without poisoned memory comes to BUS_MCEERR_AR) reaches the safe accessors as
    PoisonError, becomes known and tells the holder, instead of killing the process."""
    path, data, bb, root = setup
    with daxkit.open(path, sysfs_root=root) as dev:
        dev.holder = holder
        with dev.map(0, 16 * P) as m:
            os.truncate(path, 8 * P)
            try:
                assert m.read(P, 16) == data[P : P + 16]
                with pytest.raises(daxkit.PoisonError) as ei:
                    m.read(8 * P - 64, 128)  # the last line before the cut, then the first after it
                e = ei.value
                assert (e.offset, e.length, e.done) == (8 * P, 64, 64) and e.errno == errno.EIO
                assert holder.calls == [(8 * P, P, daxkit.MF_ACTION_REQUIRED)]
                assert dev.known_errors() == [(8 * P, 64)]
                with pytest.raises(daxkit.MediaError):
                    dev.pread(16, 8 * P)
            finally:
                os.truncate(path, 16 * P)


def test_badblocks_add_writes_the_kernel_file(setup):
    path, data, bb, root = setup
    with daxkit.open(path, sysfs_root=root) as dev:
        dev.badblocks.add(f"{2 * P // 512 + 1} 2")  # file sectors, as `daxkit badblocks FILE --add`
        assert open(bb).read() == f"{physical_sector(path, 2 * P + 512)} 2\n"  # device sectors
        assert dev.known_errors() == [(2 * P + 512, 1024)]
        with pytest.raises(daxkit.InvalidArgument):
            dev.badblocks.add("1 0")
    with daxkit.open(path, readonly=True, sysfs_root=root) as dev, pytest.raises(daxkit.ReadOnly):
        dev.badblocks.add("3 1")


def test_cli_clears_a_real_file(setup):
    from tests.conftest import daxkit_cli

    path, data, bb, root = setup
    set_badblocks(bb, [(physical_sector(path, 4 * P + 512), 1), (physical_sector(path, 10 * P), 8)])
    page = tmp = os.path.join(os.path.dirname(bb), "page")
    with open(tmp, "wb") as f:
        f.write(b"\x5a" * P)
    r = daxkit_cli("write", path, "--offset", str(10 * P), "-i", page, "--sysfs-root", root)
    assert r.returncode == 0, r.stderr
    r = daxkit_cli("clear-errors", path, "--sysfs-root", root)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"cleared": [{"offset": 4 * P, "length": P}]}
    r = daxkit_cli("badblocks", path, "--sysfs-root", root)
    assert r.returncode == 0 and r.stdout == b""
    with open(path, "rb") as f:
        got = f.read()
    assert got == data[: 4 * P] + bytes(P) + data[5 * P : 10 * P] + b"\x5a" * P + data[11 * P :]


def test_adding_badblocks_without_root_says_so(setup):
    """Writing the kernel's badblocks file is root's: a caller without the permission override
    (the child drops it) is told so, and nothing changes."""
    import subprocess
    import sys

    from tests.cli.test_cli_args import _without_root_override

    path, data, bb, root = setup
    os.chmod(bb, 0o444)  # as sysfs has it for everyone but root
    r = subprocess.run(
        [sys.executable, "-m", "daxkit.cli.main", "badblocks", path, "--add", "2 1", "--sysfs-root", root],
        capture_output=True,
        timeout=60,
        preexec_fn=_without_root_override,
    )
    assert r.returncode == 1 and b"only root" in r.stderr and b"Traceback" not in r.stderr, r.stderr
    assert open(bb).read() == ""
