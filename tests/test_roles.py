"""hub.roles: which roles an account holds."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Group
from django.utils import translation

from hub.roles import Role, has_role, roles_of


def test_anonymous_user_holds_no_role():
    assert roles_of(AnonymousUser()) == frozenset()
    assert not has_role(AnonymousUser(), Role.RESIDENT)


def test_object_without_authentication_holds_no_role():
    assert roles_of(None) == frozenset()


@pytest.mark.django_db
def test_account_without_groups_holds_no_role():
    user = get_user_model().objects.create_user("bez-roli")

    assert roles_of(user) == frozenset()


@pytest.mark.django_db
def test_group_member_holds_the_roles_named_by_its_groups():
    user = get_user_model().objects.create_user("radna")
    user.groups.add(Group.objects.create(name=Role.COUNCILLOR.value))
    user.groups.add(Group.objects.create(name=Role.PARENT.value))
    user.groups.add(Group.objects.create(name="not-a-role"))

    assert roles_of(user) == {Role.COUNCILLOR, Role.PARENT}
    assert has_role(user, Role.COUNCILLOR)
    assert not has_role(user, Role.CHAIR)
    assert not has_role(user, Role.ADMIN)


@pytest.mark.django_db
def test_superuser_holds_admin_without_the_group():
    user = get_user_model().objects.create_superuser("root", password="x-long-password")

    assert roles_of(user) == {Role.ADMIN}


@pytest.mark.django_db
def test_superuser_keeps_its_group_roles():
    user = get_user_model().objects.create_superuser("root", password="x-long-password")
    user.groups.add(Group.objects.create(name=Role.OPERATOR.value))

    assert roles_of(user) == {Role.ADMIN, Role.OPERATOR}


def test_every_role_has_a_polish_and_an_english_label():
    with translation.override("pl"):
        polish = {role: role.label for role in Role}
    with translation.override("en"):
        english = {role: role.label for role in Role}

    assert polish[Role.CLERK] == "urzędnik"
    assert polish[Role.CHAIR] == "przewodniczący rady"
    assert english[Role.CLERK] == "clerk"
    assert all(polish.values()) and all(english.values())
