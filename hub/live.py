"""The hub's real-time session logic, shared by every transport.

:class:`LiveHub` keeps, per process, which connections listen to which topic
and fans each frame out to them at once (one bus listener per topic). A
:class:`RealtimeSession` is one client connection speaking the envelope:
rate limit, validation, ping, subscribe/unsubscribe, resume. The transports
are thin: the Channels consumer (hub.consumers) and the lean broadcast server
(hub.broadcast_server) only move text in and out.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Hashable
from dataclasses import dataclass, field
from typing import Any

from django.core import signing
from django.utils import translation
from django.utils.translation import gettext_lazy as _

from hub import metrics
from hub.bus import TopicBus, seq_of, time_of
from hub.clock import Clock, system_clock
from hub.envelope import (
    HUB_PROTOCOL,
    CloseCode,
    EnvelopeError,
    ErrorCode,
    Message,
    Ping,
    Pong,
    Protocol,
    Resume,
    Resumed,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    encode,
)
from hub.ratelimit import TokenBucket
from hub.topics import NO_GRANT, Grant, is_public, pattern_allows, read_grant

log = logging.getLogger(__name__)

Send = Callable[[str], Awaitable[None]]
Fanout = Callable[[Collection[Any], str], None]


class TooSlow(Exception):
    """A client could not keep up while catching up on a topic (close 4013)."""


class LiveHub:
    """Topic membership of this process's connections, with gap-free replay."""

    def __init__(
        self,
        bus: TopicBus,
        fanout: Fanout,
        *,
        endpoint: str = "live",
        max_pending: int = 2000,
        catch_up_seconds: float = 2.0,
    ):
        self.bus = bus
        self.fanout = fanout
        # Live frames one catching-up client may have waiting before TooSlow.
        self.max_pending = max_pending
        self.catch_up_seconds = catch_up_seconds
        self._members: dict[str, set[Hashable]] = {}
        self._pending: dict[str, dict[Hashable, list[str]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._sent = metrics.MESSAGES_OUT.labels(endpoint)

    def _on_frame(self, topic: str, seq: int, frame: str) -> None:
        members = self._members.get(topic)
        if members:
            self.fanout(members, frame)
            self._sent.inc(len(members))
            metrics.BROADCAST_LATENCY.observe(max(0.0, system_clock.time() - time_of(frame)))
        pending = self._pending.get(topic)
        if pending:
            for queue in pending.values():
                queue.append(frame)

    async def _ensure_listening(self, topic: str) -> None:
        if topic in self._members:
            return
        lock = self._locks.setdefault(topic, asyncio.Lock())
        async with lock:
            if topic not in self._members:
                await self.bus.listen(topic, self._on_frame)
                self._members[topic] = set()
                self._pending[topic] = {}

    async def join(self, handle: Hashable, topic: str, since: int | None, send: Send):
        """Add ``handle`` to ``topic``; first send what it missed after ``since``.

        Returns ``(seq, replayed, complete)``: the topic's seq when live delivery
        began, how many events were sent before it, and whether the buffer still
        held all of them. Live frames that arrive meanwhile are queued and sent
        after the replay, without those the client already has, so the client
        sees every seq once, in order. Raises :class:`TooSlow` when the client
        reads slower than the topic publishes while it catches up.
        """
        await self._ensure_listening(topic)
        baseline = self.bus.last_seq(topic)
        if since is None or since == baseline:
            self._members[topic].add(handle)
            return baseline, 0, True
        queue: list[str] = []
        self._pending[topic][handle] = queue
        replayed = 0
        try:
            if since > baseline:
                complete = await self._catch_up(topic, since)
                baseline = max(baseline, since)
            else:
                history = await self.bus.history(topic, since, baseline)
                complete = history.complete
                for frame in history.frames:
                    await send(frame)
                replayed = len(history.frames)
            while queue:
                if len(queue) > self.max_pending:
                    raise TooSlow(topic)
                batch = queue[:]
                queue.clear()
                for frame in batch:
                    if seq_of(frame) > since:
                        await send(frame)
                        replayed += 1
        except BaseException:
            self._pending[topic].pop(handle, None)
            await self._forget_if_unused(topic)
            raise
        # No await between the last check of the queue and joining the members.
        del self._pending[topic][handle]
        self._members[topic].add(handle)
        return baseline, replayed, complete

    async def _catch_up(self, topic: str, since: int) -> bool:
        """The client holds a seq this process has not heard yet. Usually another
        process heard it first: wait (briefly) for this one. If Redis has not
        got that far either, the client's numbers are not this topic's: a gap."""
        if since > await self.bus.current_seq(topic):
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.catch_up_seconds
        # A rare path (a client switching processes): polling keeps the bus simple.
        while self.bus.last_seq(topic) < since and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return self.bus.last_seq(topic) >= since

    async def leave(self, handle: Hashable, topic: str) -> None:
        members = self._members.get(topic)
        if members is None:
            return
        members.discard(handle)
        self._pending[topic].pop(handle, None)
        await self._forget_if_unused(topic)

    async def _forget_if_unused(self, topic: str) -> None:
        members = self._members.get(topic)
        if members is None or members or self._pending[topic]:
            return
        del self._members[topic]
        del self._pending[topic]
        self._locks.pop(topic, None)
        await self.bus.unlisten(topic, self._on_frame)

    def member_count(self, topic: str) -> int:
        return len(self._members.get(topic, ()))


_RESUME_SALT = "hub.live.resume"
REPLAYED_EVENTS_PER_TOKEN = 100


def make_resume_token(session_id: str, principal: str) -> str:
    # No timestamp: how long a session can be resumed is the TTL of its record
    # in the bus, which heartbeats renew while the connection is open.
    return signing.Signer(salt=_RESUME_SALT).sign(f"{session_id}|{principal}")


def read_resume_token(token: str, principal: str) -> str | None:
    """The session id in a genuine token issued to the same principal."""
    try:
        value = signing.Signer(salt=_RESUME_SALT).unsign(token)
    except signing.BadSignature:
        return None
    session_id, _, owner = value.partition("|")
    return session_id if owner == principal else None


@dataclass
class SessionLimits:
    max_frame_bytes: int
    rate_per_second: float
    rate_burst: int
    rate_strikes_before_close: int
    heartbeat_interval: float
    resume_ttl: int
    max_subscriptions: int

    @classmethod
    def from_settings(cls) -> SessionLimits:
        from django.conf import settings

        r = settings.REALTIME
        return cls(
            max_frame_bytes=r["MAX_FRAME_BYTES"],
            rate_per_second=r["RATE_PER_SECOND"],
            rate_burst=r["RATE_BURST"],
            rate_strikes_before_close=r["RATE_STRIKES_BEFORE_CLOSE"],
            heartbeat_interval=r["HEARTBEAT_INTERVAL"],
            resume_ttl=r["RESUME_TTL"],
            max_subscriptions=r["MAX_SUBSCRIPTIONS"],
        )


Handler = Callable[[Message], Awaitable[Message | None]]


@dataclass
class RealtimeSession:
    """One client on the envelope. ``receive`` returns a close code when the
    connection must end, else None; replies go out through ``send``."""

    hub: LiveHub
    handle: Hashable
    send: Send
    limits: SessionLimits
    principal: str = "anonymous"
    # Language of the human text in errors (codes are for programs).
    language: str = "pl"
    endpoint: str = "live"
    protocol: Protocol = HUB_PROTOCOL
    handlers: dict[type[Message], Handler] = field(default_factory=dict)
    # Extra topic patterns this principal may join without a grant.
    allowed_topics: list[str] = field(default_factory=list)
    clock: Clock = system_clock

    def __post_init__(self) -> None:
        self.session_id = secrets.token_urlsafe(16)
        self.connection_id = secrets.token_urlsafe(8)
        # Subscribed topic -> Unix time its grant expires (0: public or allowed).
        self.topics: dict[str, int] = {}
        self.bucket = TokenBucket(
            self.limits.rate_per_second, self.limits.rate_burst, clock=self.clock
        )
        self.strikes = 0
        self._received = metrics.MESSAGES_IN.labels(self.endpoint)

    @property
    def resume_token(self) -> str:
        return make_resume_token(self.session_id, self.principal)

    def welcome(self) -> str:
        return encode(
            Welcome(
                session=self.session_id,
                resume_token=self.resume_token,
                heartbeat=self.limits.heartbeat_interval,
                max_frame_bytes=self.limits.max_frame_bytes,
            )
        )

    async def receive(self, frame: str | bytes) -> int | None:
        """One incoming frame, text or binary. Binary frames are refused, but
        count against the size and rate limits like any other."""
        self._received.inc()
        if _frame_bytes(frame, self.limits.max_frame_bytes) > self.limits.max_frame_bytes:
            metrics.REFUSED.labels("frame_too_large").inc()
            return CloseCode.MESSAGE_TOO_BIG
        if not self.bucket.take():
            self.strikes += 1
            if self.strikes > self.limits.rate_strikes_before_close:
                metrics.REFUSED.labels("rate_limited").inc()
                return CloseCode.RATE_LIMITED
            request_id = _cheap_id(frame, self.protocol) if isinstance(frame, str) else None
            await self._send_error(
                EnvelopeError(
                    ErrorCode.RATE_LIMITED,
                    _("Too many messages: slow down and retry later."),
                    id=request_id,
                )
            )
            return None
        # Strikes count refusals in a row: a client that slows down is forgiven.
        self.strikes = 0
        if isinstance(frame, bytes):
            await self._send_error(
                EnvelopeError(ErrorCode.BAD_MESSAGE, _("Send JSON in text frames, not binary."))
            )
            return None
        try:
            message = self.protocol.decode(frame)
        except EnvelopeError as error:
            await self._send_error(error)
            return None
        try:
            reply = await self._dispatch(message)
        except EnvelopeError as error:
            error.id = error.id or message.id
            await self._send_error(error)
            return None
        except TooSlow:
            metrics.REFUSED.labels("too_slow").inc()
            return CloseCode.TOO_SLOW
        except Exception:
            log.exception("handler failed", extra={"endpoint": self.endpoint})
            await self._send_error(
                EnvelopeError(ErrorCode.INTERNAL, _("Internal error; try again."), id=message.id)
            )
            return None
        if reply is not None:
            if reply.id is None:
                reply.id = message.id
            await self.send(encode(reply))
        return None

    async def _send_error(self, error: EnvelopeError) -> None:
        metrics.ERRORS.labels(error.code.value).inc()
        with translation.override(self.language):
            frame = encode(error.to_message())
        await self.send(frame)

    async def _dispatch(self, message: Message) -> Message | None:
        if isinstance(message, Ping):
            return Pong(time=self.clock.time())
        if isinstance(message, Subscribe):
            return await self._subscribe(message)
        if isinstance(message, Unsubscribe):
            return await self._unsubscribe(message)
        if isinstance(message, Resume):
            return await self._resume(message)
        handler = self.handlers.get(type(message))
        if handler is None:
            raise EnvelopeError(ErrorCode.UNKNOWN_TYPE, _("This endpoint does not take that type."))
        return await handler(message)

    def _expiry_of(self, topic: str, grant: Grant) -> int | None:
        """0 if the topic needs no grant, the grant's expiry if it covers the
        topic, None if this connection may not subscribe to it."""
        if is_public(topic) or any(pattern_allows(p, topic) for p in self.allowed_topics):
            return 0
        if any(pattern_allows(p, topic) for p in grant.patterns):
            return grant.expires
        return None

    async def _subscribe(self, message: Subscribe) -> Subscribed:
        grant = read_grant(message.grant)
        new: dict[str, int] = {}
        for topic in dict.fromkeys(message.topics):
            expiry = self._expiry_of(topic, grant)
            if topic in self.topics:
                # Subscribing again with a fresh grant renews the subscription.
                if (
                    expiry is not None
                    and self.topics[topic]
                    and (expiry == 0 or expiry > self.topics[topic])
                ):
                    self.topics[topic] = expiry
                continue
            if expiry is None:
                raise EnvelopeError(
                    ErrorCode.FORBIDDEN,
                    _("You may not subscribe to %(topic)r."),
                    id=message.id,
                    params={"topic": topic},
                )
            new[topic] = expiry
        if len(self.topics) + len(new) > self.limits.max_subscriptions:
            raise EnvelopeError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                _("At most %(count)d topics per connection."),
                id=message.id,
                params={"count": self.limits.max_subscriptions},
            )
        seqs, replayed, gaps = await self._join(message.topics, new, message.since or {})
        await self._save()
        return Subscribed(id=message.id, topics=seqs, replayed=replayed, gap=gaps)

    async def _join(self, topics, expiries: dict[str, int], since: dict[str, int]):
        seqs: dict[str, int] = {}
        replayed = 0
        gaps: list[str] = []
        for topic in dict.fromkeys(topics):
            if topic in self.topics:
                seqs[topic] = self.hub.bus.last_seq(topic)
                continue
            seq, count, complete = await self.hub.join(
                self.handle, topic, since.get(topic), self.send
            )
            self.topics[topic] = expiries.get(topic, 0)
            seqs[topic] = seq
            replayed += count
            # A replay costs Redis and the socket far more than one message.
            self.bucket.charge(count / REPLAYED_EVENTS_PER_TOKEN)
            if not complete:
                gaps.append(topic)
        return seqs, replayed, gaps

    async def _unsubscribe(self, message: Unsubscribe) -> Unsubscribed:
        left = []
        for topic in dict.fromkeys(message.topics):
            if topic in self.topics:
                del self.topics[topic]
                await self.hub.leave(self.handle, topic)
                left.append(topic)
        await self._save()
        return Unsubscribed(topics=left)

    async def _resume(self, message: Resume) -> Resumed:
        old_id = read_resume_token(message.token, self.principal)
        saved = await self.hub.bus.load_session(old_id) if old_id else None
        if saved is None:
            raise EnvelopeError(
                ErrorCode.RESUME_EXPIRED,
                _("The session can no longer be resumed: subscribe again and reload."),
                id=message.id,
            )
        # Checked again, not copied: a grant does not outlive its expiry by being
        # resumed again and again, and a topic this connection's user may no
        # longer join (allowed_topics) is not restored.
        now = self.clock.time()
        valid = {
            topic: expiry
            for topic, expiry in saved.items()
            if (expiry > now if expiry else self._expiry_of(topic, NO_GRANT) == 0)
        }
        expired = sorted(set(saved) - set(valid))
        if len(set(self.topics) | set(valid)) > self.limits.max_subscriptions:
            raise EnvelopeError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                _("At most %(count)d topics per connection."),
                id=message.id,
                params={"count": self.limits.max_subscriptions},
            )
        # The session goes on under this connection's new id: the old token
        # (which may have leaked) stops working once it has been used.
        await self.hub.bus.retire_session(
            old_id, owner=self.connection_id, ttl=self.limits.resume_ttl
        )
        seqs, replayed, gaps = await self._join(valid, valid, message.since)
        await self._save()
        return Resumed(
            session=self.session_id,
            resume_token=self.resume_token,
            topics=seqs,
            replayed=replayed,
            gap=gaps,
            expired=expired,
        )

    async def drop_expired_grants(self) -> list[str]:
        """Leave the topics whose grant has expired, and tell the client with an
        ``unsubscribed`` (no id: the server's own decision). Transports call this
        on every heartbeat."""
        now = self.clock.time()
        expired = []
        for topic in [t for t, expiry in self.topics.items() if expiry and expiry <= now]:
            expiry = self.topics.get(topic)
            # Checked again after every await: the client may have unsubscribed
            # or renewed the grant meanwhile.
            if not expiry or expiry > self.clock.time():
                continue
            del self.topics[topic]
            await self.hub.leave(self.handle, topic)
            expired.append(topic)
        if expired:
            await self._save(only_if_owner=True)
            await self.send(encode(Unsubscribed(topics=expired)))
        return expired

    async def _save(self, *, only_if_owner: bool = False) -> None:
        await self.hub.bus.save_session(
            self.session_id,
            self.topics,
            self.limits.resume_ttl,
            owner=self.connection_id,
            only_if_owner=only_if_owner,
        )

    async def close(self) -> None:
        """Leave every topic; keep the session resumable for ``resume_ttl``."""
        for topic in list(self.topics):
            await self.hub.leave(self.handle, topic)
        try:
            # A newer connection may have resumed this session already.
            await self._save(only_if_owner=True)
        except Exception as exc:
            log.warning("could not save session %s for resume: %s", self.session_id, exc)


def _frame_bytes(frame: str | bytes, limit: int) -> int:
    """Size in bytes; encoding is only needed when the text could be over the
    limit (UTF-8 takes at most 4 bytes per character)."""
    if isinstance(frame, bytes):
        return len(frame)
    if len(frame) * 4 <= limit:
        return len(frame)  # even all 4-byte characters would fit
    return len(frame.encode())


def _cheap_id(text: str | bytes, protocol: Protocol) -> str | None:
    try:
        message = protocol.decode(text)
    except EnvelopeError as error:
        return error.id
    else:
        return message.id
