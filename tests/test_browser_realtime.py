"""hub/static/hub/js/realtime.js in a real headless Chromium against real daphne.

The client must deliver every topic event once and in order across a server
crash: it notices the drop, reconnects by itself with backoff, resumes its
session (the server replays what it missed) or, when the session is gone,
subscribes again with ``since``. Error replies reject the request with their
code and leave the connection open.

Needs Playwright for Python and Debian's Chromium (never ``playwright
install``): the test fails, rather than skips, when either is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import time
from pathlib import Path

import pytest
from conftest import headless_chromium
from websockets.asyncio.server import serve

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent

# Loads the module into the landing page and records what the client reports.
# The backoff is capped at 1 s so that the test does not wait out real delays.
SETUP = """
async (url) => {
  const { HubSocket } = await import("/static/hub/js/realtime.js");
  window.log = { events: [], states: [], gaps: [], errors: [], revoked: [] };
  window.hub = new HubSocket(url, {
    minDelay: 100,
    maxDelay: 1000,
    onEvent: (f) => window.log.events.push({ topic: f.topic, seq: f.seq, n: f.data.n }),
    onState: (state, detail) => window.log.states.push({ state, ...detail }),
    onGap: (topics) => window.log.gaps.push(topics),
    onRevoked: (topics) => window.log.revoked.push(topics),
    onError: (e) => window.log.errors.push({ code: e.code, message: e.message }),
  });
}
"""

REJECTION = """
async (message) => {
  try {
    const reply = await window.hub.request(message);
    return { resolved: reply };
  } catch (e) {
    return { name: e.name, isError: e instanceof Error, code: e.code, message: e.message };
  }
}
"""


def restart_daphne(hub_processes, port: int) -> None:
    """A new daphne on the same port: the client reconnects to the URL it has."""
    hub_processes.daphne(port=port)


def kill_daphne(hub_processes) -> None:
    """SIGKILL: no close frame, no cleanup; the browser sees 1006."""
    proc = hub_processes.procs[-1]
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
async def launch():
    """``browser = await launch()`` in the test body; closed after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start():
            return await stack.enter_async_context(headless_chromium())

        yield start


@pytest.fixture
async def publisher(redis_url, key_prefix):
    from hub.bus import RedisBus

    bus = RedisBus(redis_url, prefix=key_prefix, buffer_size=100, seq_ttl=3600)
    yield bus
    await bus.close()


async def open_page(browser, port: int, socket_url: str = "/ws/live/"):
    """The landing page with the client loaded; records console noise and page errors."""
    page = await browser.new_page()
    noise: list[str] = []
    page.on(
        "console",
        lambda msg: (
            noise.append(f"{msg.type}: {msg.text}")
            if msg.type in {"log", "info", "warning", "debug"}
            else None
        ),
    )
    page.on("pageerror", lambda exc: noise.append(f"uncaught: {exc}"))
    response = await page.goto(f"http://127.0.0.1:{port}/")
    assert response is not None and response.ok
    await page.evaluate(SETUP, socket_url)
    return page, noise


async def wait_events(page, count: int) -> list[dict]:
    try:
        await page.wait_for_function(
            "n => window.log.events.length >= n", arg=count, timeout=10_000
        )
    except Exception:
        log = await page.evaluate("window.log")
        pytest.fail(f"the page did not get {count} events; it logged {log}")
    return await page.evaluate("window.log.events")


async def wait_opens(page, count: int) -> dict:
    """Wait for the ``count``-th "open" state and return its detail."""
    script = "n => window.log.states.filter(s => s.state === 'open').length >= n"
    try:
        await page.wait_for_function(script, arg=count, timeout=15_000)
    except Exception:
        log = await page.evaluate("window.log")
        pytest.fail(f"the client did not open {count} times; it logged {log}")
    states = await page.evaluate("window.log.states")
    return [s for s in states if s["state"] == "open"][count - 1]


