"""The emulated device image: one file holding an info block, the shared error state and the
data area (SPEC 2.1).

Layout (all offsets in bytes)
      0  info block (4 KiB): magic, version, geometry, clear_err_unit, CRC32 of the block
   4096  live page: the state generation word and the scrub progress words, shared by every
         process through a MAP_SHARED mapping
   8192  state slot A (1 MiB), then state slot B (1 MiB): header (magic, seq, length, CRC32)
         followed by the encoded ErrorState
  DATA   the data area (DATA = 8192 + 2 MiB), mapped by the device

Theory of operation
  * Commit: under an exclusive flock on the image, read the newest valid slot, build the new
    state, write it into the *other* slot with seq+1 and its checksum, then publish seq+1 in the
    generation word.  A process killed before the slot is complete leaves a slot whose checksum
    fails, so the old state stands; killed after, the new slot is valid and the highest seq wins.
  * Readers compare the generation word with the one they last loaded: one 8-byte load when
    nothing changed.  On a change they take a shared flock and load the newest valid slot.
  * flock (not fcntl locks) because it belongs to the open file, so two opens of one image in
    one process still exclude each other; a thread lock covers threads sharing one open.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Callable
from contextlib import contextmanager

from ..errors import ImageError, InvalidArgument, NoSpace
from ..units import DEFAULT_CLEAR_ERR_UNIT, LINE_SIZE, PAGE_SIZE
from .state import ErrorState

MAGIC = b"DAXKITIM"
VERSION = 1
INFO_SIZE = 4096
LIVE_OFFSET = 4096
SLOT_OFFSET = 8192
SLOT_SIZE = 1 << 20
DATA_OFFSET = SLOT_OFFSET + 2 * SLOT_SIZE

# magic, version, info_size, data_offset, data_size, state_offset, slot_size, clear_err_unit
_INFO = struct.Struct("<8sIIQQQQI")
_INFO_CRC_AT = 256
_SLOT_MAGIC = b"DXST"
_SLOT = struct.Struct("<4sIQI")  # magic, length, seq, crc32(seq bytes + payload)
# live page words (u64): generation, scrub running (pid or 0), scrub done, scrub total
LIVE_GEN, LIVE_SCRUB_PID, LIVE_SCRUB_DONE, LIVE_SCRUB_TOTAL = range(4)


def _info_bytes(data_size: int, clear_err_unit: int) -> bytes:
    body = _INFO.pack(
        MAGIC, VERSION, INFO_SIZE, DATA_OFFSET, data_size, SLOT_OFFSET, SLOT_SIZE, clear_err_unit
    )
    block = bytearray(INFO_SIZE)
    block[: len(body)] = body
    struct.pack_into("<I", block, _INFO_CRC_AT, zlib.crc32(bytes(block[:_INFO_CRC_AT])))
    return bytes(block)


def _slot_bytes(seq: int, payload: bytes) -> bytes:
    if _SLOT.size + len(payload) > SLOT_SIZE:
        raise NoSpace(f"error state too large for its slot ({len(payload)} bytes encoded, max {SLOT_SIZE})")
    crc = zlib.crc32(struct.pack("<Q", seq) + payload)
    return _SLOT.pack(_SLOT_MAGIC, len(payload), seq, crc) + payload


def validate_geometry(size: int, clear_err_unit: int) -> None:
    if size <= 0 or size % PAGE_SIZE:
        raise InvalidArgument(f"size must be a positive multiple of {PAGE_SIZE} bytes, got {size}")
    if clear_err_unit < LINE_SIZE or clear_err_unit & (clear_err_unit - 1):
        raise InvalidArgument(f"clear_err_unit must be a power of two >= {LINE_SIZE}, got {clear_err_unit}")


def create_image(
    path: str, size: int, clear_err_unit: int = DEFAULT_CLEAR_ERR_UNIT, force: bool = False
) -> None:
    """Write a new, empty image.  Built beside the target and renamed in, so a crash never
    leaves a half-made image under ``path`` and ``force`` never destroys the old one early."""
    validate_geometry(size, clear_err_unit)
    if os.path.exists(path) and not force:
        raise ImageError("file exists (use force to overwrite)", errno=_errno.EEXIST, path=path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        raise ImageError(f"cannot create: {e.strerror}", errno=e.errno, path=path) from None
    try:
        os.pwrite(fd, _info_bytes(size, clear_err_unit), 0)
        os.pwrite(fd, struct.pack("<Q", 1), LIVE_OFFSET)
        os.pwrite(fd, _slot_bytes(1, ErrorState().encode()), SLOT_OFFSET)
        os.ftruncate(fd, DATA_OFFSET + size)
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        os.unlink(tmp)
        raise ImageError(f"cannot write: {e.strerror}", errno=e.errno, path=path) from None
    os.close(fd)
    os.replace(tmp, path)


class Image:
    """An open image: its geometry, the shared error state, and the data area's file."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise ImageError("no such file", errno=_errno.ENOENT, path=path) from None
        except IsADirectoryError:
            raise ImageError("is a directory, not a daxkit image", errno=_errno.EISDIR, path=path) from None
        except OSError as e:
            raise ImageError(f"cannot open: {e.strerror}", errno=e.errno, path=path) from None
        try:
            self._read_info()
            self.live = mmap.mmap(self.fd, PAGE_SIZE, offset=LIVE_OFFSET)
            self.words = memoryview(self.live).cast("Q")
            self._tlock = threading.RLock()
            self.load()  # refuse an image whose error state cannot be read
        except BaseException:
            os.close(self.fd)
            raise

    def _read_info(self) -> None:
        st = os.fstat(self.fd)
        raw = os.pread(self.fd, INFO_SIZE, 0)
        if len(raw) < _INFO.size or raw[:8] != MAGIC:
            raise ImageError("not a daxkit image (no daxkit magic in the info block)", path=self.path)
        if len(raw) < INFO_SIZE:
            raise ImageError(
                f"truncated image: info block is {len(raw)} of {INFO_SIZE} bytes", path=self.path
            )
        magic, version, info_size, data_off, data_size, state_off, slot_size, ceu = _INFO.unpack_from(raw)
        (crc,) = struct.unpack_from("<I", raw, _INFO_CRC_AT)
        if zlib.crc32(raw[:_INFO_CRC_AT]) != crc:
            raise ImageError("info block checksum mismatch (corrupted header)", path=self.path)
        if version != VERSION:
            raise ImageError(
                f"unsupported image version {version} (this daxkit reads {VERSION})", path=self.path
            )
        if (info_size, data_off, state_off, slot_size) != (INFO_SIZE, DATA_OFFSET, SLOT_OFFSET, SLOT_SIZE):
            raise ImageError("info block geometry is inconsistent (corrupted header)", path=self.path)
        try:
            validate_geometry(data_size, ceu)
        except InvalidArgument as e:
            raise ImageError(f"info block geometry is invalid: {e.strerror}", path=self.path) from None
        if st.st_size < data_off + data_size:
            raise ImageError(
                f"truncated image: {st.st_size} bytes, geometry needs {data_off + data_size}", path=self.path
            )
        self.data_offset = data_off
        self.data_size = data_size
        self.clear_err_unit = ceu

    # -- the shared error state -------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self.words[LIVE_GEN]

    def _read_slots(self) -> tuple[int, ErrorState, int]:
        """(seq, state, slot index) of the newest valid slot."""
        best = None
        for i in (0, 1):
            off = SLOT_OFFSET + i * SLOT_SIZE
            head = os.pread(self.fd, _SLOT.size, off)
            if len(head) < _SLOT.size:
                continue
            magic, length, seq, crc = _SLOT.unpack(head)
            if magic != _SLOT_MAGIC or length > SLOT_SIZE - _SLOT.size:
                continue
            payload = os.pread(self.fd, length, off + _SLOT.size)
            if zlib.crc32(struct.pack("<Q", seq) + payload) != crc:
                continue
            if best is None or seq > best[0]:
                try:
                    best = (seq, ErrorState.decode(payload), i)
                except (ValueError, KeyError, TypeError):
                    continue
        if best is None:
            raise ImageError("error state is corrupted (no valid state slot)", path=self.path)
        if self.words[LIVE_GEN] > best[0]:
            # The generation word is published only after its slot is complete: a newer slot
            # existed and was damaged afterwards, which a crash cannot explain.
            raise ImageError(
                f"error state is corrupted (state {self.words[LIVE_GEN]} was committed, "
                "its slot fails its checksum)",
                path=self.path,
            )
        return best

    @contextmanager
    def _flock(self, kind: int):
        with self._tlock:
            fcntl.flock(self.fd, kind)
            try:
                yield
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def load(self) -> tuple[int, ErrorState]:
        """The newest committed state and its generation."""
        with self._flock(fcntl.LOCK_SH):
            seq, state, _ = self._read_slots()
            return seq, state

    def commit(self, change: Callable[[ErrorState], ErrorState]) -> tuple[int, ErrorState]:
        """Apply ``change`` to the newest state atomically, serialized with every other process.
        ``change`` may raise to abort; nothing is written then."""
        with self._flock(fcntl.LOCK_EX):
            seq, state, slot = self._read_slots()
            new = change(state)
            if new is state or new == state:
                return seq, state
            seq += 1
            target = SLOT_OFFSET + (1 - slot) * SLOT_SIZE
            os.pwrite(self.fd, _slot_bytes(seq, new.encode()), target)
            self.words[LIVE_GEN] = seq
            return seq, new

    # -- the holder claim: one holder per device across processes ---------------------------
    _HOLDER_BYTE = 1  # an OFD byte-range lock; flock (used for commits) does not interact with it

    def claim_holder(self) -> bool:
        """Take the cross-process holder claim; False if another open of the image has it.
        OFD locks belong to this open, so a second open in the same process is refused too."""
        lk = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, self._HOLDER_BYTE, 1, 0)
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, lk)
            return True
        except OSError as e:
            if e.errno in (_errno.EAGAIN, _errno.EACCES):
                return False
            raise

    def release_holder(self) -> None:
        lk = struct.pack("hhqqi4x", fcntl.F_UNLCK, os.SEEK_SET, self._HOLDER_BYTE, 1, 0)
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, lk)

    # -- the data area ----------------------------------------------------------------------
    def map_data(self, offset: int = 0, length: int | None = None) -> mmap.mmap:
        length = self.data_size - offset if length is None else length
        return mmap.mmap(self.fd, length, offset=self.data_offset + offset)

    def medium_read_into(self, buf, offset: int) -> int:
        """Read the stored bytes under any poison (the emulator's view of the cells)."""
        return os.preadv(self.fd, [buf], self.data_offset + offset)

    def medium_write(self, data, offset: int) -> int:
        return os.pwrite(self.fd, data, self.data_offset + offset)

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            self.words.release()
            self.live.close()
        except BufferError:
            pass
        os.close(self.fd)
        self.fd = -1
