"""Who is asking, on a WebSocket: a signed-in user (session cookie, through
Channels' AuthMiddlewareStack) or a guest holding a signed invite token.

A guest token is what an invite link carries (``?guest=…``): it names the
guest and the one resource (e.g. ``meet:AB12CD``) it opens, and expires. It is
signed with SECRET_KEY, so it cannot be forged or widened.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs

from django.conf import settings
from django.core import signing

_GUEST_SALT = "hub.auth.guest"


@dataclass(frozen=True)
class Guest:
    guest_id: str
    name: str
    resource: str


def issue_guest_token(name: str, resource: str, *, guest_id: str | None = None) -> str:
    name = name.strip()[:80]
    if not name:
        raise ValueError("a guest needs a display name")
    payload = {"g": guest_id or secrets.token_urlsafe(9), "n": name, "r": resource}
    return signing.dumps(payload, salt=_GUEST_SALT, compress=True)


def read_guest_token(token: str, *, max_age: int | None = None) -> Guest | None:
    """The guest in a valid token, or None (forged, altered or expired)."""
    try:
        payload = signing.loads(
            token, salt=_GUEST_SALT, max_age=max_age or settings.GUEST_TOKEN_MAX_AGE
        )
    except signing.BadSignature:
        return None
    if not isinstance(payload, dict):
        return None
    try:
        return Guest(guest_id=str(payload["g"]), name=str(payload["n"]), resource=str(payload["r"]))
    except KeyError:
        return None


class GuestTokenMiddleware:
    """Puts ``scope["guest"]`` (a :class:`Guest` or None) from ``?guest=<token>``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        guest = None
        query = parse_qs(scope.get("query_string", b"").decode("latin1"))
        tokens = query.get("guest")
        if tokens and len(tokens[0]) <= 2048:
            guest = read_guest_token(tokens[0])
        return await self.app({**scope, "guest": guest}, receive, send)


def principal_of(scope) -> str:
    """A stable name for who holds this connection (binds resume tokens)."""
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        return f"user:{user.pk}"
    guest = scope.get("guest")
    if guest is not None:
        return f"guest:{guest.guest_id}"
    return "anonymous"


def address_limit_key(address: str) -> str:
    """The key a client address is counted under for the per-IP limit. An IPv6
    client usually holds a whole /64, so it is counted per /64; else a phone
    could take every slot by rotating addresses."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"ip:{address[:64]}"
    if ip.version == 4:
        return f"ip:{ip}"
    if ip.ipv4_mapped is not None:
        return f"ip:{ip.ipv4_mapped}"
    return f"ip:{ipaddress.ip_network(f'{ip}/64', strict=False)}"


def client_ip(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def language_of(headers: dict[bytes, bytes] | list[tuple[bytes, bytes]]) -> str:
    """The language for a connection's human texts: the language switch's
    cookie, else Polish (hub.middleware: Polish first, as on the pages)."""
    from http.cookies import CookieError, SimpleCookie

    from hub.middleware import chosen_language

    pairs = headers.items() if isinstance(headers, dict) else headers
    for name, value in pairs:
        name = name.decode("latin1") if isinstance(name, bytes) else name
        if name.lower() != "cookie":
            continue
        value = value.decode("latin1") if isinstance(value, bytes) else value
        try:
            morsel = SimpleCookie(value).get(settings.LANGUAGE_COOKIE_NAME)
        except CookieError:
            return settings.LANGUAGE_CODE
        return chosen_language(morsel.value if morsel is not None else None)
    return settings.LANGUAGE_CODE
