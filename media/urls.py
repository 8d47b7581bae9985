from django.urls import re_path

from media import views
from media.models import SLUG

STREAM = rf"(?P<stream>{SLUG})"
SESSION = r"(?P<session>[A-Za-z0-9_\-.]{1,80})"

urlpatterns = [
    re_path(rf"^whip/{STREAM}$", views.whip, name="whip"),
    re_path(rf"^whip/{STREAM}/{SESSION}$", views.whip_session, name="whip-session"),
    re_path(rf"^whep/{STREAM}$", views.whep, name="whep"),
    re_path(rf"^whep/{STREAM}/{SESSION}$", views.whep_session, name="whep-session"),
]
