"""The messages of ``/ws/meet/<code>/`` on top of the hub's envelope.

Client → server: ``join`` first, then the participant and moderator controls,
``signal`` to relay WebRTC negotiation to one other participant, ``chat``.
Server → client: ``joined`` (the reply to ``join``), ``room`` (the room as this
participant may see it, whenever it changes, with a ``version``), ``signal``
(from another participant, with ``polite`` for perfect negotiation),
``notice`` (something done to you: admitted, muted, given the floor…),
``chat``, ``left`` (you are out of the meeting, with a reason) and ``ended``.

When the room's ``topology`` is ``"sfu"`` the media go through the forwarding
unit instead of directly: ``sfu_publish`` (an offer with your tracks, send-only)
and ``sfu_subscribe`` (a receive-only offer for one participant whose
``published`` is above 0) are answered with ``sfu_answer`` (the session and
the unit's answer with all its candidates: no trickle); ``sfu_close`` ends one
of your sessions. ``sfu_ready`` tells another participant that you now get
their media through the unit, so that the two of you can close your direct
connection without a gap (relayed as ``sfu_ready`` with ``from``). When the
room's media worker dies (or stops), everyone in the call through the unit gets
a ``notice`` ``media_reconnect`` (``detail``: ``worker``, the worker that is
gone, and ``reason``, ``worker_lost`` or ``worker_stopped``): the sessions on
that worker are gone, so the page publishes and subscribes again at once.

``record`` (``on``) turns recording on or off; the room's ``recording`` and
``recording_since`` tell everyone. A moderator is told with a ``notice``
(``recording_failed``) when a participant's recording could not be started.
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


class SfuPublish(Message, tag="sfu_publish"):
    """Send your microphone and camera (or screen) to the forwarding unit; a
    new publication replaces your earlier one."""

    description: Description


class SfuSubscribe(Message, tag="sfu_subscribe"):
    """Receive one participant's media from the forwarding unit; a new
    subscription to the same participant replaces the earlier one."""

    source: Pid
    description: Description


class SfuClose(Message, tag="sfu_close"):
    session: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class SfuReady(Message, tag="sfu_ready"):
    """To ``to``: I receive you through the forwarding unit now."""

    to: Pid


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


class Record(Message, tag="record"):
    """Recording on or off (those who moderate; only while the media go
    through the forwarding unit). Everyone's room then says ``recording``."""

    on: bool


INBOUND: tuple[type[Message], ...] = (
    Join,
    Signal,
    SfuPublish,
    SfuSubscribe,
    SfuClose,
    SfuReady,
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
    Record,
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
    """Something done to you (``admitted``, ``muted``…), or that you must act
    on: ``recording_failed`` (to those who moderate), ``media_reconnect``."""

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


class SfuAnswer(Message, tag="sfu_answer"):
    """The forwarding unit's answer; ``source`` for a subscription."""

    session: str
    description: Description
    source: str | None = None


class SfuReadyFrom(Message, tag="sfu_ready"):
    from_: str = msgspec.field(name="from")


class ChatOut(Message, tag="chat"):
    message: dict[str, Any]


class HistoryOut(Message, tag="history"):
    messages: list[dict[str, Any]]


class Ok(Message, tag="ok"):
    pass
