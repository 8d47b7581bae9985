"""Recording a publisher through the forwarding unit: a real aiortc publisher
sends the counter video and Opus audio over loopback, the recorder writes a
file without any codec, and the file is then read back like a player would."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import time
from pathlib import Path

import av
import imageio_ffmpeg
import pytest
from aiortc.mediastreams import MediaStreamError

from media.recording import Recorder, Timeline, h264_size, nal_units, vp8_size
from media.sfu.room import Sfu
from tests.sfu.peers import Publisher, read_counter, wait_for
from tests.sfu.test_forwarding import publish

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def sfu():
    unit = Sfu()
    yield unit
    await unit.close_all()


class Tap:
    """Another reader of a forwarder, keeping the bytes of every frame it is handed."""

    def __init__(self, forwarder) -> None:
        self.track = forwarder.track()
        self.frames: list[bytes] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                self.frames.append(bytes(await self.track.recv()))
        except MediaStreamError:
            return

    def close(self) -> None:
        self.track.stop()
        self.task.cancel()


def length_prefixed_nal_units(data: bytes) -> list[bytes]:
    """Matroska stores H.264 as 4-byte length + NAL unit (avcC with lengthSizeMinusOne 3)."""
    units, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        units.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return units


def read_back(path: Path) -> dict:
    """What a player sees: container, codecs, packets with times, decoded counters."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        found = {
            "format": container.format.name,
            "duration": container.duration / 1e6,
            "video_codec": video.codec_context.name,
            "size": (video.codec_context.width, video.codec_context.height),
            "audio_codec": audio.codec_context.name,
            "channels": audio.codec_context.channels,
            "video": [],
            "audio": [],
        }
        for packet in container.demux():
            if packet.size:
                entry = (bytes(packet), float(packet.pts * packet.time_base), packet.is_keyframe)
                found[packet.stream.type].append(entry)
    with av.open(str(path)) as container:
        found["counters"] = [read_counter(frame) for frame in container.decode(video=0)]
    return found


