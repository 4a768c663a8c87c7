"""Mappings made through the parity layer: the stacked device's half of mapping.py's hooks.

Rules
  * A mapping is the lower device's own ``DaxMapping`` (its region, its protections), with
    ``_via`` set to the stacked device, which speaks for it: the lower device does not tell it
    of poison (the stacked device tells it of what it could not repair), and its safe accessors
    ask the stacked device to repair before they give up.
  * Raw stores through ``m.buf`` are invisible to the layer: the groups a mapping covers are
    scrubbed when it is made (so corruption already there is rebuilt while parity can), marked
    dirty on the medium while it is open (a crash recomputes them whole), and made current by
    ``persist`` and by ``close`` (which persists first).  Before that, a page the mapping covers
    is trusted as it reads, and a rebuild that parity has fallen behind fails its CRC: a loss
    reported, never wrong bytes.
  * A mapping dropped without ``close`` is let go at the stacked device's next call (a
    finalizer only queues it: it may run inside any call, on any thread).

Theory of operation
  ``map_extents`` translates the pieces, asks the lower device for the mapping, sets ``_via``
  and ``_base``, scrubs and pins the groups (parity.py keeps the pages per mapping key).  The
  hooks mapping.py calls -- ``_mapping_persist``, ``_mapping_recovered``, ``_mapping_closed``,
  ``_mapping_read_lines``, ``_mapping_repair`` -- take lower-device offsets, as the mapping's
  pieces are.
"""

from __future__ import annotations

import weakref

from ..errors import InvalidArgument
from ..units import PAGE_SIZE
from .parity import REPAIRED

P = PAGE_SIZE


class MappingsThrough:
    """Mixed into ParityDevice: the mappings made through it."""

    def map_extents(self, pieces: list[tuple[int, int, int]]):
        """A mapping of the lower device's pages, spoken for by this device (mapping.py): its
        groups are scrubbed first (raw stores will be trusted from now on), stay dirty while it
        is open, and ``persist`` and ``close`` make them current."""
        for _, d, n in pieces:
            self._check_range(d, n)
        pages = [(d // P, (d + n - 1) // P + 1) for _, d, n in pieces]
        m = self.lower.map_extents([(mo, d + self._base, n) for mo, d, n in pieces])
        m._via = self
        m._base = self._base
        m.offset = pieces[0][1]
        if self.readonly:
            return m
        self._enter()
        try:
            self._check_mapped(pages)
            self._keys += 1
            key = self._keys
            self._par.pin(key, pages)
        finally:
            self._leave()
        self._maps[m] = key
        self._finalizers[key] = weakref.finalize(m, self._pending.append, (None, key))
        return m

    def _check_mapped(self, pages: list[tuple[int, int]]) -> None:
        """Scrub the groups about to be mapped: once raw stores may be ahead of the mapped
        pages' CRCs, corruption elsewhere in the group could no longer be rebuilt."""
        for g in self._par.groups_of(pages):
            if g not in self._par.pins:
                self._par.verify(g)

    def map(self, offset: int = 0, length: int | None = None):
        """A mapping of [offset, offset+length) (the device's own ``map``)."""
        if length is None:
            length = self.size - offset
        if offset % P or length <= 0:
            raise InvalidArgument(f"mapping offset {offset} length {length}: page-aligned, > 0")
        return self.map_extents([(0, offset, -(-length // P) * P)])

    def _mapping_persist(self, runs) -> None:
        if self.readonly:
            return
        base = self._base
        groups = self._par.groups_of([((d - base) // P, (d - base + k - 1) // P + 1) for d, k in runs])
        self._enter()
        try:
            for g in groups:
                self._par.recompute(g)
        finally:
            self._leave()

    def _mapping_recovered(self, doff: int, k: int) -> None:
        self._mapping_persist([(doff, k)])

    def _mapping_closed(self, m) -> None:
        key = self._maps.pop(m, None)
        fin = self._finalizers.pop(key, None)
        if fin is not None:
            fin.detach()
        if key is None or self._closed or self._dead:
            return
        self._enter()
        try:
            self._par.unpin(key)
        finally:
            self._leave()

    def _mapping_read_lines(self, dst: memoryview, doff: int):
        """A mapping's safe read met poison: repair and go on.  Returns (bytes delivered, first
        bad range met in this device's offsets, or None)."""
        got = self.mc_read(dst, doff - self._base)
        if got == dst.nbytes:
            return got, None
        pos = doff + got
        errs = self.lower.known_errors(pos - pos % 64, P)
        s, n = errs[0] if errs else (pos - pos % 64, 64)
        return got, (s - self._base, n)

    def _mapping_repair(self, pos: int) -> bool:
        """A mapping's store met a page with poison at lower ``pos``: repair it (True) or not."""
        if self.readonly:
            return False
        self._enter()
        try:
            return self._par.repair_page(pos // P - self._base_pg) == REPAIRED
        finally:
            self._leave()
