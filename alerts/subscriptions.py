"""Subscribing to crisis alerts, for residents, without an account.

- ``subscribe``: the public form (e-mail and/or phone, areas, categories,
  consent). The e-mail address is confirmed with a signed link (double
  opt-in, :data:`CONFIRM_MAX_AGE`); a phone number with a 6-digit code sent
  by SMS (alerts.phone_codes). No SMS goes to a number until it is confirmed,
  and without an SMS provider the form offers no phone field.
- ``confirm``: the link from the e-mail. When the row has a number still to
  confirm, the page links to the phone page.
- ``phone``: the phone page, behind a signed link bound to the row and the
  number (:func:`phone_token`): type the code, or have a new one sent
  (a cooldown per number, a cap per hour per subscriber).
- ``preferences``: behind the subscriber's unguessable token: areas and
  categories, a new phone number (confirmed by a code), an export of the data
  (JSON) and deletion (GDPR).
- ``unsubscribe``: the page every e-mail links to. GET only shows a button
  (mail scanners follow links); POST stops the channel (``email``, ``sms``
  or ``push``), and accepts RFC 8058 one-click (``List-Unsubscribe=One-Click``,
  no CSRF token: the token in the URL is the only thing acted on).
  ``sms_unsubscribe`` is the short link of the text messages.
- ``my_alerts``: "My alerts" of a signed-in resident: the settings page of
  the subscription linked to their account (a list when there are several),
  else the form.

Accounts. A subscription needs no account, but one made by a signed-in
resident is linked to the account (Subscriber.user), so that "My alerts"
finds it. Only where the address is shown to be theirs, since the link opens
the settings page: at once when the form's e-mail address is the account's
own (accounts are set up by the municipality, with the resident's address),
else when the address is proven while signed in: the confirmation link
opened, the SMS code typed, a browser subscribed (alerts.push_views).
Otherwise anyone signed in could type someone else's address into the form
and then read and delete that person's subscription. The double opt-in of
the e-mail address is the same with or without an account.

Phone numbers. A form with an e-mail address sends only the e-mail: the number
is stored unconfirmed, and the code is asked for from the confirmation page
(so the form's answer never depends on whether the address is known). A form
with a number alone sends the code at once and leads to the phone page, also
for a number already confirmed (typing the code again changes nothing), so
again the answer is the same for a known number and a new one. The phone page
is behind a signed link of the row and number, not the subscriber's token:
whoever sends a form for an unconfirmed row gets no lasting access to it. A
confirmed code leads to the settings page only when the row has no e-mail
address still unconfirmed (else the code proves the number, not the address).

Limits. Each client address (REMOTE_ADDR, per /64 for IPv6: hub.auth; behind
the proxy daphne's ``--proxy-headers`` puts the client there) may send
``SUBSCRIBE_PER_IP_PER_HOUR`` forms (and requests for a new code) an hour;
beyond that the answer is 429 and nothing is changed. The counters live in
the Django cache (Redis when there is one), as the cooldowns do.

Duplicates. One row per e-mail address (or, without one, per phone number). A
second form for the same address does not make a second row and the page says
the same whether or not the address was known. While nothing is confirmed the
row takes the new areas, categories and consent, and the confirmation link is
sent again. Once the address is confirmed, a form that anyone could have
filled in does not change it: the address gets an e-mail with the link to its
settings page instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import smtplib
import time
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core import signing
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import connection, transaction
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from alerts import phone_codes
from alerts.areas import AREAS, CATEGORY_LABELS
from alerts.forms import (
    CONSENT_TEXT,
    CONSENT_VERSION,
    PhoneForm,
    PreferencesForm,
    SubscriptionForm,
)
from alerts.models import Delivery, Subscriber
from alerts.outbox import ADDRESS_FIELDS
from alerts.phone_codes import Outcome
from alerts.sms_providers import configured_channel, sms_available
from hub.auth import address_limit_key
from hub.ratelimit import window_count

log = logging.getLogger(__name__)

CONFIRM_SALT = "alerts.subscriptions.confirm-email"
CONFIRM_MAX_AGE = 3 * 24 * 3600  # seconds: the link is valid for three days
CONSENT_SOURCE = "web-form"
# At most one confirmation (or "already subscribed") e-mail per subscriber in
# this many seconds, however often the form is sent for the address.
MAIL_COOLDOWN_SECONDS = 120
PHONE_SALT = "alerts.subscriptions.phone-page"
# At most one code SMS per number in this many seconds, and at most
# CODES_PER_HOUR codes to one subscriber an hour (whatever the numbers).
CODE_COOLDOWN_SECONDS = 60
CODES_PER_HOUR = 5
HOUR = 3600
# And CODES_PER_DAY a day: with 5 tries a code, whoever keeps asking for codes
# for someone else's number gets 50 guesses of a million a day at most.
CODES_PER_DAY = 10
DAY = 24 * 3600

# Where each field's error links to in the summary at the top of a form.
ANCHORS = {
    "email": "id_email",
    "phone": "id_phone",
    "areas": "id_areas_0",
    "categories": "id_categories_0",
    "consent": "id_consent",
    "__all__": "id_email",
}


# --- Helpers -------------------------------------------------------------------


def _private(response: HttpResponse) -> HttpResponse:
    """Pages whose address carries a subscriber's token: never cached, never
    sent on to other sites as a Referer, never indexed. (Not ``no-referrer``:
    with it, browsers send ``Origin: null`` with the page's own forms, and
    Django's CSRF check refuses them.)"""
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "same-origin"
    response["X-Robots-Tag"] = "noindex"
    return response


def _subscriber_or_404(token: str) -> Subscriber:
    subscriber = Subscriber.objects.filter(token=token).first() if token else None
    if subscriber is None:
        raise Http404
    return subscriber


def _url(name: str, *args) -> str:
    return settings.PUBLIC_BASE_URL + reverse(name, args=args)


def _options(choices, selected) -> list[dict]:
    selected = set(selected)
    return [
        {"value": value, "label": label, "checked": value in selected, "index": index}
        for index, (value, label) in enumerate(choices)
    ]


def _errors(form) -> list[dict]:
    return [
        {"anchor": ANCHORS.get(name, "id_email"), "message": message}
        for name, messages in form.errors.items()
        for message in messages
    ]


def _message(request, heading, paragraphs, *, links=(), status=200, private=False):
    response = render(
        request,
        "alerts/message.html",
        {"heading": heading, "paragraphs": paragraphs, "links": links, "error": status >= 400},
        status=status,
    )
    return _private(response) if private else response


def _cooldown(key: str, seconds: int) -> bool:
    """True (and the cooldown starts) when ``key`` is not cooling down. The
    value is when it ends, for the page to say how long to wait. ``add`` is
    atomic in Redis and in LocMem: two requests at once cannot both pass."""
    return cache.add(key, time.time() + seconds, seconds)


def _wait_left(key: str) -> int:
    """Seconds until the cooldown ``key`` ends (0: none)."""
    ends = cache.get(key)
    return max(0, math.ceil(ends - time.time())) if isinstance(ends, int | float) else 0


def _over_address_limit(request) -> bool:
    """Count this request for its client address; True when the address has
    sent more than SUBSCRIBE_PER_IP_PER_HOUR within the hour."""
    address = address_limit_key(request.META.get("REMOTE_ADDR") or "unknown")
    count = window_count(f"alerts:per-address:{address}", HOUR)
    return count > settings.ALERTS["SUBSCRIBE_PER_IP_PER_HOUR"]


def _too_many_requests(request):
    response = _message(
        request,
        gettext_lazy("Too many requests"),
        [
            gettext_lazy(
                "Too many forms have been sent from this network within an hour, so this one "
                "was not accepted and nothing was changed. Please try again in an hour."
            )
        ],
        status=429,
        private=True,
    )
    response["Retry-After"] = str(HOUR)
    return response


def confirmation_token(subscriber: Subscriber) -> str:
    """Signed, expiring, bound to the address: the link stops working when the
    address is removed or changed."""
    payload = {"id": subscriber.pk, "email": subscriber.email.lower()}
    return signing.dumps(payload, salt=CONFIRM_SALT, compress=True)


def phone_token(subscriber: Subscriber) -> str:
    """The phone page's link: signed, expiring, bound to the row and the
    number (it stops working when the number changes or is removed)."""
    return signing.dumps({"id": subscriber.pk, "phone": subscriber.phone}, salt=PHONE_SALT)


def link_to_account(subscriber: Subscriber, user, *, proven: bool) -> None:
    """Link the subscription to a signed-in resident's account (see
    "Accounts" above). ``proven``: the address was just shown to be theirs
    (which moves a link from another account); else only an unlinked row is
    linked."""
    if not user.is_authenticated or subscriber.user_id == user.pk:
        return
    if subscriber.user_id is not None and not proven:
        return
    Subscriber.objects.filter(pk=subscriber.pk).update(user=user)
    subscriber.user = user


def _account_email(user) -> str:
    return (getattr(user, "email", "") or "").strip() if user.is_authenticated else ""


def phone_url(subscriber: Subscriber) -> str:
    return reverse("alerts-phone", args=[phone_token(subscriber)])


def send_code(subscriber: Subscriber) -> str:
    """Text a new code to the subscriber's number, within the limits.
    Returns ``"sent"``, ``"wait"`` (the number's cooldown or the hourly cap),
    ``"failed"`` (the provider did not take it) or ``"unavailable"``."""
    if not sms_available():
        return "unavailable"
    cooldown = f"alerts:texted:{subscriber.pk}:{subscriber.phone}"
    if not _cooldown(cooldown, CODE_COOLDOWN_SECONDS):
        return "wait"
    if (
        window_count(f"alerts:codes:{subscriber.pk}", HOUR) > CODES_PER_HOUR
        or window_count(f"alerts:codes-day:{subscriber.pk}", DAY) > CODES_PER_DAY
    ):
        return "wait"
    channel = configured_channel()
    try:
        result = phone_codes.start(
            subscriber.pk, subscriber.phone, now=timezone.now(), channel=channel
        )
    finally:
        channel.close()
    if not result.ok:
        cache.delete(cooldown)  # nothing went out: a retry may send at once
        return "failed"
    return "sent"


def _send(subject: str, body: str, to: str) -> None:
    send_mail(subject, body, settings.ALERTS["FROM_EMAIL"], [to], fail_silently=False)


def send_confirmation(subscriber: Subscriber) -> None:
    link = _url("alerts-confirm", confirmation_token(subscriber))
    with translation.override("pl"):
        subject = _("Confirm your subscription to warnings — Gmina Głogów Małopolski")
        body = _(
            "Good day,\n\n"
            "this e-mail address was entered in the form for warnings about threats in "
            "Gmina Głogów Małopolski. To receive the warnings, please confirm the "
            "subscription by opening this link (valid for 3 days):\n\n"
            "%(link)s\n\n"
            "If someone else filled in the form, simply ignore this message: without "
            "confirmation no warnings will be sent.\n\n"
            "Urząd Miejski w Głogowie Małopolskim\n"
        ) % {"link": link}
    _send(subject, body, subscriber.email)


def send_already_subscribed(subscriber: Subscriber) -> None:
    link = _url("alerts-preferences", subscriber.token)
    with translation.override("pl"):
        subject = _("Your subscription to warnings — Gmina Głogów Małopolski")
        body = _(
            "Good day,\n\n"
            "this e-mail address was entered again in the form for warnings about threats "
            "in Gmina Głogów Małopolski. It is already subscribed, so nothing was changed. "
            "The areas and categories can be changed, and the data downloaded or deleted, "
            "on the subscription settings page:\n\n"
            "%(link)s\n\n"
            "If someone else filled in the form, simply ignore this message.\n\n"
            "Urząd Miejski w Głogowie Małopolskim\n"
        ) % {"link": link}
    _send(subject, body, subscriber.email)


def _lock(key: str) -> None:
    """Serialise subscriptions for one address until the transaction ends, so
    two forms sent at once cannot make two rows (SQLite serialises writes anyway)."""
    if connection.vendor == "postgresql":
        number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [number])


