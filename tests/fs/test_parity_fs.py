"""daxfs on the parity layer (SPEC 4.2), through public names only: the guarantee (poison
confined to one page per group costs zero bytes), transparent reads (API, CLI, read-only
mounts), repair and its report, silent corruption, and exact loss reports beyond the guarantee."""

import errno
import json
import os
import random
import subprocess
import sys

import pytest

import daxkit

MiB = 1 << 20
P = 4096
SECT = P // 512


@pytest.fixture
def pdev(tmp_path):
    dev = daxkit.create(str(tmp_path / "parity.img"), 16 * MiB)
    daxkit.mkfs(dev, redundancy="parity")
    yield dev
    dev.close()


def _file(fs, path, pages, seed=1):
    data = random.Random(seed).randbytes(pages * P)
    with fs.open(path, "w") as f:
        f.write(data)
        f.fsync()
    return data


def _pages(fs, path):
    """Device page offsets of the file's pages, in file order."""
    return [e["sector"] * 512 + i * P for e in fs.bmap(path) for i in range(e["length"] // P)]


def _one_page_per_group(fs, offsets):
    seen, out = set(), []
    for off in offsets:
        key = tuple(fs.parity_group(off)["parity"])
        if key not in seen:
            seen.add(key)
            out.append(off)
    return out


def test_mkfs_parity_space_and_redundancy(pdev):
    with daxkit.mount(pdev) as fs:
        red = fs.redundancy
        assert red["mode"] == "parity" and red["group"] >= 2 and 0 < red["space_overhead"] <= 0.02
        st = fs.statfs()
        assert st["f_blocks"] * P < pdev.size
    with daxkit.mount(pdev, readonly=True) as ro:
        assert ro.redundancy == red
    plain = daxkit.create(pdev.path + ".plain", "4M")
    daxkit.mkfs(plain)
    with daxkit.mount(plain) as fs:
        assert fs.redundancy["mode"] == "none"
        with pytest.raises(OSError):
            fs.parity_group(0)
    plain.close()
    with pytest.raises(ValueError):
        daxkit.mkfs(pdev, force=True, redundancy="mirror")


@pytest.mark.parametrize("notify", [False, True], ids=["latent", "notified"])
def test_one_page_per_group_costs_nothing(pdev, notify):
    with daxkit.mount(pdev) as fs:
        data = _file(fs, "/f", 300)
        heard = []
        fs.add_failure_listener(lambda *a: heard.append(a))
        victims = _one_page_per_group(fs, _pages(fs, "/f"))
        assert len(victims) >= 2
        for off in victims:
            pdev.inject_error(off // 512 + random.randrange(SECT), 1, notify=notify)
        with fs.open("/f") as f:
            assert f.read() == data  # full count, right bytes
            assert f.bad_ranges() == []
        assert fs.scan() == [] and heard == []
        assert fs.repair().lost == []
    assert pdev.poisoned_ranges() == []
    assert daxkit.fsck(pdev)["clean"]


def test_whole_page_and_many_lines_in_one_page(pdev):
    with daxkit.mount(pdev) as fs:
        data = _file(fs, "/f", 40)
        off = _pages(fs, "/f")[7]
        pdev.inject_poison(off, P)  # every line of the page
        m = fs.open("/f").mmap()
        assert m.read(0, 40 * P) == data  # the mapping's safe accessor gets the bytes too
        m.close()
        with fs.open("/f") as f:
            assert f.read() == data


def test_a_read_only_mount_reads_through_known_poison(pdev):
    with daxkit.mount(pdev) as fs:
        data = _file(fs, "/f", 20)
        off = _pages(fs, "/f")[3]
    pdev.inject_error(off // 512, 1)  # known, and nobody holds the device to repair it
    with daxkit.mount(pdev, readonly=True) as ro:
        with ro.open("/f") as f:
            assert f.read() == data
    cmd = [sys.executable, "-m", "daxkit.cli.main", "get", pdev.path, "/f", "-"]
    r = subprocess.run(cmd, capture_output=True)
    assert r.returncode == 0 and r.stdout == data, r.stderr


def test_beyond_the_guarantee_loses_exactly_what_it_says(pdev):
    with daxkit.mount(pdev) as fs:
        data = _file(fs, "/f", 60)
        pages = _pages(fs, "/f")
        a, b = pages[10], pages[11]
        assert fs.parity_group(a) == fs.parity_group(b)
        pdev.inject_poison(a, 64)
        pdev.inject_poison(b, 64)  # the same line of two pages of one group: a double fault
        report = fs.repair()
        lost = report.as_dict()["lost"]
        assert lost and {d["path"] for d in lost} == {"/f"}
        for d in lost:
            assert 10 * P <= d["offset"] and d["offset"] + d["length"] <= 12 * P
        with fs.open("/f") as f:
            for d in lost:
                with pytest.raises(OSError) as ei:
                    f.pread(d["length"], d["offset"])
                assert ei.value.errno == errno.EIO
            assert f.pread(10 * P, 0) == data[: 10 * P]  # everything else reads
            assert f.pread(48 * P, 12 * P) == data[12 * P :]
    r = subprocess.run([sys.executable, "-m", "daxkit.cli.main", "repair", pdev.path], capture_output=True)
    assert r.returncode == 4, r.stderr


def test_silent_corruption_is_found_and_rebuilt(pdev):
    with daxkit.mount(pdev) as fs:
        data = _file(fs, "/f", 30)
        off = _pages(fs, "/f")[5]
    pdev.pwrite(b"\xff" * 100, off + 1000)  # bytes changed behind the filesystem, no poison
    with daxkit.mount(pdev) as fs:
        report = fs.repair()
        assert report.corrupt and report.corrupt[0][0] <= off + 1000 < sum(report.corrupt[0])
        assert report.lost == []
        with fs.open("/f") as f:
            assert f.read() == data


def test_cli_mkfs_repair_df(tmp_path):
    img = str(tmp_path / "c.img")

    def cli(*args):
        cmd = [sys.executable, "-m", "daxkit.cli.main", *args]
        return subprocess.run(cmd, capture_output=True, text=True)

    assert cli("create", img, "--size", "8M").returncode == 0
    r = cli("mkfs", img, "--redundancy", "parity", "--parity-group", "64")
    assert r.returncode == 0 and '"parity"' in r.stdout, r.stderr
    src = tmp_path / "src"
    src.write_bytes(os.urandom(50 * P))
    assert cli("put", img, str(src), "/f").returncode == 0
    r = cli("df", img)
    assert r.returncode == 0 and '"group": 64' in r.stdout
    r = cli("repair", img)
    assert r.returncode == 0 and '"lost": []' in r.stdout


@pytest.mark.parametrize("group", [0, 1, True, 2.5, "8", 2**40, -3])
def test_a_refused_parity_group_leaves_the_old_filesystem_whole(pdev, group):
    with daxkit.mount(pdev) as fs:
        data = _file(fs, "/keep", 3)
    with pytest.raises(ValueError):
        daxkit.mkfs(pdev, force=True, redundancy="parity", parity_group=group)
    with daxkit.mount(pdev, readonly=True) as ro, ro.open("/keep") as f:
        assert f.read() == data


def test_parity_group_names_the_callers_offset(pdev):
    with daxkit.mount(pdev) as fs:
        with pytest.raises(ValueError) as ei:
            fs.parity_group(0)
        assert "offset 0 " in str(ei.value)


def test_fsck_reports_silent_corruption_and_repair_clears_it(pdev):
    with daxkit.mount(pdev) as fs:
        data = _file(fs, "/f", 30)
        off = _pages(fs, "/f")[9]
    assert daxkit.fsck(pdev)["clean"]
    pdev.pwrite(b"\x00" * 16, off + 64)  # behind the filesystem: no poison, a wrong checksum
    report = daxkit.fsck(pdev)
    assert not report["clean"] and any(f"device offset {off} " in p for p in report["problems"]), report
    with daxkit.mount(pdev) as fs:
        assert fs.repair().corrupt
        with fs.open("/f") as f:
            assert f.read() == data
    assert daxkit.fsck(pdev)["clean"]


def _scrub(img):
    cmd = [sys.executable, "-m", "daxkit.cli.main", "start-scrub", img]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_scrub_verifies_checksums_and_rebuilds_silent_corruption(pdev):
    """SPEC 4.2: the scrub (start-scrub) verifies every checksum on a parity filesystem, beside
    making latent poison known; a mounted filesystem's scrub is left to its holder, and said so."""
    with daxkit.mount(pdev) as fs:
        data = _file(fs, "/f", 300)
        pages = _pages(fs, "/f")
        flipped = pages[3]
        poisoned = next(p for p in pages if fs.parity_group(p) != fs.parity_group(flipped))
    pdev.pwrite(b"\x5a" * 64, flipped + 512)  # silent corruption: no poison
    pdev.inject_error(poisoned // 512 + 2, 1, notify=False)
    out = _scrub(pdev.path)
    assert [r["offset"] // P * P for r in out["new_ranges"]] == [poisoned]
    sums = out["checksums"]
    assert sums["verified"] is True and sums["lost"] == []
    assert [c["offset"] // P * P for c in sums["corrupt"]] == [flipped]
    assert {r["offset"] // P * P for r in sums["repaired"]} == {poisoned}
    with daxkit.mount(pdev) as fs:
        assert fs.repair().as_dict() == {"repaired": [], "corrupt": [], "lost": []}  # nothing left to do
        with fs.open("/f") as f:
            assert f.read() == data
        pdev_flip = flipped + 2048
        pdev.pwrite(b"\xa5" * 8, pdev_flip)  # while this process holds the filesystem
        out = _scrub(pdev.path)
        assert out["checksums"]["verified"] is False and "mounted" in out["checksums"]["reason"]
        assert [c[0] // P * P for c in fs.repair().corrupt] == [flipped]  # the holder's repair finds it


def test_scrub_of_a_plain_filesystem_or_device_has_no_checksums(tmp_path):
    dev = daxkit.create(str(tmp_path / "plain.img"), 8 * MiB)
    try:
        assert "checksums" not in _scrub(dev.path)
        daxkit.mkfs(dev)
        assert "checksums" not in _scrub(dev.path)
    finally:
        dev.close()
