"""The meeting rules (signaling.rules) as pure code: no database, no I/O, no clock.

The permission table is written here again, independently, from issue 3 (item 2
and the kinds of item 1), and checked against rules.PERMISSIONS *and* against
what act() really does on a room, both ways: what is allowed works, what is
not is refused with ``forbidden`` and changes nothing.
"""

from __future__ import annotations

import itertools
import json
import statistics

import msgspec
import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from signaling import rules
from signaling.rules import Action, Claim, Kind, Limits, Refused, Role, Room, Status

A = Action
LIMITS = Limits()
T0 = 1_000_000.0

# --- The table, from the issue ---------------------------------------------------

# Guests exist where outsiders come (consultation, public, parent slot), not in a
# staff-only briefing; viewers only watch a public consultation.
ROLES_IN = {
    Kind.CONSULTATION: {Role.HOST, Role.MODERATOR, Role.PARTICIPANT, Role.GUEST},
    Kind.BRIEFING: {Role.HOST, Role.MODERATOR, Role.PARTICIPANT},
    Kind.PUBLIC: {Role.HOST, Role.MODERATOR, Role.PARTICIPANT, Role.VIEWER, Role.GUEST},
    Kind.PARENT_SLOT: {Role.HOST, Role.MODERATOR, Role.PARTICIPANT, Role.GUEST},
}
# "moderator controls: admit, deny, send back to the queue, mute someone's audio
# or video, remove, lock, end for everyone, hand over host" (+ the records, and
# recording: issue 5 item 6).
CONTROLS = {A.ADMIT, A.DENY, A.SEND_BACK, A.MUTE, A.REMOVE, A.LOCK, A.RECORDS, A.RECORD}
HOST_ALONE = {A.END, A.HAND_OVER}
# "Participant controls: camera, microphone, screen share, chat, raise hand, leave."
OWN_MEDIA = {A.AUDIO, A.VIDEO, A.SCREEN}
SPEAKERS = OWN_MEDIA | {A.CHAT, A.SIGNAL}


def expected(kind: Kind, role: Role) -> set[Action]:
    if role not in ROLES_IN[kind]:
        return set()
    allowed = {A.LEAVE}
    if role in (Role.HOST, Role.MODERATOR):
        allowed |= CONTROLS | SPEAKERS
        if role is Role.HOST:
            allowed |= HOST_ALONE
        if kind in (Kind.CONSULTATION, Kind.PARENT_SLOT):
            allowed.add(A.CALL_NEXT)  # the clerk "calls next"
        if kind is Kind.PUBLIC:
            allowed |= {A.FLOOR, A.APPROVE}  # gives/takes the floor, moderated Q&A
    elif role in (Role.PARTICIPANT, Role.GUEST):
        allowed |= SPEAKERS
        if kind in (Kind.BRIEFING, Kind.PUBLIC):
            allowed.add(A.HAND)
    else:  # viewer: watches (negotiates to receive media) and leaves
        allowed.add(A.SIGNAL)
    return allowed


ALL = list(itertools.product(Kind, Role, Action))
EXISTING = [(k, r, a) for k, r, a in ALL if r in ROLES_IN[k]]


# --- A meeting to play with ----------------------------------------------------------


def snap(room: Room) -> bytes:
    return msgspec.json.encode(room)


class Meeting:
    """A room plus a clock; every change checks that the input is not mutated."""

    def __init__(self, kind: Kind, limits: Limits = LIMITS, **fields):
        self.room = Room(code="kod", kind=kind, title="Spotkanie", **fields)
        self.limits = limits
        self.now = T0

    def claim(self, name, *, auth=True, staff=False, host=False, watch=False) -> Claim:
        return Claim(f"user:{name}" if auth else f"guest:{name}", name, auth, staff, host, watch)

    def join(self, name: str, channel: str | None = None, **claim) -> str:
        before = snap(self.room)
        outcome = rules.join(
            self.room,
            self.claim(name, **claim),
            channel=channel or f"ch-{name}",
            instance=f"tab-{name}",
            now=self.now,
            limits=self.limits,
        )
        assert snap(self.room) == before
        self.room = outcome.room
        return outcome.pid

    def join_refused(self, name: str, **claim) -> Refused:
        before = snap(self.room)
        with pytest.raises(Refused) as info:
            rules.join(
                self.room,
                self.claim(name, **claim),
                channel=f"ch-{name}",
                instance="t",
                now=self.now,
                limits=self.limits,
            )
        assert snap(self.room) == before
        return info.value

    def act(self, pid: str, action: Action, target=None, value=None) -> rules.Outcome:
        before = snap(self.room)
        outcome = rules.act(
            self.room, pid, action, now=self.now, limits=self.limits, target=target, value=value
        )
        assert snap(self.room) == before, "act() mutated its input"
        self.room = outcome.room
        return outcome

    def refused(self, pid: str, action: Action, target=None, value=None) -> Refused:
        before = snap(self.room)
        with pytest.raises(Refused) as info:
            rules.act(
                self.room, pid, action, now=self.now, limits=self.limits, target=target, value=value
            )
        assert snap(self.room) == before, "a refused act() changed the room"
        return info.value

    def disconnect(self, pid: str, channel: str) -> rules.Outcome:
        outcome = rules.disconnect(self.room, pid, channel, now=self.now, limits=self.limits)
        self.room = outcome.room
        return outcome

    def reconnect(self, pid: str, principal: str, channel: str, instance: str) -> rules.Outcome:
        before = snap(self.room)
        outcome = rules.reconnect(
            self.room,
            pid,
            principal,
            channel=channel,
            instance=instance,
            now=self.now,
            limits=self.limits,
        )
        assert snap(self.room) == before
        self.room = outcome.room
        return outcome

    def expire(self) -> rules.Outcome:
        before = snap(self.room)
        outcome = rules.expire(self.room, now=self.now)
        assert snap(self.room) == before
        self.room = outcome.room
        return outcome

    def view(self, pid: str) -> dict:
        return rules.view(self.room, pid, now=self.now, limits=self.limits)

    def __getitem__(self, pid: str) -> rules.Participant:
        return self.room.participants[pid]

    def queued(self) -> list[str]:
        return [p.pid for p in rules.queue(self.room)]

    def residents(self) -> list[str]:
        return [
            p.pid
            for p in self.room.participants.values()
            if p.status is Status.ADMITTED and p.role in (Role.PARTICIPANT, Role.GUEST)
        ]


def full_room(kind: Kind) -> tuple[Meeting, dict[str, str]]:
    """A room of ``kind`` with one of each role it has, admitted, two admitted
    participants and one person waiting (``queued``)."""
    names = ["anna", "piotr", "ewa", "jan"]  # P, P2, G, Q
    m = Meeting(
        kind,
        moderators=["user:marek"],
        invited=[f"user:{n}" for n in names],
    )
    who = {"host": m.join("halina", host=True), "moderator": m.join("marek")}
    staff = kind is Kind.BRIEFING
    who["participant"] = m.join("anna", staff=staff)
    who["participant2"] = m.join("piotr", staff=staff)
    if Role.GUEST in ROLES_IN[kind]:
        who["guest"] = m.join("ewa", auth=False)
    if Role.VIEWER in ROLES_IN[kind]:
        who["viewer"] = m.join("wiktor", watch=True)
    who["queued"] = m.join("jan", staff=staff)
    if kind in (Kind.CONSULTATION, Kind.PARENT_SLOT):
        for key in ("participant", "participant2", "guest"):
            if key in who:
                m.act(who["host"], A.ADMIT, who[key])
    else:  # the lobby of a non-queued kind holds someone removed who came back
        m.act(who["host"], A.REMOVE, who["queued"])
        who["queued"] = m.join("jan", staff=staff)
    assert m[who["queued"]].status is Status.QUEUED
    for key in ("participant", "participant2", "guest"):
        if key in who:
            if kind is Kind.PUBLIC:
                m.act(who["host"], A.FLOOR, who[key], True)
            m.act(who[key], A.AUDIO, value=True)
            m.act(who[key], A.VIDEO, value=True)
    m.now += 60
    return m, who


