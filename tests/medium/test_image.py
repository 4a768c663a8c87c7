"""The image file (SPEC 2.1): geometry, refusal of bad files, atomic shared error state."""

import errno
import os
import signal
import struct
import time

import pytest

import daxkit
from daxkit.errors import ImageError, InvalidArgument
from daxkit.medium import image as imagemod

from ..conftest import daxkit_cli, file_digest, run_py

MiB = 1 << 20


def test_create_and_reopen(img):
    with daxkit.create(img, "4M", clear_err_unit=512) as d:
        assert (d.size, d.clear_err_unit) == (4 * MiB, 512)
        d.pwrite(b"persist", 0)
        d.inject_error(8, 2)
    with daxkit.open(img) as d:
        assert d.pread(7, 0) == b"persist"
        assert d.badblocks.text() == "8 2\n" and d.scrub_count == 1
    assert os.path.getsize(img) == imagemod.DATA_OFFSET + 4 * MiB


def test_create_leaves_only_the_image_behind(tmp_path):
    """The image is built beside its name and renamed in: no partial file, no leftovers."""
    path = str(tmp_path / "dev.img")
    daxkit.create(path, "1M").close()
    daxkit.create(path, "2M", force=True).close()
    with pytest.raises(InvalidArgument):
        daxkit.create(str(tmp_path / "bad.img"), 1000)
    assert os.listdir(tmp_path) == ["dev.img"]
    assert daxkit.open(path).size == 2 * MiB


@pytest.mark.parametrize("size", [0, 1000, -4096, "12Q"])
def test_bad_sizes(img, size):
    with pytest.raises(InvalidArgument):
        daxkit.create(img, size)
    assert not os.path.exists(img)


@pytest.mark.parametrize("unit", [0, 32, 100, 384])
def test_bad_clear_err_unit(img, unit):
    with pytest.raises(InvalidArgument):
        daxkit.create(img, "1M", clear_err_unit=unit)


def test_create_refuses_existing_file_unless_forced(img):
    daxkit.create(img, "1M").close()
    before = file_digest(img)
    with pytest.raises(ImageError) as ei:
        daxkit.create(img, "2M")
    assert ei.value.errno == errno.EEXIST and file_digest(img) == before
    daxkit.create(img, "2M", force=True).close()
    assert daxkit.open(img).size == 2 * MiB


def _expect_refusal(path, words):
    before = file_digest(path) if os.path.exists(path) else None
    with pytest.raises(ImageError) as ei:
        daxkit.open(path)
    msg = str(ei.value)
    assert path in msg and all(w in msg for w in words), msg
    if before is not None:
        assert file_digest(path) == before
    r = daxkit_cli("info", path)
    assert r.returncode != 0 and b"Traceback" not in r.stderr
    assert r.stderr.decode().startswith("daxkit: error: ") and r.stderr.count(b"\n") == 1
    if before is not None:
        assert file_digest(path) == before


def test_missing_file(tmp_path):
    _expect_refusal(str(tmp_path / "nope.img"), ["no such file"])


def test_not_an_image(tmp_path):
    p = tmp_path / "text.img"
    p.write_bytes(b"hello world\n" * 1000)
    _expect_refusal(str(p), ["not a daxkit image"])


def test_empty_file(tmp_path):
    p = tmp_path / "empty.img"
    p.write_bytes(b"")
    _expect_refusal(str(p), ["not a daxkit image"])


def test_truncated_image(img):
    daxkit.create(img, "4M").close()
    os.truncate(img, imagemod.DATA_OFFSET + MiB)
    _expect_refusal(img, ["truncated"])


def test_truncated_inside_info_block(img):
    daxkit.create(img, "4M").close()
    os.truncate(img, 100)
    _expect_refusal(img, ["truncated"])


def test_corrupted_info_block(img):
    daxkit.create(img, "4M").close()
    with open(img, "r+b") as f:
        f.seek(30)
        f.write(b"\xff")
    _expect_refusal(img, ["checksum"])


def test_wrong_version(img):
    daxkit.create(img, "4M").close()
    with open(img, "r+b") as f:
        raw = bytearray(f.read(imagemod.INFO_SIZE))
        struct.pack_into("<I", raw, 8, 99)
        struct.pack_into(
            "<I", raw, imagemod._INFO_CRC_AT, __import__("zlib").crc32(bytes(raw[: imagemod._INFO_CRC_AT]))
        )
        f.seek(0)
        f.write(raw)
    _expect_refusal(img, ["version 99"])


