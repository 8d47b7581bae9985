"""Meeting signaling capacity: simulated participants in many rooms at once.

Run from the repository root::

    .venv/bin/python -m bench.meet_signaling                    # 10 vs 100 rooms x 3, 2 daphne
    .venv/bin/python -m bench.meet_signaling --baseline servers # 1 vs 2 daphne, 100 rooms

Every participant is a ``websockets`` client (no media) on ``/ws/meet/<code>/``
of real daphne processes (``hub.asgi``) sharing a fresh PostgreSQL database and
a fresh Redis key prefix. Per room (a *consultation* by default): the clerk
opens the socket with a guest token and a session holding the host link, the
residents with guest tokens; all of them send ``join`` at the same moment as
every other room; the clerk admits each resident it sees queued; each
participant, once admitted, sends ``media`` and ``history`` as the page does;
each pair negotiates: the impolite side (the smaller pid) relays an offer
(a ~5 KB Chrome-like SDP) and 8 ICE candidates, the other answers with an
answer and 8 candidates; when the whole room has negotiated, everyone sends
``leave`` and waits for ``left``.

Measured: joins per second (wall time from the common start until the last
``joined``), ``join`` -> ``joined`` latency, admit -> ``admitted`` notice, the
relay latency of every ``signal`` (the sender's clock just before the frame
goes out -> the peer's clock when it arrives; sender and peer are in the same
client process, the marker is the SDP's ``o=`` session id or the candidate's
foundation), ``leave`` -> ``left``, errors by kind. The same workload runs
twice in one invocation (``--baseline rooms``, the default: 10 rooms vs
``--rooms``; ``--baseline servers``: 1 daphne vs ``--servers``) and is printed
side by side.

The database is created (``CREATE DATABASE bench_<random>``), migrated
(``manage.py migrate``) and dropped at the end; the Redis keys of the run's
prefix are deleted (SCAN + DEL); servers and clients are stopped, also on
Ctrl-C. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import platform
import secrets
import sys
import time
import urllib.parse
from pathlib import Path

from bench.common import (
    HOST,
    ORIGIN,
    BenchDatabase,
    ChildProcesses,
    CpuMeter,
    Daphnes,
    Invocation,
    add_server_options,
    child_setup,
    cpu_self,
    failure_noted,
    machine_line,
    ms,
    percentile,
    postgres_master_pid,
    raise_nofile,
    redis_local_pid,
    run_loop,
    server_env,
    setup_django,
    side_by_side,
    stop_on_signals,
)

CANDIDATES_PER_SIDE = 8


# =====================================================================================
# What a browser would relay: a Chrome-like SDP and trickled ICE candidates
# =====================================================================================

_AUDIO = [
    ("111", "opus/48000/2", "minptime=10;useinbandfec=1", ["transport-cc"]),
    ("63", "red/48000/2", "111/111", []),
    ("9", "G722/8000", None, []),
    ("0", "PCMU/8000", None, []),
    ("8", "PCMA/8000", None, []),
    ("13", "CN/8000", None, []),
    ("110", "telephone-event/48000", None, []),
    ("126", "telephone-event/8000", None, []),
]
_VIDEO_FB = ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
_H264 = "level-asymmetry-allowed=1;packetization-mode={mode};profile-level-id={profile}"
_VIDEO = [
    # payload type, codec, fmtp, rtx payload type
    ("96", "VP8/90000", None, "97"),
    ("98", "VP9/90000", "profile-id=0", "99"),
    ("100", "VP9/90000", "profile-id=2", "101"),
    ("102", "H264/90000", _H264.format(mode=1, profile="42001f"), "103"),
    ("104", "H264/90000", _H264.format(mode=0, profile="42001f"), "105"),
    ("106", "H264/90000", _H264.format(mode=1, profile="42e01f"), "107"),
    ("108", "H264/90000", _H264.format(mode=0, profile="42e01f"), "109"),
    ("112", "H264/90000", _H264.format(mode=1, profile="64001f"), "113"),
    ("45", "AV1/90000", "level-idx=5;profile=0;tier=0", "46"),
]
_AUDIO_EXT = [
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "urn:ietf:params:rtp-hdrext:sdes:mid",
]
_VIDEO_EXT = [
    "urn:ietf:params:rtp-hdrext:toffset",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:3gpp:video-orientation",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    "http://www.webrtc.org/experiments/rtp-hdrext/video-content-type",
    "http://www.webrtc.org/experiments/rtp-hdrext/video-timing",
    "http://www.webrtc.org/experiments/rtp-hdrext/color-space",
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
]


def _token(seed: str, n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digest = hashlib.sha512(seed.encode()).digest()
    return "".join(alphabet[b % 64] for b in digest[:n])


def _payload(pt: str, codec: str, fmtp: str | None, feedback: list[str]) -> list[str]:
    """The rtpmap, rtcp-fb and fmtp lines of one payload type."""
    lines = [f"a=rtpmap:{pt} {codec}", *(f"a=rtcp-fb:{pt} {fb}" for fb in feedback)]
    if fmtp:
        lines.append(f"a=fmtp:{pt} {fmtp}")
    return lines


def make_sdp(kind: str, marker: int, seed: str) -> str:
    """An offer or answer shaped like Chrome's for one microphone and one camera
    (about 5 KB). ``marker`` is the session id of the ``o=`` line."""
    ufrag, pwd = _token(seed + "u", 4), _token(seed + "p", 24)
    fingerprint = ":".join(f"{b:02X}" for b in hashlib.sha256(seed.encode()).digest())
    stream = _token(seed + "s", 36).replace("+", "-").replace("/", "_")
    cname = _token(seed + "c", 16)
    setup = "actpass" if kind == "offer" else "active"
    ssrc = [
        int.from_bytes(hashlib.sha1(f"{seed}{i}".encode()).digest()[:4], "big") for i in (1, 2, 3)
    ]
    lines = [
        "v=0",
        f"o=- {marker} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        f"a=msid-semantic: WMS {stream}",
    ]

    def media(section: str, mid: int, pts: list[str], extensions: list[str], first: int):
        """The head of an m= section, up to its payload types (``first``: the id
        of its first header extension)."""
        return [
            f"m={section} 9 UDP/TLS/RTP/SAVPF " + " ".join(pts),
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            f"a=ice-ufrag:{ufrag}",
            f"a=ice-pwd:{pwd}",
            "a=ice-options:trickle",
            f"a=fingerprint:sha-256 {fingerprint}",
            f"a=setup:{setup}",
            f"a=mid:{mid}",
            *(f"a=extmap:{i} {uri}" for i, uri in enumerate(extensions, first)),
            "a=sendrecv",
            f"a=msid:{stream} {_token(seed + section[0], 36)}",
            "a=rtcp-mux",
        ]

    lines += media("audio", 0, [pt for pt, *_ in _AUDIO], _AUDIO_EXT, 1)
    for pt, codec, fmtp, feedback in _AUDIO:
        lines += _payload(pt, codec, fmtp, feedback)
    lines += [f"a=ssrc:{ssrc[0]} cname:{cname}", f"a=ssrc:{ssrc[0]} msid:{stream} audio0"]

    pts = []
    for pt, _codec, _fmtp, rtx in _VIDEO:
        pts += [pt, rtx]
    pts += ["114", "115", "116"]
    lines += media("video", 1, pts, _VIDEO_EXT, 2)
    lines.append("a=rtcp-rsize")
    for pt, codec, fmtp, rtx in _VIDEO:
        lines += _payload(pt, codec, fmtp, _VIDEO_FB)
        lines += [f"a=rtpmap:{rtx} rtx/90000", f"a=fmtp:{rtx} apt={pt}"]
    lines += [
        "a=rtpmap:114 red/90000",
        "a=rtpmap:115 rtx/90000",
        "a=fmtp:115 apt=114",
        "a=rtpmap:116 ulpfec/90000",
        f"a=ssrc-group:FID {ssrc[1]} {ssrc[2]}",
    ]
    for s in ssrc[1:]:
        lines += [f"a=ssrc:{s} cname:{cname}", f"a=ssrc:{s} msid:{stream} video0"]
    return "\r\n".join(lines) + "\r\n"


def make_candidates(first_marker: int, seed: str) -> list[dict]:
    """Eight trickled candidates as RTCIceCandidate.toJSON() gives them:
    host (mDNS, IPv4, IPv6, TCP), server-reflexive and relayed. Each
    foundation is a marker (``first_marker``, +1, ...)."""
    ufrag = _token(seed + "u", 4)
    mdns = hashlib.md5(seed.encode()).hexdigest()  # a name, not a hash
    mdns = f"{mdns[:8]}-{mdns[8:12]}-{mdns[12:16]}-{mdns[16:20]}-{mdns[20:32]}.local"
    port = 50000 + int(hashlib.sha1(seed.encode()).hexdigest()[:4], 16) % 10000
    tail = f"generation 0 ufrag {ufrag} network-id 1 network-cost 10"
    bodies = [
        f"1 udp 2122260223 {mdns} {port} typ host {tail}",
        f"1 udp 2122197247 2001:db8:1f70::5a1 {port + 1} typ host {tail}",
        f"1 udp 2122129151 192.168.1.23 {port + 2} typ host {tail}",
        f"1 tcp 1518280447 192.168.1.23 9 typ host tcptype active {tail}",
        f"1 tcp 1518217471 2001:db8:1f70::5a1 9 typ host tcptype active {tail}",
        f"1 udp 1685921535 203.0.113.77 {port + 3} typ srflx raddr 192.168.1.23 "
        f"rport {port + 2} {tail}",
        f"1 udp 41885439 198.51.100.10 {port + 4} typ relay raddr 203.0.113.77 "
        f"rport {port + 3} {tail}",
        f"1 tcp 25108223 198.51.100.10 {port + 5} typ relay raddr 203.0.113.77 "
        f"rport {port + 3} {tail}",
    ]
    return [
        {
            "candidate": f"candidate:{first_marker + i} {body}",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": ufrag,
        }
        for i, body in enumerate(bodies[:CANDIDATES_PER_SIDE])
    ]


def marker_of(message: dict) -> int | None:
    description = message.get("description")
    if description:
        start = description["sdp"].find("\no=- ") + 5
        return int(description["sdp"][start : description["sdp"].find(" ", start)])
    candidate = message.get("candidate")
    if candidate:
        return int(candidate["candidate"][10 : candidate["candidate"].find(" ")])
    return None


def self_check() -> dict:
    """The SDP and candidates pass the hub's own checks (signaling.sdp)."""
    from signaling import sdp

    offer = make_sdp("offer", 1234567890123, "check")
    answer = make_sdp("answer", 1234567890124, "check2")
    sdp.check_description("offer", offer, max_bytes=32 * 1024)
    sdp.check_description("answer", answer, max_bytes=32 * 1024)
    candidates = make_candidates(1000, "check")
    for c in candidates:
        sdp.check_candidate(c["candidate"], c["sdpMid"], c["sdpMLineIndex"], c["usernameFragment"])
    assert marker_of({"description": {"sdp": offer}}) == 1234567890123
    assert marker_of({"candidate": candidates[3]}) == 1003
    return {
        "offer_bytes": len(offer.encode()),
        "answer_bytes": len(answer.encode()),
        "candidate_bytes": max(len(c["candidate"]) for c in candidates),
    }


