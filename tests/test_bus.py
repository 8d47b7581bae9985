"""The topic bus, against real Redis and in memory: one contract, two implementations."""

import asyncio
import json
import time

import pytest

from hub.bus import MemoryBus, RedisBus, make_frame, seq_of, time_of


@pytest.fixture(params=["redis", "memory"])
async def bus(request, redis_url, key_prefix):
    if request.param == "memory":
        yield MemoryBus(buffer_size=5, seq_ttl=3600)
        return
    instance = RedisBus(redis_url, prefix=key_prefix, buffer_size=5, seq_ttl=3600)
    yield instance
    await instance.close()


async def collect(bus, topic):
    got = []
    baseline = await bus.listen(topic, lambda t, seq, frame: got.append((seq, frame)))
    return baseline, got


async def wait_until(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_publish_numbers_events_and_frames_are_json(bus):
    before = time.time()
    first = await bus.publish("public.a", "x.happened", {"n": 1})
    # A topic's numbers start at the clock in microseconds (they survive a reset).
    assert before * 1e6 <= first <= time.time() * 1e6 + 1
    assert await bus.publish("public.a", "x.happened", {"n": 2}) == first + 1
    other = await bus.publish("public.b", "x.happened", None)
    assert other >= first  # each topic counts on its own
    history = await bus.history("public.a", first - 1, first + 1)
    assert history.complete
    decoded = [json.loads(frame) for frame in history.frames]
    assert [d["seq"] for d in decoded] == [first, first + 1]
    assert decoded[0]["topic"] == "public.a"
    assert decoded[0]["type"] == "x.happened"
    assert decoded[1]["data"] == {"n": 2}
    assert abs(decoded[0]["time"] - time_of(history.frames[0])) < 1e-6


async def test_listeners_get_every_event_after_the_baseline_in_order(bus):
    first = await bus.publish("public.a", "before", None)
    baseline, got = await collect(bus, "public.a")
    assert baseline == first
    for n in range(10):
        await bus.publish("public.a", "tick", {"n": n})
    await wait_until(lambda: len(got) == 10)
    assert [seq for seq, _ in got] == list(range(first + 1, first + 11))
    assert [json.loads(f)["data"]["n"] for _, f in got] == list(range(10))


async def test_buffer_is_bounded_and_reports_gaps(bus):
    seqs = [await bus.publish("public.a", "tick", {"n": n}) for n in range(8)]
    before_first = seqs[0] - 1
    history = await bus.history("public.a", before_first, seqs[-1])
    assert not history.complete
    assert [seq_of(f) for f in history.frames] == seqs[3:]
    recent = await bus.history("public.a", seqs[4], seqs[-1])
    assert recent.complete
    assert [seq_of(f) for f in recent.frames] == seqs[5:]
    assert (await bus.history("public.a", seqs[-1], seqs[-1])).frames == []


async def test_unlisten_stops_delivery(bus):
    got = []

    def listener(topic, seq, frame):
        got.append(seq)

    await bus.listen("public.a", listener)
    one = await bus.publish("public.a", "one", None)
    await wait_until(lambda: got == [one])
    await bus.unlisten("public.a", listener)
    await bus.publish("public.a", "two", None)
    await asyncio.sleep(0.2)
    assert got == [one]
    assert bus.listened_topics() == 0


@pytest.mark.parametrize("topic", ["", "Public.A", "a b", "x" * 200, "ą"])
async def test_invalid_topics_are_refused(bus, topic):
    with pytest.raises(ValueError, match="invalid topic"):
        await bus.publish(topic, "x", None)


async def test_sessions_expire(bus):
    await bus.save_session("s1", {"public.a": 0, "meet.b": 1795000000}, ttl=60, owner="c1")
    assert await bus.load_session("s1") == {"meet.b": 1795000000, "public.a": 0}
    await bus.save_session("s2", {}, ttl=60, owner="c1")
    assert await bus.load_session("s2") == {}
    assert await bus.load_session("unknown") is None
    await bus.save_session("s3", {"public.a": 0}, ttl=1, owner="c1")
    await asyncio.sleep(1.2)
    assert await bus.load_session("s3") is None


async def test_a_late_close_does_not_overwrite_a_resumed_session(bus):
    # Connection c1 held the session; c2 resumed it and subscribed to more.
    await bus.save_session("s", {"public.a": 0}, ttl=60, owner="c1")
    await bus.save_session("s", {"public.a": 0, "public.b": 0}, ttl=60, owner="c2")
    # c1's socket is only now found dead: its close must not win.
    assert not await bus.save_session("s", {"public.a": 0}, ttl=60, owner="c1", only_if_owner=True)
    assert await bus.load_session("s") == {"public.a": 0, "public.b": 0}
    # The owner itself may save on close.
    assert await bus.save_session("s", {"public.b": 0}, ttl=60, owner="c2", only_if_owner=True)
    assert await bus.load_session("s") == {"public.b": 0}


async def test_connection_slots_limit_release_and_expire(bus):
    claims = [("ip:1.2.3.4", 2), ("user:7", 5)]
    assert await bus.acquire_slots(claims, "c1", ttl=60) == 0
    assert await bus.acquire_slots(claims, "c2", ttl=60) == 0
    assert await bus.acquire_slots(claims, "c3", ttl=60) == 1  # the IP is full
    # A failed acquisition took nothing under the other key.
    assert await bus.acquire_slots([("user:7", 3)], "c4", ttl=60) == 0
    assert await bus.acquire_slots([("user:7", 3)], "c5", ttl=60) == 1
    await bus.release_slots([("ip:1.2.3.4", "c1")])
    assert await bus.acquire_slots([("ip:1.2.3.4", 2)], "c6", ttl=60) == 0
    # Slots of a process that died without releasing them expire.
    assert await bus.acquire_slots([("ip:9.9.9.9", 1)], "dead", ttl=0.2) == 0
    await asyncio.sleep(0.3)
    assert await bus.acquire_slots([("ip:9.9.9.9", 1)], "alive", ttl=60) == 0


def test_frames_carry_seq_and_time():
    frame = make_frame("public.a", 42, '"time":12.5,"type":"t","data":null}')
    assert json.loads(frame) == {
        "topic": "public.a",
        "seq": 42,
        "time": 12.5,
        "type": "t",
        "data": None,
    }
    assert seq_of(frame) == 42
    assert time_of(frame) == 12.5


async def test_redis_bus_shares_topics_between_instances(redis_url, key_prefix):
    """Two buses on one Redis stand for two processes."""
    a = RedisBus(redis_url, prefix=key_prefix, buffer_size=100, seq_ttl=3600)
    b = RedisBus(redis_url, prefix=key_prefix, buffer_size=100, seq_ttl=3600)
    try:
        _, got = await collect(a, "public.shared")
        first = await b.publish("public.shared", "tick", {"n": 0})
        for n in range(1, 20):
            await b.publish("public.shared", "tick", {"n": n})
        assert b.publish_sync("public.shared", "tick", {"n": 20}) == first + 20
        await wait_until(lambda: len(got) == 21)
        assert [seq for seq, _ in got] == list(range(first, first + 21))
    finally:
        await a.close()
        await b.close()


async def test_redis_bus_fills_the_gap_after_losing_its_connection(redis_url, key_prefix):
    """Events published while the subscriber's connection is down still arrive, in order."""
    import redis.asyncio as aioredis

    listener_bus = RedisBus(redis_url, prefix=key_prefix, buffer_size=100, seq_ttl=3600)
    publisher = RedisBus(redis_url, prefix=key_prefix, buffer_size=100, seq_ttl=3600)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        _, got = await collect(listener_bus, "public.gap")
        first = await publisher.publish("public.gap", "tick", {"n": 0})
        await wait_until(lambda: len(got) == 1)
        # Kill the subscriber's pub/sub connection, as a network failure would.
        clients = await admin.client_list()
        killed = 0
        for client in clients:
            if client.get("name") == listener_bus.client_name and int(client.get("sub", 0)) > 0:
                await admin.client_kill_filter(_id=client["id"])
                killed += 1
        assert killed >= 1
        for n in range(1, 6):
            await publisher.publish("public.gap", "tick", {"n": n})
        await wait_until(lambda: len(got) == 6, timeout=15)
        assert [seq for seq, _ in got] == list(range(first, first + 6))
    finally:
        await listener_bus.close()
        await publisher.close()
        await admin.aclose()


async def test_memory_bus_publish_from_a_thread_reaches_the_loop(memory_bus):
    _, got = await collect(memory_bus, "public.thread")
    seqs = await asyncio.to_thread(
        lambda: [memory_bus.publish_sync("public.thread", "t", {"n": n}) for n in range(50)]
    )
    assert seqs == list(range(seqs[0], seqs[0] + 50))
    await wait_until(lambda: len(got) == 50)
    assert [seq for seq, _ in got] == seqs


async def test_a_lost_counter_does_not_silence_listeners(redis_url, key_prefix):
    """The counter expires after a quiet day (or is lost with Redis): numbers go on
    growing, so processes that still listen do not drop the new events as old."""
    import redis.asyncio as aioredis

    listener_bus = RedisBus(redis_url, prefix=key_prefix, buffer_size=100, seq_ttl=3600)
    publisher = RedisBus(redis_url, prefix=key_prefix, buffer_size=100, seq_ttl=3600)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        _, got = await collect(listener_bus, "public.reset")
        for _ in range(3):
            await publisher.publish("public.reset", "before", None)
        await wait_until(lambda: len(got) == 3)
        await admin.delete(f"{key_prefix}:topic:public.reset:seq")
        after = await publisher.publish("public.reset", "after", None)
        await wait_until(lambda: len(got) == 4)
        assert got[-1][0] == after > got[2][0]
    finally:
        await listener_bus.close()
        await publisher.close()
        await admin.aclose()


async def test_listeners_come_back_after_a_redis_restart(own_redis, key_prefix):
    """Redis restarts (losing everything): the process resubscribes by itself and
    hears the topic again; it reports itself disconnected meanwhile."""
    listener_bus = RedisBus(own_redis.url, prefix=key_prefix, buffer_size=100, seq_ttl=3600)
    try:
        _, got = await collect(listener_bus, "public.restart")
        publisher = RedisBus(own_redis.url, prefix=key_prefix, buffer_size=100, seq_ttl=3600)
        await publisher.publish("public.restart", "before", None)
        await publisher.close()
        await wait_until(lambda: len(got) == 1)

        own_redis.stop()
        await wait_until(lambda: not listener_bus.connected, timeout=15)
        own_redis.start()
        await wait_until(lambda: listener_bus.connected, timeout=20)

        publisher = RedisBus(own_redis.url, prefix=key_prefix, buffer_size=100, seq_ttl=3600)
        after = await publisher.publish("public.restart", "after", None)
        await publisher.close()
        await wait_until(lambda: len(got) == 2, timeout=10)
        assert got[-1][0] == after > got[0][0]
    finally:
        await listener_bus.close()


async def test_many_topics_subscribed_at_once_on_a_fresh_bus_are_all_heard(redis_url, key_prefix):
    """Concurrent first subscriptions once raced to open several pub/sub
    connections, one read and the others deaf (clients rushing back to a
    restarted broadcast process)."""
    listener_bus = RedisBus(redis_url, prefix=key_prefix, buffer_size=10, seq_ttl=3600)
    publisher = RedisBus(redis_url, prefix=key_prefix, buffer_size=10, seq_ttl=3600)
    topics = [f"public.rush-{n}" for n in range(20)]
    got: dict[str, list[int]] = {t: [] for t in topics}
    try:
        await asyncio.gather(
            *(listener_bus.listen(t, lambda t, seq, f: got[t].append(seq)) for t in topics)
        )
        sent = {t: await publisher.publish(t, "hello", None) for t in topics}
        await wait_until(lambda: all(got[t] == [sent[t]] for t in topics))
    finally:
        await listener_bus.close()
        await publisher.close()
