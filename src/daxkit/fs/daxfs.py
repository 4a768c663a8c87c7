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
"""

from __future__ import annotations

import errno
import math
import os
import threading
import time
import weakref
import zlib
from bisect import bisect_right

from .._copymc import copy_mc_bytes
from ..device.interface import MF_MEM_PRE_REMOVE, DaxOperations, Mapping, RecoveredData, Redundant
from ..errors import (
    Busy,
    DaxError,
    FilesystemShutdown,
    InvalidArgument,
    MediaError,
    NoSpace,
    NotSupported,
)
from ..fsdax.iomap import (
    dax_store_fn,
    dax_window,
    iomap_read,
    iomap_read_recover,
    iomap_write,
    iomap_zero_pages,
)
from ..medium import ranges
from ..units import PAGE_SIZE, SECTOR_SIZE
from . import layout, superblock
from .layout import Superblock
from .meta import NAME_MAX, ROOT, TIME_NS_MAX, TIME_NS_MIN, Inode, check_name
from .superblock import EFSCORRUPTED, CorruptFilesystem, meta_write

RWF_RECOVERY_DATA = 0x20  # the flag proposed for preadv2 in the kernel's recovery-read series
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

P = PAGE_SIZE
_SHIFT = P.bit_length() - 1
_MASK = P - 1
_now = time.time_ns
_FOLLOW_TRIES = 100
UTIME_NOW = (1 << 30) - 1  # the kernel's tv_nsec values for utimensat(2)
UTIME_OMIT = (1 << 30) - 2
_INODE_COST_ESTIMATE = 64  # compressed checkpoint bytes per inode, for statfs's f_files


def _time_ns(t, now: int, unit: str) -> int:
    """One time for utime: UTIME_NOW/UTIME_OMIT, an int (nanoseconds, or seconds when ``unit``
    is "s"), or a finite float; EINVAL for anything else."""
    if unit == "ns" and type(t) is int and t in (UTIME_NOW, UTIME_OMIT):
        return now if t == UTIME_NOW else UTIME_OMIT
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise InvalidArgument(f"utime: time must be a number, not {type(t).__name__}")
    if isinstance(t, float) and not math.isfinite(t):
        raise InvalidArgument(f"utime: time {t!r} is not finite")
    ns = t if unit == "ns" and isinstance(t, int) else round(t * (1 if unit == "ns" else 10**9))
    if not TIME_NS_MIN <= ns <= TIME_NS_MAX:
        raise InvalidArgument(f"utime: time {t!r} is out of range")
    return ns


def _mode(mode) -> int:
    """A mode_t: what chmod(2) takes (bits past 07777 are ignored, as the kernel does)."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0xFFFFFFFF:
        raise InvalidArgument(f"mode must be an int from 0 to 0o37777777777, not {mode!r}")
    return mode


def _fs_error(code: int, message: str) -> DaxError:
    return DaxError(message, errno=code)