# =====================================================================================
# Client side (runs in the client processes)
# =====================================================================================


class Stats:
    def __init__(self):
        self.connect: list[float] = []
        self.join: list[float] = []
        self.admit: list[float] = []
        self.signal: list[float] = []
        self.description: list[float] = []
        self.leave: list[float] = []
        self.joined_at: list[float] = []  # time.time() of every joined
        self.rooms: list[dict] = []
        self.errors: collections.Counter = collections.Counter()
        self.examples: dict[str, str] = {}
        self.lost_signals = 0
        self.accepted = 0  # signals the server answered with ok

    def error(self, key: str, example: str = "") -> None:
        self.errors[key] += 1
        if example and key not in self.examples:
            self.examples[key] = example[:1000]


class RoomRun:
    """One room's clients in one client process."""

    def __init__(self, spec: dict, stats: Stats, worker: int):
        self.code = spec["code"]
        self.size = len(spec["clients"])
        self.stats = stats
        self.sent: dict[int, float] = {}  # marker -> perf_counter when it went out
        self.admit_sent: dict[str, float] = {}  # pid -> when the host sent admit
        self.markers = (worker + 1) * 10**12 + spec["index"] * 10**6
        self.refused = asyncio.Event()  # a signal was refused: this room cannot connect
        self.clients = [Client(self, c) for c in spec["clients"]]

    def next_markers(self, n: int) -> int:
        first = self.markers
        self.markers += n
        return first

    async def run(self, limit: float) -> dict:
        stats = self.stats
        marks: dict = {"code": self.code}
        phase = "connect"
        try:
            async with asyncio.timeout(limit):
                await asyncio.gather(*(c.connect_and_join() for c in self.clients))
                phase = "admit"
                await asyncio.gather(*(c.everyone_in.wait() for c in self.clients))
                marks["in_call"] = time.time()
                phase = "negotiate"
                # Until every pair has negotiated, or a signal was refused: that
                # pair's browsers would never connect (the page does not resend).
                negotiated = asyncio.gather(*(c.negotiated.wait() for c in self.clients))
                refused = asyncio.ensure_future(self.refused.wait())
                await asyncio.wait([negotiated, refused], return_when=asyncio.FIRST_COMPLETED)
                refused.cancel()
                if negotiated.done():
                    marks["negotiated"] = time.time()
                else:
                    negotiated.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await negotiated
                phase = "replies"
                await asyncio.gather(*(c.replies() for c in self.clients))
                phase = "leave"
                await asyncio.gather(*(c.leave() for c in self.clients))
                marks["left"] = time.time()
        except TimeoutError:
            stats.error(f"timeout in {phase}", "; ".join(c.state() for c in self.clients))
        except Exception as exc:
            stats.error(f"{phase}: {type(exc).__name__}", str(exc))
        finally:
            for c in self.clients:
                c.abort()
        stats.lost_signals += len(self.sent)
        return marks


