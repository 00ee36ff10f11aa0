"""HTTP adapter for the users app: parse, call one use case, shape the answer."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router, Status
from pydantic import BaseModel

from users.use_cases import CreateUser, CreateUserRequest
from users.use_cases.create_user import CreatedUser

router = Router(tags=["users"])


class ErrorOut(BaseModel):
    detail: str


@router.post("", response={201: CreatedUser, 409: ErrorOut}, url_name="users-create")
def create_user(request: HttpRequest, payload: CreateUserRequest) -> Status[object]:
    response = CreateUser().execute(payload)
    if response.error:
        return Status(409, ErrorOut(detail=response.error))
    return Status(201, response.user)
