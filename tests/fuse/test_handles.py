"""Handles the kernel gives back are let go (RELEASE, RELEASEDIR), driven through ``dispatch``."""

import errno
import os
import shutil
import stat
import tempfile

import pytest

import daxkit
from daxkit.fuse import proto
from daxkit.fuse.ops import Operations

from .conftest import make_image
from .wire import call, rw


def test_releasedir_lets_go_of_the_handle_and_its_listing(tmp_path):
    """RELEASEDIR's body is fuse_release_in (24 bytes): it is answered with success and the
    handle's listing is dropped; a server that kept it would hold one listing per opendir."""
    image = make_image(tmp_path)
    with daxkit.open(image) as dev, daxkit.mount(dev) as fs:
        for i in range(3):
            fs.open(f"/f{i}", "x").close()
        ops = Operations(fs)
        for _ in range(5):
            err, out = call(ops, proto.OPENDIR, 1, proto.OPEN_IN.pack(os.O_RDONLY, 0))
            assert err == 0
            fh = proto.OPEN_OUT.unpack(out)[0]
            err, out = call(ops, proto.READDIR, 1, rw(fh, 0, 4096))
            assert err == 0 and b"f2" in out
            assert call(ops, proto.RELEASEDIR, 1, proto.RELEASE_IN.pack(fh, 0, 0, 0)) == (0, b"")
        assert ops.dirs == {}