class Client:
    def __init__(self, room: RoomRun, spec: dict):
        self.room = room
        self.stats = room.stats
        self.spec = spec
        self.host = spec["host"]
        self.ws = None
        self.pid: str | None = None
        self.view: dict | None = None
        self.seq = 0
        self.pending: dict[str, tuple[str, asyncio.Future]] = {}
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        loop = asyncio.get_running_loop()
        self.welcome = loop.create_future()
        self.left = asyncio.Event()
        self.admitted = False
        self.everyone_in = asyncio.Event()
        self.negotiated = asyncio.Event()
        self.offered: set[str] = set()
        self.asked_admit: set[str] = set()
        self.got: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        self.complete: set[str] = set()
        self.leaving = False
        self.replied: list[asyncio.Future] = []
        self.trace: collections.deque = collections.deque(maxlen=8)

    # --- Sending -----------------------------------------------------------------

    def request(self, message: dict, marker: int | None = None) -> asyncio.Future:
        """Queue a request (with an id); the future is its reply."""
        self.seq += 1
        message["id"] = str(self.seq)
        future = asyncio.get_running_loop().create_future()
        self.pending[message["id"]] = (message["type"], future)
        self.replied.append(future)
        self.outbox.put_nowait((json.dumps(message, separators=(",", ":")), marker))
        return future

    async def _write_forever(self) -> None:
        sent = self.room.sent
        while True:
            text, marker = await self.outbox.get()
            if marker is not None:
                sent[marker] = time.perf_counter()
            await self.ws.send(text)

    def _send_signals(self, to: str, kind: str) -> None:
        """A description and its candidates to ``to``, as a browser trickles them."""
        first = self.room.next_markers(1 + CANDIDATES_PER_SIDE)
        seed = f"{self.pid}>{to}"
        description = {"type": kind, "sdp": make_sdp(kind, first, seed)}
        self.request({"type": "signal", "to": to, "description": description}, first)
        for i, candidate in enumerate(make_candidates(first + 1, seed)):
            self.request({"type": "signal", "to": to, "candidate": candidate}, first + 1 + i)

    # --- Receiving -----------------------------------------------------------------

    async def _read_forever(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.ws:
                self._on_message(json.loads(raw), time.perf_counter())
        except ConnectionClosed:
            pass
        finally:
            code = self.ws.close_code
            if not self.leaving:
                self.stats.error(f"socket closed ({code}) before leave", self.ws.close_reason or "")
            if not self.welcome.done():
                self.welcome.set_exception(ConnectionError(f"closed {code} before welcome"))
            for kind, future in self.pending.values():
                if not future.done():
                    # Unanswered: an error reply of our own, so that nobody waits.
                    future.set_result({"type": "error", "code": f"closed {code}"})
                    if kind != "leave":
                        self.stats.error(f"{kind}: no reply (closed {code})")
            self.pending.clear()
            self.left.set()

    def _on_message(self, message: dict, now: float) -> None:
        kind = message.get("type")
        if kind not in ("signal", "ping"):  # the last frames, for a timeout's report
            self.trace.append(
                f"{kind}{message.get('room', {}).get('version', '')}"
                + (f"#{message['id']}" if "id" in message else "")
                + (
                    f":{message.get('event') or message.get('code') or ''}"
                    if kind != "room"
                    else ""
                )
            )
        request_id = message.get("id")
        if request_id is not None and request_id in self.pending:
            asked, future = self.pending.pop(request_id)
            if kind == "error":
                self.stats.error(f"{asked}: {message.get('code')}", message.get("message", ""))
                if asked == "signal":
                    self.room.refused.set()
            elif kind == "ok" and asked == "signal":
                self.stats.accepted += 1
            elif kind == "joined":
                self.pid = message["you"]
                self._on_view(message["room"], now)
            if not future.done():
                future.set_result(message)
            return
        if kind == "room":
            self._on_view(message["room"], now)
        elif kind == "signal":
            self._on_signal(message, now)
        elif kind == "notice":
            if message.get("event") == "admitted" and self.pid in self.room.admit_sent:
                self.stats.admit.append(now - self.room.admit_sent.pop(self.pid))
        elif kind == "left":
            self.left.set()
        elif kind == "welcome":
            if not self.welcome.done():
                self.welcome.set_result(message)
        elif kind == "ended":
            self.stats.error("ended")
        elif kind == "error":
            self.stats.error(f"error: {message.get('code')}", message.get("message", ""))

    def _on_view(self, view: dict, now: float) -> None:
        if self.pid is None or (self.view and view["version"] < self.view["version"]):
            return
        self.view = view
        if view.get("status") != "admitted":
            return
        if not self.admitted:
            self.admitted = True
            # What the page does once it is in the call (a public meeting's
            # participants turn on their camera only when given the floor).
            self.request({"type": "history"})
            if view.get("kind") != "public" or view.get("role") in ("host", "moderator"):
                self.request({"type": "media", "audio": True, "video": True})
        if self.host:
            for waiting in view.get("queue", []):
                pid = waiting["pid"]
                if pid not in self.asked_admit:
                    self.asked_admit.add(pid)
                    self.room.admit_sent[pid] = time.perf_counter()
                    self.request({"type": "admit", "who": pid})
        others = [p["pid"] for p in view.get("participants", []) if p["pid"] != self.pid]
        for other in others:
            # Perfect negotiation: the impolite side offers (polite = me > other).
            if self.pid < other and other not in self.offered:
                self.offered.add(other)
                self._send_signals(other, "offer")
        if len(others) == self.room.size - 1:
            self.everyone_in.set()

    def _on_signal(self, message: dict, now: float) -> None:
        sent = self.room.sent.pop(marker_of(message), None)
        if sent is not None:
            self.stats.signal.append(now - sent)
        source = message["from"]
        got = self.got[source]
        description = message.get("description")
        if description:
            got[0] += 1
            if sent is not None:
                self.stats.description.append(now - sent)
            if description["type"] == "offer" and not self.leaving:
                # A page that has left closed its peer connections: no answer.
                self._send_signals(source, "answer")
        else:
            got[1] += 1
        if got[0] >= 1 and got[1] >= CANDIDATES_PER_SIDE:
            self.complete.add(source)
            if len(self.complete) == self.room.size - 1:
                self.negotiated.set()

    # --- The phases ------------------------------------------------------------------

    async def connect_and_join(self) -> None:
        from websockets.asyncio.client import connect

        spec = self.spec
        uri = (
            f"ws://{HOST}:{spec['port']}/ws/meet/{self.room.code}/"
            f"?guest={urllib.parse.quote(spec['token'])}"
        )
        headers = {"Cookie": spec["cookie"]} if spec.get("cookie") else None
        started = time.perf_counter()
        self.ws = await connect(
            uri,
            origin=ORIGIN,
            additional_headers=headers,
            compression=None,
            max_queue=None,
            ping_interval=None,
            open_timeout=None,
            max_size=2**20,
        )
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._read_forever()),
            loop.create_task(self._write_forever()),
        ]
        await self.welcome
        opened = time.perf_counter()
        self.stats.connect.append(opened - started)
        reply = await self.request({"type": "join", "instance": secrets.token_hex(8)})
        if reply.get("type") != "joined":
            raise ConnectionError(f"join refused: {reply.get('code')}")
        self.stats.join.append(time.perf_counter() - opened)
        self.stats.joined_at.append(time.time())
        if self.host and reply["room"].get("role") != "host":
            raise ConnectionError(f"the clerk joined as {reply['room'].get('role')}, not host")

    async def replies(self) -> None:
        """Every request answered (ok or error)."""
        await asyncio.gather(*self.replied, return_exceptions=True)

    async def leave(self) -> None:
        started = time.perf_counter()
        self.leaving = True
        self.request({"type": "leave"})
        await self.left.wait()
        self.stats.leave.append(time.perf_counter() - started)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.ws.close()

    def state(self) -> str:
        """What this client is waiting for (for a timeout's report)."""
        pending = collections.Counter(kind for kind, _f in self.pending.values())
        view = self.view or {}
        return (
            f"{'clerk' if self.host else 'resident'} {self.pid} on :{self.spec['port']} "
            f"v{view.get('version')} {view.get('status')} "
            f"peers {len(view.get('participants', [])) - 1 if view else '-'} "
            f"complete {len(self.complete)} left {self.left.is_set()} "
            f"close {self.ws.close_code if self.ws else '-'} pending {dict(pending)} "
            f"last frames {' '.join(self.trace)}"
        )

    def abort(self) -> None:
        self.leaving = True
        for task in self.tasks:
            task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.transport.abort()


