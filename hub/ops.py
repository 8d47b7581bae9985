"""Operations endpoints: liveness, readiness, metrics (ARCHITECTURE.md §4)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, HttpResponseForbidden, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hub import metrics as hub_metrics

log = logging.getLogger(__name__)


@never_cache
@require_GET
def healthz(request):
    """The process is up and serving requests."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return f"database: {type(exc).__name__}"
    return None


def _check_channel_layer() -> str | None:
    if not settings.REDIS_URL:
        return None  # the in-memory layer of the embedded default is always there
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=2.0, socket_connect_timeout=2.0
    )
    try:
        client.ping()
    except Exception as exc:
        return f"redis: {type(exc).__name__}"
    finally:
        client.close()
    return None


@never_cache
@require_GET
def readyz(request):
    """The database and the channel layer (Redis) are reachable: 200, else 503."""
    problems = [p for p in (_check_database(), _check_channel_layer()) if p]
    if problems:
        log.warning("not ready: %s", "; ".join(problems))
        return JsonResponse({"status": "unavailable", "problems": problems}, status=503)
    return JsonResponse({"status": "ready"})


@never_cache
@require_GET
def metrics(request):
    """Prometheus text format; limited to METRICS_ALLOWED_IPS when that is set."""
    allowed = settings.METRICS_ALLOWED_IPS
    if allowed and request.META.get("REMOTE_ADDR") not in allowed:
        return HttpResponseForbidden("metrics are not available from this address\n")
    return HttpResponse(generate_latest(hub_metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)
