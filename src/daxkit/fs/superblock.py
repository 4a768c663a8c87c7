"""daxfs super: formatting, writing checkpoints and superblocks, and reading the metadata off
the device (mount, fsck, and a read-only mount that follows a live writer).

Rules
  * Metadata is read and written only through the fsdax layer, like file data.
  * Every structure has two copies (layout.py).  A load uses any copy that checks out and
    sorts what it saw into ``problems`` (every copy of something needed is lost: the mount
    refuses, fsck lists it), ``notes`` (a damaged or stale copy, poison in unused space:
    nothing lost, fsck lists it with its device offset) and ``repair`` (a read-write mount
    must write every copy afresh: notes, or a copy that a crash left one step behind, which
    is no damage).
  * A reader never reports damage that is not there.  Another process may be writing while we
    read (SPEC 3, "Sharing an image"): a log append or a checkpoint can land between two of our
    copies, and the bytes we hold then form a view that never existed.  So a load is validated
    like a seqlock read, on the bytes instead of a counter: after loading, the regions the view
    was built from (its superblock, its checkpoint, both log copies up to its tail) are read
    again; if any moved, the view was torn and the load starts again.  A load that found
    anything wrong re-reads everything (both superblocks, both whole log copies): damage is
    reported only when two reads agree on it.
  * The log is read with the recovery read, so poison in it costs only what it covers: a
    record poisoned in one copy is read from the other, poison past the last committed record
    (the unused tail) is no damage at all, and a committed record lost to poison in both
    copies is found by a commit word that survives.
  * A read-write mount reads the whole metadata area once (``scrub_metadata``), so latent
    poison in pages no load reads (the spare checkpoint area) is found and cleared too.
  * A read-only mount asks ``changed()`` before and after each operation: one look at the
    superblock pages and at the commit word where the writer's next record would go (copy A:
    the commit point).

Theory of operation
  Appends never move committed bytes within an epoch, and a checkpoint changes both superblock
  pages before the log is reused; so "superblock pages unchanged and no record at the tail"
  means nothing committed since the view was loaded.
"""

from __future__ import annotations

import errno
import os
import random
import time
import zlib
from dataclasses import dataclass

from ..device.interface import DaxOperations
from ..errors import DaxError, InvalidArgument, MediaError
from ..fsdax.iomap import iomap_read, iomap_read_recover, iomap_write
from ..units import PAGE_SIZE
from . import layout
from .layout import FormatError, Geometry, Superblock, VersionError
from .meta import Meta

P = PAGE_SIZE
EFSCORRUPTED = errno.EUCLEAN  # what XFS and ext4 return for corrupted metadata
# A torn view needs a writer that commits during our read; beside a writer that commits without
# pause (and a loaded machine) that can happen many times running, so a reader keeps trying, at
# random moments, for this long before it says "try again".
_LOAD_PATIENCE = 20.0  # seconds


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


@dataclass
class SlotRead:
    """One superblock slot as read: its superblock, or why it holds none."""

    slot: int
    sb: Superblock | None
    error: str | None = None
    version: int | None = None  # a whole superblock of another daxfs version


def read_superblocks(dev: DaxOperations) -> list[SlotRead]:
    out = []
    for slot in (0, 1):
        where = f"superblock copy {slot} at device offset {slot * P}"
        try:
            raw = meta_read(dev, slot * P, P)
        except CorruptFilesystem as e:
            out.append(SlotRead(slot, None, f"{where}: {e}"))
            continue
        if raw == bytes(P):
            out.append(SlotRead(slot, None, f"{where} is empty"))
            continue
        try:
            out.append(SlotRead(slot, Superblock.decode(raw, dev.size)))
        except VersionError as e:
            out.append(SlotRead(slot, None, f"{where}: {e}", e.version))
        except FormatError as e:
            out.append(SlotRead(slot, None, f"{where}: {e}"))
    return out


