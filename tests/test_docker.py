"""The deployment files in docker/ agree with the code and with each other.

There is no Docker engine where these tests run, so nothing is built or
started here. Instead the files are read and checked against what they refer
to: every command a container runs is a real command that accepts its options,
nginx's upstreams are the compose services on the ports those services listen
on, every variable is documented, and the real nginx binary both accepts the
configuration (``nginx -t``) and routes requests as intended to stub upstreams.
The media workers run in the host's network; one is started here with the
environment compose gives it (on this machine's Redis and loopback address).
docker/nginx.conf is a template (one placeholder, TRUSTED_PROXY) that the nginx image
renders at start; the tests render it the same way first.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
NGINX_CONF = DOCKER / "nginx.conf"
TURN_CONF = DOCKER / "turnserver.conf"
ENV_EXAMPLE = DOCKER / ".env.example"

REQUIRED_SERVICES = {
    "postgres",
    "redis",
    "web1",
    "web2",
    "broadcast1",
    "broadcast2",
    "migrate",
    "nginx",
    "coturn",
    "media1",
    "media2",
}
PRIVATE_NETWORKS = {"127.0.0.1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}
# The one variable the nginx image substitutes into docker/nginx.conf.
NGINX_TEMPLATE_VAR = "TRUSTED_PROXY"
NGINX_PLACEHOLDER = re.compile(r"\$(?:\{TRUSTED_PROXY\}|TRUSTED_PROXY\b)")
# Set for the hub processes by compose but not read by any code yet, with the
# reason. Anything else compose sets must be read somewhere in the hub's code,
# which catches a misspelt variable that would be silently ignored. (TURN_SECRET
# was here until hub/settings.py read it for signaling.turn's credentials.)
READ_LATER: dict[str, str] = {}
# What the media workers' environment (x-media-env) changes in or adds to the
# hub's (x-hub-env), and why; nothing else may differ. Each is documented in
# docker/.env.example like every other variable.
MEDIA_ENV_OVERRIDES = {
    "REDIS_URL": "they run in the host's network: Redis on the host's loopback",
    "MEDIA_ICE_ADDRESSES": "the host's public address (MEDIA_PUBLIC_IP) for ICE",
    "MEDIA_RECORDINGS_DIR": "the recordings volume mounted there",
}
MEDIA_WORKER_ARGV = ["python", "-m", "media.worker"]
NGINX_MISSING = (
    "nginx is not installed: `apt-get install nginx-light`. These tests run the real "
    "nginx against docker/nginx.conf and fail rather than skip without it."
)


# --- Reading the files ------------------------------------------------------


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


COMPOSE = load_compose()
SERVICES: dict[str, dict] = COMPOSE["services"]


def as_argv(command: str | list[str]) -> list[str]:
    return list(command) if isinstance(command, list) else shlex.split(command)


def uses_project_image(service: dict) -> bool:
    build = service.get("build")
    if isinstance(build, dict):
        return build.get("dockerfile") == "docker/Dockerfile"
    return False


HUB_SERVICES = sorted(name for name, svc in SERVICES.items() if uses_project_image(svc))


def service_argv(name: str) -> list[str]:
    service = SERVICES[name]
    assert "command" in service, f"{name}: a project-image service must say what it runs"
    return as_argv(service["command"])


def is_daphne(argv: list[str]) -> bool:
    return bool(argv) and argv[0] == "daphne"


def is_manage_py(argv: list[str]) -> bool:
    return argv[:2] == ["python", "manage.py"] and len(argv) >= 3


def is_media_worker(argv: list[str]) -> bool:
    return argv[:3] == MEDIA_WORKER_ARGV


MEDIA_WORKERS = sorted(n for n in HUB_SERVICES if is_media_worker(service_argv(n)))


def hub_env_names() -> set[str]:
    """Every variable compose gives any process running the hub's code."""
    return {name for svc in HUB_SERVICES for name in SERVICES[svc].get("environment") or {}}


def duration(value: str | int) -> float:
    """A compose duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(value))
    assert parts and "".join(n + u for n, u in parts) == str(value), f"not a duration: {value}"
    return sum(float(n) * units[u] for n, u in parts)


def option_value(argv: list[str], *names: str) -> str | None:
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def listen_port(name: str) -> int:
    """The port a hub service listens on, read from its command line."""
    argv = service_argv(name)
    value = option_value(argv, "-p", "--port")
    assert value is not None, f"{name}: no -p/--port in {argv}"
    return int(value)


def interpolated_names(text: str) -> set[str]:
    """Variables compose substitutes (``${NAME}``, ``${NAME:-x}``, ``$NAME``; not ``$$``)."""
    text = text.replace("$$", "")
    braced = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)
    bare = re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text)
    return set(braced) | set(bare)


def required_names(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text.replace("$$", "")))


def env_example() -> tuple[dict[str, str], set[str]]:
    """(variables set in .env.example, variables only named in comments as NAME=...)."""
    assigned: dict[str, str] = {}
    mentioned: set[str] = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        match = re.match(r"([A-Z][A-Z0-9_]*)=(.*)$", stripped)
        if match:
            assigned[match.group(1)] = match.group(2)
            continue
        match = re.match(r"#\s*([A-Z][A-Z0-9_]*)=", stripped)
        if match:
            mentioned.add(match.group(1))
    return assigned, mentioned


def env_vars_read_by_hub() -> set[str]:
    """Names of environment variables the project's own code reads."""
    patterns = [
        r"\benv_(?:str|required|bool|int|float|list)\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']",
        r"\bos\.environ(?:\.get)?[\[(]\s*[\"']([A-Z][A-Z0-9_]*)[\"']",
        r"\bos\.getenv\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']",
    ]
    names: set[str] = set()
    sources = [REPO / "manage.py"]
    for package in ("hub", "signaling", "media", "portal", "alerts", "council", "bench"):
        sources.extend((REPO / package).rglob("*.py"))
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        for pattern in patterns:
            names.update(re.findall(pattern, text))
    return names


@dataclass
class Instruction:
    keyword: str
    value: str


def dockerfile_instructions() -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, value = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return instructions


def exec_form(value: str) -> list[str]:
    """A JSON-array (exec form) instruction argument."""
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


# --- A small nginx configuration reader ----------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def first(self, name: str) -> Directive | None:
        found = self.all(name)
        return found[0] if found else None


_NGINX_TOKEN = re.compile(
    r"\s+|#[^\n]*"  # whitespace and comments: skipped
    r"|(?P<quoted>\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*')"
    r"|(?P<punct>[{};])"
    r"|(?P<word>[^\s{};\"'][^\s{};]*)"
)


def parse_nginx(text: str) -> Directive:
    tokens: list[str] = []
    for match in _NGINX_TOKEN.finditer(text):
        if match.group("quoted"):
            tokens.append(match.group("quoted")[1:-1])
        elif match.group("punct") or match.group("word"):
            tokens.append(match.group(0))
    position = 0

    def block() -> list[Directive]:
        nonlocal position
        directives: list[Directive] = []
        words: list[str] = []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == ";":
                directives.append(Directive(words[0], words[1:]))
                words = []
            elif token == "{":
                directives.append(Directive(words[0], words[1:], block()))
                words = []
            elif token == "}":
                assert not words, f"nginx.conf: unterminated directive {words}"
                return directives
            else:
                words.append(token)
        assert not words, f"nginx.conf: unterminated directive {words}"
        return directives

    return Directive("main", [], block())


