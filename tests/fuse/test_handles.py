"""Handles the kernel gives back are let go (RELEASE, RELEASEDIR), driven through ``dispatch``."""

import os

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
