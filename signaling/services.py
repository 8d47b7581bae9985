"""The I/O around the meeting rules: rooms in the database, changed under a
row lock; the meeting log; chat; links and limits from settings.

Every change of a room goes through :func:`change_room`: one transaction that
locks the meeting's row, lets the expired leave, applies a pure rule from
signaling.rules, stores the new state and its log lines, and returns the new
room. Two daphne processes never change one room at once, and a process killed
between two changes loses nothing that was stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from channels.db import database_sync_to_async as sync_to_async
from django.conf import settings
from django.db import transaction

from signaling import rules
from signaling.models import ChatMessage, Meeting, MeetingEvent
from signaling.rules import Kind, Room

# Events that make the meeting log (the rest are only told to people).
LOGGED = frozenset(
    {
        "joined",
        "queued",
        "admitted",
        "reconnected",
        "sent_back",
        "left",
        "muted",
        "locked",
        "unlocked",
        "ended",
        "host",
        "floor_given",
        "floor_taken",
        "recording_on",
        "recording_off",
    }
)


def limits() -> rules.Limits:
    m = settings.MEETINGS
    lease = settings.REALTIME["HEARTBEAT_INTERVAL"] * 3
    return rules.Limits(
        call_max=m["CALL_MAX"],
        briefing_max=m["BRIEFING_MAX"],
        public_max=m["PUBLIC_MAX"],
        mesh_max=m["MESH_MAX"],
        sfu=m["SFU"],
        force_sfu=m["FORCE_SFU"],
        reconnect_grace=m["RECONNECT_GRACE"],
        lease=max(lease, m["RECONNECT_GRACE"]),
        service_default=m["SERVICE_MINUTES"] * 60,
    )


def principal_of_user(user) -> str:
    return f"user:{user.pk}"


def _with_definition(meeting: Meeting, room: Room) -> Room:
    """The room with who owns, moderates and is invited, as stored now."""
    room.owner = principal_of_user(meeting.owner) if meeting.owner_id else ""
    room.moderators = [f"user:{pk}" for pk in meeting.moderators.values_list("pk", flat=True)]
    room.invited = [f"user:{pk}" for pk in meeting.invited.values_list("pk", flat=True)]
    return room


def _fingerprint(room: Room) -> bytes:
    """The room without its leases: what people can see changed."""
    plain = msgspec.to_builtins(room)
    for participant in plain["participants"].values():
        participant.pop("lease_until", None)
    plain.pop("version", None)
    return msgspec.json.encode(plain)


@dataclass
class Changed:
    room: Room
    events: list[rules.Event]
    pid: str | None
    visible: bool  # people's views changed: tell everyone


def change_room_sync(
    code: str, change: Callable[[Room], rules.Outcome], *, now: float, refresh: bool = False
) -> Changed:
    with transaction.atomic():
        meeting = Meeting.objects.select_for_update().get(code=code)
        before = meeting.room()
        if refresh or not meeting.state:
            before = _with_definition(meeting, before)
        expired = rules.expire(before, now=now)
        outcome = change(expired.room)
        events = expired.events + outcome.events
        after = outcome.room
        visible = _fingerprint(after) != _fingerprint(before)
        if visible:
            after.version = before.version + 1
        if visible or after != before:
            meeting.state = msgspec.to_builtins(after)
            fields = ["state"]
            if after.ended and meeting.ended_at is None:
                meeting.ended_at = dt.datetime.fromtimestamp(now, tz=dt.UTC)
                fields.append("ended_at")
            meeting.save(update_fields=fields)
        at = dt.datetime.fromtimestamp(now, tz=dt.UTC)
        names = {p.pid: p.name for p in before.participants.values()}
        names.update({p.pid: p.name for p in after.participants.values()})
        MeetingEvent.objects.bulk_create(
            [
                MeetingEvent(
                    meeting=meeting,
                    at=at,
                    kind=e.kind,
                    pid=e.pid or "",
                    name=e.name,
                    actor=names.get(e.actor or "", ""),
                    detail=e.detail,
                )
                for e in events
                if e.kind in LOGGED
            ]
        )
    return Changed(after, events, outcome.pid, visible)


change_room = sync_to_async(change_room_sync)


def find_meeting_sync(code: str) -> Meeting | None:
    return Meeting.objects.filter(code=code).first()


find_meeting = sync_to_async(find_meeting_sync)


def create_meeting(kind: Kind, title: str, *, owner=None) -> tuple[Meeting, str]:
    """A new meeting and its host key (shown once: it is stored hashed)."""
    meeting = Meeting(kind=kind.value, title=title.strip()[:200], owner=owner)
    key = meeting.set_host_key()
    meeting.save()
    return meeting, key


def links(meeting: Meeting, host_key: str | None = None) -> dict[str, str]:
    base = f"{settings.PUBLIC_BASE_URL}/meet/{meeting.code}/"
    result = {"guest_link": base}
    if host_key:
        result["host_link"] = f"{base}?key={host_key}"
    return result


def departure_reason_sync(code: str, pid: str) -> str | None:
    event = (
        MeetingEvent.objects.filter(meeting__code=code, pid=pid, kind="left")
        .order_by("-at", "-id")
        .first()
    )
    return event.detail.get("reason") if event is not None else None


departure_reason = sync_to_async(departure_reason_sync)


def log_event_sync(
    code: str, kind: str, *, now: float, pid: str = "", name: str = "", detail: dict | None = None
) -> None:
    """A line of the meeting log that no change of the room made (what the
    media plane did: a recording's file started, saved, or not started)."""
    meeting = Meeting.objects.only("pk").get(code=code)
    MeetingEvent.objects.create(
        meeting=meeting,
        at=dt.datetime.fromtimestamp(now, tz=dt.UTC),
        kind=kind,
        pid=pid,
        name=name[:80],
        detail=detail or {},
    )


log_event = sync_to_async(log_event_sync)


# --- Chat ------------------------------------------------------------------------


def save_chat_sync(code: str, pid: str, name: str, role: str, text: str, pending: bool) -> dict:
    meeting = Meeting.objects.only("pk").get(code=code)
    message = ChatMessage.objects.create(
        meeting=meeting,
        pid=pid,
        author=name,
        role=role,
        text=text,
        status=ChatMessage.Status.PENDING if pending else ChatMessage.Status.PUBLISHED,
    )
    return message.as_dict()


save_chat = sync_to_async(save_chat_sync)


def chat_count_since_sync(code: str, pid: str, since: float) -> int:
    return ChatMessage.objects.filter(
        meeting__code=code, pid=pid, created_at__gte=dt.datetime.fromtimestamp(since, tz=dt.UTC)
    ).count()


chat_count_since = sync_to_async(chat_count_since_sync)


def moderate_chat_sync(code: str, message_id: int, publish: bool) -> dict | None:
    with transaction.atomic():
        message = (
            ChatMessage.objects.select_for_update()
            .filter(meeting__code=code, pk=message_id, status=ChatMessage.Status.PENDING)
            .first()
        )
        if message is None:
            return None
        message.status = ChatMessage.Status.PUBLISHED if publish else ChatMessage.Status.REJECTED
        message.save(update_fields=["status"])
        return message.as_dict()


moderate_chat = sync_to_async(moderate_chat_sync)


def chat_history_sync(code: str, pid: str, moderator: bool, limit: int = 100) -> list[dict]:
    """The messages ``pid`` may see: published ones, their own questions and,
    for moderators, the questions waiting for them."""
    from django.db.models import Q

    visible = Q(status=ChatMessage.Status.PUBLISHED) | Q(pid=pid)
    if moderator:
        visible |= Q(status=ChatMessage.Status.PENDING)
    rows = ChatMessage.objects.filter(visible, meeting__code=code).order_by("-id")[:limit]
    return [m.as_dict() for m in reversed(rows)]


chat_history = sync_to_async(chat_history_sync)
