"""The POSIX tree through the API (SPEC 3): symbolic and hard links, special files, owners,
modes and their enforcement, times, name lengths; and the reports that name files."""

import errno
import os
import stat

import pytest

import daxkit

from .conftest import write_file

NOBODY, NOGROUP = 65534, 65534


def err(fn, *args, **kwargs) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args, **kwargs)
    return ei.value.errno


# -- symbolic links ---------------------------------------------------------------------------------
def test_symlink_readlink_lstat_and_following(fs):
    fs.mkdir("/d")
    write_file(fs, "/d/f", b"hello")
    fs.symlink("d/f", "/rel")
    fs.symlink("/d", "/abs")
    fs.symlink("../d/f", "/d/up")
    assert fs.readlink("/rel") == "d/f"
    st = fs.lstat("/rel")
    assert stat.S_ISLNK(st.st_mode) and st.st_size == 3 and stat.S_IMODE(st.st_mode) == 0o777
    assert fs.stat("/rel").st_size == 5 and stat.S_ISREG(fs.stat("/rel").st_mode)
    with fs.open("/abs/f") as f:
        assert f.read() == b"hello"
    with fs.open("/abs/up") as f:  # ".." of a followed link is the physical parent
        assert f.read() == b"hello"
    assert fs.listdir("/abs/") == ["f", "up"]
    assert err(fs.readlink, "/d/f") == errno.EINVAL
    assert err(fs.open, "/rel", follow_symlinks=False) == errno.ELOOP  # O_NOFOLLOW
    assert err(fs.open, "/rel", os.O_RDONLY | os.O_NOFOLLOW) == errno.ELOOP
    assert err(fs.symlink, "x", "/rel") == errno.EEXIST
    assert err(fs.symlink, "", "/empty") == errno.ENOENT
    fs.unlink("/rel")  # removes the link, not its target
    assert fs.exists("/d/f") and not fs.exists("/rel")


def test_dangling_symlink_loops_and_path_max(fs):
    fs.symlink("missing", "/dangling")
    assert fs.lstat("/dangling") and not fs.exists("/dangling")
    with fs.open("/dangling", "w") as f:  # open(O_CREAT) creates through a dangling link
        f.write(b"x")
    assert fs.stat("/missing").st_size == 1
    assert err(fs.open, "/dangling", "x") == errno.EEXIST  # O_EXCL never follows
    fs.symlink("loop2", "/loop1")
    fs.symlink("loop1", "/loop2")
    assert err(fs.stat, "/loop1") == errno.ELOOP
    assert fs.lstat("/loop1")
    long_target = "a/" * 2047 + "b"  # 4095 bytes: the most PATH_MAX allows
    fs.symlink(long_target, "/long")
    assert fs.readlink("/long") == long_target and fs.lstat("/long").st_size == 4095
    assert err(fs.symlink, long_target + "c", "/toolong") == errno.ENAMETOOLONG


def test_names_over_255_bytes_are_enametoolong_everywhere(fs):
    long = "n" * 256
    write_file(fs, "/f", b"")
    p = "/" + long
    assert not fs.exists(p)
    for call in (
        lambda: fs.stat(p), lambda: fs.lstat(p), lambda: fs.stat(p + "/x"), lambda: fs.mkdir(p),
        lambda: fs.open(p, "w"), lambda: fs.unlink(p), lambda: fs.symlink("f", p), lambda: fs.link("/f", p),
        lambda: fs.readlink(p), lambda: fs.rename("/f", p), lambda: fs.chmod(p, 0o600),
        lambda: fs.chown(p, 0, 0), lambda: fs.mknod(p, stat.S_IFIFO | 0o600), lambda: fs.listdir(p),
    ):  # fmt: skip
        assert err(call) == errno.ENAMETOOLONG
    fs.mkdir("/" + "n" * 255)  # 255 is allowed


