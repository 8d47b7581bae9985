"""The operator console of crisis alerts (issue 4, point 2).

Who. Signed-in accounts with the role *operator* (the Django group
``operator``, hub.roles) or superusers; anyone else gets 403, an anonymous
visitor the login page. Every operator may approve (``rules.Operator(…,
may_approve=True)``); the four-eyes rule of :mod:`alerts.rules` still keeps an
author from approving their own Severe or Extreme alert. (A narrower group of
approvers would be a Django permission checked in :func:`operator_for`.)

Pages:

- ``console``: the alerts by state; those awaiting approval first, marked
  when the viewer may approve them (someone else wrote them).
- ``compose``: a new alert from a template (``?template=flood``), an Update or
  a Cancel of a live alert (``?follow=<pk>&type=update|cancel``, prefilled
  from it), or the author's own draft (``<pk>/edit/``). POST ``preview``
  shows each channel as it would go out (e-mail subject and text, the SMS with
  its encoding and parts and its GSM-7 version, the banner line); POST
  ``save`` keeps the draft.
- ``detail``: the alert, its preview, its audit log and the actions, each a
  POST through :mod:`alerts.rules` (publishing through
  :func:`alerts.outbox.publish`): submit, approve, reject (with a reason),
  publish (or schedule), a test e-mail to oneself. A refused action changes
  nothing and says why (the message carries the rules' reason code in
  ``data-reason``).

Every change is in the alert's audit (AlertAudit): who, what, when.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from functools import wraps
from types import SimpleNamespace

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.mail import send_mail
from django.db import transaction
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from alerts import outbox, rules
from alerts.areas import AREAS, CATEGORY_LABELS
from alerts.channels import email_html, email_subject, email_text
from alerts.console_forms import (
    CERTAINTY_LABELS,
    SEVERITY_LABELS,
    URGENCY_LABELS,
    AlertForm,
    RejectForm,
    initial_from_original,
    initial_from_template,
)
from alerts.live import BANNER_TEXT
from alerts.models import Alert, AlertAudit
from alerts.sms import sms_length
from alerts.sms_providers import compose as compose_sms
from alerts.sms_providers import unsubscribe_url
from alerts.templates_data import TEMPLATES
from hub.roles import Role, has_role

STATE_LABELS = {
    rules.State.DRAFT.value: _("draft"),
    rules.State.AWAITING_APPROVAL.value: _("awaiting approval"),
    rules.State.APPROVED.value: _("approved, not published yet"),
    rules.State.SCHEDULED.value: _("scheduled"),
    rules.State.PUBLISHED.value: _("published"),
    rules.State.EXPIRED.value: _("expired"),
    rules.State.SUPERSEDED.value: _("replaced by an update"),
    rules.State.CANCELLED.value: _("cancelled"),
}
MSG_TYPE_LABELS = {
    rules.MsgType.ALERT.value: _("alert"),
    rules.MsgType.UPDATE.value: _("update"),
    rules.MsgType.CANCEL.value: _("cancellation"),
}
SEVERITY_NAMES = {
    rules.Severity.EXTREME.value: _("extreme"),
    rules.Severity.SEVERE.value: _("severe"),
    rules.Severity.MODERATE.value: _("moderate"),
    rules.Severity.MINOR.value: _("minor"),
    rules.Severity.UNKNOWN.value: _("unknown severity"),
}
ACTION_LABELS = {
    "created": _("created the draft"),
    "edited": _("edited the draft"),
    "submitted": _("submitted"),
    "approved": _("approved"),
    "rejected": _("sent back to the author"),
    "scheduled": _("scheduled"),
    "published": _("published"),
    "expired": _("expired"),
    "superseded": _("replaced by an update"),
    "cancelled": _("cancelled"),
    "update": _("started an update"),
    "cancel": _("started a cancellation"),
    "test_sent": _("sent a test e-mail to themselves"),
}

# Why an action was refused, in words (the reasons of alerts.rules and of this module).
REFUSALS = {
    "not_a_draft": _("Only a draft can be submitted or edited."),
    "headline_missing": _("The alert has no headline."),
    "headline_too_long": _("The headline is too long."),
    "event_missing": _("The alert does not say what the event is."),
    "event_too_long": _("The event is too long."),
    "description_missing": _("The alert has no description."),
    "description_too_long": _("The description is too long."),
    "instruction_missing": _("The alert does not tell residents what to do."),
    "instruction_too_long": _("The instructions are too long."),
    "areas_missing": _("The alert has no area."),
    "expires_before_effective": _("The alert ends before it starts."),
    "already_expired": _("The alert's time has already passed: change its end and submit again."),
    "not_awaiting_approval": _("The alert is not awaiting approval."),
    "may_not_approve": _("You may not approve or reject this alert."),
    "second_operator_needed": _(
        "You wrote this alert: a Severe or Extreme alert must be approved by another operator."
    ),
    "needs_approval": _("Another operator has to approve this alert before it is published."),
    "not_approved": _("Only an approved alert can be published."),
    "original_not_live": _("Only a published or scheduled alert can be updated or cancelled."),
    "not_a_follow_up": _("That is neither an update nor a cancellation."),
    "not_the_author": _("Only the author may edit a draft."),
    "no_email": _("Your account has no e-mail address: add one to receive a test."),
    "unknown_action": _("Unknown action."),
}

# The length of a real unsubscribe token (models._token), for an SMS preview of the true length.
SAMPLE_TOKEN = "x" * len(secrets.token_urlsafe(24))
PAST_SHOWN = 20


# --- Access ------------------------------------------------------------------


def may_operate(user) -> bool:
    return user.is_authenticated and (user.is_superuser or has_role(user, Role.OPERATOR))


def operator_for(user) -> rules.Operator:
    """Every operator may approve (only not their own alert: alerts.rules)."""
    return rules.Operator(str(user.pk), may_approve=may_operate(user))


def operator_required(view):
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not may_operate(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapped


# --- Helpers -----------------------------------------------------------------


def _at(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)


def new_identifier() -> str:
    """URL-safe and unique: ``alert-20261103T143000-<random>``."""
    return f"alert-{timezone.now():%Y%m%dT%H%M%S}-{secrets.token_urlsafe(8)}"


def _refused(request, reason: str) -> None:
    messages.error(request, REFUSALS.get(reason, reason), extra_tags=reason)


def _name(user) -> str:
    if user is None:
        return str(_("the system"))
    return user.get_full_name() or user.get_username()


def previews(alert) -> dict:
    """Each channel as it would go out. ``alert`` has headline, description,
    instruction, severity and sms_transliterate (an Alert or the form's
    data). The SMS is shown as it goes out (GSM-7 when the service's setting
    or the alert's own choice says so, as alerts.sms_providers.message_for),
    and the other way too, so the operator sees what the choice saves."""
    config = settings.ALERTS
    max_parts = config["SMS_MAX_PARTS"]
    unsubscribe = unsubscribe_url(settings.PUBLIC_BASE_URL, SAMPLE_TOKEN)

    def sms(transliterate: bool, parts: int = max_parts) -> dict:
        text = compose_sms(
            alert.headline,
            alert.instruction,
            unsubscribe,
            max_parts=parts,
            transliterate=transliterate,
        )
        return {"text": text, "length": sms_length(text)}

    everywhere = config["SMS_TRANSLITERATE"]
    transliterate = everywhere or bool(getattr(alert, "sms_transliterate", False))
    sent = sms(transliterate)
    whole = sms(transliterate, parts=1000)  # what it would be without the cut
    gsm7, polish = sms(True), sms(False)
    email_unsubscribe = f"{settings.PUBLIC_BASE_URL}/alerts/unsubscribe/{SAMPLE_TOKEN}"
    return {
        "email_subject": email_subject(alert),
        "email_body": email_text(alert) + f"\n\nRezygnacja z powiadomień: {email_unsubscribe}\n",
        "sms": sent,
        "sms_whole": whole,
        "sms_shortened": sent["text"] != whole["text"],
        "sms_gsm7": gsm7,
        "sms_polish": polish,
        "sms_saving": polish["length"].segments - gsm7["length"].segments,
        "sms_max_parts": max_parts,
        "sms_transliterate": transliterate,
        "sms_transliterate_everywhere": everywhere,
        "banner": f"{BANNER_TEXT.get(alert.severity, BANNER_TEXT['Unknown'])}: "
        f"{alert.headline} — {BANNER_TEXT['more']}",
    }


def _labels() -> dict:
    return {
        "state_labels": STATE_LABELS,
        "msg_type_labels": MSG_TYPE_LABELS,
        "category_labels": CATEGORY_LABELS,
        "severity_labels": SEVERITY_LABELS,
        "urgency_labels": URGENCY_LABELS,
        "certainty_labels": CERTAINTY_LABELS,
        "area_labels": dict(AREAS),
    }


def _row(alert: Alert, user) -> SimpleNamespace:
    return SimpleNamespace(
        alert=alert,
        state=STATE_LABELS.get(alert.state, alert.state),
        msg_type=MSG_TYPE_LABELS.get(alert.msg_type, alert.msg_type),
        severity=SEVERITY_NAMES.get(alert.severity, alert.severity),
        author=_name(alert.author),
        mine=alert.author_id == user.pk,
    )


# --- The list ----------------------------------------------------------------


@operator_required
def console(request):
    alerts = Alert.objects.select_related("author").order_by("-created_at")

    def rows(*states, limit=None):
        found = alerts.filter(state__in=states)
        return [_row(a, request.user) for a in (found[:limit] if limit else found)]

    S = rules.State
    sections = [
        ("awaiting", _("Awaiting approval"), rows(S.AWAITING_APPROVAL)),
        ("drafts", _("Drafts"), rows(S.DRAFT)),
        ("approved", _("Approved, not published yet"), rows(S.APPROVED)),
        ("scheduled", _("Scheduled"), rows(S.SCHEDULED)),
        ("published", _("Published"), rows(S.PUBLISHED)),
        ("past", _("Recently ended"), rows(S.EXPIRED, S.SUPERSEDED, S.CANCELLED, limit=PAST_SHOWN)),
    ]
    waiting_for_me = sum(1 for row in sections[0][2] if not row.mine)
    return render(
        request,
        "alerts/console_list.html",
        {
            "sections": sections,
            "waiting_for_me": waiting_for_me,
            "templates": TEMPLATES.values(),
        },
    )


# --- Composing ---------------------------------------------------------------


def _fields(form: AlertForm) -> dict:
    data = form.cleaned_data
    return {
        name: data[name]
        for name in (
            "category",
            "event",
            "urgency",
            "severity",
            "certainty",
            "headline",
            "description",
            "instruction",
            "areas",
            "effective",
            "expires",
            "sms_transliterate",
        )
    }


def _draft_rules(fields: dict, *, author, msg_type: str) -> rules.Alert:
    return rules.Alert(
        id="(draft)",
        author=str(author.pk),
        category=rules.Category(fields["category"]),
        event=fields["event"],
        urgency=rules.Urgency(fields["urgency"]),
        severity=rules.Severity(fields["severity"]),
        certainty=rules.Certainty(fields["certainty"]),
        headline=fields["headline"],
        description=fields["description"],
        instruction=fields["instruction"],
        areas=frozenset(fields["areas"]),
        effective=fields["effective"].timestamp(),
        expires=fields["expires"].timestamp(),
        msg_type=rules.MsgType(msg_type),
    )


@operator_required
def compose(request, pk: int | None = None):
    """A new alert, an Update or Cancel of a live one, or the author's draft."""
    draft = original = None
    msg_type = rules.MsgType.ALERT.value
    source = request.POST if request.method == "POST" else request.GET
    if pk is not None:
        draft = get_object_or_404(Alert, pk=pk)
        if draft.state != rules.State.DRAFT or draft.author_id != request.user.pk:
            reason = "not_a_draft" if draft.state != rules.State.DRAFT else "not_the_author"
            _refused(request, reason)
            return redirect("alerts-console-detail", pk=draft.pk)
        msg_type, original = draft.msg_type, draft.references
        initial = {field: getattr(draft, field) for field in AlertForm.base_fields}
    elif source.get("follow"):
        original = get_object_or_404(Alert, pk=source.get("follow"))
        kind = source.get("type", "update")
        msg_type = rules.MsgType.CANCEL.value if kind == "cancel" else rules.MsgType.UPDATE.value
        initial = initial_from_original(original, msg_type)
    else:
        initial = initial_from_template(source.get("template", ""))

    context = {
        "draft": draft,
        "original": original,
        "msg_type": msg_type,
        "msg_type_label": MSG_TYPE_LABELS[msg_type],
        "templates": TEMPLATES.values(),
        "template_key": source.get("template", ""),
        "follow_type": source.get("type", ""),
        "sms_transliterate_everywhere": settings.ALERTS["SMS_TRANSLITERATE"],
        "sms_max_parts": settings.ALERTS["SMS_MAX_PARTS"],
    }
    if request.method == "GET":
        context["form"] = AlertForm(initial=initial, msg_type=msg_type)
        return render(request, "alerts/console_compose.html", context)
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "POST"])

    form = AlertForm(request.POST, msg_type=msg_type)
    context["form"] = form
    if request.POST.get("action") != "save":
        # A preview even of a form with errors: what is there, as it would go out.
        context["preview"] = previews(
            SimpleNamespace(
                headline=" ".join(request.POST.get("headline", "").split()),
                description=request.POST.get("description", ""),
                instruction=request.POST.get("instruction", ""),
                severity=request.POST.get("severity", rules.Severity.UNKNOWN.value),
                sms_transliterate=bool(request.POST.get("sms_transliterate")),
            )
        )
        form.is_valid()  # show the errors beside the preview
        return render(request, "alerts/console_compose.html", context)
    if not form.is_valid():
        return render(request, "alerts/console_compose.html", context, status=422)

    fields = _fields(form)
    now = time.time()
    follow_audit = None
    if original is not None and draft is None:
        try:
            _orig, _checked, follow_audit = rules.follow_up(
                original.to_rules(),
                _draft_rules(fields, author=request.user, msg_type=msg_type),
                operator_for(request.user),
                now=now,
            )
        except rules.Refused as refused:
            _refused(request, refused.reason)
            return render(request, "alerts/console_compose.html", context, status=409)

    with transaction.atomic():
        if draft is None:
            alert = Alert.objects.create(
                identifier=new_identifier(),
                author=request.user,
                msg_type=msg_type,
                references=original,
                state=rules.State.DRAFT.value,
                **fields,
            )
            detail = {"msg_type": msg_type, "sms_transliterate": fields["sms_transliterate"]}
            if original is not None:
                detail["references"] = original.identifier
            AlertAudit.objects.create(
                alert=alert, action="created", actor=request.user, at=_at(now), detail=detail
            )
            if follow_audit is not None:
                AlertAudit.objects.create(
                    alert=original,
                    action=follow_audit.action,
                    actor=request.user,
                    at=_at(now),
                    detail={"draft": alert.identifier},
                )
        else:
            alert = Alert.objects.select_for_update().get(pk=draft.pk)
            if alert.state != rules.State.DRAFT:
                _refused(request, "not_a_draft")
                return redirect("alerts-console-detail", pk=alert.pk)
            changed = sorted(name for name, new in fields.items() if getattr(alert, name) != new)
            for name, value in fields.items():
                setattr(alert, name, value)
            alert.save(update_fields=list(fields))
            AlertAudit.objects.create(
                alert=alert,
                action="edited",
                actor=request.user,
                at=_at(now),
                detail={"changed": changed, "sms_transliterate": alert.sms_transliterate},
            )
    messages.success(request, _("The draft is saved."), extra_tags="saved")
    return redirect("alerts-console-detail", pk=alert.pk)


