"""Known errors from sysfs: pure parsers of the kernel's files, and the lookups that find them.

Rules
  * Every function takes ``sysfs_root`` (the tests' fake trees, "/sys" on a machine) and does no
    I/O but reading small text files; the parsers proper take text and return numbers.
  * The kernel's files are trusted for shape, not for content: a line that is not two numbers
    ("<sector> <count>", count > 0) is skipped, a missing file means "nothing known there"
    (libpmem2's badblocks_none), and numbers outside the namespace are clipped, never trusted.
  * Units: badblocks are 512-byte sectors, ``resource`` files are byte addresses (hex), ``size``
    files of namespaces are bytes, ``size`` and ``start`` files of block devices are sectors.

Theory of operation
  * /dev/pmemN (fsdax): ``block/pmemN/badblocks`` is already namespace-relative.
  * /dev/daxX.Y (devdax): the region's ``badblocks`` are region-relative; the namespace (or the
    dax device) lies at ``resource - region resource`` inside the region, so its share is the
    region's list shifted by that and clipped to its size (what ndctl does).
  * a regular file: its ``st_dev`` major:minor names a block device (``block/*/dev``, partitions
    at ``block/*/*/dev`` with their ``start``); that device's badblocks, as byte ranges, meet the
    file's extents (FIEMAP) and become file ranges.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from ...medium import ranges
from ...units import SECTOR_SIZE

Runs = list[tuple[int, int]]  # (first sector, count), sorted and merged


def read_text(path: str) -> str | None:
    """A sysfs attribute's text, or None when it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace")
    except OSError:
        return None


def parse_badblocks(text: str | None) -> Runs:
    """The kernel's badblocks_show format, one "<sector> <count>" per line, into sorted merged
    runs.  Junk lines (not two non-negative integers, a count <= 0) are skipped."""
    ivs: ranges.Intervals = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            continue
        sector, count = int(parts[0]), int(parts[1])
        if count > 0:
            ivs = ranges.add(ivs, sector, sector + count)
    return [(s, e - s) for s, e in ivs]


def parse_number(text: str | None) -> int | None:
    """A sysfs number: decimal, or hex with 0x (``resource``); None for anything else."""
    if text is None:
        return None
    word = text.strip()
    try:
        return int(word, 16) if word.lower().startswith("0x") else int(word, 10)
    except ValueError:
        return None


def clip_runs(runs: Runs, start: int, count: int) -> Runs:
    """The part of ``runs`` inside sectors [start, start+count), made relative to ``start``."""
    ivs = ranges.clip(ranges.union([], [(s, s + n) for s, n in runs]), start, start + count)
    return [(s - start, e - s) for s, e in ivs]


