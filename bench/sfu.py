"""Media forwarding capacity: one publisher -> K subscribers, K rising until frames drop.

Run from the repository root::

    .venv/bin/python -m bench.sfu                       # forwarding, MediaRelay, Janus (~8 min)
    .venv/bin/python -m bench.sfu --modes fwd relay --max-k 64 --repeat 2
    .venv/bin/python -m bench.sfu --k 32 --modes fwd --repeat 5     # one K, five windows

One publisher sends a synthetic 640x480 VP8 30 fps track (a 16-bit frame counter
in the top half, moving noise below; the encoder pinned to ``--bitrate``,
800 kbit/s) to a server process, and K subscribers receive it from there. Three
servers, one after the other, each on 127.0.0.1 only:

* **fwd**: the product's forwarding unit, ``media.sfu.room.Sfu`` (``publish`` /
  ``subscribe``), in its own process behind a small aiohttp signaling server.
* **relay**: the same process shape with aiortc's ``MediaRelay``: the published
  track is decoded once and ``MediaRelay.subscribe(track, buffered=False)`` is
  encoded once per subscriber (its encoders pinned to the same bit rate).
* **janus**: Janus VideoRoom from Debian's ``janus`` package, the C reference,
  started and driven with ``bench/janus_ref.py`` (``JanusServer``,
  ``JanusSession``); skipped with the reason when it cannot run here.

K takes the values 1, 2, 4, ... 64, 96, 128, 192, ... ``--max-k`` (or ``--k``);
subscribers are added to the running ones at each step. After ``--warmup``
seconds each step is measured over ``--repeat`` consecutive windows of
``--seconds``. A server stops rising when the delivered frame rate (median over
subscribers) falls below 29 fps, frame loss exceeds 1 % (not for MediaRelay, see
:data:`LOSS_RULE`), a subscriber's connection drops, the server process exceeds
90 % of one core, or its share of ``--budget`` (600 s for the whole run) is spent.

Measured: the server process's CPU (``/proc/<pid>/stat``, all its threads) as %
of one core, per subscriber stream, and as streams per core (K / CPU), the
median of the windows; per subscriber the complete frames received per second
and the frames lost, over all the windows at once (a stall in one window and the
catch-up burst in the next are a delay, shown as the worst gap, not a loss); the
publisher's frame and bit rate; the CPU of the publisher and of the client
processes and the machine's busy time, to tell when the machine, not the server,
was the limit.

The clients must be cheap (2 cores): subscribers do not decode. Each one's RTP
receiver is replaced (``receiver._handle_rtp_packet``) by a counter that keeps
sequence numbers and RTP timestamps: a frame counts when its marker packet
arrives with no sequence gap since the frame began; a frame is lost when it
was incomplete, or missing altogether (an RTP timestamp step of more than one
frame interval: the server dropped it). Without a jitter buffer the counters
send no NACK, so losses are not repaired: they are what the server delivered.
One subscriber (the first) also runs aiortc's normal receive path, decodes
every frame and reads the counter (**checker**: counter gaps must be 0). The
subscribers run in ``--clients`` processes (2), the publisher in another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``media`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiortc import RTCPeerConnection, RTCSessionDescription

from bench.common import (
    CLK_TCK,
    HOST,
    PYTHON,
    RESULTS_DIR,
    ChildProcesses,
    ServerProcesses,
    child_setup,
    cpu_self,
    machine_cpu,
    machine_line,
    proc_cpu,
    run_loop,
    shown,
    stop_on_signals,
)
from bench.media_common import (
    BITS,
    FPS,
    CounterTrack,
    bytes_sent,
    column_table,
    fmt,
    loopback_only,
    markdown,
    new_peer_connection,
    read_counter,
    rtc_config,
    vp8_only,
)

FRAME_STEP = 90_000 // FPS  # RTP timestamp units (90 kHz) per frame
ROOM = "bench"
MODES = ("fwd", "relay", "janus")
NAMES = {"fwd": "forwarding (media.sfu)", "relay": "MediaRelay", "janus": "Janus VideoRoom"}
CONNECT_CONCURRENCY = 8  # subscriber handshakes in flight per client process
# MediaRelay(buffered=False) keeps only the latest decoded frame per subscriber,
# so it drops frames whenever two arrive before that subscriber's encoder takes
# one, at any K: its loss is reported, but stops only the other servers.
LOSS_RULE = ("fwd", "janus")


# =====================================================================================
# Shared by every process
# =====================================================================================


def pin_vp8_bitrate(bps: int) -> None:
    """Every VP8 encoder of this process encodes at ``bps``; REMB is ignored, so
    the three servers carry the same stream whatever their estimators say."""
    from aiortc.codecs import vpx

    vpx.DEFAULT_BITRATE = bps
    vpx.Vp8Encoder.target_bitrate = property(
        vpx.Vp8Encoder.target_bitrate.fget, lambda self, value: None
    )


def quiet_logs() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")


# =====================================================================================
# Server process: the forwarding unit or MediaRelay behind aiohttp signaling
# =====================================================================================


def server_main(args) -> None:
    """``bench.sfu server --mode fwd|relay --port P``: POST /publish and
    /subscribe take an offer's SDP (text) and answer with the answer's SDP;
    GET /stats; GET /healthz."""
    from aiohttp import web

    quiet_logs()
    loopback_only()
    pin_vp8_bitrate(args.bitrate * 1000)
    if args.mode == "fwd":
        from media.sfu import hooks
        from media.sfu.room import Limits, Sfu

        hooks.check()
        sfu = Sfu(
            Limits(max_peers=100_000, max_bitrate_kbps=10**9, connect_timeout=120),
            rtc_config(),
        )

        async def publish(request):
            _, answer = await sfu.publish(ROOM, await request.text(), owner="bench")
            return web.Response(text=answer)

        async def subscribe(request):
            _, answer = await sfu.subscribe(ROOM, await request.text(), owner="bench")
            return web.Response(text=answer)

        def stats() -> dict:
            out = sfu.stats()
            room = sfu.rooms.get(ROOM)
            for forwarder in room.forwarders() if room else []:
                if forwarder.kind == "video":
                    out.update(
                        frames_in=forwarder.frames,
                        keyframes_in=forwarder.keyframes,
                        keyframe_requests=forwarder.keyframe_requests,
                        dropped=sum(t.dropped for t in forwarder.subscribers),
                        queued=sum(t.queue.qsize() for t in forwarder.subscribers),
                    )
            return out

        async def close_all(app):
            await sfu.close_all()

    else:
        from aiortc.contrib.media import MediaRelay
        from aiortc.mediastreams import MediaStreamError

        relay = MediaRelay()
        pcs: set[RTCPeerConnection] = set()
        tasks: set[asyncio.Task] = set()
        state: dict = {"source": None, "decoded": 0, "subscribers": 0}

        async def sink(track) -> None:
            # The relay decodes the published track from the start, subscribers
            # or not (as the forwarding unit always assembles frames).
            while True:
                try:
                    await track.recv()
                except MediaStreamError:
                    return
                state["decoded"] += 1

        async def publish(request):
            pc = new_peer_connection()
            pcs.add(pc)

            @pc.on("track")
            def on_track(track):
                if track.kind == "video":
                    state["source"] = track
                    tasks.add(asyncio.ensure_future(sink(relay.subscribe(track, buffered=False))))

            await pc.setRemoteDescription(
                RTCSessionDescription(sdp=await request.text(), type="offer")
            )
            await pc.setLocalDescription(await pc.createAnswer())
            return web.Response(text=pc.localDescription.sdp)

        async def subscribe(request):
            if state["source"] is None:
                return web.Response(status=404, text="no publisher")
            pc = new_peer_connection()
            pcs.add(pc)
            await pc.setRemoteDescription(
                RTCSessionDescription(sdp=await request.text(), type="offer")
            )
            pc.addTrack(relay.subscribe(state["source"], buffered=False))
            await pc.setLocalDescription(await pc.createAnswer())
            state["subscribers"] += 1
            return web.Response(text=pc.localDescription.sdp)

        def stats() -> dict:
            return {"frames_in": state["decoded"], "subscriber_streams": state["subscribers"]}

        async def close_all(app):
            await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)

    async def healthz(request):
        return web.Response(text="ok")

    async def get_stats(request):
        return web.json_response(stats())

    app = web.Application(client_max_size=256 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/publish", publish)
    app.router.add_post("/subscribe", subscribe)
    app.on_shutdown.append(close_all)
    loop = None
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host=HOST, port=args.port, print=None, access_log=None, loop=loop)


# =====================================================================================
# Publisher process
# =====================================================================================


async def _wait_connected(pc: RTCPeerConnection, within: float) -> None:
    deadline = time.monotonic() + within
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
            raise RuntimeError(f"publisher: connection {pc.connectionState}")
        await asyncio.sleep(0.05)


async def _publisher(conn, spec: dict) -> None:
    import aiohttp

    loopback_only()
    pin_vp8_bitrate(spec["bitrate"] * 1000)
    pc = new_peer_connection()
    track = CounterTrack()
    transceiver = pc.addTransceiver(track, direction="sendonly")
    vp8_only(transceiver)
    info: dict = {}
    janus = None
    async with aiohttp.ClientSession() as http:
        try:
            await pc.setLocalDescription(await pc.createOffer())
            if spec["mode"] == "janus":
                from bench.janus_ref import JanusSession, publish_feed

                janus = JanusSession(http, spec["janus_url"], spec["janus_secret"])
                await janus.create()
                room = secrets.randbelow(1 << 40) + 1
                await janus.create_room(
                    await janus.attach(), room, spec["bitrate"] * 1000, "bench.sfu"
                )
                _, feed = await publish_feed(janus, room, pc)
                info = {"room": room, "feed": feed}
            else:
                url = f"http://{HOST}:{spec['port']}/publish"
                async with http.post(url, data=pc.localDescription.sdp) as r:
                    if r.status != 200:
                        raise RuntimeError(f"publish: HTTP {r.status} {await r.text()}")
                    answer = await r.text()
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await _wait_connected(pc, 20)
        except Exception as exc:
            conn.send(("ready", {"error": f"{type(exc).__name__}: {exc}"}))
            await pc.close()
            return
        conn.send(("ready", info))
        sender = transceiver.sender
        while True:
            message = await asyncio.to_thread(conn.recv)
            if message[0] == "mark":
                sent = await bytes_sent(sender)
                conn.send(("marked", {"t": time.monotonic(), "frames": track.count, "bytes": sent}))
            elif message[0] == "stop":
                await pc.close()
                if janus is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(janus.destroy(), 5)
                conn.send(("stopped",))
                return


def publisher_main(conn, spec: dict) -> None:
    child_setup()
    quiet_logs()
    run_loop(_publisher, conn, spec)


# =====================================================================================
# Client processes: counting subscribers (and one decoding checker)
# =====================================================================================


class StreamCounter:
    """Stands in for ``RTCRtpReceiver._handle_rtp_packet``: counts complete
    frames, incomplete and missing ones from sequence numbers and RTP
    timestamps, and passes the packet on to aiortc's handler (``original``)
    only for the checker."""

    __slots__ = (
        "broken",
        "done",
        "frames",
        "last_frame",
        "late",
        "lost",
        "max_gap",
        "ok",
        "original",
        "packets",
        "seq",
        "skipped",
        "ts",
    )

    def __init__(self, original=None) -> None:
        self.original = original
        self.frames = self.broken = self.skipped = 0
        self.packets = self.lost = self.late = 0
        self.seq: int | None = None
        self.ts: int | None = None
        self.ok = False
        self.done = True
        self.last_frame: float | None = None
        self.max_gap = 0.0

    async def __call__(self, packet, arrival_time_ms: int) -> None:
        self.packets += 1
        seq = packet.sequence_number
        gap = False
        if self.seq is not None:
            d = (seq - self.seq) & 0xFFFF
            if d == 0 or d >= 0x8000:  # a duplicate or a late (reordered) packet
                self.late += 1
                if self.original is not None:
                    await self.original(packet, arrival_time_ms)
                return
            if d > 1:
                self.lost += d - 1
                gap = True
        self.seq = seq
        ts = packet.timestamp
        if ts != self.ts:
            if self.ts is not None:
                step = (ts - self.ts) & 0xFFFFFFFF
                if FRAME_STEP * 3 // 2 < step < 0x80000000:
                    self.skipped += round(step / FRAME_STEP) - 1
                if not self.done:  # the previous frame's marker never came
                    self.broken += 1
            self.ts = ts
            self.done = False
            # A frame starts with S=1, PID=0 in the VP8 payload descriptor
            # (RFC 7741 §4.2); packets lost before it were the previous frame's.
            payload = packet.payload
            self.ok = bool(payload) and payload[0] & 0x17 == 0x10
        elif gap:
            self.ok = False
        if packet.marker and not self.done:
            self.done = True
            if self.ok:
                self.frames += 1
                now = time.monotonic()
                if self.last_frame is not None and now - self.last_frame > self.max_gap:
                    self.max_gap = now - self.last_frame
                self.last_frame = now
            else:
                self.broken += 1
        if self.original is not None:
            await self.original(packet, arrival_time_ms)

    def snapshot(self) -> tuple:
        """(frames, lost frames, packets, lost packets, late packets, max gap s);
        the max gap restarts at each snapshot."""
        out = (
            self.frames,
            self.broken + self.skipped,
            self.packets,
            self.lost,
            self.late,
            round(self.max_gap, 4),
        )
        self.max_gap = 0.0
        return out


class Checker:
    """The decoded frames of the checker subscriber: counter gaps and order."""

    def __init__(self) -> None:
        self.decoded = self.gaps = self.out_of_order = self.unreadable = 0
        self.last: int | None = None

    async def consume(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:  # MediaStreamError when the connection closes
                return
            self.decoded += 1
            n = read_counter(frame)
            if n is None:
                self.unreadable += 1
                continue
            if self.last is not None:
                d = (n - self.last) % (1 << BITS)
                if d == 0 or d >= 1 << (BITS - 1):
                    self.out_of_order += 1
                elif d > 1:
                    self.gaps += d - 1
            self.last = n

    def snapshot(self) -> tuple:
        return (self.decoded, self.gaps, self.out_of_order, self.unreadable)


class Subscriber:
    """A receive-only peer connection whose receiver is a :class:`StreamCounter`."""

    def __init__(self, check: bool) -> None:
        self.pc = new_peer_connection()
        self.check = check
        self.counter: StreamCounter | None = None
        self.checker = Checker() if check else None
        self.tasks: list[asyncio.Task] = []
        if check:
            self.pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        if track.kind == "video":
            self.tasks.append(asyncio.ensure_future(self.checker.consume(track)))

    def hook(self) -> None:
        """Replace the video receiver's packet handler (before any RTP arrives)."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                receiver = transceiver.receiver
                original = receiver._handle_rtp_packet if self.check else None
                self.counter = StreamCounter(original)
                receiver._handle_rtp_packet = self.counter

    async def connect_server(self, http, port: int) -> None:
        vp8_only(self.pc.addTransceiver("video", direction="recvonly"))
        self.hook()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with http.post(
            f"http://{HOST}:{port}/subscribe", data=self.pc.localDescription.sdp
        ) as r:
            if r.status != 200:
                raise RuntimeError(f"subscribe: HTTP {r.status} {await r.text()}")
            answer = await r.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def connect_janus(self, janus, room: int, feed: int) -> None:
        from bench.janus_ref import subscribe_feed

        await subscribe_feed(janus, room, feed, self.pc, on_offer=self.hook)

    @property
    def receiving(self) -> bool:
        return self.counter is not None and self.counter.frames > 0

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 5)


