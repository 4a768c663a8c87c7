"""fsck: read a daxfs without mounting it and list every problem found (SPEC 3, 4.2).

Checks: both superblock copies, both copies of the live checkpoint (CRC and decoding), both
copies of the log (a valid record after a damaged one is damage), the structure (reachability,
cycles, link counts, extents inside the data area, no block owned twice), known media errors
inside the metadata area, and known media errors in file data, per file range.  A damaged copy
that the other copy covers is listed too: "clean" means every copy is whole and no known
media error sits in metadata or in a file.

``repair``: mount read-write, which writes every metadata copy afresh from the good ones and
clears poison in the metadata area (daxfs.DaxFS._mount_repair), then check again.  File data is
not touched: its media errors stay listed."""

from __future__ import annotations

from bisect import bisect_right

from ..device.interface import DaxOperations, Redundant
from ..units import PAGE_SIZE
from .meta import Meta
from .superblock import CorruptFilesystem, Loaded, close_stack, open_stack

P = PAGE_SIZE


def fsck(dev: DaxOperations, repair: bool = False) -> dict:
    stacked = open_stack(dev, readonly=True)  # a parity filesystem is checked on its parity layer
    try:
        report = _check(stacked)
    finally:
        close_stack(stacked, dev)
    if not repair:
        return report
    from .daxfs import DaxFS  # the mount is the repair; daxfs does not import fsck

    try:
        DaxFS(dev).unmount()
    except CorruptFilesystem:
        return report  # every copy of something needed is lost: nothing to rewrite from
    stacked = open_stack(dev, readonly=True)
    try:
        after = _check(stacked)
    finally:
        close_stack(stacked, dev)
    after["repaired"] = [p for p in report["problems"] if p not in after["problems"]]
    return after


def _check(dev: DaxOperations) -> dict:
    try:
        loaded = Loaded(dev)
    except CorruptFilesystem as e:
        return {"clean": False, "problems": [e.strerror]}
    problems = list(loaded.problems) + list(loaded.notes)
    meta_end = loaded.g.data_start * P
    for off, n in dev.known_errors(0, meta_end):
        problems.append(f"known media error in the metadata area at device offset {off} (+{n})")
    problems += _file_data_errors(dev, loaded.meta, meta_end)
    if isinstance(dev, Redundant):  # silent corruption: checksums checked, nothing changed
        base = dev.lower_offset
        problems += [
            f"silent corruption: the data page at device offset {base + off} fails its checksum "
            "(repair rebuilds it from parity)"
            for off in dev.checksum_mismatches()
        ]
    inodes = loaded.meta.inodes.values()
    used = sum(node.blocks() for node in inodes)
    return {
        "clean": not problems,
        "problems": problems,
        "files": sum(1 for node in inodes if not node.is_dir),
        "directories": sum(1 for node in inodes if node.is_dir),
        "blocks_used": used,
        "blocks_free": loaded.g.nblocks - loaded.g.data_start - used,
        "log_records": loaded.seq - 1,
    }


def _file_data_errors(dev: DaxOperations, meta: Meta, meta_end: int) -> list[str]:
    """One line per file range under a known media error (SPEC 4.2: not clean while any)."""
    errors = dev.known_errors(meta_end, dev.size - meta_end)
    if not errors:
        return []
    names = meta.names()
    runs = sorted((db, cnt, fb, ino) for ino, node in meta.inodes.items() for fb, db, cnt in node.ext)
    starts = [r[0] for r in runs]
    out = []
    for off, n in errors:
        i = max(0, bisect_right(starts, off // P) - 1)
        while i < len(runs) and runs[i][0] * P < off + n:
            db, cnt, fb, ino = runs[i]
            s, e = max(off, db * P), min(off + n, (db + cnt) * P)
            if s < e:
                who = ", ".join(names.get(ino) or [f"inode {ino} (open, no name left)"])
                where = f"{who} at file offset {fb * P + s - db * P} (+{e - s})"
                out.append(f"media error in file data: {where}")
            i += 1
    return out
