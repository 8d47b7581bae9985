"""Shared fixtures: the real Redis and PostgreSQL that `make test` provides,
and real daphne / broadcast server processes on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def pytest_configure(config):
    # The suite deletes every key under REDIS_PREFIX at the end: never a real hub's.
    if not os.environ.get("REDIS_PREFIX", "").startswith("egmina-test-"):
        pytest.exit(
            "REDIS_PREFIX must start with 'egmina-test-' (the suite deletes its keys). "
            "Run the suite with `make test`, which sets a fresh one.",
            returncode=2,
        )
    missing = [name for name in ("REDIS_URL", "DATABASE_URL") if not os.environ.get(name)]
    if missing:
        pytest.exit(
            f"{', '.join(missing)} not set: the suite runs against real Redis and PostgreSQL. "
            "Run it with `make test` (which finds or starts them), or set both.",
            returncode=2,
        )


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ["REDIS_URL"]


class OwnRedis:
    """A redis-server of one test alone, which the test may stop and start."""

    def __init__(self, workdir: Path):
        import shutil

        self.binary = shutil.which("redis-server")
        assert self.binary, "redis-server is needed (apt-get install redis-server)"
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        self.proc = subprocess.Popen([*argv, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL)
        for _ in range(200):
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path):
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _delete_test_keys(redis_url):
    yield
    import redis

    client = redis.Redis.from_url(redis_url)
    prefix = os.environ["REDIS_PREFIX"]
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix of this test alone."""
    return f"{os.environ['REDIS_PREFIX']}:{secrets.token_hex(4)}"


@pytest.fixture(autouse=True)
def _fresh_bus():
    from hub.bus import reset_bus

    reset_bus()
    yield
    reset_bus()


@pytest.fixture
async def redis_bus(redis_url, key_prefix):
    from hub.bus import RedisBus

    bus = RedisBus(redis_url, prefix=key_prefix, buffer_size=50, seq_ttl=3600)
    yield bus
    await bus.close()


@pytest.fixture
def memory_bus():
    from hub.bus import MemoryBus

    return MemoryBus(buffer_size=50, seq_ttl=3600)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class Processes:
    """Starts hub processes on loopback and stops them after the test."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def _start(self, argv: list[str], port: int, extra_env: dict | None) -> int:
        env = {**self.env, **(extra_env or {})}
        proc = subprocess.Popen(argv, cwd=ROOT, env=env)
        self.procs.append(proc)
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        return port

    def daphne(self, extra_env: dict | None = None, *, port: int | None = None) -> int:
        """Start daphne (on ``port``, e.g. to restart one in place) and wait for it."""
        port = port or free_port()
        argv = [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "hub.asgi:application"]
        return self._start(argv, port, extra_env)

    def broadcast(self, extra_env: dict | None = None) -> int:
        port = free_port()
        argv = [PYTHON, "manage.py", "broadcast_server", "--host", "127.0.0.1", "--port", str(port)]
        return self._start(argv, port, extra_env)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def hub_processes(redis_url, key_prefix):
    """Start daphne and broadcast processes sharing one Redis key prefix."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": key_prefix,
        "HUB_ENV": "development",
        "LOG_LEVEL": "WARNING",
        "WS_HEARTBEAT_INTERVAL": "25",
        # aiortc peers in these processes (the forwarding unit) listen on loopback only
        "MEDIA_ICE_ADDRESSES": "127.0.0.1",
    }
    processes = Processes(env)
    yield processes
    processes.stop()


ORIGIN = "http://127.0.0.1"

# A camera and a microphone that Chromium makes up (a test pattern and a beep),
# allowed without asking; media plays without a click.
FAKE_MEDIA_ARGS = (
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Screen sharing picks the (virtual) screen without asking.
    "--auto-select-desktop-capture-source=Entire screen",
)


def url_of_test_database() -> str:
    """The URL of pytest-django's test database (inside a ``django_db`` test), for
    processes the test starts: with ``transaction=True`` they see its rows."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    assert db["ENGINE"].endswith("postgresql"), db["ENGINE"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


# --- Headless Chromium (Debian's package, driven by Playwright) ---------------

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.asynccontextmanager
async def headless_chromium(extra_args: tuple[str, ...] = ()):
    """Debian's Chromium driven by Playwright. A missing piece fails the test
    (inside the test, so it reports FAILED with the reason, never a skip)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium "
            "(apt-get install -y chromium), or set CHROMIUM_PATH."
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: make install (no browser download).")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra_args]
        )
        try:
            yield browser
        finally:
            await browser.close()
