"""The C reference of the SFU benchmark: Janus VideoRoom, one publisher -> K subscribers.

Run from the repository root::

    .venv/bin/python bench/janus_ref.py --subs 1 2 4 8 --seconds 10
    .venv/bin/python bench/janus_ref.py --subs 0 1 8      # 0 = publisher only (ingest cost)

or from another benchmark::

    from bench.janus_ref import JanusServer, JanusUnavailable, run_janus

    result = await run_janus(k=4, seconds=10, warmup=3)   # starts and stops its own Janus
    with JanusServer() as janus:                           # or share one instance
        result = await run_janus(4, 10, 3, server=janus)

What it does, per K:

* **Janus** (Debian's ``janus``, 1.1.x) runs as a subprocess from a configuration
  written to a temporary directory; the system one in /etc/janus is never read.
  Its plugin and transport folders are temporary directories holding a symlink to
  ``libjanus_videoroom.so`` and ``libjanus_http.so`` only (no streaming, echotest,
  admin API, event handlers or loggers, hence no sample UDP ports). The HTTP API
  listens on 127.0.0.1 on a free port with a random ``api_secret``; ICE gathers on
  127.0.0.1 only (``nat.ice_enforce_list``), without STUN, IPv6 or mDNS. Janus
  never gathers on a loopback interface by itself, so it runs with a small
  ``LD_PRELOAD`` shim (:data:`LOOPBACK_SHIM`, compiled with ``cc`` into the
  temporary directory) that lets the enforce list pick 127.0.0.1. Every candidate
  Janus puts in an SDP is checked to be 127.0.0.1. Janus runs under ``setpriv
  --pdeathsig TERM`` (when there is one) so that it ends with this process even
  on SIGKILL.
* **Clients** are aiortc peer connections in this process, also on 127.0.0.1 only
  (aioice leaves loopback out; :func:`loopback_candidates` swaps its address list
  for the run) and without STUN. A room is created with ``videocodec=vp8`` and
  ``bitrate`` 800 kbit/s (Janus sends it as REMB; aiortc's VP8 encoder is CBR at
  the REMB value). The publisher sends a synthetic 640x480 30 fps track: the top
  half is a 16-bit frame counter as black/white columns, the bottom half moving
  noise so that the encoder has to spend its budget. K subscribers join the
  publisher's feed, decode every frame and read the counter.
* **Measured** over ``seconds`` after ``warmup``: Janus's CPU (utime + stime of
  /proc/<pid>/stat, all its threads) as % of one core and per subscriber stream;
  decoded frames per second per subscriber (median, min); **gaps**: counter values
  missing between consecutive decoded frames, summed over subscribers (frames
  lost or never decoded); the publisher's frame rate and bit rate; this process's
  CPU (encoder + K decoders) and the whole machine's busy time, to tell when the
  clients, not Janus, are the limit.

``ok`` means the run worked (no error, every subscriber decoded frames in the
window), not that the figures are good. The clients share the machine with Janus
and cost much more CPU than it does (about 36 % of a core against Janus's 2.5 % at
K=8 on the 2-core machine); *machine busy* shows when the machine, not Janus, was
the limit. One K takes ``warmup + seconds`` plus about half a second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from bench.common import HOST, cpu_self, free_port, machine_cpu, proc_cpu
from bench.media_common import (
    FPS,
    CounterTrack,
    bytes_sent,
    column_table,
    loopback_candidates,
    new_peer_connection,
    read_counter,
    vp8_only,
)

ROOM_BITRATE = 800_000  # bit/s, sent to the publisher as REMB

# Where Debian and source installs put Janus's shared objects.
LIB_FOLDERS = (
    "/usr/lib/*/janus",
    "/usr/lib/janus",
    "/usr/local/lib/janus",
    "/usr/local/lib/*/janus",
    "/opt/janus/lib/janus",
)
PLUGIN = "libjanus_videoroom.so"
TRANSPORT = "libjanus_http.so"

HTTP_TIMEOUT = 10.0  # s, one Janus API request
EVENT_TIMEOUT = 10.0  # s, an asynchronous plugin answer (join, publish, start)
CONNECT_TIMEOUT = 15.0  # s, ICE + DTLS of every peer connection


class JanusUnavailable(RuntimeError):
    """Janus cannot run here (not installed, plugin missing, would not start)."""


class JanusError(RuntimeError):
    """Janus answered a request with an error, or the media did not come up."""


# =====================================================================================
# The Janus process
# =====================================================================================


def _jcfg(sections: dict[str, dict]) -> str:
    """A libconfig (.jcfg) text from ``{section: {key: str | int | bool}}``."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        return json.dumps(str(v))

    out = []
    for name, items in sections.items():
        out.append(f"{name}: {{")
        out += [f"\t{key} = {value(v)}" for key, v in items.items()]
        out.append("}")
    return "\n".join(out) + "\n"


