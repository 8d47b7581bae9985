"""hub.consumers through the real ASGI application (origin check, session auth,
guest tokens, routing) with channels' WebsocketCommunicator, against the real
Redis topic bus of the test run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time

import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import hub.bus
from hub.asgi import application
from hub.auth import issue_guest_token
from hub.consumers import EnvelopeConsumer
from hub.envelope import CloseCode, ErrorCode
from hub.live import make_resume_token
from hub.topics import issue_grant

ORIGIN = (b"origin", b"http://127.0.0.1")
ERROR_CODES = {code.value for code in ErrorCode}
TIMEOUT = 3


def topic_name(kind: str = "public") -> str:
    return f"{kind}.t-{secrets.token_hex(6)}"


class Socket:
    """A WebsocketCommunicator with JSON helpers."""

    def __init__(self, communicator: WebsocketCommunicator):
        self.c = communicator
        self.welcome: dict | None = None

    async def send(self, message) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        await self.c.send_input({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self.c.send_input({"type": "websocket.receive", "bytes": data})

    async def output(self, timeout: float = TIMEOUT) -> dict:
        return await self.c.receive_output(timeout)

    async def recv(self, timeout: float = TIMEOUT) -> dict:
        message = await self.output(timeout)
        assert message["type"] == "websocket.send", message
        assert message.get("text") is not None, message
        return json.loads(message["text"])

    async def recv_skip_pings(self, timeout: float = TIMEOUT) -> dict:
        while True:
            frame = await self.recv(timeout)
            if not (frame.get("type") == "ping" and "id" not in frame):
                return frame

    async def request(self, message: dict) -> dict:
        await self.send(message)
        return await self.recv()

    async def expect_close(self, timeout: float = TIMEOUT) -> int:
        message = await self.output(timeout)
        assert message["type"] == "websocket.close", message
        return message.get("code", 1000)

    async def nothing(self, timeout: float = 0.2) -> bool:
        return await self.c.receive_nothing(timeout)

    async def disconnect(self) -> None:
        await self.c.disconnect(timeout=TIMEOUT)


@pytest.fixture(autouse=True)
def _in_memory_channel_layer(settings):
    """The consumers here use the topic bus, not the channel layer. With the Redis
    channel layer, a consumer's exit waits for channels_redis to finish a blocking
    BZPOPMIN (up to 5 s), which would make every teardown slow."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def client_ip() -> str:
    """A client address of this test alone (connection slots are per IP)."""
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


@pytest.fixture
async def connect(_fresh_bus, client_ip):
    """Open a socket; every socket is disconnected and the bus closed at the end."""
    opened: list[Socket] = []

    async def _connect(
        path: str = "/ws/hub/",
        *,
        headers: list | None = None,
        ip: str | None = None,
        app=application,
        welcome: bool = True,
    ) -> Socket:
        communicator = WebsocketCommunicator(
            app, path, headers=[ORIGIN] if headers is None else headers
        )
        # The application task starts lazily, so the scope can still be completed.
        communicator.scope["client"] = (ip or client_ip, 40000 + secrets.randbelow(20000))
        socket = Socket(communicator)
        opened.append(socket)
        accepted, _ = await communicator.connect(timeout=TIMEOUT)
        assert accepted, "the connection was refused"
        if welcome:
            socket.welcome = await socket.recv()
            assert socket.welcome["type"] == "welcome", socket.welcome
        return socket

    yield _connect
    for socket in opened:
        await socket.disconnect()
    if hub.bus._bus is not None:
        await hub.bus._bus.close()


def limits(settings, **overrides) -> None:
    settings.REALTIME = {**settings.REALTIME, **overrides}


def assert_error(frame: dict, code: ErrorCode, id: str | None = None) -> None:
    assert frame["type"] == "error", frame
    assert frame["code"] == code.value, frame
    assert isinstance(frame["message"], str) and frame["message"]
    assert "Traceback" not in json.dumps(frame)
    if id is not None:
        assert frame.get("id") == id, frame


def make_user(username: str, *groups: str):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    user = get_user_model().objects.create_user(username, password=None)
    for name in groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


