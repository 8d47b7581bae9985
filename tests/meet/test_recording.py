"""Recording a meeting that goes through the forwarding unit, on
``/ws/meet/<code>/``: the real ASGI app and PostgreSQL, the embedded unit,
real aiortc peers, files in a temporary RECORDINGS_DIR.

Everyone (the queue too) is sent the room that says "recording" before any
recorder starts; each publisher's file is finished and decodable when it is
turned off, and the files are in the meeting log; only those who moderate may
record, and a mesh cannot be recorded; a recorder that cannot start is told
to the host and the meeting goes on."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from pathlib import Path

import av
import pytest

from media import service
from media.sfu.room import NotFound
from signaling import consumers
from signaling.rules import Kind
from tests.meet.helpers import error_of, log_of
from tests.meet.test_consumer import meet
from tests.meet.test_sfu import call, person, publish, view_where
from tests.sfu.peers import Publisher, read_counter, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
async def _setup(settings, tmp_path):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.MEDIA_MODE = "embedded"
    settings.MEDIA = {**settings.MEDIA, "RECORDINGS_DIR": str(tmp_path / "recordings")}
    settings.MEETINGS = {
        **settings.MEETINGS,
        "SFU": True,
        "FORCE_SFU": True,
        "RECORDING_LEAD_SECONDS": 0.5,
    }
    service._local = None
    consumers._SESSIONS.clear()
    consumers._CHECKED.clear()
    consumers._RECORDED.clear()
    yield
    if service._local is not None:
        await service._local.close_all()
    service._local = None
    if consumers._BACKGROUND:
        await asyncio.wait(list(consumers._BACKGROUND), timeout=10)


@pytest.fixture
async def publishers():
    made: list[Publisher] = []

    def make() -> Publisher:
        made.append(Publisher())
        return made[-1]

    yield make
    for peer in made:
        with contextlib.suppress(Exception):
            await peer.pc.close()


def told(socket) -> bool:
    """Whether the socket has been sent a room that says "recording" (read
    already, or waiting to be read)."""
    pending = [json.loads(m["text"]) for m in list(socket.c.output_queue._queue) if m.get("text")]
    for frame in [*socket.seen, *pending]:
        room = frame.get("room") if frame.get("type") in ("room", "joined") else None
        if room and room.get("recording"):
            return True
    return False


def unit_sessions(code: str, pid: str):
    owner = f"meet:{code}:{pid}"
    return [
        s for s in service.local_sfu().sessions.values() if s.owner == owner and s.kind == "publish"
    ]


def recorder_of(code: str, pid: str):
    sessions = unit_sessions(code, pid)
    return sessions[0].recorder if sessions else None


async def saved_files(code: str, count: int, timeout: float = 15.0) -> list[tuple[str, str]]:
    """(who, file) of the recordings in the meeting log, once there are ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            (name, d["file"]) for kind, name, d in await log_of(code) if kind == "recording_saved"
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


def read_back(path: Path) -> list[int]:
    """The counters of every video frame a player decodes from the file."""
    with av.open(str(path)) as container:
        assert container.streams.audio, "no audio in the recording"
        return [read_counter(frame) for frame in container.decode(video=0)]


