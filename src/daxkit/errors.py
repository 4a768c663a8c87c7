"""One exception hierarchy: every daxkit error is a DaxError, which is an OSError carrying the
errno the kernel would return in the same situation.  Layers raise these where they know the
cause; only the CLI turns them into a one-line message."""

from __future__ import annotations

import errno as _errno

# Linux asm-generic/errno.h: "Memory page has hardware error"; older Pythons lack the name.
EHWPOISON = getattr(_errno, "EHWPOISON", 133)


class DaxError(OSError):
    """Base of all daxkit errors.  ``err.errno`` is the kernel's errno for the failure."""

    default_errno = _errno.EIO

    def __init__(self, message: str, *, errno: int | None = None, path: str | None = None):
        code = self.default_errno if errno is None else errno
        if path is not None:
            message = f"{path}: {message}"
        super().__init__(code, message)
        self.path = path

    def __str__(self) -> str:
        return self.strerror or ""


class ImageError(DaxError):
    """The image file is missing, is not a daxkit image, or is damaged."""

    default_errno = _errno.EINVAL


class ImageNotFound(ImageError, FileNotFoundError):
    """The image file (or the directory to create it in) does not exist (ENOENT); also a
    FileNotFoundError, so ``except FileNotFoundError`` works as it does for ``open()``."""

    default_errno = _errno.ENOENT


class InvalidArgument(DaxError, ValueError):
    """A bad offset, length, count or text (EINVAL); also a ValueError."""

    default_errno = _errno.EINVAL


class OutOfRange(DaxError):
    """Nothing of the asked range exists on the device (ERANGE)."""

    default_errno = _errno.ERANGE


class HWPoisonError(DaxError):
    """direct_access in normal mode over a known bad sector (EHWPOISON)."""

    default_errno = EHWPOISON


class MediaError(DaxError):
    """The block path met known or latent poison (EIO)."""

    default_errno = _errno.EIO


class PoisonError(MediaError):
    """A safe accessor met poison.  ``offset``/``length``: the first bad range met (device
    offsets, multiples of 64 bytes); ``done``: bytes delivered before it."""

    def __init__(self, message: str, *, offset: int, length: int, done: int):
        super().__init__(message)
        self.offset = offset
        self.length = length
        self.done = done


class DeviceGone(DaxError):
    """The device was removed (``kill()``) or closed (ENXIO)."""

    default_errno = _errno.ENXIO


class NoSpace(DaxError):
    """A table is full (ENOSPC)."""

    default_errno = _errno.ENOSPC


class Busy(DaxError):
    """Already held or in use (EBUSY)."""

    default_errno = _errno.EBUSY


class NotSupported(DaxError):
    """The operation has nobody to serve it (EOPNOTSUPP)."""

    default_errno = _errno.EOPNOTSUPP


class FilesystemShutdown(DaxError):
    """The filesystem shut itself down after losing metadata or its device (EIO)."""

    default_errno = _errno.EIO


class ReadOnly(DaxError):
    """A change asked of a device opened read-only (EROFS)."""

    default_errno = _errno.EROFS
