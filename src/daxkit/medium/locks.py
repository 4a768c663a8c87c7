"""One-byte open-file-description locks: the cross-process holder claim of a device (byte 1)
and the scrubbers' mark (byte 2).  OFD locks belong to one open of a file, so a second open in
the same process is refused too, and they go with the open's last descriptor (or mapping)."""

from __future__ import annotations

import errno
import fcntl
import os
import struct

HOLDER_BYTE = 1  # flock (used for commits) does not interact with these
SCRUB_BYTE = 2


def ofd_lock(kind: int, byte: int) -> bytes:
    """struct flock for one byte (l_pid must be 0 for OFD locks)."""
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, byte, 1, 0)


def try_lock(fd: int, byte: int, kind: int = fcntl.F_WRLCK) -> bool:
    """Take the lock on ``byte`` without waiting; False when another open holds a conflicting one."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, ofd_lock(kind, byte))
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def unlock(fd: int, byte: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, ofd_lock(fcntl.F_UNLCK, byte))
