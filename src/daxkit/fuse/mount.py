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
    poison met mid-request must be EIO, never a short count.  Hence no direct_io.
  * The kernel caches file pages across opens (keep_cache) and caches writes (writeback cache,
    written back on flush, fsync and by the kernel's flusher); ``kcache.py`` keeps those pages
    true: when the device's known errors change, in this process or another, the cached pages
    of exactly the affected file ranges are invalidated, so the next reader asks us and gets
    EIO, and an mmap load of the page gets SIGBUS.  The kernel decides about the cache only on
    that explicit word (no auto_inval_data): this server is the only writer of the filesystem.
  * The kernel checks permissions (``default_permissions``) against the mode we report, for
    every user of the machine (``allow_other``, where fuse.conf permits) unless the mount is
    private.  Ownership is not stored yet: files belong to the server's user, and ``chown``
    to anyone else is EPERM, never a silent no-op.
  * Times are nanoseconds both ways; utimensat's UTIME_NOW/UTIME_OMIT reach the filesystem as
    the markers they are (see ``_fuse_class``).
  * ``user.daxkit.bad_ranges`` (xattr) is the file's bad ranges as JSON.

Theory of operation
  ``serve`` runs libfuse's loop (``session.py``) on a worker thread while the main thread holds
  SIGINT, SIGTERM and SIGHUP: a signal ends the loop the way ``fuse_exit`` does (libfuse then
  detaches the mount), and ``serve`` returns the signal's number after closing the filesystem
  and device.  ``mount_background`` forks a server and waits for its ``init``.  ``unmount``
  (``umount.py``) unmounts only daxkit mounts, and a busy one only when asked to detach lazily.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import logging
import os
import signal
import stat as _stat
import threading

from ..errors import DaxError
from .kcache import KernelCache
from .session import Session
from .umount import FSTYPE, unmount  # noqa: F401 -- callers find unmount beside mount_background

XATTR_BAD_RANGES = "user.daxkit.bad_ranges"
O_ACCMODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
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
            if not fi.writepage and path:  # a user's own write, not a write-back (session.py)
                self.operations._written_by_user(path.decode(self.encoding, self.errors))
            raw = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents)))
            data = raw.cast("B")
            try:
                return self.operations.write(None, data, offset, fi.fh)
            finally:
                data.release()
                raw.release()

        def utimens_fuse_2(self, path, buf):
            times = None
            if buf:
                times = (_ns_of_timespec(buf.contents.actime), _ns_of_timespec(buf.contents.modtime))
            return self.operations.utimens(
                None if path is None else path.decode(self.encoding, self.errors), times
            )

        def utimens_fuse_3(self, path, buf, fip):
            return self.utimens_fuse_2(path, buf)

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

    class DaxFuse(mfusepy.Operations):
        use_ns = True

        def __init__(self):
            # Attribute names are private: mfusepy treats public names as FUSE operations.
            self._fs = fs
            self._owner = (os.getuid(), os.getgid())
            self._files: dict[int, object] = {}
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

        def _exit_loop(self) -> None:
            """End the loop as fuse_exit does (it notices at its next wake-up)."""
            if self._fuse_ptr is not None:
                mfusepy._libfuse.fuse_exit(self._fuse_ptr)

        def init_with_config(self, conn, config):
            """Caches on: pages kept across opens, writes cached, explicit invalidation only."""
            if config is not None:
                config.kernel_cache = 0  # keep_cache is set per open (_fuse_class)
                config.auto_cache = 0
            if conn is not None:
                if conn.capable & FUSE_CAP_WRITEBACK_CACHE:
                    conn.want |= FUSE_CAP_WRITEBACK_CACHE
                conn.want &= ~FUSE_CAP_AUTO_INVAL_DATA
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
            if self._kcache is not None:
                self._kcache.stop()

        # -- attributes ----------------------------------------------------------------------------
        @handler
        def getattr(self, path, fh=None):
            st = fs.stat(path)
            return {
                "st_mode": st.st_mode, "st_ino": st.st_ino, "st_nlink": st.st_nlink, "st_size": st.st_size,
                "st_uid": self._owner[0], "st_gid": self._owner[1], "st_blocks": st.st_blocks,
                "st_blksize": st.st_blksize,
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns,
            }  # fmt: skip

        @handler
        def chmod(self, path, mode):
            fs.chmod(path, mode)
            return 0

        @handler
        def chown(self, path, uid, gid):
            fs.stat(path)  # a missing file is ENOENT before it is EPERM
            if uid not in (-1, self._owner[0]) or gid not in (-1, self._owner[1]):
                raise FuseOSError(errno.EPERM)  # ownership is not stored (yet): refuse, never ignore
            fs.utime(path, (UTIME_OMIT, UTIME_OMIT))  # chown(2) marks ctime even when nothing changes
            return 0

        @handler
        def utimens(self, path, times=None):
            if times is None:
                fs.utime(path)
            else:
                fs.utime(path, (int(times[0]), int(times[1])))
            return 0

        @handler
        def statfs(self, path):
            s = fs.statfs()
            return {key: s[key] for key in STATVFS_KEYS if key in s}

        @handler
        def getxattr(self, path, name, position=0):
            if name != XATTR_BAD_RANGES:
                raise FuseOSError(errno.ENODATA)
            f = fs.open(path, "r")
            try:
                bad = f.bad_ranges()
            finally:
                f.close()
            return json.dumps([{"offset": o, "length": n} for o, n in bad]).encode()

        @handler
        def listxattr(self, path):
            return [XATTR_BAD_RANGES] if not _stat.S_ISDIR(fs.stat(path).st_mode) else []

        # -- namespace -----------------------------------------------------------------------------
        @handler
        def readdir(self, path, fh):
            return [".", ".."] + fs.listdir(path)

        @handler
        def mkdir(self, path, mode):
            fs.mkdir(path, mode & 0o7777)
            return 0

        @handler
        def rmdir(self, path):
            fs.rmdir(path)
            return 0

        @handler
        def unlink(self, path):
            fs.unlink(path)
            return 0

        @handler
        def rename(self, old, new):
            fs.rename(old, new)
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
        def create(self, path, mode, fi=None):
            f = fs.open(path, "x+")
            try:
                if mode & 0o7777 != 0o644:
                    fs.chmod(path, mode & 0o7777)
            except BaseException:
                f.close()
                raise
            return self._add(f)

        def _single_name(self, path) -> bool:
            try:
                return fs.stat(path).st_nlink == 1
            except Exception:
                return False

        @handler
        def open(self, path, flags):
            return self._add(fs.open(path, "r" if flags & O_ACCMODE == os.O_RDONLY else "r+"), path)

        @handler
        def read(self, path, size, offset, fh):
            # The kernel takes a short reply for end of file: the whole request or EIO (SPEC 6).
            return self._file(fh).pread_exact(size, offset)

        @handler
        def write(self, path, data, offset, fh):
            return self._file(fh).pwrite(data, offset)

        @handler
        def _written_by_user(self, path):
            """With HANDLE_KILLPRIV_V2 the server clears what the kernel's should_remove_suid
            would when someone without CAP_FSETID writes: set-user-ID, and set-group-ID when the
            file is group-executable or the writer is outside its group.  The kernel sends such
            writes through uncached.  Root stands for CAP_FSETID, the request's gid for the
            writer's groups (libfuse passes no others)."""
            session = self._session
            if session is None or not session.killpriv_v2:
                return
            ctx = mfusepy._libfuse.fuse_get_context().contents
            st = fs.stat(path)
            mode = st.st_mode
            if ctx.uid == 0 or not mode & (_stat.S_ISUID | _stat.S_ISGID):
                return
            drop = _stat.S_ISUID
            if mode & _stat.S_IXGRP or ctx.gid != self.getattr(path)["st_gid"]:
                drop |= _stat.S_ISGID
            fs.chmod(path, _stat.S_IMODE(mode) & ~drop)

        @handler
        def truncate(self, path, length, fh=None):
            f = self._files.get(fh) if fh is not None else None
            if f is not None and f.writable:
                f.truncate(length)
                return 0
            f = fs.open(path, "r+")
            try:
                f.truncate(length)
            finally:
                f.close()
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
    options = {"default_permissions": True}
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
        ops = make_operations(fs, mfusepy, mountpoint)
        ops._on_ready_cb = on_ready
        fuse = _fuse_class(mfusepy)
        ops._session = session = Session(mfusepy._libfuse)

        def run():
            fsname = f"daxkit:{os.getpid()}"  # unmount waits for this pid to let go of the image
            real = mfusepy.fuse_main_real
            mfusepy.fuse_main_real = lambda argc, argv, ops_p, size, _: session.main(argv[:argc], ops_p, size)
            try:
                fuse(ops, mountpoint, foreground=True, nothreads=True, fsname=fsname, subtype="daxfs",
                     **options)  # fmt: skip
            finally:
                mfusepy.fuse_main_real = real

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
