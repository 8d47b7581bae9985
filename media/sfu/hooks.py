"""The private aiortc attributes the forwarder stands on, in one place.

aiortc has no passthrough for received media (aiortc/aiortc#449, #627): every
received track is decoded and every sent track encoded. The forwarder cuts in
at five private points of aiortc 1.16 (see ``media/DESIGN-sfu.md``). They are
reached only through this module, and :func:`check` fails loudly when an aiortc
upgrade moves one of them, instead of media silently stopping.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aioice.ice
import aiortc
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver

TESTED_VERSION = "1.16."

_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_CODECS = "_RTCRtpReceiver__codecs"


class HookMissing(RuntimeError):
    """aiortc no longer has an attribute the forwarder relies on."""


def check() -> None:
    """Raise :class:`HookMissing` unless aiortc still has every hook."""
    problems = []
    if not aiortc.__version__.startswith(TESTED_VERSION):
        problems.append(f"aiortc {aiortc.__version__} (tested with {TESTED_VERSION}x)")
    init_names = RTCRtpReceiver.__init__.__code__.co_names
    for name in (_JITTER_BUFFER, _CODECS):
        if name not in init_names:
            problems.append(f"RTCRtpReceiver.{name}")
    if "_codecs" not in RTCRtpTransceiver.__init__.__code__.co_names:
        problems.append("RTCRtpTransceiver._codecs")
    if not callable(getattr(RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder", None)):
        problems.append("RTCRtpReceiver.__stop_decoder")
    if not callable(getattr(RTCRtpReceiver, "_send_rtcp_pli", None)):
        problems.append("RTCRtpReceiver._send_rtcp_pli")
    for name in ("_send_keyframe", "_next_encoded_frame", "_handle_rtcp_packet"):
        if not callable(getattr(RTCRtpSender, name, None)):
            problems.append(f"RTCRtpSender.{name}")
    if "_send_keyframe" not in RTCRtpSender._handle_rtcp_packet.__code__.co_names:
        problems.append("RTCRtpSender._handle_rtcp_packet no longer calls _send_keyframe")
    if "_query_consent_task" not in aioice.ice.Connection.__init__.__code__.co_names:
        problems.append("aioice Connection._query_consent_task")
    if not callable(getattr(aioice.ice, "get_host_addresses", None)):
        problems.append("aioice.ice.get_host_addresses")
    if problems:
        raise HookMissing("the forwarder's aiortc hooks changed: " + ", ".join(problems))


# H.264 profiles a forwarding unit accepts besides aiortc's constrained
# baseline (42e01f) and baseline (42001f): it never decodes them, and
# encoders (FFmpeg's libx264, OBS) send High by default.
FORWARDED_H264_PROFILES = ("4d001f", "64001f", "640c1f")


def accept_h264_profiles() -> None:
    """Let this process negotiate H.264 Main and High as well (idempotent).

    aiortc matches H.264 by profile and offers only the baseline profiles its
    own encoder produces; these entries go into its codec table, so they are
    for processes that forward H.264, never for ones that encode it."""
    from aiortc.codecs import CODECS
    from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters

    video = CODECS["video"]
    have = {c.parameters.get("profile-level-id") for c in video if c.mimeType == "video/H264"}
    payload_type = max(c.payloadType for c in video) + 1
    for profile in FORWARDED_H264_PROFILES:
        if profile in have:
            continue
        video.append(
            RTCRtpCodecParameters(
                mimeType="video/H264",
                clockRate=90000,
                payloadType=payload_type,
                rtcpFeedback=[
                    RTCRtcpFeedback(type="nack"),
                    RTCRtcpFeedback(type="nack", parameter="pli"),
                    RTCRtcpFeedback(type="goog-remb"),
                ],
                parameters={
                    "level-asymmetry-allowed": "1",
                    "packetization-mode": "1",
                    "profile-level-id": profile,
                },
            )
        )
        video.append(
            RTCRtpCodecParameters(
                mimeType="video/rtx",
                clockRate=90000,
                payloadType=payload_type + 1,
                parameters={"apt": payload_type},
            )
        )
        payload_type += 2


def set_jitter_buffer(receiver: RTCRtpReceiver, buffer: Any) -> None:
    """Replace the receiver's jitter buffer; must happen before RTP arrives
    (the peer connection emits "track" before it starts the receiver)."""
    setattr(receiver, _JITTER_BUFFER, buffer)


def without_decoder(receiver: RTCRtpReceiver) -> None:
    """Stop the decoder thread ``receive()`` starts for *receiver*.

    A forwarded track never gives it work, and as a non-daemon thread it
    would keep the process from exiting on SIGTERM until it is killed."""
    original = receiver.receive

    async def receive(parameters):
        await original(parameters)
        receiver._RTCRtpReceiver__stop_decoder()

    receiver.receive = receive


def receiver_codecs(receiver: RTCRtpReceiver) -> dict:
    """Payload type → ``RTCRtpCodecParameters`` the receiver was started with."""
    return getattr(receiver, _CODECS)


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list:
    """The codecs agreed for *transceiver* in the last offer/answer, preferred first
    (set by ``setRemoteDescription``, before the receiver starts)."""
    return list(transceiver._codecs)


def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> Awaitable[None]:
    """Ask the publisher for a keyframe (RTCP PLI, RFC 4585 §6.3.1)."""
    return receiver._send_rtcp_pli(media_ssrc)


def on_keyframe_request(sender: RTCRtpSender, handler: Callable[[], None]) -> None:
    """Call *handler* when the subscriber behind *sender* sends PLI or FIR.

    For packet tracks aiortc's own handler only sets a flag its encoder never
    reads, so it is replaced on this one instance."""
    sender._send_keyframe = handler


def wrap_next_encoded_frame(
    sender: RTCRtpSender, wrapper: Callable[[Callable, Any], Awaitable[Any]]
) -> None:
    """Let *wrapper(original, codec)* post-process every encoded frame the sender sends."""
    original = sender._next_encoded_frame

    async def next_encoded_frame(codec):
        return await wrapper(original, codec)

    sender._next_encoded_frame = next_encoded_frame


def stop_consent_checks(pc) -> None:
    """Stop RFC 7675 consent checks on *pc*'s ICE connections.

    FFmpeg's WHIP muxer answers ICE checks only until it is connected, so
    aioice would close the session after ~30 s. A publisher's liveness is
    judged by its media instead (the room's idle watchdog)."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        task = connection._query_consent_task
        if task is not None and not task.done():
            task.cancel()
        connection._query_consent_task = None


def use_host_addresses(addresses: list[str]) -> None:
    """Gather ICE host candidates on these addresses only (this process).

    aioice otherwise binds every address of every interface except loopback;
    a media server announces the addresses clients can reach, and tests keep
    to 127.0.0.1."""
    chosen = list(addresses)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [
        a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
    ]
