"""WebSocket routes of the alerts app (collected by hub.routing)."""

websocket_urlpatterns: list = []
