"""The Web Push channel of the alerts worker (RFC 8030 delivery, RFC 8291
message encryption, RFC 8292 VAPID), with pywebpush and py-vapid.

Where the server may post. A browser subscription names an endpoint URL on
its push service, and whoever subscribes chooses that URL: without a check
the worker could be aimed at internal addresses (169.254.169.254, 10.0.0.0/8,
the database…). :func:`endpoint_allowed` admits only the push services in
``settings.ALERTS["PUSH_ALLOWED_HOSTS"]``; the subscribe view checks it, and
:meth:`WebPushChannel.send` checks it again before every request (the list
may have changed since). Redirects are never followed.

Entries of ``PUSH_ALLOWED_HOSTS``:

- ``fcm.googleapis.com``: that host exactly, https, the default port (443);
- ``.push.apple.com``: any subdomain of push.apple.com (not the bare domain),
  https, the default port;
- ``host:port``: that host on that port only (still https). For loopback
  entries (``127.0.0.1:8443``, ``localhost:8443``, ``[::1]:8443``) plain
  http is allowed too: the tests' push service, never a real one.

An IP literal is allowed only when listed exactly (a ``.suffix`` entry never
matches one); user info (``user@host``) and fragments are refused.

The message. A small JSON object (:func:`payload`) that the service worker
(``alerts/static/alerts/js/sw.js``) shows: ``title`` (the headline), ``body``
(what to do, else the description; shortened so the encrypted message stays
within the 4,096 bytes every push service must accept, RFC 8030 §7.2),
``url`` (the alert's public page), ``tag`` and ``severity``. The tag and the
``Topic`` header are those of the first alert of an Update chain, so an
Update replaces the notification of the alert it updates (on the phone) and a
message of it still waiting at the push service (RFC 8030 §5.4).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from py_vapid import Vapid, VapidException
from pywebpush import WebPusher

from alerts import rules
from alerts.channels import PerThread, Result
from alerts.models import Alert, Delivery, Subscriber
from alerts.outbox import ADDRESS_FIELDS

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# RFC 8030 §7.2: push services must accept 4,096 bytes of message body. With
# aes128gcm (RFC 8188/8291) the body is an 86-byte header (salt, record size,
# the 65-byte key id), the text, a 1-byte padding delimiter and a 16-byte tag:
# at most 3,993 bytes of text. A margin below that.
MAX_PLAINTEXT = 3800
ELLIPSIS = "…"

# RFC 8292 §2: the JWT's "exp" must be no more than 24 hours ahead. A token
# serves every message to one push service for this long, and a new one is
# signed when less than REFRESH_BEFORE is left.
TOKEN_LIFETIME = 12 * 3600
REFRESH_BEFORE = 3600

# RFC 8030 §5.4: a Topic is at most 32 characters of the base64url alphabet.
TOPIC_LENGTH = 32


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --- Where the server may post ------------------------------------------------


def _split_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``.suffix``, ``host:port``, ``[v6]:port`` → (host, port)."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        host, _bracket, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, int(port)
    return entry, None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def endpoint_allowed(url: str, allowed: list[str] | None = None) -> bool:
    """Whether the server may post to this push endpoint (see the module's
    docstring for the rules). ``allowed`` defaults to the setting."""
    if allowed is None:
        allowed = settings.ALERTS["PUSH_ALLOWED_HOSTS"]
    if not isinstance(url, str) or not url or len(url) > 1000 or not url.isascii():
        return False
    if any(ord(char) <= 32 or char in "\\\x7f" for char in url):
        return False  # spaces, control characters, backslashes: parsers disagree on them
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host or parts.fragment:
        return False
    if "@" in parts.netloc or host.endswith("."):
        return False
    default_port = 443 if parts.scheme == "https" else 80
    explicit_port = port is not None and port != default_port
    for entry in allowed:
        try:
            entry_host, entry_port = _split_entry(entry)
        except ValueError:
            continue  # a malformed entry allows nothing
        if not entry_host:
            continue
        if entry_host.startswith("."):
            if _is_ip(host) or not host.endswith(entry_host):
                continue
        elif host != entry_host:
            continue
        if entry_port is None:
            if parts.scheme == "https" and not explicit_port:
                return True
        elif port == entry_port:
            if parts.scheme == "https" or entry_host in LOOPBACK_HOSTS:
                return True
    return False


def origin_of(url: str) -> str:
    """RFC 8292 §2: the JWT audience is the endpoint's origin."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


# --- Keys -----------------------------------------------------------------------


