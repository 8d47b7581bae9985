from django.urls import path

from alerts import callbacks, feeds

urlpatterns = [
    path("alerts/feed.atom", feeds.atom_feed, name="atom_feed"),
    path("alerts/cap.xml", feeds.cap_feed, name="cap_feed"),
    path("alerts/<str:identifier>/cap.xml", feeds.cap_document, name="cap_document"),
    path(
        "alerts/sms/smsapi/<str:secret>/report",
        callbacks.smsapi_report,
        name="alerts-smsapi-report",
    ),
]
