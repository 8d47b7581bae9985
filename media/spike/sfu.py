"""Spike: frame-level selective forwarding on aiortc 1.16 (no decode / no re-encode).

Hooks (private, pinned to aiortc 1.16):
  * RTCRtpReceiver._RTCRtpReceiver__jitter_buffer  -> ForwardingJitterBuffer
    (assembled encoded frames are taken here and never reach the decoder thread)
  * RTCRtpReceiver._send_rtcp_pli(ssrc)            -> upstream keyframe request
  * RTCRtpSender._send_keyframe (instance attr)     -> subscriber PLI/FIR hook
"""

import asyncio
import fractions
import logging
import time
from typing import Optional

import av
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger("sfu")

PLI_MIN_INTERVAL = 0.5  # seconds between upstream keyframe requests
SUB_QUEUE_MAX = 64  # frames buffered per subscriber before we drop + resync


def is_keyframe(codec_name: str, data: bytes) -> bool:
    name = codec_name.lower()
    if name == "vp8":
        # RFC 6386 9.1: frame tag bit 0 (P) == 0 -> key frame
        return len(data) > 0 and (data[0] & 0x01) == 0
    if name == "h264":
        # depayloaded data is Annex B (00 00 00 01 NAL ...); IDR = 5, SPS = 7
        i = data.find(b"\x00\x00\x01")
        while i != -1 and i + 3 < len(data):
            if data[i + 3] & 0x1F in (5, 7):
                return True
            i = data.find(b"\x00\x00\x01", i + 3)
        return False
    return True  # audio: every frame is independently decodable


class ForwardedTrack(MediaStreamTrack):
    """Per-subscriber track whose recv() yields av.Packet -> RTCRtpSender only packs."""

    def __init__(self, forwarder: "Forwarder") -> None:
        super().__init__()
        self.kind = forwarder.kind
        self._fwd = forwarder
        self._queue: asyncio.Queue = asyncio.Queue()
        self.need_keyframe = forwarder.kind == "video"
        self.started = False  # RTCRtpSender pulls only once DTLS is up
        self.dropped = 0
        self.last_level = None

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if not self.started:
            # don't queue frames while ICE/DTLS is still connecting (would be sent as a
            # stale burst); ask for the keyframe when the sender actually starts pulling
            self.started = True
            self._fwd.request_keyframe()
        item = await self._queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        pkt, self.last_level = item
        return pkt

    def stop(self) -> None:
        super().stop()
        self._fwd.subscribers.discard(self)


class ForwardingJitterBuffer(JitterBuffer):
    """Drop-in for the receiver's jitter buffer: hands complete frames to the
    Forwarder and returns None so the receiver's decoder thread stays idle."""

    def __init__(self, forwarder: "Forwarder", **kw) -> None:
        super().__init__(**kw)
        self._fwd = forwarder

    def add(self, packet):
        self._fwd.media_ssrc = packet.ssrc  # after RTX unwrap -> the real media SSRC
        if packet.extensions.audio_level is not None:
            # RFC 6464 (vad, -dBov): input for active-speaker detection, no decoding needed
            self._fwd.audio_level = packet.extensions.audio_level
        pli_flag, frame = super().add(packet)
        if pli_flag:
            # the buffer discarded packets: downstream decoders need a fresh keyframe
            self._fwd.resync_all()
        if frame is not None:
            self._fwd.on_frame(packet.payload_type, frame)
        return pli_flag, None


