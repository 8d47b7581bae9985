"""Real processes on one Redis: two daphnes and a broadcast server share topics,
and a client that drops and resumes elsewhere gets exactly what it missed."""

import asyncio
import json
import os

import pytest
from websockets.asyncio.client import connect

from hub.bus import RedisBus

ORIGIN = "http://127.0.0.1"

pytestmark = pytest.mark.integration


async def open_client(port, path="/ws/live/"):
    ws = await connect(f"ws://127.0.0.1:{port}{path}", origin=ORIGIN, open_timeout=10)
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome"
    return ws, welcome


async def next_of(ws, kind, timeout=10):
    """The next frame of ``kind`` (or any topic event when kind is 'event')."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if frame["type"] == "ping":
            continue
        if kind == "event" and "seq" in frame:
            return frame
        if frame["type"] == kind:
            return frame
        raise AssertionError(f"expected {kind}, got {frame}")


async def subscribe(ws, topic, since=None):
    message = {"type": "subscribe", "id": "s", "topics": [topic]}
    if since is not None:
        message["since"] = {topic: since}
    await ws.send(json.dumps(message))
    return await next_of(ws, "subscribed")


async def test_two_daphnes_and_a_broadcast_server_share_topics_and_resume(
    hub_processes, redis_url, key_prefix
):
    daphne_a = hub_processes.daphne()
    daphne_b = hub_processes.daphne()
    broadcaster = hub_processes.broadcast()
    publisher = RedisBus(redis_url, prefix=key_prefix, buffer_size=1000, seq_ttl=3600)
    topic = "public.multi"
    try:
        on_a, welcome_a = await open_client(daphne_a)
        on_b, _ = await open_client(daphne_b, "/ws/hub/")
        on_bc, _ = await open_client(broadcaster)
        for ws in (on_a, on_b, on_bc):
            assert (await subscribe(ws, topic))["topics"] == {topic: 0}

        first = await publisher.publish(topic, "demo.tick", {"n": 1})
        frames = [await next_of(ws, "event") for ws in (on_a, on_b, on_bc)]
        assert [f["seq"] for f in frames] == [first] * 3
        assert all(f["data"] == {"n": 1} and f["topic"] == topic for f in frames)

        # The client on A drops; events go on; it comes back on the broadcast server.
        await on_a.close()
        missed = [await publisher.publish(topic, "demo.tick", {"n": n}) for n in range(2, 7)]
        back, _ = await open_client(broadcaster)
        await back.send(
            json.dumps(
                {
                    "type": "resume",
                    "id": "r",
                    "token": welcome_a["resume_token"],
                    "since": {topic: first},
                }
            )
        )
        replayed = [await next_of(back, "event") for _ in range(5)]
        resumed = await next_of(back, "resumed")
        assert [f["seq"] for f in replayed] == missed
        assert [f["data"]["n"] for f in replayed] == [2, 3, 4, 5, 6]
        assert resumed["id"] == "r" and resumed["replayed"] == 5 and resumed["gap"] == []
        live = await publisher.publish(topic, "demo.tick", {"n": 7})
        assert (await next_of(back, "event"))["seq"] == live
        # Exactly once: nothing else is waiting on the resumed socket.
        with pytest.raises(asyncio.TimeoutError):
            await next_of(back, "event", timeout=0.5)
        for ws in (on_b, on_bc):
            assert [(await next_of(ws, "event"))["seq"] for _ in range(6)] == [*missed, live]
        for ws in (on_b, on_bc, back):
            await ws.close()
    finally:
        await publisher.close()


async def test_broadcast_server_refuses_to_start_without_redis(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = await asyncio.create_subprocess_exec(
        "python",
        "manage.py",
        "broadcast_server",
        "--port",
        "0",
        env={**env, "PATH": os.path.dirname(os.sys.executable) + ":" + env.get("PATH", "")},
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"REDIS_URL is not set" in stderr
