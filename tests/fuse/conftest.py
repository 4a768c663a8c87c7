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
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        return f"libfuse3 cannot be loaded: {e}"
    return None


requires_fuse = pytest.mark.skipif(fuse_missing() is not None, reason=str(fuse_missing()))


def cli(*args, check=True, timeout=120):
    r = subprocess.run([sys.executable, "-m", "daxkit.cli.main", *args], capture_output=True, timeout=timeout)
    if check:
        assert r.returncode == 0, (args, r.stderr.decode())
    return r


class Mount:
    def __init__(self, image: str, mnt: str):
        self.image, self.mnt = image, mnt
        out = cli("mount", image, mnt).stdout.decode()
        import json

        self.pid = json.loads(out)["pid"]

    def path(self, name: str) -> str:
        return os.path.join(self.mnt, name.lstrip("/"))

    def umount(self) -> None:
        if os.path.ismount(self.mnt):
            cli("umount", self.mnt)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                pass
            time.sleep(0.05)
        raise AssertionError("the mount server did not exit after unmount")


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
    with daxkit.open(image) as dev:
        assert daxkit.fsck(dev)["clean"]
