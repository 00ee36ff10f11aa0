from __future__ import annotations

from datetime import datetime

import structlog
from django.db import IntegrityError, transaction
from pydantic import BaseModel, EmailStr, Field

from core.use_case import UseCase, UseCaseRequest, UseCaseResponse
from event_log import publish
from users.events import UserCreated
from users.models import User

logger = structlog.get_logger(__name__)

DUPLICATE_EMAIL = "User with this email already exists"


class CreateUserRequest(UseCaseRequest):
    email: EmailStr = Field(max_length=254)
    first_name: str = Field(default="", max_length=150)
    last_name: str = Field(default="", max_length=150)


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
        publish(
            UserCreated(
                user_id=user.pk,
                email=user.email,
                first_name=user.first_name,
                last_name=user.last_name,
            )
        )
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
