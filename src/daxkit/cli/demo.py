"""`daxkit demo`: the device-level story on a temporary image, each step checked.

create -> write -> inject poison (ndctl inject-error) -> the block path sees EIO -> list -M
shows it -> a mapping's safe read stops at the bad line -> scrub -> recovery write of the page
(the kernel's way) -> the data reads back and every error list is empty."""

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
