"""How long an SMS is, and how to make Polish text fit GSM-7.

An SMS carries 140 bytes. Text in the GSM 03.38 default alphabet (GSM-7) takes
7 bits a character: 160 characters in one message, 153 a part when it is split
(the rest of each part is the header that joins the parts). Characters of the
alphabet's extension table (``^ { } \\ [ ~ ] | €`` and form feed) take two
(an escape and the character), and an escape is never split from its character.
One character outside GSM-7 (any of ą ć ę ł ń ó ś ź ż) makes the whole
message UCS-2: 70 characters in one message,
67 a part, a character outside the Basic Multilingual Plane taking two.

Operators pay per part and phones join parts in order, so the operator console
shows the count and offers :func:`to_gsm7`, which writes Polish letters without
their diacritics (ą → a, ł → l…) and typographic punctuation plainly.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# GSM 03.38 default alphabet (3GPP TS 23.038 §6.2.1), by code point order.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
) - {"\x1b"}  # the escape itself is not a character one can write
# The extension table: each costs an escape plus itself.
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67

# What to_gsm7 writes instead (before the general rule of dropping diacritics).
_PLAIN = {
    "ł": "l",
    "Ł": "L",
    "„": '"',
    "”": '"',
    "“": '"',
    "«": '"',
    "»": '"',
    "‚": "'",
    "‘": "'",
    "’": "'",
    "–": "-",
    "—": "-",
    "−": "-",
    "…": "...",
    "\u00a0": " ",
    "\u202f": " ",
    "•": "-",
    "°": " st.",
}


@dataclass(frozen=True)
class SmsLength:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int
    per_segment: int  # what one part holds in this encoding and length
    left: int  # units still free in the last part


def is_gsm7(text: str) -> bool:
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def _gsm7_units(text: str) -> list[int]:
    return [2 if c in GSM7_EXTENSION else 1 for c in text]


def _ucs2_units(text: str) -> list[int]:
    return [2 if ord(c) > 0xFFFF else 1 for c in text]


def _parts(units: list[int], single: int, part: int) -> tuple[int, int]:
    """Segments needed and units left in the last one; a character (an escape
    pair, a surrogate pair) is never split between two parts."""
    total = sum(units)
    if total <= single:
        return 1, single - total
    segments, used = 1, 0
    for size in units:
        if used + size > part:
            segments += 1
            used = 0
        used += size
    return segments, part - used


def sms_length(text: str) -> SmsLength:
    """The encoding, length and number of parts of ``text`` as one SMS."""
    if is_gsm7(text):
        units, single, part, encoding = _gsm7_units(text), GSM7_SINGLE, GSM7_PART, "GSM-7"
    else:
        units, single, part, encoding = _ucs2_units(text), UCS2_SINGLE, UCS2_PART, "UCS-2"
    segments, left = _parts(units, single, part)
    return SmsLength(
        encoding=encoding,
        units=sum(units),
        segments=segments,
        per_segment=single if segments == 1 else part,
        left=left,
    )


def to_gsm7(text: str) -> str:
    """``text`` in GSM-7: Polish letters without diacritics, typographic
    punctuation made plain, anything else that has no GSM-7 form as ``?``."""
    out = []
    for c in text:
        if c in GSM7_BASIC or c in GSM7_EXTENSION:
            out.append(c)
            continue
        if c in _PLAIN:
            out.append(_PLAIN[c])
            continue
        base = "".join(d for d in unicodedata.normalize("NFKD", c) if not unicodedata.combining(d))
        out.append(base if base and is_gsm7(base) else "?")
    return "".join(out)
