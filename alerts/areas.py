"""What a resident subscribes to: the areas of the gmina and the categories
of warnings.

Areas. The town and the sołectwa (village administrative units) of Gmina
Głogów Małopolski. Sources: the county's page on the gmina
(https://powiat.rzeszowski.pl/blog/2020/11/25/glogow-malopolski/, November
2020) lists the town and twelve sołectwa — Wysoka Głogowska, Budy Głogowskie,
Styków, Przewrotne, Pogwizdów Stary, Hucisko, Zabajka, Rogoźnica, Wola Cicha,
Lipie, Rudna Mała, Pogwizdów Nowy — and says that since 1 January 2020 the town
includes Rogoźnica, Wola Cicha and Zabajka. That leaves the nine sołectwa
below (issue 4 said 13, which predates the 2020 change). **The list must be
confirmed against the gmina's statute and the statutes of the sołectwa in the
BIP** (Biuletyn Informacji Publicznej) before going live; the codes are stored
in ``Subscriber.areas`` and ``Alert.areas``, so a change here needs a data
migration for codes that disappear.

Codes are lowercase ASCII slugs; ``rules.WHOLE_GMINA`` ("gmina") means every
area (see :func:`alerts.rules.reaches`). Place names are proper names and
stay as they are in every language.

Categories. An alert's category is one of the twelve CAP 1.2 categories
(:class:`alerts.rules.Category`); a subscriber's ``categories`` is a list of
those values (empty: all). The categories of issue 4 map onto CAP as the
CAP 1.2 specification defines its categories:

=========================  ===========  ==========================================
issue 4                    CAP          why
=========================  ===========  ==========================================
weather (pogoda)           Met          "Meteorological (inc. flood)"
flood (powódź)             Met          CAP puts floods under Met, not Geo (Geo is
                                        "Geophysical (inc. landslide)")
water supply               Infra        an outage of the water network is a
                                        utility; contaminated drinking water is
                                        a public health matter, Health
roads                      Transport    "Public and private transportation"
air quality                Env          "Pollution and other environmental"
power                      Infra        "Utility, telecommunication, other
                                        non-transport infrastructure"
public safety              Safety       "General emergency and public safety"
=========================  ===========  ==========================================

So a resident chooses among CAP categories, labelled in words a resident
knows: weather and flood are one choice, and so are water, power and other
utilities. Every CAP category has a label (an operator may use any of them,
and a subscriber who picked some categories would otherwise miss a category
that was never offered).
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

from alerts.rules import WHOLE_GMINA, Category

TOWN = "glogow"

SOLECTWA = [
    ("budy-glogowskie", "Budy Głogowskie"),
    ("hucisko", "Hucisko"),
    ("lipie", "Lipie"),
    ("pogwizdow-nowy", "Pogwizdów Nowy"),
    ("pogwizdow-stary", "Pogwizdów Stary"),
    ("przewrotne", "Przewrotne"),
    ("rudna-mala", "Rudna Mała"),
    ("stykow", "Styków"),
    ("wysoka-glogowska", "Wysoka Głogowska"),
]

AREAS = [
    (WHOLE_GMINA, _("Whole municipality")),
    (TOWN, _("Głogów Małopolski (town)")),
    *SOLECTWA,
]

AREA_CODES = frozenset(code for code, _label in AREAS)

# In the order a resident reads them: the categories first.
CATEGORY_LABELS = {
    Category.MET.value: _("Weather and floods"),
    Category.INFRA.value: _("Water supply, power and other utilities"),
    Category.HEALTH.value: _("Public health (including drinking water contamination)"),
    Category.TRANSPORT.value: _("Roads and transport"),
    Category.ENV.value: _("Air quality and the environment"),
    Category.SAFETY.value: _("Public safety"),
    Category.FIRE.value: _("Fires"),
    Category.GEO.value: _("Landslides and other geophysical hazards"),
    Category.CBRNE.value: _("Chemical, biological, radiological and explosive hazards"),
    Category.SECURITY.value: _("Security and public order"),
    Category.RESCUE.value: _("Rescue operations"),
    Category.OTHER.value: _("Other warnings"),
}

assert set(CATEGORY_LABELS) == {member.value for member in Category}

CATEGORIES = list(CATEGORY_LABELS.items())


def normalize_areas(codes) -> list[str]:
    """Known codes, each once, in the order of :data:`AREAS`; the whole gmina
    alone when it is among them (it already means every area)."""
    chosen = set(codes) & AREA_CODES
    if WHOLE_GMINA in chosen:
        return [WHOLE_GMINA]
    return [code for code, _label in AREAS if code in chosen]


def normalize_categories(values) -> list[str]:
    """Known categories, each once, in the order shown; every category chosen
    is the same as none (both mean all)."""
    chosen = [value for value in CATEGORY_LABELS if value in set(values)]
    return [] if len(chosen) == len(CATEGORY_LABELS) else chosen
