"""WebSocket routes of the portal app (collected by hub.routing)."""

websocket_urlpatterns: list = []
