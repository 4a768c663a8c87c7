"""A regular file on a file system (DAX-mounted or not).

Mapped with MAP_SHARED_VALIDATE|MAP_SYNC where the file system supports it (a DAX mount), plain
MAP_SHARED + msync otherwise.  Known errors: the badblocks of the block device under the file
system (``st_dev`` major:minor against ``block/*/dev``) met with the file's extents from
FS_IOC_FIEMAP, as file ranges.  A file on a device sysfs does not list (tmpfs, a network file
system) has no known errors: libpmem2's badblocks_none.

Clearing (libpmem2's pmem2_badblock_clear_fsdax, plus a quarantine): a page-aligned write and
fdatasync -- on a DAX mount the kernel's recovery write clears the medium -- then the file's
extents are checked against the list again.  Where the file still sits on a listed sector, its
blocks there go to a quarantine file beside it, so the file system cannot hand them out again:
cloned (FICLONERANGE, reflink: XFS) and then punched out and allocated afresh, or swapped with
fresh blocks of the quarantine file (EXT4_IOC_MOVE_EXT, ext4 without DAX); elsewhere only
punched out.  Then the data is written again and the extents checked once more.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import struct
from contextlib import suppress

from ...errors import InvalidArgument
from ...units import PAGE_SIZE, SECTOR_SIZE, align_down, align_up
from .fiemap import file_extents
from .real import RealBackend, open_fd
from .sysfs import BlockDevice, Runs, device_runs, file_bad_ranges, find_block_device

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range)
EXT4_IOC_MOVE_EXT = 0xC028660F  # _IOWR('f', 15, struct move_extent)
_TRIES = 4
QUARANTINE = ".daxkit-quarantine"  # beside the file: the bad blocks it no longer uses

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate: {os.strerror(err)}")


class FileBackend(RealBackend):
    kind = "file"
    map_sync = True

    def __init__(self, path: str, *, readonly: bool, sysfs_root: str):
        fd = open_fd(path, readonly)
        try:
            st = os.fstat(fd)
            size = st.st_size // PAGE_SIZE * PAGE_SIZE
            blk = st.st_blksize if st.st_blksize and not st.st_blksize & (st.st_blksize - 1) else PAGE_SIZE
            number = os.major(st.st_dev), os.minor(st.st_dev)
            self.dev: BlockDevice | None = find_block_device(sysfs_root, *number)
            self.quarantined = 0  # bytes of bad blocks moved into the quarantine file by this open
            super().__init__(path, fd, size, min(max(blk, SECTOR_SIZE), PAGE_SIZE), readonly)
        except BaseException:
            os.close(fd)
            raise

    def hardware_runs(self) -> Runs:
        if self.dev is None:
            return []
        dev_runs = device_runs(self.dev)
        if not dev_runs:
            return []  # no FIEMAP while nothing is listed: the common case costs one small read
        bad = file_bad_ranges(file_extents(self.fd, self.size), dev_runs)
        return [(s // SECTOR_SIZE, (align_up(s + n, SECTOR_SIZE) - s) // SECTOR_SIZE) for s, n in bad]

    def listed_at(self, sector: int, count: int) -> list[tuple[int, int]]:
        """File sectors as sectors of the disk's badblocks file, through the file's extents; a
        sector in a hole has no place on the device and is refused (EINVAL)."""
        start, end = sector * SECTOR_SIZE, (sector + count) * SECTOR_SIZE
        base = self.dev.start if self.dev is not None else 0
        out, covered = [], 0
        for logical, physical, n in file_extents(self.fd, self.size):
            s, e = max(start, logical), min(end, logical + n)
            if s < e:
                out.append((base + (physical + s - logical) // SECTOR_SIZE, (e - s) // SECTOR_SIZE))
                covered += e - s
        if covered != end - start:
            raise InvalidArgument(
                f"badblocks: file sectors {sector}+{count} are not all allocated on the device",
                path=self.path,
            )
        return out

    def watched(self) -> list[str]:
        return [self.dev.badblocks] if self.dev is not None else []

    def write_clearing(self, data, offset: int) -> None:
        view = memoryview(data).cast("B")
        n = self.medium_write(view, offset)
        os.fdatasync(self.fd)
        left = self.hardware_bad(offset, n)
        if not left:
            return
        for s, length in left:  # the file still sits on a listed sector: move off it
            start = max(offset, align_down(s, self.clear_err_unit))
            end = min(offset + n, align_up(s + length, self.clear_err_unit))
            self._relocate(start, end, view[start - offset : end - offset])
        self._check_cleared(offset, n, "the file was written and moved off its bad blocks")

    def _relocate(self, start: int, end: int, data) -> None:
        """Move [start, end) of the file off its blocks, keeping the old ones owned by the
        quarantine file where the file system allows (so they cannot be handed out again): XFS
        clones them there (FICLONERANGE), ext4 swaps them with fresh blocks of it
        (EXT4_IOC_MOVE_EXT, what e4defrag uses); elsewhere they are punched out.  Then the data
        is written again; a new block that is itself listed is moved off in turn (a few tries)."""
        q = self._open_quarantine()
        try:
            for _ in range(_TRIES):
                if q is None or not self._move_into(q, start, end):
                    if q is not None:
                        self._clone_into(q, start, end)
                    _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, end - start)
                    _fallocate(self.fd, 0, start, end - start)
                self.medium_write(data, start)
                os.fdatasync(self.fd)
                if not self.hardware_bad(start, end - start):
                    return
        finally:
            if q is not None:
                with suppress(OSError):
                    if os.fstat(q).st_size == 0:
                        os.unlink(self._quarantine_path())
                os.close(q)

    def _quarantine_path(self) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), QUARANTINE)

    def _open_quarantine(self) -> int | None:
        try:
            return os.open(self._quarantine_path(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None  # no room for it (a read-only directory): the blocks are only punched out

    def _clone_into(self, q: int, start: int, end: int) -> bool:
        at = align_up(os.fstat(q).st_size, PAGE_SIZE)
        try:
            fcntl.ioctl(q, FICLONERANGE, struct.pack("qQQQ", self.fd, start, end - start, at))
        except OSError:
            return False  # no reflink here
        self.quarantined += end - start
        return True

    def _move_into(self, q: int, start: int, end: int) -> bool:
        """Swap the file's blocks with freshly allocated ones of the quarantine file (ext4)."""
        blk = os.fstat(self.fd).st_blksize
        if start % blk or end % blk or blk % PAGE_SIZE and PAGE_SIZE % blk:
            return False
        at = align_up(os.fstat(q).st_size, max(blk, PAGE_SIZE))
        try:
            _fallocate(q, 0, at, end - start)
        except OSError:
            return False
        arg = bytearray(struct.pack("IIQQQQ", 0, q, start // blk, at // blk, (end - start) // blk, 0))
        try:
            fcntl.ioctl(self.fd, EXT4_IOC_MOVE_EXT, arg)
        except OSError:  # not ext4, or DAX (ext4 refuses to move extents of DAX files)
            with suppress(OSError):
                os.ftruncate(q, at)
            return False
        moved = struct.unpack_from("Q", arg, 32)[0] * blk
        self.quarantined += moved
        return moved == end - start

    def describe(self) -> dict:
        out = super().describe()
        out["blockdev"] = self.dev.name if self.dev is not None else None
        return out
