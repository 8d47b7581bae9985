"""Where media workers and rooms are (worker mode): Redis state and the wire.

Keys, all under ``settings.REDIS_PREFIX`` (``P``):

- ``P:media:worker:<id>``: a hash per worker, ``info`` (its announcement as
  JSON: load and limits) and ``seen_at`` (Redis's clock when it was written),
  expiring ``WORKER_TTL`` seconds after the last announcement;
- ``P:media:workers``: a set of the ids that announced themselves (an index,
  so nobody scans keys; ids whose hash expired are pruned by the sweep);
- ``P:media:rooms``: a hash room → worker id, the room's assignment.

Decisions come from :mod:`media.placement` (pure); every change of an
assignment is a compare-and-set in Redis (:meth:`Registry.assign`), so two
web processes placing one room, or a web process and a worker's sweep
finding the same orphan, agree: exactly one of them moves it and tells the
room's participants to reconnect (:func:`tell_reconnect`).

Time is Redis's (``TIME``): announcements and liveness are judged on one
clock, whatever the hosts' clocks say.

The wire between web processes and workers (channel layer): a request goes
to the worker's channel :func:`worker_channel`; the reply comes back on the
caller's own process-specific channel. See ``media/worker.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from media import placement
from media.sfu import room as sfu_room
from media.sfu.room import MediaError

log = logging.getLogger(__name__)

WORKER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_TOPIC_SAFE = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,121}$")


# --- The wire ------------------------------------------------------------------


class Unavailable(MediaError):
    """No media worker could take the request now (none running, or the one
    carrying the stream did not answer in time)."""

    status = 503


class Moved(Exception):
    """A worker's reply: the room is not (or no longer) assigned to it."""

    def __init__(self, worker: str | None):
        super().__init__(f"the room is assigned to {worker or 'no worker'}")
        self.worker = worker


ERRORS: dict[str, type[MediaError]] = {
    cls.__name__: cls
    for cls in (
        MediaError,
        sfu_room.BadOffer,
        sfu_room.NoCommonCodec,
        sfu_room.NotFound,
        sfu_room.Busy,
        sfu_room.Full,
        Unavailable,
    )
}


def worker_channel(worker_id: str) -> str:
    """The channel-layer channel a worker receives its requests on."""
    return f"media.worker.{worker_id}"


def session_id(worker_id: str, local_id: str) -> str:
    """A session id the web side hands out: the worker's id, a dot, and the
    worker's own session id (neither contains a dot)."""
    return f"{worker_id}.{local_id}"


def split_session(session: str) -> tuple[str, str] | None:
    """``(worker id, worker's session id)``, or None for an id of another form."""
    worker_id, dot, local_id = session.partition(".")
    if not dot or not local_id or "." in local_id or not WORKER_ID_RE.match(worker_id):
        return None
    return worker_id, local_id


def encode_error(error: MediaError) -> dict[str, Any]:
    name = type(error).__name__ if type(error).__name__ in ERRORS else "MediaError"
    return {"class": name, "status": error.status, "reason": error.reason, "detail": error.detail}


def decode_error(data: Any) -> MediaError:
    """The same :class:`MediaError` subclass, reason, detail and status."""
    if not isinstance(data, dict):
        return Unavailable("media_worker_error", "the media worker gave an unreadable answer")
    cls = ERRORS.get(str(data.get("class")), MediaError)
    error = cls(str(data.get("reason") or "media_error"), str(data.get("detail") or ""))
    status = data.get("status")
    if isinstance(status, int) and status != error.status:
        error.status = status
    return error


def room_topic(room: str) -> str:
    """The bus topic of a room's media events (``media.<room>``; a hashed
    name for a room whose name is not a valid topic)."""
    if _TOPIC_SAFE.match(room):
        return f"media.{room}"
    return "media.x-" + hashlib.sha256(room.encode()).hexdigest()[:24]


async def tell_reconnect(room: str, worker: str | None, reason: str = "worker_lost") -> None:
    """Tell a room's participants that their media worker is gone: they
    reconnect (a new offer) and are placed again. Never raises."""
    from hub.events import apublish

    try:
        await apublish(
            room_topic(room), "media.reconnect", {"room": room, "worker": worker, "reason": reason}
        )
    except Exception:
        log.exception("could not announce media.reconnect for room %s", room)


def forward_events(sfu) -> None:
    """Publish what a forwarding unit tells about its rooms on each room's
    topic: ``media.speaker`` (the active speaker, from RFC 6464 levels),
    ``media.published`` / ``media.unpublished``, ``media.recording`` /
    ``media.recorded``. Best effort: a lost event loses no media."""
    from hub.events import apublish

    tasks: set[asyncio.Task] = set()

    async def send(kind: str, data: dict) -> None:
        try:
            await apublish(room_topic(data["room"]), f"media.{kind}", data)
        except Exception:
            log.warning("could not publish media.%s for room %s", kind, data.get("room"))

    def on_event(kind: str, data: dict) -> None:
        if "room" not in data:
            return
        task = asyncio.ensure_future(send(kind, data))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    sfu.on_event = on_event