def test_corrupted_state_slots_refused(img):
    daxkit.create(img, "4M").close()
    with open(img, "r+b") as f:
        for off in (imagemod.SLOT_OFFSET, imagemod.SLOT_OFFSET + imagemod.SLOT_SIZE):
            f.seek(off + 20)
            f.write(b"garbage")
    _expect_refusal(img, ["error state"])


def _tear_newest_slot(img, gen):
    with open(img, "r+b") as f:
        for off in (imagemod.SLOT_OFFSET, imagemod.SLOT_OFFSET + imagemod.SLOT_SIZE):
            f.seek(off)
            magic, seq, where, length, _crc = imagemod._SLOT.unpack(f.read(imagemod._SLOT.size))
            if seq == gen:
                f.seek(where + 5)
                torn = bytes(b ^ 0xFF for b in f.read(3))
                f.seek(where + 5)
                f.write(torn)
                return


def test_torn_newer_slot_falls_back_to_older_state(img):
    """A crash while the new slot was being written: its checksum fails and the generation word
    still names the old state, so the old state stands."""
    with daxkit.create(img, "4M") as d:
        d.inject_error(10, 1, notify=False)  # commit, then the scrub commits: two slots in use
        d.scrub()
        gen = d._img.generation
    _tear_newest_slot(img, gen)
    with open(img, "r+b") as f:
        f.seek(imagemod.LIVE_OFFSET)
        f.write(struct.pack("<Q", gen - 1))  # not yet published when the crash came
    with daxkit.open(img) as d:
        # the older state: poison and record present, the scrub's results not yet
        assert d.injected_errors() == [{"block": 10, "count": 1}]
        assert d.scrub_count == 0 and d.badblocks.text() == ""


def test_damaged_committed_slot_is_refused(img):
    """The same damage after the state was published cannot be a crash: refuse, lose nothing."""
    with daxkit.create(img, "4M") as d:
        d.inject_error(10, 1)
        gen = d._img.generation
    _tear_newest_slot(img, gen)
    _expect_refusal(img, ["error state is corrupted"])


KILL_WORKER = """
import sys, daxkit
d = daxkit.open(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    b = (i * 7) % 4000
    d.inject_error(b, 1 + i % 5, notify=(i % 3 == 0))
    if i % 4 == 1:
        d.uninject_error(b, 1)
    if i % 5 == 2:
        d.badblocks.add(f"{(i * 13) % 4000} 2")
    if i % 7 == 3:
        d.clear_errors()
    i += 1
"""


def test_killed_writer_leaves_old_or_new_state(img):
    """A process killed at random instants in the middle of error-state updates: every time,
    the image opens and its state is whole (checksummed slot, well-formed lists)."""
    import random
    import subprocess
    import sys

    daxkit.create(img, "4M").close()
    rng = random.Random(1234)
    for _ in range(12):
        p = subprocess.Popen([sys.executable, "-c", KILL_WORKER, img], stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.15))
        p.send_signal(signal.SIGKILL)
        p.wait()
        with daxkit.open(img) as d:
            st = d._state
            # the lists are sorted and disjoint; every entry lies on the device
            for ivs in (st.poison, st.bad_ranges):
                assert all(a[1] < b[0] for a, b in zip(ivs, ivs[1:]))
                assert all(0 <= s < e <= d.size for s, e in ivs)
            assert all(e.sector + e.count <= d.size // 512 for e in d.badblocks)
            d.pwrite(b"still works", d.size - 4096)
            assert d.pread(11, d.size - 4096) == b"still works"


def test_generation_word_is_the_only_cost_when_nothing_changed(img):
    with daxkit.create(img, "1M") as d:
        loads = []
        real = d._img.load
        d._img.load = lambda: loads.append(1) or real()
        for _ in range(100):
            d.pread(512, 0)
        assert loads == []
        r = run_py("import sys, daxkit; daxkit.open(sys.argv[1]).inject_poison(4096, 1)", img)
        assert r.returncode == 0, r.stderr
        d.pread(512, 0)
        assert loads == [1]
