"""daxkit.copy_mc (SPEC 2.6): real faults, in subprocesses, plus the ordinary contract."""

import shutil
import signal
import threading

import pytest

import daxkit
from daxkit import _copymc

from .conftest import run_py


def test_copy_returns_zero_and_copies():
    src = bytes(range(256)) * 64
    dst = bytearray(len(src))
    assert daxkit.copy_mc(dst, src) == 0
    assert dst == src


def test_copy_into_longer_dst_leaves_tail():
    dst = bytearray(b"x" * 10)
    assert daxkit.copy_mc(dst, b"abc") == 0
    assert dst == b"abcxxxxxxx"


def test_short_dst_is_valueerror():
    with pytest.raises(ValueError):
        daxkit.copy_mc(bytearray(3), b"abcd")


def test_readonly_dst_is_typeerror():
    with pytest.raises((TypeError, BufferError)):
        daxkit.copy_mc(b"....", b"abcd")


def test_copy_mc_from_bounds():
    src = bytearray(b"0123456789")
    dst = bytearray(4)
    assert _copymc.copy_mc_from(dst, src, 6) == 0 and dst == b"6789"
    with pytest.raises(ValueError):
        _copymc.copy_mc_from(dst, src, 7)
    with pytest.raises(ValueError):
        _copymc.copy_mc_from(dst, src, -1)


SIGBUS_CODE = """
import mmap, os, sys, tempfile
import daxkit
from daxkit import _copymc
fd, path = tempfile.mkstemp()
os.write(fd, b"A" * 3 * 4096)
mm = mmap.mmap(fd, 3 * 4096)
os.ftruncate(fd, 4096 + 1000)                  # now the file ends inside page 1: page 2 gets SIGBUS
src = memoryview(mm)[100:]
dst = bytearray(len(src))
left = daxkit.copy_mc(dst, src)
base = _copymc.last_fault()
print(left, len(src) - left, bytes(dst[:len(src) - left]) == b"A" * 3996 + b"A" * 1000 + bytes(3096))
os.unlink(path)
"""


def test_real_sigbus_past_end_of_file():
    r = run_py(SIGBUS_CODE)
    assert r.returncode == 0, r.stderr
    left, done, same = r.stdout.split()
    # bytes 100..8191 are readable (the tail of page 1 reads as zeroes), page 2 faults
    assert int(done) == 2 * 4096 - 100
    assert int(left) == 4096
    assert same == "True"


SIGSEGV_CODE = """
import ctypes, mmap
import daxkit
mm = mmap.mmap(-1, 3 * 4096)
mm[:] = bytes(range(256)) * 48
addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
libc = ctypes.CDLL(None)
assert libc.mprotect(ctypes.c_void_p(addr + 4096), 4096, 0) == 0   # page 1: PROT_NONE
dst = bytearray(8000)
left = daxkit.copy_mc(dst, memoryview(mm)[100:8100])
done = 8000 - left
print(left, done, bytes(dst[:done]) == bytes(mm[100:4096]))
# the handler stays usable: a second faulting copy, then a clean one
print(daxkit.copy_mc(bytearray(10), memoryview(mm)[4096:4106]))
print(daxkit.copy_mc(bytearray(10), memoryview(mm)[0:10]))
"""


def test_real_sigsegv_on_prot_none_page():
    r = run_py(SIGSEGV_CODE)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    left, done, same = lines[0].split()
    assert (int(left), int(done), same) == (8000 - (4096 - 100), 4096 - 100, "True")
    assert lines[1] == "10"
    assert lines[2] == "0"


UNRELATED_CODE = """
import ctypes, faulthandler, mmap, sys
if sys.argv[1] == "faulthandler":
    faulthandler.enable()
import daxkit
if sys.argv[1] == "faulthandler-after":
    faulthandler.enable()
# a recoverable fault first: the handler must still recover after faulthandler moved
mm = mmap.mmap(-1, 2 * 4096)
addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
ctypes.CDLL(None).mprotect(ctypes.c_void_p(addr + 4096), 4096, 0)
assert daxkit.copy_mc(bytearray(8192), memoryview(mm)) == 4096
print("recovered", flush=True)
ctypes.string_at(8)      # a real segfault outside any copy
print("survived")
"""


@pytest.mark.parametrize("mode", ["default", "faulthandler", "faulthandler-after"])
def test_unrelated_segfault_still_crashes(mode):
    r = run_py(UNRELATED_CODE, mode)
    assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stderr)
    assert "recovered" in r.stdout and "survived" not in r.stdout
    if mode.startswith("faulthandler"):
        assert r.stderr.count("Fatal Python error: Segmentation fault") == 1, r.stderr


OTHER_THREAD_CODE = """
import ctypes, mmap, threading
import daxkit
mm = mmap.mmap(-1, 2 * 4096)
addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
ctypes.CDLL(None).mprotect(ctypes.c_void_p(addr + 4096), 4096, 0)
# a copy runs in the main thread while another thread loads the PROT_NONE page directly
def victim():
    ctypes.string_at(addr + 4096, 1)
t = threading.Thread(target=victim)
t.start(); t.join()
print("survived")
"""


def test_fault_in_another_thread_is_not_swallowed():
    r = run_py(OTHER_THREAD_CODE)
    assert r.returncode == -signal.SIGSEGV
    assert "survived" not in r.stdout


def test_threads_copy_concurrently_with_faults():
    import ctypes
    import mmap

    mm = mmap.mmap(-1, 4 * 4096)
    mm[:] = b"z" * (4 * 4096)
    anchor = ctypes.c_char.from_buffer(mm)
    addr = ctypes.addressof(anchor)
    del anchor
    libc = ctypes.CDLL(None)
    assert libc.mprotect(ctypes.c_void_p(addr + 2 * 4096), 4096, 0) == 0
    view = memoryview(mm)
    errors = []

    def faulting():
        for _ in range(300):
            left = daxkit.copy_mc(bytearray(8192), view[4096 : 3 * 4096])
            if left != 4096:
                errors.append(("faulting", left))

    def clean():
        for _ in range(300):
            d = bytearray(8192)
            if daxkit.copy_mc(d, view[0:8192]) != 0 or d != b"z" * 8192:
                errors.append("clean")

    ts = [threading.Thread(target=f) for f in (faulting, clean, faulting, clean)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    libc.mprotect(ctypes.c_void_p(addr + 2 * 4096), 4096, 3)
    view.release()
    mm.close()
    assert errors == []


STRACE_CODE = """
import os, daxkit
src = bytes(1 << 16); dst = bytearray(1 << 16); small = bytearray(64)
copy = daxkit.copy_mc
for _ in range(10): copy(dst, src)
os.getppid()                                  # marker: start
for _ in range(2000):
    copy(dst, src); copy(small, src[:64])
os.getppid()                                  # marker: end
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_success_path_makes_no_system_call(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "trace"
    subprocess.run(
        ["strace", "-f", "-o", str(log), sys.executable, "-c", STRACE_CODE], check=True, capture_output=True
    )
    calls = [ln for ln in log.read_text().splitlines() if "getppid()" in ln or "(" in ln]
    marks = [i for i, ln in enumerate(calls) if "getppid()" in ln]
    assert len(marks) == 2
    between = calls[marks[0] + 1 : marks[1]]
    assert between == [], between[:10]
