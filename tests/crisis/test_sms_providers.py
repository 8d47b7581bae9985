"""The SMS channel: SMSAPI.pl and SerwerSMS.pl adapters against loopback
servers that speak their protocols (tests/crisis/sms_servers.py), phone
numbers, the text, and the authenticated delivery-report callback (real
PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import time
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import path
from django.utils import timezone

from alerts import callbacks, outbox
from alerts.models import Alert, Delivery, Subscriber
from alerts.sms import is_gsm7, sms_length
from alerts.sms_providers import (
    InvalidPhone,
    SerwerSmsChannel,
    SmsApiChannel,
    SmsConfig,
    compose,
    normalize_phone,
    smsapi_result,
    unique_id,
)
from alerts.worker import Worker
from tests.crisis.sms_servers import FakeSerwerSms, FakeSmsApi, Step
from tests.crisis.test_outbox import new_alert as outbox_alert
from tests.meet.helpers import make_user

TOKEN = "provider-token-123"
SECRET = "cb-secret-9f3a7c1e5b2d4f6a8c0e"

# The callback as the lead will wire it (see the report): the test urlconf.
urlpatterns = [
    path("alerts/sms/smsapi/<str:secret>/report", callbacks.smsapi_report),
]

LONG_INSTRUCTION = (
    "Natychmiast opuść tereny zalewowe wzdłuż Mrowli i Przewrotnego. Zabierz dokumenty, "
    "leki i ładowarkę do telefonu. Wyłącz prąd i gaz. Nie wchodź do wody, nie przejeżdżaj "
    "przez zalane drogi. Punkt ewakuacyjny: Szkoła Podstawowa w Głogowie Małopolskim, "
    "ul. Wojska Polskiego. Osoby potrzebujące pomocy: telefon 17 789 71 50."
)


# --- helpers ------------------------------------------------------------------


def config(url: str, **fields) -> SmsConfig:
    base = {
        "base_url": url,
        "token": TOKEN,
        "sender": "GminaGlogow",
        "public_base_url": "https://egmina.example",
        "notify_url": f"https://egmina.example/alerts/sms/smsapi/{SECRET}/report",
        "timeout": 5.0,
    }
    return SmsConfig(**{**base, **fields})


def new_alert(**fields) -> Alert:
    fields.setdefault("author", make_user(f"op{time.monotonic_ns()}", "operator"))
    return outbox_alert(fields.pop("author"), headline="Wysoki stan wody na Mrowli", **fields)


def subscriber(phone: str, **fields) -> Subscriber:
    now = timezone.now()
    base = {
        "phone": phone,
        "phone_confirmed_at": now,
        "areas": ["przewrotne"],
        "consent_version": "2026-11",
        "consent_at": now,
        "consent_source": "test",
        "token": f"tok{time.monotonic_ns()}",
    }
    return Subscriber.objects.create(**{**base, **fields})


def delivery(phone: str = "+48600100200", alert: Alert | None = None, **fields) -> Delivery:
    alert = alert or new_alert()
    sub = subscriber(phone)
    base = {
        "alert": alert,
        "subscriber": sub,
        "channel": "sms",
        "next_attempt_at": timezone.now(),
        "idempotency_key": f"a{alert.pk}s{sub.pk}s",
        "attempts": 1,
    }
    row = Delivery.objects.create(**{**base, **fields})
    return Delivery.objects.select_related("alert", "subscriber").get(pk=row.pk)


@pytest.fixture
def smsapi():
    with FakeSmsApi(TOKEN) as server:
        yield server


@pytest.fixture
def serwersms():
    with FakeSerwerSms(TOKEN) as server:
        yield server


# --- phone numbers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("600100200", "+48600100200"),
        ("600 100 200", "+48600100200"),
        ("600-100-200", "+48600100200"),
        ("+48 600 100 200", "+48600100200"),
        ("+48600100200", "+48600100200"),
        ("0048 600 100 200", "+48600100200"),
        ("48600100200", "+48600100200"),
        ("48 600-100-200", "+48600100200"),
        ("(+48) 600 100 200", "+48600100200"),
        ("  17 789 71 50 ", "+48177897150"),  # a landline, 9 digits
        ("481234567", "+48481234567"),  # 9 digits starting with 48: a Radom number
    ],
)
def test_polish_numbers_become_e164(given, expected):
    assert normalize_phone(given) == expected


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("", "phone_empty"),
        ("   ", "phone_empty"),
        ("+49 1512 3456789", "phone_not_polish"),
        ("0049 151 234 567", "phone_not_polish"),
        ("+1 212 555 0100", "phone_not_polish"),
        ("60010020", "phone_wrong_length"),  # 8 digits
        ("6001002001", "phone_wrong_length"),  # 10 digits
        ("+48 600 100 20", "phone_wrong_length"),
        ("4860010020000", "phone_wrong_length"),
        ("600 1OO 200", "phone_bad_characters"),  # letter O
        ("600100200\r\nBcc: x", "phone_bad_characters"),
        ("60010+0200", "phone_bad_characters"),
        ("٦٠٠١٠٠٢٠٠", "phone_bad_characters"),  # non-ASCII digits
        ("060 010 020", "phone_invalid"),  # national numbers never start with 0
        ("1" * 60, "phone_wrong_length"),
    ],
)
def test_anything_else_is_refused_with_a_reason(given, reason):
    with pytest.raises(InvalidPhone) as caught:
        normalize_phone(given)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


# --- the text ---------------------------------------------------------------------


def test_the_text_fits_max_parts_and_keeps_the_unsubscribe_link_whole():
    link = "https://egmina.example/a/u/" + "x" * 32
    text = compose("Powódź: ewakuacja", LONG_INSTRUCTION, link, max_parts=3, transliterate=False)
    length = sms_length(text)
    assert length.encoding == "UCS-2" and length.segments <= 3
    assert text.startswith("Powódź: ewakuacja\nNatychmiast opuść")
    assert text.endswith("\nRezygnacja: " + link)
    assert "...\nRezygnacja" in text  # the instruction was shortened, at a word
    # Transliterated, the same alert says more in GSM-7.
    plain = compose("Powódź: ewakuacja", LONG_INSTRUCTION, link, max_parts=3, transliterate=True)
    assert is_gsm7(plain) and sms_length(plain).segments <= 3
    assert plain.startswith("Powodz: ewakuacja\nNatychmiast opusc")
    assert len(plain) > len(text)


def test_a_short_alert_is_sent_whole_and_a_huge_headline_is_cut():
    link = "https://egmina.example/a/u/abc"
    short = compose("Burza", "Zostań w domu.", link, max_parts=3, transliterate=False)
    assert short == f"Burza\nZostań w domu.\nRezygnacja: {link}"
    one_part = compose("Ż" * 140, "Uwaga " * 50, link, max_parts=1, transliterate=False)
    assert sms_length(one_part).segments == 1 and one_part.endswith(link)


# --- SMSAPI.pl --------------------------------------------------------------------


@pytest.mark.django_db
def test_smsapi_send_ok_returns_the_provider_id_and_speaks_the_protocol(smsapi):
    row = delivery("600 100 200")
    channel = SmsApiChannel(config(smsapi.url))
    try:
        result = channel.send(row)
    finally:
        channel.close()
    assert result.ok and not result.error
    [sent] = smsapi.accepted
    assert result.provider_id == sent["id"]
    assert sent["to"] == "48600100200"
    assert sent["idx"] == row.idempotency_key and sent["check_idx"] == "1"
    assert sent["encoding"] == "utf-8" and sent["format"] == "json"
    assert sent["from"] == "GminaGlogow" and sent["max_parts"] == "3"
    assert sent["notify_url"].endswith(f"/{SECRET}/report")
    assert sent["message"].startswith("Wysoki stan wody na Mrowli\nNie zbliżaj się do wałów.")
    assert sent["message"].endswith(f"/a/u/{row.subscriber.token}")


@pytest.mark.django_db
def test_smsapi_keeps_one_connection_open_for_many_messages(smsapi):
    alert = new_alert()
    channel = SmsApiChannel(config(smsapi.url))
    try:
        results = [channel.send(delivery(f"+486001002{i:02d}", alert)) for i in range(5)]
    finally:
        channel.close()
    assert all(r.ok for r in results)
    assert len(smsapi.accepted) == 5
    assert smsapi.connections == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "step",
    [
        Step("json", {"error": 201, "message": "System internal error"}),  # HTTP 200 + error
        Step("json", {"error": 103, "message": "Insufficient credits"}),  # the account's state
        Step("text", "ERROR:8"),  # the plain-text form
        Step("json", {"error": 999, "message": "internal"}, status=503),
        Step("text", "<html>Bad gateway</html>", status=502),
        Step("json", {"error": 4242, "message": "new code"}),  # unknown: retried
    ],
)
def test_smsapi_retryable_errors(smsapi, step):
    smsapi.then(step)
    row = delivery()
    channel = SmsApiChannel(config(smsapi.url))
    try:
        result = channel.send(row)
        assert not result.ok and not result.permanent and result.error
        assert smsapi.accepted == []
        # Retried, it goes out (the scripted failure is spent).
        assert channel.send(row).ok
    finally:
        channel.close()
    assert len(smsapi.accepted) == 1


@pytest.mark.django_db
def test_smsapi_bad_token_is_retryable_and_sends_nothing(smsapi):
    channel = SmsApiChannel(config(smsapi.url, token="wrong"))
    try:
        result = channel.send(delivery())
    finally:
        channel.close()
    assert not result.ok and not result.permanent
    assert "101" in result.error
    assert smsapi.accepted == []


@pytest.mark.django_db
def test_smsapi_permanent_errors(smsapi):
    channel = SmsApiChannel(config(smsapi.url))
    try:
        smsapi.blacklist.add("48600999888")
        blacklisted = channel.send(delivery("+48600999888"))
        smsapi.then(Step("text", "ERROR:13"))
        no_number = channel.send(delivery("+48600111222"))
        smsapi.then(Step("json", {"error": 59, "message": "Number is added to OptOut list"}))
        opted_out = channel.send(delivery("+48600111333"))
        requests_before = smsapi.requests
        bad_phone = channel.send(delivery("+49 151 2345678"))
    finally:
        channel.close()
    for result, code in [(blacklisted, "57"), (no_number, "13"), (opted_out, "59")]:
        assert not result.ok and result.permanent and code in result.error
    assert not bad_phone.ok and bad_phone.permanent
    assert bad_phone.error == "invalid phone: phone_not_polish"
    assert smsapi.requests == requests_before  # never asked the provider
    assert smsapi.accepted == []


@pytest.mark.django_db
def test_smsapi_too_many_parts_is_permanent(smsapi):
    channel = SmsApiChannel(config(smsapi.url, max_parts=1))
    row = delivery()
    fields = channel.form(row, "+48600100200", "Ż" * 200)  # what a bug upstream could send
    try:
        status, data = channel.http.request(
            "/sms.do",
            urlencode(fields).encode(),
            "application/x-www-form-urlencoded",
            retry_dropped=True,
        )
    finally:
        channel.close()
    result = smsapi_result(status, data)
    assert not result.ok and result.permanent and "12" in result.error


@pytest.mark.django_db
def test_smsapi_a_retry_with_the_same_idx_is_not_sent_twice(smsapi):
    """The provider took the message, then the answer was lost: the retry
    carries the same idx, the provider refuses it as already used (error 53),
    and that counts as sent."""
    smsapi.then(Step("accept_then_drop"))
    row = delivery()
    channel = SmsApiChannel(config(smsapi.url))
    try:
        first = channel.send(row)
        assert not first.ok and not first.permanent and "unreachable" in first.error
        second = channel.send(row)
    finally:
        channel.close()
    assert second.ok and second.provider_id == ""  # SMSAPI does not repeat the id
    assert [m["to"] for m in smsapi.accepted] == ["48600100200"]
    assert smsapi.requests == 2


@pytest.mark.django_db(transaction=True)
def test_the_worker_sends_each_recipient_once_through_smsapi_despite_lost_answers(smsapi, settings):
    # One sending thread: the scripted answers meet the requests in order on
    # one kept-alive connection.
    settings.ALERTS = {
        **settings.ALERTS,
        "RETRY_BASE_SECONDS": 1.0,
        "RETRY_MAX_SECONDS": 2.0,
        "SMS_CONCURRENCY": 1,
    }
    author = make_user("operator-sms", "operator")
    phones = [f"+4860020{i:04d}" for i in range(30)]
    for phone in phones:
        subscriber(phone)
    alert = new_alert(author=author)
    assert outbox.publish(alert.pk, author, now=time.time()) == 30
    # An answer the channel cannot read, then one lost after the provider took
    # the message.
    smsapi.then(Step("json", {"count": 0}), Step("accept_then_drop"))
    now = [time.time()]
    worker = Worker(name="w-sms", channels={"sms": SmsApiChannel(config(smsapi.url))})
    worker.clock = lambda: now[0]
    try:
        for _ in range(5):
            worker.run_once()
            now[0] += 5  # past any backoff
    finally:
        worker.channels["sms"].close()
    rows = Delivery.objects.filter(alert=alert)
    assert rows.count() == 30 and set(rows.values_list("status", flat=True)) == {"sent"}
    accepted = sorted("+" + m["to"] for m in smsapi.accepted)
    assert accepted == sorted(phones)  # every one, none twice
    # The unreadable answer was retried by the worker; the answer lost on a
    # reused keep-alive connection was sent again at once on a new connection
    # (the same idx: safe, answered "idx already used"), within its attempt.
    assert rows.filter(attempts=2).count() == 1
    assert rows.filter(attempts=1).count() == 29
    assert smsapi.requests == 30 + 1 + 1
    assert smsapi.connections == 2


# --- SerwerSMS.pl -----------------------------------------------------------------


@pytest.mark.django_db
def test_serwersms_send_ok_with_unique_id_and_utf_flag(serwersms):
    row = delivery("600-100-200")
    channel = SerwerSmsChannel(config(serwersms.url))
    plain = SerwerSmsChannel(config(serwersms.url, transliterate=True))
    try:
        result = channel.send(row)
        other = delivery("600 100 201")
        plain_result = plain.send(other)
    finally:
        channel.close()
        plain.close()
    assert result.ok and plain_result.ok
    first, second = serwersms.accepted
    assert result.provider_id == first["id"]
    assert first["phone"] == "+48600100200" and first["sender"] == "GminaGlogow"
    assert first["unique_id"] == row.idempotency_key == unique_id(row.idempotency_key)
    assert first["utf"] is True  # Polish letters
    assert second["utf"] is False and is_gsm7(second["text"])  # transliterated


def test_unique_id_is_3_to_50_alphanumerics():
    assert unique_id("a12s34s") == "a12s34s"
    for key in ("a-1", "ab", "x" * 60, "żółw"):
        made = unique_id(key)
        assert made.isalnum() and made.isascii() and 3 <= len(made) <= 50
        assert unique_id(key) == made  # the same key, the same id


@pytest.mark.django_db
def test_serwersms_errors(serwersms):
    channel = SerwerSmsChannel(config(serwersms.url))
    bad_token = SerwerSmsChannel(config(serwersms.url, token="nope"))
    try:
        serwersms.blacklist.add("+48600999888")
        unsent = channel.send(delivery("+48600999888"))
        serwersms.then(
            Step(
                "json",
                {"error": {"code": 5000, "type": "ServerError", "message": "maintenance"}},
                status=503,
            )
        )
        server_error = channel.send(delivery("+48600999777"))
        unauthorized = bad_token.send(delivery("+48600999666"))
    finally:
        channel.close()
        bad_token.close()
    assert not unsent.ok and unsent.permanent and "2105" in unsent.error
    assert not server_error.ok and not server_error.permanent and "5000" in server_error.error
    assert not unauthorized.ok and not unauthorized.permanent
    assert serwersms.accepted == []


@pytest.mark.django_db
def test_serwersms_a_retry_asks_for_the_unique_id_first(serwersms):
    serwersms.then(Step("accept_then_drop"))
    row = delivery()
    channel = SerwerSmsChannel(config(serwersms.url))
    try:
        first = channel.send(row)
        assert not first.ok and not first.permanent
        row.attempts = 2  # what claim() does for the retry
        second = channel.send(row)
    finally:
        channel.close()
    [only] = serwersms.accepted
    assert second.ok and second.provider_id == only["id"]


# --- delivery reports ---------------------------------------------------------------


def report_url(secret: str = SECRET, **query) -> str:
    return f"/alerts/sms/smsapi/{secret}/report?{urlencode(query)}"


@pytest.fixture
def callback_secret(settings):
    settings.ALERTS = {**settings.ALERTS, "SMS_CALLBACK_SECRET": SECRET}


def sent_delivery(phone: str, provider_id: str, **fields) -> Delivery:
    return delivery(phone, status="sent", provider_id=provider_id, sent_at=timezone.now(), **fields)


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_a_report_with_the_right_secret_marks_delivered(callback_secret):
    a = sent_delivery("+48600100200", "msg-a")
    b = sent_delivery("+48600100201", "msg-b")
    url = report_url(
        MsgId="msg-a,msg-b",
        status="404,405",
        idx=f"{a.idempotency_key},{b.idempotency_key}",
        donedate="1790000000,1790000001",
        to="48600100200,48600100201",
    )
    response = Client().get(url)
    assert response.status_code == 200 and response.content == b"OK"
    a.refresh_from_db()
    b.refresh_from_db()
    assert a.status == "delivered"
    assert b.status == "failed" and b.last_error == "report: 405 UNDELIVERED"


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_a_forged_report_is_refused_and_writes_nothing(callback_secret):
    row = sent_delivery("+48600100200", "msg-a")
    before = Delivery.objects.values().get(pk=row.pk)
    client = Client()
    for secret in ("wrong-secret", SECRET[:-1], SECRET + "x"):
        response = client.get(
            report_url(secret, MsgId="msg-a", status="404", idx=row.idempotency_key)
        )
        assert response.status_code == 403
    assert Delivery.objects.values().get(pk=row.pk) == before


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_no_secret_configured_refuses_every_report(settings):
    settings.ALERTS = {**settings.ALERTS, "SMS_CALLBACK_SECRET": ""}
    row = sent_delivery("+48600100200", "msg-a")
    assert Client().get(report_url("", MsgId="msg-a", status="404")).status_code in (403, 404)
    assert Client().get(report_url("anything", MsgId="msg-a", status="404")).status_code == 403
    row.refresh_from_db()
    assert row.status == "sent"


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_a_stale_or_replayed_report_changes_nothing(callback_secret):
    row = sent_delivery("+48600100200", "msg-a")
    client = Client()
    assert client.get(report_url(MsgId="msg-a", status="404")).content == b"OK"
    row.refresh_from_db()
    assert row.status == "delivered"
    stamp = row.updated_at
    for status in ("403", "409", "410", "408", "405", "404"):  # late or replayed
        assert client.get(report_url(MsgId="msg-a", status=status)).content == b"OK"
    row.refresh_from_db()
    assert row.status == "delivered" and row.updated_at == stamp and row.last_error == ""


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_unknown_and_malformed_reports(callback_secret):
    row = sent_delivery("+48600100200", "msg-a")
    client = Client()
    unknown = client.get(report_url(MsgId="nobody", status="404", idx="a0s0s"))
    assert unknown.status_code == 200 and unknown.content == b"OK"
    for query in (
        {"MsgId": "msg-a"},  # no status
        {"status": "404"},  # no id
        {"MsgId": "msg-a,msg-b", "status": "404"},  # lists of different lengths
        {"MsgId": "msg-a", "status": "999"},  # not a report code
        {"MsgId": "msg-a", "status": "abc"},
    ):
        assert client.get(report_url(**query)).status_code == 400
    assert client.post(report_url(MsgId="msg-a", status="404")).status_code == 405
    row.refresh_from_db()
    assert row.status == "sent"


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_a_report_finds_a_delivery_sent_without_id_by_its_idx(callback_secret):
    """After "idx already used" (53) the delivery has no provider id; the
    report's idx finds it and gives it one. A report whose idx belongs to a
    delivery with another provider id is ignored."""
    row = sent_delivery("+48600100200", "")
    other = sent_delivery("+48600100201", "msg-other")
    client = Client()
    assert (
        client.get(
            report_url(MsgId="msg-new", status="404", idx=row.idempotency_key, donedate="x")
        ).content
        == b"OK"
    )
    client.get(report_url(MsgId="msg-new", status="405", idx=other.idempotency_key))
    row.refresh_from_db()
    other.refresh_from_db()
    assert row.status == "delivered" and row.provider_id == "msg-new"
    assert other.status == "sent"


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_a_report_that_overtakes_the_worker_is_kept(callback_secret):
    """A retry was scheduled (the answer was lost) but the provider reports
    the message accepted: the delivery is sent and not sent again."""
    row = delivery("+48600100200", status="queued", attempts=1)
    url = report_url(MsgId="msg-x", status="409", idx=row.idempotency_key, donedate="1790000000")
    assert Client().get(url).content == b"OK"
    row.refresh_from_db()
    assert row.status == "sent" and row.provider_id == "msg-x"
    assert row.sent_at == dt.datetime.fromtimestamp(1790000000, tz=dt.UTC)
    assert outbox.claim("w", now=time.time() + 3600, batch=10, lease=30) == []


# --- the kept-open connection ---------------------------------------------------------


@pytest.mark.django_db
def test_a_connection_the_provider_closed_is_replaced_without_losing_a_message(smsapi, serwersms):
    """The provider closed the kept-open connection unannounced (its idle
    timeout): SMSAPI's request is sent again at once (idx makes it safe);
    SerwerSMS first asks for the unique_id, then sends."""
    for server, make in ((smsapi, SmsApiChannel), (serwersms, SerwerSmsChannel)):
        server.then(Step("close_after_reply"))
        alert = new_alert()
        channel = make(config(server.url))
        try:
            first = channel.send(delivery("+48600100300", alert))
            second = channel.send(delivery("+48600100301", alert))
        finally:
            channel.close()
        assert first.ok and second.ok, (first, second)
        assert len(server.accepted) == 2
        assert server.connections == 2


@pytest.mark.django_db
def test_an_idle_connection_is_reopened_before_use(smsapi):
    channel = SmsApiChannel(config(smsapi.url, idle_reconnect=30.0))
    now = [1000.0]
    channel.http.clock = lambda: now[0]
    alert = new_alert()
    try:
        assert channel.send(delivery("+48600100400", alert)).ok
        now[0] += 10
        assert channel.send(delivery("+48600100401", alert)).ok
        assert smsapi.connections == 1
        now[0] += 31
        assert channel.send(delivery("+48600100402", alert)).ok
    finally:
        channel.close()
    assert smsapi.connections == 2 and smsapi.requests == 3


# --- Per-alert transliteration, free texts, the configured channel ----------------


@pytest.mark.django_db
def test_the_alerts_own_choice_transliterates_its_sms(smsapi):
    from alerts.sms_providers import message_for

    polish = delivery("600 100 201")
    plain = delivery("600 100 202", alert=new_alert(sms_transliterate=True))
    assert not is_gsm7(message_for(polish, config(smsapi.url)))
    assert message_for(plain, config(smsapi.url)).startswith(
        "Wysoki stan wody na Mrowli\nNie zblizaj sie do walow."
    )
    # The service-wide setting transliterates every alert.
    assert is_gsm7(message_for(polish, config(smsapi.url, transliterate=True)))
    channel = SmsApiChannel(config(smsapi.url))
    try:
        assert channel.send(plain).ok
    finally:
        channel.close()
    [sent] = smsapi.accepted
    assert is_gsm7(sent["message"]) and sent["parts"] == 1


def test_send_text_goes_once_per_key_without_reports(smsapi, serwersms):
    api = SmsApiChannel(config(smsapi.url))
    try:
        first = api.send_text("600 100 200", "Kod: 123456", "code1xabc")
        again = api.send_text("+48600100200", "Kod: 123456", "code1xabc")
        bad = api.send_text("+49 151 1234567", "Kod: 123456", "code1xdef")
    finally:
        api.close()
    assert first.ok and first.provider_id and again.ok  # the same idx: sent once
    assert not bad.ok and bad.permanent
    [sent] = smsapi.accepted
    assert sent["to"] == "48600100200" and sent["idx"] == "code1xabc"
    assert "notify_url" not in sent and sent["max_parts"] == "1"

    serwer = SerwerSmsChannel(config(serwersms.url))
    try:
        result = serwer.send_text("600100200", "Kod: 123456", "code1xabc")
    finally:
        serwer.close()
    [sent] = serwersms.accepted
    assert result.ok and sent["unique_id"] == "code1xabc" and sent["utf"] is False


def test_the_configured_channel_comes_from_the_settings(settings):
    from alerts.sms_providers import configured_channel, configured_config, sms_available

    settings.ALERTS = {**settings.ALERTS, "SMS_PROVIDER": ""}
    assert configured_channel() is None and not sms_available()
    settings.PUBLIC_BASE_URL = "https://e-uslugi.example"
    settings.ALERTS = {
        **settings.ALERTS,
        "SMS_PROVIDER": "smsapi",
        "SMS_BASE_URL": "",
        "SMS_TOKEN": "t",
        "SMS_SENDER": "Gmina",
        "SMS_CALLBACK_SECRET": "s3cret",
        "SMS_TRANSLITERATE": True,
    }
    channel = configured_channel()
    assert isinstance(channel, SmsApiChannel) and sms_available()
    assert channel.config.base_url == "https://api.smsapi.pl"
    assert channel.config.notify_url == "https://e-uslugi.example/alerts/sms/smsapi/s3cret/report"
    assert channel.config.sender == "Gmina" and channel.config.transliterate
    settings.ALERTS = {**settings.ALERTS, "SMS_PROVIDER": "serwersms"}
    assert isinstance(configured_channel(), SerwerSmsChannel)
    assert configured_config().base_url == "https://api2.serwersms.pl"
    assert configured_config().notify_url == ""
