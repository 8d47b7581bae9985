"""``/ws/meet/<code>/`` through the real ASGI app (WebsocketCommunicator) and
PostgreSQL: bad input changes nothing, reconnect within the grace, the
moderator controls, and what the office keeps (the log, the chat)."""

from __future__ import annotations

import secrets
import time

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.utils import translation

from hub.asgi import application
from hub.auth import issue_guest_token
from hub.clock import ManualClock
from signaling.consumers import REASONS, MeetConsumer
from signaling.rules import Kind, Status
from tests.meet.helpers import (
    CANDIDATE,
    ORIGIN,
    SDP,
    Closed,
    chat_of,
    create_meeting,
    error_of,
    join,
    log_of,
    make_user,
    open_socket,
    room_of,
    session_cookie,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _memory_layer(settings):
    # One process: the in-memory channel layer (channels_redis's teardown waits
    # on a blocking BZPOPMIN). tests/meet/test_multiprocess.py uses Redis.
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def clock(monkeypatch):
    """Meeting time (leases, the reconnect grace, the chat bucket) that only
    moves when the test says so."""
    manual = ManualClock()
    monkeypatch.setattr(MeetConsumer, "clock", manual)
    return manual


def text(reason: str, **params) -> str:
    """A reason's human text as the sockets send it (Polish first)."""
    with translation.override(django_settings.LANGUAGE_CODE):
        rendered = str(REASONS[reason])
    return rendered % params if params else rendered


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def user(*groups: str):
    return await sync_to_async(make_user)(unique("u"), *groups)


async def cookie_of(account=None, *, host_of: str | None = None):
    return await sync_to_async(session_cookie)(account, host_of=host_of)


class Meet:
    """A meeting with its host joined."""

    def __init__(self, connect, meeting, host, joined):
        self.connect = connect
        self.meeting = meeting
        self.code = meeting.code
        self.host = host
        self.host_pid = joined["you"]

    async def guest(self, name: str = "Jan Kowalski", **kwargs):
        socket = await self.connect(self.code, guest=name, **kwargs)
        reply = await join(socket)
        return socket, reply["you"]

    async def resident(self):
        """A signed-in resident (no staff role): a plain participant."""
        socket = await self.connect(self.code, cookie=await cookie_of(await user()))
        reply = await join(socket)
        return socket, reply["you"]

    async def admit(self, pid: str, socket) -> None:
        assert (await self.host.request({"type": "admit", "who": pid}))["type"] == "ok"
        notice = await socket.until("notice")
        assert notice["event"] == "admitted"
        assert (await socket.until("room"))["room"]["status"] == "admitted"

    async def quiet(self, *sockets) -> None:
        """Read every frame already on its way, so that later checks of
        "nothing arrived" are about what comes next."""
        for socket in (self.host, *sockets):
            await socket.drain()


async def meet(connect, kind: Kind = Kind.CONSULTATION) -> Meet:
    clerk = await user("clerk")
    meeting, _ = await create_meeting(kind, "Spotkanie", clerk)
    host = await connect(meeting.code, cookie=await cookie_of(clerk))
    joined = await join(host)
    assert joined["room"]["role"] == "host"
    return Meet(connect, meeting, host, joined)


def controls(target: str, message_id: int = 1) -> list[dict]:
    """Every moderator control, aimed at ``target``."""
    return [
        {"type": "admit", "who": target},
        {"type": "deny", "who": target},
        {"type": "send_back", "who": target},
        {"type": "mute", "who": target, "audio": True, "video": True},
        {"type": "remove", "who": target},
        {"type": "end"},
        {"type": "lock", "locked": True},
        {"type": "hand_over", "who": target},
        {"type": "call_next"},
        {"type": "floor", "who": target, "give": True},
        {"type": "approve", "message": message_id, "publish": True},
    ]


# --- Bad input ------------------------------------------------------------------


async def test_a_queued_guest_controls_nothing(connect):
    m = await meet(connect)
    guest, guest_pid = await m.guest()
    other, other_pid = await m.guest("Anna Nowak")
    await m.quiet(guest, other)
    before, log_before = await room_of(m.code), await log_of(m.code)
    for target in (m.host_pid, other_pid, guest_pid):
        for message in controls(target):
            error = await error_of(guest, message)
            assert error["code"] == "forbidden", (message, error)
            assert error["message"] == text("not_admitted"), (message, error)
    assert await room_of(m.code) == before
    assert await log_of(m.code) == log_before
    assert await m.host.nothing() and await other.nothing()


@pytest.mark.parametrize("kind", [Kind.CONSULTATION, Kind.PUBLIC])
async def test_admitted_guests_and_participants_control_nothing(connect, kind):
    m = await meet(connect, kind)
    guest, guest_pid = await m.guest()
    resident, resident_pid = await m.resident()
    if kind is Kind.CONSULTATION:
        await m.admit(guest_pid, guest)
        await m.admit(resident_pid, resident)
    # A question waiting for a moderator (public) or a published message.
    assert (await resident.request({"type": "chat", "text": "Pytanie?"}))["type"] == "ok"
    message_id = (await chat_of(m.code))[0]["id"]
    await m.quiet(guest, resident)
    before, log_before = await room_of(m.code), await log_of(m.code)
    assert before.participants[guest_pid].status is Status.ADMITTED
    assert before.participants[resident_pid].role.value == "participant"
    chat_before = await chat_of(m.code)
    for actor, others in ((guest, (resident_pid, m.host_pid)), (resident, (guest_pid,))):
        for target in others:
            for message in controls(target, message_id):
                error = await error_of(actor, message)
                assert error["code"] == "forbidden", (message, error)
                assert error["message"] == text("not_allowed"), (message, error)
    assert await room_of(m.code) == before
    assert await log_of(m.code) == log_before
    assert await chat_of(m.code) == chat_before
    assert await m.host.nothing()
    assert await guest.nothing() and await resident.nothing()


async def test_bad_descriptions_and_candidates_are_refused_with_a_reason(connect):
    m = await meet(connect)
    guest, guest_pid = await m.guest()
    limit = django_settings.MEETINGS["MAX_SDP_BYTES"]
    # Queued: no negotiation yet.
    error = await error_of(
        guest, {"type": "signal", "to": m.host_pid, "description": {"type": "offer", "sdp": SDP}}
    )
    assert error["code"] == "forbidden" and error["message"] == text("not_admitted")
    await m.admit(guest_pid, guest)
    await m.quiet(guest)

    def offer(sdp: str, kind: str = "offer") -> dict:
        return {"type": "signal", "to": guest_pid, "description": {"type": kind, "sdp": sdp}}

    def candidate(**fields) -> dict:
        return {"type": "signal", "to": guest_pid, "candidate": {**CANDIDATE, **fields}}

    padding = "a=x-padding:" + "x" * 1000 + "\r\n"
    huge = SDP + padding * (limit // len(padding) + 1)
    assert len(huge.encode()) > limit
    cases = [
        (offer(huge), "bad_sdp", text("sdp_too_large", limit=limit)),
        (offer("<html><body>hello</body></html>"), "bad_sdp", text("sdp_not_sdp")),
        (offer("hello\r\nworld\r\n"), "bad_sdp", text("sdp_not_sdp")),
        (offer("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"), "bad_sdp", text("sdp_no_media")),
        (offer(SDP + "<script>alert(1)</script>\r\n"), "bad_sdp", text("sdp_bad_line")),
        (offer(SDP, "pranswer"), "bad_sdp", text("description_type")),
        (
            candidate(candidate="candidate:1 1 udp 1 evil;rm -rf 1 typ host"),
            "bad_candidate",
            text("candidate_malformed"),
        ),
        (
            candidate(candidate="<img src=x onerror=alert(1)>"),
            "bad_candidate",
            text("candidate_malformed"),
        ),
        (
            candidate(usernameFragment="<b>x</b>\r\na=evil"),
            "bad_candidate",
            text("candidate_malformed"),
        ),
        (candidate(sdpMid="0 1"), "bad_candidate", text("candidate_bad_mid")),
        (candidate(sdpMLineIndex=99), "bad_candidate", text("candidate_bad_index")),
        (candidate(sdpMid=None, sdpMLineIndex=None), "bad_candidate", text("candidate_no_section")),
        ({"type": "signal", "to": guest_pid}, "bad_message", text("one_payload")),
        (
            {**offer(SDP), "candidate": CANDIDATE},
            "bad_message",
            text("one_payload"),
        ),
        (offer(SDP) | {"to": m.host_pid}, "not_found", text("peer_unavailable")),
        (offer(SDP) | {"to": "p0123456789"}, "not_found", text("peer_unavailable")),
        (offer(SDP) | {"to": "host"}, "bad_message", None),
    ]
    for message, code, reason in cases:
        error = await error_of(m.host, message)
        assert error["code"] == code, (message, error)
        if reason is not None:
            assert error["message"] == reason, (message, error)
    assert str(limit) in text("sdp_too_large", limit=limit)
    # Programs get the reason as a key too.
    assert (await error_of(m.host, offer(huge)))["reason"] == "sdp_too_large"
    assert (await error_of(m.host, candidate(sdpMid="0 1")))["reason"] == "candidate_bad_mid"
    assert await guest.nothing()
    # What a browser sends passes: an offer, a candidate, the end of candidates.
    for message in (
        offer(SDP),
        candidate(),
        candidate(usernameFragment="r7Xq"),
        candidate(candidate="", sdpMid="0"),
    ):
        assert (await m.host.request(message))["type"] == "ok"
        relayed = await guest.until("signal")
        assert relayed["from"] == m.host_pid
        assert relayed.get("description") == message.get("description")
        assert relayed.get("candidate") == (
            {k: v for k, v in message["candidate"].items() if v is not None}
            if "candidate" in message
            else None
        )


async def test_chat_floods_are_rate_limited(connect, clock, settings):
    settings.MEETINGS = {**settings.MEETINGS, "CHAT_PER_MINUTE": 20}
    m = await meet(connect)
    guest, guest_pid = await m.guest()
    await m.admit(guest_pid, guest)
    burst = 5  # min(5, CHAT_PER_MINUTE)
    for n in range(burst):
        assert (await guest.request({"type": "chat", "text": f"wiadomość {n}"}))["type"] == "ok"
    error = await error_of(guest, {"type": "chat", "text": "jeszcze jedna"})
    assert error["code"] == "rate_limited" and error["message"] == text("chat_flood")
    clock.advance(60 / 20)  # one message's worth refills
    assert (await guest.request({"type": "chat", "text": "po przerwie"}))["type"] == "ok"
    assert (await error_of(guest, {"type": "chat", "text": "i znowu"}))["code"] == "rate_limited"
    # The bucket is per socket; the host still talks.
    assert (await m.host.request({"type": "chat", "text": "Proszę wolniej"}))["type"] == "ok"
    texts = [row["text"] for row in await chat_of(m.code)]
    assert texts == [*(f"wiadomość {n}" for n in range(burst)), "po przerwie", "Proszę wolniej"]


async def test_chat_is_kept_and_relayed_as_text(connect, settings):
    m = await meet(connect)
    guest, guest_pid = await m.guest()
    await m.admit(guest_pid, guest)
    await m.quiet(guest)
    html = '<script>alert("x")</script><img src=x onerror=alert(1)> & &amp;'
    assert (await guest.request({"type": "chat", "text": html}))["type"] == "ok"
    for socket in (m.host, guest):
        assert (await socket.until("chat"))["message"]["text"] == html
    # Control characters go (a tab and a new line stay); so do outer spaces.
    raw = "  a\x00b\x07c\x1b[31md\r\x7f\x85\x9b\u202e\u200be\u2066\tf\ng\ufeff  "
    assert (await guest.request({"type": "chat", "text": raw}))["type"] == "ok"
    relayed = (await m.host.until("chat"))["message"]
    assert relayed["text"] == "abc[31mde\tf\ng"
    assert relayed["pid"] == guest_pid and relayed["name"] == "Jan Kowalski"
    limit = settings.MEETINGS["MAX_CHAT_CHARS"]
    error = await error_of(guest, {"type": "chat", "text": "x" * (limit + 1)})
    assert error["code"] == "bad_message" and error["message"] == text("chat_too_long", limit=limit)
    assert (await guest.request({"type": "chat", "text": "x" * limit}))["type"] == "ok"
    error = await error_of(guest, {"type": "chat", "text": " \x00\x01 "})
    assert error["code"] == "bad_message" and error["message"] == text("chat_empty")
    # Past what the protocol takes at all.
    assert (await error_of(guest, {"type": "chat", "text": "x" * 20001}))["code"] == "bad_message"
    assert [row["text"] for row in await chat_of(m.code)] == [html, "abc[31mde\tf\ng", "x" * limit]
    history = await guest.request({"type": "history"})
    assert [row["text"] for row in history["messages"]] == [html, "abc[31mde\tf\ng", "x" * limit]


@pytest.mark.parametrize("kind", [Kind.CONSULTATION, Kind.PUBLIC])
async def test_a_removed_guest_returns_only_through_the_queue(connect, kind):
    m = await meet(connect, kind)
    guest_id = unique("g")
    guest, pid = await m.guest(guest_id=guest_id)
    if kind is Kind.CONSULTATION:
        await m.admit(pid, guest)
    rejoin = guest.joined["rejoin_token"]
    assert (await m.host.request({"type": "remove", "who": pid}))["type"] == "ok"
    left = await guest.until("left")
    assert left["reason"] == "removed" and left["message"] == text("removed")
    assert await guest.closed() == 4003
    assert pid not in (await room_of(m.code)).participants
    await m.host.drain()

    async def comes_back(**fields):
        socket = await m.connect(m.code, guest="Jan Kowalski", guest_id=guest_id)
        reply = await join(socket, **fields)
        assert reply["resumed"] is False
        assert reply["room"]["status"] == "queued"
        assert "participants" not in reply["room"]  # sees nobody in the call
        queue = (await m.host.until("room"))["room"]["queue"]
        assert [(q["pid"], q["returning"]) for q in queue] == [(reply["you"], True)]
        # Cannot talk or negotiate from the queue.
        error = await error_of(socket, {"type": "chat", "text": "Wróciłem"})
        assert error["code"] == "forbidden"
        return socket, reply["you"]

    # Same link (same guest), with the old rejoin token: still the queue.
    again, again_pid = await comes_back(rejoin=rejoin)
    assert again_pid != pid
    await again.disconnect()
    await m.host.drain()
    # A fresh token for the same guest: the queue too, until re-admitted.
    token = issue_guest_token("Inne Imię", f"meet:{m.code}", guest_id=guest_id)
    other = await m.connect(m.code, token=token)
    reply = await join(other)
    assert reply["room"]["status"] == "queued"
    await m.admit(reply["you"], other)
    room = await room_of(m.code)
    assert room.participants[reply["you"]].returning is False
    assert f"guest:{guest_id}" not in room.banned


async def test_a_denied_guest_is_closed_with_4003_and_waits_again(connect):
    m = await meet(connect)
    guest_id = unique("g")
    guest, pid = await m.guest(guest_id=guest_id)
    assert (await m.host.request({"type": "deny", "who": pid}))["type"] == "ok"
    left = await guest.until("left")
    assert left["reason"] == "denied"
    assert await guest.closed() == 4003
    await m.host.drain()
    again, _ = await m.guest(guest_id=guest_id)
    queue = (await m.host.until("room"))["room"]["queue"]
    assert [q["returning"] for q in queue] == [True]


async def test_handshakes_that_are_refused(connect):
    clerk = await user("clerk")
    meeting, _ = await create_meeting(Kind.CONSULTATION, "Konsultacja", clerk)
    other, _ = await create_meeting(Kind.CONSULTATION, "Inna", clerk)
    # An unknown (well-formed) code: the handshake itself is refused, and the
    # consumer ends cleanly.
    communicator = WebsocketCommunicator(application, "/ws/meet/abcd-efgh-jkmn/", headers=[ORIGIN])
    accepted, _ = await communicator.connect()
    assert not accepted
    await communicator.disconnect()
    # A guest token for another meeting, a forged one, or nobody at all: 4001.
    for kwargs in (
        {"token": issue_guest_token("Jan", f"meet:{other.code}")},
        {"token": issue_guest_token("Jan", f"meet:{meeting.code}") + "x"},
        {"token": issue_guest_token("Jan", "live:anything")},
        {},
    ):
        with pytest.raises(Closed) as refused:
            await open_socket(meeting.code, **kwargs)
        assert refused.value.code == 4001, kwargs
    assert (await room_of(meeting.code)).participants == {}


async def test_nothing_before_join(connect):
    m = await meet(connect)
    socket = await connect(m.code, guest="Jan")
    for message in [
        {"type": "chat", "text": "hej"},
        {"type": "signal", "to": m.host_pid, "description": {"type": "offer", "sdp": SDP}},
        {"type": "admit", "who": m.host_pid},
        {"type": "end"},
        {"type": "media", "audio": True},
        {"type": "hand", "raised": True},
        {"type": "sync"},
        {"type": "history"},
        {"type": "leave"},
        {"type": "approve", "message": 1, "publish": True},
    ]:
        error = await error_of(socket, message)
        assert error["code"] == "forbidden", (message, error)
        assert error["message"] == text("join_first"), (message, error)
    await join(socket)
    error = await error_of(socket, {"type": "join", "instance": "again"})
    assert error["code"] == "conflict"
    assert len((await room_of(m.code)).participants) == 2


async def test_control_characters_in_names_and_instances_do_not_break_the_room(connect):
    """PostgreSQL's JSON cannot hold NUL: a guest named with one (the invite
    page passes it through) or an instance with one still joins."""
    m = await meet(connect)
    guest = await connect(m.code, guest="Jan\x00 \x1b[2JKowalski\u0085")
    reply = await join(guest, instance="tab\x00\x01")
    assert reply["room"]["status"] == "queued"
    queue = (await m.host.until("room"))["room"]["queue"]
    assert [q["name"] for q in queue] == ["Jan [2JKowalski"]
    await m.admit(reply["you"], guest)
    stored = (await room_of(m.code)).participants[reply["you"]]
    assert stored.instance == "tab" and stored.name == "Jan [2JKowalski"
    assert (await guest.request({"type": "chat", "text": "Dzień dobry"}))["type"] == "ok"
    assert (await chat_of(m.code))[0]["name"] == "Jan [2JKowalski"


async def test_a_change_right_after_joining_reaches_the_joiner(connect, monkeypatch):
    """The host admits while the resident's join is still being answered: the
    resident must hear of it (it is in the room's group before its join is
    stored)."""
    from signaling import services

    m = await meet(connect)
    original = services.change_room
    admitted: list[str] = []

    async def change_then_admit(code, change, *, now, refresh=False):
        changed = await original(code, change, now=now, refresh=refresh)
        if changed.pid and changed.pid != m.host_pid and not admitted:
            admitted.append(changed.pid)
            reply = await m.host.request({"type": "admit", "who": changed.pid})
            assert reply["type"] == "ok", reply
        return changed

    monkeypatch.setattr(services, "change_room", change_then_admit)
    guest = await connect(m.code, guest="Szybki")
    reply = await join(guest)
    assert reply["room"]["status"] == "queued" and admitted == [reply["you"]]
    assert (await guest.until("notice"))["event"] == "admitted"
    assert (await guest.until("room"))["room"]["status"] == "admitted"


# --- Reconnect ----------------------------------------------------------------------


async def test_an_admitted_guest_comes_back_without_readmission(connect):
    m = await meet(connect)
    guest_id = unique("g")
    guest, pid = await m.guest(guest_id=guest_id)
    await m.admit(pid, guest)
    token = guest.joined["rejoin_token"]
    await m.quiet()
    await guest.disconnect()
    away = (await m.host.until("room"))["room"]["participants"]
    assert {p["pid"]: p["connected"] for p in away}[pid] is False
    back = await connect(m.code, guest="Jan Kowalski", guest_id=guest_id)
    reply = await join(back, rejoin=token)
    assert reply["resumed"] is True and reply["you"] == pid
    assert reply["room"]["status"] == "admitted" and reply["room"]["role"] == "guest"
    mine = {p["pid"]: p for p in reply["room"]["participants"]}[pid]
    assert mine["connected"] is True and mine["epoch"] == 2
    seen = {p["pid"]: p for p in (await m.host.until("room"))["room"]["participants"]}
    assert seen[pid]["connected"] is True and seen[pid]["epoch"] == 2
    # Negotiation reaches the new socket.
    offer = {"type": "signal", "to": pid, "description": {"type": "offer", "sdp": SDP}}
    assert (await m.host.request(offer))["type"] == "ok"
    assert (await back.until("signal"))["from"] == m.host_pid
    kinds = [kind for kind, _, _ in await log_of(m.code)]
    assert kinds.count("admitted") == 2  # the host and the guest, once
    assert "reconnected" in kinds


async def test_the_host_comes_back_as_the_host(connect):
    clerk = await user("clerk")
    meeting, _ = await create_meeting(Kind.CONSULTATION, "Konsultacja", clerk)
    cookie = await cookie_of(clerk)
    host = await connect(meeting.code, cookie=cookie)
    first = await join(host)
    guest = await connect(meeting.code, guest="Jan")
    await join(guest)
    await host.disconnect()
    back = await connect(meeting.code, cookie=cookie)
    reply = await join(back, rejoin=first["rejoin_token"])
    assert reply["resumed"] is True and reply["you"] == first["you"]
    assert reply["room"]["role"] == "host"
    assert [q["name"] for q in reply["room"]["queue"]] == ["Jan"]
    assert (await back.request({"type": "call_next"}))["type"] == "ok"
    assert (await guest.until("notice"))["event"] == "admitted"


async def test_a_queued_resident_keeps_their_place(connect):
    m = await meet(connect)
    first_id = unique("g")
    first, first_pid = await m.guest("Pierwszy", guest_id=first_id)
    second, second_pid = await m.guest("Drugi")
    ticket = first.joined["room"]["queue"]["ticket"]
    await first.disconnect()
    await m.host.drain()
    back = await connect(m.code, guest="Pierwszy", guest_id=first_id)
    reply = await join(back, rejoin=first.joined["rejoin_token"])
    assert reply["resumed"] is True and reply["you"] == first_pid
    assert reply["room"]["queue"]["position"] == 1
    assert reply["room"]["queue"]["ticket"] == ticket
    queue = (await m.host.until("room"))["room"]["queue"]
    assert [q["pid"] for q in queue] == [first_pid, second_pid]
    assert (await second.until("room"))["room"]["queue"]["position"] == 2


async def test_after_the_grace_it_is_a_fresh_join(connect, clock, settings):
    settings.MEETINGS = {**settings.MEETINGS, "RECONNECT_GRACE": 5.0}
    m = await meet(connect)
    guest_id = unique("g")
    guest, pid = await m.guest(guest_id=guest_id)
    await m.admit(pid, guest)
    # Within the grace: the same place.
    await guest.disconnect()
    clock.advance(4)
    back = await connect(m.code, guest="Jan Kowalski", guest_id=guest_id)
    reply = await join(back, rejoin=guest.joined["rejoin_token"])
    assert reply["resumed"] is True and reply["room"]["status"] == "admitted"
    # Past it: gone from the meeting, and back in the queue.
    await back.disconnect()
    clock.advance(6)
    late = await connect(m.code, guest="Jan Kowalski", guest_id=guest_id)
    reply = await join(late, rejoin=back.joined["rejoin_token"])
    assert reply["resumed"] is False and reply["you"] != pid
    assert reply["room"]["status"] == "queued" and reply["room"]["queue"]["position"] == 1
    room = await room_of(m.code)
    assert pid not in room.participants and m.host_pid in room.participants
    assert ("left", "Jan Kowalski", {"reason": "timed_out"}) in await log_of(m.code)


async def test_a_rejoin_token_of_someone_else_is_ignored(connect):
    m = await meet(connect)
    first, first_pid = await m.guest("Pierwszy")
    await m.admit(first_pid, first)
    stranger = await connect(m.code, guest="Obcy")
    reply = await join(stranger, rejoin=first.joined["rejoin_token"])
    assert reply["resumed"] is False and reply["you"] != first_pid
    assert reply["room"]["status"] == "queued"
    # A token for another meeting (same guest) is ignored too.
    clerk = await user("clerk")
    other, _ = await create_meeting(Kind.CONSULTATION, "Inna", clerk)
    elsewhere = await connect(other.code, guest="Pierwszy")
    reply = await join(elsewhere, rejoin=first.joined["rejoin_token"])
    assert reply["resumed"] is False
    # The first guest only saw the queue grow.
    for frame in await first.drain():
        assert frame["type"] == "room" and frame["room"]["status"] == "admitted", frame
    room = await room_of(m.code)
    assert room.participants[first_pid].connected is True
    assert room.participants[first_pid].status is Status.ADMITTED


async def test_a_second_socket_with_the_token_replaces_the_first(connect):
    m = await meet(connect)
    guest_id = unique("g")
    first, pid = await m.guest(guest_id=guest_id)
    await m.admit(pid, first)
    second = await connect(m.code, guest="Jan Kowalski", guest_id=guest_id)
    reply = await join(second, rejoin=first.joined["rejoin_token"])
    assert reply["resumed"] is True and reply["you"] == pid
    left = await first.until("left")
    assert left["reason"] == "replaced" and left["message"] == text("replaced")
    assert await first.closed() == 1000
    await first.disconnect()
    # The first socket's end does not mark the participant away.
    participant = (await room_of(m.code)).participants[pid]
    assert participant.connected is True and participant.status is Status.ADMITTED
    assert (await second.request({"type": "chat", "text": "Jestem"}))["type"] == "ok"
    assert (await m.host.until("chat"))["message"]["pid"] == pid


# --- Moderation -------------------------------------------------------------------------


async def test_send_back_and_mute(connect):
    m = await meet(connect)
    guest, pid = await m.guest()
    await m.admit(pid, guest)
    assert (await guest.request({"type": "media", "audio": True, "video": True}))["type"] == "ok"
    assert (await m.host.request({"type": "mute", "who": pid, "audio": True, "video": False}))[
        "type"
    ] == "ok"
    notice = await guest.until("notice")
    assert notice["event"] == "muted" and notice["detail"] == {"audio": True}
    assert notice["by"] == m.host.joined["room"]["participants"][0]["name"]
    mine = {p["pid"]: p for p in (await guest.until("room"))["room"]["participants"]}[pid]
    assert mine["audio"] is False and mine["video"] is True
    error = await error_of(m.host, {"type": "mute", "who": pid})
    assert error["code"] == "bad_message" and error["message"] == text("nothing_to_mute")
    assert (await m.host.request({"type": "send_back", "who": pid}))["type"] == "ok"
    notice = await guest.until("notice")
    assert notice["event"] == "sent_back"
    room = (await guest.until("room"))["room"]
    assert room["status"] == "queued" and room["queue"]["position"] == 1
    assert (await error_of(guest, {"type": "chat", "text": "?"}))["code"] == "forbidden"
    participant = (await room_of(m.code)).participants[pid]
    assert participant.status is Status.QUEUED
    assert not (participant.audio or participant.video)


async def test_lock_keeps_newcomers_out(connect):
    m = await meet(connect)
    assert (await m.host.request({"type": "lock", "locked": True}))["type"] == "ok"
    socket = await connect(m.code, guest="Spóźniony")
    error = await error_of(socket, {"type": "join", "instance": "i1"})
    assert error["code"] == "locked" and error["message"] == text("meeting_locked")
    assert len((await room_of(m.code)).participants) == 1
    assert (await m.host.request({"type": "lock", "locked": False}))["type"] == "ok"
    reply = await join(socket)
    assert reply["room"]["status"] == "queued"


async def test_hand_over_and_end(connect):
    m = await meet(connect)
    colleague = await user("clerk")
    moderator = await connect(m.code, cookie=await cookie_of(colleague, host_of=m.code))
    mod_pid = (await join(moderator))["you"]
    assert moderator.joined["room"]["role"] == "moderator"
    guest, guest_pid = await m.guest()
    queued, _ = await m.guest("Czeka")
    await m.admit(guest_pid, guest)
    # A moderator may not end; the host hands over.
    assert (await error_of(moderator, {"type": "end"}))["code"] == "forbidden"
    await m.quiet(moderator)
    error = await error_of(m.host, {"type": "hand_over", "who": guest_pid})
    assert error["code"] == "forbidden" and error["message"] == text("cannot_host")
    assert (await m.host.request({"type": "hand_over", "who": mod_pid}))["type"] == "ok"
    notice = await moderator.until("notice")
    assert notice["event"] == "host"
    assert (await moderator.until("room"))["room"]["role"] == "host"
    assert (await m.host.until("room"))["room"]["role"] == "moderator"
    assert (await error_of(m.host, {"type": "end"}))["code"] == "forbidden"
    # The new host ends the meeting for everyone, the queue too.
    assert (await moderator.request({"type": "end"}))["type"] == "ok"
    for socket in (m.host, moderator, guest, queued):
        ended = await socket.until("ended")
        assert ended["message"] == text("meeting_ended")
        assert await socket.closed() == 1000
    meeting_room = await room_of(m.code)
    assert meeting_room.ended is True
    late = await connect(m.code, guest="Za późno")
    assert (await error_of(late, {"type": "join", "instance": "x"}))["code"] == "gone"


async def test_call_next_serves_the_queue_in_order(connect):
    m = await meet(connect)
    first, first_pid = await m.guest("Pierwszy")
    second, second_pid = await m.guest("Drugi")
    assert (await m.host.request({"type": "call_next"}))["type"] == "ok"
    assert (await first.until("notice"))["event"] == "admitted"
    assert (await m.host.request({"type": "call_next"}))["type"] == "ok"
    left = await first.until("left")
    assert left["reason"] == "served"
    assert await first.closed() == 1000
    assert (await second.until("notice"))["event"] == "admitted"
    room = await room_of(m.code)
    assert first_pid not in room.participants
    assert room.participants[second_pid].status is Status.ADMITTED


async def test_public_questions_hands_and_floor(connect):
    m = await meet(connect, Kind.PUBLIC)
    asker, asker_pid = await m.resident()
    other, other_pid = await m.guest("Słuchacz")
    viewer = await connect(m.code, guest="Widz")
    assert (await join(viewer, watch_only=True))["room"]["role"] == "viewer"
    await m.quiet(asker, other, viewer)
    # A participant's message is a question: the moderators and its author see it.
    assert (await asker.request({"type": "chat", "text": "Kiedy remont drogi?"}))["type"] == "ok"
    for socket in (m.host, asker):
        pending = (await socket.until("chat"))["message"]
        assert pending["status"] == "pending" and pending["text"] == "Kiedy remont drogi?"
    assert await other.nothing() and await viewer.nothing()
    history = await other.request({"type": "history"})
    assert history["messages"] == []
    assert [row["status"] for row in await chat_of(m.code)] == ["pending"]
    assert (await m.host.request({"type": "approve", "message": pending["id"], "publish": True}))[
        "type"
    ] == "ok"
    for socket in (m.host, asker, other, viewer):
        published = (await socket.until("chat"))["message"]
        assert published["id"] == pending["id"] and published["status"] == "published"
    error = await error_of(m.host, {"type": "approve", "message": pending["id"], "publish": True})
    assert error["code"] == "not_found"
    # The host's own messages are published at once.
    assert (await m.host.request({"type": "chat", "text": "Witam"}))["type"] == "ok"
    assert (await other.until("chat"))["message"]["status"] == "published"
    # The viewer only watches.
    assert (await error_of(viewer, {"type": "chat", "text": "?"}))["code"] == "forbidden"
    assert (await error_of(viewer, {"type": "hand", "raised": True}))["code"] == "forbidden"
    # Hands and the floor.
    error = await error_of(asker, {"type": "media", "audio": True})
    assert error["code"] == "forbidden" and error["message"] == text("needs_floor")
    assert (await asker.request({"type": "hand", "raised": True}))["type"] == "ok"
    hands = {p["pid"]: p["hand"] for p in (await m.host.until("room"))["room"]["participants"]}
    assert hands[asker_pid] is not None and hands[other_pid] is None
    assert (await m.host.request({"type": "floor", "who": asker_pid, "give": True}))["type"] == "ok"
    assert (await asker.until("notice"))["event"] == "floor_given"
    assert (await asker.request({"type": "media", "audio": True}))["type"] == "ok"
    error = await error_of(other, {"type": "media", "audio": True})
    assert error["code"] == "forbidden" and error["message"] == text("needs_floor")
    room = await room_of(m.code)
    assert room.participants[asker_pid].audio is True
    assert room.participants[asker_pid].hand is None
    assert room.participants[other_pid].audio is False
    assert (await m.host.request({"type": "floor", "who": asker_pid, "give": False}))[
        "type"
    ] == "ok"
    assert (await asker.until("notice"))["event"] == "floor_taken"
    assert (await room_of(m.code)).participants[asker_pid].audio is False


# --- Records ---------------------------------------------------------------------------


async def test_the_log_and_the_chat_are_kept(connect):
    m = await meet(connect)
    guest, pid = await m.guest("Jan Kowalski")
    await m.admit(pid, guest)
    assert (await guest.request({"type": "chat", "text": "Dzień dobry"}))["type"] == "ok"
    assert (await m.host.request({"type": "chat", "text": "Witam"}))["type"] == "ok"
    assert (await guest.request({"type": "leave"}))["type"] == "ok"
    assert (await guest.until("left"))["reason"] == "left"
    assert await guest.closed() == 1000
    host_name = m.host.joined["room"]["participants"][0]["name"]
    log = await log_of(m.code)
    assert log == [
        ("joined", host_name, {"role": "host"}),
        ("admitted", host_name, {}),
        ("joined", "Jan Kowalski", {"role": "guest"}),
        ("queued", "Jan Kowalski", {}),
        ("admitted", "Jan Kowalski", {}),
        ("left", "Jan Kowalski", {"reason": "left"}),
    ]
    chat = await chat_of(m.code)
    assert [(c["name"], c["role"], c["text"], c["status"]) for c in chat] == [
        ("Jan Kowalski", "guest", "Dzień dobry", "published"),
        (host_name, "host", "Witam", "published"),
    ]
    assert chat[0]["pid"] == pid


async def change_unannounced(m, action, target=None) -> None:
    """The host's action stored, but nobody told (as if its message were lost)."""
    from signaling import rules, services

    await database_sync_to_async(services.change_room_sync)(
        m.code,
        lambda room: rules.act(
            room, m.host_pid, action, now=time.time(), limits=services.limits(), target=target
        ),
        now=time.time(),
    )


async def test_a_lost_room_update_is_caught_up_from_the_database(connect, settings):
    """The channel layer may drop a group message (a full queue) or lose one
    (a socket of the same process closing mid-receive); each socket compares
    its copy of the room with the stored one every MEETINGS["RESYNC_SECONDS"]."""
    from signaling import rules

    settings.MEETINGS = {**settings.MEETINGS, "RESYNC_SECONDS": 0.2}
    m = await meet(connect)
    guest, guest_pid = await m.guest()
    await m.quiet(m.host, guest)
    # The host's admission is stored, but nobody is told (as if the message was lost).
    await change_unannounced(m, rules.Action.ADMIT, guest_pid)
    frame = await guest.until("room", timeout=3)
    assert frame["room"]["status"] == "admitted"
    assert (await m.host.until("room", timeout=3))["room"]["participants"][-1]["pid"] == guest_pid


async def test_a_lost_removal_still_says_removed_and_closes_with_4003(connect, settings):
    from signaling import rules

    settings.MEETINGS = {**settings.MEETINGS, "RESYNC_SECONDS": 0.2}
    m = await meet(connect)
    guest, guest_pid = await m.guest()
    await m.admit(guest_pid, guest)
    await m.quiet(guest)
    await change_unannounced(m, rules.Action.REMOVE, guest_pid)
    left = await guest.until("left", timeout=3)
    assert left["reason"] == "removed"
    assert await guest.closed() == 4003


async def test_a_signal_that_rereads_the_room_catches_up_a_lost_end(connect):
    from signaling import rules

    m = await meet(connect)
    guest, guest_pid = await m.guest()
    await m.admit(guest_pid, guest)
    await m.quiet(guest)
    # The end is stored but its message lost; the host then signals a pid its
    # copy of the room does not know, which makes it read the stored room.
    await change_unannounced(m, rules.Action.END)
    await m.host.send({"type": "signal", "to": "p0123456789", "candidate": CANDIDATE})
    assert (await m.host.until("ended", timeout=3))["message"]
