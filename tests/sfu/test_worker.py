"""Media workers (worker mode) with real parts: Redis, the Redis channel
layer, ``python -m media.worker`` processes and aiortc peers over loopback.

A room goes to the least-loaded worker as the workers announce themselves;
requests and refusals travel over the channel layer; a worker killed with
SIGKILL is noticed within its TTL, its room's participants are told to
reconnect, and the stream's next publish and subscribe land on the other
worker with media flowing again.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import time

import pytest

from media import service
from media.registry import (
    Registry,
    Unavailable,
    decode_error,
    encode_error,
    get_registry,
    reset_registry,
    room_topic,
    session_id,
    split_session,
    worker_channel,
)
from media.sfu.room import BadOffer, Busy, Full, MediaError, NotFound
from media.worker import MediaWorker
from tests.conftest import PYTHON, ROOT
from tests.sfu.peers import Publisher, Subscriber

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HEARTBEAT = 0.5
TTL = 3.0
RPC_TIMEOUT = 10.0


async def until(predicate, timeout: float, step: float = 0.05):
    """Poll a (sync or async) predicate until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(step)


@pytest.fixture
async def worker_mode(settings, redis_url, key_prefix):
    """This test's settings in worker mode on its own Redis key prefix, and
    the environment for its worker processes (the same settings)."""
    settings.MEDIA_MODE = "worker"
    settings.REDIS_PREFIX = key_prefix
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url], "prefix": f"{key_prefix}:asgi", "expiry": 60},
        }
    }
    settings.MEDIA = {
        **settings.MEDIA,
        "HEARTBEAT_SECONDS": HEARTBEAT,
        "WORKER_TTL": TTL,
        "RPC_TIMEOUT": RPC_TIMEOUT,
    }
    reset_registry()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "hub.settings",
        "HUB_ENV": "development",
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": key_prefix,
        "MEDIA_MODE": "worker",
        "MEDIA_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "MEDIA_WORKER_TTL": str(TTL),
        "MEDIA_CONNECT_TIMEOUT": "120",
        "LOG_LEVEL": "INFO",
    }
    yield env
    from hub.bus import _bus

    if _bus is not None:
        await _bus.close()
    await get_registry().close()
    reset_registry()


class WorkerProcesses:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, worker_id: str) -> None:
        argv = [PYTHON, "-m", "media.worker", "--id", worker_id]
        self.procs[worker_id] = subprocess.Popen(argv, cwd=ROOT, env=self.env)

    async def up(self, *ids: str) -> None:
        """Start the workers ``ids`` and wait until they have all announced."""
        for worker_id in ids:
            self.start(worker_id)
        await self.announced(*ids)

    async def announced(self, *ids: str, timeout: float = 60) -> None:
        registry = get_registry()

        async def all_up():
            for worker_id, proc in self.procs.items():
                assert proc.poll() is None, f"media worker {worker_id} exited {proc.returncode}"
            return all([await registry.alive(i) for i in ids])

        assert await until(all_up, timeout, step=0.1), f"workers {ids} did not announce"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def worker_processes(worker_mode):
    processes = WorkerProcesses(worker_mode)
    yield processes
    processes.stop()


async def listen_events(topic: str) -> list[dict]:
    from hub.bus import get_bus

    events: list[dict] = []
    await get_bus().listen(topic, lambda _t, _s, frame: events.append(json.loads(frame)))
    return events


def reconnects(events: list[dict]) -> list[dict]:
    return [e["data"] for e in events if e["type"] == "media.reconnect"]


async def close_all(peers: list) -> None:
    for peer in peers:
        await (peer.close() if isinstance(peer, Subscriber) else peer.pc.close())


async def peers_of(worker_id: str) -> int:
    snap = await get_registry().snapshot()
    return next((w.peers for w in snap.workers if w.id == worker_id), -1)


# --- The wire, pure ----------------------------------------------------------------


def test_session_ids_carry_their_worker():
    sid = session_id("wa-1", "Ab_c-9")
    assert sid == "wa-1.Ab_c-9"
    assert split_session(sid) == ("wa-1", "Ab_c-9")
    for other in ("Ab_c-9", "wa.", ".x", "WA.x", "a.b.c", "w" * 41 + ".x"):
        assert split_session(other) is None


