"""Recording a publisher's forwarded media into a file, without re-encoding.

A :class:`Recorder` reads a publisher's forwarders like one more subscriber: it
takes a ``track()`` of each (at most one video, one audio) and muxes the encoded
frames it receives with PyAV into WebM (VP8 video) or Matroska (H.264 video),
Opus audio in either. Nothing is decoded or encoded: per frame it costs a copy
and a container write, whatever the resolution (not benchmarked).

Why the pieces look the way they do:

- Container streams are declared with the codec's parameters and never opened:
  VP8's size is read from the first keyframe's header (RFC 6386 §9.1), H.264's
  size and its ``avcC`` from the SPS/PPS the publisher sends in-band with its
  IDR frames, Opus gets an ``OpusHead`` (RFC 7845 §5.1) for 48 kHz stereo, as
  negotiated in WebRTC. PyAV's ``add_mux_stream`` cannot carry channels or
  extradata, so each stream is copied from a template stream made on a scratch
  container; such a copy is never opened, so no encoder runs.
- The file is only started once the video has a usable keyframe (the header
  needs its size); audio arriving before it is held, up to :data:`PENDING_MAX`.
- The publisher's audio and video RTP clocks have unrelated random origins, so
  they cannot be compared with each other. Each track's timeline is anchored on
  the local time its first frame arrived and then follows its own RTP clock
  (smooth, unwrapped at 2**32). Lip sync is therefore as good as the arrival
  times of the two first frames (estimated within a few tens of milliseconds:
  the video jitter buffer holds a frame one frame interval, audio's 20 ms), and
  RTP clock drift against the local clock is not corrected (see :class:`Timeline`).
- The file is written as ``<name>.part`` and renamed when finalized, so a file
  with its final name is always complete (trailer and cues written).

Not handled: the header keeps the first keyframe's frame size, so a publisher
that changes resolution mid-stream (browsers do under congestion) gives a file
whose later frames are another size than announced; FFmpeg and Chromium follow
the bitstream (checked with VP8), stricter players may not.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import io
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
from aiortc.mediastreams import MediaStreamError

from media.sfu.forwarder import ForwardedTrack, Forwarder, is_keyframe

log = logging.getLogger(__name__)

# video codec (lower-case mime type) → (PyAV/FFmpeg format, file suffix)
CONTAINERS = {"video/vp8": ("webm", ".webm"), "video/h264": ("matroska", ".mkv")}
AUDIO_ONLY = ("webm", ".webm")
RECORDED_CODECS = ("video/vp8", "video/h264", "audio/opus")
PENDING_MAX = 500  # frames held while waiting for the first video keyframe (10 s of Opus)
RESYNC = 1.0  # seconds an RTP step may differ from the arrival step before it is a jump
OPUS_CHANNELS = 2  # WebRTC always negotiates opus/48000/2; mono streams decode as stereo


class Timeline:
    """Places one track's frames on the recording's clock.

    The first frame is placed at its arrival time (seconds since the recording
    started); later frames follow the RTP clock from there, so network jitter
    does not show in the file. A step of the RTP clock that disagrees with the
    arrival step by more than :data:`RESYNC` is a jump of the publisher's clock
    (a restarted encoder, a switched source), not a pause (a paused sender's
    clock keeps running), and the timeline is anchored on arrival time again.
    Timestamps are strictly increasing, as the muxer requires (dts = pts: WebRTC
    video has no B-frames).

    Drift of the publisher's clocks against the local clock is not corrected:
    an audio clock 100 ppm fast gains 0.36 s per hour on the video. Correcting
    it needs the NTP/RTP pairs of the publisher's RTCP sender reports, which
    aiortc's receiver does not keep (it would take one more hook)."""

    def __init__(self, time_base: fractions.Fraction) -> None:
        self.time_base = time_base
        self.extended = 0  # RTP timestamp unwrapped past 2**32
        self.last_rtp: int | None = None
        self.last_at = 0.0
        self.anchor = (0, 0.0)  # (extended timestamp, seconds) placed together
        self.last_out = -1

    def place(self, rtp: int, at: float) -> int:
        """The frame's timestamp in ``time_base`` units; *at* is its arrival
        in seconds since the recording's origin."""
        if self.last_rtp is None:
            self.anchor = (0, at)
        else:
            step = (rtp - self.last_rtp) & 0xFFFFFFFF
            if step >= 0x80000000:
                step -= 0x100000000  # a frame older than the last one
            self.extended += step
            if abs(step * float(self.time_base) - (at - self.last_at)) > RESYNC:
                self.anchor = (self.extended, at)
        self.last_rtp, self.last_at = rtp, at
        anchor_rtp, anchor_at = self.anchor
        out = round(anchor_at / self.time_base) + self.extended - anchor_rtp
        out = max(out, self.last_out + 1, 0)
        self.last_out = out
        return out


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (3- or 4-byte start codes)."""
    units = []
    for chunk in data.split(b"\x00\x00\x01")[1:]:
        # a zero before the next start code belongs to that (4-byte) start code
        unit = chunk.rstrip(b"\x00")
        if unit:
            units.append(unit)
    return units


class _Bits:
    """MSB-first bit reader with Exp-Golomb codes (H.264 §9.1)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        value = self.data[self.pos >> 3] >> (7 - (self.pos & 7)) & 1
        self.pos += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = value << 1 | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def h264_size(sps: bytes) -> tuple[int, int]:
    """Display width and height from an SPS NAL unit (H.264 §7.3.2.1.1, cropping §7.4.2.1.1)."""
    r = _Bits(sps[1:].replace(b"\x00\x00\x03", b"\x00\x00"))  # drop emulation prevention
    profile = r.bits(8)
    r.bits(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma_format, separate_planes = 1, 0
    if profile in _HIGH_PROFILES:
        chroma_format = r.ue()
        if chroma_format == 3:
            separate_planes = r.bit()
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.bit()  # qpprime_y_zero_transform_bypass_flag
        if r.bit():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format != 3 else 12):
                if r.bit():
                    last = following = 8
                    for _ in range(16 if index < 6 else 64):
                        if following:
                            following = (last + r.se() + 256) % 256
                        last = following or last
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()  # mb_adaptive_frame_field_flag
    r.bit()  # direct_8x8_inference_flag
    left = right = top = bottom = 0
    if r.bit():  # frame_cropping_flag
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
    if separate_planes or chroma_format == 0:
        crop_x, crop_y = 1, 2 - frame_mbs_only
    else:
        crop_x = 1 if chroma_format == 3 else 2
        crop_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - crop_x * (left + right)
    height = (2 - frame_mbs_only) * height_units * 16 - crop_y * (top + bottom)
    return width, height


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header (RFC 6386 §9.1), else None."""
    if len(frame) < 10 or frame[0] & 1 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF  # top 2 bits: scaling
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


def opus_head(channels: int = OPUS_CHANNELS, rate: int = 48000) -> bytes:
    """The Opus identification header Matroska/WebM carry as CodecPrivate (RFC 7845 §5.1).

    Pre-skip is 0: the recording joins the publisher's encoder mid-stream, so
    there is no encoder delay at the start of the file to hide."""
    return (
        b"OpusHead"
        + bytes([1, channels])
        + (0).to_bytes(2, "little")  # pre-skip
        + rate.to_bytes(4, "little")  # input sample rate (informational)
        + (0).to_bytes(2, "little")  # output gain
        + bytes([0])  # channel mapping family 0: mono or stereo
    )


class _VideoSetup:
    """What the container's video stream needs, from the first usable keyframe."""

    def __init__(self, width: int, height: int, extradata: bytes | None = None) -> None:
        self.width = width
        self.height = height
        self.extradata = extradata

    @classmethod
    def from_keyframe(cls, codec: str, data: bytes) -> _VideoSetup | None:
        if codec == "vp8":
            size = vp8_size(data)
            return cls(*size) if size else None
        units = nal_units(data)
        sps = [u for u in units if u[0] & 0x1F == 7]
        pps = [u for u in units if u[0] & 0x1F == 8]
        if not sps or not pps:
            return None  # an IDR without parameter sets: wait for one that has them
        try:
            width, height = h264_size(sps[0])
        except (IndexError, ValueError):
            log.warning("recording: unreadable H.264 SPS; waiting for another keyframe")
            return None
        # Annex B extradata: the Matroska muxer turns it into avcC and the
        # frames into length-prefixed NAL units.
        extradata = b"".join(b"\x00\x00\x00\x01" + unit for unit in sps + pps)
        return cls(width, height, extradata)