def nginx_env() -> dict[str, str]:
    return SERVICES["nginx"].get("environment") or {}


def no_trusted_proxy() -> str:
    """What compose gives nginx for TRUSTED_PROXY when docker/.env does not set it."""
    value = str(nginx_env().get(NGINX_TEMPLATE_VAR, ""))
    match = re.fullmatch(r"\$\{TRUSTED_PROXY:-([^}]+)\}", value)
    assert match, (
        f"compose: nginx needs TRUSTED_PROXY: ${{TRUSTED_PROXY:-<default>}}, not {value!r}"
    )
    return match.group(1)


def render_nginx_conf(trusted_proxy: str | None = None) -> str:
    """docker/nginx.conf as the nginx image renders it: TRUSTED_PROXY substituted, nothing else.

    ``None`` stands for TRUSTED_PROXY unset in docker/.env (compose's default)."""
    value = no_trusted_proxy() if trusted_proxy is None else trusted_proxy
    return NGINX_PLACEHOLDER.sub(lambda _: value, NGINX_CONF.read_text(encoding="utf-8"))


NGINX = parse_nginx(render_nginx_conf())
NGINX_HTTP = NGINX.first("http")


def nginx_server() -> Directive:
    servers = NGINX_HTTP.all("server")
    assert len(servers) == 1, "nginx.conf: expected one (uncommented) server block"
    return servers[0]


def locations() -> list[Directive]:
    return nginx_server().all("location")


def match_location(uri: str) -> Directive:
    """The location nginx picks for ``uri`` (exact, then longest prefix, then regex)."""
    exact, prefixes, regexes = [], [], []
    for loc in locations():
        modifier = loc.args[0] if len(loc.args) == 2 else ""
        path = loc.args[-1]
        if modifier == "=":
            exact.append((path, loc))
        elif modifier in ("", "^~"):
            prefixes.append((path, modifier, loc))
        else:
            regexes.append((modifier, path, loc))
    for path, loc in exact:
        if uri == path:
            return loc
    best = max((p for p in prefixes if uri.startswith(p[0])), key=lambda p: len(p[0]), default=None)
    if best is None or best[1] != "^~":
        for modifier, pattern, loc in regexes:
            if re.search(pattern, uri, re.IGNORECASE if modifier == "~*" else 0):
                return loc
    assert best is not None, f"nginx.conf: no location matches {uri}"
    return best[2]


def effective(loc: Directive, name: str) -> list[Directive]:
    """Directives in force in ``loc``: nginx inherits from the nearest level that has any."""
    for level in (loc, nginx_server(), NGINX_HTTP):
        found = level.all(name)
        if found:
            return found
    return []


def proxied_headers(loc: Directive) -> dict[str, str]:
    return {d.args[0].lower(): d.args[1] for d in effective(loc, "proxy_set_header")}


def upstream_of(loc: Directive) -> str:
    proxy_pass = loc.first("proxy_pass")
    assert proxy_pass is not None, f"location {' '.join(loc.args)} proxies nowhere"
    match = re.fullmatch(r"http://([\w.-]+)/?", proxy_pass.args[0])
    assert match, f"unexpected proxy_pass {proxy_pass.args[0]}"
    return match.group(1)


def upstreams() -> dict[str, Directive]:
    return {d.args[0]: d for d in NGINX_HTTP.all("upstream")}


def upstream_servers(name: str) -> list[tuple[str, int]]:
    servers = []
    for directive in upstreams()[name].all("server"):
        host, _, port = directive.args[0].rpartition(":")
        servers.append((host, int(port)))
    return servers


def seconds(value: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+)([smhd]?)", value)
    assert match, f"unexpected nginx time {value}"
    return int(match.group(1)) * units[match.group(2) or "s"]


# --- Compose: services, image, order -----------------------------------------------


def test_required_services_exist():
    missing = REQUIRED_SERVICES - set(SERVICES)
    assert not missing, f"docker/compose.yaml lacks services: {sorted(missing)}"


def test_hub_services_share_one_image_and_environment():
    assert set(HUB_SERVICES) == {
        "web1",
        "web2",
        "broadcast1",
        "broadcast2",
        "alerts1",
        "alerts2",
        "media1",
        "media2",
        "migrate",
    }
    assert MEDIA_WORKERS == ["media1", "media2"]
    hub_env = COMPOSE["x-hub-env"]
    for name in HUB_SERVICES:
        service = SERVICES[name]
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}, name
        assert service["image"] == SERVICES["web1"]["image"], name
        if name in MEDIA_WORKERS:
            assert service["environment"] == COMPOSE["x-media-env"], f"{name}: x-media-env"
        else:
            assert service["environment"] == hub_env, f"{name} must use the x-hub-env block"
    build = SERVICES["web1"]["build"]
    assert (DOCKER / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).is_file()