async def client_main(spec: dict, start_at: float) -> dict:
    stats = Stats()
    rooms = [RoomRun(room, stats, spec["worker"]) for room in spec["rooms"]]
    delay = start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    cpu0 = cpu_self()
    marks = await asyncio.gather(*(room.run(spec["timeout"]) for room in rooms))
    await asyncio.sleep(0.2)
    return {
        "connect": stats.connect,
        "join": stats.join,
        "admit": stats.admit,
        "signal": stats.signal,
        "description": stats.description,
        "leave": stats.leave,
        "joined_at": stats.joined_at,
        "rooms": marks,
        "errors": dict(stats.errors),
        "examples": stats.examples,
        "lost_signals": stats.lost_signals,
        "accepted": stats.accepted,
        "cpu": cpu_self() - cpu0,
    }


def client_entry(conn, spec: dict) -> None:
    child_setup()
    import websockets  # noqa: F401 - imported before the start, not during it

    conn.send(("ready", os.getpid()))
    command = conn.recv()
    if command[0] != "go":
        return
    conn.send(("result", run_loop(client_main, spec, command[1])))


# =====================================================================================
# The setup: meetings in the bench database (bench.common makes the database)
# =====================================================================================


def make_rooms(kind: str, rooms: int, per_room: int, label: str) -> list[dict]:
    """Meetings in the bench database, with a guest token per participant and,
    for a consultation, a session holding the host link for its clerk."""
    from django.conf import settings
    from django.contrib.sessions.backends.db import SessionStore

    from hub.auth import issue_guest_token
    from signaling.rules import Kind
    from signaling.services import create_meeting

    specs = []
    for i in range(rooms):
        meeting, _key = create_meeting(Kind(kind), f"Bench {label} {i}")
        resource = f"meet:{meeting.code}"
        clients = []
        for j in range(per_room):
            host = kind == "consultation" and j == 0
            cookie = None
            if host:
                # What opening the host link leaves in the clerk's session.
                session = SessionStore()
                session["meet_hosts"] = [meeting.code]
                session.create()
                cookie = f"{settings.SESSION_COOKIE_NAME}={session.session_key}"
            name = f"Urzędnik {i}" if host else f"Mieszkaniec {i}.{j}"
            clients.append(
                {"host": host, "token": issue_guest_token(name, resource), "cookie": cookie}
            )
        specs.append({"code": meeting.code, "index": i, "clients": clients})
    return specs


