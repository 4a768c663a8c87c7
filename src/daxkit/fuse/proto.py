"""The FUSE wire protocol (linux/fuse.h, 7.38): requests parsed, replies and notices built.

Rules
  * No I/O here (h11's rule): ``channel.py`` reads and writes /dev/fuse, ``ops.py`` decides.
  * Little-endian x86-64 layouts, exactly as the kernel's ``struct fuse_*``; every format below
    names its struct.  A request body shorter than its struct is the kernel's bug, not ours to
    guess about: it raises (and becomes EINVAL at the errno boundary).
  * Names are bytes on the wire and str above (UTF-8 with surrogateescape, as os does).

Theory of operation
  A request is ``fuse_in_header`` (40 bytes) then an opcode's argument struct, then for some
  opcodes one or two NUL-terminated names, or the written bytes.  A reply is ``fuse_out_header``
  (16 bytes: length, negative errno, the request's unique id) then the opcode's out struct.  A
  notice is a reply with unique 0 whose ``error`` field carries the notice code.
"""

from __future__ import annotations

import os
import struct

# -- opcodes (enum fuse_opcode) --------------------------------------------------------------------
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE = 8, 9, 10, 11, 12, 13, 14, 15, 16
STATFS, RELEASE, FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR = 17, 18, 20, 21, 22, 23, 24
FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR = 25, 26, 27, 28, 29, 30
ACCESS, CREATE, INTERRUPT, DESTROY, BATCH_FORGET, FALLOCATE, RENAME2 = 34, 35, 36, 38, 42, 43, 45
NO_REPLY = frozenset({FORGET, BATCH_FORGET, INTERRUPT})  # the kernel waits for no answer to these

# -- INIT flags (fuse_init_in/out.flags) ----------------------------------------------------------
ASYNC_READ, ATOMIC_O_TRUNC, BIG_WRITES = 1 << 0, 1 << 3, 1 << 5
WRITEBACK_CACHE, PARALLEL_DIROPS, MAX_PAGES = 1 << 16, 1 << 18, 1 << 22
CACHE_SYMLINKS, EXPLICIT_INVAL_DATA, HANDLE_KILLPRIV_V2 = 1 << 23, 1 << 25, 1 << 28
KERNEL_MAJOR, KERNEL_MINOR = 7, 38

# -- per-request flags -------------------------------------------------------------------------------
GETATTR_FH = 1 << 0
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FATTR_ATIME, FATTR_MTIME, FATTR_FH, FATTR_ATIME_NOW, FATTR_MTIME_NOW = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
FATTR_CTIME = 1 << 10
FOPEN_KEEP_CACHE = 1 << 1
NOTIFY_INVAL_INODE = 2

# -- layouts ----------------------------------------------------------------------------------------
IN_HEADER = struct.Struct("<IIQQIIIHH")  # fuse_in_header: len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # fuse_out_header: len error unique
ATTR = struct.Struct("<3Q3q10I")  # fuse_attr (times before 1970 are negative)
ENTRY_OUT = struct.Struct("<4Q2I")  # fuse_entry_out up to its fuse_attr
ATTR_OUT = struct.Struct("<QII")  # fuse_attr_out up to its fuse_attr
OPEN_OUT = struct.Struct("<QII")  # fuse_open_out
WRITE_OUT = struct.Struct("<II")  # fuse_write_out
GETXATTR_OUT = struct.Struct("<II")  # fuse_getxattr_out
STATFS_OUT = struct.Struct("<5Q4I6I")  # fuse_kstatfs
INIT_IN = struct.Struct("<4I")  # fuse_init_in: major minor max_readahead flags
INIT_OUT = struct.Struct("<4IHHIIHHI7I")  # fuse_init_out (64 bytes)
DIRENT = struct.Struct("<QQII")  # fuse_dirent up to its name
INVAL_INODE_OUT = struct.Struct("<Qqq")  # fuse_notify_inval_inode_out
# argument structs, by opcode (what follows the header)
GETATTR_IN = struct.Struct("<IIQ")
SETATTR_IN = struct.Struct("<IIQQQqqqIIIIIIII")
MKNOD_IN = struct.Struct("<IIII")
MKDIR_IN = struct.Struct("<II")
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")
LINK_IN = struct.Struct("<Q")
OPEN_IN = struct.Struct("<II")
CREATE_IN = struct.Struct("<IIII")
RW_IN = struct.Struct("<QQIIQII")  # fuse_read_in and fuse_write_in
RELEASE_IN = struct.Struct("<QIIQ")
FLUSH_IN = struct.Struct("<QIIQ")
FSYNC_IN = struct.Struct("<QII")
GETXATTR_IN = struct.Struct("<II")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
FALLOCATE_IN = struct.Struct("<QQQII")

