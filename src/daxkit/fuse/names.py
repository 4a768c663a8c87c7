"""The namespace handlers (the kernel's fs/fuse/dir.c and readdir.c): lookups and the kernel's
lookup counts, making and removing names, renames, links, directories and their listings.  The
rules are ``ops.py``'s."""

from __future__ import annotations

import errno
import os
import stat as _stat

from . import proto
from .base import (
    RENAME_NOREPLACE,
    Handlers,
    _error,
    _lstat_or_none,
    _unlinked,
)
from .proto import FORGET_IN, RW_IN


class NameOps(Handlers):
    """Names and directories."""

    def lookup(self, ctx, body):
        name = proto.names(body, 0, 1)[0]
        return self._entry(ctx[1], name, self.fs.lstat(self._child(ctx[1], name)))

    def forget(self, ctx, body):
        self._forget(ctx[1], FORGET_IN.unpack_from(body)[0])

    def batch_forget(self, ctx, body):
        count, _ = proto.BATCH_FORGET_IN.unpack_from(body)
        for i in range(count):
            self._forget(*proto.FORGET_ONE.unpack_from(body, proto.BATCH_FORGET_IN.size + i * 16))

    def _forget(self, node: int, n: int) -> None:
        left = self.lookups.get(node, 0) - n
        if left > 0:
            self.lookups[node] = left
        else:
            self.lookups.pop(node, None)
            self.names.pop(node, None)
            self.removed.pop(node, None)

    def mkdir(self, ctx, body):
        mode, _ = proto.MKDIR_IN.unpack_from(body)
        name = proto.names(body, proto.MKDIR_IN.size, 1)[0]
        path = self._child(ctx[1], name)
        with self._as_caller(ctx):
            self.fs.mkdir(path, mode & 0o7777)
        return self._entry(ctx[1], name, self.fs.lstat(path))

    def mknod(self, ctx, body):
        mode, rdev, _, _ = proto.MKNOD_IN.unpack_from(body)
        name = proto.names(body, proto.MKNOD_IN.size, 1)[0]
        path = self._child(ctx[1], name)
        with self._as_caller(ctx):
            self.fs.mknod(path, mode, rdev)
        return self._entry(ctx[1], name, self.fs.lstat(path))

    def symlink(self, ctx, body):
        name, target = proto.names(body, 0, 2)
        path = self._child(ctx[1], name)
        with self._as_caller(ctx):
            self.fs.symlink(target, path)
        return self._entry(ctx[1], name, self.fs.lstat(path))

    def link(self, ctx, body):
        (old,) = proto.LINK_IN.unpack_from(body)
        name = proto.names(body, proto.LINK_IN.size, 1)[0]
        path = self._child(ctx[1], name)
        with self._as_caller(ctx):
            self.fs.link(self._path(old), path)
        return self._entry(ctx[1], name, self.fs.lstat(path))

    def readlink(self, ctx, body):
        return (os.fsencode(self.fs.readlink(self._path(ctx[1]))),)

    def unlink(self, ctx, body):
        return self._remove(ctx, body, self.fs.unlink)  # an open file lives on as an orphan

    def rmdir(self, ctx, body):
        return self._remove(ctx, body, self.fs.rmdir)

    def _remove(self, ctx, body, remove):
        name = proto.names(body, 0, 1)[0]
        path = self._child(ctx[1], name)
        with self._as_caller(ctx):
            st = self.fs.lstat(path)
            remove(path)
        self._unnamed(ctx[1], name, st.st_ino)
        if _stat.S_ISDIR(st.st_mode) and st.st_ino in self.lookups:
            # its inode is gone from the filesystem, but a cwd or an open descriptor may still
            # fstat it: as on tmpfs, it stats with no links (an orphan file stays in the fs itself)
            self.removed[st.st_ino] = _unlinked(st)
        return ()

    def rename(self, ctx, body):
        (newdir,) = proto.RENAME_IN.unpack_from(body)
        return self._rename(ctx, newdir, 0, *proto.names(body, proto.RENAME_IN.size, 2))

    def rename2(self, ctx, body):
        newdir, flags, _ = proto.RENAME2_IN.unpack_from(body)
        return self._rename(ctx, newdir, flags, *proto.names(body, proto.RENAME2_IN.size, 2))

    def _rename(self, ctx, newdir: int, flags: int, old: str, new: str):
        if flags & ~RENAME_NOREPLACE:
            raise _error(errno.EINVAL, "rename flags")  # RENAME_EXCHANGE, RENAME_WHITEOUT: not supported
        src, dst = self._child(ctx[1], old), self._child(newdir, new)
        with self._as_caller(ctx):
            st = self.fs.lstat(src)
            replaced = _lstat_or_none(self.fs, dst)
            if flags & RENAME_NOREPLACE and replaced is not None:
                raise _error(errno.EEXIST, dst)
            self.fs.rename(src, dst)
        if replaced is not None and replaced.st_ino != st.st_ino:
            self._unnamed(newdir, new, replaced.st_ino)
        if self.names.get(st.st_ino) == (ctx[1], old) or st.st_ino in self.lookups:
            self.names[st.st_ino] = (newdir, new)
        return ()

    def opendir(self, ctx, body):
        with self._as_caller(ctx):
            self.fs.listdir(self._path(ctx[1]))  # ENOENT, ENOTDIR, EACCES now, as opendir(3) reports them
        fh = self._next_fh
        self._next_fh += 1
        self.dirs[fh] = [ctx[1], None]
        return (proto.open_out(fh, 0),)

    def readdir(self, ctx, body):
        fh, offset, size, _, _, _, _ = RW_IN.unpack_from(body)
        d = self.dirs.get(fh)
        if d is None:
            raise _error(errno.EBADF, f"directory handle {fh}")
        if offset == 0 or d[1] is None:  # a new pass (rewinddir): the directory as it is now
            path = self._path(d[0])
            ents = self.fs.scandir(path)  # read permission was the kernel's to check, at opendir
            up = self.fs.stat(path.rstrip("/").rpartition("/")[0] or "/")
            here = self.fs.stat_ino(d[0])
            d[1] = [(".", here.st_ino, here.st_mode), ("..", up.st_ino, up.st_mode)] + [
                (name, st.st_ino, st.st_mode) for name, st in ents
            ]
        out, used = [], 0
        for i in range(offset, len(d[1])):
            name, ino, mode = d[1][i]
            rec = proto.dirent(ino, i + 1, name, mode)
            if used + len(rec) > size:
                break
            out.append(rec)
            used += len(rec)
        return (b"".join(out),)

    def releasedir(self, ctx, body):
        self.dirs.pop(proto.RELEASE_IN.unpack_from(body)[0], None)  # fuse_release_in, as RELEASE
        return ()

    def fsyncdir(self, ctx, body):
        return ()  # every namespace change is committed before its reply