ACTOR_KEY = {
    Role.HOST: "host",
    Role.MODERATOR: "moderator",
    Role.PARTICIPANT: "participant",
    Role.GUEST: "guest",
    Role.VIEWER: "viewer",
}


def arguments(action: Action, actor: str, who: dict, m: Meeting) -> tuple[str | None, object]:
    """A target and value with which ``action`` works when it is allowed."""
    other = who["participant2"] if actor == who["participant"] else who["participant"]
    if action in (A.ADMIT, A.DENY):
        return who["queued"], None
    if action in (A.SEND_BACK, A.REMOVE):
        return other, None
    if action is A.MUTE:
        return other, {"audio": True, "video": True}
    if action is A.FLOOR:
        return other, False  # take the floor someone holds
    if action is A.HAND_OVER:
        return who["moderator"], None
    if action in OWN_MEDIA:
        return None, not getattr(m[actor], action.value)
    if action in (A.HAND, A.LOCK, A.RECORD):
        return None, True
    return None, None


# --- Permissions: the table ---------------------------------------------------------


def test_table_has_exactly_the_roles_of_each_kind():
    assert set(rules.PERMISSIONS) == {(k, r) for k in Kind for r in ROLES_IN[k]}
    assert {k: set(v) for k, v in rules.ROLES_BY_KIND.items()} == ROLES_IN


@pytest.mark.parametrize(("kind", "role", "action"), ALL)
def test_may_matches_the_issue(kind, role, action):
    assert rules.may(kind, role, action) is (action in expected(kind, role))


@pytest.mark.parametrize(("kind", "role"), [(k, r) for k in Kind for r in ROLES_IN[k]])
def test_view_lists_the_allowed_actions(kind, role):
    m, who = full_room(kind)
    assert set(m.view(who[ACTOR_KEY[role]])["actions"]) == {a.value for a in expected(kind, role)}
    assert m.view(who["queued"])["actions"] == ["leave"]


# --- Permissions: act() on a real room, both ways ---------------------------------------


@pytest.mark.parametrize(("kind", "role", "action"), EXISTING)
def test_act_both_ways(kind, role, action):
    m, who = full_room(kind)
    actor = who[ACTOR_KEY[role]]
    target, value = arguments(action, actor, who, m)
    if action is A.RECORD:
        m.limits = Limits(force_sfu=True)  # recording needs the forwarding unit
    if action not in expected(kind, role):
        refused = m.refused(actor, action, target, value)
        assert (refused.code, refused.reason) == ("forbidden", "not_allowed")
        return
    before = msgspec.convert(msgspec.to_builtins(m.room), Room)
    outcome = m.act(actor, action, target, value)
    room = outcome.room
    people = room.participants
    if action is A.ADMIT:
        assert people[target].status is Status.ADMITTED and not people[target].returning
    elif action is A.DENY:
        assert target not in people and before.participants[target].principal in room.banned
    elif action is A.SEND_BACK:
        assert people[target].status is Status.QUEUED
        assert not (people[target].audio or people[target].video)
    elif action is A.CALL_NEXT:
        served = [
            p.pid
            for p in before.participants.values()
            if p.status is Status.ADMITTED and p.role in (Role.PARTICIPANT, Role.GUEST)
        ]
        assert served and not any(pid in people for pid in served)
        assert people[who["queued"]].status is Status.ADMITTED
        assert len(room.service_times) == len(before.service_times) + 1
    elif action is A.MUTE:
        assert not (people[target].audio or people[target].video or people[target].screen)
    elif action is A.REMOVE:
        assert target not in people and before.participants[target].principal in room.banned
    elif action is A.LOCK:
        assert room.locked
    elif action is A.RECORD:
        assert room.recording and room.recording_since == m.now
    elif action is A.END:
        assert room.ended
    elif action is A.HAND_OVER:
        assert people[target].role is Role.HOST and people[actor].role is Role.MODERATOR
    elif action is A.FLOOR:
        assert not people[target].floor and not people[target].audio
    elif action in OWN_MEDIA:
        assert getattr(people[actor], action.value) is value
    elif action is A.HAND:
        assert people[actor].hand == m.now
    elif action is A.LEAVE:
        assert actor not in people
        if role is Role.HOST:
            assert people[who["moderator"]].role is Role.HOST
    else:  # checked here, carried out elsewhere: the room stays as it was
        assert action in (A.CHAT, A.SIGNAL, A.APPROVE, A.RECORDS)
        assert snap(room) == snap(before) and outcome.events == []


@pytest.mark.parametrize(("kind", "action"), list(itertools.product(Kind, Action)))
def test_someone_waiting_may_only_leave(kind, action):
    m, who = full_room(kind)
    actor = who["queued"]
    target, value = arguments(action, actor, who, m)
    if action is A.LEAVE:
        assert actor not in m.act(actor, action).room.participants
        return
    refused = m.refused(actor, action, target, value)
    assert refused.code == "forbidden"


@pytest.mark.parametrize("kind", [Kind.CONSULTATION, Kind.PUBLIC, Kind.PARENT_SLOT])
@pytest.mark.parametrize("action", [A.ADMIT, A.MUTE, A.REMOVE, A.END, A.LOCK, A.DENY])
def test_guest_moderating_is_forbidden_and_changes_nothing(kind, action):
    m, who = full_room(kind)
    target, value = arguments(action, who["guest"], who, m)
    assert m.refused(who["guest"], action, target, value).code == "forbidden"


@pytest.mark.parametrize("action", [A.MUTE, A.REMOVE, A.SEND_BACK, A.DENY, A.HAND_OVER])
def test_nobody_acts_on_the_host_but_the_host(action):
    m, who = full_room(Kind.PUBLIC)
    refused = m.refused(who["moderator"], action, who["host"], {"audio": True})
    assert refused.code == "forbidden"
    assert m.refused(who["host"], A.MUTE, who["host"]).reason == "not_on_yourself"


def test_moderators_cannot_be_sent_back_and_only_moderators_can_become_host():
    m, who = full_room(Kind.CONSULTATION)
    assert m.refused(who["host"], A.SEND_BACK, who["moderator"]).code == "forbidden"
    assert m.refused(who["host"], A.HAND_OVER, who["participant"]).reason == "cannot_host"
    b, bw = full_room(Kind.BRIEFING)  # among staff anyone may take over
    b.act(bw["host"], A.HAND_OVER, bw["participant"])
    assert b[bw["participant"]].role is Role.HOST and b[bw["host"]].role is Role.MODERATOR


