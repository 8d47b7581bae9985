"""The operator console against WCAG 2.1 AA in a real headless Chromium (axe),
at phone and desktop sizes: the list, composing from a template with its
preview, and an alert's page."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from conftest import headless_chromium, url_of_test_database
from test_accessibility import SIZES, axe_report, axe_violations

from tests.meet.helpers import make_user

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.mark.django_db(transaction=True)
async def test_the_console_has_no_wcag_21_aa_violations(hub_processes):
    def operator():
        user = make_user("operator-a11y", "operator", email="op@example.test")
        user.set_password("haslo-testowe-1")
        user.save()

    await database_sync_to_async(operator)()
    port = hub_processes.daphne({"DATABASE_URL": url_of_test_database()})
    base = f"http://127.0.0.1:{port}"
    reports = []
    async with headless_chromium() as browser:
        for size in SIZES:
            context = await browser.new_context(locale="pl-PL", **SIZES[size])
            page = await context.new_page()
            await page.goto(f"{base}/alerts/console/")
            await page.fill("#id_username", "operator-a11y")
            await page.fill("#id_password", "haslo-testowe-1")
            await page.press("#id_password", "Enter")
            await page.wait_for_url(f"{base}/alerts/console/")
            if violations := await axe_violations(page):
                reports.append(axe_report(f"console list, {size}", violations))
            await page.goto(f"{base}/alerts/console/new/?template=flood")
            if violations := await axe_violations(page):
                reports.append(axe_report(f"compose, {size}", violations))
            await page.check("input[name=areas][value=przewrotne]")
            await page.click("button[name=action][value=preview]")
            await page.wait_for_load_state()
            if violations := await axe_violations(page):
                reports.append(axe_report(f"preview, {size}", violations))
            await context.close()
    assert not reports, "\n\n".join(reports)
