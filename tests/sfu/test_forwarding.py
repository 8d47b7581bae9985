"""The forwarding unit with real aiortc peers over loopback: frames arrive
in order at the publisher's rate without the server decoding, keyframe
requests travel up, late joiners get a picture, bad offers leave nothing."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import RTCRtpReceiver

from media.sfu import room as sfu_room
from media.sfu.room import Limits, Sfu
from tests.sfu.peers import Publisher, Subscriber, wait_for

pytestmark = pytest.mark.timeout(60)


async def publish(sfu: Sfu, name: str = "r", **kw) -> Publisher:
    publisher = Publisher(**kw)
    _, answer = await sfu.publish(name, await publisher.offer(), owner="p")
    await publisher.answer(answer)
    return publisher


async def subscribe(sfu: Sfu, name: str = "r", **kw) -> Subscriber:
    subscriber = Subscriber(**kw)
    _, answer = await sfu.subscribe(name, await subscriber.offer(), owner="s")
    await subscriber.answer(answer)
    return subscriber


@pytest.fixture
async def sfu():
    unit = Sfu()
    yield unit
    await unit.close_all()


@pytest.fixture
async def flowing(sfu):
    """A video-only publisher and one subscriber, frames arriving."""
    publisher = await publish(sfu, audio=False)
    subscriber = await subscribe(sfu, audio=False)
    assert await wait_for(lambda: len(subscriber.counters) >= 10, 15)
    yield publisher, subscriber
    await publisher.pc.close()
    await subscriber.close()


async def test_three_subscribers_get_every_frame_in_order_without_server_decoding(sfu, monkeypatch):
    decoded = []
    import aiortc.rtcrtpreceiver as receiver_module

    original = receiver_module.get_decoder
    monkeypatch.setattr(
        receiver_module, "get_decoder", lambda codec: decoded.append(codec) or original(codec)
    )
    publisher = await publish(sfu)
    subscribers = [await subscribe(sfu) for _ in range(3)]
    assert await wait_for(lambda: all(len(s.counters) >= 60 for s in subscribers), 15)
    await asyncio.sleep(2)
    for subscriber in subscribers:
        assert subscriber.in_order(), subscriber.counters
        assert subscriber.rate(1.5) >= 25  # the publisher sends 30 frames/s
        assert subscriber.codec == "VP8"
        # no holes once the picture started: the forwarder lost nothing
        assert subscriber.counters[-1] - subscriber.counters[0] + 1 == len(subscriber.counters)
        assert subscriber.audio_frames > 50
    # one decoder per subscriber track (they run here too); none for the publisher's
    assert len(decoded) == 2 * len(subscribers)
    forwarders = sfu.rooms["r"].forwarders()
    assert {f.kind for f in forwarders} == {"video", "audio"}
    assert all(len(f.subscribers) == 3 for f in forwarders)
    await publisher.pc.close()
    for subscriber in subscribers:
        await subscriber.close()


async def test_a_subscribers_keyframe_request_reaches_the_publisher(sfu, flowing):
    publisher, subscriber = flowing
    await asyncio.sleep(0.6)  # past the rate limit of the joiner's own request
    before = publisher.keyframe_requests
    receiver = next(t.receiver for t in subscriber.pc.getTransceivers() if t.kind == "video")
    ssrc = next(iter(receiver._RTCRtpReceiver__active_ssrc))
    await receiver._send_rtcp_pli(ssrc)
    assert await wait_for(lambda: publisher.keyframe_requests > before, 3)


async def test_keyframe_requests_are_rate_limited(sfu, flowing):
    publisher, subscriber = flowing
    await asyncio.sleep(0.6)
    forwarder = sfu.rooms["r"].forwarders()[0]
    before = forwarder.keyframe_requests
    for _ in range(20):
        forwarder.request_keyframe()
    await asyncio.sleep(0.8)
    # one at once, one trailing after the interval: not twenty
    assert forwarder.keyframe_requests - before == 2


async def test_a_late_joiner_sees_a_picture_within_a_second(sfu):
    publisher = await publish(sfu, audio=False)
    early = await subscribe(sfu, audio=False)
    assert await wait_for(lambda: len(early.counters) >= 30, 15)
    await asyncio.sleep(2)  # the publisher's last keyframe is now long gone
    late = Subscriber(audio=False)
    _, answer = await sfu.subscribe("r", await late.offer(), owner="s")
    await late.answer(answer)
    assert await wait_for(lambda: late.pc.connectionState == "connected", 10)
    connected = time.monotonic()
    await asyncio.wait_for(late.first_frame.wait(), 5)
    assert late.frame_times[0] - connected < 1.0
    assert late.counters[0] > 60  # live, not a stale burst from the start
    await publisher.pc.close()
    await early.close()
    await late.close()


async def test_h264_is_forwarded_as_h264_to_a_subscriber_offering_vp8_first(sfu):
    publisher = await publish(sfu, video_codec="video/H264", audio=False)
    subscriber = await subscribe(sfu, audio=False)  # aiortc offers VP8 before H.264
    assert subscriber.codec == "H264"
    assert await wait_for(lambda: len(subscriber.counters) >= 30, 15)
    assert subscriber.in_order()
    await publisher.pc.close()
    await subscriber.close()


# Bad input: a clear reason, and no peer left behind ---------------------------------


async def test_a_malformed_offer_is_refused_and_leaves_no_peer(sfu):
    for offer in ("", "v=0\r\nnot sdp at all", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF\r\n"):
        with pytest.raises(sfu_room.BadOffer):
            await sfu.publish("r", offer, owner="p")
    assert sfu.peers == 0
    assert sfu.rooms == {}


async def test_an_offer_without_a_forwardable_codec_is_422(sfu):
    publisher = Publisher(audio=True)
    offer = await publisher.offer()
    # keep only PCMU audio (no video, no Opus)
    lines, keep = [], True
    for line in offer.splitlines():
        if line.startswith("m="):
            keep = line.startswith("m=audio")
            if keep:
                line = " ".join([*line.split(" ")[:3], "0"])
        rtp_line = line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"))
        if keep and (not rtp_line or line.startswith("a=rtpmap:0 ")):
            lines.append(line)
    with pytest.raises(sfu_room.NoCommonCodec) as refused:
        await sfu.publish("r", "\r\n".join(lines) + "\r\n", owner="p")
    assert refused.value.status == 422
    assert sfu.peers == 0
    await publisher.pc.close()


async def test_a_second_publisher_is_409_and_a_viewer_of_nothing_is_404(sfu):
    first = await publish(sfu, audio=False)
    second = Publisher(audio=False)
    with pytest.raises(sfu_room.Busy):
        await sfu.publish("r", await second.offer(), owner="q")
    viewer = Subscriber()
    with pytest.raises(sfu_room.NotFound):
        await sfu.subscribe("empty", await viewer.offer(), owner="v")
    assert sfu.peers == 1
    for pc in (first.pc, second.pc, viewer.pc):
        await pc.close()


async def test_the_peer_limit_is_a_setting():
    sfu = Sfu(Limits(max_peers=1))
    publisher = await publish(sfu, audio=False)
    viewer = Subscriber()
    with pytest.raises(sfu_room.Full) as refused:
        await sfu.subscribe("r", await viewer.offer(), owner="v")
    assert refused.value.status == 503
    await sfu.close_all()
    await publisher.pc.close()
    await viewer.pc.close()


async def test_a_session_that_never_connects_is_dropped():
    sfu = Sfu(Limits(connect_timeout=0.5))
    publisher = Publisher(audio=False)
    await sfu.publish("r", await publisher.offer(), owner="p")  # the answer is never applied
    assert sfu.peers == 1
    assert await wait_for(lambda: sfu.peers == 0, 5)
    await publisher.pc.close()


def test_forwarder_keeps_to_the_three_codecs():
    assert sfu_room.PUBLISH_CODECS["video"][:2] == ("video/vp8", "video/h264")


async def test_garbage_datagrams_at_the_servers_ports_do_not_stop_the_media(sfu, flowing):
    """Random UDP at the server's ICE ports: STUN-, DTLS-, RTP- and RTCP-looking
    junk (SRTP authentication must drop it) while real media flows."""
    import random
    import socket

    publisher, subscriber = flowing
    ports = set()
    for peer in (publisher, subscriber):
        for line in peer.pc.remoteDescription.sdp.splitlines():
            fields = line.split()
            if line.startswith("a=candidate:"):
                ports.add((fields[4], int(fields[5])))
    assert ports
    rng = random.Random(11)
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(3000):
        first = rng.choice([0x00, 0x01, 0x16, 0x80, 0x90, rng.randrange(256)])
        second = rng.choice([200, 201, 202, 203, 205, 206, 96, rng.randrange(256)])
        payload = bytes([first, second]) + rng.randbytes(rng.randint(0, 1400))
        junk.sendto(payload, sorted(ports)[i % len(ports)])
        if i % 100 == 0:
            await asyncio.sleep(0)
    junk.close()
    before = len(subscriber.counters)
    assert await wait_for(lambda: len(subscriber.counters) >= before + 30, 5)
    assert subscriber.in_order()
    assert sfu.peers == 2


async def test_a_publisher_is_judged_by_its_media_not_by_consent_checks():
    """FFmpeg answers no ICE consent checks after connecting: publishers get
    none, and one whose media stops is closed after PUBLISHER_IDLE instead."""
    sfu = Sfu(Limits(publisher_idle=1.0))
    publisher = await publish(sfu, audio=False)
    subscriber = await subscribe(sfu, audio=False)
    assert await wait_for(lambda: len(subscriber.counters) >= 10, 15)
    session = next(s for s in sfu.sessions.values() if s.kind == "publish")
    for transceiver in session.pc.getTransceivers():
        assert transceiver.receiver.transport.transport._connection._query_consent_task is None
    viewer = next(s for s in sfu.sessions.values() if s.kind == "subscribe")
    viewer_ice = viewer.pc.getTransceivers()[0].sender.transport.transport._connection
    assert viewer_ice._query_consent_task is not None  # players keep theirs
    publisher.pc.getSenders()[0].replaceTrack(None)  # the encoder stops
    assert await wait_for(lambda: session.id not in sfu.sessions, 5)
    await sfu.close_all()
    await publisher.pc.close()
    await subscriber.close()


async def test_no_decoder_thread_is_left_running_for_a_publisher(sfu):
    """aiortc starts a (non-daemon) decoder thread per receiver; a forwarded
    track needs none, and a live one would hold a stopping process."""
    import threading

    publisher = await publish(sfu)
    subscriber = await subscribe(sfu, audio=False)
    assert await wait_for(lambda: len(subscriber.counters) >= 10, 15)
    decoders = [t.name for t in threading.enumerate() if t.name.endswith("-decoder")]
    # the subscriber's own video decoder runs here; the publisher's two do not
    assert decoders == ["video-decoder"]
    await publisher.pc.close()
    await subscriber.close()


async def test_the_active_speaker_is_told_on_the_rooms_topic():
    """From the RFC 6464 levels the publisher's packets carry: nothing decoded."""
    from hub.bus import get_bus
    from media.registry import forward_events, room_topic

    unit = Sfu()
    forward_events(unit)
    told: list[str] = []
    speaker = asyncio.Event()

    def listener(topic: str, seq: int, frame: str) -> None:
        if '"media.speaker"' in frame:
            told.append(frame)
            speaker.set()

    await get_bus().listen(room_topic("narada"), listener)
    quiet = await publish(unit, "narada", audio=True)
    loud = Publisher(audio=True, tone=True)
    session, answer = await unit.publish("narada", await loud.offer(), owner="l", exclusive=False)
    await loud.answer(answer)
    await asyncio.wait_for(speaker.wait(), 10)
    assert session.id in told[0]
    await unit.close_all()
    await quiet.pc.close()
    await loud.pc.close()


