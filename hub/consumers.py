"""The Channels side of the envelope: a base consumer for interactive sockets.

Subclasses declare the extra message kinds they accept and a handler for
each; the base does the rest (validation, errors with ids, rate limits,
per-user/per-IP connection limits, heartbeats, topics with resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Collection

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from hub import metrics
from hub.auth import address_limit_key, client_ip, language_of, principal_of
from hub.bus import get_bus
from hub.envelope import (
    HUB_PROTOCOL,
    CloseCode,
    Message,
    Protocol,
    ServerPing,
    encode,
)
from hub.live import Handler, LiveHub, RealtimeSession, SessionLimits
from hub.roles import roles_of

log = logging.getLogger(__name__)

_hubs: dict[int, LiveHub] = {}
_last_upkeep_warning = 0.0


def _warn_upkeep_failed(exc: Exception) -> None:
    """Once a minute per process, not once per socket per beat."""
    global _last_upkeep_warning
    now = time.monotonic()
    if now - _last_upkeep_warning >= 60:
        _last_upkeep_warning = now
        log.warning("heartbeat upkeep failed (Redis down?): %r", exc)


def _fanout_to_consumers(consumers: Collection[EnvelopeConsumer], frame: str) -> None:
    for consumer in consumers:
        consumer.push(frame)


def consumer_hub() -> LiveHub:
    """The LiveHub of this process's Channels consumers (one per bus)."""
    bus = get_bus()
    hub = _hubs.get(id(bus))
    if hub is None or hub.bus is not bus:
        hub = _hubs[id(bus)] = LiveHub(
            bus,
            _fanout_to_consumers,
            endpoint="consumer",
            max_pending=settings.REALTIME["RESUME_BUFFER"] * 2,
        )
    return hub