# --- One alert ---------------------------------------------------------------


def _step(alert_pk: int, user, step, **kwargs) -> None:
    """One change of :mod:`alerts.rules` (submit, approve, reject), stored
    with its audit; raises :class:`rules.Refused` and changes nothing."""
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert_pk)
        now = time.time()
        after, audit = step(alert.to_rules(), operator_for(user), now=now, **kwargs)
        alert.state = after.state.value
        if audit.action == "approved":
            alert.approved_by = user
        alert.save(update_fields=["state", "approved_by"])
        AlertAudit.objects.create(
            alert=alert, action=audit.action, actor=user, at=_at(now), detail=audit.detail
        )


def _test_send(alert: Alert, user) -> None:
    """The alert's e-mail to the operator's own address; no subscriber, no outbox."""
    if not user.email:
        raise rules.Refused("no_email")
    note = _("A test: only you received this message; no resident did.")
    send_mail(
        subject=email_subject(alert),
        message=email_text(alert) + f"\n\n— {note}\n",
        from_email=settings.ALERTS["FROM_EMAIL"],
        recipient_list=[user.email],
        html_message=email_html(alert),
    )
    AlertAudit.objects.create(
        alert=alert,
        action="test_sent",
        actor=user,
        at=timezone.now(),
        detail={"to": user.email},
    )


