"""The one door through which apps announce real-time events (STYLE.md §4).

Call :func:`publish_on_commit` from the code that changes state: the event
goes out only after the database transaction commits, so it never announces
state that was rolled back. Each app keeps its calls in its own ``actions``
module.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from hub.bus import get_bus


def publish_now(topic: str, type: str, data: Any = None) -> int:
    """Publish at once from sync code (a view, a command); returns the seq."""
    return get_bus().publish_sync(topic, type, data)


async def apublish(topic: str, type: str, data: Any = None) -> int:
    """Publish at once from async code (a consumer); returns the seq."""
    return await get_bus().publish(topic, type, data)


def publish_on_commit(topic: str, type: str, data: Any = None, *, using: str | None = None):
    """Publish after the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: publish_now(topic, type, data), using=using)
