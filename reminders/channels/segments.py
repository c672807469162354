"""SMS segments: how many parts a body is billed and throttled as, and in which encoding.

A body that the GSM 03.38 alphabet (the ``gsm0338`` codec) can spell goes out as GSM-7: 160
septets in one part, 153 per part when split; extension characters (``€ [ ] { } ~ ^ | \\``)
take two septets and are never split across parts. One character outside that alphabet (a
Turkish ``ı``, ``ş``, ``ğ``, a non-breaking space, an emoji) turns the whole body UCS-2: 70
UTF-16 code units in one part, 67 per part when split, and a surrogate pair is never split.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)

GSM7, UCS2 = "GSM-7", "UCS-2"
_LIMITS = {GSM7: (160, 153), UCS2: (70, 67)}
_ESCAPE = 0x1B


@dataclass(frozen=True)
class SegmentCount:
    encoding: str  # "GSM-7" or "UCS-2"
    segments: int
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)


@lru_cache(maxsize=64)  # a message's body is counted for its rate limit, then by its sender
def count(body: str) -> SegmentCount:
    """The encoding and the number of segments of ``body``."""
    septets = _gsm7_widths(body)
    if septets is not None:
        encoding, total = GSM7, sum(map(septets.__getitem__, body))
    else:
        encoding, total = UCS2, len(body.encode("utf-16-le")) // 2
    single, multi = _LIMITS[encoding]
    if total <= single:
        return SegmentCount(encoding, 1, total)
    width = septets.__getitem__ if septets is not None else _utf16_units
    units = list(map(width, body))
    return SegmentCount(encoding, _pack(units, multi), total)


def _gsm7_widths(body: str) -> dict[str, int] | None:
    """The septets of each distinct character of ``body``; None when it is not GSM-7."""
    widths = {c: _septets(c) for c in set(body)}
    return None if 0 in widths.values() else widths


@lru_cache(maxsize=4096)  # the codec encodes one character at a time, in Python
def _septets(char: str) -> int:
    """A character's width in GSM-7 (2 for an extension character); 0: not GSM-7."""
    if char == chr(_ESCAPE):  # the escape code itself is not a character one can send
        return 0
    try:
        return len(char.encode("gsm03.38"))
    except UnicodeEncodeError:
        return 0


def _utf16_units(char: str) -> int:
    """Two for a character beyond the Basic Multilingual Plane (a surrogate pair), else one."""
    return 2 if ord(char) > 0xFFFF else 1


def _pack(units: list[int], size: int) -> int:
    """Parts needed when no character may straddle two parts."""
    parts, used = 1, 0
    for width in units:
        if used + width > size:
            parts, used = parts + 1, 0
        used += width
    return parts
