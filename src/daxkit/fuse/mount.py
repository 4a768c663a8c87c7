"""The FUSE mount (SPEC 6): a daxfs served to every program on the machine.

Binding: mfusepy (ctypes over libfuse3's high-level API).  pyfuse3 3.5 has no fallocate
handler, and punch-hole through the mount is part of the contract; mfusepy has it.

Rules
  * Errors are the filesystem's errnos, unchanged: a read over known poison is EIO, an
    unaligned write over it EFAULT, a shut-down filesystem EIO.
  * A read replies with the whole request, or fewer bytes only at end of file, or EIO: the
    kernel takes a short reply for end of file (and may zero-fill the rest of the page), so
    poison met mid-request must be EIO, never a short count.  Hence no direct_io/keep_cache.
  * The kernel caches file pages.  When the filesystem hears that file data was lost (a scrub in
    another process, a consumed line), the file's cached pages are invalidated, so the next
    reader asks us and gets EIO, and an mmap load of the page gets SIGBUS.  Invalidation runs on
    a worker thread: calling it from inside a request handler could wait on a page lock held for
    that very request.
  * ``user.daxkit.bad_ranges`` (xattr) is the file's bad ranges as JSON.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import queue
import stat as _stat
import threading

from ..errors import DaxError

XATTR_BAD_RANGES = "user.daxkit.bad_ranges"
O_ACCMODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR


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
    return e.errno if isinstance(e, OSError) and isinstance(e.errno, int) and e.errno > 0 else errno.EIO


def make_operations(fs, mfusepy):
    FuseOSError = mfusepy.FuseOSError

    class DaxFuse(mfusepy.Operations):
        use_ns = True

        def __init__(self):
            # Attribute names are private: mfusepy treats public names as FUSE operations.
            self._fs = fs
            self._files: dict[int, object] = {}
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
            threading.Thread(target=self._invalidator, name="daxkit-fuse-inval", daemon=True).start()

        # -- cache invalidation ----------------------------------------------------------------
        def _on_failure(self, ino, path, file_offset, length):
            if path:
                self._inval.put(path)

        def _invalidator(self):
            while True:
                path = self._inval.get()
                if path is None:
                    return
                if self._fuse_ptr is not None:
                    mfusepy._libfuse.fuse_invalidate_path(
                        self._fuse_ptr, path.encode("utf-8", "surrogateescape")
                    )

        def init(self, path):
            self._fuse_ptr = mfusepy._libfuse.fuse_get_context().contents.fuse
            self._ready.set()
            if self._on_ready_cb is not None:
                self._on_ready_cb()

        def destroy(self, path):
            self._inval.put(None)

        # -- attributes ----------------------------------------------------------------------------
        def getattr(self, path, fh=None):
            st = self._call(fs.stat, path)
            mtime, ctime = int(st.st_mtime * 1e9), int(st.st_ctime * 1e9)
            return {
                "st_mode": st.st_mode, "st_ino": st.st_ino, "st_nlink": st.st_nlink, "st_size": st.st_size,
                "st_uid": os.getuid(), "st_gid": os.getgid(), "st_blocks": st.st_blocks,
                "st_blksize": st.st_blksize, "st_mtime": mtime, "st_ctime": ctime, "st_atime": mtime,
            }  # fmt: skip

        def chmod(self, path, mode):
            self._call(fs.chmod, path, mode)
            return 0

        def chown(self, path, uid, gid):
            return 0

        def utimens(self, path, times=None):
            self._call(fs.utime, path, None if times is None else times[1] / 1e9)
            return 0

        def statfs(self, path):
            s = self._call(fs.statfs)
            return {
                "f_bsize": s["block_size"], "f_frsize": s["block_size"], "f_blocks": s["blocks"],
                "f_bfree": s["blocks_free"], "f_bavail": s["blocks_free"], "f_files": s["files"] + 1000000,
                "f_ffree": 1000000, "f_namemax": s["name_max"],
            }  # fmt: skip

        def getxattr(self, path, name, position=0):
            if name != XATTR_BAD_RANGES:
                raise FuseOSError(errno.ENODATA)
            f = self._call(fs.open, path, "r")
            try:
                bad = self._call(f.bad_ranges)
            finally:
                f.close()
            return json.dumps([{"offset": o, "length": n} for o, n in bad]).encode()

        def listxattr(self, path):
            return [XATTR_BAD_RANGES] if not _stat.S_ISDIR(self._call(fs.stat, path).st_mode) else []

        # -- namespace -----------------------------------------------------------------------------
        def readdir(self, path, fh):
            return [".", ".."] + self._call(fs.listdir, path)

        def mkdir(self, path, mode):
            self._call(fs.mkdir, path, mode & 0o7777)
            return 0

        def rmdir(self, path):
            self._call(fs.rmdir, path)
            return 0

        def unlink(self, path):
            self._call(fs.unlink, path)
            return 0

        def rename(self, old, new):
            self._call(fs.rename, old, new)
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

        def create(self, path, mode, fi=None):
            f = self._call(fs.open, path, "x+")
            if mode & 0o7777 != 0o644:
                self._call(fs.chmod, path, mode)
            return self._add(f)

        def open(self, path, flags):
            mode = "r" if flags & O_ACCMODE == os.O_RDONLY else "r+"
            return self._add(self._call(fs.open, path, mode))

        def read(self, path, size, offset, fh):
            # The kernel takes a short reply for end of file: the whole request or EIO (SPEC 6).
            return self._call(self._file(fh).pread_exact, size, offset)

        def write(self, path, data, offset, fh):
            return self._call(self._file(fh).pwrite, data, offset)

        def truncate(self, path, length, fh=None):
            if fh is not None and fh in self._files and self._files[fh].writable:
                self._call(self._files[fh].truncate, length)
                return 0
            f = self._call(fs.open, path, "r+")
            try:
                self._call(f.truncate, length)
            finally:
                f.close()
            return 0

        def fallocate(self, path, mode, offset, size, fh):
            self._call(self._file(fh).fallocate, mode, offset, size)
            return 0

        def fsync(self, path, datasync, fh):
            self._call(self._file(fh).fsync)
            return 0

        def flush(self, path, fh):
            return 0

        def release(self, path, fh):
            f = self._files.pop(fh, None)
            if f is not None:
                try:
                    f.close()
                except DaxError:
                    pass
            return 0

        @staticmethod
        def _call(fn, *args):
            try:
                return fn(*args)
            except FuseOSError:
                raise
            except (OSError, ValueError) as e:
                raise FuseOSError(_errno_of(e)) from None

    return DaxFuse()


def serve(image: str, mountpoint: str, on_ready=None, on_error=None) -> None:
    """Mount ``image`` at ``mountpoint`` and serve until unmounted (blocks)."""
    import daxkit

    mfusepy = _import_mfusepy()
    if not os.path.isdir(mountpoint):
        raise DaxError("mount point is not a directory", errno=errno.ENOTDIR, path=mountpoint)
    dev = daxkit.open(image)
    try:
        fs = daxkit.mount(dev)
    except BaseException:
        dev.close()
        raise
    try:
        ops = make_operations(fs, mfusepy)
        ops._on_ready_cb = on_ready
        mfusepy.FUSE(ops, mountpoint, foreground=True, nothreads=True, fsname="daxkit", subtype="daxfs")
    finally:
        fs.unmount()
        dev.close()


def mount_background(image: str, mountpoint: str, timeout: float = 30.0) -> int:
    """Fork a server for the mount; return its pid once the mount is live, or raise its error."""
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
            serve(image, mountpoint, on_ready=ready)
        except BaseException as e:  # noqa: BLE001 - report anything to the parent, then exit
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            try:
                os.write(wfd, f"E {msg}\n".encode())
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
        raise DaxError(line[2:].strip(), errno=errno.EIO)
    raise DaxError(f"the mount server did not come up within {timeout:.0f} s", errno=errno.ETIMEDOUT)


def unmount(mountpoint: str) -> None:
    import shutil
    import subprocess

    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmds = [[tool, "-u", mountpoint], [tool, "-uz", mountpoint]] if tool else []
    cmds.append(["umount", "-l", mountpoint])
    last = ""
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            return
        last = r.stderr.strip() or r.stdout.strip()
    raise DaxError(f"cannot unmount: {last}", errno=errno.EINVAL, path=mountpoint)