def test_ended_meeting_refuses_everything():
    m, who = full_room(Kind.CONSULTATION)
    m.act(who["host"], A.END)
    for action in Action:
        assert m.refused(who["host"], action).code == "gone"
    assert m.join_refused("nowy").code == "gone"


# --- Join: roles from the claim ----------------------------------------------------------


def test_host_claim_then_second_host_claim_is_moderator():
    m = Meeting(Kind.CONSULTATION)
    first = m.join("urzednik", host=True)
    second = m.join("kolega", host=True)
    assert m[first].role is Role.HOST and m[first].status is Status.ADMITTED
    assert m[second].role is Role.MODERATOR and m[second].status is Status.ADMITTED


def test_guest_and_participant_by_authentication():
    m = Meeting(Kind.PUBLIC, moderators=["user:mod"])
    assert m[m.join("gosc", auth=False)].role is Role.GUEST
    assert m[m.join("mieszkaniec")].role is Role.PARTICIPANT
    assert m[m.join("mod")].role is Role.MODERATOR
    assert m[m.join("widz", watch=True)].role is Role.VIEWER
    assert m[m.join("widz2", watch=True, auth=False)].role is Role.VIEWER


@pytest.mark.parametrize("kind", [Kind.CONSULTATION, Kind.PARENT_SLOT, Kind.BRIEFING])
def test_watch_only_makes_no_viewer_outside_public(kind):
    m = Meeting(kind, invited=["user:a"])
    assert m[m.join("a", staff=True, watch=True)].role is Role.PARTICIPANT


def test_briefing_only_invited_staff():
    m = Meeting(Kind.BRIEFING, invited=["user:zaproszony", "user:niestaff"])
    assert m[m.join("zaproszony", staff=True)].role is Role.PARTICIPANT
    for name, claim in [
        ("obcy", {"staff": True}),  # staff, not invited
        ("niestaff", {}),  # invited, not staff
        ("gosc", {"auth": False, "staff": True}),
    ]:
        refused = m.join_refused(name, **claim)
        assert (refused.code, refused.reason) == ("forbidden", "briefing_invited_only")
    assert m[m.join("szef", host=True)].role is Role.HOST


CLAIM_FLAGS = list(itertools.product([False, True], repeat=6))


@pytest.mark.parametrize("kind", list(Kind))
def test_join_never_makes_a_role_the_kind_lacks(kind):
    for auth, staff, host, watch, invited, moderator in CLAIM_FLAGS:
        m = Meeting(kind, invited=["p:x"] * invited, moderators=["p:x"] * moderator)
        claim = Claim("p:x", "x", auth, staff, host, watch)
        try:
            role = rules.role_for(m.room, claim)
        except Refused as refused:
            assert kind is Kind.BRIEFING and refused.code == "forbidden"
            assert not host and not moderator
            continue
        assert role in ROLES_IN[kind]
        if host:
            assert role is Role.HOST
        if kind is Kind.BRIEFING and role is Role.PARTICIPANT:
            assert auth and staff and invited


@pytest.mark.parametrize("kind", list(Kind))
def test_who_waits_and_who_goes_in(kind):
    m = Meeting(kind, invited=["user:a"], moderators=["user:mod"])
    host = m.join("h", host=True)
    mod = m.join("mod")
    resident = m.join("a", staff=True)
    assert m[host].status is m[mod].status is Status.ADMITTED
    waits = kind in (Kind.CONSULTATION, Kind.PARENT_SLOT)
    assert m[resident].status is (Status.QUEUED if waits else Status.ADMITTED)


def test_locked_room_refuses_all_but_moderators():
    m = Meeting(Kind.PUBLIC, moderators=["user:mod"])
    host = m.join("h", host=True)
    m.act(host, A.LOCK, value=True)
    refused = m.join_refused("ktos")
    assert (refused.code, refused.reason) == ("locked", "meeting_locked")
    assert m.join_refused("gosc", auth=False).code == "locked"
    assert m[m.join("mod")].role is Role.MODERATOR
    assert m[m.join("kolega", host=True)].role is Role.MODERATOR
    m.act(host, A.LOCK, value=False)
    assert m[m.join("ktos")].status is Status.ADMITTED


def test_capacity_and_full():
    # Without the forwarding unit, the mesh's size caps every room.
    limits = Limits(call_max=3, mesh_max=6, sfu=False)
    assert rules.capacity(Room(code="c", kind=Kind.PUBLIC, title=""), limits) == 6
    assert rules.capacity(Room(code="c", kind=Kind.CONSULTATION, title=""), limits) == 5
    assert rules.capacity(Room(code="c", kind=Kind.BRIEFING, title=""), Limits(mesh_max=99)) == 25
    # With it (the default), only the kind's limits do.
    assert rules.capacity(Room(code="c", kind=Kind.PUBLIC, title=""), Limits(mesh_max=6)) == 200
    assert rules.capacity(Room(code="c", kind=Kind.BRIEFING, title=""), Limits(mesh_max=2)) == 25
    m = Meeting(Kind.PUBLIC, limits)
    m.join("h", host=True)
    for i in range(5):
        m.join(f"u{i}")
    refused = m.join_refused("za-duzo")
    assert (refused.code, refused.reason) == ("full", "meeting_full")
    assert m.join_refused("kolega", host=True).code == "full"
    # A queue is never full: residents wait whatever the size of the call.
    q = Meeting(Kind.CONSULTATION, limits)
    q.join("h", host=True)
    assert all(q[q.join(f"r{i}")].status is Status.QUEUED for i in range(20))


# --- Mesh, then the forwarding unit (topology) -----------------------------------------


def topologies(m: Meeting) -> set[str]:
    """The topology every admitted participant is shown (and one outsider)."""
    admitted = [p.pid for p in m.room.participants.values() if p.status is Status.ADMITTED]
    seen = {m.view(pid)["topology"] for pid in [*admitted, "pnobody"]}
    assert len(seen) == 1, seen
    return seen


def test_a_call_moves_to_the_forwarding_unit_past_the_mesh_size_and_stays_until_empty():
    m = Meeting(Kind.BRIEFING, Limits(mesh_max=3), invited=[f"user:s{i}" for i in range(6)])
    host = m.join("h", host=True)
    staff = [m.join(f"s{i}", staff=True) for i in range(2)]
    assert topologies(m) == {"mesh"} and not m.room.sfu  # 3 people: still a mesh
    fourth = m.join("s2", staff=True)
    assert topologies(m) == {"sfu"} and m.room.sfu  # the 4th: past the mesh
    # Sticky: back under the mesh size, still through the unit (nobody's media flaps).
    m.act(fourth, A.LEAVE)
    m.act(staff[0], A.LEAVE)
    assert topologies(m) == {"sfu"}
    # Away and back, a reload: it stays.
    m.disconnect(staff[1], "ch-s1")
    m.reconnect(staff[1], "user:s1", "ch-again", "tab-new")
    assert topologies(m) == {"sfu"}
    # Once the call is empty, the next one starts as a mesh.
    m.act(staff[1], A.LEAVE)
    m.act(host, A.LEAVE)
    assert not m.room.participants and not m.room.sfu
    m.join("h", host=True)
    assert topologies(m) == {"mesh"}


