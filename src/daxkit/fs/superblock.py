"""daxfs super: formatting, and reading the metadata off the device (mount, fsck, and a
read-only mount that follows a live writer).

Rules
  * Metadata is read and written only through the fsdax layer, like file data.
  * A reader never reports damage that is not there.  Another process may be writing while we
    read (SPEC 3, "Sharing an image"): a log append or a checkpoint can land between two of our
    copies, and the bytes we hold then form a view that never existed.  So a load is validated
    like a seqlock read, on the bytes instead of a counter: after loading, the regions the view
    was built from (its superblock, its checkpoint, the log up to its tail) are read again; if
    any moved, the view was torn and the load starts again.  A load that found anything wrong
    re-reads everything (both superblocks, the whole log): damage is reported only when two
    reads agree on it.
  * The log is read with the recovery read, so poison in it costs only what it covers: records
    before it replay, poison past the last committed record (the unused tail) is no damage at
    all, and a committed record lost to poison is found by its second commit word.
  * A read-only mount asks ``changed()`` before and after each operation: one look at the
    superblock pages and at the commit word where the writer's next record would go.

Theory of operation
  Appends never move committed bytes within an epoch, and a checkpoint changes a superblock page
  before the log is reused; so "superblock pages unchanged and no record at the tail" means
  nothing committed since the view was loaded.
"""

from __future__ import annotations

import errno
import time
import zlib

from ..device.interface import DaxOperations
from ..errors import DaxError, InvalidArgument, MediaError
from ..fsdax.iomap import iomap_read, iomap_read_recover, iomap_write
from ..units import PAGE_SIZE
from . import layout
from .layout import FormatError, Geometry, Superblock
from .meta import Meta

P = PAGE_SIZE
EFSCORRUPTED = errno.EUCLEAN  # what XFS and ext4 return for corrupted metadata
_LOAD_TRIES = 200  # a torn view needs a writer that commits during our read, every time


class CorruptFilesystem(DaxError):
    """The metadata on the device is damaged or unreadable (EFSCORRUPTED)."""

    default_errno = EFSCORRUPTED


# -- reading and writing metadata through the device's primitives ----------------------------------
def meta_read(dev: DaxOperations, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    try:
        got = iomap_read(dev, memoryview(buf), [(offset, length)])
    except MediaError:
        got = 0
    if got < length:
        raise CorruptFilesystem(f"metadata at device offset {offset + got} is poisoned")
    return bytes(buf)


def meta_write(dev: DaxOperations, offset: int, data: bytes) -> None:
    """Whole pages recover poison on the way (mkfs, checkpoints, superblocks); a log append over
    known poison cannot, and fails."""
    if iomap_write(dev, memoryview(data), [(offset, len(data))]) < len(data):
        raise MediaError(f"metadata write at device offset {offset} met poison")


def meta_write_verified(dev: DaxOperations, offset: int, data: bytes) -> None:
    """A page-aligned metadata write that is read back: a store over latent poison does not
    clear it, so the first read-back makes the poison known (consumption) and the second write,
    now over known poison, clears it (the kernel's recovery write)."""
    for _ in range(2):
        meta_write(dev, offset, data)
        check, bad = _recover(dev, offset, len(data))
        if not bad and check == data:
            return
    raise MediaError(f"metadata at device offset {offset} does not read back")


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % P)


def read_superblocks(dev: DaxOperations) -> tuple[list[tuple[int, Superblock]], list[str]]:
    found, problems = [], []
    for slot in (0, 1):
        try:
            raw = meta_read(dev, slot * P, P)
        except CorruptFilesystem as e:
            problems.append(f"superblock copy {slot}: {e}")
            continue
        if raw == bytes(P):
            continue
        try:
            found.append((slot, Superblock.decode(raw, dev.size)))
        except FormatError as e:
            problems.append(f"superblock copy {slot}: {e}")
    return found, problems


def mkfs(dev: DaxOperations, *, force: bool = False) -> None:
    """Format ``dev``.  An existing daxfs is refused unless ``force``; a mounted one always is."""
    g = Geometry.for_device(dev.size)
    if g.nblocks < g.data_start + layout.MIN_DATA_BLOCKS:
        raise InvalidArgument(
            f"device of {dev.size} bytes is too small for daxfs (needs {(g.data_start + 16) * P} bytes)"
        )
    found, _ = read_superblocks(dev)
    if found and not force:
        raise DaxError(
            "device already holds a daxfs filesystem (use force)", errno=errno.EEXIST, path=dev.path
        )
    claim = _Claim()
    dev.holder = claim  # refuse to format under a mounted filesystem (EBUSY)
    try:
        meta = Meta.empty()
        raw = layout.encode_checkpoint(meta.checkpoint_doc())
        meta_write(dev, 0, bytes(2 * P))
        meta_write(dev, g.log_start * P, bytes(g.log_bytes))
        meta_write(dev, g.ckpt_start(0) * P, pad(raw))
        sb = Superblock(1, 1, 0, len(raw), zlib.crc32(raw), g, layout.new_uuid())
        meta_write(dev, (sb.sb_seq % 2) * P, sb.encode())
    finally:
        dev.holder = None


class _Claim:
    """A placeholder holder while mkfs runs."""

    def notify_failure(self, offset: int, length: int, flags: int) -> int:
        return 0


