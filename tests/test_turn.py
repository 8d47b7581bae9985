"""signaling.turn: time-limited TURN credentials (TURN REST API) and the ICE server list.

The unit tests check the scheme against an independent computation of
base64(HMAC-SHA1(secret, username)). The integration tests run Debian's real
coturn (``turnserver``) on 127.0.0.1 with ``use-auth-secret`` and relay video
between two aiortc peers that may use relay candidates only, with credentials
the hub issued; expired credentials are refused by that same server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import random
import re
import secrets
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from aioice import stun, turn
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcicetransport import connection_kwargs
from av import VideoFrame
from django.test import override_settings
from test_settings import run_manage

from signaling.turn import ice_servers, opaque_id, turn_credentials

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.75  # a fixed clock: time is injected, never waited for
TURN_URL = "turn:turn.example.gmina.pl:3478?transport=udp"


def independent_credential(secret: str, username: str) -> str:
    """The password coturn expects, computed here without signaling.turn."""
    return base64.b64encode(
        hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    ).decode()


# --- The credential scheme ------------------------------------------------------------


@override_settings(
    TURN_SECRET="s3cret", TURN_URLS=[TURN_URL], STUN_URLS=[], TURN_CREDENTIAL_TTL=3600
)
def test_username_is_expiry_then_an_opaque_id():
    [turn] = ice_servers("user:42", now=NOW)
    expiry, _, user_id = turn["username"].partition(":")
    assert expiry == str(int(NOW) + 3600)
    assert re.fullmatch(r"[0-9a-f]{16}", user_id), turn["username"]
    # The same person gets the same id (coturn's per-user quota, log matching)...
    assert ice_servers("user:42", now=NOW + 50)[0]["username"].endswith(f":{user_id}")
    # ...another person another one...
    assert not ice_servers("user:43", now=NOW)[0]["username"].endswith(f":{user_id}")
    # ...and it is keyed with the hub's SECRET_KEY, which coturn does not know: a plain
    # hash of "user:42" (which anyone holding the TURN secret could compute) it is not.
    for plain in (hashlib.sha256(b"user:42").hexdigest(), hashlib.sha1(b"user:42").hexdigest()):
        assert not plain.startswith(user_id)
    with override_settings(SECRET_KEY="another-" + "k" * 50):
        assert opaque_id("user:42") != user_id


@override_settings(
    TURN_SECRET="s3cret", TURN_URLS=[TURN_URL], STUN_URLS=[], TURN_CREDENTIAL_TTL=3600
)
def test_the_raw_principal_never_leaves_the_hub():
    for principal in ("user:9876543", "guest:Jan Kowalski", "user:1"):
        [turn] = ice_servers(principal, now=NOW)
        assert principal not in turn["username"]
        assert turn["username"].partition(":")[2] != principal.partition(":")[2]
        # coturn splits the username at the first ":"; the id part holds none.
        assert turn["username"].count(":") == 1
    assert "9876543" not in ice_servers("user:9876543", now=NOW)[0]["username"]


@override_settings(
    TURN_SECRET="s3cret", TURN_URLS=[TURN_URL], STUN_URLS=[], TURN_CREDENTIAL_TTL=3600
)
def test_credential_is_base64_hmac_sha1_of_the_username():
    [turn] = ice_servers("user:42", now=NOW)
    assert turn["credential"] == independent_credential("s3cret", turn["username"])
    # A known vector, so that a change of encoding (hex, urlsafe, SHA-256) is caught.
    assert (
        independent_credential("s3cret", "1800003600:abc")
        == base64.b64encode(hmac.new(b"s3cret", b"1800003600:abc", "sha1").digest()).decode()
    )
    with override_settings(TURN_SECRET="other"):
        [other] = ice_servers("user:42", now=NOW)
    assert other["username"] == turn["username"]
    assert other["credential"] != turn["credential"]


@override_settings(
    TURN_SECRET="s3cret", TURN_URLS=[TURN_URL], STUN_URLS=[], TURN_CREDENTIAL_TTL=7200
)
def test_expiry_is_now_plus_the_ttl():
    assert turn_credentials("user:42", now=NOW).expires_at == int(NOW) + 7200
    creds = turn_credentials("user:42", ttl=60, now=NOW)
    assert creds.expires_at == int(NOW) + 60
    assert creds.username.startswith(f"{int(NOW) + 60}:")
    assert creds.credential == independent_credential("s3cret", creds.username)
    # Without ``now`` the real clock is used.
    before = int(time.time())
    live = turn_credentials("user:42")
    assert before + 7200 <= live.expires_at <= int(time.time()) + 7200


@override_settings(TURN_SECRET="", TURN_URLS=[TURN_URL], STUN_URLS=[])
def test_no_turn_entry_without_a_secret():
    assert ice_servers("user:42", now=NOW) == []
    with pytest.raises(ValueError, match="TURN_SECRET"):
        turn_credentials("user:42", now=NOW)


@override_settings(TURN_SECRET="s3cret", TURN_URLS=[], STUN_URLS=[])
def test_no_turn_entry_without_turn_urls():
    assert ice_servers("user:42", now=NOW) == []


STUNS = ["stun:turn.example.gmina.pl:3478", "stun:192.0.2.7:3478"]


@override_settings(TURN_SECRET="", TURN_URLS=[], STUN_URLS=STUNS)
def test_stun_urls_are_passed_through_without_credentials():
    assert ice_servers("user:42", now=NOW) == [{"urls": STUNS}]


TURNS = [TURN_URL, "turn:turn.example.gmina.pl:3478?transport=tcp"]


@override_settings(TURN_SECRET="s3cret", TURN_URLS=TURNS, STUN_URLS=STUNS[:1])
def test_stun_and_turn_together_in_the_browsers_format():
    servers = ice_servers("user:42", now=NOW)
    assert servers[0] == {"urls": STUNS[:1]}
    assert set(servers[1]) == {"urls", "username", "credential"}
    assert servers[1]["urls"] == TURNS
    # aiortc reads the same dictionaries (RTCIceServer's fields are the browser's names).
    kwargs = connection_kwargs([RTCIceServer(**server) for server in servers])
    assert kwargs["stun_server"] == ("turn.example.gmina.pl", 3478)
    assert kwargs["turn_server"] == ("turn.example.gmina.pl", 3478)
    assert kwargs["turn_username"] == servers[1]["username"]
    assert kwargs["turn_password"] == servers[1]["credential"]


def test_defaults_use_no_outside_server():
    """Nothing set: no STUN/TURN at all (no public Google STUN), 12 h credentials."""
    code = (
        "from django.conf import settings as s;"
        "print(repr((s.STUN_URLS, s.TURN_URLS, s.TURN_SECRET, s.TURN_CREDENTIAL_TTL)))"
    )
    result = run_manage("shell", "-v", "0", "-c", code, env={"HUB_ENV": "development"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "([], [], '', 43200)"


# --- Settings: loud at start ------------------------------------------------------------


PRODUCTION = {
    "HUB_ENV": "production",
    "SECRET_KEY": "a-long-random-production-secret-" + "x" * 40,
    "ALLOWED_HOSTS": "e-uslugi.example.gov.pl",
    "DATABASE_URL": "postgres://hub@127.0.0.1:5432/hub",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "TURN_URLS": "turn:203.0.113.10:3478?transport=udp,turn:203.0.113.10:3478?transport=tcp",
}


def test_production_refuses_turn_urls_without_a_secret():
    result = run_manage("check", env={**PRODUCTION, "TURN_SECRET": ""})
    assert result.returncode != 0
    assert "TURN_SECRET must be set in production" in result.stderr


def test_production_with_turn_urls_and_secret_starts():
    code = "from django.conf import settings as s; print(len(s.TURN_URLS), bool(s.TURN_SECRET))"
    env = {**PRODUCTION, "TURN_SECRET": "f" * 64}
    result = run_manage("shell", "-v", "0", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "True"]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TURN_URLS", "stun:203.0.113.10:3478", "TURN_URLS: 'stun:203.0.113.10:3478'"),
        ("STUN_URLS", "203.0.113.10:3478", "STUN_URLS: '203.0.113.10:3478'"),
        ("TURN_CREDENTIAL_TTL", "30", "TURN_CREDENTIAL_TTL=30 is below the minimum 60"),
    ],
)
def test_bad_ice_settings_fail_at_start(name, value, message):
    result = run_manage("check", env={"HUB_ENV": "development", name: value})
    assert result.returncode != 0
    assert message in result.stderr


# --- A real coturn ------------------------------------------------------------------------

TURNSERVER_MISSING = (
    "coturn's turnserver is not installed: `apt-get install coturn` (Debian). These tests "
    "relay media through the real server and fail rather than skip without it."
)
REALM = "egmina.test"
RELAY_PORTS = 20  # each relayed peer holds one


def turnserver_binary() -> str:
    binary = shutil.which("turnserver") or (
        "/usr/bin/turnserver" if os.path.exists("/usr/bin/turnserver") else None
    )
    if binary is None:
        pytest.fail(TURNSERVER_MISSING)
    return binary


def udp_port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_udp_port_range(count: int) -> int:
    """The first of ``count`` free UDP ports on 127.0.0.1, below the kernel's ephemeral
    range (32768-60999 on Linux), so that no other socket is handed one meanwhile."""
    for _ in range(200):
        first = random.randrange(20000, 32000 - count)
        if all(udp_port_is_free(port) for port in range(first, first + count)):
            return first
    raise RuntimeError("no free range of UDP ports on 127.0.0.1")


def stun_binding_answered(port: int) -> bool:
    """Whether a STUN Binding request (RFC 5389 section 6) to 127.0.0.1:port is answered."""
    transaction = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(request, ("127.0.0.1", port))
        try:
            data, _ = sock.recvfrom(2048)
        except OSError:  # timeout, or ICMP port unreachable while coturn starts
            return False
    return data[:2] == b"\x01\x01" and data[8:20] == transaction


@dataclass
class Coturn:
    port: int
    secret: str
    min_port: int
    max_port: int
    log_path: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log(), re.MULTILINE)
            if match or time.monotonic() > deadline:
                assert match, f"coturn's log lacks {pattern!r}:\n{self.log()[-4000:]}"
                return match
            await asyncio.sleep(0.05)


@pytest.fixture
def coturn(tmp_path):
    """coturn with use-auth-secret on 127.0.0.1 only, configured on the command line
    (-n: no turnserver.conf), with its log, pid file and database in tmp_path."""
    binary = turnserver_binary()
    secret = secrets.token_hex(32)
    first = free_udp_port_range(RELAY_PORTS + 1)
    port, min_port, max_port = first, first + 1, first + RELAY_PORTS
    log_path = tmp_path / "turnserver.log"
    argv = [
        binary,
        "-n",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        f"--min-port={min_port}",
        f"--max-port={max_port}",
        # The peers here are on loopback, which coturn refuses by default (and
        # docker/turnserver.conf refuses on purpose).
        "--allow-loopback-peers",
        "--use-auth-secret",
        f"--static-auth-secret={secret}",
        f"--realm={REALM}",
        "--fingerprint",
        "--no-tcp",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        f"--log-file={log_path}",
        "--simple-log",
        "--verbose",  # logs each request with its username and result
        f"--pidfile={tmp_path / 'turnserver.pid'}",
        f"--userdb={tmp_path / 'turndb'}",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = Coturn(port, secret, min_port, max_port, log_path, process)
    try:
        deadline = time.monotonic() + 15
        while not stun_binding_answered(port):
            if process.poll() is not None:
                log = log_path.read_text() if log_path.exists() else ""
                pytest.fail(f"turnserver exited with {process.returncode}:\n{log[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"turnserver did not answer STUN on 127.0.0.1:{port}")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class BrightVideoTrack(VideoStreamTrack):
    """A synthetic video track: 320x240 frames at 30 fps, luma 200 everywhere.

    aiortc's own VideoStreamTrack sends all-zero frames; frames this bright on the
    receiving side show that real pixels went through the encoder and the relay."""

    LUMA = 200

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=320, height=240, format="yuv420p")
        for plane, value in zip(frame.planes, (self.LUMA, 128, 128), strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        frame.pts = pts
        frame.time_base = time_base
        return frame


def mean_luma(frame) -> float:
    plane = frame.planes[0]
    data = bytes(plane)
    rows = [
        data[y * plane.line_size : y * plane.line_size + plane.width] for y in range(plane.height)
    ]
    return sum(sum(row) for row in rows) / (plane.width * plane.height)


def relay_only_peer(servers: list[dict]):
    """An RTCPeerConnection that gathers and uses relay candidates only.

    aiortc 1.16 has iceTransportPolicy: with RELAY, aioice gathers no host or
    server-reflexive candidates (RFC 9429 section 3.5.3) and hides the related
    address of the relayed one."""
    return RTCPeerConnection(
        RTCConfiguration(
            iceServers=[RTCIceServer(**server) for server in servers],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        )
    )


def candidates(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


def ice_connection(pc):
    """aioice's Connection under a peer connection (one transport: bundled)."""
    return pc.getTransceivers()[0].receiver.transport.transport._connection


