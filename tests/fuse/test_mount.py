"""The FUSE mount (SPEC 6), driven with ordinary tools: dd, cat, Python, mmap, fallocate, fio."""

import ctypes
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import daxkit

from .conftest import Mount, cli, make_image, requires_fuse

pytestmark = requires_fuse
P = 4096


def dd(*args):
    return subprocess.run(["dd", *args], capture_output=True, timeout=60)


def first_sector(m: Mount, name: str) -> int:
    return json.loads(cli("bmap", m.image, name).stdout)[0]["sector"]


def test_files_through_the_mount(mounted):
    with open(mounted.path("a.txt"), "w") as f:
        f.write("hello\n")
    os.mkdir(mounted.path("dir"))
    os.rename(mounted.path("a.txt"), mounted.path("dir/b.txt"))
    assert open(mounted.path("dir/b.txt")).read() == "hello\n"
    assert os.stat(mounted.path("dir/b.txt")).st_size == 6
    assert sorted(os.listdir(mounted.path("dir"))) == ["b.txt"]
    # other processes read the mounted image through the CLI, read-only
    assert cli("ls", mounted.image, "/dir").stdout.decode().split() == ["b.txt"]
    assert cli("get", mounted.image, "/dir/b.txt", "-").stdout == b"hello\n"
    # a second read-write user is refused in one line
    r = cli("put", mounted.image, "/etc/hostname", "/x", check=False)
    assert (
        r.returncode != 0
        and r.stderr.decode().startswith("daxkit: error: ")
        and b"already mounted" in r.stderr
    )
    os.unlink(mounted.path("dir/b.txt"))
    os.rmdir(mounted.path("dir"))
    assert os.listdir(mounted.mnt) == []


def test_pmem_errors_sh(mounted):
    """ndctl's test/pmem-errors.sh, step by step, through the mount."""
    f = mounted.path("file")
    assert dd("if=/dev/urandom", f"of={f}", "bs=4096", "count=4").returncode == 0
    assert os.stat(f).st_size == 16384
    sector = first_sector(mounted, "/file")
    cli("badblocks", mounted.image, "--add", f"{sector} 8")
    time.sleep(0.2)
    # a 4 KiB direct read of the file fails
    r = dd(f"if={f}", "of=/dev/null", "iflag=direct", "bs=4096", "count=1")
    assert r.returncode != 0 and b"Input/output error" in r.stderr
    # an mmap copy of the first page dies of SIGBUS, exactly once
    code = (
        "import mmap, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
        "m = mmap.mmap(fd, 4096, prot=mmap.PROT_READ); bytes(m[:4096]); print('copied')"
    )
    r = subprocess.run([sys.executable, "-c", code, f], capture_output=True, timeout=30)
    assert r.returncode == -signal.SIGBUS and b"copied" not in r.stdout
    # a page-aligned write clears it, and the read then succeeds
    r = dd("if=/dev/zero", f"of={f}", "bs=4096", "count=1", "oflag=direct", "conv=notrunc")
    assert r.returncode == 0, r.stderr
    assert cli("badblocks", mounted.image).stdout == b""
    assert dd(f"if={f}", "of=/dev/null", "iflag=direct", "bs=4096", "count=1").returncode == 0
    # a one-sector injection inside the range makes the read fail again
    cli("inject-error", mounted.image, "-B", str(sector + 1), "-n", "1")
    time.sleep(0.2)
    r = dd(f"if={f}", "of=/dev/null", "iflag=direct", "bs=4096", "count=1")
    assert r.returncode != 0 and b"Input/output error" in r.stderr


def test_cat_and_python_reads_fail_with_eio_and_xattr_lists_ranges(mounted):
    f = mounted.path("data")
    with open(f, "wb") as out:
        out.write(os.urandom(3 * P))
    assert open(f, "rb").read()  # cached by the kernel now
    assert json.loads(os.getxattr(f, "user.daxkit.bad_ranges")) == []
    assert "user.daxkit.bad_ranges" in os.listxattr(f)
    sector = first_sector(mounted, "/data")
    # latent poison made known by a scrub in another process: the cached pages are invalidated
    cli("inject-error", mounted.image, "-B", str(sector + 8 + 2), "--no-notify")
    assert open(f, "rb").read(10)  # still latent: nothing known, reads come from the cache
    cli("start-scrub", mounted.image)
    time.sleep(0.3)
    with pytest.raises(OSError) as ei:
        open(f, "rb").read()
    assert ei.value.errno == errno.EIO
    r = subprocess.run(["cat", f], capture_output=True)
    assert r.returncode != 0 and b"Input/output error" in r.stderr
    assert json.loads(os.getxattr(f, "user.daxkit.bad_ranges")) == [{"offset": P + 1024, "length": 256}]
    with pytest.raises(OSError) as ei:
        os.getxattr(f, "user.other")
    assert ei.value.errno == errno.ENODATA


def test_punch_hole(mounted):
    f = mounted.path("holey")
    with open(f, "wb") as out:
        out.write(b"\x5a" * 4 * P)
    before = os.stat(f).st_blocks
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f, os.O_RDWR)
    try:
        rc = libc.fallocate(fd, 0x01 | 0x02, ctypes.c_long(P), ctypes.c_long(2 * P))  # KEEP_SIZE | PUNCH_HOLE
        assert rc == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    st = os.stat(f)
    assert st.st_size == 4 * P and st.st_blocks == before - 2 * 8
    assert open(f, "rb").read() == b"\x5a" * P + bytes(2 * P) + b"\x5a" * P
    if shutil.which("fallocate"):  # util-linux, as a user would
        assert subprocess.run(["fallocate", "-p", "-o", "0", "-l", str(P), f]).returncode == 0
        assert open(f, "rb").read(P) == bytes(P)


def test_killing_the_mount_process_leaves_a_consistent_image(tmp_path):
    image = make_image(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(image, str(mnt))
    churn = (
        "import os, sys\n"
        "for i in range(100000):\n"
        "    p = os.path.join(sys.argv[1], f'f{i % 40}')\n"
        "    open(p, 'wb').write(os.urandom(5000))\n"
        "    os.rename(p, p + '.x') if i % 3 else None\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", churn, str(mnt)], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    os.kill(m.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    cli("umount", str(mnt))
    assert not os.path.ismount(mnt)
    with daxkit.open(image) as dev:
        report = daxkit.fsck(dev)
        assert report["clean"], report
        with daxkit.mount(dev) as fs:  # read-write again: the holder claim died with the process
            assert len(fs.listdir("/")) > 0


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_fio_random_write_with_crc32c_verify(tmp_path):
    image = make_image(tmp_path, "160M")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(image, str(mnt))
    try:
        work = tmp_path / "fio-cwd"  # fio writes its verify state into the current directory
        work.mkdir()
        r = subprocess.run(
            [
                "fio", "--name=verify", f"--filename={mnt}/fio.dat", "--size=64M", "--rw=randwrite",
                "--bs=4k", "--ioengine=psync", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                "--verify_state_save=0", "--output-format=json",
            ],
            capture_output=True,
            timeout=600,
            cwd=work,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        assert os.listdir(work) == []  # and nothing anywhere else (the repository once got one)
        job = json.loads(r.stdout)["jobs"][0]
        assert job["error"] == 0 and job["write"]["io_bytes"] == 64 << 20
        assert job["read"]["io_bytes"] == 64 << 20  # the verify pass read everything back
    finally:
        m.umount()
    with daxkit.open(image) as dev:
        assert daxkit.fsck(dev)["clean"]
