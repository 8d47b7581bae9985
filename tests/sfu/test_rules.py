"""The forwarder's pure parts: keyframe detection, the keyframe-request
limiter, the active speaker, the aiortc hooks, and garbage on the wire."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from aiortc.rtp import RtpPacket
from hypothesis import given
from hypothesis import strategies as st

from media.sfu import hooks
from media.sfu.forwarder import Forwarder, KeyframeLimiter, is_keyframe
from media.sfu.speaker import ActiveSpeaker


def test_vp8_keyframes_are_told_by_the_frame_tag():
    assert is_keyframe("VP8", bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]))  # P bit 0
    assert not is_keyframe("vp8", bytes([0x31, 0x02, 0x00]))  # P bit 1: interframe
    assert not is_keyframe("VP8", b"")


def test_h264_keyframes_are_idr_or_sps_nal_units():
    sps_pps_idr = (
        b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x00\x01\x68\xce" + b"\x00\x00\x01\x65\x88"
    )
    assert is_keyframe("H264", sps_pps_idr)
    assert is_keyframe("h264", b"\x00\x00\x00\x01\x65\x88\x84")
    assert not is_keyframe("H264", b"\x00\x00\x00\x01\x41\x9a\x00")  # non-IDR slice
    assert not is_keyframe("H264", b"\x00\x00\x01")
    assert is_keyframe("opus", b"\xfc")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_limiter_sends_one_now_and_one_trailing_per_interval():
    clock = Clock()
    limiter = KeyframeLimiter(0.5, clock)
    assert limiter.ask() == 0.0
    clock.now += 0.1
    assert limiter.ask() == pytest.approx(0.4)
    assert limiter.ask() is None  # already scheduled
    clock.now += 0.4
    assert limiter.fire()
    assert not limiter.fire()
    clock.now += 0.6
    assert limiter.ask() == 0.0


@given(st.lists(st.floats(min_value=0, max_value=0.3), min_size=1, max_size=200))
def test_never_more_than_one_keyframe_request_per_interval(gaps):
    clock = Clock()
    limiter = KeyframeLimiter(0.5, clock)
    sent, due = [], None
    for gap in gaps:
        clock.now += gap
        if due is not None and clock.now >= due:
            if limiter.fire():
                sent.append(due)
            due = None
        wait = limiter.ask()
        if wait == 0.0:
            sent.append(clock.now)
        elif wait is not None:
            due = clock.now + wait
    assert all(b - a >= 0.5 - 1e-9 for a, b in itertools.pairwise(sent))


def test_the_loudest_speaker_wins_and_does_not_flicker():
    speaker = ActiveSpeaker(window=0.3, confirm=2)
    now = 0.0
    changes = []

    def talk(levels, windows=1):
        nonlocal now
        for _ in range(windows):
            for _ in range(16):
                now += 0.02
                for source, level in levels.items():
                    change = speaker.add(source, level, now)
                    if change:
                        changes.append(change)

    talk({"ala": 30, "ola": 127})
    assert speaker.speaker == "ala"
    talk({"ala": 34, "ola": 31})  # about as loud: no switch
    assert speaker.speaker == "ala"
    talk({"ala": 110, "ola": 25})  # one window is not enough
    assert speaker.speaker == "ala"
    talk({"ala": 110, "ola": 25})
    assert speaker.speaker == "ola"
    talk({"ala": 127, "ola": 127}, windows=3)  # silence keeps the last speaker
    assert changes == ["ala", "ola"]
    speaker.forget("ola")
    assert speaker.speaker is None


def test_the_hooks_are_where_the_forwarder_expects_them():
    hooks.check()


async def test_garbage_rtp_never_raises_from_the_receive_path():
    """Random payloads through aiortc's receiver and the forwarding buffer
    (what an SRTP-authenticated but hostile or broken publisher can send)."""
    from aiortc import RTCRtpReceiver
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    class Transport:
        state = "connected"
        transport = None

        def _register_rtp_receiver(self, *a):
            pass

    import random

    rng = random.Random(5)
    for mime, kind in (("video/VP8", "video"), ("video/H264", "video"), ("audio/opus", "audio")):
        receiver = RTCRtpReceiver(kind, Transport())
        forwarder = Forwarder(receiver, kind)
        codec = RTCRtpCodecParameters(
            mimeType=mime, clockRate=90000 if kind == "video" else 48000, payloadType=96
        )
        hooks.receiver_codecs(receiver)[96] = codec
        track = forwarder.track()
        track.started = True
        for seq in range(3000):
            packet = RtpPacket(
                payload_type=96,
                sequence_number=(seq * rng.choice([1, 1, 1, 7])) & 0xFFFF,
                timestamp=rng.getrandbits(32) if rng.random() < 0.1 else seq // 3 * 3000,
                ssrc=1234,
                marker=rng.random() < 0.3,
                payload=rng.randbytes(rng.randint(0, 1200)),
            )
            try:
                await receiver._handle_rtp_packet(packet, arrival_time_ms=seq)
            except Exception as exc:  # pragma: no cover - the assertion below explains
                pytest.fail(f"{mime}: {type(exc).__name__}: {exc}")
        assert forwarder.frames > 0, mime  # the garbage did reach the forwarding path
        forwarder.close()
        await asyncio.sleep(0)


FFMPEG_VIDEO = (
    "v=0\r\no=FFmpeg 1 2 IN IP4 127.0.0.1\r\ns=FFmpegPublishSession\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ssrc:11 cname:FFmpeg\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 106 107\r\n"
    "a=ssrc-group:FID 22 33\r\na=ssrc:22 cname:FFmpeg\r\na=ssrc:22 msid:FFmpeg video\r\n"
)


def test_ffmpegs_rtx_stream_gets_its_ssrc_line():
    from media.sfu.sdp import complete_rtx_ssrc

    mended = complete_rtx_ssrc(FFMPEG_VIDEO)
    video = mended.split("m=video", 1)[1]
    assert "a=ssrc:33 cname:FFmpeg\r\n" in video
    assert mended.endswith("\r\n")
    assert complete_rtx_ssrc(mended) == mended  # already declared: unchanged
    browser = FFMPEG_VIDEO.replace("a=ssrc:22 msid", "a=ssrc:33 cname:FFmpeg\r\na=ssrc:22 msid")
    assert complete_rtx_ssrc(browser) == browser
