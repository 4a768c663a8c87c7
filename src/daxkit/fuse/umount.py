"""Unmounting a daxkit FUSE mount (SPEC 6): only daxkit mounts, a busy one only when asked to
detach lazily, and the image free when this returns."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import time

from ..errors import Busy, DaxError

FSTYPE = b"fuse.daxfs"  # what /proc/self/mountinfo shows for our mounts (subtype "daxfs")


# -- unmounting ----------------------------------------------------------------------------------
def _fstype_at(mountpoint: str) -> tuple[bytes, bytes]:
    """(type, source) of what is mounted at ``mountpoint`` (the topmost one); ENOENT if the path does
    not exist, EINVAL if it is not a mount point.  Read from mountinfo rather than stat, which
    fails on a mount whose server died (ENOTCONN)."""
    path = os.path.realpath(mountpoint)
    try:
        os.lstat(path)
    except FileNotFoundError:
        raise DaxError("mount point does not exist", errno=errno.ENOENT, path=mountpoint) from None
    except OSError:
        pass  # a dead FUSE mount: ENOTCONN; it exists
    want = os.fsencode(path)
    found = [(fstype, source) for point, _, fstype, source in mounts() if point == want]
    if not found:
        raise DaxError("not a mount point", errno=errno.EINVAL, path=mountpoint)
    return found[-1]


def mounts():
    """(mount point, "MAJ:MIN", type, source) of each mount this process sees, from mountinfo,
    oldest first (a later one covers an earlier one at the same point)."""
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            tail = fields[fields.index(b"-") + 1 :]
            yield point, fields[2].decode(), tail[0], tail[1] if len(tail) > 1 else b""


def unmount(mountpoint: str, lazy: bool = False) -> None:
    """Unmount a daxkit FUSE mount.  A busy mount (a file open in it, a process inside it) is
    EBUSY and stays mounted, unless ``lazy``: then it is detached from the tree now and its
    server ends when the last user lets go (umount -l)."""
    fstype, source = _fstype_at(mountpoint)
    if fstype != FSTYPE:
        raise DaxError(
            f"not a daxkit mount (it is {fstype.decode(errors='replace')})",
            errno=errno.EINVAL,
            path=mountpoint,
        )
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-uz" if lazy else "-u"] if tool else ["umount", "-l"] if lazy else ["umount"]
    r = subprocess.run([*cmd, mountpoint], capture_output=True, text=True)
    if r.returncode == 0:
        if not lazy:
            _wait_for_server(source)
        return
    why = r.stderr.strip() or r.stdout.strip()
    if "busy" in why.lower():
        raise Busy("mount point is busy: a file in it is open or a process is inside it "
                   "(umount --lazy detaches it anyway)", path=mountpoint)  # fmt: skip
    raise DaxError(f"cannot unmount: {why}", errno=errno.EPERM, path=mountpoint)


def _wait_for_server(source: bytes, timeout: float = 10.0) -> None:
    """The kernel detaches a mount before its server lets go of the image: wait for the server
    (its pid is in the mount's source, "daxkit:PID") so that the image is free when we return."""
    _, _, pid_text = source.partition(b":")
    pid = int(pid_text) if pid_text.isdigit() else 0
    if pid <= 0 or pid == os.getpid():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    return  # exited; its parent has not reaped it yet
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.005)
