"""WHIP and WHEP from a real headless Chromium (Debian's, via Playwright)
against a real daphne with the forwarding unit embedded.

A player page on another origin (a second loopback HTTP server) watches an
FFmpeg publication over WHEP with nothing but ``fetch()`` and
``RTCPeerConnection``: CORS lets it POST its offer (after a preflight), read
``Location`` and DELETE it. And Chromium publishes its fake camera and
microphone over WHIP while an aiortc player decodes them.

The unit's candidates are 127.0.0.1 only. Chromium pairs them with its own
host candidates on any interface; on a machine with nothing but loopback it
gathers none unless ``--allow-loopback-in-peer-connection`` is given *and* the
page may enumerate interfaces (camera/microphone permission), hence both."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import FAKE_MEDIA_ARGS, headless_chromium
from tests.sfu.test_ffmpeg_whip import ffmpeg_whip, http, start_hub, wait_published, watch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

BROWSER_ARGS = (*FAKE_MEDIA_ARGS, "--allow-loopback-in-peer-connection")

# Plain WHIP/WHEP clients, the page's own script and no library: whep() and
# whip() resolve with the session's Location, hangUp() DELETEs it.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>WHEP player</title></head>
<body>
<video id="player" muted autoplay playsinline></video>
<script>
"use strict";
window.pageLog = [];
const log = (line) => window.pageLog.push(`${Math.round(performance.now())} ${line}`);

// All candidates in the offer (the server takes no trickle), then the answer.
async function negotiate(pc, endpoint, headers) {
  pc.addEventListener("connectionstatechange", () => log(`connection ${pc.connectionState}`));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    setTimeout(resolve, 5000);
    if (pc.iceGatheringState === "complete") resolve();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
  const sdp = pc.localDescription.sdp;
  log(`offer with ${sdp.split("a=candidate:").length - 1} candidates`);
  const response = await fetch(endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/sdp", ...headers },
    body: sdp,
  });
  const answer = await response.text();
  log(`POST ${endpoint}: ${response.status}`);
  if (response.status !== 201) throw new Error(`${response.status} ${answer}`);
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  const location = response.headers.get("Location");  // null unless CORS exposes it
  window.session = { pc, url: location && new URL(location, endpoint).href, headers };
  return location;
}

// WHEP: receive only, shown in #player.
async function whep(endpoint) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.addEventListener("track", (event) => {
    stream.addTrack(event.track);
    document.getElementById("player").srcObject = stream;
  });
  return negotiate(pc, endpoint, {});
}

// WHIP: the (fake) camera and microphone, send only.
async function whip(endpoint, key) {
  const media = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const pc = new RTCPeerConnection({ iceServers: [] });
  for (const track of media.getTracks()) {
    pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
  }
  return negotiate(pc, endpoint, { Authorization: `Bearer ${key}` });
}

// Ends the session with DELETE on its Location: the status.
async function hangUp() {
  const { pc, url, headers } = window.session;
  const response = await fetch(url, { method: "DELETE", headers });
  log(`DELETE ${url}: ${response.status}`);
  pc.close();
  return response.status;
}

// The codecs of what this page sends and receives, and the ICE pair.
async function rtpStats() {
  const stats = await window.session.pc.getStats();
  const out = { codecs: {}, pair: null };
  stats.forEach((report) => {
    if (report.type === "inbound-rtp" || report.type === "outbound-rtp") {
      out.codecs[`${report.type} ${report.kind}`] = stats.get(report.codecId)?.mimeType;
    }
    if (report.type === "candidate-pair" && report.nominated && report.state === "succeeded") {
      const [local, remote] = [report.localCandidateId, report.remoteCandidateId];
      out.pair = `${stats.get(local).address} -> ${stats.get(remote).address}`;
    }
  });
  return out;
}
</script>
</body></html>
"""

PLAYING = """
() => {
  const video = document.getElementById("player");
  return video.videoWidth > 0 && !video.paused
    && video.getVideoPlaybackQuality().totalVideoFrames > 0;
}
"""

# The picture's size and how many frames it shows in 2 s.
FRAMES_IN_2S = """
async () => {
  const video = document.getElementById("player");
  const before = video.getVideoPlaybackQuality().totalVideoFrames;
  await new Promise((resolve) => setTimeout(resolve, 2000));
  return {
    width: video.videoWidth, height: video.videoHeight,
    frames: video.getVideoPlaybackQuality().totalVideoFrames - before,
  };
}
"""

