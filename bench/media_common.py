"""What the media benchmarks (bench.sfu, bench.janus_ref) share: the synthetic
counter video, the aiortc client set-up on 127.0.0.1 without STUN, and the
Markdown result tables.

The publisher's :class:`CounterTrack` is 640x480 at 30 fps, a 16-bit frame
counter in the top half and moving noise below; :func:`read_counter` reads the
counter back from a decoded frame.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import aioice.ice
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, VideoStreamTrack

from bench.common import HOST

# The synthetic video.
W, H, FPS = 640, 480, 30
BITS = 16  # counter bits, one column each
COLW = W // BITS
SAMPLE_ROWS = (H // 8, H // 4, 3 * H // 8)  # rows of the counter half read (majority vote)


# =====================================================================================
# aiortc on 127.0.0.1, without STUN
# =====================================================================================


def _loopback_addresses(use_ipv4: bool = True, use_ipv6: bool = False) -> list[str]:
    return [HOST]


def loopback_only() -> None:
    """aiortc gathers host candidates on 127.0.0.1 only in this process (aioice
    leaves loopback out of its list), and so binds its sockets there."""
    aioice.ice.get_host_addresses = _loopback_addresses


@contextlib.contextmanager
def loopback_candidates() -> Iterator[None]:
    """:func:`loopback_only` inside the block, aioice's own address list after it.

    It affects every peer connection that gathers in this process meanwhile.
    """
    original = aioice.ice.get_host_addresses
    loopback_only()
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


def rtc_config() -> RTCConfiguration:
    """No STUN (aiortc's default asks stun.l.google.com)."""
    return RTCConfiguration(iceServers=[])


def new_peer_connection() -> RTCPeerConnection:
    """A peer connection with :func:`rtc_config`."""
    return RTCPeerConnection(rtc_config())


def vp8_only(transceiver) -> None:
    """The transceiver offers or accepts VP8 (and its RTX) only."""
    transceiver.setCodecPreferences(
        [
            c
            for c in RTCRtpSender.getCapabilities("video").codecs
            if c.mimeType.lower() in ("video/vp8", "video/rtx")
        ]
    )


async def bytes_sent(sender) -> int:
    """The RTP payload bytes an ``RTCRtpSender`` has sent so far."""
    stats = await sender.getStats()
    return sum(s.bytesSent for s in stats.values() if s.type == "outbound-rtp")


# =====================================================================================
# The counter video
# =====================================================================================


class CounterTrack(VideoStreamTrack):
    """640x480 at 30 fps: the frame number in the top half, moving noise below.

    The counter is :data:`BITS` columns, white (Y=235) for 1 and black (Y=16) for
    0, most significant bit on the left. The noise is a window sliding through a
    larger random buffer by an odd step, which motion search predicts only in
    part, so the encoder works at its target bit rate. :attr:`count` is the
    number of frames made; :attr:`sent` maps each frame number (the counter) to
    the monotonic time it was made.
    """

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.sent: dict[int, float] = {}
        self.half = W * (H // 2)
        self.noise = os.urandom(self.half * 3)
        self.chroma = bytes([128]) * (W // 2 * H // 2)
        self.columns = (b"\x10" * COLW, b"\xeb" * COLW)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        n = self.count % (1 << BITS)
        row = b"".join(self.columns[(n >> (BITS - 1 - c)) & 1] for c in range(BITS))
        offset = (self.count * (3 * W + 5)) % (len(self.noise) - self.half)
        frame = av.VideoFrame(W, H, "yuv420p")
        frame.planes[0].update(row * (H // 2) + self.noise[offset : offset + self.half])
        frame.planes[1].update(self.chroma)
        frame.planes[2].update(self.chroma)
        frame.pts, frame.time_base = pts, time_base
        self.sent[n] = time.monotonic()
        self.count += 1
        return frame


def read_counter(frame: av.VideoFrame) -> int | None:
    """The counter of a decoded :class:`CounterTrack` frame (None if not 640x480)."""
    if frame.width != W or frame.height != H:
        return None
    plane = frame.planes[0]
    luma = memoryview(plane)
    stride = plane.line_size
    n = 0
    for c in range(BITS):
        x = c * COLW + COLW // 2
        ones = sum(luma[y * stride + x] > 128 for y in SAMPLE_ROWS)
        n = (n << 1) | (ones * 2 > len(SAMPLE_ROWS))
    return n


# =====================================================================================
# Report
# =====================================================================================


def fmt(value, spec: str) -> str:
    """``spec.format(value)``, or "—" for None."""
    return "—" if value is None else spec.format(value)


def markdown(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of already formatted cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def column_table(columns, results: list[dict]) -> str:
    """A Markdown table with a column per ``(title, key, format)`` of ``columns``
    and a row per result dict (a missing or None value is "—")."""
    return markdown(
        [title for title, _, _ in columns],
        [[fmt(result.get(key), spec) for _, key, spec in columns] for result in results],
    )
