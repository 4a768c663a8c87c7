"""Crash consistency (SPEC 3): kill the workload at random instants; after each kill the
filesystem mounts, fsck is clean, every fsynced-and-recorded file holds its bytes, and after a
read-write mount both superblock copies are the same (SPEC 4.2: every metadata copy current).

`make test` runs a reduced number of kills; set DAXKIT_CRASH_KILLS=200 (or more) for the full
harness."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import daxkit
from daxkit.medium.image import DATA_OFFSET

KILLS = int(os.environ.get("DAXKIT_CRASH_KILLS", "15"))
WORKER = os.path.join(os.path.dirname(__file__), "crash_worker.py")


def test_random_kills_leave_a_consistent_filesystem(tmp_path):
    image = str(tmp_path / "crash.img")
    sidecar = str(tmp_path / "sealed.json")
    with daxkit.create(image, "64M") as dev:
        daxkit.mkfs(dev)
    rng = random.Random(20261124)
    checked_files = 0
    for kill in range(KILLS):
        p = subprocess.Popen(
            [sys.executable, WORKER, image, sidecar], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        line = p.stdout.readline()
        assert line.strip() == b"ready", (kill, line, p.stderr.read()[-2000:])
        time.sleep(rng.uniform(0.0, 0.25))
        p.send_signal(signal.SIGKILL)
        p.wait()
        err = p.stderr.read().decode()
        assert "Traceback" not in err, err
        with daxkit.open(image) as dev:
            report = daxkit.fsck(dev)
            assert report["clean"], (kill, report["problems"])
            sealed = json.load(open(sidecar)) if os.path.exists(sidecar) else {}
            with daxkit.mount(dev) as fs:  # read-write: it mounts and is the holder again
                for path, digest in sealed.items():
                    with fs.open(path) as f:
                        assert hashlib.sha256(f.read()).hexdigest() == digest, (kill, path)
                checked_files = len(sealed)
            # and every metadata copy is current again (a kill can leave the second superblock
            # slot or the last record's later commit words behind: crash, not damage)
            assert daxkit.fsck(dev)["clean"], kill
            with open(image, "rb") as f:
                f.seek(DATA_OFFSET)
                slots = f.read(2 * 4096)
            assert slots[:4096] == slots[4096:], kill
    assert checked_files > 0  # the workload got far enough to seal files
