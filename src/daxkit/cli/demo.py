"""`daxkit demo`: the whole story on temporary images, each step checked.

Device: create -> write -> inject poison (ndctl inject-error) -> the block path sees EIO -> list
-M shows it -> a mapping's safe read stops at the bad line -> scrub -> recovery write of the page
(the kernel's way) -> the data reads back and every error list is empty.
Filesystem: mkfs -> files written -> poison under one file -> EIO -> scan names the file and the
range -> the file's page rewritten page-aligned -> verified, scan empty, fsck clean.
Parity (SPEC 4.2): mkfs --redundancy parity -> a file over several parity groups -> one page of
each group poisoned, latent and notified -> the file reads back whole, no EIO -> scan empty, repair
lists what it rebuilt -> a double fault in one group -> repair names exactly the bytes lost, reads
of exactly those fail with EIO and the rest reads -> the lost pages rewritten, nothing lost, fsck clean."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile

import daxkit


class DemoFailed(daxkit.DaxError):
    pass


def _step(n: int, text: str) -> None:
    print(f"[{n:2d}] {text}")


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise DemoFailed(f"demo check failed: {what}")
    print(f"      ok: {what}")


def run_demo(keep: bool = False) -> None:
    tmp = tempfile.mkdtemp(prefix="daxkit-demo-")
    path = os.path.join(tmp, "pmem0.img")
    try:
        _story(path)
        _fs_story(os.path.join(tmp, "daxfs.img"))
        _parity_story(os.path.join(tmp, "parity.img"))
        print("\ndemo complete: every step checked")
    finally:
        if keep:
            print(f"image kept at {path}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _story(path: str) -> None:
    P, S = daxkit.PAGE_SIZE, daxkit.SECTOR_SIZE
    _step(1, f"create a 16 MiB emulated device at {path}")
    dev = daxkit.create(path, "16M")
    _check(dev.size == 16 << 20 and dev.media_errors()["badblock_count"] == 0, "new device, no media errors")

    _step(2, "write 64 KiB of patterned data at offset 1 MiB")
    base = 1 << 20
    data = bytes((i * 7 + 3) & 0xFF for i in range(64 << 10))
    dev.pwrite(data, base)
    _check(dev.pread(len(data), base) == data, "data reads back")

    block = (base + 5 * P) // S
    _step(3, f"inject-error -B {block} -n 8 (ndctl inject-error: poison, then a notifying scrub)")
    dev.inject_error(block, 8)
    _check(dev.badblocks.text() == f"{block} 8\n", f"badblocks reads '{block} 8'")
    _check(dev.injected_errors() == [{"block": block, "count": 8}], "inject-error --status lists the record")

    _step(4, "read over the poison through the block path")
    try:
        dev.pread(P, base + 5 * P)
        _check(False, "read fails with EIO")
    except daxkit.MediaError as e:
        _check(e.errno == errno.EIO, f"read fails with EIO ({e})")
    _check(dev.pread(P, base + 4 * P) == data[4 * P : 5 * P], "the page before is still readable")

    _step(5, "direct_access: normal mode refuses, recovery-write mode stops at the bad page")
    try:
        dev.direct_access((base + 4 * P) // P, 4)
        _check(False, "ACCESS raises EHWPOISON")
    except daxkit.HWPoisonError as e:
        _check(e.errno == daxkit.errors.EHWPOISON, "ACCESS raises EHWPOISON")
    avail, _ = dev.direct_access((base + 4 * P) // P, 4, daxkit.RECOVERY_WRITE)
    _check(avail == 1, "RECOVERY_WRITE gives 1 page: up to the bad sector at the start of page 1")

    _step(6, "a mapping's safe read delivers every clean line, then reports the bad range")
    m = dev.map(base, 64 << 10)
    latent = base + 9 * P + 640
    dev.inject_poison(latent, 1)
    try:
        m.read(9 * P, P)
        _check(False, "PoisonError raised")
    except daxkit.PoisonError as e:
        _check(
            (e.offset, e.length, e.done) == (latent, 64, 640),
            f"PoisonError offset={e.offset} length={e.length} done={e.done}",
        )
    _check(dev.badblocks.check(latent // S, 1).status == 1, "consumption made the latent line known")

    _step(7, "scrub (ARS) and list -M")
    report = dev.scrub()
    errs = dev.media_errors()
    _check(
        report.scrub_count == 2 and errs["badblock_count"] == 9,
        f"scrub #{report.scrub_count}; list -M: {errs}",
    )

    _step(8, "recover: page-aligned rewrites clear the poison (recovery_write / m.recover)")
    page5 = (base + 5 * P) // P
    _check(dev.recovery_write(page5, 0, data[5 * P : 6 * P]) == P, "recovery_write of the whole page")
    m.recover(9 * P, data[9 * P : 10 * P])
    _check(dev.media_errors()["badblock_count"] == 0, "badblocks empty")
    _check(dev.injected_errors() == [], "injection records cleared")
    _check(dev.poisoned_ranges() == [], "no poison left on the medium")

    _step(9, "verify every byte")
    _check(hashlib.sha256(dev.pread(len(data), base)).digest() == hashlib.sha256(data).digest(), "block path")
    _check(m.read(0, len(data)) == data, "mapping safe read")
    _check(bytes(m.buf[9 * P : 10 * P]) == data[9 * P : 10 * P], "raw mapping load of the recovered page")
    m.close()
    dev.close()


def _fs_story(path: str) -> None:
    P = daxkit.PAGE_SIZE
    print()
    _step(10, f"mkfs: a daxfs on a new 32 MiB device at {path}")
    dev = daxkit.create(path, "32M")
    daxkit.mkfs(dev)
    fs = daxkit.mount(dev)
    _check(
        fs.listdir("/") == [] and dev.holder is fs,
        "mounted read-write; the filesystem is the device's holder",
    )

    _step(11, "write files: /etc/motd, /data/a.bin (64 KiB), /data/b.bin (16 KiB)")
    fs.mkdir("/etc")
    fs.mkdir("/data")
    blobs = {
        "/etc/motd": b"poison is survivable\n",
        "/data/a.bin": bytes((i * 13 + 1) & 0xFF for i in range(64 << 10)),
        "/data/b.bin": bytes((i * 29 + 7) & 0xFF for i in range(16 << 10)),
    }
    for name, data in blobs.items():
        with fs.open(name, "w") as f:
            f.write(data)
            f.fsync()
    _check(all(fs.open(n).read() == d for n, d in blobs.items()), "every file reads back")
    heard = []
    fs.add_failure_listener(lambda ino, p, off, n: heard.append((p, off, n)))

    ext = fs.bmap("/data/a.bin")[0]
    block = ext["sector"] + 3 * 8 + 2
    _step(12, f"inject-error -B {block}: poison under the 4th page of /data/a.bin")
    dev.inject_error(block, 1)
    _check(heard == [("/data/a.bin", 3 * P + 1024, 256)], f"notify_failure reached the filesystem: {heard}")

    _step(13, "read the file")
    f = fs.open("/data/a.bin", "r+")
    try:
        f.pread(8 * P, 0)
        _check(False, "the read fails")
    except daxkit.MediaError as e:
        _check(e.errno == errno.EIO, f"EIO: {e}")
    _check(f.pread(3 * P, 0) == blobs["/data/a.bin"][: 3 * P], "the pages before the poison still read")

    _step(14, "scan: every known error mapped to its owner")
    hits = fs.scan()
    _check(
        [(h["owner"], h["path"], h["file_offset"], h["file_length"]) for h in hits]
        == [("file", "/data/a.bin", 3 * P + 1024, 256)],
        f"scan names /data/a.bin bytes {3 * P + 1024}..{3 * P + 1024 + 256}",
    )

    _step(15, "rewrite the page, page-aligned (the kernel's RECOVERY_WRITE path)")
    _check(f.pwrite(blobs["/data/a.bin"][3 * P : 4 * P], 3 * P) == P, "full count")
    _check(f.pread(64 << 10, 0) == blobs["/data/a.bin"], "every byte of the file verified")
    _check(fs.scan() == [] and f.bad_ranges() == [] and dev.badblocks.text() == "", "no known errors left")
    f.close()
    fs.unmount()
    report = daxkit.fsck(dev)
    _check(report["clean"] and report["files"] == 3, "fsck is clean")
    dev.close()


def _parity_story(path: str) -> None:
    P = daxkit.PAGE_SIZE
    print()
    _step(16, f"mkfs --redundancy parity: a daxfs with data parity on a new 16 MiB device at {path}")
    dev = daxkit.create(path, "16M")
    daxkit.mkfs(dev, redundancy="parity")
    fs = daxkit.mount(dev)
    red = fs.redundancy
    _check(
        red["mode"] == "parity" and 0 < red["space_overhead"] <= 0.02,
        f"fs.redundancy: {red['group']} data pages per group, {red['space_overhead']:.2%} of the device",
    )

    name = "/protected.bin"
    data = bytes((i * 31 + 5) & 0xFF for i in range(1 << 20))
    _step(17, f"write {name} (1 MiB) and find its parity groups")
    with fs.open(name, "w") as f:
        f.write(data)
        f.fsync()
    extents = [(e["sector"] * daxkit.SECTOR_SIZE, e["offset"], e["length"]) for e in fs.bmap(name)]

    def file_off(dev_off: int) -> int | None:
        for start, fo, n in extents:
            if start <= dev_off < start + n:
                return fo + dev_off - start
        return None

    groups, seen = [], set()  # per group: the file's pages in it, as device offsets
    for start, _, n in extents:
        for off in range(start, start + n, P):
            if off not in seen:
                g = fs.parity_group(off)
                seen.update(g["data"])
                groups.append([d for d in g["data"] if file_off(d) is not None])
    _check(
        fs.open(name).read() == data and len(groups) >= 2,
        f"the file reads back; it spans {len(groups)} parity groups ({[len(g) for g in groups]} pages each)",
    )
    heard = []
    fs.add_failure_listener(lambda ino, p, off, n: heard.append((p, off, n)))

    victims = [g[len(g) // 2] for g in groups]
    notified, latent = victims[1::2], victims[::2]
    _step(18, "poison one whole page in each group: notified (inject-error), then latent (no notify)")
    # in this order: the scrub that follows a notified injection would find the latent ones too
    for kind, pages in (("notified", notified), ("latent", latent)):
        for v in pages:
            dev.inject_error(v // daxkit.SECTOR_SIZE, P // daxkit.SECTOR_SIZE, notify=kind == "notified")
            print(f"      {kind:8s} poison: the page at file offset {file_off(v)} (device offset {v})")
    f = fs.open(name, "r+")
    _check(
        heard == [] and f.bad_ranges() == [] and fs.scan() == [],
        "notified poison was rebuilt at once: no failure heard, no bad range, scan empty",
    )
    on_medium = sorted({o // P * P for o, _ in dev.poisoned_ranges()})
    _check(on_medium == latent, f"the latent poison is still on the medium ({len(on_medium)} pages)")

    _step(19, "read the whole file")
    try:
        back = f.pread(len(data), 0)
    except daxkit.MediaError as e:
        raise DemoFailed(f"demo check failed: the read raised {e}") from e
    _check(len(back) == len(data), f"full count: {len(back)} bytes, no EIO")
    _check(back == data, "every byte is the byte written (the latent pages were rebuilt from parity)")
    _check(dev.poisoned_ranges() == [] and heard == [], "no poison left on the medium; no failure heard")

    _step(20, "scan, then repair (verifies every checksum; lists what was rebuilt since the last report)")
    _check(fs.scan() == [], "scan: no known errors")
    report = fs.repair()
    pages = sorted({o // P * P for o, _ in report.repaired})
    _check(
        pages == victims and report.lost == [] and report.corrupt == [],
        f"repaired: {len(report.repaired)} ranges ({sum(n for _, n in report.repaired)} poisoned bytes), in "
        f"exactly the poisoned pages (device offsets {pages}); nothing lost",
    )

    big = max(groups, key=len)
    a, b = big[1], big[-2]
    _step(21, f"two pages of one group, bad at different lines (file offsets {file_off(a)}, {file_off(b)})")
    dev.inject_error(a // daxkit.SECTOR_SIZE + 1, 1, notify=False)
    dev.inject_error(b // daxkit.SECTOR_SIZE + 6, 1, notify=False)
    _check(
        f.pread(len(data), 0) == data,
        "the file reads back whole: each bad line was rebuilt from the same line of the other pages",
    )
    report = fs.repair()
    _check(
        report.lost == [] and dev.poisoned_ranges() == [] and heard == [],
        "each rebuilt page matched its checksum; repair: nothing lost, no poison left, no failure heard",
    )

    _step(22, f"a double fault: the same block of two pages of one group, at {file_off(a)}, {file_off(b)}")
    dev.inject_error(a // daxkit.SECTOR_SIZE + 3, 1, notify=False)  # latent...
    dev.inject_error(b // daxkit.SECTOR_SIZE + 3, 1)  # ...then notified: the scrub finds both at once
    bad = [(file_off(o), n) for o, n in dev.poisoned_ranges()]
    expected = [{"path": name, "offset": o, "length": n} for o, n in bad]
    report = fs.repair()
    _check(
        sorted({o // P * P for o, _ in bad}) == [file_off(a), file_off(b)] and report.lost == expected,
        f"repair: lost {report.lost}",
    )
    _check(
        heard == [(name, o, n) for o, n in bad] and f.bad_ranges() == bad,
        "the failure listener and bad_ranges() name the same bytes, and only these",
    )

    _step(23, "read the file around the loss")
    for off, n in bad:
        try:
            f.pread(n, off)
            _check(False, f"bytes {off}..{off + n} fail with EIO")
        except daxkit.MediaError as e:
            _check(e.errno == errno.EIO, f"bytes {off}..{off + n}: EIO")
    edges = [0] + [x for off, n in bad for x in (off, off + n)] + [len(data)]
    rest = list(zip(edges[::2], edges[1::2]))
    _check(
        all(f.pread(e - s, s) == data[s:e] for s, e in rest),
        f"everything else reads exactly: {len(data) - sum(n for _, n in bad)} bytes in {len(rest)} pieces",
    )

    _step(24, "rewrite the two damaged pages from the caller's copy")
    for o in (a, b):
        fo = file_off(o)
        _check(f.pwrite(data[fo : fo + P], fo) == P, f"page at file offset {fo} rewritten")
    _check(f.pread(len(data), 0) == data and f.bad_ranges() == [], "every byte of the file verified")
    report = fs.repair()
    _check(report.as_dict()["lost"] == [] and fs.scan() == [], "repair: nothing lost; scan empty")
    f.close()
    fs.unmount()
    fsck = daxkit.fsck(dev)
    _check(fsck["clean"] and fsck["files"] == 1, "fsck is clean")
    dev.close()
