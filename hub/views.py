"""The hub's own pages: the landing page that introduces the platform."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _


@dataclass(frozen=True)
class PlannedModule:
    """A module of the platform as the landing page describes it.

    None of them is available yet, so a card carries no link: the page never
    points a resident at a feature that does not exist.
    """

    slug: str
    title: Promise
    summary: Promise
    features: tuple[Promise, ...]
    # Set once the module works: how people reach it, and a link for staff.
    available: Promise | None = None
    link: tuple[str, Promise] | None = None


# The areas of the project "E-usługi w Gminie Głogów Małopolski – Gmina
# przyszłości", grouped as the apps that will serve them (ARCHITECTURE.md §1).
PLANNED_MODULES: tuple[PlannedModule, ...] = (
    PlannedModule(
        slug="meetings",
        title=_("Virtual meetings"),
        summary=_(
            "Remote meetings over the internet, with video, sound and chat in the web browser."
        ),
        features=(
            _("Video consultations with the town hall, with a virtual queue"),
            _("Field briefings of the municipal administration"),
            _("Online parent-teacher meetings (e-wywiadówka)"),
            _("Public consultations with residents"),
        ),
        available=_(
            "Available. Residents join with the link they receive from the town hall; "
            "staff start meetings in “My meetings”."
        ),
        link=("meetings", _("My meetings (staff)")),
    ),
    PlannedModule(
        slug="council",
        title=_("E-RADA — Town Council"),
        summary=_("The work of the Town Council, open to everyone online."),
        features=(
            _("Live broadcasts of council sessions and an archive of recordings"),
            _("Named electronic voting with published results"),
            _("Councillors' interpellations and questions"),
        ),
    ),
    PlannedModule(
        slug="alerts",
        title=_("Crisis management"),
        summary=_("Warnings about hazards in the municipality, with instructions on what to do."),
        features=(
            _("Alerts by text message, e-mail and in the web browser"),
            _("Publication on the municipality's website and in open feeds"),
            _("Subscription through an electronic form"),
        ),
    ),
    PlannedModule(
        slug="portal",
        title=_("eBOM — resident's account"),
        summary=_("Dealing with the town hall without leaving home."),
        features=(
            _("Status of the matters you have submitted"),
            _("Local taxes and fees, paid without cash"),
            _("Kindergarten and nursery: attendance and meal fees"),
            _("Participatory budget: submitting projects and voting"),
            _("Electronic school gradebook"),
        ),
    ),
)


def landing(request: HttpRequest) -> HttpResponse:
    """The public home page: what eGmina Hub is and which modules are coming."""
    return render(request, "hub/landing.html", {"modules": PLANNED_MODULES})
