"""HTTP adapter for the users app: parse, call one use case, shape the answer."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest
from ninja import Router, Status
from ninja.decorators import decorate_view
from pydantic import BaseModel, Field

from core.json_body import require_json_body
from core.rate_limit import FixedWindowThrottle
from users.use_cases import CreateUser, CreateUserRequest
from users.use_cases.create_user import CreatedUser

router = Router(tags=["users"])


def create_user_rate() -> str:
    """Read at each request, so a settings change applies without a restart."""
    return str(settings.API_USERS_CREATE_RATE)


class ErrorOut(BaseModel):
    """An error the client can act on, in one sentence."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: ['body', 'payload', 'email']")
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    """422: every field that is wrong, not only the first."""

    detail: list[FieldError]


# Every answer POST /api/users can give, so the OpenAPI document is the whole contract.
# 400, 413, 415, 422 and 429 come from the API's own handlers, not from the view.
CREATE_USER_RESPONSES: dict[int, type[BaseModel]] = {
    201: CreatedUser,
    400: ErrorOut,  # the body is not valid JSON
    409: ErrorOut,  # the address is taken
    413: ErrorOut,  # the body is over DATA_UPLOAD_MAX_MEMORY_SIZE
    415: ErrorOut,  # the body is not declared as application/json
    422: ValidationErrorOut,  # valid JSON, invalid fields
    429: ErrorOut,  # over API_USERS_CREATE_RATE for this client address
}


@router.post(
    "",
    response=CREATE_USER_RESPONSES,
    url_name="users-create",
    throttle=[FixedWindowThrottle(scope="users_create", rate=create_user_rate)],
)
@decorate_view(require_json_body)
def create_user(request: HttpRequest, payload: CreateUserRequest) -> Status[object]:
    response = CreateUser().execute(payload)
    if response.error:
        return Status(409, ErrorOut(detail=response.error))
    return Status(201, response.user)
