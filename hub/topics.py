"""Who may subscribe to which topic.

Topics under a public prefix are open to anyone (an alert, a council session
on air). Any other topic needs a *grant*: a signed, expiring list of topics
(or ``prefix*`` patterns) that a Django view hands to a client it has
authenticated. Grants are checked with the SECRET_KEY alone, so the broadcast
processes need no database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.core import signing

_GRANT_SALT = "hub.topics.grant"
_public_prefixes: set[str] = {"public."}


def register_public_prefix(prefix: str) -> None:
    """Apps call this in ``AppConfig.ready`` for their public topics."""
    _public_prefixes.add(prefix)


def is_public(topic: str) -> bool:
    return any(topic.startswith(prefix) for prefix in _public_prefixes)


def issue_grant(topics: list[str], *, max_age: int = 3600) -> str:
    """A signed grant for ``topics``; ``"meet.ab12.*"`` covers every topic under
    ``meet.ab12.``. A grant is a bearer token: whoever holds it may subscribe
    until it expires, so hand it only to the client you checked, and keep
    ``max_age`` short. Live subscriptions end when it expires (on the next
    heartbeat)."""
    for pattern in topics:
        if pattern.endswith("*") and not pattern[:-1].endswith((".", ":")):
            # "meet.ab12*" would also cover "meet.ab123": end a prefix at a separator.
            raise ValueError(f"a topic prefix must end with '.*' or ':*', not {pattern!r}")
    payload = {"t": list(topics), "e": int(time.time()) + max_age}
    return signing.dumps(payload, salt=_GRANT_SALT, compress=True)


@dataclass(frozen=True)
class Grant:
    patterns: tuple[str, ...] = ()
    expires: int = 0  # Unix time


NO_GRANT = Grant()


def read_grant(grant: str | None) -> Grant:
    """The topic patterns of a valid grant; an empty grant if it is missing,
    forged, altered or expired."""
    if not grant:
        return NO_GRANT
    try:
        payload = signing.loads(grant, salt=_GRANT_SALT)
    except (signing.BadSignature, ValueError):
        return NO_GRANT
    if not isinstance(payload, dict) or not isinstance(payload.get("e"), int):
        return NO_GRANT
    if payload["e"] < time.time():
        return NO_GRANT
    topics = payload.get("t")
    if not isinstance(topics, list):
        return NO_GRANT
    return Grant(tuple(t for t in topics if isinstance(t, str)), payload["e"])


def pattern_allows(pattern: str, topic: str) -> bool:
    if pattern.endswith("*"):
        return topic.startswith(pattern[:-1])
    return topic == pattern
