"""daxkit: direct-access (DAX) memory with first-class media-error ("poison") recovery.

Layers (imports go down only):
    medium/   the image file, its shared error state, the badblocks table, mapped regions
    device/   the pmem-driver layer: direct_access, recovery_write, zero_page_range, block path,
              scrub/injection/holders, and DaxMapping
    cli/      the `daxkit` command
The one native file, _copymc.c, is the machine-check-safe copy.
"""

from __future__ import annotations

import faulthandler as _faulthandler
import functools as _functools
import os as _os

from . import _copymc
from ._copymc import copy_mc
from .device.backends import open_backend
from .device.device import (
    ACCESS,
    MF_ACTION_REQUIRED,
    MF_MEM_PRE_REMOVE,
    PRE_REMOVE,
    RECOVERY_WRITE,
    DaxDevice,
    RecoveredData,
    ScrubReport,
)
from .device.mapping import DaxMapping
from .errors import (
    Busy,
    DaxError,
    DeviceGone,
    FilesystemShutdown,
    HWPoisonError,
    ImageError,
    ImageNotFound,
    InvalidArgument,
    MediaError,
    NoSpace,
    NotSupported,
    OutOfRange,
    PoisonError,
    ReadOnly,
)
from .fs.daxfs import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    RWF_RECOVERY_DATA,
    UTIME_NOW,
    UTIME_OMIT,
    DaxFile,
    DaxFS,
)
from .fs.fsck import fsck
from .fs.superblock import CorruptFilesystem, mkfs
from .medium.badblocks import BB_MAX_LEN, MAX_BADBLOCKS, Badblocks
from .medium.image import create_image
from .units import DEFAULT_CLEAR_ERR_UNIT, LINE_SIZE, PAGE_SIZE, SECTOR_SIZE, parse_size

__version__ = "0.1.0"


def _keep_copy_mc_on_top(enable):
    """faulthandler.enable() installs its handler over ours; put ours back on top, chaining to it,
    so a fault inside copy_mc stays recoverable and every other fault still reaches faulthandler."""

    @_functools.wraps(enable)
    def wrapper(*args, **kwargs):
        result = enable(*args, **kwargs)
        _copymc.install()
        return result

    wrapper.__daxkit_wrapped__ = True
    return wrapper


if not getattr(_faulthandler.enable, "__daxkit_wrapped__", False):
    _faulthandler.enable = _keep_copy_mc_on_top(_faulthandler.enable)


def create(
    path: str | bytes | _os.PathLike,
    size: int | str,
    *,
    clear_err_unit: int = DEFAULT_CLEAR_ERR_UNIT,
    force: bool = False,
) -> DaxDevice:
    """Make a new emulated device image at ``path`` and open it.  ``path`` is taken as the os
    module takes it (str, bytes or path-like; anything else is a TypeError)."""
    path = _os.fsdecode(path)
    try:
        nbytes = parse_size(size)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    create_image(path, nbytes, clear_err_unit, force=force)
    return open(path)


def open(  # noqa: A001 - the SPEC's name
    path: str | bytes | _os.PathLike, *, readonly: bool = False, sysfs_root: str = "/sys"
) -> DaxDevice:
    """Open a device (SPEC 2.1, 7): an emulated image, a pmem block device, a device-dax device or
    a regular file, chosen by what stat() says.  ``readonly`` opens without write access (every
    change raises ReadOnly, EROFS); ``sysfs_root`` is where the known errors of a real device are
    read.  A missing path raises ImageNotFound (a FileNotFoundError)."""
    return DaxDevice(open_backend(_os.fsdecode(path), readonly=readonly, sysfs_root=_os.fsdecode(sysfs_root)))


def mount(dev: DaxDevice, *, readonly: bool = False) -> DaxFS:
    """Mount the daxfs on ``dev``; read-write makes the filesystem the device's holder."""
    return DaxFS(dev, readonly=readonly)


__all__ = [
    "ACCESS",
    "RECOVERY_WRITE",
    "MF_ACTION_REQUIRED",
    "MF_MEM_PRE_REMOVE",
    "PRE_REMOVE",
    "PAGE_SIZE",
    "SECTOR_SIZE",
    "LINE_SIZE",
    "DEFAULT_CLEAR_ERR_UNIT",
    "BB_MAX_LEN",
    "MAX_BADBLOCKS",
    "create",
    "open",
    "copy_mc",
    "parse_size",
    "mkfs",
    "mount",
    "fsck",
    "DaxFS",
    "DaxFile",
    "CorruptFilesystem",
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "FALLOC_FL_ZERO_RANGE",
    "DaxDevice",
    "DaxMapping",
    "ScrubReport",
    "RecoveredData",
    "RWF_RECOVERY_DATA",
    "UTIME_NOW",
    "UTIME_OMIT",
    "Badblocks",
    "DaxError",
    "ImageError",
    "ImageNotFound",
    "InvalidArgument",
    "OutOfRange",
    "HWPoisonError",
    "MediaError",
    "PoisonError",
    "DeviceGone",
    "NoSpace",
    "Busy",
    "NotSupported",
    "ReadOnly",
    "FilesystemShutdown",
]
