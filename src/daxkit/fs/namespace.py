"""The namespace operations of DaxFS: names (directories, hard and symbolic links, special
files), attributes (modes, owners, times), opening and creating.

Rules
  * Each operation is one committed record; permission and ownership checks come first
    (perm.py), so a refused operation changes nothing.
  * An inode lives while it has a name or an open handle: the last unlink of an open file keeps
    it as an orphan (nlink 0) until the last DaxFile closes (file.py); a mount frees orphans a
    crash left behind.
  * ctime moves on every change of an inode (POSIX's list: chmod, chown, utime, link, unlink,
    rename, write, truncate); a directory's mtime and ctime on every change of its entries.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as statmod
import time

from ..errors import DaxError, InvalidArgument, NoSpace
from ..units import PAGE_SIZE
from .file import DaxFile
from .meta import ID_MAX, KIND_OF_MODE, PATH_MAX, Inode, check_name
from .perm import (
    MAY_EXEC,
    MAY_READ,
    MAY_WRITE,
    Cred,
    check_chown,
    chmod_mode,
    killed_privs,
    new_owner,
    require,
    require_delete,
    require_owner,
)
from .uapi import UTIME_NOW, UTIME_OMIT, check_mode, fs_error, time_ns_of

P = PAGE_SIZE
# open()'s modes: (readable, writable, create, truncate: 1, or exclusive create: 2)
OPEN_MODES = {"r": (1, 0, 0, 0), "r+": (1, 1, 0, 0), "w": (0, 1, 1, 1), "w+": (1, 1, 1, 1),
              "a": (0, 1, 1, 0), "a+": (1, 1, 1, 0), "x": (0, 1, 1, 2), "x+": (1, 1, 1, 2)}  # fmt: skip
RELATIME_NS = 24 * 3600 * 10**9
LINK_MAX = 65000  # ext4's EXT4_LINK_MAX: a file's names, a directory's subdirectories


def _id(v, what: str) -> int:
    """A uid or gid for chown: an int in uid_t's range, -1 for "no change"."""
    if isinstance(v, bool) or not isinstance(v, int) or not -1 <= v <= ID_MAX + 1:
        raise InvalidArgument(f"chown: {what} must be an int from -1 to {ID_MAX}, not {v!r}")
    return -1 if v == ID_MAX + 1 else v


