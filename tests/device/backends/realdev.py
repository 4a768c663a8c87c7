"""Real block devices for the real-backend tests: a loop device standing in for /dev/pmem0, a
file system on it, and a fake sysfs tree that names it pmem0 with chosen badblocks.  Physical
sectors of a file come from ``filefrag`` (e2fsprogs), not from daxkit's own FIEMAP reader."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time

import pytest

SECTOR = 512


def _run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def why_no_loop(*tools: str) -> str | None:
    """None when loop devices can be had here, else the reason to skip."""
    if os.geteuid() != 0:
        return "loop devices and mounts need root"
    for tool in ("losetup", "mount", "umount", "filefrag", *tools):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make sysdeps installs it)"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control: this machine has no loop devices"
    return None


def need_loop(*tools: str) -> None:
    reason = why_no_loop(*tools)
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def loop_device(backing: str, size: int):
    with open(backing, "wb") as f:
        f.truncate(size)
    try:
        dev = _run("losetup", "--find", "--show", backing).strip()
    except RuntimeError as e:
        pytest.skip(f"cannot set up a loop device: {e}")
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60)


@contextlib.contextmanager
def mounted(fstype: str, dev: str, mnt: str):
    if fstype == "xfs":
        _run("mkfs.xfs", "-q", "-f", dev)
    else:
        _run("mkfs.ext4", "-q", "-F", "-b", "4096", dev)  # DAX needs the block size to be the page size
    os.makedirs(mnt, exist_ok=True)
    _run("mount", "-t", fstype, dev, mnt)
    try:
        yield mnt
    finally:
        for _ in range(20):
            if subprocess.run(["umount", mnt], capture_output=True, timeout=60).returncode == 0:
                break
            time.sleep(0.1)
        else:  # something still has a file open there: detach now, the kernel finishes later
            subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=60)


def fake_sysfs(root: str, rdev: int, name: str = "pmem0") -> str:
    """A sysfs tree whose block/<name> is the device number ``rdev``; returns its badblocks path."""
    d = os.path.join(root, "block", name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "dev"), "w") as f:
        f.write(f"{os.major(rdev)}:{os.minor(rdev)}\n")
    path = os.path.join(d, "badblocks")
    set_badblocks(path, [])
    return path


def set_badblocks(path: str, runs) -> None:
    """Replace the list at once (as the kernel's file changes: never half written)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(f"{s} {n}\n" for s, n in runs))
    os.replace(tmp, path)


_EXTENT = re.compile(r"^\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+(\d+)\.\.\s*(\d+):\s+(\d+):")


def physical_sector(path: str, offset: int) -> int:
    """The device sector holding file byte ``offset``, as filefrag reports it."""
    out = _run("filefrag", "-v", "-b512", "-s", path)
    for line in out.splitlines():
        m = _EXTENT.match(line)
        if m:
            lstart, lend, pstart = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if lstart <= offset // SECTOR <= lend:
                return pstart + offset // SECTOR - lstart
    raise AssertionError(f"filefrag shows no extent at offset {offset} of {path}:\n{out}")