def write_checkpoint(dev: DaxOperations, g: Geometry, area: int, raw: bytes) -> None:
    """Both copies of a checkpoint into ``area``, each read back, before a superblock names it."""
    for copy in (0, 1):
        meta_write_verified(dev, g.ckpt_copy_start(area, copy) * P, pad(raw))


def write_superblock(dev: DaxOperations, sb: Superblock) -> None:
    """Slot ``sb_seq % 2`` first (the commit point), then the same block into the other slot."""
    block = sb.encode()
    meta_write_verified(dev, (sb.sb_seq % 2) * P, block)
    try:
        meta_write_verified(dev, (1 - sb.sb_seq % 2) * P, block)
    except MediaError:
        pass  # committed already; the stale copy is reported by fsck and rewritten at mount


def scrub_metadata(dev: DaxOperations, g: Geometry) -> list[tuple[int, int]]:
    """Read the whole metadata area with the recovery read, so latent poison anywhere in it
    (spare checkpoint pages that no mount reads, say) becomes known; returns the bad ranges."""
    bad, step = [], 256 * P
    for off in range(0, g.data_start * P, step):
        n = min(step, g.data_start * P - off)
        bad += [(off + s, e - s) for s, e in _recover(dev, off, n)[1]]
    return bad


REDUNDANCY = ("none", "parity")


def open_stack(dev: DaxOperations, *, readonly: bool = False) -> DaxOperations:
    """The device a filesystem on ``dev`` lives on: ``dev`` itself, or the parity layer stacked on
    it when the filesystem was made with ``redundancy="parity"`` (its superblock says so)."""
    pages = _sb_pages(dev)
    modes = {seen[0] for slot in (0, 1) if (seen := Superblock.peek(pages[slot * P : (slot + 1) * P]))}
    if modes == {"none"}:
        return dev
    from ..redundancy import ParityDevice, is_parity  # numpy: only for filesystems that use it

    if "parity" in modes or is_parity(dev):
        return ParityDevice(dev, readonly=readonly)  # a parity filesystem without its layer: refused
    return dev


def close_stack(dev: DaxOperations, lower: DaxOperations) -> None:
    """Let go of a stacked device made by open_stack; ``lower`` stays open (the caller's)."""
    if dev is not lower:
        dev.close(close_lower=False)


def mkfs(
    dev: DaxOperations, *, force: bool = False, redundancy: str = "none", parity_group: int | None = None
) -> None:
    """Format ``dev``.  An existing daxfs is refused unless ``force``; a mounted one always is.
    ``redundancy="parity"`` lays a parity layer over the device first (SPEC 4.2) and makes the
    filesystem on it; ``parity_group`` is its group size in pages (chosen for ~1% when None)."""
    if redundancy not in REDUNDANCY:
        raise InvalidArgument(f"redundancy must be one of {', '.join(REDUNDANCY)}, not {redundancy!r}")
    if parity_group is not None and redundancy != "parity":
        raise InvalidArgument("parity_group is for redundancy='parity'")
    from ..redundancy import ParityDevice, format_parity, is_parity
    from ..redundancy.layout import MAX_GROUP, MIN_GROUP

    if parity_group is not None and (
        isinstance(parity_group, bool) or not isinstance(parity_group, int)
        or not MIN_GROUP <= parity_group <= MAX_GROUP
    ):  # checked before anything is written: a refused mkfs leaves the old filesystem whole
        raise InvalidArgument(
            f"parity_group must be an int from {MIN_GROUP} to {MAX_GROUP} pages, not {parity_group!r}"
        )  # fmt: skip
    if not force and (is_parity(dev) or any(r.sb or r.version for r in read_superblocks(dev))):
        raise DaxError(
            "device already holds a daxfs filesystem (use force)", errno=errno.EEXIST, path=dev.path
        )
    if redundancy == "none":
        _mkfs(dev, force=True, redundancy="none")
        return
    format_parity(dev, parity_group)
    stacked = ParityDevice(dev)
    try:
        _mkfs(stacked, force=True, redundancy="parity")
    finally:
        close_stack(stacked, dev)