def load_vapid(private_key: str) -> Vapid:
    """The VAPID key pair from the setting: a PEM (PKCS#8 or SEC 1, as
    ``vapid --gen`` writes; ``\\n`` escapes accepted, for one-line environment
    variables), or base64url of the raw 32-byte private number."""
    text = private_key.strip().replace("\\n", "\n")
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_private_key(text.encode(), password=None)
            vapid = Vapid(key)
        else:
            vapid = Vapid.from_string(text)
    except (ValueError, TypeError, VapidException) as exc:
        raise ImproperlyConfigured(
            "ALERTS_VAPID_PRIVATE_KEY is not a usable key: give a PEM private key "
            f"or base64url of the raw 32 bytes ({type(exc).__name__})"
        ) from exc
    if not isinstance(vapid.private_key, ec.EllipticCurvePrivateKey) or not isinstance(
        vapid.private_key.curve, ec.SECP256R1
    ):
        raise ImproperlyConfigured("ALERTS_VAPID_PRIVATE_KEY must be a P-256 (prime256v1) key")
    return vapid


def public_key_of(vapid: Vapid) -> str:
    """The application server key a browser subscribes with: base64url of
    the uncompressed P-256 point (65 bytes)."""
    raw = vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return _b64url(raw)


def vapid_public_key() -> str | None:
    """The configured server's public key for ``PushManager.subscribe``, or
    None when Web Push is off (no private key set)."""
    private = settings.ALERTS["VAPID_PRIVATE_KEY"]
    if not private:
        return None
    return _public_key_cached(private)


_public_keys: dict[str, str] = {}


def _public_key_cached(private: str) -> str:
    if private not in _public_keys:
        _public_keys.clear()  # one key at a time; settings rarely change
        _public_keys[private] = public_key_of(load_vapid(private))
    return _public_keys[private]


# --- The message ------------------------------------------------------------------


