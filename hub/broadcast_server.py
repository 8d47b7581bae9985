"""The lean broadcast server: large-audience, server-to-client topics.

One asyncio process built on the ``websockets`` package, with no Channels
consumer per socket: each topic is one bus subscription per process and each
frame, serialized once by the publisher, goes to every local socket through
``websockets.broadcast``. It speaks the same envelope as ``/ws/live/`` in
daphne (hub.live.RealtimeSession), so clients cannot tell them apart; nginx
sends ``/ws/live/`` here in production (docker/nginx.conf). Run several: they
share the work through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import secrets
import signal
import time
from http import HTTPStatus
from urllib.parse import urlparse

import websockets
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Response
from websockets.protocol import State

from hub import metrics
from hub.auth import address_limit_key, language_of
from hub.bus import TopicBus, get_bus
from hub.envelope import CloseCode, ServerPing, encode
from hub.live import LiveHub, RealtimeSession, SessionLimits

log = logging.getLogger(__name__)

LIVE_PATHS = frozenset({"/ws/live/"})


def _fanout(connections, frame: str) -> None:
    websockets.broadcast(connections, frame)


class BroadcastServer:
    """Owns the listening socket, the connections and the heartbeat task."""

    def __init__(self, *, host: str, port: int, bus: TopicBus | None = None):
        self.host = host
        self.port = port
        self.bus = bus or get_bus()
        self.hub = LiveHub(
            self.bus,
            _fanout,
            endpoint="live",
            max_pending=settings.REALTIME["RESUME_BUFFER"] * 2,
        )
        self.limits = SessionLimits.from_settings()
        self.connections: set[ServerConnection] = set()
        self._slots: dict[ServerConnection, list[tuple[str, str]]] = {}
        self._sessions: dict[ServerConnection, RealtimeSession] = {}
        self._origin = AllowedHostsOriginValidator(None)
        self._server = None
        self._tasks: list[asyncio.Task] = []
        self._closing: set[asyncio.Task] = set()
        self.started = asyncio.Event()
        self._open = metrics.OPEN_SOCKETS.labels("live")

    # HTTP side: probes, metrics, origin and path checks ----------------------------

    def _process_request(self, connection: ServerConnection, request):
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return _plain(HTTPStatus.OK, b'{"status": "ok"}\n', "application/json")
        if path == "/readyz":
            if getattr(self.bus, "connected", True):
                return _plain(HTTPStatus.OK, b'{"status": "ready"}\n', "application/json")
            body = b'{"status": "unavailable", "problems": ["redis: disconnected"]}\n'
            return _plain(HTTPStatus.SERVICE_UNAVAILABLE, body, "application/json")
        if path == "/metrics":
            return _plain(HTTPStatus.OK, generate_latest(), CONTENT_TYPE_LATEST)
        if path not in LIVE_PATHS:
            return _plain(HTTPStatus.NOT_FOUND, b"not found\n")
        origin = request.headers.get("Origin")
        if not self._origin.valid_origin(urlparse(origin) if origin else None):
            metrics.REFUSED.labels("origin").inc()
            return _plain(HTTPStatus.FORBIDDEN, b"origin not allowed\n")
        return None

    def client_ip(self, connection: ServerConnection) -> str:
        if settings.WS_TRUST_X_FORWARDED_FOR:
            forwarded = connection.request.headers.get("X-Forwarded-For")
            if forwarded:
                return forwarded.rsplit(",", 1)[-1].strip()
        address = connection.remote_address
        return address[0] if address else "unknown"

    # One connection ---------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        member = secrets.token_urlsafe(12)
        ip_key = address_limit_key(self.client_ip(ws))
        claims = [(ip_key, settings.REALTIME["MAX_CONNECTIONS_PER_IP"])]
        if await self.bus.acquire_slots(claims, member, self.limits.heartbeat_interval * 3):
            metrics.REFUSED.labels("too_many_connections").inc()
            await ws.close(CloseCode.TOO_MANY_CONNECTIONS, "too many connections")
            return
        self._slots[ws] = [(key, member) for key, _ in claims]
        session = RealtimeSession(
            hub=self.hub,
            handle=ws,
            send=ws.send,
            limits=self.limits,
            endpoint="live",
            language=language_of(list(ws.request.headers.raw_items())),
        )
        self.connections.add(ws)
        self._sessions[ws] = session
        self._open.inc()
        try:
            await ws.send(session.welcome())
            async for frame in ws:
                close_code = await session.receive(frame)
                if close_code is not None:
                    await ws.close(close_code)
                    break
        except websockets.ConnectionClosed:
            pass
        finally:
            self.connections.discard(ws)
            self._sessions.pop(ws, None)
            self._open.dec()
            await session.close()
            slots = self._slots.pop(ws, [])
            if slots:
                with contextlib.suppress(Exception):
                    await self.bus.release_slots(slots)

    # Background: heartbeat, slow readers, slot refresh -------------------------------

    async def _heartbeat_forever(self) -> None:
        interval = self.limits.heartbeat_interval
        # Processes started together should not all refresh at the same moment.
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            await asyncio.sleep(interval)
            frame = encode(ServerPing(time=time.time()))
            websockets.broadcast(self.connections, frame)
            try:
                # Bounded: pings must keep their rhythm whatever Redis does.
                async with asyncio.timeout(interval):
                    await self._keep_alive(interval)
            except Exception as exc:  # Redis down or slow: the next beat tries again
                log.warning("heartbeat upkeep failed: %r", exc)

    async def _keep_alive(self, interval: float) -> None:
        """Refresh connection slots and resume sessions; drop expired grants."""
        pairs = [pair for slots in self._slots.values() for pair in slots]
        if pairs:
            await self.bus.refresh_slots(pairs, interval * 3)
        sessions = list(self._sessions.values())
        subscribed = [s.session_id for s in sessions if s.topics]
        if subscribed:
            await self.bus.touch_sessions(subscribed, self.limits.resume_ttl)
        expiring = [s for ws, s in self._sessions.items() if any(s.topics.values())]
        if expiring:
            # Concurrently: one slow reader must not hold up the others.
            await asyncio.gather(
                *(s.drop_expired_grants() for s in expiring), return_exceptions=True
            )

    async def _drop_slow_readers_forever(self) -> None:
        limit = settings.REALTIME["MAX_SEND_BUFFER_BYTES"]
        while True:
            await asyncio.sleep(1.0)
            for ws in list(self.connections):
                transport = ws.transport
                if (
                    ws.state is State.OPEN
                    and transport is not None
                    and transport.get_write_buffer_size() > limit
                ):
                    # websockets.broadcast() has no back-pressure: a reader that
                    # falls this far behind is closed (the close times out after
                    # close_timeout) and comes back with resume.
                    metrics.REFUSED.labels("too_slow").inc()
                    task = asyncio.get_running_loop().create_task(
                        ws.close(CloseCode.TOO_SLOW, "too slow: reconnect and resume")
                    )
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)

    # Life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.limits.max_frame_bytes,
            compression=None,  # per-socket deflate would cost CPU per socket per frame
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
            max_queue=32,
            server_header=None,
            # asyncio's default backlog of 100 overflowed when thousands of
            # clients came back at once (resets in the handshake; bench/README.md).
            backlog=settings.REALTIME["LISTEN_BACKLOG"],
        )
        sockets = self._server.sockets
        if sockets and self.port == 0:
            self.port = sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_forever(), name="broadcast-heartbeat"),
            loop.create_task(self._drop_slow_readers_forever(), name="broadcast-slow"),
        ]
        # Everything allocated so far lives as long as the process: keep it out
        # of the collector's scans (full collections stalled delivery for
        # 56–580 ms with 10,000 sockets; bench/README.md).
        gc.collect()
        gc.freeze()
        self.started.set()
        log.info("broadcast server listening on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        """Close every socket with 1012 (restart: reconnect and resume)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            self._server.close(close_connections=False)
            await asyncio.gather(
                *(
                    ws.close(CloseCode.SERVICE_RESTART, "server restart")
                    for ws in list(self.connections)
                ),
                return_exceptions=True,
            )
            await self._server.wait_closed()
        await self.bus.close()

    async def serve_forever(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("broadcast server stopping")
        await self.stop()


def _plain(status: HTTPStatus, body: bytes, content_type: str = "text/plain") -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)
