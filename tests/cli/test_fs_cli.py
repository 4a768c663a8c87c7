"""The filesystem verbs of the command line (SPEC 5)."""

import json

import pytest

from ..conftest import daxkit_cli


def ok(*args, input=None):
    r = daxkit_cli(*args, input=input)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


@pytest.fixture
def image(tmp_path):
    p = str(tmp_path / "fs.img")
    ok("create", p, "--size", "32M")
    ok("mkfs", p)
    return p


def test_ls_shows_symlinks_and_special_files(image):
    import daxkit

    with daxkit.open(image) as dev, daxkit.mount(dev) as fs:
        fs.mkdir("/d")
        fs.symlink("../elsewhere", "/d/l")
        fs.mknod("/d/p", 0o10644)
    rows = json.loads(ok("ls", image, "/d", "-l"))
    assert rows == [{"name": "l", "type": "symlink", "size": 12, "target": "../elsewhere"},
                    {"name": "p", "type": "fifo", "size": 0}]  # fmt: skip
    with daxkit.open(image) as dev, daxkit.mount(dev) as fs:
        fs.mkdir("/keep")
        fs.mknod("/keep/f")
        fs.symlink("/keep", "/d/to_keep")
    ok("rm", image, "-r", "/d")  # removes the links, never what they point to
    assert ok("ls", image, "/keep").split() == [b"f"]


def test_put_get_ls_rm_round_trip(image, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(bytes(range(256)) * 100)
    ok("mkdir", image, "/d")
    assert json.loads(ok("put", image, str(src), "/d/file"))["written"] == 25600
    ok("put", image, "-", "/d/stdin", input=b"from stdin")
    assert ok("ls", image, "/d").decode().split() == ["file", "stdin"]
    assert json.loads(ok("ls", image, "/", "-l")) == [{"name": "d", "type": "dir", "size": 0}]
    out = tmp_path / "out.bin"
    ok("get", image, "/d/file", str(out))
    assert out.read_bytes() == src.read_bytes()
    assert ok("get", image, "/d/stdin", "-") == b"from stdin"
    (ext,) = json.loads(ok("bmap", image, "/d/file"))
    assert ext["offset"] == 0 and ext["length"] == 7 * 4096 and ext["sector"] > 0
    ok("rm", image, "/d/stdin")
    r = daxkit_cli("rm", image, "/d")
    assert r.returncode != 0 and b"not empty" in r.stderr
    ok("rm", image, "-r", "/d")
    assert ok("ls", image) == b""
    assert json.loads(ok("fsck", image))["clean"] is True


def test_scan_names_the_file_and_range(image, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"\x01" * 4 * 4096)
    ok("put", image, str(src), "/victim")
    (ext,) = json.loads(ok("bmap", image, "/victim"))
    ok("inject-error", image, "-B", str(ext["sector"] + 8 * 2 + 1), "-n", "2")
    hits = json.loads(ok("scan", image))  # two blocks, each poisoned over its first 256 bytes
    assert [(h["owner"], h["path"], h["file_offset"], h["file_length"]) for h in hits] == [
        ("file", "/victim", 2 * 4096 + 512, 256),
        ("file", "/victim", 2 * 4096 + 1024, 256),
    ]
    r = daxkit_cli("get", image, "/victim", "-")
    assert (
        r.returncode != 0 and r.stderr.decode().startswith("daxkit: error: ") and b"Traceback" not in r.stderr
    )


def test_df_prints_statfs(image, tmp_path):
    import daxkit

    src = tmp_path / "in.bin"
    src.write_bytes(b"\x01" * 3 * 4096)
    ok("put", image, str(src), "/f")
    shown = json.loads(ok("df", image))
    with daxkit.open(image) as dev, daxkit.mount(dev, readonly=True) as fs:
        assert shown == {**fs.statfs(), "redundancy": fs.redundancy}
    assert shown["f_bsize"] == 4096 and shown["f_blocks"] - shown["f_bfree"] >= 3


def test_fsck_exit_code_on_damage(image):
    import daxkit
    from daxkit.medium.image import DATA_OFFSET

    with open(image, "r+b") as f:  # damage the checkpoint the superblock names
        with daxkit.open(image) as dev:
            with daxkit.mount(dev, readonly=True) as fs:
                at = fs.geometry.ckpt_start(fs.sb.area) * 4096
        f.seek(DATA_OFFSET + at + 5)
        f.write(b"\xff\xff")
    r = daxkit_cli("fsck", image)
    assert r.returncode == 4
    report = json.loads(r.stdout)
    assert report["clean"] is False and "checksum" in report["problems"][0]


@pytest.mark.parametrize(
    "args,words",
    [
        (["ls", "{img}", "/missing"], ["no such file"]),
        (["get", "{img}", "/missing", "-"], ["no such file"]),
        (["rm", "{img}", "/missing"], ["no such file"]),
        (["put", "{img}", "/nonexistent/local", "/x"], ["/nonexistent/local"]),
        (["mkdir", "{img}", "/a/b/c"], ["no such file"]),
        (["bmap", "{img}", "/"], []),
        (["mkfs", "{img}"], ["already holds a daxfs"]),
        (["mount", "{img}", "/nonexistent-mountpoint"], ["mount point"]),
    ],
)
def test_bad_input(image, args, words):
    r = daxkit_cli(*[a.format(img=image) for a in args])
    if args[0] == "bmap":  # a directory has no extents: an empty list, not an error
        assert r.returncode == 0 and json.loads(r.stdout) == []
        return
    err = r.stderr.decode()
    assert r.returncode != 0 and err.startswith("daxkit: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err


def test_filesystem_verbs_on_an_unformatted_image(tmp_path):
    p = str(tmp_path / "raw.img")
    ok("create", p, "--size", "4M")
    for verb in ("ls", "scan"):
        r = daxkit_cli(verb, p)
        assert r.returncode != 0 and b"no valid daxfs superblock" in r.stderr
    r = daxkit_cli("fsck", p)
    assert r.returncode == 4 and b"no valid daxfs superblock" in r.stdout


def test_rm_r_root_empties_the_filesystem(image, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"x" * 5000)
    ok("mkdir", image, "/d")
    ok("put", image, str(src), "/d/f")
    ok("put", image, str(src), "/g")
    ok("rm", image, "-r", "/")
    assert ok("ls", image, "/").strip() == b""
