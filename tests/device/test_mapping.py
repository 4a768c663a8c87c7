"""DaxMapping (SPEC 2.7): raw loads of poison die, safe accessors never do."""

import errno
import signal
import time

import pytest

import daxkit
from daxkit import PAGE_SIZE as P

from ..conftest import Holder, run_py


def test_buf_is_the_device(dev):
    m = dev.map(4 * P, 8 * P)
    m.buf[0:5] = b"hello"
    assert dev.pread(5, 4 * P) == b"hello"
    dev.pwrite(b"world", 5 * P)
    assert bytes(m.buf[P : P + 5]) == b"world"
    assert len(m) == m.length == 8 * P
    m.close()


@pytest.mark.parametrize("off,length", [(100, P), (0, 0), (0, -1), (-P, P), (0, 10**12)])
def test_bad_map_arguments(dev, off, length):
    with pytest.raises(ValueError):
        dev.map(off, length)


RAW_LOAD = """
import sys, daxkit
dev = daxkit.open(sys.argv[1])
m = dev.map(0, 16 * 4096)
print("before", bytes(m.buf[0:4]), flush=True)
x = m.buf[5 * 4096 + 4000]     # a raw load from the poisoned page
print("survived", x, flush=True)
"""


@pytest.mark.parametrize("how", ["known", "latent"])
def test_raw_load_of_poisoned_page_kills_the_process(dev, how):
    dev.pwrite(b"ok!!", 0)
    if how == "known":
        dev.inject_error(5 * 8 + 1, 1)
    else:
        dev.inject_poison(5 * P + 64, 1)
    r = run_py(RAW_LOAD, dev.path)
    assert "before b'ok!!'" in r.stdout and "survived" not in r.stdout
    assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stderr)


def test_safe_read_delivers_clean_lines_then_poisonerror(dev):
    data = bytes(range(256)) * 16 * 4
    dev.pwrite(data, 0)
    m = dev.map(0, 4 * P)
    heard = []
    m.on_poison = lambda off, n: heard.append((off, n))
    dev.inject_poison(2 * P + 640, 64)
    buf = bytearray(3 * P)
    with pytest.raises(daxkit.PoisonError) as ei:
        m.readinto(buf, 0)
    e = ei.value
    assert (e.offset, e.length, e.done, e.errno) == (2 * P + 640, 64, 2 * P + 640, errno.EIO)
    assert bytes(buf[: e.done]) == data[: e.done]
    # consumption: the line is known now, on_poison heard it, and the next read fails at once
    assert m.bad_ranges() == [(2 * P + 640, 64)] and heard == [(2 * P + 640, 64)]
    with pytest.raises(daxkit.PoisonError) as ei2:
        m.read(2 * P + 100, 1000)
    assert (ei2.value.offset, ei2.value.done) == (2 * P + 640, 540)
    # past the bad line the same page is clean again, line-precisely
    assert m.read(2 * P + 704, 64) == data[2 * P + 704 : 2 * P + 768]


def test_poisonerror_offset_is_a_device_offset(dev):
    m = dev.map(8 * P, 4 * P)
    dev.inject_poison(9 * P + 128, 128)
    with pytest.raises(daxkit.PoisonError) as ei:
        m.read(0, 4 * P)
    assert (ei.value.offset, ei.value.length, ei.value.done) == (9 * P + 128, 128, P + 128)
    assert m.bad_ranges() == [(P + 128, 64)]  # mapping offsets; only the consumed line is known


def test_safe_read_of_known_software_entry(dev):
    m = dev.map(0, 4 * P)
    dev.badblocks.add("9 1")  # bytes 4608..5120, no poison behind it
    with pytest.raises(daxkit.PoisonError) as ei:
        m.read(P, P)
    assert (ei.value.offset, ei.value.length, ei.value.done) == (4608, 512, 512)


def test_write_into_poisoned_page_raises_and_does_not_clear(dev):
    m = dev.map(0, 4 * P)
    dev.inject_poison(P + 64, 64)
    with pytest.raises(daxkit.PoisonError) as ei:
        m.write(P - 10, b"x" * 100)
    assert ei.value.done == 10 and ei.value.offset == P + 64
    assert dev.poisoned_ranges() == [(P + 64, 64)]
    assert m.read(P - 10, 10) == b"x" * 10
    assert m.write(2 * P, b"fine") == 4


def test_recover_clears_and_maps_back(dev):
    m = dev.map(0, 4 * P)
    dev.inject_error(8 + 3, 1)
    dev.inject_poison(P + 2048, 64)  # latent poison in the same page goes too
    new = b"\x42" * P
    assert m.recover(P, new) == P
    assert dev.badblocks.text() == "" and dev.poisoned_ranges() == [] and m.bad_ranges() == []
    assert bytes(m.buf[P : 2 * P]) == new  # the raw mapping works again
    with pytest.raises(ValueError):
        m.recover(4 * P - 10, b"x" * 100)  # past the mapping


