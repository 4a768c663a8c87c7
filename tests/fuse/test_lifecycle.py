"""Starting and ending a mount (SPEC 5, 6): a signal ends the server quietly with a clean image;
``umount`` of a busy mount fails with EBUSY unless asked to detach lazily; a missing mount point
is named as missing; nothing that is not a daxkit mount is ever unmounted."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

import daxkit
from daxkit import DaxError
from daxkit.fuse.mount import mount_background, serve, unmount

from .conftest import Mount, cli, make_image, requires_fuse, wait_exited

pytestmark = requires_fuse


def _wait_mounted(mnt, proc, timeout=15.0):
    deadline = time.time() + timeout
    while not os.path.ismount(mnt):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the mount did not come up"
        time.sleep(0.02)


def _assert_clean(image):
    with daxkit.open(image) as dev:
        report = daxkit.fsck(dev)
        assert report["clean"], report
        with daxkit.mount(dev, readonly=True) as fs:
            return sorted(fs.listdir("/"))


def test_sigint_ends_a_foreground_mount_quietly(tmp_path):
    image = make_image(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daxkit.cli.main", "mount", image, str(mnt), "--foreground"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_mounted(mnt, proc)
        with open(mnt / "kept", "wb") as f:
            f.write(b"x" * 5000)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)])
    assert b"Traceback" not in err and b"RuntimeError" not in err, err.decode()
    assert proc.returncode in (0, 130), (proc.returncode, err.decode())
    assert not os.path.ismount(mnt)
    assert _assert_clean(image) == ["kept"]


SERVE = (
    "import sys\n"
    "from daxkit.fuse.mount import serve\n"
    "print('returned', serve(sys.argv[1], sys.argv[2]), flush=True)\n"
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_serve_returns_the_signal_that_ended_it_even_with_a_file_open(tmp_path, sig):
    image = make_image(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, image, str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    held = None
    try:
        _wait_mounted(mnt, proc)
        held = open(mnt / "open", "wb")  # a busy mount still ends on a signal
        held.write(b"y" * 100)
        held.flush()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if held is not None:
            try:
                held.close()
            except OSError:
                pass  # the server is gone: ENOTCONN
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)])
    assert proc.returncode == 0 and out.decode().split() == ["returned", str(int(sig))], (out, err.decode())
    assert b"Traceback" not in err
    assert not os.path.ismount(mnt)
    assert _assert_clean(image) == ["open"]


def test_sigterm_ends_a_background_server_and_releases_the_image(tmp_path):
    image = make_image(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(image, str(mnt))
    try:
        with open(m.path("a"), "w") as f:
            f.write("a")
        os.kill(m.pid, signal.SIGTERM)
        assert wait_exited(m.pid)
        assert not os.path.ismount(mnt)
    finally:
        m.umount()
    with daxkit.open(image) as dev, daxkit.mount(dev) as fs:  # read-write: the holder is gone
        assert fs.listdir("/") == ["a"]


def test_umount_of_a_busy_mount_fails_unless_lazy(tmp_path):
    image = make_image(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(image, str(mnt))
    f = None
    try:
        f = open(m.path("busy"), "w+")
        f.write("data")
        f.flush()
        r = cli("umount", str(mnt), check=False)
        assert r.returncode != 0 and b"busy" in r.stderr and b"Traceback" not in r.stderr, r.stderr
        with pytest.raises(DaxError) as ei:
            unmount(str(mnt))
        assert ei.value.errno == errno.EBUSY and "busy" in str(ei.value)
        assert os.path.ismount(mnt)
        # lazily: detached from the tree at once, served until the last user lets go
        unmount(str(mnt), lazy=True)
        assert not os.path.ismount(mnt)
        f.seek(0)
        assert f.read() == "data"
        f.close()
        f = None
        assert wait_exited(m.pid)
    finally:
        if f is not None:
            f.close()
        m.umount()
    assert _assert_clean(image) == ["busy"]


def test_umount_refuses_what_is_not_a_mount(tmp_path):
    with pytest.raises(DaxError) as ei:
        unmount(str(tmp_path / "missing"))
    assert ei.value.errno == errno.ENOENT and "does not exist" in str(ei.value)
    with pytest.raises(DaxError) as ei:
        unmount(str(tmp_path))
    assert ei.value.errno == errno.EINVAL and "not a mount" in str(ei.value)
    r = cli("umount", str(tmp_path), check=False)
    assert r.returncode != 0 and b"not a mount" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_umount_leaves_other_filesystems_alone(tmp_path):
    other = tmp_path / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(other)], check=True)
    try:
        for lazy in (False, True):
            with pytest.raises(DaxError) as ei:
                unmount(str(other), lazy=lazy)
            assert ei.value.errno == errno.EINVAL and "not a daxkit mount" in str(ei.value)
            assert os.path.ismount(other)
    finally:
        subprocess.run(["umount", str(other)])


def test_a_missing_mount_point_is_named_missing(tmp_path):
    image = make_image(tmp_path)
    missing = str(tmp_path / "nope")
    for mount in (serve, mount_background):
        with pytest.raises(DaxError) as ei:
            mount(image, missing)
        assert ei.value.errno == errno.ENOENT and "does not exist" in str(ei.value), mount
    with pytest.raises(DaxError) as ei:
        serve(image, image)  # a file
    assert ei.value.errno == errno.ENOTDIR
    r = cli("mount", image, missing, check=False)
    assert r.returncode != 0 and b"does not exist" in r.stderr, r.stderr


def test_umount_returns_once_the_image_is_free(tmp_path):
    """The kernel detaches a mount before its server closes the image: `daxkit umount` waits for
    the server, so a command right after it never finds the filesystem still mounted."""
    image = make_image(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    src = tmp_path / "src"
    src.write_bytes(b"x" * 5000)
    for i in range(3):
        m = Mount(image, str(mnt))
        with open(m.path(f"f{i}"), "wb") as f:
            f.write(b"y" * 100)
        cli("umount", str(mnt))
        r = cli("put", image, str(src), f"/after{i}", check=False)
        assert r.returncode == 0, r.stderr
        m.umount()
    assert _assert_clean(image) == ["after0", "after1", "after2", "f0", "f1", "f2"]