def subscribe_or_merge(data: dict, *, now) -> tuple[Subscriber, str]:
    """The row for this form, created or merged. Returns it and what to send:
    ``"confirm"``, ``"already"`` or ``""`` (nothing: no e-mail address)."""
    email, phone = data["email"], data["phone"]
    consent = {
        "consent_version": CONSENT_VERSION,
        "consent_at": now,
        "consent_source": CONSENT_SOURCE,
    }
    with transaction.atomic():
        if email:
            _lock(f"alerts.subscriber.email:{email.lower()}")
            found = Subscriber.objects.filter(email__iexact=email).order_by("pk").first()
        else:
            _lock(f"alerts.subscriber.phone:{phone}")
            found = Subscriber.objects.filter(phone=phone, email="").order_by("pk").first()
        if found is None:
            subscriber = Subscriber.objects.create(
                email=email,
                phone=phone,
                areas=data["areas"],
                categories=data["categories"],
                **consent,
            )
            return subscriber, "confirm" if email else ""
        if found.email_confirmed_at or found.phone_confirmed_at:
            return found, "already" if found.email else ""
        found.areas = data["areas"]
        found.categories = data["categories"]
        if phone and phone != found.phone:
            found.phone = phone
            found.phone_code_hash, found.phone_code_sent_at = "", None
            found.phone_code_attempts = 0
        for name, value in consent.items():
            setattr(found, name, value)
        found.save()
        return found, "confirm" if email else ""


