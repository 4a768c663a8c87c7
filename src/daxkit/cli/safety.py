"""How a `daxkit` command ends and how it writes its output: the rules every verb obeys, kept
here once rather than in each verb.  The verbs, the parser and the turning of exceptions into exit
codes and text live in ``main.py``; this module holds only the mechanism those rules need.

- Whole or nothing: a file the command writes (``get``, ``read -o``, ``put`` inside the
  filesystem) is written under a temporary name beside its destination and renamed over it only
  when complete; any failure, a signal included, removes the temporary (``write_local``,
  ``write_fs``).
- Signals end a command quietly (exit 128 + the signal): SIGINT, SIGTERM and SIGHUP raise
  ``Interrupted`` where the command is, except inside a ``signals.critical()`` section (a
  change being made, a file being put in place, its cleanup), where they wait for the section to
  end, so a signal never lands between a change and its undo.
- A closed output pipe ends a command quietly (exit 141, as if killed by SIGPIPE), with stdout
  pointed at /dev/null so the interpreter's last flush has nothing to complain about
  (``silence_stdout``).

Never here: a verb, an argument, an error message for the user.  These are the crash cases (a
signal between a change and its undo, half a file at its destination, a flush into a closed
pipe), and they are checked by reading them together, apart from what each verb does."""

from __future__ import annotations

import errno
import os
import posixpath
import re
import secrets
import signal
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager

from ..errors import DaxError

EXIT_PIPE = 128 + signal.SIGPIPE


# -- signals ---------------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """An ending signal arrived; the command stops with exit status 128 + ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Signals:
    """SIGINT, SIGTERM and SIGHUP raise ``Interrupted``; inside ``critical()`` they are held and
    raised when the outermost section ends (or at ``check()``, a section's own stopping point)."""

    ENDING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.depth = 0
        self.pending = 0
        self.saved: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread takes signals; an embedding caller keeps its own
        for sig in self.ENDING:
            old = signal.getsignal(sig)
            if old is not signal.SIG_IGN:  # nohup and background jobs ignore some on purpose
                self.saved[sig] = old
                signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        while self.saved:
            sig, old = self.saved.popitem()
            signal.signal(sig, old)
        self.depth = self.pending = 0

    def _on_signal(self, signum: int, frame) -> None:
        if self.depth:
            self.pending = self.pending or signum
        else:
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise a held signal now: a critical section calls this before its point of no return."""
        if self.pending:
            signum, self.pending = self.pending, 0
            raise Interrupted(signum)

    @contextmanager
    def critical(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth:
            self.check()


signals = Signals()


# -- closed pipes ----------------------------------------------------------------------------------
def silence_stdout() -> None:
    """After EPIPE: whatever stdout still buffers goes to /dev/null, not into an error at exit."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


# -- whole or nothing ------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_local(dst: str | None, data) -> None:
    """Put ``data`` at the local path ``dst`` whole, or leave ``dst`` as it was.  ``None`` or "-"
    is stdout.  The bytes go to a new file beside the destination (mkstemp: O_EXCL|O_NOFOLLOW,
    so nothing planted under a guessed name is followed), fsynced and renamed over it.  A
    destination that exists and is not a regular file (a FIFO, /dev/stdout) is written in place:
    there is nothing to rename over."""
    if dst is None or dst == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        st = os.stat(dst)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise DaxError(f"cannot write: {e.strerror}", errno=e.errno, path=dst) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise DaxError("is a directory", errno=errno.EISDIR, path=dst)
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open(dst, "wb") as f:
            f.write(data)
        return
    target = os.path.realpath(dst) if st is not None else dst  # through a symlink to its file
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
    with signals.critical():
        try:
            fd, tmp = tempfile.mkstemp(prefix=".daxkit-", dir=os.path.dirname(target) or ".")
        except OSError as e:
            raise DaxError(f"cannot write: {e.strerror}", errno=e.errno, path=dst) from None
        try:
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(fd, mode)
                os.fsync(fd)
            signals.check()
            os.replace(tmp, target)
        except BaseException as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, OSError) and not isinstance(e, DaxError):
                raise DaxError(f"cannot write: {e.strerror}", errno=e.errno, path=dst) from None
            raise


_PUT_TEMP = re.compile(r"\.daxkit-put-\d+-[0-9a-f]{8}")


def _sweep_dead_puts(fs, parent: str) -> None:
    """Temporaries that a put killed by SIGKILL left in ``parent``.  This put holds the
    filesystem's only read-write claim, so no other put is running on it: every name of that
    exact shape is a dead one's."""
    for name in fs.listdir(parent):
        if _PUT_TEMP.fullmatch(name):
            try:
                fs.unlink(f"{parent.rstrip('/')}/{name}")
            except DaxError:
                pass  # not a file after all (or already gone): leave it


def write_fs(fs, dst: str, data) -> int:
    """Make ``dst`` inside the filesystem hold ``data`` whole, or leave it as it was: written
    under a temporary name in its directory, fsynced, then renamed over it (an existing file's
    mode is kept).  Any failure, ENOSPC or a signal, removes the temporary."""
    parent = posixpath.dirname(dst.rstrip("/")) or "/"
    try:
        old = fs.stat(dst)  # a name too long, a file where a directory should be: before any change
    except DaxError as e:
        if e.errno != errno.ENOENT:
            raise
        old = None
        if not stat.S_ISDIR(fs.stat(parent).st_mode):  # a missing directory is named as such
            raise DaxError("not a directory", errno=errno.ENOTDIR, path=parent) from None
    if old is not None and stat.S_ISDIR(old.st_mode):
        raise DaxError("is a directory", errno=errno.EISDIR, path=dst)
    with signals.critical():
        _sweep_dead_puts(fs, parent)
        tmp = None
        try:
            for _ in range(8):
                name = f"{parent.rstrip('/')}/.daxkit-put-{os.getpid()}-{secrets.token_hex(4)}"
                try:
                    f = fs.open(name, "x")
                except DaxError as e:
                    if e.errno != errno.EEXIST:
                        raise
                    continue
                tmp = name
                break
            else:
                raise DaxError("cannot find a free temporary name", errno=errno.EEXIST, path=parent)
            with f:
                n = f.write(data)
                f.fsync()
            if n != len(data):
                raise DaxError(f"short write: {n} of {len(data)} bytes", errno=errno.EIO, path=dst)
            if old is not None:
                fs.chmod(tmp, stat.S_IMODE(old.st_mode))
            signals.check()
            fs.rename(tmp, dst)
            return n
        except BaseException:
            if tmp is not None:
                try:
                    fs.unlink(tmp)
                except DaxError:
                    pass
            raise
