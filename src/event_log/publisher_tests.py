import math
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from pydantic import BaseModel

from event_log import Event, publish, sql
from event_log.checks import check_event_log_settings
from event_log.kick import kick_on_commit
from event_log.models import OutboxEvent
from event_log.publisher import (
    EventSerializationError,
    InvalidEnvironmentError,
    InvalidEventError,
    NotAnEventError,
    NoTransactionError,
    PublishError,
)


class ThingHappened(Event):
    thing_id: int


class Opaque(Event):
    payload: Any


class Versioned(Event):
    metadata_version = 4
    n: int


class Reading(BaseModel):
    """A model of another base: it writes NaN as null by itself."""

    value: float


class Measured(Event):
    reading: Reading
    values: list[float] = []


def _refused_and_the_transaction_goes_on(bad: Event, error: type[PublishError]) -> None:
    """``bad`` is refused with ``error`` inside a transaction that then commits a good
    event: nothing of ``bad`` is written and the transaction was not aborted."""
    with transaction.atomic():
        with pytest.raises(error):
            publish(ThingHappened(thing_id=1), bad)
        (good,) = publish(ThingHappened(thing_id=2))

    assert list(OutboxEvent.objects.values_list("event_id", flat=True)) == [good]


@pytest.mark.django_db(transaction=True)
def test_publish_writes_one_row_per_event_with_id_time_and_environment(settings):
    settings.ENVIRONMENT = "staging"
    before = datetime.now(UTC)
    with transaction.atomic():
        ids = publish(ThingHappened(thing_id=1), Versioned(n=2))
    after = datetime.now(UTC)

    rows = {row.event_id: row for row in OutboxEvent.objects.all()}
    assert set(rows) == set(ids)
    first, second = rows[ids[0]], rows[ids[1]]
    assert (first.event_type, first.event_context, first.metadata_version) == (
        "thing_happened",
        '{"thing_id":1}',
        1,
    )
    assert (second.event_type, second.metadata_version) == ("versioned", 4)
    assert first.environment == "staging"
    assert before <= first.event_date_time <= after
    assert first.batch_id is None


@pytest.mark.django_db(transaction=True)
def test_many_events_are_written_with_one_insert():
    events = [ThingHappened(thing_id=i) for i in range(500)]
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        publish(*events)

    inserts = [q for q in queries.captured_queries if "INSERT" in q["sql"].upper()]
    assert len(inserts) == 1
    assert OutboxEvent.objects.count() == 500


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_publishes_nothing():
    with pytest.raises(RuntimeError), transaction.atomic():
        publish(ThingHappened(thing_id=1))
        raise RuntimeError("business write failed")

    assert OutboxEvent.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_publish_outside_a_transaction_is_refused_and_writes_nothing():
    with pytest.raises(NoTransactionError, match=r"transaction\.atomic"):
        publish(ThingHappened(thing_id=1))

    assert OutboxEvent.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("bad", [{"thing_id": 1}, "user_created", None, 42])
def test_publish_refuses_what_is_not_an_event(bad):
    with pytest.raises(NotAnEventError, match="Event instances"):
        publish(ThingHappened(thing_id=1), bad)

    assert OutboxEvent.objects.count() == 0


@pytest.mark.django_db
def test_publish_refuses_an_event_that_cannot_be_serialized():
    with pytest.raises(EventSerializationError, match="Opaque cannot be serialized"):
        publish(ThingHappened(thing_id=1), Opaque(payload=object()))

    assert OutboxEvent.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_serialization_error_rolls_back_the_business_transaction():
    with pytest.raises(EventSerializationError), transaction.atomic():
        publish(ThingHappened(thing_id=1))
        publish(Opaque(payload={1, 2, object()}))

    assert OutboxEvent.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_an_environment_too_long_for_its_column_is_refused_and_the_transaction_goes_on(settings):
    with transaction.atomic():
        settings.ENVIRONMENT = "e" * 65  # the column holds 64 characters
        with pytest.raises(InvalidEnvironmentError, match="65 characters"):
            publish(ThingHappened(thing_id=1))
        settings.ENVIRONMENT = "e" * 64
        (good,) = publish(ThingHappened(thing_id=2))

    assert list(OutboxEvent.objects.values_list("event_id", "environment")) == [(good, "e" * 64)]


