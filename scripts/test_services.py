"""Find or start the Redis and PostgreSQL the test suite runs against, then run it.

Order for each service: the URL in the environment (REDIS_URL, DATABASE_URL);
else the local default (127.0.0.1:6379, postgres@127.0.0.1:5432); else a
throwaway server started on a free port from the binaries on this machine;
else a clear error that says what to install. It never skips silently.

Usage: python scripts/test_services.py -- <command...>
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_ok(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping())
    except Exception:
        return False


def postgres_ok(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


def wait_for(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"test services: {what} did not come up within {timeout:.0f} s")


def start_redis(workdir: Path, procs: list) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "test services: no Redis at REDIS_URL or 127.0.0.1:6379, and no redis-server "
            "binary to start one. Install it (Debian: apt-get install redis-server) "
            "or set REDIS_URL."
        )
    port = free_port()
    procs.append(
        subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
    )
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis_ok(url), "the throwaway redis-server")
    return url


def start_postgres(workdir: Path, procs: list) -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or (
        [shutil.which("initdb")] if shutil.which("initdb") else []
    )
    if not found:
        raise SystemExit(
            "test services: no PostgreSQL at DATABASE_URL or 127.0.0.1:5432, and no initdb "
            "to start one. Install it (Debian: apt-get install postgresql) or set DATABASE_URL."
        )
    bindir = Path(found[-1]).parent
    datadir = workdir / "pgdata"
    port = free_port()
    # PostgreSQL refuses to run as root: run it as the 'postgres' user if we are root.
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(workdir, "postgres")
    subprocess.run(
        [
            *run_as,
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    procs.append(
        subprocess.Popen(
            [
                *run_as,
                str(bindir / "postgres"),
                "-D",
                str(datadir),
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-k",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    url = f"postgres://postgres@127.0.0.1:{port}/postgres"
    wait_for(lambda: postgres_ok(url), "the throwaway PostgreSQL")
    return url


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit(__doc__)
    command = argv[argv.index("--") + 1 :]
    env = dict(os.environ)
    procs: list[subprocess.Popen] = []
    workdir = Path(tempfile.mkdtemp(prefix="egmina-test-services-"))
    try:
        redis_url = env.get("REDIS_URL") or LOCAL_REDIS
        if not redis_ok(redis_url):
            if env.get("REDIS_URL"):
                raise SystemExit(f"test services: REDIS_URL={redis_url} is not reachable")
            redis_url = start_redis(workdir, procs)
        db_url = env.get("DATABASE_URL") or LOCAL_POSTGRES
        if not db_url.startswith(("postgres://", "postgresql://")):
            raise SystemExit("test services: DATABASE_URL must point to PostgreSQL for the tests")
        if not postgres_ok(db_url):
            if env.get("DATABASE_URL"):
                raise SystemExit(f"test services: DATABASE_URL={db_url} is not reachable")
            db_url = start_postgres(workdir, procs)
        env["REDIS_URL"] = redis_url
        env["DATABASE_URL"] = db_url
        # Every key of this run under its own prefix; the suite deletes them at the end.
        # Always a fresh one: an exported REDIS_PREFIX may be a real hub's.
        env["REDIS_PREFIX"] = f"egmina-test-{secrets.token_hex(4)}"
        # pytest-django drops the test database at the end: connections kept
        # open by the test process's database threads would block that.
        env.setdefault("DATABASE_CONN_MAX_AGE", "0")
        print(
            f"test services: Redis {redis_url}, PostgreSQL {db_url}, "
            f"key prefix {env['REDIS_PREFIX']}",
            flush=True,
        )
        return subprocess.call(command, env=env)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