def test_hub_processes_wait_for_migrations_and_services():
    migrate = SERVICES["migrate"]
    assert service_argv("migrate") == ["python", "manage.py", "migrate", "--noinput"]
    assert migrate["restart"] == "no", "migrate is one-shot: a restart policy would loop it"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    waiting = [name for name in HUB_SERVICES if name != "migrate"]
    assert {"web1", "broadcast1", "alerts1", "media1", "media2"} <= set(waiting)
    for name in waiting:
        depends_on = SERVICES[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully", name
        assert depends_on["postgres"]["condition"] == "service_healthy", name
        assert depends_on["redis"]["condition"] == "service_healthy", name
    for name in ("postgres", "redis"):
        assert "healthcheck" in SERVICES[name], f"{name} needs a healthcheck to be waited for"
    assert "pg_isready" in " ".join(as_argv(SERVICES["postgres"]["healthcheck"]["test"]))


def test_database_and_redis_urls_point_at_the_compose_services():
    hub_env = COMPOSE["x-hub-env"]
    assert hub_env["HUB_ENV"] == "production"
    database_url = hub_env["DATABASE_URL"]
    part = r"((?:\$\{[^}]*\}|[^:@/$])+)"  # a literal or ${...} (whose default may hold ":")
    match = re.fullmatch(rf"postgres://{part}:{part}@([\w-]+):5432/{part}", database_url)
    assert match, f"DATABASE_URL {database_url!r} is not postgres://user:password@host:5432/db"
    user, password, host, database = match.groups()
    postgres_env = SERVICES["postgres"]["environment"]
    assert host == "postgres"
    # Same variables (and defaults) as the postgres service, so they cannot drift.
    assert user == postgres_env["POSTGRES_USER"]
    assert interpolated_names(password) == interpolated_names(postgres_env["POSTGRES_PASSWORD"])
    assert database == postgres_env["POSTGRES_DB"]
    assert re.fullmatch(r"redis://redis:6379/\d+", hub_env["REDIS_URL"])


# --- Media workers: the host's network, Redis on its loopback ---------------------------


def test_media_workers_environment_is_the_hubs_plus_the_documented_overrides():
    hub_env, media_env = COMPOSE["x-hub-env"], COMPOSE["x-media-env"]
    assert set(hub_env) <= set(media_env), "the media workers must get all of the hub's env"
    changed = {name for name, value in media_env.items() if hub_env.get(name) != value}
    assert changed == set(MEDIA_ENV_OVERRIDES)
    for name in MEDIA_WORKERS:
        assert SERVICES[name]["environment"] == media_env, name
    # Written once, as a YAML merge of x-hub-env: not a copy that could drift.
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    block = re.search(r"(?m)^x-media-env: &media-env\n((?:  .*\n)+)", text)
    assert block and block.group(1).startswith("  <<: *hub-env\n"), "x-media-env: merge"
    for override in MEDIA_ENV_OVERRIDES:
        assert len(re.findall(rf"(?m)^  {override}:", block.group(1))) == 1, override
    assert text.count("*media-env") == 1, "one template (x-media-service) uses it"
    # The worker never opens the database (the run below proves it): the hub's
    # DATABASE_URL stays, unresolvable in the host's network but parseable.
    assert media_env["DATABASE_URL"] == hub_env["DATABASE_URL"]


def test_media_workers_reach_redis_on_the_hosts_loopback_only():
    hub_env, media_env = COMPOSE["x-hub-env"], COMPOSE["x-media-env"]
    published = [str(p) for p in SERVICES["redis"].get("ports", [])]
    assert len(published) == 1, published
    match = re.fullmatch(r"127\.0\.0\.1:(\d+):6379", published[0])
    assert match, f"redis must be published on the host's loopback only, not {published[0]}"
    database = hub_env["REDIS_URL"].rsplit("/", 1)[1]
    # The same Redis database as the web processes, through the published port.
    assert media_env["REDIS_URL"] == f"redis://127.0.0.1:{match.group(1)}/{database}"
    assert "ports" not in SERVICES["postgres"], "nothing outside the compose network needs it"


def test_media_workers_run_in_the_hosts_network_on_its_public_address():
    substituted = substitute(COMPOSE["x-media-env"]["MEDIA_ICE_ADDRESSES"], compose_env())
    for name in MEDIA_WORKERS:
        service = SERVICES[name]
        assert service["network_mode"] == "host", name
        # Compose refuses published ports beside host networking; none are needed.
        assert "ports" not in service and "networks" not in service, name
        env = service["environment"]
        assert interpolated_names(env["MEDIA_ICE_ADDRESSES"]) == {"MEDIA_PUBLIC_IP"}, name
        assert required_names(env["MEDIA_ICE_ADDRESSES"]) == {"MEDIA_PUBLIC_IP"}, name
    addresses = [a.strip() for a in substituted.split(",")]
    assert all(ipaddress.ip_address(a) for a in addresses), substituted
    # No other service shares the host's network.
    assert {n for n, s in SERVICES.items() if s.get("network_mode") == "host"} == set(MEDIA_WORKERS)


def compose_env() -> dict[str, str]:
    """docker/.env as an operator makes it: .env.example with the secrets filled in."""
    assigned, _ = env_example()
    return {
        **assigned,
        **dict.fromkeys(("SECRET_KEY", "POSTGRES_PASSWORD", "TURN_SECRET"), "0a" * 32),
    }


def test_media_workers_have_time_to_drain_on_sigterm():
    """On SIGTERM a worker tells its rooms to reconnect, closes its peers and
    withdraws from Redis (then waits up to 5 s for its tasks): Docker's default
    10 s before SIGKILL is too short for that under load."""
    for name in MEDIA_WORKERS:
        service = SERVICES[name]
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM", name
        assert duration(service["stop_grace_period"]) >= 20, name
        assert service["restart"] == "unless-stopped", name


def test_media_recordings_land_on_a_volume_the_worker_can_write():
    targets = set()
    for name in MEDIA_WORKERS:
        directory = SERVICES[name]["environment"]["MEDIA_RECORDINGS_DIR"]
        mounts = dict(reversed(v.split(":")[:2]) for v in SERVICES[name].get("volumes", []))
        assert directory in mounts, f"{name}: nothing mounted at {directory}"
        assert mounts[directory] in (COMPOSE.get("volumes") or {}), "a named volume"
        targets.add((mounts[directory], directory))
    assert len(targets) == 1, "every worker writes to the same recordings volume"
    # Docker fills a new named volume from the image's directory, ownership
    # included: the image must create it for the user the workers run as.
    user = [i.value for i in dockerfile_instructions() if i.keyword == "USER"][-1]
    ((_volume, directory),) = targets
    runs = [i.value for i in dockerfile_instructions() if i.keyword == "RUN"]
    assert any(
        re.search(rf"mkdir -p [^&]*{re.escape(directory)}(\s|$)", run)
        and re.search(rf"chown {user}:\S+ [^&]*{re.escape(directory)}(\s|$)", run)
        for run in runs
    ), f"the Dockerfile must create {directory} owned by {user}"


# --- Commands: every container runs something that exists and takes its options -----


@pytest.mark.parametrize("name", [n for n in HUB_SERVICES if is_manage_py(service_argv(n))])
def test_manage_py_commands_exist_and_accept_their_options(name):
    from django.core.management import CommandError, get_commands, load_command_class

    argv = service_argv(name)
    command, options = argv[2], argv[3:]
    commands = get_commands()
    if command not in commands:
        pytest.fail(
            f"{name} runs `manage.py {command}`, which is not a management command of this "
            f"project (expected e.g. hub/management/commands/{command}.py)"
        )
    parser = load_command_class(commands[command], command).create_parser("manage.py", command)
    try:
        parser.parse_args(options)
    except (CommandError, SystemExit) as error:
        pytest.fail(f"{name}: `manage.py {command}` rejects {options}: {error}")


def test_broadcast_servers_listen_on_all_interfaces_port_8100():
    """Needs hub/management/commands/broadcast_server.py (checked above); fails, never skips."""
    for name in ("broadcast1", "broadcast2"):
        argv = service_argv(name)
        assert argv[:3] == ["python", "manage.py", "broadcast_server"], name
        assert option_value(argv, "--host") == "0.0.0.0", name
        assert listen_port(name) == 8100, name


def check_daphne_argv(argv: list[str], where: str) -> None:
    from daphne.cli import CommandLineInterface
    from daphne.utils import import_by_path

    assert is_daphne(argv), f"{where}: not a daphne command: {argv}"
    try:
        args = CommandLineInterface().parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: daphne rejects its arguments {argv[1:]}")
    assert args.application == "hub.asgi:application", where
    assert args.host == "0.0.0.0", f"{where}: daphne must listen on all interfaces"
    assert args.port == 8000, where
    # nginx passes the client's address in X-Forwarded-For; without this every
    # client would look like nginx (per-IP limits, logs).
    assert args.proxy_headers, f"{where}: daphne needs --proxy-headers behind nginx"
    module = args.application.split(":")[0]
    try:
        importlib.import_module(module)
    except ImportError as error:
        pytest.fail(f"{where}: cannot import {module}: {error}")
    assert import_by_path(args.application) is not None


@pytest.mark.parametrize("name", [n for n in HUB_SERVICES if is_daphne(service_argv(n))])
def test_daphne_services_run_the_hub_application(name):
    check_daphne_argv(service_argv(name), name)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_media_worker_runs_with_the_compose_environment_and_no_database(
    tmp_path, redis_url, key_prefix
):
    """media1's command with media1's environment (docker/.env made from
    .env.example), this machine standing in for the host: its Redis and its
    loopback address, files under tmp_path, and a database nobody answers on.
    The worker starts in production settings, touches its heartbeat file once
    Redis took its announcement (the healthcheck passes), and on SIGTERM drains
    and exits 0, well within its stop_grace_period, never touching PostgreSQL."""
    import dj_database_url

    name = "media1"
    env = {
        key: substitute(str(value), compose_env())
        for key, value in SERVICES[name]["environment"].items()
    }
    assert dj_database_url.parse(env["DATABASE_URL"])["HOST"] == "postgres"
    heartbeat = tmp_path / "alive"
    env.update(
        {
            "REDIS_URL": redis_url,
            "REDIS_PREFIX": key_prefix,
            "MEDIA_ICE_ADDRESSES": "127.0.0.1",
            "MEDIA_HEARTBEAT_FILE": str(heartbeat),
            "MEDIA_RECORDINGS_DIR": str(tmp_path / "recordings"),
            # Port 9 (discard): a connection attempt would fail loudly.
            "DATABASE_URL": "postgres://egmina:x@127.0.0.1:9/egmina",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
    )
    argv = [sys.executable, *service_argv(name)[1:]]  # the image's python: this one
    probe = as_argv(SERVICES[name]["healthcheck"]["test"])[3].replace(
        COMPOSE["x-media-env"]["MEDIA_HEARTBEAT_FILE"], str(heartbeat)
    )
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not heartbeat.exists():
            assert proc.poll() is None, f"the worker exited: {proc.communicate()[0]}"
            assert time.monotonic() < deadline, "no heartbeat within 60 s"
            time.sleep(0.1)
        assert subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=duration(SERVICES[name]["stop_grace_period"]))
        drained = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert drained < duration(SERVICES[name]["stop_grace_period"]) / 3, drained
    assert "media worker media1 started" in output and "media worker media1 stopped" in output
    assert "Traceback" not in output and "OperationalError" not in output, output


@pytest.mark.parametrize("name", MEDIA_WORKERS)
def test_media_workers_run_the_worker_with_arguments_it_accepts(name):
    from media.registry import WORKER_ID_RE
    from media.worker import build_parser

    argv = service_argv(name)
    assert is_media_worker(argv), argv
    module = importlib.import_module("media.worker")
    assert callable(module.main)
    source = Path(module.__file__).read_text(encoding="utf-8")
    assert 'if __name__ == "__main__":\n    main()' in source, "python -m must run main()"
    try:
        args = build_parser().parse_args(argv[3:])
    except SystemExit:
        pytest.fail(f"{name}: python -m media.worker rejects {argv[3:]}")
    assert args.id is None or WORKER_ID_RE.match(args.id), f"{name}: bad --id {args.id}"


def test_media_worker_ids_are_distinct():
    """A worker refuses to start under an id a live worker has."""
    from media.worker import build_parser

    ids = [build_parser().parse_args(service_argv(n)[3:]).id for n in MEDIA_WORKERS]
    fixed = [i for i in ids if i is not None]
    assert len(fixed) == len(set(fixed)), ids


def test_every_hub_service_command_is_checked():
    for name in HUB_SERVICES:
        argv = service_argv(name)
        assert is_daphne(argv) or is_manage_py(argv) or is_media_worker(argv), (
            f"{name}: unchecked command {argv}"
        )


# --- Dockerfile ----------------------------------------------------------------------


def test_dockerfile_installs_the_pinned_project_on_python_311():
    instructions = dockerfile_instructions()
    froms = [i.value for i in instructions if i.keyword == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{64})?", froms[0])

    constraints_copied = None
    project_installed = None
    for index, instruction in enumerate(instructions):
        if instruction.keyword == "COPY" and "constraints.txt" in instruction.value.split():
            constraints_copied = index if constraints_copied is None else constraints_copied
        if instruction.keyword == "RUN" and re.search(
            r"pip install -c constraints\.txt \.(\s|$)", instruction.value
        ):
            project_installed = index
    assert constraints_copied is not None, "the Dockerfile must COPY constraints.txt"
    assert project_installed is not None, "the Dockerfile must `pip install -c constraints.txt .`"
    assert constraints_copied < project_installed


def test_dockerfile_build_inputs_exist():
    # Every file the Dockerfile copies by name exists in the build context.
    for instruction in dockerfile_instructions():
        if instruction.keyword == "COPY" and not instruction.value.startswith("--"):
            *sources, _destination = instruction.value.split()
            for source in sources:
                assert source == "." or (REPO / source).exists(), f"COPY {source}: not in repo"
    # pyproject.toml names a readme; `pip install .` fails when it is missing.
    import tomllib

    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("readme")
    if readme:
        assert (REPO / readme).is_file(), f"pyproject.toml's readme {readme} is missing"


def test_dockerfile_collects_static_files_with_production_storage():
    runs = [i.value for i in dockerfile_instructions() if i.keyword == "RUN"]
    collect = [r for r in runs if "manage.py collectstatic" in r]
    assert collect, "the Dockerfile must run `python manage.py collectstatic --noinput`"
    assert "--noinput" in collect[0]
    # The production storage writes the manifest that production pages need.
    assert "HUB_ENV=production" in collect[0]
    assert "SECRET_KEY=" in collect[0] and "ALLOWED_HOSTS=" in collect[0]
    assert (REPO / "manage.py").is_file(), "the image runs manage.py from the repository root"


def test_dockerfile_runs_unprivileged_with_healthcheck_and_daphne():
    instructions = dockerfile_instructions()
    keywords = [i.keyword for i in instructions]
    users = [i.value for i in instructions if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the image must not run as root"
    assert keywords.index("USER") < keywords.index("CMD")
    exposed = {p for i in instructions if i.keyword == "EXPOSE" for p in i.value.split()}
    assert "8000" in exposed

    healthcheck = next(i.value for i in instructions if i.keyword == "HEALTHCHECK")
    probe = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert probe[:2] == ["python", "-c"]
    assert "/healthz" in probe[2]

    cmd = exec_form(next(i.value for i in instructions if i.keyword == "CMD"))
    check_daphne_argv(cmd, "Dockerfile CMD")


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image():
    ignored = {
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "docker/.env", "var", "staticfiles"} <= ignored


class _Recorder(BaseHTTPRequestHandler):
    status = HTTPStatus.OK
    seen: list[tuple[str, str | None]] = []

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Host")))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def run_probe(code: str, port: int, status: HTTPStatus, env: dict[str, str]):
    """Run a python -c health probe against a stub answering ``status`` in place of ``port``.

    Returns the (path, Host) pairs the stub saw and whether the probe passed."""
    handler = type("Handler", (_Recorder,), {"status": status, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert f"127.0.0.1:{port}" in code, f"the probe does not ask port {port}: {code}"
        code = code.replace(f"127.0.0.1:{port}", f"127.0.0.1:{server.server_address[1]}")
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=30, check=False
        )
    finally:
        server.shutdown()
        server.server_close()
    return handler.seen, result.returncode == 0


@pytest.mark.parametrize(
    ("allowed_hosts", "status", "host", "passes"),
    [
        (".example.gmina.pl,other.pl", HTTPStatus.OK, "example.gmina.pl", True),
        ("hub.example.gmina.pl", HTTPStatus.OK, "hub.example.gmina.pl", True),
        ("*", HTTPStatus.OK, "localhost", True),
        ("hub.example.gmina.pl", HTTPStatus.BAD_REQUEST, "hub.example.gmina.pl", False),
        ("hub.example.gmina.pl", HTTPStatus.SERVICE_UNAVAILABLE, "hub.example.gmina.pl", False),
    ],
)
def test_dockerfile_healthcheck_probes_healthz_with_an_allowed_host(
    allowed_hosts, status, host, passes
):
    """Django answers 400 to a Host outside ALLOWED_HOSTS, so the probe must send one inside."""
    healthcheck = next(i.value for i in dockerfile_instructions() if i.keyword == "HEALTHCHECK")
    code = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())[2]
    seen, passed = run_probe(code, 8000, status, {"ALLOWED_HOSTS": allowed_hosts})
    assert seen == [("/healthz", host)]
    assert passed is passes


def is_alerts_worker(name: str) -> bool:
    return service_argv(name)[:3] == ["python", "manage.py", "alerts_worker"]


def heartbeat_variable(name: str) -> str | None:
    """The file a worker without a port touches to show it is alive, by its variable."""
    if is_alerts_worker(name):
        return "ALERTS_HEARTBEAT_FILE"
    if is_media_worker(service_argv(name)):
        return "MEDIA_HEARTBEAT_FILE"
    return None


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in HUB_SERVICES
        if SERVICES[n].get("healthcheck", {}).get("test") and not heartbeat_variable(n)
    ],
)
def test_compose_healthchecks_probe_their_own_port(name):
    argv = as_argv(SERVICES[name]["healthcheck"]["test"])
    assert argv[:3] == ["CMD", "python", "-c"], f"{name}: the image has python, not curl"
    port = listen_port(name)
    seen, passed = run_probe(argv[3], port, HTTPStatus.OK, {})
    assert [path for path, _ in seen] == ["/healthz"] and passed
    _, passed = run_probe(argv[3], port, HTTPStatus.SERVICE_UNAVAILABLE, {})
    assert not passed


