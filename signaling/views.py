"""The meeting's pages (thin): the meeting page, the guest ticket, the records.

``/meet/<code>/`` is the pre-join page and the meeting itself (one page, the
JavaScript client switches views). Opened with ``?key=<host key>`` (the host
link) it makes this browser session the meeting's host and drops the key from
the address. Opened with ``?name=<display name>`` (a guest invite link) it
fills in the guest's name.
"""

from __future__ import annotations

import csv
import secrets

from django.conf import settings
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseForbidden,
    JsonResponse,
)
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_POST

from hub.auth import issue_guest_token
from signaling.models import Meeting

_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

# What the browser client says (signaling/static/signaling/js/meet.js), translated here.
CLIENT_TEXT = {
    "queued": gettext_lazy("You are in the queue, position %(position)s."),
    "admitted": gettext_lazy("You are in the meeting."),
    "sent_back": gettext_lazy("The host moved you back to the queue."),
    "muted_audio": gettext_lazy("A moderator turned your microphone off."),
    "muted_video": gettext_lazy("A moderator turned your camera off."),
    "host": gettext_lazy("You are now the host."),
    "floor_given": gettext_lazy("You have the floor: you can turn on your microphone."),
    "floor_taken": gettext_lazy("The moderator took the floor back."),
    "minutes": gettext_lazy("about %(n)s min"),
    "now": gettext_lazy("any moment now"),
    "you": gettext_lazy("you"),
    "host_role": gettext_lazy("host"),
    "moderator_role": gettext_lazy("moderator"),
    "guest_role": gettext_lazy("guest"),
    "viewer_role": gettext_lazy("viewer"),
    "participant_role": gettext_lazy("participant"),
    "admit": gettext_lazy("Let in"),
    "deny": gettext_lazy("Turn away"),
    "send_back": gettext_lazy("Back to queue"),
    "mute_audio": gettext_lazy("Mute"),
    "mute_video": gettext_lazy("Camera off"),
    "remove": gettext_lazy("Remove"),
    "hand_over": gettext_lazy("Make host"),
    "give_floor": gettext_lazy("Give the floor"),
    "take_floor": gettext_lazy("Take back the floor"),
    "publish": gettext_lazy("Publish"),
    "reject": gettext_lazy("Reject"),
    "question_pending": gettext_lazy("question waiting for a moderator"),
    "hand_raised": gettext_lazy("raised a hand"),
    "returning": gettext_lazy("was removed earlier"),
    "away": gettext_lazy("connection lost"),
    "waiting_since": gettext_lazy("waiting %(n)s min"),
    "new_in_queue": gettext_lazy("%(name)s is waiting in the queue."),
    "new_message": gettext_lazy("New message from %(name)s."),
    "reconnecting": gettext_lazy("Connection lost. Reconnecting…"),
    "connection_problem": gettext_lazy(
        "There is no connection to the server at the moment; please try again shortly."
    ),
    "link_expired": gettext_lazy(
        "This link has expired or is not valid. Reload the page to join again."
    ),
    "reconnected": gettext_lazy("Connected again."),
    "good": gettext_lazy("good"),
    "fair": gettext_lazy("fair"),
    "poor": gettext_lazy("poor — turn your camera off to keep the sound"),
    "offline": gettext_lazy("lost — reconnecting"),
    "no_devices": gettext_lazy(
        "No camera or microphone is available: you can still join, listen and write."
    ),
    "blocked_devices": gettext_lazy(
        "The browser did not allow the camera or microphone. "
        "You can join without them, or allow them in the address bar."
    ),
    "play": gettext_lazy("Click to turn the sound on"),
    "confirm_end": gettext_lazy("End the meeting for everyone?"),
    "raise_hand": gettext_lazy("Raise hand"),
    "lower_hand": gettext_lazy("Lower hand"),
    "lock": gettext_lazy("Lock meeting"),
    "unlock": gettext_lazy("Unlock meeting"),
    "stop_screen": gettext_lazy("Stop sharing"),
    "share_screen": gettext_lazy("Share screen"),
    "default_device": gettext_lazy("Default"),
    "recording_on": gettext_lazy("Recording is on"),
    "recording_since": gettext_lazy("since %(time)s"),
    "recording_started": gettext_lazy("Recording is on: this meeting is being recorded."),
    "recording_stopped": gettext_lazy("Recording is off."),
    "start_recording": gettext_lazy("Start recording"),
    "stop_recording": gettext_lazy("Stop recording"),
    "recording_failed": gettext_lazy("Could not record %(name)s: %(message)s"),
    "error": gettext_lazy("Something went wrong: %(message)s"),
}


