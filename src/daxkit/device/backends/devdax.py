"""A Linux device-dax character device: /dev/daxX.Y.

Mapped with ``mmap`` (MAP_SHARED; the kernel wants the device's alignment, 2 MiB on most
platforms, for the mapping length and offset); known errors are the region's ``badblocks``,
clipped to this device through the ``resource`` files.  A write over a listed sector first
sends the platform's clear-error command for it (ND_CMD_CLEAR_ERROR through the bus's
/dev/ndctlN, what ``ndctl clear-errors`` uses; the kernel then drops the sectors from its
lists); without a bus to send it to, or where the platform does not clear, the write is refused
with EOPNOTSUPP and the reason, and without root with EACCES saying so.  Bytes elsewhere are
plain stores.  (Only hardware exercises the command: see tests/hardware.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from ...errors import DaxError, ImageError, InvalidArgument, NotSupported
from ...medium.region import Region
from ...units import PAGE_SIZE, SECTOR_SIZE
from .real import RealBackend, open_fd
from .sysfs import Runs, dax_device_place, dax_device_runs, parse_number, read_text

ND_IOCTL_CLEAR_ERROR = 0xC0204E04  # _IOWR('N', ND_CMD_CLEAR_ERROR, struct nd_cmd_clear_error)
_CLEAR = struct.Struct("=QQI4xQ")  # address, length, status, reserved, cleared
_DEFAULT_ALIGN = 2 << 20  # what device-dax uses where sysfs does not say (PMD size on x86-64)


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
        # the kernel maps a device-dax device only in whole units of its alignment
        device_dir = os.path.realpath(link) if known else ""
        self.align = parse_number(read_text(os.path.join(device_dir, "align"))) if known else None
        if not self.align or self.align & (self.align - 1) or self.align < PAGE_SIZE:
            self.align = _DEFAULT_ALIGN
        fd = open_fd(path, readonly)
        try:
            super().__init__(path, fd, size // PAGE_SIZE * PAGE_SIZE, SECTOR_SIZE, readonly)
            self._raw = self.map_region([(0, 0, self.size)], self.size)
        except BaseException:
            os.close(fd)
            raise

    def map_region(self, pieces: list[tuple[int, int, int]], length: int) -> Region:
        for _, foff, n in pieces:
            if foff % self.align or (n % self.align and foff + n != self.size):
                raise InvalidArgument(
                    f"device-dax maps whole units of its alignment ({self.align} bytes): "
                    f"offset {foff} length {n} is not one",
                    path=self.path,
                )
        return Region(self.fd, pieces, length, writable=not self.readonly, align=self.align)

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
        bad = self.hardware_bad(offset, n)
        if bad:
            self._clear_error(bad)
        self.medium_write(data, offset)
        if bad:
            self._check_cleared(offset, n, "the platform's clear-error command succeeded")

    def _clear_error(self, bad: list[tuple[int, int]]) -> None:
        """ND_CMD_CLEAR_ERROR over each listed range, by system physical address."""
        place = dax_device_place(self.sysfs_root, self.name)
        if place is None:
            raise NotSupported(
                "device-dax: clearing poison needs the platform's clear-error command, and sysfs shows "
                "no nvdimm bus (/dev/ndctlN) to send it to for this device",
                path=self.path,
            )
        bus, base = place
        try:
            fd = os.open(bus, os.O_RDWR | os.O_CLOEXEC)
        except PermissionError as e:
            raise DaxError(
                f"device-dax: clearing poison goes through {bus}, which needs root ({e.strerror})",
                errno=e.errno,
                path=self.path,
            ) from None
        except OSError as e:
            raise NotSupported(
                f"device-dax: cannot open {bus} to clear poison: {e.strerror}", path=self.path
            ) from None
        try:
            for s, length in bad:
                arg = bytearray(_CLEAR.pack(base + s, length, 0, 0))
                try:
                    fcntl.ioctl(fd, ND_IOCTL_CLEAR_ERROR, arg)
                except OSError as e:
                    code = e.errno if e.errno in (errno.EPERM, errno.EACCES) else errno.EOPNOTSUPP
                    raise DaxError(f"device-dax: the clear-error command failed: {e.strerror}",
                                   errno=code, path=self.path) from None  # fmt: skip
                _, _, status, cleared = _CLEAR.unpack(arg)
                if status or cleared < length:
                    raise NotSupported(
                        f"device-dax: the platform cleared {cleared} of {length} bytes at offset {s} "
                        f"(status {status:#x}): not clearable here",
                        path=self.path,
                    )
        finally:
            os.close(fd)

    def close(self) -> None:
        self._raw.close()
        super().close()