@pytest.mark.parametrize("name", [n for n in HUB_SERVICES if heartbeat_variable(n)])
def test_the_workers_probe_passes_on_a_fresh_heartbeat_and_fails_on_a_stale_one(name, tmp_path):
    """The alerts and media workers listen on no port: each touches the file its
    environment names, and the probe checks the file's age."""
    argv = as_argv(SERVICES[name]["healthcheck"]["test"])
    assert argv[:3] == ["CMD", "python", "-c"]
    heartbeat = SERVICES[name]["environment"][heartbeat_variable(name)]
    # /tmp: the one place user hub may write in the image (the code is root's).
    assert heartbeat.startswith("/tmp/") and heartbeat in argv[3], name
    probe = argv[3].replace(heartbeat, str(tmp_path / "alive"))
    assert subprocess.run([sys.executable, "-c", probe]).returncode != 0  # no file yet
    (tmp_path / "alive").touch()
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0
    late = time.time() - 10  # a slow loop or a Redis hiccup is no reason to restart
    os.utime(tmp_path / "alive", (late, late))
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0
    old = time.time() - 120
    os.utime(tmp_path / "alive", (old, old))
    assert subprocess.run([sys.executable, "-c", probe]).returncode != 0


def test_every_hub_service_has_a_working_healthcheck():
    """Services on a port other than the image's 8000 must bring their own probe."""
    for name in HUB_SERVICES:
        healthcheck = SERVICES[name].get("healthcheck")
        if name == "migrate":
            assert healthcheck == {"disable": True}
        elif heartbeat_variable(name):
            # No port: the worker touches a file every loop; the probe checks its age.
            probe = " ".join(as_argv(healthcheck["test"]))
            heartbeat = SERVICES[name]["environment"][heartbeat_variable(name)]
            assert heartbeat in probe and "getmtime" in probe, probe
        elif listen_port(name) != 8000:
            assert healthcheck and healthcheck.get("test"), f"{name} listens on {listen_port(name)}"


