"""WebSocket routes of the media app (collected by hub.routing)."""

websocket_urlpatterns: list = []
