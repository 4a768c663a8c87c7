"""Corrupt metadata (SPEC 3): flip random bits in the live metadata of a daxfs; every time the
mount refuses with a clear error or fsck reports the damage -- never a crash, a hang or a
traceback.  A few flips anywhere in the metadata area and the image header check the same
"never" for bytes that are not live.

`make test` runs 500 trials; DAXKIT_CORRUPT_TRIALS sets another number."""

import os
import random
import signal

import pytest

import daxkit
from daxkit.fs import layout
from daxkit.medium.image import DATA_OFFSET

from ..conftest import daxkit_cli

TRIALS = int(os.environ.get("DAXKIT_CORRUPT_TRIALS", "500"))
P = 4096


def build(path: str) -> dict:
    """An image whose metadata has two superblocks, a checkpoint and live log records."""
    with daxkit.create(path, "8M") as dev:
        daxkit.mkfs(dev)
        with daxkit.mount(dev) as fs:
            fs.mkdir("/d")
            for i in range(20):
                with fs.open(f"/d/f{i}", "w") as f:
                    f.write(bytes([i]) * (i * 700 + 1))
            fs.sync()  # a checkpoint: both superblock slots in use
            for i in range(10):
                fs.rename(f"/d/f{i}", f"/d/g{i}")
            fs.mkdir("/e")
            g, sb, tail = fs.geometry, fs.sb, fs._tail
    live = [(0, 2 * P), (g.ckpt_start(sb.area) * P, sb.ckpt_len), (g.log_start * P, tail)]
    return {"live": live, "meta_end": g.data_start * P}


def verdict(path: str) -> str:
    """'refused', 'reported' or 'clean'; anything else raises."""
    dev = daxkit.open(path)
    try:
        try:
            with daxkit.mount(dev, readonly=True) as fs:
                for p in ("/", "/d", "/e"):
                    if fs.exists(p):
                        fs.listdir(p)
        except daxkit.DaxError as e:
            assert str(e) and "\n" not in str(e)
            return "refused"
        return "clean" if daxkit.fsck(dev)["clean"] else "reported"
    finally:
        dev.close()


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


@pytest.fixture
def image(tmp_path):
    path = str(tmp_path / "corrupt.img")
    info = build(path)
    with open(path, "rb") as f:
        f.seek(DATA_OFFSET)
        info["original"] = f.read(info["meta_end"])
    info["path"] = path
    return info


def _flip(path: str, dev_off: int, rng: random.Random) -> None:
    with open(path, "r+b") as f:
        f.seek(DATA_OFFSET + dev_off)
        b = f.read(1)[0]
        f.seek(DATA_OFFSET + dev_off)
        f.write(bytes([b ^ (1 << rng.randrange(8))]))


def _restore(info) -> None:
    with open(info["path"], "r+b") as f:
        f.seek(DATA_OFFSET)
        f.write(info["original"])


def test_flips_in_live_metadata_are_always_found(image):
    rng = random.Random(7)
    assert verdict(image["path"]) == "clean"
    weights = [n for _, n in image["live"]]
    outcomes = {"refused": 0, "reported": 0}
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for trial in range(TRIALS):
            start, n = rng.choices(image["live"], weights=weights)[0]
            off = start + rng.randrange(n)
            _flip(image["path"], off, rng)
            signal.alarm(10)
            try:
                v = verdict(image["path"])
            except Timeout:
                pytest.fail(f"trial {trial}: a flip at device offset {off} hung the mount")
            finally:
                signal.alarm(0)
            assert v != "clean", f"trial {trial}: a flip at device offset {off} went unnoticed"
            outcomes[v] += 1
            _restore(image)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert outcomes["refused"] > 0


def test_flips_anywhere_in_the_metadata_area_never_crash(image):
    rng = random.Random(11)
    for _ in range(min(TRIALS, 200)):
        for _ in range(rng.randrange(1, 4)):
            _flip(image["path"], rng.randrange(image["meta_end"]), rng)
        verdict(image["path"])  # any outcome but an exception that is not a DaxError
        _restore(image)


def test_the_command_line_reports_damage_in_one_line(image):
    live_log = image["live"][2]
    _flip(image["path"], live_log[0] + 40, random.Random(3))
    for verb in ("ls", "fsck", "scan"):
        r = daxkit_cli(verb, image["path"])
        err = r.stderr.decode()
        assert r.returncode != 0 and "Traceback" not in err, err
        if verb == "fsck":
            assert b'"clean": false' in r.stdout and r.returncode == 4
        else:
            assert err.startswith("daxkit: error: ") and err.count("\n") == 1


def test_no_valid_record_is_mistaken_for_a_torn_tail():
    """The commit words: a record written but not committed is a tail; committed then damaged
    is damage."""
    rec, w1, w2 = layout.encode_record(3, 1, [["n", 5]])
    word = layout.commit_word(3, 1)
    log = bytearray(P)
    log[: len(rec)] = rec
    assert layout.scan_log(bytes(log), 3)[0] == []  # no commit word yet: not committed
    log[w1 : w1 + 8] = word
    assert layout.scan_log(bytes(log), 3)[0] == [[["n", 5]]]
    log[w2 : w2 + 8] = word
    log[w1] ^= 1  # one copy damaged: still committed
    assert layout.scan_log(bytes(log), 3)[0] == [[["n", 5]]]
    log[w1] ^= 1
    log[20] ^= 4  # the header damaged after commit
    recs, tail, problems = layout.scan_log(bytes(log), 3)
    assert recs == [] and problems and "damaged" in problems[0]


def test_a_wiped_middle_record_is_damage_not_a_tail():
    """A committed record zeroed whole (what clear-errors does to a poisoned log page) must not
    make replay stop quietly before the committed records after it."""
    log = bytearray(P)
    pos = 0
    for seq in (1, 2, 3):
        rec, w1, w2 = layout.encode_record(5, seq, [["n", 10 + seq]])
        word = layout.commit_word(5, seq)
        rec = bytearray(rec)
        rec[w1 : w1 + 8] = word
        rec[w2 : w2 + 8] = word
        log[pos : pos + len(rec)] = rec
        if seq == 2:
            wiped = (pos, pos + len(rec))
        pos += len(rec)
    assert len(layout.scan_log(bytes(log), 5)[0]) == 3
    log[wiped[0] : wiped[1]] = bytes(wiped[1] - wiped[0])
    recs, tail, problems = layout.scan_log(bytes(log), 5)
    assert len(recs) == 1 and problems and "follows an unreadable record 2" in problems[0]
