"""``/ws/meet/<code>/``: one participant's socket in a meeting (thin).

The rules live in signaling.rules; rooms are changed in the database under a
row lock (signaling.services); every change is told to the room's channel
group, and each socket shows its participant their own view of it. WebRTC
negotiation is relayed to one participant's socket at a time through the
channel layer, so two people on different daphne processes meet normally.

When the room's topology is "sfu" the socket also carries the negotiation
with the forwarding unit (media.service): a participant publishes once and
subscribes to each other one who publishes; the sessions are closed when the
room no longer allows them (the participant left, was sent back or removed,
lost the floor, reloaded the page; the meeting ended).

Each joined socket also listens, on the hub's topic bus, to its meeting's media
room (``meet-<code>``, topic ``media.meet-<code>``): when the media plane says
that room lost its media worker (``media.reconnect``), the participant, if in
the call through the unit, is sent a ``notice`` ``media_reconnect`` and
publishes and subscribes again at once instead of waiting for its connections
to fail. One bus listener per socket, from ``join`` until the socket goes.

Recording (only through the forwarding unit): a moderator's ``record`` is
stored and told to everyone first. Each participant's publication is then
recorded by that participant's own socket, right after it has sent them a room
that says so (and not before ``RECORDING_LEAD_SECONDS`` after it was turned
on, by when every socket has been told): nobody's media are recorded before
their page was told, and someone whose socket is down is recorded only once
it is back. The change that turns recording off (a moderator, the end, the
call emptying) stops every recorder; the files go into the meeting log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass, replace

import msgspec
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from django.conf import settings
from django.core import signing
from django.utils import translation
from django.utils.translation import gettext_lazy as _

from hub.auth import principal_of
from hub.bus import get_bus
from hub.clock import Clock, system_clock
from hub.consumers import EnvelopeConsumer
from hub.envelope import HUB_PROTOCOL, CloseCode, EnvelopeError, ErrorCode, encode
from hub.live import SessionLimits
from hub.ratelimit import TokenBucket
from hub.roles import Role as AccountRole
from hub.roles import roles_of
from signaling import protocol as p
from signaling import rules, sdp, services
from signaling.rules import Action, Refused, Role, Room, Status

log = logging.getLogger(__name__)

STAFF_ROLES = frozenset(
    {
        AccountRole.CLERK,
        AccountRole.TEACHER,
        AccountRole.OPERATOR,
        AccountRole.ADMIN,
        AccountRole.CHAIR,
    }
)
_REJOIN_SALT = "signaling.rejoin"
# C0 controls but tab and new line, DEL and the C1 controls.
# Control characters, and the invisible ones that reorder or hide text (bidi
# overrides and isolates, zero-width marks): a name or message must read as
# what it is.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def _clean_name(name: str) -> str:
    """A display name on one line without control characters (PostgreSQL
    cannot store NUL in the room's JSON, and a name is shown to others)."""
    return " ".join(_CONTROL.sub("", name).split())[:80] or "?"


def _clean_instance(instance: str) -> str:
    return _CONTROL.sub("", instance) or "-"


REASONS = {
    "meeting_ended": _("The meeting has ended."),
    "meeting_locked": _("The meeting is locked: nobody new can join."),
    "meeting_full": _("The meeting is full."),
    "call_full": _("The call already has as many residents as it can take."),
    "briefing_invited_only": _("Only invited staff can join this briefing."),
    "not_admitted": _("You have not been admitted yet."),
    "not_allowed": _("Your role in this meeting does not allow that."),
    "no_such_participant": _("There is no such participant."),
    "not_on_yourself": _("You cannot do that to yourself."),
    "not_on_host": _("Only the host can do that to the host."),
    "not_on_moderator": _("A moderator cannot be sent back to the queue."),
    "already_admitted": _("That person is already in the meeting."),
    "not_waiting": _("That person is not waiting in the queue."),
    "not_admitted_target": _("That person is not in the meeting."),
    "queue_empty": _("Nobody is waiting."),
    "call_next_stale": _("Someone else has just called the next person."),
    "nothing_to_mute": _("Say what to turn off: audio, video or both."),
    "cannot_host": _("That person cannot become the host."),
    "no_floor_for_role": _("Only participants can be given the floor or have it taken back."),
    "needs_floor": _("Raise your hand: a moderator will give you the floor."),
    "rejoin_expired": _("Your earlier place in the meeting has expired."),
    "join_first": _("Join the meeting first."),
    "already_joined": _("This connection has already joined."),
    "peer_unavailable": _("That participant is not connected."),
    "relay_busy": _("The server is busy; the message will be sent again."),
    "one_payload": _("Send either a description or a candidate."),
    "description_type": _("A description must be an offer or an answer."),
    "sdp_too_large": _("The session description is larger than %(limit)s bytes."),
    "sdp_not_sdp": _("The session description does not start with v=0."),
    "sdp_bad_line": _("The session description has a malformed line."),
    "sdp_no_media": _("The session description has no media section."),
    "sdp_too_many_media": _("The session description has too many media sections."),
    "candidate_malformed": _("The ICE candidate is malformed."),
    "candidate_bad_mid": _("The ICE candidate's sdpMid is malformed."),
    "candidate_bad_index": _("The ICE candidate's sdpMLineIndex is out of range."),
    "candidate_no_section": _("The ICE candidate names no media section."),
    "chat_empty": _("The message is empty."),
    "chat_too_long": _("The message is longer than %(limit)s characters."),
    "chat_flood": _("You are sending messages too fast; wait a moment."),
    "no_such_question": _("There is no such question waiting."),
    "removed": _("A moderator removed you from the meeting."),
    "denied": _("The host did not let you in."),
    "served": _("Your consultation has finished. Thank you."),
    "left": _("You left the meeting."),
    "timed_out": _("You were away for too long and left the meeting."),
    "replaced": _("You joined this meeting from another window."),
    "sfu_off": _("This meeting's media do not go through the media server."),
    "no_publisher": _("That participant is not sending anything at the moment."),
    "no_such_session": _("There is no such media session."),
    "media_full": _("The media server is busy; trying again shortly."),
    "media_refused": _("The media server refused the connection."),
    "media_unavailable": _("The media server is not available; trying again shortly."),
    "no_common_codec": _("Your browser offered no audio or video format the server can forward."),
    "sdp_too_many_tracks": _("Send at most one microphone and one camera."),
    "sdp_malformed": _("The session description could not be read."),
    "recording_needs_sfu": _(
        "This meeting's audio and video go directly between the participants and never reach "
        "the server, so it cannot be recorded."
    ),
    "already_recording": _("The meeting is already being recorded."),
    "not_recording": _("The meeting is not being recorded."),
    "recording_failed": _("The recording could not be started."),
}
CLOSE_FOR = {
    "removed": CloseCode.FORBIDDEN,
    "denied": CloseCode.FORBIDDEN,
}
REFUSAL_CODES = {code.value: code for code in ErrorCode}


def refusal(reason: str, code: ErrorCode | str = ErrorCode.FORBIDDEN, **params) -> EnvelopeError:
    code = REFUSAL_CODES.get(str(code), ErrorCode.FORBIDDEN)
    return EnvelopeError(code, REASONS.get(reason, reason), params=params or None, reason=reason)


def make_rejoin_token(code: str, pid: str, principal: str) -> str:
    return signing.dumps({"c": code, "p": pid, "u": principal}, salt=_REJOIN_SALT)


def read_rejoin_token(token: str, code: str, principal: str) -> str | None:
    try:
        data = signing.loads(token, salt=_REJOIN_SALT, max_age=settings.GUEST_TOKEN_MAX_AGE)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict) or data.get("c") != code or data.get("u") != principal:
        return None
    pid = data.get("p")
    return pid if isinstance(pid, str) else None


