"""SPEC 3, "Sharing an image": read-only mounts beside a live writer see every completed
operation, follow it, never return bytes of blocks the writer freed or reused, and never report
damage that a torn view made up (issue 6 items 2 and 3)."""

import errno
import subprocess
import sys
import textwrap
import time

import pytest

import daxkit

MiB = 1 << 20
P = 4096

CHURN = textwrap.dedent(
    """
    import sys, time, daxkit
    dev = daxkit.open(sys.argv[1])
    fs = daxkit.mount(dev)
    with fs.open("/stable", "w") as f:
        f.write(bytes(range(256)) * 40)
    print("ready", flush=True)
    deadline = time.time() + float(sys.argv[2])
    i = 0
    while time.time() < deadline:
        name = f"/churn-{i % 7}"
        with fs.open(name, "w") as f:
            f.write(bytes([i % 251]) * (1000 + 37 * (i % 50)))
        if i % 3 == 0:
            fs.rename(name, name + "-moved")
            fs.unlink(name + "-moved")
        if i % 5 == 0:
            fs.mkdir(f"/dir-{i}")
            fs.rmdir(f"/dir-{i}")
        i += 1
    fs.unmount()
    print(i, flush=True)
    """
)


def _churn(image: str, seconds: float) -> subprocess.Popen:
    cmd = [sys.executable, "-c", CHURN, image, str(seconds)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def test_readers_beside_a_churning_writer_never_see_false_damage(tmp_path):
    image = str(tmp_path / "small.img")
    with daxkit.create(image, 2 * MiB) as dev:
        daxkit.mkfs(dev)
    seconds = 3
    writer = subprocess.Popen(
        [sys.executable, "-c", CHURN, image, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        checks = 0
        with daxkit.open(image) as dev:
            follower = daxkit.mount(dev, readonly=True)
            deadline = time.time() + seconds - 0.5
            while time.time() < deadline:
                report = daxkit.fsck(dev)
                assert report["clean"], report
                with daxkit.mount(dev, readonly=True) as ro:
                    assert "stable" in ro.listdir("/")
                    with ro.open("/stable") as f:
                        assert f.read() == bytes(range(256)) * 40
                assert "stable" in follower.listdir("/")
                with follower.open("/stable") as f:
                    assert f.read() == bytes(range(256)) * 40
                checks += 1
            follower.unmount()
        assert checks >= 2
    finally:
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0
    assert int(out.split()[-1]) > 100  # the log wrapped many times over
    with daxkit.open(image) as dev:
        assert daxkit.fsck(dev)["clean"]


def test_cli_readers_beside_a_churning_writer(tmp_path):
    image = str(tmp_path / "small.img")
    with daxkit.create(image, 2 * MiB) as dev:
        daxkit.mkfs(dev)
    writer = _churn(image, 2)
    try:
        assert writer.stdout.readline().strip() == "ready"
        for _ in range(4):
            for args in (["fsck", image], ["ls", image, "/", "-l"], ["get", image, "/stable", "-"]):
                r = subprocess.run(
                    [sys.executable, "-m", "daxkit.cli.main", *args], capture_output=True, timeout=60
                )
                assert r.returncode == 0, (args, r.stderr)
    finally:
        writer.communicate(timeout=60)


@pytest.fixture
def writer_and_reader(tmp_path, request):
    """A read-write mount and a read-only mount of one image, through two opens."""
    image = str(tmp_path / "fs.img")
    with daxkit.create(image, getattr(request, "param", 8 * MiB)) as dev:
        daxkit.mkfs(dev)
    wdev, rdev = daxkit.open(image), daxkit.open(image)
    fs, ro = daxkit.mount(wdev), daxkit.mount(rdev, readonly=True)
    yield fs, ro
    fs.unmount()
    ro.unmount()
    wdev.close()
    rdev.close()


def test_a_read_only_mount_never_returns_reused_blocks(writer_and_reader):
    """Issue 6 item 2: A opens /old read-only; B unlinks it and writes /new into the same
    blocks.  A's handle must not read B's bytes, and A's listing must follow."""
    fs, ro = writer_and_reader
    with fs.open("/old", "w") as f:
        f.write(b"O" * (4 * P))
    old = ro.open("/old")
    assert old.pread(10, 0) == b"O" * 10
    sectors = [e["sector"] for e in fs.bmap("/old")]
    fs.unlink("/old")
    with fs.open("/new", "w") as f:
        f.write(b"N" * (4 * P))
    assert [e["sector"] for e in fs.bmap("/new")] == sectors  # the blocks were reused
    with pytest.raises(OSError) as ei:
        old.pread(10, 0)
    assert ei.value.errno == errno.ESTALE
    assert ro.listdir("/") == ["new"]
    with ro.open("/new") as f:
        assert f.read() == b"N" * (4 * P)
    # and a file rewritten in place is read in its new state
    with fs.open("/new", "r+") as f:
        f.truncate(P)
    with ro.open("/new") as f:
        assert f.read() == b"N" * P


@pytest.mark.parametrize("writer_and_reader", [2 * MiB], indirect=True)
def test_a_read_only_mount_follows_checkpoints(writer_and_reader):
    fs, ro = writer_and_reader
    epoch = fs.sb.epoch
    i = 0
    while fs.sb.epoch < epoch + 3:  # several log wraps
        fs.mkdir(f"/d{i}")
        i += 1
        if i % 50 == 0:
            assert ro.listdir("/") == fs.listdir("/")
    assert ro.listdir("/") == fs.listdir("/")
