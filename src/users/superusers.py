"""Staff accounts created from the environment, for set-ups that cannot answer prompts."""

from __future__ import annotations

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction

from event_log import publish
from users.events import user_created_event
from users.models import User
from users.use_cases.create_user import refuse_control_characters


class SuperuserError(ValueError):
    """The given account cannot be created as asked; nothing was written."""


def ensure_superuser(
    *, email: str, password: str, first_name: str = "", last_name: str = ""
) -> bool:
    """Create a superuser with this e-mail unless a user with it (any case) exists.

    Returns True when it created one, and then publishes its ``UserCreated`` in the
    same transaction. An existing user is left as it is, so a set-up
    may run this at every start. Raises :class:`SuperuserError` for an invalid
    e-mail, an empty password, a password the validators refuse
    (``AUTH_PASSWORD_VALIDATORS``: at least ``PASSWORD_MIN_LENGTH`` characters, not a
    common one) or a name with control characters, before anything is written.
    """
    email = User.objects.normalize_email(email.strip())
    try:
        validate_email(email)
    except ValidationError:
        raise SuperuserError(f"{email!r} is not a valid e-mail address") from None
    if not password:
        raise SuperuserError("the password is empty")
    first_name, last_name = first_name.strip(), last_name.strip()
    for field, value in (("first_name", first_name), ("last_name", last_name)):
        try:
            refuse_control_characters(value)
        except ValueError as exc:
            raise SuperuserError(f"{field} {exc}") from None
    candidate = User(email=email, first_name=first_name.strip(), last_name=last_name.strip())
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        raise SuperuserError("the password is refused: " + " ".join(exc.messages)) from None
    with transaction.atomic():
        if User.objects.filter(email__iexact=email).exists():
            return False
        user = User.objects.create_superuser(
            email, password, first_name=first_name, last_name=last_name
        )
        publish(user_created_event(user))
    return True