# --- Views ---------------------------------------------------------------------


def _subscribe_page(request, form, *, areas, categories, status=200, problem=""):
    errors = _errors(form) if form.is_bound else []
    return render(
        request,
        "alerts/subscribe.html",
        {
            "form": form,
            "errors": errors,
            "problem": problem,
            "field_errors": {name: list(messages) for name, messages in form.errors.items()},
            "areas": _options(AREAS, areas),
            "categories": _options(CATEGORY_LABELS.items(), categories),
            "consent_text": CONSENT_TEXT,
            "email": form.data.get("email", "") if form.is_bound else _account_email(request.user),
            "phone": form.data.get("phone", "") if form.is_bound else "",
            "consent": bool(form.data.get("consent")) if form.is_bound else False,
            "sms_available": form.sms,
            "signed_in_as": (
                request.user.get_full_name() or request.user.get_username()
                if request.user.is_authenticated
                else ""
            ),
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
def subscribe(request):
    if request.method == "GET":
        sent = request.GET.get("sent")
        if sent == "email":
            return _message(
                request,
                gettext_lazy("Check your e-mail"),
                [
                    gettext_lazy(
                        "A message with a confirmation link has been sent to the e-mail "
                        "address given. Warnings will be sent once the subscription is "
                        "confirmed. The link is valid for 3 days."
                    ),
                    gettext_lazy(
                        "If the message does not arrive within a few minutes, check the "
                        "spam folder or fill in the form again."
                    ),
                ],
            )
        return _subscribe_page(
            request, SubscriptionForm(sms=sms_available()), areas=[], categories=[]
        )

    if _over_address_limit(request):
        return _too_many_requests(request)
    form = SubscriptionForm(request.POST, sms=sms_available())
    areas, categories = request.POST.getlist("areas"), request.POST.getlist("categories")
    if not form.is_valid():
        return _subscribe_page(request, form, areas=areas, categories=categories, status=400)

    def not_sent(problem):  # the form again, as it was filled in, with why
        return _subscribe_page(
            request, form, areas=areas, categories=categories, status=503, problem=problem
        )

    subscriber, to_send = subscribe_or_merge(form.cleaned_data, now=timezone.now())
    account_email = _account_email(request.user)
    if account_email and form.cleaned_data["email"].lower() == account_email.lower():
        link_to_account(subscriber, request.user, proven=False)
    if not form.cleaned_data["email"]:
        # A number alone: its code now, and the page to type it in.
        if send_code(subscriber) == "failed":
            return not_sent(
                _(
                    "The text message with the code could not be sent just now. "
                    "Please try again in a few minutes."
                )
            )
        return redirect(phone_url(subscriber))
    cooldown = f"alerts:mailed:{subscriber.pk}"
    if to_send and not _cooldown(cooldown, MAIL_COOLDOWN_SECONDS):
        # The form sent again and again for one address: one e-mail per
        # cooldown, so the form cannot be used to flood someone's inbox.
        to_send = ""
    try:
        if to_send == "confirm":
            send_confirmation(subscriber)
        elif to_send == "already":
            send_already_subscribed(subscriber)
    except (smtplib.SMTPException, OSError):
        cache.delete(cooldown)  # nothing went out: a retry may send at once
        log.exception("the confirmation e-mail to subscriber %s was not sent", subscriber.pk)
        return not_sent(
            _(
                "The confirmation e-mail could not be sent just now. "
                "Please try again in a few minutes."
            )
        )
    return redirect(f"{reverse('alerts-subscribe')}?sent=email")


@require_GET
def confirm(request, signed: str):
    invalid = gettext_lazy(
        "This confirmation link is not valid. Please fill in the subscription form again "
        "to receive a new one."
    )
    try:
        payload = signing.loads(signed, salt=CONFIRM_SALT, max_age=CONFIRM_MAX_AGE)
    except signing.SignatureExpired:
        reason = gettext_lazy(
            "This confirmation link has expired (links are valid for 3 days). Please fill "
            "in the subscription form again to receive a new one."
        )
        return _bad_link(request, reason)
    except signing.BadSignature:
        return _bad_link(request, invalid)
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), int):
        return _bad_link(request, invalid)
    with transaction.atomic():
        subscriber = (
            Subscriber.objects.select_for_update()
            .filter(pk=payload["id"], email__iexact=str(payload.get("email", "")))
            .exclude(email="")
            .first()
        )
        if subscriber is None:
            return _bad_link(request, invalid)
        if subscriber.email_confirmed_at is None:
            subscriber.email_confirmed_at = timezone.now()
            subscriber.save(update_fields=["email_confirmed_at"])
        link_to_account(subscriber, request.user, proven=True)
    paragraphs = [
        gettext_lazy("Thank you. Warnings for the chosen areas will be sent to %(email)s.")
        % {"email": subscriber.email},
        gettext_lazy(
            "On the settings page (link below) the areas and categories can be changed "
            "and the data downloaded or deleted. The unsubscribe link in every warning "
            "e-mail leads there too."
        ),
    ]
    links = [(reverse("alerts-preferences", args=[subscriber.token]), _("Subscription settings"))]
    if subscriber.phone and not subscriber.phone_confirmed_at and sms_available():
        paragraphs.append(
            gettext_lazy(
                "Text messages to %(phone)s will be sent once the number is confirmed with a "
                "code: open the link below to have it sent."
            )
            % {"phone": subscriber.phone}
        )
        links.insert(0, (phone_url(subscriber), _("Confirm the phone number")))
    return _message(
        request,
        gettext_lazy("Subscription confirmed"),
        paragraphs,
        links=links,
        private=True,
    )


