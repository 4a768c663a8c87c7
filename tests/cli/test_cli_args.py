"""Arguments and error messages (SPEC 5, issue 6 item 8): every numeric option refuses -1, junk
and huge values with an error naming the option and the value; block numbers and counts are
integers, not sizes; options may sit between positionals; every failure on an image or a path is
one `daxkit: error:` line."""

import ctypes
import json
import os
import subprocess
import sys

import pytest

import daxkit

from ..conftest import daxkit_cli, file_digest
from .util import check_error, fs_image

HUGE = str(10**30)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return fs_image(tmp_path_factory.mktemp("args") / "fs.img", size="4M", files={"/d/": b"", "/d/f": b"x"})


@pytest.mark.parametrize(
    "args,words",
    [
        (["inject-error", "{img}", "-B", "1", "-n", "0"], ["-n/--count", "'0'", ">= 1"]),
        (["inject-error", "{img}", "-B", "1", "-n", "-1"], ["-n/--count", "'-1'"]),
        (["inject-error", "{img}", "-B", "1", "-n", "two"], ["-n/--count", "'two'"]),
        (["inject-error", "{img}", "-B", "1", "-n", "1K"], ["-n/--count", "'1K'", "integer"]),
        (["inject-error", "{img}", "-B", "1", "-n", HUGE], [HUGE, "outside the device"]),
        (["inject-error", "{img}", "-B", "-1"], ["-B/--block", "'-1'", ">= 0"]),
        (["inject-error", "{img}", "-B", "1K"], ["-B/--block", "'1K'", "integer"]),
        (["inject-error", "{img}", "-B", "x"], ["-B/--block", "'x'"]),
        (["inject-error", "{img}", "-B", HUGE], [HUGE, "outside the device"]),
        (["inject-error", "{img}", "-B", "1", "--uninject", "-n", "0"], ["-n/--count"]),
        (["read", "{img}", "--offset", "-1", "--length", "1"], ["--offset", "'-1'", ">= 0"]),
        (["read", "{img}", "--offset", "x", "--length", "1"], ["--offset", "'x'"]),
        (["read", "{img}", "--offset", HUGE, "--length", "1"], ["offset", HUGE, "outside the device"]),
        (["read", "{img}", "--offset", "0", "--length", "-1"], ["--length", "'-1'", ">= 0"]),
        (["read", "{img}", "--offset", "0", "--length", "1Q"], ["--length", "'1Q'"]),
        (["read", "{img}", "--offset", "0", "--length", HUGE], ["length", HUGE, "outside the device"]),
        (["write", "{img}", "--offset", "-1", "--zero", "1"], ["--offset", "'-1'"]),
        (["write", "{img}", "--offset", HUGE, "--zero", "1"], [HUGE, "outside the device"]),
        (["write", "{img}", "--offset", "0", "--zero", "-1"], ["--zero", "'-1'", ">= 0"]),
        (["write", "{img}", "--offset", "0", "--zero", "lots"], ["--zero", "'lots'"]),
        (["write", "{img}", "--offset", "0", "--zero", HUGE], ["--zero", HUGE, "outside the device"]),
        (
            ["write", "{img}", "--offset", "0", "--zero", "1T"],
            ["--zero", "1099511627776", "outside the device"],
        ),
        (["create", "{tmp}/n.img", "--size", "-1"], ["--size", "'-1'", ">= 0"]),
        (["create", "{tmp}/n.img", "--size", "big"], ["--size", "'big'"]),
        (["create", "{tmp}/n.img", "--size", "0"], ["size", "0"]),
        (["create", "{tmp}/n.img", "--size", "4M", "--clear-err-unit", "-1"], ["--clear-err-unit", "'-1'"]),
        (["create", "{tmp}/n.img", "--size", "4M", "--clear-err-unit", "x"], ["--clear-err-unit", "'x'"]),
        (["create", "{tmp}/n.img", "--size", "4M", "--clear-err-unit", "100"], ["clear", "100"]),
        (["create", "{tmp}/n.img", "--size", "4M", "--clear-err-unit", "256K"], ["--clear-err-unit", "256K"]),
    ],
)
def test_numeric_options(image, tmp_path, args, words):
    before = file_digest(image)
    check_error(daxkit_cli(*[a.format(img=image, tmp=tmp_path) for a in args]), *words)
    assert file_digest(image) == before
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "opts",
    [["--size", HUGE], ["--size", "99999999T"], ["--size", "4M", "--clear-err-unit", str(1 << 64)]],
    ids=["size-huge", "size-T", "clear-err-unit-huge"],
)
def test_huge_values_for_create(tmp_path, opts):
    """Past what an image can describe: a clear refusal naming the option and the value (in
    bytes), nothing created."""
    value = str(daxkit.parse_size(opts[-1]))
    check_error(daxkit_cli("create", str(tmp_path / "n.img"), *opts), opts[-2], value)
    assert os.listdir(tmp_path) == []


