"""The rules of a virtual meeting, as pure code: no I/O, no clock of its own.

A :class:`Room` is the whole live state of one meeting: who is in it, who is
waiting in the virtual queue, who holds the floor, whether it is locked or
ended. Every change is a function ``(room, …, now) -> Outcome``: a new room
and the events that the change caused (for the meeting log and for the people
it concerns). A change that is not allowed raises :class:`Refused` and leaves
the room as it was (the functions work on a copy).

The consumers keep a room in the database and run these functions under a row
lock, so two daphne processes never change one room at the same time
(signaling.services).

Meeting kinds (``Kind``) and the roles in them (``Role``):

- *consultation*: a clerk (host) serves residents one at a time. Residents
  wait in a virtual queue with numbered tickets, see their position and an
  estimated wait; the clerk calls the next one. Companions are admitted
  one by one beside the resident.
- *briefing*: staff only, invited by account; everyone may speak.
- *public*: moderators and many participants. Participants raise a hand and
  speak only when a moderator gives them the floor; their chat messages are
  questions that a moderator publishes.
- *parent_slot*: a teacher's room for booked parent-evening calls; parents
  wait until the teacher admits them.

Recording (``Action.RECORD``, for the roles that moderate): only while the
room's media go through the forwarding unit (topology "sfu"; in a mesh the
media never reach the server). The room says ``recording`` (and since when) to
everyone, the queue included, and the consumers record a participant's
publication only after that participant's socket was sent a room that says so.
It stops when a moderator turns it off, when the meeting ends, and when nobody
who may stop it is left in the call (the call empties, or the last host or
moderator leaves). A room that moves from mesh to the unit does not start
recording by itself: a moderator turns it on once it is there.
"""

from __future__ import annotations

import copy
import math
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec


class Kind(StrEnum):
    CONSULTATION = "consultation"
    BRIEFING = "briefing"
    PUBLIC = "public"
    PARENT_SLOT = "parent_slot"


class Role(StrEnum):
    HOST = "host"
    MODERATOR = "moderator"
    PARTICIPANT = "participant"
    VIEWER = "viewer"
    GUEST = "guest"


class Status(StrEnum):
    QUEUED = "queued"  # in the virtual queue / lobby, not yet in the call
    ADMITTED = "admitted"  # in the call


class Action(StrEnum):
    # Moderator controls
    ADMIT = "admit"
    DENY = "deny"
    SEND_BACK = "send_back"
    CALL_NEXT = "call_next"
    MUTE = "mute"
    REMOVE = "remove"
    LOCK = "lock"
    END = "end"
    HAND_OVER = "hand_over"
    FLOOR = "floor"
    APPROVE = "approve"
    RECORDS = "records"
    RECORD = "record"
    # Participant controls
    AUDIO = "audio"
    VIDEO = "video"
    SCREEN = "screen"
    CHAT = "chat"
    HAND = "hand"
    SIGNAL = "signal"
    LEAVE = "leave"


MODERATOR_ACTIONS = frozenset(
    {
        Action.ADMIT,
        Action.DENY,
        Action.SEND_BACK,
        Action.CALL_NEXT,
        Action.MUTE,
        Action.REMOVE,
        Action.LOCK,
        Action.END,
        Action.HAND_OVER,
        Action.FLOOR,
        Action.APPROVE,
        Action.RECORDS,
        Action.RECORD,
    }
)
HOST_ONLY = frozenset({Action.END, Action.HAND_OVER})
MEDIA_ACTIONS = frozenset({Action.AUDIO, Action.VIDEO, Action.SCREEN})
# Kinds whose residents wait to be let in, one call at a time.
QUEUED_KINDS = frozenset({Kind.CONSULTATION, Kind.PARENT_SLOT})
# Kinds where a participant speaks only with the floor.
FLOOR_KINDS = frozenset({Kind.PUBLIC})