def session_cookie(user) -> tuple[bytes, bytes]:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


async def logged_in(username: str, *groups: str):
    def _make():
        user = make_user(username, *groups)
        return user, session_cookie(user)

    return await sync_to_async(_make)()


# --- Connecting, ping, whoami ----------------------------------------------------------


async def test_welcome_then_ping_pong(connect, settings):
    ws = await connect()
    welcome = ws.welcome
    assert isinstance(welcome["session"], str) and welcome["session"]
    assert isinstance(welcome["resume_token"], str) and welcome["resume_token"]
    assert welcome["heartbeat"] == settings.REALTIME["HEARTBEAT_INTERVAL"]
    assert welcome["max_frame_bytes"] == settings.REALTIME["MAX_FRAME_BYTES"]

    pong = await ws.request({"type": "ping", "id": "p-1"})
    assert pong["type"] == "pong"
    assert pong["id"] == "p-1"
    assert isinstance(pong["time"], float)

    # A ping without an id is answered too, without one.
    pong = await ws.request({"type": "ping"})
    assert pong["type"] == "pong" and "id" not in pong


async def test_server_heartbeat_carries_unix_time(connect, settings):
    limits(settings, HEARTBEAT_INTERVAL=0.1)
    ws = await connect()
    ping = await ws.recv()
    assert ping["type"] == "ping" and "id" not in ping
    assert abs(ping["time"] - time.time()) < 5


async def test_live_endpoint_speaks_the_same_envelope(connect):
    ws = await connect("/ws/live/")
    assert (await ws.request({"type": "ping", "id": "l"}))["type"] == "pong"
    # whoami belongs to /ws/hub/ only.
    assert_error(await ws.request({"type": "whoami", "id": "w"}), ErrorCode.UNKNOWN_TYPE, "w")


async def test_whoami_anonymous(connect):
    ws = await connect()
    identity = await ws.request({"type": "whoami", "id": "w1"})
    assert identity == {"type": "identity", "id": "w1", "user": None, "roles": [], "guest": None}


@pytest.mark.django_db(transaction=True)
async def test_whoami_logged_in_user_with_roles(connect):
    _, cookie = await logged_in("urzednik", "clerk", "not-a-role")
    ws = await connect(headers=[ORIGIN, cookie])
    identity = await ws.request({"type": "whoami", "id": "w2"})
    assert identity == {
        "type": "identity",
        "id": "w2",
        "user": "urzednik",
        "roles": ["clerk"],
        "guest": None,
    }


async def test_whoami_guest_token(connect):
    token = issue_guest_token("Anna", "meet:ABC")
    ws = await connect(f"/ws/hub/?guest={token}")
    identity = await ws.request({"type": "whoami", "id": "g"})
    assert identity["guest"] == "Anna"
    assert identity["user"] is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature
        lambda t: ("x" if t[0] != "x" else "y") + t[1:],  # payload
        lambda t: "not-a-token",
    ],
    ids=["signature", "payload", "garbage"],
)
async def test_whoami_tampered_guest_token(connect, tamper):
    token = tamper(issue_guest_token("Anna", "meet:ABC"))
    ws = await connect(f"/ws/hub/?guest={token}")
    identity = await ws.request({"type": "whoami", "id": "g"})
    assert identity["guest"] is None


@pytest.mark.parametrize(
    "headers",
    [[(b"origin", b"http://evil.example")], [(b"origin", b"null")], []],
    ids=["evil", "null", "missing"],
)
async def test_disallowed_origin_is_refused(connect, headers):
    communicator = WebsocketCommunicator(application, "/ws/hub/", headers=headers)
    accepted, _ = await communicator.connect(timeout=TIMEOUT)
    assert not accepted
    await communicator.disconnect(timeout=TIMEOUT)


# --- Bad input ------------------------------------------------------------------------------


async def test_invalid_json(connect):
    ws = await connect()
    assert_error(await ws.request("{not json"), ErrorCode.BAD_JSON)


