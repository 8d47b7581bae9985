"""The topic bus: sequenced, buffered, fanned out once per process.

Every server-to-client event of the hub goes to a *topic*. Publishing gives
the event the topic's next sequence number, keeps it in a bounded buffer (for
resume) and announces it, serialized once, to every process. Inside a process
one subscription per topic feeds every local listener, in order, without
gaps: a listener is called with ``(topic, seq, frame)`` where ``frame`` is the
finished WebSocket text. That is the broadcast path of issue #2: a large
audience costs one Redis message per process, not one channel-layer dispatch
per socket.

Two implementations share this interface: :class:`RedisBus` (any number of
processes) and :class:`MemoryBus` (the embedded default: one process).
Connection slots (per-user/per-IP limits) and resume sessions live here too,
since they need the same store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from hub.envelope import TOPIC_RE

log = logging.getLogger(__name__)

Listener = Callable[[str, int, str], None]

_json = msgspec.json.Encoder()


def event_body(type: str, data: Any, *, now: float | None = None) -> str:
    """The frame of an event without its opening ``{"topic":…,"seq":…,``.

    ``time`` is the publish time (Unix seconds), used for the broadcast
    latency histogram and available to clients.
    """
    sent = round(time.time() if now is None else now, 4)
    return _json.encode({"time": sent, "type": type, "data": data}).decode()[1:]


def make_frame(topic: str, seq: int, body: str) -> str:
    return f'{{"topic":"{topic}","seq":{seq},{body}'


def seq_of(frame: str) -> int:
    """Read ``seq`` back from a frame made by :func:`make_frame`."""
    start = frame.index('"seq":') + 6
    return int(frame[start : frame.index(",", start)])


def time_of(frame: str) -> float:
    """Read the publish ``time`` back from a frame."""
    start = frame.index('"time":') + 7
    return float(frame[start : frame.index(",", start)])


def check_topic(topic: str) -> str:
    if not isinstance(topic, str) or not TOPIC_RE.match(topic):
        raise ValueError(f"invalid topic name {topic!r}")
    return topic


def _complete(frames: list[str], after: int, upto: int, origin: int) -> bool:
    """Whether ``frames`` are every event with ``after < seq <= upto``.

    ``origin`` is the value the topic's counter started from (its first event
    is ``origin + 1``). A client that joined before the first event holds 0:
    for it, "everything" starts at the origin. A client holding a number from
    before the origin saw an earlier life of the counter (lost with Redis or
    expired): what it missed then is gone.
    """
    if 0 < after < origin:
        return False
    first = max(after, origin) + 1 if origin else after + 1
    return len(frames) == upto - first + 1


@dataclass
class History:
    frames: list[str]
    complete: bool  # False when the buffer no longer held everything asked for


@dataclass
class _TopicState:
    listeners: list[Listener] = field(default_factory=list)
    last_seq: int | None = None  # last seq handed to listeners; None until subscribed
    ready: asyncio.Future | None = None


class TopicBus:
    """Interface shared by the implementations (documented on RedisBus)."""

    def __init__(self, *, buffer_size: int, seq_ttl: int):
        self.buffer_size = buffer_size
        self.seq_ttl = seq_ttl
        self._topics: dict[str, _TopicState] = {}

    # Listening ---------------------------------------------------------------

    async def listen(self, topic: str, listener: Listener) -> int:
        """Call ``listener`` for every event of ``topic`` after the returned seq."""
        check_topic(topic)
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _TopicState()
            await self._subscribe(topic, state)
        elif state.ready is not None and not state.ready.done():
            await asyncio.shield(state.ready)
        state.listeners.append(listener)
        return state.last_seq or 0

    async def unlisten(self, topic: str, listener: Listener) -> None:
        state = self._topics.get(topic)
        if state is None:
            return
        with contextlib.suppress(ValueError):
            state.listeners.remove(listener)
        if not state.listeners and (state.ready is None or state.ready.done()):
            del self._topics[topic]
            await self._unsubscribe(topic)

    def listened_topics(self) -> int:
        return len(self._topics)

    def last_seq(self, topic: str) -> int:
        """The last seq handed to this process's listeners of ``topic``."""
        state = self._topics.get(topic)
        return (state.last_seq or 0) if state is not None else 0

    def _deliver(self, topic: str, seq: int, frame: str) -> None:
        state = self._topics.get(topic)
        if state is None or state.last_seq is None or seq <= state.last_seq:
            return
        state.last_seq = seq
        for listener in tuple(state.listeners):
            try:
                listener(topic, seq, frame)
            except Exception:
                log.exception("topic listener failed", extra={"topic": topic})

    # To implement --------------------------------------------------------------

    async def _subscribe(self, topic: str, state: _TopicState) -> None:
        raise NotImplementedError

    async def _unsubscribe(self, topic: str) -> None:
        raise NotImplementedError


