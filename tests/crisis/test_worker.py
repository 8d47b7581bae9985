"""The alerts worker's sending: each channel in its own lane of threads as
wide as its concurrency setting, started no faster than its rate limit, every
result recorded by the worker (real PostgreSQL, a real SMTP server)."""

from __future__ import annotations

import threading
import time

import pytest
from django.utils import timezone

from alerts import outbox
from alerts.channels import EmailChannel, Result
from alerts.models import Delivery, Subscriber
from alerts.worker import Lane, RateLimit, Worker
from tests.crisis.test_outbox import mailbox, new_alert, subscribers  # noqa: F401
from tests.meet.helpers import make_user


class FakeTime:
    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_the_rate_limit_lets_a_seconds_worth_through_then_spaces_the_rest():
    fake = FakeTime()
    limit = RateLimit(10, clock=fake.clock, sleep=fake.sleep)
    waits = [limit.reserve() for _ in range(15)]
    assert waits[:10] == [0.0] * 10
    # Each further caller waits one tenth of a second more than the one before.
    assert waits[10:] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    fake.now += 0.5  # half a second pays back the five taken on credit
    assert limit.reserve() == pytest.approx(0.1)


def test_the_rate_limit_refills_with_time_but_never_above_one_second():
    fake = FakeTime()
    limit = RateLimit(4, clock=fake.clock, sleep=fake.sleep)
    for _ in range(4):
        limit.acquire()
    assert fake.slept == []
    fake.now += 60  # a quiet minute does not store up 240 sends
    assert [limit.reserve() for _ in range(5)] == pytest.approx([0, 0, 0, 0, 0.25])


def test_no_rate_means_no_waiting():
    limit = RateLimit(0)
    assert all(limit.reserve() == 0 for _ in range(1000))


class Probe:
    """A channel that records how many sends were in flight at once."""

    def __init__(self, *, concurrent: bool, seconds: float = 0.02):
        self.concurrent = concurrent
        self.seconds = seconds
        self.lock = threading.Lock()
        self.inflight = 0
        self.most = 0
        self.sent: list[int] = []

    def send(self, delivery) -> Result:
        with self.lock:
            self.inflight += 1
            self.most = max(self.most, self.inflight)
        time.sleep(self.seconds)
        with self.lock:
            self.inflight -= 1
            self.sent.append(delivery.pk)
        return Result(True, provider_id=f"p{delivery.pk}")


def test_a_lane_is_as_wide_as_its_concurrency_only_for_a_channel_safe_to_share():
    assert Lane("email", Probe(concurrent=True), concurrency=6, rate=0).width == 6
    assert Lane("sms", Probe(concurrent=False), concurrency=6, rate=0).width == 1


def test_a_rate_limited_lane_claims_no_more_than_it_can_start_in_half_a_lease():
    lane = Lane("sms", Probe(concurrent=True), concurrency=4, rate=2)
    assert lane.batch(100, lease=60) == 60
    assert lane.batch(100, lease=1) == 1
    assert Lane("email", Probe(concurrent=True), concurrency=4, rate=0).batch(100, 60) == 100


@pytest.mark.django_db
def test_the_worker_sends_up_to_the_concurrency_at_once_and_records_every_result(settings):
    settings.ALERTS = {**settings.ALERTS, "EMAIL_CONCURRENCY": 4, "SMS_CONCURRENCY": 3}
    author = make_user("operatorka-w1", "operator")
    now = timezone.now()
    subscribers(40, phone="+48600100200", phone_confirmed_at=now)
    outbox.publish(new_alert(author).pk, author, now=time.time())
    email, sms = Probe(concurrent=True), Probe(concurrent=False)
    worker = Worker(name="w", channels={"email": email, "sms": sms})
    try:
        assert worker.run_once() == 80
    finally:
        worker.close()
    assert email.most == 4  # four at a time, never more
    assert sms.most == 1  # not safe to share: one at a time
    assert sorted(email.sent + sms.sent) == sorted(Delivery.objects.values_list("pk", flat=True))
    assert set(Delivery.objects.values_list("status", flat=True)) == {"sent"}
    assert Delivery.objects.filter(provider_id="").count() == 0