async def test_unknown_type_keeps_the_id(connect):
    ws = await connect()
    assert_error(await ws.request({"type": "nope", "id": "x"}), ErrorCode.UNKNOWN_TYPE, "x")


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscribe", "id": "b1", "topics": "public.x"},
        {"type": "subscribe", "id": "b1", "topics": [1, 2]},
        {"type": "subscribe", "id": "b1", "topics": ["Not A Topic"]},
        {"type": "subscribe", "id": "b1", "topics": []},
        {"type": "subscribe", "id": "b1", "topics": ["public.x"], "since": {"public.x": -1}},
        {"type": "resume", "id": "b1", "token": 5},
        {"type": "ping", "id": "b1", "extra": True},
        {"type": 7, "id": "b1"},
    ],
)
async def test_wrong_field_types_are_bad_message_with_the_id(connect, message):
    ws = await connect()
    assert_error(await ws.request(message), ErrorCode.BAD_MESSAGE, "b1")


@pytest.mark.parametrize("text", ["[1, 2, 3]", '"ping"', "42", "null"])
async def test_json_that_is_not_an_object_is_bad_message(connect, text):
    ws = await connect()
    assert_error(await ws.request(text), ErrorCode.BAD_MESSAGE)


async def test_binary_frame_is_bad_message(connect):
    ws = await connect()
    await ws.send_bytes(b'{"type": "ping", "id": "bin"}')
    assert_error(await ws.recv(), ErrorCode.BAD_MESSAGE)
    # The connection stays usable.
    assert (await ws.request({"type": "ping", "id": "after"}))["id"] == "after"


async def test_oversize_frame_closes_with_1009(connect, settings):
    ws = await connect()
    size = settings.REALTIME["MAX_FRAME_BYTES"]
    await ws.send(json.dumps({"type": "ping", "id": "big", "pad": "x" * size}))
    assert await ws.expect_close() == CloseCode.MESSAGE_TOO_BIG
    # Nothing is processed after the close.
    await ws.send({"type": "ping", "id": "late"})
    assert await ws.nothing()


async def test_frame_exactly_at_the_limit_is_processed(connect, settings):
    limits(settings, MAX_FRAME_BYTES=1024)
    ws = await connect()
    head = '{"type":"ping","id":"edge"'
    frame = head + "," + '"p":"' + "x" * (1024 - len(head) - 8) + '"}'
    assert len(frame.encode()) == 1024
    assert_error(await ws.request(frame), ErrorCode.BAD_MESSAGE, "edge")


async def test_oversize_frame_is_measured_in_bytes(connect, settings):
    limits(settings, MAX_FRAME_BYTES=1024)
    ws = await connect()
    # 600 characters, 1200 bytes of UTF-8: over the byte limit.
    await ws.send('{"type":"ping","id":"pl","p":"' + "ą" * 600 + '"}')
    assert await ws.expect_close() == CloseCode.MESSAGE_TOO_BIG


async def test_oversize_binary_frame_closes_with_1009(connect, settings):
    limits(settings, MAX_FRAME_BYTES=1024)
    ws = await connect()
    await ws.send_bytes(b"x" * 2048)
    assert await ws.expect_close() == CloseCode.MESSAGE_TOO_BIG


# --- Flooding ---------------------------------------------------------------------------------


async def test_flood_gets_rate_limited_then_closed_while_others_keep_working(connect, settings):
    limits(settings, RATE_BURST=3, RATE_STRIKES_BEFORE_CLOSE=2, RATE_PER_SECOND=0.01)
    flooder = await connect()
    calm = await connect()

    for n in range(6):
        await flooder.send({"type": "ping", "id": f"f{n}"})
    for n in range(3):
        pong = await flooder.recv()
        assert pong["type"] == "pong" and pong["id"] == f"f{n}"
    assert_error(await flooder.recv(), ErrorCode.RATE_LIMITED, "f3")
    # The other connection is unaffected in the middle of the flood.
    assert (await calm.request({"type": "ping", "id": "c1"}))["type"] == "pong"
    assert_error(await flooder.recv(), ErrorCode.RATE_LIMITED, "f4")
    assert await flooder.expect_close() == CloseCode.RATE_LIMITED
    # After the close the flooder's frames are ignored.
    for n in range(6, 10):
        await flooder.send({"type": "ping", "id": f"f{n}"})
    assert await flooder.nothing()

    for n in range(3):
        assert (await calm.request({"type": "ping", "id": f"c{n + 2}"}))["id"] == f"c{n + 2}"


