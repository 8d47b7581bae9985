"""``manage.py create_meeting --kind consultation --title "…"``: a new meeting,
printed as JSON (its code, the host link and the guest link), for scripts and
for the demo data."""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from signaling.rules import Kind
from signaling.services import create_meeting, links


class Command(BaseCommand):
    help = (
        "Create a virtual meeting and print JSON with its code, host link and guest link. "
        "The host link carries a secret key: whoever opens it hosts the meeting."
    )

    def add_arguments(self, parser):
        parser.add_argument("--kind", required=True, choices=[k.value for k in Kind])
        parser.add_argument("--title", required=True)
        parser.add_argument("--owner", help="username of the account that owns (hosts) it")
        parser.add_argument("--moderator", action="append", default=[], help="username; may repeat")
        parser.add_argument(
            "--invite",
            action="append",
            default=[],
            help="username of a staff account invited to a briefing; may repeat",
        )

    def handle(self, *args, kind: str, title: str, owner: str | None, moderator, invite, **_):
        title = " ".join(title.split())
        if not title:
            raise CommandError("--title must not be empty")
        if len(title) > 200:
            raise CommandError("--title is longer than 200 characters")
        users = get_user_model().objects
        wanted = {name for name in [owner, *moderator, *invite] if name}
        found = {u.get_username(): u for u in users.filter(username__in=wanted)}
        missing = sorted(wanted - found.keys())
        if missing:
            raise CommandError(f"no such account: {', '.join(missing)}")
        if invite and kind != Kind.BRIEFING:
            raise CommandError("--invite is for briefings (--kind briefing)")
        with transaction.atomic():
            meeting, key = create_meeting(Kind(kind), title, owner=found.get(owner))
            meeting.moderators.set([found[name] for name in moderator])
            meeting.invited.set([found[name] for name in invite])
        result = {
            "code": meeting.code,
            "kind": meeting.kind,
            "title": meeting.title,
            **links(meeting, key),
        }
        result["guest_link_with_name"] = result["guest_link"] + "?name=<display name>"
        self.stdout.write(json.dumps(result, ensure_ascii=False))
