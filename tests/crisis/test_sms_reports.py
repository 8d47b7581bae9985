"""SerwerSMS delivery reports, asked for (``messages/reports``) rather than
told, and written on the same status model as SMSAPI's callback: against the
loopback SerwerSMS (real HTTP, tests/crisis/sms_servers.py) and real
PostgreSQL; the worker's interval with an injected clock."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import time

import pytest
from django.db import transaction
from django.utils import timezone

from alerts import outbox, reports
from alerts import worker as worker_module
from alerts.models import Delivery
from alerts.reports import Report, apply_report, poll_due, poll_serwersms
from alerts.sms_providers import SerwerSmsChannel, SmsApiChannel
from alerts.worker import Worker
from tests.crisis.sms_servers import FakeSerwerSms
from tests.crisis.test_sms_providers import TOKEN, config, delivery

HOUR = 3600.0


@pytest.fixture
def serwersms():
    with FakeSerwerSms(TOKEN) as server:
        yield server


@pytest.fixture
def channel(serwersms):
    made = SerwerSmsChannel(config(serwersms.url))
    yield made
    made.close()


_phones = iter(range(600_200_000, 600_300_000))


def sent(provider_id: str, *, hours_ago: float = 0.1, **fields) -> Delivery:
    """An SMS the provider took ``hours_ago`` (status sent, with its id)."""
    fields.setdefault("status", "sent")
    at = timezone.now() - dt.timedelta(hours=hours_ago)
    return delivery(f"+48{next(_phones)}", provider_id=provider_id, sent_at=at, **fields)


def asked(server: FakeSerwerSms) -> list[str]:
    """Every message id the provider was asked about, in order."""
    return [i for query in server.report_queries for i in query.get("id", [])]


# --- the channel: one request for many messages ------------------------------------


def test_reports_asks_about_many_messages_in_one_request(serwersms, channel):
    serwersms.report("m1", "delivered", delivered="2026-11-27 01:02:03")
    serwersms.report("m2", "undelivered", reason="wrong_number")
    serwersms.report("m3", "pending")  # no news
    serwersms.report("m4", "something_new")  # not a status we know: no news either
    serwersms.report("m6", "unsent", reason="number_is_blacklisted")
    found = {r.provider_id: r for r in channel.reports(["m1", "m2", "m3", "m4", "m5", "m6"])}
    [query] = serwersms.report_queries
    assert query["id"] == ["m1", "m2", "m3", "m4", "m5", "m6"]
    assert set(found) == {"m1", "m2", "m6"}  # m5: the provider does not know it
    assert found["m1"] == Report("m1", "", "delivered", "delivered", None)
    assert found["m2"].status == "failed" and found["m2"].detail == "undelivered wrong_number"
    assert found["m6"].status == "failed" and found["m6"].detail == "unsent number_is_blacklisted"
    assert channel.reports([]) == [] and len(serwersms.report_queries) == 1  # nothing to ask


def test_reports_follows_the_providers_pages(serwersms, channel, monkeypatch):
    """When the provider splits its answer (a smaller page than asked for),
    the other pages are asked for too."""
    for n in range(5):
        serwersms.report(f"p{n}", "delivered")
    original = channel._post

    def small_pages(path, payload, **kwargs):
        return original(path, {**payload, "limit": 2}, **kwargs)

    monkeypatch.setattr(channel, "_post", small_pages)
    found = channel.reports([f"p{n}" for n in range(5)])
    assert sorted(r.provider_id for r in found) == [f"p{n}" for n in range(5)]
    assert [q["page"] for q in serwersms.report_queries] == [1, 2, 3]


# --- the poll -------------------------------------------------------------------------


@pytest.mark.django_db
def test_delivered_undelivered_and_no_news(serwersms, channel):
    delivered, undelivered = sent("s-ok"), sent("s-bad")
    pending, unknown = sent("s-wait"), sent("s-who")
    serwersms.report("s-ok", "delivered")
    serwersms.report("s-bad", "undelivered", reason="message_expired")
    serwersms.report("s-wait", "pending")
    # s-who: the provider has never heard of it
    before = {row.pk: Delivery.objects.values().get(pk=row.pk) for row in (pending, unknown)}
    assert poll_serwersms(channel, now=time.time()) == 2
    for row in (delivered, undelivered):
        row.refresh_from_db()
    assert delivered.status == "delivered" and delivered.last_error == ""
    assert undelivered.status == "failed"
    assert undelivered.last_error == "report: undelivered message_expired"
    for pk, values in before.items():  # no news changes nothing, not even updated_at
        assert Delivery.objects.values().get(pk=pk) == values
    assert sorted(asked(serwersms)) == ["s-bad", "s-ok", "s-wait", "s-who"]


@pytest.mark.django_db
def test_a_replayed_report_changes_nothing(serwersms, channel):
    row = sent("r-1")
    failed = sent("r-2")
    serwersms.report("r-1", "delivered")
    serwersms.report("r-2", "undelivered", reason="wrong_number")
    assert poll_serwersms(channel, now=time.time()) == 2
    after = {pk: Delivery.objects.values().get(pk=pk) for pk in (row.pk, failed.pk)}
    # The same reports again: asked directly, since the poll asks about "sent" only.
    with transaction.atomic():
        for report in channel.reports(["r-1", "r-2"]):
            locked = Delivery.objects.select_for_update().get(provider_id=report.provider_id)
            assert apply_report(report, delivery=locked) is False
    assert poll_serwersms(channel, now=time.time()) == 0
    assert {pk: Delivery.objects.values().get(pk=pk) for pk in after} == after


@pytest.mark.django_db
def test_a_delivered_message_is_never_moved_back(serwersms, channel):
    row = sent("d-1", status="delivered")
    serwersms.report("d-1", "undelivered", reason="operator_error")
    before = Delivery.objects.values().get(pk=row.pk)
    assert poll_serwersms(channel, now=time.time()) == 0
    assert asked(serwersms) == []  # only deliveries still "sent" are asked about
    # A report read while the delivery was "sent" and written after it was
    # delivered (another worker's poll in between) changes nothing either.
    with transaction.atomic():
        locked = Delivery.objects.select_for_update().get(pk=row.pk)
        [late] = channel.reports(["d-1"])
        assert late.status == "failed"
        for report in (late, Report("d-1", "", "sent", "sent", None)):
            assert apply_report(report, delivery=locked) is False
    assert Delivery.objects.values().get(pk=row.pk) == before


@pytest.mark.django_db
def test_a_report_about_another_message_is_not_applied(serwersms, channel):
    row = sent("x-1")
    with transaction.atomic():
        locked = Delivery.objects.select_for_update().get(pk=row.pk)
        assert apply_report(Report("x-2", "", "delivered", "", None), delivery=locked) is False
    row.refresh_from_db()
    assert row.status == "sent"


@pytest.mark.django_db
def test_only_sent_sms_with_a_provider_id_within_the_window_are_asked_about(serwersms, channel):
    inside = sent("w-in", hours_ago=47)
    sent("w-old", hours_ago=49)  # outside the 48 hours
    sent("", hours_ago=1)  # no provider id (an "already sent" answer without one)
    sent("w-queued", status="queued", hours_ago=1)
    sent("w-failed", status="failed", hours_ago=1)
    email = sent("w-mail", hours_ago=1)
    Delivery.objects.filter(pk=email.pk).update(channel="email")
    for provider_id in ("w-in", "w-old", "w-queued", "w-failed", "w-mail"):
        serwersms.report(provider_id, "delivered")
    assert poll_serwersms(channel, now=time.time()) == 1
    assert asked(serwersms) == ["w-in"]
    inside.refresh_from_db()
    assert inside.status == "delivered"
    # A narrower window leaves it out; a poll "in the past" ignores what came later.
    assert poll_serwersms(channel, now=time.time(), window_hours=1) == 0
    assert poll_serwersms(channel, now=time.time() - 50 * HOUR) == 0
    assert len(serwersms.report_queries) == 1


@pytest.mark.django_db
def test_every_pending_message_is_asked_about_oldest_first_in_batches(serwersms, channel):
    """Batches of ``batch`` ids, oldest first; messages that never get a
    final report (the two oldest) do not hide the newer ones."""
    rows = [sent(f"b-{n}", hours_ago=10 - n) for n in range(5)]
    for row in rows[2:]:
        serwersms.report(row.provider_id, "delivered")
    assert poll_serwersms(channel, now=time.time(), batch=2) == 3
    assert [q["id"] for q in serwersms.report_queries] == [["b-0", "b-1"], ["b-2", "b-3"], ["b-4"]]
    assert [Delivery.objects.get(pk=r.pk).status for r in rows] == ["sent"] * 2 + ["delivered"] * 3


@pytest.mark.django_db
def test_the_smsapi_callback_and_the_poll_share_the_writer():
    """apply_report without a row finds it as before (SMSAPI: by idx or by
    provider id); the full callback behaviour is in test_sms_providers."""
    row = sent("c-1")
    with transaction.atomic():
        assert apply_report(Report("c-1", "", "delivered", "404 DELIVERED", None)) is True
        assert apply_report(Report("c-1", row.idempotency_key, "failed", "", None)) is False
        assert apply_report(Report("nobody", "", "delivered", "", None)) is False
    row.refresh_from_db()
    assert row.status == "delivered"


# --- the worker: at most every SMS_REPORT_POLL_SECONDS ----------------------------------


def test_poll_due_keeps_the_interval():
    assert poll_due(None, 1000.0, 60)  # never asked: now
    assert not poll_due(1000.0, 1059.9, 60)
    assert poll_due(1000.0, 1060.0, 60)
    assert poll_due(1000.0, 900.0, 60)  # the clock was set back: do not wait for it
    assert not poll_due(None, 1000.0, 0)  # 0: polling off
    assert not poll_due(1000.0, 5000.0, -1)


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def polls(monkeypatch):
    """The worker's calls of poll_serwersms (replaced: no database, no HTTP)."""
    calls: list[float] = []

    def fake(channel, *, now):
        calls.append(now)
        return 0

    monkeypatch.setattr(reports, "poll_serwersms", fake)
    return calls