def _bad_link(request, reason):
    return _message(
        request,
        gettext_lazy("The link does not work"),
        [reason],
        links=[(reverse("alerts-subscribe"), _("Subscription form"))],
        status=400,
        private=True,
    )


# --- The phone's code ---------------------------------------------------------

CODE_PROBLEMS = {
    Outcome.NO_CODE: gettext_lazy(
        "No code is waiting for this number (it was used, replaced or never sent). "
        "Have a new code sent with the button below."
    ),
    Outcome.EXPIRED: gettext_lazy(
        "This code has expired. Have a new code sent with the button below."
    ),
    Outcome.EXHAUSTED: gettext_lazy(
        "The code is wrong, and that was the last try: the code no longer works. "
        "Have a new code sent with the button below."
    ),
    Outcome.MALFORMED: gettext_lazy("Enter the 6 digits of the code from the text message."),
}


def _phone_subscriber(signed: str) -> Subscriber | None:
    """The row of a phone page link, while it still has that number."""
    try:
        payload = signing.loads(signed, salt=PHONE_SALT, max_age=CONFIRM_MAX_AGE)
    except signing.BadSignature:  # SignatureExpired too
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), int):
        return None
    phone = payload.get("phone")
    if not isinstance(phone, str) or not phone:
        return None
    return Subscriber.objects.filter(pk=payload["id"], phone=phone).first()


