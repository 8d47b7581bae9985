"""Join time of a meeting in Chromium on loopback: open link -> queued ->
admitted -> first remote video frame.

Run from the repository root::

    .venv/bin/python -m bench.meet_join            # 5 repetitions
    .venv/bin/python -m bench.meet_join --repeat 10

One daphne (``hub.asgi``) serves a fresh PostgreSQL database (created,
migrated and dropped like bench.meet_signaling) and a fresh Redis key prefix.
Two headless Chromium browsers (Debian's /usr/bin/chromium through
Playwright, the flags of tests/conftest.py and a fake camera and microphone)
play the clerk and the resident. Each repetition uses a new consultation and
new browser contexts (cold cache, new session): the clerk opens the host link
and joins; the resident opens the guest link and joins; the clerk lets them in
as soon as the *Let in* button shows (the script clicks at once: no human
wait); the resident's page is watched until the first frame of the clerk's
video is presented.

Times are taken inside the pages: an init script records
``performance.timeOrigin + performance.now()`` when the join button is
clicked, when the queue view and the meeting view show (a MutationObserver on
``hidden``), when the clerk clicks *Let in*, and the first
``requestVideoFrameCallback`` of the remote video (the ``resize`` event,
``videoWidth > 0``, is kept as well). "Open link" is the resident page's
navigation start (``performance.timeOrigin``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from urllib.parse import quote

from bench.common import (
    HOST,
    BenchDatabase,
    Daphnes,
    Invocation,
    add_server_options,
    machine_line,
    server_env,
    setup_django,
    stop_on_signals,
)

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# As tests/conftest.py (CHROMIUM_ARGS and FAKE_MEDIA_ARGS).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FAKE_MEDIA_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]

# Marks in epoch milliseconds, comparable between the two browsers (one clock).
MARKS_SCRIPT = """
(() => {
  const marks = {};
  window.__benchMarks = marks;
  const at = () => performance.timeOrigin + performance.now();
  const mark = (name) => { if (!(name in marks)) marks[name] = at(); };
  marks.origin = performance.timeOrigin;
  document.addEventListener("click", (event) => {
    const target = event.target instanceof Element ? event.target : null;
    if (!target) return;
    if (target.closest("#join-button")) mark("join_click");
    if (target.closest('#queue-list button[data-action="admit"]')) mark("admit_click");
  }, true);
  const watchVideo = (video) => {
    if (video.__benchWatched) return;
    video.__benchWatched = true;
    const sized = () => { if (video.videoWidth > 0) mark("remote_size"); };
    video.addEventListener("resize", sized);
    video.addEventListener("loadeddata", sized);
    if (video.requestVideoFrameCallback) {
      video.requestVideoFrameCallback(() => mark("remote_frame"));
    }
  };
  const check = () => {
    const queue = document.getElementById("queue-view");
    if (queue && !queue.hidden) mark("queued");
    const meeting = document.getElementById("meeting-view");
    if (meeting && !meeting.hidden) mark("in_meeting");
    for (const video of document.querySelectorAll(
      '#videos li.tile:not([data-pid="self"]) video'
    )) watchVideo(video);
  };
  const start = () => {
    mark("dom_ready");
    check();
    new MutationObserver(check).observe(document.documentElement, {
      attributes: true, attributeFilter: ["hidden"], childList: true, subtree: true,
    });
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
"""

# label, (from mark, page), (to mark, page); "r" = resident, "c" = clerk
PHASES = [
    ("open link -> page ready (DOMContentLoaded)", ("origin", "r"), ("dom_ready", "r")),
    ("open link -> join clicked (script, at once)", ("origin", "r"), ("join_click", "r")),
    ("join clicked -> queued", ("join_click", "r"), ("queued", "r")),
    ("open link -> queued", ("origin", "r"), ("queued", "r")),
    ("queued -> clerk clicks Let in (script)", ("queued", "r"), ("admit_click", "c")),
    ("Let in clicked -> resident admitted", ("admit_click", "c"), ("in_meeting", "r")),
    ("admitted -> first remote frame", ("in_meeting", "r"), ("remote_frame", "r")),
    ("admitted -> remote videoWidth > 0", ("in_meeting", "r"), ("remote_size", "r")),
    ("open link -> first remote frame", ("origin", "r"), ("remote_frame", "r")),
    ("  same, without the wait for Let in", None, None),
    ("clerk: Let in -> first remote frame", ("admit_click", "c"), ("remote_frame", "c")),
]


async def wait_mark(page, name: str, limit: float) -> None:
    await page.wait_for_function(
        f"() => window.__benchMarks && {json.dumps(name)} in window.__benchMarks",
        timeout=limit * 1000,
        polling=20,
    )


async def one_join(browsers, base: str, meeting: dict, limit: float) -> dict:
    clerk_browser, resident_browser = browsers
    contexts = []
    errors: list[str] = []
    try:
        clerk_context = await clerk_browser.new_context()
        resident_context = await resident_browser.new_context()
        contexts = [clerk_context, resident_context]
        for context in contexts:
            await context.add_init_script(MARKS_SCRIPT)
        clerk = await clerk_context.new_page()
        resident = await resident_context.new_page()
        for who, page in (("clerk", clerk), ("resident", resident)):
            page.on("pageerror", lambda error, who=who: errors.append(f"{who}: {error}"))
        clerk.set_default_timeout(limit * 1000)
        resident.set_default_timeout(limit * 1000)

        # The clerk is in the meeting first (not measured).
        await clerk.goto(f"{base}/meet/{meeting['code']}/?key={meeting['key']}")
        await clerk.fill("#guest-name", "Anna Urzędniczka")
        await clerk.click("#join-button")
        await clerk.wait_for_selector("#meeting-view:not([hidden])")

        # The resident opens the guest link and joins at once.
        await resident.goto(f"{base}/meet/{meeting['code']}/?name={quote('Jan Kowalski')}")
        await resident.click("#join-button")
        await wait_mark(resident, "queued", limit)

        # The clerk lets them in as soon as the button shows.
        admit = clerk.locator('#queue-list button[data-action="admit"]')
        await admit.click()
        await wait_mark(resident, "in_meeting", limit)
        await wait_mark(resident, "remote_frame", limit)
        with contextlib.suppress(Exception):
            await wait_mark(resident, "remote_size", 5)
        with contextlib.suppress(Exception):
            await wait_mark(clerk, "remote_frame", 10)
        marks = {
            "r": await resident.evaluate("window.__benchMarks"),
            "c": await clerk.evaluate("window.__benchMarks"),
        }
        return {"marks": marks, "errors": errors}
    finally:
        for context in contexts:
            with contextlib.suppress(Exception):
                await context.close()


def phases_of(marks: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for label, start, end in PHASES:
        out[label] = None
        if start is None:
            continue
        a = marks[start[1]].get(start[0])
        b = marks[end[1]].get(end[0])
        out[label] = None if a is None or b is None else round(b - a, 1)
    parts = [
        out["open link -> queued"],
        out["Let in clicked -> resident admitted"],
        out["admitted -> first remote frame"],
    ]
    out["  same, without the wait for Let in"] = None if None in parts else round(sum(parts), 1)
    return out


async def run_browsers(
    base: str, meetings: list[dict], limit: float, verbose: bool, results: list
) -> None:
    """One repetition per meeting; ``results`` gets each (kept on Ctrl-C)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browsers = []
        try:
            for _ in range(2):
                browsers.append(
                    await playwright.chromium.launch(
                        executable_path=CHROMIUM,
                        headless=True,
                        args=[*CHROMIUM_ARGS, *FAKE_MEDIA_ARGS],
                    )
                )
            for i, meeting in enumerate(meetings, 1):
                try:
                    result = await one_join(browsers, base, meeting, limit)
                    result["phases"] = phases_of(result["marks"])
                except Exception as exc:
                    result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
                results.append(result)
                summary = result.get("error") or (
                    f"open -> queued {result['phases']['open link -> queued']} ms, "
                    f"admitted -> frame {result['phases']['admitted -> first remote frame']} ms, "
                    f"total {result['phases']['open link -> first remote frame']} ms"
                )
                print(f"  [{i}/{len(meetings)}] {summary}", flush=True)
                if verbose and "phases" in result:
                    for label, value in result["phases"].items():
                        print(f"      {label:46}{value}", flush=True)
                await asyncio.sleep(0.5)
        finally:
            for browser in browsers:
                with contextlib.suppress(Exception):
                    await browser.close()


def format_table(results: list[dict]) -> str:
    ok = [r for r in results if "phases" in r]
    lines = [f"  {'phase (ms)':46}{'median':>9}{'min':>9}{'max':>9}{'n':>4}"]
    for label, *_ in PHASES:
        values = [r["phases"][label] for r in ok if r["phases"].get(label) is not None]
        if values:
            cells = [f"{statistics.median(values):.0f}", f"{min(values):.0f}", f"{max(values):.0f}"]
        else:
            cells = ["-", "-", "-"]
        lines.append(f"  {label:46}{cells[0]:>9}{cells[1]:>9}{cells[2]:>9}{len(values):>4}")
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        lines.append(f"  failed repetitions: {len(failed)}: {failed}")
    page_errors = [e for r in ok for e in r["errors"]]
    if page_errors:
        lines.append(f"  page errors: {page_errors[:5]}")
    return "\n".join(lines)


def make_meetings(n: int) -> list[dict]:
    from signaling.rules import Kind
    from signaling.services import create_meeting

    meetings = []
    for i in range(n):
        meeting, key = create_meeting(Kind.CONSULTATION, f"Bench join {i}")
        meetings.append({"code": meeting.code, "key": key})
    return meetings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.meet_join", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repeat", type=int, default=5, help="repetitions")
    parser.add_argument("--timeout", type=float, default=30.0, help="per step, s")
    add_server_options(parser, "extra environment of the daphne process", postgres=True)
    parser.add_argument("-v", "--verbose", action="store_true", help="every phase of every run")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    args = parser.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        parser.error(f"{CHROMIUM} is missing (apt-get install chromium, or set CHROMIUM_PATH)")

    stop_on_signals()
    run = Invocation(args, "meet-join", "meet-logs")
    database = BenchDatabase(args.postgres_url)
    header = (
        f"bench.meet_join  {run.started.isoformat(timespec='seconds')}\n"
        f"{machine_line()}\n"
        f"setup: 1 daphne, {CHROMIUM} (headless, fake camera and microphone) x 2, "
        f"{args.repeat} repetitions, database {database.name}, redis prefix {run.prefix}"
    )
    print(header, flush=True)
    report = run.report(
        {"nproc": os.cpu_count(), "platform": platform.platform()},
        database=database.name,
        redis_prefix=run.prefix,
        results=[],
    )
    with run.guard(report, database):
        database.create()
        env = server_env(args.redis_url, run.prefix, args.server_env, database_url=database.url)
        database.migrate(env)
        setup_django(env)
        meetings = make_meetings(args.repeat)
        server = Daphnes(1, env, run.log_dir, label="join")
        try:
            server.wait_ready()
            base = f"http://{HOST}:{server.ports[0]}"
            asyncio.run(run_browsers(base, meetings, args.timeout, args.verbose, report["results"]))
        finally:
            server.stop()
    run.print_summary(
        report,
        header,
        format_table(report["results"]),
        "\nopen link: the resident page's navigation start; marks are taken in the pages "
        "(performance.timeOrigin + performance.now()); first remote frame: "
        "requestVideoFrameCallback on the clerk's video. 'without the wait': open -> queued "
        "+ Let in -> admitted + admitted -> frame.",
        database,
    )
    return run.exit_code(report)


if __name__ == "__main__":
    sys.exit(main())
