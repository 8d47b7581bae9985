"""The naive baseline for bench.fanout: one Channels consumer per socket.

Every socket joins the group ``bench`` on connect; every ``group_send`` of
type ``bench.tick`` is forwarded to the socket as text. This is the textbook
Channels broadcast (the tutorial's chat room). Run it as::

    DJANGO_SETTINGS_MODULE=bench.naive_settings \
        daphne -b 127.0.0.1 -p 8200 bench.naive_app:application
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.naive_settings")

import django

django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

GROUP = "bench"


class NaiveConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def bench_tick(self, event):
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {
        "websocket": AllowedHostsOriginValidator(
            URLRouter([path("ws/naive/", NaiveConsumer.as_asgi())])
        ),
    }
)
