"""The SMS channel of the alerts worker: SMSAPI.pl and SerwerSMS.pl over HTTP.

Both channels have the interface of :class:`alerts.channels.EmailChannel`:
``send(delivery) -> Result`` and ``close()``. Each keeps one HTTP/1.1
keep-alive connection to its provider (the stdlib ``http.client``), opened
again after a failure or after it has been idle long enough that the provider
may have dropped it.

Idempotency. Every delivery has an ``idempotency_key``; a retry after a crash
or a timeout passes the same one, so the provider sends once:

- SMSAPI: ``idx=<key>`` with ``check_idx=1``. A repeated idx is refused with
  error 53 ("Not unique idx parameter, message with the same idx has been
  already sent"): the earlier attempt got through, so that is a success
  (without the provider's id, which SMSAPI does not repeat; delivery reports
  still find the delivery by ``idx``).
- SerwerSMS: ``unique_id`` (3–50 alphanumerics, made from the key). The API does
  not document refusing a repeated ``unique_id``, so a retry (``attempts > 1``)
  first asks ``messages/reports`` for that ``unique_id`` and sends only when the
  provider has no message with it.

Errors, permanent or not (``Result.permanent``: the worker gives up at once).
Permanent are the errors about this message or this recipient, which no retry
can mend: an invalid or blacklisted number, an opted-out number, a message too
long or with too many parts, a request the provider cannot parse. Retryable are
the provider's own failures (5xx, internal errors, overload, rate limits) and
the account's problems (a wrong or expired token, no points left, an IP
filter): an operator can mend those while the retries go on, and marking every
delivery of a 10,000-recipient alert failed because the account ran dry would
lose them all. Unknown error codes are retried (the worker's attempt limit
still ends them).

The text: the alert's headline and instruction, shortened to fit ``max_parts``
parts (see :func:`compose`), transliterated to GSM-7 when the service's
setting (``ALERTS_SMS_TRANSLITERATE``) or the operator's choice for the alert
(``Alert.sms_transliterate``) says so, and a short unsubscribe link
``{base}/a/u/<token>`` at the end, which is never cut.

Besides alerts, each channel sends a free text to one number with its own
idempotency key (``send_text``: a phone's confirmation code, alerts.phone_codes).
:func:`configured_channel` builds the channel of ``settings.ALERTS``.

Delivery reports, on one status model (:class:`Report`, ``RANK``): SMSAPI
calls us (alerts.callbacks); SerwerSMS is asked, many messages at once
(:meth:`SerwerSmsChannel.reports`, polled by alerts.reports).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import logging
import re
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from django.conf import settings

from alerts.channels import PerThread, Result
from alerts.models import Delivery
from alerts.sms import is_gsm7, sms_length, to_gsm7

log = logging.getLogger(__name__)

Status = Delivery.Status


# --- Phone numbers -----------------------------------------------------------


class InvalidPhone(ValueError):
    """A number that is not a Polish one. ``reason`` is a machine-readable
    code: ``phone_empty``, ``phone_bad_characters``, ``phone_not_polish``,
    ``phone_wrong_length``, ``phone_invalid``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_SEPARATORS = re.compile(r"[\s\-().]+")
_DIGITS = re.compile(r"\+?[0-9]+")


