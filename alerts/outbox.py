"""The durable outbox of alert deliveries (alerts.models.Delivery).

Publishing writes one delivery per (alert, subscriber, channel) in the same
transaction as the publication (:func:`publish`). Workers claim due deliveries
with ``SELECT … FOR UPDATE SKIP LOCKED`` (several workers never take the same
row) and a lease: a row is theirs until ``lease_until``. A worker records each
result only while it still holds the row. A worker killed at any moment loses
nothing: its rows are claimed again when their lease runs out, and providers
that accept an idempotency key get the same key again, so they send once.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q

from alerts import live, rules
from alerts.channels import Result
from alerts.models import Alert, AlertAudit, Delivery, Subscriber

Status = Delivery.Status


def _at(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)


def channels_of(subscriber: Subscriber) -> list[str]:
    """The confirmed channels of a subscriber (double opt-in done)."""
    found = []
    if subscriber.email and subscriber.email_confirmed_at:
        found.append(Delivery.Channel.EMAIL)
    if subscriber.phone and subscriber.phone_confirmed_at:
        found.append(Delivery.Channel.SMS)
    if subscriber.push_endpoint and subscriber.push_confirmed_at:
        found.append(Delivery.Channel.PUSH)
    return found


def wants(subscriber: Subscriber, alert: rules.Alert) -> bool:
    if subscriber.categories and alert.category.value not in subscriber.categories:
        return False
    return rules.reaches(alert, frozenset(subscriber.areas))


@transaction.atomic
def publish(alert_pk: int, actor, *, now: float) -> int:
    """Publish (or schedule) an approved alert; when it goes out, its
    deliveries are written in the same transaction. Returns how many."""
    alert = Alert.objects.select_for_update().get(pk=alert_pk)
    operator = rules.Operator(str(actor.pk))
    after, audit = rules.publish(alert.to_rules(), operator, now=now)
    alert.state = after.state.value
    alert.published_at = _at(after.published_at) if after.published_at else None
    alert.save(update_fields=["state", "published_at"])
    AlertAudit.objects.create(alert=alert, action=audit.action, actor=actor, at=_at(now))
    if after.state is not rules.State.PUBLISHED:
        return 0
    _retire_original(alert, after, now=now)
    live.announce_current(alert)
    return enqueue(alert, after, now=now)


def _retire_original(alert: Alert, published: rules.Alert, *, now: float) -> None:
    """A published Update or Cancel retires the alert it refers to."""
    if not alert.references_id:
        return
    original = Alert.objects.select_for_update().get(pk=alert.references_id)
    try:
        after, audit = rules.supersede(original.to_rules(), published, now=now)
    except rules.Refused:
        return  # the original already stepped aside (expired, or an earlier follow-up)
    original.state = after.state.value
    original.save(update_fields=["state"])
    live.announce_ended(original)
    AlertAudit.objects.create(
        alert=original, action=audit.action, actor=None, at=_at(now), detail=audit.detail
    )


def tick_alerts(*, now: float) -> dict[str, int]:
    """What time does to alerts: scheduled ones whose time came are published
    (their deliveries written in the same transaction), published ones past
    their expiry expire. Safe to run from several workers at once."""
    done = {"published": 0, "expired": 0}
    at = _at(now)
    due = Alert.objects.filter(
        Q(state=rules.State.SCHEDULED, effective__lte=at)
        | Q(state=rules.State.PUBLISHED, expires__lte=at)
    ).values_list("pk", flat=True)
    for pk in list(due[:100]):
        with transaction.atomic():
            skip = connection.features.has_select_for_update_skip_locked
            alert = Alert.objects.select_for_update(skip_locked=skip).filter(pk=pk).first()
            if alert is None:
                continue  # another worker has it
            after, audit = rules.tick(alert.to_rules(), now=now)
            if audit is None:
                continue
            alert.state = after.state.value
            alert.published_at = _at(after.published_at) if after.published_at else None
            alert.save(update_fields=["state", "published_at"])
            AlertAudit.objects.create(alert=alert, action=audit.action, actor=None, at=at)
            if after.state is rules.State.PUBLISHED:
                _retire_original(alert, after, now=now)
                live.announce_current(alert)
                enqueue(alert, after, now=now)
                done["published"] += 1
            elif after.state is rules.State.EXPIRED:
                live.announce_ended(alert)
                done["expired"] += 1
    return done


def enqueue(alert: Alert, published: rules.Alert, *, now: float) -> int:
    """One delivery per matching subscriber and confirmed channel (inside the
    caller's transaction)."""
    rows = []
    for subscriber in Subscriber.objects.iterator(chunk_size=2000):
        if not wants(subscriber, published):
            continue
        for channel in channels_of(subscriber):
            rows.append(
                Delivery(
                    alert=alert,
                    subscriber=subscriber,
                    channel=channel,
                    next_attempt_at=_at(now),
                    idempotency_key=f"a{alert.pk}s{subscriber.pk}{channel[0]}",
                )
            )
    Delivery.objects.bulk_create(rows, batch_size=2000, ignore_conflicts=True)
    return len(rows)


@dataclass
class Claimed:
    delivery: Delivery
    worker: str


def claim(
    worker: str,
    *,
    now: float,
    batch: int,
    lease: float,
    channels: list[str] | None = None,
    exclude: list[str] | None = None,
) -> list[Delivery]:
    """Take up to ``batch`` due deliveries for ``worker`` for ``lease``
    seconds (of the given ``channels`` only, or of all but ``exclude``)."""
    at = _at(now)
    due = (
        Delivery.objects.filter(status__in=[Status.QUEUED, Status.SENDING])
        .filter(next_attempt_at__lte=at)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=at))
        .order_by("next_attempt_at", "id")
    )
    if channels is not None:
        due = due.filter(channel__in=channels)
    if exclude:
        due = due.exclude(channel__in=exclude)
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True)
        ids = list(due.values_list("pk", flat=True)[:batch])
        Delivery.objects.filter(pk__in=ids).update(
            status=Status.SENDING,
            lease_until=_at(now + lease),
            claimed_by=worker,
            attempts=F("attempts") + 1,
        )
    return list(
        Delivery.objects.filter(pk__in=ids, claimed_by=worker).select_related("alert", "subscriber")
    )


