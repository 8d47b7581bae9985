"""hub.broadcast_server.BroadcastServer in the test's event loop, on a free port,
with real websockets clients and the real Redis topic bus."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request

import pytest
from channels.testing import WebsocketCommunicator
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hub.broadcast_server import BroadcastServer
from hub.bus import RedisBus
from hub.envelope import CloseCode, ErrorCode

ORIGIN = "http://127.0.0.1"
TIMEOUT = 5


def topic_name() -> str:
    return f"public.b-{secrets.token_hex(6)}"


def make_bus(redis_url: str, prefix: str) -> RedisBus:
    return RedisBus(redis_url, prefix=prefix, buffer_size=100, seq_ttl=3600)


def limits(settings, **overrides) -> None:
    settings.REALTIME = {**settings.REALTIME, **overrides}


async def recv(ws, timeout: float = TIMEOUT) -> dict:
    """The next frame that is not a server heartbeat."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if not (frame.get("type") == "ping" and "id" not in frame):
            return frame


async def request(ws, message: dict) -> dict:
    await ws.send(json.dumps(message))
    return await recv(ws)


async def close_code_of(ws, timeout: float = TIMEOUT) -> int:
    """Read until the server closes the connection; its close code."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code


def assert_error(frame: dict, code: ErrorCode, id: str | None = None) -> None:
    assert frame["type"] == "error", frame
    assert frame["code"] == code.value, frame
    assert isinstance(frame["message"], str) and frame["message"]
    assert "Traceback" not in frame["message"]
    if id is not None:
        assert frame.get("id") == id, frame


@pytest.fixture(autouse=True)
def _in_memory_channel_layer(settings):
    """Only the cross-transport test uses a Channels consumer; it needs no Redis layer."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


class Servers:
    def __init__(self, redis_url: str, key_prefix: str):
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.running: list[BroadcastServer] = []
        self.clients: list = []
        self.buses: list[RedisBus] = []

    async def start(self, prefix: str | None = None) -> BroadcastServer:
        """A server on its own RedisBus (stop() closes the bus)."""
        server = BroadcastServer(
            host="127.0.0.1", port=0, bus=make_bus(self.redis_url, prefix or self.key_prefix)
        )
        await server.start()
        self.running.append(server)
        return server

    async def stop(self, server: BroadcastServer) -> None:
        self.running.remove(server)
        await server.stop()

    def publisher(self, prefix: str | None = None) -> RedisBus:
        """Another process's bus on the same Redis and prefix."""
        bus = make_bus(self.redis_url, prefix or self.key_prefix)
        self.buses.append(bus)
        return bus

    async def client(self, server: BroadcastServer, *, welcome: bool = True, **kwargs):
        ws = await ws_connect(
            f"ws://127.0.0.1:{server.port}/ws/live/",
            origin=kwargs.pop("origin", ORIGIN),
            open_timeout=TIMEOUT,
            **kwargs,
        )
        self.clients.append(ws)
        if welcome:
            ws.welcome = await recv(ws)
            assert ws.welcome["type"] == "welcome", ws.welcome
        return ws


@pytest.fixture
async def servers(_fresh_bus, redis_url, key_prefix):
    s = Servers(redis_url, key_prefix)
    yield s
    await asyncio.gather(*(ws.close() for ws in s.clients), return_exceptions=True)
    for server in list(s.running):
        await server.stop()
    for bus in s.buses:
        await bus.close()


async def http_get(port: int, path: str) -> tuple[int, str]:
    def _get():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    return await asyncio.to_thread(_get)


# --- Envelope ---------------------------------------------------------------------------------


async def test_welcome_and_ping(servers, settings):
    server = await servers.start()
    ws = await servers.client(server)
    assert ws.welcome["session"] and ws.welcome["resume_token"]
    assert ws.welcome["heartbeat"] == settings.REALTIME["HEARTBEAT_INTERVAL"]
    assert ws.welcome["max_frame_bytes"] == settings.REALTIME["MAX_FRAME_BYTES"]
    pong = await request(ws, {"type": "ping", "id": "p1"})
    assert pong["type"] == "pong" and pong["id"] == "p1"
    assert abs(pong["time"] - time.time()) < 5


