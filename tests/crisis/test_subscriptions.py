"""Subscribing to crisis alerts without an account: the form (double opt-in by
e-mail, duplicates merged, bad input refused), the confirmation link, the
preferences page behind the token (change, export, delete) and unsubscribing
(a page for GET, RFC 8058 one-click POST without CSRF, the SMS short link)."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from unittest import mock

import pytest
from django.core import mail, signing
from django.test import Client
from django.utils import timezone

from alerts import subscriptions
from alerts.areas import AREA_CODES, AREAS, CATEGORY_LABELS, normalize_areas
from alerts.forms import CONSENT_VERSION
from alerts.models import Alert, Delivery, Subscriber
from alerts.rules import WHOLE_GMINA, Category
from tests.crisis.sms_servers import FakeSmsApi
from tests.meet.helpers import make_user

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.crisis.subscription_urls")]

LINK = re.compile(r"https?://\S+/alerts/confirm/(\S+)")


@pytest.fixture(autouse=True)
def smsapi(settings):
    """A loopback SMSAPI.pl as the configured provider (phone codes go there)."""
    with FakeSmsApi("subscriptions-token") as server:
        settings.ALERTS = server.settings(settings.ALERTS)
        yield server


def local_mail_and_cache(settings, name: str) -> None:
    """E-mails kept in memory, links to https://egmina.example, and a cache
    of this test alone (the cooldowns and limits live there; never a flush of
    the shared Redis)."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.PUBLIC_BASE_URL = "https://egmina.example"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"{name}-{time.monotonic_ns()}",
        }
    }


@pytest.fixture(autouse=True)
def _mail(settings):
    local_mail_and_cache(settings, "subscriptions")


def cooldown_passes() -> None:
    from django.core.cache import cache

    cache.clear()  # a LocMem cache of this test alone


def form(**fields):
    data = {"email": "jan.kowalski@example.pl", "areas": ["przewrotne"], "consent": "yes"}
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


def subscribe(client=None, **fields):
    return (client or Client()).post("/alerts/subscribe/", form(**fields))


def confirm_link(message) -> str:
    return "/alerts/confirm/" + LINK.search(message.body).group(1)


def make_subscriber(**fields) -> Subscriber:
    now = timezone.now()
    base = {
        "email": "anna@example.pl",
        "areas": ["lipie"],
        "email_confirmed_at": now,
        "consent_version": CONSENT_VERSION,
        "consent_at": now,
        "consent_source": "web-form",
    }
    return Subscriber.objects.create(**{**base, **fields})


# --- Areas and categories -----------------------------------------------------


def test_the_areas_are_the_town_and_nine_solectwa_after_2020():
    codes = [code for code, _ in AREAS]
    assert codes[:2] == [WHOLE_GMINA, "glogow"]
    assert len(codes) == 11 and len(set(codes)) == 11
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", code) for code in codes)
    assert "budy-glogowskie" in codes and "wysoka-glogowska" in codes
    # Merged into the town on 1 January 2020.
    assert not {"rogoznica", "wola-cicha", "zabajka"} & AREA_CODES
    assert normalize_areas(["lipie", WHOLE_GMINA, "x"]) == [WHOLE_GMINA]
    assert normalize_areas(["stykow", "lipie", "lipie", "nowhere"]) == ["lipie", "stykow"]


def test_every_cap_category_has_a_polish_label():
    from django.utils import translation

    assert set(CATEGORY_LABELS) == {c.value for c in Category}
    with translation.override("pl"):
        assert str(CATEGORY_LABELS["Met"]) == "Pogoda i powodzie"
        assert str(dict(AREAS)[WHOLE_GMINA]) == "Cała gmina"


# --- The form -----------------------------------------------------------------


def test_the_form_is_polish_with_every_area_category_and_the_consent():
    response = Client().get("/alerts/subscribe/")
    assert response.status_code == 200
    page = response.content.decode()
    assert '<html lang="pl">' in page
    assert "Cała gmina" in page and "Budy Głogowskie" in page and "Rudna Mała" in page
    assert "Drogi i komunikacja" in page
    assert "Burmistrza Głogowa Małopolskiego" in page
    for code in AREA_CODES:
        assert f'value="{code}"' in page
    assert 'name="consent"' in page


