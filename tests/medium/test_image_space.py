"""The file system holding the image runs out of space (SPEC 2.1, 5): a commit that cannot
store its state whole changes nothing and says so, never publishes a state whose slot is cut
short (which bricked the image); ``create`` allocates the whole image up front, so a store into
the data area never dies with SIGBUS later, and refuses, leaving nothing, when the room is not
there.  Real small tmpfs mounts where the machine allows it (root), RLIMIT_FSIZE otherwise."""

import errno
import json
import os
import subprocess
import tempfile
from contextlib import contextmanager

import pytest

import daxkit
from daxkit.errors import ImageError
from daxkit.medium import image as imagemod
from daxkit.medium.image import Image

from ..conftest import daxkit_cli, run_py

MiB = 1 << 20
KiB = 1 << 10


@contextmanager
def small_tmpfs(size: str):
    """A tmpfs of ``size`` mounted on a fresh directory; skip where mounting is not allowed."""
    where = tempfile.mkdtemp(prefix="daxkit-tmpfs-")
    opts = f"size={size},mode=0700"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", where], capture_output=True)
    if r.returncode:
        os.rmdir(where)
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", where], capture_output=True).returncode:
            subprocess.run(["umount", "-l", where], capture_output=True)
        os.rmdir(where)


def fill(where: str, leave: int) -> str:
    """Take the free space of the file system at ``where`` down to ``leave`` bytes."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    path = os.path.join(where, "filler")
    with open(path, "wb") as f:
        if free > leave:
            os.posix_fallocate(f.fileno(), 0, free - leave)
    return path


def _punch(path: str, offset: int, length: int) -> None:
    """Give back the blocks of [offset, offset+length) (as an image made before create
    allocated everything has them: never written)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    fd = os.open(path, os.O_RDWR)
    try:
        if libc.fallocate(fd, 0x01 | 0x02, offset, length):  # FALLOC_FL_KEEP_SIZE | PUNCH_HOLE
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


# -- 1. a short write of the error state --------------------------------------------------------
def test_short_write_of_an_inline_slot_on_a_full_tmpfs_changes_nothing():
    """The review's repro: the new state's slot is cut short by ENOSPC.  The commit is refused
    with a clear error, the old state stands, every verb still works, and once there is room
    the same injection goes in."""
    with small_tmpfs("8M") as where:
        img = os.path.join(where, "i.img")
        _ok(daxkit_cli("create", img, "--size", "4M"))
        _ok(daxkit_cli("inject-error", img, "-B", "7", "-n", "1"))  # state 2 lives in slot 1
        # slot 0 (the next commit's) as an older, sparse image has it: never written
        _punch(img, imagemod.SLOT_OFFSET, imagemod.SLOT_SIZE)
        filler = fill(where, 8 * KiB)
        r = daxkit_cli("inject-error", img, "-B", "0", "-n", "8000")
        err = r.stderr.decode()
        assert r.returncode != 0 and err.startswith("daxkit: error:") and "Traceback" not in err, err
        assert "No space left" in err and "nothing changed" in err, err
        media = json.loads(_ok(daxkit_cli("list", img, "-M")))
        assert (media["badblock_count"], media["badblocks"]) == (1, [{"offset": 7, "length": 1}])
        info = json.loads(_ok(daxkit_cli("info", img)))
        assert info["scrub_count"] == 1 and info["injected_blocks"] == 1
        with daxkit.open(img) as d:
            assert d._img.generation == 2 and d.injected_errors() == [{"block": 7, "count": 1}]
        os.unlink(filler)
        _ok(daxkit_cli("inject-error", img, "-B", "0", "-n", "8000"))
        media = json.loads(_ok(daxkit_cli("list", img, "-M")))
        assert media["badblock_count"] == 8000


def test_the_review_repro_on_a_full_tmpfs_leaves_a_working_image():
    """create + mkfs on an 8 MiB tmpfs, the tmpfs filled to ~8 KiB, a large injection: it
    either goes in or is refused cleanly -- and every verb works afterwards."""
    with small_tmpfs("8M") as where:
        img = os.path.join(where, "i.img")
        _ok(daxkit_cli("create", img, "--size", "4M"))
        _ok(daxkit_cli("mkfs", img))
        fill(where, 8 * KiB)
        r = daxkit_cli("inject-error", img, "-B", "0", "-n", "8000")
        assert "Traceback" not in r.stderr.decode()
        media = json.loads(_ok(daxkit_cli("list", img, "-M")))
        assert media["badblock_count"] == (8000 if r.returncode == 0 else 0)
        _ok(daxkit_cli("info", img))
        _ok(daxkit_cli("inject-error", img, "--status"))


def test_every_short_count_is_written_on(img, monkeypatch):
    """pwrite may write less than asked at any time: the slot (header and payload) and the
    data area's medium writes go on until all is there."""
    daxkit.create(img, "4M").close()
    real = os.pwrite
    calls = []

    def short(fd, data, offset):
        calls.append(len(data))
        return real(fd, memoryview(data)[:1000], offset)

    monkeypatch.setattr(imagemod.os, "pwrite", short)
    im = Image(img)
    try:
        im.commit(lambda st: st.with_(poison=[(i * 1024, i * 1024 + 64) for i in range(3000)], scrub_count=5))
        im.medium_write(b"\x5a" * 4096, 4 * MiB - 4096)
    finally:
        im.close()
    monkeypatch.undo()
    assert max(calls) > 1000  # it was cut short, and went on
    with daxkit.open(img) as d:
        assert d.scrub_count == 5 and len(d.poisoned_ranges()) == 3000
        assert d.pread(4096, 4 * MiB - 4096) == b"\x5a" * 4096


