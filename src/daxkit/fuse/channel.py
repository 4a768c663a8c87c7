"""/dev/fuse: mounting, the request loop, replies and notices, unmounting.

Rules
  * fusermount3 mounts (as libfuse does for an unprivileged user, and as root too: one way in);
    it hands us the /dev/fuse descriptor over a socket (``_FUSE_COMMFD``).
  * The descriptor is non-blocking: the loop reads while requests are queued and waits in
    ``poll`` only when there are none, beside a pipe that ``stop`` writes to.  So a stop is seen
    at once, and the busy path costs one read per request.
  * A reply to a request the kernel has forgotten (interrupted, or its caller killed) fails with
    ENOENT: that is no error.  A notice about an inode the kernel does not hold fails with ENOENT
    too: it holds nothing to invalidate.
  * As root, the mount's writeback allowance is raised (``allow_dirty``): the kernel gives a FUSE
    mount 1% of the machine's dirty-page limit (max_ratio), so that an untrusted server cannot
    hold much memory hostage; a server the administrator runs is trusted, and at 1% a writer is
    throttled to the server's pace long before the page cache is the bottleneck (fio through
    the mount, 4 KiB random write: 0.25 of tmpfs at 1%, about 0.5 at 100%).
  * Unmounting is a lazy detach (``fusermount3 -u -z``) followed by closing the descriptor, which
    ends the connection: what libfuse does when its loop is stopped by a signal.

Theory of operation
  ``Channel.mount`` returns a mounted channel; ``serve(dispatch)`` hands each request (a
  memoryview of the read buffer, valid until ``dispatch`` returns) to ``dispatch``, which
  answers with ``send``; it returns when the mount is gone (ENODEV) or ``stop`` was called.
  ``notify`` may be called from any thread: a write of one notice is atomic.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import socket
import subprocess
import threading

from ..errors import DaxError
from .umount import mounts

MAX_PAGES = 256  # pages per READ/WRITE request (1 MiB), negotiated in INIT
BUFSIZE = MAX_PAGES * 4096 + 4096  # one request: the header and argument struct, then the data
DIRTY_RATIO = 100  # % of the machine's dirty-page limit this mount may use (the kernel's default: 1)


class Channel:
    def __init__(self, fd: int, mountpoint: str):
        self.fd = fd
        self.mountpoint = mountpoint
        self._wake_r, self._wake_w = os.pipe()
        self._stopped = False
        self._lock = threading.Lock()
        self._closed = False

    # -- mounting ------------------------------------------------------------------------------
    @classmethod
    def mount(cls, mountpoint: str, options: list[str]) -> Channel:
        tool = shutil.which("fusermount3")
        if tool is None:
            raise DaxError("FUSE is not available: fusermount3 is missing (install the Debian package fuse3)",
                           errno=errno.ENOSYS)  # fmt: skip
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            r = subprocess.run(
                [tool, "-o", ",".join(options), "--", mountpoint],
                env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
                pass_fds=(theirs.fileno(),), capture_output=True, text=True,
            )  # fmt: skip
            theirs.close()
            if r.returncode != 0:
                why = (r.stderr.strip() or r.stdout.strip()).removeprefix(f"{tool}: ")
                raise DaxError(f"cannot mount: {why}", errno=errno.EPERM, path=mountpoint)
            _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        finally:
            theirs.close()
            ours.close()
        if not fds:
            raise DaxError("cannot mount: fusermount3 sent no descriptor", errno=errno.EIO, path=mountpoint)
        os.set_blocking(fds[0], False)
        return cls(fds[0], mountpoint)

    def allow_dirty(self, source: str, ratio: int = DIRTY_RATIO) -> bool:
        """Raise the mount's share of the dirty-page limit (/sys/class/bdi/MAJ:MIN/max_ratio);
        False where that is not ours to do (not root).  The mount is found in mountinfo by its
        source, never by a stat of the mount point, which would wait on this very server."""
        devs = [dev for _, dev, _, src in mounts() if src == os.fsencode(source)]
        if not devs:
            return False
        dev = devs[-1]
        try:
            with open(f"/sys/class/bdi/{dev}/max_ratio", "w") as f:
                f.write(str(ratio))
            return True
        except OSError:
            return False

    # -- serving ------------------------------------------------------------------------------
    def serve(self, dispatch) -> bool:
        """Serve until unmounted (True) or stopped (False)."""
        buf = bytearray(BUFSIZE)
        view = memoryview(buf)
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        readv, fd = os.readv, self.fd
        while not self._stopped:
            try:
                n = readv(fd, (buf,))
            except BlockingIOError:
                poller.poll()
                continue
            except OSError as e:
                if e.errno == errno.ENODEV:
                    return True  # unmounted
                if e.errno in (errno.ENOENT, errno.EINTR):
                    continue  # a request withdrawn before we read it
                raise
            dispatch(view[:n])
        return False

    def send(self, bufs) -> None:
        try:
            os.writev(self.fd, bufs)
        except OSError as e:
            # ENOENT: the request was withdrawn; ENODEV: the mount is gone (the next read says so)
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    def notify(self, bufs) -> int:
        """Send a notice; 0, or the errno the kernel answered (ENOENT: it holds no such inode)."""
        with self._lock:
            if self._closed:
                return errno.ENOTCONN
            try:
                os.writev(self.fd, bufs)
                return 0
            except OSError as e:
                return e.errno or errno.EIO

    def stop(self) -> None:
        self._stopped = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- unmounting -----------------------------------------------------------------------------
    def close(self, *, detach: bool = True) -> None:
        """Detach the mount (when it was not unmounted) and end the connection."""
        tool = shutil.which("fusermount3")
        if detach and tool is not None:  # no stat of the mount point here: it would wait on this server
            subprocess.run([tool, "-u", "-z", "-q", "--", self.mountpoint], capture_output=True)
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.fd)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
