"""The public alert pages: the alerts in force and the archive, one alert
with its instructions, and the list the live banner reloads."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from alerts import live, rules
from alerts.models import Alert

PUBLIC_STATES = [
    rules.State.PUBLISHED,
    rules.State.EXPIRED,
    rules.State.SUPERSEDED,
    rules.State.CANCELLED,
]


@require_GET
def alert_list(request: HttpRequest) -> HttpResponse:
    in_force = live.current(limit=None)
    archive = (
        Alert.objects.filter(state__in=PUBLIC_STATES)
        .exclude(pk__in=[a.pk for a in in_force])
        .order_by("-published_at")[:50]
    )
    return render(request, "alerts/public_list.html", {"in_force": in_force, "archive": archive})


@require_GET
def alert_detail(request: HttpRequest, identifier: str) -> HttpResponse:
    alert = Alert.objects.filter(identifier=identifier, state__in=PUBLIC_STATES).first()
    if alert is None:
        raise Http404
    in_force = any(a.pk == alert.pk for a in live.current(limit=None))
    return render(request, "alerts/public_detail.html", {"alert": alert, "in_force": in_force})


@require_GET
def current_json(request: HttpRequest) -> JsonResponse:
    response = JsonResponse({"alerts": [live.as_banner(a) for a in live.current()]})
    response["Cache-Control"] = "no-store"
    return response
