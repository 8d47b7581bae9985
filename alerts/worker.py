"""The alerts worker: claims due deliveries from the outbox, sends them, and
records each result (``manage.py alerts_worker``; several may run)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connection

from alerts import outbox, reports
from alerts.channels import EmailChannel, Result
from alerts.push import WebPushChannel
from alerts.sms_providers import SerwerSmsChannel, configured_channel

log = logging.getLogger(__name__)


def default_channels() -> dict:
    """E-mail always; SMS when a provider is configured, Web Push when a
    VAPID key is (settings.ALERTS)."""
    channels = {"email": EmailChannel()}
    sms = configured_channel()
    if sms is not None:
        channels["sms"] = sms
    push = WebPushChannel.from_settings()
    if push is not None:
        channels["push"] = push
    return channels


# Results are written together: at most this many, or this old (seconds),
# before one transaction records them. A worker killed in between sends
# those again after their lease (providers with an idempotency key ignore
# the repeat).
RECORD_EVERY = 50
RECORD_WITHIN = 0.2


class RateLimit:
    """At most ``rate`` sends started per second, shared by a channel's
    threads (a token bucket holding up to one second's worth; 0: no limit).
    A caller that finds the bucket empty reserves the next token and sleeps
    until it is due, so waiting callers keep their order."""

    def __init__(self, rate: float, *, clock=time.monotonic, sleep=time.sleep):
        self.rate = rate
        self.burst = max(1.0, rate)
        self.clock = clock
        self.sleep = sleep
        self.tokens = self.burst
        self.last = clock()
        self.lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; returns the seconds to wait before using it."""
        if not self.rate:
            return 0.0
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= 1
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            self.sleep(wait)


class Lane:
    """One channel's sending: a thread pool as wide as its concurrency (one
    thread for a channel that is not safe to share) and its rate limit."""

    def __init__(self, name: str, channel, *, concurrency: int, rate: float):
        self.name = name
        self.channel = channel
        width = concurrency if getattr(channel, "concurrent", False) else 1
        self.pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix=f"alerts-{name}")
        self.limit = RateLimit(rate)
        self.width = width

    def _send(self, delivery) -> Result:
        self.limit.acquire()
        try:
            return self.channel.send(delivery)
        except Exception as exc:  # a bug in a channel must not stop the rest
            log.exception("delivery %s failed", delivery.pk)
            return Result(False, error=f"{type(exc).__name__}: {exc}")

    def prepare(self, alert) -> None:
        """Let the channel work out once what it sends for an alert, in the
        calling thread: the sending threads never touch the database."""
        prepare = getattr(self.channel, "prepare", None)
        if prepare is not None:
            prepare(alert)

    def submit(self, delivery) -> Future:
        return self.pool.submit(self._send, delivery)

    def batch(self, batch: int, lease: float) -> int:
        """How many to claim at once: no more than can start within half the
        lease at the rate limit, so a slow channel's rows are not claimed
        again by another worker while still waiting here."""
        if not self.limit.rate:
            return batch
        return max(1, min(batch, int(self.limit.rate * lease / 2)))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        close = getattr(self.channel, "close", None)
        if close:
            close()


def _limits(name: str) -> tuple[int, float]:
    config = settings.ALERTS
    key = name.upper()
    return config.get(f"{key}_CONCURRENCY", 1), config.get(f"{key}_RATE", 0.0)


