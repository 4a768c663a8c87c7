"""SPEC 4.2, "Metadata is always redundant" (issue 7 item 2): poison or corruption in any one
copy of any metadata structure -- superblock, checkpoint, log, the log's unused tail -- costs
nothing: a read-only mount reads around it, a read-write mount (or the holder's notify) writes
every copy afresh, fsck names each damaged copy.  Only the loss of every copy of something
needed refuses the mount, and fsck says which."""

import random
import shutil
import struct

import pytest

import daxkit
from daxkit.fs import commit, layout, superblock
from daxkit.medium.image import DATA_OFFSET

from ..conftest import daxkit_cli

MiB = 1 << 20
P = 4096
SIZE = 2 * MiB
G = layout.Geometry.for_device(SIZE)


def _page_name(page: int) -> str:
    """Which structure a metadata page belongs to, for test ids and messages."""
    if page < 2:
        return f"sb{page}"
    for copy in (0, 1):
        first = G.log_copy_start(copy)
        if first <= page < first + G.log_copy_blocks:
            return f"log{'AB'[copy]}+{page - first}"
    for area in (0, 1):
        for copy in (0, 1):
            first = G.ckpt_copy_start(area, copy)
            if first <= page < first + G.ckpt_copy_blocks:
                return f"ckpt{area}{'ab'[copy]}+{page - first}"
    return f"spare{page}"


PAGES = list(range(G.data_start))


def _populate(fs) -> None:
    fs.mkdir("/d")
    fs.mkdir("/d/e")
    for i in range(6):
        with fs.open(f"/d/f{i}", "w") as f:
            f.write(bytes([65 + i]) * (i * 2500 + 7))
    fs.sync()  # a checkpoint: the live area is area 1, both superblocks at sb_seq 2
    for i in range(6):  # and log records after it, over more than one page
        fs.rename(f"/d/f{i}", f"/d/e/g{i}")
        with fs.open(f"/h{i}", "w") as f:
            f.write(bytes([97 + i]) * (i * 1000 + 3))
    fs.unlink("/h5")
    with fs.open("/h1", "r+") as f:
        f.truncate(500)