async def test_binary_flood_is_rate_limited_too(connect, settings):
    limits(settings, RATE_BURST=3, RATE_STRIKES_BEFORE_CLOSE=2, RATE_PER_SECOND=0.01)
    ws = await connect()
    for _ in range(6):
        await ws.send_bytes(b"\x00")
    for _ in range(3):
        assert_error(await ws.recv(), ErrorCode.BAD_MESSAGE)
    for _ in range(2):
        assert_error(await ws.recv(), ErrorCode.RATE_LIMITED)
    assert await ws.expect_close() == CloseCode.RATE_LIMITED


# --- Subscriptions --------------------------------------------------------------------------


async def test_subscribe_public_topic_and_receive_events(connect):
    topic = topic_name()
    ws = await connect()
    reply = await ws.request({"type": "subscribe", "id": "s", "topics": [topic]})
    assert reply["type"] == "subscribed" and reply["id"] == "s"
    assert reply["topics"] == {topic: 0}
    assert reply.get("replayed", 0) == 0 and reply.get("gap", []) == []

    seq = await hub.bus.get_bus().publish(topic, "demo.tick", {"n": 1})
    event = await ws.recv()
    assert event["topic"] == topic
    assert event["seq"] == seq
    assert event["type"] == "demo.tick"
    assert event["data"] == {"n": 1}
    assert isinstance(event["time"], float)
    assert set(event) == {"topic", "seq", "type", "data", "time"}

    # Subscribing again is idempotent and reports the current seq.
    reply = await ws.request({"type": "subscribe", "id": "s2", "topics": [topic]})
    assert reply["topics"] == {topic: seq}
    await hub.bus.get_bus().publish(topic, "demo.tick", {"n": 2})
    assert (await ws.recv())["seq"] == seq + 1
    assert await ws.nothing()


async def test_two_subscribers_each_get_every_event_once(connect):
    topic = topic_name()
    a, b = await connect(), await connect()
    for ws in (a, b):
        assert (await ws.request({"type": "subscribe", "topics": [topic]}))["type"] == "subscribed"
    bus = hub.bus.get_bus()
    seqs = [await bus.publish(topic, "demo.tick", {"n": n}) for n in range(5)]
    for ws in (a, b):
        assert [(await ws.recv())["seq"] for _ in range(5)] == seqs
        assert await ws.nothing()


async def test_private_topic_needs_a_grant(connect):
    topic = topic_name("priv")
    ws = await connect()
    reply = await ws.request({"type": "subscribe", "id": "p", "topics": [topic]})
    assert_error(reply, ErrorCode.FORBIDDEN, "p")
    # Nothing was subscribed, not even the public topic asked for beside it.
    public = topic_name()
    reply = await ws.request({"type": "subscribe", "id": "p2", "topics": [public, topic]})
    assert_error(reply, ErrorCode.FORBIDDEN, "p2")
    await hub.bus.get_bus().publish(topic, "secret", {})
    await hub.bus.get_bus().publish(public, "news", {})
    assert await ws.nothing(0.3)


async def test_private_topic_with_a_grant(connect):
    topic = topic_name("priv")
    ws = await connect()
    grant = issue_grant([topic])
    reply = await ws.request({"type": "subscribe", "id": "g", "topics": [topic], "grant": grant})
    assert reply["type"] == "subscribed" and reply["topics"] == {topic: 0}
    await hub.bus.get_bus().publish(topic, "secret", {"ok": True})
    assert (await ws.recv())["data"] == {"ok": True}


