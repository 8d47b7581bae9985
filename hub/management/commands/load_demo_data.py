"""Create one demo account per role, for trying the hub on a local machine.

The passwords are documented (``<username>-demo``) and therefore public, which
is why the command refuses to run in production unless told explicitly.
Running it again restores the accounts to their documented state and changes
nothing when they are already in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from hub.roles import Role


@dataclass(frozen=True)
class DemoAccount:
    username: str
    role: Role
    first_name: str
    last_name: str

    @property
    def email(self) -> str:
        # .invalid is reserved (RFC 2606 §2): mail to it can never be delivered.
        return f"{self.username}@example.invalid"

    @property
    def password(self) -> str:
        return f"{self.username}-demo"

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


DEMO_ACCOUNTS: tuple[DemoAccount, ...] = (
    DemoAccount("mieszkaniec", Role.RESIDENT, "Anna", "Kowalska"),
    DemoAccount("rodzic", Role.PARENT, "Tomasz", "Nowak"),
    DemoAccount("nauczyciel", Role.TEACHER, "Katarzyna", "Wiśniewska"),
    DemoAccount("urzednik", Role.CLERK, "Piotr", "Wójcik"),
    DemoAccount("radny", Role.COUNCILLOR, "Małgorzata", "Kamińska"),
    DemoAccount("przewodniczacy", Role.CHAIR, "Krzysztof", "Lewandowski"),
    DemoAccount("operator", Role.OPERATOR, "Agnieszka", "Zielińska"),
    DemoAccount("admin", Role.ADMIN, "Marek", "Szymański"),
)


class Command(BaseCommand):
    help = (
        "Create one demo account per role (username/password: <username>/<username>-demo). "
        "Local use only: refuses to run when settings.PRODUCTION is True."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--allow-production",
            action="store_true",
            help="Run even though settings.PRODUCTION is True (the passwords are public).",
        )

    def handle(self, *args, allow_production: bool = False, **options):
        if getattr(settings, "PRODUCTION", False) and not allow_production:
            raise CommandError(
                "Refusing to create demo accounts in production (HUB_ENV=production): "
                "their passwords are published. Pass --allow-production if you really mean it."
            )

        with transaction.atomic():
            outcomes = [(account, self._ensure_account(account)) for account in DEMO_ACCOUNTS]

        self._print_table(outcomes)

        from signaling.demo import ensure_demo_meetings

        with transaction.atomic():
            meetings = ensure_demo_meetings()
        self.stdout.write("")
        self.stdout.write("Demo meetings (the host link makes whoever opens it the host):")
        for meeting in meetings:
            self.stdout.write(f"  {meeting['title']} [{meeting['kind']}]")
            self.stdout.write(f"    guest: {meeting['guest_link']}")
            self.stdout.write(f"    host:  {meeting['host_link']}")

    def _ensure_account(self, account: DemoAccount) -> str:
        """Bring one account to its documented state; say whether it was created,
        updated or already right."""
        group, group_created = Group.objects.get_or_create(name=account.role.value)
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(username=account.username)

        wanted = {
            "first_name": account.first_name,
            "last_name": account.last_name,
            "email": account.email,
            "is_active": True,
            "is_staff": account.is_admin,
            "is_superuser": account.is_admin,
        }
        changed = [field for field, value in wanted.items() if getattr(user, field) != value]
        for field in changed:
            setattr(user, field, wanted[field])
        # check_password first: setting it again would re-salt the hash and so
        # change the row on every run.
        if created or not user.check_password(account.password):
            user.set_password(account.password)
            changed.append("password")
        if changed:
            user.save()

        in_group = user.groups.filter(pk=group.pk).exists()
        if not in_group:
            user.groups.add(group)

        if created:
            return "created"
        if changed or not in_group or group_created:
            return "updated"
        return "unchanged"

    def _print_table(self, outcomes: list[tuple[DemoAccount, str]]) -> None:
        header = ("username", "role", "password", "account")
        rows = [
            (account.username, account.role.value, account.password, outcome)
            for account, outcome in outcomes
        ]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

        def line(cells) -> str:
            return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

        self.stdout.write(line(header).rstrip())
        self.stdout.write("  ".join("-" * width for width in widths))
        for row in rows:
            self.stdout.write(line(row).rstrip())
        self.stdout.write(
            self.style.WARNING("Demo accounts with public passwords: for local use only.")
        )
