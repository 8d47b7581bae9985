"""Settings from the environment: typed, loud on bad values, safe in production."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub.env import ConfigurationError, env_bool, env_float, env_int, env_list

ROOT = Path(__file__).resolve().parent.parent


def test_typed_values(monkeypatch):
    monkeypatch.setenv("X_BOOL", "yes")
    monkeypatch.setenv("X_INT", "42")
    monkeypatch.setenv("X_FLOAT", "2.5")
    monkeypatch.setenv("X_LIST", "a, b,,c")
    assert env_bool("X_BOOL", False) is True
    assert env_int("X_INT", 0) == 42
    assert env_float("X_FLOAT", 0) == 2.5
    assert env_list("X_LIST", []) == ["a", "b", "c"]
    assert env_int("X_UNSET", 7) == 7


@pytest.mark.parametrize(
    ("call", "value", "message"),
    [
        (lambda: env_bool("X", False), "maybe", "not a boolean"),
        (lambda: env_int("X", 0), "ten", "not an integer"),
        (lambda: env_int("X", 0, minimum=1), "0", "below the minimum"),
        (lambda: env_float("X", 0.0), "fast", "not a number"),
    ],
)
def test_bad_values_fail_loudly_with_the_name(monkeypatch, call, value, message):
    monkeypatch.setenv("X", value)
    with pytest.raises(ConfigurationError, match=message) as caught:
        call()
    assert "X" in str(caught.value)


def run_manage(*args, env):
    # What the outer environment may hold for the suite (services, TURN) is hidden.
    hidden = {"DATABASE_URL", "REDIS_URL", "STUN_URLS", "TURN_URLS", "TURN_SECRET"}
    hidden.add("TURN_CREDENTIAL_TTL")
    clean = {k: v for k, v in os.environ.items() if k not in hidden}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION = {
    "HUB_ENV": "production",
    "SECRET_KEY": "a-long-random-production-secret-" + "x" * 40,
    "ALLOWED_HOSTS": "e-uslugi.example.gov.pl",
    "DATABASE_URL": "postgres://hub@127.0.0.1:5432/hub",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def test_check_deploy_is_clean_with_production_settings():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ALLOWED_HOSTS"])
def test_production_refuses_to_start_without_secrets(missing):
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    env[missing] = ""
    result = run_manage("check", env=env)
    assert result.returncode != 0
    assert f"{missing} must be set" in result.stderr


def test_embedded_default_needs_no_services():
    code = (
        "from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'],"
        " s.MEDIA_MODE, bool(s.FFMPEG_BINARY))"
    )
    result = run_manage("shell", "-v", "0", "-c", code, env={"HUB_ENV": "development"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.sqlite3",
        "channels.layers.InMemoryChannelLayer",
        "embedded",
        "True",
    ]


def test_ffmpeg_defaults_to_a_working_binary():
    from django.conf import settings

    result = subprocess.run(
        [settings.FFMPEG_BINARY, "-hide_banner", "-version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    assert "ffmpeg version" in result.stdout


def test_bad_hub_env_is_refused():
    result = run_manage("check", env={"HUB_ENV": "staging"})
    assert result.returncode != 0
    assert "HUB_ENV='staging'" in result.stderr


def test_production_logs_are_json_lines():
    code = "import logging; logging.getLogger('hub.test').warning('zażółć %s', 'gęślą')"
    result = run_manage("shell", "-v", "0", "-c", code, env=PRODUCTION)
    assert result.returncode == 0, result.stderr
    import json

    record = json.loads(result.stderr.strip().splitlines()[-1])
    assert record["level"] == "WARNING"
    assert record["logger"] == "hub.test"
    assert record["message"] == "zażółć gęślą"
    assert "time" in record


def test_a_server_keeps_its_database_connection_sqlite_does_not():
    """PostgreSQL from DATABASE_URL: kept 60 s (a new connection per call cost
    10x the database's CPU in bench/meet_signaling.py); the SQLite default: 0."""
    code = "from django.conf import settings as s; print(s.DATABASES['default']['CONN_MAX_AGE'])"
    base = {"HUB_ENV": "development", "DATABASE_CONN_MAX_AGE": ""}
    postgres = run_manage(
        "shell",
        "-v",
        "0",
        "-c",
        code,
        env={**base, "DATABASE_URL": "postgres://hub@127.0.0.1:5432/hub"},
    )
    sqlite = run_manage("shell", "-v", "0", "-c", code, env=base)
    assert (postgres.stdout.strip(), sqlite.stdout.strip()) == ("60", "0"), (
        postgres.stderr,
        sqlite.stderr,
    )


def test_an_unknown_sms_provider_is_refused_with_its_name():
    result = run_manage("check", env={"HUB_ENV": "development", "ALERTS_SMS_PROVIDER": "smsx"})
    assert result.returncode != 0
    assert "ALERTS_SMS_PROVIDER" in result.stderr
