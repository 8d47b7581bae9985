"""Crisis alert delivery benchmark: one alert to N subscribers on every channel.

Run from the repository root::

    .venv/bin/python -m bench.alerts_delivery             # N = 10000, two workers
    .venv/bin/python -m bench.alerts_delivery --n 500     # a quick check

Each subscriber has a confirmed e-mail address, phone and browser push
subscription (its own P-256 key pair and auth secret, made by the push service
as a browser would). The outside world runs
on loopback, each part in its own process (bench.loopback): an aiosmtpd SMTP
server, an SMS provider speaking SMSAPI.pl's protocol (tests/crisis/
sms_servers.py), and a Web Push service that makes the N browser
subscriptions, checks every VAPID signature and decrypts every message with
the subscription's private key (tests/crisis/push_server.py). ``--workers``
``manage.py alerts_worker`` processes are running, idle, when the alert is
published with ``alerts.outbox.publish`` (the deliveries are written in the
publication's transaction).

Measured, per variant, from the call to ``publish`` until every delivery of a
channel is recorded (sent or failed) in PostgreSQL: the time per channel and
for all, the messages the loopback servers received (and any recipient they
saw twice), and the CPU seconds of the workers and of PostgreSQL.

Variants, in the same run on the same database: **lanes** (the settings'
defaults: each channel sends with its own concurrency, ALERTS_*_CONCURRENCY)
and the baseline **one at a time** (ALERTS_*_CONCURRENCY=1: one message in
flight per channel per worker). ``--latency-ms`` makes every loopback
server wait before it answers, as a provider across the internet does: on
loopback the answer is immediate and the two cores are the limit.
``--server-env NAME=VALUE`` sets more environment for the workers (for
example ALERTS_SMS_RATE=50).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from bench.common import (
    PYTHON,
    ROOT,
    BenchDatabase,
    Invocation,
    add_server_options,
    machine_line,
    postgres_cpu,
    postgres_master_pid,
    proc_cpu,
    server_env,
    setup_django,
    side_by_side,
    stop_on_signals,
)

CHANNELS = ("email", "sms", "push")
SMS_TOKEN = "bench-token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_vapid_key() -> str:
    """A VAPID private key as ALERTS_VAPID_PRIVATE_KEY takes it (base64url of
    the raw 32 bytes)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return b64(key.private_numbers().private_value.to_bytes(32, "big"))


class Loopback:
    """One bench.loopback process: ``port``, and ``stats()`` on request."""

    def __init__(self, kind: str, log_dir: Path, *extra: str):
        self.kind = kind
        self.log = open(log_dir / f"loopback-{kind}.log", "wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.loopback", kind, *extra],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        line = self.proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            raise RuntimeError(f"loopback {kind} did not start (see {self.log.name})")
        self.port = int(line[1])

    def mark(self) -> None:
        """Count from now on (each variant sends to the same recipients)."""
        self.proc.stdin.write("mark\n")
        self.proc.stdin.flush()

    def stats(self) -> dict:
        """Messages since the mark: ``messages``, ``recipients``, ``twice``."""
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def make_subscribers(n: int, browsers: list[dict]) -> None:
    from django.utils import timezone

    from alerts.models import Subscriber

    now = timezone.now()
    rows = [
        Subscriber(
            email=f"mieszkaniec{i}@example.test",
            phone=f"+485{i:08d}",
            push_endpoint=browsers[i]["endpoint"],
            push_p256dh=browsers[i]["keys"]["p256dh"],
            push_auth=browsers[i]["keys"]["auth"],
            areas=["gmina"],
            email_confirmed_at=now,
            phone_confirmed_at=now,
            push_confirmed_at=now,
            consent_version="bench",
            consent_at=now,
            consent_source="bench",
        )
        for i in range(n)
    ]
    Subscriber.objects.bulk_create(rows, batch_size=2000)


def new_alert(label: str):
    import datetime as dt

    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from alerts.models import Alert

    author, _ = get_user_model().objects.get_or_create(username="bench-operator")
    return Alert.objects.create(
        identifier=f"bench-{label}-{time.time_ns()}",
        author=author,
        category="Met",
        event="Powódź",
        urgency="Immediate",
        severity="Severe",
        certainty="Observed",
        headline="Ostrzeżenie powodziowe: wysoki stan wody na Mrowli",
        description="Przekroczony stan alarmowy na Mrowli w Przewrotnem i Rudnej Małej.",
        instruction="Nie zbliżaj się do wałów. Przenieś cenne rzeczy na wyższe piętro.",
        areas=["gmina"],
        effective=timezone.now() - dt.timedelta(minutes=1),
        expires=timezone.now() + dt.timedelta(hours=6),
        state="approved",
        approved_by=author,
    )


