"""fsck: read a daxfs without mounting it and list every problem found (SPEC 3).

Checks: both superblock copies, the live checkpoint's CRC and decoding, the log (a valid record
after a damaged one is damage), the structure (reachability, cycles, link counts, extents inside
the data area, no block owned twice), and known media errors inside the metadata area."""

from __future__ import annotations

from ..device.interface import DaxOperations
from ..units import PAGE_SIZE
from .superblock import CorruptFilesystem, Loaded


def fsck(dev: DaxOperations) -> dict:
    try:
        loaded = Loaded(dev)
    except CorruptFilesystem as e:
        return {"clean": False, "problems": [e.strerror]}
    problems = list(loaded.problems) + list(loaded.notes)
    meta_end = loaded.g.data_start * PAGE_SIZE
    for off, n in dev.known_errors(0, meta_end):
        problems.append(f"known media error in the metadata area at device offset {off} (+{n})")
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