def _mkfs(dev: DaxOperations, *, force: bool, redundancy: str) -> None:
    g = Geometry.for_device(dev.size)
    if g.nblocks < g.data_start + layout.MIN_DATA_BLOCKS:
        raise InvalidArgument(
            f"device of {dev.size} bytes is too small for daxfs (needs {(g.data_start + 16) * P} bytes)"
        )
    found = [r for r in read_superblocks(dev) if r.sb is not None or r.version is not None]
    if found and not force:
        raise DaxError(
            "device already holds a daxfs filesystem (use force)", errno=errno.EEXIST, path=dev.path
        )
    claim = _Claim()
    dev.holder = claim  # refuse to format under a mounted filesystem (EBUSY)
    try:
        meta = Meta.empty(os.geteuid(), os.getegid())
        raw = layout.encode_checkpoint(meta.checkpoint_doc())
        meta_write(dev, 0, bytes(2 * P))
        meta_write(dev, g.log_start * P, bytes(g.log_blocks * P))
        write_checkpoint(dev, g, 0, raw)
        sb = Superblock(1, 1, 0, len(raw), zlib.crc32(raw), g, layout.new_uuid(), redundancy)
        write_superblock(dev, sb)
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
    """What a mount or fsck reads off the device: a view that some instant really had.

    ``problems``: the metadata cannot be trusted (a mount refuses).  ``notes``: damage that
    loses nothing -- a damaged or stale copy, poison in unused space -- which fsck reports and a
    read-only mount reads around.  ``repair``: a read-write mount should write every copy afresh
    (notes, or a copy a crash left behind)."""

    def __init__(self, dev: DaxOperations):
        deadline = time.monotonic() + _LOAD_PATIENCE
        while time.monotonic() < deadline:
            self.sb_pages = _sb_pages(dev)
            self._reads: list[tuple[int, bytes]] = []
            self._logs: list[tuple[int, bytes]] = []
            try:
                self._load(dev)
                error = None
            except CorruptFilesystem as e:
                error = e
            if not self._reads_stable(dev, strict=error is not None or bool(self.problems or self.notes)):
                time.sleep(random.uniform(0.0001, 0.002))  # out of step with the writer's commits
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
        superblock, its checkpoint, the log copies up to its tail): a checkpoint that landed
        meanwhile in the other area makes our view an older one, not a torn one.  When something
        looked wrong, every byte read, both superblocks and the whole log."""
        regions = self._reads + self._logs + [(0, self.sb_pages)]
        if not strict:
            slot = getattr(self, "slot", 0)
            regions = self._reads + [(base, log[: self.tail]) for base, log in self._logs]
            regions += [(slot * P, self.sb_pages[slot * P : (slot + 1) * P])]
        return all(_recover(dev, off, len(data))[0] == data for off, data in regions if data)

    def _load(self, dev: DaxOperations) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.repair = False
        self.log_bad: list[tuple[int, int]] = []
        self.tail = 0
        self._load_superblock(dev)
        self.meta = self._load_checkpoint(dev)
        records = self._load_log(dev)
        for i, muts in enumerate(records):
            try:
                self.meta.apply(muts)
            except FormatError as e:
                raise CorruptFilesystem(f"log record {i + 1}: {e}", path=dev.path) from None
        self.seq = len(records) + 1
        self.problems += self.meta.problems(self.g)
        self.repair = self.repair or bool(self.notes)

    def _load_superblock(self, dev: DaxOperations) -> None:
        """The newest valid slot; the other one should hold the same block."""
        slots = read_superblocks(dev)
        valid = [r for r in slots if r.sb is not None]
        if not valid:
            other = [r.error for r in slots if r.version is not None]
            if other:
                raise CorruptFilesystem(other[0], path=dev.path)
            raise CorruptFilesystem(
                "no valid daxfs superblock (not formatted, or both copies damaged): "
                + "; ".join(str(r.error) for r in slots),
                path=dev.path,
            )
        newest = max(r.sb.sb_seq for r in valid)
        live = min((r for r in valid if r.sb.sb_seq == newest), key=lambda r: r.slot != newest % 2)
        other = slots[1 - live.slot]
        self.slot, self.sb, self.g = live.slot, live.sb, live.sb.geometry
        if other.sb is None:
            self.notes.append(str(other.error))
        elif other.sb.sb_seq == newest - 1 and other.sb.uuid == live.sb.uuid:
            self.repair = True  # a crash between the two superblock writes: stale, not damaged
        elif other.sb != live.sb:
            self.notes.append(
                f"superblock copy {other.slot} at device offset {other.slot * P} is stale "
                f"(sb_seq {other.sb.sb_seq}, the newest is {newest})"
            )

    def _load_checkpoint(self, dev: DaxOperations) -> Meta:
        """Copy a, else copy b; copy b is checked too, so fsck sees damage in either."""
        sb, g = self.sb, self.g
        meta, used, errors = None, b"", []
        for copy in (0, 1):
            off = g.ckpt_copy_start(sb.area, copy) * P
            try:
                raw = self._read(dev, off, sb.ckpt_len)
                if meta is not None and raw == used:
                    continue
                doc = layout.decode_checkpoint(raw, sb.ckpt_crc)
                if meta is None:
                    meta, used = Meta.from_checkpoint(doc), raw
            except (CorruptFilesystem, FormatError) as e:
                errors.append(f"checkpoint area {sb.area} copy {'ab'[copy]} at device offset {off}: {e}")
        if meta is None:
            why = "; ".join(errors)
            raise CorruptFilesystem(f"checkpoint lost, both copies damaged: {why}", path=dev.path)
        self.notes += errors
        return meta

    def _load_log(self, dev: DaxOperations) -> list[list]:
        """The records of the live epoch, each from a copy that reads whole.  Read with the
        recovery read: poison costs only what it covers."""
        sb, g = self.sb, self.g
        bases = [g.log_copy_start(copy) * P for copy in (0, 1)]
        copies, bad = [], []
        for base in bases:
            log, b = _recover(dev, base, g.log_bytes)
            self._logs.append((base, log))
            copies.append(log)
            bad.append(b)
        self.log_bad = [(base + s, e - s) for base, b in zip(bases, bad) for s, e in b]
        scan = layout.scan_log(copies, sb.epoch, bad, bases)
        self.tail = scan.tail
        self.repair = self.repair or scan.incomplete
        if scan.problems and self.log_bad:
            where = "; ".join(f"poison at device offset {off}, +{n}" for off, n in self.log_bad[:2])
            scan.problems[0] += f" ({where})"
        self.problems += scan.problems
        self.notes += scan.notes
        for name, base, b in zip(layout.COPY_NAMES, bases, bad):
            for s, e in b:
                where = f"metadata log copy {name}: poison at device offset {base + s} (+{e - s})"
                if s < self.tail:
                    self.notes.append(f"{where}, inside committed records (read from the other copy)")
                elif not scan.problems:
                    self.notes.append(f"{where}, in the unused tail")
        if layout.scan_log(copies, sb.epoch + 1).records:
            self.problems.append("the log holds records of a newer epoch: the newest superblock is lost")
        return scan.records


def changed(dev: DaxOperations, sb: Superblock, tail: int, seq: int, sb_pages: bytes) -> bool:
    """Has anything been committed since a view with this superblock, log tail and next
    sequence number was loaded?  (A read-only mount's per-operation check.)"""
    try:
        if _sb_pages(dev) != sb_pages:
            return True
        g = sb.geometry
        if tail + 8 > g.log_bytes:
            return False  # no record fits: the writer's next commit is a checkpoint
        word = _recover(dev, g.log_copy_start(0) * P + tail, 8)[0]  # copy A: the commit point
        return word == layout.commit_word(sb.epoch, seq)
    except DaxError:
        return True  # let a full load decide what it is