async def _grow(subs: list[Subscriber], n: int, connect, spec: dict) -> dict:
    """Add subscribers until there are ``n``; wait until each new one receives frames."""
    started = time.monotonic()
    new = [Subscriber(check=spec["checker"] and not subs and i == 0) for i in range(n - len(subs))]
    subs.extend(new)
    gate = asyncio.Semaphore(spec["concurrency"])
    errors: list[str] = []

    async def one(sub: Subscriber) -> None:
        async with gate:
            try:
                await asyncio.wait_for(connect(sub), 30)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(sub) for sub in new))
    deadline = time.monotonic() + 20 + 0.2 * len(new)
    while time.monotonic() < deadline:
        if all(sub.receiving for sub in new):
            break
        await asyncio.sleep(0.1)
    return {
        "n": len(subs),
        "waiting": sum(not sub.receiving for sub in new),
        "errors": errors[:3],
        "error_count": len(errors),
        "seconds": round(time.monotonic() - started, 2),
    }


async def _client(conn, spec: dict) -> None:
    import aiohttp

    loopback_only()
    subs: list[Subscriber] = []
    janus = None
    async with aiohttp.ClientSession() as http:
        if spec["mode"] == "janus":
            from bench.janus_ref import JanusSession

            janus = JanusSession(http, spec["janus_url"], spec["janus_secret"])
            await janus.create()

            def connect(sub):
                return sub.connect_janus(janus, spec["room"], spec["feed"])

        else:

            def connect(sub):
                return sub.connect_server(http, spec["port"])

        conn.send(("up",))
        while True:
            message = await asyncio.to_thread(conn.recv)
            kind = message[0]
            if kind == "grow":
                conn.send(("grown", await _grow(subs, message[1], connect, spec)))
            elif kind == "mark":
                checker = next((s.checker for s in subs if s.checker is not None), None)
                conn.send(
                    (
                        "marked",
                        {
                            "t": time.monotonic(),
                            "subs": [s.counter.snapshot() for s in subs if s.counter],
                            "checker": checker.snapshot() if checker else None,
                            "not_connected": sum(s.pc.connectionState != "connected" for s in subs),
                            "hangups": sum(
                                "hangup" in events
                                for events in (janus.seen if janus else {}).values()
                            ),
                        },
                    )
                )
            elif kind == "stop":
                await asyncio.gather(*(s.close() for s in subs))
                if janus is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(janus.destroy(), 5)
                conn.send(("stopped",))
                return


