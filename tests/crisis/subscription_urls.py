"""The hub's URLs plus the subscription views, for the tests, until they are
wired into alerts/urls.py (the same patterns and names)."""

from django.urls import include, path

from alerts import subscriptions

urlpatterns = [
    path("alerts/subscribe/", subscriptions.subscribe, name="alerts-subscribe"),
    path("alerts/my/", subscriptions.my_alerts, name="alerts-my"),
    path("alerts/confirm/<str:signed>", subscriptions.confirm, name="alerts-confirm"),
    path("alerts/preferences/<str:token>/", subscriptions.preferences, name="alerts-preferences"),
    path("alerts/phone/<str:signed>/", subscriptions.phone, name="alerts-phone"),
    path("alerts/unsubscribe/<str:token>", subscriptions.unsubscribe, name="alerts-unsubscribe"),
    path("a/u/<str:token>", subscriptions.sms_unsubscribe, name="alerts-sms-unsubscribe"),
    path("", include("hub.urls")),
]