# -- hard links -------------------------------------------------------------------------------------
def test_hard_links_count_names_and_the_inode_outlives_them_while_open(fs, fsdev):
    write_file(fs, "/a", b"shared")
    fs.mkdir("/d")
    fs.link("/a", "/d/b")
    assert fs.stat("/a").st_nlink == 2 and fs.stat("/a").st_ino == fs.stat("/d/b").st_ino
    assert err(fs.link, "/d", "/d2") == errno.EPERM
    assert err(fs.link, "/a", "/d/b") == errno.EEXIST
    fs.unlink("/a")
    assert fs.stat("/d/b").st_nlink == 1
    f = fs.open("/d/b", "r+")
    fs.unlink("/d/b")  # last name gone, handle still open
    assert f.stat().st_nlink == 0
    f.pwrite(b"still here", 0)
    assert f.pread(10, 0) == b"still here"
    free_open = fs.statfs()["f_bfree"]
    assert daxkit.fsck(fsdev)["clean"]  # an open orphan is no damage
    f.close()
    assert fs.statfs()["f_bfree"] == free_open + 1  # freed at the last close
    assert fs.listdir("/d") == []


def test_an_orphan_left_by_a_crash_is_freed_at_the_next_mount(fsdev):
    fs = daxkit.mount(fsdev)
    write_file(fs, "/a", b"x" * 8192)
    free_before = fs.statfs()["f_bfree"]
    f = fs.open("/a", "r")
    fs.unlink("/a")
    fs.unmount()  # as if the process died with the file open
    assert f.ino in daxkit.mount(fsdev, readonly=True).meta.inodes
    with daxkit.mount(fsdev) as fs:
        assert fs.statfs()["f_bfree"] == free_before + 2
        assert f.ino not in fs.meta.inodes
    assert daxkit.fsck(fsdev)["clean"]


def test_rename_over_a_hard_link_and_between_names_of_one_inode(fs):
    write_file(fs, "/a", b"a")
    fs.link("/a", "/b")
    fs.rename("/a", "/b")  # two names of one inode: nothing happens
    assert fs.listdir("/") == ["a", "b"] and fs.stat("/a").st_nlink == 2
    write_file(fs, "/c", b"c")
    fs.rename("/c", "/a")  # replaces one name of the linked inode
    assert fs.stat("/b").st_nlink == 1
    with fs.open("/b") as f:
        assert f.read() == b"a"


def test_scan_repair_and_fsck_name_every_link_of_a_bad_file(fs, fsdev):
    write_file(fs, "/a", b"x" * 4096)
    fs.mkdir("/d")
    fs.link("/a", "/d/b")
    dev_off = fs.bmap("/a")[0]["sector"] * 512
    fsdev.inject_poison(dev_off, 64)
    with fs.open("/a") as f:
        with pytest.raises(daxkit.MediaError):
            f.read()
    (owner,) = [o for o in fs.scan() if o["owner"] == "file"]
    assert owner["paths"] == ["/a", "/d/b"]
    assert [d["paths"] for d in fs.repair().lost] == [["/a", "/d/b"]]
    problems = daxkit.fsck(fsdev)["problems"]
    assert any("/a, /d/b" in p for p in problems), problems


def test_fsck_finds_a_wrong_link_count_and_a_dangling_name(fs, fsdev):
    write_file(fs, "/a", b"")
    fs.link("/a", "/b")
    ino = fs.stat("/a").st_ino
    node = fs.meta.inodes[ino].copy()
    node.nlink = 1
    fs._commit([["i", ino, node.to_json()]])
    assert any("link count 1, expected 2" in p for p in daxkit.fsck(fsdev)["problems"])
    fs._commit([["d", 1, "ghost", 999]])
    assert any("missing inode 999" in p for p in daxkit.fsck(fsdev)["problems"])


# -- special files ----------------------------------------------------------------------------------
def test_mknod_makes_fifos_sockets_and_device_nodes(fs):
    fs.mknod("/fifo", stat.S_IFIFO | 0o640)
    fs.mknod("/sock", stat.S_IFSOCK | 0o600)
    fs.mknod("/chr", stat.S_IFCHR | 0o600, rdev=0x0103)
    fs.mknod("/blk", stat.S_IFBLK | 0o600, rdev=0x0801)
    fs.mknod("/reg", 0o600)
    assert stat.S_ISFIFO(fs.stat("/fifo").st_mode) and stat.S_IMODE(fs.stat("/fifo").st_mode) == 0o640
    assert stat.S_ISSOCK(fs.stat("/sock").st_mode) and stat.S_ISREG(fs.stat("/reg").st_mode)
    assert stat.S_ISCHR(fs.stat("/chr").st_mode) and fs.stat("/chr").st_rdev == 0x0103
    assert stat.S_ISBLK(fs.stat("/blk").st_mode) and fs.stat("/blk").st_rdev == 0x0801
    assert err(fs.mknod, "/dir", stat.S_IFDIR | 0o700) == errno.EPERM
    assert err(fs.mknod, "/fifo", stat.S_IFIFO | 0o600) == errno.EEXIST
    fs.chmod("/", 0o777)
    with fs.as_user(NOBODY, NOGROUP):
        fs.mknod("/theirs", stat.S_IFIFO | 0o600)
        assert err(fs.mknod, "/c2", stat.S_IFCHR | 0o600, 1) == errno.EPERM  # root only
    assert fs.stat("/theirs").st_uid == NOBODY