# --- Redis state -----------------------------------------------------------------


@dataclass
class Snapshot:
    """Workers that are announced now and the assignments, at Redis time ``now``."""

    now: float
    workers: list[placement.Worker]
    assignments: dict[str, str]
    indexed: set[str] = field(default_factory=set)  # ids in the index, live or not
    info: dict[str, dict] = field(default_factory=dict)  # id → its announcement


@dataclass(frozen=True)
class Placement:
    worker: str
    moved_from: str | None = None  # the (dead) worker the room had before


class Registry:
    """The media workers' Redis state, for web processes and workers alike."""

    # Announce: the hash with Redis's time, its expiry, the index.
    _ANNOUNCE = """
    local t = redis.call('TIME')
    local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
    redis.call('HSET', KEYS[1], 'info', ARGV[1], 'seen_at', now)
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('SADD', KEYS[2], ARGV[3])
    return now
    """

    # Compare-and-set one assignment: when the current value ('' for none) is
    # one of ARGV[3..], set it to ARGV[2] ('' deletes). Returns {1|0, value after}.
    _ASSIGN = """
    local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
    for i = 3, #ARGV do
      if current == ARGV[i] then
        if ARGV[2] == '' then
          redis.call('HDEL', KEYS[1], ARGV[1])
        else
          redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        end
        return {1, ARGV[2]}
      end
    end
    return {0, current}
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        ttl: float,
        socket_timeout: float = 30.0,
        max_connections: int = 100,
    ):
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.ttl = ttl
        # Blocking: a burst of offers waits for a connection instead of
        # failing with "Too many connections" (as hub.bus does).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=5.0,
            max_connections=max_connections,
            timeout=20,
            client_name=f"{prefix}:media",
        )
        self.redis = aioredis.Redis.from_pool(pool)
        self._announce = self.redis.register_script(self._ANNOUNCE)
        self._assign = self.redis.register_script(self._ASSIGN)

    @classmethod
    def from_settings(cls) -> Registry:
        from django.conf import settings

        if not settings.REDIS_URL:
            raise RuntimeError("MEDIA_MODE=worker needs REDIS_URL (media workers meet in Redis)")
        return cls(
            settings.REDIS_URL,
            prefix=settings.REDIS_PREFIX,
            ttl=settings.MEDIA["WORKER_TTL"],
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
        )

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, "media", *parts))

    @property
    def rooms_key(self) -> str:
        return self.key("rooms")

    @property
    def index_key(self) -> str:
        return self.key("workers")

    # Workers -----------------------------------------------------------------------

    async def announce(self, worker_id: str, info: dict[str, Any]) -> float:
        """Write a worker's announcement; returns Redis's time of it."""
        body = json.dumps({**info, "id": worker_id}, separators=(",", ":"))
        keys = [self.key("worker", worker_id), self.index_key]
        now = await self._announce(keys=keys, args=[body, max(1, int(self.ttl * 1000)), worker_id])
        return float(now)

    async def withdraw(self, worker_id: str) -> None:
        """A worker stopping: its announcement goes at once."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key("worker", worker_id))
            pipe.srem(self.index_key, worker_id)
            await pipe.execute()

    async def snapshot(self, room: str | None = None) -> Snapshot:
        """Announced workers and the assignment of ``room`` (all rooms when None)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.smembers(self.index_key)
            if room is None:
                pipe.hgetall(self.rooms_key)
            else:
                pipe.hget(self.rooms_key, room)
            (seconds, micros), ids, assigned = await pipe.execute()
        now = seconds + micros / 1e6
        if room is None:
            assignments = dict(assigned)
        else:
            assignments = {room: assigned} if assigned else {}
        ids = sorted(ids)
        rows = []
        if ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for worker_id in ids:
                    pipe.hmget(self.key("worker", worker_id), "info", "seen_at")
                rows = await pipe.execute()
        workers, infos = [], {}
        for worker_id, (info, seen_at) in zip(ids, rows, strict=True):
            worker = _worker(worker_id, info, seen_at)
            if worker is not None:
                workers.append(worker)
                infos[worker_id] = json.loads(info)
        return Snapshot(now, workers, assignments, set(ids), infos)

    async def alive(self, worker_id: str) -> bool:
        """Whether a worker announced itself within the TTL (draining or not:
        a draining worker still answers for its sessions)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hmget(self.key("worker", worker_id), "info", "seen_at")
            (seconds, micros), (info, seen_at) = await pipe.execute()
        worker = _worker(worker_id, info, seen_at)
        if worker is None:
            return False
        worker = dataclasses.replace(worker, draining=False)
        return placement.counts(worker, now=seconds + micros / 1e6, ttl=self.ttl)

    # Assignments ------------------------------------------------------------------------

    async def assignment(self, room: str) -> str | None:
        return await self.redis.hget(self.rooms_key, room)

    async def assign(
        self, room: str, worker: str | None, *, expected: Iterable[str | None]
    ) -> tuple[bool, str | None]:
        """Set (``worker``) or remove (None) ``room``'s assignment if it is now
        one of ``expected`` (None: unassigned). Returns ``(done, value now)``."""
        args = [room, worker or "", *((e or "") for e in expected)]
        done, value = await self._assign(keys=[self.rooms_key], args=args)
        return bool(int(done)), value or None

    async def release(self, room: str, worker: str) -> bool:
        """Remove ``room``'s assignment if it is still ``worker``'s."""
        done, _ = await self.assign(room, None, expected=[worker])
        return done

    async def place(self, room: str, *, peers: int = 1, bitrate_kbps: int = 0) -> Placement:
        """The live worker for ``room``, assigning it when it had none or a
        dead one (:func:`media.placement.place`). The caller that moved it
        away from a dead worker gets ``moved_from`` (it tells the room).
        Raises :class:`Unavailable` (no worker) or ``Full`` (all full)."""
        for _ in range(5):
            snap = await self.snapshot(room)
            current = snap.assignments.get(room)
            try:
                chosen, moved = placement.place(
                    room,
                    snap.assignments,
                    snap.workers,
                    now=snap.now,
                    ttl=self.ttl,
                    peers=peers,
                    bitrate_kbps=bitrate_kbps,
                )
            except placement.NoCapacity:
                if current is not None and await self.release(room, current):
                    await tell_reconnect(room, current)  # its worker is dead (else no raise)
                live = [w for w in snap.workers if placement.counts(w, now=snap.now, ttl=self.ttl)]
                if not live:
                    raise Unavailable("no_media_worker", "no media worker is running") from None
                raise sfu_room.Full("media_full", "every media worker is at its limit") from None
            if chosen == current:
                return Placement(chosen)
            done, _ = await self.assign(room, chosen, expected=[current])
            if done:
                return Placement(chosen, current if moved else None)
            # someone else placed it meanwhile: look again
        raise Unavailable("media_contention", "the stream's media worker could not be settled")

    async def locate(self, room: str) -> tuple[str | None, str | None]:
        """``(live worker serving room or None, dead worker)``: a dead worker's
        assignment is removed on the way, and the caller that removed it gets
        that worker's id (it tells the room)."""
        snap = await self.snapshot(room)
        current = snap.assignments.get(room)
        serving = placement.serving(
            room, snap.assignments, snap.workers, now=snap.now, ttl=self.ttl
        )
        if serving is not None:
            return serving, None
        if current is not None and await self.release(room, current):
            return None, current
        return None, None

    async def sweep(self, snap: Snapshot, *, skip: str | None = None) -> list[tuple[str, str]]:
        """Remove the assignments of rooms whose worker no longer counts (but
        not ``skip``'s: a worker does not declare itself dead). Returns the
        ``(room, dead worker)`` pairs this caller removed (it tells them)."""
        removed = []
        for room in placement.orphans(snap.assignments, snap.workers, now=snap.now, ttl=self.ttl):
            old = snap.assignments[room]
            if old != skip and await self.release(room, old):
                removed.append((room, old))
        gone = snap.indexed - {w.id for w in snap.workers}
        if gone:
            await self.redis.srem(self.index_key, *gone)
        return removed

    async def close(self) -> None:
        await self.redis.aclose()


