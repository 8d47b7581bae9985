"""Mending offers that real publishers send, before aiortc reads them."""

from __future__ import annotations

import re

_FID = re.compile(r"^a=ssrc-group:FID (\d+) (\d+)\s*$")
_SSRC = re.compile(r"^a=ssrc:(\d+) (?:cname:(\S+))?")


def complete_rtx_ssrc(offer: str) -> str:
    """Declare the retransmission stream of an ``a=ssrc-group:FID`` that has
    no ``a=ssrc`` line of its own, at the end of its media section.

    FFmpeg's WHIP muxer announces its RTX stream only in the FID group; aiortc
    takes a stream for RTX only when it has an ``a=ssrc`` line, and otherwise
    drops every retransmission ("RTX packet from unknown SSRC"), so any packet
    loss on the way in would become lost frames."""
    eol = "\r\n" if "\r\n" in offer else "\n"
    lines = offer.split(eol)
    trailing = bool(lines) and lines[-1] == ""
    if trailing:
        lines.pop()
    declared, cnames = set(), {}
    for line in lines:
        if match := _SSRC.match(line):
            declared.add(match.group(1))
            if match.group(2):
                cnames[match.group(1)] = match.group(2)
    out: list[str] = []
    missing: list[str] = []
    for line in [*lines, "m="]:  # a sentinel closes the last section
        if line.startswith("m="):
            out += missing
            missing = []
        if match := _FID.match(line):
            media, rtx = match.groups()
            if rtx not in declared:
                declared.add(rtx)
                missing.append(f"a=ssrc:{rtx} cname:{cnames.get(media, 'rtx')}")
        out.append(line)
    out.pop()  # the sentinel
    return eol.join(out) + (eol if trailing else "")