async def test_grant_with_a_prefix_pattern(connect):
    prefix = f"priv.m-{secrets.token_hex(4)}"
    ws = await connect()
    grant = issue_grant([f"{prefix}.*"])
    reply = await ws.request(
        {"type": "subscribe", "id": "g", "topics": [f"{prefix}.chat"], "grant": grant}
    )
    assert reply["type"] == "subscribed"
    reply = await ws.request(
        {"type": "subscribe", "id": "h", "topics": [f"{prefix}x.chat"], "grant": grant}
    )
    assert_error(reply, ErrorCode.FORBIDDEN, "h")


@pytest.mark.parametrize(
    "grant",
    [
        lambda topic: issue_grant([topic], max_age=-1),  # expired
        lambda topic: issue_grant(["priv.other"]),  # another topic
        lambda topic: issue_grant([topic])[:-2] + "zz",  # forged
    ],
    ids=["expired", "other-topic", "forged"],
)
async def test_bad_grant_is_forbidden(connect, grant):
    topic = topic_name("priv")
    ws = await connect()
    reply = await ws.request(
        {"type": "subscribe", "id": "e", "topics": [topic], "grant": grant(topic)}
    )
    assert_error(reply, ErrorCode.FORBIDDEN, "e")


async def test_too_many_subscriptions(connect, settings):
    limits(settings, MAX_SUBSCRIPTIONS=3)
    topics = [topic_name() for _ in range(4)]
    ws = await connect()
    assert_error(
        await ws.request({"type": "subscribe", "id": "all", "topics": topics}),
        ErrorCode.TOO_MANY_SUBSCRIPTIONS,
        "all",
    )
    reply = await ws.request({"type": "subscribe", "id": "three", "topics": topics[:3]})
    assert reply["type"] == "subscribed" and len(reply["topics"]) == 3
    assert_error(
        await ws.request({"type": "subscribe", "id": "one", "topics": topics[3:]}),
        ErrorCode.TOO_MANY_SUBSCRIPTIONS,
        "one",
    )
    # Already-held topics do not count twice.
    reply = await ws.request({"type": "subscribe", "id": "again", "topics": topics[:3]})
    assert reply["type"] == "subscribed"
    await hub.bus.get_bus().publish(topics[3], "x", {})
    assert await ws.nothing()


async def test_unsubscribe_stops_delivery(connect):
    topic = topic_name()
    ws = await connect()
    await ws.request({"type": "subscribe", "topics": [topic]})
    bus = hub.bus.get_bus()
    seq = await bus.publish(topic, "a", {})
    assert (await ws.recv())["seq"] == seq
    reply = await ws.request({"type": "unsubscribe", "id": "u", "topics": [topic, "public.never"]})
    assert reply == {"type": "unsubscribed", "id": "u", "topics": [topic]}
    await bus.publish(topic, "b", {})
    assert await ws.nothing(0.3)


# --- Resume ------------------------------------------------------------------------------------


async def test_resume_replays_missed_events_in_order_then_goes_live(connect):
    topic = topic_name()
    bus = hub.bus.get_bus()
    a = await connect()
    token = a.welcome["resume_token"]
    await a.request({"type": "subscribe", "topics": [topic]})
    first = await bus.publish(topic, "e", {"n": 1})
    assert (await a.recv())["seq"] == first
    await a.disconnect()

    missed = [await bus.publish(topic, "e", {"n": n}) for n in (2, 3, 4)]

    b = await connect()
    await b.send({"type": "resume", "id": "r", "token": token, "since": {topic: first}})
    replayed = [await b.recv() for _ in range(3)]
    assert [(e["seq"], e["data"]["n"]) for e in replayed] == list(
        zip(missed, (2, 3, 4), strict=True)
    )
    resumed = await b.recv()
    assert resumed["type"] == "resumed"
    assert resumed["id"] == "r"
    assert resumed["session"] == b.welcome["session"] != a.welcome["session"]
    assert resumed["topics"] == {topic: missed[-1]}
    assert resumed["replayed"] == 3
    assert resumed.get("gap", []) == []
    assert resumed["resume_token"]

    live = await bus.publish(topic, "e", {"n": 5})
    assert (await b.recv())["seq"] == live
    assert await b.nothing()


