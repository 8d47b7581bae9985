"""WebSocket routes of the council app (collected by hub.routing)."""

websocket_urlpatterns: list = []
