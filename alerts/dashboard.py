"""The delivery dashboard of the operator console (issue 4, point 5).

Who. The console's operators, by the console's own check
(:func:`alerts.console.operator_required` for the pages, :func:`may_operate`
for the socket): an anonymous visitor gets the login page (the socket closes
with 4001), anyone else 403 (the socket closes with 4003).

Pages:

- ``deliveries``: one alert's deliveries counted per channel × status, as a
  table (the accessible source of truth, rendered by the server, so the page
  works without JavaScript), a chart drawn from the same numbers by
  ``alerts/js/dashboard.js``, the progress ("X of Y sent", the share already
  recorded), the time since publication and, once every delivery is
  recorded, how long it took.
- ``delivery_list``: the deliveries one by one, 50 a page, filtered by channel
  and status (validated: an unknown value is said in words, never a 500), with
  masked recipients (an operator needs to tell them apart, not to read the
  addresses). A search by one exact e-mail address or phone number answers
  "did my mother get it?"; it is a POST, so the address stays out of URLs,
  access logs and the browser's history.

Live: :class:`DeliveryDashboardConsumer` at
``/ws/alerts/console/<pk>/deliveries/`` speaks the hub's envelope and sends a
``deliveries`` message with the counts on connect and then, every
``ALERTS["DASHBOARD_SECONDS"]`` (1 s by default), only when they changed. The
counts are one GROUP BY query on Delivery; a thousand operators would be a
thousand such queries a second, which is why the socket is for operators only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.db.models import Count, Max, Q
from django.db.models.functions import Coalesce
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from alerts.console import STATE_LABELS, may_operate, operator_required
from alerts.forms import PHONE_ERRORS
from alerts.models import Alert, Delivery
from alerts.sms_providers import InvalidPhone, normalize_phone
from hub import metrics
from hub.consumers import EnvelopeConsumer
from hub.envelope import CloseCode, Message

log = logging.getLogger(__name__)

Channel = Delivery.Channel
Status = Delivery.Status

CHANNELS: tuple[str, ...] = tuple(Channel.values)
STATUSES: tuple[str, ...] = tuple(Status.values)
# Sent: the provider took it (a delivery report may follow). Recorded: the
# worker is done with it, one way or the other.
SENT = frozenset({Status.SENT.value, Status.DELIVERED.value})
RECORDED = SENT | {Status.FAILED.value}
PAGE_SIZE = 50
SEARCH_RESULTS = 50

# One msgid for the server's rendering and the page's script (which fills the
# same %(name)s placeholders), so both say the same in either language.
TEXTS = {
    "progress": _("%(sent)s of %(total)s sent"),
    "percent": _("%(percent)s%% recorded"),
    "failed": _("%(failed)s failed"),
    "empty": _("No deliveries for this alert yet."),
    "complete": _("All deliveries are recorded: %(sent)s of %(total)s sent, %(failed)s failed."),
    "live": _("Live: the numbers update by themselves."),
    "lost": _("Connection lost — reconnecting…"),
    "closed": _("Live updates have stopped. Reload the page to see current numbers."),
    "chart_label": _("Deliveries per channel, by status"),
    "none": _("none"),
}


def dashboard_seconds() -> float:
    """How often the socket looks at the counts (``ALERTS["DASHBOARD_SECONDS"]``)."""
    return settings.ALERTS["DASHBOARD_SECONDS"]


# --- Rules (no I/O) ------------------------------------------------------------------


class DeliveryCounts(Message, tag="deliveries"):
    """One alert's deliveries per channel × status (server → client).

    ``sent`` counts sent and delivered, ``recorded`` those and the failed;
    ``finished_at`` (a Unix time) is set once nothing is queued or sending.
    """

    counts: dict[str, dict[str, int]]
    total: int
    sent: int
    failed: int
    recorded: int
    percent: int
    published_at: float | None = None
    finished_at: float | None = None


def percent_of(part: int, whole: int) -> int:
    """Rounded down: 100 only when every delivery is counted, never 99.6 → 100."""
    return part * 100 // whole if whole else 0


def summarize(
    rows: Iterable[tuple[str, str, int, dt.datetime | None]],
    published_at: dt.datetime | None = None,
) -> DeliveryCounts:
    """The counts from ``(channel, status, count, last change)`` rows (one per
    group of :func:`count_rows`). Unknown channels or statuses are left out."""
    counts = {channel: dict.fromkeys(STATUSES, 0) for channel in CHANNELS}
    last: dt.datetime | None = None
    for channel, status, count, changed in rows:
        if channel not in counts or status not in counts[channel]:
            continue
        counts[channel][status] += count
        if changed is not None and (last is None or changed > last):
            last = changed
    by_status = {status: sum(counts[c][status] for c in CHANNELS) for status in STATUSES}
    total = sum(by_status.values())
    recorded = sum(by_status[s] for s in RECORDED)
    finished = total > 0 and recorded == total and last is not None
    return DeliveryCounts(
        counts=counts,
        total=total,
        sent=sum(by_status[s] for s in SENT),
        failed=by_status[Status.FAILED.value],
        recorded=recorded,
        percent=percent_of(recorded, total),
        published_at=published_at.timestamp() if published_at else None,
        finished_at=last.timestamp() if finished else None,
    )


def duration(seconds: float) -> str:
    """``H:MM:SS`` (the same in every language; the page's script writes it alike)."""
    whole = max(0, int(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def iso_duration(seconds: float) -> str:
    """For ``<time datetime>``: ISO 8601, e.g. ``PT1H5M3S``."""
    whole = max(0, int(seconds))
    return f"PT{whole // 3600}H{whole % 3600 // 60}M{whole % 60}S"


def mask_email(address: str) -> str:
    """``jan.kowalski@example.pl`` → ``j***@example.pl``."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return "***"
    return f"{local[0]}***@{domain}"


def mask_phone(number: str) -> str:
    """``+48600123789`` → ``+48 *** *** 789``."""
    digits = number.strip()
    if len(digits) < 4:
        return "***"
    if digits.startswith("+48") and len(digits) == 12:
        return f"+48 *** *** {digits[-3:]}"
    return f"*** {digits[-3:]}"


_EMAIL_IN_TEXT = re.compile(r"[^\s<>\"'(),;:]+@[^\s<>\"'(),;:]+")
_NUMBER_IN_TEXT = re.compile(r"\+?\d[\d ]{7,}\d")


def mask_error(text: str) -> str:
    """A delivery's last error as an operator sees it: an address or a phone
    number a provider's answer repeats is masked like the recipient column."""
    text = _EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group()), text)
    return _NUMBER_IN_TEXT.sub(lambda m: f"*** {m.group()[-3:]}", text)


def push_host(endpoint: str) -> str:
    """The push service's host of a Web Push endpoint (the rest identifies the browser)."""
    try:
        return urlsplit(endpoint).hostname or "?"
    except ValueError:
        return "?"


def recipient(channel: str, email: str, phone: str, endpoint: str) -> str:
    """Who a delivery went to, masked; the subscriber may have removed it since."""
    if channel == Channel.EMAIL and email:
        return mask_email(email)
    if channel == Channel.SMS and phone:
        return mask_phone(phone)
    if channel == Channel.PUSH and endpoint:
        return str(_("browser (%(host)s)") % {"host": push_host(endpoint)})
    return str(_("(no longer on file)"))


# --- Queries ---------------------------------------------------------------------------


def count_rows(alert_pk: int) -> list[tuple[str, str, int, dt.datetime | None]]:
    """One query: the alert's deliveries grouped by channel and status, with
    the last time one of each group was sent (or, failed, last touched)."""
    return list(
        Delivery.objects.filter(alert_id=alert_pk)
        .values("channel", "status")
        .annotate(count=Count("id"), last=Max(Coalesce("sent_at", "updated_at")))
        .order_by()
        .values_list("channel", "status", "count", "last")
    )


def published_at_of(alert_pk: int) -> tuple[bool, dt.datetime | None]:
    """Whether the alert exists, and when it was published."""
    found = list(Alert.objects.filter(pk=alert_pk).values_list("published_at", flat=True))
    return bool(found), found[0] if found else None


# --- The dashboard page ------------------------------------------------------------------


def _texts(counts: DeliveryCounts) -> dict:
    return {
        "progress": TEXTS["progress"] % {"sent": counts.sent, "total": counts.total},
        "percent": TEXTS["percent"] % {"percent": counts.percent},
        "failed": TEXTS["failed"] % {"failed": counts.failed},
    }


@operator_required
def deliveries(request, pk: int):
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    alert = get_object_or_404(Alert, pk=pk)
    counts = summarize(count_rows(alert.pk), alert.published_at)
    now = timezone.now().timestamp()
    rows = [
        {
            "channel": channel,
            "label": Channel(channel).label,
            "cells": [(status, counts.counts[channel][status]) for status in STATUSES],
            "total": sum(counts.counts[channel].values()),
        }
        for channel in CHANNELS
    ]
    totals = [(status, sum(counts.counts[c][status] for c in CHANNELS)) for status in STATUSES]
    since = now - counts.published_at if counts.published_at else None
    took = (
        counts.finished_at - counts.published_at
        if counts.finished_at and counts.published_at
        else None
    )
    context = {
        "alert": alert,
        "state": STATE_LABELS.get(alert.state, alert.state),
        "counts": counts,
        "rows": rows,
        "totals": totals,
        "statuses": [(status, Status(status).label) for status in STATUSES],
        "text": _texts(counts),
        "since": duration(since) if since is not None else None,
        "since_iso": iso_duration(since) if since is not None else None,
        "took": duration(took) if took is not None else None,
        "took_iso": iso_duration(took) if took is not None else None,
        "server_now": now,
        "script_data": {
            "counts": {
                "counts": counts.counts,
                "total": counts.total,
                "sent": counts.sent,
                "failed": counts.failed,
                "recorded": counts.recorded,
                "percent": counts.percent,
                "published_at": counts.published_at,
                "finished_at": counts.finished_at,
            },
            "server_now": now,
            "socket": f"/ws/alerts/console/{alert.pk}/deliveries/",
            "channels": {c: str(Channel(c).label) for c in CHANNELS},
            "statuses": {s: str(Status(s).label) for s in STATUSES},
            "text": {key: str(value) for key, value in TEXTS.items()},
        },
    }
    return render(request, "alerts/console_deliveries.html", context)


# --- One by one ------------------------------------------------------------------------------


class DeliveryFilter(forms.Form):
    channel = forms.ChoiceField(
        label=_("Channel"),
        required=False,
        choices=[("", _("all channels")), *Channel.choices],
        error_messages={
            "invalid_choice": _(
                "There is no channel “%(value)s”: choose e-mail, SMS or browser notification."
            )
        },
    )
    status = forms.ChoiceField(
        label=_("Status"),
        required=False,
        choices=[("", _("all statuses")), *Status.choices],
        error_messages={
            "invalid_choice": _(
                "There is no status “%(value)s”: choose queued, sending, sent, delivered or failed."
            )
        },
    )


class RecipientSearch(forms.Form):
    recipient = forms.CharField(
        label=_("E-mail address or phone number"),
        max_length=254,
        help_text=_("The whole address or number, as the resident gave it."),
        error_messages={"required": _("Enter an e-mail address or a phone number.")},
    )

    def clean_recipient(self) -> tuple[str, str]:
        """``("email", lower-cased address)`` or ``("phone", E.164 number)``."""
        text = self.cleaned_data["recipient"].strip()
        if "@" in text:
            try:
                forms.EmailField().clean(text)
            except forms.ValidationError:
                raise forms.ValidationError(
                    _("Enter a valid e-mail address, e.g. jan.kowalski@example.pl."),
                    code="email_invalid",
                ) from None
            return ("email", text.lower())
        try:
            return ("phone", normalize_phone(text))
        except InvalidPhone as invalid:
            raise forms.ValidationError(
                PHONE_ERRORS.get(invalid.reason, PHONE_ERRORS["phone_invalid"]),
                code=invalid.reason,
            ) from None


def _list_rows(found) -> list[dict]:
    return [
        {
            "delivery": delivery,
            "recipient": recipient(
                delivery.channel,
                delivery.subscriber.email,
                delivery.subscriber.phone,
                delivery.subscriber.push_endpoint,
            ),
            "channel": Channel(delivery.channel).label,
            "status": Status(delivery.status).label,
            "error": mask_error(delivery.last_error),
        }
        for delivery in found
    ]


@operator_required
def delivery_list(request, pk: int):
    if request.method not in ("GET", "POST"):
        return HttpResponseNotAllowed(["GET", "POST"])
    alert = get_object_or_404(Alert, pk=pk)
    found = (
        Delivery.objects.filter(alert=alert)
        .select_related("subscriber")
        .only(
            "channel",
            "status",
            "attempts",
            "last_error",
            "sent_at",
            "subscriber__email",
            "subscriber__phone",
            "subscriber__push_endpoint",
        )
        .order_by("pk")
    )
    status = 200
    context = {"alert": alert, "searched": False}
    if request.method == "POST":
        filters = DeliveryFilter()
        search = RecipientSearch(request.POST)
        if search.is_valid():
            kind, value = search.cleaned_data["recipient"]
            match = (
                Q(subscriber__email__iexact=value)
                if kind == "email"
                else Q(subscriber__phone=value)
            )
            context.update(searched=True, rows=_list_rows(found.filter(match)[:SEARCH_RESULTS]))
        else:
            status = 422
            context["rows"] = []
    else:
        search = RecipientSearch()
        filters = DeliveryFilter(request.GET)
        if filters.is_valid():
            if channel := filters.cleaned_data["channel"]:
                found = found.filter(channel=channel)
            if wanted := filters.cleaned_data["status"]:
                found = found.filter(status=wanted)
            page = Paginator(found, PAGE_SIZE).get_page(request.GET.get("page"))
            context.update(page=page, rows=_list_rows(page.object_list))
        else:
            status = 400
            context["rows"] = []
    context.update(filters=filters, search=search, errors=_errors(filters, search))
    return render(request, "alerts/console_delivery_list.html", context, status=status)


def _errors(*bound_forms: forms.Form) -> list[dict]:
    """For the error summary: each message with the field it links to."""
    return [
        {"anchor": f"id_{name}", "message": message}
        for form in bound_forms
        if form.is_bound
        for name, messages in form.errors.items()
        for message in messages
    ]


# --- Live ---------------------------------------------------------------------------------------


# An open dashboard socket checks that its user is still an operator every
# this many looks at the counts (30 s at the default ALERTS_DASHBOARD_SECONDS).
ROLE_CHECK_EVERY = 30


def still_operator(user_pk: int) -> bool:
    """The user as stored now (not as when the socket opened) may operate."""
    user = get_user_model().objects.filter(pk=user_pk, is_active=True).first()
    return user is not None and may_operate(user)


class DeliveryDashboardConsumer(EnvelopeConsumer):
    """``/ws/alerts/console/<pk>/deliveries/``: an operator's live counts."""

    endpoint = "alerts-dashboard"
    require_login = True  # an anonymous socket is closed with 4001 by the base

    async def connect(self):
        self.alert_pk = int(self.scope["url_route"]["kwargs"]["pk"])
        self.published_at: dt.datetime | None = None
        self.last_sent: DeliveryCounts | None = None
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            if not await database_sync_to_async(may_operate)(user):
                # Accepted only to say why: 4003, which the page's client does
                # not retry (hub/static/hub/js/realtime.js).
                await self.accept()
                metrics.REFUSED.labels("forbidden").inc()
                await self.close(code=int(CloseCode.FORBIDDEN))
                return
            exists, self.published_at = await database_sync_to_async(published_at_of)(self.alert_pk)
            if not exists:
                await self.close()  # the handshake is refused (HTTP 403), as for meetings
                return
        await super().connect()
        if self.session is None or self._closed:
            return
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch_forever()))

    async def disconnect(self, code):
        if not hasattr(self, "_tasks"):
            return  # refused before the base consumer set anything up
        await super().disconnect(code)

    async def _watch_forever(self) -> None:
        looks = 0
        while True:
            try:
                looks += 1
                if looks % ROLE_CHECK_EVERY == 0:
                    if not await database_sync_to_async(still_operator)(self.scope["user"].pk):
                        # The role was taken away (or the account closed) while
                        # the page was open: the counts stop now, not at reconnect.
                        await self.close(code=int(CloseCode.FORBIDDEN))
                        return
                await self.send_if_changed()
            except Exception:  # the database away for a moment: the next look tries again
                log.warning("delivery dashboard %s: no counts", self.alert_pk, exc_info=True)
            await asyncio.sleep(dashboard_seconds())

    async def send_if_changed(self) -> None:
        rows = await database_sync_to_async(count_rows)(self.alert_pk)
        if rows and self.published_at is None:
            # Deliveries are written in the publication's transaction: now it has a time.
            _exists, self.published_at = await database_sync_to_async(published_at_of)(
                self.alert_pk
            )
        counts = summarize(rows, self.published_at)
        if counts != self.last_sent:
            self.last_sent = counts
            await self.send_message(counts)