async def test_bad_input_gets_errors(servers):
    server = await servers.start()
    ws = await servers.client(server)
    assert_error(await request(ws, {"type": "nope", "id": "x"}), ErrorCode.UNKNOWN_TYPE, "x")
    await ws.send("{oops")
    assert_error(await recv(ws), ErrorCode.BAD_JSON)
    await ws.send("[1]")
    assert_error(await recv(ws), ErrorCode.BAD_MESSAGE)
    # whoami is a /ws/hub/ message: /ws/live/ does not know it, like in daphne.
    assert_error(await request(ws, {"type": "whoami", "id": "w"}), ErrorCode.UNKNOWN_TYPE, "w")
    await ws.send(b'{"type": "ping", "id": "bin"}')
    assert_error(await recv(ws), ErrorCode.BAD_MESSAGE)
    assert (await request(ws, {"type": "ping", "id": "ok"}))["type"] == "pong"


async def test_subscribe_and_receive_from_another_process(servers):
    server = await servers.start()
    topic = topic_name()
    ws = await servers.client(server)
    reply = await request(ws, {"type": "subscribe", "id": "s", "topics": [topic]})
    assert reply["type"] == "subscribed" and reply["topics"] == {topic: 0}

    publisher = servers.publisher()
    seq = await publisher.publish(topic, "demo.tick", {"n": 1})
    event = await recv(ws)
    assert event["topic"] == topic and event["seq"] == seq
    assert event["type"] == "demo.tick" and event["data"] == {"n": 1}
    assert isinstance(event["time"], float)


async def test_private_topic_needs_a_grant(servers):
    from hub.topics import issue_grant

    server = await servers.start()
    topic = f"priv.b-{secrets.token_hex(4)}"
    ws = await servers.client(server)
    assert_error(
        await request(ws, {"type": "subscribe", "id": "f", "topics": [topic]}),
        ErrorCode.FORBIDDEN,
        "f",
    )
    grant = issue_grant([topic])
    reply = await request(ws, {"type": "subscribe", "id": "g", "topics": [topic], "grant": grant})
    assert reply["type"] == "subscribed"


async def test_two_hundred_clients_get_every_event_in_order(servers, settings):
    limits(settings, MAX_CONNECTIONS_PER_IP=500)
    server = await servers.start()
    topic = topic_name()
    clients = await asyncio.gather(*(servers.client(server) for _ in range(200)))
    replies = await asyncio.gather(
        *(request(ws, {"type": "subscribe", "topics": [topic]}) for ws in clients)
    )
    assert all(r["type"] == "subscribed" for r in replies)
    assert server.hub.member_count(topic) == 200

    publisher = servers.publisher()
    seqs = [await publisher.publish(topic, "tick", {"n": n}) for n in range(5)]

    async def five(ws):
        return [(e["seq"], e["data"]["n"]) for e in [await recv(ws) for _ in range(5)]]

    received = await asyncio.gather(*(five(ws) for ws in clients))
    expected = [(seq, n) for n, seq in enumerate(seqs)]
    assert all(got == expected for got in received)
    # Nothing more (no duplicates): a ping's pong is the next frame everywhere.
    pongs = await asyncio.gather(*(request(ws, {"type": "ping", "id": "z"}) for ws in clients))
    assert all(p["type"] == "pong" for p in pongs)


# --- HTTP side ----------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://evil.example", None], ids=["evil", "missing"])
async def test_disallowed_origin_is_403(servers, origin):
    server = await servers.start()
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(
            f"ws://127.0.0.1:{server.port}/ws/live/", origin=origin, open_timeout=TIMEOUT
        )
    assert refused.value.response.status_code == 403


async def test_unknown_path_is_404(servers):
    server = await servers.start()
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(
            f"ws://127.0.0.1:{server.port}/ws/hub/", origin=ORIGIN, open_timeout=TIMEOUT
        )
    assert refused.value.response.status_code == 404