async def test_everyone_is_told_before_recording_starts_and_the_files_are_kept(
    connect, publishers, monkeypatch, settings
):
    m, guest, gid = await call(connect)
    waiting, _wid = await m.guest("Ewa")  # in the queue: told too, before entering
    await publish(m.host, publishers())
    await publish(guest, publishers())
    await view_where(m.host, lambda v: person(v, gid)["published"] == 1)
    await m.quiet(guest, waiting)

    # Each recorder start is checked: who had been sent the notice by then.
    sockets = {"host": m.host, "guest": guest, "waiting": waiting}
    starts: list[tuple[str, dict[str, bool]]] = []
    real_record = service.record

    async def watched(stream, source_owner, name):
        starts.append((source_owner, {who: told(s) for who, s in sockets.items()}))
        await real_record(stream, source_owner, name)

    monkeypatch.setattr(service, "record", watched)

    assert (await m.host.request({"type": "record", "on": True}))["type"] == "ok"
    for socket in sockets.values():
        view = await view_where(socket, lambda v: v["recording"])
        assert isinstance(view["recording_since"], float)
    assert await wait_for(lambda: len(starts) == 2, 10), starts
    assert {owner for owner, _ in starts} == {
        f"meet:{m.code}:{m.host_pid}",
        f"meet:{m.code}:{gid}",
    }
    for owner, seen in starts:
        assert seen == {"host": True, "guest": True, "waiting": True}, (owner, seen)
    # The files are being written (the recorder waits for a keyframe first).
    for pid in (m.host_pid, gid):
        assert await wait_for(
            lambda pid=pid: (
                (recorder_of(m.code, pid) or 0) and recorder_of(m.code, pid).video_frames > 30
            ),
            20,
        ), pid
    directory = Path(settings.MEDIA["RECORDINGS_DIR"]) / f"meet-{m.code}"
    assert len(list(directory.glob("*.webm.part"))) == 2

    # Off: every file is finished, decodable, and in the meeting log.
    assert (await m.host.request({"type": "record", "on": False}))["type"] == "ok"
    for socket in sockets.values():
        await view_where(socket, lambda v: not v["recording"] and v["recording_since"] is None)

    files = sorted(file for _, file in await saved_files(m.code, 2))
    assert len(files) == 2, await log_of(m.code)
    assert sorted(p.name for p in directory.glob("*.webm")) == sorted(Path(f).name for f in files)
    assert not list(directory.glob("*.part"))
    for file in files:
        assert file.startswith(f"meet-{m.code}/") and file.endswith(".webm")
        counters = read_back(Path(settings.MEDIA["RECORDINGS_DIR"]) / file)
        assert len(counters) > 30
        assert all(b > a for a, b in itertools.pairwise(counters))
    assert all(recorder_of(m.code, pid) is None for pid in (m.host_pid, gid))
    log = await log_of(m.code)
    kinds = [kind for kind, _, _ in log if kind.startswith("recording")]
    assert kinds.count("recording_on") == 1 and kinds.count("recording_off") == 1
    assert kinds.count("recording_started") == 2
    started = {d["file"] for kind, _, d in log if kind == "recording_started"}
    assert {f.rsplit(".", 1)[0] for f in files} == started
    # The publications go on, unrecorded.
    assert len(unit_sessions(m.code, gid)) == 1


async def test_a_later_publication_is_recorded_and_leaving_or_ending_keeps_the_files(
    connect, publishers, settings
):
    m, guest, gid = await call(connect)
    await publish(m.host, publishers())
    assert (await m.host.request({"type": "record", "on": True}))["type"] == "ok"
    await view_where(guest, lambda v: v["recording"])
    assert await wait_for(lambda: recorder_of(m.code, m.host_pid) is not None, 5)
    # The guest starts sending while recording: recorded from when it connects.
    await publish(guest, publishers())
    assert recorder_of(m.code, gid) is not None or unit_sessions(m.code, gid)[0].record_to
    assert await wait_for(
        lambda: (recorder_of(m.code, gid) or 0) and recorder_of(m.code, gid).video_frames > 10, 20
    )
    first = recorder_of(m.code, gid)
    assert first.frames["video"] and first.dropped < 30  # from its first keyframe
    # A new publication of the guest (a new page, say): the old file is
    # finished and kept, the new one recorded.
    await publish(guest, publishers())
    assert await wait_for(
        lambda: (recorder_of(m.code, gid) or 0) and recorder_of(m.code, gid).video_frames > 10, 20
    )
    assert recorder_of(m.code, gid) is not first
    # The guest leaves: their file is finished and kept.
    assert (await guest.request({"type": "leave"}))["type"] == "ok"
    # The host ends the meeting: recording stops with it.
    assert (await m.host.request({"type": "end"}))["type"] == "ok"

    files = await saved_files(m.code, 3)
    assert len(files) == 3, await log_of(m.code)
    host_name = m.host.joined["room"]["participants"][0]["name"]
    assert sorted(name for name, _ in files) == sorted(["Jan Kowalski"] * 2 + [host_name])
    root = Path(settings.MEDIA["RECORDINGS_DIR"])
    for _, file in files:
        assert len(read_back(root / file)) > 5
    log = await log_of(m.code)
    assert ("recording_off", "", {"reason": "ended"}) in log