class RedisBus(TopicBus):
    """Topic bus over Redis: ``INCR`` + sorted-set buffer + ``PUBLISH`` in one Lua call.

    Keys (all under ``prefix``): ``topic:<t>:seq`` (counter), ``topic:<t>:log``
    (sorted set of frames scored by seq, trimmed to ``buffer_size``), channel
    ``topic:<t>``; ``session:<id>`` (resume); ``slots:<key>`` (connections).
    """

    # The frame is assembled inside Redis so that the seq is in it and the
    # payload is serialized once for every process and socket.
    # A topic's first seq is the Redis clock in microseconds, so that numbers
    # keep growing when the counter is lost (expiry after a quiet day, a Redis
    # restart without persistence): a process or client holding an old seq
    # then sees a jump (a gap) instead of "old" numbers it would drop as
    # duplicates. Exact in a JavaScript Number until the year 2255.
    _PUBLISH = """
    if redis.call('EXISTS', KEYS[1]) == 0 then
      local now = redis.call('TIME')
      local origin = now[1] .. string.format('%06d', tonumber(now[2]))
      redis.call('SET', KEYS[1], origin)
      redis.call('SET', KEYS[4], origin)
    end
    redis.call('EXPIRE', KEYS[4], ARGV[4])
    local seq = redis.call('INCR', KEYS[1])
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    -- %.0f: Lua's default number format would write 1.79e+15.
    local digits = string.format('%.0f', seq)
    local frame = '{"topic":"' .. ARGV[1] .. '","seq":' .. digits .. ',' .. ARGV[2]
    redis.call('ZADD', KEYS[2], seq, frame)
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[3]) + 1))
    redis.call('EXPIRE', KEYS[2], ARGV[4])
    redis.call('PUBLISH', KEYS[3], frame)
    return seq
    """

    # Connection slots: a sorted set per key of connection ids scored by expiry,
    # so a process killed without cleanup frees its slots when they expire.
    _ACQUIRE = """
    local now = tonumber(ARGV[1])
    for i, key in ipairs(KEYS) do
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      if redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
        return i
      end
    end
    for i, key in ipairs(KEYS) do
      redis.call('ZADD', key, now + tonumber(ARGV[3]), ARGV[2])
      redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[3])) + 1)
    end
    return 0
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        buffer_size: int,
        seq_ttl: int,
        max_connections: int = 2000,
        socket_timeout: float = 30.0,
    ):
        super().__init__(buffer_size=buffer_size, seq_ttl=seq_ttl)
        import redis
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        # Named, so that CLIENT LIST shows whose connections these are.
        self.client_name = f"{prefix}:bus"
        # A blocking pool waits for a free connection instead of raising "Too
        # many connections": when thousands of sockets drop at once, every one
        # of them must still save its session for resume (bench/README.md).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            decode_responses=True,
            max_connections=max_connections,
            timeout=20,
            socket_timeout=socket_timeout,
            socket_connect_timeout=5.0,
            client_name=self.client_name,
            # The pub/sub reader PINGs when idle, so a half-open connection
            # (a silent network failure) is found instead of waited on forever.
            health_check_interval=15,
        )
        self.redis = aioredis.Redis.from_pool(pool)
        self._sync_redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=5.0,
            client_name=self.client_name,
        )
        self._publish_script = self.redis.register_script(self._PUBLISH)
        self._publish_script_sync = self._sync_redis.register_script(self._PUBLISH)
        self._acquire_script = self.redis.register_script(self._ACQUIRE)
        self._save_session_script = self.redis.register_script(self._SAVE_SESSION)
        self._pubsub = None
        # False while the pub/sub connection is down (readiness reports it).
        self.connected = True
        self._reader: asyncio.Task | None = None
        self._reader_lock = asyncio.Lock()
        self._pubsub_lock = asyncio.Lock()
        self._closing = False

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _topic_keys(self, topic: str) -> list[str]:
        return [
            self._key("topic", topic, "seq"),
            self._key("topic", topic, "log"),
            self._key("topic", topic),
            self._key("topic", topic, "origin"),
        ]

    # Publishing ----------------------------------------------------------------

    async def publish(self, topic: str, type: str, data: Any = None) -> int:
        check_topic(topic)
        args = [topic, event_body(type, data), self.buffer_size, self.seq_ttl]
        return int(await self._publish_script(keys=self._topic_keys(topic), args=args))

    def publish_sync(self, topic: str, type: str, data: Any = None) -> int:
        check_topic(topic)
        args = [topic, event_body(type, data), self.buffer_size, self.seq_ttl]
        return int(self._publish_script_sync(keys=self._topic_keys(topic), args=args))

    async def current_seq(self, topic: str) -> int:
        return int(await self.redis.get(self._key("topic", check_topic(topic), "seq")) or 0)

    async def history(self, topic: str, after: int, upto: int) -> History:
        """Frames with ``after < seq <= upto``, oldest first."""
        if upto <= after:
            return History([], True)
        check_topic(topic)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self._key("topic", topic, "origin"))
            pipe.zrangebyscore(self._key("topic", topic, "log"), f"({after}", upto)
            origin, frames = await pipe.execute()
        return History(frames, _complete(frames, after, upto, int(origin or 0)))

    # Per-process subscription ---------------------------------------------------

    # redis-py's PubSub opens its connection lazily and without a lock: two
    # commands racing on a fresh PubSub open two connections, and the one not
    # read from keeps its channels deaf. Every command on it, and replacing it,
    # go through this lock, and a new PubSub is connected before anyone uses it.

    async def _pubsub_command(self, command: str, *channels: str) -> None:
        async with self._pubsub_lock:
            if self._pubsub is None:  # the reader is reconnecting; it resubscribes all
                raise RedisConnectionError("the topic bus is reconnecting to Redis")
            await getattr(self._pubsub, command)(*channels)

    async def _replace_pubsub(self) -> None:
        async with self._pubsub_lock:
            old, self._pubsub = self._pubsub, None
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.aclose()
            pubsub = self.redis.pubsub()
            try:
                await pubsub.connect()
                channels = [self._key("topic", t) for t in self._topics]
                if channels:
                    await pubsub.subscribe(*channels)
            except BaseException:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            self._pubsub = pubsub

    async def _subscribe(self, topic: str, state: _TopicState) -> None:
        state.ready = asyncio.get_running_loop().create_future()
        await self._ensure_reader()
        try:
            await self._pubsub_command("subscribe", self._key("topic", topic))
            await asyncio.wait_for(asyncio.shield(state.ready), timeout=10)
        except BaseException as exc:
            if self._topics.get(topic) is state:
                del self._topics[topic]
            if not state.ready.done():  # others may be waiting on it (TopicBus.listen)
                state.ready.set_exception(ConnectionError(f"could not subscribe: {exc!r}"))
                state.ready.exception()  # retrieved: no "never retrieved" warning
            with contextlib.suppress(Exception):
                await self._pubsub_command("unsubscribe", self._key("topic", topic))
            raise

    async def _unsubscribe(self, topic: str) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub_command("unsubscribe", self._key("topic", topic))

    async def _ensure_reader(self) -> None:
        async with self._reader_lock:
            if self._reader is None or self._reader.done():
                await self._replace_pubsub()
                # get_message(timeout=1) bounds each wait; the pool's health
                # checks PING an idle connection to find a silent failure.
                self._reader = asyncio.get_running_loop().create_task(
                    self._read_forever(), name="topic-bus-reader"
                )

    async def _read_forever(self) -> None:
        channel_prefix = self._key("topic", "")
        backoff = 0.1
        resubscribe = False
        while not self._closing:
            try:
                if resubscribe:
                    # Until this succeeds no topic is heard: retry it, never skip it.
                    await self._replace_pubsub()
                    resubscribe = False
                    log.warning("topic bus reconnected to Redis (%d topics)", len(self._topics))
                if not self._pubsub.subscribed:
                    await asyncio.sleep(0.05)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
                backoff = 0.1
                if message is None:
                    continue
                # Connected means "a reply came back", not "a command went out".
                self.connected = True
                kind = message["type"]
                topic = message["channel"][len(channel_prefix) :]
                if kind == "message":
                    await self._on_frame(topic, message["data"])
                elif kind == "subscribe":
                    await self._on_subscribed(topic)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:  # Redis went away: reconnect, resubscribe.
                if self.connected:
                    log.warning("topic bus lost Redis (%s); reconnecting", exc)
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                resubscribe = True
            except Exception:  # a bug with one message must not stop the others
                log.exception("topic bus could not handle a message")

    async def _on_subscribed(self, topic: str) -> None:
        state = self._topics.get(topic)
        if state is None:
            return
        current = await self.current_seq(topic)
        if state.last_seq is None:
            state.last_seq = current
        elif current > state.last_seq:  # a resubscription after an outage
            await self._fill_gap(topic, state.last_seq, current)
        if state.ready is not None and not state.ready.done():
            state.ready.set_result(None)

    async def _on_frame(self, topic: str, frame: str) -> None:
        state = self._topics.get(topic)
        if state is None or state.last_seq is None:
            return
        seq = seq_of(frame)
        if seq > state.last_seq + 1:
            await self._fill_gap(topic, state.last_seq, seq - 1)
        self._deliver(topic, seq, frame)

    async def _fill_gap(self, topic: str, after: int, upto: int) -> None:
        history = await self.history(topic, after, upto)
        for frame in history.frames:
            self._deliver(topic, seq_of(frame), frame)

    # Resume sessions -------------------------------------------------------------

    # The session hash holds topic -> grant expiry, and "@owner": the
    # connection that saved it last ("@" cannot start a topic name).
    _SAVE_SESSION = """
    if ARGV[3] == '1' then
      local owner = redis.call('HGET', KEYS[1], '@owner')
      if owner and owner ~= ARGV[2] then
        return 0
      end
    end
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], '@owner', ARGV[2])
    for i = 4, #ARGV, 2 do
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    end
    redis.call('EXPIRE', KEYS[1], ARGV[1])
    return 1
    """

    async def save_session(
        self,
        session_id: str,
        topics: dict[str, int],
        ttl: int,
        *,
        owner: str,
        only_if_owner: bool = False,
    ) -> bool:
        """Keep a connection's topics (topic -> grant expiry, 0 for none) for
        resume. With ``only_if_owner`` nothing is written when another
        connection has resumed the session since (a late close of the old
        socket must not overwrite the new one's topics). True if written."""
        args = [ttl, owner, "1" if only_if_owner else "0"]
        for topic, expiry in topics.items():
            args += [topic, expiry]
        keys = [self._key("session", session_id)]
        return bool(await self._save_session_script(keys=keys, args=args))

    async def retire_session(self, session_id: str, *, owner: str, ttl: int) -> None:
        """A resumed session lives on under a new id: the old id can no longer
        be resumed, and the old connection's late close cannot revive it."""
        key = self._key("session", session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping={"@owner": owner, "@moved": 1})
            pipe.expire(key, ttl)
            await pipe.execute()

    async def load_session(self, session_id: str) -> dict[str, int] | None:
        fields = await self.redis.hgetall(self._key("session", session_id))
        if not fields or "@moved" in fields:
            return None
        return {topic: int(expiry) for topic, expiry in sorted(fields.items()) if topic[0] != "@"}

    # Connection slots ---------------------------------------------------------------

    async def acquire_slots(self, claims: list[tuple[str, int]], member: str, ttl: float) -> int:
        """Take a slot under every key, or none; 0 on success, else the 1-based
        index of the first full key."""
        keys = [self._key("slots", key) for key, _ in claims]
        args = [time.time(), member, ttl, *[limit for _, limit in claims]]
        return int(await self._acquire_script(keys=keys, args=args))

    # A broadcast process refreshes thousands of slots per heartbeat. One ZADD
    # per key with many members, in small pipelines with the event loop free in
    # between: a single 5,000-command pipeline stalled delivery for up to 1 s
    # (bench/README.md).
    _REFRESH_MEMBERS_PER_COMMAND = 500
    _REFRESH_COMMANDS_PER_PIPELINE = 50

    async def refresh_slots(self, pairs: Iterable[tuple[str, str]], ttl: float) -> None:
        expiry = time.time() + ttl
        key_ttl = math.ceil(ttl) + 1
        by_key: dict[str, list[str]] = collections.defaultdict(list)
        for key, member in pairs:
            by_key[key].append(member)
        commands = []
        for key, members in by_key.items():
            slots_key = self._key("slots", key)
            for i in range(0, len(members), self._REFRESH_MEMBERS_PER_COMMAND):
                chunk = members[i : i + self._REFRESH_MEMBERS_PER_COMMAND]
                scores = dict.fromkeys(chunk, expiry)
                commands.append(lambda pipe, k=slots_key, m=scores: pipe.zadd(k, m, xx=True))
            # The key itself must outlive its members, or long-lived sockets
            # stop counting once nobody new connects under it.
            commands.append(lambda pipe, k=slots_key: pipe.expire(k, key_ttl))
        await self._in_small_pipelines(commands)

    async def touch_sessions(self, session_ids: Iterable[str], ttl: int) -> None:
        """Keep the sessions of open connections resumable for ``ttl`` more seconds."""
        keys = [self._key("session", session_id) for session_id in session_ids]
        await self._in_small_pipelines([lambda pipe, k=key: pipe.expire(k, ttl) for key in keys])

    async def _in_small_pipelines(self, commands: list) -> None:
        step = self._REFRESH_COMMANDS_PER_PIPELINE
        for start in range(0, len(commands), step):
            async with self.redis.pipeline(transaction=False) as pipe:
                for add_command in commands[start : start + step]:
                    add_command(pipe)
                await pipe.execute()
            await asyncio.sleep(0)

    async def release_slots(self, pairs: Iterable[tuple[str, str]]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, member in pairs:
                pipe.zrem(self._key("slots", key), member)
            await pipe.execute()

    # Life cycle -----------------------------------------------------------------------

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self.redis.aclose()
        self._sync_redis.close()


class MemoryBus(TopicBus):
    """The embedded default: one process, no Redis. Same contract as RedisBus.

    ``publish_sync`` may be called from Django's sync threads: the sequence
    number is taken under a lock and delivery is scheduled on the event loop
    that listens, in the same order.
    """

    def __init__(self, *, buffer_size: int, seq_ttl: int, clock=time):
        super().__init__(buffer_size=buffer_size, seq_ttl=seq_ttl)
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self._origin: dict[str, int] = {}
        self._log: dict[str, collections.deque] = {}
        self._sessions: dict[str, tuple[dict[str, int] | None, float, str]] = {}
        self._slots: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock = clock
        self._saves = 0
        self.connected = True  # nothing to lose a connection to

    def _append(self, topic: str, type: str, data: Any) -> tuple[int, str]:
        check_topic(topic)
        body = event_body(type, data)
        with self._lock:
            # The first seq is the clock in microseconds, as in RedisBus: after
            # a restart a client's old numbers are below the new ones.
            seq = self._seq.get(topic)
            if seq is None:
                seq = self._origin[topic] = int(self._clock.time() * 1_000_000)
            seq += 1
            self._seq[topic] = seq
            frame = make_frame(topic, seq, body)
            log_ = self._log.setdefault(topic, collections.deque(maxlen=self.buffer_size))
            log_.append((seq, frame))
            loop = self._loop
            if loop is not None and not loop.is_closed():
                # Always through the loop's queue, from the loop's own thread
                # too: delivery then follows seq order whoever published.
                loop.call_soon_threadsafe(self._deliver, topic, seq, frame)
        return seq, frame

    async def publish(self, topic: str, type: str, data: Any = None) -> int:
        self._loop = asyncio.get_running_loop()
        return self._append(topic, type, data)[0]

    def publish_sync(self, topic: str, type: str, data: Any = None) -> int:
        return self._append(topic, type, data)[0]

    async def current_seq(self, topic: str) -> int:
        return self._seq.get(check_topic(topic), 0)

    async def history(self, topic: str, after: int, upto: int) -> History:
        if upto <= after:
            return History([], True)
        with self._lock:
            entries = list(self._log.get(topic, ()))
            origin = self._origin.get(topic, 0)
        frames = [frame for seq, frame in entries if after < seq <= upto]
        return History(frames, _complete(frames, after, upto, origin))

    async def _subscribe(self, topic: str, state: _TopicState) -> None:
        self._loop = asyncio.get_running_loop()
        with self._lock:
            # Frames already scheduled but not yet delivered have seq above this
            # value only if they were taken after it: deliver those, skip older.
            state.last_seq = self._seq.get(topic, 0)

    async def _unsubscribe(self, topic: str) -> None:
        return None

    async def save_session(
        self,
        session_id: str,
        topics: dict[str, int],
        ttl: int,
        *,
        owner: str,
        only_if_owner: bool = False,
    ) -> bool:
        current = self._sessions.get(session_id)
        if only_if_owner and current is not None and current[2] != owner:
            if current[1] >= self._clock.time():
                return False
        self._sessions[session_id] = (dict(sorted(topics.items())), self._clock.time() + ttl, owner)
        self._saves += 1
        if self._saves % 1000 == 0:  # forget sessions nobody resumed
            now = self._clock.time()
            for stale in [k for k, entry in self._sessions.items() if entry[1] < now]:
                del self._sessions[stale]
        return True

    async def touch_sessions(self, session_ids: Iterable[str], ttl: int) -> None:
        expiry = self._clock.time() + ttl
        for session_id in session_ids:
            entry = self._sessions.get(session_id)
            if entry is not None:
                self._sessions[session_id] = (entry[0], expiry, entry[2])

    async def retire_session(self, session_id: str, *, owner: str, ttl: int) -> None:
        self._sessions[session_id] = (None, self._clock.time() + ttl, owner)

    async def load_session(self, session_id: str) -> dict[str, int] | None:
        entry = self._sessions.get(session_id)
        if entry is None or entry[1] < self._clock.time():
            self._sessions.pop(session_id, None)
            return None
        if entry[0] is None:  # retired: resumed under a new id
            return None
        return dict(entry[0])

    async def acquire_slots(self, claims: list[tuple[str, int]], member: str, ttl: float) -> int:
        now = self._clock.time()
        for index, (key, limit) in enumerate(claims, start=1):
            slots = self._slots[key]
            for stale in [m for m, expiry in slots.items() if expiry <= now]:
                del slots[stale]
            if len(slots) >= limit:
                return index
        for key, _ in claims:
            self._slots[key][member] = now + ttl
        return 0

    async def refresh_slots(self, pairs: Iterable[tuple[str, str]], ttl: float) -> None:
        expiry = self._clock.time() + ttl
        for key, member in pairs:
            if member in self._slots.get(key, {}):
                self._slots[key][member] = expiry

    async def release_slots(self, pairs: Iterable[tuple[str, str]]) -> None:
        for key, member in pairs:
            slots = self._slots.get(key)
            if slots is not None:
                slots.pop(member, None)
                if not slots:
                    del self._slots[key]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._topics.clear()


# --- The process's bus --------------------------------------------------------------

_bus: TopicBus | None = None
_bus_loop: asyncio.AbstractEventLoop | None = None


def build_bus() -> TopicBus:
    from django.conf import settings

    realtime = settings.REALTIME
    seq_ttl = max(86400, realtime["RESUME_TTL"] * 10)
    if settings.REDIS_URL:
        return RedisBus(
            settings.REDIS_URL,
            prefix=settings.REDIS_PREFIX,
            buffer_size=realtime["RESUME_BUFFER"],
            seq_ttl=seq_ttl,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        )
    return MemoryBus(buffer_size=realtime["RESUME_BUFFER"], seq_ttl=seq_ttl)


def get_bus() -> TopicBus:
    """The bus of this process. A Redis bus is bound to the event loop that
    first used it; a new loop (tests) gets a new one."""
    global _bus, _bus_loop
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    stale = (
        isinstance(_bus, RedisBus)
        and loop is not None
        and _bus_loop is not None
        and _bus_loop is not loop
    )
    if _bus is None or stale:
        _bus = build_bus()
        _bus_loop = loop
    elif _bus_loop is None:
        _bus_loop = loop
    return _bus


def reset_bus() -> None:
    """Forget the process's bus (tests, after changing settings)."""
    global _bus, _bus_loop
    _bus = None
    _bus_loop = None
