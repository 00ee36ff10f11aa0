from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import DataError, connection, transaction
from django.test.utils import CaptureQueriesContext

from event_log import Event, publish
from event_log.kick import kick_on_commit
from event_log.models import OutboxEvent
from event_log.publisher import EventSerializationError, NotAnEventError, NoTransactionError


class ThingHappened(Event):
    thing_id: int


class Opaque(Event):
    payload: Any


class Versioned(Event):
    metadata_version = 4
    n: int


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
def test_a_value_the_database_refuses_raises_django_s_error_and_writes_nothing(settings):
    settings.ENVIRONMENT = "e" * 65  # the column holds 64 characters
    with pytest.raises(DataError, match="too long"), transaction.atomic():
        publish(ThingHappened(thing_id=1))

    assert OutboxEvent.objects.count() == 0


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
    events = [ThingHappened(thing_id=i) for i in range(10_001)]
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        ids = publish(*events)

    inserts = [q for q in queries.captured_queries if "INSERT" in q["sql"].upper()]
    assert len(inserts) == 2
    assert set(OutboxEvent.objects.values_list("event_id", flat=True)) == set(ids)
    assert len(ids) == 10_001