def test_admitting_from_the_queue_moves_the_call_too_and_the_queue_does_not_count():
    m = Meeting(Kind.CONSULTATION, Limits(mesh_max=2, call_max=3))
    host = m.join("h", host=True)
    residents = [m.join(f"r{i}") for i in range(3)]  # they wait: not in the call
    assert topologies(m) == {"mesh"}
    m.act(host, A.ADMIT, residents[0])
    assert topologies(m) == {"mesh"}
    m.act(host, A.ADMIT, residents[1])
    assert topologies(m) == {"sfu"}
    # Sent back and served: the call is the host alone, still through the unit…
    m.act(host, A.SEND_BACK, residents[1])
    m.act(host, A.CALL_NEXT)
    assert m.room.sfu
    # …and the host alone leaving with residents still queued empties the call.
    waiting = m.queued()
    assert waiting
    m.expire()
    m.now += 10_000
    m.expire()
    assert not m.room.participants and not m.room.sfu


def test_capacity_grows_past_the_mesh_only_with_the_forwarding_unit():
    invited = [f"user:s{i}" for i in range(12)]
    on = Meeting(Kind.BRIEFING, Limits(mesh_max=4), invited=invited)
    on.join("h", host=True)
    for i in range(10):
        on.join(f"s{i}", staff=True)
    assert topologies(on) == {"sfu"}
    off = Meeting(Kind.BRIEFING, Limits(mesh_max=4, sfu=False), invited=invited)
    off.join("h", host=True)
    for i in range(3):
        off.join(f"s{i}", staff=True)
    refused = off.join_refused("s3", staff=True)
    assert (refused.code, refused.reason) == ("full", "meeting_full")
    assert topologies(off) == {"mesh"} and not off.room.sfu


def test_forced_forwarding_unit_from_the_first_participant_and_off_means_off():
    forced = Meeting(Kind.CONSULTATION, Limits(force_sfu=True))
    assert topologies(forced) == {"sfu"}  # even before anyone is in
    forced.join("h", host=True)
    assert topologies(forced) == {"sfu"}
    # Switched off, nothing forces it nor moves a room there.
    off = Meeting(Kind.CONSULTATION, Limits(sfu=False, force_sfu=True, mesh_max=2), sfu=True)
    off.join("h", host=True)
    assert topologies(off) == {"mesh"}


def test_who_may_send_to_and_receive_from_the_forwarding_unit():
    m, who = full_room(Kind.PUBLIC)
    limits = Limits(force_sfu=True)
    m.limits = limits
    for key in ("participant", "guest"):  # full_room gave them the floor
        m.act(who["host"], A.FLOOR, who[key], False)
    room = m.room
    for key in ("host", "moderator"):
        assert rules.check_publish(room, who[key], limits).pid == who[key]
    # Without the floor a participant sends nothing; a viewer never does.
    for key, reason in (
        ("participant", "needs_floor"),
        ("guest", "needs_floor"),
        ("viewer", "not_allowed"),
        ("queued", "not_admitted"),
    ):
        with pytest.raises(Refused) as info:
            rules.check_publish(room, who[key], limits)
        assert (info.value.code, info.value.reason) == ("forbidden", reason), key
    m.act(who["host"], A.FLOOR, who["participant"], True)
    assert rules.check_publish(m.room, who["participant"], limits)
    # Receiving: only someone who publishes, never oneself, only when admitted.
    outcome = rules.publishing(m.room, who["host"], True, limits=limits)
    assert outcome.room.participants[who["host"]].published == 1
    room = outcome.room
    assert (
        rules.publishing(room, who["host"], True, limits=limits)
        .room.participants[who["host"]]
        .published
        == 2
    )
    for key in ("moderator", "participant", "guest", "viewer"):
        assert rules.check_subscribe(room, who[key], who["host"], limits).pid == who["host"]
    cases = [
        (who["viewer"], who["moderator"], ("not_found", "no_publisher")),
        (who["host"], who["host"], ("conflict", "not_on_yourself")),
        (who["viewer"], who["queued"], ("not_found", "peer_unavailable")),
        (who["queued"], who["host"], ("forbidden", "not_admitted")),
        (who["viewer"], "pnobody0000", ("not_found", "peer_unavailable")),
    ]
    for pid, source, expected_refusal in cases:
        with pytest.raises(Refused) as info:
            rules.check_subscribe(room, pid, source, limits)
        assert (info.value.code, info.value.reason) == expected_refusal
    # In a mesh, nobody uses the unit.
    for check in (
        lambda: rules.check_publish(room, who["host"], LIMITS),
        lambda: rules.check_subscribe(room, who["viewer"], who["host"], LIMITS),
    ):
        with pytest.raises(Refused) as info:
            check()
        assert (info.value.code, info.value.reason) == ("conflict", "sfu_off")
    # Stopping, being sent back, losing the floor or reloading stops publishing.
    assert (
        rules.publishing(room, who["host"], False, limits=limits)
        .room.participants[who["host"]]
        .published
        == 0
    )
    m.room = rules.publishing(m.room, who["participant"], True, limits=limits).room
    m.act(who["host"], A.FLOOR, who["participant"], False)
    assert m[who["participant"]].published == 0
    with pytest.raises(Refused):
        rules.publishing(m.room, who["participant"], True, limits=limits)
    m.room = rules.publishing(m.room, who["moderator"], True, limits=limits).room
    m.reconnect(who["moderator"], "user:marek", "ch-new", "another-tab")
    assert m[who["moderator"]].published == 0
    assert m.view(who["host"])["participants"][0]["published"] == 0


def test_sending_back_stops_publishing():
    m = Meeting(Kind.CONSULTATION, Limits(force_sfu=True))
    host = m.join("h", host=True)
    r = m.join("r")
    m.act(host, A.ADMIT, r)
    m.room = rules.publishing(m.room, r, True, limits=m.limits).room
    assert {p["pid"]: p["published"] for p in m.view(host)["participants"]}[r] == 1
    m.act(host, A.SEND_BACK, r)
    assert m[r].published == 0


# --- Recording (through the forwarding unit only) ---------------------------------------


FORCED = Limits(force_sfu=True)


def recording_room(kind: Kind = Kind.CONSULTATION, limits: Limits = FORCED):
    """The host, a moderator and a resident in the call."""
    m = Meeting(kind, limits, moderators=["user:mod"])
    host = m.join("h", host=True)
    mod = m.join("mod")
    r = m.join("r")
    if m[r].status is Status.QUEUED:
        m.act(host, A.ADMIT, r)
    return m, host, mod, r


def test_recording_is_turned_on_and_off_and_everyone_sees_it():
    m, host, mod, r = recording_room()
    for pid in (host, mod, r):
        assert (m.view(pid)["recording"], m.view(pid)["recording_since"]) == (False, None)
    m.now += 5
    out = m.act(mod, A.RECORD, value=True)  # a moderator may, like the host
    assert [(e.kind, e.actor) for e in out.events] == [("recording_on", mod)]
    assert m.room.recording and m.room.recording_since == m.now
    waiting = m.join("w")  # someone waiting in the queue is told too, before entering
    assert m[waiting].status is Status.QUEUED
    for pid in (host, mod, r, waiting):
        view = m.view(pid)
        assert (view["recording"], view["recording_since"]) == (True, m.now)
    assert m.refused(host, A.RECORD, value=True).reason == "already_recording"
    out = m.act(host, A.RECORD, value=False)
    assert [(e.kind, e.actor, e.detail) for e in out.events] == [
        ("recording_off", host, {"reason": "stopped"})
    ]
    assert not m.room.recording and m.room.recording_since is None
    assert m.view(r)["recording"] is False
    refused = m.refused(host, A.RECORD, value=False)
    assert (refused.code, refused.reason) == ("conflict", "not_recording")