class EnvelopeConsumer(AsyncWebsocketConsumer):
    """Base of every interactive WebSocket of the hub."""

    endpoint = "hub"
    protocol: Protocol = HUB_PROTOCOL
    require_login = False
    # Frames waiting for this consumer's writer task before the client is
    # dropped with 4013 (it resumes from the topic buffers when it returns).
    # Daphne itself buffers what the writer hands it without limit: a client
    # that stops reading is found by daphne's WebSocket ping timeout (20 s +
    # 30 s), not by this limit, which guards the fan-out against a stuck writer.
    max_queued_frames = 1000

    def handlers(self) -> dict[type[Message], Handler]:
        """Map of extra message kinds to coroutine methods; override."""
        return {}

    def allowed_topics(self) -> list[str]:
        """Topic patterns this connection may join without a grant; override."""
        return []

    async def dispatch(self, message):
        # Channels runs close_old_connections() in the database thread before
        # every message (AsyncConsumer.dispatch); that makes each relayed
        # frame wait behind the process's database work. The consumers here
        # reach the database only through database_sync_to_async, which does
        # the same around each call, so the hop per message is skipped.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    def session_limits(self) -> SessionLimits:
        """The limits of this endpoint's connections; override to change one."""
        return SessionLimits.from_settings()

    async def connect(self):
        limits = self.session_limits()
        self.limits = limits
        self.connection_id = secrets.token_urlsafe(12)
        self._slots: list[tuple[str, str]] = []
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._too_slow = False
        # Set while the outbox has room for replies and replays (see _enqueue).
        self._room = asyncio.Event()
        self._room.set()
        self.session = None
        principal = principal_of(self.scope)
        await self.accept()
        metrics.OPEN_SOCKETS.labels(self.endpoint).inc()
        self._counted = True
        if self.require_login and principal == "anonymous":
            metrics.REFUSED.labels("unauthenticated").inc()
            await self.close(code=int(CloseCode.UNAUTHENTICATED))
            return
        if not await self._acquire_slots(principal, limits):
            metrics.REFUSED.labels("too_many_connections").inc()
            await self.close(code=int(CloseCode.TOO_MANY_CONNECTIONS))
            return
        self.session = RealtimeSession(
            hub=consumer_hub(),
            handle=self,
            send=self._enqueue,
            limits=limits,
            principal=principal,
            language=language_of(self.scope.get("headers", [])),
            endpoint=self.endpoint,
            protocol=self.protocol,
            handlers=self.handlers(),
            allowed_topics=self.allowed_topics(),
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_forever()),
            loop.create_task(self._heartbeat_forever()),
        ]
        await self._enqueue(self.session.welcome())

    async def _acquire_slots(self, principal: str, limits: SessionLimits) -> bool:

        ip_key = address_limit_key(client_ip(self.scope))
        claims = [(ip_key, settings.REALTIME["MAX_CONNECTIONS_PER_IP"])]
        if principal != "anonymous":
            claims.append((principal, settings.REALTIME["MAX_CONNECTIONS_PER_USER"]))
        ttl = limits.heartbeat_interval * 3
        full = await get_bus().acquire_slots(claims, self.connection_id, ttl)
        if full:
            return False
        self._slots = [(key, self.connection_id) for key, _ in claims]
        return True

    def push(self, frame: str) -> None:
        """Queue a frame for this client (called by the LiveHub fan-out)."""
        if self._too_slow:
            return
        if self._outbox.qsize() >= self.max_queued_frames:
            self._too_slow = True
            self._room.set()
            metrics.REFUSED.labels("too_slow").inc()
            self._outbox.put_nowait(None)
            return
        self._outbox.put_nowait(frame)

    async def _enqueue(self, text: str) -> None:
        """Queue a reply, a replayed event or a heartbeat.

        These answer the client's own requests, so when the outbox is half
        full this waits for the writer instead of dropping the client as too
        slow: a replay may be longer than the outbox (RESUME_BUFFER events plus
        the live ones that arrived meanwhile). The other half is left for the
        live fan-out, which cannot wait.
        """
        high_water = max(1, self.max_queued_frames // 2)
        while self._outbox.qsize() >= high_water and not (self._too_slow or self._closed):
            self._room.clear()
            await self._room.wait()
        self.push(text)

    def close_after_sending(self, code: int) -> None:
        """Close with ``code`` once the frames queued before it are sent."""
        self._outbox.put_nowait(CloseAfter(int(code)))

    async def send_message(self, message: Message) -> None:
        """Send one envelope message to this client, in order with its events."""
        await self._enqueue(encode(message))

    async def _write_forever(self) -> None:
        sent = metrics.MESSAGES_OUT.labels(self.endpoint)
        high_water = max(1, self.max_queued_frames // 2)
        while True:
            frame = await self._outbox.get()
            if self._outbox.qsize() < high_water:
                self._room.set()
            if frame is None:
                await self.close(code=int(CloseCode.TOO_SLOW))
                return
            if isinstance(frame, CloseAfter):
                await self.close(code=frame.code)
                return
            await self.send(text_data=frame)
            sent.inc()

    async def _heartbeat_forever(self) -> None:
        interval = self.limits.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            await self._enqueue(encode(ServerPing(time=self.session.clock.time())))
            try:
                # Bounded: pings must keep their rhythm whatever Redis does.
                async with asyncio.timeout(interval):
                    bus = get_bus()
                    if self._slots:
                        await bus.refresh_slots(self._slots, interval * 3)
                    if self.session.topics:
                        await bus.touch_sessions([self.session.session_id], self.limits.resume_ttl)
                    await self.session.drop_expired_grants()
            except Exception as exc:  # Redis down or slow: the next beat tries again
                _warn_upkeep_failed(exc)

    async def receive(self, text_data=None, bytes_data=None):
        # Frames that arrive after we closed (the client has not seen the close
        # frame yet) are not processed: a flooder would keep us busy otherwise.
        if self.session is None or self._closed:
            return
        frame = text_data if text_data is not None else (bytes_data or b"")
        try:
            close_code = await self.session.receive(frame)
        except Exception:
            # The session answers every expected fault itself; anything else is a
            # bug. Close cleanly (disconnect() still frees slots and topics)
            # instead of letting it kill the consumer without cleanup.
            log.exception("envelope session failed", extra={"endpoint": self.endpoint})
            close_code = CloseCode.INTERNAL_ERROR
        if close_code is not None:
            await self.close(code=int(close_code))

    async def close(self, code=None, reason=None):
        self._closed = True
        room = getattr(self, "_room", None)  # a subclass may close before connect() ran
        if room is not None:
            room.set()
        await super().close(code=code, reason=reason)

    async def disconnect(self, code):
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # gather, not suppress(BaseException) around each await: that also
            # swallowed a cancellation of this consumer itself.
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        if self._slots:
            with contextlib.suppress(Exception):
                await get_bus().release_slots(self._slots)
        if getattr(self, "_counted", False):
            metrics.OPEN_SOCKETS.labels(self.endpoint).dec()
            self._counted = False


class CloseAfter:
    """In a consumer's outbox: close with ``code`` here."""

    __slots__ = ("code",)

    def __init__(self, code: int):
        self.code = code


class Whoami(Message, tag="whoami"):
    """Ask who this connection is (user, roles, or guest)."""


class Identity(Message, tag="identity"):
    user: str | None
    roles: list[str]
    guest: str | None


class HubConsumer(EnvelopeConsumer):
    """``/ws/hub/``: the general socket: ping, topics with resume, whoami."""

    endpoint = "hub"
    protocol = HUB_PROTOCOL.extend([Whoami])

    def handlers(self):
        return {Whoami: self.whoami}

    async def whoami(self, message: Whoami) -> Identity:
        from asgiref.sync import sync_to_async

        user = self.scope.get("user")
        guest = self.scope.get("guest")
        authenticated = user is not None and user.is_authenticated
        roles = sorted(await sync_to_async(roles_of)(user)) if authenticated else []
        return Identity(
            user=user.get_username() if authenticated else None,
            roles=[str(r) for r in roles],
            guest=guest.name if guest else None,
        )


class LiveConsumer(EnvelopeConsumer):
    """``/ws/live/`` inside daphne: the broadcast path of the embedded default.

    In production nginx sends this path to the lean broadcast processes
    (hub.broadcast_server), which speak the same protocol.
    """

    endpoint = "live"
