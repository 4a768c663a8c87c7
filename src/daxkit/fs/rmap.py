"""The reverse map (device range -> owners) and what is built on it: scan, bad ranges, bmap,
redundancy and repair."""

from __future__ import annotations

from ..device.interface import Redundant
from ..errors import InvalidArgument, NotSupported
from ..medium import ranges
from ..units import PAGE_SIZE, SECTOR_SIZE
from .meta import Inode

P = PAGE_SIZE


class ReverseMap:
    """A part of DaxFS (see daxfs.py)."""

    def _file_errors(self, node: Inode) -> list[tuple[int, int]]:
        out: ranges.Intervals = []
        for fb, db, cnt in node.ext:
            for s, n in self.dev.known_errors(db * P, cnt * P):
                fs = fb * P + s - db * P
                out = ranges.add(out, fs, fs + n)
        return [(s, e - s) for s, e in out]

    def _owners(self, offset: int, length: int) -> list[dict]:
        """The reverse map: who owns device bytes [offset, offset+length)."""
        g, end = self.geometry, offset + length
        out = []
        meta_end = g.data_start * P
        if offset < meta_end:
            out.append({"offset": offset, "length": min(end, meta_end) - offset, "owner": "metadata"})
        names = self.meta.names()  # every name of a hard-linked file
        for ino, node in self.meta.inodes.items():
            for fb, db, cnt in node.ext:
                s, e = max(offset, db * P), min(end, (db + cnt) * P)
                if s < e:
                    out.append({
                        "offset": s, "length": e - s, "owner": "file", "ino": ino,
                        "path": (names.get(ino) or [None])[0], "paths": names.get(ino, []),
                        "file_offset": fb * P + s - db * P, "file_length": e - s,
                    })  # fmt: skip
        covered = ranges.union([], [(o["offset"], o["offset"] + o["length"]) for o in out])
        for s, e in ranges.subtract([(offset, end)], covered):
            out.append({"offset": s, "length": e - s, "owner": "free"})
        return sorted(out, key=lambda o: o["offset"])

    # -- redundancy and repair (SPEC 4.2) ---------------------------------------------------------
    @property
    def redundancy(self) -> dict:
        """{"mode": "parity" | "none", "group": pages per parity group, "space_overhead": fraction}."""
        if isinstance(self.dev, Redundant):
            return dict(self.dev.redundancy())
        return {"mode": "none", "group": 0, "space_overhead": 0.0}

    def parity_group(self, offset: int) -> dict:
        """{"data": [device offsets], "parity": [device offsets]}: the group holding the page at
        ``offset`` of the device the filesystem was mounted from (``bmap``'s sectors x 512)."""
        with self._lock:
            self._check()
            if not isinstance(self.dev, Redundant):
                raise NotSupported("the filesystem has no parity (made with redundancy='none')")
            base = self._lower_off
            if not base <= offset < base + self.dev.size:
                raise InvalidArgument(
                    f"offset {offset} is not in the filesystem's data (device bytes {base} to "
                    f"{base + self.dev.size})"
                )
            group = self.dev.parity_group(offset - base)
            return {"data": [base + d for d in group["data"]], "parity": list(group["parity"])}

    def repair(self) -> RepairReport:
        """Everything repairable is repaired: with parity, every data page's checksum is verified
        and poisoned or mismatching pages are rebuilt; damaged metadata copies are rewritten.
        What is left is lost: listed per file, and reads of exactly those ranges fail with EIO."""
        with self._lock:
            self._check(write=True)
            repaired: ranges.Intervals = []
            corrupt: ranges.Intervals = []
            if isinstance(self.dev, Redundant):
                rep = self.dev.repair(verify=True)
                repaired = ranges.union([], [(s, s + n) for s, n in rep.repaired])
                corrupt = ranges.union([], [(s, s + n) for s, n in rep.corrupt])
            meta_end = self.geometry.data_start * P
            meta_bad = self.dev.known_errors(0, meta_end)
            if meta_bad:
                self._rewrite_metadata()
                repaired = ranges.union(repaired, [(s, s + n) for s, n in meta_bad])
            lost = []
            for off, n in self.dev.known_errors(meta_end, self.dev.size - meta_end):
                for o in self._owners(off, n):
                    if o["owner"] == "file":
                        lost.append({"path": o["path"], "paths": o["paths"], "offset": o["file_offset"],
                                     "length": o["file_length"]})  # fmt: skip
            lost.sort(key=lambda d: (d["path"] or "", d["offset"]))
            base = self._lower_off
            return RepairReport(
                [(base + s, e - s) for s, e in repaired], [(base + s, e - s) for s, e in corrupt], lost
            )

    def scan(self) -> list[dict]:
        """Every known media error, mapped to its owner (file and file range, metadata, free)."""
        with self._lock:
            self._check()
            out = [o for off, n in self.dev.known_errors() for o in self._owners(off, n)]
            for o in out:
                o["offset"] += self._lower_off
            return out

    def bmap(self, path: str) -> list[dict]:
        with self._lock:
            self._check()
            node = self._resolve(path)
            return [
                {"offset": fb * P, "length": cnt * P, "sector": (self._lower_off + db * P) // SECTOR_SIZE}
                for fb, db, cnt in node.ext
            ]


class RepairReport:
    """What ``fs.repair()`` did: ``repaired`` and ``corrupt`` device ranges (offset, length)
    rebuilt from redundancy after poison and after a checksum mismatch; ``lost`` file ranges
    ({"path", "paths", "offset", "length"}: "path" is the first of the file's names, "paths" all
    of them) that could not be rebuilt."""

    def __init__(self, repaired: list, corrupt: list, lost: list):
        self.repaired, self.corrupt, self.lost = repaired, corrupt, lost

    def __repr__(self) -> str:
        counts = f"repaired={len(self.repaired)} corrupt={len(self.corrupt)} lost={len(self.lost)}"
        return f"<RepairReport {counts}>"

    def as_dict(self) -> dict:
        return {
            "repaired": [{"offset": o, "length": n} for o, n in self.repaired],
            "corrupt": [{"offset": o, "length": n} for o, n in self.corrupt],
            "lost": [dict(d) for d in self.lost],
        }