def client_main(conn, spec: dict) -> None:
    import logging

    child_setup()
    quiet_logs()
    # The checker's decoder complains about frames broken in transit; its
    # counter gaps say the same, per window.
    logging.getLogger("aiortc.rtcrtpreceiver").setLevel(logging.ERROR)
    run_loop(_client, conn, spec)


# =====================================================================================
# The run: one server at a time, K rising
# =====================================================================================


class SfuServer(ServerProcesses):
    """``bench.sfu server`` in its own process (fwd or relay)."""

    def __init__(self, mode: str, log_dir: Path, bitrate: int, uvloop: bool):
        super().__init__(f"{mode} server")
        command = [PYTHON, "-m", "bench.sfu", "server", "--mode", mode, "--bitrate", str(bitrate)]
        if uvloop:
            command.append("--uvloop")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.start(env, log_dir, mode, lambda port: [*command, "--port", str(port)])
        self.wait_ready(30)

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    @property
    def port(self) -> int:
        return self.ports[0]

    def stats(self) -> dict:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}/stats", timeout=5) as r:
                return json.load(r)
        except (OSError, ValueError):
            return {}


def k_sequence(args) -> list[int]:
    """1, 2, 4, ... 64, then 1.5× steps too (96, 128, 192, 256, ...) up to ``--max-k``."""
    if args.k:
        return sorted(set(args.k))
    ks, p = [], 1
    while p <= args.max_k:
        ks += [p] if p < 64 else [p, p * 3 // 2]
        p *= 2
    return [k for k in ks if k <= args.max_k]


def split(k: int, parts: int) -> list[int]:
    """K subscribers over the client processes (the first takes the remainder)."""
    base, extra = divmod(k, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Mode:
    """One server with its publisher and client processes, K rising."""

    def __init__(self, mode: str, args, log_dir: Path):
        self.mode = mode
        self.args = args
        self.log_dir = log_dir
        self.server = None  # SfuServer or JanusServer
        self.publisher: ChildProcesses | None = None
        self.clients: ChildProcesses | None = None

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        args = self.args
        spec = {"mode": self.mode, "bitrate": args.bitrate}
        if self.mode == "janus":
            from bench.janus_ref import JanusServer

            self.server = JanusServer()
            self.server.start()
            spec.update(janus_url=self.server.url, janus_secret=self.server.secret)
            self.server_pid = self.server.pid
        else:
            self.server = SfuServer(self.mode, self.log_dir, args.bitrate, args.uvloop)
            spec["port"] = self.server.port
            self.server_pid = self.server.pid
        self.publisher = ChildProcesses(publisher_main, [spec], "publisher", "publisher")
        (ready,) = self.publisher.gather("ready", 40)
        if "error" in ready:
            raise RuntimeError(ready["error"])
        specs = [
            {**spec, **ready, "checker": i == 0, "concurrency": args.connect_concurrency}
            for i in range(args.clients)
        ]
        self.clients = ChildProcesses(client_main, specs)
        self.clients.gather("up", 30)

    def stop(self) -> None:
        for children in (self.clients, self.publisher):
            if children is None:
                continue
            children.send_all(("stop",))
            with contextlib.suppress(Exception):
                children.gather("stopped", 15)
            children.stop()
        if self.server is not None:
            self.server.stop()

    # ------------------------------------------------------------------ measuring

    def pids(self) -> dict[str, list[int]]:
        return {
            "server": [self.server_pid],
            "publisher": [p.pid for p in self.publisher.procs],
            "clients": [p.pid for p in self.clients.procs],
        }

    def mark(self) -> dict:
        cpu = {}
        for name, pids in self.pids().items():
            cpu[name] = sum(proc_cpu(pid) for pid in pids)
        snap = {"t": time.monotonic(), "cpu": cpu, "machine": machine_cpu(), "self": cpu_self()}
        if isinstance(self.server, SfuServer):
            snap["server"] = self.server.stats()
        self.publisher.send_all(("mark",))
        self.clients.send_all(("mark",))
        (snap["publisher"],) = self.publisher.gather("marked", 20)
        snap["clients"] = self.clients.gather("marked", 20)
        return snap

    def grow(self, k: int) -> dict:
        counts = split(k, len(self.clients.conns))
        for conn, n in zip(self.clients.conns, counts, strict=True):
            conn.send(("grow", n))
        replies = self.clients.gather("grown", 120 + 1.0 * k)
        return {
            "seconds": max(r["seconds"] for r in replies),
            "waiting": sum(r["waiting"] for r in replies),
            "errors": sum(r["error_count"] for r in replies),
            "first_error": next((e for r in replies for e in r["errors"]), None),
        }

    def measure(self, k: int) -> dict:
        """Grow to K, warm up, measure ``--repeat`` windows."""
        args = self.args
        started = time.monotonic()
        row: dict = {"k": k, "connect": self.grow(k)}
        time.sleep(args.warmup)
        marks = [self.mark()]
        for _ in range(args.repeat):
            time.sleep(args.seconds)
            marks.append(self.mark())
        windows = [window(a, b, k, args.stop_fps) for a, b in itertools.pairwise(marks)]
        row["windows"] = windows
        # CPU and the publisher's rates: the median of the windows.
        for key, value in windows[0].items():
            if isinstance(value, (int, float)) or value is None:
                row[key] = median(w[key] for w in windows)
        # Delivery over all the windows at once: a stall in one window and the
        # catch-up burst in the next are delays (see the worst gap), not frames
        # missing; losses come in bursts too.
        whole = window(marks[0], marks[-1], k, args.stop_fps)
        for key in ("fps_median", "fps_min", "slow_subscribers", "loss_pct", "packet_loss_pct"):
            row[key] = whole[key]
        row["worst_gap_ms"] = max((w["worst_gap_ms"] or 0) for w in windows)
        row["not_connected"] = windows[-1]["not_connected"]
        row["checker"] = {
            key: sum(w["checker"][key] for w in windows if w.get("checker"))
            for key in ("decoded", "gaps", "out_of_order", "unreadable")
        }
        row["server_stats"] = marks[-1].get("server")
        row["step_s"] = round(time.monotonic() - started, 1)
        return row


def window(a: dict, b: dict, k: int, slow_fps: float) -> dict:
    """The figures between two marks."""
    wall = b["t"] - a["t"]
    cpu = {name: 100 * (b["cpu"][name] - a["cpu"][name]) / wall for name in a["cpu"]}
    busy = b["machine"][0] - a["machine"][0]
    total = max(1, b["machine"][2] - a["machine"][2])
    irq = b["machine"][1] - a["machine"][1]
    ours = sum(cpu.values()) + 100 * (b["self"] - a["self"]) / wall
    other = 100 * (busy - irq) / CLK_TCK / wall - ours
    fps, lost, frames, packets, lost_packets, gaps = [], 0, 0, 0, 0, []
    for ca, cb in zip(a["clients"], b["clients"], strict=True):
        span = cb["t"] - ca["t"]
        for sa, sb in zip(ca["subs"], cb["subs"], strict=False):
            fps.append((sb[0] - sa[0]) / span)
            frames += sb[0] - sa[0]
            lost += sb[1] - sa[1]
            packets += sb[2] - sa[2]
            lost_packets += sb[3] - sa[3]
            gaps.append(sb[5])
    checker = None
    ca, cb = a["clients"][0]["checker"], b["clients"][0]["checker"]
    if ca and cb:
        checker = dict(
            zip(
                ("decoded", "gaps", "out_of_order", "unreadable"),
                (y - x for x, y in zip(ca, cb, strict=True)),
                strict=True,
            )
        )
        checker["fps"] = checker["decoded"] / (b["clients"][0]["t"] - a["clients"][0]["t"])
    pa, pb = a["publisher"], b["publisher"]
    pub_span = pb["t"] - pa["t"]
    server = cpu["server"]
    delivered = sum(fps)  # frames per second, all subscribers
    sa, sb = a.get("server") or {}, b.get("server") or {}
    server_in = server_drops = None
    if "frames_in" in sa and "frames_in" in sb:
        server_in = round((sb["frames_in"] - sa["frames_in"]) / wall, 2)
    if "dropped" in sa and "dropped" in sb:
        server_drops = sb["dropped"] - sa["dropped"]
    return {
        "seconds": round(wall, 2),
        "server_cpu": round(server, 2),
        "cpu_per_stream": round(server / k, 3),
        "streams_per_core": round(k / (server / 100), 1) if server > 0 else None,
        "us_per_frame": round(1e4 * server / delivered, 1) if delivered else None,
        "fps_median": round(statistics.median(fps), 2) if fps else None,
        "fps_min": round(min(fps), 2) if fps else None,
        "slow_subscribers": sum(f < slow_fps for f in fps),
        "not_connected": sum(c["not_connected"] for c in b["clients"]),
        "janus_hangups": sum(c["hangups"] for c in b["clients"]),
        "loss_pct": round(100 * lost / max(1, frames + lost), 3),
        "packet_loss_pct": round(100 * lost_packets / max(1, packets + lost_packets), 3),
        "frames": frames,
        "lost_frames": lost,
        "packets": packets,
        "lost_packets": lost_packets,
        "worst_gap_ms": round(1000 * max(gaps), 1) if gaps else None,
        "server_in_fps": server_in,
        "server_drops": server_drops,
        "subscribers_counted": len(fps),
        "pub_fps": round((pb["frames"] - pa["frames"]) / pub_span, 2),
        "pub_kbps": round(8 * (pb["bytes"] - pa["bytes"]) / pub_span / 1000),
        "publisher_cpu": round(cpu["publisher"], 1),
        "clients_cpu": round(cpu["clients"], 1),
        "machine_busy_pct": round(100 * busy / total, 1),
        "other_cores": round(other / 100, 2),
        "checker": checker,
    }


def delivery_faults(row: dict, args, mode: str) -> list[str]:
    """What was wrong with the delivery at this K (empty: at least ``--stop-fps``,
    at most ``--stop-loss``, every subscriber connected)."""
    connect = row["connect"]
    faults = []
    if connect["errors"] or connect["waiting"]:
        faults.append(
            f"{connect['errors']} subscribers failed to connect, {connect['waiting']} "
            f"received nothing ({connect['first_error']})"
        )
    if row["not_connected"]:
        faults.append(f"{row['not_connected']} subscriber connections no longer connected")
    if row["fps_median"] is None or row["fps_median"] < args.stop_fps:
        faults.append(f"fps median {fmt(row['fps_median'], '{:.1f}')} < {args.stop_fps:g}")
    if mode in LOSS_RULE and row["loss_pct"] > args.stop_loss:
        faults.append(f"frame loss {row['loss_pct']:.2f} % > {args.stop_loss:g} %")
    return faults


def stop_reason(row: dict, args, mode: str) -> str | None:
    reasons = delivery_faults(row, args, mode)
    if row["server_cpu"] > args.stop_cpu:
        reasons.append(f"server CPU {row['server_cpu']:.0f} % > {args.stop_cpu:g} % of a core")
    if reasons and row["machine_busy_pct"] >= 95 and row["server_cpu"] <= args.stop_cpu:
        reasons.append(
            f"the machine was saturated ({row['machine_busy_pct']:.0f} % busy; other processes "
            f"{row['other_cores']:.2f} cores), not the server's core"
        )
    return "; ".join(reasons) or None


def run_mode(mode: str, ks: list[int], args, log_dir: Path, deadline: float) -> dict:
    """Rising K on one server until a stop rule or the deadline; the rows."""
    result: dict = {"mode": mode, "rows": [], "stopped": None}
    runner = Mode(mode, args, log_dir)
    print(f"\n== {NAMES[mode]} ==", flush=True)
    try:
        try:
            runner.start()
        except Exception as exc:
            result["skipped"] = f"{type(exc).__name__}: {exc}"
            print(f"  skipped: {result['skipped']}", flush=True)
            return result
        previous_step = 0.0
        for k in ks:
            estimate = args.warmup + args.seconds * args.repeat + max(5.0, previous_step / 2)
            if time.monotonic() + estimate > deadline:
                result["stopped"] = f"time budget (next K={k} would take ~{estimate:.0f} s)"
                break
            row = runner.measure(k)
            previous_step = row["step_s"]
            result["rows"].append(row)
            print("  " + progress_line(row), flush=True)
            reason = stop_reason(row, args, mode)
            if reason:
                result["stopped"] = f"K={k}: {reason}"
                break
        else:
            result["stopped"] = f"reached the largest K ({ks[-1]})"
    except Exception as exc:  # one server failing does not end the run
        result["stopped"] = f"FAILED: {type(exc).__name__}: {exc}"
    finally:
        if not result.get("skipped"):
            result["stopped"] = result["stopped"] or "interrupted"
            print(f"  stopped: {result['stopped']}", flush=True)
        runner.stop()
    return result


def progress_line(row: dict) -> str:
    line = (
        f"K={row['k']:<4} server {row['server_cpu']:6.1f} % ({row['cpu_per_stream']:.3f} %/stream)"
        f"  fps {fmt(row['fps_median'], '{:.1f}')} (min {fmt(row['fps_min'], '{:.1f}')}, "
        f"{row['slow_subscribers']} slow)  loss {row['loss_pct']:.2f} %"
        f"  pub {row['pub_fps']:.1f} fps {row['pub_kbps']:.0f} kbit/s"
        f"  clients {row['clients_cpu']:.0f} %  busy {row['machine_busy_pct']:.0f} %"
        f"  connect {row['connect']['seconds']:.1f} s  step {row['step_s']:.0f} s"
    )
    checker = row.get("checker")
    if checker and checker["decoded"]:
        line += (
            f"  checker: {checker['decoded']} decoded, {checker['gaps']} gaps, "
            f"{checker['out_of_order']} out of order"
        )
    if row.get("server_in_fps") is not None:
        line += f"  server in {row['server_in_fps']:.1f} fps"
    if row.get("server_drops") is not None:
        line += f", drops {row['server_drops']:.0f}"
    return line


# =====================================================================================
# Report
# =====================================================================================


MODE_COLUMNS = (
    ("K", "k", "{}"),
    ("server CPU %", "server_cpu", "{:.1f}"),
    ("CPU %/stream", "cpu_per_stream", "{:.3f}"),
    ("streams/core", "streams_per_core", "{:.0f}"),
    ("µs/frame", "us_per_frame", "{:.0f}"),
    ("fps med", "fps_median", "{:.1f}"),
    ("fps min", "fps_min", "{:.1f}"),
    ("slow subs", "slow_subscribers", "{}"),
    ("loss %", "loss_pct", "{:.2f}"),
    ("pkt loss %", "packet_loss_pct", "{:.2f}"),
    ("worst gap ms", "worst_gap_ms", "{:.0f}"),
    ("srv in fps", "server_in_fps", "{:.1f}"),
    ("srv drops", "server_drops", "{:.0f}"),
    ("pub fps", "pub_fps", "{:.1f}"),
    ("pub kbit/s", "pub_kbps", "{:.0f}"),
    ("publisher CPU %", "publisher_cpu", "{:.0f}"),
    ("clients CPU %", "clients_cpu", "{:.0f}"),
    ("busy %", "machine_busy_pct", "{:.0f}"),
    ("other cores", "other_cores", "{:.2f}"),
)


def mode_table(result: dict) -> str:
    return column_table(MODE_COLUMNS, result["rows"])


def good(row: dict, args, mode: str) -> bool:
    return not delivery_faults(row, args, mode)


def linear_fit(rows: list[dict]) -> tuple[float, float] | None:
    """Least squares CPU = a + b·K over the rows; (a, b) or None."""
    points = [(r["k"], r["server_cpu"]) for r in rows]
    if len({k for k, _ in points}) < 2:
        return None
    n = len(points)
    mk = sum(k for k, _ in points) / n
    mc = sum(c for _, c in points) / n
    b = sum((k - mk) * (c - mc) for k, c in points) / sum((k - mk) ** 2 for k, _ in points)
    return mc - b * mk, b


def summary(results: dict[str, dict], args) -> list[str]:
    """The side-by-side table with the ratios, and the goal lines."""
    out: list[str] = []
    by_k = {m: {r["k"]: r for r in res["rows"]} for m, res in results.items()}
    present = [m for m in MODES if m in results and results[m]["rows"]]
    ks = sorted({k for m in present for k in by_k[m]})

    def cpu(mode: str, k: int) -> float | None:
        return by_k.get(mode, {}).get(k, {}).get("server_cpu")

    def ratio(x: float | None, y: float | None) -> str:
        return fmt(x / y if x and y else None, "{:.1f}×")

    if len(present) > 1:
        head = ["K"] + [f"{m} CPU %" for m in present]
        head += [f"{m} streams/core" for m in present]
        pairs = [(x, y) for x, y in (("relay", "fwd"), ("fwd", "janus")) if {x, y} <= {*present}]
        head += [f"{x} CPU / {y} CPU" for x, y in pairs]
        rows = []
        for k in ks:
            line = [str(k)] + [fmt(cpu(m, k), "{:.1f}") for m in present]
            line += [fmt(by_k[m].get(k, {}).get("streams_per_core"), "{:.0f}") for m in present]
            line += [ratio(cpu(x, k), cpu(y, k)) for x, y in pairs]
            rows.append(line)
        out += [
            "Side by side, equal K (server CPU % of one core; relay CPU / fwd CPU is also "
            "fwd / relay in streams per core):",
            "",
            markdown(head, rows),
            "",
        ]
    best: dict[str, dict | None] = {}
    projected: dict[str, float | None] = {}
    for m in present:
        rows = results[m]["rows"]
        fine = [r for r in rows if good(r, args, m)]
        best[m] = max(fine, key=lambda r: r["k"]) if fine else None
        fit = linear_fit(fine or rows)
        projected[m] = (100 - fit[0]) / fit[1] if fit and fit[1] > 0 else None
        line = f"{m}: "
        if best[m]:
            r = best[m]
            line += (
                f"largest K at ≥ {args.stop_fps:g} fps and ≤ {args.stop_loss:g} % loss: {r['k']} "
                f"({r['server_cpu']:.1f} % of a core → {r['streams_per_core']:.0f} streams/core)"
            )
        else:
            line += f"no K had ≥ {args.stop_fps:g} fps and ≤ {args.stop_loss:g} % loss"
        if fit:
            line += f"; least squares CPU ≈ {fit[0]:.1f} % + {fit[1]:.3f} % × K"
            if projected[m]:
                line += f" → {projected[m]:.0f} streams at 100 % of a core"
        out.append(line)
    fwd = best.get("fwd")
    if fwd:
        spc = fwd["streams_per_core"]
        out.append(
            f"goal ≥ 200 streams/core at ≥ {args.stop_fps:g} fps: {spc:.0f} (K={fwd['k']}) → "
            + ("met" if spc >= 200 else "NOT met")
        )
    relay = best.get("relay")
    if fwd and relay:
        x = fwd["streams_per_core"] / relay["streams_per_core"]
        line = (
            f"goal ≥ 25× MediaRelay: streams/core fwd {fwd['streams_per_core']:.0f} (K={fwd['k']}) "
            f"/ relay {relay['streams_per_core']:.1f} (K={relay['k']}) = {x:.1f}× → "
            + ("met" if x >= 25 else "NOT met")
        )
        if projected.get("fwd") and projected.get("relay"):
            line += f"; projected to 100 % of a core: {projected['fwd'] / projected['relay']:.1f}×"
        out.append(line)
    if fwd and best.get("janus"):
        janus = best["janus"]
        out.append(
            f"vs Janus: streams/core fwd {fwd['streams_per_core']:.0f} (K={fwd['k']}) / Janus "
            f"{janus['streams_per_core']:.0f} (K={janus['k']}) = "
            f"{fwd['streams_per_core'] / janus['streams_per_core']:.2f}×"
        )
    return out


def legend(args) -> str:
    return (
        "server CPU %: the server process (all threads) over the window, % of one core; "
        "CPU %/stream = server CPU / K; streams/core = K / (server CPU / 100), the publisher's "
        "ingest included (so it understates at small K); µs/frame: server CPU per frame "
        "delivered to one subscriber.\n"
        "fps: complete frames per second per subscriber over all the windows (median and min "
        f"over subscribers); slow subs: subscribers under {args.stop_fps:g} fps; "
        "loss %: frames incomplete or never sent / frames expected (RTP timestamps), all "
        "subscribers and windows; pkt loss %: RTP sequence gaps (no NACK: nothing repaired); "
        "worst gap: the longest time between two complete frames of one subscriber (all "
        "windows); srv in fps: frames the "
        "server assembled (fwd) or decoded (relay) per second; srv drops: frames the forwarder "
        "dropped for its subscribers (fell behind, or waiting for a keyframe).\n"
        "pub: the publisher's frames and bit rate; publisher/clients CPU: their processes; "
        "busy %: the whole machine, % of all cores; other cores: busy time nobody here used "
        "(other work on the machine: a noisy neighbour).\n"
        f"Measured: {args.repeat} window(s) of {args.seconds:g} s after {args.warmup:g} s "
        "warm-up; CPU, pub and busy figures are the median of the windows."
    )


# =====================================================================================
# Command line
# =====================================================================================


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench.sfu", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="role")
    server = sub.add_parser("server", help="(internal) the fwd/relay server process")
    server.add_argument("--mode", choices=("fwd", "relay"), required=True)
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--bitrate", type=int, default=800)
    server.add_argument("--uvloop", action="store_true")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--max-k", type=int, default=512, help="largest K of 1, 2, 4, ...")
    parser.add_argument("--k", type=int, nargs="+", help="explicit values of K instead")
    parser.add_argument("--seconds", type=float, default=4.0, help="one measured window (s)")
    parser.add_argument("--repeat", type=int, default=3, help="windows per K (medians)")
    parser.add_argument("--warmup", type=float, default=3.0, help="after K is reached (s)")
    parser.add_argument("--budget", type=float, default=600.0, help="whole run, s")
    parser.add_argument("--bitrate", type=int, default=800, help="publisher kbit/s (pinned)")
    parser.add_argument("--clients", type=int, default=2, help="subscriber processes")
    parser.add_argument("--connect-concurrency", type=int, default=CONNECT_CONCURRENCY)
    parser.add_argument("--stop-fps", type=float, default=29.0)
    parser.add_argument("--stop-loss", type=float, default=1.0, help="%% of frames")
    parser.add_argument("--stop-cpu", type=float, default=90.0, help="%% of one core")
    parser.add_argument(
        "--uvloop", action="store_true", help="servers on uvloop (default: asyncio, as daphne)"
    )
    parser.add_argument("--out", type=Path, help="JSON report (default bench/results/sfu-*.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "server":
        server_main(args)
        return 0
    stop_on_signals()
    started = time.monotonic()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS_DIR / f"sfu-logs-{stamp}"
    log_dir.mkdir(exist_ok=True)
    out = args.out or RESULTS_DIR / f"sfu-{stamp}.json"
    ks = k_sequence(args)
    header = (
        f"bench.sfu: 1 publisher (640x480 VP8 {FPS} fps, {args.bitrate} kbit/s) -> K "
        f"subscribers; K = {', '.join(map(str, ks))}; {args.repeat} × {args.seconds:g} s "
        f"after {args.warmup:g} s; {args.clients} client processes; server loop "
        f"{'uvloop' if args.uvloop else 'asyncio'}\n{machine_line()}"
    )
    print(header, flush=True)
    results: dict[str, dict] = {}
    interrupted = False
    deadline = started + args.budget
    try:
        modes = [m for m in MODES if m in args.modes]
        for i, mode in enumerate(modes):
            # Each server gets an equal share of what is left; an early stop passes it on.
            share = (deadline - time.monotonic()) / (len(modes) - i)
            mode_ks = ks
            if mode == "janus" and results.get("fwd", {}).get("rows"):
                mode_ks = [r["k"] for r in results["fwd"]["rows"]]
            results[mode] = run_mode(mode, mode_ks, args, log_dir, time.monotonic() + share)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping", flush=True)
    elapsed = time.monotonic() - started
    report = {
        "started": stamp,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_line(),
        "results": results,
        "elapsed_s": round(elapsed, 1),
        "interrupted": interrupted,
    }
    out.write_text(json.dumps(report, indent=1))
    print("\n" + header)
    for mode in MODES:
        if mode not in results:
            continue
        res = results[mode]
        print(f"\n{NAMES[mode]}:")
        if res.get("skipped"):
            print(f"  skipped: {res['skipped']}")
            continue
        print(mode_table(res))
        print(f"stopped: {res['stopped']}")
        checks = [r["checker"] for r in res["rows"] if r.get("checker")]
        if checks:
            print(
                "checker (1 subscriber decoding, all windows): "
                f"{sum(c['decoded'] for c in checks)} frames decoded, "
                f"{sum(c['gaps'] for c in checks)} counter gaps, "
                f"{sum(c['out_of_order'] for c in checks)} out of order, "
                f"{sum(c['unreadable'] for c in checks)} unreadable"
            )
    print()
    for line in summary(results, args):
        print(line)
    print()
    print(legend(args))
    print(f"total {elapsed:.0f} s; results: {shown(out)}; server logs: {shown(log_dir)}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
