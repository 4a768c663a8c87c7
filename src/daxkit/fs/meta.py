"""daxfs metadata in memory: inodes, directories, extents, and the mutations that change them.

Rules
  * All metadata changes are mutations, grouped into one log record per operation:
        ["i", ino, inode-json or None]       set or delete an inode (directory entries excluded)
        ["d", parent, name, child or None]   set or delete a directory entry
        ["n", next_ino]                      the next inode number
    ``apply`` returns the inverse mutations, so an operation that cannot commit is undone.
  * Nothing read from the device is trusted: decoding checks types and bounds and raises
    FormatError; ``problems`` checks the whole structure (reachability, cycles, link counts,
    extents inside the data area, no block owned twice) for mount and fsck.
"""

from __future__ import annotations

import math
import stat as _stat
import time
from bisect import bisect_right

from ..units import PAGE_SIZE
from .layout import FormatError, Geometry

ROOT = 1
NAME_MAX = 255
PATH_MAX = 4096  # with its NUL: a symlink's target is at most 4095 bytes
# the inode kinds and their file types (st_mode's S_IFMT bits)
KIND_MODE = {"d": _stat.S_IFDIR, "f": _stat.S_IFREG, "l": _stat.S_IFLNK, "p": _stat.S_IFIFO,
             "c": _stat.S_IFCHR, "b": _stat.S_IFBLK, "s": _stat.S_IFSOCK}  # fmt: skip
KIND_OF_MODE = {v: k for k, v in KIND_MODE.items()}
ID_MAX = (1 << 32) - 2  # uid_t/gid_t; (uid_t)-1 means "no change" to chown


