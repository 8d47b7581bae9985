"""The public CAP 1.2 documents and Atom feeds of published alerts: thin views
over :mod:`alerts.cap`.

    /alerts/feed.atom             atom_feed     for people and feed readers: the
                                                messages in force, then the
                                                archive (marked), newest first
    /alerts/cap.xml               cap_feed      for CAP aggregators: the messages
                                                in force now (Alert, Update and
                                                Cancel), each linked to its CAP
                                                document
    /alerts/<identifier>/cap.xml  cap_document  one CAP 1.2 message

Only messages that were published are ever shown: drafts, alerts awaiting
approval, approved and scheduled ones are 404 here and absent from the feeds.
Links are absolute, built from ``PUBLIC_BASE_URL`` (never from the request's
Host header, which a client chooses).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_safe

from alerts import cap, rules
from alerts.models import Alert
from hub.clock import Clock, system_clock

# Tests move it (ARCHITECTURE.md §5: one clock).
clock: Clock = system_clock

ALERTS_PAGE_PATH = "/alerts/"
ATOM_FEED_PATH = "/alerts/feed.atom"
CAP_FEED_PATH = "/alerts/cap.xml"
# Archive entries in the Atom feed, besides every message in force.
FEED_LIMIT = 100
# How far back an Update of an Update … lists the messages it refers to.
REFERENCE_DEPTH = 20

SENDER_NAME = "Gmina Głogów Małopolski"
# rules.WHOLE_GMINA means every area; the names of the others come from settings.
WHOLE_GMINA_NAME = "Gmina Głogów Małopolski (cała gmina)"

PUBLIC_STATES = (
    rules.State.PUBLISHED,
    rules.State.EXPIRED,
    rules.State.SUPERSEDED,
    rules.State.CANCELLED,
)


def publisher() -> cap.Publisher:
    conf = settings.ALERTS
    return cap.Publisher(
        sender=conf.get("CAP_SENDER") or conf["FROM_EMAIL"],
        sender_name=conf.get("CAP_SENDER_NAME") or SENDER_NAME,
        host=urlsplit(settings.PUBLIC_BASE_URL).hostname or "localhost",
        tz=zoneinfo.ZoneInfo(settings.TIME_ZONE),
        area_names={rules.WHOLE_GMINA: WHOLE_GMINA_NAME, **conf.get("AREA_NAMES", {})},
    )


def _absolute(path: str) -> str:
    return f"{settings.PUBLIC_BASE_URL}{path}"


def alert_page_url(identifier: str) -> str:
    return _absolute(f"{ALERTS_PAGE_PATH}{quote(identifier, safe='')}/")


def cap_document_url(identifier: str) -> str:
    return _absolute(f"{ALERTS_PAGE_PATH}{quote(identifier, safe='')}/cap.xml")


def published_alerts():
    return Alert.objects.filter(
        state__in=[state.value for state in PUBLIC_STATES], published_at__isnull=False
    )


def _references(alert: Alert) -> list[cap.Reference]:
    """The published messages this one follows up, oldest first."""
    found: list[cap.Reference] = []
    seen = {alert.pk}
    earlier = alert.references
    while earlier is not None and earlier.pk not in seen and len(seen) <= REFERENCE_DEPTH:
        seen.add(earlier.pk)
        if earlier.published_at is not None:
            found.append(cap.Reference(earlier.identifier, earlier.published_at.timestamp()))
        earlier = earlier.references
    found.reverse()
    return found


def _xml(body: bytes, content_type: str) -> HttpResponse:
    return HttpResponse(body, content_type=f"{content_type}; charset=utf-8")


@require_safe
def cap_document(request: HttpRequest, identifier: str) -> HttpResponse:
    alert = get_object_or_404(
        published_alerts().select_related("references"), identifier=identifier
    )
    body = cap.alert_document(
        alert.to_rules(),
        publisher(),
        web=alert_page_url(alert.identifier),
        references=_references(alert),
    )
    return _xml(body, cap.CAP_CONTENT_TYPE)


def _feed(
    alerts: list[Alert], issuer: cap.Publisher, feed: cap.Feed, *, now: float, cap_first: bool
) -> HttpResponse:
    body = cap.feed_document(
        [alert.to_rules() for alert in alerts],
        issuer,
        feed=feed,
        cap_url=cap_document_url,
        page_url=alert_page_url,
        now=now,
        cap_first=cap_first,
    )
    return _xml(body, cap.ATOM_CONTENT_TYPE)


def _live(now: float):
    return (
        published_alerts()
        .filter(
            state=rules.State.PUBLISHED.value, expires__gt=dt.datetime.fromtimestamp(now, tz=dt.UTC)
        )
        .select_related("references")
        .order_by("-published_at", "pk")
    )


@require_safe
def cap_feed(request: HttpRequest) -> HttpResponse:
    now = clock.time()
    issuer = publisher()
    feed = cap.Feed(
        id=_absolute(CAP_FEED_PATH),
        title=f"Ostrzeżenia CAP – {issuer.sender_name}",
        subtitle="Komunikaty CAP 1.2 obowiązujące teraz",
        page_url=_absolute(ALERTS_PAGE_PATH),
    )
    return _feed(list(_live(now)), issuer, feed, now=now, cap_first=True)


@require_safe
def atom_feed(request: HttpRequest) -> HttpResponse:
    now = clock.time()
    issuer = publisher()
    live = list(_live(now))
    archive = list(
        published_alerts()
        .exclude(pk__in=[alert.pk for alert in live])
        .select_related("references")
        .order_by("-published_at", "pk")[:FEED_LIMIT]
    )
    feed = cap.Feed(
        id=_absolute(ATOM_FEED_PATH),
        title=f"Ostrzeżenia – {issuer.sender_name}",
        subtitle="Komunikaty kryzysowe: obowiązujące i archiwalne",
        page_url=_absolute(ALERTS_PAGE_PATH),
    )
    return _feed(live + archive, issuer, feed, now=now, cap_first=False)