async def test_resume_with_a_gap_reports_it(connect, settings):
    topic = topic_name()
    bus = hub.bus.get_bus()
    a = await connect()
    token = a.welcome["resume_token"]
    await a.request({"type": "subscribe", "topics": [topic]})
    await a.disconnect()
    buffer = settings.REALTIME["RESUME_BUFFER"]
    # Fill the buffer past what the client asks for (cheap: a pipeline of publishes).
    assert buffer <= 2000
    seqs = [await bus.publish(topic, "e", {"n": n}) for n in range(buffer + 2)]
    b = await connect()
    since = seqs[0] - 1  # the client had nothing of these
    await b.send({"type": "resume", "id": "r", "token": token, "since": {topic: since}})
    frames = [await b.recv() for _ in range(buffer + 1)]
    assert [f["seq"] for f in frames[:-1]] == seqs[2:]
    assert frames[-1]["type"] == "resumed"
    assert frames[-1]["gap"] == [topic]


async def test_replay_larger_than_the_outbox_is_not_dropped(connect, monkeypatch):
    # A replay answers this client's own request: it must wait for the writer,
    # not count as a slow reader (4013) — else a resume after a long absence
    # would fail the same way on every retry.
    monkeypatch.setattr(EnvelopeConsumer, "max_queued_frames", 20)
    topic = topic_name()
    bus = hub.bus.get_bus()
    a = await connect()
    await a.request({"type": "subscribe", "topics": [topic]})
    await a.disconnect()
    seqs = [await bus.publish(topic, "e", {"n": n}) for n in range(60)]
    b = await connect()
    token = a.welcome["resume_token"]
    since = seqs[0] - 1
    await b.send({"type": "resume", "id": "r", "token": token, "since": {topic: since}})
    frames = [await b.recv() for _ in range(61)]
    assert [f.get("seq") for f in frames[:60]] == seqs
    assert frames[60]["type"] == "resumed" and frames[60]["replayed"] == 60
    assert (await b.request({"type": "ping", "id": "alive"}))["type"] == "pong"


async def test_resumed_token_can_be_used_again(connect):
    topic = topic_name()
    bus = hub.bus.get_bus()
    a = await connect()
    await a.request({"type": "subscribe", "topics": [topic]})
    await a.disconnect()
    b = await connect()
    resumed = await b.request({"type": "resume", "token": a.welcome["resume_token"]})
    assert resumed["type"] == "resumed"
    await b.disconnect()
    seq = await bus.publish(topic, "e", {})
    c = await connect()
    since = {topic: seq - 1}
    await c.send({"type": "resume", "token": resumed["resume_token"], "since": since})
    assert (await c.recv())["seq"] == seq
    assert (await c.recv())["type"] == "resumed"
    # The first token was spent: it cannot resume again (were it leaked).
    d = await connect()
    reply = await d.request({"type": "resume", "id": "old", "token": a.welcome["resume_token"]})
    assert_error(reply, ErrorCode.RESUME_EXPIRED, "old")


@pytest.mark.parametrize("token", ["garbage", "a" * 512])
async def test_resume_with_a_wrong_token(connect, token):
    ws = await connect()
    assert_error(
        await ws.request({"type": "resume", "id": "r", "token": token}),
        ErrorCode.RESUME_EXPIRED,
        "r",
    )


async def test_resume_with_a_forged_token(connect):
    a = await connect()
    await a.request({"type": "subscribe", "topics": [topic_name()]})
    await a.disconnect()
    token = a.welcome["resume_token"]
    ws = await connect()
    forged = token[:-3] + ("xyz" if not token.endswith("xyz") else "abc")
    assert_error(
        await ws.request({"type": "resume", "id": "r", "token": forged}),
        ErrorCode.RESUME_EXPIRED,
        "r",
    )


async def test_resume_token_of_another_principal(connect):
    a = await connect()
    await a.request({"type": "subscribe", "topics": [topic_name()]})
    await a.disconnect()
    stolen = make_resume_token(a.welcome["session"], "user:1")
    ws = await connect()
    assert_error(
        await ws.request({"type": "resume", "id": "r", "token": stolen}),
        ErrorCode.RESUME_EXPIRED,
        "r",
    )


