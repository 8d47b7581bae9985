"""A loopback Web Push service, for the tests and the benchmark.

It speaks what a push service does to an application server (RFC 8030 §5):
a POST of an encrypted message to a subscription's endpoint, answered
``201 Created`` with a ``Location``. Before accepting it, it checks what real
push services check:

- the VAPID header (RFC 8292): ``Authorization: vapid t=<JWT>, k=<key>``, the
  JWT signed with ES256 by the key in ``k``, ``aud`` the origin of this
  server, ``exp`` in the future and no more than 24 hours ahead, a ``sub``;
- the message: decrypted (RFC 8291, ``aes128gcm``, ``http_ece``) with the
  subscription's private key and auth secret, as the browser would;

and records what it accepted (:class:`Received`: the decrypted text and the
``TTL``, ``Urgency`` and ``Topic`` headers). A subscription
(:meth:`PushService.subscribe`) is a fresh P-256 key pair and a 16-byte auth
secret, as a browser makes one; :attr:`answer` makes an endpoint answer an
error status (404, 410, 413, 429, 500…) instead.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

MAX_BODY = 4096  # RFC 8030 §7.2


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscription:
    """One browser's subscription: what it gives the page (``as_json``) and
    the private key it keeps."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @property
    def p256dh(self) -> str:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(point)

    def as_json(self) -> dict:
        """What ``PushSubscription.toJSON()`` gives in a browser."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": b64url(self.auth)},
        }


@dataclass
class Received:
    endpoint: str
    data: dict
    ttl: str | None
    urgency: str | None
    topic: str | None
    claims: dict
    size: int


class VapidError(ValueError):
    pass


def verify_vapid(header: str | None, *, origin: str, now: float) -> dict:
    """The JWT's claims, if the header is valid VAPID for this origin."""
    if not header or not header.lower().startswith("vapid "):
        raise VapidError("no vapid authorization")
    params = {}
    for part in header[6:].split(","):
        name, _eq, value = part.strip().partition("=")
        params[name] = value
    token, key = params.get("t"), params.get("k")
    if not token or not key:
        raise VapidError("t or k missing")
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
    signed, _dot, signature = token.rpartition(".")
    head, _dot, body = signed.partition(".")
    if json.loads(unb64url(head)).get("alg") != "ES256":
        raise VapidError("not ES256")
    raw = unb64url(signature)
    if len(raw) != 64:
        raise VapidError("signature is not 64 bytes (JOSE r||s)")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        public.verify(der, signed.encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VapidError("bad signature") from None
    claims = json.loads(unb64url(body))
    if claims.get("aud") != origin:
        raise VapidError(f"aud {claims.get('aud')!r} is not {origin!r}")
    exp = claims.get("exp")
    if not isinstance(exp, int) or not now < exp <= now + 24 * 3600:
        raise VapidError(f"exp {exp!r} not within 24 hours")
    if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
        raise VapidError("no sub")
    claims["k"] = key
    return claims


@dataclass
class _State:
    origin: str = ""
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    answer: dict[str, tuple[int, dict]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "loopback-push"
    # Answer without waiting for the client's delayed ACK, as real servers do.
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, headers: dict | None = None, body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        state: _State = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        endpoint = state.origin + self.path
        with state.lock:
            state.requests += 1
            subscription = state.subscriptions.get(endpoint)
            scripted = state.answer.get(endpoint)
        if scripted is not None:
            status, headers = scripted
            self.reply(status, headers, b'{"reason": "scripted"}')
            return
        if subscription is None:
            self.reply(404, body=b"no such subscription")
            return

        def refuse(status: int, why: str) -> None:
            with state.lock:
                state.refused.append((endpoint, why))
            self.reply(status, body=why.encode())

        if len(body) > MAX_BODY:
            refuse(413, "payload too large")
            return
        try:
            claims = verify_vapid(
                self.headers.get("Authorization"), origin=state.origin, now=time.time()
            )
        except (VapidError, ValueError) as exc:
            refuse(401, f"vapid: {exc}")
            return
        if self.headers.get("Content-Encoding") != "aes128gcm":
            refuse(400, "content-encoding must be aes128gcm")
            return
        try:
            text = http_ece.decrypt(
                body,
                private_key=subscription.private_key,
                auth_secret=subscription.auth,
                version="aes128gcm",
            )
            data = json.loads(text)
        except Exception as exc:
            refuse(400, f"cannot decrypt: {type(exc).__name__}: {exc}")
            return
        with state.lock:
            state.received.append(
                Received(
                    endpoint=endpoint,
                    data=data,
                    ttl=self.headers.get("TTL"),
                    urgency=self.headers.get("Urgency"),
                    topic=self.headers.get("Topic"),
                    claims=claims,
                    size=len(body),
                )
            )
            number = len(state.received)
        self.reply(201, {"Location": f"{state.origin}/message/{number}"})


class PushService:
    """The loopback push service on 127.0.0.1 (a thread), as a context manager."""

    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.state = _State()
        self.server.state = self.state
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.origin = self.state.origin = f"http://{self.host}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> PushService:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def subscribe(self) -> Subscription:
        """A new subscription, as a browser makes one."""
        subscription = Subscription(
            endpoint=f"{self.origin}/push/{secrets.token_urlsafe(16)}",
            private_key=ec.generate_private_key(ec.SECP256R1()),
            auth=os.urandom(16),
        )
        with self.state.lock:
            self.state.subscriptions[subscription.endpoint] = subscription
        return subscription

    def answer(self, endpoint: str, status: int, headers: dict | None = None) -> None:
        """From now on, answer ``status`` to every message for ``endpoint``."""
        with self.state.lock:
            self.state.answer[endpoint] = (status, headers or {})

    @property
    def received(self) -> list[Received]:
        with self.state.lock:
            return list(self.state.received)

    @property
    def refused(self) -> list[tuple[str, str]]:
        with self.state.lock:
            return list(self.state.refused)

    @property
    def requests(self) -> int:
        with self.state.lock:
            return self.state.requests