def test_subscribing_creates_an_unconfirmed_subscriber_and_sends_the_link(smsapi):
    response = subscribe(phone="600 123 456", categories=["Met", "Transport"])
    assert response.status_code == 302
    assert response["Location"] == "/alerts/subscribe/?sent=email"
    page = Client().get(response["Location"]).content.decode()
    assert "Proszę sprawdzić skrzynkę e-mail" in page

    subscriber = Subscriber.objects.get()
    assert subscriber.email == "jan.kowalski@example.pl"
    assert subscriber.phone == "+48600123456"
    assert subscriber.areas == ["przewrotne"]
    assert subscriber.categories == ["Met", "Transport"]
    assert subscriber.email_confirmed_at is None and subscriber.phone_confirmed_at is None
    assert subscriber.consent_version == CONSENT_VERSION == "2026-11-v2"
    assert subscriber.consent_source == "web-form"
    assert abs((timezone.now() - subscriber.consent_at).total_seconds()) < 60
    assert len(subscriber.token) >= 32

    [message] = mail.outbox
    assert message.to == ["jan.kowalski@example.pl"]
    assert "potwierdzenie" in message.subject.lower()
    assert "Dzień dobry" in message.body and "3 dni" in message.body
    assert LINK.search(message.body).group(0).startswith("https://egmina.example/alerts/confirm/")
    # The number's code is asked for from the confirmation page, not sent by the
    # form: the form's answer is the same for a known address and a new one.
    assert smsapi.accepted == []


def test_the_whole_gmina_replaces_the_other_areas_and_all_categories_mean_none():
    subscribe(areas=["lipie", WHOLE_GMINA], categories=list(CATEGORY_LABELS))
    subscriber = Subscriber.objects.get()
    assert subscriber.areas == [WHOLE_GMINA]
    assert subscriber.categories == []


def test_a_phone_alone_is_kept_unconfirmed_gets_a_code_and_no_email(smsapi):
    response = subscribe(email="", phone="+48 600-123-456")
    assert response.status_code == 302
    assert response["Location"].startswith("/alerts/phone/")
    subscriber = Subscriber.objects.get()
    assert (subscriber.email, subscriber.phone) == ("", "+48600123456")
    assert subscriber.phone_confirmed_at is None and subscriber.phone_code_hash
    assert mail.outbox == []
    [sms] = smsapi.accepted
    assert sms["to"] == "48600123456" and re.search(r"\b\d{6}\b", sms["message"])
    assert subscriber.token not in response["Location"]  # no lasting access from a form


def test_without_an_sms_provider_the_form_offers_no_phone_and_refuses_one(settings):
    from django.utils import translation

    from alerts.forms import SMS_UNAVAILABLE

    settings.ALERTS = {**settings.ALERTS, "SMS_PROVIDER": ""}
    page = Client().get("/alerts/subscribe/").content.decode()
    assert 'name="phone"' not in page
    response = subscribe(phone="600 123 456")
    assert response.status_code == 400
    with translation.override("pl"):
        assert str(SMS_UNAVAILABLE) in response.content.decode()
    assert Subscriber.objects.count() == 0 and mail.outbox == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"phone": "12345"}, "Polski numer telefonu ma 9 cyfr"),
        ({"phone": "+49 151 12345678"}, "tylko na polskie numery"),
        ({"phone": "600 abc 456"}, "może zawierać tylko cyfry"),
        ({"phone": "060 123 456"}, "To nie jest poprawny polski numer"),
        ({"email": "", "phone": ""}, "Proszę podać adres e-mail, numer telefonu lub oba"),
        ({"email": "nie-adres"}, "Proszę podać poprawny adres e-mail"),
        ({"areas": None}, "Proszę wybrać co najmniej jeden obszar"),
        ({"areas": ["atlantyda"]}, "Proszę wybrać obszary z listy"),
        ({"categories": ["Weather"]}, "Proszę wybrać kategorie z listy"),
        ({"consent": None}, "Do wysyłania ostrzeżeń potrzebna jest zgoda"),
    ],
)
def test_bad_input_is_refused_with_a_polish_reason_and_nothing_is_written(fields, message):
    response = subscribe(**fields)
    assert response.status_code == 400
    page = response.content.decode()
    assert message in page, page
    assert "<title>Błąd:" in page
    assert 'role="alert"' in page and 'aria-invalid="true"' in page
    assert Subscriber.objects.count() == 0
    assert mail.outbox == []


