"""daxfs: DaxFS and DaxFile (SPEC 3).

Rules
  * File data is reached only through the fsdax layer (``iomap_read`` / ``iomap_write``), which
    reaches the device only through ``direct_access``, ``recovery_write`` and
    ``zero_page_range``.  Metadata goes through the same primitives.
  * Every metadata operation is one log record (see layout.py), committed before it returns.
    Data blocks are written before the record that links them; freed blocks go back to the free
    list only after the record that frees them.
  * Metadata is kept twice (layout.py).  A read-write mount makes every copy whole before it
    serves anything, and rewrites all of it from memory when poison in metadata is notified;
    only the loss of every copy of something needed refuses a mount or shuts it down.
  * A read-write mount is the device's holder (one per device, across processes: EBUSY).  Its
    ``notify_failure`` turns a device range into owners through a reverse map: file data ->
    listeners (the FUSE adapter invalidates caches) and the mappings' own on_poison; metadata ->
    rewritten from memory; device removal (or metadata that cannot be rewritten) -> shutdown,
    after which every operation raises FilesystemShutdown.
  * In-place overwrites change no metadata; timestamps they touch are committed by fsync/close.

Theory of operation
  DaxFS is assembled from one part per seam, each a module of fs/ (the kernel's split of a
  filesystem): this file holds the mount, the read-only follower and the holder; commit.py the
  metadata log and checkpoints; namei.py path resolution; namespace.py the operations on names
  and attributes; alloc.py the block allocator; data.py file data; rmap.py the reverse map and
  the reports built on it; file.py the open file, DaxFile.  The parts share one state (the
  inodes in ``meta``, the free list, the lock) and call each other through ``self``.
"""

from __future__ import annotations

import errno
import threading
import weakref

from ..device.interface import MF_MEM_PRE_REMOVE, DaxOperations, Redundant
from ..errors import Busy, DaxError, FilesystemShutdown
from ..medium import ranges
from ..units import PAGE_SIZE
from . import superblock
from .alloc import BlockAlloc
from .commit import MetaCommit
from .data import FileData
from .file import DaxFile
from .meta import NAME_MAX
from .namei import Namei
from .namespace import Namespace
from .rmap import RepairReport, ReverseMap
from .superblock import EFSCORRUPTED, CorruptFilesystem
from .uapi import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    RWF_RECOVERY_DATA,
    UTIME_NOW,
    UTIME_OMIT,
    fs_error,
)

P = PAGE_SIZE
_FOLLOW_TRIES = 100
_INODE_COST_ESTIMATE = 64  # compressed checkpoint bytes per inode, for statfs's f_files

__all__ = ["DaxFS", "DaxFile", "RepairReport", "RWF_RECOVERY_DATA", "FALLOC_FL_KEEP_SIZE",
           "FALLOC_FL_PUNCH_HOLE", "FALLOC_FL_ZERO_RANGE", "UTIME_NOW", "UTIME_OMIT"]  # fmt: skip