def check_name(name: str) -> str | None:
    """Why ``name`` cannot be a directory entry, or None."""
    if not isinstance(name, str) or not name:
        return "empty name"
    if name in (".", ".."):
        return f"reserved name {name!r}"
    if "/" in name or "\0" in name:
        return f"name {name!r} contains '/' or NUL"
    try:
        size = len(name.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return f"name {name!r} is not valid UTF-8 (a lone surrogate)"
    if size > NAME_MAX:
        return f"name longer than {NAME_MAX} bytes"
    return None


MAX_FILE_SIZE = (1 << 63) - 1  # loff_t: no size on the device may exceed it
# a time64_t of seconds (what the kernel keeps) with its nanoseconds
TIME_NS_MIN, TIME_NS_MAX = -(1 << 63) * 10**9, ((1 << 63) - 1) * 10**9 + 999_999_999


def _int(v, what: str, lo: int = 0, hi: int | None = None) -> int:
    if type(v) is not int or v < lo or (hi is not None and v > hi):
        raise FormatError(f"bad {what}: {v!r}")
    return v


def _time(v, ino: int) -> int:
    """A stored time: int nanoseconds, or float seconds from an older image."""
    if type(v) is float and math.isfinite(v):
        v = round(v * 1e9)
    if type(v) is not int or not TIME_NS_MIN <= v <= TIME_NS_MAX:
        raise FormatError(f"inode {ino}: bad time {v!r}")
    return v


class Inode:
    # Times are integer nanoseconds since the epoch (the on-device form too; an image written
    # before that holds float seconds, read as such).
    # Ownership is numeric (uid, gid); ``rdev`` is a device node's number; a symlink's target
    # is a str (bytes that are not UTF-8 kept by surrogateescape), its size the target's bytes.
    __slots__ = ("ino", "kind", "size", "mode", "atime", "mtime", "ctime", "nlink", "ext", "ents", "_starts",
                 "uid", "gid", "rdev", "target")  # fmt: skip

    def __init__(self, ino: int, kind: str, mode: int, now: int | None = None, uid: int = 0, gid: int = 0):
        t = time.time_ns() if now is None else now
        self.ino, self.kind, self.size, self.mode = ino, kind, 0, mode
        self.uid, self.gid, self.rdev, self.target = uid, gid, 0, None
        self.atime = self.mtime = self.ctime = t
        self.nlink = 2 if kind == "d" else 1
        self.ext: list[list[int]] = []  # [file block, device block, count], sorted by file block
        self.ents: dict[str, int] | None = {} if kind == "d" else None
        self._starts: list[int] | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind == "d"

    @property
    def is_reg(self) -> bool:
        return self.kind == "f"

    @property
    def is_symlink(self) -> bool:
        return self.kind == "l"

    def st_mode(self) -> int:
        return KIND_MODE[self.kind] | (self.mode & 0o7777)

    # -- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        d = {
            "k": self.kind,
            "s": self.size,
            "m": self.mode,
            "a": self.atime,
            "t": self.mtime,
            "c": self.ctime,
            "l": self.nlink,
            "u": self.uid,
            "g": self.gid,
        }
        if self.ext:
            d["e"] = self.ext
        if self.rdev:
            d["r"] = self.rdev
        if self.target is not None:
            d["y"] = self.target
        return d

    @classmethod
    def from_json(cls, ino: int, d) -> Inode:
        if not isinstance(d, dict) or d.get("k") not in KIND_MODE:
            raise FormatError(f"inode {ino}: not an inode")
        node = cls(ino, d["k"], _int(d.get("m"), f"inode {ino} mode", 0, 0o7777), 0)
        node.size = _int(d.get("s"), f"inode {ino} size", 0, MAX_FILE_SIZE)
        node.nlink = _int(d.get("l"), f"inode {ino} link count")
        node.uid = _int(d.get("u"), f"inode {ino} owner", 0, ID_MAX)
        node.gid = _int(d.get("g"), f"inode {ino} group", 0, ID_MAX)
        node.rdev = _int(d.get("r", 0), f"inode {ino} device number", 0, (1 << 64) - 1)
        target = d.get("y")
        if (target is not None) != node.is_symlink or (
            target is not None and (not isinstance(target, str) or not 0 < len(target) < PATH_MAX)
        ):
            raise FormatError(f"inode {ino}: bad symlink target {str(target)[:40]!r}")
        node.target = target
        node.mtime, node.ctime = _time(d.get("t"), ino), _time(d.get("c"), ino)
        node.atime = _time(d["a"], ino) if "a" in d else node.mtime
        ext = d.get("e", [])
        if not isinstance(ext, list) or (ext and not node.is_reg):
            raise FormatError(f"inode {ino}: bad extent list")
        for e in ext:
            if not isinstance(e, list) or len(e) != 3:
                raise FormatError(f"inode {ino}: bad extent {e!r}")
            _int(e[0], "extent file block")
            _int(e[1], "extent device block")
            _int(e[2], "extent length", 1)
        node.ext = [list(e) for e in ext]
        return node

    def copy(self) -> Inode:
        other = Inode.__new__(Inode)
        for name in Inode.__slots__:
            setattr(other, name, getattr(self, name))
        other.ext = [list(e) for e in self.ext]
        other.ents = None if self.ents is None else dict(self.ents)
        other._starts = None
        return other

    # -- extents ------------------------------------------------------------------------------
    def starts(self) -> list[int]:
        if self._starts is None:
            self._starts = [e[0] for e in self.ext]
        return self._starts

    def segments(self, off: int, n: int) -> list[tuple[int | None, int]]:
        """(device byte offset or None for a hole, length) covering [off, off+n) in order."""
        out: list[tuple[int | None, int]] = []
        ext = self.ext
        pos, end = off, off + n
        i = max(bisect_right(self.starts(), off // PAGE_SIZE) - 1, 0)
        while pos < end:
            while i < len(ext) and (ext[i][0] + ext[i][2]) * PAGE_SIZE <= pos:
                i += 1
            if i < len(ext) and ext[i][0] * PAGE_SIZE <= pos:
                fstart = ext[i][0] * PAGE_SIZE
                stop = min(end, fstart + ext[i][2] * PAGE_SIZE)
                out.append((ext[i][1] * PAGE_SIZE + pos - fstart, stop - pos))
            else:
                stop = min(end, ext[i][0] * PAGE_SIZE) if i < len(ext) else end
                out.append((None, stop - pos))
            pos = stop
        return out

    def holes(self, first: int, last: int) -> list[tuple[int, int]]:
        """Unmapped file-block runs (start, count) inside [first, last)."""
        out, pos = [], first
        for fb, _, cnt in self.ext:
            if fb + cnt <= pos:
                continue
            if fb >= last:
                break
            if fb > pos:
                out.append((pos, fb - pos))
            pos = max(pos, fb + cnt)
        if pos < last:
            out.append((pos, last - pos))
        return out

    def set_extents(self, ext: list[list[int]]) -> None:
        """Sorted, with neighbours that continue each other on the device merged."""
        merged: list[list[int]] = []
        for fb, db, cnt in sorted(ext):
            if merged and merged[-1][0] + merged[-1][2] == fb and merged[-1][1] + merged[-1][2] == db:
                merged[-1][2] += cnt
            else:
                merged.append([fb, db, cnt])
        self.ext = merged
        self._starts = None

    def cut(self, first: int, last: int) -> list[tuple[int, int]]:
        """Unmap file blocks [first, last); returns the freed device runs (block, count)."""
        keep, freed = [], []
        for fb, db, cnt in self.ext:
            s, e = max(fb, first), min(fb + cnt, last)
            if s >= e:
                keep.append([fb, db, cnt])
                continue
            if fb < s:
                keep.append([fb, db, s - fb])
            freed.append((db + s - fb, e - s))
            if e < fb + cnt:
                keep.append([e, db + e - fb, fb + cnt - e])
        self.set_extents(keep)
        return freed

    def blocks(self) -> int:
        return sum(e[2] for e in self.ext)


CHECKPOINT_VERSION = 2  # 2: owners, device numbers, symlinks (layout.VERSION 3)


class Meta:
    """The whole metadata of one filesystem, in memory."""

    def __init__(self) -> None:
        self.inodes: dict[int, Inode] = {}
        self.next_ino = ROOT + 1

    @classmethod
    def empty(cls, uid: int = 0, gid: int = 0) -> Meta:
        """A filesystem with only its root directory, owned by ``uid``:``gid`` (mke2fs gives the
        root directory to the user who makes the filesystem)."""
        m = cls()
        m.inodes[ROOT] = Inode(ROOT, "d", 0o755, uid=uid, gid=gid)
        return m

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_doc(self) -> dict:
        inodes = {}
        for ino, node in self.inodes.items():
            d = node.to_json()
            if node.is_dir:
                d["ents"] = node.ents
            inodes[str(ino)] = d
        return {"v": CHECKPOINT_VERSION, "next_ino": self.next_ino, "inodes": inodes}

    @classmethod
    def from_checkpoint(cls, doc: dict) -> Meta:
        m = cls()
        inodes = doc.get("inodes")
        if doc.get("v") != CHECKPOINT_VERSION or not isinstance(inodes, dict):
            raise FormatError("checkpoint: unknown layout")
        m.next_ino = _int(doc.get("next_ino"), "next inode number", ROOT + 1)
        for key, d in inodes.items():
            if not key.isdigit():
                raise FormatError(f"checkpoint: bad inode number {key!r}")
            node = Inode.from_json(int(key), d)
            if node.is_dir:
                ents = d.get("ents")
                if not isinstance(ents, dict) or not all(type(v) is int for v in ents.values()):
                    raise FormatError(f"inode {key}: bad directory entries")
                node.ents = dict(ents)
            m.inodes[node.ino] = node
        return m

    # -- mutations ------------------------------------------------------------------------------
    def apply(self, muts: list) -> list:
        """Apply one record's mutations; returns the inverse list.  Bad mutations raise
        FormatError and leave nothing half-applied."""
        undo: list = []
        try:
            for mut in muts:
                undo.append(self._apply_one(mut))
        except (FormatError, TypeError, ValueError, IndexError, KeyError) as e:
            self.undo(undo)
            raise FormatError(f"bad metadata mutation {str(mut)[:80]}: {e}") from None
        return undo

    def undo(self, undo: list) -> None:
        for mut in reversed(undo):
            self._apply_one(mut)

    def _apply_one(self, mut) -> list:
        op = mut[0]
        if op == "i":
            ino, d = mut[1], mut[2]
            ino = _int(ino, "inode number", ROOT)
            old = self.inodes.get(ino)
            inverse = ["i", ino, None if old is None else old.to_json()]
            if d is None:
                if old is None:
                    raise FormatError(f"delete of missing inode {ino}")
                inverse.append(old.ents)
                del self.inodes[ino]
            else:
                node = Inode.from_json(ino, d)
                if node.is_dir:
                    if old is not None and old.is_dir:
                        node.ents = old.ents
                    elif len(mut) > 3 and isinstance(mut[3], dict):
                        node.ents = dict(mut[3])  # an undone delete brings its entries back
                self.inodes[ino] = node
            return inverse
        if op == "d":
            _, parent, name, child = mut
            pnode = self.inodes.get(parent)
            if pnode is None or not pnode.is_dir or not isinstance(name, str):
                raise FormatError(f"directory entry in non-directory {parent}")
            old = pnode.ents.get(name)
            if child is None:
                pnode.ents.pop(name, None)
            else:
                pnode.ents[name] = _int(child, "entry inode", ROOT)
            return ["d", parent, name, old]
        if op == "n":
            old = self.next_ino
            self.next_ino = _int(mut[1], "next inode number", ROOT + 1)
            return ["n", old]
        raise FormatError(f"unknown mutation {op!r}")

    # -- structure ------------------------------------------------------------------------------
    def problems(self, g: Geometry) -> list[str]:
        out: list[str] = []
        root = self.inodes.get(ROOT)
        if root is None or not root.is_dir:
            return ["root directory missing"]
        seen: dict[int, int] = {ROOT: 0}
        parent_of: dict[int, int] = {}
        stack = [ROOT]
        while stack:
            d = stack.pop()
            for name, child in sorted(self.inodes[d].ents.items()):
                why = check_name(name)
                if why:
                    out.append(f"directory {d}: {why}")
                node = self.inodes.get(child)
                if node is None:
                    out.append(f"directory {d}: entry {name!r} names missing inode {child}")
                    continue
                seen[child] = seen.get(child, 0) + 1
                if node.is_dir:
                    if child in parent_of or child == ROOT:
                        out.append(f"directory {child} is linked more than once (cycle)")
                        continue
                    parent_of[child] = d
                    stack.append(child)
        for ino, node in self.inodes.items():
            if ino not in seen and not (node.nlink == 0 and not node.is_dir):
                out.append(f"inode {ino} is not reachable from the root")
            if ino >= self.next_ino:
                out.append(f"inode {ino} is not below the next inode number {self.next_ino}")
            if node.is_dir:
                want = 2 + sum(1 for c in node.ents.values() if c in self.inodes and self.inodes[c].is_dir)
            else:
                want = seen.get(ino, 0)
            if node.nlink != want:
                out.append(f"inode {ino}: link count {node.nlink}, expected {want}")
        owner: dict[int, int] = {}
        for ino, node in self.inodes.items():
            prev_end = -1
            for fb, db, cnt in node.ext:
                if fb < prev_end:
                    out.append(f"inode {ino}: extents overlap at file block {fb}")
                prev_end = fb + cnt
                if db < g.data_start or db + cnt > g.nblocks:
                    out.append(f"inode {ino}: extent at device block {db}+{cnt} outside the data area")
                    continue
                for b in range(db, db + cnt):
                    if b in owner:
                        out.append(f"device block {b} belongs to inodes {owner[b]} and {ino}")
                        break
                    owner[b] = ino
        return out

    def used_blocks(self) -> list[tuple[int, int]]:
        return sorted((db, db + cnt) for node in self.inodes.values() for _, db, cnt in node.ext)

    def orphans(self) -> list[int]:
        """Inodes with no name left that were open when the writer stopped: a read-write mount
        frees them (the ext4 orphan list's job)."""
        return [ino for ino, node in self.inodes.items() if node.nlink == 0 and not node.is_dir]

    def names(self) -> dict[int, list[str]]:
        """Every path of every inode, sorted (a hard-linked file has several)."""
        out: dict[int, list[str]] = {ROOT: ["/"]}
        stack = [(ROOT, "")]
        while stack:
            d, base = stack.pop()
            for name, child in self.inodes[d].ents.items():
                node = self.inodes.get(child)
                if node is None:
                    continue
                path = f"{base}/{name}"
                out.setdefault(child, []).append(path)
                if node.is_dir and len(out[child]) == 1:
                    stack.append((child, path))
        for paths in out.values():
            paths.sort()
        return out

    def paths(self) -> dict[int, str]:
        out = {ROOT: "/"}
        stack = [ROOT]
        while stack:
            d = stack.pop()
            base = out[d].rstrip("/")
            for name, child in self.inodes[d].ents.items():
                if child in self.inodes and child not in out:
                    out[child] = f"{base}/{name}"
                    if self.inodes[child].is_dir:
                        stack.append(child)
        return out
