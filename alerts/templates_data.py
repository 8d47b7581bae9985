"""The alert templates of the operator console: a starting point for the
common threats of the gmina, to be adjusted before sending.

Each template has its name in the console (translated: the operator's
language), the CAP 1.2 defaults (category, urgency, severity, certainty), how
long the alert usually stays in force, and the text residents get. The text
is Polish and is not translated: the alerts go out in Polish whatever language
the operator's console is in. The words are calm and plain: what happens,
where, and what to do ("jak się zachować"); the only number they name is 112.

Placeholders in square brackets ([miejsce], [godzina]) are for the operator to
fill in; the console shows the template as it is, so a forgotten placeholder
is visible in the preview.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.utils.translation import gettext_lazy as _

from alerts.rules import Category, Certainty, Severity, Urgency


@dataclass(frozen=True)
class AlertTemplate:
    key: str
    label: str
    category: Category
    urgency: Urgency
    severity: Severity
    certainty: Certainty
    hours: int  # how long it is in force by default
    event: str
    headline: str
    description: str
    instruction: str


TEMPLATES: dict[str, AlertTemplate] = {
    t.key: t
    for t in [
        AlertTemplate(
            key="flood",
            label=_("Flood / high water"),
            category=Category.MET,
            urgency=Urgency.IMMEDIATE,
            severity=Severity.SEVERE,
            certainty=Certainty.OBSERVED,
            hours=24,
            event="Zagrożenie powodziowe",
            headline="Zagrożenie powodziowe: wysoki stan wody na rzece [nazwa rzeki]",
            description=(
                "Poziom wody na rzece [nazwa rzeki] przekroczył stan alarmowy i nadal rośnie. "
                "Możliwe jest zalanie terenów nisko położonych, piwnic i dróg w pobliżu koryta "
                "rzeki, w szczególności w miejscowości [miejsce]. Służby gminy i straż pożarna "
                "monitorują sytuację."
            ),
            instruction=(
                "Nie zbliżaj się do rzeki ani wałów przeciwpowodziowych. Nie wjeżdżaj i nie "
                "wchodź na zalane drogi. Przenieś dokumenty, leki i cenne rzeczy na wyższe "
                "piętro. Przygotuj się do ewentualnej ewakuacji i słuchaj poleceń służb. "
                "W sytuacji zagrożenia życia dzwoń pod numer 112."
            ),
        ),
        AlertTemplate(
            key="storm",
            label=_("Storm / strong wind"),
            category=Category.MET,
            urgency=Urgency.EXPECTED,
            severity=Severity.MODERATE,
            certainty=Certainty.LIKELY,
            hours=12,
            event="Burze z silnym wiatrem",
            headline="Ostrzeżenie: burze z silnym wiatrem i gradem",
            description=(
                "Według ostrzeżenia IMGW-PIB na terenie gminy prognozowane są burze z opadami "
                "deszczu do 40 mm, porywami wiatru do 90 km/h i gradem. Możliwe są połamane "
                "drzewa, zerwane linie energetyczne i lokalne podtopienia."
            ),
            instruction=(
                "Pozostań w budynku, jeśli to możliwe. Zabezpiecz lub schowaj przedmioty, "
                "które wiatr może porwać. Nie parkuj pod drzewami. Nie zbliżaj się do "
                "zerwanych linii energetycznych. W sytuacji zagrożenia życia dzwoń pod "
                "numer 112."
            ),
        ),
        AlertTemplate(
            key="heat",
            label=_("Heat wave"),
            category=Category.MET,
            urgency=Urgency.EXPECTED,
            severity=Severity.MODERATE,
            certainty=Certainty.LIKELY,
            hours=72,
            event="Upał",
            headline="Ostrzeżenie: upał, temperatura do 34°C",
            description=(
                "Według ostrzeżenia IMGW-PIB przez najbliższe dni temperatura w ciągu dnia "
                "wyniesie od 30 do 34°C, a w nocy nie spadnie poniżej 18°C. Upał jest "
                "szczególnie niebezpieczny dla osób starszych, małych dzieci i osób przewlekle "
                "chorych."
            ),
            instruction=(
                "Pij dużo wody, unikaj wysiłku i przebywania na słońcu w godzinach 11–16. "
                "Nie zostawiaj dzieci ani zwierząt w zamkniętym samochodzie. Odwiedź lub "
                "zadzwoń do starszych sąsiadów i bliskich. Przy objawach udaru cieplnego "
                "dzwoń pod numer 112."
            ),
        ),
        AlertTemplate(
            key="water",
            label=_("Drinking water contamination"),
            category=Category.HEALTH,
            urgency=Urgency.IMMEDIATE,
            severity=Severity.SEVERE,
            certainty=Certainty.OBSERVED,
            hours=48,
            event="Skażenie wody wodociągowej",
            headline="Woda z wodociągu nie nadaje się do picia w miejscowości [miejsce]",
            description=(
                "Badania wykazały skażenie bakteriologiczne wody w sieci wodociągowej "
                "zasilającej miejscowość [miejsce]. Państwowy Powiatowy Inspektor Sanitarny "
                "stwierdził, że woda nie nadaje się do picia. Wodociąg prowadzi płukanie i "
                "dezynfekcję sieci. Woda pitna jest dostępna w beczkowozach: [miejsca]."
            ),
            instruction=(
                "Nie pij wody z kranu. Do picia, mycia zębów i przygotowania posiłków używaj "
                "wody butelkowanej lub przegotowanej (gotuj co najmniej 3 minuty). Wodę z "
                "kranu możesz używać do spłukiwania toalety i sprzątania. Poinformuj "
                "sąsiadów, szczególnie osoby starsze."
            ),
        ),
        AlertTemplate(
            key="road",
            label=_("Road closure"),
            category=Category.TRANSPORT,
            urgency=Urgency.EXPECTED,
            severity=Severity.MINOR,
            certainty=Certainty.OBSERVED,
            hours=24,
            event="Zamknięcie drogi",
            headline="Droga [numer lub ulica] w miejscowości [miejsce] jest zamknięta",
            description=(
                "Droga [numer lub ulica] na odcinku [od – do] jest zamknięta z powodu "
                "[przyczyna]. Utrudnienia potrwają prawdopodobnie do [godzina]."
            ),
            instruction=(
                "Korzystaj z objazdu: [trasa objazdu]. Stosuj się do oznakowania i poleceń "
                "policji. Jeśli możesz, przełóż podróż."
            ),
        ),
        AlertTemplate(
            key="power",
            label=_("Power outage"),
            category=Category.INFRA,
            urgency=Urgency.IMMEDIATE,
            severity=Severity.MODERATE,
            certainty=Certainty.OBSERVED,
            hours=12,
            event="Przerwa w dostawie prądu",
            headline="Przerwa w dostawie prądu w miejscowości [miejsce]",
            description=(
                "W miejscowości [miejsce] nie ma prądu z powodu awarii sieci energetycznej. "
                "Operator sieci usuwa awarię; przewidywany czas przywrócenia zasilania: "
                "[godzina]."
            ),
            instruction=(
                "Wyłącz urządzenia, które mogą się włączyć po przywróceniu zasilania. Nie "
                "otwieraj niepotrzebnie lodówki i zamrażarki. Nie używaj agregatów ani "
                "grzejników gazowych w zamkniętych pomieszczeniach. Jeśli ktoś w domu "
                "korzysta z urządzeń medycznych zasilanych prądem, dzwoń pod numer 112."
            ),
        ),
        AlertTemplate(
            key="air",
            label=_("Poor air quality (smog)"),
            category=Category.ENV,
            urgency=Urgency.EXPECTED,
            severity=Severity.MODERATE,
            certainty=Certainty.OBSERVED,
            hours=24,
            event="Zła jakość powietrza",
            headline="Zła jakość powietrza: wysokie stężenie pyłu PM10",
            description=(
                "Stężenie pyłu zawieszonego PM10 na terenie gminy przekracza poziom "
                "informowania (100 µg/m³) według danych Głównego Inspektoratu Ochrony "
                "Środowiska. Sytuacja może potrwać do czasu zmiany pogody."
            ),
            instruction=(
                "Ogranicz przebywanie na zewnątrz, szczególnie dzieci, osoby starsze i osoby "
                "z chorobami serca lub płuc. Zrezygnuj z wysiłku fizycznego na zewnątrz. Nie "
                "wietrz mieszkania. Nie pal w piecu odpadów ani mokrego drewna."
            ),
        ),
    ]
}
