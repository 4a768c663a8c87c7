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
import functools
import json
import logging
import os
import signal
import stat as _stat

from . import proto
from .proto import (
    FORGET_IN,
    GETATTR_FH,
    IN_HEADER,
    NO_REPLY,
    RW_IN,
    WRITE_OUT,
    reply,
)

XATTR_BAD_RANGES = "user.daxkit.bad_ranges"
ROOT_ID = 1  # FUSE_ROOT_ID, and daxfs's root inode
ENTRY_S = ATTR_S = 1.0  # seconds the kernel may trust a name or attributes (libfuse's default)
RENAME_NOREPLACE = 1  # renameat2(2)
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2  # utimensat(2)'s tv_nsec markers
# the setattr fields that set something (FATTR_FH, FATTR_KILL_SUIDGID only qualify a change)
CHANGES = (proto.FATTR_MODE | proto.FATTR_UID | proto.FATTR_GID | proto.FATTR_SIZE
           | proto.FATTR_ATIME | proto.FATTR_MTIME | proto.FATTR_ATIME_NOW | proto.FATTR_MTIME_NOW
           | proto.FATTR_CTIME)  # fmt: skip
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SETTLE_TIMEOUT = 0.5  # s a direct read that failed waits for the cache to be told
ENODATA_NAMES = ("security.", "system.", "trusted.")  # never ours; answered without a lookup
O_ACCMODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
# what the kernel may do for us (fuse_init_out.flags), when it offers it
INIT_WANT = (proto.ASYNC_READ | proto.ATOMIC_O_TRUNC | proto.BIG_WRITES | proto.WRITEBACK_CACHE
             | proto.PARALLEL_DIROPS | proto.MAX_PAGES | proto.CACHE_SYMLINKS | proto.EXPLICIT_INVAL_DATA
             | proto.HANDLE_KILLPRIV_V2)  # fmt: skip
# errnos for exceptions that carry none, first match wins (UnicodeError is a ValueError)
ERRNO_OF_EXCEPTION = (
    (OverflowError, errno.EOVERFLOW),
    (ValueError, errno.EINVAL),
    (TypeError, errno.EINVAL),
    (KeyError, errno.EIO),
)
log = logging.getLogger(__name__)


def _errno_of(e: BaseException) -> int:
    if isinstance(e, OSError) and isinstance(e.errno, int) and e.errno > 0:
        return e.errno
    for kind, code in ERRNO_OF_EXCEPTION:
        if isinstance(e, kind):
            return code
    return errno.EIO


def _error(code: int, what: str) -> OSError:
    return OSError(code, f"{what}: {os.strerror(code)}")


def _groups_of(pid: int) -> tuple[int, ...]:
    """A process's supplementary groups, from /proc (libfuse's fuse_getgroups reads the same);
    none when it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return ()


def _lstat_or_none(fs, path: str):
    try:
        return fs.lstat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def _times(valid: int, a_s: int, a_ns: int, m_s: int, m_ns: int) -> tuple[int, int]:
    """setattr's times as utimensat takes them: nanoseconds, UTIME_NOW or UTIME_OMIT."""

    def one(now: int, given: int, s: int, ns: int) -> int:
        return UTIME_NOW if valid & now else s * 10**9 + ns if valid & given else UTIME_OMIT

    return (one(proto.FATTR_ATIME_NOW, proto.FATTR_ATIME, a_s, a_ns),
            one(proto.FATTR_MTIME_NOW, proto.FATTR_MTIME, m_s, m_ns))  # fmt: skip


def _unlinked(st) -> os.stat_result:
    """``st`` with no links."""
    extra = {k: getattr(st, k) for k in ("st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns",
                                         "st_ctime_ns", "st_blocks", "st_blksize", "st_rdev")}  # fmt: skip
    return os.stat_result((*st[:3], 0, *st[4:10]), extra)


class _Open:
    """An open file: its DaxFile, its open(2) flags, and whether a user (not our pinner) holds it."""

    __slots__ = ("f", "flags", "user")

    def __init__(self, f, flags: int, user: bool):
        self.f, self.flags, self.user = f, flags, user


