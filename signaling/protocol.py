"""The messages of ``/ws/meet/<code>/`` on top of the hub's envelope.

Client → server: ``join`` first, then the participant and moderator controls,
``signal`` to relay WebRTC negotiation to one other participant, ``chat``.
Server → client: ``joined`` (the reply to ``join``), ``room`` (the room as this
participant may see it, whenever it changes, with a ``version``), ``signal``
(from another participant, with ``polite`` for perfect negotiation),
``notice`` (something done to you: admitted, muted, given the floor…),
``chat``, ``left`` (you are out of the meeting, with a reason) and ``ended``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from hub.envelope import Message

Pid = Annotated[str, msgspec.Meta(pattern=r"^p[0-9a-f]{10}$")]


class Description(msgspec.Struct, forbid_unknown_fields=True):
    type: Annotated[str, msgspec.Meta(max_length=16)]
    sdp: str  # size checked against MEETINGS["MAX_SDP_BYTES"] with a reason


class Candidate(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    # RTCIceCandidateInit, as RTCIceCandidate.toJSON() gives it.
    candidate: Annotated[str, msgspec.Meta(max_length=1024)]
    sdpMid: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    sdpMLineIndex: int | None = None
    usernameFragment: Annotated[str, msgspec.Meta(max_length=256)] | None = None


# --- Client → server ----------------------------------------------------------


class Join(Message, tag="join"):
    """Enter the meeting (or its queue). ``instance`` names this page load, so
    the others know when your peer connections are new; ``rejoin`` is the
    token from an earlier ``joined``, to come back to the same place."""

    instance: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    rejoin: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    watch_only: bool = False


class Signal(Message, tag="signal"):
    to: Pid
    description: Description | None = None
    candidate: Candidate | None = None


class Media(Message, tag="media"):
    """What you send: microphone, camera, screen."""

    audio: bool | None = None
    video: bool | None = None
    screen: bool | None = None


class Hand(Message, tag="hand"):
    raised: bool


class Chat(Message, tag="chat"):
    text: Annotated[str, msgspec.Meta(max_length=20000)]


class History(Message, tag="history"):
    """The chat so far (as you may see it)."""


class Sync(Message, tag="sync"):
    """The room as you may see it now."""


class Leave(Message, tag="leave"):
    pass


class Admit(Message, tag="admit"):
    who: Pid


class Deny(Message, tag="deny"):
    who: Pid


class SendBack(Message, tag="send_back"):
    who: Pid


class CallNext(Message, tag="call_next"):
    """Finish the current consultation and let in the next person. ``current``
    lists the residents you see in the call; if that changed meanwhile (a
    double click), nothing happens (``conflict``)."""

    current: Annotated[list[Pid], msgspec.Meta(max_length=20)] | None = None


class Mute(Message, tag="mute"):
    who: Pid
    audio: bool = False
    video: bool = False


class Remove(Message, tag="remove"):
    who: Pid


class Lock(Message, tag="lock"):
    locked: bool


class End(Message, tag="end"):
    pass


class HandOver(Message, tag="hand_over"):
    who: Pid


class Floor(Message, tag="floor"):
    who: Pid
    give: bool


class Approve(Message, tag="approve"):
    message: Annotated[int, msgspec.Meta(ge=1)]
    publish: bool


INBOUND: tuple[type[Message], ...] = (
    Join,
    Signal,
    Media,
    Hand,
    Chat,
    History,
    Sync,
    Leave,
    Admit,
    Deny,
    SendBack,
    CallNext,
    Mute,
    Remove,
    Lock,
    End,
    HandOver,
    Floor,
    Approve,
)

# --- Server → client ----------------------------------------------------------


class Joined(Message, tag="joined"):
    you: str
    rejoin_token: str
    resumed: bool
    ice_servers: list[dict[str, Any]]
    room: dict[str, Any]


class RoomView(Message, tag="room"):
    room: dict[str, Any]


class Notice(Message, tag="notice"):
    event: str
    by: str | None = None
    detail: dict[str, Any] = {}


class Left(Message, tag="left"):
    reason: str
    message: str


class Ended(Message, tag="ended"):
    message: str


class SignalFrom(Message, tag="signal"):
    from_: str = msgspec.field(name="from")
    polite: bool
    description: Description | None = None
    candidate: Candidate | None = None


class ChatOut(Message, tag="chat"):
    message: dict[str, Any]


class HistoryOut(Message, tag="history"):
    messages: list[dict[str, Any]]


class Ok(Message, tag="ok"):
    pass