class Worker:
    def __init__(self, *, name: str | None = None, channels: dict | None = None, clock=time.time):
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.channels = channels if channels is not None else default_channels()
        self.lanes = {}
        for channel_name, channel in self.channels.items():
            concurrency, rate = _limits(channel_name)
            self.lanes[channel_name] = Lane(
                channel_name, channel, concurrency=concurrency, rate=rate
            )
        self.clock = clock
        self._stopped = threading.Event()
        self._reports_polled: float | None = None  # when SerwerSMS was last asked

    def stop(self, *_args) -> None:
        self._stopped.set()

    def _claim(self) -> list:
        """Due deliveries of every configured channel (each within its own
        batch size), then of channels with none configured, to fail them."""
        claimed = []
        for name in self.lanes:
            claimed += self._claim_lane(name)
        return claimed + self._claim_unconfigured()

    def _claim_lane(self, name: str) -> list:
        config = settings.ALERTS
        batch, lease = config["BATCH"], config["LEASE_SECONDS"]
        return outbox.claim(
            self.name,
            now=self.clock(),
            batch=self.lanes[name].batch(batch, lease),
            lease=lease,
            channels=[name],
        )

    def _claim_unconfigured(self) -> list:
        config = settings.ALERTS
        return outbox.claim(
            self.name,
            now=self.clock(),
            batch=config["BATCH"],
            lease=config["LEASE_SECONDS"],
            exclude=list(self.lanes),
        )

    def _dispatch(self, batch: list) -> int:
        """Send what was claimed, each channel's share in its lane at once,
        and record the results as they come: together, in one transaction
        per :data:`RECORD_EVERY` results or :data:`RECORD_WITHIN` seconds.
        While sends are in hand their lease is renewed, so a slow provider
        never lets another worker take (and send again) what this one holds.
        On stop, what has not started yet is given back at once. Returns how
        many were claimed."""
        done: list[tuple[object, Result]] = []
        pending: dict[Future, object] = {}
        lease = settings.ALERTS["LEASE_SECONDS"]
        for delivery in batch:
            lane = self.lanes.get(delivery.channel)
            if delivery.channel not in outbox.channels_of(delivery.subscriber):
                # Unsubscribed (or the address removed) after the alert went out.
                done.append((delivery, Result(False, error="unsubscribed", permanent=True)))
            elif lane is None:
                error = f"no channel {delivery.channel} configured"
                done.append((delivery, Result(False, error=error)))
            else:
                lane.prepare(delivery.alert)  # here, where the database may be used
                pending[lane.submit(delivery)] = delivery
        flushed = renewed = time.monotonic()
        try:
            while pending:
                if self._stopped.is_set():
                    self._give_back(pending)
                finished, _ = wait(pending, timeout=RECORD_WITHIN, return_when=FIRST_COMPLETED)
                for future in finished:
                    done.append((pending.pop(future), future.result()))
                now = time.monotonic()
                if len(done) >= RECORD_EVERY or now - flushed >= RECORD_WITHIN:
                    self._record(done)
                    done, flushed = [], now
                if pending and now - renewed >= lease / 3:
                    outbox.renew(self.name, [d.pk for d in pending.values()], self.clock(), lease)
                    renewed = now
        finally:
            self._record(done)
        return len(batch)

    def _give_back(self, pending: dict) -> None:
        """Stopping: sends not started yet are cancelled and their rows
        queued again for another worker, now rather than after the lease."""
        cancelled = [pending.pop(f) for f in list(pending) if f.cancel()]
        if cancelled:
            outbox.release(self.name, [d.pk for d in cancelled])

    def _record(self, done: list) -> None:
        """Record results, trying again a few times if the database does not
        answer: a result not recorded means the message is sent again after
        the lease runs out."""
        for attempt in range(3):
            try:
                outbox.record(self.name, done, now=self.clock())
                return
            except Exception:
                if attempt == 2:
                    log.exception("alerts worker: could not record %d results", len(done))
                    return
                close_old_connections()
                time.sleep(0.5 * (attempt + 1))

    def run_once(self) -> int:
        """One round of everything: publish and expire what time says,
        claim every channel's due deliveries, send and record them. Returns
        how many were claimed."""
        outbox.tick_alerts(now=self.clock())
        return self._dispatch(self._claim())

    def _lane_loop(self, name: str) -> None:
        """One channel's own loop (a thread of :meth:`run`), so a slow
        channel never holds up a fast one."""
        poll = settings.ALERTS["POLL_SECONDS"]
        try:
            while not self._stopped.is_set():
                try:
                    close_old_connections()
                    claimed = self._dispatch(self._claim_lane(name))
                except Exception:
                    log.exception("alerts worker: %s batch failed; trying again", name)
                    claimed = 0
                if not claimed:
                    self._stopped.wait(poll)
        finally:
            connection.close()

    def run(self) -> None:
        """Until SIGTERM: each channel in its own loop; this thread publishes
        and expires what time says, fails deliveries of channels with no
        sender, asks SerwerSMS for delivery reports (:meth:`poll_reports`),
        and touches the heartbeat file."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("alerts worker %s started", self.name)
        config = settings.ALERTS
        heartbeat = config["HEARTBEAT_FILE"]
        loops = [
            threading.Thread(target=self._lane_loop, args=(name,), name=f"alerts-loop-{name}")
            for name in self.lanes
        ]
        for loop in loops:
            loop.start()
        while not self._stopped.is_set():
            # Alive only while every channel's loop is: a dead loop stops the
            # heartbeat, and the container is restarted.
            if heartbeat and all(loop.is_alive() for loop in loops):
                Path(heartbeat).touch()
            try:
                close_old_connections()
                outbox.tick_alerts(now=self.clock())
                self._dispatch(self._claim_unconfigured())
            except Exception:
                log.exception("alerts worker: a round failed; trying again")
            self.poll_reports()
            self._stopped.wait(config["POLL_SECONDS"])
        for loop in loops:
            loop.join()
        self.close()
        log.info("alerts worker %s stopped", self.name)

    def poll_reports(self) -> bool:
        """Ask SerwerSMS for its delivery reports (it has no callback we can
        read), at most every ``SMS_REPORT_POLL_SECONDS``; only when it is the
        configured SMS channel. A failure is logged and waits for the next
        interval. True when it asked."""
        sms = self.channels.get("sms")
        if not isinstance(sms, SerwerSmsChannel):
            return False
        now = self.clock()
        interval = settings.ALERTS["SMS_REPORT_POLL_SECONDS"]
        if not reports.poll_due(self._reports_polled, now, interval):
            return False
        self._reports_polled = now
        try:
            changed = reports.poll_serwersms(sms, now=now)
        except Exception:
            log.exception("alerts worker: asking SerwerSMS for delivery reports failed")
        else:
            if changed:
                log.info("alerts worker: %d SMS delivery reports from SerwerSMS", changed)
        return True

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()
