"""Attributes, space and permissions as ordinary tools see them (SPEC 6): touch with UTIME_NOW and
UTIME_OMIT as on tmpfs, times to the nanosecond, chown that works or fails with EPERM, df from
fs.statfs(), the kernel checking permissions for every user (allow_other) unless private; and no
handler lets a Python exception through: every failure is an errno."""

import contextlib
import errno
import os
import subprocess
import time

import pytest

import daxkit
from daxkit.fuse import proto as P
from daxkit.fuse.ops import Operations

from .conftest import Mount, make_image, requires_fuse
from .wire import call, rw, setattr_in

pytestmark = requires_fuse
NOBODY = 65534


def _times(path):
    st = os.stat(path)
    return st.st_atime_ns, st.st_mtime_ns


def _touch(*args):
    subprocess.run(["touch", *args], check=True, timeout=30)


def _before() -> int:
    """A time no later than a "now" stamped afterwards, by us or by the kernel (which takes
    UTIME_NOW from its coarse clock, as it does for a local filesystem)."""
    return time.clock_gettime_ns(getattr(time, "CLOCK_REALTIME_COARSE", 5))  # Linux numbers it 5


def test_touch_and_utime_behave_as_on_tmpfs(mounted):
    f = mounted.path("t")
    open(f, "w").close()
    A, M = 100_000_000_123, 200_000_000_456
    os.utime(f, ns=(A, M))
    assert _times(f) == (A, M)

    before = _before()
    _touch("-m", f)  # mtime now (UTIME_NOW), atime untouched (UTIME_OMIT)
    a, m = _times(f)
    assert a == A and before <= m <= time.time_ns(), (a, m)

    os.utime(f, ns=(A, M))
    before = _before()
    _touch("-a", f)  # atime now, mtime untouched
    a, m = _times(f)
    assert m == M and before <= a <= time.time_ns(), (a, m)

    _touch("-d", "@123456789.5", f)
    assert _times(f) == (123_456_789_500_000_000, 123_456_789_500_000_000)

    before = _before()
    _touch(f)  # both now
    a, m = _times(f)
    assert before <= a <= time.time_ns() and before <= m <= time.time_ns(), (a, m)

    for ns in [(1_700_000_000_123_456_789, 1_600_000_000_987_654_321), (-1_500_000_001, 0), (1, 999_999_999)]:
        os.utime(f, ns=ns)
        assert _times(f) == ns
    assert os.stat(f).st_ctime_ns >= before  # ctime moves with every change


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_chown_is_kept_and_only_root_gives_a_file_away(mounted):
    f = mounted.path("owned")
    with open(f, "w") as fh:
        fh.write("x")
    os.chmod(f, 0o4755)
    os.chown(f, NOBODY, NOBODY)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (NOBODY, NOBODY, 0o755)  # set-user-ID cleared
    os.chmod(mounted.mnt, 0o777)
    dirfd = os.open(mounted.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:  # nobody owns it now, and still cannot give it to root
        assert _as_nobody(dirfd, "owned", chown_to=0) == errno.EPERM
        assert _as_nobody(dirfd, "owned", chown_to=NOBODY) == 0
    finally:
        os.close(dirfd)
    assert os.stat(f).st_uid == NOBODY


def test_df_shows_fs_statfs(mounted):
    with open(mounted.path("big"), "wb") as f:
        f.write(os.urandom(1 << 20))
    seen = os.statvfs(mounted.mnt)
    with daxkit.open(mounted.image) as dev, daxkit.mount(dev, readonly=True) as fs:
        want = fs.statfs()
    for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_namemax"):
        assert getattr(seen, key) == want[key], key
    assert want["f_blocks"] - want["f_bfree"] >= (1 << 20) // want["f_bsize"]
    df = subprocess.run(["df", "-B4096", "--output=size,used", mounted.mnt], capture_output=True, text=True)
    size, used = df.stdout.split()[-2:]
    assert int(size) == want["f_blocks"] and int(used) == want["f_blocks"] - want["f_bfree"]


def test_names_that_are_not_utf8_work_as_on_tmpfs(mounted):
    """The kernel's names are bytes: ones that are not UTF-8 reach the filesystem
    surrogate-escaped and come back as the same bytes."""
    mnt = os.fsencode(mounted.mnt)
    bad = os.path.join(mnt, b"\xff\xfe")
    with open(bad, "wb") as f:
        f.write(b"data")
    assert os.listdir(mnt) == [b"\xff\xfe"]
    assert os.stat(bad).st_size == 4
    os.rename(bad, os.path.join(mnt, b"\xed\xa0\x80"))  # a UTF-8-encoded surrogate, also not UTF-8
    assert os.listdir(mnt) == [b"\xed\xa0\x80"]
    os.unlink(os.path.join(mnt, b"\xed\xa0\x80"))
    assert os.listdir(mnt) == []


# -- permissions: the kernel checks them, for every user unless the mount is private ---------------
def _as_nobody(dirfd: int, name: str, chown_to: int | None = None) -> int:
    """Open and read ``name`` under ``dirfd`` as nobody (or chown it to ``chown_to``): 0, or
    the errno."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            if chown_to is not None:
                os.chown(name, chown_to, -1, dir_fd=dirfd)
            else:
                fd = os.open(name, os.O_RDONLY, dir_fd=dirfd)
                os.read(fd, 16)
                os.close(fd)
        except OSError as e:
            code = e.errno or 255
        except BaseException:
            code = 254
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _mount_options(mnt: str) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == mnt:
                return set(fields[5].split(",")) | set(fields[fields.index("-") + 3].split(","))
    raise AssertionError(f"{mnt} is not mounted")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
@pytest.mark.parametrize("private", [False, True])
def test_other_users_use_the_mount_with_the_kernel_checking_permissions(tmp_path, private):
    image = make_image(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(image, str(mnt), private=private)
    try:
        for name, mode in (("public", 0o644), ("secret", 0o600)):
            with open(m.path(name), "w") as f:
                f.write(name)
            os.chmod(m.path(name), mode)
        opts = _mount_options(str(mnt))
        assert "default_permissions" in opts and ("allow_other" in opts) != private, opts
        dirfd = os.open(str(mnt), os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert _as_nobody(dirfd, "public") == (errno.EACCES if private else 0)
            assert _as_nobody(dirfd, "secret") == errno.EACCES
        finally:
            os.close(dirfd)
    finally:
        m.umount()


# -- every handler: any exception becomes an errno ----------------------------------------------
class _Boom:
    """A filesystem (and its files) where every operation raises ``exc``."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def add_failure_listener(self, callback):
        pass

    def open(self, path, mode="r", **kwargs):
        if mode == "x+":  # creating
            raise self.exc
        return _Boom(self.exc)

    @contextlib.contextmanager
    def as_user(self, uid, gid, groups=(), *, walked=False):
        yield self

    def __getattr__(self, name):
        def boom(*args, **kwargs):
            raise self.exc

        return boom


XATTR = b"user.daxkit.bad_ranges\0"
HANDLER_CALLS = {  # name: (opcode, node, body); node 2 is "/f"
    "lookup": (P.LOOKUP, 1, b"f\0"), "getattr": (P.GETATTR, 2, P.GETATTR_IN.pack(0, 0, 0)),
    "chmod": (P.SETATTR, 2, setattr_in(P.FATTR_MODE, mode=0o644)),
    "chown": (P.SETATTR, 2, setattr_in(P.FATTR_UID | P.FATTR_GID, uid=1, gid=1)),
    "utimens": (P.SETATTR, 2, setattr_in(P.FATTR_ATIME | P.FATTR_MTIME)),
    "truncate": (P.SETATTR, 2, setattr_in(P.FATTR_SIZE)), "statfs": (P.STATFS, 1, b""),
    # node 3 has no name the kernel told us: its path comes from the filesystem, whose failure
    # is the answer (not taken for "unlinked")
    "chmod by number": (P.SETATTR, 3, setattr_in(P.FATTR_MODE, mode=0o600)),
    "open by number": (P.OPEN, 3, P.OPEN_IN.pack(os.O_RDONLY, 0)),
    "getxattr": (P.GETXATTR, 2, P.GETXATTR_IN.pack(0, 0) + XATTR),
    "listxattr": (P.LISTXATTR, 2, P.GETXATTR_IN.pack(0, 0)), "opendir": (P.OPENDIR, 1, P.OPEN_IN.pack(0, 0)),
    "mkdir": (P.MKDIR, 1, P.MKDIR_IN.pack(0o755, 0) + b"d\0"), "rmdir": (P.RMDIR, 1, b"d\0"),
    "unlink": (P.UNLINK, 1, b"f\0"), "rename": (P.RENAME, 1, P.RENAME_IN.pack(1) + b"f\0g\0"),
    "create": (P.CREATE, 1, P.CREATE_IN.pack(os.O_RDWR | os.O_CREAT, 0o600, 0, 0) + b"f\0"),
    "symlink": (P.SYMLINK, 1, b"l\0f\0"), "readlink": (P.READLINK, 2, b""),
    "link": (P.LINK, 1, P.LINK_IN.pack(2) + b"h\0"),
    "mknod": (P.MKNOD, 1, P.MKNOD_IN.pack(0o10644, 0, 0, 0) + b"p\0"),
}  # fmt: skip


def file_calls(fh: int) -> dict:
    return {
        "read": (P.READ, rw(fh, 0, 4096)), "write": (P.WRITE, rw(fh, 0, 1) + b"x"),
        "ftruncate": (P.SETATTR, setattr_in(P.FATTR_SIZE | P.FATTR_FH, fh=fh)),
        "fallocate": (P.FALLOCATE, P.FALLOCATE_IN.pack(fh, 0, 4096, 3, 0)),
        "fsync": (P.FSYNC, P.FSYNC_IN.pack(fh, 0, 0)),
    }  # fmt: skip


@pytest.mark.parametrize(
    "exc, code",
    [
        (ValueError("bad"), errno.EINVAL),
        (TypeError("bad"), errno.EINVAL),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), errno.EINVAL),
        (OverflowError("big"), errno.EOVERFLOW),
        (RuntimeError("bug"), errno.EIO),
        (KeyError("bug"), errno.EIO),
        (daxkit.DaxError("stale", errno=errno.ESTALE), errno.ESTALE),
    ],
)
def test_every_handler_turns_any_exception_into_an_errno(exc, code):
    ops = Operations(_Boom(exc))
    ops.names[2] = (1, "f")  # the kernel has looked "/f" up
    for name, (opcode, node, body) in HANDLER_CALLS.items():
        assert call(ops, opcode, node, body)[0] == code, name
    err, out = call(ops, P.OPEN, 2, P.OPEN_IN.pack(os.O_RDWR, 0))
    assert err == 0
    fh = P.OPEN_OUT.unpack(out)[0]
    for name, (opcode, body) in file_calls(fh).items():
        assert call(ops, opcode, 2, body)[0] == code, name
    assert call(ops, P.RELEASE, 2, P.RELEASE_IN.pack(fh, 0, 0, 0)) == (0, b"")  # close() never fails
    assert call(ops, 99, 1) == (errno.ENOSYS, b"")  # an opcode we do not serve
