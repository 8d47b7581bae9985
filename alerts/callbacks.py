"""Delivery reports from the SMS providers (not in any urlconf yet).

SMSAPI.pl calls ``notify_url`` (or the URL set in its panel) with GET and
comma-separated lists: ``MsgId``, ``status`` (402–410), ``idx``, ``donedate``
(unix time), ``to`` and more; it wants the body ``OK``.

Authentication. SMSAPI signs nothing, so the URL itself carries an
unguessable per-deployment secret (``settings.ALERTS["SMS_CALLBACK_SECRET"]``,
e.g. ``secrets.token_urlsafe(32)``), compared with ``hmac.compare_digest``. A
wrong secret, or none configured, is ``403`` and nothing is written.

What a report changes (:func:`alerts.reports.apply_report`, shared with the
SerwerSMS poll; one transaction, rows locked):

- the delivery is found by ``idx`` (our ``idempotency_key``, indexed) and must
  have that ``MsgId`` as its provider id, or none yet (a send answered "idx
  already used", or a report that overtook the worker); without ``idx``, by the
  provider id alone;
- the report's status is mapped to ours (alerts.sms_providers.SMSAPI_REPORT);
  it is written only when it is newer (queued/sending < sent < delivered/failed,
  the last two final): a replayed or late report changes nothing;
- an unknown ``MsgId``/``idx`` (a test message, another system on the same
  account, a delivery since deleted) writes nothing and is still answered
  ``OK``, or SMSAPI would retry it for ever; it is logged;
- a malformed report (no ``MsgId``/``status``, lists of different lengths) is
  ``400`` and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from alerts.models import Delivery
from alerts.reports import Report, apply_report
from alerts.sms_providers import SMSAPI_REPORT_NAMES, smsapi_status

log = logging.getLogger(__name__)

__all__ = ["Report", "apply_report", "parse_smsapi", "secret_ok", "smsapi_report"]

Status = Delivery.Status
MAX_REPORTS = 1000  # per callback; more is not a report SMSAPI sends


def secret_ok(given: str) -> bool:
    expected = settings.ALERTS.get("SMS_CALLBACK_SECRET", "")
    if not expected:  # not configured: every callback is refused
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",")] if value else []


def _when(value: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(int(value), tz=dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def parse_smsapi(query) -> list[Report] | None:
    """The reports of one SMSAPI callback, or None when it is malformed."""
    ids, codes = _split(query.get("MsgId", "")), _split(query.get("status", ""))
    if not ids or len(ids) != len(codes) or len(ids) > MAX_REPORTS:
        return None
    idxs = _split(query.get("idx", "")) or [""] * len(ids)
    dates = _split(query.get("donedate", "")) or [""] * len(ids)
    if len(idxs) != len(ids) or len(dates) != len(ids):
        return None
    reports = []
    for provider_id, code, idx, date in zip(ids, codes, idxs, dates, strict=True):
        status = smsapi_status(code)
        if not provider_id or status is None:
            return None
        name = SMSAPI_REPORT_NAMES.get(int(code), "")
        reports.append(Report(provider_id, idx, status, f"{code} {name}", _when(date)))
    return reports


@never_cache
@require_safe
def smsapi_report(request: HttpRequest, secret: str) -> HttpResponse:
    """SMSAPI's delivery-report callback: ``GET …/<secret>/?MsgId=…&status=…``."""
    if not secret_ok(secret):
        return HttpResponseForbidden("forbidden", content_type="text/plain")
    reports = parse_smsapi(request.GET)
    if reports is None:
        return HttpResponseBadRequest("bad report", content_type="text/plain")
    with transaction.atomic():
        # Lock in one order: two callbacks about the same messages never deadlock.
        for report in sorted(reports, key=lambda r: (r.idx, r.provider_id)):
            apply_report(report)
    return HttpResponse("OK", content_type="text/plain")
