"""Events the users app publishes to the event log."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from event_log import Event
from event_log.events import Personal

if TYPE_CHECKING:
    from users.models import User


class UserCreated(Event):
    subject = ("user", "user_id")

    user_id: int
    email: Annotated[str, Personal]
    first_name: Annotated[str, Personal]
    last_name: Annotated[str, Personal]


def user_created_event(user: User) -> UserCreated:
    """The ``UserCreated`` of a saved user: the one event every creation path (the
    API's use case, the admin, ``createsuperuser``, ``ensure_superuser``) publishes,
    so the audit log holds every account."""
    return UserCreated(
        user_id=user.pk, email=user.email, first_name=user.first_name, last_name=user.last_name
    )
