"""The stand-ins for the outside world, each in a process of its own so they
do not share a CPU lock with what is measured: an SMTP server (aiosmtpd), an
SMS provider speaking SMSAPI.pl's protocol, and a Web Push service that checks
the VAPID signature and decrypts every message (tests/crisis).

    python -m bench.loopback smtp | smsapi [--token T] | push --n N --out FILE
                             [--latency-ms MS]

prints ``ready <port>`` when it listens on 127.0.0.1. Then, on stdin, each
line ``mark`` remembers how many messages each recipient has had, and each
line ``stats`` is answered with one line of JSON about the messages since the
mark; end of input stops it. ``--latency-ms`` makes every answer wait that
long, as a provider across the internet does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
from collections import Counter
from pathlib import Path


def delayed(handler: type, seconds: float) -> type:
    """An http.server handler class that waits ``seconds`` before answering."""

    class Delayed(handler):
        def do_POST(self):
            time.sleep(seconds)
            return super().do_POST()

    return Delayed


class Smtp:
    def __init__(self, latency: float):
        from aiosmtpd.controller import Controller

        from bench.common import free_port

        self.received: Counter[str] = Counter()
        self.lock = threading.Lock()
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                if latency:
                    await asyncio.sleep(latency)
                with box.lock:
                    for rcpt in envelope.rcpt_tos:
                        box.received[rcpt] += 1
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())
        self.controller.start()
        self.port = self.controller.port

    def counts(self) -> Counter:
        with self.lock:
            return Counter(self.received)


class SmsApi:
    def __init__(self, token: str, latency: float):
        from tests.crisis.sms_servers import FakeSmsApi

        self.server = FakeSmsApi(token)
        if latency:
            http = self.server.server
            http.RequestHandlerClass = delayed(http.RequestHandlerClass, latency)
        self.server.start()
        self.port = self.server.server.server_address[1]

    def counts(self) -> Counter:
        return Counter(message["to"] for message in self.server.accepted)


class Push:
    """The push service, with ``n`` browser subscriptions made up front: their
    public parts (``PushSubscription.toJSON()``) are written to ``out``. It
    accepts a message only after checking its VAPID signature and decrypting
    it with the subscription's private key."""

    def __init__(self, n: int, out: str, latency: float):
        from tests.crisis.push_server import PushService

        self.server = PushService()
        if latency:
            http = self.server.server
            http.RequestHandlerClass = delayed(http.RequestHandlerClass, latency)
        self.server.__enter__()
        self.port = self.server.port
        subscriptions = [self.server.subscribe().as_json() for _ in range(n)]
        Path(out).write_text(json.dumps(subscriptions))

    def counts(self) -> Counter:
        return Counter(message.endpoint for message in self.server.received)


def since(now: Counter, mark: Counter) -> dict:
    """Messages since the mark: how many, to how many recipients, and how
    many recipients got more than one."""
    new = {key: now[key] - mark.get(key, 0) for key in now}
    return {
        "messages": sum(new.values()),
        "recipients": sum(1 for n in new.values() if n > 0),
        "twice": sum(1 for n in new.values() if n > 1),
    }


def main() -> None:
    # aiosmtpd logs every command at INFO: that would be measured too.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["smtp", "smsapi", "push"])
    parser.add_argument("--token", default="bench-token")
    parser.add_argument("--n", type=int, default=0, help="push: subscriptions to make")
    parser.add_argument("--out", help="push: where to write the subscriptions (JSON)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before answering")
    args = parser.parse_args()
    latency = args.latency_ms / 1000
    if args.kind == "smtp":
        server = Smtp(latency)
    elif args.kind == "smsapi":
        server = SmsApi(args.token, latency)
    else:
        server = Push(args.n, args.out, latency)
    print(f"ready {server.port}", flush=True)
    mark: Counter = Counter()
    for line in sys.stdin:
        command = line.strip()
        if command == "mark":
            mark = server.counts()
        elif command == "stats":
            print(json.dumps(since(server.counts(), mark)), flush=True)


if __name__ == "__main__":
    main()
