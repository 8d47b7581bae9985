"""The media plane as the web side sees it: publish, subscribe, close.

In the embedded mode (``MEDIA_MODE=embedded``) the forwarding unit runs in
this process's event loop (daphne's), one :class:`~media.sfu.room.Sfu` per
process. Callers use only the functions here, so that the worker mode can
carry the same calls to a media worker.

In the worker mode (``MEDIA_MODE=worker``) the stream's room is placed on a
media worker (``python -m media.worker``, :mod:`media.registry`) and the call
goes to it over the channel layer; its answer or refusal comes back as the
same :class:`~media.sfu.room.MediaError` subclass. A worker that does not
answer within ``MEDIA["RPC_TIMEOUT"]`` gives
:class:`~media.registry.Unavailable` (503); so does having no worker. Session
ids are ``<worker id>.<worker's session id>``, so ``owner_of`` and ``close``
find the worker again; a session of a worker that is gone has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from media.recording import recording_path
from media.registry import (
    Moved,
    Unavailable,
    decode_error,
    forward_events,
    get_registry,
    session_id,
    split_session,
    tell_reconnect,
    worker_channel,
)
from media.sfu.room import Limits, MediaError, NotFound, Sfu

log = logging.getLogger(__name__)

_local: Sfu | None = None


def limits() -> Limits:
    conf = settings.MEDIA
    return Limits(
        max_peers=conf["MAX_PEERS"],
        max_bitrate_kbps=conf["MAX_BITRATE_KBPS"],
        connect_timeout=conf["CONNECT_TIMEOUT"],
        max_sdp_bytes=conf["MAX_SDP_BYTES"],
        publisher_idle=conf["PUBLISHER_IDLE_SECONDS"],
        ice_addresses=tuple(conf["ICE_ADDRESSES"]),
    )


def local_sfu() -> Sfu:
    """This process's forwarding unit, created on first use."""
    global _local
    if _local is None:
        _local = Sfu(limits())
        forward_events(_local)
    return _local


def _workers() -> bool:
    return settings.MEDIA_MODE == "worker"


@dataclass(frozen=True)
class Answer:
    session: str
    sdp: str


async def publish(
    stream: str, offer: str, *, owner: str, exclusive: bool = True, record_as: str | None = None
) -> Answer:
    """*exclusive*: one publisher per stream (WHIP), else many (a meeting);
    *record_as*: record it as ``RECORDINGS_DIR/<record_as>.webm|mkv`` from
    when it connects; raises :class:`~media.sfu.room.MediaError`."""
    if record_as is not None:
        _check_name(record_as)
    if _workers():
        return await _start(
            "publish", stream, offer=offer, owner=owner, exclusive=exclusive, record_as=record_as
        )
    session, sdp = await local_sfu().publish(
        stream,
        offer,
        owner=owner,
        exclusive=exclusive,
        record_to=recording_path(record_as) if record_as else None,
    )
    return Answer(session.id, sdp)


def _check_name(name: str) -> None:
    try:
        recording_path(name)
    except ValueError as exc:
        raise MediaError("recording_name", str(exc)) from exc


async def record(stream: str, source_owner: str, name: str) -> None:
    """Start recording the publication of *source_owner* on *stream* as
    ``RECORDINGS_DIR/<name>``; :class:`NotFound` when it publishes nothing."""
    _check_name(name)
    if _workers():
        await _on_worker_of(stream, "record", source_owner=source_owner, name=name)
        return
    await local_sfu().record(stream, source_owner, recording_path(name))


async def stop_recording(stream: str, source_owner: str) -> str | None:
    """Finish that recording; the file written (None: nothing was recorded)."""
    if _workers():
        result = await _on_worker_of(stream, "stop_recording", source_owner=source_owner)
        path = result.get("path")
        return path if isinstance(path, str) else None
    return await local_sfu().stop_recording(stream, source_owner)


async def subscribe(
    stream: str,
    offer: str,
    *,
    owner: str,
    max_viewers: int | None = None,
    source_owner: str | None = None,
) -> Answer:
    """Every track on *stream*, or only the publisher owned by *source_owner*."""
    if _workers():
        return await _start(
            "subscribe",
            stream,
            offer=offer,
            owner=owner,
            max_viewers=max_viewers,
            source_owner=source_owner,
        )
    session, sdp = await local_sfu().subscribe(
        stream, offer, owner=owner, max_viewers=max_viewers, source_owner=source_owner
    )
    return Answer(session.id, sdp)


async def owner_of(stream: str, session_id: str) -> str | None:
    """Who may end *session_id* on *stream*; None when there is no such session.
    In the worker mode it may raise :class:`~media.registry.Unavailable`."""
    if _workers():
        where = split_session(session_id)
        with _reachable():
            if where is None or not await get_registry().alive(where[0]):
                return None
            try:
                result = await call(where[0], "owner_of", stream=stream, session=where[1])
            except Moved:
                return None  # its worker died meanwhile, and the session with it
        owner = result.get("owner")
        return owner if isinstance(owner, str) else None
    session = local_sfu().sessions.get(session_id)
    if session is None or session.room != stream:
        return None
    return session.owner


