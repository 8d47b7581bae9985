"""``python -m media.worker``: a media worker process (worker mode).

It owns the aiortc peers of the rooms placed on it (one
:class:`~media.sfu.room.Sfu`), within ``MEDIA["MAX_PEERS"]`` and
``MEDIA["MAX_BITRATE_KBPS"]``. Several run, on one host or many; they meet in
Redis (:mod:`media.registry`).

Heartbeat, every ``MEDIA["HEARTBEAT_SECONDS"]`` (and at once after each
session starts or ends, so placement sees fresh load):

- it announces itself and its load (``P:media:worker:<id>``, expiring after
  ``MEDIA["WORKER_TTL"]``);
- it **sweeps**: rooms assigned to a worker that no longer counts (silent
  past the TTL, or draining) lose their assignment, and their participants
  get a ``media.reconnect`` event on the room's topic (``media.<room>``);
  their next offer is placed on a live worker. Every worker sweeps, and web
  processes do the same for the room they place, so a death is noticed
  within ``WORKER_TTL`` + one heartbeat while any worker or request is
  about; a compare-and-set in Redis makes exactly one of them tell the room;
- it **fences**: a room it still serves that is no longer assigned to it (it
  was taken for dead: Redis unreachable, a stalled loop) has its sessions
  ended here, so a stream never has two live publishers;
- rooms that emptied lose their assignment;
- it touches ``MEDIA["HEARTBEAT_FILE"]`` (if set) once Redis took the
  announcement: a container healthcheck checks the file's age.

Requests come over the channel layer on ``media.worker.<id>``::

    {"type": "media.rpc", "op": "publish" | "subscribe" | "owner_of" | "close"
     | "stats" | "cancel", "id": <request id>, "reply": <caller's channel>,
     "deadline": <unix time the caller stops waiting>, "stream": ..., "offer": ...,
     "owner": ..., "exclusive": ..., "max_viewers": ..., "source_owner": ...,
     "session": <this worker's session id>}

and each (but ``cancel``) is answered on its ``reply`` channel::

    {"type": "media.reply", "id": ..., "ok": true, "result": {...}}
    {"type": "media.reply", "id": ..., "ok": false, "error": {"class": "Busy",
     "status": 409, "reason": "stream_busy", "detail": "..."}}
    {"type": "media.reply", "id": ..., "ok": false, "moved": <worker id or null>}

A request past its deadline is dropped (its caller gave up and answered 503);
``cancel`` (sent by a caller that gave up) ends the session the request made,
so that a publisher's retry does not meet its own ghost ("stream busy").
``moved`` says the room is assigned elsewhere: the caller places it again.

SIGTERM or SIGINT: the worker stops taking rooms, tells its rooms to
reconnect, ends its sessions and withdraws its announcement. SIGKILL (or a
lost host) is what the sweep is for.

The worker opens no listening socket: its only traffic is Redis and the
WebRTC peers themselves (UDP on the host's addresses, as aiortc gathers).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from media import placement
from media.recording import recording_path
from media.registry import (
    Moved,
    Registry,
    encode_error,
    forward_events,
    tell_reconnect,
    worker_channel,
)
from media.sfu.room import MediaError, Sfu

log = logging.getLogger("media.worker")

_REMEMBERED = 1000  # recent request ids kept for "cancel"


def new_worker_id() -> str:
    return "w" + secrets.token_hex(5)


class MediaWorker:
    def __init__(
        self,
        worker_id: str | None = None,
        *,
        registry: Registry | None = None,
        layer=None,
        sfu: Sfu | None = None,
    ):
        from media.service import limits

        conf = settings.MEDIA
        self.id = worker_id or new_worker_id()
        self.channel = worker_channel(self.id)
        self.heartbeat = conf["HEARTBEAT_SECONDS"]
        self.heartbeat_file = conf.get("HEARTBEAT_FILE") or ""
        self.registry = registry or Registry.from_settings()
        self._layer = layer
        self.sfu = sfu or Sfu(limits())
        forward_events(self.sfu)  # speaker, published, recording… on the rooms' topics
        self.draining = False
        self.served: set[str] = set()  # rooms assigned to this worker by its requests
        self.busy: collections.Counter[str] = collections.Counter()  # requests in hand
        self._assign_lock = asyncio.Lock()
        self._made: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._cancelled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._soon = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._cpu = (time.monotonic(), time.process_time())
        self.cpu_percent = 0.0
        self.started = time.time()

    @property
    def layer(self):
        if self._layer is None:
            from channels.layers import get_channel_layer

            self._layer = get_channel_layer()
        return self._layer

    # Running -----------------------------------------------------------------------

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        """Until :meth:`stop` (SIGTERM/SIGINT when run as a process)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        """Announce and serve. Refuses an id another live worker has; rooms
        still assigned to this id are a previous life's (a restart before the
        TTL ran out): they are released and told to reconnect."""
        if await self.registry.alive(self.id):
            raise RuntimeError(f"a media worker with the id {self.id} is running already")
        snap = await self.registry.snapshot()
        for room, worker in sorted(snap.assignments.items()):
            if worker == self.id and await self.registry.release(room, self.id):
                await tell_reconnect(room, self.id)
        await self.announce()
        self._spawn(self._receive_loop(), "media-worker-receive")
        self._spawn(self._heartbeat_loop(), "media-worker-heartbeat")
        log.info("media worker %s started (channel %s)", self.id, self.channel)

    async def shutdown(self) -> None:
        """Stop taking rooms, tell the rooms to reconnect, end every session,
        withdraw the announcement."""
        self.draining = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await self.announce()
        for room in sorted(set(self.sfu.rooms) | self.served):
            try:
                if await self.registry.release(room, self.id):
                    await tell_reconnect(room, self.id, reason="worker_stopped")
            except Exception:
                log.exception("media worker %s: could not release room %s", self.id, room)
        await self.sfu.close_all()
        with contextlib.suppress(Exception):
            await self.registry.withdraw(self.id)
        if tasks:
            _, left = await asyncio.wait(tasks, timeout=5)
            if left:
                log.warning("media worker %s: %d tasks did not stop", self.id, len(left))
        await self.registry.close()
        log.info("media worker %s stopped", self.id)

    def _spawn(self, coro, name: str | None = None) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # Heartbeat ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu
        if now - then >= 0.5:
            self.cpu_percent = round(100 * (cpu - cpu_then) / (now - then), 1)
            self._cpu = (now, cpu)
        stats = self.sfu.stats()
        return {
            "channel": self.channel,
            "peers": stats["peers"],
            "max_peers": self.sfu.limits.max_peers,
            "bitrate_kbps": stats["bitrate_kbps"],
            "max_bitrate_kbps": self.sfu.limits.max_bitrate_kbps,
            "rooms": stats["rooms"],
            "draining": self.draining,
            "cpu_percent": self.cpu_percent,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
        }

    async def announce(self) -> None:
        await self.registry.announce(self.id, self.info())

    def announce_soon(self) -> None:
        self._soon.set()

    async def _heartbeat_loop(self) -> None:
        due = time.monotonic()
        failing = False
        while not self.draining:
            wait = due - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._soon.wait(), wait)
            self._soon.clear()
            try:
                await self.announce()
                if time.monotonic() >= due:
                    due = time.monotonic() + self.heartbeat
                    await self.reconcile()
                if self.heartbeat_file:
                    # Alive for the container's healthcheck: Redis took the
                    # announcement (and the sweep, when one was due).
                    await asyncio.to_thread(Path(self.heartbeat_file).touch)
                if failing:
                    log.info("media worker %s: Redis answers again", self.id)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                if _stopping(self):
                    return
                if not failing:
                    log.exception("media worker %s: heartbeat failed; trying again", self.id)
                failing = True
                due = time.monotonic() + self.heartbeat

    async def reconcile(self) -> None:
        """One sweep: orphans of dead workers, fencing, emptied rooms."""
        local = set(self.sfu.rooms)  # before the snapshot: these were assigned to us
        snap = await self.registry.snapshot()
        for room, dead in await self.registry.sweep(snap, skip=self.id):
            log.warning("media worker %s: room %s lost its worker %s", self.id, room, dead)
            await tell_reconnect(room, dead)
        busy = {room for room, n in self.busy.items() if n}
        for room in placement.fenced(self.id, local - busy, snap.assignments):
            if room in self.sfu.rooms:
                log.warning(
                    "media worker %s: room %s was placed elsewhere; ending it", self.id, room
                )
                await self._end_room(room)
        for room in sorted(self.served - set(self.sfu.rooms)):
            await self._release_if_empty(room)

    async def _end_room(self, room: str) -> None:
        sessions = list(self.sfu.rooms[room].sessions) if room in self.sfu.rooms else []
        for session in sessions:
            await self.sfu.close(session)
        self.served.discard(room)
        self.announce_soon()

    # Assignments --------------------------------------------------------------------

    async def _claim(self, room: str) -> None:
        """Hold ``room`` for a request: assigned to us (taken when free), else
        :class:`Moved`. Counts the request as in hand."""
        if self.draining:
            raise Moved(None)
        async with self._assign_lock:
            done, current = await self.registry.assign(room, self.id, expected=[None, self.id])
            if not done:
                raise Moved(current)
            self.busy[room] += 1
            self.served.add(room)

    async def _release_if_empty(self, room: str) -> None:
        async with self._assign_lock:
            if room in self.sfu.rooms or self.busy[room]:
                return
            self.busy.pop(room, None)
            self.served.discard(room)
            await self.registry.release(room, self.id)

    # Requests -----------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while not self.draining:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                if _stopping(self):
                    return  # a cancel that redis-py turned into a timeout
                log.exception("media worker %s: channel layer receive failed", self.id)
                await asyncio.sleep(1.0)
                continue
            if isinstance(message, dict):
                self._spawn(self.handle(message))

    async def handle(self, message: dict) -> dict | None:
        """Carry out one request and reply; returns the reply (tests)."""
        op, request = message.get("op"), str(message.get("id") or "")
        if op == "cancel":
            await self._cancel(request)
            return None
        deadline = message.get("deadline")
        if isinstance(deadline, (int, float)) and time.time() > deadline:
            log.info("media worker %s: dropped %s %s, its caller gave up", self.id, op, request)
            return None
        try:
            body = {"ok": True, "result": await self._dispatch(op, request, message)}
        except Moved as exc:
            body = {"ok": False, "moved": exc.worker}
        except MediaError as exc:
            body = {"ok": False, "error": encode_error(exc)}
        except Exception:
            log.exception("media worker %s: %s failed", self.id, op)
            error = MediaError("media_worker_error", "the media worker failed on this request")
            error.status = 500
            body = {"ok": False, "error": encode_error(error)}
        if op in ("publish", "subscribe", "close"):
            # The new load is in Redis before the caller hears back, so the
            # next placement sees it.
            try:
                await self.announce()
            except Exception:
                log.warning("media worker %s: could not announce its load", self.id)
        reply = {"type": "media.reply", "id": request, **body}
        channel = message.get("reply")
        if isinstance(channel, str) and channel and request not in self._cancelled:
            try:
                await self.layer.send(channel, reply)
            except Exception:
                log.exception("media worker %s: could not reply to %s", self.id, op)
        return reply

    async def _dispatch(self, op: Any, request: str, message: dict) -> dict:
        stream = str(message.get("stream") or "")
        if op in ("publish", "subscribe"):
            return await self._start(op, request, stream, message)
        if op == "owner_of":
            session = self.sfu.sessions.get(str(message.get("session") or ""))
            owner = session.owner if session is not None and session.room == stream else None
            return {"owner": owner}
        if op == "close":
            session = self.sfu.sessions.get(str(message.get("session") or ""))
            closed = await self.sfu.close(session.id) if session is not None else False
            if session is not None:
                await self._release_if_empty(session.room)
                self.announce_soon()
            return {"closed": closed}
        if op == "record":
            await self.sfu.record(
                stream,
                str(message.get("source_owner") or ""),
                recording_path(str(message.get("name") or "")),
            )
            return {}
        if op == "stop_recording":
            path = await self.sfu.stop_recording(stream, str(message.get("source_owner") or ""))
            return {"path": path}
        if op == "stats":
            return {"id": self.id, **self.sfu.stats(), "rooms_served": sorted(self.served)}
        raise MediaError("unknown_op", f"the media worker has no operation {op!r}")

    async def _start(self, op: str, request: str, stream: str, message: dict) -> dict:
        if not stream:
            raise MediaError("no_stream", "the request names no stream")
        offer, owner = str(message.get("offer") or ""), str(message.get("owner") or "")
        await self._claim(stream)
        try:
            if op == "publish":
                exclusive = message.get("exclusive", True) is not False
                name = message.get("record_as")
                session, sdp = await self.sfu.publish(
                    stream,
                    offer,
                    owner=owner,
                    exclusive=exclusive,
                    record_to=recording_path(name) if isinstance(name, str) and name else None,
                )
            else:
                max_viewers, source = message.get("max_viewers"), message.get("source_owner")
                session, sdp = await self.sfu.subscribe(
                    stream,
                    offer,
                    owner=owner,
                    max_viewers=max_viewers if isinstance(max_viewers, int) else None,
                    source_owner=source if isinstance(source, str) else None,
                )
        finally:
            self.busy[stream] -= 1
            await self._release_if_empty(stream)
            self.announce_soon()
        if request in self._cancelled:
            log.info("media worker %s: %s %s was given up; ending it", self.id, op, session.id)
            await self.sfu.close(session.id)
            await self._release_if_empty(stream)
            return {"session": session.id, "sdp": sdp}
        self._remember(self._made, request, session.id)
        return {"session": session.id, "sdp": sdp}

    async def _cancel(self, request: str) -> None:
        """The caller gave up on ``request``: end what it made, or will make."""
        self._remember(self._cancelled, request, None)
        session_id = self._made.pop(request, None)
        session = self.sfu.sessions.get(session_id) if session_id else None
        if session is not None and not session.connected:
            log.info(
                "media worker %s: request %s was given up; ending %s", self.id, request, session.id
            )
            await self.sfu.close(session.id)
            await self._release_if_empty(session.room)
            self.announce_soon()

    @staticmethod
    def _remember(store: collections.OrderedDict, key: str, value) -> None:
        if not key:
            return
        store[key] = value
        while len(store) > _REMEMBERED:
            store.popitem(last=False)


