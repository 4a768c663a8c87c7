"""Committing metadata: one log record per operation, checkpoints when the log is full, and
the rewrite of every metadata copy from memory (the rules are in layout.py)."""

from __future__ import annotations

import zlib

from ..errors import FilesystemShutdown, MediaError, NoSpace
from ..fsdax.iomap import iomap_zero_pages
from ..units import PAGE_SIZE
from . import layout, superblock
from .layout import Superblock
from .superblock import meta_write

P = PAGE_SIZE


class MetaCommit:
    """A part of DaxFS (see daxfs.py)."""

    # -- committing metadata ----------------------------------------------------------------------
    def _commit(self, muts: list, *, use_reserve: bool = False) -> None:
        """One operation: the record is in the log (or in a new checkpoint) when this returns.

        Space: the metadata must always fit a checkpoint, or a full log could never be folded
        and the filesystem would wedge.  ``_meta_bound`` is an upper bound on the compressed
        size of the current metadata (the last checkpoint plus every record logged since, with
        slack); while it stays under the checkpoint area less a reserve, nothing needs
        checking.  Operations that do not grow the metadata (deletes, shrinking truncates,
        renames, attribute updates) pass ``use_reserve`` and may use the reserve, so a full
        filesystem can always be emptied; the rest get ENOSPC when even a fresh checkpoint
        would not leave the reserve free."""
        undo = self.meta.apply(muts)
        try:
            g = self.geometry
            rec, w1, w2 = layout.encode_record(self.sb.epoch, self._seq, muts)
            limit = g.ckpt_bytes - (0 if use_reserve else self._reserve)
            cost = len(rec) + len(rec) // 4 + 64
            if self._tail + len(rec) > g.log_bytes or self._meta_bound + cost > limit:
                self._checkpoint(limit)
            else:
                try:
                    self._log_append(rec, w1, w2)
                except MediaError:
                    # a log copy met known poison: the whole state is in memory, so a fresh
                    # checkpoint commits this operation and makes every copy whole again
                    self._rewrite_metadata()
                else:
                    self._tail += len(rec)
                    self._seq += 1
                    self._meta_bound += cost
            if self._meta_repair and not self._meta_busy:
                self._rewrite_metadata()
        except MediaError as e:
            self.meta.undo(undo)
            self._shut(f"metadata write failed: {e}")
            raise FilesystemShutdown(
                f"filesystem is shut down: {self._shutdown}", path=self.dev.path
            ) from None
        except BaseException:
            self.meta.undo(undo)
            raise

    def _log_append(self, rec: bytes, w1: int, w2: int) -> None:
        """Record ``_seq`` at the tail of both log copies, in layout.py's order: the bytes in A
        and B (commit words zero), then each commit word in A before B; the first word in A is
        the commit point, the other three survive its loss."""
        g = self.geometry
        a, b = (g.log_copy_start(copy) * P + self._tail for copy in (0, 1))
        word = layout.commit_word(self.sb.epoch, self._seq)
        self._meta_busy += 1
        try:
            meta_write(self.dev, a, rec)
            meta_write(self.dev, b, rec)
            for at in (w1, w2):
                meta_write(self.dev, a + at, word)
                meta_write(self.dev, b + at, word)
        finally:
            self._meta_busy -= 1

    def _checkpoint(self, limit: int | None = None) -> None:
        g, sb = self.geometry, self.sb
        raw = layout.encode_checkpoint(self.meta.checkpoint_doc())
        limit = g.ckpt_bytes if limit is None else limit
        if len(raw) > limit:
            raise NoSpace(
                f"metadata area full: the metadata would take {len(raw)} bytes compressed, "
                f"{limit} are available to this operation"
            )
        area = 1 - sb.area
        new = Superblock(
            sb.sb_seq + 1, sb.epoch + 1, area, len(raw), zlib.crc32(raw), g, sb.uuid, sb.redundancy
        )
        self._meta_busy += 1
        try:
            superblock.write_checkpoint(self.dev, g, area, raw)  # both copies, read back
            superblock.write_superblock(self.dev, new)  # both slots; the first is the commit point
        finally:
            self._meta_busy -= 1
        self.sb, self._tail, self._seq = new, 0, 1
        self._meta_bound = len(raw)

    def _rewrite_metadata(self) -> None:
        """A damaged or poisoned copy of metadata, with the whole view in memory: write a fresh
        checkpoint (both copies) and both superblocks, each read back, so latent poison under
        them is found and cleared; that leaves the log and the other area spare, so every
        poisoned page left in the metadata area is zeroed and cleared.  Every copy is whole
        again and nothing that the mount needs is lost."""
        self._meta_repair = False
        self._checkpoint()
        g, sb = self.geometry, self.sb
        pages = -(-sb.ckpt_len // P)
        live = {0, 1} | {g.ckpt_copy_start(sb.area, c) + i for c in (0, 1) for i in range(pages)}
        for off, n in self.dev.known_errors(0, g.data_start * P):
            for pg in range(off // P, (off + n + P - 1) // P):
                if pg not in live:
                    iomap_zero_pages(self.dev, pg, 1)
        self._loaded_repair = False

    def sync(self) -> None:
        """Write a checkpoint now (shortens the next mount's replay)."""
        with self._lock:
            self._check(write=True)
            try:
                self._checkpoint()
            except MediaError as e:
                self._shut(f"checkpoint failed: {e}")
                raise FilesystemShutdown(f"filesystem is shut down: {self._shutdown}") from None