class DaxFS:
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
        raise _fs_error(errno.EAGAIN, "the writer kept changing the file while it was read; try again")

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
            raise _fs_error(errno.EINVAL, "filesystem is not mounted")
        if self._shutdown:
            raise FilesystemShutdown(f"filesystem is shut down: {self._shutdown}", path=self.dev.path)
        if self.readonly:
            if write:
                raise _fs_error(errno.EROFS, "filesystem is mounted read-only")
            self._follow()

    def _shut(self, reason: str) -> None:
        if self._shutdown is None:
            self._shutdown = reason
            self._ok = False

    # -- committing metadata ----------------------------------------------------------------------
    def _commit(self, muts: list, *, use_reserve: bool = False) -> None:
        """One operation: the record is in the log (or in a new checkpoint) when this returns.

        Space: the metadata must always fit a checkpoint, or a full log could never be folded
        and the filesystem would wedge.  ``_meta_bound`` is an upper bound on the compressed
        size of the current metadata (the last checkpoint plus every record logged since, with
        slack); while it stays under the checkpoint area less a reserve, nothing needs
        checking.  Operations that do not grow the metadata (deletes, shrinking truncates,
        renames, attribute updates) pass ``use_reserve`` and may use the reserve, so a full
        filesystem can always be emptied; the rest get ENOSPC when even a fresh checkpoint
        would not leave the reserve free."""
        undo = self.meta.apply(muts)
        try:
            g = self.geometry
            rec, w1, w2 = layout.encode_record(self.sb.epoch, self._seq, muts)
            limit = g.ckpt_bytes - (0 if use_reserve else self._reserve)
            cost = len(rec) + len(rec) // 4 + 64
            if self._tail + len(rec) > g.log_bytes or self._meta_bound + cost > limit:
                self._checkpoint(limit)
            else:
                try:
                    self._log_append(rec, w1, w2)
                except MediaError:
                    # a log copy met known poison: the whole state is in memory, so a fresh
                    # checkpoint commits this operation and makes every copy whole again
                    self._rewrite_metadata()
                else:
                    self._tail += len(rec)
                    self._seq += 1
                    self._meta_bound += cost
            if self._meta_repair and not self._meta_busy:
                self._rewrite_metadata()
        except MediaError as e:
            self.meta.undo(undo)
            self._shut(f"metadata write failed: {e}")
            raise FilesystemShutdown(
                f"filesystem is shut down: {self._shutdown}", path=self.dev.path
            ) from None
        except BaseException:
            self.meta.undo(undo)
            raise

    def _log_append(self, rec: bytes, w1: int, w2: int) -> None:
        """Record ``_seq`` at the tail of both log copies, in layout.py's order: the bytes in A
        and B (commit words zero), then each commit word in A before B; the first word in A is
        the commit point, the other three survive its loss."""
        g = self.geometry
        a, b = (g.log_copy_start(copy) * P + self._tail for copy in (0, 1))
        word = layout.commit_word(self.sb.epoch, self._seq)
        self._meta_busy += 1
        try:
            meta_write(self.dev, a, rec)
            meta_write(self.dev, b, rec)
            for at in (w1, w2):
                meta_write(self.dev, a + at, word)
                meta_write(self.dev, b + at, word)
        finally:
            self._meta_busy -= 1

    def _checkpoint(self, limit: int | None = None) -> None:
        g, sb = self.geometry, self.sb
        raw = layout.encode_checkpoint(self.meta.checkpoint_doc())
        limit = g.ckpt_bytes if limit is None else limit
        if len(raw) > limit:
            raise NoSpace(
                f"metadata area full: the metadata would take {len(raw)} bytes compressed, "
                f"{limit} are available to this operation"
            )
        area = 1 - sb.area
        new = Superblock(
            sb.sb_seq + 1, sb.epoch + 1, area, len(raw), zlib.crc32(raw), g, sb.uuid, sb.redundancy
        )
        self._meta_busy += 1
        try:
            superblock.write_checkpoint(self.dev, g, area, raw)  # both copies, read back
            superblock.write_superblock(self.dev, new)  # both slots; the first is the commit point
        finally:
            self._meta_busy -= 1
        self.sb, self._tail, self._seq = new, 0, 1
        self._meta_bound = len(raw)

    def _rewrite_metadata(self) -> None:
        """A damaged or poisoned copy of metadata, with the whole view in memory: write a fresh
        checkpoint (both copies) and both superblocks, each read back, so latent poison under
        them is found and cleared; that leaves the log and the other area spare, so every
        poisoned page left in the metadata area is zeroed and cleared.  Every copy is whole
        again and nothing that the mount needs is lost."""
        self._meta_repair = False
        self._checkpoint()
        g, sb = self.geometry, self.sb
        pages = -(-sb.ckpt_len // P)
        live = {0, 1} | {g.ckpt_copy_start(sb.area, c) + i for c in (0, 1) for i in range(pages)}
        for off, n in self.dev.known_errors(0, g.data_start * P):
            for pg in range(off // P, (off + n + P - 1) // P):
                if pg not in live:
                    iomap_zero_pages(self.dev, pg, 1)
        self._loaded_repair = False

    def sync(self) -> None:
        """Write a checkpoint now (shortens the next mount's replay)."""
        with self._lock:
            self._check(write=True)
            try:
                self._checkpoint()
            except MediaError as e:
                self._shut(f"checkpoint failed: {e}")
                raise FilesystemShutdown(f"filesystem is shut down: {self._shutdown}") from None

    # -- paths ------------------------------------------------------------------------------------
    @staticmethod
    def _parts(path: str) -> list[str]:
        if not isinstance(path, str):
            raise InvalidArgument(f"path must be a str, not {type(path).__name__}")
        parts = [p for p in path.split("/") if p and p != "."]
        for p in parts:  # every path operation, lookups included (the VFS checks in lookup)
            if len(p) > NAME_MAX // 4 and len(p.encode("utf-8", "surrogatepass")) > NAME_MAX:
                raise _fs_error(errno.ENAMETOOLONG, f"{path}: a name is longer than {NAME_MAX} bytes")
        return parts

    def _resolve(self, path: str) -> Inode:
        node = self.meta.inodes[ROOT]
        stack = [node]
        for part in self._parts(path):
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                node = stack[-1]
                continue
            if not node.is_dir:
                raise _fs_error(errno.ENOTDIR, f"{path}: not a directory")
            child = node.ents.get(part)
            if child is None:
                raise _fs_error(errno.ENOENT, f"{path}: no such file or directory")
            node = self.meta.inodes[child]
            stack.append(node)
        return node

    def _parent(self, path: str) -> tuple[Inode, str]:
        parts = self._parts(path)
        if not parts or parts[-1] == "..":
            raise InvalidArgument(f"{path!r} does not name an entry")
        parent = self._resolve("/".join(parts[:-1]))
        if not parent.is_dir:
            raise _fs_error(errno.ENOTDIR, f"{path}: parent is not a directory")
        why = check_name(parts[-1])
        if why:
            raise _fs_error(errno.ENAMETOOLONG if "longer" in why else errno.EINVAL, f"{path}: {why}")
        return parent, parts[-1]

    @staticmethod
    def _touch(node: Inode, now: float) -> list:
        node = node.copy()
        node.mtime = node.ctime = now
        return ["i", node.ino, node.to_json()]

    # -- namespace operations -------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        with self._lock:
            self._check()
            try:
                self._resolve(path)
                return True
            except DaxError:
                return False

    def stat(self, path: str) -> os.stat_result:
        with self._lock:
            self._check()
            return self._stat(self._resolve(path))

    def _stat(self, node: Inode) -> os.stat_result:
        blocks = node.blocks() * (P // 512)
        a, m, c = node.atime, node.mtime, node.ctime
        seq = (node.st_mode(), node.ino, 0, node.nlink, 0, 0, node.size, a // 10**9, m // 10**9, c // 10**9)
        extra = {
            "st_atime": a / 1e9, "st_mtime": m / 1e9, "st_ctime": c / 1e9,
            "st_atime_ns": a, "st_mtime_ns": m, "st_ctime_ns": c,
            "st_blocks": blocks, "st_blksize": P,
        }  # fmt: skip
        return os.stat_result(seq, extra)

    def listdir(self, path: str = "/") -> list[str]:
        with self._lock:
            self._check()
            node = self._resolve(path)
            if not node.is_dir:
                raise _fs_error(errno.ENOTDIR, f"{path}: not a directory")
            return sorted(node.ents)

    def scandir(self, path: str = "/") -> list[tuple[str, os.stat_result]]:
        """(name, stat) of every entry, sorted by name, from one view: beside a live writer a
        listdir followed by stats could meet names that are already gone."""
        with self._lock:
            self._check()
            node = self._resolve(path)
            if not node.is_dir:
                raise _fs_error(errno.ENOTDIR, f"{path}: not a directory")
            return [(name, self._stat(self.meta.inodes[ino])) for name, ino in sorted(node.ents.items())]

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        mode = _mode(mode) & 0o7777
        with self._lock:
            self._check(write=True)
            parent, name = self._parent(path)
            if name in parent.ents:
                raise _fs_error(errno.EEXIST, f"{path}: exists")
            ino, now = self.meta.next_ino, time.time_ns()
            node = Inode(ino, "d", mode, now)
            p2 = parent.copy()
            p2.nlink += 1
            p2.mtime = p2.ctime = now
            self._commit(
                [
                    ["n", ino + 1],
                    ["i", ino, node.to_json()],
                    ["d", parent.ino, name, ino],
                    ["i", p2.ino, p2.to_json()],
                ]
            )

    def _entry(self, path: str) -> tuple[Inode, str, Inode]:
        """(parent, name, inode) of an existing entry; ENOENT otherwise."""
        parent, name = self._parent(path)
        ino = parent.ents.get(name)
        if ino is None:
            raise _fs_error(errno.ENOENT, f"{path}: no such file or directory")
        return parent, name, self.meta.inodes[ino]

    def rmdir(self, path: str) -> None:
        with self._lock:
            self._check(write=True)
            parent, name, node = self._entry(path)
            ino = node.ino
            if not node.is_dir:
                raise _fs_error(errno.ENOTDIR, f"{path}: not a directory")
            if node.ents:
                raise _fs_error(errno.ENOTEMPTY, f"{path}: directory not empty")
            p2 = parent.copy()
            p2.nlink -= 1
            p2.mtime = p2.ctime = time.time_ns()
            muts = [["d", parent.ino, name, None], ["i", ino, None], ["i", p2.ino, p2.to_json()]]
            self._commit(muts, use_reserve=True)

    def unlink(self, path: str) -> None:
        with self._lock:
            self._check(write=True)
            parent, name, node = self._entry(path)
            ino = node.ino
            if node.is_dir:
                raise _fs_error(errno.EISDIR, f"{path}: is a directory")
            freed = [(db, cnt) for _, db, cnt in node.ext]
            self._commit(
                [["d", parent.ino, name, None], ["i", ino, None], self._touch(parent, time.time_ns())],
                use_reserve=True,
            )
            self._release(ino, freed)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._check(write=True)
            sp, sname = self._parent(src)
            dp, dname = self._parent(dst)
            ino = sp.ents.get(sname)
            if ino is None:
                raise _fs_error(errno.ENOENT, f"{src}: no such file or directory")
            node = self.meta.inodes[ino]
            if node.is_dir:  # no directory may move under itself
                paths = self.meta.paths()
                if dp.ino == ino or paths.get(dp.ino, "/").startswith(paths[ino].rstrip("/") + "/"):
                    raise InvalidArgument(f"cannot move {src} under itself ({dst})")
            if sp.ino == dp.ino and sname == dname:
                return
            now = time.time_ns()
            muts: list = [["d", sp.ino, sname, None], ["d", dp.ino, dname, ino]]
            freed: list = []
            old = dp.ents.get(dname)
            if old is not None and self.meta.inodes[old].is_dir:
                # do_renameat2: a target that is an ancestor of the source is ENOTEMPTY,
                # checked before any type rule
                paths = self.meta.paths()
                if sp.ino == old or paths.get(sp.ino, "").startswith(paths[old].rstrip("/") + "/"):
                    raise _fs_error(errno.ENOTEMPTY, f"{dst}: is an ancestor of {src}")
            if old is not None:
                onode = self.meta.inodes[old]
                if onode.is_dir != node.is_dir:
                    code = errno.EISDIR if onode.is_dir else errno.ENOTDIR
                    raise _fs_error(
                        code, f"{dst}: cannot replace {'a directory' if onode.is_dir else 'a file'}"
                    )
                if onode.is_dir and onode.ents:
                    raise _fs_error(errno.ENOTEMPTY, f"{dst}: directory not empty")
                muts.append(["i", old, None])
                freed = [(db, cnt) for _, db, cnt in onode.ext]
            sp2 = sp.copy()
            sp2.mtime = sp2.ctime = now
            if dp.ino == sp.ino:
                if old is not None and node.is_dir:
                    sp2.nlink -= 1
                muts.append(["i", sp2.ino, sp2.to_json()])
            else:
                dp2 = dp.copy()
                dp2.mtime = dp2.ctime = now
                if node.is_dir:
                    sp2.nlink -= 1
                    if old is None:
                        dp2.nlink += 1
                muts += [["i", sp2.ino, sp2.to_json()], ["i", dp2.ino, dp2.to_json()]]
            self._commit(muts, use_reserve=old is not None or len(dname) <= len(sname))
            if old is not None:
                self._release(old, freed)

    def _update(self, path: str, change) -> None:
        """One inode's attributes changed by ``change(node)`` on a copy, committed."""
        with self._lock:
            self._check(write=True)
            node = self._resolve(path).copy()
            change(node)
            node.ctime = time.time_ns()
            self._commit([["i", node.ino, node.to_json()]], use_reserve=True)

    def chmod(self, path: str, mode: int) -> None:
        mode = _mode(mode)
        self._update(path, lambda node: setattr(node, "mode", mode & 0o7777))

    def utime(self, path: str, times=None) -> None:
        """Set atime and mtime (ctime moves to now), as utimensat(2) does.  ``times`` is
        ``(atime_ns, mtime_ns)`` in integer nanoseconds, either of which may be ``UTIME_NOW`` or
        ``UTIME_OMIT``; None sets both to now; a bare number is the mtime in seconds.  A time that
        is not a finite number a 64-bit nanosecond count can hold is EINVAL."""
        now = time.time_ns()
        if times is None:
            atime, mtime = now, now
        elif isinstance(times, (tuple, list)) and len(times) == 2:
            atime, mtime = (_time_ns(t, now, "ns") for t in times)
        else:
            atime, mtime = UTIME_OMIT, _time_ns(times, now, "s")

        def change(node: Inode) -> None:
            if atime != UTIME_OMIT:
                node.atime = atime
            if mtime != UTIME_OMIT:
                node.mtime = mtime

        self._update(path, change)

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

    # -- files -------------------------------------------------------------------------------------
    def open(self, path: str, mode: str = "r") -> DaxFile:
        flags = {"r": (1, 0, 0, 0), "r+": (1, 1, 0, 0), "w": (0, 1, 1, 1), "w+": (1, 1, 1, 1),
                 "a": (0, 1, 1, 0), "a+": (1, 1, 1, 0), "x": (0, 1, 1, 2), "x+": (1, 1, 1, 2)}  # fmt: skip
        key = mode.replace("b", "")
        if key not in flags:
            raise InvalidArgument(f"unknown open mode {mode!r}")
        readable, writable, create, trunc = flags[key]
        with self._lock:
            self._check(write=bool(writable))
            try:
                node = self._resolve(path)
                if trunc == 2:
                    raise _fs_error(errno.EEXIST, f"{path}: exists")
                if node.is_dir:
                    raise _fs_error(errno.EISDIR, f"{path}: is a directory")
                if trunc == 1 and (node.size or node.ext):
                    self._truncate(node.ino, 0)
            except DaxError as e:
                if e.errno != errno.ENOENT or not create:
                    raise
                node = self._create(path)
            return DaxFile(self, node.ino, path, bool(readable), bool(writable), key.startswith("a"))

    def _create(self, path: str, mode: int = 0o644) -> Inode:
        parent, name = self._parent(path)
        if name in parent.ents:
            raise _fs_error(errno.EEXIST, f"{path}: exists")
        ino, now = self.meta.next_ino, time.time_ns()
        node = Inode(ino, "f", mode, now)
        self._commit(
            [
                ["n", ino + 1],
                ["i", ino, node.to_json()],
                ["d", parent.ino, name, ino],
                self._touch(parent, now),
            ]
        )
        return self.meta.inodes[ino]

    def _inode(self, ino: int) -> Inode:
        node = self.meta.inodes.get(ino)
        if node is None:
            raise _fs_error(errno.ESTALE, f"inode {ino} no longer exists")
        return node

    # -- blocks -------------------------------------------------------------------------------------
    def _alloc(self, count: int, hint: int) -> list[tuple[int, int]]:
        """Take ``count`` free blocks, first fit from ``hint`` and wrapping around; all or
        nothing (ENOSPC)."""
        free = ranges.total(self._free)
        if free < count:
            raise NoSpace(f"no space left: {count} blocks wanted, {free} free")
        got, need = [], count
        for s, e in ranges.clip(self._free, hint, 1 << 62) + ranges.clip(self._free, 0, hint):
            take = min(need, e - s)
            got.append((s, take))
            need -= take
            if not need:
                break
        for s, c in got:
            self._free = ranges.remove(self._free, s, s + c)
        return got

    def _unalloc(self, runs) -> None:
        for s, c in runs:
            self._free = ranges.add(self._free, s, s + c)

    def _release(self, ino: int, runs) -> None:
        """After the record that freed them: revoke mappings, clear known poison, free."""
        for m in list(self._maps.get(ino, ())):
            m._revoke_device_blocks(runs)
        for db, cnt in runs:
            for off, n in self.dev.known_errors(db * P, cnt * P):
                first, last = off // P, (off + n + P - 1) // P
                iomap_zero_pages(self.dev, first, last - first, quiet=True)  # cleared before reuse
        self._unalloc(runs)

    # -- file data (called by DaxFile with the lock held) ----------------------------------------------
    def _read(self, ino: int, n: int, off: int) -> bytes:
        node = self._inode(ino)
        if off >= node.size or n <= 0:
            return b""
        n = min(n, node.size - off)
        buf = bytearray(n)
        segments = node.segments(off, n)
        try:
            got = iomap_read(self.dev, memoryview(buf), segments)
        except MediaError as e:
            raise MediaError(f"{self._bad_place(segments, off)}: {e}", errno=e.errno) from None
        return bytes(buf) if got == n else bytes(buf[:got])

    def _bad_place(self, segments, off: int) -> str:
        """Where a read failed, for its message: the first known bad range it meets, in file
        and device offsets (the extent's start would send the reader to the wrong place)."""
        pos = off
        for dev_off, length in segments:
            if dev_off is not None:
                for bad, k in self.dev.known_errors(dev_off, length):
                    fo = pos + max(bad, dev_off) - dev_off
                    return f"bad range at file offset {fo} (+{k}, device offset {bad})"
            pos += length
        return f"bad range in the read at file offset {off}"

    def _read_recover(self, ino: int, n: int, off: int) -> RecoveredData:
        """The recovery read of a file (SPEC 4): clean bytes, zeroes where bad, bad ranges in
        file offsets.  Holes are zeroes and never bad."""
        node = self._inode(ino)
        n = max(0, min(n, node.size - off))
        out = bytearray(n)
        bad = iomap_read_recover(self.dev, memoryview(out), node.segments(off, n))
        return RecoveredData(out, [(off + s, k) for s, k in bad])

    def _write(self, ino: int, data: memoryview, off: int, recovery: bool = False) -> int:
        node = self._inode(ino)
        n = data.nbytes
        if n == 0:
            return 0
        self._check_size(off + n, "write")
        if off + n > node.size:
            self._zero_eof_tail(node)
        first, last = off // P, (off + n + P - 1) // P
        holes = node.holes(first, last)
        if not holes:  # the fast path: an overwrite in place, no metadata unless the size grows
            done = iomap_write(self.dev, data, node.segments(off, n), recovery=recovery)
            node.mtime = time.time_ns()
            if off + done > node.size:
                self._set_size(node, off + done)
            return done
        return self._write_allocating(node, data, off, holes, recovery)

    def _write_allocating(self, node: Inode, data: memoryview, off: int, holes, recovery=False) -> int:
        n = data.nbytes
        hint = node.ext[-1][1] + node.ext[-1][2] if node.ext else self.geometry.data_start
        new_ext: list[list[int]] = []
        try:
            for fb, cnt in holes:
                for db, c in self._alloc(cnt, hint):
                    new_ext.append([fb, db, c])
                    fb, hint = fb + c, db + c
        except NoSpace:
            self._unalloc([(db, c) for _, db, c in new_ext])
            raise
        # New blocks are written whole (zeroes around the data) before anything links them.
        done_ext = []
        for fb, db, c in new_ext:
            page = bytearray(c * P)
            s, e = max(off, fb * P), min(off + n, (fb + c) * P)
            if s < e:
                page[s - fb * P : e - fb * P] = data[s - off : e - off]
            if iomap_write(self.dev, memoryview(page), [(db * P, c * P)]) < c * P:
                break
            done_ext.append([fb, db, c])
        self._unalloc([(db, c) for fb, db, c in new_ext if [fb, db, c] not in done_ext])
        # Then the old blocks, in place, in file order; new ones already hold their bytes.  The
        # walk is over the OLD mapping: a hole there is what new blocks filled (merged extents of
        # the new mapping can run across old and new blocks alike).
        tmp = node.copy()
        tmp.set_extents(tmp.ext + done_ext)
        new_pages = {fb + i for fb, _, c in done_ext for i in range(c)}
        written = 0
        for dev_off, length in node.segments(off, n):
            pos = off + written
            if dev_off is None:
                if not all(p in new_pages for p in range(pos // P, (pos + length - 1) // P + 1)):
                    break  # a new block that could not be written: the write ends before it
                got = length
            else:
                piece = data[written : written + length]
                got = iomap_write(self.dev, piece, [(dev_off, length)], recovery=recovery)
            written += got
            if got < length:
                break
        now = time.time_ns()
        tmp.mtime = tmp.ctime = now
        tmp.size = max(tmp.size, off + written)
        try:
            self._commit([["i", tmp.ino, tmp.to_json()]])
        except BaseException:
            self._unalloc([(db, c) for _, db, c in done_ext])
            raise
        if written == 0 and n:
            raise MediaError("write met poison: nothing written", errno=errno.EFAULT)
        return written

    def _set_size(self, node: Inode, size: int) -> None:
        tmp = node.copy()
        tmp.size = size
        tmp.mtime = tmp.ctime = time.time_ns()
        self._commit([["i", tmp.ino, tmp.to_json()]])

    def _check_size(self, size: int, what: str) -> None:
        """SPEC 3: sizes up to the device; past it is EFBIG (as a size past s_maxbytes)."""
        if size > self.dev.size:
            limit = self.dev.size
            raise _fs_error(errno.EFBIG, f"{what}: {size} bytes is past the largest file ({limit} bytes)")

    def _truncate(self, ino: int, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise InvalidArgument(f"truncate: size must be an int, not {type(size).__name__}")
        if size < 0:
            raise InvalidArgument(f"negative size {size}")
        self._check_size(size, "truncate")
        node = self._inode(ino)
        if size > node.size:
            self._zero_eof_tail(node)
        tmp = node.copy()
        freed = tmp.cut((size + P - 1) // P, 1 << 62) if size < node.size or node.ext else []
        if size % P and size < node.size:  # zero the tail of the last block: a later extension reads zeroes
            self._zero_eof_tail(tmp, size)
        tmp.size = size
        tmp.mtime = tmp.ctime = time.time_ns()
        self._commit([["i", ino, tmp.to_json()]], use_reserve=size <= node.size)
        self._release(ino, freed)

    def _zero_eof_tail(self, node: Inode, size: int | None = None) -> None:
        """Zero the bytes of the last page past the end of the file (``size``, else its size)
        before the file grows over them, as XFS and ext4 do: a store through a mapping past EOF,
        or a write killed before its size was saved, must never reappear as file data."""
        size = node.size if size is None else size
        try:
            self._zero_partial(node, size, -(-size // P) * P)
        except MediaError:
            pass  # a poisoned tail stays reported bad; it is never read as data

    def _fallocate(self, ino: int, mode: int, off: int, length: int) -> None:
        if off < 0 or length <= 0:
            raise InvalidArgument(f"fallocate: offset={off} length={length}")
        self._check_size(off + length, "fallocate")
        known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
        if mode & ~known or (mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE):
            raise _fs_error(errno.EOPNOTSUPP, f"fallocate mode {mode:#x} is not supported")
        node = self._inode(ino)
        end = off + length
        if mode & FALLOC_FL_PUNCH_HOLE:
            self._zero_partial(node, off, end)
            tmp = node.copy()
            freed = tmp.cut((off + P - 1) // P, end // P)
            if freed:
                tmp.mtime = tmp.ctime = time.time_ns()
                self._commit([["i", ino, tmp.to_json()]], use_reserve=True)
                self._release(ino, freed)
            return
        if mode & FALLOC_FL_ZERO_RANGE:
            self._zero_partial(node, off, end)
            for dev_off, n in node.segments(
                (off + P - 1) // P * P, max(0, end // P * P - (off + P - 1) // P * P)
            ):
                if dev_off is not None:
                    iomap_zero_pages(self.dev, dev_off // P, n // P)  # whole pages: zeroed and cleared
        holes = node.holes(off // P, (end + P - 1) // P)
        if holes:
            zeros = memoryview(bytes(0))
            self._write_allocating(node, zeros, off, holes)
            node = self._inode(ino)
        if not mode & FALLOC_FL_KEEP_SIZE and end > node.size:
            self._zero_eof_tail(node)
            self._set_size(node, end)

    def _zero_partial(self, node: Inode, off: int, end: int) -> None:
        """Zero the bytes of [off, end) that do not fill whole pages."""
        head_end = min(end, (off + P - 1) // P * P)
        tail_start = max(head_end, end // P * P)
        for s, e in ((off, head_end), (tail_start, end)):
            if s < e:
                segs = [(d, n) for d, n in node.segments(s, e - s) if d is not None]
                if segs:
                    iomap_write(self.dev, memoryview(bytes(sum(n for _, n in segs))), segs)

    # -- mmap, errors, owners ----------------------------------------------------------------------
    def _mmap(self, ino: int, offset: int, length: int | None) -> Mapping:
        node = self._inode(ino)
        if offset % P:
            raise InvalidArgument(f"mmap offset {offset} is not a multiple of {P}")
        if length is None:
            length = max(0, node.size - offset)
        if length <= 0:
            raise InvalidArgument("mmap of an empty range")
        length = (length + P - 1) // P * P
        self._check_size(offset + length, "mmap")
        if self.readonly:  # raw loads cannot follow a writer that frees and reuses the blocks
            raise _fs_error(errno.EROFS, "mmap needs a read-write mount (a read-only one follows a writer)")
        holes = node.holes(offset // P, (offset + length) // P)
        if holes:
            if self.readonly:
                raise _fs_error(errno.EROFS, "mmap would allocate blocks on a read-only mount")
            self._write_allocating(node, memoryview(b""), offset, holes)
            node = self._inode(ino)
        pieces, pos = [], 0
        for dev_off, n in node.segments(offset, length):
            pieces.append((pos, dev_off, n))
            pos += n
        m = self.dev.map_extents(pieces)
        self._maps.setdefault(ino, weakref.WeakSet()).add(m)
        return m

    def _file_errors(self, node: Inode) -> list[tuple[int, int]]:
        out: ranges.Intervals = []
        for fb, db, cnt in node.ext:
            for s, n in self.dev.known_errors(db * P, cnt * P):
                fs = fb * P + s - db * P
                out = ranges.add(out, fs, fs + n)
        return [(s, e - s) for s, e in out]

    def _owners(self, offset: int, length: int) -> list[dict]:
        """The reverse map: who owns device bytes [offset, offset+length)."""
        g, end = self.geometry, offset + length
        out = []
        meta_end = g.data_start * P
        if offset < meta_end:
            out.append({"offset": offset, "length": min(end, meta_end) - offset, "owner": "metadata"})
        paths = self.meta.paths()
        for ino, node in self.meta.inodes.items():
            for fb, db, cnt in node.ext:
                s, e = max(offset, db * P), min(end, (db + cnt) * P)
                if s < e:
                    out.append({
                        "offset": s, "length": e - s, "owner": "file", "ino": ino, "path": paths.get(ino),
                        "file_offset": fb * P + s - db * P, "file_length": e - s,
                    })  # fmt: skip
        covered = ranges.union([], [(o["offset"], o["offset"] + o["length"]) for o in out])
        for s, e in ranges.subtract([(offset, end)], covered):
            out.append({"offset": s, "length": e - s, "owner": "free"})
        return sorted(out, key=lambda o: o["offset"])

    # -- redundancy and repair (SPEC 4.2) ---------------------------------------------------------
    @property
    def redundancy(self) -> dict:
        """{"mode": "parity" | "none", "group": pages per parity group, "space_overhead": fraction}."""
        if isinstance(self.dev, Redundant):
            return dict(self.dev.redundancy())
        return {"mode": "none", "group": 0, "space_overhead": 0.0}

    def parity_group(self, offset: int) -> dict:
        """{"data": [device offsets], "parity": [device offsets]}: the group holding the page at
        ``offset`` of the device the filesystem was mounted from (``bmap``'s sectors x 512)."""
        with self._lock:
            self._check()
            if not isinstance(self.dev, Redundant):
                raise NotSupported("the filesystem has no parity (made with redundancy='none')")
            base = self._lower_off
            if not base <= offset < base + self.dev.size:
                raise InvalidArgument(
                    f"offset {offset} is not in the filesystem's data (device bytes {base} to "
                    f"{base + self.dev.size})"
                )
            group = self.dev.parity_group(offset - base)
            return {"data": [base + d for d in group["data"]], "parity": list(group["parity"])}

    def repair(self) -> RepairReport:
        """Everything repairable is repaired: with parity, every data page's checksum is verified
        and poisoned or mismatching pages are rebuilt; damaged metadata copies are rewritten.
        What is left is lost: listed per file, and reads of exactly those ranges fail with EIO."""
        with self._lock:
            self._check(write=True)
            repaired: ranges.Intervals = []
            corrupt: ranges.Intervals = []
            if isinstance(self.dev, Redundant):
                rep = self.dev.repair(verify=True)
                repaired = ranges.union([], [(s, s + n) for s, n in rep.repaired])
                corrupt = ranges.union([], [(s, s + n) for s, n in rep.corrupt])
            meta_end = self.geometry.data_start * P
            meta_bad = self.dev.known_errors(0, meta_end)
            if meta_bad:
                self._rewrite_metadata()
                repaired = ranges.union(repaired, [(s, s + n) for s, n in meta_bad])
            lost = []
            for off, n in self.dev.known_errors(meta_end, self.dev.size - meta_end):
                for o in self._owners(off, n):
                    if o["owner"] == "file":
                        lost.append({"path": o["path"], "offset": o["file_offset"],
                                     "length": o["file_length"]})  # fmt: skip
            lost.sort(key=lambda d: (d["path"] or "", d["offset"]))
            base = self._lower_off
            return RepairReport(
                [(base + s, e - s) for s, e in repaired], [(base + s, e - s) for s, e in corrupt], lost
            )

    def scan(self) -> list[dict]:
        """Every known media error, mapped to its owner (file and file range, metadata, free)."""
        with self._lock:
            self._check()
            out = [o for off, n in self.dev.known_errors() for o in self._owners(off, n)]
            for o in out:
                o["offset"] += self._lower_off
            return out

    def bmap(self, path: str) -> list[dict]:
        with self._lock:
            self._check()
            node = self._resolve(path)
            return [
                {"offset": fb * P, "length": cnt * P, "sector": (self._lower_off + db * P) // SECTOR_SIZE}
                for fb, db, cnt in node.ext
            ]

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
                    cb(o["ino"], o["path"], o["file_offset"], o["file_length"])
        return 0


class RepairReport:
    """What ``fs.repair()`` did: ``repaired`` and ``corrupt`` device ranges (offset, length)
    rebuilt from redundancy after poison and after a checksum mismatch; ``lost`` file ranges
    ({"path", "offset", "length"}) that could not be rebuilt."""

    def __init__(self, repaired: list, corrupt: list, lost: list):
        self.repaired, self.corrupt, self.lost = repaired, corrupt, lost

    def __repr__(self) -> str:
        counts = f"repaired={len(self.repaired)} corrupt={len(self.corrupt)} lost={len(self.lost)}"
        return f"<RepairReport {counts}>"

    def as_dict(self) -> dict:
        return {
            "repaired": [{"offset": o, "length": n} for o, n in self.repaired],
            "corrupt": [{"offset": o, "length": n} for o, n in self.corrupt],
            "lost": [dict(d) for d in self.lost],
        }


class DaxFile:
    """An open file of a DaxFS."""

    def __init__(self, fs: DaxFS, ino: int, path: str, readable: bool, writable: bool, append: bool):
        self._fs, self.ino, self.name = fs, ino, path
        self.readable, self.writable, self.append = readable, writable, append
        self._pos = 0
        self._dirty = False
        self.closed = False
        self._fast_write = writable and not append and not fs.readonly
        self._win = None  # (inode, file start, file end, view, device offset, state generation)
        self._state = fs.dev.state_word
        self._store = dax_store_fn(fs.dev)

    def __enter__(self) -> DaxFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DaxFile {self.name!r} ino={self.ino}{' closed' if self.closed else ''}>"

    def _ready(self, write: bool = False, read: bool = False) -> None:
        if self.closed:
            raise InvalidArgument("I/O on a closed file")
        self._fs._check(write=write)
        if write and not self.writable:
            raise _fs_error(errno.EBADF, f"{self.name}: not open for writing")
        if read and not self.readable:
            raise _fs_error(errno.EBADF, f"{self.name}: not open for reading")

    # The fast paths.  A request inside one extent is served from a direct_access view of that
    # extent, kept while the inode and the device's shared error state are unchanged (a new
    # known error anywhere, in any process, changes the state word and sends the next request
    # back through direct_access, which applies the poison rules).  Anything else, poison
    # included, takes the general path through the fsdax layer.
    def _window(self, node: Inode, off: int):
        i = bisect_right(node._starts or node.starts(), off >> _SHIFT) - 1
        if i < 0:
            return None
        fb, db, cnt = node.ext[i]
        if off >= (fb + cnt) << _SHIFT:
            return None
        dev = self._fs.dev
        gen = dev.state_generation
        view = dax_window(dev, db, cnt)
        if view is None:
            return None  # known poison in this extent: per-request direct_access decides
        win = (node, fb << _SHIFT, (fb + cnt) << _SHIFT, view, db << _SHIFT, gen)
        self._win = win
        return win

    def pread(self, n: int, off: int, flags: int = 0) -> bytes:
        fs = self._fs
        with fs._lock:
            node = fs.meta.inodes.get(self.ino)
            if not (fs._ok and self.readable and node is not None and not flags and n > 0 and off >= 0):
                return self._pread_checked(n, off, flags)
            if off + n > node.size:
                n = node.size - off
                if n <= 0:
                    return b""
            w = self._win
            if w is None or w[0] is not node or w[5] != self._state[0] or not w[1] <= off < off + n <= w[2]:
                w = self._window(node, off)
            if w is not None and off + n <= w[2]:
                data = copy_mc_bytes(w[3], off - w[1], n)
                if data is not None:
                    return data
            return fs._read(self.ino, n, off)

    def _pread_checked(self, n: int, off: int, flags: int):
        if flags & ~RWF_RECOVERY_DATA:
            raise InvalidArgument(f"unsupported pread flags {flags:#x}")
        if n < 0 or off < 0:
            raise InvalidArgument(f"pread: n={n} offset={off}")
        self._ready(read=True)
        fs = self._fs
        if flags & RWF_RECOVERY_DATA:
            return fs._stable(lambda: fs._read_recover(self.ino, n, off), self.ino)
        return fs._stable(lambda: fs._read(self.ino, n, off), self.ino)

    def pwrite(self, data, off: int, flags: int = 0) -> int:
        """Write at ``off``.  ``flags=RWF_RECOVERY_DATA`` (SPEC 4.1): over poison, a write that
        covers a page only in part still succeeds with the full count -- the page is rewritten
        over its recovered clean lines, and bad lines it does not cover stay reported bad."""
        fs = self._fs
        with fs._lock:
            node = fs.meta.inodes.get(self.ino)
            if fs._ok and self._fast_write and node is not None and off >= 0 and not flags:
                n = data.nbytes if type(data) is memoryview else len(data)
                if 0 < n and off + n <= node.size:
                    w = self._win
                    if (
                        w is None
                        or w[0] is not node
                        or w[5] != self._state[0]
                        or not w[1] <= off < off + n <= w[2]
                    ):
                        w = self._window(node, off)
                    if w is not None and off + n <= w[2]:
                        # In place inside one extent and the file size: no metadata changes.
                        self._store(data, w[4] + off - w[1])
                        node.mtime = _now()
                        self._dirty = True
                        return n
            if off < 0:
                raise InvalidArgument(f"pwrite: negative offset {off}")
            if flags & ~RWF_RECOVERY_DATA:
                raise InvalidArgument(f"unsupported pwrite flags {flags:#x}")
            self._ready(write=True)
            if self.append:
                off = fs._inode(self.ino).size
            self._dirty = True
            return fs._write(self.ino, memoryview(data).cast("B"), off, recovery=bool(flags))

    def pread_exact(self, n: int, off: int) -> bytes:
        """Every byte of [off, off+n) up to the end of the file, or an error: a short count
        from pread means the rest is bad (latent poison just made known), so the next pread of
        the rest raises EIO instead of passing a short file off as whole.  Every reader that
        wants a whole range (the CLI's get, the FUSE read handler) reads through this."""
        first = self.pread(n, off)
        if len(first) == n or not first:
            return first
        parts, got = [first], len(first)
        while got < n:
            more = self.pread(n - got, off + got)  # raises EIO at the bad line
            if not more:
                break  # end of file (the file shrank)
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def read(self, n: int = -1) -> bytes:
        """Like a file's read: ``n < 0`` reads to the end of the file, every byte or an error."""
        with self._fs._lock:
            if n < 0:
                n = max(0, self._fs._inode(self.ino).size - self._pos)
                data = self.pread_exact(n, self._pos)
            else:
                data = self.pread(n, self._pos)
            self._pos += len(data)
            return data

    def write(self, data) -> int:
        with self._fs._lock:
            n = self.pwrite(data, self._pos)
            self._pos = self._fs._inode(self.ino).size if self.append else self._pos + n
            return n

    def seek(self, off: int, whence: int = 0) -> int:
        with self._fs._lock:
            base = {0: 0, 1: self._pos, 2: self._fs._inode(self.ino).size}.get(whence)
            if base is None or base + off < 0:
                raise InvalidArgument(f"seek: offset={off} whence={whence}")
            self._pos = base + off
            return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        with self._fs._lock:
            self._ready(write=True)
            size = self._pos if size is None else size
            self._fs._truncate(self.ino, size)
            return size

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        with self._fs._lock:
            self._ready(write=True)
            self._fs._fallocate(self.ino, mode, offset, length)

    def fsync(self) -> None:
        """Metadata is committed by every operation; what is left is the timestamps of in-place
        writes.  Data stored to DAX memory needs no flush here (the emulator is the page cache)."""
        with self._fs._lock:
            self._ready()
            if self._dirty:
                node = self._fs._inode(self.ino)
                self._fs._commit([["i", node.ino, node.to_json()]], use_reserve=True)
                self._dirty = False

    def stat(self) -> os.stat_result:
        with self._fs._lock:
            self._ready()
            return self._fs._stat(self._fs._inode(self.ino))

    def mmap(self, offset: int = 0, length: int | None = None) -> Mapping:
        with self._fs._lock:
            self._ready()
            return self._fs._mmap(self.ino, offset, length)

    def bad_ranges(self) -> list[tuple[int, int]]:
        with self._fs._lock:
            self._ready()
            return self._fs._file_errors(self._fs._inode(self.ino))

    def close(self) -> None:
        if self.closed:
            return
        self._fast_write = False
        self._win = None
        try:
            if self._dirty and not self._fs._shutdown and not self._fs._unmounted:
                with self._fs._lock:
                    if self.ino in self._fs.meta.inodes:
                        self.fsync()
        finally:
            self.closed = True