class Forwarder:
    """One per published track (publisher receiver). Fans out encoded frames."""

    def __init__(self, receiver: RTCRtpReceiver, kind: str) -> None:
        self.receiver = receiver
        self.kind = kind
        self.subscribers: set[ForwardedTrack] = set()
        self.media_ssrc: Optional[int] = None
        self.audio_level = None  # last (vad, level) from the publisher's RTP header extension
        self._last_pli = 0.0
        self._pli_pending = False
        self.frames_in = 0
        self.keyframes_in = 0
        self.plis_sent = 0
        if kind == "video":
            jb = ForwardingJitterBuffer(self, capacity=512, is_video=True)
        else:
            # aiortc's audio buffer uses prefetch=4 (80 ms extra latency); not needed for forwarding
            jb = ForwardingJitterBuffer(self, capacity=16, prefetch=0)
        receiver._RTCRtpReceiver__jitter_buffer = jb  # must happen before RTP arrives

    # --- media path -------------------------------------------------------
    def on_frame(self, payload_type: int, frame: JitterFrame) -> None:
        codec = self.receiver._RTCRtpReceiver__codecs.get(payload_type)
        if codec is None:
            return
        self.frames_in += 1
        key = is_keyframe(codec.name, frame.data)
        if key and self.kind == "video":
            self.keyframes_in += 1
        pkt = av.Packet(frame.data)
        pkt.pts = frame.timestamp  # raw RTP ts; sender adds its own random origin (uint32 wrap ok)
        pkt.time_base = fractions.Fraction(1, codec.clockRate)
        level = self.audio_level[1] if (self.kind == "audio" and self.audio_level) else None
        for sub in list(self.subscribers):
            if not sub.started:
                continue
            if sub.need_keyframe:
                if not key:
                    sub.dropped += 1
                    continue
                sub.need_keyframe = False
            if sub._queue.qsize() >= SUB_QUEUE_MAX:
                # slow subscriber: flush and wait for the next keyframe
                while not sub._queue.empty():
                    sub._queue.get_nowait()
                sub.need_keyframe = self.kind == "video"
                self.request_keyframe()
                continue
            sub._queue.put_nowait((pkt, level))

    def resync_all(self) -> None:
        if self.kind == "video":
            for sub in self.subscribers:
                sub.need_keyframe = True

    # --- subscribers --------------------------------------------------------
    @property
    def codec_mime(self) -> Optional[str]:
        for c in self.receiver._RTCRtpReceiver__codecs.values():  # filled by receive()
            if c.name.lower() != "rtx":
                return c.mimeType.lower()
        return None

    def subscribe(self, pc) -> ForwardedTrack:
        """Call BEFORE pc.setRemoteDescription(subscriber offer): aiortc negotiates codecs
        there (rtcpeerconnection.py:919) and reuses this unassociated transceiver."""
        track = ForwardedTrack(self)
        self.subscribers.add(track)
        transceiver = pc.addTransceiver(track, direction="sendonly")
        mime = self.codec_mime
        if mime:
            caps = RTCRtpSender.getCapabilities(self.kind).codecs
            transceiver.setCodecPreferences(
                [c for c in caps if c.mimeType.lower() in (mime, self.kind + "/rtx")])
        sender = transceiver.sender
        # PLI/FIR from this subscriber: RTCRtpSender._handle_rtcp_packet calls
        # self._send_keyframe(), which for av.Packet tracks is a no-op -> override per instance
        sender._send_keyframe = self.request_keyframe
        if self.kind == "audio":
            # RTCRtpSender only writes the audio-level extension for decoded AudioFrames
            # (rtcrtpsender.py:306-313); re-attach the publisher's level for packets.
            orig = sender._next_encoded_frame

            async def next_encoded_frame(codec):
                enc = await orig(codec)
                if enc is not None and track.last_level is not None:
                    enc.audio_level = -track.last_level  # sender writes (False, -audio_level)
                return enc

            sender._next_encoded_frame = next_encoded_frame
        return track

    # --- keyframe requests (rate limited, trailing) -------------------------
    def request_keyframe(self) -> None:
        if self.kind != "video":
            return
        now = time.monotonic()
        wait = self._last_pli + PLI_MIN_INTERVAL - now
        if wait <= 0:
            self._send_pli()
        elif not self._pli_pending:
            self._pli_pending = True
            asyncio.get_event_loop().call_later(wait, self._send_pli)

    def _send_pli(self) -> None:
        self._pli_pending = False
        self._last_pli = time.monotonic()
        if self.media_ssrc is not None:
            self.plis_sent += 1
            asyncio.ensure_future(self.receiver._send_rtcp_pli(self.media_ssrc))
