"""What the benchmarks share: processes, /proc accounting, Redis and PostgreSQL
scratch space, the invocation's bookkeeping and the side-by-side table.

Used by bench.fanout, bench.meet_signaling and bench.meet_join. Everything
binds to 127.0.0.1; every resource made here (server processes, client
processes, a ``bench_<random>`` database, ``bench-<random>`` Redis keys) has the
call that removes it, and :meth:`Invocation.guard` makes sure the last two are
removed also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
DAPHNE = str(Path(PYTHON).parent / "daphne")
RESULTS_DIR = ROOT / "bench" / "results"
HOST = "127.0.0.1"
ORIGIN = "http://127.0.0.1"
LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# =====================================================================================
# Small helpers
# =====================================================================================


def raise_nofile() -> int:
    """Raise the soft limit of open files to the hard limit; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(sorted_values, q: float) -> float | None:
    """The nearest-rank ``q``-th percentile of already sorted values (None if empty)."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds with one decimal; None stays None."""
    return None if seconds is None else round(seconds * 1000, 1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_ok(port: int, path: str = "/healthz") -> bool:
    """``GET http://127.0.0.1:<port><path>`` answers 200 within a second."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def tcp_open(port: int) -> bool:
    """Something accepts TCP connections on 127.0.0.1:<port>."""
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
        return True
    return False


# =====================================================================================
# CPU and memory from /proc
# =====================================================================================


def cpu_self() -> float:
    """User + system CPU seconds of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB (0 if /proc does not say)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[int, int, int]:
    """``(busy, interrupts, total)`` jiffies of the whole machine (/proc/stat).

    ``interrupts`` (irq + softirq) is mostly the loopback TCP stack, which the
    kernel does not charge to any process.
    """
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = values
    return user + nice + system + irq + softirq, irq + softirq, sum(values)


def redis_local_pid(redis_url: str) -> int | None:
    """The Redis server's pid when it runs on this machine (to read its CPU)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    host = client.connection_pool.connection_kwargs.get("host", "")
    if host in ("127.0.0.1", "localhost", "::1") and os.path.exists(f"/proc/{pid}/stat"):
        return pid
    return None


def redis_cpu(pid: int | None) -> float | None:
    """CPU seconds of the Redis server, when it runs on this machine."""
    if pid is None:
        return None
    try:
        return proc_cpu(pid)
    except OSError:
        return None


def postgres_master_pid(admin_url: str) -> int | None:
    """The postmaster's pid when PostgreSQL runs on this machine (to read its CPU)."""
    import psycopg

    try:
        with psycopg.connect(admin_url, connect_timeout=5) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with open(f"/proc/{backend}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/comm") as f:
            return ppid if "postgres" in f.read() else None
    except (OSError, ValueError, psycopg.Error):
        return None


def postgres_cpu(master: int | None) -> float | None:
    """CPU seconds of PostgreSQL: the postmaster with its reaped children (a
    backend per Django connection: they come and go) plus the live backends."""
    if master is None:
        return None
    try:
        with open(f"/proc/{master}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    total = sum(int(v) for v in fields[11:15])
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry.name}/stat") as f:
                child = f.read().rsplit(")", 1)[1].split()
            if int(child[1]) == master:
                total += int(child[11]) + int(child[12])
    return total / CLK_TCK


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 2)


class CpuMeter:
    """CPU time over one measured window: the whole machine, a local Redis and
    PostgreSQL (when their pids are given) and this process.

    ``start()`` and ``stop()`` bracket the window; the properties then give the
    figures (seconds rounded to 0.01) and :meth:`other_s` what nobody named
    used: busy time outside interrupts minus the given CPU seconds (servers,
    clients), Redis, PostgreSQL and this process.
    """

    def __init__(self, redis_pid: int | None = None, postgres_pid: int | None = None):
        self.redis_pid = redis_pid
        self.postgres_pid = postgres_pid

    def start(self) -> None:
        self.busy0, self.irq0, self.total0 = machine_cpu()
        self.redis0 = redis_cpu(self.redis_pid)
        self.postgres0 = postgres_cpu(self.postgres_pid)
        self.self0 = cpu_self()

    def stop(self) -> None:
        self.busy1, self.irq1, self.total1 = machine_cpu()
        self.postgres1 = postgres_cpu(self.postgres_pid)
        self.redis1 = redis_cpu(self.redis_pid)
        self.self1 = cpu_self()

    @property
    def busy_pct(self) -> float:
        """How busy the machine was, % of all its cores."""
        return round(100 * (self.busy1 - self.busy0) / max(1, self.total1 - self.total0), 1)

    @property
    def irq_s(self) -> float:
        """The kernel's irq + softirq time (mostly the loopback TCP stack)."""
        return round((self.irq1 - self.irq0) / CLK_TCK, 2)

    @property
    def redis_s(self) -> float | None:
        return _delta(self.redis0, self.redis1)

    @property
    def postgres_s(self) -> float | None:
        return _delta(self.postgres0, self.postgres1)

    @property
    def window(self) -> float:
        """Wall seconds of the window (machine jiffies / CLK_TCK / cores)."""
        return (self.total1 - self.total0) / CLK_TCK / (os.cpu_count() or 1)

    def other_s(self, *accounted: float) -> float:
        """CPU seconds of everything else on the machine (a noisy neighbour)."""
        return round(
            (self.busy1 - self.busy0 - self.irq1 + self.irq0) / CLK_TCK
            - sum(accounted)
            - (self.redis_s or 0)
            - (self.postgres_s or 0)
            - (self.self1 - self.self0),
            2,
        )

    def cores(self, cpu_s: float) -> float:
        """CPU seconds over the window as average busy cores."""
        return round(cpu_s / self.window, 2)


