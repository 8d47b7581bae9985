"""The forms of the operator console: composing an alert (the CAP 1.2
fields) and rejecting one with a reason.

Times are entered in ``<input type="datetime-local">`` and read in the
current time zone (Europe/Warsaw, settings.TIME_ZONE); they are stored aware.
"""

from __future__ import annotations

import datetime as dt

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from alerts import rules
from alerts.areas import AREAS, CATEGORY_LABELS, normalize_areas
from alerts.templates_data import TEMPLATES

URGENCY_LABELS = {
    rules.Urgency.IMMEDIATE.value: _("Immediate — act now"),
    rules.Urgency.EXPECTED.value: _("Expected — act within the next hour"),
    rules.Urgency.FUTURE.value: _("Future — act in the near future"),
    rules.Urgency.PAST.value: _("Past — no action needed any more"),
    rules.Urgency.UNKNOWN.value: _("Unknown"),
}
SEVERITY_LABELS = {
    rules.Severity.EXTREME.value: _("Extreme — threat to life (needs a second operator)"),
    rules.Severity.SEVERE.value: _("Severe — threat to life or property (needs a second operator)"),
    rules.Severity.MODERATE.value: _("Moderate"),
    rules.Severity.MINOR.value: _("Minor"),
    rules.Severity.UNKNOWN.value: _("Unknown"),
}
CERTAINTY_LABELS = {
    rules.Certainty.OBSERVED.value: _("Observed — it is happening"),
    rules.Certainty.LIKELY.value: _("Likely (more than 50%)"),
    rules.Certainty.POSSIBLE.value: _("Possible"),
    rules.Certainty.UNLIKELY.value: _("Unlikely"),
    rules.Certainty.UNKNOWN.value: _("Unknown"),
}

# <input type="datetime-local"> sends "2026-11-03T14:30" (seconds when step < 60).
DATETIME_LOCAL = "%Y-%m-%dT%H:%M"
DATETIME_INPUTS = [DATETIME_LOCAL, "%Y-%m-%dT%H:%M:%S"]


def _when(label, help_text=""):
    return forms.DateTimeField(
        label=label,
        help_text=help_text,
        input_formats=DATETIME_INPUTS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=DATETIME_LOCAL),
        error_messages={
            "required": _("Enter a date and time."),
            "invalid": _("Enter a date and time, e.g. 2026-11-03 14:30."),
        },
    )


