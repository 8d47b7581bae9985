"""The durable outbox: publishing writes the deliveries in the same
transaction; workers claim with SKIP LOCKED and a lease; a worker killed with
SIGKILL mid-run loses nothing (real PostgreSQL, a real SMTP server, real
worker processes)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from django.utils import timezone

from alerts import outbox
from alerts.models import Alert, Delivery, Subscriber
from alerts.worker import Worker
from tests.meet.helpers import make_user

ROOT = Path(__file__).resolve().parent.parent.parent
NOW = time.time()


def new_alert(author, **fields) -> Alert:
    base = {
        "identifier": f"alert-{time.monotonic_ns()}",
        "author": author,
        "category": "Met",
        "event": "Powódź",
        "urgency": "Immediate",
        "severity": "Minor",
        "certainty": "Observed",
        "headline": "Wysoki stan wody",
        "description": "Przekroczony stan alarmowy na Mrowli.",
        "instruction": "Nie zbliżaj się do wałów.",
        "areas": ["przewrotne"],
        # In force around NOW (this module's start), however long before a
        # test runs: the tests publish and claim at NOW.
        "effective": dt.datetime.fromtimestamp(NOW - 3600, tz=dt.UTC),
        "expires": dt.datetime.fromtimestamp(NOW + 12 * 3600, tz=dt.UTC),
        "state": "approved",
    }
    return Alert.objects.create(**{**base, **fields})


def subscribers(n: int, **fields) -> list[Subscriber]:
    now = timezone.now()
    base = {
        "areas": ["przewrotne"],
        "email_confirmed_at": now,
        "consent_version": "2026-11",
        "consent_at": now,
        "consent_source": "test",
    }
    rows = [
        Subscriber(
            **{
                "email": f"mieszkaniec{i}@example.test",
                "token": f"t{i}-{time.monotonic_ns()}",
                **base,
                **fields,
            }
        )
        for i in range(n)
    ]
    return Subscriber.objects.bulk_create(rows, batch_size=2000)


@pytest.mark.django_db
def test_publishing_writes_one_delivery_per_matching_confirmed_channel():
    author = make_user("operatorka", "operator")
    subscribers(3)
    subscribers(2, areas=["styków"])  # another area
    subscribers(1, areas=["gmina"])  # the whole gmina
    subscribers(1, email_confirmed_at=None)  # not confirmed yet
    subscribers(1, categories=["Health"])  # does not want weather
    alert = new_alert(author)
    assert outbox.publish(alert.pk, author, now=NOW) == 4
    alert.refresh_from_db()
    assert alert.state == "published"
    assert Delivery.objects.filter(alert=alert, status="queued").count() == 4
    assert alert.audit.get().action == "published"


@pytest.mark.django_db
def test_a_scheduled_alert_writes_nothing_yet():
    author = make_user("operatorka2", "operator")
    subscribers(2)
    alert = new_alert(author, effective=timezone.now() + dt.timedelta(hours=1))
    assert outbox.publish(alert.pk, author, now=NOW) == 0
    alert.refresh_from_db()
    assert alert.state == "scheduled" and not Delivery.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_workers_never_claim_the_same_delivery():
    author = make_user("operatorka3", "operator")
    subscribers(300)
    outbox.publish(new_alert(author).pk, author, now=NOW)
    claimed: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)

    def take(i: int) -> None:
        from django.db import connection

        barrier.wait()
        while rows := outbox.claim(f"w{i}", now=time.time(), batch=20, lease=60):
            claimed[i].extend(r.pk for r in rows)
        connection.close()

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not set(claimed[0]) & set(claimed[1])
    assert len(claimed[0]) + len(claimed[1]) == 300
    assert claimed[0] and claimed[1]  # both took some: SKIP LOCKED, not a queue behind one lock


@pytest.mark.django_db
def test_a_lease_runs_out_and_only_the_holder_records(settings):
    author = make_user("operatorka4", "operator")
    subscribers(1)
    outbox.publish(new_alert(author).pk, author, now=NOW)
    [first] = outbox.claim("dead", now=NOW, batch=10, lease=30)
    assert outbox.claim("other", now=NOW + 10, batch=10, lease=30) == []  # still leased
    [again] = outbox.claim("other", now=NOW + 31, batch=10, lease=30)
    assert again.pk == first.pk and again.attempts == 2
    assert not outbox.sent(first, "dead", now=NOW + 32)  # the dead worker lost it
    assert outbox.sent(again, "other", now=NOW + 32)
    assert Delivery.objects.get().status == "sent"


@pytest.mark.django_db
def test_failures_retry_with_backoff_then_give_up(settings):
    settings.ALERTS = {
        **settings.ALERTS,
        "MAX_ATTEMPTS": 3,
        "RETRY_BASE_SECONDS": 10,
        "RETRY_MAX_SECONDS": 100,
    }
    author = make_user("operatorka5", "operator")
    subscribers(1)
    outbox.publish(new_alert(author).pk, author, now=NOW)
    now = NOW
    for attempt in (1, 2):
        [delivery] = outbox.claim("w", now=now, batch=1, lease=30)
        outbox.failed(delivery, "w", now=now, error="timeout", permanent=False)
        row = Delivery.objects.get()
        assert row.status == "queued" and row.attempts == attempt
        wait = row.next_attempt_at.timestamp() - now
        assert 0 <= wait <= 10 * 2 ** (attempt - 1) + 0.001
        now += wait + 0.001
    [delivery] = outbox.claim("w", now=now, batch=1, lease=30)
    outbox.failed(delivery, "w", now=now, error="timeout", permanent=False)
    row = Delivery.objects.get()
    assert row.status == "failed" and row.attempts == 3 and row.last_error == "timeout"


# --- A real SMTP server and real worker processes ---------------------------------


class Mailbox:
    """aiosmtpd on loopback, counting each recipient it accepted."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.received: Counter[str] = Counter()
        self.messages: list = []
        self.sessions: set[int] = set()  # one per SMTP connection
        self.lock = threading.Lock()

        mailbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                with mailbox.lock:
                    mailbox.sessions.add(id(session))
                    for rcpt in envelope.rcpt_tos:
                        mailbox.received[rcpt] += 1
                    if len(mailbox.messages) < 3:
                        mailbox.messages.append(envelope.content)
                return "250 OK"

        from conftest import free_port

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())
        self.controller.start()
        self.port = self.controller.port

    def stop(self):
        self.controller.stop()