async def test_healthz_and_metrics(servers):
    server = await servers.start()
    status, body = await http_get(server.port, "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    # Make the latency histogram observe something, then read the metrics.
    topic = topic_name()
    ws = await servers.client(server)
    await request(ws, {"type": "subscribe", "topics": [topic]})
    await servers.publisher().publish(topic, "t", {})
    await recv(ws)
    status, body = await http_get(server.port, "/metrics")
    assert status == 200
    assert "hub_ws_open_sockets" in body
    assert "hub_broadcast_latency_seconds" in body
    assert 'hub_ws_open_sockets{endpoint="live"}' in body


# --- Limits -----------------------------------------------------------------------------------


async def test_oversize_frame_closes_with_1009(servers, settings):
    limits(settings, MAX_FRAME_BYTES=1024)
    server = await servers.start()
    ws = await servers.client(server)
    await ws.send(json.dumps({"type": "ping", "pad": "x" * 2000}))
    assert await close_code_of(ws) == CloseCode.MESSAGE_TOO_BIG


async def test_oversize_multibyte_frame_closes_with_1009(servers, settings):
    limits(settings, MAX_FRAME_BYTES=1024)
    server = await servers.start()
    ws = await servers.client(server)
    # 600 characters, 1200 bytes: websockets measures bytes (so should daphne's side).
    await ws.send('{"type":"ping","p":"' + "ą" * 600 + '"}')
    assert await close_code_of(ws) == CloseCode.MESSAGE_TOO_BIG


async def test_flood_closes_with_4008_and_others_keep_working(servers, settings):
    limits(settings, RATE_BURST=3, RATE_STRIKES_BEFORE_CLOSE=2, RATE_PER_SECOND=0.01)
    server = await servers.start()
    flooder = await servers.client(server)
    calm = await servers.client(server)
    for n in range(10):
        await flooder.send(json.dumps({"type": "ping", "id": f"f{n}"}))
    frames = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frames.append(await recv(flooder))
    assert closed.value.rcvd.code == CloseCode.RATE_LIMITED
    assert [f["type"] for f in frames] == ["pong"] * 3 + ["error"] * 2
    for n, frame in enumerate(frames[3:], start=3):
        assert_error(frame, ErrorCode.RATE_LIMITED, f"f{n}")
    assert (await request(calm, {"type": "ping", "id": "c"}))["type"] == "pong"


async def test_binary_flood_closes_with_4008(servers, settings):
    limits(settings, RATE_BURST=3, RATE_STRIKES_BEFORE_CLOSE=2, RATE_PER_SECOND=0.01)
    server = await servers.start()
    ws = await servers.client(server)
    for _ in range(10):
        await ws.send(b"\x00")
    assert await close_code_of(ws, timeout=2) == CloseCode.RATE_LIMITED


async def test_per_ip_limit_closes_with_4029(servers, settings):
    limits(settings, MAX_CONNECTIONS_PER_IP=2)
    server = await servers.start()
    first = await servers.client(server)
    await servers.client(server)
    third = await servers.client(server, welcome=False)
    assert await close_code_of(third) == CloseCode.TOO_MANY_CONNECTIONS

    await first.close()
    await first.wait_closed()
    # The slot is released when the server's handler finishes.
    for _ in range(50):
        if len(server.connections) < 2:
            break
        await asyncio.sleep(0.02)
    fourth = await servers.client(server)
    assert (await request(fourth, {"type": "ping", "id": "4"}))["type"] == "pong"


async def test_per_ip_limit_uses_x_forwarded_for_when_trusted(servers, settings):
    limits(settings, MAX_CONNECTIONS_PER_IP=1)
    settings.WS_TRUST_X_FORWARDED_FOR = True
    server = await servers.start()

    def via(address):
        return {"additional_headers": {"X-Forwarded-For": f"203.0.113.9, {address}"}}

    await servers.client(server, **via("198.51.100.1"))
    await servers.client(server, **via("198.51.100.2"))
    third = await servers.client(server, welcome=False, **via("198.51.100.1"))
    assert await close_code_of(third) == CloseCode.TOO_MANY_CONNECTIONS


async def test_heartbeat_arrives(servers, settings):
    limits(settings, HEARTBEAT_INTERVAL=0.1)
    server = await servers.start()
    ws = await servers.client(server)
    ping = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert ping["type"] == "ping" and "id" not in ping and isinstance(ping["time"], float)


async def test_heartbeat_time_is_unix_time_like_daphne(servers, settings):
    limits(settings, HEARTBEAT_INTERVAL=0.1)
    server = await servers.start()
    ws = await servers.client(server)
    ping = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert ping["type"] == "ping"
    assert abs(ping["time"] - time.time()) < 5


# --- Resume -----------------------------------------------------------------------------------


async def drop_and_publish(servers, server, topic: str, count: int):
    """A client subscribes, gets one event, disconnects; ``count`` more follow.
    Returns its welcome, the publisher, the seq it holds and the missed seqs."""
    publisher = servers.publisher(server.bus.prefix)
    a = await servers.client(server)
    await request(a, {"type": "subscribe", "topics": [topic]})
    held = await publisher.publish(topic, "e", {"n": 1})
    assert (await recv(a))["seq"] == held
    await a.close()
    await a.wait_closed()
    for _ in range(50):  # the server saves the session when the handler ends
        if not server.connections:
            break
        await asyncio.sleep(0.02)
    missed = [await publisher.publish(topic, "e", {"n": n + 2}) for n in range(count)]
    return a.welcome, publisher, held, missed


async def test_resume_on_the_broadcast_server(servers):
    server = await servers.start()
    topic = topic_name()
    welcome, publisher, held, missed = await drop_and_publish(servers, server, topic, 3)

    b = await servers.client(server)
    await b.send(
        json.dumps(
            {"type": "resume", "id": "r", "token": welcome["resume_token"], "since": {topic: held}}
        )
    )
    assert [(await recv(b))["seq"] for _ in range(3)] == missed
    resumed = await recv(b)
    assert resumed["type"] == "resumed" and resumed["id"] == "r"
    assert resumed["session"] == b.welcome["session"] != welcome["session"]
    assert resumed["topics"] == {topic: missed[-1]} and resumed["replayed"] == 3
    assert resumed.get("gap", []) == []
    live = await publisher.publish(topic, "e", {"n": 5})
    assert (await recv(b))["seq"] == live
    assert (await request(b, {"type": "ping", "id": "end"}))["type"] == "pong"


async def test_resume_with_a_wrong_token(servers):
    server = await servers.start()
    ws = await servers.client(server)
    forged = ws.welcome["resume_token"][:-2] + "zz"
    assert_error(
        await request(ws, {"type": "resume", "id": "r", "token": forged}),
        ErrorCode.RESUME_EXPIRED,
        "r",
    )


async def test_resume_across_transports(servers, settings):
    """A session begun on the broadcast server resumes on daphne's /ws/live/."""
    from hub.asgi import application
    from hub.bus import get_bus

    server = await servers.start(prefix=settings.REDIS_PREFIX)
    topic = topic_name()
    welcome, publisher, held, missed = await drop_and_publish(servers, server, topic, 3)

    communicator = WebsocketCommunicator(
        application, "/ws/live/", headers=[(b"origin", ORIGIN.encode())]
    )
    communicator.scope["client"] = ("10.9.9.9", 50000)
    try:
        assert (await communicator.connect(timeout=TIMEOUT))[0]
        assert json.loads(await communicator.receive_from(TIMEOUT))["type"] == "welcome"
        await communicator.send_json_to(
            {"type": "resume", "id": "x", "token": welcome["resume_token"], "since": {topic: held}}
        )
        frames = [json.loads(await communicator.receive_from(TIMEOUT)) for _ in range(4)]
        assert [f.get("seq") for f in frames[:3]] == missed
        assert frames[3]["type"] == "resumed" and frames[3]["session"] != welcome["session"]
        live = await publisher.publish(topic, "e", {"n": 5})
        assert json.loads(await communicator.receive_from(TIMEOUT))["seq"] == live
    finally:
        await communicator.disconnect(timeout=TIMEOUT)
        await get_bus().close()


# --- Life cycle -------------------------------------------------------------------------------


async def test_stop_closes_clients_with_1012(servers):
    server = await servers.start()
    clients = [await servers.client(server) for _ in range(3)]
    await request(clients[0], {"type": "subscribe", "topics": [topic_name()]})
    await servers.stop(server)
    for ws in clients:
        assert await close_code_of(ws) == CloseCode.SERVICE_RESTART
    assert not server.connections
    # The port is free again: nothing accepts connections there.
    with pytest.raises(OSError):
        await ws_connect(f"ws://127.0.0.1:{server.port}/ws/live/", origin=ORIGIN, open_timeout=2)
