"""A Linux block device: /dev/pmemN (an fsdax namespace) or anything that stands in for one.

Mapped with ``mmap`` of the device; known errors from ``block/<name>/badblocks`` (already
namespace-relative), found by the device number; cleared by a write through the block device,
which the pmem driver turns into a clear of the medium (pmem_do_write -> pmem_clear_poison) and
removes from its badblocks list.
"""

from __future__ import annotations

import fcntl
import os
import struct

from ...errors import ImageError
from ...units import PAGE_SIZE, SECTOR_SIZE
from .real import RealBackend, open_fd
from .sysfs import BlockDevice, Runs, device_runs, find_block_device

BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t)


class BlockBackend(RealBackend):
    kind = "block"

    def __init__(self, path: str, st: os.stat_result, *, readonly: bool, sysfs_root: str):
        fd = open_fd(path, readonly)
        try:
            buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
            size = struct.unpack("Q", buf)[0] // PAGE_SIZE * PAGE_SIZE
            if size == 0:
                raise ImageError("block device is smaller than one page", path=path)
            self.dev: BlockDevice | None = find_block_device(
                sysfs_root, os.major(st.st_rdev), os.minor(st.st_rdev)
            )
            super().__init__(path, fd, size, SECTOR_SIZE, readonly)
        except BaseException:
            os.close(fd)
            raise

    def hardware_runs(self) -> Runs:
        return device_runs(self.dev) if self.dev is not None else []

    def watched(self) -> list[str]:
        return [self.dev.badblocks] if self.dev is not None else []

    def listed_at(self, sector: int, count: int) -> list[tuple[int, int]]:
        return [(sector + (self.dev.start if self.dev is not None else 0), count)]

    def write_clearing(self, data, offset: int) -> None:
        """Write through the block device and make it reach the driver (fdatasync), where the
        pmem driver clears the sectors it writes; then read the list again to see that it did."""
        n = self.medium_write(data, offset)
        os.fdatasync(self.fd)
        self._check_cleared(offset, n, f"wrote {n} bytes at offset {offset} through the block device")

    def describe(self) -> dict:
        out = super().describe()
        out["blockdev"] = self.dev.name if self.dev is not None else None
        return out
