"""The filesystem uses its device only through the declared interface (device/interface.py):
mounted on a proxy that offers exactly DaxOperations and nothing else, every operation works."""

import pytest

import daxkit
from daxkit.device.interface import DaxOperations

P = 4096
NAMES = {
    "path", "size", "clear_err_unit", "direct_access", "recovery_write", "zero_page_range", "mc_read",
    "store", "read_recover_into", "map_extents", "known_errors", "first_bad", "holder", "state_word",
    "state_generation", "recovery_write_subpage", "store_fn",
}  # fmt: skip
# the Redundant protocol
OPTIONAL = {"redundancy", "parity_group", "repair", "lower_offset", "checksum_mismatches"}


class OnlyTheInterface:
    """Delegates the interface's names to a real device; anything else is an error."""

    def __init__(self, dev):
        object.__setattr__(self, "_dev", dev)
        object.__setattr__(self, "used", set())

    def __getattr__(self, name):
        if name in OPTIONAL:
            raise AttributeError(name)  # asked whether it is a Redundant device: it is not
        if name not in NAMES:
            raise AssertionError(f"the filesystem reached past the device interface: {name}")
        self.used.add(name)
        return getattr(self._dev, name)

    def __setattr__(self, name, value):
        if name != "holder":
            raise AssertionError(f"the filesystem set {name} on its device")
        self._dev.holder = value


def test_the_emulated_device_implements_the_interface(fsdev):
    assert isinstance(fsdev, DaxOperations)
    assert NAMES <= set(dir(fsdev))


def test_a_filesystem_runs_on_the_interface_alone(fsdev):
    dev = OnlyTheInterface(fsdev)
    with daxkit.mount(dev) as fs:
        fs.mkdir("/d")
        with fs.open("/d/f", "w+") as f:
            f.write(bytes(range(256)) * 64)
            f.pwrite(b"x" * 10, 100)
            assert f.pread(10, 100) == b"x" * 10
        (ext,) = fs.bmap("/d/f")
        fsdev.inject_error(ext["sector"] + 8, 1)  # notified: the filesystem hears as holder
        with fs.open("/d/f", "r+") as f:
            with pytest.raises(OSError):
                f.pread(P, P)
            r = f.pread(2 * P, 0, flags=daxkit.RWF_RECOVERY_DATA)
            want = bytearray(bytes(range(256)) * 32)
            want[100:110] = b"x" * 10
            want[P : P + 256] = bytes(256)  # the poisoned lines read as zeroes
            assert r.bad == [(P, 256)] and r.data == want
            assert f.bad_ranges()
            f.pwrite(b"y" * 8, P + 8, flags=daxkit.RWF_RECOVERY_DATA)  # sub-page over poison
            f.pwrite(bytes(P), P)  # page-aligned over poison: recovered
            assert f.bad_ranges() == []
            m = f.mmap()
            m.write(0, b"mapped")
            m.close()
            f.fallocate(daxkit.FALLOC_FL_PUNCH_HOLE | daxkit.FALLOC_FL_KEEP_SIZE, 0, P)
        fs.rename("/d/f", "/g")
        fs.unlink("/g")
        fs.rmdir("/d")
        assert fs.scan() == []
    with daxkit.mount(dev, readonly=True) as ro:
        assert ro.listdir("/") == []
    assert daxkit.fsck(dev)["clean"]
    assert {"direct_access", "mc_read", "store", "read_recover_into", "map_extents"} <= dev.used