def _shorten(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a word boundary when one is near."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 1)]
    space = cut.rfind(" ")
    if space > limit * 0.6:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + ELLIPSIS


def payload(*, title: str, body: str, url: str, tag: str, severity: str) -> bytes:
    """The JSON the service worker shows, in UTF-8, shortened (the body,
    then the title) to at most :data:`MAX_PLAINTEXT` bytes."""

    def encode(title: str, body: str) -> bytes:
        message = {"title": title, "body": body, "url": url, "tag": tag, "severity": severity}
        return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()

    data = encode(title, body)
    if len(data) <= MAX_PLAINTEXT:
        return data
    title = _shorten(title, 200)
    # Bisect on the number of characters kept: a character is 1–4 bytes in
    # UTF-8 (and more when JSON escapes it).
    low, high = 0, len(body)
    while low < high:
        middle = (low + high + 1) // 2
        if len(encode(title, _shorten(body, middle))) <= MAX_PLAINTEXT:
            low = middle
        else:
            high = middle - 1
    data = encode(title, _shorten(body, low))
    if len(data) > MAX_PLAINTEXT:
        raise ValueError("the push message does not fit even without its body")
    return data


def topic_of(identifier: str) -> str:
    """A Topic header (RFC 8030 §5.4) for an alert chain: the identifier
    itself when it fits the 32-character base64url alphabet, else a hash."""
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    if 0 < len(identifier) <= TOPIC_LENGTH and set(identifier) <= allowed:
        return identifier
    return _b64url(hashlib.sha256(identifier.encode()).digest())[:TOPIC_LENGTH]


def thread_root(alert: Alert) -> str:
    """The identifier of the first alert of an Update/Cancel chain."""
    seen = {alert.pk}
    current = alert
    while current.references_id and current.references_id not in seen:
        seen.add(current.references_id)
        current = Alert.objects.only("identifier", "references").get(pk=current.references_id)
    return current.identifier


@dataclass(frozen=True)
class Prepared:
    """What every delivery of one alert shares."""

    data: bytes
    topic: str
    urgency: str
    alert: rules.Alert


# --- The channel -------------------------------------------------------------------


def _new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = "eGmina-Hub-alerts"
    return session


class WebPushChannel:
    """Posts each delivery to its subscriber's push service.

    Safe to share between the worker's sending threads: each thread has its
    own ``requests.Session`` (a keep-alive pool per push service); the VAPID
    tokens (one per push service origin, signed once per
    :data:`TOKEN_LIFETIME`) and the per-alert messages are cached under a lock.
    """

    concurrent = True

    def __init__(
        self,
        *,
        vapid_private_key: str,
        subject: str,
        public_base_url: str,
        timeout: float = 10.0,
        clock=time.time,
    ):
        self.vapid = load_vapid(vapid_private_key)
        self.subject = subject
        self.public_base_url = public_base_url.rstrip("/")
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}  # audience → (header, exp)
        self._prepared: dict[int, Prepared] = {}  # alert pk → message
        self._sessions = PerThread(_new_session, closer=lambda session: session.close())
        # A subject the push services would refuse fails now, not at the
        # first alert (RFC 8292 §2.1: a mailto: or https: URI).
        self._sign("https://push.invalid")

    @classmethod
    def from_settings(cls) -> WebPushChannel | None:
        """The channel as configured, or None when Web Push is off."""
        config = settings.ALERTS
        if not config["VAPID_PRIVATE_KEY"]:
            return None
        return cls(
            vapid_private_key=config["VAPID_PRIVATE_KEY"],
            subject=config["VAPID_SUBJECT"],
            public_base_url=settings.PUBLIC_BASE_URL,
            timeout=config["PUSH_TIMEOUT"],
        )

    @property
    def public_key(self) -> str:
        return public_key_of(self.vapid)

    # VAPID (RFC 8292)

    def _sign(self, audience: str) -> tuple[str, float]:
        exp = int(self.clock()) + TOKEN_LIFETIME
        try:
            header = self.vapid.sign({"aud": audience, "sub": self.subject, "exp": exp})
        except VapidException as exc:
            raise ImproperlyConfigured(
                f"ALERTS_VAPID_SUBJECT={self.subject!r}: use a mailto: or https: URI ({exc})"
            ) from exc
        return header["Authorization"], exp

    def authorization(self, endpoint: str) -> str:
        """The ``Authorization: vapid t=…, k=…`` header for this endpoint's
        push service, signed again only when the cached one nears expiry."""
        audience = origin_of(endpoint)
        with self._lock:
            cached = self._tokens.get(audience)
            if cached is None or cached[1] - self.clock() < REFRESH_BEFORE:
                cached = self._tokens[audience] = self._sign(audience)
            return cached[0]

    # The message

    def prepare(self, alert: Alert) -> Prepared:
        with self._lock:
            found = self._prepared.get(alert.pk)
        if found is not None:
            return found
        published = alert.to_rules()
        root = thread_root(alert)
        url = self.public_base_url + reverse("alert_detail", args=[alert.identifier])
        prepared = Prepared(
            data=payload(
                title=alert.headline,
                body=alert.instruction or alert.description,
                url=url,
                tag=root,
                severity=alert.severity,
            ),
            topic=topic_of(root),
            urgency=rules.PUSH_URGENCY[published.severity],
            alert=published,
        )
        with self._lock:
            if len(self._prepared) > 100:
                self._prepared.clear()
            self._prepared[alert.pk] = prepared
        return prepared

    # HTTP

    def _session(self) -> requests.Session:
        return self._sessions.get()

    def close(self) -> None:
        self._sessions.close_all()

    def send(self, delivery: Delivery) -> Result:
        subscriber = delivery.subscriber
        endpoint = subscriber.push_endpoint
        if not endpoint_allowed(endpoint):
            # Never posted: the address is not a push service we allow.
            return Result(False, error="push endpoint not allowed", permanent=True)
        prepared = self.prepare(delivery.alert)
        try:
            encrypted = WebPusher(
                {
                    "endpoint": endpoint,
                    "keys": {"p256dh": subscriber.push_p256dh, "auth": subscriber.push_auth},
                }
            ).encode(prepared.data, "aes128gcm")["body"]
        except Exception as exc:  # keys that no longer decode: a broken subscription
            return Result(False, error=f"push keys unusable: {type(exc).__name__}", permanent=True)
        headers = {
            "Authorization": self.authorization(endpoint),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(rules.push_ttl(prepared.alert, now=self.clock())),
            "Urgency": prepared.urgency,
            "Topic": prepared.topic,
        }
        try:
            response = self._session().post(
                endpoint,
                data=encrypted,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,  # a redirect could lead anywhere
            )
        except requests.RequestException as exc:
            return Result(False, error=f"{type(exc).__name__}: {exc}"[:300])
        return self._result(response, endpoint)

    def _result(self, response: requests.Response, endpoint: str) -> Result:
        status = response.status_code
        if 200 <= status < 300:
            return Result(True, provider_id=response.headers.get("Location", ""))
        error = f"push service answered {status}"
        detail = response.text[:150].strip()
        if detail:
            error += f": {detail}"
        if status in (404, 410):
            # RFC 8030 §7.3: the subscription has expired or was removed;
            # the worker forgets it when it records this result.
            return Result(False, error=error, permanent=True, forget_address=True)
        if status == 429 or status >= 500:
            retry_after = response.headers.get("Retry-After")
            if retry_after:
                error = f"{error} (Retry-After: {retry_after[:40]})"
            return Result(False, error=error)
        # 413 (payload too large), 400, 401/403 (a VAPID key this
        # subscription was not made with), redirects: no retry can mend them.
        return Result(False, error=error, permanent=True)


def prune(endpoint: str) -> int:
    """Forget a push subscription the push service no longer knows: one
    UPDATE, whatever else the subscriber has."""
    return Subscriber.objects.filter(push_endpoint=endpoint).update(
        **ADDRESS_FIELDS[Delivery.Channel.PUSH]
    )
