"""Loopback SMS providers that speak SMSAPI.pl's and SerwerSMS.pl's protocols
(HTTP/1.1 keep-alive, Bearer tokens, their success and error bodies), for the
tests and the benchmark.

Both record every message they accepted (``accepted``) and can be told to
answer the next requests differently (``script``): an error body, an HTTP
error, or accepting the message and then dropping the connection without an
answer (what a timeout after the provider took the message looks like).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from alerts.sms import sms_length

SMSAPI_DUPLICATE_IDX = {
    "error": 53,
    "message": "Not unique idx parameter, message with the same idx has been already sent "
    "and &check_idx=1.",
}


@dataclass
class Step:
    """What to do with the next request: ``kind`` is ``"json"`` (answer
    ``body`` as JSON with ``status``), ``"text"`` (answer ``body`` as plain
    text), ``"accept_then_drop"`` (take the message, close without an
    answer), or ``"close_after_reply"`` (answer normally, then close the
    connection unannounced, as an idle keep-alive timeout does)."""

    kind: str
    body: object = None
    status: int = 200


@dataclass
class _State:
    token: str
    accepted: list[dict] = field(default_factory=list)
    requests: int = 0
    connections: int = 0
    script: deque = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_id: int = 1000
    # SerwerSMS messages/reports: what it says about a message (set by the
    # test; "sent" for an accepted one otherwise), and every query it got.
    reports: dict[str, dict] = field(default_factory=dict)
    report_queries: list[dict] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs
    # Headers and body go out in two writes: without TCP_NODELAY the second
    # waits for the client's delayed ACK (40 ms a message), which no real
    # provider's server makes anyone wait.
    disable_nagle_algorithm = True
    server_version = "fake-sms"

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.connections += 1

    @property
    def state(self) -> _State:
        return self.server.state

    def reply(self, status: int, body: object, content_type: str = "application/json") -> None:
        data = (
            json.dumps(body).encode()
            if content_type == "application/json"
            else str(body).encode("utf-8")
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def drop(self) -> None:
        self.close_connection = True

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.state.token}"

    def new_id(self) -> str:
        with self.state.lock:
            self.state.next_id += 1
            return f"{self.state.next_id:x}{int(time.time())}"

    def scripted(self) -> Step | None:
        with self.state.lock:
            self.state.requests += 1
            return self.state.script.popleft() if self.state.script else None

    def play(self, step: Step) -> None:
        if step.kind == "json":
            self.reply(step.status, step.body)
        else:
            self.reply(step.status, step.body, "text/plain; charset=utf-8")


class _SmsApiHandler(_Handler):
    """``POST /sms.do``: form fields, ``format=json``, ``idx`` + ``check_idx``."""

    def do_POST(self) -> None:
        body = self.read_body()
        if self.path.split("?")[0] != "/sms.do":
            return self.reply(404, {"error": 8, "message": "Not found"})
        if not self.authorized():
            return self.reply(401, {"error": 101, "message": "Authorization failed"})
        step = self.scripted()
        if step is not None and step.kind == "close_after_reply":
            self.close_connection = True  # no "Connection: close" header
            step = None
        if step is not None and step.kind != "accept_then_drop":
            return self.play(step)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
        json_format = form.get("format") == "json"

        def error(code: int, message: str) -> None:
            if json_format:
                self.reply(200, {"error": code, "message": message})  # HTTP 200, as SMSAPI
            else:
                self.reply(200, f"ERROR:{code}", "text/plain")

        to, message = form.get("to", ""), form.get("message", "")
        if not message:
            return error(11, "Message is empty")
        if not re.fullmatch(r"48[1-9][0-9]{8}", to):
            return error(13, "No correct phone numbers")
        if to in self.server.blacklist:
            return error(57, "The number is blacklisted for this user")
        parts = sms_length(message).segments
        if parts > int(form.get("max_parts") or 6):
            return error(12, "Too many parts")
        idx = form.get("idx", "")
        with self.state.lock:
            if idx and form.get("check_idx") == "1" and idx in self.server.seen_idx:
                duplicate = True
            else:
                duplicate = False
                if idx:
                    self.server.seen_idx.add(idx)
        if duplicate:
            return self.reply(200, SMSAPI_DUPLICATE_IDX) if json_format else error(53, "")
        message_id = self.new_id()
        with self.state.lock:
            self.state.accepted.append({**form, "id": message_id, "parts": parts})
        if step is not None:  # accept_then_drop
            return self.drop()
        item = {
            "id": message_id,
            "points": 0.16 * parts,
            "number": to,
            "date_sent": int(time.time()),
            "submitted_number": to,
            "status": "QUEUED",
            "error": None,
            "idx": idx or None,
            "parts": parts,
        }
        if json_format:
            self.reply(200, {"count": 1, "list": [item]})
        else:
            self.reply(200, f"OK:{message_id}:{item['points']}", "text/plain")


class _SerwerSmsHandler(_Handler):
    """``POST /messages/send_sms.json`` and ``/messages/reports.json`` (JSON)."""

    def do_POST(self) -> None:
        body = self.read_body()
        path = self.path.split("?")[0]
        if not self.authorized():
            return self.reply(
                401,
                {
                    "success": False,
                    "error": {
                        "code": 1001,
                        "type": "AuthenticationError",
                        "message": "Unauthorized",
                    },
                },
            )
        try:
            payload = json.loads(body.decode("utf-8"))
        except ValueError:
            return self.reply(
                400, {"error": {"code": 2000, "type": "InvalidRequest", "message": "Bad JSON"}}
            )
        if path == "/messages/reports.json":
            return self.reports(payload)
        if path != "/messages/send_sms.json":
            return self.reply(404, {"error": {"code": 404, "type": "NotFound", "message": ""}})
        step = self.scripted()
        if step is not None and step.kind == "close_after_reply":
            self.close_connection = True  # no "Connection: close" header
            step = None
        if step is not None and step.kind != "accept_then_drop":
            return self.play(step)
        phone, text = str(payload.get("phone", "")), str(payload.get("text", ""))
        uid = payload.get("unique_id")
        if uid is not None and not re.fullmatch(r"[A-Za-z0-9]{3,50}", str(uid)):
            return self.reply(
                400,
                {"error": {"code": 2101, "type": "InvalidParameter", "message": "unique_id"}},
            )
        if not re.fullmatch(r"\+?(48)?[1-9][0-9]{8}", phone) or phone in self.server.blacklist:
            item = {
                "id": None,
                "phone": phone,
                "status": "unsent",
                "error_code": 2105,
                "error_message": "Wrong number",
            }
            return self.reply(200, {"success": True, "queued": 0, "unsent": 1, "items": [item]})
        parts = sms_length(text).segments
        message_id = self.new_id()
        with self.state.lock:
            self.state.accepted.append({**payload, "id": message_id, "parts": parts})
        if step is not None:  # accept_then_drop
            return self.drop()
        item = {
            "id": message_id,
            "phone": phone,
            "status": "queued",
            "queued": time.strftime("%Y-%m-%d %H:%M:%S"),
            "parts": parts,
            "text": text,
        }
        self.reply(200, {"success": True, "queued": 1, "unsent": 0, "items": [item]})

    def reports(self, payload: dict) -> None:
        """``id`` and ``unique_id`` each one value or a list; ``limit`` items
        a page (default 50), ``page`` from 1; ``paging.count`` is the number
        of pages."""

        def wanted(key: str) -> set[str]:
            value = payload.get(key)
            values = value if isinstance(value, list) else [value] if value else []
            return {str(v) for v in values}

        ids, uids = wanted("id"), wanted("unique_id")
        with self.state.lock:
            self.state.report_queries.append(payload)
            messages = {
                m["id"]: {"id": m["id"], "phone": m["phone"], "status": "sent", "parts": m["parts"]}
                for m in self.state.accepted
                if m.get("unique_id") in uids or m["id"] in ids
            }
            for message_id, report in self.state.reports.items():
                if message_id in ids or message_id in messages:
                    messages[message_id] = {
                        **messages.get(message_id, {"id": message_id, "parts": 1}),
                        **report,
                    }
        found = list(messages.values())
        limit = max(1, int(payload.get("limit") or 50))
        page = max(1, int(payload.get("page") or 1))
        pages = max(1, -(-len(found) // limit))
        items = found[(page - 1) * limit : page * limit]
        self.reply(200, {"paging": {"page": page, "count": pages}, "items": items})


class FakeProvider:
    """A loopback provider on a free port; ``with FakeSmsApi(token) as api:``."""

    handler: type[_Handler]
    provider: str  # its name in ALERTS_SMS_PROVIDER

    def __init__(self, token: str = "test-token"):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.server.daemon_threads = True
        self.server.state = _State(token=token)
        self.server.seen_idx = set()
        self.server.blacklist = set()
        # A short poll: stop() (shutdown) waits for it, once per test.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def accepted(self) -> list[dict]:
        with self.server.state.lock:
            return list(self.server.state.accepted)

    @property
    def requests(self) -> int:
        return self.server.state.requests

    @property
    def connections(self) -> int:
        return self.server.state.connections

    @property
    def blacklist(self) -> set[str]:
        return self.server.blacklist

    def settings(self, alerts: dict) -> dict:
        """``settings.ALERTS`` with this server as the configured provider
        (alerts.sms_providers.configured_channel)."""
        return {
            **alerts,
            "SMS_PROVIDER": self.provider,
            "SMS_BASE_URL": self.url,
            "SMS_TOKEN": self.server.state.token,
        }

    def then(self, *steps: Step) -> None:
        """Answer the next send requests with these steps, in order."""
        with self.server.state.lock:
            self.server.state.script.extend(steps)

    def start(self) -> FakeProvider:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class FakeSmsApi(FakeProvider):
    handler = _SmsApiHandler

    provider = "smsapi"


class FakeSerwerSms(FakeProvider):
    handler = _SerwerSmsHandler

    provider = "serwersms"

    def report(self, message_id: str, status: str, **fields) -> None:
        """From now on ``messages/reports`` says this about the message
        (``status``: delivered, undelivered, sent, pending…; ``fields``:
        ``reason`` and the like), whether it was sent here or not."""
        with self.server.state.lock:
            self.server.state.reports[message_id] = {"status": status, **fields}

    @property
    def report_queries(self) -> list[dict]:
        """The payloads of every ``messages/reports`` request, in order."""
        with self.server.state.lock:
            return list(self.server.state.report_queries)
