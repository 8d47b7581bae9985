"""Two real daphne processes on one Redis channel layer and the test database:
a clerk on one process and a resident on the other meet normally, and the
resident whose socket dies comes back through the other process."""

from __future__ import annotations

import asyncio
import json
import secrets
from urllib.parse import quote

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from websockets.asyncio.client import connect

from hub.auth import issue_guest_token
from signaling.rules import Kind, polite
from tests.meet.helpers import (
    CANDIDATE,
    SDP,
    chat_of,
    create_meeting,
    log_of,
    make_user,
    room_of,
    session_cookie,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TIMEOUT = 10


def the_test_database_url() -> str:
    """pytest-django's test database, for the daphne processes."""
    db = settings.DATABASES["default"]
    assert db["ENGINE"] == "django.db.backends.postgresql", db["ENGINE"]
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = quote(db.get("HOST") or "127.0.0.1", safe="")  # a socket directory too
    return f"postgres://{auth}{host}:{db.get('PORT') or 5432}/{db['NAME']}"


class Peer:
    """One meeting socket on a real daphne (the websockets client)."""

    def __init__(self, ws):
        self.ws = ws
        self.joined: dict = {}

    @classmethod
    async def open(cls, port: int, code: str, *, cookie: str | None = None, token=None):
        path = f"/ws/meet/{code}/" + (f"?guest={token}" if token else "")
        ws = await connect(
            f"ws://127.0.0.1:{port}{path}",
            origin=f"http://127.0.0.1:{port}",
            additional_headers={"Cookie": cookie} if cookie else None,
            open_timeout=TIMEOUT,
        )
        peer = cls(ws)
        assert (await peer.recv())["type"] == "welcome"
        return peer

    async def recv(self) -> dict:
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
            if frame.get("type") == "ping" and "id" not in frame:
                continue
            return frame

    async def until(self, type_: str, check=lambda frame: True) -> dict:
        while True:
            frame = await self.recv()
            if frame["type"] == type_ and check(frame):
                return frame

    async def request(self, message: dict) -> dict:
        message = {"id": secrets.token_hex(4), **message}
        await self.ws.send(json.dumps(message))
        while True:
            frame = await self.recv()
            if frame.get("id") == message["id"]:
                return frame

    async def join(self, **fields) -> dict:
        reply = await self.request({"type": "join", "instance": secrets.token_hex(4), **fields})
        assert reply["type"] == "joined", reply
        self.joined = reply
        return reply

    async def ok(self, message: dict) -> None:
        reply = await self.request(message)
        assert reply["type"] == "ok", (message, reply)


def connected(pid: str, state: bool):
    def check(frame: dict) -> bool:
        people = {p["pid"]: p for p in frame["room"].get("participants", [])}
        return pid in people and people[pid]["connected"] is state

    return check


async def test_a_clerk_and_a_resident_on_two_daphnes(hub_processes):
    env = {"DATABASE_URL": the_test_database_url()}
    port_a, port_b = await asyncio.gather(
        asyncio.to_thread(hub_processes.daphne, env), asyncio.to_thread(hub_processes.daphne, env)
    )
    clerk = await sync_to_async(make_user)(f"urzednik-{secrets.token_hex(3)}", "clerk")
    meeting, _ = await create_meeting(Kind.CONSULTATION, "Konsultacja", clerk)
    code = meeting.code
    cookie = (await sync_to_async(session_cookie)(clerk))[1].decode()
    guest_id = secrets.token_hex(6)
    token = issue_guest_token("Jan Kowalski", f"meet:{code}", guest_id=guest_id)

    host = await Peer.open(port_a, code, cookie=cookie)
    guest = await Peer.open(port_b, code, token=token)
    peers = [host, guest]
    try:
        host_pid = (await host.join())["you"]
        assert host.joined["room"]["role"] == "host"
        joined = await guest.join()
        guest_pid = joined["you"]
        assert joined["room"]["status"] == "queued"
        assert joined["room"]["queue"]["position"] == 1
        # The host on A sees the queue that B changed.
        room = await host.until("room", lambda f: f["room"]["queue"])
        assert [(q["pid"], q["name"]) for q in room["room"]["queue"]] == [
            (guest_pid, "Jan Kowalski")
        ]
        await host.ok({"type": "admit", "who": guest_pid})
        assert (await guest.until("notice"))["event"] == "admitted"
        room = await guest.until("room", lambda f: f["room"]["status"] == "admitted")
        assert {p["pid"] for p in room["room"]["participants"]} == {host_pid, guest_pid}

        async def negotiate(offerer, offerer_pid, answerer, answerer_pid):
            await offerer.ok(
                {"type": "signal", "to": answerer_pid, "description": {"type": "offer", "sdp": SDP}}
            )
            offer = await answerer.until("signal")
            assert offer["from"] == offerer_pid and offer["description"]["type"] == "offer"
            assert offer["description"]["sdp"] == SDP
            assert offer["polite"] == polite(answerer_pid, offerer_pid)
            answer_sdp = SDP.replace("o=- 1 2", "o=- 3 4")
            await answerer.ok(
                {
                    "type": "signal",
                    "to": offerer_pid,
                    "description": {"type": "answer", "sdp": answer_sdp},
                }
            )
            answer = await offerer.until("signal")
            assert answer["from"] == answerer_pid and answer["description"]["sdp"] == answer_sdp
            assert answer["polite"] == polite(offerer_pid, answerer_pid) != offer["polite"]
            for sender, sender_pid, receiver, receiver_pid in (
                (offerer, offerer_pid, answerer, answerer_pid),
                (answerer, answerer_pid, offerer, offerer_pid),
            ):
                await sender.ok({"type": "signal", "to": receiver_pid, "candidate": CANDIDATE})
                relayed = await receiver.until("signal")
                assert relayed["from"] == sender_pid and relayed["candidate"] == CANDIDATE

        await negotiate(host, host_pid, guest, guest_pid)
        # Chat both ways.
        await guest.ok({"type": "chat", "text": "Dzień dobry"})
        for peer in (host, guest):
            assert (await peer.until("chat"))["message"]["text"] == "Dzień dobry"
        await host.ok({"type": "chat", "text": "W czym mogę pomóc?"})
        for peer in (host, guest):
            assert (await peer.until("chat"))["message"]["text"] == "W czym mogę pomóc?"

        # The resident's socket to B dies (no close frame); they come back on A.
        guest.ws.transport.abort()
        await host.until("room", connected(guest_pid, False))
        back = await Peer.open(port_a, code, token=token)
        peers.append(back)
        reply = await back.join(rejoin=joined["rejoin_token"])
        assert reply["resumed"] is True and reply["you"] == guest_pid
        assert reply["room"]["status"] == "admitted" and reply["room"]["role"] == "guest"
        await host.until("room", connected(guest_pid, True))
        stored = (await room_of(code)).participants[guest_pid]
        assert stored.connected is True and stored.epoch == 2
        # A new page negotiates again (ICE restart), the resident offering.
        await negotiate(back, guest_pid, host, host_pid)
        await back.ok({"type": "chat", "text": "Już jestem"})
        for peer in (host, back):
            assert (await peer.until("chat"))["message"]["text"] == "Już jestem"

        await host.ok({"type": "end"})
        assert (await back.until("ended"))["message"]
        assert (await host.until("ended"))["message"]
        for peer in (back, host):
            with pytest.raises(Exception):  # noqa: B017 - closed by the server
                await peer.recv()
            assert peer.ws.close_code == 1000

        kinds = [kind for kind, _, _ in await log_of(code)]
        assert kinds == [
            "joined",
            "admitted",
            "joined",
            "queued",
            "admitted",
            "reconnected",
            "ended",
        ]
        assert [m["text"] for m in await chat_of(code)] == [
            "Dzień dobry",
            "W czym mogę pomóc?",
            "Już jestem",
        ]
    finally:
        for peer in peers:
            await peer.ws.close()
