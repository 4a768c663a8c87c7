"""The FUSE mount (SPEC 6): a daxfs served to every program on the machine.

Binding: mfusepy (ctypes over libfuse3's high-level API).  pyfuse3 3.5 has no fallocate
handler, and punch-hole through the mount is part of the contract; mfusepy has it.

Rules
  * Errors are the filesystem's errnos, unchanged: a read over known poison is EIO, an
    unaligned write over it EFAULT, a shut-down filesystem EIO.  Every handler is an errno
    boundary: any other exception becomes an errno too (EINVAL for bad values, EIO for the
    rest), so nothing reaches mfusepy, whose fallback would log and guess.
  * A read replies with the whole request, or fewer bytes only at end of file, or EIO: the
    kernel takes a short reply for end of file (and may zero-fill the rest of the page), so
    poison met mid-request must be EIO, never a short count.  Hence no direct_io/keep_cache.
  * The kernel caches file pages.  When the filesystem hears that file data was lost (a scrub in
    another process, a consumed line), the file's cached pages are invalidated, so the next
    reader asks us and gets EIO, and an mmap load of the page gets SIGBUS.  Invalidation runs on
    a worker thread: calling it from inside a request handler could wait on a page lock held for
    that very request.
  * The kernel checks permissions (``default_permissions``) against the mode and owners we
    report, for every user of the machine (``allow_other``, where fuse.conf permits) unless the
    mount is private.  Each request that makes or removes names runs as its caller
    (``fs.as_user`` with the caller's uid, gid and groups), so what it creates is the caller's and
    the filesystem's own checks agree with the kernel's.  Attribute changes (chmod, chown, utimens,
    truncate) run as the server: the kernel has checked them already (setattr_prepare), and it
    sends some that their caller could not make (clearing S_ISUID after a write, ATTR_FORCE).
    Paths reach us resolved: no handler follows a last symlink.
  * An unlinked open file stays reachable through its handle and libfuse's hidden name for it
    (see _hidden_file); inode numbers are the filesystem's (``use_ino``).  libfuse's inodes are
    names, so the kernel holds one inode per hard link: a change to one name invalidates the
    cached attributes of the others.
  * Times are nanoseconds both ways; utimensat's UTIME_NOW/UTIME_OMIT reach the filesystem as
    the markers they are (see ``_fuse_class``).
  * ``user.daxkit.bad_ranges`` (xattr) is the file's bad ranges as JSON.

Theory of operation
  ``serve`` runs libfuse's loop on a worker thread while the main thread holds SIGINT, SIGTERM
  and SIGHUP: a signal ends the loop the way ``fuse_exit`` does (libfuse then detaches the
  mount), and ``serve`` returns the signal's number after closing the filesystem and device.
  ``mount_background`` forks a server and waits for its ``init``.  ``unmount`` unmounts only
  daxkit mounts, and a busy one only when asked to detach lazily.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import logging
import os
import queue
import re
import shutil
import signal
import stat as _stat
import subprocess
import threading
import time

from ..errors import Busy, DaxError

XATTR_BAD_RANGES = "user.daxkit.bad_ranges"
INVAL_WAIT = 0.2  # seconds a request waits for the other names of a hard-linked inode to be invalidated
HIDDEN_PREFIX = ".fuse_hidden"  # libfuse renames an open file to this instead of unlinking it
O_ACCMODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
RENAME_NOREPLACE = 1  # renameat2(2)
FSTYPE = b"fuse.daxfs"  # what /proc/self/mountinfo shows for our mounts (subtype "daxfs")
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2  # utimensat(2)'s tv_nsec markers
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STATVFS_KEYS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                "f_favail", "f_flag", "f_namemax")  # fmt: skip
# errnos for exceptions that carry none, first match wins (UnicodeError is a ValueError)
ERRNO_OF_EXCEPTION = (
    (OverflowError, errno.EOVERFLOW),
    (ValueError, errno.EINVAL),
    (TypeError, errno.EINVAL),
)
log = logging.getLogger(__name__)


def _import_mfusepy():
    try:
        import mfusepy
    except (ImportError, OSError) as e:
        raise DaxError(
            f"FUSE is not available: {e} (install the Debian package fuse3)", errno=errno.ENOSYS
        ) from None
    logging.getLogger("mfusepy").setLevel(logging.CRITICAL)
    return mfusepy


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
    """mfusepy's FUSE, with utimens keeping UTIME_NOW/UTIME_OMIT: with ``use_ns`` mfusepy hands
    the handler ``tv_sec * 10**9 + tv_nsec``, in which the markers are lost."""

    class DaxFUSE(mfusepy.FUSE):
        def utimens_fuse_2(self, path, buf):
            times = None
            if buf:
                times = (_ns_of_timespec(buf.contents.actime), _ns_of_timespec(buf.contents.modtime))
            return self.operations.utimens(
                None if path is None else path.decode(self.encoding, self.errors), times
            )

        def utimens_fuse_3(self, path, buf, fip):
            return self.utimens_fuse_2(path, buf)

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


def make_operations(fs, mfusepy):
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
            self._next_fh = 1
            self._fh_lock = threading.Lock()
            self._fuse_ptr = None
            self._ready = threading.Event()
            self._inval: queue.Queue = queue.Queue()
            self._on_ready_cb = None
            fs.add_failure_listener(self._on_failure)
            lib = mfusepy._libfuse
            lib.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.fuse_invalidate_path.restype = ctypes.c_int
            lib.fuse_exit.argtypes = [ctypes.c_void_p]
            lib.fuse_exit.restype = None
            threading.Thread(target=self._invalidator, name="daxkit-fuse-inval", daemon=True).start()

        # -- cache invalidation ----------------------------------------------------------------
        def _on_failure(self, ino, path, file_offset, length):
            if path:
                self._inval.put(path)

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

        def _inval_links(self, ino: int, changed: str | None) -> None:
            """The kernel holds one inode per name (libfuse's nodes are names): when an inode with
            other names changes, their cached attributes go too.  The invalidation runs on the
            worker (see _on_failure); the request waits a moment for it, so that the caller's
            next stat of another name is fresh, but never long (a page lock could hold it)."""
            others = [p for p in fs.paths_of(ino) if p != changed]
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

        def init(self, path):
            try:
                self._fuse_ptr = mfusepy._libfuse.fuse_get_context().contents.fuse
                self._ready.set()
                if self._on_ready_cb is not None:
                    self._on_ready_cb()
            except Exception:  # init cannot fail in libfuse; a lost ready note times out instead
                log.exception("init")

        def destroy(self, path):
            self._inval.put(None)

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
        def utimens(self, path, times=None):
            if self._hidden_file(path) is not None:
                raise FuseOSError(errno.EPERM)
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
                return 0
            st = fs.lstat(path)
            fs.unlink(path)
            if st.st_nlink > 1:
                self._changed(path, st.st_ino)
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
        def _add(self, f) -> int:
            with self._fh_lock:
                fh = self._next_fh
                self._next_fh += 1
                self._files[fh] = f
                return fh

        def _file(self, fh):
            f = self._files.get(fh)
            if f is None:
                raise FuseOSError(errno.EBADF)
            return f

        @handler
        @as_caller
        def create(self, path, mode, fi=None):
            return self._add(fs.open(path, "x+", perm=mode & 0o7777))

        @handler
        @as_caller
        def open(self, path, flags):
            # O_TRUNC is ours (libfuse asks for atomic_o_trunc); O_APPEND is the kernel's
            return self._add(fs.open(path, flags & (O_ACCMODE | os.O_TRUNC)))

        @handler
        def read(self, path, size, offset, fh):
            # The kernel takes a short reply for end of file: the whole request or EIO (SPEC 6).
            return self._file(fh).pread_exact(size, offset)

        @handler
        def write(self, path, data, offset, fh):
            f = self._file(fh)
            ctx = _context(mfusepy) if f.setid else None
            if ctx is not None:  # a write clears S_ISUID/S_ISGID unless its caller is root
                with fs.as_user(ctx[0], ctx[1]):
                    return f.pwrite(data, offset)
            return f.pwrite(data, offset)

        @handler
        def truncate(self, path, length, fh=None):
            f = self._files.get(fh) if fh is not None else None
            if f is None or not f.writable:
                f = self._hidden_file(path) or f
            if f is not None and (f.writable or path is None or HIDDEN_PREFIX in path):
                f.truncate(length)
                return 0
            f = fs.open(path, os.O_WRONLY)
            try:
                f.truncate(length)
            finally:
                f.close()
            self._changed(path)
            return 0

        @handler
        def fallocate(self, path, mode, offset, size, fh):
            self._file(fh).fallocate(mode, offset, size)
            return 0

        @handler
        def fsync(self, path, datasync, fh):
            self._file(fh).fsync()
            return 0

        def flush(self, path, fh):
            return 0

        def release(self, path, fh):
            f = self._files.pop(fh, None)
            if f is not None:
                try:
                    f.close()
                except Exception as e:  # close(2) has returned already; nobody is left to tell
                    log.debug("release %s: %r", path, e)
            return 0

    return DaxFuse()


# -- serving -------------------------------------------------------------------------------------
def _check_mountpoint(mountpoint: str) -> None:
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise DaxError("mount point does not exist", errno=errno.ENOENT, path=mountpoint) from None
    except OSError as e:
        raise DaxError(f"mount point: {e.strerror}", errno=_errno_of(e), path=mountpoint) from None
    if not _stat.S_ISDIR(st.st_mode):
        raise DaxError("mount point is not a directory", errno=errno.ENOTDIR, path=mountpoint)


def _allow_other_permitted() -> bool:
    """fusermount3 lets root, or anyone when /etc/fuse.conf says user_allow_other, open a mount
    to other users."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def _mount_options(private: bool) -> dict:
    options = {"default_permissions": True, "use_ino": True}
    if not private and _allow_other_permitted():
        options["allow_other"] = True
    return options


def _run_until_signal(ops, run) -> int | None:
    """Run the FUSE loop ``run()`` on a worker thread while this thread takes STOP_SIGNALS.

    A signal is recorded by a Python handler, which keeps libfuse's own handlers out (it installs
    them only over SIG_DFL, and they end the loop without saying which signal).  Once the mount is
    up, the loop is ended with fuse_exit, and the worker's blocking read of /dev/fuse is
    interrupted by sending it the signal, again until the loop has ended (a signal that lands just
    before the read would be missed).  Returns the signal's number, or None when unmounted."""
    if threading.current_thread() is not threading.main_thread():
        run()  # only the main thread can take signals; the caller owns them
        return None
    got: list[int] = []
    failed: list[BaseException] = []

    def note(signum, frame):
        if not got:
            got.append(signum)

    def loop():
        try:
            run()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            failed.append(e)

    # a signal the caller ignores (a background job's SIGINT) stays ignored
    old = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}
    worker = threading.Thread(target=loop, name="daxkit-fuse-loop")
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.05)
            if got and ops._fuse_ptr is not None and worker.is_alive():
                ops._exit_loop()
                signal.pthread_kill(worker.ident, got[0])
    finally:
        if worker.is_alive():  # this thread failed: end the loop before the filesystem goes
            ops._exit_loop()
            for _ in range(100):
                if old:  # only a signal with ``note`` installed is safe to send
                    signal.pthread_kill(worker.ident, next(iter(old)))
                worker.join(0.05)
                if not worker.is_alive():
                    break
        ctypes.pythonapi.PyErr_CheckSignals()  # a wake-up still pending runs ``note``, not the old handler
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if failed and not (got and isinstance(failed[0], RuntimeError)):
        raise failed[0]  # fuse_main's status after a signal is no failure
    return got[0] if got else None


