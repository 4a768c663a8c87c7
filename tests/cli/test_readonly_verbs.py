"""The read-only verbs work on an image the caller can only read (SPEC 7): they open it
read-only.  Root reads and writes anything, so the child drops CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH and meets the file's 0444 like any user; a verb that opened the image
read-write would fail with "Permission denied", which the changing verbs must still do."""

import json
import os
import subprocess
import sys

import pytest

import daxkit

from .test_cli_args import _without_root_override


def cli_as_reader(*args):
    return subprocess.run(
        [sys.executable, "-m", "daxkit.cli.main", *args],
        capture_output=True,
        timeout=60,
        preexec_fn=_without_root_override,
    )


@pytest.fixture
def readable_image(tmp_path):
    path = str(tmp_path / "ro.img")
    with daxkit.create(path, "4M") as dev:
        daxkit.mkfs(dev)
        with daxkit.mount(dev) as fs, fs.open("/f", "w") as f:
            f.write(b"hello" * 1000)
        dev.inject_error(2000, 1)  # a known error outside the file
    os.chmod(path, 0o444)
    yield path
    os.chmod(path, 0o600)


READ_ONLY = [
    ["info"], ["list", "-M"], ["badblocks"], ["ls", "-l", "/"], ["get", "/f", "-"], ["bmap", "/f"],
    ["scan"], ["fsck"], ["df"], ["read", "--offset", "0", "--length", "512"], ["inject-error", "--status"],
]  # fmt: skip


@pytest.mark.parametrize("verb", READ_ONLY, ids=lambda v: v[0])
def test_read_only_verbs_on_a_read_only_image(readable_image, verb):
    before = open(readable_image, "rb").read()
    r = cli_as_reader(verb[0], readable_image, *verb[1:])
    assert r.returncode in (0, 4), r.stderr  # fsck: 4 = media errors exist (the injected one)
    if verb[0] == "get":
        assert r.stdout == b"hello" * 1000
    elif verb[0] == "badblocks":
        assert r.stdout == b"2000 1\n"
    elif verb[0] == "list":
        assert json.loads(r.stdout)["badblocks"] == [{"offset": 2000, "length": 1}]
    assert open(readable_image, "rb").read() == before


@pytest.mark.parametrize(
    "verb", [["put", "-", "/g"], ["badblocks", "--add", "5 1"], ["clear-errors"], ["rm", "/f"]]
)
def test_changing_verbs_still_need_write_access(readable_image, verb):
    r = cli_as_reader(verb[0], readable_image, *verb[1:])
    assert r.returncode == 1 and b"ermission denied" in r.stderr and b"Traceback" not in r.stderr


def test_read_only_api_refuses_changes(readable_image):
    with daxkit.open(readable_image, readonly=True) as dev:
        assert dev.readonly and dev.media_errors()["badblock_count"] == 1
        for call in (lambda: dev.pwrite(b"x", 0), lambda: dev.clear_errors(), lambda: dev.inject_error(1),
                     lambda: dev.scrub(), lambda: dev.badblocks.add("5 1")):  # fmt: skip
            with pytest.raises(daxkit.ReadOnly) as ei:
                call()
            assert ei.value.errno == 30  # EROFS
        with pytest.raises(daxkit.ReadOnly):
            daxkit.mount(dev)  # a read-write mount would make itself the holder
        with dev.map(0, 4096) as m:
            before = m.read(0, 64)
            for call in (lambda: m.write(0, b"x"), lambda: m.recover(0, bytes(4096))):
                with pytest.raises(daxkit.ReadOnly):
                    call()
            assert m.read(0, 64) == before
        with daxkit.mount(dev, readonly=True) as fs, fs.open("/f", "r") as f:
            assert f.read() == b"hello" * 1000
