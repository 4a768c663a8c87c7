"""The sysfs readers on fake trees (SPEC 7): junk lines, missing files, region-relative offsets
partly outside a namespace, partitions, file extents, the ``list -M`` walk, and a badblocks file
that changes while the watcher polls it."""

import json
import os
import time

import pytest

import daxkit
from daxkit.device.backends import real, sysfs
from daxkit.device.device import DaxDevice
from daxkit.units import PAGE_SIZE, SECTOR_SIZE


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_parse_badblocks_skips_junk_and_merges():
    text = "8 8\njunk\n5\n3 -1\n7 0\n10 2 extra\n0x10 4\n 100 4 \n16 8\n200 1\n\n"
    assert sysfs.parse_badblocks(text) == [(8, 16), (100, 4), (200, 1)]
    assert sysfs.parse_badblocks("") == [] and sysfs.parse_badblocks(None) == []


def test_missing_files_mean_nothing_known(tmp_path):
    root = str(tmp_path)
    assert sysfs.read_text(os.path.join(root, "block/pmem0/badblocks")) is None
    assert sysfs.find_block_device(root, 259, 0) is None
    assert sysfs.list_namespaces(root) == []
    write(root, "bus/nd/devices/region0/namespace0.0/size", "1048576\n")  # no resource files
    write(root, "bus/nd/devices/region0/badblocks", "0 8\n")
    (ns,) = sysfs.list_namespaces(root)
    assert ns["dev"] == "namespace0.0" and ns["badblock_count"] == 0 and ns["badblocks"] == []


def test_region_share_clips_runs_partly_outside():
    region, ns_start, ns_size = 0x100000000, 0x100000000 + (1 << 20), 1 << 20
    first = (1 << 20) // SECTOR_SIZE  # the namespace's first sector in the region: 2048
    runs = [(first - 4, 8), (first + 100, 3), (first + 2048 - 2, 10), (first + 5000, 1), (0, 1)]
    assert sysfs.region_share(runs, region, ns_start, ns_size) == [(0, 4), (100, 3), (2046, 2)]
    assert sysfs.region_share(runs, region, region - 4096, ns_size) == []  # a namespace before its region


def test_find_block_device_and_partitions(tmp_path):
    root = str(tmp_path)
    write(root, "block/pmem0/dev", "259:0\n")
    write(root, "block/pmem0/size", "4096\n")
    write(root, "block/pmem0/badblocks", "10 2\n2050 4\n4090 20\n")
    write(root, "block/pmem0/pmem0p1/dev", "259:1\n")
    write(root, "block/pmem0/pmem0p1/start", "2048\n")
    write(root, "block/pmem0/pmem0p1/size", "2048\n")
    write(root, "block/loop3/dev", "7:3\n")
    disk = sysfs.find_block_device(root, 259, 0)
    assert disk.name == "pmem0" and sysfs.device_runs(disk) == [(10, 2), (2050, 4), (4090, 6)]
    part = sysfs.find_block_device(root, 259, 1)
    assert part.name == "pmem0p1" and part.badblocks == disk.badblocks
    assert sysfs.device_runs(part) == [(2, 4), (2042, 6)]  # relative to the partition, cut at its end
    assert sysfs.device_runs(sysfs.find_block_device(root, 7, 3)) == []  # no badblocks file


