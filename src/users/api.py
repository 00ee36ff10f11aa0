"""HTTP adapter for the users app: parse, call one use case, shape the answer."""

from __future__ import annotations

import structlog
from django.conf import settings
from django.http import HttpRequest
from ninja import Router, Status
from ninja.throttling import AnonRateThrottle
from pydantic import BaseModel

from users.use_cases import CreateUser, CreateUserRequest
from users.use_cases.create_user import CreatedUser

logger = structlog.get_logger(__name__)
router = Router(tags=["users"])


class CreateUserThrottle(AnonRateThrottle):
    """Per client address; the rate is read from settings at each request."""

    scope = "users_create"

    def __init__(self) -> None:
        super().__init__(rate=settings.API_USERS_CREATE_RATE)

    def allow_request(self, request: HttpRequest) -> bool:
        self.rate = settings.API_USERS_CREATE_RATE
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return super().allow_request(request)
        except Exception as exc:  # the cache is down: serve rather than refuse everyone
            logger.warning("rate_limit_unavailable", error=str(exc))
            return True


class ErrorOut(BaseModel):
    detail: str


@router.post(
    "",
    response={201: CreatedUser, 409: ErrorOut},
    url_name="users-create",
    throttle=[CreateUserThrottle()],
)
def create_user(request: HttpRequest, payload: CreateUserRequest) -> Status[object]:
    response = CreateUser().execute(payload)
    if response.error:
        return Status(409, ErrorOut(detail=response.error))
    return Status(201, response.user)