# --- nginx: structure --------------------------------------------------------------------


def test_nginx_upstreams_are_the_compose_services_on_their_ports():
    daphne_services = {n for n in HUB_SERVICES if is_daphne(service_argv(n))}
    broadcast_services = {
        n
        for n in HUB_SERVICES
        if service_argv(n)[:3] == ["python", "manage.py", "broadcast_server"]
    }
    expected = {"daphne": daphne_services, "broadcast": broadcast_services}
    assert set(upstreams()) == set(expected)
    for upstream, services in expected.items():
        servers = upstream_servers(upstream)
        assert {host for host, _ in servers} == services, f"upstream {upstream}"
        for host, port in servers:
            assert port == listen_port(host), f"upstream {upstream}: {host}:{port}"
        # Long-lived WebSockets: send each new one to the least busy process.
        assert upstreams()[upstream].block[0].name == "least_conn", f"upstream {upstream}"


def test_nginx_routes_paths_to_the_right_upstream():
    assert upstream_of(match_location("/ws/live/")) == "broadcast"
    assert upstream_of(match_location("/ws/live/council-7/")) == "broadcast"
    assert upstream_of(match_location("/ws/meet/abc-def/")) == "daphne"
    assert upstream_of(match_location("/ws/alerts/")) == "daphne"
    assert upstream_of(match_location("/ws/council/12/")) == "daphne"
    assert upstream_of(match_location("/")) == "daphne"
    assert upstream_of(match_location("/healthz")) == "daphne"
    assert upstream_of(match_location("/meet/abc-def/")) == "daphne"
    assert match_location("/metrics").args == ["=", "/metrics"]
    assert upstream_of(match_location("/metrics")) == "daphne"


def test_nginx_passes_websocket_upgrades_and_client_details():
    maps = {tuple(d.args): d for d in NGINX_HTTP.all("map")}
    upgrade_map = maps[("$http_upgrade", "$connection_upgrade")]
    assert upgrade_map.first("default").args == ["upgrade"]
    for loc in locations():
        where = f"location {' '.join(loc.args)}"
        assert [d.args for d in effective(loc, "proxy_http_version")] == [["1.1"]], where
        headers = proxied_headers(loc)
        assert headers.get("upgrade") == "$http_upgrade", where
        assert headers.get("connection") == "$connection_upgrade", where
        assert headers.get("host") in ("$host", "$http_host"), where
        assert headers.get("x-forwarded-for") == "$remote_addr", where
        assert headers.get("x-forwarded-proto"), where
    for uri in ("/ws/live/", "/ws/meet/x/"):
        loc = match_location(uri)
        assert effective(loc, "proxy_buffering")[0].args == ["off"], uri
        assert seconds(effective(loc, "proxy_read_timeout")[0].args[0]) >= 3600, uri


def test_nginx_limits_metrics_to_internal_networks():
    loc = match_location("/metrics")
    # First: refuse what a proxy nginx does not trust forwarded (client unknown).
    guard = loc.block[0]
    assert guard.name == "if" and guard.args == ["($via_untrusted_proxy)"]
    assert [(d.name, d.args) for d in guard.block] == [("return", ["403"])]
    rules = [(d.name, d.args[0]) for d in loc.block if d.name in ("allow", "deny")]
    assert rules[-1] == ("deny", "all")
    assert {address for rule, address in rules[:-1] if rule == "allow"} == PRIVATE_NETWORKS
    assert all(rule == "allow" for rule, _ in rules[:-1])