def renew(worker: str, ids: list[int], now: float, lease: float) -> int:
    """Extend the lease of deliveries ``worker`` still holds and is sending."""
    return Delivery.objects.filter(pk__in=ids, claimed_by=worker, status=Status.SENDING).update(
        lease_until=_at(now + lease)
    )


def release(worker: str, ids: list[int]) -> int:
    """Give back claimed deliveries that were never sent (the worker is
    stopping): queued again at once, the try not counted."""
    return Delivery.objects.filter(pk__in=ids, claimed_by=worker, status=Status.SENDING).update(
        status=Status.QUEUED, lease_until=None, attempts=F("attempts") - 1
    )


def sent(delivery: Delivery, worker: str, *, now: float, provider_id: str = "") -> bool:
    return bool(record(worker, [(delivery, Result(True, provider_id=provider_id))], now=now))


def failed(delivery: Delivery, worker: str, *, now: float, error: str, permanent: bool) -> bool:
    """A failed try: again later with backoff, or for good after the limit
    (or at once when the provider said it can never work)."""
    result = Result(False, error=error, permanent=permanent)
    return bool(record(worker, [(delivery, result)], now=now))


def _failure(delivery: Delivery, result: Result, at: dt.datetime) -> dict:
    """What a failed try makes of a delivery: again later with backoff, or
    failed for good after the limit or when retrying cannot help."""
    give_up = result.permanent or delivery.attempts >= settings.ALERTS["MAX_ATTEMPTS"]
    wait = 0 if give_up else backoff(delivery.attempts)
    return {
        "status": Status.FAILED if give_up else Status.QUEUED,
        "next_attempt_at": at + dt.timedelta(seconds=wait),
        "lease_until": None,
        "last_error": result.error[:300],
        "updated_at": at,
    }


