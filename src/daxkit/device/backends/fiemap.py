"""FS_IOC_FIEMAP: where a file's bytes lie on its block device (linux/fiemap.h).

Rules
  * One ioctl, repeated until the kernel says FIEMAP_EXTENT_LAST; FIEMAP_FLAG_SYNC first, so
    delayed allocations have places.  Extents the kernel cannot place on the device (inline,
    encoded, unknown location) are left out: no sector of the device is under them.
  * A file system without FIEMAP (tmpfs, FUSE, NFS) gives no extents: nothing known can be
    under such a file (EOPNOTSUPP is not an error here).
"""

from __future__ import annotations

import errno
import fcntl
import struct

FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
_UNPLACED = 0x2 | 0x8 | 0x200  # UNKNOWN, ENCODED, DATA_INLINE
_HEAD = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, pad
_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, reserved64[2], flags, reserved[3]
_BATCH = 256


def file_extents(fd: int, length: int | None = None) -> list[tuple[int, int, int]]:
    """(logical, physical, length) byte extents of the file open at ``fd``, in file order."""
    out: list[tuple[int, int, int]] = []
    start, end = 0, (1 << 64) - 1 if length is None else length
    while start < end:
        buf = bytearray(_HEAD.size + _BATCH * _EXTENT.size)
        _HEAD.pack_into(buf, 0, start, end - start, FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                return []
            raise
        mapped = _HEAD.unpack_from(buf, 0)[3]
        if mapped == 0:
            break
        last = False
        for i in range(mapped):
            logical, physical, n, _, _, flags, *_ = _EXTENT.unpack_from(buf, _HEAD.size + i * _EXTENT.size)
            if not flags & _UNPLACED:
                out.append((logical, physical, n))
            start = logical + n
            last = bool(flags & FIEMAP_EXTENT_LAST)
        if last:
            break
    return out
