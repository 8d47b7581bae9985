"""The live banner: alerts in force on every page, kept current in open
browsers through the broadcast path (topic ``public.alerts``).

Pages render the alerts in force when they are served (:func:`current`, via
the context processor); the page then follows ``public.alerts``:
``alert.current`` adds or replaces one, ``alert.ended`` removes one. A page
that missed events (``onGap``) reloads the list from ``/alerts/current.json``.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from alerts import rules
from alerts.models import Alert

log = logging.getLogger(__name__)

TOPIC = "public.alerts"
# What the banner says before each headline, by CAP severity; and its link.
BANNER_TEXT = {
    "Extreme": _("Extreme danger"),
    "Severe": _("Severe danger"),
    "Moderate": _("Warning"),
    "Minor": _("Notice"),
    "Unknown": _("Notice"),
    "more": _("what to do"),
}
SEVERITY_ORDER = {"Extreme": 0, "Severe": 1, "Moderate": 2, "Minor": 3, "Unknown": 4}
BANNER_MAX = 3


def current(limit: int | None = BANNER_MAX) -> list[Alert]:
    now = timezone.now()
    alerts = list(
        Alert.objects.filter(
            state=rules.State.PUBLISHED, effective__lte=now, expires__gt=now
        ).exclude(msg_type=rules.MsgType.CANCEL)
    )
    alerts.sort(key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), -a.published_at.timestamp()))
    return alerts[:limit] if limit else alerts


def as_banner(alert: Alert) -> dict:
    return {
        "identifier": alert.identifier,
        "severity": alert.severity,
        "headline": alert.headline,
        "url": f"/alerts/{alert.identifier}/",
        "expires": alert.expires.timestamp(),
    }


def _publish(type_: str, data: dict) -> None:
    # Best effort: the pages also show what is current when they load, and a
    # page that missed events reloads the list. A Redis outage must not undo
    # or fail the publication that already committed.
    def send():
        from hub.events import publish_now

        try:
            publish_now(TOPIC, type_, data)
        except Exception:
            log.warning("live banner: could not announce %s", type_, exc_info=True)

    transaction.on_commit(send)


def announce_current(alert: Alert) -> None:
    if alert.msg_type != rules.MsgType.CANCEL:
        _publish("alert.current", as_banner(alert))


def announce_ended(alert: Alert) -> None:
    _publish("alert.ended", {"identifier": alert.identifier})


def context(request) -> dict:
    """The alerts in force, for base.html's banner (a context processor)."""
    try:
        alerts = [
            {**as_banner(a), "label": BANNER_TEXT.get(a.severity, BANNER_TEXT["Unknown"])}
            for a in current()
        ]
    except Exception:  # no table yet (before migrate), database down: no banner
        log.debug("live banner: no alerts", exc_info=True)
        alerts = []
    return {"live_alerts": alerts, "live_banner_text": BANNER_TEXT}