async def close(session_id: str) -> bool:
    if _workers():
        where = split_session(session_id)
        with _reachable():
            if where is None or not await get_registry().alive(where[0]):
                return False  # its worker is gone, and the session with it
            try:
                result = await call(where[0], "close", session=where[1])
            except Moved:
                return False
        return bool(result.get("closed"))
    return await local_sfu().close(session_id)


# --- Worker mode --------------------------------------------------------------------


async def _start(op: str, stream: str, **fields: Any) -> Answer:
    """Publish or subscribe on the worker carrying ``stream``'s room."""
    with _reachable():
        registry = get_registry()
        for _ in range(3):
            if op == "publish":
                placed = await registry.place(stream)
                worker, dead = placed.worker, placed.moved_from
            else:
                # A viewer needs the worker that has the publisher: never place.
                worker, dead = await registry.locate(stream)
            if dead is not None:
                log.warning("media: stream %s lost its worker %s; placed again", stream, dead)
                await tell_reconnect(stream, dead)
            if worker is None:
                raise NotFound("no_publisher", "nothing is being published on this stream")
            try:
                result = await call(worker, op, stream=stream, **fields)
            except WorkerGone:
                log.warning("media: worker %s went silent during %s on %s", worker, op, stream)
                continue
            except Moved:
                continue  # assigned elsewhere meanwhile: look again
            return Answer(session_id(worker, result["session"]), result["sdp"])
    raise Unavailable("media_contention", "the stream's media worker could not be settled")


async def _on_worker_of(stream: str, op: str, **fields: Any) -> dict:
    """*op* on the worker carrying *stream* (never placed: it must be there)."""
    with _reachable():
        worker, dead = await get_registry().locate(stream)
        if dead is not None:
            await tell_reconnect(stream, dead)
        if worker is None:
            raise NotFound("no_publisher", "nothing is being published on this stream")
        try:
            return await call(worker, op, stream=stream, **fields)
        except Moved:
            raise NotFound("no_publisher", "the stream's media worker is gone") from None


@contextlib.contextmanager
def _reachable():
    """Redis (registry or channel layer) failing is a 503, like no worker."""
    from redis.exceptions import RedisError

    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("media: Redis failed: %r", exc)
        raise Unavailable("media_unreachable", "the media plane cannot be reached now") from exc


class WorkerGone(Moved):
    """The worker stopped announcing itself while we waited for its answer."""

    def __init__(self, worker: str):
        super().__init__(None)
        self.gone = worker


async def call(worker: str, op: str, **fields: Any) -> dict:
    """One request to a worker over the channel layer: its result, or the
    error it answered as the same :class:`MediaError`; :class:`Moved` when
    the room is not its; :class:`WorkerGone` when the worker stops counting
    (its announcement expired) while we wait, so the caller need not wait
    out the timeout to place the room again; :class:`Unavailable` when it
    does not answer in ``MEDIA["RPC_TIMEOUT"]`` seconds (the worker is told
    to drop the request)."""
    from channels.exceptions import ChannelFull
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    timeout = settings.MEDIA["RPC_TIMEOUT"]
    request = secrets.token_hex(8)
    reply = await layer.new_channel()
    message = {
        "type": "media.rpc",
        "op": op,
        "id": request,
        "reply": reply,
        "deadline": time.time() + timeout,
        **fields,
    }
    try:
        await layer.send(worker_channel(worker), message)
    except ChannelFull:
        raise Unavailable("media_busy", f"the media worker {worker} has too much to do") from None
    cancel = {"type": "media.rpc", "op": "cancel", "id": request}
    receiving = asyncio.ensure_future(layer.receive(reply))
    watching = asyncio.ensure_future(_watch(worker))
    try:
        done, _ = await asyncio.wait(
            {receiving, watching}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        # Our caller went away (the HTTP client hung up): nothing it asked
        # for may stay behind, e.g. a publisher nobody will ever connect.
        with contextlib.suppress(Exception):
            await layer.send(worker_channel(worker), cancel)
        raise
    finally:
        pending = [task for task in (receiving, watching) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            # Not ``await task``: its end may be a CancelledError, or (redis-py
            # under asyncio.timeout on 3.11) a TimeoutError; neither is ours.
            await asyncio.wait(pending)
        for task in pending:
            if not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" warning
    if receiving in done:
        answer = receiving.result()
    else:
        with contextlib.suppress(Exception):
            await layer.send(worker_channel(worker), cancel)
        if watching in done:
            raise WorkerGone(worker)
        raise Unavailable("media_timeout", f"the media worker did not answer within {timeout:g} s")
    if answer.get("ok"):
        return answer.get("result") or {}
    if "moved" in answer:
        raise Moved(answer.get("moved"))
    raise decode_error(answer.get("error"))


async def _watch(worker: str) -> None:
    """Return once ``worker`` no longer counts (looked at every heartbeat)."""
    registry = get_registry()
    interval = settings.MEDIA["HEARTBEAT_SECONDS"]
    while True:
        await asyncio.sleep(interval)
        try:
            if not await registry.alive(worker):
                return
        except Exception:
            log.warning("media: could not look at worker %s in Redis", worker)
