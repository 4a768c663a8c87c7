"""What every FUSE handler shares: the errno helpers, the constants of the protocol as daxfs
answers it, and ``Handlers``, the state and path helpers the handler classes build on (the rules
are ``ops.py``'s)."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal

from . import proto

XATTR_BAD_RANGES = "user.daxkit.bad_ranges"
ROOT_ID = 1  # FUSE_ROOT_ID, and daxfs's root inode
ENTRY_S = ATTR_S = 1.0  # seconds the kernel may trust a name or attributes (libfuse's default)
RENAME_NOREPLACE = 1  # renameat2(2)
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2  # utimensat(2)'s tv_nsec markers
# the setattr fields that set something (FATTR_FH, FATTR_KILL_SUIDGID only qualify a change)
CHANGES = (proto.FATTR_MODE | proto.FATTR_UID | proto.FATTR_GID | proto.FATTR_SIZE
           | proto.FATTR_ATIME | proto.FATTR_MTIME | proto.FATTR_ATIME_NOW | proto.FATTR_MTIME_NOW
           | proto.FATTR_CTIME)  # fmt: skip
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SETTLE_TIMEOUT = 0.5  # s a direct read that failed waits for the cache to be told
ENODATA_NAMES = ("security.", "system.", "trusted.")  # never ours; answered without a lookup
O_ACCMODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
# what the kernel may do for us (fuse_init_out.flags), when it offers it
INIT_WANT = (proto.ASYNC_READ | proto.ATOMIC_O_TRUNC | proto.BIG_WRITES | proto.WRITEBACK_CACHE
             | proto.PARALLEL_DIROPS | proto.MAX_PAGES | proto.CACHE_SYMLINKS | proto.EXPLICIT_INVAL_DATA
             | proto.HANDLE_KILLPRIV_V2)  # fmt: skip
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


def _error(code: int, what: str) -> OSError:
    return OSError(code, f"{what}: {os.strerror(code)}")


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


def _times(valid: int, a_s: int, a_ns: int, m_s: int, m_ns: int) -> tuple[int, int]:
    """setattr's times as utimensat takes them: nanoseconds, UTIME_NOW or UTIME_OMIT."""

    def one(now: int, given: int, s: int, ns: int) -> int:
        return UTIME_NOW if valid & now else s * 10**9 + ns if valid & given else UTIME_OMIT

    return (one(proto.FATTR_ATIME_NOW, proto.FATTR_ATIME, a_s, a_ns),
            one(proto.FATTR_MTIME_NOW, proto.FATTR_MTIME, m_s, m_ns))  # fmt: skip


def _unlinked(st) -> os.stat_result:
    """``st`` with no links."""
    extra = {k: getattr(st, k) for k in ("st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns",
                                         "st_ctime_ns", "st_blocks", "st_blksize", "st_rdev")}  # fmt: skip
    return os.stat_result((*st[:3], 0, *st[4:10]), extra)


class _Open:
    """An open file: its DaxFile, its open(2) flags, and whether a user (not our pinner) holds it."""

    __slots__ = ("f", "flags", "user")

    def __init__(self, f, flags: int, user: bool):
        self.f, self.flags, self.user = f, flags, user


class Handlers:
    """The state every handler class shares (set up by ``ops.Operations``)."""

    def _as_caller(self, ctx):
        # the kernel walked the caller to the node (from the root, a cwd or a descriptor, with
        # search permission checked there): the path we rebuild is walked as the server would
        return self.fs.as_user(ctx[2], ctx[3], functools.partial(_groups_of, ctx[4]), walked=True)

    def _as_writer(self, f, ctx):
        """Changing the data of a set-ID file clears its set-ID bits as its caller's rights say
        (killed_privs: root keeps them, S_ISGID stays for a member of the file's group); with
        FUSE_HANDLE_KILLPRIV_V2 that is ours to do.  Any other file's data changes as the server."""
        return self._as_caller(ctx) if f.setid else contextlib.nullcontext()

    def _path(self, node: int) -> str:
        """A path of ``node``: rebuilt from the names the kernel knows, else the filesystem's."""
        parts = []
        while node != ROOT_ID:
            rec = self.names.get(node)
            if rec is None:
                paths = self.fs.paths_of(node)  # its remembered name was removed, or never known
                if not paths:
                    raise _error(errno.ENOENT, f"inode {node}")
                parts.append(paths[0].lstrip("/"))
                break
            node, name = rec
            parts.append(name)
        return "/" + "/".join(reversed(parts))

    def _path_or_none(self, node: int) -> str | None:
        """``_path``, or None for an inode with no name left (an unlinked open file, reached only
        by its handles); any other failure is raised."""
        try:
            return self._path(node)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            return None

    def _child(self, parent: int, name: str) -> str:
        if "/" in name or name in ("", ".", ".."):
            raise _error(errno.EINVAL, f"name {name!r}")
        return self._path(parent).rstrip("/") + "/" + name

    def _entry(self, parent: int, name: str, st) -> tuple:
        """An entry reply for ``st``; the kernel now holds one more lookup of it."""
        node = st.st_ino
        self.lookups[node] = self.lookups.get(node, 0) + 1
        if node != ROOT_ID:
            self.names[node] = (parent, name)
        return (proto.entry_out(node, 0, st, ENTRY_S, ATTR_S),)

    def _unnamed(self, parent: int, name: str, node: int) -> None:
        """``parent``/``name`` no longer names ``node``."""
        if self.names.get(node) == (parent, name):
            del self.names[node]

    def _stat(self, node: int, fh: int | None = None):
        o = self.files.get(fh) if fh is not None else None
        if o is not None:
            return o.f.stat()
        try:
            return self.fs.stat_ino(node)
        except OSError as e:
            if e.errno == errno.ENOENT and node in self.removed:
                return self.removed[node]  # a removed directory still held (a cwd, an open fd)
            raise

    def _file(self, fh: int):
        o = self.files.get(fh)
        if o is None:
            raise _error(errno.EBADF, f"handle {fh}")
        return o.f