@pytest.mark.parametrize("kind", list(Kind))
def test_only_those_who_moderate_may_record(kind):
    m, who = full_room(kind)
    m.limits = Limits(force_sfu=True)
    for key in ("participant", "guest", "viewer"):
        if key in who:
            refused = m.refused(who[key], A.RECORD, value=True)
            assert (refused.code, refused.reason) == ("forbidden", "not_allowed")
    refused = m.refused(who["queued"], A.RECORD, value=True)
    assert (refused.code, refused.reason) == ("forbidden", "not_admitted")
    m.act(who["moderator"], A.RECORD, value=True)
    refused = m.refused(who["participant"], A.RECORD, value=False)
    assert refused.code == "forbidden" and m.room.recording


def test_a_mesh_cannot_be_recorded_and_the_move_to_the_unit_does_not_start_it():
    """In a mesh the media never reach the server. When the call outgrows the
    mesh and moves to the forwarding unit, recording stays off until a
    moderator turns it on there."""
    m = Meeting(Kind.BRIEFING, Limits(mesh_max=2), invited=["user:a", "user:b"])
    host = m.join("h", host=True)
    m.join("a", staff=True)
    assert topologies(m) == {"mesh"}
    refused = m.refused(host, A.RECORD, value=True)
    assert (refused.code, refused.reason) == ("conflict", "recording_needs_sfu")
    m.join("b", staff=True)
    assert topologies(m) == {"sfu"} and not m.room.recording
    m.act(host, A.RECORD, value=True)
    assert m.room.recording
    # Switched off altogether (MEET_SFU=0): no room records.
    off = Meeting(Kind.CONSULTATION, Limits(sfu=False, force_sfu=True))
    h = off.join("h", host=True)
    assert off.refused(h, A.RECORD, value=True).reason == "recording_needs_sfu"


def test_ending_the_meeting_stops_recording():
    m, host, _mod, _r = recording_room()
    m.act(host, A.RECORD, value=True)
    out = m.act(host, A.END)
    assert [(e.kind, e.detail) for e in out.events] == [
        ("recording_off", {"reason": "ended"}),
        ("ended", {}),
    ]
    assert not m.room.recording and m.room.ended


def test_recording_stops_when_nobody_who_may_stop_it_is_left():
    m, host, mod, r = recording_room()
    m.act(host, A.RECORD, value=True)
    m.act(host, A.LEAVE)  # the moderator becomes host: still recording
    assert m[mod].role is Role.HOST and m.room.recording
    out = m.act(mod, A.LEAVE)  # only the resident is left
    assert ("recording_off", {"reason": "no_moderator"}) in [(e.kind, e.detail) for e in out.events]
    assert not m.room.recording
    # A call that empties (everyone timed out) stops it too.
    m, host, mod, r = recording_room()
    m.act(host, A.RECORD, value=True)
    for pid in (host, mod, r):
        m.disconnect(pid, f"ch-{m[pid].name}")
    m.now += LIMITS.reconnect_grace + 1
    out = m.expire()
    assert not m.room.participants and not m.room.recording
    assert [e.detail for e in out.events if e.kind == "recording_off"] == [{"reason": "empty"}]


def test_someone_away_does_not_stop_recording():
    m, host, mod, r = recording_room()
    m.act(host, A.RECORD, value=True)
    m.disconnect(host, "ch-h")
    m.disconnect(mod, "ch-mod")
    m.now += 10
    m.expire()
    assert m.room.recording  # within the grace: they keep their place
    m.reconnect(host, "user:h", "ch-back", "tab-h")
    assert m.room.recording


# --- The virtual queue ---------------------------------------------------------------


def consultation(n: int, limits: Limits = LIMITS, kind=Kind.CONSULTATION):
    m = Meeting(kind, limits)
    host = m.join("urzednik", host=True)
    residents = []
    for i in range(n):
        m.now += 1
        residents.append(m.join(f"r{i}"))
    return m, host, residents


def test_tickets_in_arrival_order_and_positions():
    m, _host, residents = consultation(4)
    tickets = [m[r].ticket for r in residents]
    assert tickets == sorted(tickets) and len(set(tickets)) == 4
    assert m.queued() == residents
    for position, r in enumerate(residents, 1):
        q = m.view(r)["queue"]
        assert (q["position"], q["ticket"], q["waiting"]) == (position, m[r].ticket, 4)


def test_estimate_default_before_any_service():
    limits = Limits(service_default=300)
    m, _host, residents = consultation(3, limits)
    assert [m.view(r)["queue"]["estimate"] for r in residents] == [0, 300, 600]


def test_estimate_counts_what_is_left_of_the_current_service():
    limits = Limits(service_default=300)
    m, host, residents = consultation(3, limits)
    m.act(host, A.CALL_NEXT)  # r0 in, served since now
    start = m.now
    m.now += 120
    assert [m.view(r)["queue"]["estimate"] for r in residents[1:]] == [180, 480]
    m.now = start + 1000  # longer than expected: nothing left of it, not negative
    assert [m.view(r)["queue"]["estimate"] for r in residents[1:]] == [0, 300]


def test_estimate_is_median_of_the_last_services():
    limits = Limits(service_default=999, service_window=3)
    m, host, residents = consultation(7, limits)
    durations = [100, 400, 200, 50, 60]
    m.act(host, A.CALL_NEXT)
    for d in durations:
        m.now += d
        m.act(host, A.CALL_NEXT)  # serves the one in, calls the next
    assert m.room.service_times[-5:] == durations
    last = durations[-3:]
    assert rules.service_estimate(m.room, limits) == statistics.median(last) == 60
    assert m.view(host)["estimate"] == 60
    # Even count: the mean of the two middle ones.
    room = msgspec.structs.replace(m.room, service_times=[10, 40, 30, 20])
    assert rules.service_estimate(room, Limits(service_window=4)) == 25
    # The last resident waits: rest of the current service (none yet) + 0.
    (last_one,) = m.queued()
    assert m.view(last_one)["queue"]["estimate"] == 60
    assert rules.estimated_wait(m.room, 3, now=m.now, limits=limits) == 60 + 2 * 60


def test_call_next_serves_and_admits_the_head():
    m, host, (a, b, c) = consultation(3)
    out = m.act(host, A.CALL_NEXT)
    assert m[a].status is Status.ADMITTED and m.queued() == [b, c]
    assert m.room.serving_since == m.now and m.room.service_times == []
    assert [e.kind for e in out.events] == ["admitted"] and out.events[0].to == a
    m.now += 42
    out = m.act(host, A.CALL_NEXT)
    assert a not in m.room.participants
    assert m.room.service_times == [42.0]
    left = next(e for e in out.events if e.kind == "left")
    assert (left.pid, left.detail["reason"], left.to) == (a, "served", a)
    assert m[b].status is Status.ADMITTED and m.queued() == [c]
    assert m.view(c)["queue"]["position"] == 1
    m.now += 10
    m.act(host, A.CALL_NEXT)
    m.now += 10
    m.act(host, A.CALL_NEXT)  # serves c; nobody is left to call
    assert m.residents() == [] and m.room.serving_since is None
    assert m.room.service_times == [42.0, 10.0, 10.0]
    assert m.refused(host, A.CALL_NEXT).reason == "queue_empty"


