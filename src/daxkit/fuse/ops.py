"""The FUSE operations: each request of the kernel answered from a DaxFS (SPEC 6).

Rules
  * The kernel's inodes are the filesystem's: a node id is the inode number (the root is 1 in
    both, and numbers are never reused).  Every name of a hard-linked file is therefore one
    kernel inode, with one page cache and one size, which is what lets the kernel keep a
    writeback cache (``init``): it owns i_size, and no other name could see a stale one.
  * Errors are the filesystem's errnos, unchanged: a read over known poison is EIO, an
    unaligned write over it EFAULT, a shut-down filesystem EIO.  ``dispatch`` is the errno
    boundary: any other exception becomes an errno too (EINVAL for bad values, EIO for the rest).
  * A read replies with the whole request, or fewer bytes only at end of file, or EIO: the
    kernel takes a short reply for end of file, so poison met mid-request must be EIO.
  * The kernel caches file pages across opens (keep_cache) and holds written pages until it
    writes them back; ``kcache.py`` keeps those pages true: when the device's known errors
    change, in this process or another, the cached pages of exactly the affected file ranges are
    invalidated (FUSE_NOTIFY_INVAL_INODE on the inode), so the next reader asks us and gets EIO,
    and an mmap load of the page gets SIGBUS.  Only that explicit word moves the cache
    (EXPLICIT_INVAL_DATA): this server is the filesystem's only writer.
  * The kernel checks permissions (``default_permissions``).  Each request that makes or removes
    names runs as its caller (``fs.as_user``), so what it creates is the caller's and the
    filesystem's own checks agree with the kernel's.  Opens and attribute changes run as the
    server: the kernel has checked them, and it sends some that their caller could not make
    (ATTR_FORCE).  The set-ID bits that a write, truncate or fallocate clears
    (FUSE_HANDLE_KILLPRIV_V2 leaves that to us) follow the caller's rights (``_as_writer``).
  * The filesystem speaks paths.  A node's path is rebuilt from the names the kernel knows it by
    (lookup, create, link, rename), parent by parent; a file whose remembered name was removed is
    found by ``fs.paths_of``; an unlinked open file lives on as an orphan reached by its handles.
  * ``user.daxkit.bad_ranges`` (xattr) is the file's bad ranges as JSON.
"""

from __future__ import annotations

import contextlib
import errno
import os

from . import proto
from .attrs import AttrOps
from .base import (  # noqa: F401 -- STOP_SIGNALS, XATTR_BAD_RANGES and _errno_of are ops' names
    INIT_WANT,
    STOP_SIGNALS,
    XATTR_BAD_RANGES,
    _errno_of,
    _Open,
    log,
)
from .files import FileOps
from .names import NameOps
from .proto import IN_HEADER, NO_REPLY, reply


class Operations(NameOps, AttrOps, FileOps):
    """The handlers, one per opcode; ``dispatch`` answers one request."""

    def __init__(self, fs, kcache=None, send=None, on_ready=None):
        self.fs = fs
        self.kcache = kcache
        self.send = send  # the channel's send: INIT answers before the cache starts
        self.on_ready = on_ready
        self.destroyed = False
        self.names: dict[int, tuple[int, str]] = {}  # node -> (parent node, name) the kernel knows it by
        self.lookups: dict[int, int] = {}  # node -> the kernel's lookup count
        self.removed: dict[int, os.stat_result] = {}  # a removed directory the kernel holds -> its stat
        self.files: dict[int, _Open] = {}
        self.dirs: dict[int, list] = {}  # fh -> [node, entries of the last pass or None]
        self._next_fh = 1
        P = proto
        self._table = {
            P.INIT: self.init, P.DESTROY: self.destroy, P.LOOKUP: self.lookup, P.FORGET: self.forget,
            P.BATCH_FORGET: self.batch_forget, P.GETATTR: self.getattr, P.SETATTR: self.setattr,
            P.READLINK: self.readlink, P.SYMLINK: self.symlink, P.MKNOD: self.mknod, P.MKDIR: self.mkdir,
            P.UNLINK: self.unlink, P.RMDIR: self.rmdir, P.RENAME: self.rename, P.RENAME2: self.rename2,
            P.LINK: self.link, P.OPEN: self.open, P.CREATE: self.create, P.READ: self.read,
            P.WRITE: self.write, P.FLUSH: self.flush, P.RELEASE: self.release, P.FSYNC: self.fsync,
            P.FALLOCATE: self.fallocate, P.STATFS: self.statfs, P.OPENDIR: self.opendir,
            P.READDIR: self.readdir, P.RELEASEDIR: self.releasedir, P.FSYNCDIR: self.fsyncdir,
            P.GETXATTR: self.getxattr, P.LISTXATTR: self.listxattr, P.SETXATTR: self.no_xattr,
            P.REMOVEXATTR: self.no_xattr, P.INTERRUPT: self.interrupt,
        }  # fmt: skip

    def dispatch(self, req) -> list | None:
        """The reply to one request (a buffer holding it whole), or None when it takes none."""
        length, opcode, unique, nodeid, uid, gid, pid, _, _ = IN_HEADER.unpack_from(req)
        fn = self._table.get(opcode)
        if fn is None:
            return None if opcode in NO_REPLY else reply(unique, errno.ENOSYS)
        try:
            out = fn((unique, nodeid, uid, gid, pid), req[IN_HEADER.size : length])
        except Exception as e:
            if opcode in NO_REPLY:
                log.debug("opcode %d: %r", opcode, e)
                return None
            log.debug("opcode %d node %d: %r", opcode, nodeid, e)
            return reply(unique, _errno_of(e))
        return None if out is None else reply(unique, 0, *out)

    def init(self, ctx, body):
        major, minor, readahead, flags = proto.INIT_IN.unpack_from(body)
        from .channel import MAX_PAGES

        out = proto.INIT_OUT.pack(
            proto.KERNEL_MAJOR, min(minor, proto.KERNEL_MINOR), readahead, flags & INIT_WANT,
            16, 12, MAX_PAGES * 4096, 1, MAX_PAGES, 0, 0, *([0] * 7),
        )  # fmt: skip
        self.send(reply(ctx[0], 0, out))  # the mount is live once the kernel has this
        if self.kcache is not None:
            self.kcache.start()
        if self.on_ready is not None:
            self.on_ready()
        return None

    def destroy(self, ctx, body):
        self.destroyed = True
        return ()

    def interrupt(self, ctx, body):
        return None  # every request is answered promptly; none is worth abandoning

    def close_all(self) -> None:
        """The session is over: every handle the kernel still held is closed."""
        for o in self.files.values():
            with contextlib.suppress(Exception):
                o.f.close()
        self.files.clear()
        self.dirs.clear()