# =====================================================================================
# Processes: servers (subprocess) and clients (multiprocessing)
# =====================================================================================


class ServerProcesses:
    """Server processes on loopback, each on a free port with its own log file.

    They run in their own session, so Ctrl-C reaches only the benchmark, which
    stops them in :meth:`stop` (SIGTERM, SIGKILL after 5 s). Subclasses call
    :meth:`start` per process and may override :meth:`ready` (the default: a
    200 from ``/healthz``). ``what`` names them in errors ("daphne on 8001 ...").
    """

    def __init__(self, what: str):
        self.what = what
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []
        self.logs: list[Path] = []

    def start(self, env: dict, log_dir: Path, name: str, command: Callable[[int], list]) -> int:
        """Start ``command(port)`` on a free port, output to ``<log_dir>/<name>-<port>.log``."""
        port = free_port()
        log = log_dir / f"{name}-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                command(port),
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us; we stop them
            )
        self.procs.append(proc)
        self.ports.append(port)
        self.logs.append(log)
        return port

    def ready(self, port: int) -> bool:
        return http_ok(port)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every server is :meth:`ready`; raises if one exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        for proc, port, log in zip(self.procs, self.ports, self.logs, strict=True):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.what} on {port} exited:\n{log.read_text()[-2000:]}")
                if self.ready(port):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.what} on {port} did not start")
                time.sleep(0.1)

    def rss_kib(self) -> int:
        return sum(proc_rss_kib(p.pid) for p in self.procs if p.poll() is None)

    def cpu(self) -> float:
        return sum(proc_cpu(p.pid) for p in self.procs if p.poll() is None)

    def alive(self) -> int:
        return sum(p.poll() is None for p in self.procs)

    def log_lines(self, *needles: str) -> int:
        """How often the ``needles`` occur in the logs (e.g. "Traceback")."""
        count = 0
        for log in self.logs:
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace")
                count += sum(text.count(n) for n in needles)
        return count

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()


class Daphnes(ServerProcesses):
    """``count`` daphne processes serving hub.asgi on loopback; killed in ``stop``."""

    def __init__(self, count: int, env: dict, log_dir: Path, label: str = "daphne"):
        super().__init__("daphne")
        for _ in range(count):
            self.start(env, log_dir, label, self.command)

    @staticmethod
    def command(port: int) -> list[str]:
        return [DAPHNE, "-b", HOST, "-p", str(port), "hub.asgi:application"]


class ChildProcesses:
    """Client processes (multiprocessing "spawn"), one per spec, each with a pipe.

    ``target(conn, spec)`` runs in the child; messages are tuples ``(kind,
    payload)``. ``noun``/``nouns`` name the children in errors.
    """

    def __init__(
        self,
        target: Callable,
        specs: Sequence[dict],
        noun: str = "client process",
        nouns: str = "client processes",
    ):
        self.noun, self.nouns = noun, nouns
        ctx = multiprocessing.get_context("spawn")
        self.conns = []
        self.procs = []
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child, spec), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def send_all(self, message) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(message)

    def gather(self, kind: str, timeout: float) -> list:
        """One ``kind`` message from every child (its payload, in child order),
        or raise after ``timeout``."""
        deadline = time.monotonic() + timeout
        replies: dict[int, object] = {}
        while len(replies) < len(self.conns):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.nouns} did not answer {kind!r} in {timeout:.0f} s")
            pending = [c for i, c in enumerate(self.conns) if i not in replies]
            for conn in mp_wait(pending, timeout=left):
                index = self.conns.index(conn)
                try:
                    message = conn.recv()
                except EOFError as exc:
                    raise RuntimeError(f"{self.noun} {index} died") from exc
                if message[0] != kind:
                    raise RuntimeError(
                        f"{self.noun} {index}: expected {kind!r}, got {message[0]!r}"
                    )
                replies[index] = message[1] if len(message) > 1 else None
        return [replies[i] for i in range(len(self.conns))]

    def stop(self, timeout: float = 2.0) -> None:
        """Join each child for up to ``timeout`` s, then kill it."""
        for proc in self.procs:
            proc.join(timeout=timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()


def child_setup() -> None:
    """First thing in a client process: the parent decides when it stops (no
    SIGINT), and it may open as many sockets as the hard limit allows."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile()


def run_loop(main: Callable, *args):
    """``main(*args)`` to completion on uvloop when it is installed, else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main(*args))
    return uvloop.run(main(*args))