def _kind_actions(kind: Kind, role: Role) -> frozenset[Action]:
    """What a role may do in a kind of meeting, once admitted."""
    everyone = {Action.LEAVE}
    if role is Role.HOST:
        allowed = set(MODERATOR_ACTIONS) | MEDIA_ACTIONS | {Action.CHAT, Action.SIGNAL}
    elif role is Role.MODERATOR:
        allowed = (set(MODERATOR_ACTIONS) - HOST_ONLY) | MEDIA_ACTIONS
        allowed |= {Action.CHAT, Action.SIGNAL}
    elif role is Role.VIEWER:
        # Watches: receives media (so it negotiates), says nothing.
        allowed = {Action.SIGNAL}
    else:  # PARTICIPANT, GUEST
        allowed = set(MEDIA_ACTIONS) | {Action.CHAT, Action.SIGNAL}
        if kind in (Kind.BRIEFING, Kind.PUBLIC):
            allowed.add(Action.HAND)
    if kind not in QUEUED_KINDS:
        allowed.discard(Action.CALL_NEXT)
    if kind not in FLOOR_KINDS:
        allowed -= {Action.FLOOR, Action.APPROVE}
    return frozenset(allowed | everyone)


ROLES_BY_KIND: dict[Kind, frozenset[Role]] = {
    Kind.CONSULTATION: frozenset({Role.HOST, Role.MODERATOR, Role.PARTICIPANT, Role.GUEST}),
    Kind.BRIEFING: frozenset({Role.HOST, Role.MODERATOR, Role.PARTICIPANT}),
    Kind.PUBLIC: frozenset(Role),
    Kind.PARENT_SLOT: frozenset({Role.HOST, Role.MODERATOR, Role.PARTICIPANT, Role.GUEST}),
}

PERMISSIONS: dict[tuple[Kind, Role], frozenset[Action]] = {
    (kind, role): _kind_actions(kind, role) for kind in Kind for role in ROLES_BY_KIND[kind]
}


def may(kind: Kind, role: Role, action: Action) -> bool:
    """Whether ``role`` may do ``action`` in a meeting of ``kind`` (the table)."""
    return action in PERMISSIONS.get((kind, role), frozenset())


# --- State -----------------------------------------------------------------------


class Participant(msgspec.Struct, kw_only=True):
    pid: str
    principal: str
    name: str
    role: Role
    status: Status
    ticket: int
    joined_at: float
    queued_at: float | None = None
    admitted_at: float | None = None
    # Connected: a socket holds this participant; lease_until moves with its
    # heartbeats. Away: the socket is gone and the participant keeps their
    # place until lease_until (the reconnect grace), then leaves.
    connected: bool = True
    lease_until: float = 0.0
    channel: str | None = None
    instance: str = ""
    epoch: int = 1
    audio: bool = False
    video: bool = False
    screen: bool = False
    hand: float | None = None
    floor: bool = False
    # Was removed or denied earlier and came back: the host must admit again.
    returning: bool = False
    # How often a moderator turned this participant's microphone / camera off:
    # the page compares them with what it saw, so a lost notice loses no mute.
    audio_mutes: int = 0
    video_mutes: int = 0
    # Sends through the forwarding unit (topology "sfu"): 0 when not, else how
    # many times it (re)published, so that the others subscribe again to a new
    # publication (a new page, a media worker that died and was replaced).
    published: int = 0


class Room(msgspec.Struct, kw_only=True):
    code: str
    kind: Kind
    title: str
    owner: str = ""  # principal of the account that owns the meeting
    moderators: list[str] = []  # principals named moderators in advance
    invited: list[str] = []  # principals invited (briefing)
    version: int = 0
    locked: bool = False
    ended: bool = False
    participants: dict[str, Participant] = {}
    next_ticket: int = 1
    banned: list[str] = []
    # Set when a guest is removed or turned away: a guest identity is only a
    # browser session, so from then on new guests wait to be let in.
    guests_knock: bool = False
    # The resident being served (queued kinds) since when; durations of the
    # last services feed the queue's estimate.
    serving_since: float | None = None
    service_times: list[float] = []
    # The call outgrew the mesh and moved to the forwarding unit; it stays
    # there (nobody's media flaps) until nobody is left in the call.
    sfu: bool = False
    # A moderator turned recording on (only through the forwarding unit), at
    # recording_since; everyone is shown it, and it names the files.
    recording: bool = False
    recording_since: float | None = None


