"""Crisis alert rules: approval, scheduling, expiry, update/cancel, areas."""

from dataclasses import replace

import pytest

from alerts.rules import (
    PUSH_URGENCY,
    WHOLE_GMINA,
    Alert,
    Category,
    Certainty,
    MsgType,
    Operator,
    Refused,
    Severity,
    State,
    Urgency,
    approve,
    follow_up,
    is_current,
    publish,
    push_ttl,
    reaches,
    reject,
    submit,
    supersede,
    tick,
)

T0 = 1_800_000_000.0
ANNA = Operator("anna", may_approve=True)
PIOTR = Operator("piotr", may_approve=True)
STAZYSTA = Operator("stazysta", may_approve=False)


def alert(severity=Severity.SEVERE, **fields) -> Alert:
    base = {
        "id": "a1",
        "author": "anna",
        "category": Category.MET,
        "event": "Powódź",
        "urgency": Urgency.IMMEDIATE,
        "severity": severity,
        "certainty": Certainty.OBSERVED,
        "headline": "Wysoki stan wody na Mrowli",
        "description": "Przekroczony stan alarmowy.",
        "instruction": "Nie zbliżaj się do wałów. Przygotuj dokumenty i leki.",
        "areas": frozenset({"przewrotne"}),
        "effective": T0,
        "expires": T0 + 6 * 3600,
    }
    return Alert(**{**base, **fields})


@pytest.mark.parametrize("severity", [Severity.SEVERE, Severity.EXTREME])
def test_severe_and_extreme_need_a_second_operator(severity):
    draft = alert(severity)
    submitted, _ = submit(draft, ANNA, now=T0)
    assert submitted.state is State.AWAITING_APPROVAL
    with pytest.raises(Refused, match="needs_approval"):
        publish(submitted, ANNA, now=T0)
    with pytest.raises(Refused, match="second_operator_needed"):
        approve(submitted, ANNA, now=T0)  # the author cannot approve their own
    with pytest.raises(Refused, match="may_not_approve"):
        approve(submitted, STAZYSTA, now=T0)
    approved, audit = approve(submitted, PIOTR, now=T0)
    assert approved.state is State.APPROVED and approved.approved_by == "piotr"
    assert audit.action == "approved" and audit.actor == "piotr"
    published, audit = publish(approved, ANNA, now=T0)
    assert published.state is State.PUBLISHED and published.published_at == T0


@pytest.mark.parametrize("severity", [Severity.MINOR, Severity.MODERATE, Severity.UNKNOWN])
def test_lesser_alerts_go_out_with_one_operator(severity):
    submitted, _ = submit(alert(severity), STAZYSTA, now=T0)
    assert submitted.state is State.APPROVED
    assert publish(submitted, STAZYSTA, now=T0)[0].state is State.PUBLISHED


def test_a_rejected_alert_goes_back_to_its_author_as_a_draft():
    submitted, _ = submit(alert(), ANNA, now=T0)
    draft, audit = reject(submitted, PIOTR, now=T0, reason="Zła miejscowość")
    assert draft.state is State.DRAFT and audit.detail == {"reason": "Zła miejscowość"}


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"instruction": "  "}, "instruction_missing"),
        ({"headline": ""}, "headline_missing"),
        ({"headline": "x" * 141}, "headline_too_long"),
        ({"areas": frozenset()}, "areas_missing"),
        ({"expires": T0}, "expires_before_effective"),
    ],
)
def test_an_incomplete_alert_cannot_leave_the_draft(fields, reason):
    with pytest.raises(Refused, match=reason):
        submit(alert(**fields), ANNA, now=T0)


def test_scheduled_publication_and_expiry_follow_the_clock():
    approved, _ = submit(alert(Severity.MINOR, effective=T0 + 600), ANNA, now=T0)
    scheduled, audit = publish(approved, ANNA, now=T0)
    assert scheduled.state is State.SCHEDULED and audit.action == "scheduled"
    assert not is_current(scheduled, now=T0)
    assert tick(scheduled, now=T0 + 599) == (scheduled, None)
    live, audit = tick(scheduled, now=T0 + 600)
    assert live.state is State.PUBLISHED and audit.actor == "system"
    assert is_current(live, now=T0 + 601)
    expired, audit = tick(live, now=live.expires)
    assert expired.state is State.EXPIRED and audit.action == "expired"
    assert not is_current(expired, now=live.expires)


def test_an_alert_already_expired_cannot_be_submitted_or_published():
    with pytest.raises(Refused, match="already_expired"):
        submit(alert(expires=T0 + 10), ANNA, now=T0 + 10)


def test_update_then_cancel_refer_to_the_original_and_retire_it():
    published = publish(submit(alert(Severity.MINOR), ANNA, now=T0)[0], ANNA, now=T0)[0]
    update = alert(Severity.MINOR, id="a2", msg_type=MsgType.UPDATE, headline="Woda opada")
    _, draft, audit = follow_up(published, update, ANNA, now=T0 + 60)
    assert draft.references == "a1" and audit.action == "update"
    with pytest.raises(Refused, match="follow_up_not_published"):
        supersede(published, draft, now=T0 + 60)
    live_update = publish(submit(draft, ANNA, now=T0 + 60)[0], ANNA, now=T0 + 60)[0]
    old, audit = supersede(published, live_update, now=T0 + 60)
    assert old.state is State.SUPERSEDED and audit.detail == {"by": "a2"}
    assert not is_current(old, now=T0 + 61) and is_current(live_update, now=T0 + 61)
    # A cancel needs no instruction, and it is not itself a current warning.
    cancel = alert(Severity.MINOR, id="a3", msg_type=MsgType.CANCEL, instruction="")
    _, cancel_draft, _ = follow_up(live_update, cancel, ANNA, now=T0 + 120)
    live_cancel = publish(submit(cancel_draft, ANNA, now=T0 + 120)[0], ANNA, now=T0 + 120)[0]
    withdrawn, _ = supersede(live_update, live_cancel, now=T0 + 120)
    assert withdrawn.state is State.CANCELLED
    assert not is_current(live_cancel, now=T0 + 121)


def test_only_a_live_alert_can_be_updated_or_cancelled():
    draft = alert()
    with pytest.raises(Refused, match="original_not_live"):
        follow_up(draft, replace(draft, id="x", msg_type=MsgType.CANCEL), ANNA, now=T0)
    live = publish(submit(alert(Severity.MINOR), ANNA, now=T0)[0], ANNA, now=T0)[0]
    with pytest.raises(Refused, match="not_a_follow_up"):
        follow_up(live, replace(live, id="x"), ANNA, now=T0)


@pytest.mark.parametrize(
    "alert_areas, subscribed, expected",
    [
        ({"przewrotne"}, {"przewrotne", "styków"}, True),
        ({"przewrotne"}, {"styków"}, False),
        ({WHOLE_GMINA}, {"styków"}, True),
        ({"lipie"}, {WHOLE_GMINA}, True),
        ({"lipie", "hucisko"}, {"hucisko"}, True),
    ],
)
def test_area_targeting(alert_areas, subscribed, expected):
    assert reaches(alert(areas=frozenset(alert_areas)), frozenset(subscribed)) is expected


def test_push_urgency_and_ttl_follow_severity_and_expiry():
    assert PUSH_URGENCY[Severity.EXTREME] == "high"
    assert PUSH_URGENCY[Severity.MINOR] == "low"
    assert push_ttl(alert(), now=T0 + 3600) == 5 * 3600
    assert push_ttl(alert(), now=T0 + 7 * 3600) == 0
