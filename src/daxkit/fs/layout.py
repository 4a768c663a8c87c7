"""daxfs on-device format: where metadata lives, how each piece is checksummed, and how every
piece is kept twice (SPEC 4.2: metadata is always redundant).

Layout (in 4 KiB blocks of the device)
    0, 1            superblock slots 0 and 1: both hold the current superblock
    2 .. 2+L        the metadata log, in two halves: copy A, then copy B (L/2 blocks each)
    next C blocks   checkpoint area 0 \\ each in two halves, copy a and copy b; a checkpoint is a
    next C blocks   checkpoint area 1 /  compressed snapshot of all metadata
    the rest        data blocks
    (an odd L or C leaves its last block unused.)

Why a log plus checkpoints (the crash-consistency design)
    Every metadata operation is one log record (a list of mutations) appended after the live
    records.  When the log is full, the current state is written as a checkpoint into the
    *other* area and a superblock with ``epoch + 1`` is written into slot ``sb_seq % 2``: that
    single block write is the commit point, and records of older epochs are ignored from then
    on.  Data blocks are written before the record that links them, so a crash never exposes
    another file's old bytes.
    A record is [commit word][header][payload][zero pad][commit word].  It is written with both
    commit words zero, then the first, then the second, each one aligned 8-byte store; the commit
    word is bound to (epoch, seq).  A missing commit word is a torn tail (a crash before the
    operation returned); a committed record whose header or CRC fails was damaged.  So one
    flipped bit anywhere in a committed record is found, never mistaken for a crash.

Why every piece twice (the redundancy design)
    Poison or a flipped bit in one copy of anything the mount needs must cost nothing.
    * Superblock: a checkpoint writes the new block into slot ``sb_seq % 2`` (the commit point)
      and then the same bytes into the other slot.  The newest valid slot wins; a slot one
      ``sb_seq`` behind it is a crash between the two writes, any other difference is damage.
    * Log: each record is written at the same offset in copy A and copy B, in this order:
      record bytes in A and B (commit words zero), first word in A (the commit point), in B,
      second word in A, in B.  Replay takes, record by record, a copy whose header and CRC
      check out, committed when any of the four words says so: one damaged copy loses nothing;
      a committed record unreadable in both copies is damage.  Zero words in the last record
      are a crash between the stores, not damage (in an earlier record they are damage).
    * Checkpoint: both copies of the area are written and read back before the superblock; the
      superblock's length and CRC apply to both.  The mount reads copy a, else copy b.
    A read-write mount that met a damaged or stale copy writes every copy afresh (a new
    checkpoint) before it serves anything; fsck reports each damaged copy with its offset.
"""

from __future__ import annotations

import json
import struct
import uuid as _uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from ..units import PAGE_SIZE

SB_MAGIC = b"DAXFS\x00\x00\x01"
VERSION = 3  # 2: every metadata structure kept twice; 3: owners, device nodes, symlinks, hard links
# magic ver sb_seq epoch area ck_len ck_crc nblocks L C uuid redundancy
_SB = struct.Struct("<8sIQQIIIQII16sI")
REDUNDANCY_MODES = ("none", "parity")  # the superblock's redundancy field: an index into this
_SB_CRC_AT = 256
REC_MAGIC = 0xDAF5_1060
_REC = struct.Struct("<IIQQI")  # magic, length, epoch, seq, crc32(epoch, seq, payload)
_WORD = struct.Struct("<Q")
REC_ALIGN = 8
MIN_DATA_BLOCKS = 16
COPY_NAMES = "AB"  # the log's copies; a checkpoint area's are "a" and "b"


class FormatError(ValueError):
    """A structure failed its checks (magic, CRC, bounds)."""


class VersionError(FormatError):
    """A whole, valid superblock of another daxfs version."""

    def __init__(self, version: int):
        self.version = version
        if version < VERSION:
            super().__init__(
                f"made by an older daxkit (daxfs version {version}); copy the files out with that "
                "version, or make a new filesystem with mkfs --force"
            )
        else:
            super().__init__(f"made by a newer daxkit (daxfs version {version}); use that version")


