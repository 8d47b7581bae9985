"""The redis-py 8 pitfalls measured on this machine (issue #2), caught for real.

- the pool capped at 100 connections made concurrent group_add fail (HTTP 500);
- the 5 s socket timeout equal to channels_redis's 5 s BZPOPMIN killed idle consumers.
"""

import asyncio
import json

import pytest
from channels.layers import get_channel_layer
from websockets.asyncio.client import connect

pytestmark = pytest.mark.integration


async def test_many_concurrent_group_adds_all_succeed():
    layer = get_channel_layer()
    channels = [await layer.new_channel() for _ in range(400)]
    await asyncio.gather(*(layer.group_add("pitfall-many", name) for name in channels))
    await layer.group_send("pitfall-many", {"type": "hello"})
    received = await asyncio.gather(*(layer.receive(name) for name in channels[:20]))
    assert all(message == {"type": "hello"} for message in received)
    await asyncio.gather(*(layer.group_discard("pitfall-many", name) for name in channels))


async def test_an_idle_receive_outlives_the_old_socket_timeout():
    layer = get_channel_layer()
    name = await layer.new_channel()

    async def send_later():
        await asyncio.sleep(12)  # longer than 5 s socket timeout + 5 s BZPOPMIN
        await layer.send(name, {"type": "late"})

    sender = asyncio.create_task(send_later())
    assert await asyncio.wait_for(layer.receive(name), 30) == {"type": "late"}
    await sender


async def test_idle_sockets_on_a_real_daphne_survive(hub_processes):
    port = hub_processes.daphne()
    sockets = [
        await connect(f"ws://127.0.0.1:{port}/ws/hub/", origin="http://127.0.0.1")
        for _ in range(30)
    ]
    for ws in sockets:
        assert json.loads(await ws.recv())["type"] == "welcome"
    await asyncio.sleep(12)
    for index, ws in enumerate(sockets):
        await ws.send(json.dumps({"type": "ping", "id": str(index)}))
    for index, ws in enumerate(sockets):
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "pong" and reply["id"] == str(index)
        await ws.close()


async def test_many_concurrent_connects_to_daphne_all_succeed(hub_processes):
    port = hub_processes.daphne({"WS_MAX_CONNECTIONS_PER_IP": "1000"})

    async def one(index):
        async with connect(
            f"ws://127.0.0.1:{port}/ws/hub/", origin="http://127.0.0.1", open_timeout=30
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(
                json.dumps(
                    {"type": "subscribe", "id": "s", "topics": [f"public.join-{index % 50}"]}
                )
            )
            assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "subscribed"

    await asyncio.gather(*(one(i) for i in range(300)))
