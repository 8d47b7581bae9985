"""Rooms of the forwarding unit: who publishes, who watches, and their peers.

One server-side ``RTCPeerConnection`` per session. A *publish* session
receives at most one video track (VP8 or H.264) and one audio track (Opus);
each becomes a :class:`~media.sfu.forwarder.Forwarder`. A *subscribe* session
gets a send-only copy of every track published in the room when it offers, in
the publisher's codec. Both are negotiated the WHIP/WHEP way: the client
offers, the server answers with all its candidates (no trickle needed).

:class:`Sfu` holds the rooms of one process and its limits; it is what the
WHIP/WHEP views and the media worker talk to.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.exceptions import OperationError

from media.recording import Recorder
from media.sfu import hooks
from media.sfu.forwarder import Forwarder
from media.sfu.sdp import complete_rtx_ssrc
from media.sfu.speaker import ActiveSpeaker
from signaling.sdp import BadInput as SdpRefused
from signaling.sdp import check_description

log = logging.getLogger(__name__)

PUBLISH_CODECS = {"video": ("video/vp8", "video/h264", "video/rtx"), "audio": ("audio/opus",)}


def _media_kinds(offer: str) -> list[str]:
    return [line[2:].split(" ", 1)[0] for line in offer.splitlines() if line.startswith("m=")]


class MediaError(Exception):
    """A request the media plane refuses; *status* is the HTTP answer."""

    status = 400

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


class BadOffer(MediaError):
    status = 400


class NoCommonCodec(MediaError):
    status = 422


class NotFound(MediaError):
    status = 404


class Busy(MediaError):
    """The stream already has a publisher."""

    status = 409


class Full(MediaError):
    """This media process is at its peer or bitrate limit."""

    status = 503


@dataclass(frozen=True)
class Limits:
    max_peers: int = 300
    max_bitrate_kbps: int = 400_000
    connect_timeout: float = 30.0  # a session whose ICE/DTLS never completes is dropped
    publisher_idle: float = 20.0  # a publisher that sent no media this long is gone
    ice_addresses: tuple[str, ...] = ()  # host candidates only on these (empty: all)
    max_sdp_bytes: int = 32 * 1024


@dataclass
class Session:
    id: str
    room: str
    kind: str  # "publish" | "subscribe"
    owner: str  # who may end it (opaque: a key id, a user id)
    pc: RTCPeerConnection
    created: float = field(default_factory=time.monotonic)
    forwarders: dict[str, Forwarder] = field(default_factory=dict)  # publish: kind → forwarder
    recorder: Recorder | None = None  # publish, when asked to record
    record_to: Path | None = None  # the recording's path without its extension
    tracks: list = field(default_factory=list)  # subscribe: ForwardedTrack copies

    @property
    def connected(self) -> bool:
        return self.pc.connectionState == "connected"


class Room:
    """Publishers and subscribers sharing one set of forwarded tracks."""

    def __init__(self, name: str, on_event: Callable[[str, dict], None] | None = None):
        self.name = name
        self.sessions: dict[str, Session] = {}
        self.speaker = ActiveSpeaker()
        self.on_event = on_event or (lambda kind, data: None)

    @property
    def publishers(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.kind == "publish"]

    def forwarders(self, owner: str | None = None) -> list[Forwarder]:
        return [
            f
            for s in self.publishers
            if owner is None or s.owner == owner
            for f in s.forwarders.values()
        ]

    def _on_level(self, source: str, level: int) -> None:
        changed = self.speaker.add(source, level, time.monotonic())
        if changed is not None:
            self.on_event("speaker", {"room": self.name, "session": changed})


class Sfu:
    """All rooms of one process, with its limits."""

    def __init__(self, limits: Limits | None = None, rtc_config: RTCConfiguration | None = None):
        hooks.check()  # an aiortc that moved a hook fails here, not silently mid-call
        hooks.accept_h264_profiles()
        if limits is not None and limits.ice_addresses:
            hooks.use_host_addresses(list(limits.ice_addresses))
        self.limits = limits or Limits()
        # No STUN server unless asked: aiortc would otherwise ask Google's from
        # every peer (a municipality's media server tells no third party who
        # connects; it announces MEDIA_ICE_ADDRESSES instead).
        self.rtc_config = rtc_config or RTCConfiguration(iceServers=[])
        self.rooms: dict[str, Room] = {}
        self.sessions: dict[str, Session] = {}
        self.on_event: Callable[[str, dict], None] = lambda kind, data: None
        self._tasks: set[asyncio.Task] = set()

    def _background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # load ----------------------------------------------------------------------
    @property
    def peers(self) -> int:
        return len(self.sessions)

    def bitrate_kbps(self) -> int:
        """Forwarded bitrate: each published track's rate times its readers plus one (in)."""
        total = 0.0
        now = time.monotonic()
        for room in self.rooms.values():
            for session in room.publishers:
                age = max(now - session.created, 1.0)
                for forwarder in session.forwarders.values():
                    total += forwarder.bytes * 8 / 1000 / age * (1 + len(forwarder.subscribers))
        return int(total)

    def _admit(self) -> None:
        if self.peers >= self.limits.max_peers:
            raise Full(
                "peers", f"this media server carries its limit of {self.limits.max_peers} peers"
            )
        if self.bitrate_kbps() >= self.limits.max_bitrate_kbps:
            raise Full(
                "bitrate",
                f"this media server carries its limit of {self.limits.max_bitrate_kbps} kbit/s",
            )

    # sessions ------------------------------------------------------------------
    def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, lambda kind, data: self.on_event(kind, data))
        return room

    def _new_session(self, room: Room, kind: str, owner: str) -> Session:
        pc = RTCPeerConnection(self.rtc_config)
        session = Session(
            id=secrets.token_urlsafe(16), room=room.name, kind=kind, owner=owner, pc=pc
        )

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState == "connected" and kind == "publish":
                hooks.stop_consent_checks(pc)
                self._background(self._watch_media(session))
                if session.record_to is not None and session.recorder is None:
                    await self._record(session)
            if pc.connectionState in ("failed", "closed"):
                await self.close(session.id)

        # Counted from now, before the first await: a second publisher offering
        # at the same moment meets this one (409), the limits see it, and the
        # room is not deleted under it.
        self._register(room, session)
        return session

    async def publish(
        self,
        room_name: str,
        offer: str,
        *,
        owner: str,
        exclusive: bool = True,
        record_to: Path | str | None = None,
    ) -> tuple[Session, str]:
        """Answer a publisher's offer. *exclusive*: one publisher per room (WHIP).
        *record_to*: record what it sends, from when it connects, into that
        path (+ ``.webm`` or ``.mkv``); the file is finished when it leaves."""
        self._admit()
        room = self._room(room_name)
        if exclusive and room.publishers:
            raise Busy("stream_busy", "this stream already has a publisher")
        kinds = _media_kinds(offer)
        if kinds.count("audio") > 1 or kinds.count("video") > 1:
            raise BadOffer("sdp_too_many_tracks", "publish at most one audio and one video track")
        session = self._new_session(room, "publish", owner)
        session.record_to = Path(record_to) if record_to else None
        pc = session.pc
        for kind, mimes in PUBLISH_CODECS.items():
            if kind not in kinds:
                continue  # an unused transceiver would break the answer
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            caps = RTCRtpReceiver.getCapabilities(kind).codecs
            transceiver.setCodecPreferences([c for c in caps if c.mimeType.lower() in mimes])

        @pc.on("track")
        def on_track(track):
            for transceiver in pc.getTransceivers():
                receiver = transceiver.receiver
                if receiver.track is track and track.kind not in session.forwarders:
                    forwarder = Forwarder(
                        receiver,
                        track.kind,
                        source=session.id,
                        codecs=hooks.negotiated_codecs(transceiver),
                    )
                    if track.kind == "audio":
                        forwarder.level_listeners.append(room._on_level)
                    session.forwarders[track.kind] = forwarder

        answer = await self._negotiate(session, offer)
        # One publication per owner: a page that publishes again (after a
        # reload, or through another web process) replaces its earlier one.
        for older in [p for p in room.publishers if p.owner == owner and p is not session]:
            await self.close(older.id)
        room.on_event("published", {"room": room.name, "session": session.id})
        return session, answer

    async def subscribe(
        self,
        room_name: str,
        offer: str,
        *,
        owner: str,
        max_viewers: int | None = None,
        source_owner: str | None = None,
    ) -> tuple[Session, str]:
        """Answer a viewer's offer with every track published in the room, or
        only those of the publisher whose session *source_owner* owns (a meeting
        subscribes to each participant separately)."""
        self._admit()
        room = self.rooms.get(room_name)
        forwarders = room.forwarders(source_owner) if room else []
        if not forwarders:
            raise NotFound("no_publisher", "nothing is being published on this stream")
        viewers = len(room.sessions) - len(room.publishers)
        if max_viewers is not None and viewers >= max_viewers:
            raise Full("viewers", f"this stream has its limit of {max_viewers} viewers")
        # As many tracks of each kind as the offer has sections for: a player
        # that asks for video only gets no audio transceiver (it would break
        # the answer), and one section takes the first publisher's track.
        wanted = Counter(_media_kinds(offer))
        chosen: list[Forwarder] = []
        for forwarder in forwarders:
            if wanted[forwarder.kind] > 0:
                wanted[forwarder.kind] -= 1
                chosen.append(forwarder)
        if not chosen:
            raise NoCommonCodec(
                "no_common_kind", "the offer asks for no kind of media published here"
            )
        session = self._new_session(room, "subscribe", owner)
        for forwarder in chosen:
            session.tracks.append(forwarder.attach(session.pc))
        answer = await self._negotiate(session, offer)
        return session, answer

    async def _negotiate(self, session: Session, offer: str) -> str:
        pc = session.pc
        try:
            check_description("offer", offer, max_bytes=self.limits.max_sdp_bytes)
            if session.kind == "publish":
                offer = complete_rtx_ssrc(offer)
            description = RTCSessionDescription(sdp=offer, type="offer")
            if not any(k in ("audio", "video") for k in _media_kinds(offer)):
                raise BadOffer("sdp_no_media", "the offer has no audio or video")
            await pc.setRemoteDescription(description)
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException as exc:
            await asyncio.shield(self._drop(session))
            if not isinstance(exc, Exception):
                raise  # cancelled: the client went away; nothing of it stays
            refusal = self._refusal(session, exc)
            if refusal is exc:
                raise
            raise refusal from exc
        if session.kind == "publish" and not session.forwarders:
            await self._drop(session)
            raise NoCommonCodec("no_common_codec", "no track in VP8, H.264 or Opus to publish")
        asyncio.get_running_loop().call_later(
            self.limits.connect_timeout, self._check_connected, session.id
        )
        return pc.localDescription.sdp

    def _publication(self, room_name: str, source_owner: str) -> Session:
        room = self.rooms.get(room_name)
        for session in room.publishers if room else []:
            if session.owner == source_owner:
                return session
        raise NotFound("no_publisher", "that participant publishes nothing")

    async def record(self, room_name: str, source_owner: str, path: Path | str) -> None:
        """Start recording a publication already under way (at once if it is
        connected, else when it connects); a second call changes nothing."""
        session = self._publication(room_name, source_owner)
        if session.record_to is not None:
            return
        session.record_to = Path(path)
        if session.connected and not await self._record(session):
            session.record_to = None
            error = MediaError("recording_failed", "the recording could not start on the server")
            error.status = 500
            raise error

    async def stop_recording(self, room_name: str, source_owner: str) -> str | None:
        """Finish a publication's recording; the file's path (None: nothing recorded)."""
        session = self._publication(room_name, source_owner)
        recorder, session.recorder, session.record_to = session.recorder, None, None
        if recorder is None:
            return None
        path = await recorder.stop()
        self.on_event("recorded", {"room": session.room, "path": str(path) if path else None})
        return str(path) if path else None

    async def _record(self, session: Session) -> bool:
        try:
            session.recorder = Recorder(session.forwarders, session.record_to)
            await session.recorder.start()
        except (OSError, ValueError) as exc:  # a full disk must not end the broadcast
            log.error("recording %s could not start: %s", session.record_to, exc)
            session.recorder = None
            return False
        self.on_event("recording", {"room": session.room, "session": session.id})
        return True

    async def _watch_media(self, session: Session) -> None:
        """End a publisher whose media stopped: the encoder went away without
        a DELETE (consent checks are off for publishers, see hooks)."""
        idle = self.limits.publisher_idle
        connected = time.monotonic()
        while session.id in self.sessions:
            await asyncio.sleep(min(idle / 4, 5.0))
            last = max(
                [f.last_frame_at or connected for f in session.forwarders.values()],
                default=connected,
            )
            if time.monotonic() - last > idle:
                log.info("publisher %s sent no media for %.0f s; closing", session.id, idle)
                await self.close(session.id)
                return

    def _refusal(self, session: Session, exc: Exception) -> MediaError:
        """What to answer for an offer that failed with *exc*. aiortc raises
        many kinds of errors on a broken offer (its parser asserts, looks up
        missing attributes…): any of them is the offer's fault."""
        if isinstance(exc, MediaError):
            return exc
        if isinstance(exc, OperationError):
            return NoCommonCodec("no_common_codec", self._codec_refusal(session))
        if isinstance(exc, SdpRefused):
            detail = f"the offer is not a session description ({exc.reason})"
            return BadOffer(exc.reason, detail)
        log.info("offer refused: %r", exc)
        return BadOffer("sdp_malformed", "the offer could not be read")

    @staticmethod
    def _codec_refusal(session: Session) -> str:
        if session.kind == "publish":
            return "the offer has no VP8, H.264 or Opus track this server can forward"
        sent = []
        for track in session.tracks:
            codec = track.forwarder.codec
            if codec is not None:
                profile = codec.parameters.get("profile-level-id")
                sent.append(f"{codec.mimeType} {profile}" if profile else codec.mimeType)
        return (
            f"the stream is sent as {', '.join(sent) or 'unknown codecs'}; "
            "the player offers no decoder for it"
        )

    def _register(self, room: Room, session: Session) -> None:
        room.sessions[session.id] = session
        self.sessions[session.id] = session

    def _check_connected(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is not None and not session.connected:
            log.info("media session %s never connected; closing it", session_id)
            self._background(self.close(session_id))

    async def _discard(self, session: Session) -> None:
        room = self.rooms.get(session.room)
        if room is not None and not room.sessions:
            del self.rooms[session.room]
        try:
            if session.recorder is not None:
                recorder, session.recorder = session.recorder, None
                path = await recorder.stop()
                path = str(path) if path else None
                self.on_event("recorded", {"room": session.room, "path": path})
        except Exception:  # a full disk: the file is lost, the peer must still go
            log.exception("recording of session %s could not be finished", session.id)
        finally:
            for forwarder in session.forwarders.values():
                forwarder.close()
            for track in session.tracks:
                track.stop()
            try:
                await session.pc.close()
            except Exception:  # aiortc trips over a connection a broken offer half set up
                log.info("peer connection of session %s did not close cleanly", session.id)

    async def _drop(self, session: Session) -> None:
        """Forget a session that never got going (its offer was refused)."""
        self.sessions.pop(session.id, None)
        room = self.rooms.get(session.room)
        if room is not None:
            room.sessions.pop(session.id, None)
        await self._discard(session)

    async def close(self, session_id: str) -> bool:
        """End a session (idempotent); a publisher's subscribers see its tracks end."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        room = self.rooms.get(session.room)
        if room is not None:
            room.sessions.pop(session_id, None)
            if session.kind == "publish":
                room.speaker.forget(session_id)
                room.on_event("unpublished", {"room": room.name, "session": session_id})
        await self._discard(session)
        if session.kind == "publish" and room is not None:
            # Viewers left with nothing to receive are ended too: they would
            # hold their places (peers, a stream's viewer limit) for nothing.
            gone = set(session.forwarders.values())
            for other in list(room.sessions.values()):
                if other.kind == "subscribe" and all(t.forwarder in gone for t in other.tracks):
                    await self.close(other.id)
        return True

    async def close_all(self) -> None:
        for session_id in list(self.sessions):
            await self.close(session_id)

    def stats(self) -> dict:
        return {
            "rooms": len(self.rooms),
            "peers": self.peers,
            "bitrate_kbps": self.bitrate_kbps(),
            "forwarded_tracks": sum(len(r.forwarders()) for r in self.rooms.values()),
            "subscriber_streams": sum(
                len(f.subscribers) for r in self.rooms.values() for f in r.forwarders()
            ),
        }
