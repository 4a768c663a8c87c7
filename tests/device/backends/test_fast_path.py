"""The regular-file backend's fast path makes no system call per access (SPEC 7, 8): with a
watched badblocks file listing a sector the reads never meet, 2000 reads of the device and of a
mapping between two markers show no system call in the reading thread (strace -f; the poll()
watcher's own calls are on its thread and are not per access)."""

import os
import shutil
import subprocess
import sys

import pytest

CODE = r"""
import os, sys
import daxkit
dev = daxkit.open(sys.argv[1], sysfs_root=sys.argv[2])
assert dev.info()["errors_from"], dev.info()
buf = bytearray(4096)
m = dev.map(0, dev.size)
dev.readinto(buf, 0); m.readinto(buf, 0); dev.pread(4096, 0); m.read(0, 16)
os.getppid()
for i in range(1000):
    dev.readinto(buf, (i % 16) * 4096)
    m.readinto(buf, (i % 16) * 4096)
    dev.pread(4096, (i % 16) * 4096)
os.getppid()
m.close(); dev.close()
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_reads_make_no_system_call(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(os.urandom(16 * 4096))
    st = os.stat(path)
    block = tmp_path / "sys" / "block" / "pmem0"
    block.mkdir(parents=True)
    (block / "dev").write_text(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}\n")
    (block / "badblocks").write_text("0 1\n")  # listed, but under no byte of the file
    log = tmp_path / "trace"
    r = subprocess.run(
        ["strace", "-f", "-o", str(log), sys.executable, "-c", CODE, str(path), str(tmp_path / "sys")],
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = log.read_text().splitlines()
    main = lines[0].split()[0]  # strace -f prefixes each line with the thread id
    # a call another thread interrupted shows as "<unfinished ...>" and later "<... resumed>":
    # count each call once, by its start
    calls = [ln for ln in lines if ln.split()[0] == main and "(" in ln and "resumed>" not in ln]
    marks = [i for i, ln in enumerate(calls) if "getppid(" in ln]
    assert len(marks) == 2, calls[-20:]
    between = calls[marks[0] + 1 : marks[1]]
    # futex: the GIL handed to the watcher thread now and then (not per access)
    assert [ln for ln in between if " futex(" not in ln] == [], between[:10]
