"""The emulated backend: a daxkit image file (medium/image.py) as a device's mechanism.

Rules
  * Everything the image knows (poison, injection records, the error lists, the scrub count) is
    hardware truth here: the image *is* the medium, so every state change is committed to it and
    shared with every process.
  * Mechanism only: which changes to make, and in which order, is the device's business
    (device.py); this file says how the image stores and maps them.
"""

from __future__ import annotations

from ...medium.image import Image
from ...medium.region import Region

KIND = "image"


class ImageBackend(Image):
    kind = KIND
    emulated = True  # injection verbs work: the image is the medium

    def __init__(self, path: str, *, readonly: bool = False):
        super().__init__(path, readonly=readonly)
        self.size = self.data_size

    def map_region(self, pieces: list[tuple[int, int, int]], length: int) -> Region:
        """A region of (region offset, device offset, length) pieces of the data area."""
        return Region(
            self.fd, [(m, self.data_offset + d, n) for m, d, n in pieces], length, writable=not self.readonly
        )

    def write_clearing(self, data, offset: int) -> None:
        """The data write of a clearing sequence.  The device has cleared the medium already (a
        commit), so this is a plain store of the cells."""
        self.medium_write(data, offset)

    def rescan(self) -> None:
        """A scrub reads the image's own poison list: nothing to fetch."""

    def describe(self) -> dict:
        return {"backend": KIND}
