"""LiveHub: replay and live delivery meet without gaps or duplicates."""

import asyncio
import json

import pytest

from hub.bus import RedisBus
from hub.live import LiveHub, make_resume_token, read_resume_token


class Sink:
    """Stands for one client connection: records every frame it is sent."""

    def __init__(self):
        self.frames: list[str] = []

    async def send(self, frame: str) -> None:
        self.frames.append(frame)
        await asyncio.sleep(0)  # a real socket write yields to the loop

    def seqs(self):
        return [json.loads(f)["seq"] for f in self.frames]


def fanout(sinks, frame):
    for sink in sinks:
        sink.frames.append(frame)


async def test_join_while_events_keep_coming_sees_each_seq_once(redis_url, key_prefix):
    # The buffer holds every event of the test: here a gap would be a bug.
    listener_bus = RedisBus(redis_url, prefix=key_prefix, buffer_size=100_000, seq_ttl=3600)
    publisher = RedisBus(redis_url, prefix=key_prefix, buffer_size=100_000, seq_ttl=3600)
    hub = LiveHub(listener_bus, fanout)
    topic = "public.race"
    try:
        for n in range(30):
            await publisher.publish(topic, "tick", {"n": n})
        stop = asyncio.Event()

        async def keep_publishing():
            while not stop.is_set():
                await publisher.publish(topic, "tick", None)
                await asyncio.sleep(0)

        task = asyncio.create_task(keep_publishing())
        sinks = []
        for since in (0, 5, 17, 29):
            sink = Sink()
            seq, replayed, complete = await hub.join(sink, topic, since, sink.send)
            assert complete
            assert replayed >= 0
            sinks.append((since, sink))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        stop.set()
        await task
        last = await publisher.current_seq(topic)
        await asyncio.sleep(0.3)
        for since, sink in sinks:
            assert sink.seqs() == list(range(since + 1, last + 1)), since
    finally:
        await listener_bus.close()
        await publisher.close()


async def test_join_without_since_gets_only_new_events(memory_bus):
    hub = LiveHub(memory_bus, fanout)
    await memory_bus.publish("public.x", "old", None)
    sink = Sink()
    seq, replayed, complete = await hub.join(sink, "public.x", None, sink.send)
    assert (seq, replayed, complete) == (1, 0, True)
    await memory_bus.publish("public.x", "new", None)
    assert sink.seqs() == [2]


async def test_join_past_the_buffer_reports_a_gap(memory_bus):
    hub = LiveHub(memory_bus, fanout)
    for _ in range(60):  # buffer holds 50
        await memory_bus.publish("public.x", "tick", None)
    sink = Sink()
    seq, replayed, complete = await hub.join(sink, "public.x", 2, sink.send)
    assert not complete
    assert sink.seqs() == list(range(11, 61))


async def test_join_with_a_future_seq_is_a_gap(memory_bus):
    hub = LiveHub(memory_bus, fanout)
    sink = Sink()
    _, _, complete = await hub.join(sink, "public.x", 99, sink.send)
    assert not complete


async def test_leaving_last_member_stops_listening(memory_bus):
    hub = LiveHub(memory_bus, fanout)
    a, b = Sink(), Sink()
    await hub.join(a, "public.x", None, a.send)
    await hub.join(b, "public.x", None, b.send)
    assert hub.member_count("public.x") == 2
    await hub.leave(a, "public.x")
    await memory_bus.publish("public.x", "t", None)
    assert a.frames == [] and len(b.frames) == 1
    await hub.leave(b, "public.x")
    assert memory_bus.listened_topics() == 0


@pytest.mark.parametrize(
    ("principal", "max_age", "expected"),
    [("user:1", 60, "sid"), ("anonymous", 60, None), ("user:1", -1, None)],
)
def test_resume_tokens_bind_session_to_principal_and_expire(principal, max_age, expected):
    token = make_resume_token("sid", "user:1")
    assert read_resume_token(token, principal, max_age) == expected


def test_resume_tokens_cannot_be_forged():
    token = make_resume_token("sid", "anonymous")
    forged = token.replace("sid", "other", 1)
    assert read_resume_token(forged, "anonymous", 60) is None


def _limits():
    from hub.live import SessionLimits

    return SessionLimits(
        max_frame_bytes=65536,
        rate_per_second=100,
        rate_burst=100,
        rate_strikes_before_close=5,
        heartbeat_interval=25,
        resume_ttl=300,
        max_subscriptions=10,
    )


async def test_resume_does_not_outlive_a_grant(memory_bus):
    """A private topic's grant expires; resuming again and again does not keep it."""
    import time

    from hub.clock import ManualClock
    from hub.live import RealtimeSession
    from hub.topics import issue_grant

    hub = LiveHub(memory_bus, fanout)
    first = Sink()
    session = RealtimeSession(
        hub=hub, handle=first, send=first.send, limits=_limits(), principal="user:1"
    )
    grant = issue_grant(["meet.room1"], subject="user:1", max_age=60)
    await session.receive(
        json.dumps(
            {
                "type": "subscribe",
                "id": "s",
                "topics": ["meet.room1", "public.news"],
                "grant": grant,
            }
        )
    )
    assert json.loads(first.frames[-1])["type"] == "subscribed"
    token = session.resume_token
    await session.close()

    later = ManualClock(start=time.time() + 120)
    second = Sink()
    resumed_session = RealtimeSession(
        hub=hub, handle=second, send=second.send, limits=_limits(), principal="user:1", clock=later
    )
    await resumed_session.receive(json.dumps({"type": "resume", "id": "r", "token": token}))
    reply = json.loads(second.frames[-1])
    assert reply["type"] == "resumed"
    assert reply["topics"] == {"public.news": 0}
    assert reply["expired"] == ["meet.room1"]
    assert set(resumed_session.topics) == {"public.news"}


async def test_strikes_count_refusals_in_a_row(memory_bus):
    """A client over its rate is refused; one that slows down is forgiven."""
    from dataclasses import replace

    from hub.clock import ManualClock
    from hub.envelope import CloseCode
    from hub.live import RealtimeSession

    clock = ManualClock()
    sink = Sink()
    limits = replace(_limits(), rate_per_second=1, rate_burst=1, rate_strikes_before_close=2)
    session = RealtimeSession(
        hub=LiveHub(memory_bus, fanout), handle=sink, send=sink.send, limits=limits, clock=clock
    )
    ping = json.dumps({"type": "ping", "id": "p"})
    for _ in range(5):
        assert await session.receive(ping) is None  # accepted
        assert await session.receive(ping) is None  # refused: strike 1
        assert await session.receive(ping) is None  # refused: strike 2
        clock.advance(1)
    assert await session.receive(ping) is None
    for _ in range(2):
        assert await session.receive(ping) is None
    assert await session.receive(ping) == CloseCode.RATE_LIMITED
    codes = [json.loads(f).get("code") for f in sink.frames]
    assert codes.count("rate_limited") == 12
