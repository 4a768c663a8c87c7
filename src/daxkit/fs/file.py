"""DaxFile: an open file of a DaxFS."""

from __future__ import annotations

import errno
import os
import time
from bisect import bisect_right
from typing import TYPE_CHECKING

from .._copymc import copy_mc_bytes
from ..device.interface import Mapping
from ..errors import InvalidArgument
from ..fsdax.iomap import dax_store_fn, dax_window
from ..units import PAGE_SIZE
from .meta import Inode
from .uapi import RWF_RECOVERY_DATA, fs_error

if TYPE_CHECKING:
    from .daxfs import DaxFS

P = PAGE_SIZE
_SHIFT = P.bit_length() - 1
_now = time.time_ns


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
        fs._opens[ino] = fs._opens.get(ino, 0) + 1  # an unlinked inode lives until its last close

    def __enter__(self) -> DaxFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DaxFile {self.name!r} ino={self.ino}{' closed' if self.closed else ''}>"

    @property
    def nlink(self) -> int:
        """The inode's number of names now (0: unlinked while open), without a stat."""
        node = self._fs.meta.inodes.get(self.ino)
        return 0 if node is None else node.nlink

    @property
    def setid(self) -> bool:
        """The file is set-user-ID or set-group-ID (a write by anyone but root clears that)."""
        node = self._fs.meta.inodes.get(self.ino)
        return node is not None and node.mode >= 0o2000

    def _ready(self, write: bool = False, read: bool = False) -> None:
        if self.closed:
            raise InvalidArgument("I/O on a closed file")
        self._fs._check(write=write)
        if write and not self.writable:
            raise fs_error(errno.EBADF, f"{self.name}: not open for writing")
        if read and not self.readable:
            raise fs_error(errno.EBADF, f"{self.name}: not open for reading")

    # The fast paths.  A request inside one extent is served from a direct_access view of that
    # extent, kept while the inode and the device's shared error state are unchanged (a new
    # known error anywhere, in any process, changes the state word and sends the next request
    # back through direct_access, which applies the poison rules).  Anything else, poison
    # included, takes the general path through the fsdax layer.
    def _window(self, node: Inode, off: int):
        i = bisect_right(node._starts or node.starts(), off >> _SHIFT) - 1
        if i < 0 or node.mode >= 0o2000:  # set-ID: a write may clear it, so it takes the checked path
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
                        node.mtime = node.ctime = _now()
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
            fs._kill_privs(self.ino)
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

    def utime(self, times=None) -> None:
        """futimens(2): ``fs.utime`` of this file, named or not (an unlinked open file too)."""
        with self._fs._lock:
            self._ready()
            self._fs._update(None, self._fs._utime_change(self.name, times), ino=self.ino)

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        with self._fs._lock:
            self._ready(write=True)
            self._fs._fallocate(self.ino, mode, offset, length)
            self._fs._kill_privs(self.ino)  # as a write does (file_modified)

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
        fs = self._fs
        try:
            if self._dirty and not fs._shutdown and not fs._unmounted:
                with fs._lock:
                    node = fs.meta.inodes.get(self.ino)
                    if node is not None and node.nlink:
                        self.fsync()
        finally:
            self.closed = True
            with fs._lock:
                left = fs._opens.get(self.ino, 1) - 1
                if left:
                    fs._opens[self.ino] = left
                else:
                    fs._opens.pop(self.ino, None)
                    if not fs._shutdown and not fs._unmounted and not fs.readonly:
                        fs._free_orphan(self.ino)
