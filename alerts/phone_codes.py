"""The phone's double opt-in (issue 4): a 6-digit code sent by SMS, typed
back on the phone page (alerts.subscriptions.phone).

The rules first, without I/O: :func:`issue` makes a code and what to store,
:func:`verify` judges a typed code against what is stored and returns the
verdict with what to store next. Then the two steps that touch the database
and the provider: :func:`start` (store a new code and text it) and
:func:`confirm` (check a typed code under a row lock).

Only a salted hash of the code is kept: an HMAC-SHA256 keyed by SECRET_KEY
over the subscriber's token, the number and the code (Django's
``salted_hmac``). A slow password hash would not help: six digits are a
million guesses whatever the hash, so the defence is the limit of tries per
code (``PHONE_CODE_MAX_ATTEMPTS``), its short life (``PHONE_CODE_TTL_SECONDS``)
and the limits on sending new ones. Binding the hash to the number makes a
code void as soon as the number changes.
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
import logging
import re
import secrets
from dataclasses import dataclass, replace

from django.conf import settings
from django.db import transaction
from django.utils import translation
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext as _

from alerts.channels import Result
from alerts.models import Subscriber
from alerts.sms import to_gsm7

log = logging.getLogger(__name__)

CODE_DIGITS = 6
KEY_SALT = "alerts.phone_codes"
# What a person may type: the digits with spaces or dashes between them.
_TYPED = re.compile(r"[\s\-]+")


# --- The rules ---------------------------------------------------------------


class Outcome(enum.StrEnum):
    CONFIRMED = "confirmed"  # the right code in time: the number is confirmed
    WRONG = "wrong"  # a wrong code; tries are left
    EXHAUSTED = "exhausted"  # a wrong code and no tries left: the code is void now
    EXPIRED = "expired"  # the code is older than its time to live: void now
    NO_CODE = "no_code"  # no code is waiting (never sent, used, or voided)
    MALFORMED = "malformed"  # not six digits: not counted as a try


@dataclass(frozen=True)
class CodeState:
    """What is stored of a subscriber's code (the Subscriber's fields)."""

    code_hash: str = ""
    sent_at: dt.datetime | None = None
    attempts: int = 0
    confirmed_at: dt.datetime | None = None


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    state: CodeState  # what to store now
    tries_left: int = 0


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def code_hash(code: str, *, token: str, phone: str) -> str:
    value = f"{token}:{phone}:{code}"
    return salted_hmac(KEY_SALT, value, algorithm="sha256").hexdigest()


def typed_code(text: str) -> str | None:
    """The six digits a person typed ("123 456", "123-456"), or None."""
    compact = _TYPED.sub("", text or "")
    if len(compact) == CODE_DIGITS and compact.isascii() and compact.isdigit():
        return compact
    return None


def issue(*, token: str, phone: str, now: dt.datetime) -> tuple[str, CodeState]:
    """A new code and the state to store: any earlier code is void, the
    count of tries starts again. The number is not confirmed until it is
    typed back (a changed number is never confirmed by an old code)."""
    code = new_code()
    return code, CodeState(code_hash=code_hash(code, token=token, phone=phone), sent_at=now)


def verify(
    state: CodeState,
    typed: str,
    *,
    token: str,
    phone: str,
    now: dt.datetime,
    ttl: float,
    max_attempts: int,
) -> Verdict:
    """Judge ``typed`` against the stored ``state``. The comparison takes the
    same time whatever the code (``hmac.compare_digest``)."""
    code = typed_code(typed)
    if not state.code_hash or state.sent_at is None:
        return Verdict(Outcome.NO_CODE, state)
    if (now - state.sent_at).total_seconds() > ttl:
        return Verdict(Outcome.EXPIRED, replace(state, code_hash=""))
    if code is None:
        return Verdict(Outcome.MALFORMED, state, tries_left=max_attempts - state.attempts)
    if hmac.compare_digest(code_hash(code, token=token, phone=phone), state.code_hash):
        confirmed = state.confirmed_at or now
        return Verdict(Outcome.CONFIRMED, CodeState(confirmed_at=confirmed))
    attempts = state.attempts + 1
    if attempts >= max_attempts:
        return Verdict(Outcome.EXHAUSTED, replace(state, code_hash="", attempts=attempts))
    return Verdict(
        Outcome.WRONG, replace(state, attempts=attempts), tries_left=max_attempts - attempts
    )


# --- The text ----------------------------------------------------------------


def code_text(code: str, *, minutes: int) -> str:
    """The SMS with the code, in Polish and in GSM-7 (one part of 160
    characters, not 70: the code never costs two)."""
    with translation.override("pl"):
        text = _(
            "Confirmation code for warnings of Gmina Głogów Małopolski: %(code)s. "
            "Valid for %(minutes)d min."
        ) % {"code": code, "minutes": minutes}
    return to_gsm7(text)


# --- Storage and sending -----------------------------------------------------


def state_of(subscriber: Subscriber) -> CodeState:
    return CodeState(
        code_hash=subscriber.phone_code_hash,
        sent_at=subscriber.phone_code_sent_at,
        attempts=subscriber.phone_code_attempts,
        confirmed_at=subscriber.phone_confirmed_at,
    )


def _store(subscriber: Subscriber, state: CodeState) -> None:
    subscriber.phone_code_hash = state.code_hash
    subscriber.phone_code_sent_at = state.sent_at
    subscriber.phone_code_attempts = state.attempts
    subscriber.phone_confirmed_at = state.confirmed_at
    subscriber.save(
        update_fields=[
            "phone_code_hash",
            "phone_code_sent_at",
            "phone_code_attempts",
            "phone_confirmed_at",
        ]
    )


def start(subscriber_pk: int, phone: str, *, now: dt.datetime, channel) -> Result:
    """Store a new code for the subscriber's number ``phone`` and text it
    through ``channel`` (``send_text``). Nothing is sent when the row's
    number is no longer ``phone``. A number already confirmed stays so."""
    with transaction.atomic():
        subscriber = Subscriber.objects.select_for_update().filter(pk=subscriber_pk).first()
        if subscriber is None or not subscriber.phone or subscriber.phone != phone:
            return Result(False, error="the number changed", permanent=True)
        code, state = issue(token=subscriber.token, phone=phone, now=now)
        _store(subscriber, replace(state, confirmed_at=subscriber.phone_confirmed_at))
    # A new key for every code: a retry of this one request is sent once,
    # a new code is a new message.
    key = f"code{subscriber_pk}x{secrets.token_hex(8)}"
    ttl = settings.ALERTS["PHONE_CODE_TTL_SECONDS"]
    result = channel.send_text(phone, code_text(code, minutes=max(1, ttl // 60)), key)
    if not result.ok:
        log.warning("the code to subscriber %s was not sent: %s", subscriber_pk, result.error)
    return result


def confirm(subscriber_pk: int, phone: str, typed: str, *, now: dt.datetime) -> Verdict:
    """Check a typed code for the subscriber's number ``phone`` and store
    the verdict. The row is locked while it is judged, so two tries sent at
    once are counted as two."""
    config = settings.ALERTS
    with transaction.atomic():
        subscriber = Subscriber.objects.select_for_update().filter(pk=subscriber_pk).first()
        if subscriber is None or not subscriber.phone or subscriber.phone != phone:
            return Verdict(Outcome.NO_CODE, CodeState())
        before = state_of(subscriber)
        verdict = verify(
            before,
            typed,
            token=subscriber.token,
            phone=phone,
            now=now,
            ttl=config["PHONE_CODE_TTL_SECONDS"],
            max_attempts=config["PHONE_CODE_MAX_ATTEMPTS"],
        )
        if verdict.state != before:
            _store(subscriber, verdict.state)
    return verdict
