"""Path resolution: a path to its inode, or to its parent directory and last name."""

from __future__ import annotations

import errno

from ..errors import InvalidArgument
from ..units import PAGE_SIZE
from .meta import NAME_MAX, ROOT, Inode, check_name
from .uapi import (
    fs_error,
)

P = PAGE_SIZE


class Namei:
    """A part of DaxFS (see daxfs.py)."""

    # -- paths ------------------------------------------------------------------------------------
    @staticmethod
    def _parts(path: str) -> list[str]:
        if not isinstance(path, str):
            raise InvalidArgument(f"path must be a str, not {type(path).__name__}")
        parts = [p for p in path.split("/") if p and p != "."]
        for p in parts:  # every path operation, lookups included (the VFS checks in lookup)
            if len(p) > NAME_MAX // 4 and len(p.encode("utf-8", "surrogatepass")) > NAME_MAX:
                raise fs_error(errno.ENAMETOOLONG, f"{path}: a name is longer than {NAME_MAX} bytes")
        return parts

    def _resolve(self, path: str) -> Inode:
        node = self.meta.inodes[ROOT]
        stack = [node]
        for part in self._parts(path):
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                node = stack[-1]
                continue
            if not node.is_dir:
                raise fs_error(errno.ENOTDIR, f"{path}: not a directory")
            child = node.ents.get(part)
            if child is None:
                raise fs_error(errno.ENOENT, f"{path}: no such file or directory")
            node = self.meta.inodes[child]
            stack.append(node)
        return node

    def _parent(self, path: str) -> tuple[Inode, str]:
        parts = self._parts(path)
        if not parts or parts[-1] == "..":
            raise InvalidArgument(f"{path!r} does not name an entry")
        parent = self._resolve("/".join(parts[:-1]))
        if not parent.is_dir:
            raise fs_error(errno.ENOTDIR, f"{path}: parent is not a directory")
        why = check_name(parts[-1])
        if why:
            raise fs_error(errno.ENAMETOOLONG if "longer" in why else errno.EINVAL, f"{path}: {why}")
        return parent, parts[-1]

    @staticmethod
    def _touch(node: Inode, now: float) -> list:
        node = node.copy()
        node.mtime = node.ctime = now
        return ["i", node.ino, node.to_json()]

    def _entry(self, path: str) -> tuple[Inode, str, Inode]:
        """(parent, name, inode) of an existing entry; ENOENT otherwise."""
        parent, name = self._parent(path)
        ino = parent.ents.get(name)
        if ino is None:
            raise fs_error(errno.ENOENT, f"{path}: no such file or directory")
        return parent, name, self.meta.inodes[ino]
