"""Accounts. Roles are Django groups named after hub.roles.Role values."""

from django.contrib.auth.models import AbstractUser


class User(AbstractUser):
    """The hub's account model (a custom model from day one, as Django advises)."""

    class Meta:
        db_table = "hub_user"