def test_the_worker_polls_serwersms_at_the_interval(settings, polls):
    settings.ALERTS = {**settings.ALERTS, "SMS_REPORT_POLL_SECONDS": 60}
    clock = Clock()
    worker = Worker(name="w", channels={"sms": SerwerSmsChannel(config("http://127.0.0.1:9"))})
    worker.clock = clock
    try:
        start = clock.now
        for step in (0, 1, 30, 59.9, 60, 61, 119, 120.5, 500):
            clock.now = start + step
            worker.poll_reports()
    finally:
        worker.close()
    assert [t - start for t in polls] == [0, 60, 120.5, 500]


def test_the_interval_defaults_to_a_minute(settings, polls):
    assert settings.ALERTS["SMS_REPORT_POLL_SECONDS"] == 60  # hub/settings.py's default
    clock = Clock()
    worker = Worker(
        name="w", channels={"sms": SerwerSmsChannel(config("http://127.0.0.1:9"))}, clock=clock
    )
    try:
        start = clock.now
        for step in (0, 59, 60):
            clock.now = start + step
            worker.poll_reports()
    finally:
        worker.close()
    assert [t - start for t in polls] == [0, 60]


def test_no_poll_without_serwersms_or_with_polling_off(settings, polls):
    settings.ALERTS = {**settings.ALERTS, "SMS_REPORT_POLL_SECONDS": 60}
    for channels in ({}, {"sms": SmsApiChannel(config("http://127.0.0.1:9"))}):
        worker = Worker(name="w", channels=channels)
        try:
            assert worker.poll_reports() is False
        finally:
            worker.close()
    settings.ALERTS = {**settings.ALERTS, "SMS_REPORT_POLL_SECONDS": 0}
    worker = Worker(name="w", channels={"sms": SerwerSmsChannel(config("http://127.0.0.1:9"))})
    try:
        assert worker.poll_reports() is False
    finally:
        worker.close()
    assert polls == []


