"""Django's ``createsuperuser``, publishing ``UserCreated`` for the account it creates."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.management.commands import createsuperuser
from django.db import transaction
from django.db.models.signals import post_save

from event_log import publish
from event_log.envelope import CommandActorMixin
from users.events import user_created_event
from users.models import User


class Command(CommandActorMixin, createsuperuser.Command):
    help = f"{createsuperuser.Command.help} Publishes UserCreated for it."

    def handle(self, *args: Any, **options: Any) -> None:
        new_users: list[User] = []

        # Django's command saves through the manager and returns nothing: the user it
        # creates is taken from post_save, listened to only while this command runs.
        def receiver(sender: type[User], instance: User, created: bool, **kwargs: Any) -> None:
            if created:
                new_users.append(instance)

        with transaction.atomic(using=options["database"]):
            post_save.connect(receiver, sender=User, weak=False)
            try:
                super().handle(*args, **options)
            finally:
                post_save.disconnect(receiver, sender=User)
            publish(*(user_created_event(user) for user in new_users), using=options["database"])