def normalize_phone(text: str) -> str:
    """A Polish number in E.164, ``+48XXXXXXXXX``.

    Accepts 9 national digits, with or without a leading ``+48``, ``0048`` or
    ``48``, with spaces, dashes, dots or parentheses between the digits. Raises
    :class:`InvalidPhone` (a ``ValueError``) for anything else: other countries,
    other lengths, letters, or a national number starting with 0.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidPhone("phone_empty")
    if len(text) > 40:
        raise InvalidPhone("phone_wrong_length")
    compact = _SEPARATORS.sub("", text.strip())
    if not _DIGITS.fullmatch(compact):  # letters, '+' inside, non-ASCII digits…
        raise InvalidPhone("phone_bad_characters")
    if compact.startswith("+"):
        if not compact.startswith("+48"):
            raise InvalidPhone("phone_not_polish")
        national = compact[3:]
    elif compact.startswith("00"):
        if not compact.startswith("0048"):
            raise InvalidPhone("phone_not_polish")
        national = compact[4:]
    elif len(compact) == 11 and compact.startswith("48"):
        national = compact[2:]
    else:
        national = compact
    if len(national) != 9:
        raise InvalidPhone("phone_wrong_length")
    if national[0] == "0":  # Polish national numbers never start with 0
        raise InvalidPhone("phone_invalid")
    return "+48" + national


# --- Configuration and the text ---------------------------------------------


@dataclass(frozen=True)
class SmsConfig:
    """What a provider channel needs (settings are mapped to it by the caller)."""

    base_url: str  # "https://api.smsapi.pl" or "https://api2.serwersms.pl"
    token: str  # the provider's API token (Bearer)
    sender: str = ""  # SMSAPI "from", SerwerSMS "sender"; empty: the account's default
    public_base_url: str = "http://127.0.0.1:8000"  # the unsubscribe link's base
    notify_url: str = ""  # SMSAPI delivery reports (with the callback secret); empty: none
    max_parts: int = 3
    transliterate: bool = False  # write the text in GSM-7 (160/153 a part, not 70/67)
    timeout: float = 10.0  # seconds, to connect and for each read
    idle_reconnect: float = 30.0  # reopen a connection idle longer than this
    test: bool = False  # the providers' test mode: accepted, validated, never sent


UNSUBSCRIBE_LABEL = "Rezygnacja: "  # GSM-7 on purpose: it never forces UCS-2
ELLIPSIS = "..."  # GSM-7 too ("…" is not)


def unsubscribe_url(base: str, token: str) -> str:
    return f"{base.rstrip('/')}/a/u/{token}"


def _fits(text: str, max_parts: int) -> bool:
    return sms_length(text).segments <= max_parts


def _cut(text: str, room) -> str:
    """The longest prefix of ``text`` (ending at a word when one is near,
    followed by ``...``) for which ``room(prefix)`` holds; "" when none."""
    lo, hi = 0, len(text)
    while lo < hi:  # the longest n with room(text[:n] + ELLIPSIS); room is monotone in n
        mid = (lo + hi + 1) // 2
        if room(text[:mid].rstrip() + ELLIPSIS):
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return ""
    prefix = text[:lo]
    space = prefix.rfind(" ")
    if lo < len(text) and space >= max(1, lo - 20):  # end at a word when one is near
        prefix = prefix[:space]
    return prefix.rstrip() + ELLIPSIS


def compose(
    headline: str, instruction: str, unsubscribe: str, *, max_parts: int, transliterate: bool
) -> str:
    """The SMS: headline, instruction, unsubscribe link, in at most
    ``max_parts`` parts. The instruction is shortened first, then the
    headline; the link is always whole."""

    def clean(text: str) -> str:
        text = " ".join(text.split())  # one line each: newlines cost as much as letters
        return to_gsm7(text) if transliterate else text

    headline, instruction = clean(headline), clean(instruction)
    tail = "\n" + UNSUBSCRIBE_LABEL + unsubscribe

    def text(head: str, body: str) -> str:
        return "\n".join(part for part in (head, body) if part) + tail

    full = text(headline, instruction)
    if _fits(full, max_parts):
        return full
    body = _cut(instruction, lambda b: _fits(text(headline, b), max_parts))
    if body and _fits(text(headline, body), max_parts):
        return text(headline, body)
    if _fits(text(headline, ""), max_parts):
        return text(headline, "")
    head = _cut(headline, lambda h: _fits(text(h, ""), max_parts))
    return text(head, "")


def message_for(delivery: Delivery, config: SmsConfig) -> str:
    """The alert's SMS to this subscriber: in GSM-7 when the whole service is
    set so (``config.transliterate``) or the operator chose it for this alert
    (``Alert.sms_transliterate``)."""
    alert, subscriber = delivery.alert, delivery.subscriber
    return compose(
        alert.headline,
        alert.instruction,
        unsubscribe_url(config.public_base_url, subscriber.token),
        max_parts=config.max_parts,
        transliterate=config.transliterate or alert.sms_transliterate,
    )


# --- From the settings -------------------------------------------------------

DEFAULT_BASE_URLS = {
    "smsapi": "https://api.smsapi.pl",
    "serwersms": "https://api2.serwersms.pl",
}


def sms_available() -> bool:
    """Whether an SMS provider is configured (``ALERTS_SMS_PROVIDER``): without
    one no text message can go out, not even a phone's confirmation code."""
    return bool(settings.ALERTS["SMS_PROVIDER"])


