"""The file handlers (fs/fuse/file.c): open and create, read and write, fsync, fallocate, flush
and release, and the pins of open files.  The rules are ``ops.py``'s."""

from __future__ import annotations

import errno
import os

from . import proto
from .base import (
    O_ACCMODE,
    SETTLE_TIMEOUT,
    Handlers,
    _error,
    _Open,
    log,
)
from .proto import RW_IN, WRITE_OUT


class FileOps(Handlers):
    """Open files."""

    def _add(self, f, flags: int, ctx, path: str | None) -> int:
        kc = self.kcache
        user = kc is not None and not kc.is_own(ctx[4])
        fh = self._next_fh
        self._next_fh += 1
        self.files[fh] = _Open(f, flags, user)
        if user and path is not None:
            kc.opened(f.ino, path)
        return fh

    def open(self, ctx, body):
        flags, _ = proto.OPEN_IN.unpack_from(body)
        # O_TRUNC is ours (ATOMIC_O_TRUNC), and truncating may clear set-ID bits as the caller;
        # O_APPEND is the kernel's.  Our pinner's opens are no reader's: they leave atime alone.
        kc = self.kcache
        own = kc is not None and kc.is_own(ctx[4])
        path = self._path_or_none(ctx[1])
        if path is None:
            return self._reopen(ctx, flags)
        noatime = os.O_NOATIME if own else 0
        if flags & os.O_TRUNC:
            with self._as_caller(ctx):
                self.fs.open(path, flags & O_ACCMODE | os.O_TRUNC | noatime).close()
        f = self._open_for_cache(path, flags & O_ACCMODE, noatime)
        return (proto.open_out(self._add(f, flags, ctx, path), proto.FOPEN_KEEP_CACHE),)

    def _reopen(self, ctx, flags: int):
        """An unlinked file that is still open, opened again (open of /proc/PID/fd/N, as on
        tmpfs): a new handle of the orphan; ENOENT when no handle holds it any more."""
        f = self.fs.reopen(self._any_handle(ctx[1]), flags & O_ACCMODE != os.O_RDONLY)
        if flags & os.O_TRUNC:
            with self._as_writer(f, ctx):
                f.truncate(0)
        return (proto.open_out(self._add(f, flags, ctx, None), proto.FOPEN_KEEP_CACHE),)

    def _open_for_cache(self, path: str, acc: int, noatime: int):
        """The DaxFile behind a handle: a write-only handle is opened for reading too, because
        under the writeback cache the kernel reads a page through it before writing part of it
        (the kernel has checked the caller's access already); those reads are ours, not a
        reader's, so atime stays.  Where the server itself may not read the file, the handle
        stays write-only."""
        if acc == os.O_WRONLY:
            try:
                return self.fs.open(path, os.O_RDWR | os.O_NOATIME)
            except OSError as e:
                if e.errno != errno.EACCES:
                    raise
        return self.fs.open(path, acc | noatime)

    def create(self, ctx, body):
        flags, mode, _, _ = proto.CREATE_IN.unpack_from(body)
        name = proto.names(body, proto.CREATE_IN.size, 1)[0]
        path = self._child(ctx[1], name)
        with self._as_caller(ctx):
            f = self.fs.open(path, "x+", perm=mode & 0o7777)
        fh = self._add(f, flags, ctx, None)
        return (self._entry(ctx[1], name, f.stat())[0], proto.open_out(fh, proto.FOPEN_KEEP_CACHE))

    def read(self, ctx, body):
        fh, offset, size, _, _, _, _ = RW_IN.unpack_from(body)
        o = self.files.get(fh)
        if o is None:
            raise _error(errno.EBADF, f"handle {fh}")
        try:
            return (o.f.pread_exact(size, offset),)  # the whole request or EIO (SPEC 6)
        except OSError as e:
            if e.errno == errno.EIO and o.flags & os.O_DIRECT and self.kcache is not None:
                # a direct read may have just made poison known (consumption) in a page that
                # others have cached: that page is gone from the cache before we answer
                self.kcache.settle(SETTLE_TIMEOUT)
            raise

    def write(self, ctx, body):
        fh, offset, size, _, _, _, _ = RW_IN.unpack_from(body)
        f = self._file(fh)
        data = body[RW_IN.size : RW_IN.size + size]
        if not f.setid:  # the common case, on the fast path
            return (WRITE_OUT.pack(f.pwrite(data, offset), 0),)
        with self._as_writer(f, ctx):
            return (WRITE_OUT.pack(f.pwrite(data, offset), 0),)

    def fallocate(self, ctx, body):
        fh, offset, length, mode, _ = proto.FALLOCATE_IN.unpack_from(body)
        f = self._file(fh)
        with self._as_writer(f, ctx):
            f.fallocate(mode, offset, length)
        return ()

    def fsync(self, ctx, body):
        self._file(proto.FSYNC_IN.unpack_from(body)[0]).fsync()
        return ()

    def _last_user(self, fh: int) -> int | None:
        """The inode of ``fh`` if it is a user's handle and the last one of its file."""
        o = self.files.get(fh)
        if o is None or not o.user:
            return None
        ino = o.f.ino
        return ino if sum(1 for x in self.files.values() if x.user and x.f.ino == ino) == 1 else None

    def flush(self, ctx, body):
        ino = self._last_user(proto.FLUSH_IN.unpack_from(body)[0])
        if ino is not None:
            self.kcache.unpin(ino)  # before close(2) returns: umount may follow
        return ()

    def release(self, ctx, body):
        fh = proto.RELEASE_IN.unpack_from(body)[0]
        ino = self._last_user(fh)
        if ino is not None:
            self.kcache.unpin(ino)
        o = self.files.pop(fh, None)
        if o is not None:
            try:
                o.f.close()
            except Exception as e:  # close(2) has returned already; nobody is left to tell
                log.debug("release %d: %r", fh, e)
        return ()
