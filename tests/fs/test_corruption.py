"""Corrupt metadata (SPEC 3, 4.2): flip random bits in the live metadata of a daxfs.  A flip in
one copy is always reported by fsck and costs nothing (the mount reads the other copy, a
read-write mount rewrites it); flips in both copies of a structure make the mount refuse with a
clear error or fsck report the damage -- never a crash, a hang or a traceback.  A few flips
anywhere in the metadata area and the image header check the same "never" for bytes that are
not live.

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
    copies = {  # structure -> [(device offset, length) of each copy]
        "superblock": [(0, P), (P, P)],
        "checkpoint": [(g.ckpt_copy_start(sb.area, c) * P, sb.ckpt_len) for c in (0, 1)],
        "log": [(g.log_copy_start(c) * P, tail) for c in (0, 1)],
    }
    live = [copy for both in copies.values() for copy in both]
    return {"live": live, "copies": copies, "meta_end": g.data_start * P}


def verdict(path: str, repair: bool = False) -> str:
    """'refused', 'reported' or 'clean'; anything else raises.  ``repair``: after a reported
    verdict, a read-write mount must leave the filesystem clean with the same tree."""
    dev = daxkit.open(path)
    try:
        try:
            with daxkit.mount(dev, readonly=True) as fs:
                tree = {p: fs.listdir(p) for p in ("/", "/d", "/e") if fs.exists(p)}
        except daxkit.DaxError as e:
            assert str(e) and "\n" not in str(e)
            return "refused"
        if daxkit.fsck(dev)["clean"]:
            return "clean"
        if repair:
            with daxkit.mount(dev) as fs:
                assert {p: fs.listdir(p) for p in tree} == tree
            report = daxkit.fsck(dev)
            assert report["clean"], report
        return "reported"
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


def _trials(image, rng: random.Random, flips, repair_every: int = 0) -> dict:
    """Run TRIALS rounds of ``flips(rng) -> [device offsets]`` with a verdict each, restoring
    the image after every round."""
    outcomes = {"refused": 0, "reported": 0}
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for trial in range(TRIALS):
            offs = flips(rng)
            for off in offs:
                _flip(image["path"], off, rng)
            signal.alarm(10)
            try:
                v = verdict(image["path"], repair=bool(repair_every) and trial % repair_every == 0)
            except Timeout:
                pytest.fail(f"trial {trial}: flips at device offsets {offs} hung the mount")
            finally:
                signal.alarm(0)
            assert v != "clean", f"trial {trial}: flips at device offsets {offs} went unnoticed"
            outcomes[v] += 1
            _restore(image)
    finally:
        signal.signal(signal.SIGALRM, old)
    return outcomes


def test_a_flip_in_one_copy_is_always_found_and_costs_nothing(image):
    """SPEC 4.2: one damaged copy of any structure is reported, never fatal; read-write repairs."""
    assert verdict(image["path"]) == "clean"
    weights = [n for _, n in image["live"]]

    def one(rng):
        start, n = rng.choices(image["live"], weights=weights)[0]
        return [start + rng.randrange(n)]

    outcomes = _trials(image, random.Random(7), one, repair_every=10)
    assert outcomes["refused"] == 0, outcomes


def test_flips_in_both_copies_are_always_found(image):
    names = list(image["copies"])

    def both(rng):
        copies = image["copies"][rng.choice(names)]
        return [start + rng.randrange(n) for start, n in copies]

    outcomes = _trials(image, random.Random(8), both)
    assert outcomes["refused"] > 0, outcomes


def test_flips_anywhere_in_the_metadata_area_never_crash(image):
    rng = random.Random(11)
    for _ in range(min(TRIALS, 200)):
        for _ in range(rng.randrange(1, 4)):
            _flip(image["path"], rng.randrange(image["meta_end"]), rng)
        verdict(image["path"])  # any outcome but an exception that is not a DaxError
        _restore(image)


def test_the_command_line_reports_damage_in_one_line(image):
    for start, _ in image["copies"]["log"]:  # the same record damaged in both copies
        _flip(image["path"], start + 40, random.Random(3))
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
    assert layout.scan_log([bytes(log)], 3).records == []  # no commit word yet: not committed
    log[w1 : w1 + 8] = word
    assert layout.scan_log([bytes(log)], 3).records == [[["n", 5]]]
    log[w2 : w2 + 8] = word
    log[w1] ^= 1  # one word damaged: still committed
    scan = layout.scan_log([bytes(log)], 3)
    assert scan.records == [[["n", 5]]] and "commit word at 0 damaged" in scan.notes[0]
    log[w1] ^= 1
    log[20] ^= 4  # the header damaged after commit
    scan = layout.scan_log([bytes(log)], 3)
    assert scan.records == [] and scan.problems and "damaged" in scan.problems[0]
    scan = layout.scan_log([bytes(log), bytes(log)], 3)  # damaged in both copies
    assert scan.records == [] and scan.problems and "every copy" in scan.problems[0]


def test_log_copies_cover_each_other_word_by_word():
    """Two copies: damage in one loses nothing; commit words count from either copy; zero words
    in the last record are a crash between the stores (incomplete), not damage."""
    rec, w1, w2 = layout.encode_record(4, 1, [["n", 9]])
    word = layout.commit_word(4, 1)
    a, b = bytearray(P), bytearray(P)
    a[: len(rec)] = rec
    b[: len(rec)] = rec
    a[w1 : w1 + 8] = word  # the commit point alone: a crash before the other three words
    scan = layout.scan_log([bytes(a), bytes(b)], 4, bases=[8192, 8192 + P])
    assert scan.records == [[["n", 9]]] and scan.incomplete and not scan.notes
    for c in (a, b):
        c[w1 : w1 + 8] = word
        c[w2 : w2 + 8] = word
    a[30] ^= 1  # copy A's payload damaged: copy B is used, and the damage is named
    scan = layout.scan_log([bytes(a), bytes(b)], 4, bases=[8192, 8192 + P])
    assert scan.records == [[["n", 9]]] and not scan.problems and not scan.incomplete
    assert scan.notes == [
        "metadata log copy A: record 1 of epoch 4 at device offset 8192 damaged (another copy used)"
    ]
    b[w1 : w1 + 8] = bytes(8)  # copy B: zero words of a record that is not the last
    rec2, v1, v2 = layout.encode_record(4, 2, [["n", 10]])
    for c in (a, b):
        c[len(rec) : len(rec) + len(rec2)] = rec2
        c[len(rec) + v1 : len(rec) + v1 + 8] = layout.commit_word(4, 2)
        c[len(rec) + v2 : len(rec) + v2 + 8] = layout.commit_word(4, 2)
    scan = layout.scan_log([bytes(a), bytes(b)], 4)
    assert len(scan.records) == 2 and any("copy B" in n and "missing" in n for n in scan.notes)


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
    assert len(layout.scan_log([bytes(log)], 5).records) == 3
    log[wiped[0] : wiped[1]] = bytes(wiped[1] - wiped[0])
    scan = layout.scan_log([bytes(log)], 5)
    assert len(scan.records) == 1 and scan.problems and "follows an unreadable record 2" in scan.problems[0]
    scan = layout.scan_log([bytes(log), bytes(log)], 5)  # wiped in both copies: the same
    assert len(scan.records) == 1 and "follows an unreadable record 2" in scan.problems[0]
