"""Checks on what a browser relays through the hub: SDP and ICE candidates.

The hub does not interpret a session description; it relays it between two
participants. It still refuses what no browser sends (oversized, not SDP, a
malformed candidate), with a reason, so that a broken or hostile client cannot
push garbage into other people's browsers or the logs.
"""

from __future__ import annotations

import re

# RFC 8866 §5: every line is <type>=<value>, the type one lower-case letter.
_SDP_LINE = re.compile(r"^[a-z]=[\x20-\x7e\t]*$")
# RFC 8839 §5.1 candidate-attribute (without the leading "a="):
# candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> …
_CANDIDATE = re.compile(
    r"^candidate:[A-Za-z0-9+/]{1,32} [0-9]{1,3} (?i:udp|tcp) [0-9]{1,10} "
    r"[A-Za-z0-9.:\-]{1,253} [0-9]{1,5} typ (host|srflx|prflx|relay)"
    r"( [\x21-\x7e]+ [\x21-\x7e]+)*$"
)
_MID = re.compile(r"^[A-Za-z0-9+/=_\-.]{0,32}$")
# RFC 8839 §5.4 ice-ufrag: ice-chars (ALPHA / DIGIT / "+" / "/").
_UFRAG = re.compile(r"^[A-Za-z0-9+/]{0,256}$")
MAX_MEDIA_SECTIONS = 32


class BadInput(ValueError):
    """What is wrong, as a short machine-readable reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_description(kind: str, sdp: str, *, max_bytes: int) -> None:
    """An offer or answer a browser may have produced, else :class:`BadInput`."""
    if kind not in ("offer", "answer"):
        raise BadInput("description_type")
    if len(sdp.encode()) > max_bytes:
        raise BadInput("sdp_too_large")
    lines = sdp.replace("\r\n", "\n").rstrip("\n").split("\n")
    if not lines or lines[0] != "v=0":
        raise BadInput("sdp_not_sdp")
    media = 0
    for line in lines:
        if not _SDP_LINE.match(line):
            raise BadInput("sdp_bad_line")
        if line.startswith("m="):
            media += 1
    if media == 0:
        raise BadInput("sdp_no_media")
    if media > MAX_MEDIA_SECTIONS:
        raise BadInput("sdp_too_many_media")


def check_candidate(
    candidate: str,
    sdp_mid: str | None,
    mline_index: int | None,
    username_fragment: str | None = None,
) -> None:
    """One trickled ICE candidate; the empty string ends the candidates."""
    if candidate and not _CANDIDATE.match(candidate):
        raise BadInput("candidate_malformed")
    if username_fragment is not None and not _UFRAG.match(username_fragment):
        raise BadInput("candidate_malformed")
    if sdp_mid is not None and not _MID.match(sdp_mid):
        raise BadInput("candidate_bad_mid")
    if mline_index is not None and not 0 <= mline_index < MAX_MEDIA_SECTIONS:
        raise BadInput("candidate_bad_index")
    if sdp_mid is None and mline_index is None:
        raise BadInput("candidate_no_section")
