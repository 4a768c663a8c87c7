"""Path resolution (the kernel's namei): a path to its inode, or to its parent directory and
last name, following symbolic links.

Rules
  * Every component is checked for length first (ENAMETOOLONG, lookups included).  A whole
    path has no limit here: PATH_MAX bounds what a system call takes (the VFS's getname), and a
    FUSE path from the mount's root can be longer than the relative path a program gave.
  * Search (x) permission is needed on every directory walked through, unless the caller was
    walked through them already (``Cred.walked``: the kernel, for a FUSE request).
  * Symbolic links are followed inside a path always, at its end when asked (``follow``) or
    when the path ends in "/"; more than MAX_SYMLINKS links in one walk is ELOOP.  An absolute
    target starts again at the root; ".." is the physical parent (the directory walked from).
"""

from __future__ import annotations

import errno

from ..errors import InvalidArgument
from .meta import NAME_MAX, ROOT, Inode, check_name
from .perm import MAY_EXEC, require
from .uapi import fs_error

MAX_SYMLINKS = 40  # the kernel's MAXSYMLINKS


class Namei:
    """A part of DaxFS (see daxfs.py)."""

    @staticmethod
    def _parts(path: str) -> list[str]:
        if not isinstance(path, str):
            raise InvalidArgument(f"path must be a str, not {type(path).__name__}")
        parts = [p for p in path.split("/") if p and p != "."]
        for p in parts:  # every path operation, lookups included (the VFS checks in lookup)
            if len(p) > NAME_MAX // 4 and len(p.encode("utf-8", "surrogateescape")) > NAME_MAX:
                raise fs_error(errno.ENAMETOOLONG, f"{path}: a name is longer than {NAME_MAX} bytes")
        return parts

    def _walk(self, path: str, follow: bool = True) -> tuple[Inode, str | None, Inode | None]:
        """(parent, last name, inode or None when the last name is missing) of ``path``, with
        symbolic links followed as the rules say.  The root is (root, None, root)."""
        parts = self._parts(path)
        follow = follow or path.endswith("/")
        cred = self._cred()
        inodes = self.meta.inodes
        stack = [inodes[ROOT]]  # the directories walked through, for ".."
        todo = list(reversed(parts))
        links = 0
        while todo:
            part = todo.pop()
            node = stack[-1]
            if not node.is_dir:
                raise fs_error(errno.ENOTDIR, f"{path}: not a directory")
            if not cred.walked:
                require(cred, node, MAY_EXEC, path)
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                if not todo:
                    return stack[-1], None, stack[-1]
                continue
            child = node.ents.get(part)
            if child is None:
                if todo:
                    raise fs_error(errno.ENOENT, f"{path}: no such file or directory")
                return node, part, None
            cnode = inodes[child]
            if cnode.is_symlink and (todo or follow):
                links += 1
                if links > MAX_SYMLINKS:
                    raise fs_error(errno.ELOOP, f"{path}: too many levels of symbolic links")
                target = cnode.target
                if target.startswith("/"):
                    del stack[1:]
                tparts = self._parts(target)
                if not tparts:  # a link to "/" (or to ".")
                    if not todo:
                        return stack[-1], None, stack[-1]
                    continue
                todo.extend(reversed(tparts))
                continue
            if not todo:
                if path.endswith("/") and not cnode.is_dir:
                    raise fs_error(errno.ENOTDIR, f"{path}: not a directory")
                return node, part, cnode
            stack.append(cnode)
        return stack[-1], None, stack[-1]

    def _resolve(self, path: str, follow: bool = True) -> Inode:
        _, _, node = self._walk(path, follow)
        if node is None:
            raise fs_error(errno.ENOENT, f"{path}: no such file or directory")
        return node

    def _parent(self, path: str) -> tuple[Inode, str]:
        """The directory that holds (or would hold) the last name of ``path``, and that name;
        a last symbolic link is not followed."""
        parts = self._parts(path)
        if not parts or parts[-1] == "..":
            raise InvalidArgument(f"{path!r} does not name an entry")
        parent, name, _ = self._walk(path.rstrip("/") or "/", follow=False)
        if name is None:
            raise InvalidArgument(f"{path!r} does not name an entry")
        why = check_name(name)
        if why:
            raise fs_error(errno.ENAMETOOLONG if "longer" in why else errno.EINVAL, f"{path}: {why}")
        return parent, name

    @staticmethod
    def _touch(node: Inode, now: float) -> list:
        node = node.copy()
        node.mtime = node.ctime = now
        return ["i", node.ino, node.to_json()]

    def _entry(self, path: str) -> tuple[Inode, str, Inode]:
        """(parent, name, inode) of an existing entry, its last symlink not followed; ENOENT."""
        parent, name = self._parent(path)
        ino = parent.ents.get(name)
        if ino is None:
            raise fs_error(errno.ENOENT, f"{path}: no such file or directory")
        return parent, name, self.meta.inodes[ino]