@dataclass(frozen=True)
class Limits:
    call_max: int = 5  # residents (with companions) in one consultation call
    briefing_max: int = 25
    public_max: int = 200
    mesh_max: int = 8  # the most peers a mesh room holds; past it, the forwarding unit
    sfu: bool = True  # rooms may move to the forwarding unit (else mesh_max caps them)
    force_sfu: bool = False  # every room uses the forwarding unit from the first person
    reconnect_grace: float = 45.0
    lease: float = 75.0  # a connected participant's lease, renewed by heartbeats
    service_default: float = 600.0  # estimate per resident before any is measured
    service_window: int = 10


@dataclass(frozen=True)
class Claim:
    """Who is asking to join, as the consumer established it."""

    principal: str
    name: str
    authenticated: bool = False
    staff: bool = False
    host: bool = False  # the meeting's owner, or holds the host link
    watch_only: bool = False


@dataclass
class Event:
    """Something that happened: logged, and told to ``to`` when set."""

    kind: str
    pid: str | None = None
    name: str = ""
    actor: str | None = None
    to: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    room: Room
    events: list[Event] = field(default_factory=list)
    pid: str | None = None  # the participant a join created or resumed


class Refused(Exception):
    """A change the rules do not allow. ``code`` is an envelope error code."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _copy(room: Room) -> Room:
    return copy.deepcopy(room)


def _admitted(room: Room) -> list[Participant]:
    return [p for p in room.participants.values() if p.status is Status.ADMITTED]


def queue(room: Room) -> list[Participant]:
    """The virtual queue, first in line first: by ticket number."""
    return sorted(
        (p for p in room.participants.values() if p.status is Status.QUEUED),
        key=lambda p: p.ticket,
    )


def capacity(room: Room, limits: Limits) -> int:
    """How many may be in the call at once."""
    by_kind = {
        Kind.CONSULTATION: limits.call_max + 2,  # host, a colleague and the residents
        Kind.PARENT_SLOT: limits.call_max + 2,
        Kind.BRIEFING: limits.briefing_max,
        Kind.PUBLIC: limits.public_max,
    }[room.kind]
    return by_kind if limits.sfu else min(by_kind, limits.mesh_max)


def topology(room: Room, limits: Limits) -> str:
    """How media flows: every pair directly ("mesh"), or each participant
    once to the forwarding unit, which sends it on to the others ("sfu"):
    forced by a setting, or once the call grew past ``mesh_max``."""
    if limits.sfu and (limits.force_sfu or room.sfu):
        return "sfu"
    return "mesh"


def _grown(room: Room, limits: Limits) -> None:
    """Someone was let into the call: past the mesh's size it moves to the
    forwarding unit (for good: until the call is empty)."""
    if limits.sfu and len(_admitted(room)) > limits.mesh_max:
        room.sfu = True


def _shrunk(room: Room) -> None:
    """Someone left the call: once it is empty, the next call starts as a mesh."""
    if not _admitted(room):
        room.sfu = False


def may_publish(room: Room, participant: Participant) -> bool:
    """Whether ``participant`` may send their microphone, camera or screen now
    (the rule of the media controls: a role that has them, and in a meeting
    with a floor, a participant who holds it)."""
    if room.ended or participant.status is not Status.ADMITTED:
        return False
    if not may(room.kind, participant.role, Action.AUDIO):
        return False
    return not (
        room.kind in FLOOR_KINDS
        and participant.role in (Role.PARTICIPANT, Role.GUEST)
        and not participant.floor
    )


def check_publish(room: Room, pid: str, limits: Limits) -> Participant:
    """``pid`` may send to the forwarding unit now, else :class:`Refused`."""
    participant = _get(room, pid)
    _require(room, participant, Action.SIGNAL)
    if topology(room, limits) != "sfu":
        raise Refused("conflict", "sfu_off")
    if not may(room.kind, participant.role, Action.AUDIO):
        raise Refused("forbidden", "not_allowed")
    if not may_publish(room, participant):
        raise Refused("forbidden", "needs_floor")
    return participant


def check_subscribe(room: Room, pid: str, source: str, limits: Limits) -> Participant:
    """``pid`` may receive ``source``'s media from the forwarding unit now,
    else :class:`Refused`; the source."""
    participant = _get(room, pid)
    _require(room, participant, Action.SIGNAL)
    if topology(room, limits) != "sfu":
        raise Refused("conflict", "sfu_off")
    other = room.participants.get(source)
    if other is None or other.status is not Status.ADMITTED:
        raise Refused("not_found", "peer_unavailable")
    if other.pid == pid:
        raise Refused("conflict", "not_on_yourself")
    if not other.published:
        raise Refused("not_found", "no_publisher")
    return other


def publishing(room: Room, pid: str, on: bool, *, limits: Limits) -> Outcome:
    """``pid`` started (again) or stopped sending to the forwarding unit."""
    if on:
        check_publish(room, pid, limits)
    room = _copy(room)
    participant = room.participants.get(pid)
    if participant is None:
        return Outcome(room)
    participant.published = participant.published + 1 if on else 0
    return Outcome(room)


def _get(room: Room, pid: str | None) -> Participant:
    participant = room.participants.get(pid or "")
    if participant is None:
        raise Refused("not_found", "no_such_participant")
    return participant


def _require(room: Room, actor: Participant, action: Action) -> None:
    if room.ended:
        raise Refused("gone", "meeting_ended")
    if actor.status is not Status.ADMITTED and action is not Action.LEAVE:
        raise Refused("forbidden", "not_admitted")
    if not may(room.kind, actor.role, action):
        raise Refused("forbidden", "not_allowed")


def role_for(room: Room, claim: Claim) -> Role:
    """The role someone joins with, or :class:`Refused`."""
    if claim.host:
        host_present = any(p.role is Role.HOST for p in room.participants.values())
        return Role.MODERATOR if host_present else Role.HOST
    if claim.principal in room.moderators:
        return Role.MODERATOR
    if room.kind is Kind.BRIEFING:
        if not (claim.authenticated and claim.staff and claim.principal in room.invited):
            raise Refused("forbidden", "briefing_invited_only")
        return Role.PARTICIPANT
    if room.kind is Kind.PUBLIC and claim.watch_only:
        return Role.VIEWER
    return Role.PARTICIPANT if claim.authenticated else Role.GUEST


def _new_pid(room: Room) -> str:
    while True:
        pid = "p" + secrets.token_hex(5)
        if pid not in room.participants:
            return pid


def join(room: Room, claim: Claim, *, channel: str, instance: str, now: float, limits: Limits):
    """Someone opens the meeting: into the call or into the queue."""
    if room.ended:
        raise Refused("gone", "meeting_ended")
    room = _copy(room)
    role = role_for(room, claim)
    privileged = role in (Role.HOST, Role.MODERATOR)
    if room.locked and not privileged:
        raise Refused("locked", "meeting_locked")
    returning = claim.principal in room.banned
    # Whoever was removed comes back through the queue, moderators too.
    knocks = role is Role.GUEST and room.guests_knock
    queued = returning or (not privileged and (room.kind in QUEUED_KINDS or knocks))
    if not queued and len(_admitted(room)) >= capacity(room, limits):
        raise Refused("full", "meeting_full")
    pid = _new_pid(room)
    participant = Participant(
        pid=pid,
        principal=claim.principal,
        name=claim.name,
        role=role,
        status=Status.QUEUED if queued else Status.ADMITTED,
        # Numbers go to those who wait, like the ticket machine in the office.
        ticket=room.next_ticket if queued else 0,
        joined_at=now,
        queued_at=now if queued else None,
        admitted_at=None if queued else now,
        lease_until=now + limits.lease,
        channel=channel,
        instance=instance,
        returning=returning,
    )
    if queued:
        room.next_ticket += 1
    room.participants[pid] = participant
    _grown(room, limits)
    events = [Event("joined", pid, claim.name, detail={"role": role.value})]
    events.append(Event("queued" if queued else "admitted", pid, claim.name))
    return Outcome(room, events, pid)


def reconnect(
    room: Room, pid: str, principal: str, *, channel: str, instance: str, now: float, limits: Limits
) -> Outcome:
    """A participant's new socket takes their place back (same role, same
    status, same place in the queue) within the reconnect grace."""
    if room.ended:
        raise Refused("gone", "meeting_ended")
    room = _copy(room)
    participant = room.participants.get(pid)
    if participant is None or participant.principal != principal:
        raise Refused("resume_expired", "rejoin_expired")
    if participant.lease_until < now:
        # Past the grace: expire() removes them; resuming is too late.
        raise Refused("resume_expired", "rejoin_expired")
    participant.connected = True
    participant.channel = channel
    if participant.instance != instance:
        # A new page: its peer connections are new, it sends nothing yet.
        participant.audio = participant.video = participant.screen = False
        participant.published = 0
    participant.instance = instance
    participant.epoch += 1
    participant.lease_until = now + limits.lease
    return Outcome(room, [Event("reconnected", pid, participant.name)], pid)


def disconnect(room: Room, pid: str, channel: str, *, now: float, limits: Limits) -> Outcome:
    """A socket closed: the participant is away and keeps their place for
    the reconnect grace. A socket that was already replaced changes nothing."""
    room = _copy(room)
    participant = room.participants.get(pid)
    if participant is None or participant.channel != channel:
        return Outcome(room)
    participant.connected = False
    participant.channel = None
    participant.lease_until = now + limits.reconnect_grace
    return Outcome(room, [Event("away", pid, participant.name)])


def renew(room: Room, pid: str, channel: str, *, now: float, limits: Limits) -> Outcome:
    """A heartbeat of a connected participant's socket."""
    room = _copy(room)
    participant = room.participants.get(pid)
    if participant is not None and participant.channel == channel:
        participant.lease_until = now + limits.lease
    return Outcome(room)


