"""The real-time envelope shared by every WebSocket of the hub.

Every frame is one JSON object ``{"type": "...", "id": "...", ...}``. Each
message kind is a :class:`msgspec.Struct` tagged by ``type``; a consumer
declares the kinds it accepts as a :class:`Protocol` and gets back typed,
validated values or an :class:`EnvelopeError` carrying a machine-readable code.
A request that carries an ``id`` is answered by a reply or an ``error`` with
the same ``id``. Nothing here does I/O.

Topic events (server → client) carry ``topic`` and ``seq`` beside ``type``;
the client keeps the last ``seq`` per topic and sends it back on ``resume``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import IntEnum, StrEnum
from typing import Annotated, Any

import msgspec
from django.utils.translation import gettext_lazy as _

MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
TopicName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._:-]{0,127}$")]
Seq = Annotated[int, msgspec.Meta(ge=0)]
TOPIC_RE = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,127}$")


class ErrorCode(StrEnum):
    """Machine-readable error codes. Stable: clients switch on them."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    RATE_LIMITED = "rate_limited"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    UNAUTHENTICATED = "unauthenticated"
    CONFLICT = "conflict"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    RESUME_EXPIRED = "resume_expired"
    GONE = "gone"  # the thing asked for has ended (e.g. a meeting)
    LOCKED = "locked"
    FULL = "full"
    BAD_SDP = "bad_sdp"
    BAD_CANDIDATE = "bad_candidate"
    INTERNAL = "internal"


class CloseCode(IntEnum):
    """WebSocket close codes the hub uses (RFC 6455 §7.4; 4000–4999 are ours)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009  # a frame over WS_MAX_FRAME_BYTES
    INTERNAL_ERROR = 1011  # a bug; the client should reconnect and resume
    SERVICE_RESTART = 1012  # the server is restarting; reconnect and resume
    UNAUTHENTICATED = 4001  # the endpoint needs a signed-in user or a valid guest token
    FORBIDDEN = 4003  # not allowed here (e.g. removed from a meeting)
    RATE_LIMITED = 4008  # kept flooding after rate_limited errors
    TOO_SLOW = 4013  # could not keep up with the events; reconnect and resume
    TOO_MANY_CONNECTIONS = 4029  # per-user or per-IP connection limit reached


class EnvelopeError(Exception):
    """An error to send back to the client as ``{"type": "error", ...}``.

    ``message`` is a (lazily) translatable text with ``%(name)s`` placeholders
    filled from ``params`` when it is rendered, in the connection's language.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        id: str | None = None,
        params: dict[str, Any] | None = None,
        reason: str | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.template = message
        self.params = params or {}
        self.id = id
        # Finer than the code, for programs (e.g. "sdp_too_large"); optional.
        self.reason = reason

    @property
    def message(self) -> str:
        """The human text, in the active language."""
        text = str(self.template)
        return text % self.params if self.params else text

    def to_message(self) -> Error:
        return Error(code=self.code.value, message=self.message, id=self.id, reason=self.reason)


class Message(
    msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True, omit_defaults=True
):
    """Base of every message kind; ``type`` is the tag, ``id`` the request id."""

    id: MessageId | None = None


# --- Inbound kinds every hub socket understands --------------------------------


class Ping(Message, tag="ping"):
    """Client heartbeat or round-trip probe; answered by ``pong``."""


class Subscribe(Message, tag="subscribe"):
    """Subscribe to topics. ``since`` maps a topic to the last ``seq`` the client
    holds, to receive what it missed first; ``grant`` is a signed topic grant
    for non-public topics (see hub.topics)."""

    topics: Annotated[list[TopicName], msgspec.Meta(min_length=1, max_length=50)]
    since: dict[TopicName, Seq] | None = None
    grant: Annotated[str, msgspec.Meta(max_length=4096)] | None = None


class Unsubscribe(Message, tag="unsubscribe"):
    topics: Annotated[list[TopicName], msgspec.Meta(min_length=1, max_length=50)]


