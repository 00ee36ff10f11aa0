"""The ``Event`` base class: what business code publishes.

An event is a pydantic model. Its ClickHouse ``event_type`` is the snake_case
name of its class and its ``metadata_version`` is declared on the class::

    class UserCreated(Event):
        metadata_version = 2
        user_id: int

    UserCreated.event_type  # "user_created"

What the outbox cannot hold is refused when the class is defined
(:class:`EventDefinitionError`): an ``event_type`` longer than its column, a
``metadata_version`` outside PostgreSQL's bigint, a ``retention_days`` that is not a
whole number of days from 0 to :data:`MAX_RETENTION_DAYS`. Float fields refuse NaN and
infinities when an event is built: JSON has no such numbers (pydantic would write
``null``), so they could not reach ClickHouse as what they were.

Personal data is declared, not guessed: a field annotated ``Annotated[str, Personal]``
holds personal data, and ``subject = ("user", "user_id")`` on the class says whose
(the kind of subject, and the field holding its id). :func:`personal_fields` and
:attr:`Event.subject` are what erasure, the event catalogue (``docs/events.md``) and
the retention rules read::

    class UserCreated(Event):
        subject = ("user", "user_id")
        user_id: int
        email: Annotated[str, Personal]

An event type may keep its own retention in ClickHouse: ``retention_days = 365``
(0: for ever; None, the default: the table's ``EVENT_LOG_RETENTION_DAYS``). The
catalogue shows it and ``clickhouse_migrate`` turns it into the table's TTL
(:mod:`event_log.retention`).
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict

# Sizes of the outbox columns (event_log.models): what publish() can write.
EVENT_TYPE_MAX_LENGTH = 255
ENVIRONMENT_MAX_LENGTH = 64
METADATA_VERSION_MAX = 2**63 - 1  # bigint; ClickHouse's UInt64 holds more
# A century: the TTL's date stays far inside ClickHouse's DateTime (up to 2106).
MAX_RETENTION_DAYS = 36_500
SUBJECT_TYPE_MAX_LENGTH = 64
SUBJECT_ID_MAX_LENGTH = 255

_ACRONYM_BOUNDARY = re.compile(r"([A-Z]+)([A-Z][a-z])")
_WORD_BOUNDARY = re.compile(r"([a-z\d])([A-Z])")


def snake_case(name: str) -> str:
    """``UserCreated`` → ``user_created``; ``HTTPRequestFailed`` → ``http_request_failed``."""
    return _WORD_BOUNDARY.sub(r"\1_\2", _ACRONYM_BOUNDARY.sub(r"\1_\2", name)).lower()


class Personal:
    """Field marker: ``Annotated[str, Personal]`` holds personal data (GDPR Art. 4).

    Such a field is erased with its subject (``manage.py event_log_erase``) and is
    listed as personal in the event catalogue. A class declaring personal fields must
    declare its ``subject``, or nobody could find the data to erase it.
    """


class EventDefinitionError(TypeError):
    """An ``Event`` subclass whose events the outbox could not hold."""


class Event(BaseModel):
    """Base of every published event. Subclasses add typed fields."""

    # allow_inf_nan: refuse NaN/±inf in float fields at construction. "constants":
    # one that still gets through (an ``Any`` field, model_construct) is written as
    # NaN/Infinity instead of null, so event_context_json() sees it and refuses it.
    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, ser_json_inf_nan="constants"
    )

    event_type: ClassVar[str] = "event"
    metadata_version: ClassVar[int] = 1
    # (kind, field): whose event this is, e.g. ("user", "user_id"); None for events
    # about no person.
    subject: ClassVar[tuple[str, str] | None] = None
    # Days this type's events stay in ClickHouse, 0 for ever; None: the table's
    # EVENT_LOG_RETENTION_DAYS.
    retention_days: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.event_type = snake_case(cls.__name__)
        if len(cls.event_type) > EVENT_TYPE_MAX_LENGTH:
            raise EventDefinitionError(
                f"the event_type of {cls.__name__[:40]}... has {len(cls.event_type)} "
                f"characters; the outbox holds {EVENT_TYPE_MAX_LENGTH}: shorten the class name"
            )
        version = cls.metadata_version
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise EventDefinitionError(f"{cls.__name__}.metadata_version must be a positive int")
        if version > METADATA_VERSION_MAX:
            raise EventDefinitionError(
                f"{cls.__name__}.metadata_version must be at most {METADATA_VERSION_MAX} "
                "(a PostgreSQL bigint)"
            )
        days = cls.retention_days
        whole_days = isinstance(days, int) and not isinstance(days, bool)
        if days is not None and not (whole_days and 0 <= days <= MAX_RETENTION_DAYS):
            raise EventDefinitionError(
                f"{cls.__name__}.retention_days must be None (the table's retention), 0 (for "
                f"ever) or a whole number of days up to {MAX_RETENTION_DAYS}, not {days!r}"
            )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # Fields are known only here, after pydantic built the model.
        super().__pydantic_init_subclass__(**kwargs)
        subject = cls.subject
        if subject is not None and (
            not isinstance(subject, tuple)
            or len(subject) != 2
            or subject[1] not in cls.model_fields
        ):
            raise EventDefinitionError(
                f"{cls.__name__}.subject must be (kind, field) naming one of its fields"
            )
        if subject is not None and (
            not isinstance(subject[0], str)
            or not 0 < len(subject[0]) <= SUBJECT_TYPE_MAX_LENGTH
            or "\x00" in subject[0]
        ):
            raise EventDefinitionError(
                f"{cls.__name__}.subject's kind must be 1 to {SUBJECT_TYPE_MAX_LENGTH} "
                "characters without NUL"
            )
        if personal_fields(cls) and subject is None:
            raise EventDefinitionError(
                f"{cls.__name__} has personal fields but no subject: declare "
                'subject = ("<kind>", "<id field>") so its data can be erased'
            )

    def subject_key(self) -> tuple[str, str]:
        """``(kind, id)`` of the subject this event is about (the envelope's
        ``subject_type`` and ``subject_id``), or ``("", "")`` for an event about none."""
        if self.subject is None:
            return ("", "")
        kind, field = self.subject
        return (kind, str(getattr(self, field)))

    def subject_ref(self) -> str | None:
        """``"<kind>:<id>"`` of the subject this event is about, or None."""
        if self.subject is None:
            return None
        kind, field = self.subject
        return f"{kind}:{getattr(self, field)}"


def personal_fields(event_class: type[Event]) -> tuple[str, ...]:
    """The names of ``event_class``'s fields annotated with :class:`Personal`, in order."""
    return tuple(
        name
        for name, field in event_class.model_fields.items()
        if any(marker is Personal or isinstance(marker, Personal) for marker in field.metadata)
    )