def region_share(region_runs: Runs, region_start: int, ns_start: int, ns_size: int) -> Runs:
    """A namespace's share of its region's badblocks: byte addresses from the ``resource`` files,
    ``ns_size`` in bytes.  A run partly outside the namespace is cut at its edge."""
    if ns_start < region_start or ns_size <= 0:
        return []
    first = (ns_start - region_start) // SECTOR_SIZE
    return clip_runs(region_runs, first, ns_size // SECTOR_SIZE)


@dataclass(frozen=True)
class BlockDevice:
    """A block device found in sysfs: where its badblocks are and where it starts on them."""

    name: str
    badblocks: str  # path of the badblocks file (the whole disk's, for a partition)
    start: int  # first sector of this device on that list (a partition's ``start``)
    sectors: int | None  # size in sectors, when sysfs says


def find_block_device(sysfs_root: str, major: int, minor: int) -> BlockDevice | None:
    """The block device whose ``dev`` file says major:minor (disks, then their partitions)."""
    want = f"{major}:{minor}"
    for dev_file in sorted(glob.glob(os.path.join(sysfs_root, "block", "*", "dev"))) + sorted(
        glob.glob(os.path.join(sysfs_root, "block", "*", "*", "dev"))
    ):
        if (read_text(dev_file) or "").strip() != want:
            continue
        here = os.path.dirname(dev_file)
        disk = os.path.dirname(here) if os.path.basename(os.path.dirname(here)) != "block" else here
        start = parse_number(read_text(os.path.join(here, "start"))) if disk != here else 0
        return BlockDevice(
            name=os.path.basename(here),
            badblocks=os.path.join(disk, "badblocks"),
            start=start or 0,
            sectors=parse_number(read_text(os.path.join(here, "size"))),
        )
    return None


def device_runs(dev: BlockDevice) -> Runs:
    """The known bad sectors of a block device (a partition's, relative to its start)."""
    runs = parse_badblocks(read_text(dev.badblocks))
    if dev.start or dev.sectors is not None:
        return clip_runs(runs, dev.start, dev.sectors if dev.sectors is not None else 1 << 62)
    return runs


def file_bad_ranges(extents: list[tuple[int, int, int]], bad: Runs) -> list[tuple[int, int]]:
    """Bad sectors of the device under a file, as (file offset, length) byte ranges: each extent
    (logical, physical, length) in bytes meets the runs (sectors of the same device)."""
    bad_bytes = ranges.union([], [(s * SECTOR_SIZE, (s + n) * SECTOR_SIZE) for s, n in bad])
    out: ranges.Intervals = []
    for logical, physical, length in extents:
        for s, e in ranges.clip(bad_bytes, physical, physical + length):
            out = ranges.add(out, logical + s - physical, logical + e - physical)
    return [(s, e - s) for s, e in out]


# -- namespaces, for `daxkit list -M` and device-dax --------------------------------------------
def _names(pattern: str) -> list[str]:
    def key(p: str):
        digits = "".join(c if c.isdigit() else " " for c in os.path.basename(p)).split()
        return [int(d) for d in digits], p

    return sorted(glob.glob(pattern), key=key)


def namespace_dirs(sysfs_root: str) -> list[tuple[str, str]]:
    """(region dir, namespace dir) of every namespace: ``bus/nd/devices/regionN/namespaceN.M``."""
    out = []
    for region in _names(os.path.join(sysfs_root, "bus", "nd", "devices", "region*")):
        for ns in _names(os.path.join(region, "namespace*")):
            if os.path.isdir(ns):
                out.append((region, ns))
    return out


def _child(ns: str, kind: str) -> str | None:
    path = _child_dir(ns, kind)
    return None if path is None else os.path.basename(path)


def _child_dir(ns: str, kind: str) -> str | None:
    """The directory of the namespace's block device (``kind`` "block") or dax device ("dax"), where
    sysfs shows one: under the namespace itself (raw mode), or under the pfn/dax device of its
    region whose ``namespace`` link names it (fsdax: regionN/pfnN.M/block/pmemN; devdax:
    regionN/daxN.M/daxN.M)."""
    for p in _names(os.path.join(ns, kind, "*")) + _names(os.path.join(ns, "*", kind, "*")):
        return p
    me = os.path.realpath(ns)
    for seed in _names(os.path.join(os.path.dirname(ns), "*")):
        link = os.path.join(seed, "namespace")
        if seed == ns or not os.path.islink(link) or os.path.realpath(link) != me:
            continue
        pattern = os.path.join(seed, "block", "*") if kind == "block" else os.path.join(seed, "dax*")
        for p in _names(pattern):
            if os.path.isdir(p):
                return p
    return None


def namespace_runs(sysfs_root: str, region: str, ns: str, blockdev: str | None) -> Runs:
    """A namespace's known bad sectors, namespace-relative: its block device's list when it has
    one (the kernel made it relative), else its share of the region's list."""
    if blockdev is not None:
        text = read_text(os.path.join(sysfs_root, "block", blockdev, "badblocks"))
        if text is not None:
            return parse_badblocks(text)
    region_start = parse_number(read_text(os.path.join(region, "resource")))
    ns_start = parse_number(read_text(os.path.join(ns, "resource")))
    ns_size = parse_number(read_text(os.path.join(ns, "size")))
    if region_start is None or ns_start is None or ns_size is None:
        return []
    return region_share(parse_badblocks(read_text(os.path.join(region, "badblocks"))), region_start,
                        ns_start, ns_size)  # fmt: skip


def _media_errors(runs: Runs) -> dict:
    return {
        "badblock_count": sum(n for _, n in runs),
        "badblocks": [{"offset": s, "length": n} for s, n in runs],
    }


def list_namespaces(sysfs_root: str) -> list[dict]:
    """Every namespace the tree shows, in ``ndctl list -M`` shape: ``dev``, ``mode``, ``size``,
    ``blockdev`` or ``chardev``, ``badblock_count`` and namespace-relative ``badblocks``.  Block
    devices named pmemN that no namespace claims are listed too, under their own name."""
    out: list[dict] = []
    claimed: set[str] = set()
    for region, ns in namespace_dirs(sysfs_root):
        entry: dict = {"dev": os.path.basename(ns)}
        mode = (read_text(os.path.join(ns, "mode")) or "").strip()
        if mode:
            entry["mode"] = mode
        size = parse_number(read_text(os.path.join(ns, "size")))
        if size is not None:
            entry["size"] = size
        blockdev = _child(ns, "block")
        chardev = _child(ns, "dax") if blockdev is None else None
        if blockdev is not None:
            entry["blockdev"] = blockdev
            claimed.add(blockdev)
        elif chardev is not None:
            entry["chardev"] = chardev
        entry.update(_media_errors(namespace_runs(sysfs_root, region, ns, blockdev)))
        out.append(entry)
    for bdir in _names(os.path.join(sysfs_root, "block", "pmem*")):
        name = os.path.basename(bdir)
        if name in claimed or not os.path.isdir(bdir):
            continue
        entry = {"dev": name, "blockdev": name}
        sectors = parse_number(read_text(os.path.join(bdir, "size")))
        if sectors is not None:
            entry["size"] = sectors * SECTOR_SIZE
        entry.update(_media_errors(parse_badblocks(read_text(os.path.join(bdir, "badblocks")))))
        out.append(entry)
    return out


def dax_device_runs(sysfs_root: str, name: str) -> tuple[Runs, str | None]:
    """Known bad sectors of the device-dax device ``name`` (daxX.Y), relative to its start, and
    the badblocks file they come from.  The dax device's own ``resource`` and ``size`` (where
    the kernel shows them) say where its data lies in the region; else its namespace's."""
    for region, ns in namespace_dirs(sysfs_root):
        where = _child_dir(ns, "dax")
        if where is None or os.path.basename(where) != name:
            continue
        bb = os.path.join(region, "badblocks")
        region_start = parse_number(read_text(os.path.join(region, "resource")))
        start = parse_number(read_text(os.path.join(where, "resource")))
        size = parse_number(read_text(os.path.join(where, "size")))
        if start is None or size is None:
            start = parse_number(read_text(os.path.join(ns, "resource")))
            size = parse_number(read_text(os.path.join(ns, "size")))
        if region_start is None or start is None or size is None:
            return [], bb
        return region_share(parse_badblocks(read_text(bb)), region_start, start, size), bb
    return [], None


def dax_device_place(sysfs_root: str, name: str, dev_root: str = "/dev") -> tuple[str, int] | None:
    """(the bus's control device, the system physical address of the dax device's first byte):
    where a clear-error command for it goes.  None when sysfs shows no bus or no address."""
    for region, ns in namespace_dirs(sysfs_root):
        where = _child_dir(ns, "dax")
        if where is None or os.path.basename(where) != name:
            continue
        start = parse_number(read_text(os.path.join(where, "resource")))
        if start is None:
            start = parse_number(read_text(os.path.join(ns, "resource")))
        bus = os.path.dirname(os.path.realpath(region))  # regionN lives under its ndbusN
        ctl = next(iter(_names(os.path.join(bus, "ndctl*"))), None)
        if start is None or ctl is None:
            return None
        return os.path.join(dev_root, os.path.basename(ctl)), start
    return None
