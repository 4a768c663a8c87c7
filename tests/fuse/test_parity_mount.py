"""Issue 7 / SPEC 4.2 through the mount: ordinary readers of a parity-protected file with poison
in one page per group get the right bytes with the full count -- latent poison, poison made
known by another process while mounted, and poison known before the mount."""

import os
import random
import subprocess

import daxkit

from .conftest import Mount, cli, requires_fuse

pytestmark = requires_fuse
P = 4096


def _parity_image(tmp_path, pages: int) -> tuple[str, dict[str, bytes], list[int]]:
    image = str(tmp_path / "parity.img")
    files = {}
    with daxkit.create(image, "16M") as dev:
        daxkit.mkfs(dev, redundancy="parity", parity_group=32)
        with daxkit.mount(dev) as fs:
            for name in ("a", "b", "c"):
                files[name] = random.Random(name).randbytes(pages * P)
                with fs.open(f"/{name}", "w") as f:
                    f.write(files[name])
            sectors = {name: fs.bmap(f"/{name}")[0]["sector"] for name in files}
    return image, files, sectors


def _same(path: str, want: bytes, tmp_path) -> None:
    for reader in ('cat "{src}" > "{dst}"', 'dd if="{src}" of="{dst}" bs=4096 status=none',
                   'dd if="{src}" of="{dst}" bs=1M status=none'):  # fmt: skip
        dst = tmp_path / "out"
        r = subprocess.run(["bash", "-c", reader.format(src=path, dst=dst)], capture_output=True)
        assert r.returncode == 0, (reader, r.stderr)
        assert dst.read_bytes() == want, reader
        os.unlink(dst)
    with open(path, "rb") as f:
        assert f.read() == want


def test_cat_and_dd_of_a_protected_file_with_poison(tmp_path):
    image, files, sectors = _parity_image(tmp_path, 64)
    # known before the mount: page 3 of /a; latent: page 40 of /b (another group)
    r = cli("inject-error", image, "-B", str(sectors["a"] + 3 * 8), check=False)
    assert r.returncode == 0, r.stderr
    cli("inject-error", image, "-B", str(sectors["b"] + 40 * 8 + 1), "--no-notify")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(image, str(mnt))
    try:
        _same(m.path("a"), files["a"], tmp_path)
        _same(m.path("b"), files["b"], tmp_path)
        # made known by another process while mounted: the mount's holder repairs first
        cli("inject-error", image, "-B", str(sectors["c"] + 10 * 8))
        _same(m.path("c"), files["c"], tmp_path)
        assert os.getxattr(m.path("c"), "user.daxkit.bad_ranges") == b"[]"
    finally:
        m.umount()
    with daxkit.open(image) as dev:
        assert daxkit.fsck(dev)["clean"]
        assert dev.poisoned_ranges() == []
