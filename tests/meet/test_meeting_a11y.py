"""The meeting page against WCAG 2.1 AA in a real headless Chromium (axe-core),
at phone and desktop sizes, in Polish and English: the pre-join page and the
queue a resident waits in. And a resident joins by keyboard alone."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from conftest import FAKE_MEDIA_ARGS, headless_chromium, url_of_test_database
from test_accessibility import SIZES, axe_report, axe_violations

from signaling.rules import Kind

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
async def meeting_site(hub_processes):
    from signaling.services import create_meeting

    meeting, _ = await database_sync_to_async(create_meeting)(Kind.CONSULTATION, "Konsultacje")
    port = hub_processes.daphne({"DATABASE_URL": url_of_test_database()})
    async with headless_chromium(FAKE_MEDIA_ARGS) as browser:
        yield browser, f"http://127.0.0.1:{port}/meet/{meeting.code}/"


async def open_meeting(browser, url: str, language: str, size: str):
    context = await browser.new_context(locale="pl-PL", **SIZES[size])
    if language != "pl":
        await context.add_cookies([{"name": "django_language", "value": language, "url": url}])
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    response = await page.goto(url)
    assert response is not None and response.ok, response
    page.problems = problems
    return page


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("language", ["pl", "en"])
async def test_prejoin_and_queue_have_no_wcag_21_aa_violations(meeting_site, language):
    browser, url = meeting_site
    reports = []
    for size in SIZES:
        page = await open_meeting(browser, f"{url}?name=Jan", language, size)
        await page.wait_for_function("document.querySelector('#camera-select').options.length")
        violations = await axe_violations(page)
        if violations:
            reports.append(axe_report(f"pre-join in {language} at {size} size", violations))
        await page.click("#join-button")
        await page.wait_for_selector("#queue-view:not([hidden])")
        await page.wait_for_function(
            "document.querySelector('#queue-position').textContent !== '—'"
        )
        violations = await axe_violations(page)
        if violations:
            reports.append(axe_report(f"queue in {language} at {size} size", violations))
        if page.problems:
            reports.append(f"{language} {size}: {page.problems}")
        await page.context.close()
    assert not reports, "\n\n".join(reports)


@pytest.mark.django_db(transaction=True)
async def test_a_guest_joins_by_keyboard_alone(meeting_site):
    browser, url = meeting_site
    page = await open_meeting(browser, url, "pl", "phone")
    await page.wait_for_function("document.querySelector('#camera-select').options.length")
    # Tab from the top until the name field has focus, type, then Enter submits.
    for _ in range(15):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.id") == "guest-name":
            break
    else:
        pytest.fail("the name field is not reachable with Tab")
    await page.keyboard.type("Maria Nowak")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#queue-view:not([hidden])")
    assert await page.inner_text("#queue-position") == "1"
    # Leaving the queue is reachable by keyboard too.
    for _ in range(10):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.dataset.action") == "leave":
            break
    else:
        pytest.fail("the leave button is not reachable with Tab")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#ended-view:not([hidden])")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("language", ["pl", "en"])
async def test_sign_in_and_my_meetings_have_no_wcag_21_aa_violations(meeting_site, language):
    from tests.meet.helpers import make_user

    def clerk():
        user = make_user(f"urzednik-{language}", "clerk", first_name="Piotr")
        user.set_password("haslo-testowe-1")
        user.save()

    await database_sync_to_async(clerk)()
    browser, url = meeting_site
    base = url.split("/meet/")[0]
    reports = []
    for size in SIZES:
        page = await open_meeting(browser, f"{base}/meet/", language, size)
        assert "/accounts/login/" in page.url
        if violations := await axe_violations(page):
            reports.append(axe_report(f"sign in, {language}, {size}", violations))
        await page.fill("#id_username", f"urzednik-{language}")
        await page.fill("#id_password", "haslo-testowe-1")
        await page.press("#id_password", "Enter")
        await page.wait_for_url(f"{base}/meet/")
        await page.fill("#new-title", "Konsultacje")
        await page.click("form.form button[type=submit]")
        await page.wait_for_selector(".meetings__item--new")
        if violations := await axe_violations(page):
            reports.append(axe_report(f"my meetings, {language}, {size}", violations))
        await page.context.close()
    assert not reports, "\n\n".join(reports)


@pytest.mark.django_db(transaction=True)
async def test_the_meeting_page_reflows_at_320_px_and_200_percent_text(meeting_site):
    """WCAG 1.4.10 and 1.4.4 on the pre-join page and in the queue: a phone
    held upright, and large text; nothing sticks out to the right."""
    from test_accessibility import OVERFLOW

    browser, url = meeting_site
    failures = []
    for width, font_size in ((320, None), (640, "200%")):
        context = await browser.new_context(viewport={"width": width, "height": 800})
        page = await context.new_page()
        await page.goto(f"{url}?name=Jan")
        await page.wait_for_function("document.querySelector('#camera-select').options.length")
        if font_size:
            await page.evaluate("s => { document.documentElement.style.fontSize = s; }", font_size)
        for state in ("prejoin", "queue"):
            if state == "queue":
                await page.click("#join-button")
                await page.wait_for_selector("#queue-view:not([hidden])")
            layout = await page.evaluate(OVERFLOW)
            if layout["scrollWidth"] > width or layout["out"]:
                failures.append(f"{state} at {width} px, root font {font_size}: {layout}")
        await context.close()
    assert failures == [], "\n".join(failures)