def test_the_form_keeps_what_was_entered_after_an_error():
    page = subscribe(phone="12", areas=["lipie", "stykow"], categories=["Env"]).content.decode()
    assert 'value="jan.kowalski@example.pl"' in page and 'value="12"' in page
    assert re.search(r'value="lipie" checked', page) and re.search(r'value="Env" checked', page)
    assert not re.search(r'value="hucisko" checked', page)


@pytest.mark.parametrize("field", ["email", "phone"])
@pytest.mark.parametrize("eol", ["\r\n", "\n", "\r"])
def test_line_breaks_are_refused_header_injection(field, eol):
    value = {
        "email": f"jan@example.pl{eol}Bcc: ofiara@example.com",
        "phone": f"600123456{eol}",
    }[field]
    response = subscribe(**{field: value})
    assert response.status_code == 400
    assert "Proszę wpisać w jednym wierszu" in response.content.decode()
    assert Subscriber.objects.count() == 0 and mail.outbox == []


def test_a_trailing_line_break_alone_is_refused_too():
    response = subscribe(email="jan@example.pl\r\n")
    assert response.status_code == 400
    assert Subscriber.objects.count() == 0


def test_the_form_needs_csrf():
    strict = Client(enforce_csrf_checks=True)
    assert strict.post("/alerts/subscribe/", form()).status_code == 403
    assert Subscriber.objects.count() == 0


# --- Duplicates -----------------------------------------------------------------


def test_a_second_form_for_an_unconfirmed_address_updates_it_and_resends_the_link():
    first = subscribe(areas=["lipie"])
    cooldown_passes()
    second = subscribe(email="Jan.Kowalski@EXAMPLE.pl", areas=["stykow"], categories=["Env"])
    assert first["Location"] == second["Location"]  # the same answer: nothing revealed
    subscriber = Subscriber.objects.get()
    assert subscriber.areas == ["stykow"] and subscriber.categories == ["Env"]
    assert len(mail.outbox) == 2
    # Both links work (each confirms the one row).
    response = Client().get(confirm_link(mail.outbox[1]))
    assert response.status_code == 200
    assert Client().get(confirm_link(mail.outbox[0])).status_code == 200
    assert Subscriber.objects.count() == 1


def test_a_form_for_a_confirmed_address_changes_nothing_and_mails_the_settings_link():
    existing = make_subscriber(email="anna@example.pl", areas=["lipie"], categories=["Met"])
    before = Subscriber.objects.filter(pk=existing.pk).values().get()
    response = subscribe(email="ANNA@example.pl", areas=[WHOLE_GMINA], phone="600123456")
    assert response.status_code == 302
    assert response["Location"] == "/alerts/subscribe/?sent=email"  # as for a new address
    assert Subscriber.objects.count() == 1
    assert Subscriber.objects.filter(pk=existing.pk).values().get() == before
    [message] = mail.outbox
    assert message.to == ["anna@example.pl"]
    assert f"https://egmina.example/alerts/preferences/{existing.token}/" in message.body
    assert "/alerts/confirm/" not in message.body


def test_a_second_phone_only_form_merges_by_number():
    subscribe(email="", phone="600123456", areas=["lipie"])
    subscribe(email="", phone="+48 600 123 456", areas=["hucisko"])
    subscriber = Subscriber.objects.get()
    assert subscriber.areas == ["hucisko"]


def test_an_smtp_failure_says_so_and_a_retry_sends_the_link():
    import smtplib

    with mock.patch.object(
        subscriptions, "send_mail", side_effect=smtplib.SMTPServerDisconnected("down")
    ):
        response = subscribe()
    assert response.status_code == 503
    assert "Nie udało się teraz wysłać" in response.content.decode()
    assert subscribe().status_code == 302
    assert Subscriber.objects.count() == 1 and len(mail.outbox) == 1


# --- Confirmation -------------------------------------------------------------------