def test_refusals_cross_the_wire_as_the_same_errors():
    for error in (
        Busy("stream_busy", "already published"),
        BadOffer("sdp_malformed"),
        NotFound("no_publisher", "nothing"),
        Full("peers", "limit"),
        Unavailable("media_timeout", "slow"),
    ):
        back = decode_error(json.loads(json.dumps(encode_error(error))))
        assert type(back) is type(error)
        assert (back.status, back.reason, back.detail) == (error.status, error.reason, error.detail)
    odd = MediaError("media_worker_error", "boom")
    odd.status = 500
    back = decode_error(encode_error(odd))
    assert type(back) is MediaError and back.status == 500
    assert isinstance(decode_error("garbage"), Unavailable)
    assert decode_error({"class": "NoSuchClass", "reason": "r"}).status == 400


def test_room_topics_are_valid_topics():
    from hub.envelope import TOPIC_RE

    assert room_topic("council-2025-05") == "media.council-2025-05"
    for name in ("Großes Zimmer", "A" * 200, "x/y"):
        assert TOPIC_RE.match(room_topic(name)), name
    assert worker_channel("wa-1") == "media.worker.wa-1"


# --- The web side against workers that do not answer, or in this process --------------


async def test_a_worker_that_does_not_answer_gives_503_and_is_told_to_drop_it(
    worker_mode, settings
):
    from channels.layers import get_channel_layer

    settings.MEDIA = {**settings.MEDIA, "RPC_TIMEOUT": 0.5}
    registry = get_registry()
    await registry.announce("wz", {"peers": 0, "max_peers": 10, "max_bitrate_kbps": 1000})
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await service.publish("quiet", "v=0\r\n", owner="p")
    elapsed = time.monotonic() - started
    assert caught.value.status == 503 and caught.value.reason == "media_timeout"
    assert 0.5 <= elapsed < 3, elapsed
    assert await registry.assignment("quiet") == "wz"
    layer = get_channel_layer()
    request = await asyncio.wait_for(layer.receive(worker_channel("wz")), 5)
    cancel = await asyncio.wait_for(layer.receive(worker_channel("wz")), 5)
    assert request["op"] == "publish" and request["stream"] == "quiet"
    assert request["deadline"] <= time.time() + 1
    assert cancel == {"type": "media.rpc", "op": "cancel", "id": request["id"]}


async def test_a_worker_that_goes_silent_while_asked_is_given_up_within_its_ttl(
    worker_mode, settings
):
    settings.MEDIA = {**settings.MEDIA, "RPC_TIMEOUT": 30.0}
    registry = get_registry()
    events = await listen_events(room_topic("dying"))
    await registry.announce("wz", {"peers": 0, "max_peers": 10, "max_bitrate_kbps": 1000})
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:  # the only worker died: none is left
        await service.publish("dying", "v=0\r\n", owner="p")
    elapsed = time.monotonic() - started
    assert (caught.value.status, caught.value.reason) == (503, "no_media_worker")
    assert elapsed < TTL + 2 * HEARTBEAT + 1.5, elapsed  # not the 30 s RPC timeout
    assert await until(lambda: reconnects(events), 5) == [
        {"room": "dying", "worker": "wz", "reason": "worker_lost"}
    ]
    assert await registry.assignment("dying") is None


async def test_with_no_worker_running_media_is_unavailable(worker_mode):
    with pytest.raises(Unavailable) as caught:
        await service.publish("nobody", "v=0\r\n", owner="p")
    assert (caught.value.status, caught.value.reason) == (503, "no_media_worker")
    with pytest.raises(NotFound):  # a viewer of a stream nobody carries: nothing to watch
        await service.subscribe("nobody", "v=0\r\n", owner="v")
    assert await service.owner_of("nobody", "wz.abc") is None
    assert await service.close("wz.abc") is False
    assert await service.close("not-a-worker-session") is False


