"""Settings for the naive Channels baseline (bench.naive_app).

The hub's settings, with the *plain* channels_redis defaults as the channel
layer (capacity 100, expiry 60, redis-py's default pool), as a first
Channels deployment would have them. Only the prefix is set, so that a
benchmark run shares Redis with nothing else.
"""

import os

from hub.settings import *  # noqa: F403
from hub.settings import REDIS_URL

ASGI_APPLICATION = "bench.naive_app.application"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL or "redis://127.0.0.1:6379/0"],
            "prefix": os.environ.get("BENCH_CHANNELS_PREFIX", "asgi"),
        },
    }
}
