"""The kernel's page cache of a daxkit mount: kept across opens, and kept true (SPEC 6).

Rules
  * The kernel keeps a file's pages across opens (keep_cache), so reads of cached pages never
    reach the server (writes do: ops.py's init_with_config says why).  Every change the kernel
    cannot see is therefore pushed to it: whenever the device's known errors change -- a scrub or
    an ``inject-error`` in another process, a line consumed by a read in this one, a clear by a
    write behind the mount -- the cached pages of exactly the file ranges whose error state
    changed are invalidated (FUSE_NOTIFY_INVAL_INODE).  The next read of them asks the server
    and gets EIO; an mmap load of them faults and gets SIGBUS.
  * Invalidation never runs on the loop thread: before the kernel drops a page it may write it
    back, and only the loop can answer.  It runs on the watcher thread, which holds no
    filesystem lock while it calls into the kernel.
  * Other processes are noticed by one load of the device's shared generation word per tick
    (POLL_INTERVAL); the filesystem's failure listener reports consumption here at once.  A
    process that changed the error state waits until the watcher acknowledges the generation it
    made (``dev.watch_errors``/``errors_seen``): the scan of a large filesystem takes tens of
    milliseconds, and without the wait a read right after ``inject-error`` returned could still be
    served from the cache.
  * The server never waits on its own mount (pinner.py says why): what must go through the
    mount -- pins -- is done by the helper process.
  * Pins: fio, and tools like it, drop a file's cached pages with POSIX_FADV_DONTNEED before
    every pass (tmpfs ignores the advice).  While a user has a file open, the helper keeps a
    read-only shared mapping of it with its pages faulted in, which DONTNEED never evicts (the
    kernel keeps mapped pages); invalidation unmaps pinned pages like any others.  The pin goes
    at the flush of the file's last open handle, before close(2) returns, so an unmount right
    after the last close is not refused for it.

Theory of operation
  A node id is the inode number (ops.py), so a file range is invalidated by its inode alone,
  with FUSE_NOTIFY_INVAL_INODE over the pages that cover it; a dirty page in that range is
  written back first (the kernel launders it), which is why the loop must stay free to answer.
  The watcher keeps the set of (file, range) pairs of the last ``fs.scan()``; a change of the
  generation word makes it scan again and invalidate the symmetric difference: ranges newly bad
  (the next read must fail) and ranges newly clean (the next read must see the bytes that
  cleared them).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

P = 4096
POLL_INTERVAL = 0.001  # s between two loads of the generation word
HELPER_TIMEOUT = 2.0  # s to wait for the helper's answer before doing without it
ENOENT, ENOTCONN = 2, 107


class _Helper:
    """The helper process (pinner.py) and the answers it owes us."""

    def __init__(self, mountpoint: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-S", os.path.join(os.path.dirname(__file__), "pinner.py"), mountpoint],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )  # fmt: skip
        self.seq = itertools.count(1)
        self.waiting: dict[int, list] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._read, name="daxkit-fuse-helper", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                slot = self.waiting.pop(msg.get("seq"), None)
            if slot is not None:
                slot[1] = msg
                slot[0].set()
        with self.lock:  # the helper is gone: nobody waits for it any more
            for slot in self.waiting.values():
                slot[0].set()
            self.waiting.clear()

    def send(self, msg: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
        except (OSError, ValueError):
            pass  # the helper is gone; pins are only for speed

    def ask(self, msg: dict) -> dict | None:
        slot = [threading.Event(), None]
        with self.lock:
            msg["seq"] = seq = next(self.seq)
            self.waiting[seq] = slot
        self.send(msg)
        slot[0].wait(HELPER_TIMEOUT)
        with self.lock:
            self.waiting.pop(seq, None)
        return slot[1]

    def owns(self, tid: int) -> bool:
        """Is the thread ``tid`` (what FUSE reports as a request's pid) one of the helper's?"""
        return os.path.exists(f"/proc/{self.proc.pid}/task/{tid}")

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass


class KernelCache:
    """Keeps the kernel's cached pages of one mount true, and pins open files' pages."""

    def __init__(self, fs, mountpoint: str, notify, *, pins: bool = True):
        """``notify(node, offset, length)`` sends FUSE_NOTIFY_INVAL_INODE; 0 or an errno."""
        self._fs = fs
        self._notify = notify
        self._mnt = os.path.abspath(mountpoint)
        self._pins_on = pins
        self._live = False
        self._helper: _Helper | None = None
        self._events: queue.Queue = queue.Queue()  # (ino, file offset, length) | Event | None
        self._stop = threading.Event()
        self._seen: set[tuple] = set()
        self._gen = None
        fs.add_failure_listener(self._on_failure)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Called once INIT is answered: the mount is live."""
        self._live = True
        self._fs.dev.watch_errors(True)  # other processes' changes wait for us (_watch)
        self._gen, self._seen = self._scan()
        try:
            self._helper = _Helper(self._mnt)
        except OSError as e:  # no pins, whole files invalidated: slower, as true
            log.warning("the mount's helper process did not start: %s", e)
        threading.Thread(target=self._watch, name="daxkit-fuse-watch", daemon=True).start()

    def stop(self) -> None:
        """The session is ending; no more calls into the kernel."""
        self._stop.set()
        try:
            self._fs.dev.watch_errors(False)
        except Exception as e:  # the device is closed: nobody can wait for us any more
            log.debug("watch_errors: %r", e)
        self._events.put(None)
        if self._helper is not None:
            self._helper.close()

    def is_own(self, tid: int) -> bool:
        """Is the request from our helper (a pin's open, a lookup), not from a user?"""
        return self._helper is not None and self._helper.owns(tid)

    # -- invalidation -------------------------------------------------------------------------
    def _on_failure(self, ino, path, file_offset, length) -> None:
        if ino:
            self._events.put((ino, file_offset, length))

    def _scan(self) -> tuple[int | None, set[tuple]]:
        """The generation word, then the file ranges with known errors (a change after the load
        shows as a new generation at the next tick)."""
        try:
            gen = self._fs.dev.state_word[0]
        except Exception:  # the device is closed
            return None, self._seen
        try:
            return gen, {
                (o["ino"], o["path"], o["file_offset"], o["file_length"])
                for o in self._fs.scan()
                if o["owner"] == "file" and o["path"]
            }
        except Exception as e:  # an unmounted or shut-down filesystem: nothing left to follow
            log.debug("scan: %r", e)
            return gen, self._seen

    def _acknowledge(self) -> None:
        """Tell a process that changed the error state that its change has reached the kernel."""
        if self._gen is not None:
            try:
                self._fs.dev.errors_seen(self._gen)
            except Exception as e:  # the device is closed
                log.debug("errors_seen: %r", e)

    def settle(self, timeout: float) -> None:
        """Wait, at most ``timeout``, until every change made so far has reached the kernel.
        A handler may wait here only when its own request holds no page (a direct read): the
        kernel may need the loop to let go of a page before it drops it."""
        if self._live and not self._stop.is_set():
            done = threading.Event()
            self._events.put(done)
            done.wait(timeout)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                ev = self._events.get(timeout=POLL_INTERVAL)
            except queue.Empty:
                ev = ()
            if ev is None:
                return
            if isinstance(ev, tuple) and ev:
                self.invalidate(*ev)
            try:
                gen = self._fs.dev.state_word[0]
            except Exception:
                return  # the device is closed
            if gen != self._gen:
                self._gen, now = self._scan()
                for ino, _, off, n in sorted(now ^ self._seen):
                    self.invalidate(ino, off, n)
                self._seen = now
                self._acknowledge()
            if isinstance(ev, threading.Event):
                ev.set()

    def invalidate(self, ino: int, offset: int, length: int) -> None:
        """Drop the kernel's cached pages of inode ``ino`` covering [offset, offset+length).
        Never from the loop thread."""
        if not self._live or self._stop.is_set():
            return
        start, end = offset // P * P, -(-(offset + length) // P) * P
        rc = self._notify(ino, start, end - start)
        if rc not in (0, ENOENT, ENOTCONN):  # ENOENT: the kernel holds nothing of it
            log.debug("invalidate inode %d [%d, %d): %d", ino, start, end, rc)

    # -- pins -----------------------------------------------------------------------------------
    def opened(self, ino: int, path: str) -> None:
        """A user opened ``path``: keep its pages while it stays open."""
        if self._pins_on and self._helper is not None:
            self._helper.send({"op": "pin", "ino": ino, "path": path})

    def unpin(self, ino: int) -> None:
        """The file's last user handle is being flushed: the helper lets go of its pages."""
        if self._pins_on and self._helper is not None:
            self._helper.ask({"op": "unpin", "ino": ino})