@dataclass(frozen=True)
class MediaSession:
    """One session of the forwarding unit, opened through this process."""

    kind: str  # "publish" | "subscribe"
    instance: str  # the page (Participant.instance) that opened it
    source: str | None = None  # the participant a subscription receives


# The forwarding unit's sessions opened through this process, by meeting and
# participant: a socket that comes back (a reconnect) finds them here, and any
# socket of the meeting in this process that sees a participant go (or lose the
# right to send) closes theirs, even when that participant's socket is gone.
_SESSIONS: dict[tuple[str, str], dict[str, MediaSession]] = {}
# The newest room version whose sessions were checked, by meeting (once per process).
_CHECKED: dict[str, int] = {}
# Recordings started through this process, by meeting and participant: the
# file's name and the participant's name (a publication closed while recorded
# is stopped first, so that its file goes into the meeting log).
_RECORDED: dict[tuple[str, str], tuple[str, str]] = {}
# Work that must outlive the socket that started it (recorders started, stopped).
_BACKGROUND: set[asyncio.Task] = set()
# Seconds after recording is turned on before the first recorder starts: by
# then every socket has been sent the room that says so (MEETINGS may set it).
RECORDING_LEAD_SECONDS = 1.0
# What the forwarding unit's refusals become on the socket.
_MEDIA_CODES = {
    404: ErrorCode.NOT_FOUND,
    409: ErrorCode.CONFLICT,
    503: ErrorCode.FULL,
}


class _MediaEvent(msgspec.Struct):
    """What this consumer reads of a frame on a media room's topic."""

    type: str
    data: dict


_media_event = msgspec.json.Decoder(_MediaEvent)
# Only these frames are decoded: the topic also carries media.speaker and the like.
_RECONNECT_MARK = '"type":"media.reconnect"'


def _media_service():
    from media import service

    return service


