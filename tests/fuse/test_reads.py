"""SPEC 6: a read through the mount returns fewer bytes than asked only at end of file.

The kernel takes a short FUSE read for end of file, so a read handler that passed on the short
count of a latent-poison read would hand a reader a truncated file with success.  Each reader
here meets poison that is still latent (its own untouched files, injected without notification),
and must fail with EIO, never finish with a short copy."""

import errno
import os
import subprocess
import sys

import pytest

import daxkit
from daxkit.fuse import proto
from daxkit.fuse.ops import Operations

from .conftest import Mount, make_image, requires_fuse
from .wire import call, rw

pytestmark = requires_fuse
P = 4096
SIZE = 16 * P  # 64 KiB
BAD_PAGE = 5  # the 6th page


PY_COPY = "import sys; open(sys.argv[2], 'wb').write(open(sys.argv[1], 'rb').read())"
READERS = {  # name: argv with {src} and {dst}, run by a shell
    "cat": 'cat "{src}" > "{dst}"',
    "dd bs=4096": 'dd if="{src}" of="{dst}" bs=4096',
    "dd bs=1M": 'dd if="{src}" of="{dst}" bs=1M',
    "python read()": f'"{sys.executable}" -c "{PY_COPY}" "{{src}}" "{{dst}}"',
}
TRIES = 3  # the kernel takes the short read for EOF only in some interleavings: give it several


def _poisoned_files(image: str, names: list[str]) -> dict[str, bytes]:
    """64 KiB files, each with latent poison (not yet known) in its 6th page."""
    files, sectors = {}, []
    with daxkit.open(image) as dev:
        with daxkit.mount(dev) as fs:
            for name in names:
                files[name] = os.urandom(SIZE)
                with fs.open("/" + name, "w") as f:
                    f.write(files[name])
                off = BAD_PAGE * P
                ext = next(e for e in fs.bmap("/" + name) if e["offset"] <= off < e["offset"] + e["length"])
                sectors.append(ext["sector"] + (off - ext["offset"]) // 512)
        for sector in sectors:
            dev.inject_error(sector, 1, notify=False)
    return files


def test_latent_poison_mid_file_fails_every_reader_instead_of_a_short_file(tmp_path):
    image = make_image(tmp_path)
    names = [f"{i}-{k}" for i in range(len(READERS)) for k in range(TRIES)]
    files = _poisoned_files(image, names)
    (tmp_path / "mnt").mkdir()
    m = Mount(image, str(tmp_path / "mnt"))
    try:
        for i, (reader, command) in enumerate(READERS.items()):
            for k in range(TRIES):
                name = f"{i}-{k}"
                out = tmp_path / "copy"
                out.unlink(missing_ok=True)
                r = subprocess.run(
                    command.format(src=m.path(name), dst=out), shell=True, capture_output=True, timeout=60
                )
                got = out.read_bytes() if out.exists() else b""
                right = files[name].startswith(got)
                assert r.returncode != 0, f"{reader} exited 0 with {len(got)} of {SIZE} bytes, right: {right}"
                assert b"Input/output error" in r.stderr or b"Errno 5" in r.stderr, (reader, r.stderr)
                assert files[name].startswith(got), reader  # what came before the failure is right
        # the pages before the bad one still read, and so does a read that ends at EOF
        data = files["0-0"]
        with open(m.path("0-0"), "rb") as f:
            assert f.read(BAD_PAGE * P) == data[: BAD_PAGE * P]
            f.seek((BAD_PAGE + 1) * P)
            assert f.read() == data[(BAD_PAGE + 1) * P :]
        fd = os.open(m.path("0-0"), os.O_RDONLY)
        try:
            with pytest.raises(OSError) as ei:
                os.pread(fd, P, BAD_PAGE * P)
            assert ei.value.errno == errno.EIO
        finally:
            os.close(fd)
    finally:
        m.umount()


def test_read_handler_never_returns_a_short_count_before_eof(tmp_path):
    """The handler itself, without the kernel's timing: a full request or EIO."""
    image = make_image(tmp_path)
    files = _poisoned_files(image, ["f"])
    with daxkit.open(image) as dev, daxkit.mount(dev, readonly=True) as fs:
        ops = Operations(fs)
        err, out = call(ops, proto.LOOKUP, 1, b"f\0")
        node = proto.ENTRY_OUT.unpack_from(out)[0]
        err, out = call(ops, proto.OPEN, node, proto.OPEN_IN.pack(os.O_RDONLY, 0))
        assert err == 0
        fh = proto.OPEN_OUT.unpack(out)[0]
        assert call(ops, proto.READ, node, rw(fh, 0, BAD_PAGE * P)) == (0, files["f"][: BAD_PAGE * P])
        assert call(ops, proto.READ, node, rw(fh, 0, SIZE))[0] == errno.EIO
        assert call(ops, proto.READ, node, rw(fh, (BAD_PAGE + 1) * P, SIZE)) == (
            0,
            files["f"][(BAD_PAGE + 1) * P :],
        )
        assert call(ops, proto.RELEASE, node, proto.RELEASE_IN.pack(fh, 0, 0, 0)) == (0, b"")
