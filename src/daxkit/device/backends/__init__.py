"""Device backends: the mechanism under a DaxDevice, one sibling file per kind of device (as
libpmem2's badblocks_ndctl.c / badblocks_none.c).

Rules
  * A backend is mechanism only: it maps the device, stores bytes, reports the known errors and
    carries out a clearing write.  The policy of SPEC 2 (argument checks, what is refused over
    poison, the kernel's order for clearing, holders, mappings) lives once, in device.py.
  * ``open_backend`` picks the backend from a table keyed on what ``stat()`` says; nothing else
    looks at the path.

Theory of operation
  Every backend offers the same small set of operations (``Backend`` below).  The emulated image
  stores its whole error state in the image and commits it atomically; a real device's "hardware
  truth" comes from sysfs (re-read when ``poll()`` on a badblocks file says it changed), and the
  little that software learns on its own (consumption, sub-page recovery leftovers) is kept in
  the process (real.py).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from ...errors import ImageError, ImageNotFound
from ...medium.image import MAGIC
from ...medium.region import Region
from ...medium.state import ErrorState
from ...units import PAGE_SIZE


class Backend(Protocol):
    path: str
    kind: str  # "image", "block", "devdax", "file"
    emulated: bool  # True: the medium is software (injection works)
    size: int
    clear_err_unit: int
    readonly: bool
    words: memoryview  # words[0]: the generation of the error state (one load to compare)

    def load(self) -> tuple[int, ErrorState]: ...

    def commit(self, change: Callable[[ErrorState], ErrorState]) -> tuple[int, ErrorState]: ...

    def map_region(self, pieces: list[tuple[int, int, int]], length: int) -> Region: ...

    def medium_read_into(self, buf, offset: int) -> int: ...

    def medium_write(self, data, offset: int) -> int: ...

    def write_clearing(self, data, offset: int) -> None:
        """The data write of a clearing sequence: the platform clears the poison under it."""
        ...

    def rescan(self) -> None:
        """What a scrub does besides reading the state: re-read the sources of known errors."""
        ...

    # Real devices only (``emulated`` False): read the kernel's lists again now (the generation
    # moves if they changed); write an entry into the kernel's badblocks file.
    def refresh(self) -> None: ...

    def add_listed(self, sector: int, count: int) -> None: ...

    def claim_holder(self) -> bool: ...

    def release_holder(self) -> None: ...

    def scrubbing(self) -> AbstractContextManager: ...

    def scrub_running(self) -> bool: ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...


def _is_image(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ImageError(f"cannot open: {e.strerror}", errno=e.errno, path=path) from None
    try:
        return os.pread(fd, len(MAGIC), 0) == MAGIC
    finally:
        os.close(fd)


def _open_regular(path: str, st: os.stat_result, readonly: bool, sysfs_root: str) -> Backend:
    if _is_image(path):
        from .image import ImageBackend

        return ImageBackend(path, readonly=readonly)
    if st.st_size < PAGE_SIZE or st.st_size % PAGE_SIZE:
        raise ImageError(
            f"not a daxkit image (no daxkit magic), and its size {st.st_size} is not a positive "
            f"multiple of {PAGE_SIZE}, which a file used as a device must be",
            path=path,
        )
    from .file import FileBackend

    return FileBackend(path, readonly=readonly, sysfs_root=sysfs_root)


def _open_block(path: str, st: os.stat_result, readonly: bool, sysfs_root: str) -> Backend:
    from .block import BlockBackend

    return BlockBackend(path, st, readonly=readonly, sysfs_root=sysfs_root)


def _open_devdax(path: str, st: os.stat_result, readonly: bool, sysfs_root: str) -> Backend:
    from .devdax import DevDaxBackend

    return DevDaxBackend(path, st, readonly=readonly, sysfs_root=sysfs_root)


# What stat() says -> how to open it.
OPENERS: list[tuple[Callable[[int], bool], Callable[..., Backend]]] = [
    (stat.S_ISREG, _open_regular),
    (stat.S_ISBLK, _open_block),
    (stat.S_ISCHR, _open_devdax),
]


def open_backend(path: str, *, readonly: bool = False, sysfs_root: str = "/sys") -> Backend:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageNotFound("no such file", path=path) from None
    except OSError as e:
        raise ImageError(f"cannot open: {e.strerror}", errno=e.errno, path=path) from None
    for test, opener in OPENERS:
        if test(st.st_mode):
            return opener(path, st, readonly, sysfs_root)
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("is a directory, not a daxkit image", errno=errno.EISDIR, path=path)
    raise ImageError("not a daxkit image, a block device, a device-dax device or a regular file", path=path)
