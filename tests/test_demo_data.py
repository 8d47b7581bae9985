"""The load_demo_data command: one account per role, idempotent, never in production."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from hub.roles import Role, roles_of

pytestmark = pytest.mark.django_db

EXPECTED_ROLES = {
    "mieszkaniec": Role.RESIDENT,
    "rodzic": Role.PARENT,
    "nauczyciel": Role.TEACHER,
    "urzednik": Role.CLERK,
    "radny": Role.COUNCILLOR,
    "przewodniczacy": Role.CHAIR,
    "operator": Role.OPERATOR,
    "admin": Role.ADMIN,
}


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # The command hashes eight passwords per run; the production hasher is slow on purpose.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def load_demo_data(**options) -> str:
    out = StringIO()
    call_command("load_demo_data", stdout=out, **options)
    return out.getvalue()


def snapshot() -> list[tuple]:
    users = get_user_model().objects.order_by("username")
    return [
        (
            user.pk,
            user.username,
            user.password,
            user.first_name,
            user.last_name,
            user.email,
            user.is_staff,
            user.is_superuser,
            tuple(user.groups.order_by("name").values_list("name", flat=True)),
        )
        for user in users
    ] + [tuple(Group.objects.order_by("name").values_list("pk", "name"))]


def test_creates_one_account_per_role_in_its_group():
    load_demo_data()

    users = {user.username: user for user in get_user_model().objects.all()}
    assert set(users) == set(EXPECTED_ROLES)
    assert set(EXPECTED_ROLES.values()) == set(Role)
    for username, role in EXPECTED_ROLES.items():
        user = users[username]
        assert list(user.groups.values_list("name", flat=True)) == [role.value]
        assert role in roles_of(user)
        assert user.email == f"{username}@example.invalid"
        assert user.first_name and user.last_name
        assert user.is_active


def test_only_admin_is_staff_and_superuser():
    load_demo_data()

    staff = set(get_user_model().objects.filter(is_staff=True).values_list("username", flat=True))
    superusers = set(
        get_user_model().objects.filter(is_superuser=True).values_list("username", flat=True)
    )
    assert staff == {"admin"}
    assert superusers == {"admin"}


@pytest.mark.parametrize("username", sorted(EXPECTED_ROLES))
def test_each_account_signs_in_with_its_documented_password(username):
    load_demo_data()

    assert authenticate(username=username, password=f"{username}-demo") is not None
    assert authenticate(username=username, password="wrong") is None


def test_prints_username_role_and_password():
    output = load_demo_data()

    for username, role in EXPECTED_ROLES.items():
        row = next(line for line in output.splitlines() if line.startswith(f"{username} "))
        assert role.value in row.split()
        assert f"{username}-demo" in row.split()


def test_running_twice_changes_nothing():
    load_demo_data()
    before = snapshot()

    output = load_demo_data()

    assert snapshot() == before
    assert "created" not in output
    assert "updated" not in output


def test_running_again_repairs_a_changed_account():
    load_demo_data()
    user = get_user_model().objects.get(username="urzednik")
    user.set_password("something-else")
    user.is_staff = True
    user.save()
    user.groups.clear()

    load_demo_data()

    user.refresh_from_db()
    assert not user.is_staff
    assert list(user.groups.values_list("name", flat=True)) == ["clerk"]
    assert authenticate(username="urzednik", password="urzednik-demo") == user


def test_refuses_in_production(settings):
    settings.PRODUCTION = True

    with pytest.raises(CommandError, match="production"):
        load_demo_data()

    assert not get_user_model().objects.exists()


def test_runs_in_production_when_explicitly_allowed(settings):
    settings.PRODUCTION = True

    load_demo_data(allow_production=True)

    assert get_user_model().objects.count() == len(EXPECTED_ROLES)
