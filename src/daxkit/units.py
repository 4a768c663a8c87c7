"""Units of the DAX world (SPEC 1) and the one parser for sizes written by people ("64M")."""

from __future__ import annotations

import re

PAGE_SIZE = 4096  # direct_access, mappings, recovery writes, filesystem blocks
SECTOR_SIZE = 512  # the badblocks table, as in the kernel
LINE_SIZE = 64  # hardware poison granularity: one cache line
DEFAULT_CLEAR_ERR_UNIT = 256  # what ACPI ARS_CAP commonly reports

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as "4096", "64M", "1G", "512KiB"."""
    if isinstance(value, bool):
        raise ValueError(f"size must be a number of bytes, not {value!r}")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"cannot read {value!r} as a size (examples: 4096, 64M, 1G)")
    return int(m.group(1)) * _SUFFIX[m.group(2).upper()]


def align_down(x: int, a: int) -> int:
    return x - (x % a)


def align_up(x: int, a: int) -> int:
    return -(-x // a) * a
