"""scripts/test_services.py starts throwaway servers when none is reachable."""

import importlib.util
import shutil
import tempfile
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "test_services_script", Path(__file__).resolve().parent.parent / "scripts/test_services.py"
)
services = importlib.util.module_from_spec(spec)
spec.loader.exec_module(services)

pytestmark = pytest.mark.integration


def stop(procs):
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


def test_throwaway_redis(tmp_path):
    procs = []
    try:
        url = services.start_redis(tmp_path, procs)
        assert services.redis_ok(url)
    finally:
        stop(procs)
    assert not services.redis_ok(url)


def test_throwaway_postgres():
    # Not pytest's tmp_path: its parent is private to root, and PostgreSQL runs
    # as 'postgres' when the suite runs as root.
    workdir = Path(tempfile.mkdtemp(prefix="egmina-pg-"))
    procs = []
    try:
        url = services.start_postgres(workdir, procs)
        assert services.postgres_ok(url)
    finally:
        stop(procs)
        shutil.rmtree(workdir, ignore_errors=True)
    assert not services.postgres_ok(url)


def test_unreachable_urls_are_reported():
    assert not services.redis_ok(f"redis://127.0.0.1:{services.free_port()}/0")
    assert not services.postgres_ok(f"postgres://postgres@127.0.0.1:{services.free_port()}/x")