def expire(room: Room, *, now: float) -> Outcome:
    """Participants whose lease ran out (gone for longer than the grace, or
    their server died) leave."""
    gone = [p.pid for p in room.participants.values() if p.lease_until < now]
    if not gone:
        return Outcome(room)
    room = _copy(room)
    # The copy's participants (roles change as hosts pass on), and hosts
    # last, so that the host passes to a moderator who stays.
    leaving = sorted((room.participants[pid] for pid in gone), key=lambda p: p.role is Role.HOST)
    events = []
    for participant in leaving:
        events.extend(_depart(room, participant, "timed_out", now))
    return Outcome(room, events)


def _depart(
    room: Room, participant: Participant, reason: str, now: float, actor: str | None = None
) -> list[Event]:
    del room.participants[participant.pid]
    _shrunk(room)
    events = [
        Event(
            "left",
            participant.pid,
            participant.name,
            actor=actor,
            to=participant.pid if actor else None,
            detail={"reason": reason},
        )
    ]
    if room.kind in QUEUED_KINDS and participant.role in (Role.PARTICIPANT, Role.GUEST):
        events.extend(_maybe_finish_service(room, now))
    if participant.role is Role.HOST:
        events.extend(_pass_host(room))
    events.extend(_recording_unattended(room))
    return events


