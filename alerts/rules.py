"""The rules of a crisis alert, as pure code: no I/O, time from the caller.

An alert follows CAP 1.2 (OASIS Common Alerting Protocol): category, event,
urgency, severity, certainty, headline, description, instruction, areas,
effective and expires. Its life:

    draft ──submit──► awaiting approval ──approve (another operator)──► approved
      │                    │ (Severe, Extreme)                             │
      └──submit (Minor, Moderate, Unknown)─────────────────────────────────┤
                                                                           ▼
                             scheduled ◄── publish before `effective` ── approved
                                 │ effective reached                       │ publish
                                 ▼                                         ▼
                             published ──► expired (at `expires`)
                                 │ update: a new alert (msgType Update) replaces it
                                 │ cancel: a new alert (msgType Cancel) withdraws it
                                 ▼
                             superseded / cancelled

Four eyes: an alert of severity Severe or Extreme is published only after a
second operator, not its author, approved it, and only operators who may
approve can. Every change returns the new alert and an audit entry; a change
that is not allowed raises :class:`Refused` and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum


class Category(StrEnum):
    GEO = "Geo"
    MET = "Met"
    SAFETY = "Safety"
    SECURITY = "Security"
    RESCUE = "Rescue"
    FIRE = "Fire"
    HEALTH = "Health"
    ENV = "Env"
    TRANSPORT = "Transport"
    INFRA = "Infra"
    CBRNE = "CBRNE"
    OTHER = "Other"


class Urgency(StrEnum):
    IMMEDIATE = "Immediate"
    EXPECTED = "Expected"
    FUTURE = "Future"
    PAST = "Past"
    UNKNOWN = "Unknown"


class Severity(StrEnum):
    EXTREME = "Extreme"
    SEVERE = "Severe"
    MODERATE = "Moderate"
    MINOR = "Minor"
    UNKNOWN = "Unknown"


class Certainty(StrEnum):
    OBSERVED = "Observed"
    LIKELY = "Likely"
    POSSIBLE = "Possible"
    UNLIKELY = "Unlikely"
    UNKNOWN = "Unknown"


class MsgType(StrEnum):
    ALERT = "Alert"
    UPDATE = "Update"
    CANCEL = "Cancel"


class State(StrEnum):
    DRAFT = "draft"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    SCHEDULED = "scheduled"
    PUBLISHED = "published"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"  # replaced by an Update
    CANCELLED = "cancelled"  # withdrawn by a Cancel


NEEDS_SECOND_OPERATOR = frozenset({Severity.SEVERE, Severity.EXTREME})
WHOLE_GMINA = "gmina"  # the area code meaning every area


@dataclass(frozen=True)
class Operator:
    id: str
    may_approve: bool = False


@dataclass(frozen=True)
class Alert:
    id: str
    author: str
    category: Category
    event: str
    urgency: Urgency
    severity: Severity
    certainty: Certainty
    headline: str
    description: str
    instruction: str
    areas: frozenset[str]
    effective: float
    expires: float
    msg_type: MsgType = MsgType.ALERT
    references: str | None = None  # the id of the alert an Update or Cancel refers to
    state: State = State.DRAFT
    approved_by: str | None = None
    published_at: float | None = None


@dataclass(frozen=True)
class Audit:
    action: str
    actor: str
    at: float
    detail: dict = field(default_factory=dict)


class Refused(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


LIMITS = {"headline": 140, "event": 100, "description": 4000, "instruction": 2000}


def check(alert: Alert) -> None:
    """What every alert must be before it leaves the draft."""
    for name, limit in LIMITS.items():
        value = getattr(alert, name)
        if name in ("headline", "event", "description") and not value.strip():
            raise Refused(f"{name}_missing")
        if len(value) > limit:
            raise Refused(f"{name}_too_long")
    if alert.msg_type is not MsgType.CANCEL and not alert.instruction.strip():
        # "Jak się zachować": an alert without instructions frightens and does not help.
        raise Refused("instruction_missing")
    if not alert.areas:
        raise Refused("areas_missing")
    if alert.expires <= alert.effective:
        raise Refused("expires_before_effective")


def needs_approval(alert: Alert) -> bool:
    return alert.severity in NEEDS_SECOND_OPERATOR


def submit(alert: Alert, actor: Operator, *, now: float) -> tuple[Alert, Audit]:
    if alert.state is not State.DRAFT:
        raise Refused("not_a_draft")
    check(alert)
    if alert.expires <= now:
        raise Refused("already_expired")
    state = State.AWAITING_APPROVAL if needs_approval(alert) else State.APPROVED
    return replace(alert, state=state), Audit("submitted", actor.id, now, {"state": state.value})


def approve(alert: Alert, actor: Operator, *, now: float) -> tuple[Alert, Audit]:
    if alert.state is not State.AWAITING_APPROVAL:
        raise Refused("not_awaiting_approval")
    if not actor.may_approve:
        raise Refused("may_not_approve")
    if actor.id == alert.author:
        raise Refused("second_operator_needed")
    return (
        replace(alert, state=State.APPROVED, approved_by=actor.id),
        Audit("approved", actor.id, now),
    )


def reject(alert: Alert, actor: Operator, *, now: float, reason: str) -> tuple[Alert, Audit]:
    """Back to the author's draft, with the reason."""
    if alert.state is not State.AWAITING_APPROVAL:
        raise Refused("not_awaiting_approval")
    if not actor.may_approve or actor.id == alert.author:
        raise Refused("may_not_approve")
    return replace(alert, state=State.DRAFT), Audit("rejected", actor.id, now, {"reason": reason})