@pytest.fixture
def mailbox():
    box = Mailbox()
    yield box
    box.stop()


def worker_process(mailbox: Mailbox, **env) -> subprocess.Popen:
    from conftest import url_of_test_database

    environment = {
        **os.environ,
        "DATABASE_URL": url_of_test_database(),
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(mailbox.port),
        "ALERTS_BATCH": "50",
        "ALERTS_LEASE_SECONDS": "3",
        "ALERTS_POLL_SECONDS": "0.1",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "alerts_worker"], cwd=ROOT, env=environment
    )


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.1)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_run_loses_nothing(mailbox, tmp_path):
    """2,000 recipients; the worker is killed with SIGKILL after some hundreds,
    then two workers are started: every recipient ends with exactly one sent
    delivery, and the SMTP server got every one of them (SMTP takes no
    idempotency key, so the batch in flight at the kill may arrive twice)."""
    author = make_user("operatorka6", "operator")
    people = subscribers(2000)
    alert = new_alert(author)
    assert outbox.publish(alert.pk, author, now=time.time()) == 2000

    def sent() -> int:
        return Delivery.objects.filter(alert=alert, status="sent").count()

    first = worker_process(mailbox)
    try:
        wait_until(lambda: sent() >= 300, 60, "the first worker to send 300")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    at_kill = sent()
    assert at_kill < 2000, "the worker finished before it was killed: kill earlier"
    heartbeat = tmp_path / "alive"
    restarted = [
        worker_process(mailbox, ALERTS_HEARTBEAT_FILE=str(heartbeat)),
        worker_process(mailbox),
    ]
    try:
        wait_until(lambda: sent() == 2000, 120, "every delivery to be sent after the restart")
    finally:
        for proc in restarted:
            proc.send_signal(signal.SIGTERM)
        for proc in restarted:
            proc.wait(timeout=15)
    assert time.time() - heartbeat.stat().st_mtime < 5  # the worker's healthcheck file
    rows = Delivery.objects.filter(alert=alert)
    assert rows.count() == 2000
    assert set(rows.values_list("status", flat=True)) == {"sent"}
    assert set(mailbox.received) == {p.email for p in people}
    duplicates = sum(count - 1 for count in mailbox.received.values())
    assert duplicates <= 50, duplicates  # at most the batch the killed worker held
    message = email.message_from_bytes(mailbox.messages[0], policy=email.policy.default)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert (
        message["List-Unsubscribe"].startswith("<http")
        and "/alerts/unsubscribe/" in message["List-Unsubscribe"]
    )
    assert message["Subject"] == "[Minor] Wysoki stan wody"
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    assert "Jak się zachować:" in text and "Nie zbliżaj się do wałów." in text
    assert '<html lang="pl">' in html
    print(f"sent before the kill: {at_kill}; duplicates at SMTP: {duplicates}")


