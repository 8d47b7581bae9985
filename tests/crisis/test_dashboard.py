"""The delivery dashboard (alerts.dashboard): the counts and their rules, the
operators-only pages (counts per channel × status, each recipient's status
with filters, masking and a search), the live socket on a real daphne with a
real WebSocket client, and the page in a real headless Chromium: it follows
the deliveries live, says when the connection is lost, and has no WCAG 2.1
AA violations (axe) at phone and desktop sizes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time

import msgspec
import pytest
from channels.db import database_sync_to_async
from conftest import headless_chromium, url_of_test_database
from django.test import Client
from django.utils import timezone, translation
from django.utils.html import escape
from django.utils.translation import gettext, ngettext
from test_accessibility import SIZES, axe_report, axe_violations
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from alerts import dashboard
from alerts.dashboard import DeliveryCounts, summarize
from alerts.models import Alert, Delivery, Subscriber
from hub.envelope import CloseCode, encode
from tests.crisis.test_banner import wait_for
from tests.crisis.test_outbox import new_alert
from tests.meet.helpers import make_user, session_cookie

ORIGIN = "http://127.0.0.1"
PASSWORD = "haslo-testowe-1"
T0 = dt.datetime(2026, 11, 3, 14, 30, tzinfo=dt.UTC)


def pl(msgid: str, **params) -> str:
    """What the page says for ``msgid`` in Polish (the lead keeps the catalogue;
    the test follows whatever it says, and test_dashboard_speaks_polish checks
    that it is Polish)."""
    with translation.override("pl"):
        text = gettext(msgid)
    return text % params if params else text


def pl_plural(singular: str, plural: str, count: int, **params) -> str:
    with translation.override("pl"):
        return ngettext(singular, plural, count) % {"counter": count, **params}


def page_url(alert) -> str:
    return f"/alerts/console/{alert.pk}/deliveries/"


def list_url(alert) -> str:
    return f"/alerts/console/{alert.pk}/deliveries/list/"


# --- Fixtures of data -------------------------------------------------------------------------


def operator(name: str = "operatorka"):
    user = make_user(name, "operator", email=f"{name}@glogow-mlp.example")
    user.set_password(PASSWORD)
    user.save()
    return user


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def subscriber(n: int, **fields) -> Subscriber:
    now = timezone.now()
    base = {
        "email": f"mieszkaniec{n}@example.pl",
        "phone": f"+48600100{n:03d}",
        "areas": ["przewrotne"],
        "email_confirmed_at": now,
        "phone_confirmed_at": now,
        "consent_version": "2026-11",
        "consent_at": now,
        "consent_source": "test",
        "token": f"dash-{n}-{time.monotonic_ns()}",
    }
    return Subscriber.objects.create(**{**base, **fields})


def deliver(alert, person, channel, status="queued", **fields) -> Delivery:
    return Delivery.objects.create(
        alert=alert,
        subscriber=person,
        channel=channel,
        status=status,
        next_attempt_at=timezone.now(),
        idempotency_key=f"d{alert.pk}-{person.pk}-{channel}",
        **fields,
    )


def published_alert(author, **fields) -> Alert:
    return new_alert(
        author, state="published", published_at=timezone.now() - dt.timedelta(minutes=3), **fields
    )


# --- Rules (no I/O) ---------------------------------------------------------------------------


def test_summarize_counts_every_channel_and_status_with_zeros_for_the_missing():
    counts = summarize(
        [
            ("email", "sent", 5, T0),
            ("email", "failed", 1, T0),
            ("sms", "queued", 2, None),
            ("push", "delivered", 3, T0),
        ],
        published_at=T0 - dt.timedelta(seconds=30),
    )
    assert counts.counts["email"] == {
        "queued": 0,
        "sending": 0,
        "sent": 5,
        "delivered": 0,
        "failed": 1,
    }
    assert counts.counts["sms"]["queued"] == 2
    assert (counts.total, counts.sent, counts.failed, counts.recorded) == (11, 8, 1, 9)
    assert counts.percent == 81  # 9 of 11, rounded down
    assert counts.published_at == (T0 - dt.timedelta(seconds=30)).timestamp()
    assert counts.finished_at is None  # two are still queued


def test_summarize_finishes_at_the_last_recorded_delivery():
    later = T0 + dt.timedelta(seconds=42)
    counts = summarize([("email", "sent", 2, T0), ("sms", "failed", 1, later)], published_at=T0)
    assert counts.percent == 100
    assert counts.finished_at == later.timestamp()


def test_summarize_of_nothing_and_of_unknown_values():
    empty = summarize([])
    assert (empty.total, empty.percent, empty.finished_at) == (0, 0, None)
    odd = summarize([("fax", "sent", 4, T0), ("email", "lost", 1, T0)])
    assert odd.total == 0


def test_percent_reaches_100_only_when_all_are_recorded():
    assert dashboard.percent_of(999, 1000) == 99
    assert dashboard.percent_of(1000, 1000) == 100
    assert dashboard.percent_of(0, 0) == 0


def test_the_counts_message_round_trips_through_the_envelope():
    counts = summarize([("email", "sent", 1, T0)], published_at=T0)
    frame = json.loads(encode(counts))
    assert frame["type"] == "deliveries" and frame["counts"]["email"]["sent"] == 1
    assert msgspec.json.decode(encode(counts), type=DeliveryCounts) == counts


def test_durations():
    assert dashboard.duration(0) == "0:00:00"
    assert dashboard.duration(3723.9) == "1:02:03"
    assert dashboard.iso_duration(3723) == "PT1H2M3S"
    assert dashboard.duration(-5) == "0:00:00"


def test_recipients_are_masked():
    assert dashboard.mask_email("jan.kowalski@example.pl") == "j***@example.pl"
    assert dashboard.mask_email("broken") == "***"
    assert dashboard.mask_phone("+48600123789") == "+48 *** *** 789"
    with translation.override("pl"):
        push = dashboard.recipient("push", "", "", "https://fcm.googleapis.com/fcm/send/abc:def")
        gone = dashboard.recipient("sms", "a@example.pl", "", "")
    assert push == pl("browser (%(host)s)", host="fcm.googleapis.com")
    assert gone == pl("(no longer on file)")


# --- Access -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_anonymous_visitors_are_sent_to_the_login_page():
    alert = published_alert(operator())
    for url in (page_url(alert), list_url(alert)):
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.django_db
def test_accounts_without_the_operator_role_are_refused():
    alert = published_alert(operator())
    resident = make_user("mieszkaniec", "resident")
    for url in (page_url(alert), list_url(alert)):
        assert client_for(resident).get(url).status_code == 403
    assert client_for(resident).post(list_url(alert), {"recipient": "x@y.pl"}).status_code == 403


@pytest.mark.django_db
def test_operators_and_superusers_see_the_dashboard():
    author = operator()
    alert = published_alert(author)
    assert client_for(author).get(page_url(alert)).status_code == 200
    admin = make_user("admin", is_superuser=True)
    assert client_for(admin).get(list_url(alert)).status_code == 200
    assert client_for(author).get("/alerts/console/999999/deliveries/").status_code == 404


@pytest.mark.django_db
def test_the_alerts_page_links_to_its_dashboard_once_published():
    author = operator()
    alert = published_alert(author)
    html = client_for(author).get(f"/alerts/console/{alert.pk}/").content.decode()
    assert f'href="{page_url(alert)}"' in html
    draft = new_alert(author, state="draft")
    html = client_for(author).get(f"/alerts/console/{draft.pk}/").content.decode()
    assert page_url(draft) not in html


# --- The counts page --------------------------------------------------------------------------


def cell(html: str, channel: str, status: str) -> int:
    found = re.search(rf'data-channel="{channel}" data-status="{status}">(\d+)<', html)
    assert found, (channel, status)
    return int(found.group(1))


@pytest.mark.django_db
def test_the_page_counts_deliveries_per_channel_and_status(django_assert_num_queries):
    author = operator()
    alert = published_alert(author)
    other = published_alert(author)  # its deliveries are not counted
    people = [subscriber(n) for n in range(6)]
    deliver(alert, people[0], "email", "sent", sent_at=timezone.now())
    deliver(alert, people[1], "email", "delivered", sent_at=timezone.now())
    deliver(alert, people[2], "email", "failed", last_error="550 no such user", attempts=8)
    deliver(alert, people[0], "sms", "sending")
    deliver(alert, people[1], "sms", "queued")
    deliver(alert, people[2], "push", "sent", sent_at=timezone.now())
    deliver(other, people[3], "email", "failed")

    with django_assert_num_queries(1):
        dashboard.count_rows(alert.pk)
    html = client_for(author).get(page_url(alert)).content.decode()
    assert cell(html, "email", "sent") == 1
    assert cell(html, "email", "delivered") == 1
    assert cell(html, "email", "failed") == 1
    assert cell(html, "email", "total") == 3
    assert cell(html, "sms", "sending") == 1
    assert cell(html, "sms", "queued") == 1
    assert cell(html, "push", "sent") == 1
    assert cell(html, "push", "queued") == 0
    assert cell(html, "all", "sent") == 2
    assert cell(html, "all", "failed") == 1
    assert cell(html, "all", "total") == 6
    # The progress in words, in Polish first; nothing finished yet.
    assert pl("%(sent)s of %(total)s sent", sent=3, total=6) in html
    assert 'max="6" value="4"' in html
    assert pl("still going") in html  # the time to finish
    data = json.loads(re.search(r'id="dashboard-data"[^>]*>(.*?)</script>', html).group(1))
    assert data["counts"]["total"] == 6 and data["socket"] == f"/ws{page_url(alert)}"
    assert data["text"]["progress"] == pl("%(sent)s of %(total)s sent")


@pytest.mark.django_db
def test_the_page_says_how_long_it_took_once_everything_is_recorded():
    author = operator()
    alert = published_alert(author)
    person = subscriber(1)
    sent_at = alert.published_at + dt.timedelta(seconds=75)
    deliver(alert, person, "email", "sent", sent_at=sent_at)
    deliver(alert, person, "sms", "delivered", sent_at=alert.published_at + dt.timedelta(seconds=5))
    html = client_for(author).get(page_url(alert)).content.decode()
    assert '<time datetime="PT0H1M15S">0:01:15</time>' in html
    assert "100%" in html


@pytest.mark.django_db
def test_an_alert_without_deliveries_says_so():
    author = operator()
    alert = new_alert(author, state="approved")
    html = client_for(author).get(page_url(alert)).content.decode()
    assert pl("No deliveries for this alert yet.") in html
    assert cell(html, "all", "total") == 0


# --- Each recipient ---------------------------------------------------------------------------


def listed(response) -> list[tuple[str, str, str]]:
    """(channel, status, recipient) of each row."""
    html = response.content.decode()
    return re.findall(
        r'data-channel="(\w+)" data-status="(\w+)">\s*<td class="dashboard-recipient">([^<]*)<',
        html,
    )


@pytest.fixture
def mixed(db):
    author = operator()
    alert = published_alert(author)
    mother = subscriber(
        1,
        email="Halina.Nowak@example.pl",
        phone="+48600123789",
        push_endpoint="https://updates.push.services.mozilla.com/wpush/v2/abc",
        push_confirmed_at=timezone.now(),
    )
    neighbour = subscriber(2)
    deliver(alert, mother, "email", "delivered", sent_at=timezone.now())
    deliver(alert, mother, "sms", "failed", attempts=8, last_error="SMSAPI 13: no recipients")
    deliver(alert, mother, "push", "sent", sent_at=timezone.now())
    deliver(alert, neighbour, "email", "queued")
    deliver(alert, neighbour, "sms", "sent", sent_at=timezone.now())
    return client_for(author), alert


def test_the_list_shows_each_delivery_with_a_masked_recipient(mixed):
    client, alert = mixed
    response = client.get(list_url(alert))
    assert response.status_code == 200
    rows = listed(response)
    assert ("email", "delivered", "H***@example.pl") in rows
    assert ("sms", "failed", "+48 *** *** 789") in rows
    push = pl("browser (%(host)s)", host="updates.push.services.mozilla.com")
    assert ("push", "sent", push) in rows
    assert len(rows) == 5
    html = response.content.decode()
    assert "SMSAPI 13: no recipients" in html
    assert "Halina" not in html and "600123789" not in html and "wpush" not in html


def test_the_list_filters_by_channel_and_status(mixed):
    client, alert = mixed
    assert {r[0] for r in listed(client.get(list_url(alert), {"channel": "sms"}))} == {"sms"}
    rows = listed(client.get(list_url(alert), {"channel": "email", "status": "queued"}))
    assert rows == [("email", "queued", "m***@example.pl")]
    assert listed(client.get(list_url(alert), {"status": "failed"})) == [
        ("sms", "failed", "+48 *** *** 789")
    ]


NO_CHANNEL = "There is no channel “%(value)s”: choose e-mail, SMS or browser notification."
NO_STATUS = "There is no status “%(value)s”: choose queued, sending, sent, delivered or failed."


@pytest.mark.parametrize(
    ("query", "message", "value"),
    [
        ({"channel": "fax"}, NO_CHANNEL, "fax"),
        ({"status": "<script>"}, NO_STATUS, "<script>"),
        ({"channel": "email", "status": "lost"}, NO_STATUS, "lost"),
    ],
)
def test_bad_filter_values_are_explained_not_a_500(mixed, query, message, value):
    client, alert = mixed
    response = client.get(list_url(alert), query)
    assert response.status_code == 400
    html = response.content.decode()
    assert escape(pl(message, value=value)) in html
    assert 'aria-invalid="true"' in html
    assert "<script>" not in html.split("<main", 1)[1].split("</main>")[0]
    assert listed(response) == []


def test_bad_page_numbers_show_a_page(mixed):
    client, alert = mixed
    for page in ("0", "-1", "abc", "999"):
        assert client.get(list_url(alert), {"page": page}).status_code == 200


@pytest.mark.django_db
def test_the_list_is_paginated_by_50_and_keeps_the_filters():
    author = operator()
    alert = published_alert(author)
    for n in range(60):
        deliver(alert, subscriber(n), "email", "queued" if n % 10 == 0 else "sent")
    client = client_for(author)
    first = client.get(list_url(alert))
    assert len(listed(first)) == 50
    assert 'href="?page=2"' in first.content.decode()
    assert len(listed(client.get(list_url(alert), {"page": 2}))) == 10
    filtered = client.get(list_url(alert), {"status": "sent"})
    assert len(listed(filtered)) == 50
    assert 'href="?status=sent&amp;page=2"' in filtered.content.decode()
    second = client.get(list_url(alert), {"status": "sent", "page": 2})
    assert [row[1] for row in listed(second)] == ["sent"] * 4
    assert len(listed(client.get(list_url(alert), {"status": "queued"}))) == 6


ONE_FOUND = "%(counter)s delivery to this recipient."
MANY_FOUND = "%(counter)s deliveries to this recipient."


@pytest.mark.parametrize(
    "asked",
    ["halina.nowak@EXAMPLE.pl", " Halina.Nowak@example.pl ", "600 123 789", "+48 600-123-789"],
)
def test_searching_one_recipient_by_email_or_phone(mixed, asked):
    client, alert = mixed
    response = client.post(list_url(alert), {"recipient": asked})
    assert response.status_code == 200
    rows = listed(response)
    assert sorted(r[:2] for r in rows) == [
        ("email", "delivered"),
        ("push", "sent"),
        ("sms", "failed"),
    ]
    assert pl_plural(ONE_FOUND, MANY_FOUND, 3) in response.content.decode()


def test_searching_someone_who_got_nothing(mixed):
    client, alert = mixed
    response = client.post(list_url(alert), {"recipient": "ktos@example.pl"})
    assert response.status_code == 200
    assert listed(response) == []
    assert pl_plural(ONE_FOUND, MANY_FOUND, 0) in response.content.decode()


@pytest.mark.parametrize(
    ("asked", "says"),
    [
        ("+49 600 123 789", "Text messages can be sent only to Polish numbers (+48)."),
        ("12345", "A Polish phone number has 9 digits, e.g. 600 123 456."),
        ("zły@", "Enter a valid e-mail address, e.g. jan.kowalski@example.pl."),
        ("", "Enter an e-mail address or a phone number."),
    ],
)
def test_a_bad_search_is_explained(mixed, asked, says):
    client, alert = mixed
    response = client.post(list_url(alert), {"recipient": asked})
    assert response.status_code == 422
    html = response.content.decode()
    says = escape(pl(says))
    assert says in html, html[html.find("error-summary") :][:800]
    assert listed(response) == []


# --- The socket, on a real daphne -------------------------------------------------------------


def _dashboard_world():
    author = operator("operator-ws")
    resident = make_user("mieszkaniec-ws", "resident")
    alert = published_alert(author)
    people = [subscriber(n) for n in range(3)]
    rows = [
        deliver(alert, people[0], "email", "queued"),
        deliver(alert, people[1], "email", "queued"),
        deliver(alert, people[2], "sms", "sending"),
    ]
    return author, resident, alert, rows


async def next_of(ws, kind: str, timeout: float = 10.0) -> dict:
    """The next frame of ``kind`` (heartbeats and the welcome are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame


def cookie_of(user) -> dict[str, str]:
    return {"Cookie": session_cookie(user)[1].decode()}


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_the_socket_sends_the_counts_then_only_changes(hub_processes):
    author, _resident, alert, rows = await database_sync_to_async(_dashboard_world)()
    headers = await database_sync_to_async(cookie_of)(author)
    port = hub_processes.daphne({"DATABASE_URL": url_of_test_database()})
    url = f"ws://127.0.0.1:{port}/ws/alerts/console/{alert.pk}/deliveries/"
    async with connect(url, origin=ORIGIN, additional_headers=headers) as ws:
        first = await next_of(ws, "deliveries")
        assert first["counts"]["email"]["queued"] == 2
        assert first["counts"]["sms"]["sending"] == 1
        assert (first["total"], first["sent"], first["percent"]) == (3, 0, 0)
        assert "finished_at" not in first  # omitted while it is None

        def record(row, status):
            Delivery.objects.filter(pk=row.pk).update(status=status, sent_at=timezone.now())

        await database_sync_to_async(record)(rows[0], "sent")
        second = await next_of(ws, "deliveries")
        assert second["counts"]["email"] == {**first["counts"]["email"], "queued": 1, "sent": 1}
        assert (second["sent"], second["recorded"], second["percent"]) == (1, 1, 33)

        # Nothing changes: nothing is sent (a few intervals of 1 s).
        with pytest.raises(TimeoutError):
            await next_of(ws, "deliveries", timeout=2.5)

        await database_sync_to_async(record)(rows[1], "failed")
        await database_sync_to_async(record)(rows[2], "delivered")
        last = await next_of(ws, "deliveries")
        while last["recorded"] < 3:  # the two changes may arrive one by one
            last = await next_of(ws, "deliveries")
        assert (last["sent"], last["failed"], last["percent"]) == (2, 1, 100)
        assert last["finished_at"] >= last["published_at"]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_the_socket_refuses_everyone_but_operators(hub_processes):
    author, resident, alert, _rows = await database_sync_to_async(_dashboard_world)()
    resident_headers = await database_sync_to_async(cookie_of)(resident)
    author_headers = await database_sync_to_async(cookie_of)(author)
    port = hub_processes.daphne({"DATABASE_URL": url_of_test_database()})
    url = f"ws://127.0.0.1:{port}/ws/alerts/console/{alert.pk}/deliveries/"

    async def close_code(headers) -> int:
        async with connect(url, origin=ORIGIN, additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    while True:
                        frame = json.loads(await ws.recv())
                        assert frame["type"] != "deliveries", frame
        return closed.value.rcvd.code

    assert await close_code(resident_headers) == CloseCode.FORBIDDEN
    assert await close_code({}) == CloseCode.UNAUTHENTICATED
    # An operator asking for an alert that does not exist: the handshake is refused.
    missing = f"ws://127.0.0.1:{port}/ws/alerts/console/999999/deliveries/"
    with pytest.raises(InvalidStatus):
        await connect(missing, origin=ORIGIN, additional_headers=author_headers)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_the_socket_closes_when_the_operator_role_is_taken_away(hub_processes):
    author, _resident, alert, _rows = await database_sync_to_async(_dashboard_world)()
    headers = await database_sync_to_async(cookie_of)(author)
    # A look every 0.1 s: the role is checked every 3 s.
    port = hub_processes.daphne(
        {"DATABASE_URL": url_of_test_database(), "ALERTS_DASHBOARD_SECONDS": "0.1"}
    )
    url = f"ws://127.0.0.1:{port}/ws/alerts/console/{alert.pk}/deliveries/"
    async with connect(url, origin=ORIGIN, additional_headers=headers) as ws:
        await next_of(ws, "deliveries")
        await database_sync_to_async(lambda: author.groups.clear())()
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        assert closed.value.rcvd.code == CloseCode.FORBIDDEN


# --- The page in a real browser ---------------------------------------------------------------


async def sign_in(page, base: str, next_url: str) -> None:
    await page.goto(f"{base}{next_url}")
    await page.fill("#id_username", "operator-ws")
    await page.fill("#id_password", PASSWORD)
    await page.press("#id_password", "Enter")
    await page.wait_for_url(f"{base}{next_url}")


PROGRESS = "%(sent)s of %(total)s sent"
COMPLETE = "All deliveries are recorded: %(sent)s of %(total)s sent, %(failed)s failed."


def td(channel: str, status: str) -> str:
    return f"#dashboard-table td[data-channel='{channel}'][data-status='{status}']"


@pytest.mark.integration
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
async def test_the_page_follows_the_deliveries_live(hub_processes):
    _author, _resident, alert, rows = await database_sync_to_async(_dashboard_world)()
    env = {"DATABASE_URL": url_of_test_database()}
    port = hub_processes.daphne(env)
    base = f"http://127.0.0.1:{port}"
    async with headless_chromium() as browser:
        context = await browser.new_context(locale="pl-PL")
        page = await context.new_page()
        await sign_in(page, base, page_url(alert))
        await wait_for(page, "window.egminaDashboard?.hub.state === 'open'")
        assert await page.inner_text(td("email", "queued")) == "2"
        assert await page.is_visible("#dashboard-chart svg")
        assert await page.locator("#dashboard-chart rect[data-status='queued']").count() == 1
        assert await page.inner_text("#dashboard-progress") == pl(PROGRESS, sent=0, total=3)
        assert await page.inner_text("#dashboard-connection") == pl(
            "Live: the numbers update by themselves."
        )

        def record(row, status):
            Delivery.objects.filter(pk=row.pk).update(status=status, sent_at=timezone.now())

        await database_sync_to_async(record)(rows[0], "sent")
        await wait_for(
            page, f"document.querySelector(\"{td('email', 'sent')}\").textContent === '1'"
        )
        assert await page.inner_text(td("email", "queued")) == "1"
        assert await page.inner_text(td("all", "sent")) == "1"
        assert await page.inner_text("#dashboard-progress") == pl(PROGRESS, sent=1, total=3)
        segment = page.locator("#dashboard-chart rect[data-status='sent']")
        assert await segment.get_attribute("data-count") == "1"
        assert await page.inner_text("#dashboard-announce") == ""  # no announcement per update

        await database_sync_to_async(record)(rows[1], "delivered")
        await database_sync_to_async(record)(rows[2], "failed")
        await wait_for(page, "document.querySelector('#dashboard-announce').textContent !== ''")
        assert await page.inner_text("#dashboard-announce") == pl(
            COMPLETE, sent=2, total=3, failed=1
        )
        assert re.fullmatch(r"\d+:\d\d:\d\d", await page.inner_text("#dashboard-took"))
        label = await page.get_attribute("#dashboard-chart svg", "aria-label")
        assert f"{pl('failed')} 1" in label

        # The server goes away: the page says so, and reconnects when it is back.
        server = hub_processes.procs[-1]
        server.terminate()
        await asyncio.to_thread(server.wait, 10)
        await wait_for(
            page, "document.querySelector('#dashboard-connection').dataset.state === 'lost'"
        )
        lost = await page.inner_text("#dashboard-connection")
        assert lost == pl("Connection lost — reconnecting…")
        await asyncio.to_thread(hub_processes.daphne, env, port=port)
        await database_sync_to_async(record)(rows[2], "sent")
        await wait_for(
            page, "document.querySelector('#dashboard-connection').dataset.state === 'live'", 40
        )
        await wait_for(page, f"document.querySelector(\"{td('sms', 'sent')}\").textContent === '1'")
        await context.close()


# Elements reaching past the right edge of the page (outside scrolling regions).
TOO_WIDE = """
() => {
  const width = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth <= width) return null;
  return [...document.querySelectorAll("body *")]
    .filter((el) => el.getBoundingClientRect().right > width + 1 && !el.closest(".table-scroll"))
    .slice(0, 5)
    .map((el) => `${el.tagName.toLowerCase()}#${el.id}.${el.className}`);
}
"""


@pytest.mark.integration
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
async def test_the_dashboard_pages_have_no_wcag_21_aa_violations(hub_processes):
    _author, _resident, alert, _rows = await database_sync_to_async(_dashboard_world)()
    port = hub_processes.daphne({"DATABASE_URL": url_of_test_database()})
    base = f"http://127.0.0.1:{port}"
    reports = []
    async with headless_chromium() as browser:
        for size in SIZES:
            context = await browser.new_context(locale="pl-PL", **SIZES[size])
            page = await context.new_page()
            await sign_in(page, base, page_url(alert))
            await wait_for(page, "window.egminaDashboard?.hub.state === 'open'")
            if violations := await axe_violations(page):
                reports.append(axe_report(f"dashboard, {size}", violations))
            # Nothing wider than the screen but the table's own scrolling region.
            overflow = await page.evaluate(TOO_WIDE)
            assert not overflow, f"the dashboard scrolls sideways at {size}: {overflow}"
            await page.goto(f"{base}{list_url(alert)}")
            if violations := await axe_violations(page):
                reports.append(axe_report(f"list, {size}", violations))
            await page.goto(f"{base}{list_url(alert)}?channel=fax")
            if violations := await axe_violations(page):
                reports.append(axe_report(f"list with a bad filter, {size}", violations))
            await page.fill("#id_recipient", "600 100 001")
            await page.press("#id_recipient", "Enter")
            await page.wait_for_load_state()
            assert pl_plural(ONE_FOUND, MANY_FOUND, 1) in await page.inner_text("main")
            if violations := await axe_violations(page):
                reports.append(axe_report(f"search result, {size}", violations))
            await context.close()
    assert not reports, "\n\n".join(reports)


# --- Polish first -----------------------------------------------------------------------------


def test_dashboard_speaks_polish():
    with translation.override(None):  # the msgids themselves
        english = [str(text) for text in dashboard.TEXTS.values()]
    english += [
        "Each recipient's status",
        "Delivery dashboard",
        "Time to record every delivery",
        ONE_FOUND,
    ]
    with translation.override("pl"):
        untranslated = [msgid for msgid in english if gettext(msgid) == msgid]
    assert untranslated == []


def test_an_error_that_repeats_an_address_or_number_is_masked():
    assert dashboard.mask_error("refused: 550 <jan.kowalski@example.pl> no such user") == (
        "refused: 550 <j***@example.pl> no such user"
    )
    masked = dashboard.mask_error("ERROR 13: bad number 48600123456")
    assert masked == "ERROR 13: bad number *** 456"
    assert dashboard.mask_error("push service answered 503") == "push service answered 503"
