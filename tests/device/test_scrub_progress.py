"""scrub_progress: a scrub is running exactly while some open of the image is scrubbing
(issue 6 item 8): a pid word left behind by a dead scrubber, or reused by an unrelated live
process, never looks like a running scrub, so ``wait-scrub`` cannot hang on it."""

import os
import signal
import struct
import subprocess
import sys
import time

import daxkit
from daxkit.medium import image as imagemod

from ..conftest import daxkit_cli

SLOW_SCRUB = """
import sys, time, daxkit
d = daxkit.open(sys.argv[1])
def step(done, total):
    print("step", done, flush=True)
    time.sleep(float(sys.argv[2]))
d.scrub(progress=step)
print("done", flush=True)
"""


def _write_scrub_words(path, pid, done=4096, total=8192):
    with open(path, "r+b") as f:
        f.seek(imagemod.LIVE_OFFSET + 8 * imagemod.LIVE_SCRUB_PID)
        f.write(struct.pack("<QQQ", pid, done, total))


def test_stale_pid_of_a_live_unrelated_process_is_not_a_scrub(img):
    daxkit.create(img, "8M").close()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (sleeper.pid, os.getppid(), os.getpid()):
            _write_scrub_words(img, pid)
            with daxkit.open(img) as d:
                assert d.scrub_progress()[0] == 0
            t = time.monotonic()
            r = daxkit_cli("wait-scrub", img, timeout=20)
            assert r.returncode == 0, r.stderr.decode()
            assert time.monotonic() - t < 10
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_scrub_in_another_process_is_seen_while_it_runs(img):
    daxkit.create(img, "64M").close()
    p = subprocess.Popen([sys.executable, "-c", SLOW_SCRUB, img, "0.4"], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline().split()[0] == b"step"
        with daxkit.open(img) as d:
            pid, done, total = d.scrub_progress()
            assert (pid, total) == (p.pid, 64 << 20) and 0 < done <= total
            t = time.monotonic()
            r = daxkit_cli("wait-scrub", img, timeout=30)
            assert r.returncode == 0, r.stderr.decode()
            assert p.poll() is not None or p.wait(5) == 0  # wait-scrub waited for the end
            assert time.monotonic() - t > 0.5
            assert d.scrub_progress()[0] == 0 and d.scrub_count == 1
    finally:
        p.kill()
        p.wait()


def test_a_killed_scrubber_is_not_running(img):
    daxkit.create(img, "64M").close()
    p = subprocess.Popen([sys.executable, "-c", SLOW_SCRUB, img, "5"], stdout=subprocess.PIPE)
    assert p.stdout.readline().split()[0] == b"step"
    with daxkit.open(img) as d:
        assert d.scrub_progress()[0] == p.pid
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert d.scrub_progress()[0] == 0  # the pid word is still there; nobody scrubs
        assert d._img.words[imagemod.LIVE_SCRUB_PID] == p.pid


def test_scrub_is_running_for_its_own_device_and_other_opens(img):
    with daxkit.create(img, "64M") as d, daxkit.open(img) as other:
        seen = []
        d.scrub(progress=lambda done, total: seen.append((d.scrub_progress()[0], other.scrub_progress()[0])))
        assert seen and all(s == (os.getpid(), os.getpid()) for s in seen)
        assert d.scrub_progress()[0] == 0 and other.scrub_progress()[0] == 0
