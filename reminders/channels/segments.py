"""SMS segments: how many parts a body is billed and throttled as, and in which encoding.

A body that the GSM 03.38 alphabet (the ``gsm0338`` codec) can spell goes out as GSM-7: 160
septets in one part, 153 per part when split; extension characters (``€ [ ] { } ~ ^ | \\``)
take two septets and are never split across parts. One character outside that alphabet (a
Turkish ``ı``, ``ş``, ``ğ``, a non-breaking space, an emoji) turns the whole body UCS-2: 70
UTF-16 code units in one part, 67 per part when split, and a surrogate pair is never split.
"""

from __future__ import annotations

from dataclasses import dataclass

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)

GSM7, UCS2 = "GSM-7", "UCS-2"
_LIMITS = {GSM7: (160, 153), UCS2: (70, 67)}
_ESCAPE = 0x1B


@dataclass(frozen=True)
class SegmentCount:
    encoding: str  # "GSM-7" or "UCS-2"
    segments: int
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)


def count(body: str) -> SegmentCount:
    """The encoding and the number of segments of ``body``."""
    units = _gsm7_units(body)
    encoding = GSM7 if units is not None else UCS2
    if units is None:
        units = _ucs2_units(body)
    single, multi = _LIMITS[encoding]
    total = sum(units)
    segments = 1 if total <= single else _pack(units, multi)
    return SegmentCount(encoding, segments, total)


def _gsm7_units(body: str) -> list[int] | None:
    """Septets per character, or None when the body is not GSM-7."""
    if chr(_ESCAPE) in body:  # the escape code itself is not a character one can send
        return None
    try:
        return [len(c.encode("gsm03.38")) for c in body]
    except UnicodeEncodeError:
        return None


def _ucs2_units(body: str) -> list[int]:
    return [len(c.encode("utf-16-le")) // 2 for c in body]


def _pack(units: list[int], size: int) -> int:
    """Parts needed when no character may straddle two parts."""
    parts, used = 1, 0
    for width in units:
        if used + width > size:
            parts, used = parts + 1, 0
        used += width
    return parts