def test_the_worker_sends_sms_only_when_a_provider_is_configured(settings):
    from alerts.sms_providers import SerwerSmsChannel, SmsApiChannel
    from alerts.worker import default_channels

    assert set(default_channels()) == {"email"}
    settings.PUBLIC_BASE_URL = "https://e-uslugi.example"
    settings.ALERTS = {
        **settings.ALERTS,
        "SMS_PROVIDER": "smsapi",
        "SMS_TOKEN": "t",
        "SMS_CALLBACK_SECRET": "s3cret",
    }
    channels = default_channels()
    assert isinstance(channels["sms"], SmsApiChannel)
    assert channels["sms"].config.base_url == "https://api.smsapi.pl"
    assert channels["sms"].config.notify_url == (
        "https://e-uslugi.example/alerts/sms/smsapi/s3cret/report"
    )
    settings.ALERTS = {**settings.ALERTS, "SMS_PROVIDER": "serwersms"}
    channels = default_channels()
    assert isinstance(channels["sms"], SerwerSmsChannel)
    assert channels["sms"].config.notify_url == ""


@pytest.mark.django_db
def test_time_publishes_a_scheduled_alert_with_its_deliveries_and_expires_it():
    author = make_user("operatorka7", "operator")
    subscribers(3)
    start = timezone.now() + dt.timedelta(minutes=10)
    alert = new_alert(author, effective=start, expires=start + dt.timedelta(hours=1))
    assert outbox.publish(alert.pk, author, now=time.time()) == 0  # scheduled
    assert outbox.tick_alerts(now=start.timestamp() - 1) == {"published": 0, "expired": 0}
    assert outbox.tick_alerts(now=start.timestamp()) == {"published": 1, "expired": 0}
    alert.refresh_from_db()
    assert alert.state == "published" and Delivery.objects.filter(alert=alert).count() == 3
    later = (start + dt.timedelta(hours=1)).timestamp()
    assert outbox.tick_alerts(now=later) == {"published": 0, "expired": 1}
    alert.refresh_from_db()
    assert alert.state == "expired"
    assert [a.action for a in alert.audit.all()] == ["scheduled", "published", "expired"]
    assert Delivery.objects.count() == 3  # nothing sent twice by ticking again
    outbox.tick_alerts(now=later + 60)
    assert Delivery.objects.count() == 3


@pytest.mark.django_db
def test_a_published_cancel_retires_the_original():
    author = make_user("operatorka8", "operator")
    subscribers(2)
    original = new_alert(author)
    outbox.publish(original.pk, author, now=time.time())
    cancel = new_alert(
        author, msg_type="Cancel", references=original, instruction="", headline="Odwołanie"
    )
    assert outbox.publish(cancel.pk, author, now=time.time()) == 2  # everyone is told
    original.refresh_from_db()
    assert original.state == "cancelled"
    assert original.audit.last().action == "cancelled"


@pytest.mark.django_db
def test_who_unsubscribed_after_publication_gets_nothing(settings):
    author = make_user("operatorka9", "operator")
    [kept, gone] = subscribers(2)
    outbox.publish(new_alert(author).pk, author, now=time.time())
    Subscriber.objects.filter(pk=gone.pk).update(email="", email_confirmed_at=None)

    class Recording:
        def __init__(self):
            self.to = []

        def send(self, delivery):
            from alerts.channels import Result

            self.to.append(delivery.subscriber.email)
            return Result(True, provider_id="x")

    channel = Recording()
    assert Worker(name="w", channels={"email": channel}).run_once() == 2
    assert channel.to == [kept.email]
    row = Delivery.objects.get(subscriber=gone)
    assert row.status == "failed" and row.last_error == "unsubscribed"
