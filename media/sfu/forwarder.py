"""Selective forwarding of encoded frames: no decoding, no re-encoding.

One :class:`Forwarder` per published track. It replaces the publisher
receiver's jitter buffer with :class:`ForwardingJitterBuffer`, which still
reorders packets, asks for retransmissions and assembles frames, but hands each
complete encoded frame to the forwarder instead of the decoder thread. The
forwarder wraps the frame once as an ``av.Packet`` (pts = the publisher's RTP
timestamp) and queues the same object for every :class:`ForwardedTrack`; an
``RTCRtpSender`` given a packet only packetizes it (``encoder.pack``), so a
subscriber costs RTP framing, SRTP and a send, never a codec.

Keyframes: a subscriber starts (and restarts after falling behind or after the
buffer lost packets) by dropping delta frames until a keyframe; it asks the
publisher for one when its sender first pulls, and every PLI/FIR a subscriber
sends is passed up, at most one per :data:`KEYFRAME_INTERVAL` per track
(:class:`KeyframeLimiter`).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Callable

import av
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import parse_h264_profile_level_id

from media.sfu import hooks

log = logging.getLogger(__name__)

KEYFRAME_INTERVAL = 0.5  # seconds between keyframe requests sent to one publisher
QUEUE_MAX = 64  # frames a subscriber may fall behind before it is resynced on a keyframe


def is_keyframe(codec_name: str, data: bytes) -> bool:
    """Whether a depayloaded frame can be decoded on its own.

    VP8: frame tag bit 0 is 0 for a key frame (RFC 6386 §9.1). H.264: the
    depayloader produces Annex B; a frame with an IDR slice (type 5) or an SPS
    (type 7) starts a picture. Audio frames always can."""
    name = codec_name.lower()
    if name == "vp8":
        return bool(data) and data[0] & 0x01 == 0
    if name == "h264":
        start = data.find(b"\x00\x00\x01")
        while start != -1 and start + 3 < len(data):
            if data[start + 3] & 0x1F in (5, 7):
                return True
            start = data.find(b"\x00\x00\x01", start + 3)
        return False
    return True


def same_format(a, b) -> bool:
    """Whether codec *a* describes the bytes *b* produces: same codec and, for
    H.264, the same profile and packetization mode (a decoder negotiated for
    baseline may refuse High)."""
    if a.mimeType.lower() != b.mimeType.lower():
        return False
    if a.mimeType.lower() != "video/h264":
        return True

    def profile(codec):
        return parse_h264_profile_level_id(str(codec.parameters.get("profile-level-id", "42e01f")))[
            0
        ]

    def mode(codec):
        return str(codec.parameters.get("packetization-mode", "0"))

    try:
        return profile(a) == profile(b) and mode(a) == mode(b)
    except ValueError:
        return False


class KeyframeLimiter:
    """At most one request per *interval*; a request inside the interval is
    not lost but sent once the interval has passed (one trailing request)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self.last = -interval
        self.pending = False

    def ask(self) -> float | None:
        """0 to send now, the seconds to wait for a trailing send, or None
        when a trailing send is already scheduled."""
        wait = self.last + self.interval - self.clock()
        if wait <= 0:
            self.last = self.clock()
            self.pending = False
            return 0.0
        if self.pending:
            return None
        self.pending = True
        return wait

    def fire(self) -> bool:
        """The trailing send is due: whether to send it."""
        if not self.pending:
            return False
        self.pending = False
        self.last = self.clock()
        return True


class ForwardedTrack(MediaStreamTrack):
    """One subscriber's copy of a published track; ``recv()`` yields ``av.Packet``."""

    def __init__(self, forwarder: Forwarder) -> None:
        super().__init__()
        self.kind = forwarder.kind
        self.forwarder = forwarder
        self.queue: asyncio.Queue = asyncio.Queue()
        self.need_keyframe = forwarder.kind == "video"
        # The sender pulls only once DTLS is up; frames queued before that
        # would go out as a stale burst, so nothing is queued until then.
        self.started = False
        self.sent = 0
        self.dropped = 0
        self.audio_level: int | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if not self.started:
            self.started = True
            self.forwarder.request_keyframe()
        item = await self.queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        packet, self.audio_level = item
        self.sent += 1
        return packet

    def offer(self, packet: av.Packet, key: bool, level: int | None) -> None:
        if not self.started or self.readyState != "live":
            return
        if self.need_keyframe:
            if not key:
                self.dropped += 1
                return
            self.need_keyframe = False
        if self.queue.qsize() >= QUEUE_MAX:
            # Fallen behind (a slow link or a stalled reader): start again
            # from the next keyframe rather than deliver seconds-old video.
            self.dropped += self.queue.qsize() + 1
            while not self.queue.empty():
                self.queue.get_nowait()
            if self.kind == "video":
                self.need_keyframe = True
                self.forwarder.request_keyframe()
            return
        self.queue.put_nowait((packet, level))

    def end(self) -> None:
        """The publisher left: the reader gets MediaStreamError after what is queued."""
        self.queue.put_nowait(None)

    def stop(self) -> None:
        super().stop()
        self.forwarder.subscribers.discard(self)


class ForwardingJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, handing complete frames to the forwarder; the
    receiver's decoder thread is given nothing and stays idle."""

    def __init__(self, forwarder: Forwarder, **kwargs) -> None:
        super().__init__(**kwargs)
        self.forwarder = forwarder

    def add(self, packet):
        forwarder = self.forwarder
        forwarder.media_ssrc = packet.ssrc  # after RTX unwrapping: the media SSRC
        level = packet.extensions.audio_level
        if level is not None:
            forwarder.on_audio_level(level[1])
        lost, frame = super().add(packet)
        if lost:
            forwarder.resync()
        if frame is not None:
            forwarder.on_frame(packet.payload_type, frame)
        return lost, None


class Forwarder:
    """Fans one published track out to its subscribers as encoded frames."""

    def __init__(
        self, receiver: RTCRtpReceiver, kind: str, *, source: str = "", codecs: list | None = None
    ) -> None:
        self.receiver = receiver
        self.codecs = codecs or []  # as negotiated with the publisher
        self.kind = kind
        self.source = source  # who publishes it, for events and stats
        self.subscribers: set[ForwardedTrack] = set()
        self.media_ssrc: int | None = None
        self.audio_level: int | None = None  # last RFC 6464 level, -dBov (0 loudest, 127 silence)
        self.level_listeners: list[Callable[[str, int], None]] = []
        self.limiter = KeyframeLimiter(KEYFRAME_INTERVAL)
        self.frames = 0
        self.keyframes = 0
        self.bytes = 0
        self.keyframe_requests = 0
        self._requests: set[asyncio.Task] = set()
        self.last_frame_at: float | None = None
        if kind == "video":
            buffer = ForwardingJitterBuffer(self, capacity=512, is_video=True)
        else:
            # aiortc's audio buffer prefetches 4 frames (80 ms) for its
            # decoder; forwarding passes frames on as they complete.
            buffer = ForwardingJitterBuffer(self, capacity=16, prefetch=0)
        hooks.set_jitter_buffer(receiver, buffer)
        hooks.without_decoder(receiver)

    @property
    def codec(self):
        """The negotiated media codec (not RTX)."""
        for codec in self.codecs or hooks.receiver_codecs(self.receiver).values():
            if codec.name.lower() != "rtx":
                return codec
        return None

    # media path ---------------------------------------------------------------
    def on_frame(self, payload_type: int, frame: JitterFrame) -> None:
        codec = hooks.receiver_codecs(self.receiver).get(payload_type)
        if codec is None:
            return
        key = is_keyframe(codec.name, frame.data)
        self.frames += 1
        self.bytes += len(frame.data)
        self.last_frame_at = time.monotonic()
        if key and self.kind == "video":
            self.keyframes += 1
        packet = av.Packet(frame.data)
        # The raw RTP timestamp; each sender adds its own random origin.
        packet.pts = frame.timestamp
        packet.time_base = fractions.Fraction(1, codec.clockRate)
        level = self.audio_level if self.kind == "audio" else None
        for track in list(self.subscribers):
            track.offer(packet, key, level)

    def on_audio_level(self, level: int) -> None:
        self.audio_level = level
        for listener in self.level_listeners:
            listener(self.source, level)

    def resync(self) -> None:
        """The buffer dropped packets: decoders downstream need a keyframe."""
        if self.kind == "video":
            for track in self.subscribers:
                track.need_keyframe = True
            self.request_keyframe()

    def close(self) -> None:
        for track in list(self.subscribers):
            track.end()
        self.subscribers.clear()
        self.level_listeners.clear()

    # subscribers --------------------------------------------------------------
    def track(self) -> ForwardedTrack:
        """A new subscriber copy, for a sender or any other reader (a recorder)."""
        track = ForwardedTrack(self)
        self.subscribers.add(track)
        return track

    def attach(self, pc) -> ForwardedTrack:
        """Add a send-only transceiver carrying this track to *pc*.

        Call it before ``pc.setRemoteDescription(offer)``: aiortc negotiates
        codecs there and reuses an unassociated transceiver of the same kind,
        so pinning the publisher's codec here keeps the subscriber from
        choosing another codec than the bytes are in."""
        track = self.track()
        transceiver = pc.addTransceiver(track, direction="sendonly")
        codec = self.codec
        if codec is not None:
            caps = RTCRtpSender.getCapabilities(self.kind).codecs
            transceiver.setCodecPreferences(
                [c for c in caps if same_format(c, codec) or c.mimeType.lower().endswith("/rtx")]
            )
        sender = transceiver.sender
        hooks.on_keyframe_request(sender, self.request_keyframe)
        if self.kind == "audio":
            # aiortc writes the audio-level extension only for audio it encoded.
            async def with_level(original, codec):
                encoded = await original(codec)
                if encoded is not None and track.audio_level is not None:
                    encoded.audio_level = -track.audio_level
                return encoded

            hooks.wrap_next_encoded_frame(sender, with_level)
        return track

    # keyframe requests ----------------------------------------------------------
    def request_keyframe(self) -> None:
        if self.kind != "video" or self.media_ssrc is None:
            return  # nothing received yet: the first frame will be a keyframe
        wait = self.limiter.ask()
        if wait == 0:
            self._send_pli()
        elif wait is not None:
            asyncio.get_running_loop().call_later(wait, self._trailing_pli)

    def _trailing_pli(self) -> None:
        if self.limiter.fire():
            self._send_pli()

    def _send_pli(self) -> None:
        self.keyframe_requests += 1
        task = asyncio.ensure_future(hooks.send_pli(self.receiver, self.media_ssrc))
        self._requests.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._requests.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("keyframe request failed: %r", task.exception())
