"""Demo meetings for ``load_demo_data``: one of each kind the clerk can try."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from signaling.models import Meeting
from signaling.rules import Kind
from signaling.services import create_meeting, links

# (kind, title, owner, invited) — owners and guests are demo accounts.
DEMO_MEETINGS = (
    (Kind.CONSULTATION, "Konsultacje w Urzędzie Miejskim (demo)", "urzednik", ()),
    (Kind.BRIEFING, "Odprawa terenowa: stan wód (demo)", "urzednik", ("operator", "admin")),
    (Kind.PUBLIC, "Konsultacje społeczne: budżet obywatelski (demo)", "urzednik", ()),
    (Kind.PARENT_SLOT, "Wywiadówka klasy 3a (demo)", "nauczyciel", ()),
)


def ensure_demo_meetings() -> list[dict]:
    """Each demo meeting, created once (an ended one is opened again), with a
    fresh host link (the old key is stored hashed and cannot be shown again)."""
    users = {u.get_username(): u for u in get_user_model().objects.all()}
    result = []
    for kind, title, owner, invited in DEMO_MEETINGS:
        meeting = Meeting.objects.filter(title=title, kind=kind.value).first()
        if meeting is None:
            meeting, key = create_meeting(kind, title, owner=users.get(owner))
        else:
            key = meeting.set_host_key()
            meeting.ended_at = None
            meeting.state = None
            meeting.save(update_fields=["host_key_hash", "ended_at", "state"])
        meeting.invited.set([users[name] for name in invited if name in users])
        result.append({"kind": kind.value, "title": title, **links(meeting, key)})
    return result
