"""How a delivery goes out, per channel. Each ``send`` returns a
:class:`Result`; the worker records it (alerts.outbox)."""

from __future__ import annotations

import logging
import smtplib
import threading
from dataclasses import dataclass
from email.utils import make_msgid

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.utils.html import escape

from alerts.models import Delivery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    ok: bool
    provider_id: str = ""
    error: str = ""
    permanent: bool = False  # retrying cannot help (a refused address…)
    # The address is gone for good (a push subscription the push service
    # no longer knows): the worker removes it from the subscriber.
    forget_address: bool = False


def email_subject(alert) -> str:
    return f"[{alert.severity}] {alert.headline}"


def email_text(alert) -> str:
    lines = [alert.headline, "", alert.description]
    if alert.instruction:
        lines += ["", "Jak się zachować:", alert.instruction]
    return "\n".join(lines)


def email_html(alert) -> str:
    parts = [f"<h1>{escape(alert.headline)}</h1>", f"<p>{escape(alert.description)}</p>"]
    if alert.instruction:
        parts += ["<h2>Jak się zachować</h2>", f"<p>{escape(alert.instruction)}</p>"]
    return '<!DOCTYPE html><html lang="pl"><body>' + "".join(parts) + "</body></html>"


def _close_quietly(connection) -> None:
    try:
        connection.close()
    except Exception as exc:  # a broken connection may fail to say goodbye
        log.debug("closing a connection: %s", exc)


class PerThread:
    """One connection per sending thread (the worker sends from several at
    once): made by ``opener`` when a thread first asks, closed by ``closer``."""

    def __init__(self, opener, closer=_close_quietly):
        self._open_one, self._close_one = opener, closer
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list = []

    def get(self):
        """This thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._open_one()
            with self._lock:
                self._all.append(connection)
        return connection

    def drop(self) -> None:
        """Close this thread's connection (after a failure): the next
        :meth:`get` opens a new one."""
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._lock:
                if connection in self._all:
                    self._all.remove(connection)
            self._close_one(connection)

    def close_all(self) -> None:
        """Close every thread's connection (the worker is stopping)."""
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            self._close_one(connection)
        self._local = threading.local()


def _smtp_connection():
    connection = get_connection(fail_silently=False)
    connection.open()
    return connection


class EmailChannel:
    """SMTP with one connection kept open across messages per sending thread
    (reopened after a failure). Polish, plain text and HTML, with RFC 8058
    one-click unsubscribe headers."""

    concurrent = True

    def __init__(self):
        self._connections = PerThread(_smtp_connection)

    def close(self) -> None:
        self._connections.close_all()

    def send(self, delivery: Delivery) -> Result:
        alert, subscriber = delivery.alert, delivery.subscriber
        unsubscribe = f"{settings.PUBLIC_BASE_URL}/alerts/unsubscribe/{subscriber.token}"
        message_id = make_msgid(idstring=delivery.idempotency_key, domain="egmina.invalid")
        message = EmailMultiAlternatives(
            subject=email_subject(alert),
            body=email_text(alert) + f"\n\nRezygnacja z powiadomień: {unsubscribe}\n",
            from_email=settings.ALERTS["FROM_EMAIL"],
            to=[subscriber.email],
            headers={
                "List-Unsubscribe": f"<{unsubscribe}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                "Message-ID": message_id,
                "Content-Language": "pl",
            },
            connection=self._connections.get(),
        )
        message.attach_alternative(email_html(alert), "text/html")
        try:
            message.send()
        except smtplib.SMTPRecipientsRefused as exc:
            # The server's code and words, not the address (operators see errors).
            reasons = "; ".join(
                f"{code} {text.decode(errors='replace') if isinstance(text, bytes) else text}"
                for code, text in exc.recipients.values()
            )
            return Result(False, error=f"refused: {reasons}", permanent=True)
        except (smtplib.SMTPException, OSError) as exc:
            self._connections.drop()
            return Result(False, error=f"{type(exc).__name__}: {exc}")
        return Result(True, provider_id=message_id)