def find_janus_libs() -> Path:
    """The folder with Janus's ``plugins/`` and ``transports/`` (raises JanusUnavailable)."""
    for pattern in LIB_FOLDERS:
        for folder in sorted(Path("/").glob(pattern.lstrip("/"))):
            if (folder / "plugins" / PLUGIN).exists() and (
                folder / "transports" / TRANSPORT
            ).exists():
                return folder
    raise JanusUnavailable(f"{PLUGIN} and {TRANSPORT} not found in {', '.join(LIB_FOLDERS)}")


# Janus (src/ice.c, janus_ice_setup_local) skips every interface flagged IFF_LOOPBACK when
# it picks the addresses to gather on, whatever ice_enforce_list says; with none picked,
# libnice falls back to all non-loopback interfaces. So ``ice_enforce_list = "127.0.0.1"``
# alone gets eth0 candidates. This preload clears the flag in what getifaddrs() returns
# to Janus, so that the enforce list can pick 127.0.0.1 (and only it).
LOOPBACK_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>

int getifaddrs(struct ifaddrs **ifap) {
    static int (*real)(struct ifaddrs **) = 0;
    if (!real)
        real = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    int rc = real(ifap);
    if (rc == 0)
        for (struct ifaddrs *i = *ifap; i; i = i->ifa_next)
            i->ifa_flags &= ~IFF_LOOPBACK;
    return rc;
}
"""


def build_loopback_shim(folder: Path) -> Path:
    """Compile :data:`LOOPBACK_SHIM` into ``folder``; raises JanusUnavailable without cc."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise JanusUnavailable(
            "no C compiler for the loopback shim (Janus gathers no 127.0.0.1 candidates "
            "without it, see LOOPBACK_SHIM)"
        )
    source, shim = folder / "loopback_shim.c", folder / "loopback_shim.so"
    source.write_text(LOOPBACK_SHIM)
    build = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if build.returncode != 0:
        raise JanusUnavailable(f"the loopback shim did not compile:\n{build.stderr}")
    return shim