async def test_a_worker_sweeps_dead_workers_rooms_and_ends_rooms_placed_elsewhere(worker_mode):
    registry = get_registry()
    worker = MediaWorker("wi", registry=Registry.from_settings())
    events = await listen_events(room_topic("earlier"))
    await registry.assign("earlier", "wi", expected=[None])  # of an earlier "wi" that died
    await worker.start()
    try:
        # A restart under the same id lets go of the rooms of its previous life.
        assert await until(lambda: reconnects(events), 5) == [
            {"room": "earlier", "worker": "wi", "reason": "worker_lost"}
        ]
        assert await registry.assignment("earlier") is None
        # Nobody else may start as "wi" while it runs.
        with pytest.raises(RuntimeError, match="running already"):
            await MediaWorker("wi", registry=registry).start()

        # An orphan: assigned to a worker that never announced itself (or died).
        events = await listen_events(room_topic("orphan"))
        await registry.assign("orphan", "wdead", expected=[None])
        assert await until(lambda: reconnects(events), 5)
        assert reconnects(events) == [
            {"room": "orphan", "worker": "wdead", "reason": "worker_lost"}
        ]
        assert await registry.assignment("orphan") is None

        # Fencing: a room of this worker that Redis says is elsewhere ends here.
        publisher = Publisher(audio=False)
        answer = await service.publish("fenced", await publisher.offer(), owner="p")
        assert answer.session.startswith("wi.")
        assert "fenced" in worker.sfu.rooms
        done, _ = await registry.assign("fenced", "welse", expected=["wi"])
        assert done
        assert await until(lambda: "fenced" not in worker.sfu.rooms, 5)
        assert await registry.assignment("fenced") != "wi"
        await publisher.pc.close()
    finally:
        await worker.shutdown()
    assert not await registry.alive("wi")


async def test_a_publish_given_up_by_its_caller_leaves_no_ghost_publisher(worker_mode, settings):
    settings.MEDIA = {**settings.MEDIA, "RPC_TIMEOUT": 0.5}
    worker = MediaWorker("wi", registry=Registry.from_settings())
    original = worker.sfu.publish

    async def slow_publish(*args, **kwargs):
        await asyncio.sleep(1.0)  # past the caller's timeout
        return await original(*args, **kwargs)

    worker.sfu.publish = slow_publish
    await worker.start()
    peers = [Publisher(audio=False), Publisher(audio=False)]
    try:
        with pytest.raises(Unavailable) as caught:
            await service.publish("ghost", await peers[0].offer(), owner="p")
        assert caught.value.reason == "media_timeout"
        # The worker finishes, sees the cancel, and ends what it made.
        assert await until(lambda: not worker.sfu.sessions and not worker.busy["ghost"], 15)
        worker.sfu.publish = original
        settings.MEDIA = {**settings.MEDIA, "RPC_TIMEOUT": RPC_TIMEOUT}
        # The publisher's retry is not refused as "stream busy" by its own ghost.
        answer = await service.publish("ghost", await peers[1].offer(), owner="p")
        assert answer.session.startswith("wi.")
        assert len(worker.sfu.sessions) == 1
    finally:
        await close_all(peers)
        await worker.shutdown()


# --- Real worker processes -------------------------------------------------------------


async def test_rooms_go_to_the_least_loaded_worker_and_refusals_come_back(
    worker_processes, worker_mode
):
    await worker_processes.up("wa", "wb")
    registry = get_registry()
    offers = []  # publishers that only negotiate: load without media

    async def publish(stream: str) -> service.Answer:
        publisher = Publisher(audio=False)
        offers.append(publisher)
        return await service.publish(stream, await publisher.offer(), owner=f"p-{stream}")

    async def subscribe(stream: str) -> service.Answer:
        subscriber = Subscriber(audio=False)
        offers.append(subscriber)
        return await service.subscribe(stream, await subscriber.offer(), owner=f"v-{stream}")

    try:
        one = await publish("one")  # both empty: the lowest id
        assert split_session(one.session)[0] == "wa"
        assert await peers_of("wa") == 1  # announced before the answer
        two = await publish("two")
        assert split_session(two.session)[0] == "wb"
        for _ in range(2):
            assert split_session((await subscribe("one")).session)[0] == "wa"
        assert await peers_of("wa") == 3
        assert await peers_of("wb") == 1
        assert split_session((await publish("three")).session)[0] == "wb"  # 1 < 3
        assert await peers_of("wb") == 2
        for _ in range(2):
            assert split_session((await subscribe("two")).session)[0] == "wb"
        assert await peers_of("wb") == 4
        four = await publish("four")  # 3 < 4
        assert split_session(four.session)[0] == "wa"

        # Refusals come back as the same errors.
        with pytest.raises(Busy) as busy:
            await publish("one")
        assert (busy.value.status, busy.value.reason) == (409, "stream_busy")
        with pytest.raises(BadOffer) as bad:
            await service.publish("five", "v=0\r\nnot an offer\r\n", owner="p")
        assert bad.value.status == 400
        assert await registry.assignment("five") is None  # a refused room is let go
        with pytest.raises(NotFound):
            await subscribe("five")

        # owner_of and close find the worker from the session id.
        assert await service.owner_of("one", one.session) == "p-one"
        assert await service.owner_of("two", one.session) is None
        assert await service.owner_of("one", "wa.nosuchsession") is None
        assert await service.close(four.session) is True
        assert await service.close(four.session) is False
        assert await until(lambda: registry.assignment("four"), 5, step=0.1) is None

        # SIGTERM: the worker tells its rooms to reconnect and withdraws at once.
        events = await listen_events(room_topic("one"))
        worker_processes.procs["wa"].send_signal(signal.SIGTERM)
        assert worker_processes.procs["wa"].wait(timeout=20) == 0
        assert not await registry.alive("wa")
        assert await until(lambda: reconnects(events), 5) == [
            {"room": "one", "worker": "wa", "reason": "worker_stopped"}
        ]
        assert await registry.assignment("one") is None
        again = await publish("one")  # placed on the worker left
        assert split_session(again.session)[0] == "wb"
    finally:
        await close_all(offers)