def _stop_recording(room: Room, reason: str, actor: str | None = None) -> list[Event]:
    if not room.recording:
        return []
    room.recording = False
    room.recording_since = None
    return [Event("recording_off", actor=actor, detail={"reason": reason})]


def _recording_unattended(room: Room) -> list[Event]:
    """Recording stops when nobody who may stop it is left in the call."""
    if not room.recording:
        return []
    admitted = _admitted(room)
    if not admitted:
        return _stop_recording(room, "empty")
    if not any(may(room.kind, p.role, Action.RECORD) for p in admitted):
        return _stop_recording(room, "no_moderator")
    return []


def _residents_in_call(room: Room) -> list[Participant]:
    return [p for p in _admitted(room) if p.role in (Role.PARTICIPANT, Role.GUEST)]


def _maybe_finish_service(room: Room, now: float) -> list[Event]:
    """When the last resident of a call is gone, the service is over."""
    if room.serving_since is not None and not _residents_in_call(room):
        room.service_times = [*room.service_times, max(0.0, now - room.serving_since)][-10:]
        room.serving_since = None
    return []


def _pass_host(room: Room) -> list[Event]:
    """A meeting whose host left for good gets the longest-present moderator
    as host, so someone can still admit and end."""
    moderators = sorted(
        (p for p in _admitted(room) if p.role is Role.MODERATOR), key=lambda p: p.joined_at
    )
    if not moderators:
        return []
    moderators[0].role = Role.HOST
    return [Event("host", moderators[0].pid, moderators[0].name, to=moderators[0].pid)]