def _meeting(code: str) -> Meeting:
    meeting = Meeting.objects.filter(code=code).select_related("owner").first()
    if meeting is None:
        raise Http404(_("There is no meeting with this code. Check the link you were given."))
    return meeting


def _hosts(request: HttpRequest, meeting: Meeting) -> bool:
    """The owner, a named moderator, an administrator, or whoever opened the host link."""
    if meeting.code in request.session.get("meet_hosts", []):
        return True
    user = request.user
    if not user.is_authenticated:
        return False
    return (
        meeting.owner_id == user.pk
        or user.is_superuser
        or meeting.moderators.filter(pk=user.pk).exists()
    )


@require_GET
def meeting_page(request: HttpRequest, code: str) -> HttpResponse:
    meeting = _meeting(code)
    key = request.GET.get("key")
    if key is not None:
        if not meeting.host_key_matches(key[:200]):
            return HttpResponseForbidden(_("This host link is not valid."))
        hosts = request.session.get("meet_hosts", [])
        if meeting.code not in hosts:
            # New rights, new session key (no fixation of a key planted earlier).
            request.session.cycle_key()
            request.session["meet_hosts"] = [*hosts, meeting.code][-50:]
        # The key leaves the address bar (and the Referer of anything after).
        rest = {k: v for k, v in request.GET.items() if k != "key"}
        return redirect(request.path + (f"?{urlencode(rest)}" if rest else ""))
    user = request.user
    if user.is_authenticated:
        name = user.get_full_name() or user.get_username()
    else:
        name = (request.GET.get("name") or request.session.get("meet_name") or "").strip()[:80]
    context = {
        "meeting": meeting,
        "ended": meeting.ended_at is not None,
        "is_host": _hosts(request, meeting),
        "texts": CLIENT_TEXT,
        "signed_in": user.is_authenticated,
        "config": {
            "code": meeting.code,
            "kind": meeting.kind,
            "title": meeting.title,
            "socket": f"/ws/meet/{meeting.code}/",
            "ticket": f"/meet/{meeting.code}/ticket",
            "signedIn": user.is_authenticated,
            "name": name,
            "maxChat": settings.MEETINGS["MAX_CHAT_CHARS"],
        },
    }
    ended = meeting.ended_at is not None
    # Someone about to join a meeting being recorded is told before entering.
    context["recording"] = not ended and meeting.room().recording
    if ended and context["is_host"]:
        context["recordings"] = [
            e.detail.get("file", "") for e in meeting.log.filter(kind="recording_saved")
        ]
    status = 410 if ended else 200
    return render(request, "signaling/meeting.html", context, status=status)


@require_POST
def ticket(request: HttpRequest, code: str) -> JsonResponse:
    """What the page needs to open the meeting's socket: for a guest, a signed
    token naming them and this meeting (kept in their session, so a reload
    or a reconnect is the same guest)."""
    meeting = _meeting(code)
    if meeting.ended_at is not None:
        return JsonResponse({"error": _("The meeting has ended.")}, status=410)
    if request.user.is_authenticated:
        return JsonResponse({"guest": None})
    name = " ".join((request.POST.get("name") or "").split())[:80]
    if not name:
        return JsonResponse({"error": _("Enter your name.")}, status=400)
    guest_id = request.session.get("meet_guest_id")
    if not guest_id:
        guest_id = request.session["meet_guest_id"] = secrets.token_urlsafe(12)
    request.session["meet_name"] = name
    token = issue_guest_token(name, f"meet:{meeting.code}", guest_id=guest_id)
    return JsonResponse({"guest": token})


