"""What a meeting keeps: its definition, its live room state, its records.

The live state (:class:`signaling.rules.Room`) is one JSON document on the
meeting's row, changed only under ``SELECT … FOR UPDATE`` (signaling.services),
so every daphne process sees one truth. Chat and the meeting log are rows of
their own: the office keeps them after the meeting.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import msgspec
from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from signaling.rules import Kind, Room

# No 0/o, 1/l/i: a code read aloud over the phone is typed right.
CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
CODE_LENGTH = 12  # 12 × log2(31) ≈ 59 bits: not guessable at any rate we allow


def new_code() -> str:
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return f"{raw[0:4]}-{raw[4:8]}-{raw[8:12]}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Meeting(models.Model):
    KIND_CHOICES = [
        (Kind.CONSULTATION.value, _("Consultation")),
        (Kind.BRIEFING.value, _("Field briefing")),
        (Kind.PUBLIC.value, _("Public consultation")),
        (Kind.PARENT_SLOT.value, _("Parent-teacher meeting")),
    ]

    code = models.CharField(max_length=20, unique=True, default=new_code, editable=False)
    kind = models.CharField(max_length=20, choices=KIND_CHOICES)
    title = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_meetings",
    )
    moderators = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="moderated_meetings"
    )
    invited = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="meeting_invitations"
    )
    # SHA-256 of the host link's key: the link makes its holder the host.
    host_key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    state = models.JSONField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("meeting")
        verbose_name_plural = _("meetings")

    def __str__(self) -> str:
        return f"{self.title} ({self.code})"

    def set_host_key(self) -> str:
        """A new host key (returned once, stored hashed)."""
        key = secrets.token_urlsafe(24)
        self.host_key_hash = hash_key(key)
        return key

    def host_key_matches(self, key: str) -> bool:
        return bool(self.host_key_hash) and hmac.compare_digest(self.host_key_hash, hash_key(key))

    def room(self) -> Room:
        """The live state, or a fresh room from the definition."""
        if self.state:
            return msgspec.convert(self.state, Room)
        return Room(code=self.code, kind=Kind(self.kind), title=self.title)


class ChatMessage(models.Model):
    class Status(models.TextChoices):
        PUBLISHED = "published", _("published")
        PENDING = "pending", _("waiting for a moderator")
        REJECTED = "rejected", _("rejected")

    meeting = models.ForeignKey(Meeting, on_delete=models.CASCADE, related_name="chat")
    pid = models.CharField(max_length=16)
    author = models.CharField(max_length=80)
    role = models.CharField(max_length=16)
    text = models.TextField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PUBLISHED)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.author}: {self.text[:40]}"

    def as_dict(self) -> dict:
        return {
            "id": self.pk,
            "pid": self.pid,
            "name": self.author,
            "role": self.role,
            "text": self.text,
            "status": self.status,
            "at": self.created_at.timestamp(),
        }


class MeetingEvent(models.Model):
    """One line of the meeting log: who joined, waited, was admitted, left."""

    meeting = models.ForeignKey(Meeting, on_delete=models.CASCADE, related_name="log")
    at = models.DateTimeField()
    kind = models.CharField(max_length=24)
    pid = models.CharField(max_length=16, blank=True)
    name = models.CharField(max_length=80, blank=True)
    actor = models.CharField(max_length=80, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S} {self.kind} {self.name}"
