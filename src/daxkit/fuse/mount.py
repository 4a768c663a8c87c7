"""The FUSE mount (SPEC 6): a daxfs served to every program on the machine.

Binding: mfusepy (ctypes over libfuse3's high-level API).  pyfuse3 3.5 has no fallocate
handler, and punch-hole through the mount is part of the contract; mfusepy has it.  What each
request does, and the rules it keeps, is ``ops.py``; this file starts, serves and stops a mount.

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
import logging
import os
import signal
import stat as _stat
import threading

from ..errors import DaxError
from .ops import (
    STOP_SIGNALS,
    _errno_of,
    _fuse_class,
    make_operations,
)
from .session import Session
from .umount import FSTYPE, unmount  # noqa: F401 -- callers find unmount beside mount_background

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
