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
from daxkit.fuse.mount import _import_mfusepy
from daxkit.fuse.ops import make_operations

from .conftest import Mount, make_image, requires_fuse

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
    def as_user(self, uid, gid, groups=()):
        yield self

    def __getattr__(self, name):
        def boom(*args, **kwargs):
            raise self.exc

        return boom


HANDLER_CALLS = {
    "getattr": ("/f",), "chmod": ("/f", 0o644), "chown": ("/f", 1, 1), "utimens": ("/f", (1, 2)),
    "statfs": ("/",), "getxattr": ("/f", "user.daxkit.bad_ranges"), "listxattr": ("/f",),
    "readdir": ("/", 0), "mkdir": ("/d", 0o755), "rmdir": ("/d",), "unlink": ("/f",),
    "rename": ("/f", "/g"), "create": ("/f", 0o600), "truncate": ("/f", 0),
    "symlink": ("/l", "f"), "readlink": ("/l",), "link": ("/h", "/f"), "mknod": ("/p", 0o10644, 0),
}  # fmt: skip
FILE_CALLS = {
    "read": (4096, 0), "write": (b"x", 0), "truncate": (0,), "fallocate": (3, 0, 4096), "fsync": (0,),
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
    mfusepy = _import_mfusepy()
    ops = make_operations(_Boom(exc), mfusepy)
    try:
        for name, args in HANDLER_CALLS.items():
            with pytest.raises(mfusepy.FuseOSError) as ei:
                getattr(ops, name)(*args)
            assert ei.value.errno == code, name
        fh = ops.open("/f", os.O_RDWR)
        for name, args in FILE_CALLS.items():
            with pytest.raises(mfusepy.FuseOSError) as ei:
                getattr(ops, name)("/f", *args, fh)
            assert ei.value.errno == code, name
        assert ops.release("/f", fh) == 0  # closing never fails the caller's close()
    finally:
        ops.destroy("/")
