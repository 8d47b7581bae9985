"""Every app's WebSocket routes, in one list (one routing module per app)."""

from importlib import import_module

APPS_WITH_ROUTES = ("hub", "signaling", "media", "council", "alerts", "portal")

websocket_urlpatterns = [
    route
    for app in APPS_WITH_ROUTES
    for route in import_module(f"{app}.routing").websocket_urlpatterns
]
