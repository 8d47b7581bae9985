"""Helpers shared by the meeting tests: people, meetings, sockets."""

from __future__ import annotations

import json
import secrets

from asgiref.sync import sync_to_async
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

    async def disconnect(self) -> None:
        await self.c.disconnect(timeout=TIMEOUT)


class Closed(Exception):  # noqa: N818
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


async def open_socket(code: str, *, cookie=None, guest: str | None = None, ip: str | None = None,
                      app=application) -> Socket:
    path = f"/ws/meet/{code}/"
    if guest is not None:
        path += f"?guest={issue_guest_token(guest, f'meet:{code}')}"
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