async def test_events_once_and_in_order_across_a_server_crash(
    launch, publisher, hub_processes, key_prefix
):
    browser = await launch()
    port = hub_processes.daphne()
    page, noise = await open_page(browser, port)
    topic = f"public.browser-{secrets.token_hex(4)}"

    reply = await page.evaluate("t => window.hub.subscribe([t])", topic)
    assert reply["type"] == "subscribed" and reply["topics"] == {topic: 0}
    seqs = [await publisher.publish(topic, "demo.tick", {"n": n}) for n in (1, 2, 3)]
    events = await wait_events(page, 3)
    assert [(e["seq"], e["n"]) for e in events] == list(zip(seqs, (1, 2, 3), strict=True))

    # 1. The server dies; events go on; a new server comes up on the same port.
    kill_daphne(hub_processes)
    await page.wait_for_function(
        "window.log.states.some(s => s.state === 'reconnecting' && s.code === 1006)"
    )
    seqs += [await publisher.publish(topic, "demo.tick", {"n": n}) for n in (4, 5, 6)]
    await asyncio.to_thread(restart_daphne, hub_processes, port)
    opened = await wait_opens(page, 2)
    assert opened["resumed"] is True, opened
    assert opened["replayed"] == 3 and opened["gap"] == [], opened
    events = await wait_events(page, 6)
    assert [e["n"] for e in events] == [1, 2, 3, 4, 5, 6]
    seqs.append(await publisher.publish(topic, "demo.tick", {"n": 7}))
    events = await wait_events(page, 7)

    # A replay that overlaps what the client holds (as when a resume races live
    # events) is dropped: the server resends 1..7 here behind the client's back.
    replay = """async (t) => {
      await window.hub.request({ type: "unsubscribe", topics: [t] });
      return await window.hub.request({ type: "subscribe", topics: [t], since: { [t]: 0 } });
    }"""
    reply = await page.evaluate(replay, topic)
    assert reply["replayed"] == 7, reply

    # 2. Again, but the resume session is gone: the client subscribes again with
    # `since` and still gets what it missed from the topic buffer.
    session = await page.evaluate("window.hub.session")
    seen = await page.evaluate("window.log.states.length")
    kill_daphne(hub_processes)
    await page.wait_for_function(
        "n => window.log.states.slice(n).some(s => s.state === 'reconnecting')", arg=seen
    )
    deleted = await publisher.redis.delete(f"{key_prefix}:session:{session}")
    assert deleted == 1, "the resume session should have been in Redis"
    seqs += [await publisher.publish(topic, "demo.tick", {"n": n}) for n in (8, 9)]
    await asyncio.to_thread(restart_daphne, hub_processes, port)
    opened = await wait_opens(page, 3)
    assert opened["resumed"] is False, opened
    assert opened["replayed"] == 2 and opened["gap"] == [], opened
    await wait_events(page, 9)
    seqs.append(await publisher.publish(topic, "demo.tick", {"n": 10}))
    events = await wait_events(page, 10)

    await page.wait_for_timeout(200)  # room for a late duplicate to show up
    log = await page.evaluate("window.log")
    assert [(e["seq"], e["n"]) for e in log["events"]] == list(zip(seqs, range(1, 11), strict=True))
    assert {e["topic"] for e in log["events"]} == {topic}
    assert log["gaps"] == [] and log["errors"] == []
    assert log["states"][0]["state"] == "connecting"
    assert await page.evaluate("t => window.hub.lastSeq(t)", topic) == seqs[-1]
    assert noise == []


async def test_error_replies_reject_and_leave_the_socket_open(launch, hub_processes):
    browser = await launch()
    port = hub_processes.daphne()
    page, noise = await open_page(browser, port)

    # Sent before the socket is open: the request waits for it.
    rejected = await page.evaluate(REJECTION, {"type": "no.such.thing"})
    assert rejected["isError"] and rejected["name"] == "HubError", rejected
    assert rejected["code"] == "unknown_type", rejected
    assert "no.such.thing" in rejected["message"]

    rejected = await page.evaluate(
        "async () => { try { await window.hub.subscribe(['private.secret']); }"
        " catch (e) { return { code: e.code, message: e.message }; } }"
    )
    assert rejected["code"] == "forbidden", rejected

    rejected = await page.evaluate(REJECTION, {"type": "subscribe", "topics": ["BAD TOPIC"]})
    assert rejected["code"] == "bad_message", rejected

    # Still the same, open connection.
    pong = await page.evaluate("() => window.hub.ping()")
    assert pong["type"] == "pong" and isinstance(pong["time"], float)
    log = await page.evaluate("window.log")
    assert [s["state"] for s in log["states"]] == ["connecting", "open"]
    assert await page.evaluate("window.hub.state") == "open"

    # Closing for good rejects what is still in flight, with code "disconnected".
    rejected = await page.evaluate(
        "async () => { const p = window.hub.ping(); window.hub.close();"
        " try { await p; } catch (e) { return { code: e.code, state: window.hub.state }; } }"
    )
    assert rejected == {"code": "disconnected", "state": "closed"}
    assert noise == []


