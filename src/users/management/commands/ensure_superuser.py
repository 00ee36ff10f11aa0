from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from event_log.envelope import CommandActorMixin
from users.superusers import SuperuserError, ensure_superuser


class Command(CommandActorMixin, BaseCommand):
    help = (
        "Create a superuser without prompts from DJANGO_SUPERUSER_EMAIL and "
        "DJANGO_SUPERUSER_PASSWORD (DJANGO_SUPERUSER_FIRST_NAME and "
        "DJANGO_SUPERUSER_LAST_NAME optional); does nothing if that user exists."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "").strip()
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD", "")
        for name, value in (
            ("DJANGO_SUPERUSER_EMAIL", email),
            ("DJANGO_SUPERUSER_PASSWORD", password),
        ):
            if not value:
                raise CommandError(f"{name} is not set")
        try:
            created = ensure_superuser(
                email=email,
                password=password,
                first_name=os.environ.get("DJANGO_SUPERUSER_FIRST_NAME", ""),
                last_name=os.environ.get("DJANGO_SUPERUSER_LAST_NAME", ""),
            )
        except SuperuserError as exc:
            raise CommandError(f"cannot create the superuser: {exc}") from None
        self.stdout.write(f"superuser {email} {'created' if created else 'exists, left unchanged'}")