@pytest.mark.parametrize("inline", [True, False])
def test_a_write_that_makes_no_progress_is_refused_before_publishing(img, monkeypatch, inline):
    if not inline:
        monkeypatch.setattr(imagemod, "INLINE_MAX", 4096)
    daxkit.create(img, "4M").close()
    with daxkit.open(img) as d:
        d.inject_error(3, 1)
        gen, size = d._img.generation, os.path.getsize(img)
    real = os.pwrite
    budget = [5000]  # then the file system takes no more bytes, silently

    def stalls(fd, data, offset):
        n = min(len(data), budget[0])
        budget[0] -= n
        return real(fd, memoryview(data)[:n], offset) if n else 0

    monkeypatch.setattr(imagemod.os, "pwrite", stalls)
    im = Image(img)
    try:
        with pytest.raises(ImageError) as ei:
            im.commit(lambda st: st.with_(poison=[(i * 1024, i * 1024 + 64) for i in range(3000)]))
        assert ei.value.errno == errno.ENOSPC and "nothing changed" in str(ei.value)
        assert im.generation == gen
    finally:
        im.close()
    monkeypatch.undo()
    assert os.path.getsize(img) == size  # a payload begun past the data area is given back
    with daxkit.open(img) as d:
        assert d._img.generation == gen and d.badblocks.text() == "3 1\n"
        d.inject_error(9, 1)
        assert d.badblocks.text() == "3 1\n9 1\n"


RLIMITED = """
import os, resource, signal, sys, daxkit
from daxkit.medium import image as imagemod
imagemod.INLINE_MAX = 4096
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
d = daxkit.open(sys.argv[1])
gen, size = d._img.generation, os.path.getsize(sys.argv[1])
limit = d._img.data_end + 6000  # the payload past the data area gets 6000 bytes, then EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    d.inject_error(0, 8000)
except daxkit.DaxError as e:
    print("refused", e.errno, "nothing changed" in str(e))
print(d._img.generation == gen, os.path.getsize(sys.argv[1]) == size, d.badblocks.text() == "5 1\\n")
d.inject_error(6, 1)
print(d.badblocks.text() == "5 2\\n")
"""


def test_rlimit_fsize_cuts_the_payload_short_and_nothing_changes(img):
    """RLIMIT_FSIZE gives a genuine short write past the data area (then EFBIG)."""
    with daxkit.create(img, "4M") as d:
        d.inject_error(5, 1)
    r = run_py(RLIMITED, img)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["refused", str(errno.EFBIG), "True", "True", "True", "True", "True"]


# -- 2. create allocates the whole image --------------------------------------------------------
def test_create_on_a_too_small_tmpfs_fails_naming_the_size_and_leaves_nothing():
    with small_tmpfs("1M") as where:
        img = os.path.join(where, "i.img")
        with pytest.raises(ImageError) as ei:
            daxkit.create(img, "4M")
        assert ei.value.errno == errno.ENOSPC and str(4 * MiB) in str(ei.value)
        assert os.listdir(where) == []
        r = daxkit_cli("create", img, "--size", "4M")
        err = r.stderr.decode()
        assert r.returncode != 0 and err.startswith("daxkit: error:") and "Traceback" not in err, err
        assert "No space left" in err and str(4 * MiB) in err
        assert os.listdir(where) == []


def test_created_image_is_allocated_so_stores_never_sigbus_on_a_full_filesystem():
    """Before: a sparse image, then "Bus error" on the first store the full file system could
    not back.  Now every page of the image is allocated at create."""
    with small_tmpfs("8M") as where:
        img = os.path.join(where, "i.img")
        daxkit.create(img, "4M").close()
        st = os.stat(img)
        assert st.st_blocks * 512 >= st.st_size
        fill(where, 0)
        r = run_py(
            """
            import sys, daxkit
            with daxkit.open(sys.argv[1]) as d:
                for off in range(0, d.size, 4096):
                    d.pwrite(b"\\xa5" * 4096, off)
                v = d.map(0, d.size)
                v.buf[:] = b"\\x5a" * d.size
                v.close()
                assert d.pread(4096, d.size - 4096) == b"\\x5a" * 4096
                d.inject_error(0, 100)
                d.clear_errors()
            print("ok")
            """,
            img,
        )
        assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr)


def test_create_without_fallocate_writes_zeroes(tmp_path, monkeypatch):
    """A file system without fallocate (EOPNOTSUPP): the image is allocated by writing zeroes."""

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(imagemod.os, "posix_fallocate", unsupported)
    img = str(tmp_path / "i.img")
    with daxkit.create(img, "2M") as d:
        d.inject_error(1, 1)
        assert d.pread(512, 4096) == bytes(512)
    st = os.stat(img)
    assert st.st_blocks * 512 >= st.st_size
    with daxkit.open(img) as d:
        assert d.badblocks.text() == "1 1\n"


def test_create_without_fallocate_on_a_too_small_tmpfs_leaves_nothing(monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(imagemod.os, "posix_fallocate", unsupported)
    with small_tmpfs("1M") as where:
        with pytest.raises(ImageError) as ei:
            daxkit.create(os.path.join(where, "i.img"), "4M")
        assert ei.value.errno == errno.ENOSPC and str(4 * MiB) in str(ei.value)
        assert os.listdir(where) == []
