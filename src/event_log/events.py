"""The ``Event`` base class: what business code publishes.

An event is a pydantic model. Its ClickHouse ``event_type`` is the snake_case
name of its class and its ``metadata_version`` is declared on the class::

    class UserCreated(Event):
        metadata_version = 2
        user_id: int

    UserCreated.event_type  # "user_created"
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

_ACRONYM_BOUNDARY = re.compile(r"([A-Z]+)([A-Z][a-z])")
_WORD_BOUNDARY = re.compile(r"([a-z\d])([A-Z])")


def snake_case(name: str) -> str:
    """``UserCreated`` → ``user_created``; ``HTTPRequestFailed`` → ``http_request_failed``."""
    return _WORD_BOUNDARY.sub(r"\1_\2", _ACRONYM_BOUNDARY.sub(r"\1_\2", name)).lower()


class Event(BaseModel):
    """Base of every published event. Subclasses add typed fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str] = "event"
    metadata_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.event_type = snake_case(cls.__name__)
        version = cls.metadata_version
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise TypeError(f"{cls.__name__}.metadata_version must be a positive int")
