"""The media plane as the web side sees it: publish, subscribe, close.

In the embedded mode (``MEDIA_MODE=embedded``) the forwarding unit runs in
this process's event loop (daphne's), one :class:`~media.sfu.room.Sfu` per
process. Callers use only the functions here, so that the worker mode can
carry the same calls to a media worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from media.sfu.room import Limits, Sfu

_local: Sfu | None = None


def limits() -> Limits:
    conf = settings.MEDIA
    return Limits(
        max_peers=conf["MAX_PEERS"],
        max_bitrate_kbps=conf["MAX_BITRATE_KBPS"],
        connect_timeout=conf["CONNECT_TIMEOUT"],
        max_sdp_bytes=conf["MAX_SDP_BYTES"],
    )


def local_sfu() -> Sfu:
    """This process's forwarding unit, created on first use."""
    global _local
    if _local is None:
        _local = Sfu(limits())
    return _local


@dataclass(frozen=True)
class Answer:
    session: str
    sdp: str


async def publish(stream: str, offer: str, *, owner: str, exclusive: bool = True) -> Answer:
    """*exclusive*: one publisher per stream (WHIP), else many (a meeting);
    raises :class:`~media.sfu.room.MediaError`."""
    session, sdp = await local_sfu().publish(stream, offer, owner=owner, exclusive=exclusive)
    return Answer(session.id, sdp)


async def subscribe(
    stream: str,
    offer: str,
    *,
    owner: str,
    max_viewers: int | None = None,
    source_owner: str | None = None,
) -> Answer:
    """Every track on *stream*, or only the publisher owned by *source_owner*."""
    session, sdp = await local_sfu().subscribe(
        stream, offer, owner=owner, max_viewers=max_viewers, source_owner=source_owner
    )
    return Answer(session.id, sdp)


async def owner_of(stream: str, session_id: str) -> str | None:
    """Who may end *session_id* on *stream*; None when there is no such session."""
    session = local_sfu().sessions.get(session_id)
    if session is None or session.room != stream:
        return None
    return session.owner


async def close(session_id: str) -> bool:
    return await local_sfu().close(session_id)