class AlertForm(forms.Form):
    category = forms.ChoiceField(label=_("Category"), choices=list(CATEGORY_LABELS.items()))
    event = forms.CharField(
        label=_("Event (what is happening, in a few words)"),
        max_length=rules.LIMITS["event"],
    )
    urgency = forms.ChoiceField(label=_("Urgency"), choices=list(URGENCY_LABELS.items()))
    severity = forms.ChoiceField(label=_("Severity"), choices=list(SEVERITY_LABELS.items()))
    certainty = forms.ChoiceField(label=_("Certainty"), choices=list(CERTAINTY_LABELS.items()))
    headline = forms.CharField(
        label=_("Headline (the e-mail subject, the banner and the start of the SMS)"),
        max_length=rules.LIMITS["headline"],
    )
    description = forms.CharField(
        label=_("Description"),
        max_length=rules.LIMITS["description"],
        widget=forms.Textarea(attrs={"rows": 6}),
    )
    instruction = forms.CharField(
        label=_("What to do (instructions for residents)"),
        help_text=_(
            "Short sentences, the most important first: the SMS carries the headline "
            "and the start of this."
        ),
        max_length=rules.LIMITS["instruction"],
        required=False,
        widget=forms.Textarea(attrs={"rows": 5}),
    )
    areas = forms.MultipleChoiceField(
        label=_("Areas"),
        choices=AREAS,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": _("Choose at least one area (or the whole municipality).")},
    )
    effective = _when(
        _("In force from"),
        _("Time in Poland (Europe/Warsaw). A start in the future schedules the alert."),
    )
    expires = _when(_("In force until"))
    sms_transliterate = forms.BooleanField(
        label=_("Send the SMS without Polish letters (GSM-7: 160 characters a part instead of 70)"),
        help_text=_("ą → a, ł → l…: the text message costs fewer parts, at some cost to spelling."),
        required=False,
    )

    def __init__(self, *args, msg_type: str = rules.MsgType.ALERT.value, **kwargs):
        super().__init__(*args, **kwargs)
        self.msg_type = msg_type
        self._describe()

    def clean_areas(self):
        return normalize_areas(self.cleaned_data["areas"])

    def full_clean(self):
        super().full_clean()
        self._describe()

    def _describe(self):
        """Each widget names its hint and its errors (aria-describedby), as
        console_field.html writes them."""
        for name, field in self.fields.items():
            if isinstance(field.widget, forms.CheckboxSelectMultiple):
                continue  # the fieldset carries them (console_compose.html)
            auto_id = self[name].auto_id
            ids = [f"{auto_id}-hint"] if field.help_text else []
            if self.is_bound and name in self.errors:
                ids.append(f"{auto_id}-error")
            if ids:
                field.widget.attrs["aria-describedby"] = " ".join(ids)
            else:
                field.widget.attrs.pop("aria-describedby", None)

    def _one_line(self, name):
        value = self.cleaned_data[name]
        if "\n" in value or "\r" in value:  # the e-mail subject: no header injection
            raise forms.ValidationError(_("Enter it on one line."))
        return value

    def clean_headline(self):
        return self._one_line("headline")

    def clean_event(self):
        return self._one_line("event")

    def clean(self):
        data = super().clean()
        if (
            self.msg_type != rules.MsgType.CANCEL.value
            and "instruction" in data
            and not data["instruction"].strip()
        ):
            self.add_error(
                "instruction",
                _(
                    "Tell residents what to do: an alert without instructions "
                    "frightens and does not help."
                ),
            )
        effective, expires = data.get("effective"), data.get("expires")
        if effective and expires and expires <= effective:
            self.add_error("expires", _("The end must come after the start."))
        return data


def initial_from_template(key: str, *, now: dt.datetime | None = None) -> dict:
    """The form's initial data from an alert template (empty for an unknown key)."""
    template = TEMPLATES.get(key)
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    base = {
        "effective": now,
        "expires": now + dt.timedelta(hours=24),
        "areas": [],
        "sms_transliterate": False,
    }
    if template is None:
        return base
    return {
        **base,
        "category": template.category.value,
        "urgency": template.urgency.value,
        "severity": template.severity.value,
        "certainty": template.certainty.value,
        "event": template.event,
        "headline": template.headline,
        "description": template.description,
        "instruction": template.instruction,
        "expires": now + dt.timedelta(hours=template.hours),
    }


# The Polish words a Cancel starts with: it goes to residents as it is.
CANCEL_HEADLINE = "ODWOŁANE: "
CANCEL_DESCRIPTION = "Ostrzeżenie „{headline}” zostało odwołane. Zagrożenie minęło."
UPDATE_HEADLINE = "AKTUALIZACJA: "


def initial_from_original(original, msg_type: str, *, now: dt.datetime | None = None) -> dict:
    """An Update or a Cancel starts as a copy of the alert it refers to."""
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    data = {
        "category": original.category,
        "urgency": original.urgency,
        "severity": original.severity,
        "certainty": original.certainty,
        "event": original.event,
        "headline": original.headline,
        "description": original.description,
        "instruction": original.instruction,
        "areas": list(original.areas),
        "sms_transliterate": original.sms_transliterate,
        "effective": now,
        "expires": max(original.expires, now + dt.timedelta(hours=1)),
    }
    if msg_type == rules.MsgType.CANCEL.value:
        limit = rules.LIMITS["headline"]
        data["headline"] = (CANCEL_HEADLINE + original.headline)[:limit]
        data["description"] = CANCEL_DESCRIPTION.format(headline=original.headline)
        data["instruction"] = ""
        data["urgency"] = rules.Urgency.PAST.value
    elif not original.headline.startswith(UPDATE_HEADLINE):
        data["headline"] = (UPDATE_HEADLINE + original.headline)[: rules.LIMITS["headline"]]
    return data


class RejectForm(forms.Form):
    reason = forms.CharField(
        label=_("Why (the author sees it)"),
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": _("Say why the alert is sent back.")},
    )
