from django.urls import path, re_path

from signaling import views

CODE = r"(?P<code>[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4})"

urlpatterns = [
    path("meet/", views.my_meetings, name="meetings"),
    re_path(rf"^meet/{CODE}/$", views.meeting_page, name="meeting"),
    re_path(rf"^meet/{CODE}/ticket$", views.ticket, name="meeting-ticket"),
    re_path(
        rf"^meet/{CODE}/records/(?P<what>chat|log)\.csv$", views.records, name="meeting-records"
    ),
]
