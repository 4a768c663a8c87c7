"""daxfs against an independent implementation: the kernel's tmpfs.

The same seeded random sequence of file operations runs on a tmpfs directory (ordinary system
calls) and on daxfs -- through the API, and through the FUSE mount with the same system calls --
and every outcome must match: bytes read, sizes, directory listings, and the errno of every
failure."""

import ctypes
import errno
import os
import random
import stat
import tempfile

import pytest

import daxkit

from ..fuse.conftest import Mount, make_image, requires_fuse

P = 4096
TOP = "top"  # every name lives in here, so a symlink's ".." from the top stays inside both trees
NAMES = ["a", "b", "c", "d/e", "d/f", "g/h"]
# relative targets (they stay inside both trees); "lnk" can loop
TARGETS = ["a", "d/e", "../a", "nowhere", "d", "lnk", "d/lnk", "../lnk"]
DIRS = ["d", "g"]
_libc = ctypes.CDLL(None, use_errno=True)


class OsDriver:
    """Operations as system calls on a directory (tmpfs, or the FUSE mount)."""

    def __init__(self, root: str):
        self.root = root

    def p(self, name: str) -> str:
        return os.path.join(self.root, TOP, name)

    def write(self, name, off, data):
        fd = os.open(self.p(name), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            return os.pwrite(fd, data, off)
        finally:
            os.close(fd)

    def read(self, name, off, n):
        fd = os.open(self.p(name), os.O_RDONLY)
        try:
            return os.pread(fd, n, off)
        finally:
            os.close(fd)

    def truncate(self, name, size):
        os.truncate(self.p(name), size)

    def punch(self, name, off, n):
        fd = os.open(self.p(name), os.O_RDWR)
        try:
            if _libc.fallocate(fd, 0x03, ctypes.c_long(off), ctypes.c_long(n)) != 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
        finally:
            os.close(fd)

    def size(self, name):
        st = os.stat(self.p(name))
        return None if stat.S_ISDIR(st.st_mode) else st.st_size  # a directory's size is the fs's own

    def unlink(self, name):
        os.unlink(self.p(name))

    def mkdir(self, name):
        os.mkdir(self.p(name))

    def rmdir(self, name):
        os.rmdir(self.p(name))

    def rename(self, a, b):
        os.rename(self.p(a), self.p(b))

    def listdir(self, name):
        return sorted(os.listdir(self.p(name)))

    def isdir(self, name):
        return stat.S_ISDIR(os.stat(self.p(name)).st_mode)

    def symlink(self, target, name):
        os.symlink(target, self.p(name))

    def link(self, a, b):
        os.link(self.p(a), self.p(b))

    def readlink(self, name):
        return os.readlink(self.p(name))

    def lstat(self, name):
        return attrs(os.lstat(self.p(name)))

    def stat(self, name):
        return attrs(os.stat(self.p(name)))

    def chmod(self, name, mode):
        os.chmod(self.p(name), mode)

    def chown(self, name, uid, gid):
        os.chown(self.p(name), uid, gid, follow_symlinks=False)

    def utime(self, name, ns):
        os.utime(self.p(name), ns=ns)


def attrs(st) -> tuple:
    """What must agree between the two: type and mode, links, owners, the times set explicitly
    (utime sets them to whole seconds plus 7 ns, never 'now'), and a file's size."""
    size = None if stat.S_ISDIR(st.st_mode) else st.st_size
    mtime = st.st_mtime_ns if st.st_mtime_ns % 10**9 == 7 else None
    return (st.st_mode, st.st_nlink, st.st_uid, st.st_gid, size, mtime)


class ApiDriver:
    """The same operations through the daxfs API."""

    def __init__(self, fs):
        self.fs = fs
        self.p = f"/{TOP}/".__add__

    def write(self, name, off, data):
        mode = "r+" if self.fs.exists(self.p(name)) else "w"
        with self.fs.open(self.p(name), mode) as f:
            return f.pwrite(data, off)

    def read(self, name, off, n):
        with self.fs.open(self.p(name), "r") as f:
            return f.pread(n, off)

    def truncate(self, name, size):
        with self.fs.open(self.p(name), "r+") as f:
            f.truncate(size)

    def punch(self, name, off, n):
        with self.fs.open(self.p(name), "r+") as f:
            f.fallocate(daxkit.FALLOC_FL_PUNCH_HOLE | daxkit.FALLOC_FL_KEEP_SIZE, off, n)

    def size(self, name):
        st = self.fs.stat(self.p(name))
        return None if stat.S_ISDIR(st.st_mode) else st.st_size

    def unlink(self, name):
        self.fs.unlink(self.p(name))

    def mkdir(self, name):
        self.fs.mkdir(self.p(name))

    def rmdir(self, name):
        self.fs.rmdir(self.p(name))

    def rename(self, a, b):
        self.fs.rename(self.p(a), self.p(b))

    def listdir(self, name):
        return self.fs.listdir(self.p(name))

    def isdir(self, name):
        return stat.S_ISDIR(self.fs.stat(self.p(name)).st_mode)

    def symlink(self, target, name):
        self.fs.symlink(target, self.p(name))

    def link(self, a, b):
        self.fs.link(self.p(a), self.p(b))

    def readlink(self, name):
        return self.fs.readlink(self.p(name))

    def lstat(self, name):
        return attrs(self.fs.lstat(self.p(name)))

    def stat(self, name):
        return attrs(self.fs.stat(self.p(name)))

    def chmod(self, name, mode):
        self.fs.chmod(self.p(name), mode)

    def chown(self, name, uid, gid):
        self.fs.chown(self.p(name), uid, gid, follow_symlinks=False)

    def utime(self, name, ns):
        self.fs.utime(self.p(name), ns)


def random_ops(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        kind = rng.choices(
            ["write", "read", "truncate", "punch", "size", "unlink", "mkdir", "rmdir", "rename", "listdir",
             "symlink", "link", "readlink", "lstat", "stat", "chmod", "chown", "utime"],
            weights=[30, 20, 8, 6, 8, 6, 5, 4, 8, 5, 4, 4, 3, 4, 4, 3, 3, 3],
        )[0]  # fmt: skip
        name = rng.choice(NAMES + DIRS + ["lnk", "d/lnk"])
        off = rng.choice([0, 1, 100, P - 1, P, 3 * P + 17, rng.randrange(8 * P)])
        n = rng.choice([1, 10, P, 2 * P + 5, rng.randrange(1, 3 * P)])
        if kind == "write":
            yield kind, (name, off, rng.randbytes(n))
        elif kind in ("read", "punch"):
            yield kind, (name, off, n)
        elif kind == "truncate":
            yield kind, (name, rng.randrange(6 * P))
        elif kind == "rename":
            yield kind, (name, rng.choice(NAMES + DIRS))
        elif kind == "symlink":
            yield kind, (rng.choice(TARGETS), name)
        elif kind == "link":
            yield kind, (name, rng.choice(NAMES + ["lnk"]))
        elif kind == "chmod":
            yield kind, (name, rng.choice([0o644, 0o600, 0o755, 0o4755, 0o2750, 0o1777, 0o000]))
        elif kind == "chown":
            yield kind, (name, rng.choice([-1, 0, 1000]), rng.choice([-1, 0, 100]))
        elif kind == "utime":
            yield kind, (name, (rng.randrange(1 << 31) * 10**9 + 7, rng.randrange(1 << 31) * 10**9 + 7))
        elif kind == "listdir":
            yield kind, (rng.choice(["", "d", "g"]),)
        else:
            yield kind, (name,)


def outcome(driver, kind, args):
    try:
        return ("ok", getattr(driver, kind)(*args))
    except OSError as e:
        return ("err", e.errno)


def same(kind, a, b) -> bool:
    if a == b:
        return True
    # Linux lets rename/rmdir of a non-empty directory fail with either ENOTEMPTY or EEXIST
    return kind in ("rename", "rmdir") and {a, b} <= {("err", errno.ENOTEMPTY), ("err", errno.EEXIST)}


def run_both(peer, dax, seed: int, count: int) -> int:
    compared = 0
    peer.mkdir("")
    dax.mkdir("")
    for i, (kind, args) in enumerate(random_ops(seed, count)):
        want, got = outcome(peer, kind, args), outcome(dax, kind, args)
        assert same(kind, want, got), (
            f"seed {seed} op {i}: {kind}{args!r:.80}: tmpfs {want!r:.120} daxfs {got!r:.120}"
        )
        compared += 1
    for d in ("", "d", "g"):  # the final trees agree too
        assert outcome(peer, "listdir", (d,)) == outcome(dax, "listdir", (d,))
    return compared


# DAXKIT_TMPFS_SEEDS=N runs N more seeds (2,000 operations each) beside the three quick ones
EXTRA_SEEDS = int(os.environ.get("DAXKIT_TMPFS_SEEDS", "0"))


@pytest.mark.parametrize("seed", [1, 2, 3] + list(range(100, 100 + EXTRA_SEEDS)))
def test_api_matches_tmpfs(tmp_path, seed):
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as peer_root:
        dev = daxkit.create(str(tmp_path / "dax.img"), "32M")
        daxkit.mkfs(dev)
        with daxkit.mount(dev) as fs:
            count = 400 if seed < 100 else 2000
            assert run_both(OsDriver(peer_root), ApiDriver(fs), seed, count) == count
        assert daxkit.fsck(dev)["clean"]
        dev.close()


@requires_fuse
def test_fuse_mount_matches_tmpfs(tmp_path):
    image = make_image(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(image, str(mnt))
    try:
        with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as peer_root:
            assert run_both(OsDriver(peer_root), OsDriver(str(mnt)), 11, 400) == 400
    finally:
        m.umount()
    with daxkit.open(image) as dev:
        assert daxkit.fsck(dev)["clean"]
