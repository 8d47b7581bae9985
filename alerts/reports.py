"""Delivery reports from the SMS providers, on one status model.

SMSAPI.pl calls us with its reports (alerts.callbacks). SerwerSMS.pl is asked
for them (:func:`poll_serwersms`, from the worker's main loop at most every
``ALERTS_SMS_REPORT_POLL_SECONDS``): it can also push them to a URL set in its
panel, but that format is not documented to us.

Either way a report becomes an :class:`alerts.sms_providers.Report` (the
provider's status mapped to ours: ``SMSAPI_REPORT``, ``SERWERSMS_REPORT``) and
is written by :func:`apply_report`, inside the caller's transaction, on the
locked row:

- only when it is newer than what the delivery has (queued/sending < sent <
  delivered/failed, the last two final, ``sms_providers.RANK``): a replayed or
  late report changes nothing, not even ``updated_at``;
- a failure keeps the provider's reason in ``last_error`` (``report: …``);
- a report about another message than the delivery's (another provider id)
  changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from alerts.models import Delivery
from alerts.sms_providers import Report, SerwerSmsChannel, is_newer

log = logging.getLogger(__name__)

Status = Delivery.Status

__all__ = ["Report", "apply_report", "poll_due", "poll_serwersms"]


def _find(report: Report) -> Delivery | None:
    """The SMS delivery a report is about, locked: by ``idx`` (our
    idempotency key) when the report has one, and then only when its
    provider id is the report's or none yet; else by the provider id."""
    rows = Delivery.objects.select_for_update().filter(channel=Delivery.Channel.SMS)
    if report.idx:
        delivery = rows.filter(idempotency_key=report.idx).first()
        if delivery is not None and delivery.provider_id not in ("", report.provider_id):
            log.warning(
                "sms report: idx %s has provider id %s, report says %s; ignored",
                report.idx,
                delivery.provider_id,
                report.provider_id,
            )
            return None
    elif report.provider_id:
        delivery = rows.filter(provider_id=report.provider_id).first()
    else:
        delivery = None
    if delivery is None:
        log.info("sms report for unknown message %s (idx %r)", report.provider_id, report.idx)
    return delivery


def apply_report(report: Report, *, delivery: Delivery | None = None) -> bool:
    """Write one report (inside the caller's transaction). True when it
    changed the delivery.

    ``delivery``: the row the report is about, locked by the caller (a poll
    that asked the provider about it by its provider id); without it the row
    is found and locked here (:func:`_find`, the SMSAPI callback)."""
    if delivery is None:
        delivery = _find(report)
        if delivery is None:
            return False
    elif delivery.provider_id != report.provider_id:
        log.warning(
            "sms report for %s applied to delivery %s with provider id %s; ignored",
            report.provider_id,
            delivery.pk,
            delivery.provider_id,
        )
        return False
    if not is_newer(delivery.status, report.status):
        return False
    changes = {"status": report.status, "lease_until": None}
    if not delivery.provider_id and report.provider_id:
        changes["provider_id"] = report.provider_id[:100]
    if delivery.sent_at is None:
        changes["sent_at"] = report.at or timezone.now()
    if report.status == Status.FAILED:
        changes["last_error"] = f"report: {report.detail}"[:300]
    Delivery.objects.filter(pk=delivery.pk).update(**changes, updated_at=timezone.now())
    return True


# --- SerwerSMS: asked, not told -------------------------------------------------


def poll_due(last: float | None, now: float, interval: float) -> bool:
    """Whether a poll every ``interval`` seconds is due at ``now``, the last
    one having been at ``last`` (None: never). An ``interval`` of 0 or less
    turns polling off; a clock set back polls at once rather than waiting."""
    if interval <= 0:
        return False
    return last is None or now - last >= interval or now < last


def poll_serwersms(
    channel: SerwerSmsChannel, *, now: float, batch: int = 200, window_hours: float = 48
) -> int:
    """Ask SerwerSMS how the SMS deliveries still ``sent`` are doing and
    write its answers (:func:`apply_report`). Returns how many changed.

    Asked about: SMS deliveries with status ``sent``, a provider id, and
    ``sent_at`` within ``window_hours`` before ``now`` (unix time), oldest
    first, ``batch`` ids in a request. Every one of them is asked about, in
    as many requests as it takes (a batch of messages that never get a final
    report does not hide the newer ones). The request is made outside any
    transaction; each batch's answers are then written in one short one,
    on rows locked in id order, so a report the worker or another poll wrote
    in between is not undone. Raises ``ProviderUnreachable`` when the
    provider cannot answer (what was written before stays)."""
    at = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    pending = (
        Delivery.objects.filter(
            channel=Delivery.Channel.SMS,
            status=Status.SENT,
            sent_at__gte=at - dt.timedelta(hours=window_hours),
            sent_at__lte=at,
        )
        .exclude(provider_id="")
        .order_by("sent_at", "pk")
    )
    changed = 0
    after: tuple[dt.datetime, int] | None = None
    while True:
        rows = pending
        if after is not None:  # keyset: the next batch after the last one
            rows = rows.filter(Q(sent_at__gt=after[0]) | Q(sent_at=after[0], pk__gt=after[1]))
        page = list(rows.values_list("pk", "provider_id", "sent_at")[:batch])
        if not page:
            break
        reports = channel.reports([provider_id for _, provider_id, _ in page])
        changed += _write(page, reports)
        if len(page) < batch:
            break
        after = (page[-1][2], page[-1][0])
    return changed


def _write(page: list[tuple[int, str, dt.datetime]], reports: list[Report]) -> int:
    """Apply the provider's answers about one batch; how many changed."""
    pk_of: dict[str, int] = {}
    for pk, provider_id, _ in page:
        pk_of.setdefault(provider_id, pk)
    about = {pk_of[r.provider_id]: r for r in reports if r.provider_id in pk_of}
    if not about:
        return 0
    changed = 0
    with transaction.atomic():
        for row in Delivery.objects.select_for_update().filter(pk__in=about).order_by("pk"):
            changed += apply_report(about[row.pk], delivery=row)
    return changed
