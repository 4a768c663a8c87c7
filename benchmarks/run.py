"""daxkit benchmarks (SPEC 8): each figure beside its peer, as a ratio, all in one run.

Method: every case runs the same number of operations over the same precomputed random
offsets; cases are interleaved over several rounds and each keeps its best round, so drift on
a shared machine hits peers alike.  No figure here is an assertion: the bounds are printed next
to the ratios for people to read."""

from __future__ import annotations

import os
import random
import re
import tempfile
import time

import daxkit

MiB = 1 << 20
DEV_SIZE = 256 * MiB


def _tmpfs_dir() -> str:
    return (
        "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    )


def _best(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        ops = fn()
        best = min(best, (time.perf_counter() - t) / ops)
    return best


class Bench:
    def __init__(self, quick: bool):
        self.quick = quick
        self.rounds = 3 if quick else 7
        self.rows: list[tuple[str, float, str, float, str]] = []

    def compare(self, name: str, cases: dict, peer_names: list[str], bounds: dict[str, str]) -> None:
        times = {k: float("inf") for k in cases}
        for _ in range(self.rounds):  # interleave: one round of each case, then again
            for k, fn in cases.items():
                times[k] = min(times[k], _best(fn, 1))
        subject = next(iter(cases))
        for peer in peer_names:
            self.rows.append((f"{name}: {subject}", times[subject], peer, times[peer], bounds.get(peer, "")))

    def report(self) -> None:
        """Each row with its peer and ratio; a bound that is not met is marked so (never hidden)."""
        missed = []
        print(f"\n{'benchmark':62s} {'time/op':>10s}  {'peer':34s} {'peer/op':>10s} {'ratio':>7s}  bound")
        for row in self.rows:
            if len(row) == 5:  # times: (name, t, peer, peer t, bound)
                name, t, peer, pt, bound = row
                value, peer_value, ratio, met = _fmt(t), _fmt(pt), f"{t / pt:6.2f}x", _met(t / pt, bound)
            else:  # preformatted: (name, value, peer, peer value, ratio text, bound, met or None)
                name, value, peer, peer_value, ratio, bound, met = row
            mark = "" if met is None else "  met" if met else "  NOT MET"
            print(f"{name:62s} {value:>10s}  {peer:34s} {peer_value:>10s} {ratio:>7s}  {bound}{mark}")
            if met is False:
                missed.append(f"{name} vs {peer}: {ratio.strip()} (bound {bound})")
        if missed:
            print(f"\nbounds not met ({len(missed)}):")
            for m in missed:
                print(f"  {m}")


def _met(ratio: float, bound: str) -> bool | None:
    """Whether ``ratio`` meets a bound written "<= 1.5x" or "< 1.0x" (None: no such bound)."""
    m = re.match(r"\s*(<=|<)\s*([0-9.]+)x", bound)
    if not m:
        return None
    limit = float(m.group(2))
    return ratio <= limit if m.group(1) == "<=" else ratio < limit


def _fmt(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    return f"{seconds * 1e3:.2f} ms"


def bench_device(b: Bench, work: str, only: str | None) -> None:
    if only and not any(k in only for k in ("4k", "1m", "badblocks", "recovery", "scrub")):
        return  # none of this group's cases is selected: spare the 256 MiB set-up
    path = os.path.join(work, "bench.img")
    dev = daxkit.create(path, DEV_SIZE, force=True)
    dev.pwrite(os.urandom(MiB) * (DEV_SIZE // MiB), 0)  # touch every page: no first-fault cost
    m = dev.map(0, DEV_SIZE)
    raw = m.buf
    sink = bytearray(MiB)
    for o in range(0, DEV_SIZE, MiB):  # fault in the mapping's pages too, before any timing
        sink[:] = raw[o : o + MiB]
    peer_path = os.path.join(work, "peer.bin")
    with open(peer_path, "wb") as f:
        f.write(os.urandom(MiB) * (DEV_SIZE // MiB))
    fd = os.open(peer_path, os.O_RDONLY)
    rng = random.Random(42)
    n4k = 2000 if b.quick else 20000
    offs = [rng.randrange(DEV_SIZE // 4096) * 4096 for _ in range(n4k)]
    buf = bytearray(4096)
    bufs = [buf]

    def dev_readinto():
        ri = dev.readinto
        for o in offs:
            ri(buf, o)
        return len(offs)

    def raw_floor():
        for o in offs:
            buf[:] = raw[o : o + 4096]
        return len(offs)

    bufv = memoryview(buf)

    def raw_floor_mv():
        for o in offs:
            bufv[:] = raw[o : o + 4096]
        return len(offs)

    def preadv():
        pv = os.preadv
        for o in offs:
            pv(fd, bufs, o)
        return len(offs)

    def m_readinto():
        ri = m.readinto
        for o in offs:
            ri(buf, o)
        return len(offs)

    def dev_pread():
        pr = dev.pread
        for o in offs:
            pr(4096, o)
        return len(offs)

    if not only or "4k" in only:
        b.compare(
            "4 KiB random reads, 256 MiB device",
            {
                "dev.readinto": dev_readinto,
                "raw floor (buf[:]=m.buf[o:o+4096])": raw_floor,
                "raw floor, memoryview dst": raw_floor_mv,
                "os.preadv tmpfs": preadv,
            },
            ["raw floor (buf[:]=m.buf[o:o+4096])", "raw floor, memoryview dst", "os.preadv tmpfs"],
            {"raw floor (buf[:]=m.buf[o:o+4096])": "<= 2.0x", "os.preadv tmpfs": "< 1.0x"},
        )
        b.compare(
            "4 KiB random reads",
            {"m.readinto": m_readinto, "raw floor": raw_floor},
            ["raw floor"],
            {},
        )
        b.compare("4 KiB random reads", {"dev.pread": dev_pread, "raw floor": raw_floor}, ["raw floor"], {})

    n1m = 30 if b.quick else 200
    offs_1m = [rng.randrange(DEV_SIZE // MiB) * MiB for _ in range(n1m)]
    big = bytearray(MiB)
    bigs = [big]

    def dev_readinto_1m():
        for o in offs_1m:
            dev.readinto(big, o)
        return len(offs_1m)

    def raw_floor_1m():
        for o in offs_1m:
            big[:] = raw[o : o + MiB]
        return len(offs_1m)

    def preadv_1m():
        for o in offs_1m:
            os.preadv(fd, bigs, o)
        return len(offs_1m)

    if not only or "1m" in only:
        b.compare(
            "1 MiB reads",
            {"dev.readinto": dev_readinto_1m, "raw floor": raw_floor_1m, "os.preadv tmpfs": preadv_1m},
            ["raw floor", "os.preadv tmpfs"],
            {"raw floor": "<= 1.15x"},
        )

    if not only or "badblocks" in only:
        # 512 entries that none of the reads meet: in the last MiB of the device
        for i in range(512):
            dev.badblocks.add(f"{(DEV_SIZE - MiB) // 512 + 2 * i} 1")
        assert len(dev.badblocks) == 512
        clean = [o for o in offs if o < DEV_SIZE - MiB]
        offs[:] = clean
        b.compare(
            "4 KiB random reads, 512 badblocks entries",
            {
                "dev.readinto": dev_readinto,
                "raw floor (buf[:]=m.buf[o:o+4096])": raw_floor,
                "raw floor, memoryview dst": raw_floor_mv,
            },
            ["raw floor (buf[:]=m.buf[o:o+4096])", "raw floor, memoryview dst"],
            {"raw floor (buf[:]=m.buf[o:o+4096])": "<= 2.5x"},
        )
        dev.clear_errors()

    if not only or "recovery" in only:
        # SPEC 8: a recovery read of 1 MiB holding 16 poisoned lines, beside a clean 1 MiB read
        base = 8 * MiB
        for i in range(16):
            dev.inject_poison(base + i * 65536 + 640, 1)
        dev.read_recover(base, MiB)  # the first touch makes them known; time the steady state
        n = 20 if b.quick else 200

        def recover_1m():
            for _ in range(n):
                dev.read_recover(base, MiB)
            return n

        def recover_into_1m():
            for _ in range(n):
                dev.read_recover_into(big, base)
            return n

        def clean_1m():
            for _ in range(n):
                dev.pread(MiB, base + 2 * MiB)
            return n

        def clean_into_1m():
            for _ in range(n):
                dev.readinto(big, base + 2 * MiB)
            return n

        b.compare("1 MiB, 16 poisoned lines", {"dev.read_recover": recover_1m, "clean dev.pread": clean_1m},
                  ["clean dev.pread"], {"clean dev.pread": "reported"})  # fmt: skip
        b.compare("1 MiB, 16 poisoned lines", {"dev.read_recover_into": recover_into_1m, "clean dev.readinto":
                  clean_into_1m}, ["clean dev.readinto"], {"clean dev.readinto": "reported"})  # fmt: skip
        dev.clear_errors()
        for i in range(16):
            dev.uninject_error((base + i * 65536) // 512, 1)

    if not only or "scrub" in only:
        raw_256m = _best(raw_floor_1m, 1) * (DEV_SIZE // MiB)  # timed before any page is poisoned
        dev.inject_error(1000, 64, notify=False)
        t = time.perf_counter()
        reps = 3 if b.quick else 10
        for _ in range(reps):
            dev.scrub()
        dt = (time.perf_counter() - t) / reps
        # The emulated ARS walks the poison list; it reads no data, so this is not a media rate.
        b.rows.append(
            (
                f"scrub, emulated ARS ({DEV_SIZE / dt / 1e9:.0f} GB/s)",
                dt,
                "raw read of 256 MiB",
                raw_256m,
                "reported",
            )
        )

    m.close()
    dev.close()
    os.close(fd)
    os.unlink(path)
    os.unlink(peer_path)


def bench_copy_mc(b: Bench, only: str | None) -> None:
    if only and "copy" not in only:
        return
    src = bytearray(os.urandom(MiB))
    dst = bytearray(MiB)
    sv, dv = memoryview(src), memoryview(dst)
    n = 200 if b.quick else 2000
    copy_mc = daxkit.copy_mc

    def mc():
        for _ in range(n):
            copy_mc(dv, sv)
        return n

    def plain():
        for _ in range(n):
            dv[:] = sv
        return n

    b.compare(
        "1 MiB copy",
        {"daxkit.copy_mc": mc, "memoryview copy (dst[:]=src)": plain},
        ["memoryview copy (dst[:]=src)"],
        {"memoryview copy (dst[:]=src)": "<= 1.1x"},
    )


def bench_fs(b: Bench, work: str, only: str | None) -> None:
    """DaxFile.pread/pwrite against os.pread/os.pwrite on a tmpfs file (SPEC 8)."""
    if only and "fs" not in only:
        return
    P = 4096
    dev = daxkit.create(os.path.join(work, "fs.img"), DEV_SIZE, force=True)
    daxkit.mkfs(dev)
    fs = daxkit.mount(dev)
    size = 64 * MiB
    blob = os.urandom(MiB)
    f = fs.open("/bench.dat", "w+")
    for o in range(0, size, MiB):
        f.pwrite(blob, o)
    peer_path = os.path.join(work, "peer.dat")
    fd = os.open(peer_path, os.O_RDWR | os.O_CREAT, 0o644)
    for o in range(0, size, MiB):
        os.pwrite(fd, blob, o)
    rng = random.Random(7)
    offs = [rng.randrange(size // P) * P for _ in range(2000 if b.quick else 20000)]
    page = blob[:P]

    def dax_pread():
        pr = f.pread
        for o in offs:
            pr(P, o)
        return len(offs)

    def os_pread():
        pr = os.pread
        for o in offs:
            pr(fd, P, o)
        return len(offs)

    def dax_pwrite():
        pw = f.pwrite
        for o in offs:
            pw(page, o)
        return len(offs)

    def os_pwrite():
        pw = os.pwrite
        for o in offs:
            pw(fd, page, o)
        return len(offs)

    seq = list(range(0, size, MiB))

    def dax_pread_1m():
        for o in seq:
            f.pread(MiB, o)
        return len(seq)

    def os_pread_1m():
        for o in seq:
            os.pread(fd, MiB, o)
        return len(seq)

    def dax_pwrite_1m():
        for o in seq:
            f.pwrite(blob, o)
        return len(seq)

    def os_pwrite_1m():
        for o in seq:
            os.pwrite(fd, blob, o)
        return len(seq)

    b.compare("daxfs 4 KiB random, 64 MiB file", {"DaxFile.pread": dax_pread, "os.pread tmpfs": os_pread},
              ["os.pread tmpfs"], {"os.pread tmpfs": "<= 1.5x"})  # fmt: skip
    b.compare("daxfs 4 KiB random, 64 MiB file", {"DaxFile.pwrite": dax_pwrite, "os.pwrite tmpfs": os_pwrite},
              ["os.pwrite tmpfs"], {"os.pwrite tmpfs": "<= 1.5x"})  # fmt: skip
    b.compare("daxfs 1 MiB sequential", {"DaxFile.pread": dax_pread_1m, "os.pread tmpfs": os_pread_1m},
              ["os.pread tmpfs"], {"os.pread tmpfs": "<= 1.1x"})  # fmt: skip
    b.compare("daxfs 1 MiB sequential", {"DaxFile.pwrite": dax_pwrite_1m, "os.pwrite tmpfs": os_pwrite_1m},
              ["os.pwrite tmpfs"], {"os.pwrite tmpfs": "<= 1.1x"})  # fmt: skip
    f.close()
    fs.unmount()
    dev.close()
    os.close(fd)


def bench_parity(b: Bench, work: str, only: str | None) -> None:
    """SPEC 4.2 / 8: the same filesystem made with redundancy "parity" beside "none", on images of
    the same size, the same file, the same offsets, interleaved; then the parity space, and the
    verify and repair rates of fs.repair() beside daxkit.copy_mc of the same bytes.

    (benchmarks/bench_parity.py breaks the same costs down at the device level.)"""
    if only and "parity" not in only:
        return
    P = 4096
    fss, devs, files = {}, {}, {}
    size = 64 * MiB
    blob = os.urandom(MiB)
    for mode in ("parity", "none"):
        dev = daxkit.create(os.path.join(work, f"{mode}.img"), DEV_SIZE, force=True)
        daxkit.mkfs(dev, redundancy=mode)
        fs = daxkit.mount(dev)
        f = fs.open("/bench.dat", "w+")
        for o in range(0, size, MiB):
            f.pwrite(blob, o)
        devs[mode], fss[mode], files[mode] = dev, fs, f
    rng = random.Random(11)
    offs = [rng.randrange(size // P) * P for _ in range(2000 if b.quick else 20000)]
    seq = list(range(0, size, MiB))
    page = blob[:P]

    def pread_4k(f):
        def run():
            pr = f.pread
            for o in offs:
                pr(P, o)
            return len(offs)

        return run

    def pwrite_4k(f):
        def run():
            pw = f.pwrite
            for o in offs:
                pw(page, o)
            return len(offs)

        return run

    def pwrite_1m(f):
        def run():
            pw = f.pwrite
            for o in seq:
                pw(blob, o)
            return len(seq)

        return run

    fp, fn = files["parity"], files["none"]
    peer = "the same, redundancy none"
    for name, what, case, bound in (
        ("daxfs parity, 4 KiB random", "DaxFile.pread", pread_4k, "<= 1.05x"),
        ("daxfs parity, 4 KiB random", "DaxFile.pwrite", pwrite_4k, "<= 1.5x"),
        ("daxfs parity, 1 MiB sequential", "DaxFile.pwrite", pwrite_1m, "<= 1.3x"),
    ):
        b.compare(name, {what: case(fp), peer: case(fn)}, [peer], {peer: bound})

    # the space parity takes: what fs.redundancy says, and the data blocks df sees beside "none"
    fs = fss["parity"]
    over = fs.redundancy["space_overhead"]
    group = fs.redundancy["group"]
    b.rows.append((f"parity space: fs.redundancy space_overhead, group {group}", f"{over:.2%}",
                   "redundancy none", f"{0:.2%}", "", "<= 2% (aim 1%)", over <= 0.02))  # fmt: skip
    blocks = {k: v.statfs()["f_blocks"] * v.statfs()["f_frsize"] for k, v in fss.items()}
    b.rows.append(("parity space: statfs data blocks (df)", f"{blocks['parity'] / MiB:.1f} MiB",
                   "redundancy none", f"{blocks['none'] / MiB:.1f} MiB",
                   f"{blocks['parity'] / blocks['none']:6.3f}x", "reported", None))  # fmt: skip

    # verify and repair: fs.repair() over a file that fills the filesystem (repair walks every
    # data page of the device, so the file's bytes are the bytes checked), beside copy_mc of as many
    for mode in ("none", "parity"):
        files[mode].close()
    fss["none"].unmount()
    fs.unlink("/bench.dat")
    st = fs.statfs()
    nbytes = (st["f_bavail"] * st["f_frsize"] - MiB) // MiB * MiB
    with fs.open("/fill.dat", "w+") as f:
        for o in range(0, nbytes, MiB):
            f.pwrite(blob, o)
    src = devs["none"].map(0, nbytes)  # same kind of memory: another image's pages, faulted in
    dst = bytearray(nbytes)
    daxkit.copy_mc(dst, src.buf)
    # one page per parity group of the file, latent (no notify: repair has to find it), each
    # round at another page of the group
    groups, seen = [], set()
    for ext in fs.bmap("/fill.dat"):
        start = ext["sector"] * 512
        for off in range(start, start + ext["length"], P):
            if off not in seen:
                data = fs.parity_group(off)["data"]
                seen.update(data)
                groups.append([d for d in data if start <= d < start + ext["length"]])
    dev = devs["parity"]
    t_copy = t_verify = t_repair = float("inf")
    repair_rounds = 2 if b.quick else b.rounds  # each round poisons and rebuilds a page per group
    for r in range(b.rounds):
        t = time.perf_counter()
        daxkit.copy_mc(dst, src.buf)
        t_copy = min(t_copy, time.perf_counter() - t)
        t = time.perf_counter()
        rep = fs.repair()
        t_verify = min(t_verify, time.perf_counter() - t)
        assert not (rep.repaired or rep.corrupt or rep.lost), "verify found damage nobody made"
        if r >= repair_rounds:
            continue
        poisoned = {g[r % len(g)] for g in groups}
        for off in poisoned:
            dev.inject_error(off // 512, P // 512, notify=False)
        t = time.perf_counter()
        rep = fs.repair()
        t_repair = min(t_repair, time.perf_counter() - t)
        rebuilt = {o // P * P for o, _ in rep.repaired}
        assert not rep.lost and poisoned <= rebuilt and not fs.scan(), "repair missed a page"
    src.close()
    mb = nbytes / 1e6
    copy = f"daxkit.copy_mc ({mb / t_copy:.0f} MB/s)"
    b.rows.append((f"parity verify, {nbytes // MiB} MiB file: fs.repair() ({mb / t_verify:.0f} MB/s)",
                   t_verify, copy, t_copy, "reported"))  # fmt: skip
    b.rows.append((f"parity repair, 1 page/group ({len(groups)}): fs.repair() ({mb / t_repair:.0f} MB/s)",
                   t_repair, copy, t_copy, "reported"))  # fmt: skip
    fs.unmount()
    for d in devs.values():
        d.close()


FUSE_JOBS = {  # name: (fio arguments, the IOPS ratio against tmpfs that issue 9 asks for)
    "4 KiB random read": (["--rw=randread", "--bs=4k"], 0.25),
    "1 MiB sequential read": (["--rw=read", "--bs=1M"], 0.6),
    "4 KiB random write": (["--rw=randwrite", "--bs=4k"], 0.10),
    "1 MiB sequential write": (["--rw=write", "--bs=1M"], 0.4),
}


def bench_fuse(b: Bench, work: str, only: str | None) -> None:
    """fio (psync, 64 MiB file) through a fresh FUSE mount beside the same job on tmpfs, one job
    after the other in one run; the ratio is IOPS through the mount over IOPS on tmpfs (higher is
    better, unlike the time ratios above)."""
    import json
    import shutil
    import subprocess
    import sys

    if only and "fuse" not in only:
        return
    if (
        shutil.which("fio") is None
        or not os.access("/dev/fuse", os.W_OK)
        or shutil.which("fusermount3") is None
    ):
        print("(fuse benchmark skipped: needs fio, fuse3 and /dev/fuse)")
        return
    image = os.path.join(work, "fuse.img")
    with daxkit.create(image, DEV_SIZE, force=True) as dev:
        daxkit.mkfs(dev)
    mnt = os.path.join(work, "mnt")
    tmpfs_dir = os.path.join(work, "tmpfs")
    os.makedirs(mnt, exist_ok=True)
    os.makedirs(tmpfs_dir, exist_ok=True)
    cli = [sys.executable, "-m", "daxkit.cli.main"]
    subprocess.run([*cli, "mount", image, mnt], check=True, capture_output=True)
    runtime = "2" if b.quick else "5"
    try:
        for name, (args, wanted) in FUSE_JOBS.items():
            iops = {}
            for where, d in (("fuse", mnt), ("tmpfs", tmpfs_dir)):
                r = subprocess.run(
                    ["fio", "--name=b", f"--directory={d}", "--size=64M", "--ioengine=psync", "--time_based",
                     f"--runtime={runtime}", "--output-format=json", *args],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                job = json.loads(r.stdout)["jobs"][0]
                iops[where] = (job["write"] if "write" in args[0] else job["read"])["iops"]
            ratio = iops["fuse"] / iops["tmpfs"]
            b.rows.append((
                f"FUSE fio {name} (IOPS, mount / tmpfs)", f"{iops['fuse']:,.0f}", "tmpfs",
                f"{iops['tmpfs']:,.0f}", f"{ratio:7.3f}", f">= {wanted} (issue 9)", ratio >= wanted,
            ))  # fmt: skip
    finally:
        subprocess.run([*cli, "umount", mnt], capture_output=True)


def _bench_backends(b: Bench, work: str, only: str | None) -> None:
    """benchmarks/bench_backends.py, loaded beside this file (run.py is loaded by path)."""
    import importlib.util

    here = os.path.join(os.path.dirname(__file__), "bench_backends.py")
    spec = importlib.util.spec_from_file_location("daxkit_bench_backends", here)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.bench_backends(b, work, only)


def main(quick: bool = False, only: str | None = None) -> None:
    import platform

    b = Bench(quick)
    print(
        f"daxkit {daxkit.__version__} benchmarks, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}{', quick' if quick else ''}"
    )
    with tempfile.TemporaryDirectory(dir=_tmpfs_dir(), prefix="daxkit-bench-") as work:
        bench_device(b, work, only)
        bench_fs(b, work, only)
        bench_parity(b, work, only)
        bench_fuse(b, work, only)
        _bench_backends(b, work, only)
    bench_copy_mc(b, only)
    b.report()


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
