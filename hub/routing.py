"""WebSocket routes of the hub itself."""

from django.urls import path

from hub import consumers

websocket_urlpatterns = [
    path("ws/hub/", consumers.HubConsumer.as_asgi()),
    path("ws/live/", consumers.LiveConsumer.as_asgi()),
]
