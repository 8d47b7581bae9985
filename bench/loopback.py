"""The stand-ins for the outside world, each in a process of its own so they
do not share a CPU lock with what is measured: an SMTP server (aiosmtpd), an
SMS provider speaking SMSAPI.pl's protocol, and a Web Push service that checks
the VAPID signature and decrypts every message (tests/crisis).

    python -m bench.loopback smtp | smsapi [--token T] | push --n N --out FILE

prints ``ready <port>`` when it listens on 127.0.0.1; then each line
``stats`` on stdin is answered with one line of JSON; end of input stops it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections import Counter
from pathlib import Path


class Smtp:
    def __init__(self):
        from aiosmtpd.controller import Controller

        from bench.common import free_port

        self.received: Counter[str] = Counter()
        self.sessions: set[int] = set()
        self.lock = threading.Lock()
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                with box.lock:
                    box.sessions.add(id(session))
                    for rcpt in envelope.rcpt_tos:
                        box.received[rcpt] += 1
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())
        self.controller.start()
        self.port = self.controller.port

    def stats(self) -> dict:
        with self.lock:
            return {
                "messages": sum(self.received.values()),
                "recipients": len(self.received),
                "twice": sum(1 for n in self.received.values() if n > 1),
                "connections": len(self.sessions),
            }


class SmsApi:
    def __init__(self, token: str):
        from tests.crisis.sms_servers import FakeSmsApi

        self.server = FakeSmsApi(token).start()
        self.port = self.server.server.server_address[1]

    def stats(self) -> dict:
        accepted = self.server.accepted
        numbers = Counter(message["to"] for message in accepted)
        return {
            "messages": len(accepted),
            "recipients": len(numbers),
            "twice": sum(1 for n in numbers.values() if n > 1),
            "requests": self.server.requests,
            "connections": self.server.connections,
        }


class Push:
    """The push service, with ``n`` browser subscriptions made up front: their
    public parts (``PushSubscription.toJSON()``) are written to ``out``."""

    def __init__(self, n: int, out: str):
        from tests.crisis.push_server import PushService

        self.server = PushService().__enter__()
        self.port = self.server.port
        subscriptions = [self.server.subscribe().as_json() for _ in range(n)]
        Path(out).write_text(json.dumps(subscriptions))

    def stats(self) -> dict:
        received = self.server.received  # each one verified and decrypted
        endpoints = Counter(message.endpoint for message in received)
        return {
            "messages": len(received),
            "decrypted": len(received),
            "recipients": len(endpoints),
            "twice": sum(1 for n in endpoints.values() if n > 1),
            "refused": len(self.server.refused),
            "requests": self.server.requests,
        }


def main() -> None:
    # aiosmtpd logs every command at INFO: that would be measured too.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["smtp", "smsapi", "push"])
    parser.add_argument("--token", default="bench-token")
    parser.add_argument("--n", type=int, default=0, help="push: subscriptions to make")
    parser.add_argument("--out", help="push: where to write the subscriptions (JSON)")
    args = parser.parse_args()
    if args.kind == "smtp":
        server = Smtp()
    elif args.kind == "smsapi":
        server = SmsApi(args.token)
    else:
        server = Push(args.n, args.out)
    print(f"ready {server.port}", flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps(server.stats()), flush=True)


if __name__ == "__main__":
    main()
