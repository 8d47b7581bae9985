"""The hub's URLs plus the operator console, for the tests, until the console
is wired into alerts/urls.py (the same patterns and names)."""

from django.urls import include, path

from alerts import console

urlpatterns = [
    path("alerts/console/", console.console, name="alerts-console"),
    path("alerts/console/new/", console.compose, name="alerts-console-new"),
    path("alerts/console/<int:pk>/", console.detail, name="alerts-console-detail"),
    path("alerts/console/<int:pk>/edit/", console.compose, name="alerts-console-edit"),
    path("", include("hub.urls")),
]
