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
        seqs = [await publisher.publish(topic, "tick", {"n": n}) for n in range(30)]
        stop = asyncio.Event()

        async def keep_publishing():
            while not stop.is_set():
                await publisher.publish(topic, "tick", None)
                await asyncio.sleep(0)

        task = asyncio.create_task(keep_publishing())
        sinks = []
        for since in (seqs[0] - 1, seqs[5], seqs[17], seqs[29]):
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
    old = await memory_bus.publish("public.x", "old", None)
    await asyncio.sleep(0)
    sink = Sink()
    seq, replayed, complete = await hub.join(sink, "public.x", None, sink.send)
    assert (seq, replayed, complete) == (old, 0, True)
    new = await memory_bus.publish("public.x", "new", None)
    await asyncio.sleep(0)
    assert sink.seqs() == [new]


async def test_join_past_the_buffer_reports_a_gap(memory_bus):
    hub = LiveHub(memory_bus, fanout)
    seqs = [await memory_bus.publish("public.x", "tick", None) for _ in range(60)]  # holds 50
    sink = Sink()
    _, _, complete = await hub.join(sink, "public.x", seqs[1], sink.send)
    assert not complete
    assert sink.seqs() == seqs[10:]


async def test_a_client_ahead_of_this_process_waits_for_it(memory_bus):
    """The client saw seq N on another process before this one heard it: no gap,
    no duplicate of N."""
    hub = LiveHub(memory_bus, fanout)
    other = Sink()
    await hub.join(other, "public.x", None, other.send)
    seen = await memory_bus.publish("public.x", "seen", None)  # not delivered here yet
    sink = Sink()
    seq, replayed, complete = await hub.join(sink, "public.x", seen, sink.send)
    assert complete and seq == seen and replayed == 0
    after = await memory_bus.publish("public.x", "after", None)
    await asyncio.sleep(0)
    assert sink.seqs() == [after]


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
    await asyncio.sleep(0)
    assert a.frames == [] and len(b.frames) == 1
    await hub.leave(b, "public.x")
    assert memory_bus.listened_topics() == 0


@pytest.mark.parametrize(("principal", "expected"), [("user:1", "sid"), ("anonymous", None)])
def test_resume_tokens_bind_session_to_principal(principal, expected):
    token = make_resume_token("sid", "user:1")
    assert read_resume_token(token, principal) == expected


def test_resume_tokens_cannot_be_forged():
    token = make_resume_token("sid", "anonymous")
    forged = token.replace("sid", "other", 1)
    assert read_resume_token(forged, "anonymous") is None


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
    grant = issue_grant(["meet.room1"], max_age=60)
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


def test_grant_prefixes_end_at_a_separator():
    from hub.topics import issue_grant, read_grant

    with pytest.raises(ValueError, match="must end with"):
        issue_grant(["meet.ab12*"])
    grant = read_grant(issue_grant(["meet.ab12.*", "council:7"]))
    assert grant.patterns == ("meet.ab12.*", "council:7")


async def test_live_subscriptions_end_when_their_grant_expires(memory_bus):
    import time

    from hub.clock import ManualClock
    from hub.live import RealtimeSession
    from hub.topics import issue_grant

    clock = ManualClock(start=time.time())
    sink = Sink()
    hub = LiveHub(memory_bus, fanout)
    session = RealtimeSession(hub=hub, handle=sink, send=sink.send, limits=_limits(), clock=clock)
    grant = issue_grant(["meet.room2"], max_age=60)
    await session.receive(
        json.dumps({"type": "subscribe", "id": "s", "topics": ["meet.room2"], "grant": grant})
    )
    assert await session.drop_expired_grants() == []
    clock.advance(61)
    assert await session.drop_expired_grants() == ["meet.room2"]
    assert json.loads(sink.frames[-1]) == {"type": "unsubscribed", "topics": ["meet.room2"]}
    assert hub.member_count("meet.room2") == 0
    await memory_bus.publish("meet.room2", "after", None)
    await asyncio.sleep(0)
    assert json.loads(sink.frames[-1])["type"] == "unsubscribed"


async def test_a_client_that_joined_before_the_first_event_misses_nothing(memory_bus):
    """Subscribed to a topic with no events yet (seq 0), then dropped: on return
    every event since the topic began is replayed, without a gap."""
    hub = LiveHub(memory_bus, fanout)
    seqs = [await memory_bus.publish("public.fresh", "tick", None) for _ in range(3)]
    sink = Sink()
    _, replayed, complete = await hub.join(sink, "public.fresh", 0, sink.send)
    assert complete and replayed == 3
    assert sink.seqs() == seqs


async def test_subscribing_again_with_a_fresh_grant_renews_it(memory_bus):
    import time

    from hub.clock import ManualClock
    from hub.live import RealtimeSession
    from hub.topics import issue_grant

    clock = ManualClock(start=time.time())
    sink = Sink()
    session = RealtimeSession(
        hub=LiveHub(memory_bus, fanout),
        handle=sink,
        send=sink.send,
        limits=_limits(),
        clock=clock,
    )
    for max_age in (60, 600):
        grant = issue_grant(["meet.room3"], max_age=max_age)
        await session.receive(
            json.dumps({"type": "subscribe", "id": "s", "topics": ["meet.room3"], "grant": grant})
        )
    clock.advance(61)
    assert await session.drop_expired_grants() == []
    clock.advance(600)
    assert await session.drop_expired_grants() == ["meet.room3"]