def _contents(fs) -> dict:
    out = {}
    stack = ["/"]
    while stack:
        d = stack.pop()
        for name, st in fs.scandir(d):
            path = d.rstrip("/") + "/" + name
            if st.st_mode & 0o040000:
                stack.append(path)
                out[path] = "dir"
            else:
                with fs.open(path) as f:
                    out[path] = f.read()
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An image holding a checkpoint and live log records, and what its files hold."""
    path = str(tmp_path_factory.mktemp("redundancy") / "base.img")
    with daxkit.create(path, SIZE) as dev:
        daxkit.mkfs(dev)
        with daxkit.mount(dev) as fs:
            _populate(fs)
            assert fs.geometry == G and fs._tail > P  # records past the first log page
            tree = _contents(fs)
            info = {"tail": fs._tail, "area": fs.sb.area, "ckpt_len": fs.sb.ckpt_len}
        assert daxkit.fsck(dev)["clean"]
    return {"path": path, "tree": tree, **info}


@pytest.fixture
def image(base, tmp_path):
    path = str(tmp_path / "copy.img")
    shutil.copyfile(base["path"], path)
    dev = daxkit.open(path)
    yield dev
    dev.close()


def _all_whole(dev, tree) -> None:
    """fsck clean, nothing poisoned left, and the tree intact."""
    report = daxkit.fsck(dev)
    assert report["clean"], report["problems"]
    assert dev.poisoned_ranges() == []
    with daxkit.mount(dev, readonly=True) as fs:
        assert _contents(fs) == tree


# -- every metadata page, one at a time --------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=[_page_name(p) for p in PAGES])
def test_latent_poison_in_any_one_metadata_page_costs_nothing(base, image, page):
    image.inject_poison(page * P, 64)
    with daxkit.mount(image, readonly=True) as ro:
        assert _contents(ro) == base["tree"]
    with daxkit.mount(image) as fs:  # read-write: every copy written afresh, the poison cleared
        assert _contents(fs) == base["tree"]
        assert image.known_errors(0, G.data_start * P) == []
        with fs.open("/after", "w") as f:
            f.write(b"still writable")
    tree = dict(base["tree"], **{"/after": b"still writable"})
    _all_whole(image, tree)


@pytest.mark.parametrize("page", PAGES, ids=[_page_name(p) for p in PAGES])
def test_notified_poison_in_any_one_metadata_page_costs_nothing(base, image, page):
    with daxkit.mount(image) as fs:
        image.inject_error(page * 8, 1)  # known, and the holder hears of it
        assert _contents(fs) == base["tree"]
        with fs.open("/after", "w") as f:
            f.write(b"still writable")
    tree = dict(base["tree"], **{"/after": b"still writable"})
    _all_whole(image, tree)


# -- every copy lost -----------------------------------------------------------------------------------
def _refused(dev, *words) -> None:
    for readonly in (True, False):
        with pytest.raises(daxkit.CorruptFilesystem) as ei:
            daxkit.mount(dev, readonly=readonly)
        for w in words:
            assert w in str(ei.value), str(ei.value)
    report = daxkit.fsck(dev)
    assert not report["clean"] and all(w in report["problems"][0] for w in words), report


def test_both_copies_of_the_live_checkpoint_lost_refuses_the_mount(base, image):
    for copy in (0, 1):
        image.inject_poison(G.ckpt_copy_start(base["area"], copy) * P, 64)
    _refused(
        image, "checkpoint lost, both copies damaged", "copy a at device offset", "copy b at device offset"
    )


def test_both_superblocks_lost_refuses_the_mount(image):
    image.inject_poison(0, 64)
    image.inject_poison(P + 128, 64)
    _refused(image, "no valid daxfs superblock", "superblock copy 0", "superblock copy 1")


def test_a_committed_record_lost_in_both_log_copies_refuses_the_mount(image):
    for copy in (0, 1):
        image.inject_poison(G.log_copy_start(copy) * P + 64, 64)
    _refused(image, "metadata log damaged", "unreadable in every copy")


def test_the_filesystem_shuts_down_only_when_every_copy_is_lost(base, image):
    """A read-write mount holds every copy it needs in memory, so notified poison in any
    metadata page -- all of them at once, even -- is rewritten, never fatal."""
    with daxkit.mount(image) as fs:
        image.inject_error(0, 8 * G.data_start)
        assert _contents(fs) == base["tree"]
        fs.mkdir("/more")
    assert daxkit.fsck(image)["clean"]


# -- corruption without poison ----------------------------------------------------------------------------
def _flip(path: str, dev_off: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(DATA_OFFSET + dev_off)
        b = f.read(1)[0]
        f.seek(DATA_OFFSET + dev_off)
        f.write(bytes([b ^ (1 << bit)]))


def _copies(base) -> list[tuple[str, int, int]]:
    """(the name fsck gives the copy, device offset, live length) of every live copy."""
    area = base["area"]
    out = [(f"superblock copy {s}", s * P, P) for s in (0, 1)]
    out += [(f"checkpoint area {area} copy {c}", G.ckpt_copy_start(area, i) * P, base["ckpt_len"])
            for i, c in enumerate("ab")]  # fmt: skip
    out += [(f"metadata log copy {c}", G.log_copy_start(i) * P, base["tail"]) for i, c in enumerate("AB")]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_bit_flip_in_one_copy_is_read_around_reported_and_repaired(base, image, seed):
    rng = random.Random(seed)
    name, start, length = rng.choice(_copies(base))
    for _ in range(3):  # a few flips in one copy: still one damaged copy
        _flip(image.path, start + rng.randrange(length), rng.randrange(8))
    with daxkit.mount(image, readonly=True) as ro:
        assert _contents(ro) == base["tree"]
    report = daxkit.fsck(image)
    assert not report["clean"] and any(name in p for p in report["problems"]), (name, report)
    with daxkit.mount(image) as fs:
        assert _contents(fs) == base["tree"]
    _all_whole(image, base["tree"])


def test_a_stale_superblock_copy_left_by_a_crash_is_not_damage(base, image):
    """A crash between the two superblock writes leaves the second slot one checkpoint behind:
    fsck is clean (crashes are not damage), and a read-write mount brings it up to date."""
    with daxkit.mount(image) as fs:
        second = 1 - (fs.sb.sb_seq + 1) % 2  # the slot the next checkpoint writes last
        with open(image.path, "rb") as f:
            f.seek(DATA_OFFSET + second * P)
            old = f.read(P)
        fs.sync()
    with open(image.path, "r+b") as f:
        f.seek(DATA_OFFSET + second * P)
        f.write(old)
    assert daxkit.fsck(image)["clean"]
    with daxkit.mount(image):
        pass
    with open(image.path, "rb") as f:
        f.seek(DATA_OFFSET)
        slots = f.read(2 * P)
    assert slots[:P] == slots[P:]
    with open(image.path, "r+b") as f:  # two checkpoints behind: no crash leaves that
        f.seek(DATA_OFFSET + second * P)
        f.write(old)
    with daxkit.mount(image) as fs:
        fs.sync()
    with open(image.path, "r+b") as f:
        f.seek(DATA_OFFSET + (1 - second) * P)
        f.write(old)
    report = daxkit.fsck(image)
    assert not report["clean"] and "is stale" in report["problems"][0], report


def test_a_log_append_over_known_poison_rewrites_instead_of_shutting_down(base, image, monkeypatch):
    """Poison made known by another process can meet our append before its news reaches us: the
    whole state is in memory, so a fresh checkpoint commits the operation instead."""
    with daxkit.mount(image) as fs:
        monkeypatch.setattr(fs, "_notify_failure", lambda *args: 0)  # the news is late
        tail_page = G.log_copy_start(1) + fs._tail // P  # copy B, where the next record goes
        image.inject_error(tail_page * 8, 8)
        epoch = fs.sb.epoch
        fs.mkdir("/new")
        assert fs.sb.epoch == epoch + 1 and fs.listdir("/new") == []
    _all_whole(image, dict(base["tree"], **{"/new": "dir"}))


# -- a kill between any two stores is a crash, never damage ---------------------------------------------
class Killed(BaseException):
    """The process dies here: nothing after this store happens."""


def _kill_at(monkeypatch, module, name: str, step: int) -> None:
    real, calls = getattr(module, name), []

    def store(*args):
        if len(calls) == step:
            raise Killed()
        calls.append(args[1])
        real(*args)

    monkeypatch.setattr(module, name, store)


def _after_the_kill(path: str) -> daxkit.DaxDevice:
    dev = daxkit.open(path)
    report = daxkit.fsck(dev)
    assert report["clean"], report["problems"]
    return dev


@pytest.mark.parametrize("step", range(6))
def test_a_kill_between_any_two_log_stores_is_a_crash(base, tmp_path, monkeypatch, step):
    """The six stores of an append: record in A, in B, first word in A (the commit point), in
    B, second word in A, in B."""
    path = str(tmp_path / "kill.img")
    shutil.copyfile(base["path"], path)
    dev = daxkit.open(path)
    fs = daxkit.mount(dev)
    _kill_at(monkeypatch, commit, "meta_write", step)
    with pytest.raises(Killed):
        fs.mkdir("/new")
    monkeypatch.undo()
    dev.close()
    with _after_the_kill(path) as dev:
        with daxkit.mount(dev, readonly=True) as ro:
            assert ro.exists("/new") == (step >= 3)
        tree = dict(base["tree"], **({"/new": "dir"} if step >= 3 else {}))
        with daxkit.mount(dev):  # read-write: whatever the kill left behind is made current
            pass
        _all_whole(dev, tree)


@pytest.mark.parametrize("step", range(4))
def test_a_kill_between_any_two_checkpoint_stores_is_a_crash(base, tmp_path, monkeypatch, step):
    """The four block writes of a checkpoint: copy a, copy b, the commit slot, the other slot."""
    path = str(tmp_path / "kill.img")
    shutil.copyfile(base["path"], path)
    dev = daxkit.open(path)
    fs = daxkit.mount(dev)
    epoch = fs.sb.epoch
    _kill_at(monkeypatch, superblock, "meta_write_verified", step)
    with pytest.raises(Killed):
        fs.sync()
    monkeypatch.undo()
    dev.close()
    with _after_the_kill(path) as dev:
        with daxkit.mount(dev, readonly=True) as ro:
            assert ro.sb.epoch == epoch + (step >= 3) and _contents(ro) == base["tree"]
        with daxkit.mount(dev):
            pass
        _all_whole(dev, base["tree"])
        with open(path, "rb") as f:
            f.seek(DATA_OFFSET)
            slots = f.read(2 * P)
        assert slots[:P] == slots[P:]


# -- versions, file data, fsck --repair ------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2])
def test_an_older_filesystem_is_refused_with_what_to_do(image, version):
    """Version 3 added owners, device nodes, symlinks and hard links; older images are refused
    (not converted), with the version named and what to do."""
    with open(image.path, "r+b") as f:
        for slot in (0, 1):
            f.seek(DATA_OFFSET + slot * P)
            block = bytearray(f.read(P))
            struct.pack_into("<I", block, 8, version)
            struct.pack_into("<I", block, layout._SB_CRC_AT, layout._sb_crc(block))
            f.seek(DATA_OFFSET + slot * P)
            f.write(block)
    with pytest.raises(daxkit.CorruptFilesystem) as ei:
        daxkit.mount(image, readonly=True)
    msg = str(ei.value)
    assert f"older daxkit (daxfs version {version})" in msg and "mkfs --force" in msg, msg
    assert f"daxfs version {version}" in daxkit.fsck(image)["problems"][0]
    with pytest.raises(daxkit.DaxError, match="already holds"):
        daxkit.mkfs(image)
    daxkit.mkfs(image, force=True)
    assert daxkit.fsck(image)["clean"]


def test_fsck_lists_media_errors_in_file_data(base, image):
    with daxkit.mount(image, readonly=True) as fs:
        (ext,) = fs.bmap("/d/e/g5")
    image.inject_error(ext["sector"] + 8 * 2, 1)  # the file's third page
    report = daxkit.fsck(image)
    assert not report["clean"]
    assert any(
        p.startswith("media error in file data: /d/e/g5 at file offset 8192 (+") for p in report["problems"]
    )
    with daxkit.mount(image) as fs, fs.open("/d/e/g5", "r+") as f:
        f.pwrite(b"\x00" * P, 2 * P)  # aligned: cleared and rewritten
    assert daxkit.fsck(image)["clean"]


def test_fsck_repair_rewrites_damaged_copies(base, image):
    image.inject_poison(G.log_copy_start(0) * P + 64, 64)
    _flip(image.path, G.ckpt_copy_start(base["area"], 1) * P + 10, 3)
    report = daxkit.fsck(image)
    assert not report["clean"]
    fixed = daxkit.fsck(image, repair=True)
    assert fixed["clean"] and fixed["repaired"], fixed
    _all_whole(image, base["tree"])


def test_fsck_repair_on_the_command_line(base, image):
    path = image.path
    image.inject_poison(P, 64)  # one superblock copy
    image.close()
    r = daxkit_cli("fsck", path)
    assert r.returncode == 4 and b"superblock copy 1" in r.stdout
    r = daxkit_cli("fsck", "--repair", path)
    assert r.returncode == 0, r.stdout + r.stderr
    with daxkit.open(path) as dev:
        with daxkit.mount(dev, readonly=True) as fs:
            (ext,) = fs.bmap("/h3")
        dev.inject_error(ext["sector"], 1)  # file data: --repair cannot fix it (no parity)
    r = daxkit_cli("fsck", "--repair", path)
    assert r.returncode == 4 and b"media error in file data: /h3 at file offset 0" in r.stdout
    with daxkit.open(path) as dev, daxkit.mount(dev, readonly=True) as fs:
        area = fs.sb.area
        for copy in (0, 1):  # the checkpoint in both copies: nothing left to repair from
            dev.inject_poison(G.ckpt_copy_start(area, copy) * P, 64)
    r = daxkit_cli("fsck", "--repair", path)
    assert r.returncode == 4 and b"checkpoint lost" in r.stdout