def test_special_files_survive_a_remount(fs, fsdev):
    fs.mknod("/chr", stat.S_IFCHR | 0o620, rdev=0x0501)
    fs.symlink("chr", "/l")
    fs.chown("/chr", 5, 6)
    fs.unmount()
    with daxkit.mount(fsdev) as again:
        st = again.stat("/l")
        assert (stat.S_ISCHR(st.st_mode), st.st_rdev, st.st_uid, st.st_gid) == (True, 0x0501, 5, 6)
    assert daxkit.fsck(fsdev)["clean"]


# -- owners and permissions -----------------------------------------------------------------------------
def test_new_files_belong_to_their_creator_and_the_setgid_directory_group(fs):
    fs.mkdir("/pub", 0o777)
    with fs.as_user(1000, 100):
        write_file(fs, "/pub/mine", b"")
    st = fs.stat("/pub/mine")
    assert (st.st_uid, st.st_gid) == (1000, 100)
    fs.chown("/pub", 0, 50)
    fs.chmod("/pub", 0o2777)
    with fs.as_user(1000, 100):
        fs.mkdir("/pub/sub")
        write_file(fs, "/pub/f", b"")
    assert fs.stat("/pub/f").st_gid == 50
    assert fs.stat("/pub/sub").st_gid == 50 and fs.stat("/pub/sub").st_mode & stat.S_ISGID


def test_only_root_gives_a_file_away_and_chown_clears_setuid(fs):
    fs.mkdir("/pub", 0o777)
    with fs.as_user(1000, 100, [100, 200]):
        write_file(fs, "/pub/f", b"")
        fs.chmod("/pub/f", 0o6755)
        assert err(fs.chown, "/pub/f", 1001, -1) == errno.EPERM
        assert err(fs.chown, "/pub/f", -1, 300) == errno.EPERM  # not one of the owner's groups
        fs.chown("/pub/f", -1, 200)
    st = fs.stat("/pub/f")
    assert st.st_gid == 200 and stat.S_IMODE(st.st_mode) == 0o755  # set-ID bits gone
    fs.chown("/pub/f", 7, 8)
    assert (fs.stat("/pub/f").st_uid, fs.stat("/pub/f").st_gid) == (7, 8)
    with fs.as_user(1000, 100):
        assert err(fs.chmod, "/pub/f", 0o777) == errno.EPERM


def test_modes_are_enforced_for_other_users(fs):
    fs.mkdir("/priv", 0o700)
    write_file(fs, "/priv/f", b"secret")
    write_file(fs, "/ro", b"r")
    fs.chmod("/ro", 0o644)
    with fs.as_user(1000, 100):
        assert err(fs.stat, "/priv/f") == errno.EACCES  # no search permission on /priv
        assert err(fs.listdir, "/priv") == errno.EACCES
        assert err(fs.open, "/ro", "r+") == errno.EACCES
        with fs.open("/ro") as f:
            assert f.read() == b"r"
        assert err(fs.open, "/new", "w") == errno.EACCES  # / is 0755 root's
        assert err(fs.open, "/ro", os.O_WRONLY) == errno.EACCES
        assert err(fs.unlink, "/ro") == errno.EACCES
    with fs.open("/priv/f") as f:  # root reads anything
        assert f.read() == b"secret"
    fs.chmod("/ro", 0o622)
    with fs.as_user(1000, 100):  # write-only access: os.open's flags, no read permission needed
        with fs.open("/ro", os.O_WRONLY | os.O_TRUNC) as f:
            f.write(b"w")
    assert fs.stat("/ro").st_size == 1


