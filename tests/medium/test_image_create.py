"""Creating the image file (SPEC 5 preamble; issue 6 items 7 and 8): no file outside the target
is ever followed or touched, the image is 0600, a failure leaves nothing behind, and paths are
taken as the os module takes them."""

import errno
import os
import pathlib
import stat

import pytest

import daxkit
from daxkit.errors import ImageError, ImageNotFound
from daxkit.medium import image as imagemod

MiB = 1 << 20


def _tree(root):
    """Every entry under root with its size and mode: what "nothing else touched" means."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size if not stat.S_ISDIR(st.st_mode) else 0, st.st_mtime_ns)
    return out


def test_planted_symlinks_are_not_followed(tmp_path):
    """A symlink at the old predictable name (and at every name we can guess) is left alone,
    and so is the file it points at."""
    target_dir = tmp_path / "images"
    outside = tmp_path / "outside"
    target_dir.mkdir()
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    img = target_dir / "dev.img"
    for name in (f"dev.img.tmp-{os.getpid()}", "dev.img.tmp", ".dev.img.tmp", "dev.img~"):
        (target_dir / name).symlink_to(victim)
    before = _tree(outside)
    daxkit.create(str(img), "1M").close()
    assert victim.read_bytes() == b"precious" and _tree(outside) == before
    assert all(os.path.islink(target_dir / n) for n in os.listdir(target_dir) if n != "dev.img")
    assert not os.path.islink(img) and daxkit.open(str(img)).size == MiB


def test_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    img = tmp_path / "dev.img"
    img.symlink_to(victim)
    daxkit.create(str(img), "1M", force=True).close()
    assert victim.read_bytes() == b"precious" and not img.is_symlink()


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_image_is_created_0600_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        daxkit.create(str(tmp_path / "a.img"), "1M").close()
        daxkit.create(str(tmp_path / "a.img"), "1M", force=True).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.img").st_mode) == 0o600


@pytest.mark.parametrize("force", [False, True])
def test_create_on_a_directory_fails_clearly_and_leaves_nothing(tmp_path, force):
    d = tmp_path / "dir"
    d.mkdir()
    (d / "keep").write_text("x")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ImageError) as ei:
        daxkit.create(str(d), "8M", force=force)
    assert ei.value.errno == errno.EISDIR and "directory" in str(ei.value) and str(d) in str(ei.value)
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(d) == ["keep"]


def test_create_in_a_missing_directory(tmp_path):
    with pytest.raises(ImageError) as ei:
        daxkit.create(str(tmp_path / "no" / "dev.img"), "1M")
    assert ei.value.errno == errno.ENOENT


def test_interrupted_create_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C (or any failure) in the middle of writing removes the temporary file."""
    for exc in (KeyboardInterrupt, OSError(errno.ENOSPC, "No space left on device")):

        def boom(fd, *a, exc=exc):
            raise exc

        monkeypatch.setattr(imagemod.os, "fsync", boom)
        with pytest.raises(KeyboardInterrupt if exc is KeyboardInterrupt else ImageError):
            daxkit.create(str(tmp_path / "dev.img"), "1M")
        assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    daxkit.create(str(tmp_path / "dev.img"), "1M").close()
    before = open(tmp_path / "dev.img", "rb").read()

    def boom(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(imagemod.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        daxkit.create(str(tmp_path / "dev.img"), "2M", force=True)
    assert os.listdir(tmp_path) == ["dev.img"] and open(tmp_path / "dev.img", "rb").read() == before


@pytest.mark.parametrize("kind", [str, bytes, pathlib.Path])
def test_paths_as_str_bytes_and_pathlike(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    path = kind("x.img") if kind is not bytes else b"x.img"
    with daxkit.create(path, "1M") as d:
        d.pwrite(b"hello", 0)
        assert d.path == "x.img"
    assert os.listdir(tmp_path) == ["x.img"]
    with daxkit.open(path) as d:
        assert d.pread(5, 0) == b"hello"


def test_non_utf8_bytes_path(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/\xff.img"
    daxkit.create(raw, "1M").close()
    assert os.listdir(os.fsencode(str(tmp_path))) == [b"\xff.img"]
    daxkit.open(raw).close()


def test_path_of_the_wrong_type_is_a_type_error(tmp_path):
    with pytest.raises(TypeError):
        daxkit.open(42)
    with pytest.raises(TypeError):
        daxkit.create(None, "1M")


def test_missing_image_is_a_file_not_found_error(tmp_path):
    missing = str(tmp_path / "nope.img")
    with pytest.raises(FileNotFoundError) as ei:
        daxkit.open(missing)
    e = ei.value
    assert isinstance(e, daxkit.ImageError) and isinstance(e, daxkit.DaxError)
    assert isinstance(e, daxkit.ImageNotFound) and daxkit.ImageNotFound is ImageNotFound
    assert e.errno == errno.ENOENT and missing in str(e) and e.path == missing
    try:
        daxkit.open(missing)
    except daxkit.ImageError as caught:  # the daxkit way to catch it works as well
        assert caught.errno == errno.ENOENT
    assert "ImageNotFound" in daxkit.__all__
