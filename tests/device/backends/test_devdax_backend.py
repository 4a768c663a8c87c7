"""The device-dax backend without device-dax hardware: /dev/zero is a character device that
can be mapped MAP_SHARED, and a fake sysfs tree names it dax0.0 in namespace0.0 of region0.
What this exercises for real: the choice by stat(), the size from sysfs, the region's badblocks
clipped through the resource files, the block path refusing them, and the refusal to clear
(EOPNOTSUPP, with the reason).  What it cannot: the device's alignment, a real clear-error."""

import errno
import os

import pytest

import daxkit
from daxkit.units import PAGE_SIZE

from .test_sysfs import write

P = PAGE_SIZE


@pytest.fixture
def zero_as_dax(tmp_path):
    if not os.access("/dev/zero", os.R_OK | os.W_OK):
        pytest.skip("/dev/zero cannot be opened read-write here")
    root = str(tmp_path / "sys")
    rdev = os.stat("/dev/zero").st_rdev
    write(root, "devices/region0/dax0.1/dax0.0/size", str(4 << 20) + "\n")
    write(root, "devices/region0/dax0.1/dax0.0/align", str(2 << 20) + "\n")
    os.makedirs(os.path.join(root, "dev", "char"))
    os.symlink(
        "../../devices/region0/dax0.1/dax0.0",
        os.path.join(root, "dev", "char", f"{os.major(rdev)}:{os.minor(rdev)}"),
    )
    write(root, "bus/nd/devices/region0/resource", "0x100000000\n")
    ns = "bus/nd/devices/region0/namespace0.0"
    write(root, f"{ns}/resource", "0x100100000\n")  # 1 MiB into the region: sector 2048
    write(root, f"{ns}/size", str(2 << 20) + "\n")
    os.makedirs(os.path.join(root, ns, "dax", "dax0.0"))
    write(root, "bus/nd/devices/region0/badblocks", "2040 10\n2048 16\n9000 1\n")
    return root


def test_devdax_known_errors_and_refusals(zero_as_dax):
    with daxkit.open("/dev/zero", sysfs_root=zero_as_dax) as dev:
        assert dev.info()["backend"] == "devdax" and dev.size == 4 << 20
        assert dev._region.addr % (2 << 20) == 0  # the kernel refuses an unaligned device-dax mapping
        with pytest.raises(daxkit.InvalidArgument, match="alignment"):
            dev.map(P, P)
        with dev.map(2 << 20, 2 << 20) as m:
            assert m.read(0, 16) == bytes(16)
        # region sectors 2040..2050 and 2048..2064 lie at namespace sectors 0..16
        assert dev.known_errors() == [(0, 16 * 512)]
        assert dev.pread(P, 2 * P) == bytes(P)
        with pytest.raises(daxkit.MediaError) as ei:
            dev.pread(P, 0)
        assert ei.value.errno == errno.EIO
        with pytest.raises(daxkit.NotSupported, match="clear-error") as ei:
            dev.recovery_write(0, 0, bytes(P))
        assert ei.value.errno == errno.EOPNOTSUPP
        with pytest.raises(daxkit.NotSupported, match="real devdax"):
            dev.inject_error(5)
        assert dev.pwrite(b"\x01" * P, 3 * P) == P  # no error there: a plain store


def test_char_devices_sysfs_does_not_know_are_refused(tmp_path):
    with pytest.raises(daxkit.ImageError, match="device-dax device that sysfs knows"):
        daxkit.open("/dev/null", sysfs_root=str(tmp_path))


def test_clear_error_goes_to_the_bus(tmp_path):
    """With the region under an nvdimm bus (as sysfs has it), the clear-error command is sent to
    the bus's control device; here there is no such device node, and the refusal names it."""
    from daxkit.device.backends import sysfs

    if not os.access("/dev/zero", os.R_OK | os.W_OK):
        pytest.skip("/dev/zero cannot be opened read-write here")
    root = str(tmp_path / "sys")
    rdev = os.stat("/dev/zero").st_rdev
    bus = os.path.join(root, "devices", "ndbus7")
    write(root, "devices/ndbus7/ndctl7/dev", "250:7\n")
    write(root, "devices/ndbus7/region0/resource", "0x100000000\n")
    write(root, "devices/ndbus7/region0/badblocks", "2048 8\n")
    write(root, "devices/ndbus7/region0/namespace0.0/resource", "0x100100000\n")
    write(root, "devices/ndbus7/region0/namespace0.0/size", str(2 << 20) + "\n")
    write(root, "devices/ndbus7/region0/dax0.1/dax0.0/size", str(2 << 20) + "\n")
    write(root, "devices/ndbus7/region0/dax0.1/dax0.0/resource", "0x100100000\n")
    os.symlink("../namespace0.0", os.path.join(bus, "region0", "dax0.1", "namespace"))
    os.makedirs(os.path.join(root, "bus", "nd", "devices"))
    os.symlink(os.path.join(bus, "region0"), os.path.join(root, "bus", "nd", "devices", "region0"))
    os.makedirs(os.path.join(root, "dev", "char"))
    os.symlink(os.path.join(bus, "region0", "dax0.1", "dax0.0"),
               os.path.join(root, "dev", "char", f"{os.major(rdev)}:{os.minor(rdev)}"))  # fmt: skip
    dev_root = str(tmp_path / "dev")
    assert sysfs.dax_device_place(root, "dax0.0", dev_root) == (os.path.join(dev_root, "ndctl7"), 0x100100000)
    with daxkit.open("/dev/zero", sysfs_root=root) as dev:
        assert dev.known_errors() == [(0, 8 * 512)]
        with pytest.raises(daxkit.NotSupported, match="/dev/ndctl7") as ei:
            dev.recovery_write(0, 0, bytes(P))
        assert ei.value.errno == errno.EOPNOTSUPP
