from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from hub import ops, views

urlpatterns = [
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics, name="metrics"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(
            template_name="hub/login.html", redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("signaling.urls")),
    path("", include("alerts.urls")),
    path("", include("media.urls")),
    path("", views.landing, name="landing"),
]
