"""Redundancy: data parity as a stacked device (SPEC 4.2).

    format_parity(lower, group=None)   lay parity and checksums over a device
    is_parity(lower)                   does it carry a parity header?
    stack(lower)                       ParityDevice(lower) if so, else lower
    ParityDevice(lower)                the stacked device: DaxOperations + Redundant

Layers: device/ below (the lower device is reached only through DaxOperations), fsdax and the
filesystem above (they see one more DaxOperations).
"""

from .device import ParityDevice, RepairReport, stack
from .superblock import format_parity, is_parity

__all__ = ["ParityDevice", "RepairReport", "format_parity", "is_parity", "stack"]