def serve(image: str, mountpoint: str, on_ready=None, on_error=None, *, private: bool = False) -> int | None:
    """Mount ``image`` at ``mountpoint`` and serve until it is unmounted or a SIGINT, SIGTERM or
    SIGHUP arrives; return that signal's number (None when unmounted).  Either way the mount is
    gone, the filesystem unmounted and the device closed when this returns.  ``private`` keeps the
    mount to this user; otherwise every user may use it, with the kernel checking permissions."""
    import daxkit

    mfusepy = _import_mfusepy()
    _check_mountpoint(mountpoint)
    options = _mount_options(private)
    dev = daxkit.open(image)
    try:
        fs = daxkit.mount(dev)
    except BaseException:
        dev.close()
        raise
    try:
        ops = make_operations(fs, mfusepy)
        ops._on_ready_cb = on_ready
        fuse = _fuse_class(mfusepy)

        def run():
            fsname = f"daxkit:{os.getpid()}"  # unmount waits for this pid to let go of the image
            fuse(ops, mountpoint, foreground=True, nothreads=True, fsname=fsname, subtype="daxfs", **options)

        try:
            return _run_until_signal(ops, run)
        except RuntimeError as e:  # fuse_main's status; libfuse has said why on stderr
            raise DaxError(
                f"libfuse could not serve the mount (status {e})", errno=errno.EIO, path=mountpoint
            ) from None
    finally:
        fs.unmount()
        dev.close()


