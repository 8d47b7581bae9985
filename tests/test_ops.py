"""Health, readiness and metrics, including readiness failing when Redis stops."""

import pytest


@pytest.mark.django_db
def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_readyz_with_database_and_redis(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


@pytest.mark.django_db
def test_readyz_fails_when_redis_stops(client, settings, own_redis):
    settings.REDIS_URL = own_redis.url
    assert client.get("/readyz").status_code == 200
    own_redis.stop()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["problems"] == ["redis: ConnectionError"]


@pytest.mark.django_db
def test_readyz_fails_when_the_database_is_unreachable(client, monkeypatch):
    from django.db import connection

    def broken(*args, **kwargs):
        raise connection.Database.OperationalError("connection refused")

    monkeypatch.setattr(connection, "cursor", broken)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["problems"] == ["database: OperationalError"]


@pytest.mark.django_db
def test_metrics_in_prometheus_format(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    for line in (
        "# TYPE hub_ws_open_sockets gauge",
        "# TYPE hub_ws_messages_in_total counter",
        "# TYPE hub_ws_messages_out_total counter",
        "# TYPE hub_ws_errors_total counter",
        "# TYPE hub_ws_connections_refused_total counter",
        "# TYPE hub_broadcast_latency_seconds histogram",
    ):
        assert line in body


@pytest.mark.django_db
def test_metrics_can_be_limited_to_addresses(client, settings):
    settings.METRICS_ALLOWED_IPS = ["10.0.0.5"]
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.5").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_take_only_get(client, path):
    assert client.post(path).status_code == 405