def test_options_between_positionals(image, tmp_path):
    r = daxkit_cli("ls", image, "-l", "/d")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"name": "f", "type": "file", "size": 1}]
    assert daxkit_cli("ls", "-l", image, "/d").stdout == r.stdout
    r = daxkit_cli("inject-error", image, "--status")
    assert r.returncode == 0 and r.stdout == b""  # nothing injected: nothing printed
    r = daxkit_cli("read", image, "--length", "1", "-o", str(tmp_path / "x"), "--offset", "0")
    assert r.returncode == 0 and (tmp_path / "x").stat().st_size == 1


def _without_root_override():
    """Root reads anything: drop CAP_DAC_OVERRIDE/READ_SEARCH from the bounding set so the
    child meets file permissions like any user."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP
                os._exit(99)


VERBS_ON_IMAGE = [["info"], ["get", "/d/f", "-"], ["df"]]


@pytest.mark.parametrize("verb", VERBS_ON_IMAGE, ids=lambda v: v[0])
@pytest.mark.parametrize("case", ["missing", "directory", "junk", "truncated", "no-permission"])
def test_bad_images(image, tmp_path, verb, case):
    path = tmp_path / "img"
    words = {"missing": ["no such file"], "directory": ["directory"], "junk": ["not a daxkit image"],
             "truncated": ["truncated"], "no-permission": ["ermission denied"]}[case]  # fmt: skip
    if case == "directory":
        path.mkdir()
    elif case == "junk":
        path.write_bytes(b"\x00" * 10000)
    elif case in ("truncated", "no-permission"):
        path.write_bytes(open(image, "rb").read())
        if case == "truncated":
            os.truncate(path, os.path.getsize(path) // 2)
        else:
            path.chmod(0)
    r = subprocess.run(
        [sys.executable, "-m", "daxkit.cli.main", verb[0], str(path), *verb[1:]],
        capture_output=True,
        timeout=60,
        preexec_fn=_without_root_override,
    )
    check_error(r, str(path), *words)


@pytest.mark.parametrize(
    "args,words",
    [
        (["ls", "{img}", "/nope"], ["/nope", "no such file"]),
        (["ls", "{img}", "/d/f/x"], ["/d/f/x"]),
        (["get", "{img}", "/nope", "-"], ["/nope", "no such file"]),
        (["get", "{img}", "/nope", "-", "--recover"], ["/nope", "no such file"]),
        (["get", "{img}", "/d", "-"], ["/d", "directory"]),
        (["bmap", "{img}", "/nope"], ["/nope", "no such file"]),
        (["rm", "{img}", "/nope"], ["/nope", "no such file"]),
        (["put", "{img}", "-", "/nope/x"], ["/nope", "no such file"]),
        (["ls", "{img}", "/" + "n" * 300], ["longer than 255"]),
        (["get", "{img}", "/" + "n" * 300, "-"], ["longer than 255"]),
        (["put", "{img}", "-", "/" + "n" * 300], ["longer than 255"]),
        (["put", "{img}", "-", "/d/" + "n" * 300], ["longer than 255"]),
        (["mkdir", "{img}", "/" + "n" * 300], ["longer than 255"]),
        (["mount", "{img}", "{tmp}/no-such-dir"], ["no-such-dir", "does not exist"]),
    ],
)
def test_bad_paths(image, tmp_path, args, words):
    before = file_digest(image)
    check_error(daxkit_cli(*[a.format(img=image, tmp=tmp_path) for a in args], input=b"data"), *words)
    assert file_digest(image) == before