async def test_a_worker_killed_with_sigkill_its_stream_is_placed_again_and_media_flows(
    worker_processes, worker_mode
):
    await worker_processes.up("wa", "wb")
    registry = get_registry()
    stream = "killed-" + secrets.token_hex(3)
    events = await listen_events(room_topic(stream))
    peers: list = []
    try:
        publisher = Publisher(audio=False)
        peers.append(publisher)
        answer = await service.publish(stream, await publisher.offer(), owner="p")
        await publisher.answer(answer.sdp)
        carrier = split_session(answer.session)[0]
        other = {"wa": "wb", "wb": "wa"}[carrier]
        viewer = Subscriber(audio=False)
        peers.append(viewer)
        watch = await service.subscribe(stream, await viewer.offer(), owner="v")
        await viewer.answer(watch.sdp)
        assert split_session(watch.session)[0] == carrier
        assert await until(lambda: len(viewer.counters) >= 15, 30), "no media before the kill"

        killed = time.monotonic()
        worker_processes.procs[carrier].send_signal(signal.SIGKILL)

        # The publisher posts again as a WHIP client whose ICE failed would,
        # until it is answered: a dead worker's room gives 503, never 409.
        refusals = []
        while True:
            publisher = Publisher(audio=False)
            peers.append(publisher)
            try:
                answer = await service.publish(stream, await publisher.offer(), owner="p")
                break
            except MediaError as error:
                refusals.append((round(time.monotonic() - killed, 2), error.status, error.reason))
                assert error.status == 503, refusals
                assert time.monotonic() - killed < 30, refusals
                await asyncio.sleep(0.2)
        placed = time.monotonic()
        assert split_session(answer.session)[0] == other
        await publisher.answer(answer.sdp)
        viewer = Subscriber(audio=False)
        peers.append(viewer)
        watch = await service.subscribe(stream, await viewer.offer(), owner="v")
        assert split_session(watch.session)[0] == other
        await viewer.answer(watch.sdp)
        assert await until(lambda: len(viewer.counters) >= 15, 30), "no media after the kill"
        flowing = time.monotonic()
        assert viewer.in_order()
        assert await registry.assignment(stream) == other

        # The participants were told to reconnect, once.
        told = await until(lambda: reconnects(events), 10)
        assert told == [{"room": stream, "worker": carrier, "reason": "worker_lost"}]
        # The dead worker's announcement is gone, and from the index too.
        assert not await registry.redis.exists(registry.key("worker", carrier))
        assert carrier not in {w.id for w in (await registry.snapshot()).workers}

        async def pruned():
            return not await registry.redis.sismember(registry.index_key, carrier)

        assert await until(pruned, 5)
        print(
            f"\nSIGKILL → placed again {placed - killed:.2f} s, media flowing "
            f"{flowing - killed:.2f} s; refusals meanwhile {refusals}"
        )
        assert flowing - killed < 20
    finally:
        await close_all(peers)