@pytest.mark.django_db
def test_a_channel_without_a_sender_fails_its_deliveries_for_a_retry(settings):
    author = make_user("operatorka-w2", "operator")
    subscribers(3, phone="+48600100200", phone_confirmed_at=timezone.now())
    outbox.publish(new_alert(author).pk, author, now=time.time())
    email = Probe(concurrent=True, seconds=0)
    worker = Worker(name="w", channels={"email": email})  # no SMS configured
    try:
        assert worker.run_once() == 6
    finally:
        worker.close()
    sms = Delivery.objects.filter(channel="sms")
    assert {d.status for d in sms} == {"queued"}  # again later, maybe configured by then
    assert {d.last_error for d in sms} == {"no channel sms configured"}
    assert set(Delivery.objects.filter(channel="email").values_list("status", flat=True)) == {
        "sent"
    }


@pytest.mark.django_db
def test_an_address_gone_for_good_is_forgotten(settings):
    author = make_user("operatorka-w3", "operator")
    now = timezone.now()
    [gone] = subscribers(
        1,
        email="",
        email_confirmed_at=None,
        push_endpoint="https://fcm.googleapis.com/fcm/send/abc",
        push_p256dh="key",
        push_auth="auth",
        push_confirmed_at=now,
    )
    outbox.publish(new_alert(author).pk, author, now=time.time())

    class Gone:
        concurrent = True

        def send(self, delivery):
            return Result(False, error="410 Gone", permanent=True, forget_address=True)

    worker = Worker(name="w", channels={"push": Gone()})
    try:
        assert worker.run_once() == 1
    finally:
        worker.close()
    gone = Subscriber.objects.get(pk=gone.pk)
    assert (gone.push_endpoint, gone.push_p256dh, gone.push_auth) == ("", "", "")
    assert gone.push_confirmed_at is None
    delivery = Delivery.objects.get()
    assert delivery.status == "failed" and delivery.last_error == "410 Gone"


@pytest.mark.django_db
def test_a_new_address_is_not_forgotten_for_the_old_ones_failure():
    author = make_user("operatorka-w4", "operator")
    [person] = subscribers(1)
    outbox.publish(new_alert(author).pk, author, now=time.time())
    [delivery] = outbox.claim("w", now=time.time(), batch=10, lease=60)
    Subscriber.objects.filter(pk=person.pk).update(email="nowy@example.test")
    outbox.forget_address(delivery)  # the delivery still holds the old address
    assert Subscriber.objects.get(pk=person.pk).email == "nowy@example.test"


@pytest.mark.django_db
def test_parallel_smtp_sends_reach_every_recipient_once_over_several_connections(
    settings,
    mailbox,  # noqa: F811
):
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", mailbox.port
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.ALERTS = {**settings.ALERTS, "EMAIL_CONCURRENCY": 3}
    author = make_user("operatorka-w5", "operator")
    people = subscribers(90)
    outbox.publish(new_alert(author).pk, author, now=time.time())
    worker = Worker(name="w", channels={"email": EmailChannel()})
    try:
        assert worker.run_once() == 90
    finally:
        worker.close()
    assert set(mailbox.received.values()) == {1}
    assert set(mailbox.received) == {p.email for p in people}
    assert 1 < len(mailbox.sessions) <= 3  # kept-open connections, one per thread


