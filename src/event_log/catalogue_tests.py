"""Which event fields are personal, and whose: declared in code, shown in docs/events.md."""

from typing import Annotated

import pytest

from core.env import REPO_ROOT
from event_log.catalogue import (
    personal_fields_by_event_type,
    render_catalogue,
    retention_days_by_event_type,
)
from event_log.events import Event, EventDefinitionError, Personal, SubjectErased, personal_fields
from users.events import UserCreated


def test_user_created_declares_its_email_and_names_personal_and_its_user_as_subject():
    assert personal_fields(UserCreated) == ("email", "first_name", "last_name")
    assert UserCreated.subject == ("user", "user_id")
    event = UserCreated(user_id=7, email="a@example.com", first_name="A", last_name="L")
    assert event.subject_ref() == "user:7"


def test_the_catalogue_lists_personal_fields_per_event_type():
    catalogue = personal_fields_by_event_type()
    assert catalogue["user_created"] == ("email", "first_name", "last_name")
    assert "ping" not in catalogue, "test events are not part of the catalogue"


def test_docs_events_md_is_the_catalogue_the_code_generates():
    assert (REPO_ROOT / "docs/events.md").read_text() == render_catalogue(), (
        "run: manage.py event_log_catalogue --write"
    )


def test_an_event_with_personal_fields_and_no_subject_is_refused_at_definition():
    with pytest.raises(EventDefinitionError, match="no subject"):

        class Anonymous(Event):
            email: Annotated[str, Personal]


def test_a_subject_naming_no_field_is_refused_at_definition():
    with pytest.raises(EventDefinitionError, match="subject"):

        class Misnamed(Event):
            subject = ("user", "uid")
            user_id: int


def test_the_catalogue_shows_each_event_type_s_own_retention(monkeypatch):
    monkeypatch.setattr(UserCreated, "retention_days", 30)
    monkeypatch.setattr(SubjectErased, "retention_days", 0)

    assert retention_days_by_event_type() == {"subject_erased": 0, "user_created": 30}
    text = render_catalogue()
    user_created = text.split("## `user_created`")[1]
    assert "retention: 30 days after the event" in user_created
    assert "retention: kept for ever" in text.split("## `subject_erased`")[1]


def test_an_event_type_without_its_own_retention_follows_the_table_s():
    assert retention_days_by_event_type() == {}
    assert "retention: the table's (`EVENT_LOG_RETENTION_DAYS`)" in render_catalogue()