def test_an_environment_too_long_for_its_column_fails_the_system_check(settings):
    settings.ENVIRONMENT = "e" * 65

    errors = check_event_log_settings()

    assert [error.id for error in errors] == ["event_log.E003"]
    assert "65 characters" in errors[0].msg


@pytest.mark.django_db(transaction=True)
def test_an_event_type_changed_to_overflow_its_column_is_refused_and_nothing_written(
    monkeypatch,
):
    monkeypatch.setattr(Versioned, "event_type", "v" * 256)

    _refused_and_the_transaction_goes_on(Versioned(n=1), InvalidEventError)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("version", [2**63, 0, True])
def test_a_metadata_version_changed_out_of_range_is_refused_and_nothing_written(
    monkeypatch, version
):
    monkeypatch.setattr(Versioned, "metadata_version", version)

    _refused_and_the_transaction_goes_on(Versioned(n=1), InvalidEventError)


@pytest.mark.django_db(transaction=True)
def test_the_largest_metadata_version_a_bigint_holds_is_written(monkeypatch):
    monkeypatch.setattr(Versioned, "metadata_version", 2**63 - 1)
    with transaction.atomic():
        (event_id,) = publish(Versioned(n=1))

    assert OutboxEvent.objects.get(event_id=event_id).metadata_version == 2**63 - 1


NON_FINITE = {
    "nan in an Any field": Opaque(payload=math.nan),
    "inf deep in an Any field": Opaque(payload={"a": [1.0, math.inf]}),
    "-inf in a nested model of another base": Measured(reading=Reading(value=-math.inf)),
    "nan in a model of another base in an Any field": Opaque(payload=Reading(value=math.nan)),
    "nan slipped past validation": Measured.model_construct(
        reading=Reading(value=1.0), values=[math.nan]
    ),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("event", NON_FINITE.values(), ids=NON_FINITE.keys())
def test_nan_and_infinities_are_refused_instead_of_written_as_null(event):
    _refused_and_the_transaction_goes_on(event, EventSerializationError)


@pytest.mark.django_db(transaction=True)
def test_text_that_merely_spells_nan_or_infinity_is_published():
    with transaction.atomic():
        (event_id,) = publish(Opaque(payload={"film": "Infinity War", "NaN": "NaN"}))

    stored = OutboxEvent.objects.get(event_id=event_id).event_context
    assert stored == '{"payload":{"film":"Infinity War","NaN":"NaN"}}'


def _pending_kicks() -> int:
    return sum(1 for _, func, _ in connection.run_on_commit if func is kick_on_commit)


@pytest.mark.django_db(transaction=True)
def test_one_kick_is_registered_per_transaction():
    with transaction.atomic():
        publish(ThingHappened(thing_id=1))
        publish(ThingHappened(thing_id=2))
        with transaction.atomic():
            publish(ThingHappened(thing_id=3))
        assert _pending_kicks() == 1


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_savepoint_does_not_lose_the_kick_of_the_outer_publish():
    with transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            publish(ThingHappened(thing_id=1))
            raise RuntimeError
        assert _pending_kicks() == 0
        publish(ThingHappened(thing_id=2))
        assert _pending_kicks() == 1


@pytest.mark.django_db(transaction=True)
def test_more_events_than_one_statement_takes_are_split_and_all_written():
    count = sql.MAX_EVENTS_PER_INSERT + 1
    events = [ThingHappened(thing_id=i) for i in range(count)]
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        ids = publish(*events)

    inserts = [q for q in queries.captured_queries if "INSERT" in q["sql"].upper()]
    assert len(inserts) == 2
    assert set(OutboxEvent.objects.values_list("event_id", flat=True)) == set(ids)
    assert len(ids) == count
