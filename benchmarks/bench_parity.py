"""Costs of the parity layer, printed beside their peers (run: python benchmarks/bench_parity.py [rounds]).

Not a test (nothing is asserted): the same operations over the same random offsets on a plain
device and on a parity device of the same size, interleaved over rounds, best round kept.
Device level (store, 1 MiB store, window read, mc_read), then the filesystem on each, then the
scrub (repair(verify=True)) and the repair of one poisoned page per group in MB/s beside
copy_mc of the same bytes."""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time

from daxkit._copymc import copy_mc_bytes

import daxkit
from daxkit.redundancy import format_parity, stack

MiB = 1 << 20
P = 4096
SIZE = 64 * MiB
OPS = 20000


def best(cases: dict, rounds: int) -> dict:
    times = {k: float("inf") for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            t = time.perf_counter()
            n = fn()
            times[k] = min(times[k], (time.perf_counter() - t) / n)
    return times


def row(name: str, plain: float, parity: float, bound: str = "") -> None:
    ratio = parity / plain
    print(f"{name:34s} plain {plain * 1e6:9.2f} us   parity {parity * 1e6:9.2f} us   {ratio:6.2f}x  {bound}")


def device_cases(dev, offs, seq, buf, big):
    n = dev.size // P

    def store4k():
        s = dev.store
        for o in offs:
            s(buf, o)
        return len(offs)

    def store1m():
        s = dev.store
        for o in seq:
            s(big, o)
        return len(seq)

    def window4k():
        _, view = dev.direct_access(0, n)
        for o in offs:
            copy_mc_bytes(view, o, P)
        return len(offs)

    def mcread4k():
        dst = bytearray(P)
        r = dev.mc_read
        for o in offs:
            r(dst, o)
        return len(offs)

    return {"4 KiB random store": store4k, "1 MiB sequential store": store1m,
            "4 KiB random read (window)": window4k, "4 KiB random mc_read": mcread4k}  # fmt: skip


def fs_cases(fs, offs, seq, buf, big):
    f = fs.open("/bench", "r+")

    def pwrite4k():
        w = f.pwrite
        for o in offs:
            w(buf, o)
        return len(offs)

    def pread4k():
        r = f.pread
        for o in offs:
            r(P, o)
        return len(offs)

    def pwrite1m():
        w = f.pwrite
        for o in seq:
            w(big, o)
        return len(seq)

    return {"fs 4 KiB random pread": pread4k, "fs 4 KiB random pwrite": pwrite4k,
            "fs 1 MiB sequential pwrite": pwrite1m}  # fmt: skip


def main(rounds: int = 5) -> None:
    tmp = tempfile.mkdtemp(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    plain = daxkit.create(os.path.join(tmp, "plain.img"), SIZE)
    lower = daxkit.create(os.path.join(tmp, "parity.img"), SIZE)
    format_parity(lower)
    par = stack(lower)
    r = par.redundancy()
    print(f"parity group {r['group']} pages, space overhead {r['space_overhead']:.2%} (bound 2%)")
    rnd = random.Random(1)
    n = par.size // P
    offs = [rnd.randrange(n) * P for _ in range(OPS)]
    seq = [i * MiB for i in range(par.size // MiB - 1)]
    buf, big = os.urandom(P), os.urandom(MiB)
    a, b = device_cases(plain, offs, seq, buf, big), device_cases(par, offs, seq, buf, big)
    t = best({**{("p", k): v for k, v in a.items()}, **{("s", k): v for k, v in b.items()}}, rounds)
    for k in a:
        row(k, t[("p", k)], t[("s", k)])

    # the filesystem on each (what SPEC 8 bounds)
    fss = []
    for dev in (plain, par):
        daxkit.mkfs(dev, force=True) if "force" in daxkit.mkfs.__code__.co_varnames else daxkit.mkfs(dev)
        fs = daxkit.mount(dev)
        with fs.open("/bench", "w+") as f:
            f.pwrite(bytes(32 * MiB), 0)
        fss.append(fs)
    foffs = [o % (32 * MiB) for o in offs]
    fseq = [i * MiB for i in range(31)]
    a, b = fs_cases(fss[0], foffs, fseq, buf, big), fs_cases(fss[1], foffs, fseq, buf, big)
    t = best({**{("p", k): v for k, v in a.items()}, **{("s", k): v for k, v in b.items()}}, rounds)
    bounds = {"fs 4 KiB random pread": "(bound 1.05x)", "fs 4 KiB random pwrite": "(bound 1.5x)",
              "fs 1 MiB sequential pwrite": "(bound 1.3x)"}  # fmt: skip
    for k in a:
        row(k, t[("p", k)], t[("s", k)], bounds[k])
    for fs in fss:
        fs.unmount()

    # scrub and repair throughput beside copy_mc of the same bytes
    par.store(os.urandom(par.size), 0)
    _, view = par.direct_access(0, n)
    dst = bytearray(par.size)
    copy = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        daxkit.copy_mc(dst, view)
        copy = min(copy, time.perf_counter() - t0)
    del view
    t0 = time.perf_counter()
    par.repair(verify=True)
    verify = time.perf_counter() - t0
    mb = par.size / 1e6
    print(f"{'scrub: repair(verify=True)':34s} {mb / verify:9.0f} MB/s   copy_mc {mb / copy:9.0f} MB/s   "
          f"{copy / verify:6.3f}x")  # fmt: skip
    G = par.geometry.group
    base = par.geometry.data_start * P
    for g in range(par.geometry.ngroups):
        lower.inject_poison(base + (g * G + g % min(G, n - g * G)) * P, P)
    lower.scrub()  # we are the holder: every page is rebuilt as the news comes
    for g in range(par.geometry.ngroups):
        lower.inject_poison(base + (g * G + (g + 1) % min(G, n - g * G)) * P, 64)
    dst = bytearray(par.size)
    t0 = time.perf_counter()
    assert par.mc_read(dst, 0) == par.size  # every latent page met, consumed, rebuilt, re-read
    repair = time.perf_counter() - t0
    rep = par.repair(verify=False)
    assert not rep.lost
    print(f"{'repair on read: 1 page per group':34s} {mb / repair:9.0f} MB/s   copy_mc {mb / copy:9.0f} MB/s"
          f"   {copy / repair:6.3f}x  ({par.geometry.ngroups} pages rebuilt, {G}-page groups)")  # fmt: skip
    par.close()
    plain.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