class Operations:
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

    # -- the errno boundary --------------------------------------------------------------------
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

    # -- who asks, and where ---------------------------------------------------------------------
    def _as_caller(self, ctx):
        # the kernel walked the caller to the node (from the root, a cwd or a descriptor, with
        # search permission checked there): the path we rebuild is walked as the server would
        return self.fs.as_user(ctx[2], ctx[3], functools.partial(_groups_of, ctx[4]), walked=True)

    def _as_writer(self, f, ctx):
        """Changing the data of a set-ID file clears its set-ID bits as its caller's rights say
        (killed_privs: root keeps them, S_ISGID stays for a member of the file's group); with
        FUSE_HANDLE_KILLPRIV_V2 that is ours to do.  Any other file's data changes as the server."""
        return self._as_caller(ctx) if f.setid else contextlib.nullcontext()

    def _path(self, node: int) -> str:
        """A path of ``node``: rebuilt from the names the kernel knows, else the filesystem's."""
        parts = []
        while node != ROOT_ID:
            rec = self.names.get(node)
            if rec is None:
                paths = self.fs.paths_of(node)  # its remembered name was removed, or never known
                if not paths:
                    raise _error(errno.ENOENT, f"inode {node}")
                parts.append(paths[0].lstrip("/"))
                break
            node, name = rec
            parts.append(name)
        return "/" + "/".join(reversed(parts))

    def _child(self, parent: int, name: str) -> str:
        if "/" in name or name in ("", ".", ".."):
            raise _error(errno.EINVAL, f"name {name!r}")
        return self._path(parent).rstrip("/") + "/" + name

    def _entry(self, parent: int, name: str, st) -> tuple:
        """An entry reply for ``st``; the kernel now holds one more lookup of it."""
        node = st.st_ino
        self.lookups[node] = self.lookups.get(node, 0) + 1
        if node != ROOT_ID:
            self.names[node] = (parent, name)
        return (proto.entry_out(node, 0, st, ENTRY_S, ATTR_S),)

    def _unnamed(self, parent: int, name: str, node: int) -> None:
        """``parent``/``name`` no longer names ``node``."""
        if self.names.get(node) == (parent, name):
            del self.names[node]

    def _stat(self, node: int, fh: int | None = None):
        o = self.files.get(fh) if fh is not None else None
        if o is not None:
            return o.f.stat()
        try:
            return self.fs.stat_ino(node)
        except OSError as e:
            if e.errno == errno.ENOENT and node in self.removed:
                return self.removed[node]  # a removed directory still held (a cwd, an open fd)
            raise

    def _file(self, fh: int):
        o = self.files.get(fh)
        if o is None:
            raise _error(errno.EBADF, f"handle {fh}")
        return o.f

    # -- the session --------------------------------------------------------------------------------
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

    # -- names -------------------------------------------------------------------------------------
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

    # -- attributes ------------------------------------------------------------------------------
    def getattr(self, ctx, body):
        flags, _, fh = proto.GETATTR_IN.unpack_from(body)
        return (proto.attr_out(self._stat(ctx[1], fh if flags & GETATTR_FH else None), ATTR_S),)

    def setattr(self, ctx, body):
        args = proto.SETATTR_IN.unpack_from(body)
        valid, _, fh, size, _, a_s, m_s, _, a_ns, m_ns, _, mode, _, uid, gid, _ = args
        node, fs = ctx[1], self.fs
        o = self.files.get(fh) if valid & proto.FATTR_FH else None
        try:
            path = self._path(node)
        except OSError:
            path = None  # an unlinked open file: only its handles reach it
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

    # -- directories ------------------------------------------------------------------------------
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

    # -- files ---------------------------------------------------------------------------------------
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
        try:
            path = self._path(ctx[1])
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
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

    def close_all(self) -> None:
        """The session is over: every handle the kernel still held is closed."""
        for o in self.files.values():
            with contextlib.suppress(Exception):
                o.f.close()
        self.files.clear()
        self.dirs.clear()