async def test_a_player_without_the_publishers_codec_is_told_which_it_is(sfu):
    """The publisher sends H.264; a player that offers VP8 only gets 422 naming it."""
    publisher = await publish(sfu, video_codec="video/H264", audio=False)
    player = Subscriber(audio=False)
    transceiver = player.pc.getTransceivers()[0]
    caps = RTCRtpReceiver.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.mimeType in ("video/VP8", "video/rtx")])
    with pytest.raises(sfu_room.NoCommonCodec) as refused:
        await sfu.subscribe("r", await player.offer(), owner="v")
    assert "video/H264" in refused.value.detail
    assert sfu.peers == 1
    await publisher.pc.close()
    await player.pc.close()


async def test_broken_offers_of_every_kind_are_refused_and_leave_nothing(sfu):
    """Offers mutated line by line (aiortc raises assertion, attribute, value,
    runtime errors on them): always a MediaError, never a peer or room left."""
    import random

    publisher = await publish(sfu, "live", audio=True)
    rng = random.Random(3)
    pristine = await Subscriber().offer()
    publishing = await Publisher().offer()
    for base, act in [(pristine, sfu.subscribe), (publishing, sfu.publish)] * 40:
        lines = base.split("\r\n")
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines))
            kind = rng.choice(["drop", "cut", "swap"])
            if kind == "drop":
                del lines[i]
            elif kind == "cut":
                lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
            else:
                j = rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
        try:
            session, _ = await act("live", "\r\n".join(lines), owner="x")
        except sfu_room.MediaError:
            continue
        await sfu.close(session.id)  # the mutation left a readable offer
    assert sfu.peers == 1  # the publisher alone
    assert {f.kind for f in sfu.rooms["live"].forwarders()} == {"audio", "video"}
    assert all(not f.subscribers for f in sfu.rooms["live"].forwarders())
    await publisher.pc.close()


