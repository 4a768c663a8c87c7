"""A Linux device-dax character device: /dev/daxX.Y.

Mapped with ``mmap`` (MAP_SHARED; the kernel wants the device's alignment, 2 MiB on most
platforms, for the mapping length and offset); known errors are the region's ``badblocks``,
clipped to this device through the ``resource`` files.  Clearing needs the platform's
clear-error command (ND_CMD_CLEAR_ERROR on the nvdimm bus, what ``ndctl clear-errors`` issues as
root); daxkit does not issue it, so a write over a listed sector is refused with EOPNOTSUPP and
that reason, and bytes elsewhere are plain stores.
"""

from __future__ import annotations

import os

from ...errors import ImageError, NotSupported
from ...medium.region import Region
from ...units import PAGE_SIZE, SECTOR_SIZE
from .real import RealBackend, open_fd
from .sysfs import Runs, dax_device_runs, parse_number, read_text


class DevDaxBackend(RealBackend):
    kind = "devdax"

    def __init__(self, path: str, st: os.stat_result, *, readonly: bool, sysfs_root: str):
        self.sysfs_root = sysfs_root
        # sysfs names the device by its number (dev/char/M:m links to its directory); a path
        # that sysfs does not know is named by itself
        link = os.path.join(sysfs_root, "dev", "char", f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
        known = os.path.isdir(link)
        self.name = os.path.basename(os.path.realpath(link if known else path))
        size = parse_number(read_text(os.path.join(link, "size"))) if known else None
        if size is None:
            size = parse_number(read_text(os.path.join(sysfs_root, "bus/dax/devices", self.name, "size")))
        if not size or size < PAGE_SIZE:
            raise ImageError(
                f"not a daxkit image, a block device or a device-dax device that sysfs knows "
                f"(no size for {self.name} under {sysfs_root})",
                path=path,
            )
        fd = open_fd(path, readonly)
        try:
            super().__init__(path, fd, size // PAGE_SIZE * PAGE_SIZE, SECTOR_SIZE, readonly)
            self._raw = Region(fd, [(0, 0, self.size)], self.size, writable=not readonly)
        except BaseException:
            os.close(fd)
            raise

    def hardware_runs(self) -> Runs:
        return dax_device_runs(self.sysfs_root, self.name)[0]

    def watched(self) -> list[str]:
        path = dax_device_runs(self.sysfs_root, self.name)[1]
        return [path] if path else []

    # A character device has no read/write: bytes under faulting pages go through a second,
    # unprotected mapping (a load of real poison there is what only hardware can show).
    def medium_read_into(self, buf, offset: int) -> int:
        n = memoryview(buf).nbytes
        memoryview(buf).cast("B")[:] = self._raw.mm[offset : offset + n]
        return n

    def medium_write(self, data, offset: int) -> int:
        n = memoryview(data).nbytes
        self._raw.mm[offset : offset + n] = data
        return n

    def write_clearing(self, data, offset: int) -> None:
        n = memoryview(data).nbytes
        if self.hardware_bad(offset, n):
            raise NotSupported(
                "device-dax: clearing poison needs the platform's clear-error command "
                "(`ndctl clear-errors`, as root); daxkit does not issue it",
                path=self.path,
            )
        self.medium_write(data, offset)

    def close(self) -> None:
        self._raw.close()
        super().close()