async def ffmpeg_errors(path: Path) -> str:
    """FFmpeg's own demuxer and decoders over the whole file: '' when clean."""
    process = await asyncio.create_subprocess_exec(
        imageio_ffmpeg.get_ffmpeg_exe(),
        *("-v", "error", "-i", str(path), "-f", "null", "-"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 0, stderr
    return stderr.decode()


async def record(sfu, tmp_path: Path, seconds: float, **publisher_kw):
    publisher = await publish(sfu, **publisher_kw)
    forwarders = sfu.rooms["r"].forwarders()
    taps = {f.kind: Tap(f) for f in forwarders}
    recorder = Recorder(forwarders, tmp_path / "council-2024-05-06")
    await recorder.start()
    assert await wait_for(lambda: recorder.video_frames > 0, 15)
    began = time.monotonic()
    await asyncio.sleep(seconds)
    path = await recorder.stop()
    elapsed = time.monotonic() - began
    for tap in taps.values():
        tap.close()
    await publisher.pc.close()
    return recorder, path, elapsed, taps


def check_playable(found: dict, elapsed: float, recorder: Recorder) -> None:
    counters = found["counters"]
    assert len(counters) == len(found["video"]) == recorder.video_frames
    assert all(b > a for a, b in itertools.pairwise(counters)), counters
    assert counters[-1] - counters[0] + 1 - len(counters) <= 2  # few or no lost frames
    assert found["video"][0][2], "the video starts with a keyframe"
    assert found["duration"] == pytest.approx(elapsed, rel=0.2)
    assert len(counters) == pytest.approx(30 * elapsed, rel=0.2)  # the publisher sends 30/s
    # audio and video on one clock, from 0
    video_times = [t for _, t, _ in found["video"]]
    audio_times = [t for _, t, _ in found["audio"]]
    assert min(video_times[0], audio_times[0]) == 0
    assert abs(video_times[0] - audio_times[0]) < 0.5
    assert abs(video_times[-1] - audio_times[-1]) < 0.5
    assert found["audio_codec"] == "opus" and found["channels"] == 2
    assert len(found["audio"]) == recorder.audio_frames
    assert len(found["audio"]) == pytest.approx(50 * elapsed, rel=0.2)  # 20 ms Opus frames


async def test_vp8_and_opus_are_recorded_to_webm_without_a_codec(sfu, tmp_path):
    recorder, path, elapsed, taps = await record(sfu, tmp_path, 3)
    assert path == tmp_path / "council-2024-05-06.webm"
    assert path.exists() and not path.with_name(path.name + ".part").exists()
    found = read_back(path)
    assert found["format"] == "matroska,webm" and path.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"
    assert b"webm" in path.read_bytes()[:64]  # DocType webm, not matroska
    assert found["video_codec"] == "vp8" and found["size"] == (320, 240)
    check_playable(found, elapsed, recorder)
    # Stream copy: every frame in the file is byte for byte a frame the
    # forwarder handed out (an encoder would have produced other bytes).
    forwarded = set(taps["video"].frames)
    assert all(data in forwarded for data, _, _ in found["video"])
    forwarded_audio = set(taps["audio"].frames)
    assert all(data in forwarded_audio for data, _, _ in found["audio"])
    assert await ffmpeg_errors(path) == ""


async def test_h264_and_opus_are_recorded_to_matroska_without_a_codec(sfu, tmp_path):
    recorder, path, elapsed, taps = await record(sfu, tmp_path, 3, video_codec="video/H264")
    assert path == tmp_path / "council-2024-05-06.mkv"
    found = read_back(path)
    assert found["format"] == "matroska,webm" and b"matroska" in path.read_bytes()[:64]
    assert found["video_codec"] == "h264" and found["size"] == (320, 240)
    check_playable(found, elapsed, recorder)
    # Matroska keeps H.264 as length-prefixed NAL units; the units themselves
    # are the publisher's, unchanged.
    forwarded = {tuple(nal_units(frame)) for frame in taps["video"].frames}
    for data, _, _ in found["video"]:
        assert tuple(length_prefixed_nal_units(data)) in forwarded
    assert await ffmpeg_errors(path) == ""


async def test_the_file_is_finalized_when_the_publisher_leaves(sfu, tmp_path):
    publisher = await publish(sfu)
    session = sfu.rooms["r"].publishers[0]
    # Joining a running stream: the recorder must ask for a keyframe and hold
    # the audio that arrives before it.
    assert await wait_for(lambda: session.forwarders["video"].frames >= 30, 15)
    recorder = Recorder(session.forwarders, tmp_path / "left")
    await recorder.start()
    assert await wait_for(lambda: recorder.video_frames > 0, 15)
    began = time.monotonic()
    await asyncio.sleep(1.5)
    assert await sfu.close(session.id)
    path = await asyncio.wait_for(recorder.wait(), 5)
    elapsed = time.monotonic() - began
    assert path == tmp_path / "left.webm" and path.exists()
    assert not recorder.recording
    assert await recorder.stop() == path  # stopping again changes nothing
    found = read_back(path)
    check_playable(found, elapsed, recorder)
    assert found["counters"][0] >= 30  # live from where the recording began
    assert await ffmpeg_errors(path) == ""
    await publisher.pc.close()


async def test_a_recording_without_media_leaves_no_file(sfu, tmp_path):
    publisher = await publish(sfu, audio=False)
    recorder = Recorder(sfu.rooms["r"].forwarders(), tmp_path / "empty")
    await recorder.start()
    assert await recorder.stop() is None  # before the first keyframe arrived
    assert list(tmp_path.iterdir()) == []
    await publisher.pc.close()


# The pieces, without peers --------------------------------------------------------


def test_the_timeline_unwraps_rtp_time_and_follows_arrival_only_on_jumps():
    timeline = Timeline(fractions.Fraction(1, 90000))
    start = 2**32 - 3000  # wraps after the first frame
    at = 0.25
    out = [timeline.place((start + 3000 * i) % 2**32, at + i / 30) for i in range(4)]
    assert out == [22500, 25500, 28500, 31500]  # 0.25 s, then one frame (1/30 s) each
    # a late, jittery arrival does not move the frame
    assert timeline.place((start + 3000 * 4) % 2**32, at + 4 / 30 + 0.2) == 34500
    # the publisher's clock jumps by an hour: continue from the arrival time
    jumped = timeline.place((start + 3000 * 5 + 90000 * 3600) % 2**32, at + 5 / 30)
    assert jumped == round((at + 5 / 30) * 90000)
    # and a step back never makes timestamps go backwards
    assert timeline.place((start + 3000 * 4 + 90000 * 3600) % 2**32, at + 6 / 30) == jumped + 1


@pytest.mark.parametrize(
    ("width", "height", "profile"),
    [(320, 240, "baseline"), (1920, 1080, "high"), (638, 358, "high")],
)
def test_frame_sizes_are_read_from_keyframe_headers(width, height, profile):
    """Sizes as the decoder sees them, including H.264 cropping (1080 = 68 MBs - 8)."""
    for name in ("libx264", "libvpx"):
        encoder = av.CodecContext.create(name, "w")
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
        encoder.time_base = fractions.Fraction(1, 30)
        if name == "libx264":
            encoder.options = {"profile": profile, "tune": "zerolatency"}
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = 0
        keyframe = b"".join(bytes(p) for p in [*encoder.encode(frame), *encoder.encode(None)])
        if name == "libx264":
            sps = next(u for u in nal_units(keyframe) if u[0] & 0x1F == 7)
            assert h264_size(sps) == (width, height)
        else:
            assert vp8_size(keyframe) == (width, height)


async def test_a_publication_asked_to_record_is_recorded_until_it_ends(tmp_path):
    events = []
    unit = Sfu()
    unit.on_event = lambda kind, data: events.append((kind, data))
    publisher = Publisher()
    session, answer = await unit.publish(
        "rada", await publisher.offer(), owner="p", record_to=tmp_path / "sesja"
    )
    await publisher.answer(answer)
    assert await wait_for(lambda: session.recorder is not None, 10)
    assert await wait_for(lambda: session.recorder.video_frames >= 45, 10)
    await unit.close(session.id)
    path = tmp_path / "sesja.webm"
    assert [kind for kind, _ in events if kind.startswith("record")] == ["recording", "recorded"]
    assert events[-1][1]["path"] == str(path)
    with av.open(str(path)) as container:
        counters = [read_counter(frame) for frame in container.decode(video=0)]
    assert len(counters) >= 45
    assert counters == sorted(counters)
    await publisher.pc.close()
    await unit.close_all()


async def test_a_recording_that_cannot_start_is_an_error_and_the_broadcast_goes_on(tmp_path):
    from media.sfu.room import MediaError

    unit = Sfu()
    publisher = Publisher()
    session, answer = await unit.publish("rada", await publisher.offer(), owner="p")
    await publisher.answer(answer)
    assert await wait_for(lambda: session.connected, 10)
    blocked = tmp_path / "plik"
    blocked.write_text("not a directory")
    with pytest.raises(MediaError) as refused:
        await unit.record("rada", "p", blocked / "nagranie")  # its directory cannot be made
    assert refused.value.reason == "recording_failed"
    assert session.recorder is None and session.id in unit.sessions
    await unit.record("rada", "p", tmp_path / "nagranie")  # the next try may succeed
    assert session.recorder is not None
    await publisher.pc.close()
    await unit.close_all()


async def test_the_file_is_written_by_the_recorders_own_thread_not_the_event_loop(
    tmp_path, monkeypatch
):
    import threading

    writers: set[str] = set()
    original = Recorder._write

    def watched(self, *args):
        writers.add(threading.current_thread().name)
        return original(self, *args)

    monkeypatch.setattr(Recorder, "_write", watched)
    unit = Sfu()
    publisher = Publisher()
    session, answer = await unit.publish(
        "rada", await publisher.offer(), owner="p", record_to=tmp_path / "x"
    )
    await publisher.answer(answer)
    assert await wait_for(lambda: session.recorder and session.recorder.video_frames >= 20, 10)
    await unit.close(session.id)
    assert writers and all(name.startswith("recorder") for name in writers), writers
    assert (tmp_path / "x.webm").stat().st_size > 5000
    await publisher.pc.close()
    await unit.close_all()
