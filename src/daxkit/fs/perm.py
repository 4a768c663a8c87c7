"""Who is asking, and what they may do: the permission rules of a local Linux filesystem
(``generic_permission``, ``may_delete``'s sticky bit, ``inode_init_owner``, ``setattr_prepare``,
``should_remove_suid``), applied by DaxFS to the caller's credentials.

Rules
  * The caller is the process (its effective uid, gid and groups) unless a thread runs inside
    ``fs.as_user(uid, gid, groups)``; the FUSE adapter runs each request as its caller.
  * uid 0 holds every capability the rules name (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN,
    CAP_FSETID, CAP_MKNOD), as root in the initial user namespace does.
  * Refusals are EACCES for the mode bits and EPERM for what only an owner or root may do,
    as the kernel answers.
"""

from __future__ import annotations

import errno
import os
import stat as _stat

from .meta import Inode
from .uapi import fs_error

MAY_EXEC, MAY_WRITE, MAY_READ = 1, 2, 4


class Cred:
    """A caller: uid, gid and supplementary groups.  ``groups`` may be a callable, asked only
    when a rule needs them (reading them costs a system call or a /proc read per request).
    ``walked``: the caller has already been let through every directory on the way (the kernel
    walked the path for a FUSE request, or from a cwd or a descriptor the path does not show),
    so no search permission is asked on the way; what the operation needs of its own parent and
    inode is still checked."""

    __slots__ = ("uid", "gid", "_groups", "walked")

    def __init__(self, uid: int, gid: int, groups=(), walked: bool = False):
        self.uid, self.gid = uid, gid
        self._groups = groups if callable(groups) else frozenset(groups)
        self.walked = walked

    @property
    def groups(self) -> frozenset:
        if callable(self._groups):
            self._groups = frozenset(self._groups())
        return self._groups

    @classmethod
    def of_process(cls) -> Cred:
        return cls(os.geteuid(), os.getegid(), os.getgroups)

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    def owns(self, node: Inode) -> bool:
        return self.uid == node.uid


def permitted(cred: Cred, node: Inode, want: int) -> bool:
    """generic_permission: the owner's, the group's or the others' bits; root reads and writes
    anything and executes what has an x bit somewhere (a directory always)."""
    if cred.is_root:
        return not want & MAY_EXEC or node.is_dir or bool(node.mode & 0o111)
    if cred.owns(node):
        bits = node.mode >> 6
    elif cred.in_group(node.gid):
        bits = node.mode >> 3
    else:
        bits = node.mode
    return want & ~bits & 7 == 0


def require(cred: Cred, node: Inode, want: int, what: str) -> None:
    if not permitted(cred, node, want):
        raise fs_error(errno.EACCES, f"{what}: permission denied")


def require_delete(cred: Cred, parent: Inode, node: Inode, what: str) -> None:
    """may_delete: write and search in the directory; in a sticky directory only the owner of
    the entry or of the directory (or root) may remove or rename it."""
    require(cred, parent, MAY_WRITE | MAY_EXEC, what)
    if parent.mode & _stat.S_ISVTX and not (cred.is_root or cred.owns(node) or cred.owns(parent)):
        raise fs_error(errno.EPERM, f"{what}: the sticky directory keeps it to its owner")


def require_owner(cred: Cred, node: Inode, what: str) -> None:
    """inode_owner_or_capable: chmod, explicit times."""
    if not (cred.is_root or cred.owns(node)):
        raise fs_error(errno.EPERM, f"{what}: operation not permitted (not the owner)")


def new_owner(cred: Cred, parent: Inode, kind: str, mode: int) -> tuple[int, int, int]:
    """inode_init_owner: (uid, gid, mode) of a new inode.  In a set-group-ID directory the new
    inode takes the directory's group, a new directory keeps the bit, and a new file that would
    be set-group-ID for a group its creator is not in loses it."""
    gid = cred.gid
    if parent.mode & _stat.S_ISGID:
        gid = parent.gid
        if kind == "d":
            mode |= _stat.S_ISGID
        elif mode & _stat.S_ISGID and mode & 0o010 and not (cred.is_root or cred.in_group(gid)):
            mode &= ~_stat.S_ISGID
    return cred.uid, gid, mode


def chmod_mode(cred: Cred, node: Inode, mode: int) -> int:
    """setattr_prepare: a caller outside the file's group (and not root) cannot set S_ISGID."""
    if mode & _stat.S_ISGID and not (cred.is_root or cred.in_group(node.gid)):
        mode &= ~_stat.S_ISGID
    return mode


def check_chown(cred: Cred, node: Inode, uid: int, gid: int, what: str) -> None:
    """chown_ok/chgrp_ok: only root gives a file away; the owner may change its group to one of
    their own groups (and "change" the owner to themselves)."""
    if cred.is_root:
        return
    if uid != node.uid:
        raise fs_error(errno.EPERM, f"{what}: only root may change the owner")
    if gid != node.gid and not (cred.owns(node) and cred.in_group(gid)):
        raise fs_error(errno.EPERM, f"{what}: may change the group only to one of the owner's groups")


def killed_privs(cred: Cred | None, node: Inode) -> int:
    """should_remove_suid / setattr_should_drop_suidgid: the mode a write, truncate or chown
    leaves.  S_ISUID goes; S_ISGID goes with group execute, and after a write by someone outside
    the file's group (setattr_should_drop_sgid; tmpfs here does the same); ``cred`` None is a
    chown, which clears them even for root; a write by root (CAP_FSETID) keeps them."""
    mode = node.mode
    if node.is_dir or (cred is not None and cred.is_root):
        return mode
    if mode & _stat.S_ISUID:
        mode &= ~_stat.S_ISUID
    if mode & _stat.S_ISGID and (mode & 0o010 or (cred is not None and not cred.in_group(node.gid))):
        mode &= ~_stat.S_ISGID
    return mode