async def test_guest_token_cannot_be_resumed_anonymously(connect):
    guest = issue_guest_token("Anna", "meet:ABC")
    a = await connect(f"/ws/hub/?guest={guest}")
    await a.request({"type": "subscribe", "topics": [topic_name()]})
    await a.disconnect()
    ws = await connect()
    assert_error(
        await ws.request({"type": "resume", "id": "r", "token": a.welcome["resume_token"]}),
        ErrorCode.RESUME_EXPIRED,
        "r",
    )
    # The same guest may.
    again = await connect(f"/ws/hub/?guest={guest}")
    reply = await again.request({"type": "resume", "token": a.welcome["resume_token"]})
    assert reply["type"] == "resumed"


# --- Connection limits ------------------------------------------------------------------------


async def test_per_ip_connection_limit(connect, settings):
    limits(settings, MAX_CONNECTIONS_PER_IP=2)
    first = await connect()
    await connect()
    third = await connect(welcome=False)
    assert await third.expect_close() == CloseCode.TOO_MANY_CONNECTIONS
    # Another address is not affected.
    await connect(ip="10.255.255.254")

    await first.disconnect()
    fourth = await connect()
    assert (await fourth.request({"type": "ping", "id": "4"}))["type"] == "pong"


@pytest.mark.django_db(transaction=True)
async def test_per_user_connection_limit(connect, settings):
    limits(settings, MAX_CONNECTIONS_PER_USER=2)
    _, cookie = await logged_in("limitowany")
    first = await connect(headers=[ORIGIN, cookie], ip="10.1.0.1")
    await connect(headers=[ORIGIN, cookie], ip="10.1.0.2")
    third = await connect(headers=[ORIGIN, cookie], ip="10.1.0.3", welcome=False)
    assert await third.expect_close() == CloseCode.TOO_MANY_CONNECTIONS
    # Anonymous connections from that address are not counted against the user.
    await connect(ip="10.1.0.3")

    await first.disconnect()
    await connect(headers=[ORIGIN, cookie], ip="10.1.0.3")


# --- require_login ------------------------------------------------------------------------------


class PrivateConsumer(EnvelopeConsumer):
    endpoint = "private-test"
    require_login = True


private_app = AuthMiddlewareStack(PrivateConsumer.as_asgi())


async def test_require_login_closes_anonymous_with_4001(connect):
    ws = await connect(app=private_app, welcome=False)
    assert await ws.expect_close() == CloseCode.UNAUTHENTICATED


@pytest.mark.django_db(transaction=True)
async def test_require_login_lets_a_user_in(connect):
    _, cookie = await logged_in("zalogowany")
    ws = await connect(app=private_app, headers=[ORIGIN, cookie])
    assert (await ws.request({"type": "ping", "id": "in"}))["type"] == "pong"


# --- Junk never crashes the consumer ----------------------------------------------------------

KNOWN_TYPES = ["ping", "subscribe", "unsubscribe", "resume", "whoami"]
FUZZ_TOPIC = f"public.fuzz-{secrets.token_hex(4)}"
REPLY_TYPES = {"error", "pong", "subscribed", "unsubscribed", "resumed", "identity"}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
topicish = st.sampled_from([FUZZ_TOPIC, "priv.fuzz", "BAD TOPIC", "", "public.", "a" * 129])
field_values = (
    json_values
    | st.lists(topicish, max_size=3)
    | st.dictionaries(topicish, st.integers(min_value=-3, max_value=3), max_size=3)
    | st.text(min_size=1, max_size=70)
)
typed_messages = st.builds(
    lambda type_, fields: json.dumps({**fields, "type": type_}),
    st.sampled_from(KNOWN_TYPES),
    st.dictionaries(
        st.sampled_from(["id", "topics", "since", "grant", "token", "extra"]),
        field_values,
        max_size=4,
    ),
)
text_frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", errors="replace")),
    json_values.map(json.dumps),
    typed_messages,
)
frames = st.one_of(
    text_frames.map(lambda t: ("text", t)),
    st.binary(max_size=100).map(lambda b: ("bytes", b)),
)