@dataclass(frozen=True)
class Geometry:
    nblocks: int
    log_blocks: int
    ckpt_blocks: int

    @classmethod
    def for_device(cls, size: int) -> Geometry:
        nblocks = size // PAGE_SIZE
        part = max(16, min(4096, nblocks // 64))
        return cls(nblocks, part, part)

    @property
    def log_start(self) -> int:
        return 2

    @property
    def log_copy_blocks(self) -> int:
        return self.log_blocks // 2

    def log_copy_start(self, copy: int) -> int:
        """First block of log copy ``copy`` (0: A, 1: B)."""
        return 2 + copy * self.log_copy_blocks

    @property
    def log_bytes(self) -> int:
        """What the log holds: the bytes of one copy."""
        return self.log_copy_blocks * PAGE_SIZE

    def ckpt_start(self, area: int) -> int:
        return 2 + self.log_blocks + area * self.ckpt_blocks

    @property
    def ckpt_copy_blocks(self) -> int:
        return self.ckpt_blocks // 2

    def ckpt_copy_start(self, area: int, copy: int) -> int:
        """First block of copy ``copy`` (0: a, 1: b) of checkpoint area ``area``."""
        return self.ckpt_start(area) + copy * self.ckpt_copy_blocks

    @property
    def ckpt_bytes(self) -> int:
        """What a checkpoint may take: the bytes of one copy."""
        return self.ckpt_copy_blocks * PAGE_SIZE

    @property
    def data_start(self) -> int:
        return 2 + self.log_blocks + 2 * self.ckpt_blocks


@dataclass(frozen=True)
class Superblock:
    sb_seq: int
    epoch: int
    area: int
    ckpt_len: int
    ckpt_crc: int
    geometry: Geometry
    uuid: bytes
    redundancy: str = "none"  # "parity": the filesystem lives on a parity layer (redundancy/)

    def encode(self) -> bytes:
        g = self.geometry
        body = _SB.pack(
            SB_MAGIC, VERSION, self.sb_seq, self.epoch, self.area, self.ckpt_len, self.ckpt_crc,
            g.nblocks, g.log_blocks, g.ckpt_blocks, self.uuid, REDUNDANCY_MODES.index(self.redundancy),
        )  # fmt: skip
        block = bytearray(PAGE_SIZE)
        block[: len(body)] = body
        struct.pack_into("<I", block, _SB_CRC_AT, _sb_crc(block))
        return bytes(block)

    @classmethod
    def decode(cls, block: bytes, device_size: int) -> Superblock:
        if len(block) < PAGE_SIZE or block[:8] != SB_MAGIC:
            raise FormatError("no daxfs superblock magic")
        (crc,) = struct.unpack_from("<I", block, _SB_CRC_AT)
        if _sb_crc(block) != crc:
            raise FormatError("superblock checksum mismatch")
        _, ver, sb_seq, epoch, area, ck_len, ck_crc, nblocks, lb, cb, uid, red = _SB.unpack_from(block)
        if ver != VERSION:
            raise VersionError(ver)
        g = Geometry(nblocks, lb, cb)
        if g != Geometry.for_device(device_size) or area not in (0, 1) or ck_len > g.ckpt_bytes:
            raise FormatError("superblock geometry does not match the device")
        if red >= len(REDUNDANCY_MODES):
            raise FormatError(f"unknown redundancy mode {red}")
        return cls(sb_seq, epoch, area, ck_len, ck_crc, g, uid, REDUNDANCY_MODES[red])

    @staticmethod
    def peek(block: bytes) -> tuple[str, int] | None:
        """(redundancy mode, blocks) of a well-formed superblock of this version, before the
        device it was made for is known (a parity layer changes the device's size); or None."""
        if len(block) < PAGE_SIZE or block[:8] != SB_MAGIC:
            return None
        if _sb_crc(block) != struct.unpack_from("<I", block, _SB_CRC_AT)[0]:
            return None
        fields = _SB.unpack_from(block)
        if fields[1] != VERSION or fields[11] >= len(REDUNDANCY_MODES):
            return None
        return REDUNDANCY_MODES[fields[11]], fields[7]


def _sb_crc(block) -> int:
    """Over the whole block but the CRC field, so no byte of a superblock can change unseen."""
    return zlib.crc32(bytes(block[_SB_CRC_AT + 4 :]), zlib.crc32(bytes(block[:_SB_CRC_AT])))


def new_uuid() -> bytes:
    return _uuid.uuid4().bytes


def encode_checkpoint(doc: dict) -> bytes:
    return zlib.compress(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode(), 1)


def decode_checkpoint(raw: bytes, crc: int) -> dict:
    if zlib.crc32(raw) != crc:
        raise FormatError("checkpoint checksum mismatch")
    try:
        doc = json.loads(zlib.decompress(raw))
    except (zlib.error, ValueError) as e:
        raise FormatError(f"checkpoint does not decode: {e}") from None
    if not isinstance(doc, dict):
        raise FormatError("checkpoint is not an object")
    return doc


def commit_word(epoch: int, seq: int) -> bytes:
    """The 8-byte mark that record ``seq`` of ``epoch`` committed (never zero)."""
    return _WORD.pack((zlib.crc32(struct.pack("<QQ", epoch, seq)) << 32) | (seq & 0xFFFFFFFF) | (1 << 63))


def encode_record(epoch: int, seq: int, mutations: list) -> tuple[bytes, int, int]:
    """(bytes with both commit words zero, offset of the first word, offset of the second)."""
    payload = json.dumps(mutations, separators=(",", ":")).encode()
    crc = zlib.crc32(struct.pack("<QQ", epoch, seq) + payload)
    body = _REC.pack(REC_MAGIC, len(payload), epoch, seq, crc) + payload
    body += bytes(-len(body) % REC_ALIGN)
    rec = bytes(_WORD.size) + body + bytes(_WORD.size)
    return rec, 0, len(rec) - _WORD.size


def _record_at(log: bytes, pos: int) -> tuple[int, int, list, int] | None:
    """(epoch, seq, mutations, end) of a well-formed record at ``pos`` (commit words aside)."""
    head = pos + _WORD.size
    if head + _REC.size > len(log):
        return None
    magic, length, epoch, seq, crc = _REC.unpack_from(log, head)
    end_payload = head + _REC.size + length
    end_body = end_payload + (-(_REC.size + length) % REC_ALIGN)
    end = end_body + _WORD.size
    if magic != REC_MAGIC or end > len(log):
        return None
    payload = bytes(log[head + _REC.size : end_payload])
    if zlib.crc32(struct.pack("<QQ", epoch, seq) + payload) != crc or any(log[end_payload:end_body]):
        return None
    try:
        muts = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(muts, list):
        return None
    return epoch, seq, muts, end


@dataclass
class LogScan:
    """What replaying the log found."""

    records: list[list]  # the mutation lists, in replay order
    tail: int  # where the next record goes, in every copy
    problems: list[str]  # committed operations lost: the metadata cannot be trusted
    notes: list[str]  # a damaged copy, a damaged commit word: nothing lost
    incomplete: bool  # the last record's commit words are not all written (a crash between stores)


def scan_log(
    copies: Sequence[bytes], epoch: int, bad: Sequence[list[tuple[int, int]]] = (), bases: Sequence[int] = ()
) -> LogScan:
    """Replay order: the committed records of ``epoch`` from the start of the log, consecutive in
    seq, each taken from a copy in which it reads whole.  ``bad``: per copy, byte ranges lost to
    poison (read as zeroes); damage they explain is left to the caller, who names the poison,
    and poison at or past the tail is a lost record only if the next record's commit word
    stands beyond it in some copy, else it is unused space.  ``bases``: each copy's device
    offset, for the messages."""
    bad = list(bad) or [[] for _ in copies]
    bases = list(bases) or [0] * len(copies)
    scan = LogScan([], 0, [], [], False)
    pos, expect = 0, 1
    zero = bytes(_WORD.size)
    unwritten: list[str] = []  # zero commit words of the record before: a crash, if it is the last
    while pos + _WORD.size <= min(len(c) for c in copies):
        word = commit_word(epoch, expect)
        got = [_record_at(c, pos) for c in copies]
        whole = [r for r in got if r is not None and r[0] == epoch and r[1] == expect]
        if not whole:
            if any(c[pos : pos + _WORD.size] == word for c in copies):
                scan.problems.append(
                    f"metadata log damaged: committed record {expect} of epoch {epoch} at device offset "
                    f"{bases[0] + pos} is unreadable in every copy"
                )
            break
        end = whole[0][3]
        words = [(bytes(c[pos : pos + _WORD.size]), bytes(c[end - _WORD.size : end])) for c in copies]
        if not any(word in pair for pair in words):
            break  # written but never committed: a crash before the operation returned
        scan.notes += unwritten
        unwritten = []
        for i, r in enumerate(got):
            if any(s < end and e > pos for s, e in bad[i]):
                continue  # poison: the caller's note names it
            where = f"metadata log copy {COPY_NAMES[i]}: record {expect} of epoch {epoch} at device offset"
            if r != whole[0]:
                scan.notes.append(f"{where} {bases[i] + pos} damaged (another copy used)")
                continue
            for at, w in ((pos, words[i][0]), (end - _WORD.size, words[i][1])):
                if w == zero:
                    unwritten.append(f"{where} {bases[i] + pos}: commit word at {bases[i] + at} missing")
                elif w != word:
                    scan.notes.append(f"{where} {bases[i] + pos}: commit word at {bases[i] + at} damaged")
        scan.records.append(whole[0][2])
        pos, expect = end, expect + 1
    scan.tail, scan.incomplete = pos, bool(unwritten)
    if not scan.problems and any(e > pos for b in bad for _, e in b):
        word = commit_word(epoch, expect)
        for c in copies:
            probe = c.find(word, pos + _WORD.size)
            while probe >= 0 and probe % REC_ALIGN:
                probe = c.find(word, probe + 1)
            if probe >= 0:
                scan.problems.append(
                    f"metadata log damaged at device offset {bases[0] + pos}: committed record {expect} "
                    f"of epoch {epoch} is lost to poison"
                )
                break
    if not scan.problems:
        later = [s for s in (_committed_after(c, pos, epoch, expect) for c in copies) if s is not None]
        if later:
            scan.problems.append(
                f"metadata log damaged at device offset {bases[0] + pos}: committed record {min(later)} "
                f"of epoch {epoch} follows an unreadable record {expect}"
            )
    return scan


def _committed_after(log: bytes, pos: int, epoch: int, expect: int) -> int | None:
    """The seq of a committed record of ``epoch`` beyond the tail, if any.  Appends are
    sequential, so none can exist after a crash: finding one means a record before it was lost
    (a wiped page, say), and replaying only up to the tail would drop committed operations."""
    magic = struct.pack("<I", REC_MAGIC)
    probe = log.find(magic, pos)
    while probe >= 0:
        start = probe - _WORD.size  # the header follows the first commit word
        if start >= pos and start % REC_ALIGN == 0:
            got = _record_at(log, start)
            if got is not None and got[0] == epoch and got[1] >= expect:
                word = commit_word(epoch, got[1])
                if log[start : start + _WORD.size] == word or log[got[3] - _WORD.size : got[3]] == word:
                    return got[1]
        probe = log.find(magic, probe + 1)
    return None
