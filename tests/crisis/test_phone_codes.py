"""The phone's double opt-in: the rules of the 6-digit code (no I/O), then the
whole flow over real HTTP: the code goes out through a loopback SMS provider
(tests/crisis/sms_servers.py), is read from what the provider received and
typed back; wrong codes, expiry, the resend cooldown, the per-address limit
of the public forms (429, nothing written), a changed number, and a published
alert reaching the confirmed number (real PostgreSQL; a LocMem cache of each
test alone, never a flush of the shared Redis)."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from unittest import mock

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.utils import timezone, translation

from alerts import outbox, phone_codes, subscriptions
from alerts.forms import CONSENT_VERSION, SMS_UNAVAILABLE
from alerts.models import Subscriber
from alerts.phone_codes import CodeState, Outcome, code_hash, issue, verify
from alerts.sms import is_gsm7, sms_length
from alerts.sms_providers import configured_channel
from alerts.worker import Worker
from tests.crisis.sms_servers import FakeSerwerSms, FakeSmsApi, Step
from tests.crisis.test_outbox import new_alert
from tests.crisis.test_subscriptions import local_mail_and_cache
from tests.meet.helpers import make_user

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.crisis.subscription_urls")]

TOKEN = "phone-codes-provider-token"
CODE = re.compile(r"\b(\d{6})\b")
NOW = dt.datetime(2026, 11, 3, 12, 0, tzinfo=dt.UTC)


def pl(text) -> str:
    """A message as the Polish pages show it (the catalogue's translation,
    or the source text until the catalogue has it)."""
    with translation.override("pl"):
        return str(text)


@pytest.fixture(autouse=True)
def _settings(settings):
    local_mail_and_cache(settings, "phone-codes")


@pytest.fixture
def smsapi(settings):
    with FakeSmsApi(TOKEN) as server:
        settings.ALERTS = server.settings(settings.ALERTS)
        yield server


def form(**fields):
    data = {"email": "", "phone": "600 123 456", "areas": ["przewrotne"], "consent": "yes"}
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


def subscribe(client=None, **fields):
    return (client or Client()).post("/alerts/subscribe/", form(**fields))


def last_code(server) -> str:
    return CODE.search(server.accepted[-1]["message"]).group(1)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def cooldown_passes(subscriber) -> None:
    from django.core.cache import cache

    cache.delete(f"alerts:texted:{subscriber.pk}:{subscriber.phone}")


def make_subscriber(**fields) -> Subscriber:
    now = timezone.now()
    base = {
        "email": "anna@example.pl",
        "areas": ["przewrotne"],
        "email_confirmed_at": now,
        "consent_version": CONSENT_VERSION,
        "consent_at": now,
        "consent_source": "web-form",
    }
    return Subscriber.objects.create(**{**base, **fields})


# --- The rules ------------------------------------------------------------------


def judge(state, typed, **overrides):
    args = {"token": "tok", "phone": "+48600123456", "now": NOW, "ttl": 900, "max_attempts": 5}
    return verify(state, typed, **{**args, **overrides})


def test_a_code_is_six_digits_and_only_its_salted_hash_is_kept():
    codes = set()
    for _ in range(50):
        code, state = issue(token="tok", phone="+48600123456", now=NOW)
        assert re.fullmatch(r"\d{6}", code)
        assert code not in state.code_hash and len(state.code_hash) == 64
        assert state.sent_at == NOW and state.attempts == 0 and state.confirmed_at is None
        codes.add(code)
    assert len(codes) > 45  # from secrets, not a counter
    # Bound to the subscriber and the number: the same code hashes otherwise.
    assert code_hash("123456", token="a", phone="+48600123456") != code_hash(
        "123456", token="b", phone="+48600123456"
    )
    assert code_hash("123456", token="a", phone="+48600123456") != code_hash(
        "123456", token="a", phone="+48600123457"
    )


def test_the_right_code_in_time_confirms_and_clears_the_hash():
    code, state = issue(token="tok", phone="+48600123456", now=NOW)
    verdict = judge(state, code[:3] + " " + code[3:], now=NOW + dt.timedelta(seconds=899))
    assert verdict.outcome is Outcome.CONFIRMED
    assert verdict.state == CodeState(confirmed_at=NOW + dt.timedelta(seconds=899))


def test_wrong_codes_count_down_then_void_the_code():
    code, state = issue(token="tok", phone="+48600123456", now=NOW)
    for left in (4, 3, 2, 1):
        verdict = judge(state, wrong(code))
        assert (verdict.outcome, verdict.tries_left) == (Outcome.WRONG, left)
        state = verdict.state
    verdict = judge(state, wrong(code))
    assert verdict.outcome is Outcome.EXHAUSTED and verdict.state.code_hash == ""
    # The right code no longer helps.
    assert judge(verdict.state, code).outcome is Outcome.NO_CODE


def test_an_expired_code_is_void_and_a_malformed_one_costs_no_try():
    code, state = issue(token="tok", phone="+48600123456", now=NOW)
    late = judge(state, code, now=NOW + dt.timedelta(seconds=901))
    assert late.outcome is Outcome.EXPIRED and late.state.code_hash == ""
    for typed in ("12345", "1234567", "12a456", "١٢٣٤٥٦", "", "123456\n"):
        verdict = judge(state, typed)
        if typed == "123456\n":  # whitespace around the digits is fine
            assert verdict.outcome in (Outcome.WRONG, Outcome.CONFIRMED)
            continue
        assert verdict.outcome is Outcome.MALFORMED and verdict.state == state, typed
    # Another number (the hash is bound to it) does not take the code.
    assert judge(state, code, phone="+48600999999").outcome is Outcome.WRONG


def test_the_code_is_compared_in_constant_time():
    code, state = issue(token="tok", phone="+48600123456", now=NOW)
    with mock.patch.object(
        phone_codes.hmac, "compare_digest", wraps=phone_codes.hmac.compare_digest
    ) as compare:
        judge(state, code)
    compare.assert_called_once()


def test_the_code_text_is_one_gsm7_part_with_the_code():
    text = phone_codes.code_text("042917", minutes=15)
    assert "042917" in text and "15" in text
    assert is_gsm7(text) and sms_length(text).segments == 1


# --- The flow over HTTP ---------------------------------------------------------


def test_a_number_alone_is_confirmed_with_the_code_from_the_sms(smsapi):
    response = subscribe()
    assert response.status_code == 302
    page_url = response["Location"]
    assert page_url.startswith("/alerts/phone/")
    [sms] = smsapi.accepted
    assert sms["to"] == "48600123456"
    assert sms["idx"].startswith("code") and sms["check_idx"] == "1"
    assert "notify_url" not in sms and sms["max_parts"] == "1"
    assert is_gsm7(sms["message"]) and sms["parts"] == 1
    code = last_code(smsapi)
    subscriber = Subscriber.objects.get()
    assert code not in subscriber.phone_code_hash

    page = Client().get(page_url)
    assert page.status_code == 200 and page["Cache-Control"] == "no-store"
    text = page.content.decode()
    assert 'data-state="waiting"' in text and 'name="code"' in text
    assert 'autocomplete="one-time-code"' in text and 'data-tries-left="5"' in text

    bad = Client().post(page_url, {"action": "confirm", "code": wrong(code)})
    assert bad.status_code == 400
    text = bad.content.decode()
    assert 'data-tries-left="4"' in text and 'aria-invalid="true"' in text
    with translation.override("pl"):
        expected = translation.ngettext(
            "The code is wrong. You have %(tries)d more try.",
            "The code is wrong. You have %(tries)d more tries.",
            4,
        ) % {"tries": 4}
    assert expected in text
    subscriber.refresh_from_db()
    assert subscriber.phone_code_attempts == 1 and subscriber.phone_confirmed_at is None

    browser = Client()
    good = browser.post(page_url, {"action": "confirm", "code": code})
    assert good.status_code == 200
    text = good.content.decode()
    assert f'href="/alerts/preferences/{subscriber.token}/"' in text  # a number alone: its row
    subscriber.refresh_from_db()
    assert subscriber.phone_confirmed_at is not None
    assert subscriber.phone_code_hash == "" and subscriber.phone_code_attempts == 0
    # Used once: the same code again (a double submit) finds nothing waiting;
    # the browser that typed it is told the number is confirmed…
    again = browser.post(page_url, {"action": "confirm", "code": code})
    assert again.status_code == 200 and 'data-state="confirmed"' in again.content.decode()
    # …anyone else with the link (whoever fills in the form with the number)
    # learns nothing about whether its owner subscribed.
    stranger = Client().post(page_url, {"action": "confirm", "code": code})
    assert stranger.status_code == 400 and 'data-state="confirmed"' not in stranger.content.decode()
    looked = Client().get(page_url)
    assert 'data-state="confirmed"' not in looked.content.decode()
    assert 'data-state="no-code"' in looked.content.decode()
    assert len(smsapi.accepted) == 1


def test_with_an_address_the_code_is_asked_for_from_the_confirmation_page(smsapi):
    Client().post("/alerts/subscribe/", form(email="jan@example.pl"))
    assert smsapi.accepted == []  # the form sends the e-mail only
    [message] = mail.outbox
    link = re.search(r"/alerts/confirm/\S+", message.body).group(0)
    page = Client().get(link).content.decode()
    subscriber = Subscriber.objects.get()
    phone_link = re.search(r'href="(/alerts/phone/[^"]+)"', page).group(1)
    assert subscriber.token not in phone_link

    opened = Client().get(phone_link).content.decode()
    assert 'data-state="no-code"' in opened and 'value="send"' in opened
    sent = Client().post(phone_link, {"action": "send"})
    assert sent.status_code == 302 and sent["Location"].endswith("?sent=1")
    assert 'data-notice="sent"' in Client().get(sent["Location"]).content.decode()
    response = Client().post(phone_link, {"action": "confirm", "code": last_code(smsapi)})
    assert response.status_code == 200
    subscriber.refresh_from_db()
    assert subscriber.phone_confirmed_at and subscriber.email_confirmed_at


def test_a_code_for_a_row_with_an_unconfirmed_address_does_not_lead_to_its_settings(smsapi):
    """Whoever proves the number has not proved the address: no token."""
    subscriber = make_subscriber(email_confirmed_at=None, phone="+48600123456")
    page_url = subscriptions.phone_url(subscriber)
    Client().post(page_url, {"action": "send"})
    response = Client().post(page_url, {"action": "confirm", "code": last_code(smsapi)})
    assert response.status_code == 200
    assert subscriber.token not in response.content.decode()
    assert Subscriber.objects.get().phone_confirmed_at is not None


def test_after_the_last_wrong_try_the_code_is_void_until_a_new_one_is_sent(smsapi, settings):
    settings.ALERTS = {**settings.ALERTS, "PHONE_CODE_MAX_ATTEMPTS": 3}
    page_url = subscribe()["Location"]
    code = last_code(smsapi)
    for _ in range(3):
        response = Client().post(page_url, {"action": "confirm", "code": wrong(code)})
        assert response.status_code == 400
    assert pl(subscriptions.CODE_PROBLEMS[Outcome.EXHAUSTED]) in response.content.decode()
    subscriber = Subscriber.objects.get()
    assert subscriber.phone_code_hash == "" and subscriber.phone_code_attempts == 3
    late = Client().post(page_url, {"action": "confirm", "code": code})
    assert late.status_code == 400
    assert pl(subscriptions.CODE_PROBLEMS[Outcome.NO_CODE]) in late.content.decode()
    assert Subscriber.objects.get().phone_confirmed_at is None

    cooldown_passes(subscriber)
    assert Client().post(page_url, {"action": "send"}).status_code == 302
    fresh = last_code(smsapi)
    assert Client().post(page_url, {"action": "confirm", "code": fresh}).status_code == 200
    assert Subscriber.objects.get().phone_confirmed_at is not None


def test_an_expired_code_is_refused(smsapi, settings):
    page_url = subscribe()["Location"]
    code = last_code(smsapi)
    ttl = settings.ALERTS["PHONE_CODE_TTL_SECONDS"]
    Subscriber.objects.update(phone_code_sent_at=timezone.now() - dt.timedelta(seconds=ttl + 1))
    page = Client().get(page_url).content.decode()
    assert 'data-state="no-code"' in page  # the page no longer offers it
    response = Client().post(page_url, {"action": "confirm", "code": code})
    assert response.status_code == 400
    assert pl(subscriptions.CODE_PROBLEMS[Outcome.EXPIRED]) in response.content.decode()
    subscriber = Subscriber.objects.get()
    assert subscriber.phone_confirmed_at is None and subscriber.phone_code_hash == ""


def test_a_new_code_waits_for_the_cooldown_then_replaces_the_old_one(smsapi):
    page_url = subscribe()["Location"]
    first = last_code(smsapi)
    # At once: refused, nothing sent, the page says how long to wait.
    response = Client().post(page_url, {"action": "send"})
    assert response.status_code == 429
    assert re.search(r'data-wait="([1-9]\d*)"', response.content.decode())
    assert len(smsapi.accepted) == 1
    # The form again for the same number, within the cooldown: no second SMS either.
    assert subscribe()["Location"].startswith("/alerts/phone/")
    assert len(smsapi.accepted) == 1

    cooldown_passes(Subscriber.objects.get())
    assert Client().post(page_url, {"action": "send"}).status_code == 302
    assert len(smsapi.accepted) == 2
    second = last_code(smsapi)
    assert smsapi.accepted[0]["idx"] != smsapi.accepted[1]["idx"]  # a new message
    if second != first:  # one chance in a million that they are the same
        refused = Client().post(page_url, {"action": "confirm", "code": first})
        assert refused.status_code == 400
    assert Client().post(page_url, {"action": "confirm", "code": second}).status_code == 200


def test_one_subscriber_gets_at_most_a_few_codes_an_hour(smsapi):
    page_url = subscribe()["Location"]
    subscriber = Subscriber.objects.get()
    for _ in range(subscriptions.CODES_PER_HOUR + 2):
        cooldown_passes(subscriber)
        Client(REMOTE_ADDR=f"10.0.{_}.1").post(page_url, {"action": "send"})
    assert len(smsapi.accepted) == subscriptions.CODES_PER_HOUR


def test_a_provider_failure_says_so_and_a_retry_sends_at_once(smsapi):
    smsapi.then(Step("json", {"error": 201, "message": "System internal error"}))
    response = subscribe()
    assert response.status_code == 503
    assert smsapi.accepted == []
    retry = subscribe()
    assert retry.status_code == 302 and len(smsapi.accepted) == 1


def test_the_code_goes_out_through_serwersms_too(settings):
    with FakeSerwerSms(TOKEN) as serwersms:
        settings.ALERTS = serwersms.settings(settings.ALERTS)
        page_url = subscribe()["Location"]
        [sms] = serwersms.accepted
        assert sms["phone"] == "+48600123456" and sms["utf"] is False
        assert re.fullmatch(r"[A-Za-z0-9]{3,50}", sms["unique_id"])
        code = CODE.search(sms["text"]).group(1)
    assert Client().post(page_url, {"action": "confirm", "code": code}).status_code == 200
    assert Subscriber.objects.get().phone_confirmed_at is not None


@pytest.mark.parametrize(
    "link",
    ["nonsense", "/alerts/phone/forged:AAAA/"],
)
def test_a_forged_phone_link_is_refused(smsapi, link):
    subscribe()
    path = link if link.startswith("/") else f"/alerts/phone/{link}/"
    response = Client().post(path, {"action": "send"})
    assert response.status_code == 400
    assert len(smsapi.accepted) == 1


# --- A changed number -----------------------------------------------------------


def test_a_new_number_in_the_settings_is_confirmed_anew_and_the_old_link_dies(smsapi):
    subscriber = make_subscriber(phone="+48600123456", phone_confirmed_at=timezone.now())
    old_link = subscriptions.phone_url(subscriber)
    url = f"/alerts/preferences/{subscriber.token}/"
    settings_page = Client().get(url).content.decode()
    assert 'value="phone"' in settings_page

    response = Client().post(url, {"action": "phone", "phone": "601 000 111"})
    assert response.status_code == 302 and response["Location"].startswith("/alerts/phone/")
    subscriber.refresh_from_db()
    assert subscriber.phone == "+48601000111" and subscriber.phone_confirmed_at is None
    assert smsapi.accepted[-1]["to"] == "48601000111"
    assert Client().get(old_link).status_code == 400  # bound to the old number
    assert 'data-link="confirm-phone"' in Client().get(url).content.decode()

    confirmed = Client().post(
        response["Location"], {"action": "confirm", "code": last_code(smsapi)}
    )
    assert confirmed.status_code == 200
    subscriber.refresh_from_db()
    assert subscriber.phone_confirmed_at is not None


def test_the_settings_refuse_a_bad_number_or_a_line_break(smsapi):
    subscriber = make_subscriber(phone="+48600123456", phone_confirmed_at=timezone.now())
    url = f"/alerts/preferences/{subscriber.token}/"
    for bad in ("12345", "600123456\r\nBcc: x@example.com", "+49 151 12345678"):
        response = Client().post(url, {"action": "phone", "phone": bad})
        assert response.status_code == 400
        assert 'id="phone-error"' in response.content.decode()
    subscriber.refresh_from_db()
    assert subscriber.phone == "+48600123456" and subscriber.phone_confirmed_at
    assert smsapi.accepted == []


def test_the_form_for_an_unconfirmed_row_with_another_number_voids_its_code(smsapi):
    page_url = subscribe(email="jan@example.pl")["Location"]
    assert page_url == "/alerts/subscribe/?sent=email"
    subscriber = Subscriber.objects.get()
    Client().post(subscriptions.phone_url(subscriber), {"action": "send"})
    assert Subscriber.objects.get().phone_code_hash
    subscribe(email="jan@example.pl", phone="601 000 111")
    subscriber = Subscriber.objects.get()
    assert subscriber.phone == "+48601000111"
    assert subscriber.phone_code_hash == "" and subscriber.phone_confirmed_at is None


def test_without_a_provider_the_settings_offer_no_number(settings):
    settings.ALERTS = {**settings.ALERTS, "SMS_PROVIDER": ""}
    subscriber = make_subscriber()
    url = f"/alerts/preferences/{subscriber.token}/"
    page = Client().get(url).content.decode()
    assert 'name="phone"' not in page and 'data-sms="unavailable"' in page
    response = Client().post(url, {"action": "phone", "phone": "600123456"})
    assert response.status_code == 400
    assert pl(SMS_UNAVAILABLE) in response.content.decode()
    assert Subscriber.objects.get().phone == ""


# --- The per-address limit --------------------------------------------------------


def test_the_public_form_takes_a_few_per_address_an_hour_then_429_and_nothing(smsapi, settings):
    settings.ALERTS = {**settings.ALERTS, "SUBSCRIBE_PER_IP_PER_HOUR": 3}
    client = Client(REMOTE_ADDR="203.0.113.7")
    for i in range(3):
        response = subscribe(client, email=f"osoba{i}@example.pl", phone=None)
        assert response.status_code == 302
    rows, mails, texts = Subscriber.objects.count(), len(mail.outbox), len(smsapi.accepted)

    refused = subscribe(client, email="osoba9@example.pl", phone=None)
    assert refused.status_code == 429
    assert refused["Retry-After"] == "3600"
    assert "<title>" in refused.content.decode()
    refused = subscribe(client, phone="601 000 222")
    assert refused.status_code == 429
    assert (Subscriber.objects.count(), len(mail.outbox), len(smsapi.accepted)) == (
        rows,
        mails,
        texts,
    )
    # Another address is not held back.
    other = Client(REMOTE_ADDR="198.51.100.4")
    assert subscribe(other, email="inna@example.pl", phone=None).status_code == 302


def test_an_ipv6_network_counts_as_one_address_and_the_resend_counts_too(smsapi, settings):
    settings.ALERTS = {**settings.ALERTS, "SUBSCRIBE_PER_IP_PER_HOUR": 2}
    page_url = subscribe(Client(REMOTE_ADDR="2001:db8:1:2::10"))["Location"]
    subscriber = Subscriber.objects.get()
    cooldown_passes(subscriber)
    second = Client(REMOTE_ADDR="2001:db8:1:2::99").post(page_url, {"action": "send"})
    assert second.status_code == 302
    cooldown_passes(subscriber)
    before = Subscriber.objects.values().get()
    third = Client(REMOTE_ADDR="2001:db8:1:2:ffff::1").post(page_url, {"action": "send"})
    assert third.status_code == 429
    assert len(smsapi.accepted) == 2
    assert Subscriber.objects.values().get() == before


# --- Races ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_tries_sent_at_once_are_each_counted(smsapi):
    subscribe()
    subscriber = Subscriber.objects.get()
    code = last_code(smsapi)
    barrier = threading.Barrier(4)
    verdicts = []

    def guess():
        try:
            barrier.wait()
            verdicts.append(
                phone_codes.confirm(
                    subscriber.pk, subscriber.phone, wrong(code), now=timezone.now()
                )
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=guess) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Subscriber.objects.get().phone_code_attempts == 4
    assert sorted(v.tries_left for v in verdicts) == [1, 2, 3, 4]


# --- And then the warnings reach the number --------------------------------------------


@pytest.mark.parametrize("transliterate", [False, True])
def test_a_published_alert_reaches_the_confirmed_number(smsapi, transliterate):
    page_url = subscribe()["Location"]
    Client().post(page_url, {"action": "confirm", "code": last_code(smsapi)})
    unconfirmed = make_subscriber(email="", email_confirmed_at=None, phone="+48600555666")
    author = make_user(f"op{time.monotonic_ns()}", "operator")
    alert = new_alert(author, sms_transliterate=transliterate)
    assert outbox.publish(alert.pk, author, now=time.time()) == 1
    channel = configured_channel()
    worker = Worker(name="w-phone", channels={"sms": channel})
    try:
        worker.run_once()
    finally:
        channel.close()
    sent = smsapi.accepted[-1]
    assert sent["to"] == "48600123456" and sent["idx"] != smsapi.accepted[0]["idx"]
    assert "48600555666" not in [m["to"] for m in smsapi.accepted]
    assert unconfirmed.phone_confirmed_at is None
    if transliterate:
        assert sent["message"].startswith("Wysoki stan wody\nNie zblizaj sie do walow.")
        assert is_gsm7(sent["message"])
    else:
        assert sent["message"].startswith("Wysoki stan wody\nNie zbliżaj się do wałów.")


def test_one_subscriber_gets_at_most_ten_codes_a_day(smsapi):
    """Hours apart, still no more than CODES_PER_DAY: at 5 tries a code, at
    most 50 guesses a day at someone else's code."""
    from django.core.cache import cache

    page_url = subscribe()["Location"]
    subscriber = Subscriber.objects.get()
    for hour in range(4):
        cache.delete(f"alerts:codes:{subscriber.pk}")  # a new hour
        for attempt in range(subscriptions.CODES_PER_HOUR):
            cooldown_passes(subscriber)
            Client(REMOTE_ADDR=f"10.1.{hour}.{attempt}").post(page_url, {"action": "send"})
    assert len(smsapi.accepted) == subscriptions.CODES_PER_DAY
