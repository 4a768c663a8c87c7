"""The POSIX tree through the mount (SPEC 3, 6): what real programs do with links, special files,
owners and times (the issue's python -m venv, tar -xp, git clone --local, make after touch)."""

import os
import shutil
import socket
import stat
import subprocess
import tarfile
import time

import pytest

from .conftest import requires_fuse

pytestmark = requires_fuse


def test_links_special_files_and_an_unlinked_open_file(mounted):
    p = mounted.path
    with open(p("f"), "w") as f:
        f.write("data")
    os.symlink("f", p("l"))
    os.link(p("f"), p("h"))
    assert os.readlink(p("l")) == "f" and stat.S_ISLNK(os.lstat(p("l")).st_mode)
    assert os.stat(p("f")).st_nlink == 2 and os.stat(p("h")).st_ino == os.stat(p("f")).st_ino
    with open(p("l")) as f:
        assert f.read() == "data"
    with pytest.raises(OSError) as ei:
        os.open(p("l"), os.O_RDONLY | os.O_NOFOLLOW)
    assert ei.value.errno == 40  # ELOOP
    os.chmod(p("h"), 0o600)  # seen through the other name at once (the kernel holds one inode per name)
    assert stat.S_IMODE(os.lstat(p("f")).st_mode) == 0o600
    fd = os.open(p("f"), os.O_RDWR | os.O_NOFOLLOW)
    try:
        os.unlink(p("f"))
        assert os.stat(p("h")).st_nlink == 1
        os.unlink(p("h"))
        os.pwrite(fd, b"more", 4)  # the inode lives while it is open
        assert os.pread(fd, 8, 0) == b"datamore" and os.fstat(fd).st_nlink == 0
        os.ftruncate(fd, 2)
        assert os.fstat(fd).st_size == 2 and os.listdir(mounted.mnt) == ["l"]
    finally:
        os.close(fd)
    os.mkfifo(p("fifo"), 0o640)
    assert stat.S_ISFIFO(os.stat(p("fifo")).st_mode)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(p("sock"))
    assert stat.S_ISSOCK(os.stat(p("sock")).st_mode)
    if os.geteuid() == 0:
        os.mknod(p("null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
        assert os.stat(p("null")).st_rdev == os.makedev(1, 3)  # (a FUSE mount is nodev: never opened)
    want = sorted(["fifo", "l", "sock"] + (["null"] if os.geteuid() == 0 else []))
    assert sorted(os.listdir(mounted.mnt)) == want


def test_an_ftruncate_is_seen_at_once_through_the_other_names(mounted):
    """The kernel holds one inode per name: a truncate through an open handle invalidates the
    other names' cached attributes, as a truncate by path does."""
    p = mounted.path
    with open(p("f"), "w") as f:
        f.write("0123")
    os.link(p("f"), p("h"))
    assert os.stat(p("f")).st_size == os.stat(p("h")).st_size == 4  # both names' attributes cached
    fd = os.open(p("h"), os.O_RDWR)
    try:
        os.ftruncate(fd, 1)
        assert os.stat(p("f")).st_size == 1
        os.ftruncate(fd, 9)
        assert os.stat(p("f")).st_size == 9
    finally:
        os.close(fd)


def test_tar_xp_keeps_links_owners_and_times(mounted, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("hello")
    os.symlink("d/f", src / "sym")
    os.link(src / "d" / "f", src / "hard")
    os.utime(src / "d" / "f", ns=(1_000_000_000, 1_234_567_890_123_456_789))
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w") as t:
        for name in ("d", "d/f", "sym", "hard"):
            info = t.gettarinfo(src / name, name)
            info.uid, info.gid, info.uname, info.gname = 4321, 8765, "", ""
            t.addfile(info, open(src / name, "rb") if info.isfile() else None)
    r = subprocess.run(["tar", "-xpf", str(tar), "-C", mounted.mnt, "--numeric-owner"], capture_output=True)
    assert r.returncode == 0, r.stderr
    p = mounted.path
    assert os.readlink(p("sym")) == "d/f" and os.stat(p("hard")).st_ino == os.stat(p("d/f")).st_ino
    st = os.stat(p("d/f"))
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (4321, 8765)
    assert int(st.st_mtime) == 1_234_567_890 and st.st_nlink == 2


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_after_touch_rebuilds(mounted):
    p = mounted.path
    with open(p("Makefile"), "w") as f:
        f.write("out: in\n\tcp in out\n")
    with open(p("in"), "w") as f:
        f.write("1")
    run = lambda: subprocess.run(["make", "-C", mounted.mnt], capture_output=True, text=True)  # noqa: E731
    assert "cp in out" in run().stdout
    assert "up to date" in run().stdout
    os.utime(p("out"), ns=(0, os.stat(p("in")).st_mtime_ns - 10**9))
    subprocess.run(["touch", p("in")], check=True)
    assert "cp in out" in run().stdout


def test_a_write_through_one_name_is_seen_through_the_other_at_once(mounted):
    """libfuse gives each name its own kernel inode: a write through one name of a hard-linked
    file invalidates the cached attributes of the others, so their size and mtime are current
    on the very next stat (not after the attribute timeout)."""
    a, b = os.path.join(mounted.mnt, "a"), os.path.join(mounted.mnt, "b")
    with open(a, "wb") as f:
        f.write(b"12345")
    os.link(a, b)
    assert os.stat(b).st_size == 5  # b's attributes are cached now
    before = os.stat(b).st_mtime_ns
    time.sleep(0.01)
    fd = os.open(a, os.O_WRONLY)
    try:
        os.pwrite(fd, b"x" * 100, 4096)
    finally:
        os.close(fd)
    st = os.stat(b)
    assert st.st_size == 4196 and st.st_mtime_ns > before