class JanusServer:
    """A private Janus: its own configuration in a temporary directory, 127.0.0.1 only.

    Use as a context manager (``with`` or ``async with``); the process is stopped
    and the directory removed on exit, also on an error or Ctrl-C. The process
    runs in its own session, so Ctrl-C reaches only the benchmark, which stops it.
    :attr:`url` is the HTTP API root, :attr:`secret` its ``apisecret``.
    """

    def __init__(self, startup_timeout: float = 15.0, debug_level: int = 4):
        self.startup_timeout = startup_timeout
        self.debug_level = debug_level
        self.port = 0
        self.secret = secrets.token_hex(16)
        self.binary: str | None = None
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/janus"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "janus.log"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the Janus process so far (all threads)."""
        return proc_cpu(self.pid)

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of Janus's output (stdout + stderr)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return ""

    # ---------------------------------------------------------------- configuration

    def _write_config(self) -> Path:
        """Write the configuration; returns the path of janus.jcfg."""
        binary = shutil.which("janus")
        if binary is None:
            raise JanusUnavailable("the janus binary is not on PATH (apt-get install janus)")
        libs = find_janus_libs()
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="janus-ref-"))
        folders = {name: self.dir / name for name in ("conf", "plugins", "transports", "x")}
        for folder in folders.values():
            folder.mkdir()
        # Only what is needed is there to load; events and loggers get an empty folder.
        (folders["plugins"] / PLUGIN).symlink_to(libs / "plugins" / PLUGIN)
        (folders["transports"] / TRANSPORT).symlink_to(libs / "transports" / TRANSPORT)
        self.port = free_port()
        conf = folders["conf"]
        (conf / "janus.jcfg").write_text(
            _jcfg(
                {
                    "general": {
                        "configs_folder": conf,
                        "plugins_folder": folders["plugins"],
                        "transports_folder": folders["transports"],
                        "events_folder": folders["x"],
                        "loggers_folder": folders["x"],
                        "debug_level": self.debug_level,
                        "debug_timestamps": True,
                        "debug_colors": False,
                        "interface": HOST,  # the address in the SDPs' c= and o= lines
                        "server_name": "egmina-bench-janus",
                        "session_timeout": 60,
                        "api_secret": self.secret,
                    },
                    "certificates": {},
                    "media": {"ipv6": False, "ipv6_linklocal": False},
                    "nat": {
                        # Host candidates on 127.0.0.1 only; no STUN/TURN server is set.
                        "ice_enforce_list": HOST,
                        "ignore_mdns": True,
                        "full_trickle": False,
                        "ice_lite": False,
                        "ice_tcp": False,
                        "nice_debug": False,
                    },
                    "plugins": {},
                    "transports": {},
                    "loggers": {},
                    "events": {"broadcast": False},
                }
            )
        )
        (conf / "janus.transport.http.jcfg").write_text(
            _jcfg(
                {
                    "general": {
                        "json": "plain",
                        "base_path": "/janus",
                        "http": True,
                        "port": self.port,
                        "ip": HOST,
                        "https": False,
                        "acl": "127.",
                    },
                    "admin": {"admin_http": False, "admin_https": False},
                }
            )
        )
        # No rooms here: each run creates (and destroys) its own through the API.
        (conf / "janus.plugin.videoroom.jcfg").write_text(_jcfg({"general": {}}))
        return conf / "janus.jcfg"

    # ---------------------------------------------------------------- lifetime

    def _spawn(self) -> None:
        config = self._write_config()
        env = {**os.environ, "LD_PRELOAD": str(build_loopback_shim(self.dir))}
        command = [self.binary, "--config", str(config), "--configs-folder", str(config.parent)]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:  # Janus gets SIGTERM if this process dies without stop()
            command = [setpriv, "--pdeathsig", "TERM", *command]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )

    def _answers(self) -> bool:
        """The HTTP API answers ``info`` (raises JanusUnavailable if Janus died)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise JanusUnavailable(
                f"janus exited with code {self.proc.returncode} at start-up:\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{self.url}/info", timeout=1) as r:
                return json.load(r).get("janus") == "server_info"
        except (OSError, ValueError):
            return False

    def _not_ready(self) -> JanusUnavailable:
        tail = self.log_tail()
        self.stop()
        return JanusUnavailable(
            f"janus did not answer within {self.startup_timeout:.0f} s:\n{tail}"
        )

    def start(self) -> JanusServer:
        """Start Janus and wait (blocking) until its API answers."""
        try:
            self._spawn()
            deadline = time.monotonic() + self.startup_timeout
            while not self._answers():
                if time.monotonic() > deadline:
                    raise self._not_ready()
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    async def start_async(self) -> JanusServer:
        """:meth:`start` without blocking the event loop while Janus comes up."""
        try:
            self._spawn()
            deadline = time.monotonic() + self.startup_timeout
            while not await asyncio.to_thread(self._answers):
                if time.monotonic() > deadline:
                    raise self._not_ready()
                await asyncio.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop Janus (SIGTERM, then SIGKILL after 5 s) and remove its directory.

        Idempotent. With ``JANUS_REF_KEEP`` set in the environment the directory
        (configuration and janus.log) is kept and its path printed to stderr.
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.dir is not None:
            if os.environ.get("JANUS_REF_KEEP"):
                print(f"janus_ref: Janus directory kept: {self.dir}", file=sys.stderr)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> JanusServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def __aenter__(self) -> JanusServer:
        return await self.start_async()

    async def __aexit__(self, *exc) -> None:
        self.stop()


# =====================================================================================
# The Janus API over HTTP (one session, long poll for events)
# =====================================================================================


def check_loopback_sdp(sdp: str) -> None:
    """Every ICE candidate in a Janus SDP is on 127.0.0.1 (raises JanusError)."""
    for line in sdp.splitlines():
        if line.startswith("a=candidate:") and line.split()[4] != HOST:
            raise JanusError(f"Janus offered a candidate off loopback: {line}")


class JanusSession:
    """A Janus API session over HTTP with a long-poll task for its events.

    :meth:`message` sends a plugin request and returns the plugin's answer: at
    once when the plugin answers synchronously (``success``), else the event with
    the same transaction from the long poll. Other events (``webrtcup``,
    ``media``, ``hangup``, ``slowlink``) are kept per handle in :attr:`seen`.
    """

    def __init__(self, http: aiohttp.ClientSession, url: str, secret: str):
        self.http = http
        self.url = url
        self.secret = secret
        self.id: int | None = None
        self.pending: dict[str, asyncio.Future] = {}
        self.seen: dict[int, list[str]] = {}
        self.poller: asyncio.Task | None = None

    async def _post(self, path: str, payload: dict) -> dict:
        payload = {**payload, "apisecret": self.secret}
        payload.setdefault("transaction", secrets.token_hex(8))
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        async with self.http.post(self.url + path, json=payload, timeout=timeout) as r:
            reply = await r.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"{payload['janus']}: {reply.get('error')}")
        return reply

    async def create(self) -> None:
        self.id = (await self._post("", {"janus": "create"}))["data"]["id"]
        self.poller = asyncio.create_task(self._poll())

    async def attach(self) -> int:
        """A new handle on the VideoRoom plugin."""
        reply = await self._post(
            f"/{self.id}", {"janus": "attach", "plugin": "janus.plugin.videoroom"}
        )
        handle = reply["data"]["id"]
        self.seen[handle] = []
        return handle

    async def message(
        self, handle: int, body: dict, jsep: dict | None = None
    ) -> tuple[dict, dict | None]:
        """Send a plugin request; ``(plugin data, jsep or None)`` of its answer."""
        transaction = secrets.token_hex(8)
        answer = asyncio.get_running_loop().create_future()
        self.pending[transaction] = answer
        payload = {"janus": "message", "transaction": transaction, "body": body}
        if jsep is not None:
            payload["jsep"] = jsep
        try:
            reply = await self._post(f"/{self.id}/{handle}", payload)
            if reply.get("janus") != "success":  # "ack": the answer comes as an event
                reply = await asyncio.wait_for(answer, EVENT_TIMEOUT)
        except TimeoutError:
            raise JanusError(
                f"no answer to {body.get('request')!r} within {EVENT_TIMEOUT} s"
            ) from None
        finally:
            self.pending.pop(transaction, None)
        data = reply.get("plugindata", {}).get("data", {})
        if "error" in data or reply.get("janus") == "error":
            raise JanusError(f"{body.get('request')}: {data.get('error') or reply.get('error')}")
        return data, reply.get("jsep")

    async def create_room(self, handle: int, room: int, bitrate: int, description: str) -> None:
        """Create VideoRoom ``room`` through ``handle``: private, one publisher, VP8
        only, ``bitrate`` bit/s sent to the publisher as REMB, no periodic FIR."""
        await self.message(
            handle,
            {
                "request": "create",
                "room": room,
                "description": description,
                "is_private": True,
                "publishers": 1,
                "videocodec": "vp8",
                "bitrate": bitrate,
                "fir_freq": 0,
            },
        )

    async def trickle_done(self, handle: int) -> None:
        """Tell Janus there are no more candidates than those in our SDP."""
        await self._post(
            f"/{self.id}/{handle}", {"janus": "trickle", "candidate": {"completed": True}}
        )

    async def wait_for(self, handle: int, event: str, within: float) -> None:
        """Wait until Janus sent ``event`` (e.g. ``webrtcup``) for ``handle``."""
        deadline = time.monotonic() + within
        while event not in self.seen.get(handle, ()):
            if "hangup" in self.seen.get(handle, ()):
                raise JanusError(f"handle {handle}: hangup before {event}")
            if time.monotonic() > deadline:
                raise JanusError(f"handle {handle}: no {event} within {within} s")
            await asyncio.sleep(0.05)

    async def _poll(self) -> None:
        """Long poll: route events to the waiting requests and to :attr:`seen`."""
        timeout = aiohttp.ClientTimeout(total=45)  # Janus answers a keepalive after 30 s
        params = {"maxev": "10", "apisecret": self.secret}
        while True:
            try:
                async with self.http.get(
                    f"{self.url}/{self.id}", params=params, timeout=timeout
                ) as r:
                    events = await r.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.2)
                continue
            for event in events if isinstance(events, list) else [events]:
                answer = self.pending.get(event.get("transaction"))
                if answer is not None and not answer.done() and event.get("janus") != "ack":
                    answer.set_result(event)
                elif "sender" in event:
                    self.seen.setdefault(event["sender"], []).append(event.get("janus"))

    async def destroy(self) -> None:
        """Destroy the session (its handles go with it) and stop polling."""
        if self.poller is not None:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller
        if self.id is not None:
            with contextlib.suppress(JanusError, aiohttp.ClientError, TimeoutError):
                await self._post(f"/{self.id}", {"janus": "destroy"})
            self.id = None


# =====================================================================================
# aiortc clients
# =====================================================================================


class Subscriber:
    """A receive-only peer connection that decodes every frame and reads its counter."""

    def __init__(self) -> None:
        self.pc = new_peer_connection()
        self.frames: list[tuple[float, int | None]] = []  # (monotonic, counter)
        self.tasks: list[asyncio.Task] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        if track.kind == "video":
            self.tasks.append(asyncio.create_task(self._consume(track)))

    async def _consume(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:  # the connection closed
                return
            self.frames.append((time.monotonic(), read_counter(frame)))

    def window(self, t0: float, t1: float, sent: dict[int, float]) -> dict:
        """Decoded frames, gaps, unreadable frames and latency within ``[t0, t1)``."""
        got = [(t, n) for t, n in self.frames if t0 <= t < t1]
        values = [n for _, n in got if n is not None]
        pairs = list(itertools.pairwise(values))
        latency = sorted(t - sent[n] for t, n in got if n is not None and n in sent)
        return {
            "frames": len(got),
            "fps": len(got) / (t1 - t0),
            "gaps": sum(b - a - 1 for a, b in pairs if b > a + 1),
            "out_of_order": sum(1 for a, b in pairs if b <= a),
            "unreadable": len(got) - len(values),
            "latency_ms_p50": 1000 * statistics.median(latency) if latency else None,
        }

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()


async def publish_feed(janus: JanusSession, room: int, pc: RTCPeerConnection) -> tuple[int, int]:
    """Join ``room`` as publisher with the offer set on ``pc`` and apply Janus's answer.

    Returns the handle and the publisher's feed id.
    """
    handle = await janus.attach()
    joined, _ = await janus.message(
        handle, {"request": "join", "ptype": "publisher", "room": room, "display": "pub"}
    )
    offer = {"type": "offer", "sdp": pc.localDescription.sdp}
    _, answer = await janus.message(handle, {"request": "publish"}, jsep=offer)
    if answer is None:
        raise JanusError("publish: no SDP answer")
    check_loopback_sdp(answer["sdp"])
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    await janus.trickle_done(handle)
    return handle, joined["id"]


async def subscribe_feed(
    janus: JanusSession,
    room: int,
    feed: int,
    pc: RTCPeerConnection,
    on_offer: Callable[[], None] | None = None,
) -> int:
    """Join ``room`` as a subscriber to ``feed`` with ``pc``; returns the handle.

    ``on_offer`` is called once Janus's offer is set on ``pc`` (its receivers
    exist), before the answer.
    """
    handle = await janus.attach()
    body = {"request": "join", "ptype": "subscriber", "room": room, "streams": [{"feed": feed}]}
    _, offer = await janus.message(handle, body)
    if offer is None:
        raise JanusError("subscriber join: no SDP offer")
    check_loopback_sdp(offer["sdp"])
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
    if on_offer is not None:
        on_offer()
    await pc.setLocalDescription(await pc.createAnswer())
    answer = {"type": "answer", "sdp": pc.localDescription.sdp}
    await janus.message(handle, {"request": "start"}, jsep=answer)
    await janus.trickle_done(handle)
    return handle


def _empty_result(k: int) -> dict:
    return {
        "k": k,
        "cpu_percent": None,
        "cpu_per_stream": None,
        "fps_median": None,
        "fps_min": None,
        "gaps": None,
        "ok": False,
    }


async def _measure(server: JanusServer, k: int, seconds: float, warmup: float) -> dict:
    """One measured run on a running Janus; the room and the session are removed after.

    Every peer connection is closed at the end whatever happened: an open one keeps
    aiortc's decoder thread, and so the process, alive.
    """
    result = _empty_result(k)
    room = secrets.randbelow(1 << 40) + 1
    pub_pc, track = new_peer_connection(), CounterTrack()
    subs = [Subscriber() for _ in range(k)]
    admin = None
    async with aiohttp.ClientSession() as http:
        janus = JanusSession(http, server.url, server.secret)
        try:
            await janus.create()
            admin = await janus.attach()
            await janus.create_room(admin, room, ROOM_BITRATE, "janus_ref benchmark")
            transceiver = pub_pc.addTransceiver(track, direction="sendonly")
            vp8_only(transceiver)
            await pub_pc.setLocalDescription(await pub_pc.createOffer())
            pub_handle, feed = await publish_feed(janus, room, pub_pc)
            await janus.wait_for(pub_handle, "webrtcup", CONNECT_TIMEOUT)
            handles = await asyncio.gather(
                *(subscribe_feed(janus, room, feed, sub.pc) for sub in subs), return_exceptions=True
            )
            for handle in handles:
                if isinstance(handle, BaseException):
                    raise handle
                await janus.wait_for(handle, "webrtcup", CONNECT_TIMEOUT)
            await asyncio.sleep(warmup)

            cpu0, self0, machine0 = server.cpu_seconds(), cpu_self(), machine_cpu()
            bytes0, t0 = await bytes_sent(transceiver.sender), time.monotonic()
            await asyncio.sleep(seconds)
            cpu1, self1, machine1 = server.cpu_seconds(), cpu_self(), machine_cpu()
            bytes1, t1 = await bytes_sent(transceiver.sender), time.monotonic()

            wall = t1 - t0
            per_sub = [sub.window(t0, t1, track.sent) for sub in subs]
            fps = [w["fps"] for w in per_sub]
            latency = [w["latency_ms_p50"] for w in per_sub if w["latency_ms_p50"] is not None]
            cpu = 100 * (cpu1 - cpu0) / wall
            result.update(
                cpu_percent=round(cpu, 2),
                cpu_per_stream=round(cpu / k, 2) if k else None,
                fps_median=round(statistics.median(fps), 1) if fps else None,
                fps_min=round(min(fps), 1) if fps else None,
                gaps=sum(w["gaps"] for w in per_sub),
                out_of_order=sum(w["out_of_order"] for w in per_sub),
                unreadable=sum(w["unreadable"] for w in per_sub),
                latency_ms_p50=round(statistics.median(latency), 1) if latency else None,
                pub_fps=round(sum(1 for t in track.sent.values() if t0 <= t < t1) / wall, 1),
                pub_kbps=round(8 * (bytes1 - bytes0) / wall / 1000),
                client_cpu_percent=round(100 * (self1 - self0) / wall, 1),
                machine_busy_percent=round(
                    100 * (machine1[0] - machine0[0]) / max(1, machine1[2] - machine0[2]), 1
                ),
                seconds=round(wall, 2),
                ok=all(w["frames"] > 0 for w in per_sub),
            )
            if not result["ok"]:
                result["error"] = "a subscriber decoded no frame in the window"
        except Exception as exc:  # ends this run, not the caller's
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            await asyncio.gather(
                pub_pc.close(), *(sub.close() for sub in subs), return_exceptions=True
            )
            if admin is not None:
                with contextlib.suppress(JanusError, aiohttp.ClientError, TimeoutError):
                    await janus.message(admin, {"request": "destroy", "room": room})
            await janus.destroy()  # its handles (publisher, subscribers) go with it
    return result


async def run_janus(
    k: int, seconds: float, warmup: float, server: JanusServer | None = None
) -> dict:
    """One publisher -> ``k`` subscribers through Janus VideoRoom, measured.

    Returns ``{"k", "cpu_percent", "cpu_per_stream", "fps_median", "fps_min",
    "gaps", "ok", ...}`` (more keys: ``pub_fps``, ``pub_kbps``,
    ``latency_ms_p50``, ``client_cpu_percent``, ``machine_busy_percent``,
    ``out_of_order``, ``unreadable``, ``seconds``; ``error`` when not ok).
    ``cpu_percent`` is Janus's CPU over the window, % of one core. ``k=0``
    measures the publisher alone (Janus's ingest cost).

    Starts and stops its own Janus unless ``server`` (a started
    :class:`JanusServer`) is given. Raises :class:`JanusUnavailable` when Janus
    cannot run here; other failures give ``ok: False`` and ``error``. Bounded:
    the whole run is cut after ``warmup + seconds + 60`` s.
    """
    with loopback_candidates():
        if server is None:
            async with JanusServer() as own:
                return await run_janus(k, seconds, warmup, server=own)
        try:
            async with asyncio.timeout(warmup + seconds + 60):
                return await _measure(server, k, seconds, warmup)
        except TimeoutError:
            return {**_empty_result(k), "error": "run timed out"}


# =====================================================================================
# Command line
# =====================================================================================

COLUMNS = (
    ("K", "k", "{}"),
    ("Janus CPU %", "cpu_percent", "{:.1f}"),
    ("CPU %/stream", "cpu_per_stream", "{:.2f}"),
    ("fps med", "fps_median", "{:.1f}"),
    ("fps min", "fps_min", "{:.1f}"),
    ("gaps", "gaps", "{}"),
    ("pub fps", "pub_fps", "{:.1f}"),
    ("pub kbit/s", "pub_kbps", "{}"),
    ("latency p50 ms", "latency_ms_p50", "{:.0f}"),
    ("clients CPU %", "client_cpu_percent", "{:.0f}"),
    ("machine busy %", "machine_busy_percent", "{:.0f}"),
    ("ok", "ok", "{}"),
)


def table(results: list[dict]) -> str:
    """The results as a Markdown table; with a K=0 run (publisher only), also each
    run's CPU above it per subscriber stream (``marginal %/stream``)."""
    base = next((r["cpu_percent"] for r in results if r["k"] == 0 and r["ok"]), None)
    columns = COLUMNS
    if base is not None:
        results = [
            {**r, "marginal": (r["cpu_percent"] - base) / r["k"]}
            if r["k"] and r["cpu_percent"] is not None
            else r
            for r in results
        ]
        columns = (*COLUMNS[:3], ("marginal %/stream", "marginal", "{:.2f}"), *COLUMNS[3:])
    return column_table(columns, results)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


async def _run_all(server: JanusServer, ks: list[int], seconds: float, warmup: float) -> list[dict]:
    """Every K in turn on one Janus. SIGTERM cancels the run like Ctrl-C does, so that
    the peer connections are closed (aiortc's decoder threads would keep the process
    alive otherwise)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    try:
        return await _run_each(server, ks, seconds, warmup)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _interrupt)


async def _run_each(
    server: JanusServer, ks: list[int], seconds: float, warmup: float
) -> list[dict]:
    results = []
    for k in ks:
        started = time.monotonic()
        result = await run_janus(k, seconds, warmup, server=server)
        result["run_s"] = round(time.monotonic() - started, 1)
        line = f"  K={k}: " + (
            f"Janus {result['cpu_percent']}% of a core, fps {result['fps_median']} "
            f"(min {result['fps_min']}), gaps {result['gaps']}, {result['run_s']} s"
            if result["ok"]
            else f"FAILED: {result.get('error')}"
        )
        print(line, flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subs", type=int, nargs="+", default=[1, 2, 4, 8], help="values of K")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window (s)")
    parser.add_argument("--warmup", type=float, default=3.0, help="wait before measuring (s)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # outside the event loop: as Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with & (ignored)
    started = time.monotonic()
    try:
        with JanusServer() as server:
            print(f"Janus pid {server.pid} on {server.url}, log {server.log_path}", flush=True)
            results = asyncio.run(_run_all(server, args.subs, args.seconds, args.warmup))
    except JanusUnavailable as exc:
        print(f"Janus reference skipped: {exc}")
        return 0
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; Janus stopped")
        return 130
    print()
    print(
        f"Janus VideoRoom, 1 publisher (640x480 VP8 {FPS} fps) -> K subscribers, "
        f"{args.seconds:g} s after {args.warmup:g} s warm-up; nproc={os.cpu_count()}"
    )
    print(table(results))
    print(f"total {time.monotonic() - started:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
