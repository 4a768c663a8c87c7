"""SPEC 5: a signal (Ctrl-C, SIGTERM) or a closed output pipe ends a command quietly, and leaves
nothing half-made behind (issue 6, item 8): every verb that prints, each long-running verb."""

import os
import signal
import subprocess
import sys
import time

import pytest

import daxkit
from daxkit.medium.image import LIVE_SCRUB_PID

from ..conftest import file_digest
from .util import fs_image, fs_names

CLI = [sys.executable, "-m", "daxkit.cli.main"]
DATA = bytes(range(256)) * 64


@pytest.fixture
def image(tmp_path):
    img = fs_image(tmp_path / "fs.img", files={"/d/": b"", "/d/f": DATA, "/big": bytes(1 << 20)})
    with daxkit.open(img) as dev:
        last = dev.size // 512 - 1  # a free block at the device end: files stay readable
        dev.inject_error(last, 1)
        dev.inject_error(last - 8, 1, notify=False)
    return img


PRINTING_VERBS = [
    ["info", "{img}"],
    ["list", "{img}", "-M"],
    ["inject-error", "{img}", "--status"],
    ["badblocks", "{img}"],
    ["read", "{img}", "--offset", "0", "--length", "64K"],
    ["write", "{img}", "--offset", "2M", "--zero", "512"],
    ["ls", "{img}", "/d"],
    ["ls", "{img}", "-l", "/d"],
    ["get", "{img}", "/d/f", "-"],
    ["get", "{img}", "/d/f", "-", "--recover"],
    ["put", "{img}", "-", "/d/g"],
    ["bmap", "{img}", "/d/f"],
    ["scan", "{img}"],
    ["fsck", "{img}"],
    ["df", "{img}"],
    ["start-scrub", "{img}"],
    ["wait-scrub", "{img}"],
    ["clear-errors", "{img}"],
    ["create", "{tmp}/new.img", "--size", "1M"],
    ["mkfs", "{tmp}/raw.img"],
    ["--version"],
    ["--help"],
    ["demo"],
]


def run_into_closed_pipe(args, input=b""):
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first byte: every write is EPIPE
    try:
        return subprocess.run(CLI + args, stdout=w, stderr=subprocess.PIPE, input=input, timeout=60)
    finally:
        os.close(w)


@pytest.mark.parametrize("args", PRINTING_VERBS, ids=lambda a: "-".join(a)[:40])
def test_closed_pipe_ends_quietly(image, tmp_path, args):
    with daxkit.create(str(tmp_path / "raw.img"), "4M"):
        pass
    r = run_into_closed_pipe([a.format(img=image, tmp=tmp_path) for a in args], input=b"x")
    assert r.stderr == b"", r.stderr.decode()
    if args[0] in ("--help", "--version"):  # argparse may drop its own text quietly and exit 0
        assert r.returncode in (0, 128 + signal.SIGPIPE)
    else:
        assert r.returncode == 128 + signal.SIGPIPE


def test_head_c1_through_a_shell(image):
    daxkit_ = " ".join(CLI)
    cmd = f"{daxkit_} info {image} | head -c1; {daxkit_} get {image} /big - | head -c1"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=60)
    assert r.stderr == b"" and r.stdout == b"{\0"


def _catches(pid: int, signum: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _signal_when_waiting(args, signum):
    """Start the command, wait until it is running its verb, signal it; its result."""
    p = subprocess.Popen(CLI + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not _catches(p.pid, signal.SIGTERM) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # into the verb's wait (stdin, or the scrub poll)
    assert p.poll() is None, p.communicate()
    p.send_signal(signum)
    out, err = p.communicate(timeout=30)  # stdin stays open: the command must not need EOF
    return p.returncode, out, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_ends_wait_scrub_quietly(image, signum):
    with daxkit.open(image) as dev, dev._img.scrubbing():  # a scrub that never ends, held by us
        dev._img.words[LIVE_SCRUB_PID] = os.getpid()
        try:
            rc, out, err = _signal_when_waiting(["wait-scrub", image], signum)
        finally:
            dev._img.words[LIVE_SCRUB_PID] = 0
    assert (rc, out, err) == (128 + signum, b"", b"")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_reading_stdin_changes_nothing(image, signum):
    before = file_digest(image)
    rc, out, err = _signal_when_waiting(["write", image, "--offset", "0", "-i", "-"], signum)
    assert (rc, out, err) == (128 + signum, b"", b"")
    rc, out, err = _signal_when_waiting(["put", image, "-", "/d/new"], signum)
    assert (rc, out, err) == (128 + signum, b"", b"")
    assert file_digest(image) == before and fs_names(image, "/d") == ["f"]
