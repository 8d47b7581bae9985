"""aiortc peers for the media tests: a publisher whose video frames carry a
counter, and subscribers that decode every frame and read it back."""

from __future__ import annotations

import asyncio
import fractions
import math
import random
import time

from aiortc import (
    AudioStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

NO_STUN = RTCConfiguration(iceServers=[])  # aiortc's default asks Google's STUN server
W, H = 320, 240
BITS = 16
COLUMN = W // BITS


class CounterTrack(VideoStreamTrack):
    """Frames numbered 0, 1, 2…: bit *i* of the number is column *i* of the top
    half, black or white, readable after lossy compression; the bottom half is
    noise, so the encoder has realistic work."""

    def __init__(self, fps: int = 30):
        super().__init__()
        self.fps = fps
        self.count = 0
        self._start: float | None = None
        self._rng = random.Random(7)

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.count / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = VideoFrame(W, H, "yuv420p")
        luma = frame.planes[0]
        row = b"".join(
            (b"\xeb" if self.count >> bit & 1 else b"\x10") * COLUMN for bit in range(BITS)
        )
        top = (row + bytes(luma.line_size - W)) * (H // 2)
        noise = self._rng.randbytes(luma.line_size * (H - H // 2))
        luma.update(top + noise)
        for plane in frame.planes[1:]:
            plane.update(b"\x80" * plane.buffer_size)
        frame.pts = self.count * 90000 // self.fps
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame


def read_counter(frame: VideoFrame) -> int:
    gray = frame.reformat(format="gray") if frame.format.name != "gray" else frame
    plane = gray.planes[0]
    y = gray.height // 4
    line = bytes(plane)[y * plane.line_size : y * plane.line_size + gray.width]
    column = gray.width // BITS
    value = 0
    for bit in range(BITS):
        if line[bit * column + column // 2] > 127:
            value |= 1 << bit
    return value


class ToneTrack(AudioStreamTrack):
    """A loud 440 Hz tone (the silence aiortc's AudioStreamTrack sends has no speaker)."""

    async def recv(self):
        frame = await super().recv()
        samples = frame.samples
        start = frame.pts or 0
        tone = bytearray()
        for i in range(samples):
            value = int(12000 * math.sin(2 * math.pi * 440 * (start + i) / frame.sample_rate))
            tone += value.to_bytes(2, "little", signed=True)
        frame.planes[0].update(bytes(tone) * len(frame.layout.channels))
        return frame


class Publisher:
    """An aiortc publisher; counts the keyframes its encoder was asked for."""

    def __init__(self, video_codec: str = "video/VP8", audio: bool = True, tone: bool = False):
        self.pc = RTCPeerConnection(NO_STUN)
        self.video = CounterTrack()
        self.keyframe_requests = 0
        sender = self.pc.addTrack(self.video)
        transceiver = next(t for t in self.pc.getTransceivers() if t.sender is sender)
        caps = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences(
            [c for c in caps if c.mimeType.lower() in (video_codec.lower(), "video/rtx")]
        )
        original = sender._send_keyframe

        def counting():
            self.keyframe_requests += 1
            original()

        sender._send_keyframe = counting
        if audio:
            self.pc.addTrack(ToneTrack() if tone else AudioStreamTrack())

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


class Subscriber:
    """A receive-only peer that decodes what it gets and reads the counters."""

    def __init__(self, audio: bool = True):
        self.pc = RTCPeerConnection(NO_STUN)
        self.pc.addTransceiver("video", direction="recvonly")
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.counters: list[int] = []
        self.frame_times: list[float] = []
        self.audio_frames = 0
        self.codec: str | None = None
        self.first_frame = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

        @self.pc.on("track")
        def on_track(track):
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.counters.append(read_counter(frame))
                    self.frame_times.append(time.monotonic())
                    self.first_frame.set()
                else:
                    self.audio_frames += 1
        except MediaStreamError:
            return

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        for line in sdp.splitlines():
            if line.startswith("a=rtpmap:") and "/90000" in line:
                self.codec = line.split(" ", 1)[1].split("/")[0]
                break

    def rate(self, seconds: float) -> float:
        """Frames decoded per second over the last *seconds*."""
        cutoff = time.monotonic() - seconds
        return sum(1 for t in self.frame_times if t >= cutoff) / seconds

    def in_order(self) -> bool:
        return all(b > a for a, b in zip(self.counters, self.counters[1:], strict=False))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


async def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()
