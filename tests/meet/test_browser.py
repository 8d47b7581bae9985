"""The meeting page in two real headless Chromium browsers (Debian's chromium,
fake camera and microphone) against a real daphne, Redis and PostgreSQL: the
clerk opens the host link, the resident the guest link; the resident waits at
position 1, the clerk lets them in, each sees the other's video, chat goes both
ways, the clerk ends the meeting and the resident sees it ended.

The same call again with the forwarding unit forced on (``MEET_FORCE_SFU=1``:
the media go through the unit embedded in daphne, not directly), and three
people in a room whose mesh holds two: it moves to the unit while all stay,
without a frozen tile, and everyone still sees everyone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import quote

import pytest
from channels.db import database_sync_to_async as sync_to_async
from conftest import FAKE_MEDIA_ARGS, ROOT, headless_chromium, url_of_test_database
from test_accessibility import OVERFLOW, axe_report, axe_violations

from signaling.rules import Kind

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# The other participant's video is really playing: it has a size, and its
# clock moves.
REMOTE_VIDEO_PLAYS = """
async () => {
  const video = document.querySelector('#videos li.tile:not([data-pid="self"]) video');
  if (!video || video.videoWidth === 0) return false;
  const before = video.currentTime;
  await new Promise((resolve) => setTimeout(resolve, 500));
  return video.currentTime > before && video.videoWidth > 0;
}
"""


REMOTE_TILE_SHOWS_MEDIA = """
() => {
  const tile = document.querySelector('#videos li.tile:not([data-pid="self"])');
  return Boolean(tile) && !tile.classList.contains("tile--camera-off")
    && getComputedStyle(tile.querySelector("video")).visibility === "visible"
    && !tile.querySelector(".tile__state").textContent.includes("🔇");
}
"""

# Every other participant's video plays (EXPECTED of them).
ALL_REMOTE_VIDEOS_PLAY = """
async () => {
  const videos = [...document.querySelectorAll('#videos li.tile:not([data-pid="self"]) video')];
  if (videos.length !== EXPECTED || videos.some((v) => v.videoWidth === 0)) return false;
  const before = videos.map((v) => v.currentTime);
  await new Promise((resolve) => setTimeout(resolve, 500));
  return videos.every((v, i) => v.currentTime > before[i]);
}
"""

SENDS_SCREEN = """
() => [...window.egminaMeeting.links.values()].every(({ link }) =>
  link.senders.video?.track?.label.startsWith("screen"))
"""
# Through the forwarding unit: the publication sends the screen.
SENDS_SCREEN_SFU = """
() => Boolean(window.egminaMeeting.sfu?.publisher?.pc?.getTransceivers()[1]
  ?.sender.track?.label.startsWith("screen"))
"""
# Every other participant comes through the unit (EXPECTED of them), shown in
# their tile, and no direct connection is left.
ALL_THROUGH_SFU = """
() => {
  const m = window.egminaMeeting;
  if (!m.sfu || m.room?.topology !== "sfu" || m.links.size !== 0) return false;
  const subs = [...m.sfu.subs.values()];
  return subs.length === EXPECTED && subs.every(({ link }) => link.state === "connected")
    && m.sfu.publisher?.state === "connected" && m.sfuShown.size === EXPECTED
    && document.querySelectorAll('#videos video.tile__video--pending').length === 0;
}
"""
# Watches the remote tiles there are now: one whose video stops (gone, no
# size, or its clock still for over a second) is written down in window.frozen.
WATCH_TILES = """
() => {
  window.frozen = [];
  const seen = new Map();
  const watched = [...window.egminaMeeting.tiles.keys()];
  window.watchTimer = setInterval(() => {
    const now = performance.now();
    for (const pid of watched) {
      const tile = window.egminaMeeting.tiles.get(pid);
      if (!tile) { window.frozen.push(`${pid}: no tile`); continue; }
      const video = tile.querySelector(".tile__video:not(.tile__video--pending)");
      if (!video || video.videoWidth === 0) { window.frozen.push(`${pid}: no video`); continue; }
      const last = seen.get(pid);
      if (!last || last.video !== video || video.currentTime > last.time) {
        seen.set(pid, { video, time: video.currentTime, since: now });
      } else if (now - last.since > 1000) {
        window.frozen.push(`${pid}: still for ${Math.round(now - last.since)} ms`);
        last.since = now;
      }
    }
  }, 100);
}
"""

RESTART_BOTH = """
() => { for (const { link } of window.egminaMeeting.links.values()) link.restartIce(); }
"""
SETTLED_AFTER_GLARE = """
() => [...window.egminaMeeting.links.values()].every(({ link }) =>
  link.pc.signalingState === "stable" && link.pc.connectionState === "connected"
  && link.trace.filter((t) => t.endsWith(">")).length >= 3)
