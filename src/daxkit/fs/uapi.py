"""The kernel's user-API values daxfs takes (fallocate modes, preadv2 flags, utimensat markers),
and the checks of the plain values every call takes (modes, times)."""

from __future__ import annotations

import math

from ..errors import DaxError, InvalidArgument
from .meta import TIME_NS_MAX, TIME_NS_MIN

RWF_RECOVERY_DATA = 0x20  # the flag proposed for preadv2 in the kernel's recovery-read series
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
UTIME_NOW = (1 << 30) - 1  # the kernel's tv_nsec values for utimensat(2)
UTIME_OMIT = (1 << 30) - 2


def time_ns_of(t, now: int, unit: str) -> int:
    """One time for utime: UTIME_NOW/UTIME_OMIT, an int (nanoseconds, or seconds when ``unit``
    is "s"), or a finite float; EINVAL for anything else."""
    if unit == "ns" and type(t) is int and t in (UTIME_NOW, UTIME_OMIT):
        return now if t == UTIME_NOW else UTIME_OMIT
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise InvalidArgument(f"utime: time must be a number, not {type(t).__name__}")
    if isinstance(t, float) and not math.isfinite(t):
        raise InvalidArgument(f"utime: time {t!r} is not finite")
    ns = t if unit == "ns" and isinstance(t, int) else round(t * (1 if unit == "ns" else 10**9))
    if not TIME_NS_MIN <= ns <= TIME_NS_MAX:
        raise InvalidArgument(f"utime: time {t!r} is out of range")
    return ns


def check_mode(mode) -> int:
    """A mode_t: what chmod(2) takes (bits past 07777 are ignored, as the kernel does)."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0xFFFFFFFF:
        raise InvalidArgument(f"mode must be an int from 0 to 0o37777777777, not {mode!r}")
    return mode


def fs_error(code: int, message: str) -> DaxError:
    return DaxError(message, errno=code)
