"""Web Push: the push-host allowlist, the VAPID keys, the channel against a
loopback push service that verifies the VAPID header and decrypts every
message with the subscription's private key (tests/crisis/push_server.py),
the subscribe/unsubscribe views and the service worker, the whole way from
publishing through the worker (real PostgreSQL), and the service worker
showing a pushed notification in a real headless Chromium on a real daphne."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import threading
import time

import pytest
from channels.db import database_sync_to_async
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.utils import timezone
from py_vapid import Vapid

from alerts import outbox
from alerts.forms import CONSENT_VERSION
from alerts.models import Alert, Delivery, Subscriber
from alerts.push import (
    MAX_PLAINTEXT,
    WebPushChannel,
    endpoint_allowed,
    load_vapid,
    payload,
    topic_of,
    vapid_public_key,
)
from alerts.worker import Worker
from tests.crisis.push_server import PushService, b64url, unb64url
from tests.crisis.test_outbox import new_alert as outbox_alert
from tests.meet.helpers import make_user

BASE = "https://egmina.example"
SUBJECT = "mailto:ostrzezenia@glogow-mlp.example"
# Never connected to: the code refuses them first, and no_network() makes sure.
OFF_THE_ALLOWLIST = [
    "http://169.254.169.254/latest/meta-data/",
    "https://10.0.0.1/push/x",
    "https://evil.example/",
]
DEFAULT_HOSTS = [
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    ".push.apple.com",
    ".notify.windows.com",
]


def new_vapid_pem() -> str:
    vapid = Vapid()
    vapid.generate_keys()
    return vapid.private_pem().decode()


VAPID_PEM = new_vapid_pem()

_network_forbidden = threading.local()


def _refuse_network(event: str, args) -> None:
    if getattr(_network_forbidden, "on", False) and event in (
        "socket.connect",
        "socket.getaddrinfo",
    ):
        raise RuntimeError(f"network I/O attempted: {event} {args!r}")


sys.addaudithook(_refuse_network)


@contextlib.contextmanager
def no_network():
    """Any connection or DNS look-up in this thread raises (PEP 578 audit
    events): proof that nothing was even tried."""
    _network_forbidden.on = True
    try:
        yield
    finally:
        _network_forbidden.on = False


# --- fixtures and helpers --------------------------------------------------------


@pytest.fixture
def push_service():
    with PushService() as service:
        yield service


@pytest.fixture
def push_on(settings, push_service):
    """Web Push on, the loopback push service the only allowed host."""
    settings.ALERTS = {
        **settings.ALERTS,
        "VAPID_PRIVATE_KEY": VAPID_PEM,
        "VAPID_SUBJECT": SUBJECT,
        "PUSH_ALLOWED_HOSTS": [push_service.host],
        "PUSH_TIMEOUT": 5.0,
    }
    settings.PUBLIC_BASE_URL = BASE
    from django.core.cache import cache

    cache.delete("alerts:push-subscribe:127.0.0.1")  # the test client's address
    return push_service


def channel(**fields) -> WebPushChannel:
    base = {
        "vapid_private_key": VAPID_PEM,
        "subject": SUBJECT,
        "public_base_url": BASE,
        "timeout": 5.0,
    }
    return WebPushChannel(**{**base, **fields})


def new_alert(**fields) -> Alert:
    author = fields.pop("author", None) or make_user(f"op{time.monotonic_ns()}", "operator")
    return outbox_alert(author, headline="Wysoki stan wody na Mrowli", **fields)


def push_subscriber(endpoint: str, p256dh: str = "", auth: str = "", **fields) -> Subscriber:
    now = timezone.now()
    base = {
        "push_endpoint": endpoint,
        "push_p256dh": p256dh,
        "push_auth": auth,
        "push_confirmed_at": now,
        "areas": ["przewrotne"],
        "consent_version": CONSENT_VERSION,
        "consent_at": now,
        "consent_source": "test",
        "token": f"tok{time.monotonic_ns()}",
    }
    return Subscriber.objects.create(**{**base, **fields})


def delivery_for(subscription=None, *, endpoint: str = "", alert: Alert | None = None) -> Delivery:
    if subscription is not None:
        keys = subscription.as_json()["keys"]
        sub = push_subscriber(subscription.endpoint, keys["p256dh"], keys["auth"])
    else:  # an endpoint with made-up (valid) keys
        point = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        sub = push_subscriber(endpoint, b64url(point), b64url(os.urandom(16)))
    alert = alert or new_alert()
    row = Delivery.objects.create(
        alert=alert,
        subscriber=sub,
        channel="push",
        next_attempt_at=timezone.now(),
        idempotency_key=f"a{alert.pk}s{sub.pk}p",
        attempts=1,
    )
    return Delivery.objects.select_related("alert", "subscriber").get(pk=row.pk)


# --- the allowlist ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://fcm.googleapis.com/fcm/send/abc:APA91b",
        "https://FCM.googleapis.com/wp/abc",
        "https://fcm.googleapis.com:443/wp/abc",
        "https://updates.push.services.mozilla.com/wpush/v2/gAAAAA",
        "https://web.push.apple.com/QGuQyavXutnMH",
        "https://wns2-by3p.notify.windows.com/w/?token=BQYAAAD",
    ],
)
def test_the_push_services_of_the_browsers_are_allowed(url):
    assert endpoint_allowed(url, DEFAULT_HOSTS)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "https://10.0.0.1/",  # the private network
        "https://127.0.0.1/",
        "https://[::1]/",
        "https://evil.example/",
        "http://fcm.googleapis.com/wp/abc",  # not https
        "https://fcm.googleapis.com:8443/wp/abc",  # another port
        "https://fcm.googleapis.com.evil.example/wp/abc",
        "https://evilfcm.googleapis.com/wp/abc",
        "https://push.apple.com/abc",  # the suffix entry is for subdomains only
        "https://evil.example@fcm.googleapis.com/x",  # user info
        "https://fcm.googleapis.com@evil.example/x",
        "https://fcm.googleapis.com./wp/abc",  # trailing dot
        "https://fcm.googleapis.com/wp/abc#frag",
        "https://fcm.googleapis.com/wp/ abc",
        "https://fcm.googleapis.com\\@evil.example/",
        "https://fcm.googleapis.com:notaport/",
        "ftp://fcm.googleapis.com/",
        "javascript:alert(1)",
        "",
        "https://fcm.googleapis.com/" + "a" * 1000,
    ],
)
def test_other_addresses_are_refused(url):
    assert not endpoint_allowed(url, DEFAULT_HOSTS)


def test_host_port_entries_and_plain_http_only_for_loopback():
    hosts = ["127.0.0.1:8443", "push.example:8443", ".push.example"]
    assert endpoint_allowed("http://127.0.0.1:8443/push/x", hosts)
    assert endpoint_allowed("https://127.0.0.1:8443/push/x", hosts)
    assert not endpoint_allowed("http://127.0.0.1:8444/push/x", hosts)
    assert not endpoint_allowed("http://127.0.0.1/push/x", hosts)
    assert endpoint_allowed("https://push.example:8443/x", hosts)
    assert not endpoint_allowed("http://push.example:8443/x", hosts)  # not loopback: https only
    assert endpoint_allowed("https://a.push.example/x", hosts)
    assert not endpoint_allowed("https://a.push.example:8443/x", hosts)
    # A suffix entry never matches an IP literal.
    assert not endpoint_allowed("https://10.0.0.1/x", [".0.0.1"])
    assert endpoint_allowed("https://10.0.0.1/x", ["10.0.0.1"])  # listed exactly


# --- keys and the message -------------------------------------------------------------


def test_the_public_key_is_derived_from_a_pem_or_a_raw_private_key(settings):
    settings.ALERTS = {**settings.ALERTS, "VAPID_PRIVATE_KEY": ""}
    assert vapid_public_key() is None
    settings.ALERTS = {**settings.ALERTS, "VAPID_PRIVATE_KEY": VAPID_PEM}
    from_pem = vapid_public_key()
    raw = load_vapid(VAPID_PEM).private_key.private_numbers().private_value.to_bytes(32, "big")
    settings.ALERTS = {**settings.ALERTS, "VAPID_PRIVATE_KEY": b64url(raw)}
    assert vapid_public_key() == from_pem
    point = unb64url(from_pem)
    assert len(point) == 65 and point[0] == 4
    # A one-line environment variable with \n escapes works too.
    settings.ALERTS = {**settings.ALERTS, "VAPID_PRIVATE_KEY": VAPID_PEM.replace("\n", "\\n")}
    assert vapid_public_key() == from_pem


@pytest.mark.parametrize("key", ["not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END"])
def test_a_bad_key_or_subject_fails_loudly(key):
    with pytest.raises(ImproperlyConfigured):
        load_vapid(key)
    with pytest.raises(ImproperlyConfigured):
        channel(subject="ostrzezenia")  # neither mailto: nor https:


def test_a_long_message_is_shortened_to_fit_the_push_service():
    body = "Zalane drogi: ul. Rzeszowska, Kolejowa, Kościuszki. " * 200
    data = payload(title="Powódź", body=body, url=f"{BASE}/alerts/a/", tag="a", severity="Severe")
    assert len(data) <= MAX_PLAINTEXT
    message = json.loads(data)
    assert message["body"].endswith("…") and len(message["body"]) > 2000
    assert message["title"] == "Powódź" and message["url"] == f"{BASE}/alerts/a/"
    short = json.loads(payload(title="T", body="Krótko.", url="u", tag="t", severity="Minor"))
    assert short["body"] == "Krótko."


def test_a_topic_is_at_most_32_base64url_characters():
    for identifier in ["alert-20261103T143000-Ab_cd-EF12", "a" * 64, "ą b/c"]:
        topic = topic_of(identifier)
        assert 0 < len(topic) <= 32
        assert set(topic) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert topic_of("short-id") == "short-id"


# --- the channel against the loopback push service -----------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("severity", "urgency"),
    [("Extreme", "high"), ("Severe", "high"), ("Moderate", "normal"), ("Minor", "low")],
)
def test_a_message_decrypts_to_the_alert_with_urgency_and_ttl_from_it(push_on, severity, urgency):
    subscription = push_on.subscribe()
    alert = new_alert(severity=severity)
    row = delivery_for(subscription, alert=alert)
    push = channel()
    try:
        result = push.send(row)
    finally:
        push.close()
    assert result.ok, result
    assert result.provider_id == f"{push_on.origin}/message/1"
    [received] = push_on.received
    assert received.data == {
        "title": "Wysoki stan wody na Mrowli",
        "body": "Nie zbliżaj się do wałów.",
        "url": f"{BASE}/alerts/{alert.identifier}/",
        "tag": alert.identifier,
        "severity": severity,
    }
    assert received.urgency == urgency
    expected_ttl = alert.expires.timestamp() - time.time()
    assert abs(int(received.ttl) - expected_ttl) < 60
    assert received.topic == topic_of(alert.identifier)
    assert received.claims["aud"] == push_on.origin
    assert received.claims["sub"] == SUBJECT
    assert received.claims["k"] == push.public_key


@pytest.mark.django_db
def test_one_vapid_token_serves_many_messages_to_one_push_service(push_on):
    push = channel()
    alert = new_alert()
    try:
        for _ in range(3):
            assert push.send(delivery_for(push_on.subscribe(), alert=alert)).ok
    finally:
        push.close()
    tokens = {(r.claims["exp"], r.claims["aud"]) for r in push_on.received}
    assert len(push_on.received) == 3 and len(tokens) == 1


@pytest.mark.django_db
def test_an_update_replaces_the_notification_of_the_alert_it_updates(push_on):
    author = make_user("operator-push-update", "operator")
    original = new_alert(author=author, state="published")
    update = new_alert(author=author, msg_type="Update", references=original)
    push = channel()
    try:
        assert push.send(delivery_for(push_on.subscribe(), alert=original)).ok
        assert push.send(delivery_for(push_on.subscribe(), alert=update)).ok
    finally:
        push.close()
    first, second = push_on.received
    assert first.data["tag"] == second.data["tag"] == original.identifier
    assert first.topic == second.topic
    assert second.data["url"].endswith(f"/alerts/{update.identifier}/")


@pytest.mark.django_db
@pytest.mark.parametrize("status", [404, 410])
def test_a_gone_subscription_is_pruned_and_not_retried(push_on, status):
    subscription = push_on.subscribe()
    row = delivery_for(subscription)
    push_on.answer(subscription.endpoint, status)
    push = channel()
    try:
        result = push.send(row)
    finally:
        push.close()
    assert not result.ok and result.permanent and str(status) in result.error
    assert result.forget_address
    # The worker records it so: the subscription is forgotten.
    [claimed] = outbox.claim("w", now=time.time(), batch=1, lease=60)
    outbox.record("w", [(claimed, result)], now=time.time())
    subscriber = Subscriber.objects.get(pk=row.subscriber_id)
    assert subscriber.push_endpoint == subscriber.push_p256dh == subscriber.push_auth == ""
    assert subscriber.push_confirmed_at is None
    assert outbox.channels_of(subscriber) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "permanent"), [(500, False), (503, False), (429, False), (413, True), (400, True)]
)
def test_errors_of_the_push_service_are_retried_or_not(push_on, status, permanent):
    subscription = push_on.subscribe()
    row = delivery_for(subscription)
    push_on.answer(subscription.endpoint, status, {"Retry-After": "30"})
    push = channel()
    try:
        result = push.send(row)
    finally:
        push.close()
    assert not result.ok and result.permanent is permanent
    assert str(status) in result.error
    # Only a gone subscription is forgotten.
    assert Subscriber.objects.get(pk=row.subscriber_id).push_endpoint == subscription.endpoint


@pytest.mark.django_db
def test_a_network_error_is_retried(push_on, settings):
    from conftest import free_port

    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings.ALERTS = {**settings.ALERTS, "PUSH_ALLOWED_HOSTS": [push_on.host, closed]}
    row = delivery_for(endpoint=f"http://{closed}/push/x")
    push = channel()
    try:
        result = push.send(row)
    finally:
        push.close()
    assert not result.ok and not result.permanent
    assert "ConnectionError" in result.error


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", OFF_THE_ALLOWLIST)
def test_an_endpoint_off_the_allowlist_is_never_posted_to(push_on, endpoint):
    row = delivery_for(endpoint=endpoint)
    push = channel(timeout=1.0)
    try:
        with no_network():
            result = push.send(row)
    finally:
        push.close()
    assert not result.ok and result.permanent and "not allowed" in result.error


def test_no_network_does_stop_a_connection(push_service):
    import socket

    with no_network(), pytest.raises(RuntimeError, match="network I/O attempted"):
        socket.create_connection(("127.0.0.1", push_service.port), timeout=1)
    socket.create_connection(("127.0.0.1", push_service.port), timeout=1).close()


@pytest.mark.django_db
def test_the_allowlist_is_checked_again_at_each_send(push_on, settings):
    row = delivery_for(push_on.subscribe())
    settings.ALERTS = {**settings.ALERTS, "PUSH_ALLOWED_HOSTS": ["fcm.googleapis.com"]}
    push = channel()
    try:
        result = push.send(row)
    finally:
        push.close()
    assert not result.ok and result.permanent
    assert push_on.requests == 0


# --- the views ----------------------------------------------------------------------


def subscribe_body(subscription, **fields) -> dict:
    return {
        **subscription.as_json(),
        "areas": ["przewrotne"],
        "categories": [],
        "consent": True,
        **fields,
    }


def post_json(client: Client, url: str, body, **extra):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(url, data=data, content_type="application/json", **extra)


@pytest.mark.django_db
def test_the_key_is_served_only_when_push_is_on(settings):
    settings.ALERTS = {**settings.ALERTS, "VAPID_PRIVATE_KEY": ""}
    assert Client().get("/alerts/push/key").status_code == 404
    settings.ALERTS = {**settings.ALERTS, "VAPID_PRIVATE_KEY": VAPID_PEM}
    response = Client().get("/alerts/push/key")
    assert response.status_code == 200
    assert response.json() == {"publicKey": channel().public_key}


@pytest.mark.django_db
def test_subscribing_a_browser_makes_a_confirmed_push_only_subscriber(push_on):
    subscription = push_on.subscribe()
    body = subscribe_body(subscription, areas=["glogow", "hucisko"], categories=["Met"])
    response = post_json(Client(), "/alerts/push/subscribe", body)
    assert response.status_code == 200, response.content
    subscriber = Subscriber.objects.get(push_endpoint=subscription.endpoint)
    assert response.json() == {
        "ok": True,
        "preferences": f"/alerts/preferences/{subscriber.token}/",
    }
    assert response["Cache-Control"] == "no-store"
    assert subscriber.email == subscriber.phone == ""
    assert subscriber.push_p256dh == subscription.as_json()["keys"]["p256dh"]
    assert subscriber.push_auth == subscription.as_json()["keys"]["auth"]
    assert subscriber.push_confirmed_at is not None
    assert subscriber.areas == ["glogow", "hucisko"] and subscriber.categories == ["Met"]
    assert subscriber.consent_version == CONSENT_VERSION == "2026-11-v2"
    assert subscriber.consent_source == "web-push"
    assert subscriber.user is None
    assert outbox.channels_of(subscriber) == ["push"]
    # The same browser again: the same subscriber, the new choices.
    again = post_json(Client(), "/alerts/push/subscribe", subscribe_body(subscription))
    assert again.status_code == 200
    assert again.json()["preferences"] == f"/alerts/preferences/{subscriber.token}/"
    assert Subscriber.objects.filter(push_endpoint=subscription.endpoint).count() == 1
    assert Subscriber.objects.get(pk=subscriber.pk).areas == ["przewrotne"]


@pytest.mark.django_db
@pytest.mark.parametrize("consent", [None, False, "true", 1, "yes"])
def test_subscribing_without_consent_is_refused_and_nothing_is_kept(push_on, consent):
    body = subscribe_body(push_on.subscribe(), consent=consent)
    if consent is None:
        del body["consent"]
    response = post_json(Client(), "/alerts/push/subscribe", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "no_consent"
    assert "zgod" in error["message"]  # Polish first
    assert response["Cache-Control"] == "no-store"
    assert not Subscriber.objects.exists()


@pytest.mark.django_db
def test_a_browser_subscribed_while_signed_in_is_linked_to_the_account(push_on):
    resident = make_user("mieszkanka-push", email="ewa@example.pl")
    client = Client()
    client.force_login(resident)
    subscription = push_on.subscribe()
    assert (
        post_json(client, "/alerts/push/subscribe", subscribe_body(subscription)).status_code == 200
    )
    subscriber = Subscriber.objects.get(push_endpoint=subscription.endpoint)
    assert subscriber.user == resident
    assert subscriber.email == ""  # the account's address is not subscribed by it
    # Signed out, the same browser again: the link stays.
    assert (
        post_json(Client(), "/alerts/push/subscribe", subscribe_body(subscription)).status_code
        == 200
    )
    assert Subscriber.objects.get(pk=subscriber.pk).user == resident


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", OFF_THE_ALLOWLIST)
def test_subscribing_an_endpoint_off_the_allowlist_is_refused(push_on, endpoint):
    body = subscribe_body(push_on.subscribe(), endpoint=endpoint)
    with no_network():
        response = post_json(Client(), "/alerts/push/subscribe", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "endpoint_not_allowed" and error["message"]
    assert not Subscriber.objects.exists()
    assert push_on.requests == 0


def _bad_keys(subscription) -> list[dict]:
    keys = subscription.as_json()["keys"]
    not_on_curve = b64url(b"\x04" + b"\x01" * 64)
    return [
        {},
        {"p256dh": keys["p256dh"]},
        {"p256dh": keys["p256dh"][:-4], "auth": keys["auth"]},  # too short
        {"p256dh": not_on_curve, "auth": keys["auth"]},
        {"p256dh": keys["p256dh"], "auth": b64url(os.urandom(15))},
        {"p256dh": keys["p256dh"], "auth": base64.b64encode(os.urandom(16)).decode() + "+/"},
        {"p256dh": keys["p256dh"], "auth": 12345},
        {"p256dh": keys["p256dh"] + "!", "auth": keys["auth"]},
    ]


@pytest.mark.django_db
def test_subscribing_with_bad_keys_is_refused(push_on):
    subscription = push_on.subscribe()
    for keys in _bad_keys(subscription):
        response = post_json(
            Client(), "/alerts/push/subscribe", subscribe_body(subscription, keys=keys)
        )
        assert response.status_code == 400, keys
        assert response.json()["error"]["code"] == "bad_keys", keys
    assert not Subscriber.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_json"),
        (b"\xff\xfe", 400, "bad_json"),
        (b"[1, 2]", 400, "bad_json"),
        (b'{"endpoint": "' + b"a" * 5000 + b'"}', 413, "too_large"),
    ],
)
def test_subscribing_with_a_body_that_is_not_a_subscription_is_refused(push_on, body, status, code):
    response = post_json(Client(), "/alerts/push/subscribe", body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


@pytest.mark.django_db
@pytest.mark.parametrize(
    "choices",
    [
        {"areas": []},
        {"areas": ["atlantyda"]},
        {"areas": "przewrotne"},
        {"categories": ["Zombie"]},
        {"categories": [1]},
    ],
)
def test_subscribing_with_unknown_areas_or_categories_is_refused(push_on, choices):
    body = subscribe_body(push_on.subscribe(), **choices)
    response = post_json(Client(), "/alerts/push/subscribe", body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_choices"
    assert not Subscriber.objects.exists()


@pytest.mark.django_db
def test_subscribing_needs_the_csrf_token(push_on):
    client = Client(enforce_csrf_checks=True)
    body = subscribe_body(push_on.subscribe())
    assert post_json(client, "/alerts/push/subscribe", body).status_code == 403
    assert not Subscriber.objects.exists()
    page = client.get("/alerts/subscribe/")
    assert page.status_code == 200
    token = client.cookies["csrftoken"].value
    response = post_json(client, "/alerts/push/subscribe", body, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
    assert Subscriber.objects.count() == 1
    unsubscribe = {"endpoint": body["endpoint"]}
    assert post_json(client, "/alerts/push/unsubscribe", unsubscribe).status_code == 403


@pytest.mark.django_db
def test_subscribing_is_refused_when_push_is_off(push_on, settings):
    settings.ALERTS = {**settings.ALERTS, "VAPID_PRIVATE_KEY": ""}
    response = post_json(Client(), "/alerts/push/subscribe", subscribe_body(push_on.subscribe()))
    assert response.status_code == 404


@pytest.mark.django_db
def test_subscriptions_from_one_address_are_limited(push_on, settings):
    from django.core.cache import cache

    cache.delete("alerts:push-subscribe:ip:10.9.8.7")
    settings.ALERTS = {**settings.ALERTS, "SUBSCRIBE_PER_IP_PER_HOUR": 2}
    statuses = [
        post_json(
            Client(REMOTE_ADDR="10.9.8.7"),
            "/alerts/push/subscribe",
            subscribe_body(push_on.subscribe()),
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    cache.delete("alerts:push-subscribe:ip:10.9.8.7")


@pytest.mark.django_db
def test_unsubscribing_clears_the_browser_and_says_the_same_for_an_unknown_one(push_on):
    subscription = push_on.subscribe()
    keys = subscription.as_json()["keys"]
    subscriber = push_subscriber(subscription.endpoint, keys["p256dh"], keys["auth"])
    forged = {"endpoint": subscription.endpoint, "keys": {"auth": b64url(os.urandom(16))}}
    refused = post_json(Client(), "/alerts/push/unsubscribe", forged)
    subscriber.refresh_from_db()
    assert subscriber.push_endpoint == subscription.endpoint  # the auth secret did not match
    known = post_json(Client(), "/alerts/push/unsubscribe", subscription.as_json())
    unknown = post_json(Client(), "/alerts/push/unsubscribe", {"endpoint": "https://x.example/"})
    assert known.status_code == unknown.status_code == refused.status_code == 200
    assert known.content == unknown.content == refused.content == b'{"ok": true}'
    subscriber.refresh_from_db()
    assert subscriber.push_endpoint == "" and subscriber.push_confirmed_at is None
    assert post_json(Client(), "/alerts/push/unsubscribe", b"nope").status_code == 400


def test_the_service_worker_is_served_from_alerts():
    response = Client().get("/alerts/sw.js")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/javascript; charset=utf-8"
    source = response.content.decode()
    assert source.startswith("const TEXT = {")
    assert "showNotification" in source and "notificationclick" in source


@pytest.mark.django_db
def test_the_snippet_renders_its_button_and_live_status(push_on):
    from django.template.loader import render_to_string

    html = render_to_string("alerts/_push.html")
    assert 'type="button"' in html and 'id="push-button"' in html
    assert 'role="status"' in html and 'aria-live="polite"' in html
    assert 'data-key-url="/alerts/push/key"' in html
    assert 'data-worker-url="/alerts/sw.js"' in html


# --- the whole way --------------------------------------------------------------------


@pytest.mark.django_db
def test_a_published_alert_reaches_a_subscribed_browser_through_the_worker(push_on):
    author = make_user("operator-push", "operator")
    browsers = [push_on.subscribe() for _ in range(3)]
    for subscription in browsers:
        body = subscribe_body(subscription)
        assert post_json(Client(), "/alerts/push/subscribe", body).status_code == 200
    gone = browsers[2]
    push_on.answer(gone.endpoint, 410)
    alert = new_alert(author=author, severity="Severe", instruction="Udaj się na piętro.")
    assert outbox.publish(alert.pk, author, now=time.time()) == 3
    worker = Worker(name="w-push", channels={"push": channel()})
    try:
        assert worker.run_once() == 3
    finally:
        worker.channels["push"].close()
    received = {r.endpoint: r for r in push_on.received}
    assert set(received) == {browsers[0].endpoint, browsers[1].endpoint}
    for message in received.values():
        assert message.data["title"] == "Wysoki stan wody na Mrowli"
        assert message.data["body"] == "Udaj się na piętro."
        assert message.data["url"] == f"{BASE}/alerts/{alert.identifier}/"
        assert message.urgency == "high"
    rows = Delivery.objects.filter(alert=alert).select_related("subscriber")
    status = {row.subscriber.push_endpoint or "pruned": row.status for row in rows}
    sent = {browsers[0].endpoint: "sent", browsers[1].endpoint: "sent"}
    assert status == {**sent, "pruned": "failed"}
    assert all(
        row.provider_id.startswith(f"{push_on.origin}/message/")
        for row in rows
        if row.status == "sent"
    )
    assert not Subscriber.objects.filter(push_endpoint=gone.endpoint).exists()


# --- the service worker in a real Chromium ----------------------------------------------


async def _wait(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


NOTIFICATIONS = """navigator.serviceWorker.ready
  .then((r) => r.getNotifications())
  .then((list) => list.map((n) => ({
    title: n.title, body: n.body, tag: n.tag, url: n.data && n.data.url,
    requireInteraction: n.requireInteraction, lang: n.lang,
  })))"""


@pytest.mark.integration
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
async def test_the_service_worker_shows_a_pushed_alert(hub_processes):
    from conftest import headless_chromium, url_of_test_database

    port = hub_processes.daphne(
        {"DATABASE_URL": url_of_test_database(), "ALERTS_VAPID_PRIVATE_KEY": b64url(os.urandom(32))}
    )
    base = f"http://127.0.0.1:{port}"
    async with headless_chromium() as browser:
        context = await browser.new_context()
        await context.grant_permissions(["notifications"], origin=base)
        page = await context.new_page()
        cdp = await context.new_cdp_session(page)
        registrations: list[dict] = []
        cdp.on(
            "ServiceWorker.workerRegistrationUpdated",
            lambda event: registrations.extend(event["registrations"]),
        )
        await cdp.send("ServiceWorker.enable")
        await page.goto(f"{base}/alerts/subscribe/")
        scope = await page.evaluate(
            """navigator.serviceWorker.register('/alerts/sw.js')
                 .then(() => navigator.serviceWorker.ready)
                 .then((r) => r.scope)"""
        )
        assert scope == f"{base}/alerts/"
        assert await page.evaluate("Notification.permission") == "granted"

        async def registration_id():
            found = [r for r in registrations if r["scopeURL"] == scope and not r["isDeleted"]]
            return found[-1]["registrationId"] if found else None

        registration = await _wait(registration_id, "the service worker's registration")

        async def activated():
            state = "navigator.serviceWorker.ready.then((r) => r.active && r.active.state)"
            return await page.evaluate(state) == "activated"

        await _wait(activated, "the service worker to be activated")
        message = {
            "title": "Powódź: wysoki stan Mrowli",
            "body": "Nie zbliżaj się do wałów.",
            "url": f"{base}/alerts/alert-test/",
            "tag": "alert-test",
            "severity": "Extreme",
        }

        async def deliver_until_shown(message: dict, tag: str, what: str) -> list:
            """Chromium now and then drops a message DevTools delivers to a
            service worker (about one run in six here): it is delivered again
            until it shows, as a push service would retry one not acknowledged."""

            async def shown():
                return [n for n in await page.evaluate(NOTIFICATIONS) if n["tag"] == tag]

            data = json.dumps(message)
            for _attempt in range(4):
                await cdp.send(
                    "ServiceWorker.deliverPushMessage",
                    {"origin": base, "registrationId": registration, "data": data},
                )
                try:
                    return await _wait(shown, what, timeout=4.0)
                except AssertionError:
                    continue
            workers = await page.evaluate(
                "navigator.serviceWorker.getRegistrations().then((rs) => rs.map("
                "(r) => [r.scope, r.active && r.active.state]))"
            )
            raise AssertionError(f"timed out waiting for {what}: {registrations=} {workers=}")

        found = await deliver_until_shown(message, "alert-test", "the notification")
        [notification] = found
        assert len(await page.evaluate(NOTIFICATIONS)) == 1
        assert notification == {
            "title": "Powódź: wysoki stan Mrowli",
            "body": "Nie zbliżaj się do wałów.",
            "tag": "alert-test",
            "url": f"{base}/alerts/alert-test/",
            "requireInteraction": True,
            "lang": "pl",
        }
        # A message pointing elsewhere opens this site's list of alerts instead.
        message |= {"url": "https://evil.example/phish", "tag": "other", "severity": "Minor"}
        [other] = await deliver_until_shown(message, "other", "the second notification")
        assert other["url"] == f"{base}/alerts/" and other["requireInteraction"] is False
        key = await page.evaluate("fetch('/alerts/push/key').then((r) => r.json())")
        assert len(unb64url(key["publicKey"])) == 65
        await context.close()


# The browser's own push service (FCM for Chromium) is out of reach here: a
# subscription of the loopback push service stands in for the one
# PushManager.subscribe would get from it. Everything else is the real page.
FAKE_PUSH_MANAGER = """(subscription) => {
  const made = {
    endpoint: subscription.endpoint,
    options: null,
    toJSON: () => subscription,
    unsubscribe: async () => { window.pushSubscribed = null; return true; },
  };
  PushManager.prototype.subscribe = async function (options) {
    made.options = { applicationServerKey: options.applicationServerKey.buffer };
    window.pushSubscribed = made;
    return made;
  };
  PushManager.prototype.getSubscription = async function () {
    return window.pushSubscribed || null;
  };
}"""


@pytest.mark.integration
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
async def test_the_button_subscribes_this_browser_and_an_alert_reaches_it(
    hub_processes, push_service, settings
):
    from conftest import headless_chromium, url_of_test_database
    from test_accessibility import axe_report, axe_violations

    port = hub_processes.daphne(
        {
            "DATABASE_URL": url_of_test_database(),
            "ALERTS_VAPID_PRIVATE_KEY": VAPID_PEM.replace("\n", "\\n"),
            "ALERTS_PUSH_ALLOWED_HOSTS": push_service.host,
        }
    )
    base = f"http://127.0.0.1:{port}"
    subscription = push_service.subscribe()
    async with headless_chromium() as browser:
        context = await browser.new_context()
        await context.grant_permissions(["notifications"], origin=base)
        page = await context.new_page()
        await page.goto(f"{base}/alerts/subscribe/")
        await page.evaluate(FAKE_PUSH_MANAGER, subscription.as_json())
        await page.wait_for_selector("#push-section", state="visible")
        assert await page.is_hidden("#push-off")
        # Inside the form: areas, then consent, then the button, then Subscribe.
        order = await page.evaluate(
            """() => [...document.querySelector('#push-button').form.querySelectorAll(
                 '#id_areas_0, #id_consent, #push-button, button[type=submit]')]
               .map((element) => element.id || element.type)"""
        )
        assert order == ["id_areas_0", "id_consent", "push-button", "submit"]
        status = page.locator("#push-status")

        # By keyboard, with no area ticked: it says what is missing.
        await page.focus("#push-button")
        await page.keyboard.press("Enter")
        await page.wait_for_function("document.querySelector('#push-status').textContent")
        assert await status.get_attribute("aria-live") == "polite"
        missing = await status.inner_text()

        await page.check("#id_areas_0")  # the whole municipality
        await page.check("input[name=categories][value=Met]")
        # Without the consent box ticked: refused, and the box has the focus.
        await page.focus("#push-button")
        await page.keyboard.press("Enter")
        await page.wait_for_function(
            "(before) => document.querySelector('#push-status').textContent !== before",
            arg=missing,
        )
        no_consent = await status.inner_text()
        assert await page.evaluate("document.activeElement.id") == "id_consent"
        assert await page.evaluate("window.pushSubscribed || null") is None  # not asked
        assert await status.get_attribute("class") == "form-error"

        await page.keyboard.press("Space")  # ticks the focused consent box
        assert await page.is_checked("#id_consent")
        await page.focus("#push-button")
        await page.keyboard.press("Enter")
        await page.wait_for_function(
            "(before) => document.querySelector('#push-status').textContent !== before "
            "&& document.querySelector('#push-status a')",
            arg=no_consent,
        )
        link = await page.get_attribute("#push-status a", "href")
        assert await page.is_visible("#push-off")
        used_key = await page.evaluate(
            "btoa(String.fromCharCode(...new Uint8Array("
            "window.pushSubscribed.options.applicationServerKey)))"
        )
        scope = await page.evaluate("navigator.serviceWorker.ready.then((r) => r.scope)")
        assert scope == f"{base}/alerts/"
        violations = await axe_violations(page)
        assert not violations, axe_report("subscribe page with notifications on", violations)
        await context.close()

    subscriber = await database_sync_to_async(Subscriber.objects.get)(
        push_endpoint=subscription.endpoint
    )
    assert link == f"/alerts/preferences/{subscriber.token}/"
    assert subscriber.areas == ["gmina"] and subscriber.categories == ["Met"]
    assert subscriber.consent_source == "web-push" and subscriber.push_confirmed_at
    assert subscriber.consent_version == CONSENT_VERSION
    assert base64.b64decode(used_key) == unb64url(channel().public_key)

    # An alert now reaches it through the worker and the push service.
    settings.ALERTS = {**settings.ALERTS, "PUSH_ALLOWED_HOSTS": [push_service.host]}

    def publish_and_send():
        author = make_user("operator-push-browser", "operator")
        alert = new_alert(author=author)
        outbox.publish(alert.pk, author, now=time.time())
        worker = Worker(name="w-push-browser", channels={"push": channel()})
        try:
            worker.run_once()
        finally:
            worker.channels["push"].close()
        return alert

    alert = await database_sync_to_async(publish_and_send)()
    [received] = push_service.received
    assert received.endpoint == subscription.endpoint
    assert received.data["tag"] == alert.identifier


@pytest.mark.django_db
def test_a_known_endpoint_with_another_auth_secret_changes_nothing(push_on):
    """An endpoint is no secret (it is in its owner's data export): without the
    subscription's auth secret nobody re-keys it, moves it or learns its link."""
    subscription = push_on.subscribe()
    keys = subscription.as_json()["keys"]
    owner = push_subscriber(subscription.endpoint, keys["p256dh"], keys["auth"])
    thief = push_on.subscribe()  # a valid key pair of someone else
    body = {
        **subscription.as_json(),
        "keys": thief.as_json()["keys"],
        "areas": ["stykow"],
        "categories": [],
        "consent": True,
    }
    response = post_json(Client(), "/alerts/push/subscribe", body)
    assert response.status_code == 200 and response.json() == {"ok": True, "preferences": None}
    after = Subscriber.objects.get(pk=owner.pk)
    assert (after.push_p256dh, after.push_auth) == (keys["p256dh"], keys["auth"])
    assert after.areas == owner.areas