def publish(alert: Alert, actor: Operator, *, now: float) -> tuple[Alert, Audit]:
    """Publish now, or schedule it for its ``effective`` time."""
    if alert.state is not State.APPROVED:
        raise Refused(
            "needs_approval" if alert.state is State.AWAITING_APPROVAL else "not_approved"
        )
    if alert.expires <= now:
        raise Refused("already_expired")
    if alert.effective > now:
        return replace(alert, state=State.SCHEDULED), Audit("scheduled", actor.id, now)
    return (
        replace(alert, state=State.PUBLISHED, published_at=now),
        Audit("published", actor.id, now),
    )


def tick(alert: Alert, *, now: float) -> tuple[Alert, Audit | None]:
    """What time does: a scheduled alert goes out, a published one expires."""
    if alert.state is State.SCHEDULED and alert.effective <= now:
        if alert.expires <= now:
            return replace(alert, state=State.EXPIRED), Audit("expired", "system", now)
        return (
            replace(alert, state=State.PUBLISHED, published_at=now),
            Audit("published", "system", now),
        )
    if alert.state is State.PUBLISHED and alert.expires <= now:
        return replace(alert, state=State.EXPIRED), Audit("expired", "system", now)
    return alert, None


def follow_up(
    original: Alert, draft: Alert, actor: Operator, *, now: float
) -> tuple[Alert, Alert, Audit]:
    """An Update or a Cancel of a published (or scheduled) alert: the new
    alert refers to the original, and the original steps aside when the new one
    is published (see :func:`supersede`). Returns the checked follow-up draft."""
    if original.state not in (State.PUBLISHED, State.SCHEDULED):
        raise Refused("original_not_live")
    if draft.msg_type not in (MsgType.UPDATE, MsgType.CANCEL):
        raise Refused("not_a_follow_up")
    draft = replace(draft, references=original.id, state=State.DRAFT)
    check(draft)
    return (
        original,
        draft,
        Audit(draft.msg_type.value.lower(), actor.id, now, {"references": original.id}),
    )


def supersede(original: Alert, follow: Alert, *, now: float) -> tuple[Alert, Audit]:
    """The original once its Update or Cancel is published."""
    if follow.references != original.id or follow.state is not State.PUBLISHED:
        raise Refused("follow_up_not_published")
    state = State.CANCELLED if follow.msg_type is MsgType.CANCEL else State.SUPERSEDED
    return replace(original, state=state), Audit(state.value, follow.author, now, {"by": follow.id})


def is_current(alert: Alert, *, now: float) -> bool:
    """Shown on the website and the live banner now."""
    return (
        alert.state is State.PUBLISHED
        and alert.msg_type is not MsgType.CANCEL
        and alert.effective <= now < alert.expires
    )


def reaches(alert: Alert, subscribed_areas: frozenset[str]) -> bool:
    """Whether a subscriber of these areas gets this alert."""
    if WHOLE_GMINA in alert.areas or WHOLE_GMINA in subscribed_areas:
        return True
    return bool(alert.areas & subscribed_areas)


# RFC 8030 §5.3 Urgency and a TTL for Web Push, from the CAP severity: an
# extreme warning must wake a phone; a minor one may wait for the next wake.
PUSH_URGENCY = {
    Severity.EXTREME: "high",
    Severity.SEVERE: "high",
    Severity.MODERATE: "normal",
    Severity.MINOR: "low",
    Severity.UNKNOWN: "normal",
}


def push_ttl(alert: Alert, *, now: float) -> int:
    """Seconds a push service keeps the message: no longer than the alert lives."""
    return max(0, int(alert.expires - now))