def mount_background(image: str, mountpoint: str, timeout: float = 30.0, *, private: bool = False) -> int:
    """Fork a server for the mount; return its pid once the mount is live, or raise its error."""
    _check_mountpoint(mountpoint)  # the common mistake, reported without a fork
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the server
        os.close(rfd)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)

        def ready():
            os.write(wfd, b"OK\n")

        code = 0
        try:
            serve(image, mountpoint, on_ready=ready, private=private)
        except BaseException as e:  # noqa: BLE001 - report anything to the parent, then exit
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            try:
                os.write(wfd, f"E {_errno_of(e)} {msg}\n".encode(errors="replace"))
            except OSError:
                pass
            code = 1
        os._exit(code)
    os.close(wfd)
    import select

    r, _, _ = select.select([rfd], [], [], timeout)
    line = os.read(rfd, 4096).decode(errors="replace") if r else ""
    os.close(rfd)
    if line.startswith("OK"):
        return pid
    if line.startswith("E "):
        os.waitpid(pid, 0)
        code, _, msg = line[2:].strip().partition(" ")
        raise DaxError(msg, errno=int(code) if code.isdigit() else errno.EIO)
    raise DaxError(f"the mount server did not come up within {timeout:.0f} s", errno=errno.ETIMEDOUT)