def _admit(
    room: Room, participant: Participant, now: float, limits: Limits, actor: str | None
) -> list[Event]:
    if participant.status is Status.ADMITTED:
        raise Refused("conflict", "already_admitted")
    if len(_admitted(room)) >= capacity(room, limits):
        raise Refused("full", "meeting_full")
    if (
        room.kind in QUEUED_KINDS
        and participant.role in (Role.PARTICIPANT, Role.GUEST)
        and len(_residents_in_call(room)) >= limits.call_max
    ):
        raise Refused("full", "call_full")
    participant.status = Status.ADMITTED
    participant.admitted_at = now
    participant.queued_at = None
    participant.returning = False
    _grown(room, limits)
    if participant.principal in room.banned:
        room.banned = [b for b in room.banned if b != participant.principal]
    if room.kind in QUEUED_KINDS and room.serving_since is None:
        room.serving_since = now
    return [Event("admitted", participant.pid, participant.name, actor=actor, to=participant.pid)]


def act(
    room: Room,
    actor_pid: str,
    action: Action,
    *,
    now: float,
    limits: Limits,
    target: str | None = None,
    value: Any = None,
) -> Outcome:
    """A participant does ``action`` (on ``target``); ``value`` carries the
    action's argument (on/off for media, hand, lock and floor; a dict
    ``{"audio": bool, "video": bool}`` for mute)."""
    actor = _get(room, actor_pid)
    _require(room, actor, action)
    room = _copy(room)
    actor = room.participants[actor_pid]
    handler = _ACTIONS[action]
    events = handler(room, actor, target, value, now, limits)
    return Outcome(room, events)


def _target(room: Room, target: str | None, actor: Participant) -> Participant:
    participant = _get(room, target)
    if participant.pid == actor.pid:
        raise Refused("conflict", "not_on_yourself")
    if participant.role is Role.HOST and actor.role is not Role.HOST:
        raise Refused("forbidden", "not_on_host")
    return participant


def _do_admit(room, actor, target, value, now, limits):
    return _admit(room, _target(room, target, actor), now, limits, actor.pid)


def _do_deny(room, actor, target, value, now, limits):
    participant = _target(room, target, actor)
    if participant.status is not Status.QUEUED:
        raise Refused("conflict", "not_waiting")
    _ban(room, participant)
    return _depart(room, participant, "denied", now, actor.pid)


def _do_send_back(room, actor, target, value, now, limits):
    participant = _target(room, target, actor)
    if participant.status is not Status.ADMITTED:
        raise Refused("conflict", "not_admitted_target")
    if participant.role in (Role.HOST, Role.MODERATOR):
        raise Refused("forbidden", "not_on_moderator")
    participant.status = Status.QUEUED
    participant.queued_at = now
    participant.admitted_at = None
    participant.audio = participant.video = participant.screen = False
    participant.published = 0
    participant.hand = None
    participant.floor = False
    _shrunk(room)
    events = [
        Event("sent_back", participant.pid, participant.name, actor=actor.pid, to=participant.pid)
    ]
    if room.kind in QUEUED_KINDS:
        events.extend(_maybe_finish_service(room, now))
    return events


def _do_call_next(room, actor, target, value, now, limits):
    """Finish the current resident's service and admit the first in line.
    ``value``, when given, lists the residents the moderator saw in the call:
    if that is no longer so (a double click, two clerks at once) nothing
    happens, rather than ending the consultation of someone just let in."""
    if value is not None and set(value) != {p.pid for p in _residents_in_call(room)}:
        raise Refused("conflict", "call_next_stale")
    events: list[Event] = []
    for resident in _residents_in_call(room):
        events.extend(_depart(room, resident, "served", now, actor.pid))
    waiting = queue(room)
    if not waiting:
        if not events:
            raise Refused("conflict", "queue_empty")
        return events
    events.extend(_admit(room, waiting[0], now, limits, actor.pid))
    return events


