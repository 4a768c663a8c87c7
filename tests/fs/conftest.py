import pytest

import daxkit

MiB = 1 << 20


@pytest.fixture
def fsdev(tmp_path):
    dev = daxkit.create(str(tmp_path / "fs.img"), 32 * MiB)
    daxkit.mkfs(dev)
    yield dev
    dev.close()


@pytest.fixture
def fs(fsdev):
    f = daxkit.mount(fsdev)
    yield f
    f.unmount()


def write_file(fs, path, data):
    with fs.open(path, "w") as f:
        f.write(data)
        f.fsync()


def two_extent_file(fs, path="/two", other="/other"):
    """A file whose two blocks are not contiguous on the device."""
    write_file(fs, path, b"A" * 4096)
    write_file(fs, other, b"B" * 4096)
    with fs.open(path, "r+") as f:
        f.pwrite(b"C" * 4096, 4096)
    ext = fs.bmap(path)
    assert len(ext) == 2, ext
    return ext