def test_an_unlinked_open_file_opens_again_through_proc_fd_as_on_tmpfs(mounted):
    """open(/proc/self/fd/N) of an unlinked file that is still open is a new handle of it (tmpfs,
    ext4); its writes are the file's, and the orphan still goes with the last close."""
    free = os.statvfs(mounted.mnt).f_bfree
    fd = os.open(mounted.path("gone"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"secret" * 10000)
        os.unlink(mounted.path("gone"))
        again = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        try:
            assert os.pread(again, 6, 0) == b"secret"
            os.pwrite(again, b"SECRET", 0)
            os.fsync(again)
            assert os.pread(fd, 6, 0) == b"SECRET"
            assert os.fstat(again).st_nlink == 0
        finally:
            os.close(again)
        assert os.pread(fd, 6, 0) == b"SECRET"
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    assert os.statvfs(mounted.mnt).f_bfree == free


def test_a_removed_directory_still_held_stats_with_no_links_and_lists_empty(mounted, tmp_path):
    """A directory removed while a descriptor (or a cwd) holds it: fstat works and says no links,
    listing it finds nothing -- as on tmpfs -- rather than ENOENT."""
    for base in (mounted.mnt, str(tmp_path)):
        d = os.path.join(base, "d")
        os.mkdir(d)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.rmdir(d)
            st = os.fstat(fd)
            assert stat.S_ISDIR(st.st_mode) and st.st_nlink == 0, base
            assert os.listdir(fd) == [], base
            with pytest.raises(FileNotFoundError):
                os.open(os.path.join(f"/proc/self/fd/{fd}", "x"), os.O_CREAT | os.O_WRONLY, 0o644)
        finally:
            os.close(fd)
        assert not os.path.exists(d)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")
def test_chown_to_the_same_ids_clears_set_id_bits_as_on_tmpfs(mounted):
    """chown(path, -1, -1) reaches us as a setattr of ctime alone (FUSE_HANDLE_KILLPRIV_V2 leaves
    the set-ID bits to the server): the owner's clears S_ISUID and S_ISGID with group execute,
    another user's fails with EPERM when there are bits to clear and succeeds when there are
    none, root's clears them -- what tmpfs does."""

    def run(base: str) -> list:
        """What the owner, another user and root see; the users reach ``base`` by a descriptor
        (the test's own directories are root's alone)."""
        os.chmod(base, 0o777)
        with open(os.path.join(base, "root"), "w") as f:
            f.write("x")
        os.chmod(os.path.join(base, "root"), 0o6755)
        dirfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        rd, wr = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            out = []
            try:
                os.setgid(1000)
                os.setuid(1000)
                try:
                    os.chown("root", -1, -1, dir_fd=dirfd)
                    out.append("chown ok")
                except OSError as e:
                    out.append(errno.errorcode[e.errno])
                out.append(oct(os.stat("root", dir_fd=dirfd).st_mode))
                for name, mode in (("own", 0o4755), ("sgid", 0o2755), ("plain", 0o755)):
                    os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dirfd))
                    os.chmod(name, mode, dir_fd=dirfd)
                    os.chown(name, -1, -1, dir_fd=dirfd)
                    out.append(oct(os.stat(name, dir_fd=dirfd).st_mode))
            except BaseException as e:
                out.append(repr(e))
            finally:
                os.write(wr, repr(out).encode())
                os._exit(0)
        os.close(wr)
        os.close(dirfd)
        os.waitpid(pid, 0)
        with os.fdopen(rd) as f:
            out = f.read()
        os.chown(os.path.join(base, "root"), -1, -1)
        return [out, oct(os.stat(os.path.join(base, "root")).st_mode)]

    local = tempfile.mkdtemp(dir="/dev/shm")
    try:
        expected = run(local)
    finally:
        shutil.rmtree(local)
    os.mkdir(mounted.path("d"))
    assert run(mounted.path("d")) == expected
    assert "EPERM" in expected[0] and expected[1] == "0o100755"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_user_inside_a_directory_whose_parent_was_closed_to_them_works_there_as_on_tmpfs(mounted):
    """Linux checks search permission along the path a program gives, from its cwd or a
    descriptor: a user whose cwd is a directory it may write goes on working there after an
    ancestor is closed to it (chmod 700).  The server rebuilds paths from the root, and must not
    ask for search permission on the way again."""

    def run(base: str) -> str:
        inner = os.path.join(base, "a", "b")
        os.makedirs(inner)
        for d in (base, os.path.join(base, "a")):
            os.chmod(d, 0o755)
        os.chmod(inner, 0o777)
        with open(os.path.join(inner, "f"), "w") as f:
            f.write("hi")
        inner_fd = os.open(inner, os.O_RDONLY | os.O_DIRECTORY)  # the test's directories are root's
        go_r, go_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            out = []
            try:
                os.setgid(1000)
                os.setuid(1000)
                os.fchdir(inner_fd)
                dirfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
                os.write(out_w, b"r")
                os.read(go_r, 1)  # the parent has closed "a" to us now
                for what, op in [
                    ("create", lambda: os.close(os.open("new", os.O_CREAT | os.O_WRONLY, 0o644))),
                    ("read", lambda: open("f").read()),
                    ("list fd", lambda: sorted(os.listdir(dirfd))),
                    ("list cwd", lambda: sorted(os.listdir("."))),
                    ("mkdir", lambda: os.mkdir("sub")),
                    ("rename", lambda: os.rename("new", "new2")),
                    ("symlink", lambda: os.symlink("f", "sl")),
                    ("link", lambda: os.link("new2", "new3")),
                    ("unlink", lambda: os.unlink("new3")),
                    ("rmdir", lambda: os.rmdir("sub")),
                ]:
                    try:
                        out.append((what, op()))
                    except OSError as e:
                        out.append((what, errno.errorcode[e.errno]))
                out.append(("owner", os.stat("new2").st_uid))
            except BaseException as e:
                out.append(repr(e))
            finally:
                os.write(out_w, repr(out).encode())
                os._exit(0)
        os.close(out_w)
        os.close(inner_fd)
        assert os.read(out_r, 1) == b"r", os.read(out_r, 4096)
        os.chmod(os.path.join(base, "a"), 0o700)
        os.write(go_w, b"g")
        os.waitpid(pid, 0)
        with os.fdopen(out_r) as f:
            return f.read()

    local = tempfile.mkdtemp(dir="/dev/shm")
    try:
        os.chmod(local, 0o755)
        expected = run(local)
    finally:
        shutil.rmtree(local)
    assert "EACCES" not in expected and "('owner', 1000)" in expected, expected
    assert run(mounted.mnt) == expected
