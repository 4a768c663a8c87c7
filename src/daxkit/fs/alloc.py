"""The block allocator: free data blocks as sorted runs, first fit from a hint."""

from __future__ import annotations

from ..errors import NoSpace
from ..fsdax.iomap import iomap_zero_pages
from ..medium import ranges
from ..units import PAGE_SIZE

P = PAGE_SIZE


class BlockAlloc:
    """A part of DaxFS (see daxfs.py)."""

    # -- blocks -------------------------------------------------------------------------------------
    def _alloc(self, count: int, hint: int) -> list[tuple[int, int]]:
        """Take ``count`` free blocks, first fit from ``hint`` and wrapping around; all or
        nothing (ENOSPC)."""
        free = ranges.total(self._free)
        if free < count:
            raise NoSpace(f"no space left: {count} blocks wanted, {free} free")
        got, need = [], count
        for s, e in ranges.clip(self._free, hint, 1 << 62) + ranges.clip(self._free, 0, hint):
            take = min(need, e - s)
            got.append((s, take))
            need -= take
            if not need:
                break
        for s, c in got:
            self._free = ranges.remove(self._free, s, s + c)
        return got

    def _unalloc(self, runs) -> None:
        for s, c in runs:
            self._free = ranges.add(self._free, s, s + c)

    def _release(self, ino: int, runs) -> None:
        """After the record that freed them: revoke mappings, clear known poison, free."""
        for m in list(self._maps.get(ino, ())):
            m._revoke_device_blocks(runs)
        for db, cnt in runs:
            for off, n in self.dev.known_errors(db * P, cnt * P):
                first, last = off // P, (off + n + P - 1) // P
                iomap_zero_pages(self.dev, first, last - first, quiet=True)  # cleared before reuse
        self._unalloc(runs)