def _copy_stream(container, template_format: str, codec: str, **template_args):
    """A stream of *container* for already encoded *codec* data.

    The template lives on a scratch container and only lends its parameters;
    a stream made from a template is not opened when the file starts."""
    scratch = av.open(io.BytesIO(), "w", format=template_format)
    try:
        template = scratch.add_stream(codec, **template_args)
        return container.add_stream_from_template(template)
    finally:
        scratch.close()


class Recorder:
    """Records one publisher's forwarded tracks into one file.

    *forwarders*: a room's ``forwarders()`` for one publisher or a publish
    session's ``forwarders`` dict. The file is ``path_stem`` + ``.webm`` or
    ``.mkv``; the directory is created, an existing file is never overwritten.

    ``await start()`` takes a copy of each track; ``await stop()`` finalizes the
    file and returns its path (``None`` when no media arrived); it may be called
    any number of times. When the publisher leaves the file is finalized on its
    own; ``await wait()`` (after ``start()``) returns once that happened.
    """

    def __init__(
        self, forwarders: Iterable[Forwarder] | Mapping[str, Forwarder], path_stem: Path | str
    ) -> None:
        if isinstance(forwarders, Mapping):
            forwarders = forwarders.values()
        self.forwarders: dict[str, Forwarder] = {}
        for forwarder in forwarders:
            if forwarder.kind in self.forwarders:
                raise ValueError(f"more than one {forwarder.kind} track to record")
            codec = forwarder.codec
            mime = codec.mimeType.lower() if codec else None
            if mime not in RECORDED_CODECS or not mime.startswith(forwarder.kind):
                raise ValueError(f"cannot record {forwarder.kind} in {mime}")
            self.forwarders[forwarder.kind] = forwarder
        if not self.forwarders:
            raise ValueError("nothing to record")
        video = self.forwarders.get("video")
        self.video_codec = video.codec.name.lower() if video else None
        self.format, suffix = CONTAINERS[video.codec.mimeType.lower()] if video else AUDIO_ONLY
        path_stem = Path(path_stem)
        self.path = path_stem.with_name(path_stem.name + suffix)
        self.partial = self.path.with_name(self.path.name + ".part")
        self.frames = {"video": 0, "audio": 0}  # written to the file
        self.dropped = 0  # received but not written (before the first keyframe, overflow)
        self.duration = 0.0  # seconds of media written, by the latest timestamp
        self.error: BaseException | None = None
        self._tracks: dict[str, ForwardedTrack] = {}
        self._readers: list[asyncio.Task] = []
        self._ended: set[str] = set()
        self._video: _VideoSetup | None = None
        self._pending: collections.deque = collections.deque()
        self._container = None
        self._streams: dict = {}
        self._timelines: dict[str, Timeline] = {}
        self._origin = 0.0  # monotonic time of the file's 0
        # Every file operation (open, each packet, the trailer) runs in this one
        # thread, in order: a slow disk must not stall the event loop that
        # forwards everyone's media.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")
        self._opened = False  # decided on the loop; the container follows in the thread
        self._finishing: asyncio.Task | None = None
        self._finished = asyncio.Event()

    @property
    def video_frames(self) -> int:
        return self.frames["video"]

    @property
    def audio_frames(self) -> int:
        return self.frames["audio"]

    @property
    def recording(self) -> bool:
        return bool(self._readers) and self._finishing is None

    # lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        if self._readers or self._finishing is not None:
            raise RuntimeError("a recorder records once")
        if self.path.exists():
            raise FileExistsError(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for kind, forwarder in self.forwarders.items():
            track = self._tracks[kind] = forwarder.track()
            self._readers.append(asyncio.ensure_future(self._read(kind, track)))
        log.info("recording %s to %s", ", ".join(self.forwarders), self.path)

    async def stop(self) -> Path | None:
        """Finalize the file; the path once it is complete, None if nothing was recorded."""
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self._finish())
        return await asyncio.shield(self._finishing)

    async def wait(self) -> Path | None:
        """Until the file is finalized, by :meth:`stop` or by the publisher leaving."""
        await self._finished.wait()
        return await self.stop()

    async def _finish(self) -> Path | None:
        try:
            for track in self._tracks.values():
                track.stop()
            current = asyncio.current_task()
            for task in self._readers:
                if task is not current:
                    task.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            if not self._opened and self._pending:
                # The video never had a usable keyframe: keep the audio rather than nothing.
                self._submit_open(with_video=False)
            if not self._opened:
                log.info("recording %s: no media arrived, no file", self.path)
                return None
            # After every packet submitted before it: the trailer, then the rename.
            await asyncio.get_running_loop().run_in_executor(self._io, self._close_file)
            if self.error is not None:
                log.error("recording %s: writing failed: %s", self.path, self.error)
            if self._container is None:
                return None  # the file could not even be opened
            log.info(
                "recorded %s: %.1f s, %d video and %d audio frames, %d dropped",
                self.path,
                self.duration,
                self.video_frames,
                self.audio_frames,
                self.dropped,
            )
            return self.path
        finally:
            self._io.shutdown(wait=False)
            self._finished.set()

    def _close_file(self) -> None:
        if self._container is None:
            return  # opening it failed (self.error says why)
        self._container.close()
        os.replace(self.partial, self.path)

    # media -----------------------------------------------------------------------
    async def _read(self, kind: str, track: ForwardedTrack) -> None:
        try:
            while True:
                packet = await track.recv()
                self._take(kind, packet, time.monotonic())
        except MediaStreamError:
            pass  # the publisher left
        except Exception as exc:  # a muxing error ends the recording, not the process
            log.exception("recording %s failed; finalizing what was written", self.path)
            self.error = exc
            self._ended.update(self._tracks)
        self._ended.add(kind)
        if self._ended >= set(self._tracks) and self._finishing is None:
            self._finishing = asyncio.ensure_future(self._finish())

    def _take(self, kind: str, packet: av.Packet, arrived: float) -> None:
        # The forwarder hands every reader the same packet object, and muxing
        # rewrites its timestamps and stream index: write a copy.
        data = bytes(packet)
        codec = self.forwarders[kind].codec.name
        key = is_keyframe(codec, data)
        item = (kind, data, packet.pts, packet.time_base, arrived, key)
        if self.error is not None:
            raise self.error  # the file cannot be written: end the recording
        if self._opened:
            self._submit(self._write, *item)
            return
        if kind == "video":
            setup = _VideoSetup.from_keyframe(self.video_codec, data) if key else None
            if setup is None:
                self.dropped += 1  # the file must start with a picture it can show
                return
            self._video = setup
        if len(self._pending) >= PENDING_MAX:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(item)
        if self._video is not None or "video" not in self.forwarders:
            self._submit_open(with_video=self._video is not None)

    def _submit(self, function, *args) -> None:
        future = self._io.submit(function, *args)
        future.add_done_callback(self._note_failure)

    def _note_failure(self, future) -> None:
        if future.exception() is not None and self.error is None:
            self.error = future.exception()

    def _submit_open(self, *, with_video: bool) -> None:
        self._opened = True
        self._origin = min(item[4] for item in self._pending)
        pending, self._pending = self._pending, collections.deque()
        self._submit(self._open, with_video, pending)

    def _open(self, with_video: bool, pending: collections.deque) -> None:
        container = av.open(str(self.partial), "w", format=self.format)
        if with_video:
            video = self._video
            stream = _copy_stream(
                container, self.format, self.video_codec, width=video.width, height=video.height
            )
            stream.codec_context.framerate = fractions.Fraction(0, 1)  # variable frame rate
            if video.extradata:
                stream.codec_context.extradata = video.extradata
            self._streams["video"] = stream
        if "audio" in self.forwarders:
            stream = _copy_stream(container, self.format, "libopus", rate=48000)
            stream.codec_context.extradata = opus_head()
            self._streams["audio"] = stream
        self._container = container
        for item in pending:
            if item[0] in self._streams:
                self._write(*item)
            else:
                self.dropped += 1

    def _write(self, kind, data, pts, time_base, arrived, key) -> None:
        timeline = self._timelines.get(kind)
        if timeline is None:
            timeline = self._timelines[kind] = Timeline(time_base)
        out = av.Packet(data)
        out.stream = self._streams[kind]
        out.time_base = time_base
        at = timeline.place(pts, arrived - self._origin)
        out.pts = out.dts = at
        out.is_keyframe = key
        self._container.mux(out)  # rebases out's timestamps to the stream's time base
        self.frames[kind] += 1
        self.duration = max(self.duration, float(at * time_base))


_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}(/[A-Za-z0-9][A-Za-z0-9._-]{0,80})*")


def recording_path(name: str) -> Path:
    """Where the recording called *name* (``<stream>/<when>``) is written:
    inside ``MEDIA["RECORDINGS_DIR"]``, never outside it."""
    from django.conf import settings

    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"not a recording name: {name!r}")
    return Path(settings.MEDIA["RECORDINGS_DIR"]) / name