# =====================================================================================
# Scratch space: Redis keys, a PostgreSQL database, the servers' environment
# =====================================================================================


def delete_prefix(redis_url: str, prefix: str) -> int:
    """Delete every Redis key that starts with ``prefix`` (SCAN + DEL); how many."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch.clear()
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


def admin_postgres_url() -> str:
    """BENCH_POSTGRES_URL, else DATABASE_URL if it is PostgreSQL, else the local server."""
    url = os.environ.get("BENCH_POSTGRES_URL") or os.environ.get("DATABASE_URL") or ""
    return url if url.startswith(("postgres://", "postgresql://")) else LOCAL_POSTGRES


class BenchDatabase:
    """``CREATE DATABASE bench_<random>`` on the server of ``admin_url``; ``drop``."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.name = f"bench_{secrets.token_hex(4)}"
        parts = urllib.parse.urlsplit(admin_url)
        self.url = urllib.parse.urlunsplit(parts._replace(path=f"/{self.name}"))
        self.created = False

    def _execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create(self) -> None:
        self._execute(f'CREATE DATABASE "{self.name}"')
        self.created = True

    def migrate(self, env: dict) -> float:
        """``manage.py migrate`` on the new database; the seconds it took."""
        started = time.monotonic()
        done = subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env={**env, "DATABASE_URL": self.url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py migrate failed:\n{(done.stdout + done.stderr)[-2000:]}")
        return time.monotonic() - started

    def drop(self) -> bool:
        """Drop it (closing this process's Django connections first); False if never made."""
        if not self.created:
            return False
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.created = False
        return True


def server_env(
    redis_url: str, prefix: str, extra: list[str] | None, database_url: str | None = None
) -> dict:
    """The environment of a server process: this one's, plus Redis (``prefix``),
    the database when given, development settings, WARNING logs, no per-IP
    connection limit, and ``extra`` (``NAME=VALUE`` items, applied last)."""
    env = dict(os.environ)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(
        REDIS_URL=redis_url,
        REDIS_PREFIX=prefix,
        HUB_ENV="development",
        LOG_LEVEL="WARNING",
        WS_MAX_CONNECTIONS_PER_IP="100000",
        DJANGO_SETTINGS_MODULE="hub.settings",
        PYTHONUNBUFFERED="1",
    )
    for item in extra or ():
        name, _, value = item.partition("=")
        env[name] = value
    return env


def setup_django(env: dict) -> None:
    """Django in this process, on the bench database (to create meetings and tokens)."""
    for name in ("DATABASE_URL", "REDIS_URL", "REDIS_PREFIX", "HUB_ENV", "LOG_LEVEL"):
        os.environ[name] = env[name]
    if "SECRET_KEY" in env:
        os.environ["SECRET_KEY"] = env["SECRET_KEY"]
    os.environ["DJANGO_SETTINGS_MODULE"] = "hub.settings"
    import django

    django.setup()


# =====================================================================================
# The invocation: options, signals, report, cleanup
# =====================================================================================


def add_server_options(parser, server_env_help: str, postgres: bool = False) -> None:
    """``--redis-url``, ``--postgres-url`` (with ``postgres``) and ``--server-env``."""
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    )
    if postgres:
        parser.add_argument("--postgres-url", default=admin_postgres_url(), help="an admin URL")
    parser.add_argument(
        "--server-env",
        action="extend",
        nargs="+",
        metavar="NAME=VALUE",
        help=server_env_help,
    )


def stop_on_signals(sigint: bool = True) -> None:
    """SIGTERM raises KeyboardInterrupt (the cleanup runs as on Ctrl-C); with
    ``sigint``, Ctrl-C works also when a script started us in the background
    (SIGINT is then ignored)."""

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def machine_line(nofile: int | None = None) -> str:
    """``machine: nproc=2  python 3.11.7  Linux-...  RLIMIT_NOFILE=...`` for a header."""
    line = f"machine: nproc={os.cpu_count()}  python {platform.python_version()}  "
    line += platform.platform()
    return line if nofile is None else f"{line}  RLIMIT_NOFILE={nofile}"


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


