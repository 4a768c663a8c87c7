"""Virtual memory for mappings of the data area: one contiguous range built from pieces of the
image file, whose pages can be made PROT_NONE (how the emulator makes poison fault).

Rules
  * A Region owns an anonymous reservation (a Python mmap object); pieces of the image file are
    mapped over it with MAP_FIXED.  Closing the mmap object unmaps everything at once, and Python
    refuses to close it while a memoryview still points into it, so stale views never dangle.
  * ``protect`` keeps the set of PROT_NONE pages and changes only what differs: no system call
    when nothing changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

from ..units import PAGE_SIZE
from . import ranges

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mprotect.restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value
_RW = mmap.PROT_READ | mmap.PROT_WRITE
_MAP_FIXED = 0x10  # <sys/mman.h>, the same on every Linux architecture
_PROT_NONE = 0
_MAP_SYNC_FLAGS = 0x03 | 0x80000  # MAP_SHARED_VALIDATE | MAP_SYNC (asm-generic/mman-common.h)


class _PyBuffer(ctypes.Structure):  # Py_buffer (Include/pybuffer.h)
    _fields_ = [
        ("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    ]  # fmt: skip


def address_of(mm: mmap.mmap) -> int:
    """Where the mapping starts; read-only mappings included (ctypes' from_buffer wants write)."""
    view = _PyBuffer()
    if ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(mm), ctypes.byref(view), 0) != 0:
        raise OSError("cannot take the address of a mapping")
    try:
        return view.buf
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


class Region:
    """``pieces``: (region_offset, file_offset, length), page-aligned, covering [0, length).

    ``writable=False`` maps read-only (a read-only open).  ``sync=True`` asks for
    MAP_SHARED_VALIDATE|MAP_SYNC (stores durable without msync, on a DAX file system) and falls
    back to MAP_SHARED where the file system refuses it; ``synchronous`` says which one it got,
    so ``flush`` knows whether msync is needed.  ``align`` > PAGE_SIZE places the region at an
    address that is a multiple of it (device-dax refuses a mapping that is not); ``mm`` is then a
    memoryview of that part of a larger reservation."""

    def __init__(
        self,
        fd: int,
        pieces: list[tuple[int, int, int]],
        length: int,
        *,
        writable: bool = True,
        sync: bool = False,
        align: int = PAGE_SIZE,
    ):
        self.length = length
        self._prot = _RW if writable else mmap.PROT_READ
        self.synchronous = False
        if align > PAGE_SIZE:
            self._owner = mmap.mmap(-1, length + align, flags=mmap.MAP_PRIVATE, prot=self._prot)
            base = address_of(self._owner)
            skip = -base % align
            self.mm = memoryview(self._owner)[skip : skip + length]
            self.addr = base + skip
        else:
            self.mm = self._owner = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE, prot=self._prot)
            self.addr = address_of(self.mm)
        self._none: ranges.Intervals = []  # region pages that are PROT_NONE
        for roff, foff, n in pieces:
            got = _MAP_FAILED
            if sync and writable:
                got = _libc.mmap(self.addr + roff, n, self._prot, _MAP_SYNC_FLAGS | _MAP_FIXED, fd, foff)
                self.synchronous = got != _MAP_FAILED  # EOPNOTSUPP/EINVAL: not a DAX mount
            if got == _MAP_FAILED:
                got = _libc.mmap(self.addr + roff, n, self._prot, mmap.MAP_SHARED | _MAP_FIXED, fd, foff)
            if got == _MAP_FAILED or got != self.addr + roff:
                err = ctypes.get_errno()
                self.close()
                raise OSError(err, f"mmap of file offset {foff}: {os.strerror(err)}")

    def flush(self) -> None:
        """Make stores durable: msync unless the mapping is MAP_SYNC (then CPU cache flushes
        suffice, which a Python store cannot issue; the kernel's DAX path made them durable)."""
        if not self.synchronous and self._prot == _RW:
            self._owner.flush()

    def protect(self, none_pages: ranges.Intervals) -> None:
        """Make exactly ``none_pages`` (region page intervals) PROT_NONE, the rest read-write."""
        if none_pages == self._none:
            return
        for s, e in ranges.subtract(none_pages, self._none):
            self._mprotect(s, e, _PROT_NONE)
        for s, e in ranges.subtract(self._none, none_pages):
            self._mprotect(s, e, self._prot)
        self._none = list(none_pages)

    def _mprotect(self, first: int, end: int, prot: int) -> None:
        if _libc.mprotect(self.addr + first * PAGE_SIZE, (end - first) * PAGE_SIZE, prot) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mprotect: {os.strerror(err)}")

    def revoke(self) -> None:
        """Make every page fault (the device is gone), without unmapping under live views."""
        self.protect([(0, self.length // PAGE_SIZE)])

    def close(self) -> bool:
        """Unmap now if no view is left; otherwise Python unmaps when the last view dies."""
        try:
            if self.mm is not self._owner:
                self.mm.release()
            self._owner.close()
            return True
        except BufferError:
            return False
