"""The error state has no fixed ceiling (SPEC 3, last bullet; issue 6 item 6): a large injection
or scrub works, is still committed atomically, is seen by other processes, and a limit that
remains (the file system's space) refuses the change before anything changes."""

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib

import pytest

import daxkit
from daxkit.errors import DaxError, ImageError
from daxkit.medium import image as imagemod
from daxkit.medium.image import Image
from daxkit.medium.state import ErrorState

from ..conftest import daxkit_cli, run_py

MiB = 1 << 20
BLOCKS = 30000


def _expect_30000(media: dict) -> None:
    assert media["badblock_count"] == BLOCKS
    entries = media["badblocks"]
    assert sum(e["length"] for e in entries) == BLOCKS
    assert entries[0] == {"offset": 0, "length": 512} and entries[-1] == {"offset": 58 * 512, "length": 304}


def test_inject_30000_blocks_then_scrub(img):
    with daxkit.create(img, "64M") as d:
        t = time.perf_counter()
        d.inject_error(0, BLOCKS, notify=False)
        report = d.scrub()
        elapsed = time.perf_counter() - t
        _expect_30000(d.media_errors())
        assert len(report.ranges) == BLOCKS and d.injected_errors() == [{"block": 0, "count": BLOCKS}]
        assert elapsed < 5, f"inject + scrub of {BLOCKS} blocks took {elapsed:.2f}s"
        t = time.perf_counter()
        d.clear_errors()
        assert time.perf_counter() - t < 5
        assert d.media_errors()["badblock_count"] == 0 and d.injected_errors() == []
        assert d.pread(512, 0) == bytes(512)


def test_inject_30000_blocks_through_the_cli_is_seen_by_a_holding_process(img):
    with daxkit.create(img, "64M") as d:
        t = time.perf_counter()
        r = daxkit_cli("inject-error", img, "-B", "0", "-n", str(BLOCKS))
        assert r.returncode == 0, r.stderr.decode()
        r = daxkit_cli("start-scrub", img)
        elapsed = time.perf_counter() - t
        assert r.returncode == 0, r.stderr.decode()
        assert elapsed < 10, f"CLI inject + scrub took {elapsed:.2f}s"
        _expect_30000(d.media_errors())  # this process sees it without reopening
        assert d.scrub_count == 2
    r = daxkit_cli("list", img, "-M")
    assert r.returncode == 0, r.stderr.decode()
    _expect_30000(json.loads(r.stdout))


def _every_other_line(size: int) -> list[tuple[int, int]]:
    return [(off, off + 64) for off in range(0, size, 128)]


def test_worst_case_state_every_other_line_of_64m(img):
    """The largest error state a 64 MiB device can have: every other 64-byte line poisoned."""
    daxkit.create(img, "64M").close()
    poison = _every_other_line(64 * MiB)
    im = Image(img)
    try:
        t = time.perf_counter()
        im.commit(lambda st: st.with_(poison=poison))
        commit_s = time.perf_counter() - t
    finally:
        im.close()
    with daxkit.open(img) as d:
        t = time.perf_counter()
        report = d.scrub()
        scrub_s = time.perf_counter() - t
        assert len(report.ranges) == len(poison)
        assert d.media_errors()["badblock_count"] == 64 * MiB // 512
        assert d.bad_ranges()[:2] == [(0, 64), (128, 64)]
    assert commit_s < 5 and scrub_s < 15, (commit_s, scrub_s)
    r = run_py(
        "import sys, daxkit; d = daxkit.open(sys.argv[1]); print(len(d.bad_ranges()), d.scrub_count)", img
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(len(poison)), "1"]


def _state(k: int) -> ErrorState:
    """A state whose size depends on k, from empty to far larger than a slot can hold inline."""
    n = (k * 7919) % 5 * 20000
    return ErrorState(poison=[(i * 1000, i * 1000 + 64) for i in range(n)], scrub_count=k)