def test_companions_beside_the_resident_and_call_max():
    m, host, (a, b, c, d) = consultation(4, Limits(call_max=2))
    m.act(host, A.CALL_NEXT)
    m.act(host, A.ADMIT, c)  # a companion, out of turn
    assert set(m.residents()) == {a, c}
    refused = m.refused(host, A.ADMIT, b)
    assert (refused.code, refused.reason) == ("full", "call_full")
    assert m.refused(host, A.ADMIT, a).reason == "already_admitted"
    m.now += 30
    m.act(host, A.CALL_NEXT)  # both served together: one service
    assert m.residents() == [b] and m.room.service_times == [30.0]
    assert m.queued() == [d]


def test_send_back_returns_to_the_front_with_the_older_ticket():
    m, host, (a, b, c) = consultation(3)
    m.act(host, A.CALL_NEXT)
    ticket = m[a].ticket
    m.now += 5
    out = m.act(host, A.SEND_BACK, a)
    assert m[a].status is Status.QUEUED and m[a].ticket == ticket
    assert m.queued() == [a, b, c] and m.view(a)["queue"]["position"] == 1
    assert any(e.kind == "sent_back" and e.to == a for e in out.events)
    assert m.room.serving_since is None and m.residents() == []
    m.act(host, A.CALL_NEXT)
    assert m[a].status is Status.ADMITTED
    assert m.refused(host, A.SEND_BACK, b).reason == "not_admitted_target"


def test_deny_removes_from_the_queue_and_marks_a_return():
    m, host, (a, b) = consultation(2)
    out = m.act(host, A.DENY, a)
    assert a not in m.room.participants and "user:r0" in m.room.banned
    assert out.events[0].detail["reason"] == "denied" and out.events[0].to == a
    assert m.queued() == [b]
    back = m.join("r0")
    assert m[back].returning and m[back].status is Status.QUEUED
    assert m.queued() == [b, back]  # a new ticket: at the back
    assert m.view(host)["queue"][1]["returning"] is True
    m.act(host, A.ADMIT, back)
    assert not m[back].returning and "user:r0" not in m.room.banned
    assert m.refused(host, A.DENY, back).reason == "not_waiting"


@pytest.mark.parametrize("kind", list(Kind))
def test_removed_comes_back_only_through_the_queue(kind):
    m = Meeting(kind, invited=["user:a", "user:b"])
    host = m.join("h", host=True)
    a = m.join("a", staff=True)
    if m[a].status is Status.QUEUED:
        m.act(host, A.ADMIT, a)
    m.now += 7
    out = m.act(host, A.REMOVE, a)
    assert a not in m.room.participants
    assert out.events[0].detail["reason"] == "removed"
    if kind in (Kind.CONSULTATION, Kind.PARENT_SLOT):
        assert m.room.service_times == [7.0]
    again = m.join("a", staff=True)
    assert m[again].status is Status.QUEUED and m[again].returning
    assert m.refused(again, A.AUDIO, value=True).reason == "not_admitted"
    m.act(host, A.ADMIT, again)
    assert m[again].status is Status.ADMITTED and not m[again].returning
    assert m.room.banned == []
    # Someone else who was never removed goes straight in (non-queued kinds).
    other = m.join("b", staff=True)
    assert m[other].returning is False


@pytest.mark.parametrize("kind", list(Kind))
def test_a_removed_moderator_also_comes_back_through_the_queue(kind):
    m = Meeting(kind, moderators=["user:mod"])
    host = m.join("h", host=True)
    mod = m.join("mod", staff=True)
    assert m[mod].role is Role.MODERATOR and m[mod].status is Status.ADMITTED
    m.act(host, A.REMOVE, mod)
    again = m.join("mod", staff=True)
    assert m[again].status is Status.QUEUED and m[again].returning
    m.act(host, A.ADMIT, again)
    assert m[again].role is Role.MODERATOR and m[again].status is Status.ADMITTED


def test_after_a_guest_is_removed_new_guests_knock_in_a_public_meeting():
    """A guest is only a browser session: a removed guest could come back as a
    new one. So once a guest was removed, new guests wait to be let in."""
    m = Meeting(Kind.PUBLIC)
    host = m.join("h", host=True)
    first = m.join("g1", auth=False)
    assert m[first].status is Status.ADMITTED
    m.act(host, A.REMOVE, first)
    assert m.room.guests_knock
    new_guest = m.join("g2", auth=False)
    assert m[new_guest].status is Status.QUEUED and not m[new_guest].returning
    # Signed-in participants are known people: they still go straight in.
    account = m.join("resident")
    assert m[account].status is Status.ADMITTED
    m.act(host, A.ADMIT, new_guest)
    assert m[new_guest].status is Status.ADMITTED


def test_removing_a_signed_in_participant_also_makes_guests_knock():
    """The removed resident could come back as a guest in a private window."""
    m = Meeting(Kind.PUBLIC)
    host = m.join("h", host=True)
    account = m.join("resident")
    m.act(host, A.REMOVE, account)
    assert m.room.guests_knock
    assert m[m.join("g", auth=False)].status is Status.QUEUED


def test_call_next_refuses_a_stale_view_of_the_call():
    """A double click on "call the next person" must not end the consultation
    of the resident the first click let in."""
    m, host, (a, b) = consultation(2)
    m.act(host, A.CALL_NEXT, value=[])
    assert m.residents() == [a]
    refused = m.refused(host, A.CALL_NEXT, value=[])  # the second click saw nobody in the call
    assert refused.code == "conflict" and refused.reason == "call_next_stale"
    assert m.residents() == [a]
    m.act(host, A.CALL_NEXT, value=[a])
    assert m.residents() == [b]


def test_a_mute_is_counted_so_that_a_lost_notice_loses_no_mute():
    m, host, (a,) = consultation(1)
    m.act(host, A.CALL_NEXT)
    m.act(a, A.AUDIO, value=True)
    m.act(host, A.MUTE, a, {"audio": True})
    m.act(host, A.MUTE, a, {"video": True})
    assert (m[a].audio_mutes, m[a].video_mutes) == (1, 1)
    assert m.view(a)["participants"][-1]["audio_mutes"] == 1


def test_removed_queued_resident_and_leaving_keep_the_queue_contiguous():
    m, host, (a, b, c, d) = consultation(4)
    m.act(host, A.REMOVE, b)
    m.act(c, A.LEAVE)
    assert m.queued() == [a, d]
    assert [m.view(x)["queue"]["position"] for x in (a, d)] == [1, 2]


# --- Reconnect --------------------------------------------------------------------------


