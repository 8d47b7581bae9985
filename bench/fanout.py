"""Fan-out benchmark: N WebSocket clients on one public topic, hub vs naive Channels.

Run from the repository root::

    .venv/bin/python -m bench.fanout                 # N = 1000, 5000, 10000
    .venv/bin/python -m bench.fanout --n 200         # a quick check

For every N it runs, in the same invocation:

* **hub**: two ``manage.py broadcast_server`` processes (the production shape:
  nginx spreads ``/ws/live/`` over several of them) sharing a Redis topic bus.
  Clients subscribe to ``public.bench``; the publisher calls
  ``RedisBus.publish`` (one Lua call; one Redis PUBLISH per event).
* **naive**: two daphne processes serving bench.naive_app (one Channels
  consumer per socket, ``group_add`` on connect) with plain channels_redis
  defaults; the publisher calls ``channel_layer.group_send``.

Clients run in separate processes (``--procs``, default 4) on the same
machine, split round-robin between the two server ports. Each records
``receive time - data.sent`` (both ``time.time()``) per event and counts
events received; server RSS and CPU are read from /proc. Results are printed
as a table and written to bench/results/fanout-<timestamp>.json.

The client is a minimal WebSocket client on an asyncio Protocol (``--client
raw``, the default: a few microseconds per frame, no task per socket) so that
the clients, which share the CPUs with the servers, disturb the measurement
as little as possible; ``--client websockets`` uses
``websockets.asyncio.client.connect`` instead.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

from bench.common import (
    DAPHNE,
    HOST,
    ORIGIN,
    PYTHON,
    ChildProcesses,
    CpuMeter,
    Invocation,
    ServerProcesses,
    add_server_options,
    child_setup,
    cpu_self,
    failure_noted,
    http_ok,
    machine_line,
    ms,
    percentile,
    raise_nofile,
    redis_local_pid,
    run_loop,
    server_env,
    side_by_side,
    stop_on_signals,
    tcp_open,
)

TOPIC = "public.bench"
GROUP = "bench"
# With --banner: the crisis alerts' live banner (alerts.live): its topic, its
# event type and an event of its shape (the measured fields come last).
BANNER_TOPIC = "public.alerts"
BANNER = {
    "identifier": "ostrzezenie-powodziowe-przewrotne-0001",
    "severity": "Severe",
    "headline": "Ostrzeżenie powodziowe: przekroczony stan alarmowy na Mrowli",
    "url": "/alerts/ostrzezenie-powodziowe-przewrotne-0001/",
    "expires": 0.0,
}


def event(i: int, now: float, banner: bool) -> tuple[str, str, dict]:
    """The ``i``-th event: (topic, type, data)."""
    if banner:
        data = {**BANNER, "expires": now + 6 * 3600, "n": i, "sent": now}
        return BANNER_TOPIC, "alert.current", data
    return TOPIC, "bench.tick", {"n": i, "sent": now}


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUBSCRIBE = json.dumps({"type": "subscribe", "id": "s", "topics": [TOPIC]}).encode()


# =====================================================================================
# Client side (runs in the worker processes)
# =====================================================================================


class Stats:
    """Per-worker counters shared by all its clients."""

    def __init__(self, events: int):
        self.events = events
        self.full_mask = (1 << events) - 1
        self.latencies = array.array("d")
        self.event_ids = array.array("B")  # the event (data.n) of each latency
        self.complete = 0  # clients holding every event
        self.live = 0  # clients subscribed and still connected
        self.disconnects = 0  # subscribed clients that lost their socket before the end
        self.close_codes: collections.Counter = collections.Counter()
        self.duplicates = 0
        self.closing = False


def parse_event(payload: bytes) -> tuple[int, float] | None:
    """``(n, sent)`` from an event frame; None for anything else (pings).

    A string search, not a JSON parse: the clients share the CPUs with the servers.
    """
    i = payload.find(b'"sent":')
    if i < 0:
        return None
    j = i + 7
    k = payload.find(b"}", j)
    c = payload.find(b",", j)
    if 0 <= c < k:
        k = c
    sent = float(payload[j:k])
    i = payload.find(b'"n":')
    c = payload.find(b",", i + 4)
    k = payload.find(b"}", i + 4)
    n = int(payload[i + 4 : c if 0 <= c < k else k])
    return n, sent


class ClientState:
    """What one client received (shared by both client implementations)."""

    __slots__ = ("count", "gone", "mask", "stats", "subscribed")

    def __init__(self, stats: Stats):
        self.stats = stats
        self.mask = 0
        self.count = 0
        self.subscribed = False
        self.gone = False

    def on_event(self, payload: bytes, now: float) -> None:
        parsed = parse_event(payload)
        if parsed is None:
            return
        n, sent = parsed
        stats = self.stats
        bit = 1 << n
        if self.mask & bit:
            stats.duplicates += 1
            return
        self.mask |= bit
        self.count += 1
        stats.latencies.append(now - sent)
        stats.event_ids.append(n)
        if self.mask == stats.full_mask:
            stats.complete += 1

    def on_lost(self, code: int | None) -> None:
        if self.gone:
            return
        self.gone = True
        if self.subscribed:
            self.stats.live -= 1
            if not self.stats.closing:
                self.stats.disconnects += 1
                self.stats.close_codes[str(code)] += 1


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + key + masked


class RawClient(asyncio.Protocol):
    """A minimal WebSocket client: handshake, unmasked server frames, pong, close.

    One ``data_received`` call costs a few microseconds per frame and there is no
    task per socket; the receive time is taken once per ``data_received``.
    """

    def __init__(self, state: ClientState, host: str, port: int, path: str, subscribe: bool):
        self.state = state
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {ORIGIN}\r\n"
        )
        self.key = base64.b64encode(os.urandom(16))
        self.request = self.request.encode() + b"Sec-WebSocket-Key: " + self.key + b"\r\n\r\n"
        self.subscribe = subscribe
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.frag: bytes | None = None
        self.phase = 0  # 0 HTTP, 1 await welcome, 2 await subscribed, 3 live
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    def _live(self) -> None:
        self.phase = 3
        if not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.phase == 0:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            head, data = data[:end], data[end + 4 :]
            status = head.split(b"\r\n", 1)[0]
            if not status.startswith(b"HTTP/1.1 101"):
                self._fail("http " + status.decode(errors="replace")[9:].strip())
                return
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest())
            if accept not in head:
                self._fail("bad Sec-WebSocket-Accept")
                return
            if self.subscribe:
                self.phase = 1
            else:
                self._live()
        pos = 0
        size = len(data)
        while size - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            payload = data[pos + head : end]
            pos = end
            opcode = b0 & 0x0F
            if opcode == 1 or opcode == 0:
                if not b0 & 0x80:  # fragmented: keep the parts until FIN
                    self.frag = payload if opcode == 1 else (self.frag or b"") + payload
                    continue
                if opcode == 0:
                    payload = (self.frag or b"") + payload
                    self.frag = None
                self._text(payload, now)
            elif opcode == 9:  # ping -> pong
                self.transport.write(_client_frame(0xA, payload))
            elif opcode == 8:  # close: echo it and drop the socket
                if len(payload) >= 2:
                    self.close_code = int.from_bytes(payload[:2], "big")
                with contextlib.suppress(Exception):
                    self.transport.write(_client_frame(0x8, payload[:2]))
                self._fail(f"closed {self.close_code}")
                return
        if pos < size:
            self.buf = data[pos:]

    def _text(self, payload: bytes, now: float) -> None:
        phase = self.phase
        if phase == 3:
            self.state.on_event(payload, now)
        elif phase == 1:
            if b'"welcome"' not in payload:
                self._fail("no welcome")
                return
            self.phase = 2
            self.transport.write(_client_frame(0x1, SUBSCRIBE))
        elif phase == 2:
            if b'"subscribed"' in payload:
                self._live()
            elif b'"error"' in payload:
                self._fail("subscribe refused")

    def connection_lost(self, exc):
        if not self.ready.done():
            where = ("in HTTP handshake", "before welcome", "before subscribed", "")[self.phase]
            why = (
                f"close {self.close_code}"
                if self.close_code
                else (type(exc).__name__ if exc else "EOF")
            )
            self.ready.set_exception(ConnectionError(f"lost {where} ({why})"))
        self.state.on_lost(self.close_code)


async def run_raw_client(stats, state, port, path, subscribe, limit, handles):
    loop = asyncio.get_running_loop()
    protocol = RawClient(state, HOST, port, path, subscribe)
    try:
        async with asyncio.timeout(limit):
            await loop.create_connection(lambda: protocol, HOST, port)
            await protocol.ready
    except BaseException:
        if protocol.transport is not None:
            protocol.transport.abort()
        raise
    handles.append(protocol.transport.abort)


async def run_websockets_client(stats, state, port, path, subscribe, limit, handles):
    """The same client on websockets.asyncio.client (one task per socket)."""
    from websockets.asyncio.client import connect

    uri = f"ws://{HOST}:{port}{path}"
    ready = asyncio.get_running_loop().create_future()

    async def body():
        ws = None
        try:
            async with asyncio.timeout(limit):
                ws = await connect(
                    uri,
                    origin=ORIGIN,
                    compression=None,
                    max_queue=None,
                    ping_interval=None,
                    open_timeout=None,
                )
                if subscribe:
                    welcome = await ws.recv(decode=False)
                    if b'"welcome"' not in welcome:
                        raise ConnectionError("no welcome")
                    await ws.send(SUBSCRIBE.decode())
                    while True:
                        reply = await ws.recv(decode=False)
                        if b'"subscribed"' in reply:
                            break
                        if b'"error"' in reply:
                            raise ConnectionError("subscribe refused")
        except BaseException as exc:
            if ws is not None:
                ws.transport.abort()
            if not ready.done():
                ready.set_exception(
                    exc if isinstance(exc, Exception) else ConnectionError("cancelled")
                )
            return
        ready.set_result(ws)
        try:
            while True:
                payload = await ws.recv(decode=False)
                state.on_event(payload, time.time())
        except Exception:
            pass
        state.on_lost(ws.close_code)

    task = asyncio.get_running_loop().create_task(body())
    try:
        ws = await ready
    except BaseException:
        task.cancel()
        raise
    handles.append(ws.transport.abort)
    handles.append(task.cancel)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    text = str(exc) or type(exc).__name__
    return text[:60]


async def worker_main(conn, spec: dict) -> None:
    global SUBSCRIBE
    SUBSCRIBE = json.dumps({"type": "subscribe", "id": "s", "topics": [spec["topic"]]}).encode()
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()

    def read_commands():
        # A thread, not loop.add_reader: that would make the pipe non-blocking
        # and a large conn.send() would then fail with EAGAIN.
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("close",)
            loop.call_soon_threadsafe(inbox.put_nowait, message)
            if message[0] == "close":
                return

    threading.Thread(target=read_commands, daemon=True).start()
    stats = Stats(spec["events"])
    handles: list = []
    states: list[ClientState] = []
    run_client = run_raw_client if spec["client"] == "raw" else run_websockets_client
    conn.send(("hello", os.getpid()))

    command = await inbox.get()
    assert command[0] == "connect", command
    ports: list[int] = command[1]
    path, subscribe = spec["path"], spec["subscribe"]
    failures: collections.Counter = collections.Counter()
    semaphore = asyncio.Semaphore(spec["concurrency"])
    t0 = time.monotonic()
    cpu0 = cpu_self()
    connect_times = array.array("d")

    async def one(port: int) -> None:
        async with semaphore:
            state = ClientState(stats)
            started = time.monotonic()
            try:
                await run_client(stats, state, port, path, subscribe, spec["timeout"], handles)
            except BaseException as exc:
                failures[_reason(exc)] += 1
                return
            connect_times.append(time.monotonic() - started)
            if not state.gone:
                state.subscribed = True
                stats.live += 1
                states.append(state)

    tasks = [loop.create_task(one(p)) for p in ports]
    _done, pending = await asyncio.wait(tasks, timeout=spec["connect_budget"])
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    conn.send(
        (
            "ready",
            {
                "subscribed": len(states),
                "failures": dict(failures),
                "wall": time.monotonic() - t0,
                "cpu": cpu_self() - cpu0,
                "connect_times": connect_times.tobytes(),
            },
        )
    )

    command = await inbox.get()
    if command[0] == "go":
        cpu1 = cpu_self()
        lost_before = stats.disconnects
        command = await inbox.get()
        assert command[0] == "drain", command
        deadline = command[1]
        while time.time() < deadline and stats.complete < stats.live:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # a poll: cheaper than an Event set per client
        finished = time.time()
        received = collections.Counter(s.count for s in states)
        conn.send(
            (
                "result",
                {
                    "latencies": stats.latencies.tobytes(),
                    "event_ids": stats.event_ids.tobytes(),
                    "received_hist": dict(received),
                    "lost": sum(stats.events - s.count for s in states),
                    "complete": stats.complete,
                    "duplicates": stats.duplicates,
                    "disconnects": stats.disconnects - lost_before,
                    "close_codes": dict(stats.close_codes),
                    "cpu": cpu_self() - cpu1,
                    "finished": finished,
                },
            )
        )
        command = await inbox.get()
    stats.closing = True
    for close in handles:
        with contextlib.suppress(Exception):
            close()
    await asyncio.sleep(0.2)
    conn.send(("closed",))


def worker_entry(conn, spec: dict) -> None:
    child_setup()
    run_loop(worker_main, conn, spec)


# =====================================================================================
# Servers, publishers
# =====================================================================================


class Servers(ServerProcesses):
    """Two (or more) server processes of one kind; killed in ``stop``."""

    def __init__(self, kind: str, count: int, env: dict, log_dir: Path):
        super().__init__(f"{kind} server")
        self.kind = kind
        for _ in range(count):
            self.start(env, log_dir, kind, self.command)

    def command(self, port: int) -> list[str]:
        if self.kind == "hub":
            return [PYTHON, "manage.py", "broadcast_server", "--host", HOST, "--port", str(port)]
        return [DAPHNE, "-b", HOST, "-p", str(port), "bench.naive_app:application"]

    def ready(self, port: int) -> bool:
        return http_ok(port) if self.kind == "hub" else tcp_open(port)


async def _paced(events: int, rate: float, send) -> list[tuple[float, float]]:
    """Call ``send(i)`` at ``rate`` per second; returns (start, end) times of each call."""
    start = time.monotonic() + 0.1
    spans = []
    for i in range(events):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = time.time()
        await send(i)
        spans.append((t, time.time()))
    return spans


async def publish_hub(redis_url: str, prefix: str, events: int, rate: float, banner: bool):
    from hub.bus import RedisBus

    bus = RedisBus(redis_url, prefix=prefix, buffer_size=1000, seq_ttl=86400)
    try:
        await bus.ping()
        await bus.redis.script_load(RedisBus._PUBLISH)

        async def send(i: int) -> None:
            await bus.publish(*event(i, time.time(), banner))

        return await _paced(events, rate, send)
    finally:
        await bus.close()


async def publish_naive(redis_url: str, prefix: str, events: int, rate: float, banner: bool):
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=[redis_url], prefix=prefix)
    try:

        async def send(i: int) -> None:
            now = time.time()
            topic, type_, data = event(i, now, banner)
            # The same frame as the hub's, serialized once by the publisher.
            text = json.dumps(
                {
                    "topic": topic,
                    "seq": i + 1,
                    "time": round(now, 4),
                    "type": type_,
                    "data": data,
                },
                separators=(",", ":"),
            )
            await layer.group_send(GROUP, {"type": "bench.tick", "text": text})

        return await _paced(events, rate, send)
    finally:
        await layer.close_pools()


# =====================================================================================
# One run: one kind of server, one N
# =====================================================================================


class Workers(ChildProcesses):
    """The client processes (``worker_entry``), all on the same ``spec``."""

    def __init__(self, procs: int, spec: dict):
        super().__init__(worker_entry, [spec] * procs, noun="client worker", nouns="workers")

    def stop(self) -> None:
        self.send_all(("close",))
        with contextlib.suppress(Exception):
            self.gather("closed", 15)
        super().stop(timeout=3)


def run_one(kind: str, n: int, args, base_prefix: str, log_dir: Path) -> dict:
    label = f"{kind} N={n}"
    prefix = f"{base_prefix}:{kind}{n}"
    env = server_env(args.redis_url, prefix, args.server_env)
    # After --server-env: the prefix and the settings are the benchmark's.
    env.update(REDIS_PREFIX=prefix, DJANGO_SETTINGS_MODULE="hub.settings")
    if kind == "naive":
        env.update(BENCH_CHANNELS_PREFIX=prefix, DJANGO_SETTINGS_MODULE="bench.naive_settings")
    result: dict = {"kind": kind, "n": n, "redis_prefix": prefix}
    meter = CpuMeter(redis_local_pid(args.redis_url))
    with contextlib.ExitStack() as stack, failure_noted(result, label):
        servers = Servers(kind, args.servers, env, log_dir)
        stack.callback(servers.stop)
        servers.wait_ready()
        result["rss_idle_kib"] = servers.rss_kib()
        spec = {
            "events": args.events,
            "client": args.client,
            "path": "/ws/live/" if kind == "hub" else "/ws/naive/",
            "subscribe": kind == "hub",
            "topic": BANNER_TOPIC if args.banner else TOPIC,
            "concurrency": args.connect_concurrency,
            "timeout": args.connect_timeout,
            "connect_budget": args.connect_budget,
        }
        workers = Workers(args.procs, spec)
        stack.callback(workers.stop)
        workers.gather("hello", 60)
        # Client i goes to server i % servers (round robin, like least_conn on
        # equal servers); worker w takes clients w, w + procs, ...
        ports = [servers.ports[i % len(servers.ports)] for i in range(n)]
        shares = [ports[w :: args.procs] for w in range(args.procs)]
        print(f"  [{label}] connecting {n} clients ...", flush=True)
        cpu_servers0 = servers.cpu()
        t0 = time.monotonic()
        for conn, share in zip(workers.conns, shares, strict=True):
            conn.send(("connect", share))
        ready = workers.gather("ready", args.connect_budget + 60)
        connect_wall = time.monotonic() - t0
        subscribed = sum(r["subscribed"] for r in ready)
        failures: collections.Counter = collections.Counter()
        for r in ready:
            failures.update(r["failures"])
        per_client = array.array("d")
        for r in ready:
            per_client.frombytes(r["connect_times"])
        per_client = sorted(per_client)
        time.sleep(args.settle)
        result.update(
            connect_s=round(connect_wall, 3),
            subscribed=subscribed,
            connect_failures=n - subscribed,
            connect_failure_reasons=dict(failures),
            connect_p50_ms=ms(percentile(per_client, 50)),
            connect_p99_ms=ms(percentile(per_client, 99)),
            client_cpu_connect_s=round(sum(r["cpu"] for r in ready), 2),
            server_cpu_connect_s=round(servers.cpu() - cpu_servers0, 2),
            rss_after_connect_kib=servers.rss_kib(),
        )
        print(
            f"  [{label}] {subscribed}/{n} subscribed in {connect_wall:.1f} s"
            + (f"; failures {dict(failures)}" if failures else ""),
            flush=True,
        )
        if not subscribed:
            raise RuntimeError("no client subscribed")

        workers.send_all(("go",))
        cpu_servers1 = servers.cpu()
        meter.start()
        publish = publish_hub if kind == "hub" else publish_naive
        spans = asyncio.run(publish(args.redis_url, prefix, args.events, args.rate, args.banner))
        last_publish = spans[-1][1]
        workers.send_all(("drain", last_publish + args.drain))
        results = workers.gather("result", args.drain + 60)
        meter.stop()
        finished = max(r["finished"] for r in results)
        latencies = array.array("d")
        event_ids = array.array("B")
        for r in results:
            latencies.frombytes(r["latencies"])
            event_ids.frombytes(r["event_ids"])
        per_event: dict[int, list[float]] = collections.defaultdict(list)
        for i, latency in zip(event_ids, latencies, strict=True):
            per_event[i].append(latency)
        events_table = []
        for i in range(args.events):
            values = sorted(per_event.get(i, ()))
            events_table.append(
                {
                    "n": i,
                    "published": round(spans[i][0] - spans[0][0], 3),
                    "published_at": round(spans[i][0], 3),
                    "delivered": len(values),
                    "p50_ms": ms(percentile(values, 50)),
                    "p99_ms": ms(percentile(values, 99)),
                    "max_ms": ms(values[-1] if values else None),
                }
            )
        latencies = sorted(latencies)
        lost = sum(r["lost"] for r in results)
        expected = subscribed * args.events
        received_hist: collections.Counter = collections.Counter()
        close_codes: collections.Counter = collections.Counter()
        for r in results:
            received_hist.update({int(k): v for k, v in r["received_hist"].items()})
            close_codes.update(r["close_codes"])
        result.update(
            publish_call_ms_p50=ms(percentile(sorted(e - s for s, e in spans), 50)),
            publish_call_ms_max=ms(max(e - s for s, e in spans)),
            publish_span_s=round(last_publish - spans[0][0], 3),
            delivered=len(latencies),
            lost=lost,
            lost_pct=round(100 * lost / expected, 3) if expected else None,
            delivered_pct_of_n=round(100 * len(latencies) / (n * args.events), 3),
            complete_clients=sum(r["complete"] for r in results),
            duplicates=sum(r["duplicates"] for r in results),
            disconnects=sum(r["disconnects"] for r in results),
            close_codes=dict(close_codes),
            received_per_client=dict(sorted(received_hist.items())),
            p50_ms=ms(percentile(latencies, 50)),
            p90_ms=ms(percentile(latencies, 90)),
            p99_ms=ms(percentile(latencies, 99)),
            max_ms=ms(latencies[-1] if latencies else None),
            drain_s=round(finished - last_publish, 3),
            client_cpu_delivery_s=round(sum(r["cpu"] for r in results), 2),
            server_cpu_delivery_s=round(servers.cpu() - cpu_servers1, 2),
            machine_busy_pct=meter.busy_pct,
            rss_end_kib=servers.rss_kib(),
            servers_alive=servers.alive(),
            redis_cpu_delivery_s=meter.redis_s,
            per_event=events_table,
        )
        result["kernel_irq_cpu_delivery_s"] = meter.irq_s
        result["other_cpu_delivery_s"] = meter.other_s(
            result["server_cpu_delivery_s"], result["client_cpu_delivery_s"]
        )
        # The delivery window is long for a run that drains for --drain seconds:
        # "other" as average busy cores compares across runs.
        result["delivery_window_s"] = round(meter.window, 2)
        result["other_cores_delivery"] = meter.cores(result["other_cpu_delivery_s"])
        if args.verbose:
            for row in events_table:
                print(f"    event {row}", flush=True)
        print(
            f"  [{label}] p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
            f"max {result['max_ms']} ms, lost {lost} ({result['lost_pct']}%)",
            flush=True,
        )
    return result


# =====================================================================================
# Report
# =====================================================================================

ROWS = [
    # label, key, format, ratio?
    ("connect time (s)", "connect_s", "{:.1f}", True),
    ("connect failures", "connect_failures", "{:d}", False),
    ("connect p99 per client (ms)", "connect_p99_ms", "{:.0f}", True),
    ("delivery p50 (ms)", "p50_ms", "{:.1f}", True),
    ("delivery p99 (ms)", "p99_ms", "{:.1f}", True),
    ("delivery max (ms)", "max_ms", "{:.1f}", True),
    ("messages lost", "lost", "{:d}", False),
    ("messages lost (%)", "lost_pct", "{:.2f}", False),
    ("delivered, % of N x events", "delivered_pct_of_n", "{:.2f}", False),
    ("mid-run disconnects", "disconnects", "{:d}", False),
    ("publish call max (ms)", "publish_call_ms_max", "{:.1f}", True),
    ("server RSS idle (MiB)", "rss_idle_mib", "{:.0f}", True),
    ("server RSS after connect (MiB)", "rss_after_connect_mib", "{:.0f}", True),
    ("server RSS at end (MiB)", "rss_end_mib", "{:.0f}", True),
    ("server CPU, connect (s)", "server_cpu_connect_s", "{:.1f}", True),
    ("server CPU, delivery (s)", "server_cpu_delivery_s", "{:.1f}", True),
    ("client CPU, delivery (s)", "client_cpu_delivery_s", "{:.1f}", True),
    ("redis CPU, delivery (s)", "redis_cpu_delivery_s", "{:.1f}", True),
    ("kernel softirq CPU, delivery (s)", "kernel_irq_cpu_delivery_s", "{:.1f}", True),
    ("other processes, delivery (cores)", "other_cores_delivery", "{:.2f}", False),
    ("machine busy, delivery (%)", "machine_busy_pct", "{:.0f}", False),
]


def _mib(result: dict) -> None:
    for key in ("rss_idle", "rss_after_connect", "rss_end"):
        if f"{key}_kib" in result:
            result[f"{key}_mib"] = result[f"{key}_kib"] / 1024


def format_table(n: int, hub: dict | None, naive: dict | None) -> str:
    lines = [f"N = {n}"]
    lines += side_by_side(
        ROWS, (hub, naive), ("hub", "naive", "naive/hub"), cell=12, ratio=12, ratio_format="{:.1f}x"
    )
    for name, result in (("hub", hub), ("naive", naive)):
        if result and result.get("error"):
            lines.append(f"  {name} error: {result['error']}")
        if result and result.get("connect_failure_reasons"):
            lines.append(f"  {name} connect failures: {result['connect_failure_reasons']}")
        if result and result.get("close_codes"):
            lines.append(f"  {name} close codes seen mid-run: {result['close_codes']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--kinds", nargs="+", choices=["hub", "naive"], default=["hub", "naive"])
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--servers", type=int, default=2, help="server processes per kind")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--rate", type=float, default=2.0, help="events per second")
    parser.add_argument("--drain", type=float, default=30.0, help="s to wait after the last event")
    parser.add_argument("--connect-concurrency", type=int, default=200, help="per client process")
    parser.add_argument("--connect-timeout", type=float, default=30.0, help="per client, s")
    parser.add_argument("--connect-budget", type=float, default=180.0, help="connect phase, s")
    parser.add_argument("--settle", type=float, default=1.0, help="s between connect and publish")
    parser.add_argument("--client", choices=["raw", "websockets"], default="raw")
    parser.add_argument(
        "--banner",
        action="store_true",
        help="the crisis alerts' live banner: topic public.alerts, alert.current events",
    )
    add_server_options(
        parser, "extra environment of the server processes (e.g. WS_HEARTBEAT_INTERVAL=4)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print per-event latency")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    args = parser.parse_args(argv)
    if args.events > 60:
        parser.error("--events: at most 60")

    stop_on_signals(sigint=False)
    nofile = raise_nofile()
    run = Invocation(args, "fanout", "logs")
    machine = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nofile": nofile,
    }
    header = (
        f"bench.fanout  {run.started.isoformat(timespec='seconds')}\n"
        f"{machine_line(nofile)}\n"
        f"setup: {args.servers} server processes per kind, {args.procs} client processes "
        f"({args.client} client), {args.events} events at {args.rate:g}/s, drain {args.drain:g} s, "
        f"redis {args.redis_url} prefix {run.prefix}"
        + ("\nevents: the live banner's (public.alerts, alert.current)" if args.banner else "")
        + (f"\nserver env: {' '.join(args.server_env)}" if args.server_env else "")
    )
    print(header, flush=True)
    runs: list[dict] = []
    report = run.report(machine, redis_prefix=run.prefix, runs=runs)
    tables = []
    by_kind: dict = {}
    n = 0
    with run.guard(report, catch=False):
        for n in args.n:
            by_kind = {}
            for kind in args.kinds:
                print(f"\n== {kind}, N={n}", flush=True)
                result = run_one(kind, n, args, run.prefix, run.log_dir)
                _mib(result)
                runs.append(result)
                by_kind[kind] = result
                time.sleep(2)
            tables.append(format_table(n, by_kind.get("hub"), by_kind.get("naive")))
            by_kind = {}
    if by_kind:  # interrupted: the N in progress, with the kinds that finished
        tables.append(format_table(n, by_kind.get("hub"), by_kind.get("naive")))
    run.print_summary(
        report,
        header,
        "\n\n".join(tables),
        "\nlatency: receive time - publish time (time.time() on both sides) per event and "
        "client; lost: events a subscribed client had not received "
        f"{args.drain:g} s after the last publish (% of subscribed clients x events).",
    )
    return run.exit_code(report)


if __name__ == "__main__":
    sys.exit(main())