def test_a_failed_poll_is_logged_and_tried_again_after_the_interval(settings, monkeypatch, caplog):
    settings.ALERTS = {**settings.ALERTS, "SMS_REPORT_POLL_SECONDS": 60}
    calls: list[float] = []

    def broken(channel, *, now):
        calls.append(now)
        raise RuntimeError("provider down")

    monkeypatch.setattr(reports, "poll_serwersms", broken)
    clock = Clock()
    worker = Worker(
        name="w", channels={"sms": SerwerSmsChannel(config("http://127.0.0.1:9"))}, clock=clock
    )
    try:
        with caplog.at_level(logging.ERROR, logger="alerts.worker"):
            assert worker.poll_reports() is True  # no exception
        clock.now += 10
        assert worker.poll_reports() is False  # not hammering a provider that is down
        clock.now += 50
        assert worker.poll_reports() is True
    finally:
        worker.close()
    assert len(calls) == 2
    assert "delivery reports failed" in caplog.text and "provider down" in caplog.text


def test_the_worker_loop_polls_at_the_interval_and_a_failure_does_not_stop_it(
    settings, monkeypatch, tmp_path
):
    """Worker.run's own loop (its database work replaced) calls the poll at
    most every SMS_REPORT_POLL_SECONDS, here every other round of 30 s; a
    poll that fails is logged and the loop goes on, touching its heartbeat,
    until the third poll stops it."""
    heartbeat = tmp_path / "alive"
    settings.ALERTS = {
        **settings.ALERTS,
        "SMS_REPORT_POLL_SECONDS": 60,
        "POLL_SECONDS": 0.001,
        "HEARTBEAT_FILE": str(heartbeat),
    }
    clock = Clock()
    start = clock.now
    worker = Worker(
        name="w", channels={"sms": SerwerSmsChannel(config("http://127.0.0.1:9"))}, clock=clock
    )
    worker.lanes.pop("sms").close()  # no sending thread: only the main loop
    rounds: list[float] = []
    calls: list[float] = []

    def tick(*, now):
        rounds.append(now)
        clock.now += 30  # each round half a minute later
        return {}

    def poll(channel, *, now):
        calls.append(now)
        if len(calls) == 3:
            worker.stop()
        raise RuntimeError("provider down")

    monkeypatch.setattr(worker_module, "close_old_connections", lambda: None)
    monkeypatch.setattr(outbox, "tick_alerts", tick)
    monkeypatch.setattr(worker, "_claim_unconfigured", list)
    monkeypatch.setattr(worker, "_dispatch", len)
    monkeypatch.setattr(reports, "poll_serwersms", poll)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        worker.run()
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    assert [t - start for t in rounds] == [0, 30, 60, 90, 120]
    assert [t - start for t in calls] == [30, 90, 150]  # after each round's tick
    assert heartbeat.exists()


@pytest.mark.django_db
def test_the_worker_applies_serwersms_reports_end_to_end(serwersms, settings):
    settings.ALERTS = {**settings.ALERTS, "SMS_REPORT_POLL_SECONDS": 60}
    row = sent("e-1")
    serwersms.report("e-1", "delivered")
    worker = Worker(name="w", channels={"sms": SerwerSmsChannel(config(serwersms.url))})
    try:
        assert worker.poll_reports() is True
    finally:
        worker.close()
    row.refresh_from_db()
    assert row.status == "delivered"
    assert asked(serwersms) == ["e-1"]