def test_the_link_confirms_the_address_and_leads_to_the_settings():
    subscribe()
    subscriber = Subscriber.objects.get()
    response = Client().get(confirm_link(mail.outbox[0]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Subskrypcja potwierdzona" in page
    assert f'href="/alerts/preferences/{subscriber.token}/"' in page
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cache-Control"] == "no-store"
    subscriber.refresh_from_db()
    first = subscriber.email_confirmed_at
    assert first is not None
    # Opening it again keeps the first time.
    assert Client().get(confirm_link(mail.outbox[0])).status_code == 200
    subscriber.refresh_from_db()
    assert subscriber.email_confirmed_at == first


def test_an_expired_link_is_refused_and_changes_nothing():
    subscribe()
    subscriber = Subscriber.objects.get()
    earlier = timezone.now() - dt.timedelta(days=3, minutes=1)
    with mock.patch("time.time", return_value=earlier.timestamp()):
        signed = subscriptions.confirmation_token(subscriber)
    response = Client().get(f"/alerts/confirm/{signed}")
    assert response.status_code == 400
    assert "wygasł" in response.content.decode()
    assert Subscriber.objects.get().email_confirmed_at is None


@pytest.mark.parametrize(
    "signed",
    [
        "nonsense",
        signing.dumps({"id": 1, "email": "jan.kowalski@example.pl"}, salt="other-salt"),
        "forged:" + "A" * 40,
    ],
)
def test_a_forged_link_is_refused_and_changes_nothing(signed):
    subscribe()
    response = Client().get(f"/alerts/confirm/{signed}")
    assert response.status_code == 400
    assert "Link nie działa" in response.content.decode()
    assert Subscriber.objects.get().email_confirmed_at is None


def test_a_link_for_another_address_or_a_deleted_row_is_refused():
    subscribe()
    subscriber = Subscriber.objects.get()
    other = signing.dumps(
        {"id": subscriber.pk, "email": "someone@else.pl"}, salt=subscriptions.CONFIRM_SALT
    )
    assert Client().get(f"/alerts/confirm/{other}").status_code == 400
    link = confirm_link(mail.outbox[0])
    Subscriber.objects.all().delete()
    assert Client().get(link).status_code == 400


def test_a_link_stops_working_once_the_address_is_unsubscribed():
    subscribe()
    subscriber = Subscriber.objects.get()
    Client().post(f"/alerts/unsubscribe/{subscriber.token}")
    assert Client().get(confirm_link(mail.outbox[0])).status_code == 400
    subscriber.refresh_from_db()
    assert subscriber.email == "" and subscriber.email_confirmed_at is None


# --- Preferences --------------------------------------------------------------------


def test_the_settings_page_shows_the_subscription():
    subscriber = make_subscriber(phone="+48600123456", categories=["Met"])
    response = Client().get(f"/alerts/preferences/{subscriber.token}/")
    assert response.status_code == 200
    assert response["Referrer-Policy"] == "same-origin"
    page = response.content.decode()
    assert "Ustawienia subskrypcji" in page
    assert "anna@example.pl" in page and "+48600123456" in page
    assert re.search(r'value="lipie" checked', page) and re.search(r'value="Met" checked', page)
    assert f"/alerts/unsubscribe/{subscriber.token}" in page


def test_the_settings_change_areas_and_categories():
    subscriber = make_subscriber()
    response = Client().post(
        f"/alerts/preferences/{subscriber.token}/",
        {"action": "save", "areas": ["glogow", "stykow"], "categories": ["Transport"]},
    )
    assert response.status_code == 200
    assert "Ustawienia zostały zapisane" in response.content.decode()
    subscriber.refresh_from_db()
    assert subscriber.areas == ["glogow", "stykow"] and subscriber.categories == ["Transport"]


def test_the_settings_need_an_area_and_csrf():
    subscriber = make_subscriber()
    url = f"/alerts/preferences/{subscriber.token}/"
    response = Client().post(url, {"action": "save", "categories": ["Met"]})
    assert response.status_code == 400
    assert "Proszę wybrać co najmniej jeden obszar" in response.content.decode()
    strict = Client(enforce_csrf_checks=True)
    assert strict.post(url, {"action": "save", "areas": ["glogow"]}).status_code == 403
    assert strict.post(url, {"action": "delete", "confirm_delete": "yes"}).status_code == 403
    subscriber.refresh_from_db()
    assert subscriber.areas == ["lipie"] and subscriber.categories == []


def _delivery(subscriber) -> Delivery:
    alert = Alert.objects.create(
        identifier="alert-sub-1",
        author=make_user("operator-1"),
        category="Met",
        event="Powódź",
        urgency="Immediate",
        severity="Minor",
        certainty="Observed",
        headline="Wysoki stan wody",
        description="Przekroczony stan alarmowy.",
        instruction="Nie zbliżaj się do wałów.",
        areas=["lipie"],
        effective=timezone.now(),
        expires=timezone.now() + dt.timedelta(hours=6),
        state="published",
    )
    return Delivery.objects.create(
        alert=alert,
        subscriber=subscriber,
        channel="email",
        status="sent",
        next_attempt_at=timezone.now(),
        sent_at=timezone.now(),
        idempotency_key="key-sub-1",
    )


def test_the_export_is_a_json_download_of_everything_kept():
    subscriber = make_subscriber(phone="+48600123456", categories=["Met"])
    _delivery(subscriber)
    response = Client().get(f"/alerts/preferences/{subscriber.token}/?export=json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["Cache-Control"] == "no-store"
    data = json.loads(response.content.decode("utf-8"))
    assert data["subscription"]["email"] == "anna@example.pl"
    assert data["subscription"]["phone"] == "+48600123456"
    assert data["subscription"]["areas"] == ["lipie"]
    assert data["subscription"]["categories"] == ["Met"]
    assert data["subscription"]["email_confirmed_at"]
    assert data["consent"] == {
        "version": CONSENT_VERSION,
        "given_at": subscriber.consent_at.isoformat(),
        "source": "web-form",
    }
    [sent] = data["messages"]
    assert sent["alert"] == "alert-sub-1" and sent["headline"] == "Wysoki stan wody"
    assert sent["channel"] == "email" and sent["status"] == "sent"
    assert subscriber.token not in response.content.decode()


def test_deleting_needs_the_box_ticked_then_removes_the_row_and_its_deliveries():
    subscriber = make_subscriber()
    delivery = _delivery(subscriber)
    url = f"/alerts/preferences/{subscriber.token}/"
    refused = Client().post(url, {"action": "delete"})
    assert refused.status_code == 400
    assert "Proszę zaznaczyć pole" in refused.content.decode()
    assert Subscriber.objects.filter(pk=subscriber.pk).exists()

    response = Client().post(url, {"action": "delete", "confirm_delete": "yes"})
    assert response.status_code == 200
    assert "Dane zostały usunięte" in response.content.decode()
    assert not Subscriber.objects.filter(pk=subscriber.pk).exists()
    assert not Delivery.objects.filter(pk=delivery.pk).exists()
    assert Alert.objects.filter(identifier="alert-sub-1").exists()
    assert Client().get(url).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/alerts/preferences/{}/",
        "/alerts/preferences/{}/?export=json",
        "/alerts/unsubscribe/{}",
        "/a/u/{}",
    ],
)
def test_an_unknown_token_is_404(path):
    make_subscriber()
    assert Client().get(path.format("x" * 32)).status_code == 404
    assert Client().post(path.format("x" * 32), {"action": "save"}).status_code in (404, 405)


# --- Unsubscribe ------------------------------------------------------------------------


def test_get_on_the_unsubscribe_link_only_shows_a_button():
    subscriber = make_subscriber()
    before = Subscriber.objects.filter(pk=subscriber.pk).values().get()
    response = Client().get(f"/alerts/unsubscribe/{subscriber.token}")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Wypisz się z ostrzeżeń" in page or "Rezygnacja z ostrzeżeń" in page
    assert 'method="post"' in page and "anna@example.pl" in page
    assert Subscriber.objects.filter(pk=subscriber.pk).values().get() == before


def test_the_button_stops_email():
    subscriber = make_subscriber(phone="+48600123456", phone_confirmed_at=timezone.now())
    response = Client(enforce_csrf_checks=True).post(
        f"/alerts/unsubscribe/{subscriber.token}", {"channel": "email"}
    )
    assert response.status_code == 200
    assert "nie będą już wysyłane" in response.content.decode()
    subscriber.refresh_from_db()
    assert subscriber.email == "" and subscriber.email_confirmed_at is None
    assert subscriber.phone == "+48600123456" and subscriber.phone_confirmed_at  # SMS go on


def test_rfc_8058_one_click_post_works_without_csrf():
    subscriber = make_subscriber()
    response = Client(enforce_csrf_checks=True).post(
        f"/alerts/unsubscribe/{subscriber.token}",
        "List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    subscriber.refresh_from_db()
    assert subscriber.email == "" and subscriber.email_confirmed_at is None
    # Again (a mail provider retrying): still 200.
    again = Client(enforce_csrf_checks=True).post(
        f"/alerts/unsubscribe/{subscriber.token}",
        "List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert again.status_code == 200


def test_the_one_click_acts_only_on_the_token_in_the_url():
    mine, other = make_subscriber(), make_subscriber(email="other@example.pl")
    Client().post(
        f"/alerts/unsubscribe/{mine.token}",
        f"List-Unsubscribe=One-Click&token={other.token}",
        content_type="application/x-www-form-urlencoded",
    )
    other.refresh_from_db()
    assert other.email == "other@example.pl" and other.email_confirmed_at


def test_the_sms_short_link_leads_to_the_sms_unsubscribe_page_and_stops_sms():
    subscriber = make_subscriber(phone="+48600123456", phone_confirmed_at=timezone.now())
    response = Client().get(f"/a/u/{subscriber.token}")
    assert response.status_code == 302
    assert response["Location"] == f"/alerts/unsubscribe/{subscriber.token}?channel=sms"
    page = Client().get(response["Location"]).content.decode()
    assert "+48600123456" in page and 'name="channel" value="sms"' in page
    subscriber.refresh_from_db()
    assert subscriber.phone_confirmed_at is not None  # GET changed nothing
    Client().post(f"/alerts/unsubscribe/{subscriber.token}", {"channel": "sms"})
    subscriber.refresh_from_db()
    assert subscriber.phone == "" and subscriber.phone_confirmed_at is None
    assert subscriber.email == "anna@example.pl" and subscriber.email_confirmed_at


def test_the_email_unsubscribe_url_of_the_channel_is_the_one_served():
    """alerts.channels builds ``{PUBLIC_BASE_URL}/alerts/unsubscribe/<token>``."""
    from django.urls import reverse

    assert reverse("alerts-unsubscribe", args=["abc"]) == "/alerts/unsubscribe/abc"
    assert reverse("alerts-sms-unsubscribe", args=["abc"]) == "/a/u/abc"


@pytest.mark.django_db
def test_the_form_cannot_flood_an_inbox(settings):
    """Sent again and again for one address, the form mails it once per
    cooldown (shared by all processes through the cache)."""
    from django.core import mail
    from django.test import Client

    form = {
        "email": "powodz@example.test",
        "areas": ["przewrotne"],
        "consent": "on",
    }
    client = Client()
    for _ in range(5):
        assert client.post("/alerts/subscribe/", form).status_code in (302, 303)
    assert len(mail.outbox) == 1


# --- Browser notifications on the settings, export and unsubscribe pages ------------

ENDPOINT = "https://fcm.googleapis.com/fcm/send/abc123"
PUSH = {
    "push_endpoint": ENDPOINT,
    "push_p256dh": "B" * 87,
    "push_auth": "A" * 22,
}


def push_only(**fields) -> Subscriber:
    return make_subscriber(
        email="",
        email_confirmed_at=None,
        push_confirmed_at=timezone.now(),
        consent_source="web-push",
        **{**PUSH, **fields},
    )


def test_the_settings_page_shows_browser_notifications_and_turns_them_off():
    subscriber = make_subscriber(push_confirmed_at=timezone.now(), **PUSH)
    url = f"/alerts/preferences/{subscriber.token}/"
    page = Client().get(url).content.decode()
    [item] = re.findall(r'<li data-channel="push">(.*?)</li>', page, re.S)
    assert "fcm.googleapis.com" in item and "abc123" not in item
    assert 'name="action" value="push_off"' in page
    # It needs the CSRF token like every form of the page.
    strict = Client(enforce_csrf_checks=True)
    assert strict.post(url, {"action": "push_off"}).status_code == 403
    response = Client().post(url, {"action": "push_off"})
    assert response.status_code == 200
    subscriber.refresh_from_db()
    assert subscriber.push_endpoint == subscriber.push_p256dh == subscriber.push_auth == ""
    assert subscriber.push_confirmed_at is None
    assert subscriber.email == "anna@example.pl" and subscriber.email_confirmed_at  # e-mail goes on
    page = response.content.decode()
    assert 'value="push_off"' not in page and "fcm.googleapis.com" not in page


def test_a_push_only_subscriber_changes_exports_and_deletes_through_the_settings_link():
    subscriber = push_only()
    url = f"/alerts/preferences/{subscriber.token}/"
    assert Client().get(url).status_code == 200
    saved = Client().post(url, {"action": "save", "areas": ["glogow"], "categories": ["Met"]})
    assert saved.status_code == 200
    subscriber.refresh_from_db()
    assert subscriber.areas == ["glogow"] and subscriber.categories == ["Met"]

    data = Client().get(f"{url}?export=json").json()
    assert data["subscription"]["email"] == data["subscription"]["phone"] == ""
    assert data["subscription"]["browser_notifications"] == {
        "on": True,
        "push_service": "fcm.googleapis.com",
        "endpoint": ENDPOINT,
        "keys_kept": ["p256dh", "auth"],
        "confirmed_at": subscriber.push_confirmed_at.isoformat(),
    }
    body = Client().get(f"{url}?export=json").content.decode()
    assert PUSH["push_auth"] not in body and PUSH["push_p256dh"] not in body
    assert data["consent"]["source"] == "web-push"

    deleted = Client().post(url, {"action": "delete", "confirm_delete": "yes"})
    assert deleted.status_code == 200
    assert not Subscriber.objects.filter(pk=subscriber.pk).exists()


def test_the_export_says_when_browser_notifications_are_off():
    subscriber = make_subscriber()
    data = Client().get(f"/alerts/preferences/{subscriber.token}/?export=json").json()
    assert data["subscription"]["browser_notifications"] == {
        "on": False,
        "push_service": "",
        "endpoint": "",
        "keys_kept": [],
        "confirmed_at": None,
    }
    assert data["subscription"]["account"] is None


def test_the_unsubscribe_page_stops_browser_notifications():
    subscriber = push_only(phone="+48600123456", phone_confirmed_at=timezone.now())
    url = f"/alerts/unsubscribe/{subscriber.token}"
    # The e-mail page of a subscriber without e-mail: nothing to stop.
    assert 'name="channel"' not in Client().get(url).content.decode()
    page = Client().get(f"{url}?channel=push").content.decode()
    assert 'name="channel" value="push"' in page and "fcm.googleapis.com" in page
    subscriber.refresh_from_db()
    assert subscriber.push_confirmed_at  # GET changed nothing
    response = Client(enforce_csrf_checks=True).post(url, {"channel": "push"})
    assert response.status_code == 200
    subscriber.refresh_from_db()
    assert subscriber.push_endpoint == "" and subscriber.push_confirmed_at is None
    assert subscriber.phone == "+48600123456" and subscriber.phone_confirmed_at  # SMS go on
    assert 'name="channel"' not in Client().get(f"{url}?channel=push").content.decode()


# --- A resident's account: linked subscriptions and "My alerts" -----------------------


@pytest.fixture
def resident():
    return make_user("ewa.nowak", email="ewa.nowak@example.pl", first_name="Ewa")


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_signed_in_resident_is_told_so_and_their_address_is_filled_in(resident):
    page = signed_in(resident).get("/alerts/subscribe/").content.decode()
    assert 'data-account="signed-in"' in page and "Ewa" in page
    assert re.search(r'id="id_email" name="email" value="ewa.nowak@example.pl"', page)
    anonymous = Client().get("/alerts/subscribe/").content.decode()
    assert "data-account" not in anonymous
    assert re.search(r'id="id_email" name="email" value=""', anonymous)


def test_the_accounts_own_address_is_linked_at_once_and_still_confirmed_by_link(resident):
    client = signed_in(resident)
    response = subscribe(client, email="Ewa.Nowak@EXAMPLE.pl")
    assert response.status_code == 302
    subscriber = Subscriber.objects.get()
    assert subscriber.user == resident
    assert subscriber.email_confirmed_at is None  # double opt-in as always
    [message] = mail.outbox
    assert message.to == ["Ewa.Nowak@example.pl"]
    my = client.get("/alerts/my/")
    assert my.status_code == 302
    assert my["Location"] == f"/alerts/preferences/{subscriber.token}/"
    assert my["Cache-Control"] == "no-store"


def test_another_address_is_linked_only_once_confirmed_while_signed_in(resident):
    client = signed_in(resident)
    subscribe(client, email="ewa.praca@example.pl")
    subscriber = Subscriber.objects.get()
    assert subscriber.user is None
    assert client.get("/alerts/my/")["Location"] == "/alerts/subscribe/"
    link = confirm_link(mail.outbox[0])
    assert Client().get(link).status_code == 200  # opened elsewhere, signed out
    subscriber.refresh_from_db()
    assert subscriber.email_confirmed_at and subscriber.user is None
    assert client.get(link).status_code == 200  # opened while signed in
    subscriber.refresh_from_db()
    assert subscriber.user == resident
    assert client.get("/alerts/my/")["Location"] == f"/alerts/preferences/{subscriber.token}/"


def test_someone_elses_address_typed_in_the_form_is_not_linked(resident):
    """Otherwise "My alerts" would open another person's settings page."""
    victim = make_subscriber(email="anna@example.pl")
    unconfirmed = make_subscriber(email="piotr@example.pl", email_confirmed_at=None)
    client = signed_in(resident)
    for address in ("anna@example.pl", "piotr@example.pl"):
        cooldown_passes()
        assert subscribe(client, email=address).status_code == 302
    victim.refresh_from_db()
    unconfirmed.refresh_from_db()
    assert victim.user is None and unconfirmed.user is None
    assert client.get("/alerts/my/")["Location"] == "/alerts/subscribe/"


def test_a_phone_confirmed_with_the_code_while_signed_in_is_linked(resident, smsapi):
    client = signed_in(resident)
    response = subscribe(client, email="", phone="600 123 456")
    phone_page = response["Location"]
    subscriber = Subscriber.objects.get()
    assert subscriber.user is None
    code = re.search(r"\b(\d{6})\b", smsapi.accepted[-1]["message"]).group(1)
    confirmed = client.post(phone_page, {"action": "confirm", "code": code})
    assert confirmed.status_code == 200
    subscriber.refresh_from_db()
    assert subscriber.phone_confirmed_at and subscriber.user == resident


def test_my_alerts_needs_signing_in_and_lists_several_subscriptions(resident):
    anonymous = Client().get("/alerts/my/")
    assert anonymous.status_code == 302
    assert anonymous["Location"] == "/accounts/login/?next=/alerts/my/"
    client = signed_in(resident)
    assert client.get("/alerts/my/")["Location"] == "/alerts/subscribe/"
    mail_row = make_subscriber(email="ewa.nowak@example.pl", user=resident)
    browser = push_only(user=resident)
    make_subscriber(email="someone@example.pl")  # not hers
    response = client.get("/alerts/my/")
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    page = response.content.decode()
    assert f'href="/alerts/preferences/{mail_row.token}/"' in page
    assert f'href="/alerts/preferences/{browser.token}/"' in page
    assert "ewa.nowak@example.pl" in page and "fcm.googleapis.com" in page
    assert "someone@example.pl" not in page
    assert client.post("/alerts/my/").status_code == 405


def test_the_header_links_to_my_alerts_for_signed_in_residents(resident):
    assert 'href="/alerts/my/"' in signed_in(resident).get("/alerts/subscribe/").content.decode()
    assert 'href="/alerts/my/"' not in Client().get("/alerts/subscribe/").content.decode()


def test_the_export_names_the_account_and_deleting_the_account_keeps_the_subscription(resident):
    subscriber = make_subscriber(email="ewa.nowak@example.pl", user=resident)
    data = Client().get(f"/alerts/preferences/{subscriber.token}/?export=json").json()
    assert data["subscription"]["account"] == "ewa.nowak"
    resident.delete()
    subscriber.refresh_from_db()
    assert subscriber.user is None and subscriber.email_confirmed_at