def test_payloads_move_without_overlap_and_the_file_shrinks_back(img, monkeypatch):
    """Out-of-line payloads of the two slots never overlap the newest one; each commit reloads
    exactly; the image file shrinks back when the states shrink."""
    monkeypatch.setattr(imagemod, "INLINE_MAX", 4096)
    daxkit.create(img, "4M").close()
    im = Image(img)
    try:
        for k in range(1, 16):
            im.commit(lambda st, k=k: _state(k))
            fresh = Image(img)
            try:
                assert fresh.load() == (k + 1, _state(k))
            finally:
                fresh.close()
        im.commit(lambda st: ErrorState(scrub_count=99))
        im.commit(lambda st: ErrorState(scrub_count=100))
    finally:
        im.close()
    assert os.path.getsize(img) == imagemod.DATA_OFFSET + 4 * MiB


STATE_SRC = """
from daxkit.medium.state import ErrorState
def state(k):
    # from empty to 1.6 MB encoded, more than a slot holds inline
    ivs = [(i * 100, i * 100 + 64) for i in range((k * 7919) % 5 * 100000)]
    return ErrorState(poison=ivs, bad_ranges=ivs, scrub_count=k)
"""
COMMITTER = (
    STATE_SRC
    + """
import sys
from daxkit.medium import image as imagemod
imagemod.INLINE_MAX = int(sys.argv[2])
im = imagemod.Image(sys.argv[1])
print("ready", flush=True)
while True:
    im.commit(lambda st: state(st.scrub_count + 1))
"""
)


@pytest.mark.parametrize("inline_max", [4096, imagemod.SLOT_SIZE - imagemod._SLOT.size])
def test_killed_mid_commit_of_a_huge_state_leaves_old_or_new(img, inline_max):
    ns: dict = {}
    exec(STATE_SRC, ns)
    daxkit.create(img, "64M").close()
    rng = random.Random(inline_max)
    seen = set()
    for _ in range(6):
        p = subprocess.Popen([sys.executable, "-c", COMMITTER, img, str(inline_max)], stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.8))
        p.send_signal(signal.SIGKILL)
        p.wait()
        im = Image(img)  # refuses a torn state
        try:
            _, st = im.load()
        finally:
            im.close()
        assert st == ns["state"](st.scrub_count)
        seen.add(st.scrub_count)
    assert len(seen) > 1


LIMITED = """
import os, resource, signal, sys, daxkit
from daxkit.medium import image as imagemod
from daxkit.medium.state import ErrorState
imagemod.INLINE_MAX = 4096
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
d = daxkit.open(sys.argv[1])
d.inject_error(0, 4, notify=False)
# room for the injection's own state, not for the state its scrub makes
injected = ErrorState(poison=[(b * 512, b * 512 + 256) for b in range(8000)], injected=[(0, 8000)])
limit = d._img.data_end + len(injected.encode()) + 4096
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    d.inject_error(0, 8000, notify=sys.argv[2] == "notify")
except daxkit.DaxError as e:
    print("refused", e.errno)
print(d.injected_errors(), d.scrub_count)
"""


@pytest.mark.parametrize("notify", ["notify", "no-notify"])
def test_a_limit_that_remains_refuses_before_anything_changes(img, notify):
    """The file system's space is the one limit left: a commit that cannot store its state
    fails with a clear error and leaves the committed state as it was -- an injection with
    notify included (its scrub is part of the same commit, not a second one that can fail)."""
    daxkit.create(img, "4M").close()
    r = run_py(LIMITED, img, notify)
    assert r.returncode == 0, r.stderr
    if notify == "no-notify":  # the injection alone fits
        assert r.stdout.splitlines() == ["[{'block': 0, 'count': 8000}] 0"]
        return
    assert r.stdout.splitlines() == ["refused 27", "[{'block': 0, 'count': 4}] 0"]
    with daxkit.open(img) as d:
        assert d.injected_errors() == [{"block": 0, "count": 4}] and d.badblocks.text() == ""
        d.inject_error(100, 1)  # and it goes on working
        assert d.badblocks.text() == "0 4\n100 1\n"