class Namespace:
    """A part of DaxFS (see daxfs.py)."""

    # -- who is asking --------------------------------------------------------------------------
    def _cred(self) -> Cred:
        cred = getattr(self._creds, "cred", None)
        return cred if cred is not None else Cred.of_process()

    @contextlib.contextmanager
    def as_user(self, uid: int, gid: int, groups=(), *, walked: bool = False):
        """Run this thread's operations as ``uid``:``gid`` with supplementary ``groups`` (ints, or
        a callable returning them when a rule needs them): their permissions are checked and what
        they create is theirs (the FUSE adapter runs each request as its caller).  ``walked``:
        the directories on the way were checked already (``Cred``), as the kernel has for FUSE."""
        old = getattr(self._creds, "cred", None)
        self._creds.cred = Cred(int(uid), int(gid), groups, walked)
        try:
            yield self
        finally:
            self._creds.cred = old

    # -- looking -----------------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        with self._lock:
            self._check()
            try:
                self._resolve(path)
                return True
            except DaxError:
                return False

    def stat(self, path: str, *, follow_symlinks: bool = True) -> os.stat_result:
        with self._lock:
            self._check()
            return self._stat(self._resolve(path, follow_symlinks))

    def lstat(self, path: str) -> os.stat_result:
        """stat of the entry itself: a symbolic link is not followed."""
        return self.stat(path, follow_symlinks=False)

    def stat_ino(self, ino: int) -> os.stat_result:
        """stat of inode ``ino``, named or an open orphan (the FUSE server knows inodes by number;
        numbers are never reused); ENOENT once it is gone."""
        with self._lock:
            self._check()
            node = self.meta.inodes.get(ino)
            if node is None:
                raise fs_error(errno.ENOENT, f"inode {ino}: no such file or directory")
            return self._stat(node)

    def paths_of(self, ino: int) -> list[str]:
        """Every path of inode ``ino`` (a hard-linked file has several), sorted; [] if none."""
        with self._lock:
            self._check()
            node = self.meta.inodes.get(ino)
            if node is None or node.nlink == 0:
                return []
            return self.meta.names().get(ino, [])

    def readlink(self, path: str) -> str:
        with self._lock:
            self._check()
            node = self._resolve(path, follow=False)
            if not node.is_symlink:
                raise fs_error(errno.EINVAL, f"{path}: not a symbolic link")
            return node.target

    def _stat(self, node: Inode) -> os.stat_result:
        blocks = node.blocks() * (P // 512)
        a, m, c = node.atime, node.mtime, node.ctime
        seq = (node.st_mode(), node.ino, 0, node.nlink, node.uid, node.gid, node.size,
               a // 10**9, m // 10**9, c // 10**9)  # fmt: skip
        extra = {
            "st_atime": a / 1e9, "st_mtime": m / 1e9, "st_ctime": c / 1e9,
            "st_atime_ns": a, "st_mtime_ns": m, "st_ctime_ns": c,
            "st_blocks": blocks, "st_blksize": P, "st_rdev": node.rdev,
        }  # fmt: skip
        return os.stat_result(seq, extra)

    def listdir(self, path: str = "/") -> list[str]:
        with self._lock:
            return sorted(self._readable_dir(path).ents)

    def scandir(self, path: str = "/") -> list[tuple[str, os.stat_result]]:
        """(name, stat) of every entry, sorted by name, from one view: beside a live writer a
        listdir followed by stats could meet names that are already gone."""
        with self._lock:
            node = self._readable_dir(path)
            return [(name, self._stat(self.meta.inodes[ino])) for name, ino in sorted(node.ents.items())]

    def _readable_dir(self, path: str) -> Inode:
        """The directory at ``path``, if the caller may list it (lock held)."""
        self._check()
        node = self._resolve(path)
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR, f"{path}: not a directory")
        require(self._cred(), node, MAY_READ, path)
        return node

    # -- making names -------------------------------------------------------------------------------
    def _new_entry(self, path: str) -> tuple[Inode, str, Cred]:
        """(parent, name, caller) for a new name: EEXIST if taken (a symlink included), else
        write and search permission in the directory."""
        parent, name = self._parent(path)
        if name in parent.ents:
            raise fs_error(errno.EEXIST, f"{path}: exists")
        cred = self._cred()
        require(cred, parent, MAY_WRITE | MAY_EXEC, path)
        return parent, name, cred

    def _make(self, path: str, kind: str, mode: int, *, rdev: int = 0, target: str | None = None) -> Inode:
        parent, name, cred = self._new_entry(path)
        return self._make_at(parent, name, cred, path, kind, mode, rdev=rdev, target=target)

    def _make_at(self, parent: Inode, name: str, cred: Cred, path: str, kind: str, mode: int, *,
                 rdev: int = 0, target: str | None = None) -> Inode:  # fmt: skip
        if kind == "d" and parent.nlink >= LINK_MAX:
            raise fs_error(errno.EMLINK, f"{path}: too many subdirectories")
        uid, gid, mode = new_owner(cred, parent, kind, mode)
        ino, now = self.meta.next_ino, time.time_ns()
        node = Inode(ino, kind, mode, now, uid, gid)
        node.rdev, node.target = rdev, target
        if target is not None:
            node.size = len(target.encode("utf-8", "surrogateescape"))
        p2 = parent.copy()
        p2.nlink += kind == "d"
        p2.mtime = p2.ctime = now
        muts = [["n", ino + 1], ["i", ino, node.to_json()], ["d", parent.ino, name, ino]]
        self._commit([*muts, ["i", p2.ino, p2.to_json()]])
        return self.meta.inodes[ino]

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        mode = check_mode(mode) & 0o7777
        with self._lock:
            self._check(write=True)
            self._make(path, "d", mode & 0o1777)  # mkdir(2) takes no set-ID bits from its caller

    def symlink(self, target: str, path: str) -> None:
        """A symbolic link at ``path`` holding ``target`` (not checked: it may dangle)."""
        if not isinstance(target, str):
            raise InvalidArgument(f"symlink target must be a str, not {type(target).__name__}")
        if not target:
            raise fs_error(errno.ENOENT, f"{path}: empty symlink target")
        if "\0" in target:
            raise InvalidArgument(f"{path}: symlink target contains NUL")
        if len(target.encode("utf-8", "surrogateescape")) >= PATH_MAX:
            raise fs_error(errno.ENAMETOOLONG, f"{path}: symlink target longer than {PATH_MAX - 1} bytes")
        with self._lock:
            self._check(write=True)
            self._make(path, "l", 0o777, target=target)

    def mknod(self, path: str, mode: int = 0o600 | statmod.S_IFREG, rdev: int = 0) -> None:
        """A regular file, FIFO, socket, or (root only) character or block device, as mknod(2):
        the type is ``mode``'s S_IFMT bits (0 is a regular file)."""
        mode = check_mode(mode)
        kind = KIND_OF_MODE.get(statmod.S_IFMT(mode) or statmod.S_IFREG)
        if kind in ("d", "l"):
            raise fs_error(errno.EPERM, f"{path}: mknod makes no directories or symlinks")
        if kind is None:
            raise InvalidArgument(f"{path}: mknod of unknown file type {statmod.S_IFMT(mode):#o}")
        if isinstance(rdev, bool) or not isinstance(rdev, int) or not 0 <= rdev < 1 << 64:
            raise InvalidArgument(f"{path}: bad device number {rdev!r}")
        with self._lock:
            self._check(write=True)
            if kind in ("c", "b") and not self._cred().is_root:
                raise fs_error(errno.EPERM, f"{path}: only root makes device nodes")
            self._make(path, kind, mode & 0o7777, rdev=rdev if kind in ("c", "b") else 0)

    def link(self, src: str, dst: str, *, follow_symlinks: bool = False) -> None:
        """A new name ``dst`` for the inode at ``src`` (a symlink itself, as linkat(2) without
        AT_SYMLINK_FOLLOW): st_nlink counts the names; directories cannot be linked."""
        with self._lock:
            self._check(write=True)
            node = self._resolve(src, follow_symlinks)
            parent, name, _ = self._new_entry(dst)  # EEXIST before EPERM, as linkat(2) checks
            if node.is_dir:
                raise fs_error(errno.EPERM, f"{src}: a directory cannot be hard-linked")
            if node.nlink >= LINK_MAX:
                raise fs_error(errno.EMLINK, f"{src}: too many links")
            if node.nlink == 0:
                raise fs_error(errno.ENOENT, f"{src}: no such file or directory")
            now = time.time_ns()
            n2 = node.copy()
            n2.nlink += 1
            n2.ctime = now
            muts = [["d", parent.ino, name, node.ino], ["i", n2.ino, n2.to_json()]]
            self._commit([*muts, self._touch(parent, now)])

    # -- removing names -----------------------------------------------------------------------------
    def _drop_link(self, node: Inode, now: int) -> tuple[list, list]:
        """(mutations, freed block runs) for one name of ``node`` going: the last name of an
        inode that no handle holds deletes it; an open one stays, an orphan, until its close."""
        if node.nlink > 1 or (node.nlink == 1 and self._opens.get(node.ino)):
            n2 = node.copy()
            n2.nlink -= 1
            n2.ctime = now
            return [["i", n2.ino, n2.to_json()]], []
        return [["i", node.ino, None]], [(db, cnt) for _, db, cnt in node.ext]

    def rmdir(self, path: str) -> None:
        with self._lock:
            self._check(write=True)
            parent, name, node = self._entry(path)
            ino = node.ino
            if not node.is_dir:
                raise fs_error(errno.ENOTDIR, f"{path}: not a directory")
            require_delete(self._cred(), parent, node, path)
            if node.ents:
                raise fs_error(errno.ENOTEMPTY, f"{path}: directory not empty")
            p2 = parent.copy()
            p2.nlink -= 1
            p2.mtime = p2.ctime = time.time_ns()
            muts = [["d", parent.ino, name, None], ["i", ino, None], ["i", p2.ino, p2.to_json()]]
            self._commit(muts, use_reserve=True)

    def unlink(self, path: str) -> None:
        with self._lock:
            self._check(write=True)
            parent, name, node = self._entry(path)
            if node.is_dir:
                raise fs_error(errno.EISDIR, f"{path}: is a directory")
            require_delete(self._cred(), parent, node, path)
            now = time.time_ns()
            muts, freed = self._drop_link(node, now)
            self._commit([["d", parent.ino, name, None], *muts, self._touch(parent, now)], use_reserve=True)
            self._release(node.ino, freed)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._check(write=True)
            sp, sname = self._parent(src)
            dp, dname = self._parent(dst)
            ino = sp.ents.get(sname)
            if ino is None:
                raise fs_error(errno.ENOENT, f"{src}: no such file or directory")
            node = self.meta.inodes[ino]
            cred = self._cred()
            if node.is_dir:  # no directory may move under itself
                paths = self.meta.paths()
                if dp.ino == ino or paths.get(dp.ino, "/").startswith(paths[ino].rstrip("/") + "/"):
                    raise InvalidArgument(f"cannot move {src} under itself ({dst})")
            if sp.ino == dp.ino and sname == dname:
                return
            now = time.time_ns()
            muts: list = [["d", sp.ino, sname, None], ["d", dp.ino, dname, ino]]
            freed: list = []
            old = dp.ents.get(dname)
            if old is not None and self.meta.inodes[old].is_dir:
                # do_renameat2: a target that is an ancestor of the source is ENOTEMPTY,
                # checked before any type rule
                paths = self.meta.paths()
                if sp.ino == old or paths.get(sp.ino, "").startswith(paths[old].rstrip("/") + "/"):
                    raise fs_error(errno.ENOTEMPTY, f"{dst}: is an ancestor of {src}")
            require_delete(cred, sp, node, src)
            if node.is_dir and dp.ino != sp.ino:
                require(cred, node, MAY_WRITE, src)  # its ".." changes
            if old is None:
                require(cred, dp, MAY_WRITE | MAY_EXEC, dst)
            else:
                onode = self.meta.inodes[old]
                require_delete(cred, dp, onode, dst)
                if onode.is_dir != node.is_dir:
                    code = errno.EISDIR if onode.is_dir else errno.ENOTDIR
                    raise fs_error(
                        code, f"{dst}: cannot replace {'a directory' if onode.is_dir else 'a file'}"
                    )
                if old == ino:
                    return  # two names of one inode: rename(2) does nothing
                if onode.is_dir and onode.ents:
                    raise fs_error(errno.ENOTEMPTY, f"{dst}: directory not empty")
                if onode.is_dir:
                    muts.append(["i", old, None])
                else:
                    more, freed = self._drop_link(onode, now)
                    muts += more
            if node.is_dir and old is None and dp.ino != sp.ino and dp.nlink >= LINK_MAX:
                raise fs_error(errno.EMLINK, f"{dst}: too many subdirectories")
            moved = node.copy()
            moved.ctime = now  # ext4 and tmpfs mark the renamed inode changed
            muts.append(["i", ino, moved.to_json()])
            sp2 = sp.copy()
            sp2.mtime = sp2.ctime = now
            if dp.ino == sp.ino:
                if old is not None and node.is_dir:
                    sp2.nlink -= 1
                muts.append(["i", sp2.ino, sp2.to_json()])
            else:
                dp2 = dp.copy()
                dp2.mtime = dp2.ctime = now
                if node.is_dir:
                    sp2.nlink -= 1
                    if old is None:
                        dp2.nlink += 1
                muts += [["i", sp2.ino, sp2.to_json()], ["i", dp2.ino, dp2.to_json()]]
            self._commit(muts, use_reserve=old is not None or len(dname) <= len(sname))
            if old is not None:
                self._release(old, freed)

    # -- attributes -----------------------------------------------------------------------------
    def _update(self, path: str | None, change, follow: bool = True, ino: int | None = None) -> None:
        """One inode's attributes (the one at ``path``, or inode ``ino``: an open file's, which
        may have no name left) changed by ``change(node, caller)`` on a copy, committed."""
        with self._lock:
            self._check(write=True)
            node = (self._resolve(path, follow) if ino is None else self._inode(ino)).copy()
            change(node, self._cred())
            node.ctime = time.time_ns()
            self._commit([["i", node.ino, node.to_json()]], use_reserve=True)

    def chmod(self, path: str, mode: int, *, follow_symlinks: bool = True) -> None:
        """chmod(2): the owner or root; S_ISGID is dropped for a group the caller is not in."""
        mode = check_mode(mode) & 0o7777

        def change(node: Inode, cred: Cred) -> None:
            require_owner(cred, node, path)
            node.mode = chmod_mode(cred, node, mode)

        self._update(path, change, follow_symlinks)

    def chown(self, path: str, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        """chown(2): -1 keeps an id.  Only root gives a file away; its owner may set its group to
        one of their groups.  A non-directory loses S_ISUID, and S_ISGID with group execute;
        ctime moves even when nothing else does."""
        uid, gid = _id(uid, "uid"), _id(gid, "gid")

        def change(node: Inode, cred: Cred) -> None:
            new_uid = node.uid if uid == -1 else uid
            new_gid = node.gid if gid == -1 else gid
            check_chown(cred, node, new_uid, new_gid, path)
            node.mode = killed_privs(None, node)
            node.uid, node.gid = new_uid, new_gid

        self._update(path, change, follow_symlinks)

    def utime(self, path: str, times=None, *, follow_symlinks: bool = True) -> None:
        """Set atime and mtime (ctime moves to now), as utimensat(2) does.  ``times`` is
        ``(atime_ns, mtime_ns)`` in integer nanoseconds, either of which may be ``UTIME_NOW`` or
        ``UTIME_OMIT``; None sets both to now; a bare number is the mtime in seconds.  A time that
        is not a finite number a 64-bit nanosecond count can hold is EINVAL.  Setting a time
        other than now takes the owner or root (EPERM); now, write permission too (EACCES)."""
        self._update(path, self._utime_change(path, times), follow_symlinks)

    def _utime_change(self, path: str, times):
        now = time.time_ns()
        if times is None:
            atime, mtime = now, now
            given = (UTIME_NOW, UTIME_NOW)
        elif isinstance(times, (tuple, list)) and len(times) == 2:
            atime, mtime = (time_ns_of(t, now, "ns") for t in times)
            given = tuple(t if type(t) is int and t in (UTIME_NOW, UTIME_OMIT) else None for t in times)
        else:
            atime, mtime = UTIME_OMIT, time_ns_of(times, now, "s")
            given = (UTIME_OMIT, None)

        def change(node: Inode, cred: Cred) -> None:
            if None in given:
                require_owner(cred, node, path)
            elif given != (UTIME_OMIT, UTIME_OMIT) and not (cred.is_root or cred.owns(node)):
                require(cred, node, MAY_WRITE, path)
            if atime != UTIME_OMIT:
                node.atime = atime
            if mtime != UTIME_OMIT:
                node.mtime = mtime

        return change

    # -- files -------------------------------------------------------------------------------------
    def open(self, path: str, mode: str | int = "r", *, perm: int = 0o644, follow_symlinks: bool = True
             ) -> DaxFile:  # fmt: skip
        """Open as open() does (``mode`` "r", "w+", ...), or as os.open does (``mode`` the O_*
        flags: O_WRONLY, O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_NOFOLLOW, O_NOATIME); a new file gets
        ``perm``.  ``follow_symlinks=False`` is O_NOFOLLOW: a symbolic link at the end of the path
        is ELOOP.  O_NOATIME: the open leaves atime alone (see _relatime)."""
        touch_atime = True
        if isinstance(mode, int) and not isinstance(mode, bool):
            touch_atime = not mode & os.O_NOATIME
            acc = mode & (os.O_WRONLY | os.O_RDWR)
            readable, writable, create = acc != os.O_WRONLY, acc != os.O_RDONLY, bool(mode & os.O_CREAT)
            trunc = 2 if create and mode & os.O_EXCL else 1 if mode & os.O_TRUNC else 0
            append = bool(mode & os.O_APPEND)
            follow_symlinks = follow_symlinks and not mode & os.O_NOFOLLOW
        else:
            key = mode.replace("b", "") if isinstance(mode, str) else None
            if key not in OPEN_MODES:
                raise InvalidArgument(f"unknown open mode {mode!r}")
            readable, writable, create, trunc = OPEN_MODES[key]
            append = key.startswith("a")
        perm = check_mode(perm) & 0o7777
        with self._lock:
            self._check(write=bool(writable))
            # O_CREAT|O_EXCL never follows a last symlink; otherwise a dangling one is created through
            parent, name, node = self._walk(path, follow=follow_symlinks and trunc != 2)
            if node is None:
                if not create or name is None:
                    raise fs_error(errno.ENOENT, f"{path}: no such file or directory")
                why = check_name(name)
                if why:
                    raise fs_error(errno.ENAMETOOLONG if "longer" in why else errno.EINVAL, f"{path}: {why}")
                cred = self._cred()
                require(cred, parent, MAY_WRITE | MAY_EXEC, path)
                node = self._make_at(parent, name, cred, path, "f", perm)
            else:
                if trunc == 2:
                    raise fs_error(errno.EEXIST, f"{path}: exists")
                if node.is_symlink:
                    raise fs_error(errno.ELOOP, f"{path}: is a symbolic link (O_NOFOLLOW)")
                if node.is_dir:
                    if writable:
                        raise fs_error(errno.EISDIR, f"{path}: is a directory")
                    raise fs_error(errno.EISDIR, f"{path}: is a directory (daxfs opens files only)")
                if node.kind != "f":
                    raise fs_error(errno.ENXIO, f"{path}: a special file has no data here")
                cred = self._cred()
                require(cred, node, (MAY_READ if readable else 0) | (MAY_WRITE if writable else 0), path)
                if trunc == 1 and (node.size or node.ext):
                    self._truncate(node.ino, 0)
                elif readable and touch_atime and not self.readonly:
                    self._relatime(node)
            return DaxFile(self, node.ino, path, bool(readable), bool(writable), append)

    def reopen(self, f: DaxFile, writable: bool) -> DaxFile:
        """A new handle of the file ``f`` holds, named or an unlinked orphan, as an open of
        /proc/PID/fd/N makes one (the FUSE server's; the kernel has checked the caller's access).
        It reads, and writes when ``writable``; ESTALE once the inode is gone."""
        with self._lock:
            self._check(write=writable)
            node = self._inode(f.ino)
            return DaxFile(self, node.ino, f.name, True, bool(writable), False)

    def _relatime(self, node: Inode) -> None:
        """atime as a relatime mount keeps it (the Linux default), set when a file is opened for
        reading rather than at each read, which keeps the fast read path free of metadata: moved
        only when it is not after the last change, or a day old, so a file read over and over
        costs one record per change."""
        now = time.time_ns()
        if node.atime > node.mtime and node.atime > node.ctime and now - node.atime < RELATIME_NS:
            return
        tmp = node.copy()
        tmp.atime = now
        try:
            self._commit([["i", tmp.ino, tmp.to_json()]], use_reserve=True)
        except NoSpace:
            pass  # an atime is never worth failing an open for

    def _inode(self, ino: int) -> Inode:
        node = self.meta.inodes.get(ino)
        if node is None:
            raise fs_error(errno.ESTALE, f"inode {ino} no longer exists")
        return node
