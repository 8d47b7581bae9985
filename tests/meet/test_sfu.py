"""A meeting through the forwarding unit (topology "sfu") on ``/ws/meet/<code>/``:
the real ASGI app and PostgreSQL, the embedded forwarding unit and real aiortc
peers. Publishing and subscribing round trips, who may do what, the room that
moves from mesh to the unit past MESH_MAX, and sessions closed when people go."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from media import service
from signaling import consumers
from signaling.rules import Kind
from tests.meet.helpers import SDP, error_of, join, room_of
from tests.meet.test_consumer import Meet, cookie_of, meet, user
from tests.sfu.peers import Publisher, Subscriber, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


@pytest.fixture(autouse=True)
async def _setup(settings):
    # One process: the in-memory channel layer, this process's forwarding unit.
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.MEDIA_MODE = "embedded"
    settings.MEETINGS = {**settings.MEETINGS, "SFU": True, "FORCE_SFU": True}
    service._local = None
    consumers._SESSIONS.clear()
    consumers._CHECKED.clear()
    yield
    if service._local is not None:
        await service._local.close_all()
    service._local = None


@pytest.fixture
async def peers():
    """aiortc peers closed at the end of the test."""
    made = []

    def make(kind, *args, **kwargs):
        peer = kind(*args, **kwargs)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        with contextlib.suppress(Exception):
            await (peer.close() if isinstance(peer, Subscriber) else peer.pc.close())


def sessions(code: str, pid: str, kind: str | None = None) -> list:
    """The unit's live sessions of participant ``pid``."""
    owner = f"meet:{code}:{pid}"
    return [
        s
        for s in service.local_sfu().sessions.values()
        if s.owner == owner and (kind is None or s.kind == kind)
    ]


def offer_of(sdp: str) -> dict:
    return {"type": "offer", "sdp": sdp}


async def publish(socket, peer: Publisher) -> dict:
    reply = await socket.request(
        {"type": "sfu_publish", "description": offer_of(await peer.offer())}
    )
    assert reply["type"] == "sfu_answer", reply
    assert reply["description"]["type"] == "answer"
    await peer.answer(reply["description"]["sdp"])
    return reply


async def subscribe(socket, peer: Subscriber, source: str) -> dict:
    reply = await socket.request(
        {"type": "sfu_subscribe", "source": source, "description": offer_of(await peer.offer())}
    )
    assert reply["type"] == "sfu_answer", reply
    assert reply["source"] == source
    await peer.answer(reply["description"]["sdp"])
    return reply


