import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import daxkit


def fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse") or not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not usable here"
    if shutil.which("fusermount3") is None:
        return "fusermount3 (Debian fuse3) is not installed"
    return None


requires_fuse = pytest.mark.skipif(fuse_missing() is not None, reason=str(fuse_missing()))


def cli(*args, check=True, timeout=120):
    r = subprocess.run([sys.executable, "-m", "daxkit.cli.main", *args], capture_output=True, timeout=timeout)
    if check:
        assert r.returncode == 0, (args, r.stderr.decode())
    return r


def exited(pid: int) -> bool:
    """The process is gone or a zombie (an orphaned server waits for init to reap it, which
    can take seconds here; it has released the image by then)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return True
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_exited(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while not exited(pid):
        if time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


class Mount:
    """A background mount: through the CLI, or through the API for a private mount."""

    def __init__(self, image: str, mnt: str, *, private: bool = False):
        self.image, self.mnt = image, mnt
        if private:
            from daxkit.fuse.mount import mount_background

            self.pid = mount_background(image, mnt, private=True)
        else:
            self.pid = json.loads(cli("mount", image, mnt).stdout)["pid"]

    def path(self, name: str) -> str:
        return os.path.join(self.mnt, name.lstrip("/"))

    def umount(self) -> None:
        if os.path.ismount(self.mnt):
            cli("umount", self.mnt)
        assert wait_exited(self.pid), "the mount server did not exit after unmount"


def make_image(tmp_path, size="64M") -> str:
    image = str(tmp_path / "fuse.img")
    with daxkit.create(image, size) as dev:
        daxkit.mkfs(dev)
    return image


@pytest.fixture
def mounted(tmp_path):
    image = make_image(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(image, str(mnt))
    yield m
    m.umount()
    with daxkit.open(image) as dev:  # metadata whole; media errors a test left in file data may stay
        problems = daxkit.fsck(dev)["problems"]
        assert all(p.startswith("media error in file data: ") for p in problems), problems