def test_nginx_trusts_no_proxy_unless_one_is_named():
    # nginx is the edge: by default no peer may set the client's address or scheme.
    assert no_trusted_proxy() == "unix:", "unset TRUSTED_PROXY must match no TCP peer"
    assert [d.args for d in NGINX_HTTP.all("set_real_ip_from")] == [["unix:"]]
    assert NGINX_HTTP.first("real_ip_header").args == ["X-Forwarded-For"]
    assert NGINX_HTTP.first("real_ip_recursive").args == ["on"]
    # The operator's value lands in set_real_ip_from and nowhere else; the scheme
    # is believed from the same peers (derived from realip, no second list).
    http = parse_nginx(render_nginx_conf("192.0.2.7")).first("http")
    assert [d.args for d in http.all("set_real_ip_from")] == [["192.0.2.7"]]
    assert render_nginx_conf("192.0.2.7").count("192.0.2.7") == 1
    assert not NGINX_HTTP.all("geo"), "trust is decided by set_real_ip_from alone"
    maps = {d.args[1]: d for d in NGINX_HTTP.all("map")}
    assert maps["$forwarded_proto"].args[0] == "$via_trusted_proxy:$http_x_forwarded_proto"
    assert maps["$forwarded_proto"].first("default").args == ["$scheme"]
    assert maps["$via_trusted_proxy"].args[0] == "$realip_remote_addr $remote_addr"


def test_nginx_template_substitutes_only_trusted_proxy():
    text = NGINX_CONF.read_text(encoding="utf-8")
    assert len(NGINX_PLACEHOLDER.findall(text)) == 1
    # Any other ${NAME} or $NAME in capitals would be substituted by the image, or
    # left for nginx to reject: nginx's own variables are lower case.
    others = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text)) - {NGINX_TEMPLATE_VAR}
    assert not others, f"nginx.conf: unexpected placeholders {sorted(others)}"
    env = nginx_env()
    # The image renders /etc/nginx/templates/<name>.template into NGINX_ENVSUBST_OUTPUT_DIR.
    assert (
        "./nginx.conf:/etc/nginx/templates/nginx.conf.template:ro" in SERVICES["nginx"]["volumes"]
    )
    assert env.get("NGINX_ENVSUBST_OUTPUT_DIR") == "/etc/nginx"
    assert env.get("NGINX_ENVSUBST_FILTER") == NGINX_TEMPLATE_VAR
    # The image's entrypoint renders templates only for its own `nginx` command.
    assert "command" not in SERVICES["nginx"] and "entrypoint" not in SERVICES["nginx"]


def test_nginx_limits_request_bodies():
    size = NGINX_HTTP.first("client_max_body_size").args[0]
    match = re.fullmatch(r"(\d+)([km]?)", size.lower())
    assert match
    value = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2)]
    assert 1024 * 1024 <= value <= 100 * 1024 * 1024


def test_nginx_service_mounts_this_config_and_publishes_http():
    nginx = SERVICES["nginx"]
    assert nginx["image"].startswith("nginx:1.27")
    assert any(v.startswith("./nginx.conf:") for v in nginx["volumes"])
    assert any(str(p).endswith(":80") for p in nginx["ports"])
    assert set(nginx["depends_on"]) >= {"web1", "web2", "broadcast1", "broadcast2"}


# --- nginx: the real binary ------------------------------------------------------------


def nginx_binary() -> str:
    path = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if path is None:
        pytest.fail(NGINX_MISSING)
    return path


