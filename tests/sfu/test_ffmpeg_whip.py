"""FFmpeg publishes over WHIP to a real daphne, an aiortc player watches
over WHEP and decodes what arrives (issue 5's interoperability test)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from django.conf import settings

from media.models import Stream
from media.sfu import hooks
from tests.conftest import url_of_test_database
from tests.sfu.peers import NO_STUN

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def http(method: str, url: str, body: str | None = None, key: str | None = None):
    request = urllib.request.Request(url, data=body.encode() if body else None, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/sdp")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def ffmpeg_whip(url: str, key: str, seconds: int, video: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            settings.FFMPEG_BINARY,
            *("-hide_banner", "-loglevel", "warning", "-re"),
            *("-f", "lavfi", "-i", "testsrc2=size=640x480:rate=30"),
            *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"),
            *("-t", str(seconds), *video, "-c:a", "libopus", "-ac", "2"),
            *("-authorization", key, "-f", "whip", url),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def watch(base: str, seconds: float) -> dict:
    """An aiortc WHEP player: decoded video frames (with their size) and audio frames."""
    # The player must offer H.264 High (libx264's default) to watch it; aiortc
    # alone offers only the baseline profiles its encoder makes. (Debian's
    # Chromium offers no High either: tests/sfu/test_browser_whep.py.)
    hooks.accept_h264_profiles()
    pc = RTCPeerConnection(NO_STUN)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    got = {"video": 0, "audio": 0, "sizes": set(), "first": None}
    started = time.monotonic()

    async def consume(track):
        try:
            while True:
                frame = await track.recv()
                got[track.kind] += 1
                if track.kind == "video":
                    got["sizes"].add((frame.width, frame.height))
                    got["first"] = got["first"] or time.monotonic() - started
        except MediaStreamError:
            pass

    tasks = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, answer = await asyncio.to_thread(
        http, "POST", f"{base}/whep/rada", pc.localDescription.sdp
    )
    assert status == 201, answer
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await asyncio.sleep(seconds)
    got["location"] = headers["Location"]
    got["codec"] = next(
        line.split(" ", 1)[1].split("/")[0]
        for line in answer.splitlines()
        if line.startswith("a=rtpmap:") and "/90000" in line
    )
    for task in tasks:
        task.cancel()
    await pc.close()
    return got


async def start_hub(hub_processes) -> tuple[str, str]:
    """A stream and a daphne serving it: its URL and the publish key."""
    stream = Stream(slug="rada", title="Sesja")
    key, _ = stream.set_keys()
    await stream.asave()
    port = hub_processes.daphne(
        {
            "DATABASE_URL": url_of_test_database(),
            "MEDIA_MODE": "embedded",
            "MEDIA_ICE_ADDRESSES": "127.0.0.1",
            "MEDIA_OFFERS_PER_IP_PER_MINUTE": "1000",  # the tests poll until the stream is up
        }
    )
    return f"http://127.0.0.1:{port}", key


async def wait_published(base: str, timeout: float = 10) -> None:
    """Until WHEP stops answering 404 no_publisher."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = await asyncio.to_thread(http, "POST", f"{base}/whep/rada", "v=0\r\n")
        if status != 404:
            return
        assert time.monotonic() < deadline, f"never published: {body}"
        await asyncio.sleep(0.2)


async def test_ffmpeg_publishes_over_whip_and_a_whep_player_decodes_it(
    hub_processes, async_db_closed
):
    """FFmpeg's WHIP muxer sends H.264 only (it refuses VP8), with libx264's
    default High profile; WebRTC has no B-frames, so FFmpeg needs ``-bf 0``."""
    base, key = await start_hub(hub_processes)
    video = ["-c:v", "libx264", "-bf", "0", "-g", "30"]
    publisher = ffmpeg_whip(f"{base}/whip/rada", key, 12, video)
    try:
        await wait_published(base)
        got = await watch(base, 5)
    finally:
        _, errors = publisher.communicate(timeout=30)
    assert publisher.returncode == 0, errors
    assert got["codec"] == "H264"
    assert got["sizes"] == {(640, 480)}
    assert got["video"] >= 100, got  # ~150 in 5 s at 30 fps
    assert got["audio"] >= 150, got  # 20 ms Opus frames
    assert got["first"] < 2.0, got
    # FFmpeg ended its session with DELETE when it finished: nothing is published
    status, _, body = await asyncio.to_thread(http, "POST", f"{base}/whep/rada", "v=0\r\n")
    assert status == 404 and "no_publisher" in body
