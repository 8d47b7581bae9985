"""The roles of the hub (ARCHITECTURE.md §5) and how an account holds them.

A role is a Django group whose name is the role's value, so an administrator
can grant one in the admin without code. Guests and viewers have no account.
"""

from __future__ import annotations

from enum import StrEnum

from django.utils.translation import gettext_lazy as _


class Role(StrEnum):
    RESIDENT = "resident"
    PARENT = "parent"
    TEACHER = "teacher"
    CLERK = "clerk"
    COUNCILLOR = "councillor"
    CHAIR = "chair"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def label(self) -> str:
        return str(ROLE_LABELS[self])


ROLE_LABELS = {
    Role.RESIDENT: _("resident"),
    Role.PARENT: _("parent"),
    Role.TEACHER: _("teacher"),
    Role.CLERK: _("clerk"),
    Role.COUNCILLOR: _("councillor"),
    Role.CHAIR: _("council chair"),
    Role.OPERATOR: _("crisis operator"),
    Role.ADMIN: _("administrator"),
}


def roles_of(user) -> frozenset[Role]:
    """The roles an account holds; an anonymous user holds none."""
    if not getattr(user, "is_authenticated", False):
        return frozenset()
    names = set(user.groups.values_list("name", flat=True))
    roles = {role for role in Role if role.value in names}
    if user.is_superuser:
        roles.add(Role.ADMIN)
    return frozenset(roles)


def has_role(user, role: Role) -> bool:
    return role in roles_of(user)