def _newest_header(img):
    with open(img, "rb") as f:
        best = None
        for i in (0, 1):
            at = imagemod.SLOT_OFFSET + i * imagemod.SLOT_SIZE
            f.seek(at)
            fields = imagemod._SLOT.unpack(f.read(imagemod._SLOT.size))
            if best is None or fields[1] > best[1][1]:
                best = (at, fields)
    return best


def test_payload_pointer_outside_the_file_is_refused(img, monkeypatch):
    monkeypatch.setattr(imagemod, "INLINE_MAX", 4096)
    with daxkit.create(img, "4M") as d:
        d.inject_error(0, 2000, notify=False)
    at, (magic, seq, offset, length, crc) = _newest_header(img)
    assert offset >= imagemod.DATA_OFFSET + 4 * MiB  # stored past the data area
    with open(img, "r+b") as f:
        f.seek(at)
        f.write(imagemod._SLOT.pack(magic, seq, offset, 1 << 60, crc))
    with pytest.raises(ImageError, match="error state is corrupted"):
        daxkit.open(img)
    with open(img, "r+b") as f:
        f.seek(at)
        f.write(imagemod._SLOT.pack(magic, seq, offset, length, crc))
    daxkit.open(img).close()
    os.truncate(img, imagemod.DATA_OFFSET + 4 * MiB)  # the payload cut off: refused, not read short
    with pytest.raises(ImageError, match="error state is corrupted"):
        daxkit.open(img)


def test_old_images_with_inline_json_state_open(img):
    """Images written before the state could grow: v1 slot headers, JSON payloads."""
    daxkit.create(img, "4M").close()
    doc = {
        "poison": [[512, 768]],
        "injected": [[1, 2]],
        "bad_ranges": [[512, 768]],
        "badblocks": [[1, 2, 1]],
        "scrub_count": 3,
    }
    payload = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    old = struct.Struct("<4sIQI")
    with open(img, "r+b") as f:
        f.seek(imagemod.SLOT_OFFSET)
        f.write(old.pack(b"DXST", len(payload), 7, zlib.crc32(struct.pack("<Q", 7) + payload)) + payload)
        f.seek(imagemod.SLOT_OFFSET + imagemod.SLOT_SIZE)
        f.write(bytes(64))
        f.seek(imagemod.LIVE_OFFSET)
        f.write(struct.pack("<Q", 7))
    with daxkit.open(img) as d:
        assert d.badblocks.text() == "1 1\n" and d.scrub_count == 3
        assert d.injected_errors() == [{"block": 1, "count": 1}]
        d.inject_error(9, 1)
    with daxkit.open(img) as d:
        assert d.badblocks.text() == "1 1\n9 1\n" and d.scrub_count == 4


def test_state_encoding_round_trips_and_refuses_malformed_lists():
    st = ErrorState(
        poison=[(0, 64), (1 << 40, (1 << 40) + 64)],
        injected=[(0, 1)],
        bad_ranges=[(0, 64)],
        badblocks=daxkit.Badblocks([(0, 1, True), (1, 3, False)]),
        scrub_count=5,
    )
    assert ErrorState.decode(st.encode()) == st
    assert ErrorState.decode(ErrorState().encode()) == ErrorState()
    bad = ErrorState(poison=[(64, 64)]).encode()  # an empty interval
    with pytest.raises(ValueError):
        ErrorState.decode(bad)
    with pytest.raises(ValueError):
        ErrorState.decode(st.encode()[:-3])  # cut short


def test_every_block_of_a_device_injected_and_scrubbed(img):
    with daxkit.create(img, "16M") as d:
        d.inject_error(0, 16 * MiB // 512)
        assert d.media_errors()["badblock_count"] == 16 * MiB // 512
        with pytest.raises(DaxError):  # a wrong request is still refused up front
            d.inject_error(16 * MiB // 512, 1)
