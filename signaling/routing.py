"""WebSocket routes of the signaling app (collected by hub.routing)."""

websocket_urlpatterns: list = []
