"""The operator console: who may use it, composing from templates with a
preview per channel, drafts, four-eyes approval, publishing (now or
scheduled) through the outbox, Update and Cancel, the audit log, a test e-mail
to oneself; refused actions change nothing (real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from alerts import rules
from alerts.console_forms import initial_from_template
from alerts.models import Alert, AlertAudit, Delivery, Subscriber
from alerts.templates_data import TEMPLATES
from tests.meet.helpers import make_user

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.crisis.console_urls")]

CONSOLE = "/alerts/console/"
NEW = "/alerts/console/new/"


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.PUBLIC_BASE_URL = "https://egmina.example"
    settings.ALERTS = {**settings.ALERTS, "SMS_MAX_PARTS": 3, "SMS_TRANSLITERATE": False}


def operator(name: str, **fields):
    return make_user(name, "operator", email=f"{name}@glogow-mlp.example", **fields)


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def local(when: dt.datetime) -> str:
    """As a datetime-local input sends it, in Europe/Warsaw."""
    return timezone.localtime(when).strftime("%Y-%m-%dT%H:%M")


def form(**fields) -> dict:
    now = timezone.now()
    data = {
        "category": "Met",
        "event": "Burza",
        "urgency": "Immediate",
        "severity": "Minor",
        "certainty": "Observed",
        "headline": "Uwaga: burza",
        "description": "Nad gminą przechodzi burza z silnym wiatrem.",
        "instruction": "Zostań w domu.",
        "areas": ["przewrotne"],
        "effective": local(now - dt.timedelta(minutes=5)),
        "expires": local(now + dt.timedelta(hours=6)),
        "action": "save",
    }
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


def save_draft(client, **fields) -> Alert:
    response = client.post(NEW, form(**fields))
    assert response.status_code == 302, response.content.decode()[:2000]
    return Alert.objects.latest("pk")


def act(client, alert, action, **data):
    return client.post(f"{CONSOLE}{alert.pk}/", {"action": action, **data}, follow=True)


def refusal(response) -> str | None:
    found = re.search(r'data-reason="([^"]*)"', response.content.decode())
    return found.group(1) if found else None


def preview_value(response, name: str) -> str:
    found = re.search(rf'data-preview="{name}">([^<]*)<', response.content.decode())
    assert found, name
    return found.group(1)


def subscriber(**fields) -> Subscriber:
    now = timezone.now()
    base = {
        "email": f"mieszkaniec{Subscriber.objects.count()}@example.test",
        "areas": ["przewrotne"],
        "email_confirmed_at": now,
        "consent_version": "2026-11-v1",
        "consent_at": now,
        "consent_source": "test",
    }
    return Subscriber.objects.create(**{**base, **fields})


def audit_of(alert) -> list[str]:
    return list(AlertAudit.objects.filter(alert=alert).values_list("action", flat=True))


# --- Access ----------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_login_page():
    for url in (CONSOLE, NEW, f"{NEW}?template=flood"):
        response = Client().get(url)
        assert response.status_code == 302
        assert "/accounts/login/" in response["Location"]


def test_accounts_without_the_operator_role_get_403_and_change_nothing():
    author = operator("anna")
    alert = save_draft(client_for(author))
    resident = client_for(make_user("jan", "resident", "clerk"))
    assert resident.get(CONSOLE).status_code == 403
    assert resident.get(NEW).status_code == 403
    assert resident.get(f"{CONSOLE}{alert.pk}/").status_code == 403
    assert resident.post(f"{CONSOLE}{alert.pk}/", {"action": "submit"}).status_code == 403
    assert resident.post(NEW, form()).status_code == 403
    alert.refresh_from_db()
    assert alert.state == "draft" and Alert.objects.count() == 1


def test_operators_and_superusers_may_use_the_console():
    assert client_for(operator("anna")).get(CONSOLE).status_code == 200
    admin = make_user("admin", is_superuser=True, is_staff=True)
    assert client_for(admin).get(CONSOLE).status_code == 200


# --- Templates, the compose form, the preview ---------------------------------------


def test_there_are_templates_for_the_threats_of_issue_4_and_each_passes_the_rules():
    assert set(TEMPLATES) >= {"flood", "storm", "heat", "water", "road", "power", "air"}
    for key in TEMPLATES:
        data = initial_from_template(key)
        draft = rules.Alert(
            id="x",
            author="1",
            category=rules.Category(data["category"]),
            event=data["event"],
            urgency=rules.Urgency(data["urgency"]),
            severity=rules.Severity(data["severity"]),
            certainty=rules.Certainty(data["certainty"]),
            headline=data["headline"],
            description=data["description"],
            instruction=data["instruction"],
            areas=frozenset({"gmina"}),
            effective=data["effective"].timestamp(),
            expires=data["expires"].timestamp(),
        )
        rules.check(draft)  # raises Refused when a template is too long or lacks a part


def test_the_form_is_prefilled_from_a_template():
    client = client_for(operator("anna"))
    page = client.get(f"{NEW}?template=water").content.decode()
    water = TEMPLATES["water"]
    assert water.headline in page
    assert "Nie pij wody z kranu." in page
    assert re.search(r'<option value="Health" selected>', page)
    assert re.search(r'<option value="Severe" selected>', page)
    assert 'type="datetime-local"' in page
    # An unknown template is an empty form, not an error.
    assert client.get(f"{NEW}?template=nope").status_code == 200


def test_the_preview_shows_each_channel_and_the_sms_parts_of_polish_text():
    client = client_for(operator("anna"))
    response = client.post(NEW, form(action="preview", severity="Severe"))
    assert response.status_code == 200
    assert preview_value(response, "email-subject") == "[Severe] Uwaga: burza"
    assert "Jak się zachować:" in preview_value(response, "email-body")
    sms = preview_value(response, "sms")
    assert sms.startswith("Uwaga: burza\nZostań w domu.\nRezygnacja: https://egmina.example/a/u/")
    # "ń" makes it UCS-2: 70 characters a part, and the unsubscribe link alone takes 72.
    assert preview_value(response, "sms-encoding") == "UCS-2"
    assert preview_value(response, "sms-parts") == "2"
    assert preview_value(response, "sms-gsm7-encoding") == "GSM-7"
    assert preview_value(response, "sms-gsm7-parts") == "1"
    assert "Zostan w domu." in preview_value(response, "sms-gsm7")
    assert "Uwaga: burza" in preview_value(response, "banner")
    assert Alert.objects.count() == 0  # a preview saves nothing


def test_a_long_polish_sms_is_shortened_to_the_limit_and_says_so():
    client = client_for(operator("anna"))
    response = client.post(NEW, form(action="preview", instruction="Zostań w domu. " * 40))
    assert preview_value(response, "sms-parts") == "3"
    assert 'data-preview="sms-shortened"' in response.content.decode()


def test_saving_a_draft_records_the_author_the_times_in_warsaw_and_the_audit():
    anna = operator("anna")
    alert = save_draft(
        client_for(anna),
        effective="2031-01-15T12:00",
        expires="2031-01-15T18:30",
        areas=["lipie", "stykow"],
    )
    assert re.fullmatch(r"alert-\d{8}T\d{6}-[A-Za-z0-9_-]+", alert.identifier)
    assert alert.author == anna and alert.state == "draft" and alert.msg_type == "Alert"
    assert alert.effective == dt.datetime(2031, 1, 15, 11, 0, tzinfo=dt.UTC)  # CET, UTC+1
    assert alert.expires == dt.datetime(2031, 1, 15, 17, 30, tzinfo=dt.UTC)
    assert alert.areas == ["lipie", "stykow"]
    assert audit_of(alert) == ["created"]


def test_a_bad_form_saves_nothing_and_says_why():
    client = client_for(operator("anna"))
    now = timezone.now()
    response = client.post(
        NEW,
        form(
            instruction="",
            areas=None,
            headline="Zły\r\nBcc: x@example.com",
            expires=local(now - dt.timedelta(hours=1)),
        ),
    )
    assert response.status_code == 422
    page = response.content.decode()
    assert page.count('class="form-error"') >= 4  # instruction, areas, headline, expires
    # Each error is tied to its field for screen readers.
    assert 'aria-describedby="id_headline-error"' in page
    assert 'aria-describedby="id_instruction-hint id_instruction-error"' in page
    assert 'id="id_instruction-error"' in page and 'aria-describedby="areas-error"' in page
    assert Alert.objects.count() == 0


# --- The lifecycle ---------------------------------------------------------------


def test_severe_alert_needs_a_second_operator_then_goes_out_to_confirmed_subscribers():
    anna, piotr = operator("anna"), operator("piotr")
    a, p = client_for(anna), client_for(piotr)
    subscriber()
    subscriber(areas=["gmina"])
    subscriber(email_confirmed_at=None)  # not confirmed: nothing
    subscriber(areas=["lipie"])  # another area: nothing
    alert = save_draft(a, severity="Severe")

    response = act(a, alert, "submit")
    alert.refresh_from_db()
    assert alert.state == "awaiting_approval"

    # The author cannot approve, is told why, and nothing changes.
    before = audit_of(alert)
    response = act(a, alert, "approve")
    assert refusal(response) == "second_operator_needed"
    assert 'data-why="author"' in response.content.decode()
    alert.refresh_from_db()
    assert alert.state == "awaiting_approval" and alert.approved_by is None
    assert audit_of(alert) == before
    # Nor publish it before approval.
    assert refusal(act(a, alert, "publish")) == "needs_approval"
    assert Delivery.objects.count() == 0

    # The second operator sees it waiting for them, and approves.
    listing = p.get(CONSOLE).content.decode()
    assert 'class="console-item console-item--for-you"' in listing
    assert "console-item console-item--for-you" not in a.get(CONSOLE).content.decode()
    act(p, alert, "approve")
    alert.refresh_from_db()
    assert alert.state == "approved" and alert.approved_by == piotr

    response = act(a, alert, "publish")
    assert 'data-done="published"' in response.content.decode()
    alert.refresh_from_db()
    assert alert.state == "published" and alert.published_at is not None
    assert Delivery.objects.filter(alert=alert).count() == 2
    assert audit_of(alert) == ["created", "submitted", "approved", "published"]
    page = a.get(f"{CONSOLE}{alert.pk}/").content.decode()
    for action in ("created", "submitted", "approved", "published"):
        assert f'data-action="{action}"' in page
    assert "piotr" in page


def test_a_minor_alert_is_published_by_one_operator():
    a = client_for(operator("anna"))
    subscriber()
    alert = save_draft(a)
    act(a, alert, "submit")
    alert.refresh_from_db()
    assert alert.state == "approved"
    act(a, alert, "publish")
    alert.refresh_from_db()
    assert alert.state == "published"
    assert Delivery.objects.filter(alert=alert).count() == 1


def test_an_alert_whose_start_is_in_the_future_is_scheduled():
    a = client_for(operator("anna"))
    subscriber()
    later = timezone.now() + dt.timedelta(hours=2)
    alert = save_draft(a, effective=local(later), expires=local(later + dt.timedelta(hours=3)))
    act(a, alert, "submit")
    response = act(a, alert, "publish")
    assert 'data-done="scheduled"' in response.content.decode()
    alert.refresh_from_db()
    assert alert.state == "scheduled" and alert.published_at is None
    assert Delivery.objects.count() == 0


def test_the_second_operator_may_send_a_draft_back_with_a_reason():
    anna, piotr = operator("anna"), operator("piotr")
    a, p = client_for(anna), client_for(piotr)
    alert = save_draft(a, severity="Extreme")
    act(a, alert, "submit")
    # A reason is required.
    response = p.post(f"{CONSOLE}{alert.pk}/", {"action": "reject", "reason": ""})
    assert response.status_code == 422
    alert.refresh_from_db()
    assert alert.state == "awaiting_approval"
    act(p, alert, "reject", reason="Brak numeru drogi w nagłówku.")
    alert.refresh_from_db()
    assert alert.state == "draft"
    entry = AlertAudit.objects.get(alert=alert, action="rejected")
    assert entry.actor == piotr and entry.detail == {"reason": "Brak numeru drogi w nagłówku."}
    assert "Brak numeru drogi w nagłówku." in a.get(f"{CONSOLE}{alert.pk}/").content.decode()
    # The author mends the draft; another operator may not edit it.
    assert p.get(f"/alerts/console/{alert.pk}/edit/").status_code == 302
    response = a.post(
        f"/alerts/console/{alert.pk}/edit/", form(severity="Extreme", headline="Nowy")
    )
    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.headline == "Nowy" and alert.state == "draft"
    assert audit_of(alert)[-1] == "edited"


def test_refused_actions_change_nothing():
    a = client_for(operator("anna"))
    alert = save_draft(a)
    before = audit_of(alert)
    assert refusal(act(a, alert, "publish")) == "not_approved"
    assert refusal(act(a, alert, "approve")) == "not_awaiting_approval"
    assert refusal(act(a, alert, "reject", reason="x")) == "not_awaiting_approval"
    assert refusal(act(a, alert, "launch")) == "unknown_action"
    alert.refresh_from_db()
    assert alert.state == "draft" and audit_of(alert) == before
    act(a, alert, "submit")
    assert refusal(act(a, alert, "submit")) == "not_a_draft"
    alert.refresh_from_db()
    assert alert.state == "approved"
    # An alert whose time has passed cannot be submitted.
    past = timezone.now() - dt.timedelta(hours=3)
    old = save_draft(a, effective=local(past), expires=local(past + dt.timedelta(hours=1)))
    assert refusal(act(a, old, "submit")) == "already_expired"
    old.refresh_from_db()
    assert old.state == "draft"


# --- Update and Cancel ----------------------------------------------------------------


def publish_minor(client, **fields) -> Alert:
    alert = save_draft(client, **fields)
    act(client, alert, "submit")
    act(client, alert, "publish")
    alert.refresh_from_db()
    assert alert.state == "published"
    return alert


def test_a_cancel_is_prefilled_from_the_original_and_retires_it_when_published():
    anna = operator("anna")
    a = client_for(anna)
    original = publish_minor(a)
    page = a.get(f"{NEW}?follow={original.pk}&type=cancel").content.decode()
    assert "ODWOŁANE: Uwaga: burza" in page
    cancel = save_draft(
        a,
        follow=str(original.pk),
        type="cancel",
        headline="ODWOŁANE: Uwaga: burza",
        description="Burza minęła.",
        instruction="",
    )
    assert cancel.msg_type == "Cancel" and cancel.references == original
    assert cancel.state == "draft"
    assert "cancel" in audit_of(original)  # the original records that a cancel was started
    act(a, cancel, "submit")
    act(a, cancel, "publish")
    cancel.refresh_from_db()
    original.refresh_from_db()
    assert cancel.state == "published"
    assert original.state == "cancelled"
    assert audit_of(original)[-1] == "cancelled"


def test_an_update_replaces_the_original():
    a = client_for(operator("anna"))
    original = publish_minor(a)
    page = a.get(f"{NEW}?follow={original.pk}&type=update").content.decode()
    assert "AKTUALIZACJA: Uwaga: burza" in page
    update = save_draft(a, follow=str(original.pk), type="update", headline="Burza słabnie")
    assert update.msg_type == "Update" and update.references == original
    act(a, update, "submit")
    act(a, update, "publish")
    original.refresh_from_db()
    assert original.state == "superseded"


def test_only_a_live_alert_can_be_followed_up():
    a = client_for(operator("anna"))
    draft = save_draft(a)
    response = a.post(NEW, form(follow=str(draft.pk), type="cancel", instruction=""))
    assert response.status_code == 409
    assert refusal(response) == "original_not_live"
    assert Alert.objects.count() == 1


# --- The test e-mail, CSRF ---------------------------------------------------------------


def test_a_test_email_goes_to_the_operator_only():
    anna = operator("anna")
    a = client_for(anna)
    subscriber()
    alert = save_draft(a)
    response = act(a, alert, "test_send")
    assert 'data-done="test_send"' in response.content.decode()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["anna@glogow-mlp.example"]
    assert message.subject == "[Minor] Uwaga: burza"
    assert "Jak się zachować:" in message.body and "Zostań w domu." in message.body
    assert Delivery.objects.count() == 0
    alert.refresh_from_db()
    assert alert.state == "draft"
    assert audit_of(alert)[-1] == "test_sent"
    # Without an address: refused, nothing sent.
    ewa = make_user("ewa", "operator")
    assert refusal(act(client_for(ewa), alert, "test_send")) == "no_email"
    assert len(mail.outbox) == 1


def test_actions_need_the_csrf_token():
    anna = operator("anna")
    alert = save_draft(client_for(anna))
    client = Client(enforce_csrf_checks=True)
    client.force_login(anna)
    url = f"{CONSOLE}{alert.pk}/"
    assert client.post(url, {"action": "submit"}).status_code == 403
    assert client.post(NEW, form()).status_code == 403
    alert.refresh_from_db()
    assert alert.state == "draft" and Alert.objects.count() == 1
    page = client.get(url).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    client.post(url, {"action": "submit", "csrfmiddlewaretoken": token})
    alert.refresh_from_db()
    assert alert.state == "approved"


# --- SMS without Polish letters, per alert ---------------------------------------


def test_the_transliteration_box_changes_the_preview_and_is_kept_with_its_audit():
    client = client_for(operator("anna"))
    page = client.get(NEW).content.decode()
    assert 'name="sms_transliterate"' in page and 'type="checkbox"' in page
    assert 'aria-describedby="id_sms_transliterate-hint"' in page

    # Unticked: sent with Polish letters, the GSM-7 version beside it.
    plain = client.post(NEW, form(action="preview"))
    assert preview_value(plain, "sms-encoding") == "UCS-2"
    assert preview_value(plain, "sms-parts") == "2"
    assert preview_value(plain, "sms-gsm7-parts") == "1"
    # Ticked: sent in GSM-7, the Polish version beside it, both counts shown.
    ticked = client.post(NEW, form(action="preview", sms_transliterate="on"))
    assert preview_value(ticked, "sms-encoding") == "GSM-7"
    assert preview_value(ticked, "sms-parts") == "1"
    assert preview_value(ticked, "sms").startswith("Uwaga: burza\nZostan w domu.")
    assert preview_value(ticked, "sms-polish-encoding") == "UCS-2"
    assert preview_value(ticked, "sms-polish-parts") == "2"
    comparison = preview_value(ticked, "sms-comparison")
    assert "2" in comparison and "1" in comparison
    assert re.search(r'<input[^>]*name="sms_transliterate"[^>]*checked', ticked.content.decode())

    alert = save_draft(client, sms_transliterate="on")
    assert alert.sms_transliterate is True
    created = AlertAudit.objects.get(alert=alert, action="created")
    assert created.detail["sms_transliterate"] is True
    detail = client.get(f"{CONSOLE}{alert.pk}/").content.decode()
    assert 'data-fact="sms-transliterate"' in detail
    assert re.search(r'data-preview="sms-encoding">GSM-7<', detail)

    # Editing the draft: the box starts ticked; unticking it is recorded.
    edit = client.get(f"{CONSOLE}{alert.pk}/edit/").content.decode()
    assert re.search(r'<input[^>]*name="sms_transliterate"[^>]*checked', edit)
    response = client.post(f"{CONSOLE}{alert.pk}/edit/", form())
    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.sms_transliterate is False
    edited = AlertAudit.objects.get(alert=alert, action="edited")
    assert "sms_transliterate" in edited.detail["changed"]
    assert "headline" not in edited.detail["changed"]
    assert edited.detail["sms_transliterate"] is False


def test_an_update_keeps_the_transliteration_choice_of_the_original():
    client = client_for(operator("anna"))
    original = publish_minor(client, sms_transliterate="on")
    page = client.get(f"{NEW}?follow={original.pk}&type=update").content.decode()
    assert re.search(r'<input[^>]*name="sms_transliterate"[^>]*checked', page)


def test_the_service_wide_setting_transliterates_every_alert(settings):
    settings.ALERTS = {**settings.ALERTS, "SMS_TRANSLITERATE": True}
    client = client_for(operator("anna"))
    response = client.post(NEW, form(action="preview"))
    assert preview_value(response, "sms-encoding") == "GSM-7"
    assert 'data-preview="sms-comparison"' not in response.content.decode()
