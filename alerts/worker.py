"""The alerts worker: claims due deliveries from the outbox, sends them, and
records each result (``manage.py alerts_worker``; several may run)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import time
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections

from alerts import outbox
from alerts.channels import EmailChannel, Result

log = logging.getLogger(__name__)


def default_channels() -> dict:
    """E-mail always; SMS when a provider is configured (settings.ALERTS)."""
    channels = {"email": EmailChannel()}
    config = settings.ALERTS
    provider = config["SMS_PROVIDER"]
    if provider:
        from alerts.sms_providers import SerwerSmsChannel, SmsApiChannel, SmsConfig

        base = (
            config["SMS_BASE_URL"]
            or {
                "smsapi": "https://api.smsapi.pl",
                "serwersms": "https://api2.serwersms.pl",
            }[provider]
        )
        secret = config["SMS_CALLBACK_SECRET"]
        notify = (
            f"{settings.PUBLIC_BASE_URL}/alerts/sms/smsapi/{secret}/report"
            if provider == "smsapi" and secret
            else ""
        )
        sms = SmsConfig(
            base_url=base,
            token=config["SMS_TOKEN"],
            sender=config["SMS_SENDER"],
            public_base_url=settings.PUBLIC_BASE_URL,
            notify_url=notify,
            max_parts=config["SMS_MAX_PARTS"],
            transliterate=config["SMS_TRANSLITERATE"],
            timeout=config["SMS_TIMEOUT"],
            test=config["SMS_TEST"],
        )
        channels["sms"] = (SmsApiChannel if provider == "smsapi" else SerwerSmsChannel)(sms)
    return channels


class Worker:
    def __init__(self, *, name: str | None = None, channels: dict | None = None, clock=time.time):
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.channels = channels if channels is not None else default_channels()
        self.clock = clock
        self.stopping = False

    def stop(self, *_args) -> None:
        self.stopping = True

    def run_once(self) -> int:
        """One batch: claim, send, record. Returns how many were claimed."""
        config = settings.ALERTS
        outbox.tick_alerts(now=self.clock())
        batch = outbox.claim(
            self.name, now=self.clock(), batch=config["BATCH"], lease=config["LEASE_SECONDS"]
        )
        for delivery in batch:
            channel = self.channels.get(delivery.channel)
            if delivery.channel not in outbox.channels_of(delivery.subscriber):
                # Unsubscribed (or the address removed) after the alert went out.
                result = Result(False, error="unsubscribed", permanent=True)
            elif channel is None:
                result = Result(False, error=f"no channel {delivery.channel} configured")
            else:
                try:
                    result = channel.send(delivery)
                except Exception as exc:  # a bug in a channel must not stop the rest
                    log.exception("delivery %s failed", delivery.pk)
                    result = Result(False, error=f"{type(exc).__name__}: {exc}")
            now = self.clock()
            if result.ok:
                outbox.sent(delivery, self.name, now=now, provider_id=result.provider_id)
            else:
                outbox.failed(
                    delivery, self.name, now=now, error=result.error, permanent=result.permanent
                )
        return len(batch)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("alerts worker %s started", self.name)
        heartbeat = settings.ALERTS["HEARTBEAT_FILE"]
        while not self.stopping:
            if heartbeat:
                Path(heartbeat).touch()
            close_old_connections()
            try:
                claimed = self.run_once()
            except Exception:
                log.exception("alerts worker: batch failed; trying again")
                claimed = 0
                time.sleep(settings.ALERTS["POLL_SECONDS"])
            if not claimed:
                time.sleep(settings.ALERTS["POLL_SECONDS"])
        for channel in self.channels.values():
            close = getattr(channel, "close", None)
            if close:
                close()
        log.info("alerts worker %s stopped", self.name)
