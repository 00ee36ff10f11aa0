import math

import pytest
from pydantic import ValidationError

from event_log.events import MAX_RETENTION_DAYS, Event, EventDefinitionError, snake_case


class UserCreated(Event):
    user_id: int


class HTTPRequestFailed(Event):
    metadata_version = 3
    url: str


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("UserCreated", "user_created"),
        ("HTTPRequestFailed", "http_request_failed"),
        ("OAuth2TokenIssued", "o_auth2_token_issued"),
        ("PDFExported", "pdf_exported"),
        ("Simple", "simple"),
        ("UserIDChanged", "user_id_changed"),
    ],
)
def test_snake_case_handles_words_and_acronyms(name, expected):
    assert snake_case(name) == expected


def test_event_type_is_the_snake_case_class_name():
    assert UserCreated.event_type == "user_created"
    assert HTTPRequestFailed.event_type == "http_request_failed"
    assert UserCreated(user_id=1).event_type == "user_created"


def test_metadata_version_defaults_to_1_and_is_declared_per_class():
    assert UserCreated.metadata_version == 1
    assert HTTPRequestFailed.metadata_version == 3


def test_metadata_version_must_be_a_positive_int():
    with pytest.raises(TypeError, match="metadata_version"):

        class Broken(Event):
            metadata_version = 0


def test_events_are_immutable_and_reject_unknown_fields():
    event = UserCreated(user_id=1)
    with pytest.raises(ValueError, match="frozen"):
        event.user_id = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="extra"):
        UserCreated(user_id=1, surprise=True)  # type: ignore[call-arg]


def test_an_event_class_whose_type_overflows_its_column_is_refused_when_defined():
    type("A" + "b" * 254, (Event,), {})  # event_type of 255 characters: fits

    with pytest.raises(EventDefinitionError, match="256 characters; the outbox holds 255"):
        type("A" + "b" * 255, (Event,), {})


def test_a_metadata_version_beyond_a_postgresql_bigint_is_refused_when_defined():
    class Largest(Event):
        metadata_version = 2**63 - 1

    with pytest.raises(EventDefinitionError, match="at most 9223372036854775807"):

        class TooLarge(Event):
            metadata_version = 2**63


def test_an_event_type_declares_its_own_retention_or_follows_the_table_s():
    class Kept(Event):
        retention_days = 0

    class Short(Event):
        retention_days = 30

    class Longest(Event):
        retention_days = MAX_RETENTION_DAYS

    assert (Kept.retention_days, Short.retention_days) == (0, 30)
    assert UserCreated.retention_days is None
    assert Longest.retention_days == 36_500


@pytest.mark.parametrize("days", [-1, MAX_RETENTION_DAYS + 1, 30.5, "30", True])
def test_a_retention_that_is_not_a_whole_number_of_days_in_range_is_refused_when_defined(days):
    with pytest.raises(EventDefinitionError, match="retention_days must be None"):
        type("BadlyKept", (Event,), {"retention_days": days})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_float_fields_refuse_nan_and_infinities_when_the_event_is_built(value):
    class Measured(Event):
        value: float

    with pytest.raises(ValidationError, match="finite number"):
        Measured(value=value)