async def negotiate(offerer, answerer) -> tuple[str, str]:
    await offerer.setLocalDescription(await offerer.createOffer())
    offer = offerer.localDescription
    await answerer.setRemoteDescription(offer)
    await answerer.setLocalDescription(await answerer.createAnswer())
    answer = answerer.localDescription
    await offerer.setRemoteDescription(answer)
    return offer.sdp, answer.sdp


def hub_ice_servers(coturn: Coturn, principal: str, *, now: float | None = None) -> list[dict]:
    with override_settings(TURN_SECRET=coturn.secret, TURN_URLS=[coturn.url], STUN_URLS=[]):
        return ice_servers(principal, now=now)


@pytest.mark.integration
async def test_media_is_relayed_through_coturn_with_hub_credentials(coturn):
    sender_servers = hub_ice_servers(coturn, "user:7")
    receiver_servers = hub_ice_servers(coturn, "guest:ab12")
    sender, receiver = relay_only_peer(sender_servers), relay_only_peer(receiver_servers)
    frames = []
    enough = asyncio.get_running_loop().create_future()
    readers: list[asyncio.Task] = []

    @receiver.on("track")
    def on_track(track):
        async def read():
            with contextlib.suppress(MediaStreamError):
                while len(frames) < 10:
                    frames.append(await track.recv())
            if not enough.done():
                enough.set_result(None)

        readers.append(asyncio.ensure_future(read()))

    try:
        sender.addTrack(BrightVideoTrack())
        offer, answer = await negotiate(sender, receiver)
        # Only relay candidates, on coturn's relay ports, were offered on both sides.
        for sdp in (offer, answer):
            found = candidates(sdp)
            assert found, sdp
            for line in found:
                host, port, typ = re.search(r" (\S+) (\d+) typ (\w+)", line).groups()
                assert (host, typ) == ("127.0.0.1", "relay"), line
                assert coturn.min_port <= int(port) <= coturn.max_port, line

        await asyncio.wait_for(enough, timeout=20)
        assert len(frames) >= 10
        for frame in frames:
            assert (frame.width, frame.height) == (320, 240)
        assert abs(mean_luma(frames[-1]) - BrightVideoTrack.LUMA) < 10

        # The pair ICE selected is relay to relay on both peers.
        for pc in (sender, receiver):
            nominated = ice_connection(pc)._nominated
            assert set(nominated) == {1}, nominated
            pair = nominated[1]
            assert pair.local_candidate.type == "relay", pair
            assert pair.remote_candidate.type == "relay", pair
            for _, port in (pair.local_addr, pair.remote_addr):
                assert coturn.min_port <= port <= coturn.max_port, pair
    finally:
        await sender.close()
        await receiver.close()
        for reader in readers:
            reader.cancel()

    # coturn authenticated both hub-issued usernames, allocated relays and let them
    # reach each other (channel bindings install the permissions).
    for servers in (sender_servers, receiver_servers):
        username = re.escape(servers[0]["username"])
        await coturn.wait_for_log(
            rf"user <{username}>: incoming packet ALLOCATE processed, success"
        )
        permitted = "(CHANNEL_BIND|CREATE_PERMISSION) processed, success"
        await coturn.wait_for_log(rf"user <{username}>: incoming packet {permitted}")


