"""One process holds the device open while others inject, scrub and clear (SPEC 2.1)."""

import subprocess
import sys

from ..conftest import Holder, daxkit_cli


def cli(*args):
    r = daxkit_cli(*args)
    assert r.returncode == 0, r.stderr.decode()
    return r


def test_held_device_sees_inject_scrub_clear_from_another_process(dev):
    h = Holder()
    dev.holder = h
    dev.pwrite(b"\x5a" * 4096, 8192)
    assert dev.pread(4096, 8192) == b"\x5a" * 4096

    cli("inject-error", dev.path, "-B", "17", "--no-notify")
    assert dev.injected_errors() == [{"block": 17, "count": 1}]
    assert dev.badblocks.text() == ""  # known only after a scrub
    assert h.calls == []

    cli("start-scrub", dev.path)
    assert dev.badblocks.text() == "17 1\n" and dev.scrub_count == 1
    try:
        dev.pread(512, 17 * 512)
        raise AssertionError("read over a bad sector made known elsewhere must fail")
    except OSError as e:
        assert e.errno == 5
    # the holder of this process hears about poison another process made known
    assert h.calls == [(17 * 512, 256, 0)]

    cli("clear-errors", dev.path)
    assert dev.badblocks.text() == "" and dev.injected_errors() == []
    assert dev.pread(512, 17 * 512) == bytes(512)


WORKER = """
import sys, daxkit
d = daxkit.open(sys.argv[1])
base = int(sys.argv[2])
for i in range(150):
    d.inject_error(base + 2 * i, 1, notify=False)
"""


def test_concurrent_writers_are_serialized(dev):
    """Two processes commit at once: no update is lost."""
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, dev.path, str(base)]) for base in (0, 1000)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    records = dev.injected_errors()
    blocks = {r["block"] + k for r in records for k in range(r["count"])}
    assert blocks == {b + 2 * i for b in (0, 1000) for i in range(150)}


def test_a_change_waits_for_a_live_watcher_in_another_process_and_not_for_a_dead_one(dev):
    """A process that caches the device's data (a FUSE mount) watches the error state; a change
    made elsewhere returns once the watcher has acknowledged its generation (SPEC 6: the very
    next read), and never waits for a watcher that died."""
    import select
    import time

    code = (
        "import sys, time, daxkit\n"
        "dev = daxkit.open(sys.argv[1])\n"
        "dev.watch_errors(True)\n"
        "print('ready', flush=True)\n"
        "seen = dev.state_generation\n"
        "while True:\n"
        "    gen = dev.state_word[0]\n"
        "    if gen != seen:\n"
        "        time.sleep(0.3)  # acting on it takes a while\n"
        "        print('acted', gen, flush=True)\n"
        "        dev.errors_seen(gen)\n"
        "        seen = gen\n"
        "    time.sleep(0.001)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, dev.path], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        cli("inject-error", dev.path, "-B", "9")
        # inject-error has returned: the watcher had acted on the change already
        assert select.select([p.stdout], [], [], 0)[0], "returned before the watcher acted"
        assert p.stdout.readline().startswith("acted ")
    finally:
        p.kill()
        p.wait()
    t = time.monotonic()
    cli("inject-error", dev.path, "-B", "11")  # its watcher is gone: no wait for it
    assert time.monotonic() - t < 1.5, "waited for a dead watcher"