def configured_config() -> SmsConfig | None:
    """The :class:`SmsConfig` of ``settings.ALERTS`` (``ALERTS_SMS_*``), or
    None when no provider is configured."""
    config = settings.ALERTS
    provider = config["SMS_PROVIDER"]
    if not provider:
        return None
    secret = config["SMS_CALLBACK_SECRET"]
    notify = (
        f"{settings.PUBLIC_BASE_URL}/alerts/sms/smsapi/{secret}/report"
        if provider == "smsapi" and secret
        else ""
    )
    return SmsConfig(
        base_url=config["SMS_BASE_URL"] or DEFAULT_BASE_URLS[provider],
        token=config["SMS_TOKEN"],
        sender=config["SMS_SENDER"],
        public_base_url=settings.PUBLIC_BASE_URL,
        notify_url=notify,
        max_parts=config["SMS_MAX_PARTS"],
        transliterate=config["SMS_TRANSLITERATE"],
        timeout=config["SMS_TIMEOUT"],
        test=config["SMS_TEST"],
    )


def configured_channel() -> SmsApiChannel | SerwerSmsChannel | None:
    """The channel of the configured provider (a new connection: ``close()``
    it when done), or None when no provider is configured."""
    config = configured_config()
    if config is None:
        return None
    provider = settings.ALERTS["SMS_PROVIDER"]
    return (SmsApiChannel if provider == "smsapi" else SerwerSmsChannel)(config)


# --- HTTP --------------------------------------------------------------------

_DROPPED = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


class ProviderUnreachable(Exception):
    pass


class StaleConnection(ProviderUnreachable):
    """A reused keep-alive connection turned out closed by the provider: the
    request most likely never reached it, but that is not certain."""


_KEEP_ALIVE_TIMEOUT = re.compile(r"timeout\s*=\s*(\d+)")


