"""The FUSE mount (SPEC 6): a daxfs served to every program on the machine.

Binding: none.  The server speaks the kernel's protocol on /dev/fuse itself (``proto.py``,
``channel.py``), inode-based as libfuse's low-level API is, because the kernel's writeback
cache needs one kernel inode per file (``ops.py`` says why) and libfuse's high-level API gives
one per name.  What each request does, and the rules it keeps, is ``ops.py``; this file starts,
serves and stops a mount.

Theory of operation
  ``serve`` mounts through fusermount3 and runs the request loop on a worker thread while the
  main thread holds SIGINT, SIGTERM and SIGHUP: a signal stops the loop, the mount is detached
  (as libfuse does), and ``serve`` returns the signal's number after closing the filesystem and
  device.  ``mount_background`` forks a server and waits for the kernel's INIT to be answered.
  ``unmount`` (``umount.py``) unmounts only daxkit mounts, and a busy one only when asked to
  detach lazily.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat as _stat
import threading

from ..errors import DaxError
from . import proto
from .channel import Channel
from .kcache import KernelCache
from .ops import STOP_SIGNALS, Operations, _errno_of
from .umount import FSTYPE, unmount  # noqa: F401 -- callers find unmount beside mount_background

log = logging.getLogger(__name__)


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


def _mount_options(private: bool) -> list[str]:
    # the source names the server: unmount waits for this pid to let go of the image
    options = [f"fsname=daxkit:{os.getpid()}", f"subtype={FSTYPE.decode().partition('.')[2]}",
               "default_permissions"]  # fmt: skip
    if not private and _allow_other_permitted():
        options.append("allow_other")
    return options


def _run_until_signal(chan: Channel, run) -> int | None:
    """Run the request loop ``run()`` on a worker thread while this thread takes STOP_SIGNALS; a
    signal stops the loop (``Channel.stop``).  Returns the signal's number, or None when
    unmounted."""
    if threading.current_thread() is not threading.main_thread():
        run()  # only the main thread can take signals; the caller owns them
        return None
    got: list[int] = []
    failed: list[BaseException] = []

    def note(signum, frame):
        if not got:
            got.append(signum)
        chan.stop()

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
    finally:
        if worker.is_alive():  # this thread failed: end the loop before the filesystem goes
            chan.stop()
            worker.join()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if failed:
        raise failed[0]
    return got[0] if got else None


def serve(image: str, mountpoint: str, on_ready=None, on_error=None, *, private: bool = False) -> int | None:
    """Mount ``image`` at ``mountpoint`` and serve until it is unmounted or a SIGINT, SIGTERM or
    SIGHUP arrives; return that signal's number (None when unmounted).  Either way the mount is
    gone, the filesystem unmounted and the device closed when this returns.  ``private`` keeps the
    mount to this user; otherwise every user may use it, with the kernel checking permissions."""
    import daxkit

    _check_mountpoint(mountpoint)
    dev = daxkit.open(image)
    try:
        fs = daxkit.mount(dev)
    except BaseException:
        dev.close()
        raise
    try:
        options = _mount_options(private)
        chan = Channel.mount(mountpoint, options)
        notify = lambda node, off, n: chan.notify(proto.notice_inval_inode(node, off, n))  # noqa: E731
        kc = KernelCache(fs, mountpoint, notify)
        source = next(o.partition("=")[2] for o in options if o.startswith("fsname="))

        def ready():
            chan.allow_dirty(source)
            if on_ready is not None:
                on_ready()

        ops = Operations(fs, kc, chan.send, ready)
        unmounted = []

        def handle(req):
            out = ops.dispatch(req)
            if out is not None:
                chan.send(out)
            if ops.destroyed:
                chan.stop()

        def run():
            try:
                unmounted.append(chan.serve(handle))
            finally:
                kc.stop()

        try:
            return _run_until_signal(chan, run)
        finally:
            chan.close(detach=not unmounted or not unmounted[0])
            ops.close_all()
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
