"""The FUSE operations: each request of the kernel answered from a DaxFS (SPEC 6).

Rules
  * Errors are the filesystem's errnos, unchanged: a read over known poison is EIO, an
    unaligned write over it EFAULT, a shut-down filesystem EIO.  Every handler is an errno
    boundary: any other exception becomes an errno too (EINVAL for bad values, EIO for the
    rest), so nothing reaches mfusepy, whose fallback would log and guess.
  * A read replies with the whole request, or fewer bytes only at end of file, or EIO: the
    kernel takes a short reply for end of file (and may zero-fill the rest of the page), so
    poison met mid-request must be EIO, never a short count.  Hence no direct_io.
  * The kernel caches file pages across opens (keep_cache; writes go through to us, see
    init_with_config); ``kcache.py`` keeps those pages true: when the device's known errors
    change, in this process or another, the cached pages of exactly the affected file ranges
    are invalidated, so the next reader asks us and gets EIO, and an mmap load of the page gets
    SIGBUS.  The kernel decides about the cache only on
    that explicit word (no auto_inval_data): this server is the only writer of the filesystem.
  * The kernel checks permissions (``default_permissions``) against the mode and owners we
    report, for every user of the machine (``allow_other``, where fuse.conf permits) unless the
    mount is private.  Each request that makes or removes names runs as its caller
    (``fs.as_user`` with the caller's uid, gid and groups), so what it creates is the caller's and
    the filesystem's own checks agree with the kernel's.  Attribute changes (chmod, chown, utimens,
    truncate) run as the server: the kernel has checked them already (setattr_prepare), and it
    sends some that their caller could not make (ATTR_FORCE).  Only the set-ID bits that a
    write, truncate or fallocate clears (FUSE_HANDLE_KILLPRIV_V2 leaves that to us) follow the
    caller's rights (see _as_writer).
    Paths reach us resolved: no handler follows a last symlink.
  * An unlinked open file stays reachable through its handle and libfuse's hidden name for it
    (see _hidden_file); inode numbers are the filesystem's (``use_ino``).  libfuse's inodes are
    names, so the kernel holds one inode per hard link: a change to one name invalidates the
    cached attributes of the others.
  * Times are nanoseconds both ways; utimensat's UTIME_NOW/UTIME_OMIT reach the filesystem as
    the markers they are (see ``_fuse_class``).
  * ``user.daxkit.bad_ranges`` (xattr) is the file's bad ranges as JSON.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import queue
import signal
import stat as _stat
import threading
import time

from .kcache import KernelCache

XATTR_BAD_RANGES = "user.daxkit.bad_ranges"
INVAL_WAIT = 0.2  # seconds a request waits for the other names of a hard-linked inode to be invalidated
HIDDEN_PREFIX = ".fuse_hidden"  # libfuse renames an open file to this instead of unlinking it
O_ACCMODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
RENAME_NOREPLACE = 1  # renameat2(2)
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2  # utimensat(2)'s tv_nsec markers
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FUSE_CAP_AUTO_INVAL_DATA, FUSE_CAP_WRITEBACK_CACHE = 1 << 12, 1 << 16  # fuse_common.h
SETTLE_TIMEOUT = 0.5  # s a direct read that failed waits for the cache to be told
ENODATA_NAMES = (b"security.", b"system.", b"trusted.")  # asked on every write (file_remove_privs)
STATVFS_KEYS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                "f_favail", "f_flag", "f_namemax")  # fmt: skip
# errnos for exceptions that carry none, first match wins (UnicodeError is a ValueError)
ERRNO_OF_EXCEPTION = (
    (OverflowError, errno.EOVERFLOW),
    (ValueError, errno.EINVAL),
    (TypeError, errno.EINVAL),
)
log = logging.getLogger(__name__)


def _errno_of(e: BaseException) -> int:
    if isinstance(e, OSError) and isinstance(e.errno, int) and e.errno > 0:
        return e.errno
    for kind, code in ERRNO_OF_EXCEPTION:
        if isinstance(e, kind):
            return code
    return errno.EIO


def _context(mfusepy) -> tuple[int, int, int] | None:
    """(uid, gid, pid) of the request being served, or None outside one."""
    try:
        return mfusepy.fuse_get_context()
    except ValueError:  # libfuse has no context here (a NULL pointer)
        return None


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


def _ns_of_timespec(ts) -> int:
    """A utimens timespec in nanoseconds, or the UTIME_NOW/UTIME_OMIT marker it carries (libfuse
    passes tv_sec 0 with them, so folding would make them times 1.07 s after the epoch)."""
    if ts.tv_nsec in (UTIME_NOW, UTIME_OMIT):
        return ts.tv_nsec
    return ts.tv_sec * 10**9 + ts.tv_nsec


def _fuse_class(mfusepy):
    """mfusepy's FUSE, with utimens keeping UTIME_NOW/UTIME_OMIT (with ``use_ns`` mfusepy hands
    the handler ``tv_sec * 10**9 + tv_nsec``, in which the markers are lost), and two fast paths
    measured on fio: the kernel asks for ``security.capability`` before every write, answered
    here without a trip through the handler's exception; and written bytes reach the handler as
    a view of libfuse's buffer, not a copy."""

    class DaxFUSE(mfusepy.FUSE):
        def getxattr(self, path, name, value, size, *args):
            if name.startswith(ENODATA_NAMES):
                return -errno.ENODATA
            return super().getxattr(path, name, value, size, *args)

        def open(self, path, fip):
            super().open(path, fip)
            # Pages stay cached across opens, except for a file with other names: libfuse gives
            # each name its own kernel inode, so each name's pages are reloaded at open.
            fip.contents.keep_cache = self.operations._single_name(path.decode(self.encoding, self.errors))
            return 0

        def read(self, path, buf, size, offset, fip):
            try:
                return super().read(path, buf, size, offset, fip)
            except mfusepy.FuseOSError as e:
                kc = self.operations._kcache
                if e.errno == errno.EIO and fip.contents.flags & os.O_DIRECT and kc is not None:
                    # A direct read may have just made poison known (consumption) in a page that
                    # others have cached: that page is gone from the cache before we answer.
                    kc.settle(SETTLE_TIMEOUT)
                raise

        def write(self, path, buf, size, offset, fip):
            fi = fip.contents
            raw = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents)))
            data = raw.cast("B")
            try:
                return self.operations.write(None, data, offset, fi.fh)
            finally:
                data.release()
                raw.release()

        def utimens_fuse_2(self, path, buf, fh=None):
            times = None
            if buf:
                times = (_ns_of_timespec(buf.contents.actime), _ns_of_timespec(buf.contents.modtime))
            return self.operations.utimens(
                None if path is None else path.decode(self.encoding, self.errors), times, fh
            )

        def utimens_fuse_3(self, path, buf, fip):
            # a request on an open handle names the file, not a path (libfuse's nullpath_ok)
            return self.utimens_fuse_2(path, buf, fip.contents.fh if fip else None)

        def truncate_fuse_3(self, path, length, fip):
            # mfusepy drops the handle: an ftruncate of an unlinked file has no path, only it
            fh = fip.contents.fh if fip else None
            return self.operations.truncate(None if path is None else path.decode(self.encoding, self.errors),
                                            length, fh)  # fmt: skip

        def rename_fuse_3(self, old, new, flags):
            # mfusepy drops renameat2's flags: RENAME_NOREPLACE must never replace
            dec = functools.partial(bytes.decode, encoding=self.encoding, errors=self.errors)
            return self.operations.rename(dec(old), dec(new), flags)

    return DaxFUSE