class Resume(Message, tag="resume"):
    """Reconnect with the token from ``welcome`` and the last ``seq`` per topic."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    since: dict[TopicName, Seq] = {}


# --- Outbound kinds ---------------------------------------------------------------


class Welcome(Message, tag="welcome"):
    session: str
    resume_token: str
    heartbeat: float
    max_frame_bytes: int


class Pong(Message, tag="pong"):
    time: float


class ServerPing(Message, tag="ping"):
    time: float


class Subscribed(Message, tag="subscribed"):
    """``topics`` maps each topic to its current ``seq``; ``replayed`` counts the
    events sent before this reply; ``gap`` lists topics whose buffer no longer
    held everything asked for (the client should reload their state)."""

    topics: dict[str, int]
    replayed: int
    gap: list[str]


class Unsubscribed(Message, tag="unsubscribed"):
    topics: list[str]


class Resumed(Message, tag="resumed"):
    session: str
    resume_token: str
    topics: dict[str, int]
    replayed: int
    gap: list[str]
    # Topics not restored because the grant that allowed them has expired.
    expired: list[str] = []


class Error(Message, tag="error"):
    code: str
    message: str
    reason: str | None = None


HUB_INBOUND: tuple[type[Message], ...] = (Ping, Subscribe, Unsubscribe, Resume)
HUB_OUTBOUND: tuple[type[Message], ...] = (
    Welcome,
    Pong,
    Subscribed,
    Unsubscribed,
    Resumed,
    Error,
)

_encoder = msgspec.json.Encoder()


def encode(message: Message) -> str:
    """One message as the text of a WebSocket frame."""
    return _encoder.encode(message).decode()


class _Probe(msgspec.Struct):
    """What we can still read from a message that failed validation."""

    type: Any = None
    id: Any = None


_probe_decoder = msgspec.json.Decoder(_Probe)


class Protocol:
    """The set of message kinds one endpoint accepts, with their decoder."""

    def __init__(self, kinds: Iterable[type[Message]]):
        self.kinds = tuple(kinds)
        self.by_type = {kind.__struct_config__.tag: kind for kind in self.kinds}
        if len(self.by_type) != len(self.kinds):
            raise ValueError("two message kinds share a type tag")
        union = self.kinds[0] if len(self.kinds) == 1 else _union(self.kinds)
        self._decoder = msgspec.json.Decoder(union)

    def extend(self, kinds: Iterable[type[Message]]) -> Protocol:
        return Protocol((*self.kinds, *kinds))

    def decode(self, text: str | bytes) -> Message:
        """Validate one frame; raise :class:`EnvelopeError` with the right code."""
        try:
            return self._decoder.decode(text)
        except msgspec.ValidationError as exc:
            raise self._explain(text, exc) from None
        except msgspec.DecodeError:
            raise EnvelopeError(ErrorCode.BAD_JSON, _("The message is not valid JSON.")) from None
        except RecursionError:  # msgspec's answer to very deep nesting
            raise EnvelopeError(
                ErrorCode.BAD_MESSAGE, _("The message is nested too deeply.")
            ) from None

    def _explain(self, text: str | bytes, exc: msgspec.ValidationError) -> EnvelopeError:
        try:
            probe = _probe_decoder.decode(text)
        except RecursionError:
            return EnvelopeError(ErrorCode.BAD_MESSAGE, _("The message is nested too deeply."))
        except (msgspec.ValidationError, msgspec.DecodeError):
            return EnvelopeError(ErrorCode.BAD_MESSAGE, _("A message must be a JSON object."))
        request_id = probe.id if isinstance(probe.id, str) and 0 < len(probe.id) <= 64 else None
        if not isinstance(probe.type, str):
            return EnvelopeError(
                ErrorCode.BAD_MESSAGE, _("A message needs a string field 'type'."), id=request_id
            )
        if probe.type not in self.by_type:
            return EnvelopeError(
                ErrorCode.UNKNOWN_TYPE,
                _("Unknown message type %(type)r."),
                id=request_id,
                params={"type": probe.type[:40]},
            )
        # msgspec's own words (field path and expected type) are for developers.
        return EnvelopeError(
            ErrorCode.BAD_MESSAGE,
            _("Invalid message: %(detail)s"),
            id=request_id,
            params={"detail": str(exc)},
        )


def _union(kinds: tuple[type[Message], ...]) -> Any:
    union = kinds[0]
    for kind in kinds[1:]:
        union = union | kind
    return union


HUB_PROTOCOL = Protocol(HUB_INBOUND)