def local_nginx_conf(
    tmp: Path, http_port: int, upstream_ports: dict[str, int], trusted_proxy: str | None = None
) -> Path:
    """docker/nginx.conf made runnable here: services on loopback, files in ``tmp``."""
    text = render_nginx_conf(trusted_proxy)
    text = re.sub(r"(?m)^user\s+\S+;", "", text)  # the image's user; root here picks nobody
    text = text.replace("/var/log/nginx/", f"{tmp}/")

    def server(match: re.Match) -> str:
        return f"server 127.0.0.1:{upstream_ports[match.group(1)]};"

    text = re.sub(r"server\s+([\w-]+):\d+;", server, text)
    text, count = re.subn(r"listen\s+80\b", f"listen 127.0.0.1:{http_port}", text)
    assert count == 1
    # Buffers to disk under tmp too, so that nginx needs no write access elsewhere.
    temp_paths = "".join(
        f"{kind}_temp_path {tmp}/{kind}; "
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = re.sub(r"(?m)^http\s*\{", lambda _: "http { " + temp_paths, text, count=1)
    conf = tmp / "nginx.conf"
    conf.write_text(text, encoding="utf-8")
    return conf


def nginx_argv(conf: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        nginx_binary(),
        "-c",
        str(conf),
        "-p",
        str(tmp),
        "-e",
        str(tmp / "error.log"),
        "-g",
        f"pid {tmp}/nginx.pid;" + "".join(extra),
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def upstream_hosts() -> list[str]:
    return [host for name in upstreams() for host, _ in upstream_servers(name)]


@pytest.mark.parametrize("trusted_proxy", [None, "10.20.0.5", "10.20.0.0/29", "2001:db8::5"])
def test_nginx_accepts_the_configuration(tmp_path, trusted_proxy):
    ports = {host: listen_port(host) for host in upstream_hosts()}
    conf = local_nginx_conf(tmp_path, free_port(), ports, trusted_proxy)
    result = subprocess.run(
        [*nginx_argv(conf, tmp_path), "-t"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def report(name, request):
    return json.dumps(
        {"backend": name, "path": request.path, "headers": dict(request.headers.raw_items())}
    )


def stub_upstream(name):
    """A WebSocket/HTTP server on a free loopback port that answers with what it received."""
    from websockets.asyncio.server import serve

    async def process_request(connection, request):
        if request.headers.get("Upgrade", "").lower() != "websocket":
            response = connection.respond(HTTPStatus.OK, report(name, request))
            response.headers["Content-Type"] = "application/json"
            return response
        return None

    async def handler(connection):
        await connection.send(report(name, connection.request))
        await connection.close()

    return serve(handler, "127.0.0.1", 0, process_request=process_request)


@contextlib.asynccontextmanager
async def running_nginx(tmp_path, trusted_proxy=None):
    """nginx with docker/nginx.conf (rendered with ``trusted_proxy``) before stub upstreams.

    Yields the port it listens on at 127.0.0.1; the test client is the peer 127.0.0.1."""
    async with contextlib.AsyncExitStack() as stack:
        ports = {}
        for host in upstream_hosts():
            server = await stack.enter_async_context(stub_upstream(host))
            ports[host] = server.sockets[0].getsockname()[1]
        http_port = free_port()
        conf = local_nginx_conf(tmp_path, http_port, ports, trusted_proxy)
        process = await asyncio.create_subprocess_exec(
            *nginx_argv(conf, tmp_path, "daemon off;"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await wait_for_port(http_port, process, tmp_path)
            yield http_port
        finally:
            process.terminate()
            await process.wait()


@pytest.mark.integration
async def test_nginx_routes_and_upgrades_real_requests(tmp_path):
    """Runs nginx with docker/nginx.conf against stub upstreams that report what they got."""
    async with running_nginx(tmp_path) as port:
        await check_routing(port)


# Headers a client may send to pass itself off as someone else, or as HTTPS.
FORGED = {
    "X-Forwarded-For": "1.2.3.4",
    "X-Real-IP": "1.2.3.4",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Host": "evil.example",
    "Forwarded": "for=1.2.3.4;proto=https",
}


@pytest.mark.integration
@pytest.mark.parametrize("trusted_proxy", [None, "127.0.0.2", "10.0.0.0/8"])
async def test_nginx_replaces_forwarded_headers_from_untrusted_peers(tmp_path, trusted_proxy):
    """A client talking to nginx directly cannot forge its address or scheme.

    By default (None) nginx trusts no proxy; a TRUSTED_PROXY that is not the peer
    (127.0.0.1 here) changes nothing for it."""
    from websockets.exceptions import InvalidStatus

    async with running_nginx(tmp_path, trusted_proxy) as port:
        base = f"http://127.0.0.1:{port}"
        _, seen = await asyncio.to_thread(http_get, f"{base}/meet/abc/", FORGED)
        check_not_forged(seen)
        for path in ("/ws/meet/abc/", "/ws/live/"):
            check_not_forged(await websocket(port, path, **FORGED))

        # /metrics is judged on the real peer: 127.0.0.1 is internal...
        status, _ = await asyncio.to_thread(http_get, f"{base}/metrics")
        assert status == 200
        # ...but a request an untrusted proxy forwarded (it carries X-Forwarded-For)
        # comes from an unknown client: refused, whatever address it names.
        for forwarded_for in ("203.0.113.5", "10.1.2.3"):
            status, _ = await asyncio.to_thread(
                http_get, f"{base}/metrics", {"X-Forwarded-For": forwarded_for}
            )
            assert status == 403, forwarded_for
        with pytest.raises(InvalidStatus) as refused:
            await websocket(port, "/metrics", **{"X-Forwarded-For": "10.1.2.3"})
        assert refused.value.response.status_code == 403


def check_not_forged(seen):
    assert header(seen, "x-forwarded-for") == "127.0.0.1", seen
    assert header(seen, "x-real-ip") == "127.0.0.1", seen
    assert header(seen, "x-forwarded-proto") == "http", seen  # the scheme nginx itself used
    assert header(seen, "x-forwarded-port") is None, seen
    assert header(seen, "forwarded") is None, seen
    assert header(seen, "x-forwarded-host") == header(seen, "host") != "evil.example", seen


@pytest.mark.integration
@pytest.mark.parametrize("trusted_proxy", ["127.0.0.1", "127.0.0.0/8"])
async def test_nginx_believes_the_trusted_proxy_it_is_told(tmp_path, trusted_proxy):
    """Opt-in: with TRUSTED_PROXY naming the peer, its X-Forwarded-For/-Proto count."""
    from websockets.exceptions import InvalidStatus

    async with running_nginx(tmp_path, trusted_proxy) as port:
        base = f"http://127.0.0.1:{port}"
        # The terminator's view of the client counts; addresses the client
        # prepended itself are dropped.
        status, seen = await asyncio.to_thread(
            http_get,
            f"{base}/",
            {
                "Host": "hub.example.gmina.pl",
                "X-Forwarded-For": "1.2.3.4, 203.0.113.5",
                "X-Forwarded-Proto": "https",
            },
        )
        assert status == 200
        assert header(seen, "host") == "hub.example.gmina.pl"
        assert header(seen, "x-forwarded-for") == "203.0.113.5"
        assert header(seen, "x-real-ip") == "203.0.113.5"
        assert header(seen, "x-forwarded-proto") == "https"
        seen = await websocket(
            port, "/ws/meet/abc/", **{"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"}
        )
        assert header(seen, "x-forwarded-for") == "1.2.3.4"
        assert header(seen, "x-forwarded-proto") == "https"
        # Only "http" or "https".
        _, seen = await asyncio.to_thread(
            http_get, f"{base}/", {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "gopher"}
        )
        assert header(seen, "x-forwarded-proto") == "http"

        # /metrics judges the client the terminator reported, not the terminator.
        status, _ = await asyncio.to_thread(
            http_get, f"{base}/metrics", {"X-Forwarded-For": "203.0.113.5"}
        )
        assert status == 403
        with pytest.raises(InvalidStatus) as refused:
            await websocket(port, "/metrics", **{"X-Forwarded-For": "203.0.113.5"})
        assert refused.value.response.status_code == 403
        status, seen = await asyncio.to_thread(
            http_get, f"{base}/metrics", {"X-Forwarded-For": "10.1.2.3"}
        )
        assert status == 200 and header(seen, "x-forwarded-for") == "10.1.2.3"


async def wait_for_port(port, process, tmp_path):
    for _ in range(200):
        if process.returncode is not None:
            stderr = (await process.stderr.read()).decode()
            pytest.fail(f"nginx exited: {stderr} {(tmp_path / 'error.log').read_text()}")
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    pytest.fail("nginx did not start listening")


def http_get(url, headers=None, data=None):
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


async def websocket(port, path, **headers):
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}{path}", additional_headers=headers) as ws:
        return json.loads(await ws.recv())


def header(seen, name):
    return {k.lower(): v for k, v in seen["headers"].items()}.get(name.lower())


async def check_routing(port):
    base = f"http://127.0.0.1:{port}"
    daphne = {h for h, _ in upstream_servers("daphne")}
    broadcast = {h for h, _ in upstream_servers("broadcast")}

    # WebSockets: /ws/live/ to the broadcast servers, the rest to daphne, upgrade intact.
    for path, group in [("/ws/live/", broadcast), ("/ws/live/x/", broadcast)]:
        seen = await websocket(port, path)
        assert seen["backend"] in group and seen["path"] == path
    for path in ("/ws/meet/abc/", "/ws/alerts/"):
        seen = await websocket(port, path)
        assert seen["backend"] in daphne and seen["path"] == path
        assert header(seen, "upgrade").lower() == "websocket"
    # Both processes of a group get connections (least_conn, no stickiness).
    backends = {(await websocket(port, "/ws/meet/abc/"))["backend"] for _ in range(8)}
    assert backends == daphne

    # Plain HTTP: daphne, with the public Host and the client's address and scheme.
    status, seen = await asyncio.to_thread(
        http_get, f"{base}/meet/abc/", {"Host": "hub.example.gmina.pl"}
    )
    assert status == 200 and seen["backend"] in daphne
    assert header(seen, "host") == "hub.example.gmina.pl"
    assert header(seen, "x-forwarded-host") == "hub.example.gmina.pl"
    assert header(seen, "x-forwarded-for") == "127.0.0.1"
    assert header(seen, "x-forwarded-proto") == "http"
    assert header(seen, "upgrade") is None

    # /metrics: internal clients only (127.0.0.1 is one).
    status, seen = await asyncio.to_thread(http_get, f"{base}/metrics")
    assert status == 200 and seen["backend"] in daphne

    # Bodies over client_max_body_size never reach Python: refused on the header alone.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: hub\r\nContent-Length: %d\r\n\r\n" % (11 * 1024 * 1024)
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.split()[1] == b"413", status_line


# --- coturn -------------------------------------------------------------------------------


def turn_conf() -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in TURN_CONF.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            options.setdefault(key.strip(), []).append(value.strip())
    return options


def test_coturn_checks_credentials_with_the_hubs_turn_secret():
    coturn = SERVICES["coturn"]
    argv = as_argv(coturn["command"])
    secrets = [a for a in argv if a.startswith("--static-auth-secret=")]
    assert len(secrets) == 1
    assert interpolated_names(secrets[0]) == {"TURN_SECRET"}
    assert interpolated_names(COMPOSE["x-hub-env"]["TURN_SECRET"]) == {"TURN_SECRET"}
    options = turn_conf()
    assert "use-auth-secret" in options
    assert "static-auth-secret" not in options, "the secret belongs in docker/.env, not here"
    assert "lt-cred-mech" not in options
    assert any(a.startswith("--realm=") for a in argv) or "realm" in options
    assert "./turnserver.conf:/etc/coturn/turnserver.conf:ro" in coturn["volumes"]


def substitute(text: str, env: dict[str, str]) -> str:
    """What compose makes of ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}``."""

    def value(match: re.Match) -> str:
        name, operator, word = match.groups()
        if env.get(name):
            return env[name]
        assert operator != ":?", f"compose would refuse to start: {word}"
        return word if operator == ":-" else ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", value, text)


def test_web_services_and_coturn_share_the_turn_secret_and_address():
    """The hub (daphne) signs TURN credentials with the very secret coturn checks them
    with, taken from one docker/.env variable, and sends browsers to that coturn."""
    env = {
        "TURN_SECRET": "0123abcd" * 8,
        "TURN_EXTERNAL_IP": "203.0.113.77",
        "TURN_REALM": "hub.example.gmina.pl",
    }
    coturn_argv = [substitute(a, env) for a in as_argv(SERVICES["coturn"]["command"])]
    web = [name for name in HUB_SERVICES if is_daphne(service_argv(name))]
    assert sorted(web) == ["web1", "web2"]
    options = turn_conf()
    listening = options.get("listening-port", ["3478"])[0]
    for name in web:
        hub_env = SERVICES[name]["environment"]
        # One variable, substituted alike on both sides (no default that could differ).
        assert interpolated_names(hub_env["TURN_SECRET"]) == {"TURN_SECRET"}, name
        assert required_names(hub_env["TURN_SECRET"]) == {"TURN_SECRET"}, name
        secret = substitute(hub_env["TURN_SECRET"], env)
        assert secret == env["TURN_SECRET"]
        assert option_value(coturn_argv, "--static-auth-secret") == secret, name

        # TURN_URLS: coturn's public address and listening port, over UDP and TCP,
        # which the coturn service publishes.
        urls = substitute(hub_env["TURN_URLS"], env).split(",")
        external_ip = option_value(coturn_argv, "--external-ip")
        assert external_ip == env["TURN_EXTERNAL_IP"]
        assert urls == [
            f"turn:{external_ip}:{listening}?transport=udp",
            f"turn:{external_ip}:{listening}?transport=tcp",
        ], name
        ports = [str(p) for p in SERVICES["coturn"]["ports"]]
        assert {f"{listening}:{listening}/udp", f"{listening}:{listening}/tcp"} <= set(ports)
        # No STUN server unless the municipality names one; the TTL keeps its default.
        assert substitute(hub_env["STUN_URLS"], env) == "", name
        assert substitute(hub_env["TURN_CREDENTIAL_TTL"], env) == "", name
    assert "use-auth-secret" in options


def test_coturn_publishes_its_listening_port_and_relay_range():
    options = turn_conf()
    listening = options.get("listening-port", ["3478"])[0]
    low, high = int(options["min-port"][0]), int(options["max-port"][0])
    ports = [str(p) for p in SERVICES["coturn"]["ports"]]
    assert f"{listening}:{listening}/udp" in ports
    assert f"{listening}:{listening}/tcp" in ports
    # Relayed media keeps its port number through Docker's NAT only 1:1.
    assert f"{low}-{high}:{low}-{high}/udp" in ports
    assert 0 < high - low <= 1000, "a huge published range makes Docker slow to start"
    # Clients must not relay into the private networks behind the server.
    denied = " ".join(options.get("denied-peer-ip", []))
    for network in ("10.0.0.0", "172.16.0.0", "192.168.0.0", "127.0.0.0"):
        assert network in denied


# --- Environment: set, read and documented --------------------------------------------------


def test_every_variable_given_to_the_hub_is_documented():
    assigned, mentioned = env_example()
    documented = set(assigned) | mentioned
    # All of them, not only those the code reads now (a superset of that), for
    # every process: x-hub-env and the media workers' overrides.
    assert set(COMPOSE["x-hub-env"]) | set(MEDIA_ENV_OVERRIDES) <= hub_env_names()
    undocumented = sorted(hub_env_names() - documented)
    assert not undocumented, f"not in docker/.env.example: {undocumented}"


def test_every_variable_given_to_the_hub_is_read_by_the_hub():
    unread = sorted(hub_env_names() - env_vars_read_by_hub() - set(READ_LATER))
    assert not unread, (
        f"compose sets {unread} for the hub, but no code reads them "
        "(misspelt, or the code that reads them is not written yet)"
    )


def test_every_substituted_variable_is_in_env_example():
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assigned, mentioned = env_example()
    missing = sorted(interpolated_names(text) - set(assigned) - mentioned)
    assert not missing, f"compose.yaml substitutes {missing}; document them in .env.example"
    # Required ones are real lines to fill in, not comments.
    not_assigned = sorted(required_names(text) - set(assigned))
    assert not not_assigned, f"required but not assigned in .env.example: {not_assigned}"


def test_env_example_holds_no_usable_secret():
    assigned, _ = env_example()
    for name in ("SECRET_KEY", "POSTGRES_PASSWORD", "TURN_SECRET"):
        assert assigned.get(name) == "", f"{name} must stay empty in .env.example"


def test_the_real_env_file_is_never_committed():
    result = subprocess.run(
        ["git", "check-ignore", "-q", "docker/.env"], cwd=REPO, check=False, timeout=30
    )
    assert result.returncode == 0, "add `docker/.env` to .gitignore: it holds the secrets"


def test_no_log_records_the_secrets_in_query_strings():
    """Host links (?key=…) and guest tokens (?guest=…) are secrets: nginx logs
    the path without the query string, and daphne (behind it) logs no access."""
    conf = (DOCKER / "nginx.conf").read_text(encoding="utf-8")
    formats = re.findall(r"log_format\s+(\w+)\s+((?:'[^']*'\s*)+);", conf)
    assert formats, "nginx.conf defines its own log_format"
    name, body = formats[0]
    assert "$request " not in body and "$request_uri" not in body and "$args" not in body
    assert "$uri" in body
    assert re.search(rf"access_log\s+\S+\s+{name}\s*;", conf)
    for service in COMPOSE["services"].values():
        argv = as_argv(service.get("command", []))
        if argv and argv[0] == "daphne":
            assert argv[argv.index("--access-log") + 1] == "/dev/null", argv