def test_reconnect_within_grace_keeps_role_status_and_place():
    m, host, (a, b, c) = consultation(3)
    m.act(host, A.CALL_NEXT)
    m.act(a, A.AUDIO, value=True)
    m.disconnect(b, "ch-r1")
    m.disconnect(a, "ch-r0")
    assert not m[b].connected and m[b].channel is None
    m.now += LIMITS.reconnect_grace - 1
    assert m.expire().events == []
    out = m.reconnect(b, "user:r1", "ch-new", "tab-r1")
    assert out.pid == b and m[b].connected and m[b].channel == "ch-new"
    assert m[b].status is Status.QUEUED and m.queued() == [b, c]
    assert m.view(b)["queue"]["position"] == 1
    epoch = m[a].epoch
    m.reconnect(a, "user:r0", "ch-a2", "tab-r0")  # same page: keeps its media
    assert m[a].status is Status.ADMITTED and m[a].role is Role.PARTICIPANT and m[a].audio
    assert m[a].epoch == epoch + 1
    m.reconnect(a, "user:r0", "ch-a3", "tab-new")  # a new page sends nothing yet
    assert not m[a].audio
    h = m.disconnect(host, "ch-urzednik")
    assert h.events[0].kind == "away"
    m.reconnect(host, "user:urzednik", "ch-h2", "tab")
    assert m[host].role is Role.HOST


def test_reconnect_refused_for_the_wrong_principal_or_unknown_pid():
    m, _host, (a,) = consultation(1)
    m.disconnect(a, "ch-r0")
    with pytest.raises(Refused) as info:
        rules.reconnect(
            m.room, a, "user:intruz", channel="x", instance="i", now=m.now, limits=LIMITS
        )
    assert info.value.code == "resume_expired"
    with pytest.raises(Refused) as info:
        rules.reconnect(
            m.room, "pnope", "user:r0", channel="x", instance="i", now=m.now, limits=LIMITS
        )
    assert info.value.code == "resume_expired"


def test_after_the_grace_they_are_gone():
    m, host, (a, b) = consultation(2)
    m.act(host, A.CALL_NEXT)
    start = m.now
    m.disconnect(a, "ch-r0")
    m.now += LIMITS.reconnect_grace + 1
    with pytest.raises(Refused) as info:  # too late, even before expire() ran
        rules.reconnect(m.room, a, "user:r0", channel="x", instance="i", now=m.now, limits=LIMITS)
    assert info.value.code == "resume_expired"
    out = m.expire()
    assert a not in m.room.participants
    assert [(e.kind, e.pid, e.detail["reason"]) for e in out.events] == [("left", a, "timed_out")]
    assert m.room.service_times == [m.now - start]  # their service ended
    assert b in m.room.participants and host in m.room.participants  # leases still running
    with pytest.raises(Refused) as info:
        rules.reconnect(m.room, a, "user:r0", channel="x", instance="i", now=m.now, limits=LIMITS)
    assert info.value.code == "resume_expired"


def test_connected_lease_expires_without_heartbeats_and_renew_extends_it():
    m, host, (a,) = consultation(1)
    m.now += LIMITS.lease - 10
    m.room = rules.renew(m.room, host, "ch-urzednik", now=m.now, limits=LIMITS).room
    m.room = rules.renew(m.room, a, "ch-stale", now=m.now, limits=LIMITS).room  # not theirs
    m.now += 20
    m.expire()
    assert host in m.room.participants and a not in m.room.participants


def test_disconnect_from_a_stale_channel_changes_nothing():
    m, _host, (a,) = consultation(1)
    m.reconnect(a, "user:r0", "ch-new", "tab-r0")
    before = snap(m.room)
    out = rules.disconnect(m.room, a, "ch-r0", now=m.now + 5, limits=LIMITS)
    assert snap(out.room) == before and out.events == []
    out = rules.disconnect(m.room, "pgone", "ch-r0", now=m.now + 5, limits=LIMITS)
    assert snap(out.room) == before and out.events == []
    assert m[a].connected and m[a].channel == "ch-new"


def test_host_leaving_passes_host_to_the_longest_present_moderator():
    m = Meeting(Kind.PUBLIC, moderators=["user:m1", "user:m2"])
    host = m.join("h", host=True)
    m.now += 1
    first = m.join("m1")
    m.now += 1
    second = m.join("m2")
    out = m.act(host, A.LEAVE)
    assert m[first].role is Role.HOST and m[second].role is Role.MODERATOR
    assert any(e.kind == "host" and e.to == first for e in out.events)


def test_host_timing_out_with_the_first_moderator_passes_host_to_one_who_stays():
    m = Meeting(Kind.PUBLIC, moderators=["user:m1", "user:m2"])
    host = m.join("h", host=True)
    m.now += 1
    first = m.join("m1")
    m.now += 1
    second = m.join("m2")
    m.disconnect(host, "ch-h")
    m.disconnect(first, "ch-m1")
    m.room = rules.renew(m.room, second, "ch-m2", now=m.now + 40, limits=LIMITS).room
    m.now += LIMITS.reconnect_grace + 1
    m.expire()
    assert list(m.room.participants) == [second]
    assert m[second].role is Role.HOST


def test_no_moderator_no_host_and_a_new_host_claim_takes_it():
    m, host, (_a,) = consultation(1)
    m.act(host, A.LEAVE)
    assert not any(p.role is Role.HOST for p in m.room.participants.values())
    assert m[m.join("urzednik", host=True)].role is Role.HOST


# --- The floor (public consultation) ----------------------------------------------------


def public_room():
    m = Meeting(Kind.PUBLIC, moderators=["user:mod"])
    host = m.join("h", host=True)
    mod = m.join("mod")
    part = m.join("p")
    guest = m.join("g", auth=False)
    return m, host, mod, part, guest


@pytest.mark.parametrize("who", ["p", "g"])
def test_no_media_without_the_floor(who):
    m, host, mod, part, guest = public_room()
    pid = part if who == "p" else guest
    for action in OWN_MEDIA:
        refused = m.refused(pid, action, value=True)
        assert (refused.code, refused.reason) == ("forbidden", "needs_floor")
        m.act(pid, action, value=False)  # turning off is always fine
    m.act(pid, A.HAND, value=True)
    assert m[pid].hand == m.now
    m.now += 3
    out = m.act(mod, A.FLOOR, pid, True)
    assert m[pid].floor and m[pid].hand is None
    assert out.events[0].kind == "floor_given" and out.events[0].to == pid
    m.act(pid, A.AUDIO, value=True)
    m.act(pid, A.VIDEO, value=True)
    m.act(pid, A.SCREEN, value=True)
    out = m.act(host, A.FLOOR, pid, False)
    assert out.events[0].kind == "floor_taken"
    assert not (m[pid].floor or m[pid].audio or m[pid].video or m[pid].screen)
    assert m.refused(pid, A.AUDIO, value=True).reason == "needs_floor"


def test_moderators_speak_without_the_floor_and_get_none():
    m, host, mod, _part, _guest = public_room()
    m.act(mod, A.AUDIO, value=True)
    m.act(host, A.VIDEO, value=True)
    assert m.refused(host, A.FLOOR, mod, True).reason == "no_floor_for_role"
    viewer = m.join("v", watch=True)
    assert m.refused(host, A.FLOOR, viewer, True).reason == "no_floor_for_role"


def test_hand_raise_and_lower():
    m, _host, _mod, part, _guest = public_room()
    out = m.act(part, A.HAND, value=True)
    assert out.events[0].kind == "hand_raised" and m[part].hand == m.now
    out = m.act(part, A.HAND, value=False)
    assert out.events[0].kind == "hand_lowered" and m[part].hand is None


