"""The subscription forms: the public one (channels, areas, categories,
consent), the preferences behind a subscriber's token (areas, categories, a
new phone number) and the phone's confirmation code."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from alerts.areas import AREAS, CATEGORIES, normalize_areas, normalize_categories
from alerts.sms_providers import InvalidPhone, normalize_phone

# The consent a subscriber gives, and its version (recorded with the
# subscription: Subscriber.consent_version). Change the version whenever the
# text changes, so each subscriber's consent can be matched to the words they saw.
CONSENT_VERSION = "2026-11-v2"  # v2: the browser's notification address too
CONSENT_TEXT = _(
    "I agree that the Mayor of Głogów Małopolski (Burmistrz Głogowa Małopolskiego, "
    "Urząd Miejski, ul. Rynek 1, 36-060 Głogów Małopolski), as the data controller, "
    "processes my e-mail address and/or phone number, the notification address of this "
    "browser if I turn on browser notifications, and the areas and categories I choose "
    "in order to send me warnings about threats in the municipality (Article 6(1)(a) "
    "GDPR). The data are kept until I withdraw my consent or delete them. I can withdraw "
    "my consent at any time on my subscription settings page or with the unsubscribe "
    "link in every e-mail and text message; this does not affect the processing "
    "before. I have the right to see, export and delete "
    "my data on my subscription settings page, and to lodge a complaint with the "
    "President of the Personal Data Protection Office (UODO)."
)

PHONE_ERRORS = {
    "phone_empty": _("Enter a phone number."),
    "phone_bad_characters": _(
        "A phone number may contain only digits, spaces and dashes, "
        "with +48 at the start if you like."
    ),
    "phone_not_polish": _("Text messages can be sent only to Polish numbers (+48)."),
    "phone_wrong_length": _("A Polish phone number has 9 digits, e.g. 600 123 456."),
    "phone_invalid": _("This is not a valid Polish phone number."),
}

ONE_LINE = _("Enter it on one line.")

SMS_UNAVAILABLE = _(
    "Warnings by text message are not available at the moment, so a phone number "
    "cannot be subscribed. Leave the field empty and give an e-mail address."
)


def clean_phone_number(text: str) -> str:
    """A Polish number in E.164, or a ValidationError that says what is wrong."""
    try:
        return normalize_phone(text)
    except InvalidPhone as exc:
        raise forms.ValidationError(PHONE_ERRORS[exc.reason], code=exc.reason) from None


class PreferencesForm(forms.Form):
    areas = forms.MultipleChoiceField(
        choices=AREAS,
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "required": _("Choose at least one area (or the whole municipality)."),
            "invalid_choice": _("Choose areas from the list."),
        },
    )
    categories = forms.MultipleChoiceField(
        choices=CATEGORIES,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        error_messages={"invalid_choice": _("Choose categories from the list.")},
    )

    def clean_areas(self):
        return normalize_areas(self.cleaned_data["areas"])

    def clean_categories(self):
        return normalize_categories(self.cleaned_data["categories"])


class _OneLine:
    """Refuses CR or LF anywhere in what was sent, before the field strips
    whitespace at the ends (which would hide an attempt at header injection)."""

    def to_python(self, value):
        if isinstance(value, str) and ("\r" in value or "\n" in value):
            raise forms.ValidationError(ONE_LINE, code="line_break")
        return super().to_python(value)


class OneLineEmailField(_OneLine, forms.EmailField):
    pass


class OneLineCharField(_OneLine, forms.CharField):
    pass


class SubscriptionForm(PreferencesForm):
    email = OneLineEmailField(
        required=False,
        max_length=254,
        error_messages={
            "invalid": _("Enter a valid e-mail address, e.g. jan.kowalski@example.pl."),
            "max_length": _("This e-mail address is too long."),
        },
    )
    phone = OneLineCharField(required=False, max_length=40)
    consent = forms.BooleanField(
        error_messages={"required": _("Your consent is needed to send you warnings.")}
    )

    field_order = ["email", "phone", "areas", "categories", "consent"]

    def __init__(self, *args, sms: bool = True, **kwargs):
        """``sms``: whether text messages can be sent (an SMS provider is
        configured); without it a number is refused, never kept unconfirmable."""
        super().__init__(*args, **kwargs)
        self.sms = sms

    def clean_email(self):
        email = self.cleaned_data["email"]
        if not email:
            return ""
        local, _at, domain = email.rpartition("@")
        return f"{local}@{domain.lower()}"

    def clean_phone(self):
        phone = self.cleaned_data["phone"]
        if not phone:
            return ""
        if not self.sms:
            raise forms.ValidationError(SMS_UNAVAILABLE, code="sms_unavailable")
        return clean_phone_number(phone)

    def clean(self):
        cleaned = super().clean()
        if not self.has_error("email") and not self.has_error("phone"):
            if not cleaned.get("email") and not cleaned.get("phone"):
                message = (
                    _("Enter an e-mail address, a phone number, or both.")
                    if self.sms
                    else _("Enter an e-mail address.")
                )
                raise forms.ValidationError(message, code="no_channel")
        return cleaned


class PhoneForm(forms.Form):
    """A number added or changed on the preferences page: confirmed by a code."""

    phone = OneLineCharField(
        max_length=40, error_messages={"required": PHONE_ERRORS["phone_empty"]}
    )

    def __init__(self, *args, sms: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.sms = sms

    def clean_phone(self):
        if not self.sms:
            raise forms.ValidationError(SMS_UNAVAILABLE, code="sms_unavailable")
        return clean_phone_number(self.cleaned_data["phone"])