def test_subpage_recover_keeps_uncovered_bad_lines_as_software_poison(dev):
    """SPEC 4: a write over part of a poisoned page succeeds; the clean lines are recovered,
    the lines it covers whole are clean, the others stay reported bad -- never invented."""
    old = bytes(range(256)) * 16
    dev.pwrite(old, P)
    m = dev.map(0, 4 * P)
    dev.inject_poison(P + 128, 64)  # line A: will be covered whole
    dev.inject_poison(P + 1024, 64)  # line B: covered in part
    dev.inject_poison(P + 3000, 1)  # line C (2944..3008): not covered
    assert m.recover(P + 100, b"\xee" * 960) == 960  # bytes 100..1060 of the page
    assert dev.poisoned_ranges() == []  # the medium is clear
    assert m.bad_ranges() == [(P + 1024, 64), (P + 2944, 64)]  # B and C stay reported bad
    assert dev.badblocks.check((P + 1024) // 512, 1).status == 1  # and the block path refuses them
    got = dev.read_recover(P, P)
    want = bytearray(old)
    want[100:1060] = b"\xee" * 960
    want[1024:1088] = bytes(64)
    want[2944:3008] = bytes(64)
    assert got.data == want and got.bad == [(P + 1024, 64), (P + 2944, 64)]
    with pytest.raises(daxkit.PoisonError) as ei:
        m.read(P + 1060, 100)  # the uncovered part of line B is not invented
    assert ei.value.offset == P + 1024 and ei.value.done == 0
    assert m.read(P + 128, 64) == b"\xee" * 64  # line A is clean again
    assert m.recover(P + 1024, b"\x01" * 64) == 64 and m.recover(P + 2944, b"\x02" * 64) == 64
    assert m.bad_ranges() == [] and dev.badblocks.text() == ""
    assert bytes(m.buf[P + 2944 : P + 3008]) == b"\x02" * 64  # mapped back in


def test_on_poison_called_by_scrub(dev):
    m = dev.map(4 * P, 4 * P)
    got = []
    m.on_poison = lambda off, n: got.append((off, n))
    dev.inject_poison(5 * P + 64, 64)
    dev.inject_poison(20 * P, 64)  # outside the mapping
    assert got == []
    dev.scrub()
    assert got == [(P + 64, 64)]


def test_closed_mapping_and_closed_device(dev):
    m = dev.map(0, P)
    keep = m.buf[0:10]
    m.close()
    with pytest.raises(daxkit.DeviceGone):
        m.read(0, 1)
    assert len(bytes(keep)) == 10  # a view kept by the user stays valid
    m2 = dev.map(0, P)
    dev.close()
    with pytest.raises(daxkit.DeviceGone):
        m2.read(0, 1)


def test_kill_revokes_mappings(dev):
    m = dev.map(0, P)
    dev.kill()
    with pytest.raises(daxkit.DeviceGone) as ei:
        m.read(0, 1)
    assert ei.value.errno == errno.ENXIO


OTHER_PROCESS_INJECTS = """
import sys, daxkit
d = daxkit.open(sys.argv[1])
d.inject_error(int(sys.argv[2]), 1)
"""


def test_mapping_learns_of_poison_known_in_another_process(dev):
    m = dev.map(0, 16 * P)
    got = []
    m.on_poison = lambda off, n: got.append((off, n))
    r = run_py(OTHER_PROCESS_INJECTS, dev.path, str(3 * 8 + 2))
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 5
    while not got and time.time() < deadline:  # the watcher notices without any call from us
        time.sleep(0.01)
    assert got == [(3 * P + 1024, 256)]
    assert m.bad_ranges() == [(3 * P + 1024, 256)]
    with pytest.raises(daxkit.PoisonError):
        m.read(3 * P, P)


WATCHED_RAW_LOAD = """
import subprocess, sys, time, daxkit
dev = daxkit.open(sys.argv[1])
m = dev.map(0, 16 * 4096)
assert m.buf[7 * 4096] == 0
inject = "import sys, daxkit; daxkit.open(sys.argv[1]).inject_error(57, 1)"
subprocess.run([sys.executable, "-c", inject, sys.argv[1]], check=True)
time.sleep(0.5)                 # no daxkit call: the watcher must have unmapped the page
print("loading", flush=True)
x = m.buf[7 * 4096 + 100]
print("survived", flush=True)
"""


def test_raw_load_dies_after_another_process_makes_poison_known(dev):
    r = run_py(WATCHED_RAW_LOAD, dev.path)
    assert "loading" in r.stdout and "survived" not in r.stdout, r.stderr
    assert r.returncode == -signal.SIGSEGV


def test_holder_hears_consumption_through_mapping(dev):
    h = Holder()
    dev.holder = h
    m = dev.map(0, 4 * P)
    dev.inject_poison(3 * P + 64, 1)
    with pytest.raises(daxkit.PoisonError):
        m.read(3 * P, 200)
    assert h.calls == [(3 * P, P, daxkit.MF_ACTION_REQUIRED)]