def _recover(dev: DaxOperations, offset: int, length: int) -> tuple[bytes, list[tuple[int, int]]]:
    """(bytes, bad ranges relative to ``offset``): the recovery read of a metadata region."""
    buf = bytearray(length)
    bad = iomap_read_recover(dev, memoryview(buf), [(offset, length)])
    return bytes(buf), [(s, s + n) for s, n in bad]


def _sb_pages(dev: DaxOperations) -> bytes:
    return _recover(dev, 0, 2 * P)[0]


class Loaded:
    """What a mount or fsck reads off the device: a view that some instant really had."""

    def __init__(self, dev: DaxOperations):
        for _ in range(_LOAD_TRIES):
            self.sb_pages = _sb_pages(dev)
            self._reads: list[tuple[int, bytes]] = []
            try:
                self._load(dev)
                error = None
            except CorruptFilesystem as e:
                error = e
            if not self._reads_stable(dev, strict=error is not None or bool(self.problems or self.notes)):
                time.sleep(0.0002)
                continue  # a commit landed on bytes we used: the view never existed
            if error is not None:
                raise error
            return
        raise DaxError(
            "the metadata kept changing while it was read (a writer is busy); try again",
            errno=errno.EAGAIN,
            path=dev.path,
        )

    def _read(self, dev: DaxOperations, offset: int, length: int) -> bytes:
        data = meta_read(dev, offset, length)
        self._reads.append((offset, data))
        return data

    def _reads_stable(self, dev: DaxOperations, strict: bool) -> bool:
        """Are the bytes this view was built from still there?  Normally only what it used (its
        superblock, its checkpoint, the log up to its tail): a checkpoint that landed meanwhile
        in the other area makes our view an older one, not a torn one.  When something looked
        wrong, every byte read, both superblocks and the whole log."""
        regions = list(self._reads) + [(0, self.sb_pages)]
        if not strict:
            slot = getattr(self, "slot", 0)
            regions = [(off, data) for off, data in self._reads if off != self._log_base]
            regions += [(slot * P, self.sb_pages[slot * P : (slot + 1) * P])]
            regions += [(self._log_base, self._log[: self.tail])]
        return all(_recover(dev, off, len(data))[0] == data for off, data in regions if data)

    def _load(self, dev: DaxOperations) -> None:
        # problems: the metadata cannot be trusted (mount refuses); notes: damage that loses
        # nothing (a stale or spare copy, poison in unused space), which fsck reports and the
        # mount tolerates (a read-write mount rewrites it).
        self.problems: list[str] = []
        self.log_bad: list[tuple[int, int]] = []
        self._log_base, self._log, self.tail = -1, b"", 0
        found, self.notes = read_superblocks(dev)
        if not found:
            raise CorruptFilesystem(
                "no valid daxfs superblock (not formatted, or both copies damaged)" +
                (f": {'; '.join(self.notes)}" if self.notes else ""),
                path=dev.path,
            )  # fmt: skip
        self.slot, self.sb = max(found, key=lambda s: s[1].sb_seq)
        g = self.g = self.sb.geometry
        raw = self._read(dev, g.ckpt_start(self.sb.area) * P, self.sb.ckpt_len)
        try:
            self.meta = Meta.from_checkpoint(layout.decode_checkpoint(raw, self.sb.ckpt_crc))
        except FormatError as e:
            raise CorruptFilesystem(f"checkpoint: {e}", path=dev.path) from None
        base = self._log_base = g.log_start * P
        log, bad = _recover(dev, base, g.log_bytes)
        self._reads.append((base, log))
        self._log, self.tail = log, 0
        self.log_bad = bad
        records, self.tail, damage = layout.scan_log(log, self.sb.epoch, self.notes, bad)
        if damage and bad:
            s, e = bad[0]
            damage[0] += f" (poison at device offset {base + s}, +{e - s})"
        self.problems += damage
        for s, e in bad:
            where = f"metadata log: poison at device offset {base + s} (+{e - s})"
            if e <= self.tail:
                self.notes.append(f"{where}, inside records that still read whole")
            elif not damage:
                self.notes.append(f"{where}, in the unused tail")
        if layout.scan_log(log, self.sb.epoch + 1)[0]:
            self.problems.append("the log holds records of a newer epoch: the newest superblock is lost")
        for i, muts in enumerate(records):
            try:
                self.meta.apply(muts)
            except FormatError as e:
                raise CorruptFilesystem(f"log record {i + 1}: {e}", path=dev.path) from None
        self.seq = len(records) + 1
        self.problems += self.meta.problems(g)


def changed(dev: DaxOperations, sb: Superblock, tail: int, seq: int, sb_pages: bytes) -> bool:
    """Has anything been committed since a view with this superblock, log tail and next
    sequence number was loaded?  (A read-only mount's per-operation check.)"""
    try:
        if _sb_pages(dev) != sb_pages:
            return True
        g = sb.geometry
        if tail + 8 > g.log_bytes:
            return False  # no record fits: the writer's next commit is a checkpoint
        word = _recover(dev, g.log_start * P + tail, 8)[0]
        return word == layout.commit_word(sb.epoch, seq)
    except DaxError:
        return True  # let a full load decide what it is
