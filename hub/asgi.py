"""ASGI entry point: HTTP through Django, WebSocket through origin check,
session auth and guest tokens, then each app's routing module."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hub.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from hub.auth import GuestTokenMiddleware  # noqa: E402
from hub.routing_all import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(GuestTokenMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)
