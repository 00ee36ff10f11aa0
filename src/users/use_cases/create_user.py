from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated

import structlog
from django.db import IntegrityError, transaction
from pydantic import AfterValidator, BaseModel, EmailStr, Field

from core.use_case import UseCase, UseCaseRequest, UseCaseResponse
from event_log import publish
from users.events import user_created_event
from users.models import User

logger = structlog.get_logger(__name__)

DUPLICATE_EMAIL = "User with this email already exists"

# Control characters (C0, DEL, C1: NUL, tab, newline, escape…) and lone surrogates:
# PostgreSQL refuses NUL and cannot encode a surrogate, and none belongs in a name.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs"})


def refuse_control_characters(value: str) -> str:
    """``value`` unchanged, or ``ValueError`` if it holds a control character or a lone
    surrogate (which PostgreSQL would refuse as a 500, or which has no place in text)."""
    for position, char in enumerate(value):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise ValueError(
                f"must not contain control characters (found U+{ord(char):04X} "
                f"at position {position})"
            )
    return value


PlainName = Annotated[str, Field(max_length=150), AfterValidator(refuse_control_characters)]


class CreateUserRequest(UseCaseRequest):
    email: EmailStr = Field(max_length=254)
    first_name: PlainName = ""
    last_name: PlainName = ""


class CreatedUser(BaseModel):
    id: int
    email: str
    first_name: str
    last_name: str
    is_active: bool
    created_at: datetime


class CreateUserResponse(UseCaseResponse[CreatedUser]):
    """``result`` is the created user; ``error`` is ``DUPLICATE_EMAIL`` when the
    address is taken (case-insensitively), and then ``result`` is None."""

    @property
    def user(self) -> CreatedUser | None:
        """The created user: a readable name for ``result``, not a second copy."""
        return self.result


class CreateUser(UseCase[CreateUserRequest, CreateUserResponse]):
    """Create a user and publish ``UserCreated`` in the same transaction."""

    def handle(self, request: CreateUserRequest) -> CreateUserResponse:
        email = User.objects.normalize_email(request.email)
        try:
            # The unique constraints (on the address and on its lower case) decide,
            # which also settles two concurrent requests for one address.
            with transaction.atomic():
                user = User.objects.create_user(
                    email=email, first_name=request.first_name, last_name=request.last_name
                )
        except IntegrityError:
            return CreateUserResponse(error=DUPLICATE_EMAIL)
        publish(user_created_event(user))
        logger.info("user_created", user_id=user.pk)
        return CreateUserResponse(
            result=CreatedUser(
                id=user.pk,
                email=user.email,
                first_name=user.first_name,
                last_name=user.last_name,
                is_active=user.is_active,
                created_at=user.created_at,
            )
        )
