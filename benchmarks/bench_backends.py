"""Real backends (SPEC 7, 8): the regular-file backend's fast path beside ``os.preadv`` of the
same file and beside the emulated backend, 4 KiB random and 1 MiB reads, in one run.

The file lives where the emulated image lives (the benchmark's work folder, tmpfs when there is
one), so both devices read the same kind of memory; nothing is known bad, which is the case the
fast path is for: one compare of the generation word, no system call (a test counts them)."""

from __future__ import annotations

import os
import random

import daxkit

MiB = 1 << 20
SIZE = 64 * MiB


def bench_backends(b, work: str, only: str | None) -> None:
    if only and "backend" not in only:
        return
    path = os.path.join(work, "plain.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(MiB) * (SIZE // MiB))
    img = os.path.join(work, "backends.img")
    emu = daxkit.create(img, SIZE, force=True)
    emu.pwrite(os.urandom(MiB) * (SIZE // MiB), 0)
    dev = daxkit.open(path, sysfs_root=os.path.join(work, "no-sysfs"))  # nothing listed: badblocks_none
    assert dev.info()["backend"] == "file"
    fd = os.open(path, os.O_RDONLY)
    try:
        sink = bytearray(MiB)
        for o in range(0, SIZE, MiB):  # fault every page in before timing
            dev.readinto(sink, o)
            emu.readinto(sink, o)
        rng = random.Random(7)
        n4k = 2000 if b.quick else 20000
        offs = [rng.randrange(SIZE // 4096) * 4096 for _ in range(n4k)]
        buf = bytearray(4096)
        bufs = [buf]

        def file_backend():
            ri = dev.readinto
            for o in offs:
                ri(buf, o)
            return len(offs)

        def preadv():
            pv = os.preadv
            for o in offs:
                pv(fd, bufs, o)
            return len(offs)

        def emulated():
            ri = emu.readinto
            for o in offs:
                ri(buf, o)
            return len(offs)

        b.compare(
            "backends: 4 KiB random reads, 64 MiB file",
            {
                "file backend readinto": file_backend,
                "os.preadv same file": preadv,
                "emulated readinto": emulated,
            },
            ["os.preadv same file", "emulated readinto"],
            {"os.preadv same file": "< 1.0x", "emulated readinto": "reported"},
        )
        n1m = 30 if b.quick else 200
        offs_1m = [rng.randrange(SIZE // MiB) * MiB for _ in range(n1m)]
        big = bytearray(MiB)
        bigs = [big]

        def file_backend_1m():
            for o in offs_1m:
                dev.readinto(big, o)
            return len(offs_1m)

        def preadv_1m():
            for o in offs_1m:
                os.preadv(fd, bigs, o)
            return len(offs_1m)

        def emulated_1m():
            for o in offs_1m:
                emu.readinto(big, o)
            return len(offs_1m)

        b.compare(
            "backends: 1 MiB reads, 64 MiB file",
            {"file backend readinto": file_backend_1m, "os.preadv same file": preadv_1m,
             "emulated readinto": emulated_1m},
            ["os.preadv same file", "emulated readinto"],
            {"os.preadv same file": "<= 1.1x", "emulated readinto": "reported"},
        )  # fmt: skip
    finally:
        os.close(fd)
        dev.close()
        emu.close()