# the kernel's DT_* of a mode's file type, for dirents
_DT = {0o010000: 1, 0o020000: 2, 0o040000: 4, 0o060000: 6, 0o100000: 8, 0o120000: 10, 0o140000: 12}


def name_of(raw) -> str:
    return os.fsdecode(bytes(raw))


def names(body, start: int, count: int) -> list[str]:
    """``count`` NUL-terminated names from ``body[start:]``."""
    raw = bytes(body[start:]).split(b"\0")
    if len(raw) <= count:
        raise ValueError("a request's name is not NUL-terminated")
    return [name_of(n) for n in raw[:count]]


def pack_attr(st, ino: int) -> bytes:
    """``fuse_attr`` of an ``os.stat_result``; ``ino`` is what the kernel shows as st_ino."""
    a, m, c = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
    return ATTR.pack(
        ino, st.st_size, st.st_blocks, a // 10**9, m // 10**9, c // 10**9,
        a % 10**9, m % 10**9, c % 10**9, st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
        st.st_rdev & 0xFFFFFFFF, st.st_blksize, 0,
    )  # fmt: skip


def _valid(seconds: float) -> tuple[int, int]:
    return int(seconds), int(seconds % 1 * 1e9)


def entry_out(nodeid: int, generation: int, st, entry_s: float, attr_s: float) -> bytes:
    (es, ens), (as_, ans) = _valid(entry_s), _valid(attr_s)
    return ENTRY_OUT.pack(nodeid, generation, es, as_, ens, ans) + pack_attr(st, st.st_ino)


def attr_out(st, attr_s: float) -> bytes:
    s, ns = _valid(attr_s)
    return ATTR_OUT.pack(s, ns, 0) + pack_attr(st, st.st_ino)


def open_out(fh: int, flags: int) -> bytes:
    return OPEN_OUT.pack(fh, flags, 0)


def statfs_out(s: dict) -> bytes:
    return STATFS_OUT.pack(s["f_blocks"], s["f_bfree"], s["f_bavail"], s["f_files"], s["f_ffree"],
                           s["f_bsize"], s["f_namemax"], s["f_frsize"], 0, 0, 0, 0, 0, 0, 0)  # fmt: skip


def dirent(ino: int, off: int, name: str, mode: int) -> bytes:
    raw = os.fsencode(name)
    rec = DIRENT.pack(ino, off, len(raw), _DT.get(mode & 0o170000, 0)) + raw
    return rec + b"\0" * (-len(rec) % 8)


def reply(unique: int, error: int, *parts) -> list:
    """The buffers of one reply: the header, then ``parts`` (none with an error)."""
    return [OUT_HEADER.pack(OUT_HEADER.size + sum(len(p) for p in parts), -error, unique), *parts]


def notice_inval_inode(nodeid: int, offset: int, length: int) -> list:
    body = INVAL_INODE_OUT.pack(nodeid, offset, length)
    return [OUT_HEADER.pack(OUT_HEADER.size + len(body), NOTIFY_INVAL_INODE, 0), body]
