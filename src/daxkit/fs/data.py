"""File data of DaxFS: reads, writes, truncate, fallocate and mmap (called by DaxFile with the
lock held), every access through the fsdax layer."""

from __future__ import annotations

import errno
import time
import weakref

from ..device.interface import Mapping, RecoveredData
from ..errors import InvalidArgument, MediaError, NoSpace
from ..fsdax.iomap import iomap_read, iomap_read_recover, iomap_write, iomap_zero_pages
from ..units import PAGE_SIZE
from .meta import Inode
from .perm import killed_privs
from .uapi import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    fs_error,
)

P = PAGE_SIZE


class FileData:
    """A part of DaxFS (see daxfs.py)."""

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

    def _kill_privs(self, ino: int) -> None:
        """A write by anyone but root clears S_ISUID (and S_ISGID with group execute) first."""
        node = self._inode(ino)
        mode = killed_privs(self._cred(), node) if node.mode & 0o6000 else node.mode
        if mode != node.mode:
            tmp = node.copy()
            tmp.mode, tmp.ctime = mode, time.time_ns()
            self._commit([["i", ino, tmp.to_json()]], use_reserve=True)

    def _free_orphan(self, ino: int) -> None:
        """The last handle of an inode with no name left is gone: free it."""
        node = self.meta.inodes.get(ino)
        if node is None or node.nlink or node.is_dir:
            return
        self._commit([["i", ino, None]], use_reserve=True)
        self._release(ino, [(db, cnt) for _, db, cnt in node.ext])

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
            node.mtime = node.ctime = time.time_ns()
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
            raise fs_error(errno.EFBIG, f"{what}: {size} bytes is past the largest file ({limit} bytes)")

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
        tmp.mode = killed_privs(self._cred(), tmp)
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
            raise fs_error(errno.EOPNOTSUPP, f"fallocate mode {mode:#x} is not supported")
        node = self._inode(ino)
        end = off + length
        if mode & FALLOC_FL_PUNCH_HOLE:
            self._zero_partial(node, off, end)
            tmp = node.copy()
            freed = tmp.cut((off + P - 1) // P, end // P)
            tmp.mtime = tmp.ctime = time.time_ns()  # a change of the data, whole pages or not
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
            raise fs_error(errno.EROFS, "mmap needs a read-write mount (a read-only one follows a writer)")
        holes = node.holes(offset // P, (offset + length) // P)
        if holes:
            if self.readonly:
                raise fs_error(errno.EROFS, "mmap would allocate blocks on a read-only mount")
            self._write_allocating(node, memoryview(b""), offset, holes)
            node = self._inode(ino)
        pieces, pos = [], 0
        for dev_off, n in node.segments(offset, length):
            pieces.append((pos, dev_off, n))
            pos += n
        m = self.dev.map_extents(pieces)
        self._maps.setdefault(ino, weakref.WeakSet()).add(m)
        return m
