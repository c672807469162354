"""What the editor says about an SMS text: characters, encoding, segments (counted exactly as
the SMS channel counts them, :mod:`reminders.channels.segments`), and which characters force
UCS-2, so staff can see that one ``ş`` cuts a message from 160 characters to 70."""

from __future__ import annotations

from dataclasses import dataclass

from reminders.channels import segments


@dataclass(frozen=True)
class SmsInfo:
    characters: int
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int
    forcing_ucs2: tuple[str, ...]  # the characters that are not GSM-7, in order of appearance


def _not_gsm7(character: str) -> bool:
    try:
        character.encode("gsm03.38")
    except UnicodeEncodeError:
        return True
    return character == "\x1b"


def analyse(text: str) -> SmsInfo:
    counted = segments.count(text)
    outside = tuple(dict.fromkeys(c for c in text if _not_gsm7(c)))
    return SmsInfo(len(text), counted.encoding, counted.units, counted.segments, outside)