def event_context_json(event: Event) -> str:
    """The event as the JSON text stored in ``event_context``.

    Raises ``ValueError`` if a value is NaN or infinite (JSON has no such numbers;
    pydantic would write null), and pydantic's serialization error if a value is not
    JSON at all.
    """
    text = event.model_dump_json()
    # Event's "constants" mode writes NaN/Infinity for what reached a field unchecked;
    # a model of another base inside it writes null, so its values are walked instead.
    if (("NaN" in text or "Infinity" in text) and _has_non_finite_constant(text)) or (
        _may_hide_non_finite(type(event)) and _has_non_finite(event.model_dump())
    ):
        raise ValueError("a value is NaN or infinite, which JSON cannot carry")
    return text


def _has_non_finite_constant(text: str) -> bool:
    def refuse(constant: str) -> None:
        raise ValueError(constant)

    try:
        json.loads(text, parse_constant=refuse)
    except ValueError:
        return True
    return False


def _has_non_finite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_has_non_finite(item) for item in value)
    return False


# Field types an Event serializes itself (so a NaN in them is refused or written as NaN).
_PLAIN_TYPES = (
    str, int, float, bytes, Decimal, datetime, date, time, timedelta, uuid.UUID, enum.Enum,
    type(None),
)  # fmt: skip


@functools.cache
def _may_hide_non_finite(cls: type[BaseModel]) -> bool:
    """Whether a field of ``cls`` may hold something that writes NaN as null: ``Any``,
    a pydantic model not derived from Event, or a type not known here."""
    return any(_type_may_hide(field.annotation) for field in cls.model_fields.values())


def _type_may_hide(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Literal:
        hides = False
    elif origin is Annotated:
        hides = _type_may_hide(get_args(annotation)[0])
    elif origin is not None:  # list[...], dict[...], X | None, tuple[...]
        hides = any(_type_may_hide(arg) for arg in get_args(annotation) if arg is not Ellipsis)
    elif annotation is None:
        hides = False
    elif not isinstance(annotation, type):  # Any, a type variable, an unresolved name
        hides = True
    elif issubclass(annotation, Event):
        hides = _may_hide_non_finite(annotation)
    else:
        hides = issubclass(annotation, BaseModel) or not issubclass(annotation, _PLAIN_TYPES)
    return hides


class SubjectErased(Event):
    """A subject's personal fields were erased from the event log (outbox, dead
    letters, ClickHouse). Carries counts and the subject's id, never the erased
    values: the audit trail of an erasure must not undo it."""

    subject_kind: str
    subject_id: str
    event_types: list[str]
    outbox_events: int
    dead_letters: int
    clickhouse_events: int


class EventLogSearched(Event):
    """Someone searched the event log (``event_log_search``, the admin's "Event log"
    page): the read itself enters the audit trail. Carries who searched and the filters
    given (identifiers and times, never field values), not what was found."""

    searcher: str
    event_types: list[str]
    subject_filter: str | None
    actor_filter: str | None
    request_id_filter: str | None
    since: datetime | None
    until: datetime | None
    output: str
    events_found: int
