"""Typed reading of settings from the environment.

Bad values fail loudly at start-up with the variable's name, never later at
request time (STYLE.md §9).
"""

from __future__ import annotations

import os


class ConfigurationError(RuntimeError):
    """A setting in the environment is missing or malformed."""


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_required(name: str) -> str:
    value = env_str(name)
    if value is None:
        raise ConfigurationError(f"{name} must be set in production (HUB_ENV=production)")
    return value


def env_bool(name: str, default: bool) -> bool:
    value = env_str(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name}={value!r} is not a boolean (use 1/0, true/false)")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    value = env_str(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not an integer") from None
    if number < minimum:
        raise ConfigurationError(f"{name}={number} is below the minimum {minimum}")
    return number


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    value = env_str(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a number") from None
    if number < minimum:
        raise ConfigurationError(f"{name}={number} is below the minimum {minimum}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = env_str(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]