def test_briefing_everyone_speaks():
    m = Meeting(Kind.BRIEFING, invited=["user:a"])
    m.join("h", host=True)
    a = m.join("a", staff=True)
    m.act(a, A.AUDIO, value=True)
    m.act(a, A.VIDEO, value=True)
    assert m[a].audio and m[a].video


def test_mute_defaults_to_audio_and_video_also_stops_the_screen():
    m, host, _mod, part, _guest = public_room()
    m.act(host, A.FLOOR, part, True)
    for action in OWN_MEDIA:
        m.act(part, action, value=True)
    m.act(host, A.MUTE, part)
    assert not m[part].audio and m[part].video
    out = m.act(host, A.MUTE, part, {"video": True})
    assert not m[part].video and not m[part].screen
    assert out.events[0].detail == {"video": True}
    assert m.refused(host, A.MUTE, part, {}).reason == "nothing_to_mute"


# --- What each one sees -------------------------------------------------------------------


def test_queued_see_only_their_own_ticket():
    m, host, residents = consultation(3)
    m.act(host, A.CALL_NEXT)
    inside, *waiting = residents
    for position, r in enumerate(waiting, 1):
        v = m.view(r)
        assert v["status"] == "queued" and set(v["queue"]) == {
            "ticket",
            "position",
            "waiting",
            "estimate",
        }
        assert v["queue"]["position"] == position and v["queue"]["ticket"] == m[r].ticket
        assert "participants" not in v
        text = json.dumps(v)
        for other in m.room.participants.values():
            if other.pid != r:
                assert other.name not in text and other.pid not in text


@pytest.mark.parametrize("kind", [Kind.CONSULTATION, Kind.PUBLIC])
def test_hosts_and_moderators_see_the_queue_with_names(kind):
    m, who = full_room(kind)
    for key in ("host", "moderator"):
        v = m.view(who[key])
        assert [(q["name"], q["position"], q["pid"]) for q in v["queue"]] == [
            ("jan", 1, who["queued"])
        ]
        assert isinstance(v["estimate"], int)
    v = m.view(who["participant"])
    assert "queue" not in v and "estimate" not in v
    assert "jan" not in json.dumps(v)


def test_admitted_see_each_other_and_exactly_one_side_is_polite():
    m, who = full_room(Kind.PUBLIC)
    admitted = [p.pid for p in m.room.participants.values() if p.status is Status.ADMITTED]
    views = {pid: {e["pid"]: e for e in m.view(pid)["participants"]} for pid in admitted}
    for pid in admitted:
        assert set(views[pid]) == set(admitted)
        assert who["queued"] not in views[pid]
    for a, b in itertools.combinations(admitted, 2):
        assert views[a][b]["polite"] != views[b][a]["polite"]
        assert rules.polite(a, b) == views[a][b]["polite"]


def test_view_of_someone_not_there():
    m, _who = full_room(Kind.CONSULTATION)
    v = m.view("pnobody")
    assert v["you"] == "pnobody" and "role" not in v and "participants" not in v
    assert v["topology"] == "mesh"


# --- A property: the queue stays a queue -----------------------------------------------

# Weighted towards joins and admissions, so that queues grow and calls fill up.
OP_NAMES = ["join"] * 4 + ["admit"] * 3 + ["call_next"] * 2 + ["send_back"] * 2
OP_NAMES += ["leave", "deny", "remove", "away", "back", "tick", "record"]
OPS = st.tuples(st.sampled_from(OP_NAMES), st.integers(0, 30))


def check_invariants(m: Meeting, arrival: dict[str, int]) -> None:
    line = rules.queue(m.room)
    assert [p.ticket for p in line] == sorted(p.ticket for p in line)
    order = [arrival[p.pid] for p in line]
    assert order == sorted(order), "queue order is not arrival order"
    positions = [m.view(p.pid)["queue"]["position"] for p in line]
    assert positions == list(range(1, len(line) + 1))
    estimates = [m.view(p.pid)["queue"]["estimate"] for p in line]
    assert estimates == sorted(estimates) and all(e >= 0 for e in estimates)
    residents = m.residents()
    assert len(residents) <= m.limits.call_max
    admitted = [p for p in m.room.participants.values() if p.status is Status.ADMITTED]
    assert len(admitted) <= rules.capacity(m.room, m.limits)
    # Past the mesh's size the call is through the forwarding unit; an empty call is not.
    if len(admitted) > m.limits.mesh_max:
        assert m.room.sfu
    if not admitted:
        assert not m.room.sfu
    assert (m.room.serving_since is not None) == bool(residents)
    assert all(t >= 0 for t in m.room.service_times)
    hosts = [p for p in m.room.participants.values() if p.role is Role.HOST]
    assert len(hosts) <= 1
    # Recording: only through the unit, never unattended, and everyone is told.
    assert (m.room.recording_since is not None) == m.room.recording
    if m.room.recording:
        assert rules.topology(m.room, m.limits) == "sfu"
        assert any(p.role in (Role.HOST, Role.MODERATOR) for p in admitted)
        assert all(m.view(p.pid)["recording"] for p in m.room.participants.values())


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from([Kind.CONSULTATION, Kind.PARENT_SLOT]),
    call_max=st.integers(1, 3),
    ops=st.lists(OPS, min_size=5, max_size=50),
)
def test_queue_property(kind, call_max, ops):
    m = Meeting(kind, Limits(call_max=call_max, service_default=100, mesh_max=2))
    host = m.join("h", host=True)
    arrival = {host: 0}
    channels: dict[str, str] = {host: "ch-h"}
    for i in range(3):  # a queue to start with
        pid = m.join(f"first{i}", channel=f"ch-first{i}")
        arrival[pid] = -3 + i
        channels[pid] = f"ch-first{i}"
    for n, (op, arg) in enumerate(ops, 1):
        people = sorted(
            (p for p in m.room.participants.values() if p.pid != host), key=lambda p: p.ticket
        )
        someone = people[arg % len(people)].pid if people else None
        try:
            if op == "join":
                pid = m.join(f"r{arg}", channel=f"ch-{n}")
                arrival[pid] = n
                channels[pid] = f"ch-{n}"
            elif op == "tick":
                m.now += arg
                m.room = rules.renew(m.room, host, channels[host], now=m.now, limits=m.limits).room
                m.expire()
            elif op == "call_next":
                m.act(host, A.CALL_NEXT)
            elif op == "record":
                m.act(host, A.RECORD, value=not m.room.recording)
            elif someone is None:
                continue
            elif op == "leave":
                m.act(someone, A.LEAVE)
            elif op == "away":
                m.disconnect(someone, channels[someone])
            elif op == "back":
                m.reconnect(someone, m[someone].principal, f"ch-b{n}", "tab")
                channels[someone] = f"ch-b{n}"
            else:
                action = {
                    "send_back": A.SEND_BACK,
                    "admit": A.ADMIT,
                    "deny": A.DENY,
                    "remove": A.REMOVE,
                }[op]
                m.act(host, action, someone)
            event(f"{op}: done")
        except Refused as refused:
            # The host may do all of these: only the state can stand in the way.
            assert refused.code in ("conflict", "full"), refused.reason
            event(f"{op}: {refused.reason}")
        check_invariants(m, arrival)
    event(f"queue at the end: {min(len(m.queued()), 4)}, in call: {len(m.residents())}")