def _record_sent(worker: str, outcomes: list[tuple[Delivery, Result]], at: dt.datetime) -> int:
    """One UPDATE for many sent deliveries, each with its provider's id (an
    ORM ``bulk_update`` builds a CASE per field in Python: the worker's
    busiest code at thousands of messages a minute)."""
    table = connection.ops.quote_name(Delivery._meta.db_table)
    rows = ", ".join(["(%s, %s)"] * len(outcomes))
    when = connection.ops.adapt_datetimefield_value(at)
    params: list = [Status.SENT, when, when]
    for delivery, result in outcomes:
        params += [delivery.pk, result.provider_id[:100]]
    params += [worker, Status.SENDING]
    # Only the table's name and the placeholders are formatted in; every
    # value is a parameter. The statement starts with UPDATE (SQLite counts
    # the rows of no other) and names the VALUES columns as both databases
    # do: column1, column2.
    sql = (
        f"UPDATE {table} SET status = %s, sent_at = %s, provider_id = v.column2, "  # noqa: S608
        f"last_error = '', lease_until = NULL, updated_at = %s "
        f"FROM (VALUES {rows}) AS v "
        f"WHERE {table}.id = v.column1 AND {table}.claimed_by = %s AND {table}.status = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def record(worker: str, outcomes: list[tuple[Delivery, Result]], *, now: float) -> int:
    """Record the results of sends in one transaction, for the deliveries
    ``worker`` still holds (a worker whose lease ran out records nothing:
    another has the row). Addresses the provider says are gone are
    forgotten. Returns how many were recorded."""
    if not outcomes:
        return 0
    at = _at(now)
    recorded = 0
    with transaction.atomic():
        sent = [(d, r) for d, r in outcomes if r.ok]
        if sent:
            recorded += _record_sent(worker, sent, at)
        for delivery, result in outcomes:
            if result.ok:
                continue
            held = Delivery.objects.filter(
                pk=delivery.pk, claimed_by=worker, status=Status.SENDING
            ).update(**_failure(delivery, result, at))
            recorded += held
            if held and result.forget_address:
                forget_address(delivery)
    return recorded


# What each channel's address is made of, cleared when it is gone for good.
ADDRESS_FIELDS = {
    Delivery.Channel.EMAIL: {"email": "", "email_confirmed_at": None},
    Delivery.Channel.SMS: {"phone": "", "phone_confirmed_at": None},
    Delivery.Channel.PUSH: {
        "push_endpoint": "",
        "push_p256dh": "",
        "push_auth": "",
        "push_confirmed_at": None,
    },
}


def forget_address(delivery: Delivery) -> None:
    """The provider says this address no longer exists (a push subscription
    answered 404/410): remove it, so no later alert tries it again. Only if
    it is still the address this delivery was sent to."""
    subscriber = delivery.subscriber
    current = {
        Delivery.Channel.EMAIL: {"email": subscriber.email},
        Delivery.Channel.SMS: {"phone": subscriber.phone},
        Delivery.Channel.PUSH: {"push_endpoint": subscriber.push_endpoint},
    }[delivery.channel]
    Subscriber.objects.filter(pk=subscriber.pk, **current).update(
        **ADDRESS_FIELDS[delivery.channel]
    )


def backoff(attempts: int) -> float:
    """Seconds before the next try: exponential, capped, with full jitter."""
    base = settings.ALERTS["RETRY_BASE_SECONDS"]
    cap = settings.ALERTS["RETRY_MAX_SECONDS"]
    return random.uniform(0, min(cap, base * 2 ** (attempts - 1)))
