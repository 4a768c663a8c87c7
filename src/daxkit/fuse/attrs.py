"""The attribute handlers (fs/fuse/dir.c's getattr and setattr, xattr.c, statfs).  The rules are
``ops.py``'s."""

from __future__ import annotations

import errno
import json
import os
import stat as _stat

from . import proto
from .base import (
    ATTR_S,
    CHANGES,
    ENODATA_NAMES,
    XATTR_BAD_RANGES,
    Handlers,
    _error,
    _Open,
    _times,
)
from .proto import GETATTR_FH


class AttrOps(Handlers):
    """Attributes, extended attributes and statfs."""

    def getattr(self, ctx, body):
        flags, _, fh = proto.GETATTR_IN.unpack_from(body)
        return (proto.attr_out(self._stat(ctx[1], fh if flags & GETATTR_FH else None), ATTR_S),)

    def setattr(self, ctx, body):
        args = proto.SETATTR_IN.unpack_from(body)
        valid, _, fh, size, _, a_s, m_s, _, a_ns, m_ns, _, mode, _, uid, gid, _ = args
        node, fs = ctx[1], self.fs
        o = self.files.get(fh) if valid & proto.FATTR_FH else None
        path = self._path_or_none(node)
        if valid & (proto.FATTR_MODE | proto.FATTR_UID | proto.FATTR_GID):
            if path is None:
                raise _error(errno.EPERM, f"inode {node}: unlinked")  # fchmod/fchown of an orphan: not kept
            if valid & proto.FATTR_MODE:
                fs.chmod(path, mode & 0o7777, follow_symlinks=False)
            if valid & (proto.FATTR_UID | proto.FATTR_GID):
                fs.chown(path, uid if valid & proto.FATTR_UID else -1, gid if valid & proto.FATTR_GID else -1,
                         follow_symlinks=False)  # fmt: skip
        elif valid & CHANGES == proto.FATTR_CTIME and path is not None:
            self._chown_nothing(ctx, path)
        if valid & proto.FATTR_SIZE:
            self._truncate(ctx, node, path, o, size)
        if valid & (proto.FATTR_ATIME | proto.FATTR_MTIME | proto.FATTR_ATIME_NOW | proto.FATTR_MTIME_NOW):
            times = _times(valid, a_s, a_ns, m_s, m_ns)
            f = o.f if o is not None else None if path is not None else self._any_handle(node)
            if f is not None:
                f.utime(times)
            else:
                fs.utime(path, times, follow_symlinks=False)
        return (proto.attr_out(self._stat(node, fh if o is not None else None), ATTR_S),)

    def _chown_nothing(self, ctx, path: str) -> None:
        """A setattr of ctime alone is chown(2) with both ids -1: under FUSE_HANDLE_KILLPRIV_V2
        the kernel leaves its clearing of set-ID bits to us.  As on tmpfs, a non-directory loses
        S_ISUID (and S_ISGID with group execute), and when it has such bits to lose only its owner
        or root may do that (EPERM), otherwise anyone may."""
        st = self.fs.lstat(path)
        m = st.st_mode
        if not _stat.S_ISDIR(m) and (m & _stat.S_ISUID or m & _stat.S_ISGID and m & 0o010):
            if ctx[2] not in (0, st.st_uid):
                raise _error(errno.EPERM, f"{path}: not the owner")
            self.fs.chown(path, -1, -1, follow_symlinks=False)

    def _any_handle(self, node: int, *, writable: bool = False):
        for o in self.files.values():
            if o.f.ino == node and not o.f.closed and (o.f.writable or not writable):
                return o.f
        raise _error(errno.ENOENT, f"inode {node}: unlinked and not open")

    def _truncate(self, ctx, node: int, path: str | None, o: _Open | None, size: int) -> None:
        f = o.f if o is not None and o.f.writable else None
        if f is None and path is None:
            f = self._any_handle(node, writable=True)
        if f is not None:
            with self._as_writer(f, ctx):
                f.truncate(size)
            return
        f = self.fs.open(path, os.O_WRONLY | os.O_NOATIME)
        try:
            with self._as_writer(f, ctx):
                f.truncate(size)
        finally:
            f.close()

    def statfs(self, ctx, body):
        return (proto.statfs_out(self.fs.statfs()),)

    def getxattr(self, ctx, body):
        size, _ = proto.GETXATTR_IN.unpack_from(body)
        name = proto.names(body, proto.GETXATTR_IN.size, 1)[0]
        if name.startswith(ENODATA_NAMES) or name != XATTR_BAD_RANGES:
            raise _error(errno.ENODATA, name)
        if not _stat.S_ISREG(self.fs.stat_ino(ctx[1]).st_mode):
            raise _error(errno.ENODATA, name)
        f = self.fs.open(self._path(ctx[1]), os.O_RDONLY | os.O_NOATIME)
        try:
            bad = f.bad_ranges()
        finally:
            f.close()
        return self._xattr_value(size, json.dumps([{"offset": o, "length": n} for o, n in bad]).encode())

    def listxattr(self, ctx, body):
        size, _ = proto.GETXATTR_IN.unpack_from(body)
        regular = _stat.S_ISREG(self.fs.stat_ino(ctx[1]).st_mode)
        return self._xattr_value(size, XATTR_BAD_RANGES.encode() + b"\0" if regular else b"")

    @staticmethod
    def _xattr_value(size: int, value: bytes):
        if size == 0:
            return (proto.GETXATTR_OUT.pack(len(value), 0),)
        if size < len(value):
            raise _error(errno.ERANGE, "xattr buffer")
        return (value,)

    def no_xattr(self, ctx, body):
        raise _error(errno.EOPNOTSUPP, "extended attributes other than " + XATTR_BAD_RANGES)
