"""STUN/TURN servers for the browsers of a meeting, with time-limited TURN credentials.

The hub and coturn share one secret (``TURN_SECRET``; coturn runs with
``use-auth-secret`` and ``static-auth-secret``) and never talk to each other.
This is the "TURN REST API" scheme (draft-uberti-behave-turn-rest-00, section 2.2,
as coturn implements it):

- ``username = "<expiry>:<id>"``, where ``expiry`` is the Unix time after which
  coturn refuses the credential (401), and ``id`` names who it was issued to;
- ``credential = base64(HMAC-SHA1(TURN_SECRET, username))``.

coturn recomputes the HMAC from the username it receives, so any change to the
expiry breaks the signature, and a leaked credential stops opening allocations
at its expiry. coturn checks the expiry when a client first authenticates; an
allocation already open keeps being refreshed. A client that needs a new
allocation later (an ICE restart after a network change) uses the credentials
it was given, so they should last as long as a meeting can (TURN_CREDENTIAL_TTL).

The ``id`` is not the hub's principal (``user:42``): coturn's logs, and every
browser extension that reads the RTCPeerConnection's configuration, would see it.
It is a short keyed hash of the principal (HMAC-SHA256 under a key derived from
Django's SECRET_KEY, which coturn does not know): the same for the same person,
so that coturn's per-user quota and its logs can still be matched by the hub's
operators, but not reversible to a user id by anyone who only holds the TURN secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from django.conf import settings

# Domain separation: the key of the opaque id is derived from SECRET_KEY, never
# SECRET_KEY itself, so this hash cannot be confused with any other signature of the hub.
_OPAQUE_ID_SALT = b"egmina.signaling.turn.opaque-id:"
# 16 hex characters (64 bits): no collisions among a municipality's users, and
# short enough for coturn's log lines. Hex holds no ":" (coturn's separator).
_OPAQUE_ID_LENGTH = 16


@dataclass(frozen=True)
class TurnCredentials:
    """One TURN REST API credential pair and the Unix time it stops working."""

    username: str
    credential: str
    expires_at: int


def opaque_id(principal: str) -> str:
    """The stand-in for ``principal`` in TURN usernames (see the module docstring)."""
    key = hashlib.sha256(_OPAQUE_ID_SALT + settings.SECRET_KEY.encode()).digest()
    digest = hmac.new(key, principal.encode(), hashlib.sha256).hexdigest()
    return digest[:_OPAQUE_ID_LENGTH]


def sign_turn_username(secret: str, username: str) -> str:
    """coturn's expected password for ``username``: base64(HMAC-SHA1(secret, username))."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def turn_credentials(
    principal: str, *, ttl: int | None = None, now: float | None = None
) -> TurnCredentials:
    """Credentials for ``principal`` valid for ``ttl`` seconds from ``now``.

    ``ttl`` defaults to TURN_CREDENTIAL_TTL and ``now`` to the current time (tests
    pass both). Raises ``ValueError`` when TURN_SECRET is not set: there is then
    nothing coturn would accept.
    """
    secret = settings.TURN_SECRET
    if not secret:
        raise ValueError("TURN_SECRET is not set: no TURN credentials can be issued")
    if ttl is None:
        ttl = settings.TURN_CREDENTIAL_TTL
    if now is None:
        now = time.time()
    expires_at = int(now) + ttl
    username = f"{expires_at}:{opaque_id(principal)}"
    return TurnCredentials(
        username=username,
        credential=sign_turn_username(secret, username),
        expires_at=expires_at,
    )


def ice_servers(principal: str, *, now: float | None = None) -> list[dict]:
    """The ``iceServers`` of an RTCConfiguration for ``principal``'s browser.

    STUN_URLS come without credentials. TURN_URLS come with fresh credentials,
    and only when TURN_SECRET is set (without it coturn would refuse them). The
    list may be empty: the browser then uses host candidates only.
    """
    servers: list[dict] = []
    if settings.STUN_URLS:
        servers.append({"urls": list(settings.STUN_URLS)})
    if settings.TURN_URLS and settings.TURN_SECRET:
        credentials = turn_credentials(principal, now=now)
        servers.append(
            {
                "urls": list(settings.TURN_URLS),
                "username": credentials.username,
                "credential": credentials.credential,
            }
        )
    return servers