# =====================================================================================
# One run: a number of servers, a number of rooms
# =====================================================================================


async def _probe(port: int, room: dict) -> str:
    """One clerk join and leave on one server: the token and the host session
    are accepted (same SECRET_KEY, same database), and the server has warmed up."""
    from websockets.asyncio.client import connect

    spec = room["clients"][0]
    uri = f"ws://{HOST}:{port}/ws/meet/{room['code']}/?guest={urllib.parse.quote(spec['token'])}"
    headers = {"Cookie": spec["cookie"]} if spec.get("cookie") else None
    async with asyncio.timeout(20):
        async with connect(uri, origin=ORIGIN, additional_headers=headers) as ws:
            welcome = json.loads(await ws.recv())
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"probe: {welcome}")
            await ws.send(json.dumps({"type": "join", "id": "j", "instance": "probe"}))
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("id") == "j":
                    break
            if reply.get("type") != "joined":
                raise RuntimeError(f"probe join refused: {reply}")
            await ws.send(json.dumps({"type": "leave", "id": "l"}))
            with contextlib.suppress(Exception):
                while True:
                    await ws.recv()
    return reply["room"].get("role", "?")


def probe_servers(ports: list[int], kind: str) -> None:
    for port in ports:
        room = make_rooms(kind, 1, 1, "probe")[0]
        try:
            role = asyncio.run(_probe(port, room))
        except Exception as exc:
            if "4001" in str(exc):
                raise RuntimeError(
                    "the server refused the guest token (4001): its SECRET_KEY differs from "
                    "this process's"
                ) from exc
            raise
        if kind == "consultation" and role != "host":
            raise RuntimeError(f"probe: the clerk joined as {role!r}, not host")


