"""What every real device shares: hardware truth read from sysfs, software knowledge kept in
the process, a watcher that ``poll()``s the badblocks file, and a mapping of the device file.

Rules
  * Hardware truth (the kernel's badblocks lists) is only ever read here, never written: the
    platform clears it, when a write reaches the medium (pmem_do_write) or when a file stops
    sitting on the bad sector.  A clearing write that leaves a sector listed is an error (EIO).
  * What software learns on its own -- a line consumed by a machine-check-safe read, the lines
    a sub-page recovery write could not rebuild -- is kept in this process (``_soft``): the
    kernel would have learned it through its own machine-check handler.
  * The generation word is a word of this process.  It moves when the watcher sees a badblocks
    file change, and on every software change; the device's fast path compares it with one
    load, so no system call is made per access while nothing changes.
  * Injection has no mechanism here (device.py refuses it with EOPNOTSUPP).

Theory of operation
  ``load`` and ``commit`` present one ErrorState: the listed sectors (hardware) plus the
  software entries, with ``poison`` = every known byte (so every page with known poison is
  PROT_NONE in every mapping: the kernel unmaps such pages too).  ``commit`` applies the
  device's change to that state and keeps of the result only what software may change: the
  bad range list, table entries the hardware does not list, the scrub count.  The watcher
  thread waits in ``poll(POLLPRI)`` on each badblocks file (sysfs_notify wakes it at once; a
  regular file in a fake tree never signals, so the wait times out) and compares the text.
"""

from __future__ import annotations

import os
import select
import threading
import weakref
from array import array
from contextlib import contextmanager, suppress

from ...errors import DaxError, MediaError, NotSupported, ReadOnly
from ...medium import locks, ranges
from ...medium.badblocks import Badblocks
from ...medium.region import Region
from ...medium.state import ErrorState
from ...units import SECTOR_SIZE
from .sysfs import Runs, read_text

WATCH_INTERVAL = 0.05  # seconds between re-reads where poll() cannot signal (a fake tree)
# (on the kernel's sysfs, poll() wakes at once on a change; the wait is 1 s there)


def open_fd(path: str, readonly: bool, extra: int = 0) -> int:
    """Open a device path; a permission failure says that root (or the device's group) is needed."""
    from ...errors import ImageError

    try:
        return os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC | extra)
    except PermissionError as e:
        if readonly:
            hint = " (device nodes are usually readable by root and the disk group only)"
        else:
            hint = "; open it read-only (readonly=True, the CLI's read-only verbs) or as root"
        raise ImageError(f"cannot open: {e.strerror}{hint}", errno=e.errno, path=path) from None
    except OSError as e:
        raise ImageError(f"cannot open: {e.strerror}", errno=e.errno, path=path) from None


