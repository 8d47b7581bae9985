"""WebSocket routes of the signaling app (collected by hub.routing)."""

from django.urls import re_path

from signaling.consumers import MeetConsumer

websocket_urlpatterns = [
    re_path(r"^ws/meet/(?P<code>[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4})/$", MeetConsumer.as_asgi()),
]