def run_one(label: str, servers_n: int, rooms_n: int, args, db_url, prefix, log_dir) -> dict:
    result: dict = {
        "label": label,
        "servers": servers_n,
        "rooms": rooms_n,
        "per_room": args.per_room,
        "participants": rooms_n * args.per_room,
        "redis_prefix": prefix,
    }
    env = server_env(args.redis_url, prefix, args.server_env, database_url=db_url)
    meter = CpuMeter(redis_local_pid(args.redis_url), postgres_master_pid(args.postgres_url))
    with contextlib.ExitStack() as stack, failure_noted(result, label):
        servers = Daphnes(servers_n, env, log_dir, label=label.replace(" ", "_"))
        stack.callback(servers.stop)
        servers.wait_ready()
        probe_servers(servers.ports, args.kind)
        rooms = make_rooms(args.kind, rooms_n, args.per_room, label)
        # Participant k of the run goes to server k % servers (least_conn on equal
        # servers): the people of one room are spread over the processes.
        k = 0
        for room in rooms:
            for client in room["clients"]:
                client["port"] = servers.ports[k % servers_n]
                k += 1
        procs = min(args.procs, rooms_n)
        specs = [
            {"worker": w, "rooms": rooms[w::procs], "timeout": args.timeout} for w in range(procs)
        ]
        clients = ChildProcesses(client_entry, specs)
        stack.callback(clients.stop)
        clients.gather("ready", 60)
        result["rss_idle_kib"] = servers.rss_kib()
        print(
            f"  [{label}] {rooms_n} rooms x {args.per_room} on {servers_n} daphne, "
            f"{procs} client processes ...",
            flush=True,
        )
        start_at = time.time() + 0.5
        cpu_servers0 = servers.cpu()
        meter.start()
        clients.send_all(("go", start_at))
        results = clients.gather("result", args.timeout + 30)
        meter.stop()
        result["server_cpu_s"] = round(servers.cpu() - cpu_servers0, 2)
        result["rss_end_kib"] = servers.rss_kib()
        result["servers_alive"] = servers.alive()
        result["server_log_errors"] = servers.log_lines("Traceback", "ERROR")
        result["redis_cpu_s"] = meter.redis_s
        result["client_cpu_s"] = round(sum(r["cpu"] for r in results), 2)
        result["machine_busy_pct"] = meter.busy_pct
        result["kernel_irq_cpu_s"] = meter.irq_s
        result["postgres_cpu_s"] = meter.postgres_s
        result["other_cpu_s"] = meter.other_s(result["server_cpu_s"], result["client_cpu_s"])
        result["window_s"] = round(meter.window, 2)
        result["other_cores"] = meter.cores(result["other_cpu_s"])
        summarize(result, results, start_at)
        print(
            f"  [{label}] joins/s {result['joins_per_s']}, join p99 {result['join_p99_ms']} ms, "
            f"signal p99 {result['signal_p99_ms']} ms, errors {result['errors']}",
            flush=True,
        )
    return result