class Invocation:
    """One run of a benchmark script: its start, a fresh Redis key prefix
    ``bench-<random>``, the JSON report's path (``--out`` or
    ``bench/results/<name>-<stamp>.json``) and the server log folder
    ``bench/results/<logs>-<stamp>/``."""

    def __init__(self, args, name: str, logs: str):
        self.args = args
        self.started = datetime.datetime.now().astimezone()
        self.stamp = self.started.strftime("%Y%m%d-%H%M%S")
        self.prefix = f"bench-{secrets.token_hex(4)}"
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        self.log_dir = RESULTS_DIR / f"{logs}-{self.stamp}"
        self.log_dir.mkdir(exist_ok=True)
        self.out: Path = args.out or RESULTS_DIR / f"{name}-{self.stamp}.json"
        self.interrupted = False

    def report(self, machine: dict, **fields) -> dict:
        """The report's head: start, ``machine``, the options; then ``fields``."""
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()}
        return {"started": self.started.isoformat(), "machine": machine, "args": options, **fields}

    @contextlib.contextmanager
    def guard(
        self, report: dict, database: BenchDatabase | None = None, catch: bool = True
    ) -> Iterator[None]:
        """The body of the run. Ctrl-C ends it ("interrupted: stopping"); with
        ``catch`` any other exception too ("FAILED: ...", ``report["error"]``),
        else it goes on after the cleanup. Always: ``database`` dropped, the
        prefix's Redis keys deleted, the report written with both counts."""
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted = True
            print("\ninterrupted: stopping", flush=True)
        except Exception as exc:
            if not catch:
                raise
            report["error"] = f"{type(exc).__name__}: {exc}"
            print(f"FAILED: {exc}", flush=True)
        finally:
            if database is not None:
                try:
                    report["database_dropped"] = database.drop()
                except Exception as exc:
                    print(f"could not drop {database.name}: {exc}", flush=True)
            with contextlib.suppress(Exception):
                report["redis_keys_deleted"] = delete_prefix(self.args.redis_url, self.prefix)
            report["finished"] = datetime.datetime.now().astimezone().isoformat()
            report["interrupted"] = self.interrupted
            self.out.write_text(json.dumps(report, indent=2))

    def print_summary(
        self,
        report: dict,
        header: str,
        table: str,
        legend: str,
        database: BenchDatabase | None = None,
    ) -> None:
        """The end of the output: the header again, the table and its legend;
        then what was cleaned up (with a database; else a blank line) and where
        the report is."""
        print("\n" + header + "\n")
        print(table)
        print(legend)
        if database is None:
            print()
        else:
            print(
                f"database {database.name} dropped: {report.get('database_dropped')}; "
                f"redis keys deleted: {report.get('redis_keys_deleted')}"
            )
        print(f"results: {shown(self.out)}")

    def exit_code(self, report: dict) -> int:
        """130 after Ctrl-C, 1 after an error, else 0."""
        return 130 if self.interrupted else 1 if report.get("error") else 0


@contextlib.contextmanager
def failure_noted(result: dict, label: str) -> Iterator[None]:
    """An exception ends one measured run, not the invocation: it is kept in
    ``result["error"]`` and printed as ``  [<label>] FAILED: ...``."""
    try:
        yield
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  [{label}] FAILED: {exc}", flush=True)


# =====================================================================================
# Report
# =====================================================================================


def side_by_side(
    rows: Sequence[tuple[str, str, str, bool]],
    runs: Sequence[dict | None],
    names: Sequence[str],
    *,
    cell: int,
    ratio: int,
    ratio_format: str,
    value: Callable[[dict, str], object] = dict.get,
) -> list[str]:
    """Two runs side by side: a head line (``names``: A, B, ratio) and one line
    per row ``(label, key, format, ratio?)``; a missing value is "-", the ratio
    B/A is given for numbers when the row asks for it and A is not zero.
    ``value(run, key)`` reads a run (default ``run.get(key)``)."""
    a_name, b_name, ratio_name = names
    lines = [f"  {'':32}{a_name:>{cell}}{b_name:>{cell}}{ratio_name:>{ratio}}"]
    for label, key, fmt, with_ratio in rows:
        values = [None if run is None else value(run, key) for run in runs]
        cells = ["-" if v is None else fmt.format(v) for v in values]
        rate = ""
        if with_ratio and all(isinstance(v, (int, float)) for v in values) and values[0]:
            rate = ratio_format.format(values[1] / values[0])
        lines.append(f"  {label:32}{cells[0]:>{cell}}{cells[1]:>{cell}}{rate:>{ratio}}")
    return lines
