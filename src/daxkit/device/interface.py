"""The device interface: what the layers above a device may use (the kernel's dax_operations,
plus the few queries a DAX filesystem needs).

Rules
  * The layers above (fsdax, the filesystem, a stacked redundancy device) import this Protocol,
    never a concrete device class.  Anything that implements it -- the emulated image, a real
    pmem namespace, a redundancy layer stacked on another device -- can carry a filesystem.
  * Data moves through four operations: ``direct_access`` hands out the memory, ``store`` and
    ``mc_read`` are the CPU's stores and machine-check-safe loads on it, and
    ``recovery_write`` / ``zero_page_range`` / ``read_recover_into`` are the recovery path.
  * News travels up only through the holder's ``notify_failure`` (and a mapping's
    ``on_poison``); a device never calls into the layer above in any other way.

Every offset is a device byte offset; every page number counts PAGE_SIZE pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import InvalidArgument

ACCESS = 0  # enum dax_access_mode: DAX_ACCESS
RECOVERY_WRITE = 1  # DAX_RECOVERY_WRITE
MF_ACTION_REQUIRED = 1 << 1  # enum mf_flags (include/linux/mm.h)
MF_MEM_PRE_REMOVE = 1 << 7

Extent = tuple[int, int, int]  # (offset in the mapping, device offset, length)


def check_range(offset: int, length: int, size: int) -> None:
    """The argument rule every device shares (SPEC 2.4): EINVAL, with the numbers, for a negative
    length or a range outside [0, size)."""
    if length < 0:
        raise InvalidArgument(f"negative length {length}")
    if offset < 0 or offset + length > size:
        raise InvalidArgument(f"range offset={offset} length={length} is outside the device (size {size})")


@dataclass
class RecoveredData:
    """What a recovery read returns (SPEC 4): every clean byte, zeroes where a line is bad, and
    the bad byte ranges exactly, in the caller's offsets."""

    data: bytes | bytearray
    bad: list[tuple[int, int]] = field(default_factory=list)


class Holder(Protocol):
    """The owner of a device's data (a filesystem, a stacked device)."""

    def notify_failure(self, offset: int, length: int, flags: int) -> int: ...


class Mapping(Protocol):
    """A direct mapping of device pages (``DaxMapping``), as far as a filesystem drives it."""

    def _revoke(self) -> None: ...

    def _revoke_device_blocks(self, runs: list[tuple[int, int]]) -> None: ...


@runtime_checkable
class DaxOperations(Protocol):
    path: str
    size: int  # bytes, a multiple of PAGE_SIZE
    clear_err_unit: int

    # -- the kernel's three operations ---------------------------------------------------------
    def direct_access(self, pgoff: int, nr_pages: int, mode: int = ACCESS) -> tuple[int, memoryview]:
        """(pages available, writable view); HWPoisonError over known poison in ACCESS mode."""
        ...

    def recovery_write(self, pgoff: int, offset_in_page: int, data) -> int: ...

    def zero_page_range(self, pgoff: int, nr_pages: int) -> None: ...

    def recovery_write_subpage(self, offset: int, data) -> list[tuple[int, int]]:
        """SPEC 4.1, beyond the kernel: write ``data`` at any offset over poison.  The pages
        touched are cleared and rewritten with ``data`` over their recovered clean lines; bad
        lines the write does not cover whole stay known bad.  Returns those lines."""
        ...

    # -- loads and stores on the mapping -----------------------------------------------------------
    def mc_read(self, dst, offset: int) -> int:
        """Machine-check-safe load into ``dst``: bytes delivered before the first bad line;
        latent poison met becomes known (consumption) and the holder hears of it."""
        ...

    def store(self, data, offset: int) -> int:
        """CPU stores at ``offset`` (a range obtained through direct_access)."""
        ...

    def read_recover_into(self, buffer, offset: int) -> list[tuple[int, int]]:
        """The recovery read: clean bytes, zeroes on bad lines; returns the bad ranges."""
        ...

    def map_extents(self, pieces: list[Extent]) -> Mapping:
        """A DaxMapping made of device extents (what a file's mmap is)."""
        ...

    # -- known errors and the holder -----------------------------------------------------------------
    def known_errors(self, offset: int = 0, length: int | None = None) -> list[tuple[int, int]]:
        """Known bad (offset, length) ranges, line-precise where known."""
        ...

    def first_bad(self, start: int, end: int) -> int | None:
        """The first byte of [start, end) that a known error covers (a badblocks sector or a
        bad range), or None: where a write over poison has to stop."""
        ...

    @property
    def holder(self) -> Holder | None: ...

    @holder.setter
    def holder(self, obj: Holder | None) -> None: ...

    @property
    def state_word(self) -> memoryview:
        """One word that changes whenever the known errors change, in any process: a caller
        that keeps a direct_access view may reuse it while the word holds still."""
        ...

    @property
    def state_generation(self) -> int: ...

    def store_fn(self):
        """The store a fast path keeps: ``store`` itself, or a faster callable with its contract."""
        ...

    def watch_errors(self, watching: bool = True) -> None:
        """This process caches the device's data and acknowledges error-state changes."""
        ...

    def errors_seen(self, gen: int) -> None: ...


@runtime_checkable
class Redundant(Protocol):
    """A device that keeps redundancy over its data (redundancy/, a stacked parity device)."""

    lower_offset: int  # its byte x is byte lower_offset + x of the device it is stacked on

    def redundancy(self) -> dict:
        """{"mode": "parity", "group": pages per group, "space_overhead": fraction}."""
        ...

    def parity_group(self, offset: int) -> dict:
        """{"data": [device offsets of the group's pages], "parity": [offsets of its parity]}."""
        ...

    def checksum_mismatches(self) -> list[int]:
        """Device offsets of data pages that fail their checksum, found without changing anything."""
        ...

    def repair(self, verify: bool = True):
        """Repair everything repairable; a report with ``repaired``, ``corrupt``, ``lost``
        (lists of (offset, length)) and ``as_dict()``."""
        ...