# -- unmounting ----------------------------------------------------------------------------------
def _fstype_at(mountpoint: str) -> tuple[bytes, bytes]:
    """(type, source) of what is mounted at ``mountpoint`` (the topmost one); ENOENT if the path does
    not exist, EINVAL if it is not a mount point.  Read from mountinfo rather than stat, which
    fails on a mount whose server died (ENOTCONN)."""
    path = os.path.realpath(mountpoint)
    try:
        os.lstat(path)
    except FileNotFoundError:
        raise DaxError("mount point does not exist", errno=errno.ENOENT, path=mountpoint) from None
    except OSError:
        pass  # a dead FUSE mount: ENOTCONN; it exists
    want = os.fsencode(path)
    found = None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            if point == want:
                found = fields[fields.index(b"-") + 1 :][:2]
    if found is None:
        raise DaxError("not a mount point", errno=errno.EINVAL, path=mountpoint)
    return found[0], found[1] if len(found) > 1 else b""


def unmount(mountpoint: str, lazy: bool = False) -> None:
    """Unmount a daxkit FUSE mount.  A busy mount (a file open in it, a process inside it) is
    EBUSY and stays mounted, unless ``lazy``: then it is detached from the tree now and its
    server ends when the last user lets go (umount -l)."""
    fstype, source = _fstype_at(mountpoint)
    if fstype != FSTYPE:
        raise DaxError(
            f"not a daxkit mount (it is {fstype.decode(errors='replace')})",
            errno=errno.EINVAL,
            path=mountpoint,
        )
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-uz" if lazy else "-u"] if tool else ["umount", "-l"] if lazy else ["umount"]
    r = subprocess.run([*cmd, mountpoint], capture_output=True, text=True)
    if r.returncode == 0:
        if not lazy:
            _wait_for_server(source)
        return
    why = r.stderr.strip() or r.stdout.strip()
    if "busy" in why.lower():
        raise Busy("mount point is busy: a file in it is open or a process is inside it "
                   "(umount --lazy detaches it anyway)", path=mountpoint)  # fmt: skip
    raise DaxError(f"cannot unmount: {why}", errno=errno.EPERM, path=mountpoint)


def _wait_for_server(source: bytes, timeout: float = 10.0) -> None:
    """The kernel detaches a mount before its server lets go of the image: wait for the server
    (its pid is in the mount's source, "daxkit:PID") so that the image is free when we return."""
    _, _, pid_text = source.partition(b":")
    pid = int(pid_text) if pid_text.isdigit() else 0
    if pid <= 0 or pid == os.getpid():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    return  # exited; its parent has not reaped it yet
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.005)