def _background(coro) -> asyncio.Task:
    task = asyncio.ensure_future(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task


def recording_name(code: str, since: float, pid: str, instance: str, published: int) -> str:
    """The file (``MEDIA["RECORDINGS_DIR"]/<name>`` + ``.webm``/``.mkv``) of one
    publication in one recording: the same publication gets the same name from
    any process, and a new page or publication a new one."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(since))
    millis = int(since * 1000) % 1000
    page = hashlib.sha256(instance.encode()).hexdigest()[:6]
    return f"meet-{code}/{stamp}-{millis:03d}-{pid}-{page}-{published}"


def _forget_recordings(code: str) -> None:
    for key in [k for k in _RECORDED if k[0] == code]:
        del _RECORDED[key]


def _event_dict(event: rules.Event) -> dict:
    return {
        "kind": event.kind,
        "pid": event.pid,
        "actor": event.actor,
        "to": event.to,
        "detail": event.detail,
    }


def _recording_file(path: str) -> str:
    """A recording's path as the log keeps it: inside ``RECORDINGS_DIR``."""
    from pathlib import Path

    try:
        return str(Path(path).relative_to(settings.MEDIA["RECORDINGS_DIR"]))
    except ValueError:
        return path


class MeetConsumer(EnvelopeConsumer):
    endpoint = "meet"
    protocol = HUB_PROTOCOL.extend(p.INBOUND)
    require_login = True  # a signed-in user or a guest token for this meeting
    clock: Clock = system_clock

    def session_limits(self) -> SessionLimits:
        m = settings.MEETINGS
        return replace(
            SessionLimits.from_settings(),
            rate_per_second=m["RATE_PER_SECOND"],
            rate_burst=m["RATE_BURST"],
        )

    def handlers(self):
        return {
            p.Join: self.join,
            p.Signal: self.signal,
            p.SfuPublish: self.sfu_publish,
            p.SfuSubscribe: self.sfu_subscribe,
            p.SfuClose: self.sfu_close,
            p.SfuReady: self.sfu_ready,
            p.Media: self.media,
            p.Hand: self.hand,
            p.Chat: self.chat,
            p.History: self.history,
            p.Sync: self.sync,
            p.Leave: self.leave,
            p.Admit: lambda m: self._act(Action.ADMIT, m.who),
            p.Deny: lambda m: self._act(Action.DENY, m.who),
            p.SendBack: lambda m: self._act(Action.SEND_BACK, m.who),
            p.CallNext: lambda m: self._act(Action.CALL_NEXT, value=m.current),
            p.Mute: lambda m: self._act(Action.MUTE, m.who, {"audio": m.audio, "video": m.video}),
            p.Remove: lambda m: self._act(Action.REMOVE, m.who),
            p.Lock: lambda m: self._act(Action.LOCK, value=m.locked),
            p.End: lambda m: self._act(Action.END),
            p.HandOver: lambda m: self._act(Action.HAND_OVER, m.who),
            p.Floor: lambda m: self._act(Action.FLOOR, m.who, m.give),
            p.Approve: self.approve,
            p.Record: lambda m: self._act(Action.RECORD, value=m.on),
        }

    # --- Connection -----------------------------------------------------------

    async def connect(self):
        self.code = self.scope["url_route"]["kwargs"]["code"]
        self.group = f"meet.{self.code}"
        self.pid: str | None = None
        self.room: Room | None = None
        self.sent_version = -1
        # recording_since of the last room sent to this page that said
        # "recording" (None: the last one did not): until then nothing of this
        # participant is recorded.
        self.shown_recording: float | None = None
        # Listens to the media room's topic from join until the socket goes.
        self._media_events: asyncio.Task | None = None
        self.limits_rules = services.limits()
        m = settings.MEETINGS
        self.chat_bucket = TokenBucket(
            m["CHAT_PER_MINUTE"] / 60, min(5, m["CHAT_PER_MINUTE"]), clock=self.clock
        )
        guest = self.scope.get("guest")
        if guest is not None and guest.resource != f"meet:{self.code}":
            self.scope = {**self.scope, "guest": None}  # a token for another meeting
        if await services.find_meeting(self.code) is None:
            # Refuse the handshake (HTTP 403): an unknown code learns nothing more.
            await self.close()
            return
        await super().connect()

    async def disconnect(self, code):
        if not hasattr(self, "_tasks"):
            # The handshake was refused (unknown code) before the base consumer
            # set anything up: there is nothing to undo.
            return
        pid, self.pid = self.pid, None
        if pid is not None:
            try:
                await self._change(
                    lambda room: rules.disconnect(
                        room, pid, self.channel_name, now=self._now(), limits=self.limits_rules
                    )
                )
            except Exception:
                log.exception("meeting %s: could not mark %s away", self.code, pid)
            await self.channel_layer.group_discard(self.group, self.channel_name)
        # Cancelled here, awaited with the other tasks by the base: its finally
        # removes the bus listener.
        self._stop_media_events()
        await super().disconnect(code)

    async def _heartbeat_forever(self):
        # The base heartbeat pings the client; this renews the participant's
        # lease beside it, so a participant whose process died times out.
        import asyncio

        async def renew_forever():
            # Every RESYNC seconds: compare our copy of the room with the stored
            # one and catch up (the channel layer drops group messages when a
            # process's queue is full, and can lose one when another socket of
            # the process closes mid-receive: django/channels_redis#366). Every
            # heartbeat: renew the lease (a write).
            interval = self.limits.heartbeat_interval
            resync = min(settings.MEETINGS["RESYNC_SECONDS"], interval)
            since_renewal = 0.0
            while True:
                await asyncio.sleep(resync)
                since_renewal += resync
                if self.pid is None:
                    continue
                pid = self.pid
                try:
                    if since_renewal >= interval:
                        since_renewal = 0.0
                        changed = await self._change(
                            lambda room, pid=pid: rules.renew(
                                room,
                                pid,
                                self.channel_name,
                                now=self._now(),
                                limits=self.limits_rules,
                            )
                        )
                        stored = changed.room
                    else:
                        meeting = await services.find_meeting(self.code)
                        stored = meeting.room() if meeting is not None else None
                    if stored is not None and self.room is not None:
                        if stored.version > self.room.version:
                            log.info("meeting %s: %s caught up a lost update", self.code, pid)
                            await self.meet_room(
                                {"state": msgspec.to_builtins(stored), "events": []}
                            )
                except Exception:
                    log.warning("meeting %s: lease renewal failed", self.code, exc_info=True)

        renewer = asyncio.get_running_loop().create_task(renew_forever())
        try:
            await super()._heartbeat_forever()
        finally:
            renewer.cancel()

    def _now(self) -> float:
        return self.clock.time()

    # --- Changing the room ----------------------------------------------------

    async def _change(self, change, *, refresh: bool = False) -> services.Changed:
        try:
            changed = await services.change_room(
                self.code, change, now=self._now(), refresh=refresh
            )
        except Refused as refused:
            raise refusal(refused.reason, refused.code) from None
        if self.pid is not None and (self.room is None or changed.room.version > self.room.version):
            # Our own change is the newest state we know: act on it at once (its
            # broadcast may reach this consumer after the client's next frame).
            # The view goes out with the broadcast, as for everyone.
            self.room = changed.room
        if changed.visible or any(e.to for e in changed.events):
            await self.channel_layer.group_send(
                self.group,
                {
                    "type": "meet.room",
                    "state": msgspec.to_builtins(changed.room),
                    "events": [_event_dict(e) for e in changed.events],
                },
            )
        if any(e.kind == "recording_off" for e in changed.events):
            # After the room said so: every recorder of the meeting stops.
            _background(self._stop_recordings(changed.room))
        return changed

    def _me(self) -> rules.Participant:
        if self.pid is None or self.room is None:
            raise refusal("join_first")
        me = self.room.participants.get(self.pid)
        if me is None:
            raise refusal("join_first")
        return me

    def _view(self) -> dict:
        return rules.view(self.room, self.pid, now=self._now(), limits=self.limits_rules)

    async def _act(self, action: Action, target: str | None = None, value=None) -> p.Ok:
        self._me()
        pid = self.pid
        await self._change(
            lambda room: rules.act(
                room,
                pid,
                action,
                now=self._now(),
                limits=self.limits_rules,
                target=target,
                value=value,
            )
        )
        return p.Ok()

    # --- Join -------------------------------------------------------------------

    @database_sync_to_async
    def _claim(self, message: p.Join) -> rules.Claim:
        user = self.scope.get("user")
        principal = principal_of(self.scope)
        session = self.scope.get("session")
        host_link = bool(session is not None and self.code in session.get("meet_hosts", []))
        if user is not None and user.is_authenticated:
            roles = roles_of(user)
            owner = services.find_meeting_sync(self.code).owner_id == user.pk
            return rules.Claim(
                principal=principal,
                name=_clean_name(user.get_full_name() or user.get_username()),
                authenticated=True,
                staff=bool(roles & STAFF_ROLES) or user.is_staff,
                host=owner or host_link,
                watch_only=message.watch_only,
            )
        guest = self.scope["guest"]
        return rules.Claim(
            principal=principal,
            name=_clean_name(guest.name),
            host=host_link,
            watch_only=message.watch_only,
        )

    async def join(self, message: p.Join) -> p.Joined:
        if self.pid is not None:
            raise refusal("already_joined", ErrorCode.CONFLICT)
        claim = await self._claim(message)
        now, limits = self._now(), self.limits_rules
        # Into the group before the change is stored: a change made by someone
        # else right after ours (the host admits at once) must reach this
        # socket. The group's messages wait until this handler returns, and
        # meet_room drops those older than the room we reply with.
        await self.channel_layer.group_add(self.group, self.channel_name)
        try:
            changed, resumed = await self._enter(claim, message, now, limits)
        except BaseException:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            raise
        self.pid = changed.pid
        self.room = changed.room
        self.sent_version = changed.room.version
        from signaling.turn import ice_servers

        reply = p.Joined(
            you=self.pid,
            rejoin_token=make_rejoin_token(self.code, self.pid, claim.principal),
            resumed=resumed,
            ice_servers=ice_servers(claim.principal),
            room=self._view(),
        )
        # Sent here rather than returned: the page must have the room (with
        # "recording") before this participant's publication is recorded.
        reply.id = message.id
        await self.send_message(reply)
        self._shown(self.room)
        self._hear_media_events()
        return None

    async def _enter(
        self, claim: rules.Claim, message: p.Join, now: float, limits: rules.Limits
    ) -> tuple[services.Changed, bool]:
        """Back to an earlier place (a valid rejoin token) or a fresh join."""
        pid = (
            read_rejoin_token(message.rejoin, self.code, claim.principal)
            if message.rejoin
            else None
        )
        if pid is not None:
            try:
                changed = await self._change(
                    lambda room: rules.reconnect(
                        room,
                        pid,
                        claim.principal,
                        channel=self.channel_name,
                        instance=_clean_instance(message.instance),
                        now=now,
                        limits=limits,
                    )
                )
                return changed, True
            except EnvelopeError as error:
                if error.code is not ErrorCode.RESUME_EXPIRED:
                    raise
        changed = await self._change(
            lambda room: rules.join(
                room,
                claim,
                channel=self.channel_name,
                instance=_clean_instance(message.instance),
                now=now,
                limits=limits,
            ),
            refresh=True,
        )
        return changed, False

    async def _reload(self) -> None:
        """Read the stored room and take it in as if it had been broadcast
        (what a lost update said is then caught up: ended, removed…)."""
        stored = (await services.find_meeting(self.code)).room()
        if self.room is None or stored.version > self.room.version:
            await self.meet_room({"state": msgspec.to_builtins(stored), "events": []})

    async def sync(self, message: p.Sync) -> None:
        self._me()
        await self._reload()
        self._me()
        self.sent_version = self.room.version
        await self.send_message(p.RoomView(room=self._view(), id=message.id))
        self._shown(self.room)
        return None

    async def leave(self, message: p.Leave) -> p.Ok:
        return await self._act(Action.LEAVE)

    # --- Participant controls ---------------------------------------------------

    async def media(self, message: p.Media) -> p.Ok:
        self._me()
        pid = self.pid
        wanted = [
            (action, value)
            for action, value in (
                (Action.AUDIO, message.audio),
                (Action.VIDEO, message.video),
                (Action.SCREEN, message.screen),
            )
            if value is not None
        ]

        def change(room: Room) -> rules.Outcome:
            outcome = rules.Outcome(room)
            for action, value in wanted:
                step = rules.act(
                    outcome.room,
                    pid,
                    action,
                    now=self._now(),
                    limits=self.limits_rules,
                    value=value,
                )
                outcome = rules.Outcome(step.room, outcome.events + step.events)
            return outcome

        await self._change(change)
        return p.Ok()

    async def hand(self, message: p.Hand) -> p.Ok:
        return await self._act(Action.HAND, value=message.raised)

    async def signal(self, message: p.Signal) -> p.Ok | None:
        me = self._me()
        self._allowed(me, Action.SIGNAL)
        if (message.description is None) == (message.candidate is None):
            raise refusal("one_payload", ErrorCode.BAD_MESSAGE)
        try:
            if message.description is not None:
                sdp.check_description(
                    message.description.type,
                    message.description.sdp,
                    max_bytes=settings.MEETINGS["MAX_SDP_BYTES"],
                )
            else:
                c = message.candidate
                sdp.check_candidate(c.candidate, c.sdpMid, c.sdpMLineIndex, c.usernameFragment)
        except sdp.BadInput as bad:
            code = ErrorCode.BAD_SDP if message.description is not None else ErrorCode.BAD_CANDIDATE
            raise refusal(bad.reason, code, limit=settings.MEETINGS["MAX_SDP_BYTES"]) from None
        target = self.room.participants.get(message.to)
        if target is None or target.channel is None or target.status is not Status.ADMITTED:
            # Our copy of the room may be a moment old: read it once more.
            await self._reload()
            me = self._me()
            self._allowed(me, Action.SIGNAL)
        target = self._reachable(message.to)
        if me.role is Role.VIEWER and target.role is Role.VIEWER:
            raise refusal("not_allowed")
        await self._relay(
            target,
            {
                "type": "meet.signal",
                "from": self.pid,
                "to": target.pid,
                "description": msgspec.to_builtins(message.description),
                "candidate": msgspec.to_builtins(message.candidate),
            },
        )
        return p.Ok() if message.id else None

    def _reachable(self, pid: str) -> rules.Participant:
        """Participant ``pid`` of our copy of the room, if a message can reach
        them: someone else, admitted and connected; else refused."""
        target = self.room.participants.get(pid)
        if (
            target is None
            or target.pid == self.pid
            or target.status is not Status.ADMITTED
            or target.channel is None
        ):
            raise refusal("peer_unavailable", ErrorCode.NOT_FOUND)
        return target

    async def _relay(self, target: rules.Participant, event: dict) -> None:
        """Send ``event`` to ``target``'s socket (through the channel layer)."""
        try:
            await self.channel_layer.send(target.channel, event)
        except ChannelFull:
            # The other process's queue is full: say so; the page sends again.
            raise refusal("relay_busy", ErrorCode.RATE_LIMITED) from None

    def _allowed(self, me: rules.Participant, action: Action) -> None:
        if self.room.ended:
            raise refusal("meeting_ended", ErrorCode.GONE)
        if me.status is not Status.ADMITTED:
            raise refusal("not_admitted")
        if not rules.may(self.room.kind, me.role, action):
            raise refusal("not_allowed")

    # --- Through the forwarding unit (topology "sfu") -----------------------------

    def _stream(self) -> str:
        return f"meet-{self.code}"

    def _owner(self, pid: str) -> str:
        return f"meet:{self.code}:{pid}"

    async def _rule(self, check):
        """A rule's check on our copy of the room, then once more on the stored
        room if it refused (our copy may be a moment old)."""
        try:
            return check(self.room)
        except Refused:
            await self._reload()
            self._me()
        try:
            return check(self.room)
        except Refused as refused:
            raise refusal(refused.reason, refused.code) from None

    def _offer(self, description: p.Description) -> str:
        if description.type != "offer":
            raise refusal("description_type", ErrorCode.BAD_SDP)
        limit = settings.MEETINGS["MAX_SDP_BYTES"]
        try:
            sdp.check_description("offer", description.sdp, max_bytes=limit)
        except sdp.BadInput as bad:
            raise refusal(bad.reason, ErrorCode.BAD_SDP, limit=limit) from None
        return description.sdp

    async def _ask_media(self, call):
        """A call to the media plane; its refusals as the socket's errors."""
        from media.sfu.room import MediaError

        try:
            return await call
        except MediaError as error:
            code = _MEDIA_CODES.get(error.status, ErrorCode.BAD_SDP)
            reason = error.reason if error.reason in REASONS else "media_refused"
            if error.status == 503:
                # At its limits (peers, bitrate), or no media worker answers.
                full = error.reason in ("peers", "bitrate", "viewers")
                reason = "media_full" if full else "media_unavailable"
            raise EnvelopeError(code, REASONS[reason], reason=error.reason) from None
        except EnvelopeError:
            raise
        except Exception:
            log.warning("meeting %s: the media plane failed", self.code, exc_info=True)
            raise refusal("media_unavailable", ErrorCode.INTERNAL) from None

    def _keep(self, pid: str, session: str, media: MediaSession) -> None:
        _SESSIONS.setdefault((self.code, pid), {})[session] = media

    async def _close_media(self, pid: str, wanted) -> list[MediaSession]:
        """Close ``pid``'s sessions (through this process) that ``wanted(id,
        session)`` picks."""
        sessions = _SESSIONS.get((self.code, pid), {})
        doomed = [(sid, m) for sid, m in sessions.items() if wanted(sid, m)]
        for sid, _media in doomed:
            sessions.pop(sid, None)
        if not sessions:
            _SESSIONS.pop((self.code, pid), None)
        recorded = _RECORDED.get((self.code, pid))
        if recorded is not None and any(m.kind == "publish" for _sid, m in doomed):
            # Closing would finish the file too, but its name would be lost.
            del _RECORDED[(self.code, pid)]
            await self._stop_recording(pid, recorded[1])
        for sid, _media in doomed:
            try:
                await _media_service().close(sid)
            except Exception:
                log.warning("meeting %s: could not close media session", self.code, exc_info=True)
        return [m for _sid, m in doomed]

    async def sfu_publish(self, message: p.SfuPublish) -> p.SfuAnswer:
        self._me()
        pid = self.pid
        me = await self._rule(lambda room: rules.check_publish(room, pid, self.limits_rules))
        offer = self._offer(message.description)
        # One publication per participant: a new one (a new page, a media
        # worker that died) replaces the earlier one before it starts.
        await self._close_media(pid, lambda _sid, m: m.kind == "publish")
        service = _media_service()
        answer = await self._ask_media(
            service.publish(self._stream(), offer, owner=self._owner(pid), exclusive=False)
        )
        self._keep(pid, answer.session, MediaSession("publish", me.instance))
        try:
            await self._change(
                lambda room: rules.publishing(room, pid, True, limits=self.limits_rules)
            )
        except BaseException:
            await self._close_media(pid, lambda sid, _m: sid == answer.session)
            raise
        # While recording (and this page was told), the new publication is
        # recorded from when it connects: it cannot before the page has our answer.
        starting = self._maybe_record()
        if starting is not None:
            # Bounded: a slow media plane delays the recording, not the call.
            await asyncio.wait({starting}, timeout=self._recording_lead() + 2.0)
        return p.SfuAnswer(
            session=answer.session, description=p.Description(type="answer", sdp=answer.sdp)
        )

    async def sfu_subscribe(self, message: p.SfuSubscribe) -> p.SfuAnswer:
        self._me()
        pid, source = self.pid, message.source
        await self._rule(lambda room: rules.check_subscribe(room, pid, source, self.limits_rules))
        me = self._me()
        offer = self._offer(message.description)
        await self._close_media(pid, lambda _sid, m: m.kind == "subscribe" and m.source == source)
        service = _media_service()
        answer = await self._ask_media(
            service.subscribe(
                self._stream(),
                offer,
                owner=self._owner(pid),
                source_owner=self._owner(source),
            )
        )
        self._keep(pid, answer.session, MediaSession("subscribe", me.instance, source))
        return p.SfuAnswer(
            session=answer.session,
            source=source,
            description=p.Description(type="answer", sdp=answer.sdp),
        )

    async def sfu_close(self, message: p.SfuClose) -> p.Ok:
        self._me()
        pid = self.pid
        mine = _SESSIONS.get((self.code, pid), {})
        if message.session not in mine:
            # Opened through another process (before a reconnect): the unit knows.
            service = _media_service()
            owner = await service.owner_of(self._stream(), message.session)
            if owner != self._owner(pid):
                raise refusal("no_such_session", ErrorCode.NOT_FOUND)
            await service.close(message.session)
            return p.Ok()
        closed = await self._close_media(pid, lambda sid, _m: sid == message.session)
        if any(m.kind == "publish" for m in closed):
            await self._change(
                lambda room: rules.publishing(room, pid, False, limits=self.limits_rules)
            )
        return p.Ok()

    async def sfu_ready(self, message: p.SfuReady) -> p.Ok | None:
        me = self._me()
        self._allowed(me, Action.SIGNAL)
        target = self._reachable(message.to)
        await self._relay(target, {"type": "meet.sfu_ready", "from": self.pid, "to": target.pid})
        return p.Ok() if message.id else None

    async def _check_media(self, room: Room) -> None:
        """Close the sessions (opened through this process) that ``room`` no
        longer allows: of someone who left, was sent back or reloaded the page,
        a publication of someone who lost the floor, a subscription to someone
        who stopped sending; all of them once the room is no longer "sfu"."""
        if _CHECKED.get(self.code, -1) >= room.version:
            return
        _CHECKED[self.code] = room.version
        sfu = not room.ended and rules.topology(room, self.limits_rules) == "sfu"

        def allowed(pid: str):
            def check(m: MediaSession) -> bool:
                me = room.participants.get(pid)
                if not sfu or me is None or me.status is not Status.ADMITTED:
                    return False
                if me.instance != m.instance:
                    return False
                if m.kind == "publish":
                    return rules.may_publish(room, me)
                source = room.participants.get(m.source or "")
                return (
                    source is not None
                    and source.status is Status.ADMITTED
                    and bool(source.published)
                )

            return check

        for code, pid in list(_SESSIONS):
            if code != self.code:
                continue
            check = allowed(pid)
            await self._close_media(pid, lambda _sid, m, check=check: not check(m))
        if room.ended or not room.participants:
            _CHECKED.pop(self.code, None)
            _forget_recordings(self.code)

    # --- Told by the media plane ------------------------------------------------------

    def _hear_media_events(self) -> None:
        """Listen to the meeting's media room topic until the socket goes
        (a task of this socket: joining does not wait for the bus, and every
        way out, disconnect() above all, cancels it)."""
        if self._media_events is None:
            task = asyncio.get_running_loop().create_task(self._media_events_forever())
            self._media_events = task
            self._tasks.append(task)  # cancelled and awaited by the base's disconnect()

    def _stop_media_events(self) -> None:
        task = getattr(self, "_media_events", None)
        if task is not None:
            task.cancel()

    async def _media_events_forever(self) -> None:
        from media.registry import room_topic

        bus, topic = get_bus(), room_topic(self._stream())
        try:
            await bus.listen(topic, self._on_media_event)
        except Exception:
            # Best effort: without it the page still notices its links fail.
            log.warning("meeting %s: cannot listen to %s", self.code, topic, exc_info=True)
            return
        try:
            await asyncio.Future()  # until cancelled
        finally:
            # The listener is removed before unlisten's first await: a second
            # cancellation cannot leave it behind.
            await bus.unlisten(topic, self._on_media_event)

    def _on_media_event(self, topic: str, seq: int, frame: str) -> None:
        """A frame on the media room's topic (called by the bus, in its
        reader: nothing here waits). ``media.reconnect``: the room lost its
        media worker; a participant in the call through the unit is told."""
        if _RECONNECT_MARK not in frame or self.pid is None or self.room is None:
            return
        try:
            event = _media_event.decode(frame)
        except msgspec.DecodeError:  # ValidationError too
            return
        data = event.data
        if event.type != "media.reconnect" or data.get("room") != self._stream():
            return
        room = self.room
        me = room.participants.get(self.pid)
        if me is None or me.status is not Status.ADMITTED or room.ended:
            return
        if rules.topology(room, self.limits_rules) != "sfu":
            return  # the page has no connection to the unit
        worker, reason = data.get("worker"), data.get("reason")
        detail = {
            "worker": worker if isinstance(worker, str) else None,
            "reason": reason if isinstance(reason, str) else "worker_lost",
        }
        self.push(encode(p.Notice(event="media_reconnect", detail=detail)))

    # --- Recording (through the forwarding unit) -----------------------------------

    def _shown(self, room: Room) -> None:
        """``room`` was just sent to this page: if it says "recording", this
        participant's publication may be recorded from now on."""
        self.shown_recording = room.recording_since if room.recording else None
        self._maybe_record()

    def _maybe_record(self) -> asyncio.Task | None:
        """Start recording this participant's publication if the room records,
        this page was told so, and it is not being recorded yet."""
        room, pid = self.room, self.pid
        if room is None or pid is None or not room.recording or room.ended:
            return None
        since = room.recording_since
        if since is None or self.shown_recording != since:
            return None
        me = room.participants.get(pid)
        if me is None or me.status is not Status.ADMITTED or not me.published:
            return None
        name = recording_name(self.code, since, pid, me.instance, me.published)
        key = (self.code, pid)
        if _RECORDED.get(key, ("",))[0] == name:
            return None
        _RECORDED[key] = (name, me.name)
        return _background(self._record(pid, me.name, name, since))

    def _recording_lead(self) -> float:
        return float(settings.MEETINGS.get("RECORDING_LEAD_SECONDS", RECORDING_LEAD_SECONDS))

    async def _record(self, pid: str, who: str, name: str, since: float) -> None:
        from media.sfu.room import MediaError

        key = (self.code, pid)
        delay = since + self._recording_lead() - self._now()
        if delay > 0:
            await asyncio.sleep(delay)
        room = self.room
        if (
            _RECORDED.get(key, ("",))[0] != name
            or self.pid != pid
            or room is None
            or room.recording_since != since
        ):
            # Turned off (or on again), or the participant went, meanwhile.
            if _RECORDED.get(key, ("",))[0] == name:
                del _RECORDED[key]
            return
        try:
            await _media_service().record(self._stream(), self._owner(pid), name)
        except Exception as error:
            if _RECORDED.get(key, ("",))[0] == name:
                del _RECORDED[key]
            reason = "media_unavailable"
            if isinstance(error, MediaError):
                reason = error.reason if error.reason in REASONS else "recording_failed"
                if error.status == 503:
                    full = error.reason in ("peers", "bitrate", "viewers")
                    reason = "media_full" if full else "media_unavailable"
            else:
                log.warning("meeting %s: recording %s failed", self.code, name, exc_info=True)
            await self._recording_failed(pid, who, name, reason)
            return
        # Turned off while we asked (the stop may have reached the media plane
        # before our start did): the stored room says, and we stop it ourselves.
        meeting = await services.find_meeting(self.code)
        stored = meeting.room() if meeting is not None else None
        if stored is None or not stored.recording or stored.recording_since != since:
            if _RECORDED.get(key, ("",))[0] == name:
                del _RECORDED[key]
            await self._stop_recording(pid, who)
            return
        await self._log_quietly("recording_started", pid, who, {"file": name})

    async def _recording_failed(self, pid: str, who: str, name: str, reason: str) -> None:
        """Told to those who moderate (a notice) and kept in the log; the
        meeting goes on."""
        log.warning("meeting %s: could not record %s (%s)", self.code, pid, reason)
        await self._log_quietly("recording_failed", pid, who, {"reason": reason, "file": name})
        try:
            await self.channel_layer.group_send(
                self.group,
                {"type": "meet.recording_failed", "pid": pid, "name": who, "reason": reason},
            )
        except Exception:
            log.warning("meeting %s: could not tell of a failed recording", self.code)

    async def _stop_recordings(self, room: Room) -> None:
        """Recording went off: stop every publisher's recorder (through the
        media plane: wherever their publication is)."""
        for person in room.participants.values():
            if person.published:
                _RECORDED.pop((self.code, person.pid), None)
                await self._stop_recording(person.pid, person.name)

    async def _stop_recording(self, pid: str, who: str) -> None:
        from media.sfu.room import MediaError

        try:
            path = await _media_service().stop_recording(self._stream(), self._owner(pid))
        except MediaError:
            return  # it publishes nothing (any more): its file was finished then
        except Exception:
            log.warning("meeting %s: could not stop a recording", self.code, exc_info=True)
            return
        if path:
            await self._log_quietly("recording_saved", pid, who, {"file": _recording_file(path)})

    async def _log_quietly(self, kind: str, pid: str, who: str, detail: dict) -> None:
        try:
            await services.log_event(
                self.code, kind, now=self._now(), pid=pid, name=who, detail=detail
            )
        except Exception:
            log.warning("meeting %s: could not log %s", self.code, kind, exc_info=True)

    # --- Chat -------------------------------------------------------------------

    def _moderates(self, me: rules.Participant) -> bool:
        return me.role in (Role.HOST, Role.MODERATOR)

    async def chat(self, message: p.Chat) -> p.Ok:
        me = self._me()
        self._allowed(me, Action.CHAT)
        text = _CONTROL.sub("", message.text).strip()
        limit = settings.MEETINGS["MAX_CHAT_CHARS"]
        if not text:
            raise refusal("chat_empty", ErrorCode.BAD_MESSAGE)
        if len(text) > limit:
            raise refusal("chat_too_long", ErrorCode.BAD_MESSAGE, limit=limit)
        # A burst per socket, and a per-minute limit per participant that a
        # reconnect or a second socket does not reset.
        per_minute = settings.MEETINGS["CHAT_PER_MINUTE"]
        if not self.chat_bucket.take() or (
            await services.chat_count_since(self.code, me.pid, time.time() - 60) >= per_minute
        ):
            raise refusal("chat_flood", ErrorCode.RATE_LIMITED)
        pending = self.room.kind in rules.FLOOR_KINDS and not self._moderates(me)
        saved = await services.save_chat(self.code, me.pid, me.name, me.role.value, text, pending)
        await self.channel_layer.group_send(self.group, {"type": "meet.chat", "message": saved})
        return p.Ok()

    async def history(self, message: p.History) -> p.HistoryOut:
        me = self._me()
        self._allowed(me, Action.CHAT if me.role is not Role.VIEWER else Action.SIGNAL)
        rows = await services.chat_history(self.code, me.pid, self._moderates(me))
        return p.HistoryOut(messages=rows)

    async def approve(self, message: p.Approve) -> p.Ok:
        me = self._me()
        self._allowed(me, Action.APPROVE)
        saved = await services.moderate_chat(self.code, message.message, message.publish)
        if saved is None:
            raise refusal("no_such_question", ErrorCode.NOT_FOUND)
        await self.channel_layer.group_send(self.group, {"type": "meet.chat", "message": saved})
        return p.Ok()

    # --- From the channel layer ---------------------------------------------------

    async def meet_room(self, event) -> None:
        if self.pid is None:
            return
        room = msgspec.convert(event["state"], Room)
        for e in event["events"]:
            # Told even when this change was overtaken by a newer one.
            if e["to"] == self.pid and e["kind"] != "left":
                actor = room.participants.get(e["actor"] or "")
                await self.send_message(
                    p.Notice(event=e["kind"], by=actor.name if actor else None, detail=e["detail"])
                )
        if self.room is not None and room.version < self.room.version:
            return  # an older state overtaken by a newer one
        self.room = room
        if _SESSIONS:
            await self._check_media(room)
        if not room.recording and _RECORDED:
            _forget_recordings(self.code)
        if room.ended:
            await self._finish(p.Ended(message=self._text("meeting_ended")), CloseCode.NORMAL)
            return
        me = room.participants.get(self.pid)
        if me is None or me.channel != self.channel_name:
            reason = "replaced" if me is not None else "timed_out"
            told = [
                e["detail"].get("reason", reason)
                for e in event["events"]
                if e["kind"] == "left" and e["pid"] == self.pid
            ]
            if told:
                reason = told[0]
            elif me is None:
                # The message that said why was lost: the log says.
                reason = await services.departure_reason(self.code, self.pid) or reason
            await self._finish(
                p.Left(reason=reason, message=self._text(reason)),
                CLOSE_FOR.get(reason, CloseCode.NORMAL),
            )
            return
        if room.version > self.sent_version:
            self.sent_version = room.version
            await self.send_message(p.RoomView(room=self._view()))
            self._shown(room)

    async def _finish(self, message, close_code: CloseCode) -> None:
        self.pid = None  # out of the meeting: disconnect() changes nothing more
        self._stop_media_events()
        await self.channel_layer.group_discard(self.group, self.channel_name)
        await self.send_message(message)
        self.close_after_sending(close_code)

    def _text(self, reason: str) -> str:
        with translation.override(self.session.language if self.session else None):
            return str(REASONS.get(reason, reason))

    async def meet_signal(self, event) -> None:
        if self.pid is None or event["to"] != self.pid or self.room is None:
            return
        me = self.room.participants.get(self.pid)
        if me is None or me.status is not Status.ADMITTED:
            return  # sent back to the queue meanwhile: not for us any more
        await self.send_message(
            p.SignalFrom(
                from_=event["from"],
                polite=rules.polite(self.pid, event["from"]),
                description=msgspec.convert(event["description"], p.Description | None),
                candidate=msgspec.convert(event["candidate"], p.Candidate | None),
            )
        )

    async def meet_sfu_ready(self, event) -> None:
        if self.pid is None or event["to"] != self.pid or self.room is None:
            return
        me = self.room.participants.get(self.pid)
        if me is None or me.status is not Status.ADMITTED:
            return
        await self.send_message(p.SfuReadyFrom(from_=event["from"]))

    async def meet_recording_failed(self, event) -> None:
        if self.pid is None or self.room is None:
            return
        me = self.room.participants.get(self.pid)
        if me is None or me.status is not Status.ADMITTED:
            return
        if not rules.may(self.room.kind, me.role, Action.RECORD):
            return
        reason = event["reason"]
        await self.send_message(
            p.Notice(
                event="recording_failed",
                detail={
                    "who": event["pid"],
                    "name": event["name"],
                    "reason": reason,
                    "message": self._text(reason),
                },
            )
        )

    async def meet_chat(self, event) -> None:
        if self.pid is None or self.room is None:
            return
        me = self.room.participants.get(self.pid)
        if me is None or me.status is not Status.ADMITTED:
            return
        message = event["message"]
        if message["status"] == "published" or self._moderates(me) or message["pid"] == me.pid:
            await self.send_message(p.ChatOut(message=message))