def test_file_bad_ranges_follow_extents():
    extents = [(0, 1 << 20, 8192), (8192, 5 << 20, 4096), (1 << 20, 2 << 20, 4096)]
    bad = [((1 << 20) // 512 + 9, 2), ((5 << 20) // 512, 1), ((3 << 20) // 512, 8)]
    assert sysfs.file_bad_ranges(extents, bad) == [(9 * 512, 1024), (8192, 512)]
    assert sysfs.file_bad_ranges([], bad) == []


def fake_namespaces(root):
    write(root, "bus/nd/devices/region0/resource", "0x200000000\n")
    write(root, "bus/nd/devices/region0/badblocks", "0 1\n4096 16\n8190 4\njunk\n")
    ns = "bus/nd/devices/region0/namespace0.0"
    write(root, f"{ns}/resource", "0x200200000\n")  # 2 MiB into the region: sector 4096
    write(root, f"{ns}/size", str(4 << 20) + "\n")
    write(root, f"{ns}/mode", "fsdax\n")
    os.makedirs(os.path.join(root, ns, "block", "pmem0"))
    write(root, "block/pmem0/badblocks", "0 16\n4094 4\n")  # the kernel's namespace-relative list
    write(root, "block/pmem0/dev", "259:0\n")
    dx = "bus/nd/devices/region0/namespace0.1"
    write(root, f"{dx}/resource", "0x200600000\n")  # 6 MiB in: sector 12288
    write(root, f"{dx}/size", str(2 << 20) + "\n")
    write(root, f"{dx}/mode", "devdax\n")
    os.makedirs(os.path.join(root, dx, "dax0.1", "dax", "dax0.1"))
    write(root, "bus/nd/devices/region0/badblocks", "0 1\n4096 16\n12286 4\n16380 8\n")
    write(root, "block/pmem7/badblocks", "5 1\n")
    write(root, "block/pmem7/size", "2048\n")


def test_list_namespaces_in_ndctl_shape(tmp_path):
    root = str(tmp_path)
    fake_namespaces(root)
    got = sysfs.list_namespaces(root)
    assert got == [
        {"dev": "namespace0.0", "mode": "fsdax", "size": 4 << 20, "blockdev": "pmem0",
         "badblock_count": 20, "badblocks": [{"offset": 0, "length": 16}, {"offset": 4094, "length": 4}]},
        {"dev": "namespace0.1", "mode": "devdax", "size": 2 << 20, "chardev": "dax0.1",
         "badblock_count": 6, "badblocks": [{"offset": 0, "length": 2}, {"offset": 4092, "length": 4}]},
        {"dev": "pmem7", "blockdev": "pmem7", "size": 2048 * 512,
         "badblock_count": 1, "badblocks": [{"offset": 5, "length": 1}]},
    ]  # fmt: skip
    runs, src = sysfs.dax_device_runs(root, "dax0.1")
    assert runs == [(0, 2), (4092, 4)] and src.endswith("region0/badblocks")


class FileListed(real.RealBackend):
    """A real backend over a plain file whose known errors are the lines of a badblocks file:
    the watcher and the device's reporting, without a block device."""

    kind = "test"

    def __init__(self, data_path, bb_path):
        self.bb_path = bb_path
        fd = os.open(data_path, os.O_RDWR)
        super().__init__(data_path, fd, os.fstat(fd).st_size, SECTOR_SIZE, False)

    def hardware_runs(self):
        return sysfs.parse_badblocks(sysfs.read_text(self.bb_path))

    def watched(self):
        return [self.bb_path]

    def write_clearing(self, data, offset):
        self.medium_write(data, offset)


def test_badblocks_file_changing_while_polled(tmp_path, holder):
    data = tmp_path / "data"
    data.write_bytes(bytes(16 * PAGE_SIZE))
    bb = write(str(tmp_path), "bb", "")
    dev = DaxDevice(FileListed(str(data), bb))
    watcher = dev._be._watcher
    try:
        dev.holder = holder
        m = dev.map(0, 16 * PAGE_SIZE)
        told = []
        m.on_poison = lambda off, n: told.append((off, n))
        assert dev.known_errors() == [] and m.read(8 * PAGE_SIZE, 16) == bytes(16)
        gen = dev.state_word[0]
        tmp = bb + ".new"
        with open(tmp, "w") as f:
            f.write("junk\n64 8\n")  # sectors 64..71: page 8
        os.replace(tmp, bb)
        deadline = time.monotonic() + 5
        while not told and time.monotonic() < deadline:  # no call into the device: the watchers tell
            time.sleep(0.01)
        assert told == [(64 * SECTOR_SIZE, 8 * SECTOR_SIZE)]
        assert holder.calls == [(64 * SECTOR_SIZE, 8 * SECTOR_SIZE, 0)]
        assert dev.state_word[0] != gen
        with pytest.raises(daxkit.PoisonError) as ei:
            m.read(8 * PAGE_SIZE, 16)
        assert ei.value.offset == 64 * SECTOR_SIZE
        with pytest.raises(daxkit.MediaError):
            dev.pread(512, 64 * SECTOR_SIZE)
        with open(bb, "w") as f:
            f.write("")  # the platform cleared it
        deadline = time.monotonic() + 5
        while dev.known_errors() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dev.known_errors() == [] and m.read(8 * PAGE_SIZE, 16) == bytes(16)
        m.close()
    finally:
        dev.close()
    watcher.join(2)
    assert not watcher.is_alive()  # closing the device ends its poll() watcher


def test_cli_list_without_an_image(tmp_path):
    from tests.conftest import daxkit_cli

    root = str(tmp_path)
    fake_namespaces(root)
    r = daxkit_cli("list", "-M", "--sysfs-root", root)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == sysfs.list_namespaces(root)
    r = daxkit_cli("list", "--sysfs-root", root)  # without -M: no media errors
    assert [sorted(ns) for ns in json.loads(r.stdout)][0] == ["blockdev", "dev", "mode", "size"]
    only = tmp_path / "one"
    write(str(only), "block/pmem3/badblocks", "8 8\n")
    r = daxkit_cli("list", "-M", "--sysfs-root", str(only))  # one namespace: one object, as ndctl prints
    assert json.loads(r.stdout) == {
        "dev": "pmem3", "blockdev": "pmem3", "badblock_count": 8, "badblocks": [{"offset": 8, "length": 8}]
    }  # fmt: skip
    r = daxkit_cli("list", "-M", "--sysfs-root", str(tmp_path / "empty"))
    assert r.returncode == 0 and json.loads(r.stdout) == []


def test_namespaces_found_through_their_pfn_and_dax_seeds(tmp_path):
    """The kernel's layout: an fsdax namespace's disk hangs off its pfn device, a devdax one's
    dax device off its dax seed, each with a ``namespace`` link back."""
    root = str(tmp_path)
    region = os.path.join(root, "bus/nd/devices/region1")
    write(root, "bus/nd/devices/region1/resource", "0x300000000\n")
    write(root, "bus/nd/devices/region1/badblocks", "4100 4\n")
    for ns, start in (("namespace1.0", "0x300000000"), ("namespace1.1", "0x300200000")):
        write(root, f"bus/nd/devices/region1/{ns}/resource", start + "\n")
        write(root, f"bus/nd/devices/region1/{ns}/size", str(2 << 20) + "\n")
    os.makedirs(os.path.join(region, "pfn1.0", "block", "pmem1"))
    os.symlink("../namespace1.0", os.path.join(region, "pfn1.0", "namespace"))
    os.makedirs(os.path.join(region, "dax1.1", "dax1.0"))
    os.symlink("../namespace1.1", os.path.join(region, "dax1.1", "namespace"))
    write(root, "block/pmem1/badblocks", "7 1\n")
    got = sysfs.list_namespaces(root)
    assert [(ns["dev"], ns.get("blockdev"), ns.get("chardev"), ns["badblocks"]) for ns in got] == [
        ("namespace1.0", "pmem1", None, [{"offset": 7, "length": 1}]),
        ("namespace1.1", None, "dax1.0", [{"offset": 4, "length": 4}]),
    ]
    # the dax device's own resource and size: its data starts 4 KiB into the namespace
    write(root, "bus/nd/devices/region1/dax1.1/dax1.0/resource", "0x300201000\n")  # region sector 4104
    write(root, "bus/nd/devices/region1/dax1.1/dax1.0/size", str(1 << 20) + "\n")
    write(root, "bus/nd/devices/region1/badblocks", "4100 4\n4106 2\n6150 10\n")
    runs, src = sysfs.dax_device_runs(root, "dax1.0")
    assert runs == [(2, 2), (2046, 2)] and src == os.path.join(region, "badblocks")