def _worker(worker_id: str, info: str | None, seen_at: str | None) -> placement.Worker | None:
    if not info or not seen_at:
        return None  # expired between the index and the hash
    try:
        data = json.loads(info)
        return placement.Worker(
            id=worker_id,
            seen_at=float(seen_at),
            peers=int(data.get("peers", 0)),
            max_peers=int(data.get("max_peers", 0)),
            bitrate_kbps=int(data.get("bitrate_kbps", 0)),
            max_bitrate_kbps=int(data.get("max_bitrate_kbps", 0)),
            draining=bool(data.get("draining", False)),
        )
    except (ValueError, TypeError, AttributeError):
        log.warning("unreadable media worker announcement for %s", worker_id)
        return None


_registry: Registry | None = None
_registry_loop: asyncio.AbstractEventLoop | None = None


def get_registry() -> Registry:
    """This process's registry; a new event loop (tests) gets a new one."""
    global _registry, _registry_loop
    loop = asyncio.get_running_loop()
    if _registry is None or _registry_loop is not loop:
        _registry = Registry.from_settings()
        _registry_loop = loop
    return _registry


def reset_registry() -> None:
    """Forget the process's registry (tests, after changing settings)."""
    global _registry, _registry_loop
    _registry = None
    _registry_loop = None