def _valid_id(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64


@hsettings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames, min_size=1, max_size=100))
async def test_junk_never_crashes_the_consumer(connect, settings, batch):
    limits(settings, RATE_BURST=100_000, RATE_PER_SECOND=100_000.0, HEARTBEAT_INTERVAL=600.0)
    ws = await connect()
    try:
        for kind, payload in batch:
            if kind == "bytes":
                await ws.send_bytes(payload)
            else:
                await ws.send(payload)
            reply = await ws.recv()
            assert reply.get("type") in REPLY_TYPES, (payload, reply)
            if reply["type"] == "error":
                assert reply["code"] in ERROR_CODES - {"internal", "rate_limited"}, reply
                assert isinstance(reply["message"], str) and reply["message"]
                assert "Traceback" not in reply["message"]
            if kind == "text":
                with contextlib.suppress(ValueError):
                    sent = json.loads(payload)
                    if isinstance(sent, dict) and _valid_id(sent.get("id")):
                        assert reply.get("id") == sent["id"], (payload, reply)
        final = await ws.request({"type": "ping", "id": "final"})
        assert final["type"] == "pong" and final["id"] == "final"
    finally:
        await ws.disconnect()


async def test_consumer_task_survives_a_burst_of_concurrent_connections(connect):
    topic = topic_name()
    sockets = await asyncio.gather(*(connect() for _ in range(20)))
    for ws in sockets:
        await ws.send({"type": "subscribe", "topics": [topic]})
    for ws in sockets:
        assert (await ws.recv())["type"] == "subscribed"
    seq = await hub.bus.get_bus().publish(topic, "all", {})
    for ws in sockets:
        assert (await ws.recv())["seq"] == seq


# --- Language of the human texts ------------------------------------------------------


@pytest.mark.parametrize(
    ("extra_headers", "expected"),
    [
        ([], "Wiadomość nie jest poprawnym JSON-em."),
        # The browser's preference alone does not switch: the visitor's choice does.
        ([(b"accept-language", b"en-GB,en;q=0.9")], "Wiadomość nie jest poprawnym JSON-em."),
        ([(b"cookie", b"django_language=de")], "Wiadomość nie jest poprawnym JSON-em."),
        (
            [(b"accept-language", b"pl"), (b"cookie", b"django_language=en")],
            "The message is not valid JSON.",
        ),
    ],
)
async def test_error_texts_speak_polish_first(connect, extra_headers, expected):
    ws = await connect(headers=[ORIGIN, *extra_headers])
    reply = await ws.request("{not json")
    assert_error(reply, ErrorCode.BAD_JSON)
    assert reply["message"] == expected


async def test_error_parameters_are_filled_in_the_translation(connect):
    ws = await connect()
    reply = await ws.request({"type": "subscribe", "id": "p", "topics": ["meet.secret"]})
    assert_error(reply, ErrorCode.FORBIDDEN, "p")
    assert reply["message"] == "Nie możesz subskrybować tematu 'meet.secret'."


async def test_deeply_nested_json_is_a_bad_message_not_a_crash(connect):
    """msgspec gives up on very deep nesting with a RecursionError: the client gets
    bad_message with its id, and the connection (and its topics) stay healthy."""
    topic = topic_name()
    ws = await connect()
    await ws.request({"type": "subscribe", "topics": [topic]})
    deep = '{"type":"ping","id":"deep","x":' + "[" * 5000 + "]" * 5000 + "}"
    assert_error(await ws.request(deep), ErrorCode.BAD_MESSAGE)
    assert_error(await ws.request('{"id":' + "[" * 5000 + "]" * 5000 + "}"), ErrorCode.BAD_MESSAGE)
    seq = await hub.bus.get_bus().publish(topic, "still", {})
    assert (await ws.recv())["seq"] == seq
    assert (await ws.request({"type": "ping", "id": "after"}))["type"] == "pong"
