"""A progress bar for long operations, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, label: str, stream=None, width: int = 40):
        self.stream = stream or sys.stderr
        self.label = label
        self.width = width
        self.enabled = self.stream.isatty()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        pct = min(100, done * 100 // total)
        if pct == self._last:
            return
        self._last = pct
        fill = pct * self.width // 100
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {pct:3d}%")
        if pct == 100:
            self.stream.write("\n")
        self.stream.flush()