async def test_only_moderators_record_and_a_mesh_cannot_be(connect, settings):
    m, guest, gid = await call(connect)
    refused = await error_of(guest, {"type": "record", "on": True})
    assert (refused["code"], refused["reason"]) == ("forbidden", "not_allowed")
    assert (await m.host.request({"type": "record", "on": True}))["type"] == "ok"
    refused = await error_of(m.host, {"type": "record", "on": True})
    assert (refused["code"], refused["reason"]) == ("conflict", "already_recording")
    refused = await error_of(guest, {"type": "record", "on": False})
    assert refused["reason"] == "not_allowed"
    assert (await m.host.request({"type": "record", "on": False}))["type"] == "ok"

    settings.MEETINGS = {**settings.MEETINGS, "FORCE_SFU": False}
    mesh = await meet(connect, Kind.BRIEFING)
    assert mesh.host.joined["room"]["topology"] == "mesh"
    refused = await error_of(mesh.host, {"type": "record", "on": True})
    assert (refused["code"], refused["reason"]) == ("conflict", "recording_needs_sfu")
    assert "server" in refused["message"] or "serwer" in refused["message"]


async def test_a_recorder_that_cannot_start_is_told_to_the_host_and_the_meeting_goes_on(
    connect, publishers, monkeypatch
):
    m, guest, gid = await call(connect)
    await publish(guest, publishers())
    await view_where(m.host, lambda v: person(v, gid)["published"] == 1)

    async def failing(stream, source_owner, name):
        raise NotFound("no_publisher", "that participant publishes nothing")

    monkeypatch.setattr(service, "record", failing)
    assert (await m.host.request({"type": "record", "on": True}))["type"] == "ok"
    notice = await m.host.until("notice", event="recording_failed")
    assert notice["detail"]["who"] == gid
    assert notice["detail"]["name"] == "Jan Kowalski"
    assert notice["detail"]["reason"] == "no_publisher"
    assert notice["detail"]["message"]
    # Only those who moderate are told; the meeting goes on.
    assert not [f for f in await guest.drain() if f.get("event") == "recording_failed"]
    assert (await guest.request({"type": "chat", "text": "Dzień dobry"}))["type"] == "ok"
    assert (await m.host.request({"type": "sync"}))["room"]["recording"] is True
    log = await log_of(m.code)
    assert [d["reason"] for kind, _, d in log if kind == "recording_failed"] == ["no_publisher"]


async def test_a_recorder_started_as_recording_went_off_is_stopped_at_once(
    connect, publishers, monkeypatch
):
    """The stop can reach the media plane before a start that was already on
    its way (two processes, a media worker): the start looks at the stored
    room once it is done, and stops its own recorder."""
    from channels.db import database_sync_to_async

    from signaling import rules, services

    m, guest, gid = await call(connect)
    await publish(guest, publishers())
    await view_where(m.host, lambda v: person(v, gid)["published"] == 1)
    real_record = service.record

    async def overtaken(stream, source_owner, name):
        # Recording goes off (stored, nobody told yet) just before this start lands.
        await database_sync_to_async(services.change_room_sync)(
            m.code,
            lambda room: rules.act(
                room,
                m.host_pid,
                rules.Action.RECORD,
                now=time.time(),
                limits=services.limits(),
                value=False,
            ),
            now=time.time(),
        )
        await real_record(stream, source_owner, name)

    monkeypatch.setattr(service, "record", overtaken)
    assert (await m.host.request({"type": "record", "on": True}))["type"] == "ok"
    session = unit_sessions(m.code, gid)[0]
    assert await wait_for(lambda: (m.code, gid) not in consumers._RECORDED, 5)
    await asyncio.sleep(0.3)
    assert session.recorder is None and session.record_to is None
    kinds = [kind for kind, _, _ in await log_of(m.code)]
    assert "recording_started" not in kinds and "recording_off" in kinds
