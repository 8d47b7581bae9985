from django.contrib import admin
from django.urls import include, path

from hub import ops, views

urlpatterns = [
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics, name="metrics"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("", include("signaling.urls")),
    path("", views.landing, name="landing"),
]