STATE = """
() => JSON.stringify({
  connection: window.session?.pc.connectionState, log: window.pageLog,
  video: (({ videoWidth, videoHeight, paused, readyState }) =>
    ({ videoWidth, videoHeight, paused, readyState }))(document.getElementById("player")),
})
"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def page_origin():
    """The page's own origin: another loopback port than daphne's."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


async def open_page(browser, origin: str):
    context = await browser.new_context()
    # lets the page enumerate network interfaces (see the module's docstring)
    await context.grant_permissions(["camera", "microphone"], origin=origin)
    page = await context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"error: {error}"))
    await page.goto(f"{origin}/player.html")
    return page, console


async def until(page, script: str, console: list[str], timeout: float = 10):
    deadline = time.monotonic() + timeout
    while True:
        value = await page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            state = await page.evaluate(STATE)
            raise AssertionError(f"timed out: {script.strip()[:60]}\n{state}\nconsole: {console}")
        await asyncio.sleep(0.1)


async def test_a_browser_on_another_origin_watches_ffmpeg_over_whep(
    hub_processes, page_origin, async_db_closed
):
    """Chromium decodes H.264 in software in the profiles libwebrtc lists only
    (baseline, constrained baseline, Main, High 4:4:4): its offer has no High,
    libx264's default, which the unit refuses it with 422 no_common_codec.
    So FFmpeg sends Main here."""
    base, key = await start_hub(hub_processes)
    video = ["-c:v", "libx264", "-profile:v", "main", "-bf", "0", "-g", "30"]
    publisher = ffmpeg_whip(f"{base}/whip/rada", key, 10, video)
    try:
        await wait_published(base)
        async with headless_chromium(BROWSER_ARGS) as browser:
            page, console = await open_page(browser, page_origin)
            started = time.monotonic()
            location = await page.evaluate("(url) => whep(url)", f"{base}/whep/rada")
            await until(page, PLAYING, console)
            first = time.monotonic() - started
            shown = await page.evaluate(FRAMES_IN_2S)
            stats = await page.evaluate("() => rtpStats()")
            deleted = await page.evaluate("() => hangUp()")
            log = await page.evaluate("() => window.pageLog")
    finally:
        _, errors = publisher.communicate(timeout=30)
    assert location and location.startswith("/whep/rada/"), (location, log)
    assert (shown["width"], shown["height"]) == (640, 480), shown
    assert shown["frames"] >= 30, shown  # ~60 in 2 s at 30 fps
    assert first < 5, (first, log)
    assert stats["codecs"]["inbound-rtp video"] == "video/H264", stats
    assert stats["codecs"]["inbound-rtp audio"] == "audio/opus", stats
    assert deleted == 200, log
    assert publisher.returncode == 0, errors


async def test_a_browser_publishes_over_whip_and_an_aiortc_player_decodes_it(
    hub_processes, page_origin, async_db_closed
):
    """Chromium sends VP8 (its first codec); its fake camera is 640x480 at 20 fps."""
    base, key = await start_hub(hub_processes)
    async with headless_chromium(BROWSER_ARGS) as browser:
        page, console = await open_page(browser, page_origin)
        location = await page.evaluate("([url, key]) => whip(url, key)", [f"{base}/whip/rada", key])
        await wait_published(base)
        got = await watch(base, 4)
        stats = await page.evaluate("() => rtpStats()")
        deleted = await page.evaluate("() => hangUp()")
        log = await page.evaluate("() => window.pageLog")
    assert location and location.startswith("/whip/rada/"), (location, log)
    assert stats["codecs"]["outbound-rtp video"] == "video/VP8", stats
    assert got["codec"] == "VP8", got
    assert (640, 480) in got["sizes"], got
    assert got["video"] >= 50, got  # ~75 in 4 s at 20 fps
    assert got["audio"] >= 150, got  # 20 ms Opus frames
    assert got["first"] < 2.0, got
    assert deleted == 200, log
    # the publication is over
    status, _, body = await asyncio.to_thread(http, "POST", f"{base}/whep/rada", "v=0\r\n")
    assert status == 404 and "no_publisher" in body, (status, body)
