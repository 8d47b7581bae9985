"""The landing page and the base template: language, structure, accessibility basics."""

from __future__ import annotations

from html.parser import HTMLParser
from itertools import pairwise

import pytest

pytestmark = pytest.mark.django_db

# Every link the landing page may carry. The modules do not exist yet, so no
# card may link anywhere (we never point residents at a feature that is not there).
ALLOWED_LINKS = {"#main", "/", "/admin/", "/healthz", "/meet/", "/accounts/login/?next=/"}


class PageOutline(HTMLParser):
    """Collects what the tests look at: links in order, headings, module cards."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.headings: list[int] = []
        self.html_lang: str | None = None
        self.cards = 0
        self.badges = 0
        self.card_links = 0
        self._card_depth = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "html":
            self.html_lang = attributes.get("lang")
        if tag in {"h1", "h2", "h3", "h4", "h5", "h6"}:
            self.headings.append(int(tag[1]))
        if tag == "a":
            self.links.append(attributes.get("href"))
            if self._card_depth:
                self.card_links += 1
        if tag == "li":
            if self._card_depth:
                self._card_depth += 1
            elif "card" in classes:
                self.cards += 1
                self._card_depth = 1
        if tag == "span" and "badge" in classes and self._card_depth:
            self.badges += 1

    def handle_endtag(self, tag):
        if tag == "li" and self._card_depth:
            self._card_depth -= 1


def outline_of(response) -> PageOutline:
    parser = PageOutline()
    parser.feed(response.content.decode())
    return parser


def test_landing_is_polish_by_default(client):
    response = client.get("/")

    assert response.status_code == 200
    page = response.content.decode()
    assert outline_of(response).html_lang == "pl"
    assert "Przejdź do treści" in page
    assert "E-usługi Gminy Głogów Małopolski" in page
    assert "Wirtualne spotkania" in page
    assert "Zarządzanie kryzysowe" in page
    assert "eBOM — konto mieszkańca" in page
    assert "Dla administratorów" in page


def test_language_switch_to_english_and_back(client):
    response = client.post("/i18n/setlang/", {"language": "en", "next": "/"})
    assert response.status_code == 302
    assert response["Location"] == "/"

    response = client.get("/")
    page = response.content.decode()
    assert outline_of(response).html_lang == "en"
    assert "Skip to content" in page
    assert "E-services of Gmina Głogów Małopolski" in page
    assert "Virtual meetings" in page
    assert "In preparation" in page
    assert "W przygotowaniu" not in page

    client.post("/i18n/setlang/", {"language": "pl", "next": "/"})
    assert outline_of(client.get("/")).html_lang == "pl"


def test_language_switch_form_posts_to_set_language_with_csrf(client):
    page = client.get("/").content.decode()

    assert 'action="/i18n/setlang/" method="post"' in page
    assert 'name="csrfmiddlewaretoken"' in page
    assert '<input type="hidden" name="next" value="/">' in page
    assert 'value="pl" lang="pl"' in page
    assert 'value="en" lang="en"' in page


def test_skip_link_is_the_first_link_and_targets_main(client):
    response = client.get("/")
    page = response.content.decode()

    assert outline_of(response).links[0] == "#main"
    assert '<main id="main" tabindex="-1">' in page
    assert '<div id="live-banner" role="status" aria-live="polite" hidden></div>' in page


def test_headings_have_one_h1_and_no_skipped_levels(client):
    headings = outline_of(client.get("/")).headings

    assert headings.count(1) == 1
    assert headings[0] == 1
    for previous, current in pairwise(headings):
        assert current <= previous + 1, headings


def test_meetings_are_available_and_the_other_modules_in_preparation_link_nowhere(client):
    response = client.get("/")
    outline = outline_of(response)
    page = response.content.decode()

    assert outline.cards == 4
    assert outline.badges == 4
    assert page.count("W przygotowaniu") == 3
    assert page.count('<span class="badge badge--available">Dostępne</span>') == 1
    # The one link inside a card: the meetings' page for staff.
    assert outline.card_links == 1
    assert 'href="/meet/"' in page
    assert set(outline.links) <= ALLOWED_LINKS, outline.links


@pytest.mark.django_db
def test_sign_in_and_out_from_the_header(client):
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user(
        "urzedniczka", password="haslo-testowe-1", first_name="Ewa"
    )
    page = client.get("/").content.decode()
    assert 'href="/accounts/login/?next=/"' in page and "Zaloguj się" in page
    form = client.get("/accounts/login/?next=/meet/")
    assert form.status_code == 200 and 'autocomplete="current-password"' in form.content.decode()
    wrong = client.post("/accounts/login/", {"username": "urzedniczka", "password": "zle"})
    assert wrong.status_code == 200 and "nieprawidłowe" in wrong.content.decode()
    ok = client.post(
        "/accounts/login/",
        {"username": "urzedniczka", "password": "haslo-testowe-1", "next": "/meet/"},
    )
    assert ok.status_code == 302 and ok["Location"] == "/meet/"
    page = client.get("/").content.decode()
    assert "Ewa" in page and "Wyloguj" in page
    assert client.post("/accounts/logout/").status_code == 302
    assert "Zaloguj się" in client.get("/").content.decode()


def test_site_css_is_served_by_whitenoise(client):
    response = client.get("/static/hub/css/site.css")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    body = b"".join(response.streaming_content)
    assert b"prefers-reduced-motion" in body


@pytest.mark.django_db
def test_polish_first_even_for_an_english_browser(client):
    """The browser's preference alone does not switch; the visitor's choice does."""
    response = client.get("/", HTTP_ACCEPT_LANGUAGE="en-GB,en;q=0.9")
    assert 'lang="pl"' in response.content.decode()
    assert response["Content-Language"] == "pl"
    client.cookies["django_language"] = "en"
    response = client.get("/", HTTP_ACCEPT_LANGUAGE="pl")
    assert 'lang="en"' in response.content.decode()
    client.cookies["django_language"] = "xx"
    assert 'lang="pl"' in client.get("/").content.decode()
