"""A stateful test against a bytes model: random stores, mapping stores with persist, latent and
notified poison and bit flips behind the layer (at most one bad page per group at a time),
repairs and reopens.  Zero wrong bytes, zero losses."""

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import daxkit
from daxkit.redundancy import ParityDevice, format_parity

P = daxkit.PAGE_SIZE
GROUP = 8
SIZE = 1 << 20


class ParityModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"parity-model-{os.getpid()}")
        os.makedirs(self.dir, exist_ok=True)
        self.img = os.path.join(self.dir, "m.img")
        lower = daxkit.create(self.img, SIZE, force=True)
        format_parity(lower, group=GROUP)
        self.dev = ParityDevice(lower)
        self.npages = self.dev.size // P
        self.base = self.dev.geometry.data_start * P
        self.want = bytearray(self.dev.size)
        self.bad: dict[int, tuple[int, str]] = {}  # group -> (page, "latent" | "flip")
        self.told = []
        self.dev.holder = self

    def notify_failure(self, offset, length, flags):
        self.told.append((offset, length, flags))
        return 0

    def teardown(self):
        self.dev.close()

    def _pages(self, off, n):
        return range(off // P, (off + n - 1) // P + 1)

    def _clear(self, off, n, kinds=("latent", "flip")):
        for page in self._pages(off, n):
            g = page // GROUP
            if g in self.bad and self.bad[g][0] == page and self.bad[g][1] in kinds:
                del self.bad[g]

    def _readable(self, off, n):
        return all(self.bad.get(p // GROUP, (None, ""))[0] != p or self.bad[p // GROUP][1] != "flip"
                   for p in self._pages(off, n))  # fmt: skip

    @rule(page=st.integers(0, 10**6), lead=st.integers(0, 2 * P), n=st.integers(1, 3 * P),
          whole=st.booleans())  # fmt: skip
    def store(self, page, lead, n, whole):
        if whole:
            off, n = (page % self.npages) * P, P
        else:
            off = min(page * 64 + lead, self.dev.size - 1) % self.dev.size
            n = min(n, self.dev.size - off)
        data = os.urandom(n)
        assert self.dev.store(data, off) == n
        self.want[off : off + n] = data
        self._clear(off, n)  # a store repairs or verifies what it touches first

    @rule(page=st.integers(0, 10**6), n=st.integers(1, 3 * P))
    def read(self, page, n):
        off = (page * 64) % self.dev.size
        n = min(n, self.dev.size - off)
        if not self._readable(off, n):
            return  # silent corruption reads as it is until a scrub: not asked here
        buf = bytearray(n)
        assert self.dev.mc_read(buf, off) == n
        assert buf == self.want[off : off + n]
        self._clear(off, n, ("latent",))

    @rule(page=st.integers(0, 10**6), first=st.integers(0, 63), lines=st.integers(1, 64),
          notify=st.booleans())  # fmt: skip
    def poison(self, page, first, lines, notify):
        page %= self.npages
        if page // GROUP in self.bad:
            return  # beyond the guarantee: not this test's business
        pos = self.base + page * P + first * 64
        lines = min(lines, 64 - first)
        if notify:
            s, e = pos // 512, (pos + lines * 64 - 1) // 512
            self.dev.lower.inject_error(s, e - s + 1, saturate=True)  # repaired as we are told
            # A notified injection is an address range scrub: every latent line on the device
            # becomes known too, and is repaired as it is told (flips stay silent).
            self.bad = {g: b for g, b in self.bad.items() if b[1] == "flip"}
        else:
            self.dev.lower.inject_poison(pos, lines * 64)
            self.bad[page // GROUP] = (page, "latent")

    @rule(page=st.integers(0, 10**6), at=st.integers(0, P - 1), n=st.integers(1, 16))
    def flip(self, page, at, n):
        page %= self.npages
        if page // GROUP in self.bad:
            return
        n = min(n, P - at)
        pos = self.base + page * P + at
        self.dev.lower.store(bytes(b ^ 0xA5 for b in self.want[page * P + at : page * P + at + n]), pos)
        self.bad[page // GROUP] = (page, "flip")

    @rule(page=st.integers(0, 10**6), k=st.integers(1, 3), at=st.integers(0, 3 * P), n=st.integers(1, 2 * P),
          persist=st.booleans())  # fmt: skip
    def mapping(self, page, k, at, n, persist):
        off = (page % (self.npages - k)) * P
        if any(self.bad.get(p // GROUP, (None, ""))[0] == p for p in range(off // P, off // P + k)):
            return  # a raw store into a poisoned page kills the process, as on hardware
        m = self.dev.map(off, k * P)  # verifies the mapped pages (a flip there is repaired)
        at %= k * P
        n = min(n, k * P - at)
        data = os.urandom(n)
        m.buf[at : at + n] = data
        if persist:
            m.persist()
        m.close()
        self.want[off + at : off + at + n] = data
        for g in range(off // P // GROUP, (off // P + k - 1) // GROUP + 1):
            self.bad.pop(g, None)  # mapping a group scrubs it first

    @rule(verify=st.booleans())
    def repair(self, verify):
        rep = self.dev.repair(verify=verify)
        assert rep.lost == []
        if verify:
            self.bad.clear()
        # else: only known errors are repaired.  Latent poison is not known until something
        # reads it, so it stays; forgetting it here let a flip into its group (a double fault).

    @rule(page=st.integers(0, 10**6), k=st.integers(1, 3), zero=st.booleans())
    def recovery_write(self, page, k, zero):
        page %= self.npages - k
        if zero:
            self.dev.zero_page_range(page, 1)
            self.want[page * P : page * P + P] = bytes(P)
            self._clear(page * P, P)
            return
        data = os.urandom(k * P)
        assert self.dev.recovery_write(page, 0, data) == k * P
        self.want[page * P : page * P + k * P] = data
        self._clear(page * P, k * P)

    @rule(page=st.integers(0, 10**6), k=st.integers(1, 4))
    def window_read(self, page, k):
        page %= self.npages - k
        if not self._readable(page * P, k * P):
            return
        avail, view = self.dev.direct_access(page, k)
        buf = bytearray(avail * P)
        if daxkit.copy_mc(buf, view) == 0:  # latent poison faults: then the safe read
            assert buf == self.want[page * P : (page + avail) * P]
        buf = bytearray(k * P)
        assert self.dev.read_recover_into(buf, page * P) == []
        assert buf == self.want[page * P : (page + k) * P]
        self._clear(page * P, k * P, ("latent",))

    @rule()
    def crash(self):
        """The process dies after its last call returned: nothing closed, nothing settled.
        (Its memory dies with it: the layer's view of the lower device, which would keep that
        device's mapping, and with it the holder's claim, alive in this process.)"""
        self.dev._par.drop_window()
        self.dev.lower.close()
        self.dev = ParityDevice(daxkit.open(self.img))
        self.dev.holder = self

    @rule()
    def reopen(self):
        self.dev.close()
        self.dev = ParityDevice(daxkit.open(self.img))
        self.dev.holder = self

    @invariant()
    def nothing_lost(self):
        assert self.told == []
        assert self.dev.lower.known_errors() == []

    @precondition(lambda self: True)
    @rule()
    def everything(self):
        buf = bytearray(self.dev.size)
        skip = {p for p, kind in self.bad.values() if kind == "flip"}
        assert self.dev.mc_read(buf, 0) == self.dev.size
        for page in range(self.npages):
            if page not in skip:
                assert buf[page * P : page * P + P] == self.want[page * P : page * P + P], page
        self.bad = {g: b for g, b in self.bad.items() if b[1] == "flip"}


ParityModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("DAXKIT_PARITY_EXAMPLES", "100")),
    # make test replays the same examples every run; setting the variable explores new ones
    derandomize="DAXKIT_PARITY_EXAMPLES" not in os.environ,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestParityModel = ParityModel.TestCase
