"""HTTP adapter for the users app: parse, call one use case, shape the answer."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router
from pydantic import BaseModel

from users.use_cases import CreateUser, CreateUserRequest
from users.use_cases.create_user import CreatedUser

router = Router(tags=["users"])


class ErrorOut(BaseModel):
    detail: str


@router.post("", response={201: CreatedUser, 409: ErrorOut}, url_name="users-create")
def create_user(request: HttpRequest, payload: CreateUserRequest) -> tuple[int, object]:
    response = CreateUser().execute(payload)
    if response.error:
        return 409, {"detail": response.error}
    return 201, response.user
