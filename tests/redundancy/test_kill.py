"""Kills at random instants: in stores, parity updates, repairs, persists, opens.  After each,
the device opens, its parity and checksums are current (a full verify finds nothing to fix)
and every acknowledged store's bytes are there.  DAXKIT_PARITY_KILLS sets how many kills."""

import os
import random
import signal
import time

import daxkit
from daxkit.redundancy import ParityDevice, format_parity

from .conftest import GROUP, MiB, P

KILLS = int(os.environ.get("DAXKIT_PARITY_KILLS", "20"))


def payload(seq: int, n: int) -> bytes:
    return random.Random(seq).randbytes(n)


def worker(img: str, logpath: str, seed: int) -> None:
    """Random stores, mapping stores with persist, writes over poison, poison (latent and
    notified) read back at once, repairs -- forever, until killed.  Every data write is logged
    "B seq kind off n" before and "E seq" after it returns."""
    rnd = random.Random(seed)
    log = os.open(logpath, os.O_WRONLY | os.O_APPEND)
    lower = daxkit.open(img)
    dev = ParityDevice(lower)
    base = dev.geometry.data_start * P
    npages = dev.size // P
    seq = seed * 1_000_000
    while True:
        seq += 1
        op = rnd.random()
        if op < 0.55:
            n = P if rnd.random() < 0.5 else rnd.randrange(1, 3 * P)
            off = rnd.randrange(npages) * P if n == P else rnd.randrange(dev.size - n)
            n = min(n, dev.size - off)
            os.write(log, f"B {seq} s {off} {n}\n".encode())
            dev.store(payload(seq, n), off)
            os.write(log, f"E {seq}\n".encode())
        elif op < 0.7:
            page = rnd.randrange(npages)
            first = rnd.randrange(64)
            lower.inject_poison(base + page * P + first * 64, rnd.randrange(1, 65 - first) * 64)
            dev.mc_read(bytearray(P), page * P)  # repaired on the way
        elif op < 0.8:
            sector = (base + rnd.randrange(npages) * P) // 512 + rnd.randrange(8)
            lower.inject_error(sector, 1)  # the repair runs as we are told
        elif op < 0.88:
            k = rnd.randrange(1, 4)
            off = rnd.randrange(npages - k) * P
            m = dev.map(off, k * P)
            s, n = rnd.randrange(k * P), rnd.randrange(1, 2 * P)
            n = min(n, k * P - s)
            os.write(log, f"B {seq} s {off + s} {n}\n".encode())
            m.buf[s : s + n] = payload(seq, n)
            m.persist()
            os.write(log, f"E {seq}\n".encode())
            m.close()
        elif op < 0.94:
            page = rnd.randrange(npages)
            lower.inject_error((base + page * P) // 512, 1, notify=False)
            lower.scrub()  # known, and repaired as we are told; then written over
            os.write(log, f"B {seq} z {page * P} {P}\n".encode())
            dev.zero_page_range(page, 1)
            os.write(log, f"E {seq}\n".encode())
        else:
            dev.repair(verify=rnd.random() < 0.3)


def expected(logpath: str, base: bytes) -> tuple[bytearray, list[tuple[int, bytes]]]:
    """The bytes every acknowledged write left over ``base``, and the writes in flight (their
    ranges may hold old or new bytes, byte by byte)."""
    want = bytearray(base)
    begun: dict[int, tuple[str, int, int]] = {}
    for line in open(logpath).read().splitlines():
        f = line.split()
        if f[0] == "B":
            begun[int(f[1])] = (f[2], int(f[3]), int(f[4]))
        else:
            seq = int(f[1])
            kind, off, n = begun.pop(seq)
            want[off : off + n] = bytes(n) if kind == "z" else payload(seq, n)
    flight = [(off, bytes(n) if kind == "z" else payload(seq, n)) for seq, (kind, off, n) in begun.items()]
    return want, flight


def test_kills_leave_current_parity_and_acknowledged_bytes(tmp_path):
    img = str(tmp_path / "kill.img")
    logpath = str(tmp_path / "log")
    lower = daxkit.create(img, 8 * MiB)
    format_parity(lower, group=GROUP)
    dev = ParityDevice(lower)
    base = bytes(dev.size)
    dev.close()
    rnd = random.Random(os.environ.get("DAXKIT_PARITY_SEED", time.time_ns()))
    for i in range(1, KILLS + 1):
        open(logpath, "w").close()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                worker(img, logpath, i)
            finally:
                os._exit(1)
        time.sleep(rnd.uniform(0.02, 0.25))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        dev = ParityDevice(daxkit.open(img))
        try:
            rep = dev.repair(verify=True)
            assert rep.corrupt == [] and rep.lost == [] and rep.metadata == [], (i, rep)
            got = bytearray(dev.size)
            assert dev.mc_read(got, 0) == dev.size
            want, flight = expected(logpath, base)
            for off, new in flight:  # a torn write: each byte old or new
                for j, b in enumerate(new):
                    if got[off + j] == b:
                        want[off + j] = b
            if got != want:
                first = next(j for j in range(len(got)) if got[j] != want[j])
                raise AssertionError(f"kill {i}: wrong byte at {first} (page {first // P})")
        finally:
            dev.close()
        base = bytes(got)  # the next round starts from the verified state