def test_the_sticky_bit_keeps_entries_to_their_owners(fs):
    fs.mkdir("/tmp", 0o1777)
    with fs.as_user(1000, 100):
        write_file(fs, "/tmp/a", b"")
    with fs.as_user(1001, 100):
        assert err(fs.unlink, "/tmp/a") == errno.EPERM
        assert err(fs.rename, "/tmp/a", "/tmp/b") == errno.EPERM
        write_file(fs, "/tmp/mine", b"")
        fs.unlink("/tmp/mine")
    with fs.as_user(1000, 100):
        fs.unlink("/tmp/a")


def test_a_write_by_another_user_clears_setuid(fs):
    fs.mkdir("/pub", 0o777)
    write_file(fs, "/pub/f", b"0123")
    fs.chmod("/pub/f", 0o6777)
    with fs.open("/pub/f", "r+") as f:  # root keeps them (CAP_FSETID)
        f.pwrite(b"a", 0)
    assert stat.S_IMODE(fs.stat("/pub/f").st_mode) == 0o6777
    with fs.as_user(1000, 100):
        with fs.open("/pub/f", "r+") as f:
            f.pwrite(b"b", 0)
    assert stat.S_IMODE(fs.stat("/pub/f").st_mode) == 0o777


def test_fallocate_by_another_user_clears_setuid_as_a_write_does(fs):
    """vfs_fallocate's file_modified: ext4 and tmpfs drop the set-ID bits as a write does."""
    fs.mkdir("/pub", 0o777)
    write_file(fs, "/pub/f", b"0123")
    fs.chmod("/pub/f", 0o6777)
    with fs.open("/pub/f", "r+") as f:  # root keeps them (CAP_FSETID)
        f.fallocate(0, 0, 8192)
    assert stat.S_IMODE(fs.stat("/pub/f").st_mode) == 0o6777
    with fs.as_user(1000, 100):
        with fs.open("/pub/f", "r+") as f:
            f.fallocate(0, 0, 16384)
    assert stat.S_IMODE(fs.stat("/pub/f").st_mode) == 0o777


# -- times --------------------------------------------------------------------------------------------
def test_times_are_apart_in_nanoseconds_and_ctime_moves_on_every_change(fs):
    write_file(fs, "/f", b"")
    fs.utime("/f", (1_000_000_001, 2_000_000_002))
    st = fs.stat("/f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_001, 2_000_000_002)
    last = st.st_ctime_ns
    for change in (
        lambda: fs.chmod("/f", 0o600), lambda: fs.chown("/f", 3, 4), lambda: fs.link("/f", "/g"),
        lambda: fs.unlink("/g"), lambda: fs.rename("/f", "/h"), lambda: fs.utime("/h", (5, 6)),
    ):  # fmt: skip
        change()
        now = fs.stat("/h" if fs.exists("/h") else "/f").st_ctime_ns
        assert now > last
        last = now
    st = fs.stat("/h")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5, 6)
    fs.utime("/h", (daxkit.UTIME_OMIT, daxkit.UTIME_NOW))
    st = fs.stat("/h")
    assert st.st_atime_ns == 5 and st.st_mtime_ns > 6


def test_atime_moves_as_on_a_relatime_mount(fs):
    write_file(fs, "/f", b"data")
    fs.utime("/f", (1_000, 2_000))  # atime before mtime: the next read moves it
    with fs.open("/f") as f:
        f.read()
    first = fs.stat("/f").st_atime_ns
    assert first > 2_000 and fs.stat("/f").st_mtime_ns == 2_000
    with fs.open("/f") as f:  # atime after every change and not a day old: kept
        f.read()
    assert fs.stat("/f").st_atime_ns == first


def test_utime_permissions(fs):
    fs.mkdir("/pub", 0o777)
    write_file(fs, "/pub/f", b"")
    fs.chmod("/pub/f", 0o666)
    with fs.as_user(1000, 100):
        fs.utime("/pub/f")  # now: write permission is enough
        assert err(fs.utime, "/pub/f", (1, 2)) == errno.EPERM  # a chosen time: the owner only
    fs.chmod("/pub/f", 0o644)
    with fs.as_user(1000, 100):
        assert err(fs.utime, "/pub/f") == errno.EACCES
