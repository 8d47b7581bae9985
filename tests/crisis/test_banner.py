"""The live banner in a real headless Chromium on a real daphne, with the
real Redis bus: an alert published while the page is open appears within
moments; its Cancel removes it; a page opened while it is in force shows it
at once, with a link to what to do."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest
from channels.db import database_sync_to_async
from conftest import headless_chromium, url_of_test_database
from django.utils import timezone
from test_accessibility import axe_report, axe_violations

from alerts import outbox
from tests.crisis.test_outbox import new_alert
from tests.meet.helpers import make_user

pytestmark = [pytest.mark.integration, pytest.mark.browser]


async def wait_for(page, script: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not await page.evaluate(script):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {script}")
        await asyncio.sleep(0.1)


@pytest.mark.django_db(transaction=True)
async def test_the_banner_follows_alerts_live(hub_processes, settings):
    # The daphne shares this process's Redis key prefix: what the test
    # publishes reaches the pages it serves.
    port = hub_processes.daphne(
        {"DATABASE_URL": url_of_test_database(), "REDIS_PREFIX": settings.REDIS_PREFIX}
    )
    base = f"http://127.0.0.1:{port}"
    author = await database_sync_to_async(make_user)("operator-baner", "operator")
    async with headless_chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{base}/")
        assert await page.is_hidden("#live-banner")
        await wait_for(page, "window.egminaBanner?.hub.state === 'open'")

        def publish(**fields):
            alert = new_alert(author, **fields)
            outbox.publish(alert.pk, author, now=time.time())
            return alert

        flood = await database_sync_to_async(publish)(
            severity="Severe", state="approved", headline="Powódź: wysoki stan Mrowli"
        )
        await wait_for(
            page, "document.querySelector('#live-banner').textContent.includes('Mrowli')"
        )
        assert await page.is_visible("#live-banner")
        label = await page.inner_text("#live-banner strong")
        assert label.startswith("Poważne")
        # A page opened now shows it at once, and links to what to do.
        other = await browser.new_page()
        await other.goto(f"{base}/")
        assert "Mrowli" in await other.inner_text("#live-banner")
        await other.click("#live-banner a")
        await other.wait_for_url(f"{base}/alerts/{flood.identifier}/")
        assert "Nie zbliżaj się do wałów." in await other.inner_text(".alert__instruction")
        violations = await axe_violations(page)
        assert not violations, axe_report("landing page with a banner", violations)
        # The Cancel removes it from the open page.
        await database_sync_to_async(publish)(
            state="approved",
            msg_type="Cancel",
            references=flood,
            instruction="",
            headline="Odwołanie ostrzeżenia",
            effective=timezone.now() - dt.timedelta(seconds=1),
        )
        await wait_for(page, "document.querySelector('#live-banner').hidden")