def summarize(result: dict, results: list[dict], start_at: float) -> None:
    def merged(key: str) -> list[float]:
        return sorted(v for r in results for v in r[key])

    errors: collections.Counter = collections.Counter()
    examples: dict = {}
    for r in results:
        errors.update(r["errors"])
        for key, text in r["examples"].items():
            examples.setdefault(key, text)
    joined_at = merged("joined_at")
    marks = [m for r in results for m in r["rooms"]]

    def wall(key: str) -> float | None:
        values = [m[key] for m in marks if key in m]
        return round(max(values) - start_at, 3) if len(values) == len(marks) else None

    join_wall = (joined_at[-1] - start_at) if joined_at else None
    result.update(
        joined=len(joined_at),
        join_wall_s=None if join_wall is None else round(join_wall, 3),
        joins_per_s=None if not join_wall else round(len(joined_at) / join_wall, 1),
        rooms_negotiated=sum("negotiated" in m for m in marks),
        rooms_completed=sum("left" in m for m in marks),
        in_call_wall_s=wall("in_call"),
        negotiated_wall_s=wall("negotiated"),
        total_wall_s=wall("left"),
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        error_examples=examples,
        signals=len(merged("signal")),
        signals_lost=sum(r["lost_signals"] for r in results),
        signals_accepted=sum(r["accepted"] for r in results),
        signals_refused=sum(v for k, v in errors.items() if k.startswith("signal:")),
        expected_signals=result["rooms"]
        * result["per_room"]
        * (result["per_room"] - 1)
        * (1 + CANDIDATES_PER_SIDE),
    )
    for key in ("connect", "join", "admit", "signal", "description", "leave"):
        values = merged(key)
        for q in (50, 95, 99):
            result[f"{key}_p{q}_ms"] = ms(percentile(values, q))
        result[f"{key}_max_ms"] = ms(values[-1] if values else None)
        result[f"{key}_count"] = len(values)


# =====================================================================================
# Report
# =====================================================================================

ROWS = [
    # label, key, format, ratio?
    ("daphne processes", "servers", "{:d}", False),
    ("rooms x participants", "shape", "{}", False),
    ("joined", "joined", "{:d}", False),
    ("join phase, wall (s)", "join_wall_s", "{:.2f}", True),
    ("joins per second", "joins_per_s", "{:.0f}", True),
    ("connect p50 (ms)", "connect_p50_ms", "{:.0f}", True),
    ("connect p99 (ms)", "connect_p99_ms", "{:.0f}", True),
    ("join -> joined p50 (ms)", "join_p50_ms", "{:.0f}", True),
    ("join -> joined p99 (ms)", "join_p99_ms", "{:.0f}", True),
    ("admit -> admitted p50 (ms)", "admit_p50_ms", "{:.0f}", True),
    ("admit -> admitted p99 (ms)", "admit_p99_ms", "{:.0f}", True),
    ("everyone in the call, wall (s)", "in_call_wall_s", "{:.2f}", True),
    ("signals expected", "expected_signals", "{:d}", False),
    ("signals accepted (ok)", "signals_accepted", "{:d}", False),
    ("signals refused (error)", "signals_refused", "{:d}", False),
    ("signals relayed", "signals", "{:d}", False),
    ("signal latency p50 (ms)", "signal_p50_ms", "{:.1f}", True),
    ("signal latency p95 (ms)", "signal_p95_ms", "{:.1f}", True),
    ("signal latency p99 (ms)", "signal_p99_ms", "{:.1f}", True),
    ("signal latency max (ms)", "signal_max_ms", "{:.1f}", True),
    ("offer/answer latency p99 (ms)", "description_p99_ms", "{:.1f}", True),
    ("rooms negotiated", "rooms_negotiated", "{:d}", False),
    ("all negotiated, wall (s)", "negotiated_wall_s", "{:.2f}", True),
    ("leave -> left p99 (ms)", "leave_p99_ms", "{:.0f}", True),
    ("all left, wall (s)", "total_wall_s", "{:.2f}", True),
    ("rooms completed", "rooms_completed", "{:d}", False),
    ("errors", "errors", "{:d}", False),
    ("server CPU (s)", "server_cpu_s", "{:.1f}", True),
    ("client CPU (s)", "client_cpu_s", "{:.1f}", True),
    ("redis CPU (s)", "redis_cpu_s", "{:.1f}", True),
    ("postgres CPU (s)", "postgres_cpu_s", "{:.1f}", True),
    ("kernel softirq CPU (s)", "kernel_irq_cpu_s", "{:.1f}", True),
    ("machine busy (%)", "machine_busy_pct", "{:.0f}", False),
    ("other processes (cores)", "other_cores", "{:.2f}", False),
]