async def view_where(socket, predicate, timeout: float = 5.0) -> dict:
    """The first room view (from now on) for which ``predicate`` holds."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await socket.until("room", timeout=timeout)
            if predicate(frame["room"]):
                return frame["room"]


def person(view: dict, pid: str) -> dict:
    return next(p for p in view["participants"] if p["pid"] == pid)


async def call(connect) -> tuple[Meet, object, str]:
    """A consultation with the clerk and one guest, admitted."""
    m = await meet(connect)
    guest, gid = await m.guest()
    await m.admit(gid, guest)
    await m.quiet(guest)
    return m, guest, gid


async def test_publish_and_subscribe_through_the_meeting_socket(connect, peers):
    m, guest, gid = await call(connect)
    assert m.host.joined["room"]["topology"] == "sfu"
    clerk = peers(Publisher)
    answer = await publish(m.host, clerk)
    assert [s.id for s in sessions(m.code, m.host_pid, "publish")] == [answer["session"]]
    # Everyone sees that the clerk sends through the unit, and subscribes.
    view = await view_where(guest, lambda v: person(v, m.host_pid)["published"] == 1)
    assert view["topology"] == "sfu"
    watcher = peers(Subscriber)
    reply = await subscribe(guest, watcher, m.host_pid)
    assert [s.id for s in sessions(m.code, gid, "subscribe")] == [reply["session"]]
    assert await wait_for(lambda: len(watcher.counters) >= 10, 20), "no frames forwarded"
    assert watcher.in_order()
    # And the other way round.
    resident = peers(Publisher)
    await publish(guest, resident)
    await view_where(m.host, lambda v: person(v, gid)["published"] == 1)
    back = peers(Subscriber)
    await subscribe(m.host, back, gid)
    assert await wait_for(lambda: len(back.counters) >= 10, 20)
    stored = await room_of(m.code)
    assert stored.participants[gid].published == 1


async def test_a_new_publication_replaces_the_old_and_close_stops_it(connect, peers):
    m, guest, gid = await call(connect)
    first = await publish(m.host, peers(Publisher))
    second = await publish(m.host, peers(Publisher))
    assert [s.id for s in sessions(m.code, m.host_pid, "publish")] == [second["session"]]
    assert first["session"] != second["session"]
    await view_where(guest, lambda v: person(v, m.host_pid)["published"] == 2)
    # A second subscription to the same person replaces the first, too.
    one = await subscribe(guest, peers(Subscriber), m.host_pid)
    two = await subscribe(guest, peers(Subscriber), m.host_pid)
    assert [s.id for s in sessions(m.code, gid, "subscribe")] == [two["session"]]
    assert one["session"] != two["session"]
    # Closing one's own publication: the others see it stopped, and the
    # subscriptions to it are closed with it.
    assert (await m.host.request({"type": "sfu_close", "session": second["session"]}))[
        "type"
    ] == "ok"
    await view_where(guest, lambda v: person(v, m.host_pid)["published"] == 0)
    assert sessions(m.code, m.host_pid) == []
    assert await wait_for(lambda: sessions(m.code, gid) == [], 5)
    # Someone else's session (or none) cannot be closed.
    mine = await publish(guest, peers(Publisher))
    refused = await error_of(m.host, {"type": "sfu_close", "session": mine["session"]})
    assert (refused["code"], refused["reason"]) == ("not_found", "no_such_session")
    refused = await error_of(m.host, {"type": "sfu_close", "session": "nothing-here"})
    assert refused["reason"] == "no_such_session"
    assert len(sessions(m.code, gid, "publish")) == 1


async def test_refusals(connect, peers, settings):
    m, guest, gid = await call(connect)
    good = offer_of(await peers(Publisher).offer())
    cases = [
        # Nobody to receive: the clerk publishes nothing yet.
        (
            guest,
            {"type": "sfu_subscribe", "source": m.host_pid, "description": good},
            ("not_found", "no_publisher"),
        ),
        (
            guest,
            {"type": "sfu_subscribe", "source": gid, "description": good},
            ("conflict", "not_on_yourself"),
        ),
        (
            guest,
            {"type": "sfu_subscribe", "source": "p0000000000", "description": good},
            ("not_found", "peer_unavailable"),
        ),
        # Checked as the signals of a mesh are.
        (
            guest,
            {"type": "sfu_publish", "description": {"type": "answer", "sdp": good["sdp"]}},
            ("bad_sdp", "description_type"),
        ),
        (
            guest,
            {"type": "sfu_publish", "description": offer_of("v=0\r\nnonsense\r\n")},
            ("bad_sdp", "sdp_bad_line"),
        ),
        (
            guest,
            {"type": "sfu_publish", "description": offer_of(SDP + "a=x:" + "y" * 40_000 + "\r\n")},
            ("bad_sdp", "sdp_too_large"),
        ),
        # What the unit itself refuses: an offer it cannot read or forward.
        (guest, {"type": "sfu_publish", "description": offer_of(SDP)}, ("bad_sdp", None)),
    ]
    for socket, message, (code, reason) in cases:
        refused = await error_of(socket, message)
        assert refused["code"] == code, (message["type"], refused)
        if reason:
            assert refused["reason"] == reason, refused
        assert refused["message"]
    assert sessions(m.code, gid) == []
    assert (await room_of(m.code)).participants[gid].published == 0

    # Someone in the queue does nothing through the unit.
    waiting, wid = await m.guest("Ewa")
    refused = await error_of(waiting, {"type": "sfu_publish", "description": good})
    assert (refused["code"], refused["reason"]) == ("forbidden", "not_admitted")
    await publish(m.host, peers(Publisher))
    refused = await error_of(
        waiting, {"type": "sfu_subscribe", "source": m.host_pid, "description": good}
    )
    assert refused["reason"] == "not_admitted"
    assert sessions(m.code, wid) == []


async def test_a_mesh_room_does_not_use_the_unit(connect, peers, settings):
    settings.MEETINGS = {**settings.MEETINGS, "FORCE_SFU": False}
    m, guest, gid = await call(connect)
    assert m.host.joined["room"]["topology"] == "mesh"
    good = offer_of(await peers(Publisher).offer())
    refused = await error_of(m.host, {"type": "sfu_publish", "description": good})
    assert (refused["code"], refused["reason"]) == ("conflict", "sfu_off")
    refused = await error_of(
        guest, {"type": "sfu_subscribe", "source": m.host_pid, "description": good}
    )
    assert (refused["code"], refused["reason"]) == ("conflict", "sfu_off")


async def test_without_the_floor_one_only_receives_and_a_viewer_never_sends(connect, peers):
    m = await meet(connect, Kind.PUBLIC)
    guest, gid = await m.guest()
    viewer = await connect(m.code, guest="Widz")
    vid = (await join(viewer, watch_only=True))["you"]
    good = offer_of(await peers(Publisher).offer())
    for socket, reason in ((guest, "needs_floor"), (viewer, "not_allowed")):
        refused = await error_of(socket, {"type": "sfu_publish", "description": good})
        assert (refused["code"], refused["reason"]) == ("forbidden", reason)
    await publish(m.host, peers(Publisher))
    for socket in (guest, viewer):
        await subscribe(socket, peers(Subscriber), m.host_pid)
    # Given the floor, the guest sends; when it is taken back, the unit stops
    # forwarding them at once (the session is closed), and the others see it.
    assert (await m.host.request({"type": "floor", "who": gid, "give": True}))["type"] == "ok"
    await view_where(guest, lambda v: person(v, gid)["floor"])
    await publish(guest, peers(Publisher))
    await subscribe(viewer, peers(Subscriber), gid)
    assert len(sessions(m.code, gid, "publish")) == 1
    assert (await m.host.request({"type": "floor", "who": gid, "give": False}))["type"] == "ok"
    await view_where(viewer, lambda v: person(v, gid)["published"] == 0)
    assert await wait_for(
        lambda: sessions(m.code, gid) != [] and not sessions(m.code, gid, "publish"), 5
    )
    # The viewer's subscription to the guest went with it; the one to the host stays.
    assert await wait_for(lambda: len(sessions(m.code, vid, "subscribe")) == 1, 5)


async def test_sessions_are_closed_when_people_leave_or_are_removed(connect, peers):
    m, guest, gid = await call(connect)
    await publish(m.host, peers(Publisher))
    await publish(guest, peers(Publisher))
    await view_where(m.host, lambda v: person(v, gid)["published"] == 1)
    await subscribe(guest, peers(Subscriber), m.host_pid)
    await subscribe(m.host, peers(Subscriber), gid)
    assert len(sessions(m.code, gid)) == 2
    # Removed: all of the guest's sessions end, and the clerk's subscription to them.
    assert (await m.host.request({"type": "remove", "who": gid}))["type"] == "ok"
    assert await wait_for(lambda: sessions(m.code, gid) == [], 5)
    assert await wait_for(lambda: sessions(m.code, m.host_pid, "subscribe") == [], 5)
    assert len(sessions(m.code, m.host_pid, "publish")) == 1
    # A second guest, who leaves.
    other, oid = await m.guest("Ewa")
    await m.admit(oid, other)
    await subscribe(other, peers(Subscriber), m.host_pid)
    assert len(sessions(m.code, oid)) == 1
    assert (await other.request({"type": "leave"}))["type"] == "ok"
    assert await wait_for(lambda: sessions(m.code, oid) == [], 5)
    # The socket drops (a network blip): the sessions stay for the reconnect.
    await publish(m.host, peers(Publisher))
    await m.host.disconnect()
    await asyncio.sleep(0.3)
    assert len(sessions(m.code, m.host_pid, "publish")) == 1
    assert consumers._SESSIONS


async def test_a_room_outgrows_the_mesh_and_everyone_is_told(connect, peers, settings):
    settings.MEETINGS = {**settings.MEETINGS, "FORCE_SFU": False, "MESH_MAX": 2}
    staff = [await user("clerk") for _ in range(2)]
    host_account = await user("clerk")
    from tests.meet.helpers import create_meeting

    meeting, _ = await create_meeting(Kind.BRIEFING, "Narada", host_account)
    from channels.db import database_sync_to_async

    await database_sync_to_async(lambda: meeting.invited.set(staff))()
    host = await connect(meeting.code, cookie=await cookie_of(host_account))
    await join(host)
    second = await connect(meeting.code, cookie=await cookie_of(staff[0]))
    joined = await join(second)
    assert joined["room"]["topology"] == "mesh"
    await view_where(host, lambda v: len(v["participants"]) == 2 and v["topology"] == "mesh")
    third = await connect(meeting.code, cookie=await cookie_of(staff[1]))
    joined = await join(third)
    assert joined["room"]["topology"] == "sfu"  # the third is past a mesh of 2
    for socket in (host, second):
        await view_where(socket, lambda v: v["topology"] == "sfu")
    # Back to two: still through the unit (sticky).
    assert (await third.request({"type": "leave"}))["type"] == "ok"
    view = await view_where(host, lambda v: len(v["participants"]) == 2)
    assert view["topology"] == "sfu"
    await publish(host, peers(Publisher))


async def test_sfu_ready_is_relayed_to_the_other_participant(connect):
    m, guest, gid = await call(connect)
    reply = await guest.request({"type": "sfu_ready", "to": m.host_pid})
    assert reply["type"] == "ok"
    told = await m.host.until("sfu_ready")
    assert told["from"] == gid
    refused = await error_of(guest, {"type": "sfu_ready", "to": "p0000000000"})
    assert refused["reason"] == "peer_unavailable"


def bus_listeners(topic: str) -> int:
    """This process's listeners of ``topic`` on the hub's bus."""
    from hub.bus import get_bus

    state = get_bus()._topics.get(topic)
    return len(state.listeners) if state is not None else 0


async def test_media_reconnect_on_the_room_topic_reaches_everyone_in_the_call(connect):
    """What a media worker's death publishes (``media.reconnect`` on the
    topic of the room ``meet-<code>``) reaches every admitted participant's
    socket as a ``notice`` ``media_reconnect``; not the queue, not for
    another room or another event; and every way out removes the socket's
    bus listener."""
    from channels.db import database_sync_to_async

    from hub.events import apublish
    from media.registry import room_topic, tell_reconnect

    m, guest, gid = await call(connect)
    queued, _ = await m.guest("Anna Nowak")  # waits in the queue
    room = f"meet-{m.code}"
    topic = room_topic(room)
    assert await wait_for(lambda: bus_listeners(topic) == 3, 5)
    await m.quiet(guest, queued)

    # Other events on the room's topic, and another room's, say nothing.
    await apublish(topic, "media.speaker", {"room": room, "owner": f"meet:{m.code}:{gid}"})
    await tell_reconnect("meet-other", "meet-a")
    await tell_reconnect(room, "meet-a")
    told = {"worker": "meet-a", "reason": "worker_lost"}
    for socket in (m.host, guest):
        notice = await socket.until("notice")
        assert notice == {"type": "notice", "event": "media_reconnect", "detail": told}
    await tell_reconnect(room, "meet-b", reason="worker_stopped")
    for socket in (m.host, guest):
        notice = await socket.until("notice")
        assert notice["detail"] == {"worker": "meet-b", "reason": "worker_stopped"}
        assert not [f for f in await socket.drain() if f["type"] == "notice"]
    assert not [f for f in await queued.drain() if f["type"] == "notice"]

    # Every way out removes the listener: leaving, being replaced by a new
    # window, a dropped socket.
    assert (await guest.request({"type": "leave"}))["type"] == "ok"
    assert await wait_for(lambda: bus_listeners(topic) == 2, 5)
    clerk = await database_sync_to_async(lambda: m.meeting.owner)()
    again = await connect(m.code, cookie=await cookie_of(clerk))
    # The clerk's second window: the first is told "replaced".
    await join(again, rejoin=m.host.joined["rejoin_token"])
    assert (await m.host.until("left"))["reason"] == "replaced"
    assert await wait_for(lambda: bus_listeners(topic) == 2, 5)
    await tell_reconnect(room, "meet-c")
    assert (await again.until("notice"))["event"] == "media_reconnect"
    for socket in (again, queued, m.host, guest):
        await socket.disconnect()
    assert await wait_for(lambda: bus_listeners(topic) == 0, 5)


async def test_a_mesh_room_is_not_told_to_reconnect(connect, settings):
    """Peer to peer, nobody has a connection to the unit: nothing to redo."""
    from media.registry import room_topic, tell_reconnect

    settings.MEETINGS = {**settings.MEETINGS, "FORCE_SFU": False}
    m, guest, gid = await call(connect)
    assert m.host.joined["room"]["topology"] == "mesh"
    topic = room_topic(f"meet-{m.code}")
    assert await wait_for(lambda: bus_listeners(topic) == 2, 5)
    await m.quiet(guest)
    await tell_reconnect(f"meet-{m.code}", "meet-a")
    for socket in (m.host, guest):
        assert not [f for f in await socket.drain(0.5) if f["type"] == "notice"]
