from django.urls import path

from alerts import callbacks, console, dashboard, feeds, public, push_views, subscriptions

urlpatterns = [
    path("alerts/push/key", push_views.push_key, name="alerts-push-key"),
    path("alerts/push/subscribe", push_views.push_subscribe, name="alerts-push-subscribe"),
    path("alerts/push/unsubscribe", push_views.push_unsubscribe, name="alerts-push-unsubscribe"),
    path("alerts/sw.js", push_views.service_worker, name="alerts-service-worker"),
    path("alerts/console/", console.console, name="alerts-console"),
    path("alerts/console/new/", console.compose, name="alerts-console-new"),
    path("alerts/console/<int:pk>/", console.detail, name="alerts-console-detail"),
    path("alerts/console/<int:pk>/edit/", console.compose, name="alerts-console-edit"),
    path(
        "alerts/console/<int:pk>/deliveries/",
        dashboard.deliveries,
        name="alerts-console-deliveries",
    ),
    path(
        "alerts/console/<int:pk>/deliveries/list/",
        dashboard.delivery_list,
        name="alerts-console-delivery-list",
    ),
    path("alerts/subscribe/", subscriptions.subscribe, name="alerts-subscribe"),
    path("alerts/my/", subscriptions.my_alerts, name="alerts-my"),
    path("alerts/confirm/<str:signed>", subscriptions.confirm, name="alerts-confirm"),
    path("alerts/preferences/<str:token>/", subscriptions.preferences, name="alerts-preferences"),
    path("alerts/phone/<str:signed>/", subscriptions.phone, name="alerts-phone"),
    path("alerts/unsubscribe/<str:token>", subscriptions.unsubscribe, name="alerts-unsubscribe"),
    path("a/u/<str:token>", subscriptions.sms_unsubscribe, name="alerts-sms-unsubscribe"),
    path("alerts/", public.alert_list, name="alert_list"),
    path("alerts/current.json", public.current_json, name="alerts_current"),
    path("alerts/feed.atom", feeds.atom_feed, name="atom_feed"),
    path("alerts/cap.xml", feeds.cap_feed, name="cap_feed"),
    path("alerts/<str:identifier>/cap.xml", feeds.cap_document, name="cap_document"),
    path("alerts/<str:identifier>/", public.alert_detail, name="alert_detail"),
    path(
        "alerts/sms/smsapi/<str:secret>/report",
        callbacks.smsapi_report,
        name="alerts-smsapi-report",
    ),
]