def _stopping(worker: MediaWorker) -> bool:
    """Whether a loop of ``worker`` should end. Besides the flag: redis-py
    runs reads under ``asyncio.timeout``, and on Python 3.11 a cancel that
    meets an expiring timeout comes out as ``TimeoutError``, the cancel lost
    (the task stays "cancelling"); a loop catching errors must look."""
    task = asyncio.current_task()
    return worker.draining or (task is not None and task.cancelling() > 0)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m media.worker`` (no Django needed)."""
    parser = argparse.ArgumentParser(
        prog="python -m media.worker",
        description="A media worker: forwards the WebRTC media of the rooms placed on it.",
    )
    parser.add_argument("--id", help="this worker's id ([a-z0-9-], at most 40; random if not set)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hub.settings")
    import django

    django.setup()
    from media.registry import WORKER_ID_RE
    from media.sfu import hooks

    if args.id is not None and not WORKER_ID_RE.match(args.id):
        parser.error("--id: use 1 to 40 of a-z, 0-9 and '-', starting with a letter or digit")
    if not settings.REDIS_URL:
        parser.error("a media worker needs REDIS_URL: workers and web processes meet in Redis")
    conf = settings.MEDIA
    if conf["WORKER_TTL"] < 2 * conf["HEARTBEAT_SECONDS"]:
        parser.error("MEDIA_WORKER_TTL must be at least twice MEDIA_HEARTBEAT_SECONDS")
    hooks.check()
    asyncio.run(_serve(args.id))


async def _serve(worker_id: str | None) -> None:
    worker = MediaWorker(worker_id)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    try:
        await worker.run()
    except RuntimeError as exc:
        log.error("media worker: %s", exc)
        raise SystemExit(1) from None
    finally:
        from hub.bus import get_bus

        with contextlib.suppress(Exception):
            await get_bus().close()  # the one media.reconnect events went out on


if __name__ == "__main__":
    main()