@pytest.mark.integration
async def test_expired_credentials_are_refused_by_coturn(coturn):
    # Control: fresh credentials from the same hub and server work, so any failure
    # below comes from the expiry, not from the setup.
    fresh = hub_ice_servers(coturn, "user:7")[0]
    control = relay_only_peer([fresh])
    try:
        control.addTransceiver("video")
        await control.setLocalDescription(await control.createOffer())
        assert any("typ relay" in line for line in candidates(control.localDescription.sdp))
    finally:
        await control.close()

    # Issued two hours ago with a one hour lifetime: expired an hour ago...
    issued = time.time() - 7200
    with override_settings(TURN_CREDENTIAL_TTL=3600):
        expired = hub_ice_servers(coturn, "user:7", now=issued)[0]
    expiry = int(expired["username"].partition(":")[0])
    assert expiry == int(issued) + 3600 < time.time()
    # ...yet correctly signed with the server's secret: the expiry alone is wrong.
    assert expired["credential"] == independent_credential(coturn.secret, expired["username"])
    assert expired["username"].partition(":")[2] == fresh["username"].partition(":")[2]

    # coturn answers the Allocate with 401 Unauthorized.
    with pytest.raises(stun.TransactionFailed) as refused:
        await asyncio.wait_for(
            turn.create_turn_endpoint(
                asyncio.DatagramProtocol,
                server_addr=("127.0.0.1", coturn.port),
                username=expired["username"],
                password=expired["credential"],
            ),
            timeout=10,
        )
    assert refused.value.response.attributes["ERROR-CODE"][0] == 401
    username = re.escape(expired["username"])
    await coturn.wait_for_log(rf"user <{username}>: incoming packet \w+ processed, error 401")
    assert not re.search(rf"username=<{username}>", coturn.log()), "no session may open"

    # Browsers and aiortc then gather no relay candidate, and relay-only peers never connect.
    sender, receiver = relay_only_peer([expired]), relay_only_peer([expired])
    try:
        sender.addTrack(BrightVideoTrack())
        offer, answer = await asyncio.wait_for(negotiate(sender, receiver), timeout=15)
        assert candidates(offer) == [] and candidates(answer) == []
        assert sender.iceGatheringState == receiver.iceGatheringState == "complete"
        # With no local candidate aiortc never starts its ICE checks, so the peers
        # stay "new" rather than turn "failed": give them a bounded chance to connect.
        connected = asyncio.Event()
        for pc in (sender, receiver):
            pc.on(
                "connectionstatechange",
                lambda pc=pc: pc.connectionState == "connected" and connected.set(),
            )
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(connected.wait(), timeout=3)
        assert {sender.connectionState, receiver.connectionState} <= {"new", "failed"}
    finally:
        await sender.close()
        await receiver.close()