def format_table(runs: list[dict]) -> str:
    a, b = [*runs, None, None][:2]
    names = [r["label"] if r else "-" for r in (a, b)]

    def value(r: dict, key: str):
        return f"{r['rooms']} x {r['per_room']}" if key == "shape" else r.get(key)

    lines = side_by_side(
        ROWS, (a, b), (*names, "B/A"), cell=14, ratio=10, ratio_format="{:.2f}x", value=value
    )
    for r in (a, b):
        if r and r.get("error"):
            lines.append(f"  {r['label']} error: {r['error']}")
        if r and r.get("error_kinds"):
            lines.append(f"  {r['label']} errors: {r['error_kinds']}")
            for key, text in r.get("error_examples", {}).items():
                lines.append(f"    {key}: {text}")
        if r and r.get("server_log_errors"):
            lines.append(f"  {r['label']} server log: {r['server_log_errors']} Traceback/ERROR")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.meet_signaling", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--per-room", type=int, default=3, help="participants per room")
    parser.add_argument("--servers", type=int, default=2, help="daphne processes")
    parser.add_argument(
        "--baseline",
        choices=["servers", "rooms", "none"],
        default="rooms",
        help="rooms: 10 rooms vs --rooms; servers: 1 daphne vs --servers",
    )
    parser.add_argument(
        "--kind",
        choices=["consultation", "public"],
        default="consultation",
        help="consultation: a clerk (host link) admits the residents; public: guests go in",
    )
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--timeout", type=float, default=30.0, help="per room, s")
    add_server_options(
        parser,
        "extra environment of the daphne processes (e.g. DATABASE_CONN_MAX_AGE=60)",
        postgres=True,
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    args = parser.parse_args(argv)
    most = 6 if args.kind == "consultation" else 8  # CALL_MAX residents + clerk; MESH_MAX
    if not 2 <= args.per_room <= most:
        parser.error(f"--per-room: 2 to {most} for a {args.kind}")

    stop_on_signals()
    nofile = raise_nofile()
    run = Invocation(args, "meet-signaling", "meet-logs")
    sizes = self_check()
    if args.baseline == "servers":
        variants = [
            (f"{1} daphne", 1, args.rooms),
            (f"{args.servers} daphne", args.servers, args.rooms),
        ]
    elif args.baseline == "rooms":
        base = min(10, args.rooms)
        variants = [
            (f"{base} rooms", args.servers, base),
            (f"{args.rooms} rooms", args.servers, args.rooms),
        ]
    else:
        variants = [(f"{args.servers} daphne", args.servers, args.rooms)]
    database = BenchDatabase(args.postgres_url)
    header = (
        f"bench.meet_signaling  {run.started.isoformat(timespec='seconds')}\n"
        f"{machine_line(nofile)}\n"
        f"setup: {args.kind}, {args.per_room} per room, {args.procs} client processes "
        f"(websockets), database {database.name}, redis {args.redis_url} prefix {run.prefix}\n"
        f"signals: offer {sizes['offer_bytes']} B, answer {sizes['answer_bytes']} B, "
        f"{CANDIDATES_PER_SIDE} candidates per side (up to {sizes['candidate_bytes']} B)"
        + (f"\nserver env: {' '.join(args.server_env)}" if args.server_env else "")
    )
    print(header, flush=True)
    report = run.report(
        {"nproc": os.cpu_count(), "platform": platform.platform()},
        database=database.name,
        redis_prefix=run.prefix,
        sizes=sizes,
        runs=[],
    )
    with run.guard(report, database):
        database.create()
        env = server_env(args.redis_url, run.prefix, args.server_env, database_url=database.url)
        report["migrate_s"] = round(database.migrate(env), 2)
        setup_django(env)
        for i, (label, servers_n, rooms_n) in enumerate(variants):
            print(f"\n== {label}: {rooms_n} rooms x {args.per_room}", flush=True)
            result = run_one(
                label, servers_n, rooms_n, args, database.url, f"{run.prefix}:{i}", run.log_dir
            )
            report["runs"].append(result)
            time.sleep(1)
    run.print_summary(
        report,
        header,
        format_table(report["runs"]),
        "\njoins per second: participants joined / (last joined - common start), connect "
        "included; signal latency: perf_counter before the frame is sent -> when the peer "
        "reads it (same client process); admit -> admitted: the clerk's admit sent -> the "
        "resident's notice.",
        database,
    )
    return run.exit_code(report)


if __name__ == "__main__":
    sys.exit(main())