DONE = {
    "submit": _("Submitted."),
    "approve": _("Approved."),
    "reject": _("Sent back to the author."),
    "publish": _("Done."),
    "test_send": _("The test e-mail is sent to your address."),
}


@operator_required
def detail(request, pk: int):
    alert = get_object_or_404(Alert.objects.select_related("author", "approved_by"), pk=pk)
    reject_form = RejectForm()
    if request.method == "POST":
        action = request.POST.get("action", "")
        try:
            if action == "submit":
                _step(alert.pk, request.user, rules.submit)
            elif action == "approve":
                _step(alert.pk, request.user, rules.approve)
            elif action == "reject":
                reject_form = RejectForm(request.POST)
                if not reject_form.is_valid():
                    return _render_detail(request, alert, reject_form, status=422)
                reason = reject_form.cleaned_data["reason"]
                _step(alert.pk, request.user, rules.reject, reason=reason)
            elif action == "publish":
                count = outbox.publish(alert.pk, request.user, now=time.time())
                alert.refresh_from_db()
                if alert.state == rules.State.SCHEDULED:
                    messages.success(request, _("Scheduled."), extra_tags="scheduled")
                else:
                    messages.success(
                        request,
                        ngettext(
                            "Published: %(count)d message is queued.",
                            "Published: %(count)d messages are queued.",
                            count,
                        )
                        % {"count": count},
                        extra_tags="published",
                    )
                return redirect("alerts-console-detail", pk=alert.pk)
            elif action == "test_send":
                _test_send(alert, request.user)
            else:
                raise rules.Refused("unknown_action")
        except rules.Refused as refused:
            _refused(request, refused.reason)
        else:
            messages.success(request, DONE[action], extra_tags=action)
        return redirect("alerts-console-detail", pk=alert.pk)
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET", "POST"])
    return _render_detail(request, alert, reject_form)


def _render_detail(request, alert: Alert, reject_form: RejectForm, status: int = 200):
    user = request.user
    state = rules.State(alert.state)
    mine = alert.author_id == user.pk
    audit = [
        SimpleNamespace(
            entry=entry,
            who=_name(entry.actor),
            what=ACTION_LABELS.get(entry.action, entry.action),
        )
        for entry in alert.audit.select_related("actor")
    ]
    context = {
        "alert": alert,
        "row": _row(alert, user),
        "mine": mine,
        "preview": previews(alert),
        "audit": audit,
        "reject_form": reject_form,
        "may_edit": state is rules.State.DRAFT and mine,
        "may_submit": state is rules.State.DRAFT,
        "awaiting": state is rules.State.AWAITING_APPROVAL,
        "may_approve": state is rules.State.AWAITING_APPROVAL and not mine,
        "may_publish": state is rules.State.APPROVED,
        "live": state in (rules.State.PUBLISHED, rules.State.SCHEDULED),
        "follow_ups": alert.follow_ups.order_by("created_at"),
        "areas": [dict(AREAS).get(code, code) for code in alert.areas],
        "has_email": bool(user.email),
        **_labels(),
    }
    return render(request, "alerts/console_detail.html", context, status=status)