def _safe_cell(value) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_CSV_FORMULA_START) else text


def _csv_response(filename: str, header: list[str], rows) -> HttpResponse:
    # UTF-8 with a BOM: spreadsheets on Polish Windows then read the diacritics.
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    response.write("\ufeff")
    writer = csv.writer(response)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_safe_cell(cell) for cell in row])
    return response


@require_GET
def records(request: HttpRequest, code: str, what: str) -> HttpResponse:
    meeting = _meeting(code)
    if not _hosts(request, meeting):
        return HttpResponseForbidden(_("Only the meeting's host can download its records."))
    tz = timezone.get_current_timezone()
    if what == "chat":
        rows = (
            (
                m.created_at.astimezone(tz).isoformat(timespec="seconds"),
                m.author,
                m.role,
                m.get_status_display(),
                m.text,
            )
            for m in meeting.chat.all()
        )
        header = [_("time"), _("author"), _("role"), _("status"), _("message")]
    else:
        rows = (
            (
                e.at.astimezone(tz).isoformat(timespec="seconds"),
                e.kind,
                e.name,
                e.actor,
                "; ".join(
                    str(e.detail[key]) for key in ("reason", "role", "file") if e.detail.get(key)
                ),
            )
            for e in meeting.log.all()
        )
        header = [_("time"), _("event"), _("who"), _("by"), _("detail")]
    return _csv_response(f"{meeting.code}-{what}.csv", header, rows)


# --- "My meetings": staff start meetings here --------------------------------------


def _is_staff(user) -> bool:
    from hub.roles import roles_of
    from signaling.consumers import STAFF_ROLES

    return user.is_staff or bool(roles_of(user) & STAFF_ROLES)


def my_meetings(request: HttpRequest) -> HttpResponse:
    """The meetings a staff member owns, moderates or is invited to, and a form
    to start a new one (its owner hosts it when signed in: no key needed)."""
    from django.contrib.auth.views import redirect_to_login
    from django.db.models import Q

    from signaling.rules import Kind
    from signaling.services import create_meeting

    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not _is_staff(request.user):
        return HttpResponseForbidden(_("Only municipal staff can start meetings."))
    kinds = dict(Meeting.KIND_CHOICES)
    error = None
    title = ""
    kind = Kind.CONSULTATION.value
    if request.method == "POST":
        title = " ".join(request.POST.get("title", "").split())
        kind = request.POST.get("kind", "")
        invite = " ".join(request.POST.get("invite", "").replace(",", " ").split())
        names = set(invite.split())
        from django.contrib.auth import get_user_model

        invited = list(get_user_model().objects.filter(username__in=names))
        unknown = sorted(names - {u.get_username() for u in invited})
        if kind not in kinds:
            error = _("Choose the kind of meeting.")
        elif not title or len(title) > 200:
            error = _("Give the meeting a title (at most 200 characters).")
        elif unknown:
            error = _("No account with the user name: %(names)s.") % {"names": ", ".join(unknown)}
        elif kind == Kind.BRIEFING and not invited:
            error = _("A briefing is for invited staff: give their user names.")
        else:
            meeting, _key = create_meeting(Kind(kind), title, owner=request.user)
            if kind == Kind.BRIEFING:
                meeting.invited.set(invited)
            return redirect(f"{request.path}?created={meeting.code}")
    elif request.method != "GET":
        return HttpResponse(status=405)
    user = request.user
    meetings = (
        Meeting.objects.filter(Q(owner=user) | Q(moderators=user) | Q(invited=user))
        .distinct()
        .order_by("ended_at", "-created_at")[:50]
    )
    rows = [
        {
            "meeting": m,
            "guest_link": request.build_absolute_uri(f"/meet/{m.code}/"),
            "hosts": m.owner_id == user.pk,
        }
        for m in meetings
    ]
    return render(
        request,
        "signaling/my_meetings.html",
        {
            "rows": rows,
            "kinds": kinds.items(),
            "kind": kind,
            "title": title,
            "invite": invite if request.method == "POST" else "",
            "error": error,
            "created": request.GET.get("created"),
        },
        status=400 if error else 200,
    )
