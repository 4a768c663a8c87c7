"""The block-device backend on a loop device standing in for /dev/pmem0 (SPEC 7): known errors
from a fake ``block/pmem0/badblocks`` found by the device number, the block path refusing them,
mappings of the device, daxfs on it, and a clearing write the "platform" does not honour (a loop
device is not pmem) reported as EIO rather than taken for success."""

import errno
import os

import pytest

import daxkit
from daxkit.units import PAGE_SIZE

from .realdev import fake_sysfs, loop_device, need_loop, set_badblocks

P = PAGE_SIZE


@pytest.fixture(scope="module")
def loopdev(tmp_path_factory):
    need_loop()
    base = tmp_path_factory.mktemp("loop-block")
    with loop_device(str(base / "backing"), 8 << 20) as dev:
        yield dev


@pytest.fixture
def sysroot(loopdev, tmp_path):
    bb = fake_sysfs(str(tmp_path / "sys"), os.stat(loopdev).st_rdev)
    return str(tmp_path / "sys"), bb


def test_badblocks_and_the_block_path(loopdev, sysroot):
    root, bb = sysroot
    set_badblocks(bb, [(24, 2), (100000, 8)])  # the second lies past the 8 MiB device
    with daxkit.open(loopdev, sysfs_root=root) as dev:
        assert dev.size == 8 << 20 and dev.info()["backend"] == "block"
        assert dev.info()["blockdev"] == "pmem0"
        assert dev.known_errors() == [(24 * 512, 1024)]
        assert dev.media_errors()["badblocks"] == [{"offset": 24, "length": 2}]
        data = os.urandom(P)
        assert dev.pwrite(data, 0) == P and dev.pread(P, 0) == data
        with open(loopdev, "rb") as f:  # the device itself holds the bytes
            assert os.pread(f.fileno(), P, 0) == data
        with pytest.raises(daxkit.MediaError) as ei:
            dev.pread(P, 3 * P)
        assert ei.value.errno == errno.EIO
        with pytest.raises(daxkit.HWPoisonError):
            dev.direct_access(3, 1)
        assert dev.direct_access(3, 2, daxkit.RECOVERY_WRITE)[0] == 1
        with pytest.raises(daxkit.MediaError, match="did not clear"):
            dev.pwrite(bytes(P), 3 * P)  # written through the device; a loop device does not clear
        assert dev.known_errors() == [(24 * 512, 1024)]  # still known: nobody pretends otherwise
        with pytest.raises(daxkit.NotSupported, match="real block"):
            dev.inject_error(1)
        with dev.map(0, 8 * P) as m:
            assert m.read(0, P) == data
            with pytest.raises(daxkit.PoisonError) as pe:
                m.read(3 * P, P)
            assert pe.value.offset == 24 * 512 and pe.value.done == 0
        dev.badblocks.add("40 1")  # written into the kernel's file, as writing sysfs does
        assert open(bb).read().splitlines()[-1] == "40 1"
        assert dev.known_errors() == [(24 * 512, 1024), (40 * 512, 512)]
        set_badblocks(bb, [])  # the platform cleared it
        assert dev.scrub().scrub_count >= 1  # a scrub re-reads the list
        assert dev.known_errors() == [] and dev.pread(P, 3 * P) == bytes(P)
        set_badblocks(bb, [(50, 1)])
        assert dev.media_errors()["badblocks"] == [{"offset": 50, "length": 1}]  # no wait: reports re-read
        with pytest.raises(daxkit.MediaError):
            dev.pread(512, 50 * 512)


def test_daxfs_on_the_block_device(loopdev, sysroot):
    root, _ = sysroot
    payload = os.urandom(3 * P + 17)
    with daxkit.open(loopdev, sysfs_root=root) as dev:
        daxkit.mkfs(dev, force=True)
        with daxkit.mount(dev) as fs, fs.open("/x", "w") as f:
            f.write(payload)
    with daxkit.open(loopdev, readonly=True, sysfs_root=root) as dev:
        with daxkit.mount(dev, readonly=True) as fs, fs.open("/x", "r") as f:
            assert f.read() == payload
        assert daxkit.fsck(dev)["clean"] is True
        with pytest.raises(daxkit.ReadOnly):
            dev.store(b"x", 0)
