"""Settings for eGmina Hub, read from the environment.

With nothing set you get the *embedded default*: SQLite, the in-memory channel
layer and topic bus, media in-process, DEBUG on, one process. Set
``HUB_ENV=production`` plus ``SECRET_KEY``, ``ALLOWED_HOSTS``, ``DATABASE_URL``
and ``REDIS_URL`` for a deployment. Every variable is listed in the README.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dj_database_url
from django.utils.translation import gettext_lazy as _

from hub.env import (
    ConfigurationError,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_required,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("HUB_VAR_DIR", str(BASE_DIR / "var")))

HUB_ENV = env_str("HUB_ENV", "development")
if HUB_ENV not in {"development", "production"}:
    raise ConfigurationError(f"HUB_ENV={HUB_ENV!r}: use 'development' or 'production'")
PRODUCTION = HUB_ENV == "production"

# --- Core -------------------------------------------------------------------

DEBUG = env_bool("DEBUG", not PRODUCTION)
if PRODUCTION:
    SECRET_KEY = env_required("SECRET_KEY")
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])
    if not ALLOWED_HOSTS:
        raise ConfigurationError("ALLOWED_HOSTS must be set in production")
else:
    # Local use only; production refuses to start without a real key.
    SECRET_KEY = env_str("SECRET_KEY", "django-insecure-local-only-egmina-hub-development-key-0123")
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "hub",
    "signaling",
    "media",
    "portal",
    "alerts",
    "council",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "hub.middleware.PolishFirstLocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "hub.urls"
ASGI_APPLICATION = "hub.asgi.application"
AUTH_USER_MODEL = "hub.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "alerts.live.context",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL is None:
    VAR_DIR.mkdir(parents=True, exist_ok=True)  # the embedded default's SQLite file
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        # A server keeps its connection (one per process: the async code reaches
        # the database through one thread). Without it every call opens a new
        # PostgreSQL connection: measured, 10 x the database's CPU and half the
        # joins per second (bench/meet_signaling.py). SQLite needs none.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60 if DATABASE_URL else 0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads and processes write (the alerts worker's channels, the
    # web process): a transaction takes the write lock when it begins, so a
    # writer waits for another instead of failing with "database is locked"
    # half-way; WAL lets readers go on meanwhile.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        transaction_mode="IMMEDIATE",
        timeout=20,
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, channel layer and topic bus -------------------------------------

REDIS_URL = env_str("REDIS_URL")
# Every Redis key and channel this hub writes starts with this prefix, so that
# tests (and several hubs) can share one Redis without touching each other.
REDIS_PREFIX = env_str("REDIS_PREFIX", "egmina")
# redis-py 8 caps a pool at 100 connections and times sockets out after 5 s;
# channels_redis blocks for 5 s in BZPOPMIN. Either default breaks a busy hub
# (HTTP 500 on concurrent group_add; idle consumers closed with 1011,
# django/channels_redis#422), so both are settings with safe values here.
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 2000, minimum=10)
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 30.0, minimum=6.0)

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "max_connections": REDIS_MAX_CONNECTIONS,
                        "socket_timeout": REDIS_SOCKET_TIMEOUT,
                        "socket_connect_timeout": 5.0,
                    }
                ],
                "prefix": f"{REDIS_PREFIX}:asgi",
                # channels_redis keeps ONE queue per process for all its
                # sockets: a busy process holds many messages at once.
                "capacity": env_int("CHANNEL_CAPACITY", 10000, minimum=10),
                "expiry": 60,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The cache (rate limits shared by all processes): Redis when there is one.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"{REDIS_PREFIX}:cache",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- The real-time envelope (hub.envelope, hub.consumers, hub.live) ---------

REALTIME = {
    # Largest incoming text frame, in bytes; larger ones are refused.
    "MAX_FRAME_BYTES": env_int("WS_MAX_FRAME_BYTES", 64 * 1024, minimum=1024),
    # Token bucket per connection: sustained messages per second and burst.
    "RATE_PER_SECOND": env_float("WS_RATE_PER_SECOND", 10.0, minimum=0.1),
    "RATE_BURST": env_int("WS_RATE_BURST", 30, minimum=1),
    # A connection refused this many times in a row is closed (4008).
    "RATE_STRIKES_BEFORE_CLOSE": env_int("WS_RATE_STRIKES", 20, minimum=1),
    # Concurrent WebSocket connections allowed per signed-in user and per IP.
    "MAX_CONNECTIONS_PER_USER": env_int("WS_MAX_CONNECTIONS_PER_USER", 10, minimum=1),
    "MAX_CONNECTIONS_PER_IP": env_int("WS_MAX_CONNECTIONS_PER_IP", 200, minimum=1),
    # The server sends {"type": "ping"} this often; clients reconnect when they
    # hear nothing for twice as long. Dead clients are found by the servers'
    # WebSocket protocol pings (daphne's and websockets' own).
    "HEARTBEAT_INTERVAL": env_float("WS_HEARTBEAT_INTERVAL", 25.0, minimum=0.05),
    # Events kept per topic for resume, and how long a resume token stays valid.
    "RESUME_BUFFER": env_int("WS_RESUME_BUFFER", 1000, minimum=10),
    "RESUME_TTL": env_int("WS_RESUME_TTL", 300, minimum=5),
    # Topics one connection may subscribe to.
    "MAX_SUBSCRIPTIONS": env_int("WS_MAX_SUBSCRIPTIONS", 50, minimum=1),
    # Pending outgoing bytes per socket on the broadcast path before a slow
    # reader is dropped (it resumes from the buffer when it comes back).
    "MAX_SEND_BUFFER_BYTES": env_int("WS_MAX_SEND_BUFFER_BYTES", 1024 * 1024, minimum=4096),
    # Pending TCP connections a broadcast process queues (capped by the
    # kernel's net.core.somaxconn).
    "LISTEN_BACKLOG": env_int("WS_LISTEN_BACKLOG", 4096, minimum=16),
}

# --- Virtual meetings (signaling) -------------------------------------------

MEETINGS = {
    # Residents (with companions) in one consultation or parent-evening call.
    "CALL_MAX": env_int("MEET_CALL_MAX", 5, minimum=1),
    "BRIEFING_MAX": env_int("MEET_BRIEFING_MAX", 25, minimum=2),
    "PUBLIC_MAX": env_int("MEET_PUBLIC_MAX", 200, minimum=2),
    # The most people one peer-to-peer (mesh) room holds: every pair sends
    # directly, so a phone uploads its video once per other participant.
    "MESH_MAX": env_int("MEET_MESH_MAX", 8, minimum=2),
    # Past MESH_MAX the call moves to the forwarding unit (media/sfu) without
    # anyone leaving, and stays there until it is empty; off: MESH_MAX caps rooms.
    "SFU": env_bool("MEET_SFU", True),
    # Every call goes through the forwarding unit from its first participant.
    "FORCE_SFU": env_bool("MEET_FORCE_SFU", False),
    # Recording starts this many seconds after everyone was told it is on.
    "RECORDING_LEAD_SECONDS": env_float("MEET_RECORDING_LEAD_SECONDS", 1.0, minimum=0.0),
    # A participant whose connection drops keeps their place (and their
    # place in the queue) this long, in seconds.
    "RECONNECT_GRACE": env_float("MEET_RECONNECT_GRACE", 45.0, minimum=5.0),
    # The queue's estimate per resident before any service was measured.
    "SERVICE_MINUTES": env_float("MEET_SERVICE_MINUTES", 10.0, minimum=1.0),
    # Signaling limits: one SDP, one chat message, chat messages per minute.
    "MAX_SDP_BYTES": env_int("MEET_MAX_SDP_BYTES", 32 * 1024, minimum=1024),
    "MAX_CHAT_CHARS": env_int("MEET_MAX_CHAT_CHARS", 1000, minimum=10),
    "CHAT_PER_MINUTE": env_int("MEET_CHAT_PER_MINUTE", 20, minimum=1),
    # Messages per second on a meeting socket (ICE candidates come in bursts).
    "RATE_PER_SECOND": env_float("MEET_RATE_PER_SECOND", 30.0, minimum=1.0),
    "RATE_BURST": env_int("MEET_RATE_BURST", 120, minimum=10),
    # How often a socket compares its copy of the room with the stored one
    # (a lost update is caught up within this many seconds).
    "RESYNC_SECONDS": env_float("MEET_RESYNC_SECONDS", 10.0, minimum=0.05),
}
# --- E-mail (alerts, confirmations) ----------------------------------------------

EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = env_str("EMAIL_HOST", "127.0.0.1")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 20.0, minimum=1.0)

# --- Crisis alerts (alerts) -----------------------------------------------------

ALERTS = {
    # Deliveries a worker takes at once, and how long they stay its own.
    "BATCH": env_int("ALERTS_BATCH", 100, minimum=1),
    "LEASE_SECONDS": env_float("ALERTS_LEASE_SECONDS", 60.0, minimum=1.0),
    # Retries: exponential backoff with full jitter, then give up.
    "RETRY_BASE_SECONDS": env_float("ALERTS_RETRY_BASE_SECONDS", 5.0, minimum=0.01),
    "RETRY_MAX_SECONDS": env_float("ALERTS_RETRY_MAX_SECONDS", 600.0, minimum=0.01),
    "MAX_ATTEMPTS": env_int("ALERTS_MAX_ATTEMPTS", 8, minimum=1),
    # Where idle workers look again, in seconds.
    "POLL_SECONDS": env_float("ALERTS_POLL_SECONDS", 1.0, minimum=0.01),
    "FROM_EMAIL": env_str("ALERTS_FROM_EMAIL", "ostrzezenia@glogow-mlp.example"),
    # A file the worker touches every loop (its container's healthcheck); none by default.
    "HEARTBEAT_FILE": env_str("ALERTS_HEARTBEAT_FILE", ""),
    # SMS: "smsapi" (SMSAPI.pl) or "serwersms" (SerwerSMS.pl); empty sends no SMS.
    "SMS_PROVIDER": env_str("ALERTS_SMS_PROVIDER", ""),
    "SMS_BASE_URL": env_str("ALERTS_SMS_BASE_URL", ""),
    "SMS_TOKEN": env_str("ALERTS_SMS_TOKEN", ""),
    "SMS_SENDER": env_str("ALERTS_SMS_SENDER", ""),
    "SMS_MAX_PARTS": env_int("ALERTS_SMS_MAX_PARTS", 3, minimum=1),
    "SMS_TRANSLITERATE": env_bool("ALERTS_SMS_TRANSLITERATE", False),
    "SMS_TIMEOUT": env_float("ALERTS_SMS_TIMEOUT", 10.0, minimum=1.0),
    "SMS_TEST": env_bool("ALERTS_SMS_TEST", False),
    # The secret in SMSAPI's delivery-report URL; empty refuses every report.
    "SMS_CALLBACK_SECRET": env_str("ALERTS_SMS_CALLBACK_SECRET", ""),
    # CAP 1.2 sender (an address, no spaces or commas) and its readable name.
    "CAP_SENDER": env_str("ALERTS_CAP_SENDER", ""),
    "CAP_SENDER_NAME": env_str("ALERTS_CAP_SENDER_NAME", "Gmina Głogów Małopolski"),
    # How many messages of a channel one worker has in flight at once, and
    # at most how many it starts per second (0: no limit). Where a provider's
    # contract limits requests per second, set its rate to that limit divided
    # by the number of workers (a provider's 429 is retried with backoff).
    "EMAIL_CONCURRENCY": env_int("ALERTS_EMAIL_CONCURRENCY", 8, minimum=1),
    "EMAIL_RATE": env_float("ALERTS_EMAIL_RATE", 0.0, minimum=0.0),
    "SMS_CONCURRENCY": env_int("ALERTS_SMS_CONCURRENCY", 8, minimum=1),
    "SMS_RATE": env_float("ALERTS_SMS_RATE", 0.0, minimum=0.0),
    "PUSH_CONCURRENCY": env_int("ALERTS_PUSH_CONCURRENCY", 8, minimum=1),
    "PUSH_RATE": env_float("ALERTS_PUSH_RATE", 0.0, minimum=0.0),
    # Web Push: the VAPID key pair (RFC 8292; the private key as PEM or as
    # base64url of the raw 32 bytes); empty turns browser notifications off.
    "VAPID_PRIVATE_KEY": env_str("ALERTS_VAPID_PRIVATE_KEY", ""),
    "VAPID_SUBJECT": env_str("ALERTS_VAPID_SUBJECT", "mailto:ostrzezenia@glogow-mlp.example"),
    # The push services a browser subscription may point at: the server posts
    # only to these hosts (a leading dot allows subdomains), never to an
    # address someone typed in.
    "PUSH_ALLOWED_HOSTS": env_list(
        "ALERTS_PUSH_ALLOWED_HOSTS",
        [
            "fcm.googleapis.com",
            "updates.push.services.mozilla.com",
            ".push.apple.com",
            ".notify.windows.com",
        ],
    ),
    "PUSH_TIMEOUT": env_float("ALERTS_PUSH_TIMEOUT", 10.0, minimum=1.0),
    # The phone's 6-digit confirmation code: valid this long, this many tries.
    "PHONE_CODE_TTL_SECONDS": env_int("ALERTS_PHONE_CODE_TTL_SECONDS", 900, minimum=60),
    "PHONE_CODE_MAX_ATTEMPTS": env_int("ALERTS_PHONE_CODE_MAX_ATTEMPTS", 5, minimum=1),
    # The public subscribe form: at most this many submissions per client
    # address per hour (each may send an e-mail or an SMS).
    "SUBSCRIBE_PER_IP_PER_HOUR": env_int("ALERTS_SUBSCRIBE_PER_IP_PER_HOUR", 20, minimum=1),
    # SerwerSMS delivery reports: how often a worker asks for them (s); 0: never.
    "SMS_REPORT_POLL_SECONDS": env_float("ALERTS_SMS_REPORT_POLL_SECONDS", 60.0, minimum=0.0),
    # The operators' delivery dashboard looks at the counts this often (s).
    "DASHBOARD_SECONDS": env_float("ALERTS_DASHBOARD_SECONDS", 1.0, minimum=0.1),
}
if ALERTS["SMS_PROVIDER"] not in ("", "smsapi", "serwersms"):
    raise ConfigurationError(
        f"ALERTS_SMS_PROVIDER={ALERTS['SMS_PROVIDER']!r}: use 'smsapi', 'serwersms' or nothing"
    )

# Links printed by create_meeting and shown to hosts start with this.
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")

# Behind nginx, take the client address from the last X-Forwarded-For hop
# (the broadcast processes; daphne gets --proxy-headers for the same).
WS_TRUST_X_FORWARDED_FOR = env_bool("WS_TRUST_X_FORWARDED_FOR", False)

# Signed guest tokens (meeting invite links): lifetime in seconds.
GUEST_TOKEN_MAX_AGE = env_int("GUEST_TOKEN_MAX_AGE", 12 * 3600, minimum=60)

# --- Media ------------------------------------------------------------------


def _default_ffmpeg() -> str:
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


FFMPEG_BINARY = env_str("FFMPEG_BINARY") or _default_ffmpeg()
# "embedded": aiortc peers run inside the web process; "worker": separate media workers.
MEDIA_MODE = env_str("MEDIA_MODE", "worker" if REDIS_URL else "embedded")
# Limits of the forwarding unit (media.sfu), per process: web process in the
# embedded mode, each `python -m media.worker` in the worker mode.
MEDIA = {
    "MAX_PEERS": env_int("MEDIA_MAX_PEERS", 300, minimum=1),
    "MAX_BITRATE_KBPS": env_int("MEDIA_MAX_BITRATE_KBPS", 400_000, minimum=100),
    # A peer whose ICE/DTLS has not completed after this many seconds is dropped.
    "CONNECT_TIMEOUT": env_float("MEDIA_CONNECT_TIMEOUT", 30.0, minimum=1.0),
    "MAX_SDP_BYTES": env_int("MEDIA_MAX_SDP_BYTES", 32 * 1024, minimum=1024),
    # A publisher that sent no media for this many seconds is taken for gone
    # (FFmpeg's WHIP muxer does not answer ICE consent checks, so media is the
    # publishers' sign of life).
    "PUBLISHER_IDLE_SECONDS": env_float("MEDIA_PUBLISHER_IDLE_SECONDS", 20.0, minimum=1.0),
    # The addresses ICE host candidates are gathered on (comma-separated):
    # those clients can reach, e.g. the media server's public address. Empty:
    # every address of every interface except loopback.
    "ICE_ADDRESSES": env_list("MEDIA_ICE_ADDRESSES", []),
    # Where recordings are written (a directory per stream or meeting).
    "RECORDINGS_DIR": env_str("MEDIA_RECORDINGS_DIR") or str(BASE_DIR / "var" / "recordings"),
    # Worker mode: each media worker announces itself and its load this often
    # (seconds); one silent for WORKER_TTL seconds is taken for dead and its
    # rooms are placed again (keep WORKER_TTL at least twice HEARTBEAT_SECONDS).
    "HEARTBEAT_SECONDS": env_float("MEDIA_HEARTBEAT_SECONDS", 1.0, minimum=0.05),
    "WORKER_TTL": env_float("MEDIA_WORKER_TTL", 4.0, minimum=0.2),
    # Touched by a media worker on every heartbeat Redis took (its container
    # healthcheck checks the age); empty: none.
    "HEARTBEAT_FILE": env_str("MEDIA_HEARTBEAT_FILE", ""),
    # How long the web side waits for a media worker's answer (then 503).
    "RPC_TIMEOUT": env_float("MEDIA_RPC_TIMEOUT", 10.0, minimum=0.1),
    # WHIP/WHEP offers one client address may post per minute.
    "OFFERS_PER_IP_PER_MINUTE": env_int("MEDIA_OFFERS_PER_IP_PER_MINUTE", 30, minimum=1),
    # Origins whose browser players may call /whip and /whep ("*": any).
    "CORS_ORIGINS": env_list("MEDIA_CORS_ORIGINS", ["*"]),
}

# --- STUN/TURN for the browsers of meetings (signaling.turn) ------------------

# Comma-separated "stun:host:port" / "turn:host:port?transport=udp" URLs. No
# public STUN server by default: a municipality's meetings should not reveal
# who takes part to a third party, and coturn answers STUN as well.
STUN_URLS = env_list("STUN_URLS", [])
TURN_URLS = env_list("TURN_URLS", [])
# Shared with coturn (use-auth-secret, static-auth-secret): the hub signs
# time-limited TURN credentials with it (TURN REST API). Empty: no TURN.
TURN_SECRET = env_str("TURN_SECRET", "")
# Lifetime of issued TURN credentials, in seconds: the longest meeting.
TURN_CREDENTIAL_TTL = env_int("TURN_CREDENTIAL_TTL", 12 * 3600, minimum=60)


def _check_ice_urls(name: str, urls: list[str], schemes: tuple[str, ...]) -> None:
    for url in urls:
        if not url.startswith(schemes):
            raise ConfigurationError(f"{name}: {url!r} does not start with {' or '.join(schemes)}")


_check_ice_urls("STUN_URLS", STUN_URLS, ("stun:", "stuns:"))
_check_ice_urls("TURN_URLS", TURN_URLS, ("turn:", "turns:"))
if PRODUCTION and TURN_URLS and not TURN_SECRET:
    raise ConfigurationError("TURN_SECRET must be set in production when TURN_URLS is set")

# --- Internationalisation: Polish first, English second ---------------------

LANGUAGE_CODE = "pl"
LANGUAGES = [("pl", _("Polish")), ("en", _("English"))]
LOCALE_PATHS = [BASE_DIR / "hub" / "locale"]
TIME_ZONE = "Europe/Warsaw"
USE_I18N = True
USE_TZ = True

# --- Static files -------------------------------------------------------------

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

# --- Security -----------------------------------------------------------------

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    # nginx terminates TLS and sets X-Forwarded-Proto (docker/nginx.conf).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Health probes come over plain HTTP from inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)

# Who may read /metrics: a comma-separated list of client IPs (empty: anyone
# who can reach it; production puts it behind nginx's internal location).
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", [])

# --- Logging: readable locally, JSON lines in production ----------------------

LOG_FORMAT = env_str("LOG_FORMAT", "json" if PRODUCTION else "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT},
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}
