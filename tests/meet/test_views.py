"""The meeting's HTTP side: the page (host link, guest link, unknown, ended),
the guest ticket, the records the host downloads, and create_meeting."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from hub.auth import read_guest_token
from signaling.models import CODE_ALPHABET, ChatMessage, Meeting, MeetingEvent
from signaling.rules import Kind
from signaling.services import create_meeting
from tests.meet.helpers import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def meeting():
    return create_meeting(Kind.CONSULTATION, "Konsultacje podatkowe")


def test_the_guest_link_shows_the_prejoin_page_in_polish_with_the_name_filled_in(meeting):
    meeting, _ = meeting
    response = Client().get(f"/meet/{meeting.code}/?name=Jan%20Kowalski")
    assert response.status_code == 200
    page = response.content.decode()
    assert '<html lang="pl">' in page
    assert 'value="Jan Kowalski"' in page
    assert "Konsultacje podatkowe" in page
    config = json.loads(re.search(r'id="meet-config"[^>]*>(.*?)</script>', page).group(1))
    assert config["socket"] == f"/ws/meet/{meeting.code}/"
    assert config["signedIn"] is False


def test_a_name_with_markup_is_escaped_on_the_page(meeting):
    meeting, _ = meeting
    page = Client().get(f"/meet/{meeting.code}/?name=<script>alert(1)</script>").content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page


def test_unknown_code_is_404_and_says_nothing_more():
    response = Client().get("/meet/aaaa-bbbb-cccc/")
    assert response.status_code == 404


def test_the_host_link_makes_the_session_host_and_drops_the_key(meeting):
    meeting, key = meeting
    client = Client()
    response = client.get(f"/meet/{meeting.code}/?key={key}&name=Anna")
    assert response.status_code == 302
    assert response["Location"] == f"/meet/{meeting.code}/?name=Anna"
    assert meeting.code in client.session["meet_hosts"]
    page = client.get(response["Location"]).content.decode()
    assert f"/meet/{meeting.code}/records/chat.csv" in page  # the host's records links


def test_a_wrong_host_key_is_refused_and_grants_nothing(meeting):
    meeting, key = meeting
    client = Client()
    response = client.get(f"/meet/{meeting.code}/?key={key[:-1]}x")
    assert response.status_code == 403
    assert "meet_hosts" not in client.session


def test_an_ended_meeting_says_so(meeting):
    from django.utils import timezone

    meeting, _ = meeting
    Meeting.objects.filter(pk=meeting.pk).update(ended_at=timezone.now())
    response = Client().get(f"/meet/{meeting.code}/")
    assert response.status_code == 410
    assert "zakończ" in response.content.decode().lower()
    ticket = Client().post(f"/meet/{meeting.code}/ticket", {"name": "Jan"})
    assert ticket.status_code == 410


def test_the_ticket_names_the_guest_and_keeps_them_the_same_guest(meeting):
    meeting, _ = meeting
    client = Client(enforce_csrf_checks=False)
    first = client.post(f"/meet/{meeting.code}/ticket", {"name": "  Jan   Kowalski "}).json()
    second = client.post(f"/meet/{meeting.code}/ticket", {"name": "Jan K."}).json()
    a, b = read_guest_token(first["guest"]), read_guest_token(second["guest"])
    assert a.name == "Jan Kowalski" and a.resource == f"meet:{meeting.code}"
    assert a.guest_id == b.guest_id  # a reload is the same guest
    other = read_guest_token(
        Client().post(f"/meet/{meeting.code}/ticket", {"name": "X"}).json()["guest"]
    )
    assert other.guest_id != a.guest_id


def test_the_ticket_needs_a_name_and_csrf(meeting):
    meeting, _ = meeting
    assert Client().post(f"/meet/{meeting.code}/ticket", {"name": "  "}).status_code == 400
    strict = Client(enforce_csrf_checks=True)
    assert strict.post(f"/meet/{meeting.code}/ticket", {"name": "Jan"}).status_code == 403


def test_a_signed_in_user_needs_no_guest_token(meeting):
    meeting, _ = meeting
    client = Client()
    client.force_login(make_user("mieszkanka"))
    assert client.post(f"/meet/{meeting.code}/ticket", {}).json() == {"guest": None}


def _records(meeting):
    ChatMessage.objects.create(
        meeting=meeting,
        pid="p0000000001",
        author='=HYPERLINK("x")',
        role="guest",
        text="<b>Dzień dobry</b>, proszę o pomoc",
    )
    from django.utils import timezone

    MeetingEvent.objects.create(
        meeting=meeting,
        at=timezone.now(),
        kind="joined",
        pid="p0000000001",
        name="Jan",
        detail={"role": "guest"},
    )


def _rows(response) -> list[list[str]]:
    text = response.content.decode("utf-8")
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text[1:])))


def test_the_host_downloads_chat_and_log_as_csv_others_cannot(meeting):
    meeting, key = meeting
    _records(meeting)
    host = Client()
    host.get(f"/meet/{meeting.code}/?key={key}")
    chat = host.get(f"/meet/{meeting.code}/records/chat.csv")
    assert chat.status_code == 200
    assert chat["Content-Type"].startswith("text/csv")
    assert "attachment" in chat["Content-Disposition"]
    rows = _rows(chat)
    assert rows[1][1] == '\'=HYPERLINK("x")'  # a spreadsheet will not run it
    assert rows[1][4] == "<b>Dzień dobry</b>, proszę o pomoc"
    log = _rows(host.get(f"/meet/{meeting.code}/records/log.csv"))
    assert log[1][1:3] == ["joined", "Jan"]
    # A guest, a resident, anyone else: 403.
    assert Client().get(f"/meet/{meeting.code}/records/chat.csv").status_code == 403
    resident = Client()
    resident.force_login(make_user("ciekawski"))
    assert resident.get(f"/meet/{meeting.code}/records/log.csv").status_code == 403


def test_the_owner_and_named_moderators_download_without_the_link():
    owner, moderator = make_user("wlasciciel", "clerk"), make_user("moderator", "clerk")
    meeting, _ = create_meeting(Kind.PUBLIC, "Budżet obywatelski", owner=owner)
    meeting.moderators.add(moderator)
    for user in (owner, moderator):
        client = Client()
        client.force_login(user)
        assert client.get(f"/meet/{meeting.code}/records/chat.csv").status_code == 200


def test_someone_about_to_join_a_recorded_meeting_is_told_before_entering(meeting):
    import msgspec

    meeting, _ = meeting
    page = Client().get(f"/meet/{meeting.code}/").content.decode()
    assert 'id="prejoin-recording"' not in page
    room = meeting.room()
    room.recording, room.recording_since = True, 1_800_000_000.0
    Meeting.objects.filter(pk=meeting.pk).update(state=msgspec.to_builtins(room))
    page = Client().get(f"/meet/{meeting.code}/").content.decode()
    notice = re.search(r'<p id="prejoin-recording"[^>]*>(.*?)</p>', page, re.S).group(1)
    assert "Nagrywanie włączone" in notice and "nagrywane" in notice


def test_the_host_finds_the_recordings_in_the_log_and_on_the_ended_page(meeting):
    from django.utils import timezone

    meeting, key = meeting
    file = f"meet-{meeting.code}/20261128-101530-123-p0123456789-abcdef-1.webm"
    MeetingEvent.objects.create(
        meeting=meeting,
        at=timezone.now(),
        kind="recording_saved",
        name="Jan",
        detail={"file": file},
    )
    Meeting.objects.filter(pk=meeting.pk).update(ended_at=timezone.now())
    host = Client()
    host.get(f"/meet/{meeting.code}/?key={key}")
    log = _rows(host.get(f"/meet/{meeting.code}/records/log.csv"))
    assert log[1][1:3] == ["recording_saved", "Jan"] and log[1][4] == file
    assert file in host.get(f"/meet/{meeting.code}/").content.decode()
    assert file not in Client().get(f"/meet/{meeting.code}/").content.decode()


# --- create_meeting ------------------------------------------------------------------


def test_create_meeting_prints_json_with_working_links(settings):
    settings.PUBLIC_BASE_URL = "https://e-uslugi.example"
    out = io.StringIO()
    call_command("create_meeting", "--kind", "consultation", "--title", "Porada", stdout=out)
    result = json.loads(out.getvalue())
    assert re.fullmatch(
        rf"[{CODE_ALPHABET}]{{4}}-[{CODE_ALPHABET}]{{4}}-[{CODE_ALPHABET}]{{4}}", result["code"]
    )
    assert result["guest_link"] == f"https://e-uslugi.example/meet/{result['code']}/"
    key = result["host_link"].split("?key=")[1]
    meeting = Meeting.objects.get(code=result["code"])
    assert meeting.kind == "consultation" and meeting.title == "Porada"
    assert meeting.host_key_matches(key)
    assert key not in meeting.host_key_hash  # stored hashed
    assert Client().get(f"/meet/{meeting.code}/?key={key}").status_code == 302


def test_create_meeting_names_owner_moderators_and_invitations():
    make_user("urz"), make_user("mod1"), make_user("staff1")
    out = io.StringIO()
    call_command(
        "create_meeting",
        "--kind",
        "briefing",
        "--title",
        "Odprawa",
        "--owner",
        "urz",
        "--moderator",
        "mod1",
        "--invite",
        "staff1",
        stdout=out,
    )
    meeting = Meeting.objects.get(code=json.loads(out.getvalue())["code"])
    assert meeting.owner.username == "urz"
    assert [u.username for u in meeting.moderators.all()] == ["mod1"]
    assert [u.username for u in meeting.invited.all()] == ["staff1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kind", "consultation", "--title", "  "], "must not be empty"),
        (["--kind", "consultation", "--title", "x" * 201], "longer than 200"),
        (["--kind", "consultation", "--title", "A", "--owner", "nikt"], "no such account: nikt"),
        (["--kind", "public", "--title", "A", "--invite", "nikt2"], "no such account"),
    ],
)
def test_create_meeting_refuses_bad_input_and_creates_nothing(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_meeting", *args, stdout=io.StringIO())
    assert Meeting.objects.count() == 0


def test_meeting_codes_are_random_and_long():
    codes = {create_meeting(Kind.PUBLIC, "x")[0].code for _ in range(200)}
    assert len(codes) == 200
    letters = "".join(c.replace("-", "") for c in codes)
    assert set(letters) <= set(CODE_ALPHABET)
    # Every letter of the alphabet turns up (2400 draws): no narrow generator.
    assert set(letters) == set(CODE_ALPHABET)


# --- My meetings (staff) -------------------------------------------------------------


def test_my_meetings_needs_a_signed_in_staff_member():
    response = Client().get("/meet/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    resident = Client()
    resident.force_login(make_user("mieszkaniec1", "resident"))
    assert resident.get("/meet/").status_code == 403
    assert resident.post("/meet/", {"kind": "consultation", "title": "X"}).status_code == 403
    assert Meeting.objects.count() == 0


def test_a_clerk_creates_a_meeting_and_gets_the_link_to_send():
    clerk = make_user("urzedniczka2", "clerk")
    client = Client()
    client.force_login(clerk)
    response = client.post("/meet/", {"kind": "consultation", "title": "  Podatki   lokalne "})
    assert response.status_code == 302
    meeting = Meeting.objects.get()
    assert meeting.owner == clerk and meeting.title == "Podatki lokalne"
    assert response["Location"] == f"/meet/?created={meeting.code}"
    page = client.get(response["Location"]).content.decode()
    assert f"http://testserver/meet/{meeting.code}/" in page  # the link to send
    assert "utworzono" in page
    # The owner hosts without a key: the meeting page offers the records.
    assert (
        f"/meet/{meeting.code}/records/chat.csv"
        in client.get(f"/meet/{meeting.code}/").content.decode()
    )


@pytest.mark.parametrize(
    "form",
    [
        {"kind": "consultation", "title": " "},
        {"kind": "party", "title": "X"},
        {"kind": "briefing", "title": "x" * 201},
    ],
)
def test_my_meetings_refuses_bad_input_and_creates_nothing(form):
    client = Client()
    client.force_login(make_user("urzednik3", "clerk"))
    response = client.post("/meet/", form)
    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode()
    assert Meeting.objects.count() == 0


def test_my_meetings_lists_only_ones_own_and_moderated_meetings():
    me, other = make_user("ja", "clerk"), make_user("inny", "clerk")
    mine, _ = create_meeting(Kind.CONSULTATION, "Moje", owner=me)
    moderated, _ = create_meeting(Kind.PUBLIC, "Moderuję", owner=other)
    moderated.moderators.add(me)
    create_meeting(Kind.BRIEFING, "Cudze", owner=other)
    client = Client()
    client.force_login(me)
    page = client.get("/meet/").content.decode()
    assert "Moje" in page and "Moderuję" in page and "Cudze" not in page


def test_a_briefing_made_in_my_meetings_invites_staff_by_user_name():
    make_user("inspektor", "clerk"), make_user("straznik", "clerk")
    client = Client()
    client.force_login(make_user("kierownik", "clerk"))
    form = {"kind": "briefing", "title": "Odprawa: wały", "invite": "inspektor, straznik"}
    assert client.post("/meet/", form).status_code == 302
    meeting = Meeting.objects.get()
    assert sorted(u.username for u in meeting.invited.all()) == ["inspektor", "straznik"]


@pytest.mark.parametrize(
    "invite, message",
    [("", "zaproszonych"), ("inspektor2 nieznany", "nieznany")],
)
def test_a_briefing_needs_known_invited_staff(invite, message):
    make_user("inspektor2", "clerk")
    client = Client()
    client.force_login(make_user("kierownik2", "clerk"))
    response = client.post("/meet/", {"kind": "briefing", "title": "Odprawa", "invite": invite})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Meeting.objects.count() == 0
