"""The use-case base class: every business action runs in one database transaction.

The transaction is opened by :meth:`UseCase.execute`, which subclasses cannot
override (a ``TypeError`` at class creation): they implement
:meth:`UseCase.handle`. So no subclass can lose atomicity by overriding a
decorated method. A response that carries an ``error`` rolls the transaction
back, so a refused request writes nothing, events included.

A response carries ``result`` and ``error``, the names code written against the
challenge template reads; a use case may add a readable alias for its result
(``CreateUserResponse.user``) as a property over ``result``.
"""

from __future__ import annotations

from typing import Any, ClassVar, final

import structlog
from django.db import transaction
from pydantic import BaseModel, ConfigDict


class UseCaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class UseCaseResponse[ResultT](BaseModel):
    """What a use case answers: its ``result`` (None when refused) or an ``error``.

    ``error`` is empty on success; a non-empty ``error`` rolls the use case back.
    Unknown fields are refused, so a misspelt name (or a property alias passed as
    a field) fails loudly instead of leaving ``result`` unset.
    """

    model_config = ConfigDict(extra="forbid")

    result: ResultT | None = None
    error: str = ""


class UseCase[RequestT: UseCaseRequest, ResponseT: UseCaseResponse[Any]]:
    """Subclass and implement ``handle``; callers use ``execute``."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "execute" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides execute(); implement handle() instead so the "
                "transaction stays around the whole use case"
            )
        cls.name = cls.__dict__.get("name") or cls.__name__

    @final
    def execute(self, request: RequestT) -> ResponseT:
        with structlog.contextvars.bound_contextvars(use_case=self.name), transaction.atomic():
            response = self.handle(request)
            if response.error:
                transaction.set_rollback(True)
            return response

    def handle(self, request: RequestT) -> ResponseT:
        raise NotImplementedError
