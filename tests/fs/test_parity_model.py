"""A stateful test of a parity-protected daxfs against a plain model (path -> bytearray), through
public names only (SPEC 4.2, issue 7): random writes, truncates, punches, mapping stores with
persist, latent and notified poison and bit flips behind the filesystem's back (at most one
damaged page per parity group, across all files), remounts, and kills of a forked writer at a
random instant.  Zero wrong bytes, zero losses within the guarantee; one rule goes beyond it (two
pages of one group) and demands an exact loss report and EIO on exactly those ranges.

Rules of the model
  * ``damaged`` maps a group (its parity offsets) to the device page damaged in it.  A group is
    damaged at most once until ``fs.repair()`` runs (conservative: a write or read may have healed
    it earlier); groups lost beyond the guarantee are never damaged again.
  * ``flipped`` holds device pages with flipped bytes that nothing has verified yet: silent
    corruption reads as it is until a repair (the no-poison fast path is unchanged), so those
    file pages are not compared.  A write touching the page verifies it first (the parity update
    checks the old page's CRC), a mapping scrubs its groups when made, and a repair rebuilds it.
  * A kill is only done with no damage outstanding (a torn parity update plus a damaged page of
    the same group is two faults), except the kill of a repair, which must complete on remount.

DAXKIT_FS_MODEL_EXAMPLES sets the number of examples (default 25)."""

import errno
import os
import shutil
import signal
import tempfile
import time

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import daxkit

P = 4096
SECT = 512
GROUP = 16
PATHS = ["/a", "/b", "/c", "/d"]
MAXSIZE = 24 * P
PUNCH = daxkit.FALLOC_FL_PUNCH_HOLE | daxkit.FALLOC_FL_KEEP_SIZE
paths = st.sampled_from(PATHS)
offsets = st.integers(0, MAXSIZE)
lengths = st.integers(1, 3 * P + 100)


def _set(buf: bytearray, off: int, data: bytes) -> None:
    if len(buf) < off:
        buf.extend(bytes(off - len(buf)))
    buf[off : off + len(data)] = data


def apply_op(model: dict, op: tuple) -> None:
    """What ``op`` does to the model (the same ops the forked writer runs)."""
    kind, path = op[0], op[1]
    if kind == "write":
        _set(model.setdefault(path, bytearray()), op[2], op[3])
    elif kind == "truncate":
        buf = model.setdefault(path, bytearray())
        del buf[op[2] :]
        buf.extend(bytes(op[2] - len(buf)))
    elif kind == "punch":
        buf = model.setdefault(path, bytearray())
        end = min(len(buf), op[2] + op[3])
        if op[2] < end:
            buf[op[2] : end] = bytes(end - op[2])


def run_op(fs, op: tuple) -> None:
    kind, path = op[0], op[1]
    with fs.open(path, "r+" if fs.exists(path) else "w+") as f:
        if kind == "write":
            assert f.pwrite(op[3], op[2]) == len(op[3])
        elif kind == "truncate":
            f.truncate(op[2])
        elif kind == "punch":
            f.fallocate(PUNCH, op[2], op[3])


ops = st.one_of(
    st.tuples(st.just("write"), paths, offsets, st.binary(min_size=1, max_size=2 * P + 300)),
    st.tuples(st.just("truncate"), paths, offsets),
    st.tuples(st.just("punch"), paths, offsets, lengths),
)


class ParityFSModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="daxkit-fsmodel-")
        self.img = os.path.join(self.dir, "p.img")
        self.dev = daxkit.create(self.img, "8M")
        daxkit.mkfs(self.dev, redundancy="parity", parity_group=GROUP)
        self.fs = daxkit.mount(self.dev)
        self.model: dict[str, bytearray] = {}
        self.damaged: dict[tuple, int] = {}  # group -> damaged device page offset
        self.flipped: set[int] = set()  # device pages with unverified flipped bytes
        self.flipped_since_repair: set[int] = set()
        self.burnt: set[tuple] = set()  # groups that lost pages beyond the guarantee
        self.kills: list[tuple] = []  # (steps done, the op in flight) of each kill, for messages

    def teardown(self):
        try:
            if self.fs is not None:
                assert self.fs.repair().lost == []
                self.fs.unmount()
            self.dev.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------------
    def _pages(self, path):
        """{file page index: device page offset} of the file's allocated pages."""
        out = {}
        for e in self.fs.bmap(path):
            for i in range(e["length"] // P):
                out[e["offset"] // P + i] = e["sector"] * SECT + i * P
        return out

    def _group(self, dev_off):
        return tuple(self.fs.parity_group(dev_off)["parity"])

    def _forget_flips(self, path, lo, hi):
        """File pages [lo, hi) of ``path`` were written or verified: their flips are gone."""
        if not self.flipped or path not in self.model:
            return
        for idx, off in self._pages(path).items():
            if lo <= idx < hi:
                self.flipped.discard(off)

    def _do(self, op):
        run_op(self.fs, op)
        apply_op(self.model, op)
        if op[0] == "write":  # pages written whole hold the new bytes, whatever was there
            self._forget_flips(op[1], -(-op[2] // P), (op[2] + len(op[3])) // P)

    def _read_all(self, path, want=None):
        with self.fs.open(path) as f:
            got = f.read()
        want = self.model[path] if want is None else want
        assert len(got) == len(want), (path, len(got), len(want))
        if got == want:
            return got
        skip = {i for i, off in self._pages(path).items() if off in self.flipped}
        for i in range(0, len(want), P):
            if i // P not in skip and got[i : i + P] != want[i : i + P]:
                bad = [j for j in range(i, min(i + P, len(want))) if got[j] != want[j]]
                at = bad[0]
                raise AssertionError(f"{path} differs at {at}..{bad[-1]} ({len(bad)} bytes): "
                                     f"got {got[at : at + 16]!r} want {want[at : at + 16]!r}; "
                                     f"kills: {self.kills[-3:]}")  # fmt: skip
        return got

    def _victim(self, path, idx, *, whole=False):
        """A device page of ``path`` (its idx-th allocated page) in a group without damage."""
        if path not in self.model:
            return None
        pages = sorted(self._pages(path).items())
        if whole:
            pages = [(i, o) for i, o in pages if (i + 1) * P <= len(self.model[path])]
        if not pages:
            return None
        i, off = pages[idx % len(pages)]
        g = self._group(off)
        if g in self.damaged or g in self.burnt:
            return None
        return i, off, g

    # -- rules -----------------------------------------------------------------------------------
    @rule(op=ops)
    def operate(self, op):
        self._do(op)

    @rule(path=paths)
    def unlink(self, path):
        if path in self.model:
            self.fs.unlink(path)
            del self.model[path]

    @rule(path=paths, at=st.integers(0, MAXSIZE), data=st.binary(min_size=1, max_size=P + 200),
          persist=st.booleans())  # fmt: skip
    def mapping_store(self, path, at, data, persist):
        size = len(self.model.get(path, b""))
        if size == 0:
            return
        at %= size
        data = data[: size - at]
        with self.fs.open(path, "r+") as f:
            m = f.mmap()  # scrubs the mapped groups: flips there are rebuilt
            m.buf[at : at + len(data)] = data
            if persist:
                m.persist()
            m.close()
        self.model[path][at : at + len(data)] = data
        self._forget_flips(path, 0, (size + P - 1) // P)

    @rule(path=paths, idx=st.integers(0, 100), sector=st.integers(0, 7), notify=st.booleans(),
          then=st.one_of(st.none(), ops))  # fmt: skip
    def poison(self, path, idx, sector, notify, then):
        v = self._victim(path, idx)
        if v is None:
            return
        _, off, g = v
        self.dev.inject_error(off // SECT + sector, 1, notify=notify)
        self.damaged[g] = off
        if notify:
            assert self.fs.scan() == []  # repaired before anyone hears of it
        if then is not None:
            self._do(then)  # an operation meeting the poison before the reads below do

    @rule(path=paths, idx=st.integers(0, 100), at=st.integers(0, P - 1), n=st.integers(1, 64))
    def flip(self, path, idx, at, n):
        v = self._victim(path, idx)
        if v is None:
            return
        _, off, g = v
        n = min(n, P - at)
        old = self.dev.pread(n, off + at)
        self.dev.pwrite(bytes(b ^ 0x5A for b in old), off + at)  # behind the filesystem's back
        self.damaged[g] = off
        self.flipped.add(off)
        self.flipped_since_repair.add(off)

    @rule()
    def repair(self):
        rep = self.fs.repair()
        assert rep.lost == [], rep.as_dict()
        for s, n in rep.corrupt:  # only what was flipped is found corrupt
            assert s // P * P in self.flipped_since_repair and (s + n - 1) // P == s // P, (s, n)
        assert self._scan() == []
        self.damaged.clear()
        self.flipped.clear()
        self.flipped_since_repair.clear()

    @rule()
    def remount(self):
        self.fs.unmount()
        self.fs = daxkit.mount(self.dev)

    @rule(work=st.lists(ops, min_size=1, max_size=6), delay=st.floats(0, 0.02))
    def kill_writer(self, work, delay):
        """A forked writer runs ``work`` and is SIGKILLed at a random instant; every op it reported
        done is in the files, the one in flight left each byte old or new.  (No preconditions on
        state here: what a kill leaves varies from run to run, and hypothesis wants the same
        choices to draw the same rules.)"""
        if self.damaged:
            return
        done = self._killed([lambda fs, op=op: run_op(fs, op) for op in work], delay)
        self.kills.append((done, work[done] if done < len(work) else None))
        for op in work[:done]:
            apply_op(self.model, op)
        if done < len(work):
            op = work[done]
            before = {p: bytearray(b) for p, b in self.model.items()}
            apply_op(self.model, op)
            path = op[1]
            if not self.fs.exists(path):
                assert path not in before
                self.model.pop(path, None)
                return
            with self.fs.open(path) as f:
                got = f.read()
            old, new = before.get(path, bytearray()), self.model[path]
            assert len(got) in (len(old), len(new)), (op[0], len(got), len(old), len(new))
            for i, b in enumerate(got):
                o = old[i] if i < len(old) else 0
                n = new[i] if i < len(new) else 0
                assert b in (o, n), (op[0], i, b, o, n)
            self.model[path] = bytearray(got)

    @rule(delay=st.floats(0, 0.01))
    def kill_repair(self, delay):
        """A repair cut off by a kill: the remount (and the next repair) completes it."""
        if not self.damaged:
            return
        self._killed([lambda fs: fs.repair()], delay)

    def _killed(self, steps, delay):
        """Run ``steps`` in a forked child on its own mount, SIGKILL it after ``delay`` seconds,
        remount; the number of steps it reported done."""
        self.fs.unmount()
        self.fs = None
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(r)
                fs = daxkit.mount(daxkit.open(self.img))
                os.write(w, b"r")
                for step in steps:
                    step(fs)
                    os.write(w, b"d")
                time.sleep(60)
            finally:
                os._exit(0)
        os.close(w)
        assert os.read(r, 1) == b"r"
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        got = b""
        while chunk := os.read(r, 4096):
            got += chunk
        os.close(r)
        self.fs = daxkit.mount(self.dev)
        return len(got)

    @rule(path=paths, idx=st.integers(0, 100), sector=st.integers(0, 7))
    def beyond_the_guarantee(self, path, idx, sector):
        """Two pages of one group, the same sector of each (so no line-wise rebuild can help), both
        holding non-zero bytes (zeroes would be rebuilt right): exactly those ranges are lost."""
        v = self._victim(path, idx, whole=True)
        if v is None:
            return
        i1, a, g = v
        size = len(self.model[path])
        want = self.model[path]

        def nonzero(i):
            return any(want[i * P + sector * SECT : i * P + (sector + 1) * SECT])

        others = [(i, o) for i, o in self._pages(path).items()
                  if i != i1 and (i + 1) * P <= size and self._group(o) == g and nonzero(i)]  # fmt: skip
        if not others or not nonzero(i1):
            return
        i2, b = others[0]
        s1 = s2 = sector
        self.dev.inject_error(a // SECT + s1, 1, notify=False)
        self.dev.inject_error(b // SECT + s2, 1, notify=False)
        rep = self.fs.repair()
        lost = rep.as_dict()["lost"]
        assert lost and {d["path"] for d in lost} == {path}, lost
        pages = {i1, i2}
        for d in lost:
            assert d["offset"] // P in pages and (d["offset"] + d["length"] - 1) // P == d["offset"] // P, d
        for i, s in ((i1, s1), (i2, s2)):  # every damaged sector is in the report
            at = i * P + s * SECT
            assert any(d["offset"] <= at and at + SECT <= d["offset"] + d["length"] for d in lost), (at, lost)
        with self.fs.open(path) as f:
            for d in lost:
                try:
                    f.pread(d["length"], d["offset"])
                except OSError as e:
                    assert e.errno == errno.EIO
                else:
                    raise AssertionError(f"read of lost {d} did not fail")
            pos = 0
            for d in sorted(lost, key=lambda d: d["offset"]) + [{"offset": size, "length": 0}]:
                if d["offset"] > pos:
                    got = f.pread(d["offset"] - pos, pos)
                    assert got == bytes(want[pos : d["offset"]]), (pos, d)
                pos = d["offset"] + d["length"]
        self.fs.unlink(path)
        del self.model[path]
        self.burnt.add(g)
        self.damaged.pop(g, None)

    # -- invariants ------------------------------------------------------------------------------
    def _scan(self):
        """Known errors left: none, but for freed pages of groups lost beyond the guarantee."""
        return [
            o for o in self.fs.scan() if not (o["owner"] == "free" and self._group(o["offset"]) in self.burnt)
        ]

    @invariant()
    def files_read_back(self):
        assert sorted(p for p in PATHS if self.fs.exists(p)) == sorted(self.model)
        for path in self.model:
            self._read_all(path)
        assert self._scan() == []


ParityFSModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("DAXKIT_FS_MODEL_EXAMPLES", "25")),
    # make test replays the same examples every run; setting the variable explores new ones
    derandomize="DAXKIT_FS_MODEL_EXAMPLES" not in os.environ,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestParityFSModel = ParityFSModel.TestCase
