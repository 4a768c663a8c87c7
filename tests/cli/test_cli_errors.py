"""Bad input on the command line: one `daxkit: error:` line, a non-zero exit, no traceback,
and the image unchanged."""

import pytest

from ..conftest import daxkit_cli, file_digest


@pytest.fixture
def image(tmp_path):
    p = str(tmp_path / "pmem.img")
    assert daxkit_cli("create", p, "--size", "4M").returncode == 0
    return p


def check_error(r, *words):
    err = r.stderr.decode()
    assert r.returncode != 0
    assert err.startswith("daxkit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize(
    "args,words",
    [
        (["read", "{img}", "--offset", "-1", "--length", "4"], ["offset"]),
        (["read", "{img}", "--offset", "4M", "--length", "1"], ["outside the device", "4194304"]),
        (["read", "{img}", "--offset", "0", "--length", "5M"], ["outside the device"]),
        (["write", "{img}", "--offset", "4194300", "--zero", "8"], ["outside the device"]),
        (["write", "{img}", "--offset", "0"], ["exactly one of"]),
        (["write", "{img}", "--offset", "0", "-i", "/nonexistent/file"], ["/nonexistent/file"]),
        (["badblocks", "{img}", "--add", "42"], ["badblocks"]),
        (["badblocks", "{img}", "--add", "42 0"], ["count"]),
        (["badblocks", "{img}", "--add", "42 8 junk"], ["badblocks"]),
        (["badblocks", "{img}", "--add", "nine 8"], ["badblocks"]),
        (["badblocks", "{img}", "--add", "8190 8"], ["past the device end"]),
        (["inject-error", "{img}", "-B", "8192"], ["outside the device"]),
        (["inject-error", "{img}", "-B", "1", "-n", "0"], ["count"]),
        (["inject-error", "{img}"], ["--block"]),
        (["create", "{img}", "--size", "4M"], ["exists"]),
        (["create", "{img}", "--size", "4M", "--force", "--clear-err-unit", "100"], ["clear_err_unit"]),
        (["no-such-verb"], ["invalid choice"]),
        (["info"], ["IMG"]),
    ],
)
def test_bad_input(image, args, words):
    before = file_digest(image)
    r = daxkit_cli(*[a.format(img=image) for a in args])
    check_error(r, *words)
    assert file_digest(image) == before


@pytest.mark.parametrize("verb", ["info", "list", "badblocks", "start-scrub", "clear-errors", "read"])
def test_not_an_image(tmp_path, verb):
    p = tmp_path / "junk.img"
    p.write_bytes(b"\x00" * 10000)
    before = file_digest(str(p))
    extra = ["--offset", "0", "--length", "1"] if verb == "read" else []
    check_error(daxkit_cli(verb, str(p), *extra), "not a daxkit image")
    assert file_digest(str(p)) == before


def test_directory_is_not_an_image(tmp_path):
    check_error(daxkit_cli("info", str(tmp_path)), "directory")


def test_create_bad_size(tmp_path):
    p = str(tmp_path / "x.img")
    check_error(daxkit_cli("create", p, "--size", "lots"), "size")
    check_error(daxkit_cli("create", p, "--size", "1000"), "multiple of 4096")
    import os

    assert not os.path.exists(p)


def test_demo_runs_and_checks_every_step():
    r = daxkit_cli("demo", timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "demo complete" in out and out.count("ok:") >= 15