async def test_watchdog_drops_a_silent_connection(launch, publisher, hub_processes):
    browser = await launch()
    # Pings every 0.5 s: the client gives up after 2 x 0.5 + 5 = 6 s of silence.
    port = hub_processes.daphne({"WS_HEARTBEAT_INTERVAL": "0.5"})
    proc = hub_processes.procs[-1]
    page, noise = await open_page(browser, port)
    topic = f"public.browser-{secrets.token_hex(4)}"
    await page.evaluate("t => window.hub.subscribe([t])", topic)
    await publisher.publish(topic, "demo.tick", {"n": 1})
    await wait_events(page, 1)

    # A stopped server keeps its TCP connections open but says nothing, like a
    # mobile network that lost the route: only the watchdog can notice.
    proc.send_signal(signal.SIGSTOP)
    try:
        await publisher.publish(topic, "demo.tick", {"n": 2})
        started = time.monotonic()
        await page.wait_for_function(
            "window.log.states.some(s => s.state === 'reconnecting')", timeout=12_000
        )
        silent_for = time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGCONT)
    assert 4.0 < silent_for < 9.0, silent_for
    states = await page.evaluate("window.log.states")
    assert states[2]["reason"] == "heartbeat timeout", states

    opened = await wait_opens(page, 2)
    assert opened["resumed"] is True, opened
    events = await wait_events(page, 2)
    assert [e["n"] for e in events] == [1, 2]
    assert noise == []


async def test_reconnects_after_a_restart_but_not_after_4001(launch, hub_processes):
    """1012 (restart) means come back; 4001 (sign in first) means stop trying."""
    connections = 0

    async def handler(ws):
        nonlocal connections
        connections += 1
        welcome = {
            "type": "welcome",
            "session": f"s{connections}",
            "resume_token": "t",
            "heartbeat": 25.0,
            "max_frame_bytes": 65536,
        }
        await ws.send(json.dumps(welcome))
        await ws.close(1012 if connections == 1 else 4001, "test")

    browser = await launch()
    port = hub_processes.daphne()
    async with serve(handler, "127.0.0.1", 0) as server:
        fake = server.sockets[0].getsockname()[1]
        page, noise = await open_page(browser, port, f"ws://127.0.0.1:{fake}/")
        await page.wait_for_function("window.log.states.some(s => s.state === 'closed')")
        await page.wait_for_timeout(1500)  # longer than the test's backoff cap
        log = await page.evaluate("window.log")
    states = [(s["state"], s.get("code")) for s in log["states"]]
    assert states == [
        ("connecting", None),
        ("open", None),
        ("reconnecting", 1012),
        ("open", None),
        ("closed", 4001),
    ], log["states"]
    assert log["states"][-1]["fatal"] is True
    assert connections == 2
    assert await page.evaluate("window.hub.ping().catch(e => e.code)") == "disconnected"
    assert noise == []


async def test_a_subscription_ends_when_its_grant_expires(launch, hub_processes, publisher):
    """The server leaves a private topic when its grant expires and says so; the
    client forgets it (a reconnect does not ask again) and tells the page."""
    from hub.topics import issue_grant

    browser = await launch()
    port = hub_processes.daphne({"WS_HEARTBEAT_INTERVAL": "0.5"})
    page, noise = await open_page(browser, port, "/ws/hub/")
    topic = f"meet.browser-{secrets.token_hex(4)}"
    grant = issue_grant([topic], max_age=2)
    reply = await page.evaluate(
        "([t, g]) => window.hub.subscribe([t], { grant: g })", [topic, grant]
    )
    assert reply["type"] == "subscribed"
    seq = await publisher.publish(topic, "demo.tick", {"n": 1})
    events = await wait_events(page, 1)
    assert events[0]["seq"] == seq
    await page.wait_for_function("window.log.revoked.length > 0", timeout=10_000)
    assert await page.evaluate("window.log.revoked") == [[topic]]
    await publisher.publish(topic, "demo.tick", {"n": 2})
    await page.wait_for_timeout(500)
    assert len(await page.evaluate("window.log.events")) == 1
    assert await page.evaluate("window.log.errors") == []
    assert noise == []