class RealBackend:
    emulated = False
    kind = "real"

    def __init__(self, path: str, fd: int, size: int, clear_err_unit: int, readonly: bool):
        self.path = path
        self.fd = fd
        self.size = size
        self.clear_err_unit = clear_err_unit
        self.readonly = readonly
        self._words = array("Q", [1, 0, 0, 0, 0, 0])  # the image's live words (medium/image.py)
        self.words = memoryview(self._words)
        self._lock = threading.RLock()
        self._soft = ErrorState()
        self._hw: Runs = []
        self._merged = ErrorState()
        self._stale = True
        self._scrubs = 0
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.load()
        self._start_watcher()

    # -- what a kind of real device says ------------------------------------------------------
    def hardware_runs(self) -> Runs:
        """Known bad sectors of this device, device-relative (clipped to its size)."""
        raise NotImplementedError

    def watched(self) -> list[str]:
        """The badblocks files whose changes matter."""
        raise NotImplementedError

    # -- the error state ---------------------------------------------------------------------
    def _refresh(self) -> None:
        runs = ranges.clip([(s, s + n) for s, n in self.hardware_runs()], 0, self.size // SECTOR_SIZE)
        self._hw = [(s, e - s) for s, e in runs]
        self._merged = self._merge()
        self._stale = False

    def _merge(self) -> ErrorState:
        soft = self._soft
        sectors = ranges.union([(s, s + n) for s, n in self._hw], soft.badblocks.ranges())
        table, _ = Badblocks().set_runs(sectors, True)
        # poison: what the hardware lists (whole sectors) and the lines software met; a covering
        # sector of a consumed line stays in the table only, as in the emulated device
        hw = [(s * SECTOR_SIZE, (s + n) * SECTOR_SIZE) for s, n in self._hw]
        known = ranges.union(hw, soft.bad_ranges)
        # the bad range list: what the kernel lists is known at sector granularity, what
        # software met at line granularity
        return ErrorState(poison=known, bad_ranges=known, badblocks=table, scrub_count=soft.scrub_count)

    def _bump(self) -> None:
        self._words[0] += 1

    def load(self) -> tuple[int, ErrorState]:
        with self._lock:
            if self._stale:
                self._refresh()
            return self._words[0], self._merged

    def commit(self, change) -> tuple[int, ErrorState]:
        with self._lock:
            if self._stale:
                self._refresh()
            new = change(self._merged)
            hw = [(s, s + n) for s, n in self._hw]
            soft_sectors = ranges.subtract(new.badblocks.ranges(), hw)
            table, _ = Badblocks().set_runs(soft_sectors, True)
            soft_lines = ranges.subtract(new.bad_ranges, [(s * SECTOR_SIZE, e * SECTOR_SIZE) for s, e in hw])
            self._soft = ErrorState(bad_ranges=soft_lines, badblocks=table, scrub_count=new.scrub_count)
            self._merged = self._merge()
            self._bump()
            return self._words[0], self._merged

    def refresh(self) -> None:
        """Read the kernel's lists again; the generation moves only if they changed."""
        with self._lock:
            before = self._hw
            self._refresh()
            if self._hw != before:
                self._bump()

    def rescan(self) -> None:
        """A scrub of a real device: the kernel's lists, read again now."""
        with self._lock:
            self._refresh()
            self._bump()

    def hardware_bad(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Listed bad byte ranges inside [offset, offset+length), read again from sysfs now."""
        with self._lock:
            self._refresh()
            self._bump()
            bad = [(s * SECTOR_SIZE, (s + n) * SECTOR_SIZE) for s, n in self._hw]
            return [(s, e - s) for s, e in ranges.clip(bad, offset, offset + length)]

    def _check_cleared(self, offset: int, length: int, how: str) -> None:
        left = self.hardware_bad(offset, length)
        if left:
            s, n = left[0]
            raise MediaError(
                f"{how}, but sectors {s // SECTOR_SIZE}+{n // SECTOR_SIZE} are still listed as bad: "
                "the platform did not clear them",
                path=self.path,
            )

    def add_listed(self, sector: int, count: int) -> None:
        """What ``badblocks.add`` does on a real device: write "<sector> <count>" into the
        kernel's badblocks file, in that file's sectors (``listed_at``), then read it again."""
        for where, n in self.listed_at(sector, count):
            path = self.watched()[0] if self.watched() else None
            if path is None:
                raise NotSupported("sysfs lists no badblocks file for this device", path=self.path)
            try:
                with open(path, "a") as f:  # sysfs takes each write as one entry; a fake tree appends
                    f.write(f"{where} {n}\n")
            except PermissionError as e:
                raise DaxError(
                    f"cannot add to {path}: {e.strerror} (the kernel lets only root write badblocks)",
                    errno=e.errno,
                    path=self.path,
                ) from None
            except OSError as e:
                raise DaxError(f"cannot add to {path}: {e.strerror}", errno=e.errno, path=self.path) from None
        self.rescan()

    def listed_at(self, sector: int, count: int) -> list[tuple[int, int]]:
        """Device sectors [sector, sector+count) as (sector, count) runs of the badblocks file."""
        raise NotSupported(f"adding badblocks to a {self.kind} device is not supported", path=self.path)

    # -- the watcher ---------------------------------------------------------------------------
    def _start_watcher(self) -> None:
        paths = [p for p in self.watched() if p]
        if not paths:
            return
        self._watcher = threading.Thread(
            target=_watch, args=(weakref.ref(self), self._stop, paths), name="daxkit-sysfs", daemon=True
        )
        self._watcher.start()

    def _changed(self) -> None:
        with self._lock:
            self._stale = True
            self._bump()

    # -- mapping and bytes ---------------------------------------------------------------------
    map_sync = False  # ask for MAP_SYNC (files on a DAX mount)

    def map_region(self, pieces: list[tuple[int, int, int]], length: int) -> Region:
        return Region(self.fd, pieces, length, writable=not self.readonly, sync=self.map_sync)

    def medium_read_into(self, buf, offset: int) -> int:
        try:
            return os.preadv(self.fd, [buf], offset)
        except OSError as e:
            raise MediaError(f"read of the medium at offset {offset}: {e.strerror}", path=self.path) from None

    def medium_write(self, data, offset: int) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < view.nbytes:
            done += os.pwrite(self.fd, view[done:], offset + done)
        return done

    # -- holder claim and scrub marks ---------------------------------------------------------
    def claim_holder(self) -> bool:
        if self.readonly:
            raise ReadOnly("opened read-only: cannot become the device's holder", path=self.path)
        return locks.try_lock(self.fd, locks.HOLDER_BYTE)

    def release_holder(self) -> None:
        locks.unlock(self.fd, locks.HOLDER_BYTE)

    @contextmanager
    def scrubbing(self):
        with self._lock:
            self._scrubs += 1
        try:
            yield
        finally:
            with self._lock:
                self._scrubs -= 1

    def scrub_running(self) -> bool:
        return self._scrubs > 0

    def describe(self) -> dict:
        return {"backend": self.kind, "errors_from": self.watched()[0] if self.watched() else None}

    def close(self) -> None:
        self._stop.set()
        if self.fd >= 0:
            with suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _watch(ref, stop: threading.Event, paths: list[str]) -> None:
    """Wait in poll() on the badblocks files; when a text changes, mark the state stale and move
    the generation word, so the device's own watcher tells mappings and the holder."""
    last = [read_text(p) for p in paths]
    # The kernel's own files wake poll() when they change (sysfs_notify); the timeout is only a
    # safety net there.  Anything else (a fake tree) never signals and is re-read on a timer.
    real_sysfs = all(os.path.realpath(p).startswith("/sys/") for p in paths)
    timeout_ms = 1000 if real_sysfs else WATCH_INTERVAL * 1000
    while not stop.is_set():
        poller = select.poll()
        fds = []
        for p in paths:
            with suppress(OSError):
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
                os.read(fd, 1 << 16)  # sysfs arms the notification on a read
                poller.register(fd, select.POLLPRI | select.POLLERR)
                fds.append(fd)
        try:
            poller.poll(timeout_ms)
        finally:
            for fd in fds:
                os.close(fd)
        now = [read_text(p) for p in paths]
        if now != last:
            last = now
            backend = ref()
            if backend is None:
                return
            backend._changed()
            del backend
        if ref() is None:
            return