def _do_mute(room, actor, target, value, now, limits):
    participant = _target(room, target, actor)
    what = value if isinstance(value, dict) else {"audio": True}
    changed = {}
    if what.get("audio"):
        participant.audio = False
        participant.audio_mutes += 1
        changed["audio"] = True
    if what.get("video"):
        participant.video = False
        participant.screen = False
        participant.video_mutes += 1
        changed["video"] = True
    if not changed:
        raise Refused("bad_message", "nothing_to_mute")
    return [
        Event(
            "muted",
            participant.pid,
            participant.name,
            actor=actor.pid,
            to=participant.pid,
            detail=changed,
        )
    ]


def _do_remove(room, actor, target, value, now, limits):
    participant = _target(room, target, actor)
    _ban(room, participant)
    return _depart(room, participant, "removed", now, actor.pid)


def _ban(room: Room, participant: Participant) -> None:
    if participant.principal not in room.banned:
        room.banned = [*room.banned, participant.principal]
    # The same person can come back as a guest (a private window): from now
    # on guests wait to be let in.
    if participant.role not in (Role.HOST, Role.MODERATOR):
        room.guests_knock = True


def _do_lock(room, actor, target, value, now, limits):
    room.locked = bool(value)
    return [Event("locked" if room.locked else "unlocked", actor=actor.pid)]


def _do_end(room, actor, target, value, now, limits):
    room.ended = True
    if room.serving_since is not None:
        room.service_times = [*room.service_times, max(0.0, now - room.serving_since)][-10:]
        room.serving_since = None
    return [*_stop_recording(room, "ended", actor.pid), Event("ended", actor=actor.pid)]


def _do_record(room, actor, target, value, now, limits):
    """Recording on (``value`` true) or off. Only through the forwarding unit:
    in a mesh the media go from browser to browser and never reach the server."""
    if not value:
        if not room.recording:
            raise Refused("conflict", "not_recording")
        return _stop_recording(room, "stopped", actor.pid)
    if room.recording:
        raise Refused("conflict", "already_recording")
    if topology(room, limits) != "sfu":
        raise Refused("conflict", "recording_needs_sfu")
    room.recording = True
    room.recording_since = now
    return [Event("recording_on", actor=actor.pid)]


def _do_hand_over(room, actor, target, value, now, limits):
    participant = _target(room, target, actor)
    if participant.status is not Status.ADMITTED:
        raise Refused("conflict", "not_admitted_target")
    eligible = participant.role is Role.MODERATOR or (
        room.kind is Kind.BRIEFING and participant.role is Role.PARTICIPANT
    )
    if not eligible:
        raise Refused("forbidden", "cannot_host")
    participant.role = Role.HOST
    actor.role = Role.MODERATOR
    return [Event("host", participant.pid, participant.name, actor=actor.pid, to=participant.pid)]


def _do_floor(room, actor, target, value, now, limits):
    participant = _target(room, target, actor)
    if participant.status is not Status.ADMITTED or participant.role not in (
        Role.PARTICIPANT,
        Role.GUEST,
    ):
        raise Refused("conflict", "no_floor_for_role")
    participant.floor = bool(value)
    participant.hand = None
    if not participant.floor:
        participant.audio = participant.video = participant.screen = False
        participant.published = 0
    kind = "floor_given" if participant.floor else "floor_taken"
    return [Event(kind, participant.pid, participant.name, actor=actor.pid, to=participant.pid)]


def _do_media(attribute: str):
    def handler(room, actor, target, value, now, limits):
        on = bool(value)
        if (
            on
            and room.kind in FLOOR_KINDS
            and actor.role in (Role.PARTICIPANT, Role.GUEST)
            and not actor.floor
        ):
            raise Refused("forbidden", "needs_floor")
        setattr(actor, attribute, on)
        return []

    return handler


def _do_hand(room, actor, target, value, now, limits):
    actor.hand = now if value else None
    return [Event("hand_raised" if value else "hand_lowered", actor.pid, actor.name)]


def _do_leave(room, actor, target, value, now, limits):
    return _depart(room, actor, "left", now)


def _no_change(room, actor, target, value, now, limits):
    return []


