"""The namespace operations of DaxFS: directories, entries, attributes, opening and creating."""

from __future__ import annotations

import errno
import os
import time

from ..errors import DaxError, InvalidArgument
from ..units import PAGE_SIZE
from .file import DaxFile
from .meta import Inode
from .uapi import (
    UTIME_OMIT,
    check_mode,
    fs_error,
    time_ns_of,
)

P = PAGE_SIZE


class Namespace:
    """A part of DaxFS (see daxfs.py)."""

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
                raise fs_error(errno.ENOTDIR, f"{path}: not a directory")
            return sorted(node.ents)

    def scandir(self, path: str = "/") -> list[tuple[str, os.stat_result]]:
        """(name, stat) of every entry, sorted by name, from one view: beside a live writer a
        listdir followed by stats could meet names that are already gone."""
        with self._lock:
            self._check()
            node = self._resolve(path)
            if not node.is_dir:
                raise fs_error(errno.ENOTDIR, f"{path}: not a directory")
            return [(name, self._stat(self.meta.inodes[ino])) for name, ino in sorted(node.ents.items())]

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        mode = check_mode(mode) & 0o7777
        with self._lock:
            self._check(write=True)
            parent, name = self._parent(path)
            if name in parent.ents:
                raise fs_error(errno.EEXIST, f"{path}: exists")
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

    def rmdir(self, path: str) -> None:
        with self._lock:
            self._check(write=True)
            parent, name, node = self._entry(path)
            ino = node.ino
            if not node.is_dir:
                raise fs_error(errno.ENOTDIR, f"{path}: not a directory")
            if node.ents:
                raise fs_error(errno.ENOTEMPTY, f"{path}: directory not empty")
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
                raise fs_error(errno.EISDIR, f"{path}: is a directory")
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
                raise fs_error(errno.ENOENT, f"{src}: no such file or directory")
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
                    raise fs_error(errno.ENOTEMPTY, f"{dst}: is an ancestor of {src}")
            if old is not None:
                onode = self.meta.inodes[old]
                if onode.is_dir != node.is_dir:
                    code = errno.EISDIR if onode.is_dir else errno.ENOTDIR
                    raise fs_error(
                        code, f"{dst}: cannot replace {'a directory' if onode.is_dir else 'a file'}"
                    )
                if onode.is_dir and onode.ents:
                    raise fs_error(errno.ENOTEMPTY, f"{dst}: directory not empty")
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
        mode = check_mode(mode)
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
            atime, mtime = (time_ns_of(t, now, "ns") for t in times)
        else:
            atime, mtime = UTIME_OMIT, time_ns_of(times, now, "s")

        def change(node: Inode) -> None:
            if atime != UTIME_OMIT:
                node.atime = atime
            if mtime != UTIME_OMIT:
                node.mtime = mtime

        self._update(path, change)

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
                    raise fs_error(errno.EEXIST, f"{path}: exists")
                if node.is_dir:
                    raise fs_error(errno.EISDIR, f"{path}: is a directory")
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
            raise fs_error(errno.EEXIST, f"{path}: exists")
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
            raise fs_error(errno.ESTALE, f"inode {ino} no longer exists")
        return node
