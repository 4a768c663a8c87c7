"""daxfs on-device format: where metadata lives and how each piece is checksummed.

Layout (in 4 KiB blocks of the device)
    0, 1            superblock copies A and B; the valid one with the higher ``sb_seq`` wins
    2 .. 2+L        the metadata log: records appended in order, each with its own CRC
    next C blocks   checkpoint area 0 \\ a checkpoint is a compressed snapshot of all metadata;
    next C blocks   checkpoint area 1 / the superblock names the live one and its CRC
    the rest        data blocks

Why a log plus checkpoints (the crash-consistency design)
    Every metadata operation is one log record (a list of mutations) appended after the live
    records.  The record is committed when its bytes and CRC are in place: a process killed
    mid-append leaves a record whose CRC fails, and replay stops there, so the operation either
    happened whole or not at all.  When the log is full, the current state is written as a
    checkpoint into the *other* area and a superblock with ``epoch + 1`` is written into the
    *other* superblock slot: that single block write is the commit point, and records of older
    epochs are ignored from then on.  Data blocks are written before the record that links them,
    so a crash never exposes another file's old bytes.
    A record is [commit word][header][payload][zero pad][commit word].  It is written with both
    commit words zero, then the first, then the second, each one aligned 8-byte store; the commit
    word is bound to (epoch, seq).  Replay accepts a record whose header and CRC check out and
    whose commit words are not both missing; a record whose first commit word is present but
    whose header or CRC fails was committed and then damaged: the mount refuses and fsck reports
    it.  A missing commit word is a torn tail (a crash before the operation returned).  So one
    flipped bit anywhere in a committed record is found, never mistaken for a crash.
"""

from __future__ import annotations

import json
import struct
import uuid as _uuid
import zlib
from dataclasses import dataclass

from ..units import PAGE_SIZE

SB_MAGIC = b"DAXFS\x00\x00\x01"
VERSION = 1
_SB = struct.Struct("<8sIQQIIIQII16s")  # magic ver sb_seq epoch area ck_len ck_crc nblocks L C uuid
_SB_CRC_AT = 256
REC_MAGIC = 0xDAF5_1060
_REC = struct.Struct("<IIQQI")  # magic, length, epoch, seq, crc32(epoch, seq, payload)
_WORD = struct.Struct("<Q")
REC_ALIGN = 8
MIN_DATA_BLOCKS = 16


class FormatError(ValueError):
    """A structure failed its checks (magic, CRC, bounds)."""


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

    def ckpt_start(self, area: int) -> int:
        return 2 + self.log_blocks + area * self.ckpt_blocks

    @property
    def data_start(self) -> int:
        return 2 + self.log_blocks + 2 * self.ckpt_blocks

    @property
    def log_bytes(self) -> int:
        return self.log_blocks * PAGE_SIZE

    @property
    def ckpt_bytes(self) -> int:
        return self.ckpt_blocks * PAGE_SIZE


@dataclass(frozen=True)
class Superblock:
    sb_seq: int
    epoch: int
    area: int
    ckpt_len: int
    ckpt_crc: int
    geometry: Geometry
    uuid: bytes

    def encode(self) -> bytes:
        g = self.geometry
        body = _SB.pack(
            SB_MAGIC, VERSION, self.sb_seq, self.epoch, self.area, self.ckpt_len, self.ckpt_crc,
            g.nblocks, g.log_blocks, g.ckpt_blocks, self.uuid,
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
        _, ver, sb_seq, epoch, area, ck_len, ck_crc, nblocks, lb, cb, uid = _SB.unpack_from(block)
        if ver != VERSION:
            raise FormatError(f"unsupported daxfs version {ver}")
        g = Geometry(nblocks, lb, cb)
        if g != Geometry.for_device(device_size) or area not in (0, 1) or ck_len > g.ckpt_bytes:
            raise FormatError("superblock geometry does not match the device")
        return cls(sb_seq, epoch, area, ck_len, ck_crc, g, uid)


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


def scan_log(
    log: bytes, epoch: int, notes: list[str] | None = None, bad: list[tuple[int, int]] = ()
) -> tuple[list[list], int, list[str]]:
    """Replay order: the committed records of ``epoch`` from the start of the log, consecutive in
    seq.  Returns (mutation lists, tail position, problems that lose data); damage that loses
    nothing (one commit-word copy) is appended to ``notes``.  ``bad``: byte ranges of the log
    lost to poison (read as zeroes); poison at or past the tail is a lost record only if the
    next record's second commit word stands beyond it, else it is unused space."""
    out: list[list] = []
    pos, expect = 0, 1
    problems: list[str] = []
    zero = bytes(_WORD.size)
    while pos + _WORD.size <= len(log):
        word = commit_word(epoch, expect)
        c1 = bytes(log[pos : pos + _WORD.size])
        got = _record_at(log, pos)
        if got is not None and got[0] == epoch and got[1] == expect:
            c2 = bytes(log[got[3] - _WORD.size : got[3]])
            if c1 != word and c2 != word:
                break  # written but never committed: a crash before the operation returned
            for which, c in (("first", c1), ("second", c2)):
                if c not in (word, zero) and notes is not None:  # zero: a crash between the stores
                    notes.append(
                        f"metadata log: {which} commit word of record {expect} damaged (record intact)"
                    )
            out.append(got[2])
            pos, expect = got[3], expect + 1
            continue
        if c1 == word:
            problems.append(f"metadata log damaged: committed record {expect} of epoch {epoch} at byte {pos}")
        break
    if not problems and any(e > pos for _, e in bad):
        word = commit_word(epoch, expect)
        probe = log.find(word, pos + _WORD.size)
        while probe >= 0 and probe % REC_ALIGN:
            probe = log.find(word, probe + 1)
        if probe >= 0:
            problems.append(
                f"metadata log damaged at byte {pos}: committed record {expect} of epoch {epoch} "
                "is lost to poison"
            )
    if not problems:
        later = _committed_after(log, pos, epoch, expect)
        if later is not None:
            problems.append(
                f"metadata log damaged at byte {pos}: committed record {later} of epoch {epoch} "
                f"follows an unreadable record {expect}"
            )
    return out, pos, problems


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
