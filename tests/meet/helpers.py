"""Helpers shared by the meeting tests: people, meetings, sockets."""

from __future__ import annotations

import json
import secrets

from channels.db import database_sync_to_async as sync_to_async
from channels.testing import WebsocketCommunicator

from hub.asgi import application
from hub.auth import issue_guest_token

ORIGIN = (b"origin", b"http://127.0.0.1")
TIMEOUT = 5


def make_user(username: str, *groups: str, **fields):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    user = get_user_model().objects.create_user(username, password=None, **fields)
    for name in groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


def session_cookie(user=None, *, host_of: str | None = None) -> tuple[bytes, bytes]:
    """A session cookie for ``user`` (or an anonymous session holding the host
    link of meeting ``host_of``)."""
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import Client

    if user is not None:
        client = Client()
        client.force_login(user)
        key = client.cookies["sessionid"].value
    else:
        store = SessionStore()
        store.create()
        key = store.session_key
    if host_of is not None:
        store = SessionStore(session_key=key)
        store["meet_hosts"] = [*store.get("meet_hosts", []), host_of]
        store.save()
    return (b"cookie", f"sessionid={key}".encode())


class Socket:
    """A meeting socket (WebsocketCommunicator) with JSON helpers."""

    def __init__(self, communicator: WebsocketCommunicator):
        self.c = communicator
        self.joined: dict | None = None
        self.seen: list[dict] = []

    async def send(self, message) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        await self.c.send_input({"type": "websocket.receive", "text": text})

    async def recv(self, timeout: float = TIMEOUT) -> dict:
        while True:
            message = await self.c.receive_output(timeout)
            if message["type"] == "websocket.close":
                raise Closed(message.get("code", 1000))
            frame = json.loads(message["text"])
            if frame.get("type") == "ping" and "id" not in frame:
                continue
            self.seen.append(frame)
            return frame

    async def until(self, type_: str, timeout: float = TIMEOUT, **match) -> dict:
        """The next frame of ``type_`` (and matching fields), skipping others."""
        while True:
            frame = await self.recv(timeout)
            if frame.get("type") == type_ and all(frame.get(k) == v for k, v in match.items()):
                return frame

    async def request(self, message: dict) -> dict:
        message = {"id": secrets.token_hex(4), **message}
        await self.send(message)
        while True:
            frame = await self.recv()
            if frame.get("id") == message["id"]:
                return frame

    async def closed(self, timeout: float = TIMEOUT) -> int:
        while True:
            message = await self.c.receive_output(timeout)
            if message["type"] == "websocket.close":
                return message.get("code", 1000)

    async def nothing(self, timeout: float = 0.3) -> bool:
        return await self.c.receive_nothing(timeout)

    async def drain(self, quiet: float = 0.2) -> list[dict]:
        """Every frame that arrives until ``quiet`` seconds pass without one.
        (A timeout in receive_output would cancel the application.)"""
        frames = []
        while not await self.c.receive_nothing(quiet):
            frames.append(await self.recv())
        return frames

    async def disconnect(self) -> None:
        await self.c.disconnect(timeout=TIMEOUT)


class Closed(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


async def open_socket(
    code: str,
    *,
    cookie=None,
    guest: str | None = None,
    ip: str | None = None,
    app=application,
    guest_id: str | None = None,
    token: str | None = None,
) -> Socket:
    """A socket that got its ``welcome``. ``guest`` names a guest (with
    ``guest_id`` to be the same guest again); ``token`` is a guest token as is."""
    path = f"/ws/meet/{code}/"
    if guest is not None:
        token = issue_guest_token(guest, f"meet:{code}", guest_id=guest_id)
    if token is not None:
        path += f"?guest={token}"
    headers = [ORIGIN] + ([cookie] if cookie else [])
    communicator = WebsocketCommunicator(app, path, headers=headers)
    communicator.scope["client"] = (
        ip or f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.1",
        40000 + secrets.randbelow(20000),
    )
    socket = Socket(communicator)
    accepted, _ = await communicator.connect(timeout=TIMEOUT)
    if not accepted:
        raise Closed(403)
    welcome = await socket.recv()
    assert welcome["type"] == "welcome", welcome
    return socket


async def join(socket: Socket, **fields) -> dict:
    reply = await socket.request({"type": "join", "instance": secrets.token_hex(4), **fields})
    assert reply["type"] == "joined", reply
    socket.joined = reply
    return reply


create_meeting = sync_to_async(
    lambda kind, title="Spotkanie", owner=None: __import__(
        "signaling.services", fromlist=["create_meeting"]
    ).create_meeting(kind, title, owner=owner)
)


# --- Added for the consumer tests ----------------------------------------------

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
CANDIDATE = {
    "candidate": "candidate:842163049 1 udp 1677729535 192.0.2.7 46154 typ srflx "
    "raddr 0.0.0.0 rport 0 generation 0",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}


def _room_of(code: str):
    from signaling.models import Meeting

    return Meeting.objects.get(code=code).room()


def _log_of(code: str) -> list[tuple[str, str, dict]]:
    from signaling.models import MeetingEvent

    return [
        (e.kind, e.name, e.detail)
        for e in MeetingEvent.objects.filter(meeting__code=code).order_by("id")
    ]


def _chat_of(code: str) -> list[dict]:
    from signaling.models import ChatMessage

    return [m.as_dict() for m in ChatMessage.objects.filter(meeting__code=code).order_by("id")]


room_of = sync_to_async(_room_of)  # the stored signaling.rules.Room
log_of = sync_to_async(_log_of)  # the meeting log: (kind, name, detail)
chat_of = sync_to_async(_chat_of)  # the stored chat messages


async def error_of(socket: Socket, message: dict) -> dict:
    """Send a request that must be refused; its ``error`` frame."""
    reply = await socket.request(message)
    assert reply["type"] == "error", reply
    return reply