_ACTIONS = {
    Action.ADMIT: _do_admit,
    Action.DENY: _do_deny,
    Action.SEND_BACK: _do_send_back,
    Action.CALL_NEXT: _do_call_next,
    Action.MUTE: _do_mute,
    Action.REMOVE: _do_remove,
    Action.LOCK: _do_lock,
    Action.END: _do_end,
    Action.HAND_OVER: _do_hand_over,
    Action.FLOOR: _do_floor,
    Action.RECORD: _do_record,
    Action.AUDIO: _do_media("audio"),
    Action.VIDEO: _do_media("video"),
    Action.SCREEN: _do_media("screen"),
    Action.HAND: _do_hand,
    Action.LEAVE: _do_leave,
    # Checked here, carried out elsewhere (messages, the database, the relay).
    Action.APPROVE: _no_change,
    Action.RECORDS: _no_change,
    Action.CHAT: _no_change,
    Action.SIGNAL: _no_change,
}


# --- What each participant sees ---------------------------------------------------


def service_estimate(room: Room, limits: Limits) -> float:
    """Seconds one resident's service takes: the median of the last ones, or
    the default before any was measured."""
    times = sorted(room.service_times[-limits.service_window :])
    if not times:
        return limits.service_default
    middle = len(times) // 2
    return times[middle] if len(times) % 2 else (times[middle - 1] + times[middle]) / 2


def estimated_wait(room: Room, position: int, *, now: float, limits: Limits) -> float:
    """Seconds until the resident at ``position`` (1 = next) is called: what is
    left of the current service, then one service per resident ahead."""
    per_service = service_estimate(room, limits)
    current_left = 0.0
    if room.serving_since is not None:
        current_left = max(0.0, per_service - (now - room.serving_since))
    return current_left + (position - 1) * per_service


def polite(me: str, other: str) -> bool:
    """Perfect negotiation: in each pair one side is polite (it rolls back
    its own offer on a collision). Both sides compute the same answer."""
    return me > other


def view(room: Room, pid: str, *, now: float, limits: Limits) -> dict[str, Any]:
    """The room as ``pid`` may see it."""
    me = room.participants.get(pid)
    admitted = sorted(_admitted(room), key=lambda p: (p.admitted_at or 0.0, p.pid))
    result: dict[str, Any] = {
        "version": room.version,
        "code": room.code,
        "kind": room.kind.value,
        "title": room.title,
        "locked": room.locked,
        "ended": room.ended,
        "topology": topology(room, limits),
        # Everyone is shown it, those still waiting too (before they enter).
        "recording": room.recording,
        "recording_since": room.recording_since,
        "you": pid,
    }
    if me is None:
        return result
    result["role"] = me.role.value
    result["status"] = me.status.value
    result["actions"] = (
        sorted(a.value for a in PERMISSIONS.get((room.kind, me.role), frozenset()))
        if me.status is Status.ADMITTED
        else [Action.LEAVE.value]
    )
    if me.status is Status.QUEUED:
        line = queue(room)
        position = next(i for i, p in enumerate(line, 1) if p.pid == pid)
        result["queue"] = {
            "ticket": me.ticket,
            "position": position,
            "waiting": len(line),
            "estimate": math.ceil(estimated_wait(room, position, now=now, limits=limits)),
        }
        return result
    result["participants"] = [
        {
            "pid": p.pid,
            "name": p.name,
            "role": p.role.value,
            "audio": p.audio,
            "video": p.video,
            "screen": p.screen,
            "hand": p.hand,
            "floor": p.floor,
            "connected": p.connected,
            "instance": p.instance,
            "epoch": p.epoch,
            "polite": polite(pid, p.pid),
            "audio_mutes": p.audio_mutes,
            "video_mutes": p.video_mutes,
            "published": p.published,
        }
        for p in admitted
    ]
    if me.role in (Role.HOST, Role.MODERATOR):
        result["queue"] = [
            {
                "pid": p.pid,
                "name": p.name,
                "ticket": p.ticket,
                "position": i,
                "since": p.queued_at,
                "returning": p.returning,
                "connected": p.connected,
            }
            for i, p in enumerate(queue(room), 1)
        ]
        result["estimate"] = math.ceil(service_estimate(room, limits))
    return result