class DaxFS(MetaCommit, Namei, Namespace, BlockAlloc, FileData, ReverseMap):
    """A mounted daxfs.  Use ``daxkit.mount(dev)``."""

    def __init__(self, dev: DaxOperations, *, readonly: bool = False):
        self._lower = dev
        try:  # a filesystem made with parity lives on the parity layer stacked on dev
            dev = superblock.open_stack(dev, readonly=readonly)
        except Busy:
            why = "filesystem is already mounted read-write (device has a holder)"
            raise Busy(why, path=dev.path) from None
        try:
            self._mount(dev, readonly)
        except BaseException:
            superblock.close_stack(dev, self._lower)
            raise

    def _mount(self, dev: DaxOperations, readonly: bool) -> None:
        self.dev = dev
        # What users see are offsets of the device they opened: a parity layer's data starts
        # further into it (bmap, scan, parity_group and repair reports add this).
        self._lower_off = dev.lower_offset if isinstance(dev, Redundant) else 0
        self.readonly = readonly
        self._lock = threading.RLock()
        self._shutdown: str | None = None
        self._unmounted = False
        # mounted read-write and not shut down: the fast paths' one test (a read-only mount
        # follows the writer, so each of its operations takes the checked path)
        self._ok = not readonly
        self._listeners: list = []
        self._creds = threading.local()  # as_user: the caller of this thread's operations
        self._opens: dict[int, int] = {}  # open DaxFiles per inode: an orphan lives until the last goes
        self._maps: dict[int, weakref.WeakSet] = {}
        self._meta_busy = 0  # inside a metadata write: poison news for metadata waits for its end
        self._meta_repair = False
        self._loaded = False  # news before the metadata is in memory is read by _mount_repair
        if readonly:
            self._install(superblock.Loaded(dev))
            self._loaded = True
            return
        # The claim comes first: a writer that loaded before another one committed and then
        # claimed would append over that writer's records (two read-write mounts, lost work).
        try:
            dev.holder = self
        except Busy:
            why = "filesystem is already mounted read-write (device has a holder)"
            raise Busy(why, path=dev.path) from None
        try:
            self._install(superblock.Loaded(dev))
            self._loaded = True
            self._mount_repair()
            for ino in self.meta.orphans():  # open when the last writer stopped: nobody holds them now
                self._free_orphan(ino)
        except BaseException:
            dev.holder = None
            raise

    def _mount_repair(self) -> None:
        """SPEC 4.2: every copy of the metadata whole before a read-write mount serves anything.
        The whole metadata area is read (latent poison in spare pages becomes known: its news
        waits, as inside any metadata write); a damaged, stale or poisoned copy anywhere means
        all of it is written afresh from the view in memory."""
        self._meta_busy += 1
        try:
            poisoned = superblock.scrub_metadata(self.dev, self.geometry)
        finally:
            self._meta_busy -= 1
        if poisoned or self._loaded_repair or self._meta_repair:
            self._rewrite_metadata()

    def _install(self, loaded: superblock.Loaded) -> None:
        if loaded.problems:
            n = len(loaded.problems)
            raise CorruptFilesystem(
                f"metadata damaged ({n} problems; run fsck): {loaded.problems[0]}", path=self.dev.path
            )
        self.meta, self.sb, self.geometry = loaded.meta, loaded.sb, loaded.g
        self._tail, self._seq, self._sb_pages = loaded.tail, loaded.seq, loaded.sb_pages
        self._loaded_repair = loaded.repair
        g = self.geometry
        self._reserve = max(2 * P, g.ckpt_bytes // 16)  # kept for operations that shrink metadata
        self._meta_bound = self.sb.ckpt_len + self._tail + self._tail // 4 + 64 * (self._seq - 1)
        self._free = ranges.subtract([(g.data_start, g.nblocks)], ranges.union([], self.meta.used_blocks()))

    # -- a read-only mount follows the writer (SPEC 3, "Sharing an image") ------------------------
    def _moved(self) -> bool:
        return superblock.changed(self.dev, self.sb, self._tail, self._seq, self._sb_pages)

    def _follow(self) -> None:
        """Load the writer's newest state if anything was committed since we looked: a handle
        then reads the new state, or ESTALE if its file is gone, never freed or reused blocks."""
        if self._moved():
            self._install(superblock.Loaded(self.dev))

    def _stable(self, fn, ino: int):
        """Run a read of inode ``ino`` on a view that held for its whole length.  On a
        read-only mount a commit may land while we copy; the read stands if the inode is the
        same afterwards (same size, same extents: a change that frees or moves its blocks changes
        them), else we go round again and meet the new state or ESTALE."""
        for _ in range(_FOLLOW_TRIES):
            self._check()
            before = self._placement(ino)
            try:
                result = fn()
            except DaxError:
                if self.readonly and self._moved():
                    continue
                raise
            if not self.readonly or not self._moved():
                return result
            self._follow()
            if before is not None and self._placement(ino) == before:
                return result
        raise fs_error(errno.EAGAIN, "the writer kept changing the file while it was read; try again")

    def _placement(self, ino: int):
        """Where an inode's bytes are: its size and extents (times do not move blocks)."""
        node = self.meta.inodes.get(ino)
        return None if node is None else (node.size, [tuple(e) for e in node.ext])

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> DaxFS:
        return self

    def __exit__(self, *exc) -> None:
        self.unmount()

    def __repr__(self) -> str:
        flags = (" ro" if self.readonly else "") + (" shutdown" if self._shutdown else "")
        return f"<DaxFS {self.dev.path!r}{flags}>"

    def unmount(self) -> None:
        with self._lock:
            if self._unmounted:
                return
            self._unmounted = True
            self._ok = False
            if not self.readonly and self.dev.holder is self:
                try:
                    self.dev.holder = None
                except DaxError:
                    pass
            superblock.close_stack(self.dev, self._lower)

    def add_failure_listener(self, callback) -> None:
        """``callback(ino, path, file_offset, length)`` when file data is lost."""
        self._listeners.append(callback)

    def _check(self, write: bool = False) -> None:
        if self._unmounted:
            raise fs_error(errno.EINVAL, "filesystem is not mounted")
        if self._shutdown:
            raise FilesystemShutdown(f"filesystem is shut down: {self._shutdown}", path=self.dev.path)
        if self.readonly:
            if write:
                raise fs_error(errno.EROFS, "filesystem is mounted read-only")
            self._follow()

    def _shut(self, reason: str) -> None:
        if self._shutdown is None:
            self._shutdown = reason
            self._ok = False

    def statfs(self) -> dict:
        """os.statvfs-shaped (SPEC 4.2): blocks of the data area; files are bounded by the
        metadata area, so f_ffree is an estimate of the inodes that still fit."""
        with self._lock:
            self._check()
            g = self.geometry
            free = ranges.total(self._free)
            used = len(self.meta.inodes)
            room = max(0, g.ckpt_bytes - self._reserve) // _INODE_COST_ESTIMATE
            return {
                "f_bsize": P, "f_frsize": P, "f_blocks": g.nblocks - g.data_start, "f_bfree": free,
                "f_bavail": free, "f_files": max(used, room), "f_ffree": max(0, room - used),
                "f_favail": max(0, room - used), "f_flag": 1 if self.readonly else 0, "f_namemax": NAME_MAX,
            }  # fmt: skip

    # -- the holder ---------------------------------------------------------------------------------
    def notify_failure(self, offset: int, length: int, flags: int) -> int:
        """The device tells us [offset, offset+length) failed (xfs_dax_notify_failure)."""
        with self._lock:
            if not self._loaded and not flags & MF_MEM_PRE_REMOVE:
                return 0  # the mount is still reading: what it reads, it sees
            return self._notify_failure(offset, length, flags)

    def _notify_failure(self, offset: int, length: int, flags: int) -> int:
        if flags & MF_MEM_PRE_REMOVE:
            self._shut("the device is being removed")
            for maps in self._maps.values():
                for m in list(maps):
                    m._revoke()
            return 0
        owners = self._owners(offset, length)
        if any(o["owner"] == "metadata" for o in owners):
            if self.readonly or self._shutdown or self._unmounted:
                return 0
            if self._meta_busy:  # our own metadata write met it: repaired when that write ends
                self._meta_repair = True
                return 0
            try:
                self._rewrite_metadata()  # the mount holds the whole metadata in memory
            except DaxError as e:
                self._shut(f"metadata lost at device offset {offset} (+{length}) and not rewritable: {e}")
                return -EFSCORRUPTED
        for o in owners:
            if o["owner"] == "file":
                for cb in list(self._listeners):
                    for path in o["paths"] or [None]:  # every name of the file
                        cb(o["ino"], path, o["file_offset"], o["file_length"])
        return 0
