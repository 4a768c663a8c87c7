"""End-to-end command-line flows that follow ndctl's own error tests step by step:
test/inject-error.sh, test/clear.sh and test/daxdev-errors.sh (our own code, their story)."""

import json
import signal

import pytest

import daxkit

from ..conftest import daxkit_cli, run_py


def ok(*args, input=None) -> str:
    r = daxkit_cli(*args, input=input)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr == b"", r.stderr.decode()
    return r.stdout.decode()


def badblocks(img) -> list[tuple[int, int]]:
    return [tuple(map(int, ln.split())) for ln in ok("badblocks", img).splitlines()]


def status(img):
    """ndctl's shape, {"badblocks": [{"block": b, "count": c}]}; nothing at all when there are none."""
    out = ok("inject-error", img, "--status")
    return json.loads(out)["badblocks"] if out else []


@pytest.fixture
def image(tmp_path):
    p = str(tmp_path / "pmem.img")
    ok("create", p, "--size", "64M")
    return p


def test_inject_error_sh(image):
    err_block, err_count = 42, 8
    # inject without notification: status lists it, badblocks stays empty
    ok("inject-error", image, f"--block={err_block}", f"--count={err_count}", "--no-notify")
    assert status(image) == [{"block": err_block, "count": err_count}]
    assert badblocks(image) == []
    # clear via uninject: status empty (and --status prints nothing at all)
    ok("inject-error", image, "-B", str(err_block), "-n", str(err_count), "--uninject")
    assert ok("inject-error", image, "--status") == ""
    # inject normally: badblocks reads "42 8"
    ok("inject-error", image, "-B", str(err_block), "-n", str(err_count))
    assert status(image) == [{"block": err_block, "count": err_count}]
    ok("inject-error", image, "-B", str(err_block + err_count), "-n", "2", "-N")  # merged, as ndctl shows it
    assert json.loads(ok("inject-error", image, "--status")) == {
        "badblocks": [{"block": err_block, "count": err_count + 2}]
    }
    ok("inject-error", image, "-B", str(err_block + err_count), "-n", "2", "--uninject")
    assert badblocks(image) == [(err_block, err_count)]
    # clear via write (dd if=/dev/zero bs=512 count=8 seek=42 oflag=direct): both empty
    ok("write", image, "--offset", str(err_block * 512), "--zero", str(err_count * 512))
    assert badblocks(image) == []
    assert status(image) == []


def test_clear_sh(image):
    size = json.loads(ok("info", image))["size"]
    err_sector, err_count = (size // 512) // 2, 8
    ok("inject-error", image, f"--block={err_sector}", f"--count={err_count}")
    ((sector, length),) = badblocks(image)
    assert sector * 2 == size // 512 and length == err_count
    # a direct read over it fails (dd iflag=direct bs=512 skip=sector count=len)
    r = daxkit_cli("read", image, "--offset", str(sector * 512), "--length", str(length * 512))
    assert r.returncode != 0 and r.stdout == b""
    assert r.stderr.decode().startswith("daxkit: error: ") and b"Traceback" not in r.stderr
    # list -M shows the media errors in ndctl's shape
    listing = json.loads(ok("list", image, "-M"))
    assert listing["badblock_count"] == 8 and listing["badblocks"] == [{"offset": sector, "length": 8}]
    # writing clears the errors
    ok("write", image, "--offset", str(sector * 512), "--zero", str(length * 512))
    assert badblocks(image) == []
    # "disable/enable the region": reopening must not bring stale errors back
    assert badblocks(image) == [] and json.loads(ok("list", image, "-M"))["badblock_count"] == 0
    out = ok("read", image, "--offset", str(sector * 512), "--length", str(length * 512))
    assert out == "\0" * (length * 512)


DAXDEV_ERRORS = """
import signal, sys, daxkit
dev = daxkit.open(sys.argv[1])
sector = int(sys.argv[2])
m = dev.map(0, dev.size)
off = sector * 512
try:
    m.read(off, 512)
    print("no-error")
except daxkit.PoisonError as e:
    print("poison", e.offset, e.done, flush=True)
if sys.argv[3] == "raw":
    m.buf[off]         # the test's SIGBUS read of the poisoned address
    print("survived")
"""


def test_daxdev_errors_sh(image):
    size = json.loads(ok("info", image))["size"]
    err_sector = (size // 512) // 2
    ok("inject-error", image, f"--block={err_sector}", "--count=8")
    ((sector, length),) = badblocks(image)
    assert (sector, length) == (err_sector, 8)
    # the mapped read of the poisoned address faults (the kernel's SIGBUS, our SIGSEGV)
    r = run_py(DAXDEV_ERRORS, image, str(sector), "raw")
    assert "poison" in r.stdout and "survived" not in r.stdout
    assert r.returncode in (-signal.SIGSEGV, -signal.SIGBUS)
    # clear the error (the test's ND_CMD_CLEAR_ERROR), then the read succeeds
    cleared = json.loads(ok("clear-errors", image))["cleared"]
    assert cleared == [{"offset": sector * 512, "length": 8 * 512}]
    assert badblocks(image) == []
    r = run_py(DAXDEV_ERRORS, image, str(sector), "safe")
    assert r.stdout.strip() == "no-error", r.stderr


def test_badblocks_add_and_start_wait_scrub(image):
    ok("badblocks", image, "--add", "100 4")
    assert badblocks(image) == [(100, 4)]
    ok("inject-error", image, "-B", "7", "--no-notify", "--saturate")
    rep = json.loads(ok("start-scrub", image))
    assert rep["new_ranges"] == [{"offset": 7 * 512, "length": 512}] and rep["scrub_count"] == 1
    waited = json.loads(ok("wait-scrub", image))
    assert waited["scrub_count"] == 1 and waited["badblocks"] == [
        {"offset": 7, "length": 1},
        {"offset": 100, "length": 4},
    ]


def test_read_write_roundtrip_with_files(image, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(bytes(range(256)) * 20)
    ok("write", image, "--offset", "1M", "-i", str(src))
    out = tmp_path / "out.bin"
    ok("read", image, "--offset", "1M", "--length", str(256 * 20), "-o", str(out))
    assert out.read_bytes() == src.read_bytes()
    ok("write", image, "--offset", "2M", "-i", "-", input=b"from stdin")
    assert ok("read", image, "--offset", "2M", "--length", "10").encode("latin-1") == b"from stdin"


def test_cli_sees_state_of_a_process_holding_the_device(image):
    with daxkit.open(image) as dev:
        dev.inject_error(3, 1)
        assert badblocks(image) == [(3, 1)]
        ok("clear-errors", image)
        assert dev.badblocks.text() == "" and dev.pread(512, 3 * 512) == bytes(512)


def test_scrub_progress_bar_on_a_terminal(image):
    """On a terminal start-scrub draws a progress bar on stderr; piped, it draws nothing."""
    import os
    import pty
    import sys

    pid, fd = pty.fork()
    if pid == 0:  # child: stdout and stderr are the terminal
        os.execv(sys.executable, [sys.executable, "-m", "daxkit.cli.main", "start-scrub", image])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    text = out.decode()
    assert "scrub [" in text and "100%" in text and '"scrub_count": 1' in text
    piped = daxkit_cli("start-scrub", image)
    assert piped.returncode == 0 and piped.stderr == b""
