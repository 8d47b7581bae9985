"""CAP 1.2 documents and Atom feeds of published alerts, as pure code: no
request, no ORM, time from the caller.

CAP 1.2 (OASIS Common Alerting Protocol, http://docs.oasis-open.org/emergency/cap/v1.2/):
one ``alert`` per message, one ``info`` per language (only Polish: the alert
has no English text) and one ``area`` per area code. The documents validate
against the OASIS schema (tests/crisis/test_cap.py).

Identifiers. CAP wants ``identifier`` unique per sender and free of spaces,
commas and ``<`` ``&`` (§3.2.1); aggregators mix the messages of many senders,
so ours are globally unique on their own: ``egmina:<host>:<alert identifier>``,
with ``<host>`` the hub's public host name (``PUBLIC_BASE_URL``) and any
character outside a small safe set percent-encoded. The same string is the
Atom ``id`` of the message's feed entry (an absolute IRI, RFC 4287 §4.2.6).

Feeds: Atom 1.0 (RFC 4287), per the OASIS CAP feeds convention: one entry per
CAP message, whose ``link rel="alternate" type="application/cap+xml"`` is the
CAP document.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from alerts import rules

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
ATOM_NS = "http://www.w3.org/2005/Atom"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
CAP_CONTENT_TYPE = "application/cap+xml"
ATOM_CONTENT_TYPE = "application/atom+xml"
HTML_CONTENT_TYPE = "text/html"

# Characters kept as they are in identifiers: IRI-safe and none of CAP's
# forbidden ones (space, comma, "<", "&"). Everything else is percent-encoded.
_IDENTIFIER_SAFE = "-._~:@!$'()*+;="
# CAP §3.2.1: sender "MUST NOT include spaces, commas or restricted characters".
_SENDER_FORBIDDEN = re.compile(r"[\s,<&]")
# Characters XML 1.0 cannot carry at all (§2.2): control characters other than
# tab, LF and CR, lone surrogates, U+FFFE and U+FFFF. ElementTree would write
# them raw and make the document unreadable, so they are dropped.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Publisher:
    """Who issues the messages and how they are written."""

    sender: str  # CAP <sender>, e.g. "ostrzezenia@glogow-mlp.example"
    sender_name: str  # CAP <senderName>, e.g. "Gmina Głogów Małopolski"
    host: str  # the public host name, part of every identifier
    tz: dt.tzinfo  # times are written in this zone, with its offset
    area_names: Mapping[str, str] = field(default_factory=dict)  # area code → name
    language: str = "pl-PL"

    def __post_init__(self) -> None:
        if not self.sender or _SENDER_FORBIDDEN.search(self.sender):
            raise ValueError(
                f"CAP sender {self.sender!r} must be non-empty, without spaces, commas, < or &"
            )
        if not self.host:
            raise ValueError("the publisher's host is empty")


@dataclass(frozen=True)
class Reference:
    """An earlier message an Update or Cancel refers to: its local
    identifier and when it was sent (its publication time)."""

    identifier: str
    sent: float


@dataclass(frozen=True)
class Feed:
    """The feed itself: its IRI, title, and links."""

    id: str  # the feed's own absolute URL
    title: str
    page_url: str  # the web page listing the same alerts
    subtitle: str = ""


class Standing:
    """Where a published message stands now, as an Atom category."""

    CURRENT = "current"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"


STANDING_LABELS = {
    Standing.CURRENT: "aktualne",
    Standing.EXPIRED: "wygasło",
    Standing.SUPERSEDED: "zastąpione aktualizacją",
    Standing.CANCELLED: "odwołane",
}


def cap_identifier(publisher: Publisher, identifier: str) -> str:
    """The globally unique CAP identifier of an alert: ``egmina:<host>:<id>``."""
    host = quote(publisher.host.lower(), safe="-.")
    return f"egmina:{host}:{quote(identifier, safe=_IDENTIFIER_SAFE)}"


def cap_time(timestamp: float, tz: dt.tzinfo) -> str:
    """CAP's date-time (§3.3.2): ``YYYY-MM-DDThh:mm:ss+hh:mm``, whole seconds,
    an explicit offset (never ``Z``)."""
    moment = dt.datetime.fromtimestamp(math.floor(timestamp), tz=tz)
    text = moment.isoformat(timespec="seconds")
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", text):
        # A zone with a sub-minute offset (historical LMT) cannot be written in CAP.
        raise ValueError(f"{tz} gives {text!r}, not a CAP date-time")
    return text


def standing(alert: rules.Alert, *, now: float) -> str:
    if alert.state is rules.State.CANCELLED:
        return Standing.CANCELLED
    if alert.state is rules.State.SUPERSEDED:
        return Standing.SUPERSEDED
    if alert.state is rules.State.EXPIRED or alert.expires <= now:
        return Standing.EXPIRED
    return Standing.CURRENT


def is_live(alert: rules.Alert, *, now: float) -> bool:
    """In force now: what a CAP feed lists. Unlike :func:`rules.is_current`
    (the banner) this keeps live Cancel messages: they are how aggregators
    learn that an alert was withdrawn."""
    return (
        alert.state is rules.State.PUBLISHED
        and alert.published_at is not None
        and alert.expires > now
    )


def _text(value: str) -> str:
    return _NOT_XML.sub("", value)


def _child(parent: ET.Element, ns: str, tag: str, text: str | None = None, **attrib: str):
    element = ET.SubElement(parent, f"{{{ns}}}{tag}", attrib)
    if text is not None:
        element.text = _text(text)
    return element


def alert_document(
    alert: rules.Alert,
    publisher: Publisher,
    *,
    web: str,
    references: Sequence[Reference] = (),
) -> bytes:
    """The CAP 1.2 XML of one published alert (UTF-8, with the XML declaration).

    ``web`` is the alert's public page; ``references`` the earlier messages an
    Update or Cancel refers to (oldest first), written as CAP's
    ``sender,identifier,sent`` triples (§3.2.1).
    """
    if alert.published_at is None:
        raise ValueError(f"alert {alert.id!r} was never published: it has no CAP 'sent'")

    def tag(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
        return _child(parent, CAP_NS, name, text)

    root = ET.Element(f"{{{CAP_NS}}}alert")
    tag(root, "identifier", cap_identifier(publisher, alert.id))
    tag(root, "sender", publisher.sender)
    tag(root, "sent", cap_time(alert.published_at, publisher.tz))
    tag(root, "status", "Actual")
    tag(root, "msgType", alert.msg_type.value)
    tag(root, "scope", "Public")
    if references:
        tag(
            root,
            "references",
            " ".join(
                ",".join(
                    (
                        publisher.sender,
                        cap_identifier(publisher, ref.identifier),
                        cap_time(ref.sent, publisher.tz),
                    )
                )
                for ref in references
            ),
        )

    # The order of these elements is the schema's (a sequence).
    info = tag(root, "info")
    tag(info, "language", publisher.language)
    tag(info, "category", alert.category.value)
    tag(info, "event", alert.event)
    tag(info, "urgency", alert.urgency.value)
    tag(info, "severity", alert.severity.value)
    tag(info, "certainty", alert.certainty.value)
    tag(info, "effective", cap_time(alert.effective, publisher.tz))
    tag(info, "expires", cap_time(alert.expires, publisher.tz))
    tag(info, "senderName", publisher.sender_name)
    tag(info, "headline", alert.headline)
    tag(info, "description", alert.description)
    if alert.instruction.strip():
        tag(info, "instruction", alert.instruction)
    tag(info, "web", web)
    for code in sorted(alert.areas):
        area = tag(info, "area")
        # The name people know; the code itself when no name is known (never
        # an invented one). No polygon or TERYT geocode: we hold none.
        tag(area, "areaDesc", publisher.area_names.get(code, code))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True, default_namespace=CAP_NS)


def feed_document(
    alerts: Sequence[rules.Alert],
    publisher: Publisher,
    *,
    feed: Feed,
    cap_url: Callable[[str], str],
    page_url: Callable[[str], str],
    now: float,
    cap_first: bool,
) -> bytes:
    """An Atom 1.0 feed with one entry per published message.

    Entries in force come first, newest first, then the rest (expired,
    superseded, cancelled), newest first, their titles marked and their
    standing also given as an Atom category. Each entry links to its CAP
    document (``rel="alternate" type="application/cap+xml"``) and to its web
    page (``rel="alternate" type="text/html"``); ``cap_first`` puts the CAP link
    first (the CAP feed) rather than the page (the Atom feed for people).
    ``updated`` of the feed is its newest entry's, or ``now`` when it is empty.
    Times are RFC 3339 (RFC 4287 §3.3), written as CAP writes them.
    """
    published = [alert for alert in alerts if alert.published_at is not None]
    published.sort(key=lambda alert: (-alert.published_at, alert.id))  # type: ignore[operator]
    published.sort(key=lambda alert: standing(alert, now=now) != Standing.CURRENT)

    # Tags without a namespace and the default namespace declared by hand:
    # ElementTree's default_namespace refuses Atom's unqualified attributes.
    def tag(parent: ET.Element, name: str, text: str | None = None, **attrib: str):
        element = ET.SubElement(parent, name, attrib)
        if text is not None:
            element.text = _text(text)
        return element

    root = ET.Element("feed", {"xmlns": ATOM_NS, XML_LANG: publisher.language.split("-")[0]})
    tag(root, "id", feed.id)
    tag(root, "title", feed.title)
    if feed.subtitle:
        tag(root, "subtitle", feed.subtitle)
    newest = max((alert.published_at for alert in published), default=now)  # type: ignore[type-var]
    tag(root, "updated", cap_time(newest, publisher.tz))
    author = tag(root, "author")
    tag(author, "name", publisher.sender_name)
    tag(author, "email", publisher.sender)
    tag(root, "link", rel="self", type=ATOM_CONTENT_TYPE, href=feed.id)
    tag(root, "link", rel="alternate", type=HTML_CONTENT_TYPE, href=feed.page_url)

    for alert in published:
        where = standing(alert, now=now)
        sent = cap_time(alert.published_at, publisher.tz)  # type: ignore[arg-type]
        entry = tag(root, "entry")
        tag(entry, "id", cap_identifier(publisher, alert.id))
        title = alert.headline
        if where != Standing.CURRENT:
            title = f"[{STANDING_LABELS[where]}] {title}"
        tag(entry, "title", title)
        tag(entry, "updated", sent)
        tag(entry, "published", sent)
        links = [
            {"type": CAP_CONTENT_TYPE, "href": cap_url(alert.id)},
            {"type": HTML_CONTENT_TYPE, "href": page_url(alert.id)},
        ]
        for link in links if cap_first else reversed(links):
            tag(entry, "link", rel="alternate", **link)
        tag(entry, "category", term=alert.category.value, scheme=f"{CAP_NS}#category")
        tag(entry, "category", term=alert.msg_type.value, scheme=f"{CAP_NS}#msgType")
        tag(entry, "category", term=where, label=STANDING_LABELS[where])
        tag(entry, "summary", alert.description, type="text")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
