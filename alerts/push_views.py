"""Browser notifications (Web Push) for residents: the server's public key,
subscribing a browser, unsubscribing it, and the service worker.

- ``GET /alerts/push/key``: ``{"publicKey": …}`` for ``PushManager.subscribe``;
  404 when Web Push is off (no VAPID key set): the page then hides its button.
- ``POST /alerts/push/subscribe``: the browser's ``PushSubscription.toJSON()``
  with the ``areas`` and ``categories`` ticked in the form and ``consent:
  true`` (the form's consent box, whose text covers the browser's
  notification address: alerts.forms.CONSENT_TEXT; without it the answer is
  400 ``no_consent`` and nothing is kept). The browser's permission prompt is
  the opt-in, so the subscription is confirmed at once. One subscriber per
  endpoint: subscribing the same browser again updates it. The endpoint must
  be on the push-service allowlist (alerts.push). A resident signed in on
  this browser gets the subscription linked to their account ("My alerts").
- ``POST /alerts/push/unsubscribe``: ``{"endpoint": …}``; the same answer
  whether or not the endpoint was known.
- ``GET /alerts/sw.js``: the service worker, served from /alerts/ so that its
  scope is /alerts/ (the subscribe page and the alert pages).

The POSTs are JSON, CSRF-protected (the page's script sends the token in
``X-CSRFToken``); errors are ``{"ok": false, "error": {"code", "message"}}``,
the message in the page's language (Polish first).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.http import Http404, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from alerts.forms import CONSENT_VERSION, PreferencesForm
from alerts.models import Subscriber
from alerts.push import endpoint_allowed, prune, vapid_public_key
from hub.auth import address_limit_key

CONSENT_SOURCE = "web-push"
# A PushSubscription's JSON is about 500 bytes (an endpoint of up to 1,000);
# with every area and category ticked the request stays well under this.
MAX_BODY_BYTES = 4096
ENDPOINT_MAX_LENGTH = 1000  # Subscriber.push_endpoint
P256DH_BYTES = 65  # an uncompressed P-256 point (RFC 8291 §3.2)
AUTH_BYTES = 16  # the authentication secret (RFC 8291 §3.2)
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SERVICE_WORKER = Path(__file__).resolve().parent / "static" / "alerts" / "js" / "sw.js"


class Invalid(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(code)
        self.code, self.message, self.status = code, message, status


def _error(problem: Invalid) -> JsonResponse:
    body = {"ok": False, "error": {"code": problem.code, "message": problem.message}}
    return _private(JsonResponse(body, status=problem.status))


def _private(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def _json_body(request) -> dict:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY_BYTES:
        raise Invalid("too_large", _("The request is too large."), status=413)
    raw = request.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise Invalid("too_large", _("The request is too large."), status=413)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Invalid("bad_json", _("The request could not be read. Reload the page.")) from None
    if not isinstance(data, dict):
        raise Invalid("bad_json", _("The request could not be read. Reload the page."))
    return data


def _decode_key(value, size: int) -> bytes | None:
    """base64url (padded or not) of exactly ``size`` bytes, else None."""
    if not isinstance(value, str) or not value or len(value) > 100:
        return None
    if value.rstrip("=").strip(BASE64URL):
        return None  # other characters (+, /, spaces…): not base64url
    try:
        raw = base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def _endpoint(data: dict) -> str:
    endpoint = data.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint_allowed(endpoint):
        raise Invalid(
            "endpoint_not_allowed",
            _(
                "This browser's notification service is not supported. Try another "
                "browser, or subscribe by e-mail or text message."
            ),
        )
    return endpoint


def _keys(data: dict) -> tuple[str, str]:
    keys = data.get("keys")
    keys = keys if isinstance(keys, dict) else {}
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    point = _decode_key(p256dh, P256DH_BYTES)
    valid = point is not None and _decode_key(auth, AUTH_BYTES) is not None
    if valid:
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError:  # not a point on the curve
            valid = False
    if not valid:
        raise Invalid(
            "bad_keys",
            _("The browser sent an invalid subscription. Reload the page and try again."),
        )
    return p256dh.rstrip("="), auth.rstrip("=")


def _choices(data: dict) -> tuple[list[str], list[str]]:
    areas, categories = data.get("areas", []), data.get("categories", [])
    if not all(
        isinstance(values, list) and len(values) <= 50 and all(isinstance(v, str) for v in values)
        for values in (areas, categories)
    ):
        raise Invalid("bad_choices", _("Choose areas and categories from the list."))
    form = PreferencesForm(data={"areas": areas, "categories": categories})
    if not form.is_valid():
        messages = [str(m) for field in ("areas", "categories") for m in form.errors.get(field, [])]
        raise Invalid("bad_choices", " ".join(messages))
    return form.cleaned_data["areas"], form.cleaned_data["categories"]


def _consent(data: dict) -> None:
    """GDPR art. 7(1): the consent must be given, and shown to have been, for
    the notification address too; the page sends the state of its box."""
    if data.get("consent") is not True:
        # The form's own message for the unticked box (already in Polish).
        raise Invalid("no_consent", _("Your consent is needed to send you warnings."))


def _over_limit(request) -> bool:
    """At most ``SUBSCRIBE_PER_IP_PER_HOUR`` subscriptions per client address
    an hour (the cache: Redis when there is one)."""
    address = address_limit_key(request.META.get("REMOTE_ADDR") or "unknown")
    key = f"alerts:push-subscribe:{address}"
    if cache.add(key, 1, 3600):
        return False
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, 3600)
        return False
    return count > settings.ALERTS["SUBSCRIBE_PER_IP_PER_HOUR"]


# --- Views ---------------------------------------------------------------------


@require_GET
def push_key(request):
    key = vapid_public_key()
    if key is None:
        raise Http404
    response = JsonResponse({"publicKey": key})
    response["Cache-Control"] = "no-cache"
    return response


@require_POST
def push_subscribe(request):
    if vapid_public_key() is None:
        raise Http404
    try:
        data = _json_body(request)
        endpoint = _endpoint(data)
        p256dh, auth = _keys(data)
        areas, categories = _choices(data)
        _consent(data)
        if _over_limit(request):
            raise Invalid(
                "too_many", _("Too many subscriptions from this address. Try again later."), 429
            )
    except Invalid as problem:
        return _error(problem)
    now = timezone.now()
    fields = {
        "push_p256dh": p256dh,
        "push_auth": auth,
        "push_confirmed_at": now,
        "areas": areas,
        "categories": categories,
        "consent_version": CONSENT_VERSION,
        "consent_at": now,
        "consent_source": CONSENT_SOURCE,
    }
    if request.user.is_authenticated:
        # The endpoint is this browser's own, so whoever is signed in on it may
        # find the subscription under "My alerts".
        fields["user"] = request.user
    with transaction.atomic():
        known = Subscriber.objects.select_for_update().filter(push_endpoint=endpoint).first()
        if known is not None and not hmac.compare_digest(known.push_auth, auth):
            # An endpoint is no secret (it is in the owner's data export), but
            # its auth secret is: only the browser that holds it may change the
            # subscription or learn its settings link. Nothing is changed.
            return _private(JsonResponse({"ok": True, "preferences": None}))
        # update_or_create retries a create that lost a race against the
        # unique endpoint: two requests at once make one subscriber.
        subscriber, _created = Subscriber.objects.update_or_create(
            push_endpoint=endpoint, defaults=fields
        )
    preferences = reverse("alerts-preferences", args=[subscriber.token])
    response = _private(JsonResponse({"ok": True, "preferences": preferences}))
    response["Referrer-Policy"] = "same-origin"
    return response


@require_POST
def push_unsubscribe(request):
    try:
        data = _json_body(request)
    except Invalid as problem:
        return _error(problem)
    endpoint, auth = data.get("endpoint"), (data.get("keys") or {}).get("auth")
    if (
        isinstance(endpoint, str)
        and isinstance(auth, str)
        and endpoint
        and len(endpoint) <= ENDPOINT_MAX_LENGTH
    ):
        # Only the browser holding the subscription's auth secret turns it off.
        known = Subscriber.objects.filter(push_endpoint=endpoint).only("push_auth").first()
        if known is not None and hmac.compare_digest(known.push_auth, auth):
            prune(endpoint)
    return _private(JsonResponse({"ok": True}))


@functools.cache
def _service_worker_source() -> bytes:
    return SERVICE_WORKER.read_bytes()


@require_GET
def service_worker(request):
    """The service worker, with the few texts it shows itself in the page's
    language (the notifications' own texts come with each message)."""
    text = {"fallbackTitle": _("Warning — Gmina Głogów Małopolski")}
    prefix = f"const TEXT = {json.dumps(text, ensure_ascii=False)};\n".encode()
    source = _service_worker_source() if not settings.DEBUG else SERVICE_WORKER.read_bytes()
    response = HttpResponse(prefix + source, content_type="application/javascript; charset=utf-8")
    # Browsers look for a new service worker at least daily anyway; no-cache
    # makes every look a revalidation.
    response["Cache-Control"] = "no-cache"
    return response
