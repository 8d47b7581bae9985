"""What crisis alerts keep: alerts and their audit, subscribers, and the
outbox of deliveries (one row per alert × subscriber × channel, created in the
same transaction as the publication, so nothing published is ever lost)."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from alerts import rules


def _choices(enum) -> list[tuple[str, str]]:
    return [(member.value, member.value) for member in enum]


class Alert(models.Model):
    identifier = models.CharField(max_length=64, unique=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="alerts_written"
    )
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="alerts_approved",
    )
    category = models.CharField(max_length=16, choices=_choices(rules.Category))
    event = models.CharField(max_length=100)
    urgency = models.CharField(max_length=16, choices=_choices(rules.Urgency))
    severity = models.CharField(max_length=16, choices=_choices(rules.Severity))
    certainty = models.CharField(max_length=16, choices=_choices(rules.Certainty))
    headline = models.CharField(max_length=140)
    description = models.TextField()
    instruction = models.TextField(blank=True)
    areas = models.JSONField(default=list)
    effective = models.DateTimeField()
    expires = models.DateTimeField()
    msg_type = models.CharField(
        max_length=8, choices=_choices(rules.MsgType), default=rules.MsgType.ALERT.value
    )
    references = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="follow_ups"
    )
    state = models.CharField(
        max_length=20, choices=_choices(rules.State), default=rules.State.DRAFT.value
    )
    published_at = models.DateTimeField(null=True, blank=True)
    # Send the SMS in GSM-7 (Polish letters without diacritics): 160
    # characters a part instead of 70, at some cost to the spelling.
    sms_transliterate = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("alert")
        verbose_name_plural = _("alerts")

    def __str__(self) -> str:
        return f"{self.headline} ({self.state})"

    def to_rules(self) -> rules.Alert:
        return rules.Alert(
            id=self.identifier,
            author=str(self.author_id),
            category=rules.Category(self.category),
            event=self.event,
            urgency=rules.Urgency(self.urgency),
            severity=rules.Severity(self.severity),
            certainty=rules.Certainty(self.certainty),
            headline=self.headline,
            description=self.description,
            instruction=self.instruction,
            areas=frozenset(self.areas),
            effective=self.effective.timestamp(),
            expires=self.expires.timestamp(),
            msg_type=rules.MsgType(self.msg_type),
            references=self.references.identifier if self.references_id else None,
            state=rules.State(self.state),
            approved_by=str(self.approved_by_id) if self.approved_by_id else None,
            published_at=self.published_at.timestamp() if self.published_at else None,
        )


class AlertAudit(models.Model):
    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="audit")
    action = models.CharField(max_length=32)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    at = models.DateTimeField()
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.action}"


def _token() -> str:
    return secrets.token_urlsafe(24)


class Subscriber(models.Model):
    """One person's subscription: where to reach them, for which areas and
    categories. A channel counts only once it is confirmed (double opt-in)."""

    email = models.EmailField(blank=True)
    phone = models.CharField(max_length=16, blank=True)  # E.164
    areas = models.JSONField(default=list)
    categories = models.JSONField(default=list)  # empty: every category
    email_confirmed_at = models.DateTimeField(null=True, blank=True)
    phone_confirmed_at = models.DateTimeField(null=True, blank=True)
    # The phone's double opt-in: a 6-digit code sent by SMS, kept only as a
    # salted hash, with a limited number of tries.
    phone_code_hash = models.CharField(max_length=128, blank=True)
    phone_code_sent_at = models.DateTimeField(null=True, blank=True)
    phone_code_attempts = models.PositiveSmallIntegerField(default=0)
    # One browser's Web Push subscription (RFC 8030/8291): its endpoint on the
    # browser's push service and the keys its messages are encrypted to. The
    # browser's permission prompt is the opt-in.
    push_endpoint = models.URLField(max_length=1000, blank=True)
    push_p256dh = models.CharField(max_length=100, blank=True)
    push_auth = models.CharField(max_length=50, blank=True)
    push_confirmed_at = models.DateTimeField(null=True, blank=True)
    # The preferences page and one-click unsubscribe links carry this.
    token = models.CharField(max_length=64, unique=True, default=_token)
    # The resident's account the subscription is linked to ("My alerts"), if
    # any; a subscription needs no account, and outlives a deleted one. An
    # account may hold several: one per e-mail address and one per browser.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="alert_subscriptions",
    )
    consent_version = models.CharField(max_length=32)
    consent_at = models.DateTimeField()
    consent_source = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["push_endpoint"],
                condition=~models.Q(push_endpoint=""),
                name="one_subscriber_per_push_endpoint",
            )
        ]

    def __str__(self) -> str:
        return self.email or self.phone or f"subscriber {self.pk}"


class Delivery(models.Model):
    """One message to send: the outbox. Workers claim due rows with
    ``SELECT … FOR UPDATE SKIP LOCKED`` and a lease; a worker killed at any
    moment leaves its rows to be claimed again when the lease runs out."""

    class Channel(models.TextChoices):
        EMAIL = "email", _("e-mail")
        SMS = "sms", _("SMS")
        PUSH = "push", _("browser notification")

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        SENDING = "sending", _("sending")
        SENT = "sent", _("sent")
        DELIVERED = "delivered", _("delivered")
        FAILED = "failed", _("failed")

    alert = models.ForeignKey(Alert, on_delete=models.PROTECT, related_name="deliveries")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=8, choices=Channel.choices)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    lease_until = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=64, blank=True)
    # Passed to providers that accept one (SMSAPI idx, SerwerSMS unique_id):
    # a retry after a crash is then not sent twice.
    idempotency_key = models.CharField(max_length=50, unique=True)
    provider_id = models.CharField(max_length=100, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "subscriber", "channel"], name="one_delivery_per_channel"
            )
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="due_deliveries")]

    def __str__(self) -> str:
        return f"{self.channel} {self.status} #{self.pk}"
