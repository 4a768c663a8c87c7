"""A progress bar for long operations, drawn only when stderr is a terminal.  Drawing never fails
the operation it reports on: a terminal that goes away just ends the bar."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, label: str, stream=None, width: int = 40):
        self.stream = stream or sys.stderr
        self.label = label
        self.width = width
        try:
            self.enabled = self.stream is not None and self.stream.isatty()
        except (OSError, ValueError, AttributeError):
            self.enabled = False
        self._last = -1

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        pct = min(100, done * 100 // total)
        if pct == self._last:
            return
        self._last = pct
        fill = pct * self.width // 100
        self._draw(f"\r{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {pct:3d}%")
        if pct == 100:
            self._draw("\n")

    def close(self) -> None:
        """End a bar left part-way (an error, a signal) so the next line starts clean."""
        if self.enabled and 0 <= self._last < 100:
            self._draw("\n")
        self.enabled = False

    def _draw(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False