class _Http:
    """One keep-alive connection to a provider; reopened after any failure
    and before use when it sat idle longer than ``idle_reconnect``."""

    def __init__(self, config: SmsConfig, clock=time.monotonic):
        parts = urlsplit(config.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"bad provider URL: {config.base_url!r}")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.config = config
        self.clock = clock
        self.connection: http.client.HTTPConnection | None = None
        self.last_used = 0.0
        self.requests_on_connection = 0
        self.server_idle: float | None = None  # the provider's Keep-Alive: timeout=

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            finally:
                self.connection = None

    def _connect(self) -> http.client.HTTPConnection:
        idle = self.config.idle_reconnect
        if self.server_idle is not None:  # the provider closes idle connections sooner
            idle = min(idle, self.server_idle - 1)
        if self.connection is not None and self.clock() - self.last_used > idle:
            self.close()
        if self.connection is None:
            cls = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            self.connection = cls(self.host, self.port, timeout=self.config.timeout)
            self.requests_on_connection = 0
        return self.connection

    def request(
        self, path: str, body: bytes, content_type: str, *, retry_dropped: bool
    ) -> tuple[int, bytes]:
        """POST ``body``; (status, response body). ``retry_dropped``: when a
        reused connection turns out dropped by the provider, send once more on
        a new one (only for requests the provider deduplicates)."""
        headers = {
            "Authorization": f"Bearer {self.config.token}",
            "Content-Type": content_type,
            "Accept": "application/json",
            "User-Agent": "egmina-hub-alerts",
        }
        for attempt in (1, 2):
            connection = self._connect()
            reused = self.requests_on_connection > 0
            try:
                connection.request("POST", self.prefix + path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except _DROPPED as exc:
                self.close()
                if attempt == 1 and reused and retry_dropped:
                    continue
                error = StaleConnection if reused else ProviderUnreachable
                raise error(f"{type(exc).__name__}: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:  # timeouts, refused…
                self.close()
                raise ProviderUnreachable(f"{type(exc).__name__}: {exc}") from exc
            self.requests_on_connection += 1
            self.last_used = self.clock()
            keep_alive = _KEEP_ALIVE_TIMEOUT.search(response.getheader("Keep-Alive") or "")
            if keep_alive:
                self.server_idle = float(keep_alive.group(1))
            if response.will_close:
                self.close()
            return response.status, data
        raise AssertionError("unreachable")  # pragma: no cover


class _Provider:
    """What both providers' channels share: their settings, and a keep-alive
    connection per sending thread (the worker sends from several at once)."""

    concurrent = True

    def __init__(self, config: SmsConfig):
        _Http(config)  # a bad provider URL fails now, not at the first alert
        self.config = config
        self._connections = PerThread(lambda: _Http(config), closer=lambda http: http.close())

    @property
    def http(self) -> _Http:
        """This thread's connection to the provider."""
        return self._connections.get()

    def close(self) -> None:
        self._connections.close_all()


def _json(data: bytes):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _short(data: bytes, limit: int = 120) -> str:
    return data[:limit].decode("utf-8", "replace").replace("\r", " ").replace("\n", " ")


def _http_failure(provider: str, status: int, data: bytes) -> Result:
    """A non-200 answer without a provider error we understand: retryable
    (5xx, 429, 401/403 are the provider's or the account's state)."""
    return Result(False, error=f"{provider} HTTP {status}: {_short(data)}")


# --- SMSAPI.pl ---------------------------------------------------------------

SMSAPI_DUPLICATE_IDX = 53
# About this message or recipient: no retry can help.
SMSAPI_PERMANENT = {
    11: "message_too_long_or_empty",
    12: "too_many_parts",
    13: "no_valid_number",
    17: "flash_special_characters",
    18: "bad_parameters",
    20: "bad_idx_count",
    25: "normalize_with_datacoding",
    27: "idx_too_long",
    57: "number_blacklisted",
    59: "number_opted_out",
    76: "bad_characters",
    94: "links_not_allowed",
    112: "country_restricted",
}
# Worth retrying: the provider's or the account's state (named for the log).
SMSAPI_RETRYABLE = {
    8: "request_error",
    14: "bad_sender_name",  # the account's sender name: mend it and the retries go out
    52: "too_many_attempts_to_number",
    98: "account_restricted",
    101: "bad_authorization",
    102: "bad_credentials",
    103: "insufficient_points",
    105: "ip_not_allowed",
    200: "submission_failed",
    201: "internal_error",
    202: "too_many_requests",
    203: "too_many_requests",
    401: "token_lacks_permission",
    997: "https_required",
    999: "internal_error",
}


def smsapi_error(code: int, message: str = "") -> Result:
    """The result of an SMSAPI error code (from a JSON body or ``ERROR:<code>``)."""
    if code == SMSAPI_DUPLICATE_IDX:  # the earlier attempt with this idx got through
        return Result(True, provider_id="")
    if code in SMSAPI_PERMANENT:
        return Result(
            False, error=f"smsapi {code} {SMSAPI_PERMANENT[code]}: {message}"[:300], permanent=True
        )
    name = SMSAPI_RETRYABLE.get(code, "unknown_error")
    return Result(False, error=f"smsapi {code} {name}: {message}"[:300])


def smsapi_result(status: int, data: bytes) -> Result:
    """Read SMSAPI's answer to ``POST /sms.do`` (``format=json``)."""
    body = _json(data)
    if isinstance(body, dict):
        error = body.get("error")
        if error not in (None, "", 0):
            try:
                return smsapi_error(int(error), str(body.get("message", "")))
            except (TypeError, ValueError):
                return Result(False, error=f"smsapi error {error!r}")
        items = body.get("list")
        if status == 200 and isinstance(items, list) and items and isinstance(items[0], dict):
            item = items[0]
            if item.get("error") not in (None, "", 0):
                try:
                    return smsapi_error(int(item["error"]), str(item.get("status", "")))
                except (TypeError, ValueError):
                    return Result(False, error=f"smsapi item error {item['error']!r}")
            if item.get("id"):
                return Result(True, provider_id=str(item["id"]))
    text = data.decode("utf-8", "replace").strip()
    if text.startswith("ERROR:"):  # the plain-text form, sometimes with HTTP 200
        code = text[6:].split(":", 1)[0].strip()
        if code.isdigit():
            return smsapi_error(int(code), text)
    if status == 200 and text.startswith("OK:"):  # OK:<id>:<points>
        return Result(True, provider_id=text.split(":")[1])
    if status != 200:
        return _http_failure("smsapi", status, data)
    return Result(False, error=f"smsapi unexpected answer: {_short(data)}")


class SmsApiChannel(_Provider):
    """SMSAPI.pl: ``POST /sms.do`` (form fields, ``format=json``), ``idx`` +
    ``check_idx=1`` for idempotency, delivery reports to ``notify_url``."""

    provider = "smsapi"

    def form(self, delivery: Delivery, phone: str, text: str) -> dict[str, str]:
        return self.fields(phone, text, key=delivery.idempotency_key)

    def fields(
        self, phone: str, text: str, *, key: str, reports: bool = True, max_parts: int = 0
    ) -> dict[str, str]:
        fields = {
            "to": phone.lstrip("+"),
            "message": text,
            "encoding": "utf-8",
            "idx": key,
            "check_idx": "1",
            "format": "json",
            "max_parts": str(max_parts or self.config.max_parts),
        }
        if self.config.sender:
            fields["from"] = self.config.sender
        if self.config.notify_url and reports:
            fields["notify_url"] = self.config.notify_url
        if self.config.test:
            fields["test"] = "1"
        return fields

    def send(self, delivery: Delivery) -> Result:
        try:
            phone = normalize_phone(delivery.subscriber.phone)
        except InvalidPhone as exc:
            return Result(False, error=f"invalid phone: {exc.reason}", permanent=True)
        return self._post(self.form(delivery, phone, message_for(delivery, self.config)))

    def send_text(self, phone: str, text: str, key: str) -> Result:
        """One free text (a phone's confirmation code) to one number, sent
        once for ``key`` (``idx``). No delivery reports: no delivery row
        would match them."""
        try:
            phone = normalize_phone(phone)
        except InvalidPhone as exc:
            return Result(False, error=f"invalid phone: {exc.reason}", permanent=True)
        return self._post(self.fields(phone, text, key=key, reports=False, max_parts=1))

    def _post(self, fields: dict[str, str]) -> Result:
        body = urlencode(fields)
        try:
            status, data = self.http.request(
                "/sms.do",
                body.encode("utf-8"),
                "application/x-www-form-urlencoded; charset=utf-8",
                retry_dropped=True,  # safe: the same idx is never sent twice
            )
        except ProviderUnreachable as exc:
            return Result(False, error=f"smsapi unreachable: {exc}")
        return smsapi_result(status, data)


# --- SerwerSMS.pl ------------------------------------------------------------


def unique_id(key: str) -> str:
    """SerwerSMS ``unique_id`` (3–50 alphanumerics) from an idempotency key:
    the key's letters and digits, or a digest of it when they do not fit."""
    plain = re.sub(r"[^A-Za-z0-9]", "", key)
    if 3 <= len(plain) <= 50 and plain == key:
        return plain
    return "k" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def serwersms_result(status: int, data: bytes) -> Result:
    """Read SerwerSMS's answer to ``messages/send_sms``."""
    body = _json(data)
    if isinstance(body, dict):
        error = body.get("error")
        if error:  # the request as a whole: the account's or the provider's state
            if isinstance(error, dict):
                detail = f"{error.get('code')} {error.get('type', '')}: {error.get('message', '')}"
            else:
                detail = str(error)
            return Result(False, error=f"serwersms error {detail}"[:300])
        items = body.get("items")
        if status == 200 and isinstance(items, list) and items and isinstance(items[0], dict):
            item = items[0]
            if item.get("status") == "unsent" or item.get("error_code"):
                # About this recipient or this message: no retry can help.
                detail = f"{item.get('error_code')} {item.get('error_message', '')}"
                return Result(False, error=f"serwersms unsent: {detail}"[:300], permanent=True)
            if item.get("id"):
                return Result(True, provider_id=str(item["id"]))
    if status != 200:
        return _http_failure("serwersms", status, data)
    return Result(False, error=f"serwersms unexpected answer: {_short(data)}")


class SerwerSmsChannel(_Provider):
    """SerwerSMS.pl: ``POST /messages/send_sms.json`` (JSON), ``unique_id``
    for idempotency (checked with ``messages/reports`` before a retry)."""

    provider = "serwersms"

    def _post(self, path: str, payload: dict, *, retry_dropped: bool) -> tuple[int, bytes]:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return self.http.request(
            path, body, "application/json; charset=utf-8", retry_dropped=retry_dropped
        )

    def already_sent(self, uid: str) -> str | None:
        """The provider's id of a message with this ``unique_id`` that it
        took (anything but ``unsent``), or None."""
        status, data = self._post("/messages/reports.json", {"unique_id": uid}, retry_dropped=True)
        body = _json(data)
        if status != 200 or not isinstance(body, dict) or body.get("error"):
            raise ProviderUnreachable(f"reports HTTP {status}: {_short(data)}")
        for item in body.get("items") or []:
            if isinstance(item, dict) and item.get("id") and item.get("status") != "unsent":
                return str(item["id"])
        return None

    def reports(self, ids: list[str]) -> list[Report]:
        """The provider's reports on these messages (its ids), asked in one
        request (``messages/reports`` with ``id`` as a list; more pages are
        asked for when the provider splits its answer). One :class:`Report`
        for each message it knows and whose status means something to us
        (``SERWERSMS_REPORT``); any other status (``pending``, something
        new) is no news and left out, and so is a message it does not know.
        Raises :class:`ProviderUnreachable` when it cannot answer."""
        wanted = list(dict.fromkeys(str(i) for i in ids if i))
        asked = set(wanted)
        found: dict[str, Report] = {}
        page = 1
        while wanted:
            payload = {"id": wanted, "limit": len(wanted), "page": page}
            status, data = self._post("/messages/reports.json", payload, retry_dropped=True)
            body = _json(data)
            if status != 200 or not isinstance(body, dict) or body.get("error"):
                raise ProviderUnreachable(f"reports HTTP {status}: {_short(data)}")
            for item in body.get("items") or []:
                report = serwersms_report(item)
                if report is not None and report.provider_id in asked:
                    found[report.provider_id] = report
            paging = body.get("paging")
            try:
                pages = int(paging.get("count") or 1) if isinstance(paging, dict) else 1
            except (TypeError, ValueError):
                pages = 1
            if page >= min(pages, SERWERSMS_MAX_REPORT_PAGES):
                break
            page += 1
        return list(found.values())

    def payload(self, delivery: Delivery, phone: str, text: str) -> dict:
        return self.text_payload(phone, text, delivery.idempotency_key)

    def text_payload(self, phone: str, text: str, key: str) -> dict:
        payload = {
            "phone": phone,
            "text": text,
            "utf": not is_gsm7(text),
            "unique_id": unique_id(key),
            "details": True,
        }
        if self.config.sender:
            payload["sender"] = self.config.sender
        if self.config.test:
            payload["test"] = True
        return payload

    def send(self, delivery: Delivery) -> Result:
        try:
            phone = normalize_phone(delivery.subscriber.phone)
        except InvalidPhone as exc:
            return Result(False, error=f"invalid phone: {exc.reason}", permanent=True)
        payload = self.payload(delivery, phone, message_for(delivery, self.config))
        return self._deliver(payload, retry=delivery.attempts > 1)

    def send_text(self, phone: str, text: str, key: str) -> Result:
        """One free text (a phone's confirmation code) to one number, sent
        once for ``key`` (``unique_id``)."""
        try:
            phone = normalize_phone(phone)
        except InvalidPhone as exc:
            return Result(False, error=f"invalid phone: {exc.reason}", permanent=True)
        return self._deliver(self.text_payload(phone, text, key), retry=False)

    def _deliver(self, payload: dict, *, retry: bool) -> Result:
        """Send ``payload``; ``retry``: an earlier attempt with its
        ``unique_id`` may have got through, so ask first."""
        try:
            if retry:  # an earlier attempt may have got through
                found = self.already_sent(payload["unique_id"])
                if found:
                    return Result(True, provider_id=found)
            try:
                status, data = self._post("/messages/send_sms.json", payload, retry_dropped=False)
            except StaleConnection:
                # A kept-open connection the provider had closed: ask whether
                # the message got there before sending it again, once.
                found = self.already_sent(payload["unique_id"])
                if found:
                    return Result(True, provider_id=found)
                status, data = self._post("/messages/send_sms.json", payload, retry_dropped=False)
        except ProviderUnreachable as exc:
            return Result(False, error=f"serwersms unreachable: {exc}")
        return serwersms_result(status, data)


# --- Delivery reports: one status model --------------------------------------


@dataclass(frozen=True)
class Report:
    """One provider's report on one message, in our terms (applied by
    alerts.reports.apply_report, whichever provider it came from)."""

    provider_id: str
    idx: str  # our idempotency key when the provider echoes it (SMSAPI), else ""
    status: str  # ours: sent, delivered, failed
    detail: str  # the provider's code and name, for last_error
    at: dt.datetime | None


# SMSAPI report codes (the callback's ``status``).
SMSAPI_REPORT = {
    402: Status.FAILED,  # EXPIRED: the network gave up within the validity period
    403: Status.SENT,  # SENT: handed to the network, no report yet
    404: Status.DELIVERED,  # DELIVERED
    405: Status.FAILED,  # UNDELIVERED
    406: Status.FAILED,  # FAILED
    407: Status.FAILED,  # REJECTED
    408: Status.SENT,  # UNKNOWN: sent, its fate not known (no news, not a failure)
    409: Status.SENT,  # QUEUED: accepted by SMSAPI, waiting to go out
    410: Status.SENT,  # ACCEPTED: accepted by the operator
}
SMSAPI_REPORT_NAMES = {
    402: "EXPIRED",
    403: "SENT",
    404: "DELIVERED",
    405: "UNDELIVERED",
    406: "FAILED",
    407: "REJECTED",
    408: "UNKNOWN",
    409: "QUEUED",
    410: "ACCEPTED",
}
# SerwerSMS message statuses (messages/reports, messages/view).
SERWERSMS_REPORT = {
    "in_progress": Status.SENT,
    "saved": Status.SENT,
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "undelivered": Status.FAILED,
    "unsent": Status.FAILED,
}
# How far along each status is. A report moves a delivery only forward: a
# report not newer than what we have (a replay, a late SENT after DELIVERED)
# changes nothing. DELIVERED and FAILED are final.
RANK = {
    Status.QUEUED: 0,
    Status.SENDING: 0,
    Status.SENT: 1,
    Status.DELIVERED: 2,
    Status.FAILED: 2,
}


def smsapi_status(code: str | int) -> str | None:
    try:
        return SMSAPI_REPORT.get(int(code))
    except (TypeError, ValueError):
        return None


def serwersms_status(name: str) -> str | None:
    return SERWERSMS_REPORT.get(str(name).strip().lower())


def is_newer(current: str, reported: str) -> bool:
    return RANK[Status(reported)] > RANK[Status(current)]


SERWERSMS_MAX_REPORT_PAGES = 20  # more is a provider answering something else


def serwersms_report(item) -> Report | None:
    """A :class:`Report` from one item of ``messages/reports``
    (``{id, status, reason, …}``), or None when it is not one we can use.
    An undelivered or unsent message's ``reason`` (``wrong_number``,
    ``message_expired``…) goes into the detail, and so into ``last_error``."""
    if not isinstance(item, dict) or not item.get("id"):
        return None
    name = str(item.get("status") or "").strip().lower()
    status = serwersms_status(name)
    if status is None:
        return None
    reason = str(item.get("reason") or item.get("error_message") or "").strip()
    detail = f"{name} {reason}".strip()
    return Report(str(item["id"]), "", status, detail, None)