def make_operations(fs, mfusepy, mountpoint: str | None = None):
    """The handlers.  With ``mountpoint``, the kernel's cache of it is kept true (kcache.py)."""
    FuseOSError = mfusepy.FuseOSError

    def handler(fn):
        """An errno boundary: whatever ``fn`` raises leaves as a FuseOSError."""

        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except FuseOSError:
                raise
            except Exception as e:
                log.debug("%s%r: %r", fn.__name__, args[1:], e)
                raise FuseOSError(_errno_of(e)) from None

        return guarded

    def as_caller(fn):
        """Run a handler as the process that made the request (its uid, gid and groups)."""

        @functools.wraps(fn)
        def run(*args, **kwargs):
            ctx = _context(mfusepy)
            if ctx is None:  # called outside a request (tests): as the server
                return fn(*args, **kwargs)
            with fs.as_user(ctx[0], ctx[1], functools.partial(_groups_of, ctx[2])):
                return fn(*args, **kwargs)

        return run

    class DaxFuse(mfusepy.Operations):
        use_ns = True
        # libfuse's nullpath_ok: a request on an open handle comes without a path, so an
        # unlinked open file (hard_remove) keeps working instead of failing with ESTALE
        flag_nopath = flag_nullpath_ok = True

        def __init__(self):
            # Attribute names are private: mfusepy treats public names as FUSE operations.
            self._fs = fs
            self._files: dict[int, object] = {}
            self._dirs: dict[int, str] = {}  # open directories: handle -> path
            self._hidden: dict[str, int] = {}  # libfuse's hidden names of unlinked open files -> inode
            self._hidden_at: dict[str, str] = {}  # the same names -> their paths
            self._users: dict[int, int] = {}  # fh -> ino, for the handles of users (not our pins)
            self._next_fh = 1
            self._fh_lock = threading.Lock()
            self._fuse_ptr = None
            self._ready = threading.Event()
            self._on_ready_cb = None
            lib = mfusepy._libfuse
            lib.fuse_exit.argtypes = [ctypes.c_void_p]
            lib.fuse_exit.restype = None
            self._kcache = KernelCache(fs, lib, mountpoint) if mountpoint is not None else None
            self._session = None
            # the other names of a hard-linked inode (_inval_links): attributes, by path
            self._inval: queue.Queue = queue.Queue()
            lib.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.fuse_invalidate_path.restype = ctypes.c_int
            threading.Thread(target=self._invalidator, name="daxkit-fuse-inval", daemon=True).start()

        # -- invalidation of attributes (pages: kcache.py) ----------------------------------------
        def _invalidator(self):
            while True:
                item = self._inval.get()
                if item is None:
                    return
                path, done = item if isinstance(item, tuple) else (item, None)
                if self._fuse_ptr is not None:
                    mfusepy._libfuse.fuse_invalidate_path(
                        self._fuse_ptr, path.encode("utf-8", "surrogateescape")
                    )
                if done is not None:
                    done.set()

        def _inval_links(self, ino: int, changed: str | None, *, hidden_too: bool = True) -> None:
            """The kernel holds one inode per name (libfuse's nodes are names): when an inode with
            other names changes, their cached attributes go too.  The invalidation runs on the
            worker (calling it from inside a request could wait on a page lock
            held for that very request); the request waits a moment for it, so that the caller's
            next stat of another name is fresh, but never long (a page lock could hold it)."""
            hidden = [at for n, at in list(self._hidden_at.items()) if self._hidden.get(n) == ino]
            if not hidden_too:
                hidden = []
            others = [p for p in fs.paths_of(ino) + hidden if p != changed]
            if not others or self._fuse_ptr is None:
                return
            done = [threading.Event() for _ in others]
            for path, ev in zip(others, done):
                self._inval.put((path, ev))
            deadline = time.monotonic() + INVAL_WAIT
            for ev in done:
                if not ev.wait(max(0.0, deadline - time.monotonic())):
                    break

        def _exit_loop(self) -> None:
            """End the loop as fuse_exit does (it notices at its next wake-up)."""
            if self._fuse_ptr is not None:
                mfusepy._libfuse.fuse_exit(self._fuse_ptr)

        def init_with_config(self, conn, config):
            """Pages kept across opens, explicit invalidation only; no writeback cache (under it the
            kernel trusts its own i_size of a file, and libfuse gives each name of a hard-linked
            file its own kernel inode, so a size changed through one name would never be seen
            through another; an inode-based server could have it)."""
            if config is not None:
                config.kernel_cache = 0  # keep_cache is set per open (_fuse_class)
                config.auto_cache = 0
            if conn is not None:
                conn.want &= ~(FUSE_CAP_AUTO_INVAL_DATA | FUSE_CAP_WRITEBACK_CACHE)
            self.init("/")

        def init(self, path):
            try:
                self._fuse_ptr = mfusepy._libfuse.fuse_get_context().contents.fuse
                if self._kcache is not None:
                    self._kcache.start(self._fuse_ptr)
                self._ready.set()
                if self._on_ready_cb is not None:
                    self._on_ready_cb()
            except Exception:  # init cannot fail in libfuse; a lost ready note times out instead
                log.exception("init")

        def destroy(self, path):
            self._inval.put(None)
            if self._kcache is not None:
                self._kcache.stop()

        # -- attributes ----------------------------------------------------------------------------
        @handler
        def getattr(self, path, fh=None):
            f = self._files.get(fh) if fh is not None else None
            if f is None or path is not None:
                f = self._hidden_file(path)
            st = f.stat() if f is not None else fs.lstat(path)
            return {
                "st_mode": st.st_mode, "st_ino": st.st_ino, "st_nlink": st.st_nlink, "st_size": st.st_size,
                "st_uid": st.st_uid, "st_gid": st.st_gid, "st_rdev": st.st_rdev, "st_blocks": st.st_blocks,
                "st_blksize": st.st_blksize,
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns,
            }  # fmt: skip

        @handler
        def chmod(self, path, mode):
            f = self._hidden_file(path)
            if f is not None:
                raise FuseOSError(errno.EPERM)  # fchmod of an unlinked file: not kept
            fs.chmod(path, mode & 0o7777, follow_symlinks=False)
            self._changed(path)
            return 0

        @handler
        def chown(self, path, uid, gid):
            if self._hidden_file(path) is not None:
                raise FuseOSError(errno.EPERM)
            fs.chown(path, uid, gid, follow_symlinks=False)
            self._changed(path)
            return 0

        def _changed(self, path: str, ino: int | None = None) -> None:
            if ino is None:
                st = fs.lstat(path)
                if st.st_nlink < 2 or _stat.S_ISDIR(st.st_mode):
                    return
                ino = st.st_ino
            self._inval_links(ino, path)

        # -- unlinked open files -------------------------------------------------------------------
        # libfuse renames a file that is unlinked while open to .fuse_hiddenXXXX and unlinks that
        # name at its last close.  Here the rename is the unlink (the inode lives on as an orphan
        # while its DaxFile is open) and the hidden name, which nothing lists, leads to it, so that
        # fstat sees st_nlink 0 and the directory can be removed.
        def _hidden_file(self, path):
            if path is None or HIDDEN_PREFIX not in path:
                return None
            ino = self._hidden.get(path.rpartition("/")[2])
            if ino is None:
                return None
            for f in list(self._files.values()):
                if f.ino == ino and not f.closed:
                    return f
            return None

        @handler
        def utimens(self, path, times=None, fh=None):
            f = self._files.get(fh) if path is None and fh is not None else self._hidden_file(path)
            if f is not None:  # on an open handle (no path: nullpath_ok), or
                # on libfuse's hidden name of an unlinked open file: the inode itself
                f.utime(None if times is None else (int(times[0]), int(times[1])))
                return 0
            if path is None:
                raise FuseOSError(errno.EBADF)
            if times is None:
                fs.utime(path, follow_symlinks=False)
            else:
                fs.utime(path, (int(times[0]), int(times[1])), follow_symlinks=False)
            self._changed(path)
            return 0

        @handler
        def statfs(self, path):
            s = fs.statfs()
            return {key: s[key] for key in STATVFS_KEYS if key in s}

        @handler
        def getxattr(self, path, name, position=0):
            if name != XATTR_BAD_RANGES or not _stat.S_ISREG(fs.lstat(path).st_mode):
                raise FuseOSError(errno.ENODATA)
            f = fs.open(path, "r")
            try:
                bad = f.bad_ranges()
            finally:
                f.close()
            return json.dumps([{"offset": o, "length": n} for o, n in bad]).encode()

        @handler
        def listxattr(self, path):
            return [XATTR_BAD_RANGES] if _stat.S_ISREG(fs.lstat(path).st_mode) else []

        # -- namespace -----------------------------------------------------------------------------
        @handler
        @as_caller
        def opendir(self, path):
            fs.listdir(path)  # ENOENT, ENOTDIR, EACCES now, as opendir(3) reports them
            with self._fh_lock:
                fh = self._next_fh
                self._next_fh += 1
                self._dirs[fh] = path
            return fh

        def releasedir(self, path, fh):
            self._dirs.pop(fh, None)
            return 0

        @handler
        @as_caller
        def readdir(self, path, fh):
            # nullpath_ok: the path is the one opendir saw (a renamed directory keeps its old one
            # here, as the path-based readdir always did)
            path = self._dirs.get(fh, path) if path is None else path
            # with use_ino the kernel takes each entry's inode number from here (0 would hide it)
            dot = fs.stat(path).st_ino
            up = fs.stat(path.rstrip("/").rpartition("/")[0] or "/").st_ino
            return [(".", {"st_ino": dot}, 0), ("..", {"st_ino": up}, 0)] + [
                (name, {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0) for name, st in fs.scandir(path)
            ]

        @handler
        @as_caller
        def mkdir(self, path, mode):
            fs.mkdir(path, mode & 0o7777)
            return 0

        @handler
        @as_caller
        def rmdir(self, path):
            fs.rmdir(path)
            return 0

        @handler
        @as_caller
        def unlink(self, path):
            name = path.rpartition("/")[2]
            if name in self._hidden:
                del self._hidden[name]  # libfuse's last close of a hidden file: already unlinked
                self._hidden_at.pop(name, None)
                return 0
            st = fs.lstat(path)
            fs.unlink(path)
            if st.st_nlink > 1 or st.st_ino in self._hidden.values():
                self._changed(path, st.st_ino)  # its other names, hidden open ones included
            return 0

        @handler
        @as_caller
        def rename(self, old, new, flags=0):
            if flags & ~RENAME_NOREPLACE:
                raise FuseOSError(errno.EINVAL)  # RENAME_EXCHANGE, RENAME_WHITEOUT: not supported
            hidden = new.rpartition("/")[2]
            if hidden.startswith(HIDDEN_PREFIX) and not flags:
                st = fs.lstat(old)  # libfuse hiding an open file: unlink it, keep the hidden name
                fs.unlink(old)
                self._hidden[hidden] = st.st_ino
                self._hidden_at[hidden] = new
                if st.st_nlink > 1:
                    self._changed(old, st.st_ino)
                return 0
            replaced = _lstat_or_none(fs, new)
            if flags & RENAME_NOREPLACE and replaced is not None:
                raise FuseOSError(errno.EEXIST)
            fs.rename(old, new)
            if replaced is not None and replaced.st_nlink > 1 and not _stat.S_ISDIR(replaced.st_mode):
                self._changed(new, replaced.st_ino)
            return 0

        @handler
        @as_caller
        def symlink(self, target, source):
            fs.symlink(source, target)  # mfusepy's names: the link is ``target``, it holds ``source``
            return 0

        @handler
        def readlink(self, path):
            return fs.readlink(path)

        @handler
        @as_caller
        def link(self, target, source):
            fs.link(source, target)  # a new name ``target`` for ``source``
            self._changed(target)
            return 0

        @handler
        @as_caller
        def mknod(self, path, mode, dev):
            fs.mknod(path, mode, dev)
            return 0

        # -- files -------------------------------------------------------------------------------
        def _add(self, f, path: str | None = None) -> int:
            with self._fh_lock:
                fh = self._next_fh
                self._next_fh += 1
                self._files[fh] = f
                kc = self._kcache
                if kc is not None and not kc.is_own(mfusepy._libfuse.fuse_get_context().contents.pid):
                    self._users[fh] = f.ino
                    if path is not None:
                        kc.opened(f.ino, path)
                return fh

        def _last_user(self, fh) -> bool:
            """Is ``fh`` a user's handle, and the last one of its file?"""
            with self._fh_lock:
                ino = self._users.get(fh)
                return ino is not None and sum(1 for i in self._users.values() if i == ino) == 1

        def _file(self, fh):
            f = self._files.get(fh)
            if f is None:
                raise FuseOSError(errno.EBADF)
            return f

        @handler
        @as_caller
        def create(self, path, mode, fi=None):
            return self._add(fs.open(path, "x+", perm=mode & 0o7777))

        def _single_name(self, path) -> bool:
            try:
                return fs.stat(path).st_nlink == 1
            except Exception:
                return False

        @handler
        @as_caller
        def open(self, path, flags):
            # O_TRUNC is ours (libfuse asks for atomic_o_trunc); O_APPEND is the kernel's.  Our own
            # pinner's opens (kcache.py) are no reader's: they leave atime alone.
            kc = self._kcache
            own = kc is not None and kc.is_own(mfusepy._libfuse.fuse_get_context().contents.pid)
            f = fs.open(path, flags & (O_ACCMODE | os.O_TRUNC) | (os.O_NOATIME if own else 0))
            return self._add(f, path)

        @handler
        def read(self, path, size, offset, fh):
            # The kernel takes a short reply for end of file: the whole request or EIO (SPEC 6).
            return self._file(fh).pread_exact(size, offset)

        def _as_writer(self, f):
            """Changing the data of a set-ID file clears its set-ID bits as its caller's rights
            say (killed_privs: root keeps them, S_ISGID stays for a member of the file's group);
            with FUSE_HANDLE_KILLPRIV_V2 that is ours to do on write, truncate and fallocate.
            Any other file's data changes as the server (the kernel checked the caller)."""
            ctx = _context(mfusepy) if f.setid else None
            if ctx is None:
                return contextlib.nullcontext()
            return fs.as_user(ctx[0], ctx[1], functools.partial(_groups_of, ctx[2]))

        @handler
        def write(self, path, data, offset, fh):
            f = self._file(fh)
            if not f.setid:  # the common case, on the fast path
                n = f.pwrite(data, offset)
            else:
                with self._as_writer(f):
                    n = f.pwrite(data, offset)
            if f.nlink > 1:
                # size and mtime, through the file's other names too -- never the one written
                # through (its pages are locked for this very request), which may be a hidden one
                self._inval_links(f.ino, f.name, hidden_too=False)
            return n

        @handler
        def truncate(self, path, length, fh=None):
            f = self._files.get(fh) if fh is not None else None
            if f is None or not f.writable:
                f = self._hidden_file(path) or f
            if f is not None and (f.writable or path is None or HIDDEN_PREFIX in path):
                with self._as_writer(f):
                    f.truncate(length)
                if f.stat().st_nlink > 1 or f.ino in self._hidden.values():
                    self._changed(path, f.ino)  # an ftruncate's size, through the other names too
                return 0
            f = fs.open(path, os.O_WRONLY)
            try:
                with self._as_writer(f):
                    f.truncate(length)
            finally:
                f.close()
            self._changed(path)
            return 0

        @handler
        def fallocate(self, path, mode, offset, size, fh):
            f = self._file(fh)
            with self._as_writer(f):
                f.fallocate(mode, offset, size)
            return 0

        @handler
        def fsync(self, path, datasync, fh):
            self._file(fh).fsync()
            return 0

        def flush(self, path, fh):
            if self._last_user(fh):
                self._kcache.unpin(self._users[fh])  # before close(2) returns: umount may follow
            return 0

        def release(self, path, fh):
            if self._last_user(fh):
                self._kcache.unpin(self._users[fh])
            with self._fh_lock:
                self._users.pop(fh, None)
            f = self._files.pop(fh, None)
            if f is not None:
                try:
                    f.close()
                except Exception as e:  # close(2) has returned already; nobody is left to tell
                    log.debug("release %s: %r", path, e)
            return 0

    return DaxFuse()


