"""The subscription pages against WCAG 2.1 AA in a real headless Chromium
(axe-core) on real daphne, at phone and desktop sizes, in Polish and English:
the form (empty, with errors, and for a signed-in resident), the settings
page (with e-mail and SMS; with browser notifications only), the unsubscribe
pages and "My alerts".
A resident subscribes by keyboard alone, and the pages reflow at 320 px and
200 % text.

They need the subscription URLs in alerts/urls.py (served by daphne through
hub.urls): /alerts/subscribe/, /alerts/preferences/<token>/,
/alerts/unsubscribe/<token>."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from conftest import headless_chromium, url_of_test_database
from django.test import Client
from test_accessibility import OVERFLOW, SIZES, axe_report, axe_violations

from tests.crisis.sms_servers import FakeSmsApi

pytestmark = [pytest.mark.integration, pytest.mark.browser]

TOKEN = "a11y-token-0123456789abcdefghijklmnop"
PUSH_TOKEN = "a11y-push-token-0123456789abcdefghijk"
SMS_TOKEN = "a11y-sms-token"


def _subscriber() -> str:
    """The subscribers, and the session cookie of a resident signed in, whose
    account both are linked to (so "My alerts" lists them)."""
    from django.utils import timezone

    from alerts.models import Subscriber
    from tests.meet.helpers import make_user

    now = timezone.now()
    resident = make_user("a11y-resident", email="ewa@example.pl", first_name="Ewa")
    Subscriber.objects.create(
        areas=["gmina"],
        push_endpoint="https://fcm.googleapis.com/fcm/send/a11y",
        push_p256dh="B" * 87,
        push_auth="A" * 22,
        push_confirmed_at=now,
        token=PUSH_TOKEN,
        consent_version="2026-11-v2",
        consent_at=now,
        consent_source="web-push",
        user=resident,
    )
    Subscriber.objects.create(
        user=resident,
        email="anna@example.pl",
        phone="+48600123456",
        areas=["lipie", "stykow"],
        categories=["Met"],
        email_confirmed_at=now,
        token=TOKEN,
        consent_version="2026-11-v1",
        consent_at=now,
        consent_source="web-form",
    )
    client = Client()
    client.force_login(resident)
    return client.cookies["sessionid"].value


@pytest.fixture
def smsapi():
    with FakeSmsApi(SMS_TOKEN) as server:
        yield server


@pytest.fixture
async def subscription_site(hub_processes, smsapi):
    """``(browser, base_url, session)``: daphne on the test database, with
    two subscribers and a signed-in resident's session, sending SMS to a
    loopback SMSAPI."""
    session = await database_sync_to_async(_subscriber)()
    port = hub_processes.daphne(
        {
            "DATABASE_URL": url_of_test_database(),
            "ALERTS_SMS_PROVIDER": "smsapi",
            "ALERTS_SMS_BASE_URL": smsapi.url,
            "ALERTS_SMS_TOKEN": SMS_TOKEN,
        }
    )
    async with headless_chromium() as browser:
        yield browser, f"http://127.0.0.1:{port}", session


async def open_page(
    browser, url: str, language: str, size: str, *, ok: bool = True, session: str = ""
):
    context = await browser.new_context(locale="pl-PL", **SIZES[size])
    if language != "pl":
        await context.add_cookies([{"name": "django_language", "value": language, "url": url}])
    if session:
        await context.add_cookies([{"name": "sessionid", "value": session, "url": url}])
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    response = await page.goto(url)
    assert response is not None, url
    if ok:
        assert response.ok, (url, response.status)
    page.problems = problems
    return page


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("language", ["pl", "en"])
async def test_the_subscription_pages_have_no_wcag_21_aa_violations(subscription_site, language):
    browser, base, session = subscription_site
    pages = {
        "form": f"{base}/alerts/subscribe/",
        "settings": f"{base}/alerts/preferences/{TOKEN}/",
        "unsubscribe (e-mail)": f"{base}/alerts/unsubscribe/{TOKEN}",
        "unsubscribe (SMS)": f"{base}/alerts/unsubscribe/{TOKEN}?channel=sms",
        "settings (browser notifications only)": f"{base}/alerts/preferences/{PUSH_TOKEN}/",
        "unsubscribe (browser)": f"{base}/alerts/unsubscribe/{PUSH_TOKEN}?channel=push",
        "form (signed in)": f"{base}/alerts/subscribe/",
        "my alerts (signed in)": f"{base}/alerts/my/",
    }
    reports = []
    for size in SIZES:
        for name, url in pages.items():
            cookie = session if "signed in" in name else ""
            page = await open_page(browser, url, language, size, session=cookie)
            if violations := await axe_violations(page):
                reports.append(axe_report(f"{name}, {language}, {size}", violations))
            if name == "form":
                # Sent empty: the error summary and the fields marked invalid.
                await page.click("form.form button[type=submit]")
                await page.wait_for_selector(".error-summary")
                assert await page.title() != ""
                if violations := await axe_violations(page):
                    reports.append(axe_report(f"form with errors, {language}, {size}", violations))
            if name == "settings":
                await page.click("button[value=delete]")  # without the box ticked
                await page.wait_for_selector("#delete-error")
                if violations := await axe_violations(page):
                    reports.append(
                        axe_report(f"settings, delete refused, {language}, {size}", violations)
                    )
            if page.problems:
                reports.append(f"{name} {language} {size}: {page.problems}")
            await page.context.close()
    assert not reports, "\n\n".join(reports)


@pytest.mark.django_db(transaction=True)
async def test_a_resident_subscribes_by_keyboard_alone(subscription_site, smsapi):
    """A number alone: the code comes by SMS at once, and is typed in on the
    page the form leads to; the number is then confirmed."""
    import re

    from alerts.models import Subscriber

    browser, base, _session = subscription_site
    page = await open_page(browser, f"{base}/alerts/subscribe/", "pl", "phone")

    async def tab_to(selector: str, limit: int = 60) -> None:
        for _ in range(limit):
            await page.keyboard.press("Tab")
            if await page.evaluate("s => document.activeElement.matches(s)", selector):
                return
        pytest.fail(f"{selector} is not reachable with Tab")

    await tab_to("#id_phone")
    await page.keyboard.type("600 987 654")
    await tab_to("input[name=areas][value=przewrotne]")
    await page.keyboard.press("Space")
    await tab_to("#id_consent")
    await page.keyboard.press("Space")
    await tab_to("form.form button[type=submit]")
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile(r".*/alerts/phone/[^/]+/$"))
    row = await database_sync_to_async(lambda: Subscriber.objects.get(phone="+48600987654"))()
    assert row.areas == ["przewrotne"] and row.phone_confirmed_at is None
    [sms] = smsapi.accepted
    assert sms["to"] == "48600987654"
    code = re.search(r"\b(\d{6})\b", sms["message"]).group(1)
    await tab_to("#id_code")
    await page.keyboard.type(code)
    await page.keyboard.press("Enter")
    await page.wait_for_selector("text=+48600987654", timeout=10000)
    row = await database_sync_to_async(lambda: Subscriber.objects.get(phone="+48600987654"))()
    assert row.phone_confirmed_at is not None
    await page.context.close()


@pytest.mark.django_db(transaction=True)
async def test_the_subscription_pages_reflow_at_320_px_and_200_percent_text(subscription_site):
    browser, base, _session = subscription_site
    failures = []
    paths = (
        "/alerts/subscribe/",
        f"/alerts/preferences/{TOKEN}/",
        f"/alerts/preferences/{PUSH_TOKEN}/",
    )
    for path in paths:
        for width, font_size in ((320, None), (640, "200%")):
            context = await browser.new_context(viewport={"width": width, "height": 800})
            page = await context.new_page()
            await page.goto(f"{base}{path}")
            if font_size:
                await page.evaluate(
                    "s => { document.documentElement.style.fontSize = s; }", font_size
                )
            layout = await page.evaluate(OVERFLOW)
            if layout["scrollWidth"] > width or layout["out"]:
                failures.append(f"{path} at {width} px, root font {font_size}: {layout}")
            await context.close()
    assert failures == [], "\n".join(failures)