"""

# What the page's meeting looks like, for a failure message.
DIAGNOSIS = """
() => {
  const m = window.egminaMeeting;
  if (!m) return "no meeting";
  const links = [...m.links].map(([pid, e]) => ({
    pid, instance: e.instance, polite: e.link.polite,
    signaling: e.link.pc.signalingState, ice: e.link.pc.iceConnectionState,
    connection: e.link.pc.connectionState,
    transceivers: e.link.pc.getTransceivers().map(
      (t) => `${t.mid}:${t.direction}/${t.currentDirection}:${t.sender.track?.kind}`),
    remoteTracks: e.link.stream.getTracks().map((t) => `${t.kind}:${t.readyState}:${t.muted}`),
    tile: Boolean(e.tile), trace: e.link.trace.join(" "),
  }));
  const videos = [...document.querySelectorAll('#videos video')].map((v) => ({
    w: v.videoWidth, t: v.currentTime, paused: v.paused, src: Boolean(v.srcObject),
  }));
  const sfu = m.sfu && {
    publisher: m.sfu.publisher
      && { state: m.sfu.publisher.state, trace: m.sfu.publisher.trace.join(" ") },
    subs: [...m.sfu.subs].map(([pid, s]) => ({ pid, generation: s.generation, state: s.link.state,
      trace: s.link.trace.join(" ") })),
    shown: [...m.sfuShown], readyFrom: [...m.readyFrom],
  };
  return JSON.stringify({ you: m.you, status: m.status, version: m.room?.version,
    topology: m.room?.topology, links, sfu, videos, frozen: window.frozen,
    log: window.meetLog || [] });
}
"""


PAGES: list = []


@pytest.fixture(autouse=True)
def _forget_pages():
    PAGES.clear()


def record_console(page) -> None:
    logs: list[str] = []
    PAGES.append((page, logs))
    page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))


async def wait_for(page, script: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            report = []
            for other, logs in PAGES:
                state = await other.evaluate(DIAGNOSIS)
                report.append(f"{'THIS ' if other is page else ''}page: {state}\n  console: {logs}")
            raise AssertionError(
                f"timed out waiting for {script.strip()[:80]}\n" + "\n".join(report)
            )
        await asyncio.sleep(0.2)


@pytest.fixture
def meeting_server(hub_processes):
    """A daphne serving the test database (``django_db(transaction=True)``);
    ``env`` adds settings (``MEET_FORCE_SFU``…). The forwarding unit runs
    inside it (``MEDIA_MODE=embedded``)."""

    def start(port: int | None = None, env: dict[str, str] | None = None) -> str:
        settings = {
            "DATABASE_URL": url_of_test_database(),
            "MEDIA_MODE": "embedded",
            **(env or {}),
        }
        port = hub_processes.daphne(settings, port=port)
        return f"http://127.0.0.1:{port}"

    return start


FORCED_SFU = {"MEET_FORCE_SFU": "1"}
topologies = pytest.mark.parametrize("sfu", [False, True], ids=["mesh", "sfu"])


async def admitted_call(stack, base: str, meeting, key: str):
    """The clerk (host link) and the resident (guest link) in one call."""
    clerk_browser = await stack.enter_async_context(headless_chromium(FAKE_MEDIA_ARGS))
    resident_browser = await stack.enter_async_context(headless_chromium(FAKE_MEDIA_ARGS))
    clerk = await (await clerk_browser.new_context()).new_page()
    resident = await (await resident_browser.new_context()).new_page()
    record_console(clerk)
    record_console(resident)
    await clerk.goto(f"{base}/meet/{meeting.code}/?key={key}&name=Anna")
    await clerk.click("#join-button")
    await clerk.wait_for_selector("#meeting-view:not([hidden])")
    await resident.goto(f"{base}/meet/{meeting.code}/?name=Jan")
    await resident.click("#join-button")
    await clerk.locator('#queue-list button[data-action="admit"]').click()
    await resident.wait_for_selector("#meeting-view:not([hidden])")
    await wait_for(clerk, REMOTE_VIDEO_PLAYS)
    await wait_for(resident, REMOTE_VIDEO_PLAYS)
    return clerk, resident


async def admitted_resident(stack, base: str, meeting, clerk, name: str):
    """One more resident (guest link, a browser of their own), let in by the clerk."""
    browser = await stack.enter_async_context(headless_chromium(FAKE_MEDIA_ARGS))
    resident = await (await browser.new_context()).new_page()
    record_console(resident)
    await resident.goto(f"{base}/meet/{meeting.code}/?name={name}")
    await resident.click("#join-button")
    await clerk.locator('#queue-list button[data-action="admit"]').click()
    await resident.wait_for_selector("#meeting-view:not([hidden])")
    return resident


@topologies
@pytest.mark.django_db(transaction=True)
async def test_clerk_and_resident_meet_in_two_browsers(meeting_server, sfu):
    from signaling.services import create_meeting

    meeting, key = await sync_to_async(create_meeting)(Kind.CONSULTATION, "Konsultacja podatkowa")
    base = meeting_server(env=FORCED_SFU if sfu else None)
    host_link = f"{base}/meet/{meeting.code}/?key={key}"
    guest_link = f"{base}/meet/{meeting.code}/?name={quote('Jan Kowalski')}"

    async with contextlib.AsyncExitStack() as stack:
        clerk_browser = await stack.enter_async_context(headless_chromium(FAKE_MEDIA_ARGS))
        resident_browser = await stack.enter_async_context(headless_chromium(FAKE_MEDIA_ARGS))
        clerk = await (await clerk_browser.new_context()).new_page()
        resident = await (await resident_browser.new_context()).new_page()
        errors: list[str] = []
        record_console(clerk)
        record_console(resident)
        for page in (clerk, resident):
            page.on("pageerror", lambda error: errors.append(str(error)))

        # The clerk opens the host link: the key leaves the address bar.
        await clerk.goto(host_link)
        assert "key=" not in clerk.url
        assert await clerk.locator("html").get_attribute("lang") == "pl"
        await clerk.fill("#guest-name", "Anna Urzędniczka")
        await clerk.click("#join-button")
        await clerk.wait_for_selector("#meeting-view:not([hidden])")

        # The resident opens the guest link and waits at position 1.
        await resident.goto(guest_link)
        assert await resident.input_value("#guest-name") == "Jan Kowalski"
        await resident.click("#join-button")
        await resident.wait_for_selector("#queue-view:not([hidden])")
        await wait_for(resident, "document.querySelector('#queue-position').textContent === '1'")

        # The clerk sees them in the queue and lets them in.
        admit = clerk.locator('#queue-list button[data-action="admit"]')
        await admit.wait_for()
        assert "Jan Kowalski" in await clerk.locator("#queue-list").inner_text()
        await admit.click()
        await resident.wait_for_selector("#meeting-view:not([hidden])")

        # Each side receives the other's video.
        await wait_for(clerk, REMOTE_VIDEO_PLAYS)
        await wait_for(resident, REMOTE_VIDEO_PLAYS)

        # Each shows the other as sending: camera tile visible, no muted mark.
        for page in (clerk, resident):
            await wait_for(page, REMOTE_TILE_SHOWS_MEDIA)
            if sfu:
                # …through the forwarding unit: no direct connection at all.
                await wait_for(page, ALL_THROUGH_SFU.replace("EXPECTED", "1"))

        # The clerk mutes the resident: the resident's microphone really stops.
        await clerk.locator('#people-list [data-action="mute-audio"]').click()
        await wait_for(resident, "window.egminaMeeting.micTrack.enabled === false")
        assert await resident.get_attribute("#toggle-microphone", "aria-pressed") == "false"
        await wait_for(
            clerk, "!document.querySelector('#people-list [data-action=\"mute-audio\"]')"
        )

        # The clerk shares the screen: the resident is sent the screen instead of
        # the camera (same connection, no renegotiation) and sees it shared.
        sends_screen = SENDS_SCREEN_SFU if sfu else SENDS_SCREEN
        await clerk.click("#toggle-screen")
        await wait_for(clerk, sends_screen)
        await wait_for(
            resident,
            "window.egminaMeeting.room.participants.some((p) => p.name === 'Anna Urzędniczka'"
            " && p.screen)",
        )
        await wait_for(resident, REMOTE_VIDEO_PLAYS)
        await clerk.click("#toggle-screen")
        await wait_for(clerk, f"!({sends_screen.strip()})()")

        if sfu:
            # The clerk's publication is lost (as when its media worker dies)
            # and made again: the resident subscribes to the new one by itself.
            await clerk.evaluate("window.egminaMeeting.sfu.publisher._retry()")
            await wait_for(
                resident,
                "window.egminaMeeting.room.participants.some((p) => p.published >= 2)",
            )
            for page in (clerk, resident):
                await wait_for(page, ALL_THROUGH_SFU.replace("EXPECTED", "1"))
                await wait_for(page, REMOTE_VIDEO_PLAYS)
        else:
            # Glare: both sides renegotiate at the same moment (an ICE restart
            # each); perfect negotiation settles it and the call goes on.
            await asyncio.gather(*(page.evaluate(RESTART_BOTH) for page in (clerk, resident)))
            for page in (clerk, resident):
                await wait_for(page, SETTLED_AFTER_GLARE)
                await wait_for(page, REMOTE_VIDEO_PLAYS)

        # The meeting view itself (grid, controls, panels, the host's queue panel)
        # meets WCAG 2.1 AA, on both sides.
        for page, who in ((clerk, "clerk"), (resident, "resident")):
            violations = await axe_violations(page)
            assert not violations, axe_report(f"meeting view of the {who}", violations)
        # On a phone held upright nothing sticks out to the right (WCAG 1.4.10).
        await resident.set_viewport_size({"width": 320, "height": 700})
        layout = await resident.evaluate(OVERFLOW)
        assert layout["scrollWidth"] <= 320 and not layout["out"], layout

        # Chat both ways; markup arrives as text.
        await resident.fill("#chat-input", "Dzień dobry <b>pani</b>")
        await resident.click("#chat-form button[type=submit]")
        await clerk.wait_for_selector("#chat-log .chat__text")
        assert await clerk.locator("#chat-log .chat__text").last.inner_text() == (
            "Dzień dobry <b>pani</b>"
        )
        assert await clerk.locator("#chat-log b").count() == 0
        await clerk.fill("#chat-input", "Dzień dobry, w czym mogę pomóc?")
        await clerk.press("#chat-input", "Enter")
        await wait_for(
            resident,
            "[...document.querySelectorAll('#chat-log .chat__text')]"
            ".some((p) => p.textContent === 'Dzień dobry, w czym mogę pomóc?')",
        )

        # The clerk ends the meeting; the resident sees it ended.
        clerk.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await clerk.click("#end-button")
        await resident.wait_for_selector("#ended-view:not([hidden])")
        assert "zakończ" in (await resident.inner_text("#ended-message")).lower()
        assert errors == []


@topologies
@pytest.mark.django_db(transaction=True)
async def test_after_the_server_dies_both_come_back_to_the_same_call(
    meeting_server, hub_processes, sfu
):
    """daphne is killed (SIGKILL: no close frames, no cleanup) and started again
    on the same port: both pages reconnect by themselves and rejoin with their
    tokens, as the same participants, still admitted, without the clerk letting
    anyone in again; the call's media (peer to peer) never stopped. Through the
    forwarding unit (it died with daphne) both publish and subscribe again."""
    from signaling.services import create_meeting

    meeting, key = await sync_to_async(create_meeting)(Kind.CONSULTATION, "Konsultacja")
    env = FORCED_SFU if sfu else None
    base = meeting_server(env=env)
    port = int(base.rsplit(":", 1)[1])
    async with contextlib.AsyncExitStack() as stack:
        clerk, resident = await admitted_call(stack, base, meeting, key)
        before = {
            "clerk": await clerk.evaluate("window.egminaMeeting.you"),
            "resident": await resident.evaluate("window.egminaMeeting.you"),
        }
        proc = hub_processes.procs[-1]
        proc.kill()
        proc.wait(timeout=10)
        await wait_for(resident, "document.querySelector('#quality').dataset.level === 'offline'")
        meeting_server(port, env=env)
        for page in (clerk, resident):
            await wait_for(page, "document.querySelector('#quality').dataset.level !== 'offline'")
            await wait_for(page, "window.egminaMeeting.hub.state === 'open'")
        after = {
            "clerk": await clerk.evaluate("window.egminaMeeting.you"),
            "resident": await resident.evaluate("window.egminaMeeting.you"),
        }
        assert after == before
        assert await resident.evaluate("window.egminaMeeting.status") == "admitted"
        assert await resident.is_visible("#meeting-view")
        for page in (clerk, resident):
            if sfu:
                await wait_for(page, ALL_THROUGH_SFU.replace("EXPECTED", "1"), timeout=60)
            await wait_for(page, REMOTE_VIDEO_PLAYS)
        # The new sockets carry the meeting: chat goes through them.
        await resident.fill("#chat-input", "Jestem z powrotem")
        await resident.press("#chat-input", "Enter")
        await wait_for(
            clerk,
            "[...document.querySelectorAll('#chat-log .chat__text')]"
            ".some((p) => p.textContent === 'Jestem z powrotem')",
        )


@pytest.mark.django_db(transaction=True)
async def test_someone_let_in_while_another_is_away_meets_them_when_they_return(meeting_server):
    """A second resident is let in while the first one's connection is down
    (away, within the grace): nobody negotiates with someone away; when the
    first comes back (same place, no re-admission), the two connect."""
    from signaling.services import create_meeting

    meeting, key = await sync_to_async(create_meeting)(Kind.CONSULTATION, "Konsultacja")
    base = meeting_server()
    async with contextlib.AsyncExitStack() as stack:
        clerk, first = await admitted_call(stack, base, meeting, key)
        # The first resident's network goes: its socket drops and reconnecting fails.
        blocked = {"on": True}

        async def gate(ws):
            if blocked["on"]:
                await ws.close()
            else:
                ws.connect_to_server()

        await first.route_web_socket("**/ws/meet/**", gate)
        await first.evaluate("window.egminaMeeting.hub._ws.close()")
        await wait_for(
            clerk,
            "window.egminaMeeting.room.participants.some((p) => !p.connected)",
        )
        # Meanwhile the clerk lets a second resident in.
        second = await admitted_resident(stack, base, meeting, clerk, "Ewa")
        first_pid = await first.evaluate("window.egminaMeeting.you")
        # The first resident's network is back: same place, and the two meet.
        blocked["on"] = False
        await wait_for(first, "window.egminaMeeting.hub.state === 'open'", timeout=40)
        assert await first.evaluate("window.egminaMeeting.you") == first_pid
        assert await first.evaluate("window.egminaMeeting.status") == "admitted"
        for page in (second, first, clerk):
            await wait_for(page, ALL_REMOTE_VIDEOS_PLAY.replace("EXPECTED", "2"), timeout=30)


@topologies
@pytest.mark.django_db(transaction=True)
async def test_public_consultation_hand_floor_and_moderated_questions(meeting_server, sfu):
    """A guest in a public consultation cannot speak until given the floor: they
    raise a hand, the moderator gives the floor, their microphone goes on for
    everyone; their question waits until the moderator publishes it. Through
    the forwarding unit the guest only receives until given the floor, then
    publishes too."""
    from signaling.services import create_meeting

    meeting, key = await sync_to_async(create_meeting)(Kind.PUBLIC, "Budżet obywatelski")
    base = meeting_server(env=FORCED_SFU if sfu else None)
    async with contextlib.AsyncExitStack() as stack:
        host_browser = await stack.enter_async_context(headless_chromium(FAKE_MEDIA_ARGS))
        guest_browser = await stack.enter_async_context(headless_chromium(FAKE_MEDIA_ARGS))
        host = await (await host_browser.new_context()).new_page()
        guest = await (await guest_browser.new_context()).new_page()
        record_console(host)
        record_console(guest)
        await host.goto(f"{base}/meet/{meeting.code}/?key={key}&name=Moderator")
        await host.click("#join-button")
        await host.wait_for_selector("#meeting-view:not([hidden])")
        await guest.goto(f"{base}/meet/{meeting.code}/?name=Jan")
        await guest.click("#join-button")
        await guest.wait_for_selector("#meeting-view:not([hidden])")  # public: straight in
        # Without the floor the microphone button is off and disabled.
        assert await guest.is_disabled("#toggle-microphone")
        if sfu:
            # The guest receives the moderator through the unit, sends nothing.
            await wait_for(guest, REMOTE_VIDEO_PLAYS)
            assert await guest.evaluate("window.egminaMeeting.sfu.publisher") is None
        await guest.click("#toggle-hand")
        await host.wait_for_selector("#people-list .people__item--hand")
        await host.locator('#people-list [data-action="floor"]').click()
        await wait_for(guest, "!document.querySelector('#toggle-microphone').disabled")
        # The room now shows the guest as sending sound, to the moderator too.
        await wait_for(
            host,
            "window.egminaMeeting.room.participants.some((p) => p.name === 'Jan' && p.audio)",
        )
        if sfu:
            # Given the floor, the guest publishes and the moderator receives them.
            for page in (host, guest):
                await wait_for(page, ALL_THROUGH_SFU.replace("EXPECTED", "1"))
        # A question waits for the moderator, then everyone sees it.
        await guest.fill("#chat-input", "Kiedy głosowanie?")
        await guest.press("#chat-input", "Enter")
        await host.wait_for_selector("#chat-log .chat__item--pending")
        assert await guest.locator("#chat-log .chat__item--pending").count() == 1
        await host.locator("#chat-log .chat__item--pending button").first.click()
        await wait_for(
            guest,
            "document.querySelector('#chat-log .chat__item--published')?.textContent"
            ".includes('Kiedy głosowanie?')",
        )
        # The moderator ends the meeting (through the unit: every session ends with it).
        host.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await host.click("#end-button")
        await guest.wait_for_selector("#ended-view:not([hidden])")


@pytest.mark.django_db(transaction=True)
async def test_three_people_outgrow_a_mesh_of_two_and_move_to_the_unit_without_leaving(
    meeting_server,
):
    """MESH_MAX=2: the clerk and a resident talk directly; when the clerk lets a
    second resident in, the room moves to the forwarding unit. Nobody leaves or
    is let in again, the first two never see each other's video stop (the
    unit's copy takes the tile's place once it plays, and their direct
    connection closes only then), and in the end everyone sees everyone through
    the unit."""
    from signaling.services import create_meeting

    meeting, key = await sync_to_async(create_meeting)(Kind.CONSULTATION, "Konsultacja")
    base = meeting_server(env={"MEET_MESH_MAX": "2"})
    async with contextlib.AsyncExitStack() as stack:
        clerk, first = await admitted_call(stack, base, meeting, key)
        for page in (clerk, first):
            assert await page.evaluate("window.egminaMeeting.room.topology") == "mesh"
            assert await page.evaluate("window.egminaMeeting.links.size") == 1
            await page.evaluate(WATCH_TILES)
        before = {page: await page.evaluate("window.egminaMeeting.you") for page in (clerk, first)}
        second = await admitted_resident(stack, base, meeting, clerk, "Ewa")
        assert await second.evaluate("window.egminaMeeting.room.topology") == "sfu"
        for page in (clerk, first, second):
            await wait_for(page, ALL_THROUGH_SFU.replace("EXPECTED", "2"), timeout=60)
            await wait_for(page, ALL_REMOTE_VIDEOS_PLAY.replace("EXPECTED", "2"), timeout=30)
        # Nobody left: the same places, three people in the call.
        for page, pid in before.items():
            assert await page.evaluate("window.egminaMeeting.you") == pid
            assert await page.evaluate("window.egminaMeeting.status") == "admitted"
        for page in (clerk, first, second):
            assert await page.evaluate("window.egminaMeeting.room.participants.length") == 3
        # No frozen or empty tile on the two who switched.
        for page in (clerk, first):
            await page.evaluate("clearInterval(window.watchTimer)")
            assert await page.evaluate("window.frozen") == [], await page.evaluate(DIAGNOSIS)
        # The clerk ends the meeting: everyone's media sessions end with it.
        clerk.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await clerk.click("#end-button")
        for page in (first, second):
            await page.wait_for_selector("#ended-view:not([hidden])")
            await wait_for(page, "window.egminaMeeting.sfu === null")


@pytest.mark.django_db(transaction=True)
async def test_everyone_sees_that_the_meeting_is_recorded(meeting_server, tmp_path):
    """Through the forwarding unit the clerk starts recording from the keyboard:
    the resident's page says so at once, in words, and the screen reader is
    told; both are recorded, and when the clerk stops, the notice goes and the
    files are finished."""
    from pathlib import Path

    from signaling.services import create_meeting

    meeting, key = await sync_to_async(create_meeting)(Kind.CONSULTATION, "Konsultacja")
    base = meeting_server(env={**FORCED_SFU, "MEDIA_RECORDINGS_DIR": str(tmp_path)})
    directory = Path(tmp_path) / f"meet-{meeting.code}"

    async def files(pattern: str, count: int) -> list[Path]:
        deadline = time.monotonic() + 20
        while len(found := list(directory.glob(pattern))) < count:
            assert time.monotonic() < deadline, list(directory.glob("*"))
            await asyncio.sleep(0.2)
        return found

    async with contextlib.AsyncExitStack() as stack:
        clerk, resident = await admitted_call(stack, base, meeting, key)
        for page in (clerk, resident):
            await wait_for(page, ALL_THROUGH_SFU.replace("EXPECTED", "1"))
        assert await resident.is_hidden("#recording-indicator")
        assert await resident.is_hidden("#toggle-recording")  # only those who moderate
        await clerk.focus("#toggle-recording")
        await clerk.keyboard.press("Enter")
        await resident.wait_for_selector("#recording-indicator:not([hidden])")
        assert "Nagrywanie włączone" in await resident.inner_text("#recording-indicator")
        await wait_for(
            resident, "document.querySelector('#meet-status').textContent.includes('nagrywane')"
        )
        await clerk.wait_for_selector("#recording-indicator:not([hidden])")
        assert await clerk.inner_text("#toggle-recording") == "Zakończ nagrywanie"
        violations = await axe_violations(resident)
        assert not violations, axe_report("the resident's page while recording", violations)
        await files("*.webm.part", 2)  # the clerk and the resident
        await clerk.click("#toggle-recording")
        await resident.wait_for_selector("#recording-indicator", state="hidden")
        assert len(await files("*.webm", 2)) == 2


# Every link of this page to the forwarding unit is on the media worker WORKER.
ON_WORKER = """() => {
  const sfu = window.egminaMeeting.sfu;
  const links = [sfu.publisher, ...[...sfu.subs.values()].map(({ link }) => link)];
  return links.every((link) => link.session?.startsWith("WORKER."));
}"""
# The page was told (notice media_reconnect) that its media worker is gone, and
# its publication negotiated again because of it (sfu.js writes it down).
TOLD_TO_RECONNECT = """() => {
  const trace = window.egminaMeeting.sfu?.publisher?.trace || [];
  return trace.includes("told:worker_lost");
}"""
# With a 0.5 s heartbeat and a 3 s TTL, the notice goes about 3 s after the
# kill; the pages are back on the other worker within this many seconds of it
# (about 4.5 s here; 13 s when they had to wait for their links to fail).
BACK_WITHIN_SECONDS = 8.0


@pytest.mark.django_db(transaction=True)
async def test_through_a_media_worker_that_dies_the_call_comes_back_on_another(
    meeting_server, hub_processes
):
    """Production's shape: daphne in worker mode, the forwarding unit in a
    ``python -m media.worker`` process. The worker carrying the call is
    killed (SIGKILL); a second one is running; both pages are told to
    reconnect (the sweep's ``media.reconnect``, a ``notice`` on their
    sockets), publish and subscribe again at once and see each other through
    it within BACK_WITHIN_SECONDS of the kill."""
    import os
    import signal
    import subprocess
    import sys

    from signaling.services import create_meeting

    fast = {"MEDIA_HEARTBEAT_SECONDS": "0.5", "MEDIA_WORKER_TTL": "3", "MEET_FORCE_SFU": "1"}
    env = {**hub_processes.env, **fast}

    def worker(worker_id: str) -> subprocess.Popen:
        argv = [sys.executable, "-m", "media.worker", "--id", worker_id]
        proc = subprocess.Popen(argv, cwd=ROOT, env=env)
        hub_processes.procs.append(proc)
        return proc

    first = worker("meet-a")
    meeting, key = await sync_to_async(create_meeting)(Kind.CONSULTATION, "Konsultacja")
    base = meeting_server(env={**fast, "MEDIA_MODE": "worker"})
    async with contextlib.AsyncExitStack() as stack:
        clerk, resident = await admitted_call(stack, base, meeting, key)
        for page in (clerk, resident):
            await wait_for(page, ALL_THROUGH_SFU.replace("EXPECTED", "1"), timeout=60)
        for page in (clerk, resident):
            assert await page.evaluate(ON_WORKER.replace("WORKER", "meet-a"))
        second = worker("meet-b")
        await announced(env, "meet-b", second)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        # Nobody touches the pages: the sweep finds meet-a silent past the
        # TTL and tells the room; the pages offer again at once, without
        # waiting for their links to fail, and the room is placed on meet-b.
        started = time.monotonic()
        for page in (clerk, resident):
            await wait_for(page, TOLD_TO_RECONNECT, timeout=30)
        told = time.monotonic() - started
        on_b = ON_WORKER.replace("WORKER", "meet-b")
        for page in (clerk, resident):
            await wait_for(page, on_b, timeout=60)
            await wait_for(page, ALL_THROUGH_SFU.replace("EXPECTED", "1"), timeout=60)
            await wait_for(page, REMOTE_VIDEO_PLAYS, timeout=30)
        back = time.monotonic() - started
        print(f"told to reconnect after {told:.1f} s; media back on meet-b after {back:.1f} s")
        assert back <= BACK_WITHIN_SECONDS, f"back on meet-b only after {back:.1f} s"


async def announced(env: dict, worker_id: str, proc, timeout: float = 60) -> None:
    """Wait until the media worker ``worker_id`` (the process ``proc``) has
    announced itself in the Redis of ``env``."""
    from media.registry import Registry

    registry = Registry(env["REDIS_URL"], prefix=env["REDIS_PREFIX"], ttl=3)
    try:
        deadline = time.monotonic() + timeout
        while not await registry.alive(worker_id):
            assert proc.poll() is None, f"media worker {worker_id} exited {proc.returncode}"
            assert time.monotonic() < deadline, f"media worker {worker_id} did not announce"
            await asyncio.sleep(0.1)
    finally:
        await registry.close()
