"""The event catalogue: every event type the installed apps publish, with its fields,
which of them are personal, whose data they are, and how long ClickHouse keeps them.

Events are found in each installed app's ``events`` module (``users.events``), so
the catalogue lists what production code publishes, not test doubles.
``docs/events.md`` is :func:`render_catalogue`'s output (``manage.py
event_log_catalogue --write``); a test keeps the two equal.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from django.apps import apps

from event_log.events import Event, personal_fields


@dataclass(frozen=True)
class EventEntry:
    name: str
    event_type: str
    metadata_version: int
    subject: tuple[str, str] | None
    fields: tuple[tuple[str, str], ...]  # (name, type)
    personal: tuple[str, ...]
    retention_days: int | None  # None: the table's EVENT_LOG_RETENTION_DAYS


def event_classes() -> list[type[Event]]:
    """Event classes defined in the installed apps' ``events`` modules, by event_type."""
    found: dict[str, type[Event]] = {}
    for config in apps.get_app_configs():
        try:
            module = importlib.import_module(f"{config.name}.events")
        except ModuleNotFoundError as exc:
            if exc.name != f"{config.name}.events":
                raise
            continue
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Event)
                and value is not Event
                and value.__module__ == module.__name__
            ):
                found[value.event_type] = value
    return [found[name] for name in sorted(found)]


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is not None and getattr(origin, "__name__", "") == "Annotated":
        return _type_name(get_args(annotation)[0])
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def catalogue() -> list[EventEntry]:
    """One entry per event type (see :func:`event_classes`)."""
    return [
        EventEntry(
            name=cls.__name__,
            event_type=cls.event_type,
            metadata_version=cls.metadata_version,
            subject=cls.subject,
            fields=tuple(
                (name, _type_name(field.annotation)) for name, field in cls.model_fields.items()
            ),
            personal=personal_fields(cls),
            retention_days=cls.retention_days,
        )
        for cls in event_classes()
    ]


def personal_fields_by_event_type() -> dict[str, tuple[str, ...]]:
    """``{event_type: personal field names}`` for every catalogued event type."""
    return {entry.event_type: entry.personal for entry in catalogue()}


def retention_days_by_event_type() -> dict[str, int]:
    """``{event_type: days}`` for the catalogued event types that declare their own
    retention (0: for ever); the others follow ``EVENT_LOG_RETENTION_DAYS``."""
    return {
        entry.event_type: entry.retention_days
        for entry in catalogue()
        if entry.retention_days is not None
    }


def _retention_text(days: int | None) -> str:
    if days is None:
        return "the table's (`EVENT_LOG_RETENTION_DAYS`)"
    if days == 0:
        return "kept for ever, whatever `EVENT_LOG_RETENTION_DAYS` says"
    return f"{days} days after the event, whatever `EVENT_LOG_RETENTION_DAYS` says"


def render_catalogue() -> str:
    """``docs/events.md``: the catalogue as Markdown."""
    lines = [
        "# Event catalogue",
        "",
        "Generated from the code by `manage.py event_log_catalogue --write`; a test",
        "fails when this page and the code differ. A personal field holds personal data:",
        "it is erased with its subject (`manage.py event_log_erase`) and kept no longer",
        "than its event type's retention in ClickHouse (see docs/data-protection.md).",
        "",
        "Each event type's fields are also a JSON Schema, one file per `metadata_version`:",
        "`docs/events/<event_type>.v<version>.json`. `make lint` fails when an event's fields",
        "change and its `metadata_version` does not; the files of earlier versions stay, for",
        "the rows written under them.",
        "",
    ]
    for entry in catalogue():
        subject = f"`{entry.subject[0]}` (id in `{entry.subject[1]}`)" if entry.subject else "none"
        lines += [
            f"## `{entry.event_type}` ({entry.name})",
            "",
            f"metadata_version {entry.metadata_version}; subject: {subject}; JSON Schema: "
            f"[{entry.event_type}.v{entry.metadata_version}.json]"
            f"(events/{entry.event_type}.v{entry.metadata_version}.json)",
            "",
            f"retention: {_retention_text(entry.retention_days)}",
            "",
            "| field | type | personal |",
            "| --- | --- | --- |",
            *(
                f"| `{name}` | {type_name} | {'yes' if name in entry.personal else 'no'} |"
                for name, type_name in entry.fields
            ),
            "",
        ]
    return "\n".join(lines)
