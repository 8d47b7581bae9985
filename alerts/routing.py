"""WebSocket routes of the alerts app (collected by hub.routing)."""

from django.urls import path

from alerts.dashboard import DeliveryDashboardConsumer

websocket_urlpatterns = [
    path("ws/alerts/console/<int:pk>/deliveries/", DeliveryDashboardConsumer.as_asgi()),
]