class Workers:
    def __init__(self, count: int, env: dict, log_dir: Path, label: str):
        self.procs: list[subprocess.Popen] = []
        self.beats: list[Path] = []
        self.logs = []
        for i in range(count):
            beat = log_dir / f"worker-{label}-{i}.beat"
            log = open(log_dir / f"worker-{label}-{i}.log", "wb")
            self.procs.append(
                subprocess.Popen(
                    [PYTHON, "manage.py", "alerts_worker"],
                    cwd=ROOT,
                    env={**env, "ALERTS_HEARTBEAT_FILE": str(beat)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            self.beats.append(beat)
            self.logs.append(log)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not all(beat.exists() for beat in self.beats):
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("an alerts worker exited at start (see its log)")
            if time.monotonic() > deadline:
                raise RuntimeError("the alerts workers did not start")
            time.sleep(0.1)

    def cpu(self) -> float:
        return sum(proc_cpu(p.pid) for p in self.procs if p.poll() is None)

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in self.logs:
            log.close()


def progress(alert_pk: int) -> dict[str, dict[str, int]]:
    from django.db.models import Count

    from alerts.models import Delivery

    counts: dict[str, dict[str, int]] = {c: {} for c in CHANNELS}
    rows = (
        Delivery.objects.filter(alert_id=alert_pk)
        .values("channel", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in rows:
        counts[row["channel"]][row["status"]] = row["n"]
    return counts


def run_variant(label: str, concurrency: int | None, args, env: dict, servers, run) -> dict:
    from alerts import outbox

    worker_env = dict(env)
    if concurrency is not None:
        for channel in CHANNELS:
            worker_env[f"ALERTS_{channel.upper()}_CONCURRENCY"] = str(concurrency)
    result: dict = {"label": label, "workers": args.workers}
    for server in servers.values():
        server.mark()
    workers = Workers(args.workers, worker_env, run.log_dir, label.replace(" ", "-"))
    pg = postgres_master_pid(args.postgres_url)
    try:
        workers.wait_ready()
        alert = new_alert(label.replace(" ", "-"))
        cpu_before = workers.cpu(), postgres_cpu(pg)
        started = time.monotonic()
        queued = outbox.publish(alert.pk, alert.author, now=time.time())
        result["enqueue_s"] = time.monotonic() - started
        result["deliveries"] = queued
        done_at: dict[str, float] = {}
        deadline = started + args.timeout
        last_line = 0.0
        while len(done_at) < len(CHANNELS) and time.monotonic() < deadline:
            counts = progress(alert.pk)
            now = time.monotonic()
            for channel in CHANNELS:
                finished = sum(counts[channel].get(s, 0) for s in ("sent", "delivered", "failed"))
                if channel not in done_at and finished >= args.n:
                    done_at[channel] = now - started
            if now - last_line >= 5:
                last_line = now
                shown = "  ".join(
                    f"{c} {sum(counts[c].get(s, 0) for s in ('sent', 'failed'))}" for c in CHANNELS
                )
                print(f"  [{label}] {now - started:5.1f} s  {shown}", flush=True)
            time.sleep(0.1)
        cpu_after = workers.cpu(), postgres_cpu(pg)
        counts = progress(alert.pk)
    finally:
        workers.stop()
    after = {name: server.stats() for name, server in servers.items()}
    for channel in CHANNELS:
        result[f"{channel}_s"] = done_at.get(channel)
        result[f"{channel}_failed"] = counts[channel].get("failed", 0)
    result["all_s"] = max(done_at.values()) if len(done_at) == len(CHANNELS) else None
    for name, stats in after.items():
        result[f"{name}_received"] = stats["messages"]
        result[f"{name}_twice"] = stats["twice"]
    result["worker_cpu_s"] = cpu_after[0] - cpu_before[0]
    if cpu_before[1] is not None and cpu_after[1] is not None:
        result["postgres_cpu_s"] = cpu_after[1] - cpu_before[1]
    if result["all_s"]:
        result["per_s"] = 3 * args.n / result["all_s"]
    return result


ROWS = [
    ("publish (write the outbox), s", "enqueue_s", "{:.2f}", False),
    ("e-mail: all recorded, s", "email_s", "{:.1f}", True),
    ("SMS: all recorded, s", "sms_s", "{:.1f}", True),
    ("push: all recorded, s", "push_s", "{:.1f}", True),
    ("everything recorded, s", "all_s", "{:.1f}", True),
    ("messages per second", "per_s", "{:.0f}", True),
    ("SMTP server received", "smtp_received", "{:d}", False),
    ("SMS server received", "smsapi_received", "{:d}", False),
    ("push service decrypted", "push_received", "{:d}", False),
    ("recipients seen twice (all)", "twice", "{:d}", False),
    ("failed deliveries", "failed", "{:d}", False),
    ("workers' CPU, s", "worker_cpu_s", "{:.1f}", True),
    ("PostgreSQL CPU, s", "postgres_cpu_s", "{:.1f}", True),
]


def value(run: dict, key: str):
    if key == "twice":
        return sum(run.get(f"{n}_twice", 0) for n in ("smtp", "smsapi", "push"))
    if key == "failed":
        return sum(run.get(f"{c}_failed", 0) for c in CHANNELS)
    return run.get(key)


def cell(run: dict, key: str, fmt: str) -> str:
    found = value(run, key)
    return "-" if found is None else fmt.format(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.alerts_delivery", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n", type=int, default=10000, help="subscribers")
    parser.add_argument("--workers", type=int, default=2, help="alerts_worker processes")
    parser.add_argument(
        "--baseline",
        choices=["one-at-a-time", "none"],
        default="one-at-a-time",
        help="also run with ALERTS_*_CONCURRENCY=1",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per variant, s")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="each loopback server waits this long before answering (a provider's round trip)",
    )
    add_server_options(parser, "extra environment of the workers", postgres=True)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    args = parser.parse_args(argv)

    stop_on_signals()
    run = Invocation(args, "alerts-delivery", "alerts-logs")
    database = BenchDatabase(args.postgres_url)
    header = (
        f"bench.alerts_delivery  {run.started.isoformat(timespec='seconds')}\n"
        f"{machine_line()}\n"
        f"setup: {args.n} subscribers × e-mail + SMS + push, {args.workers} workers, "
        f"database {database.name}, servers answer after {args.latency_ms:g} ms"
        + (f"\nworker env: {' '.join(args.server_env)}" if args.server_env else "")
    )
    print(header, flush=True)
    report = run.report({"nproc": os.cpu_count()}, runs=[])
    servers: dict[str, Loopback] = {}
    with run.guard(report, database):
        database.create()
        env = server_env(args.redis_url, run.prefix, None, database_url=database.url)
        database.migrate(env)
        setup_django(env)
        print(f"  making {args.n} browser push subscriptions", flush=True)
        browsers_file = run.log_dir / "push-subscriptions.json"
        latency = ("--latency-ms", str(args.latency_ms))
        servers["smtp"] = Loopback("smtp", run.log_dir, *latency)
        servers["smsapi"] = Loopback("smsapi", run.log_dir, "--token", SMS_TOKEN, *latency)
        servers["push"] = Loopback(
            "push", run.log_dir, "--n", str(args.n), "--out", str(browsers_file), *latency
        )
        make_subscribers(args.n, json.loads(browsers_file.read_text()))
        vapid = new_vapid_key()
        env.update(
            DEBUG="0",  # as in production: no query log kept per statement
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=str(servers["smtp"].port),
            ALERTS_SMS_PROVIDER="smsapi",
            ALERTS_SMS_BASE_URL=f"http://127.0.0.1:{servers['smsapi'].port}",
            ALERTS_SMS_TOKEN=SMS_TOKEN,
            ALERTS_VAPID_PRIVATE_KEY=vapid,
            ALERTS_PUSH_ALLOWED_HOSTS=f"127.0.0.1:{servers['push'].port}",
        )
        for item in args.server_env or ():
            name, _, val = item.partition("=")
            env[name] = val
        variants = [("lanes", None)]
        if args.baseline == "one-at-a-time":
            variants.insert(0, ("one at a time", 1))
        for label, concurrency in variants:
            print(f"  [{label}] publishing to {args.n} subscribers", flush=True)
            result = run_variant(label, concurrency, args, env, servers, run)
            report["runs"].append(result)
            print(f"  [{label}] done: {json.dumps(result)}", flush=True)
    for server in servers.values():
        server.stop()
    runs = report["runs"]
    if len(runs) == 2:
        names = ["one at a time", "lanes", "ratio"]
        table = "\n".join(
            side_by_side(ROWS, runs, names, cell=16, ratio=10, ratio_format="{:.2f}×", value=value)
        )
    elif runs:
        table = "\n".join(f"  {label:32}{cell(runs[0], key, fmt)}" for label, key, fmt, _ in ROWS)
    else:
        table = "  (no run finished)"
    legend = (
        "\nTimes run from the call to publish until every delivery of the channel is recorded "
        "in PostgreSQL.\nGoal (issue 4): everything for 10,000 subscribers in ≤ 60 s with two "
        "workers."
    )
    run.print_summary(report, header, table, legend, database)
    return run.exit_code(report)


if __name__ == "__main__":
    raise SystemExit(main())