async def test_two_publishers_at_the_same_moment_meet_409(sfu):
    first, second = Publisher(audio=False), Publisher(audio=False)
    offers = [await first.offer(), await second.offer()]
    results = await asyncio.gather(
        *(sfu.publish("r", offer, owner=f"p{i}") for i, offer in enumerate(offers)),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Busy", "tuple"]
    assert sfu.peers == 1
    await first.pc.close()
    await second.pc.close()


async def test_an_offer_abandoned_mid_negotiation_leaves_nothing(sfu):
    publisher = Publisher(audio=False)
    offer = await publisher.offer()
    task = asyncio.ensure_future(sfu.publish("r", offer, owner="p"))
    await asyncio.sleep(0)  # inside the negotiation
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_for(lambda: sfu.peers == 0 and not sfu.rooms, 3)
    await publisher.pc.close()


async def test_viewers_are_ended_with_the_publication_they_watch(sfu, flowing):
    """Their tracks end, and their sessions too: they would hold places
    (peers, the stream's viewer limit) with nothing to receive."""
    viewer = next(s for s in sfu.sessions.values() if s.kind == "subscribe")
    publisher_id = next(s.id for s in sfu.sessions.values() if s.kind == "publish")
    assert await sfu.close(publisher_id)
    assert not await sfu.close(publisher_id)  # idempotent
    assert viewer.tracks[0].readyState == "ended"
    assert viewer.id not in sfu.sessions
    assert sfu.peers == 0 and not sfu.rooms


async def test_publishing_again_replaces_the_owners_earlier_publication(sfu):
    """One publication per owner, whichever web process the page offers through."""
    first, second, again = (Publisher(audio=False) for _ in range(3))

    async def offer(publisher, owner):
        session, _ = await sfu.publish("m", await publisher.offer(), owner=owner, exclusive=False)
        return session

    older = await offer(first, "ala")
    other = await offer(second, "ola")
    newer = await offer(again, "ala")
    assert older.id not in sfu.sessions
    assert {s.id for s in sfu.rooms["m"].publishers} == {other.id, newer.id}
    for publisher in (first, second, again):
        await publisher.pc.close()