@pytest.mark.django_db
def test_parallel_sms_sends_reach_every_number_once_over_several_connections(settings):
    from alerts.sms_providers import SmsApiChannel
    from tests.crisis.sms_servers import FakeSmsApi
    from tests.crisis.test_sms_providers import TOKEN, config

    settings.ALERTS = {**settings.ALERTS, "SMS_CONCURRENCY": 3}
    author = make_user("operatorka-w6", "operator")
    now = timezone.now()
    phones = [f"+4860030{i:04d}" for i in range(60)]
    for phone in phones:
        subscribers(1, email="", email_confirmed_at=None, phone=phone, phone_confirmed_at=now)
    outbox.publish(new_alert(author).pk, author, now=time.time())
    with FakeSmsApi(TOKEN) as smsapi:
        worker = Worker(name="w", channels={"sms": SmsApiChannel(config(smsapi.url))})
        try:
            assert worker.run_once() == 60
        finally:
            worker.close()
        assert sorted("+" + m["to"] for m in smsapi.accepted) == phones  # each once
        assert 1 < smsapi.connections <= 3  # one kept-alive connection per thread
    assert set(Delivery.objects.values_list("status", flat=True)) == {"sent"}


@pytest.mark.django_db(transaction=True)
def test_the_lease_is_renewed_while_a_slow_send_is_in_hand(settings):
    """A provider slower than the lease: the row stays this worker's, so no
    other worker takes it and sends it again."""
    from django.db import connection

    settings.ALERTS = {**settings.ALERTS, "LEASE_SECONDS": 0.6}
    author = make_user("operatorka-w7", "operator")
    subscribers(1)
    outbox.publish(new_alert(author).pk, author, now=time.time())
    seen = {}

    class Slow:
        concurrent = True

        def send(self, delivery):
            time.sleep(1.2)  # twice the lease
            row = Delivery.objects.get(pk=delivery.pk)
            seen["lease_left"] = row.lease_until.timestamp() - time.time()
            seen["other"] = outbox.claim("other", now=time.time(), batch=10, lease=60)
            connection.close()
            return Result(True, provider_id="slow")

    worker = Worker(name="w", channels={"email": Slow()})
    try:
        assert worker.run_once() == 1
    finally:
        worker.close()
    assert seen["lease_left"] > 0 and seen["other"] == []
    assert Delivery.objects.get().status == "sent"


@pytest.mark.django_db
def test_stopping_gives_back_what_was_not_sent_yet(settings):
    settings.ALERTS = {**settings.ALERTS, "EMAIL_CONCURRENCY": 1}
    author = make_user("operatorka-w8", "operator")
    subscribers(5)
    outbox.publish(new_alert(author).pk, author, now=time.time())
    sent = []

    class StopsAfterOne:
        concurrent = False

        def send(self, delivery):
            worker.stop()  # SIGTERM arrives during the first send
            time.sleep(0.3)
            sent.append(delivery.pk)
            return Result(True, provider_id="x")

    worker = Worker(name="w", channels={"email": StopsAfterOne()})
    try:
        assert worker.run_once() == 5
    finally:
        worker.close()
    rows = {d.pk: d for d in Delivery.objects.all()}
    assert len(sent) == 1 and rows[sent[0]].status == "sent"
    back = [d for pk, d in rows.items() if pk not in sent]
    assert len(back) == 4  # queued again at once, the try not counted
    assert {(d.status, d.attempts, d.lease_until, d.claimed_by) for d in back} == {
        ("queued", 0, None, "w")
    }
    assert len(outbox.claim("other", now=time.time(), batch=10, lease=60)) == 4


@pytest.mark.django_db
def test_a_channel_prepares_each_alert_where_the_database_may_be_used():
    author = make_user("operatorka-w9", "operator")
    subscribers(6)
    outbox.publish(new_alert(author).pk, author, now=time.time())
    threads = {"prepare": set(), "send": set()}

    class Prepares:
        concurrent = True

        def prepare(self, alert):
            threads["prepare"].add(threading.current_thread().name)

        def send(self, delivery):
            threads["send"].add(threading.current_thread().name)
            return Result(True, provider_id="p")

    worker = Worker(name="w", channels={"email": Prepares()})
    try:
        assert worker.run_once() == 6
    finally:
        worker.close()
    assert threads["prepare"] == {threading.current_thread().name}
    assert threads["send"] and all(name.startswith("alerts-email") for name in threads["send"])
