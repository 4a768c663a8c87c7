"""The emulated device image: one file holding an info block, the shared error state and the
data area (SPEC 2.1).

Layout (all offsets in bytes)
      0  info block (4 KiB): magic, version, geometry, clear_err_unit, CRC32 of the block
   4096  live page: the state generation word and the scrub progress words, shared by every
         process through a MAP_SHARED mapping
   8192  state slot A (1 MiB), then state slot B (1 MiB): a header (magic, seq, payload offset,
         payload length, CRC32) and, when it fits, the encoded ErrorState right behind it
  DATA   the data area (DATA = 8192 + 2 MiB), mapped by the device
  END    (DATA + data size) payloads too large for their slot, page aligned; the file grows and
         shrinks with them.  Nothing else ever lives past END.

Theory of operation
  * Commit: under an exclusive flock on the image, read the newest valid slot, build the new
    state, write it into the *other* slot with seq+1 and its checksum, then publish seq+1 in the
    generation word.  A process killed before the slot is complete leaves a slot whose checksum
    fails, so the old state stands; killed after, the new slot is valid and the highest seq wins.
  * No ceiling: a payload that does not fit in its slot goes past END, at END when the newest
    slot's payload is not there, else right behind it, so the state that stands is never
    overwritten.  Payload first, header last; the checksum covers the header's fields, so a
    header never vouches for bytes that are not all there.  A reader bounds-checks the
    payload against the slot or [END, file size) before reading it.
  * Readers compare the generation word with the one they last loaded: one 8-byte load when
    nothing changed.  On a change they take a shared flock and load the newest valid slot.
  * flock (not fcntl locks) because it belongs to the open file, so two opens of one image in
    one process still exclude each other; a thread lock covers threads sharing one open.
  * OFD byte-range locks (which do not interact with flock) mark who is there: byte 1 the
    holder, byte 2 every open that is scrubbing now.  The kernel drops them when the open file
    goes, so a killed process never leaves a claim or a "scrub running" behind.
  * Every write of the header, the state or the medium is whole: pwrite is repeated on a
    short count; one that makes no progress, or fails (ENOSPC, EDQUOT, EFBIG...), raises before
    the generation word is published, so the state that stands stays and nothing changes (a
    payload begun past END is cut off again).  A short count taken as success once published
    a slot cut in half: the image was refused from then on.
  * Creating: the image is built under an unpredictable name in the target's directory
    (O_EXCL|O_NOFOLLOW, mode 0600: it holds whole filesystems whose permissions the file cannot
    enforce), allocated whole (posix_fallocate; zeroes written where the file system has no
    fallocate), synced, and renamed in; any failure, Ctrl-C included, removes it.  Allocating
    up front is what keeps a later store into the data area from dying with SIGBUS when the
    file system holding a sparse image fills up; a file system without the room refuses the
    create instead, naming the size.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import mmap
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable
from contextlib import contextmanager, suppress

from ..errors import DaxError, ImageError, ImageNotFound, InvalidArgument, NoSpace, ReadOnly
from ..units import DEFAULT_CLEAR_ERR_UNIT, LINE_SIZE, PAGE_SIZE, align_up
from . import locks
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
_SLOT_MAGIC = b"DXS2"
_SLOT = struct.Struct("<4sQQQI")  # magic, seq, payload offset, payload length, crc32(seq..length + payload)
_SLOT_V1 = struct.Struct("<4sIQI")  # b"DXST", length, seq, crc32(seq + payload): inline, older images
INLINE_MAX = SLOT_SIZE - _SLOT.size  # larger payloads go past the data area
# live page words (u64): generation, scrub running (pid or 0), scrub done, scrub total, the
# generation a cache watcher has acted on, that watcher's pid (0: none; older images have none)
LIVE_GEN, LIVE_SCRUB_PID, LIVE_SCRUB_DONE, LIVE_SCRUB_TOTAL, LIVE_SEEN, LIVE_WATCHER = range(6)


def _info_bytes(data_size: int, clear_err_unit: int) -> bytes:
    body = _INFO.pack(
        MAGIC, VERSION, INFO_SIZE, DATA_OFFSET, data_size, SLOT_OFFSET, SLOT_SIZE, clear_err_unit
    )
    block = bytearray(INFO_SIZE)
    block[: len(body)] = body
    struct.pack_into("<I", block, _INFO_CRC_AT, zlib.crc32(bytes(block[:_INFO_CRC_AT])))
    return bytes(block)


def _slot_header(seq: int, where: int, payload: bytes) -> bytes:
    fields = struct.pack("<QQQ", seq, where, len(payload))
    return _SLOT_MAGIC + fields + struct.pack("<I", zlib.crc32(payload, zlib.crc32(fields)))


def _image_error(e: OSError, doing: str, path: str) -> ImageError:
    cls = ImageNotFound if e.errno == _errno.ENOENT else ImageError
    return cls(f"cannot {doing}: {e.strerror}", errno=e.errno, path=path)


class ImageNoSpace(ImageError, NoSpace):
    """The file system holding the image has no room (ENOSPC, or EDQUOT): an ImageError that
    ``except daxkit.NoSpace`` catches too."""

    default_errno = _errno.ENOSPC


_NO_SPACE = (_errno.ENOSPC, _errno.EDQUOT)


def _space_error(e: OSError, message: str, path) -> ImageError:
    cls = ImageNoSpace if e.errno in _NO_SPACE else ImageError
    return cls(f"{message}: {e.strerror}", errno=e.errno, path=path)


def _pwrite_all(fd: int, data, offset: int) -> None:
    """pwrite all of ``data`` at ``offset``: a short count is written on; a write that makes
    no progress is ENOSPC (the file system took nothing and said nothing)."""
    view = memoryview(data).cast("B")
    n, done = view.nbytes, 0
    while done < n:
        got = os.pwrite(fd, view[done:], offset + done)
        if got <= 0:
            raise OSError(_errno.ENOSPC, f"{os.strerror(_errno.ENOSPC)} (a write made no progress)")
        done += got


_ZEROES = bytes(1 << 20)


def _allocate(fd: int, length: int) -> None:
    """Give the file ``length`` bytes of real storage.  Where the file system has no fallocate,
    writing zeroes does it (what glibc's own fallback does, a page at a time)."""
    try:
        os.posix_fallocate(fd, 0, length)
        return
    except OSError as e:
        if e.errno not in (_errno.EOPNOTSUPP, _errno.ENOTSUP, _errno.ENOSYS, _errno.EINVAL):
            raise
    for at in range(0, length, len(_ZEROES)):
        _pwrite_all(fd, memoryview(_ZEROES)[: min(len(_ZEROES), length - at)], at)


MAX_DATA_SIZE = 1 << 50  # 1 PiB: far past any device, and what an image file's offsets can carry
MAX_CLEAR_ERR_UNIT = 1 << 20  # ACPI reports units of a cache line to a page; 1 MiB is generous


def validate_geometry(size: int, clear_err_unit: int) -> None:
    if size <= 0 or size % PAGE_SIZE or size > MAX_DATA_SIZE:
        raise InvalidArgument(
            f"size must be a positive multiple of {PAGE_SIZE} bytes up to {MAX_DATA_SIZE}, got {size}"
        )
    ceu = clear_err_unit
    if ceu < LINE_SIZE or ceu & (ceu - 1) or ceu > MAX_CLEAR_ERR_UNIT:
        raise InvalidArgument(
            f"clear_err_unit must be a power of two from {LINE_SIZE} to {MAX_CLEAR_ERR_UNIT}, got {ceu}"
        )


def create_image(
    path: str, size: int, clear_err_unit: int = DEFAULT_CLEAR_ERR_UNIT, force: bool = False
) -> None:
    """Write a new, empty image.  Built beside the target and renamed in, so a crash never
    leaves a half-made image under ``path`` and ``force`` never destroys the old one early."""
    validate_geometry(size, clear_err_unit)
    if os.path.isdir(path):
        raise ImageError("is a directory", errno=_errno.EISDIR, path=path)
    if os.path.lexists(path) and not force:
        raise ImageError("file exists (use force to overwrite)", errno=_errno.EEXIST, path=path)
    head, tail = os.path.split(path)
    try:
        # mkstemp: O_CREAT|O_EXCL|O_NOFOLLOW under a random name, mode 0600
        fd, tmp = tempfile.mkstemp(prefix=f".{tail[:64]}.", suffix=".tmp", dir=head or ".")
    except OSError as e:
        raise _image_error(e, "create", path) from None
    total = DATA_OFFSET + size
    try:
        os.fchmod(fd, 0o600)
        try:
            _allocate(fd, total)
        except OSError as e:
            raise _space_error(
                e, f"cannot allocate the image: {total} bytes for a device of {size} bytes", path
            ) from None
        _pwrite_all(fd, _info_bytes(size, clear_err_unit), 0)
        _pwrite_all(fd, struct.pack("<Q", 1), LIVE_OFFSET)
        payload = ErrorState().encode()
        _pwrite_all(fd, _slot_header(1, SLOT_OFFSET + _SLOT.size, payload) + payload, SLOT_OFFSET)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        _install(tmp, path, force)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, DaxError):
            if e.errno in _NO_SPACE + (_errno.EFBIG,):
                raise _space_error(e, f"cannot write the image ({total} bytes)", path) from None
            raise _image_error(e, "write", path) from None
        raise
    with suppress(OSError):  # make the rename itself durable
        dfd = os.open(head or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _install(tmp: str, path: str, force: bool) -> None:
    """Rename the finished image in.  Without force, link(2) does it so that a file created
    at ``path`` meanwhile is never overwritten; rename where the filesystem has no links."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise ImageError("file exists (use force to overwrite)", errno=_errno.EEXIST, path=path) from None
    except OSError as e:
        if e.errno not in (_errno.EPERM, _errno.EOPNOTSUPP, _errno.EMLINK):
            raise
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


class Image:
    """An open image: its geometry, the shared error state, and the data area's file."""

    def __init__(self, path: str, *, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        try:
            self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        except FileNotFoundError:
            raise ImageNotFound("no such file", path=path) from None
        except IsADirectoryError:
            raise ImageError("is a directory, not a daxkit image", errno=_errno.EISDIR, path=path) from None
        except OSError as e:
            raise ImageError(f"cannot open: {e.strerror}", errno=e.errno, path=path) from None
        try:
            self._read_info()
            access = mmap.ACCESS_READ if readonly else mmap.ACCESS_DEFAULT
            self.live = mmap.mmap(self.fd, PAGE_SIZE, offset=LIVE_OFFSET, access=access)
            self.words = memoryview(self.live).cast("Q")
            self._tlock = threading.RLock()
            self._scrubs = 0  # scrubs running on this open (threads share its OFD lock)
            self._decoded: tuple[bytes | None, ErrorState | None] = (None, None)  # payload, its state
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
        self.data_end = data_off + data_size
        self.clear_err_unit = ceu

    # -- the shared error state -------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self.words[LIVE_GEN]

    def _read_slot(self, i: int, file_size: int) -> tuple[int, bytes, tuple[int, int]] | None:
        """(seq, payload, (payload offset, length)) of slot i, or None if it holds no whole
        state.  The payload must lie inside its slot or past the data area inside the file."""
        at = SLOT_OFFSET + i * SLOT_SIZE
        head = os.pread(self.fd, _SLOT.size, at)
        if head[:4] == _SLOT_MAGIC and len(head) == _SLOT.size:
            _, seq, where, length, crc = _SLOT.unpack(head)
            signed = head[4:28]
            inline = where == at + _SLOT.size and length <= SLOT_SIZE - _SLOT.size
            if not (inline or (where >= self.data_end and where + length <= file_size)):
                return None
        elif head[:4] == b"DXST" and len(head) >= _SLOT_V1.size:
            _, length, seq, crc = _SLOT_V1.unpack_from(head)
            signed, where = struct.pack("<Q", seq), at + _SLOT_V1.size
            if length > SLOT_SIZE - _SLOT_V1.size:
                return None
        else:
            return None
        payload = os.pread(self.fd, length, where)
        if len(payload) != length or zlib.crc32(payload, zlib.crc32(signed)) != crc:
            return None
        return seq, payload, (where, length)

    def _read_slots(self) -> tuple[int, ErrorState, int, tuple[int, int]]:
        """(seq, state, slot index, payload extent) of the newest valid slot."""
        size = os.fstat(self.fd).st_size
        slots = [(slot, i) for i in (0, 1) if (slot := self._read_slot(i, size)) is not None]
        best = None
        for (seq, payload, extent), i in sorted(slots, key=lambda si: -si[0][0]):
            try:
                best = (seq, self._decode(payload), i, extent)
                break
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
        if best[0] > self.words[LIVE_GEN] and not self.readonly:
            # A committer died between its slot and the word: publish for it, or every
            # reader would see "changed" on every access until the next commit.
            self.words[LIVE_GEN] = best[0]
        return best

    def _decode(self, payload: bytes) -> ErrorState:
        """Decoding half a million ranges costs more than reading and checking them: the state
        this open last read or wrote is reused when its bytes are the same (a memcmp)."""
        if payload != self._decoded[0]:
            self._decoded = (payload, ErrorState.decode(payload))
        return self._decoded[1]

    def _write_slot(self, i: int, seq: int, payload: bytes, keep: tuple[int, int]) -> int:
        """Write ``payload`` as slot i's state ``seq`` without touching ``keep`` (the payload
        of the state that stands).  Returns where the payload ends.  Payload first, header
        last, each written whole (or OSError): the caller publishes only after this returns."""
        at = SLOT_OFFSET + i * SLOT_SIZE
        n = len(payload)
        if n <= INLINE_MAX:
            where = at + _SLOT.size
        else:
            where = self.data_end
            if keep[0] < where + n and keep[0] + keep[1] > where:
                where = align_up(keep[0] + keep[1], PAGE_SIZE)
        _pwrite_all(self.fd, payload, where)
        _pwrite_all(self.fd, _slot_header(seq, where, payload), at)
        return where + n

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
            seq, state, _, _ = self._read_slots()
            return seq, state

    def commit(self, change: Callable[[ErrorState], ErrorState]) -> tuple[int, ErrorState]:
        """Apply ``change`` to the newest state atomically, serialized with every other process.
        ``change`` may raise to abort; nothing is committed then, nor when the file system
        cannot store the new state (the one limit left).  A read-only open changes nothing
        (ReadOnly, EROFS)."""
        if self.readonly:
            raise ReadOnly("opened read-only: the error state cannot change", path=self.path)
        with self._flock(fcntl.LOCK_EX):
            seq, state, slot, keep = self._read_slots()
            new = change(state)
            if new is state or new == state:
                return seq, state
            seq += 1
            payload = new.encode()
            try:
                end = self._write_slot(1 - slot, seq, payload, keep)
            except OSError as e:
                # Not published: the old state stands.  A payload begun past the data area
                # is given back (nothing else lives there).
                with suppress(OSError):
                    needed = max(self.data_end, keep[0] + keep[1])
                    if os.fstat(self.fd).st_size > needed:
                        os.ftruncate(self.fd, needed)
                msg = f"cannot store the error state ({len(payload)} bytes), nothing changed"
                raise _space_error(e, msg, self.path) from None
            self.words[LIVE_GEN] = seq
            self._decoded = (payload, new)
            # Space past the data area that neither state uses any more goes back.
            needed = max(self.data_end, end, keep[0] + keep[1])
            if os.fstat(self.fd).st_size > needed:
                os.ftruncate(self.fd, needed)
            return seq, new

    # -- the holder claim: one holder per device across processes ---------------------------
    def claim_holder(self) -> bool:
        """Take the cross-process holder claim; False if another open of the image has it
        (a second open in the same process too: the lock is this open's)."""
        if self.readonly:
            raise ReadOnly("opened read-only: cannot become the device's holder", path=self.path)
        return locks.try_lock(self.fd, locks.HOLDER_BYTE)

    def release_holder(self) -> None:
        locks.unlock(self.fd, locks.HOLDER_BYTE)

    # -- who is scrubbing: a shared OFD lock on byte 2 while any scrub of this open runs ------
    @contextmanager
    def scrubbing(self):
        """Mark a scrub as running for as long as the block runs (and not a moment longer, even
        if the process is killed: the lock goes with the open file)."""
        with self._tlock:
            if self._scrubs == 0:
                fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, locks.ofd_lock(fcntl.F_RDLCK, locks.SCRUB_BYTE))
            self._scrubs += 1
        try:
            yield
        finally:
            with self._tlock:
                self._scrubs -= 1
                if self._scrubs == 0:
                    locks.unlock(self.fd, locks.SCRUB_BYTE)

    def scrub_running(self) -> bool:
        """Is any open of this image scrubbing now?  (A pid in the live page is only a hint.)"""
        if self._scrubs:
            return True
        probe = fcntl.fcntl(self.fd, fcntl.F_OFD_GETLK, locks.ofd_lock(fcntl.F_WRLCK, locks.SCRUB_BYTE))
        return struct.unpack_from("h", probe)[0] != fcntl.F_UNLCK

    # -- the data area ----------------------------------------------------------------------
    def map_data(self, offset: int = 0, length: int | None = None) -> mmap.mmap:
        length = self.data_size - offset if length is None else length
        return mmap.mmap(self.fd, length, offset=self.data_offset + offset)

    def medium_read_into(self, buf, offset: int) -> int:
        """Read the stored bytes under any poison (the emulator's view of the cells)."""
        return os.preadv(self.fd, [buf], self.data_offset + offset)

    def medium_write(self, data, offset: int) -> int:
        """Store bytes in the cells (under any poison); all of them, or OSError."""
        n = memoryview(data).nbytes
        _pwrite_all(self.fd, data, self.data_offset + offset)
        return n

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