def _confirmed_here(subscriber: Subscriber) -> str:
    """The session key saying this browser typed the code for this number."""
    return f"alerts:phone-confirmed:{subscriber.pk}:{subscriber.phone}"


def _phone_page(request, subscriber, *, status=200, problem="", notice=""):
    state = phone_codes.state_of(subscriber)
    config = settings.ALERTS
    ttl = config["PHONE_CODE_TTL_SECONDS"]
    active = bool(
        state.code_hash
        and state.sent_at
        and (timezone.now() - state.sent_at).total_seconds() <= ttl
    )
    wait = _wait_left(f"alerts:texted:{subscriber.pk}:{subscriber.phone}")
    return _private(
        render(
            request,
            "alerts/phone.html",
            {
                "subscriber": subscriber,
                # Said only to the browser that typed the code: the link comes
                # to whoever fills in the form with the number, and must not tell
                # them whether its owner subscribed.
                "confirmed": bool(subscriber.phone_confirmed_at)
                and not active
                and bool(request.session.get(_confirmed_here(subscriber))),
                "active": active,
                "expires_at": state.sent_at + dt.timedelta(seconds=ttl) if active else None,
                "tries_left": config["PHONE_CODE_MAX_ATTEMPTS"] - state.attempts,
                "minutes": max(1, ttl // 60),
                "wait": wait,
                "problem": problem,
                "notice": notice,
                "sms_available": sms_available(),
            },
            status=status,
        )
    )


def _phone_confirmed(request, subscriber: Subscriber):
    paragraphs = [
        gettext_lazy("Thank you. Text message warnings will be sent to %(phone)s.")
        % {"phone": subscriber.phone}
    ]
    links = []
    if subscriber.email and not subscriber.email_confirmed_at:
        # The code proves the number, not the address: the settings link
        # comes with the e-mail.
        paragraphs.append(
            gettext_lazy(
                "The link to the subscription settings is in the e-mail sent to the address "
                "given in the form."
            )
        )
    else:
        paragraphs.append(
            gettext_lazy(
                "On the settings page (link below) the areas and categories can be changed "
                "and the data downloaded or deleted. Every text message ends with a link "
                "to unsubscribe."
            )
        )
        links = [
            (reverse("alerts-preferences", args=[subscriber.token]), _("Subscription settings"))
        ]
    return _message(
        request,
        gettext_lazy("Phone number confirmed"),
        paragraphs,
        links=links,
        private=True,
    )


@require_http_methods(["GET", "POST"])
def phone(request, signed: str):
    """Type the code from the SMS (``action=confirm``) or have a new one
    sent (``action=send``)."""
    subscriber = _phone_subscriber(signed)
    if subscriber is None:
        return _bad_link(
            request,
            gettext_lazy(
                "This link is not valid (it may have expired, or the phone number was "
                "changed). Please fill in the subscription form again."
            ),
        )
    if request.method == "GET":
        notice = _("A new code has been sent.") if request.GET.get("sent") == "1" else ""
        return _phone_page(request, subscriber, notice=notice)

    action = request.POST.get("action")
    if action == "send":
        if _over_address_limit(request):
            return _too_many_requests(request)
        outcome = send_code(subscriber)
        if outcome == "sent":
            return redirect(f"{reverse('alerts-phone', args=[signed])}?sent=1")
        problems = {
            "wait": (429, _("A new code cannot be sent yet. Please wait a moment.")),
            "failed": (
                503,
                _(
                    "The text message with the code could not be sent just now. "
                    "Please try again in a few minutes."
                ),
            ),
            "unavailable": (
                503,
                _("Text messages cannot be sent at the moment. Please try again later."),
            ),
        }
        status, problem = problems[outcome]
        subscriber.refresh_from_db()
        return _phone_page(request, subscriber, status=status, problem=problem)
    if action != "confirm":
        return _phone_page(request, subscriber, status=400)

    verdict = phone_codes.confirm(
        subscriber.pk,
        subscriber.phone,
        request.POST.get("code", "")[:40],
        now=timezone.now(),
    )
    subscriber.refresh_from_db()
    if verdict.outcome is Outcome.CONFIRMED:
        if not subscriber.email or subscriber.email_confirmed_at:
            # As with the settings link below: the code proves the number, not
            # an address still unconfirmed on the row.
            link_to_account(subscriber, request.user, proven=True)
        request.session[_confirmed_here(subscriber)] = True
        return _phone_confirmed(request, subscriber)
    if (
        verdict.outcome is Outcome.NO_CODE
        and subscriber.phone_confirmed_at
        and request.session.get(_confirmed_here(subscriber))
    ):
        return _phone_page(request, subscriber)  # confirmed here already (a code sent twice)
    if verdict.outcome is Outcome.WRONG:
        problem = ngettext(
            "The code is wrong. You have %(tries)d more try.",
            "The code is wrong. You have %(tries)d more tries.",
            verdict.tries_left,
        ) % {"tries": verdict.tries_left}
    else:
        problem = str(CODE_PROBLEMS[verdict.outcome])
    return _phone_page(request, subscriber, status=400, problem=problem)


# --- Preferences ---------------------------------------------------------------


def export_data(subscriber: Subscriber) -> dict:
    """Everything kept about a subscriber (GDPR, the right of access and to
    data portability): the subscription and the warnings sent to them."""

    def at(value):
        return value.isoformat() if value else None

    deliveries = subscriber.deliveries.select_related("alert").order_by("pk")
    return {
        "subscription": {
            "email": subscriber.email,
            "email_confirmed_at": at(subscriber.email_confirmed_at),
            "phone": subscriber.phone,
            "phone_confirmed_at": at(subscriber.phone_confirmed_at),
            # The endpoint in full: it is the browser's address at its push
            # service, personal data we hold (GDPR art. 15(3): a copy of it).
            # The two encryption keys the browser gave are named, not copied:
            # the browser made them and keeps them, and a file that is
            # downloaded, mailed and kept need not carry the secret ("auth")
            # that, with the endpoint, lets messages be made for that browser.
            "browser_notifications": {
                "on": bool(subscriber.push_endpoint and subscriber.push_confirmed_at),
                "push_service": push_service_host(subscriber),
                "endpoint": subscriber.push_endpoint,
                "keys_kept": [
                    name
                    for name, value in (
                        ("p256dh", subscriber.push_p256dh),
                        ("auth", subscriber.push_auth),
                    )
                    if value
                ],
                "confirmed_at": at(subscriber.push_confirmed_at),
            },
            "areas": subscriber.areas,
            "categories": subscriber.categories,
            "created_at": at(subscriber.created_at),
            "account": subscriber.user.get_username() if subscriber.user_id else None,
        },
        "consent": {
            "version": subscriber.consent_version,
            "given_at": at(subscriber.consent_at),
            "source": subscriber.consent_source,
        },
        "messages": [
            {
                "alert": delivery.alert.identifier,
                "headline": delivery.alert.headline,
                "channel": delivery.channel,
                "status": delivery.status,
                "sent_at": at(delivery.sent_at),
            }
            for delivery in deliveries
        ],
        "exported_at": at(timezone.now()),
    }


def push_service_host(subscriber: Subscriber) -> str:
    """The host of the browser's push service (fcm.googleapis.com…), or ""."""
    if not subscriber.push_endpoint:
        return ""
    try:
        return urlsplit(subscriber.push_endpoint).hostname or ""
    except ValueError:
        return ""


def stop_push(subscriber: Subscriber) -> None:
    """Forget the browser's subscription (its endpoint and keys), whatever
    else the subscriber has. The browser keeps its own until it is turned
    off there; the push service then has nowhere to send."""
    Subscriber.objects.filter(pk=subscriber.pk).update(**ADDRESS_FIELDS[Delivery.Channel.PUSH])
    subscriber.refresh_from_db()


@require_http_methods(["GET", "POST"])
def preferences(request, token: str):
    subscriber = _subscriber_or_404(token)
    if request.method == "GET" and request.GET.get("export") == "json":
        body = json.dumps(export_data(subscriber), ensure_ascii=False, indent=2)
        response = HttpResponse(body, content_type="application/json; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="subskrypcja-ostrzezen.json"'
        return _private(response)

    form, phone_form, status, saved, delete_error = None, None, 200, False, ""
    action = request.POST.get("action") if request.method == "POST" else None
    if action == "phone":
        if _over_address_limit(request):
            return _too_many_requests(request)
        phone_form = PhoneForm(request.POST, sms=sms_available())
        if phone_form.is_valid():
            number = phone_form.cleaned_data["phone"]
            if number != subscriber.phone or not subscriber.phone_confirmed_at:
                if number != subscriber.phone:
                    # A new number is confirmed anew; a code sent to the old one is void.
                    Subscriber.objects.filter(pk=subscriber.pk).update(
                        phone=number,
                        phone_confirmed_at=None,
                        phone_code_hash="",
                        phone_code_sent_at=None,
                        phone_code_attempts=0,
                    )
                    subscriber.refresh_from_db()
                send_code(subscriber)  # "wait" or "failed": the phone page offers a new one
                return redirect(phone_url(subscriber))
            saved, phone_form = True, None
        else:
            status = 400
    elif action == "push_off":
        stop_push(subscriber)
        saved = True
    elif action == "delete":
        if request.POST.get("confirm_delete") == "yes":
            subscriber.delete()  # its deliveries go with it (on_delete=CASCADE)
            return _message(
                request,
                gettext_lazy("Your data have been deleted"),
                [
                    gettext_lazy(
                        "The subscription and all data about it have been deleted. No more "
                        "warnings will be sent. You can subscribe again at any time."
                    )
                ],
                links=[(reverse("alerts-subscribe"), _("Subscription form"))],
                private=True,
            )
        delete_error = _("Tick the box to confirm that all your data should be deleted.")
        status = 400
    elif action == "save":
        form = PreferencesForm(request.POST)
        if form.is_valid():
            subscriber.areas = form.cleaned_data["areas"]
            subscriber.categories = form.cleaned_data["categories"]
            subscriber.save(update_fields=["areas", "categories"])
            saved, form = True, None
        else:
            status = 400
    elif request.method == "POST":
        status = 400

    if form is not None:
        areas, categories = request.POST.getlist("areas"), request.POST.getlist("categories")
    else:
        areas, categories = subscriber.areas, subscriber.categories
    errors = _errors(form) if form is not None else []
    if phone_form is not None:
        errors += _errors(phone_form)
    return _private(
        render(
            request,
            "alerts/preferences.html",
            {
                "subscriber": subscriber,
                "form": form,
                "errors": errors,
                "field_errors": (
                    {n: list(m) for n, m in form.errors.items()} if form is not None else {}
                ),
                "phone_errors": list(phone_form.errors.get("phone", [])) if phone_form else [],
                "phone_value": phone_form.data.get("phone", "") if phone_form else "",
                "phone_url": (
                    phone_url(subscriber)
                    if subscriber.phone and not subscriber.phone_confirmed_at
                    else ""
                ),
                "sms_available": sms_available(),
                "push_on": bool(subscriber.push_endpoint and subscriber.push_confirmed_at),
                "push_host": push_service_host(subscriber),
                "areas": _options(AREAS, areas),
                "categories": _options(CATEGORY_LABELS.items(), categories),
                "saved": saved,
                "delete_error": delete_error,
                "unsubscribe_url": reverse("alerts-unsubscribe", args=[subscriber.token]),
            },
            status=status,
        )
    )


CHANNELS = ("email", "sms", "push")


@csrf_exempt  # RFC 8058: the one-click POST has no CSRF token; only the URL's token is used.
@require_http_methods(["GET", "POST"])
def unsubscribe(request, token: str):
    subscriber = _subscriber_or_404(token)
    source = request.POST if request.method == "POST" else request.GET
    channel = source.get("channel", "email")
    if channel not in CHANNELS:
        channel = "email"
    if request.method == "GET":
        return _private(
            render(
                request,
                "alerts/unsubscribe.html",
                {
                    "subscriber": subscriber,
                    "channel": channel,
                    "push_on": bool(subscriber.push_endpoint),
                    "push_host": push_service_host(subscriber),
                    "preferences_url": reverse("alerts-preferences", args=[subscriber.token]),
                },
            )
        )
    if channel == "sms":
        Subscriber.objects.filter(pk=subscriber.pk).update(phone="", phone_confirmed_at=None)
        done = gettext_lazy("Text message warnings will no longer be sent to this number.")
    elif channel == "push":
        stop_push(subscriber)
        done = gettext_lazy("Warnings will no longer be sent as browser notifications.")
    else:
        Subscriber.objects.filter(pk=subscriber.pk).update(email="", email_confirmed_at=None)
        done = gettext_lazy("E-mail warnings will no longer be sent to this address.")
    return _message(
        request,
        gettext_lazy("You have unsubscribed"),
        [
            done,
            gettext_lazy("On the settings page the remaining data can be downloaded or deleted."),
        ],
        links=[
            (reverse("alerts-preferences", args=[subscriber.token]), _("Subscription settings"))
        ],
        private=True,
    )


@require_GET
def sms_unsubscribe(request, token: str):
    """The short link at the end of every text message."""
    subscriber = _subscriber_or_404(token)
    response = redirect(reverse("alerts-unsubscribe", args=[subscriber.token]) + "?channel=sms")
    return _private(response)


# --- My alerts (a signed-in resident) --------------------------------------------


@require_GET
def my_alerts(request):
    """The settings page of the subscription linked to the signed-in
    resident's account, a list when there are several (an e-mail address and
    browsers), else the form."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    subscribers = list(request.user.alert_subscriptions.order_by("-created_at", "-pk"))
    if not subscribers:
        return redirect("alerts-subscribe")
    if len(subscribers) == 1:
        return _private(redirect("alerts-preferences", subscribers[0].token))
    return _private(
        render(
            request,
            "alerts/my_alerts.html",
            {
                "subscriptions": [
                    {
                        "subscriber": subscriber,
                        "push_host": push_service_host(subscriber),
                        "url": reverse("alerts-preferences", args=[subscriber.token]),
                    }
                    for subscriber in subscribers
                ]
            },
        )
    )
